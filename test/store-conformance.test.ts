/**
 * The store conformance suite, in the manner of River's riverdrivertest: `storeConformance` takes
 * a way to open a fresh, migrated store and runs the same tests against it; it runs here against
 * a real SQLite file and a real PostgreSQL server. A new database is one folder under
 * src/stores/ plus one more `storeConformance(...)` line that passes.
 *
 * Every store operation in these tests goes through `step()`, which snapshots (id, status) of
 * every row before and after and fails when a row moved in a way that no transition of
 * `TRANSITIONS` (src/states.ts) allows for that operation: the state table governs the SQL.
 *
 * Rows are seeded with the test's own SQL (the only place here that knows the database), in the
 * shape enqueue and the relay leave them.
 */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import type { TestContext } from "node:test";
import { openDatabase, type Db } from "../src/db.js";
import { newId } from "../src/ids.js";
import { cancelMails, purgeMails, replayMails } from "../src/admin.js";
import { TRANSITIONS, type Transition } from "../src/states.js";
import type { Outcome, Store } from "../src/store.js";
import { conformanceStores, insertRow as insert, freshSqlite, sqliteOf, pgOf, mysqlUrl } from "./support/db.js";

/** Opens a fresh migrated store for one test (closed after it), or null when the database is not available (skipped). */
type StoreFactory = (t: TestContext) => Promise<Db | null>;

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));
const MINUTE = 60_000;

// ---- the test's own SQL: seeding and looking --------------------------------------------------

interface Seed {
  id?: string;
  messageId?: string;
  status?: string;
  priority?: number;
  idempotencyKey?: string | null;
  envelopeTo?: string[];
  attempts?: number;
  maxAttempts?: number;
  createdAt?: Date;
  updatedAt?: Date;
  nextAttemptAt?: Date;
  leaseOwner?: string | null;
  leaseExpiresAt?: Date | null;
  uncertainHandoffs?: number;
  raw?: Buffer;
}

async function seed(db: Db, m: Seed = {}): Promise<string> {
  const id = m.id ?? newId();
  const messageId = m.messageId ?? `<${id}@example.test>`;
  const raw = m.raw ?? Buffer.from(`Message-ID: ${messageId}\r\nSubject: hi\r\n\r\nbody\r\n`);
  const createdAt = m.createdAt ?? new Date(Date.now() - MINUTE);
  const v = {
    id,
    message_id: messageId,
    status: m.status ?? "pending",
    priority: m.priority ?? 0,
    idempotency_key: m.idempotencyKey ?? null,
    envelope_from: "app@example.test",
    envelope_to: JSON.stringify(m.envelopeTo ?? ["ann@example.test"]),
    subject: "hi",
    raw,
    size: raw.length,
    attempts: m.attempts ?? 0,
    max_attempts: m.maxAttempts ?? 5,
    send_at: createdAt,
    next_attempt_at: m.nextAttemptAt ?? createdAt,
    lease_owner: m.leaseOwner ?? null,
    lease_expires_at: m.leaseExpiresAt ?? null,
    uncertain_handoffs: m.uncertainHandoffs ?? 0,
    created_at: createdAt,
    updated_at: m.updatedAt ?? createdAt,
  };
  await insert(db, "mail_outbox", v);
  return id;
}


async function query<T>(db: Db, sql: string): Promise<T[]> {
  if (db.dialect === "postgresql") return (await db.pool.query(sql)).rows as T[];
  if (db.dialect === "mysql") return [...((await db.pool.query(sql)) as T[])];
  return sqliteOf(db).db.prepare(sql).all() as T[];
}

async function statusOf(db: Db): Promise<Map<string, string>> {
  return new Map((await query<{ id: string; status: string }>(db, "SELECT id, status FROM mail_outbox")).map((r) => [r.id, r.status]));
}

async function attemptsOf(db: Db, id: string): Promise<{ outcome: string; error_code: string | null; relay: string }[]> {
  const rows = await query<{ email_id: string; outcome: string; error_code: string | null; relay: string; attempt: number }>(
    db,
    "SELECT email_id, outcome, error_code, relay, attempt FROM mail_outbox_attempt ORDER BY attempt, started_at",
  );
  return rows.filter((r) => r.email_id === id).map(({ outcome, error_code, relay }) => ({ outcome, error_code, relay }));
}

async function mail(db: Store, id: string) {
  const found = await db.findMail({ id }, true);
  assert.ok(found, `mail ${id} exists`);
  return found.mail;
}

// ---- the state-table check --------------------------------------------------------------------

/** The transitions each store operation may make. */
const MAY: Readonly<Record<string, readonly Transition[]>> = {
  claim: ["claim"],
  complete: ["accepted", "accepted-late", "transient", "partial", "permanent", "exhausted", "release"],
  renew: [],
  rescue: ["lease-expired-resend", "lease-expired-hold", "lease-expired-exhausted"],
  resolveUncertain: ["verified-received", "verified-absent"],
  replay: ["replay"],
  cancel: ["cancel"],
  purge: [],
  read: [],
};

/** Every transition some store operation made in the tests above, for the coverage test at the end. */
const seen = new Set<Transition>();

/**
 * Run one store operation, and fail if any row changed status in a way the state table does not
 * allow for it. Rows may only disappear in a purge.
 */
async function step<T>(db: Db, operation: keyof typeof MAY, fn: () => Promise<T>): Promise<T> {
  const before = await statusOf(db);
  const result = await fn();
  const after = await statusOf(db);
  for (const [id, from] of before) {
    const to = after.get(id);
    if (to === undefined) {
      assert.equal(operation, "purge", `${operation} deleted row ${id} (${from})`);
      continue;
    }
    if (to === from) continue;
    const allowed = MAY[operation]!.filter((t) => (TRANSITIONS[t].from as readonly string[]).includes(from) && TRANSITIONS[t].to === to);
    assert.ok(allowed.length > 0, `${operation} moved row ${id} from ${from} to ${to}: no transition in src/states.ts allows that for ${operation} (${MAY[operation]!.join(", ") || "none"})`);
    for (const x of allowed) seen.add(x);
  }
  return result;
}

// ---- outcomes ---------------------------------------------------------------------------------

const attempt = (id: string, n = 1) => ({ id, attemptId: newId(), attempt: n, startedAt: new Date(), durationMs: 12 });
const accepted = (id: string, rejected: { recipient: string; response: string | null }[] = []): Outcome => ({
  ...attempt(id),
  kind: "accepted",
  response: "250 2.0.0 Ok: queued as ABC123",
  queueId: "ABC123",
  accepted: ["ann@example.test"],
  rejected,
});
const retry = (id: string, delayMs = 10 * MINUTE): Outcome => ({
  ...attempt(id),
  kind: "transient",
  delayMs,
  error: "421 try later",
  errorCode: "EENVELOPE",
  response: "421 4.3.0 try later",
  responseCode: 421,
});
const dead = (id: string): Outcome => ({
  ...attempt(id),
  kind: "permanent",
  error: "550 no such user",
  errorCode: "EENVELOPE",
  response: "550 5.1.1 no such user",
  responseCode: 550,
  rejected: [{ recipient: "ann@example.test", response: "550 5.1.1 no such user" }],
});

// ---- the suite --------------------------------------------------------------------------------

function storeConformance(name: string, open: StoreFactory): void {
  describe(`store conformance: ${name}`, () => {
    it("claims due pending mail by priority, then by how long it has been due, and nothing else", async (t) => {
      const db = await open(t);
      if (!db) return;
      const now = Date.now();
      const low = await seed(db, { priority: 0, nextAttemptAt: new Date(now - 5 * MINUTE) });
      const high = await seed(db, { priority: 9, nextAttemptAt: new Date(now - 1 * MINUTE) });
      const lowOlder = await seed(db, { priority: 0, nextAttemptAt: new Date(now - 10 * MINUTE) });
      await seed(db, { nextAttemptAt: new Date(now + 60 * MINUTE) }); // not due
      await seed(db, { status: "held" });
      await seed(db, { status: "dead" });
      const first = await step(db, "claim", () => db.claim("relay-a", 2, 30_000));
      assert.deepEqual(first.map((m) => m.id), [high, lowOlder]);
      const second = await step(db, "claim", () => db.claim("relay-a", 10, 30_000));
      assert.deepEqual(second.map((m) => m.id), [low]);
      assert.deepEqual(await step(db, "claim", () => db.claim("relay-a", 10, 30_000)), []);
    });

    it("a claim hands over the stored bytes exactly (also 8-bit bytes that are not UTF-8) and the envelope, counts the attempt and leases the row to its owner", async (t) => {
      const db = await open(t);
      if (!db) return;
      // Latin-1 "é" (0xE9), a NUL, a stray 0xFF, UTF-8 "€" and a real U+FFFD.
      const raw = Buffer.from([0x41, 0xe9, 0x0d, 0x0a, 0x00, 0xff, 0xe2, 0x82, 0xac, 0xef, 0xbf, 0xbd, 0x0d, 0x0a]);
      const id = await seed(db, { raw, envelopeTo: ["a@x.test", "b@y.test"], attempts: 2, maxAttempts: 7, uncertainHandoffs: 1 });
      const [c] = await step(db, "claim", () => db.claim("relay-a", 5, 60_000));
      assert.ok(c);
      assert.equal(c.id, id);
      assert.ok(c.raw.equals(raw));
      assert.deepEqual(c.envelopeTo, ["a@x.test", "b@y.test"]);
      assert.equal(c.envelopeFrom, "app@example.test");
      assert.deepEqual([c.attempts, c.maxAttempts, c.uncertainHandoffs], [3, 7, 1]);
      // A UTF-8 message in the same batch comes through untouched as well.
      const utf8 = Buffer.from("Subject: caf\u00e9 \u20ac\r\n\r\nbody\r\n");
      await seed(db, { raw: utf8 });
      const [u] = await step(db, "claim", () => db.claim("relay-a", 5, 60_000));
      assert.ok(u?.raw.equals(utf8));
      const m = await mail(db, id);
      assert.equal(m.status, "sending");
      assert.equal(m.leaseOwner, "relay-a");
      assert.ok(m.leaseExpiresAt !== null && m.leaseExpiresAt.getTime() > Date.now() + 30_000, "leased for about a minute");
    });

    it("a claim reads every integer column back as stored, also values with a byte of 0x80 or more (negative priorities, 128 attempts and up): PostgreSQL's binary results once mangled them through UTF-8", async (t) => {
      const db = await open(t);
      if (!db) return;
      const cases = [
        { priority: -1, attempts: 254, maxAttempts: 1000, uncertainHandoffs: 200 },
        { priority: 1000, attempts: 127, maxAttempts: 200, uncertainHandoffs: 128 },
        { priority: -1000, attempts: 998, maxAttempts: 999, uncertainHandoffs: 0 },
        { priority: 200, attempts: 0, maxAttempts: 128, uncertainHandoffs: 255 },
      ];
      const ids: string[] = [];
      for (const c of cases) ids.push(await seed(db, c));
      const claimed = await step(db, "claim", () => db.claim("relay-a", 10, 60_000));
      const byId = new Map(claimed.map((c) => [c.id, c]));
      cases.forEach((c, i) => {
        const got = byId.get(ids[i]!);
        assert.ok(got, `case ${i} claimed`);
        assert.deepEqual([got.priority, got.attempts, got.maxAttempts, got.uncertainHandoffs], [c.priority, c.attempts + 1, c.maxAttempts, c.uncertainHandoffs], `case ${i}`);
      });
    });

    it("renew extends only the leases its owner still holds, also one that ran out but was not rescued", async (t) => {
      const db = await open(t);
      if (!db) return;
      const a = await seed(db);
      const b = await seed(db);
      const claimed = await step(db, "claim", () => db.claim("relay-a", 1, 1));
      const mine = claimed[0]!.id;
      const theirs = mine === a ? b : a;
      await step(db, "claim", () => db.claim("relay-b", 1, 60_000));
      await sleep(20);
      assert.deepEqual(await step(db, "renew", () => db.renew("relay-a", [mine, theirs, newId()], 60_000)), [mine]);
      assert.deepEqual(await step(db, "renew", () => db.renew("relay-a", [], 60_000)), []);
      assert.deepEqual(await step(db, "rescue", () => db.rescue("relay-c", "resend", 10)), [], "the renewed lease holds again");
      assert.ok((await mail(db, mine)).leaseExpiresAt!.getTime() > Date.now() + 30_000);
    });

    it("rescue moves other relays' expired rows to pending as uncertain hand-offs, never its own, never live leases", async (t) => {
      const db = await open(t);
      if (!db) return;
      const past = new Date(Date.now() - MINUTE);
      const expired = await seed(db, { status: "sending", attempts: 1, leaseOwner: "dead-relay", leaseExpiresAt: past });
      const own = await seed(db, { status: "sending", attempts: 1, leaseOwner: "relay-a", leaseExpiresAt: past });
      const live = await seed(db, { status: "sending", attempts: 1, leaseOwner: "relay-b", leaseExpiresAt: new Date(Date.now() + 10 * MINUTE) });
      const rescued = await step(db, "rescue", () => db.rescue("relay-a", "resend", 10));
      assert.deepEqual(rescued.map((r) => [r.id, r.status, r.previousOwner]), [[expired, "pending", "dead-relay"]]);
      const m = await mail(db, expired);
      assert.deepEqual([m.status, m.uncertainHandoffs, m.leaseOwner, m.leaseExpiresAt, m.attempts], ["pending", 1, null, null, 1]);
      assert.match(m.lastError ?? "", /lease/);
      assert.deepEqual(await attemptsOf(db, expired), [{ outcome: "lease_expired", error_code: "ELEASE", relay: "dead-relay" }]);
      assert.equal((await mail(db, own)).status, "sending");
      assert.equal((await mail(db, live)).status, "sending");
      // Rescued rows are due at once.
      assert.deepEqual((await step(db, "claim", () => db.claim("relay-a", 10, 60_000))).map((c) => c.id), [expired]);
    });

    it("rescue also moves the relay's own expired rows that it no longer holds (orphans), never the ones it holds", async (t) => {
      const db = await open(t);
      if (!db) return;
      const past = new Date(Date.now() - MINUTE);
      const held = await seed(db, { status: "sending", attempts: 1, leaseOwner: "relay-a", leaseExpiresAt: past });
      const orphan = await seed(db, { status: "sending", attempts: 1, leaseOwner: "relay-a", leaseExpiresAt: past });
      const other = await seed(db, { status: "sending", attempts: 1, leaseOwner: "dead-relay", leaseExpiresAt: past });
      const rescued = await step(db, "rescue", () => db.rescue("relay-a", "resend", 10, [held]));
      assert.deepEqual(rescued.map((r) => r.id).sort(), [orphan, other].sort());
      assert.deepEqual(rescued.find((r) => r.id === orphan)?.previousOwner, "relay-a");
      assert.equal((await mail(db, held)).status, "sending");
      const o = await mail(db, orphan);
      assert.deepEqual([o.status, o.uncertainHandoffs, o.leaseOwner], ["pending", 1, null]);
      // Holding nothing: every own expired row is an orphan.
      const another = await seed(db, { status: "sending", attempts: 1, leaseOwner: "relay-a", leaseExpiresAt: past });
      assert.deepEqual((await step(db, "rescue", () => db.rescue("relay-a", "resend", 10, []))).map((r) => r.id).sort(), [another, held].sort());
    });

    it("rescue under the policy hold moves expired rows to held, and to dead when their attempts are used up", async (t) => {
      const db = await open(t);
      if (!db) return;
      const past = new Date(Date.now() - MINUTE);
      const held = await seed(db, { status: "sending", attempts: 1, maxAttempts: 5, leaseOwner: "x", leaseExpiresAt: past });
      const used = await seed(db, { status: "sending", attempts: 5, maxAttempts: 5, leaseOwner: "x", leaseExpiresAt: new Date(past.getTime() - 1000) });
      const r = await step(db, "rescue", () => db.rescue("relay-a", "hold", 10));
      assert.deepEqual(new Map(r.map((x) => [x.id, x.status])), new Map([[held, "held"], [used, "dead"]]));
      assert.equal((await mail(db, used)).uncertain, true);
      // Under "resend" too, used-up attempts end in dead.
      const used2 = await seed(db, { status: "sending", attempts: 3, maxAttempts: 3, leaseOwner: "x", leaseExpiresAt: past });
      assert.deepEqual((await step(db, "rescue", () => db.rescue("relay-a", "resend", 10))).map((x) => [x.id, x.status]), [[used2, "dead"]]);
    });

    it("rescue under the policy verify holds expired rows as hold does; resolveUncertain then settles them from the MTA's record, only while they are held", async (t) => {
      const db = await open(t);
      if (!db) return;
      const past = new Date(Date.now() - MINUTE);
      const received = await seed(db, { status: "sending", attempts: 1, leaseOwner: "x", leaseExpiresAt: past, envelopeTo: ["ann@example.test", "bob@example.test"] });
      const absent = await seed(db, { status: "sending", attempts: 2, leaseOwner: "x", leaseExpiresAt: past });
      const r = await step(db, "rescue", () => db.rescue("relay-a", "verify", 10));
      assert.deepEqual(new Map(r.map((x) => [x.id, x.status])), new Map([[received, "held"], [absent, "held"]]));
      const at = new Date(Date.now() - 30_000);
      assert.equal(await step(db, "resolveUncertain", () => db.resolveUncertain(received, "relay-a", { kind: "received", queueId: "4XyZ1", at, response: "queued as 4XyZ1 (Postfix log)" })), true);
      const m = await mail(db, received);
      assert.deepEqual([m.status, m.mtaQueueId, m.accepted, m.sentAt?.getTime(), m.uncertain], ["sent", "4XyZ1", ["ann@example.test", "bob@example.test"], at.getTime(), true]);
      assert.equal(await step(db, "resolveUncertain", () => db.resolveUncertain(absent, "relay-a", { kind: "absent", response: "not in the MTA's log" })), true);
      const a = await mail(db, absent);
      assert.equal(a.status, "pending");
      assert.ok(a.nextAttemptAt.getTime() <= Date.now(), "due at once");
      const log = await db.listAttempts(received);
      assert.deepEqual(log.map((x) => [x.outcome, x.relay, x.queueId]), [["lease_expired", "x", null], ["verified", "relay-a", "4XyZ1"]]);
      assert.deepEqual((await db.listAttempts(absent)).map((x) => [x.outcome, x.response]), [["lease_expired", null], ["verified", "not in the MTA's log"]]);
      // No longer held (sent, pending): nothing changes, nothing is logged.
      assert.equal(await step(db, "resolveUncertain", () => db.resolveUncertain(received, "relay-a", { kind: "absent", response: "late" })), false);
      assert.equal(await step(db, "resolveUncertain", () => db.resolveUncertain(absent, "relay-a", { kind: "received", queueId: "Q", at, response: "late" })), false);
      assert.equal((await db.listAttempts(absent)).length, 2);
      assert.equal(await db.resolveUncertain(newId(), "relay-a", { kind: "absent", response: "no such row" }), false);
    });

    it("rescue takes at most `limit` rows, the longest expired first", async (t) => {
      const db = await open(t);
      if (!db) return;
      const now = Date.now();
      const ids = [];
      for (let i = 0; i < 5; i++) ids.push(await seed(db, { status: "sending", attempts: 1, leaseOwner: "x", leaseExpiresAt: new Date(now - (i + 1) * MINUTE) }));
      const r = await step(db, "rescue", () => db.rescue("relay-a", "resend", 2));
      assert.deepEqual(r.map((x) => x.id).sort(), [ids[4], ids[3]].sort());
    });

    it("completion records every outcome kind with its attempt row", async (t) => {
      const db = await open(t);
      if (!db) return;
      const ids = [];
      for (let i = 0; i < 6; i++) ids.push(await seed(db, { envelopeTo: ["ann@example.test", "bob@example.test"] }));
      await step(db, "claim", () => db.claim("relay-a", 10, 60_000));
      const [sent, partlyRefused, partial, retried, dropped, released] = ids as [string, string, string, string, string, string];
      const changed = await step(db, "complete", () =>
        db.complete("relay-a", "relay-a", [
          accepted(sent),
          accepted(partlyRefused, [{ recipient: "bob@example.test", response: "550 5.1.1 unknown" }]),
          {
            ...attempt(partial),
            kind: "partial",
            response: "250 2.0.0 Ok: queued as P1",
            queueId: "P1",
            accepted: ["ann@example.test"],
            rejected: [],
            deferred: [{ recipient: "bob@example.test", response: "451 4.7.1 later" }],
            delayMs: 10 * MINUTE,
            error: "bob@example.test deferred",
          },
          retry(retried),
          dead(dropped),
          { kind: "release", id: released },
        ]),
      );
      assert.equal(changed, 6);
      const s = await mail(db, sent);
      assert.deepEqual([s.status, s.mtaQueueId, s.accepted, s.partlyRefused, s.leaseOwner], ["sent", "ABC123", ["ann@example.test"], false, null]);
      assert.ok(s.sentAt instanceof Date);
      const pr = await mail(db, partlyRefused);
      assert.deepEqual([pr.status, pr.partlyRefused, pr.rejected], ["sent", true, [{ recipient: "bob@example.test", response: "550 5.1.1 unknown" }]]);
      const p = await mail(db, partial);
      assert.deepEqual([p.status, p.envelopeTo, p.accepted, p.mtaQueueId, p.lastError], ["pending", ["bob@example.test"], ["ann@example.test"], "P1", "bob@example.test deferred"]);
      assert.ok(p.nextAttemptAt.getTime() > Date.now() + 5 * MINUTE);
      const r = await mail(db, retried);
      assert.deepEqual([r.status, r.lastError, r.attempts, r.mtaResponse], ["pending", "421 try later", 1, "421 4.3.0 try later"]);
      assert.ok(r.nextAttemptAt.getTime() > Date.now() + 5 * MINUTE);
      const d = await mail(db, dropped);
      assert.deepEqual([d.status, d.lastError, d.rejected?.length], ["dead", "550 no such user", 1]);
      const rel = await mail(db, released);
      assert.deepEqual([rel.status, rel.attempts, rel.leaseOwner], ["pending", 0, null], "a release does not count the attempt");
      const outcomes = await Promise.all(ids.map(async (id) => (await attemptsOf(db, id)).map((a) => a.outcome)));
      assert.deepEqual(outcomes, [["accepted"], ["partial"], ["partial"], ["transient"], ["permanent"], []]);
    });

    it("a batch where every mail was accepted by every recipient is recorded the same way", async (t) => {
      const db = await open(t);
      if (!db) return;
      const ids = [await seed(db), await seed(db), await seed(db)];
      await step(db, "claim", () => db.claim("relay-a", 10, 60_000));
      assert.equal(await step(db, "complete", () => db.complete("relay-a", "relay-a", ids.map((id) => accepted(id)))), 3);
      for (const id of ids) {
        const m = await mail(db, id);
        assert.deepEqual([m.status, m.mtaQueueId, m.mtaResponse, m.accepted], ["sent", "ABC123", "250 2.0.0 Ok: queued as ABC123", ["ann@example.test"]]);
        assert.deepEqual(await attemptsOf(db, id), [{ outcome: "accepted", error_code: null, relay: "relay-a" }]);
      }
      assert.equal(await step(db, "complete", () => db.complete("relay-a", "relay-a", [])), 0);
    });

    it("after its lease was lost, a relay's outcomes are ignored, except the MTA's acceptance, which is recorded even on a rescued row", async (t) => {
      const db = await open(t);
      if (!db) return;
      const a = await seed(db);
      const b = await seed(db);
      const c = await seed(db);
      await step(db, "claim", () => db.claim("relay-a", 10, 1));
      await sleep(20);
      await step(db, "rescue", () => db.rescue("relay-b", "hold", 1)); // one of them to held
      await step(db, "rescue", () => db.rescue("relay-b", "resend", 10)); // the others to pending
      const before = await statusOf(db);
      assert.deepEqual([...before.values()].sort(), ["held", "pending", "pending"]);
      assert.equal(await step(db, "complete", () => db.complete("relay-a", "relay-a", [retry(b), dead(c), { kind: "release", id: c }])), 0);
      assert.deepEqual(await statusOf(db), before, "nothing changed");
      const heldId = [...before].find(([, s]) => s === "held")![0];
      const pendingId = [...before].find(([, s]) => s === "pending")![0];
      assert.equal(await step(db, "complete", () => db.complete("relay-a", "relay-a", [accepted(heldId), accepted(pendingId)])), 2);
      assert.equal((await mail(db, heldId)).status, "sent");
      assert.equal((await mail(db, pendingId)).status, "sent");
      // A row another relay claimed meanwhile is not touched by the first relay's stale outcome.
      const rest = [a, b, c].filter((id) => id !== heldId && id !== pendingId);
      assert.deepEqual(rest.length, 1);
      assert.deepEqual((await step(db, "claim", () => db.claim("relay-b", 10, 60_000))).map((m) => m.id), rest);
      assert.equal(await step(db, "complete", () => db.complete("relay-a", "relay-a", [retry(rest[0]!)])), 0);
      assert.deepEqual([(await mail(db, rest[0]!)).status, (await mail(db, rest[0]!)).leaseOwner], ["sending", "relay-b"]);
    });

    it("two claimers at once never get the same row", async (t) => {
      const db = await open(t);
      if (!db) return;
      const second = await reopen(db);
      const n = 120;
      for (let i = 0; i < n; i++) await seed(db);
      const grab = async (store: Store, owner: string) => {
        const got: string[] = [];
        for (;;) {
          const batch = await store.claim(owner, 7, 60_000);
          if (batch.length === 0) return got;
          got.push(...batch.map((m) => m.id));
          await new Promise<void>((resolve) => setImmediate(resolve));
        }
      };
      const got = await step(db, "claim", () => Promise.all([grab(db, "relay-x"), grab(second, "relay-y"), grab(db, "relay-z")])).finally(() => second.close());
      const all = got.flat();
      assert.equal(new Set(all).size, all.length, "no row claimed twice");
      assert.equal(all.length, n);
    });

    it("replay, cancel and purge take exactly the rows their filters name, and follow the state table", async (t) => {
      const db = await open(t);
      if (!db) return;
      const old = new Date(Date.now() - 30 * 24 * 60 * MINUTE);
      const deadAnn = await seed(db, { status: "dead", envelopeTo: ["Ann@Example.test"], attempts: 5 });
      const deadBob = await seed(db, { status: "dead", envelopeTo: ["bob@example.test"], uncertainHandoffs: 1 });
      const heldOld = await seed(db, { status: "held", envelopeTo: ["carol@example.test"], createdAt: old });
      const sent = await seed(db, { status: "sent", updatedAt: old });
      const pending = await seed(db);
      const sending = await seed(db, { status: "sending", leaseOwner: "r", leaseExpiresAt: new Date(Date.now() + MINUTE) });

      // recipient, case-insensitive
      let r = await step(db, "replay", () => replayMails(db, { recipient: "ann@example.TEST" }));
      assert.deepEqual(r.replayed.map((x) => x.id), [deadAnn]);
      assert.deepEqual([(await mail(db, deadAnn)).attempts, (await mail(db, deadAnn)).status], [0, "pending"]);
      // uncertain
      r = await step(db, "replay", () => replayMails(db, { uncertain: true, dryRun: true }));
      assert.deepEqual(r.replayed.map((x) => x.id), [deadBob]);
      // since / until on created_at
      r = await step(db, "replay", () => replayMails(db, { until: new Date(Date.now() - 24 * 60 * MINUTE) }));
      assert.deepEqual(r.replayed.map((x) => x.id), [heldOld]);
      // by id, sent needs resendSent; sending is never replayed
      r = await step(db, "replay", () => replayMails(db, { ids: [sent, sending], resendSent: true }));
      assert.deepEqual(r.replayed.map((x) => x.id), [sent]);
      assert.deepEqual(r.skipped.map((x) => x.id), [sending]);

      const c = await step(db, "cancel", () => cancelMails(db, { ids: [pending, sending, deadBob, `<${pending}@example.test>`] }));
      assert.deepEqual(c.cancelled.map((x) => x.id), [pending]);
      assert.deepEqual(c.notCancellable.map((x) => x.id).sort(), [deadBob, sending].sort());
      const again = await step(db, "cancel", () => cancelMails(db, { ids: [pending] }));
      assert.deepEqual([again.cancelled.length, again.alreadyCancelled.map((x) => x.id)], [0, [pending]]);

      // purge: final statuses older than the cutoff only, with their attempt logs
      const oldSent = await seed(db, { status: "sent", updatedAt: old });
      const newSent = await seed(db, { status: "sent" });
      const dry = await step(db, "purge", () => purgeMails(db, { status: "sent", olderThanMs: 7 * 24 * 60 * MINUTE, dryRun: true }));
      assert.equal(dry.deleted, 1);
      const p = await step(db, "purge", () => purgeMails(db, { status: ["sent", "cancelled"], all: true, batchSize: 1 }));
      assert.deepEqual(p.byStatus, { sent: 2, dead: 0, cancelled: 1 });
      const left = await statusOf(db);
      assert.ok(!left.has(oldSent) && !left.has(newSent) && !left.has(pending));
      assert.ok(left.has(deadBob) && left.has(sending));
      assert.deepEqual(await query(db, `SELECT * FROM mail_outbox_attempt WHERE email_id NOT IN (SELECT id FROM mail_outbox)`), [], "attempt logs go with their mails");
    });

    it("idempotency keys and Message-IDs are unique, and a duplicate is classified as a conflict", async (t) => {
      const db = await open(t);
      if (!db) return;
      const id = await seed(db, { idempotencyKey: "order-42" });
      await seed(db, { idempotencyKey: null });
      await seed(db, { idempotencyKey: null });
      const dupKey = await seed(db, { idempotencyKey: "order-42" }).then(
        () => null,
        (err: unknown) => err,
      );
      assert.ok(dupKey, "a second mail with the same idempotency key is refused");
      assert.equal(db.classifyError(dupKey), "conflict");
      const dupMessageId = await seed(db, { messageId: `<${id}@example.test>` }).then(
        () => null,
        (err: unknown) => err,
      );
      assert.equal(db.classifyError(dupMessageId), "conflict");
      assert.equal((await mail(db, id)).idempotencyKey, "order-42");
      assert.equal(db.classifyError(new Error("something else")), "other");
    });

    it("times: rows read back to the millisecond, not-yet-due mail waits, counts are computed for the time asked", async (t) => {
      const db = await open(t);
      if (!db) return;
      const created = new Date(Date.now() - 90 * MINUTE + 123);
      const later = new Date(Date.now() + 30 * MINUTE + 456);
      const due = await seed(db, { createdAt: created, nextAttemptAt: created });
      const notYet = await seed(db, { createdAt: created, nextAttemptAt: later });
      const m = await mail(db, notYet);
      assert.equal(m.createdAt.getTime(), created.getTime());
      assert.equal(m.nextAttemptAt.getTime(), later.getTime());
      const now = new Date();
      const counts = await step(db, "read", () => db.statusCounts(now));
      const pending = counts.find((c) => c.status === "pending")!;
      assert.deepEqual([pending.total, pending.due], [2, 1]);
      assert.equal(pending.oldestDueCreatedAt?.getTime(), created.getTime());
      assert.equal(pending.nextAttemptAt?.getTime(), later.getTime());
      const future = (await db.statusCounts(new Date(later.getTime() + 1))).find((c) => c.status === "pending")!;
      assert.equal(future.due, 2);
      assert.deepEqual((await step(db, "claim", () => db.claim("r", 10, 60_000))).map((c) => c.id), [due]);
      const numeric = await db.countNumericTimes();
      assert.ok(numeric === null || numeric === 0);
      if (db.dialect === "sqlite") {
        db.db.prepare("UPDATE mail_outbox SET next_attempt_at = ? WHERE id = ?").run(Date.now(), notYet);
        assert.equal(await db.countNumericTimes(), 1);
        assert.equal((await mail(db, notYet)).nextAttemptAt instanceof Date, true);
      }
    });

    it("list and show return one record type with the attempt log, oldest first", async (t) => {
      const db = await open(t);
      if (!db) return;
      const a = await seed(db, { createdAt: new Date(Date.now() - 2 * MINUTE) });
      const b = await seed(db);
      await step(db, "claim", () => db.claim("relay-a", 10, 60_000));
      await step(db, "complete", () => db.complete("relay-a", "relay-a", [retry(a, 0), accepted(b)]));
      const list = await step(db, "read", () => db.listMails({ byIds: false, ids: [], messageIds: [], statuses: null, recipient: null, since: null, until: null, uncertainOnly: false, fate: null }, 10));
      assert.deepEqual(list.map((m) => m.id), [b, a], "newest first");
      const byMessageId = await db.findMail({ messageId: `<${a}@example.test>` }, false);
      assert.equal(byMessageId?.mail.id, a);
      assert.equal(byMessageId?.raw, null);
      assert.equal(await db.findMail({ id: newId() }, false), undefined);
      const log = await db.listAttempts(a);
      assert.deepEqual(log.map((x) => [x.outcome, x.relay, x.responseCode, x.errorCode]), [["transient", "relay-a", 421, "EENVELOPE"]]);
      assert.ok(log[0]!.startedAt instanceof Date);
      assert.equal(await db.largestPendingSize(), (await mail(db, a)).size);
    });

    it("a missing outbox table is reported by inspectSchema and classified as a schema error", async (t) => {
      const db = await open(t);
      if (!db) return;
      assert.deepEqual(await db.inspectSchema(), []);
      await db.ping();
      if (db.dialect === "postgresql") await db.pool.query("DROP TABLE mail_outbox_attempt");
      else if (db.dialect === "mysql") await db.pool.query("DROP TABLE mail_outbox_attempt");
      else sqliteOf(db).db.exec("DROP TABLE mail_outbox_attempt");
      const problems = await db.inspectSchema();
      assert.ok(problems.some((p) => p.kind === "table" && p.table === "mail_outbox_attempt" && p.blocksRelay));
      const err = await db.listAttempts(newId()).then(
        () => null,
        (e: unknown) => e,
      );
      assert.equal(db.classifyError(err), "schema");
    });

    it("listen wakes on the commit of new mail where the database has notifications, and says null where it has none", async (t) => {
      const db = await open(t);
      if (!db) return;
      let wakes = 0;
      let lost: unknown = null;
      const listener = await db.listen(
        () => wakes++,
        (err) => (lost = err),
      );
      if (listener === null) {
        assert.notEqual(db.dialect, "postgresql", "PostgreSQL has LISTEN; SQLite and MySQL have none");
        return;
      }
      try {
        await seed(db);
        for (let i = 0; i < 100 && wakes === 0; i++) await sleep(20);
        assert.ok(wakes > 0, "woken by the insert");
      } finally {
        await listener.close();
      }
      assert.equal(lost, null, "closing is not a loss");
    });
  });
}

/** A second store on the same database (another connection or pool). */
async function reopen(db: Db): Promise<Store> {
  if (db.dialect === "sqlite") return openDatabase(`file:${db.filename}`);
  if (db.dialect === "mysql") return openDatabase(mysqlUrl(db.database));
  const u = new URL(String((pgOf(db).pool.options as { connectionString?: string }).connectionString));
  u.searchParams.set("schema", pgOf(db).schema);
  return openDatabase(u.toString());
}

for (const store of conformanceStores) storeConformance(store.name, store.open);

describe("the state table", () => {
  it("every transition of TRANSITIONS is made by some store operation above (the table lists nothing the SQL cannot do)", (t) => {
    // Filled by step() in the suites above, which node:test runs first, in order.
    if (seen.size === 0) return t.skip("the conformance suites did not run (filtered)");
    const never = (Object.keys(TRANSITIONS) as Transition[]).filter((x) => !seen.has(x));
    assert.deepEqual(never, [], "transitions in src/states.ts that no store operation made");
  });
});

describe("store conformance: SQLite lock contention", () => {
  it("a claim while another connection holds the write lock fails with an error the store classifies as busy (the relay retries it soon)", async (t) => {
    const fx = await freshSqlite(t);
    const { default: Database } = await import("better-sqlite3");
    const holder = new Database(fx.file);
    const db = await openDatabase(fx.url, { busyTimeoutMs: 0 });
    t.after(async () => {
      await db.close();
      if (holder.inTransaction) holder.exec("ROLLBACK");
      holder.close();
    });
    holder.exec("BEGIN IMMEDIATE");
    const err = await db.claim("conformance-busy", 10, 60_000).then(
      () => null,
      (e: unknown) => e,
    );
    assert.ok(err, "the claim fails while the write lock is held");
    assert.match(String((err as { code?: unknown }).code), /^SQLITE_(BUSY|LOCKED)/);
    assert.equal(db.classifyError(err), "busy");
    holder.exec("ROLLBACK");
    assert.deepEqual(await db.claim("conformance-busy", 10, 60_000), [], "free again once the lock is released");
  });
});
