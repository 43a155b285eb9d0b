/**
 * The dashboard's statements for SQLite (src/ui/), side by side with ../postgres/ui-sql.ts: one page
 * of the mail list by keyset on (created_at, id), and the attempt log in time buckets for the
 * overview's charts. Every value is a bound parameter; times compare as ISO text (see time.ts).
 */
import type Database from "better-sqlite3";
import type { AttemptBucket, MailPageQuery } from "../../store.js";
import { MAIL_COLUMNS } from "../rows.js";
import { FILTER, filterParams, type SqliteMailRow } from "./admin-sql.js";
import { toSqliteTime } from "./time.js";

type Db = Database.Database;

/** One page, newest first, strictly after the cursor `before` (the last row of the previous page). */
export function listMailPage(db: Db, p: MailPageQuery): SqliteMailRow[] {
  // The filter of list, replay and cancel, and what only the dashboard filters by.
  return db
    .prepare(
      `SELECT ${MAIL_COLUMNS} FROM mail_outbox
       WHERE ${FILTER}
         AND (@subject IS NULL OR instr(lower(subject), lower(@subject)) > 0)
         AND (@metaPath IS NULL OR (json_valid(metadata) AND
               CASE json_type(metadata, @metaPath) WHEN 'true' THEN 'true' WHEN 'false' THEN 'false'
                 ELSE CAST(json_extract(metadata, @metaPath) AS TEXT) END = @metaValue))
         AND (@partialOnly = 0
              OR (json_valid(rejected) AND json_array_length(rejected) > 0)
              OR (status <> 'sent' AND json_valid(accepted) AND json_array_length(accepted) > 0))
         AND (@beforeAt IS NULL OR (created_at <= @beforeAt AND (created_at < @beforeAt OR id < @beforeId)))
       ORDER BY created_at DESC, id DESC
       LIMIT @limit`,
    )
    .all({
      ...filterParams(p.filter),
      subject: p.subject,
      // The key is checked by the caller (letters, digits, _ . -); quoted so `.` stays part of it.
      metaPath: p.metadata === null ? null : `$."${p.metadata.key}"`,
      metaValue: p.metadata?.value ?? null,
      partialOnly: p.partialOnly ? 1 : 0,
      beforeAt: p.before === null ? null : toSqliteTime(p.before.createdAt),
      beforeId: p.before?.id ?? null,
      limit: p.limit,
    }) as SqliteMailRow[];
}

/** Hand-offs (not operator lines, not rescues) since `since`, per bucket of `bucketMs` and outcome. */
export function attemptBuckets(db: Db, since: Date, bucketMs: number): AttemptBucket[] {
  const rows = db
    .prepare(
      `SELECT CAST((julianday(started_at) - 2440587.5) * 86400000.0 / @bucketMs AS INTEGER) AS bucket, outcome,
         count(*) AS n, avg(duration_ms) AS avg_ms, max(duration_ms) AS max_ms
       FROM mail_outbox_attempt
       WHERE started_at >= @since AND outcome IN ('accepted', 'partial', 'transient', 'permanent')
       GROUP BY 1, 2
       ORDER BY 1, 2`,
    )
    .all({ since: toSqliteTime(since), bucketMs }) as { bucket: number; outcome: string; n: number; avg_ms: number; max_ms: number }[];
  return rows.map((x) => ({ start: new Date(Number(x.bucket) * bucketMs), outcome: x.outcome, n: Number(x.n), avgMs: Number(x.avg_ms), maxMs: Number(x.max_ms) }));
}
