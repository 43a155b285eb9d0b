/**
 * The relay's health, for `/healthz` and `/readyz` (http-server.ts): liveness is the claim loop
 * turning within a bound; readiness is the relay started and not stopping, the database answering
 * a ping, the outbox tables without a problem that blocks the relay, and the MTA reachable.
 * Probes are cheap: the table check and the MTA check (one SMTP connection) are cached for a few
 * seconds and shared by concurrent probes. A pause (`mail-outbox pause`, ops.ts) that this relay
 * honours adds the check `paused`: failing while the relay is paused entirely (scope `all` or its
 * transport), passing but listed for a sender domain's pause; it names each scope, who paused it,
 * since when and why (`pauses`). Without a pause the check is absent.
 */
import { performance } from "node:perf_hooks";
import type { Transporter } from "nodemailer";
import { healthReport, type HealthCheck, type HealthReport } from "./http-server.js";
import { errorText, type RelayCore } from "./relay-core.js";
import { verifyTransport } from "./transport.js";
import type { ClaimLoop } from "./relay-loop.js";
import type { Outages } from "./outages.js";

/** What `relay.health()` answers: `live` for `/healthz`, `ready` for `/readyz`. */
export interface RelayHealth {
  /** Check `loop`: the claim loop turned within `max(3 x pollIntervalMs, 30 s)`. */
  readonly live: HealthReport;
  /** Checks `relay`, `database`, `tables`, `mta`, and `paused` while a pause applies to this relay. */
  readonly ready: HealthReport;
}

/** How long a table check or an MTA check is reused. */
export const HEALTH_CACHE_MS = 5000;
/** Bound on one database ping or MTA check within a probe. */
const PROBE_TIMEOUT_MS = 3000;

/** What the health checks read from the relay. */
export interface HealthSource {
  readonly core: RelayCore;
  readonly loop: ClaimLoop;
  readonly outages: Outages;
  /** "idle" | "running" | "once" | "stopping" | "stopped" */
  mode(): string;
  transporter(): Transporter | null;
}

/** The `paused` check: the pauses listed with scope, who, since when (ISO) and why. */
export interface PausedCheck extends HealthCheck {
  readonly pauses: readonly { readonly scope: string; readonly pausedBy: string; readonly pausedAt: string; readonly reason: string | null }[];
}

interface Cached {
  readonly at: number;
  readonly check: Promise<HealthCheck>;
}

export class RelayProbe {
  private tables: Cached | null = null;
  private mta: Cached | null = null;

  constructor(private readonly src: HealthSource) {}

  /** The liveness bound: max(3 x pollIntervalMs, 30 s). */
  get liveBoundMs(): number {
    return Math.max(3 * this.src.core.settings.pollIntervalMs, 30_000);
  }

  async health(): Promise<RelayHealth> {
    const live = healthReport({ loop: this.loopCheck() });
    const mode = this.src.mode();
    const relay: HealthCheck =
      mode === "running"
        ? { ok: true, detail: "running" }
        : mode === "stopping"
          ? { ok: false, detail: "stopping: no new claims; hand-offs in flight are finishing" }
          : { ok: false, detail: mode === "once" ? "running once (runOnce), not started as a service" : `not running (${mode}); call start()` };
    const store = this.src.core.store;
    if (store === null || mode === "stopped") {
      const detail = mode === "stopped" ? "closed: the relay stopped" : "not open: the relay is not started";
      return { live, ready: healthReport({ relay, database: { ok: false, detail }, tables: { ok: false, detail: "not checked" }, mta: { ok: false, detail: "not checked" } }) };
    }
    const [database, mta] = await Promise.all([this.databaseCheck(), this.cached("mta", () => this.mtaCheck())]);
    const tables = database.ok ? await this.tablesCheck() : { ok: false, detail: "not checked: the database does not answer" };
    const paused = this.pausedCheck();
    return { live, ready: healthReport({ relay, database, tables, mta, ...(paused ? { paused } : {}) }) };
  }

  /** The pauses this relay honours, as the claim loop last read them; null when there are none. */
  private pausedCheck(): PausedCheck | null {
    const { honoured, pausedBy } = this.src.loop.ops;
    if (honoured.length === 0) return null;
    const pauses = honoured.map((p) => ({ scope: p.scope, pausedBy: p.pausedBy, pausedAt: p.pausedAt.toISOString(), reason: p.reason }));
    const senders = honoured.filter((p) => p.scope.startsWith("sender:")).map((p) => p.scope.slice("sender:".length));
    const why = (p: { pausedBy: string; pausedAt: Date; reason: string | null }) => `by ${p.pausedBy} since ${p.pausedAt.toISOString()}${p.reason ? ` (${p.reason})` : ""}`;
    if (pausedBy !== null) {
      return { ok: false, detail: `paused (${pausedBy.scope}) ${why(pausedBy)}: claiming nothing until \`mail-outbox resume\``, pauses };
    }
    return { ok: true, detail: `running; mail from ${senders.join(", ")} is paused (mail-outbox resume --sender <domain>)`, pauses };
  }

  private loopCheck(): HealthCheck {
    const mode = this.src.mode();
    if (mode === "stopped") return { ok: false, detail: "the relay stopped" };
    if (mode === "stopping") return { ok: true, detail: "stopping" };
    if (mode !== "running") return { ok: false, detail: `the claim loop is not running (${mode})` };
    const last = this.src.loop.lastTick;
    if (last === 0) return { ok: true, detail: "starting" };
    const ageMs = Math.round(performance.now() - last);
    return ageMs <= this.liveBoundMs
      ? { ok: true, detail: `the claim loop turned ${ageMs} ms ago` }
      : { ok: false, detail: `the claim loop last turned ${ageMs} ms ago (bound ${this.liveBoundMs} ms): it is stuck` };
  }

  private async databaseCheck(): Promise<HealthCheck> {
    const store = this.src.core.store!;
    const t0 = performance.now();
    try {
      await withTimeout(store.ping(), PROBE_TIMEOUT_MS, `no answer within ${PROBE_TIMEOUT_MS} ms`);
      return { ok: true, detail: `${store.displayUrl} answered in ${Math.round(performance.now() - t0)} ms` };
    } catch (err) {
      return { ok: false, detail: `${store.displayUrl} does not answer: ${errorText(err)}` };
    }
  }

  private async tablesCheck(): Promise<HealthCheck> {
    const report = this.src.outages.schemaReport;
    if (report !== null) {
      const e = await report;
      return { ok: false, detail: e.message };
    }
    return this.cached("tables", async () => {
      const store = this.src.core.store!;
      try {
        const problems = await withTimeout(store.inspectSchema(), PROBE_TIMEOUT_MS, `no answer within ${PROBE_TIMEOUT_MS} ms`);
        const blocking = problems.filter((p) => p.blocksRelay);
        if (blocking.length > 0) return { ok: false, detail: blocking.map((p) => `${p.message} (${p.fix})`).join("; ") };
        if (problems.length > 0) return { ok: true, detail: `usable; needs attention (mail-outbox doctor): ${problems.map((p) => p.message).join("; ")}` };
        return { ok: true, detail: "the outbox tables are as the relay needs them" };
      } catch (err) {
        return { ok: false, detail: `could not be checked: ${errorText(err)}` };
      }
    });
  }

  /** The transport's own check where it has one (SMTP: connect and greet), else what the hand-offs saw. */
  private async mtaCheck(): Promise<HealthCheck> {
    const transporter = this.src.transporter();
    if (transporter === null) return { ok: false, detail: "no transport open" };
    const inner = transporter.transporter as { verify?: unknown };
    if (typeof inner.verify === "function") {
      const r = await verifyTransport(transporter, PROBE_TIMEOUT_MS);
      return r.ok ? { ok: true, detail: `${r.message} (${r.elapsedMs} ms)` } : { ok: false, detail: `MTA unreachable: ${r.message}` };
    }
    const pausedMs = this.src.outages.claimsPausedUntil - performance.now();
    return pausedMs > 0
      ? { ok: false, detail: `MTA unreachable at the last hand-off; claims paused for ${Math.round(pausedMs)} ms more` }
      : { ok: true, detail: "no hand-off failed for an unreachable MTA" };
  }

  /** Reuse a check for {@link HEALTH_CACHE_MS}; concurrent probes share one run. */
  private cached(which: "tables" | "mta", run: () => Promise<HealthCheck>): Promise<HealthCheck> {
    const now = performance.now();
    const entry = this[which];
    if (entry !== null && now - entry.at < HEALTH_CACHE_MS) return entry.check;
    const check = run();
    this[which] = { at: now, check };
    return check;
  }
}

function withTimeout<T>(p: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    p,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(message)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}
