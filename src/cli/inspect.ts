/**
 * `mail-outbox status | list | show`: reading the outbox, over `getStatus`, `listMails`, `mailFates`
 * and `showMail` (../admin.ts). Nothing here writes.
 */
import { Option, type Command } from "commander";
import { getStatus, listMails, mailFates, showMail } from "../admin.js";
import { parseSince } from "../duration.js";
import { OptionsError } from "../errors.js";
import { STATUSES } from "../states.js";
import { FATES, type Fate } from "../store.js";
import { parseCount, parseStatusList } from "./args.js";
import type { Cli } from "./context.js";
import { formatList, formatPaces, formatPauses, formatShow, formatStatus } from "./format.js";
import { listPaces, listPauses } from "../ops.js";

export function addInspectCommands(program: Command, cli: Cli): void {
  program
    .command("status")
    .description("counts per status, uncertain hand-offs, queue lag, next attempt, expired leases; recipients per fate after the hand-off")
    .action(async (_opts: unknown, cmd: Command) => {
      const { report, pauses, paces } = await cli.withDb(cmd, async (db) => {
        const report = await getStatus(db);
        // Pauses and rate limits (ops.ts); an outbox not migrated to them yet has none.
        const [pauses, paces] = await Promise.all([listPauses(db).catch(() => null), listPaces(db).catch(() => null)]);
        return { report, pauses, paces };
      });
      if (cli.json(cmd)) cli.printJson({ ...report, pauses, paces });
      else {
        const ops = (pauses !== null && pauses.length > 0 ? formatPauses(pauses) : "") + (paces !== null && paces.length > 0 ? formatPaces(paces) : "");
        cli.out(formatStatus(report) + (ops === "" ? "" : `\n${ops}`));
      }
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
    .option("--fate <fate>", `only mails with a recipient whose current fate is this (${FATES.join(", ")})`)
    .action(async (opts: Record<string, string | boolean | undefined>, cmd: Command) => {
      const now = new Date();
      const limit = parseCount(String(opts.limit), "--limit");
      const recipient = (opts.to ?? opts.recipient) as string | undefined;
      const fate = opts.fate !== undefined ? parseFate(String(opts.fate)) : undefined;
      const { mails, fates } = await cli.withDb(cmd, async (db) => {
        const mails = await listMails(db, {
          ...(opts.status !== undefined ? { status: parseStatusList(String(opts.status)) } : {}),
          ...(recipient !== undefined ? { recipient } : {}),
          ...(opts.since !== undefined ? { since: parseSince(String(opts.since), now, "--since") } : {}),
          ...(opts.until !== undefined ? { until: parseSince(String(opts.until), now, "--until") } : {}),
          ...(fate !== undefined ? { fate } : {}),
          uncertain: opts.uncertain === true,
          limit,
        });
        return { mails, fates: await mailFates(db, mails) };
      });
      // JSON: each mail with `fates`, the current fate per recipient handed over (as `show` has them).
      if (cli.json(cmd)) cli.printJson(mails.map((m) => ({ ...m, fates: fates.get(m.id) ?? [] })));
      else cli.out(formatList(mails, limit, fates));
    });

  program
    .command("show")
    .description("one mail with its attempts timeline and, per recipient, what the MTA did after the hand-off")
    .argument("<id>", "mail id (UUID) or Message-ID")
    .option("--raw", "write the raw message bytes to stdout (with --json: as base64 in the JSON)")
    .action(async (ref: string, opts: { raw?: boolean }, cmd: Command) => {
      const mail = await cli.withDb(cmd, (db) => showMail(db, ref, { raw: opts.raw === true }));
      if (cli.json(cmd)) cli.printJson(mail.raw === undefined ? mail : { ...mail, raw: mail.raw.toString("base64") });
      else if (opts.raw === true && mail.raw !== undefined) cli.outBytes(mail.raw);
      else cli.out(formatShow(mail));
    });
}

/** `--fate bounced`: one of the fates. */
function parseFate(text: string): Fate {
  if (!(FATES as readonly string[]).includes(text)) throw new OptionsError(`Unknown fate ${JSON.stringify(text)}: use one of ${FATES.join(", ")}.`);
  return text as Fate;
}
