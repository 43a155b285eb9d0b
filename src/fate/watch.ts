/**
 * `watchFates()`: the delivery events the outbox records (`follow-log`, `ingest`), as an async
 * iterable, for an application in another process that wants to react to them (mark an address
 * invalid after a bounce, alert on expiries). It polls `mail_outbox_delivery` in the order the
 * events were stored, so it needs nothing but the database, and resumes where the application says.
 *
 * Why events are yielded only once they are `settleMs` old: `recordedAt` is taken when the writing
 * transaction starts (PostgreSQL's now()) or just before its insert (SQLite), but the rows become
 * visible when it commits. A writer that commits late can add an event that sorts before one the
 * watch has already passed; reading only up to `now - settleMs` leaves such writers that time to
 * commit, so a cursor that only moves forward skips nothing.
 */
import { openDatabase } from "../db.js";
import { OptionsError } from "../errors.js";
import type { DeliveryEventRecord, Store } from "../store.js";

/** A delivery event with the Message-ID of its mail. `recordedAt` and `id` are its place in the feed. */
export type FateEvent = DeliveryEventRecord & { readonly messageId: string };

/** A place in the feed: the `recordedAt` and `id` of the last event handled. */
export interface FateCursor {
  readonly recordedAt: Date;
  readonly id: string;
}

export interface WatchFatesOptions {
  /** An open store (`openDatabase()`); left open. Give this or `databaseUrl`. */
  readonly db?: Store;
  /** A database URL, opened for the watch and closed when it ends. */
  readonly databaseUrl?: string;
  /**
   * Where to start: after this event (save `{ recordedAt, id }` of the last event you handled and pass it
   * on restart, so nothing is missed or seen twice), or every event recorded at or after this time.
   * @default null: from the first event stored
   */
  readonly after?: FateCursor | Date | null;
  /** How long to wait when there is nothing new. @default 1000 */
  readonly pollIntervalMs?: number;
  /** Events read per query. From 1 to 10000. @default 100 */
  readonly batchSize?: number;
  /**
   * Yield an event only once it was recorded this long ago (by this process's clock), so that a
   * slower transaction that stored an earlier event can commit first (see the module's comment).
   * Longer than any recording transaction, plus the clock difference to the database (PostgreSQL).
   * 0 yields at once and may skip such an event. @default 2000
   */
  readonly settleMs?: number;
  /** Ends the iteration (cleanly, no error) at the next event or during the wait. */
  readonly signal?: AbortSignal;
}

const DEFAULT_POLL_MS = 1000;
const DEFAULT_BATCH = 100;
const DEFAULT_SETTLE_MS = 2000;

/**
 * The delivery events (`queued`, `delivered`, `deferred`, `bounced`, `expired`) recorded in the
 * outbox, oldest first, then each new one as it is recorded (polled every `pollIntervalMs`, yielded
 * once `settleMs` old). An event recorded by any process (`follow-log`, `ingest`) is yielded once per
 * watch, in the order it was stored. A database that cannot be reached for a moment (restart, failover) is waited for;
 * other errors end the iteration with the error. Breaking out of the loop or aborting `signal`
 * ends it and closes a database it opened.
 *
 * @example
 * ```ts
 * import { watchFates } from "prisma-mail-outbox";
 * const stop = new AbortController();
 * for await (const e of watchFates({ databaseUrl: process.env.DATABASE_URL, after: await loadCursor(), signal: stop.signal })) {
 *   if (e.event === "bounced") await markInvalid(e.recipient, `${e.dsnStatus} ${e.reply}`);
 *   await saveCursor({ recordedAt: e.recordedAt, id: e.id });
 * }
 * ```
 * @throws OptionsError (at once, not when iterating) for a missing database or a bad option.
 */
export function watchFates(options: WatchFatesOptions): AsyncIterable<FateEvent> {
  if (options === null || typeof options !== "object") throw new OptionsError("Expected `options` to be an object with `db` or `databaseUrl`.");
  const { db, databaseUrl, signal } = options;
  if ((db === undefined) === (databaseUrl === undefined)) {
    throw new OptionsError("watchFates() needs exactly one of `db` (an open store) or `databaseUrl`.");
  }
  const pollIntervalMs = options.pollIntervalMs ?? DEFAULT_POLL_MS;
  if (!Number.isSafeInteger(pollIntervalMs) || pollIntervalMs < 1) {
    throw new OptionsError(`Expected \`pollIntervalMs\` to be a whole number of milliseconds of at least 1, got ${JSON.stringify(pollIntervalMs)}.`);
  }
  const batchSize = options.batchSize ?? DEFAULT_BATCH;
  if (!Number.isSafeInteger(batchSize) || batchSize < 1 || batchSize > 10_000) {
    throw new OptionsError(`Expected \`batchSize\` to be a whole number from 1 to 10000, got ${JSON.stringify(batchSize)}.`);
  }
  const settleMs = options.settleMs ?? DEFAULT_SETTLE_MS;
  if (!Number.isSafeInteger(settleMs) || settleMs < 0) {
    throw new OptionsError(`Expected \`settleMs\` to be a whole number of milliseconds of at least 0, got ${JSON.stringify(settleMs)}.`);
  }
  const start = startCursor(options.after);
  return {
    [Symbol.asyncIterator]: () => poll({ db, databaseUrl, pollIntervalMs, batchSize, settleMs, signal, start }),
  };
}

function startCursor(after: WatchFatesOptions["after"]): FateCursor | null {
  if (after === undefined || after === null) return null;
  if (after instanceof Date) {
    if (Number.isNaN(after.getTime())) throw new OptionsError("Expected `after` to be a valid Date.");
    // (recordedAt, id) > (after, the smallest UUID): every event recorded at or after that time.
    return { recordedAt: after, id: "00000000-0000-0000-0000-000000000000" };
  }
  if (!(after.recordedAt instanceof Date) || Number.isNaN(after.recordedAt.getTime()) || typeof after.id !== "string") {
    throw new OptionsError("Expected `after` to be a Date or `{ recordedAt: Date, id: string }` (the last event handled).");
  }
  return { recordedAt: after.recordedAt, id: after.id };
}

async function* poll(o: {
  db: Store | undefined;
  databaseUrl: string | undefined;
  pollIntervalMs: number;
  batchSize: number;
  settleMs: number;
  signal: AbortSignal | undefined;
  start: FateCursor | null;
}): AsyncGenerator<FateEvent, void, undefined> {
  if (o.signal?.aborted) return;
  const db: Store = o.db ?? (await openDatabase(o.databaseUrl));
  let cursor = o.start;
  try {
    while (!o.signal?.aborted) {
      let batch: FateEvent[];
      try {
        batch = await db.deliveryEventsAfter(cursor, o.batchSize);
      } catch (err) {
        const kind = db.classifyError(err);
        if (kind !== "unavailable" && kind !== "busy") throw err;
        await sleep(o.pollIntervalMs, o.signal);
        continue;
      }
      // Events come in (recordedAt, id) order: stop at the first one not settled yet, and read it again later.
      const settledBefore = Date.now() - o.settleMs;
      let settlesIn: number | null = null;
      for (const event of batch) {
        if (o.signal?.aborted) return;
        if (o.settleMs > 0 && event.recordedAt.getTime() > settledBefore) {
          settlesIn = event.recordedAt.getTime() - settledBefore;
          break;
        }
        cursor = { recordedAt: event.recordedAt, id: event.id };
        yield event;
      }
      if (settlesIn !== null) await sleep(Math.min(o.pollIntervalMs, settlesIn), o.signal);
      else if (batch.length < o.batchSize) await sleep(o.pollIntervalMs, o.signal);
    }
  } finally {
    if (o.db === undefined) await db.close();
  }
}

/** Wait `ms`, or less when `signal` aborts. */
function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener("abort", done, { once: true });
  });
}
