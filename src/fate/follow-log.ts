/**
 * `followLog()`: read Postfix's log (a file, following its rotation, or a stream such as
 * `journalctl -f` on stdin) and record what became of each recipient of outbox mail in
 * `mail_outbox_delivery`, with the position reached saved in the same transaction
 * (`mail_outbox_log_cursor`), so a restart or a rotation loses and doubles nothing.
 *
 * How a line finds its mail: the cleanup line `QUEUEID: message-id=<X>` links the queue id to the
 * row whose Message-ID is X (kept in the cursor's `state` until qmgr's `(queue active)` line, which
 * is recorded as the `queued` event); later lines of that queue id find the mail through the
 * `queued` event (`store.mailIdsByQueueId`), or through the queue id the relay recorded at the
 * hand-off. Lines about mail of no outbox (Postfix's own bounces, other applications' mail) are
 * passed over and counted (`foreign`).
 *
 * Each event's key is `log:` + sha256 of its line, so reading a line twice records it once.
 * The parts: log-reader.ts reads the file (position, rotation, truncation) or the stream;
 * log-linker.ts turns lines into events; this file is the handle: batches, the transaction with
 * the cursor, outages, events and metrics.
 */
import { EventEmitter } from "node:events";
import { performance } from "node:perf_hooks";
import type { Readable } from "node:stream";
import { Counter, type Registry } from "prom-client";
import { DatabaseUnavailableError, OptionsError, SchemaError } from "../errors.js";
import { defaultLogger, silentLogger, type Logger } from "../logger.js";
import type { DatabaseErrorKind, DeliveryEventRecord, LogCursor, Store } from "../store.js";
import { LineLinker, readState, writeState, type Linked, type PendingLink } from "./log-linker.js";
import { HEARTBEAT_MS, LogFile, LogStream, type Batch, type LineSource } from "./log-reader.js";
import { fateMetrics } from "./metrics.js";
import type { FateEvent } from "./watch.js";

export interface FollowLogOptions {
  /** An open store (`openDatabase()`); the follower does not close it. */
  readonly store: Store;
  /** The log file (Postfix's `maillog_file`, or syslog's mail log). Give this or `stream`. */
  readonly path?: string;
  /** Lines to read instead of a file, e.g. `process.stdin` fed by `journalctl -f -o short-iso`. */
  readonly stream?: Readable;
  /** The cursor's name: one per log followed. @default the path, or "stdin" for a stream */
  readonly name?: string;
  /**
   * Read the file from its first byte instead of from the stored position (events already stored
   * are not stored again). @default false: from the stored position, else from the end of the file
   */
  readonly fromStart?: boolean;
  /** How often to look for new lines (and a rotation) at the end of the file. @default 250 */
  readonly pollIntervalMs?: number;
  /** Lines recorded per transaction at most. @default 500 */
  readonly batchLines?: number;
  /** Stream: how long a line may wait for others to be recorded with. @default 200 */
  readonly batchMs?: number;
  /**
   * Put hard-bounced recipients on the suppression list: until `expiresAt` (null: for good), or
   * for `forMs` from the bounce's recording. @default null (no)
   */
  readonly suppress?: { readonly expiresAt: Date | null } | { readonly forMs: number } | null;
  /** A pino logger, or `false` for none. @default JSON lines on stderr */
  readonly logger?: Logger | false;
  /** A prom-client registry for `mail_outbox_fates_total{event,source="log"}` and `mail_outbox_log_lines_total{outcome}`. */
  readonly metricsRegistry?: Registry;
  /**
   * Read to the end of the log, record, and stop (`stopped` settles): for tests and cron. A file
   * that does not exist then rejects `stopped`, as does a database down for longer than `onceDatabaseWaitMs`.
   * @default false: follow until `stop()`
   */
  readonly once?: boolean;
  /** With `once`: how long to wait for an unreachable database before giving up. @default 30_000 */
  readonly onceDatabaseWaitMs?: number;
  /** Aborting it stops the follower, as `stop()` does. */
  readonly signal?: AbortSignal;
}

/** What a follower did since it started. */
export interface FollowLogCounts {
  /** Lines read. */
  lines: number;
  /** Events stored (not counting those stored before). */
  recorded: number;
  /** Events whose line had been recorded before (a re-read after a restart or `fromStart`). */
  duplicates: number;
  /** Postfix lines about mail that is not in the outbox. */
  foreign: number;
  /** Log files finished after a rotation (or a truncation). */
  rotations: number;
  /** Transactions committed. */
  batches: number;
}

export interface FollowLogEvents {
  /** An event stored now (`queued`, `delivered`, `deferred`, `bounced`, `expired`), once per line. */
  fate: [FateEvent];
  /** Everything the log held when it was last read to its end is recorded. */
  caughtUp: [Date];
  /** Something the follower rides out (database outage, unreadable log, a truncated file): for monitoring. */
  warning: [Error];
  stopped: [FollowLogCounts];
}

/** A running log follower (see {@link followLog}). */
export interface LogFollower {
  readonly name: string;
  /** Stop reading: lines read are recorded first (if the database answers), then `stopped` settles. */
  stop(): Promise<FollowLogCounts>;
  /** Settles when the follower has stopped; rejects when it could not run (file missing in `once` mode, ...). */
  readonly stopped: Promise<FollowLogCounts>;
  counts(): FollowLogCounts;
  /**
   * Liveness, for `/healthz` (`mail-outbox follow-log --metrics-port`): ok while the follower's loop
   * has turned within {@link LogFollower.liveBoundMs} (it turns at least once a second at the end
   * of a quiet log, and at each retry through a database outage), not ok once it has stopped or
   * when a turn hangs (a read or a database call that never returns). `now` is
   * `performance.now()` unless given (tests).
   */
  liveness(now?: number): { readonly ok: boolean; readonly detail: string };
  /** The liveness bound: max(3 x max(pollIntervalMs, 5 s), 30 s). */
  readonly liveBoundMs: number;
  on<K extends keyof FollowLogEvents>(event: K, listener: (...args: FollowLogEvents[K]) => void): this;
  once<K extends keyof FollowLogEvents>(event: K, listener: (...args: FollowLogEvents[K]) => void): this;
  off<K extends keyof FollowLogEvents>(event: K, listener: (...args: FollowLogEvents[K]) => void): this;
  [Symbol.asyncDispose](): Promise<void>;
}

const asyncDispose: typeof Symbol.asyncDispose = Symbol.asyncDispose ?? Symbol.for("nodejs.asyncDispose");

/**
 * Follow Postfix's log and record each outbox recipient's fate. Starts at once; returns the handle.
 *
 * Where it starts: `fromStart` -> the first byte; else the stored cursor (the file it names, even
 * when that was rotated to `<path>.1` or a dated name meanwhile: it is finished first); else the end
 * of the file. Every batch of lines (up to `batchLines`) is one transaction with the new position.
 * A database outage keeps the position and retries with backoff (a `warning` event and one log
 * line per outage); nothing read is skipped.
 *
 * @throws OptionsError for a missing store, neither or both of `path` and `stream`, or an option out of range.
 * @example
 * ```ts
 * const store = await openDatabase(process.env.DATABASE_URL);
 * await using follower = followLog({ store, path: "/var/log/postfix.log" });
 * follower.on("fate", (e) => { if (e.event === "bounced") console.log(e.recipient, e.dsnStatus, e.reply); });
 * await follower.stopped;
 * ```
 */
export function followLog(options: FollowLogOptions): LogFollower {
  return new FollowLogImpl(options);
}

function positiveInt(name: string, value: number | undefined, fallback: number, min = 1): number {
  if (value === undefined) return fallback;
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value < min) {
    throw new OptionsError(`Expected \`${name}\` to be a whole number of at least ${min}, got ${JSON.stringify(value)}.`);
  }
  return value;
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function asError(err: unknown): Error {
  return err instanceof Error ? err : new Error(String(err));
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
  });
}

// ---------------------------------------------------------------------------------------------
// Metrics

interface LogLineMetrics {
  readonly lines: Counter<"outcome">;
}

const lineMetricsCache = new WeakMap<Registry, LogLineMetrics>();

/** `mail_outbox_log_lines_total{outcome}`: lines read by follow-log, by what came of them. */
function logLineMetrics(registry: Registry): LogLineMetrics {
  const existing = lineMetricsCache.get(registry);
  if (existing) return existing;
  const m: LogLineMetrics = {
    lines: new Counter({
      name: "mail_outbox_log_lines_total",
      help: "Lines of the MTA's log read by follow-log: outcome=outbox (about outbox mail), foreign (about other mail), other (not a line it acts on)",
      labelNames: ["outcome"],
      registers: [registry],
    }),
  };
  lineMetricsCache.set(registry, m);
  return m;
}

// ---------------------------------------------------------------------------------------------
// The handle

const TRANSIENT: ReadonlySet<DatabaseErrorKind> = new Set(["unavailable", "busy"]);

class FollowLogImpl extends EventEmitter implements LogFollower {
  readonly name: string;
  readonly stopped: Promise<FollowLogCounts>;
  private readonly total: FollowLogCounts = { lines: 0, recorded: 0, duplicates: 0, foreign: 0, rotations: 0, batches: 0 };
  private readonly store: Store;
  private readonly log: Logger;
  private readonly stopController = new AbortController();
  private readonly linker: LineLinker;
  private readonly settings: {
    readonly pollIntervalMs: number;
    readonly batchLines: number;
    readonly batchMs: number;
    readonly onceDatabaseWaitMs: number;
  };
  private readonly registry: Registry | undefined;
  private pending = new Map<string, PendingLink>();
  private caughtUpAt: Date | null = null;
  private lastWrite = 0;
  /** The last position saved was at the end of the log (with `caught_up_at`). */
  private savedAtEnd = false;
  private outageSince: number | null = null;
  private stopping = false;
  /** performance.now() at the last turn of the loop (0: not yet); -1 once stopped. */
  private lastTurn = 0;

  constructor(private readonly opts: FollowLogOptions) {
    super();
    if (opts === null || typeof opts !== "object") throw new OptionsError("Expected `options` to be an object with `store` and `path` or `stream`.");
    if (opts.store === undefined || opts.store === null || typeof opts.store.recordDeliveryEvents !== "function") {
      throw new OptionsError("Expected `store`: an open store from openDatabase().");
    }
    if ((opts.path === undefined) === (opts.stream === undefined)) throw new OptionsError("followLog() needs exactly one of `path` (a log file) or `stream`.");
    if (opts.path !== undefined && (typeof opts.path !== "string" || opts.path === "")) throw new OptionsError("Expected `path` to be a non-empty string.");
    const suppress = opts.suppress;
    if (suppress != null) {
      if (typeof suppress !== "object") throw new OptionsError("Expected `suppress` to be null, { expiresAt: Date | null } or { forMs: number }.");
      if ("forMs" in suppress) positiveInt("suppress.forMs", suppress.forMs, 1);
      else if (!(suppress.expiresAt === null || suppress.expiresAt instanceof Date)) throw new OptionsError("Expected `suppress.expiresAt` to be a Date or null.");
    }
    this.settings = {
      pollIntervalMs: positiveInt("pollIntervalMs", opts.pollIntervalMs, 250, 10),
      batchLines: positiveInt("batchLines", opts.batchLines, 500),
      batchMs: positiveInt("batchMs", opts.batchMs, 200, 0),
      onceDatabaseWaitMs: positiveInt("onceDatabaseWaitMs", opts.onceDatabaseWaitMs, 30_000, 0),
    };
    this.name = opts.name ?? opts.path ?? "stdin";
    if (typeof this.name !== "string" || this.name === "" || this.name.length > 500) throw new OptionsError("Expected `name` to be a non-empty string of at most 500 characters.");
    this.store = opts.store;
    this.log = (opts.logger === false ? silentLogger() : (opts.logger ?? defaultLogger())).child({ follower: this.name });
    this.registry = opts.metricsRegistry;
    this.linker = new LineLinker(this.store, this.log);
    if (opts.signal) {
      const onAbort = () => void this.stop();
      if (opts.signal.aborted) queueMicrotask(onAbort);
      else opts.signal.addEventListener("abort", onAbort, { once: true });
    }
    const run = this.run();
    // `stopped` rejects only when the follower could not run; a listener-less rejection is not "unhandled" twice.
    this.stopped = run;
    run.catch(() => {});
  }

  counts(): FollowLogCounts {
    return { ...this.total };
  }

  get liveBoundMs(): number {
    // The longest wait between two turns is the poll interval, or the 5 s cap of the database back-off.
    return Math.max(3 * Math.max(this.settings.pollIntervalMs, 5000), 30_000);
  }

  liveness(now: number = performance.now()): { readonly ok: boolean; readonly detail: string } {
    if (this.lastTurn < 0) return { ok: false, detail: "the follower stopped" };
    if (this.lastTurn === 0) return { ok: true, detail: "starting" };
    const ageMs = Math.round(now - this.lastTurn);
    return ageMs <= this.liveBoundMs
      ? { ok: true, detail: `the follower's loop turned ${Math.max(0, ageMs)} ms ago` }
      : { ok: false, detail: `the follower's loop last turned ${ageMs} ms ago (bound ${this.liveBoundMs} ms): it is stuck` };
  }

  private turned(): void {
    if (this.lastTurn >= 0) this.lastTurn = performance.now();
  }

  override on<K extends keyof FollowLogEvents>(event: K, listener: (...args: FollowLogEvents[K]) => void): this {
    return super.on(event, listener as (...args: unknown[]) => void);
  }
  override once<K extends keyof FollowLogEvents>(event: K, listener: (...args: FollowLogEvents[K]) => void): this {
    return super.once(event, listener as (...args: unknown[]) => void);
  }
  override off<K extends keyof FollowLogEvents>(event: K, listener: (...args: FollowLogEvents[K]) => void): this {
    return super.off(event, listener as (...args: unknown[]) => void);
  }
  private emitEvent<K extends keyof FollowLogEvents>(event: K, ...args: FollowLogEvents[K]): void {
    if (event === "warning" && this.listenerCount("warning") === 0) return;
    try {
      super.emit(event, ...args);
    } catch (err) {
      this.log.error({ err, event }, "a follow-log event listener threw; the follower goes on");
    }
  }

  async stop(): Promise<FollowLogCounts> {
    this.stopping = true;
    this.stopController.abort();
    return this.stopped.catch(() => this.counts());
  }

  async [asyncDispose](): Promise<void> {
    await this.stop();
  }

  private get stopSignal(): AbortSignal {
    return this.stopController.signal;
  }

  private async run(): Promise<FollowLogCounts> {
    // Let the caller attach listeners before anything happens.
    await new Promise<void>((resolve) => setImmediate(resolve));
    let source: LineSource | null = null;
    this.turned();
    try {
      const cursor = await this.withDatabase(() => this.store.readLogCursor(this.name));
      if (cursor === undefined) return this.finish();
      const state = readState(cursor?.state ?? null);
      this.pending = state.pending;
      this.caughtUpAt = cursor?.caughtUpAt ?? null;
      source = await this.openSource(cursor, state.tail);
      if (source === null) return this.finish();
      this.log.info({ source: this.opts.path ?? "stream", once: this.opts.once === true }, "following the MTA's log");
      await this.loop(source);
      return this.finish();
    } catch (err) {
      this.log.error({ error: errorText(err) }, "follow-log stopped on an error");
      throw err;
    } finally {
      this.lastTurn = -1;
      await source?.close();
    }
  }

  private async openSource(cursor: LogCursor | null, tail: string | null): Promise<LineSource | null> {
    if (this.opts.stream !== undefined) return new LogStream(this.opts.stream, this.settings.batchMs, this.stopSignal, this.settings.batchLines * 20);
    const file = new LogFile(this.opts.path!, this.opts.once === true, this.log, (e) => this.emitEvent("warning", e), () => (this.total.rotations += 1));
    let warned = false;
    while (!(await file.start(cursor, this.opts.fromStart === true, tail))) {
      if (!warned) {
        const err = new Error(`The log file ${this.opts.path} does not exist yet; waiting for it.`);
        this.log.warn({ file: this.opts.path }, err.message);
        this.emitEvent("warning", err);
        warned = true;
      }
      await sleep(Math.max(1000, this.settings.pollIntervalMs), this.stopSignal);
      this.turned();
      if (this.stopping) return null;
    }
    return file;
  }

  private async loop(source: LineSource): Promise<void> {
    const file = source instanceof LogFile ? source : null;
    // A stream has no position to come back to: what it has handed over is recorded before stopping.
    while (!this.stopping || (source instanceof LogStream && source.queued > 0)) {
      const batch = await source.next(this.settings.batchLines);
      this.turned();
      if (batch === null) return; // the stream ended
      const idle = batch.lines.length === 0;
      // At the end, `caught_up_at` is saved at once when the last batch did not reach it, then once a second.
      const heartbeatDue = batch.eof && batch.rotationPending !== true && (!this.savedAtEnd || Date.now() - this.lastWrite >= HEARTBEAT_MS);
      if (!idle || heartbeatDue) {
        const ok = await this.record(batch, source);
        if (!ok) return; // stopped during an outage: the lines are read again next time
        file?.advance(batch);
      }
      // At the end of a file (nothing new, rotation and truncation looked at): done, or wait for more.
      if (batch.eof && idle && file !== null) {
        if (this.opts.once === true) return;
        await sleep(this.settings.pollIntervalMs, this.stopSignal);
      }
    }
  }

  /** Link, record with the cursor (retrying through outages), then keep the new state and tell listeners. */
  private async record(batch: Batch, source: LineSource): Promise<boolean> {
    const tail = source.tailAfter(batch);
    const atEnd = batch.eof && batch.rotationPending !== true;
    const done = await this.withDatabase(async () => {
      const linked = await this.linker.link(batch.lines, this.pending, batch.readAt);
      const caughtUpAt = atEnd ? batch.readAt : this.caughtUpAt;
      const suppress = this.suppressOption();
      const inserted = await this.store.recordDeliveryEvents(linked.events, {
        cursor: { name: this.name, fileId: batch.fileId, offset: batch.offset, state: writeState(linked.pending, tail), caughtUpAt },
        ...(suppress ? { suppress } : {}),
      });
      return { linked, inserted, caughtUpAt };
    });
    if (done === undefined) return false;
    const { linked, inserted, caughtUpAt } = done;
    this.lastWrite = Date.now();
    this.savedAtEnd = atEnd;
    this.pending = linked.pending;
    this.linker.keep(linked);
    this.caughtUpAt = caughtUpAt;
    this.total.lines += batch.lines.length;
    this.total.batches += 1;
    this.total.recorded += inserted.length;
    this.total.duplicates += linked.events.length - inserted.length;
    this.total.foreign += linked.foreign;
    this.count(batch, linked, inserted);
    if (linked.foreign > 0) this.log.debug({ foreign: linked.foreign }, "passed over log lines about mail of no outbox");
    if (inserted.length > 0 && this.listenerCount("fate") > 0) {
      for (const e of await this.withMessageIds(inserted, linked.messageIds)) this.emitEvent("fate", e);
    }
    if (atEnd && caughtUpAt !== null) this.emitEvent("caughtUp", caughtUpAt);
    return true;
  }

  private suppressOption(): { readonly expiresAt: Date | null } | null {
    const s = this.opts.suppress;
    if (s == null) return null;
    return "forMs" in s ? { expiresAt: new Date(Date.now() + s.forMs) } : { expiresAt: s.expiresAt };
  }

  private count(batch: Batch, linked: Linked, inserted: readonly DeliveryEventRecord[]): void {
    if (this.registry === undefined) return;
    const fates = fateMetrics(this.registry).fates;
    for (const e of inserted) fates.inc({ event: e.event, source: "log" });
    const lines = logLineMetrics(this.registry).lines;
    lines.inc({ outcome: "foreign" }, linked.foreign);
    lines.inc({ outcome: "outbox" }, linked.outbox);
    lines.inc({ outcome: "other" }, Math.max(0, batch.lines.length - linked.foreign - linked.outbox));
  }

  /** The events with their mail's Message-ID (looked up for mail linked through a stored queue id). */
  private async withMessageIds(events: readonly DeliveryEventRecord[], known: ReadonlyMap<string, string>): Promise<FateEvent[]> {
    const ids = new Map(known);
    for (const e of events) {
      if (ids.has(e.emailId)) continue;
      try {
        const found = await this.store.findMail({ id: e.emailId }, false);
        if (found) ids.set(e.emailId, found.mail.messageId);
      } catch {
        // The event is recorded; only its payload lacks the Message-ID.
      }
    }
    return events.map((e) => ({ ...e, messageId: ids.get(e.emailId) ?? "" }));
  }

  /**
   * Run `fn` until it succeeds, backing off through database errors (one warning per outage).
   * Returns undefined when stopped meanwhile. In `once` mode gives up after `onceDatabaseWaitMs`,
   * and at once on an error that waiting does not cure.
   */
  private async withDatabase<T>(fn: () => Promise<T>): Promise<T | undefined> {
    let delay = 100;
    for (;;) {
      try {
        const result = await fn();
        if (this.outageSince !== null) {
          this.log.info({ outageMs: Date.now() - this.outageSince }, "database reachable again; recording resumes");
          this.outageSince = null;
        }
        return result;
      } catch (err) {
        if (!this.databaseError(err)) throw err;
        await sleep(delay, this.stopSignal);
        this.turned();
        if (this.stopping) return undefined;
        delay = Math.min(delay * 2, 5000);
      }
    }
  }

  /**
   * Log a database error (once per outage) and say whether to retry. Following, every error is
   * retried: the position stays where it is, so nothing read is lost, and a `mail-outbox migrate`
   * or a database restart lets it go on by itself. In `once` mode only an outage is waited for,
   * up to `onceDatabaseWaitMs`.
   */
  private databaseError(err: unknown): boolean {
    const kind = this.store.classifyError(err);
    const transient = TRANSIENT.has(kind);
    const first = this.outageSince === null;
    if (first) this.outageSince = Date.now();
    const outageMs = Date.now() - this.outageSince!;
    if (this.opts.once === true) {
      if (kind === "schema") {
        throw new SchemaError(`The outbox tables in ${this.store.where} lack what follow-log writes (${errorText(err)}). Create them with \`mail-outbox migrate\`, then check with \`mail-outbox doctor\`.`, { cause: err });
      }
      if (!transient) return false;
      if (outageMs > this.settings.onceDatabaseWaitMs) {
        throw new DatabaseUnavailableError(
          `The database did not answer for ${Math.round(outageMs / 1000)} s (${errorText(err)}); nothing after the stored log position was recorded. Run follow-log again when it is back: it resumes there.`,
          { cause: err },
        );
      }
    }
    if (first) {
      const hint = kind === "schema" ? " An outbox table is missing: run `mail-outbox migrate`." : "";
      const message = `cannot record in the database (${kind}); keeping the log position and retrying.${hint}`;
      if (transient) this.log.warn({ error: errorText(err), kind }, message);
      else this.log.error({ error: errorText(err), kind }, message);
      this.emitEvent("warning", asError(err));
    }
    return true;
  }

  private finish(): FollowLogCounts {
    const counts = this.counts();
    this.log.info(counts, "follow-log stopped");
    this.emitEvent("stopped", counts);
    return counts;
  }
}
