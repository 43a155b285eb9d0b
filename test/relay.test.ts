/**
 * The relay handle and its lease: options, stopping by signal or `await using`, a hand-off slower
 * than the lease, the "hold" policy for uncertain hand-offs, a transport's declared capabilities,
 * waking on PostgreSQL's NOTIFY, a database that is gone, and outbox tables that are missing at
 * start or dropped while the relay runs; the DSN request at the hand-off (ENVID, RET, VERP).
 * What is written for each hand-off: outcome.test.ts. The "verify" policy: verify.test.ts.
 */
import { describe, it, after } from "node:test";
import type { TestContext } from "node:test";
import assert from "node:assert/strict";
import { EventEmitter } from "node:events";
import { rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { randomUUID } from "node:crypto";
import { pino } from "pino";
import { createRelay, mailOutbox, migrate, openDatabase, OptionsError, DatabaseUnavailableError, SchemaNotReadyError, replayMails } from "../src/index.js";
import { freshSqlite, freshPostgres, prismaClientFor, postgresUrl, uniqueSchemaName, dropSchema, sqliteOf } from "./support/db.js";
import { startTestSmtp } from "../testkit/smtp.js";
import { needPostgres } from "./support/services.js";
import { Registry } from "prom-client";
import nodemailer from "nodemailer";
import type { CapableTransport, RawEnvelope } from "../src/transport.js";
import { main } from "../src/cli.js";
import { dsnOptions } from "../src/cli/relay.js";

const quiet = { logger: false as const };

async function query<T>(url: string, sql: string): Promise<T[]> {
  const db = await openDatabase(url);
  try {
    if (db.dialect === "postgresql") return (await db.pool.query(sql)).rows as T[];
    const stmt = sqliteOf(db).db.prepare(sql);
    return stmt.reader ? (stmt.all() as T[]) : (stmt.run(), []);
  } finally {
    await db.close();
  }
}

describe("relay options", () => {
  it("the relay command's DSN flags: --dsn-notify, --dsn-ret, --verp, --no-dsn, and the secret from MAIL_OUTBOX_BOUNCE_SECRET", () => {
    assert.deepEqual(dsnOptions({ dsn: true }, undefined), {});
    assert.deepEqual(dsnOptions({ dsn: true, dsnNotify: "failure,delay,success", dsnRet: "full", verp: true }, "0123456789abcdef0123"), {
      notify: ["FAILURE", "DELAY", "SUCCESS"],
      ret: "FULL",
      secret: "0123456789abcdef0123",
      verp: true,
    });
    assert.deepEqual(dsnOptions({ dsn: true, dsnNotify: "never" }, ""), { notify: "NEVER" });
    assert.equal(dsnOptions({ dsn: false }, "0123456789abcdef0123"), false);
    assert.throws(() => dsnOptions({ dsn: false, dsnNotify: "never", verp: true }, undefined), { message: "--no-dsn asks the MTA nothing: leave out --dsn-notify, --verp." });
    // What createRelay then checks:
    const base = { databaseUrl: "file:./x.db", transport: "smtp://127.0.0.1:25", ...quiet };
    assert.throws(() => createRelay({ ...base, dsn: dsnOptions({ dsn: true, verp: true }, undefined) }), /needs a bounce secret.*MAIL_OUTBOX_BOUNCE_SECRET/);
  });

  it("refuses bad options up front with exact messages", () => {
    const base = { databaseUrl: "file:./x.db", transport: "smtp://127.0.0.1:25", ...quiet };
    assert.throws(() => createRelay({ ...base, concurrency: 0 }), { name: "OptionsError", message: "Expected `concurrency` to be an integer >= 1, got 0." });
    assert.throws(() => createRelay({ ...base, leaseMs: 10 }), { message: "Expected `leaseMs` to be an integer >= 1000, got 10." });
    assert.throws(() => createRelay({ ...base, leaseExpiryPolicy: "drop" as never }), { message: 'Expected `leaseExpiryPolicy` to be "resend", "hold" or "verify".' });
    assert.throws(() => createRelay({ ...base, leaseExpiryPolicy: "verify", verifyWindowMs: 5 }), { message: "Expected `verifyWindowMs` to be an integer >= 1000, got 5." });
    assert.throws(() => createRelay({ ...base, dsn: { verp: true } }), /needs a bounce secret/);
    assert.throws(() => createRelay({ ...base, dsn: { secret: "short" } }), /at least 16 bytes/);
    assert.throws(() => createRelay({ ...base, dsn: { notify: ["SOMETIMES" as never] } }), OptionsError);
    assert.throws(() => createRelay({ ...base, dsn: "yes" as never }), { message: "Expected `dsn` to be an object ({ notify, ret, secret, verp }) or false." });
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
      assert.match(text, /mail_outbox_handoffs_total\{outcome="accepted"\} 1/);
      assert.match(text, /mail_outbox_claimed_total 1/);
    });

    for (const pipelining of [true, false]) {
      it(`asks for DSN at the hand-off (${pipelining ? "pipelined client" : "nodemailer's pool"}): ENVID = the mail id and RET=HDRS by default, a signed token and a VERP return path with a secret, nothing with dsn: false`, async (t) => {
        const s = await setup(t);
        if (!s) return;
        const url = `${s.smtp.url}?pipelining=${pipelining}`;
        const plain = await s.prisma.outboxEmail.enqueue({ from: "bounces@example.com", to: "d1@example.com", subject: "dsn", text: "x" });
        await createRelay({ databaseUrl: s.fx.url, transport: url, ...quiet }).runOnce();
        const secret = "a-bounce-secret-of-32-characters";
        const signed = await s.prisma.outboxEmail.enqueue({ from: "bounces@example.com", to: "d2@example.com", subject: "dsn", text: "x" });
        await createRelay({ databaseUrl: s.fx.url, transport: url, dsn: { secret, verp: true, notify: ["FAILURE"] }, ...quiet }).runOnce();
        const none = await s.prisma.outboxEmail.enqueue({ from: "bounces@example.com", to: "d3@example.com", subject: "dsn", text: "x" });
        await createRelay({ databaseUrl: s.fx.url, transport: url, dsn: false, ...quiet }).runOnce();
        const [a, b, c] = [plain, signed, none].map((m) => s.smtp.messages.find((x) => x.messageId === m.messageId)!);
        assert.equal(a!.envelopeFrom, "bounces@example.com");
        assert.equal(a!.mailFromArgs.ENVID, plain.id);
        assert.equal(a!.mailFromArgs.RET, "HDRS");
        const token = b!.mailFromArgs.ENVID!;
        assert.match(token, /^[a-z2-7]{26}\.[a-z2-7]{20}$/, "the ENVID is the signed token");
        assert.equal(b!.envelopeFrom, `bounces+${token}@example.com`, "VERP: the token in the return path");
        assert.deepEqual(c!.mailFromArgs, {}, "dsn: false asks nothing");
        const rows = await query<{ envelope_from: string }>(s.fx.url, "SELECT envelope_from FROM mail_outbox ORDER BY created_at");
        assert.ok(rows.every((r) => r.envelope_from === "bounces@example.com"), "the row keeps its envelope sender");
      });
    }

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

describe("a transport's declared capabilities", () => {
  it("the relay hands composed mail to the transport's declared sendRaw, as many at once as its declared capacity", async () => {
    const fx = await freshSqlite();
    const prisma: any = (await prismaClientFor(fx.url)).$extends(mailOutbox({ defaultFrom: "app@example.com" }));
    try {
      await prisma.outboxEmail.enqueueMany(Array.from({ length: 30 }, (_, i) => ({ to: `cap${i}@example.com`, subject: `cap ${i}`, text: "x" })));
      let inFlight = 0;
      let peak = 0;
      let viaSend = 0;
      const received: Buffer[] = [];
      const transport: CapableTransport & { name: string; version: string; send(mail: unknown, callback: (err: Error | null) => void): void } = {
        name: "declared",
        version: "1",
        send(_mail, callback) {
          viaSend++;
          callback(new Error("the relay should have used sendRaw"));
        },
        capabilities: {
          capacity: 25,
          async sendRaw(envelope: RawEnvelope, raw: Buffer) {
            peak = Math.max(peak, ++inFlight);
            await new Promise((r) => setTimeout(r, 20));
            inFlight--;
            received.push(raw);
            return { response: "250 2.0.0 Ok: queued as ABC123", accepted: [...envelope.to], rejected: [], rejectedErrors: [] };
          },
        },
      };
      const counts = await createRelay({ databaseUrl: fx.url, transport: nodemailer.createTransport(transport as never), ...quiet }).runOnce();
      assert.equal(counts.sent, 30);
      assert.equal(received.length, 30);
      assert.equal(viaSend, 0, "never through nodemailer's Mailer");
      assert.equal(peak, 25, "the default concurrency grows to the declared capacity");
    } finally {
      await prisma.$disconnect();
      await fx.cleanup();
    }
  });
});

describe("relay on PostgreSQL with LISTEN", () => {
  it("a committed mail wakes the relay at once, also after its LISTEN connection was cut, without waiting for the poll interval", async (t) => {
    if (!(await needPostgres(t))) return;
    const fx = await freshPostgres();
    const smtp = await startTestSmtp();
    const prisma: any = (await prismaClientFor(fx.url)).$extends(mailOutbox({ defaultFrom: "app@example.com" }));
    const relay = createRelay({ databaseUrl: fx.url, transport: smtp.url, relayId: `listen-${randomUUID().slice(0, 8)}`, pollIntervalMs: 600_000, ...quiet });
    try {
      await relay.start();
      await prisma.outboxEmail.enqueue({ to: "wake1@example.com", subject: "wake 1", text: "x" });
      await smtp.waitFor(1, 20_000);
      // Cut the relay's LISTEN connection, as a server restart or a network blip would.
      const cut = await query<{ n: number }>(
        fx.url,
        `SELECT count(pg_terminate_backend(pid))::int AS n FROM pg_stat_activity WHERE application_name LIKE '%${relay.id}%listen%'`,
      );
      assert.equal(cut[0]?.n, 1, "the relay listens on a connection of its own");
      await new Promise((r) => setTimeout(r, 200));
      await prisma.outboxEmail.enqueue({ to: "wake2@example.com", subject: "wake 2", text: "x" });
      await smtp.waitFor(2, 20_000);
    } finally {
      await relay.stop();
      await prisma.$disconnect();
      await smtp.close();
      await fx.cleanup();
    }
  });
});

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

/** A database without the outbox tables: an empty SQLite file, or a PostgreSQL schema that does not exist yet. */
async function emptyDatabase(t: TestContext, dialect: "sqlite" | "postgresql"): Promise<string> {
  if (dialect === "sqlite") {
    const file = path.join(tmpdir(), `mail-outbox-empty-${randomUUID()}.db`);
    await writeFile(file, ""); // a zero-byte file is an empty SQLite database
    t.after(async () => {
      for (const suffix of ["", "-wal", "-shm"]) await rm(file + suffix, { force: true });
    });
    return `file:${file}`;
  }
  const schema = uniqueSchemaName("empty");
  t.after(() => dropSchema(schema));
  return postgresUrl(schema);
}

function logCollector() {
  const lines: { level: number; msg: string; [k: string]: unknown }[] = [];
  const logger = pino({ level: "info" }, { write: (line: string) => void lines.push(JSON.parse(line)) });
  return { logger, lines };
}

async function until(what: string, ok: () => boolean, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > deadline) throw new Error(`gave up waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

for (const dialect of ["sqlite", "postgresql"] as const) {
  describe(`relay on ${dialect} without the outbox tables`, () => {
    it("start() and runOnce() refuse with SchemaNotReadyError naming the missing tables and the command that creates them", async (t) => {
      if (dialect === "postgresql" && !(await needPostgres(t))) return;
      const url = await emptyDatabase(t, dialect);
      for (const run of [(r: ReturnType<typeof createRelay>) => r.start(), (r: ReturnType<typeof createRelay>) => r.runOnce()]) {
        const relay = createRelay({ databaseUrl: url, transport: "smtp://127.0.0.1:25", ...quiet });
        await assert.rejects(run(relay), (err: unknown) => {
          assert.ok(err instanceof SchemaNotReadyError, String(err));
          assert.deepEqual([...err.missingTables].sort(), ["mail_outbox", "mail_outbox_attempt", "mail_outbox_lock", "mail_outbox_pause", "mail_outbox_rate"]);
          assert.match(err.message, /^The relay did not start: the outbox tables in .* are not ready \(table mail_outbox is missing; table mail_outbox_attempt is missing; table mail_outbox_pause is missing; table mail_outbox_rate is missing; table mail_outbox_lock is missing\)/);
          assert.match(err.message, /`mail-outbox migrate`/);
          assert.match(err.message, /`prisma migrate deploy`/);
          assert.doesNotMatch(err.message, /\n/, "one line");
          return true;
        });
        await relay.stop();
      }
    });

    it("start() refuses tables of the wrong shape, naming the column", async (t) => {
      if (dialect === "postgresql" && !(await needPostgres(t))) return;
      const url = await emptyDatabase(t, dialect);
      const db = await openDatabase(url);
      await migrate(db);
      if (db.dialect === "postgresql") await db.pool.query("ALTER TABLE mail_outbox ALTER COLUMN envelope_to TYPE text");
      else sqliteOf(db).db.exec("ALTER TABLE mail_outbox DROP COLUMN mta_queue_id; ALTER TABLE mail_outbox ADD COLUMN mta_queue_id INTEGER");
      await db.close();
      const relay = createRelay({ databaseUrl: url, transport: "smtp://127.0.0.1:25", ...quiet });
      await assert.rejects(relay.start(), (err: unknown) => {
        assert.ok(err instanceof SchemaNotReadyError, String(err));
        assert.match(err.message, dialect === "postgresql" ? /column mail_outbox\.envelope_to has type text, expected jsonb/ : /column mail_outbox\.mta_queue_id has type INTEGER, expected TEXT/);
        return true;
      });
    });

    it("the relay command exits 1 with one line that says to run mail-outbox migrate", async (t) => {
      if (dialect === "postgresql" && !(await needPostgres(t))) return;
      const url = await emptyDatabase(t, dialect);
      const out: string[] = [];
      const err: string[] = [];
      const signals = new EventEmitter();
      const io = { stdout: { write: (c: string) => (out.push(c), true) }, stderr: { write: (c: string) => (err.push(c), true) }, env: { DATABASE_URL: url, MAIL_OUTBOX_TRANSPORT: "smtp://127.0.0.1:25" }, signals };
      const run = main(["relay"], io as never);
      // Before the fix the relay ran on ("database unreachable; backing off"): stop it rather than hang the test.
      const code = await Promise.race([run, new Promise<string>((r) => setTimeout(() => r("still running"), 20_000))]);
      if (code === "still running") {
        signals.emit("SIGTERM");
        await run;
      }
      assert.equal(code, 1, err.join(""));
      const lines = err.join("").trim().split("\n");
      assert.equal(lines.length, 1, err.join(""));
      // Logs are JSON here (stderr is not a terminal): the error is one fatal JSON line, no plain text after it.
      const line = JSON.parse(lines[0]!) as { level: number; exitCode: number; msg: string };
      assert.equal(line.level, 60);
      assert.equal(line.exitCode, 1);
      assert.match(line.msg, /^The relay did not start: .*table mail_outbox is missing.*`mail-outbox migrate`/);
    });
  });

  describe(`relay on ${dialect} when a table is dropped while it runs`, () => {
    it("runOnce() on a relay whose table was dropped since its last run rejects with SchemaNotReadyError naming it, and works again after migrate", async (t) => {
      if (dialect === "postgresql" && !(await needPostgres(t))) return;
      const fx = dialect === "sqlite" ? await freshSqlite() : await freshPostgres();
      t.after(() => fx.cleanup());
      const relay = createRelay({ databaseUrl: fx.url, transport: "smtp://127.0.0.1:25", ...quiet });
      t.after(() => relay.stop());
      assert.equal((await relay.runOnce()).claimed, 0);
      await query(fx.url, "DROP TABLE mail_outbox_attempt");
      await assert.rejects(relay.runOnce(), (err: unknown) => {
        assert.ok(err instanceof SchemaNotReadyError, String(err));
        assert.deepEqual(err.missingTables, ["mail_outbox_attempt"]);
        assert.match(err.message, /table mail_outbox_attempt is missing.*`mail-outbox migrate`/);
        return true;
      });
      const db = await openDatabase(fx.url);
      await migrate(db);
      await db.close();
      assert.equal((await relay.runOnce()).claimed, 0);
    });

    it("reports the missing table by name (not as a database outage), and resumes once migrate has recreated it", async (t) => {
      if (dialect === "postgresql" && !(await needPostgres(t))) return;
      const fx = dialect === "sqlite" ? await freshSqlite() : await freshPostgres();
      const smtp = await startTestSmtp();
      const prisma: any = (await prismaClientFor(fx.url)).$extends(mailOutbox({ defaultFrom: "app@example.com" }));
      const { logger, lines } = logCollector();
      const warnings: Error[] = [];
      const relay = createRelay({ databaseUrl: fx.url, transport: smtp.url, pollIntervalMs: 50, logger });
      relay.on("warning", (e) => warnings.push(e));
      try {
        await relay.start();
        // Both at once, so the report cannot catch the moment between the two.
        const dropper = await openDatabase(fx.url);
        // CASCADE: mail_outbox_delivery refers to mail_outbox (its foreign key goes, the table stays).
        if (dropper.dialect === "postgresql") await dropper.pool.query("DROP TABLE mail_outbox_attempt, mail_outbox CASCADE");
        else sqliteOf(dropper).db.exec("DROP TABLE mail_outbox_attempt; DROP TABLE mail_outbox");
        await dropper.close();
        await until("a warning", () => warnings.length > 0);
        const report = warnings[0];
        assert.ok(report instanceof SchemaNotReadyError, String(report));
        assert.deepEqual([...report.missingTables].sort(), ["mail_outbox", "mail_outbox_attempt"]);
        const error = lines.find((l) => l.level === 50);
        assert.match(error?.msg ?? "", /changed while the relay runs \(table mail_outbox is missing.*`mail-outbox migrate`/);
        assert.ok(!lines.some((l) => /unreachable/.test(l.msg)), lines.map((l) => l.msg).join("\n"));

        const db = await openDatabase(fx.url);
        const repaired = await migrate(db);
        await db.close();
        assert.ok(repaired.repaired.some((r) => r.startsWith("table mail_outbox ")), repaired.repaired.join("\n"));
        await until("the tables are back", () => lines.some((l) => l.msg === "the outbox tables are back"));
        const { messageId } = await prisma.outboxEmail.enqueue({ to: "back@example.com", subject: "back", text: "x" });
        await smtp.waitFor(1, 10_000);
        assert.equal(smtp.countByMessageId().get(messageId), 1);
      } finally {
        await relay.stop();
        await prisma.$disconnect();
        await smtp.close();
        await fx.cleanup();
      }
    });
  });
}
