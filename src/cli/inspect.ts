/**
 * `mail-outbox status | list | show`: reading the outbox, over `getStatus`, `listMails` and
 * `showMail` (../admin.ts). Nothing here writes.
 */
import { Option, type Command } from "commander";
import { getStatus, listMails, showMail } from "../admin.js";
import { parseSince } from "../duration.js";
import { STATUSES } from "../states.js";
import { parseCount, parseStatusList } from "./args.js";
import type { Cli } from "./context.js";
import { formatList, formatShow, formatStatus } from "./format.js";

export function addInspectCommands(program: Command, cli: Cli): void {
  program
    .command("status")
    .description("counts per status, uncertain hand-offs, queue lag, next attempt, expired leases")
    .action(async (_opts: unknown, cmd: Command) => {
      const report = await cli.withDb(cmd, (db) => getStatus(db));
      if (cli.json(cmd)) cli.printJson(report);
      else cli.out(formatStatus(report));
    });

  program
    .command("list")
    .description("mails, newest first")
    .option("--status <statuses>", `only these statuses, comma-separated (${STATUSES.join(", ")})`)
    .option("--to <address>", "only mails to this recipient (case-insensitive)")
    .option("--recipient <address>", "same as --to")
    .option("--since <time>", 'created at or after: a duration back ("2h", "7d") or an ISO date/time')
    .option("--until <time>", "created before: a duration back or an ISO date/time")
    .addOption(new Option("--limit <n>", "at most this many rows (1 to 10000)").default("50", "50"))
    .option("--uncertain", "only mails whose hand-off is uncertain (a relay died while handing them over)")
    .action(async (opts: Record<string, string | boolean | undefined>, cmd: Command) => {
      const now = new Date();
      const limit = parseCount(String(opts.limit), "--limit");
      const recipient = (opts.to ?? opts.recipient) as string | undefined;
      const mails = await cli.withDb(cmd, (db) =>
        listMails(db, {
          ...(opts.status !== undefined ? { status: parseStatusList(String(opts.status)) } : {}),
          ...(recipient !== undefined ? { recipient } : {}),
          ...(opts.since !== undefined ? { since: parseSince(String(opts.since), now, "--since") } : {}),
          ...(opts.until !== undefined ? { until: parseSince(String(opts.until), now, "--until") } : {}),
          uncertain: opts.uncertain === true,
          limit,
        }),
      );
      if (cli.json(cmd)) cli.printJson(mails);
      else cli.out(formatList(mails, limit));
    });

  program
    .command("show")
    .description("one mail with its attempts timeline")
    .argument("<id>", "mail id (UUID) or Message-ID")
    .option("--raw", "write the raw message bytes to stdout (with --json: as base64 in the JSON)")
    .action(async (ref: string, opts: { raw?: boolean }, cmd: Command) => {
      const mail = await cli.withDb(cmd, (db) => showMail(db, ref, { raw: opts.raw === true }));
      if (cli.json(cmd)) cli.printJson(mail.raw === undefined ? mail : { ...mail, raw: mail.raw.toString("base64") });
      else if (opts.raw === true && mail.raw !== undefined) cli.outBytes(mail.raw);
      else cli.out(formatShow(mail));
    });
}
