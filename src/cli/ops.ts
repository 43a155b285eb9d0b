/**
 * `mail-outbox pause | resume | pace`: operating every relay of an outbox from the database, over
 * `pauseRelays`, `resumeRelays`, `setPace`, `removePace` and `listPaces` (../ops.ts). Each relay
 * reads the pauses and rates once per poll turn, so a change reaches all of them within one poll
 * interval.
 *
 * `--transport` here is the program's global option (commander gives it to the program wherever it
 * appears on the line), read only when given on the command line: MAIL_OUTBOX_TRANSPORT never
 * narrows a pause.
 */
import type { Command } from "commander";
import { OptionsError } from "../errors.js";
import { listPaces, listPauses, pauseRelays, removePace, resumeRelays, setPace } from "../ops.js";
import { parseCount } from "./args.js";
import type { Cli } from "./context.js";
import { formatPaces, formatPause, formatPauses, formatResume } from "./format.js";

/** Adds `pause`, `resume` and `pace` to the program. */
export function addOpsCommands(program: Command, cli: Cli): void {
  program
    .command("pause")
    .description("stop every relay (or those of --transport, or mail of --sender) from claiming mail, within one poll interval; hand-offs in flight finish")
    .option("--sender <domain>", "pause only mail whose envelope sender is at this domain")
    .option("--reason <text>", "why (shown by status and /readyz)")
    .option("--list", "change nothing: print the pauses in force")
    .addHelpText("after", "\n  --transport <url-or-key>  (the global option) pause only the relays of this MTA, e.g. smtp://127.0.0.1:25 or sendmail:/usr/sbin/sendmail")
    .action(async (opts: { sender?: string; reason?: string; list?: boolean }, cmd: Command) => {
      const transport = cli.globals(cmd).transport;
      if (opts.list === true) {
        if (transport !== undefined || opts.sender !== undefined || opts.reason !== undefined) throw new OptionsError("pause --list changes nothing: leave out --transport, --sender and --reason.");
        const list = await cli.withDb(cmd, (db) => listPauses(db));
        if (cli.json(cmd)) cli.printJson(list);
        else cli.out(formatPauses(list));
        return;
      }
      const result = await cli.withDb(cmd, (db) =>
        pauseRelays(db, {
          ...(transport !== undefined ? { transport } : {}),
          ...(opts.sender !== undefined ? { sender: opts.sender } : {}),
          ...(opts.reason !== undefined ? { reason: opts.reason } : {}),
          by: cli.actor(),
        }),
      );
      if (cli.json(cmd)) cli.printJson(result);
      else cli.out(formatPause(result));
    });

  program
    .command("resume")
    .description("lift a pause: the one given as to pause (none: the pause of every relay), or --all pauses")
    .option("--sender <domain>", "lift the pause of this sender domain")
    .option("--all", "lift every pause, whatever its scope")
    .addHelpText("after", "\n  --transport <url-or-key>  (the global option) lift the pause of this MTA's relays")
    .action(async (opts: { sender?: string; all?: boolean }, cmd: Command) => {
      const transport = cli.globals(cmd).transport;
      const result = await cli.withDb(cmd, (db) =>
        resumeRelays(db, {
          ...(transport !== undefined ? { transport } : {}),
          ...(opts.sender !== undefined ? { sender: opts.sender } : {}),
          all: opts.all === true,
        }),
      );
      if (cli.json(cmd)) cli.printJson(result);
      else cli.out(formatResume(result));
    });

  const pace = program.command("pace").description("hand-off rate limits shared by every relay of a transport (a token bucket in the database)");

  pace
    .command("set")
    .description("limit the hand-offs of every relay of a transport together to --rate, --burst at once")
    .argument("<scope>", "transport:<url-or-key>, e.g. transport:smtp://127.0.0.1:25")
    .requiredOption("--rate <n/s>", 'mails per second: "50", "50/s", "0.5/s", "600/min", "3600/h"')
    .option("--burst <n>", "mails that may go at once after a quiet time (default: the rate per second, at least 1)")
    .action(async (scope: string, opts: { rate: string; burst?: string }, cmd: Command) => {
      const rate = parseRate(opts.rate);
      const burst = opts.burst !== undefined ? parseCount(opts.burst, "--burst") : undefined;
      const row = await cli.withDb(cmd, (db) => setPace(db, scope, { rate, ...(burst !== undefined ? { burst } : {}) }));
      if (cli.json(cmd)) cli.printJson(row);
      else cli.out(formatPaces([row]));
    });

  pace
    .command("rm")
    .alias("remove")
    .description("remove the rate limit of a scope")
    .argument("<scope>", "transport:<url-or-key>")
    .action(async (scope: string, _opts: unknown, cmd: Command) => {
      const removed = await cli.withDb(cmd, (db) => removePace(db, scope));
      if (cli.json(cmd)) cli.printJson({ scope, removed });
      else cli.out(removed ? `removed the rate limit of ${scope}\n` : `${scope} had no rate limit\n`);
    });

  pace
    .command("ls")
    .alias("list")
    .description("the rate limits in force")
    .action(async (_opts: unknown, cmd: Command) => {
      const list = await cli.withDb(cmd, (db) => listPaces(db));
      if (cli.json(cmd)) cli.printJson(list);
      else cli.out(formatPaces(list));
    });
}

const PER: Record<string, number> = { s: 1, sec: 1, second: 1, m: 60, min: 60, minute: 60, h: 3600, hour: 3600 };

/** `--rate 50`, `50/s`, `600/min`, `3600/h`: mails per second. */
export function parseRate(text: string): number {
  const m = /^\s*([0-9]+(?:\.[0-9]+)?)\s*(?:\/\s*([a-z]+))?\s*$/i.exec(text);
  const per = m ? PER[(m[2] ?? "s").toLowerCase()] : undefined;
  const n = m ? Number(m[1]) : NaN;
  if (per === undefined || !(n > 0)) {
    throw new OptionsError(`--rate expects mails per second above 0, like "50", "50/s", "600/min" or "3600/h"; got ${JSON.stringify(text)}.`);
  }
  return n / per;
}
