/**
 * The enqueue side before any SQL runs: check a `MailInput` completely, then compose the
 * RFC 5322 message once, so the relay only ever hands over ready bytes (`sendMail({ envelope, raw })`).
 *
 * Nothing here touches the disk or the network: attachments come as bytes, paths and URLs
 * are refused, and nodemailer's own file and URL access is switched off as a second guard.
 */
import { isIPv4, isIPv6 } from "node:net";
import { domainToASCII } from "node:url";
import addressparser from "nodemailer/lib/addressparser";
import MailComposer from "nodemailer/lib/mail-composer";
import type { MailComposerAttachment } from "nodemailer/lib/mail-composer";
import { HeaderTooLargeError, InvalidMailError, MailOutboxError, MailTooLargeError, OptionsError } from "./errors.js";
import { newId } from "./ids.js";
import { bareLineEndAt } from "./wire.js";
import type { ComposeDefaults, ComposedMail, JsonValue, MailInput } from "./types.js";

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
 * At most this many distinct envelope recipients (to, cc and bcc together) per mail: Postfix's default
 * `smtpd_recipient_limit`, past which it answers 452 to every further RCPT TO. Send several mails instead.
 */
export const MAX_RECIPIENTS = 1000;
/** At most this many attachments per mail. */
export const MAX_ATTACHMENTS = 100;
/** `metadata` may serialise to at most this many bytes of JSON (UTF-8). */
export const MAX_METADATA_BYTES = 64 * 1024;
/** `idempotencyKey` may be at most this many characters. */
export const MAX_IDEMPOTENCY_KEY_LENGTH = 255;

/** The fields `MailInput` accepts; any other field is refused. */
export const MAIL_INPUT_FIELDS = [
  "from",
  "to",
  "cc",
  "bcc",
  "replyTo",
  "subject",
  "text",
  "html",
  "attachments",
  "headers",
  "priority",
  "sendAt",
  "idempotencyKey",
  "maxAttempts",
  "metadata",
] as const satisfies readonly (keyof MailInput)[];

/** The fields an attachment accepts. */
export const ATTACHMENT_FIELDS = ["filename", "content", "encoding", "contentType", "cid", "contentDisposition"] as const;

/**
 * Header fields the composer writes itself; `headers` may not set them (compared without regard to case).
 * Content-Disposition and Content-ID are added to the list because at the top of a message they, too,
 * describe the MIME structure that the composer builds.
 */
export const RESERVED_HEADERS: readonly string[] = [
  "From",
  "To",
  "Cc",
  "Bcc",
  "Reply-To",
  "Subject",
  "Message-ID",
  "Date",
  "MIME-Version",
  "Content-Type",
  "Content-Transfer-Encoding",
  "Content-Disposition",
  "Content-ID",
  "Sender",
  "Return-Path",
];

/** Own keys refused anywhere in a mail: copying them into an object can change its prototype. */
const POLLUTION_KEYS = new Set(["__proto__", "constructor", "prototype"]);
const RESERVED_LOWER = new Set(RESERVED_HEADERS.map((h) => h.toLowerCase()));
const ENCODINGS = ["utf8", "base64", "hex", "binary"] as const;
const DISPOSITIONS = ["attachment", "inline"] as const;
/** A header line may not exceed 998 octets (RFC 5322 2.1.1); nodemailer folds at whitespace only. */
const MAX_HEADER_WORD = 900;
const MAX_HEADER_NAME = 200;
const MAX_FILENAME = 255;
const MAX_TOKEN = 255;
const MAX_METADATA_DEPTH = 64;
const MAX_METADATA_PROBLEMS = 20;
const ADDRESS_MAX = 320;
const LOCAL_MAX = 64;
const DOMAIN_MAX = 255;
const ATEXT = "A-Za-z0-9!#$%&'*+/=?^_`{|}~-";
const DOT_ATOM = new RegExp(`^[${ATEXT}]+(?:\\.[${ATEXT}]+)*$`);
const LABEL = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/i;
/** RFC 5322 field name: printable ASCII except the colon. */
const FIELD_NAME = /^[\x21-\x39\x3b-\x7e]+$/;
/** RFC 2045 token, for both halves of a content type. */
const MIME_TOKEN = "[!#$%&'*+.^_`|~0-9A-Za-z-]+";
const CONTENT_TYPE = new RegExp(`^${MIME_TOKEN}/${MIME_TOKEN}(?:\\s*;.*)?$`);
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;
/** A CR not followed by LF, or an LF not preceded by CR. */
const LONE_LINE_BREAK = /\r(?!\n)|(?<!\r)\n/;
/** Each of CRLF, CR and LF is one line break. */
const LINE_BREAK = /\r\n|\r|\n/g;
/** Refused in single-line text: C0 controls but tab, DEL, C1 controls, and the Unicode line and paragraph separators. */
const FORBIDDEN_CHAR = /[\x01-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]/;
const FORBIDDEN_CHAR_OR_TAB = /[\x01-\x1f\x7f-\x9f\u2028\u2029]/;
/** The Date.prototype.getTime intrinsic: reads a real Date's time without calling anything the input overrides. */
const dateGetTime = Date.prototype.getTime;
/** The %TypedArray%.prototype getters, likewise: a Uint8Array subclass or a changed prototype cannot answer for them. */
const TYPED_ARRAY_PROTO = Object.getPrototypeOf(Uint8Array.prototype) as object;
const typedArrayGetter = (name: string): ((this: unknown) => unknown) => {
  const get = Object.getOwnPropertyDescriptor(TYPED_ARRAY_PROTO, name)?.get;
  if (get === undefined) throw new Error(`%TypedArray%.prototype.${name} has no getter`);
  return get as (this: unknown) => unknown;
};
const typedArrayBuffer = typedArrayGetter("buffer");
const typedArrayByteOffset = typedArrayGetter("byteOffset");
const typedArrayByteLength = typedArrayGetter("byteLength");

/** A mailbox after checking: `address` is the wire form (domain in punycode). */
interface Mailbox {
  readonly name: string;
  readonly address: string;
}

interface CheckedAttachment {
  readonly filename?: string;
  readonly content: string | Buffer;
  readonly encoding?: (typeof ENCODINGS)[number];
  readonly contentType?: string;
  readonly cid?: string;
  readonly contentDisposition?: (typeof DISPOSITIONS)[number];
  /** For message/* parts, which cannot be encoded: 8bit only when the content has bytes over 0x7F. */
  readonly contentTransferEncoding?: "7bit" | "8bit";
  /** Lower bound of the bytes this attachment adds to the composed message. */
  readonly minComposedBytes: number;
}

interface CheckedMail {
  readonly from: Mailbox;
  readonly to: readonly Mailbox[];
  readonly cc: readonly Mailbox[];
  readonly bcc: readonly Mailbox[];
  readonly replyTo: readonly Mailbox[];
  readonly subject: string;
  readonly text: string | undefined;
  readonly html: string | undefined;
  readonly attachments: readonly CheckedAttachment[];
  readonly headers: readonly (readonly [string, string])[];
  readonly priority: number;
  readonly sendAt: Date | undefined;
  readonly idempotencyKey: string | null;
  readonly maxAttempts: number | undefined;
  readonly metadata: JsonValue | null;
  /** Lower bound of the composed size, from the bodies and attachments alone. */
  readonly minComposedBytes: number;
  /** Lower bound of the composed header section, from the header texts and addresses alone. */
  readonly minHeaderBytes: number;
}

type Check = { readonly problems: string[]; readonly mail: CheckedMail | null };

// ---------------------------------------------------------------------------------------------
// Public entry points
// ---------------------------------------------------------------------------------------------

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

  const envelopeTo: string[] = [];
  const seen = new Set<string>();
  for (const m of [...mail.to, ...mail.cc, ...mail.bcc]) {
    const key = m.address.toLowerCase();
    if (!seen.has(key)) {
      seen.add(key);
      envelopeTo.push(m.address);
    }
  }

  return {
    id,
    messageId,
    envelopeFrom: mail.from.address,
    envelopeTo,
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

/**
 * The wire form of a bare email address (`local@domain`, the domain in punycode and lower case),
 * or null when it is not one this library accepts. See `composeMail` for the rules.
 *
 * @example
 * normalizeEmailAddress("ann@Jõgeva.ee"); // "ann@xn--jgeva-dua.ee"
 * normalizeEmailAddress("-oQ/tmp/x@example.com"); // null
 */
export function normalizeEmailAddress(address: string): string | null {
  const r = checkAddrSpec(address);
  return "address" in r ? r.address : null;
}

// ---------------------------------------------------------------------------------------------
// Checking
// ---------------------------------------------------------------------------------------------

/**
 * `checkFields`, with the guarantee that reading the input never throws out of it: each field is read
 * under a guard that turns an exception into a problem naming the field (the innermost guard wins), and
 * anything that still escapes becomes a problem of the whole mail.
 */
function checkMail(input: unknown, defaults: ComposeDefaults): Check {
  const problems: string[] = [];
  try {
    return checkFields(input, defaults, problems);
  } catch (err) {
    problems.push(unreadable("mail", err));
    return { problems, mail: null };
  }
}

function checkFields(input: unknown, defaults: ComposeDefaults, problems: string[]): Check {
  if (!isPlainObject(input)) {
    problems.push(`mail: expected a plain object such as { to, subject, text }, got ${describe(input)}`);
    return { problems, mail: null };
  }
  const fields = readOwnFields(input, "", MAIL_INPUT_FIELDS, problems, TOP_LEVEL_HINTS);
  const read = <T>(field: string, fallback: T, fn: () => T): T => guard(field, problems, fallback, fn);
  const unread = (): AddressList => ({ mailboxes: [], count: 1, failed: true });

  // Addresses.
  let from: Mailbox | null = null;
  if (fields.has("from")) {
    from = read("from", null, () => parseSingleMailbox(fields.get("from"), "from", problems));
  } else if (defaults.defaultFrom !== undefined) {
    from = read("from (defaultFrom)", null, () => parseSingleMailbox(defaults.defaultFrom, "from (defaultFrom)", problems));
  } else {
    problems.push("from: no sender; pass from, or set defaultFrom on the extension");
  }
  const to = read("to", unread(), () => parseAddressList(fields.get("to"), "to", problems));
  const cc = read("cc", unread(), () => parseAddressList(fields.get("cc"), "cc", problems));
  const bcc = read("bcc", unread(), () => parseAddressList(fields.get("bcc"), "bcc", problems));
  const replyTo = read("replyTo", unread(), () => parseAddressList(fields.get("replyTo"), "replyTo", problems));
  if (to.count + cc.count + bcc.count === 0) {
    problems.push("to: no recipient; give at least one address in to, cc or bcc");
  } else if (!to.failed && !cc.failed && !bcc.failed && to.mailboxes.length + cc.mailboxes.length + bcc.mailboxes.length > MAX_RECIPIENTS) {
    const distinct = new Set<string>();
    for (const list of [to, cc, bcc]) for (const m of list.mailboxes) distinct.add(m.address.toLowerCase());
    if (distinct.size > MAX_RECIPIENTS) {
      problems.push(
        `to: ${distinct.size} distinct recipients in to, cc and bcc together, over the limit of ${MAX_RECIPIENTS} per mail (Postfix's default smtpd_recipient_limit); send several mails`,
      );
    }
  }

  // Subject and bodies.
  let subject = "";
  const rawSubject = fields.get("subject");
  if (rawSubject !== undefined) {
    if (typeof rawSubject !== "string") {
      problems.push(`subject: must be a string, got ${describe(rawSubject)}`);
    } else {
      const reason = headerTextProblem(rawSubject, "Subject");
      if (reason !== null) problems.push(`subject: ${reason}`);
      else subject = rawSubject;
    }
  }
  const text = checkBody(fields.get("text"), "text", problems);
  const html = checkBody(fields.get("html"), "html", problems);

  const attachments = read("attachments", [], () => checkAttachments(fields.get("attachments"), problems));
  const headers = read("headers", [], () => checkHeaders(fields.get("headers"), problems));

  // Queue fields.
  let priority = 0;
  if (fields.has("priority")) {
    const p = fields.get("priority");
    if (!isIntIn(p, -1000, 1000)) problems.push(`priority: must be an integer from -1000 to 1000, got ${describe(p)}`);
    else priority = p;
  }
  let sendAt: Date | undefined;
  if (fields.has("sendAt")) {
    const s = fields.get("sendAt");
    const before = problems.length;
    // A Date subclass may override getTime; the intrinsic reads the real time (and throws for a Proxy).
    const time = read("sendAt", null, () => (isDate(s) ? (dateGetTime.call(s) as number) : null));
    if (problems.length > before) {
      // unreadable: the guard said so
    } else if (time !== null) {
      if (Number.isNaN(time)) problems.push("sendAt: is an Invalid Date; pass a valid Date, or leave sendAt out to send now");
      else sendAt = new Date(time);
    } else if (typeof s === "string") {
      problems.push(`sendAt: must be a Date, got the string ${describe(s)}; pass new Date(${describe(s)}) if that is the time you mean`);
    } else {
      problems.push(`sendAt: must be a Date, got ${describe(s)}`);
    }
  }
  let idempotencyKey: string | null = null;
  if (fields.has("idempotencyKey")) {
    const k = fields.get("idempotencyKey");
    if (k === null) {
      // null is the stored "no key"; accepted as absent.
    } else if (typeof k !== "string") {
      problems.push(`idempotencyKey: must be a string, got ${describe(k)}`);
    } else if (k.length === 0) {
      problems.push("idempotencyKey: is empty; pass a non-empty key or leave it out");
    } else if (k.length > MAX_IDEMPOTENCY_KEY_LENGTH) {
      problems.push(`idempotencyKey: is ${k.length} characters, over the limit of ${MAX_IDEMPOTENCY_KEY_LENGTH}; hash longer keys`);
    } else {
      const reason = textProblem(k, { allowTab: false });
      if (reason !== null) problems.push(`idempotencyKey: ${reason}`);
      else idempotencyKey = k;
    }
  }
  let maxAttempts: number | undefined;
  if (fields.has("maxAttempts")) {
    const m = fields.get("maxAttempts");
    if (!isIntIn(m, 1, 1000)) problems.push(`maxAttempts: must be an integer from 1 to 1000, got ${describe(m)}`);
    else maxAttempts = m;
  }
  const metadata = read("metadata", null, () => checkMetadata(fields, problems));

  if (problems.length > 0 || from === null) return { problems, mail: null };

  let minComposedBytes = 0;
  for (const a of attachments) minComposedBytes += a.minComposedBytes;
  if (text !== undefined) minComposedBytes += Buffer.byteLength(text, "utf8");
  if (html !== undefined) minComposedBytes += Buffer.byteLength(html, "utf8");
  // Every address appears in the header section as it is (ASCII), every text at least with the UTF-8
  // bytes of its characters other than spaces and tabs (encoded words, quoting and folding only add;
  // folding may drop runs of white space).
  let minHeaderBytes = headerTextBytes(subject) + from.address.length + headerTextBytes(from.name);
  for (const list of [to, cc, replyTo]) {
    for (const m of list.mailboxes) minHeaderBytes += m.address.length + headerTextBytes(m.name);
  }
  for (const [key, value] of headers) minHeaderBytes += key.length + headerTextBytes(value);

  return {
    problems,
    mail: {
      from,
      to: to.mailboxes,
      cc: cc.mailboxes,
      bcc: bcc.mailboxes,
      replyTo: replyTo.mailboxes,
      subject,
      text,
      html,
      attachments,
      headers,
      priority,
      sendAt,
      idempotencyKey,
      maxAttempts,
      metadata,
      minComposedBytes,
      minHeaderBytes,
    },
  };
}

const TOP_LEVEL_HINTS: Readonly<Record<string, string>> = {
  messageid: "the Message-ID is made from the row id and cannot be set",
  date: "the Date header is the enqueue time; use sendAt to send later",
  sender: "the Sender header is not supported; use from",
  inreplyto: "set it in headers, e.g. headers: { \"In-Reply-To\": \"<id@host>\" }",
  references: "set it in headers, e.g. headers: { References: \"<id@host>\" }",
  envelope: "the envelope is made from from, to, cc and bcc",
  raw: "pass the parts (subject, text, html, attachments); a ready message is not accepted",
  body: "use text or html",
};

/**
 * Reads the own data properties of `obj` once (so a getter cannot answer twice), refusing
 * symbol keys, prototype-pollution keys, accessors and keys not in `allowed`. `undefined`
 * values count as absent.
 */
function readOwnFields(
  obj: object,
  path: string,
  allowed: readonly string[],
  problems: string[],
  hints: Readonly<Record<string, string>> = {},
): Map<string, unknown> {
  const out = new Map<string, unknown>();
  const allowedSet = new Set(allowed);
  let keys: (string | symbol)[];
  try {
    keys = Reflect.ownKeys(obj);
  } catch (err) {
    problems.push(unreadable(path || "mail", err));
    return out;
  }
  for (const key of keys) {
    if (typeof key === "symbol") {
      problems.push(`${path || "mail"}: has the symbol key ${symbolName(key)}; only plain string keys are accepted`);
      continue;
    }
    const field = join(path, key);
    if (POLLUTION_KEYS.has(key)) {
      problems.push(pollutionProblem(field));
      continue;
    }
    if (!allowedSet.has(key)) {
      const loose = key.toLowerCase().replace(/[-_\s]/g, "");
      const near = allowed.find((a) => a.toLowerCase() === loose);
      const hint = near !== undefined ? `did you mean ${near}? ` : hints[loose] !== undefined ? `${hints[loose]}; ` : "";
      problems.push(`${field}: unknown field; ${hint}the allowed fields are ${allowed.join(", ")}`);
      continue;
    }
    const desc = guard(field, problems, undefined, () => Object.getOwnPropertyDescriptor(obj, key));
    if (desc === undefined) continue;
    if (!("value" in desc)) {
      problems.push(`${field}: is a getter or setter; pass plain data`);
      continue;
    }
    if (desc.value !== undefined) out.set(key, desc.value);
  }
  return out;
}

/**
 * `read()`, or `fallback` with a problem naming `field` when reading throws (a getter, a Proxy trap,
 * a revoked Proxy). Guards nest: the innermost one names the field most precisely.
 */
function guard<T>(field: string, problems: string[], fallback: T, read: () => T): T {
  try {
    return read();
  } catch (err) {
    problems.push(unreadable(field, err));
    return fallback;
  }
}

function unreadable(field: string, err: unknown): string {
  return `${field}: reading it threw ${describeThrown(err)}; pass plain data (no getter or Proxy that throws)`;
}

/** A short, safe rendering of a thrown value; reading it may throw again, which is caught here. */
function describeThrown(err: unknown): string {
  try {
    if (err instanceof Error) {
      const name: unknown = err.name;
      const message: unknown = err.message;
      const shownName = typeof name === "string" && /^[A-Za-z]\w{0,40}$/.test(name) ? name : "an Error";
      return typeof message === "string" && message !== "" ? `${shownName} ${describe(message)}` : shownName;
    }
    return describe(err);
  } catch {
    return "a value that could not be inspected either";
  }
}

function pollutionProblem(field: string): string {
  return `${field}: the key is refused anywhere in a mail because it can change an object's prototype; rename or remove it`;
}

/** `a.b`, or `a["odd key"]` for keys that are not identifiers. */
function join(path: string, key: string): string {
  if (/^[A-Za-z_$][\w$]*$/.test(key) && (path === "" || !POLLUTION_KEYS.has(key))) return path ? `${path}.${key}` : key;
  return `${path}[${quote(key)}]`;
}

// --- addresses -------------------------------------------------------------------------------

function parseSingleMailbox(value: unknown, field: string, problems: string[]): Mailbox | null {
  if (Array.isArray(value)) {
    problems.push(`${field}: must be one address, got an array`);
    return null;
  }
  const list = parseAddressList(value, field, problems);
  if (list.failed) return null;
  if (list.mailboxes.length !== 1) {
    problems.push(`${field}: must be exactly one address, got ${list.mailboxes.length}`);
    return null;
  }
  return list.mailboxes[0] ?? null;
}

interface AddressList {
  readonly mailboxes: Mailbox[];
  /** How many addresses the input held, valid or not. */
  readonly count: number;
  readonly failed: boolean;
}

function parseAddressList(value: unknown, field: string, problems: string[]): AddressList {
  const mailboxes: Mailbox[] = [];
  let count = 0;
  const before = problems.length;
  if (value === undefined) return { mailboxes, count, failed: false };
  if (Array.isArray(value)) {
    const length = value.length;
    if (length > MAX_RECIPIENTS) {
      problems.push(`${field}: ${length} entries, over the limit of ${MAX_RECIPIENTS} recipients per mail; send several mails`);
      return { mailboxes, count: length, failed: true };
    }
    for (let i = 0; i < length; i++) {
      const itemField = `${field}[${i}]`;
      const itemBefore = problems.length;
      const desc = guard(itemField, problems, undefined, () => Object.getOwnPropertyDescriptor(value, i));
      if (problems.length > itemBefore) {
        count++;
        continue;
      }
      if (desc === undefined || !("value" in desc)) {
        problems.push(`${itemField}: is ${desc === undefined ? "a hole in the array" : "a getter"}; pass an address`);
        continue;
      }
      count += guard(itemField, problems, 1, () => parseAddressItem(desc.value, itemField, problems, mailboxes));
    }
  } else {
    count += parseAddressItem(value, field, problems, mailboxes);
  }
  return { mailboxes, count, failed: problems.length > before };
}

/** Parses one string (which may hold several addresses) or one `{ name, address }`; returns how many addresses it held. */
function parseAddressItem(item: unknown, field: string, problems: string[], out: Mailbox[]): number {
  if (typeof item === "string") {
    const reason = textProblem(item, { allowTab: false });
    if (reason !== null) {
      problems.push(`${field}: ${reason}`);
      return 1;
    }
    if (item.trim() === "") {
      problems.push(`${field}: is empty; pass an address such as "Ann <ann@example.com>"`);
      return 0;
    }
    const parsed = addressparser(item, { flatten: true });
    if (parsed.length === 0) {
      problems.push(`${field}: ${describe(item)} holds no address`);
      return 0;
    }
    for (const entry of parsed) {
      if (entry.address === "") {
        problems.push(`${field}: ${describe(item)} is not a valid email address (there is no local@domain in it)`);
        continue;
      }
      const mailbox = checkMailbox(entry.name, entry.address, entry.address, field, problems);
      if (mailbox !== null) out.push(mailbox);
    }
    return parsed.length;
  }
  if (isPlainObject(item)) {
    const before = problems.length;
    const f = readOwnFields(item, field, ["name", "address"], problems);
    const address = f.get("address");
    const name = f.get("name");
    if (typeof address !== "string") {
      problems.push(`${field}.address: must be a string, got ${describe(address)}`);
    }
    if (name !== undefined && typeof name !== "string") {
      problems.push(`${field}.name: must be a string, got ${describe(name)}`);
    }
    if (problems.length > before || typeof address !== "string") return 1;
    const mailbox = checkMailbox(typeof name === "string" ? name : "", address, address, `${field}.address`, problems, `${field}.name`);
    if (mailbox !== null) out.push(mailbox);
    return 1;
  }
  problems.push(`${field}: must be an address string or { name, address }, got ${describe(item)}`);
  return 1;
}

function checkMailbox(
  name: string,
  address: string,
  shown: string,
  field: string,
  problems: string[],
  nameField: string = field,
): Mailbox | null {
  let ok = true;
  const nameReason = name === "" ? null : headerTextProblem(name, "To", "display name");
  if (nameReason !== null) {
    problems.push(`${nameField}: ${nameReason}`);
    ok = false;
  }
  const r = checkAddrSpec(address);
  if ("reason" in r) {
    problems.push(`${field}: ${describe(shown)} is not a valid email address (${r.reason})`);
    ok = false;
  }
  return ok && "address" in r ? { name, address: r.address } : null;
}

/** Checks a bare `local@domain` and returns its wire form, or why it is refused. */
function checkAddrSpec(raw: string): { address: string } | { reason: string } {
  if (typeof raw !== "string" || raw === "") return { reason: "it is empty" };
  const ctl = textProblem(raw, { allowTab: false });
  if (ctl !== null) return { reason: `it ${ctl}` };
  if (raw.length > ADDRESS_MAX) return { reason: `it is ${raw.length} characters, over the limit of ${ADDRESS_MAX}` };
  if (raw.startsWith("-")) return { reason: 'it starts with "-", which a sendmail command line would read as an option' };
  const at = raw.lastIndexOf("@");
  if (at < 0) return { reason: "it has no @" };
  if (raw.indexOf("@") !== at) return { reason: "it has more than one @" };
  const local = raw.slice(0, at);
  const domain = raw.slice(at + 1);
  if (local === "") return { reason: "the part before @ is empty" };
  if (domain === "") return { reason: "the domain after @ is missing" };
  const localBytes = Buffer.byteLength(local, "utf8");
  if (localBytes > LOCAL_MAX) return { reason: `the part before @ is ${localBytes} bytes, over the limit of ${LOCAL_MAX}` };
  if (!DOT_ATOM.test(local)) {
    return {
      reason: /[^\x00-\x7f]/.test(local)
        ? "the part before @ has non-ASCII characters, which need SMTPUTF8; that is not supported"
        : "the part before @ may hold only letters, digits, the characters !#$%&'*+/=?^_`{|}~- and single dots between them",
    };
  }
  const domainReason = domainProblem(domain);
  if (domainReason !== null) return { reason: domainReason };
  const address = `${local}@${normalizeDomain(domain)}`;
  if (address.length > ADDRESS_MAX) return { reason: `it is ${address.length} characters in ASCII form, over the limit of ${ADDRESS_MAX}` };
  return { address };
}

/** Why `domain` is not a domain name or bracketed IP literal, or null. */
function domainProblem(domain: string): string | null {
  if (domain === "") return "the domain is empty";
  if (domain.startsWith("[") || domain.endsWith("]")) {
    const inner = domain.slice(1, -1);
    const ok =
      domain.startsWith("[") &&
      domain.endsWith("]") &&
      (/^ipv6:/i.test(inner) ? isIPv6(inner.slice(5)) : isIPv4(inner));
    return ok ? null : `the domain ${describe(domain)} is not an IP literal such as [192.0.2.1] or [IPv6:2001:db8::1]`;
  }
  if (domain.length > DOMAIN_MAX) return `the domain is ${domain.length} characters, over the limit of ${DOMAIN_MAX}`;
  if (/[^A-Za-z0-9.\-\u0080-\uffff]/.test(domain)) return "the domain may hold only letters, digits, hyphens and dots";
  const ascii = domainToASCII(domain);
  if (ascii === "") return `the domain ${describe(domain)} is not a valid domain name`;
  if (ascii.length > DOMAIN_MAX) return `the domain is ${ascii.length} characters in punycode, over the limit of ${DOMAIN_MAX}`;
  const labels = ascii.split(".");
  for (const label of labels) {
    if (!LABEL.test(label)) {
      return label === ""
        ? "the domain has an empty label (a leading, trailing or doubled dot)"
        : `the domain label ${describe(label)} is not valid (1 to 63 letters, digits or inner hyphens)`;
    }
  }
  if (/^\d+$/.test(labels[labels.length - 1] ?? "")) {
    return "the domain looks like an IP address; write an IP literal in brackets, such as [192.0.2.1]";
  }
  return null;
}

/** The ASCII (punycode, lower-case) form of a domain that passed `domainProblem`. */
function normalizeDomain(domain: string): string {
  if (domain.startsWith("[")) return domain;
  return domainToASCII(domain);
}

function domainOf(address: string): string {
  return address.slice(address.lastIndexOf("@") + 1);
}

// --- text ------------------------------------------------------------------------------------

function isWellFormed(s: string): boolean {
  const native = (s as { isWellFormed?: () => boolean }).isWellFormed;
  return typeof native === "function" ? native.call(s) : !LONE_SURROGATE.test(s);
}

/**
 * Why a single-line string is refused, or null: NUL, CR/LF, other C0 control characters (tab allowed
 * where `allowTab`), DEL, C1 control characters (U+0080 to U+009F, NEL among them), the Unicode line
 * and paragraph separators U+2028 and U+2029 (some programs break lines there), lone surrogates.
 */
function textProblem(s: string, opts: { allowTab: boolean }): string | null {
  if (s.includes("\0")) return "contains a NUL character";
  if (/[\r\n]/.test(s)) return "contains a line break (CR or LF), which would start a new header line; remove it";
  const ctl = (opts.allowTab ? FORBIDDEN_CHAR : FORBIDDEN_CHAR_OR_TAB).exec(s);
  if (ctl !== null) {
    const code = ctl[0].charCodeAt(0);
    const u = `U+${code.toString(16).toUpperCase().padStart(4, "0")}`;
    if (code === 0x2028 || code === 0x2029) {
      return `contains the Unicode ${code === 0x2028 ? "line" : "paragraph"} separator ${u}, which some programs treat as a line break; remove it`;
    }
    return `contains the control character ${u}`;
  }
  if (!isWellFormed(s)) return "is not well-formed UTF-16 (it has a lone surrogate), so it has no UTF-8 form";
  return null;
}

/** Like `textProblem`, plus the 998-octet line limit for text that ends up in a header `key: value`. */
function headerTextProblem(s: string, key: string, what = "value"): string | null {
  const t = textProblem(s, { allowTab: true });
  if (t !== null) return t;
  // nodemailer folds ASCII text at whitespace only (non-ASCII text becomes short encoded words).
  if (!/[^\x00-\x7f]/.test(s)) {
    let longest = 0;
    for (const word of s.split(/[ \t]+/)) longest = Math.max(longest, word.length);
    if (longest + key.length + 2 > MAX_HEADER_WORD) {
      return `has a ${longest}-character run without spaces, too long for one header line (RFC 5322 limits lines to 998 octets); shorten the ${what}`;
    }
  }
  return null;
}

/** The UTF-8 bytes of `s` without its spaces and tabs: a lower bound of its size in a header. */
function headerTextBytes(s: string): number {
  let blanks = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c === 0x20 || c === 0x09) blanks++;
  }
  return Buffer.byteLength(s, "utf8") - blanks;
}

function checkBody(value: unknown, field: "text" | "html", problems: string[]): string | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== "string") {
    problems.push(`${field}: must be a string, got ${describe(value)}`);
    return undefined;
  }
  if (value.includes("\0")) {
    problems.push(`${field}: contains a NUL character; send binary data as an attachment`);
    return undefined;
  }
  if (!isWellFormed(value)) {
    problems.push(`${field}: is not well-formed UTF-16 (it has a lone surrogate), so it has no UTF-8 form`);
    return undefined;
  }
  // Each CRLF, lone CR and lone LF is one line break, stored as CRLF (see composeMail).
  return LONE_LINE_BREAK.test(value) ? value.replace(LINE_BREAK, "\r\n") : value;
}

// --- headers ---------------------------------------------------------------------------------

function checkHeaders(value: unknown, problems: string[]): (readonly [string, string])[] {
  const out: (readonly [string, string])[] = [];
  if (value === undefined) return out;
  if (!isPlainObject(value)) {
    problems.push(`headers: must be a plain object of name: value strings, got ${describe(value)}`);
    return out;
  }
  for (const key of Reflect.ownKeys(value)) {
    if (typeof key === "symbol") {
      problems.push(`headers: has the symbol key ${symbolName(key)}; header names are strings`);
      continue;
    }
    const field = `headers[${quote(key)}]`;
    if (POLLUTION_KEYS.has(key)) {
      problems.push(pollutionProblem(field));
      continue;
    }
    let ok = true;
    const nameReason = textProblem(key, { allowTab: false });
    if (nameReason !== null) {
      problems.push(`${field}: the header name ${nameReason}`);
      ok = false;
    } else if (key === "" || !FIELD_NAME.test(key) || key.length > MAX_HEADER_NAME) {
      problems.push(
        `${field}: is not a header field name; use up to ${MAX_HEADER_NAME} printable ASCII characters without spaces or colons, such as "X-Order-Id"`,
      );
      ok = false;
    } else if (RESERVED_LOWER.has(key.toLowerCase())) {
      problems.push(`${field}: the composer sets this header itself; use the matching field of the mail (from, to, subject...) instead`);
      ok = false;
    }
    const desc = guard(field, problems, undefined, () => Object.getOwnPropertyDescriptor(value, key));
    if (desc === undefined) continue;
    if (!("value" in desc)) {
      problems.push(`${field}: is a getter or setter; pass plain data`);
      continue;
    }
    const v: unknown = desc.value;
    if (typeof v !== "string") {
      problems.push(`${field}: the value must be a string, got ${describe(v)}`);
      continue;
    }
    if (v.trim() === "") {
      problems.push(`${field}: the value is empty; leave the header out instead`);
      continue;
    }
    const valueReason = headerTextProblem(v, key);
    if (valueReason !== null) {
      problems.push(`${field}: the value ${valueReason}`);
      continue;
    }
    if (ok) out.push([key, v]);
  }
  return out;
}

// --- attachments -----------------------------------------------------------------------------

function checkAttachments(value: unknown, problems: string[]): CheckedAttachment[] {
  const out: CheckedAttachment[] = [];
  if (value === undefined) return out;
  if (!Array.isArray(value)) {
    problems.push(`attachments: must be an array, got ${describe(value)}`);
    return out;
  }
  if (value.length > MAX_ATTACHMENTS) {
    problems.push(`attachments: ${value.length} attachments, over the limit of ${MAX_ATTACHMENTS}; zip them into one`);
    return out;
  }
  for (let i = 0; i < value.length; i++) {
    const field = `attachments[${i}]`;
    const a = guard(field, problems, null, () => {
      const desc = Object.getOwnPropertyDescriptor(value, i);
      if (desc === undefined || !("value" in desc)) {
        problems.push(`${field}: is ${desc === undefined ? "a hole in the array" : "a getter"}; pass { filename, content }`);
        return null;
      }
      return checkAttachment(desc.value, field, problems);
    });
    if (a !== null) out.push(a);
  }
  return out;
}

function checkAttachment(item: unknown, field: string, problems: string[]): CheckedAttachment | null {
  if (!isPlainObject(item)) {
    problems.push(`${field}: must be an object such as { filename, content }, got ${describe(item)}`);
    return null;
  }
  const before = problems.length;
  // path and href get their own sentence, so take them out of the unknown-field check.
  for (const key of ["path", "href"] as const) {
    if (Object.prototype.hasOwnProperty.call(item, key)) {
      problems.push(
        `${field}.${key}: ${key === "path" ? "file paths" : "URLs"} are not accepted; nothing may be read from disk or the network inside a transaction; pass the bytes as content`,
      );
    }
  }
  const rest = Object.create(null) as Record<string, unknown>;
  for (const key of Reflect.ownKeys(item)) {
    if (key === "path" || key === "href") continue;
    const desc = Object.getOwnPropertyDescriptor(item, key);
    if (desc !== undefined) Object.defineProperty(rest, key, desc);
  }
  const f = readOwnFields(rest, field, ATTACHMENT_FIELDS, problems);

  const content = f.get("content");
  const encodingValue = f.get("encoding");
  let encoding: (typeof ENCODINGS)[number] | undefined;
  if (encodingValue !== undefined) {
    if (typeof encodingValue !== "string" || !(ENCODINGS as readonly string[]).includes(encodingValue)) {
      problems.push(`${field}.encoding: must be one of ${ENCODINGS.join(", ")}, got ${describe(encodingValue)}`);
    } else {
      encoding = encodingValue as (typeof ENCODINGS)[number];
    }
  }
  const bytes = guard(`${field}.content`, problems, undefined, () => checkContent(content, encoding, f.has("content"), field, before, problems));

  const filename = checkToken(f.get("filename"), `${field}.filename`, MAX_FILENAME, problems, true);
  const contentType = checkToken(f.get("contentType"), `${field}.contentType`, MAX_TOKEN, problems, false);
  if (contentType !== undefined) {
    if (!CONTENT_TYPE.test(contentType)) {
      problems.push(`${field}.contentType: ${describe(contentType)} is not a MIME type such as "application/pdf"`);
    } else if (/^multipart\//i.test(contentType)) {
      problems.push(`${field}.contentType: multipart types describe the message structure and cannot be an attachment's type`);
    }
  }
  const cid = checkToken(f.get("cid"), `${field}.cid`, MAX_TOKEN, problems, false);
  if (cid !== undefined && /[^\x21-\x3b\x3d\x3f-\x7e]/.test(cid.replace(/^<(.*)>$/, "$1"))) {
    problems.push(`${field}.cid: may hold only printable ASCII without spaces or angle brackets; use an id such as "logo@example.com"`);
  }
  const disposition = f.get("contentDisposition");
  if (disposition !== undefined && !(DISPOSITIONS as readonly unknown[]).includes(disposition)) {
    problems.push(`${field}.contentDisposition: must be "attachment" or "inline", got ${describe(disposition)}`);
  }

  if (problems.length > before || bytes === undefined) return null;
  if (contentType !== undefined && /^message\//i.test(contentType)) {
    // A message/* part cannot be encoded (RFC 2046 5.2.1): its bytes go out as they are, so its line
    // breaks are made CRLF here and its label says whether it has 8-bit bytes.
    const part = messagePart(typeof bytes === "string" ? Buffer.from(bytes, encoding ?? "utf8") : bytes);
    if ("reason" in part) {
      problems.push(`${field}.content: ${part.reason}`);
      return null;
    }
    return {
      ...(filename !== undefined ? { filename } : {}),
      content: part.bytes,
      contentType,
      ...(cid !== undefined ? { cid } : {}),
      ...(disposition !== undefined ? { contentDisposition: disposition as (typeof DISPOSITIONS)[number] } : {}),
      contentTransferEncoding: part.eightBit ? "8bit" : "7bit",
      minComposedBytes: part.bytes.length,
    };
  }
  // Every other attachment goes out base64-encoded.
  const rawBytes = typeof bytes === "string" ? Buffer.byteLength(bytes, encoding ?? "utf8") : bytes.length;
  return {
    ...(filename !== undefined ? { filename } : {}),
    content: bytes,
    ...(encoding !== undefined ? { encoding } : {}),
    ...(contentType !== undefined ? { contentType } : {}),
    ...(cid !== undefined ? { cid } : {}),
    ...(disposition !== undefined ? { contentDisposition: disposition as (typeof DISPOSITIONS)[number] } : {}),
    minComposedBytes: 4 * Math.ceil(rawBytes / 3),
  };
}

/**
 * The bytes of an attachment's `content` (a string, or a Buffer that is the library's own view of the
 * caller's memory, so nothing the caller overrides is called later), or undefined with a problem.
 */
function checkContent(
  content: unknown,
  encoding: (typeof ENCODINGS)[number] | undefined,
  given: boolean,
  field: string,
  before: number,
  problems: string[],
): string | Buffer | undefined {
  let bytes: string | Buffer | undefined;
  if (content === undefined) {
    if (!given && problems.length === before) {
      problems.push(`${field}.content: is missing; pass the bytes as a Buffer, Uint8Array or string`);
    }
  } else if (typeof content === "string") {
    const reason = isWellFormed(content) ? null : "is not well-formed UTF-16 (it has a lone surrogate); pass a Buffer for binary data";
    if (reason !== null) problems.push(`${field}.content: ${reason}`);
    else if (encoding === "base64" && !/^[A-Za-z0-9+/\s]*={0,2}\s*$/.test(content)) {
      problems.push(`${field}.content: is not base64 although encoding is "base64"`);
    } else if (encoding === "hex" && (content.length % 2 !== 0 || !/^[0-9A-Fa-f]*$/.test(content))) {
      problems.push(`${field}.content: is not an even number of hex digits although encoding is "hex"`);
    } else bytes = content;
  } else if (ArrayBuffer.isView(content) && content instanceof Uint8Array) {
    if (encoding !== undefined) {
      problems.push(`${field}.encoding: applies only to string content; leave it out for a Buffer or Uint8Array`);
    }
    bytes = Buffer.from(
      typedArrayBuffer.call(content) as ArrayBuffer,
      typedArrayByteOffset.call(content) as number,
      typedArrayByteLength.call(content) as number,
    );
  } else if (content instanceof ArrayBuffer) {
    problems.push(`${field}.content: is an ArrayBuffer; wrap it as Buffer.from(arrayBuffer)`);
  } else if (content !== null && typeof content === "object" && typeof (content as { pipe?: unknown }).pipe === "function") {
    problems.push(`${field}.content: streams are not accepted; read the stream into a Buffer before the transaction`);
  } else {
    problems.push(`${field}.content: must be a Buffer, Uint8Array or string, got ${describe(content)}`);
  }
  return bytes;
}

/**
 * The content of a message/* part with every line break made CRLF (a lone CR or LF is one line
 * break), and whether it has 8-bit bytes; or why it cannot be sent unencoded. Returns `buf` itself
 * when it needs no change.
 */
function messagePart(buf: Buffer): { bytes: Buffer; eightBit: boolean } | { reason: string } {
  const why = "; a message/* part cannot be encoded (RFC 2046 5.2.1), so attach it as application/octet-stream instead";
  let eightBit = false;
  let lone = false;
  let line = 0;
  for (let i = 0; i < buf.length; i++) {
    const c = buf[i] as number;
    if (c === 0x0d || c === 0x0a) {
      if (c === 0x0d && buf[i + 1] === 0x0a) i++;
      else lone = true;
      line = 0;
    } else if (c === 0) {
      return { reason: `has a NUL byte at offset ${i}${why}` };
    } else {
      if (c > 0x7f) eightBit = true;
      if (++line > 998) return { reason: `has a line longer than 998 octets (RFC 5322 2.1.1)${why}` };
    }
  }
  // latin1 maps each byte to one code unit and back, so only the line breaks change.
  return { bytes: lone ? Buffer.from(buf.toString("latin1").replace(LINE_BREAK, "\r\n"), "latin1") : buf, eightBit };
}

/** A short single-line string field of an attachment. */
function checkToken(value: unknown, field: string, max: number, problems: string[], allowSpaces: boolean): string | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== "string") {
    problems.push(`${field}: must be a string, got ${describe(value)}`);
    return undefined;
  }
  if (value.trim() === "") {
    problems.push(`${field}: is empty; leave it out instead`);
    return undefined;
  }
  const reason = textProblem(value, { allowTab: false });
  if (reason !== null) {
    problems.push(`${field}: ${reason}`);
    return undefined;
  }
  if (value.length > max) {
    problems.push(`${field}: is ${value.length} characters, over the limit of ${max}`);
    return undefined;
  }
  if (!allowSpaces && /^\s|\s$/.test(value)) {
    problems.push(`${field}: has leading or trailing spaces; remove them`);
    return undefined;
  }
  return value;
}

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

// --- metadata --------------------------------------------------------------------------------

/**
 * `metadata` must be plain JSON that survives a round trip unchanged: null, booleans, finite
 * numbers, well-formed strings, arrays without holes, and plain objects. Refused, each with its
 * path: undefined (JSON would drop it silently), functions, symbols, bigint, NaN and Infinity
 * (JSON turns them into null), Dates (JSON turns them into strings: pass `date.toISOString()`),
 * other class instances (Map, Set, Buffer...), cycles, nesting deeper than 64, and the keys
 * `__proto__`, `constructor`, `prototype`. The serialised JSON may be at most 64 KiB.
 * `undefined` or `null` metadata is stored as null. The value returned is a deep copy.
 */
function checkMetadata(fields: Map<string, unknown>, problems: string[]): JsonValue | null {
  if (!fields.has("metadata")) return null;
  const value = fields.get("metadata");
  if (value === null) return null;
  const found: string[] = [];
  const copy = copyJson(value, "metadata", 0, new Set(), found);
  if (found.length > 0) {
    problems.push(...found.slice(0, MAX_METADATA_PROBLEMS));
    if (found.length > MAX_METADATA_PROBLEMS) {
      problems.push(`metadata: ${found.length - MAX_METADATA_PROBLEMS} more problems like these were found and not listed`);
    }
    return null;
  }
  const bytes = Buffer.byteLength(JSON.stringify(copy), "utf8");
  if (bytes > MAX_METADATA_BYTES) {
    problems.push(
      `metadata: serialises to ${bytes} bytes of JSON, over the limit of ${MAX_METADATA_BYTES}; keep large data in your own tables and put its id here`,
    );
    return null;
  }
  return copy;
}

function copyJson(value: unknown, path: string, depth: number, ancestors: Set<object>, found: string[]): JsonValue {
  if (found.length > MAX_METADATA_PROBLEMS) return null;
  if (typeof value !== "object" || value === null) return copyJsonValue(value, path, depth, ancestors, found);
  // Objects are where a getter or Proxy can throw; the innermost path that threw is named.
  try {
    return copyJsonValue(value, path, depth, ancestors, found);
  } catch (err) {
    found.push(unreadable(path, err));
    return null;
  }
}

function copyJsonValue(value: unknown, path: string, depth: number, ancestors: Set<object>, found: string[]): JsonValue {
  switch (typeof value) {
    case "string":
      if (!isWellFormed(value)) found.push(`${path}: is not well-formed UTF-16 (it has a lone surrogate)`);
      return value;
    case "boolean":
      return value;
    case "number":
      if (!Number.isFinite(value)) found.push(`${path}: ${value} is not a JSON number (JSON would store it as null)`);
      return value;
    case "undefined":
      found.push(`${path}: is undefined, which JSON drops; use null or leave the key out`);
      return null;
    case "bigint":
      found.push(`${path}: is a bigint, which JSON cannot hold; pass it as a string`);
      return null;
    case "function":
    case "symbol":
      found.push(`${path}: is a ${typeof value}, which JSON cannot hold`);
      return null;
  }
  if (value === null) return null;
  const obj = value as object;
  if (ancestors.has(obj)) {
    found.push(`${path}: refers back to one of its parents (a cycle), which JSON cannot hold`);
    return null;
  }
  if (depth >= MAX_METADATA_DEPTH) {
    found.push(`${path}: nests deeper than ${MAX_METADATA_DEPTH} levels`);
    return null;
  }
  if (isDate(obj)) {
    found.push(`${path}: is a Date, which JSON turns into a string; pass date.toISOString()`);
    return null;
  }
  ancestors.add(obj);
  try {
    if (Array.isArray(obj)) {
      const out: JsonValue[] = [];
      const length = obj.length;
      // Each element serialises to at least one byte and a comma.
      if (length > MAX_METADATA_BYTES / 2) {
        found.push(`${path}: has ${length} elements, more than fit in ${MAX_METADATA_BYTES} bytes of JSON`);
        return null;
      }
      for (let i = 0; i < length; i++) {
        if (found.length > MAX_METADATA_PROBLEMS) break;
        const desc = Object.getOwnPropertyDescriptor(obj, i);
        if (desc === undefined || !("value" in desc)) {
          found.push(`${path}[${i}]: is ${desc === undefined ? "a hole in the array" : "a getter"}; pass plain data`);
          out.push(null);
          continue;
        }
        out.push(copyJson(desc.value, `${path}[${i}]`, depth + 1, ancestors, found));
      }
      return out;
    }
    if (!isPlainObject(obj)) {
      found.push(`${path}: is ${describe(obj)}, not plain JSON; convert it to a plain object, array or string`);
      return null;
    }
    const out: { [key: string]: JsonValue } = {};
    for (const key of Reflect.ownKeys(obj)) {
      if (typeof key === "symbol") {
        found.push(`${path}: has the symbol key ${symbolName(key)}, which JSON drops`);
        continue;
      }
      const field = join(path, key);
      if (POLLUTION_KEYS.has(key)) {
        found.push(pollutionProblem(field));
        continue;
      }
      if (!isWellFormed(key)) {
        found.push(`${path}: has a key that is not well-formed UTF-16 (a lone surrogate)`);
        continue;
      }
      const desc = Object.getOwnPropertyDescriptor(obj, key);
      if (desc === undefined) continue;
      if (!("value" in desc)) {
        found.push(`${field}: is a getter or setter; pass plain data`);
        continue;
      }
      if (!desc.enumerable) continue; // JSON.stringify leaves these out as well
      // Plain assignment is safe: "__proto__" was refused above.
      out[key] = copyJson(desc.value, field, depth + 1, ancestors, found);
    }
    return out;
  } finally {
    ancestors.delete(obj);
  }
}

// --- small helpers ---------------------------------------------------------------------------

function isPlainObject(value: unknown): value is object {
  if (value === null || typeof value !== "object" || Array.isArray(value)) return false;
  const proto = Object.getPrototypeOf(value) as unknown;
  return proto === Object.prototype || proto === null;
}

function isDate(value: unknown): value is Date {
  return value instanceof Date;
}

function isIntIn(value: unknown, min: number, max: number): value is number {
  return typeof value === "number" && Number.isInteger(value) && value >= min && value <= max;
}

function symbolName(key: symbol): string {
  return `Symbol(${key.description === undefined ? "" : quote(key.description)})`;
}

/** `s` as a JSON string with DEL, the C1 controls and U+2028/U+2029 escaped as well, so it prints safely. */
function quote(s: string): string {
  return JSON.stringify(s).replace(/[\u007f-\u009f\u2028\u2029]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
}

/**
 * A short, safe rendering of a value for a problem sentence (no raw control characters). Never throws:
 * inspecting a Proxy or a class with a throwing `name` gives a generic answer.
 */
function describe(value: unknown): string {
  try {
    return describeUnsafe(value);
  } catch {
    return "a value that could not be inspected";
  }
}

function describeUnsafe(value: unknown): string {
  if (value === null) return "null";
  if (value === undefined) return "undefined";
  switch (typeof value) {
    case "string": {
      return quote(value.length > 80 ? `${value.slice(0, 77)}...` : value);
    }
    case "number":
    case "boolean":
      return String(value);
    case "bigint":
      return `${value}n`;
    case "function":
      return "a function";
    case "symbol":
      return "a symbol";
  }
  if (Array.isArray(value)) return "an array";
  if (isDate(value)) return "a Date";
  if (Buffer.isBuffer(value)) return "a Buffer";
  const proto = Object.getPrototypeOf(value) as { constructor?: { name?: unknown } } | null;
  const name = proto?.constructor?.name;
  if (proto === Object.prototype || proto === null) return "an object";
  return typeof name === "string" && name !== "" ? `a ${name}` : "an object";
}
