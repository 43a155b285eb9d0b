/**
 * The operator functions that only read: ping, status, list, show (and doctor's count of SQLite
 * rows with numeric times).
 */
import type { DbOrUrl, ListOptions, MailDetail, ShowOptions, StatusOptions, StatusReport } from "./admin.js";
import { buildFilter, checkDate, checkStatuses, minDate, notFound, parseMailRef, withDb, zeroCounts } from "./admin-common.js";
import { OptionsError } from "./errors.js";
import { STATUSES, isOutboxStatus } from "./states.js";
import type { MailRecord, Store } from "./store.js";

const DEFAULT_LIST_LIMIT = 50;
const MAX_LIST_LIMIT = 10_000;

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
    };
  });
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
    const detail: MailDetail = { ...mail, attemptLog };
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
