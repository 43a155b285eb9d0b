/**
 * A PostgreSQL primary with a streaming replica, as two clusters of this machine's PostgreSQL
 * (Debian's postgresql-common): `<version>/fo_primary` on 5450 and `<version>/fo_replica` on 5451,
 * trust auth on 127.0.0.1, synchronous replication (`synchronous_standby_names = '*'`, set with
 * ALTER SYSTEM on whichever is the primary while its standby streams, reset on promotion), so that
 * every commit the primary acknowledged is on the standby when it is promoted. For
 * test/failover.test.ts and soak/failover.ts.
 *
 * The primary is created once and reused; the replica is taken afresh from it with
 * `pg_basebackup -R` on every `startReplicaPair()` (a run promotes it, which ends its use as a
 * standby). `stop()` stops both; the clusters stay created for the next run (drop them with
 * `pg_dropcluster --stop 15 fo_primary` / `fo_replica`). Other clusters (15/main, the soak's)
 * are never touched.
 */
import { execFile } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { promisify } from "node:util";
import pg from "pg";
import { startProxy, type Proxy } from "./tcp-proxy.js";

const run = promisify(execFile);

export const PRIMARY = { name: "fo_primary", port: 5450 } as const;
export const REPLICA = { name: "fo_replica", port: 5451 } as const;

export interface ReplicaPair {
  readonly version: string;
  /** `postgresql://postgres@127.0.0.1:5450/postgres` */
  readonly primaryUrl: string;
  readonly replicaUrl: string;
  /** `pg_ctlcluster ... stop -m immediate` on the current primary: a crash, as the clients see it. */
  crashPrimary(): Promise<void>;
  /** Promote the standby (`pg_promote()`, waiting until it takes writes; PostgreSQL polls every 100 ms). Returns ms taken. Swaps the roles. */
  promoteReplica(): Promise<number>;
  /** Which cluster is the primary now, and which the standby (swapped by `promoteReplica`). */
  readonly primary: { readonly name: string; readonly port: number };
  readonly standby: { readonly name: string; readonly port: number };
  /** Take the standby (the crashed former primary, after a promotion) afresh from the primary and start it; synchronous again once it streams. */
  rebuildStandby(): Promise<void>;
  /** Stop both clusters (fast), whatever state they are in. */
  stop(): Promise<void>;
}

const HBA = `# written by test/support/replica.ts
local all all trust
local replication all trust
host all all 127.0.0.1/32 trust
host replication all 127.0.0.1/32 trust
host all all ::1/128 trust
host replication all ::1/128 trust
`;

function sleep(ms: number) {
  return new Promise((r) => setTimeout(r, ms));
}

/** Why the pair cannot be built here, or null when it can. */
export function replicaPairReason(): string | null {
  if (process.getuid?.() !== 0) return "building PostgreSQL clusters needs root (pg_createcluster, pg_basebackup)";
  if (!existsSync("/etc/postgresql")) return "postgresql-common is not installed (no /etc/postgresql)";
  const version = newestVersion();
  if (version === null) return "no PostgreSQL version under /etc/postgresql";
  for (const bin of ["/usr/bin/pg_createcluster", "/usr/bin/pg_ctlcluster", `/usr/lib/postgresql/${version}/bin/pg_basebackup`]) {
    if (!existsSync(bin)) return `${bin} not found`;
  }
  return null;
}

function newestVersion(): string | null {
  const versions = readdirSync("/etc/postgresql").filter((v) => /^\d+$/.test(v)).sort((a, b) => Number(b) - Number(a));
  return versions[0] ?? null;
}

async function clusterStatus(version: string, name: string): Promise<"online" | "down" | "absent"> {
  const { stdout } = await run("pg_lsclusters", ["--no-header"]);
  for (const line of stdout.split("\n")) {
    const [v, n, , status] = line.trim().split(/\s+/);
    if (v === version && n === name) return status?.startsWith("online") ? "online" : "down";
  }
  return "absent";
}

const ctl = (version: string, name: string, ...args: string[]) => run("pg_ctlcluster", ["--skip-systemctl-redirect", version, name, ...args]);

/** Resolve once `sql` answers on `url`; throw after `timeoutMs`. */
export async function waitFor(url: string, timeoutMs = 30_000, sql = "SELECT 1"): Promise<void> {
  const started = Date.now();
  for (;;) {
    const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 2000, application_name: "failover-harness" });
    client.on("error", () => {});
    try {
      await client.connect();
      await client.query(sql);
      await client.end();
      return;
    } catch (err) {
      await client.end().catch(() => {});
      if (Date.now() - started > timeoutMs) throw new Error(`PostgreSQL at ${url} did not answer ${sql} within ${timeoutMs} ms: ${(err as Error).message}`);
      await sleep(100);
    }
  }
}

async function writeConfig(version: string, name: string, settings: Record<string, string>): Promise<void> {
  const dir = `/etc/postgresql/${version}/${name}`;
  writeFileSync(`${dir}/pg_hba.conf`, HBA);
  const lines = Object.entries(settings).map(([k, v]) => `${k} = ${v}`);
  writeFileSync(`${dir}/conf.d/failover-test.conf`, `# written by test/support/replica.ts\n${lines.join("\n")}\n`);
}

const COMMON = { listen_addresses: "'127.0.0.1'", max_connections: "60", shared_buffers: "'32MB'", wal_level: "replica", max_wal_senders: "5", wal_keep_size: "'128MB'", hot_standby: "on", fsync: "on" };

type Node = typeof PRIMARY | typeof REPLICA;

const urlOf = (n: Node) => `postgresql://postgres@127.0.0.1:${n.port}/postgres`;

async function sql(url: string, text: string): Promise<void> {
  const client = new pg.Client({ connectionString: url, application_name: "failover-harness", connectionTimeoutMillis: 5000 });
  client.on("error", () => {});
  await client.connect();
  try {
    await client.query(text);
  } finally {
    await client.end().catch(() => {});
  }
}

/**
 * `standby`, stopped, taken afresh from `primary` with pg_basebackup -R and started; once it
 * streams, the primary's commits wait for it (synchronous_standby_names, set with ALTER SYSTEM
 * so that it can be reset on the standby once that is promoted).
 */
async function takeStandby(version: string, primary: Node, standby: Node): Promise<void> {
  if ((await clusterStatus(version, standby.name)) === "absent") {
    await run("pg_createcluster", [version, standby.name, "-p", String(standby.port), "--", "--auth-host=trust", "--auth-local=trust"]);
  } else if ((await clusterStatus(version, standby.name)) === "online") {
    await ctl(version, standby.name, "stop", "-m", "immediate");
  }
  await writeConfig(version, standby.name, { ...COMMON, port: String(standby.port) });
  const data = `/var/lib/postgresql/${version}/${standby.name}`;
  // Emptied, not removed: pg_basebackup (run as postgres) may not create it in /var/lib/postgresql/<version>.
  mkdirSync(data, { recursive: true, mode: 0o700 });
  for (const entry of readdirSync(data)) rmSync(`${data}/${entry}`, { recursive: true, force: true });
  await run("chown", ["postgres:postgres", data]);
  await run("runuser", ["-u", "postgres", "--", `/usr/lib/postgresql/${version}/bin/pg_basebackup`, "-D", data, "-R", "-X", "stream", "-c", "fast", "-h", "127.0.0.1", "-p", String(primary.port), "-U", "postgres"]);
  await ctl(version, standby.name, "start");
  await waitFor(urlOf(standby), 30_000, "SELECT 1 WHERE pg_is_in_recovery()");
  await sql(urlOf(primary), "ALTER SYSTEM SET synchronous_standby_names = '*'");
  await sql(urlOf(primary), "SELECT pg_reload_conf()");
  await waitFor(urlOf(primary), 30_000, "SELECT 1/(count(*))::int FROM pg_stat_replication WHERE sync_state = 'sync' AND state = 'streaming'");
}

/** Build (or reuse) the primary, take the replica afresh from it, start both. Stop them with `stop()`. */
export async function startReplicaPair(): Promise<ReplicaPair> {
  const version = newestVersion()!;
  let roles: { primary: Node; standby: Node } = { primary: PRIMARY, standby: REPLICA };
  const stop = async () => {
    for (const c of [REPLICA, PRIMARY]) {
      if ((await clusterStatus(version, c.name).catch(() => "absent")) === "online") await ctl(version, c.name, "stop", "-m", "fast").catch(() => {});
    }
  };
  try {
    // The primary: created once, reused (a previous run only stopped it, so it starts as a primary).
    if ((await clusterStatus(version, PRIMARY.name)) === "absent") {
      await run("pg_createcluster", [version, PRIMARY.name, "-p", String(PRIMARY.port), "--", "--auth-host=trust", "--auth-local=trust"]);
    }
    await writeConfig(version, PRIMARY.name, { ...COMMON, port: String(PRIMARY.port) });
    try {
      if ((await clusterStatus(version, PRIMARY.name)) === "online") await ctl(version, PRIMARY.name, "restart", "-m", "fast");
      else await ctl(version, PRIMARY.name, "start");
      await waitFor(urlOf(PRIMARY));
    } catch {
      // Broken (a half-done earlier run): build it again.
      await run("pg_dropcluster", ["--stop", version, PRIMARY.name]).catch(() => {});
      await run("pg_createcluster", [version, PRIMARY.name, "-p", String(PRIMARY.port), "--", "--auth-host=trust", "--auth-local=trust"]);
      await writeConfig(version, PRIMARY.name, { ...COMMON, port: String(PRIMARY.port) });
      await ctl(version, PRIMARY.name, "start");
      await waitFor(urlOf(PRIMARY));
    }
    // A soak with an odd number of failovers left it a standby of the other: make it a primary again.
    await sql(urlOf(PRIMARY), "SELECT CASE WHEN pg_is_in_recovery() THEN pg_promote(true, 60) END");
    // No standby yet: commits must not wait for one (a previous run left the setting on).
    await sql(urlOf(PRIMARY), "ALTER SYSTEM RESET synchronous_standby_names");
    await sql(urlOf(PRIMARY), "SELECT pg_reload_conf()");
    // The replica: taken afresh from the primary every time.
    await takeStandby(version, PRIMARY, REPLICA);
  } catch (err) {
    await stop();
    throw err;
  }
  return {
    version,
    primaryUrl: urlOf(PRIMARY),
    replicaUrl: urlOf(REPLICA),
    get primary() {
      return roles.primary;
    },
    get standby() {
      return roles.standby;
    },
    crashPrimary: async () => {
      await ctl(version, roles.primary.name, "stop", "-m", "immediate");
    },
    promoteReplica: async () => {
      const t0 = performance.now();
      const url = urlOf(roles.standby);
      await sql(url, "SELECT pg_promote(true, 60)");
      const ms = performance.now() - t0;
      // Its settings came from the old primary: commits must not wait for a standby it does not have.
      await sql(url, "ALTER SYSTEM RESET synchronous_standby_names");
      await sql(url, "SELECT pg_reload_conf()");
      roles = { primary: roles.standby, standby: roles.primary };
      return ms;
    },
    rebuildStandby: () => takeStandby(version, roles.primary, roles.standby),
    stop,
  };
}

/**
 * The application's one stable database endpoint (what a platform's writer endpoint, a VIP or
 * HAProxy with a primary check gives it): a TCP proxy whose `retarget` drops every open
 * connection and sends new ones to the new port.
 */
export type SwitchProxy = Pick<Proxy, "port" | "retarget" | "close">;

export function startSwitchProxy(targetPort: number): Promise<SwitchProxy> {
  return startProxy(new URL(`postgresql://127.0.0.1:${targetPort}`));
}
