/** Prometheus metrics of the relay, registered in a registry the caller owns (prom-client). */
import { Counter, Histogram, type Registry } from "prom-client";
import type { HandoffOutcome } from "./outcome.js";

export interface RelayMetrics {
  readonly claimed: Counter;
  /** Label `outcome`: a {@link HandoffOutcome}. */
  readonly handoffs: Counter<"outcome">;
  readonly rescued: Counter;
  /** Label `result`: `received` or `absent` (policy "verify"). */
  readonly verified: Counter<"result">;
  readonly duration: Histogram;
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
  };
  cache.set(registry, m);
  return m;
}
