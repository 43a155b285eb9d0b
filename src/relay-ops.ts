/**
 * The relay's background duties, each on its own timer so it never holds up a claim, and each done
 * by one relay at a time (the holder of a named lease in `mail_outbox_lock`, `OpsStore.tryLock`):
 *
 * - Gauges: every `gaugeIntervalMs` each relay asks for the lease "gauges"; the holder counts the
 *   outbox (`store.gauges()`) and publishes the numbers as the lease's data; every other relay reads
 *   that one row. Every relay exports the published numbers on its `/metrics`, so any relay scraped
 *   shows the same values, with `mail_outbox_gauges_age_seconds` saying how old they are. While the
 *   database does not answer the last values stay and their age grows.
 * - Retention (opt-in, option `retention`): the holder of the lease "retention" deletes sent,
 *   cancelled and dead mail older than the rules, with their attempt logs, in small batches (each
 *   its own short transaction) with a pause between them and a cap per turn, so claims never wait
 *   long behind it. `mail-outbox purge --retention` applies the same rules once (admin.ts).
 *
 * A failure (the database away, the lock table missing) is logged at warn once until it works
 * again; the runners never throw into the relay.
 */
import { performance } from "node:perf_hooks";
import type { Registry } from "prom-client";
import { parseDuration } from "./duration.js";
import { OptionsError } from "./errors.js";
import { outboxGaugeMetrics } from "./metrics.js";
import { errorText, sleep, type RelayCore } from "./relay-core.js";
import type { OutboxGauges, Store } from "./store.js";
import type { JsonValue } from "./types.js";

/** The lease whose holder counts the gauges; its data is the last {@link GaugeSnapshot}. */
export const GAUGES_LOCK = "gauges";
/** The lease whose holder purges by the retention rules; its data is the last turn's summary. */
export const RETENTION_LOCK = "retention";

/** The statuses retention may purge: the final ones. */
export const RETENTION_STATUSES = ["sent", "cancelled", "dead"] as const;
export type RetentionStatus = (typeof RETENTION_STATUSES)[number];

/** How long mail is kept per final status, in ms (absent: kept for ever). */
export type RetentionRules = Partial<Record<RetentionStatus, number>>;

/** The relay option `retention`. */
export interface RetentionOptions {
  /** Delete sent mail last changed longer ago than this: "30d", or ms. Absent: sent mail is kept. */
  readonly sent?: string | number;
  /** Delete cancelled mail last changed longer ago than this: "30d", or ms. */
  readonly cancelled?: string | number;
  /** Delete dead mail last changed longer ago than this: "90d", or ms. */
  readonly dead?: string | number;
  /** How often the holder of the "retention" lease runs a turn (the first runs at start). @default 300_000 (5 minutes) */
  readonly intervalMs?: number;
  /**
   * Rows per delete transaction, at most: a batch that takes longer than 50 ms halves the next one
   * (down to 10 rows), a quick one doubles it again up to this. @default 500
   */
  readonly batchSize?: number;
  /** Pause between two batches, so claims get the table; at least as long as the batch took. @default 50 */
  readonly pauseMs?: number;
  /** At most this many rows per turn; the rest waits for the next turn. @default 50_000 */
  readonly maxPerTurn?: number;
}

export interface RetentionSettings {
  readonly rules: RetentionRules;
  readonly intervalMs: number;
  readonly batchSize: number;
  readonly pauseMs: number;
  readonly maxPerTurn: number;
}

/** The options of the background duties, validated. */
export interface OpsSettings {
  /** 0: no gauges. */
  readonly gaugeIntervalMs: number;
  /** null: no retention. */
  readonly retention: RetentionSettings | null;
}

export const DEFAULT_GAUGE_INTERVAL_MS = 15_000;
export const DEFAULT_RETENTION_INTERVAL_MS = 300_000;
/**
 * What one purge batch should take at most. On SQLite a batch runs synchronously on the relay's
 * thread and holds the write lock: a hand-off waits for it. Rows differ in size (raw messages,
 * attempt logs), so the batch size follows the time a batch took instead of a fixed count.
 */
export const RETENTION_BATCH_TARGET_MS = 50;
const MIN_RETENTION_BATCH = 10;

function wholeNumber(name: string, value: unknown, fallback: number, min: number, max = Number.MAX_SAFE_INTEGER): number {
  if (value === undefined) return fallback;
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value < min || value > max) {
    throw new OptionsError(`Expected \`${name}\` to be a whole number from ${min} to ${max}, got ${JSON.stringify(value)}.`);
  }
  return value;
}

function durationValue(name: string, value: unknown): number {
  if (typeof value === "string") return parseDuration(value, name);
  if (typeof value === "number" && Number.isSafeInteger(value) && value >= 0) return value;
  throw new OptionsError(`Expected \`${name}\` to be a duration like "30d" or a whole number of milliseconds >= 0, got ${JSON.stringify(value)}.`);
}

/**
 * Check the options `gaugeIntervalMs` and `retention`, with exact messages.
 * @throws OptionsError naming the option.
 */
export function opsSettings(options: { readonly gaugeIntervalMs?: number; readonly retention?: RetentionOptions | false }): OpsSettings {
  const g = options.gaugeIntervalMs;
  if (g !== undefined && (typeof g !== "number" || !Number.isSafeInteger(g) || (g !== 0 && g < 100))) {
    throw new OptionsError(`Expected \`gaugeIntervalMs\` to be 0 (no gauges) or a whole number of milliseconds >= 100, got ${JSON.stringify(g)}.`);
  }
  return { gaugeIntervalMs: g ?? DEFAULT_GAUGE_INTERVAL_MS, retention: retentionSettings(options.retention) };
}

const RETENTION_KEYS = new Set<string>([...RETENTION_STATUSES, "intervalMs", "batchSize", "pauseMs", "maxPerTurn"]);

/** The `retention` option checked; null when absent or false. */
export function retentionSettings(r: RetentionOptions | false | undefined): RetentionSettings | null {
  if (r === undefined || r === false) return null;
  if (r === null || typeof r !== "object") throw new OptionsError('Expected `retention` to be an object such as { sent: "30d", cancelled: "30d", dead: "90d" }, or false.');
  for (const key of Object.keys(r)) {
    if (!RETENTION_KEYS.has(key)) {
      throw new OptionsError(`Unknown \`retention.${key}\`: retention applies to ${RETENTION_STATUSES.join(", ")} (pending, sending and held mail is never purged); the tuning keys are intervalMs, batchSize, pauseMs, maxPerTurn.`);
    }
  }
  const rules: RetentionRules = {};
  for (const status of RETENTION_STATUSES) {
    if (r[status] !== undefined) rules[status] = durationValue(`retention.${status}`, r[status]);
  }
  if (Object.keys(rules).length === 0) {
    throw new OptionsError('Expected `retention` to give an age for at least one of sent, cancelled, dead, e.g. { sent: "30d", dead: "90d" }.');
  }
  return {
    rules,
    intervalMs: wholeNumber("retention.intervalMs", r.intervalMs, DEFAULT_RETENTION_INTERVAL_MS, 100),
    batchSize: wholeNumber("retention.batchSize", r.batchSize, 500, 1, 100_000),
    pauseMs: wholeNumber("retention.pauseMs", r.pauseMs, 50, 0, 60_000),
    maxPerTurn: wholeNumber("retention.maxPerTurn", r.maxPerTurn, 50_000, 1),
  };
}

/**
 * Parse `--retention sent=30d,cancelled=30d,dead=90d` into ages in ms.
 *
 * @example
 * parseRetention("sent=30d,dead=90d"); // { sent: 2_592_000_000, dead: 7_776_000_000 }
 * @throws OptionsError for an unknown status, a repeated one, or a duration that does not parse.
 */
export function parseRetention(text: string, what = "--retention"): RetentionRules {
  const rules: RetentionRules = {};
  const parts = typeof text === "string" ? text.split(",").map((p) => p.trim()).filter((p) => p !== "") : [];
  if (parts.length === 0) throw new OptionsError(`${what} is empty: give status=age pairs, e.g. ${what} sent=30d,cancelled=30d,dead=90d.`);
  for (const part of parts) {
    const eq = part.indexOf("=");
    const status = (eq < 0 ? part : part.slice(0, eq)).trim().toLowerCase();
    if (!(RETENTION_STATUSES as readonly string[]).includes(status)) {
      throw new OptionsError(`${what}: ${JSON.stringify(status)} cannot be purged; give ages for ${RETENTION_STATUSES.join(", ")} (pending, sending and held mail is never purged).`);
    }
    if (eq < 0) throw new OptionsError(`${what}: ${JSON.stringify(part)} has no age; write ${status}=30d.`);
    if (rules[status as RetentionStatus] !== undefined) throw new OptionsError(`${what}: ${status} is given twice.`);
    rules[status as RetentionStatus] = parseDuration(part.slice(eq + 1).trim(), `${what} ${status}`);
  }
  return rules;
}

// ---- gauges ---------------------------------------------------------------------------------

/** What the holder of the "gauges" lease publishes (the lease's data, as JSON). */
export interface GaugeSnapshot {
  /** When counted (ms since the epoch; the database's clock where it has one). */
  readonly at: number;
  readonly byStatus: Readonly<Record<string, number>>;
  readonly due: number;
  /** 0 when nothing is due. */
  readonly oldestDueAgeSeconds: number;
  readonly uncertain: number;
  readonly held: number;
  readonly dead: number;
}

export function snapshotOf(g: OutboxGauges): GaugeSnapshot {
  return {
    at: g.at.getTime(),
    byStatus: Object.fromEntries(g.byStatus.map((c) => [c.status, Number(c.n)])),
    due: g.due,
    oldestDueAgeSeconds: g.oldestDueAgeSeconds ?? 0,
    uncertain: g.uncertain,
    held: g.held,
    dead: g.dead,
  };
}

function snapshotJson(s: GaugeSnapshot): JsonValue {
  return { v: 1, at: new Date(s.at).toISOString(), byStatus: { ...s.byStatus }, due: s.due, oldestDueAgeSeconds: s.oldestDueAgeSeconds, uncertain: s.uncertain, held: s.held, dead: s.dead };
}

/** The snapshot in a lease's data; null when it is not one (none yet, or written by another version). */
export function parseSnapshot(data: unknown): GaugeSnapshot | null {
  if (data === null || typeof data !== "object") return null;
  const d = data as Record<string, unknown>;
  const num = (x: unknown) => (typeof x === "number" && Number.isFinite(x) ? x : null);
  const at = typeof d.at === "string" ? Date.parse(d.at) : NaN;
  const fields = [d.due, d.oldestDueAgeSeconds, d.uncertain, d.held, d.dead].map(num);
  if (d.v !== 1 || !Number.isFinite(at) || fields.some((x) => x === null) || d.byStatus === null || typeof d.byStatus !== "object") return null;
  const byStatus: Record<string, number> = {};
  for (const [k, v] of Object.entries(d.byStatus as Record<string, unknown>)) if (num(v) !== null) byStatus[k] = v as number;
  const [due, oldestDueAgeSeconds, uncertain, held, dead] = fields as number[];
  return { at, byStatus, due: due!, oldestDueAgeSeconds: oldestDueAgeSeconds!, uncertain: uncertain!, held: held!, dead: dead! };
}

/** One duty's failures: a warn line when it starts failing, an info line when it works again. */
class FailureLog {
  private failing = false;
  constructor(
    private readonly core: RelayCore,
    private readonly what: string,
  ) {}
  failed(err: unknown): void {
    if (this.failing) return;
    this.failing = true;
    this.core.log.warn({ error: errorText(err) }, `${this.what} failed; trying again each turn (this is logged once until it works)`);
  }
  worked(): void {
    if (!this.failing) return;
    this.failing = false;
    this.core.log.info(`${this.what} works again`);
  }
}

// ---- the runners -----------------------------------------------------------------------------

/**
 * The background duties of one relay: started after the store is open, stopped before it closes.
 * Each duty runs in its own loop (do a turn, sleep), so a slow count or purge delays only itself.
 */
export class RelayOps {
  private readonly controller = new AbortController();
  private runs: Promise<void>[] = [];
  private readonly held = new Set<string>();
  private readonly gaugeFailures: FailureLog;
  private readonly retentionFailures: FailureLog;
  /** The last snapshot this relay exported (for tests and `status`). */
  snapshot: GaugeSnapshot | null = null;

  constructor(
    private readonly core: RelayCore,
    readonly settings: OpsSettings,
    private readonly registry: Registry | null,
  ) {
    this.gaugeFailures = new FailureLog(core, "refreshing the outbox gauges");
    this.retentionFailures = new FailureLog(core, "retention (purging old mail)");
  }

  /** The leases this relay holds now ("gauges", "retention"). */
  holding(): string[] {
    return [...this.held];
  }

  start(): void {
    const { gaugeIntervalMs, retention } = this.settings;
    if (gaugeIntervalMs > 0) this.runs.push(this.every(gaugeIntervalMs, () => this.gaugeTurn()));
    if (retention) this.runs.push(this.every(retention.intervalMs, () => this.retentionTurn(retention)));
  }

  /** Stop the duties (a turn in progress gets up to `waitMs`), and give up the leases so another relay takes over at once. */
  async stop(waitMs = 2000): Promise<void> {
    this.controller.abort();
    const runs = this.runs;
    this.runs = [];
    await Promise.race([Promise.all(runs), sleep(waitMs)]);
    const store = this.core.store;
    if (store && this.held.size > 0) {
      const names = [...this.held];
      this.held.clear();
      await Promise.race([Promise.all(names.map((n) => store.unlock(n, this.core.settings.owner).catch(() => {}))), sleep(1000)]);
    }
  }

  private async every(intervalMs: number, turn: () => Promise<void>): Promise<void> {
    const signal = this.controller.signal;
    while (!signal.aborted) {
      try {
        await turn();
      } catch (err) {
        // turn() handles its own failures; this is a last guard so nothing escapes into the relay.
        this.core.log.error({ error: errorText(err) }, "a background duty of the relay failed unexpectedly; it runs again next turn");
      }
      await sleep(intervalMs, signal);
    }
  }

  /** Take (or keep) a lease; remembers whether this relay holds it. */
  private async lock(store: Store, name: string, ttlMs: number, data?: JsonValue): Promise<boolean> {
    const ok = await store.tryLock(name, this.core.settings.owner, ttlMs, data);
    if (ok) this.held.add(name);
    else this.held.delete(name);
    return ok;
  }

  private async gaugeTurn(): Promise<void> {
    const store = this.core.store;
    if (!store) return;
    const ttl = 3 * this.settings.gaugeIntervalMs;
    try {
      let snapshot: GaugeSnapshot | null;
      if (await this.lock(store, GAUGES_LOCK, ttl)) {
        snapshot = snapshotOf(await store.gauges());
        await this.lock(store, GAUGES_LOCK, ttl, snapshotJson(snapshot));
      } else {
        const record = await store.readLock(GAUGES_LOCK);
        snapshot = record ? parseSnapshot(record.data) : null;
      }
      this.gaugeFailures.worked();
      if (snapshot) this.show(snapshot);
    } catch (err) {
      this.gaugeFailures.failed(err);
    }
  }

  /** Export a snapshot on this relay's /metrics (several relays sharing a registry: the newest wins). */
  private show(s: GaugeSnapshot): void {
    this.snapshot = s;
    if (!this.registry) return;
    const m = outboxGaugeMetrics(this.registry);
    if (m.publishedAt !== null && m.publishedAt > s.at) return;
    m.publishedAt = s.at;
    for (const [status, n] of Object.entries(s.byStatus)) m.mails.set({ status }, n);
    m.due.set(s.due);
    m.oldestDueAge.set(s.oldestDueAgeSeconds);
    m.uncertain.set(s.uncertain);
    m.held.set(s.held);
    m.dead.set(s.dead);
  }

  private async retentionTurn(r: RetentionSettings): Promise<void> {
    const store = this.core.store;
    if (!store) return;
    const signal = this.controller.signal;
    // The lease outlives the interval, so its holder keeps it from turn to turn; a holder that
    // died is replaced after the ttl. Renewed during a long turn.
    const ttl = Math.max(2 * r.intervalMs, 60_000);
    const purged: Record<string, number> = {};
    let total = 0;
    let more = false;
    const started = performance.now();
    try {
      if (!(await this.lock(store, RETENTION_LOCK, ttl))) {
        this.retentionFailures.worked();
        return;
      }
      let renewed = performance.now();
      let size = r.batchSize;
      rules: for (const status of RETENTION_STATUSES) {
        const age = r.rules[status];
        if (age === undefined) continue;
        const cutoff = new Date(Date.now() - age);
        for (;;) {
          if (signal.aborted) break rules;
          if (total >= r.maxPerTurn) {
            more = true;
            break rules;
          }
          const limit = Math.min(size, r.maxPerTurn - total);
          const t0 = performance.now();
          const rows = await store.purgeBatch([status], cutoff, limit);
          const took = performance.now() - t0;
          if (took > RETENTION_BATCH_TARGET_MS) size = Math.max(MIN_RETENTION_BATCH, Math.min(size, Math.floor(size / 2)));
          else if (took < RETENTION_BATCH_TARGET_MS / 2) size = Math.min(r.batchSize, size * 2);
          const n = rows.reduce((s, x) => s + Number(x.n), 0);
          if (n > 0) {
            purged[status] = (purged[status] ?? 0) + n;
            total += n;
            this.core.metrics?.purged.inc({ status }, n);
          }
          if (n < limit) break;
          // Never more than half the time: claims and outcome writes get the table in between.
          await sleep(Math.max(r.pauseMs, took), signal);
          if (performance.now() - renewed > ttl / 3) {
            if (!(await this.lock(store, RETENTION_LOCK, ttl))) break rules;
            renewed = performance.now();
          }
        }
      }
      this.retentionFailures.worked();
    } catch (err) {
      this.retentionFailures.failed(err);
    }
    if (total > 0) {
      this.core.log.info(
        { purged, ms: Math.round(performance.now() - started), more, rules: ruleText(r.rules) },
        `retention purged ${total} mail${total === 1 ? "" : "s"}${more ? " (more next turn)" : ""}`,
      );
    }
    if (this.held.has(RETENTION_LOCK) && !signal.aborted) {
      await this.lock(store, RETENTION_LOCK, ttl, { at: new Date().toISOString(), purged, more }).catch(() => {});
    }
  }
}

/** "sent=30d,dead=90d" for logs. */
export function ruleText(rules: RetentionRules): string {
  return RETENTION_STATUSES.filter((s) => rules[s] !== undefined)
    .map((s) => `${s}=${formatAge(rules[s]!)}`)
    .join(",");
}

function formatAge(ms: number): string {
  for (const [unit, size] of [["d", 86_400_000], ["h", 3_600_000], ["m", 60_000], ["s", 1000]] as const) {
    if (ms >= size && ms % size === 0) return `${ms / size}${unit}`;
  }
  return `${ms}ms`;
}
