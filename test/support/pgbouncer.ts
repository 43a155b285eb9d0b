/**
 * A PgBouncer of the test's own in front of the local PostgreSQL: a generated ini and userlist in
 * a temp dir, a free port, `pool_mode` transaction or session, `auth_type = trust` (the local
 * PostgreSQL trusts 127.0.0.1). Skips (or fails under MAIL_OUTBOX_REQUIRE_SERVICES=1) when
 * /usr/sbin/pgbouncer is missing. Debian's pgbouncer service is never touched.
 */
import type { TestContext } from "node:test";
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import { chown, mkdtemp, rm, writeFile } from "node:fs/promises";
import { execFileSync } from "node:child_process";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { needPostgres, needService, PG_ADMIN_URL } from "./services.js";

export const PGBOUNCER = "/usr/sbin/pgbouncer";

export interface PgBouncer {
  readonly port: number;
  readonly mode: "transaction" | "session";
  /** PG_ADMIN_URL pointed at the bouncer (same user and database, query kept). */
  url(query?: string): string;
  stop(): Promise<void>;
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

function waitForPort(port: number, child: ChildProcess, stderr: () => string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  return new Promise((resolve, reject) => {
    const tryOnce = () => {
      if (child.exitCode !== null) return reject(new Error(`pgbouncer exited with ${child.exitCode}: ${stderr()}`));
      const s = net.connect({ host: "127.0.0.1", port });
      s.once("connect", () => {
        s.destroy();
        resolve();
      });
      s.once("error", () => {
        s.destroy();
        if (Date.now() > deadline) reject(new Error(`pgbouncer did not listen on ${port}: ${stderr()}`));
        else setTimeout(tryOnce, 50);
      });
    };
    tryOnce();
  });
}

export interface PgBouncerOptions {
  readonly mode: "transaction" | "session";
  /** Server connections per user/database pair. @default 20 */
  readonly poolSize?: number;
  /** Extra lines for the [pgbouncer] section. */
  readonly extra?: readonly string[];
}

/** Start a PgBouncer, or skip the test with a reason. `stop` runs after the test. */
export async function startPgBouncer(t: TestContext, options: PgBouncerOptions): Promise<PgBouncer | null> {
  if (!(await needPostgres(t))) return null;
  if (!needService(t, "PgBouncer", existsSync(PGBOUNCER) ? null : `${PGBOUNCER} not found (apt-get install -y pgbouncer; .ci/run does it)`)) return null;
  const upstream = new URL(PG_ADMIN_URL);
  const user = decodeURIComponent(upstream.username || "postgres");
  const dir = await mkdtemp(path.join(tmpdir(), "mail-outbox-pgbouncer-"));
  const port = await freePort();
  await writeFile(path.join(dir, "userlist.txt"), `"${user}" ""\n`);
  await writeFile(
    path.join(dir, "pgbouncer.ini"),
    [
      "[databases]",
      `* = host=${upstream.hostname} port=${upstream.port || 5432}`,
      "[pgbouncer]",
      `listen_addr = 127.0.0.1`,
      `listen_port = ${port}`,
      `unix_socket_dir =`,
      `auth_type = trust`,
      `auth_file = ${path.join(dir, "userlist.txt")}`,
      `pool_mode = ${options.mode}`,
      `default_pool_size = ${options.poolSize ?? 20}`,
      `max_client_conn = 200`,
      `pidfile = ${path.join(dir, "pgbouncer.pid")}`,
      `logfile = ${path.join(dir, "pgbouncer.log")}`,
      `admin_users = ${user}`,
      ...(options.extra ?? []),
      "",
    ].join("\n"),
  );
  // PgBouncer refuses to run as root: then it drops to the `postgres` user (-u), which must own the dir.
  const args = [path.join(dir, "pgbouncer.ini")];
  if (process.getuid?.() === 0) {
    const uid = Number(execFileSync("id", ["-u", "postgres"]).toString().trim());
    const gid = Number(execFileSync("id", ["-g", "postgres"]).toString().trim());
    for (const f of ["", "pgbouncer.ini", "userlist.txt"]) await chown(path.join(dir, f), uid, gid);
    args.unshift("-u", "postgres");
  }
  let err = "";
  const child = spawn(PGBOUNCER, args, { stdio: ["ignore", "ignore", "pipe"] });
  child.stderr?.on("data", (d: Buffer) => {
    err += d.toString();
  });
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGINT");
      const timer = setTimeout(() => child.kill("SIGKILL"), 5000);
      await exited;
      clearTimeout(timer);
    }
    await rm(dir, { recursive: true, force: true });
  };
  try {
    await waitForPort(port, child, () => err);
  } catch (e) {
    await stop();
    throw e;
  }
  t.after(stop);
  return {
    port,
    mode: options.mode,
    url(query = "") {
      const u = new URL(PG_ADMIN_URL);
      u.port = String(port);
      u.search = query;
      return u.toString();
    },
    stop,
  };
}
