/**
 * The application side of the soak: concurrent Prisma transactions that write a business row
 * (`User`) and enqueue mail in the same transaction, through the `mailOutbox()` extension.
 *
 * Mix: single mails; several mails per transaction (enqueueMany, or several enqueue calls);
 * about 10% of transactions roll back after enqueueing; business operations with idempotency keys
 * that are retried (after a commit, after a failed first attempt, and twice at the same time).
 *
 * The ledger records what each transaction did with the Message-IDs enqueue returned, after the
 * transaction ended: committed, rolled back (on purpose), or in doubt (the transaction failed
 * for another reason, e.g. the database restarted during COMMIT; the audit resolves these from the
 * outbox table). Mail of a transaction planned to roll back carries `X-Soak-Op: rollback`, so the
 * MTA side can recognise it.
 */
import { performance } from "node:perf_hooks";
import { DuplicateIdempotencyKeyError } from "../src/errors.js";
import type { EnqueueResult } from "../src/extension.js";
import type { MailInput } from "../src/types.js";
import { OP_HEADER, REFUSED_PREFIX, ROLLBACK_OP, RUN_HEADER } from "./faults.js";

/** What the producer expects the MTA to do with a mail's recipients. */
export interface MailPlan {
  readonly op: string;
  /** Recipients the MTA refuses with 550 (`refused-...`). All of them refused: the mail must end dead. */
  readonly refused: readonly string[];
  readonly recipients: number;
  readonly idempotencyKey: string | null;
}

export interface Ledger {
  readonly committed: Map<string, MailPlan>;
  readonly rolledBack: Map<string, MailPlan>;
  readonly inDoubt: Map<string, MailPlan>;
  /** Idempotency key -> what the producer saw. */
  readonly keys: Map<string, { committed: string | null; refusals: number; variant: string }>;
  readonly ops: Record<string, number>;
  readonly transactions: { committed: number; rolledBack: number; failed: number };
  /** How long transactions took (ms): the longest, and how many took over a second (they hold SQLite's write lock that long). */
  readonly txTime: { max: number; over1s: number };
  /** Enqueued mails, whatever became of their transaction. */
  enqueued: number;
  readonly errors: string[];
  /** Retries of an idempotent operation that were not refused with DuplicateIdempotencyKeyError. */
  readonly idempotencySurprises: string[];
}

export function newLedger(): Ledger {
  return {
    committed: new Map(),
    rolledBack: new Map(),
    inDoubt: new Map(),
    keys: new Map(),
    ops: {},
    transactions: { committed: 0, rolledBack: 0, failed: 0 },
    txTime: { max: 0, over1s: 0 },
    enqueued: 0,
    errors: [],
    idempotencySurprises: [],
  };
}

/** The part of the extended Prisma client the producers use. */
export interface OutboxTx {
  readonly user: { create(args: { data: { email: string; name?: string } }): Promise<unknown> };
  readonly outboxEmail: {
    enqueue(mail: MailInput): Promise<EnqueueResult>;
    enqueueMany(mails: readonly MailInput[]): Promise<EnqueueResult[]>;
  };
}
export interface OutboxClient {
  $transaction<T>(fn: (tx: OutboxTx) => Promise<T>, options?: { maxWait?: number; timeout?: number }): Promise<T>;
}

export interface ProducerOptions {
  readonly client: OutboxClient;
  readonly runTag: string;
  /** Mails to enqueue in all (committed and rolled back). */
  readonly mails: number;
  /** Spread them over this long. */
  readonly windowMs: number;
  readonly workers: number;
  readonly random: () => number;
  readonly signal: AbortSignal;
  readonly ledger: Ledger;
  /** Recipient domain, and whether to use refused recipients (not for Postfix). */
  readonly recipient?: (n: number) => string;
  readonly refusals?: boolean;
  /** Some mails get a second recipient. @default true */
  readonly multiRecipients?: boolean;
}

class PlannedRollback extends Error {
  override name = "PlannedRollback";
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const TX = { maxWait: 15_000, timeout: 30_000 };

export async function runProducers(o: ProducerOptions): Promise<void> {
  const { ledger, random } = o;
  const started = Date.now();
  let opNo = 0;
  const recipient = o.recipient ?? ((n: number) => `user${n}@example.com`);
  const refusals = o.refusals ?? true;
  const multi = o.multiRecipients ?? true;

  const body = (n: number) => {
    const words = 30 + Math.floor(random() * 400);
    const parts: string[] = [`Hello customer ${n},`];
    for (let i = 0; i < words; i++) parts.push(["order", "shipped", "invoice", "thanks", "welcome", "reset", "token", "ünïcödé"][i % 8]!);
    return parts.join(" ");
  };

  /** Mail number `n` of operation `op`, and what the MTA should do with it; `marker`: the transaction will roll back. */
  const mail = (n: number, op: string, marker: boolean, key: string | null): { input: MailInput; plan: MailPlan } => {
    const to: string[] = [recipient(n)];
    const refused: string[] = [];
    const r = random();
    if (refusals && r < 0.01) {
      to.length = 0;
      to.push(`${REFUSED_PREFIX}${n}@example.com`);
      refused.push(to[0]!);
    } else if (refusals && r < 0.05) {
      to.push(`${REFUSED_PREFIX}${n}@example.com`);
      refused.push(to[1]!);
    } else if (multi && r < 0.12) {
      to.push(recipient(n + 1_000_000));
    }
    const input: MailInput = {
      to,
      subject: `Soak ${o.runTag} #${n} (${op})`,
      text: body(n),
      headers: { [RUN_HEADER]: o.runTag, [OP_HEADER]: marker ? ROLLBACK_OP : op },
      metadata: { op, n },
      ...(key !== null ? { idempotencyKey: key } : {}),
      ...(random() < 0.03
        ? { attachments: [{ filename: `receipt-${n}.bin`, content: Buffer.alloc(2000 + Math.floor(random() * 20_000), n % 251) }] }
        : {}),
    };
    return { input, plan: { op, refused, recipients: to.length, idempotencyKey: key } };
  };

  /**
   * Run one transaction; returns "committed" | "rolledBack" | the error. Message-IDs enqueue
   * returned go into the ledger only once the transaction has ended.
   */
  const transaction = async (
    op: string,
    body: (tx: OutboxTx, enqueued: Map<string, MailPlan>) => Promise<void>,
  ): Promise<"committed" | "rolledBack" | Error> => {
    const enqueued = new Map<string, MailPlan>();
    ledger.ops[op] = (ledger.ops[op] ?? 0) + 1;
    const t0 = performance.now();
    const timed = () => {
      const ms = performance.now() - t0;
      ledger.txTime.max = Math.max(ledger.txTime.max, Math.round(ms));
      if (ms > 1000) ledger.txTime.over1s++;
    };
    try {
      await o.client.$transaction(async (tx) => {
        enqueued.clear(); // (Prisma does not re-run the callback, but be safe)
        await body(tx, enqueued);
      }, TX);
      timed();
      for (const [id, plan] of enqueued) ledger.committed.set(id, plan);
      ledger.transactions.committed++;
      return "committed";
    } catch (err) {
      timed();
      if (err instanceof PlannedRollback) {
        for (const [id, plan] of enqueued) ledger.rolledBack.set(id, plan);
        ledger.transactions.rolledBack++;
        return "rolledBack";
      }
      for (const [id, plan] of enqueued) ledger.inDoubt.set(id, plan);
      if (!(err instanceof DuplicateIdempotencyKeyError)) {
        ledger.transactions.failed++;
        if (ledger.errors.length < 50) ledger.errors.push(`${op}: ${err instanceof Error ? `${err.name}: ${err.message}` : String(err)}`.slice(0, 400));
      }
      return err instanceof Error ? err : new Error(String(err));
    }
  };

  const enqueueOne = async (tx: OutboxTx, enqueued: Map<string, MailPlan>, m: { input: MailInput; plan: MailPlan }) => {
    const r = await tx.outboxEmail.enqueue(m.input);
    ledger.enqueued++;
    enqueued.set(r.messageId, m.plan);
  };

  const one = async (n: number): Promise<void> => {
    const email = `${o.runTag}-${n}@example.com`;
    const r = random();
    if (r < 0.5) {
      await transaction("single", async (tx, enq) => {
        await tx.user.create({ data: { email, name: `Customer ${n}` } });
        await enqueueOne(tx, enq, mail(n, "single", false, null));
      });
    } else if (r < 0.62) {
      const k = 2 + Math.floor(random() * 3);
      const mails = Array.from({ length: k }, (_, i) => mail(n * 10 + i, "many", false, null));
      await transaction("enqueueMany", async (tx, enq) => {
        await tx.user.create({ data: { email } });
        const results = await tx.outboxEmail.enqueueMany(mails.map((m) => m.input));
        ledger.enqueued += k;
        results.forEach((res, i) => enq.set(res.messageId, mails[i]!.plan));
      });
    } else if (r < 0.67) {
      await transaction("several", async (tx, enq) => {
        await tx.user.create({ data: { email } });
        for (let i = 0; i < 2 + Math.floor(random() * 2); i++) await enqueueOne(tx, enq, mail(n * 10 + i, "several", false, null));
      });
    } else if (r < 0.77) {
      await transaction("rollback", async (tx, enq) => {
        await tx.user.create({ data: { email } });
        for (let i = 0; i < 1 + Math.floor(random() * 2); i++) await enqueueOne(tx, enq, mail(n * 10 + i, "rollback", true, null));
        throw new PlannedRollback("the business operation failed after enqueueing");
      });
    } else {
      await idempotent(n, email);
    }
  };

  /** A business operation with an idempotency key, retried. */
  const idempotent = async (n: number, email: string): Promise<void> => {
    const key = `${o.runTag}:order:${n}`;
    const v = random();
    const variant = v < 0.4 ? "commit-then-retry" : v < 0.7 ? "fail-then-retry" : "concurrent";
    const entry = { committed: null as string | null, refusals: 0, variant };
    ledger.keys.set(key, entry);
    const attempt = async (i: number, marker: boolean) => {
      let mine: string | null = null;
      const res = await transaction(`idempotent ${variant}`, async (tx, enq) => {
        await tx.user.create({ data: { email: `${email}.${i}` } });
        const m = mail(n, "idempotent", marker, key);
        try {
          await enqueueOne(tx, enq, m);
        } catch (err) {
          if (err instanceof DuplicateIdempotencyKeyError) entry.refusals++;
          throw err;
        }
        mine = [...enq.keys()][0] ?? null;
        if (marker) throw new PlannedRollback("first attempt fails after enqueueing");
      });
      if (res === "committed") entry.committed = mine;
      return res;
    };
    if (variant === "commit-then-retry") {
      const first = await attempt(1, false);
      const again = await attempt(2, false);
      if (first === "committed" && again === "committed") ledger.idempotencySurprises.push(`${key}: the retry committed a second mail`);
    } else if (variant === "fail-then-retry") {
      await attempt(1, true);
      await attempt(2, false);
    } else {
      const [a, b] = await Promise.all([attempt(1, false), attempt(2, false)]);
      if (a === "committed" && b === "committed") ledger.idempotencySurprises.push(`${key}: both concurrent attempts committed`);
    }
  };

  const worker = async () => {
    while (!o.signal.aborted && ledger.enqueued < o.mails) {
      // Pace: stay on the line from 0 to `mails` over `windowMs`.
      const due = (o.mails * (Date.now() - started)) / o.windowMs;
      if (ledger.enqueued >= due) {
        await sleep(Math.min(200, Math.max(5, ((ledger.enqueued + 1 - due) * o.windowMs) / o.mails)));
        continue;
      }
      const failedBefore = ledger.transactions.failed;
      await one(++opNo);
      // An application would not hammer a database that just failed it: pause a little.
      if (ledger.transactions.failed > failedBefore) await sleep(250);
    }
  };
  await Promise.all(Array.from({ length: o.workers }, worker));
}
