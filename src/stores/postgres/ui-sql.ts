/**
 * The dashboard's statements for PostgreSQL (src/ui/), side by side with ../sqlite/ui-sql.ts: one
 * page of the mail list by keyset on (created_at, id), and the attempt log in time buckets for the
 * overview's charts. Every value is a bound parameter.
 */
import type { AttemptBucket, MailPageQuery } from "../../store.js";
import { MAIL_COLUMNS } from "../rows.js";
import type { PgMailRow, Queryable } from "./admin-sql.js";
import { currentFates } from "./fate-sql.js";

/**
 * One page, newest first, strictly after the cursor `before` (the last row of the previous page).
 * `created_at <= $cursor` lets the planner walk mail_outbox_created_idx backwards; the id breaks ties
 * (rows written in one transaction share created_at).
 */
export async function listMailPage(q: Queryable, p: MailPageQuery): Promise<PgMailRow[]> {
  const f = p.filter;
  const r = await q.query<PgMailRow>(
    `SELECT ${MAIL_COLUMNS} FROM mail_outbox
     WHERE ($1::text[] IS NULL OR status = ANY($1::text[]))
       AND ($2::text IS NULL OR EXISTS (
             SELECT 1 FROM jsonb_array_elements_text(CASE WHEN jsonb_typeof(envelope_to) = 'array' THEN envelope_to ELSE '[]'::jsonb END) AS r(addr)
             WHERE lower(r.addr) = lower($2::text)))
       AND ($3::timestamptz IS NULL OR created_at >= $3::timestamptz)
       AND ($4::timestamptz IS NULL OR created_at < $4::timestamptz)
       AND ($5::boolean IS NOT TRUE OR uncertain_handoffs > 0)
       AND ($6::text IS NULL OR strpos(lower(subject), lower($6::text)) > 0)
       AND ($7::text IS NULL OR metadata ->> $7::text = $8::text)
       AND ($9::boolean IS NOT TRUE
            OR (jsonb_typeof(rejected) = 'array' AND jsonb_array_length(rejected) > 0)
            OR (status <> 'sent' AND jsonb_typeof(accepted) = 'array' AND jsonb_array_length(accepted) > 0))
       AND ($10::text IS NULL OR EXISTS (
             SELECT 1 FROM (${currentFates("AND email_id = mail_outbox.id")}) f WHERE f.event = $10::text))
       AND ($11::timestamptz IS NULL OR (created_at <= $11::timestamptz AND (created_at < $11::timestamptz OR id < $12::uuid)))
     ORDER BY created_at DESC, id DESC
     LIMIT $13`,
    [
      f.statuses,
      f.recipient,
      f.since,
      f.until,
      f.uncertainOnly,
      p.subject,
      p.metadata?.key ?? null,
      p.metadata?.value ?? null,
      p.partialOnly,
      f.fate,
      p.before?.createdAt ?? null,
      p.before?.id ?? null,
      p.limit,
    ],
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
