/**
 * The delivery-fate part of the store conformance suite (`FateStore` in src/store.ts): the same
 * tests against a real SQLite file and a real PostgreSQL server. Delivery events and their
 * idempotency, the log follower's cursor saved with them, suppression from hard bounces and by
 * hand, the current fate per recipient (counts and the `fate` filter), the look-ups that link the
 * MTA's queue ids and Message-IDs to rows, and the `verify` policy's candidates and evidence.
 *
 * Every status change goes through `step()`, checked against the state table as in
 * test/store-conformance.test.ts (which also makes the `verified-*` transitions for its coverage
 * check). Rows are seeded with the test's own SQL, in the shape enqueue and the relay leave them.
 */
import { describe, it } from "node:test";
import pg from "pg";
import assert from "node:assert/strict";
import type { TestContext } from "node:test";
import { openDatabase, type Db } from "../src/db.js";
import { newId } from "../src/ids.js";
import { purgeMails } from "../src/admin.js";
import { TRANSITIONS, type Transition } from "../src/states.js";
import type { DeliveryEventInput, DeliveryEventKind, DeliveryEventRecord, Fate, MailFilter } from "../src/store.js";
import type { JsonValue } from "../src/types.js";
import { conformanceStores, insertRow as insert, freshPostgres, sqliteOf, pgOf } from "./support/db.js";
import { needPostgres, PG_ADMIN_URL } from "./support/services.js";

type StoreFactory = (t: TestContext) => Promise<Db | null>;

const MINUTE = 60_000;
const T0 = Date.parse("2026-03-01T12:00:00.000Z");
const at = (minutes: number) => new Date(T0 + minutes * MINUTE);

// ---- the test's own SQL -----------------------------------------------------------------------

interface Seed {
  status?: string;
  envelopeTo?: string[];
  attempts?: number;
  updatedAt?: Date;
  uncertainHandoffs?: number;
  mtaQueueId?: string | null;
}

async function seed(db: Db, m: Seed = {}): Promise<string> {
  const id = newId();
  const raw = Buffer.from(`Message-ID: <${id}@example.test>\r\nSubject: hi\r\n\r\nbody\r\n`);
  const created = new Date(Date.now() - 10 * MINUTE);
  await insert(db, "mail_outbox", {
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
    uncertain_handoffs: m.uncertainHandoffs ?? 0,
    mta_queue_id: m.mtaQueueId ?? null,
    created_at: created,
    updated_at: m.updatedAt ?? created,
  });
  return id;
}

async function seedAttempt(db: Db, emailId: string, queueId: string | null, startedAt: Date): Promise<void> {
  await insert(db, "mail_outbox_attempt", {
    id: newId(),
    email_id: emailId,
    attempt: 1,
    relay: "relay-a",
    started_at: startedAt,
    duration_ms: 5,
    outcome: "accepted",
    response: "250 2.0.0 Ok",
    response_code: 250,
    queue_id: queueId,
  });
}


async function exec(db: Db, sql: string): Promise<void> {
  if (db.dialect === "postgresql") await db.pool.query(sql);
  else if (db.dialect === "mysql") await db.pool.query(sql);
  else sqliteOf(db).db.exec(sql);
}

async function count(db: Db, sql: string): Promise<number> {
  if (db.dialect === "postgresql") return Number((await db.pool.query(sql)).rows[0].n);
  if (db.dialect === "mysql") return Number(((await db.pool.query(sql)) as { n: number }[])[0]!.n);
  return Number((sqliteOf(db).db.prepare(sql).get() as { n: number }).n);
}

async function statusOf(db: Db): Promise<Map<string, string>> {
  const sql = "SELECT id, status FROM mail_outbox";
  const rows =
    db.dialect === "postgresql"
      ? (await pgOf(db).pool.query<{ id: string; status: string }>(sql)).rows
      : db.dialect === "mysql"
        ? ((await db.pool.query(sql)) as { id: string; status: string }[])
        : (sqliteOf(db).db.prepare(sql).all() as { id: string; status: string }[]);
  return new Map(rows.map((r) => [r.id, r.status]));
}

/** The transitions each operation may make: the fate methods none, except resolveUncertain. */
const MAY: Readonly<Record<string, readonly Transition[]>> = {
  fate: [],
  rescue: ["lease-expired-resend", "lease-expired-hold", "lease-expired-exhausted"],
  resolveUncertain: ["verified-received", "verified-absent"],
};

async function step<T>(db: Db, operation: keyof typeof MAY, fn: () => Promise<T>): Promise<T> {
  const before = await statusOf(db);
  const result = await fn();
  const after = await statusOf(db);
  for (const [id, from] of before) {
    const to = after.get(id);
    assert.ok(to !== undefined, `${operation} deleted row ${id}`);
    if (to === from) continue;
    const allowed = MAY[operation]!.filter((t) => (TRANSITIONS[t].from as readonly string[]).includes(from) && TRANSITIONS[t].to === to);
    assert.ok(allowed.length > 0, `${operation} moved row ${id} from ${from} to ${to}: no transition allows that`);
  }
  return result;
}

let keys = 0;
function ev(emailId: string, event: DeliveryEventKind, recipient: string, minutes: number, more: Partial<DeliveryEventInput> = {}): DeliveryEventInput {
  return {
    emailId,
    recipient: event === "queued" ? "" : recipient,
    event,
    at: at(minutes),
    source: "log",
    queueId: "4AbC12",
    dsnStatus: event === "bounced" ? "5.1.1" : event === "delivered" ? "2.0.0" : event === "deferred" ? "4.4.1" : null,
    remoteMta: event === "queued" ? null : "mx.example.test[192.0.2.1]:25",
    reply: event === "bounced" ? "host said: 550 5.1.1 no such user" : null,
    eventKey: `test:${++keys}`,
    ...more,
  };
}

const NO_FILTER: MailFilter = { byIds: false, ids: [], messageIds: [], statuses: null, recipient: null, since: null, until: null, uncertainOnly: false, fate: null };

// ---- the suite --------------------------------------------------------------------------------

function fateConformance(name: string, open: StoreFactory): void {
  describe(`fate store conformance: ${name}`, () => {
    it("an event is stored once: a key seen before (in an earlier call or the same batch) is skipped, and only the new ones come back", async (t) => {
      const db = await open(t);
      if (!db) return;
      const a = await seed(db);
      const queued = ev(a, "queued", "", 0);
      const deferred = ev(a, "deferred", "ann@example.test", 1, { reply: "connect to mx: Connection timed out" });
      const delivered = ev(a, "delivered", "ann@example.test", 5);
      const gone = ev(newId(), "delivered", "x@example.test", 5); // a mail that does not exist (purged): skipped
      const first = await step(db, "fate", () => db.recordDeliveryEvents([delivered, queued, deferred, { ...deferred, reply: "same key" }, gone]));
      assert.deepEqual(first.map((e) => e.eventKey), [delivered.eventKey, queued.eventKey, deferred.eventKey], "input order, each key once");
      const stored = first[2]!;
      assert.equal(stored.reply, "connect to mx: Connection timed out", "the first of a key wins");
      assert.equal(stored.emailId, a);
      assert.equal(stored.at.getTime(), at(1).getTime());
      assert.ok(stored.recordedAt instanceof Date && Math.abs(stored.recordedAt.getTime() - Date.now()) < MINUTE, "recorded now (the database's clock)");
      assert.match(stored.id, /^[0-9a-f-]{36}$/);
      assert.deepEqual(await step(db, "fate", () => db.recordDeliveryEvents([delivered, deferred])), [], "a second delivery of the same report records nothing");
      const events = await db.listDeliveryEvents(a);
      assert.deepEqual(events.map((e) => [e.event, e.recipient, e.source, e.queueId, e.dsnStatus]), [
        ["queued", "", "log", "4AbC12", null],
        ["deferred", "ann@example.test", "log", "4AbC12", "4.4.1"],
        ["delivered", "ann@example.test", "log", "4AbC12", "2.0.0"],
      ]);
      assert.deepEqual(await db.listDeliveryEvents(newId()), []);
      assert.equal((await db.findMail({ id: a }, false))?.mail.status, "sent", "a fate never changes the outbox status");
    });

    it("the follower's cursor is saved in the same transaction as its events: both or neither", async (t) => {
      const db = await open(t);
      if (!db) return;
      const a = await seed(db);
      assert.equal(await db.readLogCursor("/var/log/mail.log"), null);
      assert.equal(await db.logCaughtUpAt(), null);
      const big = 2 ** 40 + 7; // past 32 bits: the offset is a bigint
      const state: JsonValue = { pending: { "7F3A21": "<x@example.test>" } };
      const caught = new Date(Date.now() - 5000);
      await db.recordDeliveryEvents([ev(a, "queued", "", 0)], { cursor: { name: "/var/log/mail.log", fileId: "2049:131", offset: big, state, caughtUpAt: caught } });
      const c = await db.readLogCursor("/var/log/mail.log");
      assert.ok(c);
      assert.deepEqual([c.fileId, c.offset, c.state, c.caughtUpAt?.getTime()], ["2049:131", big, state, caught.getTime()]);
      assert.ok(c.updatedAt instanceof Date);
      // No events, only the position (a stretch of lines about other mail); a null caughtUpAt keeps the last one.
      await db.recordDeliveryEvents([], { cursor: { name: "/var/log/mail.log", fileId: "2049:132", offset: 10, state: null, caughtUpAt: null } });
      const moved = await db.readLogCursor("/var/log/mail.log");
      assert.deepEqual([moved?.fileId, moved?.offset, moved?.state, moved?.caughtUpAt?.getTime()], ["2049:132", 10, null, caught.getTime()]);
      const later = new Date();
      await db.recordDeliveryEvents([], { cursor: { name: "journal", fileId: "stdin", offset: 0, state: null, caughtUpAt: later } });
      assert.equal((await db.logCaughtUpAt())?.getTime(), later.getTime(), "the latest of any follower");
      // A batch that fails after its events were written (here: a state that is no JSON) keeps neither.
      const bad = { n: 1n } as unknown as JsonValue;
      await assert.rejects(db.recordDeliveryEvents([ev(a, "delivered", "ann@example.test", 3)], { cursor: { name: "/var/log/mail.log", fileId: "2049:132", offset: 99, state: bad, caughtUpAt: null } }));
      assert.equal((await db.readLogCursor("/var/log/mail.log"))?.offset, 10, "the position did not move");
      assert.deepEqual((await db.listDeliveryEvents(a)).map((e) => e.event), ["queued"], "nor were the events kept");
    });

    it("with suppress, each newly recorded hard bounce puts its recipient on the suppression list, and nothing else does", async (t) => {
      const db = await open(t);
      if (!db) return;
      const a = await seed(db, { envelopeTo: ["Ann@Example.test", "bob@example.test", "carl@example.test"] });
      await db.addSuppressions([{ address: "carl@example.test", reason: "asked to stop", source: "operator", emailId: null, expiresAt: null }]);
      const expiresAt = new Date(Date.now() + 180 * 24 * 60 * MINUTE);
      await db.recordDeliveryEvents(
        [
          ev(a, "bounced", "Ann@Example.test", 1),
          ev(a, "deferred", "bob@example.test", 1),
          ev(a, "expired", "bob@example.test", 2),
          ev(a, "bounced", "carl@example.test", 1),
          ev(a, "delivered", "dan@example.test", 1),
        ],
        { suppress: { expiresAt } },
      );
      const list = await db.listSuppressions({ address: null, includeExpired: true, now: new Date(), limit: 100 });
      assert.deepEqual(list.map((s) => s.address).sort(), ["ann@example.test", "carl@example.test"], "bounced only: not deferred, expired or delivered");
      const ann = list.find((s) => s.address === "ann@example.test")!;
      assert.deepEqual([ann.source, ann.emailId, ann.expiresAt?.getTime()], ["bounce", a, expiresAt.getTime()]);
      assert.match(ann.reason, /5\.1\.1/);
      const carl = list.find((s) => s.address === "carl@example.test")!;
      assert.deepEqual([carl.source, carl.reason, carl.expiresAt], ["operator", "asked to stop", null], "an entry already listed is kept as it was");
      // Without suppress, or for a bounce recorded before: nothing is added.
      const b = await seed(db);
      await db.recordDeliveryEvents([ev(b, "bounced", "eve@example.test", 1)]);
      assert.deepEqual([...(await db.findSuppressed(["eve@example.test"], new Date()))], []);
      await db.removeSuppressions({ addresses: ["ann@example.test"] });
      const again = (await db.listDeliveryEvents(a)).filter((e) => e.event === "bounced");
      await db.recordDeliveryEvents(again, { suppress: { expiresAt: null } });
      assert.deepEqual([...(await db.findSuppressed(["ann@example.test"], new Date()))], [], "a bounce seen before is not recorded again, so not suppressed again");
    });

    it("the current fate of a recipient is its latest final event, else deferred: counted per recipient, and the fate filter takes mail with such a recipient", async (t) => {
      const db = await open(t);
      if (!db) return;
      const a = await seed(db, { envelopeTo: ["ann@example.test", "bob@example.test"] });
      const b = await seed(db, { envelopeTo: ["carl@example.test"] });
      const c = await seed(db, { envelopeTo: ["dave@example.test"], status: "dead" });
      const d = await seed(db, { envelopeTo: ["erin@example.test"] });
      await seed(db); // no events at all
      await db.recordDeliveryEvents([
        ev(a, "queued", "", 0),
        ev(a, "deferred", "ann@example.test", 1),
        ev(a, "delivered", "ANN@example.test", 9), // deferred then delivered: delivered (recipients compare case-insensitively)
        ev(a, "deferred", "bob@example.test", 1),
        ev(a, "deferred", "bob@example.test", 8), // deferred twice: deferred
        ev(b, "bounced", "carl@example.test", 3),
        ev(b, "deferred", "carl@example.test", 4, { source: "dsn" }), // a late delay notice does not undo a bounce
        ev(c, "delivered", "dave@example.test", 2),
        ev(c, "bounced", "dave@example.test", 6), // the latest final event wins
        ev(d, "expired", "erin@example.test", 7),
      ]);
      const counts = new Map((await db.fateCounts()).map((x) => [x.fate, Number(x.n)]));
      assert.deepEqual(counts, new Map<Fate, number>([["delivered", 1], ["deferred", 1], ["bounced", 2], ["expired", 1]]));
      const by = async (fate: Fate, more: Partial<MailFilter> = {}) => (await db.listMails({ ...NO_FILTER, fate, ...more }, 100)).map((m) => m.id).sort();
      assert.deepEqual(await by("delivered"), [a]);
      assert.deepEqual(await by("deferred"), [a], "bob's deferral: the mail has a deferred recipient");
      assert.deepEqual(await by("bounced"), [b, c].sort());
      assert.deepEqual(await by("expired"), [d]);
      assert.deepEqual(await by("bounced", { statuses: ["dead"] }), [c], "with the other constraints");
      assert.equal((await db.listMails(NO_FILTER, 100)).length, 5, "fate null: every mail");
      assert.deepEqual((await db.selectTargets({ ...NO_FILTER, fate: "bounced" })).map((x) => x.id).sort(), [b, c].sort());
      const perMail = await db.fateCountsByMail([a, b, newId()]);
      assert.deepEqual([...perMail.keys()].sort(), [a, b].sort());
      assert.deepEqual(new Map(perMail.get(a)!.map((x) => [x.fate, x.n])), new Map([["delivered", 1], ["deferred", 1]]));
      assert.deepEqual(perMail.get(b), [{ fate: "bounced", n: 1 }]);
    });

    it("a queue id leads to its mail through the latest queued event, else through the attempt log; Message-IDs and ids through the rows", async (t) => {
      const db = await open(t);
      if (!db) return;
      const a = await seed(db);
      const b = await seed(db);
      const c = await seed(db);
      await seedAttempt(db, b, "Q2", at(0));
      await seedAttempt(db, c, "Q1", at(0)); // the hand-off's queue id of c, reused by the MTA later
      await seedAttempt(db, c, null, at(1));
      await db.recordDeliveryEvents([ev(a, "queued", "", 5, { queueId: "Q1" }), ev(b, "delivered", "ann@example.test", 5, { queueId: "Q9" })]);
      const byQueue = await db.mailIdsByQueueId(["Q1", "Q2", "Q9", "NOPE", "Q1"]);
      assert.deepEqual(byQueue, new Map([["Q1", a], ["Q2", b]]), "queued events first; a fate event is no link; unknown ids left out");
      assert.deepEqual(await db.mailIdsByQueueId([]), new Map());
      const byMessageId = await db.mailIdsByMessageId([`<${a}@example.test>`, "<nope@example.test>"]);
      assert.deepEqual(byMessageId, new Map([[`<${a}@example.test>`, a]]));
      assert.deepEqual(await db.existingMailIds([a, newId(), "not-a-uuid", c]), new Set([a, c]));
    });

    it("verify: held uncertain hand-offs since a time are candidates with the queue ids known for them; the queued events are the evidence; a row is settled only while held", async (t) => {
      const db = await open(t);
      if (!db) return;
      const now = Date.now();
      const old = await seed(db, { status: "held", uncertainHandoffs: 1, updatedAt: new Date(now - 60 * MINUTE) });
      const first = await seed(db, { status: "held", uncertainHandoffs: 1, updatedAt: new Date(now - 3 * MINUTE), mtaQueueId: "K0", envelopeTo: ["ann@example.test", "bob@example.test"] });
      const second = await seed(db, { status: "held", uncertainHandoffs: 2, updatedAt: new Date(now - 2 * MINUTE) });
      await seed(db, { status: "held", uncertainHandoffs: 0, updatedAt: new Date(now - 2 * MINUTE) }); // held by an operator, not uncertain
      await seed(db, { status: "pending", uncertainHandoffs: 1, updatedAt: new Date(now - 2 * MINUTE) });
      await seedAttempt(db, first, "K1", new Date(now - 30 * MINUTE));
      const candidates = await db.verifyCandidates(new Date(now - 10 * MINUTE), 10);
      assert.deepEqual(candidates.map((x) => x.id), [first, second], "held and uncertain, since the time asked, oldest first");
      const f = candidates[0]!;
      assert.deepEqual([f.messageId, f.envelopeTo, f.heldAt.getTime(), [...f.knownQueueIds].sort()], [`<${first}@example.test>`, ["ann@example.test", "bob@example.test"], now - 3 * MINUTE, ["K0", "K1"]]);
      assert.deepEqual(candidates[1]!.knownQueueIds, []);
      assert.deepEqual((await db.verifyCandidates(new Date(now - 10 * MINUTE), 1)).map((x) => x.id), [first], "at most limit");
      assert.ok((await db.verifyCandidates(new Date(now - 120 * MINUTE), 10)).some((x) => x.id === old));

      await db.recordDeliveryEvents([ev(first, "queued", "", -3, { queueId: "K1" }), ev(first, "queued", "", -1, { queueId: "K2" }), ev(second, "delivered", "ann@example.test", 1)]);
      const evidence = await db.queuedEvidence([first, second, newId()]);
      assert.deepEqual([...evidence.keys()], [first], "only queued events count");
      assert.deepEqual(evidence.get(first)!.map((x) => x.queueId), ["K1", "K2"], "oldest first");
      assert.equal(evidence.get(first)![1]!.at.getTime(), at(-1).getTime());

      // An operator acted first (here: cancelled it): the verdict changes nothing.
      await exec(db, `UPDATE mail_outbox SET status = 'cancelled' WHERE id = '${second}'`);
      assert.equal(await step(db, "resolveUncertain", () => db.resolveUncertain(second, "relay-a", { kind: "absent", response: "not in the log" })), false);
      assert.equal(await count(db, `SELECT count(*) AS n FROM mail_outbox_attempt WHERE email_id = '${second}'`), 0, "and logs nothing");
      assert.equal(await step(db, "resolveUncertain", () => db.resolveUncertain(first, "relay-a", { kind: "received", queueId: "K2", at: at(-1), response: "the MTA queued it as K2" })), true);
      const m = (await db.findMail({ id: first }, false))!.mail;
      assert.deepEqual([m.status, m.mtaQueueId, m.accepted], ["sent", "K2", ["ann@example.test", "bob@example.test"]]);
      assert.deepEqual((await db.verifyCandidates(new Date(now - 10 * MINUTE), 10)).map((x) => x.id), [], "settled rows are no longer candidates");
    });

    it("suppression: addresses any case, replaced by address, found until they expire, listed, removed by address or by expiry", async (t) => {
      const db = await open(t);
      if (!db) return;
      const now = new Date();
      const soon = new Date(now.getTime() + MINUTE);
      const past = new Date(now.getTime() - MINUTE);
      const n = await db.addSuppressions([
        { address: " Ann@Example.TEST ", reason: "first", source: "operator", emailId: null, expiresAt: null },
        { address: "ann@example.test", reason: "complained", source: "operator", emailId: null, expiresAt: null },
        { address: "bob@example.test", reason: "bounced", source: "bounce", emailId: newId(), expiresAt: soon },
        { address: "carl@example.test", reason: "bounced long ago", source: "bounce", emailId: null, expiresAt: past },
      ]);
      assert.equal(n, 3, "ann once");
      assert.deepEqual([...(await db.findSuppressed(["ANN@example.test", "bob@example.test", "carl@example.test", "dan@example.test"], now))].sort(), ["ann@example.test", "bob@example.test"]);
      assert.deepEqual([...(await db.findSuppressed(["bob@example.test"], new Date(soon.getTime() + 1)))], [], "expired then");
      assert.deepEqual([...(await db.findSuppressed([], now))], []);
      const live = await db.listSuppressions({ address: null, includeExpired: false, now, limit: 100 });
      assert.deepEqual(live.map((s) => s.address).sort(), ["ann@example.test", "bob@example.test"]);
      assert.equal((await db.listSuppressions({ address: null, includeExpired: true, now, limit: 100 })).length, 3);
      assert.equal((await db.listSuppressions({ address: null, includeExpired: true, now, limit: 2 })).length, 2);
      const ann = await db.listSuppressions({ address: "Ann@Example.test", includeExpired: false, now, limit: 10 });
      assert.deepEqual(ann.map((s) => [s.address, s.reason, s.source, s.expiresAt]), [["ann@example.test", "complained", "operator", null]]);
      assert.ok(ann[0]!.createdAt instanceof Date);
      await db.addSuppressions([{ address: "ann@example.test", reason: "until summer", source: "operator", emailId: null, expiresAt: soon }]);
      assert.equal((await db.listSuppressions({ address: "ann@example.test", includeExpired: true, now, limit: 10 }))[0]!.expiresAt?.getTime(), soon.getTime(), "replaced");
      assert.equal(await db.removeSuppressions({ expiredBefore: now }), 1, "carl's entry had expired");
      assert.equal(await db.removeSuppressions({ addresses: ["BOB@example.test", "nobody@example.test"] }), 1);
      assert.equal(await db.removeSuppressions({ addresses: [] }), 0);
      assert.deepEqual((await db.listSuppressions({ address: null, includeExpired: true, now, limit: 100 })).map((s) => s.address), ["ann@example.test"]);
    });

    it("the feed of events after a point gives every event once, in the order recorded, with its mail's Message-ID; purging mail takes its events along", async (t) => {
      const db = await open(t);
      if (!db) return;
      const a = await seed(db);
      const b = await seed(db);
      await db.recordDeliveryEvents([ev(a, "queued", "", 0), ev(a, "deferred", "ann@example.test", 1), ev(b, "queued", "", 0)]);
      await new Promise((r) => setTimeout(r, 5));
      await db.recordDeliveryEvents([ev(a, "delivered", "ann@example.test", 2), ev(b, "bounced", "ann@example.test", 2)]);
      const seen: string[] = [];
      let after: { recordedAt: Date; id: string } | null = null;
      for (let page = 0; page < 10; page++) {
        const batch: (DeliveryEventRecord & { messageId: string })[] = await db.deliveryEventsAfter(after, 2);
        if (batch.length === 0) break;
        for (const e of batch as (DeliveryEventRecord & { messageId: string })[]) {
          assert.equal(e.messageId, `<${e.emailId}@example.test>`);
          seen.push(`${e.emailId === a ? "a" : "b"}:${e.event}`);
        }
        const last: DeliveryEventRecord = batch.at(-1)!;
        after = { recordedAt: last.recordedAt, id: last.id };
      }
      assert.equal(seen.length, 5, seen.join(" "));
      assert.equal(new Set(seen).size, 5, "no event twice");
      assert.deepEqual(seen.slice(3).sort(), ["a:delivered", "b:bounced"], "the later batch last");
      await purgeMails(db, { all: true });
      assert.equal(await count(db, "SELECT count(*) AS n FROM mail_outbox_delivery"), 0);
    });
  });
}

for (const store of conformanceStores) fateConformance(store.name, store.open);

describe("PostgreSQL store transactions", () => {
  it("a connection the server ends in the middle of a transaction fails that transaction, not the process, and the pool goes on with a fresh connection", async (t) => {
    if (!(await needPostgres(t))) return;
    const fx = await freshPostgres(t);
    const db = await openDatabase(fx.url);
    t.after(() => db.close());
    if (db.dialect !== "postgresql") return;
    const { inTransaction } = await import("../src/stores/postgres/store.js");
    const admin = new pg.Pool({ connectionString: PG_ADMIN_URL, max: 1 });
    t.after(() => admin.end());
    await assert.rejects(
      inTransaction(db.pool, async (client) => {
        const pid = (await client.query<{ pid: number }>("SELECT pg_backend_pid() AS pid")).rows[0]!.pid;
        await admin.query("SELECT pg_terminate_backend($1)", [pid]); // as a server restart would
        await new Promise((r) => setTimeout(r, 300)); // the client is idle in the transaction when the server ends it
        await client.query("SELECT 1");
      }),
    );
    await db.ping();
    assert.equal((await db.recordDeliveryEvents([ev(await seed(db), "queued", "", 0)])).length, 1);
  });
});
