/**
 * What a hand-off to the MTA ended with: the reply and queue id of a success, or whether a
 * failure is worth retrying.
 *
 * Failures are classified by `err.code` and `err.responseCode` (the fields nodemailer and this
 * library's own errors carry), never by matching message text.
 */
import { redactSecrets } from "./redact.js";

export type HandoffFailureKind = "transient" | "permanent";

export interface ClassifiedFailure {
  /** `transient`: retry later. `permanent`: the MTA refused this mail for good; park it. */
  readonly kind: HandoffFailureKind;
  /** nodemailer's or this library's error code (`ECONNECTION`, `ETIMEDOUT`, `EENVELOPE`, `ESENDMAIL`...). */
  readonly code: string | null;
  /** The SMTP reply code that decided, when the MTA answered (`451`, `550`...). */
  readonly responseCode: number | null;
  /** The SMTP reply text, when the MTA answered. */
  readonly response: string | null;
  /** One line for logs and the outbox row; never contains a password. */
  readonly message: string;
}

/** A successful hand-off: what the MTA answered and which recipients it took. */
export interface HandoffResult {
  /** The MTA's final reply (`250 2.0.0 Ok: queued as 8CCD166093`), or `sendmail exited 0` for the sendmail pipe. */
  readonly response: string;
  /** The MTA's queue id parsed from `response`; null when the reply carries none (the sendmail pipe, smtp-server). */
  readonly queueId: string | null;
  readonly accepted: string[];
  /** Recipients the MTA refused while taking the mail for the others (RCPT TO answered 4xx/5xx). */
  readonly rejected: { recipient: string; response: string | null }[];
}

/** The fields of nodemailer's `SentMessageInfo` that `toHandoffResult` reads. */
export interface SentMessageInfoLike {
  readonly response?: unknown;
  readonly accepted?: readonly unknown[] | undefined;
  readonly rejected?: readonly unknown[] | undefined;
  readonly rejectedErrors?: readonly unknown[] | undefined;
}

/**
 * Error codes that mean the mail itself cannot be sent as it is, even without an SMTP reply:
 * nodemailer refused the envelope before talking to the server, or the message has 8-bit bytes
 * and the server does not offer 8BITMIME (`EightBitMimeError`, nothing was sent).
 */
const PERMANENT_LOCAL_CODES = new Set(["EENVELOPE", "EMAXRECIPIENTS", "E8BITMIME"]);

/**
 * Codes whose reply code says something about the configuration, not about the mail: a wrong
 * password must not park every mail in the outbox as dead. Retried until the operator fixes it.
 */
const CONFIGURATION_CODES = new Set(["EAUTH", "ENOAUTH", "EOAUTH2", "ETLS", "EREQUIRETLS", "ECONFIG", "EPROXY"]);

function field(err: unknown, key: string): unknown {
  return typeof err === "object" && err !== null ? (err as Record<string, unknown>)[key] : undefined;
}

/** nodemailer's `err.command` for the steps that open a session, before any mail is named. */
function isSessionCommand(command: unknown): boolean {
  return typeof command === "string" && /^(?:CONN|EHLO|HELO|LHLO|STARTTLS|AUTH\b)/i.test(command);
}

function responseCodeOf(err: unknown): number | null {
  const rc = field(err, "responseCode");
  if (typeof rc === "number" && Number.isInteger(rc) && rc >= 200 && rc <= 599) return rc;
  return null;
}

/**
 * Codes that mean nothing reached the MTA: the connection was never made, so the hand-off can be
 * tried again at once within the same attempt. Not `ECONNECTION`: nodemailer also reports a
 * connection closed after DATA (the MTA may have the mail) that way.
 */
export function isConnectionRefused(err: unknown): boolean {
  if (err === null || typeof err !== "object" || field(err, "responseCode") !== undefined) return false;
  return field(err, "code") === "ECONNREFUSED" || field(err, "errno") === "ECONNREFUSED" || field(field(err, "cause"), "code") === "ECONNREFUSED";
}

const UNREACHABLE_CODES = new Set(["ECONNECTION", "ECONNREFUSED", "ETIMEDOUT", "ESOCKET", "ECONNRESET", "EPIPE", "EDNS"]);

/**
 * A failure (as {@link classifyError} reports its `code` and `responseCode`) that says the MTA as a
 * whole is unreachable, not that this one mail is unwelcome: a connection error without a reply.
 */
export function isMtaUnreachable(code: string | null, responseCode: number | null): boolean {
  return responseCode === null && code !== null && UNREACHABLE_CODES.has(code);
}

/**
 * The recipients a failed hand-off names as refused (nodemailer's `err.rejectedErrors`, when
 * every recipient was refused), with the reply of each; null when the error names none.
 */
export function rejectedRecipientsOf(err: unknown): { recipient: string; response: string | null }[] | null {
  const list = field(err, "rejectedErrors");
  if (!Array.isArray(list)) return null;
  return list.map((e: unknown) => {
    const recipient = field(e, "recipient");
    const response = field(e, "response");
    return { recipient: String(recipient ?? ""), response: typeof response === "string" ? response : null };
  });
}

/**
 * The SMTP reply code with which the MTA refused `recipient` in a successful hand-off: the
 * `responseCode` of its entry in `info.rejectedErrors` (nodemailer's and the pipelined transport's
 * carry one), else the code that starts that entry's reply (RFC 5321 4.2: three digits, then the
 * text); null when there is none. 4xx defers the recipient, 5xx refuses it for good.
 */
export function recipientReplyCode(info: SentMessageInfoLike, recipient: string): number | null {
  const errors = info.rejectedErrors;
  if (!errors) return null;
  for (const e of errors) {
    if (field(e, "recipient") !== recipient) continue;
    const code = responseCodeOf(e);
    if (code !== null) return code;
    const response = field(e, "response");
    return typeof response === "string" && /^[2-5]\d\d(?:[ -]|$)/.test(response) ? Number(response.slice(0, 3)) : null;
  }
  return null;
}

/**
 * Classify a failed hand-off.
 *
 * - A reply code decides when there is one: 4xx is transient, 5xx permanent (503 "bad sequence
 *   of commands" is transient: it is about the session, not the mail, as nodemailer's own
 *   `err.permanent` says). When every recipient was refused, nodemailer's `EENVELOPE` error
 *   carries a 4xx if any recipient was only deferred, else the 5xx.
 * - Authentication, TLS and proxy failures are transient whatever the reply: they are fixed in
 *   the configuration, and the mail should go out once they are.
 * - So is a session refused before any mail was named (nodemailer's `err.command` CONN, EHLO,
 *   HELO, LHLO, STARTTLS or AUTH ...), even with a 5xx such as a `554` greeting: it says nothing
 *   about this mail.
 * - `EENVELOPE` / `EMAXRECIPIENTS` without a reply (nodemailer refused the addresses itself) are
 *   permanent, and so is `E8BITMIME` (an 8-bit message for a server without 8BITMIME, not sent;
 *   see `EightBitMimeError`).
 * - Everything else is transient: connection errors (`ECONNECTION`, `ETIMEDOUT`, `ESOCKET`,
 *   `ECONNREFUSED`, `EDNS`, `EPROTOCOL`...), a sendmail program that failed (`ESENDMAIL`, see
 *   `SendmailExitError`), a hand-off that timed out (`HandoffTimeoutError`), and anything unknown.
 *
 * @example
 * ```ts
 * try { info = await transporter.sendMail(...) }
 * catch (err) { const f = classifyError(err); if (f.kind === "permanent") park(f.message) else retryLater() }
 * ```
 */
export function classifyError(err: unknown): ClassifiedFailure {
  const rawCode = field(err, "code");
  const code = typeof rawCode === "string" && rawCode !== "" ? rawCode : null;
  const responseCode = responseCodeOf(err);
  const rawResponse = field(err, "response");
  const response = typeof rawResponse === "string" && rawResponse !== "" ? redactSecrets(rawResponse) : null;

  let text: string;
  if (err instanceof Error) text = err.message;
  else if (typeof field(err, "message") === "string") text = field(err, "message") as string;
  else text = String(err);
  text = redactSecrets(text.replace(/\s*[\r\n]+\s*/g, " ").trim()) || "unknown error";
  const message = code !== null && !text.startsWith(code) ? `${code}: ${text}` : text;

  let kind: HandoffFailureKind = "transient";
  if (code !== null && CONFIGURATION_CODES.has(code)) {
    kind = "transient";
  } else if (isSessionCommand(field(err, "command"))) {
    // Refused while opening the session (greeting, EHLO/HELO, STARTTLS, AUTH): the MTA said
    // nothing about this mail, so it is retried, even after a 5xx such as "554 No SMTP service".
    kind = "transient";
  } else if (responseCode !== null) {
    kind = responseCode >= 500 && responseCode !== 503 ? "permanent" : "transient";
  } else if (code !== null && PERMANENT_LOCAL_CODES.has(code)) {
    kind = "permanent";
  }
  return { kind, code, responseCode, response, message };
}

/**
 * The MTA's queue id in a final reply to DATA, or null when the reply names none.
 *
 * - Postfix: `250 2.0.0 Ok: queued as 8CCD166093` (also long ids such as `4Xyz1k2Lm3z9abc`)
 * - Exim: `250 OK id=1abcDE-000123-AB`
 * - Sendmail: `250 2.0.0 x8J3Z4aB012345 Message accepted for delivery`
 * - `250 OK: message queued` (smtp-server's default): null
 */
export function parseQueueId(response: string | null | undefined): string | null {
  if (typeof response !== "string" || response === "") return null;
  const postfix = /\bqueued as ([0-9A-Za-z]+)/i.exec(response);
  if (postfix?.[1]) return postfix[1];
  const exim = /\bid=([0-9A-Za-z]+(?:-[0-9A-Za-z]+)+)/.exec(response);
  if (exim?.[1]) return exim[1];
  const sendmail = /^2\d\d[ -](?:\d\.\d{1,3}\.\d{1,3} +)?([0-9A-Za-z]{8,}) +Message accepted for delivery/im.exec(response);
  if (sendmail?.[1]) return sendmail[1];
  return null;
}

function addressOf(value: unknown): string | null {
  if (typeof value === "string") return value;
  const address = field(value, "address");
  return typeof address === "string" ? address : null;
}

/**
 * Turn nodemailer's `info` from `sendMail()` into what the outbox records.
 * Recipients in `info.rejected` get the reply that refused them from `info.rejectedErrors`.
 */
export function toHandoffResult(info: SentMessageInfoLike): HandoffResult {
  const response = typeof info.response === "string" ? info.response : info.response == null ? "" : String(info.response);
  const accepted = (info.accepted ?? []).map(addressOf).filter((a): a is string => a !== null);
  const errors = info.rejectedErrors ?? [];
  const rejected = (info.rejected ?? [])
    .map(addressOf)
    .filter((a): a is string => a !== null)
    .map((recipient) => {
      const match = errors.find((e) => field(e, "recipient") === recipient);
      const r = field(match, "response");
      return { recipient, response: typeof r === "string" ? r : null };
    });
  return { response, queueId: parseQueueId(response), accepted, rejected };
}
