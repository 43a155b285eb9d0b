/**
 * Enqueue cost: a business transaction with one insert (`tx.user.create`), alone and with one
 * `tx.outboxEmail.enqueue(mail)`, through Prisma 7 with its driver adapter, on PostgreSQL and
 * SQLite. The two kinds alternate in blocks, so drift hits both alike. Run by ./run.ts in its own
 * process (with tsx: the generated Prisma clients are TypeScript); prints one JSON line.
 *
 *   node --import tsx bench/enqueue-cost.ts '{"dialect":"postgresql","transactions":1000,"block":50}'
 */
import { performance } from "node:perf_hooks";
import { mailOutbox } from "../src/extension.js";
import { freshPostgres, freshSqlite, prismaClientFor } from "../test/support/db.js";
import { mailTemplate } from "./mail.js";

export interface EnqueueCostConfig {
  readonly dialect: "postgresql" | "sqlite";
  /** Transactions of each kind. */
  readonly transactions: number;
  /** Transactions of one kind before switching to the other. */
  readonly block: number;
}

export interface EnqueueCostResult {
  readonly dialect: "postgresql" | "sqlite";
  /** Median ms of one transaction. */
  readonly aloneMs: number;
  readonly withMailMs: number;
  readonly ratio: number;
  readonly meanAloneMs: number;
  readonly meanWithMailMs: number;
  /** Mails in the outbox afterwards (must equal `transactions`). */
  readonly mails: number;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;

export async function enqueueCost(cfg: EnqueueCostConfig): Promise<EnqueueCostResult> {
  const fx = cfg.dialect === "postgresql" ? await freshPostgres() : await freshSqlite();
  const base = await prismaClientFor(fx.url);
  const prisma = base.$extends(mailOutbox({ messageIdDomain: "bench.example.com" }));
  const t = await mailTemplate();
  const alone: number[] = [];
  const withMail: number[] = [];
  let n = 0;
  const one = async (mail: boolean) => {
    const email = `user${n++}@example.net`;
    const t0 = performance.now();
    await prisma.$transaction(async (tx) => {
      await tx.user.create({ data: { email, name: "Ann" } });
      if (mail) await tx.outboxEmail.enqueue({ ...t.input, to: email });
    });
    (mail ? withMail : alone).push(performance.now() - t0);
  };
  try {
    // Warm up: connections, the query compiler's caches, JIT.
    for (let i = 0; i < 50; i++) await one(i % 2 === 0);
    alone.length = 0;
    withMail.length = 0;
    for (let done = 0; done < cfg.transactions; done += cfg.block) {
      const k = Math.min(cfg.block, cfg.transactions - done);
      for (let i = 0; i < k; i++) await one(false);
      for (let i = 0; i < k; i++) await one(true);
    }
    const mails = await prisma.outboxEmail.count();
    return {
      dialect: cfg.dialect,
      aloneMs: median(alone),
      withMailMs: median(withMail),
      ratio: median(withMail) / median(alone),
      meanAloneMs: mean(alone),
      meanWithMailMs: mean(withMail),
      mails: mails - 25, // the warm-up enqueued 25
    };
  } finally {
    await base.$disconnect();
    await fx.cleanup();
  }
}

if (process.argv[1] && import.meta.url.endsWith(process.argv[1].replace(/\\/g, "/").split("/").pop()!)) {
  const cfg = JSON.parse(process.argv[2] ?? "{}") as EnqueueCostConfig;
  enqueueCost(cfg).then(
    (r) => console.log(`ENQUEUE_COST ${JSON.stringify(r)}`),
    (err: unknown) => {
      console.error(err);
      process.exit(1);
    },
  );
}
