/**
 * The relay's outage bookkeeping: one log line (and one `warning` event) when the database, the
 * outbox tables or the MTA go away, one when they are back; and the pause of claims while the
 * MTA is unreachable. Database errors are told apart by `store.classifyError` (by the driver's
 * codes), never by their text.
 */
import { performance } from "node:perf_hooks";
import { SchemaNotReadyError } from "./errors.js";
import type { SchemaProblem, Store } from "./store.js";
import { asError, errorText, sleep, type RelayCore } from "./relay-core.js";

/** The error the relay gives for outbox tables it cannot work with: what is wrong and what to run, on one line. */
export function schemaNotReady(store: Store, problems: readonly SchemaProblem[], running: boolean, cause?: unknown): SchemaNotReadyError {
  const missingTables = problems.filter((p) => p.kind === "table").map((p) => p.table);
  const fix = problems.every((p) => p.repairable)
    ? "Create what is missing with `mail-outbox migrate` (or `prisma migrate deploy` when your Prisma migrations hold the outbox models), then check with `mail-outbox doctor`"
    : `To fix: ${[...new Set(problems.map((p) => p.fix))].join("; ")}`;
  const message = running
    ? `The outbox tables in ${store.where} changed while the relay runs (${problems.map((p) => p.message).join("; ")}). ${fix}. The relay retries meanwhile.`
    : `The relay did not start: the outbox tables in ${store.where} are not ready (${problems.map((p) => p.message).join("; ")}). ${fix}.`;
  return new SchemaNotReadyError(message, problems.map((p) => `${p.message} (${p.fix})`), missingTables, cause === undefined ? undefined : { cause });
}

export class Outages {
  private dbOutageSince: number | null = null;
  private transportOutageSince: number | null = null;
  private transportCooldownMs = 0;
  /** `performance.now()` until which claims pause because the MTA is unreachable. */
  claimsPausedUntil = 0;
  private schemaGoneSince: number | null = null;
  /** Set while outbox tables are gone: settles with the report once it is logged. */
  schemaReport: Promise<SchemaNotReadyError> | null = null;

  constructor(private readonly core: RelayCore) {}

  /** A failed statement: tables gone (reported as such) or the database unreachable. */
  databaseError(err: unknown): void {
    if (this.core.store!.classifyError(err) === "schema") void this.schemaGone(err);
    else this.databaseDown(err);
  }

  /**
   * Outbox tables (or columns) disappeared while the relay runs: one error line naming what is
   * missing, found by asking the database for its tables rather than by reading the error text,
   * and a `warning` event with a {@link SchemaNotReadyError}. The relay keeps retrying, so a
   * `mail-outbox migrate` brings it back without a restart.
   */
  schemaGone(err: unknown): Promise<SchemaNotReadyError> {
    if (this.schemaReport) return this.schemaReport;
    this.schemaGoneSince = Date.now();
    const { core } = this;
    this.schemaReport = (async () => {
      let problems: SchemaProblem[] = [];
      try {
        problems = (await core.store!.inspectSchema()).filter((p) => p.blocksRelay);
      } catch {
        // Reported below with the statement's own error.
      }
      const report =
        problems.length > 0
          ? schemaNotReady(core.store!, problems, true, err)
          : new SchemaNotReadyError(
              `An outbox table or column the relay uses is missing (${errorText(err)}). Run \`mail-outbox migrate\`, then check with \`mail-outbox doctor\`. The relay retries meanwhile.`,
              [errorText(err)],
              [],
              { cause: err },
            );
      core.log.error({ missingTables: report.missingTables, problems: report.problems }, report.message);
      core.emitEvent("warning", report);
      return report;
    })();
    return this.schemaReport;
  }

  /** While tables are gone: look again every `pollIntervalMs` (at least 1 s). */
  async waitForSchema(): Promise<void> {
    const { core } = this;
    await sleep(Math.max(1000, core.settings.pollIntervalMs), core.stopSignal);
    if (!core.running) return;
    try {
      const blocking = (await core.store!.inspectSchema()).filter((p) => p.blocksRelay);
      this.databaseUp();
      if (blocking.length === 0) this.schemaBack();
    } catch (err) {
      const kind = core.store!.classifyError(err);
      if (kind === "unavailable" || kind === "busy") this.databaseDown(err);
    }
  }

  /** Forget a schema report (`runOnce()` threw it; the next run looks afresh). */
  forgetSchemaReport(): void {
    this.schemaReport = null;
    this.schemaGoneSince = null;
  }

  private schemaBack(): void {
    if (this.schemaGoneSince === null) return;
    this.core.log.info({ missingForMs: Date.now() - this.schemaGoneSince }, "the outbox tables are back");
    this.forgetSchemaReport();
    if (this.core.writer.pending > 0) void this.core.writer.flush();
  }

  databaseDown(err: unknown): void {
    if (this.dbOutageSince !== null) return;
    this.dbOutageSince = Date.now();
    this.core.log.warn({ error: errorText(err) }, "database unreachable; backing off and retrying");
    this.core.emitEvent("warning", asError(err));
  }

  databaseUp(): void {
    if (this.dbOutageSince === null) return;
    this.core.log.info({ outageMs: Date.now() - this.dbOutageSince }, "database reachable again");
    this.dbOutageSince = null;
    if (this.core.writer.pending > 0) void this.core.writer.flush();
  }

  /** The MTA is unreachable: pause claims (not hand-offs already claimed); the pause doubles once per failed round, up to backoff.maxMs (30 s at most). */
  transportDown(err: unknown, message: string): void {
    const now = performance.now();
    if (now >= this.claimsPausedUntil) {
      const cap = Math.max(100, Math.min(30_000, this.core.settings.backoff.maxMs));
      this.transportCooldownMs = Math.min(Math.max(this.transportCooldownMs * 2, Math.min(1000, cap)), cap);
      this.claimsPausedUntil = now + this.transportCooldownMs;
    }
    if (this.transportOutageSince !== null) return;
    this.transportOutageSince = Date.now();
    this.core.log.warn({ error: message }, "MTA unreachable; mail is rescheduled with backoff and claims pause");
    this.core.emitEvent("warning", err instanceof Error ? err : new Error(message));
  }

  transportUp(): void {
    this.transportCooldownMs = 0;
    this.claimsPausedUntil = 0;
    if (this.transportOutageSince === null) return;
    this.core.log.info({ outageMs: Date.now() - this.transportOutageSince }, "MTA reachable again");
    this.transportOutageSince = null;
  }
}
