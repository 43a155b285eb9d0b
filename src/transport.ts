/**
 * Build the nodemailer transporter the relay hands mail to, from one URL:
 *
 * | URL | transport |
 * | --- | --- |
 * | `smtp://[user:pass@]host[:port]` (port 25 by default) | pooled SMTP, STARTTLS when offered; to a loopback host, pipelined plain SMTP (see `pipelining`) |
 * | `smtps://[user:pass@]host[:port]` (port 465 by default) | pooled SMTP over TLS |
 * | `sendmail:` or `sendmail:/usr/sbin/sendmail` | pipe to the sendmail program (`-i [-B 8BITMIME] -f from -- rcpts`), see `src/sendmail.ts` |
 * | `sendmail-bs:` or `sendmail-bs:/usr/sbin/sendmail` | SMTP over the stdin/stdout of `sendmail -bs`, pooled, see `src/sendmail-bs.ts` |
 *
 * Every one of them writes the same bytes for a stored message (src/wire.ts): lone CR/LF become
 * CRLF (LF for the sendmail pipe), and 8-bit content is declared (`BODY=8BITMIME`, `-B 8BITMIME`)
 * or, for a server without 8BITMIME, not sent (`EightBitMimeError`, permanent).
 *
 * Query parameters (all optional; unknown ones are refused so typos show):
 *
 * | parameter | applies to | meaning | default |
 * | --- | --- | --- | --- |
 * | `timeout` | all | ms: sets `connectionTimeout`, `greetingTimeout` and `socketTimeout` at once; for `sendmail:` the time one run may take | 60000 (smtp: 15000 to connect and greet) |
 * | `connectionTimeout` | smtp(s) | ms to open the TCP connection | 15000 |
 * | `greetingTimeout` | smtp(s) | ms to wait for the greeting | 15000 |
 * | `socketTimeout` | smtp(s) | ms of silence allowed on an open connection | 60000 |
 * | `maxConnections` | all | connections (for sendmail-bs: child processes; for sendmail: programs running) at once | 5 |
 * | `maxMessages` | smtp(s), sendmail-bs | messages per connection before it is replaced | 1000 |
 * | `maxRequeues` | smtp(s) | times nodemailer's pool resends a message whose connection dropped | 0: the relay retries itself |
 * | `rateLimit`, `rateDelta` | smtp(s) | at most `rateLimit` messages per `rateDelta` ms | unlimited, 1000 |
 * | `name` | smtp(s), sendmail-bs | hostname sent in EHLO | the machine's hostname if it has a dot, else `[127.0.0.1]` (`localhost` for sendmail-bs) |
 * | `requireTLS` | smtp | `true`: refuse to send unless STARTTLS works | false |
 * | `ignoreTLS` | smtp | `true`: never use STARTTLS | false |
 * | `rejectUnauthorized` | smtp(s) | `false`: accept any TLS certificate | true |
 * | `pipelining` | smtp | `true`: the lean pipelining transport (plain SMTP: no TLS, no AUTH); `false`: nodemailer's pool | `true` for a loopback host (127.0.0.0/8, ::1, localhost) without credentials, `requireTLS`, `rateLimit`, `maxRequeues` or `rejectUnauthorized`; else `false` |
 *
 * Credentials in the URL are percent-decoded (`smtp://me%40example.com:p%40ss@host`). Nothing
 * this module logs or throws contains the password.
 *
 * Delivery status notifications (RFC 3461): a `DsnRequest` on the envelope (`RawEnvelope.dsn`, or
 * nodemailer's `dsn` option that `rawSendMailOptions` sets) is sent by every transport where the
 * MTA can take it: ENVID/RET/NOTIFY (and ORCPT per recipient on the pipelining client) to a server
 * that offers DSN, `-N -R -V` to `sendmail` (not to Exim's). See src/fate/token.ts.
 *
 * A transport declares what it can do beyond `send` as `capabilities` ({@link TransportCapabilities}:
 * raw sending, capacity); the relay reads them through {@link transportCapabilities}, never by
 * probing the transport's methods.
 *
 * Over 400 lines: a third of it is the table above and TSDoc; the rest is one URL grammar with
 * four schemes, which reads best in one place.
 */
import os from "node:os";
import nodemailer from "nodemailer";
import Mailer from "nodemailer/lib/mailer";
import type { Transport, Transporter } from "nodemailer";
import type { SMTPPoolOptions } from "nodemailer/lib/smtp-pool";
import type { SMTPTransportOptions } from "nodemailer/lib/smtp-transport";
import { TransportConfigError } from "./errors.js";
import { redactUrl } from "./redact.js";
import { classifyError } from "./classify.js";
import { createSendmailTransport, checkSendmailPath, DEFAULT_SENDMAIL_PATH } from "./sendmail.js";
import { createSendmailBsTransport } from "./sendmail-bs.js";
import { createPipelinedSmtpTransport, type FallbackSender } from "./smtp-pipelined.js";
import { WireSmtpPool } from "./wire.js";

/**
 * What the relay asks the MTA about delivery status notifications (RFC 3461), for a server that
 * offers DSN (and `sendmail -N/-R/-V`): ENVID on MAIL FROM, NOTIFY and ORCPT on each RCPT TO.
 */
export interface DsnRequest {
  /** ENVID: the mail's id, or its signed token when a bounce secret is set (xtext-encoded on the wire). */
  readonly envid: string;
  /** NOTIFY for every recipient; `["NEVER"]` asks for no notification at all. */
  readonly notify: readonly ("SUCCESS" | "FAILURE" | "DELAY")[] | readonly ["NEVER"];
  /** RET: return only the headers (the default) or the full message in a bounce. */
  readonly ret: "HDRS" | "FULL";
}

/** The envelope of an already composed message. */
export interface RawEnvelope {
  readonly from: string;
  readonly to: readonly string[];
  /** Ask for delivery status notifications; null or absent: ask nothing (the MTA's defaults). */
  readonly dsn?: DsnRequest | null;
}

/**
 * nodemailer's `dsn` message option (`{ id, return, notify }`), which its SMTP client turns into
 * ENVID/RET on MAIL FROM and NOTIFY on each RCPT TO when the server offers DSN. nodemailer can
 * put only one ORCPT on every RCPT, so none is asked for on that path.
 */
export interface NodemailerDsn {
  readonly id: string;
  readonly return: "headers" | "full";
  readonly notify: string[];
}

/** nodemailer's `dsn` option for a {@link DsnRequest}. */
export function nodemailerDsn(dsn: DsnRequest): NodemailerDsn {
  return { id: dsn.envid, return: dsn.ret === "FULL" ? "full" : "headers", notify: [...dsn.notify] };
}

/**
 * The {@link DsnRequest} a transport's `send(mail)` was given: nodemailer's `dsn` option on the
 * message (`{ id | envid, return | ret, notify }`, as `nodemailerDsn` writes it), or null.
 */
export function dsnRequestOf(data: { readonly dsn?: unknown }): DsnRequest | null {
  const d = data.dsn as { id?: unknown; envid?: unknown; return?: unknown; ret?: unknown; notify?: unknown } | null | undefined;
  if (d === null || typeof d !== "object") return null;
  const envid = String(d.envid ?? d.id ?? "");
  const ret = String(d.ret ?? d.return ?? "HDRS").toUpperCase();
  const words = (Array.isArray(d.notify) ? d.notify : typeof d.notify === "string" ? d.notify.split(",") : []).map((w) => String(w).trim().toUpperCase());
  const notify = words.length === 1 && words[0] === "NEVER" ? (["NEVER"] as const) : (["SUCCESS", "FAILURE", "DELAY"] as const).filter((w) => words.includes(w));
  if (envid === "" && notify.length === 0) return null;
  return { envid, notify: notify.length === 0 ? ["FAILURE", "DELAY"] : notify, ret: ret === "FULL" || ret === "BODY" ? "FULL" : "HDRS" };
}

/**
 * What the relay passes to `transporter.sendMail` for a composed message: the envelope, the raw
 * bytes, the Message-ID and, when `envelope.dsn` asks for it, nodemailer's `dsn` option (which the
 * SMTP pool, `sendmail-bs:` and `sendmail:` transports of this library all honour).
 */
export function rawSendMailOptions(envelope: RawEnvelope, raw: Buffer, messageId: string): Mailer.Options & { dsn?: NodemailerDsn } {
  return {
    envelope: { from: envelope.from, to: [...envelope.to] },
    raw,
    messageId,
    ...(envelope.dsn ? { dsn: nodemailerDsn(envelope.dsn) } : {}),
  };
}

/** What a raw hand-off returns: the fields of nodemailer's `SentMessageInfo` that `toHandoffResult` reads. */
export interface RawSendResult {
  readonly response: string;
  readonly accepted: string[];
  readonly rejected: string[];
  readonly rejectedErrors: { recipient: string; response: string; responseCode: number }[];
}

/** Hand over an already composed message (final bytes) without nodemailer's Mailer. */
export type RawSend = (envelope: RawEnvelope, raw: Buffer) => Promise<RawSendResult>;

/**
 * What a nodemailer transport (the object with `send` that a transporter wraps) may declare about
 * itself as `capabilities`, instead of being probed for methods. The relay reads it once, through
 * {@link transportCapabilities}. The pipelining SMTP transport declares both; a transport that
 * declares nothing is driven through `sendMail` with the relay's default concurrency.
 *
 * @example
 * ```ts
 * const transport: Transport & CapableTransport = { name: "mine", version: "1", send, capabilities: { capacity: 40 } };
 * createRelay({ databaseUrl, transport: nodemailer.createTransport(transport) });
 * ```
 */
export interface TransportCapabilities {
  /** Hand-offs it carries at once; the relay's default `concurrency` grows to it (never shrinks). */
  readonly capacity?: number;
  /** Hand over a composed message directly, skipping nodemailer's Mailer (a MimeNode per message). */
  readonly sendRaw?: RawSend;
}

/** A nodemailer transport that declares its {@link TransportCapabilities}. */
export interface CapableTransport {
  readonly capabilities?: TransportCapabilities;
}

const NO_CAPABILITIES: TransportCapabilities = Object.freeze({});

/**
 * The capabilities the transport inside `transporter` declares (`transport.capabilities`), checked:
 * a `capacity` that is not a positive safe integer and a `sendRaw` that is not a function are
 * left out. `sendRaw` comes back bound to its transport, ready to call.
 */
export function transportCapabilities(transporter: Transporter): TransportCapabilities {
  const inner = (transporter as { transporter?: unknown }).transporter as CapableTransport | undefined;
  const declared = inner?.capabilities;
  if (declared === null || typeof declared !== "object") return NO_CAPABILITIES;
  const { capacity, sendRaw } = declared;
  return {
    ...(typeof capacity === "number" && Number.isSafeInteger(capacity) && capacity > 0 ? { capacity } : {}),
    ...(typeof sendRaw === "function" ? { sendRaw: sendRaw.bind(declared) as RawSend } : {}),
  };
}

/** A nodemailer transport object or nodemailer transport options, used as they are. */
export type TransportOptions = Transport | SMTPPoolOptions | SMTPTransportOptions;

/** What `createTransporter` accepts: a URL, nodemailer options or transport object, or a ready transporter. */
export type TransportSpec = string | TransportOptions | Transporter;

export interface CreateTransporterOptions {
  /**
   * Default for the URL's `timeout` parameter (ms). The URL's own parameters win.
   * @default 60000
   */
  readonly timeoutMs?: number;
  /** nodemailer's logger: `true` logs to the console, or a bunyan-style logger. @default false */
  readonly logger?: SMTPPoolOptions["logger"];
}

export const ACCEPTED_TRANSPORT_FORMS =
  "smtp://[user:pass@]host[:port], smtps://[user:pass@]host[:port], sendmail:[/absolute/path/to/sendmail], sendmail-bs:[/absolute/path/to/sendmail] (each may take ?timeout=MS&maxConnections=N)";

const DEFAULT_TIMEOUT_MS = 60_000;
const DEFAULT_CONNECT_TIMEOUT_MS = 15_000;

const SMTP_PARAMS = [
  "timeout",
  "connectionTimeout",
  "greetingTimeout",
  "socketTimeout",
  "maxConnections",
  "maxMessages",
  "maxRequeues",
  "rateLimit",
  "rateDelta",
  "name",
  "requireTLS",
  "ignoreTLS",
  "rejectUnauthorized",
  "pipelining",
] as const;
const SENDMAIL_PARAMS = ["timeout", "maxConnections"] as const;
const SENDMAIL_BS_PARAMS = ["timeout", "maxConnections", "maxMessages", "name"] as const;

type ParsedSpec =
  | { readonly kind: "smtp"; readonly options: SMTPPoolOptions; readonly display: string; readonly pipelined: boolean }
  | { readonly kind: "sendmail"; readonly path: string; readonly timeoutMs: number; readonly maxProcesses: number; readonly display: string }
  | {
      readonly kind: "sendmail-bs";
      readonly path: string;
      readonly timeoutMs: number;
      readonly maxConnections: number;
      readonly maxMessages: number;
      readonly name: string | undefined;
      readonly display: string;
    };

function configError(spec: string, problem: string): TransportConfigError {
  return new TransportConfigError(`Transport ${JSON.stringify(redactUrl(spec))}: ${problem}. Accepted forms: ${ACCEPTED_TRANSPORT_FORMS}.`);
}

function readParams(spec: string, search: URLSearchParams, allowed: readonly string[]): Map<string, string> {
  const out = new Map<string, string>();
  for (const [key, value] of search) {
    if (!allowed.includes(key)) {
      throw configError(spec, `unknown parameter ${JSON.stringify(key)} (known here: ${allowed.join(", ")})`);
    }
    out.set(key, value);
  }
  return out;
}

function intParam(spec: string, params: Map<string, string>, key: string, fallback: number, min = 1): number {
  const raw = params.get(key);
  if (raw === undefined) return fallback;
  if (raw === "Infinity" && key === "maxMessages") return Infinity;
  const n = Number(raw);
  if (!/^\d+$/.test(raw) || !Number.isSafeInteger(n) || n < min) {
    throw configError(spec, `\`${key}\` must be an integer >= ${min}, not ${JSON.stringify(raw)}`);
  }
  return n;
}

function boolParam(spec: string, params: Map<string, string>, key: string): boolean | undefined {
  const raw = params.get(key);
  if (raw === undefined) return undefined;
  if (raw === "true" || raw === "1") return true;
  if (raw === "false" || raw === "0") return false;
  throw configError(spec, `\`${key}\` must be true or false, not ${JSON.stringify(raw)}`);
}

function decode(spec: string, part: string, what: string): string {
  try {
    return decodeURIComponent(part);
  } catch {
    throw configError(spec, `the ${what} in the URL is not validly percent-encoded`);
  }
}

/** Split `scheme:rest?query` for the sendmail forms (not URLs with a host). */
function splitPathSpec(spec: string, scheme: string): { path: string; search: URLSearchParams } {
  let rest = spec.slice(scheme.length + 1);
  const q = rest.indexOf("?");
  const search = new URLSearchParams(q >= 0 ? rest.slice(q + 1) : "");
  if (q >= 0) rest = rest.slice(0, q);
  if (rest.startsWith("///")) rest = rest.slice(2); // sendmail:///usr/sbin/sendmail
  else if (rest.startsWith("//")) throw configError(spec, `write ${scheme}:/absolute/path (no host part)`);
  rest = decodeURIComponent(rest);
  return { path: rest === "" ? DEFAULT_SENDMAIL_PATH : rest, search };
}

function parseSpec(spec: string, defaults: CreateTransporterOptions): ParsedSpec {
  const trimmed = spec.trim();
  const schemeMatch = /^([a-z][a-z0-9+.-]*):/i.exec(trimmed);
  if (!schemeMatch) throw configError(spec, "it does not start with a scheme");
  const scheme = schemeMatch[1]!.toLowerCase();
  const defaultTimeout = defaults.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  if (!Number.isFinite(defaultTimeout) || defaultTimeout <= 0) {
    throw new TransportConfigError("Expected `timeoutMs` to be a positive number of milliseconds.");
  }

  if (scheme === "sendmail" || scheme === "sendmail-bs") {
    const { path, search } = splitPathSpec(trimmed, scheme);
    let absolute: string;
    try {
      absolute = checkSendmailPath(path, `${scheme}:`);
    } catch (err) {
      throw configError(spec, (err as Error).message.replace(/\.$/, ""));
    }
    if (scheme === "sendmail") {
      const params = readParams(spec, search, SENDMAIL_PARAMS);
      const timeoutMs = intParam(spec, params, "timeout", defaultTimeout);
      const maxProcesses = intParam(spec, params, "maxConnections", 5);
      return {
        kind: "sendmail",
        path: absolute,
        timeoutMs,
        maxProcesses,
        display: `sendmail:${absolute} (pipe, ${maxProcesses} processes at once, timeout ${timeoutMs} ms)`,
      };
    }
    const params = readParams(spec, search, SENDMAIL_BS_PARAMS);
    const timeoutMs = intParam(spec, params, "timeout", defaultTimeout);
    const maxConnections = intParam(spec, params, "maxConnections", 5);
    const maxMessages = intParam(spec, params, "maxMessages", 1000);
    return {
      kind: "sendmail-bs",
      path: absolute,
      timeoutMs,
      maxConnections,
      maxMessages,
      name: params.get("name"),
      display: `sendmail-bs:${absolute} (SMTP over \`${absolute} -bs\`, ${maxConnections} processes, timeout ${timeoutMs} ms)`,
    };
  }

  if (scheme === "smtp" || scheme === "smtps") {
    let url: URL;
    try {
      url = new URL(trimmed);
    } catch {
      throw configError(spec, "it is not a valid URL");
    }
    if (url.hostname === "") throw configError(spec, "it names no host");
    if (url.pathname !== "" && url.pathname !== "/") throw configError(spec, "an SMTP URL has no path");
    const params = readParams(spec, url.searchParams, SMTP_PARAMS);
    const secure = scheme === "smtps";
    const port = url.port === "" ? (secure ? 465 : 25) : Number(url.port);
    const timeout = params.has("timeout") ? intParam(spec, params, "timeout", defaultTimeout) : undefined;
    const connectDefault = timeout ?? Math.min(DEFAULT_CONNECT_TIMEOUT_MS, defaultTimeout);
    const options: SMTPPoolOptions = {
      pool: true,
      host: url.hostname.replace(/^\[(.*)\]$/, "$1"),
      port,
      secure,
      maxConnections: intParam(spec, params, "maxConnections", 5),
      maxMessages: intParam(spec, params, "maxMessages", 1000),
      maxRequeues: intParam(spec, params, "maxRequeues", 0, 0),
      connectionTimeout: intParam(spec, params, "connectionTimeout", connectDefault),
      greetingTimeout: intParam(spec, params, "greetingTimeout", connectDefault),
      socketTimeout: intParam(spec, params, "socketTimeout", timeout ?? defaultTimeout),
      logger: defaults.logger ?? false,
    };
    if (params.has("rateLimit")) options.rateLimit = intParam(spec, params, "rateLimit", 0);
    if (params.has("rateDelta")) options.rateDelta = intParam(spec, params, "rateDelta", 1000);
    const name = params.get("name");
    if (name !== undefined) options.name = name;
    const requireTLS = boolParam(spec, params, "requireTLS");
    if (requireTLS !== undefined) options.requireTLS = requireTLS;
    const ignoreTLS = boolParam(spec, params, "ignoreTLS");
    if (ignoreTLS !== undefined) options.ignoreTLS = ignoreTLS;
    const rejectUnauthorized = boolParam(spec, params, "rejectUnauthorized");
    if (rejectUnauthorized !== undefined) options.tls = { rejectUnauthorized };
    if (url.username !== "" || url.password !== "") {
      options.auth = { user: decode(spec, url.username, "user name"), pass: decode(spec, url.password, "password") };
    }
    const shown = redactUrl(trimmed);
    // The lean pipelining transport (src/smtp-pipelined.ts) speaks plain SMTP only (no STARTTLS, no
    // AUTH, no rate limit, no requeue). It is the default for a loopback MTA (a local Postfix or a
    // smarthost sidecar), where STARTTLS protects nothing; `pipelining=false` turns it off and
    // `pipelining=true` asks for it elsewhere. Everything else keeps nodemailer's pool.
    const asked = boolParam(spec, params, "pipelining");
    const plainOnly = secure || options.auth !== undefined || options.requireTLS === true;
    if (asked === true && plainOnly) {
      throw new TransportConfigError(`${redactUrl(trimmed)}: pipelining=true speaks plain SMTP only (no TLS, no AUTH); use it for a local MTA, or drop it.`);
    }
    const needsNodemailer = plainOnly || params.has("rateLimit") || params.has("maxRequeues") || params.has("rejectUnauthorized");
    const pipelined = asked ?? (!needsNodemailer && isLoopbackHost(options.host!));
    return {
      kind: "smtp",
      pipelined,
      options,
      display: `${shown} (${pipelined ? "pipelined plain SMTP" : `pooled SMTP${secure ? " over TLS" : ""}`} to ${options.host}:${port}, ${options.maxConnections} connections)`,
    };
  }

  throw configError(spec, `unknown scheme ${JSON.stringify(`${scheme}:`)}`);
}

/** The EHLO name nodemailer would send: the host name if it is qualified, else `[127.0.0.1]`. */
function ehloName(): string {
  const host = os.hostname();
  if (!host.includes(".")) return "[127.0.0.1]";
  return /^\d+\.\d+\.\d+\.\d+$/.test(host) ? `[${host}]` : host;
}

/** 127.0.0.0/8, ::1 and `localhost`: an MTA on this machine. */
export function isLoopbackHost(host: string): boolean {
  const h = host.toLowerCase().replace(/^\[(.*)\]$/, "$1");
  return h === "localhost" || h === "::1" || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h) || /^::ffff:127\./.test(h);
}

function isTransporter(value: unknown): value is Transporter {
  return (
    typeof value === "object" &&
    value !== null &&
    typeof (value as { sendMail?: unknown }).sendMail === "function" &&
    typeof (value as { transporter?: unknown }).transporter === "object"
  );
}

function isTransportObject(value: unknown): value is Transport {
  return typeof value === "object" && value !== null && typeof (value as { send?: unknown }).send === "function";
}

/**
 * Build the transporter the relay sends through.
 *
 * - A URL picks the transport (see the table at the top of this module).
 * - A nodemailer `Transporter` comes back unchanged; a transport object (`{ name, version, send }`)
 *   or nodemailer transport options are passed to `nodemailer.createTransport`.
 *
 * The relay calls the declared `sendRaw(envelope, raw)` when the transport has one (see
 * {@link transportCapabilities}), else `sendMail(rawSendMailOptions(envelope, raw, messageId))`
 * (the envelope, the raw message and, when asked, nodemailer's `dsn` option); then
 * `toHandoffResult(info)`, or `classifyError(err)` on failure.
 *
 * @throws TransportConfigError for an unknown scheme, a malformed URL, a relative sendmail path
 *   or a bad parameter; the message lists the accepted forms and never contains the password.
 * @example
 * ```ts
 * const transporter = createTransporter(process.env.MAIL_TRANSPORT ?? "sendmail:/usr/sbin/sendmail");
 * const transporter2 = createTransporter("smtp://relay:secret@mail.internal:587?maxConnections=10&timeout=30000");
 * ```
 */
export function createTransporter(spec: TransportSpec, options: CreateTransporterOptions = {}): Transporter {
  if (isTransporter(spec)) return spec;
  if (isTransportObject(spec)) return nodemailer.createTransport(spec);
  if (typeof spec === "object" && spec !== null) return nodemailer.createTransport(spec as SMTPPoolOptions);
  if (typeof spec !== "string" || spec.trim() === "") {
    throw new TransportConfigError(`No transport given. Accepted forms: ${ACCEPTED_TRANSPORT_FORMS}.`);
  }
  const parsed = parseSpec(spec, options);
  switch (parsed.kind) {
    case "smtp":
      if (parsed.pipelined) {
        const o = parsed.options;
        return nodemailer.createTransport(
          createPipelinedSmtpTransport({
            host: o.host!,
            port: Number(o.port),
            maxConnections: o.maxConnections ?? 5,
            maxMessages: o.maxMessages === undefined || o.maxMessages === Infinity ? 1000 : Number(o.maxMessages),
            name: o.name ?? ehloName(),
            connectionTimeoutMs: o.connectionTimeout ?? 15_000,
            socketTimeoutMs: o.socketTimeout ?? 60_000,
            // A local MTA that demands STARTTLS or AUTH (530) gets nodemailer's pool instead, for good.
            fallback: () => new Mailer(new WireSmtpPool(o), o) as unknown as FallbackSender,
          }),
        );
      }
      // nodemailer's pool, with the line-end and 8BITMIME handling every transport shares (src/wire.ts).
      // (new Mailer(pool, options) is what nodemailer.createTransport(options) builds, with this pool.)
      return new Mailer(new WireSmtpPool(parsed.options), parsed.options) as Transporter;
    case "sendmail":
      return nodemailer.createTransport(createSendmailTransport({ path: parsed.path, timeoutMs: parsed.timeoutMs, maxProcesses: parsed.maxProcesses }));
    case "sendmail-bs":
      return nodemailer.createTransport(
        createSendmailBsTransport({
          path: parsed.path,
          timeoutMs: parsed.timeoutMs,
          maxConnections: parsed.maxConnections,
          maxMessages: parsed.maxMessages,
          ...(parsed.name !== undefined ? { name: parsed.name } : {}),
          logger: options.logger ?? false,
        }),
      );
  }
}

/**
 * One line describing a transport, for logs and `doctor`; the password is replaced by `***`.
 * Never throws: an invalid URL is described as such.
 */
export function describeTransport(spec: TransportSpec): string {
  if (isTransporter(spec)) return `nodemailer transporter (${spec.transporter.name})`;
  if (isTransportObject(spec)) return `custom transport (${spec.name})`;
  if (typeof spec === "object" && spec !== null) {
    const o = spec as SMTPTransportOptions;
    return `nodemailer options${o.host ? ` (${o.host}${o.port ? `:${o.port}` : ""})` : ""}`;
  }
  if (typeof spec !== "string") return "no transport";
  try {
    return parseSpec(spec, {}).display;
  } catch (err) {
    return `${redactUrl(spec.trim())} (invalid: ${(err as Error).message})`;
  }
}

export interface TransportCheck {
  readonly ok: boolean;
  /** What was checked, or why it failed (password-free). */
  readonly message: string;
  readonly elapsedMs: number;
}

/**
 * Check that the transport can take mail, for `doctor`: SMTP connects, greets and logs in;
 * `sendmail-bs:` starts `sendmail -bs` and gets its greeting; `sendmail:` checks that the
 * program exists and is executable (running it would send a mail). Never throws.
 */
export async function verifyTransport(transporter: Transporter, timeoutMs = 10_000): Promise<TransportCheck> {
  const started = Date.now();
  const inner = transporter.transporter as Transport & { verify?: unknown; program?: string };
  if (typeof inner.verify !== "function") {
    return { ok: true, message: `${inner.name} has no verify(); not checked`, elapsedMs: 0 };
  }
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([
      transporter.verify(),
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(Object.assign(new Error(`no answer within ${timeoutMs} ms`), { code: "ETIMEDOUT" })), timeoutMs);
      }),
    ]);
    const what = typeof inner.program === "string" ? `${inner.name} (${inner.program})` : inner.name;
    return { ok: true, message: `${what} is ready`, elapsedMs: Date.now() - started };
  } catch (err) {
    return { ok: false, message: classifyError(err).message, elapsedMs: Date.now() - started };
  } finally {
    clearTimeout(timer);
  }
}
