/**
 * One process of the benchmark: a contender draining its store ("worker"), or a producer that
 * commits mails at a steady rate ("producer"). Started by ./run.ts with `fork()`; the config is
 * the first argument (JSON), results go back over IPC. Times are `process.hrtime` in ms: a
 * monotonic clock that all processes on the machine share, so a commit time taken by the
 * producer and a 250 time taken by the contender can be subtracted.
 */
import { mailTemplate } from "./mail.js";
import type { ContenderName, RelayContender } from "./stores.js";
import type { Hooks, Producer, Running } from "./contenders/types.js";
import type { RelaySettings } from "./contenders/relay.js";
import type { GraphileSettings } from "./contenders/graphile.js";
import type { PgBossSettings } from "./contenders/pgboss.js";

/** A worker that records nothing for this long reports an error instead of waiting forever. */
const STALL_MS = 20_000;

export function nowMs(): number {
  return Number(process.hrtime.bigint()) / 1e6;
}

interface WorkerCommon {
  readonly role: "worker";
  /** Stop once this many mails are recorded; 0: run until the parent says stop (scale-out). */
  readonly expected: number;
  /** Report each 250 with its Message-ID and time (latency runs). */
  readonly collectSent: boolean;
  /** Send `progress` messages as mails are recorded (scale-out). */
  readonly reportProgress: boolean;
  /** Sample process.memoryUsage() every this many ms (0: never). */
  readonly memorySampleMs?: number;
}

export type WorkerConfig =
  | (WorkerCommon & { readonly contender: RelayContender; readonly settings: RelaySettings })
  | (WorkerCommon & { readonly contender: "graphile-worker"; readonly settings: GraphileSettings })
  | (WorkerCommon & { readonly contender: "pg-boss"; readonly settings: PgBossSettings });

export interface ProducerConfig {
  readonly role: "producer";
  readonly contender: ContenderName;
  /** Relay: the store URL; job queues: their schema. */
  readonly target: string;
  /** Mails per second, offered on a fixed schedule whatever the commits take. */
  readonly rate: number;
  readonly count: number;
  readonly connections: number;
}

export type ChildConfig = WorkerConfig | ProducerConfig;

export interface WorkerResult {
  readonly type: "result";
  readonly firstClaim: number | null;
  readonly lastRecorded: number | null;
  readonly recorded: number;
  readonly sent: number;
  readonly maxRssKb: number;
  readonly cpuMs: number;
  readonly sentAt: [string, number][];
  /** [ms since ready, rss, heapUsed, external + arrayBuffers] in kB, when sampling was asked for. */
  readonly memory: [number, number, number, number][];
}

export interface ProducerResult {
  readonly type: "result";
  readonly committedAt: [string, number][];
  readonly elapsedMs: number;
  /** The largest delay between a mail's slot in the schedule and the start of its transaction. */
  readonly maxLagMs: number;
}

export type ChildMessage = { readonly type: "ready" } | { readonly type: "progress"; readonly recorded: number } | { readonly type: "error"; readonly message: string } | WorkerResult | ProducerResult;

function send(m: ChildMessage): Promise<void> {
  return new Promise((resolve) => process.send!(m, () => resolve()));
}

function cpuMs(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
}

async function runWorker(cfg: WorkerConfig): Promise<void> {
  let firstClaim: number | null = null;
  let lastRecorded: number | null = null;
  let recorded = 0;
  let done = false;
  let sent = 0;
  const sentAt: [string, number][] = [];
  let finish!: () => void;
  const finished = new Promise<void>((resolve) => (finish = resolve));
  const hooks: Hooks = {
    claimed() {
      firstClaim ??= nowMs();
    },
    recorded(n) {
      if (n <= 0 || done) return;
      recorded += n;
      lastRecorded = nowMs();
      if (cfg.reportProgress) process.send!({ type: "progress", recorded: n } satisfies ChildMessage);
      if (cfg.expected > 0 && recorded >= cfg.expected) {
        done = true;
        finish();
      }
    },
    sent(messageId) {
      sent++;
      if (cfg.collectSent) sentAt.push([messageId, nowMs()]);
    },
  };
  const cpu0 = cpuMs();
  let running: Running;
  if (cfg.contender === "relay-pg" || cfg.contender === "relay-sqlite" || cfg.contender === "relay-mariadb") {
    const { startRelay } = await import("./contenders/relay.js");
    running = await startRelay(cfg.settings, hooks);
  } else if (cfg.contender === "graphile-worker") {
    const { startGraphile } = await import("./contenders/graphile.js");
    running = await startGraphile(cfg.settings, hooks);
  } else {
    const { startPgBoss } = await import("./contenders/pgboss.js");
    running = await startPgBoss(cfg.settings as PgBossSettings, hooks);
  }
  await send({ type: "ready" });
  // Fail fast instead of hanging when mails stop being recorded (a broken contender).
  const readyAt = nowMs();
  const memory: [number, number, number, number][] = [];
  const sampler = cfg.memorySampleMs
    ? setInterval(() => {
        const m = process.memoryUsage();
        memory.push([Math.round(nowMs() - readyAt), m.rss >> 10, m.heapUsed >> 10, (m.external + m.arrayBuffers) >> 10]);
      }, cfg.memorySampleMs)
    : null;
  let stalled: string | null = null;
  const watchdog = setInterval(() => {
    const since = lastRecorded ?? firstClaim ?? readyAt;
    if (cfg.expected > 0 && !done && nowMs() - since > STALL_MS) {
      stalled = `no mail recorded as handed over for ${STALL_MS / 1000} s (claimed: ${firstClaim !== null}, 250s: ${sent}, recorded: ${recorded} of ${cfg.expected})`;
      done = true;
      finish();
    }
  }, 1000);
  if (cfg.expected > 0) await finished;
  else await new Promise<void>((resolve) => process.once("message", () => resolve()));
  done = true;
  clearInterval(watchdog);
  if (sampler) clearInterval(sampler);
  const cpu = cpuMs() - cpu0;
  if (stalled) {
    await send({ type: "error", message: stalled });
    await Promise.race([running.stop(), new Promise((r) => setTimeout(r, 3000))]);
    return;
  }
  await running.stop();
  await send({ type: "result", firstClaim, lastRecorded, recorded, sent, maxRssKb: process.resourceUsage().maxRSS, cpuMs: cpu, sentAt, memory });
}

async function runProducer(cfg: ProducerConfig): Promise<void> {
  const t = await mailTemplate();
  let producer: Producer;
  if (cfg.contender === "relay-pg" || cfg.contender === "relay-sqlite" || cfg.contender === "relay-mariadb") {
    const { relayProducer } = await import("./contenders/relay.js");
    producer = await relayProducer(cfg.target, t, cfg.connections);
  } else if (cfg.contender === "graphile-worker") {
    const { graphileProducer } = await import("./contenders/graphile.js");
    producer = await graphileProducer(cfg.target, t, cfg.connections);
  } else {
    const { pgBossProducer } = await import("./contenders/pgboss.js");
    producer = await pgBossProducer(cfg.target, t, cfg.connections);
  }
  const { newMessageId } = await import("./mail.js");
  const ids = Array.from({ length: cfg.count }, () => newMessageId());
  // Warm the connections up before the clock starts.
  await send({ type: "ready" });
  await new Promise<void>((resolve) => process.once("message", () => resolve()));
  const committedAt: [string, number][] = [];
  const inFlight = new Set<Promise<void>>();
  const start = nowMs();
  const interval = 1000 / cfg.rate;
  let maxLag = 0;
  let i = 0;
  while (i < cfg.count) {
    // At most one transaction per connection in flight: when the database falls behind, the
    // schedule slips (maxLagMs says by how much) instead of queueing in the pool.
    while (inFlight.size >= cfg.connections) await Promise.race(inFlight);
    while (i < cfg.count && start + i * interval <= nowMs() && inFlight.size < cfg.connections) {
      maxLag = Math.max(maxLag, nowMs() - (start + i * interval));
      const mid = ids[i++]!;
      const p: Promise<void> = producer.enqueue(mid).then(
        () => {
          committedAt.push([mid, nowMs()]);
          inFlight.delete(p);
        },
        (err: unknown) => {
          inFlight.delete(p);
          throw err;
        },
      );
      inFlight.add(p);
    }
    const next = start + i * interval;
    await new Promise((resolve) => setTimeout(resolve, Math.max(0, Math.min(5, next - nowMs()))));
  }
  await Promise.all(inFlight);
  const elapsedMs = nowMs() - start;
  await producer.close();
  await send({ type: "result", committedAt, elapsedMs, maxLagMs: maxLag });
}

async function main(): Promise<void> {
  const cfg = JSON.parse(process.argv[2] ?? "{}") as ChildConfig;
  try {
    if (cfg.role === "worker") await runWorker(cfg);
    else await runProducer(cfg);
  } catch (err) {
    await send({ type: "error", message: err instanceof Error ? (err.stack ?? err.message) : String(err) });
    process.exitCode = 1;
  }
  // Exit even if a library left a timer or socket behind; --cpu-prof writes its profile on exit.
  setTimeout(() => process.exit(), 100);
}

if (process.send) void main();
