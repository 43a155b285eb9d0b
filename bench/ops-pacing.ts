/**
 * The shared rate limit measured (`mail-outbox pace`, issue 11 item 5): 3 relay processes (the
 * real `mail-outbox relay` program) on one outbox, one pace on their shared transport (default
 * 50/s, burst 10), a backlog larger than they may send, an in-process SMTP server as the sink.
 * Over the window (default 30 s from the first mail taken) the relays together may hand over
 * `burst + rate x window`; the figure is the measured total rate against the limit (goal: within
 * 10%), for PostgreSQL and SQLite. Prints a Markdown table; `--out FILE` also writes it there.
 *
 * ```sh
 * node --import tsx bench/ops-pacing.ts                                  # both databases, 30 s each
 * node --import tsx bench/ops-pacing.ts --seconds 10 --rate 20 --burst 5 --only sqlite
 * node --import tsx bench/ops-pacing.ts --out /tmp/issue/figures-pacing.md
 * ```
 *
 * Needs PostgreSQL at TEST_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/test) for
 * the PostgreSQL run; each run gets its own schema or SQLite file, removed afterwards.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { writeFileSync } from "node:fs";
import os from "node:os";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { listPaces, setPace, transportKey } from "../src/ops.js";
import { startTestSmtp } from "../testkit/smtp.js";
import { mailTemplate } from "./mail.js";
import { bulkLoad, freshStore, type ContenderName } from "./stores.js";
import { sqliteOf, pgOf } from "../test/support/db.js";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const CLI = fileURLToPath(new URL("../src/cli.ts", import.meta.url));

const { values: args } = parseArgs({
  options: {
    seconds: { type: "string", default: "30" },
    rate: { type: "string", default: "50" },
    burst: { type: "string", default: "10" },
    relays: { type: "string", default: "3" },
    poll: { type: "string", default: "100ms" },
    only: { type: "string" },
    out: { type: "string" },
  },
});
const SECONDS = Number(args.seconds);
const RATE = Number(args.rate);
const BURST = Number(args.burst);
const RELAYS = Number(args.relays);

interface Figures {
  readonly database: string;
  /** Mails taken by the sink within the window (from the first one). */
  readonly total: number;
  /** What the pace allows within the window: burst + rate x window. */
  readonly allowed: number;
  /** (total - burst) / window: the rate beyond the initial burst. */
  readonly measuredRate: number;
  /** Mails per second from 5 s into the window to its end (the burst long spent). */
  readonly steadyRate: number;
  /** Mails taken by each relay process (from the attempt log). */
  readonly perRelay: readonly number[];
  readonly duplicates: number;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function spawnRelay(env: Record<string, string>, name: string): { child: ChildProcess; exited: Promise<number | null> } {
  const child = spawn(process.execPath, ["--import", "tsx", CLI, "relay", "--poll", String(args.poll), "--relay-id", name, "--stop-timeout", "5s"], {
    cwd: ROOT,
    env: { ...process.env, MAIL_OUTBOX_LOG_LEVEL: "warn", MAIL_OUTBOX_LOG_FORMAT: "json", ...env },
    stdio: ["ignore", "ignore", "inherit"],
  });
  return { child, exited: new Promise((resolve) => child.once("exit", (code) => resolve(code))) };
}

async function run(contender: ContenderName): Promise<Figures> {
  const store = await freshStore(contender);
  const smtp = await startTestSmtp();
  const relays: { child: ChildProcess; exited: Promise<number | null> }[] = [];
  try {
    // More than the relays may send in the window, so they are never short of due mail.
    const backlog = Math.ceil(BURST + RATE * SECONDS * 1.5) + 100;
    await bulkLoad(store, await mailTemplate(), backlog);
    const bucket = `transport:${transportKey(smtp.url)}`;
    await setPace(store.url, bucket, { rate: RATE, burst: BURST });
    const env = { DATABASE_URL: store.url, MAIL_OUTBOX_TRANSPORT: smtp.url };
    for (let i = 0; i < RELAYS; i++) relays.push(spawnRelay(env, `pace-bench-${i + 1}`));
    await smtp.waitFor(1, 60_000);
    const t0 = smtp.messages[0]!.receivedAt;
    const end = t0 + SECONDS * 1000;
    while (Date.now() < end + 200) await sleep(100);
    const inWindow = smtp.messages.filter((m) => m.receivedAt < end);
    const steady = inWindow.filter((m) => m.receivedAt >= t0 + 5000).length;
    const perRelay = await attemptsPerRelay(store.url);
    const duplicates = [...smtp.countByMessageId().values()].filter((n) => n > 1).length;
    const rates = await listPaces(store.url);
    if (!rates.some((r) => r.bucket === bucket)) throw new Error(`the pace ${bucket} disappeared`);
    return {
      database: contender === "relay-pg" ? "PostgreSQL" : contender === "relay-mariadb" ? "MariaDB" : "SQLite",
      total: inWindow.length,
      allowed: BURST + RATE * SECONDS,
      measuredRate: (inWindow.length - BURST) / SECONDS,
      steadyRate: steady / (SECONDS - 5),
      perRelay,
      duplicates,
    };
  } finally {
    for (const r of relays) if (r.child.exitCode === null) r.child.kill("SIGTERM");
    await Promise.all(relays.map((r) => r.exited));
    await smtp.close();
    await store.cleanup();
  }
}

/** Hand-offs per relay process, from the attempt log (column relay: pace-bench-N). */
async function attemptsPerRelay(url: string): Promise<number[]> {
  const { openDatabase } = await import("../src/db.js");
  const db = await openDatabase(url);
  try {
    const sql = "SELECT relay, count(*) AS n FROM mail_outbox_attempt GROUP BY relay ORDER BY relay";
    const rows = (
      db.dialect === "postgresql" ? (await pgOf(db).pool.query(sql)).rows : db.dialect === "mysql" ? await db.pool.query(sql) : sqliteOf(db).db.prepare(sql).all()
    ) as { relay: string; n: number | string }[];
    return rows.map((r) => Number(r.n));
  } catch {
    return [];
  } finally {
    await db.close();
  }
}

function render(results: readonly Figures[]): string {
  const lines = [
    `## Shared rate limit (mail-outbox pace): ${RELAYS} relays, ${RATE}/s burst ${BURST}, ${SECONDS} s`,
    "",
    `Measured by \`node --import tsx bench/ops-pacing.ts --seconds ${SECONDS} --rate ${RATE} --burst ${BURST}\` on ${os.cpus().length} cores (${os.cpus()[0]?.model ?? "?"}), Node ${process.version}, ${new Date().toISOString().slice(0, 10)}:`,
    `${RELAYS} \`mail-outbox relay\` processes (poll ${args.poll}) drain a backlog into an in-process SMTP server through one pace on their shared transport.`,
    "The window starts at the first mail taken; the bucket starts full, so the pace allows burst + rate x window.",
    "",
    "| database | mails in window | allowed | measured rate (beyond the burst) | vs limit | steady rate (5 s on) | per relay | duplicates |",
    "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
  ];
  for (const r of results) {
    const dev = ((r.measuredRate - RATE) / RATE) * 100;
    lines.push(
      `| ${r.database} | ${r.total} | ${r.allowed} | ${r.measuredRate.toFixed(2)}/s | ${dev >= 0 ? "+" : ""}${dev.toFixed(1)}% | ${r.steadyRate.toFixed(2)}/s | ${r.perRelay.join(" / ")} | ${r.duplicates} |`,
    );
  }
  const ok = results.every((r) => Math.abs(r.measuredRate - RATE) / RATE <= 0.1);
  lines.push("", `Goal (total within 10% of the limit): ${ok ? "met" : "NOT met"}.`, "");
  return lines.join("\n");
}

const which: ContenderName[] =
  args.only === "sqlite"
    ? ["relay-sqlite"]
    : args.only === "pg" || args.only === "postgresql"
      ? ["relay-pg"]
      : args.only === "mariadb" || args.only === "mysql"
        ? ["relay-mariadb"]
        : ["relay-pg", "relay-sqlite", "relay-mariadb"];
const results: Figures[] = [];
for (const c of which) {
  process.stderr.write(`pacing bench: ${c}, ${RELAYS} relays, ${RATE}/s burst ${BURST}, ${SECONDS} s...\n`);
  results.push(await run(c));
}
const report = render(results);
process.stdout.write(report);
if (args.out) writeFileSync(args.out, report);
