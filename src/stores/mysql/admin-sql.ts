/**
 * The operator statements for MySQL and MariaDB, one statement per function where the database
 * allows it, side by side with ../postgres/admin-sql.ts. Every value is a bound parameter; a list
 * is one `?` the driver expands (`IN (?)` with an array; an empty array is a syntax error, so an
 * empty list is bound as `[null]`, which matches nothing). Times are DATETIME(3) in UTC
 * (./conn.ts); JSON columns come back as text and are parsed here, so every function returns the
 * rows ../rows.ts expects.
 *
 * Neither database has UPDATE ... RETURNING (MySQL 8 no RETURNING at all): replay, cancel and
 * purge lock and read the rows they will change, then change them by id, inside the transaction
 * the store opens, so what they read is what they changed.
 */
import type { ActionLogLine, ChangeTarget, CountByStatus, MailFilter, StatusCount } from "../../store.js";
import { ATTEMPT_COLUMNS, MAIL_COLUMNS, parseJson, type PlainAttemptRow, type PlainMailRow } from "../rows.js";
import type { Queryable } from "./conn.js";

/** Every column but `raw`, as ../rows.ts expects it (JSON parsed, times as Dates), and `raw` when asked. */
export type MysqlMailRow = PlainMailRow & { raw?: Buffer | null };

/** A mail row as the driver returns it: JSON columns as text. */
export type StoredMailRow = Omit<PlainMailRow, "envelope_to" | "metadata" | "accepted" | "rejected"> & {
  envelope_to: string;
  metadata: string | null;
  accepted: string | null;
  rejected: string | null;
  raw?: Buffer | null;
};

/** A list for `IN (?)`: never empty (`[null]` matches no row). */
const list = (xs: readonly unknown[]): unknown[] => (xs.length > 0 ? [...xs] : [null]);

/** A stored row with its JSON columns parsed (times are Dates already: ./conn.ts reads DATETIME as UTC). */
export function plainMailRow(r: StoredMailRow): MysqlMailRow {
  return {
    ...r,
    envelope_to: parseJson(r.envelope_to),
    metadata: parseJson(r.metadata),
    accepted: parseJson(r.accepted),
    rejected: parseJson(r.rejected),
  };
}

/**
 * The filter shared by list, replay and cancel, with `?` in the order of {@link filterParams}:
 * byIds, ids, messageIds, statuses given, statuses, recipient given, recipient, since (twice),
 * until (twice), uncertainOnly, fate given, fate.
 *
 * - ids compare case-insensitively (the column's _ci collation), as PostgreSQL's uuid does.
 * - The recipient is an element of the envelope_to array, any case: both sides lower-cased, then
 *   JSON_CONTAINS compares the strings exactly (no LIKE wildcards, no accent folding), as
 *   PostgreSQL's `lower(addr) = lower($5)` does. A non-array envelope_to matches nothing.
 * - The fate: a recipient of the mail whose current fate (../postgres/fate-sql.ts `currentFates`)
 *   is this event. MariaDB refuses an outer reference inside a derived table, so instead of the
 *   window query the current event of each (mail, recipient) is picked by a correlated
 *   ORDER BY ... LIMIT 1 with the same order: the latest terminal event, else the latest
 *   `deferred`; `queued` is no fate. It reads mail_outbox_delivery_email_idx for one mail at a time.
 */
export const FILTER = `(NOT ? OR id IN (?) OR message_id IN (?))
  AND (? IS NULL OR status IN (?))
  AND (? IS NULL OR (JSON_TYPE(envelope_to) = 'ARRAY' AND JSON_CONTAINS(LOWER(envelope_to), JSON_QUOTE(LOWER(?)))))
  AND (? IS NULL OR created_at >= ?)
  AND (? IS NULL OR created_at < ?)
  AND (? IS NOT TRUE OR uncertain_handoffs > 0)
  AND (? IS NULL OR EXISTS (
        SELECT 1 FROM mail_outbox_delivery d
        WHERE d.email_id = mail_outbox.id AND d.event = ?
          AND d.id = (SELECT e.id FROM mail_outbox_delivery e
                      WHERE e.email_id = d.email_id AND e.event <> 'queued' AND lower(e.recipient) = lower(d.recipient)
                      ORDER BY (e.event <> 'deferred') DESC, e.at DESC, e.recorded_at DESC, e.id DESC
                      LIMIT 1)))`;

export function filterParams(f: MailFilter): unknown[] {
  return [
    f.byIds,
    list(f.ids),
    list(f.messageIds),
    f.statuses === null ? null : 1,
    list(f.statuses ?? []),
    f.recipient,
    f.recipient,
    f.since,
    f.since,
    f.until,
    f.until,
    f.uncertainOnly,
    f.fate,
    f.fate,
  ];
}

export async function ping(q: Queryable): Promise<void> {
  await q.query("SELECT 1");
}

/** The size in bytes of the largest pending mail, or null when none is pending (for `doctor`'s comparison with the MTA's limit). */
export async function largestPendingSize(q: Queryable): Promise<number | null> {
  const rows = await q.query<{ n: number | null }[]>("SELECT max(size) AS n FROM mail_outbox WHERE status = 'pending'");
  return rows[0]?.n ?? null;
}

/**
 * Per status: rows, uncertain rows, due pending rows and their oldest, next scheduled attempt,
 * expired leases. No FILTER clause in MySQL: conditional aggregates (SUM of a condition counts it,
 * MIN of a CASE without ELSE skips the rows it leaves NULL).
 */
export async function statusCounts(q: Queryable, now: Date): Promise<StatusCount[]> {
  const rows = await q.query<StatusCount[]>(
    `SELECT status,
       count(*) AS total,
       sum(uncertain_handoffs > 0) AS uncertain,
       sum(status = 'pending' AND next_attempt_at <= ?) AS due,
       min(CASE WHEN status = 'pending' AND next_attempt_at <= ? THEN created_at END) AS oldestDueCreatedAt,
       min(CASE WHEN status = 'pending' AND next_attempt_at <= ? THEN next_attempt_at END) AS oldestDueAt,
       min(CASE WHEN status = 'pending' AND next_attempt_at > ? THEN next_attempt_at END) AS nextAttemptAt,
       sum(status = 'sending' AND lease_expires_at < ?) AS expiredLeases
     FROM mail_outbox
     GROUP BY status`,
    [now, now, now, now, now],
  );
  // SUM answers DECIMAL (a number: the pool's decimalAsNumber), and 0 rows of a condition sum to 0, not NULL.
  return rows.map((r) => ({ ...r, total: Number(r.total), uncertain: Number(r.uncertain), due: Number(r.due), expiredLeases: Number(r.expiredLeases) }));
}

/** Rows matching the filter, newest first. */
export async function listMails(q: Queryable, f: MailFilter, limit: number): Promise<MysqlMailRow[]> {
  const rows = await q.query<StoredMailRow[]>(
    `SELECT ${MAIL_COLUMNS} FROM mail_outbox
     WHERE ${FILTER}
     ORDER BY created_at DESC, id DESC
     LIMIT ?`,
    [...filterParams(f), limit],
  );
  return rows.map(plainMailRow);
}

/**
 * One row by id or Message-ID, with `raw` only when asked. Message-IDs compare in the column's
 * _ci collation; its unique index is _ci too, so at most one row differs from the asked one only in case.
 */
export async function findMail(q: Queryable, id: string | null, messageId: string | null, withRaw: boolean): Promise<MysqlMailRow | undefined> {
  const rows = await q.query<StoredMailRow[]>(
    `SELECT ${MAIL_COLUMNS}, CASE WHEN ? THEN raw END AS raw
     FROM mail_outbox
     WHERE id = ? OR message_id = ?
     LIMIT 1`,
    [withRaw, id, messageId],
  );
  const r = rows[0];
  return r === undefined ? undefined : plainMailRow(r);
}

/**
 * The attempts of one mail in the order they happened. Times are stored to the millisecond, so
 * lines written in one millisecond are ordered by id: UUIDv7s that one process makes increase
 * (src/ids.ts), so that is the order they were written in.
 */
export async function listAttempts(q: Queryable, emailId: string): Promise<PlainAttemptRow[]> {
  return q.query<PlainAttemptRow[]>(
    `SELECT ${ATTEMPT_COLUMNS}
     FROM mail_outbox_attempt
     WHERE email_id = ?
     ORDER BY started_at, attempt, id`,
    [emailId],
  );
}

/** The rows a bulk change (replay, cancel) would touch, locked until the transaction ends when `lock`. */
export async function selectTargets(q: Queryable, f: MailFilter, lock: boolean): Promise<ChangeTarget[]> {
  return q.query<ChangeTarget[]>(
    `SELECT id, message_id AS messageId, status, attempts, last_error AS lastError, uncertain_handoffs AS uncertainHandoffs
     FROM mail_outbox
     WHERE ${FILTER}
     ORDER BY created_at, id
     ${lock ? "FOR UPDATE" : ""}`,
    filterParams(f),
  );
}

/**
 * Of `ids`, those in one of the `from` statuses, locked until the transaction ends: the rows a
 * transition of them will change (what PostgreSQL's UPDATE ... RETURNING answers). In id order,
 * so two changes over the same rows lock them in the same order.
 */
async function lockChangeable(q: Queryable, ids: readonly string[], from: readonly string[]): Promise<string[]> {
  const rows = await q.query<{ id: string }[]>(
    "SELECT id FROM mail_outbox WHERE id IN (?) AND status IN (?) ORDER BY id FOR UPDATE",
    [list(ids), list(from)],
  );
  return rows.map((row) => row.id);
}

/**
 * The "replay" transition for a batch: back to pending, due now, attempts and lease reset, the
 * results of the previous hand-off cleared (they stay in mail_outbox_attempt). Message-ID and raw
 * are kept. Run inside a transaction (the store's `changeStatus`): the rows are locked and read,
 * then updated, and the ids read are the ids changed.
 */
export async function replayBatch(q: Queryable, ids: readonly string[], from: readonly string[], to: string, now: Date): Promise<string[]> {
  const changed = await lockChangeable(q, ids, from);
  if (changed.length === 0) return [];
  await q.query(
    `UPDATE mail_outbox
     SET status = ?, attempts = 0, next_attempt_at = ?, lease_owner = NULL, lease_expires_at = NULL,
         last_error = NULL, mta_response = NULL, mta_queue_id = NULL, accepted = NULL, rejected = NULL,
         sent_at = NULL, uncertain_handoffs = 0, updated_at = ?
     WHERE id IN (?) AND status IN (?)`,
    [to, now, now, changed, list(from)],
  );
  return changed;
}

/** The "cancel" transition for a batch; inside a transaction, as {@link replayBatch}. */
export async function cancelBatch(q: Queryable, ids: readonly string[], from: readonly string[], to: string, now: Date): Promise<string[]> {
  const changed = await lockChangeable(q, ids, from);
  if (changed.length === 0) return [];
  await q.query(
    `UPDATE mail_outbox
     SET status = ?, lease_owner = NULL, lease_expires_at = NULL, updated_at = ?
     WHERE id IN (?) AND status IN (?)`,
    [to, now, changed, list(from)],
  );
  return changed;
}

/** One operator action per mail in the attempt log (outcome "replayed" or "cancelled"), so `show` tells the story. */
export async function insertAdminAttempts(
  q: Queryable,
  rows: readonly ActionLogLine[],
  actor: string,
  outcome: string,
  at: Date,
): Promise<void> {
  if (rows.length === 0) return;
  await q.batch(
    `INSERT INTO mail_outbox_attempt (id, email_id, attempt, relay, started_at, duration_ms, outcome, response)
     VALUES (?, ?, 0, ?, ?, 0, ?, ?)`,
    rows.map((r) => [r.id, r.mailId, actor, at, outcome, r.response]),
  );
}

/** How many rows a purge would delete, per status. `cutoff` null: any age. */
export async function countPurgeable(q: Queryable, statuses: readonly string[], cutoff: Date | null): Promise<CountByStatus[]> {
  const rows = await q.query<CountByStatus[]>(
    `SELECT status, count(*) AS n
     FROM mail_outbox
     WHERE status IN (?) AND (? IS NULL OR updated_at < ?)
     GROUP BY status`,
    [list(statuses), cutoff, cutoff],
  );
  return rows.map((r) => ({ status: r.status, n: Number(r.n) }));
}

/** Ids per DELETE of a purge batch: a batch may be up to 100000 rows (`purgeMails`' batchSize). */
const PURGE_IDS_PER_DELETE = 1000;

/**
 * The next batch a purge deletes, locked until the transaction ends: up to `limit` rows of these
 * statuses (`cutoff` null: any age). SKIP LOCKED passes over rows a replay or cancel holds, as
 * PostgreSQL's purge does, so a purge never waits for one (nor deadlocks with it).
 */
async function lockPurgeBatch(q: Queryable, statuses: readonly string[], cutoff: Date | null, limit: number): Promise<{ id: string; status: string }[]> {
  return q.query<{ id: string; status: string }[]>(
    `SELECT id, status FROM mail_outbox
     WHERE status IN (?) AND (? IS NULL OR updated_at < ?)
     LIMIT ?
     FOR UPDATE SKIP LOCKED`,
    [list(statuses), cutoff, cutoff, limit],
  );
}

/** Delete mails this transaction holds; their attempts and delivery events go with them (ON DELETE CASCADE). */
async function deleteMails(q: Queryable, ids: readonly string[]): Promise<void> {
  await q.query("DELETE FROM mail_outbox WHERE id IN (?)", [list(ids)]);
}

/**
 * Delete up to `limit` rows, their attempts and delivery events; returns what was deleted, per
 * status. Without DELETE ... RETURNING (MySQL 8), the batch is locked and read first, then deleted
 * by id: run inside a transaction (the store does), so the rows read are the rows deleted.
 */
export async function purgeBatch(
  q: Queryable,
  statuses: readonly string[],
  cutoff: Date | null,
  limit: number,
): Promise<CountByStatus[]> {
  const victims = await lockPurgeBatch(q, statuses, cutoff, limit);
  for (let i = 0; i < victims.length; i += PURGE_IDS_PER_DELETE) {
    await deleteMails(q, victims.slice(i, i + PURGE_IDS_PER_DELETE).map((v) => v.id));
  }
  const n = new Map<string, number>();
  for (const v of victims) n.set(v.status, (n.get(v.status) ?? 0) + 1);
  return [...n].map(([status, count]) => ({ status, n: count }));
}
