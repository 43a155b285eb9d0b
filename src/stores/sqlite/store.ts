/**
 * The SQLite store: one better-sqlite3 connection (WAL, busy timeout, foreign keys on), the
 * statements of ./relay-sql.ts, ./admin-sql.ts, ./fate-sql.ts and ./schema-sql.ts, and what SQLite's error
 * codes mean. SQLite has no notifications: `listen` resolves to null and the relay polls.
 */
import Database from "better-sqlite3";
import { DatabaseConfigError } from "../../errors.js";
import { inspectSchema } from "../../schema.js";
import { TRANSITIONS } from "../../states.js";
import { randomUUID } from "node:crypto";
import type {
  ClaimOptions,
  CountByFate,
  DatabaseErrorKind,
  DeliveryEventInput,
  DeliveryEventRecord,
  FateStore,
  MailFilter,
  SchemaProblem,
  SchemaTransaction,
  StatusChange,
  Store,
  SuppressionInput,
  VerifyCandidate,
  VerifyResolution,
} from "../../store.js";
import type { JsonValue } from "../../types.js";
import {
  bounceSuppressions,
  checkRate,
  wholeCount,
  normalizedSuppressions,
  parseJson,
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
import { fromSqliteTime } from "./time.js";
import { sqliteRelayStatements, type RelayStatements } from "./relay-sql.js";
import { COLUMN_TYPES, readRecorded, readShape, schemaTransaction } from "./schema-sql.js";

/** Rows per UPDATE of a bulk change (replay, cancel). */
const CHANGE_BATCH = 1000;

export interface SqliteStoreOptions {
  /** The absolute path of the database file. */
  readonly filename: string;
  readonly displayUrl: string;
  /** How long a writer waits for the lock before failing. @default 5000 */
  readonly busyTimeoutMs?: number;
}

export class SqliteStore implements Store {
  /** Kept for tests and tools that run their own SQL next to the store (`db.db.prepare`). */
  readonly dialect = "sqlite" as const;
  readonly provider = "sqlite";
  readonly columnTypes = COLUMN_TYPES;
  /** The better-sqlite3 connection. */
  readonly db: Database.Database;
  /** The absolute path of the database file. */
  readonly filename: string;
  /** The URL as given (`file:./dev.db`), fit for logs. */
  readonly displayUrl: string;
  readonly where: string;
  /** Prepared on first use: preparing fails on missing tables, which the relay checks first. */
  private relay: RelayStatements | null = null;

  constructor(options: SqliteStoreOptions) {
    this.filename = options.filename;
    this.displayUrl = options.displayUrl;
    this.where = options.filename;
    try {
      this.db = new Database(options.filename);
    } catch (cause) {
      throw new DatabaseConfigError(`Cannot open the SQLite database ${options.filename}: ${(cause as Error).message}`, { cause });
    }
    this.db.pragma(`busy_timeout = ${Math.max(0, Math.trunc(options.busyTimeoutMs ?? 5000))}`);
    // WAL lets the application write while the relay reads; it is a property of the file, kept across connections.
    this.db.pragma("journal_mode = WAL");
    this.db.pragma("foreign_keys = ON");
  }

  async close(): Promise<void> {
    if (this.db.open) this.db.close();
  }

  // ---- relay ----

  private statements(): RelayStatements {
    return (this.relay ??= sqliteRelayStatements(this.db));
  }

  claim(owner: string, limit: number, leaseMs: number, options?: ClaimOptions) {
    return this.statements().claim(owner, limit, leaseMs, options);
  }

  complete(...args: Parameters<Store["complete"]>) {
    return this.statements().complete(...args);
  }

  renew(...args: Parameters<Store["renew"]>) {
    return this.statements().renew(...args);
  }

  rescue(...args: Parameters<Store["rescue"]>) {
    return this.statements().rescue(...args);
  }

  async listen(): Promise<null> {
    return null;
  }

  inspectSchema(): Promise<SchemaProblem[]> {
    return inspectSchema(this);
  }

  classifyError(err: unknown): DatabaseErrorKind {
    const e = err as { code?: unknown; message?: unknown } | null;
    const code = typeof e?.code === "string" ? e.code : "";
    if (/^SQLITE_(BUSY|LOCKED)/.test(code)) return "busy";
    if (/^SQLITE_(IOERR|CANTOPEN|FULL|PROTOCOL)/.test(code)) return "unavailable";
    if (code === "SQLITE_CONSTRAINT_UNIQUE" || code === "SQLITE_CONSTRAINT_PRIMARYKEY") return "conflict";
    // A missing table or column comes with the generic code SQLITE_ERROR, the same as a syntax
    // error (SQLite has no extended result code for it), so the message is the only signal. The
    // store's statements are fixed and known to parse, so within SQLITE_ERROR these texts (sqlite3
    // prepare errors: "no such table: x", "no such column: x", "table x has no column named y")
    // can only mean the schema changed.
    if (code === "SQLITE_ERROR" && typeof e?.message === "string" && /^no such (table|column)\b|has no column named\b/.test(e.message)) return "schema";
    return "other";
  }

  // ---- operator ----

  async ping(): Promise<void> {
    sql.ping(this.db);
  }

  async statusCounts(now: Date) {
    return sql.statusCounts(this.db, now);
  }

  async listMails(filter: MailFilter, limit: number) {
    return sql.listMails(this.db, filter, limit).map((r) => toMailRecord(sql.plainMailRow(r)));
  }

  async findMail(key: Parameters<Store["findMail"]>[0], withRaw: boolean) {
    const row = sql.findMail(this.db, "id" in key ? key.id : null, "messageId" in key ? key.messageId : null, withRaw);
    return row === undefined ? undefined : { mail: toMailRecord(sql.plainMailRow(row)), raw: row.raw ?? null };
  }

  async listAttempts(mailId: string) {
    return sql.listAttempts(this.db, mailId).map(toAttemptRecord);
  }

  async selectTargets(filter: MailFilter) {
    return sql.selectTargets(this.db, filter);
  }

  async changeStatus(change: StatusChange): Promise<void> {
    const { from, to } = TRANSITIONS[change.transition];
    const apply = change.transition === "replay" ? sql.replayBatch : sql.cancelBatch;
    // IMMEDIATE: the write lock from the SELECT on, so the rows chosen are the rows changed.
    this.db
      .transaction(() => {
        const chosen = change.choose(sql.selectTargets(this.db, change.filter));
        for (let i = 0; i < chosen.length; i += CHANGE_BATCH) {
          const batch = chosen.slice(i, i + CHANGE_BATCH);
          const changed = apply(this.db, batch.map((t) => t.id), from, to, change.at);
          const log = change.settle(batch, changed);
          if (log.length > 0) sql.insertAdminAttempts(this.db, log, change.actor, change.outcome, change.at);
        }
      })
      .immediate();
  }

  async countPurgeable(statuses: readonly string[], cutoff: Date | null) {
    return sql.countPurgeable(this.db, statuses, cutoff);
  }

  async purgeBatch(statuses: readonly string[], cutoff: Date | null, limit: number) {
    const gone = this.db
      .transaction(() => {
        const ids = sql.selectPurgeBatch(this.db, statuses, cutoff, limit);
        if (ids.length === 0) return [];
        sql.deleteAttemptsOf(this.db, ids);
        sql.deleteDeliveriesOf(this.db, ids);
        return sql.deleteMails(this.db, ids);
      })
      .immediate();
    // Let other writers (the application, the relay) in between batches.
    await new Promise<void>((resolve) => setImmediate(resolve));
    const byStatus = new Map<string, number>();
    for (const g of gone) byStatus.set(g.status, (byStatus.get(g.status) ?? 0) + 1);
    return [...byStatus].map(([status, n]) => ({ status, n }));
  }

  async largestPendingSize() {
    return sql.largestPendingSize(this.db);
  }

  async countNumericTimes(): Promise<number> {
    return sql.countNumericTimes(this.db);
  }

  // ---- delivery fate ----

  async recordDeliveryEvents(events: readonly DeliveryEventInput[], options: Parameters<FateStore["recordDeliveryEvents"]>[1] = {}): Promise<DeliveryEventRecord[]> {
    if (events.length === 0 && options.cursor === undefined) return [];
    return this.db
      .transaction(() => {
        const now = new Date();
        const inserted: DeliveryEventRecord[] = [];
        for (const e of events) {
          const row = fate.insertDeliveryEvent(this.db, randomUUID(), e, now);
          if (row !== undefined) inserted.push(toDeliveryEventRecord(row));
        }
        if (options.suppress !== undefined) {
          const entries = bounceSuppressions(inserted, options.suppress.expiresAt);
          if (entries.length > 0) fate.insertMissingSuppressions(this.db, entries, now);
        }
        if (options.cursor !== undefined) fate.upsertLogCursor(this.db, options.cursor, now);
        return inserted;
      })
      .immediate();
  }

  async mailIdsByMessageId(messageIds: readonly string[]): Promise<Map<string, string>> {
    if (messageIds.length === 0) return new Map();
    return new Map(fate.mailIdsByMessageId(this.db, [...new Set(messageIds)]).map((r) => [r.message_id, r.id]));
  }

  async existingMailIds(ids: readonly string[]): Promise<Set<string>> {
    if (ids.length === 0) return new Set();
    return new Set(fate.existingMailIds(this.db, [...new Set(ids)]));
  }

  async mailIdsByQueueId(queueIds: readonly string[]): Promise<Map<string, string>> {
    if (queueIds.length === 0) return new Map();
    return new Map(fate.mailIdsByQueueId(this.db, [...new Set(queueIds)]).map((r) => [r.queue_id, r.email_id]));
  }

  async listDeliveryEvents(mailId: string) {
    return fate.listDeliveryEvents(this.db, mailId).map(toDeliveryEventRecord);
  }

  async deliveryEventsAfter(after: Parameters<FateStore["deliveryEventsAfter"]>[0], limit: number) {
    return fate.deliveryEventsAfter(this.db, after, limit).map((r) => ({ ...toDeliveryEventRecord(r), messageId: r.message_id }));
  }

  async fateCounts() {
    return fate.fateCounts(this.db);
  }

  /**
   * Recipients per current fate, per mail, for these mails (mails without fate events absent):
   * what `list` shows per row, in one statement. (Requested by OPS; not yet in `FateStore`.)
   */
  async fateCountsByMail(mailIds: readonly string[]): Promise<Map<string, CountByFate[]>> {
    const out = new Map<string, CountByFate[]>();
    const ids = [...new Set(mailIds)];
    if (ids.length === 0) return out;
    for (const r of fate.fateCountsByMail(this.db, ids)) {
      const list = out.get(r.email_id) ?? [];
      list.push({ fate: r.fate, n: Number(r.n) });
      out.set(r.email_id, list);
    }
    return out;
  }

  async readLogCursor(name: string) {
    const row = fate.readLogCursor(this.db, name);
    return row === undefined ? null : toLogCursor(row);
  }

  async logCaughtUpAt() {
    return fate.logCaughtUpAt(this.db);
  }

  async findSuppressed(addresses: readonly string[], now: Date): Promise<Set<string>> {
    if (addresses.length === 0) return new Set();
    return new Set(fate.findSuppressed(this.db, suppressionKeys(addresses), now));
  }

  async listSuppressions(options: Parameters<FateStore["listSuppressions"]>[0]) {
    const address = options.address === null ? null : suppressionKeys([options.address])[0] ?? null;
    return fate.listSuppressions(this.db, address, options.includeExpired, options.now, options.limit).map(toSuppressionRecord);
  }

  async addSuppressions(entries: readonly SuppressionInput[]): Promise<number> {
    const list = normalizedSuppressions(entries);
    return list.length === 0 ? 0 : fate.upsertSuppressions(this.db, list, new Date());
  }

  async removeSuppressions(target: Parameters<FateStore["removeSuppressions"]>[0]): Promise<number> {
    if ("expiredBefore" in target) return fate.deleteExpiredSuppressions(this.db, target.expiredBefore);
    const keys = suppressionKeys(target.addresses);
    return keys.length === 0 ? 0 : fate.deleteSuppressions(this.db, keys);
  }

  async verifyCandidates(heldSince: Date, limit: number): Promise<VerifyCandidate[]> {
    return fate.verifyCandidates(this.db, heldSince, limit).map((r) => {
      const to = parseJson(r.envelope_to);
      const known = parseJson(r.known_queue_ids);
      return {
        id: r.id,
        messageId: r.message_id,
        envelopeTo: Array.isArray(to) ? to.map(String) : [],
        heldAt: fromSqliteTime(r.held_at) ?? new Date(Number.NaN),
        knownQueueIds: Array.isArray(known) ? known.map(String) : [],
      };
    });
  }

  async queuedEvidence(mailIds: readonly string[]) {
    const out = new Map<string, { queueId: string; at: Date }[]>();
    if (mailIds.length === 0) return out;
    for (const r of fate.queuedEvidence(this.db, [...new Set(mailIds)])) {
      const list = out.get(r.email_id) ?? [];
      list.push({ queueId: r.queue_id, at: r.at });
      out.set(r.email_id, list);
    }
    return out;
  }

  async resolveUncertain(id: string, actor: string, resolution: VerifyResolution): Promise<boolean> {
    return this.db
      .transaction(() => {
        const now = new Date();
        const changed = resolution.kind === "received" ? fate.verifiedReceived(this.db, id, resolution, now) : fate.verifiedAbsent(this.db, id, now);
        if (changed === undefined) return false;
        fate.insertVerifiedAttempt(
          this.db,
          {
            id: randomUUID(),
            emailId: id,
            attempt: Number(changed.attempts),
            actor,
            response: resolution.response,
            queueId: resolution.kind === "received" ? resolution.queueId : null,
          },
          now,
        );
        return true;
      })
      .immediate();
  }

  // ---- operations state ----

  async listPauses() {
    return ops.listPauses(this.db);
  }

  async addPause(scope: string, by: string, reason: string | null) {
    return ops.addPause(this.db, scope, by, reason, new Date());
  }

  async removePause(scope: string) {
    return ops.removePause(this.db, scope);
  }

  async listRates() {
    return ops.listRates(this.db);
  }

  async setRate(bucket: string, rate: number, burst: number): Promise<void> {
    checkRate(bucket, rate, burst);
    this.db.transaction(() => ops.setRate(this.db, bucket, rate, burst, new Date())).immediate();
  }

  async removeRate(bucket: string) {
    return ops.removeRate(this.db, bucket);
  }

  async takeTokens(buckets: readonly string[], want: number): Promise<{ granted: number; waitMs: number }> {
    const n = wholeCount(want);
    const names = [...new Set(buckets)];
    if (n === 0 || names.length === 0) return { granted: n, waitMs: 0 };
    // IMMEDIATE: the write lock before the buckets are read, so another process cannot take the same tokens.
    return this.db.transaction(() => ops.takeTokens(this.db, names, n, new Date())).immediate();
  }

  async returnTokens(buckets: readonly string[], n: number): Promise<void> {
    const count = wholeCount(n);
    if (count === 0 || buckets.length === 0) return;
    ops.returnTokens(this.db, [...new Set(buckets)], count);
  }

  async tryLock(name: string, owner: string, ttlMs: number, data?: JsonValue) {
    return ops.tryLock(this.db, name, owner, ttlMs, data, new Date());
  }

  async unlock(name: string, owner: string) {
    ops.unlock(this.db, name, owner, new Date());
  }

  async readLock(name: string) {
    return ops.readLock(this.db, name);
  }

  async gauges() {
    return ops.gauges(this.db, new Date());
  }

  // ---- schema ----

  async readSchema() {
    return { shape: readShape(this.db), recorded: readRecorded(this.db) };
  }

  schemaTransaction<T>(fn: (tx: SchemaTransaction) => Promise<T>): Promise<T> {
    return schemaTransaction(this.db, fn);
  }

  dropNotNullFix(_table: string, _column: string, models: string): string {
    return `drop its NOT NULL constraint (see ${models})`;
  }

  // ---- dashboard (src/ui/) ----

  async listMailPage(query: MailPageQuery) {
    return ui.listMailPage(this.db, query).map((r) => toMailRecord(sql.plainMailRow(r)));
  }

  async attemptBuckets(since: Date, bucketMs: number) {
    return ui.attemptBuckets(this.db, since, bucketMs);
  }
}
