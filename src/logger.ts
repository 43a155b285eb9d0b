/** The relay's structured logger (pino, JSON lines on stderr). Pass your own pino logger, or `false` for silence. */
import { pino, type Logger } from "pino";

export type { Logger };

export function defaultLogger(name = "mail-outbox"): Logger {
  return pino({ name, level: process.env.MAIL_OUTBOX_LOG_LEVEL ?? "info" }, pino.destination(2));
}

export function silentLogger(): Logger {
  return pino({ level: "silent" });
}
