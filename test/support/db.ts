/**
 * Fresh, migrated databases for tests, and a generated Prisma client for them.
 *
 * Each fixture is a new SQLite file under the OS temp dir, or a new schema in the PostgreSQL
 * database at PG_ADMIN_URL, so test files can run in parallel. Both hold the outbox tables
 * (created by `migrate()` from the shipped SQL) and the tests' own `User` table.
 * PostgreSQL tests call `needPostgres(t)` first.
 */
import type { TestContext } from "node:test";
import { rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { randomUUID } from "node:crypto";
import pg from "pg";
import { openDatabase, parseDatabaseUrl, quoteIdent, toSqliteTime } from "../../src/db.js";
import type { Db, PostgresStore, SqliteStore } from "../../src/db.js";
import { migrate } from "../../src/migrate.js";
import { MYSQL_ADMIN_URL, needMysql, needPostgres, PG_ADMIN_URL } from "./services.js";
import type { PrismaClient as SqliteClient } from "../prisma/sqlite/generated/client.js";

/**
 * The tests' `User` table, as Prisma Migrate would create it from the `User` model in
 * test/prisma/<provider>/schema.prisma (test/schema-drift.test.ts checks that). It belongs to the
 * tests, not to the shipped migrations.
 */
export const USER_TABLE_SQL = {
  sqlite: `CREATE TABLE "User" (
    "id" INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    "email" TEXT NOT NULL,
    "name" TEXT
);
CREATE UNIQUE INDEX "User_email_key" ON "User"("email");`,
  postgresql: `CREATE TABLE "User" (
    "id" SERIAL NOT NULL,
    "email" TEXT NOT NULL,
    "name" TEXT,

    CONSTRAINT "User_pkey" PRIMARY KEY ("id")
);
CREATE UNIQUE INDEX "User_email_key" ON "User"("email");`,
  mysql: `CREATE TABLE \`User\` (
    \`id\` INTEGER NOT NULL AUTO_INCREMENT,
    \`email\` VARCHAR(191) NOT NULL,
    \`name\` VARCHAR(191) NULL,

    UNIQUE INDEX \`User_email_key\`(\`email\`),
    PRIMARY KEY (\`id\`)
) DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;`,
} as const;

export interface SqliteFixture {
  /** `file:/tmp/...db`, for `openDatabase`, `createRelay` and `prismaClientFor`. */
  readonly url: string;
  readonly file: string;
  /** Delete the file (and its -wal/-shm). Close your connections first. */
  cleanup(): Promise<void>;
}

export interface PostgresFixture {
  /** PG_ADMIN_URL with `?schema=<schema>`. */
  readonly url: string;
  readonly schema: string;
  /** Drop the schema with everything in it. */
  cleanup(): Promise<void>;
}

async function prepare(url: string): Promise<void> {
  const db = await openDatabase(url, { poolSize: 1 });
  try {
    await migrate(db);
    if (db.dialect === "sqlite") db.db.exec(USER_TABLE_SQL.sqlite);
    else if (db.dialect === "mysql") await db.pool.query(USER_TABLE_SQL.mysql);
    else await db.pool.query(USER_TABLE_SQL.postgresql);
  } finally {
    await db.close();
  }
}

/**
 * A new SQLite file with the outbox tables and `User`. When `t` is given, `cleanup` runs after it.
 * @example
 * const fx = await freshSqlite(t);
 * const db = await openDatabase(fx.url);
 */
export async function freshSqlite(t?: Pick<TestContext, "after">): Promise<SqliteFixture> {
  const file = path.join(tmpdir(), `mail-outbox-test-${randomUUID()}.db`);
  const url = `file:${file}`;
  const cleanup = async () => {
    for (const suffix of ["", "-wal", "-shm", "-journal"]) await rm(file + suffix, { force: true });
  };
  try {
    await prepare(url);
  } catch (err) {
    await cleanup();
    throw err;
  }
  t?.after(cleanup);
  return { url, file, cleanup };
}

/** A unique schema name: lower-case, so it needs no quoting anywhere. */
export function uniqueSchemaName(prefix = "t"): string {
  return `${prefix}_${randomUUID().replace(/-/g, "").slice(0, 16)}`;
}

/** PG_ADMIN_URL pointing at `schema`. */
export function postgresUrl(schema: string): string {
  const u = new URL(PG_ADMIN_URL);
  u.searchParams.set("schema", schema);
  return u.toString();
}

/** Drop a schema in the database at PG_ADMIN_URL, with everything in it. */
export async function dropSchema(schema: string): Promise<void> {
  const client = new pg.Client({ connectionString: PG_ADMIN_URL });
  await client.connect();
  try {
    await client.query(`DROP SCHEMA IF EXISTS ${quoteIdent(schema)} CASCADE`);
  } finally {
    await client.end();
  }
}

/**
 * A new schema in the PostgreSQL database at PG_ADMIN_URL (database `test`) with the outbox
 * tables, the notify trigger and `User`. Call `needPostgres(t)` before. When `t` is given,
 * `cleanup` runs after it.
 * @example
 * if (!(await needPostgres(t))) return;
 * const fx = await freshPostgres(t);
 */
export async function freshPostgres(t?: Pick<TestContext, "after">): Promise<PostgresFixture> {
  const schema = uniqueSchemaName();
  const url = postgresUrl(schema);
  const cleanup = () => dropSchema(schema);
  try {
    await prepare(url);
  } catch (err) {
    await cleanup().catch(() => {});
    throw err;
  }
  t?.after(cleanup);
  return { url, schema, cleanup };
}

export interface MysqlFixture {
  /** MYSQL_ADMIN_URL with the path set to `database`. */
  readonly url: string;
  readonly database: string;
  /** Drop the database with everything in it. */
  cleanup(): Promise<void>;
}

/** MYSQL_ADMIN_URL pointing at `database`. */
export function mysqlUrl(database: string): string {
  const u = new URL(MYSQL_ADMIN_URL);
  u.pathname = `/${database}`;
  return u.toString();
}

/** Run statements on the server at MYSQL_ADMIN_URL (as its user, outside any test database). */
export async function mysqlAdmin(statements: readonly string[]): Promise<void> {
  const { default: mariadb } = await import("mariadb");
  const u = new URL(MYSQL_ADMIN_URL);
  const conn = await mariadb.createConnection({
    host: u.hostname,
    port: Number(u.port || 3306),
    user: decodeURIComponent(u.username) || "root",
    ...(u.password ? { password: decodeURIComponent(u.password) } : {}),
  });
  try {
    for (const s of statements) await conn.query(s);
  } finally {
    await conn.end();
  }
}

/**
 * A new database on the MySQL/MariaDB server at MYSQL_ADMIN_URL with the outbox tables and
 * `User`. Call `needMysql(t)` before. When `t` is given, `cleanup` runs after it.
 * @example
 * if (!(await needMysql(t))) return;
 * const fx = await freshMysql(t);
 */
export async function freshMysql(t?: Pick<TestContext, "after">): Promise<MysqlFixture> {
  const database = uniqueSchemaName("mo");
  const url = mysqlUrl(database);
  const cleanup = () => mysqlAdmin([`DROP DATABASE IF EXISTS \`${database}\``]);
  try {
    await mysqlAdmin([`CREATE DATABASE \`${database}\` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci`]);
    await prepare(url);
  } catch (err) {
    await cleanup().catch(() => {});
    throw err;
  }
  t?.after(cleanup);
  return { url, database, cleanup };
}

/** A fixture's database opened with the library's own connection (`openDatabase`). Close it yourself. */
export function openFixture(fx: { readonly url: string }): Promise<Db> {
  return openDatabase(fx.url);
}

/**
 * The tests' Prisma client (generated from test/prisma/<provider>/schema.prisma by `npm run pretest`:
 * `User` plus the outbox models) connected to the database at `url` through the driver adapter
 * an application would use: `PrismaBetterSqlite3` for `file:` URLs, `PrismaPg` (with the URL's
 * `?schema=`) for PostgreSQL, `PrismaMariaDb` for MySQL/MariaDB. The clients have the same models,
 * so all are typed as one.
 * Call `$disconnect()` when done (or pass `t` to have it done after the test).
 */
export async function prismaClientFor(url: string, t?: Pick<TestContext, "after">): Promise<SqliteClient> {
  const location = parseDatabaseUrl(url);
  let client: SqliteClient;
  if (location.dialect === "sqlite") {
    const [{ PrismaClient }, { PrismaBetterSqlite3 }] = await Promise.all([
      import("../prisma/sqlite/generated/client.js"),
      import("@prisma/adapter-better-sqlite3"),
    ]);
    client = new PrismaClient({ adapter: new PrismaBetterSqlite3({ url: `file:${location.filename}` }) });
  } else if (location.dialect === "mysql") {
    const [{ PrismaClient }, { PrismaMariaDb }] = await Promise.all([
      import("../prisma/mysql/generated/client.js"),
      import("@prisma/adapter-mariadb"),
    ]);
    const c = location.config;
    client = new PrismaClient({
      adapter: new PrismaMariaDb({ host: c.host, port: c.port, user: c.user, ...(c.password !== undefined ? { password: c.password } : {}), database: c.database, connectionLimit: 4 }),
    }) as unknown as SqliteClient;
  } else {
    const [{ PrismaClient }, { PrismaPg }] = await Promise.all([
      import("../prisma/postgresql/generated/client.js"),
      import("@prisma/adapter-pg"),
    ]);
    client = new PrismaClient({
      adapter: new PrismaPg({ connectionString: location.connectionString }, { schema: location.schema }),
    }) as unknown as SqliteClient;
  }
  t?.after(() => client.$disconnect());
  return client;
}

/**
 * The store each conformance suite runs against: a fresh SQLite file, or a fresh PostgreSQL schema
 * (null, the test skipped or failed as `needPostgres` decides, without PostgreSQL); closed and
 * removed after the test.
 */
export const conformanceStores: readonly { readonly name: string; readonly open: (t: TestContext) => Promise<Db | null> }[] = [
  {
    name: "SQLite (a real file)",
    open: async (t) => {
      const fx = await freshSqlite();
      const db = await openDatabase(fx.url);
      t.after(async () => {
        await db.close();
        await fx.cleanup();
      });
      return db;
    },
  },
  {
    name: "PostgreSQL (a real server)",
    open: async (t) => {
      if (!(await needPostgres(t))) return null;
      const fx = await freshPostgres();
      const db = await openDatabase(fx.url);
      t.after(async () => {
        await db.close();
        await fx.cleanup();
      });
      return db;
    },
  },
  {
    name: "MariaDB (a real server)",
    open: async (t) => {
      if (!(await needMysql(t))) return null;
      const fx = await freshMysql();
      const db = await openDatabase(fx.url);
      t.after(async () => {
        await db.close();
        await fx.cleanup();
      });
      return db;
    },
  },
];

/** Insert one row as given (times as the store keeps them), for tests that set up exact states. */
export
async function insertRow(db: Db, table: string, v: Record<string, unknown>): Promise<void> {
  const cols = Object.keys(v);
  if (db.dialect === "postgresql") {
    await db.pool.query(`INSERT INTO ${table} (${cols.join(", ")}) VALUES (${cols.map((c, i) => `$${i + 1}${c === "envelope_to" ? "::jsonb" : ""}`).join(", ")})`, Object.values(v));
  } else if (db.dialect === "mysql") {
    // JSON values as text; Dates as UTC (the pool's time zone).
    const vals = Object.entries(v).map(([k, x]) => (k === "envelope_to" && typeof x !== "string" ? JSON.stringify(x) : x));
    await db.pool.query(`INSERT INTO ${table} (${cols.map((c) => `\`${c}\``).join(", ")}) VALUES (${cols.map(() => "?").join(", ")})`, vals);
  } else {
    const vals = Object.fromEntries(Object.entries(v).map(([k, x]) => [k, x instanceof Date ? toSqliteTime(x) : x]));
    db.db.prepare(`INSERT INTO ${table} (${cols.join(", ")}) VALUES (${cols.map((c) => `@${c}`).join(", ")})`).run(vals);
  }
}

/** The store as the SQLite store, for SQLite-only SQL in a test (throws on another database). */
export function sqliteOf(db: Db): SqliteStore {
  if (db.dialect !== "sqlite") throw new Error(`this test step runs SQLite SQL, and the store is ${db.dialect}`);
  return db;
}

/** The store as the PostgreSQL store, for PostgreSQL-only SQL in a test (throws on another database). */
export function pgOf(db: Db): PostgresStore {
  if (db.dialect !== "postgresql") throw new Error(`this test step runs PostgreSQL SQL, and the store is ${db.dialect}`);
  return db;
}
