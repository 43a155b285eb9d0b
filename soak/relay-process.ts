/**
 * One relay as a process, for the soak and for tests that kill a relay (test/verify.test.ts):
 * configured like test/fixtures/relay-process.ts (DATABASE_URL, MAIL_OUTBOX_TRANSPORT, RELAY_ID,
 * RELAY_OPTIONS as JSON, STOP_DEADLINE_MS), and printing one JSON line every half second on stdout
 * with its memory (`rss`) and counts, so the harness knows the peak RSS even of a process it kills
 * with SIGKILL. (`maxRss` from process.resourceUsage() is printed too but is not this process's own
 * peak: on Linux a spawned child inherits its parent's RSS high-water mark.) SIGTERM stops it
 * gracefully; it exits 0 once stopped. Relay log lines (pino JSON, level MAIL_OUTBOX_LOG_LEVEL,
 * default warn) go to stderr.
 *
 * Fault hooks:
 * - RELAY_EVENTS=1: also one line per `sent`, `retry`, `dead`, `rescued` and `verified` event.
 * - COMPLETE_DELAY_MS=N: every write of outcomes (`store.complete`) waits N ms first, which widens
 *   the window between the MTA's `250` and the row's `sent`; a kill then leaves an uncertain
 *   hand-off that the MTA did take. A huge N (1e9) makes a `sent` event a safe moment to SIGKILL.
 */
import { pino } from "pino";
import { createRelay, openDatabase } from "../src/index.js";

const extra = JSON.parse(process.env.RELAY_OPTIONS ?? "{}") as Record<string, unknown>;
const logger = pino({ name: "mail-outbox", level: process.env.MAIL_OUTBOX_LOG_LEVEL ?? "warn" }, pino.destination(2));
const relayId = process.env.RELAY_ID ?? `soak-relay-${process.pid}`;
const delayMs = Number(process.env.COMPLETE_DELAY_MS ?? 0);
// With a delay, the relay gets a store of ours whose `complete` waits (opened as the relay opens its own).
const db =
  delayMs > 0 ? await openDatabase(process.env.DATABASE_URL!, { applicationName: `mail-outbox relay ${relayId}`.slice(0, 63), busyTimeoutMs: 100 }) : null;
if (db) {
  const complete = db.complete.bind(db);
  Object.assign(db, {
    complete: async (...args: Parameters<typeof complete>) => {
      await new Promise((r) => setTimeout(r, Math.min(delayMs, 2 ** 31 - 1)));
      return complete(...args);
    },
  });
}
const relay = createRelay({
  ...(db ? { db } : { databaseUrl: process.env.DATABASE_URL! }),
  transport: process.env.MAIL_OUTBOX_TRANSPORT!,
  relayId,
  logger,
  ...extra,
});
const out = (o: Record<string, unknown>) => process.stdout.write(`${JSON.stringify(o)}\n`);
let warnings = 0;
relay.on("warning", () => warnings++);
if (process.env.RELAY_EVENTS === "1") {
  relay.on("sent", (e) => out({ event: "sent", id: e.id, messageId: e.messageId, queueId: e.queueId }));
  relay.on("retry", (e) => out({ event: "retry", id: e.id, messageId: e.messageId, error: e.error }));
  relay.on("dead", (e) => out({ event: "dead", id: e.id, messageId: e.messageId, error: e.error }));
  relay.on("rescued", (r) => out({ event: "rescued", ids: r.map((m) => m.id) }));
  relay.on("verified", (e) => out({ event: "verified", ...e }));
}
const sample = () => {
  const mem = process.memoryUsage();
  return { rss: mem.rss, heapUsed: mem.heapUsed, maxRss: process.resourceUsage().maxRSS * 1024, warnings, ...relay.counts() };
};
const timer = setInterval(() => out({ event: "sample", ...sample() }), Number(process.env.SAMPLE_INTERVAL_MS ?? 500));
for (const sig of ["SIGTERM", "SIGINT"] as const) {
  process.once(sig, () => void relay.stop({ deadlineMs: Number(process.env.STOP_DEADLINE_MS ?? 5000) }));
}
await relay.start();
out({ event: "started", id: relay.id });
await relay.stopped;
clearInterval(timer);
await db?.close();
out({ event: "stopped", ...sample() });
