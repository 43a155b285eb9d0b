/**
 * Crashes: a relay process killed with SIGKILL in the middle of a batch, a relay stopped with
 * SIGTERM, and two relays draining one PostgreSQL database side by side.
 */
import { describe, it, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { createRelay, mailOutbox, openDatabase } from "../src/index.js";
import { freshPostgres, freshSqlite, prismaClientFor, sqliteOf, pgOf } from "./support/db.js";
import { startTestSmtp } from "../testkit/smtp.js";
import { needPostgres } from "./support/services.js";

const FIXTURE = fileURLToPath(new URL("./fixtures/relay-process.ts", import.meta.url));

function spawnRelay(env: Record<string, string>): { child: ChildProcess; events: Record<string, unknown>[]; waitFor(pred: (e: Record<string, unknown>) => boolean, ms?: number): Promise<void> } {
  const child = spawn(process.execPath, ["--import", "tsx", FIXTURE], { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "inherit"] });
  const events: Record<string, unknown>[] = [];
  const waiters: (() => void)[] = [];
  createInterface({ input: child.stdout! }).on("line", (line) => {
    try {
      events.push(JSON.parse(line));
    } catch {
      return;
    }
    for (const w of waiters.splice(0)) w();
  });
  return {
    child,
    events,
    waitFor(pred, ms = 20_000) {
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`timed out waiting for relay event; saw ${events.length} events`)), ms);
        const check = () => {
          if (events.some(pred)) {
            clearTimeout(timer);
            resolve();
          } else waiters.push(check);
        };
        check();
      });
    },
  };
}

async function uncertainMessageIds(url: string): Promise<Set<string>> {
  const db = await openDatabase(url);
  try {
    const sql = "SELECT message_id FROM mail_outbox WHERE uncertain_handoffs > 0";
    const list = db.dialect === "postgresql" ? (await pgOf(db).pool.query(sql)).rows : sqliteOf(db).db.prepare(sql).all();
    return new Set((list as { message_id: string }[]).map((r) => r.message_id));
  } finally {
    await db.close();
  }
}

async function statusCounts(url: string): Promise<Record<string, number>> {
  const db = await openDatabase(url);
  try {
    const sql = "SELECT status, count(*) AS n FROM mail_outbox GROUP BY status";
    const list = db.dialect === "postgresql" ? (await pgOf(db).pool.query(sql)).rows : sqliteOf(db).db.prepare(sql).all();
    return Object.fromEntries((list as { status: string; n: number | string }[]).map((r) => [r.status, Number(r.n)]));
  } finally {
    await db.close();
  }
}

for (const dialect of ["sqlite", "postgresql"] as const) {
  describe(`crashes on ${dialect}`, () => {
    it("a relay killed with SIGKILL mid-batch loses nothing: another relay delivers every mail, and only mail in flight at the kill arrives twice, with the same Message-ID", async (t) => {
      if (dialect === "postgresql" && !(await needPostgres(t))) return;
      const fx = dialect === "sqlite" ? await freshSqlite() : await freshPostgres();
      const smtp = await startTestSmtp({ faults: (ctx) => (ctx.phase === "data" ? { stallMs: 30 } : undefined) });
      const prisma = (await prismaClientFor(fx.url)).$extends(mailOutbox({ defaultFrom: "app@example.com" }));
      after(async () => {
        await prisma.$disconnect();
        await smtp.close();
        await fx.cleanup();
      });
      const N = 300;
      const enqueued = await (prisma as any).outboxEmail.enqueueMany(Array.from({ length: N }, (_, i) => ({ to: `k${i}@example.com`, subject: `kill ${i}`, text: "x" })));
      const a = spawnRelay({ DATABASE_URL: fx.url, MAIL_OUTBOX_TRANSPORT: smtp.url, RELAY_ID: "victim", RELAY_OPTIONS: JSON.stringify({ concurrency: 8, batchSize: 50, leaseMs: 2000, pollIntervalMs: 50 }) });
      await a.waitFor(() => smtp.messages.length >= 60);
      a.child.kill("SIGKILL");
      await new Promise((r) => a.child.once("exit", r));
      const deliveredAtKill = smtp.messages.length;
      assert.ok(deliveredAtKill < N, "the kill happened mid-run");

      const b = createRelay({ databaseUrl: fx.url, transport: smtp.url, relayId: "rescuer", leaseMs: 2000, pollIntervalMs: 50, logger: false });
      await b.start();
      await smtp.waitFor(() => enqueued.every((e: { messageId: string }) => smtp.countByMessageId().has(e.messageId)), 30_000);
      await b.stop();

      const counts = smtp.countByMessageId();
      const uncertain = await uncertainMessageIds(fx.url);
      const twice = [...counts].filter(([, n]) => n > 1).map(([id]) => id);
      for (const e of enqueued) assert.ok(counts.has(e.messageId), `${e.messageId} delivered`);
      for (const id of twice) assert.ok(uncertain.has(id), `${id} arrived twice but was not held by the killed relay`);
      assert.ok(twice.length <= 8 + 1, `at most the killed relay's in-flight mail arrives twice (concurrency 8), got ${twice.length}`);
      assert.ok([...counts.values()].every((n) => n <= 2));
      assert.deepEqual(await statusCounts(fx.url), { sent: N });
      t.diagnostic(`delivered at kill ${deliveredAtKill}, rescued ${uncertain.size}, duplicates ${twice.length}`);
    });

    it("a relay stopped with SIGTERM finishes or releases what it claimed, and exits", async (t) => {
      if (dialect === "postgresql" && !(await needPostgres(t))) return;
      const fx = dialect === "sqlite" ? await freshSqlite() : await freshPostgres();
      const smtp = await startTestSmtp({ faults: (ctx) => (ctx.phase === "data" ? { stallMs: 40 } : undefined) });
      const prisma = (await prismaClientFor(fx.url)).$extends(mailOutbox({ defaultFrom: "app@example.com" }));
      after(async () => {
        await prisma.$disconnect();
        await smtp.close();
        await fx.cleanup();
      });
      await (prisma as any).outboxEmail.enqueueMany(Array.from({ length: 200 }, (_, i) => ({ to: `t${i}@example.com`, subject: `term ${i}`, text: "x" })));
      const a = spawnRelay({ DATABASE_URL: fx.url, MAIL_OUTBOX_TRANSPORT: smtp.url, RELAY_OPTIONS: JSON.stringify({ concurrency: 4, batchSize: 50, leaseMs: 30000, pollIntervalMs: 50 }) });
      await a.waitFor(() => smtp.messages.length >= 20);
      a.child.kill("SIGTERM");
      const code = await new Promise((r) => a.child.once("exit", r));
      assert.equal(code, 0);
      const st = await statusCounts(fx.url);
      assert.equal(st.sending ?? 0, 0, "nothing is left claimed after a graceful stop");
      assert.equal((st.sent ?? 0) + (st.pending ?? 0), 200);
      assert.equal(st.sent, smtp.messages.length, "every mail the MTA accepted is recorded as sent");
      assert.equal(new Set(smtp.messages.map((m) => m.messageId)).size, smtp.messages.length);
    });
  });
}

describe("scale-out on postgresql", () => {
  it("two relays drain 5,000 mails and each Message-ID reaches the SMTP server exactly once", async (t) => {
    if (!(await needPostgres(t))) return;
    const fx = await freshPostgres();
    const smtp = await startTestSmtp();
    const prisma = (await prismaClientFor(fx.url)).$extends(mailOutbox({ defaultFrom: "app@example.com" }));
    after(async () => {
      await prisma.$disconnect();
      await smtp.close();
      await fx.cleanup();
    });
    const N = 5000;
    const all: { messageId: string }[] = [];
    for (let i = 0; i < N; i += 500) {
      all.push(...(await (prisma as any).outboxEmail.enqueueMany(Array.from({ length: 500 }, (_, j) => ({ to: `s${i + j}@example.com`, subject: `scale ${i + j}`, text: "x" })))));
    }
    const a = spawnRelay({ DATABASE_URL: fx.url, MAIL_OUTBOX_TRANSPORT: smtp.url, RELAY_ID: "one", RELAY_OPTIONS: JSON.stringify({ concurrency: 5, batchSize: 100, pollIntervalMs: 50 }) });
    const b = spawnRelay({ DATABASE_URL: fx.url, MAIL_OUTBOX_TRANSPORT: smtp.url, RELAY_ID: "two", RELAY_OPTIONS: JSON.stringify({ concurrency: 5, batchSize: 100, pollIntervalMs: 50 }) });
    await smtp.waitFor((msgs) => msgs.length >= N, 120_000);
    a.child.kill("SIGTERM");
    b.child.kill("SIGTERM");
    await Promise.all([new Promise((r) => a.child.once("exit", r)), new Promise((r) => b.child.once("exit", r))]);
    const counts = smtp.countByMessageId();
    assert.equal(counts.size, N);
    assert.ok([...counts.values()].every((n) => n === 1), "no Message-ID twice");
    assert.deepEqual(await statusCounts(fx.url), { sent: N });
    const sentBy = (ev: Record<string, unknown>[]) => ev.filter((e) => e.event === "sent").length;
    t.diagnostic(`relay one sent ${sentBy(a.events)}, relay two sent ${sentBy(b.events)}`);
    assert.ok(sentBy(a.events) > 0 && sentBy(b.events) > 0, "both relays took part");
  });
});
