/**
 * `mail-outbox relay`: the sidecar. Parses the tuning, DSN and lease-expiry options (the bounce
 * secret comes from MAIL_OUTBOX_BOUNCE_SECRET, never from a flag), runs `createRelay()` (../relay.ts)
 * until SIGTERM/SIGINT (a second signal exits at once: 130 after SIGINT, 143 after SIGTERM; see
 * `RelaySignals`, also for PID 1), logs to stderr as JSON lines (pino; an error that ends the
 * command is one of them, see `fatalAsLogLine`), optionally serves Prometheus metrics, /healthz
 * and /readyz (../http-server.ts), and prints the final counts on stdout.
 */
import { Option, type Command } from "commander";
import { errorMessage, pingDatabase } from "../admin.js";
import { parseDuration } from "../duration.js";
import { serveOperations } from "../http-server.js";
import { parseRetention } from "../relay-ops.js";
import { createLogger, logFormatFrom, type Logger } from "../logger.js";
import { OptionsError, UnsafeOperationError } from "../errors.js";
import { createRelay, type Relay, type RelayCounts, type RelayOptions } from "../relay.js";
import type { LeaseExpiryPolicy } from "../store.js";
import { parseCount, positiveDuration } from "./args.js";
import { EXIT_FAILURE, EXIT_USAGE, forcedExitCode, requireExistingDatabase, type Cli } from "./context.js";
import { formatCounts, formatMs } from "./format.js";

export function addRelayCommand(program: Command, cli: Cli): void {
  program
    .command("relay")
    .description("hand committed mail to the MTA until stopped (SIGTERM/SIGINT stop gracefully; a second signal exits at once)")
    // Defaults appear once per option, as "(default: ...)": computed ones in the text, fixed ones through commander.
    .option("--once", "hand over what is due now, print the counts and exit")
    .option("--concurrency <n>", "hand-offs in flight at once (default: 10, or the transport's capacity when larger: 20 for a local MTA over SMTP)")
    .option("--batch-size <n>", "rows claimed per statement (default: 100, or 5 x concurrency when larger)")
    .option("--lease <duration>", "how long a claim holds a row (default: 30s)")
    .option("--poll <duration>", "how often to look for due mail when nothing wakes the relay (default: 1s)")
    .option("--relay-id <name>", "name of this relay in leases and attempt records (default: host/pid/random)")
    .option("--listen-url <url>", "PostgreSQL behind PgBouncer (?pgbouncer=true): a direct URL for LISTEN, so the relay wakes at once; without one it polls (default: MAIL_OUTBOX_LISTEN_URL)")
    .addOption(new Option("--stop-timeout <duration>", "deadline for hand-offs in flight when stopping").default("10s", "10s"))
    .addOption(
      new Option(
        "--lease-expiry-policy <policy>",
        "what to do with a mail whose relay died mid hand-off: resend it, hold it for an operator, or verify it from the MTA's log (needs `mail-outbox follow-log` on the same database) (default: resend)",
      ).choices(["resend", "hold", "verify"]),
    )
    .option("--verify-window <duration>", "policy verify: how long held mail waits for the MTA's record before it is left to an operator (default: 10m)")
    .option("--dsn-notify <list|never>", "delivery status notifications to ask for: any of success,failure,delay, or never (default: failure,delay)")
    .addOption(new Option("--dsn-ret <what>", "what a bounce returns: the headers or the full message (default: hdrs)").choices(["hdrs", "full"]))
    .option("--no-dsn", "ask the MTA nothing about delivery status notifications (no ENVID, NOTIFY, RET)")
    .option("--verp", "return path local+<token>@domain so bounces name their mail; needs the secret in MAIL_OUTBOX_BOUNCE_SECRET and recipient_delimiter = + in Postfix")
    .option("--metrics-port <port>", "serve /metrics (Prometheus), /healthz (liveness) and /readyz (readiness) on <port>, 0 for any free one (default: off)")
    .addOption(new Option("--metrics-host <host>", "address for --metrics-port; 0.0.0.0 in a container, so probes and scrapers reach it").default("127.0.0.1", "127.0.0.1"))
    .option("--gauge-interval <duration>", "how often the outbox gauges (mail per status, due, oldest due age, uncertain, held, dead) are refreshed, by one relay at a time; 0 for none (default: 15s)")
    .option("--retention <rules>", "purge old final mail in small batches, one relay at a time, e.g. sent=30d,cancelled=30d,dead=90d (default: keep everything)")
    .option("--retention-interval <duration>", "how often --retention runs a turn (default: 5m)")
    .addHelpText(
      "after",
      "\nEnvironment:\n  MAIL_OUTBOX_BOUNCE_SECRET  the bounce secret (at least 16 bytes; openssl rand -base64 32): the ENVID becomes a signed\n                             token and --verp puts it in the return path; ingest refuses reports without a valid one",
    )
    .action(fatalAsLogLine(cli, async (opts: Record<string, string | boolean | undefined>, cmd: Command, run: CommandRun) => {
      const transport = cli.transport(cmd);
      if (transport === undefined || transport.trim() === "") {
        throw new OptionsError("No transport: set MAIL_OUTBOX_TRANSPORT (or pass --transport), e.g. smtp://127.0.0.1:25 or sendmail:/usr/sbin/sendmail.");
      }
      const url = cli.databaseUrl(cmd);
      requireExistingDatabase(url);
      const stopDeadlineMs = parseDuration(String(opts.stopTimeout), "--stop-timeout");
      const tuning = {
        ...(opts.concurrency !== undefined ? { concurrency: parseCount(String(opts.concurrency), "--concurrency") } : {}),
        ...(opts.batchSize !== undefined ? { batchSize: parseCount(String(opts.batchSize), "--batch-size") } : {}),
        ...(opts.lease !== undefined ? { leaseMs: positiveDuration(String(opts.lease), "--lease") } : {}),
        ...(opts.poll !== undefined ? { pollIntervalMs: positiveDuration(String(opts.poll), "--poll") } : {}),
        ...(opts.relayId !== undefined ? { relayId: String(opts.relayId) } : {}),
        ...((opts.listenUrl ?? cli.env.MAIL_OUTBOX_LISTEN_URL) !== undefined ? { listenUrl: String(opts.listenUrl ?? cli.env.MAIL_OUTBOX_LISTEN_URL) } : {}),
        ...(opts.leaseExpiryPolicy !== undefined ? { leaseExpiryPolicy: opts.leaseExpiryPolicy as LeaseExpiryPolicy } : {}),
        ...(opts.verifyWindow !== undefined ? { verifyWindowMs: positiveDuration(String(opts.verifyWindow), "--verify-window") } : {}),
        ...(opts.gaugeInterval !== undefined ? { gaugeIntervalMs: String(opts.gaugeInterval).trim() === "0" ? 0 : parseDuration(String(opts.gaugeInterval), "--gauge-interval") } : {}),
        ...retentionFlags(opts),
        dsn: dsnOptions(opts, cli.env.MAIL_OUTBOX_BOUNCE_SECRET),
      };
      // An invalid MAIL_OUTBOX_LOG_LEVEL or MAIL_OUTBOX_LOG_FORMAT is refused before any work.
      const logger = createLogger({ env: cli.env, write: (line) => cli.err(line), isTTY: cli.stderrIsTTY });
      // Signal handlers from the first moment: Node as PID 1 (a container) has no default ones, so without
      // them SIGTERM would be ignored while the relay starts (see RelaySignals).
      const signals = new RelaySignals(cli, logger, stopDeadlineMs, run);
      run.atEnd.push(() => signals.close());
      // Fail fast with a clear message when the database is not there at start; once running, the relay rides out outages.
      await pingDatabase(url as string);
      // The relay is created after the port is open (its metrics go into the port's registry); probes before that see "starting".
      let probed: Relay | null = null;
      const starting = { status: "fail", checks: { relay: { ok: false, detail: "starting" } } } as const;
      const metrics =
        opts.metricsPort !== undefined
          ? await serveOperations({
              port: parsePort(String(opts.metricsPort)),
              host: String(opts.metricsHost),
              health: async () => (probed ? (await probed.health()).live : starting),
              ready: async () => (probed ? (await probed.health()).ready : starting),
            })
          : null;
      const relay: Relay = createRelay({ databaseUrl: url, transport, logger, stopDeadlineMs, ...tuning, ...(metrics ? { metricsRegistry: metrics.registry } : {}) });
      probed = relay;
      if (metrics) {
        void relay.stopped.then(() => metrics.close());
        logger.info({ metrics: `${metrics.url}/metrics`, endpoints: metrics.paths.map((p) => metrics.url + p) }, "serving metrics");
      }
      try {
        if (opts.once === true) {
          let counts: RelayCounts;
          try {
            if (!signals.running(relay)) return; // told to stop while starting: exited with 0 already
            counts = await relay.runOnce();
          } finally {
            await relay.stop({ deadlineMs: stopDeadlineMs });
          }
          if (cli.json(cmd)) cli.printJson(counts);
          else cli.out(`${formatCounts(counts)}\n`);
          return;
        }
        await relay.start();
        if (!signals.running(relay)) {
          // Told to stop while starting: the command has exited with 0 already; leave nothing running.
          await relay.stop({ deadlineMs: stopDeadlineMs });
          return;
        }
        const counts = await relay.stopped;
        if (cli.json(cmd)) cli.printJson(counts);
        else cli.out(`stopped: ${formatCounts(counts)}\n`);
      } finally {
        signals.close();
      }
    }));
}

/**
 * SIGINT and SIGTERM for `relay`, from the moment its logger exists to the end of the command. The
 * handlers are explicit, so the relay stops the same way as PID 1 (where Node gets no default
 * handlers and the kernel drops signals that have none). Before the relay runs (database ping,
 * table check), nothing is claimed: a signal ends the command at once with exit status 0. Once it
 * runs, the first signal stops it gracefully (no new claims; hand-offs in flight get the stop
 * deadline, then the transport is closed and its `sendmail` children killed); a second one exits at
 * once with 128 + the signal's number (130 for SIGINT, 143 for SIGTERM): mails being handed over
 * then keep their lease and are taken up again when it expires. What they do is logged as JSON lines.
 */
class RelaySignals {
  private signalled = 0;
  private relay: Relay | null = null;
  private stoppedEarly = false;
  private readonly onSigint = () => this.on("SIGINT");
  private readonly onSigterm = () => this.on("SIGTERM");

  constructor(
    private readonly cli: Cli,
    private readonly logger: Logger,
    private readonly stopDeadlineMs: number,
    private readonly run: CommandRun,
  ) {
    cli.signals.on("SIGINT", this.onSigint);
    cli.signals.on("SIGTERM", this.onSigterm);
  }

  /**
   * From now on the first signal stops `relay` gracefully. False when a signal came before: the
   * command has exited already (status 0) and must not run the relay.
   */
  running(relay: Relay): boolean {
    if (this.stoppedEarly) return false;
    this.relay = relay;
    return true;
  }

  close(): void {
    this.cli.signals.off("SIGINT", this.onSigint);
    this.cli.signals.off("SIGTERM", this.onSigterm);
  }

  private on(signal: "SIGINT" | "SIGTERM"): void {
    this.signalled += 1;
    const { logger, stopDeadlineMs } = this;
    if (this.relay === null) {
      if (this.stoppedEarly) return;
      this.stoppedEarly = true;
      this.run.exited = true;
      logger.info({ signal, exitCode: 0 }, "stopping before the relay started; nothing was claimed");
      this.cli.exitNow(0);
    } else if (this.signalled === 1) {
      logger.info({ signal, stopDeadlineMs }, `stopping; hand-offs in flight get ${formatMs(stopDeadlineMs)} (send the signal again to exit at once)`);
      void this.relay.stop({ deadlineMs: stopDeadlineMs }).catch(() => {});
    } else {
      const exitCode = forcedExitCode(signal);
      logger.warn({ signal, exitCode }, "exiting at once; mails being handed over are recovered when their leases expire");
      this.cli.exitNow(exitCode);
    }
  }
}

/** What {@link fatalAsLogLine} gives a command's action. */
export interface CommandRun {
  /** What to undo when the action ends, however it ends. */
  readonly atEnd: (() => void)[];
  /** The command has exited already (told to stop while starting): an error thrown after that is not reported. */
  exited: boolean;
}

/**
 * Run a long-running command's action so that, when its log is JSON lines (MAIL_OUTBOX_LOG_FORMAT
 * unset with stderr not a terminal, or `json`), an error that ends it is written once, as one JSON
 * line (level 60 "fatal", `err` with its type and message, `exitCode`), and nothing else goes to
 * stderr: a log collector never meets a plain-text line inside the JSON stream. The exit status is
 * the one `main` gives: 2 for a usage error, else 1. With readable logs (a terminal, or `pretty`),
 * or with log settings that are themselves invalid, the error goes to `main`, which prints it as
 * `mail-outbox: <message>`. The action gets a {@link CommandRun} as its last argument.
 */
export function fatalAsLogLine<A extends unknown[]>(
  cli: Cli,
  action: (...args: [...A, CommandRun]) => Promise<void>,
): (...args: A) => Promise<void> {
  return async (...args: A) => {
    const run: CommandRun = { atEnd: [], exited: false };
    try {
      await action(...args, run);
    } catch (e) {
      if (run.exited) return; // e.g. the database ping failing after a signal ended the command
      let json = false;
      try {
        json = logFormatFrom(cli.env, cli.stderrIsTTY) === "json";
      } catch {
        // MAIL_OUTBOX_LOG_FORMAT itself is invalid: that error is printed as plain text.
      }
      if (!json) throw e;
      let logger: Logger;
      try {
        logger = createLogger({ env: cli.env, write: (line) => cli.err(line), isTTY: cli.stderrIsTTY });
      } catch {
        throw e; // MAIL_OUTBOX_LOG_LEVEL is invalid: plain text
      }
      const exitCode = e instanceof OptionsError || e instanceof UnsafeOperationError ? EXIT_USAGE : EXIT_FAILURE;
      const debug = cli.env.MAIL_OUTBOX_DEBUG === "1";
      const err = e instanceof Error ? { type: e.name, message: errorMessage(e), ...codeOf(e), ...(debug && e.stack ? { stack: e.stack } : {}) } : { type: typeof e, message: String(e) };
      // Under MAIL_OUTBOX_LOG_LEVEL=silent nothing is written: the exit status still says it.
      // `err` as built here (type, message, code; the stack only with MAIL_OUTBOX_DEBUG=1), not through pino's error serializer.
      logger.child({}, { serializers: { err: (v: unknown) => v } }).fatal({ err, exitCode }, errorMessage(e));
      cli.setExitCode(exitCode);
    } finally {
      for (const undo of run.atEnd) undo();
    }
  };
}

function codeOf(e: Error): { code?: string } {
  const code = (e as { code?: unknown }).code;
  return typeof code === "string" ? { code } : {};
}

/**
 * The relay's `dsn` option from the flags: `--no-dsn` -> false; else NOTIFY (`--dsn-notify`), RET
 * (`--dsn-ret`), VERP (`--verp`) and the bounce secret from MAIL_OUTBOX_BOUNCE_SECRET (checked by
 * `createRelay`: at least 16 bytes; VERP needs it).
 */
export function dsnOptions(opts: Record<string, string | boolean | undefined>, secret: string | undefined): NonNullable<RelayOptions["dsn"]> {
  if (opts.dsn === false) {
    const given = (["dsnNotify", "dsnRet", "verp"] as const).filter((k) => opts[k] !== undefined);
    if (given.length > 0) throw new OptionsError(`--no-dsn asks the MTA nothing: leave out ${given.map((k) => `--${k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`).join(", ")}.`);
    return false;
  }
  return {
    ...(opts.dsnNotify !== undefined ? { notify: String(opts.dsnNotify).toUpperCase() === "NEVER" ? "NEVER" : (String(opts.dsnNotify).split(",").map((w) => w.trim().toUpperCase()) as ("SUCCESS" | "FAILURE" | "DELAY")[]) } : {}),
    ...(opts.dsnRet !== undefined ? { ret: String(opts.dsnRet).toUpperCase() as "HDRS" | "FULL" } : {}),
    ...(secret !== undefined && secret !== "" ? { secret } : {}),
    ...(opts.verp === true ? { verp: true } : {}),
  };
}

/** `--metrics-port`: 0 (any free port) to 65535. */
export function parsePort(value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value.trim()) || n > 65535) throw new OptionsError(`Expected --metrics-port to be a port number from 0 to 65535, got ${JSON.stringify(value)}.`);
  return n;
}

/** `--retention sent=30d,...` and `--retention-interval` as the relay's `retention` option. */
export function retentionFlags(opts: Record<string, string | boolean | undefined>): Pick<RelayOptions, "retention"> {
  if (opts.retention === undefined) {
    if (opts.retentionInterval !== undefined) throw new OptionsError("--retention-interval needs --retention (e.g. --retention sent=30d,dead=90d).");
    return {};
  }
  return {
    retention: {
      ...parseRetention(String(opts.retention)),
      ...(opts.retentionInterval !== undefined ? { intervalMs: positiveDuration(String(opts.retentionInterval), "--retention-interval") } : {}),
    },
  };
}
