/**
 * The suppression list: enqueue() under the policies "refuse", "skip" and "off" (inside the
 * application's transaction, interactive and batch), the operator functions and the
 * `mail-outbox suppress` commands, on real SQLite files and the real PostgreSQL server.
 * What is committed is read back from the database.
 */
import { describe, it, before, after, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { randomUUID } from "node:crypto";
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { mailOutbox, type EnqueueResult } from "../src/extension.js";
import { listMails, listSuppressions, showMail, suppress, unsuppress } from "../src/admin.js";
import { OptionsError, SchemaError, SuppressedRecipientError } from "../src/errors.js";
import { openDatabase, parseDatabaseUrl, type Db } from "../src/db.js";
import { main } from "../src/cli.js";
import { freshPostgres, freshSqlite, prismaClientFor } from "./support/db.js";
import { needPostgres } from "./support/services.js";

const ROOT = fileURLToPath(new URL("../", import.meta.url));
const FROM = "shop@example.com";

type Dialect = "sqlite" | "postgresql";

/** The tests' Prisma client with Prisma's query log on: the SQL each call sent. */
async function loggingClient(url: string): Promise<{ client: any; queries: string[] }> {
  const location = parseDatabaseUrl(url);
  const queries: string[] = [];
  const log = [{ emit: "event", level: "query" }] as const;
  let client: any;
  if (location.dialect === "sqlite") {
    const [{ PrismaClient }, { PrismaBetterSqlite3 }] = await Promise.all([import("./prisma/sqlite/generated/client.js"), import("@prisma/adapter-better-sqlite3")]);
    client = new PrismaClient({ adapter: new PrismaBetterSqlite3({ url: `file:${location.filename}` }), log: [...log] });
  } else if (location.dialect === "postgresql") {
    const [{ PrismaClient }, { PrismaPg }] = await Promise.all([import("./prisma/postgresql/generated/client.js"), import("@prisma/adapter-pg")]);
    client = new PrismaClient({ adapter: new PrismaPg({ connectionString: location.connectionString }, { schema: location.schema }), log: [...log] });
  } else {
    throw new Error("this test helper covers SQLite and PostgreSQL");
  }
  client.$on("query", (e: { query: string }) => queries.push(e.query));
  return { client, queries };
}

async function cli(args: string[], url: string): Promise<{ code: number; stdout: string; stderr: string }> {
  let stdout = "";
  let stderr = "";
  const code = await main(args, {
    stdout: { write: (c: string | Uint8Array) => (stdout += c.toString()) },
    stderr: { write: (c: string | Uint8Array) => (stderr += c.toString()) },
    env: { DATABASE_URL: url, USER: "tester" },
  });
  return { code, stdout, stderr };
}

for (const dialect of ["sqlite", "postgresql"] as const satisfies readonly Dialect[]) {
  describe(`suppression on ${dialect}`, () => {
    let fx: { url: string; cleanup(): Promise<void> } | null = null;
    let db: Db;
    let base: any;
    let refuse: any;
    let skip: any;

    before(async (t) => {
      if (dialect === "postgresql" && !(await needPostgres(t as any))) return;
      fx = dialect === "sqlite" ? await freshSqlite() : await freshPostgres();
      db = await openDatabase(fx.url);
      base = await prismaClientFor(fx.url);
      refuse = base.$extends(mailOutbox({ defaultFrom: FROM, suppression: "refuse" }));
      skip = base.$extends(mailOutbox({ defaultFrom: FROM, suppression: "skip" }));
      await suppress(db, ["Ann@Example.COM", "zoe@example.com"], { reason: "5.1.1 user unknown", source: "bounce" });
    });
    after(async () => {
      await base?.$disconnect();
      await db?.close();
      await fx?.cleanup();
    });

    async function mailsTo(address: string): Promise<{ id: string; status: string; envelopeTo: string[]; lastError: string | null }[]> {
      const rows = await base.outboxEmail.findMany({ select: { id: true, status: true, envelopeTo: true, lastError: true } });
      return rows.filter((m: { envelopeTo: string[] }) => m.envelopeTo.some((r) => r.toLowerCase() === address.toLowerCase()));
    }
    const users = (email: string) => base.user.count({ where: { email } });

    it('"refuse" throws SuppressedRecipientError before any insert; the app may catch it and commit the rest of its transaction', async (t) => {
      if (!fx) return t.skip("no database");
      const caught = await refuse.$transaction(async (tx: any) => {
        await tx.user.create({ data: { email: "r1-user@example.com" } });
        const other = await tx.outboxEmail.enqueue({ to: "r1-bob@example.com", subject: "Welcome", text: "x" });
        const err = await tx.outboxEmail.enqueue({ to: ["r1-carl@example.com", "ANN@example.com"], subject: "Welcome", text: "x" }).catch((e: unknown) => e);
        return { err, other };
      });
      assert.ok(caught.err instanceof SuppressedRecipientError, String(caught.err));
      assert.deepEqual(caught.err.recipients, ["ann@example.com"]);
      assert.match(caught.err.message, /ann@example\.com is on the suppression list/);
      assert.equal(await users("r1-user@example.com"), 1, "the business write committed");
      assert.equal((await mailsTo("r1-bob@example.com")).length, 1, "the other mail of the transaction committed");
      assert.equal((await mailsTo("r1-carl@example.com")).length, 0, "the refused mail was never written");
      assert.deepEqual(caught.other.suppressed, []);
    });

    it('"refuse" left uncaught rolls the whole transaction back: the user and every mail of it', async (t) => {
      if (!fx) return t.skip("no database");
      const err = await refuse
        .$transaction(async (tx: any) => {
          await tx.user.create({ data: { email: "r2-user@example.com" } });
          await tx.outboxEmail.enqueue({ to: "r2-bob@example.com", subject: "Welcome", text: "x" });
          await tx.outboxEmail.enqueue({ to: "zoe@EXAMPLE.com", subject: "Welcome", text: "x" });
        })
        .catch((e: unknown) => e);
      assert.ok(err instanceof SuppressedRecipientError, String(err));
      assert.deepEqual(err.recipients, ["zoe@example.com"]);
      assert.equal(await users("r2-user@example.com"), 0);
      assert.equal((await mailsTo("r2-bob@example.com")).length, 0);
    });

    it('"refuse" in a batch transaction rejects the batch and writes none of it; enqueueMany refuses all its mails', async (t) => {
      if (!fx) return t.skip("no database");
      const err = await refuse
        .$transaction([refuse.user.create({ data: { email: "r3-user@example.com" } }), refuse.outboxEmail.enqueue({ to: "ann@example.com", cc: "r3-bob@example.com", text: "x" })])
        .catch((e: unknown) => e);
      assert.ok(err instanceof SuppressedRecipientError, String(err));
      assert.equal(await users("r3-user@example.com"), 0);
      assert.equal((await mailsTo("r3-bob@example.com")).length, 0);

      const many = await refuse.outboxEmail
        .enqueueMany([
          { to: "r4-bob@example.com", text: "1" },
          { to: "zoe@example.com", text: "2" },
          { bcc: "Ann@example.com", to: "r4-carl@example.com", text: "3" },
        ])
        .catch((e: unknown) => e);
      assert.ok(many instanceof SuppressedRecipientError, String(many));
      assert.deepEqual([...many.recipients].sort(), ["ann@example.com", "zoe@example.com"]);
      assert.equal((await mailsTo("r4-bob@example.com")).length, 0, "nothing of the call was written");
    });

    it('"skip" leaves suppressed recipients out of the envelope and lists them in the result', async (t) => {
      if (!fx) return t.skip("no database");
      const r: EnqueueResult = await skip.$transaction(async (tx: any) => {
        await tx.user.create({ data: { email: "s1-user@example.com" } });
        return tx.outboxEmail.enqueue({ to: ["s1-bob@example.com", "ANN@example.com"], bcc: "zoe@example.com", text: "x" });
      });
      assert.deepEqual(r.suppressed, ["ann@example.com", "zoe@example.com"]);
      const row = await base.outboxEmail.findUnique({ where: { id: r.id } });
      assert.equal(row.status, "pending");
      assert.deepEqual(row.envelopeTo, ["s1-bob@example.com"]);
      assert.equal(await users("s1-user@example.com"), 1);

      const clean = await skip.outboxEmail.enqueue({ to: "s1-carl@example.com", text: "x" });
      assert.deepEqual(clean.suppressed, [], "always present");
    });

    it('"skip" with every recipient suppressed writes the mail as cancelled, with the reason, visible in show and list', async (t) => {
      if (!fx) return t.skip("no database");
      const [, r] = await skip.$transaction([
        skip.user.create({ data: { email: "s2-user@example.com" } }),
        skip.outboxEmail.enqueue({ to: "Ann@Example.com", cc: "zoe@example.com", subject: "All gone", text: "x" }),
      ]);
      assert.deepEqual(r.suppressed, ["ann@example.com", "zoe@example.com"]);
      assert.equal(await users("s2-user@example.com"), 1, "the batch committed");
      const shown = await showMail(db, r.id);
      assert.equal(shown.status, "cancelled");
      assert.deepEqual(shown.envelopeTo, ["Ann@example.com", "zoe@example.com"], "the envelope is kept for a replay after `suppress remove`");
      assert.match(shown.lastError ?? "", /every recipient is on the suppression list \(ann@example\.com, zoe@example\.com\)/);
      const cancelled = await listMails(db, { status: "cancelled" });
      assert.ok(cancelled.some((m) => m.id === r.id));

      const many: EnqueueResult[] = await skip.outboxEmail.enqueueMany([
        { to: "s3-bob@example.com", subject: "kept", text: "1" },
        { to: "zoe@example.com", subject: "gone", text: "2" },
        { to: ["ann@example.com", "s3-carl@example.com"], subject: "part", text: "3" },
      ]);
      assert.deepEqual(many.map((m) => m.suppressed), [[], ["zoe@example.com"], ["ann@example.com"]]);
      const rows = await base.outboxEmail.findMany({ where: { id: { in: many.map((m) => m.id) } }, select: { id: true, status: true, envelopeTo: true } });
      const byId = new Map(rows.map((x: any) => [x.id, x]));
      assert.deepEqual(many.map((m) => (byId.get(m.id) as any).status), ["pending", "cancelled", "pending"]);
      assert.deepEqual((byId.get(many[2]!.id) as any).envelopeTo, ["s3-carl@example.com"]);
    });

    it("an expired entry no longer counts; listing shows it only with includeExpired; unsuppress removes expired entries", async (t) => {
      if (!fx) return t.skip("no database");
      const past = new Date(Date.now() - 3_600_000);
      await suppress(db, ["old@example.com"], { reason: "long ago", now: past, expiresIn: 60_000 });
      await suppress(db, ["later@example.com"], { reason: "for a while", expiresIn: 86_400_000 });
      const ok = await refuse.outboxEmail.enqueue({ to: "OLD@example.com", text: "x" });
      assert.deepEqual(ok.suppressed, []);
      await assert.rejects(refuse.outboxEmail.enqueue({ to: "later@example.com", text: "x" }), SuppressedRecipientError);

      const now = (await listSuppressions(db)).map((s) => s.address);
      assert.ok(!now.includes("old@example.com") && now.includes("later@example.com"), now.join());
      const all = await listSuppressions(db, { includeExpired: true });
      assert.ok(all.some((s) => s.address === "old@example.com"));
      const one = await listSuppressions(db, { address: "LATER@example.com" });
      assert.equal(one.length, 1);
      assert.equal(one[0]!.reason, "for a while");
      assert.equal(one[0]!.source, "operator");
      assert.ok(one[0]!.expiresAt !== null && Math.abs(one[0]!.expiresAt.getTime() - (Date.now() + 86_400_000)) < 60_000);

      const removed = await unsuppress(db, { expired: true });
      assert.ok(removed.removed >= 1);
      assert.ok(!(await listSuppressions(db, { includeExpired: true })).some((s) => s.address === "old@example.com"));
      const gone = await unsuppress(db, ["Later@Example.com", "never@example.com"]);
      assert.deepEqual(gone, { removed: 1, notFound: ["never@example.com"] });
      assert.deepEqual((await refuse.outboxEmail.enqueue({ to: "later@example.com", text: "x" })).suppressed, []);
    });

    it('"off" (the default) never reads the list: enqueue sends no query to mail_outbox_suppression', async (t) => {
      if (!fx) return t.skip("no database");
      const { client, queries } = await loggingClient(fx.url);
      t.after(() => client.$disconnect());
      const off = client.$extends(mailOutbox({ defaultFrom: FROM }));
      const r = await off.$transaction(async (tx: any) => tx.outboxEmail.enqueue({ to: "ann@example.com", text: "x" }));
      await off.outboxEmail.enqueueMany([{ to: "zoe@example.com", text: "x" }]);
      assert.deepEqual(r.suppressed, []);
      assert.ok(queries.some((q) => /mail_outbox/.test(q)), "the log saw the insert");
      assert.deepEqual(queries.filter((q) => /mail_outbox_suppression/.test(q)), []);
      // The same client with the policy on reads it once per call.
      queries.length = 0;
      const on = client.$extends(mailOutbox({ defaultFrom: FROM, suppression: "skip" }));
      await on.outboxEmail.enqueue({ to: "ann@example.com", cc: "bob@example.com", text: "x" });
      assert.equal(queries.filter((q) => /mail_outbox_suppression/.test(q)).length, 1);
    });

    it("suppress add, list and remove from the command line, in text and JSON; bad addresses exit 2", async (t) => {
      if (!fx) return t.skip("no database");
      const url = fx.url;
      const add = await cli(["suppress", "add", "Cli-One@Example.com", "cli-two@example.com", "--reason", "asked to stop", "--expires", "30d"], url);
      assert.equal(add.code, 0, add.stderr);
      assert.match(add.stdout, /^suppressed 2 addresses \(until \d{4}-.*\)\n {2}cli-one@example\.com\n {2}cli-two@example\.com\n$/);
      const list = await cli(["suppress", "list", "--address", "cli-one@example.com"], url);
      assert.equal(list.code, 0, list.stderr);
      const lines = list.stdout.trimEnd().split("\n");
      assert.match(lines[0]!, /^ADDRESS\s+SOURCE\s+CREATED\s+EXPIRES\s+REASON$/);
      assert.match(lines[1]!, /^cli-one@example\.com\s+operator\s+\S+Z\s+\S+Z\s+asked to stop$/);
      assert.equal(lines.length, 2);
      const json = JSON.parse((await cli(["--json", "suppress", "list"], url)).stdout) as { address: string; reason: string }[];
      assert.ok(json.some((s) => s.address === "cli-two@example.com" && s.reason === "asked to stop"));
      const defaulted = await cli(["suppress", "add", "cli-three@example.com"], url);
      assert.match(defaulted.stdout, /\(no expiry\)/);
      assert.equal((await listSuppressions(db, { address: "cli-three@example.com" }))[0]?.reason, "added by cli:tester");

      const rm = await cli(["suppress", "remove", "cli-one@example.com", "nobody@example.com"], url);
      assert.equal(rm.code, 0, rm.stderr);
      assert.equal(rm.stdout, "removed 1 address from the suppression list\n  not on the list: nobody@example.com\n");
      const rmExpired = await cli(["--json", "suppress", "remove", "--expired"], url);
      assert.equal(rmExpired.code, 0, rmExpired.stderr);
      assert.equal(JSON.parse(rmExpired.stdout).removed, 0);

      for (const bad of [["suppress", "add", "not-an-address"], ["suppress", "add", "a@example.com", "--expires", "soon"], ["suppress", "remove"], ["suppress", "remove", "a@example.com", "--expired"], ["suppress", "list", "--address", "x"]]) {
        const r = await cli(bad, url);
        assert.equal(r.code, 2, `${bad.join(" ")}: ${r.stderr}`);
        assert.match(r.stderr, /^mail-outbox: /);
      }
      assert.ok(!(await listSuppressions(db, { includeExpired: true })).some((s) => s.address.startsWith("not-an")));
    });
  });
}

describe("suppression options and a client without the model", () => {
  test('the option takes "off", "refuse" or "skip", checked when the extension is built', () => {
    for (const bad of ["on", "", "REFUSE", 1, null]) {
      assert.throws(() => mailOutbox({ suppression: bad as never }), (e: unknown) => e instanceof OptionsError && /`suppression`/.test(e.message));
    }
    for (const ok of ["off", "refuse", "skip", undefined] as const) mailOutbox({ suppression: ok });
  });

  test("the operator functions refuse what is not an email address, naming it, and write nothing", async (t) => {
    const fx = await freshSqlite(t);
    const db = await openDatabase(fx.url);
    t.after(() => db.close());
    await assert.rejects(suppress(db, ["ok@example.com", "bad@", "-x@example.com"]), (e: unknown) => e instanceof OptionsError && /"bad@", "-x@example.com"/.test(e.message));
    await assert.rejects(suppress(db, []), OptionsError);
    await assert.rejects(suppress(db, ["a@example.com"], { expiresIn: 0 }), OptionsError);
    await assert.rejects(unsuppress(db, {} as never), OptionsError);
    assert.deepEqual(await listSuppressions(db, { includeExpired: true }), []);
  });

  test("a Prisma client generated without the OutboxSuppression model gets a SchemaError that says what to add", async (t) => {
    const fx = await freshSqlite(t);
    // The tests' schema less the models added for delivery fate: what an application generated before them.
    const dir = path.join(ROOT, "node_modules", ".cache", `mail-outbox-test-${randomUUID()}`);
    mkdirSync(dir, { recursive: true });
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const full = readFileSync(path.join(ROOT, "test", "prisma", "sqlite", "schema.prisma"), "utf8");
    const keep = new Set(["User", "OutboxEmail", "OutboxEmailAttempt"]);
    const schema = full
      .replace(/\/\/\/[^\n]*\n(?=\/\/\/|model )/g, "")
      .replace(/model (\w+) \{[\s\S]*?\n\}\n?/g, (block, name: string) => (keep.has(name) ? block : ""))
      .split("\n")
      .filter((line) => !/^\s+\w+\s+Outbox(?!Email\b|EmailAttempt\b)\w+/.test(line))
      .join("\n")
      .replace(/output\s*=\s*"\.\/generated"/, 'output = "./client"');
    assert.doesNotMatch(schema, /OutboxSuppression/);
    writeFileSync(path.join(dir, "schema.prisma"), schema);
    // Under node_modules nothing says the generated ES modules are ES modules.
    writeFileSync(path.join(dir, "package.json"), '{ "type": "module" }\n');
    execFileSync(process.execPath, [path.join(ROOT, "node_modules", "prisma", "build", "index.js"), "generate", "--schema", path.join(dir, "schema.prisma")], {
      env: { ...process.env, PRISMA_SCHEMA_ENGINE_BINARY: process.execPath, PRISMA_HIDE_UPDATE_MESSAGE: "1", CHECKPOINT_DISABLE: "1" },
      stdio: "pipe",
    });
    const [{ PrismaClient }, { PrismaBetterSqlite3 }] = await Promise.all([import(path.join(dir, "client", "client.ts")), import("@prisma/adapter-better-sqlite3")]);
    const old = new PrismaClient({ adapter: new PrismaBetterSqlite3({ url: fx.url }) });
    t.after(() => old.$disconnect());
    const prisma = old.$extends(mailOutbox({ defaultFrom: FROM, suppression: "refuse" }));
    const err = await prisma.$transaction(async (tx: any) => tx.outboxEmail.enqueue({ to: "ann@example.com", text: "x" })).catch((e: unknown) => e);
    assert.ok(err instanceof SchemaError, String(err));
    assert.match(err.message, /`OutboxSuppression` model/);
    assert.match(err.message, /mail-outbox init/);
    // With the policy off the same client enqueues as before.
    const off = old.$extends(mailOutbox({ defaultFrom: FROM }));
    const r = await off.outboxEmail.enqueue({ to: "ann@example.com", text: "x" });
    assert.deepEqual(r.suppressed, []);
  });
});
