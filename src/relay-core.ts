/**
 * What the parts of a relay share: its settings (the validated options), its logger, metrics,
 * counts and events, the store once open, and the parts themselves. The handle (relay.ts)
 * implements it; the claim loop (relay-loop.ts), the outcome writer (outcome-writer.ts), the
 * leases (leases.ts) and the outage bookkeeping (outages.ts) each hold it and reach the others
 * through it. Internal: nothing here is exported to users.
 */
import type { Logger } from "./logger.js";
import type { OpsMetrics, RelayMetrics } from "./metrics.js";
import type { Backoff } from "./outcome.js";
import type { LeaseExpiryPolicy, Store } from "./store.js";
import type { RelayCounts, RelayEvents } from "./relay.js";
import type { ClaimLoop } from "./relay-loop.js";
import type { OutcomeWriter } from "./outcome-writer.js";
import type { Leases } from "./leases.js";
import type { Outages } from "./outages.js";
import type { DsnOptions } from "./fate/token.js";

/** The relay's options, validated, with their defaults applied. */
export interface RelaySettings {
  /** The relay's name in attempt records and logs. */
  readonly id: string;
  /** The lease owner written into claimed rows: `id`, plus a per-process suffix when `relayId` was given. */
  readonly owner: string;
  /** Grown to the transport's declared capacity at open when not given. */
  concurrency: number;
  /** Grown to 5 x concurrency at open when not given. */
  batchSize: number;
  readonly leaseMs: number;
  readonly pollIntervalMs: number;
  readonly handoffTimeoutMs: number;
  readonly backoff: Backoff;
  readonly connectRetries: number;
  readonly policy: LeaseExpiryPolicy;
  /** Policy "verify": how long a held uncertain hand-off waits for the MTA's record. */
  readonly verifyWindowMs: number;
  /** The transport is Postfix's local submission (`sendmail:`, `sendmail-bs:`), which answers also while Postfix is stopped. */
  readonly localSubmission: boolean;
  /** Local submission: Postfix's `postqueue`, whose `-p` succeeds only while Postfix runs (null: none). */
  readonly postqueue: string | null;
  /** What to ask the MTA about delivery status notifications; null: nothing. */
  readonly dsn: DsnOptions | null;
  /** The key of the MTA the transport talks to (ops.ts `transportKey`): the scope of its pauses and paces. */
  readonly transportKey: string;
}

export interface RelayCore {
  readonly settings: RelaySettings;
  readonly log: Logger;
  readonly metrics: RelayMetrics | null;
  /** Pause and pacing metrics (metrics.ts `opsMetrics`), with the registry. */
  readonly opsMetrics: OpsMetrics | null;
  /** Counts since the relay was created (mutated in place by the parts). */
  readonly total: RelayCounts;
  /** The store, once `start()` or `runOnce()` has opened it. */
  readonly store: Store | null;
  /** Started or in `runOnce()`. */
  readonly running: boolean;
  /** `stop()` was called: start no new hand-offs. */
  readonly stopping: boolean;
  /** Aborted by `stop()`: cuts waits short. */
  readonly stopSignal: AbortSignal;
  /** Emit an event; a listener that throws is logged, never thrown into the relay. */
  emitEvent<K extends keyof RelayEvents>(event: K, ...args: RelayEvents[K]): void;
  readonly loop: ClaimLoop;
  readonly writer: OutcomeWriter;
  readonly leases: Leases;
  readonly outages: Outages;
}

export function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

export function asError(err: unknown): Error {
  return err instanceof Error ? err : new Error(String(err));
}

/** Resolves after `ms`, or at once when `signal` aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
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
