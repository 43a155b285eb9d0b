/**
 * `npm run soak -- --mails 20000 --minutes 5`: the fault-injection soak with its audit.
 * Prints one audit line per run on stdout (progress on stderr) and exits 1 when any run fails.
 * See RELIABILITY.md for what it does and what it measured.
 */
import { parseArgs } from "node:util";
import { existsSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { DEFAULT_OPTIONS, runSoak, type SoakDatabase, type SoakOptions } from "./harness.js";
import { DEFAULT_RATES, NO_FAULTS, type FaultRates } from "./faults.js";
import { killAllRelays } from "./relays.js";

const USAGE = `Usage: npm run soak -- [options]

  --mails N            mails the producers enqueue per run, ~10% in rolled-back transactions (default ${DEFAULT_OPTIONS.mails})
  --minutes M          length of each run's fault phase; a settle phase follows (default ${DEFAULT_OPTIONS.minutes})
  --db LIST            postgresql, sqlite and/or mysql (MariaDB at TEST_MYSQL_URL, restarted during the run;
                       needs root) (default postgresql,sqlite, run side by side)
  --seed N             seed of the fault plan and the producers' choices (default ${DEFAULT_OPTIONS.seed})
  --pg-relays N        relay processes on PostgreSQL (default ${DEFAULT_OPTIONS.pgRelays})
  --mysql-relays N     relay processes on MariaDB (default ${DEFAULT_OPTIONS.mysqlRelays})
  --mysql-down S       seconds MariaDB stays down in each restart (default ${DEFAULT_OPTIONS.mysqlDownMs / 1000})
  --mysql-restarts N   MariaDB restarts per run (default one per 5 minutes of fault phase, at least one; 0: none)
  --concurrency N      hand-offs in flight per relay (default ${DEFAULT_OPTIONS.concurrency})
  --kill-every S       mean seconds between SIGKILLs of one relay (default ${DEFAULT_OPTIONS.killEveryMs / 1000})
  --pg-cluster C       "dedicated" (a cluster of the soak's own, created on first use) or VERSION/NAME, e.g. 15/main (default dedicated)
  --pg-database D      database in an existing cluster (default test)
  --postfix MODE       auto (run the Postfix stretch when Postfix runs) or off (default auto)
  --faults SPEC        "default", "none", or name=rate,... over the defaults (e.g. data451=0.1,stallLong=0)
  --reject-rate R      share of Message-IDs the MTA refuses with 554 (default ${DEFAULT_OPTIONS.rejectRate})
  --max-rss-mb N       peak RSS allowed per relay process (default ${DEFAULT_OPTIONS.maxRssMb})
  --json FILE          write the full report (counts, injected faults, kills, memory) as JSON
  --work-dir DIR       relay logs and SQLite files (default $TMPDIR/mail-outbox-soak)
  --keep               keep the databases afterwards (always kept when a run fails)

Fault names: ${Object.keys(DEFAULT_RATES).join(", ")}
MAIL_OUTBOX_REQUIRE_SERVICES=1 makes a missing Postfix a failure instead of a skip.`;

function fail(message: string): never {
  process.stderr.write(`soak: ${message}\n\n${USAGE}\n`);
  process.exit(2);
}

function num(name: string, v: string | undefined, fallback: number, min = 0): number {
  if (v === undefined) return fallback;
  const n = Number(v);
  if (!Number.isFinite(n) || n < min) fail(`--${name}: expected a number >= ${min}, got ${JSON.stringify(v)}`);
  return n;
}

function parseFaults(spec: string | undefined): FaultRates {
  if (spec === undefined || spec === "default") return DEFAULT_RATES;
  if (spec === "none") return NO_FAULTS;
  const rates: Record<string, number> = { ...DEFAULT_RATES };
  for (const part of spec.split(",")) {
    const [k, v] = part.split("=");
    if (!k || !(k in DEFAULT_RATES)) fail(`--faults: unknown fault ${JSON.stringify(k)}`);
    const n = Number(v);
    if (!(n >= 0 && n <= 1)) fail(`--faults: ${k} must be a rate from 0 to 1`);
    rates[k] = n;
  }
  return rates as unknown as FaultRates;
}

const { values } = parseArgs({
  options: {
    mails: { type: "string" },
    minutes: { type: "string" },
    db: { type: "string" },
    seed: { type: "string" },
    "pg-relays": { type: "string" },
    "mysql-relays": { type: "string" },
    "mysql-down": { type: "string" },
    "mysql-restarts": { type: "string" },
    concurrency: { type: "string" },
    "kill-every": { type: "string" },
    "pg-cluster": { type: "string" },
    "pg-database": { type: "string" },
    postfix: { type: "string" },
    faults: { type: "string" },
    "reject-rate": { type: "string" },
    "max-rss-mb": { type: "string" },
    json: { type: "string" },
    "work-dir": { type: "string" },
    keep: { type: "boolean" },
    help: { type: "boolean", short: "h" },
  },
  strict: true,
});
if (values.help) {
  process.stdout.write(`${USAGE}\n`);
  process.exit(0);
}
const databases = (values.db ?? "postgresql,sqlite").split(",").map((d) => d.trim()) as SoakDatabase[];
for (const d of databases) if (d !== "postgresql" && d !== "sqlite" && d !== "mysql") fail(`--db: expected postgresql, sqlite and/or mysql, got ${JSON.stringify(d)}`);
const postfix = values.postfix ?? "auto";
if (postfix !== "auto" && postfix !== "off") fail(`--postfix: expected auto or off`);

const options: SoakOptions = {
  ...DEFAULT_OPTIONS,
  mails: Math.round(num("mails", values.mails, DEFAULT_OPTIONS.mails, 10)),
  minutes: num("minutes", values.minutes, DEFAULT_OPTIONS.minutes, 0.25),
  databases,
  seed: Math.round(num("seed", values.seed, DEFAULT_OPTIONS.seed)),
  pgRelays: Math.round(num("pg-relays", values["pg-relays"], DEFAULT_OPTIONS.pgRelays, 2)),
  mysqlRelays: Math.round(num("mysql-relays", values["mysql-relays"], DEFAULT_OPTIONS.mysqlRelays, 2)),
  mysqlDownMs: num("mysql-down", values["mysql-down"], DEFAULT_OPTIONS.mysqlDownMs / 1000) * 1000,
  mysqlRestarts: values["mysql-restarts"] === undefined ? null : Math.round(num("mysql-restarts", values["mysql-restarts"], 0)),
  concurrency: Math.round(num("concurrency", values.concurrency, DEFAULT_OPTIONS.concurrency, 1)),
  killEveryMs: num("kill-every", values["kill-every"], DEFAULT_OPTIONS.killEveryMs / 1000, 3) * 1000,
  pgCluster: values["pg-cluster"] ?? DEFAULT_OPTIONS.pgCluster,
  ...(values["pg-database"] ? { pgDatabase: values["pg-database"] } : {}),
  postfix,
  rates: parseFaults(values.faults),
  rejectRate: num("reject-rate", values["reject-rate"], DEFAULT_OPTIONS.rejectRate),
  maxRssMb: num("max-rss-mb", values["max-rss-mb"], DEFAULT_OPTIONS.maxRssMb, 32),
  workDir: path.resolve(values["work-dir"] ?? path.join(tmpdir(), "mail-outbox-soak")),
  keep: values.keep ?? false,
  log: (line) => process.stderr.write(`soak: ${new Date().toISOString().slice(11, 19)} ${line}\n`),
};

// Interrupted: take the relay processes down (the MTA process follows its parent), start Postfix
// again if the soak had stopped it, start MariaDB again if a restart was under way, and stop the
// soak's own PostgreSQL cluster.
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.once(signal, () => {
    process.stderr.write(`soak: ${signal}: stopping relays, starting Postfix again if it was stopped\n`);
    killAllRelays();
    void (async () => {
      if (existsSync("/usr/sbin/postfix")) await (await import("../test/support/postfix.js")).startPostfix().catch(() => {});
      if (options.databases.includes("mysql")) await (await import("./mysql.js")).ensureMysqlRunning().catch(() => {});
      if (options.pgCluster === "dedicated" && options.databases.includes("postgresql")) {
        const pg = await import("./pg.js");
        const version = pg.postgresVersion();
        await pg.stopCluster({ version, name: pg.DEDICATED_CLUSTER, port: 0, url: "", ownedByUs: true }).catch(() => {});
      }
    })().finally(() => process.exit(130));
  });
}

const report = await runSoak(options);
for (const s of report.skipped) process.stdout.write(`skipped: ${s}\n`);
for (const r of report.results) {
  process.stdout.write(`${r.line}\n`);
  for (const f of r.failures) process.stdout.write(`  FAIL ${f}\n`);
}
if (values.json) writeFileSync(values.json, JSON.stringify({ options: { ...options, log: undefined }, ...report }, null, 2));
process.exit(report.passed ? 0 : 1);
