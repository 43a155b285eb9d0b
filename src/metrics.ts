/** Prometheus metrics of the relay, registered in a registry the caller owns (prom-client). */
import { Counter, Gauge, Histogram, type Registry } from "prom-client";
import type { HandoffOutcome } from "./outcome.js";

export interface RelayMetrics {
  readonly claimed: Counter;
  /** Label `outcome`: a {@link HandoffOutcome}. */
  readonly handoffs: Counter<"outcome">;
  readonly rescued: Counter;
  /** Label `result`: `received` or `absent` (policy "verify"). */
  readonly verified: Counter<"result">;
  readonly duration: Histogram;
  /** Label `status`: rows deleted by the retention runner (relay-ops.ts). */
  readonly purged: Counter<"status">;
}

const cache = new WeakMap<Registry, RelayMetrics>();

/** The relay's metrics in `registry`, created once per registry (several relays in one process share them). */
export function relayMetrics(registry: Registry): RelayMetrics {
  const existing = cache.get(registry);
  if (existing) return existing;
  const m: RelayMetrics = {
    claimed: new Counter({ name: "mail_outbox_claimed_total", help: "Outbox rows claimed by the relay", registers: [registry] }),
    // The label values are the hand-off outcomes of the attempt log (mail_outbox_attempt.outcome): see outcome.ts.
    handoffs: new Counter({
      name: "mail_outbox_handoffs_total",
      help: "Hand-offs to the MTA by outcome, as the attempt log records them (accepted, partial, transient, permanent)",
      labelNames: ["outcome"],
      registers: [registry],
    }),
    rescued: new Counter({ name: "mail_outbox_rescued_total", help: "Rows rescued after their relay's lease expired (uncertain hand-offs)", registers: [registry] }),
    verified: new Counter({
      name: "mail_outbox_verified_total",
      help: "Uncertain hand-offs settled from the MTA's log under leaseExpiryPolicy verify, by result (received: marked sent; absent: handed over again)",
      labelNames: ["result"],
      registers: [registry],
    }),
    duration: new Histogram({
      name: "mail_outbox_handoff_seconds",
      help: "Time from the start of a hand-off to the MTA's final reply",
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers: [registry],
    }),
    purged: new Counter({
      name: "mail_outbox_purged_total",
      help: "Rows deleted by the relay's retention runner (option retention), with their attempt logs, by status",
      labelNames: ["status"],
      registers: [registry],
    }),
  };
  cache.set(registry, m);
  return m;
}

/**
 * The outbox gauges (relay-ops.ts): counted by the one relay holding the "gauges" lock, published
 * in that lock's row, and exported by every relay that reads it, so any relay scraped shows the
 * same numbers.
 */
export interface OutboxGaugeMetrics {
  readonly mails: Gauge<"status">;
  readonly due: Gauge;
  readonly oldestDueAge: Gauge;
  readonly uncertain: Gauge;
  readonly held: Gauge;
  readonly dead: Gauge;
  /** When the newest snapshot shown was counted (ms since the epoch); `mail_outbox_gauges_age_seconds` is measured from it at each scrape. */
  publishedAt: number | null;
}

const gaugeCache = new WeakMap<Registry, OutboxGaugeMetrics>();

/**
 * The outbox gauges in `registry`, created (and registered) on the first call: a relay calls it
 * when it has its first snapshot, so no gauge reads 0 before anything was counted.
 */
export function outboxGaugeMetrics(registry: Registry): OutboxGaugeMetrics {
  const existing = gaugeCache.get(registry);
  if (existing) return existing;
  const registers = [registry];
  const m: OutboxGaugeMetrics = {
    mails: new Gauge({ name: "mail_outbox_mails", help: "Outbox rows per status (pending, sending, sent, held, dead, cancelled)", labelNames: ["status"], registers }),
    due: new Gauge({ name: "mail_outbox_due", help: "Pending rows whose next attempt is due", registers }),
    oldestDueAge: new Gauge({ name: "mail_outbox_oldest_due_age_seconds", help: "How long the longest-due pending row has been due (0 when none is)", registers }),
    uncertain: new Gauge({ name: "mail_outbox_uncertain", help: "Rows with an uncertain hand-off (their relay died mid hand-off) that are not sent or cancelled", registers }),
    held: new Gauge({ name: "mail_outbox_held", help: "Rows held for an operator", registers }),
    dead: new Gauge({ name: "mail_outbox_dead", help: "Rows given up on (status dead)", registers }),
    publishedAt: null,
  };
  new Gauge({
    name: "mail_outbox_gauges_age_seconds",
    help: "Age of the outbox gauges: seconds since the relay holding the gauges lock counted them (grows while the database is unreachable)",
    registers,
    collect() {
      if (m.publishedAt !== null) this.set(Math.max(0, (Date.now() - m.publishedAt) / 1000));
    },
  });
  gaugeCache.set(registry, m);
  return m;
}

/** Pauses and pacing (ops.ts, relay-loop.ts). */
export interface OpsMetrics {
  /** Label `scope`: 1 per pause this relay honours (`all`, its transport's, each sender domain's). */
  readonly paused: Gauge<"scope">;
  /** Seconds the claim loop waited for tokens of a shared rate limit (`mail-outbox pace`). */
  readonly pacedSeconds: Counter;
  /** Claim turns the shared rate limit cut short (fewer mails granted than the relay had room for). */
  readonly pacedTurns: Counter;
}

const opsCache = new WeakMap<Registry, OpsMetrics>();

/** The pause and pacing metrics in `registry`, created once per registry. */
export function opsMetrics(registry: Registry): OpsMetrics {
  const existing = opsCache.get(registry);
  if (existing) return existing;
  const registers = [registry];
  const m: OpsMetrics = {
    paused: new Gauge({ name: "mail_outbox_paused", help: "1 per pause this relay honours (mail-outbox pause), by scope: all, transport:<key>, sender:<domain>", labelNames: ["scope"], registers }),
    pacedSeconds: new Counter({ name: "mail_outbox_paced_seconds_total", help: "Seconds the claim loop waited for tokens of a shared hand-off rate limit (mail-outbox pace)", registers }),
    pacedTurns: new Counter({ name: "mail_outbox_paced_turns_total", help: "Claim turns the shared hand-off rate limit cut short (fewer mails granted than there was room for)", registers }),
  };
  opsCache.set(registry, m);
  return m;
}
