/**
 * The PostgreSQL server of the soak, and the database faults done to it: a restart of the
 * server (`pg_ctlcluster ... restart`) and connections killed from the server side
 * (`pg_terminate_backend` on the relays' backends).
 *
 * By default the soak runs on a cluster of its own (`<version>/mail_outbox_soak`, port 5433,
 * created with pg_createcluster on first use, started for the run and stopped after it), so that
 * restarting it disturbs nothing else on the machine. `--pg-cluster 15/main` uses an existing
 * cluster instead (then everything connected to it sees the restart).
 */
import { execFile } from "node:child_process";
import { mkdirSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import pg from "pg";

const run = promisify(execFile);

export interface PgCluster {
  readonly version: string;
  readonly name: string;
  readonly port: number;
  /** Base URL (database, no schema): `postgresql://postgres@127.0.0.1:PORT/DB`. */
  readonly url: string;
  /** The soak created or started it, and stops it at the end. */
  readonly ownedByUs: boolean;
}

export const DEDICATED_CLUSTER = "mail_outbox_soak";

function sleep(ms: number) {
  return new Promise((r) => setTimeout(r, ms));
}

/** The installed PostgreSQL major version (`ls /etc/postgresql`). */
export function postgresVersion(): string {
  const versions = readdirSync("/etc/postgresql").filter((v) => /^\d+$/.test(v)).sort((a, b) => Number(b) - Number(a));
  if (!versions[0]) throw new Error("no PostgreSQL cluster configuration in /etc/postgresql (is postgresql-common installed?)");
  return versions[0];
}

interface ClusterRow {
  version: string;
  name: string;
  port: number;
  status: string;
}

async function listClusters(): Promise<ClusterRow[]> {
  const { stdout } = await run("pg_lsclusters", ["--no-header"]);
  return stdout
    .split("\n")
    .filter((l) => l.trim())
    .map((l) => {
      const [version, name, port, status] = l.trim().split(/\s+/);
      return { version: version!, name: name!, port: Number(port), status: status! };
    });
}

/** Resolve once a connection succeeds; throw after `timeoutMs`. */
export async function waitForPostgres(url: string, timeoutMs = 60_000): Promise<number> {
  const started = Date.now();
  for (;;) {
    const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 2000, application_name: "soak-harness" });
    client.on("error", () => {});
    try {
      await client.connect();
      await client.query("SELECT 1");
      await client.end();
      return Date.now() - started;
    } catch (err) {
      await client.end().catch(() => {});
      if (Date.now() - started > timeoutMs) throw new Error(`PostgreSQL at ${url} did not accept connections within ${timeoutMs} ms: ${(err as Error).message}`);
      await sleep(200);
    }
  }
}

/**
 * `spec`: "dedicated" (default) or "VERSION/NAME" of an existing cluster. `database`: which
 * database in it the soak uses (each run makes its own schema there).
 */
export async function prepareCluster(spec: string, database?: string): Promise<PgCluster> {
  const clusters = await listClusters();
  let version: string;
  let name: string;
  let ownedByUs = false;
  if (spec === "dedicated") {
    version = postgresVersion();
    name = DEDICATED_CLUSTER;
    if (!clusters.some((c) => c.version === version && c.name === name)) {
      const used = new Set(clusters.map((c) => c.port));
      let port = 5433;
      while (used.has(port)) port++;
      await run("pg_createcluster", [version, name, "-p", String(port), "--", "--auth-host=trust", "--auth-local=trust"]);
    }
    ownedByUs = true;
    registerUser();
  } else {
    const m = /^(\d+)\/([\w.-]+)$/.exec(spec);
    if (!m) throw new Error(`--pg-cluster: expected "dedicated" or VERSION/NAME (e.g. 15/main), got ${JSON.stringify(spec)}`);
    version = m[1]!;
    name = m[2]!;
  }
  const row = (await listClusters()).find((c) => c.version === version && c.name === name);
  if (!row) throw new Error(`no PostgreSQL cluster ${version}/${name} (pg_lsclusters)`);
  if (row.status !== "online") {
    await run("pg_ctlcluster", ["--skip-systemctl-redirect", version, name, "start"]);
  }
  const url = `postgresql://postgres@127.0.0.1:${row.port}/${database ?? (ownedByUs ? "postgres" : "test")}`;
  await waitForPostgres(url);
  return { version, name, port: row.port, url, ownedByUs };
}

/** Restart the server (all connections drop); resolves once it accepts connections again. Returns the outage in ms. */
export async function restartCluster(c: PgCluster): Promise<number> {
  const started = Date.now();
  await run("pg_ctlcluster", ["--skip-systemctl-redirect", c.version, c.name, "restart", "-m", "fast"]);
  await waitForPostgres(c.url);
  return Date.now() - started;
}

/** Soak processes using the dedicated cluster, one file per pid: the last one out stops it. */
const USERS_DIR = path.join(tmpdir(), "mail-outbox-soak-cluster-users");

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

function registerUser(): void {
  mkdirSync(USERS_DIR, { recursive: true });
  writeFileSync(path.join(USERS_DIR, String(process.pid)), "");
}

/** Stop a cluster the soak started, unless another soak process still uses it. */
export async function stopCluster(c: PgCluster): Promise<void> {
  if (!c.ownedByUs) return;
  rmSync(path.join(USERS_DIR, String(process.pid)), { force: true });
  const others = readdirSync(USERS_DIR).map(Number).filter((pid) => pid !== process.pid && alive(pid));
  if (others.length > 0) return;
  await run("pg_ctlcluster", ["--skip-systemctl-redirect", c.version, c.name, "stop", "-m", "fast"]).catch(() => {});
}

/**
 * Kill, from the server side, the backends of relays whose id contains `tag` (their
 * application_name is `mail-outbox relay <id>` / `mail-outbox listen <id>`). Returns how many.
 */
export async function terminateRelayBackends(url: string, tag: string): Promise<number> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 5000, application_name: "soak-harness" });
  client.on("error", () => {});
  try {
    await client.connect();
    const { rows } = await client.query<{ ok: boolean }>(
      `SELECT pg_terminate_backend(pid) AS ok FROM pg_stat_activity
       WHERE application_name LIKE 'mail-outbox%' AND position($1 in application_name) > 0 AND pid <> pg_backend_pid()`,
      [tag],
    );
    return rows.filter((r) => r.ok).length;
  } finally {
    await client.end().catch(() => {});
  }
}
