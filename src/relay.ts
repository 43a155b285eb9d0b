/**
 * The relay handle: `createRelay(options)` validates the options and returns a {@link Relay} that
 * starts, stops (gracefully, with a deadline), runs once, counts, emits typed events, and
 * disposes with `await using`. The work is done by its parts, each in its own file:
 *
 * - relay-loop.ts: the claim loop (claim, pump, hand-off), calling
 * - outcome.ts: the pure decision of what to write for a hand-off (sent, partly refused, retry when, dead),
 * - outcome-writer.ts: the outcome buffer (group commit, one-by-one fallback),
 * - leases.ts: renewing this relay's leases and rescuing others' expired ones,
 * - outages.ts: database, schema and MTA outages, one line when they start and one when they end.
 * - relay-health.ts: liveness and readiness for `/healthz` and `/readyz` (`relay.health()`).
 *
 * Delivery is at least once. The duplicate window is the time between the MTA's `250` to the end
 * of DATA and the batch that records it as sent: a relay that dies inside that window leaves the
 * row claimed; when its lease expires another relay marks it as an uncertain hand-off and, under
 * the default policy "resend", hands it over again with the same Message-ID. Under "verify" it is
 * held and settled from the MTA's own record (fate/verify.ts): sent when the MTA's log shows it
 * queued the mail, handed over again only when the log, read past the hold, never saw it.
 *
 * At each hand-off the relay asks for delivery status notifications (option `dsn`, fate/token.ts):
 * ENVID, NOTIFY=FAILURE,DELAY and RET=HDRS by default, so `ingest` can link the reports.
 *
 * Over 400 lines: most of it is the public types with their TSDoc (options, counts, events, the
 * handle); the code is option checks and the lifecycle.
 */
import { EventEmitter } from "node:events";
import os from "node:os";
import path from "node:path";
import { randomBytes } from "node:crypto";
import { performance } from "node:perf_hooks";
import type { Transporter } from "nodemailer";
import type { Registry } from "prom-client";
import { openDatabase, type Db } from "./db.js";
import { OptionsError, RelayStateError } from "./errors.js";
import { createTransporter, transportCapabilities, type TransportSpec } from "./transport.js";
import { defaultLogger, silentLogger, type Logger } from "./logger.js";
import type { LeaseExpiryPolicy, Listener, RescuedMail, SchemaProblem, Store } from "./store.js";
import { opsMetrics, relayMetrics, type OpsMetrics, type RelayMetrics } from "./metrics.js";
import { errorText, sleep, type RelayCore, type RelaySettings } from "./relay-core.js";
import { ClaimLoop } from "./relay-loop.js";
import { OutcomeWriter } from "./outcome-writer.js";
import { Leases } from "./leases.js";
import { Outages, schemaNotReady } from "./outages.js";
import { parseDsnOptions, type DsnOptions } from "./fate/token.js";
import { DEFAULT_VERIFY_WINDOW_MS, type VerifiedEvent } from "./fate/verify.js";
import { RelayProbe, type RelayHealth } from "./relay-health.js";
import { relayTransportKey } from "./ops.js";
import { RelayOps, opsSettings, type RetentionOptions } from "./relay-ops.js";

export type { RelayHealth } from "./relay-health.js";

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
  /**
   * How often to look for due mail when nothing wakes the relay. On MySQL/MariaDB, which have no
   * wake-ups (no LISTEN/NOTIFY), the relay polls adaptively and this is the longest wait: 10 ms
   * after a claim that found mail, doubling while none is due (10, 20, 40 ... this), so mail
   * that keeps coming waits at most that little, and an idle relay looks once per this interval
   * with one indexed read. A full batch is claimed again at once, and a freed hand-off slot
   * claims at once, on every database. Lower it for a shorter wait of the first mail after a
   * quiet spell (it waits up to this long), at the cost of more reads.
   * @default 1000
   */
  readonly pollIntervalMs?: number;
  /** Upper bound on one hand-off, a backstop behind the transport's own timeouts. @default 120_000 */
  readonly handoffTimeoutMs?: number;
  readonly backoff?: BackoffOptions;
  /** Immediate retries, inside one attempt, of a connection the MTA refused. @default 2 */
  readonly connectRetries?: number;
  /**
   * What happens to a mail whose relay died during its hand-off (the MTA may or may not have it):
   * `"resend"` hands it over again with the same Message-ID; `"hold"` parks it as `held` for an operator;
   * `"verify"` holds it and settles it from the MTA's own record: sent (with the queue id found)
   * when the MTA's log shows it queued the mail, handed over again when a log follower read past
   * the moment it was held and found nothing (events `verified`). Needs `mail-outbox follow-log`
   * running against the same database; without a follower that has caught up, nothing is resent:
   * the mail stays held and a warning says why. Over `sendmail:` and `sendmail-bs:` (which Postfix
   * answers also while stopped, into its maildrop) absence also needs the log to show Postfix at
   * work after the hold. Either way it is counted in `uncertain_handoffs`.
   * @default "resend"
   */
  readonly leaseExpiryPolicy?: LeaseExpiryPolicy;
  /**
   * Policy `"verify"`: how long a held uncertain hand-off waits for the MTA's record; after that it
   * stays held for an operator (a warning). @default 600_000 (10 minutes)
   */
  readonly verifyWindowMs?: number;
  /**
   * Delivery status notifications (RFC 3461) asked of the MTA at each hand-off: ENVID (the mail id,
   * or its signed token with `secret`), NOTIFY, RET, and with `verp` a return path
   * `local+<token>@domain`. `ingest` links the reports that come back. `false` asks nothing.
   * VERP changes the envelope sender at the hand-off only; the row keeps its `envelope_from`.
   * @default { notify: ["FAILURE", "DELAY"], ret: "HDRS", secret: null, verp: false }
   */
  readonly dsn?: Partial<DsnOptions> | false;
  /** PostgreSQL: wake on `NOTIFY mail_outbox` as soon as an enqueueing transaction commits. @default true */
  readonly listen?: boolean;
  /**
   * PostgreSQL behind PgBouncer (`?pgbouncer=true`): a direct URL for LISTEN; without one the relay
   * polls. @default process.env.MAIL_OUTBOX_LISTEN_URL
   */
  readonly listenUrl?: string | null;
  /** A pino logger, or `false` for none. @default JSON lines on stderr */
  readonly logger?: Logger | false;
  /** A prom-client registry to register the relay's metrics in. @default none */
  readonly metricsRegistry?: Registry;
  /**
   * How often the outbox gauges (mail per status, due mail and the age of the oldest, uncertain,
   * held, dead: relay-ops.ts) are refreshed. One relay at a time counts them (the holder of the
   * lease "gauges") and publishes them in the database; every relay exports the published numbers
   * in `metricsRegistry`, with `mail_outbox_gauges_age_seconds`. 0: this relay neither counts nor
   * exports them. @default 15_000
   */
  readonly gaugeIntervalMs?: number;
  /**
   * Opt-in retention: delete sent, cancelled and dead mail (with its attempt log) once it is older
   * than the given age since its last change, in small batches by one relay at a time (the holder
   * of the lease "retention"); counted in `mail_outbox_purged_total{status}`. Pending, sending and
   * held mail is never purged. `mail-outbox purge --retention` applies the same rules once.
   * @default none (nothing is purged)
   * @example { sent: "30d", cancelled: "30d", dead: "90d" }
   */
  readonly retention?: RetentionOptions | false;
  /** Aborting it stops the relay gracefully, as `stop()` does. */
  readonly signal?: AbortSignal;
  /** Deadline for in-flight hand-offs when stopped by the signal or by `await using`. @default 10_000 */
  readonly stopDeadlineMs?: number;
}

/**
 * What became of the mail a relay claimed. `sent`, `retried` and `dead` count mail by the status it
 * went to, from the hand-off outcomes stored in the attempt log (see the table in outcome.ts):
 * `sent` = outcome `accepted`, or `partial` with every other recipient refused; `retried` =
 * `transient`, or `partial` with recipients deferred; `dead` = `permanent` (incl. attempts used up).
 */
export interface RelayCounts {
  /** Rows claimed. */
  claimed: number;
  /** Handed over and recorded as sent (events `sent`). */
  sent: number;
  /** Back to pending for a later attempt (events `retry`). */
  retried: number;
  /** Given up on (events `dead`). */
  dead: number;
  /** Claimed but not handed over (stop, or a lease that ran short): back to pending, the attempt not counted. */
  released: number;
  /** Others' rows whose lease expired, moved on under `leaseExpiryPolicy` (events `rescued`). */
  rescued: number;
}

export interface SentEvent { readonly id: string; readonly messageId: string; readonly attempt: number; readonly response: string; readonly queueId: string | null; readonly rejected: readonly { recipient: string; response: string | null }[] }
export interface RetryEvent { readonly id: string; readonly messageId: string; readonly attempt: number; readonly error: string; readonly delayMs: number }
export interface DeadEvent { readonly id: string; readonly messageId: string; readonly attempt: number; readonly error: string; readonly response: string | null }

/**
 * Events of a relay, with their payloads. `sent`, `retry` and `dead` name the status a mail goes
 * to, with the words of {@link RelayCounts}; the attempt log and the metric
 * `mail_outbox_handoffs_total{outcome}` name what the MTA answered (accepted, partial, transient,
 * permanent): one `sent` is one `accepted` or `partial` (others refused), one `retry` one
 * `transient` or `partial` (some deferred), one `dead` one `permanent`.
 */
export interface RelayEvents {
  claimed: [count: number];
  /** The MTA took the mail; `rejected` lists recipients it refused for good. */
  sent: [SentEvent];
  /** The mail goes back to pending, to be handed over again after `delayMs`. */
  retry: [RetryEvent];
  /** The mail is given up on (status dead): refused for good, or out of attempts. */
  dead: [DeadEvent];
  rescued: [readonly RescuedMail[]];
  /** Policy `"verify"`: a held uncertain hand-off settled from the MTA's record (sent, or handed over again). */
  verified: [VerifiedEvent];
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
  /**
   * Liveness and readiness, for `/healthz` and `/readyz` (`serveOperations`, http-server.ts):
   * `live` fails when the claim loop has not turned within max(3 x pollIntervalMs, 30 s);
   * `ready` fails, naming the check, unless the relay is started and not stopping, the database
   * answers, the outbox tables have no blocking problem and the MTA is reachable. The table and
   * MTA checks are reused for 5 s, so frequent probes open at most one SMTP connection per 5 s.
   */
  health(): Promise<RelayHealth>;
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

/** Check the options up front, with exact messages, and apply the defaults. */
function relaySettings(options: RelayOptions): RelaySettings {
  if (options === null || typeof options !== "object") throw new OptionsError("Expected `options` to be an object.");
  if (!options.db && !options.databaseUrl) {
    throw new OptionsError("Expected `databaseUrl` (file:./outbox.db or postgresql://...) or `db`.");
  }
  if (options.transport === undefined || options.transport === null || (options.transport as unknown) === "") {
    throw new OptionsError("Expected `transport`: smtp://host:port, sendmail:, sendmail-bs:, or a nodemailer transporter.");
  }
  const id = options.relayId ?? `${os.hostname()}/${process.pid}/${randomBytes(2).toString("hex")}`;
  if (typeof id !== "string" || id.length === 0 || id.length > 200) {
    throw new OptionsError("Expected `relayId` to be a non-empty string of at most 200 characters.");
  }
  const concurrency = positiveInt("concurrency", options.concurrency, 10);
  const batchSize = positiveInt("batchSize", options.batchSize, 100);
  const leaseMs = positiveInt("leaseMs", options.leaseMs, 30_000, 1000);
  const pollIntervalMs = positiveInt("pollIntervalMs", options.pollIntervalMs, 1000, 10);
  const handoffTimeoutMs = positiveInt("handoffTimeoutMs", options.handoffTimeoutMs, 120_000, 100);
  const baseMs = positiveInt("backoff.baseMs", options.backoff?.baseMs, 5000, 0);
  const maxMs = positiveInt("backoff.maxMs", options.backoff?.maxMs, 3_600_000, 0);
  const connectRetries = positiveInt("connectRetries", options.connectRetries, 2, 0);
  const jitter = options.backoff?.jitter ?? 0.2;
  if (typeof jitter !== "number" || !(jitter >= 0 && jitter <= 1)) throw new OptionsError("Expected `backoff.jitter` to be a number from 0 to 1.");
  const policy = options.leaseExpiryPolicy ?? "resend";
  if (policy !== "resend" && policy !== "hold" && policy !== "verify") throw new OptionsError('Expected `leaseExpiryPolicy` to be "resend", "hold" or "verify".');
  const verifyWindowMs = positiveInt("verifyWindowMs", options.verifyWindowMs, DEFAULT_VERIFY_WINDOW_MS, 1000);
  if (options.dsn !== undefined && options.dsn !== false && (options.dsn === null || typeof options.dsn !== "object")) {
    throw new OptionsError("Expected `dsn` to be an object ({ notify, ret, secret, verp }) or false.");
  }
  const dsn = options.dsn === false ? null : parseDsnOptions(options.dsn ?? {});
  // Local submission (Postfix's sendmail, into the maildrop) answers also while Postfix is stopped:
  // "verify" then needs the log to show Postfix at work after the hold (see fate/verify.ts).
  const t = options.transport as unknown;
  const transportName = typeof t === "string" ? t : String((t as { transporter?: { name?: unknown }; name?: unknown }).transporter?.name ?? (t as { name?: unknown }).name ?? "");
  const localSubmission = /sendmail/i.test(transportName);
  // Whether Postfix runs (for "verify" over local submission): its postqueue, next to its sendmail.
  const sendmailPath = /^\s*sendmail(?:-bs)?:(\/[^?\s]*)/i.exec(transportName)?.[1];
  const postqueue = localSubmission ? path.join(sendmailPath ? path.dirname(sendmailPath) : "/usr/sbin", "postqueue") : null;
  return {
    id,
    // Leases name this instance, so a relay restarted under the same relayId still rescues the rows its
    // previous process left behind (a relay never rescues its own rows).
    owner: options.relayId === undefined ? id : `${id}#${randomBytes(3).toString("hex")}`,
    concurrency,
    batchSize,
    leaseMs,
    pollIntervalMs,
    handoffTimeoutMs,
    backoff: { baseMs, maxMs, jitter },
    connectRetries,
    policy,
    verifyWindowMs,
    localSubmission,
    postqueue,
    dsn,
    transportKey: relayTransportKey(options.transport),
  };
}

/**
 * Create a relay. Nothing connects until `start()` or `runOnce()`.
 *
 * @throws OptionsError for an option out of range, with a message naming it.
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

class RelayImpl extends EventEmitter implements Relay, RelayCore {
  readonly id: string;
  readonly stopped: Promise<RelayCounts>;
  readonly settings: RelaySettings;
  readonly log: Logger;
  readonly metrics: RelayMetrics | null;
  readonly opsMetrics: OpsMetrics | null;
  readonly total: RelayCounts = { claimed: 0, sent: 0, retried: 0, dead: 0, released: 0, rescued: 0 };
  readonly loop: ClaimLoop;
  readonly writer: OutcomeWriter;
  readonly leases: Leases;
  readonly outages: Outages;
  store: Store | null = null;

  private readonly opts: RelayOptions;
  private mode: Mode = "idle";
  private ownsStore = false;
  private transporter: Transporter | null = null;
  private ownsTransporter = false;
  private listener: Listener | null = null;
  private readonly stopController = new AbortController();
  private resolveStopped!: (c: RelayCounts) => void;
  private loopDone: Promise<void> = Promise.resolve();
  private timers: NodeJS.Timeout[] = [];
  private readonly probe: RelayProbe;
  /** Gauges and retention (relay-ops.ts), on their own timers while the relay runs. */
  readonly ops: RelayOps;

  constructor(options: RelayOptions) {
    super();
    this.settings = relaySettings(options);
    this.opts = options;
    this.id = this.settings.id;
    this.log = options.logger === false ? silentLogger() : (options.logger ?? defaultLogger()).child({ relay: this.id });
    this.metrics = options.metricsRegistry ? relayMetrics(options.metricsRegistry) : null;
    this.opsMetrics = options.metricsRegistry ? opsMetrics(options.metricsRegistry) : null;
    this.loop = new ClaimLoop(this);
    this.writer = new OutcomeWriter(this);
    this.leases = new Leases(this);
    this.outages = new Outages(this);
    this.ops = new RelayOps(this, opsSettings(options), options.metricsRegistry ?? null);
    this.probe = new RelayProbe({ core: this, loop: this.loop, outages: this.outages, mode: () => this.mode, transporter: () => this.transporter });
    this.stopped = new Promise((resolve) => (this.resolveStopped = resolve));
    if (options.signal) {
      const onAbort = () => void this.stop({ deadlineMs: options.stopDeadlineMs ?? 10_000 }).catch(() => {});
      if (options.signal.aborted) queueMicrotask(onAbort);
      else options.signal.addEventListener("abort", onAbort, { once: true });
    }
  }

  get running(): boolean {
    return this.mode === "running" || this.mode === "once";
  }

  get stopping(): boolean {
    return this.mode === "stopping";
  }

  get stopSignal(): AbortSignal {
    return this.stopController.signal;
  }

  counts(): RelayCounts {
    return { ...this.total };
  }

  health(): Promise<RelayHealth> {
    return this.probe.health();
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
  emitEvent<K extends keyof RelayEvents>(event: K, ...args: RelayEvents[K]): void {
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
      await this.checkTables(this.store);
      return;
    }
    let store: Store;
    if (this.opts.db) {
      store = this.opts.db;
    } else {
      // SQLite: a short busy timeout. better-sqlite3 waits for the write lock synchronously, freezing the
      // whole relay (sockets, lease renewal); SQLITE_BUSY instead goes through the relay's async back-off.
      store = await openDatabase(this.opts.databaseUrl, { applicationName: `mail-outbox relay ${this.id}`.slice(0, 63), busyTimeoutMs: 100, ...(this.opts.listenUrl !== undefined ? { listenUrl: this.opts.listenUrl } : {}) });
      this.ownsStore = true;
    }
    this.store = store;
    await this.checkTables(store);
    const t = this.opts.transport;
    this.transporter = createTransporter(t);
    this.ownsTransporter = this.transporter !== t;
    // A transport that carries several hand-offs per connection (the pipelining SMTP transport)
    // declares how many it can take at once; the defaults grow to keep it busy.
    const capabilities = transportCapabilities(this.transporter);
    const s = this.settings;
    if (this.opts.concurrency === undefined && capabilities.capacity !== undefined && capabilities.capacity > s.concurrency) {
      s.concurrency = capabilities.capacity;
    }
    if (this.opts.batchSize === undefined) s.batchSize = Math.max(s.batchSize, s.concurrency * 5);
    this.loop.useTransport(this.transporter, capabilities.sendRaw ?? null);
  }

  /**
   * Refuse to run on outbox tables the relay cannot work with (missing, or a column missing or of
   * another type): a configuration error, not an outage. A database that does not answer yet is
   * not checked here; the claim loop backs off until it does, and reports missing tables then.
   */
  private async checkTables(store: Store): Promise<void> {
    let problems: SchemaProblem[];
    try {
      problems = await store.inspectSchema();
    } catch (err) {
      const kind = store.classifyError(err);
      if (kind !== "unavailable" && kind !== "busy") throw err;
      this.log.debug({ error: errorText(err) }, "database not reachable at start; the outbox tables are checked when it answers");
      return;
    }
    const blocking = problems.filter((p) => p.blocksRelay);
    if (blocking.length > 0) throw schemaNotReady(store, blocking, false);
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
      this.store = null;
      this.transporter = null;
      this.loop.useTransport(null, null);
      this.ownsStore = false;
      this.ownsTransporter = false;
      throw err;
    }
  }

  private renewEvery(): NodeJS.Timeout {
    return setInterval(() => void this.leases.renew(), Math.max(250, Math.floor(this.settings.leaseMs / 3)));
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
    if (this.opts.listen !== false) void this.listen();
    this.timers.push(this.renewEvery());
    const s = this.settings;
    this.log.info({ database: this.store?.displayUrl, concurrency: s.concurrency, batchSize: s.batchSize, leaseMs: s.leaseMs }, "relay started");
    this.loopDone = this.loop.run("forever");
    this.ops.start();
  }

  async runOnce(): Promise<RelayCounts> {
    if (this.mode !== "idle") throw new RelayStateError(`runOnce() needs an idle relay; this one is ${this.mode}.`);
    this.mode = "once";
    const before = this.counts();
    const renew = this.renewEvery();
    try {
      await this.openChecked();
      await this.loop.run("once");
    } finally {
      clearInterval(renew);
      if (this.mode === "once") {
        this.closeTransportConnections();
        this.mode = "idle";
      }
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

  /**
   * After runOnce(): close the connections of the transport the relay made (its pooled SMTP
   * connections would keep the process alive until the MTA drops them), so a program that ran
   * runOnce() exits without stop(). A fresh transporter, which connects only when it sends,
   * takes its place for another runOnce(). A transporter given in `transport` is the caller's.
   */
  private closeTransportConnections(): void {
    if (!this.ownsTransporter || this.transporter === null) return;
    const used = this.transporter;
    this.transporter = createTransporter(this.opts.transport);
    this.loop.useTransport(this.transporter, transportCapabilities(this.transporter).sendRaw ?? null);
    used.close();
  }

  async stop(options: { readonly deadlineMs?: number } = {}): Promise<RelayCounts> {
    const deadlineMs = options.deadlineMs ?? this.opts.stopDeadlineMs ?? 10_000;
    if (this.mode === "stopped" || this.mode === "stopping") return this.stopped;
    const wasRunning = this.mode === "running";
    this.mode = "stopping";
    this.stopController.abort();
    const opsStopped = this.ops.stop(); // no new turns; the leases are given up before the store closes
    this.loop.kick();
    const deadline = performance.now() + deadlineMs;
    await this.loopDone.catch(() => {});
    // Claimed but never started: give them back at once, without counting the attempt.
    this.loop.releaseQueued();
    if (this.loop.active.size > 0) {
      await Promise.race([this.loop.settled(), sleep(Math.max(0, deadline - performance.now()))]);
    }
    // Write what is known, trying until the deadline (or once more if it has passed).
    do {
      await this.writer.flush();
      if (this.writer.pending === 0) break;
      await sleep(Math.min(500, Math.max(0, deadline - performance.now())));
    } while (performance.now() < deadline);
    if (this.loop.active.size > 0) {
      this.log.warn(
        { inFlight: this.loop.active.size },
        "stop deadline reached with hand-offs still in flight; their leases will expire and they will be marked as uncertain hand-offs",
      );
    }
    if (this.writer.pending > 0) {
      this.log.warn({ unrecorded: this.writer.pending }, "could not record every outcome before the deadline; those mails will be rescued when their leases expire");
    }
    for (const t of this.timers) clearInterval(t);
    this.timers = [];
    this.writer.dispose();
    await opsStopped;
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
    if (listener) await listener.close().catch(() => {});
    if (this.ownsTransporter && this.transporter) this.transporter.close();
    if (this.ownsStore && this.store) await this.store.close().catch(() => {});
  }

  /**
   * Wake the loop on each commit of new mail, where the store has notifications (PostgreSQL
   * LISTEN); a lost connection is listened again after a pause (0.5 s, doubling to 10 s), and
   * polling covers the gap. Where there are none (SQLite), the loop polls.
   */
  private async listen(): Promise<void> {
    let delay = 500;
    while (this.mode === "running") {
      const store = this.store;
      if (!store) return;
      let lost!: () => void;
      const ended = new Promise<void>((resolve) => (lost = resolve));
      const onStop = () => lost();
      this.stopController.signal.addEventListener("abort", onStop, { once: true });
      try {
        const listener = await store.listen(() => this.loop.kick(), () => lost());
        if (listener === null) return;
        if (this.mode !== "running") {
          await listener.close().catch(() => {});
          return;
        }
        this.listener = listener;
        delay = 500;
        this.loop.kick(); // catch up on anything committed while we were not listening
        await ended;
        if (this.listener === listener) {
          this.listener = null;
          await listener.close().catch(() => {});
        }
      } catch {
        // The claim loop logs database outages; polling covers the gap.
      } finally {
        this.stopController.signal.removeEventListener("abort", onStop);
      }
      if (this.mode !== "running") return;
      await sleep(delay, this.stopController.signal);
      delay = Math.min(delay * 2, 10_000);
    }
  }
}
