/**
 * Header fields: the extra `headers` of a mail, and the rules for any text that ends up in a header
 * line (`key: value`), such as the subject and display names: single-line text (see text.ts) that
 * folds into lines of at most 998 octets. The composer owns the fields in `RESERVED_HEADERS`.
 */
import { describe, guard, isPlainObject, pollutionProblem, POLLUTION_KEYS, quote, symbolName } from "./plain-data.js";
import { textProblem } from "./text.js";

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

const RESERVED_LOWER = new Set(RESERVED_HEADERS.map((h) => h.toLowerCase()));
/** A header line may not exceed 998 octets (RFC 5322 2.1.1); nodemailer folds at whitespace only. */
const MAX_HEADER_WORD = 900;
const MAX_HEADER_NAME = 200;
/** RFC 5322 field name: printable ASCII except the colon. */
const FIELD_NAME = /^[\x21-\x39\x3b-\x7e]+$/;

/** Like `textProblem`, plus the 998-octet line limit for text that ends up in a header `key: value`. */
export function headerTextProblem(s: string, key: string, what = "value"): string | null {
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
export function headerTextBytes(s: string): number {
  let blanks = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c === 0x20 || c === 0x09) blanks++;
  }
  return Buffer.byteLength(s, "utf8") - blanks;
}

/**
 * The `headers` of a mail as `[name, value]` pairs in their order, keeping only the valid ones; each
 * refused header is a problem naming it (`headers["X-Note"]: ...`).
 */
export function checkHeaders(value: unknown, problems: string[]): (readonly [string, string])[] {
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
