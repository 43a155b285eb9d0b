/**
 * Repro (soak finding 1): a recipient the MTA defers with 4xx at RCPT TO, while it accepts the
 * others, is recorded in `rejected` and the mail is marked `sent`: that recipient never gets the
 * mail, no retry, no dead row. Run: node --import tsx soak/repros/deferred-recipient.ts
 */
import assert from "node:assert/strict";
import { createRelay, mailOutbox, openDatabase } from "../../src/index.js";
import { freshSqlite, prismaClientFor } from "../../test/support/db.js";
import { rejectRecipients, startTestSmtp } from "../../test/support/smtp.js";

const fx = await freshSqlite();
const smtp = await startTestSmtp({ faults: rejectRecipients((r) => r.startsWith("greylisted"), 450, "4.2.0 Greylisted, try again later") });
const prisma = (await prismaClientFor(fx.url)).$extends(mailOutbox({ defaultFrom: "shop@example.com" }));
try {
  await (prisma as any).outboxEmail.enqueue({ to: ["ann@example.com", "greylisted@example.com"], subject: "hi", text: "x" });
  const relay = createRelay({ databaseUrl: fx.url, transport: smtp.url, logger: false, backoff: { baseMs: 10 } });
  await relay.runOnce();
  const db = await openDatabase(fx.url);
  const row = db.dialect === "sqlite" ? (db.db.prepare("SELECT status, rejected FROM mail_outbox").get() as { status: string; rejected: string }) : null;
  await db.close();
  console.log(row);
  console.log("MTA received for:", smtp.messages.map((m) => m.recipients));
  assert.equal(row?.status, "sent");
  assert.match(row?.rejected ?? "", /450/);
  console.log("REPRODUCED: greylisted@example.com was deferred (450) and will never be retried; the row is final (sent).");
} finally {
  await prisma.$disconnect();
  await smtp.close();
  await fx.cleanup();
}
