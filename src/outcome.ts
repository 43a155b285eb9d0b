/**
 * What to write for one hand-off: a pure decision, given the claimed mail, what the MTA did
 * (a successful `sendMail`/`sendRaw` result, or the error it threw), the attempt and the backoff.
 * No database, no socket, no clock: `random` is the only input that varies, and tests pass it.
 *
 * One vocabulary for what a hand-off ended with ({@link HandoffOutcome}): the words stored in
 * `mail_outbox_attempt.outcome`, used as the `outcome` label of `mail_outbox_handoffs_total`.
 *
 * | hand-off outcome | when | `Outcome.kind` written | the mail becomes | relay event / count |
 * | --- | --- | --- | --- | --- |
 * | `accepted` | the MTA took it for every recipient | `accepted` | sent | `sent` / `sent` |
 * | `partial` | taken for some; the others refused (5xx) | `accepted` | sent, `partlyRefused` | `sent` / `sent` |
 * | `partial` | taken for some; some deferred (4xx), attempts left | `partial` | pending for the deferred | `retry` / `retried` |
 * | `transient` | refused for now (4xx, connection, timeout) | `transient` | pending, after backoff | `retry` / `retried` |
 * | `permanent` | refused for good (5xx), or attempts used up | `permanent` | dead | `dead` / `dead` |
 *
 * The relay's events and counts name what became of the mail (its status: sent, retried, dead),
 * the attempt log and the metric what the MTA answered; the table above is the whole mapping.
 */
import { classifyError, recipientReplyCode, rejectedRecipientsOf, toHandoffResult, type SentMessageInfoLike } from "./classify.js";
import type { ClaimedMail, HandoffOutcome, Outcome, OutcomeAttempt, RecipientReply } from "./store.js";

/** What one hand-off ended with, as `mail_outbox_attempt.outcome` stores it and the metric labels it. */
export type { HandoffOutcome };

/** Every {@link HandoffOutcome}, in the order of the table above. */
export const HANDOFF_OUTCOMES: readonly HandoffOutcome[] = ["accepted", "partial", "transient", "permanent"];

/** An outcome of a hand-off (not a release of mail never handed over). */
export type HandoffDecision = Exclude<Outcome, { kind: "release" }>;

/** Delays between attempts, validated (see `BackoffOptions` of the relay for the defaults). */
export interface Backoff {
  /** Delay before the second attempt; doubles with each attempt. */
  readonly baseMs: number;
  /** Largest delay. */
  readonly maxMs: number;
  /** Random spread as a fraction of the delay, 0 to 1 (0.2 = ±20%). */
  readonly jitter: number;
}

/**
 * The delay before the next attempt, after `attempts` attempts: `baseMs * 2^(attempts-1)`, at most
 * `maxMs`, spread by ±`jitter` of itself (so retries of one outage do not all arrive together).
 * `random()` in [0, 1) picks the point in the spread.
 *
 * @example
 * backoffDelay(3, { baseMs: 5000, maxMs: 3_600_000, jitter: 0 }); // 20000
 */
export function backoffDelay(attempts: number, backoff: Backoff, random: () => number = Math.random): number {
  const exp = Math.min(backoff.maxMs, backoff.baseMs * 2 ** Math.min(Math.max(attempts - 1, 0), 30));
  const spread = exp * backoff.jitter;
  return Math.max(0, Math.round(exp - spread + random() * 2 * spread));
}

/**
 * After the MTA took the mail (its final reply to DATA was 2xx): `accepted`, with the recipients it
 * refused, if any; or `partial` when it deferred some recipients (4xx) and attempts are left: the
 * row stays pending for those, with backoff. A deferral on the last attempt is final, like a 5xx.
 * Deferred or refused is decided by the reply code of each recipient, not its text.
 */
export function decideHandedOff(
  mail: ClaimedMail,
  attempt: OutcomeAttempt,
  info: SentMessageInfoLike,
  backoff: Backoff,
  random: () => number = Math.random,
): Extract<Outcome, { kind: "accepted" | "partial" }> {
  const result = toHandoffResult(info);
  if (result.rejected.length > 0 && mail.attempts < mail.maxAttempts) {
    const deferred: RecipientReply[] = [];
    const refused: RecipientReply[] = [];
    for (const r of result.rejected) {
      const code = recipientReplyCode(info, r.recipient);
      (code !== null && code >= 400 && code < 500 ? deferred : refused).push(r);
    }
    if (deferred.length > 0) {
      const delayMs = backoffDelay(mail.attempts, backoff, random);
      const error = `deferred for ${deferred.map((d) => `${d.recipient} (${d.response ?? "no reply"})`).join(", ")}`;
      return { ...attempt, kind: "partial", response: result.response, queueId: result.queueId, accepted: result.accepted, rejected: refused, deferred, delayMs, error };
    }
  }
  // One literal with every field named (no spread): built once per mail on the relay's hot path.
  return {
    id: attempt.id,
    attemptId: attempt.attemptId,
    attempt: attempt.attempt,
    startedAt: attempt.startedAt,
    durationMs: attempt.durationMs,
    kind: "accepted",
    response: result.response,
    queueId: result.queueId,
    accepted: result.accepted,
    rejected: result.rejected,
  };
}

/**
 * After the hand-off failed (the error `sendMail`/`sendRaw` threw, classified by code by
 * {@link classifyError}): `dead` when the failure is permanent or this was the last attempt
 * (the error then says the attempts are used up, and gives the last failure); else `retry`
 * after {@link backoffDelay}.
 */
export function decideFailed(
  mail: ClaimedMail,
  attempt: OutcomeAttempt,
  err: unknown,
  backoff: Backoff,
  random: () => number = Math.random,
): Extract<Outcome, { kind: "transient" | "permanent" }> {
  const c = classifyError(err);
  if (c.kind === "permanent" || mail.attempts >= mail.maxAttempts) {
    const error = c.kind === "permanent" ? c.message : `attempts exhausted (${mail.attempts} of ${mail.maxAttempts}); last error: ${c.message}`;
    return { ...attempt, kind: "permanent", error, errorCode: c.code, response: c.response, responseCode: c.responseCode, rejected: rejectedRecipientsOf(err) };
  }
  const delayMs = backoffDelay(mail.attempts, backoff, random);
  return { ...attempt, kind: "transient", delayMs, error: c.message, errorCode: c.code, response: c.response, responseCode: c.responseCode };
}

/** The {@link HandoffOutcome} of a decision: what the attempt log stores and the metric counts. */
export function handoffOutcome(o: HandoffDecision): HandoffOutcome {
  switch (o.kind) {
    case "accepted":
      return o.rejected.length > 0 ? "partial" : "accepted";
    case "partial":
      return "partial";
    case "transient":
      return "transient";
    case "permanent":
      return "permanent";
  }
}
