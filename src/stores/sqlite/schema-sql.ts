/**
 * What migrate, inspectSchema and doctor ask SQLite about its schema: the outbox tables' shape
 * from `sqlite_master` and the table pragmas, the recorded migrations, and the migration
 * transaction (BEGIN IMMEDIATE, so a second migrating process waits for the lock and then sees
 * the record). Side by side with ../postgres/schema-sql.ts.
 */
import type Database from "better-sqlite3";
import { MIGRATIONS_TABLE, OUTBOX_TABLE_NAMES } from "../../migrations.js";
import type { ColumnKind, LiveColumn, LiveShape, RecordedMigrations, SchemaTransaction } from "../../store.js";
import { toSqliteTime } from "./time.js";

type Db = Database.Database;

/** How SQLite's `pragma_table_info` names the outbox's column types (as Prisma's migrations declare them). */
export const COLUMN_TYPES: Readonly<Record<ColumnKind, string>> = {
  id: "TEXT",
  text: "TEXT",
  int: "INTEGER",
  bigint: "BIGINT",
  float: "REAL",
  json: "JSONB",
  bytes: "BLOB",
  time: "DATETIME",
};

export function readShape(d: Db): LiveShape {
  const tables = new Set(
    (
      d.prepare(`SELECT name FROM sqlite_master WHERE type = 'table' AND name IN (SELECT value FROM json_each(?))`).all(JSON.stringify(OUTBOX_TABLE_NAMES)) as {
        name: string;
      }[]
    ).map((r) => r.name),
  );
  const columns: LiveColumn[] = [];
  const indexes = new Set<string>();
  for (const table of tables) {
    for (const c of d.prepare(`SELECT name, type, "notnull" AS nn, dflt_value, pk FROM pragma_table_info(?)`).all(table) as {
      name: string;
      type: string;
      nn: number;
      dflt_value: unknown;
      pk: number;
    }[]) {
      columns.push({ table, column: c.name, type: c.type, nullable: c.nn === 0 && c.pk === 0, hasDefault: c.dflt_value !== null });
    }
    for (const i of d.prepare(`SELECT name FROM pragma_index_list(?)`).all(table) as { name: string }[]) indexes.add(i.name);
  }
  const cascades = (table: string) =>
    tables.has(table) &&
    (d.prepare(`SELECT "table", "from", "to", on_delete FROM pragma_foreign_key_list(?)`).all(table) as {
      table: string;
      from: string;
      to: string;
      on_delete: string;
    }[]).some((f) => f.table === "mail_outbox" && f.from === "email_id" && f.to === "id" && f.on_delete === "CASCADE");
  const cascadeFk = cascades("mail_outbox_attempt");
  const cascadeFkTables = new Set(cascades("mail_outbox_delivery") ? ["mail_outbox_delivery"] : []);
  const routines = new Set((d.prepare(`SELECT 'trigger:' || name AS name FROM sqlite_master WHERE type = 'trigger'`).all() as { name: string }[]).map((r) => r.name));
  return { tables, columns, indexes, cascadeFk, cascadeFkTables, constraints: new Set(), routines };
}

export function readRecorded(d: Db): RecordedMigrations {
  const has = (name: string) => d.prepare(`SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?`).get(name) !== undefined;
  const versions = has(MIGRATIONS_TABLE)
    ? new Map((d.prepare(`SELECT version, kind FROM ${MIGRATIONS_TABLE}`).all() as { version: string; kind: string }[]).map((r) => [r.version, r.kind]))
    : null;
  return { versions, outboxExists: has("mail_outbox") };
}

export function createMigrationsTable(d: Db): void {
  d.exec(`CREATE TABLE IF NOT EXISTS ${MIGRATIONS_TABLE} (
    version TEXT NOT NULL PRIMARY KEY,
    applied_at TEXT NOT NULL,
    kind TEXT NOT NULL DEFAULT 'applied' CHECK (kind IN ('applied', 'baseline'))
  )`);
}

export function recordMigration(d: Db, version: string, kind: "applied" | "baseline"): void {
  d.prepare(`INSERT INTO ${MIGRATIONS_TABLE} (version, applied_at, kind) VALUES (?, ?, ?)`).run(version, toSqliteTime(new Date()), kind);
}

/** Rows whose foreign key points nowhere. */
export function danglingForeignKeys(d: Db): number {
  return (d.pragma("foreign_key_check") as unknown[]).length;
}

/**
 * Run `fn` in one IMMEDIATE transaction. Prisma's SQLite migrations rebuild a table to change it
 * (create new, copy, drop old, rename); with foreign keys on, dropping mail_outbox would
 * cascade-delete every attempt row, and the pragma cannot change inside a transaction: it is off
 * around the transaction, and `danglingForeignKeys` checks the keys before the commit instead.
 * Every call on `tx` is synchronous underneath, so nothing else runs on this connection meanwhile.
 */
export async function schemaTransaction<T>(d: Db, fn: (tx: SchemaTransaction) => Promise<T>): Promise<T> {
  const foreignKeys = d.pragma("foreign_keys", { simple: true }) as number;
  d.pragma("foreign_keys = OFF");
  try {
    d.exec("BEGIN IMMEDIATE");
    try {
      const result = await fn({
        read: async () => ({ shape: readShape(d), recorded: readRecorded(d) }),
        exec: async (sql) => {
          d.exec(sql);
        },
        ensureMigrationsTable: async () => createMigrationsTable(d),
        record: async (version, kind) => recordMigration(d, version, kind),
        danglingForeignKeys: async () => danglingForeignKeys(d),
      });
      d.exec("COMMIT");
      return result;
    } catch (err) {
      if (d.inTransaction) d.exec("ROLLBACK");
      throw err;
    }
  } finally {
    d.pragma(`foreign_keys = ${foreignKeys ? "ON" : "OFF"}`);
  }
}
