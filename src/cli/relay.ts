/**
 * `mail-outbox relay`: the sidecar. Parses the tuning, DSN and lease-expiry options (the bounce
 * secret comes from MAIL_OUTBOX_BOUNCE_SECRET, never from a flag), runs `createRelay()` (../relay.ts)
 * until SIGTERM/SIGINT (a second signal exits at once with EXIT_FORCED), logs to stderr as JSON
 * lines (pino), optionally serves Prometheus metrics, and prints the final counts on stdout.
 */
import { createServer } from "node:http";
import { Option, type Command } from "commander";
import { pino } from "pino";
import { Registry, collectDefaultMetrics } from "prom-client";
import { pingDatabase } from "../admin.js";
import { parseDuration } from "../duration.js";
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
    .option("--metrics-port <port>", "serve Prometheus metrics on 127.0.0.1:<port>/metrics (default: off)")
    .addOption(new Option("--metrics-host <host>", "address for --metrics-port").default("127.0.0.1", "127.0.0.1"))
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
      // Fail fast with a clear message when the database is not there at start; once running, the relay rides out outages.
      await pingDatabase(url as string);
      const logger = pino({ name: "mail-outbox", level: cli.env.MAIL_OUTBOX_LOG_LEVEL ?? "info" }, { write: (line: string) => cli.err(line) });
      const metrics = opts.metricsPort !== undefined ? await serveMetrics(parseCount(String(opts.metricsPort), "--metrics-port"), String(opts.metricsHost)) : null;
      const relay: Relay = createRelay({ databaseUrl: url, transport, logger, stopDeadlineMs, ...tuning, ...(metrics ? { metricsRegistry: metrics.registry } : {}) });
      if (metrics) {
        void relay.stopped.then(() => metrics.close());
        logger.info({ metrics: metrics.url }, "serving metrics");
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

/** A Prometheus endpoint for the relay (prom-client's default Node.js metrics plus mail_outbox_*); `mail-outbox follow-log` serves one too. */
export async function serveMetrics(port: number, host: string): Promise<{ registry: Registry; url: string; close(): void }> {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  const server = createServer((req, res) => {
    if (req.url !== "/metrics") {
      res.writeHead(404).end("not found; try /metrics\n");
      return;
    }
    registry.metrics().then(
      (body) => res.writeHead(200, { "content-type": registry.contentType }).end(body),
      (e: unknown) => res.writeHead(500).end(String(e)),
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", (e) => reject(new OptionsError(`Cannot serve metrics on ${host}:${port}: ${(e as Error).message}`)));
    server.listen(port, host, resolve);
  });
  const address = server.address();
  const actualPort = typeof address === "object" && address ? address.port : port;
  return { registry, url: `http://${host}:${actualPort}/metrics`, close: () => server.close() };
}
