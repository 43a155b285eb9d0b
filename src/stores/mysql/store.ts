/**
 * The MySQL/MariaDB store: a `mariadb` pool on the database of the URL (./conn.ts), the statements
 * of ./relay-sql.ts and ./schema-sql.ts, no LISTEN (the relay polls, with an adaptive interval), and
 * what MySQL's error codes mean. The statements of ./admin-sql.ts, ./fate-sql.ts, ./ops-sql.ts and
 * ./ui-sql.ts run through the methods it shares with the PostgreSQL store (../pooled-store.ts), two
 * of them here in a transaction where PostgreSQL needs none.
 *
 * Tested on MariaDB 10.11; the SQL keeps to what MySQL 8.0 also accepts (no RETURNING, no
 * UPDATE ... RETURNING; SELECT ... FOR UPDATE SKIP LOCKED, which both have).
 */
import type mariadb from "mariadb";
import { DatabaseConfigError } from "../../errors.js";
import { inspectSchema } from "../../schema.js";
import type { CountByStatus, DatabaseErrorKind, Listener, SchemaProblem, SchemaTransaction, Store, VerifyResolution } from "../../store.js";
import { PooledStore } from "../pooled-store.js";
import * as admin from "./admin-sql.js";
import * as fate from "./fate-sql.js";
import * as ops from "./ops-sql.js";
import * as ui from "./ui-sql.js";
import { createPool, inTransaction, type MysqlConnectionConfig } from "./conn.js";
import { mysqlRelayStatements, type RelayStatements } from "./relay-sql.js";
import { COLUMN_TYPES, readRecorded, readShape, schemaTransaction } from "./schema-sql.js";
import { classifyMysqlError } from "./errors.js";

export interface MysqlStoreOptions {
  readonly config: MysqlConnectionConfig;
  readonly displayUrl: string;
  /** @default 4 */
  readonly poolSize?: number;
}

/** The operator, fate, operations-state and dashboard methods are {@link PooledStore}'s, on this folder's statements. */
export class MysqlStore extends PooledStore<mariadb.Pool, mariadb.PoolConnection> implements Store {
  /** Kept for tests and tools that run their own SQL next to the store (`db.pool.query`). */
  readonly dialect = "mysql" as const;
  readonly provider = "mysql";
  readonly columnTypes = COLUMN_TYPES;
  readonly pool: mariadb.Pool;
  /** The database that holds the outbox tables (the URL's path). */
  readonly database: string;
  readonly displayUrl: string;
  readonly where: string;
  readonly claim: RelayStatements["claim"];
  readonly complete: RelayStatements["complete"];
  readonly renew: RelayStatements["renew"];
  readonly rescue: RelayStatements["rescue"];

  constructor(options: MysqlStoreOptions) {
    super({ admin, fate, ops, ui });
    this.database = options.config.database;
    this.displayUrl = options.displayUrl;
    this.where = `database ${options.config.database} of ${options.displayUrl}`;
    this.pool = createPool(options.config, options.poolSize !== undefined ? { poolSize: options.poolSize } : {});
    // An idle connection the server closed emits 'error' on the pool: the next query gets a fresh one.
    (this.pool as unknown as { on(event: string, fn: () => void): void }).on("error", () => {});
    const relay = mysqlRelayStatements(this.pool);
    this.claim = relay.claim;
    this.complete = relay.complete;
    this.renew = relay.renew;
    this.rescue = relay.rescue;
  }

  async close(): Promise<void> {
    await this.pool.end();
  }

  /** Run `fn` on one connection inside START TRANSACTION ... COMMIT (ROLLBACK when it throws). */
  protected transaction<T>(fn: (conn: mariadb.PoolConnection) => Promise<T>): Promise<T> {
    return inTransaction(this.pool, fn);
  }

  // ---- relay ----

  /** No wake-ups, and a claim that finds nothing is one indexed read (relay-sql.ts ANY_DUE): poll adaptively. */
  readonly adaptivePolling = true;

  /** MySQL and MariaDB have no LISTEN/NOTIFY: the relay polls (see `pollIntervalMs`). */
  async listen(_onWake: () => void, _onLost: (err: unknown) => void): Promise<Listener | null> {
    return null;
  }

  inspectSchema(): Promise<SchemaProblem[]> {
    return inspectSchema(this);
  }

  classifyError(err: unknown): DatabaseErrorKind {
    if (err instanceof DatabaseConfigError) return "refused";
    return classifyMysqlError(err);
  }

  // ---- operator ----

  /** One transaction per batch: the rows are locked and read, then deleted (no DELETE ... RETURNING on MySQL 8). */
  override purgeBatch(statuses: readonly string[], cutoff: Date | null, limit: number): Promise<CountByStatus[]> {
    return this.transaction((conn) => admin.purgeBatch(conn, statuses, cutoff, limit));
  }

  // ---- delivery fate ----

  /** The transition and its attempt-log line in one transaction (no UPDATE ... RETURNING to chain them in one statement). */
  override resolveUncertain(id: string, actor: string, resolution: VerifyResolution): Promise<boolean> {
    return this.transaction((conn) => this.resolveOn(conn, id, actor, resolution));
  }

  // ---- schema ----

  async readSchema() {
    const [shape, recorded] = await Promise.all([readShape(this.pool, this.database), readRecorded(this.pool, this.database)]);
    return { shape, recorded };
  }

  schemaTransaction<T>(fn: (tx: SchemaTransaction) => Promise<T>): Promise<T> {
    return schemaTransaction(this.pool, this.database, fn);
  }

  /** MODIFY restates the whole column: the shipped migration's definition (its type, NULL, its default). */
  dropNotNullFix(table: string, column: string, models: string, definition?: string): string {
    return definition !== undefined
      ? `ALTER TABLE \`${table}\` MODIFY ${definition}`
      : `ALTER TABLE \`${table}\` MODIFY \`${column}\` <its type> NULL (the type as SHOW CREATE TABLE \`${table}\` shows it; see ${models})`;
  }
}
