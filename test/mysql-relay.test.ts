/**
 * The relay on MariaDB (the MySQL store, src/stores/mysql/): end to end against the in-process
 * SMTP server, two relays on one database, a relay killed mid hand-off, connections killed
 * under it, a server that goes away and comes back, the adaptive polling of a database without
 * LISTEN, and what MariaDB's errors are classified as. The store's statements one by one:
 * test/store-conformance.test.ts ("MariaDB (a real server)").
 */
import { describe, it, after } from "node:test";
import type { TestContext } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { performance } from "node:perf_hooks";
import mariadb from "mariadb";
import { createRelay, mailOutbox, openDatabase } from "../src/index.js";
import type { MysqlStore } from "../src/stores/mysql/store.js";
import { freshMysql, prismaClientFor, type MysqlFixture } from "./support/db.js";
import { MYSQL_ADMIN_URL, needMysql } from "./support/services.js";
import { startTestSmtp, type StartTestSmtpOptions, type TestSmtp } from "../testkit/smtp.js";

const FIXTURE = fileURLToPath(new URL("./fixtures/relay-process.ts", import.meta.url));
const quiet = { logger: false as const };
const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

interface Setup {
  readonly fx: MysqlFixture;
  readonly smtp: TestSmtp;
  /** The app's Prisma client (PrismaMariaDb adapter) with the outbox extension. */
  readonly prisma: any;
}

async function setup(t: TestContext, smtpOptions: StartTestSmtpOptions = {}): Promise<Setup | null> {
  if (!(await needMysql(t))) return null;
  const fx = await freshMysql();
  const smtp = await startTestSmtp(smtpOptions);
  const prisma: any = (await prismaClientFor(fx.url)).$extends(mailOutbox({ defaultFrom: "app@example.com" }));
  t.after(async () => {
    await prisma.$disconnect();
    await smtp.close();
    await fx.cleanup();
  });
  return { fx, smtp, prisma };
}

/** An admin connection to the server (not to the fixture's database), closed after the test. */
async function adminConnection(t: TestContext): Promise<mariadb.Connection> {
  const u = new URL(MYSQL_ADMIN_URL);
  const conn = await mariadb.createConnection({
    host: u.hostname,
    port: Number(u.port || 3306),
    user: decodeURIComponent(u.username) || "root",
    ...(u.password ? { password: decodeURIComponent(u.password) } : {}),
    bigIntAsNumber: true,
  } as mariadb.ConnectionConfig);
  t.after(() => conn.end().catch(() => {}));
  return conn;
}

async function rows<T>(url: string, sql: string, params: unknown[] = []): Promise<T[]> {
  const db = (await openDatabase(url)) as MysqlStore;
  try {
    return [...((await db.pool.query(sql, params)) as T[])];
  } finally {
    await db.close();
  }
}

async function statusCounts(url: string): Promise<Record<string, number>> {
  const list = await rows<{ status: string; n: number }>(url, "SELECT status, COUNT(*) AS n FROM mail_outbox GROUP BY status");
  return Object.fromEntries(list.map((r) => [r.status, Number(r.n)]));
}

async function enqueueMany(prisma: any, n: number, tag: string): Promise<{ id: string; messageId: string }[]> {
  return prisma.outboxEmail.enqueueMany(Array.from({ length: n }, (_, i) => ({ to: `${tag}${i}@example.com`, subject: `${tag} ${i}`, text: "x" })));
}

/** A relay in its own process (test/fixtures/relay-process.ts), for killing; its events as they print. */
function spawnRelay(env: Record<string, string>) {
  const child = spawn(process.execPath, ["--import", "tsx", FIXTURE], { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "inherit"] });
  const events: Record<string, unknown>[] = [];
  createInterface({ input: child.stdout! }).on("line", (line) => {
    try {
      events.push(JSON.parse(line) as Record<string, unknown>);
    } catch {
      // not an event line
    }
  });
  return { child, events, exited: new Promise((resolve) => child.once("exit", resolve)) };
}

async function until(what: string, ok: () => boolean | Promise<boolean>, ms = 15_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await ok())) {
    if (Date.now() > end) throw new Error(`timed out waiting until ${what}`);
    await sleep(25);
  }
}

/**
 * A TCP proxy in front of the server: `down()` drops every connection and refuses new ones, as
 * a server that stops does; `up()` listens again on the same port, as it does after a restart.
 */
async function startProxy(t: TestContext, target: { host: string; port: number }) {
  const sockets = new Set<net.Socket>();
  let server: net.Server;
  const listen = (port: number) =>
    new Promise<number>((resolve, reject) => {
      server = net.createServer((client) => {
        const upstream = net.connect(target.port, target.host);
        for (const s of [client, upstream]) {
          sockets.add(s);
          s.on("close", () => sockets.delete(s));
          s.on("error", () => {});
        }
        client.pipe(upstream).pipe(client);
        client.on("close", () => upstream.destroy());
        upstream.on("close", () => client.destroy());
      });
      server.once("error", reject);
      server.listen(port, "127.0.0.1", () => resolve((server.address() as net.AddressInfo).port));
    });
  const port = await listen(0);
  const proxy = {
    port,
    async down() {
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const s of sockets) s.destroy();
      });
    },
    async up() {
      await listen(port);
    },
  };
  t.after(() => proxy.down().catch(() => {}));
  return proxy;
}

describe("the relay on MariaDB", () => {
  it("delivers every mail enqueued in the app's committed transactions exactly once, records each as sent with one attempt, and never one from a rolled-back transaction", async (t) => {
    const s = await setup(t);
    if (!s) return;
    const N = 60;
    const enqueued = await enqueueMany(s.prisma, N, "e2e");
    await assert.rejects(
      s.prisma.$transaction(async (tx: any) => {
        await tx.outboxEmail.enqueue({ to: "rolledback@example.com", subject: "never", text: "x" });
        throw new Error("the app's transaction fails");
      }),
      /the app's transaction fails/,
    );
    const relay = createRelay({ databaseUrl: s.fx.url, transport: s.smtp.url, concurrency: 8, batchSize: 16, ...quiet });
    t.after(() => relay.stop().catch(() => {})); // also when the test fails before its own stop()
    await relay.start();
    await s.smtp.waitFor(N, 20_000);
    // One more after the backlog: found by polling, without LISTEN.
    const late = await s.prisma.outboxEmail.enqueue({ to: "late@example.com", subject: "late", text: "x" });
    await s.smtp.waitFor(N + 1, 10_000);
    const counts = await relay.stop();
    assert.equal(counts.sent, N + 1);
    const byId = s.smtp.countByMessageId();
    for (const e of [...enqueued, late]) assert.equal(byId.get(e.messageId), 1, `${e.messageId} arrived once`);
    assert.equal(s.smtp.messages.length, N + 1, "nothing else arrived (not the rolled-back mail)");
    assert.deepEqual(await statusCounts(s.fx.url), { sent: N + 1 });
    const attempts = await rows<{ outcome: string; n: number }>(s.fx.url, "SELECT outcome, COUNT(*) AS n FROM mail_outbox_attempt GROUP BY outcome");
    assert.deepEqual(attempts.map((a) => [a.outcome, Number(a.n)]), [["accepted", N + 1]]);
    const [row] = await rows<{ attempts: number; lease_owner: string | null; sent_at: Date; created_at: Date; mta_queue_id: string }>(
      s.fx.url,
      "SELECT attempts, lease_owner, sent_at, created_at, mta_queue_id FROM mail_outbox WHERE id = ?",
      [late.id],
    );
    assert.equal(row?.attempts, 1);
    assert.equal(row?.lease_owner, null);
    assert.ok(row!.sent_at.getTime() >= row!.created_at.getTime(), "times in one zone (UTC) on both sides");
    assert.ok(Math.abs(row!.sent_at.getTime() - Date.now()) < 60_000, "sent_at is now, whatever the process's TZ");
    assert.equal(row?.mta_queue_id, s.smtp.messages.find((m) => m.messageId === late.messageId)?.queueId);
    // The attempt's start is written from the process's Date, sent_at by the database's NOW(3): the same clock reading in UTC.
    const [attempt] = await rows<{ started_at: Date }>(s.fx.url, "SELECT started_at FROM mail_outbox_attempt WHERE email_id = ?", [late.id]);
    assert.ok(Math.abs(attempt!.started_at.getTime() - row!.sent_at.getTime()) < 5_000, `started_at ${attempt!.started_at.toISOString()} vs sent_at ${row!.sent_at.toISOString()}`);
  });

  it("two relays on one database never claim the same row: every mail is handed over once, with one attempt", async (t) => {
    const s = await setup(t, { faults: (ctx) => (ctx.phase === "data" ? { stallMs: 3 } : undefined) });
    if (!s) return;
    const N = 300;
    const enqueued = await enqueueMany(s.prisma, N, "two");
    const options = { databaseUrl: s.fx.url, transport: s.smtp.url, concurrency: 6, batchSize: 12, pollIntervalMs: 100, ...quiet };
    const a = createRelay({ ...options, relayId: "relay-a" });
    t.after(() => a.stop().catch(() => {})); // also when the test fails before its own stop()
    const b = createRelay({ ...options, relayId: "relay-b" });
    t.after(() => b.stop().catch(() => {})); // also when the test fails before its own stop()
    await Promise.all([a.start(), b.start()]);
    await s.smtp.waitFor(N, 60_000);
    const [ca, cb] = await Promise.all([a.stop(), b.stop()]);
    t.diagnostic(`relay-a claimed ${ca.claimed}, relay-b claimed ${cb.claimed}`);
    assert.equal(ca.claimed + cb.claimed, N, "every row claimed exactly once between them");
    assert.ok(ca.claimed > 0 && cb.claimed > 0, "both relays took part");
    const byId = s.smtp.countByMessageId();
    for (const e of enqueued) assert.equal(byId.get(e.messageId), 1);
    assert.deepEqual(await statusCounts(s.fx.url), { sent: N });
    const perMail = await rows<{ n: number }>(s.fx.url, "SELECT COUNT(*) AS n FROM mail_outbox_attempt GROUP BY email_id HAVING COUNT(*) > 1");
    assert.equal(perMail.length, 0, "no mail has two attempts");
    const [{ total }] = (await rows<{ total: number }>(s.fx.url, "SELECT SUM(attempts) AS total FROM mail_outbox")) as [{ total: number }];
    assert.equal(Number(total), N);
  });

  for (const policy of ["resend", "hold"] as const) {
    it(`a relay killed (SIGKILL) mid hand-off: when its lease runs out another relay rescues its mail as uncertain hand-offs, ${policy === "resend" ? "and hands it over again" : "and holds it for an operator"} (policy ${policy})`, async (t) => {
      let stall = true;
      const s = await setup(t, { faults: (ctx) => (ctx.phase === "data" && stall ? { stallMs: 20_000 } : undefined) });
      if (!s) return;
      const enqueued = await enqueueMany(s.prisma, 5, `kill-${policy}`);
      const victim = spawnRelay({
        DATABASE_URL: s.fx.url,
        MAIL_OUTBOX_TRANSPORT: s.smtp.url,
        RELAY_ID: "victim",
        RELAY_OPTIONS: JSON.stringify({ concurrency: 5, leaseMs: 1000, pollIntervalMs: 50 }),
      });
      after(() => void victim.child.kill("SIGKILL"));
      // All five are in the MTA's DATA phase, unanswered.
      await until("the victim claimed all five", async () => (await statusCounts(s.fx.url)).sending === 5, 20_000);
      await until("the hand-offs reached DATA", () => s.smtp.mailFroms.length >= 5);
      victim.child.kill("SIGKILL");
      await victim.exited;
      stall = false;
      const rescuer = createRelay({ databaseUrl: s.fx.url, transport: s.smtp.url, relayId: "rescuer", leaseExpiryPolicy: policy, ...quiet });
      t.after(() => rescuer.stop().catch(() => {})); // also when the test fails before its own stop()
      await sleep(1100); // the victim's lease (1 s) runs out
      const counts = await rescuer.runOnce();
      await rescuer.stop();
      assert.equal(counts.rescued, 5);
      const list = await rows<{ message_id: string; status: string; uncertain_handoffs: number; attempts: number }>(
        s.fx.url,
        "SELECT message_id, status, uncertain_handoffs, attempts FROM mail_outbox",
      );
      assert.ok(list.every((r) => r.uncertain_handoffs === 1));
      const expired = await rows<{ relay: string; error_code: string; attempt: number }>(s.fx.url, "SELECT relay, error_code, attempt FROM mail_outbox_attempt WHERE outcome = 'lease_expired'");
      assert.equal(expired.length, 5);
      assert.ok(expired.every((e) => e.relay.startsWith("victim#") && e.error_code === "ELEASE" && e.attempt === 1), "the attempt log names the relay that died");
      if (policy === "resend") {
        assert.equal(counts.sent, 5);
        assert.ok(list.every((r) => r.status === "sent" && r.attempts === 2));
        const byId = s.smtp.countByMessageId();
        for (const e of enqueued) assert.ok((byId.get(e.messageId) ?? 0) >= 1, "delivered");
      } else {
        assert.equal(counts.sent, 0);
        assert.ok(list.every((r) => r.status === "held"));
      }
    });
  }

  it("a relay whose database connections are killed (KILL from another session) mid-stream reconnects and delivers every mail once", async (t) => {
    const s = await setup(t, { faults: (ctx) => (ctx.phase === "data" ? { stallMs: 5 } : undefined) });
    if (!s) return;
    const N = 200;
    const enqueued = await enqueueMany(s.prisma, N, "kill-conn");
    await s.prisma.$disconnect(); // only the relay's connections are left on the database
    const admin = await adminConnection(t);
    // A claim whose COMMIT the server ran just before the KILL reached it is in doubt for the relay
    // (it saw the connection close): those rows stay leased to it, unknown to it, until the lease
    // runs out and they are rescued (never handed over, so still once each). A short lease keeps
    // that wait inside the test's.
    const relay = createRelay({ databaseUrl: s.fx.url, transport: s.smtp.url, concurrency: 4, batchSize: 10, pollIntervalMs: 100, leaseMs: 3000, ...quiet });
    t.after(() => relay.stop().catch(() => {})); // also when the test fails before its own stop()
    const warnings: Error[] = [];
    relay.on("warning", (w) => warnings.push(w));
    await relay.start();
    let killed = 0;
    while (s.smtp.messages.length < N * 0.8) {
      await sleep(150);
      const ids = (await admin.query("SELECT ID AS id FROM information_schema.PROCESSLIST WHERE DB = ? AND ID <> CONNECTION_ID()", [s.fx.database])) as { id: number }[];
      for (const { id } of ids) {
        await admin.query(`KILL ${Number(id)}`).catch(() => {}); // gone already
        killed++;
      }
    }
    await s.smtp.waitFor(N, 30_000);
    await relay.stop();
    t.diagnostic(`connections killed: ${killed}; warnings: ${warnings.length}`);
    assert.ok(killed >= 3, "connections were killed while the relay worked");
    const byId = s.smtp.countByMessageId();
    for (const e of enqueued) assert.equal(byId.get(e.messageId), 1, `${e.messageId} arrived once`);
    assert.deepEqual(await statusCounts(s.fx.url), { sent: N });
  });

  it("the relay's pool recovers by itself when the server goes away and comes back", async (t) => {
    const s = await setup(t);
    if (!s) return;
    const u = new URL(MYSQL_ADMIN_URL);
    const proxy = await startProxy(t, { host: u.hostname, port: Number(u.port || 3306) });
    const viaProxy = new URL(s.fx.url);
    viaProxy.port = String(proxy.port);
    viaProxy.searchParams.set("connect_timeout", "2");
    const relay = createRelay({ databaseUrl: viaProxy.toString(), transport: s.smtp.url, pollIntervalMs: 100, ...quiet });
    const warnings: Error[] = [];
    relay.on("warning", (w) => warnings.push(w));
    await relay.start();
    after(() => relay.stop());
    await enqueueMany(s.prisma, 5, "before");
    await s.smtp.waitFor(5, 10_000);
    await proxy.down();
    await enqueueMany(s.prisma, 5, "during");
    await until("the relay noticed the outage", () => warnings.length > 0, 15_000);
    await sleep(5000); // longer than the pool waits for a connection (connect_timeout + 2 s): claims fail meanwhile
    assert.equal(s.smtp.messages.length, 5);
    const t0 = performance.now();
    await proxy.up();
    await s.smtp.waitFor(10, 30_000);
    t.diagnostic(`delivered ${Math.round(performance.now() - t0)} ms after the server came back; warning: ${warnings[0]?.message}`);
    await relay.stop();
    assert.deepEqual(await statusCounts(s.fx.url), { sent: 10 });
    assert.equal(new Set(s.smtp.messages.map((m) => m.messageId)).size, 10);
  });
});

describe("polling on MariaDB (no LISTEN)", () => {
  it("an idle relay reads once per pollIntervalMs; a mail after a quiet spell waits at most that long, and mail right after it is claimed within tens of milliseconds", async (t) => {
    const s = await setup(t);
    if (!s) return;
    const db = (await openDatabase(s.fx.url)) as MysqlStore;
    t.after(() => db.close());
    // Count every statement the relay sends (pool queries, and those on connections it takes for transactions).
    let statements = 0;
    const pool = db.pool as unknown as Record<string, (...args: any[]) => any>;
    for (const name of ["query", "batch"] as const) {
      const original = pool[name]!.bind(db.pool);
      pool[name] = (...args: unknown[]) => {
        statements++;
        return original(...args);
      };
    }
    const getConnection = pool.getConnection!.bind(db.pool);
    pool.getConnection = async () => {
      const conn = await getConnection();
      for (const name of ["query", "batch", "beginTransaction", "commit", "rollback"] as const) {
        const original = conn[name].bind(conn);
        conn[name] = (...args: unknown[]) => {
          statements++;
          return original(...args);
        };
      }
      return conn;
    };
    assert.equal(db.adaptivePolling, true);
    const pollIntervalMs = 1000;
    const relay = createRelay({ db, transport: s.smtp.url, pollIntervalMs, gaugeIntervalMs: 0, ...quiet });
    await relay.start();
    after(() => relay.stop());
    await sleep(2000); // settle: the first looks, rescue, pauses and rates read
    const idle0 = statements;
    const idleMs = 5000;
    await sleep(idleMs);
    const perSecond = ((statements - idle0) * 1000) / idleMs;
    t.diagnostic(`idle relay: ${perSecond.toFixed(1)} statements/s (pollIntervalMs ${pollIntervalMs})`);
    assert.ok(perSecond <= 6, `an idle relay sends few statements (${perSecond}/s)`);

    // The first mail after the quiet spell: found by the next poll, at most pollIntervalMs away.
    const firstAt = performance.now();
    await s.prisma.outboxEmail.enqueue({ to: "first@example.com", subject: "first", text: "x" });
    await s.smtp.waitFor(1, 5000);
    const first = performance.now() - firstAt;
    assert.ok(first < pollIntervalMs + 500, `first mail after idle handed over in ${first} ms`);
    // Mail right after it: the relay polls quickly now.
    const lat: number[] = [];
    for (let i = 0; i < 5; i++) {
      await sleep(30);
      const at = performance.now();
      await s.prisma.outboxEmail.enqueue({ to: `burst${i}@example.com`, subject: "burst", text: "x" });
      await s.smtp.waitFor(2 + i, 5000);
      lat.push(performance.now() - at);
    }
    t.diagnostic(`first mail after ${idleMs / 1000} s idle: ${Math.round(first)} ms; the next five: ${lat.map((x) => Math.round(x)).join(", ")} ms`);
    assert.ok(Math.max(...lat) < 400, `mail following mail waits little (${lat.map(Math.round).join(", ")} ms)`);
  });
});

describe("MariaDB errors, classified by what they mean", () => {
  it("refused connection, killed connection, duplicate key, missing table, lock wait timeout, deadlock", async (t) => {
    if (!(await needMysql(t))) return;
    const fx = await freshMysql(t);
    const db = (await openDatabase(fx.url)) as MysqlStore;
    t.after(() => db.close());
    const failure = (p: Promise<unknown>) => p.then(() => assert.fail("expected an error"), (err: unknown) => err);

    // A server that is not there: a port nothing listens on.
    const free = net.createServer();
    const port = await new Promise<number>((resolve) => free.listen(0, "127.0.0.1", () => resolve((free.address() as net.AddressInfo).port)));
    await new Promise((resolve) => free.close(resolve));
    const nowhere = new URL(fx.url);
    nowhere.port = String(port);
    nowhere.searchParams.set("connect_timeout", "1");
    const down = await openDatabase(nowhere.toString());
    const refused = await failure(down.claim("r", 1, 1000));
    await down.close();
    assert.equal(down.classifyError(refused), "unavailable");

    const admin = await adminConnection(t);
    const conn = await db.pool.getConnection();
    try {
      const [{ id }] = (await conn.query("SELECT CONNECTION_ID() AS id")) as [{ id: number }];
      await admin.query(`KILL ${Number(id)}`);
      assert.equal(db.classifyError(await failure(conn.query("SELECT 1"))), "unavailable", "killed connection");
    } finally {
      await conn.release().catch(() => {});
    }
    // The pool hands out a live connection after that one died.
    assert.deepEqual(await db.pool.query("SELECT 1 AS one"), [{ one: 1 }]);

    const insert = "INSERT INTO mail_outbox_lock (name, owner, expires_at) VALUES (?, 'test', NOW(3))";
    await db.pool.query(insert, ["a"]);
    await db.pool.query(insert, ["b"]);
    assert.equal(db.classifyError(await failure(db.pool.query(insert, ["a"]))), "conflict", "duplicate key");
    assert.equal(db.classifyError(await failure(db.pool.query("SELECT * FROM mail_outbox_nope"))), "schema", "missing table");
    assert.equal(db.classifyError(await failure(db.pool.query("SELECT nope FROM mail_outbox"))), "schema", "missing column");

    const [x, y] = [await db.pool.getConnection(), await db.pool.getConnection()];
    try {
      await x.beginTransaction();
      await x.query("SELECT * FROM mail_outbox_lock WHERE name = 'a' FOR UPDATE");
      await y.query("SET SESSION innodb_lock_wait_timeout = 1");
      assert.equal(db.classifyError(await failure(y.query("UPDATE mail_outbox_lock SET owner = 'y' WHERE name = 'a'"))), "busy", "lock wait timeout");
      await y.beginTransaction();
      await y.query("SELECT * FROM mail_outbox_lock WHERE name = 'b' FOR UPDATE");
      const xWaits = failure(x.query("SELECT * FROM mail_outbox_lock WHERE name = 'b' FOR UPDATE")).catch((e: unknown) => e);
      await sleep(100);
      const yDeadlock = await y.query("SELECT * FROM mail_outbox_lock WHERE name = 'a' FOR UPDATE").then(
        () => null,
        (e: unknown) => e,
      );
      // One of the two is chosen as the victim.
      const victim = yDeadlock ?? (await xWaits);
      assert.equal((victim as { errno?: number }).errno, 1213);
      assert.equal(db.classifyError(victim), "busy", "deadlock");
    } finally {
      await x.rollback().catch(() => {});
      await y.rollback().catch(() => {});
      await x.release();
      await y.release();
    }
  });
});
