/**
 * The runnable examples under examples/, run as a user runs them (`npm run example:...`) in a
 * subprocess, so they never rot. Each run gets its own SQLite file or PostgreSQL schema; the
 * outcome is checked in the database and the MTA, not only in the printed text.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { randomUUID } from "node:crypto";
import { rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import pg from "pg";
import { listMails, type MailRecord } from "../src/index.js";
import { dropSchema, mysqlAdmin, mysqlUrl, postgresUrl, uniqueSchemaName } from "./support/db.js";
import { needMysql, needPostfix, needPostgres } from "./support/services.js";
import { startTestSmtp } from "../testkit/smtp.js";
import { waitForLog } from "./support/postfix.js";

const repo = fileURLToPath(new URL("../", import.meta.url));
const TIMEOUT = { timeout: 180_000 };

interface Run {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** `npm run <script>` in the repository, with `env` added to this process's environment. */
function npmRun(script: string, env: Record<string, string>): Promise<Run> {
  const childEnv: NodeJS.ProcessEnv = { ...process.env, ...env };
  // A transport or database from the outer environment must not leak into an example that defaults it.
  if (!("MAIL_OUTBOX_TRANSPORT" in env)) delete childEnv.MAIL_OUTBOX_TRANSPORT;
  if (!("DATABASE_URL" in env)) delete childEnv.DATABASE_URL;
  // Set by node:test in this process; a `node --test` in the child would report to us in the runner's binary protocol instead of TAP.
  delete childEnv.NODE_TEST_CONTEXT;
  return new Promise((resolve) => {
    execFile("npm", ["run", script], { cwd: repo, env: childEnv, maxBuffer: 16 * 1024 * 1024, timeout: 170_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === "number" ? err.code : null) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

function assertExitedZero(run: Run): void {
  assert.equal(run.code, 0, `the example failed (exit ${run.code})\n--- stdout\n${run.stdout}\n--- stderr\n${run.stderr}`);
}

/** A unique SQLite file under the temp dir, deleted after the test. */
function tempSqlite(t: { after(fn: () => Promise<void>): void }): { file: string; url: string } {
  const file = path.join(tmpdir(), `mail-outbox-example-${randomUUID()}.db`);
  t.after(async () => {
    for (const suffix of ["", "-wal", "-shm", "-journal"]) await rm(file + suffix, { force: true });
  });
  return { file, url: `file:${file}` };
}

/** The Message-IDs the signup example printed as committed, and the one it printed as rolled back. */
function signupMessageIds(stdout: string): { committed: string[]; rolledBack: string[] } {
  const committed = [...stdout.matchAll(/welcome mail (<[^>]+>) committed/g)].map((m) => m[1]!);
  const rolledBack = [...stdout.matchAll(/welcome mail (<[^>]+>) was enqueued, then rolled back/g)].map((m) => m[1]!);
  return { committed, rolledBack };
}

function sorted(values: Iterable<string>): string[] {
  return [...values].sort();
}

test("the signup example commits two welcome mails, hands exactly those to its MTA and never the rolled-back one", TIMEOUT, async (t) => {
  const db = tempSqlite(t);
  const run = await npmRun("example:signup", { DATABASE_URL: db.url });
  assertExitedZero(run);

  const ids = signupMessageIds(run.stdout);
  assert.equal(ids.committed.length, 2, run.stdout);
  assert.equal(ids.rolledBack.length, 1, run.stdout);
  assert.match(run.stdout, /FAILED\s+Carol Diaz <carol@example\.com>\s+card declined: transaction rolled back/);
  assert.match(run.stdout, /Done: 2 welcome mails handed to the MTA, 1 rolled back/);

  // The example's own SMTP server printed what it accepted: the two committed mails, once each.
  const accepted = [...run.stdout.matchAll(/MTA {4}accepted (<[^>]+>) for (\S+) .*queued as ([0-9A-F]+)"/g)];
  assert.deepEqual(sorted(accepted.map((m) => m[1]!)), sorted(ids.committed));
  assert.deepEqual(sorted(accepted.map((m) => m[2]!)), ["ann@example.com", "bob@example.com"]);

  // The database agrees: two sent rows, each with the queue id the MTA gave, and no row for the rolled-back mail.
  const rows = await listMails(db.url, { limit: 100 });
  assert.deepEqual(sorted(rows.map((r) => r.messageId)), sorted(ids.committed));
  for (const row of rows) {
    assert.equal(row.status, "sent");
    const reply = accepted.find((m) => m[1] === row.messageId);
    assert.equal(row.mtaQueueId, reply?.[3]);
    assert.equal(row.mtaResponse, `250 2.0.0 Ok: queued as ${reply?.[3]}`);
    assert.ok(run.stdout.includes(`sent    ${row.envelopeTo[0]}`), `the table lists ${row.messageId} as sent`);
  }
  assert.ok(!rows.some((r) => ids.rolledBack.includes(r.messageId)));
  assert.match(run.stdout, /Carol Diaz's welcome mail <[^>]+>: not in the outbox/);
});

test("the signup example reuses its database on a second run and sends only that run's mails", TIMEOUT, async (t) => {
  const db = tempSqlite(t);
  const first = await npmRun("example:signup", { DATABASE_URL: db.url });
  assertExitedZero(first);
  const second = await npmRun("example:signup", { DATABASE_URL: db.url });
  assertExitedZero(second);

  assert.match(second.stdout, /\(reused\)/);
  assert.match(second.stdout, /outbox tables: up to date/);
  const ids = signupMessageIds(second.stdout);
  assert.equal(ids.committed.length, 2);
  const accepted = [...second.stdout.matchAll(/MTA {4}accepted (<[^>]+>)/g)].map((m) => m[1]!);
  assert.deepEqual(sorted(accepted), sorted(ids.committed), "the second run hands over its own two mails, not the first run's again");

  const rows = await listMails(db.url, { limit: 100 });
  assert.equal(rows.length, 4);
  assert.ok(rows.every((r) => r.status === "sent"));
});

test("the signup example hands its mail to the MTA that MAIL_OUTBOX_TRANSPORT names", TIMEOUT, async (t) => {
  const db = tempSqlite(t);
  const smtp = await startTestSmtp();
  t.after(() => smtp.close());
  const run = await npmRun("example:signup", { DATABASE_URL: db.url, MAIL_OUTBOX_TRANSPORT: smtp.url });
  assertExitedZero(run);

  assert.doesNotMatch(run.stdout, /MTA {4}accepted/, "no SMTP server of the example's own when a transport is given");
  const ids = signupMessageIds(run.stdout);
  assert.deepEqual(sorted(smtp.messages.map((m) => m.messageId ?? "")), sorted(ids.committed));
  const rows = await listMails(db.url, { limit: 100 });
  for (const row of rows) {
    assert.equal(row.status, "sent");
    assert.equal(row.mtaQueueId, smtp.messages.find((m) => m.messageId === row.messageId)?.queueId);
  }
});

test("the signup example hands its mail to Postfix through sendmail -bs and records the queue id of Postfix's reply", TIMEOUT, async (t) => {
  if (!needPostfix(t)) return;
  const db = tempSqlite(t);
  // Postfix here takes the mail and then bounces it (default_transport = error): nothing leaves the machine.
  const run = await npmRun("example:signup", { DATABASE_URL: db.url, MAIL_OUTBOX_TRANSPORT: "sendmail-bs:/usr/sbin/sendmail" });
  assertExitedZero(run);

  const rows: MailRecord[] = await listMails(db.url, { limit: 100 });
  assert.deepEqual(sorted(rows.map((r) => r.messageId)), sorted(signupMessageIds(run.stdout).committed));
  for (const row of rows) {
    assert.equal(row.status, "sent");
    assert.match(row.mtaResponse ?? "", /^250 2\.0\.0 Ok: queued as [0-9A-Za-z]+$/);
    assert.ok(row.mtaQueueId && run.stdout.includes(`MTA queue id ${row.mtaQueueId}`), "the example printed Postfix's queue id");
    // The stand-alone smtpd of `sendmail -bs` logs the reply's id; pickup then queues the mail under a
    // new id, the one cleanup logs with the Message-ID (see src/sendmail-bs.ts).
    await waitForLog(new RegExp(`postfix/smtpd\\[\\d+\\]: ${row.mtaQueueId}: client=`));
    const bare = row.messageId.slice(1, -1).replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
    await waitForLog(new RegExp(`postfix/cleanup\\[\\d+\\]: [0-9A-Za-z]+: message-id=<?${bare}>?\\s*$`));
  }
});

test("the testing-helper example's own tests pass (expectEnqueued / expectNotEnqueued)", TIMEOUT, async () => {
  const run = await npmRun("example:signup:test", {});
  assertExitedZero(run);
  assert.match(run.stdout, /^# pass 2$/m);
  assert.match(run.stdout, /^# fail 0$/m);
});

test("the PostgreSQL sidecar example runs the relay as its own process, sends the committed orders' mails and stops it with SIGTERM", TIMEOUT, async (t) => {
  if (!(await needPostgres(t))) return;
  const schema = uniqueSchemaName("example_sidecar");
  const url = postgresUrl(schema);
  t.after(() => dropSchema(schema));
  const run = await npmRun("example:sidecar", { DATABASE_URL: url });
  assertExitedZero(run);

  assert.match(run.stdout, /\$ mail-outbox migrate\n\s+applied 0001_init/);
  assert.match(run.stdout, /relay {2}\| \S+ INFO relay started/);
  assert.match(run.stdout, /FAILED\s+Carol Diaz, 3 mugs\s+out of stock \(3 ordered, 1 left\): transaction rolled back, with its 2 enqueued mails/);
  assert.match(run.stdout, /all 4 sent/);
  assert.match(run.stdout, /relay {2}\| stopped: claimed 4, sent 4/);
  assert.match(run.stdout, /relay exited with code 0/);

  // The MTA took the four mails of the two committed orders, once each.
  const committed = [...run.stdout.matchAll(/order #\d+ committed with 2 mails: (<[^>]+>), (<[^>]+>)/g)].flatMap((m) => [m[1]!, m[2]!]);
  assert.equal(committed.length, 4);
  const accepted = [...run.stdout.matchAll(/MTA {4}accepted (<[^>]+>)/g)].map((m) => m[1]!);
  assert.deepEqual(sorted(accepted), sorted(committed));

  // `mail-outbox list` printed them as sent.
  const listed = run.stdout.slice(run.stdout.indexOf("$ mail-outbox list"));
  assert.equal([...listed.matchAll(/^\s+[0-9a-f-]{36}\s+sent\s/gm)].length, 4, listed);

  // The schema holds exactly two orders and four sent mails; the rolled-back order left nothing.
  const rows = await listMails(url, { limit: 100 });
  assert.deepEqual(sorted(rows.map((r) => r.messageId)), sorted(committed));
  assert.ok(rows.every((r) => r.status === "sent" && r.mtaQueueId !== null));
  const client = new pg.Client({ connectionString: url.replace(/\?schema=.*$/, "") });
  await client.connect();
  try {
    const orders = await client.query<{ customer: string }>(`SELECT customer FROM "${schema}"."Order" ORDER BY id`);
    assert.deepEqual(orders.rows.map((r) => r.customer), ["Ann Lee", "Bob Ortiz"]);
  } finally {
    await client.end();
  }
});

test("the MariaDB example goes through the quick start: migrate, signups in transactions, the relay as its own process (polling), mail-outbox list", TIMEOUT, async (t) => {
  if (!(await needMysql(t))) return;
  // The example creates its database (CREATE DATABASE IF NOT EXISTS); the test drops it.
  const database = uniqueSchemaName("example_signup");
  const url = mysqlUrl(database);
  t.after(() => mysqlAdmin([`DROP DATABASE IF EXISTS \`${database}\``]));
  const run = await npmRun("example:mariadb", { DATABASE_URL: url });
  assertExitedZero(run);

  assert.match(run.stdout, new RegExp(`CREATE DATABASE IF NOT EXISTS \`${database}\` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci`));
  assert.match(run.stdout, /\$ mail-outbox migrate\n\s+applied 0001_init/);
  assert.match(run.stdout, /relay {2}\| \S+ INFO relay started/);
  assert.match(run.stdout, /FAILED\s+Carol Diaz <carol@example\.com>\s+card declined: transaction rolled back, with its welcome mail <[^>]+>/);
  assert.match(run.stdout, /again\s+Ann Lee <ann@example\.com>\s+user #1: welcome mail already in the outbox \(DuplicateIdempotencyKeyError, caught\); the transaction committed/);
  assert.match(run.stdout, /all 3 sent/);
  assert.match(run.stdout, /relay {2}\| stopped: claimed 3, sent 3/);
  assert.match(run.stdout, /relay exited with code 0/);

  const committed = [...run.stdout.matchAll(/welcome mail (<[^>]+>) committed/g)].map((m) => m[1]!);
  assert.equal(committed.length, 3, run.stdout);
  const rolledBack = [...run.stdout.matchAll(/rolled back, with its welcome mail (<[^>]+>)/g)].map((m) => m[1]!);
  assert.equal(rolledBack.length, 1);
  // The example's MTA took the three committed mails, once each.
  const accepted = [...run.stdout.matchAll(/MTA {4}accepted (<[^>]+>)/g)].map((m) => m[1]!);
  assert.deepEqual(sorted(accepted), sorted(committed));
  // `mail-outbox list` printed them as sent.
  const listed = run.stdout.slice(run.stdout.indexOf("$ mail-outbox list"));
  assert.equal([...listed.matchAll(/^\s+[0-9a-f-]{36}\s+sent\s/gm)].length, 3, listed);

  // The database agrees: three sent rows with the MTA's queue ids, nothing of the rolled-back signup, three users.
  const rows = await listMails(url, { limit: 100 });
  assert.deepEqual(sorted(rows.map((r) => r.messageId)), sorted(committed));
  assert.ok(rows.every((r) => r.status === "sent" && r.mtaQueueId !== null));
  assert.ok(!rows.some((r) => rolledBack.includes(r.messageId)));
  const { default: mariadb } = await import("mariadb");
  const u = new URL(url);
  const conn = await mariadb.createConnection({ host: u.hostname, port: Number(u.port || 3306), user: decodeURIComponent(u.username), database });
  try {
    const users = (await conn.query("SELECT email FROM `User` ORDER BY id")) as { email: string }[];
    assert.deepEqual(users.map((r) => r.email), ["ann@example.com", "bob@example.com", "dan@example.com"]);
  } finally {
    await conn.end();
  }
});
