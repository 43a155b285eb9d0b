/**
 * The operations state on MySQL and MariaDB: pauses (mail_outbox_pause), the shared hand-off rate
 * limits (mail_outbox_rate, token buckets), named leases with what their holder publishes
 * (mail_outbox_lock), and the gauges. Times come from the database clock (NOW(3), UTC), so relays
 * on hosts with skewed clocks agree. Side by side with ../postgres/ops-sql.ts and
 * ../sqlite/ops-sql.ts.
 *
 * Without RETURNING, a statement that must say what it did answers with `affectedRows` (INSERT
 * IGNORE, DELETE) or is followed by a read (a lease's holder). In an ON DUPLICATE KEY UPDATE the
 * assignments below are ordered so that they mean the same whether the server evaluates them left
 * to right (MySQL, MariaDB by default) or all from the old row (MariaDB's SIMULTANEOUS_ASSIGNMENT).
 */
import type { LockRecord, OutboxGauges, PauseRecord, RateRecord } from "../../store.js";
import type { JsonValue } from "../../types.js";
import { STATUSES } from "../../states.js";
import { grantFrom, parseJson, type BucketState } from "../rows.js";
import type { Queryable } from "./conn.js";

/** What an INSERT, UPDATE or DELETE answers. */
interface Written {
  affectedRows: number;
}

export async function listPauses(q: Queryable): Promise<PauseRecord[]> {
  const rows = await q.query<{ scope: string; paused_at: Date; paused_by: string; reason: string | null }[]>(
    `SELECT scope, paused_at, paused_by, reason FROM mail_outbox_pause ORDER BY scope`,
  );
  return rows.map((x) => ({ scope: x.scope, pausedAt: x.paused_at, pausedBy: x.paused_by, reason: x.reason }));
}

/**
 * Insert the pause; an existing pause of the scope stays as it is. INSERT IGNORE: affectedRows
 * is 1 when inserted, 0 when the scope was paused already (ON DUPLICATE KEY UPDATE could not tell
 * the two apart, as the pool counts matched rows).
 */
export async function addPause(q: Queryable, scope: string, by: string, reason: string | null): Promise<boolean> {
  const r = await q.query<Written>(`INSERT IGNORE INTO mail_outbox_pause (scope, paused_at, paused_by, reason) VALUES (?, NOW(3), ?, ?)`, [scope, by, reason]);
  return r.affectedRows === 1;
}

export async function removePause(q: Queryable, scope: string): Promise<boolean> {
  const r = await q.query<Written>(`DELETE FROM mail_outbox_pause WHERE scope = ?`, [scope]);
  return r.affectedRows === 1;
}

interface RateRow {
  bucket: string;
  rate: number;
  burst: number;
  tokens: number;
  refilled_at: Date;
}

export async function listRates(q: Queryable): Promise<RateRecord[]> {
  const rows = await q.query<RateRow[]>(`SELECT bucket, rate, burst, tokens, refilled_at FROM mail_outbox_rate ORDER BY bucket`);
  return rows.map((x) => ({ bucket: x.bucket, rate: Number(x.rate), burst: Number(x.burst), tokens: Number(x.tokens), refilledAt: x.refilled_at }));
}

/**
 * A new bucket starts full. A changed one is first refilled at its old rate up to now, then
 * capped at the new burst: `tokens` is assigned first, from the old row.
 */
export async function setRate(q: Queryable, bucket: string, rate: number, burst: number): Promise<void> {
  await q.query(
    `INSERT INTO mail_outbox_rate (bucket, rate, burst, tokens, refilled_at, updated_at)
     VALUES (?, ?, ?, ?, NOW(3), NOW(3))
     ON DUPLICATE KEY UPDATE
       tokens = least(?, tokens + greatest(0, timestampdiff(MICROSECOND, refilled_at, NOW(3))) / 1000000 * rate),
       rate = ?,
       burst = ?,
       refilled_at = NOW(3),
       updated_at = NOW(3)`,
    [bucket, rate, burst, burst, burst, rate, burst],
  );
}

export async function removeRate(q: Queryable, bucket: string): Promise<boolean> {
  const r = await q.query<Written>(`DELETE FROM mail_outbox_rate WHERE bucket = ?`, [bucket]);
  return r.affectedRows === 1;
}

/**
 * Lock the buckets' rows in the order of their names (two takers of the same buckets cannot
 * deadlock) and read them: a locking read sees the last taker's commit.
 */
export const LOCK_BUCKETS = `SELECT bucket, rate, burst, tokens, refilled_at FROM mail_outbox_rate WHERE bucket IN (?) ORDER BY bucket FOR UPDATE`;

/**
 * The clock, read once the buckets are locked: NOW(3) is the time its statement started, so in
 * LOCK_BUCKETS it would be from before a wait for the previous taker, who may have refilled to a
 * later time (and the refill would then count that stretch twice).
 */
const CLOCK = `SELECT NOW(3) AS now`;

/** Refill to `now` and take the grant: what a bucket holds afterwards, at `now`. */
const SET_BUCKET = `UPDATE mail_outbox_rate SET tokens = ?, refilled_at = ? WHERE bucket = ?`;

/** What a bucket holds at `now`: its tokens plus the refill since `refilled_at`, at most `burst`. */
function available(row: RateRow, now: Date): number {
  const elapsed = Math.max(0, now.getTime() - row.refilled_at.getTime()) / 1000;
  return Math.min(Number(row.burst), Number(row.tokens) + elapsed * Number(row.rate));
}

/**
 * Take up to `want` tokens from every bucket at once: lock them (LOCK_BUCKETS), read the clock,
 * refill each up to it, take the grant (at most what every bucket holds) from each. Run inside a
 * transaction (the store does), so the locks hold until the takes are committed.
 */
export async function takeTokens(client: Queryable, buckets: readonly string[], want: number): Promise<{ granted: number; waitMs: number }> {
  const rows = await client.query<RateRow[]>(LOCK_BUCKETS, [buckets]);
  if (rows.length === 0) return { granted: want, waitMs: 0 };
  const [{ now }] = (await client.query<{ now: Date }[]>(CLOCK)) as [{ now: Date }];
  const avail = rows.map((r) => available(r, now));
  const granted = Math.max(0, Math.min(want, Math.floor(Math.min(...avail))));
  const after: BucketState[] = rows.map((r, i) => ({ rate: Number(r.rate), tokens: avail[i]! - granted }));
  for (const [i, r] of rows.entries()) await client.query(SET_BUCKET, [after[i]!.tokens, now, r.bucket]);
  return grantFrom(granted, want, after);
}

/** Give back tokens taken but not used, never above the burst. */
export async function returnTokens(q: Queryable, buckets: readonly string[], n: number): Promise<void> {
  await q.query(`UPDATE mail_outbox_rate SET tokens = least(burst, tokens + ?) WHERE bucket IN (?)`, [n, buckets]);
}

/**
 * Take or extend the lease for an owner: free, expired, or already theirs. Each assignment is
 * guarded by that condition on the old row, and `owner` and `expires_at` come last, in that
 * order, so the guard reads the same for every column. Without data given, the data already
 * there stays. Parameters: name, owner, ttl in microseconds, data (JSON text), then for the
 * update: owner, whether data was given, data, owner, owner, owner, owner, ttl.
 */
export const TRY_LOCK = `
INSERT INTO mail_outbox_lock (name, owner, expires_at, data, updated_at)
VALUES (?, ?, NOW(3) + INTERVAL ? MICROSECOND, ?, NOW(3))
ON DUPLICATE KEY UPDATE
  data = IF(expires_at <= NOW(3) OR owner = ?, IF(?, ?, data), data),
  updated_at = IF(expires_at <= NOW(3) OR owner = ?, NOW(3), updated_at),
  owner = IF(expires_at <= NOW(3) OR owner = ?, ?, owner),
  expires_at = IF(expires_at <= NOW(3) OR owner = ?, NOW(3) + INTERVAL ? MICROSECOND, expires_at)`;

/**
 * TRY_LOCK, then who holds the lease: `affectedRows` cannot say whether the row changed hands (the
 * pool counts a row left as it was as matched). Whoever holds it after the statement took it in
 * that statement or held it before (the guard lets no one else in while it is unexpired).
 */
export async function tryLock(q: Queryable, name: string, owner: string, ttlMs: number, data: JsonValue | undefined): Promise<boolean> {
  const ttl = Math.max(0, Math.round(ttlMs)) * 1000;
  const text = data === undefined ? null : JSON.stringify(data);
  await q.query(TRY_LOCK, [name, owner, ttl, text, owner, data !== undefined, text, owner, owner, owner, owner, ttl]);
  const rows = await q.query<{ owner: string }[]>(`SELECT owner FROM mail_outbox_lock WHERE name = ?`, [name]);
  return rows[0]?.owner === owner;
}

/** Expire the lease now if `owner` holds it; the row (and what its holder published) stays for readers. */
export async function unlock(q: Queryable, name: string, owner: string): Promise<void> {
  await q.query(`UPDATE mail_outbox_lock SET expires_at = least(expires_at, NOW(3)), updated_at = NOW(3) WHERE name = ? AND owner = ?`, [name, owner]);
}

export async function readLock(q: Queryable, name: string): Promise<LockRecord | null> {
  const rows = await q.query<{ name: string; owner: string; expires_at: Date; data: string | null; updated_at: Date }[]>(
    `SELECT name, owner, expires_at, data, updated_at FROM mail_outbox_lock WHERE name = ?`,
    [name],
  );
  const x = rows[0];
  return x === undefined ? null : { name: x.name, owner: x.owner, expiresAt: x.expires_at, data: parseJson(x.data) as JsonValue | null, updatedAt: x.updated_at };
}

/**
 * The gauges in one statement (one consistent read). Every count is exact: rows per status from an
 * index on status (a scan of mail_outbox_lease_idx), `due` and the oldest due time from the pending
 * range of mail_outbox_claim_idx, `uncertain` from the rows of the statuses that are not sent or
 * cancelled (each looked up in the table: uncertain_handoffs is in no index). InnoDB keeps no row
 * count and its estimate (information_schema TABLE_ROWS) is off by tens of percent, so `sent` is
 * counted too. Measured on MariaDB 10.11 at 1,000,000 rows, 90% sent, 60,000 pending
 * (bench/ops-gauges.ts --only mariadb, 2 shared cores): the statement about 350 ms (min 260); of
 * that the counts per status about 80 ms (growing with the table) and `uncertain` about 140 ms
 * (growing with the backlog). One relay counts, once per gauge interval (15 s by default).
 */
export const GAUGES = `
SELECT
  (SELECT JSON_OBJECTAGG(s.status, s.n) FROM (SELECT status, count(*) AS n FROM mail_outbox GROUP BY status) s) AS by_status,
  d.due,
  timestampdiff(MICROSECOND, d.oldest, NOW(3)) / 1000000 AS oldest_age,
  (SELECT count(*) FROM mail_outbox WHERE status IN ('pending', 'sending', 'held', 'dead') AND uncertain_handoffs > 0) AS uncertain,
  NOW(3) AS at
FROM (SELECT count(*) AS due, min(next_attempt_at) AS oldest FROM mail_outbox WHERE status = 'pending' AND next_attempt_at <= NOW(3)) d`;

/** The gauges; `sent` is always exact here (`sentEstimated` false, unlike PostgreSQL above 200,000 rows). */
export async function gauges(q: Queryable): Promise<OutboxGauges & { sentEstimated: boolean }> {
  const [x] = (await q.query<{ by_status: string | null; due: number; oldest_age: number | string | null; uncertain: number; at: Date }[]>(GAUGES)) as [
    { by_status: string | null; due: number; oldest_age: number | string | null; uncertain: number; at: Date },
  ];
  const counts = (parseJson(x.by_status) ?? {}) as Record<string, number>;
  const n = (status: string) => Number(counts[status] ?? 0);
  return {
    byStatus: STATUSES.map((status) => ({ status, n: n(status) })),
    due: Number(x.due),
    oldestDueAgeSeconds: x.oldest_age === null ? null : Math.max(0, Number(x.oldest_age)),
    uncertain: Number(x.uncertain),
    held: n("held"),
    dead: n("dead"),
    at: x.at,
    sentEstimated: false,
  };
}
