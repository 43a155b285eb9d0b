/**
 * The MySQL/MariaDB store: a `mariadb` pool on the database of the URL (./conn.ts), the statements
 * of ./relay-sql.ts, ./admin-sql.ts, ./fate-sql.ts, ./ops-sql.ts, ./ui-sql.ts and ./schema-sql.ts,
 * no LISTEN (the relay polls, with an adaptive interval), and what MySQL's error codes mean.
 *
 * Tested on MariaDB 10.11; the SQL keeps to what MySQL 8.0 also accepts (no RETURNING, no
 * UPDATE ... RETURNING; SELECT ... FOR UPDATE SKIP LOCKED, which both have).
 */
import type mariadb from "mariadb";
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
  MailPageQuery,
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
import { createPool, inTransaction, type MysqlConnectionConfig } from "./conn.js";
import { mysqlRelayStatements, type RelayStatements } from "./relay-sql.js";
import { COLUMN_TYPES, readRecorded, readShape, schemaTransaction } from "./schema-sql.js";
import { classifyMysqlError } from "./errors.js";

/** Rows per UPDATE of a bulk change (replay, cancel). */
const CHANGE_BATCH = 1000;

export interface MysqlStoreOptions {
  readonly config: MysqlConnectionConfig;
  readonly displayUrl: string;
  /** @default 4 */
  readonly poolSize?: number;
}

export class MysqlStore implements Store {
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

  /** One transaction per batch: the rows are locked and read, then deleted (no DELETE ... RETURNING on MySQL 8). */
  purgeBatch(statuses: readonly string[], cutoff: Date | null, limit: number) {
    return inTransaction(this.pool, (client) => sql.purgeBatch(client, statuses, cutoff, limit));
  }

  largestPendingSize() {
    return sql.largestPendingSize(this.pool);
  }

  /** DATETIME columns: times cannot be numbers. */
  async countNumericTimes(): Promise<null> {
    return null;
  }

  // ---- delivery fate ----

  /** Run `fn` on one connection inside START TRANSACTION ... COMMIT (ROLLBACK when it throws). */
  private async transaction<T>(fn: (conn: mariadb.PoolConnection) => Promise<T>): Promise<T> {
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

  /** The transition and its attempt-log line in one transaction (no UPDATE ... RETURNING to chain them in one statement). */
  resolveUncertain(id: string, actor: string, resolution: VerifyResolution): Promise<boolean> {
    return this.transaction((client) =>
      resolution.kind === "received" ? fate.verifiedReceived(client, id, actor, resolution) : fate.verifiedAbsent(client, id, actor, resolution),
    );
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

  // ---- dashboard (src/ui/) ----

  async listMailPage(query: MailPageQuery) {
    return (await ui.listMailPage(this.pool, query)).map(toMailRecord);
  }

  attemptBuckets(since: Date, bucketMs: number) {
    return ui.attemptBuckets(this.pool, since, bucketMs);
  }
}
