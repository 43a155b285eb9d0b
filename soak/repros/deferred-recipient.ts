/**
 * Repro (soak finding 1): a recipient the MTA defers with 4xx at RCPT TO, while it accepts the
 * others, must get the mail later. Before the fix the row was marked `sent` with that recipient in
 * `rejected` and never retried. Run: node --import tsx soak/repros/deferred-recipient.ts
 * Prints FIXED or REPRODUCED.
 */
import { createRelay, mailOutbox, openDatabase } from "../../src/index.js";
import { freshSqlite, prismaClientFor } from "../../test/support/db.js";
import { startTestSmtp } from "../../testkit/smtp.js";

const fx = await freshSqlite();
let deferred = 0;
// Greylisting: the first RCPT TO for greylisted@ gets 450, later ones are accepted.
const smtp = await startTestSmtp({
  faults: (ctx) => (ctx.phase === "rcpt" && ctx.recipient === "greylisted@example.com" && deferred++ === 0 ? { reply: 450, message: "4.2.0 Greylisted, try again later" } : undefined),
});
const prisma = (await prismaClientFor(fx.url)).$extends(mailOutbox({ defaultFrom: "shop@example.com" }));
try {
  await (prisma as any).outboxEmail.enqueue({ to: ["ann@example.com", "greylisted@example.com"], subject: "hi", text: "x" });
  const relay = createRelay({ databaseUrl: fx.url, transport: smtp.url, logger: false, backoff: { baseMs: 10, maxMs: 20, jitter: 0 } });
  for (let i = 0; i < 5; i++) {
    await relay.runOnce();
    await new Promise((r) => setTimeout(r, 50));
  }
  const db = await openDatabase(fx.url);
  const row = db.dialect === "sqlite" ? (db.db.prepare("SELECT status, envelope_to, accepted, rejected FROM mail_outbox").get() as Record<string, string>) : null;
  await db.close();
  const got = smtp.messages.map((m) => m.recipients.join(","));
  console.log(row, "MTA copies for:", got);
  const reached = smtp.messages.flatMap((m) => m.recipients);
  if (row?.status === "sent" && reached.filter((r) => r === "greylisted@example.com").length === 1 && reached.filter((r) => r === "ann@example.com").length === 1) {
    console.log("FIXED: the deferred recipient got the mail on a later attempt, the other one only once.");
  } else {
    console.log("REPRODUCED: the deferred recipient did not get the mail exactly once.");
    process.exitCode = 1;
  }
} finally {
  await prisma.$disconnect();
  await smtp.close();
  await fx.cleanup();
}
