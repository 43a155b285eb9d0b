/**
 * One relay as a process, for the soak: configured like test/fixtures/relay-process.ts
 * (DATABASE_URL, MAIL_OUTBOX_TRANSPORT, RELAY_ID, RELAY_OPTIONS as JSON, STOP_DEADLINE_MS), and
 * printing one JSON line every half second on stdout with its memory (`rss`) and counts, so the
 * harness knows the peak RSS even of a process it kills with SIGKILL. (`maxRss` from
 * process.resourceUsage() is printed too but is not this process's own peak: on Linux a spawned
 * child inherits its parent's RSS high-water mark.) SIGTERM stops it gracefully; it exits 0 once stopped.
 * Relay log lines (pino JSON, level MAIL_OUTBOX_LOG_LEVEL, default warn) go to stderr.
 */
import { pino } from "pino";
import { createRelay } from "../src/index.js";

const extra = JSON.parse(process.env.RELAY_OPTIONS ?? "{}") as Record<string, unknown>;
const logger = pino({ name: "mail-outbox", level: process.env.MAIL_OUTBOX_LOG_LEVEL ?? "warn" }, pino.destination(2));
const relay = createRelay({
  databaseUrl: process.env.DATABASE_URL!,
  transport: process.env.MAIL_OUTBOX_TRANSPORT!,
  relayId: process.env.RELAY_ID ?? `soak-relay-${process.pid}`,
  logger,
  ...extra,
});
const out = (o: Record<string, unknown>) => process.stdout.write(`${JSON.stringify(o)}\n`);
let warnings = 0;
relay.on("warning", () => warnings++);
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
out({ event: "stopped", ...sample() });
