/**
 * The relay: claims committed outbox rows in batches under a lease, hands each message to the MTA
 * through a nodemailer transporter, and records the outcome.
 *
 * Delivery is at least once. The duplicate window is the time between the MTA's `250` to the end
 * of DATA and the batch that records it as sent: a relay that dies inside that window leaves the
 * row claimed; when its lease expires another relay marks it as an uncertain hand-off and, under
 * the default policy "resend", hands it over again with the same Message-ID.
 */
import { EventEmitter } from "node:events";
import os from "node:os";
import { randomBytes } from "node:crypto";
import { performance } from "node:perf_hooks";
import pg from "pg";
import pRetry from "p-retry";
import type { Transporter } from "nodemailer";
import type { Registry } from "prom-client";
import { openDatabase, type Db } from "./db.js";
import { OptionsError, RelayStateError, HandoffTimeoutError, DatabaseUnavailableError, SchemaNotReadyError } from "./errors.js";
import { inspectSchema, type SchemaProblem } from "./migrate.js";
import { createTransporter, type TransportSpec } from "./transport.js";
import type { RawSender } from "./smtp-pipelined.js";
import { classifyError, toHandoffResult, type SentMessageInfoLike } from "./classify.js";
import { newId } from "./ids.js";
import { defaultLogger, silentLogger, type Logger } from "./logger.js";
import { postgresRelayStore } from "./sql/postgres.js";
import { sqliteRelayStore } from "./sql/sqlite.js";
import type { ClaimedMail, LeaseExpiryPolicy, Outcome, RelayStore, RescuedMail } from "./sql/types.js";
import { relayMetrics, type RelayMetrics } from "./metrics.js";

export interface BackoffOptions {
  /** Delay before the second attempt; doubles with each attempt. @default 5000 */
  readonly baseMs?: number;
  /** Largest delay between two attempts. @default 3_600_000 (one hour) */
  readonly maxMs?: number;
  /** Random spread, as a fraction of the delay (0.2 = ±20%), so retries of one outage do not arrive together. @default 0.2 */
  readonly jitter?: number;
}

export interface RelayOptions {
  /** `file:./outbox.db` or `postgresql://...`. Either this or `db`. */
  readonly databaseUrl?: string;
  /** A connection opened with `openDatabase()`; the relay does not close it. */
  readonly db?: Db;
  /**
   * Where mail goes: `smtp://host:port`, `smtps://user:pass@host`, `sendmail:`, `sendmail:/usr/sbin/sendmail`,
   * `sendmail-bs:`, or any nodemailer transporter.
   */
  readonly transport: TransportSpec;
  /** Name of this relay in leases and attempt records. @default `${hostname}/${pid}/${random}` */
  readonly relayId?: string;
  /**
   * Hand-offs in flight at once. @default 10, or what the transport says it carries at once when
   * that is more: the pipelining SMTP transport carries `maxConnections` x 4 (20 by default)
   */
  readonly concurrency?: number;
  /** Rows claimed per statement. @default 100, or 5 x concurrency when that is more */
  readonly batchSize?: number;
  /** How long a claim holds a row before another relay may take it over; renewed every third of it. @default 30_000 */
  readonly leaseMs?: number;
  /** How often to look for due mail when nothing wakes the relay. @default 1000 */
  readonly pollIntervalMs?: number;
  /** Upper bound on one hand-off, a backstop behind the transport's own timeouts. @default 120_000 */
  readonly handoffTimeoutMs?: number;
  readonly backoff?: BackoffOptions;
  /** Immediate retries, inside one attempt, of a connection the MTA refused. @default 2 */
  readonly connectRetries?: number;
  /**
   * What happens to a mail whose relay died during its hand-off (the MTA may or may not have it):
   * `"resend"` hands it over again with the same Message-ID; `"hold"` parks it as `held` for an operator.
   * Either way it is counted in `uncertain_handoffs`. @default "resend"
   */
  readonly leaseExpiryPolicy?: LeaseExpiryPolicy;
  /** PostgreSQL: wake on `NOTIFY mail_outbox` as soon as an enqueueing transaction commits. @default true */
  readonly listen?: boolean;
  /** A pino logger, or `false` for none. @default JSON lines on stderr */
  readonly logger?: Logger | false;
  /** A prom-client registry to register the relay's metrics in. @default none */
  readonly metricsRegistry?: Registry;
  /** Aborting it stops the relay gracefully, as `stop()` does. */
  readonly signal?: AbortSignal;
  /** Deadline for in-flight hand-offs when stopped by the signal or by `await using`. @default 10_000 */
  readonly stopDeadlineMs?: number;
}

export interface RelayCounts {
  claimed: number;
  sent: number;
  retried: number;
  dead: number;
  released: number;
  rescued: number;
}

export interface SentEvent { readonly id: string; readonly messageId: string; readonly attempt: number; readonly response: string; readonly queueId: string | null; readonly rejected: readonly { recipient: string; response: string | null }[] }
export interface RetryEvent { readonly id: string; readonly messageId: string; readonly attempt: number; readonly error: string; readonly delayMs: number }
export interface DeadEvent { readonly id: string; readonly messageId: string; readonly attempt: number; readonly error: string; readonly response: string | null }

/** Events of a relay, with their payloads. */
export interface RelayEvents {
  claimed: [count: number];
  sent: [SentEvent];
  retry: [RetryEvent];
  dead: [DeadEvent];
  rescued: [readonly RescuedMail[]];
  /**
   * Something went wrong that the relay handles itself, for monitoring: a database or MTA outage,
   * or ({@link SchemaNotReadyError}) outbox tables that disappeared while it runs.
   */
  warning: [Error];
  stopped: [RelayCounts];
}

/** A running (or runnable) relay. */
export interface Relay {
  readonly id: string;
  /**
   * Start claiming and handing over in the background. Resolves once started.
   *
   * Checks the outbox tables first: missing tables, or a column missing or of another type, is a
   * configuration error, not an outage, and rejects with {@link SchemaNotReadyError} (its message
   * says what to run). A database that does not answer yet is not an error: the relay starts and
   * backs off until it does. A table dropped later is reported by a `warning` event with a
   * `SchemaNotReadyError` and an error log line; the relay claims nothing until it is back.
   */
  start(): Promise<void>;
  /**
   * Stop gracefully: no new claims, claimed mail not yet handed over is released, hand-offs in flight
   * get until the deadline to finish, outcomes are recorded. Resolves with the counts.
   */
  stop(options?: { readonly deadlineMs?: number }): Promise<RelayCounts>;
  /** Settles when the relay has stopped (after `stop()` or the signal). */
  readonly stopped: Promise<RelayCounts>;
  /**
   * Hand over everything due now, wait for the outcomes, and return what happened. Not while started.
   * Rejects with {@link SchemaNotReadyError} when the outbox tables are missing or of the wrong
   * shape (at start or meanwhile), and with `DatabaseUnavailableError` after about 8 s without the database.
   */
  runOnce(): Promise<RelayCounts>;
  /** Counts since the relay was created. */
  counts(): RelayCounts;
  on<K extends keyof RelayEvents>(event: K, listener: (...args: RelayEvents[K]) => void): this;
  once<K extends keyof RelayEvents>(event: K, listener: (...args: RelayEvents[K]) => void): this;
  off<K extends keyof RelayEvents>(event: K, listener: (...args: RelayEvents[K]) => void): this;
  [Symbol.asyncDispose](): Promise<void>;
}

const asyncDispose: typeof Symbol.asyncDispose = Symbol.asyncDispose ?? Symbol.for("nodejs.asyncDispose");

function positiveInt(name: string, value: number | undefined, fallback: number, min = 1): number {
  if (value === undefined) return fallback;
  if (typeof value !== "number" || !Number.isInteger(value) || value < min) {
    throw new OptionsError(`Expected \`${name}\` to be an integer >= ${min}, got ${String(value)}.`);
  }
  return value;
}

/** Codes that mean nothing reached the MTA: the connection was never made. Safe to retry at once. */
function isConnectRefused(err: unknown): boolean {
  const e = err as { code?: unknown; errno?: unknown; responseCode?: unknown; cause?: { code?: unknown } } | null;
  if (!e || e.responseCode !== undefined) return false;
  // Not ECONNECTION: nodemailer also reports a connection closed after DATA (the MTA may have the mail) that way.
  return e.code === "ECONNREFUSED" || e.errno === "ECONNREFUSED" || e.cause?.code === "ECONNREFUSED";
}

/**
 * Database errors worth waiting out (connection lost, server restarting, lock contention), as
 * opposed to errors in the statement itself. By driver error codes, not message text, where there are codes.
 */
export function isTransientDatabaseError(err: unknown): boolean {
  const e = err as { code?: unknown; message?: unknown } | null;
  const code = typeof e?.code === "string" ? e.code : "";
  if (/^(08|57P|53|40001|40P01|55P03)/.test(code)) return true; // connection, shutdown, resources, serialization, lock
  if (/^SQLITE_(BUSY|LOCKED|IOERR|CANTOPEN|FULL|PROTOCOL)/.test(code)) return true;
  if (["ECONNREFUSED", "ECONNRESET", "ETIMEDOUT", "EPIPE", "ENOTFOUND", "EAI_AGAIN", "EHOSTUNREACH", "ENETUNREACH"].includes(code)) return true;
  if (code !== "") return false;
  // node-postgres reports a lost connection without a code.
  return typeof e?.message === "string" && /Connection terminated|connection error|timeout exceeded when trying to connect|not queryable/i.test(e.message);
}

/**
 * A statement failed because an outbox table or column is not there (dropped, or never created),
 * as opposed to the database being unreachable. PostgreSQL says so by code: 42P01
 * undefined_table, 42703 undefined_column.
 */
export function isMissingSchemaError(err: unknown): boolean {
  const e = err as { code?: unknown; message?: unknown } | null;
  if (e?.code === "42P01" || e?.code === "42703") return true;
  // better-sqlite3 reports a missing table or column with the generic code SQLITE_ERROR, the same
  // as a syntax error (SQLite has no extended result code for it), so the message is the only
  // signal. The relay's statements are fixed and known to parse, so within SQLITE_ERROR these
  // texts (sqlite3 prepare errors: "no such table: x", "no such column: x", "table x has no
  // column named y") can only mean the schema changed.
  return e?.code === "SQLITE_ERROR" && typeof e.message === "string" && /^no such (table|column)\b|has no column named\b/.test(e.message);
}

/** The error the relay gives for outbox tables it cannot work with: what is wrong and what to run, on one line. */
function schemaNotReady(db: Db, problems: readonly SchemaProblem[], running: boolean, cause?: unknown): SchemaNotReadyError {
  const where = db.dialect === "postgresql" ? `schema ${db.schema} of ${db.displayUrl}` : db.filename;
  const missingTables = problems.filter((p) => p.kind === "table").map((p) => p.table);
  const fix = problems.every((p) => p.repairable)
    ? "Create what is missing with `mail-outbox migrate` (or `prisma migrate deploy` when your Prisma migrations hold the outbox models), then check with `mail-outbox doctor`"
    : `To fix: ${[...new Set(problems.map((p) => p.fix))].join("; ")}`;
  const message = running
    ? `The outbox tables in ${where} changed while the relay runs (${problems.map((p) => p.message).join("; ")}). ${fix}. The relay retries meanwhile.`
    : `The relay did not start: the outbox tables in ${where} are not ready (${problems.map((p) => p.message).join("; ")}). ${fix}.`;
  return new SchemaNotReadyError(message, problems.map((p) => `${p.message} (${p.fix})`), missingTables, cause === undefined ? undefined : { cause });
}

/** Errors that say the MTA as a whole is unreachable, not that this one mail is unwelcome. */
function isTransportOutage(code: string | null, responseCode: number | null): boolean {
  return responseCode === null && code !== null && ["ECONNECTION", "ECONNREFUSED", "ETIMEDOUT", "ESOCKET", "ECONNRESET", "EPIPE", "EDNS"].includes(code);
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    }
    signal?.addEventListener("abort", done, { once: true });
  });
}

/**
 * Create a relay. Nothing connects until `start()` or `runOnce()`.
 *
 * @example
 * ```ts
 * const relay = createRelay({ databaseUrl: "file:./app.db", transport: "smtp://127.0.0.1:25" });
 * await relay.start();
 * process.once("SIGTERM", () => relay.stop({ deadlineMs: 10_000 }));
 * await relay.stopped;
 * ```
 */
export function createRelay(options: RelayOptions): Relay {
  return new RelayImpl(options);
}

type Mode = "idle" | "running" | "once" | "stopping" | "stopped";

class RelayImpl extends EventEmitter implements Relay {
  readonly id: string;
  readonly stopped: Promise<RelayCounts>;
  /** The lease owner written into claimed rows: `id`, plus a per-process suffix when `relayId` was given. */
  private readonly owner: string;
  private readonly opts: RelayOptions;
  private concurrency: number;
  private batchSize: number;
  private readonly leaseMs: number;
  private readonly pollIntervalMs: number;
  private readonly handoffTimeoutMs: number;
  private readonly backoffBase: number;
  private readonly backoffMax: number;
  private readonly jitter: number;
  private readonly connectRetries: number;
  private readonly policy: LeaseExpiryPolicy;
  private readonly log: Logger;
  private readonly metrics: RelayMetrics | null;

  private mode: Mode = "idle";
  private db: Db | null = null;
  private ownsDb = false;
  private store: RelayStore | null = null;
  private transporter: Transporter | null = null;
  private ownsTransporter = false;
  private listener: pg.Client | null = null;

  /** Claimed, not yet started. */
  private queue: ClaimedMail[] = [];
  /** Being handed over now. */
  private readonly active = new Map<string, Promise<void>>();
  /** Outcomes not yet written. */
  private outcomes: Outcome[] = [];
  /** Local deadline (performance.now()) of each lease this relay holds. */
  private readonly leases = new Map<string, number>();
  private flushing: Promise<void> | null = null;
  private wake: (() => void) | null = null;
  private wakePending = false;
  private stopController = new AbortController();
  private resolveStopped!: (c: RelayCounts) => void;
  private loopDone: Promise<void> = Promise.resolve();
  private timers: NodeJS.Timeout[] = [];
  private dbOutageSince: number | null = null;
  private transportOutageSince: number | null = null;
  private transportCooldownMs = 0;
  private claimsPausedUntil = 0;
  private lastRescue = 0;
  private readonly total: RelayCounts = { claimed: 0, sent: 0, retried: 0, dead: 0, released: 0, rescued: 0 };

  constructor(options: RelayOptions) {
    super();
    if (options === null || typeof options !== "object") throw new OptionsError("Expected `options` to be an object.");
    if (!options.db && !options.databaseUrl) {
      throw new OptionsError("Expected `databaseUrl` (file:./outbox.db or postgresql://...) or `db`.");
    }
    if (options.transport === undefined || options.transport === null || (options.transport as unknown) === "") {
      throw new OptionsError("Expected `transport`: smtp://host:port, sendmail:, sendmail-bs:, or a nodemailer transporter.");
    }
    this.opts = options;
    this.id = options.relayId ?? `${os.hostname()}/${process.pid}/${randomBytes(2).toString("hex")}`;
    // Leases name this instance, so a relay restarted under the same relayId still rescues the rows its
    // previous process left behind (a relay never rescues its own rows).
    this.owner = options.relayId === undefined ? this.id : `${this.id}#${randomBytes(3).toString("hex")}`;
    if (typeof this.id !== "string" || this.id.length === 0 || this.id.length > 200) {
      throw new OptionsError("Expected `relayId` to be a non-empty string of at most 200 characters.");
    }
    this.concurrency = positiveInt("concurrency", options.concurrency, 10);
    this.batchSize = positiveInt("batchSize", options.batchSize, 100);
    this.leaseMs = positiveInt("leaseMs", options.leaseMs, 30_000, 1000);
    this.pollIntervalMs = positiveInt("pollIntervalMs", options.pollIntervalMs, 1000, 10);
    this.handoffTimeoutMs = positiveInt("handoffTimeoutMs", options.handoffTimeoutMs, 120_000, 100);
    this.backoffBase = positiveInt("backoff.baseMs", options.backoff?.baseMs, 5000, 0);
    this.backoffMax = positiveInt("backoff.maxMs", options.backoff?.maxMs, 3_600_000, 0);
    this.connectRetries = positiveInt("connectRetries", options.connectRetries, 2, 0);
    const jitter = options.backoff?.jitter ?? 0.2;
    if (typeof jitter !== "number" || !(jitter >= 0 && jitter <= 1)) throw new OptionsError("Expected `backoff.jitter` to be a number from 0 to 1.");
    this.jitter = jitter;
    const policy = options.leaseExpiryPolicy ?? "resend";
    if (policy !== "resend" && policy !== "hold") throw new OptionsError('Expected `leaseExpiryPolicy` to be "resend" or "hold".');
    this.policy = policy;
    this.log = options.logger === false ? silentLogger() : (options.logger ?? defaultLogger()).child({ relay: this.id });
    this.metrics = options.metricsRegistry ? relayMetrics(options.metricsRegistry) : null;
    this.stopped = new Promise((resolve) => (this.resolveStopped = resolve));
    if (options.signal) {
      const onAbort = () => void this.stop({ deadlineMs: options.stopDeadlineMs ?? 10_000 }).catch(() => {});
      if (options.signal.aborted) queueMicrotask(onAbort);
      else options.signal.addEventListener("abort", onAbort, { once: true });
    }
  }

  counts(): RelayCounts {
    return { ...this.total };
  }

  override on<K extends keyof RelayEvents>(event: K, listener: (...args: RelayEvents[K]) => void): this {
    return super.on(event, listener as (...args: unknown[]) => void);
  }
  override once<K extends keyof RelayEvents>(event: K, listener: (...args: RelayEvents[K]) => void): this {
    return super.once(event, listener as (...args: unknown[]) => void);
  }
  override off<K extends keyof RelayEvents>(event: K, listener: (...args: RelayEvents[K]) => void): this {
    return super.off(event, listener as (...args: unknown[]) => void);
  }
  private emitEvent<K extends keyof RelayEvents>(event: K, ...args: RelayEvents[K]): void {
    try {
      super.emit(event, ...args);
    } catch (err) {
      this.log.error({ err, event }, "a relay event listener threw; the relay goes on");
    }
  }

  // ---- lifecycle ---------------------------------------------------------------------------

  private async open(): Promise<void> {
    if (this.store) {
      // A relay used for runOnce() again: the tables may have changed since.
      await this.checkTables();
      return;
    }
    if (this.opts.db) {
      this.db = this.opts.db;
    } else {
      // SQLite: a short busy timeout. better-sqlite3 waits for the write lock synchronously, freezing the
      // whole relay (sockets, lease renewal); SQLITE_BUSY instead goes through the relay's async back-off.
      this.db = await openDatabase(this.opts.databaseUrl, { applicationName: `mail-outbox relay ${this.id}`.slice(0, 63), busyTimeoutMs: 100 });
      this.ownsDb = true;
    }
    // Before the store: SQLite prepares its statements at once, which fails on missing tables.
    await this.checkTables();
    this.store = this.db.dialect === "postgresql" ? postgresRelayStore(this.db.pool) : sqliteRelayStore(this.db.db);
    const t = this.opts.transport;
    this.transporter = createTransporter(t);
    this.ownsTransporter = this.transporter !== t;
    // A transport that carries several hand-offs per connection (the pipelining SMTP transport)
    // says how many it can take at once; the defaults grow to keep it busy.
    const capacity = (this.transporter.transporter as { capacity?: unknown }).capacity;
    if (this.opts.concurrency === undefined && typeof capacity === "number" && Number.isSafeInteger(capacity) && capacity > this.concurrency) {
      this.concurrency = capacity;
    }
    if (this.opts.batchSize === undefined) this.batchSize = Math.max(this.batchSize, this.concurrency * 5);
  }

  /**
   * Refuse to run on outbox tables the relay cannot work with (missing, or a column missing or of
   * another type): a configuration error, not an outage. A database that does not answer yet is
   * not checked here; the claim loop backs off until it does, and reports missing tables then.
   */
  private async checkTables(): Promise<void> {
    let problems: SchemaProblem[];
    try {
      problems = await inspectSchema(this.db!);
    } catch (err) {
      if (!isTransientDatabaseError(err)) throw err;
      this.log.debug({ error: errorText(err) }, "database not reachable at start; the outbox tables are checked when it answers");
      return;
    }
    const blocking = problems.filter((p) => p.blocksRelay);
    if (blocking.length > 0) throw schemaNotReady(this.db!, blocking, false);
    if (problems.length > 0) {
      this.log.warn({ problems: problems.map((p) => `${p.message} (${p.fix})`) }, "the outbox tables need attention (mail-outbox doctor); the relay runs");
    }
  }

  /** Open and check the tables; on failure leave nothing open, so the process can exit. */
  private async openChecked(): Promise<void> {
    try {
      await this.open();
    } catch (err) {
      await this.closeResources();
      this.db = null;
      this.store = null;
      this.transporter = null;
      this.ownsDb = false;
      this.ownsTransporter = false;
      throw err;
    }
  }

  async start(): Promise<void> {
    if (this.mode !== "idle") throw new RelayStateError(`Cannot start a relay that is ${this.mode}; create a new one.`);
    this.mode = "running";
    try {
      await this.openChecked();
    } catch (err) {
      this.mode = "idle";
      throw err;
    }
    if (this.db?.dialect === "postgresql" && this.opts.listen !== false) void this.listen();
    this.timers.push(setInterval(() => void this.renewLeases(), Math.max(250, Math.floor(this.leaseMs / 3))));
    this.log.info(
      { database: this.db?.displayUrl, concurrency: this.concurrency, batchSize: this.batchSize, leaseMs: this.leaseMs },
      "relay started",
    );
    this.loopDone = this.loop("forever");
  }

  async runOnce(): Promise<RelayCounts> {
    if (this.mode !== "idle") throw new RelayStateError(`runOnce() needs an idle relay; this one is ${this.mode}.`);
    this.mode = "once";
    const before = this.counts();
    const renew = setInterval(() => void this.renewLeases(), Math.max(250, Math.floor(this.leaseMs / 3)));
    try {
      await this.openChecked();
      await this.loop("once");
    } finally {
      clearInterval(renew);
      if (this.mode === "once") this.mode = "idle";
    }
    const after = this.counts();
    return {
      claimed: after.claimed - before.claimed,
      sent: after.sent - before.sent,
      retried: after.retried - before.retried,
      dead: after.dead - before.dead,
      released: after.released - before.released,
      rescued: after.rescued - before.rescued,
    };
  }

  async stop(options: { readonly deadlineMs?: number } = {}): Promise<RelayCounts> {
    const deadlineMs = options.deadlineMs ?? this.opts.stopDeadlineMs ?? 10_000;
    if (this.mode === "stopped" || this.mode === "stopping") return this.stopped;
    const wasRunning = this.mode === "running";
    this.mode = "stopping";
    this.stopController.abort();
    this.kick();
    const deadline = performance.now() + deadlineMs;
    await this.loopDone.catch(() => {});
    // Claimed but never started: give them back at once, without counting the attempt.
    this.releaseQueued();
    const inFlight = [...this.active.values()];
    if (inFlight.length > 0) {
      await Promise.race([Promise.allSettled(inFlight), sleep(Math.max(0, deadline - performance.now()))]);
    }
    // Write what is known, trying until the deadline (or once more if it has passed).
    do {
      await this.flush();
      if (this.outcomes.length === 0) break;
      await sleep(Math.min(500, Math.max(0, deadline - performance.now())));
    } while (performance.now() < deadline);
    if (this.active.size > 0) {
      this.log.warn(
        { inFlight: this.active.size },
        "stop deadline reached with hand-offs still in flight; their leases will expire and they will be marked as uncertain hand-offs",
      );
    }
    if (this.outcomes.length > 0) {
      this.log.warn({ unrecorded: this.outcomes.length }, "could not record every outcome before the deadline; those mails will be rescued when their leases expire");
    }
    for (const t of this.timers) clearInterval(t);
    this.timers = [];
    if (this.retryFlushTimer) clearTimeout(this.retryFlushTimer);
    this.retryFlushTimer = null;
    await this.closeResources();
    this.mode = "stopped";
    const counts = this.counts();
    if (wasRunning) this.log.info(counts, "relay stopped");
    this.emitEvent("stopped", counts);
    this.resolveStopped(counts);
    return counts;
  }

  async [asyncDispose](): Promise<void> {
    await this.stop();
  }

  private async closeResources(): Promise<void> {
    const listener = this.listener;
    this.listener = null;
    if (listener) await listener.end().catch(() => {});
    if (this.ownsTransporter && this.transporter) this.transporter.close();
    if (this.ownsDb && this.db) await this.db.close().catch(() => {});
  }

  // ---- the claim loop ----------------------------------------------------------------------

  private get running(): boolean {
    return this.mode === "running" || this.mode === "once";
  }

  /** Wake the claim loop now (a NOTIFY arrived, a slot freed up, or we are stopping). */
  private kick(): void {
    if (this.wake) {
      const w = this.wake;
      this.wake = null;
      w();
    } else {
      this.wakePending = true;
    }
  }

  private waitForKick(ms: number): Promise<void> {
    if (this.wakePending) {
      this.wakePending = false;
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.wake = null;
        resolve();
      }, ms);
      this.wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }

  private async loop(kind: "forever" | "once"): Promise<void> {
    const capacity = Math.max(this.batchSize, this.concurrency * 2);
    let dbBackoff = 250;
    let failures = 0;
    let flushFailures = 0;
    // runOnce() gives up after this many database failures in a row (about 8 s) instead of waiting forever.
    const giveUp = async (err: unknown) => {
      await Promise.allSettled([...this.active.values()]);
      this.releaseQueued();
      await this.flush();
      throw new DatabaseUnavailableError(`runOnce() could not reach the database after ${failures} tries: ${errorText(err)}`, { cause: err });
    };
    while (this.running) {
      if (this.schemaReport !== null) {
        // Tables gone: claim nothing (mail handed over now could not be recorded) until they are back.
        if (kind === "once") {
          const report = await this.schemaReport;
          await Promise.allSettled([...this.active.values()]);
          this.releaseQueued();
          await this.flush();
          // The next runOnce() looks afresh.
          this.schemaReport = null;
          this.schemaGoneSince = null;
          throw report;
        }
        await this.waitForSchema();
        continue;
      }
      if (kind === "forever" || this.lastRescue === 0) await this.rescueExpired();

      const now = performance.now();
      if (now < this.claimsPausedUntil && kind === "forever") {
        await this.waitForKick(this.claimsPausedUntil - now);
        continue;
      }
      const room = capacity - this.queue.length - this.active.size;
      let claimed = 0;
      let limit = 0;
      // Claim when the local queue runs low, not one row at a time.
      if (room > 0 && this.queue.length < this.concurrency) {
        limit = Math.min(this.batchSize, room);
        try {
          const rows = await this.store!.claim(this.owner, limit, this.leaseMs);
          this.databaseUp();
          dbBackoff = 250;
          failures = 0;
          claimed = rows.length;
          if (claimed > 0) {
            const leaseEnd = performance.now() + this.leaseMs;
            for (const r of rows) this.leases.set(r.id, leaseEnd);
            this.queue.push(...rows);
            this.total.claimed += claimed;
            this.metrics?.claimed.inc(claimed);
            this.emitEvent("claimed", claimed);
            this.pump();
          }
        } catch (err) {
          if (isMissingSchemaError(err)) {
            await this.schemaGone(err);
            continue;
          }
          this.databaseDown(err);
          if (kind === "once" && ++failures >= 5) await giveUp(err);
          await sleep(dbBackoff, this.stopController.signal);
          // Lock contention on SQLite passes quickly; a lost server may take a while.
          dbBackoff = Math.min(dbBackoff * 2, /^SQLITE_(BUSY|LOCKED)/.test(String((err as { code?: unknown }).code)) ? 500 : 10_000);
          continue;
        }
      }
      if (kind === "once" && claimed === 0 && this.queue.length === 0 && this.active.size === 0) {
        await this.flush();
        if (this.outcomes.length === 0) return;
        if (++flushFailures >= 5) await giveUp(new Error("the outcomes of this run could not be recorded"));
        await sleep(dbBackoff);
        dbBackoff = Math.min(dbBackoff * 2, 10_000);
        continue;
      }
      if (claimed > 0 && claimed === limit) continue; // more may be due
      await this.waitForKick(kind === "once" ? 50 : this.pollIntervalMs);
    }
  }

  private releaseQueued(): void {
    for (const m of this.queue) {
      this.outcomes.push({ kind: "release", id: m.id });
      this.total.released++;
    }
    this.queue = [];
  }

  /** Start hand-offs while there is room. */
  private pump(): void {
    while (this.active.size < this.concurrency && this.queue.length > 0 && this.mode !== "stopping") {
      const mail = this.queue.shift()!;
      const leaseEnd = this.leases.get(mail.id);
      // A lease this relay could not renew may already belong to another relay: do not send.
      if (leaseEnd === undefined || leaseEnd - performance.now() < this.leaseMs / 3) {
        // Not handed over: give it back as not attempted (a no-op if another relay took it meanwhile).
        this.log.debug({ id: mail.id, messageId: mail.messageId }, "lease ran short before the hand-off started; releasing the mail");
        this.outcomes.push({ kind: "release", id: mail.id });
        this.total.released++;
        void this.flush();
        continue;
      }
      const p = this.handOff(mail).finally(() => {
        this.active.delete(mail.id);
        this.pump();
        if (this.queue.length < this.concurrency) this.kick();
      });
      this.active.set(mail.id, p);
    }
  }

  private backoffDelay(attempts: number): number {
    const exp = Math.min(this.backoffMax, this.backoffBase * 2 ** Math.min(Math.max(attempts - 1, 0), 30));
    const spread = exp * this.jitter;
    return Math.max(0, Math.round(exp - spread + Math.random() * 2 * spread));
  }

  private async handOff(mail: ClaimedMail): Promise<void> {
    const startedAt = new Date();
    const t0 = performance.now();
    const base = { id: mail.id, attemptId: newId(), attempt: mail.attempts, startedAt };
    let outcome: Outcome;
    try {
      const info = await this.sendWithTimeout(mail);
      const result = toHandoffResult(info);
      const durationMs = performance.now() - t0;
      // A 4xx to some recipients defers only them: they get the same bytes on the next attempt.
      const deferred = result.rejected.filter((r) => /^4\d\d/.test(r.response ?? ""));
      const refused = result.rejected.filter((r) => !deferred.includes(r));
      if (deferred.length > 0 && mail.attempts < mail.maxAttempts) {
        const delayMs = this.backoffDelay(mail.attempts);
        const error = `deferred for ${deferred.map((d) => `${d.recipient} (${d.response ?? "no reply"})`).join(", ")}`;
        outcome = { ...base, durationMs, kind: "partial", response: result.response, queueId: result.queueId, accepted: result.accepted, rejected: refused, deferred, delayMs, error };
        this.total.retried++;
        this.metrics?.handoffs.inc({ outcome: "partial" });
        this.emitEvent("retry", { id: mail.id, messageId: mail.messageId, attempt: mail.attempts, error, delayMs });
      } else {
        outcome = { ...base, durationMs, kind: "accepted", response: result.response, queueId: result.queueId, accepted: result.accepted, rejected: result.rejected };
      }
      this.transportUp();
      this.metrics?.duration.observe(durationMs / 1000);
      if (outcome.kind === "accepted") {
        this.total.sent++;
        this.metrics?.handoffs.inc({ outcome: "sent" });
        this.emitEvent("sent", { id: mail.id, messageId: mail.messageId, attempt: mail.attempts, response: result.response, queueId: result.queueId, rejected: result.rejected });
      }
    } catch (err) {
      const durationMs = performance.now() - t0;
      const c = classifyError(err);
      const exhausted = mail.attempts >= mail.maxAttempts;
      if (c.kind === "permanent" || exhausted) {
        const error = c.kind === "permanent" ? c.message : `attempts exhausted (${mail.attempts} of ${mail.maxAttempts}); last error: ${c.message}`;
        const rejected = (err as { rejectedErrors?: { recipient?: string; response?: string }[] }).rejectedErrors?.map((e) => ({ recipient: String(e.recipient ?? ""), response: e.response ?? null })) ?? null;
        outcome = { ...base, durationMs, kind: "dead", error, errorCode: c.code, response: c.response, responseCode: c.responseCode, rejected };
        this.total.dead++;
        this.metrics?.handoffs.inc({ outcome: "dead" });
        this.log.warn({ id: mail.id, messageId: mail.messageId, attempt: mail.attempts, error, response: c.response }, "mail is dead");
        this.emitEvent("dead", { id: mail.id, messageId: mail.messageId, attempt: mail.attempts, error, response: c.response });
      } else {
        const delayMs = this.backoffDelay(mail.attempts);
        outcome = { ...base, durationMs, kind: "retry", delayMs, error: c.message, errorCode: c.code, response: c.response, responseCode: c.responseCode };
        this.total.retried++;
        this.metrics?.handoffs.inc({ outcome: "retry" });
        if (isTransportOutage(c.code, c.responseCode)) this.transportDown(err, c.message);
        else this.log.debug({ id: mail.id, messageId: mail.messageId, attempt: mail.attempts, error: c.message, delayMs }, "transient failure; will retry");
        this.emitEvent("retry", { id: mail.id, messageId: mail.messageId, attempt: mail.attempts, error: c.message, delayMs });
      }
    }
    this.outcomes.push(outcome);
    void this.flush();
  }

  private async sendWithTimeout(mail: ClaimedMail) {
    const transporter = this.transporter!;
    const sendRaw = (transporter.transporter as Partial<RawSender>).sendRaw?.bind(transporter.transporter);
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      // Through setImmediate: after a blocked event loop, a reply already waiting in the socket wins over the timer.
      timer = setTimeout(
        () => setImmediate(() => reject(new HandoffTimeoutError(`The hand-off did not finish within ${this.handoffTimeoutMs} ms (handoffTimeoutMs).`))),
        this.handoffTimeoutMs,
      );
    });
    // A transport that takes composed messages directly skips nodemailer's Mailer (a MimeNode,
    // header and address normalisation per message) for bytes that are already final.
    const once = (): Promise<SentMessageInfoLike> =>
      sendRaw
        ? sendRaw({ from: mail.envelopeFrom, to: mail.envelopeTo }, mail.raw)
        : transporter.sendMail({ envelope: { from: mail.envelopeFrom, to: [...mail.envelopeTo] }, raw: mail.raw, messageId: mail.messageId });
    // A refused connection (a local MTA restarting) is retried within the attempt, with p-retry;
    // the common case, a hand-off that works, does not pay for the retry machinery.
    const send = once().catch((error: unknown) => {
      if (this.connectRetries === 0 || !this.running || !isConnectRefused(error)) throw error;
      // Waits 100 ms, then 200, 400... up to 1 s between tries, `connectRetries` more tries in all.
      return sleep(100).then(() => pRetry(once, {
        retries: this.connectRetries - 1,
        minTimeout: 200,
        maxTimeout: 1000,
        factor: 2,
        shouldRetry: ({ error: e }) => this.running && isConnectRefused(e),
      }));
    });
    try {
      return await Promise.race([send, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  // ---- writing outcomes --------------------------------------------------------------------

  /**
   * Write every buffered outcome in one statement. While a write is running, new outcomes
   * gather and go in the next one: batches grow with load and add no delay when idle.
   */
  private flush(): Promise<void> {
    this.flushing ??= this.flushLoop().finally(() => (this.flushing = null));
    return this.flushing;
  }

  private async flushLoop(): Promise<void> {
    while (this.outcomes.length > 0) {
      const batch = this.outcomes;
      this.outcomes = [];
      try {
        await this.store!.complete(this.owner, this.id, batch);
      } catch (err) {
        if (isTransientDatabaseError(err) || isMissingSchemaError(err)) {
          // Keep them for the next try. The rows stay leased to this relay meanwhile.
          this.outcomes = batch.concat(this.outcomes);
          this.databaseError(err);
          this.retryFlushTimer ??= setTimeout(() => {
            this.retryFlushTimer = null;
            void this.flush();
          }, 1000);
          return;
        }
        // The database refused the batch itself: write the outcomes one by one so that one bad
        // outcome cannot hold back the others. One that still fails is dropped from memory: its row
        // keeps its lease, which expires, and the mail is rescued as an uncertain hand-off.
        await this.flushOneByOne(batch);
        continue;
      }
      for (const o of batch) this.leases.delete(o.id);
      this.databaseUp();
    }
  }

  private async flushOneByOne(batch: readonly Outcome[]): Promise<void> {
    for (const o of batch) {
      try {
        await this.store!.complete(this.owner, this.id, [o]);
        this.leases.delete(o.id);
      } catch (err) {
        if (isTransientDatabaseError(err) || isMissingSchemaError(err)) {
          this.outcomes.push(o);
          this.databaseError(err);
          continue;
        }
        this.leases.delete(o.id);
        this.log.error({ id: o.id, outcome: o.kind, error: errorText(err) }, "could not record an outcome; the mail will be rescued when its lease expires");
        this.emitEvent("warning", err instanceof Error ? err : new Error(String(err)));
      }
    }
  }
  private retryFlushTimer: NodeJS.Timeout | null = null;

  // ---- leases ------------------------------------------------------------------------------

  private async renewLeases(): Promise<void> {
    if (!this.store || this.leases.size === 0) return;
    const ids = [...this.leases.keys()];
    try {
      const kept = new Set(await this.store.renew(this.owner, ids, this.leaseMs));
      this.databaseUp();
      const leaseEnd = performance.now() + this.leaseMs;
      for (const id of ids) {
        if (kept.has(id)) {
          if (this.leases.has(id)) this.leases.set(id, leaseEnd);
        } else if (this.leases.has(id) && !this.outcomes.some((o) => o.id === id)) {
          // Another relay rescued it, or it was recorded meanwhile.
          this.leases.delete(id);
          const before = this.queue.length;
          this.queue = this.queue.filter((m) => m.id !== id);
          if (this.queue.length !== before) this.log.warn({ id }, "lost the lease on a claimed mail before handing it over; not sending it");
        }
      }
    } catch (err) {
      this.databaseError(err);
    }
  }

  private async rescueExpired(): Promise<void> {
    const now = Date.now();
    if (now - this.lastRescue < Math.min(5000, this.leaseMs / 2)) return;
    this.lastRescue = now;
    try {
      const rescued = await this.store!.rescue(this.owner, this.policy, 1000);
      this.databaseUp();
      if (rescued.length > 0) {
        this.total.rescued += rescued.length;
        this.metrics?.rescued.inc(rescued.length);
        this.log.warn(
          { count: rescued.length, policy: this.policy, previousOwners: [...new Set(rescued.map((r) => r.previousOwner))] },
          "rescued mail whose relay stopped renewing its lease (uncertain hand-offs)",
        );
        this.emitEvent("rescued", rescued);
      }
    } catch (err) {
      this.databaseError(err);
    }
  }

  // ---- outages: one line when they start, one when they end --------------------------------

  /** A failed statement: tables gone (reported as such) or the database unreachable. */
  private databaseError(err: unknown): void {
    if (isMissingSchemaError(err)) void this.schemaGone(err);
    else this.databaseDown(err);
  }

  private schemaGoneSince: number | null = null;
  private schemaReport: Promise<SchemaNotReadyError> | null = null;

  /**
   * Outbox tables (or columns) disappeared while the relay runs: one error line naming what is
   * missing, found by asking the database for its tables rather than by reading the error text,
   * and a `warning` event with a {@link SchemaNotReadyError}. The relay keeps retrying, so a
   * `mail-outbox migrate` brings it back without a restart.
   */
  private schemaGone(err: unknown): Promise<SchemaNotReadyError> {
    if (this.schemaReport) return this.schemaReport;
    this.schemaGoneSince = Date.now();
    this.schemaReport = (async () => {
      let problems: SchemaProblem[] = [];
      try {
        problems = (await inspectSchema(this.db!)).filter((p) => p.blocksRelay);
      } catch {
        // Reported below with the statement's own error.
      }
      const report =
        problems.length > 0
          ? schemaNotReady(this.db!, problems, true, err)
          : new SchemaNotReadyError(
              `An outbox table or column the relay uses is missing (${errorText(err)}). Run \`mail-outbox migrate\`, then check with \`mail-outbox doctor\`. The relay retries meanwhile.`,
              [errorText(err)],
              [],
              { cause: err },
            );
      this.log.error({ missingTables: report.missingTables, problems: report.problems }, report.message);
      this.emitEvent("warning", report);
      return report;
    })();
    return this.schemaReport;
  }

  /** While tables are gone: look again every `pollIntervalMs` (at least 1 s). */
  private async waitForSchema(): Promise<void> {
    await sleep(Math.max(1000, this.pollIntervalMs), this.stopController.signal);
    if (!this.running) return;
    try {
      const blocking = (await inspectSchema(this.db!)).filter((p) => p.blocksRelay);
      this.databaseUp();
      if (blocking.length === 0) this.schemaBack();
    } catch (err) {
      if (isTransientDatabaseError(err)) this.databaseDown(err);
    }
  }

  private schemaBack(): void {
    if (this.schemaGoneSince === null) return;
    this.log.info({ missingForMs: Date.now() - this.schemaGoneSince }, "the outbox tables are back");
    this.schemaGoneSince = null;
    this.schemaReport = null;
    if (this.outcomes.length > 0) void this.flush();
  }

  private databaseDown(err: unknown): void {
    if (this.dbOutageSince !== null) return;
    this.dbOutageSince = Date.now();
    this.log.warn({ error: errorText(err) }, "database unreachable; backing off and retrying");
    this.emitEvent("warning", err instanceof Error ? err : new Error(String(err)));
  }

  private databaseUp(): void {
    if (this.dbOutageSince === null) return;
    this.log.info({ outageMs: Date.now() - this.dbOutageSince }, "database reachable again");
    this.dbOutageSince = null;
    if (this.outcomes.length > 0) void this.flush();
  }

  private transportDown(err: unknown, message: string): void {
    // Pause claims (not hand-offs already claimed): the pause doubles once per failed round, up to backoff.maxMs.
    const now = performance.now();
    if (now >= this.claimsPausedUntil) {
      const cap = Math.max(100, Math.min(30_000, this.backoffMax));
      this.transportCooldownMs = Math.min(Math.max(this.transportCooldownMs * 2, Math.min(1000, cap)), cap);
      this.claimsPausedUntil = now + this.transportCooldownMs;
    }
    if (this.transportOutageSince !== null) return;
    this.transportOutageSince = Date.now();
    this.log.warn({ error: message }, "MTA unreachable; mail is rescheduled with backoff and claims pause");
    this.emitEvent("warning", err instanceof Error ? err : new Error(message));
  }

  private transportUp(): void {
    this.transportCooldownMs = 0;
    this.claimsPausedUntil = 0;
    if (this.transportOutageSince === null) return;
    this.log.info({ outageMs: Date.now() - this.transportOutageSince }, "MTA reachable again");
    this.transportOutageSince = null;
  }

  // ---- PostgreSQL LISTEN -------------------------------------------------------------------

  private async listen(): Promise<void> {
    let delay = 500;
    while (this.mode === "running") {
      const db = this.db;
      if (!db || db.dialect !== "postgresql") return;
      const client = new pg.Client({ ...(db.pool.options as pg.ClientConfig), application_name: `mail-outbox listen ${this.id}`.slice(0, 63) });
      const ended = new Promise<void>((resolve) => {
        client.once("end", resolve);
        client.once("error", () => resolve());
      });
      // The trigger sends the table's schema: ignore outboxes of other schemas in the same database.
      client.on("notification", (n) => {
        if (!n.payload || n.payload === db.schema) this.kick();
      });
      try {
        await client.connect();
        await client.query("LISTEN mail_outbox");
        this.listener = client;
        delay = 500;
        this.kick(); // catch up on anything committed while we were not listening
        await ended;
      } catch {
        // The claim loop logs database outages; polling covers the gap.
      }
      if (this.listener === client) this.listener = null;
      await client.end().catch(() => {});
      if (this.mode !== "running") return;
      await sleep(delay, this.stopController.signal);
      delay = Math.min(delay * 2, 10_000);
    }
  }
}
