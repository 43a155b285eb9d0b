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
}

function shapeProblems(dialect: Dialect, live: LiveShape, where: string): string[] {
  const problems: string[] = [];
  const fix =
    dialect === "postgresql"
      ? "run `mail-outbox migrate`, or apply prisma/postgresql/outbox.prisma with Prisma Migrate"
      : "run `mail-outbox migrate`, or apply prisma/sqlite/outbox.prisma with Prisma Migrate";
  for (const [table, cols] of Object.entries(COLUMNS)) {
    if (!live.tables.has(table)) {
      problems.push(`table ${table} is missing in ${where} (${fix})`);
      continue;
    }
    const have = new Map(live.columns.filter((c) => c.table === table).map((c) => [c.column, c]));
    for (const [column, [kind, nullable]] of Object.entries(cols)) {
      const type = TYPE_NAMES[dialect][kind];
      const c = have.get(column);
      if (c === undefined) {
        problems.push(`column ${table}.${column} is missing (expected ${type}${nullable ? "" : " NOT NULL"}; ${fix})`);
        continue;
      }
      if (c.type.toLowerCase() !== type.toLowerCase()) {
        problems.push(`column ${table}.${column} has type ${c.type}, expected ${type} (change it to match prisma/${dialect}/outbox.prisma)`);
      }
      if (nullable && !c.nullable) {
        problems.push(`column ${table}.${column} is NOT NULL but the outbox writes NULL into it (drop the NOT NULL constraint)`);
      }
    }
    for (const c of have.values()) {
      if (!(c.column in cols) && !c.nullable && !c.hasDefault) {
        problems.push(`column ${table}.${c.column} is not part of the outbox, NOT NULL and has no default, so inserts will fail (give it a default or make it nullable)`);
      }
    }
  }
  for (const [name, { table }] of Object.entries(INDEXES)) {
    if (live.tables.has(table) && !live.indexes.has(name)) {
      problems.push(`index ${name} on ${table} is missing (${fix})`);
    }
  }
  if (live.tables.has("mail_outbox") && live.tables.has("mail_outbox_attempt") && !live.cascadeFk) {
    problems.push(`mail_outbox_attempt.email_id has no foreign key to mail_outbox(id) with ON DELETE CASCADE (${fix})`);
  }
  return problems;
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
  const fk = await q.query(
    `SELECT 1 FROM pg_constraint c
       JOIN pg_class t ON t.oid = c.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace
       JOIN pg_class r ON r.oid = c.confrelid
     WHERE n.nspname = $1 AND t.relname = 'mail_outbox_attempt' AND r.relname = 'mail_outbox'
       AND c.contype = 'f' AND c.confdeltype = 'c'`,
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
    cascadeFk: (fk.rowCount ?? 0) > 0,
  };
}

async function pgTriggerPresent(q: PgQueryable, schema: string): Promise<boolean> {
  const r = await q.query(
    `SELECT 1 FROM pg_trigger g JOIN pg_class t ON t.oid = g.tgrelid JOIN pg_namespace n ON n.oid = t.relnamespace
     WHERE n.nspname = $1 AND t.relname = 'mail_outbox' AND g.tgname = 'mail_outbox_notify' AND NOT g.tgisinternal`,
    [schema],
  );
  return (r.rowCount ?? 0) > 0;
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
  return { tables, columns, indexes, cascadeFk };
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

function refusal(m: Migration, problems: readonly string[], dialect: Dialect, where: string): SchemaError {
  return new SchemaError(
    `The outbox tables in ${where} were not created by mail-outbox migrate (Prisma Migrate owns them) and do not match migration ${m.version}:\n` +
      problems.map((x) => `  - ${x}`).join("\n") +
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

/**
 * Create or upgrade the outbox tables: run the SQL files shipped in `migrations/<dialect>/` that
 * the database has not run yet, in order, each in its own transaction, and record each in the
 * table `mail_outbox_migrations`. Running it again does nothing; it is safe to run at every start.
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
 * in `baselined`), and still runs the few migrations about things Prisma's models cannot
 * describe (on PostgreSQL, the notify trigger of `0002_notify`). When the shape differs it
 * throws a {@link SchemaError} listing the differences and leaves the tables as they are. Later
 * upgrades follow the same rule: update the models, run `prisma migrate dev`, then migrate
 * records them. To keep Prisma Migrate from reporting `mail_outbox_migrations` as drift, list it
 * under `tables.external` in your `prisma.config.ts` (schema-qualified on PostgreSQL:
 * `"public.mail_outbox_migrations"`).
 *
 * @returns the versions run (`applied`), found recorded (`alreadyApplied`), and recorded without running (`baselined`).
 * @throws SchemaError when a migration fails (it is rolled back), or when tables made by Prisma
 *   Migrate do not have the expected shape.
 * @example
 * const db = await openDatabase(process.env.DATABASE_URL);
 * const { applied } = await migrate(db, { log: console.log });
 * await db.close();
 */
export async function migrate(db: Db, options: MigrateOptions = {}): Promise<MigrateResult> {
  const log = options.log ?? (() => {});
  const dryRun = options.dryRun ?? false;
  const migrations = await loadMigrations(db.dialect);
  const result: MigrateResult = { applied: [], alreadyApplied: [], baselined: [] };
  const where = db.dialect === "postgresql" ? `schema ${db.schema} of ${db.displayUrl}` : db.filename;
  const would = dryRun ? "would " : "";
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

  if (db.dialect === "postgresql") {
    const decide = async (q: PgQueryable, m: Migration, recorded: Recorded): Promise<Step> => {
      const p = plan(m, recorded);
      if (p !== "check") return p;
      const problems = shapeProblems("postgresql", await pgShape(q, db.schema), where);
      if (problems.length > 0) throw refusal(m, problems, "postgresql", where);
      return "baseline";
    };
    if (dryRun) {
      const recorded = await pgRecorded(db.pool, db.schema);
      for (const m of migrations) record(m, await decide(db.pool, m, recorded), 0);
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
    return result;
  }

  const decide = (m: Migration, recorded: Recorded): Step => {
    const p = plan(m, recorded);
    if (p !== "check") return p;
    const problems = shapeProblems("sqlite", sqliteShape(db), where);
    if (problems.length > 0) throw refusal(m, problems, "sqlite", where);
    return "baseline";
  };
  if (dryRun) {
    const recorded = sqliteRecorded(db);
    for (const m of migrations) record(m, decide(m, recorded), 0);
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
  } finally {
    db.db.pragma(`foreign_keys = ${foreignKeys ? "ON" : "OFF"}`);
  }
  return result;
}

/**
 * Check that the outbox tables have the columns, types, indexes and foreign key that the relay
 * and `enqueue()` rely on, and (PostgreSQL) that the notify trigger exists. Changes nothing.
 *
 * @returns one sentence per problem, each saying what to do; empty when all is well.
 * @example
 * const problems = await checkSchema(db);
 * if (problems.length > 0) console.error(problems.join("\n"));
 */
export async function checkSchema(db: Db): Promise<string[]> {
  const migrations = await loadMigrations(db.dialect);
  if (db.dialect === "postgresql") {
    const where = `schema ${db.schema} of ${db.displayUrl}`;
    const live = await pgShape(db.pool, db.schema);
    const problems = shapeProblems("postgresql", live, where);
    const recorded = await pgRecorded(db.pool, db.schema);
    problems.push(...pending(migrations, recorded));
    if (live.tables.has("mail_outbox") && !(await pgTriggerPresent(db.pool, db.schema))) {
      problems.push(
        `the notify trigger mail_outbox_notify on mail_outbox is missing, so relays see new mail only when they poll (run \`mail-outbox migrate\`, or add prisma/postgresql/notify-trigger.sql to a Prisma migration)`,
      );
    }
    return problems;
  }
  const problems = shapeProblems("sqlite", sqliteShape(db), db.filename);
  problems.push(...pending(migrations, sqliteRecorded(db)));
  return problems;
}

/** Migrations missing from a database that mail-outbox migrate manages. */
function pending(migrations: readonly Migration[], recorded: Recorded): string[] {
  if (recorded.versions === null || recorded.versions.size === 0) return [];
  const missing = migrations.filter((m) => !recorded.versions!.has(m.version)).map((m) => m.version);
  return missing.length === 0 ? [] : [`migrations ${missing.join(", ")} have not been applied (run \`mail-outbox migrate\`)`];
}
