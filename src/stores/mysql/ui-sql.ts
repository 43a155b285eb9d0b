/**
 * The dashboard's statements for MySQL and MariaDB (src/ui/), side by side with
 * ../postgres/ui-sql.ts: one page of the mail list by keyset on (created_at, id), and the attempt
 * log in time buckets for the overview's charts. Every value is a bound parameter.
 */
import { OptionsError } from "../../errors.js";
import type { AttemptBucket, MailPageQuery } from "../../store.js";
import { MAIL_COLUMNS } from "../rows.js";
import type { Queryable } from "./conn.js";
import { FILTER, filterParams, plainMailRow, type MysqlMailRow, type StoredMailRow } from "./admin-sql.js";

/** A top-level metadata key as MailPageQuery documents it (src/ui/query.ts checks the same). */
const META_KEY = /^[A-Za-z0-9_.-]{1,100}$/;

/**
 * The JSON path of a top-level metadata key: `$."key"`, quoted so a `.` stays part of the key.
 * The path is a bound value, but it is still a path: a key with other characters (a quote, `*`,
 * `[`) would name something else, so it is refused rather than escaped.
 */
export function metadataPath(key: string): string {
  if (!META_KEY.test(key)) {
    throw new OptionsError(`Expected a metadata key of letters, digits, "_", "." or "-" (at most 100), got ${JSON.stringify(key)}.`);
  }
  return `$."${key}"`;
}

/**
 * One page, newest first, strictly after the cursor `before` (the last row of the previous page).
 * `created_at <= cursor` lets the optimizer walk mail_outbox_created_idx backwards; the id breaks
 * ties (rows written in one transaction share created_at).
 *
 * - subject: contains the text in any case; both sides lower-cased and compared byte for byte
 *   (utf8mb4_bin), as PostgreSQL's strpos(lower(), lower()) does: the column's _ci collation would
 *   also fold accents.
 * - metadata: the key's value as text (a string unquoted, a number or boolean as JSON writes it)
 *   equals the value byte for byte, as PostgreSQL's `->>` compares (as binary strings: even
 *   utf8mb4_bin ignores trailing spaces); a JSON null is no value there, nor here.
 */
export async function listMailPage(q: Queryable, p: MailPageQuery): Promise<MysqlMailRow[]> {
  const path = p.metadata === null ? null : metadataPath(p.metadata.key);
  const rows = await q.query<StoredMailRow[]>(
    `SELECT ${MAIL_COLUMNS} FROM mail_outbox
     WHERE ${FILTER}
       AND (? IS NULL OR LOCATE(LOWER(?), LOWER(subject) COLLATE utf8mb4_bin) > 0)
       AND (? IS NULL OR (JSON_TYPE(JSON_EXTRACT(metadata, ?)) <> 'NULL' AND CAST(JSON_UNQUOTE(JSON_EXTRACT(metadata, ?)) AS BINARY) = CAST(? AS BINARY)))
       AND (? IS NOT TRUE
            OR (JSON_TYPE(rejected) = 'ARRAY' AND JSON_LENGTH(rejected) > 0)
            OR (status <> 'sent' AND JSON_TYPE(accepted) = 'ARRAY' AND JSON_LENGTH(accepted) > 0))
       AND (? IS NULL OR (created_at <= ? AND (created_at < ? OR id < ?)))
     ORDER BY created_at DESC, id DESC
     LIMIT ?`,
    [
      ...filterParams(p.filter),
      p.subject,
      p.subject,
      path,
      path,
      path,
      p.metadata?.value ?? null,
      p.partialOnly,
      p.before?.createdAt ?? null,
      p.before?.createdAt ?? null,
      p.before?.createdAt ?? null,
      p.before?.id ?? null,
      p.limit,
    ],
  );
  return rows.map(plainMailRow);
}

/**
 * Hand-offs (not operator lines, not rescues) since `since`, per bucket of `bucketMs` and outcome.
 * Buckets are aligned to the epoch: milliseconds since 1970 by TIMESTAMPDIFF on the DATETIME (UTC),
 * which, unlike UNIX_TIMESTAMP, does not depend on the session's time zone.
 */
export async function attemptBuckets(q: Queryable, since: Date, bucketMs: number): Promise<AttemptBucket[]> {
  const rows = await q.query<{ bucket: number; outcome: string; n: number; avg_ms: number; max_ms: number }[]>(
    `SELECT FLOOR(TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', started_at) / (? * 1000)) AS bucket, outcome,
       count(*) AS n, avg(duration_ms) AS avg_ms, max(duration_ms) AS max_ms
     FROM mail_outbox_attempt
     WHERE started_at >= ? AND outcome IN ('accepted', 'partial', 'transient', 'permanent')
     GROUP BY bucket, outcome
     ORDER BY bucket, outcome`,
    [bucketMs, since],
  );
  return rows.map((x) => ({ start: new Date(Number(x.bucket) * bucketMs), outcome: x.outcome, n: Number(x.n), avgMs: Number(x.avg_ms), maxMs: Number(x.max_ms) }));
}
