/**
 * The benchmark's quick variant (small counts), so `npm run bench` cannot rot: every contender
 * (our relay on PostgreSQL, SQLite and MariaDB, graphile-worker, pg-boss) must deliver every mail, once,
 * in every phase. Speed is not checked here; BENCHMARKS.md holds a full run.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { needMysql, needPostgres } from "./support/services.js";
import { PHASES, QUICK, runBench } from "../bench/run.js";
import { CONTENDERS } from "../bench/stores.js";

test("every contender in the quick benchmark hands every mail to the sink exactly once", { timeout: 180_000 }, async (t) => {
  if (!(await needPostgres(t))) return;
  if (!(await needMysql(t))) return;
  const lines: string[] = [];
  const r = await runBench({ counts: QUICK, phases: PHASES, sink: "smtp-server", contenders: CONTENDERS, profile: false, log: (l) => (lines.push(l), process.env.BENCH_TEST_VERBOSE ? console.error(l) : undefined) });
  assert.deepEqual(r.failures, [], lines.join("\n"));

  // Drain and latency: each contender ran, and the recording sink saw each of its mails once.
  for (const c of CONTENDERS) {
    const drains = r.drain.filter((d) => d.contender === c);
    assert.equal(drains.length, QUICK.rounds, `${c} drained`);
    for (const d of drains) {
      assert.equal(d.atSink, QUICK.drainMails, `${c}: mails at the sink after the drain`);
      assert.equal(d.duplicatesAtSink, 0, `${c}: Message-IDs twice after the drain`);
      assert.ok(d.delivered && d.perSecond > 0, `${c}: drain delivered`);
    }
    const lat = r.latency.filter((l) => l.contender === c);
    assert.equal(lat.length, QUICK.rounds * QUICK.latency.length, `${c} ran the latency runs`);
    for (const l of lat) assert.ok(l.delivered && l.samples > 0, `${c}: latency run delivered`);
  }

  // Enqueue cost: every transaction with a mail left exactly one mail in the outbox.
  assert.deepEqual(r.enqueue.map((e) => [e.dialect, e.mails]).sort(), [["postgresql", QUICK.enqueueTransactions], ["sqlite", QUICK.enqueueTransactions]]);

  // Scale-out: several relays on one database, no Message-ID twice at the sink, none missing.
  for (const k of QUICK.scaleRelays) {
    const runs = r.scale.filter((s) => s.relays === k);
    assert.ok(runs.length > 0 && runs.every((s) => s.delivered && s.handedOverTwice === 0), `${k} relay(s) delivered every mail once`);
    for (const c of r.scaleChecks.filter((s) => s.relays === k)) {
      assert.equal(c.distinct, QUICK.scaleMails, `${k} relay(s): distinct Message-IDs at the sink`);
      assert.equal(c.twice, 0, `${k} relay(s): Message-IDs twice at the sink`);
    }
  }

  // Memory: the backlog was drained and the peak RSS measured.
  assert.ok(r.memory.length > 0 && r.memory.every((m) => m.delivered && m.maxRssKb > 0));
});
