/**
 * Compose before the transaction: `prisma.outboxEmail.compose(mail)` / `composeOutboxMail(mail, options)`
 * make a `ComposedOutboxMail`, and `tx.outboxEmail.enqueue(composed)` / `enqueueMany([...])` only insert
 * it. The row is the one `enqueue(input)` writes (same bytes but for the Message-ID and Date), bad input
 * fails at compose with enqueue's errors, and the relay hands the exact bytes to the MTA. On real SQLite
 * files and the real PostgreSQL server.
 */
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import {
  mailOutbox,
  composeOutboxMail,
  ComposedOutboxMail,
  ComposedMailAlreadyEnqueuedError,
  createRelay,
  DuplicateIdempotencyKeyError,
  InvalidMailError,
  MailTooLargeError,
} from "../src/index.js";
import { expectEnqueued } from "../src/testing.js";
import { freshSqlite, freshPostgres, prismaClientFor } from "./support/db.js";
import { needPostgres } from "./support/services.js";
import { startTestSmtp } from "../testkit/smtp.js";
import { suppress } from "../src/admin.js";
import { openDatabase } from "../src/db.js";

/** The raw message with the lines that differ between two composes of one input (Message-ID, Date) blanked. */
function withoutIdAndDate(raw: Uint8Array): string {
  return Buffer.from(raw).toString("latin1").replace(/^Message-ID: .*$/m, "Message-ID: X").replace(/^Date: .*$/m, "Date: X");
}

/** A row's fields that must be the same whether composed before or in the transaction. */
function comparable(row: Record<string, unknown>): Record<string, unknown> {
  const { id: _id, messageId: _m, raw, sendAt: _s, nextAttemptAt: _n, createdAt: _c, updatedAt: _u, ...rest } = row;
  return { ...rest, raw: withoutIdAndDate(raw as Uint8Array) };
}

const MAIL = {
  to: ["Ann <ann@example.com>", "bob@example.com"],
  cc: "carl@example.com",
  bcc: "dora@example.com",
  subject: "Your order Ünïcode",
  text: "Shipped.\nThanks.",
  headers: { "X-Order": "42" },
  metadata: { order: 42, tags: ["a", "b"] },
  priority: 3,
  maxAttempts: 7,
};

describe("composeOutboxMail without a database", () => {
  it("fails at compose with the errors enqueue gives, and makes an immutable value", async () => {
    const err = await composeOutboxMail({ to: "bob@", subject: "x", text: "x" }, { defaultFrom: "shop@example.com" }).catch((e: unknown) => e);
    assert.ok(err instanceof InvalidMailError, String(err));
    assert.match(err.message, /to: "bob@" is not a valid email address/);
    const big = await composeOutboxMail({ to: "a@example.com", text: "x".repeat(3000) }, { defaultFrom: "shop@example.com", maxMessageBytes: 1000 }).catch((e: unknown) => e);
    assert.ok(big instanceof MailTooLargeError, String(big));
    await assert.rejects(composeOutboxMail({ to: "a@example.com", text: "x" }, { defaultFrom: "nope" }), { name: "OptionsError" });
    await assert.rejects(composeOutboxMail({ to: "a@example.com", text: "x" }, { defaultFrom: "s@example.com", now: new Date(NaN) }), { name: "OptionsError" });

    const now = new Date("2031-05-06T07:08:09.000Z");
    const c = await composeOutboxMail({ to: "a@example.com", text: "x" }, { defaultFrom: "shop@example.com", now });
    assert.ok(c instanceof ComposedOutboxMail);
    assert.ok(Object.isFrozen(c));
    assert.equal(c.composedAt.getTime(), now.getTime());
    assert.equal(c.sendAt.getTime(), now.getTime(), "sendAt defaults to the compose time");
    assert.match(c.raw.toString("latin1"), /^Date: Tue, 06 May 2031 07:08:09 \+0000$/m);
    c.raw.fill(0); // a copy: the composed bytes stay as they were
    assert.match(c.raw.toString("latin1"), /^Message-ID: </m);
    c.sendAt.setTime(0);
    assert.equal(c.sendAt.getTime(), now.getTime());
    assert.throws(() => new (ComposedOutboxMail as any)(Symbol("x"), {}, now), /composeOutboxMail/);
  });
});

for (const dialect of ["sqlite", "postgresql"] as const) {
  describe(`enqueue of a mail composed before the transaction on ${dialect}`, () => {
    let fx: { url: string; cleanup(): Promise<void> } | null = null;
    let prisma: any;

    before(async (t) => {
      if (dialect === "postgresql" && !(await needPostgres(t as any))) return;
      fx = dialect === "sqlite" ? await freshSqlite() : await freshPostgres();
      prisma = (await prismaClientFor(fx.url)).$extends(mailOutbox({ defaultFrom: "shop@example.com" }));
    });
    after(async () => {
      await prisma?.$disconnect();
      await fx?.cleanup();
    });

    it("writes the row enqueue(input) writes for the same input: same bytes but for Message-ID and Date, same envelope and fields", async (t) => {
      if (!fx) return t.skip("no database");
      const composed = await prisma.outboxEmail.compose(MAIL);
      const [fromInput, fromComposed] = await prisma.$transaction(async (tx: any) => {
        const a = await tx.outboxEmail.enqueue(MAIL);
        const b = await tx.outboxEmail.enqueue(composed);
        await expectEnqueued(tx, { to: "dora@example.com", count: 2 }); // the testing module sees both
        return [a, b];
      });
      assert.deepEqual(fromComposed, { id: composed.id, messageId: composed.messageId, suppressed: [] });
      const rowA = await prisma.outboxEmail.findUnique({ where: { id: fromInput.id } });
      const rowB = await prisma.outboxEmail.findUnique({ where: { id: fromComposed.id } });
      assert.deepEqual(comparable(rowB), comparable(rowA));
      assert.deepEqual(Buffer.from(rowB.raw), composed.raw, "the stored bytes are the composed bytes");
      assert.equal(rowB.messageId, composed.messageId);
      assert.equal(rowB.sendAt.getTime(), composed.composedAt.getTime());
      assert.deepEqual(rowB.envelopeTo, ["ann@example.com", "bob@example.com", "carl@example.com", "dora@example.com"]);
      assert.doesNotMatch(Buffer.from(rowB.raw).toString("latin1"), /dora@/, "Bcc is not in the headers");
    });

    it("a rollback leaves nothing, and the same composed mail can then be enqueued in a new transaction", async (t) => {
      if (!fx) return t.skip("no database");
      const composed = await prisma.outboxEmail.compose({ to: "rollback@example.com", subject: "r", text: "r" });
      await assert.rejects(
        prisma.$transaction(async (tx: any) => {
          await tx.user.create({ data: { email: "rollback@example.com" } });
          await tx.outboxEmail.enqueue(composed);
          throw new Error("business rule failed");
        }),
        /business rule failed/,
      );
      assert.equal(await prisma.outboxEmail.count({ where: { id: composed.id } }), 0);
      assert.equal(await prisma.user.count({ where: { email: "rollback@example.com" } }), 0);
      await prisma.$transaction(async (tx: any) => {
        await tx.user.create({ data: { email: "rollback@example.com" } });
        await tx.outboxEmail.enqueue(composed);
      });
      assert.equal(await prisma.outboxEmail.count({ where: { id: composed.id } }), 1);
    });

    it("a committed composed mail enqueued again throws ComposedMailAlreadyEnqueuedError, and the transaction stays usable", async (t) => {
      if (!fx) return t.skip("no database");
      const composed = await prisma.outboxEmail.compose({ to: "twice@example.com", subject: "t", text: "t" });
      await prisma.outboxEmail.enqueue(composed);
      const user = await prisma.$transaction(async (tx: any) => {
        const err = await tx.outboxEmail.enqueue(composed).catch((e: unknown) => e);
        assert.ok(err instanceof ComposedMailAlreadyEnqueuedError, String(err));
        assert.equal(err.messageId, composed.messageId);
        assert.match(err.message, /compose the mail again/);
        return tx.user.create({ data: { email: "twice@example.com" } }); // on PostgreSQL: not aborted
      });
      assert.equal(user.email, "twice@example.com");
      assert.equal(await prisma.outboxEmail.count({ where: { messageId: composed.messageId } }), 1);
      const many = await prisma.outboxEmail.enqueueMany([composed]).catch((e: unknown) => e);
      assert.ok(many instanceof ComposedMailAlreadyEnqueuedError, String(many));
    });

    it("an idempotency key already used is DuplicateIdempotencyKeyError, as with enqueue(input)", async (t) => {
      if (!fx) return t.skip("no database");
      await prisma.outboxEmail.enqueue({ to: "key@example.com", text: "first", idempotencyKey: "composed-key-1" });
      const composed = await prisma.outboxEmail.compose({ to: "key@example.com", text: "second", idempotencyKey: "composed-key-1" });
      const err = await prisma.$transaction((tx: any) => tx.outboxEmail.enqueue(composed)).catch((e: unknown) => e);
      assert.ok(err instanceof DuplicateIdempotencyKeyError, String(err));
      assert.equal(err.idempotencyKey, "composed-key-1");
      assert.equal(await prisma.outboxEmail.count({ where: { idempotencyKey: "composed-key-1" } }), 1);
    });

    it("enqueueMany takes composed mails and inputs together, and refuses the same composed mail twice", async (t) => {
      if (!fx) return t.skip("no database");
      const a = await prisma.outboxEmail.compose({ to: "many-a@example.com", text: "a" });
      const b = await composeOutboxMail({ to: "many-b@example.com", text: "b" }, { defaultFrom: "other@example.org" });
      const twice = await prisma.outboxEmail.enqueueMany([a, a]).catch((e: unknown) => e);
      assert.ok(twice instanceof InvalidMailError, String(twice));
      assert.match(twice.message, /mails\[1\]: the same composed mail as mails\[0\]/);
      const results = await prisma.$transaction((tx: any) => tx.outboxEmail.enqueueMany([a, { to: "many-c@example.com", text: "c" }, b]));
      assert.deepEqual(results.map((r: { messageId: string }) => r.messageId).filter((m: string) => m === a.messageId || m === b.messageId), [a.messageId, b.messageId]);
      const rows = await prisma.outboxEmail.findMany({ where: { id: { in: results.map((r: { id: string }) => r.id) } } });
      assert.equal(rows.length, 3);
      // Composed with another config: its defaults (defaultFrom) are kept.
      assert.equal(rows.find((r: { id: string }) => r.id === b.id).envelopeFrom, "other@example.org");
    });

    it("suppression is read at enqueue, in the transaction, under the enqueuing client's policy", async (t) => {
      if (!fx) return t.skip("no database");
      // Composed by the "off" client before the address is suppressed; enqueued through a "skip" client.
      const composed = await prisma.outboxEmail.compose({ to: ["supp-ann@example.com", "supp-bob@example.com"], text: "x" });
      const db = await openDatabase(fx.url);
      try {
        await suppress(db, ["supp-ann@example.com"], { reason: "5.1.1 user unknown", source: "bounce" });
      } finally {
        await db.close();
      }
      const skip = prisma.$extends(mailOutbox({ suppression: "skip" }));
      const result = await skip.$transaction((tx: any) => tx.outboxEmail.enqueue(composed));
      assert.deepEqual(result.suppressed, ["supp-ann@example.com"]);
      const row = await prisma.outboxEmail.findUnique({ where: { id: composed.id } });
      assert.deepEqual(row.envelopeTo, ["supp-bob@example.com"]);
      assert.equal(row.envelopeFrom, "shop@example.com", "the composing client's defaultFrom");
    });

    it("expectEnqueued sees every mail of a transaction past the point where the extension checks it is one (64 ids)", async (t) => {
      if (!fx) return t.skip("no database");
      const mails = Array.from({ length: 70 }, (_, i) => ({ to: `rec${i}@example.com`, text: "x" }));
      await prisma.outboxEmail.enqueueMany(mails); // outside a transaction: recorded nowhere that counts
      await prisma.$transaction(async (tx: any) => {
        const composed = await composeOutboxMail({ to: "rec-last@example.com", text: "x" }, { defaultFrom: "shop@example.com" });
        await tx.outboxEmail.enqueueMany(mails.slice(0, 60));
        await tx.outboxEmail.enqueueMany(mails.slice(60));
        await tx.outboxEmail.enqueue(composed);
        const all = await expectEnqueued(tx, { from: "shop@example.com", count: 71 });
        assert.equal(all.filter((m) => m.envelopeTo[0] === "rec-last@example.com").length, 1);
      }, { timeout: 20_000 });
    });

    it("a plain object shaped like a composed mail is checked as input, never trusted", async (t) => {
      if (!fx) return t.skip("no database");
      const composed = await prisma.outboxEmail.compose({ to: "fake@example.com", text: "x" });
      const fake = { ...composed, raw: Buffer.from("forged") };
      const err = await prisma.outboxEmail.enqueue(fake).catch((e: unknown) => e);
      assert.ok(err instanceof InvalidMailError, String(err));
    });

    it("the relay hands the composed bytes to the MTA exactly", async (t) => {
      if (!fx) return t.skip("no database");
      const smtp = await startTestSmtp();
      t.after(() => smtp.close());
      const composed = await prisma.outboxEmail.compose({ to: "relay@example.com", subject: "exact", text: "Exact bytes.\r\nLine two.", html: "<p>Exact</p>" });
      await prisma.$transaction(async (tx: any) => {
        await tx.user.create({ data: { email: "relay@example.com" } });
        await tx.outboxEmail.enqueue(composed);
      });
      const controller = new AbortController();
      const relay = createRelay({ databaseUrl: fx.url, transport: smtp.url, signal: controller.signal, pollIntervalMs: 50, logger: false });
      await relay.start();
      try {
        await smtp.waitFor((ms) => ms.some((m) => m.messageId === composed.messageId), 10_000);
      } finally {
        controller.abort();
        await relay.stopped;
      }
      const got = smtp.messages.find((m) => m.messageId === composed.messageId)!;
      assert.deepEqual(got.recipients, ["relay@example.com"]);
      assert.equal(got.envelopeFrom, "shop@example.com");
      assert.equal(got.raw.length, composed.size);
      assert.deepEqual(got.raw, composed.raw, "the MTA got the composed bytes, exactly");
    });
  });
}
