/**
 * The leases this relay holds, and the rescue of others' expired ones.
 *
 * Each claimed row is leased for `leaseMs`; the relay renews every lease it holds every third of
 * that (a hand-off slower than the lease keeps its row), and does not start a hand-off whose
 * lease it could not renew in time (another relay may own it by then). Rows whose relay died keep
 * their lease until it expires; `rescue` then moves them on under the lease-expiry policy, never
 * the rows of this relay. Under the policy "verify", each rescue pass then settles held uncertain
 * hand-offs from the MTA's record (fate/verify.ts).
 */
import { logRescued } from "./outcome-writer.js";
import { performance } from "node:perf_hooks";
import { HeldMailVerifier, postfixRunning } from "./fate/verify.js";
import type { RelayCore } from "./relay-core.js";

/** The longest a relay waits between two looks for expired leases. */
const RESCUE_EVERY_MS = 5000;

export class Leases {
  /** Local deadline (`performance.now()`) of each lease this relay holds. */
  private readonly ends = new Map<string, number>();
  private lastRescue = 0;
  private verifier: HeldMailVerifier | null = null;

  constructor(private readonly core: RelayCore) {}

  /** This relay holds `id` until `end` (`performance.now()` time). */
  hold(id: string, end: number): void {
    this.ends.set(id, end);
  }

  /** The local deadline of the lease on `id`; undefined when this relay does not hold it. */
  end(id: string): number | undefined {
    return this.ends.get(id);
  }

  /** The outcome of `id` is recorded (or it was given up): its lease is no longer this relay's concern. */
  drop(id: string): void {
    this.ends.delete(id);
  }

  /** Whether the relay has looked for expired leases yet. */
  get rescuedOnce(): boolean {
    return this.lastRescue !== 0;
  }

  /**
   * Extend every lease this relay holds. A row it no longer holds (another relay rescued it)
   * is not handed over if it has not been yet.
   */
  async renew(): Promise<void> {
    const { core } = this;
    if (!core.store || this.ends.size === 0) return;
    const ids = [...this.ends.keys()];
    try {
      const kept = new Set(await core.store.renew(core.settings.owner, ids, core.settings.leaseMs));
      core.outages.databaseUp();
      const leaseEnd = performance.now() + core.settings.leaseMs;
      for (const id of ids) {
        if (kept.has(id)) {
          if (this.ends.has(id)) this.ends.set(id, leaseEnd);
        } else if (this.ends.has(id) && !core.writer.has(id)) {
          // Another relay rescued it, or it was recorded meanwhile.
          this.ends.delete(id);
          if (core.loop.unqueue(id)) core.log.warn({ id }, "lost the lease on a claimed mail before handing it over; not sending it");
        }
      }
    } catch (err) {
      core.outages.databaseError(err);
    }
  }

  /** Move on rows whose relay stopped renewing their lease (at most every 5 s, or half a lease). */
  async rescueExpired(): Promise<void> {
    const { core } = this;
    const now = Date.now();
    if (now - this.lastRescue < Math.min(RESCUE_EVERY_MS, core.settings.leaseMs / 2)) return;
    this.lastRescue = now;
    try {
      // Own rows not held here are orphans (a claim committed as its connection dropped, an
      // outcome that could not be recorded): rescued like a dead relay's, also with one relay.
      const rescued = await core.store!.rescue(core.settings.owner, core.settings.policy, 1000, [...this.ends.keys()]);
      core.outages.databaseUp();
      if (rescued.length > 0) {
        core.total.rescued += rescued.length;
        core.metrics?.rescued.inc(rescued.length);
        for (const r of rescued) logRescued(core.log, r);
        core.log.warn(
          { count: rescued.length, policy: core.settings.policy, previousOwners: [...new Set(rescued.map((r) => r.previousOwner))] },
          "rescued mail whose relay stopped renewing its lease (uncertain hand-offs)",
        );
        core.emitEvent("rescued", rescued);
      }
      if (core.settings.policy === "verify") await this.verify();
    } catch (err) {
      core.outages.databaseError(err);
    }
  }

  /** Policy "verify": settle held uncertain hand-offs the MTA's record now explains. */
  private async verify(): Promise<void> {
    const { core } = this;
    this.verifier ??= new HeldMailVerifier({
      store: core.store!,
      actor: core.settings.id,
      windowMs: core.settings.verifyWindowMs,
      requireMtaActivity: core.settings.localSubmission,
      ...(core.settings.postqueue ? { mtaRunning: () => postfixRunning(core.settings.postqueue!) } : {}),
      log: core.log,
      counter: core.metrics?.verified ?? null,
      onVerified: (e) => core.emitEvent("verified", e),
      onWarning: (err) => core.emitEvent("warning", err),
    });
    const settled = await this.verifier.pass();
    // Mail the MTA never had is pending and due now: claim it without waiting for the poll.
    if (settled.some((e) => e.result === "absent")) core.loop.kick();
  }
}
