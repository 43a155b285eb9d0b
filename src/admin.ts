/**
 * The operator side of the outbox: every `mail-outbox` command is one of these functions, callable
 * from code and tests. Each takes an open `Db` (or a database URL, opened and closed around the call)
 * and returns plain data.
 *
 * The SQL lives in `sql/postgres-admin.ts` and `sql/sqlite-admin.ts`, one statement per function.
 * Status changes follow `TRANSITIONS` in `states.ts`.
 */
import { newId } from "./ids.js";
import type { Db } from "./db.js";
import { fromSqliteTime, openDatabase } from "./db.js";
import { MailOutboxError, NotFoundError, OptionsError, SchemaError, UnsafeOperationError } from "./errors.js";
import type { OutboxStatus } from "./states.js";
import { STATUSES, TRANSITIONS, isOutboxStatus } from "./states.js";
import type { JsonValue } from "./types.js";
import * as pgSql from "./sql/postgres-admin.js";
import * as liteSql from "./sql/sqlite-admin.js";
import type { TargetRow } from "./sql/types.js";

/** An open database, or a URL (`file:...`, `postgresql://...`) to open for this one call. */
export type DbOrUrl = Db | string;

/** One recipient the MTA refused, with its reply. */
export interface RejectedRecipient {
  readonly recipient: string;
  readonly response: string;
}

/** An outbox row as the operator sees it (the raw message only through `showMail(..., { raw: true })`). */
export interface MailRecord {
  readonly id: string;
  readonly messageId: string;
  readonly status: OutboxStatus;
  readonly priority: number;
  readonly idempotencyKey: string | null;
  readonly envelopeFrom: string;
  readonly envelopeTo: readonly string[];
  readonly subject: string;
  readonly size: number;
  readonly metadata: JsonValue | null;
  readonly attempts: number;
  readonly maxAttempts: number;
  readonly sendAt: Date;
  readonly nextAttemptAt: Date;
  readonly leaseOwner: string | null;
  readonly leaseExpiresAt: Date | null;
  readonly lastError: string | null;
  readonly mtaResponse: string | null;
  readonly mtaQueueId: string | null;
  readonly accepted: readonly string[] | null;
  readonly rejected: readonly RejectedRecipient[] | null;
  /** How many times a relay died while it held this mail: the MTA may or may not have accepted it then. */
  readonly uncertainHandoffs: number;
  /** `uncertainHandoffs > 0`: this mail may have been handed over (once more) without a record of it. */
  readonly uncertain: boolean;
  /**
   * `status` is sent, but the MTA refused some of the recipients for good (they are in `rejected`,
   * with its reply): the others have the mail, these never will unless it is sent to them anew.
   */
  readonly partlyRefused: boolean;
  readonly createdAt: Date;
  readonly updatedAt: Date;
  readonly sentAt: Date | null;
}

/** One line of a mail's history: a hand-off attempt by a relay, or an operator action (outcome "replayed", "cancelled"). */
export interface AttemptRecord {
  readonly id: string;
  readonly attempt: number;
  /** The relay id, or the operator for replay/cancel. */
  readonly relay: string;
  readonly startedAt: Date;
  readonly durationMs: number;
  readonly outcome: string;
  readonly response: string | null;
  readonly responseCode: number | null;
  readonly errorCode: string | null;
  readonly error: string | null;
  readonly queueId: string | null;
}

export interface MailDetail extends MailRecord {
  /** Every attempt and operator action, oldest first. */
  readonly attemptLog: readonly AttemptRecord[];
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

/** What an id argument names: a row id or a Message-ID (always with angle brackets). */
export type MailRef = { readonly kind: "id"; readonly id: string } | { readonly kind: "messageId"; readonly messageId: string };

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
/** A Message-ID: printable ASCII without spaces or angle brackets inside, one "@". */
const MESSAGE_ID = /^<?([\x21-\x3b\x3d\x3f-\x7e]+@[\x21-\x3b\x3d\x3f-\x7e]+)>?$/;

/**
 * Read a CLI/admin id argument: a row UUID, `<local@domain>` or `local@domain`.
 * @throws OptionsError for anything else.
 */
export function parseMailRef(text: string): MailRef {
  const s = typeof text === "string" ? text.trim() : "";
  if (UUID.test(s)) return { kind: "id", id: s.toLowerCase() };
  const m = s.length <= 998 ? MESSAGE_ID.exec(s) : null;
  if (m !== null && (s.startsWith("<") === s.endsWith(">")) && m[1] !== undefined && m[1].split("@").length === 2) {
    return { kind: "messageId", messageId: `<${m[1]}>` };
  }
  throw new OptionsError(
    `${JSON.stringify(text)} is neither a mail id (a UUID like 0193a1b2-...) nor a Message-ID (<local@domain>); copy it from \`mail-outbox list\`.`,
  );
}

const DEFAULT_LIST_LIMIT = 50;
const MAX_LIST_LIMIT = 10_000;
const UPDATE_BATCH = 1000;
const DEFAULT_PURGE_BATCH = 5000;
/** Without ids and without a status, replay takes these only (see `ReplayOptions.status`). */
const DEFAULT_REPLAY_STATUSES: readonly OutboxStatus[] = ["dead", "held"];

// ---------------------------------------------------------------------------------------------
// Read

/**
 * Check that the database answers a trivial query.
 * @throws MailOutboxError naming the database (password redacted) and what to check.
 */
export async function pingDatabase(dbOrUrl: DbOrUrl): Promise<void> {
  await withDb(dbOrUrl, async (db) => {
    if (db.dialect === "postgresql") await pgSql.ping(db.pool);
    else liteSql.ping(db.db);
  });
}

/** Counts per status, uncertain hand-offs, queue lag, next scheduled attempt and expired leases. */
export async function getStatus(dbOrUrl: DbOrUrl, options: StatusOptions = {}): Promise<StatusReport> {
  const now = checkDate(options.now ?? new Date(), "now");
  return withDb(dbOrUrl, async (db) => {
    const rows =
      db.dialect === "postgresql"
        ? await pgSql.statusCounts(db.pool, now)
        : liteSql.statusCounts(db.db, now).map((r) => ({
            ...r,
            oldest_due_created: fromSqliteTime(r.oldest_due_created),
            oldest_due_at: fromSqliteTime(r.oldest_due_at),
            next_at: fromSqliteTime(r.next_at),
          }));
    const counts = zeroCounts(STATUSES);
    const uncertainByStatus = zeroCounts(STATUSES);
    const otherStatuses: Record<string, number> = {};
    let total = 0;
    let uncertainTotal = 0;
    let duePending = 0;
    let expiredLeases = 0;
    let oldestDueCreated: Date | null = null;
    let oldestDueAt: Date | null = null;
    let nextAt: Date | null = null;
    for (const r of rows) {
      const n = Number(r.total);
      total += n;
      uncertainTotal += Number(r.uncertain);
      if (isOutboxStatus(r.status)) {
        counts[r.status] = n;
        uncertainByStatus[r.status] = Number(r.uncertain);
      } else {
        otherStatuses[r.status] = n;
      }
      duePending += Number(r.due);
      expiredLeases += Number(r.expired_leases);
      oldestDueCreated = minDate(oldestDueCreated, r.oldest_due_created);
      oldestDueAt = minDate(oldestDueAt, r.oldest_due_at);
      nextAt = minDate(nextAt, r.next_at);
    }
    return {
      at: now,
      counts,
      total,
      otherStatuses,
      uncertain: { total: uncertainTotal, byStatus: uncertainByStatus },
      duePending,
      oldestDueAgeMs: oldestDueCreated === null ? null : Math.max(0, now.getTime() - oldestDueCreated.getTime()),
      maxDueLagMs: oldestDueAt === null ? null : Math.max(0, now.getTime() - oldestDueAt.getTime()),
      nextAttemptAt: nextAt,
      expiredLeases,
    };
  });
}

/**
 * Mails matching every filter given, newest first.
 *
 * @example
 * const dead = await listMails(db, { status: "dead", since: parseSince("24h"), limit: 100 });
 * @throws OptionsError for an unknown status, a limit outside 1..10000 or an invalid date.
 */
export async function listMails(dbOrUrl: DbOrUrl, options: ListOptions = {}): Promise<MailRecord[]> {
  const limit = options.limit ?? DEFAULT_LIST_LIMIT;
  if (!Number.isSafeInteger(limit) || limit < 1 || limit > MAX_LIST_LIMIT) {
    throw new OptionsError(`Expected \`limit\` to be a whole number from 1 to ${MAX_LIST_LIMIT}, got ${JSON.stringify(limit)}.`);
  }
  const filter = buildFilter({
    refs: null,
    statuses: checkStatuses(options.status, STATUSES, "list"),
    recipient: options.recipient,
    since: options.since,
    until: options.until,
    uncertain: options.uncertain,
  });
  return withDb(dbOrUrl, async (db) => {
    if (db.dialect === "postgresql") {
      return (await pgSql.listMails(db.pool, filter, limit)).map((r) => mailFromPg(r));
    }
    return liteSql.listMails(db.db, filter, limit).map((r) => mailFromSqlite(r));
  });
}

/**
 * One mail and its whole history (attempts and operator actions, oldest first).
 *
 * @example
 * const mail = await showMail(db, "<0193a1b2-...@example.com>");
 * @throws OptionsError when `idOrMessageId` is neither a UUID nor a Message-ID; NotFoundError when no row matches.
 */
export async function showMail(dbOrUrl: DbOrUrl, idOrMessageId: string, options: ShowOptions = {}): Promise<MailDetail> {
  const ref = parseMailRef(idOrMessageId);
  const id = ref.kind === "id" ? ref.id : null;
  const messageId = ref.kind === "messageId" ? ref.messageId : null;
  const withRaw = options.raw === true;
  return withDb(dbOrUrl, async (db) => {
    let mail: MailRecord | undefined;
    let raw: Buffer | null | undefined;
    let attemptLog: AttemptRecord[];
    if (db.dialect === "postgresql") {
      const row = await pgSql.findMail(db.pool, id, messageId, withRaw);
      if (row === undefined) throw notFound(idOrMessageId, db);
      mail = mailFromPg(row);
      raw = row.raw;
      attemptLog = (await pgSql.listAttempts(db.pool, row.id)).map((r) => attemptRecord(r, r.started_at));
    } else {
      const row = liteSql.findMail(db.db, id, messageId, withRaw);
      if (row === undefined) throw notFound(idOrMessageId, db);
      mail = mailFromSqlite(row);
      raw = row.raw;
      attemptLog = liteSql.listAttempts(db.db, row.id).map((r) => attemptRecord(r, sqliteDate(r.started_at)));
    }
    const detail: MailDetail = { ...mail, attemptLog };
    return withRaw ? { ...detail, raw: raw == null ? Buffer.alloc(0) : Buffer.from(raw) } : detail;
  });
}

// ---------------------------------------------------------------------------------------------
// Change

/**
 * Send mails again: the "replay" transition (dead, cancelled, held, sent -> pending), due now, with
 * `attempts` reset to 0, the lease and the results of the last hand-off cleared. The Message-ID and the
 * raw message are kept, so the recipient's mail client can recognise a duplicate. The previous history
 * stays in the attempt log, and a line with outcome "replayed" records the operator's action.
 * Rows in other states are skipped and reported. One transaction, batched. A selection that holds a
 * `sent` mail needs `resendSent: true`, since the MTA has that mail already.
 *
 * @example
 * await replayMails(db, { status: "dead", since: parseSince("2h") });
 * await replayMails(db, { ids: ["<0193a1b2-...@example.com>"] });
 * await replayMails(db, { status: "sent", since: parseSince("1h"), resendSent: true });
 * @throws UnsafeOperationError when nothing narrows the selection and `all` is not set, or when the
 *   selection holds a sent mail and `resendSent` is not set; nothing is changed then.
 * @throws OptionsError for an invalid id, status or date.
 */
export async function replayMails(dbOrUrl: DbOrUrl, options: ReplayOptions = {}): Promise<ReplayResult> {
  const now = checkDate(options.now ?? new Date(), "now");
  const actor = checkActor(options.actor);
  const refs = options.ids !== undefined && options.ids.length > 0 ? options.ids.map(parseMailRef) : null;
  const replayable = TRANSITIONS.replay.from;
  const statuses = checkStatuses(options.status, replayable, "replay");
  const narrowed =
    refs !== null ||
    statuses !== null ||
    options.since !== undefined ||
    options.until !== undefined ||
    options.recipient !== undefined ||
    options.uncertain === true;
  if (!narrowed && options.all !== true) {
    throw new UnsafeOperationError(
      "Refusing to replay every dead and held mail without `all: true` (CLI: --all --yes). Narrow the selection with ids, status, since, recipient or uncertain, or check it first with a dry run.",
    );
  }
  const filter = buildFilter({
    refs,
    statuses: statuses ?? (refs === null ? DEFAULT_REPLAY_STATUSES : null),
    recipient: options.recipient,
    since: options.since,
    until: options.until,
    uncertain: options.uncertain,
  });
  const dryRun = options.dryRun === true;
  const resendSent = options.resendSent === true;
  if (!dryRun && !resendSent && statuses?.includes("sent") === true) {
    throw new UnsafeOperationError(refuseResend(null));
  }
  const r = await withDb(dbOrUrl, (db) =>
    bulkChange(db, {
      filter,
      refs,
      dryRun,
      // Checked on the rows selected inside the transaction: a sent mail named by id is guarded too.
      check: (candidates) => {
        const sent = candidates.filter((c) => c.status === "sent").length;
        if (sent > 0 && !resendSent) throw new UnsafeOperationError(refuseResend(sent));
      },
      transition: "replay",
      outcome: "replayed",
      actor,
      now,
      describe: (row) =>
        `replayed from ${row.status} by ${actor}; before: ${row.attempts} attempt${row.attempts === 1 ? "" : "s"}` +
        (row.uncertain_handoffs > 0 ? `, ${row.uncertain_handoffs} uncertain hand-off${row.uncertain_handoffs === 1 ? "" : "s"}` : "") +
        (row.last_error ? `, last error: ${truncate(row.last_error, 500)}` : ""),
    }),
  );
  return { dryRun, matched: r.matched, replayed: r.changed, skipped: r.skipped, notFound: r.notFound };
}

/**
 * Cancel mails that have not been handed over: the "cancel" transition (pending, held -> cancelled).
 * Idempotent: a mail cancelled before is reported in `alreadyCancelled` and left as it is. Rows in
 * other states are reported in `notCancellable` with the reason (a `sent` mail is with the MTA
 * already; a mail in `sending` is being handed over right now).
 * Each cancelled mail gets an attempt-log line with outcome "cancelled".
 *
 * @example
 * const r = await cancelMails(db, { ids: ["0193a1b2-7c3d-7e4f-8a5b-6c7d8e9f0a1b"] });
 * @throws OptionsError when `ids` is empty or holds an invalid id.
 */
export async function cancelMails(dbOrUrl: DbOrUrl, options: CancelOptions): Promise<CancelResult> {
  const now = checkDate(options.now ?? new Date(), "now");
  const actor = checkActor(options.actor);
  if (options === undefined || !Array.isArray(options.ids) || options.ids.length === 0) {
    throw new OptionsError("Expected `ids` to name at least one mail to cancel (a mail id or a Message-ID).");
  }
  const refs = options.ids.map(parseMailRef);
  const filter = buildFilter({ refs, statuses: null });
  const dryRun = options.dryRun === true;
  const r = await withDb(dbOrUrl, (db) =>
    bulkChange(db, {
      filter,
      refs,
      dryRun,
      transition: "cancel",
      outcome: "cancelled",
      actor,
      now,
      describe: (row) => `cancelled by ${actor} while ${row.status}`,
    }),
  );
  return { dryRun, cancelled: r.changed, alreadyCancelled: r.already, notCancellable: r.skipped, notFound: r.notFound };
}

/**
 * Delete old mails in final states (sent, dead, cancelled) with their attempt logs, in batches, each
 * batch its own transaction. "Older than" is measured from the row's last change (`updated_at`).
 * Pending, sending and held mails are never purged.
 *
 * @example
 * await purgeMails(db, { status: "sent", olderThanMs: parseDuration("30d") });
 * @throws UnsafeOperationError without `status` and `olderThanMs`, unless `all`.
 * @throws OptionsError for a status that may not be purged or a negative age.
 */
export async function purgeMails(dbOrUrl: DbOrUrl, options: PurgeOptions = {}): Promise<PurgeResult> {
  const now = checkDate(options.now ?? new Date(), "now");
  const given = checkStatuses(options.status, PURGEABLE_STATUSES, "purge") as readonly PurgeableStatus[] | null;
  const olderThan = options.olderThanMs;
  if (olderThan !== undefined && (!Number.isSafeInteger(olderThan) || olderThan < 0)) {
    throw new OptionsError(`Expected \`olderThanMs\` to be a whole number of milliseconds >= 0, got ${JSON.stringify(olderThan)}.`);
  }
  if ((given === null || olderThan === undefined) && options.all !== true) {
    throw new UnsafeOperationError(
      "Refusing to purge without both a status and an age (CLI: --status sent --older-than 30d). To delete every sent, dead and cancelled mail regardless, pass `all: true` (CLI: --all --yes).",
    );
  }
  const batchSize = options.batchSize ?? DEFAULT_PURGE_BATCH;
  if (!Number.isSafeInteger(batchSize) || batchSize < 1 || batchSize > 100_000) {
    throw new OptionsError(`Expected \`batchSize\` to be a whole number from 1 to 100000, got ${JSON.stringify(batchSize)}.`);
  }
  const statuses: readonly PurgeableStatus[] = given ?? PURGEABLE_STATUSES;
  const cutoff = olderThan === undefined ? null : new Date(now.getTime() - olderThan);
  const dryRun = options.dryRun === true;
  const byStatus = zeroCounts(PURGEABLE_STATUSES);
  const add = (rows: readonly { status: string; n: number }[]) => {
    for (const r of rows) if ((PURGEABLE_STATUSES as readonly string[]).includes(r.status)) byStatus[r.status as PurgeableStatus] += Number(r.n);
  };
  await withDb(dbOrUrl, async (db) => {
    if (dryRun) {
      add(db.dialect === "postgresql" ? await pgSql.countPurgeable(db.pool, statuses, cutoff) : liteSql.countPurgeable(db.db, statuses, cutoff));
      return;
    }
    for (;;) {
      let n = 0;
      if (db.dialect === "postgresql") {
        const rows = await pgSql.purgeBatch(db.pool, statuses, cutoff, batchSize);
        add(rows);
        n = rows.reduce((s, r) => s + Number(r.n), 0);
      } else {
        const sqlite = db.db;
        n = sqlite
          .transaction(() => {
            const ids = liteSql.selectPurgeBatch(sqlite, statuses, cutoff, batchSize);
            if (ids.length === 0) return 0;
            liteSql.deleteAttemptsOf(sqlite, ids);
            const gone = liteSql.deleteMails(sqlite, ids);
            for (const g of gone) add([{ status: g.status, n: 1 }]);
            return gone.length;
          })
          .immediate();
        // Let other writers (the application, the relay) in between batches.
        await new Promise<void>((resolve) => setImmediate(resolve));
      }
      if (n < batchSize) break;
    }
  });
  const deleted = Object.values(byStatus).reduce((s, n) => s + n, 0);
  return { dryRun, statuses, cutoff, deleted, byStatus };
}

// ---------------------------------------------------------------------------------------------
// Internals

interface BulkSpec {
  readonly filter: Filter;
  readonly refs: readonly MailRef[] | null;
  readonly dryRun: boolean;
  readonly transition: "replay" | "cancel";
  readonly outcome: "replayed" | "cancelled";
  readonly actor: string;
  readonly now: Date;
  readonly describe: (row: Target) => string;
  /** Called with the rows about to change (not on a dry run); throwing aborts the whole change. */
  readonly check?: (candidates: readonly Target[]) => void;
}

interface BulkOutcome {
  readonly matched: number;
  readonly changed: ChangedMail[];
  /** Rows in the target state already (cancel of a cancelled mail). */
  readonly already: UnchangedMail[];
  readonly skipped: SkippedMail[];
  readonly notFound: string[];
}

type Target = TargetRow;
type Filter = pgSql.PgFilter & liteSql.SqliteFilter;
type LogRow = { id: string; emailId: string; response: string };

/** Split the selected rows into those the transition allows and those it does not. */
function partition(spec: BulkSpec, targets: readonly Target[]): { outcome: BulkOutcome; candidates: Target[] } {
  const allowed: readonly string[] = TRANSITIONS[spec.transition].from;
  const outcome: BulkOutcome = { matched: targets.length, changed: [], already: [], skipped: [], notFound: missingRefs(spec.refs, targets) };
  const candidates: Target[] = [];
  const target = TRANSITIONS[spec.transition].to;
  for (const t of targets) {
    if (allowed.includes(t.status)) candidates.push(t);
    else if (spec.transition === "cancel" && t.status === target) outcome.already.push({ id: t.id, messageId: t.message_id, status: t.status as OutboxStatus });
    else outcome.skipped.push({ id: t.id, messageId: t.message_id, status: t.status as OutboxStatus, reason: refuseReason(spec.transition, t.status) });
  }
  if (spec.dryRun) {
    for (const t of candidates) outcome.changed.push({ id: t.id, messageId: t.message_id, from: t.status as OutboxStatus });
  } else {
    spec.check?.(candidates);
  }
  return { outcome, candidates };
}

/** Record which rows of a batch the UPDATE changed; returns the attempt-log lines to write for them. */
function settleBatch(spec: BulkSpec, outcome: BulkOutcome, batch: readonly Target[], changedIds: readonly string[]): LogRow[] {
  const done = new Set(changedIds);
  const log: LogRow[] = [];
  for (const t of batch) {
    if (done.has(t.id)) {
      outcome.changed.push({ id: t.id, messageId: t.message_id, from: t.status as OutboxStatus });
      log.push({ id: newId(), emailId: t.id, response: spec.describe(t) });
    } else {
      // Only possible if another writer changed the row between our SELECT and UPDATE.
      outcome.skipped.push({ id: t.id, messageId: t.message_id, status: t.status as OutboxStatus, reason: "its status changed while this ran; look at it again" });
    }
  }
  return log;
}

/** Select the targets, then change the allowed ones batch by batch (one UPDATE and one INSERT per batch), all in one transaction. */
async function bulkChange(db: Db, spec: BulkSpec): Promise<BulkOutcome> {
  const { from, to } = TRANSITIONS[spec.transition];
  if (db.dialect === "postgresql") {
    if (spec.dryRun) return partition(spec, await pgSql.selectTargets(db.pool, spec.filter, false)).outcome;
    const change = spec.transition === "replay" ? pgSql.replayBatch : pgSql.cancelBatch;
    const client = await db.pool.connect();
    try {
      await client.query("BEGIN");
      const { outcome, candidates } = partition(spec, await pgSql.selectTargets(client, spec.filter, true));
      for (let i = 0; i < candidates.length; i += UPDATE_BATCH) {
        const batch = candidates.slice(i, i + UPDATE_BATCH);
        const changed = await change(client, batch.map((t) => t.id), from, to, spec.now);
        const log = settleBatch(spec, outcome, batch, changed);
        if (log.length > 0) await pgSql.insertAdminAttempts(client, log, spec.actor, spec.outcome, spec.now);
      }
      await client.query("COMMIT");
      return outcome;
    } catch (err) {
      await client.query("ROLLBACK").catch(() => {});
      throw err;
    } finally {
      client.release();
    }
  }
  const sqlite = db.db;
  if (spec.dryRun) return partition(spec, liteSql.selectTargets(sqlite, spec.filter)).outcome;
  const change = spec.transition === "replay" ? liteSql.replayBatch : liteSql.cancelBatch;
  return sqlite
    .transaction(() => {
      const { outcome, candidates } = partition(spec, liteSql.selectTargets(sqlite, spec.filter));
      for (let i = 0; i < candidates.length; i += UPDATE_BATCH) {
        const batch = candidates.slice(i, i + UPDATE_BATCH);
        const changed = change(sqlite, batch.map((t) => t.id), from, to, spec.now);
        const log = settleBatch(spec, outcome, batch, changed);
        if (log.length > 0) liteSql.insertAdminAttempts(sqlite, log, spec.actor, spec.outcome, spec.now);
      }
      return outcome;
    })
    .immediate();
}

/** Why a replay that would resend `count` sent mails (null: selected by status) was refused, and how to confirm it. */
function refuseResend(count: number | null): string {
  const what = count === null ? "sent mails" : `${plural(count, "sent mail")}`;
  return `Refusing to replay ${what}: the MTA accepted ${count === 1 ? "it" : "them"} already, and a replay delivers ${count === 1 ? "it" : "them"} again. Confirm with \`resendSent: true\` (CLI: --yes); see the selection first with a dry run (CLI: --dry-run).`;
}

function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

function refuseReason(transition: "replay" | "cancel", status: string): string {
  const from = TRANSITIONS[transition].from.join(", ");
  if (transition === "replay") {
    if (status === "pending") return "it is pending already: a relay hands it over when it is due";
    if (status === "sending") return "a relay is handing it over right now; wait for the outcome, then replay it if needed";
    return `replay applies only to ${from} mails`;
  }
  if (status === "sending") return "a relay is handing it over right now; if the hand-off fails and it returns to pending, cancel it then";
  if (status === "sent") return "it was handed over to the MTA already; it cannot be called back";
  if (status === "dead" || status === "cancelled") return `it is ${status} already: nothing will send it`;
  return `cancel applies only to ${from} mails`;
}

/** The refs that match none of the selected rows, as given (id or Message-ID with brackets). */
function missingRefs(refs: readonly MailRef[] | null, targets: readonly Target[]): string[] {
  if (refs === null) return [];
  const ids = new Set(targets.map((t) => t.id.toLowerCase()));
  const messageIds = new Set(targets.map((t) => t.message_id));
  const missing: string[] = [];
  for (const r of refs) {
    if (r.kind === "id" ? !ids.has(r.id) : !messageIds.has(r.messageId)) missing.push(r.kind === "id" ? r.id : r.messageId);
  }
  return [...new Set(missing)];
}

function buildFilter(input: {
  refs: readonly MailRef[] | null;
  statuses: readonly OutboxStatus[] | null;
  recipient?: string | undefined;
  since?: Date | undefined;
  until?: Date | undefined;
  uncertain?: boolean | undefined;
}): Filter {
  const refs = input.refs ?? [];
  return {
    byIds: input.refs !== null,
    ids: [...new Set(refs.flatMap((r) => (r.kind === "id" ? [r.id] : [])))],
    messageIds: [...new Set(refs.flatMap((r) => (r.kind === "messageId" ? [r.messageId] : [])))],
    statuses: input.statuses === null ? null : [...input.statuses],
    recipient: checkRecipient(input.recipient),
    since: input.since === undefined ? null : checkDate(input.since, "since"),
    until: input.until === undefined ? null : checkDate(input.until, "until"),
    uncertainOnly: input.uncertain === true,
  };
}

function checkRecipient(value: string | undefined): string | null {
  if (value === undefined) return null;
  const s = typeof value === "string" ? value.trim() : "";
  // eslint-disable-next-line no-control-regex
  if (s === "" || s.length > 320 || /[\x00-\x1f\x7f]/.test(s)) {
    throw new OptionsError(`Expected \`recipient\` to be an email address like ann@example.com, got ${JSON.stringify(value)}.`);
  }
  return s;
}

function checkStatuses<S extends OutboxStatus>(value: S | readonly S[] | OutboxStatus | readonly OutboxStatus[] | undefined, allowed: readonly S[], verb: string): S[] | null {
  if (value === undefined) return null;
  const list: readonly unknown[] = Array.isArray(value) ? value : [value];
  if (list.length === 0) return null;
  const out: S[] = [];
  for (const s of list) {
    if (!isOutboxStatus(s)) {
      throw new OptionsError(`Unknown status ${JSON.stringify(s)}: use one of ${STATUSES.join(", ")}.`);
    }
    if (!(allowed as readonly string[]).includes(s)) {
      throw new OptionsError(`${verb} does not apply to ${s} mails; it takes ${allowed.join(", ")}.`);
    }
    if (!out.includes(s as S)) out.push(s as S);
  }
  return out;
}

function checkDate(value: Date, what: string): Date {
  if (!(value instanceof Date) || Number.isNaN(value.getTime())) {
    throw new OptionsError(`Expected \`${what}\` to be a valid Date, got ${String(value)}.`);
  }
  return value;
}

function checkActor(value: string | undefined): string {
  if (value === undefined) return "operator";
  if (typeof value !== "string" || value.trim() === "" || value.length > 200) {
    throw new OptionsError("Expected `actor` to be a non-empty name of at most 200 characters.");
  }
  return value.trim();
}

function zeroCounts<K extends string>(keys: readonly K[]): Record<K, number> {
  const out = {} as Record<K, number>;
  for (const k of keys) out[k] = 0;
  return out;
}

function minDate(a: Date | null, b: Date | null | undefined): Date | null {
  if (b === null || b === undefined) return a;
  if (a === null) return b;
  return b.getTime() < a.getTime() ? b : a;
}

function truncate(s: string, max: number): string {
  return s.length <= max ? s : `${s.slice(0, max - 1)}…`;
}

function notFound(ref: string, db: Db): NotFoundError {
  return new NotFoundError(`No mail ${JSON.stringify(ref)} in the outbox at ${db.displayUrl}; find it with \`mail-outbox list\` (by --to, --since or --status).`);
}

/** Run `fn` on `dbOrUrl`, opening and closing the database when given a URL; missing tables become SchemaError. */
async function withDb<T>(dbOrUrl: DbOrUrl, fn: (db: Db) => Promise<T>): Promise<T> {
  const db = typeof dbOrUrl === "string" ? await openDatabase(dbOrUrl) : dbOrUrl;
  try {
    return await fn(db);
  } catch (err) {
    throw translateError(err, db);
  } finally {
    if (typeof dbOrUrl === "string") await db.close();
  }
}

const UNREACHABLE_CODES = new Set(["ECONNREFUSED", "ENOTFOUND", "EAI_AGAIN", "ETIMEDOUT", "ECONNRESET", "EHOSTUNREACH", "ENETUNREACH", "EPIPE", "28P01", "28000", "3D000", "57P03", "08006", "08001"]);

/** The message of an error, also for AggregateError (whose own message may be empty: "connect ECONNREFUSED" on ::1 and 127.0.0.1). */
export function errorMessage(err: unknown): string {
  if (err instanceof AggregateError && err.message === "") {
    const inner = err.errors.map((e) => errorMessage(e)).filter((m) => m !== "");
    if (inner.length > 0) return [...new Set(inner)].join("; ");
  }
  if (err instanceof Error) return err.message || String((err as { code?: unknown }).code ?? err.name);
  return String(err);
}

/**
 * Turn "no such table" / "relation does not exist" into a SchemaError, and a database that cannot be
 * reached into a MailOutboxError naming it (password redacted), each saying what to do.
 */
function translateError(err: unknown, db: Db): unknown {
  if (err instanceof MailOutboxError) return err;
  const e = err as { code?: unknown; message?: unknown };
  const message = errorMessage(err);
  if (db.dialect === "postgresql" && typeof e?.code === "string" && UNREACHABLE_CODES.has(e.code)) {
    return new MailOutboxError(`Cannot reach the database at ${db.displayUrl}: ${message}. Check DATABASE_URL (or --database-url) and that PostgreSQL is running.`, { cause: err });
  }
  if (db.dialect === "postgresql" && /timeout|terminated|connect/i.test(message) && e?.code === undefined) {
    return new MailOutboxError(`Cannot reach the database at ${db.displayUrl}: ${message}. Check DATABASE_URL (or --database-url) and that PostgreSQL is running.`, { cause: err });
  }
  const missing =
    db.dialect === "postgresql" ? e?.code === "42P01" || e?.code === "42703" : /no such (table|column)/i.test(message);
  if (missing) {
    return new SchemaError(
      `The outbox tables in ${db.displayUrl} are missing or out of date (${message}). Create them with \`mail-outbox migrate\` (or your Prisma migration), then check with \`mail-outbox doctor\`.`,
      { cause: err },
    );
  }
  return err;
}

// Row mapping --------------------------------------------------------------------------------

function parseJson(v: unknown): unknown {
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

interface CommonRow {
  id: string;
  message_id: string;
  status: string;
  priority: number;
  idempotency_key: string | null;
  envelope_from: string;
  subject: string;
  size: number;
  attempts: number;
  max_attempts: number;
  lease_owner: string | null;
  last_error: string | null;
  mta_response: string | null;
  mta_queue_id: string | null;
  uncertain_handoffs: number;
}

function mailRecord(
  r: CommonRow,
  json: { envelopeTo: unknown; metadata: unknown; accepted: unknown; rejected: unknown },
  t: { sendAt: Date; nextAttemptAt: Date; leaseExpiresAt: Date | null; createdAt: Date; updatedAt: Date; sentAt: Date | null },
): MailRecord {
  const uncertainHandoffs = Number(r.uncertain_handoffs ?? 0);
  const rejected = rejectedList(json.rejected);
  return {
    id: r.id,
    messageId: r.message_id,
    status: r.status as OutboxStatus,
    priority: Number(r.priority),
    idempotencyKey: r.idempotency_key,
    envelopeFrom: r.envelope_from,
    envelopeTo: stringArray(json.envelopeTo),
    subject: r.subject,
    size: Number(r.size),
    metadata: (json.metadata ?? null) as JsonValue | null,
    attempts: Number(r.attempts),
    maxAttempts: Number(r.max_attempts),
    sendAt: t.sendAt,
    nextAttemptAt: t.nextAttemptAt,
    leaseOwner: r.lease_owner,
    leaseExpiresAt: t.leaseExpiresAt,
    lastError: r.last_error,
    mtaResponse: r.mta_response,
    mtaQueueId: r.mta_queue_id,
    accepted: json.accepted === null || json.accepted === undefined ? null : stringArray(json.accepted),
    rejected,
    uncertainHandoffs,
    uncertain: uncertainHandoffs > 0,
    partlyRefused: r.status === "sent" && rejected !== null && rejected.length > 0,
    createdAt: t.createdAt,
    updatedAt: t.updatedAt,
    sentAt: t.sentAt,
  };
}

function mailFromPg(r: pgSql.PgMailRow): MailRecord {
  return mailRecord(
    r,
    { envelopeTo: r.envelope_to, metadata: r.metadata, accepted: r.accepted, rejected: r.rejected },
    {
      sendAt: r.send_at,
      nextAttemptAt: r.next_attempt_at,
      leaseExpiresAt: r.lease_expires_at,
      createdAt: r.created_at,
      updatedAt: r.updated_at,
      sentAt: r.sent_at,
    },
  );
}

function sqliteDate(v: unknown): Date {
  return fromSqliteTime(v) ?? new Date(Number.NaN);
}

function mailFromSqlite(r: liteSql.SqliteMailRow): MailRecord {
  return mailRecord(
    r,
    { envelopeTo: parseJson(r.envelope_to), metadata: parseJson(r.metadata), accepted: parseJson(r.accepted), rejected: parseJson(r.rejected) },
    {
      sendAt: sqliteDate(r.send_at),
      nextAttemptAt: sqliteDate(r.next_attempt_at),
      leaseExpiresAt: fromSqliteTime(r.lease_expires_at),
      createdAt: sqliteDate(r.created_at),
      updatedAt: sqliteDate(r.updated_at),
      sentAt: fromSqliteTime(r.sent_at),
    },
  );
}

/** An attempt row as either database returns it; `startedAt` turns its time into a Date. */
function attemptRecord(r: pgSql.PgAttemptRow | liteSql.SqliteAttemptRow, startedAt: Date): AttemptRecord {
  return {
    id: r.id,
    attempt: Number(r.attempt),
    relay: r.relay,
    startedAt,
    durationMs: Number(r.duration_ms),
    outcome: r.outcome,
    response: r.response,
    responseCode: r.response_code === null ? null : Number(r.response_code),
    errorCode: r.error_code,
    error: r.error,
    queueId: r.queue_id,
  };
}

/**
 * SQLite only: rows whose time columns hold numbers instead of ISO-8601 text, which happens when
 * the application's adapter is created with `timestampFormat: "unixepoch-ms"`. The relay compares
 * times as text, so such rows would ignore `sendAt` and backoff. For `doctor`.
 */
export async function countNumericTimes(db: Db): Promise<number> {
  if (db.dialect !== "sqlite") return 0;
  const row = db.db
    .prepare("SELECT count(*) AS n FROM mail_outbox WHERE typeof(next_attempt_at) <> 'text' OR typeof(send_at) <> 'text' OR typeof(created_at) <> 'text'")
    .get() as { n: number };
  return Number(row.n);
}
