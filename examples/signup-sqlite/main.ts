/**
 * prisma-mail-outbox, the headline example: signups with a welcome mail, on SQLite, with nothing to
 * set up.
 *
 *   npm run example:signup
 *
 * 1. Creates (or reuses) the SQLite file (examples/signup-sqlite/signup.db, or DATABASE_URL=file:...)
 *    and its tables: the outbox tables with `migrate()`, the app's `User` table by hand.
 * 2. Signs up three users, each in one `prisma.$transaction` that creates the user and enqueues the
 *    welcome mail. The third signup's payment fails after its mail was enqueued: the transaction
 *    rolls back and takes the mail with it.
 * 3. Runs the relay once (`createRelay(...).runOnce()`) against an MTA: a small SMTP server started
 *    here, or the one MAIL_OUTBOX_TRANSPORT names (`smtp://localhost:25`, `sendmail:`, `sendmail-bs:`).
 * 4. Prints the outbox rows: status, Message-ID, the MTA's reply and queue id.
 *
 * Exits 1 if a committed welcome mail was not handed over, or if the rolled-back one exists.
 */
import { existsSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
// In your application: import { ... } from "prisma-mail-outbox";
import { createRelay, describeTransport, getStatus, listMails, migrate, NotFoundError, openDatabase, showMail, type EnqueueResult } from "../../src/index.js";
// A stand-in for your MTA (Postfix, a smarthost): this repository's in-process test SMTP server, which prints one line per mail it takes.
import { startTestSmtp, type TestSmtp } from "../../testkit/smtp.js";
import { createClient, DECLINED_CARD, signUp, sqliteFile, USER_TABLE_SQL, type Signup } from "./signup.js";

const here = path.dirname(fileURLToPath(import.meta.url));
const databaseUrl = process.env.DATABASE_URL ?? `file:${path.join(here, "signup.db")}`;
const { filename } = sqliteFile(databaseUrl);
const shown = path.relative(process.cwd(), filename) || filename;

console.log("prisma-mail-outbox example: signups with a welcome mail, on SQLite\n");

// ---- 1. The database -------------------------------------------------------------------------
const existed = existsSync(filename);
const db = await openDatabase(databaseUrl);
let existingUsers = 0;
try {
  const migration = await migrate(db);
  if (db.dialect !== "sqlite") throw new Error("unreachable: the URL was checked to be SQLite");
  db.db.exec(USER_TABLE_SQL);
  existingUsers = (db.db.prepare(`SELECT count(*) AS n FROM "User"`).get() as { n: number }).n;
  console.log(`Database   ${shown} (${existed ? "reused" : "created"})`);
  console.log(
    `           outbox tables: ${migration.applied.length > 0 ? `migrate() applied ${migration.applied.join(", ")}` : "up to date"}; User table ready` +
      (existingUsers > 0 ? `; ${existingUsers} users from earlier runs` : ""),
  );
} finally {
  await db.close();
}

// ---- 2. Three signups, one transaction each ----------------------------------------------------
// On a reused database, +N keeps this run's addresses apart from the users of earlier runs.
const tag = existingUsers === 0 ? "" : `+${existingUsers + 1}`;
const people: Signup[] = [
  { name: "Ann Lee", email: `ann${tag}@example.com`, plan: "free" },
  { name: "Bob Ortiz", email: `bob${tag}@example.com`, plan: "pro", card: "4242 4242 4242 4242" },
  { name: "Carol Diaz", email: `carol${tag}@example.com`, plan: "pro", card: DECLINED_CARD },
];

const startedAt = new Date(Date.now() - 1000);
const prisma = createClient(databaseUrl);
const committed: EnqueueResult[] = [];
const rolledBack: { name: string; mail: EnqueueResult }[] = [];
console.log("\n1. Signups: each one creates the user and enqueues the welcome mail in one transaction");
try {
  for (const person of people) {
    let enqueued: EnqueueResult | undefined;
    const who = `${person.name} <${person.email}>`.padEnd(34);
    try {
      const { user, mail } = await prisma.$transaction((tx) => signUp(tx, person, (m) => (enqueued = m)));
      committed.push(mail);
      console.log(`   ok      ${who} user #${user.id}, welcome mail ${mail.messageId} committed`);
    } catch (err) {
      if (enqueued !== undefined) rolledBack.push({ name: person.name, mail: enqueued });
      console.log(`   FAILED  ${who} ${(err as Error).message}: transaction rolled back`);
      if (enqueued !== undefined) console.log(`           ${" ".repeat(34)} (its welcome mail ${enqueued.messageId} was enqueued, then rolled back with it)`);
    }
  }
} finally {
  await prisma.$disconnect();
}

// ---- 3. The relay --------------------------------------------------------------------------------
let mta: TestSmtp | null = null;
const transport = process.env.MAIL_OUTBOX_TRANSPORT ?? (mta = await startTestSmtp({ print: (line) => console.log(`   MTA    ${line}`) })).url;
console.log(
  `\n2. Relay: createRelay({ databaseUrl, transport }).runOnce() hands committed mail to the MTA\n` +
    `   MTA: ${describeTransport(transport)}` +
    (mta ? "\n        a small SMTP server inside this example; set MAIL_OUTBOX_TRANSPORT=smtp://localhost:25 (or sendmail:) for a real MTA" : ""),
);
const relay = createRelay({ databaseUrl, transport, logger: false, relayId: "signup-example" });
relay.on("sent", (e) => console.log(`   relay  sent ${e.messageId} (attempt ${e.attempt}), MTA queue id ${e.queueId ?? "-"}`));
relay.on("retry", (e) => console.log(`   relay  could not hand over ${e.messageId} (attempt ${e.attempt}): ${e.error}; retry in ${Math.round(e.delayMs / 1000)} s`));
relay.on("dead", (e) => console.log(`   relay  gave up on ${e.messageId}: ${e.error}`));
try {
  const counts = await relay.runOnce();
  console.log(`   relay  done: claimed ${counts.claimed}, sent ${counts.sent}, retried ${counts.retried}, dead ${counts.dead}`);
} finally {
  await relay.stop();
  await mta?.close();
}

// ---- 4. The outbox afterwards --------------------------------------------------------------------
const mails = await listMails(databaseUrl, { since: startedAt, limit: 100 });
console.log(`\n3. The outbox, this run's rows (listMails):`);
const rows = [
  ["STATUS", "TO", "MESSAGE-ID", "QUEUE ID", "MTA REPLY"],
  ...mails.reverse().map((m) => [m.status, m.envelopeTo.join(","), m.messageId, m.mtaQueueId ?? "-", m.mtaResponse ?? m.lastError ?? "-"]),
];
const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
for (const r of rows) console.log("   " + r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join("  "));

let ok = true;
const notSent: string[] = [];
for (const mail of committed) {
  const row = await showMail(databaseUrl, mail.messageId);
  if (row.status !== "sent") notSent.push(row.status);
}
if (notSent.length > 0) ok = false;
for (const { name, mail } of rolledBack) {
  try {
    await showMail(databaseUrl, mail.messageId);
    ok = false;
    console.log(`   ${mail.messageId} is in the outbox, but its transaction rolled back!`);
  } catch (err) {
    if (!(err instanceof NotFoundError)) throw err;
    console.log(`\n   ${name}'s welcome mail ${mail.messageId}: not in the outbox (showMail threw ${err.name}): rolled back with the signup, never sent.`);
  }
}
const status = await getStatus(databaseUrl);
console.log(`   Whole outbox (getStatus): ${Object.entries(status.counts).filter(([, n]) => n > 0).map(([s, n]) => `${s} ${n}`).join(", ") || "empty"}`);

const cli = `DATABASE_URL=${databaseUrl} node --import tsx src/cli.ts`;
if (ok) {
  console.log(`\nDone: ${committed.length} welcome mails handed to the MTA, ${rolledBack.length} rolled back with its signup and never sent.`);
} else {
  console.log(`\n${notSent.length} committed welcome mails were not handed over (see the table):`);
  if (notSent.includes("pending")) console.log("   pending: the MTA failed for now (4xx or unreachable); the next relay run retries them with backoff.");
  if (notSent.includes("dead")) {
    console.log("   dead: the MTA refused them for good (5xx). The recipients here are @example.com, which a real MTA may refuse or bounce.");
    console.log("   After fixing the cause, send them again with `mail-outbox replay`.");
  }
  process.exitCode = 1;
}
console.log(`Look around with the CLI (\`npx mail-outbox ...\` in your app):\n   ${cli} list\n   ${cli} show ${committed[0]?.messageId.slice(1, -1) ?? "MESSAGE-ID"}`);
