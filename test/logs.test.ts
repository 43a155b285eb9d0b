/**
 * Logs that tell the story: one line per recorded mail outcome (sent, partial, retry, dead) with
 * its fields, from a relay in-process (a pino destination captured here) and from
 * `mail-outbox relay --once` as a child process (every stderr line parsed as JSON); the level
 * from MAIL_OUTBOX_LOG_LEVEL filters, and a level or format that is not one is refused clearly.
 * Real parts: a SQLite file and the in-process SMTP server (testkit/smtp.ts) with faults.
 */
import { describe, it } from "node:test";
import type { TestContext } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { stripVTControlCharacters } from "node:util";
import { pino } from "pino";
import { createRelay, mailOutbox } from "../src/index.js";
import { createLogger, logFormatFrom, logLevelFrom } from "../src/logger.js";
import { OptionsError } from "../src/errors.js";
import { logOutcome, logRescued } from "../src/outcome-writer.js";
import { freshSqlite, prismaClientFor } from "./support/db.js";
import { startTestSmtp, type FaultHook } from "../testkit/smtp.js";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const TSX = import.meta.resolve("tsx");

/** Refuses ...@refused.test for good and ...@later.test for now, at RCPT. */
const faults: FaultHook = (ctx) => {
  if (ctx.phase !== "rcpt" || !ctx.recipient) return undefined;
  if (ctx.recipient.endsWith("@refused.test")) return { reply: 550, message: "5.1.1 User unknown" };
  if (ctx.recipient.endsWith("@later.test")) return { reply: 451, message: "4.7.1 Try again later" };
  return undefined;
};

type Line = Record<string, unknown>;

/** A SQLite outbox with one mail per outcome, and the SMTP server that makes them happen. */
async function scenario(t: TestContext) {
  const fx = await freshSqlite(t);
  const smtp = await startTestSmtp({ faults });
  const prisma: any = (await prismaClientFor(fx.url)).$extends(mailOutbox({ defaultFrom: "app@example.com" }));
  t.after(async () => {
    await prisma.$disconnect();
    await smtp.close();
  });
  const mail = {
    sent: await prisma.outboxEmail.enqueue({ to: "ann@example.com", subject: "sent", text: "x" }),
    partlyRefused: await prisma.outboxEmail.enqueue({ to: ["bob@example.com", "nobody@refused.test"], subject: "partly refused", text: "x" }),
    partlyDeferred: await prisma.outboxEmail.enqueue({ to: ["cid@example.com", "busy@later.test", "gone@refused.test"], subject: "partly deferred", text: "x" }),
    retry: await prisma.outboxEmail.enqueue({ to: "wait@later.test", subject: "retry", text: "x" }),
    dead: await prisma.outboxEmail.enqueue({ to: "ghost@refused.test", subject: "dead", text: "x" }),
  };
  return { url: fx.url, smtp, mail };
}

/** The outcome lines, by mail id; fails when a mail has more than one. */
function outcomesById(lines: readonly Line[]): Map<string, Line> {
  const byId = new Map<string, Line>();
  for (const l of lines.filter((l) => typeof l.outcome === "string")) {
    assert.ok(!byId.has(l.id as string), `one outcome line per mail, got a second one: ${JSON.stringify(l)}`);
    byId.set(l.id as string, l);
  }
  return byId;
}

/** The Message-ID, once the relay passes it to the writer (until then null: see requests-logs.md). */
function assertMessageId(line: Line, expected: string): void {
  assert.equal(line.messageId, expected);
}

function assertStory(byId: Map<string, Line>, mail: Awaited<ReturnType<typeof scenario>>["mail"]): void {
  assert.equal(byId.size, 5, "one line for each of the 5 mails");
  const sent = byId.get(mail.sent.id)!;
  assert.equal(sent.level, 30);
  assert.equal(sent.msg, "mail sent");
  assert.equal(sent.outcome, "sent");
  assert.equal(sent.status, "sent");
  assert.equal(sent.handoff, "accepted");
  assert.equal(sent.attempt, 1);
  assert.equal(sent.accepted, 1);
  assert.match(String(sent.queueId), /^[0-9A-F]{10}$/);
  assert.match(String(sent.response), /^250 /);
  assert.equal(typeof sent.durationMs, "number");
  assertMessageId(sent, mail.sent.messageId);

  const refused = byId.get(mail.partlyRefused.id)!;
  assert.equal(refused.outcome, "partial");
  assert.equal(refused.status, "sent");
  assert.equal(refused.level, 30);
  assert.deepEqual(refused.refused, [{ recipient: "nobody@refused.test", response: "550 5.1.1 User unknown" }]);
  assert.match(String(refused.queueId), /^[0-9A-F]{10}$/);

  const deferred = byId.get(mail.partlyDeferred.id)!;
  assert.equal(deferred.outcome, "partial");
  assert.equal(deferred.status, "pending");
  assert.deepEqual(deferred.deferred, [{ recipient: "busy@later.test", response: "451 4.7.1 Try again later" }]);
  assert.deepEqual(deferred.refused, [{ recipient: "gone@refused.test", response: "550 5.1.1 User unknown" }]);
  assert.equal(typeof deferred.delayMs, "number");
  assert.ok(!Number.isNaN(Date.parse(String(deferred.retryAt))));

  const retry = byId.get(mail.retry.id)!;
  assert.equal(retry.outcome, "retry");
  assert.equal(retry.status, "pending");
  assert.equal(retry.handoff, "transient");
  assert.equal(retry.level, 30);
  assert.ok((retry.delayMs as number) > 0);
  assert.ok(!Number.isNaN(Date.parse(String(retry.retryAt))));
  assert.equal(typeof retry.error, "string");
  assertMessageId(retry, mail.retry.messageId);

  const dead = byId.get(mail.dead.id)!;
  assert.equal(dead.outcome, "dead");
  assert.equal(dead.status, "dead");
  assert.equal(dead.handoff, "permanent");
  assert.equal(dead.level, 40, "dead mail is logged at warn");
  assert.match(String(dead.response ?? dead.error), /550 5\.1\.1 User unknown/);
  assertMessageId(dead, mail.dead.messageId);
}

/** Every line of `text` as JSON; fails on a line that is not. */
function jsonLines(text: string): Line[] {
  return text
    .split("\n")
    .filter((l) => l !== "")
    .map((l) => {
      try {
        return JSON.parse(l) as Line;
      } catch {
        assert.fail(`a stderr line is not JSON: ${l}`);
      }
    });
}

function runCli(args: string[], env: Record<string, string>): Promise<{ code: number; stdout: string; stderr: string }> {
  const { DATABASE_URL: _d, MAIL_OUTBOX_TRANSPORT: _t, MAIL_OUTBOX_LOG_LEVEL: _l, MAIL_OUTBOX_LOG_FORMAT: _f, ...base } = process.env;
  return new Promise((resolve) => {
    execFile(process.execPath, ["--import", TSX, path.join(ROOT, "src/cli.ts"), ...args], { cwd: ROOT, env: { ...base, ...env }, timeout: 30_000 }, (error, stdout, stderr) => {
      resolve({ code: error ? (typeof error.code === "number" ? error.code : -1) : 0, stdout: String(stdout), stderr: String(stderr) });
    });
  });
}

/** Whether the relay command builds its logger with createLogger (see /tmp/issue/requests-logs.md). */

describe("relay logs", () => {
  it("in-process: one line per recorded outcome, with its fields", async (t) => {
    const s = await scenario(t);
    const lines: Line[] = [];
    const logger = pino({ level: "info" }, { write: (line: string) => void lines.push(JSON.parse(line) as Line) });
    const counts = await createRelay({ databaseUrl: s.url, transport: s.smtp.url, logger }).runOnce();
    assert.equal(counts.sent, 2);
    assert.equal(counts.dead, 1);
    assertStory(outcomesById(lines), s.mail);
    assert.ok(lines.every((l) => l.relay !== undefined), "every line names its relay");
  });

  it("the CLI: relay --once writes only JSON lines on stderr, one per outcome; MAIL_OUTBOX_LOG_LEVEL filters", async (t) => {
    const s = await scenario(t);
    const env = { DATABASE_URL: s.url, MAIL_OUTBOX_TRANSPORT: s.smtp.url };
    const t0 = Date.now();
    const run = await runCli(["relay", "--once"], env);
    t.diagnostic(`relay --once took ${Date.now() - t0} ms`);
    assert.equal(run.code, 0, run.stderr);
    const lines = jsonLines(run.stderr);
    assertStory(outcomesById(lines), s.mail);
    assert.ok(!run.stderr.includes("\u001b["), "no colours when stderr is not a terminal");

    // Mail still pending (the deferred ones) is not due yet; enqueue one more dead mail and one sent.
    const prisma: any = (await prismaClientFor(s.url)).$extends(mailOutbox({ defaultFrom: "app@example.com" }));
    t.after(() => prisma.$disconnect());
    const dead = await prisma.outboxEmail.enqueue({ to: "ghost2@refused.test", subject: "dead", text: "x" });
    await prisma.outboxEmail.enqueue({ to: "dan@example.com", subject: "sent", text: "x" });
    const quiet = await runCli(["relay", "--once"], { ...env, MAIL_OUTBOX_LOG_LEVEL: "warn" });
    assert.equal(quiet.code, 0, quiet.stderr);
    const warned = jsonLines(quiet.stderr);
    assert.ok(warned.every((l) => (l.level as number) >= 40), `only warn and above: ${quiet.stderr}`);
    assert.deepEqual(warned.filter((l) => l.outcome).map((l) => [l.id, l.outcome]), [[dead.id, "dead"]]);
  });

  it("MAIL_OUTBOX_LOG_LEVEL and MAIL_OUTBOX_LOG_FORMAT: valid values, and a clear error for others", () => {
    assert.equal(logLevelFrom({}), "info");
    assert.equal(logLevelFrom({ MAIL_OUTBOX_LOG_LEVEL: " Debug " }), "debug");
    assert.equal(logLevelFrom({ MAIL_OUTBOX_LOG_LEVEL: "silent" }), "silent");
    const message = 'MAIL_OUTBOX_LOG_LEVEL="loud" is not a log level: use one of trace, debug, info, warn, error, fatal, silent (default: info).';
    assert.throws(() => logLevelFrom({ MAIL_OUTBOX_LOG_LEVEL: "loud" }), { name: "OptionsError", message });
    assert.throws(() => createLogger({ env: { MAIL_OUTBOX_LOG_LEVEL: "loud" }, write: () => {} }), OptionsError);
    assert.equal(logFormatFrom({}, false), "json");
    assert.equal(logFormatFrom({}, true), "pretty");
    assert.equal(logFormatFrom({ MAIL_OUTBOX_LOG_FORMAT: "json" }, true), "json");
    assert.throws(() => logFormatFrom({ MAIL_OUTBOX_LOG_FORMAT: "xml" }), /MAIL_OUTBOX_LOG_FORMAT="xml" is not a log format: use json or pretty/);
    // createRelay without a logger reads the level from the environment, at start.
    const saved = process.env.MAIL_OUTBOX_LOG_LEVEL;
    process.env.MAIL_OUTBOX_LOG_LEVEL = "loud";
    try {
      assert.throws(() => createRelay({ databaseUrl: "file:./x.db", transport: "smtp://127.0.0.1:25" }), { message });
    } finally {
      if (saved === undefined) delete process.env.MAIL_OUTBOX_LOG_LEVEL;
      else process.env.MAIL_OUTBOX_LOG_LEVEL = saved;
    }
  });

  it("readable text through pino-pretty on a terminal, JSON when MAIL_OUTBOX_LOG_FORMAT=json", () => {
    const pretty: string[] = [];
    createLogger({ env: {}, isTTY: true, write: (l) => void pretty.push(l) }).info({ outcome: "sent", queueId: "8CCD166093" }, "mail sent");
    assert.equal(pretty.length, 1);
    assert.throws(() => JSON.parse(pretty[0]!));
    assert.ok(pretty[0]!.includes("\u001b["), "in colour on a terminal");
    const text = stripVTControlCharacters(pretty[0]!);
    assert.match(text, /INFO \(mail-outbox\): mail sent\n/);
    assert.match(text, /queueId: "8CCD166093"/);
    const json: string[] = [];
    createLogger({ env: { MAIL_OUTBOX_LOG_FORMAT: "json" }, isTTY: true, write: (l) => void json.push(l) }).info({ outcome: "sent" }, "mail sent");
    assert.equal((JSON.parse(json[0]!) as Line).msg, "mail sent");
    const debug: string[] = [];
    const log = createLogger({ env: { MAIL_OUTBOX_LOG_LEVEL: "warn" }, isTTY: false, write: (l) => void debug.push(l) });
    log.info("hidden");
    log.warn("shown");
    assert.deepEqual(debug.map((l) => (JSON.parse(l) as Line).msg), ["shown"]);
  });

  it("released and rescued mail have their line too; no password in a logged reply", () => {
    const lines: Line[] = [];
    const log = pino({ level: "info" }, { write: (l: string) => void lines.push(JSON.parse(l) as Line) });
    logOutcome(log, { kind: "release", id: "r1" }, "<r1@example.com>");
    logRescued(log, { id: "r2", messageId: "<r2@example.com>", previousOwner: "host/1/ab", status: "pending" });
    const attempt = { id: "r3", attemptId: "a3", attempt: 2, startedAt: new Date(), durationMs: 12.4 };
    logOutcome(log, { ...attempt, kind: "transient", delayMs: 1000, error: "connect to smtp://app:hunter2@mx failed", errorCode: "ECONNECTION", response: null, responseCode: null }, null);
    assert.deepEqual(lines[0], { ...lines[0], level: 30, outcome: "released", status: "pending", id: "r1", messageId: "<r1@example.com>" });
    assert.deepEqual(lines[1], { ...lines[1], level: 40, outcome: "rescued", status: "pending", id: "r2", previousOwner: "host/1/ab" });
    assert.equal(lines[2]!.error, "connect to smtp://app:***@mx failed");
    assert.equal(lines[2]!.durationMs, 12);
    assert.ok(!JSON.stringify(lines).includes("hunter2"));
  });

  it("the CLI refuses an invalid MAIL_OUTBOX_LOG_LEVEL at start with a clear message", async (t) => {
    const fx = await freshSqlite(t);
    const run = await runCli(["relay", "--once"], { DATABASE_URL: fx.url, MAIL_OUTBOX_TRANSPORT: "smtp://127.0.0.1:9", MAIL_OUTBOX_LOG_LEVEL: "loud" });
    assert.notEqual(run.code, 0);
    assert.match(run.stderr, /MAIL_OUTBOX_LOG_LEVEL="loud" is not a log level: use one of trace, debug, info, warn, error, fatal, silent/);
  });
});
