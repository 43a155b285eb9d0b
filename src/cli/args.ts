/**
 * Option values as an operator types them: counts, durations that must be positive, status lists.
 * Each refusal is an OptionsError (exit 2) naming the option. Durations and times themselves are
 * read by ../duration.ts.
 */
import { parseDuration } from "../duration.js";
import { OptionsError } from "../errors.js";
import { STATUSES, type OutboxStatus } from "../states.js";

/** A whole number from 1 to 999,999,999 (`--limit 50`, `--concurrency 20`). */
export function parseCount(text: string, what: string): number {
  if (!/^[0-9]{1,9}$/.test(text) || Number(text) < 1) {
    throw new OptionsError(`${what} expects a whole number of at least 1, got ${JSON.stringify(text)}.`);
  }
  return Number(text);
}

/** A duration longer than 0 (`--lease 30s`), in milliseconds. */
export function positiveDuration(text: string, what: string): number {
  const ms = parseDuration(text, what);
  if (ms === 0) throw new OptionsError(`${what} must be longer than 0, got ${JSON.stringify(text)}.`);
  return ms;
}

/** `--status dead,held`: known statuses, comma-separated, at least one. */
export function parseStatusList(text: string): OutboxStatus[] {
  const parts = text.split(",").map((s) => s.trim()).filter((s) => s !== "");
  if (parts.length === 0) throw new OptionsError(`--status expects one or more of ${STATUSES.join(", ")}, comma-separated.`);
  for (const p of parts) {
    if (!(STATUSES as readonly string[]).includes(p)) {
      throw new OptionsError(`Unknown status ${JSON.stringify(p)}: use one of ${STATUSES.join(", ")}.`);
    }
  }
  return parts as OutboxStatus[];
}
