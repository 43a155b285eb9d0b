/**
 * The short soak: about two minutes of producers, relay processes killed and restarted, a faulty
 * SMTP server, a PostgreSQL restart and killed connections, and a Postfix stretch; then the audit.
 * Then a shorter one on MariaDB alone, with a restart of the MariaDB server (about a minute).
 * Longer runs: `npm run soak -- --mails 20000 --minutes 5`, `npm run soak -- --db mysql --minutes 10` (see RELIABILITY.md).
 *
 * Runs alone, after the other test files (npm test runs test/soak/ serially at the end). It uses a
 * PostgreSQL cluster of its own (SOAK_PG_CLUSTER=15/main to use the main one instead) and stops
 * and starts Postfix. The MariaDB run restarts the server at TEST_MYSQL_URL (it must be this
 * machine's mariadbd) and leaves it running.
 */
import { it } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { DEFAULT_OPTIONS, runSoak } from "../../soak/harness.js";
import { restartUnavailable } from "../../soak/mysql.js";
import { needMysql, needPostgres, needService, REQUIRE_SERVICES } from "../support/services.js";

it("under relay kills, MTA faults and database restarts, every committed mail is delivered or dead with its reason, no rolled-back mail is sent, and duplicates stay within what the kills explain", async (t) => {
  if (!(await needPostgres(t))) return;
  const root = typeof process.getuid === "function" && process.getuid() === 0;
  if (!needService(t, "root", root ? null : "the soak restarts a PostgreSQL cluster (pg_ctlcluster) and stops Postfix; run the tests as root")) return;
  const workDir = mkdtempSync(path.join(tmpdir(), "mail-outbox-soak-test-"));
  const lines: string[] = [];
  let passed = false;
  try {
    const report = await runSoak({
      ...DEFAULT_OPTIONS,
      mails: Number(process.env.SOAK_MAILS ?? 2000),
      minutes: Number(process.env.SOAK_MINUTES ?? 1.25),
      killEveryMs: 30_000,
      seed: Number(process.env.SOAK_SEED ?? 7),
      pgCluster: process.env.SOAK_PG_CLUSTER ?? "dedicated",
      requireServices: REQUIRE_SERVICES,
      settleTimeoutMs: 60_000,
      workDir,
      log: (line) => lines.push(line),
    });
    for (const s of report.skipped) t.diagnostic(`skipped: ${s}`);
    for (const r of report.results) {
      t.diagnostic(r.line);
      for (const f of r.failures) t.diagnostic(`  FAIL ${f}`);
    }
    if (!report.passed) for (const l of lines) t.diagnostic(l);
    assert.ok(report.results.some((r) => r.label === "postgresql") && report.results.some((r) => r.label === "sqlite"), "both runs reported");
    passed = report.passed;
    assert.ok(report.passed, `the audit failed:\n${report.results.flatMap((r) => [r.line, ...r.failures]).join("\n")}`);
    for (const r of report.results.filter((r) => r.label === "postgresql" || r.label === "sqlite")) {
      assert.ok(r.counts.committed > 1000, `${r.label}: enough mail went through (${r.counts.committed})`);
      assert.ok(r.counts.sigkills >= 1 && r.counts.sigterms >= 1, `${r.label}: relays were killed and stopped`);
    }
  } finally {
    if (passed) rmSync(workDir, { recursive: true, force: true });
    else t.diagnostic(`relay logs kept in ${workDir}`);
  }
});

it("on MariaDB, under relay kills, MTA faults and a server restart, every committed mail is delivered or dead with its reason, no rolled-back mail is sent, and duplicates stay within what the kills and the restart explain", async (t) => {
  if (!(await needMysql(t))) return;
  if (!needService(t, "a MariaDB server the soak may restart", await restartUnavailable())) return;
  const workDir = mkdtempSync(path.join(tmpdir(), "mail-outbox-soak-test-"));
  const lines: string[] = [];
  let passed = false;
  try {
    const report = await runSoak({
      ...DEFAULT_OPTIONS,
      databases: ["mysql"],
      postfix: "off",
      mails: Number(process.env.SOAK_MYSQL_MAILS ?? 1200),
      minutes: Number(process.env.SOAK_MYSQL_MINUTES ?? 0.75),
      mysqlRelays: 2,
      killEveryMs: 20_000,
      seed: Number(process.env.SOAK_SEED ?? 7),
      requireServices: REQUIRE_SERVICES,
      settleTimeoutMs: 45_000,
      workDir,
      log: (line) => lines.push(line),
    });
    for (const s of report.skipped) t.diagnostic(`skipped: ${s}`);
    for (const r of report.results) {
      t.diagnostic(r.line);
      for (const f of r.failures) t.diagnostic(`  FAIL ${f}`);
    }
    if (!report.passed) for (const l of lines) t.diagnostic(l);
    const r = report.results.find((x) => x.label === "mysql");
    assert.ok(r, "the MariaDB run reported");
    passed = report.passed;
    assert.ok(report.passed, `the audit failed:\n${report.results.flatMap((x) => [x.line, ...x.failures]).join("\n")}`);
    assert.ok(r.counts.committed > 600, `enough mail went through (${r.counts.committed})`);
    assert.ok(r.counts.sigkills >= 1 && r.counts.sigterms >= 1, "relays were killed and stopped");
    const restarts = (report.details[0]?.mysqlRestarts ?? []) as { relaysRecoveredMs: number | null }[];
    assert.ok(restarts.length >= 1, "the MariaDB server was restarted");
    assert.ok(restarts.every((x) => x.relaysRecoveredMs !== null), `the relays recorded outcomes again after every restart: ${JSON.stringify(restarts)}`);
  } finally {
    if (passed) rmSync(workDir, { recursive: true, force: true });
    else t.diagnostic(`relay logs kept in ${workDir}`);
  }
});
