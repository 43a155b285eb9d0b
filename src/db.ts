/**
 * Open the store for a database URL: `file:./outbox.db` (SQLite, the embedded default) or
 * `postgresql://...` (PostgreSQL). This is the one place that picks a store; everything else
 * talks to the `Store` interface (src/store.ts).
 *
 * The relay does not go through a generated Prisma client: it runs a handful of batched
 * statements on the driver that Prisma's own adapters use (`pg`, `better-sqlite3`), so the
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

export type { Store } from "./store.js";
export { PostgresStore } from "./stores/postgres/store.js";
export { SqliteStore } from "./stores/sqlite/store.js";
export { quoteIdent } from "./stores/postgres/schema-sql.js";
export { fromSqliteTime, toSqliteTime } from "./stores/sqlite/time.js";
/** Moved to src/redact.ts (the one redaction helper); re-exported here for existing callers. */
export { redactUrl };

export type Dialect = "postgresql" | "sqlite";

export type DatabaseLocation =
  | { readonly dialect: "sqlite"; readonly filename: string }
  | {
      readonly dialect: "postgresql";
      readonly connectionString: string;
      readonly schema: string;
      /** `?pgbouncer=true` (Prisma's parameter): the URL points at PgBouncer. */
      readonly pgbouncer: boolean;
    };

/**
 * A store that `openDatabase` returns: every one is a {@link Store}. The shipped stores also
 * carry their driver handle (`pool` and `schema`; `db` and `filename`), told apart by `dialect`,
 * for tests and tools that run their own SQL beside the outbox. Library code takes a `Store`.
 */
export type Db = PostgresStore | SqliteStore;
export type PostgresDb = PostgresStore;
export type SqliteDb = SqliteStore;

export interface OpenDatabaseOptions {
  /** PostgreSQL pool size. @default 4 */
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
  throw new DatabaseConfigError(
    `Unsupported database URL ${JSON.stringify(redactUrl(url))}: use file:... for SQLite or postgresql://... for PostgreSQL.`,
  );
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
