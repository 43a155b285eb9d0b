/**
 * What every command group of the CLI shares: where output goes (with secrets scrubbed), the
 * global options, the database of a command, and the exit status.
 */
import type { Command } from "commander";
import { missingDatabaseFile, openDatabase } from "../db.js";
import { DatabaseConfigError } from "../errors.js";
import { collectSecrets, scrubSecrets } from "../redact.js";
import type { Store } from "../store.js";
import { formatJson } from "./format.js";

/** Something `write` can be called on: process.stdout, a test's collector. */
export interface Writable {
  write(chunk: string | Uint8Array): unknown;
}

/** Where SIGINT/SIGTERM come from for `relay`. */
export interface SignalSource {
  on(event: "SIGINT" | "SIGTERM", listener: () => void): unknown;
  off(event: "SIGINT" | "SIGTERM", listener: () => void): unknown;
}

export interface CliIO {
  readonly stdout: Writable;
  readonly stderr: Writable;
  /** DATABASE_URL, MAIL_OUTBOX_TRANSPORT, MAIL_OUTBOX_DEBUG, MAIL_OUTBOX_LOG_LEVEL, MAIL_OUTBOX_LOG_FORMAT. @default process.env */
  readonly env?: Readonly<Record<string, string | undefined>>;
  /** @default process */
  readonly signals?: SignalSource;
  /** What `ingest` reads a report from. @default process.stdin */
  readonly stdin?: NodeJS.ReadableStream;
}

/** Exit status of a usage error. */
export const EXIT_USAGE = 2;
/** Exit status when `relay` is told to stop a second time and leaves at once. */
export const EXIT_FORCED = 130;
/** Exit status of a command that failed: for `relay`, a fatal error (database unreachable at start, outbox tables missing). */
export const EXIT_FAILURE = 1;
/** Exit status when `relay` or `follow-log` is told by SIGTERM to stop a second time (128 + 15; a second SIGINT gives EXIT_FORCED, 128 + 2). */
export const EXIT_FORCED_SIGTERM = 143;

/** The exit status of a stop forced by a second `signal`: 128 + its number, as a shell reports a process killed by it. */
export function forcedExitCode(signal: "SIGINT" | "SIGTERM"): number {
  return signal === "SIGTERM" ? EXIT_FORCED_SIGTERM : EXIT_FORCED;
}

/** The options every command inherits from the program. */
export interface GlobalOpts {
  readonly databaseUrl?: string;
  readonly transport?: string;
  readonly json?: boolean;
}

/** One run of the CLI, as the command groups see it. */
export interface Cli {
  readonly env: Readonly<Record<string, string | undefined>>;
  readonly signals: SignalSource;
  readonly stdin: NodeJS.ReadableStream;
  /** stderr is a terminal: logs are then readable text unless MAIL_OUTBOX_LOG_FORMAT=json. */
  readonly stderrIsTTY: boolean;
  /** Text for stdout / stderr, with every password from the arguments and environment replaced by `***`. */
  out(text: string): void;
  err(text: string): void;
  /** Bytes for stdout as they are (`show --raw`). */
  outBytes(bytes: Uint8Array): void;
  /** `value` as JSON on stdout. */
  printJson(value: unknown): void;
  globals(cmd: Command): GlobalOpts;
  /** `--json` was given. */
  json(cmd: Command): boolean;
  /** `--database-url`, else DATABASE_URL. */
  databaseUrl(cmd: Command): string | undefined;
  /** `--transport`, else MAIL_OUTBOX_TRANSPORT. */
  transport(cmd: Command): string | undefined;
  /** Who changes the outbox, for the attempt log of replay and cancel: `cli:<user>`. */
  actor(): string;
  /**
   * Run `fn` on the command's database and close it. The database must exist unless `create`:
   * opening a SQLite file that is not there would create an empty one.
   */
  withDb<T>(cmd: Command, fn: (db: Store) => Promise<T>, options?: { readonly create?: boolean }): Promise<T>;
  /** Exit with `code` once the command has finished (1: some rows could not be changed, a check failed). */
  setExitCode(code: number): void;
  /** Exit with `code` now, without waiting for the command (`relay` told to stop twice). */
  exitNow(code: number): void;
}

/**
 * Refuse a database URL that names a database file that does not exist (opening it would create an
 * empty one and every command would then report "no such table").
 */
export function requireExistingDatabase(url: string | undefined): void {
  const file = missingDatabaseFile(url);
  if (file !== null) {
    throw new DatabaseConfigError(`The SQLite database ${file} does not exist. Check DATABASE_URL (or --database-url), or create the tables with \`mail-outbox migrate\`.`);
  }
}

export function createCli(
  io: CliIO,
  argv: readonly string[],
  exits: { setExitCode(code: number): void; exitNow(code: number): void },
): Cli {
  const env = io.env ?? process.env;
  const secrets = collectSecrets([...argv, env.DATABASE_URL, env.MAIL_OUTBOX_TRANSPORT]);
  const scrub = (text: string) => scrubSecrets(text, secrets);
  const globals = (cmd: Command): GlobalOpts => cmd.optsWithGlobals() as GlobalOpts;
  const cli: Cli = {
    env,
    signals: io.signals ?? process,
    stdin: io.stdin ?? process.stdin,
    stderrIsTTY: (io.stderr as { isTTY?: boolean }).isTTY === true,
    out: (text) => void io.stdout.write(scrub(text)),
    err: (text) => void io.stderr.write(scrub(text)),
    outBytes: (bytes) => void io.stdout.write(bytes),
    printJson: (value) => cli.out(formatJson(value)),
    globals,
    json: (cmd) => globals(cmd).json === true,
    databaseUrl: (cmd) => globals(cmd).databaseUrl ?? env.DATABASE_URL,
    transport: (cmd) => globals(cmd).transport ?? env.MAIL_OUTBOX_TRANSPORT,
    actor: () => `cli:${env.USER ?? "operator"}`,
    async withDb(cmd, fn, { create = false } = {}) {
      const url = cli.databaseUrl(cmd);
      if (!create) requireExistingDatabase(url);
      const db = await openDatabase(url);
      try {
        return await fn(db);
      } finally {
        await db.close();
      }
    },
    setExitCode: exits.setExitCode,
    exitNow: exits.exitNow,
  };
  return cli;
}
