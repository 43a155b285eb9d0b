/**
 * The operator side of the outbox: every `mail-outbox` command is one of these functions, callable
 * from code and tests. Each takes an open store (or a database URL, opened and closed around the
 * call) and returns plain data. This file holds their public types; the functions live in
 * ./admin-read.ts (ping, status, list, show, the suppression list) and ./admin-change.ts (replay,
 * cancel, purge, suppress, unsuppress), the statements in the stores
 * (src/stores/<database>/admin-sql.ts). Status changes follow `TRANSITIONS` in ./states.ts.
 */
import type { OutboxStatus } from "./states.js";
import type { AttemptRecord, DeliveryEventRecord, Fate, MailRecord, Store } from "./store.js";

export type { AttemptRecord, DeliveryEventRecord, Fate, FateSource, MailRecord, RejectedRecipient, SuppressionRecord } from "./store.js";
export { countNumericTimes, getStatus, listMails, listSuppressions, mailFates, pingDatabase, showMail } from "./admin-read.js";
export { cancelMails, purgeMails, replayMails, suppress, unsuppress } from "./admin-change.js";
export { errorMessage, parseMailRef } from "./admin-common.js";
import { purgeMails } from "./admin-change.js";
import { withDb } from "./admin-common.js";
import { parseRetention, retentionSettings, RETENTION_STATUSES, type RetentionOptions } from "./relay-ops.js";

/** An open store (`openDatabase()`), or a URL (`file:...`, `postgresql://...`) to open for this one call. */
export type DbOrUrl = Store | string;

/**
 * What became of one recipient after the hand-off, from the MTA's log or its delivery reports
 * (`follow-log`, `ingest`).
 */
export interface RecipientFate {
  /** As on the envelope (as in the report when the envelope does not hold it). */
  readonly recipient: string;
  /**
   * The current fate: the latest `delivered`, `bounced` or `expired` event (by the time the MTA acted),
   * else `deferred` when the MTA is still retrying; null when nothing was reported yet.
   */
  readonly fate: Fate | null;
  /** The event that decided `fate` (its time, source, DSN status, remote MTA, reply); null with `fate`. */
  readonly event: DeliveryEventRecord | null;
  /** How many events were reported for this recipient (deferrals included). */
  readonly events: number;
}

export interface MailDetail extends MailRecord {
  /** Every attempt and operator action, oldest first. */
  readonly attemptLog: readonly AttemptRecord[];
  /**
   * What the MTA did after the hand-off, oldest first (by when it happened): `queued` (recipient "",
   * the MTA took it under `queueId`), then per recipient `delivered`, `deferred`, `bounced`, `expired`.
   */
  readonly deliveryEvents: readonly DeliveryEventRecord[];
  /**
   * Per recipient, the current fate: every recipient handed over (the envelope, less those the MTA
   * refused at once), and anyone else a report named. Empty until the mail was handed over.
   */
  readonly fates: readonly RecipientFate[];
  /** The complete RFC 5322 message, only with `{ raw: true }`. */
  readonly raw?: Buffer;
}

export interface StatusReport {
  /** The time the report was computed for. */
  readonly at: Date;
  /** Rows per status; every status is present, zeros included. */
  readonly counts: Readonly<Record<OutboxStatus, number>>;
  readonly total: number;
  /** Rows with a status this library does not know (should be empty). */
  readonly otherStatuses: Readonly<Record<string, number>>;
  /** Rows whose hand-off is uncertain (`uncertain_handoffs > 0`), in total and per status. */
  readonly uncertain: { readonly total: number; readonly byStatus: Readonly<Record<OutboxStatus, number>> };
  /** Pending rows whose next attempt is due now. */
  readonly duePending: number;
  /** Age (now - created_at) of the oldest due pending mail, in ms; null if none is due. */
  readonly oldestDueAgeMs: number | null;
  /** How long the longest-waiting due pending mail has been due (now - next_attempt_at), in ms; null if none. */
  readonly maxDueLagMs: number | null;
  /** The earliest attempt scheduled in the future (retries, `sendAt`); null if none. */
  readonly nextAttemptAt: Date | null;
  /** Rows in `sending` whose lease has expired: a relay died or stalled; the next relay pass rescues them. */
  readonly expiredLeases: number;
  /**
   * After the hand-off: recipients per current fate (see {@link RecipientFate}), every fate present,
   * zeros included. Counts what `follow-log` and `ingest` recorded.
   */
  readonly fates: Readonly<Record<Fate, number>>;
}

export interface StatusOptions {
  /** @default new Date() */
  readonly now?: Date;
}

export interface ListOptions {
  /** Only these statuses. */
  readonly status?: OutboxStatus | readonly OutboxStatus[];
  /** Only mails with this envelope recipient (exact address, case-insensitive). */
  readonly recipient?: string;
  /** Only mails created at or after this time. */
  readonly since?: Date;
  /** Only mails created before this time. */
  readonly until?: Date;
  /** Only mails with an uncertain hand-off. */
  readonly uncertain?: boolean;
  /** Only mails with at least one recipient whose current fate is this (`bounced`: mails that bounced for someone). */
  readonly fate?: Fate;
  /** At most this many rows, newest first. From 1 to 10000. @default 50 */
  readonly limit?: number;
}

export interface ShowOptions {
  /** Include the raw message bytes. @default false */
  readonly raw?: boolean;
}

export interface ReplayOptions {
  /** Row ids (UUID) or Message-IDs (`<x@y>` or `x@y`). */
  readonly ids?: readonly string[];
  /**
   * Only rows in these statuses (each one of dead, cancelled, held, sent).
   * Without `ids` and without `status`, the filter takes dead and held mails only: sent and cancelled
   * mails are replayed only when named by id or by `status`, so a broad filter never resends mail by accident.
   */
  readonly status?: OutboxStatus | readonly OutboxStatus[];
  readonly since?: Date;
  readonly until?: Date;
  readonly recipient?: string;
  readonly uncertain?: boolean;
  /** Needed when nothing narrows the selection (no ids, status, since, until, recipient, uncertain). @default false */
  readonly all?: boolean;
  /**
   * Needed when the selection holds a `sent` mail (by `status: "sent"` or by id): the MTA accepted it
   * already, and a replay delivers it again. Without it such a replay is refused with
   * UnsafeOperationError and nothing changes (a dry run only reports). CLI: `--yes`. @default false
   */
  readonly resendSent?: boolean;
  /** Report what would change and write nothing. @default false */
  readonly dryRun?: boolean;
  /** Recorded as the `relay` of the attempt-log line. @default "operator" */
  readonly actor?: string;
  /** @default new Date() */
  readonly now?: Date;
}

export interface ChangedMail {
  readonly id: string;
  readonly messageId: string;
  /** The status before the change. */
  readonly from: OutboxStatus;
}

export interface SkippedMail {
  readonly id: string;
  readonly messageId: string;
  readonly status: OutboxStatus;
  /** Why this row was left as it is (the state machine does not allow the change). */
  readonly reason: string;
}

export interface ReplayResult {
  readonly dryRun: boolean;
  /** Rows the selection found. */
  readonly matched: number;
  /** Rows moved to pending (with `dryRun`: rows that would be). */
  readonly replayed: readonly ChangedMail[];
  /** Rows left alone, with the reason. */
  readonly skipped: readonly SkippedMail[];
  /** Ids or Message-IDs given that match no row (or no row passing the other filters). */
  readonly notFound: readonly string[];
}

export interface CancelOptions {
  /** Row ids (UUID) or Message-IDs. At least one. */
  readonly ids: readonly string[];
  readonly dryRun?: boolean;
  /** @default "operator" */
  readonly actor?: string;
  readonly now?: Date;
}

/** A mail that is in the state a request asks for already: nothing to do, and not a failure. */
export interface UnchangedMail {
  readonly id: string;
  readonly messageId: string;
  readonly status: OutboxStatus;
}

export interface CancelResult {
  readonly dryRun: boolean;
  readonly cancelled: readonly ChangedMail[];
  /** Rows that were cancelled before this call: cancelling is idempotent, so these are not failures. */
  readonly alreadyCancelled: readonly UnchangedMail[];
  /** Rows the state machine does not let cancel (only pending and held can be; sent, sending and dead are reported here with the reason). */
  readonly notCancellable: readonly SkippedMail[];
  readonly notFound: readonly string[];
}

/** The statuses `purgeMails` may delete. */
export const PURGEABLE_STATUSES = ["sent", "dead", "cancelled"] as const satisfies readonly OutboxStatus[];
export type PurgeableStatus = (typeof PURGEABLE_STATUSES)[number];

export interface PurgeOptions {
  /** Which final statuses to delete (sent, dead, cancelled). Required unless `all`. */
  readonly status?: PurgeableStatus | readonly PurgeableStatus[];
  /** Delete rows last changed more than this many ms ago. Required unless `all`. */
  readonly olderThanMs?: number;
  /** Lift the requirement: no `status` means sent, dead and cancelled; no `olderThanMs` means any age. @default false */
  readonly all?: boolean;
  readonly dryRun?: boolean;
  /** Rows per delete statement (and per transaction). @default 5000 */
  readonly batchSize?: number;
  readonly now?: Date;
}

export interface PurgeResult {
  readonly dryRun: boolean;
  readonly statuses: readonly PurgeableStatus[];
  /** Rows last changed before this time were deleted; null: any age. */
  readonly cutoff: Date | null;
  /** Rows deleted (with `dryRun`: rows that would be). Their attempt logs go with them. */
  readonly deleted: number;
  readonly byStatus: Readonly<Record<PurgeableStatus, number>>;
}

export interface ListSuppressionsOptions {
  /** Only this address (any case). */
  readonly address?: string;
  /** Include entries whose expiry has passed (they no longer count). @default false */
  readonly includeExpired?: boolean;
  /** At most this many entries. From 1 to 100000. @default 1000 */
  readonly limit?: number;
  /** @default new Date() */
  readonly now?: Date;
}

export interface SuppressOptions {
  /** Why (shown by `suppress list`). @default "added by an operator" */
  readonly reason?: string;
  /** The entry stops counting this many ms from now; absent: never. */
  readonly expiresIn?: number;
  /** Who added it: `operator` (the CLI, the API) or `bounce`. @default "operator" */
  readonly source?: string;
  /** The mail that caused it, if any. */
  readonly emailId?: string;
  /** @default new Date() */
  readonly now?: Date;
}

export interface SuppressResult {
  /** The addresses as stored (lower-cased, the domain in punycode); an address already there was replaced. */
  readonly addresses: readonly string[];
  /** Null: never expires. */
  readonly expiresAt: Date | null;
}

export interface UnsuppressOptions {
  /** @default new Date() (what "expired" is measured against) */
  readonly now?: Date;
}

export interface UnsuppressResult {
  /** Entries removed. */
  readonly removed: number;
  /** Addresses given that were not on the list (empty for `{ expired: true }`). */
  readonly notFound: readonly string[];
}

/** What an id argument names: a row id or a Message-ID (always with angle brackets). */
export type MailRef = { readonly kind: "id"; readonly id: string } | { readonly kind: "messageId"; readonly messageId: string };

export interface RetentionPurgeOptions {
  /**
   * The rules, as the relay's `retention` option takes them ({ sent: "30d", dead: "90d" }, ages as
   * durations or ms) or as the CLI writes them ("sent=30d,cancelled=30d,dead=90d").
   */
  readonly retention: RetentionOptions | string;
  readonly dryRun?: boolean;
  /** Rows per delete statement (and per transaction). @default 5000 */
  readonly batchSize?: number;
  readonly now?: Date;
}

export interface RetentionPurgeResult {
  readonly dryRun: boolean;
  /** One purge per status with an age (in the order sent, cancelled, dead), each with its cut-off. */
  readonly results: readonly PurgeResult[];
  /** Rows deleted (with `dryRun`: rows that would be), all rules together. */
  readonly deleted: number;
  readonly byStatus: Readonly<Record<PurgeableStatus, number>>;
}

/**
 * Apply retention rules once (`mail-outbox purge --retention`): for each status with an age,
 * `purgeMails` of that status older than it. The same rules the relay's `retention` option
 * applies in the background.
 *
 * @example
 * await purgeByRetention(db, { retention: "sent=30d,cancelled=30d,dead=90d", dryRun: true });
 * @throws OptionsError for a status that may not be purged or an age that does not parse.
 */
export async function purgeByRetention(dbOrUrl: DbOrUrl, options: RetentionPurgeOptions): Promise<RetentionPurgeResult> {
  const rules = typeof options.retention === "string" ? parseRetention(options.retention) : retentionSettings(options.retention)!.rules;
  const now = options.now ?? new Date();
  const dryRun = options.dryRun === true;
  const results = await withDb(dbOrUrl, async (db) => {
    const out: PurgeResult[] = [];
    for (const status of RETENTION_STATUSES) {
      const olderThanMs = rules[status];
      if (olderThanMs === undefined) continue;
      out.push(await purgeMails(db, { status, olderThanMs, dryRun, now, ...(options.batchSize !== undefined ? { batchSize: options.batchSize } : {}) }));
    }
    return out;
  });
  const byStatus: Record<PurgeableStatus, number> = { sent: 0, dead: 0, cancelled: 0 };
  for (const r of results) for (const s of PURGEABLE_STATUSES) byStatus[s] += r.byStatus[s];
  return { dryRun, results, deleted: results.reduce((n, r) => n + r.deleted, 0), byStatus };
}
