/**
 * The operations state every relay shares (`OpsStore`: pauses, hand-off rate limits, named leases,
 * gauges) and the claim's sender-domain exclusion, run against every store of
 * `conformanceStores` (a real SQLite file, a real PostgreSQL server). The rate limit is checked
 * for what matters when N relays share it: concurrent takers never get more tokens than the
 * bucket holds (on SQLite from two processes, on PostgreSQL from concurrent connections).
 */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import type { TestContext } from "node:test";
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import type { Db } from "../src/db.js";
import { newId } from "../src/ids.js";
import { OptionsError } from "../src/errors.js";
import { conformanceStores, insertRow, mysqlUrl, postgresUrl, sqliteOf } from "./support/db.js";

const MINUTE = 60_000;
const ROOT = fileURLToPath(new URL("../", import.meta.url));

interface Seed {
  status?: string;
  from?: string;
  nextAttemptAt?: Date;
  uncertainHandoffs?: number;
  traceContext?: string | null;
}

async function seed(db: Db, m: Seed = {}): Promise<string> {
  const id = newId();
  const raw = Buffer.from(`Message-ID: <${id}@example.test>\r\n\r\nbody\r\n`);
  const createdAt = new Date(Date.now() - 10 * MINUTE);
  await insertRow(db, "mail_outbox", {
    id,
    message_id: `<${id}@example.test>`,
    status: m.status ?? "pending",
    priority: 0,
    envelope_from: m.from ?? "app@example.test",
    envelope_to: JSON.stringify(["ann@example.test"]),
    subject: "hi",
    raw,
    size: raw.length,
    attempts: 0,
    max_attempts: 5,
    send_at: createdAt,
    next_attempt_at: m.nextAttemptAt ?? createdAt,
    uncertain_handoffs: m.uncertainHandoffs ?? 0,
    trace_context: m.traceContext ?? null,
    created_at: createdAt,
    updated_at: createdAt,
  });
  return id;
}

/** Run `code` (an ES module body with `db` open on `url`) in a child process; resolves with its stdout. */
function child(url: string, code: string): Promise<string> {
  const body = `import { openDatabase } from ${JSON.stringify(`${ROOT}src/db.ts`)};\nconst db = await openDatabase(${JSON.stringify(url)});\n${code}\nawait db.close();\n`;
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, ["--import", "tsx", "--input-type=module", "-e", body], { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let err = "";
    p.stdout.on("data", (d: Buffer) => (out += d.toString()));
    p.stderr.on("data", (d: Buffer) => (err += d.toString()));
    p.on("error", reject);
    p.on("close", (code) => (code === 0 ? resolve(out) : reject(new Error(`child exited with ${code}: ${err}`))));
  });
}

function opsConformance(name: string, open: (t: TestContext) => Promise<Db | null>): void {
  describe(`operations state: ${name}`, () => {
    it("a pause is listed once: pausing again answers false and keeps the first pause's actor and reason; resuming lifts it", async (t) => {
      const db = await open(t);
      if (db === null) return;
      assert.deepEqual(await db.listPauses(), []);
      assert.equal(await db.addPause("all", "ops@host", "MTA maintenance"), true);
      assert.equal(await db.addPause("all", "other@host", "again"), false);
      assert.equal(await db.addPause("sender:example.test", "ops@host", null), true);
      const pauses = await db.listPauses();
      assert.deepEqual(
        pauses.map((p) => [p.scope, p.pausedBy, p.reason]),
        [
          ["all", "ops@host", "MTA maintenance"],
          ["sender:example.test", "ops@host", null],
        ],
      );
      assert.ok(pauses[0]!.pausedAt instanceof Date && Math.abs(pauses[0]!.pausedAt.getTime() - Date.now()) < MINUTE);
      assert.equal(await db.removePause("all"), true);
      assert.equal(await db.removePause("all"), false);
      assert.deepEqual((await db.listPauses()).map((p) => p.scope), ["sender:example.test"]);
    });

    it("a claim leaves out the mail of excluded sender domains (the domain after the last @, any case) and returns the stored trace context", async (t) => {
      const db = await open(t);
      if (db === null) return;
      const parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
      const kept = await seed(db, { from: "App@Paused.Test" });
      const quoted = await seed(db, { from: '"a@b"@paused.test' });
      const sub = await seed(db, { from: "app@sub.paused.test", traceContext: parent });
      const other = await seed(db, { from: "app@other.test" });
      const none = await seed(db, { from: "" });
      const claimed = await db.claim("ops-claim", 10, MINUTE, { excludeSenderDomains: ["paused.test"] });
      assert.deepEqual(claimed.map((c) => c.id).sort(), [sub, other, none].sort());
      assert.equal(claimed.find((c) => c.id === sub)?.traceContext, parent);
      assert.equal(claimed.find((c) => c.id === other)?.traceContext, null);
      // An empty list is no exclusion; the excluded rows are still there for a claim without it.
      assert.deepEqual((await db.claim("ops-claim", 10, MINUTE, { excludeSenderDomains: [] })).map((c) => c.id).sort(), [kept, quoted].sort());
    });

    it("a rate bucket starts full, is listed, changes in place (its tokens capped at the new burst) and is removed", async (t) => {
      const db = await open(t);
      if (db === null) return;
      await db.setRate("transport:smtp://mta:25", 5, 20);
      let [r] = await db.listRates();
      assert.deepEqual([r!.bucket, r!.rate, r!.burst, r!.tokens], ["transport:smtp://mta:25", 5, 20, 20]);
      await db.setRate("transport:smtp://mta:25", 2.5, 4);
      [r] = await db.listRates();
      assert.deepEqual([r!.rate, r!.burst, r!.tokens], [2.5, 4, 4]);
      await assert.rejects(db.setRate("transport:x", -1, 4), OptionsError);
      await assert.rejects(db.setRate("transport:x", 1, 0), OptionsError);
      await assert.rejects(db.setRate("transport:x", Number.NaN, 1), OptionsError);
      assert.equal(await db.removeRate("transport:smtp://mta:25"), true);
      assert.equal(await db.removeRate("transport:smtp://mta:25"), false);
      assert.deepEqual(await db.listRates(), []);
    });

    it("takeTokens grants the least any bucket holds, takes it from every bucket, and says how long until the tightest has a token again; returnTokens gives back up to the burst", async (t) => {
      const db = await open(t);
      if (db === null) return;
      assert.deepEqual(await db.takeTokens(["transport:unlimited"], 7), { granted: 7, waitMs: 0 }, "a bucket without a row is unlimited");
      await db.setRate("transport:a", 0.001, 10);
      await db.setRate("sender:b.test", 1, 3);
      assert.deepEqual(await db.takeTokens(["transport:a"], 4), { granted: 4, waitMs: 0 });
      const both = await db.takeTokens(["transport:a", "sender:b.test", "transport:unlimited"], 5);
      assert.equal(both.granted, 3, "sender:b.test holds 3");
      // sender:b.test is empty and refills at 1/s: about a second until it has a token again.
      assert.ok(both.waitMs > 500 && both.waitMs <= 1000, `waitMs ${both.waitMs}`);
      const rates = new Map((await db.listRates()).map((r) => [r.bucket, r.tokens]));
      assert.ok(Math.abs(rates.get("transport:a")! - 3) < 0.01, `transport:a holds ${rates.get("transport:a")}`);
      await db.returnTokens(["transport:a", "sender:b.test"], 2);
      const back = new Map((await db.listRates()).map((r) => [r.bucket, r.tokens]));
      assert.ok(Math.abs(back.get("transport:a")! - 5) < 0.01);
      assert.ok(back.get("sender:b.test")! >= 2 && back.get("sender:b.test")! <= 3);
      await db.returnTokens(["transport:a"], 100);
      assert.equal((await db.listRates()).find((r) => r.bucket === "transport:a")?.tokens, 10, "never above the burst");
      assert.deepEqual(await db.takeTokens(["transport:a"], 0), { granted: 0, waitMs: 0 });
    });

    it("concurrent takers never get more tokens than the bucket holds", async (t) => {
      const db = await open(t);
      if (db === null) return;
      await db.setRate("transport:shared", 0.001, 10);
      if (db.dialect === "postgresql" || db.dialect === "mysql") {
        // 20 takes at once over the pool's connections, and 20 more from a second store.
        const { openDatabase } = await import("../src/db.js");
        const second = await openDatabase(db.dialect === "mysql" ? mysqlUrl(db.database) : postgresUrl(db.schema), { poolSize: 4 });
        t.after(() => second.close());
        const takes = await Promise.all(Array.from({ length: 40 }, (_, i) => (i % 2 === 0 ? db : second).takeTokens(["transport:shared"], 1)));
        assert.equal(takes.reduce((n, x) => n + x.granted, 0), 10);
        assert.ok(takes.filter((x) => x.granted === 0).every((x) => x.waitMs > 0));
      } else {
        // Two processes on the same file, started together, each taking one token 20 times.
        const start = Date.now() + 2000;
        const code = `await new Promise((r) => setTimeout(r, ${start} - Date.now()));\nlet n = 0;\nfor (let i = 0; i < 20; i++) n += (await db.takeTokens(["transport:shared"], 1)).granted;\nconsole.log(n);`;
        const url = `file:${sqliteOf(db).filename}`;
        const [a, b] = await Promise.all([child(url, code), child(url, code)]);
        assert.equal(Number(a) + Number(b), 10, `granted ${a.trim()} + ${b.trim()}`);
      }
      const [r] = await db.listRates();
      assert.ok(r!.tokens < 1, `left ${r!.tokens}`);
    });

    it("a lease is held by one owner at a time, extended by its holder, free again when it expires or is unlocked, and keeps what its holder published", async (t) => {
      const db = await open(t);
      if (db === null) return;
      assert.equal(await db.readLock("gauges"), null);
      assert.equal(await db.tryLock("gauges", "relay-a", MINUTE, { due: 3 }), true);
      assert.equal(await db.tryLock("gauges", "relay-b", MINUTE), false, "held by relay-a");
      assert.equal(await db.tryLock("gauges", "relay-a", MINUTE), true, "extended");
      let lock = await db.readLock("gauges");
      assert.deepEqual([lock?.owner, lock?.data], ["relay-a", { due: 3 }], "data kept when not given");
      assert.ok(lock!.expiresAt.getTime() > Date.now() + MINUTE / 2);
      await db.unlock("gauges", "relay-b");
      assert.equal(await db.tryLock("gauges", "relay-b", MINUTE), false, "only the holder unlocks");
      await db.unlock("gauges", "relay-a");
      assert.deepEqual((await db.readLock("gauges"))?.data, { due: 3 }, "what was published stays for readers");
      assert.equal(await db.tryLock("gauges", "relay-b", 1, null), true, "free after unlock");
      lock = await db.readLock("gauges");
      assert.deepEqual([lock?.owner, lock?.data], ["relay-b", null]);
      await new Promise((resolve) => setTimeout(resolve, 20));
      assert.equal(await db.tryLock("gauges", "relay-c", MINUTE, [1, "two", { three: true }]), true, "free after it expired");
      assert.deepEqual((await db.readLock("gauges"))?.data, [1, "two", { three: true }]);
      assert.equal(await db.tryLock("retention", "relay-a", MINUTE, 42), true, "leases are independent");
      assert.equal((await db.readLock("retention"))?.data, 42);
      const racers = await Promise.all(["x", "y", "z", "w"].map((o) => db.tryLock("race", o, MINUTE)));
      assert.equal(racers.filter(Boolean).length, 1, "one of several at once");
    });

    it("the gauges count the outbox: per status, due and the oldest due age, uncertain, held and dead", async (t) => {
      const db = await open(t);
      if (db === null) return;
      const empty = await db.gauges();
      assert.deepEqual([empty.due, empty.oldestDueAgeSeconds, empty.uncertain, empty.held, empty.dead], [0, null, 0, 0, 0]);
      assert.ok(empty.byStatus.every((s) => s.n === 0));
      const now = Date.now();
      await seed(db, { nextAttemptAt: new Date(now - 120_000) });
      await seed(db, { nextAttemptAt: new Date(now - 5_000), uncertainHandoffs: 1 });
      await seed(db, { nextAttemptAt: new Date(now + 10 * MINUTE) });
      for (let i = 0; i < 4; i++) await seed(db, { status: "sent", uncertainHandoffs: i === 0 ? 1 : 0 });
      await seed(db, { status: "held", uncertainHandoffs: 1 });
      await seed(db, { status: "dead", uncertainHandoffs: 2 });
      await seed(db, { status: "dead" });
      await seed(db, { status: "cancelled", uncertainHandoffs: 1 });
      const g = await db.gauges();
      assert.deepEqual(Object.fromEntries(g.byStatus.map((s) => [s.status, s.n])), { pending: 3, sending: 0, sent: 4, dead: 2, cancelled: 1, held: 1 });
      assert.equal(g.due, 2);
      assert.ok(g.oldestDueAgeSeconds !== null && g.oldestDueAgeSeconds >= 119 && g.oldestDueAgeSeconds < 180, `oldest ${g.oldestDueAgeSeconds}`);
      assert.equal(g.uncertain, 3, "pending, held and dead with an uncertain hand-off; not sent or cancelled");
      assert.equal(g.held, 1);
      assert.equal(g.dead, 2);
      assert.ok(Math.abs(g.at.getTime() - Date.now()) < MINUTE);
      if (db.dialect === "postgresql") {
        // A large table's sent count comes from the statistics (here: whatever the threshold, 0).
        const { gauges } = await import("../src/stores/postgres/ops-sql.js");
        await db.pool.query("ANALYZE mail_outbox");
        const estimated = await gauges(db.pool, 0);
        assert.equal(estimated.sentEstimated, true);
        const sent = estimated.byStatus.find((s) => s.status === "sent")!.n;
        assert.ok(Number.isInteger(sent) && sent >= 0, `sent ${sent}`);
        assert.deepEqual(estimated.byStatus.filter((s) => s.status !== "sent"), g.byStatus.filter((s) => s.status !== "sent"), "the other statuses stay exact");
        assert.deepEqual([estimated.due, estimated.uncertain, estimated.held, estimated.dead], [g.due, g.uncertain, g.held, g.dead]);
      }
    });
  });
}

for (const store of conformanceStores) opsConformance(store.name, store.open);
