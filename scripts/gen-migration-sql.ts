/**
 * Generates the versioned SQL in migrations/<provider>/ from the Prisma models in
 * prisma/<provider>/outbox.prisma, with Prisma's own schema engine compiled to WebAssembly
 * (`@prisma/schema-engine-wasm`), so it runs offline and without the native engine download.
 *
 *   npm run gen:sql                      # write 0001_init.sql, or the next 000N_change.sql
 *   npm run gen:sql -- --name add_tags   # name the new migration
 *   npm run gen:sql -- --check           # exit 1 when the models and the SQL disagree
 *   npm run gen:sql -- --mysql           # one provider only (--sqlite, --postgresql, --mysql)
 *
 * With no migration yet, the SQL is the engine's diff from an empty database to the models
 * (what `prisma migrate diff --from-empty --to-schema` prints). Afterwards the existing
 * migrations are applied to a scratch database (a temporary SQLite file; a temporary schema in
 * the PostgreSQL database at TEST_POSTGRES_URL) and the engine diffs that live database against
 * the models, so a model change becomes one new migration file. Shipped files are never
 * rewritten: users' databases have already run them.
 *
 * MySQL/MariaDB is the exception: the wasm engine has no MySQL connector (and the native one is a
 * download), so 0001_init.sql is rendered from the models by ./mysql-ddl.ts in the form Prisma
 * prints, and `--check` compares the shipped file with that rendering (once a later MySQL
 * migration exists: the tables the shipped migrations create on a scratch database in the server
 * at TEST_MYSQL_URL with the models). The next MySQL migration after a model change is written by
 * hand (`migrations/mysql/0002_<name>.sql`, one statement per line-ending `;`, in the forms
 * `migrate` can resume: CREATE TABLE, CREATE INDEX, ALTER TABLE ... ADD COLUMN / ADD CONSTRAINT);
 * `--check` and test/schema-drift.test.ts then tell whether it brings the tables to the models.
 *
 * The helpers are exported for test/schema-drift.test.ts.
 */
import { mkdir, readFile, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { randomUUID } from "node:crypto";
import pg from "pg";
import type { SchemaEngine } from "@prisma/schema-engine-wasm";
import {
  bindMigrationAwareSqlAdapterFactory,
  ColumnTypeEnum,
  mockMigrationAwareAdapterFactory,
  type SqlDriverAdapter,
  type SqlMigrationAwareDriverAdapterFactory,
} from "@prisma/driver-adapter-utils";
import { PrismaBetterSqlite3 } from "@prisma/adapter-better-sqlite3";
import { PrismaPg } from "@prisma/adapter-pg";
import { expectedMysqlShape, mysqlShapeDifferences, parseModels, readMysqlShape, renderMysqlDdl, type MysqlQuery } from "./mysql-ddl.js";

export type Provider = "sqlite" | "postgresql";
export const PROVIDERS: readonly Provider[] = ["sqlite", "postgresql"];

export const REPO_ROOT = fileURLToPath(new URL("../", import.meta.url));
export const MIGRATIONS_TABLE = "mail_outbox_migrations";

/** The models file for a provider. */
export function modelsPath(provider: Provider): string {
  return path.join(REPO_ROOT, "prisma", provider, "outbox.prisma");
}

/** The outbox models as a complete Prisma schema (a datasource block without URL, as Prisma 7 wants). */
export async function outboxSchema(provider: Provider): Promise<string> {
  const models = await readFile(modelsPath(provider), "utf8");
  return `datasource db {\n  provider = "${provider}"\n}\n\n${models}`;
}

interface WasmApi {
  instantiate(bytes: Uint8Array, imports: Record<string, object>): Promise<{ instance: { exports: object } }>;
}

let lastPanic: string | undefined;

let engineModule: Promise<typeof import("@prisma/schema-engine-wasm/schema_engine_bg")> | undefined;

/**
 * Load the wasm schema engine once. The package's entry point imports the .wasm file as an ES
 * module, which Node 20 only allows with --experimental-wasm-modules; instantiating the module
 * by hand with its JS glue as the import object does the same without the flag.
 */
export function loadSchemaEngineWasm(): Promise<typeof import("@prisma/schema-engine-wasm/schema_engine_bg")> {
  engineModule ??= (async () => {
    // The engine reports a Rust panic here before throwing a bare "unreachable" error.
    const g = globalThis as unknown as { PRISMA_WASM_PANIC_REGISTRY?: { set_message(m: string): void } };
    g.PRISMA_WASM_PANIC_REGISTRY ??= {
      set_message(m: string) {
        lastPanic = m;
      },
    };
    const glue = await import("@prisma/schema-engine-wasm/schema_engine_bg");
    const wasmFile = fileURLToPath(new URL("schema_engine_bg.wasm", import.meta.resolve("@prisma/schema-engine-wasm/schema_engine_bg")));
    // lib "ES2023" without DOM declares no WebAssembly global; this is the one call needed.
    const wasm = (globalThis as unknown as { WebAssembly: WasmApi }).WebAssembly;
    const { instance } = await wasm.instantiate(await readFile(wasmFile), { "./schema_engine_bg.js": glue });
    glue.__wbg_set_wasm(instance.exports);
    (instance.exports as unknown as { __wbindgen_start(): void }).__wbindgen_start();
    return glue;
  })();
  return engineModule;
}

const NO_FILTER = { externalTables: [] as string[], externalEnums: [] as string[] };

async function withEngine<T>(
  schema: string,
  factory: SqlMigrationAwareDriverAdapterFactory,
  fn: (engine: SchemaEngine) => Promise<T>,
): Promise<T> {
  const glue = await loadSchemaEngineWasm();
  const engine = await glue.SchemaEngine.new({ datamodels: [["schema.prisma", schema]] }, () => {}, bindMigrationAwareSqlAdapterFactory(factory));
  try {
    return await fn(engine);
  } catch (err) {
    if (lastPanic !== undefined) {
      const message = `the Prisma schema engine panicked: ${lastPanic}`;
      lastPanic = undefined;
      throw new Error(message, { cause: err });
    }
    throw err;
  } finally {
    engine.free();
  }
}

/** Drop the `CREATE SCHEMA IF NOT EXISTS "public"` step: migrate() creates the configured schema itself. */
function stripCreateSchema(sql: string): string {
  return sql.replace(/-- CreateSchema\nCREATE SCHEMA IF NOT EXISTS "[^"]+";\n\n?/g, "");
}

/**
 * A PostgreSQL "connection" for diffs that touch no database. The engine still asks the server
 * for its version first (to tell PostgreSQL from CockroachDB); this answers that one question
 * and refuses anything else, so nothing here can silently depend on a live server.
 */
function offlinePostgresFactory(): SqlMigrationAwareDriverAdapterFactory {
  const refuse = (what: string) => Promise.reject(new Error(`offline PostgreSQL adapter: the schema engine asked for ${what}`));
  const adapter = {
    provider: "postgres",
    adapterName: "mail-outbox-offline",
    async queryRaw(query: { sql: string }) {
      if (/^SELECT EXISTS\(SELECT 1 FROM pg_namespace WHERE nspname = \$1\), version\(\)/.test(query.sql)) {
        return {
          columnNames: ["exists", "version", "numeric_version"],
          columnTypes: [ColumnTypeEnum.Boolean, ColumnTypeEnum.Text, ColumnTypeEnum.Int32],
          rows: [[true, "PostgreSQL 15.0 (offline)", 150000]],
        };
      }
      return refuse(query.sql);
    },
    executeRaw: (q: { sql: string }) => refuse(q.sql),
    executeScript: (sql: string) => refuse(sql),
    startTransaction: () => refuse("a transaction"),
    getConnectionInfo: () => ({ schemaName: "public", supportsRelationJoins: true }),
    dispose: async () => {},
  } as unknown as SqlDriverAdapter;
  return {
    provider: "postgres",
    adapterName: "mail-outbox-offline",
    connect: async () => adapter,
    connectToShadowDb: async () => adapter,
  };
}

/** The SQL that creates the outbox tables on an empty database (no database needed). */
export async function initSql(provider: Provider): Promise<string> {
  const factory = provider === "sqlite" ? mockMigrationAwareAdapterFactory("sqlite") : offlinePostgresFactory();
  const schema = await outboxSchema(provider);
  return withEngine(schema, factory, async (engine) => {
    const res = await engine.diff({
      from: { tag: "empty" },
      to: { tag: "schemaDatamodel", files: [{ path: "schema.prisma", content: schema }] },
      script: true,
      exitCode: null,
      filters: NO_FILTER,
    });
    return stripCreateSchema(res.stdout ?? "");
  });
}

/** Result rows (by identity) -> indexes of their columns of PostgreSQL type `"char"`. */
const charColumns = new WeakMap<object, number[]>();

/**
 * A pg.Pool for the schema engine. @prisma/adapter-pg 7.10 throws on result columns of
 * PostgreSQL's internal one-byte type `"char"` (OID 18), which the engine's catalog queries
 * return (relkind, contype...). This pool reports them as `text` to the adapter and remembers
 * which they were; {@link withCharColumns} then gives the engine the `Character` type it expects.
 */
class CatalogPool extends pg.Pool {
  override query(...args: unknown[]): never {
    const result = (super.query as (...a: unknown[]) => unknown)(...args);
    if (!(result instanceof Promise)) return result as never;
    return result.then((r: { fields?: { dataTypeID: number }[]; rows?: object } | undefined) => {
      const chars: number[] = [];
      r?.fields?.forEach((f, i) => {
        if (f.dataTypeID === 18) {
          f.dataTypeID = 25;
          chars.push(i);
        }
      });
      if (chars.length > 0 && r?.rows) charColumns.set(r.rows, chars);
      return r;
    }) as never;
  }
}

function withCharColumns(inner: SqlMigrationAwareDriverAdapterFactory): SqlMigrationAwareDriverAdapterFactory {
  const wrap = (a: SqlDriverAdapter): SqlDriverAdapter =>
    new Proxy(a, {
      get(target, prop, receiver) {
        if (prop === "queryRaw") {
          return async (query: Parameters<SqlDriverAdapter["queryRaw"]>[0]) => {
            const rs = await target.queryRaw(query);
            for (const i of charColumns.get(rs.rows) ?? []) rs.columnTypes[i] = ColumnTypeEnum.Character;
            return rs;
          };
        }
        const v = Reflect.get(target, prop, receiver) as unknown;
        return typeof v === "function" ? (v as (...a: unknown[]) => unknown).bind(target) : v;
      },
    });
  return {
    provider: inner.provider,
    adapterName: inner.adapterName,
    connect: async () => wrap(await inner.connect()),
    connectToShadowDb: async () => wrap(await inner.connectToShadowDb()),
  };
}

export interface LiveDiff {
  /** True when the live tables are exactly what the models describe. */
  readonly empty: boolean;
  /** The engine's human-readable summary ("No difference detected." when empty). */
  readonly summary: string;
  /** The SQL that would bring the live database to the models. */
  readonly script: string;
}

export type LiveTarget =
  | { readonly provider: "sqlite"; readonly file: string }
  | { readonly provider: "postgresql"; readonly connectionString: string; readonly schema: string };

export interface DiffOptions {
  /** The Prisma schema to compare with. @default the outbox models of the target's provider */
  readonly schema?: string;
  /** More tables to leave out of the comparison (`mail_outbox_migrations` always is). */
  readonly ignoreTables?: readonly string[];
}

/**
 * Diff a live database against a Prisma schema (by default prisma/<provider>/outbox.prisma), the
 * way `prisma migrate diff --from-config-datasource --to-schema` does. `mail_outbox_migrations`
 * and `ignoreTables` are left out (as `tables.external`); triggers and functions are not part of
 * Prisma's model of a schema.
 */
export async function diffLiveAgainstModels(target: LiveTarget, options: DiffOptions = {}): Promise<LiveDiff> {
  let pool: CatalogPool | undefined;
  const factory: SqlMigrationAwareDriverAdapterFactory =
    target.provider === "sqlite"
      ? new PrismaBetterSqlite3({ url: `file:${target.file}` })
      : withCharColumns(new PrismaPg((pool = new CatalogPool({ connectionString: target.connectionString, max: 2 })), { schema: target.schema }));
  // On PostgreSQL the engine wants external tables schema-qualified ("schema.table").
  const qualify = (t: string) => (target.provider === "postgresql" ? `${target.schema}.${t}` : t);
  const filters = { externalTables: [MIGRATIONS_TABLE, ...(options.ignoreTables ?? [])].map(qualify), externalEnums: [] };
  const schema = options.schema ?? (await outboxSchema(target.provider));
  try {
    return await withEngine(schema, factory, async (engine) => {
      const files = [{ path: "schema.prisma", content: schema }];
      const from = { tag: "schemaDatasource" as const, files, configDir: REPO_ROOT };
      const to = { tag: "schemaDatamodel" as const, files };
      const summary = await engine.diff({ from, to, script: false, exitCode: true, filters });
      const script = await engine.diff({ from, to, script: true, exitCode: null, filters });
      return { empty: summary.exitCode === 0, summary: (summary.stdout ?? "").trim(), script: stripCreateSchema(script.stdout ?? "") };
    });
  } finally {
    await pool?.end();
  }
}

/** Shipped migration files of a provider, in order. */
export async function migrationFiles(provider: Provider | "mysql"): Promise<string[]> {
  const dir = path.join(REPO_ROOT, "migrations", provider);
  try {
    return (await readdir(dir)).filter((f) => /^\d{4}_[a-z0-9_]+\.sql$/.test(f)).sort();
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return [];
    throw e;
  }
}

export const PG_SCRATCH_URL = process.env.TEST_POSTGRES_URL ?? "postgresql://postgres@127.0.0.1:5432/test";

/** Apply the shipped migrations to a scratch database, diff it against the models, clean up. */
export async function diffShippedAgainstModels(provider: Provider): Promise<LiveDiff> {
  const { openDatabase, quoteIdent } = await import("../src/db.js");
  const { migrate } = await import("../src/migrate.js");
  if (provider === "sqlite") {
    const file = path.join(tmpdir(), `mail-outbox-gen-${randomUUID()}.db`);
    const db = await openDatabase(`file:${file}`);
    try {
      await migrate(db);
    } finally {
      await db.close();
    }
    try {
      return await diffLiveAgainstModels({ provider, file });
    } finally {
      for (const suffix of ["", "-wal", "-shm", "-journal"]) await rm(file + suffix, { force: true });
    }
  }
  const schema = `mail_outbox_gen_${randomUUID().replace(/-/g, "").slice(0, 12)}`;
  const url = new URL(PG_SCRATCH_URL);
  url.searchParams.set("schema", schema);
  const db = await openDatabase(url.toString());
  try {
    await migrate(db);
    return await diffLiveAgainstModels({ provider, connectionString: PG_SCRATCH_URL, schema });
  } finally {
    if (db.dialect === "postgresql") await db.pool.query(`DROP SCHEMA IF EXISTS ${quoteIdent(schema)} CASCADE`).catch(() => {});
    await db.close();
  }
}

// ---- MySQL/MariaDB (see the module comment) ----

export const MYSQL_SCRATCH_URL = process.env.TEST_MYSQL_URL ?? "mysql://root@127.0.0.1:3306/test";

/** The SQL that creates the outbox tables on an empty MySQL/MariaDB database, rendered from prisma/mysql/outbox.prisma. */
export async function mysqlInitSql(): Promise<string> {
  return renderMysqlDdl(parseModels(await readFile(path.join(REPO_ROOT, "prisma", "mysql", "outbox.prisma"), "utf8")));
}

/**
 * Run the shipped MySQL migrations on a scratch database of the server at TEST_MYSQL_URL (`migrate`,
 * as users do), compare its outbox tables with prisma/mysql/outbox.prisma, drop it. Returns the
 * differences, one line each; empty when they match.
 */
export async function diffShippedMysqlAgainstModels(): Promise<string[]> {
  const { default: mariadb } = await import("mariadb");
  const { openDatabase } = await import("../src/db.js");
  const { migrate } = await import("../src/migrate.js");
  const { OUTBOX_TABLE_NAMES } = await import("../src/migrations.js");
  const u = new URL(MYSQL_SCRATCH_URL);
  const database = `mail_outbox_gen_${randomUUID().replace(/-/g, "").slice(0, 12)}`;
  const admin = await mariadb.createConnection({ host: u.hostname, port: Number(u.port || 3306), user: decodeURIComponent(u.username) || "root", ...(u.password ? { password: decodeURIComponent(u.password) } : {}) });
  try {
    await admin.query(`CREATE DATABASE \`${database}\` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci`);
    try {
      u.pathname = `/${database}`;
      const db = await openDatabase(u.toString(), { poolSize: 1 });
      await migrate(db).finally(() => db.close());
      const query: MysqlQuery = (sql, params) => admin.query(sql, params);
      const models = parseModels(await readFile(path.join(REPO_ROOT, "prisma", "mysql", "outbox.prisma"), "utf8"));
      return mysqlShapeDifferences(expectedMysqlShape(models), await readMysqlShape(query, database, OUTBOX_TABLE_NAMES));
    } finally {
      await admin.query(`DROP DATABASE IF EXISTS \`${database}\``);
    }
  } finally {
    await admin.end();
  }
}

/** A migration's statements, comments and blank lines left out, for comparing two renderings. */
function sqlStatements(sql: string): string {
  return sql.replace(/^--.*\n/gm, "").replace(/\n{2,}/g, "\n").trim();
}

function mysqlHeader(name: string): string {
  return (
    `-- prisma-mail-outbox migration ${name} (mysql).\n` +
    `-- Generated by \`npm run gen:sql\` (scripts/gen-migration-sql.ts, scripts/mysql-ddl.ts) from prisma/mysql/outbox.prisma,\n` +
    `-- in the form \`prisma migrate diff\` prints for MySQL. Never edit a shipped migration; the next MySQL\n` +
    `-- migration is written by hand (see scripts/gen-migration-sql.ts) and checked by test/schema-drift.test.ts.\n\n`
  );
}

/** `gen:sql` for MySQL: write 0001_init.sql when there is none, else say whether the shipped SQL matches the models. */
async function mysqlStep(check: boolean, name: string): Promise<boolean> {
  const started = Date.now();
  const existing = await migrationFiles("mysql");
  const dir = path.join(REPO_ROOT, "migrations", "mysql");
  if (existing.length === 0) {
    if (check) {
      console.log("mysql: would write migrations/mysql/0001_init.sql");
      return false;
    }
    await mkdir(dir, { recursive: true });
    await writeFile(path.join(dir, "0001_init.sql"), mysqlHeader("0001_init") + (await mysqlInitSql()).trimEnd() + "\n");
    console.log(`mysql: wrote migrations/mysql/0001_init.sql (${Date.now() - started} ms)`);
    return true;
  }
  let differences: string[];
  if (existing.length === 1) {
    const shipped = await readFile(path.join(dir, existing[0]!), "utf8");
    differences = sqlStatements(shipped) === sqlStatements(await mysqlInitSql()) ? [] : ["migrations/mysql/0001_init.sql is not the rendering of the models (scripts/mysql-ddl.ts)"];
  } else {
    differences = await diffShippedMysqlAgainstModels();
  }
  if (differences.length === 0) {
    console.log(`mysql: migrations/mysql matches prisma/mysql/outbox.prisma (${Date.now() - started} ms)`);
    return true;
  }
  const next = `${String(Number(existing.at(-1)!.slice(0, 4)) + 1).padStart(4, "0")}_${name}.sql`;
  console.log(
    `mysql: the models differ from the shipped SQL:\n${differences.map((d) => `  - ${d}`).join("\n")}\n` +
      `Write migrations/mysql/${next} by hand (the wasm schema engine has no MySQL connector; see scripts/gen-migration-sql.ts), then run \`npm run gen:sql -- --check --mysql\`.`,
  );
  return false;
}

function header(provider: Provider, name: string): string {
  return (
    `-- prisma-mail-outbox migration ${name} (${provider}).\n` +
    `-- Generated by \`npm run gen:sql\` (scripts/gen-migration-sql.ts) from prisma/${provider}/outbox.prisma\n` +
    `-- with Prisma's schema engine: the same SQL as \`prisma migrate diff\`. Never edit a shipped migration;\n` +
    `-- change the models and generate the next one.\n\n`
  );
}

async function main(argv: readonly string[]): Promise<number> {
  const check = argv.includes("--check");
  const nameAt = argv.indexOf("--name");
  const name = nameAt >= 0 ? argv[nameAt + 1] : "change";
  if (name === undefined || !/^[a-z0-9_]+$/.test(name)) {
    console.error("Expected `--name` to be lower-case letters, digits and underscores.");
    return 2;
  }
  const only = PROVIDERS.filter((p) => argv.includes(`--${p}`));
  const mysql = argv.includes("--mysql");
  let outOfStep = false;
  if (mysql || only.length === 0) outOfStep = !(await mysqlStep(check, name));
  for (const provider of only.length > 0 || mysql ? only : PROVIDERS) {
    const started = Date.now();
    const existing = await migrationFiles(provider);
    const dir = path.join(REPO_ROOT, "migrations", provider);
    let sql: string;
    let file: string;
    if (existing.length === 0) {
      sql = await initSql(provider);
      file = "0001_init.sql";
    } else {
      const diff = await diffShippedAgainstModels(provider);
      if (diff.empty) {
        console.log(`${provider}: migrations/${provider} matches prisma/${provider}/outbox.prisma (${Date.now() - started} ms)`);
        continue;
      }
      sql = diff.script;
      const next = Number(existing.at(-1)!.slice(0, 4)) + 1;
      file = `${String(next).padStart(4, "0")}_${name}.sql`;
      console.log(`${provider}: the models differ from the shipped SQL:\n${diff.summary}`);
    }
    if (check) {
      outOfStep = true;
      console.log(`${provider}: would write migrations/${provider}/${file}`);
      continue;
    }
    await mkdir(dir, { recursive: true });
    await writeFile(path.join(dir, file), header(provider, file.replace(/\.sql$/, "")) + sql.trimEnd() + "\n");
    console.log(`${provider}: wrote migrations/${provider}/${file} (${Date.now() - started} ms)`);
  }
  // Without --check the other providers write their next migration; MySQL's is written by hand.
  return outOfStep ? 1 : 0;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (err: unknown) => {
      console.error(err);
      process.exit(1);
    },
  );
}
