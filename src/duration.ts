/**
 * Durations and points in time as an operator types them on the command line
 * (`--older-than 30d`, `--since 2h`, `--since 2024-05-01T12:00Z`).
 *
 * Strict on purpose: a typo in `purge --older-than` must be refused, never read as "0".
 */
import { OptionsError } from "./errors.js";

const UNIT_MS = { d: 86_400_000, h: 3_600_000, m: 60_000, s: 1_000, ms: 1 } as const;
type Unit = keyof typeof UNIT_MS;
/** The order units must appear in: "1h30m" is fine, "30m1h" is refused. */
const UNIT_ORDER: readonly Unit[] = ["d", "h", "m", "s", "ms"];

/** The longest duration accepted: 100 years. Longer is certainly a typo, and would reach dates no database stores. */
export const MAX_DURATION_MS = 36_500 * UNIT_MS.d;

/** "The duration", "The --since value": how messages name the thing being parsed. */
function label(what: string): string {
  return what.startsWith("-") ? `The ${what} value` : `The ${what}`;
}

const EXPECTED = 'Expected a duration like "30d", "2h", "15m", "45s", "500ms" or "1h30m" (whole numbers; units d, h, m, s, ms, largest first).';

/**
 * Parse a duration into milliseconds.
 *
 * @example
 * parseDuration("1h30m"); // 5_400_000
 * parseDuration("500ms"); // 500
 * @throws OptionsError for anything else: "", "-1h", "1x", "1.5h", "1e9d", "30m1h", "1h1h", or longer than 100 years.
 */
export function parseDuration(text: string, what = "duration"): number {
  if (typeof text !== "string" || text === "") {
    throw new OptionsError(`${label(what)} is empty. ${EXPECTED}`);
  }
  // Each part: 1-15 digits (exact in a double) and a unit. "ms" is tried before "m".
  const part = /(\d{1,15})(ms|d|h|m|s)/y;
  let pos = 0;
  let total = 0;
  let lastUnitIndex = -1;
  while (pos < text.length) {
    part.lastIndex = pos;
    const match = part.exec(text);
    if (match === null) {
      throw new OptionsError(`${label(what)} ${JSON.stringify(text)} is not valid. ${EXPECTED}`);
    }
    const unit = match[2] as Unit;
    const unitIndex = UNIT_ORDER.indexOf(unit);
    if (unitIndex <= lastUnitIndex) {
      throw new OptionsError(`${label(what)} ${JSON.stringify(text)} repeats a unit or puts a smaller one first. ${EXPECTED}`);
    }
    lastUnitIndex = unitIndex;
    total += Number(match[1]) * UNIT_MS[unit];
    if (!Number.isSafeInteger(total) || total > MAX_DURATION_MS) {
      throw new OptionsError(`${label(what)} ${JSON.stringify(text)} is longer than 100 years; write a shorter one.`);
    }
    pos = part.lastIndex;
  }
  return total;
}

/** ISO 8601 date or date-time; no offset means UTC. */
const ISO = /^(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?(Z|[+-]\d{2}:?\d{2})?)?$/i;

/**
 * Parse `--since`/`--until`: a duration back from `now` ("2h" = two hours ago) or an ISO 8601 date or
 * date-time ("2024-05-01", "2024-05-01T12:00", "2024-05-01T12:00:00.000+02:00"). A date-time without an
 * offset is read as UTC, like every time this CLI prints.
 *
 * @example
 * parseSince("2h", new Date("2024-05-01T12:00:00Z")); // 2024-05-01T10:00:00.000Z
 * parseSince("2024-05-01");                             // 2024-05-01T00:00:00.000Z
 * @throws OptionsError for anything else ("yesterday", "2024-13-01", "2024-02-30", "1700000000").
 */
export function parseSince(value: string, now: Date = new Date(), what = "time"): Date {
  const text = typeof value === "string" ? value.trim() : "";
  if (text === "") {
    throw new OptionsError(`${label(what)} is empty: give a duration back from now ("2h", "7d") or an ISO date/time ("2024-05-01", "2024-05-01T12:00Z").`);
  }
  if (/^\d/.test(text) && !/^\d{4}-/.test(text)) {
    const ms = parseDuration(text, what);
    return new Date(now.getTime() - ms);
  }
  const m = ISO.exec(text);
  if (m === null) {
    throw new OptionsError(
      `${label(what)} ${JSON.stringify(value)} is neither a duration ("2h", "7d", "1h30m") nor an ISO date/time ("2024-05-01", "2024-05-01T12:00Z").`,
    );
  }
  const [, y, mo, d, hh = "00", mi = "00", ss = "00", frac = "", offset = "Z"] = m;
  const year = Number(y);
  const month = Number(mo);
  const day = Number(d);
  const hour = Number(hh);
  const minute = Number(mi);
  const second = Number(ss);
  const millis = Number((frac + "000").slice(0, 3));
  const base = Date.UTC(year, month - 1, day, hour, minute, second, millis);
  const check = new Date(base);
  if (
    month < 1 ||
    month > 12 ||
    hour > 23 ||
    minute > 59 ||
    second > 59 ||
    check.getUTCFullYear() !== year ||
    check.getUTCMonth() !== month - 1 ||
    check.getUTCDate() !== day
  ) {
    throw new OptionsError(`${label(what)} ${JSON.stringify(value)} is not a real date/time.`);
  }
  let offsetMs = 0;
  if (offset.toUpperCase() !== "Z") {
    const om = /^([+-])(\d{2}):?(\d{2})$/.exec(offset);
    const sign = om?.[1] === "-" ? -1 : 1;
    const oh = Number(om?.[2]);
    const omin = Number(om?.[3]);
    if (oh > 23 || omin > 59) throw new OptionsError(`${label(what)} ${JSON.stringify(value)} has an invalid UTC offset ${offset}.`);
    offsetMs = sign * (oh * 60 + omin) * 60_000;
  }
  return new Date(base - offsetMs);
}
