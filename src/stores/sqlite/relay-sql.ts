/**
 * The relay's hot path on SQLite: the same four operations as ../postgres/relay-sql.ts. SQLite has one
 * writer at a time, so a claim is a single atomic UPDATE ... RETURNING; batches run as one
 * transaction of prepared statements. Times are ISO-8601 text with +00:00, as Prisma writes them.
 */
import type Database from "better-sqlite3";
import { randomUUID } from "node:crypto";
import type { LeaseExpiryPolicy, Outcome, RelayStore, RescuedMail } from "../../store.js";
import { LEASE_EXPIRED_MESSAGE, attemptColumns, senderDomains, toClaimedMails, type ClaimRow } from "../rows.js";
import { toSqliteTime } from "./time.js";

/** The hot-path methods of the SQLite store. */
export type RelayStatements = Pick<RelayStore, "claim" | "complete" | "renew" | "rescue">;

const claimStatement = (exclude: string) => `
UPDATE mail_outbox
SET status = 'sending', lease_owner = @owner, lease_expires_at = @leaseExpiresAt,
    attempts = attempts + 1, updated_at = @now
WHERE id IN (
  SELECT id FROM mail_outbox
  WHERE status = 'pending' AND next_attempt_at <= @now${exclude}
  ORDER BY priority DESC, next_attempt_at, id
  LIMIT @limit
)
RETURNING id, message_id, envelope_from, envelope_to, raw, priority, attempts, max_attempts, uncertain_handoffs, trace_context`;

export const CLAIM = claimStatement("");

/**
 * CLAIM leaving out the mail of paused sender domains (@exclude: a JSON array of lower-case
 * domains): the envelope sender ends in "@" and one of them (the domain is what follows the last
 * "@"), compared case-insensitively (ASCII; international domains are compared as punycode).
 * A statement of its own, so the claim without pauses keeps its plan.
 */
export const CLAIM_EXCLUDING = claimStatement(`
    AND NOT EXISTS (SELECT 1 FROM json_each(@exclude) AS d WHERE lower(substr(envelope_from, -length(d.value) - 1)) = '@' || d.value)`);

/** Append the JSON array @list to a JSON array column (NULL counts as empty). */
const append = (column: string, list: string) =>
  `(SELECT json_group_array(CASE WHEN type IN ('object', 'array') THEN json(value) ELSE value END) FROM (` +
  `SELECT value, type FROM json_each(coalesce(${column}, '[]')) UNION ALL SELECT value, type FROM json_each(${list})))`;

export const COMPLETE_ACCEPTED = `
UPDATE mail_outbox
SET status = 'sent', sent_at = @now, mta_response = @response, mta_queue_id = @queueId,
    accepted = ${append("accepted", "@accepted")},
    rejected = CASE WHEN @rejected IS NULL THEN rejected ELSE ${append("rejected", "@rejected")} END,
    lease_owner = NULL, lease_expires_at = NULL, updated_at = @now
WHERE id = @id AND status IN ('sending', 'pending', 'held')`;

export const COMPLETE_PARTIAL = `
UPDATE mail_outbox
SET status = 'pending', next_attempt_at = @nextAttemptAt, last_error = @error,
    mta_response = @response, mta_queue_id = @queueId,
    accepted = ${append("accepted", "@accepted")},
    rejected = CASE WHEN @rejected IS NULL THEN rejected ELSE ${append("rejected", "@rejected")} END,
    envelope_to = @remaining,
    lease_owner = NULL, lease_expires_at = NULL, updated_at = @now
WHERE id = @id AND status = 'sending' AND lease_owner = @owner`;

export const COMPLETE_RETRY = `
UPDATE mail_outbox
SET status = 'pending', next_attempt_at = @nextAttemptAt, last_error = @error,
    mta_response = coalesce(@response, mta_response),
    lease_owner = NULL, lease_expires_at = NULL, updated_at = @now
WHERE id = @id AND status = 'sending' AND lease_owner = @owner`;

export const COMPLETE_DEAD = `
UPDATE mail_outbox
SET status = 'dead', last_error = @error, mta_response = coalesce(@response, mta_response),
    rejected = CASE WHEN @rejected IS NULL THEN rejected ELSE ${append("rejected", "@rejected")} END,
    lease_owner = NULL, lease_expires_at = NULL, updated_at = @now
WHERE id = @id AND status = 'sending' AND lease_owner = @owner`;

export const RELEASE = `
UPDATE mail_outbox
SET status = 'pending', attempts = max(attempts - 1, 0),
    lease_owner = NULL, lease_expires_at = NULL, updated_at = @now
WHERE id = @id AND status = 'sending' AND lease_owner = @owner`;

export const INSERT_ATTEMPT = `
INSERT INTO mail_outbox_attempt
  (id, email_id, attempt, relay, started_at, duration_ms, outcome, response, response_code, error_code, error, queue_id)
VALUES (@attemptId, @id, @attempt, @relay, @startedAt, @durationMs, @outcome, @response, @responseCode, @errorCode, @error, @queueId)`;

export const RENEW = `
UPDATE mail_outbox SET lease_expires_at = @leaseExpiresAt
WHERE id = @id AND status = 'sending' AND lease_owner = @owner`;

export const FIND_EXPIRED = `
SELECT id, message_id, lease_owner, attempts, max_attempts FROM mail_outbox
WHERE status = 'sending' AND lease_expires_at < @now
  AND (lease_owner IS NOT @self OR (@held IS NOT NULL AND id NOT IN (SELECT value FROM json_each(@held))))
ORDER BY lease_expires_at
LIMIT @limit`;

export const RESCUE_ONE = `
UPDATE mail_outbox
SET status = @status, uncertain_handoffs = uncertain_handoffs + 1, last_error = @error,
    lease_owner = NULL, lease_expires_at = NULL, next_attempt_at = @now, updated_at = @now
WHERE id = @id AND status = 'sending' AND lease_expires_at < @now`;

export function sqliteRelayStatements(db: Database.Database): RelayStatements {
  const claim = db.prepare<{ owner: string; leaseExpiresAt: string; now: string; limit: number }, ClaimRow>(CLAIM);
  let claimExcluding: Database.Statement<{ owner: string; leaseExpiresAt: string; now: string; limit: number; exclude: string }, ClaimRow> | undefined;
  const accepted = db.prepare(COMPLETE_ACCEPTED);
  const partial = db.prepare(COMPLETE_PARTIAL);
  const retry = db.prepare(COMPLETE_RETRY);
  const dead = db.prepare(COMPLETE_DEAD);
  const release = db.prepare(RELEASE);
  const insertAttempt = db.prepare(INSERT_ATTEMPT);
  const renew = db.prepare(RENEW);
  const findExpired = db.prepare<{ now: string; limit: number; self: string; held: string | null }, { id: string; message_id: string; lease_owner: string | null; attempts: number; max_attempts: number }>(FIND_EXPIRED);
  const rescueOne = db.prepare(RESCUE_ONE);

  const completeAll = db.transaction((owner: string, relayName: string, outcomes: readonly Outcome[]) => {
    const now = toSqliteTime(new Date());
    let changed = 0;
    for (const o of outcomes) {
      if (o.kind === "release") {
        changed += release.run({ id: o.id, owner, now }).changes;
        continue;
      }
      const rej = o.kind === "accepted" || o.kind === "permanent" || o.kind === "partial" ? o.rejected : null;
      const rejected = rej && rej.length > 0 ? JSON.stringify(rej) : null;
      if (o.kind === "accepted") {
        changed += accepted.run({ id: o.id, now, response: o.response, queueId: o.queueId, accepted: JSON.stringify(o.accepted), rejected }).changes;
      } else if (o.kind === "partial") {
        changed += partial.run({
          id: o.id, owner, now, nextAttemptAt: toSqliteTime(new Date(Date.now() + o.delayMs)), error: o.error, response: o.response,
          queueId: o.queueId, accepted: JSON.stringify(o.accepted), rejected, remaining: JSON.stringify(o.deferred.map((d) => d.recipient)),
        }).changes;
      } else if (o.kind === "transient") {
        const nextAttemptAt = toSqliteTime(new Date(Date.now() + o.delayMs));
        changed += retry.run({ id: o.id, owner, now, nextAttemptAt, error: o.error, response: o.response }).changes;
      } else {
        changed += dead.run({ id: o.id, owner, now, error: o.error, response: o.response, rejected }).changes;
      }
      const a = attemptColumns(o);
      insertAttempt.run({
        attemptId: o.attemptId,
        id: o.id,
        attempt: o.attempt,
        relay: relayName,
        startedAt: toSqliteTime(o.startedAt),
        durationMs: Math.round(o.durationMs),
        outcome: a.outcome,
        response: o.response,
        responseCode: a.responseCode,
        errorCode: a.errorCode,
        error: a.error,
        queueId: a.queueId,
      });
    }
    return changed;
  });

  const renewAll = db.transaction((owner: string, ids: readonly string[], leaseMs: number) => {
    const leaseExpiresAt = toSqliteTime(new Date(Date.now() + leaseMs));
    return ids.filter((id) => renew.run({ id, owner, leaseExpiresAt }).changes === 1);
  });

  const rescueAll = db.transaction((self: string, policy: LeaseExpiryPolicy, limit: number, held: string | null) => {
    const now = toSqliteTime(new Date());
    const out: RescuedMail[] = [];
    for (const row of findExpired.all({ now, limit, self, held })) {
      const status = row.attempts >= row.max_attempts ? "dead" : policy === "resend" ? "pending" : "held";
      if (rescueOne.run({ id: row.id, status, error: LEASE_EXPIRED_MESSAGE, now }).changes !== 1) continue;
      insertAttempt.run({
        attemptId: randomUUID(),
        id: row.id,
        attempt: row.attempts,
        relay: row.lease_owner ?? "unknown",
        startedAt: now,
        durationMs: 0,
        outcome: "lease_expired",
        response: null,
        responseCode: null,
        errorCode: "ELEASE",
        error: LEASE_EXPIRED_MESSAGE,
        queueId: null,
      });
      out.push({ id: row.id, messageId: row.message_id, previousOwner: row.lease_owner, status });
    }
    return out;
  });

  return {
    async claim(owner, limit, leaseMs, options) {
      const now = new Date();
      const params = { owner, limit, now: toSqliteTime(now), leaseExpiresAt: toSqliteTime(new Date(now.getTime() + leaseMs)) };
      const exclude = senderDomains(options?.excludeSenderDomains);
      const rows =
        exclude.length === 0
          ? claim.all(params)
          : (claimExcluding ??= db.prepare<{ owner: string; leaseExpiresAt: string; now: string; limit: number; exclude: string }, ClaimRow>(CLAIM_EXCLUDING)).all({
              ...params,
              exclude: JSON.stringify(exclude),
            });
      return toClaimedMails(rows);
    },
    async complete(owner, relayName, outcomes) {
      return outcomes.length === 0 ? 0 : completeAll(owner, relayName, outcomes);
    },
    async renew(owner, ids, leaseMs) {
      return ids.length === 0 ? [] : renewAll(owner, ids, leaseMs);
    },
    async rescue(self, policy, limit, held) {
      return rescueAll(self, policy, limit, held === undefined ? null : JSON.stringify(held));
    },
  };
}
