/**
 * Email addresses: parsing what the application gives (header-style strings, parsed by nodemailer's
 * addressparser with groups flattened, or `{ name, address }`), checking each addr-spec, and the wire
 * form (`local@domain`, the domain in punycode and lower case). See `composeMail` for the rules.
 */
import { isIPv4, isIPv6 } from "node:net";
import { domainToASCII } from "node:url";
import addressparser from "nodemailer/lib/addressparser";
import { headerTextProblem } from "./headers.js";
import { describe, guard, isPlainObject, readOwnFields } from "./plain-data.js";
import { textProblem } from "./text.js";

/**
 * At most this many distinct envelope recipients (to, cc and bcc together) per mail: Postfix's default
 * `smtpd_recipient_limit`, past which it answers 452 to every further RCPT TO. Send several mails instead.
 */
export const MAX_RECIPIENTS = 1000;

const ADDRESS_MAX = 320;
const LOCAL_MAX = 64;
const DOMAIN_MAX = 255;
const ATEXT = "A-Za-z0-9!#$%&'*+/=?^_`{|}~-";
const DOT_ATOM = new RegExp(`^[${ATEXT}]+(?:\\.[${ATEXT}]+)*$`);
const LABEL = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/i;

/** A mailbox after checking: `address` is the wire form (domain in punycode). */
export interface Mailbox {
  readonly name: string;
  readonly address: string;
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

/** Exactly one mailbox (`from`, `defaultFrom`), or null with a problem naming `field`. */
export function parseSingleMailbox(value: unknown, field: string, problems: string[]): Mailbox | null {
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

/** The mailboxes of one address field (`to`, `cc`, `bcc`, `replyTo`). */
export interface AddressList {
  readonly mailboxes: Mailbox[];
  /** How many addresses the input held, valid or not. */
  readonly count: number;
  readonly failed: boolean;
}

/**
 * The mailboxes of an address field: one string (which may hold several addresses), one
 * `{ name, address }`, or an array of these; each refused entry is a problem naming it (`to[1]`).
 */
export function parseAddressList(value: unknown, field: string, problems: string[]): AddressList {
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
export function domainProblem(domain: string): string | null {
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
export function normalizeDomain(domain: string): string {
  if (domain.startsWith("[")) return domain;
  return domainToASCII(domain);
}

/** The domain of a checked address (after the last @). */
export function domainOf(address: string): string {
  return address.slice(address.lastIndexOf("@") + 1);
}

/**
 * Whether the recipients of a mail can be sent as one: at least one address in to, cc and bcc
 * together, and at most `MAX_RECIPIENTS` distinct ones (compared without regard to case). Counted
 * only when every list was read without a problem.
 */
export function checkRecipients(to: AddressList, cc: AddressList, bcc: AddressList, problems: string[]): void {
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
}

/** The envelope recipients: the bare addresses of to, cc and bcc in order, each once (compared without regard to case). */
export function envelopeRecipients(...lists: readonly (readonly Mailbox[])[]): string[] {
  const envelopeTo: string[] = [];
  const seen = new Set<string>();
  for (const list of lists) {
    for (const m of list) {
      const key = m.address.toLowerCase();
      if (!seen.has(key)) {
        seen.add(key);
        envelopeTo.push(m.address);
      }
    }
  }
  return envelopeTo;
}
