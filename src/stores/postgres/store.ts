/**
 * The PostgreSQL store: a `pg` pool on the schema of the URL (`?schema=`, through `search_path`),
 * the statements of ./relay-sql.ts, ./admin-sql.ts and ./schema-sql.ts, LISTEN on a connection
 * of its own, and what PostgreSQL's error codes mean.
 */
import pg from "pg";
import { inspectSchema } from "../../schema.js";
import { TRANSITIONS } from "../../states.js";
import type { DatabaseErrorKind, Listener, SchemaProblem, SchemaTransaction, StatusChange, Store } from "../../store.js";
import { toAttemptRecord, toMailRecord } from "../rows.js";
import * as sql from "./admin-sql.js";
import { postgresRelayStatements, type RelayStatements } from "./relay-sql.js";
import { COLUMN_TYPES, quoteIdent, readRecorded, readShape, schemaTransaction } from "./schema-sql.js";

/** Rows per UPDATE of a bulk change (replay, cancel). */
const CHANGE_BATCH = 1000;

export interface PostgresStoreOptions {
  readonly connectionString: string;
  readonly schema: string;
  readonly displayUrl: string;
  /** @default 4 */
  readonly poolSize?: number;
  /** `application_name`, shown in `pg_stat_activity`. @default "mail-outbox" */
  readonly applicationName?: string;
}

export class PostgresStore implements Store {
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

  constructor(options: PostgresStoreOptions) {
    this.schema = options.schema;
    this.displayUrl = options.displayUrl;
    this.where = `schema ${options.schema} of ${options.displayUrl}`;
    this.pool = new pg.Pool({
      connectionString: options.connectionString,
      max: options.poolSize ?? 4,
      application_name: options.applicationName ?? "mail-outbox",
      options: `-c search_path=${quoteIdent(options.schema)}`,
      connectionTimeoutMillis: 10_000,
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

  // ---- relay ----

  async listen(onWake: () => void, onLost: (err: unknown) => void): Promise<Listener | null> {
    const options = this.pool.options as pg.ClientConfig;
    const name = `${options.application_name ?? "mail-outbox"} listen`.slice(0, 63);
    const client = new pg.Client({ ...options, application_name: name });
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

  // ---- operator ----

  async ping(): Promise<void> {
    await sql.ping(this.pool);
  }

  statusCounts(now: Date) {
    return sql.statusCounts(this.pool, now);
  }

  async listMails(filter: Parameters<Store["listMails"]>[0], limit: number) {
    return (await sql.listMails(this.pool, filter, limit)).map(toMailRecord);
  }

  async findMail(key: Parameters<Store["findMail"]>[0], withRaw: boolean) {
    const row = await sql.findMail(this.pool, "id" in key ? key.id : null, "messageId" in key ? key.messageId : null, withRaw);
    return row === undefined ? undefined : { mail: toMailRecord(row), raw: row.raw ?? null };
  }

  async listAttempts(mailId: string) {
    return (await sql.listAttempts(this.pool, mailId)).map(toAttemptRecord);
  }

  selectTargets(filter: Parameters<Store["selectTargets"]>[0]) {
    return sql.selectTargets(this.pool, filter, false);
  }

  async changeStatus(change: StatusChange): Promise<void> {
    const { from, to } = TRANSITIONS[change.transition];
    const apply = change.transition === "replay" ? sql.replayBatch : sql.cancelBatch;
    const client = await this.pool.connect();
    try {
      await client.query("BEGIN");
      const chosen = change.choose(await sql.selectTargets(client, change.filter, true));
      for (let i = 0; i < chosen.length; i += CHANGE_BATCH) {
        const batch = chosen.slice(i, i + CHANGE_BATCH);
        const changed = await apply(client, batch.map((t) => t.id), from, to, change.at);
        const log = change.settle(batch, changed);
        if (log.length > 0) await sql.insertAdminAttempts(client, log, change.actor, change.outcome, change.at);
      }
      await client.query("COMMIT");
    } catch (err) {
      await client.query("ROLLBACK").catch(() => {});
      throw err;
    } finally {
      client.release();
    }
  }

  countPurgeable(statuses: readonly string[], cutoff: Date | null) {
    return sql.countPurgeable(this.pool, statuses, cutoff);
  }

  purgeBatch(statuses: readonly string[], cutoff: Date | null, limit: number) {
    return sql.purgeBatch(this.pool, statuses, cutoff, limit);
  }

  largestPendingSize() {
    return sql.largestPendingSize(this.pool);
  }

  /** PostgreSQL stores timestamptz: times cannot be numbers. */
  async countNumericTimes(): Promise<null> {
    return null;
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
