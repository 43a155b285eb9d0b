/**
 * The operations port of the sidecars (`mail-outbox relay --metrics-port`, `mail-outbox follow-log
 * --metrics-port`): Prometheus metrics on `/metrics` (prom-client's default Node.js metrics plus
 * mail_outbox_*), liveness on `/healthz` and readiness on `/readyz`, each a JSON
 * {@link HealthReport} answered with 200 (`ok`) or 503 (`fail`).
 */
import { createServer, type ServerResponse } from "node:http";
import { Registry, collectDefaultMetrics } from "prom-client";
import { OptionsError } from "./errors.js";

/** One check of a health report: whether it passed, and what was seen (what is wrong, when it is not ok). */
export interface HealthCheck {
  readonly ok: boolean;
  readonly detail: string;
}

/** The body of `/healthz` and `/readyz`: `ok` when every check is ok. */
export interface HealthReport {
  readonly status: "ok" | "fail";
  readonly checks: Readonly<Record<string, HealthCheck>>;
}

/** A report from its checks: `ok` when every one is. */
export function healthReport(checks: Readonly<Record<string, HealthCheck>>): HealthReport {
  return { status: Object.values(checks).every((c) => c.ok) ? "ok" : "fail", checks };
}

export interface OperationsServerOptions {
  /** 0 picks a free port (see `url`). */
  readonly port: number;
  /** Address to listen on: 127.0.0.1 by default; 0.0.0.0 in a container, so probes and scrapers reach it. @default "127.0.0.1" */
  readonly host?: string;
  /** Registry served on `/metrics`. @default a new one with prom-client's default Node.js metrics */
  readonly registry?: Registry;
  /** Liveness for `/healthz` (404 without it). */
  readonly health?: () => Promise<HealthReport>;
  /** Readiness for `/readyz` (404 without it). */
  readonly ready?: () => Promise<HealthReport>;
}

export interface OperationsServer {
  /** The registry served on `/metrics`: register the component's metrics in it. */
  readonly registry: Registry;
  /** `http://host:port` (no trailing slash). */
  readonly url: string;
  /** The endpoints served, e.g. `["/metrics", "/healthz", "/readyz"]`. */
  readonly paths: readonly string[];
  close(): Promise<void>;
}

/**
 * Serve `/metrics`, and `/healthz` / `/readyz` when their checks are given. A check that throws
 * answers 503 with a `probe` check naming the error.
 *
 * @throws OptionsError when the port cannot be listened on (in use, no permission).
 * @example
 * ```ts
 * const ops = await serveOperations({ port: 9464, host: "0.0.0.0", health: async () => (await relay.health()).live, ready: async () => (await relay.health()).ready });
 * const relay = createRelay({ databaseUrl, transport, metricsRegistry: ops.registry });
 * ```
 */
export async function serveOperations(options: OperationsServerOptions): Promise<OperationsServer> {
  const host = options.host ?? "127.0.0.1";
  const registry = options.registry ?? new Registry();
  if (!options.registry) collectDefaultMetrics({ register: registry });
  const reports: Record<string, (() => Promise<HealthReport>) | undefined> = { "/healthz": options.health, "/readyz": options.ready };
  const paths = ["/metrics", ...Object.keys(reports).filter((p) => reports[p] !== undefined)];
  const server = createServer((req, res) => {
    const route = (req.url ?? "/").split("?")[0] ?? "/";
    if (req.method !== "GET" && req.method !== "HEAD") {
      res.writeHead(405, { allow: "GET, HEAD" }).end();
      return;
    }
    if (route === "/metrics") {
      registry.metrics().then(
        (body) => res.writeHead(200, { "content-type": registry.contentType }).end(body),
        (e: unknown) => res.writeHead(500).end(String(e)),
      );
      return;
    }
    const check = reports[route];
    if (check === undefined) {
      res.writeHead(404, { "content-type": "text/plain" }).end(`not found; try ${paths.join(", ")}\n`);
      return;
    }
    check().then(
      (report) => sendReport(res, report),
      (e: unknown) => sendReport(res, healthReport({ probe: { ok: false, detail: `the check failed: ${e instanceof Error ? e.message : String(e)}` } })),
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", (e) => reject(new OptionsError(`Cannot serve metrics on ${host}:${options.port}: ${(e as Error).message}. Pick another --metrics-port (or 0 for any free one).`)));
    server.listen(options.port, host, resolve);
  });
  const address = server.address();
  const actualPort = typeof address === "object" && address ? address.port : options.port;
  const shownHost = host.includes(":") ? `[${host}]` : host;
  return {
    registry,
    url: `http://${shownHost}:${actualPort}`,
    paths,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

function sendReport(res: ServerResponse, report: HealthReport): void {
  res.writeHead(report.status === "ok" ? 200 : 503, { "content-type": "application/json", "cache-control": "no-store" }).end(`${JSON.stringify(report)}\n`);
}
