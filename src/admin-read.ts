/**
 * The operator functions that only read: ping, status, list, show, the suppression list (and
 * doctor's count of SQLite rows with numeric times). What became of each recipient after the
 * hand-off (its current fate) is worked out here from the delivery events, by `recipientFates`.
 */
import type { DbOrUrl, ListOptions, ListSuppressionsOptions, MailDetail, RecipientFate, ShowOptions, StatusOptions, StatusReport } from "./admin.js";
import { buildFilter, checkDate, checkStatuses, minDate, notFound, parseMailRef, withDb, zeroCounts } from "./admin-common.js";
import { OptionsError } from "./errors.js";
import { suppressionKey } from "./fate/suppression.js";
import { STATUSES, isOutboxStatus } from "./states.js";
import { FATES, type DeliveryEventRecord, type Fate, type MailRecord, type Store, type SuppressionRecord } from "./store.js";

const DEFAULT_LIST_LIMIT = 50;
const MAX_LIST_LIMIT = 10_000;
const DEFAULT_SUPPRESSION_LIMIT = 1000;
const MAX_SUPPRESSION_LIMIT = 100_000;
/** Mails whose events `mailFates` reads at once. */
const FATE_READ_CONCURRENCY = 8;

/**
 * Check that the database answers a trivial query.
 * @throws MailOutboxError naming the database (password redacted) and what to check.
 */
export async function pingDatabase(dbOrUrl: DbOrUrl): Promise<void> {
  await withDb(dbOrUrl, (db) => db.ping());
}

/** Counts per status, uncertain hand-offs, queue lag, next scheduled attempt and expired leases. */
export async function getStatus(dbOrUrl: DbOrUrl, options: StatusOptions = {}): Promise<StatusReport> {
  const now = checkDate(options.now ?? new Date(), "now");
  return withDb(dbOrUrl, async (db) => {
    const rows = await db.statusCounts(now);
    const counts = zeroCounts(STATUSES);
    const uncertainByStatus = zeroCounts(STATUSES);
    const otherStatuses: Record<string, number> = {};
    let total = 0;
    let uncertainTotal = 0;
    let duePending = 0;
    let expiredLeases = 0;
    let oldestDueCreated: Date | null = null;
    let oldestDueAt: Date | null = null;
    let nextAt: Date | null = null;
    for (const r of rows) {
      const n = Number(r.total);
      total += n;
      uncertainTotal += Number(r.uncertain);
      if (isOutboxStatus(r.status)) {
        counts[r.status] = n;
        uncertainByStatus[r.status] = Number(r.uncertain);
      } else {
        otherStatuses[r.status] = n;
      }
      duePending += Number(r.due);
      expiredLeases += Number(r.expiredLeases);
      oldestDueCreated = minDate(oldestDueCreated, r.oldestDueCreatedAt);
      oldestDueAt = minDate(oldestDueAt, r.oldestDueAt);
      nextAt = minDate(nextAt, r.nextAttemptAt);
    }
    return {
      at: now,
      counts,
      total,
      otherStatuses,
      uncertain: { total: uncertainTotal, byStatus: uncertainByStatus },
      duePending,
      oldestDueAgeMs: oldestDueCreated === null ? null : Math.max(0, now.getTime() - oldestDueCreated.getTime()),
      maxDueLagMs: oldestDueAt === null ? null : Math.max(0, now.getTime() - oldestDueAt.getTime()),
      nextAttemptAt: nextAt,
      expiredLeases,
      fates: await fateTotals(db),
    };
  });
}

async function fateTotals(db: Store): Promise<Record<Fate, number>> {
  const fates = zeroCounts(FATES);
  for (const c of await db.fateCounts()) if ((FATES as readonly string[]).includes(c.fate)) fates[c.fate] += Number(c.n);
  return fates;
}


/**
 * Mails matching every filter given, newest first.
 *
 * @example
 * const dead = await listMails(db, { status: "dead", since: parseSince("24h"), limit: 100 });
 * @throws OptionsError for an unknown status, a limit outside 1..10000 or an invalid date.
 */
export async function listMails(dbOrUrl: DbOrUrl, options: ListOptions = {}): Promise<MailRecord[]> {
  const limit = options.limit ?? DEFAULT_LIST_LIMIT;
  if (!Number.isSafeInteger(limit) || limit < 1 || limit > MAX_LIST_LIMIT) {
    throw new OptionsError(`Expected \`limit\` to be a whole number from 1 to ${MAX_LIST_LIMIT}, got ${JSON.stringify(limit)}.`);
  }
  const filter = buildFilter({
    refs: null,
    statuses: checkStatuses(options.status, STATUSES, "list"),
    recipient: options.recipient,
    since: options.since,
    until: options.until,
    uncertain: options.uncertain,
    fate: options.fate,
  });
  return withDb(dbOrUrl, (db) => db.listMails(filter, limit));
}

/**
 * One mail and its whole history (attempts and operator actions, oldest first).
 *
 * @example
 * const mail = await showMail(db, "<0193a1b2-...@example.com>");
 * @throws OptionsError when `idOrMessageId` is neither a UUID nor a Message-ID; NotFoundError when no row matches.
 */
export async function showMail(dbOrUrl: DbOrUrl, idOrMessageId: string, options: ShowOptions = {}): Promise<MailDetail> {
  const ref = parseMailRef(idOrMessageId);
  const withRaw = options.raw === true;
  return withDb(dbOrUrl, async (db) => {
    const found = await db.findMail(ref.kind === "id" ? { id: ref.id } : { messageId: ref.messageId }, withRaw);
    if (found === undefined) throw notFound(idOrMessageId, db);
    const { mail, raw } = found;
    const attemptLog = await db.listAttempts(mail.id);
    const deliveryEvents = await db.listDeliveryEvents(mail.id);
    const detail: MailDetail = { ...mail, attemptLog, deliveryEvents, fates: recipientFates(mail, deliveryEvents) };
    return withRaw ? { ...detail, raw: raw == null ? Buffer.alloc(0) : Buffer.from(raw) } : detail;
  });
}

/**
 * Rows whose time columns hold numbers instead of ISO-8601 text (SQLite written through an adapter
 * created with `timestampFormat: "unixepoch-ms"`): the relay compares times as text, so such rows
 * would ignore `sendAt` and backoff. 0 where that cannot happen. For `doctor`.
 */
export async function countNumericTimes(db: Store): Promise<number> {
  return (await db.countNumericTimes()) ?? 0;
}

const TERMINAL: ReadonlySet<string> = new Set<Fate>(["delivered", "bounced", "expired"]);

/**
 * The current fate of each recipient of `mail` from its delivery events (oldest first, as
 * `listDeliveryEvents` gives them): the latest `delivered`, `bounced` or `expired`, else `deferred`.
 * The recipients are those handed over (`accepted`, or the envelope of a sent mail without that list),
 * then anyone else the events name; compared without regard to case.
 *
 * @example
 * recipientFates(mail, await db.listDeliveryEvents(mail.id));
 * // [{ recipient: "ann@example.com", fate: "bounced", event: { dsnStatus: "5.1.1", reply: "550 ...", ... }, events: 2 }]
 */
export function recipientFates(mail: Pick<MailRecord, "status" | "envelopeTo" | "accepted">, events: readonly DeliveryEventRecord[]): RecipientFate[] {
  const byKey = new Map<string, { recipient: string; fate: Fate | null; event: DeliveryEventRecord | null; events: number }>();
  const add = (recipient: string) => {
    const key = recipient.toLowerCase();
    let entry = byKey.get(key);
    if (entry === undefined) byKey.set(key, (entry = { recipient, fate: null, event: null, events: 0 }));
    return entry;
  };
  for (const r of mail.accepted ?? (mail.status === "sent" ? mail.envelopeTo : [])) add(r);
  for (const e of events) {
    if (e.event === "queued" || e.recipient === "") continue;
    const entry = add(e.recipient);
    entry.events += 1;
    // Events come oldest first: a later terminal event wins; deferred only until one arrives.
    if (TERMINAL.has(e.event) || entry.fate === null || entry.fate === "deferred") {
      entry.fate = e.event;
      entry.event = e;
    }
  }
  return [...byKey.values()];
}

/**
 * The current fates of the recipients of each of `mails` (for `list`), by mail id. Reads each mail's
 * events (a few at a time): meant for the rows of one listing, not for the whole outbox.
 */
export async function mailFates(dbOrUrl: DbOrUrl, mails: readonly MailRecord[]): Promise<Map<string, RecipientFate[]>> {
  return withDb(dbOrUrl, async (db) => {
    const out = new Map<string, RecipientFate[]>();
    for (let i = 0; i < mails.length; i += FATE_READ_CONCURRENCY) {
      const chunk = mails.slice(i, i + FATE_READ_CONCURRENCY);
      const events = await Promise.all(chunk.map((m) => db.listDeliveryEvents(m.id)));
      chunk.forEach((m, j) => out.set(m.id, recipientFates(m, events[j] ?? [])));
    }
    return out;
  });
}

/**
 * The suppression list, by address: entries that count now, or with `includeExpired` every entry.
 *
 * @example
 * const bounced = (await listSuppressions(db)).filter((s) => s.source === "bounce");
 * @throws OptionsError for an address that is not one, or a limit outside 1..100000.
 */
export async function listSuppressions(dbOrUrl: DbOrUrl, options: ListSuppressionsOptions = {}): Promise<SuppressionRecord[]> {
  const limit = options.limit ?? DEFAULT_SUPPRESSION_LIMIT;
  if (!Number.isSafeInteger(limit) || limit < 1 || limit > MAX_SUPPRESSION_LIMIT) {
    throw new OptionsError(`Expected \`limit\` to be a whole number from 1 to ${MAX_SUPPRESSION_LIMIT}, got ${JSON.stringify(limit)}.`);
  }
  let address: string | null = null;
  if (options.address !== undefined) {
    address = suppressionKey(options.address);
    if (address === null) throw new OptionsError(`Expected \`address\` to be an email address like ann@example.com, got ${JSON.stringify(options.address)}.`);
  }
  const now = checkDate(options.now ?? new Date(), "now");
  return withDb(dbOrUrl, (db) => db.listSuppressions({ address, includeExpired: options.includeExpired === true, now, limit }));
}
