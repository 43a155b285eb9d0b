/**
 * What every store shares: the columns it reads, how a stored row becomes a domain record
 * (`MailRecord`, `AttemptRecord`, `ClaimedMail`), and how an outcome reads in the attempt log.
 * Each store turns its own column values (JSON, times) into plain values first.
 */
import { OptionsError } from "../errors.js";
import type { OutboxStatus } from "../states.js";
import { handoffOutcome } from "../outcome.js";
import type {
  AttemptOutcome,
  AttemptRecord,
  ClaimedMail,
  DeliveryEventKind,
  DeliveryEventRecord,
  FateSource,
  HandoffOutcome,
  LogCursor,
  MailRecord,
  Outcome,
  RejectedRecipient,
  SuppressionInput,
  SuppressionRecord,
} from "../store.js";
import type { JsonValue } from "../types.js";

/** The columns `list` and `show` read (everything but `raw`), the same on every database. */
export const MAIL_COLUMNS = `id, message_id, status, priority, idempotency_key, envelope_from, envelope_to, subject, size,
  metadata, attempts, max_attempts, send_at, next_attempt_at, lease_owner, lease_expires_at, last_error,
  mta_response, mta_queue_id, accepted, rejected, uncertain_handoffs, created_at, updated_at, sent_at`;

/** The columns of mail_outbox_attempt that `show` reads. */
export const ATTEMPT_COLUMNS = "id, attempt, relay, started_at, duration_ms, outcome, response, response_code, error_code, error, queue_id";

export const LEASE_EXPIRED_MESSAGE =
  "the relay holding this mail stopped renewing its lease during the hand-off (it crashed or lost the database); the MTA may or may not have accepted it";

/** A claimed row as every store's CLAIM returns it (`envelope_to` as JSON text). */
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
  trace_context: string | null;
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
        traceContext: r.trace_context ?? null,
      }),
    )
    .sort((a, b) => b.priority - a.priority);
}

/** How an outcome reads in the attempt log (mail_outbox_attempt), the same on every database. */
export function attemptColumns(o: Exclude<Outcome, { kind: "release" }>): {
  outcome: HandoffOutcome;
  responseCode: number | null;
  errorCode: string | null;
  error: string | null;
  queueId: string | null;
} {
  const outcome = handoffOutcome(o);
  switch (o.kind) {
    case "accepted":
      return { outcome, responseCode: 250, errorCode: null, error: null, queueId: o.queueId };
    case "partial":
      return { outcome, responseCode: 250, errorCode: "EDEFERRED", error: o.error, queueId: o.queueId };
    case "transient":
    case "permanent":
      return { outcome, responseCode: o.responseCode, errorCode: o.errorCode, error: o.error, queueId: null };
  }
}

/** A mail row with its JSON columns parsed and its times as Dates: what a store hands to {@link toMailRecord}. */
export interface PlainMailRow {
  id: string;
  message_id: string;
  status: string;
  priority: number;
  idempotency_key: string | null;
  envelope_from: string;
  envelope_to: unknown;
  subject: string;
  size: number;
  metadata: unknown;
  attempts: number;
  max_attempts: number;
  send_at: Date;
  next_attempt_at: Date;
  lease_owner: string | null;
  lease_expires_at: Date | null;
  last_error: string | null;
  mta_response: string | null;
  mta_queue_id: string | null;
  accepted: unknown;
  rejected: unknown;
  uncertain_handoffs: number;
  created_at: Date;
  updated_at: Date;
  sent_at: Date | null;
}

export function toMailRecord(r: PlainMailRow): MailRecord {
  const uncertainHandoffs = Number(r.uncertain_handoffs ?? 0);
  const rejected = rejectedList(r.rejected);
  return {
    id: r.id,
    messageId: r.message_id,
    status: r.status as OutboxStatus,
    priority: Number(r.priority),
    idempotencyKey: r.idempotency_key,
    envelopeFrom: r.envelope_from,
    envelopeTo: stringArray(r.envelope_to),
    subject: r.subject,
    size: Number(r.size),
    metadata: (r.metadata ?? null) as JsonValue | null,
    attempts: Number(r.attempts),
    maxAttempts: Number(r.max_attempts),
    sendAt: r.send_at,
    nextAttemptAt: r.next_attempt_at,
    leaseOwner: r.lease_owner,
    leaseExpiresAt: r.lease_expires_at,
    lastError: r.last_error,
    mtaResponse: r.mta_response,
    mtaQueueId: r.mta_queue_id,
    accepted: r.accepted === null || r.accepted === undefined ? null : stringArray(r.accepted),
    rejected,
    uncertainHandoffs,
    uncertain: uncertainHandoffs > 0,
    partlyRefused: r.status === "sent" && rejected !== null && rejected.length > 0,
    createdAt: r.created_at,
    updatedAt: r.updated_at,
    sentAt: r.sent_at,
  };
}

/** An attempt row as stored; `started_at` already a Date. */
export interface PlainAttemptRow {
  id: string;
  attempt: number;
  relay: string;
  started_at: Date;
  duration_ms: number;
  outcome: string;
  response: string | null;
  response_code: number | null;
  error_code: string | null;
  error: string | null;
  queue_id: string | null;
}

export function toAttemptRecord(r: PlainAttemptRow): AttemptRecord {
  return {
    id: r.id,
    attempt: Number(r.attempt),
    relay: r.relay,
    startedAt: r.started_at,
    durationMs: Number(r.duration_ms),
    // The column holds only these values: the store writes them (attemptColumns, rescue, replay/cancel).
    outcome: r.outcome as AttemptOutcome,
    response: r.response,
    responseCode: r.response_code === null ? null : Number(r.response_code),
    errorCode: r.error_code,
    error: r.error,
    queueId: r.queue_id,
  };
}

/** JSON text as a value (text that is not JSON stays text). */
export function parseJson(v: unknown): unknown {
  if (typeof v !== "string") return v ?? null;
  try {
    return JSON.parse(v) as unknown;
  } catch {
    return v;
  }
}

function stringArray(v: unknown): string[] {
  if (Array.isArray(v)) return v.map((x) => String(x));
  if (typeof v === "string" && v !== "") return [v];
  return [];
}

function rejectedList(v: unknown): RejectedRecipient[] | null {
  if (v === null || v === undefined) return null;
  if (!Array.isArray(v)) return [{ recipient: "", response: JSON.stringify(v) }];
  return v.map((x) =>
    typeof x === "object" && x !== null
      ? { recipient: String((x as { recipient?: unknown }).recipient ?? ""), response: String((x as { response?: unknown }).response ?? "") }
      : { recipient: String(x), response: "" },
  );
}

/** The columns of mail_outbox_delivery that the fate statements read, the same on every database. */
export const DELIVERY_COLUMNS = "id, email_id, recipient, event, at, recorded_at, source, queue_id, dsn_status, remote_mta, reply, event_key";

/** A delivery event row with its times as Dates: what a store hands to {@link toDeliveryEventRecord}. */
export interface PlainDeliveryRow {
  id: string;
  email_id: string;
  recipient: string;
  event: string;
  at: Date;
  recorded_at: Date;
  source: string;
  queue_id: string | null;
  dsn_status: string | null;
  remote_mta: string | null;
  reply: string | null;
  event_key: string;
}

export function toDeliveryEventRecord(r: PlainDeliveryRow): DeliveryEventRecord {
  return {
    id: r.id,
    emailId: r.email_id,
    recipient: r.recipient,
    // The column holds only these values: the store writes them from DeliveryEventInput.
    event: r.event as DeliveryEventKind,
    at: r.at,
    recordedAt: r.recorded_at,
    source: r.source as FateSource,
    queueId: r.queue_id,
    dsnStatus: r.dsn_status,
    remoteMta: r.remote_mta,
    reply: r.reply,
    eventKey: r.event_key,
  };
}

/** The columns of mail_outbox_suppression, the same on every database. */
export const SUPPRESSION_COLUMNS = "address, reason, source, email_id, created_at, expires_at";

export interface PlainSuppressionRow {
  address: string;
  reason: string;
  source: string;
  email_id: string | null;
  created_at: Date;
  expires_at: Date | null;
}

export function toSuppressionRecord(r: PlainSuppressionRow): SuppressionRecord {
  return { address: r.address, reason: r.reason, source: r.source, emailId: r.email_id, createdAt: r.created_at, expiresAt: r.expires_at };
}

/** The columns of mail_outbox_log_cursor (`offset` is a keyword: quoted), the same on every database. */
export const CURSOR_COLUMNS = `name, file_id, "offset", state, caught_up_at, updated_at`;

export interface PlainCursorRow {
  name: string;
  file_id: string;
  offset: number | string | bigint;
  state: unknown;
  caught_up_at: Date | null;
  updated_at: Date;
}

export function toLogCursor(r: PlainCursorRow): LogCursor {
  return {
    name: r.name,
    fileId: r.file_id,
    offset: Number(r.offset),
    state: (r.state ?? null) as JsonValue | null,
    caughtUpAt: r.caught_up_at,
    updatedAt: r.updated_at,
  };
}

/**
 * The suppression entries for the `bounced` events just inserted (recipient "" left out, one per
 * address): what `recordDeliveryEvents(..., { suppress })` adds when an address is not listed yet.
 */
export function bounceSuppressions(inserted: readonly DeliveryEventRecord[], expiresAt: Date | null): SuppressionInput[] {
  const out = new Map<string, SuppressionInput>();
  for (const e of inserted) {
    if (e.event !== "bounced" || e.recipient.trim() === "") continue;
    const address = e.recipient.trim().toLowerCase();
    const why = [e.dsnStatus, e.reply].filter((x) => x !== null && x !== "").join(" ");
    out.set(address, { address, reason: `bounced${why === "" ? "" : `: ${why}`}`, source: "bounce", emailId: e.emailId, expiresAt });
  }
  return [...out.values()];
}

/** Suppression entries with lower-cased addresses, the last entry of an address winning. */
export function normalizedSuppressions(entries: readonly SuppressionInput[]): SuppressionInput[] {
  const out = new Map<string, SuppressionInput>();
  for (const e of entries) {
    const address = e.address.trim().toLowerCase();
    out.set(address, { ...e, address });
  }
  return [...out.values()];
}

/** Addresses lower-cased and without duplicates, as mail_outbox_suppression keys them. */
export function suppressionKeys(addresses: readonly string[]): string[] {
  return [...new Set(addresses.map((a) => a.trim().toLowerCase()))];
}

/** Ids that are UUIDs (lower-cased): others cannot name a row, and PostgreSQL refuses to cast them. */
export function uuidsOnly(ids: readonly string[]): string[] {
  return [...new Set(ids.filter((id) => /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(id)).map((id) => id.toLowerCase()))];
}

/** The sender domains a claim leaves out (`ClaimOptions.excludeSenderDomains`): lower case, without blanks and repeats. */
export function senderDomains(list: readonly string[] | undefined): string[] {
  if (list === undefined || list.length === 0) return [];
  return [...new Set(list.map((d) => d.trim().toLowerCase()).filter((d) => d !== ""))];
}

/** A rate bucket after a take: its refill rate (tokens per second) and the tokens it holds. */
export interface BucketState {
  readonly rate: number;
  readonly tokens: number;
}

/** The longest `takeTokens` asks a caller to wait (a bucket with rate 0 never refills). */
export const MAX_TOKEN_WAIT_MS = 60_000;

/**
 * What `takeTokens` answers once `granted` was taken from every bucket: when less than `want`, how
 * long until the tightest bucket holds one token again (at most {@link MAX_TOKEN_WAIT_MS}).
 */
export function grantFrom(granted: number, want: number, after: readonly BucketState[]): { granted: number; waitMs: number } {
  if (granted >= want) return { granted, waitMs: 0 };
  let waitMs = 0;
  for (const b of after) {
    if (b.tokens >= 1) continue;
    const ms = b.rate > 0 ? Math.ceil(((1 - b.tokens) / b.rate) * 1000) : MAX_TOKEN_WAIT_MS;
    waitMs = Math.max(waitMs, Math.min(ms, MAX_TOKEN_WAIT_MS));
  }
  // A bucket can hold one token and still grant less than `want`: ask again soon, not at once.
  return { granted, waitMs: Math.max(waitMs, 1) };
}

/** Check the arguments of `setRate` before they reach a database (the caller validates options first; this guards the table). */
export function checkRate(bucket: string, rate: number, burst: number): void {
  if (bucket === "") throw new OptionsError("Expected a rate bucket name such as `transport:smtp://mta:25` or `sender:example.com`.");
  if (!Number.isFinite(rate) || rate < 0) throw new OptionsError(`Expected the rate of ${bucket} to be a non-negative number of mails per second, got ${rate}.`);
  if (!Number.isInteger(burst) || burst < 1 || burst > 2_147_483_647) throw new OptionsError(`Expected the burst of ${bucket} to be a positive whole number of mails, got ${burst}.`);
}

/** A token count or a lease time from the caller, as a whole non-negative number. */
export function wholeCount(n: number): number {
  return Number.isFinite(n) && n > 0 ? Math.floor(n) : 0;
}
