/**
 * The delivery-fate statements for SQLite, one statement per function, side by side with
 * ../postgres/fate-sql.ts: delivery events (mail_outbox_delivery), the log follower's cursor
 * (mail_outbox_log_cursor), the suppression list (mail_outbox_suppression), and the `verify`
 * policy's look at held uncertain hand-offs. Lists are bound as JSON text and opened with
 * `json_each`; times are ISO text (`toSqliteTime`), from the process's clock.
 */
import type Database from "better-sqlite3";
import type { CountByFate, DeliveryEventInput, LogCursor, SuppressionInput, VerifyResolution } from "../../store.js";
import {
  CURSOR_COLUMNS,
  DELIVERY_COLUMNS,
  SUPPRESSION_COLUMNS,
  parseJson,
  type PlainCursorRow,
  type PlainDeliveryRow,
  type PlainSuppressionRow,
} from "../rows.js";
import { fromSqliteTime, toSqliteTime } from "./time.js";

type Db = Database.Database;

const date = (v: unknown): Date => fromSqliteTime(v) ?? new Date(Number.NaN);

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

type StoredDeliveryRow = Omit<PlainDeliveryRow, "at" | "recorded_at"> & { at: string | number; recorded_at: string | number };

export function plainDeliveryRow<R extends StoredDeliveryRow>(r: R): Omit<R, "at" | "recorded_at"> & PlainDeliveryRow {
  return { ...r, at: date(r.at), recorded_at: date(r.recorded_at) };
}

/** Insert one event unless its event_key is stored already or its mail is gone; returns the row when inserted. */
export function insertDeliveryEvent(db: Db, id: string, e: DeliveryEventInput, recordedAt: Date): PlainDeliveryRow | undefined {
  const row = db
    .prepare(
      `INSERT INTO mail_outbox_delivery (${DELIVERY_COLUMNS})
       SELECT @id, @emailId, @recipient, @event, @at, @recordedAt, @source, @queueId, @dsnStatus, @remoteMta, @reply, @eventKey
       WHERE EXISTS (SELECT 1 FROM mail_outbox WHERE id = @emailId)
       ON CONFLICT (event_key) DO NOTHING
       RETURNING ${DELIVERY_COLUMNS}`,
    )
    .get({
      id,
      emailId: e.emailId,
      recipient: e.recipient,
      event: e.event,
      at: toSqliteTime(e.at),
      recordedAt: toSqliteTime(recordedAt),
      source: e.source,
      queueId: e.queueId,
      dsnStatus: e.dsnStatus,
      remoteMta: e.remoteMta,
      reply: e.reply,
      eventKey: e.eventKey,
    }) as StoredDeliveryRow | undefined;
  return row === undefined ? undefined : plainDeliveryRow(row);
}

/** Save where a log follower stopped (insert or replace); a null `caughtUpAt` keeps the stored one. */
export function upsertLogCursor(db: Db, c: Omit<LogCursor, "updatedAt">, now: Date): void {
  db.prepare(
    `INSERT INTO mail_outbox_log_cursor (${CURSOR_COLUMNS})
     VALUES (@name, @fileId, @offset, @state, @caughtUpAt, @now)
     ON CONFLICT (name) DO UPDATE
     SET file_id = excluded.file_id, "offset" = excluded."offset", state = excluded.state,
         caught_up_at = coalesce(excluded.caught_up_at, mail_outbox_log_cursor.caught_up_at), updated_at = excluded.updated_at`,
  ).run({
    name: c.name,
    fileId: c.fileId,
    offset: c.offset,
    state: c.state === null ? null : JSON.stringify(c.state),
    caughtUpAt: c.caughtUpAt === null ? null : toSqliteTime(c.caughtUpAt),
    now: toSqliteTime(now),
  });
}

export function readLogCursor(db: Db, name: string): PlainCursorRow | undefined {
  const r = db.prepare(`SELECT ${CURSOR_COLUMNS} FROM mail_outbox_log_cursor WHERE name = @name`).get({ name }) as
    | (Omit<PlainCursorRow, "caught_up_at" | "updated_at"> & { caught_up_at: unknown; updated_at: unknown })
    | undefined;
  return r === undefined ? undefined : { ...r, state: parseJson(r.state), caught_up_at: fromSqliteTime(r.caught_up_at), updated_at: date(r.updated_at) };
}

/** The latest time any follower read its log to the end. */
export function logCaughtUpAt(db: Db): Date | null {
  const r = db.prepare("SELECT max(caught_up_at) AS t FROM mail_outbox_log_cursor").get() as { t: unknown } | undefined;
  return fromSqliteTime(r?.t);
}

export function mailIdsByMessageId(db: Db, messageIds: readonly string[]): { message_id: string; id: string }[] {
  return db
    .prepare("SELECT message_id, id FROM mail_outbox WHERE message_id IN (SELECT value FROM json_each(@messageIds))")
    .all({ messageIds: JSON.stringify(messageIds) }) as { message_id: string; id: string }[];
}

export function existingMailIds(db: Db, ids: readonly string[]): string[] {
  const rows = db.prepare("SELECT id FROM mail_outbox WHERE id IN (SELECT value FROM json_each(@ids))").all({ ids: JSON.stringify(ids) }) as { id: string }[];
  return rows.map((r) => r.id);
}

/**
 * The mail of each queue id: the latest `queued` event naming it, else the latest attempt that
 * recorded it (every hand-off that stores `mta_queue_id` writes it into its attempt line too).
 */
export function mailIdsByQueueId(db: Db, queueIds: readonly string[]): { queue_id: string; email_id: string }[] {
  return db
    .prepare(
      `SELECT queue_id, email_id FROM (
         SELECT queue_id, email_id, row_number() OVER (PARTITION BY queue_id ORDER BY rank, t DESC) AS rn
         FROM (
           SELECT queue_id, email_id, 0 AS rank, at AS t FROM mail_outbox_delivery
           WHERE event = 'queued' AND queue_id IN (SELECT value FROM json_each(@queueIds))
           UNION ALL
           SELECT queue_id, email_id, 1 AS rank, started_at AS t FROM mail_outbox_attempt
           WHERE queue_id IN (SELECT value FROM json_each(@queueIds))
         )
       ) WHERE rn = 1`,
    )
    .all({ queueIds: JSON.stringify(queueIds) }) as { queue_id: string; email_id: string }[];
}

/** One mail's events, by `at`, then when they were recorded. */
export function listDeliveryEvents(db: Db, emailId: string): PlainDeliveryRow[] {
  const rows = db
    .prepare(`SELECT ${DELIVERY_COLUMNS} FROM mail_outbox_delivery WHERE email_id = @emailId ORDER BY at, recorded_at, id`)
    .all({ emailId }) as StoredDeliveryRow[];
  return rows.map(plainDeliveryRow);
}

/** Events recorded after (recorded_at, id), oldest first, with their mail's Message-ID. */
export function deliveryEventsAfter(
  db: Db,
  after: { readonly recordedAt: Date; readonly id: string } | null,
  limit: number,
): (PlainDeliveryRow & { message_id: string })[] {
  const rows = db
    .prepare(
      `SELECT d.id, d.email_id, d.recipient, d.event, d.at, d.recorded_at, d.source, d.queue_id, d.dsn_status, d.remote_mta, d.reply,
              d.event_key, m.message_id
       FROM mail_outbox_delivery d JOIN mail_outbox m ON m.id = d.email_id
       WHERE @recordedAt IS NULL OR d.recorded_at > @recordedAt OR (d.recorded_at = @recordedAt AND d.id > @id)
       ORDER BY d.recorded_at, d.id
       LIMIT @limit`,
    )
    .all({ recordedAt: after === null ? null : toSqliteTime(after.recordedAt), id: after?.id ?? null, limit }) as (StoredDeliveryRow & { message_id: string })[];
  return rows.map(plainDeliveryRow);
}

/** Recipients per current fate. */
export function fateCounts(db: Db): CountByFate[] {
  return db.prepare(`SELECT event AS fate, count(*) AS n FROM (${currentFates("")}) GROUP BY event`).all() as CountByFate[];
}

/** Recipients per current fate, per mail, for these mails. */
export function fateCountsByMail(db: Db, emailIds: readonly string[]): { email_id: string; fate: CountByFate["fate"]; n: number }[] {
  return db
    .prepare(
      `SELECT email_id, event AS fate, count(*) AS n
       FROM (${currentFates("AND email_id IN (SELECT value FROM json_each(@ids))")})
       GROUP BY email_id, event`,
    )
    .all({ ids: JSON.stringify(emailIds) }) as { email_id: string; fate: CountByFate["fate"]; n: number }[];
}

/** The listed addresses (lower-cased) that are suppressed and not expired at `now`. */
export function findSuppressed(db: Db, addresses: readonly string[], now: Date): string[] {
  const rows = db
    .prepare(
      `SELECT address FROM mail_outbox_suppression
       WHERE address IN (SELECT value FROM json_each(@addresses)) AND (expires_at IS NULL OR expires_at > @now)`,
    )
    .all({ addresses: JSON.stringify(addresses), now: toSqliteTime(now) }) as { address: string }[];
  return rows.map((r) => r.address);
}

/** Suppression entries, newest first; one address (lower-cased) or all; expired ones only when asked. */
export function listSuppressions(db: Db, address: string | null, includeExpired: boolean, now: Date, limit: number): PlainSuppressionRow[] {
  const rows = db
    .prepare(
      `SELECT ${SUPPRESSION_COLUMNS} FROM mail_outbox_suppression
       WHERE (@address IS NULL OR address = @address)
         AND (@includeExpired = 1 OR expires_at IS NULL OR expires_at > @now)
       ORDER BY created_at DESC, address
       LIMIT @limit`,
    )
    .all({ address, includeExpired: includeExpired ? 1 : 0, now: toSqliteTime(now), limit }) as (Omit<PlainSuppressionRow, "created_at" | "expires_at"> & {
    created_at: unknown;
    expires_at: unknown;
  })[];
  return rows.map((r) => ({ ...r, created_at: date(r.created_at), expires_at: fromSqliteTime(r.expires_at) }));
}

const SUPPRESSION_VALUES = `SELECT json_extract(s.value, '$.address') AS address, json_extract(s.value, '$.reason') AS reason,
    json_extract(s.value, '$.source') AS source, json_extract(s.value, '$.emailId') AS email_id,
    json_extract(s.value, '$.expiresAt') AS expires_at
  FROM json_each(@entries) AS s`;

function suppressionParams(entries: readonly SuppressionInput[], now: Date): Record<string, unknown> {
  const list = entries.map((e) => ({ ...e, expiresAt: e.expiresAt === null ? null : toSqliteTime(e.expiresAt) }));
  return { entries: JSON.stringify(list), now: toSqliteTime(now) };
}

/** Insert or replace entries by address (addresses lower-cased, each once); returns how many. */
export function upsertSuppressions(db: Db, entries: readonly SuppressionInput[], now: Date): number {
  return db
    .prepare(
      // "WHERE true": SQLite's parser needs it between INSERT ... SELECT and ON CONFLICT.
      `INSERT INTO mail_outbox_suppression (${SUPPRESSION_COLUMNS})
       SELECT address, reason, source, email_id, @now, expires_at FROM (${SUPPRESSION_VALUES}) WHERE true
       ON CONFLICT (address) DO UPDATE
       SET reason = excluded.reason, source = excluded.source, email_id = excluded.email_id,
           created_at = excluded.created_at, expires_at = excluded.expires_at`,
    )
    .run(suppressionParams(entries, now)).changes;
}

/** Insert entries whose address is not listed yet (a listed one is kept as it is); returns how many. */
export function insertMissingSuppressions(db: Db, entries: readonly SuppressionInput[], now: Date): number {
  return db
    .prepare(
      `INSERT INTO mail_outbox_suppression (${SUPPRESSION_COLUMNS})
       SELECT address, reason, source, email_id, @now, expires_at FROM (${SUPPRESSION_VALUES}) WHERE true
       ON CONFLICT (address) DO NOTHING`,
    )
    .run(suppressionParams(entries, now)).changes;
}

export function deleteSuppressions(db: Db, addresses: readonly string[]): number {
  return db.prepare("DELETE FROM mail_outbox_suppression WHERE address IN (SELECT value FROM json_each(@addresses))").run({ addresses: JSON.stringify(addresses) }).changes;
}

export function deleteExpiredSuppressions(db: Db, before: Date): number {
  return db.prepare("DELETE FROM mail_outbox_suppression WHERE expires_at IS NOT NULL AND expires_at < @before").run({ before: toSqliteTime(before) }).changes;
}

/** Held uncertain hand-offs held at or after `heldSince`, oldest first, with the queue ids already recorded for them. */
export function verifyCandidates(
  db: Db,
  heldSince: Date,
  limit: number,
): { id: string; message_id: string; envelope_to: string; held_at: unknown; known_queue_ids: string }[] {
  return db
    .prepare(
      `SELECT m.id, m.message_id, m.envelope_to, m.updated_at AS held_at,
              (SELECT json_group_array(q) FROM (
                 SELECT a.queue_id AS q FROM mail_outbox_attempt a WHERE a.email_id = m.id AND a.queue_id IS NOT NULL
                 UNION SELECT m.mta_queue_id WHERE m.mta_queue_id IS NOT NULL)) AS known_queue_ids
       FROM mail_outbox m
       WHERE m.status = 'held' AND m.uncertain_handoffs > 0 AND m.updated_at >= @heldSince
       ORDER BY m.updated_at, m.id
       LIMIT @limit`,
    )
    .all({ heldSince: toSqliteTime(heldSince), limit }) as { id: string; message_id: string; envelope_to: string; held_at: unknown; known_queue_ids: string }[];
}

/** The `queued` events of these mails, oldest first. */
export function queuedEvidence(db: Db, emailIds: readonly string[]): { email_id: string; queue_id: string; at: Date }[] {
  const rows = db
    .prepare(
      `SELECT email_id, queue_id, at FROM mail_outbox_delivery
       WHERE event = 'queued' AND queue_id IS NOT NULL AND email_id IN (SELECT value FROM json_each(@ids))
       ORDER BY at, recorded_at, id`,
    )
    .all({ ids: JSON.stringify(emailIds) }) as { email_id: string; queue_id: string; at: unknown }[];
  return rows.map((r) => ({ ...r, at: date(r.at) }));
}

/** Append the JSON array `list` to a JSON array column (NULL counts as empty). */
const append = (column: string, list: string) =>
  `(SELECT json_group_array(CASE WHEN type IN ('object', 'array') THEN json(value) ELSE value END) FROM (` +
  `SELECT value, type FROM json_each(coalesce(${column}, '[]')) UNION ALL SELECT value, type FROM json_each(${list})))`;

/**
 * Transition "verified-received": a held row the MTA's record shows it queued becomes sent, with
 * that queue id and every remaining recipient accepted. Only while it is still held; returns its
 * attempts when it changed (for the attempt-log line).
 */
export function verifiedReceived(db: Db, id: string, r: Extract<VerifyResolution, { kind: "received" }>, now: Date): { attempts: number } | undefined {
  return db
    .prepare(
      `UPDATE mail_outbox
       SET status = 'sent', mta_queue_id = @queueId, mta_response = @response, sent_at = @at,
           accepted = ${append("accepted", "envelope_to")},
           lease_owner = NULL, lease_expires_at = NULL, updated_at = @now
       WHERE id = @id AND status = 'held'
       RETURNING attempts`,
    )
    .get({ id, queueId: r.queueId, response: r.response, at: toSqliteTime(r.at), now: toSqliteTime(now) }) as { attempts: number } | undefined;
}

/**
 * Transition "verified-absent": the MTA's record, read past the time the row was held, has no
 * sign of it: pending again, due now. Only while it is still held; returns its attempts when it changed.
 */
export function verifiedAbsent(db: Db, id: string, now: Date): { attempts: number } | undefined {
  return db
    .prepare(
      `UPDATE mail_outbox
       SET status = 'pending', next_attempt_at = @now, lease_owner = NULL, lease_expires_at = NULL, updated_at = @now
       WHERE id = @id AND status = 'held'
       RETURNING attempts`,
    )
    .get({ id, now: toSqliteTime(now) }) as { attempts: number } | undefined;
}

/** The attempt-log line of a `verify` resolution (outcome "verified"). */
export function insertVerifiedAttempt(db: Db, line: { id: string; emailId: string; attempt: number; actor: string; response: string; queueId: string | null }, now: Date): void {
  db.prepare(
    `INSERT INTO mail_outbox_attempt (id, email_id, attempt, relay, started_at, duration_ms, outcome, response, queue_id)
     VALUES (@id, @emailId, @attempt, @actor, @now, 0, 'verified', @response, @queueId)`,
  ).run({ ...line, now: toSqliteTime(now) });
}
