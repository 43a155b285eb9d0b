/**
 * The Prisma extension: `enqueue()` and `enqueueMany()` on the `outboxEmail` model, written in the
 * caller's transaction.
 */
import { Prisma } from "@prisma/client/extension";
import { composeMail, DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_HEADER_BYTES, DEFAULT_MAX_MESSAGE_BYTES, validateComposeDefaults } from "./compose.js";
import { DuplicateIdempotencyKeyError, InvalidMailError, OptionsError } from "./errors.js";
import type { AddressInput, ComposeDefaults, ComposedMail, MailInput } from "./types.js";

export interface MailOutboxOptions {
  /** Sender used when a mail has no `from`. */
  readonly defaultFrom?: AddressInput;
  /** Attempts before a mail is parked as dead, when the mail does not say. @default 25 */
  readonly maxAttempts?: number;
  /** Largest composed message, in bytes. @default 10 MiB */
  readonly maxMessageBytes?: number;
  /** Largest composed header section, in bytes. @default 100,000 (below Postfix's `header_size_limit`) */
  readonly maxHeaderBytes?: number;
  /** Right-hand side of generated Message-IDs. @default the sender's domain */
  readonly messageIdDomain?: string;
}

/** What `enqueue()` returns. */
export interface EnqueueResult {
  /** The row's id (UUIDv7, time-ordered). */
  readonly id: string;
  /** The RFC 5322 Message-ID, with angle brackets; every resend and replay keeps it. */
  readonly messageId: string;
}

/** The subset of a Prisma model delegate the extension uses. */
interface OutboxDelegate {
  create(args: { data: Record<string, unknown>; select: { id: true } }): Promise<{ id: string }>;
  createMany(args: { data: Record<string, unknown>[] }): Promise<{ count: number }>;
  findFirst(args: { where: Record<string, unknown>; select: { id: true; messageId: true } }): Promise<{ id: string; messageId: string } | null>;
  findMany(args: { where: Record<string, unknown>; select: { id: true; messageId: true; idempotencyKey: true } }): Promise<{ id: string; messageId: string; idempotencyKey: string | null }[]>;
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

function toRow(m: ComposedMail, now: Date): Record<string, unknown> {
  const row: Record<string, unknown> = {
    id: m.id,
    messageId: m.messageId,
    status: "pending",
    priority: m.priority,
    envelopeFrom: m.envelopeFrom,
    envelopeTo: [...m.envelopeTo],
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
  return row;
}

function isUniqueViolation(err: unknown): boolean {
  return (err as { code?: unknown } | null)?.code === "P2002";
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
  return Prisma.defineExtension((client) =>
    client.$extends({
      name: "prisma-mail-outbox",
      model: {
        outboxEmail: {
          /**
           * Put one mail in the outbox, in the transaction this delegate belongs to.
           *
           * - Called on `tx.outboxEmail` inside `prisma.$transaction(async (tx) => ...)`: the mail is written
           *   in that transaction. If it commits, the relay will hand the mail to the MTA (at least once,
           *   with the Message-ID returned here). If it rolls back, the mail never existed and is never sent.
           * - Called on `prisma.outboxEmail`: the mail is written and committed on its own.
           * - Bad input throws `InvalidMailError` (listing every problem) before anything is written; a key
           *   already used throws `DuplicateIdempotencyKeyError`. The transaction stays yours: catch the error
           *   and commit your business data, or let it propagate to roll back.
           *
           * The complete RFC 5322 message is composed here, so the relay forwards these exact bytes and a
           * replay sends exactly what was committed.
           */
          async enqueue<T>(this: T, mail: MailInput): Promise<EnqueueResult> {
            const delegate = Prisma.getExtensionContext(this) as unknown as OutboxDelegate;
            const now = new Date();
            const composed = await composeMail(mail, defaults, now);
            if (composed.idempotencyKey !== null) {
              // Look first: on PostgreSQL a failed INSERT would abort the caller's transaction.
              const existing = await delegate.findFirst({ where: { idempotencyKey: composed.idempotencyKey }, select: { id: true, messageId: true } });
              if (existing) throw new DuplicateIdempotencyKeyError(composed.idempotencyKey, existing.id, existing.messageId);
            }
            try {
              await delegate.create({ data: toRow(composed, now), select: { id: true } });
            } catch (err) {
              if (composed.idempotencyKey !== null && isUniqueViolation(err)) {
                throw new DuplicateIdempotencyKeyError(composed.idempotencyKey, null, null, { cause: err });
              }
              throw err;
            }
            return { id: composed.id, messageId: composed.messageId };
          },

          /**
           * Put several mails in the outbox with one INSERT, in the transaction this delegate belongs to.
           * All or nothing: if any mail is invalid, `InvalidMailError` lists the problems of every mail
           * (prefixed `mails[i].`) and nothing is written. Same commit and rollback guarantees as `enqueue`.
           */
          async enqueueMany<T>(this: T, mails: readonly MailInput[]): Promise<EnqueueResult[]> {
            const delegate = Prisma.getExtensionContext(this) as unknown as OutboxDelegate;
            if (!Array.isArray(mails)) throw new InvalidMailError(["mails: expected an array of mails"]);
            if (mails.length === 0) return [];
            const now = new Date();
            const problems: string[] = [];
            const composed: ComposedMail[] = [];
            for (let i = 0; i < mails.length; i++) {
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
            if (keys.size > 0) {
              const existing = await delegate.findMany({
                where: { idempotencyKey: { in: [...keys.keys()] } },
                select: { id: true, messageId: true, idempotencyKey: true },
              });
              const hit = existing[0];
              if (hit) throw new DuplicateIdempotencyKeyError(hit.idempotencyKey ?? "", hit.id, hit.messageId);
            }
            try {
              await delegate.createMany({ data: composed.map((m) => toRow(m, now)) });
            } catch (err) {
              if (keys.size > 0 && isUniqueViolation(err)) {
                throw new DuplicateIdempotencyKeyError([...keys.keys()].join(", "), null, null, { cause: err });
              }
              throw err;
            }
            return composed.map((m) => ({ id: m.id, messageId: m.messageId }));
          },
        },
      },
    }),
  );
}
