/** What the relay's hot path reads and writes; the SQL for each database lives beside this file. */

/** A row the relay has claimed: everything it needs to hand the mail over, nothing more. */
export interface ClaimedMail {
  readonly id: string;
  readonly messageId: string;
  readonly envelopeFrom: string;
  readonly envelopeTo: readonly string[];
  readonly raw: Buffer;
  readonly priority: number;
  /** Attempts including this one (the claim counts it). */
  readonly attempts: number;
  readonly maxAttempts: number;
  readonly uncertainHandoffs: number;
}

/** A claimed row as both databases' CLAIM returns it (`envelope_to` as JSON text). */
export interface ClaimRow {
  id: string;
  message_id: string;
  envelope_from: string;
  envelope_to: string;
  raw: Buffer;
  priority: number;
  attempts: number;
  max_attempts: number;
  uncertain_handoffs: number;
}

/** Claimed rows as the relay takes them, highest priority first. */
export function toClaimedMails(rows: readonly ClaimRow[]): ClaimedMail[] {
  return rows
    .map(
      (r): ClaimedMail => ({
        id: r.id,
        messageId: r.message_id,
        envelopeFrom: r.envelope_from,
        envelopeTo: JSON.parse(r.envelope_to) as string[],
        raw: r.raw,
        priority: r.priority,
        attempts: r.attempts,
        maxAttempts: r.max_attempts,
        uncertainHandoffs: r.uncertain_handoffs,
      }),
    )
    .sort((a, b) => b.priority - a.priority);
}

/** What a bulk change (replay, cancel) needs to know about a row before it changes it. */
export interface TargetRow {
  id: string;
  message_id: string;
  status: string;
  attempts: number;
  last_error: string | null;
  uncertain_handoffs: number;
}

/** The columns `list` and `show` read (everything but `raw`), the same on both databases. */
export const MAIL_COLUMNS = `id, message_id, status, priority, idempotency_key, envelope_from, envelope_to, subject, size,
  metadata, attempts, max_attempts, send_at, next_attempt_at, lease_owner, lease_expires_at, last_error,
  mta_response, mta_queue_id, accepted, rejected, uncertain_handoffs, created_at, updated_at, sent_at`;

/** The outcome of one claimed row, written back in a batch by `complete`. */
export type Outcome =
  | (AttemptRecord & {
      readonly kind: "accepted";
      readonly response: string;
      readonly queueId: string | null;
      readonly accepted: readonly string[];
      readonly rejected: readonly { recipient: string; response: string | null }[];
    })
  /**
   * The MTA took the mail for some recipients and deferred others with a 4xx: the row stays
   * pending with `envelope_to` cut down to the deferred recipients, retried with backoff.
   */
  | (AttemptRecord & {
      readonly kind: "partial";
      readonly response: string;
      readonly queueId: string | null;
      readonly accepted: readonly string[];
      /** Refused with 5xx: final for them. */
      readonly rejected: readonly { recipient: string; response: string | null }[];
      /** Deferred with 4xx: the recipients of the next attempt. */
      readonly deferred: readonly { recipient: string; response: string | null }[];
      readonly delayMs: number;
      readonly error: string;
    })
  | (AttemptRecord & {
      readonly kind: "retry";
      /** Delay from now until the next attempt, computed by the relay's backoff. */
      readonly delayMs: number;
      readonly error: string;
      readonly errorCode: string | null;
      readonly response: string | null;
      readonly responseCode: number | null;
    })
  | (AttemptRecord & {
      readonly kind: "dead";
      readonly error: string;
      readonly errorCode: string | null;
      readonly response: string | null;
      readonly responseCode: number | null;
      readonly rejected: readonly { recipient: string; response: string | null }[] | null;
    })
  /** Claimed but never handed over (graceful stop): back to pending, the claim's attempt not counted. */
  | { readonly kind: "release"; readonly id: string };

export interface AttemptRecord {
  readonly id: string;
  /** Id of the attempt row. */
  readonly attemptId: string;
  readonly attempt: number;
  readonly startedAt: Date;
  readonly durationMs: number;
}

export interface RescuedMail {
  readonly id: string;
  readonly messageId: string;
  readonly previousOwner: string | null;
  readonly status: "pending" | "held" | "dead";
}

export type LeaseExpiryPolicy = "resend" | "hold";

/** The relay's statements on one database. Every method is one round trip. */
export interface RelayStore {
  readonly dialect: "postgresql" | "sqlite";
  /** Claim up to `limit` due rows for `owner`, leased for `leaseMs`. */
  claim(owner: string, limit: number, leaseMs: number): Promise<ClaimedMail[]>;
  /** Write a batch of outcomes and their attempt rows at once. Returns how many rows changed. */
  complete(owner: string, relayName: string, outcomes: readonly Outcome[]): Promise<number>;
  /** Extend the lease on rows `owner` still holds; returns the ids still held. */
  renew(owner: string, ids: readonly string[], leaseMs: number): Promise<string[]>;
  /**
   * Move rows whose lease expired (their relay died) back to pending, or to held, per policy.
   * Never the rows of `self`: a relay that was only slow (a long GC pause, a blocked event loop)
   * still holds its hand-offs and renews or records them itself.
   */
  rescue(self: string, policy: LeaseExpiryPolicy, limit: number): Promise<RescuedMail[]>;
}

export const LEASE_EXPIRED_MESSAGE =
  "the relay holding this mail stopped renewing its lease during the hand-off (it crashed or lost the database); the MTA may or may not have accepted it";

/** How an outcome reads in the attempt log (mail_outbox_attempt), the same on every database. */
export function attemptColumns(o: Exclude<Outcome, { kind: "release" }>): {
  outcome: "accepted" | "partial" | "transient" | "permanent";
  responseCode: number | null;
  errorCode: string | null;
  error: string | null;
  queueId: string | null;
} {
  switch (o.kind) {
    case "accepted":
      return { outcome: o.rejected.length > 0 ? "partial" : "accepted", responseCode: 250, errorCode: null, error: null, queueId: o.queueId };
    case "partial":
      return { outcome: "partial", responseCode: 250, errorCode: "EDEFERRED", error: o.error, queueId: o.queueId };
    case "retry":
      return { outcome: "transient", responseCode: o.responseCode, errorCode: o.errorCode, error: o.error, queueId: null };
    case "dead":
      return { outcome: "permanent", responseCode: o.responseCode, errorCode: o.errorCode, error: o.error, queueId: null };
  }
}
