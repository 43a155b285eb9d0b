/**
 * Compose before the transaction (issue 13, item 4): what `tx.outboxEmail.enqueue(composed)` adds to a
 * Prisma 7 interactive transaction with one business insert, against `enqueue(input)` and
 * graphile-worker's `add_job`. The same setup as bench/enqueue-compare.ts (driver adapter
 * @prisma/adapter-pg, the tests' generated client, the bench mail), fewer kinds:
 *
 * | kind | what else the transaction does |
 * | --- | --- |
 * | `alone` | nothing |
 * | `enqueue` | `tx.outboxEmail.enqueue(mail)` (composes in the transaction) |
 * | `enqueueComposed` | `tx.outboxEmail.enqueue(composed)`, `composed = await prisma.outboxEmail.compose(mail)` before the transaction opened |
 * | `create` | `tx.outboxEmail.create` of that row (its data built before the transaction): enqueue(composed) without the extension |
 * | `add_job` | graphile-worker's `add_job('send_mail', $payload::json)` through `tx.$executeRawUnsafe` |
 *
 * The kinds alternate in blocks (the order rotates each round). CPU: this Node process (the compose
 * before the transaction taken out) and the transaction's PostgreSQL backend (/proc ticks).
 *
 *   node --import tsx bench/enqueue-composed.ts                   # 2,000 per kind after 100 warm-up
 *   node --import tsx bench/enqueue-composed.ts --iterations 500
 *
 * Prints Markdown and one `ENQUEUE_COMPOSED {json}` line.
 */
import { readFileSync } from "node:fs";
import os from "node:os";
import { performance } from "node:perf_hooks";
import { parseArgs } from "node:util";
import pg from "pg";
import { quoteIdent } from "../src/db.js";
import { mailOutbox, type ComposedOutboxMail } from "../src/extension.js";
import { freshPostgres, prismaClientFor } from "../test/support/db.js";
import { runMigrations } from "./contenders/graphile.js";
import { mailTemplate, MESSAGE_ID_DOMAIN } from "./mail.js";
import { ADMIN_URL, QUEUE, withAdmin } from "./stores.js";

const KINDS = ["alone", "enqueue", "enqueueComposed", "create", "add_job"] as const;
type Kind = (typeof KINDS)[number];
interface Dist {
  readonly median: number;
  readonly p99: number;
  readonly mean: number;
}

function dist(xs: number[]): Dist {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return { median: s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2, p99: s[Math.min(s.length - 1, Math.floor(0.99 * s.length))]!, mean: s.reduce((a, b) => a + b, 0) / s.length };
}

async function run(iterations: number, block = 50, warmup = 100) {
  const fx = await freshPostgres();
  const gwSchema = `${fx.schema}_gw`;
  const appName = `bench enqueue-composed ${process.pid}`;
  const base = await prismaClientFor(`${fx.url}&application_name=${encodeURIComponent(appName)}`);
  const admin = new pg.Client({ connectionString: ADMIN_URL });
  await admin.connect();
  const backendTicks = async (): Promise<number> => {
    const { rows } = await admin.query<{ pid: number }>(`SELECT pid FROM pg_stat_activity WHERE application_name = $1`, [appName]);
    let ticks = 0;
    for (const { pid } of rows) {
      try {
        const stat = readFileSync(`/proc/${pid}/stat`, "latin1");
        const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
        ticks += Number(f[11]) + Number(f[12]);
      } catch {
        // gone
      }
    }
    return ticks;
  };
  try {
    await runMigrations(gwSchema);
    const prisma = base.$extends(mailOutbox({ messageIdDomain: MESSAGE_ID_DOMAIN }));
    const t = await mailTemplate();
    const addJob = `SELECT ${quoteIdent(gwSchema)}.add_job($1, $2::json)`;
    const times: Record<Kind, number[]> = { alone: [], enqueue: [], enqueueComposed: [], create: [], add_job: [] };
    let n = 0;
    let preCpuUs = 0;
    const one = async (kind: Kind) => {
      const email = `user${n++}@example.net`;
      const mail = { ...t.input, to: email };
      let composed: ComposedOutboxMail | null = null;
      let row: Record<string, unknown> | null = null;
      if (kind === "enqueueComposed" || kind === "create") {
        const p0 = process.cpuUsage();
        composed = await prisma.outboxEmail.compose(mail);
        if (kind === "create") {
          const c = composed;
          const now = new Date();
          row = {
            id: c.id, messageId: c.messageId, status: "pending", priority: 0, envelopeFrom: c.envelopeFrom, envelopeTo: [...c.envelopeTo], subject: c.subject,
            raw: c.raw, size: c.size, attempts: 0, maxAttempts: 25, sendAt: c.sendAt, nextAttemptAt: c.sendAt, createdAt: now, updatedAt: now,
          };
        }
        const d = process.cpuUsage(p0);
        preCpuUs += d.user + d.system; // before the transaction: taken out of its CPU below
      }
      const t0 = performance.now();
      await prisma.$transaction(async (tx) => {
        await tx.user.create({ data: { email, name: "Ann" } });
        if (kind === "enqueue") await tx.outboxEmail.enqueue(mail);
        else if (kind === "enqueueComposed") await tx.outboxEmail.enqueue(composed!);
        else if (kind === "create") await tx.outboxEmail.create({ data: row as never, select: { id: true } });
        else if (kind === "add_job") await tx.$executeRawUnsafe(addJob, QUEUE, JSON.stringify(mail));
      });
      times[kind].push(performance.now() - t0);
    };
    for (let i = 0; i < warmup; i++) await one(KINDS[i % KINDS.length]!);
    for (const k of KINDS) times[k].length = 0;
    const cpu = Object.fromEntries(KINDS.map((k) => [k, { node: 0, ticks: 0 }])) as Record<Kind, { node: number; ticks: number }>;
    let round = 0;
    for (let done = 0; done < iterations; done += block, round++) {
      const k = Math.min(block, iterations - done);
      for (let j = 0; j < KINDS.length; j++) {
        const kind = KINDS[(j + round) % KINDS.length]!;
        const ticks0 = await backendTicks();
        const c0 = process.cpuUsage();
        preCpuUs = 0;
        for (let i = 0; i < k; i++) await one(kind);
        const c = process.cpuUsage(c0);
        cpu[kind].node += c.user + c.system - preCpuUs;
        cpu[kind].ticks += (await backendTicks()) - ticks0;
      }
    }
    const composeTimes: number[] = [];
    for (let i = 0; i < Math.min(iterations, 1000); i++) {
      const c0 = performance.now();
      await prisma.outboxEmail.compose({ ...t.input, to: `c${i}@example.net` });
      composeTimes.push(performance.now() - c0);
    }
    const rows = await withAdmin(async (c) => {
      const count = async (sql: string) => Number((await c.query<{ n: string }>(sql)).rows[0]!.n);
      return {
        users: await count(`SELECT count(*) AS n FROM ${quoteIdent(fx.schema)}."User"`),
        outbox: await count(`SELECT count(*) AS n FROM ${quoteIdent(fx.schema)}.mail_outbox`),
        graphileJobs: await count(`SELECT count(*) AS n FROM ${quoteIdent(gwSchema)}._private_jobs`),
      };
    });
    return {
      iterations,
      loadAverage: os.loadavg()[0]!,
      kinds: Object.fromEntries(KINDS.map((k) => [k, dist(times[k])])) as Record<Kind, Dist>,
      cpu: Object.fromEntries(KINDS.map((k) => [k, { nodeUs: cpu[k].node / iterations, pgUs: (cpu[k].ticks * 1e6) / 100 / iterations }])) as Record<Kind, { nodeUs: number; pgUs: number }>,
      compose: dist(composeTimes),
      rows,
    };
  } finally {
    await base.$disconnect();
    await admin.end().catch(() => {});
    await withAdmin((c) => c.query(`DROP SCHEMA IF EXISTS ${quoteIdent(gwSchema)} CASCADE`)).catch(() => {});
    await fx.cleanup();
  }
}

const { values } = parseArgs({ options: { iterations: { type: "string", default: "2000" } } });
const load0 = os.loadavg()[0]!;
const r = await run(Number(values.iterations));
const f = (x: number, d = 3) => x.toFixed(d);
const LABEL: Record<Kind, string> = {
  alone: "business insert alone (`tx.user.create`)",
  enqueue: "+ `tx.outboxEmail.enqueue(mail)`",
  enqueueComposed: "+ `tx.outboxEmail.enqueue(composed)`, composed before the transaction",
  create: "+ `tx.outboxEmail.create` of that row (no extension), composed before",
  add_job: "+ graphile-worker `add_job`",
};
const wallAdd = (k: Kind) => r.kinds[k].median - r.kinds.alone.median;
const cpuTotal = (k: Kind) => r.cpu[k].nodeUs + r.cpu[k].pgUs;
const cpuAdd = (k: Kind) => cpuTotal(k) - cpuTotal("alone");
const out: string[] = [];
out.push(`${r.iterations} transactions per kind, load average ${f(load0, 1)} → ${f(r.loadAverage, 1)}.`, "");
out.push("| transaction | median ms | p99 ms | added, median ms | Node µs | PostgreSQL µs | added CPU µs | added / add_job (wall) | added / add_job (CPU) |");
out.push("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
for (const k of KINDS) {
  const alone = k === "alone";
  out.push(
    `| ${LABEL[k]} | ${f(r.kinds[k].median)} | ${f(r.kinds[k].p99)} | ${alone ? "–" : f(wallAdd(k))} | ${f(r.cpu[k].nodeUs, 0)} | ${f(r.cpu[k].pgUs, 0)} | ${alone ? "–" : f(cpuAdd(k), 0)} | ${alone ? "–" : f(wallAdd(k) / wallAdd("add_job"), 2) + "×"} | ${alone ? "–" : f(cpuAdd(k) / cpuAdd("add_job"), 2) + "×"} |`,
  );
}
out.push("", `compose alone (\`prisma.outboxEmail.compose(mail)\`, outside a transaction): median ${f(r.compose.median)} ms, p99 ${f(r.compose.p99)} ms.`);
out.push(`Rows: ${JSON.stringify(r.rows)}.`);
console.log(out.join("\n"));
console.log(`ENQUEUE_COMPOSED ${JSON.stringify(r)}`);
