/** Read what the audit needs from an outbox database, with the library's own connection. */
import { openDatabase, type Db } from "../src/db.js";
import { migrate } from "../src/migrate.js";
import { USER_TABLE_SQL, sqliteOf, pgOf } from "../test/support/db.js";
import type { RowFact } from "./audit.js";

const open = (url: string) => openDatabase(url, { applicationName: "soak-harness", poolSize: 2 });

async function query<T>(db: Db, sql: string): Promise<T[]> {
  if (db.dialect === "postgresql") return (await db.pool.query(sql)).rows as T[];
  if (db.dialect === "mysql") return (await db.pool.query(sql)) as T[];
  return sqliteOf(db).db.prepare(sql).all() as T[];
}

/** `CAST(expr AS <text>)`: MySQL has no TEXT type for CAST (CHAR is its text there; on PostgreSQL CHAR is one character). */
const asText = (db: Db, expr: string) => `CAST(${expr} AS ${db.dialect === "mysql" ? "CHAR" : "TEXT"})`;

/** Create the outbox tables (the shipped migrations) and the application's `User` table. */
export async function prepareDatabase(url: string): Promise<void> {
  const db = await open(url);
  try {
    await migrate(db);
    if (db.dialect === "sqlite") db.db.exec(USER_TABLE_SQL.sqlite);
    else if (db.dialect === "mysql") await db.pool.query(USER_TABLE_SQL.mysql);
    else await pgOf(db).pool.query(USER_TABLE_SQL.postgresql);
  } finally {
    await db.close();
  }
}

export async function statusCounts(url: string): Promise<Record<string, number>> {
  const db = await open(url);
  try {
    const rows = await query<{ status: string; n: number | string }>(db, "SELECT status, count(*) AS n FROM mail_outbox GROUP BY status");
    return Object.fromEntries(rows.map((r) => [r.status, Number(r.n)]));
  } finally {
    await db.close();
  }
}

const ROWS_SQL = (db: Db) => `
SELECT m.message_id, m.status, m.uncertain_handoffs, m.last_error, m.mta_response,
       ${asText(db, "m.rejected")} AS rejected, m.idempotency_key, m.attempts,
       (SELECT max(a.response_code) FROM mail_outbox_attempt a WHERE a.email_id = m.id AND a.outcome = 'permanent') AS permanent_code,
       (SELECT count(*) FROM mail_outbox_attempt a WHERE a.email_id = m.id AND a.error_code = 'ETIMEDOUT') AS timeouts
FROM mail_outbox m`;

interface RawRow {
  message_id: string;
  status: string;
  uncertain_handoffs: number;
  last_error: string | null;
  mta_response: string | null;
  rejected: string | null;
  idempotency_key: string | null;
  attempts: number;
  permanent_code: number | null;
  timeouts: number | string;
}

export async function readRows(url: string): Promise<RowFact[]> {
  const db = await open(url);
  try {
    const rows = await query<RawRow>(db, ROWS_SQL(db));
    return rows.map((r) => ({
      messageId: r.message_id,
      status: r.status,
      uncertainHandoffs: Number(r.uncertain_handoffs),
      lastError: r.last_error,
      mtaResponse: r.mta_response,
      rejected: r.rejected ? (JSON.parse(r.rejected) as { recipient: string; response: string | null }[]) : null,
      idempotencyKey: r.idempotency_key,
      attempts: Number(r.attempts),
      permanentCode: r.permanent_code === null ? null : Number(r.permanent_code),
      timeouts: Number(r.timeouts),
    }));
  } finally {
    await db.close();
  }
}

/** Attempts by outcome and error code, for the report. */
export async function attemptSummary(url: string): Promise<Record<string, number>> {
  const db = await open(url);
  try {
    const rows = await query<{ outcome: string; code: string | null; n: number | string }>(
      db,
      `SELECT outcome, coalesce(error_code, ${asText(db, "response_code")}) AS code, count(*) AS n FROM mail_outbox_attempt GROUP BY outcome, coalesce(error_code, ${asText(db, "response_code")})`,
    );
    return Object.fromEntries(rows.map((r) => [`${r.outcome}${r.code ? ` ${r.code}` : ""}`, Number(r.n)]));
  } finally {
    await db.close();
  }
}
