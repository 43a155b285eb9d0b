/**
 * The soak: producers, relay processes, a faulty MTA and database faults at once, for a while;
 * then a settle phase without faults, and the audit (soak/audit.ts).
 *
 * One run per database (PostgreSQL, SQLite, MariaDB), side by side, each with its own outbox, faulty
 * MTA process and relays. On PostgreSQL the run also restarts the server once and kills relay
 * backends; on MariaDB it restarts the server (soak/mysql.ts) once per five minutes of fault
 * phase, at least once, and measures how long the relays take to record outcomes again. A stretch
 * with Postfix (`sendmail-bs:` and `sendmail:`, daemon stopped and started) runs next to the first
 * run when Postfix is installed (soak/postfix-stretch.ts).
 */
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import { randomBytes } from "node:crypto";
import { monitorEventLoopDelay } from "node:perf_hooks";
import { mailOutbox } from "../src/extension.js";
import { prismaClientFor } from "../test/support/db.js";
import { audit, type AuditResult, type KillRecord } from "./audit.js";
import { attemptSummary, prepareDatabase, readRows, statusCounts } from "./facts.js";
import { DEFAULT_RATES, DEFAULT_REJECT_RATE, expDelay, NO_FAULTS, seeded, type FaultRates } from "./faults.js";
import { startFaultyMta, type FaultyMta } from "./mta.js";
import { prepareCluster, restartCluster, stopCluster, terminateRelayBackends, waitForPostgres, type PgCluster } from "./pg.js";
import { createSoakDatabase, dropSoakDatabase, ensureMysqlRunning, mysqlVersion, restartMysql, restartUnavailable } from "./mysql.js";
import { newLedger, runProducers, type OutboxClient } from "./producers.js";
import { memoryOf, RelaySlot } from "./relays.js";
import { postfixStretch, type PostfixStretchResult } from "./postfix-stretch.js";

export type SoakDatabase = "postgresql" | "sqlite" | "mysql";

export interface SoakOptions {
  /** Mails the producers enqueue per run (about 90% commit). */
  readonly mails: number;
  /** Length of each run's fault phase, in minutes (the settle phase comes after). */
  readonly minutes: number;
  readonly databases: readonly SoakDatabase[];
  readonly seed: number;
  /** "auto": the Postfix stretch runs when Postfix is installed and running; "off": never. */
  readonly postfix: "auto" | "off";
  /** A missing service (Postfix) fails the soak instead of being skipped (MAIL_OUTBOX_REQUIRE_SERVICES=1). */
  readonly requireServices: boolean;
  /** "dedicated" (a cluster of its own, see soak/pg.ts) or "VERSION/NAME" of an existing cluster. */
  readonly pgCluster: string;
  /** Database in an existing cluster (default `test`). */
  readonly pgDatabase?: string;
  /** Relay processes on PostgreSQL (SQLite always has one). */
  readonly pgRelays: number;
  /** Relay processes on MariaDB. */
  readonly mysqlRelays: number;
  /** How long MariaDB stays down in each restart, ms (after its clean shutdown). */
  readonly mysqlDownMs: number;
  /** MariaDB restarts per run; null: one per five minutes of fault phase, at least one. */
  readonly mysqlRestarts: number | null;
  /** Hand-offs in flight per relay. */
  readonly concurrency: number;
  /** Mean time between SIGKILLs of one relay, ms. */
  readonly killEveryMs: number;
  readonly rates: FaultRates;
  readonly rejectRate: number;
  /** Peak RSS a relay may reach. */
  readonly maxRssMb: number;
  /** RSS growth over a long-lived relay that counts as unbounded. */
  readonly maxGrowthMb: number;
  /** Longest the settle phase may take, ms. */
  readonly settleTimeoutMs: number;
  /** Relay logs and SQLite files go here. */
  readonly workDir: string;
  /** Keep the databases afterwards (always kept when a run fails). */
  readonly keep: boolean;
  readonly log: (line: string) => void;
}

export const DEFAULT_OPTIONS: Omit<SoakOptions, "log" | "workDir"> = {
  mails: 20_000,
  minutes: 5,
  databases: ["postgresql", "sqlite"],
  seed: 1,
  postfix: "auto",
  requireServices: process.env.MAIL_OUTBOX_REQUIRE_SERVICES === "1",
  pgCluster: "dedicated",
  pgRelays: 3,
  mysqlRelays: 3,
  mysqlDownMs: 3000,
  mysqlRestarts: null,
  concurrency: 8,
  killEveryMs: 75_000,
  rates: DEFAULT_RATES,
  rejectRate: DEFAULT_REJECT_RATE,
  maxRssMb: 400,
  maxGrowthMb: 64,
  settleTimeoutMs: 90_000,
  keep: false,
};

export interface SoakReport {
  readonly results: AuditResult[];
  readonly passed: boolean;
  /** Why a part did not run (Postfix missing...). */
  readonly skipped: string[];
  /** Facts per run for RELIABILITY.md and debugging. */
  readonly details: Record<string, unknown>[];
}

/** The relay's settings in the soak: short leases and backoff, so the run settles quickly. */
export function relayOptions(concurrency: number) {
  return {
    concurrency,
    batchSize: 20,
    leaseMs: 3000,
    pollIntervalMs: 250,
    handoffTimeoutMs: 4000,
    backoff: { baseMs: 250, maxMs: 3000, jitter: 0.3 },
  };
}
/** nodemailer gives up on a silent connection after this long (the URL's `timeout`). */
export const SMTP_TIMEOUT_MS = 2500;

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Sleep until `t` (epoch ms) or until aborted; true when the time came. */
function sleepUntil(t: number, signal: AbortSignal): Promise<boolean> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve(false);
    const timer = setTimeout(() => {
      signal.removeEventListener("abort", onAbort);
      resolve(true);
    }, Math.max(0, t - Date.now()));
    const onAbort = () => {
      clearTimeout(timer);
      resolve(false);
    };
    signal.addEventListener("abort", onAbort, { once: true });
  });
}

/** Serialise the harness's actions on one relay (kill loop, SIGTERM, crash restarts). */
class SlotLock {
  private chain = new Map<RelaySlot, Promise<unknown>>();
  run<T>(slot: RelaySlot, fn: () => Promise<T>): Promise<T> {
    const prev = this.chain.get(slot) ?? Promise.resolve();
    const next = prev.then(fn, fn);
    this.chain.set(slot, next.catch(() => {}));
    return next;
  }
}

interface RunContext {
  readonly label: string;
  readonly dialect: SoakDatabase;
  readonly url: string;
  readonly runTag: string;
  readonly cluster: PgCluster | null;
  readonly dir: string;
  readonly log: (line: string) => void;
}

export async function runSoak(opts: SoakOptions): Promise<SoakReport> {
  mkdirSync(opts.workDir, { recursive: true });
  const skipped: string[] = [];
  let cluster: PgCluster | null = null;
  const started = Date.now();
  // The producers share this process: its event-loop delay says how long their transactions may have stalled.
  const lag = monitorEventLoopDelay({ resolution: 20 });
  lag.enable();
  let lastTick = Date.now();
  const stallWatch = setInterval(() => {
    const gap = Date.now() - lastTick;
    if (gap > 2000) opts.log(`the harness's event loop stalled for ${gap} ms (its producers' transactions with it)`);
    lastTick = Date.now();
  }, 100);
  try {
    if (opts.databases.includes("postgresql")) {
      cluster = await prepareCluster(opts.pgCluster, opts.pgDatabase);
      opts.log(`PostgreSQL ${cluster.version}/${cluster.name} on port ${cluster.port}${cluster.ownedByUs ? " (the soak's own cluster)" : ""}`);
    }
    if (opts.databases.includes("mysql")) {
      await ensureMysqlRunning();
      opts.log(`MariaDB ${await mysqlVersion()}${opts.mysqlRestarts === 0 ? "" : "; its run restarts it"}`);
    }
    const runs = opts.databases.map((dialect, i) => runOne(opts, dialect, cluster, opts.seed * 1000 + i, i === 0 ? "with-postfix" : "plain", skipped));
    const outcomes = await Promise.all(runs);
    const results = outcomes.flatMap((o) => o.results);
    lag.disable();
    opts.log(`soak finished in ${Math.round((Date.now() - started) / 1000)} s; harness event-loop delay p99 ${Math.round(lag.percentile(99) / 1e6)} ms, max ${Math.round(lag.max / 1e6)} ms`);
    return { results, passed: results.length > 0 && results.every((r) => r.passed), skipped, details: outcomes.flatMap((o) => o.details) };
  } finally {
    clearInterval(stallWatch);
    // Whatever happened, leave MariaDB running: other work on this machine shares it.
    if (opts.databases.includes("mysql")) await ensureMysqlRunning(120_000).catch((err) => opts.log(`MariaDB did not come back: ${(err as Error).message}`));
    if (cluster) {
      // Whatever happened, leave PostgreSQL accepting connections (or stopped, if it is ours).
      await waitForPostgres(cluster.url, 60_000).catch((err) => opts.log(`PostgreSQL did not come back: ${(err as Error).message}`));
      await stopCluster(cluster);
    }
  }
}

async function runOne(
  opts: SoakOptions,
  dialect: SoakDatabase,
  cluster: PgCluster | null,
  seed: number,
  postfixMode: "with-postfix" | "plain",
  skipped: string[],
): Promise<{ results: AuditResult[]; details: Record<string, unknown>[] }> {
  const random = seeded(seed);
  const runTag = `s${seed.toString(36)}${randomBytes(3).toString("hex")}`;
  const dir = path.join(opts.workDir, `${dialect}-${runTag}`);
  mkdirSync(dir, { recursive: true });
  const url =
    dialect === "postgresql"
      ? (() => {
          const u = new URL(cluster!.url);
          u.searchParams.set("schema", `soak_${runTag}`);
          return u.toString();
        })()
      : dialect === "mysql"
        ? await createSoakDatabase(`soak_${runTag}`)
        : `file:${path.join(dir, "outbox.db")}`;
  const ctx: RunContext = { label: dialect, dialect, url, runTag, cluster, dir, log: (l) => opts.log(`[${dialect}] ${l}`) };
  await prepareDatabase(url);
  ctx.log(`outbox ${url}; relay logs in ${dir}`);

  const D = opts.minutes * 60_000;
  const mta = await startFaultyMta({ seed, rejectRate: opts.rejectRate });
  const mtaConfig = { rates: opts.rates, rejectRate: opts.rejectRate, shortStallMs: 150, longStallMs: 5000 };
  await mta.configure(mtaConfig);
  const prisma = await prismaClientFor(url);
  const client = prisma.$extends(mailOutbox({ defaultFrom: "Shop <shop@example.com>", maxAttempts: 50, messageIdDomain: "soak.example.com" })) as unknown as OutboxClient;

  const lock = new SlotLock();
  const faultsOff = new AbortController();
  let phase: "faults" | "settle" | "done" = "faults";
  const unexpectedExits: string[] = [];
  const relayCount = dialect === "postgresql" ? opts.pgRelays : dialect === "mysql" ? opts.mysqlRelays : 1;
  const relayPrefix = { postgresql: "pg", sqlite: "sqlite", mysql: "my" }[dialect];
  const names = "abcdefghij";
  const slots: RelaySlot[] = [];
  for (let i = 0; i < relayCount; i++) {
    const slot: RelaySlot = new RelaySlot(
      {
        name: `${relayPrefix}-${names[i]}`,
        idPrefix: `soak-${runTag}-`,
        databaseUrl: url,
        transport: `${mta.url}?timeout=${SMTP_TIMEOUT_MS}&maxConnections=${opts.concurrency}`,
        options: relayOptions(opts.concurrency),
        logFile: path.join(dir, `relay-${dialect}-${names[i]}.log`),
        stopDeadlineMs: 3000,
      },
      (s, inc) => {
        unexpectedExits.push(`${inc.relayId} (exit ${inc.exitCode ?? inc.exitSignal})`);
        ctx.log(`relay ${inc.relayId} exited on its own (code ${inc.exitCode}, signal ${inc.exitSignal}); restarting it`);
        if (phase !== "done") void lock.run(s, async () => {
          await sleep(1000);
          if (phase !== "done") await s.start();
        });
      },
    );
    slots.push(slot);
  }
  const kills: KillRecord[] = [];
  const dbRestarts: number[] = [];
  const dbRestartTimes: number[] = [];
  /** MariaDB restarts: the outage, and how long until the relays recorded an outcome again. */
  const mysqlRestarts: { at: number; stopMs: number; outageMs: number; relaysRecoveredMs: number | null; producersRecoveredMs: number | null }[] = [];
  let backendKills = 0;
  let backendKillRounds = 0;
  let refusals = 0;
  const notes: string[] = [];
  const ledger = newLedger();
  const results: AuditResult[] = [];
  const details: Record<string, unknown>[] = [];
  let postfix: Promise<PostfixStretchResult | null> = Promise.resolve(null);
  let keep = opts.keep;

  try {
    await Promise.all(slots.map((s) => s.start()));
    const t0 = Date.now();
    const phaseEnd = t0 + D;
    ctx.log(`${slots.length} relay process(es) started; fault phase ${Math.round(D / 1000)} s, ${opts.mails} mails`);

    const producers = runProducers({
      client,
      runTag,
      mails: opts.mails,
      windowMs: D * 0.8,
      workers: dialect === "sqlite" ? 3 : 6,
      random: seeded(seed ^ 0xabc),
      signal: faultsOff.signal,
      ledger,
    });

    const tasks: Promise<unknown>[] = [];
    const signal = faultsOff.signal;

    // SIGKILL each relay at random moments (at least once), and restart it.
    for (const slot of slots) {
      tasks.push(
        (async () => {
          let killed = 0;
          for (;;) {
            let at = Date.now() + Math.max(3000, expDelay(random, opts.killEveryMs));
            if (killed === 0) at = Math.min(at, t0 + D * (0.2 + 0.6 * random()));
            if (at >= phaseEnd - 3000) break;
            if (!(await sleepUntil(at, signal))) break;
            await lock.run(slot, async () => {
              const inc = await slot.kill();
              if (!inc) return;
              kills.push({ how: "SIGKILL", relay: inc.relayId, concurrency: opts.concurrency });
              killed++;
              ctx.log(`SIGKILL ${inc.relayId} (sent ${inc.sent})`);
              await sleep(300 + random() * 2000);
              await slot.start();
            });
          }
        })(),
      );
    }

    // One graceful stop mid-batch (SIGTERM while producers are busy), then a restart.
    tasks.push(
      (async () => {
        if (!(await sleepUntil(t0 + D * 0.4, signal))) return;
        const slot = slots[slots.length > 1 ? 1 : 0]!;
        await lock.run(slot, async () => {
          const inc = await slot.stop("SIGTERM");
          if (!inc) return;
          kills.push({ how: "SIGTERM", relay: inc.relayId, concurrency: opts.concurrency });
          ctx.log(`SIGTERM ${inc.relayId}: exit ${inc.exitCode ?? inc.exitSignal}${inc.stoppedCleanly ? ", stopped cleanly" : ", did NOT report a clean stop"}`);
          if (inc.exitCode !== 0 || !inc.stoppedCleanly) unexpectedExits.push(`${inc.relayId} (SIGTERM: exit ${inc.exitCode ?? inc.exitSignal})`);
          await sleep(500);
          await slot.start();
        });
      })(),
    );

    // The MTA refuses every connection for a few seconds, now and then.
    tasks.push(
      (async () => {
        const n = Math.max(1, Math.round(D / 90_000));
        for (let i = 0; i < n; i++) {
          const at = t0 + D * (0.9 * (i + 0.3 + 0.4 * random())) / n;
          if (!(await sleepUntil(at, signal))) return;
          const ms = 2000 + Math.round(random() * 4000);
          await mta.refuse();
          refusals++;
          ctx.log(`MTA refuses all connections for ${ms} ms`);
          await sleepUntil(Date.now() + ms, signal);
          await mta.accept();
        }
      })(),
    );

    if (dialect === "postgresql" && cluster) {
      // The server restarted once, mid-run.
      tasks.push(
        (async () => {
          if (!(await sleepUntil(t0 + D * 0.5, signal))) return;
          const inFlightBound = slots.filter((s) => s.running).length * opts.concurrency;
          dbRestarts.push(inFlightBound);
          dbRestartTimes.push(Date.now());
          const ms = await restartCluster(cluster);
          ctx.log(`PostgreSQL restarted (${ms} ms until it accepted connections again)`);
        })(),
      );
      // Relay connections killed from the server side.
      tasks.push(
        (async () => {
          let at = t0 + D * 0.08;
          for (;;) {
            at += (D / 7) * (0.6 + 0.8 * random());
            if (at >= phaseEnd) return;
            if (!(await sleepUntil(at, signal))) return;
            try {
              const n = await terminateRelayBackends(cluster.url, runTag);
              backendKills += n;
              backendKillRounds++;
              ctx.log(`pg_terminate_backend on ${n} relay connection(s)`);
            } catch (err) {
              ctx.log(`could not kill relay backends: ${(err as Error).message}`);
            }
          }
        })(),
      );
    }

    if (dialect === "mysql") {
      // The server restarted mid-run: once per five minutes of fault phase, at least once.
      const restarts = opts.mysqlRestarts ?? Math.max(1, Math.round(D / 300_000));
      const restartable = restarts > 0 ? await restartUnavailable() : null;
      if (restarts === 0) {
        skipped.push("MariaDB restarts: none asked for (--mysql-restarts 0)");
      } else if (restartable !== null) {
        if (opts.requireServices) throw new Error(`the MariaDB run cannot restart the server: ${restartable}`);
        skipped.push(`MariaDB restarts: ${restartable}`);
      } else {
        tasks.push(
          (async () => {
            for (let i = 0; i < restarts; i++) {
              if (!(await sleepUntil(t0 + (D * (i + 1)) / (restarts + 1), signal))) return;
              const inFlightBound = slots.filter((s) => s.running).length * opts.concurrency;
              dbRestarts.push(inFlightBound);
              ctx.log("MariaDB: SIGTERM to mariadbd");
              const r = await restartMysql(opts.mysqlDownMs);
              const committedBefore = ledger.transactions.committed;
              const sentBefore = (await statusCounts(url).catch(() => ({}) as Record<string, number>)).sent ?? 0;
              ctx.log(`MariaDB restarted: clean shutdown ${r.stopMs} ms, ${r.outageMs} ms until it accepted connections again (${sentBefore} rows sent then)`);
              // Recovery: from the moment the server answers again until the relays record an
              // outcome (one more row sent than when it came back) and a producer's transaction commits.
              let relaysRecoveredMs: number | null = null;
              let producersRecoveredMs: number | null = null;
              while (Date.now() - r.upAt < 60_000 && (relaysRecoveredMs === null || producersRecoveredMs === null)) {
                if (producersRecoveredMs === null && ledger.transactions.committed > committedBefore) producersRecoveredMs = Date.now() - r.upAt;
                if (relaysRecoveredMs === null && ((await statusCounts(url).catch(() => ({}) as Record<string, number>)).sent ?? 0) > sentBefore) relaysRecoveredMs = Date.now() - r.upAt;
                await sleep(100);
              }
              mysqlRestarts.push({ at: Math.round((r.upAt - t0) / 1000), stopMs: r.stopMs, outageMs: r.outageMs, relaysRecoveredMs, producersRecoveredMs });
              ctx.log(`after the restart: relays recorded outcomes again after ${relaysRecoveredMs ?? "(not within 60 s)"} ms, producers committed again after ${producersRecoveredMs ?? "(not within 60 s)"} ms`);
            }
          })(),
        );
      }
    }

    if (postfixMode === "with-postfix" && opts.postfix !== "off") {
      postfix = postfixStretch({
        cluster,
        sqliteDir: dir,
        runTag,
        seed,
        startAt: t0 + D * 0.15,
        lengthMs: D * 0.6,
        mails: Math.max(60, Math.min(1000, Math.round(opts.mails * 0.05))),
        requireServices: opts.requireServices,
        maxRssBytes: opts.maxRssMb * 1024 * 1024,
        maxGrowthBytes: opts.maxGrowthMb * 1024 * 1024,
        settleTimeoutMs: opts.settleTimeoutMs,
        dbRestartTimes,
        log: (l) => opts.log(`[postfix] ${l}`),
        skipped,
      }).catch((err: unknown) => {
        const message = err instanceof Error ? (err.stack ?? err.message) : String(err);
        opts.log(`[postfix] the stretch failed: ${message}`);
        return {
          result: { label: "postfix", passed: false, line: `postfix: the stretch failed: ${message.split("\n")[0]} => FAIL (1)`, failures: [message], counts: {} as AuditResult["counts"] },
          details: { run: "postfix", error: message },
        };
      });
    }

    await sleepUntil(phaseEnd, new AbortController().signal);
    // ---- settle: faults off, every relay running, wait until nothing is pending or sending
    phase = "settle";
    faultsOff.abort();
    await Promise.all(tasks);
    await mta.configure({ ...mtaConfig, rates: NO_FAULTS });
    await mta.accept();
    if (cluster) await waitForPostgres(cluster.url);
    if (dialect === "mysql") await ensureMysqlRunning();
    await producers;
    for (const slot of slots) await lock.run(slot, () => slot.start());
    ctx.log(
      `fault phase over: ${ledger.transactions.committed} transactions committed, ${ledger.transactions.rolledBack} rolled back, ${ledger.transactions.failed} failed; settling`,
    );
    const settleStart = Date.now();
    let settled = false;
    let last: Record<string, number> = {};
    while (Date.now() - settleStart < opts.settleTimeoutMs) {
      last = await statusCounts(url).catch(() => ({ unknown: 1 }));
      if ((last.pending ?? 0) + (last.sending ?? 0) + (last.unknown ?? 0) === 0) {
        settled = true;
        break;
      }
      await sleep(500);
    }
    ctx.log(`${settled ? "settled" : "did NOT settle"} in ${Math.round((Date.now() - settleStart) / 1000)} s: ${JSON.stringify(last)}`);
    phase = "done";
    for (const slot of slots) await lock.run(slot, () => slot.stop("final-stop"));
    for (const slot of slots) {
      const inc = slot.incarnations.at(-1);
      if (inc && (inc.exitCode !== 0 || !inc.stoppedCleanly)) unexpectedExits.push(`${inc.relayId} (final SIGTERM: exit ${inc.exitCode ?? inc.exitSignal})`);
    }

    // ---- audit
    const report = await mta.report();
    // Kept with the relay logs, for looking into a failed audit.
    writeFileSync(path.join(dir, "mta-copies.jsonl"), report.copies.map((c) => JSON.stringify(c)).join("\n"));
    const rows = await readRows(url);
    if (refusals) notes.push(`MTA refusals ${refusals}`);
    for (const r of mysqlRestarts) {
      const later = (ms: number | null) => (ms === null ? "not within 60 s" : `${(ms / 1000).toFixed(1)} s later`);
      notes.push(`restart at ${r.at} s: outage ${(r.outageMs / 1000).toFixed(1)} s, relays recording again ${later(r.relaysRecoveredMs)}, producers committing again ${later(r.producersRecoveredMs)}`);
    }
    const result = audit({
      label: dialect,
      ledger,
      rows,
      copies: report.copies,
      rejectRate: opts.rejectRate,
      mtaName: "SMTP server",
      kills,
      dbRestarts,
      backendKills,
      notes,
      settled,
      memory: slots.map((s) => memoryOf(s)),
      maxRssBytes: opts.maxRssMb * 1024 * 1024,
      maxGrowthBytes: opts.maxGrowthMb * 1024 * 1024,
      unexpectedExits,
    });
    results.push(result);
    if (!result.passed) keep = true;
    details.push({
      run: dialect,
      runTag,
      url,
      dir,
      counts: result.counts,
      ledger: {
        enqueued: ledger.enqueued,
        transactions: ledger.transactions,
        txTimeMs: ledger.txTime,
        ops: ledger.ops,
        idempotencyKeys: ledger.keys.size,
        idempotentRefusals: [...ledger.keys.values()].reduce((s, e) => s + e.refusals, 0),
        errors: ledger.errors.slice(0, 10),
      },
      injected: report.injected,
      mtaSessions: report.sessions,
      attempts: await attemptSummary(url),
      kills,
      dbRestarts,
      mysqlRestarts,
      backendKills,
      backendKillRounds,
      memory: slots.map((s) => memoryOf(s)),
      incarnations: slots.flatMap((s) =>
        s.incarnations.map((i) => ({ id: i.relayId, lifeS: Math.round(((i.endedAt ?? Date.now()) - i.startedAt) / 1000), end: i.endReason, exit: i.exitCode ?? i.exitSignal, peakRssMb: Math.round(i.peakRss / 1048576), sent: i.sent })),
      ),
    });
    const pf = await postfix;
    if (pf) {
      results.push(pf.result);
      details.push(pf.details);
      if (!pf.result.passed) keep = true;
    }
  } finally {
    phase = "done";
    faultsOff.abort();
    await Promise.all(slots.map((s) => s.kill().catch(() => undefined)));
    await postfix.catch(() => null); // it starts Postfix again itself

    await mta.close().catch(() => {});
    await prisma.$disconnect().catch(() => {});
    if (!keep) {
      rmSync(dir, { recursive: true, force: true });
    } else {
      ctx.log(`kept for inspection: ${url} and ${dir}`);
    }
  }
  if (dialect === "mysql" && !keep) await dropSoakDatabase(`soak_${runTag}`).catch(() => {});
  if (dialect === "postgresql" && !keep && cluster) {
    await dropSchema(cluster.url, `soak_${runTag}`).catch(() => {});
    await dropSchema(cluster.url, `soak_${runTag}pf`).catch(() => {});
  }
  return { results, details };
}

async function dropSchema(baseUrl: string, schema: string): Promise<void> {
  const pg = (await import("pg")).default;
  const client = new pg.Client({ connectionString: baseUrl, application_name: "soak-harness" });
  await client.connect();
  try {
    await client.query(`DROP SCHEMA IF EXISTS "${schema.replace(/"/g, '""')}" CASCADE`);
  } finally {
    await client.end();
  }
}
