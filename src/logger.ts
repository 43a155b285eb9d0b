/**
 * The relay's structured logger (pino). Pass your own pino logger to `createRelay`, or `false` for
 * silence; the CLI and `defaultLogger` build one from the environment:
 *
 * - `MAIL_OUTBOX_LOG_LEVEL`: `trace`, `debug`, `info` (default), `warn`, `error`, `fatal` or
 *   `silent`. Any other value is refused at start with an {@link OptionsError} that lists them.
 * - `MAIL_OUTBOX_LOG_FORMAT`: `json` (one JSON object per line), `pretty` (readable text, through
 *   pino-pretty), or unset: readable text when stderr is a terminal, JSON lines otherwise.
 *
 * Every line of the JSON stream is pino's JSON: nothing else is ever written through these loggers.
 */
import { pino, type Logger } from "pino";
import { prettyFactory } from "pino-pretty";
import { OptionsError } from "./errors.js";

export type { Logger };

/** Every value `MAIL_OUTBOX_LOG_LEVEL` accepts, most verbose first. */
export const LOG_LEVELS = ["trace", "debug", "info", "warn", "error", "fatal", "silent"] as const;

/** A value of `MAIL_OUTBOX_LOG_LEVEL`. */
export type LogLevel = (typeof LOG_LEVELS)[number];

/** How log lines look: JSON objects, or readable text (pino-pretty). */
export type LogFormat = "json" | "pretty";

type Env = Readonly<Record<string, string | undefined>>;

/**
 * The level from `MAIL_OUTBOX_LOG_LEVEL` (case and surrounding spaces ignored; unset or empty: `info`).
 *
 * @throws OptionsError for any other value, naming the accepted ones.
 * @example
 * logLevelFrom({ MAIL_OUTBOX_LOG_LEVEL: "debug" }); // "debug"
 */
export function logLevelFrom(env: Env = process.env): LogLevel {
  const raw = env.MAIL_OUTBOX_LOG_LEVEL?.trim().toLowerCase();
  if (raw === undefined || raw === "") return "info";
  if ((LOG_LEVELS as readonly string[]).includes(raw)) return raw as LogLevel;
  throw new OptionsError(`MAIL_OUTBOX_LOG_LEVEL=${JSON.stringify(env.MAIL_OUTBOX_LOG_LEVEL)} is not a log level: use one of ${LOG_LEVELS.join(", ")} (default: info).`);
}

/**
 * The format from `MAIL_OUTBOX_LOG_FORMAT`: `json` or `pretty` as given; unset or empty: `pretty`
 * when the log goes to a terminal (`isTTY`), else `json`.
 *
 * @throws OptionsError for any other value.
 */
export function logFormatFrom(env: Env = process.env, isTTY = false): LogFormat {
  const raw = env.MAIL_OUTBOX_LOG_FORMAT?.trim().toLowerCase();
  if (raw === undefined || raw === "") return isTTY ? "pretty" : "json";
  if (raw === "json" || raw === "pretty") return raw;
  throw new OptionsError(`MAIL_OUTBOX_LOG_FORMAT=${JSON.stringify(env.MAIL_OUTBOX_LOG_FORMAT)} is not a log format: use json or pretty (default: pretty on a terminal, json otherwise).`);
}

/** Where and how {@link createLogger} writes. */
export interface LoggerOptions {
  /** The `name` field of every line. @default "mail-outbox" */
  readonly name?: string;
  /** Where `MAIL_OUTBOX_LOG_LEVEL` and `MAIL_OUTBOX_LOG_FORMAT` are read. @default process.env */
  readonly env?: Env;
  /** Receives each line, newline included. @default stderr (file descriptor 2) */
  readonly write?: (line: string) => void;
  /** Whether the lines reach a terminal (chooses the format when none is set). @default process.stderr.isTTY */
  readonly isTTY?: boolean;
}

/**
 * A pino logger at the level and in the format the environment asks for: JSON lines, or
 * pino-pretty's readable text (colours on a terminal).
 *
 * @throws OptionsError when `MAIL_OUTBOX_LOG_LEVEL` or `MAIL_OUTBOX_LOG_FORMAT` is not valid.
 * @example
 * const log = createLogger({ write: (line) => process.stderr.write(line) });
 */
export function createLogger(options: LoggerOptions = {}): Logger {
  const env = options.env ?? process.env;
  const isTTY = options.isTTY ?? process.stderr.isTTY === true;
  const level = logLevelFrom(env);
  const format = logFormatFrom(env, isTTY);
  const settings = { name: options.name ?? "mail-outbox", level };
  if (format === "json") {
    const write = options.write;
    return pino(settings, write ? { write: (line: string) => write(line) } : pino.destination(2));
  }
  const prettify = prettyFactory({ colorize: isTTY, translateTime: "SYS:standard", ignore: "pid,hostname" });
  const write = options.write ?? ((line: string) => void process.stderr.write(line));
  return pino(settings, { write: (line: string) => write(prettify(line)) });
}

/** The relay's logger when none is given: {@link createLogger} on stderr. */
export function defaultLogger(name = "mail-outbox"): Logger {
  return createLogger({ name });
}

export function silentLogger(): Logger {
  return pino({ level: "silent" });
}
