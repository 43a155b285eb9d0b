/**
 * The operator statements for PostgreSQL, one statement per function, side by side with
 * ../sqlite/admin-sql.ts. Every value is a bound parameter; status lists come from the constants of
 * `states.ts`. Table and column names are fixed (the pool's `search_path` selects the schema).
 */
import type pg from "pg";
import type { ActionLogLine, ChangeTarget, CountByStatus, MailFilter, StatusCount } from "../../store.js";
import { ATTEMPT_COLUMNS, MAIL_COLUMNS, type PlainAttemptRow, type PlainMailRow } from "../rows.js";
import { currentFates } from "./fate-sql.js";

/** A pool or a client checked out of it (inside a transaction). */
export interface Queryable {
  query<R extends pg.QueryResultRow = pg.QueryResultRow>(text: string, values?: unknown[]): Promise<pg.QueryResult<R>>;
}

/** Every column but `raw`, as stored: pg parses jsonb and timestamptz itself. */
export type PgMailRow = PlainMailRow & { raw?: Buffer | null };

/**
 * The filter shared by list, replay and purge. `null` means "no constraint".
 * Parameters: $1 byIds, $2 ids (uuid[]), $3 messageIds (text[]), $4 statuses, $5 recipient, $6 since, $7 until, $8 uncertainOnly,
 * $9 fate (a recipient whose current fate it is).
 */
export const FILTER = `(NOT $1::boolean OR id = ANY($2::uuid[]) OR message_id = ANY($3::text[]))
  AND ($4::text[] IS NULL OR status = ANY($4::text[]))
  AND ($5::text IS NULL OR EXISTS (
        SELECT 1 FROM jsonb_array_elements_text(CASE WHEN jsonb_typeof(envelope_to) = 'array' THEN envelope_to ELSE '[]'::jsonb END) AS r(addr)
        WHERE lower(r.addr) = lower($5::text)))
  AND ($6::timestamptz IS NULL OR created_at >= $6::timestamptz)
  AND ($7::timestamptz IS NULL OR created_at < $7::timestamptz)
  AND ($8::boolean IS NOT TRUE OR uncertain_handoffs > 0)
  AND ($9::text IS NULL OR EXISTS (
        SELECT 1 FROM (${currentFates("AND email_id = mail_outbox.id")}) f WHERE f.event = $9::text))`;

export function filterParams(f: MailFilter): unknown[] {
  return [f.byIds, f.ids, f.messageIds, f.statuses, f.recipient, f.since, f.until, f.uncertainOnly, f.fate];
}

export async function ping(q: Queryable): Promise<void> {
  await q.query("SELECT 1");
}

/** The size in bytes of the largest pending mail, or null when none is pending (for `doctor`'s comparison with the MTA's limit). */
export async function largestPendingSize(q: Queryable): Promise<number | null> {
  const r = await q.query<{ n: number | null }>("SELECT max(size) AS n FROM mail_outbox WHERE status = 'pending'");
  return r.rows[0]?.n ?? null;
}

/** Per status: rows, uncertain rows, due pending rows and their oldest, next scheduled attempt, expired leases. */
export async function statusCounts(q: Queryable, now: Date): Promise<StatusCount[]> {
  const r = await q.query<StatusCount>(
    `SELECT status,
       count(*)::int AS total,
       (count(*) FILTER (WHERE uncertain_handoffs > 0))::int AS uncertain,
       (count(*) FILTER (WHERE status = 'pending' AND next_attempt_at <= $1))::int AS due,
       min(created_at) FILTER (WHERE status = 'pending' AND next_attempt_at <= $1) AS "oldestDueCreatedAt",
       min(next_attempt_at) FILTER (WHERE status = 'pending' AND next_attempt_at <= $1) AS "oldestDueAt",
       min(next_attempt_at) FILTER (WHERE status = 'pending' AND next_attempt_at > $1) AS "nextAttemptAt",
       (count(*) FILTER (WHERE status = 'sending' AND lease_expires_at < $1))::int AS "expiredLeases"
     FROM mail_outbox
     GROUP BY status`,
    [now],
  );
  return r.rows;
}

/** Rows matching the filter, newest first. */
export async function listMails(q: Queryable, f: MailFilter, limit: number): Promise<PgMailRow[]> {
  const r = await q.query<PgMailRow>(
    `SELECT ${MAIL_COLUMNS} FROM mail_outbox
     WHERE ${FILTER}
     ORDER BY created_at DESC, id DESC
     LIMIT $10`,
    [...filterParams(f), limit],
  );
  return r.rows;
}

/** One row by id or Message-ID, with `raw` only when asked. */
export async function findMail(q: Queryable, id: string | null, messageId: string | null, withRaw: boolean): Promise<PgMailRow | undefined> {
  const r = await q.query<PgMailRow>(
    `SELECT ${MAIL_COLUMNS}, CASE WHEN $3::boolean THEN raw END AS raw
     FROM mail_outbox
     WHERE id = $1::uuid OR message_id = $2::text
     LIMIT 1`,
    [id, messageId, withRaw],
  );
  return r.rows[0];
}

/** The attempts of one mail in the order they happened. */
export async function listAttempts(q: Queryable, emailId: string): Promise<PlainAttemptRow[]> {
  const r = await q.query<PlainAttemptRow>(
    `SELECT ${ATTEMPT_COLUMNS}
     FROM mail_outbox_attempt
     WHERE email_id = $1
     ORDER BY started_at, attempt, id`,
    [emailId],
  );
  return r.rows;
}

/** The rows a bulk change (replay, cancel) would touch, locked until the transaction ends when `lock`. */
export async function selectTargets(q: Queryable, f: MailFilter, lock: boolean): Promise<ChangeTarget[]> {
  const r = await q.query<ChangeTarget>(
    `SELECT id, message_id AS "messageId", status, attempts, last_error AS "lastError", uncertain_handoffs AS "uncertainHandoffs"
     FROM mail_outbox
     WHERE ${FILTER}
     ORDER BY created_at, id
     ${lock ? "FOR UPDATE" : ""}`,
    filterParams(f),
  );
  return r.rows;
}

/**
 * The "replay" transition for a batch: back to pending, due now, attempts and lease reset, the
 * results of the previous hand-off cleared (they stay in mail_outbox_attempt). Message-ID and raw are kept.
 */
export async function replayBatch(q: Queryable, ids: readonly string[], from: readonly string[], to: string, now: Date): Promise<string[]> {
  const r = await q.query<{ id: string }>(
    `UPDATE mail_outbox
     SET status = $3, attempts = 0, next_attempt_at = $4, lease_owner = NULL, lease_expires_at = NULL,
         last_error = NULL, mta_response = NULL, mta_queue_id = NULL, accepted = NULL, rejected = NULL,
         sent_at = NULL, uncertain_handoffs = 0, updated_at = $4
     WHERE id = ANY($1::uuid[]) AND status = ANY($2::text[])
     RETURNING id`,
    [ids, from, to, now],
  );
  return r.rows.map((row) => row.id);
}

/** The "cancel" transition for a batch. */
export async function cancelBatch(q: Queryable, ids: readonly string[], from: readonly string[], to: string, now: Date): Promise<string[]> {
  const r = await q.query<{ id: string }>(
    `UPDATE mail_outbox
     SET status = $3, lease_owner = NULL, lease_expires_at = NULL, updated_at = $4
     WHERE id = ANY($1::uuid[]) AND status = ANY($2::text[])
     RETURNING id`,
    [ids, from, to, now],
  );
  return r.rows.map((row) => row.id);
}

/** One operator action per mail in the attempt log (outcome "replayed" or "cancelled"), so `show` tells the story. */
export async function insertAdminAttempts(
  q: Queryable,
  rows: readonly ActionLogLine[],
  actor: string,
  outcome: string,
  at: Date,
): Promise<void> {
  await q.query(
    `INSERT INTO mail_outbox_attempt (id, email_id, attempt, relay, started_at, duration_ms, outcome, response)
     SELECT t.id, t.email_id, 0, $4, $5, 0, $6, t.response
     FROM unnest($1::uuid[], $2::uuid[], $3::text[]) AS t(id, email_id, response)`,
    [rows.map((r) => r.id), rows.map((r) => r.mailId), rows.map((r) => r.response), actor, at, outcome],
  );
}

/** How many rows a purge would delete, per status. `cutoff` null: any age. */
export async function countPurgeable(q: Queryable, statuses: readonly string[], cutoff: Date | null): Promise<CountByStatus[]> {
  const r = await q.query<CountByStatus>(
    `SELECT status, count(*)::int AS n
     FROM mail_outbox
     WHERE status = ANY($1::text[]) AND ($2::timestamptz IS NULL OR updated_at < $2::timestamptz)
     GROUP BY status`,
    [statuses, cutoff],
  );
  return r.rows;
}

/** Delete up to `limit` rows, their attempts and delivery events in one statement; returns what was deleted, per status. */
export async function purgeBatch(
  q: Queryable,
  statuses: readonly string[],
  cutoff: Date | null,
  limit: number,
): Promise<CountByStatus[]> {
  const r = await q.query<CountByStatus>(
    `WITH victims AS (
       SELECT id FROM mail_outbox
       WHERE status = ANY($1::text[]) AND ($2::timestamptz IS NULL OR updated_at < $2::timestamptz)
       LIMIT $3
       FOR UPDATE SKIP LOCKED
     ), gone_attempts AS (
       DELETE FROM mail_outbox_attempt WHERE email_id IN (SELECT id FROM victims)
     ), gone_deliveries AS (
       DELETE FROM mail_outbox_delivery WHERE email_id IN (SELECT id FROM victims)
     ), gone AS (
       DELETE FROM mail_outbox WHERE id IN (SELECT id FROM victims) RETURNING status
     )
     SELECT status, count(*)::int AS n FROM gone GROUP BY status`,
    [statuses, cutoff, limit],
  );
  return r.rows;
}
