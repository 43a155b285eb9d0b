/**
 * What migrate, inspectSchema and doctor ask PostgreSQL about its schema: the outbox tables'
 * shape from the catalog, the recorded migrations, and the migration transaction (one advisory
 * lock per schema, so two processes migrating at once queue). Side by side with ../sqlite/schema-sql.ts.
 */
import type pg from "pg";
import { MIGRATIONS_TABLE, OUTBOX_TABLE_NAMES } from "../../migrations.js";
import type { ColumnKind, LiveShape, RecordedMigrations, SchemaTransaction } from "../../store.js";

type Queryable = Pick<pg.Pool, "query"> | pg.PoolClient;

/** How PostgreSQL's information_schema names the outbox's column types. */
export const COLUMN_TYPES: Readonly<Record<ColumnKind, string>> = {
  id: "uuid",
  text: "text",
  int: "integer",
  bigint: "bigint",
  float: "double precision",
  json: "jsonb",
  bytes: "bytea",
  time: "timestamp with time zone",
};

/** Quote an SQL identifier (schema names only; table and column names are fixed). */
export function quoteIdent(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}

export async function readShape(q: Queryable, schema: string): Promise<LiveShape> {
  const tables = await q.query<{ table_name: string }>(
    `SELECT table_name FROM information_schema.tables WHERE table_schema = $1 AND table_name = ANY($2::text[])`,
    [schema, OUTBOX_TABLE_NAMES],
  );
  const columns = await q.query<{ table_name: string; column_name: string; data_type: string; is_nullable: string; column_default: string | null }>(
    `SELECT table_name, column_name, data_type, is_nullable, column_default FROM information_schema.columns
     WHERE table_schema = $1 AND table_name = ANY($2::text[])`,
    [schema, OUTBOX_TABLE_NAMES],
  );
  const indexes = await q.query<{ indexname: string }>(
    `SELECT indexname FROM pg_indexes WHERE schemaname = $1 AND tablename = ANY($2::text[])`,
    [schema, OUTBOX_TABLE_NAMES],
  );
  const fk = await q.query<{ conname: string; relname: string; cascade: boolean }>(
    `SELECT c.conname, t.relname, (c.contype = 'f' AND c.confdeltype = 'c' AND r.relname = 'mail_outbox') AS cascade
       FROM pg_constraint c
       JOIN pg_class t ON t.oid = c.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace
       LEFT JOIN pg_class r ON r.oid = c.confrelid
     WHERE n.nspname = $1 AND t.relname IN ('mail_outbox_attempt', 'mail_outbox_delivery')`,
    [schema],
  );
  const routines = await q.query<{ name: string }>(
    `SELECT 'trigger:' || g.tgname AS name FROM pg_trigger g JOIN pg_class t ON t.oid = g.tgrelid JOIN pg_namespace n ON n.oid = t.relnamespace
      WHERE n.nspname = $1 AND NOT g.tgisinternal
     UNION ALL
     SELECT 'function:' || p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = $1`,
    [schema],
  );
  return {
    tables: new Set(tables.rows.map((r) => r.table_name)),
    columns: columns.rows.map((r) => ({
      table: r.table_name,
      column: r.column_name,
      type: r.data_type,
      nullable: r.is_nullable === "YES",
      hasDefault: r.column_default !== null,
    })),
    indexes: new Set(indexes.rows.map((r) => r.indexname)),
    cascadeFk: fk.rows.some((r) => r.cascade && r.relname === "mail_outbox_attempt"),
    cascadeFkTables: new Set(fk.rows.filter((r) => r.cascade && r.relname !== "mail_outbox_attempt").map((r) => r.relname)),
    constraints: new Set(fk.rows.map((r) => r.conname)),
    routines: new Set(routines.rows.map((r) => r.name)),
  };
}

export async function readRecorded(q: Queryable, schema: string): Promise<RecordedMigrations> {
  const r = await q.query<{ migrations: string | null; outbox: string | null }>(
    `SELECT to_regclass(format('%I.%I', $1::text, $2::text))::text AS migrations,
            to_regclass(format('%I.%I', $1::text, 'mail_outbox'))::text AS outbox`,
    [schema, MIGRATIONS_TABLE],
  );
  const row = r.rows[0];
  let versions: Map<string, string> | null = null;
  if (row?.migrations) {
    const v = await q.query<{ version: string; kind: string }>(`SELECT version, kind FROM ${quoteIdent(schema)}.${MIGRATIONS_TABLE}`);
    versions = new Map(v.rows.map((x) => [x.version, x.kind]));
  }
  return { versions, outboxExists: Boolean(row?.outbox) };
}

export async function createMigrationsTable(q: Queryable): Promise<void> {
  await q.query(`CREATE TABLE IF NOT EXISTS ${MIGRATIONS_TABLE} (
    version text PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now(),
    kind text NOT NULL DEFAULT 'applied' CHECK (kind IN ('applied', 'baseline'))
  )`);
}

export async function recordMigration(q: Queryable, version: string, kind: "applied" | "baseline"): Promise<void> {
  await q.query(`INSERT INTO ${MIGRATIONS_TABLE} (version, kind) VALUES ($1, $2)`, [version, kind]);
}

/** Run `fn` in a transaction holding the per-schema migration lock, with search_path on the schema. */
export async function schemaTransaction<T>(pool: pg.Pool, schema: string, fn: (tx: SchemaTransaction) => Promise<T>): Promise<T> {
  const client = await pool.connect();
  let broken = false;
  // While checked out, pg-pool does not listen for the client's errors: a connection the server
  // ends meanwhile would emit an unhandled 'error' and end the process. The query fails instead.
  const onError = () => {
    broken = true;
  };
  client.on("error", onError);
  try {
    await client.query("BEGIN");
    // Two init containers (or relays) migrating at once queue here instead of racing.
    await client.query("SELECT pg_advisory_xact_lock(hashtext($1))", [`prisma-mail-outbox migrate ${schema}`]);
    await client.query(`CREATE SCHEMA IF NOT EXISTS ${quoteIdent(schema)}`);
    await client.query(`SET LOCAL search_path TO ${quoteIdent(schema)}`);
    const result = await fn({
      read: async () => ({ shape: await readShape(client, schema), recorded: await readRecorded(client, schema) }),
      exec: async (sql) => {
        await client.query(sql);
      },
      ensureMigrationsTable: () => createMigrationsTable(client),
      record: (version, kind) => recordMigration(client, version, kind),
      // Foreign keys are checked at each statement.
      danglingForeignKeys: async () => 0,
    });
    await client.query("COMMIT");
    return result;
  } catch (err) {
    await client.query("ROLLBACK").catch(() => {
      broken = true;
    });
    throw err;
  } finally {
    client.removeListener("error", onError);
    client.release(broken);
  }
}
