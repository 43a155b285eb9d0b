/**
 * The MySQL store's connections over a program's life, on MariaDB: a program that ran
 * `relay.runOnce()` (or one operator function) exits by itself, as on PostgreSQL and SQLite,
 * because the pool closes its connections when idle (src/stores/mysql/conn.ts, `OutboxPool`);
 * and a connection the server refuses for good (wrong password, unknown user or database, no
 * access to the database) is reported at once, while a server that does not answer is still
 * waited for until connect_timeout + 2 s.
 */
import { describe, it } from "node:test";
import type { TestContext } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import path from "node:path";
import { execFile, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { fileURLToPath, pathToFileURL } from "node:url";
import { performance } from "node:perf_hooks";
import { createRelay, mailOutbox, openDatabase, pingDatabase } from "../src/index.js";
import { MailOutboxError } from "../src/errors.js";
import type { MysqlStore } from "../src/stores/mysql/store.js";
import { freshMysql, mysqlAdmin, mysqlUrl, prismaClientFor, uniqueSchemaName, type MysqlFixture } from "./support/db.js";
import { needMysql } from "./support/services.js";
import { startTestSmtp } from "../testkit/smtp.js";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
/** tsx's loader by URL, so a child process finds it whatever its working directory. */
const TSX = import.meta.resolve("tsx");
const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** How long `fn` takes to reject, and with what. */
async function timedFailure(fn: () => Promise<unknown>): Promise<{ err: unknown; ms: number }> {
  const t0 = performance.now();
  try {
    await fn();
  } catch (err) {
    return { err, ms: performance.now() - t0 };
  }
  return assert.fail("expected an error");
}

/** `url` with another user and password (both URL-encoded as given). */
function withCredentials(url: string, user: string, password: string | null): string {
  const u = new URL(url);
  u.username = user;
  u.password = password ?? "";
  return u.toString();
}

/** Connections the server has open to `database` (its process list). */
async function serverConnections(database: string): Promise<number> {
  const admin = (await openDatabase(mysqlUrl("mysql"))) as MysqlStore;
  try {
    const rows: { n: number }[] = await admin.pool.query("SELECT COUNT(*) AS n FROM information_schema.PROCESSLIST WHERE DB = ? AND ID <> CONNECTION_ID()", [database]);
    return Number(rows[0]!.n);
  } finally {
    await admin.close();
  }
}

/**
 * A user of its own with a password, allowed everything on `fx`'s database and nothing else;
 * dropped after the test. (The test server's root has no password.)
 */
async function passwordUser(t: TestContext, fx: MysqlFixture): Promise<{ user: string; password: string }> {
  const user = uniqueSchemaName("mo_lc").slice(0, 32);
  const password = `right-${randomBytes(6).toString("hex")}`;
  await mysqlAdmin([`CREATE USER '${user}'@'%' IDENTIFIED BY '${password}'`, `GRANT ALL ON \`${fx.database}\`.* TO '${user}'@'%'`]);
  t.after(() => mysqlAdmin([`DROP USER IF EXISTS '${user}'@'%'`]));
  return { user, password };
}

interface Run {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
  readonly ms: number;
}

/** A Node program (ES module text, run with tsx) in a child process; resolves when it exits by itself, or after `timeoutMs` (then killed, code null). */
function runProgram(source: string, env: Record<string, string>, timeoutMs: number): Promise<Run> {
  return new Promise((resolve) => {
    const t0 = performance.now();
    const child = spawn(process.execPath, ["--import", TSX, "--input-type=module", "-e", source], { cwd: ROOT, env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString("utf8")));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString("utf8")));
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill("SIGKILL");
    }, timeoutMs);
    child.once("exit", (code) => {
      clearTimeout(timer);
      resolve({ code: timedOut ? null : code, stdout, stderr, ms: performance.now() - t0 });
    });
  });
}

/** The CLI as a real program: exit code, output, and how long it took. */
function cli(args: string[], env: Record<string, string>): Promise<Run> {
  return new Promise((resolve) => {
    const { DATABASE_URL: _d, MAIL_OUTBOX_TRANSPORT: _t, ...base } = process.env;
    const t0 = performance.now();
    execFile(process.execPath, ["--import", TSX, path.join(ROOT, "src/cli.ts"), ...args], { cwd: ROOT, env: { ...base, ...env }, encoding: "utf8", timeout: 60_000 }, (error, stdout, stderr) => {
      const code = error ? (typeof error.code === "number" ? error.code : -1) : 0;
      resolve({ code, stdout, stderr, ms: performance.now() - t0 });
    });
  });
}

describe("a program on MariaDB exits by itself", () => {
  it("a program that awaits relay.runOnce() and never calls stop() hands the mail over and exits on its own within seconds", async (t) => {
    if (!(await needMysql(t))) return;
    const fx = await freshMysql(t);
    const smtp = await startTestSmtp();
    t.after(() => smtp.close());
    const prisma: any = (await prismaClientFor(fx.url, t)).$extends(mailOutbox({ defaultFrom: "app@example.com" }));
    const { messageId } = await prisma.outboxEmail.enqueue({ to: "once@example.com", subject: "once", text: "x" });

    // A user's own program: runOnce, print the counts, nothing closed.
    const index = pathToFileURL(path.join(ROOT, "src/index.ts")).href;
    const program = `
      import { createRelay } from ${JSON.stringify(index)};
      const relay = createRelay({ databaseUrl: process.env.DATABASE_URL, transport: process.env.MAIL_OUTBOX_TRANSPORT, logger: false });
      const counts = await relay.runOnce();
      process.stdout.write(JSON.stringify({ counts, doneAt: Date.now() }) + "\\n");
    `;
    const run = await runProgram(program, { DATABASE_URL: fx.url, MAIL_OUTBOX_TRANSPORT: smtp.url }, 15_000);
    const exitedAt = Date.now();
    assert.notEqual(run.code, null, `the program did not exit within 15 s after runOnce() (stdout: ${run.stdout}, stderr: ${run.stderr})`);
    assert.equal(run.code, 0, run.stderr);
    const report = JSON.parse(run.stdout.trim()) as { counts: { claimed: number; sent: number }; doneAt: number };
    assert.equal(report.counts.claimed, 1);
    assert.equal(report.counts.sent, 1);
    t.diagnostic(`process ran ${Math.round(run.ms)} ms; exited ${exitedAt - report.doneAt} ms after runOnce() resolved`);
    assert.ok(exitedAt - report.doneAt < 10_000, `exited ${exitedAt - report.doneAt} ms after runOnce()`);
    assert.equal(smtp.messages.length, 1);
    assert.equal(smtp.messages[0]!.messageId, messageId);
    const db = (await openDatabase(fx.url)) as MysqlStore;
    t.after(() => db.close());
    const rows: { status: string }[] = await db.pool.query("SELECT status FROM mail_outbox");
    assert.deepEqual(rows.map((r) => r.status), ["sent"]);
  });

  it("a relay used for runOnce() again hands over the mail due then (its transport reopened)", async (t) => {
    if (!(await needMysql(t))) return;
    const fx = await freshMysql(t);
    const smtp = await startTestSmtp();
    t.after(() => smtp.close());
    const prisma: any = (await prismaClientFor(fx.url, t)).$extends(mailOutbox({ defaultFrom: "app@example.com" }));
    const relay = createRelay({ databaseUrl: fx.url, transport: smtp.url, logger: false });
    t.after(() => relay.stop());
    for (const round of [1, 2, 3]) {
      await prisma.outboxEmail.enqueue({ to: `round${round}@example.com`, subject: `round ${round}`, text: "x" });
      const counts = await relay.runOnce();
      assert.equal(counts.sent, 1, `round ${round}`);
      assert.equal(smtp.messages.length, round);
      if (round === 2) await sleep(6000); // the store's pool closed meanwhile: the next round opens it again
    }
  });

  it("an open store closes its connections a few seconds after its last statement and opens one again at the next", async (t) => {
    if (!(await needMysql(t))) return;
    const fx = await freshMysql(t);
    const db = (await openDatabase(fx.url)) as MysqlStore;
    t.after(() => db.close());
    await db.ping();
    assert.ok((await serverConnections(fx.database)) >= 1, "connected while in use");
    // A transaction's connection keeps the pool open however long it is held.
    const conn = await db.pool.getConnection();
    await sleep(6000);
    assert.deepEqual(await conn.query("SELECT 1 AS one"), [{ one: 1 }]);
    await conn.release();
    assert.ok((await serverConnections(fx.database)) >= 1);
    await sleep(6000);
    assert.equal(db.pool.totalConnections(), 0, "the pool closed after 5 s idle");
    assert.equal(await serverConnections(fx.database), 0, "the server sees no connection");
    assert.deepEqual(await db.pool.query("SELECT 1 AS one"), [{ one: 1 }], "the next statement connects again");
    assert.equal(await db.largestPendingSize(), null);
  });

  it("a started relay keeps working across idle spells longer than the pool's idle close", async (t) => {
    if (!(await needMysql(t))) return;
    const fx = await freshMysql(t);
    const smtp = await startTestSmtp();
    t.after(() => smtp.close());
    const prisma: any = (await prismaClientFor(fx.url, t)).$extends(mailOutbox({ defaultFrom: "app@example.com" }));
    // Polling every 6 s: the pool closes between looks and opens again at each.
    const relay = createRelay({ databaseUrl: fx.url, transport: smtp.url, pollIntervalMs: 6000, leaseMs: 60_000, gaugeIntervalMs: 0, logger: false });
    await relay.start();
    t.after(() => relay.stop());
    await sleep(7000);
    await prisma.outboxEmail.enqueue({ to: "later@example.com", subject: "later", text: "x" });
    await smtp.waitFor(1, 10_000);
    await sleep(7000);
    await prisma.outboxEmail.enqueue({ to: "later2@example.com", subject: "later2", text: "x" });
    await smtp.waitFor(2, 10_000);
    const counts = await relay.stop();
    assert.equal(counts.sent, 2);
  });
});

describe("a connection MariaDB refuses is reported at once", () => {
  it("a wrong password fails within 3 s with one line naming the database, without the password; the right one works", async (t) => {
    if (!(await needMysql(t))) return;
    const fx = await freshMysql(t);
    const { user, password } = await passwordUser(t, fx);
    await pingDatabase(withCredentials(fx.url, user, password)); // the user works with its password

    const wrong = `wrong-${randomBytes(6).toString("hex")}`;
    const url = withCredentials(fx.url, user, wrong);
    const { err, ms } = await timedFailure(() => pingDatabase(url));
    t.diagnostic(`wrong password reported after ${Math.round(ms)} ms`);
    assert.ok(err instanceof MailOutboxError, String(err));
    assert.ok(ms < 3000, `took ${ms} ms`);
    assert.match(err.message, new RegExp(`^Cannot reach the database at mysql://${user}:\\*\\*\\*@127\\.0\\.0\\.1:3306/${fx.database}: Access denied for user '${user}'@'[^']+' \\(using password: YES\\)\\. Check DATABASE_URL`));
    assert.doesNotMatch(err.message, new RegExp(wrong));
    assert.equal(err.message.includes("\n"), false, "one line");

    // The store says what it is, so a relay does not take it for an outage.
    const db = await openDatabase(url);
    try {
      const direct = await timedFailure(() => db.statusCounts(new Date()));
      assert.ok(direct.ms < 3000, `took ${direct.ms} ms`);
      assert.equal(db.classifyError(direct.err), "refused");
      assert.equal((direct.err as { errno?: number }).errno, 1045);
    } finally {
      await db.close();
    }
  });

  it("relay.runOnce() and relay.start() with a wrong password reject within 3 s", async (t) => {
    if (!(await needMysql(t))) return;
    const fx = await freshMysql(t);
    const { user } = await passwordUser(t, fx);
    const url = withCredentials(fx.url, user, "not-the-password");
    for (const run of ["runOnce", "start"] as const) {
      const relay = createRelay({ databaseUrl: url, transport: "smtp://127.0.0.1:9", logger: false });
      const { err, ms } = await timedFailure(() => relay[run]());
      t.diagnostic(`${run}(): rejected after ${Math.round(ms)} ms: ${(err as Error).message.split("\n")[0]}`);
      assert.ok(ms < 3000, `${run} took ${ms} ms`);
      assert.equal((err as { errno?: number }).errno, 1045);
      await relay.stop();
    }
  });

  it("an unknown user, an unknown database and a database the user may not use fail within 3 s, each naming the database", async (t) => {
    if (!(await needMysql(t))) return;
    const fx = await freshMysql(t);
    const { user, password } = await passwordUser(t, fx);
    const missing = uniqueSchemaName("none");
    const other = await freshMysql(t); // exists, but the user has no grant on it
    const cases = [
      { what: "unknown user", url: withCredentials(fx.url, `nobody_${randomBytes(4).toString("hex")}`, null), database: fx.database, says: /Access denied for user 'nobody_[0-9a-f]+'@'[^']+'/ },
      { what: "unknown database", url: mysqlUrl(missing), database: missing, says: new RegExp(`Unknown database '${missing}'`) },
      { what: "no access to the database", url: withCredentials(other.url, user, password), database: other.database, says: new RegExp(`Access denied for user '${user}'@'[^']+' to database '${other.database}'`) },
    ];
    for (const c of cases) {
      const { err, ms } = await timedFailure(() => pingDatabase(c.url));
      t.diagnostic(`${c.what}: ${Math.round(ms)} ms`);
      assert.ok(err instanceof MailOutboxError, `${c.what}: ${String(err)}`);
      assert.ok(ms < 3000, `${c.what} took ${ms} ms`);
      assert.match(err.message, new RegExp(`^Cannot reach the database at mysql://[^ ]*/${c.database}: `), c.what);
      assert.match(err.message, c.says, c.what);
      assert.doesNotMatch(err.message, new RegExp(password), c.what);
    }
  });

  it("a server that does not answer is still waited for, until connect_timeout + 2 s", async (t) => {
    if (!(await needMysql(t))) return;
    const free = net.createServer();
    const port = await new Promise<number>((resolve) => free.listen(0, "127.0.0.1", () => resolve((free.address() as net.AddressInfo).port)));
    await new Promise((resolve) => free.close(resolve));
    const url = `mysql://root:secret-pw@127.0.0.1:${port}/shop?connect_timeout=1`;
    const db = await openDatabase(url);
    try {
      const { err, ms } = await timedFailure(() => db.ping());
      t.diagnostic(`nothing listening: reported after ${Math.round(ms)} ms`);
      assert.ok(ms >= 2500 && ms < 6000, `waited ${ms} ms (connect_timeout 1 s + 2 s)`);
      assert.equal(db.classifyError(err), "unavailable");
    } finally {
      await db.close();
    }
  });

  it("the CLI reports a wrong password in one line naming the database, without the password, in about the time it takes to start", async (t) => {
    if (!(await needMysql(t))) return;
    const fx = await freshMysql(t);
    const { user } = await passwordUser(t, fx);
    const wrong = `wrong-${randomBytes(6).toString("hex")}`;
    const started = await cli(["--help"], {});
    const run = await cli(["status"], { DATABASE_URL: withCredentials(fx.url, user, wrong) });
    t.diagnostic(`mail-outbox status: exit ${run.code} after ${Math.round(run.ms)} ms (mail-outbox --help: ${Math.round(started.ms)} ms)`);
    assert.equal(run.code, 1, run.stderr);
    assert.equal(run.stdout, "");
    const lines = run.stderr.trim().split("\n");
    assert.equal(lines.length, 1, run.stderr);
    assert.match(lines[0]!, new RegExp(`Cannot reach the database at mysql://${user}:\\*\\*\\*@127\\.0\\.0\\.1:3306/${fx.database}: Access denied`));
    assert.doesNotMatch(run.stderr, new RegExp(wrong));
    assert.ok(run.ms < started.ms + 3000, `status took ${run.ms} ms, --help ${started.ms} ms`);
  });
});
