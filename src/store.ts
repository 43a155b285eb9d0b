/**
 * `Store`: everything the library says to a database, once per database (src/stores/postgres/,
 * src/stores/sqlite/), returning domain records. The relay, the operator functions (admin.ts),
 * migrate and doctor talk only to this interface; none of them asks which database it is.
 * test/store-conformance.test.ts runs one suite against every store.
 *
 * Adding a database: a folder under src/stores/ with its store, its SQL (one statement per
 * function), its migrations under migrations/<provider>/, and one line in `openDatabase` (db.ts).
 */
import type { OutboxStatus } from "./states.js";
import type { JsonValue } from "./types.js";

// ---------------------------------------------------------------------------------------------
// Relay: the hot path

/** A row the relay has claimed: everything it needs to hand the mail over, nothing more. */
export interface ClaimedMail {
  readonly id: string;
  readonly messageId: string;
  readonly envelopeFrom: string;
  readonly envelopeTo: readonly string[];
  readonly raw: Buffer;
  readonly priority: number;
  /** Attempts including this one (the claim counts it). */
  readonly attempts: number;
  readonly maxAttempts: number;
  readonly uncertainHandoffs: number;
  /** The W3C `traceparent` `enqueue()` stored (the trace of the transaction that wrote the mail); null without one. */
  readonly traceContext: string | null;
}

/** What a claim leaves out (pauses by sender domain, `mail-outbox pause --sender`). */
export interface ClaimOptions {
  /** Lower-case domains: rows whose envelope sender is at one of them are not claimed. */
  readonly excludeSenderDomains?: readonly string[];
}

/** The attempt-log part of an outcome: one `mail_outbox_attempt` row per hand-off. */
export interface OutcomeAttempt {
  readonly id: string;
  /** Id of the attempt row. */
  readonly attemptId: string;
  readonly attempt: number;
  readonly startedAt: Date;
  readonly durationMs: number;
}

/** A recipient the MTA refused (5xx) or deferred (4xx), with its reply. */
export interface RecipientReply {
  readonly recipient: string;
  readonly response: string | null;
}

/** The outcome of one claimed row, written back in a batch by `Store.complete`. */
export type Outcome =
  | (OutcomeAttempt & {
      readonly kind: "accepted";
      readonly response: string;
      readonly queueId: string | null;
      readonly accepted: readonly string[];
      readonly rejected: readonly RecipientReply[];
    })
  /**
   * The MTA took the mail for some recipients and deferred others with a 4xx: the row stays
   * pending with `envelope_to` cut down to the deferred recipients, retried with backoff.
   */
  | (OutcomeAttempt & {
      readonly kind: "partial";
      readonly response: string;
      readonly queueId: string | null;
      readonly accepted: readonly string[];
      /** Refused with 5xx: final for them. */
      readonly rejected: readonly RecipientReply[];
      /** Deferred with 4xx: the recipients of the next attempt. */
      readonly deferred: readonly RecipientReply[];
      readonly delayMs: number;
      readonly error: string;
    })
  | (OutcomeAttempt & {
      readonly kind: "transient";
      /** Delay from now until the next attempt, computed by the relay's backoff. */
      readonly delayMs: number;
      readonly error: string;
      readonly errorCode: string | null;
      readonly response: string | null;
      readonly responseCode: number | null;
    })
  | (OutcomeAttempt & {
      readonly kind: "permanent";
      readonly error: string;
      readonly errorCode: string | null;
      readonly response: string | null;
      readonly responseCode: number | null;
      readonly rejected: readonly RecipientReply[] | null;
    })
  /** Claimed but never handed over (graceful stop): back to pending, the claim's attempt not counted. */
  | { readonly kind: "release"; readonly id: string };

/** A row whose lease expired (its relay died mid hand-off), as `Store.rescue` moved it. */
export interface RescuedMail {
  readonly id: string;
  readonly messageId: string;
  readonly previousOwner: string | null;
  readonly status: "pending" | "held" | "dead";
}

/**
 * What happens to a mail whose relay died mid hand-off: sent again, held for an operator, or
 * ("verify") held and then settled from the MTA's record (see `FateStore.resolveUncertain`).
 * In the store, "verify" moves rows as "hold" does.
 */
export type LeaseExpiryPolicy = "resend" | "hold" | "verify";

/**
 * What a database error means, by the driver's code: "unavailable" (connection lost, server down
 * or starting: try again later), "busy" (SQLite's SQLITE_BUSY/SQLITE_LOCKED, MySQL's lock wait
 * timeout and deadlock: another connection holds the lock; try again soon, it passes quickly),
 * "refused" (the server answered but will not let us in: wrong password, no such database),
 * "schema" (an outbox table or column is missing), "conflict" (a unique key is taken), or "other".
 */
export type DatabaseErrorKind = "unavailable" | "busy" | "refused" | "schema" | "conflict" | "other";

/** A subscription to wake-ups (PostgreSQL LISTEN); close it to stop. */
export type Listener = { close(): Promise<void> };

/**
 * The statements the relay runs. Every method is one round trip (SQLite: one transaction). "Due"
 * and lease expiry are judged by the database's clock where it has one (PostgreSQL `now()`, so
 * relays on hosts with skewed clocks agree), else by the process's clock (SQLite).
 */
export interface RelayStore {
  /**
   * Claim up to `limit` due pending rows for `owner`, leased for `leaseMs`: highest priority first,
   * then the longest due. Counts the attempt. Two claimers never get the same row.
   */
  claim(owner: string, limit: number, leaseMs: number, options?: ClaimOptions): Promise<ClaimedMail[]>;
  /**
   * Write a batch of outcomes and their attempt rows at once; returns how many rows changed.
   * "accepted" is recorded even when the lease was lost meanwhile (the MTA has the mail, so the
   * row is not sent again), from sending, pending or held; every other outcome only while `owner`
   * still holds the lease.
   */
  complete(owner: string, relayName: string, outcomes: readonly Outcome[]): Promise<number>;
  /** Extend the lease on rows `owner` still holds; returns the ids still held. */
  renew(owner: string, ids: readonly string[], leaseMs: number): Promise<string[]>;
  /**
   * Move up to `limit` rows whose lease expired (their relay died) to pending (policy "resend")
   * or held ("hold"), or to dead when their attempts are used up, marked as an uncertain
   * hand-off. Never the rows of `self` that it still `held`: a relay that was only slow (a long GC
   * pause, a blocked event loop) still holds its hand-offs and renews or records them itself. Its
   * rows it does not hold are orphans (a claim whose COMMIT went through while its connection
   * dropped, an outcome it could not record) and are rescued like any other's; without `held`,
   * none of `self`'s rows are.
   */
  rescue(self: string, policy: LeaseExpiryPolicy, limit: number, held?: readonly string[]): Promise<RescuedMail[]>;
  /**
   * Wake-ups at commit of new mail: PostgreSQL LISTEN on a dedicated connection the store opens
   * (notifications for other schemas' outboxes ignored). Resolves once listening (check for
   * work committed before then yourself); rejects when it cannot connect. `onLost` is called
   * once if the connection ends other than by `close()`: listen again after a pause.
   * Resolves to null where the database has no notifications (SQLite): poll.
   */
  listen(onWake: () => void, onLost: (err: unknown) => void): Promise<Listener | null>;
  /**
   * Where `listen` gives no wake-ups: true when a claim that finds nothing is a cheap read on a
   * server (MySQL/MariaDB), so the relay polls adaptively: again soon after finding mail, the
   * wait doubling up to `pollIntervalMs` while none is due. Absent or false: the relay polls
   * every `pollIntervalMs` (SQLite, whose every claim takes the database's one write lock).
   */
  readonly adaptivePolling?: boolean;
  /** Problems with the outbox tables, as `inspectSchema` (migrate.ts) reports them. */
  inspectSchema(): Promise<SchemaProblem[]>;
  /** What a database error means (see {@link DatabaseErrorKind}); use this instead of looking at codes. */
  classifyError(err: unknown): DatabaseErrorKind;
  /** The URL with its password replaced by `***`, fit for logs. */
  readonly displayUrl: string;
  /** Where the outbox tables live, for messages: `schema public of postgresql://...` or the SQLite file. */
  readonly where: string;
  close(): Promise<void>;
}

// ---------------------------------------------------------------------------------------------
// Operator functions: domain records

/** One recipient the MTA refused, with its reply. */
export interface RejectedRecipient {
  readonly recipient: string;
  readonly response: string;
}

/** An outbox row (the raw message only through `showMail(..., { raw: true })`). The one mail row type. */
export interface MailRecord {
  readonly id: string;
  readonly messageId: string;
  readonly status: OutboxStatus;
  readonly priority: number;
  readonly idempotencyKey: string | null;
  readonly envelopeFrom: string;
  readonly envelopeTo: readonly string[];
  readonly subject: string;
  readonly size: number;
  readonly metadata: JsonValue | null;
  readonly attempts: number;
  readonly maxAttempts: number;
  readonly sendAt: Date;
  readonly nextAttemptAt: Date;
  readonly leaseOwner: string | null;
  readonly leaseExpiresAt: Date | null;
  readonly lastError: string | null;
  readonly mtaResponse: string | null;
  readonly mtaQueueId: string | null;
  readonly accepted: readonly string[] | null;
  readonly rejected: readonly RejectedRecipient[] | null;
  /** How many times a relay died while it held this mail: the MTA may or may not have accepted it then. */
  readonly uncertainHandoffs: number;
  /** `uncertainHandoffs > 0`: this mail may have been handed over (once more) without a record of it. */
  readonly uncertain: boolean;
  /**
   * `status` is sent, but the MTA refused some of the recipients for good (they are in `rejected`,
   * with its reply): the others have the mail, these never will unless it is sent to them anew.
   */
  readonly partlyRefused: boolean;
  readonly createdAt: Date;
  readonly updatedAt: Date;
  readonly sentAt: Date | null;
}

/**
 * What a hand-off ended with, as stored in `mail_outbox_attempt.outcome` and counted by the
 * `outcome` label of `mail_outbox_handoffs_total` (the table in outcome.ts maps decisions to it).
 */
export type HandoffOutcome = "accepted" | "partial" | "transient" | "permanent";

/** Every value of `mail_outbox_attempt.outcome`: a hand-off's, a rescue's ("lease_expired"), or an operator's. */
export type AttemptOutcome = HandoffOutcome | "lease_expired" | "replayed" | "cancelled" | "verified";

/** One line of a mail's history: a hand-off attempt by a relay, or an operator action (outcome "replayed", "cancelled"). */
export interface AttemptRecord {
  readonly id: string;
  readonly attempt: number;
  /** The relay id, or the operator for replay/cancel. */
  readonly relay: string;
  readonly startedAt: Date;
  readonly durationMs: number;
  readonly outcome: AttemptOutcome;
  readonly response: string | null;
  readonly responseCode: number | null;
  readonly errorCode: string | null;
  readonly error: string | null;
  readonly queueId: string | null;
}

/** Which rows list, replay and cancel take. `null` (and `false`) mean "no constraint". */
export interface MailFilter {
  /** Only rows named by `ids` or `messageIds`. */
  readonly byIds: boolean;
  readonly ids: readonly string[];
  readonly messageIds: readonly string[];
  readonly statuses: readonly string[] | null;
  /** An envelope recipient, compared case-insensitively. */
  readonly recipient: string | null;
  /** created_at >= since */
  readonly since: Date | null;
  /** created_at < until */
  readonly until: Date | null;
  readonly uncertainOnly: boolean;
  /** Mail with a recipient whose current fate is this (see {@link CountByFate}). */
  readonly fate: Fate | null;
}

/** Per status: how many rows, how many uncertain, due pending rows and their oldest, the next scheduled attempt, expired leases. */
export interface StatusCount {
  readonly status: string;
  readonly total: number;
  readonly uncertain: number;
  readonly due: number;
  readonly oldestDueCreatedAt: Date | null;
  readonly oldestDueAt: Date | null;
  readonly nextAttemptAt: Date | null;
  readonly expiredLeases: number;
}

/** What a bulk change (replay, cancel) needs to know about a row before it changes it. */
export interface ChangeTarget {
  readonly id: string;
  readonly messageId: string;
  readonly status: string;
  readonly attempts: number;
  readonly lastError: string | null;
  readonly uncertainHandoffs: number;
}

/** An operator action in the attempt log. */
export interface ActionLogLine {
  /** Id of the attempt row. */
  readonly id: string;
  readonly mailId: string;
  readonly response: string;
}

/** An operator transition (replay, cancel) as `Store.changeStatus` runs it. */
export interface StatusChange {
  /** The transition of `TRANSITIONS` (states.ts) to apply: its `from` and `to` are the statuses. */
  readonly transition: "replay" | "cancel";
  readonly filter: MailFilter;
  readonly at: Date;
  /** The `relay` and `outcome` of the attempt-log lines. */
  readonly actor: string;
  readonly outcome: string;
  /** Given the selected rows (locked), the ones to change; throw to change nothing. */
  choose(rows: readonly ChangeTarget[]): readonly ChangeTarget[];
  /** Given a batch and the ids the transition changed in it, the attempt-log lines to write. */
  settle(batch: readonly ChangeTarget[], changedIds: readonly string[]): readonly ActionLogLine[];
}

/** Rows per status. */
export type CountByStatus = { readonly status: string; readonly n: number };

/** The statements of the operator functions (admin.ts) and doctor. */
export interface OperatorStore {
  /** A trivial query: throws when the database does not answer. */
  ping(): Promise<void>;
  statusCounts(now: Date): Promise<StatusCount[]>;
  /** Rows matching the filter, newest first (created_at, then id). */
  listMails(filter: MailFilter, limit: number): Promise<MailRecord[]>;
  /** One row by id or by Message-ID, with the raw message when `withRaw`. */
  findMail(key: { readonly id: string } | { readonly messageId: string }, withRaw: boolean): Promise<{ mail: MailRecord; raw: Buffer | null } | undefined>;
  /** The attempts and operator actions of one mail, oldest first. */
  listAttempts(mailId: string): Promise<AttemptRecord[]>;
  /** The rows a bulk change would look at (oldest first), without locking: for dry runs. */
  selectTargets(filter: MailFilter): Promise<ChangeTarget[]>;
  /** Select, choose, change in batches and log, all in one transaction (see {@link StatusChange}). */
  changeStatus(change: StatusChange): Promise<void>;
  /** Rows in `statuses` last changed before `cutoff` (null: any age), per status. */
  countPurgeable(statuses: readonly string[], cutoff: Date | null): Promise<CountByStatus[]>;
  /** Delete up to `limit` such rows and their attempts in one transaction; what was deleted, per status. */
  purgeBatch(statuses: readonly string[], cutoff: Date | null, limit: number): Promise<CountByStatus[]>;
  /** The size in bytes of the largest pending mail; null when none is pending. */
  largestPendingSize(): Promise<number | null>;
  /**
   * Rows whose times are stored as numbers instead of the text the relay compares (SQLite written
   * through an adapter with `timestampFormat: "unixepoch-ms"`); null where that cannot happen.
   */
  countNumericTimes(): Promise<number | null>;
}

// ---------------------------------------------------------------------------------------------
// Delivery fate: what the MTA did after its 250 (mail_outbox_delivery), the log follower's
// cursor (mail_outbox_log_cursor), suppressed addresses (mail_outbox_suppression), and the
// `verify` lease-expiry policy that settles uncertain hand-offs from the MTA's own record.

/** What finally happened to one recipient after the hand-off. */
export type Fate = "delivered" | "deferred" | "bounced" | "expired";
export const FATES: readonly Fate[] = ["delivered", "deferred", "bounced", "expired"];

/**
 * One event of `mail_outbox_delivery`: a recipient's fate, or (`queued`, recipient "") the MTA's
 * proof that it took the mail into its queue under `queueId` (Postfix: its qmgr line).
 */
export type DeliveryEventKind = "queued" | Fate;

/** Where an event came from: the MTA's log (`follow-log`) or a delivery status notification (`ingest`). */
export type FateSource = "log" | "dsn";

export interface DeliveryEventInput {
  readonly emailId: string;
  /** The envelope recipient as the outbox sent it (Postfix `orig_to` when given, else `to`; DSN `Original-Recipient`, else `Final-Recipient`); "" for `queued`. */
  readonly recipient: string;
  readonly event: DeliveryEventKind;
  /** When the MTA did it (the log line's time; the DSN's `Last-Attempt-Date`, else `Arrival-Date`, else when it was read). */
  readonly at: Date;
  readonly source: FateSource;
  /** The MTA's queue id the event is about. */
  readonly queueId: string | null;
  /** The enhanced status code (RFC 3463), e.g. `5.1.1`. */
  readonly dsnStatus: string | null;
  /** The next hop or remote server (Postfix `relay=`, DSN `Remote-MTA`). */
  readonly remoteMta: string | null;
  /** The reply or reason (Postfix's text in parentheses, DSN `Diagnostic-Code`). */
  readonly reply: string | null;
  /** Idempotency: an event whose key is already stored is not stored again. */
  readonly eventKey: string;
}

export interface DeliveryEventRecord extends DeliveryEventInput {
  readonly id: string;
  /** When the outbox stored it (the database's clock where it has one). */
  readonly recordedAt: Date;
}

/** Where `follow-log` stopped in one log, saved with the events it recorded (one transaction). */
export interface LogCursor {
  /** The follower's name (by default the log's path). */
  readonly name: string;
  /** `dev:ino` of the file being read, to notice a rotation while it was not running. */
  readonly fileId: string;
  /** Byte offset of the first unread line. */
  readonly offset: number;
  /** What the follower keeps between lines (queue ids seen in `cleanup` lines, not yet queued). */
  readonly state: JsonValue | null;
  /** The last time it read to the end of the log: everything the MTA logged before then is recorded. */
  readonly caughtUpAt: Date | null;
  readonly updatedAt: Date;
}

export interface SuppressionInput {
  /** Compared case-insensitively (stored lower-cased). */
  readonly address: string;
  readonly reason: string;
  /** `bounce` (added from a hard bounce), `operator` (the CLI or the API). */
  readonly source: string;
  readonly emailId: string | null;
  /** Null: never expires. */
  readonly expiresAt: Date | null;
}

export interface SuppressionRecord extends SuppressionInput {
  readonly createdAt: Date;
}

/** A held uncertain hand-off that the `verify` policy may settle from the MTA's record. */
export interface VerifyCandidate {
  readonly id: string;
  readonly messageId: string;
  readonly envelopeTo: readonly string[];
  /** When it was held (its `updated_at` when the lease expired). */
  readonly heldAt: Date;
  /** Queue ids already recorded for this mail (attempt log, `mta_queue_id`): not evidence of the lost hand-off. */
  readonly knownQueueIds: readonly string[];
}

/** How `verify` settles a held uncertain hand-off (transitions `verified-received`, `verified-absent`). */
export type VerifyResolution =
  | { readonly kind: "received"; readonly queueId: string; readonly at: Date; readonly response: string }
  | { readonly kind: "absent"; readonly response: string };

/** Recipients per current fate (the latest event per mail and recipient; a terminal fate wins over `deferred`). */
export type CountByFate = { readonly fate: Fate; readonly n: number };

export interface FateStore {
  /**
   * Store events in one transaction; an event whose `eventKey` is stored already is skipped.
   * With `cursor`, the follower's position is saved in the same transaction. With `suppress`,
   * every inserted `bounced` event's recipient is added to the suppression list (kept if present).
   * Returns the events inserted now.
   */
  recordDeliveryEvents(
    events: readonly DeliveryEventInput[],
    options?: { readonly cursor?: Omit<LogCursor, "updatedAt">; readonly suppress?: { readonly expiresAt: Date | null } },
  ): Promise<DeliveryEventRecord[]>;
  /** Row ids by Message-ID (with angle brackets), for the ones that exist. */
  mailIdsByMessageId(messageIds: readonly string[]): Promise<Map<string, string>>;
  /** The ids of `ids` that exist. */
  existingMailIds(ids: readonly string[]): Promise<Set<string>>;
  /**
   * Row ids by MTA queue id: the latest `queued` event, else the latest attempt-log line that
   * recorded it (every hand-off that sets `mta_queue_id` writes it into its attempt line too, and so
   * does `resolveUncertain`; `mta_queue_id` itself has no index, which would cost every hand-off).
   */
  mailIdsByQueueId(queueIds: readonly string[]): Promise<Map<string, string>>;
  /** A mail's events, by `at` then `recordedAt`. */
  listDeliveryEvents(mailId: string): Promise<DeliveryEventRecord[]>;
  /** Events recorded after `after` (by recordedAt, then id), oldest first: the feed of `watchFates`. */
  deliveryEventsAfter(after: { readonly recordedAt: Date; readonly id: string } | null, limit: number): Promise<(DeliveryEventRecord & { readonly messageId: string })[]>;
  fateCounts(): Promise<CountByFate[]>;
  /** Recipients per current fate, per mail, for these mails (mails without fate events absent). */
  fateCountsByMail(mailIds: readonly string[]): Promise<Map<string, CountByFate[]>>;
  readLogCursor(name: string): Promise<LogCursor | null>;
  /** The latest `caughtUpAt` of any follower; null when none ran. */
  logCaughtUpAt(): Promise<Date | null>;

  /** The addresses of `addresses` (any case) on the list and not expired at `now`, lower-cased. */
  findSuppressed(addresses: readonly string[], now: Date): Promise<Set<string>>;
  listSuppressions(options: { readonly address: string | null; readonly includeExpired: boolean; readonly now: Date; readonly limit: number }): Promise<SuppressionRecord[]>;
  /** Insert or replace (reason, source, expiry) by address; returns how many. */
  addSuppressions(entries: readonly SuppressionInput[]): Promise<number>;
  /** Remove addresses (any case), or with `expiredBefore` every entry expired before then; returns how many. */
  removeSuppressions(target: { readonly addresses: readonly string[] } | { readonly expiredBefore: Date }): Promise<number>;

  /** Held rows with uncertain hand-offs held at or after `heldSince`, oldest first. */
  verifyCandidates(heldSince: Date, limit: number): Promise<VerifyCandidate[]>;
  /** `queued` events per mail id. */
  queuedEvidence(mailIds: readonly string[]): Promise<Map<string, { readonly queueId: string; readonly at: Date }[]>>;
  /**
   * Settle one held row: `received` -> sent (mta_queue_id, accepted = envelope_to, sent_at), `absent`
   * -> pending, due now; with an attempt-log line (outcome "verified", relay `actor`). Only while it
   * is still held (an operator may have acted): returns whether it changed.
   */
  resolveUncertain(id: string, actor: string, resolution: VerifyResolution): Promise<boolean>;
}

// ---------------------------------------------------------------------------------------------
// Schema: migrate, inspectSchema, doctor

/** One thing wrong with the outbox tables, as `inspectSchema` reports it (and `doctor` prints it). */
export interface SchemaProblem {
  readonly kind: "table" | "column" | "index" | "foreign-key" | "trigger" | "migration";
  /** What is wrong, naming the table, column, index or trigger. */
  readonly message: string;
  /** What to do about it: the command to run, or the change to make by hand. */
  readonly fix: string;
  /** `mail-outbox migrate` fixes it (it recreates what a recorded migration created and the database lost). */
  readonly repairable: boolean;
  /** The relay cannot work with it (a table or column it reads or writes is missing or of another type): it refuses to start. */
  readonly blocksRelay: boolean;
  /** The table concerned. */
  readonly table: string;
}

/** The kinds of column the outbox uses; each store names their types (`columnTypes`). */
export type ColumnKind = "id" | "text" | "int" | "bigint" | "float" | "json" | "bytes" | "time";

export interface LiveColumn {
  readonly table: string;
  readonly column: string;
  readonly type: string;
  readonly nullable: boolean;
  readonly hasDefault: boolean;
}

/** The outbox tables as the database has them. */
export interface LiveShape {
  readonly tables: ReadonlySet<string>;
  readonly columns: readonly LiveColumn[];
  readonly indexes: ReadonlySet<string>;
  /** mail_outbox_attempt.email_id references mail_outbox(id) with ON DELETE CASCADE. */
  readonly cascadeFk: boolean;
  /**
   * The other tables whose email_id references mail_outbox(id) with ON DELETE CASCADE
   * (mail_outbox_delivery). Optional for stores written before it: absent means "not checked".
   */
  readonly cascadeFkTables?: ReadonlySet<string>;
  /** Names of the constraints on mail_outbox_attempt and mail_outbox_delivery (empty where keys have no names to add by). */
  readonly constraints: ReadonlySet<string>;
  /** Triggers and functions that exist: `trigger:name`, `function:name`. */
  readonly routines: ReadonlySet<string>;
}

/** What `mail_outbox_migrations` records. */
export interface RecordedMigrations {
  /** version -> kind ("applied" | "baseline", or "started" on MySQL: see `recordStarted`); null when the migrations table does not exist. */
  readonly versions: ReadonlyMap<string, string> | null;
  readonly outboxExists: boolean;
}

export interface SchemaState {
  readonly shape: LiveShape;
  readonly recorded: RecordedMigrations;
}

/** Inside `Store.schemaTransaction`. */
export interface SchemaTransaction {
  read(): Promise<SchemaState>;
  /** Run a migration file or a repair statement. */
  exec(sql: string): Promise<void>;
  ensureMigrationsTable(): Promise<void>;
  record(version: string, kind: "applied" | "baseline"): Promise<void>;
  /**
   * Only where DDL is not transactional (MySQL commits each CREATE TABLE): record `version` as
   * "started" before its statements run, so a migration interrupted halfway is resumed by the
   * next migrate (its `exec` skips what exists) instead of being taken for Prisma Migrate's
   * tables; `record` then marks it applied. Absent: a failed step is rolled back as a whole.
   */
  recordStarted?(version: string): Promise<void>;
  /** Rows whose foreign key points nowhere (0 where the database enforces keys at once). */
  danglingForeignKeys(): Promise<number>;
}

export interface SchemaStore {
  /** The Prisma provider ("postgresql", "sqlite", "mysql"): names `migrations/<provider>/` and `prisma/<provider>/outbox.prisma`. */
  readonly provider: string;
  /** How this database names each kind of column (as its catalog reports them). */
  readonly columnTypes: Readonly<Record<ColumnKind, string>>;
  /** The shape and the recorded migrations, outside any transaction. */
  readSchema(): Promise<SchemaState>;
  /**
   * Run `fn` in one transaction that other migrating processes wait for (PostgreSQL: an advisory
   * lock per schema, the schema created if needed; SQLite: BEGIN IMMEDIATE, foreign keys off).
   * Rolled back when `fn` throws. MySQL: a named lock (GET_LOCK) per database and no transaction,
   * since each DDL statement commits on its own (see `SchemaTransaction.recordStarted`).
   */
  schemaTransaction<T>(fn: (tx: SchemaTransaction) => Promise<T>): Promise<T>;
  /**
   * How to drop NOT NULL from a column by hand, for `doctor`'s fix. `definition`: the column as
   * the shipped migrations define it (`` `lease_owner` VARCHAR(255) NULL ``), for databases whose
   * statement restates the type (MySQL's MODIFY).
   */
  dropNotNullFix(table: string, column: string, models: string, definition?: string): string;
}

// ---------------------------------------------------------------------------------------------
// Operations state shared by all relays: pauses (mail_outbox_pause), hand-off rate limits
// (mail_outbox_rate), named leases one relay at a time holds, with what the holder publishes
// (mail_outbox_lock), and the gauges.

/** A pause: "all", "transport:<key>" or "sender:<domain>" (lower case). */
export interface PauseRecord {
  readonly scope: string;
  readonly pausedAt: Date;
  readonly pausedBy: string;
  readonly reason: string | null;
}

/** A shared hand-off rate limit: `rate` mails per second, up to `burst` at once. */
export interface RateRecord {
  /** "transport:<key>" or "sender:<domain>". */
  readonly bucket: string;
  readonly rate: number;
  readonly burst: number;
  /** Tokens left at `refilledAt`. */
  readonly tokens: number;
  readonly refilledAt: Date;
}

/** The outbox at a glance, for the relay's gauges: cheap on a table of millions of rows. */
export interface OutboxGauges {
  /**
   * Rows per status (every status present). Exact, except `sent` on PostgreSQL when the table
   * holds more than 200,000 rows: there it is the table's live row count from PostgreSQL's
   * statistics minus the other statuses (counting the sent history exactly would cost time in
   * proportion to the table, about 85 ms at 1,000,000 rows).
   */
  readonly byStatus: readonly CountByStatus[];
  /** Pending rows whose next attempt is due. */
  readonly due: number;
  /** Age in seconds of the longest-due pending row (now - next_attempt_at); null when none is due. */
  readonly oldestDueAgeSeconds: number | null;
  /** Rows with an uncertain hand-off (uncertain_handoffs > 0) that are not sent or cancelled: held, pending again, or dead. */
  readonly uncertain: number;
  readonly held: number;
  readonly dead: number;
  /** When the numbers were read (the database's clock where it has one). */
  readonly at: Date;
}

/** A named lease and what its holder last published. */
export interface LockRecord {
  readonly name: string;
  readonly owner: string;
  readonly expiresAt: Date;
  readonly data: JsonValue | null;
  readonly updatedAt: Date;
}

export interface OpsStore {
  listPauses(): Promise<PauseRecord[]>;
  /** Pause `scope`; false when it was paused already (the first pause's time, actor and reason stay). */
  addPause(scope: string, by: string, reason: string | null): Promise<boolean>;
  /** Lift the pause of `scope`; false when it was not paused. */
  removePause(scope: string): Promise<boolean>;
  listRates(): Promise<RateRecord[]>;
  /**
   * Set (insert or change) the limit of `bucket`; a new bucket starts full, a changed one keeps
   * its tokens (refilled at the old rate up to now), at most the new burst.
   * @throws OptionsError when `rate` is not a finite number >= 0 or `burst` not a whole number >= 1.
   */
  setRate(bucket: string, rate: number, burst: number): Promise<void>;
  /** Remove the limit of `bucket`; false when it had none. */
  removeRate(bucket: string): Promise<boolean>;
  /**
   * Take up to `want` tokens from each of `buckets` at once (atomically across relays: the
   * bucket rows are locked for the refill and the take). Buckets without a row are unlimited.
   * `granted` is the minimum over the buckets, taken from each; `waitMs` is how long until the
   * tightest bucket has one token again (0 when all of `want` was granted; at most 60 s, which is
   * what a bucket of rate 0 answers). Times come from the database's clock on PostgreSQL, from the
   * process's on SQLite (relays sharing a SQLite file share a host).
   */
  takeTokens(buckets: readonly string[], want: number): Promise<{ granted: number; waitMs: number }>;
  /** Give back tokens taken but not used (claimed fewer rows than granted); never above burst. */
  returnTokens(buckets: readonly string[], n: number): Promise<void>;
  /**
   * Hold the lease `name` for `ttlMs` when it is free, expired, or already `owner`'s (then it is
   * extended); true when `owner` holds it afterwards. `data` (when given, null included) is
   * stored with it; without it the lease keeps the data it had.
   */
  tryLock(name: string, owner: string, ttlMs: number, data?: JsonValue): Promise<boolean>;
  /**
   * Give up `name` if `owner` holds it: it expires now, and its row stays, so what the holder
   * published (`data`) is still there for {@link readLock} until the next holder replaces it.
   */
  unlock(name: string, owner: string): Promise<void>;
  readLock(name: string): Promise<LockRecord | null>;
  /** Count the outbox for the gauges (see {@link OutboxGauges}). */
  gauges(): Promise<OutboxGauges>;
}

// ---------------------------------------------------------------------------------------------
// Dashboard (src/ui/): the list by pages, the attempt log in buckets.

/** One page of the dashboard's mail list: `filter` (as `listMails` takes it) plus what only the dashboard filters by. */
export interface MailPageQuery {
  readonly filter: MailFilter;
  /** The subject contains this text (any case); null: any. */
  readonly subject: string | null;
  /** A top-level metadata key whose value, as text, is this; the key is letters, digits, `_`, `.`, `-`. */
  readonly metadata: { readonly key: string; readonly value: string } | null;
  /** Only mails the MTA took for some recipients and not for others (refused for good, or deferred). */
  readonly partialOnly: boolean;
  /** Rows after this one in newest-first order (the last row of the previous page); null: the first page. */
  readonly before: { readonly createdAt: Date; readonly id: string } | null;
  readonly limit: number;
}

/** Hand-offs in one time bucket with one outcome: how many, their mean and longest duration. */
export interface AttemptBucket {
  readonly start: Date;
  readonly outcome: string;
  readonly n: number;
  readonly avgMs: number;
  readonly maxMs: number;
}

export interface DashboardStore {
  /** One page of mails, newest first (created_at, then id), by keyset: stable while rows are added. */
  listMailPage(query: MailPageQuery): Promise<MailRecord[]>;
  /** Hand-off attempts started at or after `since`, per `bucketMs` bucket (aligned to the epoch) and outcome. */
  attemptBuckets(since: Date, bucketMs: number): Promise<AttemptBucket[]>;
}

/** Everything the library says to a database. */
export interface Store extends RelayStore, OperatorStore, SchemaStore, FateStore, OpsStore, DashboardStore {}
