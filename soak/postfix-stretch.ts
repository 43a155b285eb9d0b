/**
 * The Postfix stretch: for part of the run, mail goes to the real local Postfix through the
 * `sendmail-bs:` and `sendmail:` transports (one relay each, on an outbox of its own), while the
 * Postfix daemon is stopped and started, and the relays are SIGKILLed: the `sendmail-bs:` one
 * during the first outage, and both while Postfix runs.
 *
 * The relays run under leaseExpiryPolicy "verify" with a log follower (`followLog` over Postfix's
 * log, in this process, on the stretch's outbox), and their writes of outcomes are slowed down
 * (COMPLETE_DELAY_MS) so that kills land between Postfix's acceptance and the row's `sent`: the
 * uncertain hand-offs that make duplicates under "resend". The audit holds them to 0 duplicates
 * caused by relay deaths and 0 lost.
 * "Delivered" here means: in the test Maildir (scripts/install-postfix.sh), found by Message-ID.
 *
 * The kill during the outage is the hard case: Postfix's sendmail (also `sendmail -bs`) answers
 * while the daemon is stopped, into its maildrop, and that mail reaches the log only once Postfix
 * starts again. A silent log proves nothing then; "verify" waits for Postfix to log something
 * after the hold (fate/verify.ts, local submission). Before that rule this stretch found 9
 * duplicates in one run.
 */
import { readdirSync, statSync } from "node:fs";
import path from "node:path";
import { mailOutbox } from "../src/extension.js";
import { openDatabase } from "../src/db.js";
import { followLog, type LogFollower } from "../src/fate/follow-log.js";
import { prismaClientFor } from "../test/support/db.js";
import { postfixReason } from "../test/support/services.js";
import { POSTFIX_LOG, readHead, startPostfix, stopPostfix, TEST_MAILDIR } from "../test/support/postfix.js";
import { audit, type AuditResult, type KillRecord } from "./audit.js";
import { prepareDatabase, readRows, statusCounts, attemptSummary } from "./facts.js";
import { OP_HEADER, ROLLBACK_OP, RUN_HEADER, seeded, type MtaCopy } from "./faults.js";
import type { PgCluster } from "./pg.js";
import { newLedger, runProducers, type OutboxClient } from "./producers.js";
import { memoryOf, RelaySlot } from "./relays.js";

export interface PostfixStretchOptions {
  readonly cluster: PgCluster | null;
  /** Where the SQLite outbox goes when there is no PostgreSQL cluster. */
  readonly sqliteDir: string;
  readonly runTag: string;
  readonly seed: number;
  readonly startAt: number;
  readonly lengthMs: number;
  readonly mails: number;
  readonly requireServices: boolean;
  readonly maxRssBytes: number;
  readonly maxGrowthBytes: number;
  readonly settleTimeoutMs: number;
  /** Server restarts of the cluster: the main run pushes their times here. */
  readonly dbRestartTimes?: readonly number[];
  readonly log: (line: string) => void;
  readonly skipped: string[];
}

export interface PostfixStretchResult {
  readonly result: AuditResult;
  readonly details: Record<string, unknown>;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const sleepUntil = (t: number) => sleep(Math.max(0, t - Date.now()));

/** How long each relay's write of outcomes waits (soak/relay-process.ts COMPLETE_DELAY_MS): the window a kill must hit. */
const COMPLETE_DELAY_MS = 1500;
/** Kills while Postfix runs: one per this much of the stretch, at least 8 planned (those inside an outage are left out). */
const RUNNING_KILL_EVERY_MS = 8000;

/**
 * When to SIGKILL a relay while Postfix runs, as fractions of the stretch: evenly from 5% to 73%
 * (the producers stop at 75%), none inside an outage (plus 3% before and after it).
 */
export function runningKillPlan(lengthMs: number, outages: readonly { readonly at: number; readonly ms: number }[]): number[] {
  const n = Math.max(8, Math.round(lengthMs / RUNNING_KILL_EVERY_MS));
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const f = 0.05 + (0.68 * i) / Math.max(1, n - 1);
    if (outages.every((o) => f < o.at - 0.03 || f > o.at + o.ms / lengthMs + 0.03)) out.push(f);
  }
  return out;
}

/** Message-IDs (with angle brackets) of the Maildir files of this run, cached per file name. */
class MaildirScanner {
  private readonly seen = new Map<string, { messageId: string; rollback: boolean; at: number; recipient: string } | null>();
  constructor(
    private readonly dir: string,
    private readonly runTag: string,
  ) {}

  scan(): MtaCopy[] {
    const out: MtaCopy[] = [];
    for (const sub of ["new", "cur"]) {
      let names: string[];
      try {
        names = readdirSync(path.join(this.dir, sub));
      } catch {
        continue;
      }
      for (const name of names) {
        const key = name.split(":")[0]!; // new/X and cur/X:2,S are the same message
        let info = this.seen.get(key);
        if (info === undefined) {
          info = this.read(path.join(this.dir, sub, name));
          if (info === undefined) continue;
          this.seen.set(key, info);
        }
      }
    }
    for (const info of this.seen.values()) {
      if (info) out.push({ messageId: info.messageId, kind: "ok", rollbackMarker: info.rollback, recipients: [info.recipient], at: info.at });
    }
    return out;
  }

  /** undefined: could not read (moved meanwhile); null: not ours. */
  private read(file: string): { messageId: string; rollback: boolean; at: number; recipient: string } | null | undefined {
    const head = readHead(file);
    if (head === null) return undefined;
    let at: number;
    try {
      at = statSync(file).mtimeMs;
    } catch {
      return undefined;
    }
    const end = head.search(/\r?\n\r?\n/);
    const h = (end >= 0 ? head.slice(0, end) : head).replace(/\r?\n[ \t]+/g, " ");
    const run = new RegExp(`^${RUN_HEADER}:[ \\t]*(\\S+)`, "im").exec(h)?.[1];
    if (run !== this.runTag) return null;
    const id = /^message-id:[ \t]*(\S+)/im.exec(h)?.[1];
    if (!id) return null;
    const rollback = new RegExp(`^${OP_HEADER}:[ \\t]*${ROLLBACK_OP}\\b`, "im").test(h);
    const recipient = (/^delivered-to:[ \t]*(\S+)/im.exec(h)?.[1] ?? "").toLowerCase();
    return { messageId: id.startsWith("<") ? id : `<${id}>`, rollback, at, recipient };
  }
}

function notRun(reason: string, required: boolean): PostfixStretchResult {
  const line = `postfix: not run: ${reason}${required ? " (MAIL_OUTBOX_REQUIRE_SERVICES=1 makes this a failure)" : ""}`;
  return {
    result: {
      label: "postfix",
      passed: !required,
      line: required ? `${line} => FAIL (1)` : line,
      failures: required ? [reason] : [],
      counts: {} as AuditResult["counts"],
    },
    details: { run: "postfix", skipped: reason },
  };
}

export async function postfixStretch(o: PostfixStretchOptions): Promise<PostfixStretchResult | null> {
  const reason = postfixReason();
  if (reason !== null) {
    o.log(`Postfix stretch skipped: ${reason}`);
    o.skipped.push(`Postfix stretch: ${reason}`);
    return o.requireServices ? notRun(reason, true) : null;
  }
  await sleepUntil(o.startAt);
  const tag = `${o.runTag}pf`;
  const url = o.cluster
    ? (() => {
        const u = new URL(o.cluster.url);
        u.searchParams.set("schema", `soak_${tag}`);
        return u.toString();
      })()
    : `file:${path.join(o.sqliteDir, "postfix-outbox.db")}`;
  await prepareDatabase(url);
  const dialect = o.cluster ? "postgresql" : "sqlite";
  o.log(`Postfix stretch on ${dialect} (${url}): ${o.mails} mails through sendmail-bs: and sendmail:, Postfix stopped and started`);
  const random = seeded(o.seed ^ 0x9f);
  const relayOpts = {
    concurrency: 2,
    batchSize: 10,
    leaseMs: 3000,
    pollIntervalMs: 250,
    handoffTimeoutMs: 6000,
    backoff: { baseMs: 250, maxMs: 3000, jitter: 0.3 },
    leaseExpiryPolicy: "verify",
  };
  const mk = (name: string, transport: string) =>
    new RelaySlot({
      name,
      idPrefix: `soak-${o.runTag}-`,
      databaseUrl: url,
      transport,
      options: relayOpts,
      logFile: path.join(o.sqliteDir, `relay-${name}.log`),
      stopDeadlineMs: 3000,
      env: { RELAY_EVENTS: "1", COMPLETE_DELAY_MS: String(COMPLETE_DELAY_MS), MAIL_OUTBOX_LOG_LEVEL: "info" },
    });
  const slots = [mk("postfix-bs", "sendmail-bs:?timeout=3000&maxConnections=2"), mk("postfix-pipe", "sendmail:?timeout=5000")];
  const prisma = await prismaClientFor(url);
  const client = prisma.$extends(mailOutbox({ defaultFrom: "Shop <shop@localhost>", maxAttempts: 50, messageIdDomain: "soak.example.com" })) as unknown as OutboxClient;
  const ledger = newLedger();
  const kills: KillRecord[] = [];
  const stops: number[] = [];
  const unexpected: string[] = [];
  const scanner = new MaildirScanner(TEST_MAILDIR, o.runTag);
  const t0 = Date.now();
  const end = t0 + o.lengthMs;
  let settled = false;
  let delivery: Record<string, number> = {};
  // The log follower `verify` needs, on this outbox, from the end of the log.
  const followerStore = await openDatabase(url, { applicationName: "soak-follow-log", poolSize: 2 });
  let follower: LogFollower | null = null;
  let followerCounts: Record<string, number> = {};
  let followerWarnings = 0;
  try {
    follower = followLog({ store: followerStore, path: POSTFIX_LOG, logger: false });
    follower.on("warning", () => followerWarnings++);
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, 10_000);
      follower!.once("caughtUp", () => {
        clearTimeout(timer);
        resolve();
      });
    });
    await Promise.all(slots.map((s) => s.start()));
    const producers = runProducers({
      client,
      runTag: o.runTag,
      mails: o.mails,
      windowMs: o.lengthMs * 0.75,
      workers: 2,
      random,
      signal: new AbortController().signal,
      ledger,
      recipient: (n) => `outbox-test+${o.runTag}-${n}@localhost`,
      refusals: false,
      multiRecipients: false,
    });
    // Postfix down twice; the sendmail-bs relay killed once, during the first outage.
    const outage = async (at: number, ms: number, kill: boolean) => {
      await sleepUntil(at);
      await stopPostfix();
      stops.push(ms);
      o.log(`Postfix stopped for ${ms} ms`);
      try {
        if (kill) {
          await sleep(ms / 2);
          const inc = await slots[0]!.kill();
          if (inc) {
            kills.push({ how: "SIGKILL", relay: inc.relayId, concurrency: relayOpts.concurrency });
            o.log(`SIGKILL ${inc.relayId} while Postfix is stopped`);
          }
          await slots[0]!.start();
          await sleep(ms / 2);
        } else {
          await sleep(ms);
        }
      } finally {
        await startPostfix();
        o.log("Postfix started");
      }
    };
    // Kills while Postfix runs, each relay in turn (jittered by the seed): the hand-offs in the
    // duplicate window become uncertain, and "verify" settles them from the log.
    const runningKill = async (at: number, slot: RelaySlot) => {
      await sleepUntil(at);
      const inc = await slot.kill();
      if (inc) {
        kills.push({ how: "SIGKILL", relay: inc.relayId, concurrency: relayOpts.concurrency });
        o.log(`SIGKILL ${inc.relayId} while Postfix runs`);
      }
      await slot.start();
    };
    const outages = [
      { at: 0.25, ms: Math.round(Math.min(12_000, Math.max(4000, o.lengthMs * 0.12))), kill: true },
      { at: 0.6, ms: Math.round(Math.min(8000, Math.max(3000, o.lengthMs * 0.08))), kill: false },
    ];
    const plan: [number, () => Promise<void>][] = [
      ...runningKillPlan(o.lengthMs, outages).map((f, i): [number, () => Promise<void>] => {
        const at = t0 + o.lengthMs * (f + random() * 0.01);
        return [at, () => runningKill(at, slots[i % 2]!)];
      }),
      ...outages.map((x): [number, () => Promise<void>] => [t0 + o.lengthMs * x.at, () => outage(t0 + o.lengthMs * x.at, x.ms, x.kill)]),
    ];
    for (const [, step] of plan.sort((a, b) => a[0] - b[0])) await step();
    await sleepUntil(end);
    await producers;
    for (const s of slots) if (!s.running) await s.start();
    const settleStart = Date.now();
    let last: Record<string, number> = {};
    while (Date.now() - settleStart < o.settleTimeoutMs) {
      last = await statusCounts(url).catch(() => ({ unknown: 1 }));
      // Held: uncertain hand-offs "verify" has not settled yet (it needs the follower to catch up).
      if ((last.pending ?? 0) + (last.sending ?? 0) + (last.held ?? 0) + (last.unknown ?? 0) === 0) {
        settled = true;
        break;
      }
      await sleep(500);
    }
    o.log(`${settled ? "settled" : "did NOT settle"} in ${Math.round((Date.now() - settleStart) / 1000)} s: ${JSON.stringify(last)}`);
    for (const s of slots) {
      await s.stop("final-stop");
      const inc = s.incarnations.at(-1);
      if (inc && (inc.exitCode !== 0 || !inc.stoppedCleanly)) unexpected.push(`${inc.relayId} (final SIGTERM: exit ${inc.exitCode ?? inc.exitSignal})`);
    }
    for (const s of slots) for (const i of s.incarnations) if (i.endReason === "unexpected") unexpected.push(`${i.relayId} (exit ${i.exitCode ?? i.exitSignal})`);
    // Postfix delivers after it queued: wait until every sent mail is in the Maildir.
    const rowsNow = await readRows(url);
    const sent = new Set(rowsNow.filter((r) => r.status === "sent").map((r) => r.messageId));
    const deliverStart = Date.now();
    for (;;) {
      const have = new Set(scanner.scan().map((c) => c.messageId));
      const missing = [...sent].filter((id) => !have.has(id)).length;
      if (missing === 0 || Date.now() - deliverStart > 60_000) {
        delivery = { sent: sent.size, inMaildir: sent.size - missing, waitedMs: Date.now() - deliverStart };
        break;
      }
      await sleep(500);
    }
  } finally {
    await Promise.all(slots.map((s) => s.kill().catch(() => undefined)));
    await startPostfix().catch((err) => o.log(`could not start Postfix again: ${(err as Error).message}`));
    await prisma.$disconnect().catch(() => {});
    if (follower) followerCounts = { ...(await follower.stop().catch(() => follower!.counts())) };
    await followerStore.close().catch(() => {});
  }
  const incarnations = slots.flatMap((s) => s.incarnations);
  const verified = {
    received: incarnations.reduce((n, i) => n + i.verified.received, 0),
    absent: incarnations.reduce((n, i) => n + i.verified.absent, 0),
  };
  const restarts = (o.dbRestartTimes ?? []).filter((t) => t >= t0 && t <= Date.now()).map(() => slots.length * relayOpts.concurrency);
  const rows = await readRows(url);
  const result = audit({
    label: `postfix (sendmail-bs: + sendmail: on ${dialect})`,
    ledger,
    rows,
    copies: scanner.scan(),
    rejectRate: 0,
    mtaName: "Postfix Maildir",
    kills,
    dbRestarts: restarts,
    backendKills: 0,
    notes: [`postfix stops ${stops.length}`, `policy verify (received ${verified.received}, absent ${verified.absent})`],
    settled,
    memory: slots.map((s) => memoryOf(s)),
    maxRssBytes: o.maxRssBytes,
    maxGrowthBytes: o.maxGrowthBytes,
    unexpectedExits: unexpected,
    verifyPolicy: true,
  });
  o.log(`verify: uncertain hand-offs ${result.counts.uncertainRows}, received ${verified.received}, absent ${verified.absent}, follower events ${followerCounts.recorded ?? 0}`);
  return {
    result,
    details: {
      run: "postfix",
      url,
      counts: result.counts,
      delivery,
      verify: { ...verified, uncertain: result.counts.uncertainRows, dupRelayDied: result.counts.dupRelayDied, follower: followerCounts, followerWarnings },
      stopsMs: stops,
      attempts: await attemptSummary(url),
      ledger: { enqueued: ledger.enqueued, transactions: ledger.transactions, ops: ledger.ops, errors: ledger.errors.slice(0, 10) },
    },
  };
}
