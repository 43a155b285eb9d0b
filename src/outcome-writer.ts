/**
 * The relay's outcome buffer: outcomes are written in batches with group commit (while one write
 * runs, new outcomes gather for the next, so batches grow with load and add no delay when idle).
 * A batch the database refuses is written one by one, so one bad outcome cannot hold back the
 * others. While the database is unavailable or the tables are gone, outcomes stay buffered (their
 * rows stay leased to this relay) and are retried.
 *
 * Each outcome is logged once, after its batch is written (a line means the database has it):
 * see {@link logOutcome} for the fields.
 */
import type { Logger } from "./logger.js";
import { handoffOutcome } from "./outcome.js";
import { redactSecrets } from "./redact.js";
import type { Outcome, RecipientReply, RescuedMail } from "./store.js";
import { asError, errorText, type RelayCore } from "./relay-core.js";

/** Pause before writing buffered outcomes again after the database failed. */
const RETRY_MS = 1000;

export class OutcomeWriter {
  /** Outcomes not yet written. */
  private buffer: Outcome[] = [];
  /** The Message-ID of each buffered outcome whose caller gave it, for its log line. */
  private readonly messageIds = new Map<string, string>();
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

  /** Buffer an outcome, to be written by the next `flush()`; `messageId` goes into its log line. */
  add(o: Outcome, messageId?: string): void {
    this.buffer.push(o);
    if (messageId !== undefined) this.messageIds.set(o.id, messageId);
  }

  /** Buffer an outcome and write it (with whatever else is buffered) as soon as the running write ends. */
  write(o: Outcome, messageId?: string): void {
    this.add(o, messageId);
    void this.flush();
  }

  /** The outcome is in the database (or given up): log it if written, forget its Message-ID. */
  private done(o: Outcome, written: boolean): void {
    if (written) logOutcome(this.core.log, o, this.messageIds.get(o.id) ?? null);
    this.messageIds.delete(o.id);
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
      for (const o of batch) {
        core.leases.drop(o.id);
        this.done(o, true);
      }
      core.outages.databaseUp();
    }
  }

  private async writeOneByOne(batch: readonly Outcome[]): Promise<void> {
    const { core } = this;
    for (const o of batch) {
      try {
        await core.store!.complete(core.settings.owner, core.settings.id, [o]);
        core.leases.drop(o.id);
        this.done(o, true);
      } catch (err) {
        if (this.keeps(err)) {
          this.buffer.push(o);
          core.outages.databaseError(err);
          continue;
        }
        core.leases.drop(o.id);
        this.done(o, false);
        core.log.error({ id: o.id, kind: o.kind, error: errorText(err) }, "could not record an outcome; the mail will be rescued when its lease expires");
        core.emitEvent("warning", asError(err));
      }
    }
  }
}

/** What became of the mail, as the `outcome` field of its log line names it. */
export type LoggedOutcome = "sent" | "partial" | "retry" | "dead" | "released" | "rescued";

/** A recipient with the MTA's reply, as log lines carry it (reply text with secrets redacted). */
interface LoggedRecipient {
  readonly recipient: string;
  readonly response: string | null;
}

function recipients(list: readonly RecipientReply[]): LoggedRecipient[] {
  return list.map((r) => ({ recipient: r.recipient, response: r.response === null ? null : redactSecrets(r.response) }));
}

function text(value: string | null): string | null {
  return value === null ? null : redactSecrets(value);
}

/**
 * The one log line of a recorded outcome. Fields (absent when they do not apply):
 *
 * | field | meaning |
 * | --- | --- |
 * | `outcome` | `sent`, `partial` (some recipients refused or deferred), `retry`, `dead`, `released`, `rescued` ({@link logRescued}) |
 * | `status` | what the mail is now: `sent`, `pending` (tried again after `delayMs`), `dead` |
 * | `handoff` | the hand-off outcome of the attempt log and the metric: `accepted`, `partial`, `transient`, `permanent` |
 * | `id`, `messageId` | the outbox row and the mail's Message-ID |
 * | `attempt`, `durationMs` | the attempt's number (from 1) and how long the hand-off took |
 * | `queueId`, `response` | the MTA's queue id and final reply |
 * | `accepted` | how many recipients the MTA took (their addresses are not logged) |
 * | `refused`, `deferred` | recipients refused for good (5xx) or for now (4xx): `{ recipient, response }` |
 * | `delayMs`, `retryAt` | the wait before the next attempt, and when that is (ISO 8601) |
 * | `error`, `errorCode`, `responseCode` | why the hand-off failed |
 *
 * `dead` is logged at warn, the others at info. Replies and errors pass through `redactSecrets`.
 */
export function logOutcome(log: Logger, o: Outcome, messageId: string | null): void {
  // Hot path: one call per mail. Build no line (redaction, spreads) that the level would drop.
  if (!log.isLevelEnabled(o.kind === "permanent" ? "warn" : "info")) return;
  if (o.kind === "release") {
    log.info({ outcome: "released", status: "pending", id: o.id, messageId }, "mail released unsent; it is claimed again");
    return;
  }
  const base = { id: o.id, messageId, attempt: o.attempt, durationMs: Math.round(o.durationMs), handoff: handoffOutcome(o) };
  switch (o.kind) {
    case "accepted": {
      const line = { ...base, status: "sent", queueId: o.queueId, response: redactSecrets(o.response), accepted: o.accepted.length };
      if (o.rejected.length === 0) log.info({ outcome: "sent", ...line }, "mail sent");
      else log.info({ outcome: "partial", ...line, refused: recipients(o.rejected) }, `mail sent; ${o.rejected.length} recipient(s) refused`);
      return;
    }
    case "partial":
      log.info(
        {
          outcome: "partial",
          ...base,
          status: "pending",
          queueId: o.queueId,
          response: redactSecrets(o.response),
          accepted: o.accepted.length,
          refused: recipients(o.rejected),
          deferred: recipients(o.deferred),
          delayMs: o.delayMs,
          retryAt: new Date(Date.now() + o.delayMs).toISOString(),
        },
        `mail sent to some recipients; ${o.deferred.length} deferred, retried in ${o.delayMs} ms`,
      );
      return;
    case "transient":
      log.info(
        {
          outcome: "retry",
          ...base,
          status: "pending",
          delayMs: o.delayMs,
          retryAt: new Date(Date.now() + o.delayMs).toISOString(),
          error: redactSecrets(o.error),
          errorCode: o.errorCode,
          response: text(o.response),
          responseCode: o.responseCode,
        },
        `mail deferred; retried in ${o.delayMs} ms`,
      );
      return;
    case "permanent":
      log.warn(
        {
          outcome: "dead",
          ...base,
          status: "dead",
          error: redactSecrets(o.error),
          errorCode: o.errorCode,
          response: text(o.response),
          responseCode: o.responseCode,
          ...(o.rejected && o.rejected.length > 0 ? { refused: recipients(o.rejected) } : {}),
        },
        "mail is dead",
      );
      return;
  }
}

/**
 * The one log line of a mail moved on from an expired lease (its relay died mid hand-off: an
 * uncertain hand-off), as `Store.rescue` returned it: `outcome: "rescued"`, `status` (`pending`,
 * `held` or `dead`), `id`, `messageId`, `previousOwner`. At warn: the mail may be sent twice.
 */
export function logRescued(log: Logger, r: RescuedMail): void {
  log.warn({ outcome: "rescued", status: r.status, id: r.id, messageId: r.messageId, previousOwner: r.previousOwner }, "mail rescued from an expired lease (uncertain hand-off)");
}
