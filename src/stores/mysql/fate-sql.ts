/**
 * The delivery-fate statements for MySQL and MariaDB, one statement per function, side by side
 * with ../postgres/fate-sql.ts: delivery events (mail_outbox_delivery), the log follower's cursor
 * (mail_outbox_log_cursor), the suppression list (mail_outbox_suppression), and the `verify`
 * policy's look at held uncertain hand-offs. Every value is a bound parameter; a list is one `?`
 * the driver expands (`IN (?)` with an array, never empty: the store guards). `recorded_at` and
 * `updated_at` come from the database's clock (NOW(3), UTC: ./conn.ts).
 *
 * Neither MySQL 8 nor MariaDB has UPDATE ... RETURNING (MySQL no RETURNING at all): where the
 * PostgreSQL statement returns what it wrote, these write rows with ids made here and read them
 * back by those ids, or check `affectedRows`, inside the transaction the store opens.
 */
import { newId } from "../../ids.js";
import type {
  CountByFate,
  DeliveryEventInput,
  LogCursor,
  SuppressionInput,
  VerifyCandidate,
  VerifyResolution,
} from "../../store.js";
import {
  DELIVERY_COLUMNS,
  SUPPRESSION_COLUMNS,
  parseJson,
  type PlainCursorRow,
  type PlainDeliveryRow,
  type PlainSuppressionRow,
} from "../rows.js";
import type { Queryable } from "./conn.js";

/** What an INSERT, UPDATE or DELETE answers (the pool reports matched rows for UPDATE: `foundRows`). */
interface Written {
  affectedRows: number;
}

/** The columns of mail_outbox_log_cursor: rows.ts's list, with `offset` (a keyword) in backquotes. */
const CURSOR_COLUMNS = "name, file_id, `offset`, state, caught_up_at, updated_at";

/**
 * The current fate of each (mail, recipient) among the events `where` selects: the latest terminal
 * event (delivered, bounced, expired) by `at`, else the latest `deferred`. Recipients compare
 * case-insensitively. `queued` events are no fate. (ROW_NUMBER: MySQL 8.0, MariaDB 10.2.)
 */
export const currentFates = (where: string) => `
SELECT email_id, recipient, event FROM (
  SELECT email_id, lower(recipient) AS recipient, event,
         ROW_NUMBER() OVER (PARTITION BY email_id, lower(recipient)
                            ORDER BY (event <> 'deferred') DESC, at DESC, recorded_at DESC, id DESC) AS rn
  FROM mail_outbox_delivery
  WHERE event <> 'queued' ${where}
) cur WHERE rn = 1`;

/**
 * `mailId` (a column of the outer query, e.g. `mail_outbox.id`) has a recipient whose current fate
 * is the `?` bound after it: the same rule as {@link currentFates}, as a correlated condition.
 * (MariaDB allows no outer reference inside a derived table, so `currentFates("AND email_id =
 * mail_outbox.id")` cannot be correlated as it is on PostgreSQL and SQLite.) An event is the
 * current fate of its recipient when no terminal event of the same recipient (any case) comes
 * after it, and, for a `deferred` one, none at all.
 */
export const hasCurrentFate = (mailId: string) => `EXISTS (
  SELECT 1 FROM mail_outbox_delivery d
  WHERE d.email_id = ${mailId} AND d.event = ? AND d.event <> 'queued'
    AND NOT EXISTS (
      SELECT 1 FROM mail_outbox_delivery d2
      WHERE d2.email_id = d.email_id AND lower(d2.recipient) = lower(d.recipient)
        AND d2.event IN ('delivered', 'bounced', 'expired')
        AND (d.event = 'deferred' OR (d2.at, d2.recorded_at, d2.id) > (d.at, d.recorded_at, d.id))))`;

/** Events per INSERT of insertDeliveryEvents (12 values each): a follower's batch is up to 500 lines. */
const EVENTS_PER_INSERT = 500;

const EVENT_ROW = "SELECT ? AS id, ? AS email_id, ? AS recipient, ? AS event, ? AS at, ? AS source, ? AS queue_id, ? AS dsn_status, ? AS remote_mta, ? AS reply, ? AS event_key, ? AS ord";

/**
 * Insert events, skipping those whose event_key is stored already (and those of mail that no
 * longer exists: purged meanwhile). Returns the rows inserted now, in input order. Run inside a
 * transaction (the store does).
 *
 * The first event of a key in the batch is the one offered. The events, each with an id made here,
 * go in as INSERT ... SELECT over a UNION ALL of rows joined to their mail (a purged mail's events
 * are left out by the statement that inserts the others), and a key stored already (by an earlier
 * batch or a concurrent follower) is a duplicate that the no-op ON DUPLICATE KEY UPDATE skips.
 * Only duplicates are skipped: unlike INSERT IGNORE, a value too long for its column still fails.
 * What went in is then read back by the ids made here.
 */
export async function insertDeliveryEvents(q: Queryable, events: readonly DeliveryEventInput[]): Promise<PlainDeliveryRow[]> {
  const offered = new Map<string, DeliveryEventInput & { id: string }>();
  for (const e of events) if (!offered.has(e.eventKey)) offered.set(e.eventKey, { ...e, id: newId() });
  const rows = [...offered.values()];
  if (rows.length === 0) return [];
  // Inserted in the order of (mail, key): each insert share-locks its mail's row (the foreign key)
  // and its key, and taking both in one order, that of the primary key as the relay's UPDATEs
  // take them, keeps concurrent followers and relays from deadlocking on each other.
  const cmp = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);
  const byKey = [...rows].sort((x, y) => cmp(x.emailId, y.emailId) || cmp(x.eventKey, y.eventKey));
  for (let i = 0; i < byKey.length; i += EVENTS_PER_INSERT) {
    const chunk = byKey.slice(i, i + EVENTS_PER_INSERT);
    await q.query(
      `INSERT INTO mail_outbox_delivery (${DELIVERY_COLUMNS})
       SELECT e.id, e.email_id, e.recipient, e.event, e.at, NOW(3), e.source, e.queue_id, e.dsn_status, e.remote_mta, e.reply, e.event_key
       FROM (${chunk.map(() => EVENT_ROW).join(" UNION ALL ")}) e
       JOIN mail_outbox m ON m.id = e.email_id
       ORDER BY e.ord
       ON DUPLICATE KEY UPDATE id = mail_outbox_delivery.id`,
      chunk.flatMap((e, n) => [e.id, e.emailId, e.recipient, e.event, e.at, e.source, e.queueId, e.dsnStatus, e.remoteMta, e.reply, e.eventKey, n]),
    );
  }
  const stored = await q.query<PlainDeliveryRow[]>(`SELECT ${DELIVERY_COLUMNS} FROM mail_outbox_delivery WHERE id IN (?)`, [rows.map((e) => e.id)]);
  const byId = new Map(stored.map((r) => [r.id, r]));
  return rows.flatMap((e) => byId.get(e.id) ?? []);
}

/** Save where a log follower stopped (insert or replace); a null `caughtUpAt` keeps the stored one. */
export async function upsertLogCursor(q: Queryable, c: Omit<LogCursor, "updatedAt">): Promise<void> {
  const state = c.state === null ? null : JSON.stringify(c.state);
  await q.query(
    `INSERT INTO mail_outbox_log_cursor (${CURSOR_COLUMNS})
     VALUES (?, ?, ?, ?, ?, NOW(3))
     ON DUPLICATE KEY UPDATE
       file_id = ?, \`offset\` = ?, state = ?, caught_up_at = coalesce(?, caught_up_at), updated_at = NOW(3)`,
    [c.name, c.fileId, c.offset, state, c.caughtUpAt, c.fileId, c.offset, state, c.caughtUpAt],
  );
}

export async function readLogCursor(q: Queryable, name: string): Promise<PlainCursorRow | undefined> {
  const rows = await q.query<PlainCursorRow[]>(`SELECT ${CURSOR_COLUMNS} FROM mail_outbox_log_cursor WHERE name = ?`, [name]);
  const r = rows[0];
  return r === undefined ? undefined : { ...r, state: parseJson(r.state) };
}

/** The latest time any follower read its log to the end. */
export async function logCaughtUpAt(q: Queryable): Promise<Date | null> {
  const rows = await q.query<{ t: Date | null }[]>("SELECT max(caught_up_at) AS t FROM mail_outbox_log_cursor");
  return rows[0]?.t ?? null;
}

export async function mailIdsByMessageId(q: Queryable, messageIds: readonly string[]): Promise<{ message_id: string; id: string }[]> {
  return q.query<{ message_id: string; id: string }[]>("SELECT message_id, id FROM mail_outbox WHERE message_id IN (?)", [messageIds]);
}

export async function existingMailIds(q: Queryable, ids: readonly string[]): Promise<string[]> {
  const rows = await q.query<{ id: string }[]>("SELECT id FROM mail_outbox WHERE id IN (?)", [ids]);
  return rows.map((row) => row.id);
}

/**
 * The mail of each queue id: the latest `queued` event naming it, else the latest attempt that
 * recorded it (every hand-off that stores `mta_queue_id` writes it into its attempt line too).
 */
export async function mailIdsByQueueId(q: Queryable, queueIds: readonly string[]): Promise<{ queue_id: string; email_id: string }[]> {
  return q.query<{ queue_id: string; email_id: string }[]>(
    `SELECT queue_id, email_id FROM (
       SELECT queue_id, email_id, ROW_NUMBER() OVER (PARTITION BY queue_id ORDER BY rnk, t DESC) AS rn
       FROM (
         SELECT queue_id, email_id, 0 AS rnk, at AS t FROM mail_outbox_delivery WHERE event = 'queued' AND queue_id IN (?)
         UNION ALL
         SELECT queue_id, email_id, 1 AS rnk, started_at AS t FROM mail_outbox_attempt WHERE queue_id IN (?)
       ) k
     ) r WHERE rn = 1`,
    [queueIds, queueIds],
  );
}

/** One mail's events, by `at`, then when they were recorded. */
export async function listDeliveryEvents(q: Queryable, emailId: string): Promise<PlainDeliveryRow[]> {
  return q.query<PlainDeliveryRow[]>(`SELECT ${DELIVERY_COLUMNS} FROM mail_outbox_delivery WHERE email_id = ? ORDER BY at, recorded_at, id`, [emailId]);
}

/**
 * Events recorded after (recorded_at, id), oldest first, with their mail's Message-ID. The
 * comparison is spelled out (a range on recorded_at, then the tie on id) so it reads
 * mail_outbox_delivery_recorded_idx from the point on; from the start, it is after (1970, "").
 */
export async function deliveryEventsAfter(
  q: Queryable,
  after: { readonly recordedAt: Date; readonly id: string } | null,
  limit: number,
): Promise<(PlainDeliveryRow & { message_id: string })[]> {
  const t = after?.recordedAt ?? new Date(0);
  return q.query<(PlainDeliveryRow & { message_id: string })[]>(
    `SELECT d.id, d.email_id, d.recipient, d.event, d.at, d.recorded_at, d.source, d.queue_id, d.dsn_status, d.remote_mta, d.reply,
            d.event_key, m.message_id
     FROM mail_outbox_delivery d JOIN mail_outbox m ON m.id = d.email_id
     WHERE d.recorded_at >= ? AND (d.recorded_at > ? OR d.id > ?)
     ORDER BY d.recorded_at, d.id
     LIMIT ?`,
    [t, t, after?.id ?? "", limit],
  );
}

/** Recipients per current fate. */
export async function fateCounts(q: Queryable): Promise<CountByFate[]> {
  return q.query<CountByFate[]>(`SELECT event AS fate, count(*) AS n FROM (${currentFates("")}) f GROUP BY event`);
}

/** Recipients per current fate, per mail, for these mails. */
export async function fateCountsByMail(q: Queryable, emailIds: readonly string[]): Promise<{ email_id: string; fate: CountByFate["fate"]; n: number }[]> {
  return q.query<{ email_id: string; fate: CountByFate["fate"]; n: number }[]>(
    `SELECT email_id, event AS fate, count(*) AS n
     FROM (${currentFates("AND email_id IN (?)")}) f
     GROUP BY email_id, event`,
    [emailIds],
  );
}

/** The listed addresses (lower-cased) that are suppressed and not expired at `now`. */
export async function findSuppressed(q: Queryable, addresses: readonly string[], now: Date): Promise<string[]> {
  const rows = await q.query<{ address: string }[]>(
    `SELECT address FROM mail_outbox_suppression
     WHERE address IN (?) AND (expires_at IS NULL OR expires_at > ?)`,
    [addresses, now],
  );
  return rows.map((row) => row.address);
}

/** Suppression entries, newest first; one address (lower-cased) or all; expired ones only when asked. */
export async function listSuppressions(q: Queryable, address: string | null, includeExpired: boolean, now: Date, limit: number): Promise<PlainSuppressionRow[]> {
  return q.query<PlainSuppressionRow[]>(
    `SELECT ${SUPPRESSION_COLUMNS} FROM mail_outbox_suppression
     WHERE (? IS NULL OR address = ?)
       AND (? OR expires_at IS NULL OR expires_at > ?)
     ORDER BY created_at DESC, address
     LIMIT ?`,
    [address, address, includeExpired, now, limit],
  );
}

/** `(?, ?, ?, ?, NOW(3), ?), ...`: one row of mail_outbox_suppression per entry. */
const suppressionRows = (entries: readonly SuppressionInput[]) => entries.map(() => "(?, ?, ?, ?, NOW(3), ?)").join(", ");

function suppressionParams(entries: readonly SuppressionInput[]): unknown[] {
  return entries.flatMap((e) => [e.address, e.reason, e.source, e.emailId, e.expiresAt]);
}

/**
 * Insert or replace entries by address (addresses lower-cased, each once); returns how many.
 * REPLACE is exactly that (a listed address's row is replaced whole, created now), in what both
 * MySQL and MariaDB accept; each entry is inserted or replaces one row, so the count is the
 * entries' (affectedRows counts a replaced row twice: its delete and its insert).
 */
export async function upsertSuppressions(q: Queryable, entries: readonly SuppressionInput[]): Promise<number> {
  await q.query(`REPLACE INTO mail_outbox_suppression (${SUPPRESSION_COLUMNS}) VALUES ${suppressionRows(entries)}`, suppressionParams(entries));
  return entries.length;
}

/**
 * Insert entries whose address is not listed yet (a listed one is kept as it is); returns how
 * many. INSERT IGNORE skips the listed addresses (affectedRows counts only the inserted rows).
 */
export async function insertMissingSuppressions(q: Queryable, entries: readonly SuppressionInput[]): Promise<number> {
  const r = await q.query<Written>(
    `INSERT IGNORE INTO mail_outbox_suppression (${SUPPRESSION_COLUMNS})
     VALUES ${suppressionRows(entries)}`,
    suppressionParams(entries),
  );
  return r.affectedRows;
}

export async function deleteSuppressions(q: Queryable, addresses: readonly string[]): Promise<number> {
  const r = await q.query<Written>("DELETE FROM mail_outbox_suppression WHERE address IN (?)", [addresses]);
  return r.affectedRows;
}

export async function deleteExpiredSuppressions(q: Queryable, before: Date): Promise<number> {
  const r = await q.query<Written>("DELETE FROM mail_outbox_suppression WHERE expires_at IS NOT NULL AND expires_at < ?", [before]);
  return r.affectedRows;
}

/**
 * Held uncertain hand-offs held at or after `heldSince`, oldest first, with the queue ids already
 * recorded for them (the attempt log's as a JSON array, and `mta_queue_id`, merged here).
 */
export async function verifyCandidates(q: Queryable, heldSince: Date, limit: number): Promise<VerifyCandidate[]> {
  const rows = await q.query<{ id: string; message_id: string; envelope_to: string; held_at: Date; attempt_queue_ids: string | null; mta_queue_id: string | null }[]>(
    `SELECT m.id, m.message_id, m.envelope_to, m.updated_at AS held_at, m.mta_queue_id,
            (SELECT JSON_ARRAYAGG(a.queue_id) FROM mail_outbox_attempt a WHERE a.email_id = m.id AND a.queue_id IS NOT NULL) AS attempt_queue_ids
     FROM mail_outbox m
     WHERE m.status = 'held' AND m.uncertain_handoffs > 0 AND m.updated_at >= ?
     ORDER BY m.updated_at, m.id
     LIMIT ?`,
    [heldSince, limit],
  );
  return rows.map((r) => {
    const to = parseJson(r.envelope_to);
    const fromAttempts = parseJson(r.attempt_queue_ids);
    const known = [...(Array.isArray(fromAttempts) ? fromAttempts.map(String) : []), ...(r.mta_queue_id === null ? [] : [r.mta_queue_id])];
    return {
      id: r.id,
      messageId: r.message_id,
      envelopeTo: Array.isArray(to) ? to.map(String) : [],
      heldAt: r.held_at,
      knownQueueIds: [...new Set(known)],
    };
  });
}

/** The `queued` events of these mails, oldest first. */
export async function queuedEvidence(q: Queryable, emailIds: readonly string[]): Promise<{ email_id: string; queue_id: string; at: Date }[]> {
  return q.query<{ email_id: string; queue_id: string; at: Date }[]>(
    `SELECT email_id, queue_id, at FROM mail_outbox_delivery
     WHERE event = 'queued' AND queue_id IS NOT NULL AND email_id IN (?)
     ORDER BY at, recorded_at, id`,
    [emailIds],
  );
}

/**
 * The attempt-log line of a `verify` resolution (outcome "verified"), numbered with the row's
 * attempts; written right after the transition, in its transaction.
 */
async function insertVerifiedAttempt(q: Queryable, id: string, actor: string, response: string, queueId: string | null): Promise<void> {
  await q.query(
    `INSERT INTO mail_outbox_attempt (id, email_id, attempt, relay, started_at, duration_ms, outcome, response, queue_id)
     SELECT ?, m.id, m.attempts, ?, NOW(3), 0, 'verified', ?, ? FROM mail_outbox m WHERE m.id = ?`,
    [newId(), actor, response, queueId, id],
  );
}

/**
 * Transition "verified-received": a held row the MTA's record shows it queued becomes sent, with
 * that queue id, every remaining recipient accepted, and an attempt-log line (outcome "verified").
 * Only while the row is still held; returns whether it changed. Run inside a transaction (the
 * store does): the UPDATE locks the row, its matched-row count says whether it was held, and
 * only then is the line written.
 */
export async function verifiedReceived(q: Queryable, id: string, actor: string, r: Extract<VerifyResolution, { kind: "received" }>): Promise<boolean> {
  const res = await q.query<Written>(
    `UPDATE mail_outbox
     SET status = 'sent', mta_queue_id = ?, mta_response = ?, sent_at = ?,
         accepted = JSON_MERGE_PRESERVE(coalesce(accepted, '[]'), envelope_to),
         lease_owner = NULL, lease_expires_at = NULL, updated_at = NOW(3)
     WHERE id = ? AND status = 'held'`,
    [r.queueId, r.response, r.at, id],
  );
  if (res.affectedRows === 0) return false;
  await insertVerifiedAttempt(q, id, actor, r.response, r.queueId);
  return true;
}

/**
 * Transition "verified-absent": the MTA's record, read past the time the row was held, has no
 * sign of it: pending again, due now, with an attempt-log line (outcome "verified"). Only while
 * the row is still held; returns whether it changed. Run inside a transaction (the store does).
 */
export async function verifiedAbsent(q: Queryable, id: string, actor: string, r: Extract<VerifyResolution, { kind: "absent" }>): Promise<boolean> {
  const res = await q.query<Written>(
    `UPDATE mail_outbox
     SET status = 'pending', next_attempt_at = NOW(3), lease_owner = NULL, lease_expires_at = NULL, updated_at = NOW(3)
     WHERE id = ? AND status = 'held'`,
    [id],
  );
  if (res.affectedRows === 0) return false;
  await insertVerifiedAttempt(q, id, actor, r.response, null);
  return true;
}
