/**
 * Scale-out against a remote-like MTA (issue 13, item 3): an SMTP sink that holds each
 * transaction's final 250 for DELAY ms (10-50 ms, what a smarthost or a remote MTA takes per
 * transaction), a backlog of N mails preloaded into a fresh PostgreSQL schema, and 1, 2 or 4
 * relay processes with concurrency C each. Each relay talks to the sink over nodemailer's pool
 * (`smtp://127.0.0.1:PORT?pipelining=false&maxConnections=C`), the transport a remote MTA gets
 * (the pipelining client is only the default for a loopback host, and against an MTA that answers
 * each transaction after a delay it carries one transaction per connection anyway), so the
 * hand-offs in flight are relays x C.
 *
 * Per run: mails/s (first claim to the commit of the last completion, hrtime across processes),
 * relay CPU per 1,000 mails, and what PostgreSQL spends per mail:
 * - server side: CPU time (utime + stime from /proc/PID/stat) of the backends the relays opened
 *   (found by application_name), read at the end of the drain, divided by the mails. That is
 *   claim + completion + lease renewals + LISTEN, everything the relay asks PostgreSQL to do;
 *   the WAL writer, checkpointer and the fsync wait at commit are not in it.
 * - client side: wall time of the claim and completion statements as the relay sees them (the
 *   round trip on loopback included), per mail.
 * The bound one database carries is 1e6 / (backend µs per mail) x cores.
 *
 *   node --import tsx bench/scaleout.ts                      # the default plan (about 4 minutes)
 *   node --import tsx bench/scaleout.ts --mails 2000 --plan 25:1x10,1x40,2x40
 *   node --import tsx bench/scaleout.ts --quick              # 300 mails, 3 runs (seconds)
 *
 * Prints a Markdown table (and one `SCALEOUT {json}` line with every run).
 */
import { fork, type ChildProcess } from "node:child_process";
import { readFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { startTestSmtp, type TestSmtp } from "../testkit/smtp.js";
import { mailTemplate, type MailTemplate } from "./mail.js";
import { bulkLoad, freshStore, outcome, withAdmin } from "./stores.js";

const here = fileURLToPath(import.meta.url);

function nowMs(): number {
  return Number(process.hrtime.bigint()) / 1e6;
}

// ---- child: one relay process ---------------------------------------------------------------------

interface ChildConfig {
  readonly url: string;
  readonly smtpUrl: string;
  readonly relayId: string;
  readonly concurrency: number;
}

interface StatementTimes {
  /** name -> [calls, total ms] */
  readonly [name: string]: [number, number];
}

interface ChildResult {
  readonly type: "result";
  readonly firstClaim: number | null;
  readonly lastRecorded: number | null;
  readonly recorded: number;
  readonly sent: number;
  readonly cpuMs: number;
  readonly statements: StatementTimes;
}

type ChildMessage = { readonly type: "ready" } | { readonly type: "progress"; readonly n: number } | { readonly type: "error"; readonly message: string } | ChildResult;

type AnyFn = (...args: unknown[]) => unknown;

async function runChild(cfg: ChildConfig): Promise<void> {
  const send = (m: ChildMessage) => new Promise<void>((resolve) => process.send!(m, () => resolve()));
  // Time every named statement on the connection that runs it (pg.Client), so a wait for a
  // pooled connection is not counted.
  const pg = (await import("pg")).default;
  const times: Record<string, [number, number]> = {};
  const original = pg.Client.prototype.query as unknown as AnyFn;
  (pg.Client.prototype as unknown as { query: AnyFn }).query = function (this: unknown, ...args: unknown[]) {
    const name = (args[0] as { name?: string } | undefined)?.name;
    if (!name) return original.apply(this, args);
    const t0 = nowMs();
    const note = () => {
      const e = (times[name] ??= [0, 0]);
      e[0]++;
      e[1] += nowMs() - t0;
    };
    const last = args[args.length - 1];
    if (typeof last === "function") {
      args[args.length - 1] = (...r: unknown[]) => {
        note();
        return (last as AnyFn)(...r);
      };
      return original.apply(this, args);
    }
    const p = original.apply(this, args);
    if (p instanceof Promise) p.then(note, note);
    return p;
  };
  const { startRelay } = await import("./contenders/relay.js");
  let firstClaim: number | null = null;
  let lastRecorded: number | null = null;
  let recorded = 0;
  let sent = 0;
  const cpu0 = process.cpuUsage();
  const running = await startRelay(
    { url: cfg.url, smtpUrl: cfg.smtpUrl, relayId: cfg.relayId, concurrency: cfg.concurrency, pollIntervalMs: 1000 },
    {
      claimed() {
        firstClaim ??= nowMs();
      },
      recorded(n) {
        if (n <= 0) return;
        recorded += n;
        lastRecorded = nowMs();
        process.send!({ type: "progress", n } satisfies ChildMessage);
      },
      sent() {
        sent++;
      },
    },
  );
  await send({ type: "ready" });
  await new Promise<void>((resolve) => process.once("message", () => resolve()));
  const u = process.cpuUsage(cpu0);
  await running.stop();
  await send({ type: "result", firstClaim, lastRecorded, recorded, sent, cpuMs: (u.user + u.system) / 1000, statements: times });
}

// ---- parent ---------------------------------------------------------------------------------------

interface Started {
  readonly ready: Promise<void>;
  readonly result: Promise<ChildResult>;
  stop(): void;
}

function startChild(cfg: ChildConfig, onProgress: (n: number) => void): Started {
  const child: ChildProcess = fork(here, ["child", JSON.stringify(cfg)], { execArgv: ["--import", "tsx"], stdio: ["ignore", "inherit", "inherit", "ipc"] });
  let ready!: () => void;
  let fail!: (e: Error) => void;
  let done!: (r: ChildResult) => void;
  const readyP = new Promise<void>((res, rej) => {
    ready = res;
    fail = rej;
  });
  const result = new Promise<ChildResult>((res, rej) => {
    done = res;
    child.once("exit", (code) => rej(new Error(`relay ${cfg.relayId} exited with ${code} before its result`)));
  });
  result.catch(() => {});
  readyP.catch(() => {});
  child.on("message", (m: ChildMessage) => {
    if (m.type === "ready") ready();
    else if (m.type === "progress") onProgress(m.n);
    else if (m.type === "error") fail(new Error(m.message));
    else if (m.type === "result") done(m);
  });
  return { ready: readyP, result, stop: () => child.send("stop") };
}

const TICKS_PER_SECOND = 100; // getconf CLK_TCK on Linux

/** CPU ms (user + system) of the PostgreSQL backends whose application_name starts with `prefix`. */
async function backendCpuMs(prefix: string): Promise<{ ms: number; backends: number }> {
  const pids = await withAdmin(async (c) => (await c.query<{ pid: number }>(`SELECT pid FROM pg_stat_activity WHERE application_name LIKE $1`, [`${prefix}%`])).rows.map((r) => r.pid));
  let ticks = 0;
  for (const pid of pids) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, "latin1");
      const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      ticks += Number(f[11]) + Number(f[12]); // fields 14 and 15: utime, stime
    } catch {
      // backend gone, or PostgreSQL is on another host: no figure
    }
  }
  return { ms: (ticks * 1000) / TICKS_PER_SECOND, backends: pids.length };
}

export interface ScaleOutRun {
  readonly delayMs: number;
  readonly relays: number;
  readonly concurrency: number;
  readonly inFlight: number;
  readonly mails: number;
  readonly perSecond: number;
  /** What relays x concurrency could carry if only the sink's delay counted. */
  readonly idealPerSecond: number;
  readonly relayCpuMsPer1000: number;
  /** CPU of this process (the sink, smtp-server in Node, and the bookkeeping) while the relays drained, per 1,000 mails. */
  readonly sinkCpuMsPer1000: number;
  /** PostgreSQL backend CPU µs per mail (0 when /proc did not show the backends). */
  readonly pgCpuUsPerMail: number;
  readonly backends: number;
  /** Client-side wall µs per mail of the claim and the completion statements. */
  readonly claimUsPerMail: number;
  readonly completeUsPerMail: number;
  readonly claims: number;
  readonly completions: number;
  readonly delivered: boolean;
  readonly duplicatesAtSink: number;
}

async function runOnce(t: MailTemplate, sink: TestSmtp, delayMs: number, relays: number, concurrency: number, mails: number, tag: string): Promise<ScaleOutRun> {
  const store = await freshStore("relay-pg");
  try {
    await bulkLoad(store, t, mails);
    sink.clear();
    const prefix = `mail-outbox bench scaleout-${tag}-`;
    let recorded = 0;
    let allDone!: () => void;
    const done = new Promise<void>((resolve) => (allDone = resolve));
    // --pipelined: the library's pipelining client (the default for a loopback host), one connection per hand-off in flight.
    const smtpUrl = `smtp://127.0.0.1:${sink.port}?pipelining=${PIPELINED}&maxConnections=${concurrency}`;
    const children = Array.from({ length: relays }, (_, i) =>
      startChild({ url: store.url, smtpUrl, relayId: `scaleout-${tag}-${i + 1}`, concurrency }, (n) => {
        recorded += n;
        if (recorded >= mails) allDone();
      }),
    );
    await Promise.all(children.map((c) => c.ready));
    const sinkCpu0 = process.cpuUsage();
    let last = recorded;
    let lastAt = Date.now();
    const watchdog = new Promise<never>((_, reject) => {
      const iv = setInterval(() => {
        if (recorded !== last) {
          last = recorded;
          lastAt = Date.now();
        } else if (Date.now() - lastAt > 30_000) {
          clearInterval(iv);
          reject(new Error(`no progress for 30 s: ${recorded} of ${mails} recorded`));
        }
      }, 1000);
      void done.then(() => clearInterval(iv));
    });
    await Promise.race([done, watchdog]);
    const sinkCpu = process.cpuUsage(sinkCpu0);
    const pgCpu = await backendCpuMs(prefix);
    for (const c of children) c.stop();
    const results = await Promise.all(children.map((c) => c.result));
    const firstClaim = Math.min(...results.map((r) => r.firstClaim ?? Infinity));
    const lastRecorded = Math.max(...results.map((r) => r.lastRecorded ?? -Infinity));
    const o = await outcome(store);
    const counts = [...sink.countByMessageId().values()];
    const sum = (name: string, i: 0 | 1) => results.reduce((a, r) => a + Object.entries(r.statements).filter(([k]) => k.startsWith(name)).reduce((b, [, v]) => b + v[i], 0), 0);
    const cpu = results.reduce((a, r) => a + r.cpuMs, 0);
    return {
      delayMs,
      relays,
      concurrency,
      inFlight: relays * concurrency,
      mails,
      perSecond: (mails / (lastRecorded - firstClaim)) * 1000,
      idealPerSecond: (relays * concurrency * 1000) / delayMs,
      relayCpuMsPer1000: (cpu / mails) * 1000,
      sinkCpuMsPer1000: (sinkCpu.user + sinkCpu.system) / mails,
      pgCpuUsPerMail: (pgCpu.ms * 1000) / mails,
      backends: pgCpu.backends,
      claimUsPerMail: (sum("mail_outbox_claim", 1) * 1000) / mails,
      completeUsPerMail: (sum("mail_outbox_complete", 1) * 1000) / mails,
      claims: sum("mail_outbox_claim", 0),
      completions: sum("mail_outbox_complete", 0),
      delivered: o.done === mails && o.left === 0 && o.handedOverTwice === 0 && counts.length === mails,
      duplicatesAtSink: counts.filter((n) => n > 1).length,
    };
  } finally {
    await store.cleanup();
  }
}

/** `25:1x10,1x40;10:1x10` -> runs. */
function parsePlan(spec: string): { delayMs: number; relays: number; concurrency: number }[] {
  return spec.split(";").flatMap((part) => {
    const [d, list] = part.split(":");
    return list!.split(",").map((rc) => {
      const [r, c] = rc.split("x").map(Number);
      return { delayMs: Number(d), relays: r!, concurrency: c! };
    });
  });
}

const PIPELINED = process.argv.includes("--pipelined");

const DEFAULT_PLAN = "25:1x10,1x40,1x80,2x10,2x40,4x10,4x40;10:1x10,1x40,4x40;50:1x10,1x40,4x40";
const QUICK_PLAN = "25:1x10,2x10;10:1x40";

const fmt = (x: number, d = 0) => x.toLocaleString("en-US", { minimumFractionDigits: d, maximumFractionDigits: d });

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length === 0 ? NaN : s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

export function scaleOutTable(runs: readonly ScaleOutRun[]): string {
  const lines = [
    "| MTA delay | relays × concurrency | hand-offs in flight | mails/s | delay-only bound | relay CPU ms / 1,000 mails | sink CPU ms / 1,000 mails | PostgreSQL backend CPU µs / mail | claim + completion wall µs / mail (relay side) | statements (claim / completion) | all delivered once |",
    "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
  ];
  for (const r of runs) {
    lines.push(
      `| ${r.delayMs} ms | ${r.relays} × ${r.concurrency} | ${r.inFlight} | ${fmt(r.perSecond)} | ${fmt(r.idealPerSecond)} | ${fmt(r.relayCpuMsPer1000)} | ${fmt(r.sinkCpuMsPer1000)} | ${fmt(r.pgCpuUsPerMail)} | ${fmt(r.claimUsPerMail)} + ${fmt(r.completeUsPerMail)} | ${r.claims} / ${r.completions} | ${r.delivered ? "yes" : `NO (${r.duplicatesAtSink} twice)`} |`,
    );
  }
  return lines.join("\n");
}

async function main(argv: string[]): Promise<void> {
  const quick = argv.includes("--quick");
  const arg = (name: string) => {
    const i = argv.indexOf(name);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  const mails = Number(arg("--mails") ?? (quick ? 300 : 5000));
  const plan = parsePlan(arg("--plan") ?? (quick ? QUICK_PLAN : DEFAULT_PLAN));
  const t = await mailTemplate();
  const runs: ScaleOutRun[] = [];
  const started = Date.now();
  for (const delay of [...new Set(plan.map((p) => p.delayMs))]) {
    const sink = await startTestSmtp({ capture: "count", faults: (ctx) => (ctx.phase === "data" ? { stallMs: delay } : undefined) });
    try {
      for (const p of plan.filter((x) => x.delayMs === delay)) {
        const r = await runOnce(t, sink, delay, p.relays, p.concurrency, mails, `${delay}-${p.relays}x${p.concurrency}-${process.pid}`);
        runs.push(r);
        console.error(
          `scaleout ${delay} ms, ${p.relays} x ${p.concurrency}: ${fmt(r.perSecond)} mails/s (delay-only bound ${fmt(r.idealPerSecond)}), PG ${fmt(r.pgCpuUsPerMail)} µs/mail, relay ${fmt(r.relayCpuMsPer1000)} ms/1000, delivered ${r.delivered}`,
        );
      }
    } finally {
      await sink.close();
    }
  }
  const pgUs = median(runs.filter((r) => r.pgCpuUsPerMail > 0).map((r) => r.pgCpuUsPerMail));
  const cores = os.cpus().length;
  console.log(scaleOutTable(runs));
  console.log("");
  console.log(
    `PostgreSQL per mail (claim + completion and the rest the relay asks for), median over runs: ${fmt(pgUs)} µs of backend CPU -> one database carries about 1e6 / ${fmt(pgUs)} = ${fmt(1e6 / pgUs)} mails/s per core (${fmt((1e6 / pgUs) * cores)} on this machine's ${cores} cores) before WAL and fsync.`,
  );
  console.log(`Transport: smtp://127.0.0.1:PORT?pipelining=${PIPELINED}&maxConnections=C (${PIPELINED ? "the library's pipelining client" : "nodemailer's pool, what a remote MTA gets"}), relay concurrency C.`);
  console.log(`${mails} mails per run, ${runs.length} runs, ${fmt((Date.now() - started) / 1000)} s in all; ${os.cpus()[0]?.model ?? "?"} x ${cores}, Node ${process.version}`);
  console.log(`SCALEOUT ${JSON.stringify({ mails, cores, pgCpuUsPerMailMedian: pgUs, runs })}`);
  if (runs.some((r) => !r.delivered)) process.exitCode = 1;
}

if (process.argv[1] && path.resolve(process.argv[1]) === here) {
  if (process.argv[2] === "child") {
    runChild(JSON.parse(process.argv[3]!) as ChildConfig).then(
      () => setTimeout(() => process.exit(0), 100),
      async (err: unknown) => {
        process.send?.({ type: "error", message: err instanceof Error ? (err.stack ?? err.message) : String(err) });
        setTimeout(() => process.exit(1), 100);
      },
    );
  } else {
    main(process.argv.slice(2)).catch((err: unknown) => {
      console.error(err);
      process.exit(1);
    });
  }
}
