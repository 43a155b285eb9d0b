/**
 * Creates and upgrades the outbox tables with the versioned SQL shipped in `migrations/<dialect>/`
 * (generated from `prisma/<dialect>/outbox.prisma` by `npm run gen:sql`), and checks their shape
 * for `doctor` and the relay.
 */
import { readFile, readdir } from "node:fs/promises";
import { performance } from "node:perf_hooks";
import type pg from "pg";
import type { Db, Dialect, PostgresDb, SqliteDb } from "./db.js";
import { quoteIdent, toSqliteTime } from "./db.js";
import { SchemaError } from "./errors.js";

/** The table that records which shipped migrations a database has run. */
export const MIGRATIONS_TABLE = "mail_outbox_migrations";

/** One shipped migration file. */
export interface Migration {
  /** The file name without `.sql`, e.g. `0001_init`. Recorded in `mail_outbox_migrations.version`. */
  readonly version: string;
  readonly sql: string;
  /**
   * Also run when the tables were created by Prisma Migrate (the file says
   * `-- mail-outbox: apply-on-baseline`): idempotent statements about things Prisma's models do not
   * describe, such as the PostgreSQL notify trigger.
   */
  readonly applyOnBaseline: boolean;
}

export interface MigrateOptions {
  /** Report what would be done, change nothing. @default false */
  readonly dryRun?: boolean;
  /** Receives one line per migration (applied, already applied, baselined, or "would ..." in a dry run). @default no logging */
  readonly log?: (line: string) => void;
}

export interface MigrateResult {
  /** Versions whose SQL ran in this call (in a dry run: would run), in order. */
  applied: string[];
  /** Versions already recorded before this call. */
  alreadyApplied: string[];
  /**
   * Versions recorded without running their SQL because the tables already had their shape
   * (created by Prisma Migrate; see {@link migrate}). In a dry run: would be recorded.
   */
  baselined: string[];
  /**
   * Objects that a recorded migration creates but the database had lost (a dropped trigger,
   * index or table), recreated in this call from the migration's own statements. In a dry run:
   * would be recreated. One line each, e.g. `trigger mail_outbox_notify (0002_notify)`.
   */
  repaired: string[];
}

/**
 * One thing wrong with the outbox tables, as {@link inspectSchema} reports it (and `doctor`
 * prints it).
 */
export interface SchemaProblem {
  readonly kind: "table" | "column" | "index" | "foreign-key" | "trigger" | "migration";
  /** What is wrong, naming the table, column, index or trigger. */
  readonly message: string;
  /** What to do about it: the command to run, or the change to make by hand. */
  readonly fix: string;
  /** `mail-outbox migrate` fixes it (it recreates what a recorded migration created and the database lost). */
  readonly repairable: boolean;
  /** The relay cannot work with it (a table or column it reads or writes is missing or of another type): it refuses to start. */
  readonly blocksRelay: boolean;
  /** The table concerned. */
  readonly table: string;
}

const MIGRATIONS_DIR = new URL("../migrations/", import.meta.url);

/**
 * The shipped migrations for a dialect, in order. They are found relative to this module
 * (`../migrations/`), which holds from `src/` under tsx and from `dist/` in the published package.
 */
export async function loadMigrations(dialect: Dialect): Promise<Migration[]> {
  const dir = new URL(`${dialect}/`, MIGRATIONS_DIR);
  let names: string[];
  try {
    names = (await readdir(dir)).filter((f) => /^\d{4}_[a-z0-9_]+\.sql$/.test(f)).sort();
  } catch (cause) {
    throw new SchemaError(`The migrations folder ${dir.pathname} cannot be read; reinstall prisma-mail-outbox.`, { cause });
  }
  return Promise.all(
    names.map(async (name) => {
      const sql = await readFile(new URL(name, dir), "utf8");
      return { version: name.slice(0, -4), sql, applyOnBaseline: /^-- mail-outbox: apply-on-baseline$/m.test(sql) };
    }),
  );
}

// ---------------------------------------------------------------------------------------------
// The shape the relay and enqueue() rely on. test/schema-drift.test.ts checks that a database
// migrated with the shipped SQL has exactly these columns and indexes, so this list cannot drift.

type ColumnKind = "id" | "text" | "int" | "json" | "bytes" | "time";

/** Expected columns: [kind, nullable]. */
const COLUMNS: Readonly<Record<"mail_outbox" | "mail_outbox_attempt", Readonly<Record<string, readonly [ColumnKind, boolean]>>>> = {
  mail_outbox: {
    id: ["id", false],
    message_id: ["text", false],
    status: ["text", false],
    priority: ["int", false],
    idempotency_key: ["text", true],
    envelope_from: ["text", false],
    envelope_to: ["json", false],
    subject: ["text", false],
    raw: ["bytes", false],
    size: ["int", false],
    metadata: ["json", true],
    attempts: ["int", false],
    max_attempts: ["int", false],
    send_at: ["time", false],
    next_attempt_at: ["time", false],
    lease_owner: ["text", true],
    lease_expires_at: ["time", true],
    last_error: ["text", true],
    mta_response: ["text", true],
    mta_queue_id: ["text", true],
    accepted: ["json", true],
    rejected: ["json", true],
    uncertain_handoffs: ["int", false],
    created_at: ["time", false],
    updated_at: ["time", false],
    sent_at: ["time", true],
  },
  mail_outbox_attempt: {
    id: ["id", false],
    email_id: ["id", false],
    attempt: ["int", false],
    relay: ["text", false],
    started_at: ["time", false],
    duration_ms: ["int", false],
    outcome: ["text", false],
    response: ["text", true],
    response_code: ["int", true],
    error_code: ["text", true],
    error: ["text", true],
    queue_id: ["text", true],
  },
};

const TYPE_NAMES: Readonly<Record<Dialect, Readonly<Record<ColumnKind, string>>>> = {
  postgresql: { id: "uuid", text: "text", int: "integer", json: "jsonb", bytes: "bytea", time: "timestamp with time zone" },
  sqlite: { id: "TEXT", text: "TEXT", int: "INTEGER", json: "JSONB", bytes: "BLOB", time: "DATETIME" },
};

/** Indexes by name (the names Prisma gives them from the models), with the columns they cover. */
const INDEXES: Readonly<Record<string, { readonly table: string; readonly unique: boolean }>> = {
  mail_outbox_message_id_key: { table: "mail_outbox", unique: true },
  mail_outbox_idempotency_key_key: { table: "mail_outbox", unique: true },
  mail_outbox_claim_idx: { table: "mail_outbox", unique: false },
  mail_outbox_lease_idx: { table: "mail_outbox", unique: false },
  mail_outbox_created_idx: { table: "mail_outbox", unique: false },
  mail_outbox_attempt_email_idx: { table: "mail_outbox_attempt", unique: false },
};

/** The columns (name, type as the database names it, nullable) that a migrated database has. */
export function expectedColumns(dialect: Dialect): { table: string; column: string; type: string; nullable: boolean }[] {
  return Object.entries(COLUMNS).flatMap(([table, cols]) =>
    Object.entries(cols).map(([column, [kind, nullable]]) => ({ table, column, type: TYPE_NAMES[dialect][kind], nullable })),
  );
}

/** The index names a migrated database has, by table. */
export function expectedIndexes(): { name: string; table: string; unique: boolean }[] {
  return Object.entries(INDEXES).map(([name, i]) => ({ name, ...i }));
}

interface LiveColumn {
  readonly table: string;
  readonly column: string;
  readonly type: string;
  readonly nullable: boolean;
  readonly hasDefault: boolean;
}

interface LiveShape {
  readonly tables: ReadonlySet<string>;
  readonly columns: readonly LiveColumn[];
  readonly indexes: ReadonlySet<string>;
  /** mail_outbox_attempt.email_id references mail_outbox(id) with ON DELETE CASCADE. */
  readonly cascadeFk: boolean;
  /** Names of the constraints on mail_outbox_attempt (PostgreSQL; empty on SQLite, whose keys have no names to add by). */
  readonly constraints: ReadonlySet<string>;
  /** Triggers and functions that exist among those the idempotent migrations create: `trigger:name`, `function:name`. */
  readonly routines: ReadonlySet<string>;
}

// ---------------------------------------------------------------------------------------------
// What the shipped migrations create, by name: the statements `migrate` runs again to repair a
// database that lost one of them (a dropped trigger, index or table). The table migrations are
// Prisma's generated SQL (one statement per object, each ending in `;` at the end of a line); the
// idempotent ones (`-- mail-outbox: apply-on-baseline`, PL/pgSQL bodies with `;` inside) are run
// again as a whole.

interface Catalog {
  /** table -> its CREATE TABLE statement */
  readonly tables: Map<string, { sql: string; version: string }>;
  /** "table.column" -> its definition as the migration writes it: `"lease_owner" TEXT` */
  readonly columns: Map<string, string>;
  readonly indexes: Map<string, { sql: string; version: string }>;
  /** constraint name -> ALTER TABLE ... ADD CONSTRAINT ... FOREIGN KEY (PostgreSQL) */
  readonly foreignKeys: Map<string, { sql: string; version: string }>;
  /** Idempotent migrations with the triggers and functions they create. */
  readonly idempotent: { readonly migration: Migration; readonly triggers: { name: string; table: string }[]; readonly functions: string[] }[];
}

function statements(sql: string): string[] {
  return sql
    .split("\n")
    .filter((line) => !line.trimStart().startsWith("--"))
    .join("\n")
    .split(/;[ \t]*(?:\n|$)/)
    .map((x) => x.trim())
    .filter((x) => x !== "");
}

function catalog(migrations: readonly Migration[]): Catalog {
  const c: Catalog = { tables: new Map(), columns: new Map(), indexes: new Map(), foreignKeys: new Map(), idempotent: [] };
  for (const m of migrations) {
    if (m.applyOnBaseline) {
      const triggers = [...m.sql.matchAll(/CREATE\s+TRIGGER\s+(?:IF\s+NOT\s+EXISTS\s+)?"?(\w+)"?[\s\S]*?\sON\s+"?(\w+)"?/gi)].map((x) => ({ name: x[1]!, table: x[2]! }));
      const functions = [...m.sql.matchAll(/CREATE\s+(?:OR\s+REPLACE\s+)?FUNCTION\s+"?(\w+)"?/gi)].map((x) => x[1]!);
      c.idempotent.push({ migration: m, triggers, functions });
      continue;
    }
    for (const stmt of statements(m.sql)) {
      let x: RegExpExecArray | null;
      if ((x = /^CREATE TABLE "(\w+)" \(([\s\S]*)\)$/.exec(stmt))) {
        const table = x[1]!;
        c.tables.set(table, { sql: stmt, version: m.version });
        for (const line of x[2]!.split("\n")) {
          const col = /^\s*"(\w+)"\s+(.+?),?\s*$/.exec(line);
          if (col) c.columns.set(`${table}.${col[1]}`, `"${col[1]}" ${col[2]}`);
        }
      } else if ((x = /^ALTER TABLE "(\w+)" ADD COLUMN ("(\w+)" .+)$/s.exec(stmt))) {
        c.columns.set(`${x[1]}.${x[3]}`, x[2]!);
      } else if ((x = /^CREATE (?:UNIQUE )?INDEX "(\w+)"/.exec(stmt))) {
        c.indexes.set(x[1]!, { sql: stmt, version: m.version });
      } else if ((x = /^ALTER TABLE "\w+" ADD CONSTRAINT "(\w+)" FOREIGN KEY/.exec(stmt))) {
        c.foreignKeys.set(x[1]!, { sql: stmt, version: m.version });
      }
    }
  }
  return c;
}

/**
 * A column `ALTER TABLE ... ADD COLUMN` can add to a table that holds rows, on both databases:
 * nullable, or NOT NULL with a constant default. (A NOT NULL column without one needs a value for
 * every existing row, which only the operator can choose.)
 */
function addableColumn(definition: string | undefined): definition is string {
  if (definition === undefined || /PRIMARY KEY|REFERENCES/i.test(definition)) return false;
  if (!/NOT NULL/i.test(definition)) return true;
  return /DEFAULT\s+(?:-?\d+(?:\.\d+)?|'(?:[^']|'')*')\s*$/i.test(definition);
}

interface ProblemContext {
  readonly dialect: Dialect;
  /** The statements of every shipped migration. */
  readonly catalog: Catalog;
  /**
   * Who made the tables: "fresh" (nothing recorded, no outbox table: never set up; Prisma Migrate
   * may still be due to create them), "migrate" (`mail-outbox migrate` ran 0001_init), or
   * "prisma" (Prisma Migrate: 0001_init recorded as a baseline, or tables without a record).
   * `migrate` recreates lost tables, columns and indexes only in the first two cases: in tables
   * Prisma Migrate owns, a missing object may be one the user's Prisma migrations are still due to
   * add, and creating it would make that migration fail.
   */
  readonly owner: "fresh" | "migrate" | "prisma";
}

const MIGRATE = "run `mail-outbox migrate`";

function ownerOf(recorded: Recorded): ProblemContext["owner"] {
  const first = recorded.versions?.get("0001_init");
  if (first === "applied") return "migrate";
  if (first === "baseline" || recorded.outboxExists) return "prisma";
  return "fresh";
}

/** The fix for an object missing from tables that Prisma Migrate owns: a Prisma migration, or the statement by hand. */
function prismaFix(dialect: Dialect, sql: string | undefined): string {
  const statement = sql === undefined ? `the statements in migrations/${dialect}/0001_init.sql of prisma-mail-outbox` : sql.replace(/\s+/g, " ");
  return `your Prisma migrations own the outbox tables: restore it in a Prisma migration (\`npx prisma migrate dev --create-only\`, then add it), or run it by hand (\`npx prisma db execute --stdin\`): ${statement}`;
}

function shapeProblems(ctx: ProblemContext, live: LiveShape): SchemaProblem[] {
  const { dialect, catalog: cat } = ctx;
  const prisma = ctx.owner === "prisma";
  const problems: SchemaProblem[] = [];
  const models = `prisma/${dialect}/outbox.prisma`;
  const fixTable =
    ctx.owner === "fresh"
      ? `${MIGRATE}, or \`prisma migrate deploy\` when the outbox models (${models}) are in your Prisma migrations`
      : prisma
        ? prismaFix(dialect, undefined)
        : MIGRATE;
  for (const [table, cols] of Object.entries(COLUMNS)) {
    if (!live.tables.has(table)) {
      problems.push({ kind: "table", table, message: `table ${table} is missing`, fix: fixTable, repairable: !prisma && cat.tables.has(table), blocksRelay: true });
      continue;
    }
    const have = new Map(live.columns.filter((c) => c.table === table).map((c) => [c.column, c]));
    for (const [column, [kind, nullable]] of Object.entries(cols)) {
      const type = TYPE_NAMES[dialect][kind];
      const c = have.get(column);
      if (c === undefined) {
        const definition = cat.columns.get(`${table}.${column}`);
        const repairable = !prisma && addableColumn(definition);
        problems.push({
          kind: "column",
          table,
          message: `column ${table}.${column} is missing (expected ${type}${nullable ? "" : " NOT NULL"})`,
          fix: repairable
            ? MIGRATE
            : prisma && addableColumn(definition)
              ? prismaFix(dialect, `ALTER TABLE "${table}" ADD COLUMN ${definition}`)
              : `add it by hand, giving existing rows a value: ALTER TABLE "${table}" ADD COLUMN ${definition ?? `"${column}" ${type}`} DEFAULT <value>, then drop the default (see ${models}); or, if the outbox holds nothing you need, drop mail_outbox_attempt and mail_outbox and ${MIGRATE}`,
          repairable,
          blocksRelay: true,
        });
        continue;
      }
      if (c.type.toLowerCase() !== type.toLowerCase()) {
        problems.push({
          kind: "column",
          table,
          message: `column ${table}.${column} has type ${c.type}, expected ${type}`,
          fix: `change it to match ${models}`,
          repairable: false,
          blocksRelay: true,
        });
      }
      if (nullable && !c.nullable) {
        problems.push({
          kind: "column",
          table,
          message: `column ${table}.${column} is NOT NULL but the outbox writes NULL into it`,
          fix: dialect === "postgresql" ? `ALTER TABLE "${table}" ALTER COLUMN "${column}" DROP NOT NULL` : `drop its NOT NULL constraint (see ${models})`,
          repairable: false,
          blocksRelay: true,
        });
      }
    }
    for (const c of have.values()) {
      if (!(c.column in cols) && !c.nullable && !c.hasDefault) {
        problems.push({
          kind: "column",
          table,
          message: `column ${table}.${c.column} is not part of the outbox, NOT NULL and has no default, so inserts will fail`,
          fix: "give it a default or make it nullable",
          repairable: false,
          blocksRelay: false,
        });
      }
    }
  }
  for (const [name, { table }] of Object.entries(INDEXES)) {
    if (live.tables.has(table) && !live.indexes.has(name)) {
      const create = cat.indexes.get(name);
      const repairable = !prisma && create !== undefined;
      problems.push({ kind: "index", table, message: `index ${name} on ${table} is missing`, fix: repairable ? MIGRATE : prismaFix(dialect, create?.sql), repairable, blocksRelay: false });
    }
  }
  if (live.tables.has("mail_outbox") && live.tables.has("mail_outbox_attempt") && !live.cascadeFk) {
    const fk = [...cat.foreignKeys.keys()][0];
    const repairable = !prisma && fk !== undefined && !live.constraints.has(fk);
    problems.push({
      kind: "foreign-key",
      table: "mail_outbox_attempt",
      message: "mail_outbox_attempt.email_id has no foreign key to mail_outbox(id) with ON DELETE CASCADE",
      fix: repairable
        ? MIGRATE
        : prisma && fk !== undefined && !live.constraints.has(fk)
          ? prismaFix(dialect, cat.foreignKeys.get(fk)?.sql)
          : fk !== undefined
          ? `drop the constraint ${fk} (ALTER TABLE "mail_outbox_attempt" DROP CONSTRAINT "${fk}"), then ${MIGRATE}`
          : `recreate mail_outbox_attempt as ${models} describes it (SQLite adds a foreign key only with the table)`,
      repairable,
      blocksRelay: false,
    });
  }
  for (const { migration, triggers } of cat.idempotent) {
    for (const t of triggers) {
      if (!live.tables.has(t.table) || live.routines.has(`trigger:${t.name}`)) continue;
      const notify = t.name === "mail_outbox_notify";
      problems.push({
        kind: "trigger",
        table: t.table,
        message: notify
          ? `the notify trigger ${t.name} on ${t.table} is missing, so relays see new mail only when they poll`
          : `trigger ${t.name} on ${t.table} (migration ${migration.version}) is missing`,
        fix: notify ? `${MIGRATE}, or add prisma/postgresql/notify-trigger.sql to a Prisma migration` : MIGRATE,
        repairable: true,
        blocksRelay: false,
      });
    }
  }
  return problems;
}

/**
 * What `migrate` runs to give back a database what its recorded migrations created and it has
 * lost, in order: tables, columns that can be added to a table with rows, indexes, the foreign
 * key, and the idempotent migrations (the notify trigger) whose objects are gone.
 */
function repairPlan(cat: Catalog, live: LiveShape): { what: string; sql: string }[] {
  const plan: { what: string; sql: string }[] = [];
  const tables = new Set(live.tables);
  for (const table of Object.keys(COLUMNS)) {
    const create = cat.tables.get(table);
    if (!tables.has(table) && create) {
      plan.push({ what: `table ${table} (${create.version})`, sql: create.sql });
      tables.add(table);
    }
  }
  for (const [table, cols] of Object.entries(COLUMNS)) {
    if (!live.tables.has(table)) continue;
    const have = new Set(live.columns.filter((c) => c.table === table).map((c) => c.column));
    for (const column of Object.keys(cols)) {
      const definition = cat.columns.get(`${table}.${column}`);
      if (!have.has(column) && addableColumn(definition)) plan.push({ what: `column ${table}.${column}`, sql: `ALTER TABLE "${table}" ADD COLUMN ${definition}` });
    }
  }
  for (const [name, { table }] of Object.entries(INDEXES)) {
    const create = cat.indexes.get(name);
    if (tables.has(table) && !live.indexes.has(name) && create) plan.push({ what: `index ${name} (${create.version})`, sql: create.sql });
  }
  // A table created above gets its foreign key here (PostgreSQL) or with the table (SQLite).
  const fkLost = !live.cascadeFk || !live.tables.has("mail_outbox") || !live.tables.has("mail_outbox_attempt");
  if (fkLost && tables.has("mail_outbox") && tables.has("mail_outbox_attempt")) {
    for (const [name, add] of cat.foreignKeys) {
      if (!live.constraints.has(name)) plan.push({ what: `foreign key ${name} (${add.version})`, sql: add.sql });
    }
  }
  for (const { migration, triggers, functions } of cat.idempotent) {
    const lost = [
      ...triggers.filter((t) => tables.has(t.table) && !live.routines.has(`trigger:${t.name}`)).map((t) => `trigger ${t.name}`),
      ...functions.filter((f) => !live.routines.has(`function:${f}`)).map((f) => `function ${f}()`),
    ];
    if (lost.length > 0) plan.push({ what: `${lost.join(", ")} (${migration.version})`, sql: migration.sql });
  }
  return plan;
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL

type PgQueryable = Pick<pg.Pool, "query"> | pg.PoolClient;

async function pgShape(q: PgQueryable, schema: string): Promise<LiveShape> {
  const tables = await q.query<{ table_name: string }>(
    `SELECT table_name FROM information_schema.tables WHERE table_schema = $1 AND table_name IN ('mail_outbox', 'mail_outbox_attempt')`,
    [schema],
  );
  const columns = await q.query<{ table_name: string; column_name: string; data_type: string; is_nullable: string; column_default: string | null }>(
    `SELECT table_name, column_name, data_type, is_nullable, column_default FROM information_schema.columns
     WHERE table_schema = $1 AND table_name IN ('mail_outbox', 'mail_outbox_attempt')`,
    [schema],
  );
  const indexes = await q.query<{ indexname: string }>(
    `SELECT indexname FROM pg_indexes WHERE schemaname = $1 AND tablename IN ('mail_outbox', 'mail_outbox_attempt')`,
    [schema],
  );
  const fk = await q.query<{ conname: string; cascade: boolean }>(
    `SELECT c.conname, (c.contype = 'f' AND c.confdeltype = 'c' AND r.relname = 'mail_outbox') AS cascade
       FROM pg_constraint c
       JOIN pg_class t ON t.oid = c.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace
       LEFT JOIN pg_class r ON r.oid = c.confrelid
     WHERE n.nspname = $1 AND t.relname = 'mail_outbox_attempt'`,
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
    cascadeFk: fk.rows.some((r) => r.cascade),
    constraints: new Set(fk.rows.map((r) => r.conname)),
    routines: new Set(routines.rows.map((r) => r.name)),
  };
}

interface Recorded {
  /** version -> kind ("applied" | "baseline"); null when the migrations table does not exist. */
  readonly versions: Map<string, string> | null;
  readonly outboxExists: boolean;
}

async function pgRecorded(q: PgQueryable, schema: string): Promise<Recorded> {
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

/** Run `fn` in a transaction holding the per-schema migration lock, with search_path on the schema. */
async function pgLocked<T>(db: PostgresDb, fn: (client: pg.PoolClient) => Promise<T>): Promise<T> {
  const client = await db.pool.connect();
  let broken = false;
  try {
    await client.query("BEGIN");
    // Two init containers (or relays) migrating at once queue here instead of racing.
    await client.query("SELECT pg_advisory_xact_lock(hashtext($1))", [`prisma-mail-outbox migrate ${db.schema}`]);
    await client.query(`CREATE SCHEMA IF NOT EXISTS ${quoteIdent(db.schema)}`);
    await client.query(`SET LOCAL search_path TO ${quoteIdent(db.schema)}`);
    const result = await fn(client);
    await client.query("COMMIT");
    return result;
  } catch (err) {
    await client.query("ROLLBACK").catch(() => {
      broken = true;
    });
    throw err;
  } finally {
    client.release(broken);
  }
}

// ---------------------------------------------------------------------------------------------
// SQLite

function sqliteShape(db: SqliteDb): LiveShape {
  const d = db.db;
  const tables = new Set(
    (d.prepare(`SELECT name FROM sqlite_master WHERE type = 'table' AND name IN ('mail_outbox', 'mail_outbox_attempt')`).all() as { name: string }[]).map(
      (r) => r.name,
    ),
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
  const cascadeFk =
    tables.has("mail_outbox_attempt") &&
    (d.prepare(`SELECT "table", "from", "to", on_delete FROM pragma_foreign_key_list('mail_outbox_attempt')`).all() as {
      table: string;
      from: string;
      to: string;
      on_delete: string;
    }[]).some((f) => f.table === "mail_outbox" && f.from === "email_id" && f.to === "id" && f.on_delete === "CASCADE");
  const routines = new Set((d.prepare(`SELECT 'trigger:' || name AS name FROM sqlite_master WHERE type = 'trigger'`).all() as { name: string }[]).map((r) => r.name));
  return { tables, columns, indexes, cascadeFk, constraints: new Set(), routines };
}

function sqliteRecorded(db: SqliteDb): Recorded {
  const d = db.db;
  const has = (name: string) => d.prepare(`SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?`).get(name) !== undefined;
  const versions = has(MIGRATIONS_TABLE)
    ? new Map((d.prepare(`SELECT version, kind FROM ${MIGRATIONS_TABLE}`).all() as { version: string; kind: string }[]).map((r) => [r.version, r.kind]))
    : null;
  return { versions, outboxExists: has("mail_outbox") };
}

// ---------------------------------------------------------------------------------------------

type Step = "already" | "apply" | "baseline";

/**
 * What to do with one migration, given what the database has recorded: "check" means the tables
 * were created by someone else (Prisma Migrate, from the models in `prisma/<dialect>/outbox.prisma`:
 * `mail_outbox` exists without a record of `0001_init`, or `0001_init` was recorded as a baseline),
 * so the migration is recorded as a baseline if the tables already have the expected shape.
 */
function plan(m: Migration, recorded: Recorded): "already" | "apply" | "check" {
  if (recorded.versions?.has(m.version)) return "already";
  const firstKind = recorded.versions?.get("0001_init");
  const ownedByPrismaMigrate = firstKind === "baseline" || (firstKind === undefined && recorded.outboxExists);
  return ownedByPrismaMigrate && !m.applyOnBaseline ? "check" : "apply";
}

function refusal(m: Migration, problems: readonly SchemaProblem[], dialect: Dialect, where: string): SchemaError {
  return new SchemaError(
    `The outbox tables in ${where} were not created by mail-outbox migrate (Prisma Migrate owns them) and do not match migration ${m.version}:\n` +
      problems.map((x) => `  - ${x.message}`).join("\n") +
      `\nBring them in line with the models in prisma/${dialect}/outbox.prisma (copy the models into your schema and run \`prisma migrate dev\`), then run migrate again. ` +
      `If the tables hold nothing you need, drop mail_outbox_attempt and mail_outbox and let migrate create them.`,
  );
}

function failed(version: string, where: string, cause: unknown): SchemaError {
  return new SchemaError(
    `Migration ${version} failed on ${where} and was rolled back (nothing of it was kept): ${(cause as Error)?.message ?? String(cause)}. Fix the cause and run migrate again.`,
    { cause },
  );
}

function repairFailed(what: string, where: string, cause: unknown): SchemaError {
  return new SchemaError(
    `Recreating ${what} on ${where} failed and was rolled back (nothing of the repair was kept): ${(cause as Error)?.message ?? String(cause)}. Fix the cause (\`mail-outbox doctor\` lists what is wrong) and run migrate again.`,
    { cause },
  );
}

/**
 * The migrations whose objects `migrate` may recreate: those it ran itself (recorded as
 * "applied"), and the idempotent ones (the notify trigger) however they were recorded. Objects of
 * a baseline belong to Prisma Migrate.
 */
function repairableMigrations(migrations: readonly Migration[], recorded: Recorded): Migration[] {
  return migrations.filter((m) => (m.applyOnBaseline ? recorded.versions?.has(m.version) : recorded.versions?.get(m.version) === "applied"));
}

/**
 * Create or upgrade the outbox tables: run the SQL files shipped in `migrations/<dialect>/` that
 * the database has not run yet, in order, each in its own transaction, and record each in the
 * table `mail_outbox_migrations`. Running it again does nothing; it is safe to run at every start.
 *
 * **Repair.** A migration it applied whose objects the database has lost is made good again, from
 * the migration's own statements, in one transaction: a dropped table, an index, the foreign key
 * (PostgreSQL), a nullable column or one with a constant default, and the PostgreSQL notify
 * trigger and its function (`0002_notify`, also when the tables are Prisma Migrate's). They are listed in `repaired`. What cannot be
 * recreated without choosing values for existing rows (a lost NOT NULL column, a column of
 * another type) is left alone; {@link inspectSchema} and `mail-outbox doctor` say what to do.
 *
 * On PostgreSQL it works in the schema of the URL (`?schema=`, default `public`), creating the
 * schema if needed, and each transaction takes an advisory lock for that schema, so several
 * processes (two init containers, two relays) can migrate at once: one waits, then finds the
 * work done. On SQLite each transaction is `BEGIN IMMEDIATE`, with the same effect.
 *
 * **Tables created by Prisma Migrate.** If `mail_outbox` exists but `0001_init` was never
 * recorded (you copied the models from `prisma/<dialect>/outbox.prisma` into your schema and
 * ran `prisma migrate`), migrate does not touch the tables: when their columns, types and
 * indexes are what this version expects, it records the table migrations as `baseline` (listed
 * in `baselined`), and still runs (and repairs) the few migrations about things Prisma's models
 * cannot describe (on PostgreSQL, the notify trigger of `0002_notify`). When the shape differs it
 * throws a {@link SchemaError} listing the differences and leaves the tables as they are; a table,
 * column or index later lost from such tables is not recreated either (your Prisma migrations may
 * be about to add it): {@link inspectSchema} gives the statement. Later
 * upgrades follow the same rule: update the models, run `prisma migrate dev`, then migrate
 * records them. To keep Prisma Migrate from reporting `mail_outbox_migrations` as drift, list it
 * under `tables.external` in your `prisma.config.ts` (schema-qualified on PostgreSQL:
 * `"public.mail_outbox_migrations"`).
 *
 * @returns the versions run (`applied`), found recorded (`alreadyApplied`), recorded without
 *   running (`baselined`), and the lost objects recreated (`repaired`).
 * @throws SchemaError when a migration or a repair fails (it is rolled back), or when tables made
 *   by Prisma Migrate do not have the expected columns.
 * @example
 * const db = await openDatabase(process.env.DATABASE_URL);
 * const { applied, repaired } = await migrate(db, { log: console.log });
 * await db.close();
 */
export async function migrate(db: Db, options: MigrateOptions = {}): Promise<MigrateResult> {
  const log = options.log ?? (() => {});
  const dryRun = options.dryRun ?? false;
  const migrations = await loadMigrations(db.dialect);
  const all = catalog(migrations);
  const result: MigrateResult = { applied: [], alreadyApplied: [], baselined: [], repaired: [] };
  const where = db.dialect === "postgresql" ? `schema ${db.schema} of ${db.displayUrl}` : db.filename;
  const would = dryRun ? "would " : "";
  // Only used for tables found without a record: Prisma Migrate made them.
  const ctx: ProblemContext = { dialect: db.dialect, catalog: all, owner: "prisma" };
  const record = (m: Migration, step: Step, ms: number) => {
    if (step === "already") {
      result.alreadyApplied.push(m.version);
      log(`${m.version} already applied`);
    } else if (step === "apply") {
      result.applied.push(m.version);
      log(dryRun ? `would apply ${m.version}` : `applied ${m.version} (${Math.round(ms)} ms)`);
    } else {
      result.baselined.push(m.version);
      log(`${would}record ${m.version} as baseline: the tables were created outside mail-outbox migrate and have its shape`);
    }
  };
  const repaired = (what: readonly string[]) => {
    for (const w of what) {
      result.repaired.push(w);
      log(`${dryRun ? "would recreate" : "recreated"} ${w}: recorded as applied, but missing from the database`);
    }
  };
  /** Tables made by Prisma Migrate are recorded as a baseline when they have the expected shape. */
  const baselineOrRefuse = (m: Migration, live: LiveShape): Step => {
    const problems = shapeProblems(ctx, live).filter((p) => p.kind !== "trigger");
    if (problems.length > 0) throw refusal(m, problems, db.dialect, where);
    return "baseline";
  };

  if (db.dialect === "postgresql") {
    const decide = async (q: PgQueryable, m: Migration, recorded: Recorded): Promise<Step> => {
      const p = plan(m, recorded);
      return p === "check" ? baselineOrRefuse(m, await pgShape(q, db.schema)) : p;
    };
    if (dryRun) {
      const recorded = await pgRecorded(db.pool, db.schema);
      for (const m of migrations) record(m, await decide(db.pool, m, recorded), 0);
      repaired(repairPlan(catalog(repairableMigrations(migrations, recorded)), await pgShape(db.pool, db.schema)).map((x) => x.what));
      return result;
    }
    await pgLocked(db, (c) =>
      c.query(`CREATE TABLE IF NOT EXISTS ${MIGRATIONS_TABLE} (
        version text PRIMARY KEY,
        applied_at timestamptz NOT NULL DEFAULT now(),
        kind text NOT NULL DEFAULT 'applied' CHECK (kind IN ('applied', 'baseline'))
      )`),
    );
    for (const m of migrations) {
      const started = performance.now();
      const step = await pgLocked(db, async (c) => {
        const recorded = await pgRecorded(c, db.schema);
        const step = await decide(c, m, recorded);
        if (step === "already") return step;
        if (step === "apply") {
          try {
            await c.query(m.sql);
          } catch (err) {
            throw failed(m.version, where, err);
          }
        }
        await c.query(`INSERT INTO ${MIGRATIONS_TABLE} (version, kind) VALUES ($1, $2)`, [m.version, step === "apply" ? "applied" : "baseline"]);
        return step;
      });
      record(m, step, performance.now() - started);
    }
    // Planned inside the lock: a second process migrating at once finds nothing left to do.
    const done = await pgLocked(db, async (c) => {
      const cat = catalog(repairableMigrations(migrations, await pgRecorded(c, db.schema)));
      const steps = repairPlan(cat, await pgShape(c, db.schema));
      for (const x of steps) {
        try {
          await c.query(x.sql);
        } catch (err) {
          throw repairFailed(x.what, where, err);
        }
      }
      return steps.map((x) => x.what);
    });
    repaired(done);
    return result;
  }

  const decide = (m: Migration, recorded: Recorded): Step => {
    const p = plan(m, recorded);
    return p === "check" ? baselineOrRefuse(m, sqliteShape(db)) : p;
  };
  if (dryRun) {
    const recorded = sqliteRecorded(db);
    for (const m of migrations) record(m, decide(m, recorded), 0);
    repaired(repairPlan(catalog(repairableMigrations(migrations, recorded)), sqliteShape(db)).map((x) => x.what));
    return result;
  }
  db.db.exec(`CREATE TABLE IF NOT EXISTS ${MIGRATIONS_TABLE} (
    version TEXT NOT NULL PRIMARY KEY,
    applied_at TEXT NOT NULL,
    kind TEXT NOT NULL DEFAULT 'applied' CHECK (kind IN ('applied', 'baseline'))
  )`);
  // Prisma's SQLite migrations rebuild a table to change it (create new, copy, drop old, rename).
  // With foreign keys on, dropping mail_outbox would cascade-delete every attempt row, and the
  // pragma cannot change inside a transaction: turn it off around the transactions, and check
  // the keys before each commit instead.
  const foreignKeys = db.db.pragma("foreign_keys", { simple: true }) as number;
  db.db.pragma("foreign_keys = OFF");
  try {
    for (const m of migrations) {
      const started = performance.now();
      // IMMEDIATE takes the write lock up front, so a second migrating process waits (busy_timeout) and then sees the record.
      const step = db.db
        .transaction((): Step => {
          const step = decide(m, sqliteRecorded(db));
          if (step === "apply") {
            try {
              db.db.exec(m.sql);
            } catch (err) {
              throw failed(m.version, where, err);
            }
            const broken = db.db.pragma("foreign_key_check") as unknown[];
            if (broken.length > 0) {
              throw failed(m.version, where, new Error(`it leaves ${broken.length} rows whose foreign key points nowhere`));
            }
          }
          if (step !== "already") {
            db.db
              .prepare(`INSERT INTO ${MIGRATIONS_TABLE} (version, applied_at, kind) VALUES (?, ?, ?)`)
              .run(m.version, toSqliteTime(new Date()), step === "apply" ? "applied" : "baseline");
          }
          return step;
        })
        .immediate();
      record(m, step, performance.now() - started);
    }
    const done = db.db
      .transaction((): string[] => {
        const steps = repairPlan(catalog(repairableMigrations(migrations, sqliteRecorded(db))), sqliteShape(db));
        for (const x of steps) {
          try {
            db.db.exec(x.sql);
          } catch (err) {
            throw repairFailed(x.what, where, err);
          }
        }
        const broken = db.db.pragma("foreign_key_check") as unknown[];
        if (steps.length > 0 && broken.length > 0) {
          throw repairFailed(steps.map((x) => x.what).join(", "), where, new Error(`it leaves ${broken.length} attempt rows whose mail is gone (DELETE FROM mail_outbox_attempt WHERE email_id NOT IN (SELECT id FROM mail_outbox))`));
        }
        return steps.map((x) => x.what);
      })
      .immediate();
    repaired(done);
  } finally {
    db.db.pragma(`foreign_keys = ${foreignKeys ? "ON" : "OFF"}`);
  }
  return result;
}

/**
 * Check that the outbox tables have the columns, types, indexes and foreign key that the relay
 * and `enqueue()` rely on, that every shipped migration is recorded (when `migrate` manages the
 * tables), and (PostgreSQL) that the notify trigger exists. Changes nothing.
 *
 * @returns one entry per problem, with what is wrong, what to do, whether `mail-outbox migrate`
 *   fixes it, and whether the relay can run with it; empty when all is well.
 * @example
 * const problems = await inspectSchema(db);
 * for (const p of problems) console.error(`${p.message}: ${p.fix}`);
 */
export async function inspectSchema(db: Db): Promise<SchemaProblem[]> {
  const migrations = await loadMigrations(db.dialect);
  const [live, recorded] =
    db.dialect === "postgresql" ? await Promise.all([pgShape(db.pool, db.schema), pgRecorded(db.pool, db.schema)]) : [sqliteShape(db), sqliteRecorded(db)];
  const problems = shapeProblems({ dialect: db.dialect, catalog: catalog(migrations), owner: ownerOf(recorded) }, live);
  problems.push(...pending(migrations, recorded));
  return problems;
}

/**
 * {@link inspectSchema} as sentences: one per problem, each saying what to do; empty when all is well.
 * @example
 * const problems = await checkSchema(db);
 * if (problems.length > 0) console.error(problems.join("\n"));
 */
export async function checkSchema(db: Db): Promise<string[]> {
  return (await inspectSchema(db)).map((p) => `${p.message} (${p.fix})`);
}

/** Migrations missing from a database that mail-outbox migrate manages. */
function pending(migrations: readonly Migration[], recorded: Recorded): SchemaProblem[] {
  if (recorded.versions === null || recorded.versions.size === 0) return [];
  const missing = migrations.filter((m) => !recorded.versions!.has(m.version)).map((m) => m.version);
  return missing.length === 0
    ? []
    : [{ kind: "migration", table: MIGRATIONS_TABLE, message: `migrations ${missing.join(", ")} have not been applied`, fix: MIGRATE, repairable: true, blocksRelay: false }];
}
