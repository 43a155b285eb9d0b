/**
 * What text in a mail may hold. Single-line text (subject, display names, header names and values,
 * file names, content types, cids, idempotency keys) may not hold line breaks, NUL, other control
 * characters (tab only where allowed), DEL, C1 controls, U+2028 or U+2029, and must be well-formed
 * UTF-16. In bodies each CRLF, lone CR and lone LF is one line break, stored as CRLF.
 */
import { describe } from "./plain-data.js";

const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;
/** A CR not followed by LF, or an LF not preceded by CR. */
const LONE_LINE_BREAK = /\r(?!\n)|(?<!\r)\n/;
/** Each of CRLF, CR and LF is one line break. */
export const LINE_BREAK = /\r\n|\r|\n/g;
/** Refused in single-line text: C0 controls but tab, DEL, C1 controls, and the Unicode line and paragraph separators. */
const FORBIDDEN_CHAR = /[\x01-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]/;
const FORBIDDEN_CHAR_OR_TAB = /[\x01-\x1f\x7f-\x9f\u2028\u2029]/;

/** Whether `s` has no lone surrogate, so it has a UTF-8 form (`String.prototype.isWellFormed` where Node has it). */
export function isWellFormed(s: string): boolean {
  const native = (s as { isWellFormed?: () => boolean }).isWellFormed;
  return typeof native === "function" ? native.call(s) : !LONE_SURROGATE.test(s);
}

/**
 * Why a single-line string is refused, or null: NUL, CR/LF, other C0 control characters (tab allowed
 * where `allowTab`), DEL, C1 control characters (U+0080 to U+009F, NEL among them), the Unicode line
 * and paragraph separators U+2028 and U+2029 (some programs break lines there), lone surrogates.
 */
export function textProblem(s: string, opts: { allowTab: boolean }): string | null {
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

/**
 * A body (`text` or `html`) with every line break made CRLF, or undefined with a problem: it must be
 * a well-formed string without NUL (binary data goes in an attachment).
 */
export function checkBody(value: unknown, field: "text" | "html", problems: string[]): string | undefined {
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
