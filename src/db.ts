/**
 * Connections the relay, the CLI and `migrate` open themselves, from one URL:
 * `file:./outbox.db` (SQLite, the embedded default) or `postgresql://...` (PostgreSQL).
 *
 * The relay does not go through a generated Prisma client: it runs a handful of batched
 * statements on the driver that Prisma's own adapters use (`pg`, `better-sqlite3`), so the
 * sidecar needs no code from the application.
 */
import path from "node:path";
import pg from "pg";
import Database from "better-sqlite3";
import { DatabaseConfigError } from "./errors.js";

export type Dialect = "postgresql" | "sqlite";

export type DatabaseLocation =
  | { readonly dialect: "sqlite"; readonly filename: string }
  | { readonly dialect: "postgresql"; readonly connectionString: string; readonly schema: string };

export interface PostgresDb {
  readonly dialect: "postgresql";
  readonly pool: pg.Pool;
  /** The schema that holds the outbox tables (`?schema=` in the URL, as Prisma reads it; default `public`). */
  readonly schema: string;
  /** The URL with its password replaced by `***`, fit for logs. */
  readonly displayUrl: string;
  close(): Promise<void>;
}

export interface SqliteDb {
  readonly dialect: "sqlite";
  readonly db: Database.Database;
  /** The absolute path of the database file. */
  readonly filename: string;
  /** The URL as given (`file:./dev.db`), fit for logs. */
  readonly displayUrl: string;
  close(): Promise<void>;
}

export type Db = PostgresDb | SqliteDb;

export interface OpenDatabaseOptions {
  /** PostgreSQL pool size. @default 4 */
  readonly poolSize?: number;
  /** PostgreSQL `application_name`, shown in `pg_stat_activity`. @default "mail-outbox" */
  readonly applicationName?: string;
  /** SQLite: how long a writer waits for the lock before failing. @default 5000 */
  readonly busyTimeoutMs?: number;
}

/**
 * A database or transport URL fit for logs and messages: the password, and the values of query
 * parameters named like `pass`, `secret` or `token`, replaced by `***`. A SQLite URL comes back as
 * written (`file:./dev.db`, not the WHATWG form `file:///dev.db`, which reads like `/dev.db`).
 * Strings that are not URLs come back unchanged.
 *
 * @example
 * redactUrl("postgresql://app:hunter2@db/prod"); // "postgresql://app:***@db/prod"
 * redactUrl("file:./dev.db"); // "file:./dev.db"
 */
export function redactUrl(url: string): string {
  if (/^file:/i.test(url)) {
    return url.replace(/\/\/([^:/@]*):([^@/]*)@/, "//$1:***@").replace(/([?&][^=&#]*(?:pass|secret|token)[^=&#]*=)[^&#]*/gi, "$1***");
  }
  try {
    const u = new URL(url);
    if (u.password) u.password = "***";
    for (const key of [...u.searchParams.keys()]) {
      if (/pass|secret|token/i.test(key)) u.searchParams.set(key, "***");
    }
    return u.toString();
  } catch {
    return url.replace(/\/\/([^:/@]+):([^@/]*)@/, "//$1:***@");
  }
}

/**
 * Parse a database URL into where it points.
 * @throws DatabaseConfigError when the URL is empty or names neither SQLite nor PostgreSQL.
 */
export function parseDatabaseUrl(url: string | undefined, cwd = process.cwd()): DatabaseLocation {
  if (url === undefined || url.trim() === "") {
    throw new DatabaseConfigError(
      "No database URL: set DATABASE_URL (or pass --database-url) to file:./outbox.db for SQLite or postgresql://user@host/db for PostgreSQL.",
    );
  }
  if (url.startsWith("file:")) {
    let file = url.slice("file:".length);
    const q = file.indexOf("?");
    if (q >= 0) file = file.slice(0, q);
    if (file.startsWith("//")) file = file.slice(2);
    if (file === "") throw new DatabaseConfigError(`The SQLite URL ${JSON.stringify(url)} names no file; write file:./outbox.db or file:/abs/path.db.`);
    return { dialect: "sqlite", filename: path.resolve(cwd, decodeURIComponent(file)) };
  }
  if (/^postgres(ql)?:\/\//.test(url)) {
    let parsed: URL;
    try {
      parsed = new URL(url);
    } catch (cause) {
      throw new DatabaseConfigError(`The PostgreSQL URL ${redactUrl(url)} is not a valid URL.`, { cause });
    }
    const schema = parsed.searchParams.get("schema") ?? "public";
    if (!/^[A-Za-z_][A-Za-z0-9_$]{0,62}$/.test(schema)) {
      throw new DatabaseConfigError(`The schema ${JSON.stringify(schema)} in the database URL is not a plain identifier (letters, digits, _ and $).`);
    }
    // `schema` is Prisma's parameter, not libpq's: strip it before handing the URL to pg.
    parsed.searchParams.delete("schema");
    return { dialect: "postgresql", connectionString: parsed.toString(), schema };
  }
  throw new DatabaseConfigError(
    `Unsupported database URL ${JSON.stringify(redactUrl(url))}: use file:... for SQLite or postgresql://... for PostgreSQL.`,
  );
}

/** Quote an SQL identifier (schema names only; table and column names are fixed). */
export function quoteIdent(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}

/** Open a connection (SQLite) or a pool (PostgreSQL) to the database at `url`. */
export async function openDatabase(url: string | undefined, options: OpenDatabaseOptions = {}): Promise<Db> {
  const location = parseDatabaseUrl(url);
  const displayUrl = redactUrl(url ?? "");
  if (location.dialect === "sqlite") {
    let db: Database.Database;
    try {
      db = new Database(location.filename);
    } catch (cause) {
      throw new DatabaseConfigError(`Cannot open the SQLite database ${location.filename}: ${(cause as Error).message}`, { cause });
    }
    db.pragma(`busy_timeout = ${Math.max(0, Math.trunc(options.busyTimeoutMs ?? 5000))}`);
    // WAL lets the application write while the relay reads; it is a property of the file, kept across connections.
    db.pragma("journal_mode = WAL");
    db.pragma("foreign_keys = ON");
    return {
      dialect: "sqlite",
      db,
      filename: location.filename,
      displayUrl,
      async close() {
        if (db.open) db.close();
      },
    };
  }
  const pool = new pg.Pool({
    connectionString: location.connectionString,
    max: options.poolSize ?? 4,
    application_name: options.applicationName ?? "mail-outbox",
    options: `-c search_path=${quoteIdent(location.schema)}`,
    connectionTimeoutMillis: 10_000,
  });
  // An idle client whose backend was terminated emits 'error' on the pool; without a listener
  // that would crash the process. The next query gets a fresh connection.
  pool.on("error", () => {});
  return {
    dialect: "postgresql",
    pool,
    schema: location.schema,
    displayUrl,
    async close() {
      await pool.end();
    },
  };
}

/** SQLite keeps Prisma's DateTime as ISO-8601 text with an explicit offset (the adapter's default `timestampFormat`). */
export function toSqliteTime(d: Date): string {
  return d.toISOString().replace("Z", "+00:00");
}

/** Read a DateTime column from SQLite: ISO text (Prisma's default) or epoch milliseconds (`timestampFormat: "unixepoch-ms"`). */
export function fromSqliteTime(v: unknown): Date | null {
  if (v === null || v === undefined) return null;
  if (typeof v === "number" || typeof v === "bigint") return new Date(Number(v));
  return new Date(String(v));
}
