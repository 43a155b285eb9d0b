/**
 * What the MySQL/MariaDB fate and operations statements (src/stores/mysql/fate-sql.ts,
 * ops-sql.ts) do differently from the PostgreSQL ones and must still get right, on a real
 * MariaDB server: no RETURNING (events inserted are read back by their ids, with concurrent
 * followers), no UPDATE ... RETURNING (a `verify` transition and its attempt line in one
 * transaction), ON DUPLICATE KEY UPDATE assignments that read the same under MariaDB's
 * SIMULTANEOUS_ASSIGNMENT, the database clock read after the rate buckets are locked, and the
 * current fates per mail. The shared behaviour is in test/store-fates.test.ts and
 * test/store-ops.test.ts.
 */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import type { TestContext } from "node:test";
import mariadb from "mariadb";
import { openDatabase } from "../src/db.js";
import { newId } from "../src/ids.js";
import type { DeliveryEventInput } from "../src/store.js";
import type { MysqlStore } from "../src/stores/mysql/store.js";
import * as ops from "../src/stores/mysql/ops-sql.js";
import { freshMysql, insertRow, mysqlUrl } from "./support/db.js";
import { needMysql, MYSQL_ADMIN_URL } from "./support/services.js";

const MINUTE = 60_000;

async function open(t: TestContext, poolSize = 4): Promise<MysqlStore | null> {
  if (!(await needMysql(t))) return null;
  const fx = await freshMysql(t);
  const db = await openDatabase(fx.url, { poolSize });
  t.after(() => db.close());
  assert.equal(db.dialect, "mysql");
  return db as MysqlStore;
}

/** A second store on the same database (another relay or follower). */
async function second(t: TestContext, db: MysqlStore): Promise<MysqlStore> {
  const other = (await openDatabase(mysqlUrl(db.database), { poolSize: 4 })) as MysqlStore;
  t.after(() => other.close());
  return other;
}

async function seed(db: MysqlStore, m: { status?: string; envelopeTo?: string[]; attempts?: number; accepted?: string[] | null } = {}): Promise<string> {
  const id = newId();
  const raw = Buffer.from(`Message-ID: <${id}@example.test>\r\n\r\nbody\r\n`);
  const created = new Date(Date.now() - 10 * MINUTE);
  await insertRow(db, "mail_outbox", {
    id,
    message_id: `<${id}@example.test>`,
    status: m.status ?? "sent",
    priority: 0,
    envelope_from: "app@example.test",
    envelope_to: JSON.stringify(m.envelopeTo ?? ["ann@example.test"]),
    subject: "hi",
    raw,
    size: raw.length,
    attempts: m.attempts ?? 1,
    max_attempts: 5,
    send_at: created,
    next_attempt_at: created,
    uncertain_handoffs: m.status === "held" ? 1 : 0,
    accepted: m.accepted === undefined || m.accepted === null ? null : JSON.stringify(m.accepted),
    created_at: created,
    updated_at: created,
  });
  return id;
}

let keys = 0;
function ev(emailId: string, event: DeliveryEventInput["event"], recipient: string, more: Partial<DeliveryEventInput> = {}): DeliveryEventInput {
  return { emailId, recipient, event, at: new Date(), source: "log", queueId: "4AbC12", dsnStatus: null, remoteMta: null, reply: null, eventKey: `mysql:${++keys}`, ...more };
}

/** A connection of its own to the test database, for session settings the store's pool does not have. */
async function connection(t: TestContext, db: MysqlStore): Promise<mariadb.Connection> {
  const u = new URL(MYSQL_ADMIN_URL);
  const conn = await mariadb.createConnection({
    host: u.hostname,
    port: Number(u.port || 3306),
    user: decodeURIComponent(u.username) || "root",
    ...(u.password ? { password: decodeURIComponent(u.password) } : {}),
    database: db.database,
    timezone: "Z",
    bigIntAsNumber: true,
    jsonStrings: true,
  } as mariadb.ConnectionConfig);
  t.after(() => conn.end());
  await conn.query("SET time_zone = '+00:00'");
  return conn;
}

describe("MySQL/MariaDB fate and operations statements", () => {
  it("followers recording the same report at once store each event once, and each event comes back from exactly one of them", async (t) => {
    const db = await open(t);
    if (db === null) return;
    const other = await second(t, db);
    const mails = await Promise.all(Array.from({ length: 20 }, () => seed(db)));
    const events = mails.flatMap((id, i) => [ev(id, "queued", "", { eventKey: `race:q${i}` }), ev(id, "delivered", "ann@example.test", { eventKey: `race:d${i}` })]);
    // Four batches over the same 40 keys, in different orders, from two stores.
    const results = await Promise.all([
      db.recordDeliveryEvents(events),
      other.recordDeliveryEvents([...events].reverse()),
      db.recordDeliveryEvents(events.slice(10).concat(events.slice(0, 10))),
      other.recordDeliveryEvents(events),
    ]);
    const returned = results.flat().map((e) => e.eventKey);
    assert.equal(returned.length, 40, "each key returned once over all the callers");
    assert.equal(new Set(returned).size, 40);
    const [{ n }] = (await db.pool.query("SELECT count(*) AS n FROM mail_outbox_delivery")) as [{ n: number }];
    assert.equal(n, 40);
  });

  it("a batch larger than one INSERT keeps input order, skips keys stored before, and fails whole on a value too long (nothing truncated)", async (t) => {
    const db = await open(t);
    if (db === null) return;
    const a = await seed(db);
    const before = await db.recordDeliveryEvents([ev(a, "queued", "", { eventKey: "big:7" })]);
    assert.equal(before.length, 1);
    const batch = Array.from({ length: 1203 }, (_, i) => ev(a, "deferred", `r${i}@example.test`, { eventKey: `big:${i}` }));
    const inserted = await db.recordDeliveryEvents(batch);
    assert.equal(inserted.length, 1202, "big:7 was stored before");
    assert.deepEqual(
      inserted.map((e) => e.eventKey),
      batch.map((e) => e.eventKey).filter((k) => k !== "big:7"),
    );
    assert.ok(inserted.every((e) => e.emailId === a && Math.abs(e.recordedAt.getTime() - Date.now()) < MINUTE));
    await assert.rejects(db.recordDeliveryEvents([ev(a, "deferred", "x@example.test", { eventKey: "long:1" }), ev(a, "deferred", "y@example.test", { eventKey: "x".repeat(300) })]));
    assert.equal((await db.listDeliveryEvents(a)).filter((e) => e.eventKey === "long:1").length, 0, "the transaction kept nothing");
  });

  it("the current fates per mail: the latest final event per recipient (any case), else deferred; only the mails asked for", async (t) => {
    const db = await open(t);
    if (db === null) return;
    const a = await seed(db, { envelopeTo: ["ann@example.test", "bob@example.test"] });
    const b = await seed(db);
    const c = await seed(db);
    const t0 = Date.now() - 30 * MINUTE;
    const at = (m: number) => new Date(t0 + m * MINUTE);
    await db.recordDeliveryEvents([
      ev(a, "queued", "", { at: at(0) }),
      ev(a, "deferred", "ann@example.test", { at: at(1) }),
      ev(a, "delivered", "ANN@example.test", { at: at(2) }),
      ev(a, "deferred", "bob@example.test", { at: at(3) }),
      ev(b, "bounced", "ann@example.test", { at: at(1) }),
      ev(b, "deferred", "ann@example.test", { at: at(5) }),
      ev(c, "expired", "ann@example.test", { at: at(1) }),
    ]);
    const per = await db.fateCountsByMail([a, b, newId(), "not-a-uuid"]);
    assert.deepEqual([...per.keys()].sort(), [a, b].sort());
    assert.deepEqual(new Map(per.get(a)!.map((x) => [x.fate, x.n])), new Map([["delivered", 1], ["deferred", 1]]));
    assert.deepEqual(per.get(b), [{ fate: "bounced", n: 1 }]);
    assert.deepEqual(new Map((await db.fateCounts()).map((x) => [x.fate, Number(x.n)])), new Map([["delivered", 1], ["deferred", 1], ["bounced", 1], ["expired", 1]]));
  });

  it("the correlated fate condition (hasCurrentFate, for the fate filter) takes exactly the mails that currentFates gives that fate", async (t) => {
    const db = await open(t);
    if (db === null) return;
    const mails = await Promise.all(Array.from({ length: 30 }, () => seed(db)));
    const kinds = ["queued", "deferred", "delivered", "bounced", "expired", "deferred"] as const;
    const names = ["ann@example.test", "ANN@example.test", "bob@example.test"];
    let n = 7;
    const next = () => ((n = (Math.imul(n, 1664525) + 1013904223) >>> 0), n >>> 8); // the same events every run
    const t0 = Date.now() - 60 * MINUTE;
    const events = mails.flatMap((id) =>
      Array.from({ length: next() % 6 }, () => {
        const event = kinds[next() % kinds.length]!;
        // Few distinct times, so ties on `at` are settled by recorded_at and id.
        return ev(id, event, event === "queued" ? "" : names[next() % names.length]!, { at: new Date(t0 + (next() % 3) * MINUTE) });
      }),
    );
    await db.recordDeliveryEvents(events);
    const { currentFates, hasCurrentFate } = await import("../src/stores/mysql/fate-sql.js");
    for (const fate of ["delivered", "bounced", "expired", "deferred"]) {
      const byWindow = (await db.pool.query(`SELECT DISTINCT email_id FROM (${currentFates("")}) f WHERE f.event = ? ORDER BY email_id`, [fate])) as { email_id: string }[];
      const byExists = (await db.pool.query(`SELECT id FROM mail_outbox WHERE ${hasCurrentFate("mail_outbox.id")} ORDER BY id`, [fate])) as { id: string }[];
      assert.deepEqual(byExists.map((r) => r.id), byWindow.map((r) => r.email_id), fate);
    }
  });

  it("verify: a held row settled as received becomes sent with its recipients accepted and one attempt line; as absent, pending and due now; neither twice", async (t) => {
    const db = await open(t);
    if (db === null) return;
    const a = await seed(db, { status: "held", envelopeTo: ["ann@example.test", "bob@example.test"], accepted: ["carl@example.test"], attempts: 3 });
    const b = await seed(db, { status: "held", attempts: 2 });
    const at = new Date(Date.now() - MINUTE);
    assert.equal(await db.resolveUncertain(a, "relay-v", { kind: "received", queueId: "K9", at, response: "queued as K9" }), true);
    assert.equal(await db.resolveUncertain(a, "relay-v", { kind: "received", queueId: "K9", at, response: "queued as K9" }), false, "no longer held");
    assert.equal(await db.resolveUncertain(b, "relay-v", { kind: "absent", response: "not in the log" }), true);
    assert.equal(await db.resolveUncertain(b, "relay-v", { kind: "absent", response: "not in the log" }), false);
    const rows = (await db.pool.query(
      "SELECT id, status, mta_queue_id, mta_response, sent_at, accepted, next_attempt_at, lease_owner FROM mail_outbox WHERE id IN (?) ORDER BY id",
      [[a, b]],
    )) as { id: string; status: string; mta_queue_id: string | null; mta_response: string | null; sent_at: Date | null; accepted: string | null; next_attempt_at: Date }[];
    const ra = rows.find((r) => r.id === a)!;
    const rb = rows.find((r) => r.id === b)!;
    assert.deepEqual([ra.status, ra.mta_queue_id, ra.mta_response, ra.sent_at?.getTime(), JSON.parse(ra.accepted!)], [
      "sent",
      "K9",
      "queued as K9",
      at.getTime(),
      ["carl@example.test", "ann@example.test", "bob@example.test"],
    ]);
    assert.equal(rb.status, "pending");
    assert.ok(Math.abs(rb.next_attempt_at.getTime() - Date.now()) < MINUTE, "due now (the database's clock, UTC)");
    const lines = (await db.pool.query("SELECT email_id, attempt, relay, outcome, response, queue_id FROM mail_outbox_attempt ORDER BY email_id")) as Record<string, unknown>[];
    assert.deepEqual(
      lines.map((l) => [l.email_id, l.attempt, l.relay, l.outcome, l.response, l.queue_id]).sort(),
      [
        [a, 3, "relay-v", "verified", "queued as K9", "K9"],
        [b, 2, "relay-v", "verified", "not in the log", null],
      ].sort(),
    );
    assert.deepEqual(await db.mailIdsByQueueId(["K9"]), new Map([["K9", a]]), "the attempt line links the queue id");
  });

  it("a lease and a rate change mean the same with MariaDB's SIMULTANEOUS_ASSIGNMENT (every assignment reading the old row)", async (t) => {
    const db = await open(t);
    if (db === null) return;
    const conn = await connection(t, db);
    const [{ supported }] = (await conn.query("SELECT version() LIKE '%MariaDB%' AS supported")) as [{ supported: number }];
    if (!supported) return t.skip("SIMULTANEOUS_ASSIGNMENT is MariaDB's");
    await conn.query("SET SESSION sql_mode = CONCAT(@@sql_mode, ',SIMULTANEOUS_ASSIGNMENT')");
    assert.equal(await ops.tryLock(conn, "l", "a", MINUTE, { v: 1 }), true);
    assert.equal(await ops.tryLock(conn, "l", "b", MINUTE, { v: 2 }), false);
    assert.deepEqual((await ops.readLock(conn, "l"))?.data, { v: 1 }, "a lease held by another is left as it was");
    assert.equal(await ops.tryLock(conn, "l", "a", 1, undefined), true);
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(await ops.tryLock(conn, "l", "b", MINUTE, { v: 3 }), true, "taken once expired");
    const lock = await ops.readLock(conn, "l");
    assert.deepEqual([lock?.owner, lock?.data], ["b", { v: 3 }]);
    assert.ok(lock!.expiresAt.getTime() > Date.now() + MINUTE / 2);
    await ops.setRate(conn, "transport:x", 1000, 5);
    await conn.query("UPDATE mail_outbox_rate SET tokens = 0, refilled_at = NOW(3) - INTERVAL 2 SECOND");
    await ops.setRate(conn, "transport:x", 0.001, 50);
    const [r] = await ops.listRates(conn);
    // Refilled at the old rate (1000/s for 2 s, capped at the new burst 50), not at the new one.
    assert.deepEqual([r!.rate, r!.burst, r!.tokens], [0.001, 50, 50]);
  });

  it("relays taking from one bucket at once over several connections get what it refills and no more", async (t) => {
    const db = await open(t);
    if (db === null) return;
    const other = await second(t, db);
    const rate = 40;
    await db.setRate("transport:paced", rate, 1);
    await db.takeTokens(["transport:paced"], 1); // empty it
    const start = Date.now();
    let granted = 0;
    const taker = async (store: MysqlStore) => {
      while (Date.now() - start < 1500) {
        const r = await store.takeTokens(["transport:paced"], 1);
        granted += r.granted;
        if (r.granted === 0) await new Promise((res) => setTimeout(res, Math.min(r.waitMs, 5)));
      }
    };
    await Promise.all([db, db, other, other, db, other].map(taker));
    const elapsed = (Date.now() - start) / 1000;
    // At most what refilled in that time (plus the one token the burst holds). And no refill time
    // lost between takers: near the limit, as they never stop asking (the bound is loose for busy
    // machines, where a stalled server lets the bucket fill to its burst and the rest is lost).
    assert.ok(granted <= Math.ceil(rate * elapsed) + 1, `granted ${granted} in ${elapsed} s at ${rate}/s`);
    assert.ok(granted >= rate * elapsed * 0.5, `granted ${granted} in ${elapsed} s at ${rate}/s`);
  });

  it("times are UTC whatever the process's time zone: recorded, due and the gauges' clock agree with Date.now()", async (t) => {
    const db = await open(t);
    if (db === null) return;
    const a = await seed(db, { status: "pending" });
    const [e] = await db.recordDeliveryEvents([ev(a, "queued", "")]);
    assert.ok(Math.abs(e!.recordedAt.getTime() - Date.now()) < MINUTE, `recorded ${e!.recordedAt.toISOString()} (TZ ${process.env.TZ ?? "unset"})`);
    const g = await db.gauges();
    assert.ok(Math.abs(g.at.getTime() - Date.now()) < MINUTE, `at ${g.at.toISOString()}`);
    assert.equal(g.due, 1);
    assert.ok(g.oldestDueAgeSeconds !== null && g.oldestDueAgeSeconds >= 599 && g.oldestDueAgeSeconds < 660, `oldest ${g.oldestDueAgeSeconds}`);
    await db.addPause("all", "ops", null);
    assert.ok(Math.abs((await db.listPauses())[0]!.pausedAt.getTime() - Date.now()) < MINUTE);
    await db.addSuppressions([{ address: "x@example.test", reason: "r", source: "operator", emailId: null, expiresAt: new Date(Date.now() + MINUTE) }]);
    assert.deepEqual([...(await db.findSuppressed(["x@example.test"], new Date()))], ["x@example.test"]);
    assert.deepEqual([...(await db.findSuppressed(["x@example.test"], new Date(Date.now() + 2 * MINUTE)))], []);
  });
});
