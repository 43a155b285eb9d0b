/**
 * What the faulty MTA does, shared by the MTA process (which applies it) and the audit (which
 * checks the outcome against it).
 *
 * Two kinds of faults:
 * - Fates fixed per mail, so the outcome is knowable: a share of Message-IDs is refused with 554
 *   at the end of DATA on every attempt (`fateOf`), and recipients named `refused-...@` are refused
 *   with 550 at RCPT on every attempt (a mail with only such recipients is refused as a whole).
 * - Faults drawn per attempt at random (`FaultRates`): 4xx replies, dropped connections before,
 *   during and after DATA, stalls shorter and longer than the relay's timeout. A retry may go through.
 */
import { createHash } from "node:crypto";

export interface FaultRates {
  /** 421 instead of the greeting. */
  readonly connect421: number;
  /** Connection closed instead of the greeting. */
  readonly connectDrop: number;
  /** 451 to MAIL FROM. */
  readonly mail451: number;
  /** Connection closed at MAIL FROM (before DATA). */
  readonly mailDrop: number;
  /** 451 to every RCPT TO of one message (the whole message is deferred). */
  readonly rcpt451All: number;
  /**
   * 450 to one RCPT TO while the others are accepted (greylisting one recipient): the relay must
   * send the mail again to that recipient only, later.
   */
  readonly rcpt450One: number;
  /** 451 at the end of DATA (nothing kept). */
  readonly data451: number;
  /** Body received and kept, then the connection closed without an answer: the MTA has it, the relay never heard. */
  readonly dataDropKept: number;
  /** Body received, connection closed, nothing kept (the MTA crashed before committing). */
  readonly dataDropLost: number;
  /** 250 after a short stall, well within the relay's timeout. */
  readonly stallShort: number;
  /** 250 after a stall longer than the relay's timeout: kept by the MTA, the relay times out and retries. */
  readonly stallLong: number;
}

export const DEFAULT_RATES: FaultRates = {
  connect421: 0.01,
  connectDrop: 0.005,
  mail451: 0.01,
  mailDrop: 0.005,
  rcpt451All: 0.01,
  rcpt450One: 0.005,
  data451: 0.03,
  dataDropKept: 0.005,
  dataDropLost: 0.005,
  stallShort: 0.02,
  stallLong: 0.003,
};

export const NO_FAULTS: FaultRates = Object.fromEntries(Object.keys(DEFAULT_RATES).map((k) => [k, 0])) as unknown as FaultRates;

/** Share of Message-IDs refused with 554 at the end of DATA, on every attempt. */
export const DEFAULT_REJECT_RATE = 0.01;

/** Local part prefix of recipients the MTA always refuses with 550 at RCPT TO. */
export const REFUSED_PREFIX = "refused-";

export function isRefusedRecipient(address: string): boolean {
  return address.toLowerCase().startsWith(REFUSED_PREFIX);
}

/** A number in [0, 1) fixed by the Message-ID. */
function unitOf(messageId: string): number {
  return createHash("sha1").update(messageId).digest().readUInt32BE(0) / 2 ** 32;
}

/** `reject`: the MTA answers 554 at the end of DATA to this Message-ID on every attempt. */
export function fateOf(messageId: string, rejectRate: number): "reject" | "normal" {
  return unitOf(messageId) < rejectRate ? "reject" : "normal";
}

/** Header the producers put on every mail of a run, and on mail of a transaction planned to roll back. */
export const RUN_HEADER = "X-Soak-Run";
export const OP_HEADER = "X-Soak-Op";
export const ROLLBACK_OP = "rollback";

/** What happened to one copy of a message at the MTA (`kept` copies are delivered). */
export type CopyKind = "ok" | "stall-short" | "stall-long" | "drop-kept";

export interface MtaCopy {
  readonly messageId: string;
  readonly kind: CopyKind;
  /** The message carried the rollback marker: it came from a transaction that was meant to roll back. */
  readonly rollbackMarker: boolean;
  /** The envelope recipients the MTA took this copy for (lower-case). */
  readonly recipients: readonly string[];
  readonly at: number;
}

/** A small seeded PRNG (mulberry32), the one the test SMTP server uses. */
export { seededRandom as seeded } from "../testkit/smtp.js";

/** An exponentially distributed delay with the given mean (for "random moments"). */
export function expDelay(random: () => number, meanMs: number): number {
  return Math.round(-Math.log(1 - random()) * meanMs);
}
