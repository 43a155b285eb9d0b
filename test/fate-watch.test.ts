/**
 * watchFates(): an application in another process follows the delivery events the outbox records,
 * resumes from the last one it handled, and stops on an AbortSignal. Real SQLite files and the real
 * PostgreSQL; events are stored with `recordDeliveryEvents`, as `follow-log` and `ingest` store them.
 */
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import type { TestContext } from "node:test";
import { randomUUID } from "node:crypto";
import { openDatabase, type Db } from "../src/db.js";
import { mailOutbox } from "../src/extension.js";
import { OptionsError } from "../src/errors.js";
import { watchFates, type FateEvent } from "../src/fate/watch.js";
import type { DeliveryEventInput } from "../src/store.js";
import { freshPostgres, freshSqlite, prismaClientFor } from "./support/db.js";
import { needPostgres, PG_ADMIN_URL } from "./support/services.js";
import pg from "pg";

type Dialect = "sqlite" | "postgresql";

async function fixture(t: TestContext, dialect: Dialect): Promise<{ db: Db; url: string; schema: string; mail: { id: string; messageId: string } } | null> {
  if (dialect === "postgresql" && !(await needPostgres(t))) return null;
  const fx = dialect === "sqlite" ? await freshSqlite(t) : await freshPostgres(t);
  const prisma = (await prismaClientFor(fx.url, t)).$extends(mailOutbox({ defaultFrom: "shop@example.com" }));
  const mail = await prisma.outboxEmail.enqueue({ to: ["ann@example.com", "bob@example.com"], subject: "Welcome", text: "x" });
  const db = await openDatabase(fx.url);
  t.after(() => db.close());
  return { db, url: fx.url, schema: "schema" in fx ? fx.schema : "", mail };
}

function event(emailId: string, recipient: string, kind: DeliveryEventInput["event"], extra: Partial<DeliveryEventInput> = {}): DeliveryEventInput {
  return {
    emailId,
    recipient,
    event: kind,
    at: new Date(),
    source: "log",
    queueId: "4BCD1234",
    dsnStatus: kind === "bounced" ? "5.1.1" : kind === "delivered" ? "2.0.0" : null,
    remoteMta: "mx.example.com[192.0.2.1]:25",
    reply: kind === "bounced" ? "550 5.1.1 <bob@example.com>: Recipient address rejected" : null,
    eventKey: `test:${randomUUID()}`,
    ...extra,
  };
}

/** The next `n` events of an iterator, or fail after `ms`. */
async function take(it: AsyncIterator<FateEvent>, n: number, ms = 5000): Promise<FateEvent[]> {
  const out: FateEvent[] = [];
  const deadline = Date.now() + ms;
  while (out.length < n) {
    const next = await Promise.race([it.next(), new Promise<"timeout">((r) => setTimeout(() => r("timeout"), Math.max(0, deadline - Date.now())))]);
    if (next === "timeout") assert.fail(`only ${out.length} of ${n} events within ${ms} ms`);
    if (next.done) break;
    out.push(next.value);
  }
  return out;
}

for (const dialect of ["sqlite", "postgresql"] as const) {
  describe(`watchFates on ${dialect}`, () => {
    test("yields the stored events with their mail's Message-ID, then new ones as they are recorded, each once", async (t) => {
      const fx = await fixture(t, dialect);
      if (!fx) return;
      const { db, mail } = fx;
      await db.recordDeliveryEvents([event(mail.id, "", "queued"), event(mail.id, "ann@example.com", "delivered")]);
      const stop = new AbortController();
      t.after(() => stop.abort());
      const it = watchFates({ db, pollIntervalMs: 50, batchSize: 1, settleMs: 0, signal: stop.signal })[Symbol.asyncIterator]();
      const first = await take(it, 2);
      // One call stores both in one transaction: same recordedAt, so their order is by id.
      assert.deepEqual(first.map((e) => `${e.event} ${e.recipient}`).sort(), ["delivered ann@example.com", "queued "]);
      assert.ok(first.every((e) => e.messageId === mail.messageId && e.emailId === mail.id));

      const started = Date.now();
      const pending = take(it, 1);
      await new Promise((r) => setTimeout(r, 120));
      await db.recordDeliveryEvents([event(mail.id, "bob@example.com", "bounced")]);
      const [bounce] = await pending;
      assert.equal(bounce?.event, "bounced");
      assert.equal(bounce?.dsnStatus, "5.1.1");
      assert.match(bounce?.reply ?? "", /Recipient address rejected/);
      assert.ok(Date.now() - started < 2000, "a new event arrives within a few poll intervals");
      // The same event key again is not stored again, so it is not yielded again.
      await db.recordDeliveryEvents([{ ...event(mail.id, "bob@example.com", "bounced"), eventKey: "dup-key" }]);
      await db.recordDeliveryEvents([{ ...event(mail.id, "bob@example.com", "bounced"), eventKey: "dup-key" }]);
      assert.equal((await take(it, 1))[0]?.eventKey, "dup-key");
      stop.abort();
      assert.deepEqual(await it.next(), { done: true, value: undefined }, "abort ends the iteration without an error");
    });

    test("resumes after the last event handled (its recordedAt and id), or from a time", async (t) => {
      const fx = await fixture(t, dialect);
      if (!fx) return;
      const { db, mail } = fx;
      await db.recordDeliveryEvents([event(mail.id, "ann@example.com", "deferred"), event(mail.id, "ann@example.com", "delivered")]);
      const stop = new AbortController();
      t.after(() => stop.abort());
      const all = await take(watchFates({ db, pollIntervalMs: 20, settleMs: 0, signal: stop.signal })[Symbol.asyncIterator](), 2);
      const last = all[1]!;
      await new Promise((r) => setTimeout(r, 20));
      const mark = new Date();
      await new Promise((r) => setTimeout(r, 20));
      await db.recordDeliveryEvents([event(mail.id, "bob@example.com", "expired")]);

      const resumed = await take(watchFates({ db, after: { recordedAt: last.recordedAt, id: last.id }, pollIntervalMs: 20, settleMs: 0, signal: stop.signal })[Symbol.asyncIterator](), 1);
      assert.deepEqual(resumed.map((e) => e.event), ["expired"]);
      const fromTime = await take(watchFates({ db, after: mark, pollIntervalMs: 20, settleMs: 0, signal: stop.signal })[Symbol.asyncIterator](), 1);
      assert.deepEqual(fromTime.map((e) => e.event), ["expired"]);
    });

    test("with a database URL it opens its own connection and closes it when the loop is left", async (t) => {
      const fx = await fixture(t, dialect);
      if (!fx) return;
      await fx.db.recordDeliveryEvents([event(fx.mail.id, "ann@example.com", "delivered"), event(fx.mail.id, "bob@example.com", "delivered")]);
      const seen: string[] = [];
      for await (const e of watchFates({ databaseUrl: fx.url, pollIntervalMs: 20, settleMs: 0 })) {
        seen.push(e.recipient);
        if (seen.length === 2) break;
      }
      assert.deepEqual(seen.sort(), ["ann@example.com", "bob@example.com"]);
    });

    test("an event is yielded once it is settleMs old, so a writer that commits late is not skipped", async (t) => {
      const fx = await fixture(t, dialect);
      if (!fx) return;
      const { db, mail } = fx;
      const stop = new AbortController();
      t.after(() => stop.abort());
      const it = watchFates({ db, pollIntervalMs: 20, settleMs: 400, signal: stop.signal })[Symbol.asyncIterator]();
      const recorded = Date.now();
      await db.recordDeliveryEvents([event(mail.id, "ann@example.com", "delivered")]);
      const [e] = await take(it, 1);
      const waited = Date.now() - recorded;
      assert.equal(e?.recipient, "ann@example.com");
      assert.ok(waited >= 350 && waited < 2000, `yielded after ${waited} ms`);
      if (dialect !== "postgresql") return;

      // A slow writer: its transaction starts (recorded_at = now()) before a quick one, and commits after it.
      const slow = new pg.Client({ connectionString: PG_ADMIN_URL });
      await slow.connect();
      // The watch is polling all along (a generator reads only while someone waits on it).
      const next = take(it, 2, 3000);
      try {
        await slow.query(`SET search_path TO "${fx.schema}"`);
        await slow.query("BEGIN");
        await slow.query(
          `INSERT INTO mail_outbox_delivery (id, email_id, recipient, event, at, source, event_key) VALUES ($1, $2, 'bob@example.com', 'bounced', now(), 'dsn', $3)`,
          [randomUUID(), mail.id, `slow:${randomUUID()}`],
        );
        await new Promise((r) => setTimeout(r, 50));
        await db.recordDeliveryEvents([event(mail.id, "carl@example.com", "delivered")]);
        await new Promise((r) => setTimeout(r, 100));
        await slow.query("COMMIT");
      } finally {
        await slow.end();
      }
      assert.deepEqual((await next).map((x) => x.recipient), ["bob@example.com", "carl@example.com"], "the late commit is yielded, in recorded order");
    });
  });
}

describe("watchFates options", () => {
  test("bad options are refused at once, before any iteration", async (t) => {
    const fx = await freshSqlite(t);
    const db = await openDatabase(fx.url);
    t.after(() => db.close());
    for (const bad of [{}, { db, databaseUrl: fx.url }, { db, pollIntervalMs: 0 }, { db, batchSize: 0 }, { db, batchSize: 10_001 }, { db, settleMs: -1 }, { db, after: new Date(Number.NaN) }, { db, after: { id: "x" } }]) {
      assert.throws(() => watchFates(bad as never), OptionsError, JSON.stringify(Object.keys(bad)));
    }
    const aborted = new AbortController();
    aborted.abort();
    const none: FateEvent[] = [];
    for await (const e of watchFates({ db, signal: aborted.signal })) none.push(e);
    assert.deepEqual(none, []);
  });
});
