/**
 * graphile-worker as users run it for mail: one job per mail, a task that calls nodemailer's
 * pooled SMTP transport (nodemailer.createTransport with the settings our createTransporter uses).
 * Tuned with the batching graphile-worker documents for throughput: a local queue and batched
 * completions.
 */
import { EventEmitter } from "node:events";
import pg from "pg";
import * as graphile from "graphile-worker";
import { quoteIdent } from "../../src/db.js";

import { ADMIN_URL, QUEUE, jobPayload, type JobPayload } from "../stores.js";
import type { MailTemplate } from "../mail.js";
import { nodemailerPool, type CommonSettings, type Hooks, type Producer, type Running } from "./types.js";

export interface GraphileSettings extends CommonSettings {
  readonly schema: string;
  /** `localQueue.size` (-1: off). */
  readonly localQueueSize: number;
  /** `completeJobBatchDelay` in ms (-1: off). */
  readonly completeJobBatchDelay: number;
}

const silent = new graphile.Logger(() => () => {});

export async function runMigrations(schema: string): Promise<void> {
  const pool = new pg.Pool({ connectionString: ADMIN_URL, max: 2 });
  pool.on("error", () => {});
  pool.on("connect", (client) => client.on("error", () => {}));
  try {
    await graphile.runMigrations({ pgPool: pool, schema, logger: silent });
  } finally {
    await pool.end();
  }
}

type AnyFn = (...args: unknown[]) => unknown;

/** Count the jobs each completion statement deletes, once it has committed. */
function hookClient(client: pg.PoolClient, hooks: Hooks): void {
  const query = client.query.bind(client) as unknown as AnyFn;
  (client as unknown as { query: AnyFn }).query = (...args: unknown[]) => {
    const result = query(...args);
    const config = args[0] as { text?: string; values?: unknown[] } | string | undefined;
    const text = typeof config === "string" ? config : config?.text;
    if (text && /^(with j as \(\s*)?delete from .*_private_jobs/i.test(text) && result instanceof Promise) {
      const first = typeof config === "object" ? config.values?.[0] : undefined;
      const n = Array.isArray(first) ? first.length : 1;
      result.then(() => hooks.recorded(n), () => {});
    }
    return result;
  };
}

export async function startGraphile(s: GraphileSettings, hooks: Hooks): Promise<Running> {
  const pool = new pg.Pool({ connectionString: ADMIN_URL, max: s.concurrency + 2, application_name: "mail-outbox bench graphile-worker" });
  pool.on("connect", (client) => {
    client.on("error", () => {});
    hookClient(client, hooks);
  });
  pool.on("error", () => {});
  const transporter = nodemailerPool(s.smtpUrl);
  const events: graphile.WorkerEvents = new EventEmitter() as graphile.WorkerEvents;
  let claimed = false;
  events.on("job:start", () => {
    if (!claimed) {
      claimed = true;
      hooks.claimed();
    }
  });
  const worker: NonNullable<GraphileConfig.Preset["worker"]> = {};
  if (s.localQueueSize > 0) worker.localQueue = { size: s.localQueueSize };
  if (s.completeJobBatchDelay >= 0) worker.completeJobBatchDelay = s.completeJobBatchDelay;
  const runner = await graphile.run({
    pgPool: pool,
    schema: s.schema,
    concurrency: s.concurrency,
    noHandleSignals: true,
    pollInterval: 2000,
    logger: silent,
    events,
    preset: { worker },
    taskList: {
      [QUEUE]: async (payload) => {
        const p = payload as JobPayload;
        await transporter.sendMail({ envelope: { from: p.from, to: [...p.to] }, raw: p.raw });
        hooks.sent(p.mid);
      },
    },
  });
  return {
    async stop() {
      await runner.stop();
      transporter.close();
      await pool.end();
    },
  };
}

/** `add_job()` in its own transaction, as `addJob` does. */
export async function graphileProducer(schema: string, t: MailTemplate, connections: number): Promise<Producer> {
  const pool = new pg.Pool({ connectionString: ADMIN_URL, max: connections, application_name: "mail-outbox bench producer" });
  const text = `SELECT 1 FROM ${quoteIdent(schema)}.add_job($1, $2::json)`;
  return {
    async enqueue(mid) {
      await pool.query({ name: "bench_add_job", text, values: [QUEUE, JSON.stringify(jobPayload(t, mid))] });
    },
    close: () => pool.end(),
  };
}
