/**
 * The PostgreSQL store: a `pg` pool on the schema of the URL (`?schema=`, through `search_path`),
 * the statements of ./relay-sql.ts, ./admin-sql.ts, ./fate-sql.ts and ./schema-sql.ts, LISTEN on a connection
 * of its own, and what PostgreSQL's error codes mean.
 */
import pg from "pg";
import { DatabaseConfigError } from "../../errors.js";
import { inspectSchema } from "../../schema.js";
import { TRANSITIONS } from "../../states.js";
import type {
  CountByFate,
  DatabaseErrorKind,
  DeliveryEventInput,
  DeliveryEventRecord,
  FateStore,
  Listener,
  SchemaProblem,
  SchemaTransaction,
  StatusChange,
  Store,
  SuppressionInput,
  VerifyResolution,
} from "../../store.js";
import type { JsonValue } from "../../types.js";
import {
  bounceSuppressions,
  checkRate,
  wholeCount,
  normalizedSuppressions,
  suppressionKeys,
  toAttemptRecord,
  toDeliveryEventRecord,
  toLogCursor,
  toMailRecord,
  toSuppressionRecord,
  uuidsOnly,
} from "../rows.js";
import * as sql from "./admin-sql.js";
import * as fate from "./fate-sql.js";
import * as ops from "./ops-sql.js";
import * as ui from "./ui-sql.js";
import type { MailPageQuery } from "../../store.js";
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
  /** Opened for PgBouncer (`?pgbouncer=true`): unnamed statements, no LISTEN without a direct URL. */
  readonly pgbouncer: boolean;
  /** The direct connection LISTEN uses, when not the pool's. */
  readonly listenConnectionString: string | null;
  /** Several hosts in the URL (`h1,h2/db?target_session_attrs=read-write`): which one connections go to (./hosts.ts). */
  readonly failover: Failover | null;

  constructor(options: PostgresStoreOptions) {
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
    await inTransaction(this.pool, async (client) => {
      const chosen = change.choose(await sql.selectTargets(client, change.filter, true));
      for (let i = 0; i < chosen.length; i += CHANGE_BATCH) {
        const batch = chosen.slice(i, i + CHANGE_BATCH);
        const changed = await apply(client, batch.map((t) => t.id), from, to, change.at);
        const log = change.settle(batch, changed);
        if (log.length > 0) await sql.insertAdminAttempts(client, log, change.actor, change.outcome, change.at);
      }
    });
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

  // ---- delivery fate ----

  /** Run `fn` on one client inside BEGIN ... COMMIT (ROLLBACK when it throws). */
  private async transaction<T>(fn: (client: pg.PoolClient) => Promise<T>): Promise<T> {
    return inTransaction(this.pool, fn);
  }

  async recordDeliveryEvents(events: readonly DeliveryEventInput[], options: Parameters<FateStore["recordDeliveryEvents"]>[1] = {}): Promise<DeliveryEventRecord[]> {
    if (events.length === 0 && options.cursor === undefined) return [];
    return this.transaction(async (client) => {
      const inserted = events.length === 0 ? [] : (await fate.insertDeliveryEvents(client, events)).map(toDeliveryEventRecord);
      if (options.suppress !== undefined) {
        const entries = bounceSuppressions(inserted, options.suppress.expiresAt);
        if (entries.length > 0) await fate.insertMissingSuppressions(client, entries);
      }
      if (options.cursor !== undefined) await fate.upsertLogCursor(client, options.cursor);
      return inserted;
    });
  }

  async mailIdsByMessageId(messageIds: readonly string[]): Promise<Map<string, string>> {
    if (messageIds.length === 0) return new Map();
    return new Map((await fate.mailIdsByMessageId(this.pool, [...new Set(messageIds)])).map((r) => [r.message_id, r.id]));
  }

  async existingMailIds(ids: readonly string[]): Promise<Set<string>> {
    const valid = uuidsOnly(ids);
    if (valid.length === 0) return new Set();
    const found = new Set(await fate.existingMailIds(this.pool, valid));
    // Answer in the caller's spelling of each id.
    return new Set(ids.filter((id) => found.has(id.toLowerCase())));
  }

  async mailIdsByQueueId(queueIds: readonly string[]): Promise<Map<string, string>> {
    if (queueIds.length === 0) return new Map();
    return new Map((await fate.mailIdsByQueueId(this.pool, [...new Set(queueIds)])).map((r) => [r.queue_id, r.email_id]));
  }

  async listDeliveryEvents(mailId: string) {
    if (uuidsOnly([mailId]).length === 0) return [];
    return (await fate.listDeliveryEvents(this.pool, mailId)).map(toDeliveryEventRecord);
  }

  async deliveryEventsAfter(after: Parameters<FateStore["deliveryEventsAfter"]>[0], limit: number) {
    return (await fate.deliveryEventsAfter(this.pool, after, limit)).map((r) => ({ ...toDeliveryEventRecord(r), messageId: r.message_id }));
  }

  fateCounts() {
    return fate.fateCounts(this.pool);
  }

  /**
   * Recipients per current fate, per mail, for these mails (mails without fate events absent):
   * what `list` shows per row, in one statement. (Requested by OPS; not yet in `FateStore`.)
   */
  async fateCountsByMail(mailIds: readonly string[]): Promise<Map<string, CountByFate[]>> {
    const out = new Map<string, CountByFate[]>();
    const ids = uuidsOnly(mailIds);
    if (ids.length === 0) return out;
    for (const r of await fate.fateCountsByMail(this.pool, ids)) {
      const list = out.get(r.email_id) ?? [];
      list.push({ fate: r.fate, n: Number(r.n) });
      out.set(r.email_id, list);
    }
    return out;
  }

  async readLogCursor(name: string) {
    const row = await fate.readLogCursor(this.pool, name);
    return row === undefined ? null : toLogCursor(row);
  }

  logCaughtUpAt() {
    return fate.logCaughtUpAt(this.pool);
  }

  async findSuppressed(addresses: readonly string[], now: Date): Promise<Set<string>> {
    if (addresses.length === 0) return new Set();
    return new Set(await fate.findSuppressed(this.pool, suppressionKeys(addresses), now));
  }

  async listSuppressions(options: Parameters<FateStore["listSuppressions"]>[0]) {
    const address = options.address === null ? null : suppressionKeys([options.address])[0] ?? null;
    return (await fate.listSuppressions(this.pool, address, options.includeExpired, options.now, options.limit)).map(toSuppressionRecord);
  }

  async addSuppressions(entries: readonly SuppressionInput[]): Promise<number> {
    const list = normalizedSuppressions(entries);
    return list.length === 0 ? 0 : fate.upsertSuppressions(this.pool, list);
  }

  async removeSuppressions(target: Parameters<FateStore["removeSuppressions"]>[0]): Promise<number> {
    if ("expiredBefore" in target) return fate.deleteExpiredSuppressions(this.pool, target.expiredBefore);
    const keys = suppressionKeys(target.addresses);
    return keys.length === 0 ? 0 : fate.deleteSuppressions(this.pool, keys);
  }

  verifyCandidates(heldSince: Date, limit: number) {
    return fate.verifyCandidates(this.pool, heldSince, limit);
  }

  async queuedEvidence(mailIds: readonly string[]) {
    const out = new Map<string, { queueId: string; at: Date }[]>();
    const valid = uuidsOnly(mailIds);
    if (valid.length === 0) return out;
    for (const r of await fate.queuedEvidence(this.pool, valid)) {
      const list = out.get(r.email_id) ?? [];
      list.push({ queueId: r.queue_id, at: r.at });
      out.set(r.email_id, list);
    }
    return out;
  }

  resolveUncertain(id: string, actor: string, resolution: VerifyResolution): Promise<boolean> {
    return resolution.kind === "received" ? fate.verifiedReceived(this.pool, id, actor, resolution) : fate.verifiedAbsent(this.pool, id, actor, resolution);
  }

  // ---- operations state ----

  listPauses() {
    return ops.listPauses(this.pool);
  }

  addPause(scope: string, by: string, reason: string | null) {
    return ops.addPause(this.pool, scope, by, reason);
  }

  removePause(scope: string) {
    return ops.removePause(this.pool, scope);
  }

  listRates() {
    return ops.listRates(this.pool);
  }

  async setRate(bucket: string, rate: number, burst: number): Promise<void> {
    checkRate(bucket, rate, burst);
    await ops.setRate(this.pool, bucket, rate, burst);
  }

  removeRate(bucket: string) {
    return ops.removeRate(this.pool, bucket);
  }

  async takeTokens(buckets: readonly string[], want: number): Promise<{ granted: number; waitMs: number }> {
    const n = wholeCount(want);
    const names = [...new Set(buckets)];
    if (n === 0 || names.length === 0) return { granted: n, waitMs: 0 };
    return inTransaction(this.pool, (client) => ops.takeTokens(client, names, n));
  }

  async returnTokens(buckets: readonly string[], n: number): Promise<void> {
    const count = wholeCount(n);
    if (count === 0 || buckets.length === 0) return;
    await ops.returnTokens(this.pool, [...new Set(buckets)], count);
  }

  tryLock(name: string, owner: string, ttlMs: number, data?: JsonValue) {
    return ops.tryLock(this.pool, name, owner, ttlMs, data);
  }

  unlock(name: string, owner: string) {
    return ops.unlock(this.pool, name, owner);
  }

  readLock(name: string) {
    return ops.readLock(this.pool, name);
  }

  gauges() {
    return ops.gauges(this.pool);
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

  // ---- dashboard (src/ui/) ----

  async listMailPage(query: MailPageQuery) {
    return (await ui.listMailPage(this.pool, query)).map(toMailRecord);
  }

  attemptBuckets(since: Date, bucketMs: number) {
    return ui.attemptBuckets(this.pool, since, bucketMs);
  }
}
