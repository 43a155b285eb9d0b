/**
 * The delivery-fate statements for PostgreSQL, one statement per function, side by side with
 * ../sqlite/fate-sql.ts: delivery events (mail_outbox_delivery), the log follower's cursor
 * (mail_outbox_log_cursor), the suppression list (mail_outbox_suppression), and the `verify`
 * policy's look at held uncertain hand-offs. Every value is a bound parameter; batches are arrays
 * expanded with unnest(). `recorded_at` and `updated_at` come from the database's clock (now()).
 */
import type {
  CountByFate,
  DeliveryEventInput,
  LogCursor,
  SuppressionInput,
  VerifyCandidate,
  VerifyResolution,
} from "../../store.js";
import {
  CURSOR_COLUMNS,
  DELIVERY_COLUMNS,
  SUPPRESSION_COLUMNS,
  type PlainCursorRow,
  type PlainDeliveryRow,
  type PlainSuppressionRow,
} from "../rows.js";
import type { Queryable } from "./admin-sql.js";

/**
 * The current fate of each (mail, recipient) among the events `where` selects: the latest terminal
 * event (delivered, bounced, expired) by `at`, else the latest `deferred`. Recipients compare
 * case-insensitively. `queued` events are no fate.
 */
export const currentFates = (where: string) => `
SELECT email_id, recipient, event FROM (
  SELECT email_id, lower(recipient) AS recipient, event,
         row_number() OVER (PARTITION BY email_id, lower(recipient)
                            ORDER BY (event <> 'deferred') DESC, at DESC, recorded_at DESC, id DESC) AS rn
  FROM mail_outbox_delivery
  WHERE event <> 'queued' ${where}
) cur WHERE rn = 1`;

/**
 * Insert events, skipping those whose event_key is stored already (and those of mail that no
 * longer exists: purged meanwhile). Returns the rows inserted now, in input order.
 */
export async function insertDeliveryEvents(q: Queryable, events: readonly DeliveryEventInput[]): Promise<PlainDeliveryRow[]> {
  const r = await q.query<PlainDeliveryRow & { ord: string }>(
    `WITH e AS (
       SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[])
         WITH ORDINALITY AS e(email_id, recipient, event, at, source, queue_id, dsn_status, remote_mta, reply, event_key, ord)
       WHERE EXISTS (SELECT 1 FROM mail_outbox m WHERE m.id = e.email_id)
     ), ins AS (
       INSERT INTO mail_outbox_delivery (${DELIVERY_COLUMNS})
       SELECT gen_random_uuid(), email_id, recipient, event, at, now(), source, queue_id, dsn_status, remote_mta, reply, event_key
       FROM e ORDER BY ord
       ON CONFLICT (event_key) DO NOTHING
       RETURNING ${DELIVERY_COLUMNS}
     )
     SELECT ins.*, (SELECT min(e.ord) FROM e WHERE e.event_key = ins.event_key) AS ord FROM ins ORDER BY ord`,
    [
      events.map((e) => e.emailId),
      events.map((e) => e.recipient),
      events.map((e) => e.event),
      events.map((e) => e.at),
      events.map((e) => e.source),
      events.map((e) => e.queueId),
      events.map((e) => e.dsnStatus),
      events.map((e) => e.remoteMta),
      events.map((e) => e.reply),
      events.map((e) => e.eventKey),
    ],
  );
  return r.rows.map(({ ord: _ord, ...row }) => row);
}

/** Save where a log follower stopped (insert or replace); a null `caughtUpAt` keeps the stored one. */
export async function upsertLogCursor(q: Queryable, c: Omit<LogCursor, "updatedAt">): Promise<void> {
  await q.query(
    `INSERT INTO mail_outbox_log_cursor (${CURSOR_COLUMNS})
     VALUES ($1, $2, $3::bigint, $4::jsonb, $5, now())
     ON CONFLICT (name) DO UPDATE
     SET file_id = excluded.file_id, "offset" = excluded."offset", state = excluded.state,
         caught_up_at = coalesce(excluded.caught_up_at, mail_outbox_log_cursor.caught_up_at), updated_at = now()`,
    [c.name, c.fileId, c.offset, c.state === null ? null : JSON.stringify(c.state), c.caughtUpAt],
  );
}

export async function readLogCursor(q: Queryable, name: string): Promise<PlainCursorRow | undefined> {
  const r = await q.query<PlainCursorRow>(`SELECT ${CURSOR_COLUMNS} FROM mail_outbox_log_cursor WHERE name = $1`, [name]);
  return r.rows[0];
}

/** The latest time any follower read its log to the end. */
export async function logCaughtUpAt(q: Queryable): Promise<Date | null> {
  const r = await q.query<{ t: Date | null }>("SELECT max(caught_up_at) AS t FROM mail_outbox_log_cursor");
  return r.rows[0]?.t ?? null;
}

export async function mailIdsByMessageId(q: Queryable, messageIds: readonly string[]): Promise<{ message_id: string; id: string }[]> {
  const r = await q.query<{ message_id: string; id: string }>("SELECT message_id, id FROM mail_outbox WHERE message_id = ANY($1::text[])", [messageIds]);
  return r.rows;
}

export async function existingMailIds(q: Queryable, ids: readonly string[]): Promise<string[]> {
  const r = await q.query<{ id: string }>("SELECT id FROM mail_outbox WHERE id = ANY($1::uuid[])", [ids]);
  return r.rows.map((row) => row.id);
}

/**
 * The mail of each queue id: the latest `queued` event naming it, else the latest attempt that
 * recorded it (every hand-off that stores `mta_queue_id` writes it into its attempt line too).
 */
export async function mailIdsByQueueId(q: Queryable, queueIds: readonly string[]): Promise<{ queue_id: string; email_id: string }[]> {
  const r = await q.query<{ queue_id: string; email_id: string }>(
    `SELECT DISTINCT ON (k.queue_id) k.queue_id, k.email_id::text AS email_id
     FROM (
       SELECT queue_id, email_id, 0 AS rank, at AS t FROM mail_outbox_delivery WHERE event = 'queued' AND queue_id = ANY($1::text[])
       UNION ALL
       SELECT queue_id, email_id, 1 AS rank, started_at AS t FROM mail_outbox_attempt WHERE queue_id = ANY($1::text[])
     ) k
     ORDER BY k.queue_id, k.rank, k.t DESC`,
    [queueIds],
  );
  return r.rows;
}

/** One mail's events, by `at`, then when they were recorded. */
export async function listDeliveryEvents(q: Queryable, emailId: string): Promise<PlainDeliveryRow[]> {
  const r = await q.query<PlainDeliveryRow>(
    `SELECT ${DELIVERY_COLUMNS} FROM mail_outbox_delivery WHERE email_id = $1 ORDER BY at, recorded_at, id`,
    [emailId],
  );
  return r.rows;
}

/** Events recorded after (recorded_at, id), oldest first, with their mail's Message-ID. */
export async function deliveryEventsAfter(
  q: Queryable,
  after: { readonly recordedAt: Date; readonly id: string } | null,
  limit: number,
): Promise<(PlainDeliveryRow & { message_id: string })[]> {
  const r = await q.query<PlainDeliveryRow & { message_id: string }>(
    `SELECT d.id, d.email_id, d.recipient, d.event, d.at, d.recorded_at, d.source, d.queue_id, d.dsn_status, d.remote_mta, d.reply,
            d.event_key, m.message_id
     FROM mail_outbox_delivery d JOIN mail_outbox m ON m.id = d.email_id
     WHERE $1::timestamptz IS NULL OR (d.recorded_at, d.id) > ($1::timestamptz, $2::uuid)
     ORDER BY d.recorded_at, d.id
     LIMIT $3`,
    [after?.recordedAt ?? null, after?.id ?? null, limit],
  );
  return r.rows;
}

/** Recipients per current fate. */
export async function fateCounts(q: Queryable): Promise<CountByFate[]> {
  const r = await q.query<CountByFate>(`SELECT event AS fate, count(*)::int AS n FROM (${currentFates("")}) f GROUP BY event`);
  return r.rows;
}

/** Recipients per current fate, per mail, for these mails. */
export async function fateCountsByMail(q: Queryable, emailIds: readonly string[]): Promise<{ email_id: string; fate: CountByFate["fate"]; n: number }[]> {
  const r = await q.query<{ email_id: string; fate: CountByFate["fate"]; n: number }>(
    `SELECT email_id::text AS email_id, event AS fate, count(*)::int AS n
     FROM (${currentFates("AND email_id = ANY($1::uuid[])")}) f
     GROUP BY email_id, event`,
    [emailIds],
  );
  return r.rows;
}

/** The listed addresses (lower-cased) that are suppressed and not expired at `now`. */
export async function findSuppressed(q: Queryable, addresses: readonly string[], now: Date): Promise<string[]> {
  const r = await q.query<{ address: string }>(
    `SELECT address FROM mail_outbox_suppression
     WHERE address = ANY($1::text[]) AND (expires_at IS NULL OR expires_at > $2)`,
    [addresses, now],
  );
  return r.rows.map((row) => row.address);
}

/** Suppression entries, newest first; one address (lower-cased) or all; expired ones only when asked. */
export async function listSuppressions(q: Queryable, address: string | null, includeExpired: boolean, now: Date, limit: number): Promise<PlainSuppressionRow[]> {
  const r = await q.query<PlainSuppressionRow>(
    `SELECT ${SUPPRESSION_COLUMNS} FROM mail_outbox_suppression
     WHERE ($1::text IS NULL OR address = $1::text)
       AND ($2::boolean OR expires_at IS NULL OR expires_at > $3)
     ORDER BY created_at DESC, address
     LIMIT $4`,
    [address, includeExpired, now, limit],
  );
  return r.rows;
}

const SUPPRESSION_VALUES = `SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::uuid[], $5::timestamptz[])
  AS s(address, reason, source, email_id, expires_at)`;

function suppressionParams(entries: readonly SuppressionInput[]): unknown[] {
  return [
    entries.map((e) => e.address),
    entries.map((e) => e.reason),
    entries.map((e) => e.source),
    entries.map((e) => e.emailId),
    entries.map((e) => e.expiresAt),
  ];
}

/** Insert or replace entries by address (addresses lower-cased, each once); returns how many. */
export async function upsertSuppressions(q: Queryable, entries: readonly SuppressionInput[]): Promise<number> {
  const r = await q.query(
    `INSERT INTO mail_outbox_suppression (${SUPPRESSION_COLUMNS})
     SELECT address, reason, source, email_id, now(), expires_at FROM (${SUPPRESSION_VALUES}) v
     ON CONFLICT (address) DO UPDATE
     SET reason = excluded.reason, source = excluded.source, email_id = excluded.email_id,
         created_at = excluded.created_at, expires_at = excluded.expires_at`,
    suppressionParams(entries),
  );
  return r.rowCount ?? 0;
}

/** Insert entries whose address is not listed yet (a listed one is kept as it is); returns how many. */
export async function insertMissingSuppressions(q: Queryable, entries: readonly SuppressionInput[]): Promise<number> {
  const r = await q.query(
    `INSERT INTO mail_outbox_suppression (${SUPPRESSION_COLUMNS})
     SELECT address, reason, source, email_id, now(), expires_at FROM (${SUPPRESSION_VALUES}) v
     ON CONFLICT (address) DO NOTHING`,
    suppressionParams(entries),
  );
  return r.rowCount ?? 0;
}

export async function deleteSuppressions(q: Queryable, addresses: readonly string[]): Promise<number> {
  const r = await q.query("DELETE FROM mail_outbox_suppression WHERE address = ANY($1::text[])", [addresses]);
  return r.rowCount ?? 0;
}

export async function deleteExpiredSuppressions(q: Queryable, before: Date): Promise<number> {
  const r = await q.query("DELETE FROM mail_outbox_suppression WHERE expires_at IS NOT NULL AND expires_at < $1", [before]);
  return r.rowCount ?? 0;
}

/** Held uncertain hand-offs held at or after `heldSince`, oldest first, with the queue ids already recorded for them. */
export async function verifyCandidates(q: Queryable, heldSince: Date, limit: number): Promise<VerifyCandidate[]> {
  const r = await q.query<VerifyCandidate>(
    `SELECT m.id, m.message_id AS "messageId",
            CASE WHEN jsonb_typeof(m.envelope_to) = 'array' THEN ARRAY(SELECT jsonb_array_elements_text(m.envelope_to)) ELSE ARRAY[]::text[] END AS "envelopeTo",
            m.updated_at AS "heldAt",
            ARRAY(SELECT a.queue_id FROM mail_outbox_attempt a WHERE a.email_id = m.id AND a.queue_id IS NOT NULL
                  UNION SELECT m.mta_queue_id WHERE m.mta_queue_id IS NOT NULL) AS "knownQueueIds"
     FROM mail_outbox m
     WHERE m.status = 'held' AND m.uncertain_handoffs > 0 AND m.updated_at >= $1
     ORDER BY m.updated_at, m.id
     LIMIT $2`,
    [heldSince, limit],
  );
  return r.rows;
}

/** The `queued` events of these mails, oldest first. */
export async function queuedEvidence(q: Queryable, emailIds: readonly string[]): Promise<{ email_id: string; queue_id: string; at: Date }[]> {
  const r = await q.query<{ email_id: string; queue_id: string; at: Date }>(
    `SELECT email_id::text AS email_id, queue_id, at FROM mail_outbox_delivery
     WHERE event = 'queued' AND queue_id IS NOT NULL AND email_id = ANY($1::uuid[])
     ORDER BY at, recorded_at, id`,
    [emailIds],
  );
  return r.rows;
}

/**
 * Transition "verified-received": a held row the MTA's record shows it queued becomes sent, with
 * that queue id, every remaining recipient accepted, and an attempt-log line (outcome "verified").
 * Only while the row is still held; returns whether it changed.
 */
export async function verifiedReceived(q: Queryable, id: string, actor: string, r: Extract<VerifyResolution, { kind: "received" }>): Promise<boolean> {
  const res = await q.query<{ changed: number }>(
    `WITH upd AS (
       UPDATE mail_outbox m
       SET status = 'sent', mta_queue_id = $2, mta_response = $4, sent_at = $3,
           accepted = coalesce(m.accepted, '[]'::jsonb) || m.envelope_to,
           lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
       WHERE m.id = $1 AND m.status = 'held'
       RETURNING m.id, m.attempts
     ), ins AS (
       INSERT INTO mail_outbox_attempt (id, email_id, attempt, relay, started_at, duration_ms, outcome, response, queue_id)
       SELECT gen_random_uuid(), upd.id, upd.attempts, $5, now(), 0, 'verified', $4, $2 FROM upd
     )
     SELECT count(*)::int AS changed FROM upd`,
    [id, r.queueId, r.at, r.response, actor],
  );
  return (res.rows[0]?.changed ?? 0) > 0;
}

/**
 * Transition "verified-absent": the MTA's record, read past the time the row was held, has no
 * sign of it: pending again, due now, with an attempt-log line (outcome "verified"). Only while
 * the row is still held; returns whether it changed.
 */
export async function verifiedAbsent(q: Queryable, id: string, actor: string, r: Extract<VerifyResolution, { kind: "absent" }>): Promise<boolean> {
  const res = await q.query<{ changed: number }>(
    `WITH upd AS (
       UPDATE mail_outbox m
       SET status = 'pending', next_attempt_at = now(), lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
       WHERE m.id = $1 AND m.status = 'held'
       RETURNING m.id, m.attempts
     ), ins AS (
       INSERT INTO mail_outbox_attempt (id, email_id, attempt, relay, started_at, duration_ms, outcome, response)
       SELECT gen_random_uuid(), upd.id, upd.attempts, $3, now(), 0, 'verified', $2 FROM upd
     )
     SELECT count(*)::int AS changed FROM upd`,
    [id, r.response, actor],
  );
  return (res.rows[0]?.changed ?? 0) > 0;
}
