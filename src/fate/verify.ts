/**
 * The `verify` lease-expiry policy: settle an uncertain hand-off (a relay died between handing a
 * mail over and recording the MTA's answer) from the MTA's own record instead of resending it
 * blindly or leaving it to a person.
 *
 * Rescue holds such a mail (as the policy "hold" does). Then, on every rescue pass, for each mail
 * held in the last `verifyWindowMs`:
 *
 * - a `queued` event of that mail (recorded by `follow-log` from Postfix's qmgr line) under a queue
 *   id the outbox did not know yet -> the MTA has it: **received**, marked sent with that queue id;
 * - else, when a follower has read the whole log up to at least `heldAt + margin`
 *   (`logCaughtUpAt`) -> the MTA never took it: **absent**, handed over again at once (for local
 *   submission, see below, only once the log also shows the MTA at work after the hold);
 * - else -> wait for the follower (nothing is resent meanwhile);
 * - held longer than the window and still unsettled -> it stays held for a person (a warning).
 *
 * Why "caught up past heldAt + margin" proves absence: the relay died before `heldAt` (its lease
 * had to expire first), so any `250` it got came before `heldAt`, and Postfix logs the qmgr line
 * of an accepted mail within milliseconds of that `250` while it runs. The margin (2 s) covers
 * that delay and a small clock difference between the follower's host and the database.
 * A follower records its events and its `caught_up_at` in one transaction, so the runner reads
 * `logCaughtUpAt()` first and the evidence second: evidence read after the position is at least
 * as new as that position.
 *
 * Local submission (`sendmail:`, `sendmail-bs:`: Postfix's postdrop writes the maildrop) answers
 * also while Postfix is stopped, and such mail reaches the log only when Postfix starts again and
 * its pickup drains the maildrop; a silent log then proves nothing (the soak met exactly this).
 * With `requireMtaActivity`, absence also needs a sign that Postfix ran at or after
 * `heldAt + margin` (an event it logged then, or `postqueue -p` succeeding at every probe since
 * a time before or after it, which it does only while Postfix runs) and a follower caught up `settleMs` (3 s) past that first sign of life
 * (pickup has drained the maildrop by then).
 *
 * The decision (`decideVerify`) is a pure function of the candidates, their evidence, the
 * follower's position and the time; `HeldMailVerifier` is the thin runner the relay calls.
 */
import { spawn } from "node:child_process";
import type { Counter } from "prom-client";
import type { Logger } from "../logger.js";
import type { FateStore, VerifyCandidate, VerifyResolution } from "../store.js";

/** How long a held uncertain hand-off waits for the MTA's record before it is left to a person. */
export const DEFAULT_VERIFY_WINDOW_MS = 600_000;
/** How far past `heldAt` the follower must have read before a mail counts as absent. */
export const VERIFY_MARGIN_MS = 2000;
/** Past the window, candidates are still read this long so the runner can say once that they stay held. */
const EXPIRED_GRACE_MS = 60_000;
/** Local submission: how long after Postfix's first logged event past the hold its pickup has drained the maildrop. */
export const VERIFY_SETTLE_MS = 3000;
/** Log events read per pass to find that first sign of life. */
const ACTIVITY_EVENTS = 1000;
/** Candidates settled per pass at most. */
const BATCH = 500;
/** A follower whose position is older than this while mail waits for it counts as not running. */
const FOLLOWER_STALE_MS = 30_000;
/** The longest a runner stays quiet about mail waiting for a follower. */
const WAIT_WARNING_EVERY_MS = 60_000;

/** What the MTA's record says about one held mail. */
export type VerifyDecision =
  | { readonly kind: "received"; readonly candidate: VerifyCandidate; readonly resolution: Extract<VerifyResolution, { kind: "received" }> }
  | { readonly kind: "absent"; readonly candidate: VerifyCandidate; readonly resolution: Extract<VerifyResolution, { kind: "absent" }> }
  /**
   * No proof yet: no follower ever recorded a position (`"no-follower"`), none has read far enough
   * (`"behind"`), or (local submission) the log shows no sign of the MTA at work since the hold (`"mta-quiet"`).
   */
  | { readonly kind: "wait"; readonly candidate: VerifyCandidate; readonly reason: "no-follower" | "behind" | "mta-quiet" }
  /** Held longer than the window without proof either way: left held for a person. */
  | { readonly kind: "expired"; readonly candidate: VerifyCandidate };

export interface VerifyFacts {
  /** Held uncertain hand-offs (`store.verifyCandidates`). */
  readonly candidates: readonly VerifyCandidate[];
  /** `queued` events per mail id (`store.queuedEvidence`). */
  readonly evidence: ReadonlyMap<string, readonly { readonly queueId: string; readonly at: Date }[]>;
  /** The latest time a follower read the MTA's log to its end (`store.logCaughtUpAt`), read before the evidence. */
  readonly caughtUpAt: Date | null;
  readonly now: Date;
  /** @default DEFAULT_VERIFY_WINDOW_MS */
  readonly windowMs?: number;
  /** @default VERIFY_MARGIN_MS */
  readonly marginMs?: number;
  /**
   * Absence also needs a sign that the MTA ran after the hold (local submission, see the module
   * comment): `logEventTimes` then holds the times it was seen running: the `at` of the events it
   * logged that the follower recorded since the oldest candidate was held, and since when
   * `postqueue -p` has kept succeeding. @default false
   */
  readonly requireMtaActivity?: boolean;
  readonly logEventTimes?: readonly Date[];
  /**
   * Local submission: since when every probe of the MTA (`postqueue -p`) has said it runs, up to
   * `now` (null: the last probe said no, or none ran). A streak that began before a mail's
   * `heldAt + margin` and still holds is a sign of life at `heldAt + margin`: the MTA ran then.
   */
  readonly mtaRunningSince?: Date | null;
  /** @default VERIFY_SETTLE_MS */
  readonly settleMs?: number;
}

/**
 * Decide, for each held uncertain hand-off, whether the MTA received it, never saw it, or whether
 * to keep waiting. Pure: no clock, no database.
 *
 * Evidence of receipt is a `queued` event under a queue id not in the mail's `knownQueueIds` (a
 * queue id recorded for an earlier attempt is not evidence of the lost one); the earliest such
 * event wins. Evidence settles a mail at any time, also past the window; absence only within it.
 *
 * @example
 * ```ts
 * const caughtUpAt = await store.logCaughtUpAt(); // first
 * const candidates = await store.verifyCandidates(new Date(Date.now() - 600_000), 500);
 * const evidence = await store.queuedEvidence(candidates.map((c) => c.id));
 * for (const d of decideVerify({ candidates, evidence, caughtUpAt, now: new Date() })) { ... }
 * ```
 */
export function decideVerify(facts: VerifyFacts): VerifyDecision[] {
  const windowMs = facts.windowMs ?? DEFAULT_VERIFY_WINDOW_MS;
  const marginMs = facts.marginMs ?? VERIFY_MARGIN_MS;
  const settleMs = facts.settleMs ?? VERIFY_SETTLE_MS;
  const now = facts.now.getTime();
  const activity = (facts.logEventTimes ?? []).map((d) => d.getTime()).sort((a, b) => a - b);
  const out: VerifyDecision[] = [];
  for (const candidate of facts.candidates) {
    const known = new Set(candidate.knownQueueIds.map((q) => q.toUpperCase()));
    const proof = (facts.evidence.get(candidate.id) ?? [])
      .filter((e) => !known.has(e.queueId.toUpperCase()))
      .sort((a, b) => a.at.getTime() - b.at.getTime())[0];
    if (proof !== undefined) {
      out.push({
        kind: "received",
        candidate,
        resolution: {
          kind: "received",
          queueId: proof.queueId,
          at: proof.at,
          response: `verified: the MTA queued it as ${proof.queueId} at ${proof.at.toISOString()} (its log); the relay had died before recording the hand-off`,
        },
      });
      continue;
    }
    const heldAt = candidate.heldAt.getTime();
    if (now >= heldAt + windowMs) {
      out.push({ kind: "expired", candidate });
      continue;
    }
    const caughtUp = facts.caughtUpAt?.getTime() ?? null;
    if (caughtUp === null || caughtUp < heldAt + marginMs) {
      out.push({ kind: "wait", candidate, reason: caughtUp === null ? "no-follower" : "behind" });
      continue;
    }
    // The first sign of life at or after heldAt + margin: a logged event, or the probe's streak
    // (which, begun earlier and unbroken since, covers heldAt + margin itself).
    let alive = activity.find((t) => t >= heldAt + marginMs);
    if (facts.mtaRunningSince && now >= heldAt + marginMs) {
      const since = Math.max(facts.mtaRunningSince.getTime(), heldAt + marginMs);
      if (since <= now && (alive === undefined || since < alive)) alive = since;
    }
    if (facts.requireMtaActivity && (alive === undefined || caughtUp < alive + settleMs)) {
      out.push({ kind: "wait", candidate, reason: alive === undefined ? "mta-quiet" : "behind" });
      continue;
    }
    {
      out.push({
        kind: "absent",
        candidate,
        resolution: {
          kind: "absent",
          response: `verified: not in the MTA's log read up to ${new Date(caughtUp).toISOString()} (held at ${candidate.heldAt.toISOString()}); handed over again`,
        },
      });
    }
  }
  return out;
}

/** A held uncertain hand-off settled by `verify` (the relay's `verified` event). */
export interface VerifiedEvent {
  readonly id: string;
  readonly messageId: string;
  /** `received`: the MTA had it, now sent with `queueId`; `absent`: it never had it, handed over again. */
  readonly result: "received" | "absent";
  /** The queue id found (received); null for absent. */
  readonly queueId: string | null;
}

export interface HeldMailVerifierOptions {
  readonly store: FateStore;
  /** The relay's name, written into the attempt-log line. */
  readonly actor: string;
  readonly windowMs: number;
  readonly marginMs?: number;
  /** Local submission (`sendmail:`, `sendmail-bs:`): absence also needs a sign that the MTA ran after the hold. */
  readonly requireMtaActivity: boolean;
  /** Whether the MTA runs now (Postfix: `postfixRunning`); a streak of `true` since a time counts as a sign of life from then. */
  readonly mtaRunning?: () => Promise<boolean>;
  readonly log: Logger;
  /** `mail_outbox_verified_total{result}`. */
  readonly counter: Counter<"result"> | null;
  /** Each settled mail. */
  readonly onVerified: (e: VerifiedEvent) => void;
  /** A warning for monitoring (no follower, mail left to a person). */
  readonly onWarning: (err: Error) => void;
}

/**
 * The runner of the `verify` policy: one `pass()` per rescue pass reads the facts (candidates,
 * then the follower's position, then the evidence), decides, and settles each mail with
 * `store.resolveUncertain` (a no-op when another relay or an operator got there first).
 */
export class HeldMailVerifier {
  /** Mail already reported as left to a person (pruned to what is still read). */
  private reportedExpired = new Set<string>();
  private lastWaitWarning = 0;
  /** Since when every `mtaRunning()` probe said yes (null: the last one said no, or none ran). */
  private runningSince: Date | null = null;

  constructor(private readonly o: HeldMailVerifierOptions) {}

  /** Settle what the MTA's record allows; returns the mails settled now. Database errors propagate. */
  async pass(now: Date = new Date()): Promise<VerifiedEvent[]> {
    const { store, windowMs, log } = this.o;
    const marginMs = this.o.marginMs ?? VERIFY_MARGIN_MS;
    const candidates = await store.verifyCandidates(new Date(now.getTime() - windowMs - EXPIRED_GRACE_MS), BATCH);
    if (candidates.length === 0) {
      this.reportedExpired.clear();
      this.runningSince = null;
      return [];
    }
    // The follower's position before the evidence (see the module comment).
    const caughtUpAt = await store.logCaughtUpAt();
    const evidence = await store.queuedEvidence(candidates.map((c) => c.id));
    // Local submission: the MTA's times of the events recorded since the oldest hold (a few
    // seconds earlier, for a clock difference between the database and this host), oldest first.
    let logEventTimes: Date[] = [];
    if (this.o.requireMtaActivity && caughtUpAt !== null) {
      const oldest = Math.min(...candidates.map((c) => c.heldAt.getTime()));
      const events = await store.deliveryEventsAfter({ recordedAt: new Date(oldest - 5000), id: "00000000-0000-0000-0000-000000000000" }, ACTIVITY_EVENTS);
      logEventTimes = events.filter((e) => e.source === "log").map((e) => e.at);
      // A quiet outbox logs nothing: ask the MTA itself whether it runs.
      if (this.o.mtaRunning) {
        const up = await this.o.mtaRunning().catch(() => false);
        this.runningSince = up ? (this.runningSince ?? now) : null;
      }
    }
    const decisions = decideVerify({
      candidates,
      evidence,
      caughtUpAt,
      now,
      windowMs,
      marginMs,
      requireMtaActivity: this.o.requireMtaActivity,
      logEventTimes,
      mtaRunningSince: this.runningSince,
    });
    const settled: VerifiedEvent[] = [];
    const waiting: VerifyCandidate[] = [];
    const stillExpired = new Set<string>();
    for (const d of decisions) {
      const c = d.candidate;
      if (d.kind === "wait") {
        waiting.push(c);
        continue;
      }
      if (d.kind === "expired") {
        stillExpired.add(c.id);
        if (!this.reportedExpired.has(c.id)) {
          const message = `uncertain hand-off of ${c.messageId} not settled from the MTA's log within ${Math.round(windowMs / 1000)} s (verifyWindowMs); it stays held for an operator (mail-outbox show ${c.id}, then replay or cancel)`;
          log.warn({ id: c.id, messageId: c.messageId, heldAt: c.heldAt.toISOString() }, message);
          this.o.onWarning(new Error(message));
        }
        continue;
      }
      const changed = await store.resolveUncertain(c.id, this.o.actor, d.resolution);
      if (!changed) continue; // another relay or an operator settled it meanwhile
      const e: VerifiedEvent = { id: c.id, messageId: c.messageId, result: d.kind, queueId: d.kind === "received" ? d.resolution.queueId : null };
      this.o.counter?.inc({ result: d.kind });
      log.info(
        { id: c.id, messageId: c.messageId, result: d.kind, queueId: e.queueId },
        d.kind === "received" ? "uncertain hand-off verified: the MTA had it; marked sent" : "uncertain hand-off verified: the MTA never had it; handing it over again",
      );
      this.o.onVerified(e);
      settled.push(e);
    }
    this.reportedExpired = stillExpired;
    if (waiting.length > 0) this.warnWaiting(waiting, caughtUpAt, now, decisions.some((d) => d.kind === "wait" && d.reason === "mta-quiet"));
    return settled;
  }

  /** Say (at most once a minute) why held mail waits, when no follower is keeping up. */
  private warnWaiting(waiting: readonly VerifyCandidate[], caughtUpAt: Date | null, now: Date, mtaQuiet: boolean): void {
    const stale = caughtUpAt === null || now.getTime() - caughtUpAt.getTime() > FOLLOWER_STALE_MS;
    const longQuiet = mtaQuiet && waiting.some((c) => now.getTime() - c.heldAt.getTime() > FOLLOWER_STALE_MS);
    if (!(stale || longQuiet) || now.getTime() - this.lastWaitWarning < WAIT_WARNING_EVERY_MS) return;
    this.lastWaitWarning = now.getTime();
    const why =
      caughtUpAt === null
        ? "no `mail-outbox follow-log` has recorded a position in this database"
        : stale
          ? `the MTA's log was last read to its end at ${caughtUpAt.toISOString()} (is \`mail-outbox follow-log\` running against this database?)`
          : "the MTA has logged no outbox mail since they were held and `postqueue -p` does not answer (is Postfix running? mail submitted through sendmail while it is stopped waits in its maildrop)";
    const message = `${waiting.length} uncertain hand-off(s) wait for the MTA's record under leaseExpiryPolicy "verify": ${why}; nothing is resent until it catches up`;
    this.o.log.warn({ waiting: waiting.length, caughtUpAt: caughtUpAt?.toISOString() ?? null, oldest: waiting[0]?.messageId }, message);
    this.o.onWarning(new Error(message));
  }
}

/**
 * Whether Postfix runs: `postqueue -p` reaches its showq service only while the daemon does. Any
 * user may run it (setgid postdrop). For root it then falls back to reading the queue directly,
 * exits 0 and warns "Mail system is down": that warning counts as not running. False too when it
 * fails, is missing, or takes over 5 s.
 */
export function postfixRunning(postqueue: string): Promise<boolean> {
  return new Promise((resolve) => {
    const child = spawn(postqueue, ["-p"], { stdio: ["ignore", "ignore", "pipe"] });
    let stderr = "";
    child.stderr!.setEncoding("utf8").on("data", (chunk: string) => {
      if (stderr.length < 4096) stderr += chunk;
    });
    const timer = setTimeout(() => child.kill("SIGKILL"), 5000);
    child.once("error", () => {
      clearTimeout(timer);
      resolve(false);
    });
    child.once("close", (code) => {
      clearTimeout(timer);
      resolve(code === 0 && !/mail system is down/i.test(stderr));
    });
  });
}
