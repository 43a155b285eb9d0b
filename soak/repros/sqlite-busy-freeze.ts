/**
 * Repro (soak finding 2): on SQLite the relay's event loop freezes while another process holds
 * the write lock (better-sqlite3 waits synchronously, up to busy_timeout = 5 s). Hand-offs the
 * MTA has already answered time out meanwhile and are sent again: duplicates with no relay death.
 *
 * Another process holds `BEGIN IMMEDIATE` for 3 s, three times, while one relay hands 40 mails to
 * a prompt SMTP server (every reply delayed 300 ms, so hand-offs are in flight when the lock is taken).
 * Run: node --import tsx soak/repros/sqlite-busy-freeze.ts (prints FIXED or REPRODUCED)
 */
import { spawn } from "node:child_process";
import { monitorEventLoopDelay } from "node:perf_hooks";
import { createRelay, mailOutbox, openDatabase } from "../../src/index.js";
import { freshSqlite, prismaClientFor } from "../../test/support/db.js";
import { startTestSmtp } from "../../testkit/smtp.js";

const fx = await freshSqlite();
const smtp = await startTestSmtp({ faults: (ctx) => (ctx.phase === "data" ? { stallMs: 300 } : undefined) });
const prisma = (await prismaClientFor(fx.url)).$extends(mailOutbox({ defaultFrom: "shop@example.com" }));
const lag = monitorEventLoopDelay({ resolution: 10 });
try {
  await (prisma as any).outboxEmail.enqueueMany(Array.from({ length: 40 }, (_, i) => ({ to: `u${i}@example.com`, subject: `m${i}`, text: "x" })));
  const relay = createRelay({ databaseUrl: fx.url, transport: smtp.url, concurrency: 5, batchSize: 5, handoffTimeoutMs: 1500, leaseMs: 3000, pollIntervalMs: 50, logger: false, backoff: { baseMs: 50, maxMs: 200 } });
  const holder = `
    const Database = require("better-sqlite3");
    const db = new Database(${JSON.stringify(fx.file)});
    let n = 0;
    const hold = () => { db.exec("BEGIN IMMEDIATE"); const end = Date.now() + 3000; while (Date.now() < end) {} db.exec("COMMIT"); if (++n < 3) setTimeout(hold, 700); };
    setTimeout(hold, 300);`;
  lag.enable();
  await relay.start();
  const child = spawn(process.execPath, ["-e", holder], { cwd: process.cwd(), stdio: "inherit" });
  await new Promise((r) => child.once("exit", r));
  await smtp.waitFor((m) => new Set(m.map((x) => x.messageId)).size >= 40, 30_000);
  await new Promise((r) => setTimeout(r, 1500));
  await relay.stop();
  lag.disable();
  const counts = smtp.countByMessageId();
  const dups = [...counts.values()].filter((n) => n > 1).length;
  const db = await openDatabase(fx.url);
  const rows = db.dialect === "sqlite" ? (db.db.prepare("SELECT count(*) AS n FROM mail_outbox_attempt WHERE error_code = 'ETIMEDOUT'").get() as { n: number }) : { n: -1 };
  const uncertain = db.dialect === "sqlite" ? (db.db.prepare("SELECT count(*) AS n FROM mail_outbox WHERE uncertain_handoffs > 0").get() as { n: number }) : { n: -1 };
  await db.close();
  console.log(`relay event loop: max delay ${Math.round(lag.max / 1e6)} ms; timed-out attempts ${rows.n}; rows marked uncertain ${uncertain.n}; Message-IDs delivered twice ${dups} (no relay died)`);
  if (dups > 0 || uncertain.n > 0 || lag.max / 1e6 > 2000) {
    console.log("REPRODUCED: the relay's event loop froze on the SQLite lock; mail was sent again although no relay died.");
    process.exitCode = 1;
  } else {
    console.log("FIXED: no duplicate and no uncertain hand-off while another process held the write lock.");
  }
} finally {
  await prisma.$disconnect();
  await smtp.close();
  await fx.cleanup();
}
