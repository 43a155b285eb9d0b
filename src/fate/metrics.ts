/**
 * Prometheus metrics of delivery fates (what the MTA did after its 250), registered in a registry
 * the caller owns (prom-client). `ingest` and `follow-log` count into the same counters.
 */
import { Counter, type Registry } from "prom-client";

/** What `ingest` did with one report: the `result` label of `mail_outbox_reports_total`. */
export type ReportResult = "recorded" | "duplicate" | "unlinked" | "unreadable" | "forged";

export interface FateMetrics {
  /** Labels `event` (queued, delivered, deferred, bounced, expired) and `source` (log, dsn): events stored (not duplicates). */
  readonly fates: Counter<"event" | "source">;
  /** Label `result`: a {@link ReportResult}, one per report `ingest` read. */
  readonly reports: Counter<"result">;
}

const cache = new WeakMap<Registry, FateMetrics>();

/** The fate metrics in `registry`, created once per registry (an ingest and a follower in one process share them). */
export function fateMetrics(registry: Registry): FateMetrics {
  const existing = cache.get(registry);
  if (existing) return existing;
  const m: FateMetrics = {
    fates: new Counter({
      name: "mail_outbox_fates_total",
      help: "Delivery events recorded after the hand-off, by event (queued, delivered, deferred, bounced, expired) and source (log, dsn)",
      labelNames: ["event", "source"],
      registers: [registry],
    }),
    reports: new Counter({
      name: "mail_outbox_reports_total",
      help: "Delivery status notifications read by ingest, by result (recorded, duplicate, unlinked, unreadable, forged)",
      labelNames: ["result"],
      registers: [registry],
    }),
  };
  cache.set(registry, m);
  return m;
}
