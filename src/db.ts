/**
 * Open the store for a database URL: `file:./outbox.db` (SQLite, the embedded default),
 * `postgresql://...` (PostgreSQL) or `mysql://...` / `mariadb://...` (MySQL 8, MariaDB 10.6+). This is the one place that picks a store; everything else
 * talks to the `Store` interface (src/store.ts).
 *
 * The relay does not go through a generated Prisma client: it runs a handful of batched
 * statements on the driver that Prisma's own adapters use (`pg`, `better-sqlite3`, `mariadb`), so the
 * sidecar needs no code from the application.
 */
import { existsSync } from "node:fs";
import path from "node:path";
import { DatabaseConfigError } from "./errors.js";
import { redactUrl } from "./redact.js";
import type { Store } from "./store.js";
import { PostgresStore } from "./stores/postgres/store.js";
import { parseMultiHostUrl, redactHostsUrl, withHosts } from "./stores/postgres/hosts.js";
import { SqliteStore } from "./stores/sqlite/store.js";
import { MysqlStore } from "./stores/mysql/store.js";
import type { MysqlConnectionConfig } from "./stores/mysql/conn.js";

export type { Store } from "./store.js";
export { PostgresStore } from "./stores/postgres/store.js";
export { SqliteStore } from "./stores/sqlite/store.js";
export { MysqlStore } from "./stores/mysql/store.js";
export { quoteIdent } from "./stores/postgres/schema-sql.js";
export { fromSqliteTime, toSqliteTime } from "./stores/sqlite/time.js";
/** Moved to src/redact.ts (the one redaction helper); re-exported here for existing callers. */
export { redactUrl };

export type Dialect = "postgresql" | "sqlite" | "mysql";

export type DatabaseLocation =
  | { readonly dialect: "sqlite"; readonly filename: string }
  | {
      readonly dialect: "postgresql";
      readonly connectionString: string;
      readonly schema: string;
      /** `?pgbouncer=true` (Prisma's parameter): the URL points at PgBouncer. */
      readonly pgbouncer: boolean;
    }
  | { readonly dialect: "mysql"; readonly config: MysqlConnectionConfig };

/**
 * A store that `openDatabase` returns: every one is a {@link Store}. The shipped stores also
 * carry their driver handle (`pool` and `schema`; `db` and `filename`), told apart by `dialect`,
 * for tests and tools that run their own SQL beside the outbox. Library code takes a `Store`.
 */
export type Db = PostgresStore | SqliteStore | MysqlStore;
export type PostgresDb = PostgresStore;
export type SqliteDb = SqliteStore;
export type MysqlDb = MysqlStore;

export interface OpenDatabaseOptions {
  /** PostgreSQL and MySQL pool size. @default 4 */
  readonly poolSize?: number;
  /** PostgreSQL `application_name`, shown in `pg_stat_activity`. @default "mail-outbox" */
  readonly applicationName?: string;
  /** SQLite: how long a writer waits for the lock before failing. @default 5000 */
  readonly busyTimeoutMs?: number;
  /**
   * PostgreSQL: a direct URL (not through PgBouncer) for LISTEN. Behind PgBouncer
   * (`?pgbouncer=true`) without one, relays poll. @default process.env.MAIL_OUTBOX_LISTEN_URL
   */
  readonly listenUrl?: string | null;
}

/**
 * Parse a database URL into where it points.
 * @throws DatabaseConfigError when the URL is empty or names none of SQLite, PostgreSQL, MySQL/MariaDB.
 */
export function parseDatabaseUrl(url: string | undefined, cwd = process.cwd()): DatabaseLocation {
  if (url === undefined || url.trim() === "") {
    throw new DatabaseConfigError(
      "No database URL: set DATABASE_URL (or pass --database-url) to file:./outbox.db for SQLite, postgresql://user@host/db for PostgreSQL or mysql://user@host/db for MySQL/MariaDB.",
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
    // Several hosts (`h1:5432,h2:5432`, libpq's failover form) are no valid WHATWG URL: parse the
    // first, put the list back after (src/stores/postgres/hosts.ts).
    const multi = parseMultiHostUrl(url);
    try {
      parsed = new URL(multi?.url ?? url);
    } catch (cause) {
      throw new DatabaseConfigError(`The PostgreSQL URL ${redactUrl(url)} is not a valid URL.`, { cause });
    }
    const schema = parsed.searchParams.get("schema") ?? "public";
    if (!/^[A-Za-z_][A-Za-z0-9_$]{0,62}$/.test(schema)) {
      throw new DatabaseConfigError(`The schema ${JSON.stringify(schema)} in the database URL is not a plain identifier (letters, digits, _ and $).`);
    }
    // `pgbouncer=true` is Prisma's parameter too: the same DATABASE_URL serves both.
    const bouncer = parsed.searchParams.get("pgbouncer");
    if (bouncer !== null && bouncer !== "true" && bouncer !== "false") {
      throw new DatabaseConfigError(`pgbouncer=${JSON.stringify(bouncer)} in the database URL: write pgbouncer=true (the URL points at PgBouncer) or leave it out.`);
    }
    // `schema` and `pgbouncer` are Prisma's parameters, not libpq's: strip them before handing the URL to pg.
    parsed.searchParams.delete("schema");
    parsed.searchParams.delete("pgbouncer");
    return { dialect: "postgresql", connectionString: multi ? withHosts(parsed.toString(), multi) : parsed.toString(), schema, pgbouncer: bouncer === "true" };
  }
  if (/^(mysql|mariadb):\/\//.test(url)) return { dialect: "mysql", config: parseMysqlUrl(url) };
  throw new DatabaseConfigError(
    `Unsupported database URL ${JSON.stringify(redactUrl(url))}: use file:... for SQLite, postgresql://... for PostgreSQL or mysql://... (also mariadb://...) for MySQL and MariaDB.`,
  );
}

/** Prisma's MySQL URL parameters that do not change where the outbox is (pool and timeout tuning of Prisma's own client). */
const PRISMA_MYSQL_PARAMS = new Set(["connection_limit", "pool_timeout", "socket_timeout", "max_idle_connection_lifetime", "max_connection_lifetime", "statement_cache_size", "sslcert", "sslidentity", "sslpassword"]);

/**
 * A `mysql://user:password@host:3306/database` URL (Prisma's form; `mariadb://` too) as connection
 * settings. Understood parameters: `socket`, `sslaccept` (`strict` or `accept_invalid_certs`),
 * `ssl`, `connect_timeout` (seconds); Prisma's pool parameters are allowed and ignored; anything
 * else is an error, so a typo does not pass silently.
 */
function parseMysqlUrl(url: string): MysqlConnectionConfig {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch (cause) {
    throw new DatabaseConfigError(`The MySQL URL ${redactUrl(url)} is not a valid URL.`, { cause });
  }
  const database = decodeURIComponent(parsed.pathname.replace(/^\//, ""));
  if (database === "" || database.includes("/")) {
    throw new DatabaseConfigError(`The MySQL URL ${redactUrl(url)} names no database: write mysql://user@host:3306/<database>.`);
  }
  if (!/^[A-Za-z0-9_$-]{1,64}$/.test(database)) {
    throw new DatabaseConfigError(`The database ${JSON.stringify(database)} in the MySQL URL is not a plain name (letters, digits, _, $ and -, at most 64).`);
  }
  let ssl: MysqlConnectionConfig["ssl"];
  let socketPath: string | undefined;
  let connectTimeoutMs = 10_000;
  for (const [key, value] of parsed.searchParams) {
    if (key === "socket") socketPath = value;
    else if (key === "sslaccept") {
      if (value !== "strict" && value !== "accept_invalid_certs") throw new DatabaseConfigError(`sslaccept=${JSON.stringify(value)} in the MySQL URL: write sslaccept=strict or sslaccept=accept_invalid_certs.`);
      ssl = { rejectUnauthorized: value === "strict" };
    } else if (key === "ssl") {
      if (value !== "true" && value !== "false") throw new DatabaseConfigError(`ssl=${JSON.stringify(value)} in the MySQL URL: write ssl=true or leave it out.`);
      ssl = value === "true" ? { rejectUnauthorized: true } : undefined;
    } else if (key === "connect_timeout") {
      const seconds = Number(value);
      if (!Number.isFinite(seconds) || seconds <= 0) throw new DatabaseConfigError(`connect_timeout=${JSON.stringify(value)} in the MySQL URL: give a number of seconds above 0.`);
      connectTimeoutMs = Math.round(seconds * 1000);
    } else if (!PRISMA_MYSQL_PARAMS.has(key)) {
      throw new DatabaseConfigError(`The MySQL URL parameter ${JSON.stringify(key)} is not one prisma-mail-outbox knows (socket, sslaccept, ssl, connect_timeout, and Prisma's pool parameters).`);
    }
  }
  return {
    host: parsed.hostname.replace(/^\[|\]$/g, "") || "localhost",
    port: parsed.port === "" ? 3306 : Number(parsed.port),
    user: decodeURIComponent(parsed.username) || "root",
    password: parsed.password === "" ? undefined : decodeURIComponent(parsed.password),
    database,
    socketPath,
    ssl,
    connectTimeoutMs,
  };
}

/**
 * The database file a URL names, when the database lives in a file that does not exist (opening
 * it would create an empty one); null otherwise.
 * @throws DatabaseConfigError as {@link parseDatabaseUrl}.
 */
export function missingDatabaseFile(url: string | undefined): string | null {
  const location = parseDatabaseUrl(url);
  return location.dialect === "sqlite" && !existsSync(location.filename) ? location.filename : null;
}

/** The PostgreSQL schema a URL names (`?schema=`, default `public`); null for a URL of another database or none. */
export function databaseSchema(url: string | undefined): string | null {
  if (url === undefined || !/^postgres(ql)?:\/\//.test(url)) return null;
  const location = parseDatabaseUrl(url);
  return location.dialect === "postgresql" ? location.schema : null;
}

/** Open the store for the database at `url`: a connection (SQLite) or a pool (PostgreSQL). */
export async function openDatabase(url: string | undefined, options: OpenDatabaseOptions = {}): Promise<Db> {
  const location = parseDatabaseUrl(url);
  const displayUrl = redactHostsUrl(url ?? "");
  if (location.dialect === "mysql") {
    return new MysqlStore({ config: location.config, displayUrl, ...(options.poolSize !== undefined ? { poolSize: options.poolSize } : {}) });
  }
  if (location.dialect === "sqlite") {
    return new SqliteStore({ filename: location.filename, displayUrl, ...(options.busyTimeoutMs !== undefined ? { busyTimeoutMs: options.busyTimeoutMs } : {}) });
  }
  const listenUrl = options.listenUrl === undefined ? process.env.MAIL_OUTBOX_LISTEN_URL || null : options.listenUrl;
  let listenConnectionString: string | null = null;
  if (listenUrl !== null && listenUrl.trim() !== "") {
    const listen = parseDatabaseUrl(listenUrl, process.cwd());
    if (listen.dialect !== "postgresql" || listen.pgbouncer) {
      throw new DatabaseConfigError(`The listen URL ${redactUrl(listenUrl)} must be a direct postgresql:// URL of the same database, not through PgBouncer (LISTEN needs a session of its own).`);
    }
    listenConnectionString = listen.connectionString;
  }
  return new PostgresStore({
    connectionString: location.connectionString,
    schema: location.schema,
    pgbouncer: location.pgbouncer,
    listenConnectionString,
    displayUrl,
    ...(options.poolSize !== undefined ? { poolSize: options.poolSize } : {}),
    ...(options.applicationName !== undefined ? { applicationName: options.applicationName } : {}),
  });
}

/** A store, given one or a URL to open for one call and close after it. */
export async function withStore<T>(storeOrUrl: Store | string, fn: (store: Store) => Promise<T>): Promise<T> {
  const store = typeof storeOrUrl === "string" ? await openDatabase(storeOrUrl) : storeOrUrl;
  try {
    return await fn(store);
  } finally {
    if (typeof storeOrUrl === "string") await store.close();
  }
}
