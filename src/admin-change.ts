/**
 * The operator functions that change rows: replay (dead, cancelled, held, sent -> pending), cancel
 * (pending, held -> cancelled) and purge (delete final rows). Replay and cancel select, check and
 * change in one transaction of the store (`Store.changeStatus`), logging each change in the
 * attempt log; purge deletes in batches. suppress and unsuppress change the suppression list
 * (`mail_outbox_suppression`, see ./fate/suppression.ts).
 */
import type {
  CancelOptions,
  CancelResult,
  ChangedMail,
  DbOrUrl,
  MailRef,
  PurgeOptions,
  PurgeResult,
  PurgeableStatus,
  ReplayOptions,
  ReplayResult,
  SkippedMail,
  SuppressOptions,
  SuppressResult,
  UnchangedMail,
  UnsuppressOptions,
  UnsuppressResult,
} from "./admin.js";
import { PURGEABLE_STATUSES } from "./admin.js";
import { buildFilter, checkActor, checkDate, checkStatuses, parseMailRef, plural, truncate, withDb, zeroCounts } from "./admin-common.js";
import { OptionsError, UnsafeOperationError } from "./errors.js";
import { checkSuppressionAddresses } from "./fate/suppression.js";
import { newId } from "./ids.js";
import { TRANSITIONS, type OutboxStatus } from "./states.js";
import type { ActionLogLine, ChangeTarget, MailFilter, Store } from "./store.js";

const DEFAULT_PURGE_BATCH = 5000;
/** Without ids and without a status, replay takes these only (see `ReplayOptions.status`). */
const DEFAULT_REPLAY_STATUSES: readonly OutboxStatus[] = ["dead", "held"];

/**
 * Send mails again: the "replay" transition (dead, cancelled, held, sent -> pending), due now, with
 * `attempts` reset to 0, the lease and the results of the last hand-off cleared. The Message-ID and the
 * raw message are kept, so the recipient's mail client can recognise a duplicate. The previous history
 * stays in the attempt log, and a line with outcome "replayed" records the operator's action.
 * Rows in other states are skipped and reported. One transaction, batched. A selection that holds a
 * `sent` mail needs `resendSent: true`, since the MTA has that mail already.
 *
 * @example
 * await replayMails(db, { status: "dead", since: parseSince("2h") });
 * await replayMails(db, { ids: ["<0193a1b2-...@example.com>"] });
 * await replayMails(db, { status: "sent", since: parseSince("1h"), resendSent: true });
 * @throws UnsafeOperationError when nothing narrows the selection and `all` is not set, or when the
 *   selection holds a sent mail and `resendSent` is not set; nothing is changed then.
 * @throws OptionsError for an invalid id, status or date.
 */
export async function replayMails(dbOrUrl: DbOrUrl, options: ReplayOptions = {}): Promise<ReplayResult> {
  const now = checkDate(options.now ?? new Date(), "now");
  const actor = checkActor(options.actor);
  const refs = options.ids !== undefined && options.ids.length > 0 ? options.ids.map(parseMailRef) : null;
  const replayable = TRANSITIONS.replay.from;
  const statuses = checkStatuses(options.status, replayable, "replay");
  const narrowed =
    refs !== null ||
    statuses !== null ||
    options.since !== undefined ||
    options.until !== undefined ||
    options.recipient !== undefined ||
    options.uncertain === true;
  if (!narrowed && options.all !== true) {
    throw new UnsafeOperationError(
      "Refusing to replay every dead and held mail without `all: true` (CLI: --all --yes). Narrow the selection with ids, status, since, recipient or uncertain, or check it first with a dry run.",
    );
  }
  const filter = buildFilter({
    refs,
    statuses: statuses ?? (refs === null ? DEFAULT_REPLAY_STATUSES : null),
    recipient: options.recipient,
    since: options.since,
    until: options.until,
    uncertain: options.uncertain,
  });
  const dryRun = options.dryRun === true;
  const resendSent = options.resendSent === true;
  if (!dryRun && !resendSent && statuses?.includes("sent") === true) {
    throw new UnsafeOperationError(refuseResend(null));
  }
  const r = await withDb(dbOrUrl, (db) =>
    bulkChange(db, {
      filter,
      refs,
      dryRun,
      // Checked on the rows selected inside the transaction: a sent mail named by id is guarded too.
      check: (candidates) => {
        const sent = candidates.filter((c) => c.status === "sent").length;
        if (sent > 0 && !resendSent) throw new UnsafeOperationError(refuseResend(sent));
      },
      transition: "replay",
      outcome: "replayed",
      actor,
      now,
      describe: (row) =>
        `replayed from ${row.status} by ${actor}; before: ${row.attempts} attempt${row.attempts === 1 ? "" : "s"}` +
        (row.uncertainHandoffs > 0 ? `, ${row.uncertainHandoffs} uncertain hand-off${row.uncertainHandoffs === 1 ? "" : "s"}` : "") +
        (row.lastError ? `, last error: ${truncate(row.lastError, 500)}` : ""),
    }),
  );
  return { dryRun, matched: r.matched, replayed: r.changed, skipped: r.skipped, notFound: r.notFound };
}

/**
 * Cancel mails that have not been handed over: the "cancel" transition (pending, held -> cancelled).
 * Idempotent: a mail cancelled before is reported in `alreadyCancelled` and left as it is. Rows in
 * other states are reported in `notCancellable` with the reason (a `sent` mail is with the MTA
 * already; a mail in `sending` is being handed over right now).
 * Each cancelled mail gets an attempt-log line with outcome "cancelled".
 *
 * @example
 * const r = await cancelMails(db, { ids: ["0193a1b2-7c3d-7e4f-8a5b-6c7d8e9f0a1b"] });
 * @throws OptionsError when `ids` is empty or holds an invalid id.
 */
export async function cancelMails(dbOrUrl: DbOrUrl, options: CancelOptions): Promise<CancelResult> {
  const now = checkDate(options.now ?? new Date(), "now");
  const actor = checkActor(options.actor);
  if (options === undefined || !Array.isArray(options.ids) || options.ids.length === 0) {
    throw new OptionsError("Expected `ids` to name at least one mail to cancel (a mail id or a Message-ID).");
  }
  const refs = options.ids.map(parseMailRef);
  const filter = buildFilter({ refs, statuses: null });
  const dryRun = options.dryRun === true;
  const r = await withDb(dbOrUrl, (db) =>
    bulkChange(db, {
      filter,
      refs,
      dryRun,
      transition: "cancel",
      outcome: "cancelled",
      actor,
      now,
      describe: (row) => `cancelled by ${actor} while ${row.status}`,
    }),
  );
  return { dryRun, cancelled: r.changed, alreadyCancelled: r.already, notCancellable: r.skipped, notFound: r.notFound };
}

/**
 * Delete old mails in final states (sent, dead, cancelled) with their attempt logs, in batches, each
 * batch its own transaction. "Older than" is measured from the row's last change (`updated_at`).
 * Pending, sending and held mails are never purged.
 *
 * @example
 * await purgeMails(db, { status: "sent", olderThanMs: parseDuration("30d") });
 * @throws UnsafeOperationError without `status` and `olderThanMs`, unless `all`.
 * @throws OptionsError for a status that may not be purged or a negative age.
 */
export async function purgeMails(dbOrUrl: DbOrUrl, options: PurgeOptions = {}): Promise<PurgeResult> {
  const now = checkDate(options.now ?? new Date(), "now");
  const given = checkStatuses(options.status, PURGEABLE_STATUSES, "purge") as readonly PurgeableStatus[] | null;
  const olderThan = options.olderThanMs;
  if (olderThan !== undefined && (!Number.isSafeInteger(olderThan) || olderThan < 0)) {
    throw new OptionsError(`Expected \`olderThanMs\` to be a whole number of milliseconds >= 0, got ${JSON.stringify(olderThan)}.`);
  }
  if ((given === null || olderThan === undefined) && options.all !== true) {
    throw new UnsafeOperationError(
      "Refusing to purge without both a status and an age (CLI: --status sent --older-than 30d). To delete every sent, dead and cancelled mail regardless, pass `all: true` (CLI: --all --yes).",
    );
  }
  const batchSize = options.batchSize ?? DEFAULT_PURGE_BATCH;
  if (!Number.isSafeInteger(batchSize) || batchSize < 1 || batchSize > 100_000) {
    throw new OptionsError(`Expected \`batchSize\` to be a whole number from 1 to 100000, got ${JSON.stringify(batchSize)}.`);
  }
  const statuses: readonly PurgeableStatus[] = given ?? PURGEABLE_STATUSES;
  const cutoff = olderThan === undefined ? null : new Date(now.getTime() - olderThan);
  const dryRun = options.dryRun === true;
  const byStatus = zeroCounts(PURGEABLE_STATUSES);
  const add = (rows: readonly { status: string; n: number }[]) => {
    for (const r of rows) if ((PURGEABLE_STATUSES as readonly string[]).includes(r.status)) byStatus[r.status as PurgeableStatus] += Number(r.n);
  };
  await withDb(dbOrUrl, async (db) => {
    if (dryRun) {
      add(await db.countPurgeable(statuses, cutoff));
      return;
    }
    for (;;) {
      const rows = await db.purgeBatch(statuses, cutoff, batchSize);
      add(rows);
      if (rows.reduce((s, r) => s + Number(r.n), 0) < batchSize) break;
    }
  });
  const deleted = Object.values(byStatus).reduce((s, n) => s + n, 0);
  return { dryRun, statuses, cutoff, deleted, byStatus };
}

interface BulkSpec {
  readonly filter: MailFilter;
  readonly refs: readonly MailRef[] | null;
  readonly dryRun: boolean;
  readonly transition: "replay" | "cancel";
  readonly outcome: "replayed" | "cancelled";
  readonly actor: string;
  readonly now: Date;
  readonly describe: (row: Target) => string;
  /** Called with the rows about to change (not on a dry run); throwing aborts the whole change. */
  readonly check?: (candidates: readonly Target[]) => void;
}

interface BulkOutcome {
  readonly matched: number;
  readonly changed: ChangedMail[];
  /** Rows in the target state already (cancel of a cancelled mail). */
  readonly already: UnchangedMail[];
  readonly skipped: SkippedMail[];
  readonly notFound: string[];
}

type Target = ChangeTarget;

/** Split the selected rows into those the transition allows and those it does not. */
function partition(spec: BulkSpec, targets: readonly Target[]): { outcome: BulkOutcome; candidates: Target[] } {
  const allowed: readonly string[] = TRANSITIONS[spec.transition].from;
  const outcome: BulkOutcome = { matched: targets.length, changed: [], already: [], skipped: [], notFound: missingRefs(spec.refs, targets) };
  const candidates: Target[] = [];
  const target = TRANSITIONS[spec.transition].to;
  for (const t of targets) {
    if (allowed.includes(t.status)) candidates.push(t);
    else if (spec.transition === "cancel" && t.status === target) outcome.already.push({ id: t.id, messageId: t.messageId, status: t.status as OutboxStatus });
    else outcome.skipped.push({ id: t.id, messageId: t.messageId, status: t.status as OutboxStatus, reason: refuseReason(spec.transition, t.status) });
  }
  if (spec.dryRun) {
    for (const t of candidates) outcome.changed.push({ id: t.id, messageId: t.messageId, from: t.status as OutboxStatus });
  } else {
    spec.check?.(candidates);
  }
  return { outcome, candidates };
}

/** Record which rows of a batch the UPDATE changed; returns the attempt-log lines to write for them. */
function settleBatch(spec: BulkSpec, outcome: BulkOutcome, batch: readonly Target[], changedIds: readonly string[]): ActionLogLine[] {
  const done = new Set(changedIds);
  const log: ActionLogLine[] = [];
  for (const t of batch) {
    if (done.has(t.id)) {
      outcome.changed.push({ id: t.id, messageId: t.messageId, from: t.status as OutboxStatus });
      log.push({ id: newId(), mailId: t.id, response: spec.describe(t) });
    } else {
      // Only possible if another writer changed the row between our SELECT and UPDATE.
      outcome.skipped.push({ id: t.id, messageId: t.messageId, status: t.status as OutboxStatus, reason: "its status changed while this ran; look at it again" });
    }
  }
  return log;
}

/** Select the targets, then change the allowed ones batch by batch (one UPDATE and one INSERT per batch), all in one transaction. */
async function bulkChange(db: Store, spec: BulkSpec): Promise<BulkOutcome> {
  if (spec.dryRun) return partition(spec, await db.selectTargets(spec.filter)).outcome;
  let outcome: BulkOutcome | undefined;
  await db.changeStatus({
    transition: spec.transition,
    filter: spec.filter,
    at: spec.now,
    actor: spec.actor,
    outcome: spec.outcome,
    choose: (rows) => {
      const p = partition(spec, rows);
      outcome = p.outcome;
      return p.candidates;
    },
    settle: (batch, changedIds) => settleBatch(spec, outcome!, batch, changedIds),
  });
  return outcome!;
}

/** Why a replay that would resend `count` sent mails (null: selected by status) was refused, and how to confirm it. */
function refuseResend(count: number | null): string {
  const what = count === null ? "sent mails" : `${plural(count, "sent mail")}`;
  return `Refusing to replay ${what}: the MTA accepted ${count === 1 ? "it" : "them"} already, and a replay delivers ${count === 1 ? "it" : "them"} again. Confirm with \`resendSent: true\` (CLI: --yes); see the selection first with a dry run (CLI: --dry-run).`;
}

function refuseReason(transition: "replay" | "cancel", status: string): string {
  const from = TRANSITIONS[transition].from.join(", ");
  if (transition === "replay") {
    if (status === "pending") return "it is pending already: a relay hands it over when it is due";
    if (status === "sending") return "a relay is handing it over right now; wait for the outcome, then replay it if needed";
    return `replay applies only to ${from} mails`;
  }
  if (status === "sending") return "a relay is handing it over right now; if the hand-off fails and it returns to pending, cancel it then";
  if (status === "sent") return "it was handed over to the MTA already; it cannot be called back";
  if (status === "dead" || status === "cancelled") return `it is ${status} already: nothing will send it`;
  return `cancel applies only to ${from} mails`;
}

/** The refs that match none of the selected rows, as given (id or Message-ID with brackets). */
function missingRefs(refs: readonly MailRef[] | null, targets: readonly Target[]): string[] {
  if (refs === null) return [];
  const ids = new Set(targets.map((t) => t.id.toLowerCase()));
  const messageIds = new Set(targets.map((t) => t.messageId));
  const missing: string[] = [];
  for (const r of refs) {
    if (r.kind === "id" ? !ids.has(r.id) : !messageIds.has(r.messageId)) missing.push(r.kind === "id" ? r.id : r.messageId);
  }
  return [...new Set(missing)];
}

const MAX_REASON_LENGTH = 1000;

/**
 * Put addresses on the suppression list (or replace their entries): `enqueue()` under the
 * `suppression` policy "refuse" or "skip" then refuses or leaves them out. Compared without regard
 * to case: stored lower-cased, the domain in punycode.
 *
 * @example
 * await suppress(db, ["ann@example.com"], { reason: "asked to stop", expiresIn: parseDuration("180d") });
 * @throws OptionsError naming every address that is not one, or for a bad reason or expiry.
 */
export async function suppress(dbOrUrl: DbOrUrl, addresses: readonly string[], options: SuppressOptions = {}): Promise<SuppressResult> {
  const list = checkSuppressionAddresses(addresses);
  const now = checkDate(options.now ?? new Date(), "now");
  const reason = options.reason ?? "added by an operator";
  if (typeof reason !== "string" || reason.trim() === "" || reason.length > MAX_REASON_LENGTH) {
    throw new OptionsError(`Expected \`reason\` to be a non-empty text of at most ${MAX_REASON_LENGTH} characters.`);
  }
  const source = options.source ?? "operator";
  if (typeof source !== "string" || !/^[a-z][a-z0-9_-]{0,39}$/.test(source)) {
    throw new OptionsError(`Expected \`source\` to be a short lower-case word like "operator" or "bounce", got ${JSON.stringify(source)}.`);
  }
  const { expiresIn } = options;
  if (expiresIn !== undefined && (!Number.isSafeInteger(expiresIn) || expiresIn <= 0)) {
    throw new OptionsError(`Expected \`expiresIn\` to be a whole number of milliseconds above 0, got ${JSON.stringify(expiresIn)}.`);
  }
  const expiresAt = expiresIn === undefined ? null : new Date(now.getTime() + expiresIn);
  const emailId = options.emailId ?? null;
  await withDb(dbOrUrl, (db) => db.addSuppressions(list.map((address) => ({ address, reason: reason.trim(), source, emailId, expiresAt }))));
  return { addresses: list, expiresAt };
}

/**
 * Take addresses off the suppression list (any case), or with `{ expired: true }` every entry whose
 * expiry has passed (they no longer count; this only tidies up).
 *
 * @example
 * await unsuppress(db, ["ann@example.com"]);
 * await unsuppress(db, { expired: true });
 * @throws OptionsError naming every address that is not one.
 */
export async function unsuppress(
  dbOrUrl: DbOrUrl,
  target: readonly string[] | { readonly expired: true },
  options: UnsuppressOptions = {},
): Promise<UnsuppressResult> {
  const now = checkDate(options.now ?? new Date(), "now");
  if (!Array.isArray(target)) {
    if ((target as { expired?: unknown } | null)?.expired !== true) {
      throw new OptionsError("Expected a list of addresses, or `{ expired: true }` to remove the entries that have expired.");
    }
    const removed = await withDb(dbOrUrl, (db) => db.removeSuppressions({ expiredBefore: now }));
    return { removed, notFound: [] };
  }
  const list = checkSuppressionAddresses(target as readonly string[]);
  return withDb(dbOrUrl, async (db) => {
    // One statement per address, so the result can say which were not there (operators name a few at a time).
    let removed = 0;
    const notFound: string[] = [];
    for (const address of list) {
      const n = await db.removeSuppressions({ addresses: [address] });
      removed += n;
      if (n === 0) notFound.push(address);
    }
    return { removed, notFound };
  });
}
