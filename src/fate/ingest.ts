/**
 * `ingestReport`: record what a delivery status notification (RFC 3464) says about a mail of the
 * outbox; `ingestMaildir`: the same for every report waiting in a Maildir. `mail-outbox ingest`
 * (src/cli/ingest.ts) is the shell around them.
 *
 * Linking a report to its mail, in this order:
 * 1. A signed token (src/fate/token.ts): the `Original-Envelope-Id`, or the VERP return address
 *    `local+<token>@domain` the report was sent to (`envelopeRecipient`, which the CLI takes from
 *    Postfix's `ORIGINAL_RECIPIENT`/`RECIPIENT`, or the report's X-Original-To, Delivered-To, To).
 * 2. Without a secret only: the `Original-Envelope-Id` when it is the id of a mail of the outbox,
 *    else the Message-ID of the returned headers.
 * With a secret, only a token that verifies links: anything else is `ForgedReportError`.
 *
 * Idempotent: each event's key derives from the report (src/fate/dsn.ts), and the store skips a
 * key it has, so the same report read twice records its events once (the second read is a
 * `duplicate`). Nothing is recorded for a report that is refused.
 */
import { readdir, readFile, rename, mkdir, writeFile } from "node:fs/promises";
import path from "node:path";
import type { Registry } from "prom-client";
import { ForgedReportError, OptionsError, UnreadableReportError } from "../errors.js";
import { isUuid } from "../ids.js";
import type { Store } from "../store.js";
import { parseDeliveryReport, reportEvents, type DeliveryReport } from "./dsn.js";
import { fateMetrics, type ReportResult } from "./metrics.js";
import { looksLikeToken, tokenFromAddress, verifyToken } from "./token.js";
import type { FateEvent } from "./watch.js";

export interface IngestOptions {
  /** The bounce secret the relay signs tokens with (MAIL_OUTBOX_BOUNCE_SECRET); null: no tokens, link by ENVID or Message-ID. */
  readonly secret: string | null;
  /** Put every recipient that hard-bounced (a new `bounced` event) on the suppression list, until `expiresAt` (null: for good). Null or absent: do not. */
  readonly suppress?: { readonly expiresAt: Date | null } | null;
  /** The address the report was delivered to (the VERP address), when the MTA tells it (Postfix: `$ORIGINAL_RECIPIENT`). */
  readonly envelopeRecipient?: string | null;
  /** Called once for every event recorded now (not for duplicates). */
  readonly onEvent?: (event: FateEvent) => void;
  /** Count `mail_outbox_reports_total{result}` and `mail_outbox_fates_total{event,source="dsn"}` in this registry. */
  readonly metrics?: Registry;
  /** The clock, for events whose report gives no date. @default () => new Date() */
  readonly now?: () => Date;
}

/** What `ingestReport` recorded. */
export interface IngestResult {
  /** `recorded`: some event was new; `duplicate`: every event was stored already (the report was read before). */
  readonly result: "recorded" | "duplicate";
  readonly mailId: string;
  /** The mail's Message-ID. */
  readonly messageId: string;
  /** What linked the report to the mail. */
  readonly linkedBy: "token" | "envid" | "message-id";
  readonly report: DeliveryReport;
  /** The events recorded now, in the report's order. */
  readonly recorded: readonly FateEvent[];
  /** Events of the report that were stored already. */
  readonly duplicates: number;
}

function count(registry: Registry | undefined, result: ReportResult): void {
  if (registry) fateMetrics(registry).reports.inc({ result });
}

/** The mail a report names, or an error saying why none (ForgedReportError with a secret). */
async function link(store: Store, report: DeliveryReport, options: IngestOptions): Promise<{ id: string; messageId: string; by: IngestResult["linkedBy"] }> {
  const envid = report.originalEnvelopeId;
  const find = async (id: string) => (await store.findMail({ id }, false))?.mail ?? null;
  if (options.secret !== null) {
    const addresses = [...new Set([options.envelopeRecipient ?? null, ...report.addressedTo].filter((a): a is string => a !== null && a !== ""))];
    const tokens = [...(envid !== null && looksLikeToken(envid) ? [envid] : []), ...addresses.map(tokenFromAddress).filter((t): t is string => t !== null)];
    for (const token of tokens) {
      const id = verifyToken(token, options.secret);
      if (id === null) continue;
      const mail = await find(id);
      if (!mail) {
        throw new UnreadableReportError(`its token names mail ${id}, which is not in the outbox (purged?)`);
      }
      return { id, messageId: mail.messageId, by: "token" };
    }
    throw new ForgedReportError(
      tokens.length > 0
        ? `its token (${tokens[0]}) does not verify under the bounce secret (was MAIL_OUTBOX_BOUNCE_SECRET changed since the mail was sent?)`
        : `it carries no token: its Original-Envelope-Id is ${envid === null ? "missing" : JSON.stringify(envid)} and it was not sent to a VERP address (${addresses.join(", ") || "none known"})`,
    );
  }
  if (envid !== null && isUuid(envid)) {
    const mail = await find(envid.toLowerCase());
    if (mail) return { id: mail.id, messageId: mail.messageId, by: "envid" };
  }
  if (report.returnedMessageId !== null) {
    const id = (await store.mailIdsByMessageId([report.returnedMessageId])).get(report.returnedMessageId);
    if (id !== undefined) return { id, messageId: report.returnedMessageId, by: "message-id" };
  }
  throw new UnreadableReportError(
    `it names no mail of this outbox (Original-Envelope-Id ${envid === null ? "missing" : JSON.stringify(envid)}, returned Message-ID ${report.returnedMessageId ?? "missing"})` +
      (envid !== null && looksLikeToken(envid) ? "; its ENVID is a signed token: set MAIL_OUTBOX_BOUNCE_SECRET to the relay's secret" : ""),
  );
}

/** Marks an UnreadableReportError thrown because the report names no mail (for the `unlinked` count). */
const unlinked = new WeakSet<Error>();

/**
 * Read one delivery report and record its per-recipient events for the mail it names. `input`
 * is the report's bytes, or the report `parseDeliveryReport` read from them.
 *
 * @throws UnreadableReportError when `input` is not an RFC 3464 report, or names no mail of the
 *   outbox (nothing recorded); ForgedReportError when a secret is set and no valid token links it
 *   (nothing recorded). A database error is thrown as the store throws it (`store.classifyError`
 *   says whether to try again later).
 * @example
 * ```ts
 * const result = await ingestReport(store, readFileSync(0), { secret: process.env.MAIL_OUTBOX_BOUNCE_SECRET ?? null });
 * // { result: "recorded", mailId: "0193...", linkedBy: "token", recorded: [{ event: "bounced", recipient: "ann@example.org", dsnStatus: "5.1.1", ... }] }
 * ```
 */
export async function ingestReport(store: Store, input: Buffer | DeliveryReport, options: IngestOptions): Promise<IngestResult> {
  const registry = options.metrics;
  let report: DeliveryReport;
  try {
    report = Buffer.isBuffer(input) ? await parseDeliveryReport(input) : input;
  } catch (err) {
    if (err instanceof UnreadableReportError) count(registry, "unreadable");
    throw err;
  }
  let mail: Awaited<ReturnType<typeof link>>;
  try {
    mail = await link(store, report, options);
  } catch (err) {
    if (err instanceof ForgedReportError) count(registry, "forged");
    else if (err instanceof UnreadableReportError) {
      unlinked.add(err);
      count(registry, "unlinked");
    }
    throw err;
  }
  const events = reportEvents(report, mail.id, (options.now ?? (() => new Date()))());
  if (events.length === 0) {
    count(registry, "unreadable");
    throw new UnreadableReportError(`none of its recipients has an action this outbox records (${report.recipients.map((r) => r.action).join(", ")})`);
  }
  const inserted = await store.recordDeliveryEvents(events, options.suppress ? { suppress: { expiresAt: options.suppress.expiresAt } } : {});
  const recorded: FateEvent[] = inserted.map((e) => ({ ...e, messageId: mail.messageId }));
  count(registry, recorded.length > 0 ? "recorded" : "duplicate");
  if (registry) for (const e of recorded) fateMetrics(registry).fates.inc({ event: e.event, source: "dsn" });
  for (const e of recorded) options.onEvent?.(e);
  return {
    result: recorded.length > 0 ? "recorded" : "duplicate",
    mailId: mail.id,
    messageId: mail.messageId,
    linkedBy: mail.by,
    report,
    recorded,
    duplicates: events.length - recorded.length,
  };
}

/** What a refused report counts as: `forged`, `unlinked` (readable, names no mail) or `unreadable`. */
export function refusalKind(err: unknown): "forged" | "unlinked" | "unreadable" | null {
  if (err instanceof ForgedReportError) return "forged";
  if (err instanceof UnreadableReportError) return unlinked.has(err) ? "unlinked" : "unreadable";
  return null;
}

// ---- Maildir ------------------------------------------------------------------------------------

/** What happened to one file of the Maildir. */
export type MaildirFileResult =
  | { readonly file: string; readonly movedTo: string; readonly outcome: "recorded" | "duplicate"; readonly result: IngestResult }
  | { readonly file: string; readonly movedTo: string; readonly outcome: "forged" | "unlinked" | "unreadable"; readonly error: Error };

export interface MaildirSummary {
  readonly files: readonly MaildirFileResult[];
  /** Per outcome, how many files. */
  readonly counts: Readonly<Record<"recorded" | "duplicate" | "forged" | "unlinked" | "unreadable", number>>;
  /**
   * The error that stopped the run (the database could not be reached or written): the file it
   * happened on and every later one are left where they were, for the next run. Null when every
   * file was handled.
   */
  readonly stoppedBy: { readonly file: string; readonly error: unknown } | null;
}

export interface IngestMaildirOptions extends IngestOptions {
  /** Called after each file is handled and moved. */
  readonly onFile?: (result: MaildirFileResult) => void;
}

/** The folder refused reports go to (Maildir++: `<maildir>/.Failed`, with its own tmp, new, cur). */
export const FAILED_FOLDER = ".Failed";

/** `1796066538.V..vm:2,RS` -> base `1796066538.V..vm`, flags `RS`. */
function splitInfo(name: string): { base: string; flags: string } {
  const i = name.indexOf(":2,");
  return i < 0 ? { base: name.replace(/:.*$/, ""), flags: "" } : { base: name.slice(0, i), flags: name.slice(i + 3) };
}

function withFlag(flags: string, flag: string): string {
  return [...new Set([...flags, flag])].sort().join("");
}

async function ensureFolder(folder: string, maildirfolder: boolean): Promise<void> {
  for (const sub of ["tmp", "new", "cur"]) await mkdir(path.join(folder, sub), { recursive: true });
  if (maildirfolder) await writeFile(path.join(folder, "maildirfolder"), "", { flag: "a" });
}

async function listDir(dir: string): Promise<string[]> {
  try {
    return (await readdir(dir)).filter((n) => !n.startsWith("."));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return [];
    throw err;
  }
}

/**
 * Ingest every report waiting in the Maildir `dir`: the files in `new/`, and those in `cur/` not
 * yet flagged seen (`S`). Each handled report is moved to `cur/` with the seen flag (`:2,S`);
 * one that is refused (unreadable, naming no mail, forged) is moved, unchanged, to the Maildir++
 * folder `.Failed` (`<dir>/.Failed/new/`), for a person to look at. A file is only ever renamed
 * within the Maildir, never deleted or rewritten. A database error stops the run and leaves the
 * remaining files where they are (`stoppedBy`); a file another process took meanwhile is skipped.
 *
 * @example
 * ```ts
 * const summary = await ingestMaildir(store, "/home/bounces/Maildir", { secret });
 * console.log(summary.counts); // { recorded: 12, duplicate: 0, forged: 1, unlinked: 0, unreadable: 0 }
 * ```
 */
export async function ingestMaildir(store: Store, dir: string, options: IngestMaildirOptions): Promise<MaildirSummary> {
  const newDir = path.join(dir, "new");
  const curDir = path.join(dir, "cur");
  for (const d of [newDir, curDir]) {
    try {
      await readdir(d);
    } catch (err) {
      throw new OptionsError(`${dir} is not a Maildir: ${d} cannot be read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message}).`, { cause: err });
    }
  }
  const pending = [
    ...(await listDir(newDir)).sort().map((name) => ({ dir: newDir, name })),
    ...(await listDir(curDir))
      .filter((name) => !splitInfo(name).flags.includes("S"))
      .sort()
      .map((name) => ({ dir: curDir, name })),
  ];
  const files: MaildirFileResult[] = [];
  const counts = { recorded: 0, duplicate: 0, forged: 0, unlinked: 0, unreadable: 0 };
  const failed = path.join(dir, FAILED_FOLDER);
  for (const { dir: from, name } of pending) {
    const file = path.join(from, name);
    let input: Buffer;
    try {
      input = await readFile(file);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") continue; // taken by another ingest
      return { files, counts, stoppedBy: { file, error: err } };
    }
    const { base, flags } = splitInfo(name);
    let entry: MaildirFileResult;
    try {
      const result = await ingestReport(store, input, options);
      const movedTo = path.join(curDir, `${base}:2,${withFlag(flags, "S")}`);
      entry = { file, movedTo, outcome: result.result, result };
    } catch (err) {
      const kind = refusalKind(err);
      if (kind === null) return { files, counts, stoppedBy: { file, error: err } };
      await ensureFolder(failed, true);
      entry = { file, movedTo: path.join(failed, "new", base), outcome: kind, error: err as Error };
    }
    try {
      await rename(file, entry.movedTo);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") continue; // moved by another ingest meanwhile
      return { files, counts, stoppedBy: { file, error: err } };
    }
    counts[entry.outcome]++;
    files.push(entry);
    options.onFile?.(entry);
  }
  return { files, counts, stoppedBy: null };
}
