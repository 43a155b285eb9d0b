/**
 * The PostgreSQL store: a `pg` pool on the schema of the URL (`?schema=`, through `search_path`),
 * the statements of ./relay-sql.ts and ./schema-sql.ts, LISTEN on a connection of its own, and
 * what PostgreSQL's error codes mean. The statements of ./admin-sql.ts, ./fate-sql.ts, ./ops-sql.ts
 * and ./ui-sql.ts run through the methods it shares with the MySQL store (../pooled-store.ts).
 */
import pg from "pg";
import { DatabaseConfigError } from "../../errors.js";
import { inspectSchema } from "../../schema.js";
import type { DatabaseErrorKind, Listener, SchemaProblem, SchemaTransaction, Store } from "../../store.js";
import { PooledStore } from "../pooled-store.js";
import * as admin from "./admin-sql.js";
import * as fate from "./fate-sql.js";
import * as ops from "./ops-sql.js";
import * as ui from "./ui-sql.js";
import { postgresRelayStatements, type RelayStatements } from "./relay-sql.js";
import { failoverFor, listenClient, type Failover } from "./hosts.js";
import { COLUMN_TYPES, quoteIdent, readRecorded, readShape, schemaTransaction } from "./schema-sql.js";

/**
 * Run `fn` on one client of `pool` inside BEGIN ... COMMIT (ROLLBACK when it throws). While the
 * client is checked out, pg-pool no longer listens for its errors: a connection the server ends
 * meanwhile (a restart, pg_terminate_backend) would emit an unhandled 'error' and end the process.
 * The listener here keeps it to a rejected query, and a broken client is dropped, not reused.
 */
export async function inTransaction<T>(pool: pg.Pool, fn: (client: pg.PoolClient) => Promise<T>): Promise<T> {
  const client = await pool.connect();
  let broken: Error | undefined;
  const onError = (err: Error) => {
    broken = err;
  };
  client.on("error", onError);
  try {
    await client.query("BEGIN");
    const result = await fn(client);
    await client.query("COMMIT");
    return result;
  } catch (err) {
    await client.query("ROLLBACK").catch((e: unknown) => {
      broken ??= e instanceof Error ? e : new Error(String(e));
    });
    throw err;
  } finally {
    client.removeListener("error", onError);
    client.release(broken);
  }
}

export interface PostgresStoreOptions {
  readonly connectionString: string;
  readonly schema: string;
  readonly displayUrl: string;
  /** @default 4 */
  readonly poolSize?: number;
  /** `application_name`, shown in `pg_stat_activity`. @default "mail-outbox" */
  readonly applicationName?: string;
  /**
   * Behind PgBouncer (`?pgbouncer=true`, as Prisma spells it): no named prepared statements, no
   * `search_path` in the startup packet (PgBouncer refuses it), the schema set per transaction
   * with `SET LOCAL`, and LISTEN only on `listenConnectionString`. @default false
   */
  readonly pgbouncer?: boolean;
  /** A direct connection (not through PgBouncer) for LISTEN; null: the pool's. @default null */
  readonly listenConnectionString?: string | null;
}

const PGBOUNCER_HINT =
  "This looks like PgBouncer: add pgbouncer=true to the database URL (postgresql://...?pgbouncer=true), and give LISTEN a direct connection with MAIL_OUTBOX_LISTEN_URL or it polls.";

/** The error PgBouncer (or its pooling) causes on a store not opened for it, said with what to do. */
function pgbouncerError(err: unknown): DatabaseConfigError | null {
  const e = err as { code?: unknown; message?: unknown } | null;
  const message = typeof e?.message === "string" ? e.message : "";
  // 26000: prepared statement does not exist, 42P05: already exists (statements of another client
  // on a pooled server connection); 08P01 "unsupported startup parameter": PgBouncer's refusal.
  if (e?.code === "26000" || e?.code === "42P05" || /unsupported startup parameter/.test(message)) {
    return new DatabaseConfigError(`${message}. ${PGBOUNCER_HINT}`, { cause: err });
  }
  return null;
}

type QueryArgs = [config: unknown, values?: unknown, callback?: unknown];

/**
 * The pool's client class. Behind PgBouncer: every query unnamed (node-postgres then sends an
 * unnamed Parse each time, which any server connection takes), and for a schema other than public
 * `SET LOCAL search_path` at each BEGIN, a statement outside a transaction wrapped in one.
 * Otherwise it only turns PgBouncer's errors into a clear {@link DatabaseConfigError}.
 */
function clientClass(pgbouncer: boolean, schema: string): typeof pg.Client {
  const setPath = pgbouncer && schema !== "public" ? `SET LOCAL search_path TO ${quoteIdent(schema)}` : null;
  const superQuery = pg.Client.prototype.query as (...args: unknown[]) => unknown;
  const superConnect = pg.Client.prototype.connect as (...args: unknown[]) => unknown;
  class OutboxClient extends pg.Client {
    private inTransaction = false;

    // @ts-expect-error one implementation for pg's overloads
    override connect(callback?: (err: Error | undefined) => void): unknown {
      // pg-pool listens for a client's errors only once connect() has called back; the check
      // below runs before that. A backend terminated meanwhile (a restart, pg_terminate_backend)
      // would emit an unhandled 'error' and end the process: hold it here and fail the connect.
      let early: Error | null = null;
      const hold = (err: Error) => {
        early ??= err;
      };
      this.on("error", hold);
      const checked = (superConnect.call(this) as Promise<void>).then(
        async () => {
          if (pgbouncer) return;
          // A pooler told to ignore `options` (PgBouncer's ignore_startup_parameters) drops the
          // schema silently: say so now, not with statements on the wrong tables later.
          const r = (await superQuery.call(this, "SHOW search_path")) as pg.QueryResult<{ search_path: string }>;
          const got = String(r.rows[0]?.search_path ?? "").replace(/"/g, "");
          if (got !== schema) {
            await this.end().catch(() => {});
            throw new DatabaseConfigError(`The server's search_path is ${JSON.stringify(got)}, not the schema ${JSON.stringify(schema)} the connection asked for: a pooler dropped the startup parameter. ${PGBOUNCER_HINT}`);
          }
        },
        (err: unknown) => {
          throw (pgbouncer ? null : pgbouncerError(err)) ?? err;
        },
      );
      const run = checked.then(() => {
        if (early !== null) throw early;
      });
      if (typeof callback !== "function") return run.finally(() => this.removeListener("error", hold));
      // The listener goes only after the callback, in which the pool puts its own.
      run.then(
        () => {
          callback(undefined);
          this.removeListener("error", hold);
        },
        (err: Error) => {
          callback(err);
          this.removeListener("error", hold);
        },
      );
      return undefined;
    }

    // @ts-expect-error one implementation for pg's overloads
    override query(...args: QueryArgs): unknown {
      let [config, values, callback] = args;
      // Submittables (cursors, streams) go as they are.
      if (config !== null && typeof config === "object" && typeof (config as { submit?: unknown }).submit === "function") {
        return superQuery.apply(this, args);
      }
      if (typeof values === "function") {
        callback = values;
        values = undefined;
      }
      const cfg: Record<string, unknown> = typeof config === "string" ? { text: config } : { ...(config as object) };
      if (values !== undefined) cfg.values = values;
      if (pgbouncer) delete cfg.name;
      const run = this.run(cfg).catch((err: unknown) => {
        throw (pgbouncer ? null : pgbouncerError(err)) ?? err;
      });
      if (typeof callback !== "function") return run;
      run.then((r) => (callback as (e: unknown, r?: unknown) => void)(null, r), (err: unknown) => (callback as (e: unknown) => void)(err));
      return undefined;
    }

    private async run(cfg: Record<string, unknown>): Promise<unknown> {
      const q = (c: unknown) => superQuery.call(this, c) as Promise<pg.QueryResult | pg.QueryResult[]>;
      if (setPath === null) return q(cfg);
      const text = typeof cfg.text === "string" ? cfg.text.trimStart() : "";
      if (/^(BEGIN|START TRANSACTION)\b/i.test(text)) {
        // One round trip: BEGIN and SET LOCAL as one simple query.
        const r = cfg.values === undefined ? await q(`${text}; ${setPath}`) : await q(cfg);
        this.inTransaction = true;
        if (!Array.isArray(r)) await q(setPath);
        return Array.isArray(r) ? r[0] : r;
      }
      if (/^(COMMIT|ROLLBACK|END|ABORT)\b/i.test(text)) {
        this.inTransaction = false;
        return q(cfg);
      }
      if (this.inTransaction) return q(cfg);
      // One statement on its own: its own transaction, so the schema holds on whichever server
      // connection PgBouncer gives it.
      await q(`BEGIN; ${setPath}`);
      try {
        const r = await q(cfg);
        await q("COMMIT");
        return r;
      } catch (err) {
        await q("ROLLBACK").catch(() => {});
        throw err;
      }
    }
  }
  return OutboxClient as unknown as typeof pg.Client;
}

/** The operator, fate, operations-state and dashboard methods are {@link PooledStore}'s, on this folder's statements. */
export class PostgresStore extends PooledStore<pg.Pool, pg.PoolClient> implements Store {
  /** Kept for tests and tools that run their own SQL next to the store (`db.pool.query`). */
  readonly dialect = "postgresql" as const;
  readonly provider = "postgresql";
  readonly columnTypes = COLUMN_TYPES;
  readonly pool: pg.Pool;
  /** The schema that holds the outbox tables (`?schema=` in the URL, as Prisma reads it; default `public`). */
  readonly schema: string;
  readonly displayUrl: string;
  readonly where: string;
  readonly claim: RelayStatements["claim"];
  readonly complete: RelayStatements["complete"];
  readonly renew: RelayStatements["renew"];
  readonly rescue: RelayStatements["rescue"];
  /** Opened for PgBouncer (`?pgbouncer=true`): unnamed statements, no LISTEN without a direct URL. */
  readonly pgbouncer: boolean;
  /** The direct connection LISTEN uses, when not the pool's. */
  readonly listenConnectionString: string | null;
  /** Several hosts in the URL (`h1,h2/db?target_session_attrs=read-write`): which one connections go to (./hosts.ts). */
  readonly failover: Failover | null;

  constructor(options: PostgresStoreOptions) {
    super({ admin, fate, ops, ui });
    this.schema = options.schema;
    this.displayUrl = options.displayUrl;
    this.where = `schema ${options.schema} of ${options.displayUrl}`;
    this.pgbouncer = options.pgbouncer ?? false;
    this.listenConnectionString = options.listenConnectionString ?? null;
    this.failover = failoverFor(options.connectionString);
    this.pool = new pg.Pool({
      connectionString: this.failover?.connectionString ?? options.connectionString,
      max: options.poolSize ?? 4,
      application_name: options.applicationName ?? "mail-outbox",
      // PgBouncer refuses `options` in the startup packet: there the schema is set per transaction.
      ...(this.pgbouncer ? {} : { options: `-c search_path=${quoteIdent(options.schema)}` }),
      connectionTimeoutMillis: 10_000,
      Client: this.failover ? this.failover.wrap(clientClass(this.pgbouncer, options.schema)) : clientClass(this.pgbouncer, options.schema),
    });
    // An idle client whose backend was terminated emits 'error' on the pool; without a listener
    // that would crash the process. The next query gets a fresh connection.
    this.pool.on("error", () => {});
    const relay = postgresRelayStatements(this.pool);
    this.claim = relay.claim;
    this.complete = relay.complete;
    this.renew = relay.renew;
    this.rescue = relay.rescue;
  }

  async close(): Promise<void> {
    await this.pool.end();
  }

  /** Run `fn` on one client inside BEGIN ... COMMIT (ROLLBACK when it throws). */
  protected transaction<T>(fn: (client: pg.PoolClient) => Promise<T>): Promise<T> {
    return inTransaction(this.pool, fn);
  }

  // ---- relay ----

  async listen(onWake: () => void, onLost: (err: unknown) => void): Promise<Listener | null> {
    // Behind PgBouncer a LISTEN would sit on a server connection other clients' transactions
    // use: only on a direct connection; without one the relay polls.
    if (this.pgbouncer && this.listenConnectionString === null) return null;
    const options = this.pool.options as pg.ClientConfig;
    const name = `${options.application_name ?? "mail-outbox"} listen`.slice(0, 63);
    const client =
      this.listenConnectionString === null
        ? new (this.failover ? this.failover.wrap(pg.Client) : pg.Client)({ ...options, application_name: name })
        : listenClient(this.listenConnectionString, { application_name: name, connectionTimeoutMillis: 10_000 });
    // onLost only for a connection that was listening and not closed by us, and only once.
    let state: "connecting" | "listening" | "done" = "connecting";
    const lose = (err: unknown) => {
      if (state !== "listening") return;
      state = "done";
      client.end().catch(() => {});
      onLost(err);
    };
    client.on("error", lose);
    client.on("end", () => lose(new Error("the LISTEN connection ended")));
    // The trigger sends the table's schema: ignore outboxes of other schemas in the same database.
    client.on("notification", (n) => {
      if (!n.payload || n.payload === this.schema) onWake();
    });
    try {
      await client.connect();
      await client.query("LISTEN mail_outbox");
    } catch (err) {
      state = "done";
      await client.end().catch(() => {});
      throw err;
    }
    state = "listening";
    return {
      close: async () => {
        state = "done";
        await client.end().catch(() => {});
      },
    };
  }

  inspectSchema(): Promise<SchemaProblem[]> {
    return inspectSchema(this);
  }

  classifyError(err: unknown): DatabaseErrorKind {
    const e = err as { code?: unknown; message?: unknown } | null;
    const code = typeof e?.code === "string" ? e.code : "";
    if (err instanceof DatabaseConfigError) return "refused"; // e.g. PgBouncer without ?pgbouncer=true
    if (code === "42P01" || code === "42703" || code === "3F000") return "schema"; // undefined table, column, schema
    if (code === "23505") return "conflict";
    if (code === "28P01" || code === "28000" || code === "3D000") return "refused"; // password, authorization, no such database
    if (/^(08|57P|53|40001|40P01|55P03)/.test(code)) return "unavailable"; // connection, shutdown, resources, serialization, lock
    if (["ECONNREFUSED", "ECONNRESET", "ETIMEDOUT", "EPIPE", "ENOTFOUND", "EAI_AGAIN", "EHOSTUNREACH", "ENETUNREACH"].includes(code)) return "unavailable";
    if (err instanceof AggregateError && err.errors.some((x) => this.classifyError(x) === "unavailable")) return "unavailable";
    if (code !== "") return "other";
    // node-postgres reports a lost connection or a connect timeout without a code.
    return typeof e?.message === "string" && /Connection terminated|connection error|timeout|not queryable|connect/i.test(e.message) ? "unavailable" : "other";
  }

  // ---- schema ----

  async readSchema() {
    const [shape, recorded] = await Promise.all([readShape(this.pool, this.schema), readRecorded(this.pool, this.schema)]);
    return { shape, recorded };
  }

  schemaTransaction<T>(fn: (tx: SchemaTransaction) => Promise<T>): Promise<T> {
    return schemaTransaction(this.pool, this.schema, fn);
  }

  dropNotNullFix(table: string, column: string): string {
    return `ALTER TABLE "${table}" ALTER COLUMN "${column}" DROP NOT NULL`;
  }
}
