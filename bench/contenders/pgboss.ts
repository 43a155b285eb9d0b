/**
 * pg-boss as users run it for mail: one job per mail; workers fetch a batch and send each job
 * through nodemailer's pooled SMTP transport (the settings our createTransporter uses). pg-boss 10 has
 * no LISTEN: workers poll, at most every 0.5 s (its minimum), and only wait when a fetch came
 * back quickly.
 */
import pg from "pg";
import PgBoss from "pg-boss";

import { ADMIN_URL, QUEUE, jobPayload, type JobPayload } from "../stores.js";
import { newMessageId, type MailTemplate } from "../mail.js";
import { nodemailerPool, type CommonSettings, type Hooks, type Producer, type Running } from "./types.js";

export interface PgBossSettings extends CommonSettings {
  readonly schema: string;
  /** How many `work()` loops. */
  readonly workers: number;
  /** Jobs per fetch, per worker; the jobs of one fetch are sent in parallel. */
  readonly batchSize: number;
  readonly pollingIntervalSeconds: number;
}

function bossOn(pool: pg.Pool, schema: string, onComplete?: (n: number) => void): PgBoss {
  const db = {
    async executeSql(text: string, values: unknown[]) {
      const r = await pool.query(text, values);
      if (onComplete && text.includes("SET completed_on = now()")) onComplete(Number((r.rows[0] as { count?: string } | undefined)?.count ?? 0));
      return r;
    },
  };
  const boss = new PgBoss({ db, schema, supervise: false, schedule: false, migrate: false });
  boss.on("error", () => {});
  return boss;
}

export async function installPgBoss(schema: string): Promise<void> {
  const boss = new PgBoss({ connectionString: ADMIN_URL, schema, supervise: false, schedule: false, migrate: true, max: 2 });
  boss.on("error", () => {});
  await boss.start();
  try {
    await boss.createQueue(QUEUE);
  } finally {
    await boss.stop({ graceful: false, wait: true });
  }
}

export async function loadPgBoss(schema: string, t: MailTemplate, n: number): Promise<void> {
  const pool = new pg.Pool({ connectionString: ADMIN_URL, max: 1 });
  const boss = bossOn(pool, schema);
  try {
    await boss.start();
    for (let i = 0; i < n; i += 2000) {
      const jobs = Array.from({ length: Math.min(2000, n - i) }, () => ({ name: QUEUE, data: jobPayload(t, newMessageId()) as unknown as object }));
      await boss.insert(jobs);
    }
  } finally {
    await boss.stop({ graceful: false, wait: true });
    await pool.end();
  }
}

export async function startPgBoss(s: PgBossSettings, hooks: Hooks): Promise<Running> {
  const pool = new pg.Pool({ connectionString: ADMIN_URL, max: Math.max(4, s.workers + 2), application_name: "mail-outbox bench pg-boss" });
  pool.on("error", () => {});
  const boss = bossOn(pool, s.schema, (n) => hooks.recorded(n));
  await boss.start();
  const transporter = nodemailerPool(s.smtpUrl);
  let claimed = false;
  for (let w = 0; w < s.workers; w++) {
    await boss.work<JobPayload>(QUEUE, { batchSize: s.batchSize, pollingIntervalSeconds: s.pollingIntervalSeconds }, async (jobs) => {
      if (!claimed) {
        claimed = true;
        hooks.claimed();
      }
      await Promise.all(
        jobs.map(async (job) => {
          const p = job.data;
          await transporter.sendMail({ envelope: { from: p.from, to: [...p.to] }, raw: p.raw });
          hooks.sent(p.mid);
        }),
      );
    });
  }
  return {
    async stop() {
      await boss.stop({ graceful: true, wait: true, timeout: 10_000 });
      transporter.close();
      await pool.end();
    },
  };
}

/** `send()` in its own transaction. */
export async function pgBossProducer(schema: string, t: MailTemplate, connections: number): Promise<Producer> {
  const pool = new pg.Pool({ connectionString: ADMIN_URL, max: connections, application_name: "mail-outbox bench producer" });
  const boss = bossOn(pool, schema);
  await boss.start();
  return {
    async enqueue(mid) {
      await boss.send(QUEUE, jobPayload(t, mid) as unknown as object);
    },
    async close() {
      await boss.stop({ graceful: false, wait: true });
      await pool.end();
    },
  };
}
