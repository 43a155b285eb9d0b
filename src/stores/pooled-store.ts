/**
 * What the PostgreSQL and MySQL stores share: a pool of connections to a server, and the
 * operator, delivery-fate, operations-state and dashboard methods of {@link Store}, each a few
 * lines of checks and row mapping around one statement of the database's own ./admin-sql.ts,
 * ./fate-sql.ts, ./ops-sql.ts and ./ui-sql.ts. The statements stay per database (the house rule:
 * SQL visible, one statement per function); only the code around them lives here, once.
 *
 * A store extends {@link PooledStore} with its pool and connection types, hands it its statement
 * modules, and says how it runs a transaction. What differs between the databases stays in each
 * store: the relay statements, LISTEN, error codes, the schema, and a method whose statement needs
 * a transaction on one database and not on the other (MySQL's `purgeBatch` and `resolveUncertain`).
 *
 * SQLite's store does not use it: its statements are synchronous, on one connection.
 */
import { TRANSITIONS } from "../states.js";
import type {
  ActionLogLine,
  AttemptBucket,
  AttemptRecord,
  ChangeTarget,
  CountByFate,
  CountByStatus,
  DashboardStore,
  DeliveryEventInput,
  DeliveryEventRecord,
  FateStore,
  LockRecord,
  LogCursor,
  MailFilter,
  MailPageQuery,
  MailRecord,
  OperatorStore,
  OpsStore,
  OutboxGauges,
  PauseRecord,
  RateRecord,
  StatusChange,
  StatusCount,
  SuppressionInput,
  SuppressionRecord,
  VerifyCandidate,
  VerifyResolution,
} from "../store.js";
import type { JsonValue } from "../types.js";
import {
  bounceSuppressions,
  checkRate,
  normalizedSuppressions,
  suppressionKeys,
  toAttemptRecord,
  toDeliveryEventRecord,
  toLogCursor,
  toMailRecord,
  toSuppressionRecord,
  uuidsOnly,
  wholeCount,
  type PlainAttemptRow,
  type PlainCursorRow,
  type PlainDeliveryRow,
  type PlainMailRow,
  type PlainSuppressionRow,
} from "./rows.js";

/** Rows per UPDATE of a bulk change (replay, cancel). */
const CHANGE_BATCH = 1000;

/** A mail row as the admin and dashboard statements return it: `raw` only when asked for. */
export type MailRow = PlainMailRow & { raw?: Buffer | null };

// The statement modules as the shared methods call them. `Q` is what a statement runs on: the pool,
// or a connection inside a transaction. Each database's modules are checked against these where
// its store passes them to `super`, so a changed signature fails the type check there.

/** ./admin-sql.ts: the operator's statements. */
export interface AdminStatements<Q> {
  readonly ping: (q: Q) => Promise<void>;
  readonly statusCounts: (q: Q, now: Date) => Promise<StatusCount[]>;
  readonly listMails: (q: Q, f: MailFilter, limit: number) => Promise<MailRow[]>;
  readonly findMail: (q: Q, id: string | null, messageId: string | null, withRaw: boolean) => Promise<MailRow | undefined>;
  readonly listAttempts: (q: Q, emailId: string) => Promise<PlainAttemptRow[]>;
  readonly selectTargets: (q: Q, f: MailFilter, lock: boolean) => Promise<ChangeTarget[]>;
  readonly replayBatch: (q: Q, ids: readonly string[], from: readonly string[], to: string, now: Date) => Promise<string[]>;
  readonly cancelBatch: (q: Q, ids: readonly string[], from: readonly string[], to: string, now: Date) => Promise<string[]>;
  readonly insertAdminAttempts: (q: Q, rows: readonly ActionLogLine[], actor: string, outcome: string, at: Date) => Promise<void>;
  readonly countPurgeable: (q: Q, statuses: readonly string[], cutoff: Date | null) => Promise<CountByStatus[]>;
  readonly purgeBatch: (q: Q, statuses: readonly string[], cutoff: Date | null, limit: number) => Promise<CountByStatus[]>;
  readonly largestPendingSize: (q: Q) => Promise<number | null>;
}

/** ./fate-sql.ts: delivery events, the log cursor, suppressions, `verify`. */
export interface FateStatements<Q> {
  readonly insertDeliveryEvents: (q: Q, events: readonly DeliveryEventInput[]) => Promise<PlainDeliveryRow[]>;
  readonly insertMissingSuppressions: (q: Q, entries: readonly SuppressionInput[]) => Promise<number>;
  readonly upsertLogCursor: (q: Q, c: Omit<LogCursor, "updatedAt">) => Promise<void>;
  readonly readLogCursor: (q: Q, name: string) => Promise<PlainCursorRow | undefined>;
  readonly logCaughtUpAt: (q: Q) => Promise<Date | null>;
  readonly mailIdsByMessageId: (q: Q, messageIds: readonly string[]) => Promise<{ message_id: string; id: string }[]>;
  readonly existingMailIds: (q: Q, ids: readonly string[]) => Promise<string[]>;
  readonly mailIdsByQueueId: (q: Q, queueIds: readonly string[]) => Promise<{ queue_id: string; email_id: string }[]>;
  readonly listDeliveryEvents: (q: Q, emailId: string) => Promise<PlainDeliveryRow[]>;
  readonly deliveryEventsAfter: (q: Q, after: { readonly recordedAt: Date; readonly id: string } | null, limit: number) => Promise<(PlainDeliveryRow & { message_id: string })[]>;
  readonly fateCounts: (q: Q) => Promise<CountByFate[]>;
  readonly fateCountsByMail: (q: Q, emailIds: readonly string[]) => Promise<{ email_id: string; fate: CountByFate["fate"]; n: number }[]>;
  readonly findSuppressed: (q: Q, addresses: readonly string[], now: Date) => Promise<string[]>;
  readonly listSuppressions: (q: Q, address: string | null, includeExpired: boolean, now: Date, limit: number) => Promise<PlainSuppressionRow[]>;
  readonly upsertSuppressions: (q: Q, entries: readonly SuppressionInput[]) => Promise<number>;
  readonly deleteSuppressions: (q: Q, addresses: readonly string[]) => Promise<number>;
  readonly deleteExpiredSuppressions: (q: Q, before: Date) => Promise<number>;
  readonly verifyCandidates: (q: Q, heldSince: Date, limit: number) => Promise<VerifyCandidate[]>;
  readonly queuedEvidence: (q: Q, emailIds: readonly string[]) => Promise<{ email_id: string; queue_id: string; at: Date }[]>;
  readonly verifiedReceived: (q: Q, id: string, actor: string, r: Extract<VerifyResolution, { kind: "received" }>) => Promise<boolean>;
  readonly verifiedAbsent: (q: Q, id: string, actor: string, r: Extract<VerifyResolution, { kind: "absent" }>) => Promise<boolean>;
}

/** ./ops-sql.ts: pauses, rate limits, named leases, gauges. */
export interface OpsStatements<Q> {
  readonly listPauses: (q: Q) => Promise<PauseRecord[]>;
  readonly addPause: (q: Q, scope: string, by: string, reason: string | null) => Promise<boolean>;
  readonly removePause: (q: Q, scope: string) => Promise<boolean>;
  readonly listRates: (q: Q) => Promise<RateRecord[]>;
  readonly setRate: (q: Q, bucket: string, rate: number, burst: number) => Promise<void>;
  readonly removeRate: (q: Q, bucket: string) => Promise<boolean>;
  /** Locks the bucket rows: run inside a transaction. */
  readonly takeTokens: (q: Q, buckets: readonly string[], want: number) => Promise<{ granted: number; waitMs: number }>;
  readonly returnTokens: (q: Q, buckets: readonly string[], n: number) => Promise<void>;
  readonly tryLock: (q: Q, name: string, owner: string, ttlMs: number, data: JsonValue | undefined) => Promise<boolean>;
  readonly unlock: (q: Q, name: string, owner: string) => Promise<void>;
  readonly readLock: (q: Q, name: string) => Promise<LockRecord | null>;
  /** `sentEstimated`: PostgreSQL's count of `sent` from its statistics on a large table (always false on MySQL). */
  readonly gauges: (q: Q) => Promise<OutboxGauges & { sentEstimated: boolean }>;
}

/** ./ui-sql.ts: the dashboard's statements. */
export interface DashboardStatements<Q> {
  readonly listMailPage: (q: Q, p: MailPageQuery) => Promise<MailRow[]>;
  readonly attemptBuckets: (q: Q, since: Date, bucketMs: number) => Promise<AttemptBucket[]>;
}

/** One database's statement modules, as `import * as` gives them. */
export interface PooledStatements<Q> {
  readonly admin: AdminStatements<Q>;
  readonly fate: FateStatements<Q>;
  readonly ops: OpsStatements<Q>;
  readonly ui: DashboardStatements<Q>;
}

/**
 * The operator, fate, operations-state and dashboard methods of a store on a pool of server
 * connections. `Pool`: the store's pool (statements outside a transaction run on it); `Conn`: a
 * connection checked out of it, which {@link transaction} hands to its function.
 */
export abstract class PooledStore<Pool, Conn> implements OperatorStore, FateStore, OpsStore, DashboardStore {
  /** The store's pool: each store declares it with its driver's type (public, for tests and tools that run their own SQL). */
  abstract readonly pool: Pool;

  /** The store's statements: they run on the pool or on a connection inside {@link transaction}. */
  protected readonly sql: PooledStatements<Pool | Conn>;

  protected constructor(statements: PooledStatements<Pool | Conn>) {
    this.sql = statements;
  }

  /** Run `fn` on one connection of the pool inside a transaction: committed when it resolves, rolled back when it throws. */
  protected abstract transaction<T>(fn: (conn: Conn) => Promise<T>): Promise<T>;

  // ---- operator ----

  async ping(): Promise<void> {
    await this.sql.admin.ping(this.pool);
  }

  statusCounts(now: Date): Promise<StatusCount[]> {
    return this.sql.admin.statusCounts(this.pool, now);
  }

  async listMails(filter: MailFilter, limit: number): Promise<MailRecord[]> {
    return (await this.sql.admin.listMails(this.pool, filter, limit)).map(toMailRecord);
  }

  async findMail(key: { readonly id: string } | { readonly messageId: string }, withRaw: boolean): Promise<{ mail: MailRecord; raw: Buffer | null } | undefined> {
    const row = await this.sql.admin.findMail(this.pool, "id" in key ? key.id : null, "messageId" in key ? key.messageId : null, withRaw);
    return row === undefined ? undefined : { mail: toMailRecord(row), raw: row.raw ?? null };
  }

  async listAttempts(mailId: string): Promise<AttemptRecord[]> {
    return (await this.sql.admin.listAttempts(this.pool, mailId)).map(toAttemptRecord);
  }

  selectTargets(filter: MailFilter): Promise<ChangeTarget[]> {
    return this.sql.admin.selectTargets(this.pool, filter, false);
  }

  async changeStatus(change: StatusChange): Promise<void> {
    const { admin } = this.sql;
    const { from, to } = TRANSITIONS[change.transition];
    const apply = change.transition === "replay" ? admin.replayBatch : admin.cancelBatch;
    await this.transaction(async (conn) => {
      const chosen = change.choose(await admin.selectTargets(conn, change.filter, true));
      for (let i = 0; i < chosen.length; i += CHANGE_BATCH) {
        const batch = chosen.slice(i, i + CHANGE_BATCH);
        const changed = await apply(conn, batch.map((t) => t.id), from, to, change.at);
        const log = change.settle(batch, changed);
        if (log.length > 0) await admin.insertAdminAttempts(conn, log, change.actor, change.outcome, change.at);
      }
    });
  }

  countPurgeable(statuses: readonly string[], cutoff: Date | null): Promise<CountByStatus[]> {
    return this.sql.admin.countPurgeable(this.pool, statuses, cutoff);
  }

  /** One statement on the pool; a store whose statement locks and reads before it deletes runs it in a transaction instead. */
  purgeBatch(statuses: readonly string[], cutoff: Date | null, limit: number): Promise<CountByStatus[]> {
    return this.sql.admin.purgeBatch(this.pool, statuses, cutoff, limit);
  }

  largestPendingSize(): Promise<number | null> {
    return this.sql.admin.largestPendingSize(this.pool);
  }

  /** Times are typed columns on a server database (timestamptz, DATETIME): they cannot be numbers. */
  async countNumericTimes(): Promise<null> {
    return null;
  }

  // ---- delivery fate ----

  async recordDeliveryEvents(events: readonly DeliveryEventInput[], options: Parameters<FateStore["recordDeliveryEvents"]>[1] = {}): Promise<DeliveryEventRecord[]> {
    if (events.length === 0 && options.cursor === undefined) return [];
    const { fate } = this.sql;
    return this.transaction(async (conn) => {
      const inserted = events.length === 0 ? [] : (await fate.insertDeliveryEvents(conn, events)).map(toDeliveryEventRecord);
      if (options.suppress !== undefined) {
        const entries = bounceSuppressions(inserted, options.suppress.expiresAt);
        if (entries.length > 0) await fate.insertMissingSuppressions(conn, entries);
      }
      if (options.cursor !== undefined) await fate.upsertLogCursor(conn, options.cursor);
      return inserted;
    });
  }

  async mailIdsByMessageId(messageIds: readonly string[]): Promise<Map<string, string>> {
    if (messageIds.length === 0) return new Map();
    return new Map((await this.sql.fate.mailIdsByMessageId(this.pool, [...new Set(messageIds)])).map((r) => [r.message_id, r.id]));
  }

  async existingMailIds(ids: readonly string[]): Promise<Set<string>> {
    const valid = uuidsOnly(ids);
    if (valid.length === 0) return new Set();
    const found = new Set(await this.sql.fate.existingMailIds(this.pool, valid));
    // Answer in the caller's spelling of each id.
    return new Set(ids.filter((id) => found.has(id.toLowerCase())));
  }

  async mailIdsByQueueId(queueIds: readonly string[]): Promise<Map<string, string>> {
    if (queueIds.length === 0) return new Map();
    return new Map((await this.sql.fate.mailIdsByQueueId(this.pool, [...new Set(queueIds)])).map((r) => [r.queue_id, r.email_id]));
  }

  async listDeliveryEvents(mailId: string): Promise<DeliveryEventRecord[]> {
    if (uuidsOnly([mailId]).length === 0) return [];
    return (await this.sql.fate.listDeliveryEvents(this.pool, mailId)).map(toDeliveryEventRecord);
  }

  async deliveryEventsAfter(after: { readonly recordedAt: Date; readonly id: string } | null, limit: number): Promise<(DeliveryEventRecord & { messageId: string })[]> {
    return (await this.sql.fate.deliveryEventsAfter(this.pool, after, limit)).map((r) => ({ ...toDeliveryEventRecord(r), messageId: r.message_id }));
  }

  fateCounts(): Promise<CountByFate[]> {
    return this.sql.fate.fateCounts(this.pool);
  }

  /** Recipients per current fate, per mail, for these mails (mails without fate events absent): what `list` shows per row, in one statement. */
  async fateCountsByMail(mailIds: readonly string[]): Promise<Map<string, CountByFate[]>> {
    const out = new Map<string, CountByFate[]>();
    const ids = uuidsOnly(mailIds);
    if (ids.length === 0) return out;
    for (const r of await this.sql.fate.fateCountsByMail(this.pool, ids)) {
      const list = out.get(r.email_id) ?? [];
      list.push({ fate: r.fate, n: Number(r.n) });
      out.set(r.email_id, list);
    }
    return out;
  }

  async readLogCursor(name: string): Promise<LogCursor | null> {
    const row = await this.sql.fate.readLogCursor(this.pool, name);
    return row === undefined ? null : toLogCursor(row);
  }

  logCaughtUpAt(): Promise<Date | null> {
    return this.sql.fate.logCaughtUpAt(this.pool);
  }

  async findSuppressed(addresses: readonly string[], now: Date): Promise<Set<string>> {
    if (addresses.length === 0) return new Set();
    return new Set(await this.sql.fate.findSuppressed(this.pool, suppressionKeys(addresses), now));
  }

  async listSuppressions(options: Parameters<FateStore["listSuppressions"]>[0]): Promise<SuppressionRecord[]> {
    const address = options.address === null ? null : suppressionKeys([options.address])[0] ?? null;
    return (await this.sql.fate.listSuppressions(this.pool, address, options.includeExpired, options.now, options.limit)).map(toSuppressionRecord);
  }

  async addSuppressions(entries: readonly SuppressionInput[]): Promise<number> {
    const list = normalizedSuppressions(entries);
    return list.length === 0 ? 0 : this.sql.fate.upsertSuppressions(this.pool, list);
  }

  async removeSuppressions(target: Parameters<FateStore["removeSuppressions"]>[0]): Promise<number> {
    if ("expiredBefore" in target) return this.sql.fate.deleteExpiredSuppressions(this.pool, target.expiredBefore);
    const keys = suppressionKeys(target.addresses);
    return keys.length === 0 ? 0 : this.sql.fate.deleteSuppressions(this.pool, keys);
  }

  verifyCandidates(heldSince: Date, limit: number): Promise<VerifyCandidate[]> {
    return this.sql.fate.verifyCandidates(this.pool, heldSince, limit);
  }

  async queuedEvidence(mailIds: readonly string[]): Promise<Map<string, { queueId: string; at: Date }[]>> {
    const out = new Map<string, { queueId: string; at: Date }[]>();
    const valid = uuidsOnly(mailIds);
    if (valid.length === 0) return out;
    for (const r of await this.sql.fate.queuedEvidence(this.pool, valid)) {
      const list = out.get(r.email_id) ?? [];
      list.push({ queueId: r.queue_id, at: r.at });
      out.set(r.email_id, list);
    }
    return out;
  }

  /** One statement on the pool; a store that needs two (the transition, then its attempt-log line) runs them in a transaction instead. */
  resolveUncertain(id: string, actor: string, resolution: VerifyResolution): Promise<boolean> {
    return this.resolveOn(this.pool, id, actor, resolution);
  }

  /** `resolveUncertain`'s statement on `q` (the pool, or a connection inside a transaction). */
  protected resolveOn(q: Pool | Conn, id: string, actor: string, resolution: VerifyResolution): Promise<boolean> {
    return resolution.kind === "received" ? this.sql.fate.verifiedReceived(q, id, actor, resolution) : this.sql.fate.verifiedAbsent(q, id, actor, resolution);
  }

  // ---- operations state ----

  listPauses(): Promise<PauseRecord[]> {
    return this.sql.ops.listPauses(this.pool);
  }

  addPause(scope: string, by: string, reason: string | null): Promise<boolean> {
    return this.sql.ops.addPause(this.pool, scope, by, reason);
  }

  removePause(scope: string): Promise<boolean> {
    return this.sql.ops.removePause(this.pool, scope);
  }

  listRates(): Promise<RateRecord[]> {
    return this.sql.ops.listRates(this.pool);
  }

  async setRate(bucket: string, rate: number, burst: number): Promise<void> {
    checkRate(bucket, rate, burst);
    await this.sql.ops.setRate(this.pool, bucket, rate, burst);
  }

  removeRate(bucket: string): Promise<boolean> {
    return this.sql.ops.removeRate(this.pool, bucket);
  }

  async takeTokens(buckets: readonly string[], want: number): Promise<{ granted: number; waitMs: number }> {
    const n = wholeCount(want);
    const names = [...new Set(buckets)];
    if (n === 0 || names.length === 0) return { granted: n, waitMs: 0 };
    return this.transaction((conn) => this.sql.ops.takeTokens(conn, names, n));
  }

  async returnTokens(buckets: readonly string[], n: number): Promise<void> {
    const count = wholeCount(n);
    if (count === 0 || buckets.length === 0) return;
    await this.sql.ops.returnTokens(this.pool, [...new Set(buckets)], count);
  }

  tryLock(name: string, owner: string, ttlMs: number, data?: JsonValue): Promise<boolean> {
    return this.sql.ops.tryLock(this.pool, name, owner, ttlMs, data);
  }

  unlock(name: string, owner: string): Promise<void> {
    return this.sql.ops.unlock(this.pool, name, owner);
  }

  readLock(name: string): Promise<LockRecord | null> {
    return this.sql.ops.readLock(this.pool, name);
  }

  gauges(): Promise<OutboxGauges & { sentEstimated: boolean }> {
    return this.sql.ops.gauges(this.pool);
  }

  // ---- dashboard (src/ui/) ----

  async listMailPage(query: MailPageQuery): Promise<MailRecord[]> {
    return (await this.sql.ui.listMailPage(this.pool, query)).map(toMailRecord);
  }

  attemptBuckets(since: Date, bucketMs: number): Promise<AttemptBucket[]> {
    return this.sql.ui.attemptBuckets(this.pool, since, bucketMs);
  }
}
