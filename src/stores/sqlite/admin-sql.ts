/**
 * The operator statements for SQLite, one statement per function, side by side with
 * ../postgres/admin-sql.ts. Every value is a bound parameter; lists are bound as JSON text and opened
 * with `json_each`. DateTime columns hold ISO-8601 text with `+00:00` (Prisma's default), so
 * times are bound with `toSqliteTime` and compare as text; JSON columns are text, parsed here.
 */
import type Database from "better-sqlite3";
import type { ActionLogLine, ChangeTarget, CountByStatus, MailFilter, StatusCount } from "../../store.js";
import { ATTEMPT_COLUMNS, MAIL_COLUMNS, parseJson, type PlainAttemptRow, type PlainMailRow } from "../rows.js";
import { currentFates } from "./fate-sql.js";
import { fromSqliteTime, toSqliteTime } from "./time.js";

type Db = Database.Database;

/** Every column but `raw`, as SQLite stores it: JSON columns as text, times as ISO text (or epoch ms). */
type SqliteTime = string | number;
export type SqliteMailRow = Omit<
  PlainMailRow,
  "envelope_to" | "metadata" | "accepted" | "rejected" | "send_at" | "next_attempt_at" | "lease_expires_at" | "created_at" | "updated_at" | "sent_at"
> & {
  envelope_to: string;
  metadata: string | null;
  accepted: string | null;
  rejected: string | null;
  send_at: SqliteTime;
  next_attempt_at: SqliteTime;
  lease_expires_at: SqliteTime | null;
  created_at: SqliteTime;
  updated_at: SqliteTime;
  sent_at: SqliteTime | null;
  raw?: Buffer | null;
};

/** An attempt row as SQLite stores it: the same columns, `started_at` as ISO text (or epoch ms). */
export type SqliteAttemptRow = Omit<PlainAttemptRow, "started_at"> & { started_at: string | number };

const date = (v: unknown): Date => fromSqliteTime(v) ?? new Date(Number.NaN);

/** A stored row with its JSON parsed and its times as Dates. */
export function plainMailRow(r: SqliteMailRow): PlainMailRow {
  return {
    ...r,
    envelope_to: parseJson(r.envelope_to),
    metadata: parseJson(r.metadata),
    accepted: parseJson(r.accepted),
    rejected: parseJson(r.rejected),
    send_at: date(r.send_at),
    next_attempt_at: date(r.next_attempt_at),
    lease_expires_at: fromSqliteTime(r.lease_expires_at),
    created_at: date(r.created_at),
    updated_at: date(r.updated_at),
    sent_at: fromSqliteTime(r.sent_at),
  };
}

/** The filter shared by list, replay and cancel; named parameters, NULL means "no constraint". */
export const FILTER = `(@byIds = 0 OR id IN (SELECT value FROM json_each(@ids)) OR message_id IN (SELECT value FROM json_each(@messageIds)))
  AND (@statuses IS NULL OR status IN (SELECT value FROM json_each(@statuses)))
  AND (@recipient IS NULL OR EXISTS (
        SELECT 1 FROM json_each(CASE WHEN json_valid(mail_outbox.envelope_to) THEN mail_outbox.envelope_to ELSE '[]' END) AS r
        WHERE lower(r.value) = lower(@recipient)))
  AND (@since IS NULL OR created_at >= @since)
  AND (@until IS NULL OR created_at < @until)
  AND (@uncertainOnly = 0 OR uncertain_handoffs > 0)
  AND (@fate IS NULL OR EXISTS (
        SELECT 1 FROM (${currentFates("AND email_id = mail_outbox.id")}) f WHERE f.event = @fate))`;

export function filterParams(f: MailFilter): Record<string, unknown> {
  return {
    byIds: f.byIds ? 1 : 0,
    ids: JSON.stringify(f.ids),
    messageIds: JSON.stringify(f.messageIds),
    statuses: f.statuses === null ? null : JSON.stringify(f.statuses),
    recipient: f.recipient,
    since: f.since === null ? null : toSqliteTime(f.since),
    until: f.until === null ? null : toSqliteTime(f.until),
    uncertainOnly: f.uncertainOnly ? 1 : 0,
    fate: f.fate,
  };
}

export function ping(db: Db): void {
  db.prepare("SELECT 1").get();
}

/** The size in bytes of the largest pending mail, or null when none is pending (for `doctor`'s comparison with the MTA's limit). */
export function largestPendingSize(db: Db): number | null {
  const row = db.prepare("SELECT max(size) AS n FROM mail_outbox WHERE status = 'pending'").get() as { n: number | null } | undefined;
  return row?.n ?? null;
}

/** Per status: rows, uncertain rows, due pending rows and their oldest, next scheduled attempt, expired leases. */
export function statusCounts(db: Db, now: Date): StatusCount[] {
  const rows = db
    .prepare(
      `SELECT status,
         count(*) AS total,
         count(*) FILTER (WHERE uncertain_handoffs > 0) AS uncertain,
         count(*) FILTER (WHERE status = 'pending' AND next_attempt_at <= @now) AS due,
         min(created_at) FILTER (WHERE status = 'pending' AND next_attempt_at <= @now) AS oldest_due_created,
         min(next_attempt_at) FILTER (WHERE status = 'pending' AND next_attempt_at <= @now) AS oldest_due_at,
         min(next_attempt_at) FILTER (WHERE status = 'pending' AND next_attempt_at > @now) AS next_at,
         count(*) FILTER (WHERE status = 'sending' AND lease_expires_at < @now) AS expiredLeases
       FROM mail_outbox
       GROUP BY status`,
    )
    .all({ now: toSqliteTime(now) }) as (Omit<StatusCount, "oldestDueCreatedAt" | "oldestDueAt" | "nextAttemptAt"> & {
    oldest_due_created: unknown;
    oldest_due_at: unknown;
    next_at: unknown;
  })[];
  return rows.map(({ oldest_due_created, oldest_due_at, next_at, ...r }) => ({
    ...r,
    oldestDueCreatedAt: fromSqliteTime(oldest_due_created),
    oldestDueAt: fromSqliteTime(oldest_due_at),
    nextAttemptAt: fromSqliteTime(next_at),
  }));
}

/** Rows matching the filter, newest first. */
export function listMails(db: Db, f: MailFilter, limit: number): SqliteMailRow[] {
  return db
    .prepare(
      `SELECT ${MAIL_COLUMNS} FROM mail_outbox
       WHERE ${FILTER}
       ORDER BY created_at DESC, id DESC
       LIMIT @limit`,
    )
    .all({ ...filterParams(f), limit }) as SqliteMailRow[];
}

/** One row by id or Message-ID, with `raw` only when asked. */
export function findMail(db: Db, id: string | null, messageId: string | null, withRaw: boolean): SqliteMailRow | undefined {
  return db
    .prepare(
      `SELECT ${MAIL_COLUMNS}, CASE WHEN @withRaw = 1 THEN raw END AS raw
       FROM mail_outbox
       WHERE id = @id OR message_id = @messageId
       LIMIT 1`,
    )
    .get({ id, messageId, withRaw: withRaw ? 1 : 0 }) as SqliteMailRow | undefined;
}

/**
 * The attempts of one mail in the order they happened. Times are stored to the millisecond, so two
 * lines written in the same millisecond (a rescue, then the verifier's settling) are ordered by
 * rowid, the order they were inserted in, not by their random ids.
 */
export function listAttempts(db: Db, emailId: string): PlainAttemptRow[] {
  const rows = db
    .prepare(
      `SELECT ${ATTEMPT_COLUMNS}
       FROM mail_outbox_attempt
       WHERE email_id = @emailId
       ORDER BY started_at, attempt, rowid`,
    )
    .all({ emailId }) as SqliteAttemptRow[];
  return rows.map((r) => ({ ...r, started_at: date(r.started_at) }));
}

/** The rows a bulk change (replay, cancel) would touch. Run inside an IMMEDIATE transaction to hold them. */
export function selectTargets(db: Db, f: MailFilter): ChangeTarget[] {
  return db
    .prepare(
      `SELECT id, message_id AS messageId, status, attempts, last_error AS lastError, uncertain_handoffs AS uncertainHandoffs
       FROM mail_outbox
       WHERE ${FILTER}
       ORDER BY created_at, id`,
    )
    .all(filterParams(f)) as ChangeTarget[];
}

/**
 * The "replay" transition for a batch: back to pending, due now, attempts and lease reset, the
 * results of the previous hand-off cleared (they stay in mail_outbox_attempt). Message-ID and raw are kept.
 */
export function replayBatch(db: Db, ids: readonly string[], from: readonly string[], to: string, now: Date): string[] {
  const rows = db
    .prepare(
      `UPDATE mail_outbox
       SET status = @to, attempts = 0, next_attempt_at = @now, lease_owner = NULL, lease_expires_at = NULL,
           last_error = NULL, mta_response = NULL, mta_queue_id = NULL, accepted = NULL, rejected = NULL,
           sent_at = NULL, uncertain_handoffs = 0, updated_at = @now
       WHERE id IN (SELECT value FROM json_each(@ids)) AND status IN (SELECT value FROM json_each(@from))
       RETURNING id`,
    )
    .all({ ids: JSON.stringify(ids), from: JSON.stringify(from), to, now: toSqliteTime(now) }) as { id: string }[];
  return rows.map((r) => r.id);
}

/** The "cancel" transition for a batch. */
export function cancelBatch(db: Db, ids: readonly string[], from: readonly string[], to: string, now: Date): string[] {
  const rows = db
    .prepare(
      `UPDATE mail_outbox
       SET status = @to, lease_owner = NULL, lease_expires_at = NULL, updated_at = @now
       WHERE id IN (SELECT value FROM json_each(@ids)) AND status IN (SELECT value FROM json_each(@from))
       RETURNING id`,
    )
    .all({ ids: JSON.stringify(ids), from: JSON.stringify(from), to, now: toSqliteTime(now) }) as { id: string }[];
  return rows.map((r) => r.id);
}

/** One operator action per mail in the attempt log (outcome "replayed" or "cancelled"), so `show` tells the story. */
export function insertAdminAttempts(
  db: Db,
  rows: readonly ActionLogLine[],
  actor: string,
  outcome: string,
  at: Date,
): void {
  db.prepare(
    `INSERT INTO mail_outbox_attempt (id, email_id, attempt, relay, started_at, duration_ms, outcome, response)
     SELECT json_extract(t.value, '$.id'), json_extract(t.value, '$.mailId'), 0, @actor, @at, 0, @outcome,
            json_extract(t.value, '$.response')
     FROM json_each(@rows) AS t`,
  ).run({ rows: JSON.stringify(rows), actor, outcome, at: toSqliteTime(at) });
}

/** How many rows a purge would delete, per status. `cutoff` null: any age. */
export function countPurgeable(db: Db, statuses: readonly string[], cutoff: Date | null): CountByStatus[] {
  return db
    .prepare(
      `SELECT status, count(*) AS n
       FROM mail_outbox
       WHERE status IN (SELECT value FROM json_each(@statuses)) AND (@cutoff IS NULL OR updated_at < @cutoff)
       GROUP BY status`,
    )
    .all({ statuses: JSON.stringify(statuses), cutoff: cutoff === null ? null : toSqliteTime(cutoff) }) as CountByStatus[];
}

/** The ids of the next batch a purge deletes. */
export function selectPurgeBatch(db: Db, statuses: readonly string[], cutoff: Date | null, limit: number): string[] {
  const rows = db
    .prepare(
      `SELECT id FROM mail_outbox
       WHERE status IN (SELECT value FROM json_each(@statuses)) AND (@cutoff IS NULL OR updated_at < @cutoff)
       LIMIT @limit`,
    )
    .all({ statuses: JSON.stringify(statuses), cutoff: cutoff === null ? null : toSqliteTime(cutoff), limit }) as { id: string }[];
  return rows.map((r) => r.id);
}

/** Delete the attempts of a batch of mails (before the mails: the foreign key may not cascade). */
export function deleteAttemptsOf(db: Db, ids: readonly string[]): void {
  db.prepare(`DELETE FROM mail_outbox_attempt WHERE email_id IN (SELECT value FROM json_each(@ids))`).run({ ids: JSON.stringify(ids) });
}

/** Delete the delivery events of a batch of mails (before the mails: the foreign key may not cascade). */
export function deleteDeliveriesOf(db: Db, ids: readonly string[]): void {
  db.prepare(`DELETE FROM mail_outbox_delivery WHERE email_id IN (SELECT value FROM json_each(@ids))`).run({ ids: JSON.stringify(ids) });
}

/** Delete a batch of mails; returns the status of each deleted row. */
export function deleteMails(db: Db, ids: readonly string[]): { status: string }[] {
  return db
    .prepare(`DELETE FROM mail_outbox WHERE id IN (SELECT value FROM json_each(@ids)) RETURNING status`)
    .all({ ids: JSON.stringify(ids) }) as { status: string }[];
}

/**
 * Rows whose time columns hold numbers instead of ISO-8601 text, which happens when the
 * application's adapter is created with `timestampFormat: "unixepoch-ms"`. The relay compares
 * times as text, so such rows would ignore `sendAt` and backoff.
 */
export function countNumericTimes(db: Db): number {
  const row = db
    .prepare("SELECT count(*) AS n FROM mail_outbox WHERE typeof(next_attempt_at) <> 'text' OR typeof(send_at) <> 'text' OR typeof(created_at) <> 'text'")
    .get() as { n: number };
  return Number(row.n);
}
