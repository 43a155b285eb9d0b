#!/usr/bin/env node
/**
 * `mail-outbox`: the relay sidecar and the operator's tool. A thin shell: every command parses
 * its arguments, calls one exported function (admin.ts, relay.ts, migrate.ts, init.ts, doctor.ts) and
 * prints the result as text or, with --json, as JSON.
 *
 * Exit status: 0 success (also for a request satisfied already, such as cancelling a cancelled
 * mail), 1 failure (including "some rows could not be changed" and a failed doctor check), 2 usage
 * error (unknown option or status, malformed duration, date or id, a refused unsafe operation:
 * `--all` or a replay of sent mail without `--yes`). Errors go to stderr as `mail-outbox: <message>`,
 * without stack unless MAIL_OUTBOX_DEBUG=1. Passwords in URLs are never printed; a SQLite URL is
 * printed as given (`file:./dev.db`). `relay` logs to stderr as JSON lines only (pino), its signal
 * notices included, and prints its final counts on stdout. Every command's `--help` lists the
 * global options.
 */
import { existsSync, readFileSync, realpathSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { Command, CommanderError, Option } from "commander";
import { pino } from "pino";
import {
  cancelMails,
  getStatus,
  listMails,
  pingDatabase,
  purgeMails,
  replayMails,
  showMail,
  type MailDetail,
  type MailRecord,
  type StatusReport,
  errorMessage,
} from "./admin.js";
import { openDatabase, parseDatabaseUrl, redactUrl, type Db } from "./db.js";
import { parseDuration, parseSince } from "./duration.js";
import { DatabaseConfigError, MailOutboxError, OptionsError, UnsafeOperationError } from "./errors.js";
import { initSchema } from "./init.js";
import { doctor } from "./doctor.js";
import { migrate } from "./migrate.js";
import { createRelay, type Relay, type RelayCounts } from "./relay.js";
import { createServer } from "node:http";
import { Registry, collectDefaultMetrics } from "prom-client";
import { STATUSES, type OutboxStatus } from "./states.js";

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
  /** DATABASE_URL, MAIL_OUTBOX_TRANSPORT, MAIL_OUTBOX_DEBUG, MAIL_OUTBOX_LOG_LEVEL. @default process.env */
  readonly env?: Readonly<Record<string, string | undefined>>;
  /** @default process */
  readonly signals?: SignalSource;
}

/** Exit status of a usage error. */
export const EXIT_USAGE = 2;
/** Exit status when `relay` is told to stop a second time and leaves at once. */
export const EXIT_FORCED = 130;

interface GlobalOpts {
  databaseUrl?: string;
  transport?: string;
  json?: boolean;
}

/**
 * Run the CLI with `argv` (the arguments after the program name) and return the exit status.
 * Never calls `process.exit`; the entry point at the bottom of this file does.
 *
 * @example
 * const code = await main(["status", "--json"], { stdout: process.stdout, stderr: process.stderr, env: process.env });
 */
export async function main(argv: readonly string[], io: CliIO = { stdout: process.stdout, stderr: process.stderr, env: process.env }): Promise<number> {
  const env = io.env ?? process.env;
  const secrets = collectSecrets([...argv, env.DATABASE_URL, env.MAIL_OUTBOX_TRANSPORT]);
  const scrub = (text: string) => scrubSecrets(text, secrets);
  const out = (text: string) => void io.stdout.write(scrub(text));
  const err = (text: string) => void io.stderr.write(scrub(text));
  const debug = env.MAIL_OUTBOX_DEBUG === "1";
  let exitCode = 0;
  let forced: ((code: number) => void) | undefined;
  const forcedExit = new Promise<number>((resolve) => (forced = resolve));

  const program = new Command("mail-outbox")
    .description("Transactional email outbox for Prisma: run the relay, inspect and replay mail.")
    .version(packageVersion(), "-V, --version")
    .exitOverride()
    .configureOutput({
      writeOut: (s) => out(s),
      writeErr: (s) => err(s),
      outputError: (s, write) => write(`mail-outbox: ${s.replace(/^error: /, "")}`),
    })
    .showHelpAfterError("(mail-outbox help <command> shows its usage)")
    // Every command's help also lists --database-url, --transport and --json (inherited by the subcommands added below).
    .configureHelp({ showGlobalOptions: true })
    .option("--database-url <url>", "file:./outbox.db or postgresql://user@host/db (default: env DATABASE_URL)")
    .option("--transport <spec>", "smtp://host:port, sendmail:/usr/sbin/sendmail, sendmail-bs:... (default: env MAIL_OUTBOX_TRANSPORT)")
    .option("--json", "print JSON instead of text");

  const globals = (cmd: Command): GlobalOpts => cmd.optsWithGlobals() as GlobalOpts;
  const json = (cmd: Command) => globals(cmd).json === true;
  const printJson = (value: unknown) => out(`${JSON.stringify(value, jsonReplacer, 2)}\n`);
  const databaseUrl = (cmd: Command) => globals(cmd).databaseUrl ?? env.DATABASE_URL;
  /** Open the database; for SQLite, refuse a file that does not exist (opening would create an empty one). */
  const openDb = async (cmd: Command, { create = false } = {}): Promise<Db> => {
    const url = databaseUrl(cmd);
    const location = parseDatabaseUrl(url);
    if (location.dialect === "sqlite" && !create && !existsSync(location.filename)) {
      throw new DatabaseConfigError(
        `The SQLite database ${location.filename} does not exist. Check DATABASE_URL (or --database-url), or create the tables with \`mail-outbox migrate\`.`,
      );
    }
    return openDatabase(url);
  };
  const withDb = async <T>(cmd: Command, fn: (db: Db) => Promise<T>, options?: { create?: boolean }): Promise<T> => {
    const db = await openDb(cmd, options);
    try {
      return await fn(db);
    } finally {
      await db.close();
    }
  };

  // ---- relay ------------------------------------------------------------------------------
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
      const g = globals(cmd);
      const transport = g.transport ?? env.MAIL_OUTBOX_TRANSPORT;
      if (transport === undefined || transport.trim() === "") {
        throw new OptionsError("No transport: set MAIL_OUTBOX_TRANSPORT (or pass --transport), e.g. smtp://127.0.0.1:25 or sendmail:/usr/sbin/sendmail.");
      }
      const url = databaseUrl(cmd);
      const location = parseDatabaseUrl(url);
      if (location.dialect === "sqlite" && !existsSync(location.filename)) {
        throw new DatabaseConfigError(`The SQLite database ${location.filename} does not exist. Check DATABASE_URL (or --database-url), or create the tables with \`mail-outbox migrate\`.`);
      }
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
      const logger = pino(
        { name: "mail-outbox", level: env.MAIL_OUTBOX_LOG_LEVEL ?? "info" },
        { write: (line: string) => err(line) },
      );
      const metrics = opts.metricsPort !== undefined ? await serveMetrics(parseCount(String(opts.metricsPort), "--metrics-port"), String(opts.metricsHost)) : null;
      const relay: Relay = createRelay({ databaseUrl: url, transport, logger, stopDeadlineMs, ...tuning, ...(metrics ? { metricsRegistry: metrics.registry } : {}) });
      if (metrics) {
        void relay.stopped.then(() => metrics.close());
        logger.info({ metrics: metrics.url }, "serving metrics");
      }
      const signals = io.signals ?? process;
      let signalled = 0;
      // stderr carries the relay's JSON log: what the signals do is logged there as JSON lines too.
      const onSignal = (signal: "SIGINT" | "SIGTERM") => {
        signalled += 1;
        if (signalled === 1) {
          logger.info({ signal, stopDeadlineMs }, `stopping; hand-offs in flight get ${formatMs(stopDeadlineMs)} (send the signal again to exit at once)`);
          void relay.stop({ deadlineMs: stopDeadlineMs }).catch(() => {});
        } else {
          logger.warn({ signal, exitCode: EXIT_FORCED }, "exiting at once; mails being handed over are recovered when their leases expire");
          forced?.(EXIT_FORCED);
        }
      };
      const onSigint = () => onSignal("SIGINT");
      const onSigterm = () => onSignal("SIGTERM");
      signals.on("SIGINT", onSigint);
      signals.on("SIGTERM", onSigterm);
      try {
        if (opts.once === true) {
          let counts: RelayCounts;
          try {
            counts = await relay.runOnce();
          } finally {
            await relay.stop({ deadlineMs: stopDeadlineMs });
          }
          if (json(cmd)) printJson(counts);
          else out(`${formatCounts(counts)}\n`);
          return;
        }
        await relay.start();
        const counts = await relay.stopped;
        if (json(cmd)) printJson(counts);
        else out(`stopped: ${formatCounts(counts)}\n`);
      } finally {
        signals.off("SIGINT", onSigint);
        signals.off("SIGTERM", onSigterm);
      }
    });

  // ---- status -----------------------------------------------------------------------------
  program
    .command("status")
    .description("counts per status, uncertain hand-offs, queue lag, next attempt, expired leases")
    .action(async (_opts: unknown, cmd: Command) => {
      const report = await withDb(cmd, (db) => getStatus(db));
      if (json(cmd)) printJson(report);
      else out(formatStatus(report));
    });

  // ---- list -------------------------------------------------------------------------------
  program
    .command("list")
    .description("mails, newest first")
    .option("--status <statuses>", `only these statuses, comma-separated (${STATUSES.join(", ")})`)
    .option("--to <address>", "only mails to this recipient (case-insensitive)")
    .option("--recipient <address>", "same as --to")
    .option("--since <time>", 'created at or after: a duration back ("2h", "7d") or an ISO date/time')
    .option("--until <time>", "created before: a duration back or an ISO date/time")
    .addOption(new Option("--limit <n>", "at most this many rows (1 to 10000)").default("50", "50"))
    .option("--uncertain", "only mails whose hand-off is uncertain (a relay died while handing them over)")
    .action(async (opts: Record<string, string | boolean | undefined>, cmd: Command) => {
      const now = new Date();
      const limit = parseCount(String(opts.limit), "--limit");
      const recipient = (opts.to ?? opts.recipient) as string | undefined;
      const mails = await withDb(cmd, (db) =>
        listMails(db, {
          ...(opts.status !== undefined ? { status: parseStatusList(String(opts.status)) } : {}),
          ...(recipient !== undefined ? { recipient } : {}),
          ...(opts.since !== undefined ? { since: parseSince(String(opts.since), now, "--since") } : {}),
          ...(opts.until !== undefined ? { until: parseSince(String(opts.until), now, "--until") } : {}),
          uncertain: opts.uncertain === true,
          limit,
        }),
      );
      if (json(cmd)) printJson(mails);
      else out(formatList(mails, limit));
    });

  // ---- show -------------------------------------------------------------------------------
  program
    .command("show")
    .description("one mail with its attempts timeline")
    .argument("<id>", "mail id (UUID) or Message-ID")
    .option("--raw", "write the raw message bytes to stdout (with --json: as base64 in the JSON)")
    .action(async (ref: string, opts: { raw?: boolean }, cmd: Command) => {
      const mail = await withDb(cmd, (db) => showMail(db, ref, { raw: opts.raw === true }));
      if (json(cmd)) printJson(mail.raw === undefined ? mail : { ...mail, raw: mail.raw.toString("base64") });
      else if (opts.raw === true && mail.raw !== undefined) io.stdout.write(mail.raw);
      else out(formatShow(mail));
    });

  // ---- replay -----------------------------------------------------------------------------
  program
    .command("replay")
    .description("send mails again (dead, held, cancelled or sent -> pending); keeps the Message-ID, resets attempts; sent mail needs --yes")
    .argument("[ids...]", "mail ids or Message-IDs")
    .option("--status <statuses>", "only these statuses, comma-separated (dead, held, cancelled, sent); default: dead,held")
    .option("--since <time>", "created at or after: a duration back or an ISO date/time")
    .option("--until <time>", "created before: a duration back or an ISO date/time")
    .option("--to <address>", "only mails to this recipient")
    .option("--uncertain", "only mails whose hand-off is uncertain")
    .option("--all", "allow a selection with no filter (every dead and held mail); needs --yes")
    .option("--yes", "confirm --all, or a replay of sent mail (the MTA has it already: it is delivered again)")
    .option("--dry-run", "print what would be replayed, change nothing")
    .action(async (ids: string[], opts: Record<string, string | boolean | undefined>, cmd: Command) => {
      const now = new Date();
      const dryRun = opts.dryRun === true;
      if (opts.all === true && opts.yes !== true && !dryRun) {
        throw new UnsafeOperationError("--all replays every dead and held mail: add --yes to confirm (see it first with --dry-run).");
      }
      const result = await withDb(cmd, (db) =>
        replayMails(db, {
          ids,
          ...(opts.status !== undefined ? { status: parseStatusList(String(opts.status)) } : {}),
          ...(opts.since !== undefined ? { since: parseSince(String(opts.since), now, "--since") } : {}),
          ...(opts.until !== undefined ? { until: parseSince(String(opts.until), now, "--until") } : {}),
          ...(opts.to !== undefined ? { recipient: String(opts.to) } : {}),
          uncertain: opts.uncertain === true,
          all: opts.all === true,
          resendSent: opts.yes === true,
          dryRun,
          actor: `cli:${env.USER ?? "operator"}`,
          now,
        }),
      );
      if (json(cmd)) printJson(result);
      else {
        const verb = dryRun ? "would replay" : "replayed";
        out(`${verb} ${plural(result.replayed.length, "mail")}${dryRun ? " (dry run: nothing changed)" : ""}\n`);
        const sent = result.replayed.filter((m) => m.from === "sent").length;
        if (dryRun && sent > 0 && opts.yes !== true) out(`${plural(sent, "of them was", "of them were")} sent already: the replay delivers ${sent === 1 ? "it" : "them"} again and needs --yes\n`);
        out(capped(result.replayed, (m) => `  ${m.id}  ${m.messageId}  was ${m.from}`));
        out(capped(result.skipped, (s) => `  skipped ${s.id}  ${s.messageId}  ${s.status}: ${s.reason}`));
        out(capped(result.notFound, (n) => `  not found: ${n}`));
      }
      if (result.skipped.length > 0 || result.notFound.length > 0) exitCode = 1;
    });

  // ---- cancel -----------------------------------------------------------------------------
  program
    .command("cancel")
    .description("cancel mails not handed over yet (pending or held -> cancelled); a mail cancelled already is not an error")
    .argument("<ids...>", "mail ids or Message-IDs")
    .option("--dry-run", "print what would be cancelled, change nothing")
    .action(async (ids: string[], opts: { dryRun?: boolean }, cmd: Command) => {
      const dryRun = opts.dryRun === true;
      const result = await withDb(cmd, (db) => cancelMails(db, { ids, dryRun, actor: `cli:${env.USER ?? "operator"}` }));
      if (json(cmd)) printJson(result);
      else {
        const already = result.alreadyCancelled.length > 0 ? `, ${result.alreadyCancelled.length} cancelled already` : "";
        out(`${dryRun ? "would cancel" : "cancelled"} ${plural(result.cancelled.length, "mail")}${already}${dryRun ? " (dry run: nothing changed)" : ""}\n`);
        out(capped(result.cancelled, (m) => `  ${m.id}  ${m.messageId}  was ${m.from}`));
        out(capped(result.alreadyCancelled, (m) => `  ${m.id}  ${m.messageId}  cancelled already: nothing to do`));
        out(capped(result.notCancellable, (s) => `  not cancelled ${s.id}  ${s.messageId}  ${s.status}: ${s.reason}`));
        out(capped(result.notFound, (n) => `  not found: ${n}`));
      }
      if (result.notCancellable.length > 0 || result.notFound.length > 0) exitCode = 1;
    });

  // ---- purge ------------------------------------------------------------------------------
  program
    .command("purge")
    .description("delete old sent, dead or cancelled mails and their attempt logs")
    .option("--status <statuses>", "sent, dead and/or cancelled, comma-separated")
    .option("--older-than <duration>", 'last changed longer ago than this, e.g. "30d"')
    .option("--all", "without --status: sent, dead and cancelled; without --older-than: any age; needs --yes")
    .option("--yes", "confirm --all")
    .option("--dry-run", "print how many would be deleted, change nothing")
    .addOption(new Option("--batch-size <n>", "rows per delete statement").default("5000", "5000"))
    .action(async (opts: Record<string, string | boolean | undefined>, cmd: Command) => {
      const dryRun = opts.dryRun === true;
      if (opts.all === true && opts.yes !== true && !dryRun) {
        throw new UnsafeOperationError("--all deletes mails regardless of status or age: add --yes to confirm (count them first with --dry-run).");
      }
      const status = opts.status !== undefined ? parseStatusList(String(opts.status)) : undefined;
      const olderThanMs = opts.olderThan !== undefined ? parseDuration(String(opts.olderThan), "--older-than") : undefined;
      const batchSize = parseCount(String(opts.batchSize), "--batch-size");
      const result = await withDb(cmd, (db) =>
        purgeMails(db, {
          ...(status !== undefined ? { status: status as ("sent" | "dead" | "cancelled")[] } : {}),
          ...(olderThanMs !== undefined ? { olderThanMs } : {}),
          all: opts.all === true,
          dryRun,
          batchSize,
        }),
      );
      if (json(cmd)) printJson(result);
      else {
        const parts = Object.entries(result.byStatus).map(([s, n]) => `${s} ${n}`).join(", ");
        const when = result.cutoff === null ? "of any age" : `last changed before ${iso(result.cutoff)}`;
        out(`${dryRun ? "would delete" : "deleted"} ${plural(result.deleted, "mail")} (${parts}) ${when}${dryRun ? " (dry run: nothing changed)" : ""}\n`);
      }
    });

  // ---- init -------------------------------------------------------------------------------
  program
    .command("init")
    .description("add the outbox models to your Prisma schema; prints the next steps and a prisma.config.ts for `mail-outbox migrate`")
    .addOption(new Option("--schema <path>", "your schema.prisma (or multi-file schema folder)").default("prisma/schema.prisma", "prisma/schema.prisma"))
    .addOption(new Option("--provider <provider>", "database of the schema (default: from its datasource)").choices(["postgresql", "sqlite"]))
    .action(async (opts: { schema: string; provider?: "postgresql" | "sqlite" }, cmd: Command) => {
      // The PostgreSQL schema of DATABASE_URL (?schema=) qualifies the table names in the printed prisma.config.ts.
      const url = databaseUrl(cmd);
      const location = url !== undefined && /^postgres(ql)?:\/\//.test(url) ? parseDatabaseUrl(url) : undefined;
      const result = await initSchema({
        schemaPath: opts.schema,
        ...(opts.provider !== undefined ? { provider: opts.provider } : {}),
        ...(location?.dialect === "postgresql" ? { postgresSchema: location.schema } : {}),
      });
      if (json(cmd)) printJson(result);
      else out(`${result.message}\n\n${result.nextSteps}\n`);
    });

  // ---- migrate ----------------------------------------------------------------------------
  program
    .command("migrate")
    .description("create or update the outbox tables (for tables Prisma Migrate does not manage)")
    .option("--dry-run", "print what would be done, change nothing")
    .action(async (opts: { dryRun?: boolean }, cmd: Command) => {
      const asJson = json(cmd);
      const result = await withDb(cmd, (db) => migrate(db, { dryRun: opts.dryRun === true, log: asJson ? () => {} : (line) => out(`${line}\n`) }), { create: opts.dryRun !== true });
      if (asJson) printJson(result);
    });

  // ---- doctor -----------------------------------------------------------------------------
  program
    .command("doctor")
    .description("check the database, the tables, the transport and a local Postfix's size limits; exits 1 if any check fails (warnings exit 0)")
    .option("--timeout <duration>", "how long to wait for the transport", "10s")
    .option("--max-message-bytes <n>", "the maxMessageBytes your mailOutbox() uses, compared with Postfix's message_size_limit (default 10000000)")
    .option("--max-header-bytes <n>", "the maxHeaderBytes your mailOutbox() uses, compared with Postfix's header_size_limit (default 100000)")
    .option("--postconf <path>", "Postfix's postconf, to read its limits (default: postconf in PATH, /usr/sbin or /usr/local/sbin)")
    .action(async (opts: { timeout: string; maxMessageBytes?: string; maxHeaderBytes?: string; postconf?: string }, cmd: Command) => {
      const report = await doctor({
        databaseUrl: databaseUrl(cmd),
        transport: globals(cmd).transport ?? env.MAIL_OUTBOX_TRANSPORT,
        timeoutMs: positiveDuration(opts.timeout, "--timeout"),
        ...(opts.maxMessageBytes !== undefined ? { maxMessageBytes: parseCount(opts.maxMessageBytes, "--max-message-bytes") } : {}),
        ...(opts.maxHeaderBytes !== undefined ? { maxHeaderBytes: parseCount(opts.maxHeaderBytes, "--max-header-bytes") } : {}),
        ...(opts.postconf !== undefined ? { postconfPath: opts.postconf } : {}),
      });
      if (json(cmd)) printJson(report);
      else {
        const width = Math.max(...report.checks.map((c) => c.name.length));
        const label = { ok: "ok  ", warn: "WARN", fail: "FAIL" } as const;
        for (const c of report.checks) {
          out(`${label[c.status]}  ${c.name.padEnd(width)}  ${c.message}\n`);
          if (c.status !== "ok" && c.fix !== null) out(`${" ".repeat(width + 8)}fix: ${c.fix}\n`);
        }
      }
      if (!report.ok) exitCode = 1;
    });

  try {
    const run = program.parseAsync([...argv], { from: "user" }).then(() => exitCode);
    return await Promise.race([run, forcedExit]);
  } catch (e) {
    if (e instanceof CommanderError) return e.exitCode === 0 ? 0 : EXIT_USAGE;
    const usage = e instanceof OptionsError || e instanceof UnsafeOperationError;
    err(`mail-outbox: ${errorMessage(e)}\n`);
    if (debug && e instanceof Error && e.stack) err(`${e.stack}\n`);
    else if (!(e instanceof MailOutboxError) && !usage) err("mail-outbox: (set MAIL_OUTBOX_DEBUG=1 for details)\n");
    return usage ? EXIT_USAGE : 1;
  }
}

// ---- argument parsing ---------------------------------------------------------------------

function parseCount(text: string, what: string): number {
  if (!/^[0-9]{1,9}$/.test(text) || Number(text) < 1) {
    throw new OptionsError(`${what} expects a whole number of at least 1, got ${JSON.stringify(text)}.`);
  }
  return Number(text);
}

function positiveDuration(text: string, what: string): number {
  const ms = parseDuration(text, what);
  if (ms === 0) throw new OptionsError(`${what} must be longer than 0, got ${JSON.stringify(text)}.`);
  return ms;
}

function parseStatusList(text: string): OutboxStatus[] {
  const parts = text.split(",").map((s) => s.trim()).filter((s) => s !== "");
  if (parts.length === 0) throw new OptionsError(`--status expects one or more of ${STATUSES.join(", ")}, comma-separated.`);
  for (const p of parts) {
    if (!(STATUSES as readonly string[]).includes(p)) {
      throw new OptionsError(`Unknown status ${JSON.stringify(p)}: use one of ${STATUSES.join(", ")}.`);
    }
  }
  return parts as OutboxStatus[];
}

// ---- secrets ------------------------------------------------------------------------------

/** Passwords found in URLs among `values` (as written and URL-decoded), longest first. */
function collectSecrets(values: readonly (string | undefined)[]): string[] {
  const found = new Set<string>();
  for (const v of values) {
    if (typeof v !== "string") continue;
    for (const m of v.matchAll(/:\/\/[^:/@\s]*:([^@\s]+)@/g)) {
      const p = m[1];
      if (p === undefined || p === "" || p === "***") continue;
      found.add(p);
      try {
        found.add(decodeURIComponent(p));
      } catch {
        // not percent-encoded
      }
    }
    for (const m of v.matchAll(/[?&][^=&\s]*(?:pass|secret|token)[^=&\s]*=([^&\s]+)/gi)) {
      if (m[1] !== undefined && m[1] !== "***") found.add(m[1]);
    }
  }
  return [...found].filter((s) => s.length >= 3).sort((a, b) => b.length - a.length);
}

function scrubSecrets(text: string, secrets: readonly string[]): string {
  // URLs with a password or a secret-looking parameter are redacted; other URLs are left as written.
  let s = text.replace(/\b[a-z][a-z0-9+.-]*:\/\/[^\s"'<>]+/gi, (url) =>
    /:\/\/[^/\s@]*:[^@\s]*@|[?&][^=&]*(pass|secret|token)/i.test(url) ? redactUrl(url) : url,
  );
  for (const secret of secrets) s = s.split(secret).join("***");
  return s;
}

// ---- formatting ---------------------------------------------------------------------------

function jsonReplacer(this: unknown, _key: string, value: unknown): unknown {
  if (typeof value === "bigint") return Number(value);
  return value;
}

function iso(d: Date | null): string {
  return d === null ? "-" : d.toISOString();
}

/** ISO UTC to the second, for tables. */
function isoShort(d: Date | null): string {
  return d === null ? "-" : d.toISOString().replace(/\.\d{3}Z$/, "Z");
}

function plural(n: number, word: string, many = `${word}s`): string {
  return `${n} ${n === 1 ? word : many}`;
}

function formatMs(ms: number): string {
  if (ms < 1000) return `${ms}ms`;
  const parts: string[] = [];
  let rest = Math.round(ms / 1000);
  for (const [unit, size] of [["d", 86_400], ["h", 3_600], ["m", 60], ["s", 1]] as const) {
    if (rest >= size) {
      parts.push(`${Math.floor(rest / size)}${unit}`);
      rest %= size;
    }
  }
  return parts.slice(0, 2).join("");
}

function formatCounts(c: RelayCounts): string {
  return `claimed ${c.claimed}, sent ${c.sent}, retried ${c.retried}, dead ${c.dead}, released ${c.released}, rescued ${c.rescued}`;
}

function statusLabel(m: { status: string; uncertain: boolean; partlyRefused?: boolean }): string {
  return [m.status, m.partlyRefused === true ? "PARTLY REFUSED" : "", m.uncertain ? "UNCERTAIN" : ""].filter((x) => x !== "").join(" ");
}

function formatStatus(r: StatusReport): string {
  const rows: [string, string, string][] = [];
  for (const s of STATUSES) {
    const notes: string[] = [];
    if (s === "pending" && r.duePending > 0) {
      notes.push(`${r.duePending} due now`);
      if (r.oldestDueAgeMs !== null) notes.push(`oldest due created ${formatMs(r.oldestDueAgeMs)} ago`);
      if (r.maxDueLagMs !== null) notes.push(`waiting up to ${formatMs(r.maxDueLagMs)}`);
    }
    if (s === "sending" && r.expiredLeases > 0) notes.push(`${r.expiredLeases} with an expired lease (a relay died or stalled)`);
    const u = r.uncertain.byStatus[s];
    if (u > 0) notes.push(`${u} uncertain`);
    rows.push([s, String(r.counts[s]), notes.join(", ")]);
  }
  for (const [s, n] of Object.entries(r.otherStatuses)) rows.push([s, String(n), "unknown status"]);
  rows.push(["total", String(r.total), ""]);
  const w0 = Math.max(...rows.map((x) => x[0].length));
  const w1 = Math.max(...rows.map((x) => x[1].length));
  const lines = rows.map(([a, b, c]) => `${a.padEnd(w0)}  ${b.padStart(w1)}${c ? `  ${c}` : ""}`.trimEnd());
  if (r.uncertain.total > 0) {
    lines.push(`UNCERTAIN: ${plural(r.uncertain.total, "mail")} may have reached the MTA without a record (see: mail-outbox list --uncertain)`);
  }
  lines.push(`next attempt  ${r.nextAttemptAt === null ? "-" : iso(r.nextAttemptAt)}`);
  lines.push(`as of         ${iso(r.at)}`);
  return `${lines.join("\n")}\n`;
}

/**
 * One row per mail (NEXT: when a pending mail is tried next), and under a row, indented: the last
 * error of a mail not sent, or the recipients the MTA refused for a sent mail (status PARTLY REFUSED).
 */
function formatList(mails: readonly MailRecord[], limit: number): string {
  if (mails.length === 0) return "no mails match\n";
  const header = ["ID", "STATUS", "TRIES", "CREATED", "NEXT", "TO", "SUBJECT"];
  const rows = mails.map((m) => [
    m.id,
    statusLabel(m),
    `${m.attempts}/${m.maxAttempts}`,
    isoShort(m.createdAt),
    m.status === "pending" ? isoShort(m.nextAttemptAt) : "-",
    clip(m.envelopeTo.length <= 1 ? (m.envelopeTo[0] ?? "") : `${m.envelopeTo[0]} +${m.envelopeTo.length - 1}`, 40),
    clip(oneLine(m.subject), 50),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const fmt = (r: readonly string[]) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i] ?? 0))).join("  ").trimEnd();
  const lines = [fmt(header)];
  mails.forEach((m, i) => {
    lines.push(fmt(rows[i] ?? []));
    if (m.partlyRefused && m.rejected !== null) {
      const who = m.rejected.map((r) => `${r.recipient}${r.response ? ` (${oneLine(r.response)})` : ""}`).join(", ");
      lines.push(`  refused ${m.rejected.length} of ${m.envelopeTo.length}: ${clip(who, 160)}`);
    } else if (m.status !== "sent" && m.lastError !== null) {
      lines.push(`  last error: ${clip(oneLine(m.lastError), 160)}`);
    }
  });
  if (mails.length === limit) lines.push(`(${limit} shown, newest first; --limit shows more)`);
  return `${lines.join("\n")}\n`;
}

function formatShow(m: MailDetail): string {
  const fields: [string, string][] = [
    ["id", m.id],
    ["message-id", m.messageId],
    [
      "status",
      [
        m.status,
        m.partlyRefused && m.rejected !== null ? `(PARTLY REFUSED: ${m.rejected.length} of ${m.envelopeTo.length} recipients refused, see rejected)` : "",
        m.uncertain ? `(UNCERTAIN: ${plural(m.uncertainHandoffs, "hand-off")} interrupted; the MTA may or may not have this mail)` : "",
      ]
        .filter((x) => x !== "")
        .join(" "),
    ],
    ["from", m.envelopeFrom],
    ["to", m.envelopeTo.join(", ")],
    ["subject", oneLine(m.subject)],
    ["size", `${m.size} bytes`],
    ["priority", String(m.priority)],
    ["attempts", `${m.attempts} of ${m.maxAttempts}`],
    ["created", iso(m.createdAt)],
    ["send at", iso(m.sendAt)],
    ["next attempt", m.status === "pending" ? iso(m.nextAttemptAt) : "-"],
    ["updated", iso(m.updatedAt)],
    ["sent", iso(m.sentAt)],
  ];
  if (m.leaseOwner !== null) fields.push(["lease", `${m.leaseOwner} until ${iso(m.leaseExpiresAt)}`]);
  if (m.idempotencyKey !== null) fields.push(["idempotency key", m.idempotencyKey]);
  if (m.lastError !== null) fields.push(["last error", oneLine(m.lastError)]);
  if (m.mtaResponse !== null) fields.push(["mta response", oneLine(m.mtaResponse)]);
  if (m.mtaQueueId !== null) fields.push(["mta queue id", m.mtaQueueId]);
  if (m.accepted !== null) fields.push(["accepted", m.accepted.join(", ") || "-"]);
  if (m.rejected !== null && m.rejected.length > 0) fields.push(["rejected", m.rejected.map((r) => `${r.recipient}: ${oneLine(r.response)}`).join("; ")]);
  if (m.metadata !== null) fields.push(["metadata", JSON.stringify(m.metadata)]);
  const w = Math.max(...fields.map(([k]) => k.length)) + 1;
  const lines = fields.map(([k, v]) => `${`${k}:`.padEnd(w)}  ${v}`);
  lines.push("", m.attemptLog.length === 0 ? "attempts: none yet" : "attempts:");
  for (const a of m.attemptLog) {
    const detail = [
      a.responseCode !== null && !(a.response ?? "").startsWith(String(a.responseCode)) ? String(a.responseCode) : "",
      a.response !== null ? oneLine(a.response) : "",
      a.error !== null && a.error !== a.response ? oneLine(a.error) : "",
      a.errorCode !== null ? `(${a.errorCode})` : "",
      a.queueId !== null && !(a.response ?? "").includes(a.queueId) ? `queue id ${a.queueId}` : "",
    ]
      .filter((x) => x !== "")
      .join("  ");
    // Operator actions (replay, cancel) are recorded with attempt 0.
    lines.push(`  ${iso(a.startedAt)}  ${a.attempt === 0 ? "op" : `#${a.attempt}`}  ${a.outcome.padEnd(13)}  ${a.relay}  ${a.durationMs}ms${detail ? `  ${detail}` : ""}`);
  }
  return `${lines.join("\n")}\n`;
}

/** One line per item, at most 100 (--json gives them all). */
function capped<T>(items: readonly T[], line: (item: T) => string, max = 100): string {
  const shown = items.slice(0, max).map((x) => `${line(x)}\n`);
  if (items.length > max) shown.push(`  ... and ${items.length - max} more (--json lists them all)\n`);
  return shown.join("");
}

function oneLine(s: string): string {
  return s.replace(/\s*[\r\n]+\s*/g, " ");
}

function clip(s: string, max: number): string {
  return s.length <= max ? s : `${s.slice(0, max - 1)}…`;
}

function packageVersion(): string {
  try {
    return (JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")) as { version?: string }).version ?? "0.0.0";
  } catch {
    return "0.0.0";
  }
}

// ---- entry point --------------------------------------------------------------------------

function isEntryPoint(): boolean {
  const arg = process.argv[1];
  if (arg === undefined) return false;
  try {
    return realpathSync(arg) === realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
}

if (isEntryPoint()) {
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
