/**
 * `mail-outbox ui`: the web dashboard (src/ui/) on its own port until SIGINT/SIGTERM. Read-only
 * unless --allow-actions. Credentials come from the environment only (never from arguments, which
 * other users can see in `ps`): MAIL_OUTBOX_UI_USER + MAIL_OUTBOX_UI_PASSWORD (basic auth) or
 * MAIL_OUTBOX_UI_TOKEN (bearer). Without them it listens on loopback only (exit 2 otherwise).
 */
import type { Command } from "commander";
import { openDatabase } from "../db.js";
import { OptionsError } from "../errors.js";
import type { DashboardAuth } from "../ui/handler.js";
import { isLoopbackHost, serveDashboard } from "../ui/server.js";
import { requireExistingDatabase, type Cli } from "./context.js";

/** The dashboard's credentials from the environment; undefined when none is set. */
export function uiAuthFromEnv(env: Readonly<Record<string, string | undefined>>): DashboardAuth | undefined {
  const user = env.MAIL_OUTBOX_UI_USER;
  const password = env.MAIL_OUTBOX_UI_PASSWORD;
  const token = env.MAIL_OUTBOX_UI_TOKEN;
  if ((user === undefined || user === "") !== (password === undefined || password === "")) {
    throw new OptionsError("Set both MAIL_OUTBOX_UI_USER and MAIL_OUTBOX_UI_PASSWORD for basic auth, or neither.");
  }
  const auth: { basic?: { user: string; password: string }; bearer?: string } = {};
  if (user !== undefined && user !== "" && password !== undefined) auth.basic = { user, password };
  if (token !== undefined && token !== "") auth.bearer = token;
  return auth.basic === undefined && auth.bearer === undefined ? undefined : auth;
}

export function addUiCommand(program: Command, cli: Cli): void {
  program
    .command("ui")
    .description("serve the web dashboard (read-only unless --allow-actions; loopback only unless MAIL_OUTBOX_UI_USER/_PASSWORD or MAIL_OUTBOX_UI_TOKEN are set)")
    .option("--port <n>", "port to listen on (0: any free port)", "8025")
    .option("--host <address>", "address to listen on", "127.0.0.1")
    .option("--base-path <path>", 'serve under this path, e.g. "/outbox" (behind a proxy)', "")
    .option("--allow-actions", "allow replay, cancel and resolving uncertain hand-offs from the browser (recorded in the attempt log as ui:<user>)")
    .action(async (opts: { port: string; host: string; basePath: string; allowActions?: boolean }, cmd: Command) => {
      if (!/^[0-9]{1,5}$/.test(opts.port) || Number(opts.port) > 65_535) throw new OptionsError(`--port expects a port number from 0 to 65535, got ${JSON.stringify(opts.port)}.`);
      const auth = uiAuthFromEnv(cli.env);
      if (!isLoopbackHost(opts.host) && auth === undefined) {
        throw new OptionsError(
          `Refusing to serve the dashboard on ${opts.host} without authentication: set MAIL_OUTBOX_UI_USER and MAIL_OUTBOX_UI_PASSWORD (basic auth) or MAIL_OUTBOX_UI_TOKEN (bearer), or use --host 127.0.0.1.`,
        );
      }
      const url = cli.databaseUrl(cmd);
      requireExistingDatabase(url);
      const db = await openDatabase(url);
      try {
        await db.ping();
        const ui = await serveDashboard({
          db,
          port: Number(opts.port),
          host: opts.host,
          readOnly: opts.allowActions !== true,
          ...(auth !== undefined ? { auth } : {}),
          ...(opts.basePath !== "" ? { basePath: opts.basePath } : {}),
        });
        cli.out(`mail-outbox ui: serving ${ui.url}/ (${opts.allowActions === true ? "actions enabled" : "read-only"}${auth !== undefined ? ", authentication required" : ""}); database ${db.displayUrl}\n`);
        await new Promise<void>((resolve) => {
          const stop = () => {
            cli.signals.off("SIGINT", stop);
            cli.signals.off("SIGTERM", stop);
            resolve();
          };
          cli.signals.on("SIGINT", stop);
          cli.signals.on("SIGTERM", stop);
        });
        await ui.close();
      } finally {
        await db.close();
      }
    });
}
