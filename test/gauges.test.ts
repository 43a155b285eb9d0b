/**
 * The outbox gauges over real HTTP from running relays (relay-ops.ts), on SQLite and PostgreSQL:
 * the numbers on /metrics match the seeded table; of two relays one holds the "gauges" lease and
 * both export the same numbers; the lease passes to the other when its holder stops; an MTA outage
 * does not affect them; a database outage (PostgreSQL, cut off by a TCP proxy) keeps the last values
 * while `mail_outbox_gauges_age_seconds` grows, with one warning and no crash. The relays are
 * paused (mail_outbox_pause "all"), so the due mail seeded stays due.
 */
import { describe, it } from "node:test";
import type { TestContext } from "node:test";
import assert from "node:assert/strict";
import { Registry } from "prom-client";
import { createLogger, createRelay, type Relay } from "../src/index.js";
import { serveOperations, type OperationsServer } from "../src/http-server.js";
import { openDatabase, toSqliteTime, type Db } from "../src/db.js";
import { newId } from "../src/ids.js";
import { OptionsError } from "../src/errors.js";
import { GAUGES_LOCK } from "../src/relay-ops.js";
import { freshPostgres, freshSqlite, sqliteOf } from "./support/db.js";
import { startProxy } from "./support/tcp-proxy.js";
import { PG_ADMIN_URL, needPostgres } from "./support/services.js";
import { startTestSmtp } from "../testkit/smtp.js";

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

interface SeedRow {
  readonly status: string;
  readonly nextAttemptAt?: Date;
  readonly updatedAt?: Date;
  readonly uncertain?: number;
}

/** Insert an outbox row directly, as enqueue and the relay would leave it. */
async function seed(db: Db, r: SeedRow): Promise<string> {
  const id = newId();
  const now = new Date();
  const raw = Buffer.from(`Message-ID: <${id}@gauges.test>\r\nSubject: g\r\n\r\nbody\r\n`);
  const v: Record<string, unknown> = {
    id,
    message_id: `<${id}@gauges.test>`,
    status: r.status,
    priority: 0,
    envelope_from: "app@gauges.test",
    envelope_to: JSON.stringify(["ann@gauges.test"]),
    subject: "g",
    raw,
    size: raw.length,
    attempts: 0,
    max_attempts: 5,
    send_at: now,
    next_attempt_at: r.nextAttemptAt ?? now,
    uncertain_handoffs: r.uncertain ?? 0,
    created_at: r.updatedAt ?? now,
    updated_at: r.updatedAt ?? now,
    sent_at: r.status === "sent" ? (r.updatedAt ?? now) : null,
  };
  const cols = Object.keys(v);
  if (db.dialect === "postgresql") {
    await db.pool.query(`INSERT INTO mail_outbox (${cols.join(", ")}) VALUES (${cols.map((c, i) => `$${i + 1}${c === "envelope_to" ? "::jsonb" : ""}`).join(", ")})`, Object.values(v));
  } else {
    const vals = Object.fromEntries(Object.entries(v).map(([k, x]) => [k, x instanceof Date ? toSqliteTime(x) : x]));
    sqliteOf(db).db.prepare(`INSERT INTO mail_outbox (${cols.join(", ")}) VALUES (${cols.map((c) => `@${c}`).join(", ")})`).run(vals);
  }
  return id;
}

/** The table the gauge tests start from; `expected` is what the gauges must say about it. */
async function seedTable(db: Db): Promise<void> {
  const ago = (ms: number) => new Date(Date.now() - ms);
  for (const ms of [600_000, 300_000, 60_000]) await seed(db, { status: "pending", nextAttemptAt: ago(ms) }); // due
  for (let i = 0; i < 2; i++) await seed(db, { status: "pending", nextAttemptAt: ago(-3_600_000) }); // due in an hour
  for (let i = 0; i < 4; i++) await seed(db, { status: "sent" });
  await seed(db, { status: "dead" });
  await seed(db, { status: "dead", uncertain: 1 });
  await seed(db, { status: "held", uncertain: 1 });
  await seed(db, { status: "cancelled", uncertain: 1 }); // cancelled: not counted as uncertain
  await seed(db, { status: "sent", uncertain: 1 }); // sent: settled, not uncertain
}

const expectedMails = { pending: 5, sending: 0, sent: 5, dead: 2, held: 1, cancelled: 1 };

/** The value of one sample on a /metrics page; undefined when absent. */
function sample(text: string, name: string, labels?: string): number | undefined {
  const line = text.split("\n").find((l) => l.startsWith(labels ? `${name}{${labels}} ` : `${name} `));
  return line === undefined ? undefined : Number(line.slice(line.lastIndexOf(" ") + 1));
}

/** Every outbox gauge on a page, except the age (which differs by scrape time). */
function outboxGauges(text: string): Record<string, number | undefined> {
  const out: Record<string, number | undefined> = {};
  for (const s of Object.keys(expectedMails)) out[`mails.${s}`] = sample(text, "mail_outbox_mails", `status="${s}"`);
  for (const n of ["due", "oldest_due_age_seconds", "uncertain", "held", "dead"]) out[n] = sample(text, `mail_outbox_${n}`);
  return out;
}

async function scrape(ops: OperationsServer): Promise<string> {
  const res = await fetch(`${ops.url}/metrics`);
  assert.equal(res.status, 200);
  return res.text();
}

async function until<T>(what: string, fn: () => Promise<T | undefined | false>, timeoutMs = 15_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

function logLines() {
  const lines: Record<string, unknown>[] = [];
  const logger = createLogger({ env: { MAIL_OUTBOX_LOG_LEVEL: "info", MAIL_OUTBOX_LOG_FORMAT: "json" }, write: (l) => void lines.push(JSON.parse(l) as Record<string, unknown>) });
  return { lines, logger };
}

interface Running {
  readonly relay: Relay;
  readonly ops: OperationsServer;
  readonly lines: Record<string, unknown>[];
}

async function startRelay(t: TestContext, databaseUrl: string, smtpUrl: string, relayId: string, extra: Record<string, unknown> = {}): Promise<Running> {
  const registry = new Registry();
  const { lines, logger } = logLines();
  const relay = createRelay({ databaseUrl, transport: smtpUrl, relayId, pollIntervalMs: 100, gaugeIntervalMs: 200, metricsRegistry: registry, logger, connectRetries: 0, ...extra });
  const ops = await serveOperations({ port: 0, registry, health: async () => (await relay.health()).live });
  t.after(async () => {
    await relay.stop({ deadlineMs: 1000 }).catch(() => {});
    await ops.close();
  });
  await relay.start();
  return { relay, ops, lines };
}

for (const dialect of ["sqlite", "postgresql"] as const) {
  describe(`outbox gauges on ${dialect}`, () => {
    it("two relays export the seeded counts over HTTP, one of them holding the gauges lease; an MTA outage changes nothing; the lease passes on at stop", async (t) => {
      if (dialect === "postgresql" && !(await needPostgres(t))) return;
      const fx = dialect === "sqlite" ? await freshSqlite(t) : await freshPostgres(t);
      const db = await openDatabase(fx.url);
      t.after(() => db.close());
      await seedTable(db);
      await db.addPause("all", "gauges test", "keep the due mail due");
      const smtp = await startTestSmtp();
      t.after(() => smtp.close());
      const a = await startRelay(t, fx.url, smtp.url, "gauges-a");
      const b = await startRelay(t, fx.url, smtp.url, "gauges-b");

      const pages = await until("both relays to export the gauges", async () => {
        const pa = await scrape(a.ops);
        const pb = await scrape(b.ops);
        return sample(pa, "mail_outbox_due") !== undefined && sample(pb, "mail_outbox_due") !== undefined && ([pa, pb] as const);
      });
      for (const page of pages) {
        const g = outboxGauges(page);
        for (const [s, n] of Object.entries(expectedMails)) assert.equal(g[`mails.${s}`], n, `mail_outbox_mails{status="${s}"}`);
        assert.equal(g.due, 3);
        assert.ok(g.oldest_due_age_seconds! >= 600 && g.oldest_due_age_seconds! < 660, `oldest due age ${g.oldest_due_age_seconds}`);
        assert.equal(g.uncertain, 2, "dead and held with an uncertain hand-off; not the sent or cancelled one");
        assert.equal(g.held, 1);
        assert.equal(g.dead, 2);
        const age = sample(page, "mail_outbox_gauges_age_seconds");
        assert.ok(age !== undefined && age >= 0 && age < 10, `gauges age ${age}`);
      }
      assert.deepEqual(outboxGauges(pages[0]), outboxGauges(pages[1]), "both relays show the same numbers");

      // One holder; it keeps the lease from turn to turn.
      const lock = (await db.readLock(GAUGES_LOCK))!;
      const holder = lock.owner.startsWith("gauges-a") ? a : b;
      const other = holder === a ? b : a;
      assert.ok(lock.owner.startsWith(holder.relay.id) && !lock.owner.startsWith(other.relay.id), lock.owner);
      await sleep(700);
      assert.equal((await db.readLock(GAUGES_LOCK))!.owner, lock.owner, "the holder keeps the lease");

      // A change in the table reaches both relays through the one holder's count.
      await seed(db, { status: "dead" });
      await until("dead 3 on both relays", async () => sample(await scrape(a.ops), "mail_outbox_dead") === 3 && sample(await scrape(b.ops), "mail_outbox_dead") === 3);

      // The MTA refuses connections: the gauges go on (they never touch the MTA).
      await smtp.refuseConnections();
      await seed(db, { status: "held" });
      await until("held 2 on both relays while the MTA is down", async () => sample(await scrape(a.ops), "mail_outbox_held") === 2 && sample(await scrape(b.ops), "mail_outbox_held") === 2);
      assert.ok(sample(await scrape(a.ops), "mail_outbox_gauges_age_seconds")! < 10);
      await smtp.acceptConnections();

      // The holder stops and gives up the lease: the other takes it over and keeps counting.
      await holder.relay.stop({ deadlineMs: 1000 });
      await until("the other relay to hold the lease", async () => (await db.readLock(GAUGES_LOCK))?.owner.startsWith(other.relay.id));
      await seed(db, { status: "cancelled" });
      await until("cancelled 2 on the remaining relay", async () => sample(await scrape(other.ops), "mail_outbox_mails", 'status="cancelled"') === 2);
    });

    it("gaugeIntervalMs 0: no gauges, no lease", async (t) => {
      if (dialect === "postgresql" && !(await needPostgres(t))) return;
      const fx = dialect === "sqlite" ? await freshSqlite(t) : await freshPostgres(t);
      const db = await openDatabase(fx.url);
      t.after(() => db.close());
      const smtp = await startTestSmtp();
      t.after(() => smtp.close());
      const r = await startRelay(t, fx.url, smtp.url, "no-gauges", { gaugeIntervalMs: 0 });
      await until("the claim loop to turn", async () => (await r.relay.health()).live.status === "ok");
      await sleep(300);
      const page = await scrape(r.ops);
      assert.equal(sample(page, "mail_outbox_due"), undefined);
      assert.equal(sample(page, "mail_outbox_gauges_age_seconds"), undefined);
      assert.equal(await db.readLock(GAUGES_LOCK), null);
    });
  });
}

it("PostgreSQL cut off: the last gauge values stay, their age grows, one warning, no crash; they refresh when it is back", async (t) => {
  if (!(await needPostgres(t))) return;
  const fx = await freshPostgres(t);
  const db = await openDatabase(fx.url);
  t.after(() => db.close());
  await seedTable(db);
  await db.addPause("all", "gauges test", "keep the due mail due");
  const proxy = await startProxy(new URL(PG_ADMIN_URL));
  t.after(() => proxy.close());
  const u = new URL(fx.url);
  u.host = `127.0.0.1:${proxy.port}`;
  const smtp = await startTestSmtp();
  t.after(() => smtp.close());
  const r = await startRelay(t, u.toString(), smtp.url, "gauges-outage");
  const before = outboxGauges(await until("the gauges", async () => {
    const page = await scrape(r.ops);
    return sample(page, "mail_outbox_due") !== undefined && page;
  }));
  assert.equal(before.due, 3);

  await proxy.down();
  await sleep(500); // a turn or two fail
  const age1 = sample(await scrape(r.ops), "mail_outbox_gauges_age_seconds")!;
  await sleep(1500);
  const page2 = await scrape(r.ops);
  const age2 = sample(page2, "mail_outbox_gauges_age_seconds")!;
  assert.ok(age2 >= age1 + 1, `the age grows while the database is away: ${age1} -> ${age2}`);
  assert.deepEqual(outboxGauges(page2), before, "the last values stay");
  const warnings = r.lines.filter((l) => l.level === 40 && String(l.msg).startsWith("refreshing the outbox gauges failed"));
  assert.equal(warnings.length, 1, "one warning per outage");

  await proxy.up();
  await until("fresh gauges after the outage", async () => sample(await scrape(r.ops), "mail_outbox_gauges_age_seconds")! < 1);
  assert.ok(r.lines.some((l) => l.level === 30 && l.msg === "refreshing the outbox gauges works again"));
  assert.equal((await r.relay.health()).live.status, "ok");
});

it("gaugeIntervalMs is checked up front", () => {
  for (const bad of [-1, 50, 1.5, Number.NaN]) {
    assert.throws(() => createRelay({ databaseUrl: "file:/nonexistent.db", transport: "smtp://127.0.0.1:1", gaugeIntervalMs: bad }), OptionsError);
  }
  assert.throws(() => createRelay({ databaseUrl: "file:/x.db", transport: "smtp://127.0.0.1:1", gaugeIntervalMs: 50 }), /`gaugeIntervalMs` to be 0 \(no gauges\) or a whole number of milliseconds >= 100/);
});
