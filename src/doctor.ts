/**
 * `doctor`: check a setup end to end and say what to do about each problem. The CLI command
 * `mail-outbox doctor` only prints what {@link doctor} returns.
 */
import { execFile } from "node:child_process";
import { accessSync, constants, realpathSync } from "node:fs";
import path from "node:path";
import { promisify } from "node:util";
import { errorMessage, pingDatabase } from "./admin.js";
import { DEFAULT_MAX_HEADER_BYTES, DEFAULT_MAX_MESSAGE_BYTES } from "./compose.js";
import { missingDatabaseFile, openDatabase } from "./db.js";
import { OptionsError } from "./errors.js";
import { inspectSchema } from "./schema.js";
import { DEFAULT_SENDMAIL_PATH } from "./sendmail.js";
import type { SchemaProblem, Store } from "./store.js";
import { createTransporter, describeTransport, isLoopbackHost, verifyTransport, type TransportSpec } from "./transport.js";

const execFileAsync = promisify(execFile);

/** `ok`: fine. `warn`: works, but something will bite (exit status stays 0). `fail`: broken (the CLI exits 1). */
export type DoctorStatus = "ok" | "warn" | "fail";

export interface DoctorCheck {
  /** `database`, `schema`, `times` (SQLite), `transport`, `limits` (a local Postfix). */
  readonly name: string;
  readonly status: DoctorStatus;
  /** `status !== "fail"`. */
  readonly ok: boolean;
  /** What was found, one line. */
  readonly message: string;
  /** What to do: the command to run or the setting to change; null when there is nothing to do. */
  readonly fix: string | null;
  /** For `schema`: every problem, with its own fix. */
  readonly problems?: readonly SchemaProblem[];
}

export interface DoctorReport {
  /** No check failed (warnings allowed). */
  readonly ok: boolean;
  readonly checks: readonly DoctorCheck[];
}

export interface DoctorOptions {
  /** `file:./outbox.db` or `postgresql://...`. Either this or `db`. A SQLite file that does not exist is reported, not created. */
  readonly databaseUrl?: string | undefined;
  /** An open store (`openDatabase()`); doctor does not close it. */
  readonly db?: Store;
  /** The relay's transport (`MAIL_OUTBOX_TRANSPORT`); when absent the transport check fails as "not configured". */
  readonly transport?: TransportSpec | undefined;
  /** How long to wait for the transport to answer. @default 10_000 */
  readonly timeoutMs?: number;
  /**
   * The largest message the outbox accepts: your `mailOutbox({ maxMessageBytes })`, which doctor
   * cannot see. Compared with the local Postfix's `message_size_limit`. @default DEFAULT_MAX_MESSAGE_BYTES
   */
  readonly maxMessageBytes?: number;
  /** The largest header section the outbox accepts (`mailOutbox({ maxHeaderBytes })`). Compared with `header_size_limit`. @default DEFAULT_MAX_HEADER_BYTES */
  readonly maxHeaderBytes?: number;
  /**
   * Postfix's `postconf`, to read its limits when the transport is `sendmail:`/`sendmail-bs:` with
   * Postfix's sendmail or `smtp://` to a loopback port its smtpd listens on. `false`: do not read.
   * @default `postconf` found in PATH, /usr/sbin or /usr/local/sbin
   */
  readonly postconfPath?: string | false;
}

/**
 * Room the MTA needs above `maxMessageBytes`: Postfix's `message_size_limit` also counts the header
 * fields it adds (Received, Return-Path, Delivered-To) and the envelope.
 */
export const MTA_SIZE_ALLOWANCE_BYTES = 10_000;

function positiveInt(name: string, value: number | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value < 1) {
    throw new OptionsError(`Expected \`${name}\` to be an integer >= 1, got ${String(value)}.`);
  }
  return value;
}

const check = (name: string, status: DoctorStatus, message: string, fix: string | null = null, extra: Partial<DoctorCheck> = {}): DoctorCheck => ({
  name,
  status,
  ok: status !== "fail",
  message,
  fix,
  ...extra,
});

/**
 * Check a setup the way the relay will use it, without changing anything: the database answers,
 * the outbox tables have the shape this version needs (with the notify trigger on PostgreSQL),
 * SQLite rows store times as the relay compares them, the transport answers, and, for a local
 * Postfix whose `postconf` can be run, that its `message_size_limit` and `header_size_limit` are
 * not below the outbox's limits or the largest pending mail. Each check says what to do.
 *
 * @returns the checks in that order; `ok` is false when one of them failed (warnings do not count).
 * @throws OptionsError for an invalid option; everything found is reported, not thrown.
 * @example
 * const report = await doctor({ databaseUrl: process.env.DATABASE_URL, transport: process.env.MAIL_OUTBOX_TRANSPORT });
 * for (const c of report.checks) console.log(c.status, c.name, c.message, c.fix ?? "");
 */
export async function doctor(options: DoctorOptions = {}): Promise<DoctorReport> {
  const timeoutMs = positiveInt("timeoutMs", options.timeoutMs, 10_000);
  const maxMessageBytes = positiveInt("maxMessageBytes", options.maxMessageBytes, DEFAULT_MAX_MESSAGE_BYTES);
  const maxHeaderBytes = positiveInt("maxHeaderBytes", options.maxHeaderBytes, DEFAULT_MAX_HEADER_BYTES);
  if (options.postconfPath !== undefined && options.postconfPath !== false && (typeof options.postconfPath !== "string" || options.postconfPath === "")) {
    throw new OptionsError("Expected `postconfPath` to be a path to postconf, or false.");
  }
  const checks: DoctorCheck[] = [];
  let largestPending: number | null = null;

  // ---- database, schema, times ----
  let db: Store | undefined = options.db;
  const ownsDb = db === undefined;
  try {
    if (db === undefined) {
      const missing = missingDatabaseFile(options.databaseUrl);
      if (missing !== null) {
        checks.push(check("database", "fail", `the SQLite database ${missing} does not exist`, "check DATABASE_URL (or --database-url), or create the tables there with `mail-outbox migrate`"));
      } else {
        db = await openDatabase(options.databaseUrl);
      }
    }
    if (db !== undefined) {
      await pingDatabase(db);
      checks.push(check("database", "ok", `reachable: ${db.displayUrl} (${db.provider})`));
    }
  } catch (e) {
    checks.push(check("database", "fail", errorMessage(e), "check DATABASE_URL (or --database-url) and that the database is running"));
  }
  try {
    if (db === undefined || checks[0]?.status !== "ok") {
      checks.push(check("schema", "fail", "not checked: the database is not reachable", "fix the database check first"));
    } else {
      const problems = await inspectSchema(db);
      checks.push(
        problems.length === 0
          ? check("schema", "ok", "the outbox tables (mail_outbox, mail_outbox_attempt, mail_outbox_delivery, mail_outbox_suppression, mail_outbox_log_cursor, mail_outbox_pause, mail_outbox_rate, mail_outbox_lock) have the expected shape")
          : check("schema", "fail", problems.map((p) => p.message).join("; "), [...new Set(problems.map((p) => p.fix))].join("; "), { problems }),
      );
    }
  } catch (e) {
    checks.push(check("schema", "fail", errorMessage(e), "run `mail-outbox migrate`"));
  }
  try {
    // Only where times can be stored as numbers (SQLite); null elsewhere.
    const numeric = db !== undefined && checks.every((c) => c.ok) ? await db.countNumericTimes() : null;
    if (numeric !== null) {
      checks.push(
        numeric === 0
          ? check("times", "ok", "times are stored as ISO-8601 text, as the relay compares them")
          : check(
              "times",
              "fail",
              `${numeric} row(s) store times as numbers: the application's PrismaBetterSqlite3 adapter uses timestampFormat "unixepoch-ms"; the relay needs the default "iso8601" (such rows are treated as due at once)`,
              'create the adapter without timestampFormat (the default "iso8601"); rows already written keep their numbers',
            ),
      );
    }
  } catch (e) {
    checks.push(check("times", "fail", errorMessage(e)));
  }
  try {
    if (db !== undefined && checks.every((c) => c.ok)) {
      largestPending = await db.largestPendingSize();
    }
  } catch {
    // Only used to compare with the MTA's limit; that check says "no pending mail" without it.
  } finally {
    if (ownsDb) await db?.close().catch(() => {});
  }

  // ---- transport ----
  const spec = options.transport;
  if (spec === undefined || spec === null || (typeof spec === "string" && spec.trim() === "")) {
    checks.push(check("transport", "fail", "not configured", "set MAIL_OUTBOX_TRANSPORT or pass --transport (e.g. smtp://127.0.0.1:25 or sendmail:/usr/sbin/sendmail)"));
  } else {
    try {
      const transporter = createTransporter(spec);
      try {
        const verified = await verifyTransport(transporter, timeoutMs);
        checks.push(
          check("transport", verified.ok ? "ok" : "fail", `${describeTransport(spec)}: ${verified.message}`, verified.ok ? null : "check that the MTA runs and that MAIL_OUTBOX_TRANSPORT (or --transport) points at it"),
        );
      } finally {
        transporter.close();
      }
    } catch (e) {
      checks.push(check("transport", "fail", `${describeTransport(spec)}: ${errorMessage(e)}`, "fix MAIL_OUTBOX_TRANSPORT (or --transport)"));
    }
  }

  // ---- the local Postfix's limits ----
  const postconf = options.postconfPath === false ? null : (options.postconfPath ?? findPostconf());
  if (postconf !== null && typeof spec === "string") {
    const limits = await limitsCheck(spec, postconf, { maxMessageBytes, maxHeaderBytes, largestPending });
    if (limits !== null) checks.push(limits);
  }

  return { ok: checks.every((c) => c.ok), checks };
}

// ---------------------------------------------------------------------------------------------
// Postfix

/** `postconf` in PATH, /usr/sbin or /usr/local/sbin (sbin is often not in a user's PATH), or null. */
export function findPostconf(env: NodeJS.ProcessEnv = process.env): string | null {
  const dirs = [...(env.PATH ?? "").split(path.delimiter).filter((d) => d !== ""), "/usr/sbin", "/usr/local/sbin"];
  for (const dir of dirs) {
    const candidate = path.join(dir, "postconf");
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  return null;
}

/** Run postconf with arguments (no shell), its stdout lines. */
async function postconf(program: string, args: readonly string[]): Promise<string[]> {
  const { stdout } = await execFileAsync(program, [...args], { timeout: 5000, encoding: "utf8", maxBuffer: 1024 * 1024 });
  return stdout.split("\n").map((l) => l.trim()).filter((l) => l !== "");
}

const SERVICE_PORTS: Readonly<Record<string, number>> = { smtp: 25, submission: 587, smtps: 465, submissions: 465 };

/** TCP ports on which Postfix's master.cf runs smtpd (`postconf -M`: "smtp inet ... smtpd", "127.0.0.1:2525 inet ... smtpd"). */
function smtpdPorts(masterLines: readonly string[]): Set<number> {
  const ports = new Set<number>();
  for (const line of masterLines) {
    const f = line.split(/\s+/);
    if (f[1] !== "inet" || f[7] !== "smtpd" || f[0] === undefined) continue;
    const service = f[0].slice(f[0].lastIndexOf(":") + 1);
    const port = /^\d+$/.test(service) ? Number(service) : SERVICE_PORTS[service];
    if (port !== undefined) ports.add(port);
  }
  return ports;
}

function sameFile(a: string, b: string): boolean {
  try {
    return realpathSync(a) === realpathSync(b);
  } catch {
    return path.resolve(a) === path.resolve(b);
  }
}

/**
 * Whether the transport hands mail to this machine's Postfix: `sendmail:`/`sendmail-bs:` with
 * Postfix's `sendmail_path`, or `smtp://`/`smtps://` to a loopback port its smtpd listens on.
 * Returns how it reaches Postfix, or null.
 */
async function reachesLocalPostfix(spec: string, program: string): Promise<string | null> {
  const trimmed = spec.trim();
  const scheme = /^([a-z][a-z0-9+.-]*):/i.exec(trimmed)?.[1]?.toLowerCase();
  if (scheme === "sendmail" || scheme === "sendmail-bs") {
    let rest = trimmed.slice(scheme.length + 1).replace(/\?.*$/, "");
    if (rest.startsWith("///")) rest = rest.slice(2);
    const sendmail = rest === "" ? DEFAULT_SENDMAIL_PATH : decodeURIComponent(rest);
    const [sendmailPath] = await postconf(program, ["-h", "sendmail_path"]);
    return sendmailPath !== undefined && sameFile(sendmail, sendmailPath) ? `${scheme}:${sendmail}` : null;
  }
  if (scheme === "smtp" || scheme === "smtps") {
    let url: URL;
    try {
      url = new URL(trimmed);
    } catch {
      return null;
    }
    if (!isLoopbackHost(url.hostname)) return null;
    const port = url.port === "" ? (scheme === "smtps" ? 465 : 25) : Number(url.port);
    return smtpdPorts(await postconf(program, ["-M"])).has(port) ? `smtpd on ${url.hostname}:${port}` : null;
  }
  return null;
}

function fmt(n: number): string {
  return n.toLocaleString("en-US");
}

/** Compare the local Postfix's limits with the outbox's; null when the transport is not a local Postfix. */
async function limitsCheck(
  spec: string,
  program: string,
  outbox: { maxMessageBytes: number; maxHeaderBytes: number; largestPending: number | null },
): Promise<DoctorCheck | null> {
  let via: string | null;
  let messageSizeLimit: number;
  let headerSizeLimit: number;
  try {
    via = await reachesLocalPostfix(spec, program);
    if (via === null) return null;
    const values = await postconf(program, ["-h", "message_size_limit", "header_size_limit"]);
    [messageSizeLimit, headerSizeLimit] = values.map(Number) as [number, number];
    if (values.length !== 2 || !Number.isSafeInteger(messageSizeLimit) || !Number.isSafeInteger(headerSizeLimit)) {
      return check("limits", "warn", `${program} -h message_size_limit header_size_limit printed ${JSON.stringify(values.join(" "))}, not two numbers`, null);
    }
  } catch (e) {
    // postconf that cannot run (not Postfix's, no permission): nothing to compare with.
    return check("limits", "warn", `could not read Postfix's limits with ${program}: ${errorMessage(e)}`, "pass --postconf <path to postconf>, or compare message_size_limit and header_size_limit with the outbox's limits by hand");
  }
  const problems: string[] = [];
  const fixes: string[] = [];
  const unlimited = messageSizeLimit === 0;
  const needed = outbox.maxMessageBytes + MTA_SIZE_ALLOWANCE_BYTES;
  if (!unlimited && messageSizeLimit < needed) {
    problems.push(
      `Postfix's message_size_limit (${fmt(messageSizeLimit)} bytes) is below the largest message the outbox accepts (maxMessageBytes ${fmt(outbox.maxMessageBytes)}, plus ${fmt(MTA_SIZE_ALLOWANCE_BYTES)} for the header fields Postfix adds): such a mail goes dead over SMTP, or is retried for hours through sendmail:`,
    );
    fixes.push(
      `set maxMessageBytes in mailOutbox() (and --max-message-bytes here) to at most ${fmt(messageSizeLimit - MTA_SIZE_ALLOWANCE_BYTES)}, or raise Postfix's limit: postconf -e message_size_limit=${needed} && postfix reload`,
    );
  }
  if (headerSizeLimit < outbox.maxHeaderBytes) {
    problems.push(
      `Postfix's header_size_limit (${fmt(headerSizeLimit)} bytes) is below the largest header section the outbox accepts (maxHeaderBytes ${fmt(outbox.maxHeaderBytes)}): Postfix cuts longer headers off without refusing the mail`,
    );
    fixes.push(`set maxHeaderBytes in mailOutbox() (and --max-header-bytes here) to at most ${fmt(headerSizeLimit)}, or raise Postfix's limit: postconf -e header_size_limit=${outbox.maxHeaderBytes} && postfix reload`);
  }
  if (!unlimited && outbox.largestPending !== null && outbox.largestPending > messageSizeLimit) {
    problems.push(`the largest pending mail is ${fmt(outbox.largestPending)} bytes, over Postfix's message_size_limit (${fmt(messageSizeLimit)}): Postfix will refuse it`);
    fixes.push(`raise message_size_limit (postconf -e message_size_limit=${outbox.largestPending + MTA_SIZE_ALLOWANCE_BYTES} && postfix reload), or find the mail with \`mail-outbox list --status pending --json\` and \`mail-outbox cancel <id>\``);
  }
  const pending = outbox.largestPending === null ? "no pending mail" : `largest pending mail ${fmt(outbox.largestPending)} bytes`;
  if (problems.length === 0) {
    return check(
      "limits",
      "ok",
      `Postfix (${via}): message_size_limit ${unlimited ? "0 (no limit)" : fmt(messageSizeLimit)} >= maxMessageBytes ${fmt(outbox.maxMessageBytes)} + ${fmt(MTA_SIZE_ALLOWANCE_BYTES)}; header_size_limit ${fmt(headerSizeLimit)} >= maxHeaderBytes ${fmt(outbox.maxHeaderBytes)}; ${pending}`,
    );
  }
  return check("limits", "warn", `Postfix (${via}): ${problems.join("; ")}`, fixes.join("; "));
}
