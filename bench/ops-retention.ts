/**
 * Retention's cost to the claim path: a relay drains a steady stream of new mail to an SMTP sink
 * (the repository's smtp-server, in this process) while its retention runner deletes a large
 * table of old sent mail (each with its attempt-log line) in batches, compared with the same
 * relay and stream without retention.
 *
 * Standalone:
 *   node --import tsx bench/ops-retention.ts                       # PostgreSQL 300k old rows, SQLite 50k
 *   node --import tsx bench/ops-retention.ts --pg-rows 1000000 --sqlite-rows 100000 --rate 200 --baseline 20
 *   node --import tsx bench/ops-retention.ts --only postgresql
 *
 * Measured per phase (baseline: no retention; retention: while the runner purges, with its default
 * batch of 500 rows and 50 ms pause, and no cap per turn so it purges the whole time):
 * - commit -> hand-off recorded: from the producer's commit of a mail (a worker thread, one
 *   transaction per mail at a fixed rate) to the relay's `sent` event for it;
 * - claim statement: the duration of each `claim()` call of the relay;
 * - the purge rate (rows of mail_outbox per second; their attempt rows go with them).
 * Prints the figures and writes them to /tmp/issue/figures-retention.md (or --out FILE).
 * Needs PostgreSQL at TEST_POSTGRES_URL for the PostgreSQL part.
 */
import { Worker } from "node:worker_threads";
import { performance } from "node:perf_hooks";
import { writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { Registry, type Counter } from "prom-client";
import { openDatabase } from "../src/db.js";
import { createRelay } from "../src/relay.js";
import type { Store } from "../src/store.js";
import { createLogger, silentLogger } from "../src/logger.js";
import { appendFileSync } from "node:fs";
import { startTestSmtp } from "../testkit/smtp.js";
import { freshStore, withAdmin, type Store as BenchStore } from "./stores.js";
import { quoteIdent } from "../src/db.js";
import { percentile, max, fmt } from "./stats.js";

const args = process.argv.slice(2);
function arg(name: string, fallback: string): string {
  const i = args.indexOf(`--${name}`);
  return i >= 0 && args[i + 1] !== undefined ? args[i + 1]! : fallback;
}
const PG_ROWS = Number(arg("pg-rows", "300000"));
const SQLITE_ROWS = Number(arg("sqlite-rows", "50000"));
const RATE = Number(arg("rate", "100"));
const BASELINE_S = Number(arg("baseline", "20"));
const MAX_PURGE_S = Number(arg("max-purge", "240"));
const ONLY = arg("only", "");
const OUT = arg("out", "/tmp/issue/figures-retention.md");
/** Retention tuning under test (the relay's defaults unless given). */
const BATCH = args.includes("--batch") ? Number(arg("batch", "500")) : undefined;
/** --log FILE: the relay's log lines (level debug) appended to FILE, to see what a slow hand-off waited for. */
const LOG = args.includes("--log") ? arg("log", "") : "";
const PAUSE = args.includes("--pause") ? Number(arg("pause", "50")) : undefined;
const RAW_BYTES = 1024;
const DAY = 86_400_000;

interface Phase {
  readonly name: string;
  readonly seconds: number;
  readonly handoffMs: number[];
  readonly claimMs: number[];
  readonly produced: number;
  readonly purged: number;
  /** Durations of the purge batches (one transaction each). */
  readonly batchMs: number[];
}

/** The producer: a worker thread committing one mail per transaction at `rate`/s, posting each Message-ID with its commit time. */
const PRODUCER = `
const { parentPort, workerData } = require("node:worker_threads");
const { randomUUID } = require("node:crypto");
const { performance } = require("node:perf_hooks");
const req = require("node:module").createRequire(workerData.base);
const { url, dialect, rate, rawBytes } = workerData;
const now = () => performance.timeOrigin + performance.now();
let stop = false;
parentPort.on("message", (m) => { if (m === "stop") stop = true; });
const body = Buffer.alloc(rawBytes, 120);
(async () => {
  let insert, close;
  if (dialect === "sqlite") {
    const Database = req("better-sqlite3");
    const db = new Database(url.slice(5));
    db.pragma("journal_mode = WAL");
    db.pragma("busy_timeout = 5000");
    const st = db.prepare("INSERT INTO mail_outbox (id, message_id, status, priority, envelope_from, envelope_to, subject, raw, size, attempts, max_attempts, send_at, next_attempt_at, created_at, updated_at) VALUES (?, ?, 'pending', 0, 'shop@example.com', '[\\"customer@example.net\\"]', 'bench', ?, ?, 0, 25, ?, ?, ?, ?)");
    insert = async (id, mid, raw) => { const t = new Date().toISOString().replace("Z", "+00:00"); st.run(id, mid, raw, raw.length, t, t, t, t); };
    close = async () => db.close();
  } else {
    const pg = req("pg");
    const u = new URL(url);
    const schema = u.searchParams.get("schema");
    u.searchParams.delete("schema");
    const client = new pg.Client({ connectionString: u.toString(), options: "-c search_path=" + schema });
    await client.connect();
    insert = async (id, mid, raw) => client.query("INSERT INTO mail_outbox (id, message_id, status, priority, envelope_from, envelope_to, subject, raw, size, attempts, max_attempts, send_at, next_attempt_at, created_at, updated_at) VALUES ($1, $2, 'pending', 0, 'shop@example.com', '[\\"customer@example.net\\"]'::jsonb, 'bench', $3, $4, 0, 25, now(), now(), now(), now())", [id, mid, raw, raw.length]);
    close = async () => client.end();
  }
  const start = now();
  let n = 0;
  while (!stop) {
    const due = start + (n * 1000) / rate;
    const wait = due - now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    const id = randomUUID();
    const mid = "<" + id + "@bench.example.com>";
    const raw = Buffer.concat([Buffer.from("Message-ID: " + mid + "\\r\\nSubject: bench\\r\\n\\r\\n"), body]);
    await insert(id, mid, raw);
    parentPort.postMessage({ mid, at: now() });
    n++;
  }
  await close();
  parentPort.postMessage({ done: n });
})().catch((e) => { parentPort.postMessage({ error: String(e && e.stack || e) }); });
`;

/** Load `n` old sent rows (60 days old, 1 ms apart, as a real history would be) and one attempt row each. */
async function loadOld(store: BenchStore, n: number): Promise<number> {
  const started = performance.now();
  const old = new Date(Date.now() - 60 * DAY);
  if (store.contender === "relay-pg") {
    const s = quoteIdent(store.schema);
    await withAdmin(async (c) => {
      await c.query(
        `INSERT INTO ${s}.mail_outbox (id, message_id, status, priority, envelope_from, envelope_to, subject, raw, size, attempts, max_attempts,
           send_at, next_attempt_at, created_at, updated_at, sent_at, mta_response, mta_queue_id)
         SELECT id, '<' || id || '@old.example.com>', 'sent', 0, 'shop@example.com', '["customer@example.net"]'::jsonb, 'old',
                convert_to(repeat('x', $2::int), 'UTF8'), $2::int, 1, 25, t, t, t, t, t, '250 2.0.0 Ok: queued', 'Q' || i
         FROM (SELECT gen_random_uuid() AS id, i, $1::timestamptz + i * interval '1 millisecond' AS t FROM generate_series(1, $3::int) i) g`,
        [old, RAW_BYTES, n],
      );
      await c.query(
        `INSERT INTO ${s}.mail_outbox_attempt (id, email_id, attempt, relay, started_at, duration_ms, outcome, response, response_code, queue_id)
         SELECT gen_random_uuid(), id, 1, 'old-relay', updated_at, 12, 'accepted', '250 2.0.0 Ok: queued', 250, mta_queue_id FROM ${s}.mail_outbox`,
      );
      await c.query(`VACUUM ANALYZE ${s}.mail_outbox`);
      await c.query(`VACUUM ANALYZE ${s}.mail_outbox_attempt`);
    });
  } else {
    const db = await openDatabase(store.url);
    if (db.dialect !== "sqlite") throw new Error("expected SQLite");
    try {
      const mail = db.db.prepare(
        `INSERT INTO mail_outbox (id, message_id, status, priority, envelope_from, envelope_to, subject, raw, size, attempts, max_attempts,
           send_at, next_attempt_at, created_at, updated_at, sent_at, mta_response, mta_queue_id)
         VALUES (?, ?, 'sent', 0, 'shop@example.com', '["customer@example.net"]', 'old', ?, ?, 1, 25, ?, ?, ?, ?, ?, '250 2.0.0 Ok: queued', ?)`,
      );
      const attempt = db.db.prepare(
        `INSERT INTO mail_outbox_attempt (id, email_id, attempt, relay, started_at, duration_ms, outcome, response, response_code, queue_id)
         VALUES (?, ?, 1, 'old-relay', ?, 12, 'accepted', '250 2.0.0 Ok: queued', 250, ?)`,
      );
      const raw = Buffer.alloc(RAW_BYTES, 120);
      db.db.transaction(() => {
        for (let i = 0; i < n; i++) {
          const t = new Date(old.getTime() + i).toISOString().replace("Z", "+00:00");
          const id = crypto.randomUUID();
          mail.run(id, `<${id}@old.example.com>`, raw, RAW_BYTES, t, t, t, t, t, `Q${i}`);
          attempt.run(crypto.randomUUID(), id, t, `Q${i}`);
        }
      })();
      db.db.exec("ANALYZE");
    } finally {
      await db.close();
    }
  }
  return (performance.now() - started) / 1000;
}

/** A store whose `claim()` calls are timed into `claimMs.current`, and its `purgeBatch()` calls into `claimMs.purge`. */
function timedStore(store: Store, claimMs: { current: number[]; purge: number[] }): Store {
  return new Proxy(store, {
    get(target, prop, receiver) {
      const v = Reflect.get(target, prop, receiver) as unknown;
      if (typeof v !== "function") return v;
      if (prop === "claim" || prop === "purgeBatch") {
        const into = prop === "claim" ? "current" : "purge";
        return async (...a: unknown[]) => {
          const t0 = performance.now();
          try {
            return await (v as (...x: unknown[]) => Promise<unknown>).apply(target, a);
          } finally {
            claimMs[into].push(performance.now() - t0);
          }
        };
      }
      return (v as (...x: unknown[]) => unknown).bind(target);
    },
  });
}

async function run(dialect: "postgresql" | "sqlite", rows: number): Promise<{ dialect: string; rows: number; loadS: number; phases: Phase[] }> {
  const store = await freshStore(dialect === "postgresql" ? "relay-pg" : "relay-sqlite");
  const smtp = await startTestSmtp({ capture: "count" });
  try {
    console.error(`${dialect}: loading ${rows} old sent rows...`);
    const loadS = await loadOld(store, rows);
    console.error(`${dialect}: loaded in ${fmt(loadS, 1)} s`);
    const base = createRequire(import.meta.url).resolve("../package.json");
    const producer = new Worker(PRODUCER, { eval: true, workerData: { url: store.url, dialect, rate: RATE, rawBytes: RAW_BYTES, base } });
    const committed = new Map<string, number>();
    let produced = 0;
    let producerError: string | null = null;
    const producerDone = new Promise<void>((resolve) =>
      producer.on("message", (m: { mid?: string; at?: number; done?: number; error?: string }) => {
        if (m.mid !== undefined) {
          committed.set(m.mid, m.at!);
          produced++;
        } else if (m.error !== undefined) {
          producerError = m.error;
          resolve();
        } else if (m.done !== undefined) resolve();
      }),
    );
    const phases: Phase[] = [];
    const claimMs = { current: [] as number[], purge: [] as number[] };
    for (const withRetention of [false, true]) {
      const db = await openDatabase(store.url, { busyTimeoutMs: 100 });
      const registry = new Registry();
      const relay = createRelay({
        db: timedStore(db, claimMs) as unknown as typeof db,
        transport: `${smtp.url}`,
        logger: LOG ? createLogger({ env: { MAIL_OUTBOX_LOG_LEVEL: "debug", MAIL_OUTBOX_LOG_FORMAT: "json" }, write: (l) => appendFileSync(LOG, l) }) : silentLogger(),
        metricsRegistry: registry,
        pollIntervalMs: 100,
        gaugeIntervalMs: 0,
        ...(withRetention ? { retention: { sent: "30d", intervalMs: 1000, maxPerTurn: 100_000_000, ...(BATCH !== undefined ? { batchSize: BATCH } : {}), ...(PAUSE !== undefined ? { pauseMs: PAUSE } : {}) } } : {}),
      });
      const handoffMs: number[] = [];
      // Only mail committed while this relay runs (not the backlog left between the phases).
      let phaseStart = Number.POSITIVE_INFINITY;
      relay.on("sent", (e) => {
        const at = committed.get(e.messageId);
        if (at !== undefined && at >= phaseStart) {
          handoffMs.push(performance.timeOrigin + performance.now() - at);
          committed.delete(e.messageId);
        }
      });
      claimMs.current = [];
      claimMs.purge = [];
      const purgedMetric = () => {
        const m = registry.getSingleMetric("mail_outbox_purged_total") as Counter<"status"> | undefined;
        return m ? m.get().then((v) => v.values.reduce((s, x) => s + x.value, 0)) : Promise.resolve(0);
      };
      await relay.start();
      phaseStart = performance.timeOrigin + performance.now();
      const producedBefore = produced;
      const t0 = performance.now();
      if (!withRetention) {
        await new Promise((r) => setTimeout(r, BASELINE_S * 1000));
      } else {
        // Until every old row is gone (or the cap).
        while ((await purgedMetric()) < rows && performance.now() - t0 < MAX_PURGE_S * 1000) await new Promise((r) => setTimeout(r, 200));
      }
      const seconds = (performance.now() - t0) / 1000;
      const purged = await purgedMetric();
      const claims = claimMs.current;
      const batchMs = claimMs.purge;
      await relay.stop({ deadlineMs: 5000 });
      await db.close();
      phases.push({ name: withRetention ? "retention purging" : "baseline", seconds, handoffMs, claimMs: claims, produced: produced - producedBefore, purged, batchMs });
      console.error(`${dialect}: ${phases.at(-1)!.name}: ${fmt(seconds, 1)} s, ${handoffMs.length} handed over, ${purged} purged`);
    }
    producer.postMessage("stop");
    await producerDone;
    await producer.terminate();
    if (producerError) throw new Error(`producer failed: ${producerError}`);
    return { dialect, rows, loadS, phases };
  } finally {
    await smtp.close();
    await store.cleanup();
  }
}

function row(dialect: string, p: Phase): string {
  const h = p.handoffMs;
  const c = p.claimMs;
  const rate = p.purged > 0 ? `${fmt(p.purged / p.seconds)} rows/s (${p.purged} in ${fmt(p.seconds, 1)} s)` : "-";
  const b = p.batchMs.length > 0 ? `${p.batchMs.length}: ${fmt(percentile(p.batchMs, 50), 1)} / ${fmt(percentile(p.batchMs, 99), 1)} / ${fmt(max(p.batchMs), 1)}` : "-";
  return `| ${dialect} | ${p.name} | ${h.length} | ${fmt(percentile(h, 50), 1)} | ${fmt(percentile(h, 99), 1)} | ${fmt(max(h), 1)} | ${c.length} | ${fmt(percentile(c, 50), 2)} | ${fmt(percentile(c, 99), 2)} | ${fmt(max(c), 1)} | ${rate} | ${b} |`;
}

const results = [];
for (const [dialect, rows] of [["postgresql", PG_ROWS], ["sqlite", SQLITE_ROWS]] as const) {
  if (ONLY && ONLY !== dialect) continue;
  results.push(await run(dialect, rows));
}
const lines = [
  `Retention impact on the claim path (bench/ops-retention.ts, ${new Date().toISOString()}; 2 shared cores, other work running).`,
  `Producer: one mail per transaction at ${RATE}/s (worker thread); relay defaults but pollIntervalMs 100, draining to the in-process smtp-server;`,
  `retention { sent: "30d" } with batches of ${BATCH ?? "500 (default)"} rows, a pause of ${PAUSE ?? "50 (default)"} ms, and no cap per turn, so it purges for the whole phase.`,
  "",
  "| database | phase | mails | commit->sent p50 ms | p99 ms | max ms | claims | claim() p50 ms | p99 ms | max ms | purge rate | purge batches: p50 / p99 / max ms |",
  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
  ...results.flatMap((r) => r.phases.map((p) => row(`${r.dialect} (${r.rows} old rows, loaded in ${fmt(r.loadS, 1)} s)`, p))),
  "",
];
const text = lines.join("\n");
console.log(text);
writeFileSync(OUT, text);
console.error(`written to ${OUT}`);
