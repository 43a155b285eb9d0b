/**
 * The local-MTA transports: `sendmail:` (pipe) and `sendmail-bs:` (SMTP over `sendmail -bs`).
 *
 * The first group runs stand-in programs from a temporary directory (no MTA needed) to pin down
 * what counts as a failure. The second runs against the real Postfix that
 * scripts/install-postfix.sh sets up (needPostfix: skipped locally without it, a failure in CI).
 */
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { createTransporter, verifyTransport } from "../../src/transport.js";
import { classifyError, toHandoffResult } from "../../src/classify.js";
import { HandoffTimeoutError, SendmailExitError } from "../../src/errors.js";
import { needPostfix, POSTFIX_SENDMAIL } from "../support/services.js";
import {
  TEST_ADDRESS,
  findDelivered,
  deliveredCount,
  queueIdsForMessageId,
  queueIdsByMessageId,
  logLinesForQueueId,
  waitForLog,
  withPostfixStopped,
  postfixRunning,
} from "../support/postfix.js";

let seq = 0;
function mail(to: string[] = [TEST_ADDRESS]) {
  seq += 1;
  const messageId = `<mta-${seq}.${process.pid}.${Date.now()}@outbox.test>`;
  const body = ["first line", ".", ".leading dot", "Grüße"].join("\r\n");
  const raw = Buffer.from(
    [
      "From: App <app@localhost>",
      `To: ${to.join(", ")}`,
      `Message-ID: ${messageId}`,
      `Subject: outbox test ${seq}`,
      "MIME-Version: 1.0",
      "Content-Type: text/plain; charset=utf-8",
      "Content-Transfer-Encoding: 8bit",
      "",
      body,
      "",
    ].join("\r\n"),
  );
  return { messageId, raw, body, sendOptions: { envelope: { from: "app@localhost", to }, raw, messageId } };
}

async function rejection(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (err) {
    return err;
  }
  assert.fail("expected the hand-off to fail");
}

function processGone(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return false;
  } catch {
    return true;
  }
}

async function eventually(check: () => boolean, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 25));
  }
  return true;
}

describe("local sendmail programs that fail (stand-ins, no MTA needed)", () => {
  let dir = "";
  const script = (name: string, body: string) => {
    const file = path.join(dir, name);
    writeFileSync(file, `#!/bin/sh\n${body}\n`, { mode: 0o755 });
    return file;
  };
  before(() => {
    dir = mkdtempSync(path.join(tmpdir(), "outbox-sendmail-"));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  test("sendmail: the program gets -i [-B 8BITMIME] -f <from> -- <recipients> and the message on stdin", async () => {
    const out = path.join(dir, "capture");
    const program = script("capture-sendmail", `printf '%s\\n' "$@" > ${out}.args; cat > ${out}.stdin; exit 0`);
    const transporter = createTransporter(`sendmail:${program}`);
    const m = mail(["ann@example.com", "bob@example.com"]);
    const result = toHandoffResult(await transporter.sendMail(m.sendOptions));
    assert.deepEqual(readFileSync(`${out}.args`, "utf8").trimEnd().split("\n"), ["-i", "-B", "8BITMIME", "-f", "app@localhost", "--", "ann@example.com", "bob@example.com"]); // the body is 8-bit ("Grüße")
    assert.deepEqual(readFileSync(`${out}.stdin`), Buffer.from(m.raw.toString("latin1").replace(/\r\n/g, "\n"), "latin1"));
    assert.equal(result.response, "sendmail exited 0");
    assert.equal(result.queueId, null);
    assert.deepEqual(result.accepted, ["ann@example.com", "bob@example.com"]);
  });

  test("sendmail: at most maxConnections programs run at once, and the rest wait their turn", async () => {
    const runDir = mkdtempSync(path.join(dir, "running-"));
    const program = script(
      "slow-sendmail",
      `touch ${runDir}/run.$$; ls ${runDir} | grep -c '^run\\.' >> ${runDir}/../peaks; cat >/dev/null; sleep 0.2; rm ${runDir}/run.$$`,
    );
    const transporter = createTransporter(`sendmail:${program}?maxConnections=2&timeout=5000`);
    await Promise.all(Array.from({ length: 8 }, () => transporter.sendMail(mail().sendOptions)));
    const peaks = readFileSync(path.join(dir, "peaks"), "utf8").trim().split("\n").map(Number);
    assert.equal(peaks.length, 8);
    assert.ok(Math.max(...peaks) <= 2, `up to ${Math.max(...peaks)} ran at once`);
  });

  test("sendmail: an address that would read as an option is refused before the program runs", async () => {
    const marker = path.join(dir, "ran");
    const program = script("never-run", `touch ${marker}; cat >/dev/null`);
    const transporter = createTransporter(`sendmail:${program}`);
    const f = classifyError(await rejection(transporter.sendMail({ ...mail().sendOptions, envelope: { from: "app@localhost", to: ["-oQ/tmp@x"] } })));
    assert.equal(f.code, "EENVELOPE");
    assert.equal(f.kind, "permanent");
    assert.equal(existsSync(marker), false);
  });

  test("sendmail: a program that exits 75 is a transient failure carrying its stderr, never a success", async () => {
    const program = script("tempfail", `cat >/dev/null; echo "queue directory not writable" >&2; exit 75`);
    const transporter = createTransporter(`sendmail:${program}`);
    const err = await rejection(transporter.sendMail(mail().sendOptions));
    assert.ok(err instanceof SendmailExitError);
    assert.equal(err.exitCode, 75);
    assert.match(err.stderr, /queue directory not writable/);
    assert.match(err.message, /exited with code 75.*queue directory not writable/);
    assert.equal(classifyError(err).kind, "transient");
    assert.equal(classifyError(err).code, "ESENDMAIL");
  });

  test("sendmail: a program killed by a signal, or one that exits 0 without reading the message, is a failure", async () => {
    const killed = createTransporter(`sendmail:${script("killed", "kill -9 $$")}`);
    const e1 = await rejection(killed.sendMail(mail().sendOptions));
    assert.ok(e1 instanceof SendmailExitError);
    assert.equal(e1.signal, "SIGKILL");

    // A message larger than a pipe buffer, so the write cannot complete before the exit.
    const big = { ...mail().sendOptions, raw: Buffer.concat([mail().raw, Buffer.alloc(1 << 20, "a")]) };
    const lazy = createTransporter(`sendmail:${script("lazy", "exit 0")}`);
    const e2 = await rejection(lazy.sendMail(big));
    assert.ok(e2 instanceof SendmailExitError, String(e2));
  });

  test("sendmail: a missing program is a failure that says so", async () => {
    const transporter = createTransporter(`sendmail:${path.join(dir, "no-such-sendmail")}`);
    const err = await rejection(transporter.sendMail(mail().sendOptions));
    assert.ok(err instanceof SendmailExitError);
    assert.match(err.message, /does not exist/);
    const check = await verifyTransport(transporter, 1000);
    assert.equal(check.ok, false);
    assert.match(check.message, /does not exist/);
  });

  test("sendmail: a program that hangs is killed after the timeout and the hand-off fails with ETIMEDOUT", async () => {
    const pidFile = path.join(dir, "hang.pid");
    const program = script("hang", `echo $$ > ${pidFile}; sleep 30`);
    const transporter = createTransporter(`sendmail:${program}?timeout=500`);
    const started = Date.now();
    const err = await rejection(transporter.sendMail(mail().sendOptions));
    assert.ok(err instanceof HandoffTimeoutError, String(err));
    assert.equal(classifyError(err).code, "ETIMEDOUT");
    assert.equal(classifyError(err).kind, "transient");
    assert.ok(Date.now() - started < 2000);
    const pid = Number(readFileSync(pidFile, "utf8"));
    assert.ok(await eventually(() => processGone(pid), 3000), "the hung program was killed");
  });

  test("sendmail-bs: a program that never greets times out, is killed, and the failure is transient", async () => {
    const pidFile = path.join(dir, "silent.pid");
    const program = script("silent-bs", `echo $$ > ${pidFile}; sleep 30`);
    const transporter = createTransporter(`sendmail-bs:${program}?timeout=500`);
    try {
      const started = Date.now();
      const err = await rejection(transporter.sendMail(mail().sendOptions));
      const elapsed = Date.now() - started;
      assert.ok(err instanceof HandoffTimeoutError, String(err));
      const f = classifyError(err);
      assert.equal(f.code, "ETIMEDOUT");
      assert.equal(f.kind, "transient");
      assert.ok(elapsed >= 450 && elapsed < 2500, `failed after ${elapsed} ms`);
      const pid = Number(readFileSync(pidFile, "utf8"));
      assert.ok(await eventually(() => processGone(pid), 3000), "the silent program was killed");
    } finally {
      transporter.close();
    }
  });

  test("sendmail-bs: a program that goes silent in the middle of the session times out too", async () => {
    // Greets and answers EHLO (offering 8BITMIME: the test mail is 8-bit), then never answers MAIL FROM.
    const program = script(
      "stall-bs",
      `printf '220 fake ESMTP\\r\\n'; read line; printf '250-fake\\r\\n250 8BITMIME\\r\\n'; read line; sleep 30`,
    );
    const transporter = createTransporter(`sendmail-bs:${program}?timeout=500`);
    try {
      const started = Date.now();
      const err = await rejection(transporter.sendMail(mail().sendOptions));
      assert.ok(err instanceof HandoffTimeoutError, String(err));
      assert.ok(Date.now() - started < 2500);
    } finally {
      transporter.close();
    }
  });

  test("sendmail-bs: a program that fails at once is a transient failure that carries its stderr", async () => {
    const program = script("broken-bs", `echo "fatal: bad configuration" >&2; exit 1`);
    const transporter = createTransporter(`sendmail-bs:${program}?timeout=2000`);
    try {
      const f = classifyError(await rejection(transporter.sendMail(mail().sendOptions)));
      assert.equal(f.kind, "transient");
      assert.match(f.message, /exited with code 1 .*fatal: bad configuration/);
    } finally {
      transporter.close();
    }
  });
});

describe("Postfix", () => {
  test("sendmail: the mail is delivered into the local mailbox and found there by Message-ID", async (t) => {
    if (!needPostfix(t)) return;
    const transporter = createTransporter(`sendmail:${POSTFIX_SENDMAIL}?timeout=10000`);
    const m = mail();
    const result = toHandoffResult(await transporter.sendMail(m.sendOptions));
    assert.equal(result.response, "sendmail exited 0");
    assert.equal(result.queueId, null);
    const delivered = await findDelivered(m.messageId, 10_000);
    assert.ok(delivered, "delivered to the mailbox");
    const text = delivered.toString("utf8");
    assert.ok(text.includes(m.body.replace(/\r\n/g, "\n")), "body intact, lone dot kept (-i)");
    assert.match(text, /^Delivered-To: outbox-test@localhost$/m);
    assert.equal(queueIdsForMessageId(m.messageId).length, 1, "Postfix logged the Message-ID with one queue id");
  });

  test("sendmail-bs: the mail is delivered, and the queue id in the reply is the one Postfix logged for it", async (t) => {
    if (!needPostfix(t)) return;
    const transporter = createTransporter(`sendmail-bs:${POSTFIX_SENDMAIL}?timeout=10000`);
    try {
      const m = mail();
      const result = toHandoffResult(await transporter.sendMail(m.sendOptions));
      assert.match(result.response, /^250 2\.0\.0 Ok: queued as [0-9A-Za-z]+$/);
      assert.ok(result.queueId);
      assert.deepEqual(result.accepted, [TEST_ADDRESS]);
      const delivered = await findDelivered(m.messageId, 10_000);
      assert.ok(delivered, "delivered to the mailbox");
      assert.ok(delivered.toString("utf8").includes(m.body.replace(/\r\n/g, "\n")));
      // The stand-alone smtpd logs the reply's id; pickup then queues the mail under a new id,
      // the one cleanup logs with the Message-ID (see src/sendmail-bs.ts).
      await waitForLog(new RegExp(`postfix/smtpd\\[\\d+\\]: ${result.queueId}: client=`), 5000);
      const [logged] = queueIdsForMessageId(m.messageId);
      assert.ok(logged, "Postfix logged the Message-ID");
      assert.ok(logLinesForQueueId(logged).some((l) => /status=sent/.test(l)), "and delivered it under that id");
      assert.equal(deliveredCount(m.messageId), 1);

      // The pooled session carries the next mail too.
      const m2 = mail();
      const r2 = toHandoffResult(await transporter.sendMail(m2.sendOptions));
      assert.notEqual(r2.queueId, result.queueId);
      assert.ok(await findDelivered(m2.messageId, 10_000));
    } finally {
      transporter.close();
    }
  });

  test("smtp:// to Postfix on 127.0.0.1:25: the reply's queue id is the one Postfix logs with the Message-ID", async (t) => {
    if (!needPostfix(t)) return;
    const transporter = createTransporter("smtp://127.0.0.1:25?timeout=10000");
    try {
      const m = mail();
      const result = toHandoffResult(await transporter.sendMail(m.sendOptions));
      assert.ok(result.queueId);
      await waitForLog(new RegExp(`${result.queueId}: message-id=`), 5000);
      assert.deepEqual(queueIdsForMessageId(m.messageId), [result.queueId]);
      assert.ok(await findDelivered(m.messageId, 10_000));
    } finally {
      transporter.close();
    }
  });

  test("verifyTransport finds both local transports ready while Postfix runs", async (t) => {
    if (!needPostfix(t)) return;
    const bs = createTransporter(`sendmail-bs:${POSTFIX_SENDMAIL}`);
    try {
      assert.equal((await verifyTransport(bs, 5000)).ok, true);
      assert.equal((await verifyTransport(createTransporter(`sendmail:${POSTFIX_SENDMAIL}`), 5000)).ok, true);
    } finally {
      bs.close();
    }
  });

  test("with the Postfix daemon stopped, sendmail-bs times out while sendmail still queues the mail, which is delivered once Postfix starts", async (t) => {
    if (!needPostfix(t)) return;
    const bs = createTransporter(`sendmail-bs:${POSTFIX_SENDMAIL}?timeout=2000`);
    const pipe = createTransporter(`sendmail:${POSTFIX_SENDMAIL}?timeout=10000`);
    const viaPipe = mail();
    const viaBs = mail();
    try {
      let bsElapsed = 0;
      await withPostfixStopped(async () => {
        const started = Date.now();
        const err = await rejection(bs.sendMail(viaBs.sendOptions));
        bsElapsed = Date.now() - started;
        assert.ok(err instanceof HandoffTimeoutError, String(err));
        assert.equal(classifyError(err).kind, "transient");
        assert.match((err as Error).message, /postfix status/);
        t.diagnostic(`sendmail-bs gave up after ${bsElapsed} ms`);

        const result = toHandoffResult(await pipe.sendMail(viaPipe.sendOptions));
        assert.equal(result.response, "sendmail exited 0");
        assert.equal(deliveredCount(viaPipe.messageId), 0, "not delivered while Postfix is stopped");
      });
      assert.ok(bsElapsed >= 1900 && bsElapsed < 5000, `sendmail-bs gave up after ${bsElapsed} ms`);
      const started = Date.now();
      assert.ok(await findDelivered(viaPipe.messageId, 20_000), "delivered after Postfix started");
      t.diagnostic(`the mail queued while Postfix was stopped was delivered ${Date.now() - started} ms after it started`);
      assert.equal(deliveredCount(viaBs.messageId), 0, "the timed-out sendmail -bs session queued nothing");

      // The same sendmail-bs transporter works again.
      const after = mail();
      await bs.sendMail(after.sendOptions);
      assert.ok(await findDelivered(after.messageId, 10_000));
    } finally {
      bs.close();
      if (!(await postfixRunning())) throw new Error("Postfix was left stopped");
    }
  });
});

// ---- The relay end to end into real Postfix: enqueue with Prisma, relay, find the mail in the mailbox.

import { mailOutbox, createRelay, openDatabase } from "../../src/index.js";
import { freshSqlite, prismaClientFor } from "../support/db.js";

describe("the relay into real Postfix", () => {
  let fx: Awaited<ReturnType<typeof freshSqlite>> | null = null;
  let prisma: any;
  before(async () => {
    fx = await freshSqlite();
    prisma = (await prismaClientFor(fx.url)).$extends(mailOutbox({ defaultFrom: "app@localhost" }));
  });
  after(async () => {
    await prisma?.$disconnect();
    await fx?.cleanup();
  });

  async function row(messageId: string) {
    const db = await openDatabase(fx!.url);
    try {
      if (db.dialect !== "sqlite") throw new Error("sqlite expected");
      return db.db.prepare("SELECT status, mta_queue_id, mta_response, attempts FROM mail_outbox WHERE message_id = ?").get(messageId) as
        | { status: string; mta_queue_id: string | null; mta_response: string | null; attempts: number }
        | undefined;
    } finally {
      await db.close();
    }
  }
  async function attemptErrors(messageId: string): Promise<string[]> {
    const db = await openDatabase(fx!.url);
    try {
      if (db.dialect !== "sqlite") throw new Error("sqlite expected");
      return (db.db
        .prepare("SELECT a.error_code FROM mail_outbox_attempt a JOIN mail_outbox m ON m.id = a.email_id WHERE m.message_id = ? ORDER BY a.started_at")
        .all(messageId) as { error_code: string | null }[]).map((r) => String(r.error_code));
    } finally {
      await db.close();
    }
  }
  const quick = { pollIntervalMs: 50, leaseMs: 5000, backoff: { baseMs: 200, maxMs: 1000, jitter: 0 }, logger: false as const };

  for (const transport of ["sendmail:", `sendmail:${POSTFIX_SENDMAIL}`, "sendmail-bs:", "smtp://127.0.0.1:25"]) {
    test(`${transport} delivers an enqueued mail into the local mailbox, found there by Message-ID`, async (t) => {
      if (!needPostfix(t)) return;
      const { messageId } = await prisma.outboxEmail.enqueue({ to: TEST_ADDRESS, subject: `relay via ${transport}`, text: "hello from the outbox" });
      const counts = await createRelay({ databaseUrl: fx!.url, transport, ...quick }).runOnce();
      assert.equal(counts.sent, 1);
      const delivered = await findDelivered(messageId, 15_000);
      assert.ok(delivered, `${messageId} found in the mailbox`);
      assert.match(delivered.toString("latin1"), /hello from the outbox/);
      const r = await row(messageId);
      assert.equal(r?.status, "sent");
      if (transport === "smtp://127.0.0.1:25") {
        // Over SMTP the queue id in the 250 reply is the one Postfix logs with the Message-ID.
        assert.ok(r?.mta_queue_id);
        assert.ok(queueIdsForMessageId(messageId).includes(r!.mta_queue_id!), `queue id ${r?.mta_queue_id} logged for ${messageId}`);
      }
      if (transport === "sendmail-bs:") {
        // `sendmail -bs` answers with the id of its stand-alone smtpd session, which Postfix logs too.
        assert.ok(r?.mta_queue_id, "queue id recorded from the 250 reply");
        await waitForLog(new RegExp(`\\b${r!.mta_queue_id}\\b`), 10_000);
      }
    });
  }

  test("smtp://127.0.0.1:25 with transactions pipelined back to back: each of 300 mails records the queue id Postfix logged for it", async (t) => {
    if (!needPostfix(t)) return;
    const mails: { messageId: string }[] = await prisma.outboxEmail.enqueueMany(
      Array.from({ length: 300 }, (_, i) => ({ to: TEST_ADDRESS, subject: `burst ${i}`, text: `burst mail ${i}` })),
    );
    // Two connections carry up to 4 transactions each: replies must be matched to the right mail.
    const counts = await createRelay({ databaseUrl: fx!.url, transport: "smtp://127.0.0.1:25?maxConnections=2", ...quick }).runOnce();
    assert.equal(counts.sent, 300);
    // Postfix logs through postlogd, a little after its 250: wait for the last mail's line.
    const last = mails.at(-1)!.messageId.slice(1, -1);
    for (const deadline = Date.now() + 15_000; !queueIdsByMessageId().has(last); await new Promise((r) => setTimeout(r, 100))) {
      if (Date.now() > deadline) assert.fail(`Postfix did not log ${last} within 15 s`);
    }
    const logged = queueIdsByMessageId();
    for (const m of mails) {
      const r = await row(m.messageId);
      assert.equal(r?.status, "sent");
      assert.ok(r?.mta_queue_id, `${m.messageId} has a queue id`);
      assert.deepEqual(logged.get(m.messageId.slice(1, -1)), [r!.mta_queue_id], `${m.messageId}: recorded ${r!.mta_queue_id}, logged ${logged.get(m.messageId.slice(1, -1))}`);
    }
  });

  test("with the Postfix daemon stopped, sendmail-bs: times out and retries, and the mail arrives after Postfix starts", async (t) => {
    if (!needPostfix(t)) return;
    const { messageId } = await prisma.outboxEmail.enqueue({ to: TEST_ADDRESS, subject: "while postfix is down", text: "patience" });
    const relay = createRelay({ databaseUrl: fx!.url, transport: "sendmail-bs:?timeout=1500", ...quick, connectRetries: 0 });
    try {
      await withPostfixStopped(async () => {
        await relay.start();
        const deadline = Date.now() + 15_000;
        while (relay.counts().retried < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
        assert.ok(relay.counts().retried >= 2, "the hand-off timed out and was retried while Postfix was down");
        assert.equal(relay.counts().sent, 0);
      });
      const delivered = await findDelivered(messageId, 30_000);
      assert.ok(delivered, "delivered after Postfix started");
    } finally {
      await relay.stop();
    }
    const r = await row(messageId);
    assert.equal(r?.status, "sent");
    const errors = await attemptErrors(messageId);
    assert.ok(errors.filter((c) => c === "ETIMEDOUT").length >= 2, `attempts recorded the timeouts: ${errors.join(",")}`);
  });
});
