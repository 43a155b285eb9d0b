/**
 * prisma-mail-outbox on PostgreSQL, with the relay as a sidecar: a separate process next to the app.
 *
 *   npm run example:sidecar
 *
 * DATABASE_URL defaults to postgresql://postgres@127.0.0.1:5432/test?schema=example_sidecar.
 *
 * 1. `mail-outbox migrate` creates the outbox tables (and the NOTIFY trigger) in the schema.
 * 2. `mail-outbox relay` starts as its own process, as it would in its own container or systemd unit.
 * 3. The app places three orders, each in one transaction that writes the order, enqueues the
 *    confirmation and the warehouse's pick list, and takes the stock. The third runs out of stock
 *    and rolls back, mails included. The relay wakes on NOTIFY at each commit and hands the mails
 *    to the MTA: a small SMTP server started here, or the one MAIL_OUTBOX_TRANSPORT names.
 * 4. The app waits until its mails are sent (the admin function `showMail`), stops the relay with
 *    SIGTERM (a graceful stop) and prints `mail-outbox list`.
 *
 * The CLI runs from this repository's source (`node --import tsx src/cli.ts`); in your app it is
 * the package's bin: `npx mail-outbox <command>` for a one-off command, and for the long-running
 * relay `exec node_modules/.bin/mail-outbox relay` (npx would not pass SIGTERM on).
 */
import { execFile, spawn } from "node:child_process";
import path from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
// In your application: import { ... } from "prisma-mail-outbox";
import { describeTransport, NotFoundError, openDatabase, showMail, type EnqueueResult } from "../../src/index.js";
// This repository's helper that hides a password in a URL before printing it (not part of the package's API).
import { redactUrl } from "../../src/redact.js";
// A stand-in for your MTA (Postfix, a smarthost): this repository's in-process test SMTP server, which prints one line per mail it takes.
import { startTestSmtp, type TestSmtp } from "../../testkit/smtp.js";
import { APP_TABLES_SQL, createClient, DEFAULT_DATABASE_URL, placeOrder, type Checkout } from "./shop.js";

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, "../..");
const databaseUrl = process.env.DATABASE_URL ?? DEFAULT_DATABASE_URL;
const CLI = [process.execPath, "--import", "tsx", path.join(repo, "src", "cli.ts")];

const indent = (text: string, prefix = "   ") =>
  text
    .trimEnd()
    .split("\n")
    .map((l) => prefix + l)
    .join("\n");

/** Run `mail-outbox <args>` and print what it printed. Rejects when it exits non-zero. */
function mailOutbox(args: string[], env: NodeJS.ProcessEnv): Promise<string> {
  console.log(`   $ mail-outbox ${args.join(" ")}`);
  return new Promise((resolve, reject) => {
    execFile(CLI[0]!, [...CLI.slice(1), ...args], { cwd: repo, env }, (err, stdout, stderr) => {
      if (stdout.trim()) console.log(indent(stdout, "     "));
      if (err) return reject(new Error(`mail-outbox ${args.join(" ")} failed (${err.code}):\n${stderr}`));
      resolve(stdout);
    });
  });
}

/** A pino JSON line from the relay, for a terminal: time, level, message, fields. */
function formatLogLine(line: string): string {
  try {
    const { level, time, msg, pid: _pid, hostname: _host, name: _name, ...rest } = JSON.parse(line) as Record<string, unknown>;
    const levelName = ({ 10: "TRACE", 20: "DEBUG", 30: "INFO", 40: "WARN", 50: "ERROR", 60: "FATAL" } as Record<string, string>)[String(level)] ?? String(level);
    const fields = Object.entries(rest).map(([k, v]) => `${k}=${typeof v === "string" ? v : JSON.stringify(v)}`);
    return `${new Date(Number(time)).toISOString().slice(11, 23)} ${levelName} ${String(msg)}${fields.length ? ` (${fields.join(", ")})` : ""}`;
  } catch {
    return line;
  }
}

console.log("prisma-mail-outbox example: a PostgreSQL shop with the relay as a sidecar process\n");
console.log(`Database   ${redactUrl(databaseUrl)}`);
const cliEnv = { ...process.env, DATABASE_URL: databaseUrl };

// ---- 1. Tables -------------------------------------------------------------------------------------
console.log("\n1. Tables: the outbox through the CLI, the shop's own tables by hand");
await mailOutbox(["migrate"], cliEnv);
const db = await openDatabase(databaseUrl, { poolSize: 1 });
try {
  if (db.dialect !== "postgresql") throw new Error(`This example runs on PostgreSQL; DATABASE_URL must be postgresql://..., got ${redactUrl(databaseUrl)}`);
  await db.pool.query(APP_TABLES_SQL);
} finally {
  await db.close();
}
const prisma = createClient(databaseUrl);
await prisma.stock.upsert({ where: { item: "mug" }, create: { item: "mug", available: 5 }, update: { available: 5 } });
console.log(`   Order and Stock tables ready; 5 mugs in stock`);

// ---- 2. The relay, as a separate process -----------------------------------------------------------
let mta: TestSmtp | null = null;
const transport = process.env.MAIL_OUTBOX_TRANSPORT ?? (mta = await startTestSmtp({ print: (line) => console.log(`   MTA    ${line}`) })).url;
console.log(`\n2. Relay: a separate process, as in production (MTA: ${describeTransport(transport)})`);
if (mta) console.log("   The MTA is a small SMTP server inside this example; set MAIL_OUTBOX_TRANSPORT=smtp://localhost:25 (or sendmail:) for a real one.");
const relayArgs = ["relay"];
console.log(`   $ MAIL_OUTBOX_TRANSPORT=${redactUrl(transport)} mail-outbox ${relayArgs.join(" ")} &`);
const relay = spawn(CLI[0]!, [...CLI.slice(1), ...relayArgs], {
  cwd: repo,
  env: { ...cliEnv, MAIL_OUTBOX_TRANSPORT: transport },
  stdio: ["ignore", "pipe", "pipe"],
});
let relayStdout = "";
relay.stdout.on("data", (chunk: Buffer) => (relayStdout += chunk.toString()));
const relayExit = new Promise<number | null>((resolve) => relay.once("exit", (code) => resolve(code)));
const relayStarted = new Promise<void>((resolve, reject) => {
  const timer = setTimeout(() => reject(new Error("the relay did not start within 30 s")), 30_000);
  void relayExit.then((code) => reject(new Error(`the relay exited with code ${code} before it started`)));
  createInterface({ input: relay.stderr }).on("line", (line) => {
    console.log(`   relay  | ${formatLogLine(line)}`);
    if (line.includes('"relay started"')) {
      clearTimeout(timer);
      resolve();
    }
  });
});

let exitCode = 0;
const committed: EnqueueResult[] = [];
const rolledBack: EnqueueResult[] = [];
const startedAt = new Date(Date.now() - 1000);
try {
  await relayStarted;

  // ---- 3. Orders, one transaction each ---------------------------------------------------------------
  console.log("\n3. Orders: each writes the order, enqueues its mails and takes the stock, in one transaction");
  const orders: Checkout[] = [
    { customer: "Ann Lee", email: "ann@example.com", item: "mug", quantity: 2 },
    { customer: "Bob Ortiz", email: "bob@example.com", item: "mug", quantity: 2 },
    { customer: "Carol Diaz", email: "carol@example.com", item: "mug", quantity: 3 },
  ];
  for (const checkout of orders) {
    let enqueued: EnqueueResult[] = [];
    const what = `${checkout.customer}, ${checkout.quantity} ${checkout.item}s`.padEnd(22);
    try {
      const { order, mails } = await prisma.$transaction((tx) => placeOrder(tx, checkout, (m) => (enqueued = m)));
      committed.push(...mails);
      console.log(`   ok      ${what} order #${order.id} committed with ${mails.length} mails: ${mails.map((m) => m.messageId).join(", ")}`);
    } catch (err) {
      rolledBack.push(...enqueued);
      console.log(`   FAILED  ${what} ${(err as Error).message}: transaction rolled back, with its ${enqueued.length} enqueued mails`);
    }
  }

  // ---- 4. Wait for the sidecar ---------------------------------------------------------------------
  console.log(`\n4. Waiting until the relay has handed over the ${committed.length} committed mails`);
  const deadline = Date.now() + 30_000;
  const pending = new Set(committed.map((m) => m.messageId));
  while (pending.size > 0 && Date.now() < deadline) {
    for (const messageId of [...pending]) {
      if ((await showMail(databaseUrl, messageId)).status === "sent") pending.delete(messageId);
    }
    if (pending.size > 0) await new Promise((r) => setTimeout(r, 200));
  }
  if (pending.size > 0) {
    console.log(`   ${pending.size} mails still not sent after 30 s: ${[...pending].join(", ")}`);
    exitCode = 1;
  } else {
    console.log(`   all ${committed.length} sent`);
  }
} catch (err) {
  console.error(`\n${(err as Error).message}`);
  exitCode = 1;
} finally {
  // ---- 5. Stop the sidecar as an orchestrator would: SIGTERM, then wait ---------------------------
  console.log("\n5. Stopping the relay with SIGTERM (it finishes hand-offs in flight, records them, exits 0)");
  if (relay.exitCode === null) relay.kill("SIGTERM");
  const code = await relayExit;
  if (relayStdout.trim()) console.log(indent(relayStdout, "   relay  | "));
  console.log(`   relay exited with code ${code}`);
  if (code !== 0) exitCode = 1;
  await prisma.$disconnect();
  await mta?.close();
}

// ---- 6. What the operator sees -------------------------------------------------------------------------
console.log("\n6. What an operator sees: this run's mails, and one of them with the MTA's reply");
await mailOutbox(["list", "--since", startedAt.toISOString()], cliEnv);
const first = committed[0];
if (first) await mailOutbox(["show", first.id], cliEnv);
for (const mail of rolledBack) {
  try {
    await showMail(databaseUrl, mail.messageId);
    console.log(`   ${mail.messageId} is in the outbox, but its transaction rolled back!`);
    exitCode = 1;
  } catch (err) {
    if (!(err instanceof NotFoundError)) throw err;
  }
}
if (rolledBack.length > 0) console.log(`   The ${rolledBack.length} mails of the rolled-back order are not in the outbox: ${rolledBack.map((m) => m.messageId).join(", ")}`);

console.log(
  exitCode === 0
    ? `\nDone: ${committed.length} mails handed to the MTA by the sidecar relay; the rolled-back order sent nothing.`
    : "\nSomething did not go as expected; see above.",
);
process.exitCode = exitCode;
