/**
 * The dashboard's statements for PostgreSQL (src/ui/), side by side with ../sqlite/ui-sql.ts: one
 * page of the mail list by keyset on (created_at, id), and the attempt log in time buckets for the
 * overview's charts. Every value is a bound parameter.
 */
import type { AttemptBucket, MailPageQuery } from "../../store.js";
import { MAIL_COLUMNS } from "../rows.js";
import { FILTER, filterParams, type PgMailRow, type Queryable } from "./admin-sql.js";

/**
 * One page, newest first, strictly after the cursor `before` (the last row of the previous page).
 * `created_at <= $cursor` lets the planner walk mail_outbox_created_idx backwards; the id breaks ties
 * (rows written in one transaction share created_at).
 */
export async function listMailPage(q: Queryable, p: MailPageQuery): Promise<PgMailRow[]> {
  // The filter of list, replay and cancel ($1-$9), and what only the dashboard filters by.
  const r = await q.query<PgMailRow>(
    `SELECT ${MAIL_COLUMNS} FROM mail_outbox
     WHERE ${FILTER}
       AND ($10::text IS NULL OR strpos(lower(subject), lower($10::text)) > 0)
       AND ($11::text IS NULL OR metadata ->> $11::text = $12::text)
       AND ($13::boolean IS NOT TRUE
            OR (jsonb_typeof(rejected) = 'array' AND jsonb_array_length(rejected) > 0)
            OR (status <> 'sent' AND jsonb_typeof(accepted) = 'array' AND jsonb_array_length(accepted) > 0))
       AND ($14::timestamptz IS NULL OR (created_at <= $14::timestamptz AND (created_at < $14::timestamptz OR id < $15::uuid)))
     ORDER BY created_at DESC, id DESC
     LIMIT $16`,
    [...filterParams(p.filter), p.subject, p.metadata?.key ?? null, p.metadata?.value ?? null, p.partialOnly, p.before?.createdAt ?? null, p.before?.id ?? null, p.limit],
  );
  return r.rows;
}

/** Hand-offs (not operator lines, not rescues) since `since`, per bucket of `bucketMs` and outcome. */
export async function attemptBuckets(q: Queryable, since: Date, bucketMs: number): Promise<AttemptBucket[]> {
  const r = await q.query<{ bucket: string; outcome: string; n: number; avg_ms: number; max_ms: number }>(
    `SELECT floor(extract(epoch FROM started_at) * 1000 / $2)::bigint AS bucket, outcome,
       count(*)::int AS n, avg(duration_ms)::float8 AS avg_ms, max(duration_ms)::int AS max_ms
     FROM mail_outbox_attempt
     WHERE started_at >= $1 AND outcome IN ('accepted', 'partial', 'transient', 'permanent')
     GROUP BY 1, 2
     ORDER BY 1, 2`,
    [since, bucketMs],
  );
  return r.rows.map((x) => ({ start: new Date(Number(x.bucket) * bucketMs), outcome: x.outcome, n: Number(x.n), avgMs: Number(x.avg_ms), maxMs: Number(x.max_ms) }));
}
