/**
 * Times on SQLite. Prisma keeps DateTime as ISO-8601 text with an explicit offset (the
 * better-sqlite3 adapter's default `timestampFormat`); the store binds and compares times as that
 * text, and reads either that or epoch milliseconds (`timestampFormat: "unixepoch-ms"`).
 */

/** A Date as SQLite holds Prisma's DateTime: `2025-03-01T12:00:00.000+00:00`. */
export function toSqliteTime(d: Date): string {
  return d.toISOString().replace("Z", "+00:00");
}

/** Read a DateTime column from SQLite: ISO text (Prisma's default) or epoch milliseconds. */
export function fromSqliteTime(v: unknown): Date | null {
  if (v === null || v === undefined) return null;
  if (typeof v === "number" || typeof v === "bigint") return new Date(Number(v));
  return new Date(String(v));
}
