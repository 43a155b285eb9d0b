/**
 * The MySQL/MariaDB connection: a `mariadb` pool (the driver `@prisma/adapter-mariadb` uses) on the
 * database of the URL, in UTC, and transactions on one connection of it. The pool closes when
 * idle, so a program exits, and reports a refused connection at once (`OutboxPool`).
 *
 * Times: the outbox's DATETIME(3) columns hold UTC. Every session runs with `time_zone = '+00:00'`
 * (so NOW(3) is UTC) and the pool reads and writes DATETIME as UTC (`typeCast`, `utcWrites`:
 * the driver alone would use Node's time zone), whatever the server's or Node's time zone;
 * Prisma's MariaDB adapter writes UTC too.
 */
import { EventEmitter } from "node:events";
import mariadb from "mariadb";
import { isConnectionRefusal } from "./errors.js";

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
  /** How long the pool stays open without a statement before all its connections close. @default 5000 */
  readonly idleCloseMs?: number;
}

/**
 * How long the pool may go without a statement before it closes every connection (the next
 * statement opens a new one). An open connection keeps Node's event loop alive, so without
 * this a program that ran `relay.runOnce()` or one operator function would not exit until it
 * closed the store; this way it exits a few seconds after its last statement, as it does on
 * PostgreSQL (pg's pool closes idle clients after 10 s). A started relay looks for mail at
 * least once per `pollIntervalMs` (default 1 s), so with the defaults its connection stays open.
 */
const IDLE_CLOSE_MS = 5_000;

/**
 * How long a statement waits for the first connection of an empty pool before one direct
 * connection attempt asks the server why it is taking so long. The driver's pool retries a
 * failed connection until its acquire timeout (connect_timeout + 2 s) whatever the server said,
 * so a wrong password or an unknown database would take that long to report. A local server
 * answers well within this, so the attempt is rarely made when all is well.
 */
const REFUSAL_CHECK_AFTER_MS = 200;

/** The driver's settings for one connection: where, who, and how each session is set up. */
function connectionConfig(config: MysqlConnectionConfig): mariadb.ConnectionConfig {
  return {
    ...(config.socketPath !== undefined ? { socketPath: config.socketPath } : { host: config.host, port: config.port }),
    user: config.user,
    ...(config.password !== undefined ? { password: config.password } : {}),
    database: config.database,
    ...(config.ssl !== undefined ? { ssl: config.ssl } : {}),
    connectTimeout: config.connectTimeoutMs,
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
  } as unknown as mariadb.ConnectionConfig;
}

/**
 * Open the pool: an {@link OutboxPool}, which opens the driver's pool at the first statement
 * and closes it after `idleCloseMs` without one.
 */
export function createPool(config: MysqlConnectionConfig, options: MysqlPoolOptions = {}): mariadb.Pool {
  return new OutboxPool(config, options);
}

/** The driver's error for a statement on a pool that was closed (its code and number). */
function poolClosedError(message: string): Error {
  return Object.assign(new Error(message), { code: "ER_POOL_ALREADY_CLOSED", errno: 45027, sqlState: "HY000", fatal: false });
}

/**
 * The store's pool, a `mariadb.Pool` to its callers (statements, `inTransaction`, tests and tools
 * that run their own SQL), in front of the driver's pool. It adds what the driver's lacks:
 *
 * - It closes when idle. The driver's pool keeps at least one connection open for as long as it
 *   lives, so a program would not exit; this one ends the driver's pool `idleCloseMs` after the
 *   last statement (or released connection) and opens a new one at the next (IDLE_CLOSE_MS).
 * - It reports a refused connection at once. The driver's pool retries a connection the server
 *   refused (wrong password, unknown database) until its acquire timeout; here a statement that
 *   has waited REFUSAL_CHECK_AFTER_MS for the first connection of an empty pool makes one direct
 *   connection attempt, and when the server refuses that one for good (errors.ts,
 *   `isConnectionRefusal`) every statement waiting for a connection fails with the server's
 *   answer. A server that does not answer (down, unreachable) is waited for as before, until
 *   connect_timeout + 2 s.
 *
 * Statements and connections are the driver's, with Dates written as UTC (`utcWrites`).
 */
class OutboxPool extends EventEmitter implements mariadb.Pool {
  private readonly poolConfig: mariadb.PoolConfig;
  private readonly connConfig: mariadb.ConnectionConfig;
  private readonly idleCloseMs: number;
  private driverPool: mariadb.Pool | null = null;
  private isClosed = false;
  /** Statements running and connections handed out: the pool is idle at 0. */
  private busy = 0;
  private idleTimer: NodeJS.Timeout | null = null;
  /** Statements waiting for a connection, to fail when the server refuses one. */
  private readonly waiting = new Set<(err: unknown) => void>();
  /** The direct connection attempt in progress (see the class comment), shared by everyone waiting. */
  private refusalCheck: Promise<void> | null = null;

  constructor(config: MysqlConnectionConfig, options: MysqlPoolOptions) {
    super();
    // As the driver's own pool does: an 'error' event without a listener would end the process.
    this.on("error", () => {});
    this.idleCloseMs = options.idleCloseMs ?? IDLE_CLOSE_MS;
    this.connConfig = connectionConfig(config);
    this.poolConfig = {
      ...this.connConfig,
      connectionLimit: options.poolSize ?? 4,
      // One connection kept open while the pool is in use (a polling relay needs no more), more
      // opened as needed and closed after a minute unused. (0 would open none at all: the pool
      // opens a connection only when it has fewer idle than this.) A connection idle for over
      // 500 ms is pinged before it is handed out (the driver's default), so one the server
      // closed is replaced, not used.
      minimumIdle: 1,
      idleTimeout: 60,
      acquireTimeout: config.connectTimeoutMs + 2_000,
    } as mariadb.PoolConfig;
  }

  get closed(): boolean {
    return this.isClosed;
  }

  /** The driver's pool, opened now if it is not open. */
  private driver(): mariadb.Pool {
    if (this.driverPool === null) {
      const pool = mariadb.createPool(this.poolConfig);
      // An idle connection the server closed emits 'error' on the pool: the next statement gets a fresh one.
      (pool as unknown as EventEmitter).on("error", (err: unknown) => this.emit("error", err));
      this.driverPool = pool;
    }
    return this.driverPool;
  }

  /** Count a statement or a handed-out connection as running until `done` is called (once). */
  private use(): () => void {
    if (this.idleTimer !== null) {
      clearTimeout(this.idleTimer);
      this.idleTimer = null;
    }
    this.busy++;
    let done = false;
    return () => {
      if (done) return;
      done = true;
      if (--this.busy > 0 || this.isClosed) return;
      this.idleTimer = setTimeout(() => this.closeIdle(), this.idleCloseMs);
      // The pool's connections hold the process until this closes them; the timer itself does not.
      this.idleTimer.unref();
    };
  }

  private closeIdle(): void {
    this.idleTimer = null;
    const pool = this.driverPool;
    if (this.busy > 0 || pool === null) return;
    this.driverPool = null;
    void pool.end().catch(() => {});
  }

  /**
   * A connection of the driver's pool, or the server's reason for refusing one (see the class
   * comment). A connection that arrives after the caller was given the refusal goes back unused.
   */
  private async acquire(): Promise<mariadb.PoolConnection> {
    if (this.isClosed) throw poolClosedError("pool is closed");
    const pool = this.driver();
    return new Promise<mariadb.PoolConnection>((resolve, reject) => {
      let settled = false;
      const timer = setTimeout(() => {
        // Only when nothing is connected: a full pool under load is waited for, not second-guessed.
        if (pool.totalConnections() === 0) this.checkRefusal();
      }, REFUSAL_CHECK_AFTER_MS);
      const settle = () => {
        settled = true;
        clearTimeout(timer);
        this.waiting.delete(refuse);
      };
      const refuse = (reason: unknown) => {
        if (settled) return;
        settle();
        reject(reason);
      };
      pool.getConnection().then(
        (conn) => {
          // Refused meanwhile: the driver's request was still queued; what it brings goes back unused.
          if (settled) void conn.release().catch(() => {});
          else {
            settle();
            resolve(conn);
          }
        },
        (err: unknown) => {
          if (settled) return;
          settle();
          reject(err);
        },
      );
      this.waiting.add(refuse);
    });
  }

  /** One direct connection attempt; a refusal for good fails every statement waiting for a connection. */
  private checkRefusal(): void {
    if (this.refusalCheck !== null) return;
    this.refusalCheck = mariadb
      .createConnection(this.connConfig)
      .then(
        (conn) => conn.end().catch(() => {}),
        (err: unknown) => {
          if (!isConnectionRefusal(err)) return; // down or unreachable: the pool keeps trying
          const reason = err instanceof AggregateError ? (err.errors.find(isConnectionRefusal) as unknown) : err;
          for (const refuse of [...this.waiting]) refuse(reason);
        },
      )
      .finally(() => {
        this.refusalCheck = null;
      });
  }

  /** Run `fn` on a connection of the pool, given back after. */
  private async withConnection<T>(fn: (conn: mariadb.PoolConnection) => Promise<T>): Promise<T> {
    const done = this.use();
    try {
      const conn = await this.acquire();
      try {
        return await fn(conn);
      } finally {
        await conn.release().catch(() => {});
      }
    } finally {
      done();
    }
  }

  query<T = any>(sql: string | mariadb.QueryOptions, values?: any): Promise<T> {
    return this.withConnection((conn) => (values === undefined ? conn.query<T>(sql) : conn.query<T>(sql, utcValues(values))));
  }

  batch<T = mariadb.UpsertResult | mariadb.UpsertResult[]>(sql: string | mariadb.QueryOptions, values?: any): Promise<T> {
    return this.withConnection((conn) => conn.batch<T>(sql, utcValues(values)));
  }

  execute<T = any>(sql: string | mariadb.QueryOptions, values?: any): Promise<T> {
    return this.withConnection((conn) => (values === undefined ? conn.execute<T>(sql) : conn.execute<T>(sql, utcValues(values))));
  }

  importFile(config: mariadb.SqlImportOptions): Promise<void> {
    return this.withConnection((conn) => conn.importFile(config));
  }

  /** A connection of its own (for a transaction): counts as in use until released, ended or destroyed. */
  async getConnection(): Promise<mariadb.PoolConnection> {
    const done = this.use();
    let conn: mariadb.PoolConnection;
    try {
      conn = utcWrites(await this.acquire());
    } catch (err) {
      done();
      throw err;
    }
    for (const name of ["release", "end", "close"] as const) {
      const original = conn[name].bind(conn);
      conn[name] = () => original().finally(done);
    }
    const destroy = conn.destroy.bind(conn);
    conn.destroy = () => {
      destroy();
      done();
    };
    return conn;
  }

  async end(): Promise<void> {
    if (this.isClosed) throw poolClosedError("pool is already closed");
    this.isClosed = true;
    if (this.idleTimer !== null) clearTimeout(this.idleTimer);
    this.idleTimer = null;
    const pool = this.driverPool;
    this.driverPool = null;
    if (pool !== null) await pool.end();
  }

  activeConnections(): number {
    return this.driverPool?.activeConnections() ?? 0;
  }

  totalConnections(): number {
    return this.driverPool?.totalConnections() ?? 0;
  }

  idleConnections(): number {
    return this.driverPool?.idleConnections() ?? 0;
  }

  taskQueueSize(): number {
    return this.driverPool?.taskQueueSize() ?? 0;
  }

  // Escaping asks the driver's pool (the server's version and settings): opened for it if need be,
  // then closed when idle like after a statement.
  escape(value: any): string {
    return this.withDriver((pool) => pool.escape(value));
  }

  escapeId(identifier: string): string {
    return this.withDriver((pool) => pool.escapeId(identifier));
  }

  private withDriver<T>(fn: (pool: mariadb.Pool) => T): T {
    const done = this.use();
    try {
      return fn(this.driver());
    } finally {
      done();
    }
  }
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
