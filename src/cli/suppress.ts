/**
 * `mail-outbox suppress list | add | remove`: the suppression list, over `listSuppressions`,
 * `suppress` and `unsuppress` (../admin.ts). `enqueue()` reads the list under the extension's
 * `suppression` option; `ingest` and `follow-log` with `--suppress` add hard bounces to it.
 */
import { Option, type Command } from "commander";
import { listSuppressions, suppress, unsuppress } from "../admin.js";
import { OptionsError } from "../errors.js";
import { parseCount, positiveDuration } from "./args.js";
import type { Cli } from "./context.js";
import { formatSuppress, formatSuppressions, formatUnsuppress } from "./format.js";

/** Adds `suppress` and its subcommands to the program. */
export function addSuppressCommands(program: Command, cli: Cli): void {
  const group = program
    .command("suppress")
    .description("the suppression list: addresses enqueue refuses or skips (hard bounces, or added by hand)");

  group
    .command("list")
    .description("suppressed addresses that count now (--all: expired ones too)")
    .option("--address <address>", "only this address (any case)")
    .option("--all", "include entries whose expiry has passed (they no longer count)")
    .addOption(new Option("--limit <n>", "at most this many entries (1 to 100000)").default("1000", "1000"))
    .action(async (opts: { address?: string; all?: boolean; limit: string }, cmd: Command) => {
      const now = new Date();
      const limit = parseCount(opts.limit, "--limit");
      const list = await cli.withDb(cmd, (db) =>
        listSuppressions(db, { ...(opts.address !== undefined ? { address: opts.address } : {}), includeExpired: opts.all === true, limit, now }),
      );
      if (cli.json(cmd)) cli.printJson(list);
      else cli.out(formatSuppressions(list, { now, limit }));
    });

  group
    .command("add")
    .description("put addresses on the list (an address already there gets the new reason and expiry)")
    .argument("<address...>", "bare email addresses, like ann@example.com")
    .option("--reason <text>", "why (shown by suppress list)")
    .option("--expires <duration>", 'the entry stops counting after this long ("180d", "12h"); default: never')
    .action(async (addresses: string[], opts: { reason?: string; expires?: string }, cmd: Command) => {
      const expiresIn = opts.expires !== undefined ? positiveDuration(opts.expires, "--expires") : undefined;
      const result = await cli.withDb(cmd, (db) =>
        suppress(db, addresses, {
          reason: opts.reason ?? `added by ${cli.actor()}`,
          ...(expiresIn !== undefined ? { expiresIn } : {}),
        }),
      );
      if (cli.json(cmd)) cli.printJson(result);
      else cli.out(formatSuppress(result));
    });

  group
    .command("remove")
    .description("take addresses off the list, or (--expired) remove every expired entry")
    .argument("[address...]", "bare email addresses")
    .option("--expired", "remove the entries whose expiry has passed")
    .action(async (addresses: string[], opts: { expired?: boolean }, cmd: Command) => {
      const expired = opts.expired === true;
      if (expired === (addresses.length > 0)) {
        throw new OptionsError("suppress remove takes either addresses or --expired (not both, not neither).");
      }
      const result = await cli.withDb(cmd, (db) => unsuppress(db, expired ? { expired: true } : addresses));
      if (cli.json(cmd)) cli.printJson(result);
      else cli.out(formatUnsuppress(result, { expired }));
      // Asked to remove an address that is not there: nothing to do, like cancelling a cancelled mail.
    });
}
