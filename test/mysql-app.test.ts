/**
 * An application on MariaDB: the Prisma extension through `@prisma/adapter-mariadb` (enqueue in the
 * app's transaction, the batch form, idempotency keys and what a duplicate does to the caller's
 * transaction on InnoDB, the collation, `expectEnqueued`, UTC times), and every CLI command against
 * a MariaDB outbox through `mysql://` and `mariadb://` URLs. What is committed is read back from the
 * database. The store's own statements are covered by the conformance suites.
 */
import { describe, it, after } from "node:test";
import type { TestContext } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { createRelay, DuplicateIdempotencyKeyError, InvalidMailError, mailOutbox, openDatabase, type EnqueueResult } from "../src/index.js";
import { expectEnqueued, expectNotEnqueued } from "../src/testing.js";
import { main } from "../src/cli.js";
import type { MysqlDb } from "../src/db.js";
import { newId } from "../src/ids.js";
import { freshMysql, insertRow, mysqlAdmin, mysqlUrl, prismaClientFor, uniqueSchemaName, type MysqlFixture } from "./support/db.js";
import { MYSQL_ADMIN_URL, needMysql } from "./support/services.js";
import { startTestSmtp, type TestSmtp } from "../testkit/smtp.js";

const ROOT = fileURLToPath(new URL("../", import.meta.url));
const TSX = import.meta.resolve("tsx");
const FROM = "shop@example.com";

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** A promise and the function that settles it. */
function signal(): { promise: Promise<void>; fire(): void } {
  let fire!: () => void;
  const promise = new Promise<void>((resolve) => (fire = resolve));
  return { promise, fire };
}

/** The store's own connection to the fixture's database (`db.pool` for SQL beside the outbox). */
async function storeOf(fx: MysqlFixture, t: Pick<TestContext, "after">): Promise<MysqlDb> {
  const db = await openDatabase(fx.url);
  assert.equal(db.dialect, "mysql");
  t.after(() => db.close());
  return db as MysqlDb;
}

/**
 * Transactions of the fixture's database that wait for a row lock now (InnoDB's LOCK WAIT). InnoDB
 * refreshes what information_schema shows of its transactions only when it was last read more than
 * 0.1 s ago: poll slower than that (`waitFor` does).
 */
async function lockWaits(db: MysqlDb): Promise<number> {
  const rows = (await db.pool.query(
    `SELECT COUNT(*) AS n FROM information_schema.INNODB_TRX t JOIN information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id
      WHERE t.trx_state = 'LOCK WAIT' AND p.DB = ?`,
    [db.database],
  )) as { n: number }[];
  return Number(rows[0]?.n ?? 0);
}

async function waitFor(what: string, check: () => Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await sleep(150);
  }
}

describe("the extension on MariaDB (@prisma/adapter-mariadb)", () => {
  // One database and client for the tests of this group, made by the first test that runs (each
  // test first asks for MariaDB, and is skipped, or fails in CI, without it).
  let fx: MysqlFixture | null = null;
  let prisma: any;
  let ready: Promise<void> | undefined;
  async function shared(t: TestContext): Promise<boolean> {
    if (!(await needMysql(t))) return false;
    await (ready ??= (async () => {
      fx = await freshMysql();
      prisma = (await prismaClientFor(fx.url)).$extends(mailOutbox({ defaultFrom: FROM }));
    })());
    return true;
  }
  after(async () => {
    await prisma?.$disconnect();
    await fx?.cleanup();
  });

  /** Committed users with this address, and committed mails to it (read after the fact). */
  async function committed(email: string): Promise<{ users: number; mails: number }> {
    return {
      users: await prisma.user.count({ where: { email } }),
      mails: (await prisma.outboxEmail.findMany({ select: { envelopeTo: true } })).filter((m: { envelopeTo: string[] }) => m.envelopeTo.includes(email)).length,
    };
  }

  it("an interactive transaction that creates a user and enqueues a mail commits both; one that throws leaves neither", async (t) => {
    if (!(await shared(t)) || !fx) return;
    const mail: EnqueueResult = await prisma.$transaction(async (tx: any) => {
      const user = await tx.user.create({ data: { email: "itx-ann@example.com", name: "Ann" } });
      return tx.outboxEmail.enqueue({ to: user.email, subject: "Welcome", text: `Hello ${user.name}` });
    });
    assert.match(mail.messageId, /^<.+@example\.com>$/);
    const row = await prisma.outboxEmail.findUnique({ where: { id: mail.id } });
    assert.equal(row?.status, "pending");
    assert.equal(row?.messageId, mail.messageId);
    assert.deepEqual(row?.envelopeTo, ["itx-ann@example.com"], "the JSON column reads back as an array");
    assert.deepEqual(await committed("itx-ann@example.com"), { users: 1, mails: 1 });

    let rolledBack = null as EnqueueResult | null;
    await assert.rejects(
      prisma.$transaction(async (tx: any) => {
        await tx.user.create({ data: { email: "itx-bob@example.com" } });
        rolledBack = await tx.outboxEmail.enqueue({ to: "itx-bob@example.com", subject: "Welcome", text: "Hello Bob" });
        throw new Error("payment declined");
      }),
      /payment declined/,
    );
    assert.ok(rolledBack, "the enqueue ran before the rollback");
    assert.equal(await prisma.outboxEmail.findUnique({ where: { id: rolledBack!.id } }), null);
    assert.deepEqual(await committed("itx-bob@example.com"), { users: 0, mails: 0 });
  });

  it("bad input throws InvalidMailError inside the transaction: uncaught, the business write rolls back with it; caught, the transaction commits", async (t) => {
    if (!(await shared(t)) || !fx) return;
    const err = await prisma
      .$transaction(async (tx: any) => {
        await tx.user.create({ data: { email: "bad-carol@example.com" } });
        await tx.outboxEmail.enqueue({ to: "not an address", subject: "x\r\nBcc: victim@example.com", text: "x" });
      })
      .catch((e: unknown) => e);
    assert.ok(err instanceof InvalidMailError, String(err));
    assert.ok(err.problems.length >= 2, err.message);
    assert.deepEqual(await committed("bad-carol@example.com"), { users: 0, mails: 0 });
    assert.deepEqual(await committed("victim@example.com"), { users: 0, mails: 0 });

    await prisma.$transaction(async (tx: any) => {
      await tx.user.create({ data: { email: "bad-carol@example.com" } });
      const caught = await tx.outboxEmail.enqueue({ to: "bad-carol@example.com", colour: "red" }).catch((e: unknown) => e);
      assert.ok(caught instanceof InvalidMailError, String(caught));
    });
    assert.deepEqual(await committed("bad-carol@example.com"), { users: 1, mails: 0 });
  });

  it("enqueueMany in an interactive transaction commits every mail with the user; one invalid mail writes none and rolls the user back", async (t) => {
    if (!(await shared(t)) || !fx) return;
    const mails: EnqueueResult[] = await prisma.$transaction(async (tx: any) => {
      await tx.user.create({ data: { email: "many-dan@example.com" } });
      return tx.outboxEmail.enqueueMany([
        { to: "many-dan@example.com", subject: "Welcome", text: "1" },
        { to: "many-dan@example.com", subject: "Your account", text: "2", idempotencyKey: "many-dan-2", metadata: { plan: "pro" } },
      ]);
    });
    assert.equal(mails.length, 2);
    assert.deepEqual(await committed("many-dan@example.com"), { users: 1, mails: 2 });
    const keyed = await prisma.outboxEmail.findUnique({ where: { id: mails[1]!.id } });
    assert.deepEqual(keyed?.metadata, { plan: "pro" });

    const err = await prisma
      .$transaction(async (tx: any) => {
        await tx.user.create({ data: { email: "many-eve@example.com" } });
        await tx.outboxEmail.enqueueMany([
          { to: "many-eve@example.com", subject: "ok", text: "1" },
          { to: "not an address", subject: "bad", text: "2" },
        ]);
      })
      .catch((e: unknown) => e);
    assert.ok(err instanceof InvalidMailError, String(err));
    assert.ok(err.problems.some((p) => p.startsWith("mails[1].to")), err.message);
    assert.deepEqual(await committed("many-eve@example.com"), { users: 0, mails: 0 });
  });

  it("the batch form $transaction([user.create, enqueue]) commits both; a later failing element (a duplicate user) writes neither and is reported as the user's violation", async (t) => {
    if (!(await shared(t)) || !fx) return;
    const [user, mail]: [{ email: string }, EnqueueResult] = await prisma.$transaction([
      prisma.user.create({ data: { email: "batch-fay@example.com" } }),
      prisma.outboxEmail.enqueue({ to: "batch-fay@example.com", subject: "Welcome", text: "Hello Fay" }),
    ]);
    assert.equal(user.email, "batch-fay@example.com");
    assert.equal((await prisma.outboxEmail.findUnique({ where: { id: mail.id } }))?.messageId, mail.messageId);
    assert.deepEqual(await committed("batch-fay@example.com"), { users: 1, mails: 1 });

    const err = await prisma
      .$transaction([
        prisma.outboxEmail.enqueue({ to: "batch-gus@example.com", subject: "Welcome", text: "x", idempotencyKey: "batch-gus" }),
        prisma.user.create({ data: { email: "batch-fay@example.com" } }),
      ])
      .catch((e: unknown) => e);
    assert.ok(!(err instanceof DuplicateIdempotencyKeyError), String(err));
    assert.equal((err as { code?: string }).code, "P2002");
    assert.equal((err as { meta?: { modelName?: string } }).meta?.modelName, "User");
    assert.deepEqual(await committed("batch-gus@example.com"), { users: 0, mails: 0 });
  });

  it("a duplicate idempotency key in a batch (already committed, or twice in the batch) rejects with DuplicateIdempotencyKeyError and writes nothing", async (t) => {
    if (!(await shared(t)) || !fx) return;
    const first = await prisma.outboxEmail.enqueue({ to: "batch-hal@example.com", subject: "Welcome", text: "x", idempotencyKey: "batch-hal" });
    const known = await prisma
      .$transaction([
        prisma.user.create({ data: { email: "batch-hal@example.com" } }),
        prisma.outboxEmail.enqueue({ to: "batch-hal@example.com", subject: "Welcome", text: "x", idempotencyKey: "batch-hal" }),
      ])
      .catch((e: unknown) => e);
    assert.ok(known instanceof DuplicateIdempotencyKeyError, String(known));
    assert.equal(known.existingId, first.id);
    // Twice in one batch: MariaDB refuses the second INSERT (1062, Prisma's P2002 with meta.modelName
    // "OutboxEmail"), and Prisma rolls the batch back.
    const twice = await prisma
      .$transaction([
        prisma.user.create({ data: { email: "batch-hal@example.com" } }),
        prisma.outboxEmail.enqueue({ to: "batch-hal@example.com", subject: "A", text: "x", idempotencyKey: "batch-hal-2" }),
        prisma.outboxEmail.enqueue({ to: "batch-hal@example.com", subject: "B", text: "x", idempotencyKey: "batch-hal-2" }),
      ])
      .catch((e: unknown) => e);
    assert.ok(twice instanceof DuplicateIdempotencyKeyError, String(twice));
    assert.equal(twice.idempotencyKey, "batch-hal-2");
    assert.equal((twice.cause as { meta?: { modelName?: string } }).meta?.modelName, "OutboxEmail");
    assert.deepEqual(await committed("batch-hal@example.com"), { users: 0, mails: 1 });
  });

  it("a key already committed throws DuplicateIdempotencyKeyError naming the existing mail, and the caller's transaction goes on and commits", async (t) => {
    if (!(await shared(t)) || !fx) return;
    const first = await prisma.outboxEmail.enqueue({ to: "key-ida@example.com", subject: "Receipt", text: "x", idempotencyKey: "order-1001" });
    await prisma.$transaction(async (tx: any) => {
      await tx.user.create({ data: { email: "key-ida@example.com" } });
      const dup = await tx.outboxEmail.enqueue({ to: "key-ida@example.com", subject: "Receipt", text: "x", idempotencyKey: "order-1001" }).catch((e: unknown) => e);
      assert.ok(dup instanceof DuplicateIdempotencyKeyError, String(dup));
      assert.equal(dup.existingId, first.id);
      assert.equal(dup.existingMessageId, first.messageId);
      await tx.outboxEmail.enqueue({ to: "key-ida@example.com", subject: "Welcome", text: "x" });
    });
    assert.deepEqual(await committed("key-ida@example.com"), { users: 1, mails: 2 });
  });

  it("two transactions enqueue the same key at once: the second waits for the first's row lock, gets DuplicateIdempotencyKeyError when it commits, and its own transaction stays usable (InnoDB undoes only the failed INSERT)", async (t) => {
    if (!(await shared(t)) || !fx) return;
    const db = await storeOf(fx, t);
    const aInserted = signal();
    const bWaiting = signal();
    const a = prisma.$transaction(
      async (tx: any) => {
        await tx.user.create({ data: { email: "race-a@example.com" } });
        const r = await tx.outboxEmail.enqueue({ to: "race-a@example.com", subject: "A", text: "x", idempotencyKey: "race-1" });
        aInserted.fire();
        await bWaiting.promise;
        return r;
      },
      { timeout: 20_000 },
    );
    await aInserted.promise;
    let afterError: unknown = "not reached";
    const b = prisma.$transaction(
      async (tx: any) => {
        await tx.user.create({ data: { email: "race-b@example.com" } });
        // The key's row is A's and uncommitted: B's look-up does not see it, B's INSERT waits for it.
        const dup = await tx.outboxEmail.enqueue({ to: "race-b@example.com", subject: "B", text: "x", idempotencyKey: "race-1" }).catch((e: unknown) => e);
        // The same transaction, after the failed INSERT: it still reads and writes.
        afterError = await tx.user.update({ where: { email: "race-b@example.com" }, data: { name: "after the duplicate" } }).then(() => null, (e: unknown) => e);
        await tx.outboxEmail.enqueue({ to: "race-b@example.com", subject: "B, unkeyed", text: "x" });
        return dup;
      },
      { timeout: 20_000 },
    );
    await waitFor("B waits for A's row lock", async () => (await lockWaits(db)) === 1);
    bWaiting.fire();
    const [aMail, dup] = await Promise.all([a, b]);
    assert.ok(dup instanceof DuplicateIdempotencyKeyError, String(dup));
    assert.equal(dup.idempotencyKey, "race-1");
    assert.equal(dup.existingId, null, "the row was not visible to B's look-up: a concurrent transaction wrote it");
    assert.equal((dup.cause as { code?: string }).code, "P2002");
    assert.equal(afterError, null, "the transaction is still usable after the duplicate");
    const rows = await prisma.outboxEmail.findMany({ where: { idempotencyKey: "race-1" } });
    assert.deepEqual(rows.map((r: { id: string }) => r.id), [aMail.id], "one mail with the key: A's");
    assert.equal((await prisma.user.findUnique({ where: { email: "race-b@example.com" } }))?.name, "after the duplicate", "B committed its other writes");
    assert.deepEqual(await committed("race-b@example.com"), { users: 1, mails: 1 });
  });

  it("two transactions enqueue the same key at once and the first rolls back: the second's mail is written", async (t) => {
    if (!(await shared(t)) || !fx) return;
    const db = await storeOf(fx, t);
    const aInserted = signal();
    const bWaiting = signal();
    const a = prisma.$transaction(
      async (tx: any) => {
        await tx.outboxEmail.enqueue({ to: "race-c@example.com", subject: "A", text: "x", idempotencyKey: "race-2" });
        aInserted.fire();
        await bWaiting.promise;
        throw new Error("A fails");
      },
      { timeout: 20_000 },
    );
    await aInserted.promise;
    const b = prisma.$transaction((tx: any) => tx.outboxEmail.enqueue({ to: "race-d@example.com", subject: "B", text: "x", idempotencyKey: "race-2" }), { timeout: 20_000 });
    await waitFor("B waits for A's row lock", async () => (await lockWaits(db)) === 1);
    bWaiting.fire();
    await assert.rejects(a, /A fails/);
    const bMail = await b;
    const rows = await prisma.outboxEmail.findMany({ where: { idempotencyKey: "race-2" } });
    assert.deepEqual(rows.map((r: { id: string }) => r.id), [bMail.id]);
  });

  it("with the default collation (utf8mb4_unicode_ci) keys that differ only in case, accents or trailing spaces are the same key", async (t) => {
    if (!(await shared(t)) || !fx) return;
    const first = await prisma.outboxEmail.enqueue({ to: "case-jo@example.com", subject: "x", text: "x", idempotencyKey: "Invoice-42" });
    for (const same of ["invoice-42", "INVOICE-42", "Invoice-42 ", "Ìnvoice-42"]) {
      const dup = await prisma.outboxEmail.enqueue({ to: "case-jo@example.com", subject: "x", text: "x", idempotencyKey: same }).catch((e: unknown) => e);
      assert.ok(dup instanceof DuplicateIdempotencyKeyError, `${JSON.stringify(same)}: ${dup}`);
      assert.equal(dup.existingId, first.id);
    }
    // Not the same key: another character, or a leading space.
    await prisma.outboxEmail.enqueue({ to: "case-jo@example.com", subject: "x", text: "x", idempotencyKey: "Invoice-43" });
    await prisma.outboxEmail.enqueue({ to: "case-jo@example.com", subject: "x", text: "x", idempotencyKey: " Invoice-42" });
    assert.deepEqual(await committed("case-jo@example.com"), { users: 0, mails: 3 });
  });

  it("expectEnqueued(tx) sees what this transaction enqueued on MariaDB, and expectNotEnqueued what a rolled-back one did", async (t) => {
    if (!(await shared(t)) || !fx) return;
    await prisma.$transaction(async (tx: any) => {
      await tx.user.create({ data: { email: "test-kim@example.com" } });
      await tx.outboxEmail.enqueue({ to: "test-kim@example.com", subject: "Welcome, Kim", text: "x", idempotencyKey: "signup-kim", metadata: { userId: 7 } });
      const [mail] = await expectEnqueued(tx, { to: "TEST-KIM@example.com", subject: /welcome/i, idempotencyKey: "signup-kim", metadata: { userId: 7 }, count: 1 });
      assert.equal(mail?.status, "pending");
      assert.match(mail!.raw.toString("utf8"), /^Subject: Welcome, Kim\r$/m);
      await assert.rejects(expectEnqueued(tx, { to: "ann@example.com" }));
    });
    await assert.rejects(
      prisma.$transaction(async (tx: any) => {
        await tx.outboxEmail.enqueue({ to: "test-lee@example.com", subject: "Welcome", text: "x" });
        throw new Error("rolled back");
      }),
      /rolled back/,
    );
    await expectNotEnqueued(prisma, { to: "test-lee@example.com" });
  });

  it("the times enqueue writes are UTC whatever Node's or the connection's time zone: a mail enqueued now is due now for the store (TZ=America/New_York)", async (t) => {
    if (!(await shared(t)) || !fx) return;
    const tz = process.env.TZ;
    process.env.TZ = "America/New_York";
    t.after(() => {
      if (tz === undefined) delete process.env.TZ;
      else process.env.TZ = tz;
    });
    assert.equal(new Date("2025-01-15T12:00:00Z").getTimezoneOffset(), 300, "Node runs in New York time");
    const db = await storeOf(fx, t);
    // An application whose connections run in a time zone other than UTC (a server set to it).
    const [{ PrismaClient }, { PrismaMariaDb }] = await Promise.all([import("./prisma/mysql/generated/client.js"), import("@prisma/adapter-mariadb")]);
    const u = new URL(fx.url);
    const client = new PrismaClient({
      adapter: new PrismaMariaDb({ host: u.hostname, port: Number(u.port || 3306), user: u.username, database: fx.database, connectionLimit: 1, initSql: "SET time_zone = '-05:00'" } as never),
    }).$extends(mailOutbox({ defaultFrom: FROM }));
    t.after(() => client.$disconnect());
    const [session] = (await client.$queryRawUnsafe("SELECT @@session.time_zone AS zone")) as { zone: string }[];
    assert.equal(session?.zone, "-05:00");

    const before = Date.now();
    const mail: EnqueueResult = await client.$transaction((tx: any) => tx.outboxEmail.enqueue({ to: "tz-max@example.com", subject: "Now", text: "x" }));
    const later = await client.outboxEmail.enqueue({ to: "tz-max@example.com", subject: "Later", text: "x", sendAt: new Date(before + 3_600_000) });
    const rows = (await db.pool.query(
      `SELECT id, send_at, next_attempt_at, created_at, next_attempt_at <= NOW(3) AS due,
              TIMESTAMPDIFF(MICROSECOND, created_at, UTC_TIMESTAMP(3)) / 1000 AS age_ms
         FROM mail_outbox WHERE id IN (?) ORDER BY id`,
      [[mail.id, later.id]],
    )) as { id: string; send_at: Date; next_attempt_at: Date; created_at: Date; due: number; age_ms: number }[];
    const now = rows.find((r) => r.id === mail.id)!;
    const due = rows.find((r) => r.id === later.id)!;
    assert.equal(Number(now.due), 1, "due at once by the database clock");
    assert.ok(Number(now.age_ms) >= -1000 && Number(now.age_ms) < 10_000, `created ${now.age_ms} ms ago by the database clock`);
    assert.ok(Math.abs(now.created_at.getTime() - before) < 10_000, `${now.created_at.toISOString()} is about ${new Date(before).toISOString()}`);
    assert.equal(now.send_at.getTime(), now.created_at.getTime());
    assert.equal(Number(due.due), 0, "a mail for an hour from now is not due");
    assert.equal(due.send_at.getTime(), before + 3_600_000, "sendAt is stored to the millisecond, in UTC");
    // Prisma reads back what it wrote.
    const read = await client.outboxEmail.findUnique({ where: { id: later.id } });
    assert.equal(read?.sendAt.getTime(), before + 3_600_000);
  });

  it("the relay hands a mail enqueued a moment ago to the MTA at once, with Node in New York time", async (t) => {
    if (!(await shared(t)) || !fx) return;
    const tz = process.env.TZ;
    process.env.TZ = "America/New_York";
    t.after(() => {
      if (tz === undefined) delete process.env.TZ;
      else process.env.TZ = tz;
    });
    const smtp = await startTestSmtp();
    t.after(() => smtp.close());
    const mail = await prisma.$transaction(async (tx: any) => {
      await tx.user.create({ data: { email: "relay-ned@example.com" } });
      return tx.outboxEmail.enqueue({ to: "relay-ned@example.com", subject: "Welcome", text: "Hello Ned" });
    });
    const relay = createRelay({ databaseUrl: fx.url, transport: smtp.url, pollIntervalMs: 50, logger: false });
    t.after(() => relay.stop());
    let sent = 0;
    for (let i = 0; i < 20 && smtp.countByMessageId().get(mail.messageId) === undefined; i++) sent += (await relay.runOnce()).sent;
    assert.ok(sent >= 1);
    assert.equal(smtp.countByMessageId().get(mail.messageId), 1);
    assert.equal((await prisma.outboxEmail.findUnique({ where: { id: mail.id } }))?.status, "sent");
  });
});

// ---------------------------------------------------------------------------------------------

interface Run {
  code: number;
  stdout: string;
  stderr: string;
  stdoutBytes: Buffer;
}

function collector() {
  const chunks: Buffer[] = [];
  return {
    write(chunk: string | Uint8Array) {
      chunks.push(Buffer.from(chunk));
      return true;
    },
    bytes: () => Buffer.concat(chunks),
  };
}

/** Run the CLI in-process. */
async function cli(args: string[], env: Record<string, string | undefined> = {}): Promise<Run> {
  const stdout = collector();
  const stderr = collector();
  const code = await main(args, { stdout, stderr, env: { USER: "tester", ...env } });
  return { code, stdout: stdout.bytes().toString("utf8"), stderr: stderr.bytes().toString("utf8"), stdoutBytes: stdout.bytes() };
}

/** Run the CLI as a real program. */
function cliProcess(args: string[], env: Record<string, string | undefined>): Promise<Run> {
  return new Promise((resolve) => {
    const { DATABASE_URL: _d, MAIL_OUTBOX_TRANSPORT: _t, ...base } = process.env;
    execFile(process.execPath, ["--import", TSX, path.join(ROOT, "src/cli.ts"), ...args], { cwd: ROOT, env: { ...base, ...env }, encoding: "buffer", timeout: 60_000 }, (error, stdout, stderr) => {
      const code = error ? (typeof error.code === "number" ? error.code : -1) : 0;
      resolve({ code, stdout: stdout.toString("utf8"), stderr: stderr.toString("utf8"), stdoutBytes: stdout });
    });
  });
}

/** A TCP port on 127.0.0.1 where nothing listens. */
async function closedPort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as net.AddressInfo).port;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

const T0 = new Date("2025-03-01T12:00:00.000Z");

interface Seed {
  status?: string;
  to?: string[];
  subject?: string;
  attempts?: number;
  createdAt?: Date;
  updatedAt?: Date;
  uncertainHandoffs?: number;
  lastError?: string | null;
  raw?: Buffer;
}

/** A row as enqueue and the relay leave it. */
async function seed(db: MysqlDb, s: Seed = {}): Promise<{ id: string; messageId: string; raw: Buffer }> {
  const id = newId();
  const messageId = `<${id}@example.test>`;
  const to = s.to ?? ["ann@example.test"];
  const raw =
    s.raw ??
    Buffer.from(
      `From: app@example.test\r\nTo: ${to.join(", ")}\r\nSubject: ${s.subject ?? "hello"}\r\nMessage-ID: ${messageId}\r\nDate: Sat, 01 Mar 2025 12:00:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nbody\r\n`,
    );
  const createdAt = s.createdAt ?? T0;
  await insertRow(db, "mail_outbox", {
    id,
    message_id: messageId,
    status: s.status ?? "pending",
    priority: 0,
    envelope_from: "app@example.test",
    envelope_to: to,
    subject: s.subject ?? "hello",
    raw,
    size: raw.length,
    attempts: s.attempts ?? 0,
    max_attempts: 5,
    send_at: createdAt,
    next_attempt_at: createdAt,
    last_error: s.lastError ?? null,
    uncertain_handoffs: s.uncertainHandoffs ?? 0,
    created_at: createdAt,
    updated_at: s.updatedAt ?? createdAt,
  });
  return { id, messageId, raw };
}

/** Both tables, for "nothing changed". */
async function dump(db: MysqlDb): Promise<string> {
  const a = await db.pool.query("SELECT * FROM mail_outbox ORDER BY id");
  const b = await db.pool.query("SELECT * FROM mail_outbox_attempt ORDER BY id");
  return JSON.stringify([a, b], (_k, v) => (typeof v === "bigint" ? String(v) : v));
}

/** A fresh outbox database and the store's connection to it, for one CLI test. */
async function cliFixture(t: TestContext): Promise<{ fx: MysqlFixture; db: MysqlDb; env: { DATABASE_URL: string } } | null> {
  if (!(await needMysql(t))) return null;
  const fx = await freshMysql(t);
  const db = await storeOf(fx, t);
  return { fx, db, env: { DATABASE_URL: fx.url } };
}

describe("the CLI on MariaDB", () => {
  it("status, list and show read the outbox through DATABASE_URL=mysql://..., mariadb://... and --database-url", async (t) => {
    const f = await cliFixture(t);
    if (!f) return;
    const { fx, db, env } = f;
    const a = await seed(db, { status: "sent", to: ["ann@example.test"], createdAt: new Date("2025-03-01T10:00:00Z"), subject: "first" });
    const b = await seed(db, { status: "held", to: ["bob@example.test", "carl@example.test"], createdAt: new Date("2025-03-01T11:00:00Z"), uncertainHandoffs: 1, subject: "second" });
    const raw = Buffer.concat([Buffer.from("Subject: bytes\r\n\r\n"), Buffer.from([0xe9, 0x00, 0xff, 0x0d, 0x0a])]);
    const d = await seed(db, { status: "dead", attempts: 5, lastError: "550 5.1.1 <dee@example.test>: Recipient address rejected", raw, createdAt: new Date("2025-03-01T09:00:00Z") });
    await insertRow(db, "mail_outbox_attempt", {
      id: newId(),
      email_id: d.id,
      attempt: 1,
      relay: "relay-a",
      started_at: new Date("2025-03-01T12:00:05Z"),
      duration_ms: 35,
      outcome: "permanent",
      response: "550 5.1.1 <dee@example.test>: Recipient address rejected",
      response_code: 550,
      error_code: "EENVELOPE",
    });

    const st = await cli(["status", "--json"], env);
    assert.equal(st.code, 0, st.stderr);
    const report = JSON.parse(st.stdout);
    assert.deepEqual(report.counts, { pending: 0, sending: 0, sent: 1, dead: 1, cancelled: 0, held: 1 });
    assert.equal(report.uncertain.total, 1);
    const text = await cli(["status"], { DATABASE_URL: fx.url.replace(/^mysql:/, "mariadb:") });
    assert.equal(text.code, 0, text.stderr);
    for (const s of ["pending", "sending", "sent", "dead", "cancelled", "held"]) assert.match(text.stdout, new RegExp(`^${s}\\s+\\d`, "m"));
    const flag = await cli(["--database-url", fx.url, "status", "--json"], {});
    assert.equal(flag.code, 0, flag.stderr);
    assert.deepEqual(JSON.parse(flag.stdout).counts, report.counts);

    const list = await cli(["list"], env);
    assert.equal(list.code, 0, list.stderr);
    const lines = list.stdout.trimEnd().split("\n");
    assert.match(lines[0]!, /^ID\s+STATUS\s+TRIES\s+CREATED\s+NEXT\s+TO\s+SUBJECT$/);
    assert.ok(lines[1]!.startsWith(b.id), list.stdout);
    assert.match(lines[1]!, /held UNCERTAIN .*2025-03-01T11:00:00Z\s+-\s+bob@example\.test \+1\s+second/);
    assert.ok(lines[2]!.startsWith(a.id));
    const ids = async (...args: string[]) => {
      const x = await cli(["--json", "list", ...args], env);
      assert.equal(x.code, 0, x.stderr);
      return (JSON.parse(x.stdout) as { id: string }[]).map((m) => m.id);
    };
    assert.deepEqual(await ids("--status", "sent"), [a.id]);
    assert.deepEqual(await ids("--status", "sent,held"), [b.id, a.id]);
    assert.deepEqual(await ids("--to", "CARL@example.test"), [b.id]);
    assert.deepEqual(await ids("--since", "2025-03-01T10:30Z"), [b.id]);
    assert.deepEqual(await ids("--until", "2025-03-01T10:30:00+00:00"), [a.id, d.id]);
    assert.deepEqual(await ids("--uncertain"), [b.id]);
    assert.deepEqual(await ids("--limit", "1"), [b.id]);
    for (const odd of ["' OR 1=1 --", "%", "_", "\\"]) assert.deepEqual(await ids("--to", odd), [], odd);

    const shown = await cli(["show", d.messageId], env);
    assert.equal(shown.code, 0, shown.stderr);
    assert.match(shown.stdout, new RegExp(`^id:\\s+${d.id}$`, "m"));
    assert.match(shown.stdout, /^status:\s+dead$/m);
    assert.match(shown.stdout, /^attempts:\n {2}2025-03-01T12:00:05\.000Z {2}#1 {2}permanent\s+relay-a {2}35ms {2}550 5\.1\.1 .*\(EENVELOPE\)$/m);
    const rawRun = await cli(["show", d.id, "--raw"], env);
    assert.equal(rawRun.code, 0, rawRun.stderr);
    assert.ok(rawRun.stdoutBytes.equals(raw), "the raw bytes come back unchanged");
    const json = JSON.parse((await cli(["show", d.id, "--json"], env)).stdout);
    assert.equal(json.attemptLog.length, 1);
    assert.deepEqual(json.envelopeTo, ["ann@example.test"]);
    assert.equal((await cli(["show", newId()], env)).code, 1);
    // The collation (utf8mb4_unicode_ci) compares Message-IDs without regard to case, as the unique
    // index does: two mails whose Message-IDs differ only in case cannot both be in the outbox.
    assert.equal(JSON.parse((await cli(["show", d.messageId.toUpperCase(), "--json"], env)).stdout).id, d.id);
    assert.equal((await cli(["show", "<nobody@example.test>"], env)).code, 1);
    assert.equal((await cli(["show", "' OR 1=1 --"], env)).code, 2);
  });

  it("replay, cancel and purge change the MariaDB outbox; --dry-run writes nothing", async (t) => {
    const f = await cliFixture(t);
    if (!f) return;
    const { db, env } = f;
    const dead = await seed(db, { status: "dead", attempts: 5, lastError: "550 no" });
    const pending = await seed(db, { status: "pending" });
    const sent = await seed(db, { status: "sent" });
    await seed(db, { status: "sent", updatedAt: new Date("2024-01-01T00:00:00Z") });
    await seed(db, { status: "held", updatedAt: new Date("2024-01-01T00:00:00Z") });
    const before = await dump(db);

    const dry = await cli(["replay", "--status", "dead", "--dry-run", "--json"], env);
    assert.equal(dry.code, 0, dry.stderr);
    assert.deepEqual(JSON.parse(dry.stdout).replayed, [{ id: dead.id, messageId: dead.messageId, from: "dead" }]);
    assert.equal(await dump(db), before, "the dry run wrote nothing");
    const bare = await cli(["replay"], env);
    assert.equal(bare.code, 2);
    const real = await cli(["replay", dead.messageId], env);
    assert.equal(real.code, 0, real.stderr);
    assert.match(real.stdout, /^replayed 1 mail$/m);
    const shown = JSON.parse((await cli(["show", dead.id, "--json"], env)).stdout);
    assert.equal(shown.status, "pending");
    assert.equal(shown.attempts, 0);
    assert.equal(shown.attemptLog.at(-1).outcome, "replayed");
    const skipped = await cli(["replay", pending.id, newId()], env);
    assert.equal(skipped.code, 1);
    assert.match(skipped.stdout, /skipped .* pending: it is pending already/);
    assert.match(skipped.stdout, /not found: /);

    const c = await cli(["cancel", pending.id, sent.id], env);
    assert.equal(c.code, 1);
    assert.match(c.stdout, /^cancelled 1 mail$/m);
    assert.match(c.stdout, new RegExp(`not cancelled ${sent.id} .* sent: it was handed over`));
    const again = await cli(["cancel", pending.messageId], env);
    assert.equal(again.code, 0, again.stderr);
    assert.equal(JSON.parse((await cli(["show", pending.id, "--json"], env)).stdout).status, "cancelled");

    const purgeDry = await cli(["purge", "--status", "sent", "--older-than", "30d", "--dry-run", "--json"], env);
    assert.equal(purgeDry.code, 0, purgeDry.stderr);
    assert.equal(JSON.parse(purgeDry.stdout).deleted, 2, "both sent mails last changed in 2025 or before");
    assert.equal((await cli(["purge", "--status", "held", "--older-than", "30d"], env)).code, 2);
    const purge = await cli(["purge", "--status", "sent", "--older-than", "30d"], env);
    assert.equal(purge.code, 0, purge.stderr);
    assert.match(purge.stdout, /^deleted 2 mails \(sent 2, dead 0, cancelled 0\) last changed before \d{4}-/);
    const counts = JSON.parse((await cli(["status", "--json"], env)).stdout).counts;
    assert.deepEqual(counts, { pending: 1, sending: 0, sent: 0, dead: 0, cancelled: 1, held: 1 });
  });

  it("pause, resume and pace set | ls | rm on MariaDB; status shows them", async (t) => {
    const f = await cliFixture(t);
    if (!f) return;
    const { env } = f;
    const paused = await cli(["pause", "--reason", "MTA maintenance", "--json"], env);
    assert.equal(paused.code, 0, paused.stderr);
    const p = JSON.parse(paused.stdout);
    assert.equal(p.scope, "all");
    assert.equal(p.paused, true);
    assert.equal(p.pause.reason, "MTA maintenance");
    assert.equal(p.pause.pausedBy, "cli:tester");
    const twice = JSON.parse((await cli(["pause", "--json"], env)).stdout);
    assert.equal(twice.paused, false, "paused already: the first pause stays");
    assert.equal((await cli(["pause", "--sender", "Slow.Example"], env)).code, 0);
    const tp = await cli(["pause", "--transport", "smtp://user:pw@127.0.0.1:2525?timeout=5000", "--json"], env);
    assert.equal(tp.code, 0, tp.stderr);
    assert.equal(JSON.parse(tp.stdout).scope, "transport:smtp://127.0.0.1:2525");
    const listed = JSON.parse((await cli(["pause", "--list", "--json"], env)).stdout) as { scope: string }[];
    assert.deepEqual(listed.map((x) => x.scope).sort(), ["all", "sender:slow.example", "transport:smtp://127.0.0.1:2525"]);
    assert.match((await cli(["status"], env)).stdout, /paused/i);
    const resumed = await cli(["resume", "--json"], env);
    assert.equal(resumed.code, 0, resumed.stderr);
    assert.equal((await cli(["resume", "--sender", "SLOW.example"], env)).code, 0);
    const all = await cli(["resume", "--all", "--json"], env);
    assert.equal(all.code, 0, all.stderr);
    assert.deepEqual(JSON.parse((await cli(["pause", "--list", "--json"], env)).stdout), []);

    const set = await cli(["pace", "set", "transport:smtp://127.0.0.1:2525", "--rate", "600/min", "--burst", "20"], env);
    assert.equal(set.code, 0, set.stderr);
    assert.equal(set.stdout, "pace transport:smtp://127.0.0.1:2525  10/s, burst 20\n");
    const reset = await cli(["pace", "set", "transport:smtp://127.0.0.1:2525", "--rate", "0.5/s"], env);
    assert.equal(reset.code, 0, reset.stderr);
    const ls = await cli(["pace", "ls", "--json"], env);
    assert.deepEqual(JSON.parse(ls.stdout).map((r: { bucket: string; rate: number; burst: number }) => [r.bucket, r.rate, r.burst]), [["transport:smtp://127.0.0.1:2525", 0.5, 1]]);
    assert.match((await cli(["status"], env)).stdout, /^pace transport:smtp:\/\/127\.0\.0\.1:2525 {2}0\.5\/s \(one every 2s\), burst 1$/m);
    assert.equal((await cli(["pace", "rm", "transport:smtp://127.0.0.1:2525"], env)).stdout, "removed the rate limit of transport:smtp://127.0.0.1:2525\n");
    assert.equal((await cli(["pace", "rm", "transport:smtp://127.0.0.1:2525"], env)).stdout, "transport:smtp://127.0.0.1:2525 had no rate limit\n");
    assert.equal((await cli(["pace", "ls"], env)).stdout, "no rate limits\n");
  });

  it("suppress add, list and remove on MariaDB, addresses compared without regard to case", async (t) => {
    const f = await cliFixture(t);
    if (!f) return;
    const { env } = f;
    const add = await cli(["suppress", "add", "Cli-One@Example.com", "cli-two@example.com", "--reason", "asked to stop", "--expires", "30d"], env);
    assert.equal(add.code, 0, add.stderr);
    assert.match(add.stdout, /^suppressed 2 addresses \(until \d{4}-.*\)\n {2}cli-one@example\.com\n {2}cli-two@example\.com\n$/);
    const again = await cli(["suppress", "add", "CLI-ONE@example.com", "--reason", "again"], env);
    assert.equal(again.code, 0, again.stderr);
    const list = await cli(["suppress", "list", "--address", "Cli-One@EXAMPLE.com"], env);
    assert.equal(list.code, 0, list.stderr);
    const lines = list.stdout.trimEnd().split("\n");
    assert.match(lines[0]!, /^ADDRESS\s+SOURCE\s+CREATED\s+EXPIRES\s+REASON$/);
    assert.match(lines[1]!, /^cli-one@example\.com\s+operator\s+\S+Z\s+never\s+again$/, "the second add replaced the first");
    assert.equal(lines.length, 2);
    const json = JSON.parse((await cli(["--json", "suppress", "list"], env)).stdout) as { address: string }[];
    assert.deepEqual(json.map((s) => s.address).sort(), ["cli-one@example.com", "cli-two@example.com"]);
    const rm = await cli(["suppress", "remove", "CLI-ONE@example.com", "nobody@example.com"], env);
    assert.equal(rm.code, 0, rm.stderr);
    assert.equal(rm.stdout, "removed 1 address from the suppression list\n  not on the list: nobody@example.com\n");
    const rmExpired = await cli(["--json", "suppress", "remove", "--expired"], env);
    assert.equal(rmExpired.code, 0, rmExpired.stderr);
    assert.equal(JSON.parse(rmExpired.stdout).removed, 0);
  });

  it("relay --once hands the due mail to the MTA and show records the hand-off", async (t) => {
    const f = await cliFixture(t);
    if (!f) return;
    const { db, env } = f;
    const smtp = await startTestSmtp();
    t.after(() => smtp.close());
    const a = await seed(db, { status: "pending" });
    const r = await cli(["relay", "--once", "--json", "--relay-id", "cli-mysql"], { ...env, MAIL_OUTBOX_TRANSPORT: smtp.url, MAIL_OUTBOX_LOG_LEVEL: "warn" });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(JSON.parse(r.stdout).sent, 1);
    assert.equal(smtp.countByMessageId().get(a.messageId), 1);
    const shown = JSON.parse((await cli(["show", a.id, "--json"], env)).stdout);
    assert.equal(shown.status, "sent");
    assert.equal(shown.attemptLog[0].relay, "cli-mysql");
  });

  it("migrate creates the tables in an empty MariaDB database, a second run has nothing to do, and doctor then passes", async (t) => {
    if (!(await needMysql(t))) return;
    const database = uniqueSchemaName("mo");
    await mysqlAdmin([`CREATE DATABASE \`${database}\` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci`]);
    t.after(() => mysqlAdmin([`DROP DATABASE IF EXISTS \`${database}\``]));
    const url = mysqlUrl(database);
    const smtp = await startTestSmtp();
    t.after(() => smtp.close());

    const notYet = await cli(["status"], { DATABASE_URL: url });
    assert.equal(notYet.code, 1);
    assert.match(notYet.stderr, /^mail-outbox: The outbox tables in .* are missing or out of date .*mail-outbox migrate/);
    const dry = await cli(["migrate", "--dry-run"], { DATABASE_URL: url });
    assert.equal(dry.code, 0, dry.stderr);
    assert.match(dry.stdout, /0001_init/);
    const m = await cliProcess(["migrate"], { DATABASE_URL: url });
    assert.equal(m.code, 0, m.stderr);
    assert.match(m.stdout, /0001_init/);
    const second = await cli(["migrate", "--json"], { DATABASE_URL: url.replace(/^mysql:/, "mariadb:") });
    assert.equal(second.code, 0, second.stderr);
    const result = JSON.parse(second.stdout);
    assert.deepEqual(result.applied ?? [], [], second.stdout);
    const d = await cli(["doctor", "--json"], { DATABASE_URL: url, MAIL_OUTBOX_TRANSPORT: smtp.url });
    assert.equal(d.code, 0, d.stdout + d.stderr);
    const checks = JSON.parse(d.stdout).checks as { name: string; status: string; message?: string }[];
    for (const c of checks.filter((x) => /database|schema|table/i.test(x.name))) assert.equal(c.status, "ok", JSON.stringify(c));
    const text = await cli(["doctor"], { DATABASE_URL: url, MAIL_OUTBOX_TRANSPORT: smtp.url });
    assert.equal(text.code, 0, text.stdout + text.stderr);
    assert.doesNotMatch(text.stdout, /fail/i);
    assert.equal((await cli(["status", "--json"], { DATABASE_URL: url })).code, 0);
  });

  it("a wrong password, an unknown database, a closed port and a malformed URL each give one line on stderr, exit 1 or 2, and never the password", async (t) => {
    if (!(await needMysql(t))) return;
    const user = `mo_${newId().replace(/-/g, "").slice(-12)}`;
    await mysqlAdmin([`CREATE USER '${user}'@'%' IDENTIFIED BY 'right-pw'`, `CREATE USER '${user}'@'localhost' IDENTIFIED BY 'right-pw'`]);
    t.after(() => mysqlAdmin([`DROP USER IF EXISTS '${user}'@'%'`, `DROP USER IF EXISTS '${user}'@'localhost'`]));
    const server = new URL(MYSQL_ADMIN_URL);
    const hostPort = `${server.hostname}:${server.port || 3306}`;
    const port = await closedPort();
    // connect_timeout=1: the pool gives up after 3 s (it retries a failed connection until then).
    // A URL that cannot be right is a usage error (exit 2), as a SQLite URL naming a missing file is.
    const cases: { name: string; url: string; reason: RegExp; reach: boolean }[] = [
      { name: "wrong password", url: `mysql://${user}:wr0ng-s3cret@${hostPort}/test?connect_timeout=1`, reason: /Access denied for user '[^']+'@'[^']+' \(using password: YES\)/, reach: true },
      { name: "unknown database", url: `mysql://root@${hostPort}/mo_no_such_db?connect_timeout=1`, reason: /Unknown database 'mo_no_such_db'|The database mo_no_such_db does not exist on the server: create it \(CREATE DATABASE/, reach: true },
      { name: "closed port", url: `mariadb://root:wr0ng-s3cret@127.0.0.1:${port}/test?connect_timeout=1`, reason: /ECONNREFUSED 127\.0\.0\.1:\d+/, reach: true },
      { name: "no database in the URL", url: `mysql://root:wr0ng-s3cret@${hostPort}`, reason: /^mail-outbox: The MySQL URL mysql:\/\/root:\*\*\*@.* names no database: write mysql:\/\/user@host:3306\/<database>\.$/, reach: false },
      { name: "unknown parameter", url: `mysql://root@${hostPort}/test?sslmode=require`, reason: /^mail-outbox: The MySQL URL parameter "sslmode" is not one prisma-mail-outbox knows/, reach: false },
    ];
    for (const c of cases) {
      for (const args of c.name === "wrong password" ? [["status"], ["show", newId()], ["pause", "--list"], ["migrate"]] : [["status"], ["migrate"]]) {
        const r = await cli(args, { DATABASE_URL: c.url });
        const what = `${c.name}, ${args[0]}: ${r.stderr}`;
        assert.equal(r.code, c.reach ? 1 : 2, what);
        const lines = r.stderr.split("\n").filter((l) => l !== "" && !/MAIL_OUTBOX_DEBUG/.test(l));
        assert.equal(lines.length, 1, `one line: ${what}`);
        assert.match(lines[0]!, c.reason, what);
        // The commands that read or change the outbox name the database (password hidden).
        if (c.reach && args[0] !== "migrate") assert.match(lines[0]!, /^mail-outbox: Cannot reach the database at (mysql|mariadb):\/\/[^ ]*@[^ ]+\/(test|mo_no_such_db)\?connect_timeout=1: /, what);
        assert.ok(!r.stderr.includes("wr0ng-s3cret") && !r.stdout.includes("wr0ng-s3cret"), `${c.name}: the password is not shown`);
      }
    }
    // As a real program, through --database-url.
    const real = await cliProcess(["--database-url", cases[0]!.url, "status"], {});
    assert.equal(real.code, 1, real.stderr);
    assert.match(real.stderr, cases[0]!.reason);
    assert.doesNotMatch(real.stderr, /wr0ng-s3cret|\n\s+at /);
    const doctor = await cli(["doctor", "--json"], { DATABASE_URL: cases[2]!.url });
    assert.equal(doctor.code, 1);
    assert.ok(!doctor.stdout.includes("wr0ng-s3cret"));
    // The right password works.
    await mysqlAdmin([`GRANT SELECT ON test.* TO '${user}'@'%'`, `GRANT SELECT ON test.* TO '${user}'@'localhost'`]);
    const ok = await cli(["doctor", "--json"], { DATABASE_URL: `mysql://${user}:right-pw@${hostPort}/test` });
    const dbCheck = (JSON.parse(ok.stdout).checks as { name: string; status: string }[]).find((x) => /database/i.test(x.name));
    assert.equal(dbCheck?.status, "ok", ok.stdout);
  });
});
