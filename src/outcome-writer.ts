/**
 * The relay's outcome buffer: outcomes are written in batches with group commit (while one write
 * runs, new outcomes gather for the next, so batches grow with load and add no delay when idle).
 * A batch the database refuses is written one by one, so one bad outcome cannot hold back the
 * others. While the database is unavailable or the tables are gone, outcomes stay buffered (their
 * rows stay leased to this relay) and are retried.
 */
import type { Outcome } from "./store.js";
import { asError, errorText, type RelayCore } from "./relay-core.js";

/** Pause before writing buffered outcomes again after the database failed. */
const RETRY_MS = 1000;

export class OutcomeWriter {
  /** Outcomes not yet written. */
  private buffer: Outcome[] = [];
  private flushing: Promise<void> | null = null;
  private retryTimer: NodeJS.Timeout | null = null;

  constructor(private readonly core: RelayCore) {}

  /** Outcomes not yet written. */
  get pending(): number {
    return this.buffer.length;
  }

  /** Whether an outcome for `id` waits to be written. */
  has(id: string): boolean {
    return this.buffer.some((o) => o.id === id);
  }

  /** Buffer an outcome, to be written by the next `flush()`. */
  add(o: Outcome): void {
    this.buffer.push(o);
  }

  /** Buffer an outcome and write it (with whatever else is buffered) as soon as the running write ends. */
  write(o: Outcome): void {
    this.buffer.push(o);
    void this.flush();
  }

  /** Write every buffered outcome; resolves when the buffer is empty or the database failed. */
  flush(): Promise<void> {
    this.flushing ??= this.flushLoop().finally(() => (this.flushing = null));
    return this.flushing;
  }

  /** Stop the retry timer (at stop). */
  dispose(): void {
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = null;
  }

  private keeps(err: unknown): boolean {
    const kind = this.core.store!.classifyError(err);
    return kind === "unavailable" || kind === "busy" || kind === "schema";
  }

  private async flushLoop(): Promise<void> {
    const { core } = this;
    while (this.buffer.length > 0) {
      const batch = this.buffer;
      this.buffer = [];
      try {
        await core.store!.complete(core.settings.owner, core.settings.id, batch);
      } catch (err) {
        if (this.keeps(err)) {
          // Keep them for the next try. The rows stay leased to this relay meanwhile.
          this.buffer = batch.concat(this.buffer);
          core.outages.databaseError(err);
          this.retryTimer ??= setTimeout(() => {
            this.retryTimer = null;
            void this.flush();
          }, RETRY_MS);
          return;
        }
        // The database refused the batch itself: write the outcomes one by one so that one bad
        // outcome cannot hold back the others. One that still fails is dropped from memory: its row
        // keeps its lease, which expires, and the mail is rescued as an uncertain hand-off.
        await this.writeOneByOne(batch);
        continue;
      }
      for (const o of batch) core.leases.drop(o.id);
      core.outages.databaseUp();
    }
  }

  private async writeOneByOne(batch: readonly Outcome[]): Promise<void> {
    const { core } = this;
    for (const o of batch) {
      try {
        await core.store!.complete(core.settings.owner, core.settings.id, [o]);
        core.leases.drop(o.id);
      } catch (err) {
        if (this.keeps(err)) {
          this.buffer.push(o);
          core.outages.databaseError(err);
          continue;
        }
        core.leases.drop(o.id);
        core.log.error({ id: o.id, outcome: o.kind, error: errorText(err) }, "could not record an outcome; the mail will be rescued when its lease expires");
        core.emitEvent("warning", asError(err));
      }
    }
  }
}
