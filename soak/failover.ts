/**
 * `node --import tsx soak/failover.ts [--rounds 3] [--relays 2] [--concurrency 4] [--gap-ms 3000]`:
 * repeated failovers under load. A primary and a synchronous streaming standby
 * (test/support/replica.ts: clusters fo_primary:5450 and fo_replica:5451, needs root); Prisma
 * producers commit mail (10% rolled back) through an endpoint that is repointed at each failover
 * (as a platform's writer endpoint or HAProxy would); relay processes (the real CLI) drain it to an
 * in-process SMTP server with DATABASE_URL listing both hosts and target_session_attrs=read-write.
 * Each round: crash the primary (`stop -m immediate`), promote the standby, repoint, then take the
 * crashed one afresh as the new standby, while everything runs. The roles alternate, so from the
 * second round on the first host in the relays' URL is a standby they must pass over.
 *
 * Prints one line per round (time to recover) and the audit: lost, rolled back delivered,
 * duplicates against the bound (relays × concurrency × rounds). Exits 1 when the audit fails.
 * Stops both clusters at the end.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import path from "node:path";
import { parseArgs } from "node:util";
import pg from "pg";
import { mailOutbox, openDatabase } from "../src/index.js";
import { migrate } from "../src/migrate.js";
import { prismaClientFor } from "../test/support/db.js";
import { REPLICA, PRIMARY, replicaPairReason, startReplicaPair, startSwitchProxy } from "../test/support/replica.js";
import { startTestSmtp } from "../testkit/smtp.js";

const { values: args } = parseArgs({
  options: {
    rounds: { type: "string", default: "3" },
    relays: { type: "string", default: "2" },
    concurrency: { type: "string", default: "4" },
    "gap-ms": { type: "string", default: "3000" },
    producers: { type: "string", default: "3" },
  },
});
const ROUNDS = Number(args.rounds);
const RELAYS = Number(args.relays);
const CONCURRENCY = Number(args.concurrency);
const GAP_MS = Number(args["gap-ms"]);
const ROOT = fileURLToPath(new URL("../", import.meta.url));
const CLI = path.join(ROOT, "src/cli.ts");
const SCHEMA = "failover_soak";
const log = (s: string) => process.stderr.write(`failover-soak: ${s}\n`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const reason = replicaPairReason();
if (reason !== null) {
  log(`skipped: ${reason}`);
  process.exit(process.env.MAIL_OUTBOX_REQUIRE_SERVICES === "1" ? 1 : 0);
}

const pair = await startReplicaPair();
const cleanups: (() => Promise<void> | void)[] = [() => pair.stop()];
let failed = false;
try {
  const admin = new pg.Client({ connectionString: pair.primaryUrl });
  await admin.connect();
  await admin.query(`DROP SCHEMA IF EXISTS ${SCHEMA} CASCADE`);
  await admin.end();
  const setup = await openDatabase(`${pair.primaryUrl}?schema=${SCHEMA}`, { poolSize: 1 });
  await migrate(setup);
  await setup.close();

  const smtp = await startTestSmtp({ capture: "count", faults: (ctx) => (ctx.phase === "data" ? { stallMs: 10 } : undefined) });
  cleanups.unshift(() => smtp.close());
  const proxy = await startSwitchProxy(pair.primary.port);
  cleanups.unshift(() => proxy.close());
  const prismaBase = await prismaClientFor(`postgresql://postgres@127.0.0.1:${proxy.port}/postgres?schema=${SCHEMA}`);
  cleanups.unshift(() => prismaBase.$disconnect());
  const prisma = prismaBase.$extends(mailOutbox({ defaultFrom: "app@example.com" })) as any;

  const committed = new Set<string>();
  const rolledBack = new Set<string>();
  const inDoubt = new Set<string>();
  let producing = true;
  let n = 0;
  const producer = async () => {
    while (producing) {
      const i = n++;
      let id: string | null = null;
      try {
        await prisma.$transaction(
          async (tx: any) => {
            id = (await tx.outboxEmail.enqueue({ to: `user${i}@example.com`, subject: `soak ${i}`, text: "x" })).messageId;
            if (i % 10 === 7) throw Object.assign(new Error("planned rollback"), { planned: true });
          },
          { maxWait: 5000, timeout: 10_000 },
        );
        committed.add(id!);
      } catch (err) {
        if ((err as { planned?: boolean }).planned) rolledBack.add(id!);
        else {
          if (id !== null) inDoubt.add(id);
          await sleep(100);
        }
      }
      await sleep(2);
    }
  };
  const producers = Array.from({ length: Number(args.producers) }, producer);

  const relayUrl = `postgresql://postgres@127.0.0.1:${PRIMARY.port},127.0.0.1:${REPLICA.port}/postgres?schema=${SCHEMA}&target_session_attrs=read-write`;
  const relays: ChildProcess[] = [];
  const relayLog: string[] = [];
  for (let r = 0; r < RELAYS; r++) {
    const child = spawn(process.execPath, ["--import", "tsx", CLI, "relay", "--concurrency", String(CONCURRENCY), "--poll", "200ms", "--relay-id", `failover-soak-${r}`], {
      env: { ...process.env, DATABASE_URL: relayUrl, MAIL_OUTBOX_TRANSPORT: smtp.url, MAIL_OUTBOX_LOG_LEVEL: "info", MAIL_OUTBOX_LISTEN_URL: "" },
      cwd: ROOT,
      stdio: ["ignore", "ignore", "pipe"],
    });
    createInterface({ input: child.stderr! }).on("line", (l) => relayLog.push(`relay ${r}: ${l}`));
    relays.push(child);
    cleanups.unshift(() => {
      if (child.exitCode === null) child.kill("SIGKILL");
    });
  }
  const newPrimary = () => `postgresql://postgres@127.0.0.1:${pair.primary.port}/postgres`;
  const firstSentAfter = async (ms: number): Promise<number | null> => {
    const c = new pg.Client({ connectionString: newPrimary() });
    c.on("error", () => {});
    await c.connect();
    try {
      const { rows } = await c.query<{ ms: string | null }>(
        `SELECT (extract(epoch FROM min(sent_at)) * 1000)::bigint AS ms FROM ${SCHEMA}.mail_outbox WHERE sent_at > to_timestamp($1::double precision / 1000)`,
        [ms],
      );
      return rows[0]!.ms === null ? null : Number(rows[0]!.ms);
    } finally {
      await c.end().catch(() => {});
    }
  };

  // Mid-drain from the first round on.
  await smtp.waitFor(100, 90_000);
  const roundLines: string[] = [];
  const recoveries: number[] = [];
  for (let round = 1; round <= ROUNDS; round++) {
    await sleep(GAP_MS);
    const from = pair.primary.name;
    const crashedAt = Date.now();
    await pair.crashPrimary();
    const stoppedAt = Date.now();
    const promoteMs = await pair.promoteReplica();
    const promotedAt = Date.now();
    proxy.retarget(pair.primary.port);
    // Until a hand-off is recorded on the new primary.
    let first: number | null = null;
    for (let waited = 0; first === null && waited < 60_000; waited += 50) {
      first = await firstSentAfter(stoppedAt);
      if (first === null) await sleep(50);
    }
    if (first === null) throw new Error(`round ${round}: no hand-off recorded on the new primary within 60 s; relay log:\n${relayLog.slice(-20).join("\n")}`);
    recoveries.push(first - crashedAt);
    const rebuild0 = Date.now();
    await pair.rebuildStandby();
    const line = `round ${round}: ${from} crashed, ${pair.primary.name} promoted in ${promoteMs.toFixed(0)} ms (ready ${promotedAt - crashedAt} ms after the crash); first hand-off on it ${first - crashedAt} ms after the crash; ${from} rebuilt as its standby in ${Date.now() - rebuild0} ms`;
    roundLines.push(line);
    log(line);
  }
  producing = false;
  await Promise.all(producers);

  // Drain: everything on the final primary sent.
  const c = new pg.Client({ connectionString: newPrimary() });
  c.on("error", () => {});
  await c.connect();
  const deadline = Date.now() + 120_000;
  for (;;) {
    const { rows } = await c.query<{ n: string }>(`SELECT count(*) AS n FROM ${SCHEMA}.mail_outbox WHERE status <> 'sent'`);
    if (Number(rows[0]!.n) === 0) break;
    if (Date.now() > deadline) throw new Error(`${rows[0]!.n} mails unsent after 120 s; relay log:\n${relayLog.slice(-20).join("\n")}`);
    await sleep(250);
  }
  const inTable = new Set((await c.query<{ message_id: string }>(`SELECT message_id FROM ${SCHEMA}.mail_outbox`)).rows.map((r) => r.message_id));
  await c.end();
  const stillRunning = relays.filter((r) => r.exitCode === null).length;
  for (const r of relays) r.kill("SIGTERM");
  const codes = await Promise.all(relays.map((r) => (r.exitCode !== null ? r.exitCode : new Promise<number | null>((res) => r.once("exit", res)))));

  const counts = smtp.countByMessageId();
  const lost = [...committed].filter((id) => !counts.has(id)).length;
  const missing = [...committed].filter((id) => !inTable.has(id)).length;
  const rolledBackDelivered = [...rolledBack].filter((id) => counts.has(id) || inTable.has(id)).length;
  const doubtful = [...inDoubt].filter((id) => inTable.has(id) !== counts.has(id)).length;
  const extra = [...counts.values()].reduce((s, k) => s + (k > 1 ? k - 1 : 0), 0);
  const bound = RELAYS * CONCURRENCY * ROUNDS;
  const ok = lost === 0 && missing === 0 && rolledBackDelivered === 0 && doubtful === 0 && extra <= bound && stillRunning === RELAYS && codes.every((x) => x === 0);
  failed = !ok;
  const sorted = [...recoveries].sort((a, b) => a - b);
  console.log(
    [
      `failover soak: ${ROUNDS} failovers, ${RELAYS} relays × concurrency ${CONCURRENCY}, ${committed.size} committed, ${rolledBack.size} rolled back, ${inDoubt.size} in doubt (${[...inDoubt].filter((id) => inTable.has(id)).length} committed after all)`,
      ...roundLines,
      `time to recover (crash → first hand-off recorded on the new primary): median ${sorted[Math.floor(sorted.length / 2)]} ms, max ${sorted[sorted.length - 1]} ms`,
      `audit: lost ${lost}, committed missing on the new primary ${missing}, rolled back delivered ${rolledBackDelivered}, in doubt inconsistent ${doubtful}, extra copies ${extra} (bound ${bound}), relays alive to the end ${stillRunning}/${RELAYS}, exit codes ${codes.join(",")} → ${ok ? "PASS" : "FAIL"}`,
    ].join("\n"),
  );
} catch (err) {
  failed = true;
  log(`failed: ${(err as Error).stack ?? String(err)}`);
} finally {
  for (const f of cleanups) await Promise.resolve(f()).catch(() => {});
}
process.exit(failed ? 1 : 0);
