/**
 * The delivery-fate benchmark (issue 10): N mails (1,000 by default) from a PostgreSQL outbox
 * through the real Postfix to a mix of destinations that deliver, defer then deliver, bounce and
 * expire (test/support/postfix-fate.ts; Postfix set up by scripts/install-postfix.sh), with
 * `followLog()` running live in a process of its own. Postfix's log is read independently (the test oracle); the fates
 * recorded must match it one to one (every recipient's fate, and every status line as exactly one
 * event), and the delay from the MTA's event to the row is reported as p50/p95/max:
 *
 * - from the moment the line reached the log file (the oracle's tail polls every 10 ms, so this
 *   reads up to 10 ms late), to `recorded_at` (PostgreSQL's `now()`: the start of the recording
 *   transaction);
 * - from the line's own time, which has 1 s resolution in syslog format: it reads 0-1 s early, so
 *   this figure is the one a user gets from the log alone, not the follower's own delay.
 *
 * The DSNs Postfix sent for this run are then ingested (`ingestMaildir`) and checked the same way.
 * Run by ./run.ts (`npm run bench -- --only fates [--fates-mails N]`), which prints the figures and
 * writes them to BENCHMARKS.md between the `bench:fates` markers. Needs root (it edits
 * /etc/postfix/transport), Postfix running, and PostgreSQL.
 */
import { execFileSync, spawn } from "node:child_process";
import { EventEmitter } from "node:events";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { performance } from "node:perf_hooks";
import { fileURLToPath } from "node:url";
import { createRelay } from "../src/relay.js";
import { mailOutbox } from "../src/extension.js";
import { openDatabase } from "../src/db.js";
import { followLog, type FollowLogCounts, type FollowLogOptions } from "../src/fate/follow-log.js";
import { ingestMaildir } from "../src/fate/ingest.js";
import type { DeliveryEventRecord, Store } from "../src/store.js";
import { freshPostgres, prismaClientFor } from "../test/support/db.js";
import { POSTFIX_LOG } from "../test/support/postfix.js";
import {
  BOUNCE_ADDRESS,
  PostfixLogTail,
  collectReports,
  compareDsnFates,
  compareLogFates,
  fateKey,
  fateSetupReason,
  readPostfixFates,
  settled,
  startFateDomains,
  type ExpectedMail,
  type FateComparison,
  type FateDomains,
  type LoggedFate,
  type RecordedFateEvent,
} from "../test/support/postfix-fate.js";
import { fmt, max, percentile } from "./stats.js";
import { withAdmin } from "./stores.js";

export interface FatesOptions {
  readonly mails: number;
  /** @default "smtp://127.0.0.1:25" */
  readonly transport?: string;
  readonly log: (line: string) => void;
}

export interface DelayFigures {
  readonly n: number;
  readonly p50: number;
  readonly p95: number;
  readonly max: number;
}

export interface FatesResult {
  readonly startedAt: string;
  readonly mails: number;
  readonly recipients: number;
  readonly transport: string;
  /** Recipients per fate in Postfix's log. */
  readonly byFate: Readonly<Record<LoggedFate, number>>;
  /** Status lines Postfix logged for this run's recipients (deferrals included). */
  readonly statusLines: number;
  readonly handOffMs: number;
  /** From the first hand-off until Postfix was done with every mail (the expiring ones take its 15 s queue lifetime). */
  readonly settledMs: number;
  readonly log: FateComparison;
  readonly dsn: FateComparison & { readonly reports: number };
  /** recorded_at minus the time the line reached the file (ms). */
  readonly fromArrival: DelayFigures;
  /** recorded_at minus the line's own time (1 s resolution) (ms). */
  readonly fromLineTime: DelayFigures;
  readonly follower: Record<string, number>;
  readonly settings: Record<string, string>;
  readonly machine: Record<string, string>;
  readonly failures: string[];
}

const FATES: readonly LoggedFate[] = ["delivered", "deferred", "bounced", "expired"];

/** The mix, per 20 mails: 7 delivered.test, 3 local, 3 deferred once, 3 bounced, 2 expired, 2 with a delivered and a bounced recipient. */
function recipientsOf(i: number, d: FateDomains): string[] {
  const slot = i % 20;
  if (slot < 7) return [d.address("delivered", `d${i}`)];
  if (slot < 10) return [`outbox-test+${d.tag}-${i}@localhost`];
  if (slot < 13) return [d.address("deferred", `f${i}`)];
  if (slot < 16) return [d.address("bounced", `b${i}`)];
  if (slot < 18) return [d.address("expired", `e${i}`)];
  return [d.address("delivered", `m${i}`), d.address("bounced", `n${i}`)];
}

function figures(xs: readonly number[]): DelayFigures {
  return { n: xs.length, p50: percentile(xs, 50), p95: percentile(xs, 95), max: max(xs) };
}

function cmd(file: string, args: readonly string[]): string {
  try {
    return execFileSync(file, [...args], { stdio: ["ignore", "pipe", "ignore"] }).toString().trim();
  } catch {
    return "n/a";
  }
}

/** A follow-log process on the outbox at `url` (this file run with `follow`): resolves once it has read to the end of the log. */
async function startFollower(url: string): Promise<{ stop(): Promise<FollowLogCounts>; kill(): void }> {
  const child = spawn(process.execPath, ["--import", "tsx", fileURLToPath(import.meta.url), "follow", url], { stdio: ["ignore", "pipe", "inherit"] });
  let out = "";
  const lines = new EventEmitter();
  child.stdout.on("data", (d: Buffer) => {
    out += d.toString();
    for (let i = out.indexOf("\n"); i >= 0; i = out.indexOf("\n")) {
      lines.emit("line", out.slice(0, i));
      out = out.slice(i + 1);
    }
  });
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  const line = (prefix: string) =>
    new Promise<string>((resolve, reject) => {
      const on = (l: string) => {
        if (!l.startsWith(prefix)) return;
        lines.off("line", on);
        resolve(l.slice(prefix.length));
      };
      lines.on("line", on);
      void exited.then((code) => reject(new Error(`the follow-log process exited with ${code} before it said ${prefix.trim()}`)));
    });
  await line("READY");
  return {
    async stop() {
      const counts = line("COUNTS ");
      child.kill("SIGTERM");
      return JSON.parse(await counts) as FollowLogCounts;
    },
    kill() {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    },
  };
}

/** The child: follow the log for the outbox at `url` until SIGTERM, then print its counts. */
async function followerProcess(url: string): Promise<void> {
  const store = await openDatabase(url);
  // BENCH_FOLLOW_LOG (JSON, e.g. {"pollIntervalMs":50}) overrides follow-log's defaults, for tuning.
  const tuning = JSON.parse(process.env.BENCH_FOLLOW_LOG ?? "{}") as Partial<FollowLogOptions>;
  const follower = followLog({ ...tuning, store, path: POSTFIX_LOG, logger: false });
  follower.once("caughtUp", () => process.stdout.write("READY\n"));
  process.once("SIGTERM", () => {
    void follower.stop().then(async (counts) => {
      process.stdout.write(`COUNTS ${JSON.stringify(counts)}\n`);
      await store.close();
      process.exit(0);
    });
  });
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url) && process.argv[2] === "follow") {
  followerProcess(process.argv[3] ?? "").catch((err: unknown) => {
    console.error(err);
    process.exit(1);
  });
}

/** Every event in the store, oldest recorded first (the store holds this run's mail only). */
async function allEvents(store: Store): Promise<(DeliveryEventRecord & { readonly messageId: string })[]> {
  const out: (DeliveryEventRecord & { readonly messageId: string })[] = [];
  let after: { readonly recordedAt: Date; readonly id: string } | null = null;
  for (;;) {
    const page: (DeliveryEventRecord & { readonly messageId: string })[] = await store.deliveryEventsAfter(after, 2000);
    out.push(...page);
    const last = page.at(-1);
    if (page.length < 2000 || !last) return out;
    after = { recordedAt: last.recordedAt, id: last.id };
  }
}

async function sleep(ms: number): Promise<void> {
  await new Promise((r) => setTimeout(r, ms));
}

/** Run the benchmark once. Throws when Postfix or PostgreSQL is missing; mismatches go to `failures`. */
export async function fatesBench(options: FatesOptions): Promise<FatesResult> {
  const transport = options.transport ?? "smtp://127.0.0.1:25";
  const log = options.log;
  const failures: string[] = [];
  const startedAt = new Date().toISOString();
  const setup = await fateSetupReason();
  if (setup !== null) throw new Error(`Postfix is not set up for the fates benchmark: ${setup}`);
  const tail = new PostfixLogTail(POSTFIX_LOG, 10).start();
  const domains = await startFateDomains();
  const fx = await freshPostgres();
  const store = await openDatabase(fx.url);
  const base = await prismaClientFor(fx.url);
  const work = mkdtempSync(path.join(os.tmpdir(), "mail-outbox-bench-fates-"));
  let follower: Awaited<ReturnType<typeof startFollower>> | null = null;
  try {
    const prisma = base.$extends(mailOutbox({ defaultFrom: `Bench <${BOUNCE_ADDRESS}>` })) as any;
    const planned = Array.from({ length: options.mails }, (_, i) => recipientsOf(i, domains));
    const enqueued: { id: string; messageId: string }[] = [];
    for (let i = 0; i < planned.length; i += 200) {
      const chunk = planned.slice(i, i + 200).map((to, k) => ({ to, subject: `fate bench ${i + k}`, text: `mail ${i + k}\n` }));
      enqueued.push(...((await prisma.outboxEmail.enqueueMany(chunk)) as { id: string; messageId: string }[]));
    }
    const mails: (ExpectedMail & { id: string })[] = enqueued.map((e, i) => ({ id: e.id, messageId: e.messageId, recipients: planned[i]! }));
    const recipients = mails.reduce((n, m) => n + m.recipients.length, 0);
    log(`fates: ${fmt(mails.length)} mails to ${fmt(recipients)} recipients enqueued; follow-log starts at the end of ${POSTFIX_LOG}`);

    // follow-log, live, in a process of its own (a sidecar, as in production), from the end of the
    // log (no cursor yet), with its defaults.
    follower = await startFollower(fx.url);

    const t0 = performance.now();
    const relay = createRelay({ databaseUrl: fx.url, transport, logger: false });
    const counts = await relay.runOnce();
    const handOffMs = performance.now() - t0;
    await relay.stop();
    if (counts.sent !== mails.length) failures.push(`fates: the relay handed over ${counts.sent} of ${mails.length} mails`);
    log(`fates: handed over in ${fmt(handOffMs)} ms through ${transport}; waiting for Postfix to settle every mail`);

    await tail.waitFor((lines) => {
      const f = readPostfixFates(lines);
      return mails.every((m) => settled(f, m.messageId, m.recipients));
    }, 180_000, "Postfix to settle every mail");
    const settledMs = performance.now() - t0;
    const logged = readPostfixFates(tail.lines);
    const lastLine = tail.lines.at(-1)!.arrivedAt;
    for (const deadline = Date.now() + 30_000; ; await sleep(50)) {
      const caught = await store.logCaughtUpAt();
      if (caught && caught.getTime() >= lastLine) break;
      if (Date.now() > deadline) {
        failures.push("fates: follow-log did not catch up with the log within 30 s of Postfix settling");
        break;
      }
    }
    const followerCounts = await follower.stop();
    if (followerCounts.duplicates !== 0 || followerCounts.recorded === 0) failures.push(`fates: follow-log counted ${JSON.stringify(followerCounts)}`);
    log(`fates: Postfix settled after ${fmt(settledMs / 1000, 1)} s; follow-log ${JSON.stringify(followerCounts)}`);

    // Every event of this run, with when it was recorded.
    const events = await allEvents(store);
    const recorded: RecordedFateEvent[] = events;
    const logCheck = compareLogFates(mails, logged, recorded);
    for (const w of [...logCheck.unmatched, ...logCheck.wrong].slice(0, 20)) failures.push(`fates (log): ${w}`);

    // Delay: pair each recorded log event with its line (same recipient, fate and second; in order).
    const lineQueue = new Map<string, { arrivedAt: number; at: number }[]>();
    for (const m of mails) {
      for (const r of m.recipients) {
        const entry = logged.recipients.get(fateKey(m.messageId, r));
        for (const e of entry?.events ?? []) {
          const k = `${fateKey(m.messageId, r)}\n${e.fate}\n${Math.floor(e.at.getTime() / 1000)}`;
          const list = lineQueue.get(k) ?? [];
          list.push({ arrivedAt: e.arrivedAt, at: e.at.getTime() });
          lineQueue.set(k, list);
        }
      }
    }
    const fromArrival: number[] = [];
    const fromLineTime: number[] = [];
    for (const e of [...events].sort((a, b) => a.recordedAt.getTime() - b.recordedAt.getTime())) {
      if (e.source !== "log" || e.event === "queued") continue;
      const k = `${fateKey(e.messageId, e.recipient)}\n${e.event}\n${Math.floor(e.at.getTime() / 1000)}`;
      const line = lineQueue.get(k)?.shift();
      if (!line) continue;
      fromArrival.push(e.recordedAt.getTime() - line.arrivedAt);
      fromLineTime.push(e.recordedAt.getTime() - line.at);
    }

    // The DSNs of this run, ingested from a Maildir of their own.
    const dir = path.join(work, "maildir");
    const reports = collectReports(mails.map((m) => m.messageId), dir, { move: true });
    const ingested = (await ingestMaildir(store, dir, { secret: null })).counts;
    if (ingested.recorded !== reports) failures.push(`fates (dsn): ${reports} reports, ingest counted ${JSON.stringify(ingested)}`);
    const dsnCheck = compareDsnFates(mails, logged, await allEvents(store), { success: false });
    for (const w of [...dsnCheck.unmatched, ...dsnCheck.wrong].slice(0, 20)) failures.push(`fates (dsn): ${w}`);
    log(`fates: ${reports} DSNs ingested: ${JSON.stringify(ingested)}`);

    const byFate = Object.fromEntries(FATES.map((f) => [f, 0])) as Record<LoggedFate, number>;
    let statusLines = 0;
    for (const m of mails) {
      for (const r of m.recipients) {
        const entry = logged.recipients.get(fateKey(m.messageId, r));
        if (entry) {
          byFate[entry.fate] += 1;
          statusLines += entry.events.length;
        }
      }
    }
    return {
      startedAt,
      mails: mails.length,
      recipients,
      transport,
      byFate,
      statusLines,
      handOffMs,
      settledMs,
      log: logCheck,
      dsn: { ...dsnCheck, reports },
      fromArrival: figures(fromArrival),
      fromLineTime: figures(fromLineTime),
      follower: { ...followerCounts },
      settings: {
        "follow-log": `followLog({ store, path: /var/log/postfix.log${process.env.BENCH_FOLLOW_LOG ? `, ...${process.env.BENCH_FOLLOW_LOG}` : ""} }) with its defaults otherwise (pollIntervalMs 250, batchLines 500), in a process of its own (bench/fates.ts follow), started before the hand-off`,
        relay: `createRelay({ transport: "${transport}" }) with its defaults, runOnce()`,
        Postfix: `${cmd("postconf", ["-h", "mail_version"])}: ${["queue_run_delay", "minimal_backoff_time", "maximal_backoff_time", "maximal_queue_lifetime", "delay_warning_time"].map((p) => `${p}=${cmd("postconf", ["-h", p])}`).join(", ")}`,
        oracle: "test/support/postfix-fate.ts: its own reading of the log (polled every 10 ms for arrival times), no code shared with src/fate/",
      },
      machine: {
        CPU: `${os.cpus()[0]?.model ?? "?"}, ${os.cpus().length} cores`,
        memory: `${fmt(os.totalmem() / 2 ** 30, 1)} GiB`,
        OS: `${os.type()} ${os.release()}`,
        "load average at start": os.loadavg().map((x) => x.toFixed(2)).join(" "),
        Node: process.version,
        PostgreSQL: await withAdmin(async (c) => (await c.query<{ v: string }>("SELECT version() AS v")).rows[0]!.v.split(" on ")[0]!).catch(() => "n/a"),
      },
      failures,
    };
  } finally {
    follower?.kill(); // a run that failed half-way leaves no follower behind
    tail.stop();
    await domains.close();
    await base.$disconnect();
    await store.close();
    await fx.cleanup();
    rmSync(work, { recursive: true, force: true });
  }
}

// ---- the report ----------------------------------------------------------------------------------

const BEGIN = "<!-- bench:fates:begin (generated by `npm run bench -- --only fates`; edit outside these markers) -->";
const END = "<!-- bench:fates:end -->";

const ms = (x: number) => `${fmt(x)} ms`;

/** The Markdown section for BENCHMARKS.md. */
export function renderFates(r: FatesResult, command: string, source: string): string {
  const check = (c: FateComparison) => `${fmt(c.matched)} of ${fmt(c.checked)} recipients matched, ${c.unmatched.length} unmatched, ${c.wrong.length} wrong`;
  return [
    `Run on ${r.startedAt.slice(0, 16).replace("T", " ")} UTC with \`${command}\` (${source}).`,
    "",
    `Machine: ${Object.entries(r.machine).map(([k, v]) => `${k} ${v}`).join("; ")}.`,
    "",
    ...Object.entries(r.settings).map(([k, v]) => `- ${k}: ${v}`),
    "",
    `${fmt(r.mails)} mails to ${fmt(r.recipients)} recipients through \`${r.transport}\`: Postfix delivered ${fmt(r.byFate.delivered)} (local Maildir, an SMTP server on loopback, and one that answered 451 once), bounced ${fmt(r.byFate.bounced)} (550 at RCPT), expired ${fmt(r.byFate.expired)} (450 until the 15 s queue lifetime ran out), in ${fmt(r.statusLines)} status lines. Hand-off ${ms(r.handOffMs)}; Postfix done with every mail ${fmt(r.settledMs / 1000, 1)} s after the hand-off began.`,
    "",
    "| source | compared with Postfix's log |",
    "| --- | --- |",
    `| follow-log (live) | ${check(r.log)}; every status line recorded exactly once |`,
    `| ingest (${fmt(r.dsn.reports)} DSNs from the bounce Maildir) | ${check(r.dsn)} |`,
    "",
    "Delay from the MTA's event to the row (`recorded_at`), per status line recorded by follow-log:",
    "",
    "| measured from | n | p50 | p95 | max |",
    "| --- | ---: | ---: | ---: | ---: |",
    `| the line's arrival in the log file (polled every 10 ms) | ${fmt(r.fromArrival.n)} | ${ms(r.fromArrival.p50)} | ${ms(r.fromArrival.p95)} | ${ms(r.fromArrival.max)} |`,
    `| the line's own time (syslog format, 1 s resolution) | ${fmt(r.fromLineTime.n)} | ${ms(r.fromLineTime.p50)} | ${ms(r.fromLineTime.p95)} | ${ms(r.fromLineTime.max)} |`,
    "",
    r.failures.length === 0 ? "No failures." : `**Failures:**\n\n${r.failures.map((f) => `- ${f}`).join("\n")}`,
  ].join("\n");
}

/** Replace the fates section of BENCHMARKS.md (between its markers), or add it after the main generated part. */
export function writeFatesSection(file: string, report: string): void {
  const block = `${BEGIN}\n${report}\n${END}`;
  const current = existsSync(file) ? readFileSync(file, "utf8") : "";
  const a = current.indexOf(BEGIN);
  const b = current.indexOf(END);
  let next: string;
  if (a >= 0 && b > a) {
    next = current.slice(0, a) + block + current.slice(b + END.length);
  } else {
    const section = `## Delivery fates: what Postfix did, recorded per recipient (issue 10)\n\n${block}\n`;
    const mainEnd = current.indexOf("<!-- bench:end -->");
    const at = mainEnd >= 0 ? current.indexOf("\n", mainEnd) + 1 : current.length;
    next = `${current.slice(0, at)}\n${section}${current.slice(at)}`;
  }
  writeFileSync(file, next);
}
