/**
 * `mail-outbox relay`: the sidecar. Parses the tuning options, runs `createRelay()` (../relay.ts)
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
import { createRelay, type Relay, type RelayCounts } from "../relay.js";
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
    .addOption(new Option("--lease-expiry-policy <policy>", "what to do with a mail whose relay died mid hand-off (default: resend)").choices(["resend", "hold"]))
    .option("--metrics-port <port>", "serve Prometheus metrics on 127.0.0.1:<port>/metrics (default: off)")
    .addOption(new Option("--metrics-host <host>", "address for --metrics-port").default("127.0.0.1", "127.0.0.1"))
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
        ...(opts.leaseExpiryPolicy !== undefined ? { leaseExpiryPolicy: opts.leaseExpiryPolicy as "resend" | "hold" } : {}),
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

/** A Prometheus endpoint for the relay (prom-client's default Node.js metrics plus mail_outbox_*). */
async function serveMetrics(port: number, host: string): Promise<{ registry: Registry; url: string; close(): void }> {
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
