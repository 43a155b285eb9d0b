/**
 * Retention (relay option `retention`, relay-ops.ts; `mail-outbox purge --retention`, admin.ts) on
 * real SQLite files and a real PostgreSQL server: two running relays with the same rules, of which
 * only the holder of the "retention" lease purges; old sent, cancelled and dead mail goes with its
 * attempt log, young and pending and held mail stays; `mail_outbox_purged_total{status}` and one
 * info line per turn say what went. The rules parse strictly.
 */
import { describe, it } from "node:test";
import type { TestContext } from "node:test";
import assert from "node:assert/strict";
import { EventEmitter } from "node:events";
import { Registry } from "prom-client";
import { createLogger, createRelay, parseRetention, purgeByRetention, type Relay } from "../src/index.js";
import { openDatabase, toSqliteTime, type Db } from "../src/db.js";
import { newId } from "../src/ids.js";
import { OptionsError } from "../src/errors.js";
import { RETENTION_LOCK, opsSettings } from "../src/relay-ops.js";
import { main } from "../src/cli/main.js";
import { retentionFlags } from "../src/cli/relay.js";
import { freshMysql, freshPostgres, freshSqlite, insertRow, sqliteOf, pgOf } from "./support/db.js";
import { needMysql, needPostgres } from "./support/services.js";
import { startTestSmtp } from "../testkit/smtp.js";

const DAY = 86_400_000;
const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Insert a row last changed `daysAgo` days ago, with one attempt-log line. */
async function seed(db: Db, status: string, daysAgo: number): Promise<string> {
  const id = newId();
  const at = new Date(Date.now() - daysAgo * DAY);
  const raw = Buffer.from(`Message-ID: <${id}@retention.test>\r\nSubject: r\r\n\r\nbody\r\n`);
  const mail: Record<string, unknown> = {
    id,
    message_id: `<${id}@retention.test>`,
    status,
    priority: 0,
    envelope_from: "app@retention.test",
    envelope_to: JSON.stringify(["ann@retention.test"]),
    subject: "r",
    raw,
    size: raw.length,
    attempts: 1,
    max_attempts: 5,
    send_at: at,
    // Pending rows are due in an hour: the relays leave them alone.
    next_attempt_at: status === "pending" ? new Date(Date.now() + 3_600_000) : at,
    uncertain_handoffs: 0,
    created_at: at,
    updated_at: at,
    sent_at: status === "sent" ? at : null,
  };
  const attempt: Record<string, unknown> = { id: newId(), email_id: id, attempt: 1, relay: "seed", started_at: at, duration_ms: 5, outcome: status === "dead" ? "permanent" : "accepted" };
  await insert(db, "mail_outbox", mail);
  await insert(db, "mail_outbox_attempt", attempt);
  return id;
}

async function insert(db: Db, table: string, v: Record<string, unknown>): Promise<void> {
  if (db.dialect === "mysql") return insertRow(db, table, v);
  const cols = Object.keys(v);
  if (db.dialect === "postgresql") {
    await db.pool.query(`INSERT INTO ${table} (${cols.join(", ")}) VALUES (${cols.map((c, i) => `$${i + 1}${c === "envelope_to" ? "::jsonb" : ""}`).join(", ")})`, Object.values(v));
  } else {
    const vals = Object.fromEntries(Object.entries(v).map(([k, x]) => [k, x instanceof Date ? toSqliteTime(x) : x]));
    sqliteOf(db).db.prepare(`INSERT INTO ${table} (${cols.join(", ")}) VALUES (${cols.map((c) => `@${c}`).join(", ")})`).run(vals);
  }
}

async function ids(db: Db, table: "mail_outbox" | "mail_outbox_attempt"): Promise<string[]> {
  const col = table === "mail_outbox" ? "id" : "email_id";
  const sql = `SELECT ${col} AS id FROM ${table}`;
  const rows =
    db.dialect === "mysql"
      ? ((await db.pool.query(sql)) as { id: string }[])
      : db.dialect === "postgresql"
        ? (await pgOf(db).pool.query<{ id: string }>(sql)).rows
        : (sqliteOf(db).db.prepare(sql).all() as { id: string }[]);
  return rows.map((r) => String(r.id)).sort();
}

/** The table the retention tests start from: what the rules sent=30d,cancelled=30d,dead=90d delete, and what they keep. */
async function seedTable(db: Db): Promise<{ purge: string[]; keep: string[] }> {
  const purge: string[] = [];
  const keep: string[] = [];
  for (let i = 0; i < 7; i++) purge.push(await seed(db, "sent", 40));
  for (let i = 0; i < 2; i++) keep.push(await seed(db, "sent", 1));
  for (let i = 0; i < 3; i++) purge.push(await seed(db, "dead", 100));
  for (let i = 0; i < 2; i++) keep.push(await seed(db, "dead", 40)); // dead is kept 90 days
  for (let i = 0; i < 2; i++) purge.push(await seed(db, "cancelled", 31));
  keep.push(await seed(db, "pending", 200));
  keep.push(await seed(db, "held", 200));
  return { purge: purge.sort(), keep: keep.sort() };
}

function purgedTotal(page: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const m of page.matchAll(/^mail_outbox_purged_total\{status="(\w+)"\} (\S+)$/gm)) out[m[1]!] = Number(m[2]);
  return out;
}

async function until(what: string, fn: () => Promise<boolean>, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await fn())) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

const RULES = { sent: "30d", cancelled: "30d", dead: "90d" } as const;

for (const dialect of ["sqlite", "postgresql", "mysql"] as const) {
  describe(`retention on ${dialect}`, () => {
    it("of two relays only the lease holder purges: old sent, cancelled and dead mail with its attempts goes, young, pending and held mail stays; counted and logged", async (t: TestContext) => {
      if (dialect === "postgresql" && !(await needPostgres(t))) return;
      if (dialect === "mysql" && !(await needMysql(t))) return;
      const fx = dialect === "sqlite" ? await freshSqlite(t) : dialect === "mysql" ? await freshMysql(t) : await freshPostgres(t);
      const db = await openDatabase(fx.url);
      t.after(() => db.close());
      const { purge, keep } = await seedTable(db);
      const smtp = await startTestSmtp();
      t.after(() => smtp.close());

      const relays: { relay: Relay; registry: Registry; lines: Record<string, unknown>[] }[] = [];
      for (const name of ["keeper-a", "keeper-b"]) {
        const registry = new Registry();
        const lines: Record<string, unknown>[] = [];
        const logger = createLogger({ env: { MAIL_OUTBOX_LOG_LEVEL: "info", MAIL_OUTBOX_LOG_FORMAT: "json" }, write: (l) => void lines.push(JSON.parse(l) as Record<string, unknown>) });
        // Batches of 2, so a turn takes several transactions.
        const relay = createRelay({ databaseUrl: fx.url, transport: smtp.url, relayId: name, pollIntervalMs: 100, metricsRegistry: registry, logger, retention: { ...RULES, intervalMs: 200, batchSize: 2, pauseMs: 0 } });
        t.after(() => relay.stop({ deadlineMs: 1000 }).then(() => {}));
        relays.push({ relay, registry, lines });
      }
      await Promise.all(relays.map((r) => r.relay.start()));

      await until("the old mail to be purged", async () => (await ids(db, "mail_outbox")).length === keep.length);
      assert.deepEqual(await ids(db, "mail_outbox"), keep);
      assert.deepEqual(await ids(db, "mail_outbox_attempt"), keep, "the attempt logs of purged mail are gone, the others stay");
      await sleep(600); // more turns: nothing else goes
      assert.deepEqual(await ids(db, "mail_outbox"), keep);

      const counted = await Promise.all(relays.map(async (r) => purgedTotal(await r.registry.metrics())));
      const lock = (await db.readLock(RETENTION_LOCK))!;
      const holder = relays.findIndex((r) => lock.owner.startsWith(r.relay.id));
      assert.ok(holder >= 0, lock.owner);
      assert.deepEqual(counted[holder], { sent: 7, dead: 3, cancelled: 2 });
      assert.deepEqual(counted[1 - holder], {}, "the relay without the lease purged nothing");
      const turns = relays[holder]!.lines.filter((l) => typeof l.msg === "string" && l.msg.startsWith("retention purged"));
      assert.equal(turns.length, 1, "one info line per turn that purged something");
      assert.equal(turns[0]!.level, 30);
      assert.equal(turns[0]!.msg, "retention purged 12 mails");
      assert.deepEqual(turns[0]!.purged, { sent: 7, dead: 3, cancelled: 2 });
      assert.equal(turns[0]!.rules, "sent=30d,cancelled=30d,dead=90d");
      assert.ok(relays[1 - holder]!.lines.every((l) => !String(l.msg).startsWith("retention")));
      assert.equal(purge.length, 12);
    });

    it("maxPerTurn caps a turn; the rest goes in the next turns", async (t: TestContext) => {
      if (dialect === "postgresql" && !(await needPostgres(t))) return;
      if (dialect === "mysql" && !(await needMysql(t))) return;
      const fx = dialect === "sqlite" ? await freshSqlite(t) : dialect === "mysql" ? await freshMysql(t) : await freshPostgres(t);
      const db = await openDatabase(fx.url);
      t.after(() => db.close());
      for (let i = 0; i < 7; i++) await seed(db, "sent", 40);
      const lines: Record<string, unknown>[] = [];
      const logger = createLogger({ env: { MAIL_OUTBOX_LOG_LEVEL: "info", MAIL_OUTBOX_LOG_FORMAT: "json" }, write: (l) => void lines.push(JSON.parse(l) as Record<string, unknown>) });
      const smtp = await startTestSmtp();
      t.after(() => smtp.close());
      const relay = createRelay({ databaseUrl: fx.url, transport: smtp.url, pollIntervalMs: 100, logger, retention: { sent: "30d", intervalMs: 200, batchSize: 2, pauseMs: 0, maxPerTurn: 3 } });
      t.after(() => relay.stop({ deadlineMs: 1000 }).then(() => {}));
      await relay.start();
      await until("every old mail to be purged", async () => (await ids(db, "mail_outbox")).length === 0);
      const turns = lines.filter((l) => String(l.msg).startsWith("retention purged"));
      assert.deepEqual(turns.map((l) => (l.purged as Record<string, number>).sent), [3, 3, 1]);
      assert.deepEqual(turns.map((l) => l.more), [true, true, false]);
    });

    it("purge --retention applies the same rules once, with --dry-run first", async (t: TestContext) => {
      if (dialect === "postgresql" && !(await needPostgres(t))) return;
      if (dialect === "mysql" && !(await needMysql(t))) return;
      const fx = dialect === "sqlite" ? await freshSqlite(t) : dialect === "mysql" ? await freshMysql(t) : await freshPostgres(t);
      const db = await openDatabase(fx.url);
      t.after(() => db.close());
      const { keep } = await seedTable(db);

      const dry = await purgeByRetention(db, { retention: "sent=30d,cancelled=30d,dead=90d", dryRun: true });
      assert.deepEqual(dry.byStatus, { sent: 7, dead: 3, cancelled: 2 });
      assert.equal(dry.deleted, 12);
      assert.equal((await ids(db, "mail_outbox")).length, keep.length + 12, "a dry run changes nothing");

      const out = await cli(["purge", "--retention", "sent=30d,cancelled=30d,dead=90d", "--dry-run"], fx.url);
      assert.equal(out.code, 0, out.stderr);
      assert.match(out.stdout, /would delete 7 mails \(sent 7, dead 0, cancelled 0\) last changed before/);
      assert.match(out.stdout, /would delete 3 mails \(sent 0, dead 3, cancelled 0\)/);
      const conflict = await cli(["purge", "--retention", "sent=30d", "--status", "sent"], fx.url);
      assert.notEqual(conflict.code, 0);
      assert.match(conflict.stderr, /--retention gives the statuses and ages itself: leave out --status/);

      const done = await cli(["purge", "--retention", "sent=30d,cancelled=30d,dead=90d", "--json"], fx.url);
      assert.equal(done.code, 0, done.stderr);
      const result = JSON.parse(done.stdout) as { deleted: number; byStatus: Record<string, number> };
      assert.equal(result.deleted, 12);
      assert.deepEqual(result.byStatus, { sent: 7, dead: 3, cancelled: 2 });
      assert.deepEqual(await ids(db, "mail_outbox"), keep);
      assert.deepEqual(await ids(db, "mail_outbox_attempt"), keep);
    });
  });
}

async function cli(args: string[], url: string): Promise<{ code: number; stdout: string; stderr: string }> {
  let stdout = "";
  let stderr = "";
  const code = await main(args, {
    stdout: { write: (c: string | Uint8Array) => ((stdout += String(c)), true) },
    stderr: { write: (c: string | Uint8Array) => ((stderr += String(c)), true) },
    env: { DATABASE_URL: url },
    signals: new EventEmitter() as never,
  } as never);
  return { code, stdout, stderr };
}

describe("retention rules", () => {
  it("parseRetention reads status=age pairs and refuses anything else", () => {
    assert.deepEqual(parseRetention("sent=30d,cancelled=30d,dead=90d"), { sent: 30 * DAY, cancelled: 30 * DAY, dead: 90 * DAY });
    assert.deepEqual(parseRetention(" dead = 1h30m "), { dead: 5_400_000 });
    assert.throws(() => parseRetention(""), /--retention is empty/);
    assert.throws(() => parseRetention("pending=30d"), /"pending" cannot be purged/);
    assert.throws(() => parseRetention("held=1d"), OptionsError);
    assert.throws(() => parseRetention("sent"), /has no age; write sent=30d/);
    assert.throws(() => parseRetention("sent=30d,sent=40d"), /sent is given twice/);
    assert.throws(() => parseRetention("sent=30"), /--retention sent value "30" is not valid/);
  });

  it("the relay option is checked up front", () => {
    assert.equal(opsSettings({}).retention, null);
    const s = opsSettings({ retention: { sent: "30d", dead: 90 * DAY } }).retention!;
    assert.deepEqual(s.rules, { sent: 30 * DAY, dead: 90 * DAY });
    assert.deepEqual([s.intervalMs, s.batchSize, s.pauseMs, s.maxPerTurn], [300_000, 500, 50, 50_000]);
    assert.throws(() => opsSettings({ retention: {} }), /at least one of sent, cancelled, dead/);
    assert.throws(() => opsSettings({ retention: { pending: "1d" } as never }), /Unknown `retention.pending`/);
    assert.throws(() => opsSettings({ retention: { sent: "soon" } }), /retention.sent/);
    assert.throws(() => opsSettings({ retention: { sent: -1 } }), /`retention.sent` to be a duration/);
    assert.throws(() => opsSettings({ retention: { sent: "1d", batchSize: 0 } }), /`retention.batchSize` to be a whole number from 1 to 100000/);
    assert.throws(() => createRelay({ databaseUrl: "file:/x.db", transport: "smtp://127.0.0.1:1", retention: { sent: "1x" } }), OptionsError);
  });

  it("mail-outbox relay --retention and --retention-interval become the relay option", () => {
    assert.deepEqual(retentionFlags({}), {});
    assert.deepEqual(retentionFlags({ retention: "sent=30d,dead=90d", retentionInterval: "2m" }), { retention: { sent: 30 * DAY, dead: 90 * DAY, intervalMs: 120_000 } });
    assert.throws(() => retentionFlags({ retentionInterval: "2m" }), /--retention-interval needs --retention/);
    assert.throws(() => retentionFlags({ retention: "pending=1d" }), /cannot be purged/);
  });
});
