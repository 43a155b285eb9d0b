/**
 * prisma-mail-outbox on MariaDB (or MySQL 8): the README's quick start as an application goes
 * through it, with the relay as a separate process.
 *
 *   npm run example:mariadb
 *
 * DATABASE_URL defaults to mysql://root@127.0.0.1:3306/example_signup (`mariadb://` works too).
 *
 * 0. Creates the database if it is not there (`CREATE DATABASE ... utf8mb4_unicode_ci`): the one
 *    step that is yours on MySQL/MariaDB, `migrate` creates tables, not databases.
 * 1. `mail-outbox migrate` creates the outbox tables; the app's `User` table is created by hand.
 * 2. `mail-outbox relay` starts as its own process. There is no LISTEN/NOTIFY on MySQL/MariaDB: it
 *    polls, with a short interval while there is mail and a longer one when idle.
 * 3. Signups, each in one transaction with its welcome mail (`@prisma/adapter-mariadb`): two commit,
 *    one is declined and rolls back with its mail, one is a retried request whose idempotency key is
 *    in the outbox already (caught; its transaction commits), and one uses the batch form.
 * 4. Waits until the relay has handed the committed mails to the MTA (a small SMTP server started
 *    here, or the one MAIL_OUTBOX_TRANSPORT names), stops it with SIGTERM.
 * 5. Prints `mail-outbox list` and `mail-outbox status`.
 *
 * The CLI runs from this repository's source (`node --import tsx src/cli.ts`); in your app it is
 * the package's bin: `npx mail-outbox <command>`, and for the long-running relay
 * `exec node_modules/.bin/mail-outbox relay`.
 */
import { execFile, spawn } from "node:child_process";
import path from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import mariadb from "mariadb";
// In your application: import { ... } from "prisma-mail-outbox";
import { describeTransport, NotFoundError, parseDatabaseUrl, showMail, type EnqueueResult } from "../../src/index.js";
// This repository's helper that hides a password in a URL before printing it (not part of the package's API).
import { redactUrl } from "../../src/redact.js";
// A stand-in for your MTA (Postfix, a smarthost): this repository's in-process test SMTP server, which prints one line per mail it takes.
import { startTestSmtp, type TestSmtp } from "../../testkit/smtp.js";
import { createClient, DECLINED_CARD, DEFAULT_DATABASE_URL, signUp, signUpBatch, USER_TABLE_SQL, type Signup } from "./app.js";

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

console.log("prisma-mail-outbox example: signups with a welcome mail, on MariaDB / MySQL\n");
const location = parseDatabaseUrl(databaseUrl);
if (location.dialect !== "mysql") throw new Error(`This example runs on MariaDB or MySQL; DATABASE_URL must be mysql://... or mariadb://..., got ${redactUrl(databaseUrl)}`);
const { config } = location;
console.log(`Database   ${redactUrl(databaseUrl)}`);
const cliEnv = { ...process.env, DATABASE_URL: databaseUrl };

// ---- 0. The database ----------------------------------------------------------------------------
// Yours to create on MySQL/MariaDB (with the server's admin user, once). Here: the URL's user.
const createDatabase = `CREATE DATABASE IF NOT EXISTS \`${config.database}\` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci`;
console.log(`\n0. The database: ${createDatabase}`);
const admin = await mariadb.createConnection({ host: config.host, port: config.port, user: config.user, ...(config.password !== undefined ? { password: config.password } : {}) });
try {
  await admin.query(createDatabase);
} finally {
  await admin.end();
}

// ---- 1. Tables ----------------------------------------------------------------------------------
console.log("\n1. Tables: the outbox through the CLI, the app's own User table by hand (prisma migrate dev would make it)");
await mailOutbox(["migrate"], cliEnv);
const prisma = createClient(databaseUrl);
await prisma.$executeRawUnsafe(USER_TABLE_SQL);
const existingUsers = await prisma.user.count();
console.log(`   User table ready${existingUsers > 0 ? `; ${existingUsers} users from earlier runs` : ""}`);

// ---- 2. The relay, as a separate process --------------------------------------------------------
let mta: TestSmtp | null = null;
const transport = process.env.MAIL_OUTBOX_TRANSPORT ?? (mta = await startTestSmtp({ print: (line) => console.log(`   MTA    ${line}`) })).url;
console.log(`\n2. Relay: a separate process, as in production (MTA: ${describeTransport(transport)}); it polls, MariaDB has no LISTEN/NOTIFY`);
if (mta) console.log("   The MTA is a small SMTP server inside this example; set MAIL_OUTBOX_TRANSPORT=smtp://localhost:25 (or sendmail:) for a real one.");
console.log(`   $ MAIL_OUTBOX_TRANSPORT=${redactUrl(transport)} mail-outbox relay &`);
const relay = spawn(CLI[0]!, [...CLI.slice(1), "relay"], { cwd: repo, env: { ...cliEnv, MAIL_OUTBOX_TRANSPORT: transport }, stdio: ["ignore", "pipe", "pipe"] });
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

  // ---- 3. Signups, one transaction each ---------------------------------------------------------
  // On a reused database, +N keeps this run's addresses apart from the users of earlier runs.
  const tag = existingUsers === 0 ? "" : `+${existingUsers + 1}`;
  const people: Signup[] = [
    { name: "Ann Lee", email: `ann${tag}@example.com`, plan: "free" },
    { name: "Bob Ortiz", email: `bob${tag}@example.com`, plan: "pro", card: "4242 4242 4242 4242" },
    { name: "Carol Diaz", email: `carol${tag}@example.com`, plan: "pro", card: DECLINED_CARD },
    // Ann's signup request again (a client retried it): her welcome mail's key is in the outbox.
    { name: "Ann Lee", email: `ann${tag}@example.com`, plan: "free" },
  ];
  console.log("\n3. Signups: each creates the user and enqueues the welcome mail in one transaction");
  for (const person of people) {
    let enqueued: EnqueueResult | undefined;
    const who = `${person.name} <${person.email}>`.padEnd(36);
    try {
      const { user, mail } = await prisma.$transaction((tx) => signUp(tx, person, (m) => (enqueued = m)));
      if (mail === null) {
        console.log(`   again   ${who} user #${user.id}: welcome mail already in the outbox (DuplicateIdempotencyKeyError, caught); the transaction committed`);
        continue;
      }
      committed.push(mail);
      console.log(`   ok      ${who} user #${user.id}, welcome mail ${mail.messageId} committed`);
    } catch (err) {
      if (enqueued !== undefined) rolledBack.push(enqueued);
      console.log(`   FAILED  ${who} ${(err as Error).message}: transaction rolled back${enqueued ? `, with its welcome mail ${enqueued.messageId}` : ""}`);
    }
  }
  const dan: Signup = { name: "Dan Wu", email: `dan${tag}@example.com`, plan: "free" };
  const { user, mail } = await signUpBatch(prisma, dan);
  committed.push(mail);
  console.log(`   batch   ${`${dan.name} <${dan.email}>`.padEnd(36)} user #${user.id}, welcome mail ${mail.messageId} committed ($transaction([...]))`);

  // ---- 4. Wait for the relay --------------------------------------------------------------------
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
  console.log("\n   Stopping the relay with SIGTERM (it finishes hand-offs in flight, records them, exits 0)");
  if (relay.exitCode === null) relay.kill("SIGTERM");
  const code = await relayExit;
  if (relayStdout.trim()) console.log(indent(relayStdout, "   relay  | "));
  console.log(`   relay exited with code ${code}`);
  if (code !== 0) exitCode = 1;
  await prisma.$disconnect();
  await mta?.close();
}

// ---- 5. What the operator sees ----------------------------------------------------------------
console.log("\n5. What an operator sees: this run's mails, and the whole outbox");
await mailOutbox(["list", "--since", startedAt.toISOString()], cliEnv);
await mailOutbox(["status"], cliEnv);
for (const mail of rolledBack) {
  try {
    await showMail(databaseUrl, mail.messageId);
    console.log(`   ${mail.messageId} is in the outbox, but its transaction rolled back!`);
    exitCode = 1;
  } catch (err) {
    if (!(err instanceof NotFoundError)) throw err;
    console.log(`   ${mail.messageId}: not in the outbox: rolled back with its signup, never sent.`);
  }
}

console.log(
  exitCode === 0
    ? `\nDone: ${committed.length} welcome mails handed to the MTA by the relay, ${rolledBack.length} rolled back with its signup and never sent.`
    : "\nSomething did not go as expected; see above.",
);
process.exitCode = exitCode;
