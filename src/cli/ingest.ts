/**
 * `mail-outbox ingest`: record delivery status notifications (RFC 3464) through `ingestReport` /
 * `ingestMaildir` (../fate/ingest.ts).
 *
 * - From stdin (a Postfix alias `bounces: "|mail-outbox ingest"` or a `pipe` transport): one
 *   report; the exit status tells the MTA what to do with it, in sysexits(3) terms:
 *   0 recorded (or recorded before: a duplicate), 65 EX_DATAERR not a report or it names no mail
 *   of the outbox, 77 EX_NOPERM refused as possibly forged, 75 EX_TEMPFAIL the database could not
 *   be reached or written, or the command is misconfigured (Postfix keeps the report queued and
 *   tries again later, so nothing is lost while it is fixed). One line on stderr says which.
 * - `--maildir DIR`: every report waiting there (see `ingestMaildir`); exit 0 when each was
 *   handled (refused ones moved to DIR/.Failed count as handled), 75 when the database stopped it.
 *
 * The bounce secret comes only from the environment (MAIL_OUTBOX_BOUNCE_SECRET): a command-line
 * flag would show in `ps`. The VERP address the report was delivered to comes from `--recipient`
 * or Postfix local(8)'s `ORIGINAL_RECIPIENT` / `RECIPIENT`.
 */
import type { Readable } from "node:stream";
import type { Command } from "commander";
import { errorMessage } from "../admin.js";
import { UnreadableReportError } from "../errors.js";
import { ingestMaildir, ingestReport, refusalKind, type IngestOptions, type IngestResult, type MaildirFileResult } from "../fate/ingest.js";
import { parseDeliveryReport } from "../fate/dsn.js";
import { parseDsnOptions } from "../fate/token.js";
import type { Store } from "../store.js";
import { positiveDuration } from "./args.js";
import type { Cli } from "./context.js";

/** sysexits(3): the input data was incorrect (not a report, or it names no mail). */
export const EX_DATAERR = 65;
/** sysexits(3): temporary failure, the MTA should try again later. */
export const EX_TEMPFAIL = 75;
/** sysexits(3): permission denied (a report that may be forged). */
export const EX_NOPERM = 77;

/** Reports larger than this are not read (a DSN with RET=HDRS is a few KiB; RET=FULL carries the whole mail). */
const MAX_REPORT_BYTES = 64 * 1024 * 1024;

async function readAll(stream: Readable | NodeJS.ReadableStream): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of stream as AsyncIterable<Buffer | string>) {
    const b = typeof chunk === "string" ? Buffer.from(chunk) : chunk;
    size += b.length;
    if (size > MAX_REPORT_BYTES) throw new UnreadableReportError(`the input is larger than ${MAX_REPORT_BYTES} bytes`);
    chunks.push(b);
  }
  return Buffer.concat(chunks);
}

function describe(r: IngestResult): string {
  const what = r.recorded.map((e) => `${e.recipient} ${e.event}${e.dsnStatus ? ` (${e.dsnStatus})` : ""}`).join(", ");
  return r.result === "recorded"
    ? `recorded ${what} for mail ${r.mailId} ${r.messageId} (linked by ${r.linkedBy})${r.duplicates > 0 ? `; ${r.duplicates} event(s) already recorded` : ""}`
    : `report already recorded for mail ${r.mailId} ${r.messageId} (duplicate, nothing new)`;
}

function describeFile(f: MaildirFileResult): string {
  return "result" in f ? `${f.file}: ${describe(f.result)}` : `${f.file}: ${f.outcome}, moved to ${f.movedTo}: ${errorMessage(f.error)}`;
}

/** Adds `ingest` to the program. */
export function addIngestCommand(program: Command, cli: Cli): void {
  program
    .command("ingest")
    .description("record delivery status notifications (bounces, delay and success reports): one from stdin, or every one in --maildir")
    .option("--maildir <dir>", "read every report waiting in this Maildir (new/, and cur/ without the seen flag); handled ones move to cur/ (seen), refused ones to <dir>/.Failed")
    .option("--suppress", "put recipients that hard-bounced on the suppression list")
    .option("--suppress-for <duration>", 'as --suppress, the entries expiring after this long ("180d")')
    .option("--recipient <address>", "the address the report was delivered to, for a VERP token (default: env ORIGINAL_RECIPIENT, else RECIPIENT, as Postfix's local delivery sets them)")
    .addHelpText(
      "after",
      "\nThe bounce secret is read from MAIL_OUTBOX_BOUNCE_SECRET (never a flag). Exit status reading stdin: 0 recorded or duplicate, " +
        "65 not a delivery report or it names no mail of the outbox, 77 refused as possibly forged, 75 database unavailable or misconfigured (the MTA retries later).",
    )
    .action(async (opts: { maildir?: string; suppress?: boolean; suppressFor?: string; recipient?: string }, cmd: Command) => {
      const fromStdin = opts.maildir === undefined;
      const say = (line: string) => cli.err(`mail-outbox ingest: ${line}\n`);
      let options: IngestOptions;
      try {
        const rawSecret = cli.env.MAIL_OUTBOX_BOUNCE_SECRET;
        const secret = parseDsnOptions({ secret: rawSecret === undefined || rawSecret === "" ? null : rawSecret }).secret;
        const suppressMs = opts.suppressFor !== undefined ? positiveDuration(opts.suppressFor, "--suppress-for") : undefined;
        const suppress = opts.suppress === true || suppressMs !== undefined ? { expiresAt: suppressMs !== undefined ? new Date(Date.now() + suppressMs) : null } : null;
        const recipient = opts.recipient ?? cli.env.ORIGINAL_RECIPIENT ?? cli.env.RECIPIENT ?? null;
        options = { secret, suppress, envelopeRecipient: recipient };
      } catch (err) {
        // Misconfigured: reading stdin, keep the report queued at the MTA (75) until it is fixed.
        if (!fromStdin) throw err;
        say(`${errorMessage(err)} (exit ${EX_TEMPFAIL}: the MTA keeps the report and tries again)`);
        cli.setExitCode(EX_TEMPFAIL);
        return;
      }

      if (!fromStdin) {
        const summary = await cli.withDb(cmd, (db: Store) => ingestMaildir(db, opts.maildir!, { ...options, onFile: (f) => (cli.json(cmd) ? undefined : cli.out(`${describeFile(f)}\n`)) }));
        if (cli.json(cmd)) {
          cli.printJson({
            counts: summary.counts,
            files: summary.files.map((f) => ({ file: f.file, movedTo: f.movedTo, outcome: f.outcome, ...("error" in f ? { error: errorMessage(f.error) } : { mailId: f.result.mailId, events: f.result.recorded }) })),
            stoppedBy: summary.stoppedBy ? { file: summary.stoppedBy.file, error: errorMessage(summary.stoppedBy.error) } : null,
          });
        }
        const c = summary.counts;
        say(`${c.recorded} recorded, ${c.duplicate} duplicate, ${c.unreadable} unreadable, ${c.unlinked} unlinked, ${c.forged} forged`);
        if (summary.stoppedBy) {
          say(`stopped at ${summary.stoppedBy.file}: ${errorMessage(summary.stoppedBy.error)}; it and the files after it stay for the next run`);
          cli.setExitCode(EX_TEMPFAIL);
        }
        return;
      }

      const stdin = cli.stdin;
      let code = 0;
      try {
        // Read the report before opening the database: input that is no report is refused (65) even
        // while the database is down, instead of being retried for nothing.
        const report = await parseDeliveryReport(await readAll(stdin));
        const result = await cli.withDb(cmd, (db: Store) => ingestReport(db, report, options));
        if (cli.json(cmd)) cli.printJson({ result: result.result, mailId: result.mailId, messageId: result.messageId, linkedBy: result.linkedBy, events: result.recorded, duplicates: result.duplicates });
        say(describe(result));
      } catch (err) {
        const kind = refusalKind(err);
        code = kind === "forged" ? EX_NOPERM : kind !== null ? EX_DATAERR : EX_TEMPFAIL;
        say(`${kind ?? "not recorded"}: ${errorMessage(err)}${kind === null ? " (exit 75: the MTA keeps the report and tries again)" : ""}`);
      }
      cli.setExitCode(code);
    });
}
