/**
 * prisma-mail-outbox/testing on a shared database: inside a transaction, expectEnqueued() looks
 * only at what that transaction enqueued, whatever other pending mail is committed in the table.
 * Real SQLite files and the real PostgreSQL server.
 */
import { describe, it, before, after } from "node:test";
import assert, { AssertionError } from "node:assert/strict";
import { mailOutbox } from "../src/index.js";
import { expectEnqueued, expectNotEnqueued, listEnqueuedBy } from "../src/testing.js";
import { freshSqlite, freshPostgres, prismaClientFor } from "./support/db.js";
import { needPostgres } from "./support/services.js";

/** The application code under test: a sign-up that writes a user and enqueues a welcome mail. */
async function signUp(tx: any, email: string): Promise<void> {
  const user = await tx.user.create({ data: { email } });
  await tx.outboxEmail.enqueue({ to: email, subject: "Welcome", text: `Hello ${user.id}`, metadata: { userId: user.id } });
}

for (const dialect of ["sqlite", "postgresql"] as const) {
  describe(`expectEnqueued on ${dialect}`, () => {
    let fx: { url: string; cleanup(): Promise<void> } | null = null;
    let prisma: any;

    before(async (t) => {
      if (dialect === "postgresql" && !(await needPostgres(t as any))) return;
      fx = dialect === "sqlite" ? await freshSqlite() : await freshPostgres();
      prisma = (await prismaClientFor(fx.url)).$extends(mailOutbox({ defaultFrom: "shop@example.com" }));
      // Other tests (or processes) on the same database left committed pending mail, to the same
      // address and with the same subject as the mail under test.
      await prisma.outboxEmail.enqueueMany([
        { to: "ann@example.com", subject: "Welcome", text: "earlier run 1" },
        { to: "ann@example.com", subject: "Welcome", text: "earlier run 2" },
        { to: "someone@example.com", subject: "Invoice", text: "x" },
      ]);
    });
    after(async () => {
      await prisma?.$disconnect();
      await fx?.cleanup();
    });

    it("counts exactly the mail this transaction enqueued, with other committed pending mail in the table", async (t) => {
      if (!fx) return t.skip("no database");
      await assert.rejects(
        prisma.$transaction(async (tx: any) => {
          await signUp(tx, "ann@example.com");
          const [mail] = await expectEnqueued(tx, { to: "ann@example.com", subject: "Welcome", count: 1 });
          assert.deepEqual(mail?.metadata, { userId: (await tx.user.findUnique({ where: { email: "ann@example.com" } })).id });
          await expectEnqueued(tx, { count: 1 });
          await expectNotEnqueued(tx, { to: "someone@example.com" });
          assert.equal((await listEnqueuedBy(tx)).length, 1);
          throw new Error("roll back: leave the shared table as it was");
        }),
        /roll back/,
      );
    });

    it("enqueueMany and several enqueues in one transaction are all counted, and only those", async (t) => {
      if (!fx) return t.skip("no database");
      await prisma.$transaction(async (tx: any) => {
        await tx.outboxEmail.enqueueMany([
          { to: "ann@example.com", subject: "Welcome", text: "1" },
          { to: "bob@example.com", subject: "Welcome", text: "2" },
        ]);
        await tx.outboxEmail.enqueue({ to: "ann@example.com", subject: "Tips", text: "3" });
        await expectEnqueued(tx, { count: 3 });
        await expectEnqueued(tx, { to: "ann@example.com", count: 2 });
        await expectEnqueued(tx, { subject: /welcome/i, count: 2 });
      });
    });

    it("fails, listing what this transaction enqueued, when it enqueued nothing, even though matching mail is pending in the table", async (t) => {
      if (!fx) return t.skip("no database");
      await prisma.$transaction(async (tx: any) => {
        await tx.user.create({ data: { email: "nomail@example.com" } });
        const err = await expectEnqueued(tx, { to: "ann@example.com" }).catch((e: unknown) => e);
        assert.ok(err instanceof AssertionError, String(err));
        assert.match(err.message, /found 0\. Mail this transaction enqueued:\n {2}\(none\)/);
        await expectNotEnqueued(tx, { to: "ann@example.com" });
      });
    });

    it("a transaction does not see another transaction's enqueued mail, even one running at the same time on PostgreSQL", async (t) => {
      if (!fx) return t.skip("no database");
      if (dialect === "sqlite") {
        // SQLite runs one write transaction at a time: the second one starts after the first commits.
        await prisma.$transaction(async (tx: any) => signUp(tx, "first@example.com"));
        await prisma.$transaction(async (tx: any) => {
          await signUp(tx, "second@example.com");
          await expectEnqueued(tx, { count: 1, to: "second@example.com" });
          await expectNotEnqueued(tx, { to: "first@example.com" });
        });
        return;
      }
      let release!: () => void;
      const held = new Promise<void>((resolve) => (release = resolve));
      let entered!: () => void;
      const firstEnqueued = new Promise<void>((resolve) => (entered = resolve));
      const first = prisma.$transaction(async (tx: any) => {
        await signUp(tx, "first@example.com");
        entered();
        await held;
        await expectEnqueued(tx, { count: 1, to: "first@example.com" });
      });
      await firstEnqueued;
      await prisma.$transaction(async (tx: any) => {
        await signUp(tx, "second@example.com");
        await expectEnqueued(tx, { count: 1, to: "second@example.com" });
      });
      release();
      await first;
    });

    it("on a client outside a transaction, looks at every pending mail in the outbox", async (t) => {
      if (!fx) return t.skip("no database");
      const all = await expectEnqueued(prisma, { to: "ann@example.com", subject: "Welcome" });
      assert.ok(all.length >= 2);
      await expectNotEnqueued(prisma, { to: "never@example.com" });
    });
  });
}
