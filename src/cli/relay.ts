/**
 * `mail-outbox relay`: the sidecar. Parses the tuning, DSN and lease-expiry options (the bounce
 * secret comes from MAIL_OUTBOX_BOUNCE_SECRET, never from a flag), runs `createRelay()` (../relay.ts)
 * until SIGTERM/SIGINT (a second signal exits at once with EXIT_FORCED), logs to stderr as JSON
 * lines (pino), optionally serves Prometheus metrics, /healthz and /readyz (../http-server.ts), and
 * prints the final counts on stdout.
 */
import { Option, type Command } from "commander";
import { pingDatabase } from "../admin.js";
import { parseDuration } from "../duration.js";
import { serveOperations } from "../http-server.js";
import { createLogger } from "../logger.js";
import { OptionsError } from "../errors.js";
import { createRelay, type Relay, type RelayCounts, type RelayOptions } from "../relay.js";
import type { LeaseExpiryPolicy } from "../store.js";
import { parseCount, positiveDuration } from "./args.js";
import { EXIT_FORCED, requireExistingDatabase, type Cli } from "./context.js";
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
    .addHelpText(
      "after",
      "\nEnvironment:\n  MAIL_OUTBOX_BOUNCE_SECRET  the bounce secret (at least 16 bytes; openssl rand -base64 32): the ENVID becomes a signed\n                             token and --verp puts it in the return path; ingest refuses reports without a valid one",
    )
    .action(async (opts: Record<string, string | boolean | undefined>, cmd: Command) => {
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
        ...(opts.leaseExpiryPolicy !== undefined ? { leaseExpiryPolicy: opts.leaseExpiryPolicy as LeaseExpiryPolicy } : {}),
        ...(opts.verifyWindow !== undefined ? { verifyWindowMs: positiveDuration(String(opts.verifyWindow), "--verify-window") } : {}),
        dsn: dsnOptions(opts, cli.env.MAIL_OUTBOX_BOUNCE_SECRET),
      };
      // An invalid MAIL_OUTBOX_LOG_LEVEL or MAIL_OUTBOX_LOG_FORMAT is refused before any work.
      const logger = createLogger({ env: cli.env, write: (line) => cli.err(line), isTTY: cli.stderrIsTTY });
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
      let signalled = 0;
      // stderr carries the relay's JSON log: what the signals do is logged there as JSON lines too.
      const onSignal = (signal: "SIGINT" | "SIGTERM") => {
        signalled += 1;
        if (signalled === 1) {
          logger.info({ signal, stopDeadlineMs }, `stopping; hand-offs in flight get ${formatMs(stopDeadlineMs)} (send the signal again to exit at once)`);
          void relay.stop({ deadlineMs: stopDeadlineMs }).catch(() => {});
        } else {
          logger.warn({ signal, exitCode: EXIT_FORCED }, "exiting at once; mails being handed over are recovered when their leases expire");
          cli.exitNow(EXIT_FORCED);
        }
      };
      const onSigint = () => onSignal("SIGINT");
      const onSigterm = () => onSignal("SIGTERM");
      cli.signals.on("SIGINT", onSigint);
      cli.signals.on("SIGTERM", onSigterm);
      try {
        if (opts.once === true) {
          let counts: RelayCounts;
          try {
            counts = await relay.runOnce();
          } finally {
            await relay.stop({ deadlineMs: stopDeadlineMs });
          }
          if (cli.json(cmd)) cli.printJson(counts);
          else cli.out(`${formatCounts(counts)}\n`);
          return;
        }
        await relay.start();
        const counts = await relay.stopped;
        if (cli.json(cmd)) cli.printJson(counts);
        else cli.out(`stopped: ${formatCounts(counts)}\n`);
      } finally {
        cli.signals.off("SIGINT", onSigint);
        cli.signals.off("SIGTERM", onSigterm);
      }
    });
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
