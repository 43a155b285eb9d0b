/**
 * Enqueue cost against what users would write instead (issue 13, item 4). One Prisma 7
 * interactive transaction per iteration (driver adapter @prisma/adapter-pg, the tests' generated
 * client with its `User` model) with one business insert (`tx.user.create`), and:
 *
 * | kind | what else the transaction does |
 * | --- | --- |
 * | `alone` | nothing |
 * | `enqueue` | `tx.outboxEmail.enqueue(mail)` |
 * | `add_job` | graphile-worker's `add_job('send_mail', $payload::json)` through `tx.$executeRawUnsafe`, the mail input as JSON payload |
 * | `pgboss` | pg-boss `send('send_mail', mail, { db })`, `db.executeSql` routed through `tx.$queryRawUnsafe` |
 * | `composeCreate` | `composeMail(mail)` then `tx.outboxEmail.create` of its row, both in the transaction (enqueue without the extension's glue) |
 * | `create` | `tx.outboxEmail.create` of the row `enqueue` writes, composed before the transaction opened (enqueue without compose) |
 * | `rawInsert` | the same row as one parameterized `INSERT` through `tx.$executeRawUnsafe` (composed before) |
 *
 * The kinds alternate in blocks (the order rotates each round), so drift hits all alike. Compose
 * is also timed alone (`composeMail` outside any transaction). The split of enqueue's added cost:
 * compose = composeCreate - create, the extension's glue = enqueue - composeCreate, INSERT = rawInsert - alone,
 * Prisma's overhead = create - rawInsert.
 *
 *   node --import tsx bench/enqueue-compare.ts                     # 2,000 per kind after 100 warm-up
 *   node --import tsx bench/enqueue-compare.ts --iterations 300   # quicker
 *
 * Prints Markdown and one `ENQUEUE_COMPARE {json}` line.
 */
import { readFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { performance } from "node:perf_hooks";
import { fileURLToPath } from "node:url";
import pg from "pg";
import PgBoss from "pg-boss";
import { composeMail, DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_HEADER_BYTES, DEFAULT_MAX_MESSAGE_BYTES } from "../src/compose.js";
import type { ComposedMail } from "../src/types.js";
import { quoteIdent } from "../src/db.js";
import { mailOutbox, type ComposedOutboxMail } from "../src/extension.js";
import { freshPostgres, prismaClientFor } from "../test/support/db.js";
import { runMigrations } from "./contenders/graphile.js";
import { installPgBoss } from "./contenders/pgboss.js";
import { mailTemplate, MESSAGE_ID_DOMAIN } from "./mail.js";
import { ADMIN_URL, QUEUE, withAdmin } from "./stores.js";

const KINDS = ["alone", "enqueue", "enqueueComposed", "add_job", "pgboss", "composeCreate", "create", "rawInsert"] as const;
type Kind = (typeof KINDS)[number];

export interface Dist {
  readonly median: number;
  readonly p99: number;
  readonly mean: number;
}

export interface EnqueueCompareResult {
  readonly iterations: number;
  /** ms per transaction. */
  readonly kinds: Record<Kind, Dist>;
  /** CPU per transaction, µs, mean over all blocks: this Node process (Prisma, pg, compose) and its PostgreSQL backends (/proc ticks). */
  readonly cpu: Record<Kind, { readonly nodeUs: number; readonly pgUs: number }>;
  /** ms: composeMail alone, outside a transaction. */
  readonly compose: Dist;
  /** Rows each kind left behind, per kind (checked against the iterations + warm-up). */
  readonly rows: Record<string, number>;
}

function dist(xs: number[]): Dist {
  const s = [...xs].sort((a, b) => a - b);
  const q = (p: number) => s[Math.min(s.length - 1, Math.floor(p * s.length))]!;
  const m = s.length >> 1;
  return { median: s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2, p99: q(0.99), mean: s.reduce((a, b) => a + b, 0) / s.length };
}

const insertRow = (schema: string) => `INSERT INTO ${quoteIdent(schema)}.mail_outbox (id, message_id, status, priority, envelope_from, envelope_to, subject, raw, size, attempts,
  max_attempts, send_at, next_attempt_at, created_at, updated_at)
  VALUES ($1::uuid, $2, 'pending', $3, $4, $5::jsonb, $6, $7, $8, 0, $9, $10, $10, $11, $11)`;

export async function enqueueCompare(iterations: number, block = 50, warmup = 100): Promise<EnqueueCompareResult> {
  const fx = await freshPostgres();
  const gwSchema = `${fx.schema}_gw`;
  const bossSchema = `${fx.schema}_boss`;
  // An application_name of our own finds this client's backends for their CPU time.
  const appName = `bench enqueue-compare ${process.pid}`;
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
        // gone, or not on this host
      }
    }
    return ticks;
  };
  let bossPool: pg.Pool | null = null;
  let boss: PgBoss | null = null;
  try {
    await runMigrations(gwSchema);
    await installPgBoss(bossSchema);
    const defaults = { maxAttempts: DEFAULT_MAX_ATTEMPTS, maxMessageBytes: DEFAULT_MAX_MESSAGE_BYTES, maxHeaderBytes: DEFAULT_MAX_HEADER_BYTES, messageIdDomain: MESSAGE_ID_DOMAIN };
    const prisma = base.$extends(mailOutbox({ messageIdDomain: MESSAGE_ID_DOMAIN }));
    const t = await mailTemplate();

    // pg-boss started on its own pool (as an application would have it); each send is routed to the transaction.
    bossPool = new pg.Pool({ connectionString: ADMIN_URL, max: 2 });
    bossPool.on("error", () => {});
    const pool = bossPool;
    boss = new PgBoss({ db: { executeSql: (text: string, values: unknown[]) => pool.query(text, values) }, schema: bossSchema, supervise: false, schedule: false, migrate: false });
    boss.on("error", () => {});
    await boss.start();
    const INSERT_ROW = insertRow(fx.schema);
    const addJob = `SELECT ${quoteIdent(gwSchema)}.add_job($1, $2::json)`;

    type Tx = Parameters<Parameters<typeof prisma.$transaction>[0]>[0];
    const txDb = (tx: Tx) => ({
      async executeSql(text: string, values: unknown[] = []) {
        // pg serializes objects as JSON itself; Prisma's raw parameters want the text.
        const args = values.map((v) => (v !== null && typeof v === "object" && !(v instanceof Date) ? JSON.stringify(v) : v));
        return { rows: await tx.$queryRawUnsafe<unknown[]>(text, ...args) };
      },
    });

    const times: Record<Kind, number[]> = { alone: [], enqueue: [], enqueueComposed: [], add_job: [], pgboss: [], composeCreate: [], create: [], rawInsert: [] };
    let n = 0;
    let preCpuUs = 0;
    const one = async (kind: Kind) => {
      const email = `user${n++}@example.net`;
      const mail = { ...t.input, to: email };
      // create / rawInsert: composed before the transaction opens (not timed).
      let pre: ComposedMail | null = null;
      let composed: ComposedOutboxMail | null = null;
      if (kind === "create" || kind === "rawInsert" || kind === "enqueueComposed") {
        const p0 = process.cpuUsage();
        if (kind === "enqueueComposed") composed = await prisma.outboxEmail.compose(mail);
        else pre = await composeMail(mail, defaults);
        const d = process.cpuUsage(p0);
        preCpuUs += d.user + d.system; // not part of the transaction: taken out of its CPU below
      }
      const t0 = performance.now();
      await prisma.$transaction(async (tx) => {
        await tx.user.create({ data: { email, name: "Ann" } });
        switch (kind) {
          case "alone":
            break;
          case "enqueue":
            await tx.outboxEmail.enqueue(mail);
            break;
          case "enqueueComposed":
            await tx.outboxEmail.enqueue(composed!);
            break;
          case "add_job":
            await tx.$executeRawUnsafe(addJob, QUEUE, JSON.stringify(mail));
            break;
          case "pgboss":
            await boss!.send(QUEUE, mail, { db: txDb(tx) } as PgBoss.SendOptions);
            break;
          case "composeCreate":
          case "create": {
            const m = pre ?? (await composeMail(mail, defaults));
            const now = new Date();
            await tx.outboxEmail.create({
              data: {
                id: m.id, messageId: m.messageId, status: "pending", priority: m.priority, envelopeFrom: m.envelopeFrom, envelopeTo: [...m.envelopeTo],
                subject: m.subject, raw: m.raw as unknown as Uint8Array<ArrayBuffer>, size: m.size, attempts: 0, maxAttempts: m.maxAttempts, sendAt: m.sendAt, nextAttemptAt: m.sendAt, createdAt: now, updatedAt: now,
              },
              select: { id: true },
            });
            break;
          }
          case "rawInsert": {
            const m = pre!;
            await tx.$executeRawUnsafe(INSERT_ROW, m.id, m.messageId, m.priority, m.envelopeFrom, JSON.stringify(m.envelopeTo), m.subject, m.raw, m.size, m.maxAttempts, m.sendAt, new Date());
            break;
          }
        }
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
    for (let i = 0; i < iterations; i++) {
      const c0 = performance.now();
      await composeMail({ ...t.input, to: `c${i}@example.net` }, defaults);
      composeTimes.push(performance.now() - c0);
    }

    const rows = await withAdmin(async (c) => {
      const one = async (sql: string) => Number((await c.query<{ n: string }>(sql)).rows[0]!.n);
      return {
        users: await one(`SELECT count(*) AS n FROM ${quoteIdent(fx.schema)}."User"`),
        outbox: await one(`SELECT count(*) AS n FROM ${quoteIdent(fx.schema)}.mail_outbox`),
        graphileJobs: await one(`SELECT count(*) AS n FROM ${quoteIdent(gwSchema)}._private_jobs`),
        pgBossJobs: await one(`SELECT count(*) AS n FROM ${quoteIdent(bossSchema)}.job`),
      };
    });
    return {
      iterations,
      kinds: Object.fromEntries(KINDS.map((k) => [k, dist(times[k])])) as Record<Kind, Dist>,
      cpu: Object.fromEntries(KINDS.map((k) => [k, { nodeUs: cpu[k].node / iterations, pgUs: (cpu[k].ticks * 1e6) / 100 / iterations }])) as Record<Kind, { nodeUs: number; pgUs: number }>,
      compose: dist(composeTimes),
      rows,
    };
  } finally {
    await boss?.stop({ graceful: false, wait: true }).catch(() => {});
    await bossPool?.end().catch(() => {});
    await base.$disconnect();
    await admin.end().catch(() => {});
    await withAdmin(async (c) => {
      await c.query(`DROP SCHEMA IF EXISTS ${quoteIdent(gwSchema)} CASCADE`);
      await c.query(`DROP SCHEMA IF EXISTS ${quoteIdent(bossSchema)} CASCADE`);
    }).catch(() => {});
    await fx.cleanup();
  }
}

const f = (x: number, d = 3) => x.toFixed(d);

export function enqueueCompareMarkdown(r: EnqueueCompareResult): string {
  const a = r.kinds.alone;
  const label: Record<Kind, string> = {
    alone: "business insert alone (`tx.user.create`)",
    enqueue: "+ `tx.outboxEmail.enqueue(mail)`",
    enqueueComposed: "+ `tx.outboxEmail.enqueue(composed)`, `prisma.outboxEmail.compose(mail)` before the transaction",
    add_job: "+ graphile-worker `add_job` (`$executeRawUnsafe`, mail input as JSON)",
    pgboss: "+ pg-boss `send(…, { db })` through `tx.$queryRawUnsafe`",
    composeCreate: "+ `composeMail` and `tx.outboxEmail.create` of its row, both in the transaction",
    create: "+ `tx.outboxEmail.create` of the row, composed before the transaction",
    rawInsert: "+ the same row as one `INSERT` via `tx.$executeRawUnsafe`, composed before",
  };
  const lines = [
    `| transaction (${r.iterations} each, interleaved in blocks) | median ms | p99 ms | added to the insert alone, median ms | added, mean ms |`,
    "| --- | ---: | ---: | ---: | ---: |",
  ];
  for (const k of KINDS) {
    const d = r.kinds[k];
    lines.push(`| ${label[k]} | ${f(d.median)} | ${f(d.p99)} | ${k === "alone" ? "–" : f(d.median - a.median)} | ${k === "alone" ? "–" : f(d.mean - a.mean)} |`);
  }
  const added = (k: Kind) => r.kinds[k].median - a.median;
  const addedMean = (k: Kind) => r.kinds[k].mean - a.mean;
  const ratio = added("enqueue") / added("add_job");
  const compose = r.kinds.composeCreate.median - r.kinds.create.median;
  const glue = r.kinds.enqueue.median - r.kinds.composeCreate.median;
  const insert = added("rawInsert");
  const prismaOverhead = r.kinds.create.median - r.kinds.rawInsert.median;
  const c = r.cpu;
  lines.push(
    "",
    "CPU per transaction (mean over all blocks; robust to other load on the machine, unlike the wall times): this Node process (Prisma, pg, compose) and its PostgreSQL backend(s) (utime + stime from /proc, 10 ms ticks summed over the blocks).",
    "",
    "| transaction | Node µs | PostgreSQL µs | total µs | added to the insert alone, µs |",
    "| --- | ---: | ---: | ---: | ---: |",
    ...KINDS.map((k) => {
      const tot = c[k].nodeUs + c[k].pgUs;
      const base0 = c.alone.nodeUs + c.alone.pgUs;
      return `| ${label[k]} | ${f(c[k].nodeUs, 0)} | ${f(c[k].pgUs, 0)} | ${f(tot, 0)} | ${k === "alone" ? "–" : f(tot - base0, 0)} |`;
    }),
    "",
  );
  const addedCpu = (k: Kind) => c[k].nodeUs + c[k].pgUs - (c.alone.nodeUs + c.alone.pgUs);
  lines.push(
    `- By CPU: enqueue / add_job, added: **${f(addedCpu("enqueue") / addedCpu("add_job"), 2)}×** (${f(addedCpu("enqueue"), 0)} vs ${f(addedCpu("add_job"), 0)} µs); enqueue / pg-boss: ${f(addedCpu("enqueue") / addedCpu("pgboss"), 2)}×; ` +
      `compose ${f(addedCpu("composeCreate") - addedCpu("create"), 0)} µs, INSERT ${f(addedCpu("rawInsert"), 0)} µs, Prisma's model-create overhead ${f(addedCpu("create") - addedCpu("rawInsert"), 0)} µs, glue ${f(addedCpu("enqueue") - addedCpu("composeCreate"), 0)} µs; a bare create of a row composed before the transaction: ${f(addedCpu("create") / addedCpu("add_job"), 2)}× add_job; \`enqueue(composed)\`: **${f(addedCpu("enqueueComposed") / addedCpu("add_job"), 2)}×** add_job (wall, medians: ${f(added("enqueueComposed") / added("add_job"), 2)}×).`,
    `- enqueue / add_job, added cost: **${f(ratio, 2)}×** by medians (${f(addedMean("enqueue") / addedMean("add_job"), 2)}× by means); goal ≤ 1.2×. enqueue / pg-boss send: ${f(added("enqueue") / added("pgboss"), 2)}×.`,
    `- Split of enqueue's added ${f(added("enqueue"))} ms (medians): compose ${f(compose)} ms (composeCreate − create; \`composeMail\` alone, outside a transaction: median ${f(r.compose.median)} ms, p99 ${f(r.compose.p99)} ms), ` +
      `the INSERT ${f(insert)} ms (rawInsert − alone), Prisma's model-create overhead ${f(prismaOverhead)} ms (create − rawInsert), the extension's glue ${f(glue)} ms (enqueue − composeCreate).`,
    `- Composed before the transaction (\`create\` of a precomposed row): ${f(added("create"))} ms added, ${f(added("create") / added("add_job"), 2)}× add_job.`,
    `- Rows afterwards: ${JSON.stringify(r.rows)}.`,
  );
  return lines.join("\n");
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const argv = process.argv.slice(2);
  const i = argv.indexOf("--iterations");
  const iterations = i >= 0 ? Number(argv[i + 1]) : 2000;
  const started = Date.now();
  enqueueCompare(iterations).then(
    (r) => {
      console.log(enqueueCompareMarkdown(r));
      console.log(`\n${os.cpus()[0]?.model ?? "?"} x ${os.cpus().length}, Node ${process.version}, ${((Date.now() - started) / 1000).toFixed(0)} s`);
      console.log(`ENQUEUE_COMPARE ${JSON.stringify(r)}`);
    },
    (err: unknown) => {
      console.error(err);
      process.exit(1);
    },
  );
}
