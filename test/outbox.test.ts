/**
 * End to end, on real SQLite files and the real PostgreSQL server: enqueue in a Prisma transaction,
 * relay to a real SMTP server (in-process, with injected faults), read the outcome from the table.
 */
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { mailOutbox, createRelay, InvalidMailError, DuplicateIdempotencyKeyError, openDatabase, type Relay } from "../src/index.js";
import { freshSqlite, freshPostgres, prismaClientFor, sqliteOf, pgOf } from "./support/db.js";
import { startTestSmtp, type TestSmtp } from "../testkit/smtp.js";
import { needPostgres } from "./support/services.js";
import { expectEnqueued, expectNotEnqueued } from "../src/testing.js";
import { main } from "../src/cli.js";

const FAST = { pollIntervalMs: 50, leaseMs: 3000, backoff: { baseMs: 100, maxMs: 500, jitter: 0 }, logger: false as const };

interface Fixture {
  url: string;
  cleanup(): Promise<void>;
}

async function rows(url: string) {
  const db = await openDatabase(url);
  try {
    if (db.dialect === "postgresql") {
      return (await db.pool.query("SELECT id, message_id, status, attempts, mta_queue_id, mta_response, last_error FROM mail_outbox ORDER BY id")).rows as Row[];
    }
    return sqliteOf(db).db.prepare("SELECT id, message_id, status, attempts, mta_queue_id, mta_response, last_error FROM mail_outbox ORDER BY id").all() as Row[];
  } finally {
    await db.close();
  }
}
interface Row { id: string; message_id: string; status: string; attempts: number; mta_queue_id: string | null; mta_response: string | null; last_error: string | null }

async function userCount(url: string): Promise<number> {
  const db = await openDatabase(url);
  try {
    if (db.dialect === "postgresql") return Number((await db.pool.query(`SELECT count(*) AS n FROM "User"`)).rows[0].n);
    return Number((sqliteOf(db).db.prepare(`SELECT count(*) AS n FROM "User"`).get() as { n: number }).n);
  } finally {
    await db.close();
  }
}

for (const dialect of ["sqlite", "postgresql"] as const) {
  describe(`outbox on ${dialect}`, () => {
    let fx: Fixture | null = null;
    let smtp: TestSmtp;
    let prisma: any;

    before(async (t) => {
      if (dialect === "postgresql" && !(await needPostgres(t as any))) return;
      fx = dialect === "sqlite" ? await freshSqlite() : await freshPostgres();
      smtp = await startTestSmtp();
      prisma = (await prismaClientFor(fx.url)).$extends(mailOutbox({ defaultFrom: "shop@example.com" }));
    });
    after(async () => {
      await prisma?.$disconnect();
      await smtp?.close();
      await fx?.cleanup();
    });

    function relay(extra: Record<string, unknown> = {}): Relay {
      return createRelay({ databaseUrl: fx!.url, transport: smtp.url, ...FAST, ...extra });
    }

    it("hands a mail enqueued in a committed transaction to the MTA exactly once, and never one from a rolled-back transaction", async (t) => {
      if (!fx) return t.skip("no database");
      const committed = await prisma.$transaction(async (tx: any) => {
        await tx.user.create({ data: { email: "ann@example.com" } });
        const r = await tx.outboxEmail.enqueue({ to: "ann@example.com", subject: "Welcome", text: "Hello Ann" });
        await expectEnqueued(tx, { to: "ann@example.com", subject: "Welcome" });
        return r;
      });
      let rolledBack: { messageId: string } | null = null;
      await assert.rejects(
        prisma.$transaction(async (tx: any) => {
          await tx.user.create({ data: { email: "bob@example.com" } });
          rolledBack = await tx.outboxEmail.enqueue({ to: "bob@example.com", subject: "Welcome", text: "Hello Bob" });
          throw new Error("payment declined");
        }),
        /payment declined/,
      );
      await expectNotEnqueued(prisma, { to: "bob@example.com" });
      const counts = await relay().runOnce();
      assert.equal(counts.sent, 1);
      assert.equal(smtp.countByMessageId().get(committed.messageId), 1);
      assert.equal(smtp.countByMessageId().get(rolledBack!.messageId), undefined);
      const [row] = (await rows(fx.url)).filter((r) => r.message_id === committed.messageId);
      assert.equal(row?.status, "sent");
      const received = smtp.messages.find((m) => m.messageId === committed.messageId)!;
      assert.equal(row?.mta_queue_id, received.queueId, "the queue id from the 250 reply is recorded");
      assert.deepEqual(received.recipients, ["ann@example.com"]);
      assert.equal(await userCount(fx.url), 1);
      // Nothing more to do: a second pass hands nothing over again.
      assert.equal((await relay().runOnce()).sent, 0);
      assert.equal(smtp.countByMessageId().get(committed.messageId), 1);
    });

    it("refuses bad input with a named error, writes no row, and the transaction still commits its business data", async (t) => {
      if (!fx) return t.skip("no database");
      const before = (await rows(fx.url)).length;
      await prisma.$transaction(async (tx: any) => {
        await tx.user.create({ data: { email: "carol@example.com" } });
        const err = await tx.outboxEmail.enqueue({ to: "not an address", subject: "x\r\nBcc: victim@example.com", colour: "red" }).catch((e: unknown) => e);
        assert.ok(err instanceof InvalidMailError, `expected InvalidMailError, got ${err}`);
        assert.ok(err.problems.length >= 3, err.message);
        await tx.outboxEmail.enqueue({ to: "carol@example.com", subject: "ok", text: "ok", idempotencyKey: "signup-carol" });
        const dup = await tx.outboxEmail.enqueue({ to: "carol@example.com", subject: "ok", text: "ok", idempotencyKey: "signup-carol" }).catch((e: unknown) => e);
        assert.ok(dup instanceof DuplicateIdempotencyKeyError);
        assert.ok(dup.existingId);
      });
      assert.equal((await rows(fx.url)).length, before + 1);
      assert.equal(await userCount(fx.url), 2);
    });

    // The faults, through both SMTP transports: the pipelining one (the default for a loopback MTA)
    // and nodemailer's pool (every other SMTP URL).
    for (const [transport, query] of [["pipelined", ""], ["nodemailer pool", "?pipelining=false"]] as const) {
      it(`keeps every mail while the SMTP server refuses connections, and delivers all of them once it is back (${transport})`, async (t) => {
        if (!fx) return t.skip("no database");
        await smtp.refuseConnections();
        const ids = await prisma.outboxEmail.enqueueMany(
          Array.from({ length: 20 }, (_, i) => ({ to: `outage${i}@example.com`, subject: `outage ${i}`, text: "x" })),
        );
        const r = relay({ connectRetries: 0, transport: smtp.url + query });
        await r.start();
        await new Promise((res) => setTimeout(res, 600));
        assert.ok(r.counts().retried >= 1, "the relay tried and failed while the server was down");
        assert.equal(r.counts().sent, 0);
        await smtp.acceptConnections();
        await smtp.waitFor(() => ids.every((x: { messageId: string }) => smtp.countByMessageId().has(x.messageId)), 15_000);
        await r.stop();
        const counts = smtp.countByMessageId();
        for (const x of ids) assert.equal(counts.get(x.messageId), 1, `${x.messageId} delivered once`);
        const byId = new Map((await rows(fx.url)).map((row) => [row.message_id, row]));
        for (const x of ids) assert.equal(byId.get(x.messageId)?.status, "sent");
      });

      it(`a recipient deferred with 4xx gets the same message on a later attempt, without resending to those who accepted it (${transport})`, async (t) => {
        if (!fx) return t.skip("no database");
        const mail = await prisma.outboxEmail.enqueue({ to: ["glad@example.com", "grey@example.com"], cc: "gone@example.com", subject: "partial", text: "x" });
        let greylisted = 0;
        smtp.setFaults((ctx) => {
          if (ctx.phase === "rcpt" && ctx.recipient === "grey@example.com" && greylisted++ < 1) return { reply: 450, message: "4.2.0 Greylisted, come back later" };
          if (ctx.phase === "rcpt" && ctx.recipient === "gone@example.com") return { reply: 550, message: "5.1.1 No such user" };
          return undefined;
        });
        try {
          const r = relay({ transport: smtp.url + query });
          await r.start();
          await smtp.waitFor(() => smtp.messages.filter((m) => m.messageId === mail.messageId).length >= 2, 10_000);
          await new Promise((res) => setTimeout(res, 200));
          await r.stop();
        } finally {
          smtp.setFaults(null);
        }
        const deliveries = smtp.messages.filter((m) => m.messageId === mail.messageId).map((m) => m.recipients);
        assert.deepEqual(deliveries, [["glad@example.com"], ["grey@example.com"]]);
        const db = await openDatabase(fx.url);
        try {
          const sql = "SELECT status, accepted, rejected, envelope_to FROM mail_outbox WHERE message_id = " + (db.dialect === "postgresql" ? "$1" : "?");
          const row: any = db.dialect === "postgresql" ? (await pgOf(db).pool.query(sql, [mail.messageId])).rows[0] : sqliteOf(db).db.prepare(sql).get(mail.messageId);
          const parse = (v: unknown) => (typeof v === "string" ? JSON.parse(v) : v);
          assert.equal(row.status, "sent");
          assert.deepEqual(parse(row.accepted), ["glad@example.com", "grey@example.com"]);
          assert.deepEqual(parse(row.rejected).map((x: { recipient: string }) => x.recipient), ["gone@example.com"]);
        } finally {
          await db.close();
        }
      });

      it(`retries a 4xx, parks a 5xx as dead with the reply recorded (${transport})`, async (t) => {
        if (!fx) return t.skip("no database");
        const soft = await prisma.outboxEmail.enqueue({ to: "soft@example.com", subject: "soft", text: "x" });
        const hard = await prisma.outboxEmail.enqueue({ to: "hard@example.com", subject: "hard", text: "x" });
        let softFailures = 0;
        smtp.setFaults((ctx) => {
          if (ctx.phase === "rcpt" && ctx.recipient === "hard@example.com") return { reply: 550, message: "5.1.1 No such user here" };
          if (ctx.phase === "rcpt" && ctx.recipient === "soft@example.com" && softFailures++ < 2) return { reply: 451, message: "4.3.0 Try again later" };
          return undefined;
        });
        const r = relay({ transport: smtp.url + query });
        await r.start();
        await smtp.waitFor(() => smtp.countByMessageId().has(soft.messageId), 10_000);
        await new Promise((res) => setTimeout(res, 300));
        await r.stop();
        smtp.setFaults(null);
        const byId = new Map((await rows(fx.url)).map((row) => [row.message_id, row]));
        assert.equal(byId.get(soft.messageId)?.status, "sent");
        assert.equal(byId.get(soft.messageId)?.attempts, 3);
        const dead = byId.get(hard.messageId)!;
        assert.equal(dead.status, "dead");
        assert.match(dead.last_error ?? "", /No such user/);
        assert.equal(smtp.countByMessageId().get(hard.messageId), undefined);

        // The operator fixes the mailbox and replays the dead mail from the CLI: same Message-ID, delivered.
        const out: string[] = [];
        const io = { stdout: { write: (c: string) => (out.push(c), true) }, stderr: { write: (c: string) => (out.push(c), true) }, env: { DATABASE_URL: fx.url } };
        assert.equal(await main(["replay", "--status", "dead", "--since", "1h", "--json"], io as never), 0, out.join(""));
        assert.equal((await relay({ transport: smtp.url + query }).runOnce()).sent, 1);
        assert.equal(smtp.countByMessageId().get(hard.messageId), 1);
        const after = new Map((await rows(fx.url)).map((row) => [row.message_id, row]));
        assert.equal(after.get(hard.messageId)?.status, "sent");
      });
    }
  });
}
