/**
 * What the relay asks the MTA about delivery status notifications (RFC 3461), and the signed
 * token that lets `ingest` tell a real bounce of ours from a forged one.
 *
 * - `DsnOptions`: NOTIFY (FAILURE,DELAY by default; SUCCESS opt-in; or NEVER), RET (HDRS by
 *   default), the bounce secret, and VERP (a return path `local+<token>@domain`).
 * - The token: `<base32 id>.<base32 hmac>`, lower case, 47 characters for a mail id (a UUID):
 *   26 for the id's 16 bytes, a dot, 20 for the first 12 bytes (96 bits) of
 *   HMAC-SHA256(secret, id). It is the ENVID when a secret is set, and the VERP extension.
 *   Lower case and `[a-z2-7.]` only, so it survives MTAs that lower-case addresses, needs no
 *   xtext escaping, and contains no `+` (the VERP delimiter).
 * - `handoffEnvelope`: the envelope the relay hands over for one mail, with its `DsnRequest`.
 *
 * RFC 4648 base32 is written out here (a dozen lines): Node has none built in and no base32
 * package is a dependency; the alphabet is lower-cased and unpadded.
 */
import { createHmac, timingSafeEqual } from "node:crypto";
import { OptionsError } from "../errors.js";
import { isUuid } from "../ids.js";
import type { DsnRequest } from "../transport.js";

/** A NOTIFY keyword other than NEVER. */
export type DsnNotify = "SUCCESS" | "FAILURE" | "DELAY";

export interface DsnOptions {
  /** When the MTA should report: any of SUCCESS, FAILURE, DELAY, or "NEVER". @default ["FAILURE", "DELAY"] */
  readonly notify: readonly DsnNotify[] | "NEVER";
  /** What a bounce carries back: the headers only, or the full message. @default "HDRS" */
  readonly ret: "HDRS" | "FULL";
  /**
   * The bounce secret (at least 16 bytes): the ENVID becomes a signed token, and `ingest` refuses
   * a report without a valid one (`ForgedReportError`). @default null
   */
  readonly secret: string | null;
  /**
   * Return path `local+<token>@domain` (VERP): a bounce names its mail in the address it is sent
   * to, also from an MTA that drops the ENVID. Needs `secret`, and `recipient_delimiter = +` in
   * Postfix. Left out for a mail whose local part would pass 64 characters, and for the null sender.
   * @default false
   */
  readonly verp: boolean;
}

export const DEFAULT_DSN_OPTIONS: DsnOptions = Object.freeze({
  notify: Object.freeze(["FAILURE", "DELAY"] as const),
  ret: "HDRS",
  secret: null,
  verp: false,
});

/** What `parseDsnOptions` accepts: every field optional; `notify` may also be a comma-separated string ("failure,delay", "never"). */
export interface DsnOptionsInput {
  readonly notify?: readonly string[] | string;
  readonly ret?: string;
  readonly secret?: string | null;
  readonly verp?: boolean;
}

/** The shortest bounce secret accepted, in bytes (UTF-8). */
export const MIN_SECRET_BYTES = 16;
const NOTIFY_WORDS: readonly DsnNotify[] = ["SUCCESS", "FAILURE", "DELAY"];

/**
 * Check and complete DSN options, up front.
 *
 * @throws OptionsError for an unknown NOTIFY or RET keyword, NEVER with another keyword, an empty
 *   NOTIFY list, a secret shorter than 16 bytes, or `verp` without a secret.
 * @example
 * ```ts
 * const dsn = parseDsnOptions({ notify: "failure,delay,success", secret: process.env.MAIL_OUTBOX_BOUNCE_SECRET ?? null, verp: true });
 * ```
 */
export function parseDsnOptions(input: DsnOptionsInput = {}): DsnOptions {
  const words = input.notify === undefined ? [...DEFAULT_DSN_OPTIONS.notify] : (typeof input.notify === "string" ? input.notify.split(",") : [...input.notify]).map((w) => String(w).trim().toUpperCase());
  let notify: DsnOptions["notify"];
  if (words.length === 1 && words[0] === "NEVER") notify = "NEVER";
  else {
    if (words.length === 0 || words.some((w) => !(NOTIFY_WORDS as readonly string[]).includes(w))) {
      throw new OptionsError(
        `Expected \`notify\` to be "NEVER" or a non-empty list of SUCCESS, FAILURE, DELAY (RFC 3461), not ${JSON.stringify(input.notify)}.`,
      );
    }
    notify = NOTIFY_WORDS.filter((w) => words.includes(w));
  }
  const ret = (input.ret ?? DEFAULT_DSN_OPTIONS.ret).toUpperCase();
  if (ret !== "HDRS" && ret !== "FULL") throw new OptionsError(`Expected \`ret\` to be "HDRS" or "FULL", not ${JSON.stringify(input.ret)}.`);
  const secret = input.secret ?? null;
  if (secret !== null && (typeof secret !== "string" || Buffer.byteLength(secret, "utf8") < MIN_SECRET_BYTES)) {
    throw new OptionsError(
      `Expected the bounce secret to be a string of at least ${MIN_SECRET_BYTES} bytes (got ${typeof secret === "string" ? Buffer.byteLength(secret, "utf8") : typeof secret}); make one with \`openssl rand -base64 32\`.`,
    );
  }
  const verp = input.verp ?? false;
  if (typeof verp !== "boolean") throw new OptionsError(`Expected \`verp\` to be a boolean, not ${JSON.stringify(verp)}.`);
  if (verp && secret === null) {
    throw new OptionsError("`verp: true` needs a bounce secret: the return path carries a signed token (set `secret`, e.g. from MAIL_OUTBOX_BOUNCE_SECRET).");
  }
  return { notify, ret, secret, verp };
}

// ---- base32 (RFC 4648, lower case, no padding) ------------------------------------------------

const ALPHABET = "abcdefghijklmnopqrstuvwxyz234567";

function base32(bytes: Uint8Array): string {
  let out = "";
  let bits = 0;
  let value = 0;
  for (const b of bytes) {
    value = (value << 8) | b;
    bits += 8;
    while (bits >= 5) {
      out += ALPHABET[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
  }
  if (bits > 0) out += ALPHABET[(value << (5 - bits)) & 31];
  return out;
}

function unbase32(text: string): Buffer | null {
  const out: number[] = [];
  let bits = 0;
  let value = 0;
  for (const ch of text) {
    const v = ALPHABET.indexOf(ch);
    if (v < 0) return null;
    value = ((value << 5) | v) & 0xffff;
    bits += 5;
    if (bits >= 8) {
      out.push((value >>> (bits - 8)) & 0xff);
      bits -= 8;
    }
  }
  return Buffer.from(out);
}

// ---- the token ----------------------------------------------------------------------------------

const MAC_BYTES = 12;
/** A token: 26 base32 characters of a UUID, a dot, 20 of the MAC. */
const TOKEN = /^([a-z2-7]{26})\.([a-z2-7]{20})$/;
/** The longest local part RFC 5321 allows. */
const MAX_LOCAL_PART = 64;

function mac(id: string, secret: string): Buffer {
  return createHmac("sha256", secret).update(`mail-outbox bounce token\0${id}`).digest().subarray(0, MAC_BYTES);
}

/**
 * The signed token of a mail: `<base32 id>.<base32 hmac>` (47 characters, `[a-z2-7.]`).
 * @throws OptionsError when `mailId` is not a UUID (every outbox row id is one)
 */
export function signToken(mailId: string, secret: string): string {
  if (!isUuid(mailId)) throw new OptionsError(`Cannot sign a bounce token for ${JSON.stringify(mailId)}: mail ids are UUIDs.`);
  const id = mailId.toLowerCase();
  return `${base32(Buffer.from(id.replace(/-/g, ""), "hex"))}.${base32(mac(id, secret))}`;
}

/** Whether `s` has the shape of a token (not whether it verifies). */
export function looksLikeToken(s: string): boolean {
  return TOKEN.test(s.trim().toLowerCase());
}

/**
 * The mail id a token names, when its MAC verifies under `secret` (compared in constant time);
 * null for anything else. Case-insensitive.
 */
export function verifyToken(token: string, secret: string): string | null {
  const m = TOKEN.exec(token.trim().toLowerCase());
  if (!m) return null;
  const idBytes = unbase32(m[1]!);
  const given = unbase32(m[2]!);
  if (idBytes === null || idBytes.length !== 16 || given === null || given.length !== MAC_BYTES) return null;
  // Only the canonical spelling (unused low bits of the last character zero): one token per mail.
  if (base32(idBytes) !== m[1] || base32(given) !== m[2]) return null;
  const hex = idBytes.toString("hex");
  const id = `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
  return timingSafeEqual(given, mac(id, secret)) ? id : null;
}

/** The token in a VERP address `local+<token>@domain` (what follows the last `+`), or null. */
export function tokenFromAddress(address: string): string | null {
  const a = address.trim().replace(/^<|>$/g, "");
  const at = a.lastIndexOf("@");
  const local = at >= 0 ? a.slice(0, at) : a;
  const plus = local.lastIndexOf("+");
  if (plus < 0) return null;
  const token = local.slice(plus + 1).toLowerCase();
  return TOKEN.test(token) ? token : null;
}

/** The mail fields `handoffEnvelope` reads (a `ClaimedMail` has them). */
export interface HandoffMail {
  readonly id: string;
  readonly envelopeFrom: string;
  readonly envelopeTo: readonly string[];
}

/**
 * The envelope the relay hands over for `mail`: with `options`, a `DsnRequest` (ENVID the mail id,
 * or its signed token when a secret is set; NOTIFY; RET) and, under `verp`, the return path
 * `local+<token>@domain`. The null sender (`""` or `"<>"`) never gets VERP, nor a sender whose
 * local part would pass 64 characters with the token (it keeps its address; the ENVID still links).
 * Without options (`null`): the mail's own envelope, nothing asked.
 *
 * @example
 * ```ts
 * handoffEnvelope(mail, parseDsnOptions({ secret, verp: true }));
 * // { from: "bounces+ab...@example.com", to: ["ann@example.org"], dsn: { envid: "ab....cd...", notify: ["FAILURE", "DELAY"], ret: "HDRS" } }
 * ```
 */
export function handoffEnvelope(mail: HandoffMail, options: DsnOptions | null): { from: string; to: readonly string[]; dsn: DsnRequest | null } {
  if (options === null) return { from: mail.envelopeFrom, to: mail.envelopeTo, dsn: null };
  const token = options.secret !== null && isUuid(mail.id) ? signToken(mail.id, options.secret) : null;
  const dsn: DsnRequest = {
    envid: token ?? mail.id,
    notify: options.notify === "NEVER" ? ["NEVER"] : options.notify,
    ret: options.ret,
  };
  let from = mail.envelopeFrom;
  if (options.verp && token !== null && from !== "" && from !== "<>") {
    const at = from.lastIndexOf("@");
    const local = at > 0 ? from.slice(0, at) : null;
    // A quoted local part is left alone: the token would have to go inside the quotes.
    if (local !== null && !local.startsWith('"') && local.length + 1 + token.length <= MAX_LOCAL_PART) {
      from = `${local}+${token}${from.slice(at)}`;
    }
  }
  return { from, to: mail.envelopeTo, dsn };
}
