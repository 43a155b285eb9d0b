/**
 * Operating the relays from the database: pauses and shared hand-off rate limits ("paces"), which
 * every relay on the outbox reads once per poll turn (relay-loop.ts), so one command reaches all
 * of them within one poll interval. The CLI's `pause`, `resume` and `pace` (cli/ops.ts) call the
 * functions here.
 *
 * Scopes (lower case, as stored in `mail_outbox_pause.scope` / `mail_outbox_rate.bucket`):
 *
 * | scope | pause | pace |
 * | --- | --- | --- |
 * | `all` | every relay claims nothing | - |
 * | `transport:<key>` | relays whose transport has this key claim nothing | the relays of that transport together hand over at most `rate`/s, `burst` at once |
 * | `sender:<domain>` | no relay claims mail whose envelope sender is at `domain` | - (not implemented: see {@link setPace}) |
 *
 * A transport's key ({@link transportKey}) names the MTA it talks to, without credentials or
 * parameters: `smtp://host:port`, `smtps://host:port`, `sendmail:/usr/sbin/sendmail`,
 * `sendmail-bs:/usr/sbin/sendmail`.
 */
import type { DbOrUrl } from "./admin.js";
import { withDb } from "./admin-common.js";
import { OptionsError } from "./errors.js";
import { DEFAULT_SENDMAIL_PATH } from "./sendmail.js";
import type { PauseRecord, RateRecord } from "./store.js";
import type { TransportSpec } from "./transport.js";

export type { PauseRecord, RateRecord } from "./store.js";

/** `all`, `transport:<key>` or `sender:<domain>`. */
export type OpsScope = "all" | `transport:${string}` | `sender:${string}`;

/** What to pause or resume: nothing (everything: scope `all`), one transport, or one sender domain. */
export interface ScopeOptions {
  /** A transport URL (credentials and parameters are dropped) or its key, e.g. `smtp://127.0.0.1:25`. */
  readonly transport?: string;
  /** A sender domain (the envelope sender's, after the `@`), e.g. `example.com`. */
  readonly sender?: string;
}

export interface PauseOptions extends ScopeOptions {
  /** Who pauses, shown by `status` and `/readyz`. @default "operator" */
  readonly by?: string;
  /** Why, shown by `status` and `/readyz`. @default none */
  readonly reason?: string;
}

export interface PauseResult {
  readonly scope: OpsScope;
  /** False when the scope was paused already (its first pause's time, actor and reason stay). */
  readonly paused: boolean;
  /** The pause now in force. */
  readonly pause: PauseRecord | null;
}

export interface ResumeOptions extends ScopeOptions {
  /** Lift every pause (any scope). */
  readonly all?: boolean;
}

export interface ResumeResult {
  /** Scopes whose pause was lifted. */
  readonly resumed: readonly string[];
  /** The scope asked for was not paused (resuming it changed nothing; not an error). */
  readonly notPaused: readonly string[];
}

export interface PaceOptions {
  /** Mails per second (> 0; fractions allowed: 0.5 = one every 2 s). */
  readonly rate: number;
  /** Mails that may go at once after a quiet time (>= 1). @default max(1, ceil(rate)) */
  readonly burst?: number;
}

/**
 * The key naming the MTA a transport talks to, for pause and pace scopes: `smtp://host:port`
 * (`smtps://host:port`), `sendmail:<absolute path>`, `sendmail-bs:<absolute path>`; no credentials,
 * no query. A key is its own key. Nodemailer options with a host give `smtp://host:port`; another
 * transporter `custom:<its name>`.
 *
 * @throws OptionsError for a string that is not one of the transport forms.
 * @example
 * transportKey("smtp://relay:secret@Mail.Internal:587?maxConnections=10") // "smtp://mail.internal:587"
 * transportKey("sendmail-bs:") // "sendmail-bs:/usr/sbin/sendmail"
 */
export function transportKey(spec: TransportSpec): string {
  if (typeof spec === "string") return keyOfString(spec);
  const o = spec as { host?: unknown; port?: unknown; secure?: unknown; name?: unknown; transporter?: { name?: unknown; options?: { host?: unknown; port?: unknown; secure?: unknown } } };
  const options = o.transporter?.options ?? o;
  if (typeof options.host === "string" && options.host !== "") {
    const secure = options.secure === true;
    const port = options.port === undefined ? (secure ? 465 : 25) : Number(options.port);
    return `${secure ? "smtps" : "smtp"}://${hostPart(options.host)}:${port}`;
  }
  const name = o.transporter?.name ?? o.name;
  return `custom:${typeof name === "string" && name !== "" ? name : "transport"}`;
}

function keyOfString(spec: string): string {
  const s = spec.trim();
  const scheme = /^([a-z][a-z0-9+.-]*):/i.exec(s)?.[1]?.toLowerCase();
  if (scheme === "sendmail" || scheme === "sendmail-bs") {
    let rest = s.slice(scheme.length + 1).split("?")[0] ?? "";
    if (rest.startsWith("///")) rest = rest.slice(2);
    if (rest !== "" && !rest.startsWith("/")) throw new OptionsError(`Transport ${JSON.stringify(s)}: write ${scheme}:/absolute/path/to/sendmail (or ${scheme}: for ${DEFAULT_SENDMAIL_PATH}).`);
    return `${scheme}:${rest === "" ? DEFAULT_SENDMAIL_PATH : safeDecode(rest)}`;
  }
  if (scheme === "smtp" || scheme === "smtps") {
    let url: URL;
    try {
      url = new URL(s);
    } catch {
      throw new OptionsError(`Transport ${JSON.stringify(redactCredentials(s))} is not a valid URL; write ${scheme}://host:port.`);
    }
    if (url.hostname === "") throw new OptionsError(`Transport ${JSON.stringify(redactCredentials(s))} names no host; write ${scheme}://host:port.`);
    const port = url.port === "" ? (scheme === "smtps" ? 465 : 25) : Number(url.port);
    return `${scheme}://${hostPart(url.hostname)}:${port}`;
  }
  if (scheme === "custom") return s;
  throw new OptionsError(
    `Unknown transport ${JSON.stringify(redactCredentials(s))}: give its URL or key, one of smtp://host:port, smtps://host:port, sendmail:/path/to/sendmail, sendmail-bs:/path/to/sendmail.`,
  );
}

function hostPart(host: string): string {
  const h = host.toLowerCase().replace(/^\[(.*)\]$/, "$1");
  return h.includes(":") ? `[${h}]` : h;
}

function safeDecode(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

function redactCredentials(s: string): string {
  return s.replace(/^([a-z][a-z0-9+.-]*:\/\/)[^@/]*@/i, "$1***@");
}

/** A domain as the claim compares it: lower case, no `@`, no blanks. */
export function senderDomain(text: string): string {
  const d = typeof text === "string" ? text.trim().toLowerCase().replace(/^.*@/, "").replace(/\.$/, "") : "";
  if (d === "" || d.length > 253 || (!/^[a-z0-9-]+(\.[a-z0-9-]+)*$/.test(d) && !/^\[[0-9a-f:.]+\]$/.test(d))) {
    throw new OptionsError(`Expected a sender domain such as example.com, got ${JSON.stringify(text)}.`);
  }
  return d;
}

/** The scope of `{ transport }`, `{ sender }` or neither (`all`). */
export function scopeOf(options: ScopeOptions): OpsScope {
  const { transport, sender } = options;
  if (transport !== undefined && sender !== undefined) {
    throw new OptionsError("Give either a transport or a sender domain, not both (pause them one at a time).");
  }
  if (transport !== undefined) {
    if (typeof transport !== "string" || transport.trim() === "") throw new OptionsError("Expected `transport` to be a transport URL or key, e.g. smtp://127.0.0.1:25.");
    return `transport:${transportKey(transport)}`;
  }
  if (sender !== undefined) return `sender:${senderDomain(sender)}`;
  return "all";
}

/**
 * Read a scope as an operator writes it: `all`, `transport:<url or key>`, `sender:<domain>`.
 * @throws OptionsError for anything else.
 */
export function parseScope(text: string): OpsScope {
  const s = typeof text === "string" ? text.trim() : "";
  if (s.toLowerCase() === "all") return "all";
  const m = /^(transport|sender):(.+)$/i.exec(s);
  if (!m) throw new OptionsError(`Unknown scope ${JSON.stringify(text)}: write all, transport:<url or key> (e.g. transport:smtp://127.0.0.1:25) or sender:<domain>.`);
  return m[1]!.toLowerCase() === "transport" ? scopeOf({ transport: m[2]! }) : scopeOf({ sender: m[2]! });
}

function checkText(value: string | undefined, what: string, fallback: string | null): string | null {
  if (value === undefined) return fallback;
  if (typeof value !== "string" || value.trim() === "" || value.length > 500) throw new OptionsError(`Expected \`${what}\` to be a non-empty text of at most 500 characters.`);
  return value.trim();
}

/**
 * Pause relays: every relay on this outbox (no scope), those of one transport, or the mail of one
 * sender domain. Each relay sees it within one poll interval: it claims nothing more in that scope;
 * hand-offs in flight finish; mail it claimed but had not started is released (the attempt not
 * counted). Mail stays pending and goes once resumed.
 *
 * @throws OptionsError for a scope that cannot be read, or an empty `by`/`reason`.
 * @example
 * ```ts
 * await pauseRelays(db, { transport: "smtp://mx.internal:25", by: "ops:ann", reason: "MTA maintenance" });
 * ```
 */
export async function pauseRelays(dbOrUrl: DbOrUrl, options: PauseOptions = {}): Promise<PauseResult> {
  const scope = scopeOf(options);
  const by = checkText(options.by, "by", "operator")!;
  const reason = checkText(options.reason, "reason", null);
  return withDb(dbOrUrl, async (db) => {
    const paused = await db.addPause(scope, by, reason);
    const pause = (await db.listPauses()).find((p) => p.scope === scope) ?? null;
    return { scope, paused, pause };
  });
}

/**
 * Lift a pause (the same scope as it was paused with), or with `{ all: true }` every pause.
 * Resuming what is not paused changes nothing and is not an error (`notPaused`).
 *
 * @example
 * ```ts
 * await resumeRelays(db, {}); // lifts `mail-outbox pause` (scope all)
 * await resumeRelays(db, { all: true }); // lifts every pause
 * ```
 */
export async function resumeRelays(dbOrUrl: DbOrUrl, options: ResumeOptions = {}): Promise<ResumeResult> {
  if (options.all === true && (options.transport !== undefined || options.sender !== undefined)) {
    throw new OptionsError("`all` lifts every pause: leave out the transport and the sender.");
  }
  const one = options.all === true ? null : scopeOf(options);
  return withDb(dbOrUrl, async (db) => {
    const scopes = one === null ? (await db.listPauses()).map((p) => p.scope) : [one];
    const resumed: string[] = [];
    const notPaused: string[] = [];
    for (const s of scopes) ((await db.removePause(s)) ? resumed : notPaused).push(s);
    return { resumed, notPaused };
  });
}

/** The pauses in force, oldest first. */
export async function listPauses(dbOrUrl: DbOrUrl): Promise<PauseRecord[]> {
  return withDb(dbOrUrl, async (db) => (await db.listPauses()).sort((a, b) => a.pausedAt.getTime() - b.pausedAt.getTime() || a.scope.localeCompare(b.scope)));
}

/**
 * Set (or change) a hand-off rate limit shared by every relay of a transport: together they hand
 * over at most `rate` mails a second, up to `burst` at once (a token bucket kept in the database).
 * A new limit starts with a full bucket. Per-sender-domain pacing is not implemented: pace the
 * recipient domains in the MTA (see the README, "what belongs to the MTA").
 *
 * @throws OptionsError for a scope other than `transport:<key>`, a rate not above 0, a burst below 1.
 * @example
 * ```ts
 * await setPace(db, "transport:smtp://smarthost.example:587", { rate: 50, burst: 10 });
 * ```
 */
export async function setPace(dbOrUrl: DbOrUrl, scope: string, options: PaceOptions): Promise<RateRecord> {
  const bucket = paceScope(scope);
  const { rate } = options;
  if (typeof rate !== "number" || !Number.isFinite(rate) || rate <= 0 || rate > 1_000_000) {
    throw new OptionsError("Expected `rate` to be a number of mails per second above 0 (at most 1000000).");
  }
  const burst = options.burst ?? Math.max(1, Math.ceil(rate));
  if (!Number.isSafeInteger(burst) || burst < 1 || burst > 1_000_000) throw new OptionsError("Expected `burst` to be a whole number from 1 to 1000000.");
  return withDb(dbOrUrl, async (db) => {
    await db.setRate(bucket, rate, burst);
    const row = (await db.listRates()).find((r) => r.bucket === bucket);
    if (!row) throw new Error(`the limit of ${bucket} was set but cannot be read back`);
    return row;
  });
}

/** Remove the limit of a scope; false when it had none. */
export async function removePace(dbOrUrl: DbOrUrl, scope: string): Promise<boolean> {
  const bucket = paceScope(scope);
  return withDb(dbOrUrl, (db) => db.removeRate(bucket));
}

/** The rate limits in force. */
export async function listPaces(dbOrUrl: DbOrUrl): Promise<RateRecord[]> {
  return withDb(dbOrUrl, async (db) => (await db.listRates()).sort((a, b) => a.bucket.localeCompare(b.bucket)));
}

function paceScope(scope: string): OpsScope {
  const s = typeof scope === "string" ? scope : String(scope);
  const parsed = parseScope(s);
  if (parsed === "all") throw new OptionsError("A pace is per transport: write transport:<url or key>, e.g. transport:smtp://127.0.0.1:25.");
  if (parsed.startsWith("sender:")) {
    throw new OptionsError(
      "Pacing per sender domain is not implemented: pace the transport (transport:<url or key>), and pace recipient domains in the MTA (Postfix: <transport>_destination_rate_delay).",
    );
  }
  return parsed;
}

// ---------------------------------------------------------------------------------------------
// What one relay makes of the pauses and rates it read (pure; relay-loop.ts applies it).

export interface RelayOpsView {
  /** The pause that stops this relay entirely (`all`, else its transport's); null when none. */
  readonly pausedBy: PauseRecord | null;
  /** Pauses this relay honours: `all`, its transport's, every sender pause. */
  readonly honoured: readonly PauseRecord[];
  /** Sender domains not to claim. */
  readonly excludeSenderDomains: readonly string[];
  /** Rate buckets that apply to this relay's hand-offs (empty: no pacing, no token round trip). */
  readonly buckets: readonly string[];
}

/** What the pauses and rates in the database mean for the relay of transport `key`. */
export function relayOpsView(key: string, pauses: readonly PauseRecord[], rates: readonly RateRecord[]): RelayOpsView {
  const mine = `transport:${key}`;
  const honoured = pauses.filter((p) => p.scope === "all" || p.scope === mine || p.scope.startsWith("sender:"));
  const pausedBy = honoured.find((p) => p.scope === "all") ?? honoured.find((p) => p.scope === mine) ?? null;
  const excludeSenderDomains = honoured.filter((p) => p.scope.startsWith("sender:")).map((p) => p.scope.slice("sender:".length));
  const buckets = rates.some((r) => r.bucket === mine) ? [mine] : [];
  return { pausedBy, honoured, excludeSenderDomains, buckets };
}

/** {@link transportKey} for the relay's own transport; never throws (an unreadable spec fails later, at open). */
export function relayTransportKey(spec: TransportSpec): string {
  try {
    return transportKey(spec);
  } catch {
    return "custom:transport";
  }
}
