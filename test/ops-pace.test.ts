/**
 * Shared pacing (ops.ts `setPace`, the claim loop's token bucket): `mail-outbox pace set | ls | rm`;
 * and two relays on SQLite and PostgreSQL sharing one bucket of burst 5 that practically never
 * refills: together they hand over exactly 5 mails, tokens not used for a claim are given back
 * (2 mails due, then 10 more: 5 in all), the rest stays pending, and removing the pace drains it.
 * Token accounting only: no timing assertions (the measured rate is in bench/ops-pacing.ts).
 */
import { describe, it } from "node:test";
import type { TestContext } from "node:test";
import assert from "node:assert/strict";
import { Registry } from "prom-client";
import { createRelay, mailOutbox, openDatabase } from "../src/index.js";
import { OptionsError } from "../src/errors.js";
import { listPaces, removePace, setPace, transportKey } from "../src/ops.js";
import { parseRate } from "../src/cli/ops.js";
import { main } from "../src/cli/main.js";
import { conformanceStores, freshMysql, freshPostgres, freshSqlite, prismaClientFor } from "./support/db.js";
import { needMysql, needPostgres } from "./support/services.js";
import { startTestSmtp } from "../testkit/smtp.js";

/** How long "nothing more was handed over" is watched: many poll intervals. */
const QUIET_MS = 1200;

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function cli(args: string[], env: Record<string, string>): Promise<{ code: number; stdout: string; stderr: string }> {
  let stdout = "";
  let stderr = "";
  const code = await main(args, { stdout: { write: (c) => (stdout += String(c)) }, stderr: { write: (c) => (stderr += String(c)) }, env });
  return { code, stdout, stderr };
}

it("--rate reads mails per second, per minute or per hour; anything else is refused", () => {
  assert.equal(parseRate("50"), 50);
  assert.equal(parseRate("50/s"), 50);
  assert.equal(parseRate("0.5/s"), 0.5);
  assert.equal(parseRate("600/min"), 10);
  assert.equal(parseRate("3600/h"), 1);
  for (const bad of ["", "0", "-1", "fast", "5/fortnight", "1e3"]) assert.throws(() => parseRate(bad), OptionsError, bad);
});

for (const s of conformanceStores) {
  it(`setPace / listPaces / removePace on ${s.name}: per transport key, validated; sender pacing is refused with what to do instead`, async (t) => {
    const db = await s.open(t);
    if (db === null) return;
    const row = await setPace(db, "transport:smtp://u:p@MX.example:25?timeout=1", { rate: 50, burst: 10 });
    assert.equal(row.bucket, "transport:smtp://mx.example:25");
    assert.equal(row.rate, 50);
    assert.equal(row.burst, 10);
    assert.equal(row.tokens, 10, "a new limit starts full");
    assert.equal((await setPace(db, "transport:sendmail:", { rate: 0.5 })).burst, 1, "burst defaults to the rate per second, at least 1");
    assert.deepEqual((await listPaces(db)).map((r) => r.bucket), ["transport:sendmail:/usr/sbin/sendmail", "transport:smtp://mx.example:25"]);
    await assert.rejects(setPace(db, "sender:example.com", { rate: 1 }), /per sender domain is not implemented.*destination_rate_delay/);
    await assert.rejects(setPace(db, "all", { rate: 1 }), /A pace is per transport/);
    await assert.rejects(setPace(db, "transport:smtp://mx:25", { rate: 0 }), /`rate`/);
    await assert.rejects(setPace(db, "transport:smtp://mx:25", { rate: 1, burst: 0.5 }), /`burst`/);
    assert.equal(await removePace(db, "transport:smtp://mx.example:25"), true);
    assert.equal(await removePace(db, "transport:smtp://mx.example:25"), false);
  });
}

it("mail-outbox pace set | ls | rm, as text and JSON; status lists the limit", async (t) => {
  const fx = await freshSqlite(t);
  const env = { DATABASE_URL: fx.url };
  const set = await cli(["pace", "set", "transport:smtp://127.0.0.1:2525", "--rate", "600/min", "--burst", "20"], env);
  assert.equal(set.code, 0, set.stderr);
  assert.equal(set.stdout, "pace transport:smtp://127.0.0.1:2525  10/s, burst 20\n");
  const ls = await cli(["pace", "ls", "--json"], env);
  assert.deepEqual(JSON.parse(ls.stdout).map((r: { bucket: string; rate: number; burst: number }) => [r.bucket, r.rate, r.burst]), [["transport:smtp://127.0.0.1:2525", 10, 20]]);
  assert.match((await cli(["status"], env)).stdout, /^pace transport:smtp:\/\/127\.0\.0\.1:2525 {2}10\/s, burst 20$/m);
  assert.deepEqual(JSON.parse((await cli(["status", "--json"], env)).stdout).paces.map((r: { bucket: string }) => r.bucket), ["transport:smtp://127.0.0.1:2525"]);
  const bad = await cli(["pace", "set", "transport:smtp://127.0.0.1:2525", "--rate", "lots"], env);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /--rate expects mails per second/);
  assert.equal((await cli(["pace", "rm", "transport:smtp://127.0.0.1:2525"], env)).stdout, "removed the rate limit of transport:smtp://127.0.0.1:2525\n");
  assert.equal((await cli(["pace", "ls"], env)).stdout, "no rate limits\n");
});

for (const dialect of ["sqlite", "postgresql", "mysql"] as const) {
  describe(`a pace shared by two relays on ${dialect}`, () => {
    it("burst 5 that never refills: two relays together hand over exactly 5 mails, unused tokens are given back, the rest waits until the pace is removed", async (t: TestContext) => {
      if (dialect === "postgresql" && !(await needPostgres(t))) return;
      if (dialect === "mysql" && !(await needMysql(t))) return;
      const fx = dialect === "sqlite" ? await freshSqlite(t) : dialect === "postgresql" ? await freshPostgres(t) : await freshMysql(t);
      const smtp = await startTestSmtp();
      t.after(() => smtp.close());
      const prisma: any = (await prismaClientFor(fx.url, t)).$extends(mailOutbox({ defaultFrom: "app@example.com" }));
      const bucket = `transport:${transportKey(smtp.url)}`;
      await setPace(fx.url, bucket, { rate: 0.0001, burst: 5 });
      const registry = new Registry();
      const relays = [1, 2].map((i) =>
        createRelay({ databaseUrl: fx.url, transport: smtp.url, relayId: `pace-${i}`, pollIntervalMs: 100, logger: false, ...(i === 1 ? { metricsRegistry: registry } : {}) }),
      );
      t.after(async () => {
        for (const r of relays) await r.stop({ deadlineMs: 2000 });
      });
      for (const r of relays) await r.start();
      const enqueue = async (n: number, tag: string) => {
        for (let i = 0; i < n; i++) await prisma.outboxEmail.enqueue({ to: `${tag}${i}@example.com`, subject: `${tag} ${i}`, text: "x" });
      };

      // 2 due: the relays take up to their batch in tokens, claim 2, give the rest back.
      await enqueue(2, "first");
      await smtp.waitFor(2, 15_000);
      await enqueue(10, "more");
      await smtp.waitFor(5, 15_000);
      await sleep(QUIET_MS);
      assert.equal(smtp.messages.length, 5, "exactly the burst went, across both relays");
      const db = await openDatabase(fx.url);
      try {
        const counts = Object.fromEntries((await db.statusCounts(new Date())).map((r) => [r.status, Number(r.total)]));
        assert.equal(counts.pending, 7);
        assert.equal(counts.sent, 5);
        const row = (await db.listRates()).find((r) => r.bucket === bucket)!;
        assert.ok(row.tokens < 1, `the bucket is empty (${row.tokens} tokens)`);
      } finally {
        await db.close();
      }
      const metrics = await registry.metrics();
      assert.match(metrics, /^mail_outbox_paced_turns_total [1-9]/m);
      assert.match(metrics, /^mail_outbox_paced_seconds_total [0-9.e-]+$/m);

      // Pace removed: the relays see it at their next read and drain the rest.
      assert.equal(await removePace(fx.url, bucket), true);
      await smtp.waitFor(12, 15_000);
      assert.ok([...smtp.countByMessageId().values()].every((n) => n === 1));
    });
  });
}
