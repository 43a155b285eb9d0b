/**
 * `mail-outbox follow-log [path|-]`: the log follower sidecar. Reads Postfix's log (a file, with
 * its rotation; or `-` for stdin, fed by `journalctl -f`), records each outbox recipient's fate
 * with `followLog()` (../fate/follow-log.ts) until SIGTERM/SIGINT (a second signal exits at once
 * with 130 after SIGINT, 143 after SIGTERM), or to the end of the log with `--once`. An error that ends it is one
 * JSON log line when the log is JSON (`fatalAsLogLine`, ./relay.ts). Logs to stderr as JSON lines (pino),
 * optionally serves Prometheus metrics and /healthz (../http-server.ts), and prints its counts on stdout when it stops.
 */
import { execFileSync } from "node:child_process";
import type { Readable } from "node:stream";
import { Option, type Command } from "commander";
import { pingDatabase } from "../admin.js";
import { openDatabase } from "../db.js";
import { createLogger } from "../logger.js";
import { OptionsError } from "../errors.js";
import { followLog, type FollowLogCounts, type FollowLogOptions, type LogFollower } from "../fate/follow-log.js";
import { positiveDuration } from "./args.js";
import { forcedExitCode, requireExistingDatabase, type Cli } from "./context.js";
import { healthReport, serveOperations } from "../http-server.js";
import { fatalAsLogLine, parsePort, type CommandRun } from "./relay.js";

export function addFollowLogCommand(program: Command, cli: Cli): void {
  program
    .command("follow-log")
    .description("record what the MTA did with each recipient, from Postfix's log, until stopped (SIGTERM/SIGINT)")
    .argument("[path]", "Postfix's log file, or - for stdin (default: `postconf -h maillog_file`)")
    .option("--name <name>", "name of the stored position (default: the path, or stdin)")
    .option("--from-start", "read the file from its first byte instead of the stored position (events stored before are not stored again)")
    .option("--once", "read to the end of the log, record, print the counts and exit (cron, tests)")
    .option("--suppress", "put hard-bounced recipients on the suppression list")
    .option("--suppress-for <duration>", "with --suppress: how long an entry lasts, e.g. 180d (default: for good)")
    .option("--poll <duration>", "how often to look for new lines at the end of the file (default: 250ms)")
    .option("--metrics-port <port>", "serve /metrics (Prometheus) and /healthz (liveness) on <port>, 0 for any free one (default: off)")
    .addOption(new Option("--metrics-host <host>", "address for --metrics-port; 0.0.0.0 in a container, so probes and scrapers reach it").default("127.0.0.1", "127.0.0.1"))
    .action(fatalAsLogLine(cli, async (pathArg: string | undefined, opts: Record<string, string | boolean | undefined>, cmd: Command, _run: CommandRun) => {
      const url = cli.databaseUrl(cmd);
      requireExistingDatabase(url);
      const logPath = pathArg ?? defaultLogPath();
      const suppressForMs = opts.suppressFor !== undefined ? positiveDuration(String(opts.suppressFor), "--suppress-for") : null;
      if (suppressForMs !== null && opts.suppress !== true) throw new OptionsError("--suppress-for needs --suppress.");
      const pollIntervalMs = opts.poll !== undefined ? positiveDuration(String(opts.poll), "--poll") : undefined;
      const metricsPort = opts.metricsPort !== undefined ? parsePort(String(opts.metricsPort)) : null;
      if (logPath === "-" && opts.fromStart === true) throw new OptionsError("--from-start reads a file from its start; with - (stdin) feed the lines you want instead (journalctl --since ...).");

      const logger = createLogger({ env: cli.env, write: (line) => cli.err(line), isTTY: cli.stderrIsTTY });
      // Fail fast with a clear message when the database is not there at start; once running, the follower rides out outages.
      await pingDatabase(url as string);
      // Liveness: the follower's loop turned recently (it rides out database outages and rotations itself,
      // turning at least once a second while it waits); not once it has stopped or when a turn hangs.
      let state: "starting" | "running" | "stopped" = "starting";
      let live: LogFollower | null = null;
      const metrics =
        metricsPort !== null
          ? await serveOperations({
              port: metricsPort,
              host: String(opts.metricsHost),
              health: async () => healthReport({ follower: live !== null && state !== "stopped" ? live.liveness() : { ok: state !== "stopped", detail: state } }),
            })
          : null;
      // SQLite: a short busy timeout, so a held write lock goes through the follower's async back-off.
      const store = await openDatabase(url, { applicationName: "mail-outbox follow-log", busyTimeoutMs: 100 });
      const options: FollowLogOptions = {
        store,
        // `cli.stdin` where the lead's CliIO carries one (tests), else this process's stdin.
        ...(logPath === "-" ? { stream: (cli as Cli & { stdin?: Readable }).stdin ?? process.stdin } : { path: logPath }),
        ...(opts.name !== undefined ? { name: String(opts.name) } : {}),
        fromStart: opts.fromStart === true,
        once: opts.once === true,
        suppress: opts.suppress === true ? (suppressForMs !== null ? { forMs: suppressForMs } : { expiresAt: null }) : null,
        logger,
        ...(pollIntervalMs !== undefined ? { pollIntervalMs } : {}),
        ...(metrics ? { metricsRegistry: metrics.registry } : {}),
      };
      let signalled = 0;
      let follower: LogFollower;
      try {
        follower = followLog(options);
      } catch (e) {
        await metrics?.close();
        await store.close();
        throw e;
      }
      state = "running";
      live = follower;
      void follower.stopped.then(
        () => (state = "stopped"),
        () => (state = "stopped"),
      );
      if (metrics) logger.info({ metrics: `${metrics.url}/metrics`, endpoints: metrics.paths.map((p) => metrics.url + p) }, "serving metrics");
      const onSignal = (signal: "SIGINT" | "SIGTERM") => {
        signalled += 1;
        if (signalled === 1) {
          logger.info({ signal }, "stopping: recording the lines read so far (send the signal again to exit at once)");
          void follower.stop();
        } else {
          const exitCode = forcedExitCode(signal);
          logger.warn({ signal, exitCode }, "exiting at once; the next run resumes at the last recorded position");
          cli.exitNow(exitCode);
        }
      };
      const onSigint = () => onSignal("SIGINT");
      const onSigterm = () => onSignal("SIGTERM");
      cli.signals.on("SIGINT", onSigint);
      cli.signals.on("SIGTERM", onSigterm);
      let counts: FollowLogCounts;
      try {
        counts = await follower.stopped;
      } finally {
        cli.signals.off("SIGINT", onSigint);
        cli.signals.off("SIGTERM", onSigterm);
        await metrics?.close();
        await store.close();
      }
      if (cli.json(cmd)) cli.printJson(counts);
      else cli.out(`${opts.once === true ? "" : "stopped: "}${formatFollowCounts(counts)}\n`);
    }));
}

/** `lines 120, recorded 14, already recorded 0, other mail 30, rotations 0`. */
export function formatFollowCounts(c: FollowLogCounts): string {
  return `lines ${c.lines}, recorded ${c.recorded}, already recorded ${c.duplicates}, other mail ${c.foreign}, rotations ${c.rotations}`;
}

/** Postfix's own log file (`maillog_file`), when Postfix is installed and logs to one. */
function defaultLogPath(): string {
  let configured = "";
  for (const postconf of ["postconf", "/usr/sbin/postconf"]) {
    try {
      configured = execFileSync(postconf, ["-h", "maillog_file"], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"], timeout: 10_000 }).trim();
      break;
    } catch {
      // Not there (or not on PATH): try the next, then say what to pass.
    }
  }
  if (configured !== "") return configured;
  throw new OptionsError(
    "No log to follow: pass the path of Postfix's log (postconf -h maillog_file is empty or postconf is not installed; with syslog it is usually /var/log/mail.log), " +
      "or - to read stdin, e.g. journalctl -f -u 'postfix*' -o short-iso | mail-outbox follow-log -",
  );
}
