/**
 * What migrate, inspectSchema and doctor ask MySQL/MariaDB about its schema: the outbox tables'
 * shape from information_schema, the recorded migrations, and the migration "transaction". Side
 * by side with ../postgres/schema-sql.ts.
 *
 * MySQL commits each DDL statement on its own (CREATE TABLE, ALTER TABLE, CREATE INDEX cannot be
 * rolled back), so a migration that fails or is interrupted halfway keeps what it created. Three
 * things make that safe: migrate records the migration as `started` before its first statement
 * (`recordStarted`), so the next run resumes it instead of taking the half-made tables for Prisma
 * Migrate's; the migration runs statement by statement, each one skipped when what it creates
 * already exists (`exec`), so the resumed run does only what is left; and a named lock
 * (`GET_LOCK`), held for the whole step on one connection, makes a second migrating process wait
 * and then find the work done.
 */
import { createHash } from "node:crypto";
import type mariadb from "mariadb";
import { MIGRATIONS_TABLE, OUTBOX_TABLE_NAMES, statements } from "../../migrations.js";
import { SchemaError } from "../../errors.js";
import type { ColumnKind, LiveShape, RecordedMigrations, SchemaTransaction } from "../../store.js";
import type { Queryable } from "./conn.js";

/**
 * The type families `readShape` reports for the outbox's columns. information_schema's DATA_TYPE
 * is folded so that what the outbox can work with compares equal: `varchar`, `text`, `mediumtext`
 * are all `text`; a JSON column is `json` on MySQL 8 and, on MariaDB (where JSON is an alias of
 * LONGTEXT with a `json_valid` CHECK), a `longtext` with that check. Other types are reported as
 * DATA_TYPE names them, so a wrong type shows as itself ("has type datetime, expected int").
 */
export const COLUMN_TYPES: Readonly<Record<ColumnKind, string>> = {
  id: "char",
  text: "text",
  int: "int",
  bigint: "bigint",
  float: "double",
  json: "json",
  bytes: "longblob",
  time: "datetime",
};

/** MySQL's "Unknown database". */
const ER_BAD_DB_ERROR = 1049;

/** How long a migrating process waits for another one's migration lock before it gives up. */
const MIGRATION_LOCK_TIMEOUT_S = 600;

/** DATA_TYPE -> the family in COLUMN_TYPES (see there). */
function typeFamily(dataType: string, jsonChecked: boolean): string {
  const t = dataType.toLowerCase();
  if (t === "json" || (t === "longtext" && jsonChecked)) return "json";
  if (t === "varchar" || t === "text" || t === "tinytext" || t === "mediumtext" || t === "longtext") return "text";
  return t;
}

export async function readShape(q: Queryable, database: string): Promise<LiveShape> {
  const tables: { TABLE_NAME: string }[] = await q.query(
    `SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME IN (?)`,
    [database, OUTBOX_TABLE_NAMES],
  );
  const columns: { TABLE_NAME: string; COLUMN_NAME: string; DATA_TYPE: string; IS_NULLABLE: string; COLUMN_DEFAULT: string | null; JSON_CHECKED: number }[] = await q.query(
    // MariaDB reports a JSON column as LONGTEXT with a column-level CHECK (json_valid(`col`)) named after it.
    `SELECT c.TABLE_NAME, c.COLUMN_NAME, c.DATA_TYPE, c.IS_NULLABLE, c.COLUMN_DEFAULT,
            EXISTS (SELECT 1 FROM information_schema.CHECK_CONSTRAINTS k
                     WHERE k.CONSTRAINT_SCHEMA = c.TABLE_SCHEMA AND k.TABLE_NAME = c.TABLE_NAME
                       AND k.CHECK_CLAUSE = CONCAT('json_valid(\`', c.COLUMN_NAME, '\`)')) AS JSON_CHECKED
       FROM information_schema.COLUMNS c
      WHERE c.TABLE_SCHEMA = ? AND c.TABLE_NAME IN (?)`,
    [database, OUTBOX_TABLE_NAMES],
  );
  const indexes: { INDEX_NAME: string }[] = await q.query(
    `SELECT DISTINCT INDEX_NAME FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = ? AND TABLE_NAME IN (?) AND INDEX_NAME <> 'PRIMARY'`,
    [database, OUTBOX_TABLE_NAMES],
  );
  const fk: { CONSTRAINT_NAME: string; TABLE_NAME: string; CASCADE: number }[] = await q.query(
    `SELECT r.CONSTRAINT_NAME, r.TABLE_NAME,
            (r.REFERENCED_TABLE_NAME = 'mail_outbox' AND r.DELETE_RULE = 'CASCADE'
              AND EXISTS (SELECT 1 FROM information_schema.KEY_COLUMN_USAGE u
                           WHERE u.CONSTRAINT_SCHEMA = r.CONSTRAINT_SCHEMA AND u.TABLE_NAME = r.TABLE_NAME AND u.CONSTRAINT_NAME = r.CONSTRAINT_NAME
                             AND u.COLUMN_NAME = 'email_id' AND u.REFERENCED_COLUMN_NAME = 'id')) AS \`CASCADE\`
       FROM information_schema.REFERENTIAL_CONSTRAINTS r
      WHERE r.CONSTRAINT_SCHEMA = ? AND r.TABLE_NAME IN (?)`,
    [database, OUTBOX_TABLE_NAMES],
  );
  return {
    tables: new Set(tables.map((r) => r.TABLE_NAME)),
    columns: columns.map((r) => ({
      table: r.TABLE_NAME,
      column: r.COLUMN_NAME,
      type: typeFamily(r.DATA_TYPE, Number(r.JSON_CHECKED) === 1),
      nullable: r.IS_NULLABLE === "YES",
      // MariaDB says 'NULL' (the string) for DEFAULT NULL; no default at all is SQL NULL.
      hasDefault: r.COLUMN_DEFAULT !== null,
    })),
    indexes: new Set(indexes.map((r) => r.INDEX_NAME)),
    cascadeFk: fk.some((r) => Number(r.CASCADE) === 1 && r.TABLE_NAME === "mail_outbox_attempt"),
    cascadeFkTables: new Set(fk.filter((r) => Number(r.CASCADE) === 1 && r.TABLE_NAME !== "mail_outbox_attempt").map((r) => r.TABLE_NAME)),
    constraints: new Set(fk.map((r) => r.CONSTRAINT_NAME)),
    // No triggers or functions: relays poll.
    routines: new Set(),
  };
}

export async function readRecorded(q: Queryable, database: string): Promise<RecordedMigrations> {
  const found: { TABLE_NAME: string }[] = await q.query(
    `SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME IN (?)`,
    [database, [MIGRATIONS_TABLE, "mail_outbox"]],
  );
  const has = (name: string) => found.some((r) => r.TABLE_NAME === name);
  let versions: Map<string, string> | null = null;
  if (has(MIGRATIONS_TABLE)) {
    const v: { version: string; kind: string }[] = await q.query(`SELECT version, kind FROM ${MIGRATIONS_TABLE}`);
    versions = new Map(v.map((x) => [x.version, x.kind]));
  }
  return { versions, outboxExists: has("mail_outbox") };
}

/** `started`: written before a migration's first statement, replaced by `applied` after its last (see the module comment). */
export async function createMigrationsTable(q: Queryable): Promise<void> {
  await q.query(`CREATE TABLE IF NOT EXISTS ${MIGRATIONS_TABLE} (
    version VARCHAR(64) NOT NULL PRIMARY KEY,
    applied_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    kind VARCHAR(16) NOT NULL DEFAULT 'applied' CHECK (kind IN ('applied', 'baseline', 'started'))
  ) DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin`);
}

/** A resumed migration is already recorded as started: the row stays as it is. */
export async function recordStarted(q: Queryable, version: string): Promise<void> {
  await q.query(`INSERT INTO ${MIGRATIONS_TABLE} (version, kind) VALUES (?, 'started') ON DUPLICATE KEY UPDATE version = version`, [version]);
}

export async function recordMigration(q: Queryable, version: string, kind: "applied" | "baseline"): Promise<void> {
  await q.query(`INSERT INTO ${MIGRATIONS_TABLE} (version, kind) VALUES (?, ?) ON DUPLICATE KEY UPDATE kind = ?, applied_at = CURRENT_TIMESTAMP(3)`, [version, kind, kind]);
}

/**
 * Whether what a migration statement creates already exists (a table, an index, a foreign key, a
 * column), so a resumed migration skips it. Statements of other forms are never skipped.
 */
export async function alreadyCreated(q: Queryable, database: string, stmt: string): Promise<boolean> {
  let x: RegExpExecArray | null;
  let rows: unknown[];
  if ((x = /^CREATE TABLE (?:IF NOT EXISTS )?`(\w+)`/i.exec(stmt))) {
    rows = await q.query(`SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?`, [database, x[1]]);
  } else if ((x = /^CREATE (?:UNIQUE )?INDEX `(\w+)` ON `(\w+)`/i.exec(stmt))) {
    rows = await q.query(`SELECT 1 FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND INDEX_NAME = ?`, [database, x[2], x[1]]);
  } else if ((x = /^ALTER TABLE `(\w+)` ADD CONSTRAINT `(\w+)`/i.exec(stmt))) {
    rows = await q.query(`SELECT 1 FROM information_schema.TABLE_CONSTRAINTS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND CONSTRAINT_NAME = ?`, [database, x[1], x[2]]);
  } else if ((x = /^ALTER TABLE `(\w+)` ADD COLUMN `(\w+)`/i.exec(stmt))) {
    rows = await q.query(`SELECT 1 FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND COLUMN_NAME = ?`, [database, x[1], x[2]]);
  } else {
    return false;
  }
  return rows.length > 0;
}

/** The GET_LOCK name for a database's migrations (MySQL allows 64 characters: a long database name is hashed). */
export function migrationLockName(database: string): string {
  const name = `prisma-mail-outbox migrate ${database}`;
  return name.length <= 64 ? name : `prisma-mail-outbox migrate #${createHash("sha256").update(database).digest("hex").slice(0, 32)}`;
}

export async function getMigrationLock(conn: mariadb.PoolConnection, name: string): Promise<boolean> {
  const rows: { got: number | null }[] = await conn.query(`SELECT GET_LOCK(?, ?) AS got`, [name, MIGRATION_LOCK_TIMEOUT_S]);
  return Number(rows[0]?.got) === 1;
}

export async function releaseMigrationLock(conn: mariadb.PoolConnection, name: string): Promise<void> {
  await conn.query(`SELECT RELEASE_LOCK(?)`, [name]);
}

/**
 * Run `fn` on one connection holding the database's migration lock (`GET_LOCK`), so two processes
 * migrating at once queue. Not a transaction: MySQL commits each DDL statement (see the module
 * comment), and each statement of a migration is skipped when what it creates exists already.
 */
export async function schemaTransaction<T>(pool: mariadb.Pool, database: string, fn: (tx: SchemaTransaction) => Promise<T>): Promise<T> {
  const conn = await pool.getConnection().catch((err: unknown) => {
    // What the server said (the pool reports a refusal at once, conn.ts), or the cause of the
    // pool's "pool timeout". Unlike a PostgreSQL schema, the database is not created here: its
    // character set and owner are the operator's choice.
    const e = err as { errno?: number; cause?: { errno?: number } };
    if (e.errno === ER_BAD_DB_ERROR || e.cause?.errno === ER_BAD_DB_ERROR) {
      throw new SchemaError(
        `The database ${database} does not exist on the server: create it (CREATE DATABASE \`${database}\` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci), then run migrate again.`,
        { cause: err },
      );
    }
    throw err;
  });
  const lock = migrationLockName(database);
  let broken = false;
  try {
    if (!(await getMigrationLock(conn, lock))) {
      throw new SchemaError(
        `Another process has held the migration lock of database ${database} (GET_LOCK('${lock}')) for ${MIGRATION_LOCK_TIMEOUT_S} s; SELECT IS_USED_LOCK('${lock}') gives its connection id (see SHOW PROCESSLIST): let it finish or end it, then run migrate again.`,
      );
    }
    try {
      return await fn({
        read: async () => ({ shape: await readShape(conn, database), recorded: await readRecorded(conn, database) }),
        exec: async (sql) => {
          for (const stmt of statements(sql)) {
            if (!(await alreadyCreated(conn, database, stmt))) await conn.query(stmt);
          }
        },
        ensureMigrationsTable: () => createMigrationsTable(conn),
        recordStarted: (version) => recordStarted(conn, version),
        record: (version, kind) => recordMigration(conn, version, kind),
        // Foreign keys are checked at each statement.
        danglingForeignKeys: async () => 0,
      });
    } finally {
      await releaseMigrationLock(conn, lock).catch(() => {
        broken = true;
      });
    }
  } finally {
    // A connection that could not release the lock is closed, which releases it.
    if (broken) await conn.destroy();
    else await conn.release().catch(() => {});
  }
}
