/**
 * The relay's hot path on MySQL/MariaDB: claim, complete, renew, rescue, with the semantics of
 * ../postgres/relay-sql.ts (side by side with it and ../sqlite/relay-sql.ts).
 *
 * MySQL 8 has no RETURNING and MariaDB none on UPDATE, so what PostgreSQL does in one statement
 * runs here as a short transaction on one connection (./conn.ts `inTransaction`): lock and read
 * the rows (SELECT ... FOR UPDATE, SKIP LOCKED where other relays compete), change them by primary
 * key, insert the attempt rows. Sessions run in READ COMMITTED (./conn.ts), as PostgreSQL does, so
 * a claim locks the rows it takes and no gaps between them. Time comes from the database clock
 * (NOW(3), UTC in every session), so relays on hosts with skewed clocks agree.
 *
 * In an UPDATE, MySQL evaluates the SET assignments left to right and a later one sees the new
 * value of an earlier one (MariaDB too, unless SIMULTANEOUS_ASSIGNMENT): no assignment here reads
 * a column that an earlier one sets. Counts of changed rows are the rows the WHERE matched (the
 * pool asks for CLIENT_FOUND_ROWS), as PostgreSQL counts them.
 */
import type mariadb from "mariadb";
import { newId } from "../../ids.js";
import type { LeaseExpiryPolicy, Outcome, RelayStore, RescuedMail } from "../../store.js";
import { LEASE_EXPIRED_MESSAGE, attemptColumns, senderDomains, toClaimedMails, type ClaimRow } from "../rows.js";
import { inTransaction } from "./conn.js";

/** The hot-path methods of the MySQL store. */
export type RelayStatements = Pick<RelayStore, "claim" | "complete" | "renew" | "rescue">;

/**
 * The sender-domain exclusion of a claim (a `?` bound to the list of lower-case domains): the
 * envelope sender has an "@" and what follows the last one is among them. The column's _ci
 * collation compares case-insensitively, as PostgreSQL's lower() does.
 */
const NOT_PAUSED_SENDER = `
  AND NOT (LOCATE('@', envelope_from) > 0 AND SUBSTRING_INDEX(envelope_from, '@', -1) IN (?))`;

/**
 * The claim's first step: the due rows, locked, with everything the relay needs (ClaimRow), in
 * the order of mail_outbox_claim_idx (status, priority DESC, next_attempt_at; InnoDB appends the
 * id), which the scan follows so that LIMIT stops it: SKIP LOCKED passes over the rows other
 * relays are claiming instead of waiting for them. FORCE INDEX: on a small or skewed table the
 * optimizer may prefer a scan and a sort, which would lock every due row, not `limit` of them.
 */
const claimSelect = (exclude: string) => `
SELECT id, message_id, envelope_from, envelope_to, raw, priority, attempts, max_attempts, uncertain_handoffs, trace_context
FROM mail_outbox FORCE INDEX (mail_outbox_claim_idx)
WHERE status = 'pending' AND next_attempt_at <= NOW(3)${exclude}
ORDER BY priority DESC, next_attempt_at, id
LIMIT ?
FOR UPDATE SKIP LOCKED`;

export const CLAIM_SELECT = claimSelect("");

/** CLAIM_SELECT leaving out the mail of paused sender domains (the first `?`). */
export const CLAIM_SELECT_EXCLUDING = claimSelect(NOT_PAUSED_SENDER);

/** The claim's second step: the locked rows (ids, the last `?`) become this relay's, leased for `?` microseconds. */
export const CLAIM_UPDATE = `
UPDATE mail_outbox
SET status = 'sending',
    lease_owner = ?,
    lease_expires_at = NOW(3) + INTERVAL ? MICROSECOND,
    attempts = attempts + 1,
    updated_at = NOW(3)
WHERE id IN (?)`;

/**
 * Whether anything is due, without locking: what a claim asks first after one that found nothing,
 * so an idle relay's poll is one indexed read instead of a transaction.
 */
export const ANY_DUE = `
SELECT 1 AS due FROM mail_outbox FORCE INDEX (mail_outbox_claim_idx)
WHERE status = 'pending' AND next_attempt_at <= NOW(3)
LIMIT 1`;

export const ANY_DUE_EXCLUDING = `
SELECT 1 AS due FROM mail_outbox FORCE INDEX (mail_outbox_claim_idx)
WHERE status = 'pending' AND next_attempt_at <= NOW(3)${NOT_PAUSED_SENDER}
LIMIT 1`;

/** Append the JSON array `:list` to a JSON array column (NULL counts as empty). */
const append = (column: string, list: string) => `JSON_MERGE_PRESERVE(COALESCE(${column}, '[]'), ${list})`;

/** `rejected` with the refused recipients of this hand-off appended, when there are any (`:rejected` not null). */
const APPEND_REJECTED = `CASE WHEN :rejected IS NULL THEN rejected ELSE ${append("rejected", ":rejected")} END`;

/**
 * Record a hand-off the MTA accepted, even if the lease was lost meanwhile (the MTA has the mail:
 * marking it sent prevents another resend); the other outcomes below only apply while this relay
 * still holds the lease. Each runs as one batch per kind (`batch`: one round trip on MariaDB).
 */
export const COMPLETE_ACCEPTED = `
UPDATE mail_outbox
SET status = 'sent', sent_at = NOW(3), mta_response = :response, mta_queue_id = :queueId,
    accepted = ${append("accepted", ":accepted")},
    rejected = ${APPEND_REJECTED},
    lease_owner = NULL, lease_expires_at = NULL, updated_at = NOW(3)
WHERE id = :id AND status IN ('sending', 'pending', 'held')`;

export const COMPLETE_PARTIAL = `
UPDATE mail_outbox
SET status = 'pending', next_attempt_at = NOW(3) + INTERVAL :delayUs MICROSECOND, last_error = :error,
    mta_response = :response, mta_queue_id = :queueId,
    accepted = ${append("accepted", ":accepted")},
    rejected = ${APPEND_REJECTED},
    envelope_to = :remaining,
    lease_owner = NULL, lease_expires_at = NULL, updated_at = NOW(3)
WHERE id = :id AND status = 'sending' AND lease_owner = :owner`;

export const COMPLETE_RETRY = `
UPDATE mail_outbox
SET status = 'pending', next_attempt_at = NOW(3) + INTERVAL :delayUs MICROSECOND, last_error = :error,
    mta_response = COALESCE(:response, mta_response),
    lease_owner = NULL, lease_expires_at = NULL, updated_at = NOW(3)
WHERE id = :id AND status = 'sending' AND lease_owner = :owner`;

export const COMPLETE_DEAD = `
UPDATE mail_outbox
SET status = 'dead', last_error = :error, mta_response = COALESCE(:response, mta_response),
    rejected = ${APPEND_REJECTED},
    lease_owner = NULL, lease_expires_at = NULL, updated_at = NOW(3)
WHERE id = :id AND status = 'sending' AND lease_owner = :owner`;

/** Claimed but never handed over (graceful stop): back to pending, the claim's attempt not counted. */
export const RELEASE = `
UPDATE mail_outbox
SET status = 'pending', attempts = GREATEST(attempts - 1, 0),
    lease_owner = NULL, lease_expires_at = NULL, updated_at = NOW(3)
WHERE id = :id AND status = 'sending' AND lease_owner = :owner`;

export const INSERT_ATTEMPT = `
INSERT INTO mail_outbox_attempt
  (id, email_id, attempt, relay, started_at, duration_ms, outcome, response, response_code, error_code, error, queue_id)
VALUES (:attemptId, :id, :attempt, :relay, :startedAt, :durationMs, :outcome, :response, :responseCode, :errorCode, :error, :queueId)`;

/** The rows of a renewal (ids, the first `?`) that `owner` still holds, locked until their lease is extended. */
export const HELD = `
SELECT id FROM mail_outbox
WHERE id IN (?) AND status = 'sending' AND lease_owner = ?
FOR UPDATE`;

/** Extend the lease of the rows HELD found, by `?` microseconds from now. */
export const RENEW = `
UPDATE mail_outbox SET lease_expires_at = NOW(3) + INTERVAL ? MICROSECOND
WHERE id IN (?)`;

/**
 * Rows whose relay died: the lease ran out while they were being handed over (never those of
 * `self`, the first `?`, that it still holds: the last list), oldest lease first, locked; SKIP LOCKED passes over rows another
 * relay is rescuing or completing.
 */
export const FIND_EXPIRED = `
SELECT id, message_id, lease_owner, attempts, max_attempts FROM mail_outbox FORCE INDEX (mail_outbox_lease_idx)
WHERE status = 'sending' AND lease_expires_at < NOW(3) AND (NOT (lease_owner <=> ?) OR (? AND id NOT IN (?)))
ORDER BY lease_expires_at
LIMIT ?
FOR UPDATE SKIP LOCKED`;

/** Whether any lease has run out, without locking: a rescue with nothing to do is this one read. */
export const ANY_EXPIRED = `
SELECT 1 AS expired FROM mail_outbox FORCE INDEX (mail_outbox_lease_idx)
WHERE status = 'sending' AND lease_expires_at < NOW(3) AND (NOT (lease_owner <=> ?) OR (? AND id NOT IN (?)))
LIMIT 1`;

/**
 * The expired rows FIND_EXPIRED locked (ids, the last `?`) go back to pending (policy "resend")
 * or to held (the first `?`), or to dead when their attempts are used up, and are marked as an
 * uncertain hand-off.
 */
export const RESCUE = `
UPDATE mail_outbox
SET status = CASE WHEN attempts >= max_attempts THEN 'dead' ELSE ? END,
    uncertain_handoffs = uncertain_handoffs + 1,
    last_error = ?,
    lease_owner = NULL,
    lease_expires_at = NULL,
    next_attempt_at = NOW(3),
    updated_at = NOW(3)
WHERE id IN (?)`;

/** The attempt-log line of a rescued row: the hand-off that never reported back. */
export const INSERT_LEASE_EXPIRED = `
INSERT INTO mail_outbox_attempt (id, email_id, attempt, relay, started_at, duration_ms, outcome, error_code, error)
VALUES (?, ?, ?, ?, NOW(3), 0, 'lease_expired', 'ELEASE', ?)`;

type Named = Record<string, unknown>;
/** A statement whose parameters are `:name`s, bound from objects. */
const named = (sql: string) => ({ sql, namedPlaceholders: true });

/** JSON text of a list of refused recipients, or null when there are none (the column is left as it is). */
function rejectedJson(o: Exclude<Outcome, { kind: "release" }>): string | null {
  const rej = o.kind === "accepted" || o.kind === "permanent" || o.kind === "partial" ? o.rejected : null;
  return rej && rej.length > 0 ? JSON.stringify(rej) : null;
}

/** Sum of rows matched by a batch (the driver aggregates a batch's results into one, or returns one per row). */
function affected(result: unknown): number {
  const list = Array.isArray(result) ? result : [result];
  return list.reduce((n: number, r) => n + Number((r as { affectedRows?: unknown }).affectedRows ?? 0), 0);
}

export function mysqlRelayStatements(pool: mariadb.Pool): RelayStatements {
  /** The last claim found nothing: the next one asks ANY_DUE first (one read instead of a transaction). */
  let idle = true;

  return {
    async claim(owner, limit, leaseMs, options) {
      const exclude = senderDomains(options?.excludeSenderDomains);
      if (idle) {
        const due = (await pool.query(exclude.length === 0 ? ANY_DUE : ANY_DUE_EXCLUDING, exclude.length === 0 ? [] : [exclude])) as unknown[];
        if (due.length === 0) return [];
      }
      const rows = await inTransaction(pool, async (conn) => {
        const locked = (await conn.query(exclude.length === 0 ? CLAIM_SELECT : CLAIM_SELECT_EXCLUDING, exclude.length === 0 ? [limit] : [exclude, limit])) as ClaimRow[];
        if (locked.length > 0) await conn.query(CLAIM_UPDATE, [owner, Math.round(leaseMs) * 1000, locked.map((r) => r.id)]);
        return locked;
      });
      idle = rows.length === 0;
      // The rows as the UPDATE left them: the claim counts the attempt.
      for (const r of rows) r.attempts += 1;
      return toClaimedMails(rows);
    },

    async complete(owner, relayName, outcomes) {
      if (outcomes.length === 0) return 0;
      const accepted: Named[] = [], partial: Named[] = [], retry: Named[] = [], dead: Named[] = [], release: Named[] = [], attempts: Named[] = [];
      // In id order, so two transactions that touch the same rows lock them in the same order.
      for (const o of [...outcomes].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0))) {
        if (o.kind === "release") {
          release.push({ id: o.id, owner });
          continue;
        }
        const rejected = rejectedJson(o);
        if (o.kind === "accepted") {
          accepted.push({ id: o.id, response: o.response, queueId: o.queueId, accepted: JSON.stringify(o.accepted), rejected });
        } else if (o.kind === "partial") {
          partial.push({
            id: o.id, owner, delayUs: Math.round(o.delayMs) * 1000, error: o.error, response: o.response, queueId: o.queueId,
            accepted: JSON.stringify(o.accepted), rejected, remaining: JSON.stringify(o.deferred.map((d) => d.recipient)),
          });
        } else if (o.kind === "transient") {
          retry.push({ id: o.id, owner, delayUs: Math.round(o.delayMs) * 1000, error: o.error, response: o.response });
        } else {
          dead.push({ id: o.id, owner, error: o.error, response: o.response, rejected });
        }
        const a = attemptColumns(o);
        attempts.push({
          attemptId: o.attemptId, id: o.id, attempt: o.attempt, relay: relayName, startedAt: o.startedAt, durationMs: Math.round(o.durationMs),
          outcome: a.outcome, response: o.response, responseCode: a.responseCode, errorCode: a.errorCode, error: a.error, queueId: a.queueId,
        });
      }
      return inTransaction(pool, async (conn) => {
        let changed = 0;
        for (const [sql, rows] of [[COMPLETE_ACCEPTED, accepted], [COMPLETE_PARTIAL, partial], [COMPLETE_RETRY, retry], [COMPLETE_DEAD, dead], [RELEASE, release]] as const) {
          if (rows.length > 0) changed += affected(await conn.batch(named(sql), rows));
        }
        if (attempts.length > 0) await conn.batch(named(INSERT_ATTEMPT), attempts);
        return changed;
      });
    },

    async renew(owner, ids, leaseMs) {
      if (ids.length === 0) return [];
      return inTransaction(pool, async (conn) => {
        const held = ((await conn.query(HELD, [ids, owner])) as { id: string }[]).map((r) => r.id);
        if (held.length > 0) await conn.query(RENEW, [Math.round(leaseMs) * 1000, held]);
        return held;
      });
    },

    async rescue(self, policy: LeaseExpiryPolicy, limit, held) {
      const status = policy === "resend" ? "pending" : "held";
      // Self's rows it does not hold (no `held`: none of them); '' matches no id, so an empty list works.
      const own = [self, held !== undefined, held === undefined || held.length === 0 ? [""] : [...held]];
      if (((await pool.query(ANY_EXPIRED, own)) as unknown[]).length === 0) return [];
      return inTransaction(pool, async (conn) => {
        const expired = (await conn.query(FIND_EXPIRED, [...own, limit])) as { id: string; message_id: string; lease_owner: string | null; attempts: number; max_attempts: number }[];
        if (expired.length === 0) return [];
        await conn.query(RESCUE, [status, LEASE_EXPIRED_MESSAGE, expired.map((r) => r.id)]);
        await conn.batch(INSERT_LEASE_EXPIRED, expired.map((r) => [newId(), r.id, r.attempts, r.lease_owner ?? "unknown", LEASE_EXPIRED_MESSAGE]));
        return expired.map((r): RescuedMail => ({
          id: r.id,
          messageId: r.message_id,
          previousOwner: r.lease_owner,
          status: r.attempts >= r.max_attempts ? "dead" : status,
        }));
      });
    },
  };
}
