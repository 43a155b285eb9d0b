/**
 * The MySQL/MariaDB connection: a `mariadb` pool (the driver `@prisma/adapter-mariadb` uses) on the
 * database of the URL, in UTC, and transactions on one connection of it.
 *
 * Times: the outbox's DATETIME(3) columns hold UTC. Every session runs with `time_zone = '+00:00'`
 * (so NOW(3) is UTC) and the pool reads and writes DATETIME as UTC (`typeCast`, `utcWrites`:
 * the driver alone would use Node's time zone), whatever the server's or Node's time zone;
 * Prisma's MariaDB adapter writes UTC too.
 */
import mariadb from "mariadb";

/** A pool or one connection of it: what every statement function takes. */
export type Queryable = Pick<mariadb.Pool, "query" | "batch"> | mariadb.PoolConnection;

/** What `parseDatabaseUrl` (src/db.ts) reads from a `mysql://` or `mariadb://` URL. */
export interface MysqlConnectionConfig {
  readonly host: string;
  readonly port: number;
  readonly user: string;
  readonly password: string | undefined;
  readonly database: string;
  /** `?socket=/path` (Prisma's parameter): a Unix socket instead of host and port. */
  readonly socketPath: string | undefined;
  /** `?sslaccept=strict|accept_invalid_certs` or `?ssl=true`: TLS to the server. */
  readonly ssl: boolean | { readonly rejectUnauthorized: boolean } | undefined;
  /** `?connect_timeout=` in seconds (Prisma's parameter). @default 10 */
  readonly connectTimeoutMs: number;
}

export interface MysqlPoolOptions {
  /** @default 4 */
  readonly poolSize?: number;
}

/** Open the pool. No connection is made until the first statement. */
export function createPool(config: MysqlConnectionConfig, options: MysqlPoolOptions = {}): mariadb.Pool {
  const pool = mariadb.createPool({
    ...(config.socketPath !== undefined ? { socketPath: config.socketPath } : { host: config.host, port: config.port }),
    user: config.user,
    ...(config.password !== undefined ? { password: config.password } : {}),
    database: config.database,
    ...(config.ssl !== undefined ? { ssl: config.ssl } : {}),
    connectionLimit: options.poolSize ?? 4,
    // One connection kept open while idle (an idle relay needs no more), more opened as needed and
    // closed after a minute unused. (0 would open none at all: the pool opens a connection only
    // when it has fewer idle than this.) A connection idle for over 500 ms is pinged before it is
    // handed out (the driver's default), so one the server closed is replaced, not used.
    minimumIdle: 1,
    idleTimeout: 60,
    connectTimeout: config.connectTimeoutMs,
    acquireTimeout: config.connectTimeoutMs + 2_000,
    // UTC on both sides (see the module comment).
    timezone: "Z",
    // READ COMMITTED, as PostgreSQL runs: a locking read (the claim's SELECT ... FOR UPDATE SKIP
    // LOCKED) locks the rows it returns and no gaps, so claims of two relays and the inserts of
    // enqueueing apps do not wait on each other's gap locks (nor deadlock on them). InnoDB logs
    // such sessions' changes row by row: binlog_format must be ROW or MIXED (the defaults), not STATEMENT.
    initSql: ["SET time_zone = '+00:00'", "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED"],
    // affectedRows counts the rows an UPDATE matched, not only those whose values changed, as
    // PostgreSQL counts them (the driver's default, relied on by `complete`).
    foundRows: true,
    bigIntAsNumber: true,
    insertIdAsNumber: true,
    decimalAsNumber: true,
    checkDuplicate: false,
    // JSON columns come back as text on MariaDB (they are LONGTEXT there) and as objects on MySQL
    // unless this is off: text on both, parsed by the store.
    autoJsonMap: false,
    jsonStrings: true,
    // DATETIME text is UTC (see utcWrites for the other direction).
    typeCast: (column: { type: string; string(): string | null }, next: () => unknown) =>
      column.type === "DATETIME" || column.type === "TIMESTAMP" ? utcDate(column.string()) : next(),
  } as unknown as mariadb.PoolConfig);
  const getConnection = pool.getConnection.bind(pool);
  pool.getConnection = async () => utcWrites(await getConnection());
  return utcWrites(pool);
}

/*
 * The `mariadb` driver (3.4) writes a Date parameter and reads a DATETIME value in Node's local
 * time zone whatever its `timezone` option (which only sets the session's): with TZ other than
 * UTC, times written from JS, times from NOW(3) and times Prisma's adapter writes (UTC) would
 * disagree by the offset. So the pool reads DATETIME text as UTC (`typeCast`) and writes every
 * Date as UTC text, as @prisma/adapter-mariadb does.
 */

/** A Date as DATETIME(3) text in UTC. */
export function utcDateTime(d: Date): string {
  return d.toISOString().slice(0, 23).replace("T", " ");
}

/** DATETIME text (UTC) as a Date; the zero date as null, as the driver reads it. */
function utcDate(text: string | null): Date | null {
  if (text === null || text.startsWith("0000-00-00")) return null;
  return new Date(`${text.replace(" ", "T")}Z`);
}

/** Statement values with every Date (also in a list, a batch's rows, a named-placeholder object) as UTC text. */
function utcValues(v: unknown): unknown {
  if (v instanceof Date) return utcDateTime(v);
  if (Array.isArray(v)) return v.map(utcValues);
  if (v !== null && typeof v === "object" && Object.getPrototypeOf(v) === Object.prototype) {
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, utcValues(x)]));
  }
  return v;
}

const UTC_WRITES = Symbol("mail-outbox utc writes");

/** Make `query`, `batch` and `execute` of a pool or a connection write Dates as UTC text (once per object). */
function utcWrites<T extends object>(target: T): T {
  const t = target as unknown as Record<PropertyKey, unknown>;
  if (t[UTC_WRITES] === true) return target;
  for (const name of ["query", "batch", "execute"]) {
    const fn = t[name];
    if (typeof fn !== "function") continue;
    const call = (fn as (...args: unknown[]) => unknown).bind(target);
    t[name] = (sql: unknown, values?: unknown) => (values === undefined ? call(sql) : call(sql, utcValues(values)));
  }
  t[UTC_WRITES] = true;
  return target;
}

/**
 * Run `fn` on one connection inside START TRANSACTION ... COMMIT (ROLLBACK when it throws). A
 * connection whose rollback fails is destroyed, not returned to the pool.
 */
export async function inTransaction<T>(pool: mariadb.Pool, fn: (conn: mariadb.PoolConnection) => Promise<T>): Promise<T> {
  const conn = await pool.getConnection();
  let broken = false;
  try {
    await conn.beginTransaction();
    const result = await fn(conn);
    await conn.commit();
    return result;
  } catch (err) {
    await conn.rollback().catch(() => {
      broken = true;
    });
    throw err;
  } finally {
    if (broken) conn.destroy();
    else await conn.release().catch(() => {});
  }
}

/** Quote an identifier with backquotes (database names only; table and column names are fixed). */
export function quoteMysqlIdent(name: string): string {
  return `\`${name.replace(/`/g, "``")}\``;
}
