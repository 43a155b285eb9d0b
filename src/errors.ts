/**
 * Every error this library throws on purpose. Each has a stable `name`, an optional
 * `cause`, and a message that says what to do about it.
 */

/** Base class: `err instanceof MailOutboxError` catches everything thrown on purpose here. */
export class MailOutboxError extends Error {
  override name = "MailOutboxError";
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
  }
}

/**
 * The mail given to `enqueue()` cannot be sent as it is. Nothing was written.
 * `problems` lists every problem found, one sentence each, naming the field.
 */
export class InvalidMailError extends MailOutboxError {
  override name = "InvalidMailError";
  readonly problems: readonly string[];
  constructor(problems: readonly string[], options?: { cause?: unknown }) {
    super(
      `Mail refused, nothing was written (${problems.length} problem${problems.length === 1 ? "" : "s"}):\n` +
        problems.map((p) => `  - ${p}`).join("\n"),
      options,
    );
    this.problems = problems;
  }
}

/** The composed message is larger than `maxMessageBytes`. Nothing was written. */
export class MailTooLargeError extends InvalidMailError {
  override name = "MailTooLargeError";
  readonly size: number;
  readonly limit: number;
  constructor(size: number, limit: number, options?: { cause?: unknown }) {
    super(
      [
        `the composed message is ${size} bytes, over the limit of ${limit} bytes (raise maxMessageBytes, or link to large files instead of attaching them)`,
      ],
      options,
    );
    this.size = size;
    this.limit = limit;
  }
}

/**
 * The header section of the composed message (every byte before the first empty line) is larger
 * than `maxHeaderBytes` (default 100,000). Nothing was written. MTAs cut such a header section
 * rather than refuse the mail: Postfix truncates it past `header_size_limit` (102,400 by default).
 * `size` is the composed header size, or a lower bound when `atLeast` (refused before composing).
 */
export class HeaderTooLargeError extends InvalidMailError {
  override name = "HeaderTooLargeError";
  readonly size: number;
  readonly limit: number;
  constructor(size: number, limit: number, options?: { atLeast?: boolean; cause?: unknown }) {
    super(
      [
        `headers: the header section of the message is ${options?.atLeast === true ? "at least " : ""}${size} bytes, over the limit of ${limit} bytes, ` +
          "past which MTAs cut it (Postfix's header_size_limit is 102,400); put fewer recipients in to and cc (use bcc, or send several mails), " +
          "shorten the subject or the extra headers, or raise maxHeaderBytes if your MTA takes more",
      ],
      options?.cause !== undefined ? { cause: options.cause } : undefined,
    );
    this.size = size;
    this.limit = limit;
  }
}

/**
 * A mail with this idempotency key is already in the outbox. Nothing was written;
 * `existingId` and `existingMessageId` name the row that holds the key.
 *
 * On PostgreSQL a failed statement aborts the surrounding transaction; to keep it usable,
 * `enqueue()` looks the key up first, so this error is thrown before any INSERT.
 */
export class DuplicateIdempotencyKeyError extends MailOutboxError {
  override name = "DuplicateIdempotencyKeyError";
  readonly idempotencyKey: string;
  /** The row holding the key; null when a concurrent transaction holds it and it is not yet visible. */
  readonly existingId: string | null;
  readonly existingMessageId: string | null;
  constructor(idempotencyKey: string, existingId: string | null, existingMessageId: string | null, options?: { cause?: unknown }) {
    super(
      existingId === null
        ? `A mail with idempotency key ${JSON.stringify(idempotencyKey)} was written by a concurrent transaction; nothing was written here. Treat the operation as done, or use a new key.`
        : `A mail with idempotency key ${JSON.stringify(idempotencyKey)} is already in the outbox (id ${existingId}, Message-ID ${existingMessageId}); nothing was written. Treat the operation as done, or use a new key.`,
      options,
    );
    this.idempotencyKey = idempotencyKey;
    this.existingId = existingId;
    this.existingMessageId = existingMessageId;
  }
}

/**
 * `enqueue(composed)` of a `ComposedOutboxMail` that is already in the outbox: a composed mail is one
 * mail with one id and Message-ID, so it can be written once. Retrying a transaction that rolled back
 * is fine (the row is not there); for a second copy of the mail, compose it again. Nothing was written.
 */
export class ComposedMailAlreadyEnqueuedError extends MailOutboxError {
  override name = "ComposedMailAlreadyEnqueuedError";
  readonly id: string;
  readonly messageId: string;
  constructor(id: string, messageId: string, options?: { cause?: unknown; concurrent?: boolean }) {
    super(
      options?.concurrent === true
        ? `This composed mail (id ${id}, Message-ID ${messageId}) was written by a concurrent transaction, or its idempotency key is taken; nothing was written here. A composed mail can be enqueued once: compose the mail again for another copy.`
        : `This composed mail (id ${id}, Message-ID ${messageId}) is already in the outbox; nothing was written. A composed mail can be enqueued once (retrying after a rollback is fine): compose the mail again for another copy.`,
      options,
    );
    this.id = id;
    this.messageId = messageId;
  }
}

/**
 * `enqueue()` under the suppression policy `"refuse"`: recipients of the mail are on the
 * suppression list (they hard-bounced before, or an operator put them there). Nothing was written;
 * thrown inside the transaction, so catching it or letting it roll the transaction back is the
 * caller's choice. `recipients` are the suppressed addresses, lower-cased.
 */
export class SuppressedRecipientError extends MailOutboxError {
  override name = "SuppressedRecipientError";
  readonly recipients: readonly string[];
  constructor(recipients: readonly string[], options?: { cause?: unknown }) {
    super(
      `Mail refused, nothing was written: ${recipients.length === 1 ? "recipient" : "recipients"} ${recipients.join(", ")} ${recipients.length === 1 ? "is" : "are"} on the suppression list (hard bounces). ` +
        "Remove an address with `mail-outbox suppress remove <address>`, or enqueue with suppression \"skip\" to leave such recipients out.",
      options,
    );
    this.recipients = recipients;
  }
}

/**
 * `ingest` was given something that is not a delivery status notification it can read
 * (RFC 3464 `multipart/report; report-type=delivery-status`), or one that names no mail of this
 * outbox. Nothing was recorded. `reason` says what was wrong.
 */
export class UnreadableReportError extends MailOutboxError {
  override name = "UnreadableReportError";
  readonly reason: string;
  constructor(reason: string, options?: { cause?: unknown }) {
    super(`Delivery report not recorded: ${reason}`, options);
    this.reason = reason;
  }
}

/**
 * `ingest` with a bounce secret configured got a report whose token (in `Original-Envelope-Id`
 * or the VERP return address) is missing or does not verify: it may be forged. Nothing was recorded.
 */
export class ForgedReportError extends MailOutboxError {
  override name = "ForgedReportError";
  constructor(reason: string, options?: { cause?: unknown }) {
    super(`Delivery report refused as possibly forged: ${reason}. Nothing was recorded.`, options);
  }
}

/** An option passed to one of this library's functions is invalid. */
export class OptionsError extends MailOutboxError {
  override name = "OptionsError";
}

/** The transport URL or transport options cannot be used. */
export class TransportConfigError extends OptionsError {
  override name = "TransportConfigError";
}

/** The database URL is missing, malformed, or names an unsupported database. */
export class DatabaseConfigError extends OptionsError {
  override name = "DatabaseConfigError";
}

/** The outbox table is missing or does not have the expected shape. */
export class SchemaError extends MailOutboxError {
  override name = "SchemaError";
}

/**
 * The outbox tables are missing, or lack a column the relay reads or writes, or have one of
 * another type: a setup step (`mail-outbox migrate`, or `prisma migrate deploy` when the outbox
 * models are in your Prisma migrations) was skipped, or a table was dropped. The relay refuses to
 * start with it, and reports it (event `warning`, log level error) when a table disappears while
 * it runs. `problems` has one sentence per problem; `missingTables` names the tables that are gone.
 */
export class SchemaNotReadyError extends SchemaError {
  override name = "SchemaNotReadyError";
  readonly problems: readonly string[];
  readonly missingTables: readonly string[];
  constructor(message: string, problems: readonly string[], missingTables: readonly string[], options?: { cause?: unknown }) {
    super(message, options);
    this.problems = problems;
    this.missingTables = missingTables;
  }
}

/** No row matches the id or Message-ID given to a CLI or admin function. */
export class NotFoundError extends MailOutboxError {
  override name = "NotFoundError";
}

/** A bulk operation whose filter matches everything was refused without an explicit `all`/`yes`. */
export class UnsafeOperationError extends MailOutboxError {
  override name = "UnsafeOperationError";
}

/** The relay was asked to start twice, or used after it stopped. */
export class RelayStateError extends MailOutboxError {
  override name = "RelayStateError";
}

/** The hand-off to the MTA did not finish within `timeoutMs` (for example `sendmail -bs` while Postfix is down). */
export class HandoffTimeoutError extends MailOutboxError {
  override name = "HandoffTimeoutError";
  readonly code = "ETIMEDOUT";
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
  }
}

/** The sendmail program exited non-zero or was killed by a signal: the mail was not handed over. */
export class SendmailExitError extends MailOutboxError {
  override name = "SendmailExitError";
  readonly code = "ESENDMAIL";
  readonly exitCode: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stderr: string;
  constructor(message: string, exitCode: number | null, signal: NodeJS.Signals | null, stderr: string, options?: { cause?: unknown }) {
    super(message, options);
    this.exitCode = exitCode;
    this.signal = signal;
    this.stderr = stderr;
  }
}

/**
 * The message has 8-bit bytes and the MTA does not offer 8BITMIME (RFC 6152), so it was not
 * sent: such a server may strip the eighth bit or refuse the data. Permanent (code `E8BITMIME`):
 * the same bytes would meet the same server again.
 */
export class EightBitMimeError extends MailOutboxError {
  override name = "EightBitMimeError";
  readonly code = "E8BITMIME";
  /** Where the first byte >= 0x80 is in the stored message; -1 when not known. */
  readonly offset: number;
  constructor(server: string, offset: number, options?: { cause?: unknown }) {
    super(
      `Not sent: the message has 8-bit bytes${offset >= 0 ? ` (the first at byte ${offset})` : ""} and ${server} does not offer 8BITMIME (RFC 6152). ` +
        "Enable 8BITMIME on that MTA (Postfix, Exim and Sendmail offer it unless configured not to; Postfix: check smtpd_discard_ehlo_keywords) " +
        "or point the relay at one that offers it, then replay the mail (mail-outbox replay <id>); or send it again as a new mail composed 7-bit.",
      options,
    );
    this.offset = offset;
  }
}

/** The database could not be reached (or written) for longer than the operation may wait. */
export class DatabaseUnavailableError extends MailOutboxError {
  override name = "DatabaseUnavailableError";
}
