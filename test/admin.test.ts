/**
 * The operator functions (status, list, show, replay, cancel, purge) on real SQLite files and a
 * real PostgreSQL, on rows written in the shape the relay writes them.
 */
import { test, describe } from "node:test";
import assert from "node:assert/strict";
import type { TestContext } from "node:test";
import { openDatabase, toSqliteTime, type Db } from "../src/db.js";
import { newId } from "../src/ids.js";
import { cancelMails, getStatus, listMails, mailFates, parseMailRef, purgeMails, replayMails, showMail } from "../src/admin.js";
import type { DeliveryEventInput } from "../src/store.js";
import { NotFoundError, OptionsError, UnsafeOperationError } from "../src/errors.js";
import { parseDuration } from "../src/duration.js";
import { needMysql, needPostgres } from "./support/services.js";
import { freshMysql, freshPostgres, freshSqlite, insertRow, sqliteOf } from "./support/db.js";

// ---- fixtures -----------------------------------------------------------------------------

interface Fixture {
  readonly db: Db;
  readonly url: string;
  cleanup(): Promise<void>;
}

async function open(fx: { url: string; cleanup(): Promise<void> }): Promise<Fixture> {
  const db = await openDatabase(fx.url);
  return {
    db,
    url: fx.url,
    async cleanup() {
      await db.close();
      await fx.cleanup();
    },
  };
}

type Dialect = "sqlite" | "postgresql" | "mysql";

async function fixture(t: TestContext, dialect: Dialect): Promise<Fixture | null> {
  if (dialect === "postgresql" && !(await needPostgres(t))) return null;
  if (dialect === "mysql" && !(await needMysql(t))) return null;
  const fx = await open(dialect === "sqlite" ? await freshSqlite() : dialect === "mysql" ? await freshMysql() : await freshPostgres());
  t.after(() => fx.cleanup());
  return fx;
}

interface SeedMail {
  id?: string;
  messageId?: string;
  status?: string;
  envelopeTo?: string[];
  subject?: string;
  raw?: Buffer;
  attempts?: number;
  maxAttempts?: number;
  createdAt?: Date;
  updatedAt?: Date;
  nextAttemptAt?: Date;
  leaseOwner?: string | null;
  leaseExpiresAt?: Date | null;
  lastError?: string | null;
  mtaResponse?: string | null;
  mtaQueueId?: string | null;
  accepted?: string[] | null;
  rejected?: { recipient: string; response: string }[] | null;
  uncertainHandoffs?: number;
  sentAt?: Date | null;
  metadata?: unknown;
}

const T0 = new Date("2025-03-01T12:00:00.000Z");
const minutes = (n: number) => n * 60_000;
const at = (offsetMs: number) => new Date(T0.getTime() + offsetMs);

/** Insert a row as enqueue + the relay leave it. Returns id and Message-ID. */
async function seed(db: Db, m: SeedMail = {}): Promise<{ id: string; messageId: string }> {
  const id = m.id ?? newId();
  const messageId = m.messageId ?? `<${id}@example.test>`;
  const raw = m.raw ?? Buffer.from(`Message-ID: ${messageId}\r\nSubject: ${m.subject ?? "hello"}\r\n\r\nbody\r\n`);
  const createdAt = m.createdAt ?? T0;
  const v = {
    id,
    message_id: messageId,
    status: m.status ?? "pending",
    priority: 0,
    envelope_from: "app@example.test",
    envelope_to: JSON.stringify(m.envelopeTo ?? ["ann@example.test"]),
    subject: m.subject ?? "hello",
    raw,
    size: raw.length,
    metadata: m.metadata === undefined ? null : JSON.stringify(m.metadata),
    attempts: m.attempts ?? 0,
    max_attempts: m.maxAttempts ?? 5,
    send_at: createdAt,
    next_attempt_at: m.nextAttemptAt ?? createdAt,
    lease_owner: m.leaseOwner ?? null,
    lease_expires_at: m.leaseExpiresAt ?? null,
    last_error: m.lastError ?? null,
    mta_response: m.mtaResponse ?? null,
    mta_queue_id: m.mtaQueueId ?? null,
    accepted: m.accepted == null ? null : JSON.stringify(m.accepted),
    rejected: m.rejected == null ? null : JSON.stringify(m.rejected),
    uncertain_handoffs: m.uncertainHandoffs ?? 0,
    created_at: createdAt,
    updated_at: m.updatedAt ?? createdAt,
    sent_at: m.sentAt ?? null,
  };
  if (db.dialect === "mysql") {
    await insertRow(db, "mail_outbox", v);
    return { id, messageId };
  }
  const cols = Object.keys(v);
  if (db.dialect === "postgresql") {
    const jsonCols = new Set(["envelope_to", "metadata", "accepted", "rejected"]);
    await db.pool.query(
      `INSERT INTO mail_outbox (${cols.join(", ")}) VALUES (${cols.map((c, i) => `$${i + 1}${jsonCols.has(c) ? "::jsonb" : ""}`).join(", ")})`,
      Object.values(v),
    );
  } else {
    const vals = Object.fromEntries(Object.entries(v).map(([k, x]) => [k, x instanceof Date ? toSqliteTime(x) : x]));
    sqliteOf(db).db.prepare(`INSERT INTO mail_outbox (${cols.join(", ")}) VALUES (${cols.map((c) => `@${c}`).join(", ")})`).run(vals);
  }
  return { id, messageId };
}

async function seedAttempt(
  db: Db,
  emailId: string,
  a: { attempt: number; startedAt: Date; outcome: string; response?: string | null; responseCode?: number | null; errorCode?: string | null; error?: string | null; queueId?: string | null },
): Promise<void> {
  const v = {
    id: newId(),
    email_id: emailId,
    attempt: a.attempt,
    relay: "relay-a",
    started_at: a.startedAt,
    duration_ms: 42,
    outcome: a.outcome,
    response: a.response ?? null,
    response_code: a.responseCode ?? null,
    error_code: a.errorCode ?? null,
    error: a.error ?? null,
    queue_id: a.queueId ?? null,
  };
  if (db.dialect === "mysql") return insertRow(db, "mail_outbox_attempt", v);
  const cols = Object.keys(v);
  if (db.dialect === "postgresql") {
    await db.pool.query(`INSERT INTO mail_outbox_attempt (${cols.join(", ")}) VALUES (${cols.map((_, i) => `$${i + 1}`).join(", ")})`, Object.values(v));
  } else {
    const vals = Object.fromEntries(Object.entries(v).map(([k, x]) => [k, x instanceof Date ? toSqliteTime(x) : x]));
    sqliteOf(db).db.prepare(`INSERT INTO mail_outbox_attempt (${cols.join(", ")}) VALUES (${cols.map((c) => `@${c}`).join(", ")})`).run(vals);
  }
}

/** Everything in both tables, for "nothing changed" comparisons. */
async function dump(db: Db): Promise<string> {
  if (db.dialect === "mysql") return JSON.stringify([await db.pool.query("SELECT * FROM mail_outbox ORDER BY id"), await db.pool.query("SELECT * FROM mail_outbox_attempt ORDER BY id")]);
  if (db.dialect === "postgresql") {
    const a = await db.pool.query("SELECT * FROM mail_outbox ORDER BY id");
    const b = await db.pool.query("SELECT * FROM mail_outbox_attempt ORDER BY id");
    return JSON.stringify([a.rows, b.rows]);
  }
  return JSON.stringify([sqliteOf(db).db.prepare("SELECT * FROM mail_outbox ORDER BY id").all(), sqliteOf(db).db.prepare("SELECT * FROM mail_outbox_attempt ORDER BY id").all()]);
}

async function rowCount(db: Db, table: "mail_outbox" | "mail_outbox_attempt"): Promise<number> {
  if (db.dialect === "mysql") return Number(((await db.pool.query(`SELECT count(*) AS n FROM ${table}`)) as { n: number }[])[0]!.n);
  if (db.dialect === "postgresql") return Number((await db.pool.query(`SELECT count(*)::int AS n FROM ${table}`)).rows[0].n);
  return (sqliteOf(db).db.prepare(`SELECT count(*) AS n FROM ${table}`).get() as { n: number }).n;
}

// ---- pure parsing -------------------------------------------------------------------------

describe("mail references typed by an operator", () => {
  test("ids are UUIDs or Message-IDs, with or without angle brackets; anything else is refused", () => {
    assert.deepEqual(parseMailRef("0195A1B2-7C3D-7E4F-8A5B-6C7D8E9F0A1B"), { kind: "id", id: "0195a1b2-7c3d-7e4f-8a5b-6c7d8e9f0a1b" });
    assert.deepEqual(parseMailRef("<x@y.test>"), { kind: "messageId", messageId: "<x@y.test>" });
    assert.deepEqual(parseMailRef("x@y.test"), { kind: "messageId", messageId: "<x@y.test>" });
    for (const bad of ["", "' OR 1=1 --", "x", "<x@y", "x y@z", "a@b@c", "%", "_"]) {
      assert.throws(() => parseMailRef(bad), OptionsError, `should refuse ${JSON.stringify(bad)}`);
    }
  });
});

// ---- against both databases ---------------------------------------------------------------

for (const dialect of ["sqlite", "postgresql", "mysql"] as const) {
  describe(`operator functions on ${dialect}`, () => {
    test("status counts every status (zeros included), uncertain rows, the oldest due mail, the next attempt and expired leases", async (t) => {
      const fx = await fixture(t, dialect);
      if (!fx) return;
      const now = at(minutes(60));
      const empty = await getStatus(fx.db, { now });
      assert.deepEqual(empty.counts, { pending: 0, sending: 0, sent: 0, dead: 0, cancelled: 0, held: 0 });
      assert.equal(empty.oldestDueAgeMs, null);
      assert.equal(empty.nextAttemptAt, null);

      await seed(fx.db, { status: "pending", createdAt: at(0), nextAttemptAt: at(minutes(50)) }); // due 10 min ago, created 60 min ago
      await seed(fx.db, { status: "pending", createdAt: at(minutes(30)), nextAttemptAt: at(minutes(40)) }); // due 20 min ago
      await seed(fx.db, { status: "pending", createdAt: at(minutes(59)), nextAttemptAt: at(minutes(75)) }); // future
      await seed(fx.db, { status: "sending", leaseOwner: "r1", leaseExpiresAt: at(minutes(59)), attempts: 1 }); // expired
      await seed(fx.db, { status: "sending", leaseOwner: "r2", leaseExpiresAt: at(minutes(61)), attempts: 1 });
      await seed(fx.db, { status: "sent", sentAt: at(1000) });
      await seed(fx.db, { status: "sent", sentAt: at(1000), uncertainHandoffs: 1 });
      await seed(fx.db, { status: "held", uncertainHandoffs: 1 });
      await seed(fx.db, { status: "dead", attempts: 5 });

      const s = await getStatus(fx.db, { now });
      assert.deepEqual(s.counts, { pending: 3, sending: 2, sent: 2, dead: 1, cancelled: 0, held: 1 });
      assert.equal(s.total, 9);
      assert.equal(s.uncertain.total, 2);
      assert.equal(s.uncertain.byStatus.sent, 1);
      assert.equal(s.uncertain.byStatus.held, 1);
      assert.equal(s.duePending, 2);
      assert.equal(s.oldestDueAgeMs, minutes(60));
      assert.equal(s.maxDueLagMs, minutes(20));
      assert.equal(s.nextAttemptAt?.toISOString(), at(minutes(75)).toISOString());
      assert.equal(s.expiredLeases, 1);
    });

    test("list shows newest first and filters by status, recipient (case-insensitive), time window, uncertainty and limit", async (t) => {
      const fx = await fixture(t, dialect);
      if (!fx) return;
      const a = await seed(fx.db, { status: "sent", envelopeTo: ["Ann@Example.test", "bob@example.test"], createdAt: at(0) });
      const b = await seed(fx.db, { status: "dead", envelopeTo: ["bob@example.test"], createdAt: at(minutes(10)), lastError: "550 5.1.1 no such user" });
      const c = await seed(fx.db, { status: "pending", envelopeTo: ["carl@example.test"], createdAt: at(minutes(20)) });
      const d = await seed(fx.db, { status: "held", envelopeTo: ["ann@example.test"], createdAt: at(minutes(30)), uncertainHandoffs: 1 });

      assert.deepEqual((await listMails(fx.db)).map((m) => m.id), [d.id, c.id, b.id, a.id]);
      assert.deepEqual((await listMails(fx.db, { status: "dead" })).map((m) => m.id), [b.id]);
      assert.deepEqual((await listMails(fx.db, { status: ["dead", "sent"] })).map((m) => m.id), [b.id, a.id]);
      assert.deepEqual((await listMails(fx.db, { recipient: "ANN@example.TEST" })).map((m) => m.id), [d.id, a.id]);
      assert.deepEqual((await listMails(fx.db, { since: at(minutes(10)), until: at(minutes(30)) })).map((m) => m.id), [c.id, b.id]);
      assert.deepEqual((await listMails(fx.db, { uncertain: true })).map((m) => m.id), [d.id]);
      assert.deepEqual((await listMails(fx.db, { limit: 2 })).map((m) => m.id), [d.id, c.id]);

      const [held] = await listMails(fx.db, { uncertain: true });
      assert.equal(held?.uncertain, true);
      assert.equal(held?.status, "held");
      assert.deepEqual(held?.envelopeTo, ["ann@example.test"]);
      assert.ok(held?.createdAt instanceof Date);
      assert.equal(held?.createdAt.toISOString(), at(minutes(30)).toISOString());
      assert.equal((held as unknown as { raw?: unknown }).raw, undefined);
    });

    test("list marks a sent mail with refused recipients as partly refused, and only a sent one", async (t) => {
      const fx = await fixture(t, dialect);
      if (!fx) return;
      const refusal = [{ recipient: "bob@example.test", response: "550 5.1.1 <bob@example.test>: Recipient address rejected" }];
      const partly = await seed(fx.db, { status: "sent", envelopeTo: ["ann@example.test", "bob@example.test"], accepted: ["ann@example.test"], rejected: refusal, sentAt: at(1) });
      const whole = await seed(fx.db, { status: "sent", accepted: ["ann@example.test"], sentAt: at(1) });
      const dead = await seed(fx.db, { status: "dead", rejected: refusal });
      const byId = new Map((await listMails(fx.db)).map((m) => [m.id, m]));
      assert.equal(byId.get(partly.id)?.partlyRefused, true);
      assert.deepEqual(byId.get(partly.id)?.rejected, refusal);
      assert.equal(byId.get(whole.id)?.partlyRefused, false);
      assert.equal(byId.get(dead.id)?.partlyRefused, false);
    });

    test("SQL metacharacters in filters and ids match nothing and change nothing", async (t) => {
      const fx = await fixture(t, dialect);
      if (!fx) return;
      await seed(fx.db, { status: "dead", envelopeTo: ["ann@example.test"] });
      const before = await dump(fx.db);
      for (const evil of ["' OR 1=1 --", "%", "_", "%@example.test", "ann@example.tes_", "\" OR \"\"=\"", "'); DROP TABLE mail_outbox; --"]) {
        assert.deepEqual(await listMails(fx.db, { recipient: evil }), [], `recipient ${evil}`);
        const r = await replayMails(fx.db, { recipient: evil });
        assert.equal(r.matched, 0, `replay recipient ${evil}`);
      }
      await assert.rejects(showMail(fx.db, "' OR 1=1 --"), OptionsError);
      await assert.rejects(showMail(fx.db, "%@%"), NotFoundError);
      await assert.rejects(showMail(fx.db, "<'OR'1'='1@x>"), NotFoundError);
      await assert.rejects(replayMails(fx.db, { ids: ["' OR 1=1 --"] }), OptionsError);
      await assert.rejects(cancelMails(fx.db, { ids: ["%"] }), OptionsError);
      await assert.rejects(listMails(fx.db, { status: "dead' OR 1=1 --" as never }), OptionsError);
      assert.equal(await dump(fx.db), before);
    });

    test("show finds a mail by id, by <Message-ID> and by bare Message-ID, with its attempts in order, and the raw bytes only when asked", async (t) => {
      const fx = await fixture(t, dialect);
      if (!fx) return;
      const raw = Buffer.from("Subject: hi\r\n\r\n\u00e9t\u00e9 \x00\xff bytes\r\n", "latin1");
      const m = await seed(fx.db, {
        status: "sent",
        raw,
        attempts: 2,
        sentAt: at(minutes(2)),
        mtaResponse: "250 2.0.0 Ok: queued as 4ABC123",
        mtaQueueId: "4ABC123",
        accepted: ["ann@example.test"],
        rejected: [{ recipient: "bob@example.test", response: "550 5.1.1 unknown" }],
        metadata: { order: 42 },
      });
      await seedAttempt(fx.db, m.id, { attempt: 2, startedAt: at(minutes(2)), outcome: "partial", response: "250 2.0.0 Ok: queued as 4ABC123", queueId: "4ABC123" });
      await seedAttempt(fx.db, m.id, { attempt: 1, startedAt: at(minutes(1)), outcome: "transient", response: "421 4.7.0 try later", responseCode: 421, errorCode: "EENVELOPE", error: "421 try later" });

      const byId = await showMail(fx.db, m.id);
      assert.equal(byId.messageId, m.messageId);
      assert.deepEqual(byId.attemptLog.map((a) => a.attempt), [1, 2]);
      assert.equal(byId.attemptLog[0]?.responseCode, 421);
      assert.equal(byId.attemptLog[1]?.queueId, "4ABC123");
      assert.deepEqual(byId.accepted, ["ann@example.test"]);
      assert.deepEqual(byId.rejected, [{ recipient: "bob@example.test", response: "550 5.1.1 unknown" }]);
      assert.deepEqual(byId.metadata, { order: 42 });
      assert.equal(byId.raw, undefined);

      assert.equal((await showMail(fx.db, m.messageId)).id, m.id);
      assert.equal((await showMail(fx.db, m.messageId.slice(1, -1))).id, m.id);
      assert.equal((await showMail(fx.db, m.id.toUpperCase())).id, m.id);
      const withRaw = await showMail(fx.db, m.id, { raw: true });
      assert.ok(withRaw.raw?.equals(raw));

      await assert.rejects(showMail(fx.db, newId()), NotFoundError);
      await assert.rejects(showMail(fx.db, "<nobody@example.test>"), NotFoundError);
    });

    test("replaying a dead mail keeps its Message-ID and bytes, resets attempts, makes it due now and tells the story in its log", async (t) => {
      const fx = await fixture(t, dialect);
      if (!fx) return;
      const m = await seed(fx.db, { status: "dead", attempts: 5, lastError: "550 5.7.1 relay denied", mtaResponse: "550 5.7.1 relay denied", nextAttemptAt: at(0) });
      await seedAttempt(fx.db, m.id, { attempt: 5, startedAt: at(minutes(5)), outcome: "permanent", response: "550 5.7.1 relay denied", responseCode: 550 });
      const rawBefore = (await showMail(fx.db, m.id, { raw: true })).raw;
      const now = at(minutes(90));

      const r = await replayMails(fx.db, { ids: [m.messageId], now });
      assert.deepEqual(r.replayed, [{ id: m.id, messageId: m.messageId, from: "dead" }]);
      assert.deepEqual(r.skipped, []);
      assert.deepEqual(r.notFound, []);

      const after = await showMail(fx.db, m.id, { raw: true });
      assert.equal(after.status, "pending");
      assert.equal(after.messageId, m.messageId);
      assert.ok(after.raw?.equals(rawBefore!));
      assert.equal(after.attempts, 0);
      assert.equal(after.nextAttemptAt.toISOString(), now.toISOString());
      assert.equal(after.leaseOwner, null);
      assert.equal(after.lastError, null);
      assert.equal(after.attemptLog.length, 2);
      const last = after.attemptLog[1]!;
      assert.equal(last.outcome, "replayed");
      assert.equal(last.relay, "operator");
      assert.match(last.response ?? "", /replayed from dead .*5 attempts.*550 5\.7\.1 relay denied/);
      assert.equal((await getStatus(fx.db, { now })).duePending, 1);
    });

    test("replay by id skips mails that are pending or being sent, and reports ids it cannot find", async (t) => {
      const fx = await fixture(t, dialect);
      if (!fx) return;
      const pending = await seed(fx.db, { status: "pending" });
      const sending = await seed(fx.db, { status: "sending", leaseOwner: "r1", leaseExpiresAt: at(minutes(1)), attempts: 1 });
      const held = await seed(fx.db, { status: "held", uncertainHandoffs: 1 });
      const missing = newId();
      const r = await replayMails(fx.db, { ids: [pending.id, sending.id, held.id, missing], now: at(minutes(5)) });
      assert.deepEqual(r.replayed.map((x) => x.id), [held.id]);
      assert.deepEqual(r.skipped.map((x) => [x.id, x.status]).sort(), [[pending.id, "pending"], [sending.id, "sending"]].sort());
      assert.ok(r.skipped.every((x) => x.reason.length > 0));
      assert.deepEqual(r.notFound, [missing]);
      const s = await showMail(fx.db, sending.id);
      assert.equal(s.status, "sending");
      assert.equal(s.leaseOwner, "r1");
      const h = await showMail(fx.db, held.id);
      assert.equal(h.status, "pending");
      assert.equal(h.uncertainHandoffs, 0);
      assert.match(h.attemptLog.at(-1)?.response ?? "", /1 uncertain hand-off/);
    });

    test("a replay whose filter matches everything is refused unless all is set, and all takes dead and held mails, never sent or cancelled", async (t) => {
      const fx = await fixture(t, dialect);
      if (!fx) return;
      const dead = await seed(fx.db, { status: "dead" });
      const held = await seed(fx.db, { status: "held" });
      const sent = await seed(fx.db, { status: "sent", sentAt: at(1) });
      const cancelled = await seed(fx.db, { status: "cancelled" });
      const before = await dump(fx.db);
      await assert.rejects(replayMails(fx.db, {}), UnsafeOperationError);
      await assert.rejects(replayMails(fx.db, { ids: [] }), UnsafeOperationError);
      await assert.rejects(replayMails(fx.db, { dryRun: true }), UnsafeOperationError);
      assert.equal(await dump(fx.db), before);

      const r = await replayMails(fx.db, { all: true });
      assert.deepEqual(r.replayed.map((x) => x.id).sort(), [dead.id, held.id].sort());
      assert.equal((await showMail(fx.db, sent.id)).status, "sent");
      assert.equal((await showMail(fx.db, cancelled.id)).status, "cancelled");

      await assert.rejects(replayMails(fx.db, { status: "pending" }), OptionsError);
    });

    test("a replay that would resend a sent mail, by status or by id, is refused without resendSent and changes nothing", async (t) => {
      const fx = await fixture(t, dialect);
      if (!fx) return;
      const sent = await seed(fx.db, { status: "sent", sentAt: at(1) });
      const dead = await seed(fx.db, { status: "dead" });
      const before = await dump(fx.db);
      await assert.rejects(replayMails(fx.db, { status: "sent" }), UnsafeOperationError);
      // By id the rows are checked inside the transaction: the dead mail named with it stays dead too.
      await assert.rejects(replayMails(fx.db, { ids: [dead.id, sent.messageId] }), (e: unknown) => e instanceof UnsafeOperationError && /1 sent mail/.test(e.message));
      assert.equal(await dump(fx.db), before);
      const dry = await replayMails(fx.db, { ids: [sent.id], dryRun: true });
      assert.deepEqual(dry.replayed.map((x) => [x.id, x.from]), [[sent.id, "sent"]]);
      assert.equal(await dump(fx.db), before);
      const r = await replayMails(fx.db, { ids: [dead.id, sent.messageId], resendSent: true });
      assert.deepEqual(r.replayed.map((x) => x.id).sort(), [dead.id, sent.id].sort());
      assert.equal((await showMail(fx.db, sent.id)).status, "pending");
    });

    test("replay by status, time and recipient takes only the matching rows", async (t) => {
      const fx = await fixture(t, dialect);
      if (!fx) return;
      const old = await seed(fx.db, { status: "dead", envelopeTo: ["ann@example.test"], createdAt: at(0) });
      const recent = await seed(fx.db, { status: "dead", envelopeTo: ["ann@example.test"], createdAt: at(minutes(100)) });
      const other = await seed(fx.db, { status: "dead", envelopeTo: ["bob@example.test"], createdAt: at(minutes(100)) });
      const r = await replayMails(fx.db, { status: "dead", since: at(minutes(50)), recipient: "ANN@example.test" });
      assert.deepEqual(r.replayed.map((x) => x.id), [recent.id]);
      assert.equal((await showMail(fx.db, old.id)).status, "dead");
      assert.equal((await showMail(fx.db, other.id)).status, "dead");
    });

    test("a dry-run replay or cancel reports what would change and writes nothing", async (t) => {
      const fx = await fixture(t, dialect);
      if (!fx) return;
      const dead = await seed(fx.db, { status: "dead", attempts: 5 });
      const pending = await seed(fx.db, { status: "pending" });
      await seedAttempt(fx.db, dead.id, { attempt: 5, startedAt: at(1), outcome: "permanent" });
      const before = await dump(fx.db);
      const r = await replayMails(fx.db, { all: true, dryRun: true });
      assert.equal(r.dryRun, true);
      assert.deepEqual(r.replayed.map((x) => x.id), [dead.id]);
      const c = await cancelMails(fx.db, { ids: [pending.id, dead.id], dryRun: true });
      assert.deepEqual(c.cancelled.map((x) => x.id), [pending.id]);
      assert.deepEqual(c.notCancellable.map((x) => x.id), [dead.id]);
      const p = await purgeMails(fx.db, { status: "dead", olderThanMs: 0, dryRun: true });
      assert.equal(p.deleted, 1);
      assert.equal(await dump(fx.db), before);
    });

    test("cancel stops pending and held mails, refuses the others row by row, and logs the action", async (t) => {
      const fx = await fixture(t, dialect);
      if (!fx) return;
      const pending = await seed(fx.db, { status: "pending" });
      const held = await seed(fx.db, { status: "held" });
      const sending = await seed(fx.db, { status: "sending", leaseOwner: "r1", leaseExpiresAt: at(minutes(1)) });
      const sent = await seed(fx.db, { status: "sent" });
      const cancelled = await seed(fx.db, { status: "cancelled" });
      const missing = "<gone@example.test>";
      const r = await cancelMails(fx.db, { ids: [pending.id, held.messageId, sending.id, sent.id, cancelled.id, missing], actor: "alice" });
      assert.deepEqual(r.cancelled.map((x) => [x.id, x.from]).sort(), [[pending.id, "pending"], [held.id, "held"]].sort());
      assert.deepEqual(r.alreadyCancelled, [{ id: cancelled.id, messageId: cancelled.messageId, status: "cancelled" }], "cancel is idempotent");
      assert.deepEqual(r.notCancellable.map((x) => [x.id, x.status]).sort(), [[sending.id, "sending"], [sent.id, "sent"]].sort());
      assert.match(r.notCancellable.find((x) => x.id === sent.id)?.reason ?? "", /handed over/);
      assert.deepEqual(r.notFound, [missing]);
      const p = await showMail(fx.db, pending.id);
      assert.equal(p.status, "cancelled");
      assert.equal(p.attemptLog.at(-1)?.outcome, "cancelled");
      assert.equal(p.attemptLog.at(-1)?.relay, "alice");
      assert.equal((await showMail(fx.db, sending.id)).status, "sending");
      assert.equal((await showMail(fx.db, cancelled.id)).attemptLog.length, 0, "no log line for a mail cancelled already");
      const again = await cancelMails(fx.db, { ids: [pending.id] });
      assert.deepEqual([again.cancelled.length, again.alreadyCancelled.length, again.notCancellable.length], [0, 1, 0]);
      await assert.rejects(cancelMails(fx.db, { ids: [] }), OptionsError);
    });

    test("purge deletes only old mails of the given final status, with their attempts, in batches, and refuses unsafe requests", async (t) => {
      const fx = await fixture(t, dialect);
      if (!fx) return;
      const now = at(minutes(60 * 24 * 40));
      const oldSent: string[] = [];
      for (let i = 0; i < 5; i++) {
        const m = await seed(fx.db, { status: "sent", updatedAt: at(0), sentAt: at(0) });
        await seedAttempt(fx.db, m.id, { attempt: 1, startedAt: at(0), outcome: "accepted" });
        oldSent.push(m.id);
      }
      const recentSent = await seed(fx.db, { status: "sent", updatedAt: at(minutes(60 * 24 * 39)) });
      const oldDead = await seed(fx.db, { status: "dead", updatedAt: at(0) });
      const oldHeld = await seed(fx.db, { status: "held", updatedAt: at(0) });
      const oldPending = await seed(fx.db, { status: "pending", updatedAt: at(0) });

      await assert.rejects(purgeMails(fx.db, {}), UnsafeOperationError);
      await assert.rejects(purgeMails(fx.db, { status: "sent" }), UnsafeOperationError);
      await assert.rejects(purgeMails(fx.db, { olderThanMs: 1 }), UnsafeOperationError);
      await assert.rejects(purgeMails(fx.db, { status: "held" as never, olderThanMs: 1 }), OptionsError);
      await assert.rejects(purgeMails(fx.db, { status: "pending" as never, all: true }), OptionsError);
      await assert.rejects(purgeMails(fx.db, { status: "sent", olderThanMs: -1 }), OptionsError);

      const r = await purgeMails(fx.db, { status: "sent", olderThanMs: parseDuration("30d"), batchSize: 2, now });
      assert.equal(r.deleted, 5);
      assert.deepEqual(r.byStatus, { sent: 5, dead: 0, cancelled: 0 });
      assert.equal(r.cutoff?.toISOString(), new Date(now.getTime() - parseDuration("30d")).toISOString());
      assert.equal(await rowCount(fx.db, "mail_outbox_attempt"), 0);
      const left = (await listMails(fx.db, { limit: 100 })).map((m) => m.id).sort();
      assert.deepEqual(left, [recentSent.id, oldDead.id, oldHeld.id, oldPending.id].sort());

      const all = await purgeMails(fx.db, { all: true, now });
      assert.deepEqual(all.byStatus, { sent: 1, dead: 1, cancelled: 0 });
      assert.deepEqual((await listMails(fx.db)).map((m) => m.id).sort(), [oldHeld.id, oldPending.id].sort());
    });

    test("a replay of thousands of rows runs in batches inside one transaction", async (t) => {
      const fx = await fixture(t, dialect);
      if (!fx) return;
      const n = 2500;
      if (fx.db.dialect === "mysql") {
        await fx.db.pool.batch(
          `INSERT INTO mail_outbox (id, message_id, status, envelope_from, envelope_to, subject, raw, size, attempts, max_attempts, send_at, next_attempt_at, created_at, updated_at)
           VALUES (?, ?, 'dead', 'a@example.test', '["b@example.test"]', 'bulk', x'00', 1, 5, 5, NOW(3), NOW(3), NOW(3), NOW(3))`,
          Array.from({ length: n }, (_, i) => [newId(), `<bulk-${i}@example.test>`]),
        );
      } else if (fx.db.dialect === "postgresql") {
        await fx.db.pool.query(
          `INSERT INTO mail_outbox (id, message_id, status, envelope_from, envelope_to, raw, size, attempts, max_attempts, send_at, next_attempt_at, created_at, updated_at)
           SELECT gen_random_uuid(), '<bulk-' || g || '@example.test>', 'dead', 'a@example.test', '["b@example.test"]', '\\x00', 1, 5, 5, now(), now(), now(), now()
           FROM generate_series(1, $1) g`,
          [n],
        );
      } else {
        const ins = sqliteOf(fx.db).db.prepare(
          `INSERT INTO mail_outbox (id, message_id, status, envelope_from, envelope_to, raw, size, attempts, max_attempts, send_at, next_attempt_at, created_at, updated_at)
           VALUES (@id, @mid, 'dead', 'a@example.test', '["b@example.test"]', x'00', 1, 5, 5, @t, @t, @t, @t)`,
        );
        sqliteOf(fx.db).db.transaction(() => {
          for (let i = 0; i < n; i++) {
            const id = newId();
            ins.run({ id, mid: `<bulk-${i}@example.test>`, t: toSqliteTime(T0) });
          }
        })();
      }
      const r = await replayMails(fx.db, { status: "dead" });
      assert.equal(r.replayed.length, n);
      assert.equal((await getStatus(fx.db)).counts.pending, n);
      assert.equal(await rowCount(fx.db, "mail_outbox_attempt"), n);
    });

    test("after the hand-off: show has each recipient's events and current fate, list filters by fate, status counts recipients per fate", async (t) => {
      const fx = await fixture(t, dialect);
      if (!fx) return;
      const to = ["ann@example.test", "Bob@example.test", "carl@example.test", "dora@example.test"];
      const a = await seed(fx.db, { status: "sent", envelopeTo: to, accepted: to, mtaQueueId: "4BCD1234", sentAt: at(1000), createdAt: at(0) });
      const b = await seed(fx.db, { status: "sent", envelopeTo: ["eve@example.test"], accepted: ["eve@example.test"], sentAt: at(2000), createdAt: at(1) });
      const c = await seed(fx.db, { status: "pending", createdAt: at(2) });
      let key = 0;
      const ev = (emailId: string, recipient: string, event: DeliveryEventInput["event"], atMs: number, extra: Partial<DeliveryEventInput> = {}): DeliveryEventInput => ({
        emailId,
        recipient,
        event,
        at: at(atMs),
        source: "log",
        queueId: "4BCD1234",
        dsnStatus: null,
        remoteMta: null,
        reply: null,
        eventKey: `admin-test-${key++}`,
        ...extra,
      });
      await fx.db.recordDeliveryEvents([
        ev(a.id, "", "queued", 1100),
        ev(a.id, "ann@example.test", "delivered", 1200, { dsnStatus: "2.0.0", remoteMta: "mx.example.test[192.0.2.1]:25", reply: "250 2.0.0 Ok" }),
        ev(a.id, "bob@example.test", "deferred", 1300, { dsnStatus: "4.4.1", reply: "connect to mx.example.test: Connection timed out" }),
        ev(a.id, "bob@example.test", "bounced", minutes(5), { source: "dsn", dsnStatus: "5.1.1", remoteMta: "dns; mx.example.test", reply: "smtp; 550 5.1.1 user unknown" }),
        ev(a.id, "carl@example.test", "deferred", 1400, { dsnStatus: "4.2.2", reply: "mailbox full" }),
        // A late deferral report after a delivery does not undo it.
        ev(b.id, "eve@example.test", "delivered", 2100),
        ev(b.id, "eve@example.test", "deferred", 1900),
      ]);

      const shown = await showMail(fx.db, a.id);
      assert.deepEqual(shown.deliveryEvents.map((e) => e.event), ["queued", "delivered", "deferred", "deferred", "bounced"]);
      assert.deepEqual(
        shown.fates.map((f) => [f.recipient, f.fate, f.events]),
        [["ann@example.test", "delivered", 1], ["Bob@example.test", "bounced", 2], ["carl@example.test", "deferred", 1], ["dora@example.test", null, 0]],
      );
      const bob = shown.fates[1]!.event!;
      assert.equal(bob.source, "dsn");
      assert.equal(bob.dsnStatus, "5.1.1");
      assert.equal(bob.reply, "smtp; 550 5.1.1 user unknown");
      assert.deepEqual(bob.at, at(minutes(5)));
      assert.equal((await showMail(fx.db, b.id)).fates[0]?.fate, "delivered");
      assert.deepEqual((await showMail(fx.db, c.id)).fates, [], "nothing to say before the hand-off");

      const ids = async (fate: "delivered" | "deferred" | "bounced" | "expired") => (await listMails(fx.db, { fate })).map((m) => m.id);
      assert.deepEqual(await ids("bounced"), [a.id]);
      assert.deepEqual(await ids("delivered"), [b.id, a.id]);
      assert.deepEqual(await ids("deferred"), [a.id], "carl is still deferred; eve's late deferral does not count");
      assert.deepEqual(await ids("expired"), []);
      assert.deepEqual((await listMails(fx.db, { fate: "bounced", status: "pending" })).map((m) => m.id), []);
      await assert.rejects(listMails(fx.db, { fate: "lost" as never }), (e: unknown) => e instanceof OptionsError && /Unknown fate "lost"/.test(e.message));

      const fates = await mailFates(fx.db, await listMails(fx.db));
      assert.deepEqual(fates.get(a.id)?.map((f) => f.fate), ["delivered", "bounced", "deferred", null]);
      assert.deepEqual(fates.get(c.id), []);

      assert.deepEqual((await getStatus(fx.db)).fates, { delivered: 2, deferred: 1, bounced: 1, expired: 0 });
    });
  });
}

test("admin functions accept a database URL and open and close it themselves", async (t) => {
  const fx = await fixture(t, "sqlite");
  if (!fx) return;
  await seed(fx.db, { status: "dead" });
  const s = await getStatus(fx.url);
  assert.equal(s.counts.dead, 1);
});
