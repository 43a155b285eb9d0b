/**
 * `mail-outbox init | migrate | doctor`: setting an application up, over `initSchema` (../init.ts),
 * `migrate` (../migrate.ts) and `doctor` (../doctor.ts). `doctor` exits 1 when a check fails.
 */
import { Option, type Command } from "commander";
import { doctor } from "../doctor.js";
import { initSchema } from "../init.js";
import { migrate } from "../migrate.js";
import { parseCount, positiveDuration } from "./args.js";
import type { Cli } from "./context.js";
import { formatDoctor } from "./format.js";

export function addSetupCommands(program: Command, cli: Cli): void {
  program
    .command("init")
    .description("add the outbox models to your Prisma schema; prints the next steps and a prisma.config.ts for `mail-outbox migrate`")
    .addOption(new Option("--schema <path>", "your schema.prisma (or multi-file schema folder)").default("prisma/schema.prisma", "prisma/schema.prisma"))
    .addOption(new Option("--provider <provider>", "database of the schema (default: from its datasource)").choices(["postgresql", "sqlite", "mysql"]))
    .action(async (opts: { schema: string; provider?: "postgresql" | "sqlite" | "mysql" }, cmd: Command) => {
      // DATABASE_URL's PostgreSQL schema (?schema=) qualifies the table names in the printed prisma.config.ts.
      const databaseUrl = cli.databaseUrl(cmd);
      const result = await initSchema({
        schemaPath: opts.schema,
        ...(opts.provider !== undefined ? { provider: opts.provider } : {}),
        ...(databaseUrl !== undefined ? { databaseUrl } : {}),
      });
      if (cli.json(cmd)) cli.printJson(result);
      else cli.out(`${result.message}\n\n${result.nextSteps}\n`);
    });

  program
    .command("migrate")
    .description("create or update the outbox tables (for tables Prisma Migrate does not manage)")
    .option("--dry-run", "print what would be done, change nothing")
    .action(async (opts: { dryRun?: boolean }, cmd: Command) => {
      const asJson = cli.json(cmd);
      const log = asJson ? () => {} : (line: string) => cli.out(`${line}\n`);
      const result = await cli.withDb(cmd, (db) => migrate(db, { dryRun: opts.dryRun === true, log }), { create: opts.dryRun !== true });
      if (asJson) cli.printJson(result);
    });

  program
    .command("doctor")
    .description("check the database, the tables, the transport and a local Postfix's size limits; exits 1 if any check fails (warnings exit 0)")
    .option("--timeout <duration>", "how long to wait for the transport", "10s")
    .option("--max-message-bytes <n>", "the maxMessageBytes your mailOutbox() uses, compared with Postfix's message_size_limit (default 10000000)")
    .option("--max-header-bytes <n>", "the maxHeaderBytes your mailOutbox() uses, compared with Postfix's header_size_limit (default 100000)")
    .option("--postconf <path>", "Postfix's postconf, to read its limits (default: postconf in PATH, /usr/sbin or /usr/local/sbin)")
    .action(async (opts: { timeout: string; maxMessageBytes?: string; maxHeaderBytes?: string; postconf?: string }, cmd: Command) => {
      const report = await doctor({
        databaseUrl: cli.databaseUrl(cmd),
        transport: cli.transport(cmd),
        timeoutMs: positiveDuration(opts.timeout, "--timeout"),
        ...(opts.maxMessageBytes !== undefined ? { maxMessageBytes: parseCount(opts.maxMessageBytes, "--max-message-bytes") } : {}),
        ...(opts.maxHeaderBytes !== undefined ? { maxHeaderBytes: parseCount(opts.maxHeaderBytes, "--max-header-bytes") } : {}),
        ...(opts.postconf !== undefined ? { postconfPath: opts.postconf } : {}),
      });
      if (cli.json(cmd)) cli.printJson(report);
      else cli.out(formatDoctor(report));
      if (!report.ok) cli.setExitCode(1);
    });
}
