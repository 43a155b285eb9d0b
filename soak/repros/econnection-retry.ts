/**
 * Repro (soak finding 4): the relay's immediate "connect retry" (connectRetries, meant for
 * connections that were never made) also fires when the connection drops AFTER the MTA received
 * the message: nodemailer reports that as ECONNECTION / "Connection closed unexpectedly" too. The
 * mail is sent again at once, inside the same attempt, and the attempt log shows a single accepted
 * attempt: the duplicate leaves no trace in the audit trail.
 * Run: node --import tsx soak/repros/econnection-retry.ts (prints FIXED or REPRODUCED)
 */
import { createRelay, mailOutbox, openDatabase } from "../../src/index.js";
import { freshSqlite, prismaClientFor } from "../../test/support/db.js";
import { failTimes, startTestSmtp } from "../../testkit/smtp.js";

const fx = await freshSqlite();
// The first message: body received and kept, then the connection drops without the 250.
const smtp = await startTestSmtp({ faults: failTimes(1, { drop: true }, "data") });
const prisma = (await prismaClientFor(fx.url)).$extends(mailOutbox({ defaultFrom: "shop@example.com" }));
try {
  await (prisma as any).outboxEmail.enqueue({ to: "ann@example.com", subject: "hi", text: "x" });
  const relay = createRelay({ databaseUrl: fx.url, transport: smtp.url, logger: false });
  await relay.runOnce();
  const db = await openDatabase(fx.url);
  const attempts = db.dialect === "sqlite" ? db.db.prepare("SELECT attempt, outcome, error_code FROM mail_outbox_attempt").all() : [];
  await db.close();
  console.log("MTA copies:", smtp.messages.length, "attempt log:", attempts);
  if (smtp.messages.length === 2 && attempts.length === 1) {
    console.log("REPRODUCED: sent twice within one attempt; the log shows only the accepted one.");
    process.exitCode = 1;
  } else {
    console.log("FIXED: the dropped connection is a recorded transient attempt, not an immediate resend.");
  }
} finally {
  await prisma.$disconnect();
  await smtp.close();
  await fx.cleanup();
}
