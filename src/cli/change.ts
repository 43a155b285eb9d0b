/**
 * `mail-outbox replay | cancel | purge`: changing the outbox, over `replayMails`, `cancelMails` and
 * `purgeMails` (../admin.ts). Each has `--dry-run`; `--all` needs `--yes` (exit 2 without). Exit 1
 * when a named mail could not be changed (wrong state, not found).
 */
import { Option, type Command } from "commander";
import { cancelMails, purgeByRetention, purgeMails, replayMails } from "../admin.js";
import { parseDuration, parseSince } from "../duration.js";
import { OptionsError, UnsafeOperationError } from "../errors.js";
import { parseCount, parseStatusList } from "./args.js";
import type { Cli } from "./context.js";
import { formatCancel, formatPurge, formatReplay } from "./format.js";

export function addChangeCommands(program: Command, cli: Cli): void {
  program
    .command("replay")
    .description("send mails again (dead, held, cancelled or sent -> pending); keeps the Message-ID, resets attempts; sent mail needs --yes")
    .argument("[ids...]", "mail ids or Message-IDs")
    .option("--status <statuses>", "only these statuses, comma-separated (dead, held, cancelled, sent); default: dead,held")
    .option("--since <time>", "created at or after: a duration back or an ISO date/time")
    .option("--until <time>", "created before: a duration back or an ISO date/time")
    .option("--to <address>", "only mails to this recipient")
    .option("--uncertain", "only mails whose hand-off is uncertain")
    .option("--all", "allow a selection with no filter (every dead and held mail); needs --yes")
    .option("--yes", "confirm --all, or a replay of sent mail (the MTA has it already: it is delivered again)")
    .option("--dry-run", "print what would be replayed, change nothing")
    .action(async (ids: string[], opts: Record<string, string | boolean | undefined>, cmd: Command) => {
      const now = new Date();
      const dryRun = opts.dryRun === true;
      if (opts.all === true && opts.yes !== true && !dryRun) {
        throw new UnsafeOperationError("--all replays every dead and held mail: add --yes to confirm (see it first with --dry-run).");
      }
      const result = await cli.withDb(cmd, (db) =>
        replayMails(db, {
          ids,
          ...(opts.status !== undefined ? { status: parseStatusList(String(opts.status)) } : {}),
          ...(opts.since !== undefined ? { since: parseSince(String(opts.since), now, "--since") } : {}),
          ...(opts.until !== undefined ? { until: parseSince(String(opts.until), now, "--until") } : {}),
          ...(opts.to !== undefined ? { recipient: String(opts.to) } : {}),
          uncertain: opts.uncertain === true,
          all: opts.all === true,
          resendSent: opts.yes === true,
          dryRun,
          actor: cli.actor(),
          now,
        }),
      );
      if (cli.json(cmd)) cli.printJson(result);
      else cli.out(formatReplay(result, { dryRun, confirmed: opts.yes === true }));
      if (result.skipped.length > 0 || result.notFound.length > 0) cli.setExitCode(1);
    });

  program
    .command("cancel")
    .description("cancel mails not handed over yet (pending or held -> cancelled); a mail cancelled already is not an error")
    .argument("<ids...>", "mail ids or Message-IDs")
    .option("--dry-run", "print what would be cancelled, change nothing")
    .action(async (ids: string[], opts: { dryRun?: boolean }, cmd: Command) => {
      const dryRun = opts.dryRun === true;
      const result = await cli.withDb(cmd, (db) => cancelMails(db, { ids, dryRun, actor: cli.actor() }));
      if (cli.json(cmd)) cli.printJson(result);
      else cli.out(formatCancel(result, { dryRun }));
      if (result.notCancellable.length > 0 || result.notFound.length > 0) cli.setExitCode(1);
    });

  program
    .command("purge")
    .description("delete old sent, dead or cancelled mails and their attempt logs")
    .option("--status <statuses>", "sent, dead and/or cancelled, comma-separated")
    .option("--older-than <duration>", 'last changed longer ago than this, e.g. "30d"')
    .option("--all", "without --status: sent, dead and cancelled; without --older-than: any age; needs --yes")
    .option("--yes", "confirm --all")
    .option("--dry-run", "print how many would be deleted, change nothing")
    .addOption(new Option("--batch-size <n>", "rows per delete statement").default("5000", "5000"))
    .option("--retention <rules>", "instead of --status/--older-than: the relay's retention rules once, e.g. sent=30d,cancelled=30d,dead=90d")
    .action(async (opts: Record<string, string | boolean | undefined>, cmd: Command) => {
      const dryRun = opts.dryRun === true;
      if (opts.retention !== undefined) {
        const other = (["status", "olderThan", "all"] as const).filter((k) => opts[k] !== undefined);
        if (other.length > 0) throw new OptionsError(`--retention gives the statuses and ages itself: leave out ${other.map((k) => `--${k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`).join(", ")}.`);
        const batchSize = parseCount(String(opts.batchSize), "--batch-size");
        const result = await cli.withDb(cmd, (db) => purgeByRetention(db, { retention: String(opts.retention), dryRun, batchSize }));
        if (cli.json(cmd)) cli.printJson(result);
        else cli.out(result.results.map((r) => formatPurge(r, { dryRun })).join(""));
        return;
      }
      if (opts.all === true && opts.yes !== true && !dryRun) {
        throw new UnsafeOperationError("--all deletes mails regardless of status or age: add --yes to confirm (count them first with --dry-run).");
      }
      const status = opts.status !== undefined ? parseStatusList(String(opts.status)) : undefined;
      const olderThanMs = opts.olderThan !== undefined ? parseDuration(String(opts.olderThan), "--older-than") : undefined;
      const batchSize = parseCount(String(opts.batchSize), "--batch-size");
      const result = await cli.withDb(cmd, (db) =>
        purgeMails(db, {
          ...(status !== undefined ? { status: status as ("sent" | "dead" | "cancelled")[] } : {}),
          ...(olderThanMs !== undefined ? { olderThanMs } : {}),
          all: opts.all === true,
          dryRun,
          batchSize,
        }),
      );
      if (cli.json(cmd)) cli.printJson(result);
      else cli.out(formatPurge(result, { dryRun }));
    });
}
