/**
 * The MariaDB (or MySQL) server of the soak, and the database fault done to it: a restart of the
 * server, the way an operator's `systemctl restart` or a crashed container's replacement looks to
 * the relays and the producers (every connection drops, nothing answers for a few seconds).
 *
 * The soak runs on the server at TEST_MYSQL_URL (default mysql://root@127.0.0.1:3306/test, as the
 * tests), each run in a database of its own (`soak_<run>`). There is no cluster of the soak's own
 * as for PostgreSQL (soak/pg.ts): a second mariadbd would need its own data directory and
 * bootstrap, and the soak only needs to restart one. So the restart hits everything connected to
 * that server, and the server is always running again when the soak ends, however it ends.
 *
 * The restart: SIGTERM to `mariadbd` (a clean shutdown, as `systemctl stop` sends), wait until the
 * process is gone, a few seconds down, then `start-stop-daemon --start --background --exec
 * /usr/sbin/mariadbd` (how .ci/run starts it) and wait until it accepts connections.
 */
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { promisify } from "node:util";
import mariadb from "mariadb";
import { MYSQL_ADMIN_URL } from "../test/support/services.js";

const run = promisify(execFile);

/** The server binary, as .ci/run starts it. */
export const MARIADBD = "/usr/sbin/mariadbd";

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** The server at TEST_MYSQL_URL, as an admin connection (no database). */
function adminConfig(): mariadb.ConnectionConfig {
  const u = new URL(MYSQL_ADMIN_URL);
  return {
    host: u.hostname,
    port: Number(u.port || 3306),
    user: decodeURIComponent(u.username) || "root",
    ...(u.password ? { password: decodeURIComponent(u.password) } : {}),
    connectTimeout: 2000,
  };
}

async function admin<T>(fn: (c: mariadb.Connection) => Promise<T>): Promise<T> {
  const conn = await mariadb.createConnection(adminConfig());
  try {
    return await fn(conn);
  } finally {
    await conn.end().catch(() => {});
  }
}

/** The URL of database `name` on the soak's server. */
export function mysqlDatabaseUrl(name: string): string {
  const u = new URL(MYSQL_ADMIN_URL);
  u.pathname = `/${name}`;
  return u.toString();
}

/** Resolve once a connection succeeds and answers; throw after `timeoutMs`. Returns the wait in ms. */
export async function waitForMysql(timeoutMs = 60_000): Promise<number> {
  const started = Date.now();
  for (;;) {
    try {
      await admin((c) => c.query("SELECT 1"));
      return Date.now() - started;
    } catch (err) {
      if (Date.now() - started > timeoutMs) throw new Error(`MariaDB at ${new URL(MYSQL_ADMIN_URL).host} did not accept connections within ${timeoutMs} ms: ${(err as Error).message}`);
      await sleep(200);
    }
  }
}

/** A new, empty database for one run (utf8mb4_unicode_ci, as `freshMysql` makes them). */
export async function createSoakDatabase(name: string): Promise<string> {
  await admin((c) => c.query(`CREATE DATABASE \`${name}\` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci`));
  return mysqlDatabaseUrl(name);
}

export async function dropSoakDatabase(name: string): Promise<void> {
  await admin((c) => c.query(`DROP DATABASE IF EXISTS \`${name}\``));
}

/** `SELECT VERSION()`, for the report. */
export async function mysqlVersion(): Promise<string> {
  return admin(async (c) => ((await c.query("SELECT VERSION() AS v")) as { v: string }[])[0]!.v);
}

/** The pid of the running server (`pidof mariadbd`), or null. */
async function serverPid(): Promise<number | null> {
  try {
    const { stdout } = await run("pidof", ["mariadbd"]);
    const pid = Number(stdout.trim().split(/\s+/)[0]);
    return Number.isInteger(pid) && pid > 0 ? pid : null;
  } catch {
    return null; // pidof exits 1 when there is none
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** Why the soak cannot restart the server here (null: it can), for a skip or a failure. */
export async function restartUnavailable(): Promise<string | null> {
  if (!existsSync(MARIADBD)) return `${MARIADBD} not found`;
  if ((await serverPid()) === null) return "no mariadbd process on this machine (pidof mariadbd): the server at TEST_MYSQL_URL is elsewhere";
  if (typeof process.getuid === "function" && process.getuid() !== 0) return "restarting mariadbd needs root";
  return null;
}

/** Start the server if it is not running (`start-stop-daemon --oknodo`: nothing happens if it is) and wait until it answers. */
export async function ensureMysqlRunning(timeoutMs = 60_000): Promise<void> {
  if ((await serverPid()) === null) await run("start-stop-daemon", ["--start", "--oknodo", "--background", "--exec", MARIADBD]);
  await waitForMysql(timeoutMs);
}

export interface MysqlRestart {
  /** From SIGTERM until the process was gone (the clean shutdown). */
  readonly stopMs: number;
  /** From SIGTERM until the server accepted connections again: the outage. */
  readonly outageMs: number;
  /** When it accepted connections again (epoch ms). */
  readonly upAt: number;
}

/**
 * Restart the server: SIGTERM, wait for the process to end, stay down `downMs`, start it, wait
 * until it answers. Whatever fails on the way, it tries to start the server again before throwing.
 */
export async function restartMysql(downMs = 3000): Promise<MysqlRestart> {
  const pid = await serverPid();
  if (pid === null) throw new Error("no mariadbd to restart (pidof mariadbd found none)");
  const started = Date.now();
  try {
    process.kill(pid, "SIGTERM");
    while (alive(pid)) {
      if (Date.now() - started > 120_000) throw new Error(`mariadbd (pid ${pid}) did not stop within 120 s of SIGTERM`);
      await sleep(100);
    }
    const stopMs = Date.now() - started;
    await sleep(downMs);
    await ensureMysqlRunning(120_000);
    const upAt = Date.now();
    return { stopMs, outageMs: upAt - started, upAt };
  } catch (err) {
    await ensureMysqlRunning(120_000).catch(() => {});
    throw err;
  }
}
