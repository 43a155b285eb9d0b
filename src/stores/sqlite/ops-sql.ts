/**
 * The operations state on SQLite, side by side with ../postgres/ops-sql.ts: pauses
 * (mail_outbox_pause), the shared hand-off rate limits (mail_outbox_rate, token buckets), named
 * leases with what their holder publishes (mail_outbox_lock), and the gauges. Times are ISO text
 * (`toSqliteTime`) from the process's clock: the relays sharing a SQLite file share a host.
 * A take of tokens is one IMMEDIATE transaction (the write lock from its first read on), so
 * relays in several processes never grant the same token twice.
 */
import type Database from "better-sqlite3";
import type { LockRecord, OutboxGauges, PauseRecord, RateRecord } from "../../store.js";
import type { JsonValue } from "../../types.js";
import { STATUSES } from "../../states.js";
import { grantFrom, parseJson } from "../rows.js";
import { fromSqliteTime, toSqliteTime } from "./time.js";

type Db = Database.Database;

const date = (v: unknown): Date => fromSqliteTime(v) ?? new Date(Number.NaN);

export function listPauses(db: Db): PauseRecord[] {
  const rows = db.prepare(`SELECT scope, paused_at, paused_by, reason FROM mail_outbox_pause ORDER BY scope`).all() as {
    scope: string;
    paused_at: unknown;
    paused_by: string;
    reason: string | null;
  }[];
  return rows.map((x) => ({ scope: x.scope, pausedAt: date(x.paused_at), pausedBy: x.paused_by, reason: x.reason }));
}

/** Insert the pause; an existing pause of the scope stays as it is. */
export function addPause(db: Db, scope: string, by: string, reason: string | null, now: Date): boolean {
  return (
    db
      .prepare(`INSERT INTO mail_outbox_pause (scope, paused_at, paused_by, reason) VALUES (@scope, @now, @by, @reason) ON CONFLICT (scope) DO NOTHING`)
      .run({ scope, by, reason, now: toSqliteTime(now) }).changes === 1
  );
}

export function removePause(db: Db, scope: string): boolean {
  return db.prepare(`DELETE FROM mail_outbox_pause WHERE scope = ?`).run(scope).changes === 1;
}

interface RateRow {
  bucket: string;
  rate: number;
  burst: number;
  tokens: number;
  refilled_at: unknown;
}

export function listRates(db: Db): RateRecord[] {
  const rows = db.prepare(`SELECT bucket, rate, burst, tokens, refilled_at FROM mail_outbox_rate ORDER BY bucket`).all() as RateRow[];
  return rows.map((x) => ({ bucket: x.bucket, rate: Number(x.rate), burst: Number(x.burst), tokens: Number(x.tokens), refilledAt: date(x.refilled_at) }));
}

/** What a bucket holds at `now`: its tokens plus the refill since `refilled_at`, at most `burst`. */
function available(row: RateRow, now: Date): number {
  const elapsed = Math.max(0, now.getTime() - date(row.refilled_at).getTime()) / 1000;
  const tokens = Number(row.tokens) + elapsed * Number(row.rate);
  return Math.min(Number(row.burst), Number.isFinite(tokens) ? tokens : Number(row.burst));
}

/**
 * A new bucket starts full. A changed one is first refilled at its old rate up to now, then
 * capped at the new burst. Run inside an IMMEDIATE transaction (the store does).
 */
export function setRate(db: Db, bucket: string, rate: number, burst: number, now: Date): void {
  const old = db.prepare(`SELECT bucket, rate, burst, tokens, refilled_at FROM mail_outbox_rate WHERE bucket = ?`).get(bucket) as RateRow | undefined;
  const tokens = old === undefined ? burst : Math.min(burst, available({ ...old, burst: Number.POSITIVE_INFINITY }, now));
  const t = toSqliteTime(now);
  db.prepare(
    `INSERT INTO mail_outbox_rate (bucket, rate, burst, tokens, refilled_at, updated_at) VALUES (@bucket, @rate, @burst, @tokens, @now, @now)
     ON CONFLICT (bucket) DO UPDATE
     SET rate = excluded.rate, burst = excluded.burst, tokens = excluded.tokens, refilled_at = excluded.refilled_at, updated_at = excluded.updated_at`,
  ).run({ bucket, rate, burst, tokens, now: t });
}

export function removeRate(db: Db, bucket: string): boolean {
  return db.prepare(`DELETE FROM mail_outbox_rate WHERE bucket = ?`).run(bucket).changes === 1;
}

/**
 * Refill the buckets up to `now`, take the grant (at most what every bucket holds, at most
 * `want`) from each. Run inside an IMMEDIATE transaction (the store does), so the read and the
 * write of the buckets are one step for every process sharing the file.
 */
export function takeTokens(db: Db, buckets: readonly string[], want: number, now: Date): { granted: number; waitMs: number } {
  const rows = db
    .prepare(`SELECT bucket, rate, burst, tokens, refilled_at FROM mail_outbox_rate WHERE bucket IN (SELECT value FROM json_each(?)) ORDER BY bucket`)
    .all(JSON.stringify(buckets)) as RateRow[];
  if (rows.length === 0) return { granted: want, waitMs: 0 };
  const avail = rows.map((r) => available(r, now));
  const granted = Math.max(0, Math.min(want, Math.floor(Math.min(...avail))));
  const update = db.prepare(`UPDATE mail_outbox_rate SET tokens = @tokens, refilled_at = @now WHERE bucket = @bucket`);
  const t = toSqliteTime(now);
  rows.forEach((r, i) => update.run({ bucket: r.bucket, tokens: avail[i]! - granted, now: t }));
  return grantFrom(
    granted,
    want,
    rows.map((r, i) => ({ rate: Number(r.rate), tokens: avail[i]! - granted })),
  );
}

/** Give back tokens taken but not used, never above the burst. */
export function returnTokens(db: Db, buckets: readonly string[], n: number): void {
  db.prepare(`UPDATE mail_outbox_rate SET tokens = min(burst, tokens + @n) WHERE bucket IN (SELECT value FROM json_each(@buckets))`).run({
    buckets: JSON.stringify(buckets),
    n,
  });
}

/**
 * Take or extend the lease @name for @owner: free, expired, or already theirs. @hasData says
 * whether @data was given; without it the data already there stays.
 */
export const TRY_LOCK = `
INSERT INTO mail_outbox_lock (name, owner, expires_at, data, updated_at) VALUES (@name, @owner, @expiresAt, @data, @now)
ON CONFLICT (name) DO UPDATE
SET owner = excluded.owner,
    expires_at = excluded.expires_at,
    data = CASE WHEN @hasData THEN excluded.data ELSE mail_outbox_lock.data END,
    updated_at = excluded.updated_at
WHERE mail_outbox_lock.expires_at <= @now OR mail_outbox_lock.owner = excluded.owner`;

export function tryLock(db: Db, name: string, owner: string, ttlMs: number, data: JsonValue | undefined, now: Date): boolean {
  return (
    db.prepare(TRY_LOCK).run({
      name,
      owner,
      now: toSqliteTime(now),
      expiresAt: toSqliteTime(new Date(now.getTime() + Math.max(0, Math.round(ttlMs)))),
      // JSON text. The column's declared type (JSONB) gives it numeric affinity: a bare number is
      // stored as a number, which reads back as the same value.
      data: data === undefined ? null : JSON.stringify(data),
      hasData: data === undefined ? 0 : 1,
    }).changes === 1
  );
}

/** Expire the lease now if `owner` holds it; the row (and what its holder published) stays for readers. */
export function unlock(db: Db, name: string, owner: string, now: Date): void {
  const t = toSqliteTime(now);
  db.prepare(`UPDATE mail_outbox_lock SET expires_at = min(expires_at, @now), updated_at = @now WHERE name = @name AND owner = @owner`).run({ name, owner, now: t });
}

export function readLock(db: Db, name: string): LockRecord | null {
  const x = db.prepare(`SELECT name, owner, expires_at, data, updated_at FROM mail_outbox_lock WHERE name = ?`).get(name) as
    | { name: string; owner: string; expires_at: unknown; data: unknown; updated_at: unknown }
    | undefined;
  if (x === undefined) return null;
  return { name: x.name, owner: x.owner, expiresAt: date(x.expires_at), data: x.data === null ? null : (parseJson(x.data) as JsonValue), updatedAt: date(x.updated_at) };
}

/**
 * The gauges in one statement (one snapshot). Every status but `sent` is counted as a range of an
 * index on status (SQLite counts the index entries, not the table's rows), `due` reads only the
 * pending range, and `uncertain` visits the rows of the statuses that are not sent or cancelled.
 * `sent` (most of a large table) is the table's row count minus the others: exact, and SQLite
 * counts a whole table from its smallest index's pages (at 1,000,000 rows, 90% sent: about 21 ms,
 * against 46 ms for the range of `sent`; bench/ops-gauges.ts).
 */
export const GAUGES = `
SELECT
  (SELECT json_group_object(s.value, (SELECT count(*) FROM mail_outbox m WHERE m.status = s.value)) FROM json_each(@statuses) AS s) AS by_status,
  (SELECT count(*) FROM mail_outbox) AS total,
  (SELECT count(*) FROM mail_outbox WHERE status = 'pending' AND next_attempt_at <= @now) AS due,
  (SELECT min(next_attempt_at) FROM mail_outbox WHERE status = 'pending' AND next_attempt_at <= @now) AS oldest,
  (SELECT count(*) FROM mail_outbox WHERE status IN ('pending', 'sending', 'held', 'dead') AND uncertain_handoffs > 0) AS uncertain`;

export function gauges(db: Db, now: Date): OutboxGauges {
  const x = db.prepare(GAUGES).get({ statuses: JSON.stringify(STATUSES.filter((s) => s !== "sent")), now: toSqliteTime(now) }) as {
    by_status: string;
    total: number;
    due: number;
    oldest: unknown;
    uncertain: number;
  };
  const counts = JSON.parse(x.by_status) as Record<string, number>;
  const others = Object.values(counts).reduce((a, b) => a + Number(b), 0);
  // Rows of a status outside STATUSES (none the outbox writes) would count as sent here.
  const n = (status: string) => (status === "sent" ? Math.max(0, Number(x.total) - others) : Number(counts[status] ?? 0));
  const oldest = fromSqliteTime(x.oldest);
  return {
    byStatus: STATUSES.map((status) => ({ status, n: n(status) })),
    due: Number(x.due),
    oldestDueAgeSeconds: oldest === null ? null : Math.max(0, (now.getTime() - oldest.getTime()) / 1000),
    uncertain: Number(x.uncertain),
    held: n("held"),
    dead: n("dead"),
    at: now,
  };
}
