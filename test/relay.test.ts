/**
 * The relay handle and its lease: options, stopping by signal or `await using`, a hand-off slower
 * than the lease, the "hold" policy for uncertain hand-offs, and a database that is gone.
 */
import { describe, it, after } from "node:test";
import assert from "node:assert/strict";
import { createRelay, mailOutbox, openDatabase, OptionsError, DatabaseUnavailableError, replayMails } from "../src/index.js";
import { freshSqlite, freshPostgres, prismaClientFor } from "./support/db.js";
import { startTestSmtp } from "./support/smtp.js";
import { needPostgres } from "./support/services.js";
import { Registry } from "prom-client";
import { main } from "../src/cli.js";

const quiet = { logger: false as const };

async function query<T>(url: string, sql: string): Promise<T[]> {
  const db = await openDatabase(url);
  try {
    if (db.dialect === "postgresql") return (await db.pool.query(sql)).rows as T[];
    const stmt = db.db.prepare(sql);
    return stmt.reader ? (stmt.all() as T[]) : (stmt.run(), []);
  } finally {
    await db.close();
  }
}

describe("relay options", () => {
  it("refuses bad options up front with exact messages", () => {
    const base = { databaseUrl: "file:./x.db", transport: "smtp://127.0.0.1:25", ...quiet };
    assert.throws(() => createRelay({ ...base, concurrency: 0 }), { name: "OptionsError", message: "Expected `concurrency` to be an integer >= 1, got 0." });
    assert.throws(() => createRelay({ ...base, leaseMs: 10 }), { message: "Expected `leaseMs` to be an integer >= 1000, got 10." });
    assert.throws(() => createRelay({ ...base, leaseExpiryPolicy: "drop" as never }), OptionsError);
    assert.throws(() => createRelay({ ...base, backoff: { jitter: 2 } }), /backoff.jitter/);
    assert.throws(() => createRelay({ transport: "smtp://127.0.0.1:25" } as never), /databaseUrl/);
    assert.throws(() => createRelay({ databaseUrl: "file:./x.db" } as never), /transport/);
  });
});

for (const dialect of ["sqlite", "postgresql"] as const) {
  describe(`relay lifecycle on ${dialect}`, () => {
    async function setup(t: Parameters<typeof needPostgres>[0], smtpOptions: Parameters<typeof startTestSmtp>[0] = {}) {
      if (dialect === "postgresql" && !(await needPostgres(t))) return null;
      const fx = dialect === "sqlite" ? await freshSqlite() : await freshPostgres();
      const smtp = await startTestSmtp(smtpOptions);
      const prisma: any = (await prismaClientFor(fx.url)).$extends(mailOutbox({ defaultFrom: "app@example.com" }));
      after(async () => {
        await prisma.$disconnect();
        await smtp.close();
        await fx.cleanup();
      });
      return { fx, smtp, prisma };
    }

    it("stops when its AbortSignal is aborted, and when disposed with await using", async (t) => {
      const s = await setup(t);
      if (!s) return;
      const controller = new AbortController();
      const relay = createRelay({ databaseUrl: s.fx.url, transport: s.smtp.url, signal: controller.signal, pollIntervalMs: 50, ...quiet });
      await relay.start();
      await s.prisma.outboxEmail.enqueue({ to: "sig@example.com", subject: "signal", text: "x" });
      await s.smtp.waitFor(1, 5000);
      controller.abort();
      const counts = await relay.stopped;
      assert.equal(counts.sent, 1);
      {
        await using disposable = createRelay({ databaseUrl: s.fx.url, transport: s.smtp.url, pollIntervalMs: 50, ...quiet });
        await disposable.start();
        await s.prisma.outboxEmail.enqueue({ to: "dispose@example.com", subject: "dispose", text: "x" });
        await s.smtp.waitFor(2, 5000);
      }
      assert.equal(s.smtp.messages.length, 2);
    });

    it("counts its hand-offs in Prometheus metrics", async (t) => {
      const s = await setup(t);
      if (!s) return;
      const registry = new Registry();
      await s.prisma.outboxEmail.enqueue({ to: "m1@example.com", subject: "m", text: "x" });
      await createRelay({ databaseUrl: s.fx.url, transport: s.smtp.url, metricsRegistry: registry, ...quiet }).runOnce();
      const text = await registry.metrics();
      assert.match(text, /mail_outbox_handoffs_total\{outcome="sent"\} 1/);
      assert.match(text, /mail_outbox_claimed_total 1/);
    });

    it("renews the lease of a hand-off slower than the lease, so another relay does not take the mail over", async (t) => {
      const s = await setup(t, { faults: (ctx) => (ctx.phase === "data" ? { stallMs: 2500 } : undefined) });
      if (!s) return;
      const { messageId } = await s.prisma.outboxEmail.enqueue({ to: "slow@example.com", subject: "slow", text: "x" });
      const a = createRelay({ databaseUrl: s.fx.url, transport: s.smtp.url, relayId: "slow-a", leaseMs: 1000, pollIntervalMs: 50, ...quiet });
      const b = createRelay({ databaseUrl: s.fx.url, transport: s.smtp.url, relayId: "watcher-b", leaseMs: 1000, pollIntervalMs: 50, ...quiet });
      await a.start();
      await new Promise((r) => setTimeout(r, 200));
      await b.start();
      await s.smtp.waitFor(1, 10_000);
      await new Promise((r) => setTimeout(r, 1500));
      await Promise.all([a.stop(), b.stop()]);
      assert.equal(s.smtp.countByMessageId().get(messageId), 1);
      assert.equal(b.counts().rescued, 0);
      const [row] = await query<{ status: string; uncertain_handoffs: number }>(s.fx.url, "SELECT status, uncertain_handoffs FROM mail_outbox");
      assert.deepEqual({ ...row, uncertain_handoffs: Number(row?.uncertain_handoffs) }, { status: "sent", uncertain_handoffs: 0 });
    });

    it('with leaseExpiryPolicy "hold", mail whose relay died is held for an operator, and replay sends it', async (t) => {
      const s = await setup(t);
      if (!s) return;
      const { id, messageId } = await s.prisma.outboxEmail.enqueue({ to: "held@example.com", subject: "held", text: "x" });
      // A relay that claimed the mail and died: its lease has run out.
      const past = dialect === "postgresql" ? "now() - interval '1 minute'" : "'2000-01-01T00:00:00.000+00:00'";
      await query(s.fx.url, `UPDATE mail_outbox SET status = 'sending', lease_owner = 'dead-relay', lease_expires_at = ${past}, attempts = 1`);
      const counts = await createRelay({ databaseUrl: s.fx.url, transport: s.smtp.url, leaseExpiryPolicy: "hold", ...quiet }).runOnce();
      assert.equal(counts.rescued, 1);
      assert.equal(counts.sent, 0);
      const [row] = await query<{ status: string; uncertain_handoffs: number }>(s.fx.url, "SELECT status, uncertain_handoffs FROM mail_outbox");
      assert.equal(row?.status, "held");
      assert.equal(Number(row?.uncertain_handoffs), 1);
      const replayed = await replayMails(s.fx.url, { ids: [id] });
      assert.equal(replayed.replayed.length, 1);
      assert.equal((await createRelay({ databaseUrl: s.fx.url, transport: s.smtp.url, ...quiet }).runOnce()).sent, 1);
      assert.equal(s.smtp.countByMessageId().get(messageId), 1);
      const outcomes = await query<{ outcome: string }>(s.fx.url, "SELECT outcome FROM mail_outbox_attempt ORDER BY started_at, outcome");
      assert.deepEqual(outcomes.map((o) => o.outcome).sort(), ["accepted", "lease_expired", "replayed"]);
    });
  });
}

describe("relay without a database", () => {
  it("runOnce() gives up with DatabaseUnavailableError when PostgreSQL cannot be reached", async () => {
    const relay = createRelay({ databaseUrl: "postgresql://postgres:s3cr3t@127.0.0.1:1/none", transport: "smtp://127.0.0.1:25", ...quiet });
    const started = Date.now();
    await assert.rejects(relay.runOnce(), (err: unknown) => {
      assert.ok(err instanceof DatabaseUnavailableError, String(err));
      assert.doesNotMatch(err.message, /s3cr3t/);
      return true;
    });
    assert.ok(Date.now() - started < 20_000);
  });
});

describe("doctor on SQLite", () => {
  it("flags rows whose times an adapter with timestampFormat unixepoch-ms wrote as numbers", async () => {
    const fx = await freshSqlite();
    const prisma: any = (await prismaClientFor(fx.url)).$extends(mailOutbox({ defaultFrom: "app@example.com" }));
    try {
      await prisma.outboxEmail.enqueue({ to: "t@example.com", subject: "t", text: "x" });
      const run = async () => {
        const out: string[] = [];
        const io = { stdout: { write: (c: string) => (out.push(c), true) }, stderr: { write: (c: string) => (out.push(c), true) }, env: { DATABASE_URL: fx.url, MAIL_OUTBOX_TRANSPORT: "sendmail:/bin/true" } };
        const code = await main(["doctor", "--json"], io as never);
        return { code, report: JSON.parse(out.join("")) as { checks: { name: string; ok: boolean; detail: string }[] } };
      };
      const good = await run();
      assert.equal(good.report.checks.find((c) => c.name === "times")?.ok, true);
      await query(fx.url, "UPDATE mail_outbox SET next_attempt_at = 1795870000000");
      const bad = await run();
      assert.equal(bad.code, 1);
      assert.match(bad.report.checks.find((c) => c.name === "times")?.detail ?? "", /1 row\(s\) store times as numbers.*unixepoch-ms/);
    } finally {
      await prisma.$disconnect();
      await fx.cleanup();
    }
  });
});
