/**
 * The relay's claim loop: claim due rows in batches when the local queue runs low, hand each one
 * to the MTA (up to `concurrency` at once), let the pure decision (outcome.ts) say what to write,
 * and hand that to the outcome writer. Waits for a wake-up (a NOTIFY, a freed slot, stop) or the
 * poll interval between claims; backs off while the database or the MTA is away.
 *
 * Hot path (thousands of mails a second): per mail, one claim slot, one hand-off, one decision,
 * one buffered outcome; no await or allocation beyond those.
 */
import { performance } from "node:perf_hooks";
import pRetry from "p-retry";
import type { Transporter } from "nodemailer";
import { DatabaseUnavailableError, HandoffTimeoutError } from "./errors.js";
import { isConnectionRefused, isMtaUnreachable, type SentMessageInfoLike } from "./classify.js";
import { decideFailed, decideHandedOff, handoffOutcome, type HandoffDecision } from "./outcome.js";
import { rawSendMailOptions, type RawSend } from "./transport.js";
import { handoffEnvelope } from "./fate/token.js";
import type { ClaimedMail } from "./store.js";
import { newId } from "./ids.js";
import { errorText, sleep, type RelayCore } from "./relay-core.js";
import { startHandoffSpan } from "./tracing.js";
import { relayOpsView, type RelayOpsView } from "./ops.js";

/** First pause after a failed claim; doubles per failure. */
const DB_BACKOFF_START_MS = 250;
/** The claim back-off cap while SQLite is busy (SQLITE_BUSY/SQLITE_LOCKED): lock contention passes quickly. */
const BUSY_BACKOFF_CAP_MS = 500;
/** `runOnce()` gives up after this many database failures in a row (about 8 s). */
const ONCE_GIVE_UP_AFTER = 5;
/**
 * Adaptive polling (stores without wake-ups whose empty claim is cheap: `adaptivePolling`): the
 * wait after a claim that found mail. It doubles with each wait that passes without a wake-up,
 * up to `pollIntervalMs`, so mail arriving in a burst is claimed within this, and an idle relay
 * looks once per `pollIntervalMs`.
 */
const QUICK_POLL_MS = 10;
/** The pauses and rates are read at most this often (and at least once per poll interval). */
const OPS_READ_MAX_MS = 1000;
const NO_OPS: RelayOpsView = { pausedBy: null, honoured: [], excludeSenderDomains: [], buckets: [] };

export class ClaimLoop {
  /** Claimed, not yet started. */
  private queue: ClaimedMail[] = [];
  /** Being handed over now. */
  readonly active = new Map<string, Promise<void>>();
  private wake: (() => void) | null = null;
  private wakePending = false;
  /** Adaptive polling: the next wait between claims (see QUICK_POLL_MS). */
  private pollWaitMs = QUICK_POLL_MS;
  private transporter: Transporter | null = null;
  private sendRaw: RawSend | null = null;
  /** `performance.now()` at the loop's last turn (0: never turned): the relay's liveness. */
  lastTick = 0;
  /** The pauses and rate limits that apply to this relay, as last read (ops.ts). */
  ops: RelayOpsView = NO_OPS;
  /** `performance.now()` of the last read of the pauses and rates. */
  private opsReadAt = -Infinity;
  /** The pause and rate tables could not be read (warned once until they can). */
  private opsUnreadable = false;

  constructor(private readonly core: RelayCore) {}

  /** The transporter to hand mail to, and its raw sender when it declares one. */
  useTransport(transporter: Transporter | null, sendRaw: RawSend | null): void {
    this.transporter = transporter;
    this.sendRaw = sendRaw;
  }

  /** Wake the loop now (a NOTIFY arrived, a slot freed up, or we are stopping). */
  kick(): void {
    if (this.wake) {
      const w = this.wake;
      this.wake = null;
      w();
    } else {
      this.wakePending = true;
    }
  }

  /** Wait `ms` or until kicked; whether it was kicked. */
  private waitForKick(ms: number): Promise<boolean> {
    if (this.wakePending) {
      this.wakePending = false;
      return Promise.resolve(true);
    }
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.wake = null;
        resolve(false);
      }, ms);
      this.wake = () => {
        clearTimeout(timer);
        resolve(true);
      };
    });
  }

  /**
   * The wait between claims when nothing is known to be due. With `adaptivePolling` (MySQL: no
   * wake-ups): QUICK_POLL_MS after a claim that found mail, doubled after each wait nobody cut
   * short, up to `pollIntervalMs`. Otherwise `pollIntervalMs` (wake-ups come by NOTIFY, or SQLite
   * polls at its pace).
   */
  private async waitForPoll(claimed: number): Promise<void> {
    const { settings, store } = this.core;
    if (!store?.adaptivePolling) {
      await this.waitForKick(settings.pollIntervalMs);
      return;
    }
    if (claimed > 0) this.pollWaitMs = Math.min(QUICK_POLL_MS, settings.pollIntervalMs);
    const kicked = await this.waitForKick(this.pollWaitMs);
    if (!kicked) this.pollWaitMs = Math.min(this.pollWaitMs * 2, settings.pollIntervalMs);
  }

  /** Settles when every hand-off in flight has. */
  settled(): Promise<unknown> {
    return Promise.allSettled([...this.active.values()]);
  }

  /** Give claimed mail not yet started back, without counting the attempt. */
  releaseQueued(): void {
    const { core } = this;
    for (const m of this.queue) {
      core.writer.add({ kind: "release", id: m.id }, m.messageId);
      core.total.released++;
    }
    this.queue = [];
  }

  /** Take `id` out of the queue (its lease was lost); whether it was there. */
  unqueue(id: string): boolean {
    const before = this.queue.length;
    this.queue = this.queue.filter((m) => m.id !== id);
    return this.queue.length !== before;
  }

  /** Claim and hand over until stopped (`forever`), or until nothing is due (`once`). */
  async run(kind: "forever" | "once"): Promise<void> {
    const { core } = this;
    const { settings, outages, leases, writer } = core;
    const capacity = Math.max(settings.batchSize, settings.concurrency * 2);
    let dbBackoff = DB_BACKOFF_START_MS;
    let failures = 0;
    let flushFailures = 0;
    this.opsReadAt = -Infinity; // each run starts from the pauses and rates as they are now
    const giveUp = async (err: unknown) => {
      await this.settled();
      this.releaseQueued();
      await writer.flush();
      throw new DatabaseUnavailableError(`runOnce() could not reach the database after ${failures} tries: ${errorText(err)}`, { cause: err });
    };
    while (core.running) {
      this.lastTick = performance.now();
      if (outages.schemaReport !== null) {
        // Tables gone: claim nothing (mail handed over now could not be recorded) until they are back.
        if (kind === "once") {
          const report = await outages.schemaReport;
          await this.settled();
          this.releaseQueued();
          await writer.flush();
          outages.forgetSchemaReport();
          throw report;
        }
        await outages.waitForSchema();
        continue;
      }
      if (kind === "forever" || !leases.rescuedOnce) await leases.rescueExpired();

      const now = performance.now();
      if (now < outages.claimsPausedUntil && kind === "forever") {
        // In turns of at most 10 s, so the loop shows it is alive (liveness) through a long pause.
        await this.waitForKick(Math.min(outages.claimsPausedUntil - now, 10_000));
        continue;
      }
      // Pauses and rates: one small read per poll turn (ops.ts). Paused entirely: claim nothing, give
      // back what was claimed and not started; the loop goes on turning (liveness).
      await this.readOps(Math.min(settings.pollIntervalMs, OPS_READ_MAX_MS));
      const ops = this.ops;
      const paused = ops.pausedBy !== null;
      if (paused || ops.excludeSenderDomains.length > 0) this.releasePaused(ops);
      const room = capacity - this.queue.length - this.active.size;
      let claimed = 0;
      let limit = 0;
      let pacedWaitMs = 0;
      // Claim when the local queue runs low, not one row at a time.
      if (!paused && room > 0 && this.queue.length < settings.concurrency) {
        limit = Math.min(settings.batchSize, room);
        const buckets = ops.buckets;
        let taken = 0;
        try {
          if (buckets.length > 0) {
            // A shared rate limit: take tokens first, claim at most what was granted, give back the rest.
            const grant = await core.store!.takeTokens(buckets, limit);
            taken = grant.granted;
            if (grant.granted < limit) core.opsMetrics?.pacedTurns.inc();
            if (grant.granted === 0) pacedWaitMs = Math.max(1, grant.waitMs);
            limit = grant.granted;
          }
          const rows = limit > 0 ? await core.store!.claim(settings.owner, limit, settings.leaseMs, ops.excludeSenderDomains.length > 0 ? { excludeSenderDomains: ops.excludeSenderDomains } : undefined) : [];
          if (taken > rows.length) {
            const unused = taken - rows.length;
            taken = 0;
            await core.store!.returnTokens(buckets, unused);
          }
          outages.databaseUp();
          dbBackoff = DB_BACKOFF_START_MS;
          failures = 0;
          claimed = rows.length;
          if (claimed > 0) {
            const leaseEnd = performance.now() + settings.leaseMs;
            for (const r of rows) leases.hold(r.id, leaseEnd);
            this.queue.push(...rows);
            core.total.claimed += claimed;
            core.metrics?.claimed.inc(claimed);
            core.emitEvent("claimed", claimed);
            this.pump();
          }
        } catch (err) {
          if (taken > 0) void core.store!.returnTokens(buckets, taken).catch(() => {});
          const what = core.store!.classifyError(err);
          if (what === "schema") {
            await outages.schemaGone(err);
            continue;
          }
          outages.databaseDown(err);
          if (kind === "once" && ++failures >= ONCE_GIVE_UP_AFTER) await giveUp(err);
          await sleep(dbBackoff, core.stopSignal);
          // Lock contention on SQLite passes quickly; a lost server may take a while.
          dbBackoff = Math.min(dbBackoff * 2, what === "busy" ? BUSY_BACKOFF_CAP_MS : 10_000);
          continue;
        }
      }
      if (pacedWaitMs > 0) {
        // Out of tokens: wait until the bucket has one again, or a poll interval, or a kick.
        const ms = Math.min(pacedWaitMs, settings.pollIntervalMs);
        const t0 = performance.now();
        await this.waitForKick(ms);
        core.opsMetrics?.pacedSeconds.inc((performance.now() - t0) / 1000);
        continue;
      }
      if (kind === "once" && claimed === 0 && this.queue.length === 0 && this.active.size === 0) {
        await writer.flush();
        if (writer.pending === 0) return;
        if (++flushFailures >= ONCE_GIVE_UP_AFTER) await giveUp(new Error("the outcomes of this run could not be recorded"));
        await sleep(dbBackoff);
        dbBackoff = Math.min(dbBackoff * 2, 10_000);
        continue;
      }
      if (claimed > 0 && claimed === limit) continue; // more may be due
      if (kind === "once") await this.waitForKick(50);
      else await this.waitForPoll(claimed);
    }
  }

  /**
   * Read the pauses and rates when the last read is older than `maxAgeMs`; log a pause seen to
   * begin or end, and keep `mail_outbox_paused{scope}`. A failed read keeps the last state (the
   * claim then meets the outage itself); tables missing (an outbox not migrated yet) mean no
   * pauses and no pacing, with one warning.
   */
  private async readOps(maxAgeMs: number): Promise<void> {
    const now = performance.now();
    if (now - this.opsReadAt < maxAgeMs) return;
    const { core } = this;
    this.opsReadAt = now;
    let next: RelayOpsView;
    try {
      const [pauses, rates] = await Promise.all([core.store!.listPauses(), core.store!.listRates()]);
      next = relayOpsView(core.settings.transportKey, pauses, rates);
      if (this.opsUnreadable) core.log.info("the pause and rate tables can be read again");
      this.opsUnreadable = false;
    } catch (err) {
      if (core.store!.classifyError(err) !== "schema") return;
      if (!this.opsUnreadable) {
        core.log.warn({ error: errorText(err) }, "the pause and rate tables are missing (run `mail-outbox migrate`); the relay runs without pauses and pacing");
      }
      this.opsUnreadable = true;
      next = NO_OPS;
    }
    const before = new Map(this.ops.honoured.map((p) => [p.scope, p]));
    const after = new Map(next.honoured.map((p) => [p.scope, p]));
    for (const [scope, p] of after) {
      if (before.has(scope)) continue;
      core.log.info(
        { scope, pausedBy: p.pausedBy, pausedAt: p.pausedAt.toISOString(), reason: p.reason },
        scope.startsWith("sender:") ? `paused for sender domain ${scope.slice(7)}: its mail is not claimed until resumed` : `paused (${scope}): claiming nothing until resumed`,
      );
      core.opsMetrics?.paused.set({ scope }, 1);
    }
    for (const scope of before.keys()) {
      if (after.has(scope)) continue;
      core.log.info({ scope }, `pause lifted (${scope}): claiming again`);
      core.opsMetrics?.paused.remove({ scope });
    }
    this.ops = next;
  }

  /** Give back claimed mail not yet started that a pause now covers (not counted as an attempt). */
  private releasePaused(ops: RelayOpsView): void {
    if (this.queue.length === 0) return;
    if (ops.pausedBy !== null) {
      this.releaseQueued();
      void this.core.writer.flush();
      return;
    }
    const domains = new Set(ops.excludeSenderDomains);
    const keep: ClaimedMail[] = [];
    const { core } = this;
    for (const m of this.queue) {
      const domain = m.envelopeFrom.slice(m.envelopeFrom.lastIndexOf("@") + 1).toLowerCase();
      if (domains.has(domain)) {
        core.writer.add({ kind: "release", id: m.id }, m.messageId);
        core.total.released++;
      } else keep.push(m);
    }
    if (keep.length !== this.queue.length) {
      this.queue = keep;
      void core.writer.flush();
    }
  }

  /** Start hand-offs while there is room. */
  private pump(): void {
    const { core } = this;
    const { settings, leases } = core;
    while (this.active.size < settings.concurrency && this.queue.length > 0 && !core.stopping) {
      const mail = this.queue.shift()!;
      const leaseEnd = leases.end(mail.id);
      // A lease this relay could not renew may already belong to another relay: do not send.
      if (leaseEnd === undefined || leaseEnd - performance.now() < settings.leaseMs / 3) {
        // Not handed over: give it back as not attempted (a no-op if another relay took it meanwhile).
        core.log.debug({ id: mail.id, messageId: mail.messageId }, "lease ran short before the hand-off started; releasing the mail");
        core.total.released++;
        core.writer.write({ kind: "release", id: mail.id }, mail.messageId);
        continue;
      }
      const p = this.handOff(mail).finally(() => {
        this.active.delete(mail.id);
        this.pump();
        if (this.queue.length < settings.concurrency) this.kick();
      });
      this.active.set(mail.id, p);
    }
  }

  private async handOff(mail: ClaimedMail): Promise<void> {
    const { core } = this;
    const backoff = core.settings.backoff;
    const startedAt = new Date();
    const attemptId = newId();
    const t0 = performance.now();
    // OpenTelemetry: a span linked to the enqueue's trace (null when tracing is off); see tracing.ts.
    const span = startHandoffSpan(mail, this.transporter);
    let outcome: HandoffDecision;
    let failure: unknown = undefined;
    try {
      const info = await this.sendWithTimeout(mail);
      const durationMs = performance.now() - t0;
      outcome = decideHandedOff(mail, { id: mail.id, attemptId, attempt: mail.attempts, startedAt, durationMs }, info, backoff);
      core.outages.transportUp();
      core.metrics?.duration.observe(durationMs / 1000);
    } catch (err) {
      outcome = decideFailed(mail, { id: mail.id, attemptId, attempt: mail.attempts, startedAt, durationMs: performance.now() - t0 }, err, backoff);
      failure = err;
    }
    span?.end(outcome, failure);
    this.report(mail, outcome, failure);
    core.writer.write(outcome, mail.messageId);
  }

  /** Counts, metrics, logs and events of one decision (see the table in outcome.ts); `err` is what the hand-off threw. */
  private report(mail: ClaimedMail, o: HandoffDecision, err: unknown): void {
    const { core } = this;
    core.metrics?.handoffs.inc({ outcome: handoffOutcome(o) });
    switch (o.kind) {
      case "accepted":
        core.total.sent++;
        core.emitEvent("sent", { id: mail.id, messageId: mail.messageId, attempt: mail.attempts, response: o.response, queueId: o.queueId, rejected: o.rejected });
        return;
      case "partial":
        core.total.retried++;
        core.emitEvent("retry", { id: mail.id, messageId: mail.messageId, attempt: mail.attempts, error: o.error, delayMs: o.delayMs });
        return;
      case "transient":
        core.total.retried++;
        // The outcome writer logs the retry once it is recorded (outcome-writer.ts).
        if (isMtaUnreachable(o.errorCode, o.responseCode)) core.outages.transportDown(err, o.error);
        core.emitEvent("retry", { id: mail.id, messageId: mail.messageId, attempt: mail.attempts, error: o.error, delayMs: o.delayMs });
        return;
      case "permanent":
        core.total.dead++;
        core.emitEvent("dead", { id: mail.id, messageId: mail.messageId, attempt: mail.attempts, error: o.error, response: o.response });
        return;
    }
  }

  private sendWithTimeout(mail: ClaimedMail): Promise<SentMessageInfoLike> {
    const { core } = this;
    const transporter = this.transporter!;
    const sendRaw = this.sendRaw;
    const timeoutMs = core.settings.handoffTimeoutMs;
    // The envelope as handed over: the DSN request (ENVID, NOTIFY, RET) and, under VERP, the
    // return path with the mail's token. The row keeps its own envelope_from.
    const envelope = handoffEnvelope(mail, core.settings.dsn);
    // A transport that takes composed messages directly (it declares `sendRaw`) skips nodemailer's
    // Mailer (a MimeNode, header and address normalisation per message) for bytes that are already final.
    const once = (): Promise<SentMessageInfoLike> =>
      sendRaw ? sendRaw(envelope, mail.raw) : transporter.sendMail(rawSendMailOptions(envelope, mail.raw, mail.messageId));
    // A refused connection (a local MTA restarting) is retried within the attempt, with p-retry;
    // the common case, a hand-off that works, does not pay for the retry machinery.
    const retries = core.settings.connectRetries;
    const first = once();
    // One promise per hand-off settled by whichever comes first, the send or the timeout (the hot
    // path allocates no race and no second promise for the timer).
    return new Promise<SentMessageInfoLike>((resolve, reject) => {
      // Through setImmediate: after a blocked event loop, a reply already waiting in the socket wins over the timer.
      const timer = setTimeout(
        () => setImmediate(() => reject(new HandoffTimeoutError(`The hand-off did not finish within ${timeoutMs} ms (handoffTimeoutMs).`))),
        timeoutMs,
      );
      const ok = (info: SentMessageInfoLike): void => {
        clearTimeout(timer);
        resolve(info);
      };
      const fail = (error: unknown): void => {
        clearTimeout(timer);
        reject(error);
      };
      first.then(ok, (error: unknown) => {
        if (retries === 0 || !core.running || !isConnectionRefused(error)) return fail(error);
        // Waits 100 ms, then 200, 400... up to 1 s between tries, `connectRetries` more tries in all.
        sleep(100)
          .then(() =>
            pRetry(once, {
              retries: retries - 1,
              minTimeout: 200,
              maxTimeout: 1000,
              factor: 2,
              shouldRetry: ({ error: e }) => core.running && isConnectionRefused(e),
            }),
          )
          .then(ok, fail);
      });
    });
  }
}
