/**
 * Checking a whole `MailInput` before anything is composed: every field is read once, through
 * plain-data.ts (so a getter or Proxy that throws is a problem naming the field, never a raw error),
 * and handed to the check of its concept: addresses.ts, text.ts (subject, bodies), attachments.ts,
 * headers.ts, json.ts (metadata), and the queue fields here (priority, sendAt, idempotencyKey,
 * maxAttempts). Every problem is collected, in the order of the fields, before anything is refused.
 */
import { checkRecipients, parseAddressList, parseSingleMailbox, type AddressList, type Mailbox } from "./addresses.js";
import { checkAttachments, type CheckedAttachment } from "./attachments.js";
import { checkHeaders, headerTextBytes, headerTextProblem } from "./headers.js";
import { checkMetadata } from "./json.js";
import { describe, guard, isDate, isIntIn, isPlainObject, readOwnFields, unreadable } from "./plain-data.js";
import { checkBody, textProblem } from "./text.js";
import type { ComposeDefaults, JsonValue, MailInput } from "./types.js";

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

/** Hints for unknown top-level fields, by their name in lower case without `-`, `_` or spaces. */
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

/** The Date.prototype.getTime intrinsic: reads a real Date's time without calling anything the input overrides. */
const dateGetTime = Date.prototype.getTime;

/** A mail that passed every check, in the form the composer takes. */
export interface CheckedMail {
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

/** Every problem found, and the checked mail when there is none. */
export interface MailCheck {
  readonly problems: string[];
  readonly mail: CheckedMail | null;
}

/**
 * `checkFields`, with the guarantee that reading the input never throws out of it: each field is read
 * under a guard that turns an exception into a problem naming the field (the innermost guard wins), and
 * anything that still escapes becomes a problem of the whole mail.
 */
export function checkMail(input: unknown, defaults: ComposeDefaults): MailCheck {
  const problems: string[] = [];
  try {
    return checkFields(input, defaults, problems);
  } catch (err) {
    problems.push(unreadable("mail", err));
    return { problems, mail: null };
  }
}

function checkFields(input: unknown, defaults: ComposeDefaults, problems: string[]): MailCheck {
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
  checkRecipients(to, cc, bcc, problems);

  // Subject, bodies, attachments, headers.
  const subject = checkSubject(fields.get("subject"), problems);
  const text = checkBody(fields.get("text"), "text", problems);
  const html = checkBody(fields.get("html"), "html", problems);
  const attachments = read("attachments", [], () => checkAttachments(fields.get("attachments"), problems));
  const headers = read("headers", [], () => checkHeaders(fields.get("headers"), problems));

  // Queue fields. `fields` holds no undefined values: a field set to undefined counts as absent.
  let priority = 0;
  if (fields.has("priority")) {
    const p = fields.get("priority");
    if (!isIntIn(p, -1000, 1000)) problems.push(`priority: must be an integer from -1000 to 1000, got ${describe(p)}`);
    else priority = p;
  }
  const sendAt = fields.has("sendAt") ? checkSendAt(fields.get("sendAt"), problems) : undefined;
  const idempotencyKey = checkIdempotencyKey(fields.get("idempotencyKey"), problems);
  let maxAttempts: number | undefined;
  if (fields.has("maxAttempts")) {
    const m = fields.get("maxAttempts");
    if (!isIntIn(m, 1, 1000)) problems.push(`maxAttempts: must be an integer from 1 to 1000, got ${describe(m)}`);
    else maxAttempts = m;
  }
  const metadata = read("metadata", null, () => checkMetadata(fields.get("metadata"), problems));

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

/** The subject (`""` when absent or refused). */
function checkSubject(value: unknown, problems: string[]): string {
  if (value === undefined) return "";
  if (typeof value !== "string") {
    problems.push(`subject: must be a string, got ${describe(value)}`);
    return "";
  }
  const reason = headerTextProblem(value, "Subject");
  if (reason !== null) {
    problems.push(`subject: ${reason}`);
    return "";
  }
  return value;
}

/** A copy of a given `sendAt`, or undefined with a problem. */
function checkSendAt(value: unknown, problems: string[]): Date | undefined {
  const before = problems.length;
  // A Date subclass may override getTime; the intrinsic reads the real time (and throws for a Proxy).
  const time = guard("sendAt", problems, null, () => (isDate(value) ? (dateGetTime.call(value) as number) : null));
  if (problems.length > before) {
    // unreadable: the guard said so
  } else if (time !== null) {
    if (Number.isNaN(time)) problems.push("sendAt: is an Invalid Date; pass a valid Date, or leave sendAt out to send now");
    else return new Date(time);
  } else if (typeof value === "string") {
    problems.push(`sendAt: must be a Date, got the string ${describe(value)}; pass new Date(${describe(value)}) if that is the time you mean`);
  } else {
    problems.push(`sendAt: must be a Date, got ${describe(value)}`);
  }
  return undefined;
}

/** The idempotency key; null when absent, null (the stored "no key") or refused. */
function checkIdempotencyKey(value: unknown, problems: string[]): string | null {
  if (value === undefined || value === null) return null;
  if (typeof value !== "string") {
    problems.push(`idempotencyKey: must be a string, got ${describe(value)}`);
  } else if (value.length === 0) {
    problems.push("idempotencyKey: is empty; pass a non-empty key or leave it out");
  } else if (value.length > MAX_IDEMPOTENCY_KEY_LENGTH) {
    problems.push(`idempotencyKey: is ${value.length} characters, over the limit of ${MAX_IDEMPOTENCY_KEY_LENGTH}; hash longer keys`);
  } else {
    const reason = textProblem(value, { allowTab: false });
    if (reason === null) return value;
    problems.push(`idempotencyKey: ${reason}`);
  }
  return null;
}
