/**
 * Row ids and Message-IDs.
 *
 * A row id is a UUIDv7: its first 48 bits are the creation time in milliseconds, so ids sort
 * by enqueue time and index well. The Message-ID of a mail is derived from its row id
 * (`<id@domain>`, see `composeMail`), so a line in the MTA's log leads back to the row.
 */
import { v7 as uuidv7 } from "uuid";

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/**
 * A new row id: a UUIDv7 in its canonical lower-case form.
 *
 * Ids made by one process increase strictly, also within one millisecond and when the
 * clock steps back (the `uuid` package keeps a counter for that), so sorting by id sorts
 * by enqueue order within a process. Across processes the order is only as good as the clocks.
 *
 * @example
 * newId(); // "0193f1c2-7a4e-7c1d-9b2a-3f0e5d6c7b8a"
 */
export function newId(): string {
  return uuidv7();
}

/** True when `s` is a UUID in the canonical 8-4-4-4-12 hex form (any version, either case). */
export function isUuid(s: unknown): s is string {
  return typeof s === "string" && UUID.test(s);
}

/**
 * The canonical form of a Message-ID as this library stores it (`<left@right>`), from either
 * `<left@right>` or `left@right`; surrounding whitespace is ignored. Returns null when `s` is
 * not a Message-ID: empty parts, no `@`, whitespace, control characters, non-ASCII, or angle
 * brackets inside. Case is kept: a Message-ID is compared as written.
 *
 * @example
 * normalizeMessageId("0193f1c2-7a4e-7c1d-9b2a-3f0e5d6c7b8a@example.com");
 * // "<0193f1c2-7a4e-7c1d-9b2a-3f0e5d6c7b8a@example.com>"
 * normalizeMessageId("not a message id"); // null
 */
export function normalizeMessageId(s: string): string | null {
  if (typeof s !== "string") return null;
  let inner = s.trim();
  if (inner.startsWith("<") || inner.endsWith(">")) {
    if (!(inner.startsWith("<") && inner.endsWith(">"))) return null;
    inner = inner.slice(1, -1);
  }
  // RFC 5322 msg-id: printable ASCII only, no spaces, no angle brackets; one line of at most 998 octets.
  if (inner.length === 0 || inner.length > 996 || !/^[\x21-\x7e]+$/.test(inner) || /[<>]/.test(inner)) return null;
  const at = inner.lastIndexOf("@");
  if (at <= 0 || at === inner.length - 1) return null;
  return `<${inner}>`;
}
