/**
 * The operations state on PostgreSQL: pauses (mail_outbox_pause), the shared hand-off rate limits
 * (mail_outbox_rate, token buckets), named leases with what their holder publishes
 * (mail_outbox_lock), and the gauges. Times come from the database clock, so relays on hosts with
 * skewed clocks agree. Side by side with ../sqlite/ops-sql.ts.
 */
import type pg from "pg";
import type { LockRecord, OutboxGauges, PauseRecord, RateRecord } from "../../store.js";
import type { JsonValue } from "../../types.js";
import { STATUSES } from "../../states.js";
import { grantFrom, type BucketState } from "../rows.js";

type Queryable = Pick<pg.Pool, "query">;

export async function listPauses(q: Queryable): Promise<PauseRecord[]> {
  const r = await q.query<{ scope: string; paused_at: Date; paused_by: string; reason: string | null }>(
    `SELECT scope, paused_at, paused_by, reason FROM mail_outbox_pause ORDER BY scope`,
  );
  return r.rows.map((x) => ({ scope: x.scope, pausedAt: x.paused_at, pausedBy: x.paused_by, reason: x.reason }));
}

/** Insert the pause; an existing pause of the scope stays as it is. */
export async function addPause(q: Queryable, scope: string, by: string, reason: string | null): Promise<boolean> {
  const r = await q.query(
    `INSERT INTO mail_outbox_pause (scope, paused_at, paused_by, reason) VALUES ($1, now(), $2, $3)
     ON CONFLICT (scope) DO NOTHING`,
    [scope, by, reason],
  );
  return r.rowCount === 1;
}

export async function removePause(q: Queryable, scope: string): Promise<boolean> {
  const r = await q.query(`DELETE FROM mail_outbox_pause WHERE scope = $1`, [scope]);
  return r.rowCount === 1;
}

export async function listRates(q: Queryable): Promise<RateRecord[]> {
  const r = await q.query<{ bucket: string; rate: number; burst: number; tokens: number; refilled_at: Date }>(
    `SELECT bucket, rate, burst, tokens, refilled_at FROM mail_outbox_rate ORDER BY bucket`,
  );
  return r.rows.map((x) => ({ bucket: x.bucket, rate: Number(x.rate), burst: x.burst, tokens: Number(x.tokens), refilledAt: x.refilled_at }));
}

/**
 * A new bucket starts full. A changed one is first refilled at its old rate up to now, then
 * capped at the new burst.
 */
export async function setRate(q: Queryable, bucket: string, rate: number, burst: number): Promise<void> {
  await q.query(
    `INSERT INTO mail_outbox_rate AS r (bucket, rate, burst, tokens, refilled_at, updated_at)
     VALUES ($1, $2::float8, $3::int, $3::float8, clock_timestamp(), now())
     ON CONFLICT (bucket) DO UPDATE
     SET rate = excluded.rate,
         burst = excluded.burst,
         tokens = least(excluded.burst::float8, r.tokens + greatest(0, extract(epoch FROM excluded.refilled_at - r.refilled_at)) * r.rate),
         refilled_at = excluded.refilled_at,
         updated_at = excluded.updated_at`,
    [bucket, rate, burst],
  );
}

export async function removeRate(q: Queryable, bucket: string): Promise<boolean> {
  const r = await q.query(`DELETE FROM mail_outbox_rate WHERE bucket = $1`, [bucket]);
  return r.rowCount === 1;
}

/** Lock the buckets' rows in the order of their names (two takers of the same buckets cannot deadlock). */
export const LOCK_BUCKETS = `SELECT bucket FROM mail_outbox_rate WHERE bucket = ANY($1::text[]) ORDER BY bucket FOR UPDATE`;

/**
 * Refill the (locked) buckets up to the clock's time now, take `$2` (the grant, at most what every
 * bucket holds) from each, and return what they hold afterwards. Runs after LOCK_BUCKETS in the
 * same transaction, so its snapshot holds the last taker's commit. `t` is the time rounded to the
 * column's milliseconds, used both to refill and as the new `refilled_at`, so no time is counted twice.
 */
export const TAKE_TOKENS = `
WITH t AS (SELECT clock_timestamp()::timestamptz(3) AS now),
cur AS (
  SELECT b.bucket, b.rate, least(b.burst::float8, b.tokens + greatest(0, extract(epoch FROM t.now - b.refilled_at)) * b.rate) AS avail
  FROM mail_outbox_rate b, t
  WHERE b.bucket = ANY($1::text[])
),
g AS (SELECT greatest(0, least($2::int, floor(min(avail))))::int AS granted FROM cur)
UPDATE mail_outbox_rate r
SET tokens = cur.avail - g.granted, refilled_at = t.now
FROM cur, g, t
WHERE r.bucket = cur.bucket
RETURNING r.bucket, r.rate, r.tokens, g.granted`;

/** Take up to `want` tokens from every bucket at once, in one transaction (see TAKE_TOKENS). */
export async function takeTokens(client: Queryable, buckets: readonly string[], want: number): Promise<{ granted: number; waitMs: number }> {
  await client.query({ name: "mail_outbox_rate_lock", text: LOCK_BUCKETS, values: [buckets] });
  const r = await client.query<{ bucket: string; rate: number; tokens: number; granted: number }>({
    name: "mail_outbox_rate_take",
    text: TAKE_TOKENS,
    values: [buckets, want],
  });
  if (r.rows.length === 0) return { granted: want, waitMs: 0 };
  const after: BucketState[] = r.rows.map((x) => ({ rate: Number(x.rate), tokens: Number(x.tokens) }));
  return grantFrom(r.rows[0]!.granted, want, after);
}

/** Give back tokens taken but not used, never above the burst. */
export async function returnTokens(q: Queryable, buckets: readonly string[], n: number): Promise<void> {
  await q.query(`UPDATE mail_outbox_rate SET tokens = least(burst::float8, tokens + $2) WHERE bucket = ANY($1::text[])`, [buckets, n]);
}

/**
 * Take or extend the lease `$1` for `$2`: free, expired, or already theirs. `$5` says whether `$4`
 * (the data) was given; without it the data already there stays.
 */
export const TRY_LOCK = `
INSERT INTO mail_outbox_lock AS l (name, owner, expires_at, data, updated_at)
VALUES ($1, $2, now() + $3 * interval '1 millisecond', $4::jsonb, now())
ON CONFLICT (name) DO UPDATE
SET owner = excluded.owner,
    expires_at = excluded.expires_at,
    data = CASE WHEN $5::boolean THEN excluded.data ELSE l.data END,
    updated_at = excluded.updated_at
WHERE l.expires_at <= now() OR l.owner = excluded.owner
RETURNING owner`;

export async function tryLock(q: Queryable, name: string, owner: string, ttlMs: number, data: JsonValue | undefined): Promise<boolean> {
  const r = await q.query({
    name: "mail_outbox_lock_try",
    text: TRY_LOCK,
    values: [name, owner, Math.max(0, Math.round(ttlMs)), data === undefined ? null : JSON.stringify(data), data !== undefined],
  });
  return r.rowCount === 1;
}

/** Expire the lease now if `owner` holds it; the row (and what its holder published) stays for readers. */
export async function unlock(q: Queryable, name: string, owner: string): Promise<void> {
  await q.query(`UPDATE mail_outbox_lock SET expires_at = least(expires_at, now()), updated_at = now() WHERE name = $1 AND owner = $2`, [name, owner]);
}

export async function readLock(q: Queryable, name: string): Promise<LockRecord | null> {
  const r = await q.query<{ name: string; owner: string; expires_at: Date; data: JsonValue | null; updated_at: Date }>(
    `SELECT name, owner, expires_at, data, updated_at FROM mail_outbox_lock WHERE name = $1`,
    [name],
  );
  const x = r.rows[0];
  return x === undefined ? null : { name: x.name, owner: x.owner, expiresAt: x.expires_at, data: x.data ?? null, updatedAt: x.updated_at };
}

/** Below this many rows (the planner's estimate) the gauges count `sent` exactly; above it they estimate it. */
export const SENT_EXACT_BELOW = 200_000;

/**
 * The gauges in one statement. Every status but `sent` is counted exactly, each as a range of an
 * index on status (mail_outbox_claim_idx or mail_outbox_lease_idx: index-only scans), and `due`
 * reads only the pending range: their cost follows the backlog, not the table. `sent` (the
 * history, most of a large table) is counted exactly only while the table is small (fewer than
 * $2 rows by the statistics); above that it is the table's live row count from the statistics
 * collector (n_live_tup, which follows every commit within about a second; pg_class.reltuples
 * scaled to the table's size when the statistics were reset) minus the other statuses.
 * Measured at 1,000,000 rows, 90% sent, after VACUUM (bench/ops-gauges.ts, figures in
 * BENCHMARKS.md): the statement about 30 ms, the same counting `sent` exactly about 85 ms, and
 * 200 ms or more before the table's first VACUUM; the count of `sent` grows with the table, the
 * rest with the backlog. `uncertain` visits the heap rows of the statuses that are not sent or
 * cancelled (most of the 30 ms with 60,000 pending rows).
 */
export const GAUGES = `
WITH est AS (
  SELECT CASE WHEN pg_stat_get_live_tuples(c.oid) > 0 THEN pg_stat_get_live_tuples(c.oid)::float8
              WHEN c.reltuples < 0 OR c.relpages = 0 THEN NULL
              ELSE c.reltuples / c.relpages * (pg_relation_size(c.oid) / current_setting('block_size')::float8) END AS n
  FROM pg_class c WHERE c.oid = 'mail_outbox'::regclass
),
counts AS (
  SELECT s.status, (SELECT count(*) FROM mail_outbox m WHERE m.status = s.status) AS n
  FROM unnest($1::text[]) AS s(status)
)
SELECT
  (SELECT json_object_agg(status, n) FROM counts) AS by_status,
  CASE WHEN est.n IS NULL OR est.n < $2 THEN (SELECT count(*) FROM mail_outbox WHERE status = 'sent')
       ELSE greatest(0, round(est.n)::bigint - (SELECT sum(n) FROM counts)::bigint) END AS sent,
  (est.n IS NOT NULL AND est.n >= $2) AS sent_estimated,
  d.due, extract(epoch FROM now() - d.oldest) AS oldest_age,
  (SELECT count(*) FROM mail_outbox WHERE status IN ('pending', 'sending', 'held', 'dead') AND uncertain_handoffs > 0) AS uncertain,
  now() AS at
FROM (SELECT count(*) AS due, min(next_attempt_at) AS oldest FROM mail_outbox WHERE status = 'pending' AND next_attempt_at <= now()) AS d
LEFT JOIN est ON true`;

export async function gauges(q: Queryable, sentExactBelow = SENT_EXACT_BELOW): Promise<OutboxGauges & { sentEstimated: boolean }> {
  const r = await q.query<{
    by_status: Record<string, string | number> | null;
    sent: string;
    sent_estimated: boolean;
    due: string;
    oldest_age: number | string | null;
    uncertain: string;
    at: Date;
  }>({
    name: "mail_outbox_gauges",
    text: GAUGES,
    values: [STATUSES.filter((s) => s !== "sent"), sentExactBelow],
  });
  const x = r.rows[0]!;
  const n = (status: string) => Number(status === "sent" ? x.sent : (x.by_status?.[status] ?? 0));
  return {
    byStatus: STATUSES.map((status) => ({ status, n: n(status) })),
    due: Number(x.due),
    oldestDueAgeSeconds: x.oldest_age === null ? null : Math.max(0, Number(x.oldest_age)),
    uncertain: Number(x.uncertain),
    held: n("held"),
    dead: n("dead"),
    at: x.at,
    sentEstimated: x.sent_estimated,
  };
}
