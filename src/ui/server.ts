/**
 * `serveDashboard`: the dashboard on its own HTTP server (what `mail-outbox ui` runs). It refuses to
 * listen beyond loopback without credentials: the pages show mail (recipients, content) and, with
 * actions on, can send it again.
 */
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { OptionsError } from "../errors.js";
import { createDashboardHandler, hasAuth, type DashboardOptions } from "./handler.js";

export interface ServeDashboardOptions extends DashboardOptions {
  /** 0 picks a free port (see `url`). @default 8025 */
  readonly port?: number;
  /** @default "127.0.0.1" */
  readonly host?: string;
}

export interface DashboardServer {
  /** `http://host:port` (no trailing slash), with the base path. */
  readonly url: string;
  readonly server: Server;
  /** Stop listening and close the database when the dashboard opened it. */
  close(): Promise<void>;
}

/** 127.0.0.0/8, ::1 and localhost: only this machine can connect. */
export function isLoopbackHost(host: string): boolean {
  const h = host.trim().toLowerCase().replace(/^\[|\]$/g, "");
  return h === "localhost" || h === "::1" || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h) || h === "::ffff:127.0.0.1";
}

/**
 * Listen with the dashboard handler.
 *
 * @example
 * const ui = await serveDashboard({ databaseUrl: "file:./outbox.db", port: 8025 });
 * console.log(ui.url);
 * @throws OptionsError when `host` is not a loopback address and no `auth` is given, or the port cannot be listened on.
 */
export async function serveDashboard(options: ServeDashboardOptions): Promise<DashboardServer> {
  const host = options.host ?? "127.0.0.1";
  const port = options.port ?? 8025;
  if (!Number.isSafeInteger(port) || port < 0 || port > 65_535) throw new OptionsError(`Expected \`port\` to be a whole number from 0 to 65535, got ${JSON.stringify(port)}.`);
  if (!isLoopbackHost(host) && !hasAuth(options.auth)) {
    throw new OptionsError(
      `Refusing to serve the dashboard on ${host} without authentication: anyone who reaches it could read the outbox. Set MAIL_OUTBOX_UI_USER and MAIL_OUTBOX_UI_PASSWORD (basic auth) or MAIL_OUTBOX_UI_TOKEN (bearer), or listen on 127.0.0.1.`,
    );
  }
  const handler = createDashboardHandler(options);
  const server = createServer((req, res) => handler(req, res));
  await new Promise<void>((resolve, reject) => {
    server.once("error", (e: NodeJS.ErrnoException) =>
      reject(new OptionsError(`Cannot listen on ${host}:${port}: ${e.code === "EADDRINUSE" ? "the port is in use; choose another with --port" : e.message}.`, { cause: e })),
    );
    server.listen(port, host, () => resolve());
  });
  const address = server.address() as AddressInfo;
  const shown = address.family === "IPv6" ? `[${address.address}]` : address.address;
  return {
    url: `http://${shown}:${address.port}${options.basePath ?? ""}`,
    server,
    async close() {
      // Stop accepting first: a browser opens spare connections, which would otherwise keep close() waiting.
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeAllConnections();
      await closed;
      await handler.close();
    },
  };
}
