/**
 * `doctor()` and `mail-outbox doctor`: the report's checks and fixes, the repair loop with
 * `migrate` (a dropped PostgreSQL notify trigger), and the comparison of the outbox's size limits
 * with the local Postfix's (read with its own `postconf`, never changed).
 */
import { describe, it } from "node:test";
import type { TestContext } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { chmod, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import pg from "pg";
import { main } from "../src/cli.js";
import { openDatabase } from "../src/db.js";
import { doctor, findPostconf, type DoctorReport } from "../src/doctor.js";
import { migrate } from "../src/migrate.js";
import { dropSchema, freshSqlite, mysqlAdmin, mysqlUrl, postgresUrl, prismaClientFor, uniqueSchemaName } from "./support/db.js";
import { mailOutbox } from "../src/index.js";
import { needMysql, needPostfix, needPostgres, PG_ADMIN_URL, POSTFIX_SENDMAIL } from "./support/services.js";

async function cli(args: string[], env: Record<string, string>): Promise<{ code: number; stdout: string; stderr: string }> {
  const out: string[] = [];
  const err: string[] = [];
  const io = { stdout: { write: (c: string) => (out.push(String(c)), true) }, stderr: { write: (c: string) => (err.push(String(c)), true) }, env };
  const code = await main(args, io as never);
  return { code, stdout: out.join(""), stderr: err.join("") };
}

const byName = (r: DoctorReport, name: string) => r.checks.find((c) => c.name === name);

/** A stand-in for Postfix's postconf (for the warn cases: this machine's Postfix config is never changed). */
async function fakePostconf(t: TestContext, values: { sendmailPath: string; messageSizeLimit: number; headerSizeLimit: number }): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), "mail-outbox-postconf-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const file = path.join(dir, "postconf");
  await writeFile(
    file,
    `#!/bin/sh
case "$*" in
  "-M") echo "smtp       inet  n       -       y       -       -       smtpd" ;;
  "-h sendmail_path") echo "${values.sendmailPath}" ;;
  "-h message_size_limit header_size_limit") printf '%s\\n%s\\n' ${values.messageSizeLimit} ${values.headerSizeLimit} ;;
  *) echo "postconf: unexpected arguments: $*" >&2; exit 2 ;;
esac
`,
  );
  await chmod(file, 0o755);
  return file;
}

describe("doctor's report", () => {
  it("on a database without the outbox tables, the schema check fails with the command that creates them", async (t) => {
    const fx = await freshSqlite(t);
    const db = await openDatabase(fx.url);
    if (db.dialect === "sqlite") db.db.exec("DROP TABLE mail_outbox_attempt; DROP TABLE mail_outbox; DROP TABLE mail_outbox_migrations");
    await db.close();
    const report = await doctor({ databaseUrl: fx.url, transport: "sendmail:/bin/true", postconfPath: false });
    assert.equal(report.ok, false);
    const schema = byName(report, "schema");
    assert.equal(schema?.status, "fail");
    assert.equal(schema?.message, "table mail_outbox is missing; table mail_outbox_attempt is missing");
    assert.match(schema?.fix ?? "", /^run `mail-outbox migrate`, or `prisma migrate deploy`/);
    assert.deepEqual(schema?.problems?.map((p) => p.kind), ["table", "table"]);
  });

  it("a SQLite file that does not exist is reported, not created", async () => {
    const file = path.join(tmpdir(), `mail-outbox-nothing-${process.pid}-${Date.now()}.db`);
    const report = await doctor({ databaseUrl: `file:${file}`, transport: "sendmail:/bin/true", postconfPath: false });
    assert.equal(byName(report, "database")?.status, "fail");
    assert.match(byName(report, "database")?.fix ?? "", /mail-outbox migrate/);
    assert.equal(existsSync(file), false);
  });

  it("the text output prints the fix under a failed check, and exits 1", async (t) => {
    const fx = await freshSqlite(t);
    const db = await openDatabase(fx.url);
    if (db.dialect === "sqlite") db.db.exec("DROP INDEX mail_outbox_claim_idx");
    await db.close();
    const r = await cli(["doctor", "--postconf", "/nonexistent/postconf"], { DATABASE_URL: fx.url, MAIL_OUTBOX_TRANSPORT: "sendmail:/bin/true" });
    assert.equal(r.code, 1, r.stdout + r.stderr);
    assert.match(r.stdout, /^FAIL {2}schema {5}index mail_outbox_claim_idx on mail_outbox is missing\n {17}fix: run `mail-outbox migrate`$/m);
  });
});

describe("doctor and migrate on PostgreSQL: the notify trigger", () => {
  it("a dropped notify trigger is flagged by doctor, recreated by migrate, and an insert notifies the relays again", async (t) => {
    if (!(await needPostgres(t))) return;
    const schema = uniqueSchemaName("notify");
    t.after(() => dropSchema(schema));
    const url = postgresUrl(schema);
    const env = { DATABASE_URL: url, MAIL_OUTBOX_TRANSPORT: "sendmail:/bin/true" };
    assert.equal((await cli(["migrate"], env)).code, 0);
    const db = await openDatabase(url);
    if (db.dialect !== "postgresql") throw new Error("unreachable");
    const listener = new pg.Client({ connectionString: PG_ADMIN_URL });
    await listener.connect();
    try {
      await db.pool.query("DROP TRIGGER mail_outbox_notify ON mail_outbox");

      const flagged = JSON.parse((await cli(["doctor", "--json"], env)).stdout) as DoctorReport;
      const schemaCheck = byName(flagged, "schema");
      assert.equal(schemaCheck?.status, "fail");
      assert.match(schemaCheck?.message ?? "", /the notify trigger mail_outbox_notify on mail_outbox is missing/);
      assert.match(schemaCheck?.fix ?? "", /^run `mail-outbox migrate`/);

      const m = await cli(["migrate"], env);
      assert.equal(m.code, 0, m.stderr);
      assert.match(m.stdout, /^recreated trigger mail_outbox_notify \(0002_notify\)/m);

      const clean = await cli(["doctor"], env);
      assert.equal(clean.code, 0, clean.stdout);
      assert.match(clean.stdout, /^ok {4}schema/m);

      const received: string[] = [];
      listener.on("notification", (n) => {
        if (n.channel === "mail_outbox" && n.payload === schema) received.push(n.payload);
      });
      await listener.query("LISTEN mail_outbox");
      await db.pool.query(
        `INSERT INTO mail_outbox (id, message_id, envelope_from, envelope_to, raw, size, max_attempts, send_at, next_attempt_at)
         VALUES (gen_random_uuid(), '<notify-again@test>', 'a@x', '["b@x"]', '\\x00', 1, 1, now(), now())`,
      );
      const deadline = Date.now() + 10_000;
      while (received.length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      assert.equal(received.length, 1, "an insert notifies channel mail_outbox again");
      assert.deepEqual((await migrate(db)).repaired, [], "nothing left to repair");
    } finally {
      await listener.end();
      await db.close();
    }
  });
});

describe("doctor and migrate on MariaDB", () => {
  it("a dropped index is flagged by doctor and recreated by migrate; a missing NOT NULL column fails the check, blocks the relay and is left to the operator", async (t) => {
    if (!(await needMysql(t))) return;
    const database = uniqueSchemaName("doc");
    await mysqlAdmin([`CREATE DATABASE \`${database}\` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci`]);
    t.after(() => mysqlAdmin([`DROP DATABASE IF EXISTS \`${database}\``]));
    const env = { DATABASE_URL: mysqlUrl(database), MAIL_OUTBOX_TRANSPORT: "sendmail:/bin/true" };
    const created = await cli(["migrate"], env);
    assert.equal(created.code, 0, created.stderr);
    assert.match(created.stdout, /^applied 0001_init/m);
    const fine = await cli(["doctor", "--postconf", "/nonexistent/postconf"], env);
    assert.equal(fine.code, 0, fine.stdout);
    assert.match(fine.stdout, /^ok {4}database {3}reachable: mysql:\/\/.* \(mysql\)$/m);

    await mysqlAdmin([`DROP INDEX mail_outbox_lease_idx ON \`${database}\`.mail_outbox`]);
    const flagged = JSON.parse((await cli(["doctor", "--json", "--postconf", "/nonexistent/postconf"], env)).stdout) as DoctorReport;
    assert.equal(byName(flagged, "schema")?.message, "index mail_outbox_lease_idx on mail_outbox is missing");
    assert.equal(byName(flagged, "schema")?.fix, "run `mail-outbox migrate`");
    const repaired = await cli(["migrate"], env);
    assert.equal(repaired.code, 0, repaired.stderr);
    assert.match(repaired.stdout, /^recreated index mail_outbox_lease_idx \(0001_init\)/m);
    assert.equal((await cli(["doctor", "--postconf", "/nonexistent/postconf"], env)).code, 0);

    await mysqlAdmin([`ALTER TABLE \`${database}\`.mail_outbox DROP COLUMN max_attempts`]);
    const broken = JSON.parse((await cli(["doctor", "--json", "--postconf", "/nonexistent/postconf"], env)).stdout) as DoctorReport;
    const schema = byName(broken, "schema");
    assert.equal(broken.ok, false);
    assert.equal(schema?.message, "column mail_outbox.max_attempts is missing (expected int NOT NULL)");
    assert.deepEqual(schema?.problems?.map((p) => [p.repairable, p.blocksRelay]), [[false, true]]);
    assert.match(schema?.fix ?? "", /^add it by hand, giving existing rows a value: ALTER TABLE `mail_outbox` ADD COLUMN `max_attempts` INTEGER NOT NULL DEFAULT <value>/);
    assert.deepEqual(JSON.parse((await cli(["migrate", "--json"], env)).stdout).repaired, [], "migrate does not choose values for existing rows");
  });
});

describe("doctor and the local Postfix's size limits", () => {
  it("with the default limits, the local Postfix's message_size_limit and header_size_limit leave room (sendmail:, sendmail-bs: and smtp://127.0.0.1:25)", async (t) => {
    if (!needPostfix(t)) return;
    const postconf = findPostconf();
    assert.ok(postconf, "postconf is installed with Postfix");
    const fx = await freshSqlite(t);
    for (const transport of [`sendmail:${POSTFIX_SENDMAIL}`, `sendmail-bs:${POSTFIX_SENDMAIL}`, "smtp://127.0.0.1:25"]) {
      const report = await doctor({ databaseUrl: fx.url, transport });
      const limits = byName(report, "limits");
      assert.equal(limits?.status, "ok", `${transport}: ${limits?.message}`);
      assert.match(limits?.message ?? "", /message_size_limit [\d,]+ >= maxMessageBytes 10,000,000 \+ 10,000; header_size_limit [\d,]+ >= maxHeaderBytes 100,000; no pending mail/);
    }
  });

  it("warns when the outbox accepts larger messages or headers than the local Postfix (read with its postconf, nothing changed)", async (t) => {
    if (!needPostfix(t)) return;
    const fx = await freshSqlite(t);
    const env = { DATABASE_URL: fx.url, MAIL_OUTBOX_TRANSPORT: "smtp://127.0.0.1:25" };
    const r = await cli(["doctor", "--json", "--max-message-bytes", "900000000", "--max-header-bytes", "10000000"], env);
    assert.equal(r.code, 0, "a warning does not fail doctor");
    const limits = byName(JSON.parse(r.stdout) as DoctorReport, "limits");
    assert.equal(limits?.status, "warn");
    assert.match(limits?.message ?? "", /message_size_limit \([\d,]+ bytes\) is below the largest message the outbox accepts \(maxMessageBytes 900,000,000/);
    assert.match(limits?.message ?? "", /header_size_limit \([\d,]+ bytes\) is below the largest header section the outbox accepts \(maxHeaderBytes 10,000,000\)/);
    assert.match(limits?.fix ?? "", /postconf -e message_size_limit=900010000 && postfix reload/);
    const text = await cli(["doctor", "--max-message-bytes", "900000000"], env);
    assert.match(text.stdout, /^WARN {2}limits {5}Postfix \(smtpd on 127\.0\.0\.1:25\): /m);
  });

  it("warns when the largest pending mail is over Postfix's message_size_limit, and when the default maxMessageBytes is", async (t) => {
    const fx = await freshSqlite(t);
    const db = await openDatabase(fx.url);
    if (db.dialect !== "sqlite") throw new Error("unreachable");
    const now = new Date().toISOString().replace("Z", "+00:00");
    db.db
      .prepare(`INSERT INTO mail_outbox (id, message_id, envelope_from, envelope_to, raw, size, max_attempts, send_at, next_attempt_at) VALUES (?, ?, 'a@x', '["b@x"]', x'00', ?, 1, ?, ?)`)
      .run("00000000-0000-4000-8000-000000000001", "<big@test>", 60_000, now, now);
    await db.close();
    const postconfPath = await fakePostconf(t, { sendmailPath: "/bin/true", messageSizeLimit: 50_000, headerSizeLimit: 102_400 });
    const report = await doctor({ databaseUrl: fx.url, transport: "sendmail:/bin/true", postconfPath });
    const limits = byName(report, "limits");
    assert.equal(limits?.status, "warn");
    assert.match(limits?.message ?? "", /^Postfix \(sendmail:\/bin\/true\): Postfix's message_size_limit \(50,000 bytes\) is below .*maxMessageBytes 10,000,000/);
    assert.match(limits?.message ?? "", /the largest pending mail is 60,000 bytes, over Postfix's message_size_limit \(50,000\)/);
    assert.match(limits?.fix ?? "", /mail-outbox cancel <id>/);
    assert.equal(report.ok, true, "warnings only");

    // A sendmail that is not Postfix's: nothing to compare with.
    const other = await doctor({ databaseUrl: fx.url, transport: "sendmail:/bin/true", postconfPath: await fakePostconf(t, { sendmailPath: "/usr/sbin/sendmail", messageSizeLimit: 50_000, headerSizeLimit: 102_400 }) });
    assert.equal(byName(other, "limits"), undefined);
  });

  it("refuses bad limits up front with exact messages", async () => {
    await assert.rejects(doctor({ maxMessageBytes: 0 }), { name: "OptionsError", message: "Expected `maxMessageBytes` to be an integer >= 1, got 0." });
    const r = await cli(["doctor", "--max-header-bytes", "lots"], {});
    assert.equal(r.code, 2);
    assert.match(r.stderr, /--max-header-bytes expects a whole number of at least 1, got "lots"/);
  });
});

/** Run one statement on a SQLite outbox (to plant rows the library would never write). */
async function sqliteExec(url: string, sql: string): Promise<void> {
  const db = await openDatabase(url);
  try {
    if (db.dialect !== "sqlite") throw new Error("sqliteExec is for SQLite");
    db.db.prepare(sql).run();
  } finally {
    await db.close();
  }
}

describe("doctor on SQLite", () => {
  it("flags rows whose times an adapter with timestampFormat unixepoch-ms wrote as numbers", async () => {
    const fx = await freshSqlite();
    const prisma: any = (await prismaClientFor(fx.url)).$extends(mailOutbox({ defaultFrom: "app@example.com" }));
    try {
      await prisma.outboxEmail.enqueue({ to: "t@example.com", subject: "t", text: "x" });
      const run = async () => {
        const out: string[] = [];
        const io = { stdout: { write: (c: string) => (out.push(c), true) }, stderr: { write: (c: string) => (out.push(c), true) }, env: { DATABASE_URL: fx.url, MAIL_OUTBOX_TRANSPORT: "sendmail:/bin/true" } };
        const code = await main(["doctor", "--json"], io as never);
        return { code, report: JSON.parse(out.join("")) as { checks: { name: string; ok: boolean; message: string }[] } };
      };
      const good = await run();
      assert.equal(good.report.checks.find((c) => c.name === "times")?.ok, true);
      await sqliteExec(fx.url, "UPDATE mail_outbox SET next_attempt_at = 1795870000000");
      const bad = await run();
      assert.equal(bad.code, 1);
      assert.match(bad.report.checks.find((c) => c.name === "times")?.message ?? "", /1 row\(s\) store times as numbers.*unixepoch-ms/);
    } finally {
      await prisma.$disconnect();
      await fx.cleanup();
    }
  });
});
