/**
 * `mail-outbox`: the relay sidecar and the operator's tool. A thin shell: every command parses
 * its arguments, calls one exported function (admin.ts, relay.ts, migrate.ts, init.ts, doctor.ts) and
 * prints the result as text or, with --json, as JSON. This file holds the program, its global
 * options, the exit statuses and the printing of errors; the commands are in relay.ts (relay),
 * follow-log.ts and ingest.ts (delivery fate from the MTA's log and from its reports), inspect.ts
 * (status, list, show), change.ts (replay, cancel, purge), suppress.ts (suppress list|add|remove)
 * and setup.ts (init, migrate, doctor), what they print in format.ts.
 *
 * Exit status: 0 success (also for a request satisfied already, such as cancelling a cancelled
 * mail), 1 failure (including "some rows could not be changed" and a failed doctor check), 2 usage
 * error (unknown option or status, malformed duration, date or id, a refused unsafe operation:
 * `--all` or a replay of sent mail without `--yes`). Errors go to stderr as `mail-outbox: <message>`,
 * without stack unless MAIL_OUTBOX_DEBUG=1. Passwords in URLs are never printed; a SQLite URL is
 * printed as given (`file:./dev.db`). `relay` logs to stderr as JSON lines only (pino), its signal
 * notices included, and prints its final counts on stdout. `relay` and `follow-log` stop gracefully on
 * SIGTERM/SIGINT (exit 0) and at once on a second one: 130 (SIGINT) or 143 (SIGTERM); an error
 * that ends them is one JSON log line (level 60, `err`, `exitCode`) instead of the `mail-outbox:`
 * line when their log is JSON (./relay.ts `fatalAsLogLine`). Every command's `--help` lists the
 * global options.
 */
import { readFileSync, realpathSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { Command, CommanderError } from "commander";
import { errorMessage } from "../admin.js";
import { MailOutboxError, OptionsError, UnsafeOperationError } from "../errors.js";
import { addChangeCommands } from "./change.js";
import { addFollowLogCommand } from "./follow-log.js";
import { addIngestCommand } from "./ingest.js";
import { createCli, EXIT_USAGE, type CliIO } from "./context.js";
import { addInspectCommands } from "./inspect.js";
import { addRelayCommand } from "./relay.js";
import { addSetupCommands } from "./setup.js";
import { addSuppressCommands } from "./suppress.js";
import { addUiCommand } from "./ui.js";
import { addOpsCommands } from "./ops.js";

export { EXIT_FORCED, EXIT_USAGE, type CliIO, type SignalSource, type Writable } from "./context.js";
export { EXIT_FAILURE, EXIT_FORCED_SIGTERM } from "./context.js";

/**
 * Run the CLI with `argv` (the arguments after the program name) and return the exit status.
 * Never calls `process.exit`; `runProgram` does.
 *
 * @example
 * const code = await main(["status", "--json"], { stdout: process.stdout, stderr: process.stderr, env: process.env });
 */
export async function main(argv: readonly string[], io: CliIO = { stdout: process.stdout, stderr: process.stderr, env: process.env }): Promise<number> {
  let exitCode = 0;
  let forced: ((code: number) => void) | undefined;
  const forcedExit = new Promise<number>((resolve) => (forced = resolve));
  const cli = createCli(io, argv, { setExitCode: (code) => (exitCode = code), exitNow: (code) => forced?.(code) });
  const debug = cli.env.MAIL_OUTBOX_DEBUG === "1";

  const program = new Command("mail-outbox")
    .description("Transactional email outbox for Prisma: run the relay, inspect and replay mail.")
    .version(packageVersion(), "-V, --version")
    .exitOverride()
    .configureOutput({
      writeOut: (s) => cli.out(s),
      writeErr: (s) => cli.err(s),
      outputError: (s, write) => write(`mail-outbox: ${s.replace(/^error: /, "")}`),
    })
    .showHelpAfterError("(mail-outbox help <command> shows its usage)")
    // Every command's help also lists --database-url, --transport and --json (inherited by the subcommands added below).
    .configureHelp({ showGlobalOptions: true })
    .option("--database-url <url>", "file:./outbox.db, postgresql://user@host/db or mysql://user@host/db (default: env DATABASE_URL)")
    .option("--transport <spec>", "smtp://host:port, sendmail:/usr/sbin/sendmail, sendmail-bs:... (default: env MAIL_OUTBOX_TRANSPORT)")
    .option("--json", "print JSON instead of text");
  // The order here is the order of `mail-outbox --help`.
  addRelayCommand(program, cli);
  addFollowLogCommand(program, cli);
  addIngestCommand(program, cli);
  addInspectCommands(program, cli);
  addChangeCommands(program, cli);
  addSuppressCommands(program, cli);
  addOpsCommands(program, cli);
  addSetupCommands(program, cli);
  addUiCommand(program, cli);

  try {
    const run = program.parseAsync([...argv], { from: "user" }).then(() => exitCode);
    return await Promise.race([run, forcedExit]);
  } catch (e) {
    if (e instanceof CommanderError) return e.exitCode === 0 ? 0 : EXIT_USAGE;
    const usage = e instanceof OptionsError || e instanceof UnsafeOperationError;
    cli.err(`mail-outbox: ${errorMessage(e)}\n`);
    if (debug && e instanceof Error && e.stack) cli.err(`${e.stack}\n`);
    else if (!(e instanceof MailOutboxError) && !usage) cli.err("mail-outbox: (set MAIL_OUTBOX_DEBUG=1 for details)\n");
    return usage ? EXIT_USAGE : 1;
  }
}

function packageVersion(): string {
  try {
    return (JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8")) as { version?: string }).version ?? "0.0.0";
  } catch {
    return "0.0.0";
  }
}

/** True when the file at `moduleUrl` is the program node was started with (also through a bin symlink). */
export function isEntryPoint(moduleUrl: string): boolean {
  const arg = process.argv[1];
  if (arg === undefined) return false;
  try {
    return realpathSync(arg) === realpathSync(fileURLToPath(moduleUrl));
  } catch {
    return false;
  }
}

/** Run `main` on this process's arguments and exit with its status (the bin entry, ../cli.ts). */
export function runProgram(): void {
  // `mail-outbox list | head` closes the pipe early: that is not an error.
  process.stdout.on("error", (e: NodeJS.ErrnoException) => {
    if (e.code === "EPIPE") process.exit(0);
    throw e;
  });
  void main(process.argv.slice(2), { stdout: process.stdout, stderr: process.stderr, env: process.env }).then((code) => {
    // Exit once everything written has been flushed (stdout may be a pipe), even if a handle lingers.
    process.stdout.write("", () => process.stderr.write("", () => process.exit(code)));
  });
}
