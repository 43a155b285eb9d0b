/**
 * Read a delivery status notification (RFC 3464: `multipart/report; report-type=delivery-status`)
 * into what the outbox records: per recipient the action, status, remote MTA, diagnostic and
 * date, plus what links the report to its mail (the original envelope id, the Message-ID of the
 * returned headers, the addresses the report was sent to for VERP).
 *
 * The MIME structure is mailparser's job (`keepDeliveryStatus` keeps the `message/delivery-status`
 * part as it is); this module reads the fields of that part (RFC 3464 section 2: a group of
 * per-message fields, then one group per recipient, separated by empty lines) and maps them to
 * delivery events:
 *
 * | Action | Status | event |
 * | --- | --- | --- |
 * | delivered, relayed, expanded | any | delivered |
 * | delayed | any | deferred |
 * | failed | 5.x.x (or none) | bounced |
 * | failed | 4.x.x | expired (the MTA gave up after retrying) |
 *
 * A recipient with another action is left out. Postfix's reports also carry `X-Postfix-Queue-ID`,
 * the queue id the log follower sees: it becomes the events' `queueId`.
 */
import { createHash } from "node:crypto";
import { simpleParser, type ParsedMail } from "mailparser";
import addressparser from "nodemailer/lib/addressparser";
import { UnreadableReportError } from "../errors.js";
import { normalizeMessageId } from "../ids.js";
import type { DeliveryEventInput, DeliveryEventKind } from "../store.js";

/** One per-recipient group of a delivery report. */
export interface DsnRecipient {
  /** `Final-Recipient`, without its address type (`rfc822;`). */
  readonly finalRecipient: string | null;
  /** `Original-Recipient` (the ORCPT the sender gave), without its address type; null when absent. */
  readonly originalRecipient: string | null;
  /** `Action`, lower case: failed, delayed, delivered, relayed, expanded. */
  readonly action: string;
  /** `Status`: the enhanced status code (RFC 3463), e.g. `5.1.1`. */
  readonly status: string | null;
  /** `Remote-MTA`, without its type (`dns;`). */
  readonly remoteMta: string | null;
  /** `Diagnostic-Code`, without its type (`smtp;`, `X-Postfix;`): the remote reply or the reason. */
  readonly diagnosticCode: string | null;
  readonly lastAttemptDate: Date | null;
}

/** A delivery report, read. */
export interface DeliveryReport {
  /** The report's own Message-ID (with angle brackets), or null. */
  readonly messageId: string | null;
  /** `Original-Envelope-Id`: the ENVID the sender gave (the mail id or its token), or null. */
  readonly originalEnvelopeId: string | null;
  /** `Reporting-MTA`, without its type. */
  readonly reportingMta: string | null;
  readonly arrivalDate: Date | null;
  /** The MTA's queue id of the original mail where the report names it (Postfix's `X-Postfix-Queue-ID`). */
  readonly queueId: string | null;
  /** The Message-ID of the returned message or headers (with angle brackets), or null. */
  readonly returnedMessageId: string | null;
  /** The addresses the report was sent to, from `X-Original-To`, `Delivered-To` and `To`: where a VERP token is. */
  readonly addressedTo: readonly string[];
  readonly recipients: readonly DsnRecipient[];
  /** SHA-256 (hex) of the whole input: the report's identity when it has no Message-ID. */
  readonly sha256: string;
}

type Fields = Map<string, string>;

/** RFC 822-style fields of one group: unfolded, names lower-cased; the first of a repeated name wins. */
function readFields(block: string): Fields {
  const fields: Fields = new Map();
  const unfolded = block.replace(/\r?\n[ \t]+/g, " ");
  for (const line of unfolded.split(/\r?\n/)) {
    const colon = line.indexOf(":");
    if (colon <= 0) continue;
    const name = line.slice(0, colon).trim().toLowerCase();
    if (!fields.has(name)) fields.set(name, line.slice(colon + 1).trim());
  }
  return fields;
}

/** `rfc822; ann@example.com` -> `ann@example.com` (the type before the first `;` dropped). */
function untyped(value: string | undefined): string | null {
  if (value === undefined) return null;
  const semi = value.indexOf(";");
  const v = (semi >= 0 ? value.slice(semi + 1) : value).trim();
  return v === "" ? null : v;
}

function address(value: string | undefined): string | null {
  const v = untyped(value);
  return v === null ? null : v.replace(/^<(.*)>$/, "$1");
}

function date(value: string | undefined): Date | null {
  if (value === undefined) return null;
  const d = new Date(value.replace(/\([^)]*\)/g, "").trim());
  return Number.isNaN(d.getTime()) ? null : d;
}

function headerMessageId(text: string): string | null {
  const end = text.search(/\r?\n\r?\n/);
  const fields = readFields(end >= 0 ? text.slice(0, end) : text);
  const raw = fields.get("message-id");
  if (raw === undefined) return null;
  const m = /<[^<>\s]+>/.exec(raw);
  return normalizeMessageId(m ? m[0] : raw);
}

function addressesIn(parsed: ParsedMail): string[] {
  const out: string[] = [];
  for (const { key, line } of parsed.headerLines) {
    if (key !== "x-original-to" && key !== "delivered-to" && key !== "to") continue;
    const value = line.slice(line.indexOf(":") + 1).replace(/\r?\n[ \t]+/g, " ");
    for (const a of addressparser(value, { flatten: true })) if (a.address) out.push(a.address);
  }
  return [...new Set(out)];
}

/**
 * Parse a delivery report.
 *
 * @throws UnreadableReportError when the input is not a MIME message with a
 *   `message/delivery-status` (or `message/global-delivery-status`) part with at least one
 *   recipient group.
 */
export async function parseDeliveryReport(input: Buffer): Promise<DeliveryReport> {
  if (input.length === 0) throw new UnreadableReportError("the input is empty");
  let parsed: ParsedMail;
  try {
    parsed = await simpleParser(input, { keepDeliveryStatus: true, skipHtmlToText: true, skipTextToHtml: true, skipImageLinks: true });
  } catch (err) {
    throw new UnreadableReportError(`it is not a readable MIME message (${(err as Error).message})`, { cause: err });
  }
  const status = parsed.attachments.find((a) => /^message\/(global-)?delivery-status$/i.test(a.contentType));
  if (!status) {
    const type = parsed.headers.get("content-type") as { value?: string } | undefined;
    throw new UnreadableReportError(
      `it has no message/delivery-status part (RFC 3464); its Content-Type is ${type?.value ?? "not given"}${parsed.subject ? `, subject ${JSON.stringify(parsed.subject)}` : ""}`,
    );
  }
  const groups = status.content
    .toString("utf8")
    .split(/\r?\n(?:[ \t]*\r?\n)+/)
    .map((g) => g.trim())
    .filter((g) => g !== "")
    .map(readFields);
  const [perMessage, ...perRecipient] = groups;
  const recipients = perRecipient
    .filter((f) => f.has("final-recipient") && f.has("action"))
    .map(
      (f): DsnRecipient => ({
        finalRecipient: address(f.get("final-recipient")),
        originalRecipient: address(f.get("original-recipient")),
        action: f.get("action")!.toLowerCase().split(/[\s(;]/)[0]!,
        status: /\d\.\d{1,3}\.\d{1,3}/.exec(f.get("status") ?? "")?.[0] ?? null,
        remoteMta: untyped(f.get("remote-mta")),
        diagnosticCode: untyped(f.get("diagnostic-code")),
        lastAttemptDate: date(f.get("last-attempt-date")),
      }),
    );
  if (!perMessage || recipients.length === 0) throw new UnreadableReportError("its delivery-status part names no recipient (no Final-Recipient with an Action)");

  const returned = parsed.attachments.find((a) => /^(text\/rfc822-headers|message\/rfc822|message\/global|message\/global-headers)$/i.test(a.contentType));
  const envid = perMessage.get("original-envelope-id");
  return {
    messageId: parsed.messageId ? normalizeMessageId(parsed.messageId) : null,
    originalEnvelopeId: envid === undefined || envid === "" ? null : envid,
    reportingMta: untyped(perMessage.get("reporting-mta")),
    arrivalDate: date(perMessage.get("arrival-date")),
    queueId: perMessage.get("x-postfix-queue-id") ?? null,
    returnedMessageId: returned ? headerMessageId(returned.content.toString("latin1")) : null,
    addressedTo: addressesIn(parsed),
    recipients,
    sha256: createHash("sha256").update(input).digest("hex"),
  };
}

/** The event a recipient's Action and Status mean (see the table at the top); null for none. */
export function eventOf(action: string, status: string | null): DeliveryEventKind | null {
  switch (action) {
    case "delivered":
    case "relayed":
    case "expanded":
      return "delivered";
    case "delayed":
      return "deferred";
    case "failed":
      return status?.startsWith("4.") ? "expired" : "bounced";
    default:
      return null;
  }
}

/**
 * The delivery events of a report for the mail `emailId`, one per recipient group with a known
 * action. `at`: the group's Last-Attempt-Date, else the report's Arrival-Date, else `now`.
 * `eventKey`: `dsn:` + SHA-256 of (the report's Message-ID or its body's hash, recipient, action,
 * status), so the same report read twice gives the same keys.
 */
export function reportEvents(report: DeliveryReport, emailId: string, now: Date): DeliveryEventInput[] {
  const identity = report.messageId ?? `sha256:${report.sha256}`;
  const out: DeliveryEventInput[] = [];
  for (const r of report.recipients) {
    const event = eventOf(r.action, r.status);
    const recipient = r.originalRecipient ?? r.finalRecipient;
    if (event === null || recipient === null) continue;
    out.push({
      emailId,
      recipient,
      event,
      at: r.lastAttemptDate ?? report.arrivalDate ?? now,
      source: "dsn",
      queueId: report.queueId,
      dsnStatus: r.status,
      remoteMta: r.remoteMta,
      reply: r.diagnosticCode,
      eventKey: `dsn:${createHash("sha256").update(JSON.stringify([identity, recipient, r.action, r.status])).digest("hex")}`,
    });
  }
  return out;
}
