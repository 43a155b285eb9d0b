/**
 * What the MySQL/MariaDB operator and dashboard statements (src/stores/mysql/admin-sql.ts,
 * ui-sql.ts) do differently from the PostgreSQL ones and must still get right, on a real MariaDB
 * server: comparisons under the tables' utf8mb4_unicode_ci collation (which folds case, accents
 * and trailing spaces) where PostgreSQL compares exactly, recipients inside the envelope_to JSON
 * text, metadata keys that become JSON paths, the current fate without a correlated derived table,
 * replay and cancel without RETURNING (lock, read, then change), purge without DELETE ... RETURNING,
 * and the dashboard's buckets and pages on DATETIME(3). The shared behaviour is in
 * test/store-conformance.test.ts and test/store-fates.test.ts.
 */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import type { TestContext } from "node:test";
import { openDatabase } from "../src/db.js";
import { OptionsError } from "../src/errors.js";
import { newId } from "../src/ids.js";
import { cancelMails, purgeMails } from "../src/admin.js";
import type { DeliveryEventInput, MailFilter, MailPageQuery } from "../src/store.js";
import type { MysqlStore } from "../src/stores/mysql/store.js";
import { freshMysql, insertRow, mysqlUrl } from "./support/db.js";
import { needMysql } from "./support/services.js";

const MINUTE = 60_000;

const NO_FILTER: MailFilter = { byIds: false, ids: [], messageIds: [], statuses: null, recipient: null, since: null, until: null, uncertainOnly: false, fate: null };

async function open(t: TestContext): Promise<MysqlStore | null> {
  if (!(await needMysql(t))) return null;
  const fx = await freshMysql(t);
  const db = await openDatabase(fx.url);
  t.after(() => db.close());
  assert.equal(db.dialect, "mysql");
  return db as MysqlStore;
}

interface Seed {
  status?: string;
  envelopeTo?: unknown;
  subject?: string;
  metadata?: unknown;
  createdAt?: Date;
  updatedAt?: Date;
}

async function seed(db: MysqlStore, m: Seed = {}): Promise<string> {
  const id = newId();
  const raw = Buffer.from(`Message-ID: <${id}@example.test>\r\n\r\nbody\r\n`);
  const created = m.createdAt ?? new Date(Date.now() - 10 * MINUTE);
  await insertRow(db, "mail_outbox", {
    id,
    message_id: `<${id}@example.test>`,
    status: m.status ?? "dead",
    priority: 0,
    envelope_from: "app@example.test",
    envelope_to: JSON.stringify(m.envelopeTo ?? ["ann@example.test"]),
    subject: m.subject ?? "hi",
    raw,
    size: raw.length,
    metadata: m.metadata === undefined ? null : JSON.stringify(m.metadata),
    attempts: 1,
    max_attempts: 5,
    send_at: created,
    next_attempt_at: created,
    created_at: created,
    updated_at: m.updatedAt ?? created,
  });
  return id;
}

const page = (db: MysqlStore, p: Partial<MailPageQuery>) =>
  db.listMailPage({ filter: NO_FILTER, subject: null, metadata: null, partialOnly: false, before: null, limit: 100, ...p });

const sorted = (xs: readonly string[]) => [...xs].sort();

describe("MySQL/MariaDB operator and dashboard statements", () => {
  it("recipient: any case, but otherwise exactly: no LIKE wildcards, no accent folding, no trailing-space folding, only inside an array", async (t) => {
    const db = await open(t);
    if (db === null) return;
    const ann = await seed(db, { envelopeTo: ["Ann.Lee@Example.test", "bob@example.test"] });
    const accent = await seed(db, { envelopeTo: ["zoë@example.test"] });
    const quote = await seed(db, { envelopeTo: ['"odd\\name"@example.test'] });
    await seed(db, { envelopeTo: "ann.lee@example.test" }); // not an array: no recipient list
    const by = async (recipient: string) => sorted((await db.listMails({ ...NO_FILTER, recipient }, 100)).map((m) => m.id));
    assert.deepEqual(await by("ANN.LEE@example.TEST"), [ann]);
    assert.deepEqual(await by("bob@example.test"), [ann]);
    for (const miss of ["%", "_", "ann%", "ann.lee@example.tes_", "Ann.Lee@Example.test ", "bob", "zoe@example.test", "[\"bob@example.test\"]"]) {
      assert.deepEqual(await by(miss), [], `${JSON.stringify(miss)} matches nothing`);
    }
    assert.deepEqual(await by("ZOË@example.test"), [accent]);
    assert.deepEqual(await by('"ODD\\name"@example.test'), [quote]);
    assert.deepEqual(sorted((await db.selectTargets({ ...NO_FILTER, recipient: "ann.lee@EXAMPLE.test" })).map((x) => x.id)), [ann]);
  });

  it("metadata: a key is one top-level key (a dot included), its value compared exactly as text; a key that is no plain name is refused", async (t) => {
    const db = await open(t);
    if (db === null) return;
    const a = await seed(db, { metadata: { tenant: "Acme", "order.id": 42, vip: true, gone: null, nested: { tenant: "acme" } } });
    const b = await seed(db, { metadata: { order: { id: 42 } } });
    const c = await seed(db, { metadata: ["tenant"] });
    await seed(db);
    const meta = async (key: string, value: string) => sorted((await page(db, { metadata: { key, value } })).map((m) => m.id));
    assert.deepEqual(await meta("tenant", "Acme"), [a]);
    assert.deepEqual(await meta("tenant", "acme"), [], "values compare case-sensitively, as PostgreSQL's ->> does");
    assert.deepEqual(await meta("tenant", "Acme "), []);
    assert.deepEqual(await meta("order.id", "42"), [a], "`order.id` is the key with a dot, not order -> id");
    assert.deepEqual(await meta("vip", "true"), [a]);
    assert.deepEqual(await meta("gone", "null"), [], "a JSON null is no value");
    assert.deepEqual(await meta("nested", "acme"), []);
    assert.deepEqual(await meta("0", "tenant"), [], "an array's elements are no keys");
    assert.ok(b && c);
    for (const key of ['a"b', "a'b", "$.tenant", "tenant[0]", "*", "a b", "", "x".repeat(101), 'tenant" || "1']) {
      await assert.rejects(page(db, { metadata: { key, value: "Acme" } }), OptionsError, `refuses ${JSON.stringify(key)}`);
    }
  });

  it("subject: contains the text in any case, byte for byte otherwise (no accent folding, % and _ are text)", async (t) => {
    const db = await open(t);
    if (db === null) return;
    const invoice = await seed(db, { subject: "Your INVOICE 42" });
    const cafe = await seed(db, { subject: "Café opening" });
    const pct = await seed(db, { subject: "50% off_today" });
    const subject = async (s: string) => sorted((await page(db, { subject: s })).map((m) => m.id));
    assert.deepEqual(await subject("invoice 4"), [invoice]);
    assert.deepEqual(await subject("42 "), [], "a trailing space is text too");
    assert.deepEqual(await subject("CAFÉ"), [cafe]);
    assert.deepEqual(await subject("cafe"), []);
    assert.deepEqual(await subject("%"), [pct]);
    assert.deepEqual(await subject("%_"), [], "% and _ are no wildcards");
    assert.deepEqual(await subject("off_"), [pct]);
  });

  it("pages by keyset on (created_at, id), newest first, every mail once with many sharing one millisecond; partialOnly as PostgreSQL reads it", async (t) => {
    const db = await open(t);
    if (db === null) return;
    const at = new Date("2031-05-05T05:05:05.005Z");
    const ids: string[] = [];
    for (let i = 0; i < 25; i++) ids.push(await seed(db, { createdAt: new Date(at.getTime() + (i % 4 === 0 ? 0 : i)) }));
    const seen: string[] = [];
    let before: MailPageQuery["before"] = null;
    for (;;) {
      const rows = await page(db, { before, limit: 7 });
      seen.push(...rows.map((r) => r.id));
      const last = rows.at(-1);
      if (rows.length < 7 || last === undefined) break;
      before = { createdAt: last.createdAt, id: last.id };
    }
    assert.deepEqual(seen, (await db.listMails(NO_FILTER, 100)).map((m) => m.id), "the order of `list`");
    assert.deepEqual(sorted(seen), sorted(ids));
    assert.ok(seen.every((id, i) => i === 0 || id !== seen[i - 1]));

    const partial = await seed(db, { status: "sent" });
    const deferred = await seed(db, { status: "pending" });
    await db.pool.query("UPDATE mail_outbox SET rejected = ?, accepted = ? WHERE id = ?", ['[{"recipient":"x@example.test","response":"550 no"}]', '["ann@example.test"]', partial]);
    await db.pool.query("UPDATE mail_outbox SET accepted = ? WHERE id = ?", ['["ann@example.test"]', deferred]);
    const whole = await seed(db, { status: "sent" });
    await db.pool.query("UPDATE mail_outbox SET accepted = ?, rejected = '[]' WHERE id = ?", ['["ann@example.test"]', whole]);
    assert.deepEqual(sorted((await page(db, { partialOnly: true })).map((m) => m.id)), sorted([partial, deferred]));
  });

  it("the fate filter picks the same current fate per recipient as the fate counts do (the correlated ORDER BY ... LIMIT 1 against the window query)", async (t) => {
    const db = await open(t);
    if (db === null) return;
    const mails = await Promise.all(Array.from({ length: 12 }, () => seed(db, { status: "sent", envelopeTo: ["ann@example.test", "bob@example.test"] })));
    const t0 = Date.now() - 60 * MINUTE;
    const kinds = ["queued", "deferred", "delivered", "bounced", "expired"] as const;
    let key = 0;
    let seedNo = 7;
    const rnd = (n: number) => (seedNo = (seedNo * 1103515245 + 12345) % 2 ** 31) % n;
    const events: DeliveryEventInput[] = [];
    for (const id of mails) {
      for (let i = 0; i < 5; i++) {
        const recipient = rnd(2) === 0 ? (rnd(2) === 0 ? "ann@example.test" : "ANN@example.test") : "bob@example.test";
        // Few distinct times: ties on `at` are common.
        events.push({ emailId: id, recipient, event: kinds[rnd(5)]!, at: new Date(t0 + rnd(3) * MINUTE), source: "log", queueId: null, dsnStatus: null, remoteMta: null, reply: null, eventKey: `fate:${++key}` });
      }
    }
    await db.recordDeliveryEvents(events);
    const counts = await db.fateCountsByMail(mails);
    for (const fate of ["delivered", "bounced", "expired", "deferred"] as const) {
      const expected = sorted(mails.filter((id) => (counts.get(id) ?? []).some((c) => c.fate === fate && c.n > 0)));
      assert.deepEqual(sorted((await db.listMails({ ...NO_FILTER, fate }, 100)).map((m) => m.id)), expected, fate);
    }
  });

  it("two cancels of the same mails at once: each mail changes once and gets one log line (lock, read, then update)", async (t) => {
    const db = await open(t);
    if (db === null) return;
    const other = (await openDatabase(mysqlUrl(db.database))) as MysqlStore;
    t.after(() => other.close());
    const ids = await Promise.all(Array.from({ length: 40 }, () => seed(db, { status: "pending" })));
    const done = await Promise.all([cancelMails(db, { ids }), cancelMails(other, { ids: [...ids].reverse() })]);
    const cancelled = done.flatMap((r) => r.cancelled.map((c) => c.id));
    assert.deepEqual(sorted(cancelled), sorted(ids), "each mail cancelled by exactly one of them");
    const [{ n }] = (await db.pool.query("SELECT count(*) AS n FROM mail_outbox_attempt WHERE outcome = 'cancelled'")) as [{ n: number }];
    assert.equal(n, 40);
    const counts = await db.statusCounts(new Date());
    assert.deepEqual(counts.map((c) => [c.status, c.total, typeof c.due]), [["cancelled", 40, "number"]]);
  });

  it("a big purge goes in batches of at most the limit across statuses, counts each status exactly, and takes attempts and events along", async (t) => {
    const db = await open(t);
    if (db === null) return;
    const old = new Date(Date.now() - 40 * 24 * 60 * MINUTE);
    const n = { sent: 2600, dead: 700, cancelled: 450 };
    for (const [status, count] of Object.entries(n)) {
      await db.pool.batch(
        `INSERT INTO mail_outbox (id, message_id, status, envelope_from, envelope_to, subject, raw, size, attempts, max_attempts, send_at, next_attempt_at, created_at, updated_at)
         VALUES (?, ?, ?, 'a@example.test', '["b@example.test"]', 'bulk', x'00', 1, 1, 5, ?, ?, ?, ?)`,
        Array.from({ length: count }, () => {
          const id = newId();
          return [id, `<${id}@example.test>`, status, old, old, old, old];
        }),
      );
    }
    const young = await seed(db, { status: "sent" });
    const pending = await seed(db, { status: "pending", updatedAt: old });
    await db.pool.query(
      `INSERT INTO mail_outbox_attempt (id, email_id, attempt, relay, started_at, duration_ms, outcome)
       SELECT UUID(), id, 1, 'seed', updated_at, 1, 'accepted' FROM mail_outbox`,
    );
    await db.pool.query(
      `INSERT INTO mail_outbox_delivery (id, email_id, recipient, event, at, source, event_key)
       SELECT UUID(), id, 'b@example.test', 'delivered', updated_at, 'log', CONCAT('k:', id) FROM mail_outbox WHERE status = 'sent'`,
    );
    const cutoff = new Date(Date.now() - 30 * 24 * 60 * MINUTE);
    assert.deepEqual(sorted((await db.countPurgeable(["sent", "dead", "cancelled"], cutoff)).map((c) => `${c.status}:${c.n}`)), ["cancelled:450", "dead:700", "sent:2600"]);
    const first = await db.purgeBatch(["sent", "dead", "cancelled"], cutoff, 3000);
    assert.equal(first.reduce((s, c) => s + c.n, 0), 3000, "one batch takes the limit across statuses");
    const r = await purgeMails(db, { status: ["sent", "dead", "cancelled"], olderThanMs: 30 * 24 * 60 * MINUTE, batchSize: 500 });
    const total = (xs: readonly { status: string; n: number }[]) => Object.fromEntries(["sent", "dead", "cancelled"].map((s) => [s, xs.filter((x) => x.status === s).reduce((a, x) => a + x.n, 0)]));
    const deleted = total(first);
    for (const s of ["sent", "dead", "cancelled"] as const) deleted[s] = (deleted[s] ?? 0) + r.byStatus[s];
    assert.deepEqual(deleted, n);
    const left = (await db.pool.query("SELECT id FROM mail_outbox ORDER BY id")) as { id: string }[];
    assert.deepEqual(sorted(left.map((x) => x.id)), sorted([young, pending]));
    const [{ a }] = (await db.pool.query("SELECT count(*) AS a FROM mail_outbox_attempt")) as [{ a: number }];
    const [{ d }] = (await db.pool.query("SELECT count(*) AS d FROM mail_outbox_delivery")) as [{ d: number }];
    assert.deepEqual([a, d], [2, 1], "the attempts and events of the purged mail went with it");
    assert.deepEqual(await db.purgeBatch(["sent", "dead", "cancelled"], cutoff, 1000), []);
    assert.deepEqual(await db.purgeBatch([], null, 1000), []);
  });

  it("a purge passes over rows a replay or cancel holds locked (SKIP LOCKED, as on PostgreSQL) instead of waiting for them", async (t) => {
    const db = await open(t);
    if (db === null) return;
    const held = await seed(db, { status: "dead" });
    const free = await seed(db, { status: "dead" });
    const conn = await db.pool.getConnection();
    t.after(() => conn.release());
    await conn.beginTransaction();
    await conn.query("SELECT id FROM mail_outbox WHERE id = ? FOR UPDATE", [held]);
    const t0 = Date.now();
    assert.deepEqual(await db.purgeBatch(["dead"], null, 10), [{ status: "dead", n: 1 }]);
    assert.ok(Date.now() - t0 < 5_000, "did not wait for the lock");
    await conn.rollback();
    const left = (await db.pool.query("SELECT id FROM mail_outbox")) as { id: string }[];
    assert.deepEqual(left.map((x) => x.id), [held]);
    assert.ok(free);
  });

  it("hand-off buckets are aligned to the epoch in UTC, whatever the process's time zone; times read back to the millisecond", async (t) => {
    const db = await open(t);
    if (db === null) return;
    const id = await seed(db, { status: "sent" });
    const hour = 60 * MINUTE;
    const base = Math.floor(Date.now() / hour) * hour - 3 * hour;
    const line = (ms: number, outcome: string, duration: number) =>
      insertRow(db, "mail_outbox_attempt", { id: newId(), email_id: id, attempt: 1, relay: "r", started_at: new Date(ms), duration_ms: duration, outcome });
    await line(base + 1, "accepted", 10);
    await line(base + hour - 1, "accepted", 30);
    await line(base + hour, "transient", 500);
    await line(base + hour + 7, "lease_expired", 0);
    await line(base - 1, "accepted", 1);
    const buckets = await db.attemptBuckets(new Date(base), hour);
    assert.deepEqual(
      buckets.map((b) => [b.start.toISOString(), b.outcome, b.n, b.avgMs, b.maxMs]),
      [
        [new Date(base).toISOString(), "accepted", 2, 20, 30],
        [new Date(base + hour).toISOString(), "transient", 1, 500, 500],
      ],
    );
    const attempts = await db.listAttempts(id);
    assert.deepEqual(attempts.map((x) => x.startedAt.getTime()), [base - 1, base + 1, base + hour - 1, base + hour, base + hour + 7]);
  });
});
