/**
 * enqueue() and enqueueMany() as Prisma promises: they join a batch transaction
 * (`prisma.$transaction([...])`) atomically with the application's own writes, on real SQLite files
 * and the real PostgreSQL server. What is committed is read back from the database.
 */
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { mailOutbox, InvalidMailError, DuplicateIdempotencyKeyError, type EnqueueResult } from "../src/index.js";
import { freshSqlite, freshPostgres, prismaClientFor } from "./support/db.js";
import { needPostgres } from "./support/services.js";

for (const dialect of ["sqlite", "postgresql"] as const) {
  describe(`enqueue as a Prisma promise on ${dialect}`, () => {
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

    /** Committed users with this e-mail address, and committed mails to it (read after the fact). */
    async function committed(email: string): Promise<{ users: number; mails: number }> {
      return {
        users: await prisma.user.count({ where: { email } }),
        mails: (await prisma.outboxEmail.findMany({ select: { envelopeTo: true } })).filter((m: { envelopeTo: string[] }) => m.envelopeTo.includes(email)).length,
      };
    }

    it("a batch transaction with a user and an enqueued mail commits both, and returns the mail's id and Message-ID", async (t) => {
      if (!fx) return t.skip("no database");
      // Typed as an application has it: the batch only type-checks if enqueue returns a Prisma promise.
      const typed = (await prismaClientFor(fx.url, t)).$extends(mailOutbox({ defaultFrom: "shop@example.com" }));
      const [user, mail]: [{ email: string }, EnqueueResult] = await typed.$transaction([
        typed.user.create({ data: { email: "batch-ann@example.com" } }),
        typed.outboxEmail.enqueue({ to: "batch-ann@example.com", subject: "Welcome", text: "Hello Ann" }),
      ]);
      assert.equal(user.email, "batch-ann@example.com");
      assert.match(mail.messageId, /^<.+@example\.com>$/);
      const row = await prisma.outboxEmail.findUnique({ where: { id: mail.id } });
      assert.equal(row?.messageId, mail.messageId);
      assert.equal(row?.status, "pending");
      assert.deepEqual(await committed("batch-ann@example.com"), { users: 1, mails: 1 });
    });

    it("a batch whose later element fails (a duplicate user) writes neither the user nor the mail", async (t) => {
      if (!fx) return t.skip("no database");
      await prisma.user.create({ data: { email: "batch-taken@example.com" } });
      const err = await prisma
        .$transaction([
          prisma.user.create({ data: { email: "batch-bob@example.com" } }),
          prisma.outboxEmail.enqueue({ to: "batch-bob@example.com", subject: "Welcome", text: "Hello Bob" }),
          prisma.user.create({ data: { email: "batch-taken@example.com" } }),
        ])
        .catch((e: unknown) => e);
      assert.equal((err as { code?: string }).code, "P2002", String(err));
      assert.deepEqual(await committed("batch-bob@example.com"), { users: 0, mails: 0 });
    });

    it("a duplicate user in a batch with a keyed mail is reported as the user's unique violation, not as a duplicate idempotency key", async (t) => {
      if (!fx) return t.skip("no database");
      await prisma.user.create({ data: { email: "batch-keyed@example.com" } });
      const err = await prisma
        .$transaction([
          prisma.outboxEmail.enqueue({ to: "batch-keyed@example.com", subject: "Welcome", text: "x", idempotencyKey: "batch-keyed-1" }),
          prisma.user.create({ data: { email: "batch-keyed@example.com" } }),
        ])
        .catch((e: unknown) => e);
      assert.ok(!(err instanceof DuplicateIdempotencyKeyError), String(err));
      assert.equal((err as { code?: string }).code, "P2002");
      assert.equal((err as { meta?: { modelName?: string } }).meta?.modelName, "User");
      assert.deepEqual(await committed("batch-keyed@example.com"), { users: 1, mails: 0 });
    });

    it("invalid mail in a batch rejects with InvalidMailError and nothing of the batch is written", async (t) => {
      if (!fx) return t.skip("no database");
      const err = await prisma
        .$transaction([
          prisma.user.create({ data: { email: "batch-carol@example.com" } }),
          prisma.outboxEmail.enqueue({ to: "batch-carol@example.com", subject: "x\r\nBcc: victim@example.com", text: "x" }),
        ])
        .catch((e: unknown) => e);
      assert.ok(err instanceof InvalidMailError, String(err));
      assert.deepEqual(await committed("batch-carol@example.com"), { users: 0, mails: 0 });
      assert.deepEqual(await committed("victim@example.com"), { users: 0, mails: 0 });
      // The client is still usable: the held-back elements of the failed batch never took a connection.
      const [, mail] = await prisma.$transaction([
        prisma.user.create({ data: { email: "batch-carol@example.com" } }),
        prisma.outboxEmail.enqueue({ to: "batch-carol@example.com", subject: "Welcome", text: "x" }),
      ]);
      assert.ok(mail.id);
      assert.deepEqual(await committed("batch-carol@example.com"), { users: 1, mails: 1 });
    });

    it("enqueueMany in a batch commits every mail with the user; one invalid mail writes nothing", async (t) => {
      if (!fx) return t.skip("no database");
      const [, mails, none] = await prisma.$transaction([
        prisma.user.create({ data: { email: "batch-dan@example.com" } }),
        prisma.outboxEmail.enqueueMany([
          { to: "batch-dan@example.com", subject: "Welcome", text: "1" },
          { to: "batch-dan@example.com", subject: "Your account", text: "2" },
        ]),
        prisma.outboxEmail.enqueueMany([]),
      ]);
      assert.equal(mails.length, 2);
      assert.deepEqual(none, []);
      assert.deepEqual(await committed("batch-dan@example.com"), { users: 1, mails: 2 });

      const err = await prisma
        .$transaction([
          prisma.user.create({ data: { email: "batch-eve@example.com" } }),
          prisma.outboxEmail.enqueueMany([
            { to: "batch-eve@example.com", subject: "ok", text: "1" },
            { to: "not an address", subject: "bad", text: "2" },
          ]),
        ])
        .catch((e: unknown) => e);
      assert.ok(err instanceof InvalidMailError, String(err));
      assert.ok(err.problems.some((p) => p.startsWith("mails[1].to")), err.message);
      assert.deepEqual(await committed("batch-eve@example.com"), { users: 0, mails: 0 });
    });

    it("a duplicate idempotency key in a batch rejects with DuplicateIdempotencyKeyError and writes nothing", async (t) => {
      if (!fx) return t.skip("no database");
      const first = await prisma.outboxEmail.enqueue({ to: "batch-fay@example.com", subject: "Welcome", text: "x", idempotencyKey: "batch-fay" });
      // A key already in the outbox: found before the batch runs, with the existing row.
      const known = await prisma
        .$transaction([
          prisma.user.create({ data: { email: "batch-fay@example.com" } }),
          prisma.outboxEmail.enqueue({ to: "batch-fay@example.com", subject: "Welcome", text: "x", idempotencyKey: "batch-fay" }),
        ])
        .catch((e: unknown) => e);
      assert.ok(known instanceof DuplicateIdempotencyKeyError, String(known));
      assert.equal(known.existingId, first.id);
      // The same key twice in one batch: the database refuses the second INSERT and the batch rolls back.
      const twice = await prisma
        .$transaction([
          prisma.user.create({ data: { email: "batch-fay@example.com" } }),
          prisma.outboxEmail.enqueue({ to: "batch-fay@example.com", subject: "A", text: "x", idempotencyKey: "batch-fay-2" }),
          prisma.outboxEmail.enqueue({ to: "batch-fay@example.com", subject: "B", text: "x", idempotencyKey: "batch-fay-2" }),
        ])
        .catch((e: unknown) => e);
      assert.ok(twice instanceof DuplicateIdempotencyKeyError, String(twice));
      assert.equal(twice.idempotencyKey, "batch-fay-2");
      assert.deepEqual(await committed("batch-fay@example.com"), { users: 0, mails: 1 });
    });

    it("enqueue outside a transaction commits the mail at once, independent of any business write that fails after it", async (t) => {
      if (!fx) return t.skip("no database");
      await prisma.user.create({ data: { email: "root-gus@example.com" } });
      const mail = await prisma.outboxEmail.enqueue({ to: "root-gus@example.com", subject: "Welcome", text: "x" });
      await assert.rejects(prisma.user.create({ data: { email: "root-gus@example.com" } }), (e: { code?: string }) => e.code === "P2002");
      const row = await prisma.outboxEmail.findUnique({ where: { id: mail.id } });
      assert.equal(row?.status, "pending", "the mail stays committed: only a transaction ties it to the business write");
    });

    it("like a Prisma query, enqueue runs when awaited, once: an enqueue never awaited writes nothing", async (t) => {
      if (!fx) return t.skip("no database");
      const pending = prisma.outboxEmail.enqueue({ to: "lazy-hal@example.com", subject: "Welcome", text: "x" });
      assert.equal(Object.prototype.toString.call(pending), "[object PrismaPromise]");
      await new Promise((resolve) => setTimeout(resolve, 50));
      assert.deepEqual(await committed("lazy-hal@example.com"), { users: 0, mails: 0 });
      const a = await pending;
      const b = await pending;
      assert.equal(a.id, b.id);
      assert.deepEqual(await committed("lazy-hal@example.com"), { users: 0, mails: 1 });
    });
  });
}
