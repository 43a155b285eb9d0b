/**
 * Delivery status notifications: the signed token and the envelope the relay hands over
 * (src/fate/token.ts), what each transport puts on the wire for a `DsnRequest` (the in-process
 * SMTP server, and real Postfix: its reports carry our ENVID back), and the RFC 3464 parser
 * (src/fate/dsn.ts) on reports real Postfix wrote.
 */
import { describe, it, after } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { randomUUID } from "node:crypto";
import { readdirSync, readFileSync, rmSync } from "node:fs";
import path from "node:path";
import { promisify } from "node:util";
import { OptionsError, UnreadableReportError } from "../src/errors.js";
import { newId } from "../src/ids.js";
import { eventOf, parseDeliveryReport, reportEvents, type DeliveryReport } from "../src/fate/dsn.js";
import { DEFAULT_DSN_OPTIONS, handoffEnvelope, parseDsnOptions, signToken, tokenFromAddress, verifyToken } from "../src/fate/token.js";
import { createTransporter, rawSendMailOptions, transportCapabilities, type DsnRequest, type RawEnvelope } from "../src/transport.js";
import { startTestSmtp } from "../testkit/smtp.js";
import { needPostfix, POSTFIX_SENDMAIL } from "./support/services.js";
import { TEST_MAILDIR } from "./support/postfix.js";

const execFileAsync = promisify(execFile);
const SECRET = "a test bounce secret, 32 bytes!!";

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function rawMessage(messageId: string, to: string): Buffer {
  return Buffer.from([`From: app@localhost`, `To: ${to}`, `Message-ID: ${messageId}`, `Subject: dsn test`, ``, `hello`, ``].join("\r\n"));
}

/** Files in the test Maildir (new/ and cur/) whose text contains `needle`, as [path, bytes]. */
function maildirFiles(needle: string): [string, Buffer][] {
  const out: [string, Buffer][] = [];
  for (const sub of ["new", "cur"]) {
    const dir = path.join(TEST_MAILDIR, sub);
    let names: string[] = [];
    try {
      names = readdirSync(dir);
    } catch {
      continue;
    }
    for (const name of names) {
      try {
        const bytes = readFileSync(path.join(dir, name));
        if (bytes.includes(needle)) out.push([path.join(dir, name), bytes]);
      } catch {
        /* moved meanwhile */
      }
    }
  }
  return out;
}

/** The delivery reports Postfix sent back to the return path `bnc<tag>`, once `count` are there. */
async function reportsTo(returnPath: string, count: number, timeoutMs = 20_000): Promise<DeliveryReport[]> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const found = maildirFiles(`X-Postfix-Sender: rfc822; ${returnPath}`);
    if (found.length >= count) return Promise.all(found.map(([, b]) => parseDeliveryReport(b)));
    if (Date.now() > deadline) throw new Error(`only ${found.length} of ${count} reports to ${returnPath} arrived in ${TEST_MAILDIR} within ${timeoutMs} ms; see /var/log/postfix.log`);
    await sleep(100);
  }
}

/** Remove the test's own mail (reports and delivered copies) from the shared Maildir. */
function removeFiles(needle: string): void {
  for (const [f] of maildirFiles(needle)) rmSync(f, { force: true });
}

describe("the bounce token", () => {
  const id = newId();

  it("verifies under its secret and names the mail; any other secret or a changed character refuses it", () => {
    const token = signToken(id, SECRET);
    assert.match(token, /^[a-z2-7]{26}\.[a-z2-7]{20}$/);
    assert.equal(token.length, 47);
    assert.equal(verifyToken(token, SECRET), id);
    assert.equal(verifyToken(token.toUpperCase(), SECRET), id, "case-insensitive (MTAs may change the case of addresses)");
    assert.equal(verifyToken(token, `${SECRET}x`), null);
    const last = token.at(-1) === "a" ? "b" : "a";
    assert.equal(verifyToken(token.slice(0, -1) + last, SECRET), null);
    assert.equal(verifyToken(signToken(newId(), SECRET).split(".")[0] + "." + token.split(".")[1], SECRET), null, "a MAC moved to another id");
    assert.equal(verifyToken(id, SECRET), null, "a bare id is no token");
    assert.equal(verifyToken("", SECRET), null);
  });

  it("is found in a VERP address after the last +", () => {
    const token = signToken(id, SECRET);
    assert.equal(tokenFromAddress(`bounces+${token}@example.com`), token);
    assert.equal(tokenFromAddress(`<bounces+tag+${token.toUpperCase()}@example.com>`), token);
    assert.equal(tokenFromAddress("bounces+nothing@example.com"), null);
    assert.equal(tokenFromAddress("bounces@example.com"), null);
  });

  it("options are checked up front with messages that say what to do", () => {
    assert.deepEqual(parseDsnOptions(), DEFAULT_DSN_OPTIONS);
    assert.deepEqual(parseDsnOptions({ notify: "delay, success,failure" }).notify, ["SUCCESS", "FAILURE", "DELAY"]);
    assert.equal(parseDsnOptions({ notify: ["never"] }).notify, "NEVER");
    assert.throws(() => parseDsnOptions({ notify: "failure,never" }), OptionsError);
    assert.throws(() => parseDsnOptions({ notify: [] }), /non-empty list/);
    assert.throws(() => parseDsnOptions({ ret: "BODY" }), /HDRS.*FULL/);
    assert.throws(() => parseDsnOptions({ secret: "short" }), /at least 16 bytes/);
    assert.throws(() => parseDsnOptions({ verp: true }), /needs a bounce secret/);
    assert.equal(parseDsnOptions({ secret: SECRET, verp: true }).verp, true);
  });
});

describe("the envelope the relay hands over", () => {
  const mail = { id: newId(), envelopeFrom: "bounces@example.com", envelopeTo: ["ann@example.org", "bob@example.org"] };

  it("without DSN options: the mail's own envelope, nothing asked", () => {
    assert.deepEqual(handoffEnvelope(mail, null), { from: mail.envelopeFrom, to: mail.envelopeTo, dsn: null });
  });

  it("without a secret: ENVID is the mail id, the sender unchanged", () => {
    const e = handoffEnvelope(mail, parseDsnOptions({}));
    assert.equal(e.from, mail.envelopeFrom);
    assert.deepEqual(e.dsn, { envid: mail.id, notify: ["FAILURE", "DELAY"], ret: "HDRS" });
  });

  it("with a secret and VERP: ENVID and return path carry the signed token", () => {
    const e = handoffEnvelope(mail, parseDsnOptions({ secret: SECRET, verp: true, notify: "never" }));
    const token = signToken(mail.id, SECRET);
    assert.equal(e.from, `bounces+${token}@example.com`);
    assert.ok(e.from.split("@")[0]!.length <= 64);
    assert.deepEqual(e.dsn, { envid: token, notify: ["NEVER"], ret: "HDRS" });
  });

  it("the null sender never gets VERP, nor a sender whose local part would pass 64 characters", () => {
    const options = parseDsnOptions({ secret: SECRET, verp: true });
    assert.equal(handoffEnvelope({ ...mail, envelopeFrom: "" }, options).from, "");
    assert.equal(handoffEnvelope({ ...mail, envelopeFrom: "<>" }, options).from, "<>");
    const long = `${"x".repeat(17)}@example.com`; // 17 + 1 + 47 = 65
    const e = handoffEnvelope({ ...mail, envelopeFrom: long }, options);
    assert.equal(e.from, long);
    assert.equal(e.dsn?.envid, signToken(mail.id, SECRET), "the ENVID still links");
    assert.equal(handoffEnvelope({ ...mail, envelopeFrom: `${"x".repeat(16)}@example.com` }, options).from.split("@")[0]!.length, 64);
  });
});

describe("what each SMTP transport puts on the wire for a DsnRequest (in-process server)", () => {
  const dsn: DsnRequest = { envid: "0193f1c2-7a4e-7c1d-9b2a-3f0e5d6c7b8a", notify: ["FAILURE", "DELAY"], ret: "HDRS" };
  const envelope: RawEnvelope = { from: "app@example.com", to: ["ann+x@example.org", "bob@example.org"], dsn };

  async function wireOf(url: (base: string) => string, hideDsn: boolean, useRaw: boolean): Promise<string[]> {
    const server = await startTestSmtp({ captureWire: true, hideDsn });
    const transporter = createTransporter(url(server.url));
    try {
      const raw = rawMessage(`<${randomUUID()}@example.com>`, "ann@example.org");
      const sendRaw = transportCapabilities(transporter).sendRaw;
      if (useRaw) await sendRaw!(envelope, raw);
      else await transporter.sendMail(rawSendMailOptions(envelope, raw, "<x@example.com>"));
      return server.wire().toString("latin1").split("\r\n").filter((l) => /^(MAIL FROM|RCPT TO)/.test(l));
    } finally {
      transporter.close();
      await server.close();
    }
  }

  it("pipelined (sendRaw and sendMail): RET and ENVID on MAIL FROM, NOTIFY and an xtext ORCPT on every RCPT", async () => {
    for (const useRaw of [true, false]) {
      const lines = await wireOf((u) => `${u}?pipelining=true`, false, useRaw);
      assert.deepEqual(lines, [
        `MAIL FROM:<app@example.com> RET=HDRS ENVID=${dsn.envid}`,
        "RCPT TO:<ann+x@example.org> NOTIFY=FAILURE,DELAY ORCPT=rfc822;ann+2Bx@example.org",
        "RCPT TO:<bob@example.org> NOTIFY=FAILURE,DELAY ORCPT=rfc822;bob@example.org",
      ]);
    }
  });

  it("pipelined, to a server that does not offer DSN: nothing added", async () => {
    const lines = await wireOf((u) => `${u}?pipelining=true`, true, true);
    assert.deepEqual(lines, ["MAIL FROM:<app@example.com>", "RCPT TO:<ann+x@example.org>", "RCPT TO:<bob@example.org>"]);
  });

  it("nodemailer's pool (pipelining=false): RET, ENVID and NOTIFY, no ORCPT; nothing to a server without DSN", async () => {
    const lines = await wireOf((u) => `${u}?pipelining=false`, false, false);
    assert.deepEqual(lines, [
      `MAIL FROM:<app@example.com> RET=HDRS ENVID=${dsn.envid}`,
      "RCPT TO:<ann+x@example.org> NOTIFY=FAILURE,DELAY",
      "RCPT TO:<bob@example.org> NOTIFY=FAILURE,DELAY",
    ]);
    const plain = await wireOf((u) => `${u}?pipelining=false`, true, false);
    assert.deepEqual(plain, ["MAIL FROM:<app@example.com>", "RCPT TO:<ann+x@example.org>", "RCPT TO:<bob@example.org>"]);
  });
});

describe("real Postfix: every transport's DSN request comes back in the reports", () => {
  const transports = [
    { name: "smtp (pipelined)", url: "smtp://127.0.0.1:25?pipelining=true" },
    { name: "smtp (nodemailer pool)", url: "smtp://127.0.0.1:25?pipelining=false" },
    { name: "sendmail-bs", url: `sendmail-bs:${POSTFIX_SENDMAIL}` },
    { name: "sendmail", url: `sendmail:${POSTFIX_SENDMAIL}` },
  ];

  it("a delivered and a failed report carry the ENVID, per transport", async (t) => {
    if (!needPostfix(t)) return;
    const started = Date.now();
    const runs = transports.map((tr) => ({ ...tr, tag: `dsn${randomUUID().slice(0, 8)}`, envid: newId() }));
    after(() => runs.forEach((r) => removeFiles(r.tag)));
    await Promise.all(
      runs.map(async (r) => {
        const transporter = createTransporter(r.url);
        try {
          const to = [`outbox-test+${r.tag}@localhost`, `nosuch${r.tag}@localhost`];
          const envelope: RawEnvelope = { from: `outbox-test+bnc${r.tag}@localhost`, to, dsn: { envid: r.envid, notify: ["SUCCESS", "FAILURE"], ret: "HDRS" } };
          const raw = rawMessage(`<${r.tag}@example.com>`, to[0]!);
          const sendRaw = transportCapabilities(transporter).sendRaw;
          const info = sendRaw ? await sendRaw(envelope, raw) : await transporter.sendMail(rawSendMailOptions(envelope, raw, `<${r.tag}@example.com>`));
          // Postfix's smtpd refuses the unknown local user at RCPT; sendmail and its pickup accept and bounce later.
          assert.ok(info.accepted?.includes(to[0]!), `${r.name}: accepted ${JSON.stringify(info.accepted)}`);
        } finally {
          transporter.close();
        }
      }),
    );
    for (const r of runs) {
      // Postfix's smtpd refuses the unknown local user at RCPT (no report); sendmail's pickup takes it and bounces.
      const smtp = r.name.startsWith("smtp");
      const reports = await reportsTo(`outbox-test+bnc${r.tag}@localhost`, smtp ? 1 : 2);
      const byAction = new Map(reports.flatMap((rep) => rep.recipients.map((x) => [x.action, { rep, x }] as const)));
      assert.equal(byAction.get("delivered")?.x.finalRecipient, `outbox-test+${r.tag}@localhost`, `${r.name}: NOTIFY=SUCCESS gave a success report`);
      for (const { rep } of byAction.values()) {
        // Seen with Postfix 3.7: `sendmail -bs` keeps NOTIFY and RET but drops the ENVID (its
        // reports link by VERP or the returned Message-ID); the other three carry it back.
        assert.equal(rep.originalEnvelopeId, r.name === "sendmail-bs" ? null : r.envid, `${r.name}: Original-Envelope-Id`);
        assert.equal(rep.returnedMessageId, `<${r.tag}@example.com>`, `${r.name}: the returned headers' Message-ID`);
        assert.ok(rep.addressedTo.includes(`outbox-test+bnc${r.tag}@localhost`), `${r.name}: sent to the envelope sender`);
      }
      if (!smtp) {
        const failed = byAction.get("failed");
        assert.equal(failed?.x.status, "5.1.1", `${r.name}: failed report for the unknown user`);
        assert.equal(failed?.x.finalRecipient, `nosuch${r.tag}@localhost`);
      }
    }
    t.diagnostic(`4 transports, reports back from Postfix in ${Date.now() - started} ms`);
  });
});

describe("the RFC 3464 parser, on reports real Postfix wrote", () => {
  it("`sendmail -N failure,delay,success -V envid -R hdrs` yields a delivered and a failed report, read per recipient", async (t) => {
    if (!needPostfix(t)) return;
    const tag = `dsnp${randomUUID().slice(0, 8)}`;
    const envid = `envid-${tag}`;
    after(() => removeFiles(tag));
    const child = execFileAsync(POSTFIX_SENDMAIL, ["-N", "failure,delay,success", "-V", envid, "-R", "hdrs", "-f", `outbox-test+bnc${tag}@localhost`, "-i", `outbox-test+${tag}@localhost`, `nosuch${tag}@localhost`]);
    child.child.stdin!.end(rawMessage(`<${tag}@example.com>`, `outbox-test+${tag}@localhost`).toString("latin1").replace(/\r\n/g, "\n"));
    await child;
    const reports = await reportsTo("outbox-test+bnc" + tag + "@localhost", 2);
    const delivered = reports.find((r) => r.recipients[0]?.action === "delivered");
    const failed = reports.find((r) => r.recipients[0]?.action === "failed");
    assert.ok(delivered && failed, "one delivered, one failed report");
    for (const r of [delivered, failed]) {
      assert.equal(r.originalEnvelopeId, envid);
      assert.equal(r.reportingMta, "localhost");
      assert.match(r.queueId ?? "", /^[0-9A-F]{6,}$/, "Postfix's queue id of the original mail");
      assert.ok(r.arrivalDate instanceof Date && Math.abs(r.arrivalDate.getTime() - Date.now()) < 120_000);
      assert.equal(r.returnedMessageId, `<${tag}@example.com>`);
      assert.match(r.messageId ?? "", /^<.+@localhost>$/, "the report's own Message-ID");
      assert.deepEqual(r.addressedTo, [`outbox-test+bnc${tag}@localhost`]);
      assert.equal(r.recipients.length, 1);
    }
    assert.deepEqual(delivered.recipients[0], {
      finalRecipient: `outbox-test+${tag}@localhost`,
      originalRecipient: `outbox-test+${tag}@localhost`,
      action: "delivered",
      status: "2.0.0",
      remoteMta: null,
      diagnosticCode: "delivery via local: delivered to maildir",
      lastAttemptDate: null,
    });
    assert.equal(failed.recipients[0]?.status, "5.1.1");
    assert.equal(failed.recipients[0]?.finalRecipient, `nosuch${tag}@localhost`);
    assert.match(failed.recipients[0]?.diagnosticCode ?? "", /unknown user/);

    const mailId = newId();
    const [event] = reportEvents(failed, mailId, new Date());
    assert.deepEqual({ ...event, eventKey: undefined }, {
      emailId: mailId,
      recipient: `nosuch${tag}@localhost`,
      event: "bounced",
      at: failed.arrivalDate,
      source: "dsn",
      queueId: failed.queueId,
      dsnStatus: "5.1.1",
      remoteMta: null,
      reply: failed.recipients[0]!.diagnosticCode,
      eventKey: undefined,
    });
    assert.match(event!.eventKey, /^dsn:[0-9a-f]{64}$/);
    assert.equal(reportEvents(failed, mailId, new Date(0))[0]!.eventKey, event!.eventKey, "the same report gives the same key");
    assert.notEqual(reportEvents(delivered, mailId, new Date())[0]!.eventKey, event!.eventKey);
  });

  it("maps Action and Status to events as the design says", () => {
    assert.equal(eventOf("delivered", "2.0.0"), "delivered");
    assert.equal(eventOf("relayed", "2.0.0"), "delivered");
    assert.equal(eventOf("expanded", "2.0.0"), "delivered");
    assert.equal(eventOf("delayed", "4.4.1"), "deferred");
    assert.equal(eventOf("failed", "5.1.1"), "bounced");
    assert.equal(eventOf("failed", "4.4.7"), "expired");
    assert.equal(eventOf("failed", null), "bounced");
    assert.equal(eventOf("something", "2.0.0"), null);
  });

  it("refuses what is not a delivery report, saying why", async () => {
    await assert.rejects(parseDeliveryReport(Buffer.alloc(0)), /empty/);
    await assert.rejects(parseDeliveryReport(rawMessage("<a@b>", "x@y")), (e: unknown) => e instanceof UnreadableReportError && /no message\/delivery-status part/.test(e.message));
    await assert.rejects(parseDeliveryReport(Buffer.from("\x00\x01garbage\xff\xfe")), UnreadableReportError);
    const noRecipients = Buffer.from(
      [
        "Content-Type: multipart/report; report-type=delivery-status; boundary=b",
        "",
        "--b",
        "Content-Type: message/delivery-status",
        "",
        "Reporting-MTA: dns; x",
        "",
        "--b--",
        "",
      ].join("\r\n"),
    );
    await assert.rejects(parseDeliveryReport(noRecipients), /names no recipient/);
  });
});
