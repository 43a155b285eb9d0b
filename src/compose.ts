/**
 * The enqueue side before any SQL runs: check a `MailInput` completely (mail-input.ts, which hands
 * each field to addresses.ts, text.ts, headers.ts, attachments.ts and json.ts), then compose the
 * RFC 5322 message once, so the relay only ever hands over ready bytes (`sendMail({ envelope, raw })`).
 * This file holds the limits, the call to nodemailer's MailComposer, and the checks of the composed
 * bytes (size, header size, no lone CR or LF).
 *
 * Nothing here touches the disk or the network: attachments come as bytes, paths and URLs
 * are refused, and nodemailer's own file and URL access is switched off as a second guard.
 */
import MailComposer from "nodemailer/lib/mail-composer";
import type { MailComposerAttachment } from "nodemailer/lib/mail-composer";
import { domainOf, domainProblem, envelopeRecipients, normalizeDomain, parseSingleMailbox } from "./addresses.js";
import type { CheckedAttachment } from "./attachments.js";
import { HeaderTooLargeError, InvalidMailError, MailOutboxError, MailTooLargeError, OptionsError } from "./errors.js";
import { newId } from "./ids.js";
import { checkMail } from "./mail-input.js";
import { describe, describeThrown, isIntIn, isPlainObject } from "./plain-data.js";
import type { ComposeDefaults, ComposedMail } from "./types.js";
import { bareLineEndAt } from "./wire.js";

/**
 * Default `maxMessageBytes`: 10,000,000 bytes. Postfix's default `message_size_limit` is 10,240,000 and
 * counts the header fields it adds on the way (Received, Return-Path...), so this leaves 240,000 bytes
 * for those; a larger default would let mail through enqueue that Postfix then refuses (SMTP: dead) or
 * defers for good (`sendmail` exits 75). Raise it together with your MTA's limit.
 */
export const DEFAULT_MAX_MESSAGE_BYTES = 10_000_000;
/**
 * Default `maxHeaderBytes`: 100,000 bytes, below Postfix's `header_size_limit` (102,400), past which
 * Postfix silently truncates the header section instead of refusing the mail.
 */
export const DEFAULT_MAX_HEADER_BYTES = 100_000;
/** Default `maxAttempts` before a mail is parked as dead. */
export const DEFAULT_MAX_ATTEMPTS = 25;

/**
 * Checks `input` completely and composes the RFC 5322 message that the relay will hand to the MTA.
 *
 * Every problem is collected before anything is composed; if there is any, this throws
 * `InvalidMailError` whose `problems` lists all of them, one sentence each, naming the field
 * (`to[1]: "bob@" is not a valid email address (the domain after @ is missing)`). A value that throws
 * while it is read (a getter, a Proxy trap, a revoked Proxy) is such a problem too, never a raw error.
 *
 * Size limits: a message over `defaults.maxMessageBytes` throws `MailTooLargeError`, a header section
 * (every byte before the first CRLF CRLF) over `defaults.maxHeaderBytes` throws `HeaderTooLargeError`.
 * When the bodies and attachments (or the subject, addresses and headers) alone are already known to
 * exceed the limit, that happens before composing, and `size` is then a lower bound.
 *
 * The message gets `Message-ID: <id@domain>` (the row id, and `defaults.messageIdDomain` or else
 * the sender's domain in punycode) and `Date: now`, and never carries Bcc in its headers: Bcc
 * recipients are only in `envelopeTo`. Nothing is read from disk or network.
 *
 * Line breaks: the stored bytes never hold a lone CR or a lone LF (one could end SMTP DATA early at a
 * receiver that reads it as a line end, "SMTP smuggling"). In `text`, `html` and the content of a
 * `message/*` attachment, each CRLF, each lone CR and each lone LF is one line break and is stored as
 * CRLF, so `"a\rb"`, `"a\nb"` and `"a\r\nb"` all arrive as two lines, and `"a\r\r\nb"` as three
 * (with an empty one). Other attachments are base64-encoded, so their bytes are kept exactly. Should the
 * composed bytes still hold a lone CR or LF, that is a bug here, and this throws instead of storing them.
 *
 * 7-bit: the stored message is 7-bit (every byte below 0x80) whenever it can be: non-ASCII text and html
 * are quoted-printable or base64, non-ASCII subjects, display names and header values are RFC 2047
 * encoded words, non-ASCII file names RFC 2231 parameters, IDN domains punycode, attachments base64.
 * The one exception is an attachment of type `message/*` (a forwarded mail) whose content has bytes
 * over 0x7F: such a part may not be encoded (RFC 2046 5.2.1), so it is stored as is with
 * `Content-Transfer-Encoding: 8bit` and the relay must declare `BODY=8BITMIME`. With only ASCII content
 * it is labelled `7bit`.
 *
 * What is accepted, in short (every refusal names its field):
 * - A plain object with only the fields of `MailInput`; a field set to `undefined` counts as absent,
 *   `null` only where the stored value may be null (`idempotencyKey`, `metadata`). Getters, symbol keys
 *   and the keys `__proto__`, `constructor`, `prototype` (anywhere: mail, address objects, headers,
 *   attachments, metadata) are refused.
 * - Addresses: strings as in a header (`"Ann <ann@example.com>, bob@example.com"`, parsed by nodemailer's
 *   addressparser; groups are flattened) or `{ name, address }`. The address is a dot-atom local part of
 *   ASCII (at most 64 bytes; SMTPUTF8 is not supported) `@` a domain of letters, digits and hyphens or an
 *   IDN (sent as punycode) or a bracketed IP literal; at most 320 characters; never starting with `-`.
 *   No control characters in addresses or display names. At most `MAX_RECIPIENTS` (1000) distinct
 *   recipients in to, cc and bcc together.
 * - Subject, header names and values, display names, attachment file names, content types and cids,
 *   idempotency keys: no CR, LF, NUL, other C0 controls (tab allowed in subject and header values), DEL,
 *   C1 controls (U+0080 to U+009F), U+2028 or U+2029; well-formed UTF-16; and no run of ASCII without
 *   spaces too long to fold into a 998-octet header line. Header names are RFC 5322 field names not owned
 *   by the composer (`RESERVED_HEADERS`). A cid is printable ASCII.
 * - Attachments (at most `MAX_ATTACHMENTS`): bytes as Buffer, Uint8Array or string, never a path or URL.
 *   A `message/*` attachment may not hold a NUL byte or a line over 998 octets (it cannot be encoded).
 * - `metadata`: plain JSON only (no undefined, functions, bigint, NaN, Dates, class instances or cycles),
 *   at most `MAX_METADATA_BYTES` serialised; the returned value is a deep copy.
 *
 * @param input What the application passed to `enqueue()`; checked, never trusted.
 * @param defaults The extension's options (`defaultFrom`, `maxAttempts`, `maxMessageBytes`, `maxHeaderBytes`,
 *   `messageIdDomain`). Invalid defaults throw `OptionsError` (see `validateComposeDefaults`).
 * @param now The enqueue time: the Date header, and `sendAt` when the input has none. @default new Date()
 *
 * @example
 * const mail = await composeMail(
 *   { to: "Ann <ann@example.com>", subject: "Your order", text: "Shipped." },
 *   {
 *     defaultFrom: "shop@example.com",
 *     maxAttempts: DEFAULT_MAX_ATTEMPTS,
 *     maxMessageBytes: DEFAULT_MAX_MESSAGE_BYTES,
 *     maxHeaderBytes: DEFAULT_MAX_HEADER_BYTES,
 *   },
 * );
 * mail.messageId; // "<0193...@example.com>"
 * mail.envelopeTo; // ["ann@example.com"]
 */
export async function composeMail(input: unknown, defaults: ComposeDefaults, now: Date = new Date()): Promise<ComposedMail> {
  const defaultProblems = validateComposeDefaults(defaults);
  if (defaultProblems.length > 0) {
    throw new OptionsError(`Invalid compose defaults: ${defaultProblems.join(" ")}`);
  }
  if (!(now instanceof Date) || Number.isNaN(now.getTime())) {
    throw new OptionsError("Expected `now` to be a valid Date.");
  }
  const { problems, mail } = checkMail(input, defaults);
  if (problems.length > 0 || mail === null) {
    throw new InvalidMailError(problems);
  }
  if (mail.minComposedBytes > defaults.maxMessageBytes) {
    throw new MailTooLargeError(mail.minComposedBytes, defaults.maxMessageBytes);
  }
  if (mail.minHeaderBytes > defaults.maxHeaderBytes) {
    throw new HeaderTooLargeError(mail.minHeaderBytes, defaults.maxHeaderBytes, { atLeast: true });
  }

  const id = newId();
  const messageIdDomain =
    defaults.messageIdDomain !== undefined ? normalizeDomain(defaults.messageIdDomain) : domainOf(mail.from.address);
  const messageId = `<${id}@${messageIdDomain}>`;

  const composer = new MailComposer({
    from: { name: mail.from.name, address: mail.from.address },
    to: mail.to.length > 0 ? mail.to.map((m) => ({ ...m })) : undefined,
    cc: mail.cc.length > 0 ? mail.cc.map((m) => ({ ...m })) : undefined,
    // Bcc is deliberately not given to the composer: it is only in the envelope, so it cannot leak into the headers.
    replyTo: mail.replyTo.length > 0 ? mail.replyTo.map((m) => ({ ...m })) : undefined,
    subject: mail.subject || undefined,
    text: mail.text,
    html: mail.html,
    attachments: mail.attachments.map(toComposerAttachment),
    headers: mail.headers.map(([key, value]) => ({ key, value })),
    messageId,
    date: now,
    newline: "win",
    disableFileAccess: true,
    disableUrlAccess: true,
  });
  const raw = await composer.compile().build();
  if (raw.length > defaults.maxMessageBytes) {
    throw new MailTooLargeError(raw.length, defaults.maxMessageBytes);
  }
  const headerEnd = raw.indexOf("\r\n\r\n");
  const headerBytes = headerEnd < 0 ? raw.length : headerEnd;
  if (headerBytes > defaults.maxHeaderBytes) {
    throw new HeaderTooLargeError(headerBytes, defaults.maxHeaderBytes);
  }
  const lone = bareLineEndAt(raw);
  if (lone >= 0) {
    throw new MailOutboxError(
      `The composed message has a lone ${raw[lone] === 0x0d ? "CR" : "LF"} at byte ${lone}; nothing was written. ` +
        "This is a bug in prisma-mail-outbox: please report it with the mail's text and html.",
    );
  }

  return {
    id,
    messageId,
    envelopeFrom: mail.from.address,
    envelopeTo: envelopeRecipients(mail.to, mail.cc, mail.bcc),
    subject: mail.subject,
    raw,
    size: raw.length,
    priority: mail.priority,
    sendAt: mail.sendAt ?? new Date(now.getTime()),
    idempotencyKey: mail.idempotencyKey,
    maxAttempts: mail.maxAttempts ?? defaults.maxAttempts,
    metadata: mail.metadata,
  };
}

/**
 * Every problem with `input`, one sentence each naming the field; empty when `composeMail` would
 * compose it. The sizes of the composed message and its header section are only known after
 * composing, so an input whose parts fit but whose composed message does not passes here and still
 * makes `composeMail` throw `MailTooLargeError` or `HeaderTooLargeError`.
 *
 * @example
 * validateMailInput({ to: "bob@", subject: "a\r\nBcc: x@evil.example" }, defaults);
 * // ['from: ...', 'to: "bob@" is not a valid email address (the domain after @ is missing)', 'subject: contains a line break ...']
 */
export function validateMailInput(input: unknown, defaults: ComposeDefaults): string[] {
  const { problems, mail } = checkMail(input, defaults);
  if (problems.length === 0 && mail !== null && mail.minComposedBytes > defaults.maxMessageBytes) {
    return [
      `attachments: the bodies and attachments alone make the message at least ${mail.minComposedBytes} bytes, over the limit of ${defaults.maxMessageBytes} bytes (raise maxMessageBytes, or link to large files instead of attaching them)`,
    ];
  }
  if (problems.length === 0 && mail !== null && mail.minHeaderBytes > defaults.maxHeaderBytes) {
    return [...new HeaderTooLargeError(mail.minHeaderBytes, defaults.maxHeaderBytes, { atLeast: true }).problems];
  }
  return problems;
}

/**
 * Problems with the options `composeMail` takes from the extension, in p-retry's manner
 * ("Expected `maxAttempts` to be an integer from 1 to 1000, got 0."). Empty when they are fine.
 * The extension factory can call this once at construction to fail early.
 */
export function validateComposeDefaults(defaults: unknown): string[] {
  try {
    return checkComposeDefaults(defaults);
  } catch (err) {
    return [`Expected the compose defaults to be plain data, but reading them threw ${describeThrown(err)}.`];
  }
}

function checkComposeDefaults(defaults: unknown): string[] {
  if (!isPlainObject(defaults)) return [`Expected the compose defaults to be an object, got ${describe(defaults)}.`];
  const d = defaults as Record<string, unknown>;
  const problems: string[] = [];
  if (!isIntIn(d.maxAttempts, 1, 1000)) {
    problems.push(`Expected \`maxAttempts\` to be an integer from 1 to 1000, got ${describe(d.maxAttempts)}.`);
  }
  if (typeof d.maxMessageBytes !== "number" || !Number.isSafeInteger(d.maxMessageBytes) || d.maxMessageBytes < 1) {
    problems.push(`Expected \`maxMessageBytes\` to be a positive integer, got ${describe(d.maxMessageBytes)}.`);
  }
  if (typeof d.maxHeaderBytes !== "number" || !Number.isSafeInteger(d.maxHeaderBytes) || d.maxHeaderBytes < 1) {
    problems.push(`Expected \`maxHeaderBytes\` to be a positive integer, got ${describe(d.maxHeaderBytes)}.`);
  }
  if (d.messageIdDomain !== undefined) {
    const reason = typeof d.messageIdDomain === "string" ? domainProblem(d.messageIdDomain) : "it is not a string";
    if (reason !== null) {
      problems.push(`Expected \`messageIdDomain\` to be a domain name such as "mail.example.com", but ${reason}.`);
    }
  }
  if (d.defaultFrom !== undefined) {
    const sub: string[] = [];
    parseSingleMailbox(d.defaultFrom, "defaultFrom", sub);
    for (const p of sub) problems.push(`Expected \`defaultFrom\` to be one valid address: ${p}.`);
  }
  return problems;
}


/** An attachment as nodemailer's MailComposer takes it (only the fields that are set). */
function toComposerAttachment(a: CheckedAttachment): MailComposerAttachment {
  const out: MailComposerAttachment = { content: a.content };
  if (a.filename !== undefined) out.filename = a.filename;
  if (a.encoding !== undefined) out.encoding = a.encoding;
  if (a.contentType !== undefined) out.contentType = a.contentType;
  if (a.cid !== undefined) out.cid = a.cid;
  if (a.contentDisposition !== undefined) out.contentDisposition = a.contentDisposition;
  if (a.contentTransferEncoding !== undefined) out.contentTransferEncoding = a.contentTransferEncoding;
  return out;
}

