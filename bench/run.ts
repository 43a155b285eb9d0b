/**
 * The benchmark: our relay (on PostgreSQL, SQLite and MariaDB) against the tools users would pick
 * instead (graphile-worker and pg-boss with a nodemailer job), on this machine, in one run. `npm run bench` runs it in full
 * and writes BENCHMARKS.md; `--quick` runs small counts (the CI variant in test/bench.test.ts).
 *
 *   node --import tsx bench/run.ts [--quick] [--only drain,latency,...] [--sink smtp-sink|smtp-server]
 *                                  [--profile] [--no-write] [--out BENCHMARKS.md] [--fates-mails N] [--drain-mails N]
 *
 * Standalone benchmarks, named alone with `--only` (they print their own figures): scaleout
 * (relays against an MTA with 10-50 ms per transaction), enqueue-compare (enqueue against
 * graphile-worker's add_job and pg-boss's send), ops-gauges, ops-pacing, ops-retention, ui-list.
 *
 * Phases: ceiling, drain, latency, enqueue, scale, memory; and, only with `--only fates`, the
 * delivery fates through the real Postfix (bench/fates.ts; `--fates-mails N`, default 1,000). Each figure is the median of several
 * runs; within a round the contenders take turns (the order rotates every round) so that drift
 * of the machine hits them alike. Every PostgreSQL contender gets a fresh schema per run, dropped
 * afterwards.
 */
import { execFileSync, fork, spawnSync } from "node:child_process";
import { randomUUID } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import type { ProducerResult, WorkerConfig, WorkerResult } from "./child.js";
import type { EnqueueCostResult } from "./enqueue-cost.js";
import { mailTemplate, type MailTemplate } from "./mail.js";
import { startChild } from "./proc.js";
import { countDump, postfixTool, runSmtpSource, startRecordingSink, startSmtpSink, type Sink } from "./sink.js";
import { fmt, max, median, percentile, rotate } from "./stats.js";
import { ADMIN_URL, CONTENDERS, bulkLoad, freshStore, isRelay, outcome, withAdmin, type ContenderName, type Store } from "./stores.js";
import { formatSummary, summarize } from "./profile-summary.js";
import { renderReport, writeReport } from "./report.js";
import { fatesBench, renderFates, writeFatesSection, type FatesResult } from "./fates.js";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");

export type Phase = "ceiling" | "drain" | "latency" | "enqueue" | "scale" | "memory" | "fates";
/** The phases of a full run (and of the quick run in test/bench.test.ts). */
export const PHASES: readonly Phase[] = ["ceiling", "drain", "latency", "enqueue", "scale", "memory"];
/**
 * Phases run only when named with `--only`: `fates` needs root and the Postfix that
 * scripts/install-postfix.sh sets up (bench/fates.ts), and writes its own section of BENCHMARKS.md.
 */
export const OPT_IN_PHASES: readonly Phase[] = ["fates"];

export interface Counts {
  readonly rounds: number;
  readonly ceilingMessages: number;
  readonly drainMails: number;
  /** Offered loads: mails per second, mails per run (the first `warmup` are not counted). */
  readonly latency: readonly { readonly rate: number; readonly mails: number; readonly warmup: number }[];
  readonly enqueueTransactions: number;
  readonly scaleRelays: readonly number[];
  readonly scaleMails: number;
  /**
   * Memory phase: a backlog of `backlog` mails, of which one relay process drains the first
   * `drain` (all of them, or as many as the time budget allows), `runs` times.
   */
  readonly memory: readonly { readonly backlog: number; readonly drain: number; readonly runs: number }[];
  /** Fates phase: mails through Postfix to the mix of destinations (`--fates-mails N` overrides). */
  readonly fatesMails: number;
}

export const FULL: Counts = {
  rounds: 3,
  ceilingMessages: 40_000,
  drainMails: 20_000,
  latency: [
    { rate: 200, mails: 1_400, warmup: 200 },
    { rate: 2000, mails: 8_000, warmup: 2_000 },
  ],
  enqueueTransactions: 1_000,
  scaleRelays: [1, 2, 4],
  scaleMails: 20_000,
  // Draining all of a 1,000,000 backlog takes 7-10 minutes here, over the 15-minute budget of the
  // whole run: the relay drains the first 100,000 of it (10x the mails of the 10,000 case).
  memory: [
    { backlog: 10_000, drain: 10_000, runs: 3 },
    { backlog: 1_000_000, drain: 100_000, runs: 1 },
  ],
  fatesMails: 1_000,
};

export const QUICK: Counts = {
  rounds: 1,
  ceilingMessages: 2_000,
  drainMails: 300,
  latency: [{ rate: 100, mails: 120, warmup: 20 }],
  enqueueTransactions: 20,
  scaleRelays: [1, 2],
  scaleMails: 300,
  memory: [{ backlog: 300, drain: 300, runs: 1 }],
  fatesMails: 100,
};

export interface BenchOptions {
  readonly counts: Counts;
  readonly phases: readonly Phase[];
  /** smtp-sink when installed (auto), or the recording smtp-server sink. */
  readonly sink: "auto" | "smtp-sink" | "smtp-server";
  readonly contenders: readonly ContenderName[];
  /** Write CPU profiles of one run per contender, and summaries, to bench/.out/profiles. */
  readonly profile: boolean;
  readonly log: (line: string) => void;
}

export interface DrainRun {
  readonly contender: ContenderName;
  readonly mails: number;
  readonly perSecond: number;
  readonly elapsedMs: number;
  readonly cpuMsPer1000: number;
  readonly maxRssKb: number;
  /** Mails the sink saw (recording sink only), and how many of them more than once. */
  readonly atSink: number | null;
  readonly duplicatesAtSink: number | null;
  readonly delivered: boolean;
}

export interface LatencyRun {
  readonly contender: ContenderName;
  readonly rate: number;
  readonly achievedRate: number;
  readonly samples: number;
  readonly p50: number;
  readonly p99: number;
  readonly max: number;
  readonly delivered: boolean;
}

export interface ScaleRun {
  readonly relays: number;
  readonly mails: number;
  readonly perSecond: number;
  /** Mails with more than one accepted hand-off in the attempt log. */
  readonly handedOverTwice: number;
  readonly sentReported: number;
  readonly delivered: boolean;
}

export interface ScaleCheck {
  readonly relays: number;
  readonly mails: number;
  readonly sink: string;
  /** Distinct Message-IDs the sink received, and how many arrived more than once. */
  readonly distinct: number;
  readonly twice: number;
}

export interface MemoryRun {
  readonly backlog: number;
  /** Mails drained (the first `mails` of the backlog). */
  readonly mails: number;
  readonly loadMs: number;
  readonly maxRssKb: number;
  readonly perSecond: number;
  readonly delivered: boolean;
  /** Once a second: [ms, rss, heapUsed, external + arrayBuffers] in kB. */
  readonly samples: [number, number, number, number][];
}

export interface BenchResults {
  readonly startedAt: string;
  readonly finishedAt: string;
  readonly elapsedS: number;
  readonly counts: Counts;
  readonly sink: string;
  readonly machine: Record<string, string>;
  readonly settings: Record<string, string>;
  readonly ceiling: { readonly runs: number[]; readonly perSecond: number; readonly messages: number } | null;
  readonly drain: DrainRun[];
  readonly latency: LatencyRun[];
  readonly enqueue: EnqueueCostResult[];
  readonly scale: ScaleRun[];
  readonly scaleChecks: ScaleCheck[];
  readonly memory: MemoryRun[];
  readonly profiles: Record<string, string>;
  /** The fates phase (bench/fates.ts), when it ran. */
  readonly fates: FatesResult | null;
  readonly failures: string[];
}

// ---- contender settings ------------------------------------------------------------------------

/** graphile-worker and pg-boss: jobs in flight (BENCH_CONCURRENCY to try others). */
const CONCURRENCY = Number(process.env.BENCH_CONCURRENCY ?? 10);

/**
 * The settings each contender runs with. Our relay runs with its defaults (PostgreSQL wakes on
 * NOTIFY; MariaDB has none, and the relay polls it adaptively; SQLite has none, so it polls every 10 ms). graphile-worker and pg-boss run with
 * the best settings found for them on this machine (see BENCHMARKS.md: tried and kept).
 */
function workerConfig(contender: ContenderName, store: Store, smtpUrl: string, extra: { relayId?: string } = {}): Omit<WorkerConfig, "role" | "expected" | "collectSent" | "reportProgress"> {
  switch (contender) {
    case "relay-pg":
    case "relay-sqlite":
    case "relay-mariadb":
      return {
        contender,
        settings: {
          url: store.url,
          // BENCH_RELAY_SMTP_QUERY=pipelining=false measures the relay on nodemailer's pool instead.
          smtpUrl: process.env.BENCH_RELAY_SMTP_QUERY ? `${smtpUrl}${smtpUrl.includes("?") ? "&" : "?"}${process.env.BENCH_RELAY_SMTP_QUERY}` : smtpUrl,
          relayId: extra.relayId ?? `bench-${randomUUID().slice(0, 8)}`,
          // SQLite has no NOTIFY: it polls every 10 ms. MariaDB has none either, and runs with the
          // default: the relay polls adaptively there (50 ms after a claim that found mail, doubling to this).
          pollIntervalMs: contender === "relay-sqlite" ? 10 : 1000,
          ...(JSON.parse(process.env.BENCH_RELAY ?? "{}") as object),
        },
      };
    case "graphile-worker":
      return { contender, settings: { schema: store.schema, smtpUrl, concurrency: CONCURRENCY, ...GRAPHILE } };
    case "pg-boss":
      return { contender, settings: { schema: store.schema, smtpUrl, concurrency: CONCURRENCY, ...PGBOSS } };
  }
}

/** graphile-worker: its documented batching (local queue, batched completion). */
export const GRAPHILE = { localQueueSize: 200, completeJobBatchDelay: 0, ...(JSON.parse(process.env.BENCH_GRAPHILE ?? "{}") as object) };
/** pg-boss: several work() loops with batches whose jobs are sent in parallel; 0.5 s is its shortest polling interval. */
export const PGBOSS = { workers: 2, batchSize: 1000, pollingIntervalSeconds: 0.5, ...(JSON.parse(process.env.BENCH_PGBOSS ?? "{}") as object) };

function settingsTable(): Record<string, string> {
  return {
    transport: `relay: createTransporter("smtp://127.0.0.1:PORT?maxConnections=10"), which for a loopback MTA is the library's pipelining SMTP transport (10 connections, up to 4 transactions in flight on each); graphile-worker and pg-boss: nodemailer.createTransport({ pool: true, maxConnections: 10, maxMessages: 1000 }). Every contender opens at most 10 SMTP connections`,
    "relay-pg": `createRelay({ transport, pollIntervalMs: 1000 }): the defaults, which with this transport are concurrency 40 (its capacity, 10 x 4) and batchSize 200; LISTEN/NOTIFY wake-up`,
    "relay-sqlite": `createRelay({ transport, pollIntervalMs: 10 }) (SQLite has no NOTIFY), otherwise as relay-pg`,
    "relay-mariadb": `createRelay({ transport, pollIntervalMs: 1000 }): the defaults, as relay-pg; MariaDB has no NOTIFY, so the relay polls adaptively (50 ms after a claim that found mail, doubling up to 1 s while none is due); the outbox in a database of its own on the MariaDB server`,
    "graphile-worker": `run({ concurrency: ${CONCURRENCY}, preset.worker: { localQueue: { size: ${GRAPHILE.localQueueSize} }, completeJobBatchDelay: ${GRAPHILE.completeJobBatchDelay} } }), NO_LOG_SUCCESS=1, one job per mail`,
    "pg-boss": `${PGBOSS.workers} x work(queue, { batchSize: ${PGBOSS.batchSize}, pollingIntervalSeconds: ${PGBOSS.pollingIntervalSeconds} }), the jobs of a batch sent in parallel, one job per mail`,
  };
}

// ---- phases ------------------------------------------------------------------------------------

interface Ctx {
  readonly opts: BenchOptions;
  readonly template: MailTemplate;
  readonly sink: Sink;
  readonly failures: string[];
  readonly profiles: Record<string, string>;
  readonly profileDir: string | null;
  /** Contenders profiled already (one run each). */
  readonly profiled: Set<string>;
}

function profileDirFor(ctx: Ctx, key: string): string | undefined {
  if (!ctx.profileDir || ctx.profiled.has(key)) return undefined;
  ctx.profiled.add(key);
  const dir = path.join(ctx.profileDir, key);
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  return dir;
}

async function summarizeProfile(ctx: Ctx, key: string, dir: string | undefined): Promise<void> {
  if (!dir) return;
  // The child writes its profile on exit, just after it reported.
  for (let i = 0; i < 50; i++) {
    const files = existsSync(dir) ? (await import("node:fs")).readdirSync(dir).filter((f) => f.endsWith(".cpuprofile")) : [];
    if (files.length > 0) {
      const text = formatSummary(summarize(JSON.parse(readFileSync(path.join(dir, files[0]!), "utf8"))));
      ctx.profiles[key] = text;
      writeFileSync(path.join(dir, "summary.txt"), text + "\n");
      return;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

function sinkCheck(ctx: Ctx, expected: number): { atSink: number | null; duplicates: number | null } {
  const counts = ctx.sink.counts();
  if (!counts) return { atSink: null, duplicates: null };
  let dup = 0;
  for (const n of counts.values()) if (n > 1) dup++;
  const atSink = counts.size;
  if (atSink !== expected) ctx.failures.push(`the sink received ${atSink} distinct Message-IDs, expected ${expected}`);
  return { atSink, duplicates: dup };
}

function canMeasureCeiling(ctx: Ctx): boolean {
  return ctx.sink.kind === "smtp-sink" && postfixTool("smtp-source") !== null;
}

async function ceilingRun(ctx: Ctx, ceiling: number[]): Promise<void> {
  const n = ctx.opts.counts.ceilingMessages;
  const run = await runSmtpSource(ctx.sink.port, n, ctx.template.size);
  ceiling.push(run.perSecond);
  ctx.opts.log(`ceiling: smtp-source -d -s 10 -m ${n}: ${fmt(run.perSecond)} mails/s`);
}

/**
 * The ceiling: smtp-source into the sink. One warm-up and one run here; when the drain phase runs,
 * each of its rounds starts with one more run, so the ceiling sees the same drift as the contenders.
 */
async function ceilingPhase(ctx: Ctx, ceiling: number[]): Promise<void> {
  if (!canMeasureCeiling(ctx)) {
    ctx.opts.log("ceiling: skipped (needs Postfix's smtp-source and smtp-sink)");
    return;
  }
  await runSmtpSource(ctx.sink.port, Math.min(ctx.opts.counts.ceilingMessages, 5000), ctx.template.size);
  const runs = ctx.opts.phases.includes("drain") ? 1 : Math.max(ctx.opts.counts.rounds, 3);
  for (let r = 0; r < runs; r++) await ceilingRun(ctx, ceiling);
}

async function drainOnce(ctx: Ctx, contender: ContenderName, mails: number): Promise<DrainRun> {
  const store = await freshStore(contender);
  try {
    await bulkLoad(store, ctx.template, mails);
    ctx.sink.clear();
    const key = `drain-${contender}`;
    const dir = profileDirFor(ctx, key);
    const child = await startChild<WorkerResult>(
      { role: "worker", expected: mails, collectSent: false, reportProgress: false, ...workerConfig(contender, store, ctx.sink.url) } as WorkerConfig,
      dir ? { cpuProfDir: dir } : {},
    );
    const r = await child.result;
    await summarizeProfile(ctx, key, dir);
    const elapsedMs = (r.lastRecorded ?? Number.NaN) - (r.firstClaim ?? Number.NaN);
    const o = await outcome(store);
    const s = sinkCheck(ctx, mails);
    const delivered = r.recorded >= mails && r.sent === mails && o.left === 0 && (s.atSink === null || (s.atSink === mails && s.duplicates === 0));
    if (!delivered) ctx.failures.push(`drain ${contender}: recorded ${r.recorded}, 250s ${r.sent}, left in store ${o.left}, at sink ${s.atSink ?? "?"} of ${mails}`);
    return { contender, mails, perSecond: (mails / elapsedMs) * 1000, elapsedMs, cpuMsPer1000: (r.cpuMs / mails) * 1000, maxRssKb: r.maxRssKb, atSink: s.atSink, duplicatesAtSink: s.duplicates, delivered };
  } finally {
    await store.cleanup();
  }
}

async function drainPhase(ctx: Ctx, ceiling: number[]): Promise<DrainRun[]> {
  const out: DrainRun[] = [];
  for (let round = 0; round < ctx.opts.counts.rounds; round++) {
    if (ctx.opts.phases.includes("ceiling") && canMeasureCeiling(ctx)) await ceilingRun(ctx, ceiling);
    for (const c of rotate(ctx.opts.contenders, round)) {
      let run: DrainRun;
      try {
        run = await drainOnce(ctx, c, ctx.opts.counts.drainMails);
      } catch (err) {
        ctx.failures.push(`drain ${c}: ${(err as Error).message}`);
        ctx.opts.log(`drain round ${round + 1} ${c}: FAILED ${(err as Error).message}`);
        continue;
      }
      out.push(run);
      ctx.opts.log(`drain round ${round + 1} ${c}: ${fmt(run.perSecond)} mails/s (${fmt(run.elapsedMs)} ms, ${fmt(run.cpuMsPer1000)} ms CPU per 1000 mails)`);
    }
  }
  return out;
}

async function latencyOnce(ctx: Ctx, contender: ContenderName, load: Counts["latency"][number]): Promise<LatencyRun> {
  const store = await freshStore(contender);
  try {
    ctx.sink.clear();
    const worker = await startChild<WorkerResult>({ role: "worker", expected: load.mails, collectSent: true, reportProgress: false, ...workerConfig(contender, store, ctx.sink.url) } as WorkerConfig);
    await worker.ready;
    const target = isRelay(contender) ? store.url : store.schema;
    // Enough connections that commits (each waits for its WAL flush) keep up with the schedule.
    const producer = await startChild<ProducerResult>({ role: "producer", contender, target, rate: load.rate, count: load.mails, connections: load.rate >= 1000 ? 16 : 4 });
    await producer.ready;
    producer.go();
    const p = await producer.result;
    const w = await worker.result;
    const committed = new Map(p.committedAt);
    const start = Math.min(...p.committedAt.map(([, t]) => t));
    const from = start + (load.warmup / load.rate) * 1000;
    const lat: number[] = [];
    for (const [mid, t] of w.sentAt) {
      const c = committed.get(mid);
      if (c !== undefined && c >= from) lat.push(Math.max(0, t - c));
    }
    const s = sinkCheck(ctx, load.mails);
    const delivered = w.recorded >= load.mails && w.sent === load.mails && (s.atSink === null || (s.atSink === load.mails && s.duplicates === 0));
    if (!delivered) ctx.failures.push(`latency ${contender} at ${load.rate}/s: recorded ${w.recorded}, 250s ${w.sent} of ${load.mails}`);
    return {
      contender,
      rate: load.rate,
      achievedRate: (load.mails / p.elapsedMs) * 1000,
      samples: lat.length,
      p50: percentile(lat, 50),
      p99: percentile(lat, 99),
      max: max(lat),
      delivered,
    };
  } finally {
    await store.cleanup();
  }
}

async function latencyPhase(ctx: Ctx): Promise<LatencyRun[]> {
  const out: LatencyRun[] = [];
  for (let round = 0; round < ctx.opts.counts.rounds; round++) {
    for (const load of ctx.opts.counts.latency) {
      for (const c of rotate(ctx.opts.contenders, round)) {
        let r: LatencyRun;
        try {
          r = await latencyOnce(ctx, c, load);
        } catch (err) {
          ctx.failures.push(`latency ${c} at ${load.rate}/s: ${(err as Error).message}`);
          ctx.opts.log(`latency round ${round + 1} ${c} at ${load.rate}/s: FAILED ${(err as Error).message}`);
          continue;
        }
        out.push(r);
        ctx.opts.log(
          `latency round ${round + 1} ${c} at ${load.rate}/s (achieved ${fmt(r.achievedRate)}): p50 ${fmt(r.p50, 1)} ms, p99 ${fmt(r.p99, 1)} ms, max ${fmt(r.max, 1)} ms`,
        );
      }
    }
  }
  return out;
}

function runEnqueueCost(dialect: "postgresql" | "sqlite", transactions: number): Promise<EnqueueCostResult> {
  return new Promise((resolve, reject) => {
    const child = fork(path.join(root, "bench", "enqueue-cost.ts"), [JSON.stringify({ dialect, transactions, block: 50 })], {
      execArgv: ["--import", "tsx"],
      stdio: ["ignore", "pipe", "inherit", "ipc"],
    });
    let out = "";
    child.stdout?.on("data", (d: Buffer) => (out += d.toString()));
    child.once("exit", (code) => {
      const line = out.split("\n").find((l) => l.startsWith("ENQUEUE_COST "));
      if (code === 0 && line) resolve(JSON.parse(line.slice("ENQUEUE_COST ".length)) as EnqueueCostResult);
      else reject(new Error(`enqueue-cost ${dialect} exited with ${code}: ${out}`));
    });
  });
}

async function enqueuePhase(ctx: Ctx): Promise<EnqueueCostResult[]> {
  const out: EnqueueCostResult[] = [];
  for (let round = 0; round < ctx.opts.counts.rounds; round++) {
    for (const dialect of rotate(["postgresql", "sqlite"] as const, round)) {
      const r = await runEnqueueCost(dialect, ctx.opts.counts.enqueueTransactions);
      if (r.mails !== ctx.opts.counts.enqueueTransactions) ctx.failures.push(`enqueue ${dialect}: ${r.mails} mails in the outbox, expected ${ctx.opts.counts.enqueueTransactions}`);
      out.push(r);
      ctx.opts.log(`enqueue round ${round + 1} ${dialect}: alone ${fmt(r.aloneMs, 3)} ms, with one mail ${fmt(r.withMailMs, 3)} ms, ratio ${fmt(r.ratio, 2)}`);
    }
  }
  return out;
}

/** `relays` relay processes on one PostgreSQL schema with a backlog of `mails`. */
async function scaleOnce(ctx: Ctx, relays: number, mails: number, sink: Sink): Promise<ScaleRun & { firstClaim: number; lastRecorded: number }> {
  const store = await freshStore("relay-pg");
  try {
    await bulkLoad(store, ctx.template, mails);
    let recorded = 0;
    let allDone!: () => void;
    const done = new Promise<void>((resolve) => (allDone = resolve));
    const onProgress = (n: number) => {
      recorded += n;
      if (recorded >= mails) allDone();
    };
    const children = await Promise.all(
      Array.from({ length: relays }, (_, i) =>
        startChild<WorkerResult>(
          { role: "worker", expected: 0, collectSent: false, reportProgress: true, ...workerConfig("relay-pg", store, sink.url, { relayId: `bench-relay-${i + 1}` }) } as WorkerConfig,
          { onProgress },
        ),
      ),
    );
    await Promise.all(children.map((c) => c.ready));
    await done;
    for (const c of children) c.go();
    const results = await Promise.all(children.map((c) => c.result));
    const firstClaim = Math.min(...results.map((r) => r.firstClaim ?? Number.POSITIVE_INFINITY));
    const lastRecorded = Math.max(...results.map((r) => r.lastRecorded ?? Number.NEGATIVE_INFINITY));
    const o = await outcome(store);
    const sentReported = results.reduce((a, r) => a + r.sent, 0);
    const delivered = o.left === 0 && o.done === mails && sentReported === mails && o.handedOverTwice === 0;
    if (!delivered) ctx.failures.push(`scale-out ${relays} relays: ${o.done} sent, ${o.left} left, ${sentReported} 250s reported, ${o.handedOverTwice} handed over twice`);
    return { relays, mails, perSecond: (mails / (lastRecorded - firstClaim)) * 1000, handedOverTwice: o.handedOverTwice, sentReported, delivered, firstClaim, lastRecorded };
  } finally {
    await store.cleanup();
  }
}

async function scalePhase(ctx: Ctx): Promise<{ runs: ScaleRun[]; checks: ScaleCheck[] }> {
  const runs: ScaleRun[] = [];
  const checks: ScaleCheck[] = [];
  const mails = ctx.opts.counts.scaleMails;
  for (let round = 0; round < ctx.opts.counts.rounds; round++) {
    for (const k of rotate(ctx.opts.counts.scaleRelays, round)) {
      ctx.sink.clear();
      const r = await scaleOnce(ctx, k, mails, ctx.sink);
      const s = sinkCheck(ctx, mails);
      runs.push(r);
      checks.push(...(s.atSink !== null ? [{ relays: k, mails, sink: "smtp-server (this run)", distinct: s.atSink, twice: s.duplicates ?? 0 }] : []));
      ctx.opts.log(`scale-out round ${round + 1}, ${k} relay(s): ${fmt(r.perSecond)} mails/s, handed over twice: ${r.handedOverTwice}`);
    }
  }
  // With smtp-sink the timed runs cannot see Message-IDs: one more run per relay count into a
  // second smtp-sink that appends every message to a dump file, then count the Message-IDs in it.
  if (ctx.sink.kind === "smtp-sink") {
    for (const k of ctx.opts.counts.scaleRelays) {
      const dump = path.join(os.tmpdir(), `mail-outbox-bench-dump-${randomUUID()}`);
      const checkSink = await startSmtpSink({ dump });
      try {
        await scaleOnce(ctx, k, mails, checkSink);
      } finally {
        await checkSink.close();
      }
      const counts = await countDump(dump);
      rmSync(dump, { force: true });
      let twice = 0;
      for (const n of counts.values()) if (n > 1) twice++;
      if (counts.size !== mails || twice > 0) ctx.failures.push(`scale-out check, ${k} relays: ${counts.size} distinct Message-IDs at the sink (expected ${mails}), ${twice} twice`);
      checks.push({ relays: k, mails, sink: "smtp-sink -D (separate run)", distinct: counts.size, twice });
      ctx.opts.log(`scale-out check, ${k} relay(s): ${counts.size} distinct Message-IDs at the sink, ${twice} more than once`);
    }
  }
  return { runs, checks };
}

async function memoryPhase(ctx: Ctx): Promise<MemoryRun[]> {
  const out: MemoryRun[] = [];
  const plan = ctx.opts.counts.memory.flatMap((m) => Array.from({ length: m.runs }, () => m));
  for (const { backlog, drain } of plan) {
    const store = await freshStore("relay-pg");
    try {
      const loadMs = await bulkLoad(store, ctx.template, backlog);
      ctx.opts.log(`memory: loaded ${fmt(backlog)} mails in ${fmt(loadMs / 1000, 1)} s`);
      ctx.sink.clear();
      const key = `memory-${backlog}`;
      const dir = profileDirFor(ctx, key);
      const child = await startChild<WorkerResult>(
        { role: "worker", expected: drain, collectSent: false, reportProgress: false, memorySampleMs: 1000, ...workerConfig("relay-pg", store, ctx.sink.url) } as WorkerConfig,
        { timeoutMs: 900_000, ...(dir ? { cpuProfDir: dir } : {}) },
      );
      const r = await child.result;
      await summarizeProfile(ctx, key, dir);
      const o = await outcome(store);
      // The relay may have claimed (and handed over) up to a batch more than `drain` before it stopped.
      const delivered = o.done >= drain && r.sent >= drain && (drain < backlog || o.left === 0);
      if (!delivered) ctx.failures.push(`memory ${backlog}: ${o.done} sent of ${drain}, ${r.sent} 250s`);
      const perSecond = (drain / ((r.lastRecorded ?? Number.NaN) - (r.firstClaim ?? Number.NaN))) * 1000;
      out.push({ backlog, mails: drain, loadMs, maxRssKb: r.maxRssKb, perSecond, delivered, samples: r.memory });
      ctx.opts.log(`memory: ${fmt(drain)} of a ${fmt(backlog)} backlog: peak RSS ${fmt(r.maxRssKb / 1024, 1)} MB, ${fmt(perSecond)} mails/s`);
    } finally {
      await store.cleanup();
    }
  }
  return out;
}

// ---- the run -------------------------------------------------------------------------------------

function cmd(file: string, args: string[]): string {
  try {
    return execFileSync(file, args, { stdio: ["ignore", "pipe", "ignore"] }).toString().trim();
  } catch {
    return "n/a";
  }
}

function pkgVersion(name: string): string {
  try {
    return (JSON.parse(readFileSync(path.join(root, "node_modules", name, "package.json"), "utf8")) as { version: string }).version;
  } catch {
    return "n/a";
  }
}

/** The MariaDB server's version and the settings that bear on commit cost, as for PostgreSQL. */
async function mariadbInfo(): Promise<string> {
  try {
    const { MYSQL_ADMIN_URL } = await import("../test/support/services.js");
    const { default: mariadb } = await import("mariadb");
    const u = new URL(MYSQL_ADMIN_URL);
    const c = await mariadb.createConnection({ host: u.hostname, port: Number(u.port || 3306), user: decodeURIComponent(u.username) || "root", connectTimeout: 2000 });
    try {
      const [v] = (await c.query("SELECT VERSION() AS v")) as { v: string }[];
      const vars = (await c.query(
        "SHOW GLOBAL VARIABLES WHERE Variable_name IN ('innodb_buffer_pool_size', 'innodb_flush_log_at_trx_commit', 'sync_binlog', 'log_bin')",
      )) as { Variable_name: string; Value: string }[];
      return `${v!.v} at ${u.host} (${vars.map((x) => `${x.Variable_name}=${x.Value}`).join(", ")})`;
    } finally {
      await c.end();
    }
  } catch {
    return "n/a";
  }
}

async function machine(sink: Sink): Promise<Record<string, string>> {
  const cpus = os.cpus();
  const pgVersion = await withAdmin(async (c) => (await c.query<{ v: string }>("SELECT version() AS v")).rows[0]!.v.split(" on ")[0]!).catch(() => "n/a");
  const pgSettings = await withAdmin(async (c) => {
    const r = await c.query<{ name: string; setting: string; unit: string | null }>(
      `SELECT name, setting, unit FROM pg_settings WHERE name IN ('shared_buffers', 'synchronous_commit', 'fsync', 'max_wal_size')`,
    );
    return r.rows.map((x) => `${x.name}=${x.setting}${x.unit ?? ""}`).join(", ");
  }).catch(() => "n/a");
  return {
    source: `prisma-mail-outbox at ${cmd("git", ["-C", root, "describe", "--always", "--dirty"])}${process.env.BENCH_SRC_DIR ? ` with src/ replaced by ${process.env.BENCH_SRC_DIR} (BENCH_SRC_DIR)` : ""}`,
    CPU: `${cpus[0]?.model ?? "?"}, ${cpus.length} cores (os.availableParallelism() = ${os.availableParallelism()})`,
    memory: `${fmt(os.totalmem() / 2 ** 30, 1)} GiB`,
    OS: `${os.type()} ${os.release()} (${cmd("sh", ["-c", ". /etc/os-release && echo $PRETTY_NAME"])})`,
    "load average at start": os.loadavg().map((x) => x.toFixed(2)).join(" "),
    Node: process.version,
    PostgreSQL: `${pgVersion} at ${new URL(ADMIN_URL).host} (${pgSettings})`,
    SQLite: `better-sqlite3 ${pkgVersion("better-sqlite3")}, WAL`,
    MariaDB: await mariadbInfo(),
    sink: sink.kind === "smtp-sink" ? `Postfix smtp-sink ${cmd("postconf", ["-h", "mail_version"])} (${postfixTool("smtp-sink")})` : "smtp-server sink in the benchmark process",
    packages: ["nodemailer", "pg", "mariadb", "graphile-worker", "pg-boss", "@prisma/client"].map((p) => `${p} ${pkgVersion(p)}`).join(", "),
  };
}

export async function runBench(opts: BenchOptions): Promise<BenchResults> {
  const started = new Date();
  const t0 = performance.now();
  const useSmtpSink = opts.sink === "smtp-sink" || (opts.sink === "auto" && postfixTool("smtp-sink") !== null);
  const sink = useSmtpSink ? await startSmtpSink() : await startRecordingSink();
  const profileDir = opts.profile ? path.join(root, "bench", ".out", "profiles") : null;
  const ctx: Ctx = { opts, template: await mailTemplate(), sink, failures: [], profiles: {}, profileDir, profiled: new Set() };
  opts.log(`sink: ${sink.kind} on ${sink.url}; message size ${ctx.template.size} bytes`);
  let ceiling: BenchResults["ceiling"] = null;
  let drain: DrainRun[] = [];
  let latency: LatencyRun[] = [];
  let enqueue: EnqueueCostResult[] = [];
  let scale: { runs: ScaleRun[]; checks: ScaleCheck[] } = { runs: [], checks: [] };
  let memory: MemoryRun[] = [];
  let machineInfo: Record<string, string> = {};
  let fates: FatesResult | null = null;
  try {
    machineInfo = await machine(sink);
    const phase = async <T>(name: Phase, fn: () => Promise<T>, fallback: T): Promise<T> => {
      if (!opts.phases.includes(name)) return fallback;
      const p0 = performance.now();
      try {
        return await fn();
      } catch (err) {
        ctx.failures.push(`${name}: ${(err as Error).stack ?? String(err)}`);
        opts.log(`${name}: FAILED ${(err as Error).message}`);
        return fallback;
      } finally {
        opts.log(`== ${name} took ${fmt((performance.now() - p0) / 1000, 1)} s`);
      }
    };
    const ceilingRuns: number[] = [];
    await phase("ceiling", () => ceilingPhase(ctx, ceilingRuns), undefined);
    drain = await phase("drain", () => drainPhase(ctx, ceilingRuns), []);
    if (ceilingRuns.length > 0) ceiling = { runs: ceilingRuns, perSecond: median(ceilingRuns), messages: opts.counts.ceilingMessages };
    latency = await phase("latency", () => latencyPhase(ctx), []);
    enqueue = await phase("enqueue", () => enqueuePhase(ctx), []);
    scale = await phase("scale", () => scalePhase(ctx), scale);
    memory = await phase("memory", () => memoryPhase(ctx), []);
    fates = await phase(
      "fates",
      async () => {
        const r = await fatesBench({ mails: opts.counts.fatesMails, log: opts.log });
        ctx.failures.push(...r.failures);
        opts.log(
          `fates: follow-log ${r.log.matched}/${r.log.checked} matched (${r.log.unmatched.length} unmatched, ${r.log.wrong.length} wrong), ` +
            `ingest ${r.dsn.matched}/${r.dsn.checked}; delay from the line's arrival p50 ${fmt(r.fromArrival.p50)} ms, p95 ${fmt(r.fromArrival.p95)} ms, max ${fmt(r.fromArrival.max)} ms`,
        );
        return r;
      },
      null,
    );
  } finally {
    await sink.close();
  }
  return {
    startedAt: started.toISOString(),
    finishedAt: new Date().toISOString(),
    elapsedS: (performance.now() - t0) / 1000,
    counts: opts.counts,
    sink: sink.kind,
    machine: machineInfo,
    settings: settingsTable(),
    ceiling,
    drain,
    latency,
    enqueue,
    scale: scale.runs,
    scaleChecks: scale.checks,
    memory,
    profiles: ctx.profiles,
    fates,
    failures: ctx.failures,
  };
}

// ---- command line --------------------------------------------------------------------------------

function parseArgs(argv: readonly string[]) {
  const has = (f: string) => argv.includes(f);
  const value = (f: string) => {
    const i = argv.indexOf(f);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  const quick = has("--quick");
  const only = value("--only")?.split(",").filter(Boolean) as Phase[] | undefined;
  for (const p of only ?? []) if (!PHASES.includes(p) && !OPT_IN_PHASES.includes(p)) throw new Error(`unknown phase ${p}; phases: ${[...PHASES, ...OPT_IN_PHASES].join(", ")}; scripts of their own (named alone): ${STANDALONE.join(", ")}`);
  const fatesMails = value("--fates-mails");
  if (fatesMails !== undefined && !(Number.isInteger(Number(fatesMails)) && Number(fatesMails) > 0)) throw new Error(`--fates-mails: expected a positive integer, got ${fatesMails}`);
  const contenders = value("--contenders")?.split(",").filter(Boolean) as ContenderName[] | undefined;
  for (const c of contenders ?? []) if (!CONTENDERS.includes(c)) throw new Error(`unknown contender ${c}; contenders: ${CONTENDERS.join(", ")}`);
  const drainMails = value("--drain-mails");
  if (drainMails !== undefined && !(Number.isInteger(Number(drainMails)) && Number(drainMails) > 0)) throw new Error(`--drain-mails: expected a positive integer, got ${drainMails}`);
  const sink = (value("--sink") ?? "auto") as BenchOptions["sink"];
  const write = !has("--no-write") && !quick && !only && !contenders;
  return {
    quick,
    only,
    contenders,
    sink,
    profile: has("--profile"),
    write,
    // The fates section is written whenever the fates phase ran in full (it is opt-in: `--only fates`).
    writeFates: !has("--no-write") && !quick,
    fatesMails: fatesMails === undefined ? undefined : Number(fatesMails),
    drainMails: drainMails === undefined ? undefined : Number(drainMails),
    out: value("--out") ?? path.join(root, "BENCHMARKS.md"),
  };
}

/**
 * Benchmarks that run as scripts of their own and print their figures (their sections of
 * BENCHMARKS.md are pasted from that output): `npm run bench -- --only scaleout` runs
 * bench/scaleout.ts, passing the other arguments on (e.g. `--quick`).
 */
export const STANDALONE = ["scaleout", "enqueue-compare", "ops-gauges", "ops-pacing", "ops-retention", "ui-list"] as const;

function runStandalone(names: readonly string[], rest: readonly string[]): void {
  for (const name of names) {
    console.log(`[bench] ${name}: node --import tsx bench/${name}.ts ${rest.join(" ")}`);
    const r = spawnSync(process.execPath, ["--import", "tsx", path.join(root, "bench", `${name}.ts`), ...rest], { stdio: "inherit" });
    if (r.status !== 0) {
      process.exitCode = r.status ?? 1;
      return;
    }
  }
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  const onlyAt = argv.indexOf("--only");
  const named = onlyAt >= 0 ? (argv[onlyAt + 1] ?? "").split(",").filter(Boolean) : [];
  if (named.length > 0 && named.every((n) => (STANDALONE as readonly string[]).includes(n))) {
    runStandalone(named, [...argv.slice(0, onlyAt), ...argv.slice(onlyAt + 2)]);
    return;
  }
  const args = parseArgs(argv);
  const command = `npm run bench${process.argv.length > 2 ? ` -- ${process.argv.slice(2).join(" ")}` : ""}`;
  const counts = args.quick ? QUICK : FULL;
  const results = await runBench({
    counts: { ...counts, ...(args.fatesMails === undefined ? {} : { fatesMails: args.fatesMails }), ...(args.drainMails === undefined ? {} : { drainMails: args.drainMails }) },
    phases: args.only ?? PHASES,
    sink: args.sink,
    contenders: args.contenders ?? CONTENDERS,
    profile: args.profile,
    log: (line) => console.log(`[${new Date().toISOString().slice(11, 19)}] ${line}`),
  });
  const onlyFates = args.only !== undefined && args.only.every((p) => p === "fates");
  const report = onlyFates ? "" : renderReport(results, command);
  if (!onlyFates) console.log("\n" + report);
  const fatesReport = results.fates ? renderFates(results.fates, command, `prisma-mail-outbox at ${cmd("git", ["-C", root, "describe", "--always", "--dirty"])}`) : null;
  if (fatesReport) console.log("\n" + fatesReport);
  const json = path.join(root, "bench", ".out", "last-run.json");
  mkdirSync(path.dirname(json), { recursive: true });
  writeFileSync(json, JSON.stringify(results, null, 2));
  if (args.write) {
    writeReport(args.out, report);
    console.log(`wrote ${path.relative(process.cwd(), args.out)}`);
  }
  if (fatesReport && args.writeFates) {
    writeFatesSection(args.out, fatesReport);
    console.log(`wrote the fates section of ${path.relative(process.cwd(), args.out)}`);
  }
  if (results.failures.length > 0) {
    console.error(`\n${results.failures.length} problem(s):\n- ${results.failures.join("\n- ")}`);
    process.exitCode = 1;
  }
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().catch((err: unknown) => {
    console.error(err);
    process.exit(1);
  });
}
