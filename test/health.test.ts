/**
 * /healthz and /readyz over real HTTP against a running relay on SQLite and PostgreSQL: the
 * library (`createRelay` + `serveOperations`; outages) and the CLI (`mail-outbox relay --metrics-port 0`
 * through `main()`; the endpoints it serves). All is well -> 200; the in-process SMTP server refusing connections -> /readyz
 * 503 naming the MTA; PostgreSQL cut off by a TCP proxy -> 503 naming the database; a relay stopping
 * (a hand-off stalled by the SMTP server) -> 503 naming the relay; /healthz 200 throughout while the
 * claim loop turns. Also `follow-log --metrics-port` serving /metrics and /healthz.
 */
import { describe, it, after } from "node:test";
import type { TestContext } from "node:test";
import assert from "node:assert/strict";
import { EventEmitter } from "node:events";
import { writeFile, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { Registry } from "prom-client";
import { createRelay, mailOutbox } from "../src/index.js";
import { serveOperations, type HealthReport } from "../src/http-server.js";
import { main } from "../src/cli/main.js";
import { freshPostgres, freshSqlite, prismaClientFor } from "./support/db.js";
import { startProxy, type Proxy } from "./support/tcp-proxy.js";
import { PG_ADMIN_URL, needPostgres } from "./support/services.js";
import { startTestSmtp } from "../testkit/smtp.js";

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

interface Probe {
  readonly code: number;
  readonly body: HealthReport;
}

async function probe(base: string, route: "/healthz" | "/readyz"): Promise<Probe> {
  const res = await fetch(base + route);
  assert.match(res.headers.get("content-type") ?? "", /application\/json/);
  return { code: res.status, body: (await res.json()) as HealthReport };
}

/** Probe until `cond` holds (returns the probe and how long it took), or fail with the last body. */
async function probeUntil(base: string, route: "/healthz" | "/readyz", cond: (p: Probe) => boolean, timeoutMs = 12_000): Promise<Probe & { afterMs: number }> {
  const started = Date.now();
  let last: Probe | null = null;
  while (Date.now() - started < timeoutMs) {
    last = await probe(base, route);
    if (cond(last)) return { ...last, afterMs: Date.now() - started };
    await sleep(100);
  }
  assert.fail(`${route} did not reach the expected state within ${timeoutMs} ms; last: ${last?.code} ${JSON.stringify(last?.body)}`);
}

const allOk = (p: Probe) => p.code === 200 && p.body.status === "ok";
const failing = (check: string) => (p: Probe) => p.code === 503 && p.body.status === "fail" && p.body.checks[check]?.ok === false;

for (const dialect of ["sqlite", "postgresql"] as const) {
  describe(`health endpoints on ${dialect}`, () => {
    it("library: ok; MTA down names mta; database down names database; stopping names relay; /healthz 200 while the loop turns", async (t: TestContext) => {
      if (dialect === "postgresql" && !(await needPostgres(t))) return;
      const fx = dialect === "sqlite" ? await freshSqlite(t) : await freshPostgres(t);
      const smtp = await startTestSmtp();
      const prisma: any = (await prismaClientFor(fx.url)).$extends(mailOutbox({ defaultFrom: "app@example.com" }));
      let proxy: Proxy | null = null;
      let databaseUrl = fx.url;
      if (dialect === "postgresql") {
        proxy = await startProxy(new URL(PG_ADMIN_URL));
        const u = new URL(fx.url);
        u.host = `127.0.0.1:${proxy.port}`;
        databaseUrl = u.toString();
      }
      const registry = new Registry();
      const relay = createRelay({ databaseUrl, transport: smtp.url, pollIntervalMs: 100, metricsRegistry: registry, logger: false, connectRetries: 0 });
      const ops = await serveOperations({ port: 0, registry, health: async () => (await relay.health()).live, ready: async () => (await relay.health()).ready });
      t.after(async () => {
        await relay.stop({ deadlineMs: 1000 }).catch(() => {});
        await ops.close();
        await prisma.$disconnect();
        await smtp.close();
        await proxy?.close();
      });
      assert.deepEqual(ops.paths, ["/metrics", "/healthz", "/readyz"]);

      // Not started: not ready, not live.
      const before = await probe(ops.url, "/readyz");
      assert.equal(before.code, 503);
      assert.match(before.body.checks.relay!.detail, /not running \(idle\)/);
      assert.equal((await probe(ops.url, "/healthz")).code, 503);

      await relay.start();
      const ready = await probeUntil(ops.url, "/readyz", allOk);
      assert.deepEqual(Object.keys(ready.body.checks).sort(), ["database", "mta", "relay", "tables"]);
      const live = await probe(ops.url, "/healthz");
      assert.equal(live.code, 200);
      assert.match(live.body.checks.loop!.detail, /turned \d+ ms ago/);
      const metrics = await fetch(`${ops.url}/metrics`);
      assert.equal(metrics.status, 200);
      assert.match(await metrics.text(), /mail_outbox_/);
      assert.equal((await fetch(`${ops.url}/nothing`)).status, 404);

      // MTA down: /readyz names it (within the 5 s cache plus a probe), the database stays ok, /healthz stays 200.
      await smtp.refuseConnections();
      const mtaDown = await probeUntil(ops.url, "/readyz", failing("mta"));
      assert.match(mtaDown.body.checks.mta!.detail, /MTA unreachable/);
      assert.equal(mtaDown.body.checks.database!.ok, true);
      assert.ok(mtaDown.afterMs < 9000, `MTA outage seen after ${mtaDown.afterMs} ms`);
      assert.equal((await probe(ops.url, "/healthz")).code, 200);
      t.diagnostic(`${dialect}: MTA outage on /readyz after ${mtaDown.afterMs} ms`);
      await smtp.acceptConnections();
      const mtaBack = await probeUntil(ops.url, "/readyz", allOk);
      t.diagnostic(`${dialect}: MTA back on /readyz after ${mtaBack.afterMs} ms`);

      // PostgreSQL cut off: /readyz names the database; the loop still turns (backing off).
      if (proxy) {
        await proxy.down();
        const dbDown = await probeUntil(ops.url, "/readyz", failing("database"));
        assert.match(dbDown.body.checks.database!.detail, /does not answer/);
        assert.match(dbDown.body.checks.tables!.detail, /not checked/);
        t.diagnostic(`postgresql: database outage on /readyz after ${dbDown.afterMs} ms: ${dbDown.body.checks.database!.detail}`);
        await sleep(1500);
        assert.equal((await probe(ops.url, "/healthz")).code, 200);
        await proxy.up();
        const dbBack = await probeUntil(ops.url, "/readyz", allOk);
        t.diagnostic(`postgresql: database back on /readyz after ${dbBack.afterMs} ms`);
      }

      // Stopping with a hand-off in flight (the SMTP server stalls the data): /readyz 503 naming the relay; /healthz stays 200.
      smtp.setFaults((ctx) => (ctx.phase === "data" ? { stallMs: 2000 } : undefined));
      await prisma.outboxEmail.enqueue({ to: "stall@example.com", subject: "stall", text: "x" });
      const deadline = Date.now() + 10_000;
      while (smtp.mailFroms.length === 0 && Date.now() < deadline) await sleep(20);
      assert.ok(smtp.mailFroms.length > 0, "the hand-off started");
      const stopping = relay.stop({ deadlineMs: 5000 });
      const whileStopping = await probe(ops.url, "/readyz");
      assert.equal(whileStopping.code, 503);
      assert.match(whileStopping.body.checks.relay!.detail, /^stopping/);
      assert.equal((await probe(ops.url, "/healthz")).code, 200);
      const counts = await stopping;
      assert.equal(counts.sent, 1);
      const stopped = await probe(ops.url, "/readyz");
      assert.equal(stopped.code, 503);
      assert.match(stopped.body.checks.database!.detail, /relay stopped/);
      assert.equal((await probe(ops.url, "/healthz")).code, 503);
    });

    it("CLI: mail-outbox relay --metrics-port 0 serves /metrics, /healthz and /readyz", async (t: TestContext) => {
      if (dialect === "postgresql" && !(await needPostgres(t))) return;
      const fx = dialect === "sqlite" ? await freshSqlite(t) : await freshPostgres(t);
      const smtp = await startTestSmtp();
      t.after(() => smtp.close());
      const err = liveCollector();
      const signals = new EventEmitter();
      const env = { DATABASE_URL: fx.url, MAIL_OUTBOX_TRANSPORT: smtp.url, MAIL_OUTBOX_LOG_LEVEL: "info" };
      const running = main(["relay", "--poll", "100ms", "--metrics-port", "0", "--metrics-host", "127.0.0.1"], { stdout: liveCollector(), stderr: err, env, signals: signals as never });
      try {
        const base = await servingUrl(err);
        assert.equal((await probeUntil(base, "/healthz", allOk)).code, 200);
        assert.equal((await probeUntil(base, "/readyz", allOk)).code, 200);
        const ready = await probe(base, "/readyz");
        assert.deepEqual(Object.keys(ready.body.checks).sort(), ["database", "mta", "relay", "tables"]);
        assert.match(await (await fetch(`${base}/metrics`)).text(), /mail_outbox_/);
      } finally {
        signals.emit("SIGTERM");
      }
      assert.equal(await running, 0, err.text());
    });
  });
}

it("CLI: follow-log --metrics-port 0 serves /metrics and /healthz", async (t: TestContext) => {
  const fx = await freshSqlite(t);
  const dir = await mkdtemp(path.join(tmpdir(), "health-follow-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const log = path.join(dir, "mail.log");
  await writeFile(log, "");
  const err = liveCollector();
  const signals = new EventEmitter();
  const running = main(["follow-log", log, "--poll", "50ms", "--metrics-port", "0"], { stdout: liveCollector(), stderr: err, env: { DATABASE_URL: fx.url }, signals: signals as never });
  try {
    const base = await servingUrl(err);
    const live = await probeUntil(base, "/healthz", allOk);
    assert.match(live.body.checks.follower!.detail, /^(starting|the follower's loop turned \d+ ms ago)$/);
    assert.equal((await fetch(`${base}/metrics`)).status, 200);
    assert.equal((await fetch(`${base}/readyz`)).status, 404);
  } finally {
    signals.emit("SIGTERM");
  }
  assert.equal(await running, 0, err.text());
});

// ---------------------------------------------------------------------------------------------

function liveCollector() {
  const chunks: string[] = [];
  return {
    write(chunk: string | Uint8Array) {
      chunks.push(typeof chunk === "string" ? chunk : Buffer.from(chunk).toString("utf8"));
      return true;
    },
    text: () => chunks.join(""),
  };
}

/** The base URL from the "serving metrics" log line on stderr. */
async function servingUrl(err: { text(): string }): Promise<string> {
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    for (const line of err.text().split("\n")) {
      if (!line.includes("serving metrics")) continue;
      const entry = JSON.parse(line) as { metrics: string; endpoints: string[] };
      return entry.metrics.replace(/\/metrics$/, "");
    }
    await sleep(20);
  }
  assert.fail(`no "serving metrics" line on stderr: ${err.text()}`);
}

