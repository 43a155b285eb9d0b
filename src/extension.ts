/**
 * The Prisma extension: `enqueue()` and `enqueueMany()` on the `outboxEmail` model, written in the
 * caller's transaction. Both return a Prisma promise, so they also join a batch transaction
 * (`prisma.$transaction([...])`). With the `suppression` option they read the suppression list
 * (./fate/suppression.ts) through the `outboxSuppression` model first.
 */
import { Prisma } from "@prisma/client/extension";
import { composeMail, DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_HEADER_BYTES, DEFAULT_MAX_MESSAGE_BYTES, validateComposeDefaults } from "./compose.js";
import { ComposedMailAlreadyEnqueuedError, DuplicateIdempotencyKeyError, InvalidMailError, OptionsError, SuppressedRecipientError } from "./errors.js";
import { allSuppressedMessage, checkSuppressionPolicy, findSuppressedWithPrisma, splitRecipients, type RecipientSplit, type SuppressionPolicy } from "./fate/suppression.js";
import { traceContextFor } from "./tracing.js";
import type { AddressInput, ComposeDefaults, ComposedMail, MailInput } from "./types.js";

export interface MailOutboxOptions {
  /** Sender used when a mail has no `from`. */
  readonly defaultFrom?: AddressInput;
  /** Attempts before a mail is parked as dead, when the mail does not say. @default 25 */
  readonly maxAttempts?: number;
  /** Largest composed message, in bytes. @default 10,000,000 (below Postfix's `message_size_limit`, 10,240,000) */
  readonly maxMessageBytes?: number;
  /** Largest composed header section, in bytes. @default 100,000 (below Postfix's `header_size_limit`) */
  readonly maxHeaderBytes?: number;
  /** Right-hand side of generated Message-IDs. @default the sender's domain */
  readonly messageIdDomain?: string;
  /**
   * What `enqueue()` does with recipients on the suppression list (addresses that hard-bounced, or
   * that an operator added: `mail-outbox suppress`). Compared without regard to case; expired entries
   * do not count. Needs the `OutboxSuppression` model in your schema (`mail-outbox init`).
   * - `"off"`: the list is not read; enqueue costs no extra query.
   * - `"refuse"`: `SuppressedRecipientError` (naming them) before anything is written.
   * - `"skip"`: they are left out of the envelope and listed in `EnqueueResult.suppressed`. If every
   *   recipient of a mail is suppressed, its row is written as `cancelled` (never handed over), with
   *   `last_error` naming them and the envelope as it was, so `show` and `list` tell why and a
   *   `replay` after `suppress remove` sends it.
   * @default "off"
   * @example
   * ```ts
   * const prisma = new PrismaClient({ adapter }).$extends(mailOutbox({ defaultFrom: "shop@example.com", suppression: "skip" }));
   * const { suppressed } = await prisma.$transaction((tx) => tx.outboxEmail.enqueue({ to: [ann, bob], subject: "News", text }));
   * if (suppressed.length > 0) log.info({ suppressed }, "left out: they bounced before");
   * ```
   */
  readonly suppression?: SuppressionPolicy;
}

/** What `enqueue()` returns. */
export interface EnqueueResult {
  /** The row's id (UUIDv7, time-ordered). */
  readonly id: string;
  /** The RFC 5322 Message-ID, with angle brackets; every resend and replay keeps it. */
  readonly messageId: string;
  /**
   * Recipients left out of the envelope by `suppression: "skip"`, lower-cased; `[]` when none (always
   * so with the other policies). When it holds every recipient, the mail was written as `cancelled`.
   */
  readonly suppressed: readonly string[];
}

/** A Prisma promise (what Prisma's own queries return): lazy, and accepted by `$transaction([...])`. */
export type EnqueuePromise<T> = Prisma.PrismaPromise<T>;

/** What Prisma hands each element of `$transaction([...])` (its `PrismaPromiseBatchTransaction`). */
interface BatchTransaction {
  readonly kind: "batch";
  readonly index: number;
}

/** A query promise as Prisma builds it: `requestTransaction` makes it one element of a batch. */
interface QueryPromise<T> extends PromiseLike<T> {
  requestTransaction?(batch: BatchTransaction): PromiseLike<unknown>;
}

/** The subset of a Prisma model delegate the extension uses. */
interface OutboxDelegate {
  create(args: { data: Record<string, unknown>; select: { id: true } }): QueryPromise<{ id: string }>;
  createMany(args: { data: Record<string, unknown>[] }): QueryPromise<{ count: number }>;
  findFirst(args: { where: Record<string, unknown>; select: { id: true; messageId: true } }): QueryPromise<{ id: string; messageId: string } | null>;
  findMany(args: { where: Record<string, unknown>; select: { id: true; messageId: true; idempotencyKey: true } }): QueryPromise<{ id: string; messageId: string; idempotencyKey: string | null }[]>;
  /** The model's name in the schema (`OutboxEmail`). */
  readonly $name?: string;
  /** The client (or interactive transaction) the delegate belongs to. */
  readonly $parent?: unknown;
}

/**
 * Builds a Prisma promise the way Prisma's runtime does (`createPrismaPromise`): nothing runs until
 * it is awaited (then once, memoised) or until `$transaction([...])` calls `requestTransaction`
 * with its batch (then the batch decides). Prisma recognises its promises by
 * `Symbol.toStringTag === "PrismaPromise"`.
 */
function prismaPromise<T>(run: (batch: BatchTransaction | undefined) => Promise<T>): EnqueuePromise<T> {
  let started: Promise<T> | undefined;
  const once = () => (started ??= run(undefined));
  const promise = {
    then: (onFulfilled?: ((v: T) => unknown) | null, onRejected?: ((e: unknown) => unknown) | null) => once().then(onFulfilled, onRejected),
    catch: (onRejected?: ((e: unknown) => unknown) | null) => once().catch(onRejected),
    finally: (onFinally?: (() => void) | null) => once().finally(onFinally),
    requestTransaction: (batch: BatchTransaction) => run(batch),
    [Symbol.toStringTag]: "PrismaPromise" as const,
  };
  return promise as unknown as EnqueuePromise<T>;
}

/**
 * Runs `query` alone (awaited: on the delegate's own client or interactive transaction) or as its
 * element of the batch. In a batch, Prisma holds every element at a lock until the last one has
 * arrived, then runs them all in one database transaction; an element that fails before it
 * arrives (bad input here) makes `$transaction([...])` reject and nothing runs at all, the way a
 * Prisma validation error does.
 */
function execute<T>(query: QueryPromise<T>, batch: BatchTransaction | undefined): PromiseLike<T> {
  if (batch === undefined) return query;
  if (typeof query.requestTransaction !== "function") {
    throw new TypeError("prisma-mail-outbox: this Prisma client's queries cannot join $transaction([...]); use $transaction(async (tx) => ...) instead.");
  }
  return query.requestTransaction(batch) as PromiseLike<T>;
}

/**
 * A unique violation (P2002) of this outbox write itself. In a batch every element is rejected with
 * the error of the statement that failed, so a unique violation of another model (a duplicate
 * `User.email`) must not be mistaken for a duplicate idempotency key: Prisma names the model in
 * `meta.modelName`, and sometimes the failing element in `batchRequestIdx`.
 */
function isOwnUniqueViolation(err: unknown, delegate: OutboxDelegate, batch: BatchTransaction | undefined): boolean {
  const e = err as { code?: unknown; batchRequestIdx?: unknown; meta?: { modelName?: unknown } } | null;
  if (e?.code !== "P2002") return false;
  const model = e.meta?.modelName;
  if (model !== undefined && delegate.$name !== undefined && model !== delegate.$name) return false;
  return batch === undefined || typeof e.batchRequestIdx !== "number" || e.batchRequestIdx === batch.index;
}

// Mail enqueued per interactive-transaction delegate (`tx.outboxEmail`, one object per transaction),
// for `expectEnqueued(tx, ...)` in prisma-mail-outbox/testing. Shared through a global symbol so a
// second copy of this module (a test runner's own module registry) sees the same records. Only
// transaction delegates are keys: they are dropped with their transaction, so nothing accumulates.
const ENQUEUED_KEY = Symbol.for("prisma-mail-outbox.enqueuedInTransaction");
type EnqueuedRegistry = WeakMap<object, string[]>;
function enqueuedRegistry(): EnqueuedRegistry {
  const g = globalThis as { [ENQUEUED_KEY]?: EnqueuedRegistry };
  return (g[ENQUEUED_KEY] ??= new WeakMap());
}

/**
 * Whether a Prisma client is an interactive transaction's (`tx` in `$transaction(async (tx) => ...)`):
 * Prisma leaves `$connect` out of those (its `ITXClientDenyList`).
 * @internal
 */
export function isTransactionClient(client: unknown): boolean {
  return typeof client === "object" && client !== null && typeof (client as { $connect?: unknown }).$connect !== "function";
}

// Whether a delegate belongs to an interactive transaction is read through Prisma's proxies
// (`delegate.$parent`, ~50 µs per enqueue): asked only once a delegate has recorded this many ids,
// so a transaction's few enqueues never pay it and a client's own long-lived delegate (outside any
// transaction, where nothing reads the records) holds a bounded list before it is dropped.
const RECORD_CHECK_AT = 64;
const verifiedTransaction = new WeakSet<object>();
const notTransaction = new WeakSet<object>();

function recordEnqueued(delegate: OutboxDelegate, ids: readonly string[]): void {
  if (notTransaction.has(delegate)) return;
  const registry = enqueuedRegistry();
  let list = registry.get(delegate);
  if (list) list.push(...ids);
  else registry.set(delegate, (list = [...ids]));
  if (list.length >= RECORD_CHECK_AT && !verifiedTransaction.has(delegate)) {
    if (isTransactionClient(delegate.$parent)) verifiedTransaction.add(delegate);
    else {
      registry.delete(delegate);
      notTransaction.add(delegate);
    }
  }
}

/**
 * The ids of the mail enqueued through this transaction's `outboxEmail` delegate (for
 * prisma-mail-outbox/testing); undefined when nothing was enqueued through it.
 * @internal
 */
export function enqueuedInTransaction(delegate: object): readonly string[] | undefined {
  return enqueuedRegistry().get(delegate);
}

/** Options of `compose()` / `composeOutboxMail()` besides the extension's. */
export interface ComposeOutboxMailOptions {
  /** The compose time: the `Date` header, and `sendAt` when the mail has none. @default new Date() */
  readonly now?: Date;
}

/** What a genuine `ComposedOutboxMail` holds; kept out of the value's reach (module-private). */
interface ComposedState {
  readonly mail: ComposedMail;
  readonly composedAt: Date;
  /** How many enqueues of it have started (a later one first checks the row is not there yet). */
  uses: number;
}
const composedStates = new WeakMap<object, ComposedState>();

/**
 * A mail composed before the transaction: the exact RFC 5322 bytes, envelope, Message-ID, subject,
 * metadata and size that `tx.outboxEmail.enqueue(composed)` writes, with nothing left to compose in
 * the transaction. Made only by `prisma.outboxEmail.compose(mail)` or `composeOutboxMail(mail, options)`
 * (the constructor is not for applications); immutable, and recognised by `enqueue` by identity, never
 * by its shape. It is one mail: it can be enqueued once (a retry after a rollback is fine); a second
 * enqueue once it is committed throws `ComposedMailAlreadyEnqueuedError`.
 */
export class ComposedOutboxMail {
  /** The row id it will have (UUIDv7, time-ordered by compose time). */
  readonly id: string;
  /** The RFC 5322 Message-ID, with angle brackets. */
  readonly messageId: string;
  readonly envelopeFrom: string;
  /** Every recipient (to, cc, bcc), before the suppression list is read (that happens at enqueue). */
  readonly envelopeTo: readonly string[];
  readonly subject: string;
  /** Bytes of the composed message. */
  readonly size: number;
  readonly idempotencyKey: string | null;

  /** @internal Use `prisma.outboxEmail.compose(mail)` or `composeOutboxMail(mail, options)`. */
  constructor(token: symbol, mail: ComposedMail, composedAt: Date) {
    if (token !== CONSTRUCT) throw new TypeError("prisma-mail-outbox: make a ComposedOutboxMail with prisma.outboxEmail.compose(mail) or composeOutboxMail(mail, options).");
    this.id = mail.id;
    this.messageId = mail.messageId;
    this.envelopeFrom = mail.envelopeFrom;
    this.envelopeTo = Object.freeze([...mail.envelopeTo]);
    this.subject = mail.subject;
    this.size = mail.size;
    this.idempotencyKey = mail.idempotencyKey;
    composedStates.set(this, { mail, composedAt: new Date(composedAt.getTime()), uses: 0 });
    Object.freeze(this);
  }

  /** The compose time (the message's `Date` header). A copy. */
  get composedAt(): Date {
    return new Date(composedStates.get(this)!.composedAt.getTime());
  }

  /** When the relay may hand it over: the mail's `sendAt`, else the compose time. A copy. */
  get sendAt(): Date {
    return new Date(composedStates.get(this)!.mail.sendAt.getTime());
  }

  /** A copy of the composed RFC 5322 message (what the relay hands to the MTA). */
  get raw(): Buffer {
    return Buffer.from(composedStates.get(this)!.mail.raw);
  }
}
const CONSTRUCT = Symbol("ComposedOutboxMail");

/** The state of a genuine composed mail; undefined for anything else (plain input included). */
function composedStateOf(value: unknown): ComposedState | undefined {
  return typeof value === "object" && value !== null ? composedStates.get(value) : undefined;
}

async function composeWith(defaults: ComposeDefaults, mail: unknown, options: ComposeOutboxMailOptions | undefined): Promise<ComposedOutboxMail> {
  const now = options?.now !== undefined ? new Date(options.now instanceof Date ? options.now.getTime() : NaN) : new Date();
  const composed = await composeMail(mail, defaults, now);
  // The Buffer is private to the state; freeze what can be frozen so the value cannot drift.
  const frozen: ComposedMail = Object.freeze({ ...composed, envelopeTo: Object.freeze([...composed.envelopeTo]), sendAt: new Date(composed.sendAt.getTime()) });
  return new ComposedOutboxMail(CONSTRUCT, frozen, now);
}

/**
 * Composes a mail outside any transaction, with the options of `mailOutbox(options)` (`defaultFrom`,
 * `maxAttempts`, `maxMessageBytes`, `maxHeaderBytes`, `messageIdDomain`), for
 * `tx.outboxEmail.enqueue(composed)` later: the same checks and errors as `enqueue` (`InvalidMailError`
 * listing every problem, `MailTooLargeError`, `HeaderTooLargeError`), thrown here, before any
 * transaction. `prisma.outboxEmail.compose(mail)` does the same with the extension's own options.
 *
 * @example
 * ```ts
 * const composed = await composeOutboxMail({ to: email, subject: "Welcome", text }, { defaultFrom: "shop@example.com" });
 * await prisma.$transaction(async (tx) => {
 *   await tx.user.create({ data: { email } });
 *   await tx.outboxEmail.enqueue(composed); // only the INSERT
 * });
 * ```
 */
export function composeOutboxMail(mail: MailInput, options: MailOutboxOptions & ComposeOutboxMailOptions = {}): Promise<ComposedOutboxMail> {
  try {
    return composeWith(resolveDefaults(options), mail, options);
  } catch (err) {
    return Promise.reject(err);
  }
}

/**
 * Before a composed mail's insert: the first enqueue of it costs nothing; a later one (the same value
 * again, or after a rollback) first looks the id up, so a committed copy is reported clearly instead of
 * as a unique violation (which on PostgreSQL would also abort the caller's transaction).
 */
async function checkComposedNotEnqueued(delegate: OutboxDelegate, states: readonly ComposedState[]): Promise<void> {
  const again = states.filter((st) => st.uses > 0);
  for (const st of states) st.uses++;
  if (again.length === 0) return;
  const found = again.length === 1
    ? await delegate.findFirst({ where: { id: again[0]!.mail.id }, select: { id: true, messageId: true } })
    : (await delegate.findMany({ where: { id: { in: again.map((st) => st.mail.id) } }, select: { id: true, messageId: true, idempotencyKey: true } }))[0] ?? null;
  if (found) throw new ComposedMailAlreadyEnqueuedError(found.id, found.messageId);
}

function resolveDefaults(options: MailOutboxOptions): ComposeDefaults {
  if (options === null || typeof options !== "object") throw new OptionsError("Expected `options` to be an object.");
  const defaults: ComposeDefaults = {
    maxAttempts: options.maxAttempts ?? DEFAULT_MAX_ATTEMPTS,
    maxMessageBytes: options.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES,
    maxHeaderBytes: options.maxHeaderBytes ?? DEFAULT_MAX_HEADER_BYTES,
    ...(options.defaultFrom !== undefined ? { defaultFrom: options.defaultFrom } : {}),
    ...(options.messageIdDomain !== undefined ? { messageIdDomain: options.messageIdDomain } : {}),
  };
  const problems = validateComposeDefaults(defaults);
  if (problems.length > 0) throw new OptionsError(`Invalid mailOutbox() options: ${problems.join(" ")}`);
  return defaults;
}

/**
 * The row of a composed mail. With a split from the suppression list: the kept recipients as the
 * envelope, or (none kept) status `cancelled` with the reason and the envelope left whole.
 * `traceContext` (a W3C traceparent, see tracing.ts) only when there is one: a model without the
 * field never sees it.
 */
function toRow(m: ComposedMail, now: Date, split: RecipientSplit | null, traceContext: string | null): Record<string, unknown> {
  const allSuppressed = split !== null && split.kept.length === 0;
  const row: Record<string, unknown> = {
    id: m.id,
    messageId: m.messageId,
    status: allSuppressed ? "cancelled" : "pending",
    priority: m.priority,
    envelopeFrom: m.envelopeFrom,
    envelopeTo: split === null || allSuppressed ? [...m.envelopeTo] : split.kept,
    subject: m.subject,
    raw: m.raw,
    size: m.size,
    attempts: 0,
    maxAttempts: m.maxAttempts,
    sendAt: m.sendAt,
    nextAttemptAt: m.sendAt,
    createdAt: now,
    updatedAt: now,
  };
  if (m.idempotencyKey !== null) row.idempotencyKey = m.idempotencyKey;
  if (m.metadata !== null) row.metadata = m.metadata;
  if (allSuppressed) row.lastError = allSuppressedMessage(split.suppressed);
  if (traceContext !== null) row.traceContext = traceContext;
  return row;
}

/**
 * Apply the suppression policy to composed mails: per mail its recipient split (null: policy off,
 * nothing read). Under "refuse" a suppressed recipient in any mail throws SuppressedRecipientError
 * naming all of them. The read goes through `client.outboxSuppression`, where `client` is the
 * delegate's parent: the interactive transaction (`tx`), so the read is part of it, or the client.
 */
async function applySuppression(policy: SuppressionPolicy, client: unknown, mails: readonly ComposedMail[], now: Date): Promise<(RecipientSplit | null)[]> {
  if (policy === "off") return mails.map(() => null);
  const found = await findSuppressedWithPrisma(client, mails.flatMap((m) => m.envelopeTo), now);
  const splits = mails.map((m) => splitRecipients(m.envelopeTo, found));
  if (policy === "refuse") {
    const refused = [...new Set(splits.flatMap((s) => s.suppressed))];
    if (refused.length > 0) throw new SuppressedRecipientError(refused);
    return mails.map(() => null);
  }
  return splits;
}

function resultOf(m: ComposedMail, split: RecipientSplit | null): EnqueueResult {
  return { id: m.id, messageId: m.messageId, suppressed: split?.suppressed ?? [] };
}

/**
 * The outbox as a Prisma extension. Add the `OutboxEmail` and `OutboxEmailAttempt` models to your
 * schema (`mail-outbox init`), then extend your client:
 *
 * @example
 * ```ts
 * const prisma = new PrismaClient({ adapter }).$extends(mailOutbox({ defaultFrom: "shop@example.com" }));
 * await prisma.$transaction(async (tx) => {
 *   const user = await tx.user.create({ data: { email } });
 *   await tx.outboxEmail.enqueue({ to: email, subject: "Welcome", text: `Hello ${user.name}` });
 * });
 * ```
 */
export function mailOutbox(options: MailOutboxOptions = {}) {
  const defaults = resolveDefaults(options);
  const suppression = checkSuppressionPolicy(options.suppression);
  return Prisma.defineExtension((client) =>
    client.$extends({
      name: "prisma-mail-outbox",
      model: {
        outboxEmail: {
          /**
           * Compose a mail now, outside any transaction, with this extension's options, for
           * `tx.outboxEmail.enqueue(composed)` later (hot paths: the transaction then only inserts, so it
           * holds its locks for less time). Bad input throws here, with the errors `enqueue` gives.
           * The message's `Date` header is the compose time (`options.now`, default now), and so is
           * `sendAt` when the mail has none. Everything decided at enqueue time stays there: the
           * suppression list (read in the enqueuing transaction, under the enqueuing extension's
           * policy), the idempotency-key check, the trace context (the span active at `enqueue()`), and
           * the row's `createdAt`. Options that shape the message (`defaultFrom`, `maxAttempts`, the size
           * limits, `messageIdDomain`) are those of the extension that composed it, even when another
           * extension's client enqueues it. A composed mail is one mail: enqueue it once.
           *
           * @example
           * ```ts
           * const composed = await prisma.outboxEmail.compose({ to: email, subject: "Welcome", text });
           * await prisma.$transaction(async (tx) => {
           *   await tx.user.create({ data: { email } });
           *   await tx.outboxEmail.enqueue(composed);
           * });
           * ```
           */
          compose<T>(this: T, mail: MailInput, options?: ComposeOutboxMailOptions): Promise<ComposedOutboxMail> {
            return composeWith(defaults, mail, options);
          },

          /**
           * Put one mail in the outbox, in the transaction this delegate belongs to.
           *
           * - On `tx.outboxEmail` inside `prisma.$transaction(async (tx) => ...)`: the mail is written in that
           *   transaction. If it commits, the relay will hand the mail to the MTA (at least once, with the
           *   Message-ID returned here). If it rolls back, the mail never existed and is never sent.
           * - As an element of a batch, `prisma.$transaction([prisma.user.create(...), prisma.outboxEmail.enqueue(...)])`:
           *   the same, with the batch's transaction. Bad input or a key already in the outbox rejects the
           *   whole batch before any of it runs: nothing is written.
           * - On `prisma.outboxEmail` outside a transaction: the mail is written and committed at once, on
           *   its own, independent of any business write. It will be sent even if your next write fails.
           *   The outbox guarantee (mail if and only if your data commits) needs a transaction.
           * - Bad input rejects with `InvalidMailError` (listing every problem) before anything is written; a
           *   key already used rejects with `DuplicateIdempotencyKeyError`; under `suppression: "refuse"`, a
           *   suppressed recipient rejects with `SuppressedRecipientError`. In an interactive transaction the
           *   transaction stays yours: catch the error and commit your business data, or let it propagate
           *   to roll back.
           * - Suppression (option `suppression`, not "off"): in an interactive transaction the list is read
           *   in that transaction, just before the insert. In a batch, `$transaction([...])` runs only the
           *   elements' own statements, so the list is read (like the idempotency key) just before the batch's
           *   transaction starts, on the client's own connection: a `suppress add` or `remove` committed by
           *   another process in that instant may or may not be seen. Use an interactive transaction when
           *   the check must be part of yours.
           * - Traces: with `@opentelemetry/api` installed and a span active when `enqueue()` is called (not
           *   when it is awaited), that span's context is stored with the mail as a W3C `traceparent`
           *   (field `traceContext`, written only when your model has it), and the relay's hand-off span
           *   links to it.
           *
           * Like Prisma's own queries, the returned promise is lazy: nothing happens until it is awaited
           * (or passed to `$transaction([...])`). The complete RFC 5322 message is composed then, so the
           * relay forwards these exact bytes and a replay sends exactly what was committed.
           *
           * Hot paths: pass a `ComposedOutboxMail` (from `prisma.outboxEmail.compose(mail)` or
           * `composeOutboxMail(mail, options)`, made before the transaction) and nothing is composed here:
           * its bytes are inserted as they are; the idempotency key, suppression, trace context, result and
           * batch behaviour are those of `enqueue(mail)`. Enqueue it once: a second enqueue once it is
           * committed throws `ComposedMailAlreadyEnqueuedError` (a retry after a rollback is fine).
           *
           * @example
           * ```ts
           * await prisma.$transaction(async (tx) => {
           *   const user = await tx.user.create({ data: { email } });
           *   await tx.outboxEmail.enqueue({ to: email, subject: "Welcome", text: `Hello ${user.name}` });
           * });
           * // or, as a batch:
           * await prisma.$transaction([
           *   prisma.user.create({ data: { email } }),
           *   prisma.outboxEmail.enqueue({ to: email, subject: "Welcome", text: "Hello" }),
           * ]);
           * ```
           */
          enqueue<T>(this: T, mail: MailInput | ComposedOutboxMail): EnqueuePromise<EnqueueResult> {
            const delegate = Prisma.getExtensionContext(this) as unknown as OutboxDelegate;
            // The caller's active span (OpenTelemetry), read now, in the caller's context.
            const traceContext = traceContextFor(delegate);
            // Composed before (compose()/composeOutboxMail()): only the insert is left to do.
            const state = composedStateOf(mail);
            return prismaPromise(async (batch) => {
              const now = new Date();
              const composed = state !== undefined ? state.mail : await composeMail(mail, defaults, now);
              if (state !== undefined) await checkComposedNotEnqueued(delegate, [state]);
              if (composed.idempotencyKey !== null) {
                // Look first: on PostgreSQL a failed INSERT would abort the caller's transaction. In a batch
                // this read runs before the batch's transaction, on the client's own connection.
                const existing = await delegate.findFirst({ where: { idempotencyKey: composed.idempotencyKey }, select: { id: true, messageId: true } });
                if (existing) throw new DuplicateIdempotencyKeyError(composed.idempotencyKey, existing.id, existing.messageId);
              }
              // Also before the batch's transaction when in a batch (see above), and only when the policy is on.
              const [split = null] = await applySuppression(suppression, delegate.$parent, [composed], now);
              try {
                await execute(delegate.create({ data: toRow(composed, now, split, traceContext), select: { id: true } }), batch);
              } catch (err) {
                if (state !== undefined && state.uses > 1 && isOwnUniqueViolation(err, delegate, batch)) {
                  throw new ComposedMailAlreadyEnqueuedError(composed.id, composed.messageId, { cause: err, concurrent: true });
                }
                if (composed.idempotencyKey !== null && isOwnUniqueViolation(err, delegate, batch)) {
                  throw new DuplicateIdempotencyKeyError(composed.idempotencyKey, null, null, { cause: err });
                }
                throw err;
              }
              if (batch === undefined) recordEnqueued(delegate, [composed.id]);
              return resultOf(composed, split);
            });
          },

          /**
           * Put several mails in the outbox with one INSERT, in the transaction this delegate belongs to.
           * All or nothing: if any mail is invalid, `InvalidMailError` lists the problems of every mail
           * (prefixed `mails[i].`) and nothing is written. Same commit, rollback, batch and
           * outside-a-transaction behaviour as `enqueue`. The suppression list is read once for every
           * mail's recipients: under "refuse" a suppressed recipient in any mail refuses the whole call
           * (`SuppressedRecipientError` naming all of them); under "skip" each result lists its own.
           */
          enqueueMany<T>(this: T, mails: readonly (MailInput | ComposedOutboxMail)[]): EnqueuePromise<EnqueueResult[]> {
            const delegate = Prisma.getExtensionContext(this) as unknown as OutboxDelegate;
            const traceContext = traceContextFor(delegate);
            return prismaPromise(async (batch) => {
              if (!Array.isArray(mails)) throw new InvalidMailError(["mails: expected an array of mails"]);
              if (mails.length === 0) {
                // Nothing to write; in a batch Prisma still waits for this element to arrive.
                if (batch !== undefined) await execute(delegate.findMany({ where: { id: { in: [] } }, select: { id: true, messageId: true, idempotencyKey: true } }), batch);
                return [];
              }
              const now = new Date();
              const problems: string[] = [];
              const composed: ComposedMail[] = [];
              const states: ComposedState[] = [];
              const seen = new Map<ComposedState, number>();
              for (let i = 0; i < mails.length; i++) {
                const state = composedStateOf(mails[i]);
                if (state !== undefined) {
                  const first = seen.get(state);
                  if (first !== undefined) problems.push(`mails[${i}]: the same composed mail as mails[${first}] (a composed mail is one mail; compose it again for another copy)`);
                  else seen.set(state, i);
                  states.push(state);
                  composed.push(state.mail);
                  continue;
                }
                try {
                  composed.push(await composeMail(mails[i], defaults, now));
                } catch (err) {
                  if (err instanceof InvalidMailError) problems.push(...err.problems.map((p) => `mails[${i}].${p}`));
                  else throw err;
                }
              }
              const keys = new Map<string, number>();
              composed.forEach((m, i) => {
                if (m.idempotencyKey === null) return;
                const first = keys.get(m.idempotencyKey);
                if (first !== undefined) problems.push(`mails[${i}].idempotencyKey: the same key as mails[${first}]`);
                else keys.set(m.idempotencyKey, i);
              });
              if (problems.length > 0) throw new InvalidMailError(problems);
              if (states.length > 0) await checkComposedNotEnqueued(delegate, states);
              if (keys.size > 0) {
                const existing = await delegate.findMany({
                  where: { idempotencyKey: { in: [...keys.keys()] } },
                  select: { id: true, messageId: true, idempotencyKey: true },
                });
                const hit = existing[0];
                if (hit) throw new DuplicateIdempotencyKeyError(hit.idempotencyKey ?? "", hit.id, hit.messageId);
              }
              // One read for every mail's recipients; refuses the whole call if any is suppressed under "refuse".
              const splits = await applySuppression(suppression, delegate.$parent, composed, now);
              try {
                await execute(delegate.createMany({ data: composed.map((m, i) => toRow(m, now, splits[i] ?? null, traceContext)) }), batch);
              } catch (err) {
                const again = states.find((st) => st.uses > 1);
                if (again !== undefined && isOwnUniqueViolation(err, delegate, batch)) {
                  throw new ComposedMailAlreadyEnqueuedError(again.mail.id, again.mail.messageId, { cause: err, concurrent: true });
                }
                if (keys.size > 0 && isOwnUniqueViolation(err, delegate, batch)) {
                  throw new DuplicateIdempotencyKeyError([...keys.keys()].join(", "), null, null, { cause: err });
                }
                throw err;
              }
              if (batch === undefined) recordEnqueued(delegate, composed.map((m) => m.id));
              return composed.map((m, i) => resultOf(m, splits[i] ?? null));
            });
          },
        },
      },
    }),
  );
}
