/**
 * The MTA hand-off over SMTP, against a real SMTP server in this process (testkit/smtp.ts). The
 * classification of what the MTA answers, on its own, is in classify.test.ts.
 */
import { test, describe } from "node:test";
import assert from "node:assert/strict";
import nodemailer from "nodemailer";
import { createTransporter, describeTransport, verifyTransport } from "../src/transport.js";
import { classifyError, toHandoffResult } from "../src/classify.js";
import { TransportConfigError } from "../src/errors.js";
import { startTestSmtp, failTimes, rejectRecipients, combineFaults } from "../testkit/smtp.js";

let seq = 0;
function mail(to: string[] = ["ann@example.com"], extraBody = "") {
  seq += 1;
  const messageId = `<t${seq}.${process.pid}.${Date.now()}@test.example>`;
  const raw = Buffer.from(
    [
      "From: App <app@example.com>",
      `To: ${to.join(", ")}`,
      `Message-ID: ${messageId}`,
      "Subject: hello",
      "MIME-Version: 1.0",
      "Content-Type: text/plain; charset=utf-8",
      "",
      "first line",
      ".",
      ".leading dot",
      extraBody,
      "",
    ].join("\r\n"),
  );
  return { messageId, raw, sendOptions: { envelope: { from: "app@example.com", to }, raw, messageId } };
}

async function rejection(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (err) {
    return err;
  }
  assert.fail("expected the hand-off to fail");
}

describe("smtp:// transport against a real SMTP server", () => {
  test("a mail handed over smtp:// arrives once, byte for byte, and the reply's queue id is parsed", async () => {
    const smtp = await startTestSmtp();
    const transporter = createTransporter(smtp.url);
    try {
      const m = mail(["ann@example.com", "bob@example.com"]);
      const result = toHandoffResult(await transporter.sendMail(m.sendOptions));
      assert.equal(smtp.messages.length, 1);
      const got = smtp.messages[0]!;
      assert.equal(got.messageId, m.messageId);
      assert.deepEqual(got.recipients, ["ann@example.com", "bob@example.com"]);
      assert.equal(got.envelopeFrom, "app@example.com");
      assert.deepEqual(got.raw, m.raw);
      assert.match(result.response, /^250 2\.0\.0 Ok: queued as [0-9A-F]{10}$/);
      assert.equal(result.queueId, got.queueId);
      assert.deepEqual(result.accepted, ["ann@example.com", "bob@example.com"]);
      assert.deepEqual(result.rejected, []);
    } finally {
      transporter.close();
      await smtp.close();
    }
  });

  test("the pool carries many mails over at most maxConnections connections", async () => {
    const smtp = await startTestSmtp();
    const transporter = createTransporter(`${smtp.url}?maxConnections=2`);
    try {
      const mails = Array.from({ length: 30 }, () => mail());
      const results = await Promise.all(mails.map((m) => transporter.sendMail(m.sendOptions)));
      assert.equal(smtp.messages.length, 30);
      assert.ok(smtp.sessions <= 2, `opened ${smtp.sessions} connections`);
      const queueIds = new Set(results.map((r) => toHandoffResult(r).queueId));
      assert.equal(queueIds.size, 30);
      assert.ok([...smtp.countByMessageId().values()].every((n) => n === 1));
    } finally {
      transporter.close();
      await smtp.close();
    }
  });

  test("a 4xx answer is a transient failure and a 5xx a permanent one; neither mail is kept", async () => {
    const smtp = await startTestSmtp();
    const transporter = createTransporter(smtp.url);
    try {
      smtp.setFaults(failTimes(1, { reply: 451, message: "4.3.0 Queue full, try later" }));
      const transient = classifyError(await rejection(transporter.sendMail(mail().sendOptions)));
      assert.equal(transient.kind, "transient");
      assert.equal(transient.responseCode, 451);
      assert.equal(transient.code, "EMESSAGE");
      assert.equal(transient.response, "451 4.3.0 Queue full, try later");

      smtp.setFaults(failTimes(1, { reply: 554, message: "5.7.1 Message refused" }));
      const permanent = classifyError(await rejection(transporter.sendMail(mail().sendOptions)));
      assert.equal(permanent.kind, "permanent");
      assert.equal(permanent.responseCode, 554);

      smtp.setFaults(failTimes(1, { reply: 421 }, "mail"));
      const atMailFrom = classifyError(await rejection(transporter.sendMail(mail().sendOptions)));
      assert.equal(atMailFrom.kind, "transient");
      // 421 closes the session; nodemailer's pool may report the closed connection instead of the reply.
      assert.ok(atMailFrom.responseCode === 421 || atMailFrom.code === "ECONNECTION", atMailFrom.message);

      smtp.setFaults(failTimes(1, { reply: 553, message: "5.1.8 Sender address rejected" }, "mail"));
      const senderRefused = classifyError(await rejection(transporter.sendMail(mail().sendOptions)));
      assert.equal(senderRefused.kind, "permanent");
      assert.equal(senderRefused.responseCode, 553);

      assert.equal(smtp.messages.length, 0);
      smtp.setFaults(null);
      await transporter.sendMail(mail().sendOptions);
      assert.equal(smtp.messages.length, 1, "the pool recovers after refusals");
    } finally {
      transporter.close();
      await smtp.close();
    }
  });

  test("when some recipients are refused the mail goes to the others and the refused ones are listed with their reply", async () => {
    const smtp = await startTestSmtp({ faults: rejectRecipients((r) => r.startsWith("gone"), 550, "5.1.1 User unknown") });
    const transporter = createTransporter(smtp.url);
    try {
      const m = mail(["ann@example.com", "gone@example.com", "bob@example.com"]);
      const result = toHandoffResult(await transporter.sendMail(m.sendOptions));
      assert.deepEqual(result.accepted, ["ann@example.com", "bob@example.com"]);
      assert.deepEqual(result.rejected, [{ recipient: "gone@example.com", response: "550 5.1.1 User unknown" }]);
      assert.deepEqual(smtp.messages[0]!.recipients, ["ann@example.com", "bob@example.com"]);
      assert.ok(result.queueId);
    } finally {
      transporter.close();
      await smtp.close();
    }
  });

  test("when every recipient is refused the hand-off fails with the reply code: permanent for 5xx, transient if one was only deferred", async () => {
    const smtp = await startTestSmtp({
      faults: combineFaults(rejectRecipients((r) => r.startsWith("later"), 450), rejectRecipients((r) => r.startsWith("gone"), 550)),
    });
    const transporter = createTransporter(smtp.url);
    try {
      const allGone = await rejection(transporter.sendMail(mail(["gone1@example.com", "gone2@example.com"]).sendOptions));
      const f = classifyError(allGone);
      assert.equal(f.code, "EENVELOPE");
      assert.equal(f.responseCode, 550);
      assert.equal(f.kind, "permanent");

      const oneDeferred = classifyError(await rejection(transporter.sendMail(mail(["gone1@example.com", "later@example.com"]).sendOptions)));
      assert.equal(oneDeferred.responseCode, 450);
      assert.equal(oneDeferred.kind, "transient");
      assert.equal(smtp.messages.length, 0);
    } finally {
      transporter.close();
      await smtp.close();
    }
  });

  test("a server that refuses connections gives a transient failure, and the same transporter delivers once it listens again", async () => {
    const smtp = await startTestSmtp();
    const transporter = createTransporter(smtp.url);
    try {
      await transporter.sendMail(mail().sendOptions);
      await smtp.refuseConnections();
      const err = await rejection(transporter.sendMail(mail().sendOptions));
      const f = classifyError(err);
      assert.equal(f.kind, "transient");
      assert.ok(f.code === "ESOCKET" || f.code === "ECONNECTION", `code ${f.code}`);
      assert.equal((err as { originalCode?: string }).originalCode ?? "ECONNREFUSED", "ECONNREFUSED");

      await smtp.acceptConnections();
      await transporter.sendMail(mail().sendOptions);
      assert.equal(smtp.messages.length, 2);
    } finally {
      transporter.close();
      await smtp.close();
    }
  });

  test("a server that stalls before its reply to DATA makes the hand-off time out (ETIMEDOUT, transient) within the URL's timeout", async () => {
    const smtp = await startTestSmtp({ faults: failTimes(1, { stallMs: 5000 }) });
    const transporter = createTransporter(`${smtp.url}?timeout=400`);
    try {
      const started = Date.now();
      const f = classifyError(await rejection(transporter.sendMail(mail().sendOptions)));
      const elapsed = Date.now() - started;
      assert.equal(f.code, "ETIMEDOUT");
      assert.equal(f.kind, "transient");
      assert.ok(elapsed >= 350 && elapsed < 2500, `timed out after ${elapsed} ms`);
      // The server had committed the mail before stalling: this is the duplicate window.
      assert.equal(smtp.messages.length, 1);
    } finally {
      transporter.close();
      await smtp.close();
    }
  });

  test("a server that never greets makes the hand-off time out", async () => {
    const smtp = await startTestSmtp({ faults: failTimes(1, { stallMs: 5000 }, "connect") });
    const transporter = createTransporter(`${smtp.url}?timeout=300`);
    try {
      const started = Date.now();
      const f = classifyError(await rejection(transporter.sendMail(mail().sendOptions)));
      assert.equal(f.code, "ETIMEDOUT");
      assert.equal(f.kind, "transient");
      assert.ok(Date.now() - started < 2000);
    } finally {
      transporter.close();
      await smtp.close();
    }
  });

  test("a connection dropped after the body was sent is transient, and the server may still have the mail", async () => {
    const smtp = await startTestSmtp({ faults: failTimes(1, { drop: true }) });
    const transporter = createTransporter(smtp.url);
    try {
      const m = mail();
      const f = classifyError(await rejection(transporter.sendMail(m.sendOptions)));
      assert.equal(f.kind, "transient");
      assert.equal(f.responseCode, null);
      await transporter.sendMail(m.sendOptions); // the relay's retry
      assert.equal(smtp.countByMessageId().get(m.messageId), 2);
      assert.equal(smtp.messages[0]!.replyDropped, true);
    } finally {
      transporter.close();
      await smtp.close();
    }
  });

  test("credentials in the URL are percent-decoded and used for AUTH", async () => {
    const smtp = await startTestSmtp({ auth: { user: "me@example.com", pass: "p@ss:w/rd" } });
    const url = `smtp://me%40example.com:p%40ss%3Aw%2Frd@127.0.0.1:${smtp.port}`;
    const transporter = createTransporter(url);
    try {
      await transporter.sendMail(mail().sendOptions);
      assert.equal(smtp.messages[0]!.authUser, "me@example.com");
    } finally {
      transporter.close();
      await smtp.close();
    }
  });

  test("the password never shows in describeTransport, in configuration errors or in a classified failure", async () => {
    const secret = "s3cr3t-Pw";
    const smtp = await startTestSmtp({ auth: { user: "app", pass: "other" } });
    const url = `smtp://app:${secret}@127.0.0.1:${smtp.port}?timeout=2000`;
    const transporter = createTransporter(url);
    try {
      const description = describeTransport(url);
      assert.ok(!description.includes(secret), description);
      assert.match(description, /app:\*\*\*@127\.0\.0\.1/);

      const err = await rejection(transporter.sendMail(mail().sendOptions));
      const f = classifyError(err);
      assert.equal(f.code, "EAUTH");
      assert.equal(f.kind, "transient", "a wrong password is fixed in the configuration; the mail is fine");
      assert.ok(!f.message.includes(secret) && !(f.response ?? "").includes(secret), f.message);

      const check = await verifyTransport(transporter, 2000);
      assert.equal(check.ok, false);
      assert.ok(!check.message.includes(secret));

      for (const bad of [`smtpx://app:${secret}@host`, `smtp://app:${secret}@host?bogus=1`, `smtp://app:${secret}@host/path`]) {
        assert.throws(
          () => createTransporter(bad),
          (e: unknown) => e instanceof TransportConfigError && !e.message.includes(secret),
        );
        assert.ok(!describeTransport(bad).includes(secret));
      }
      const f2 = classifyError(new Error(`connect failed for smtp://app:${secret}@host:25 (pass=${secret})`));
      assert.ok(!f2.message.includes(secret), f2.message);
    } finally {
      transporter.close();
      await smtp.close();
    }
  });

  test("verifyTransport reports a reachable server as ready and a refused one as not", async () => {
    const smtp = await startTestSmtp();
    const transporter = createTransporter(smtp.url);
    try {
      assert.equal((await verifyTransport(transporter, 2000)).ok, true);
      await smtp.refuseConnections();
      const check = await verifyTransport(transporter, 2000);
      assert.equal(check.ok, false);
      assert.match(check.message, /ECONNREFUSED|ESOCKET|ECONNECTION/);
    } finally {
      transporter.close();
      await smtp.close();
    }
  });
});

describe("createTransporter", () => {
  test("malformed or unknown transport URLs are refused with TransportConfigError naming the accepted forms", () => {
    for (const bad of [
      "",
      "localhost:25",
      "http://example.com",
      "smtpx://host",
      "smtp://",
      "smtp://host?maxConnections=zero",
      "smtp://host?timeout=-1",
      "smtp://host?requireTLS=maybe",
      "smtp://host?unknownOption=1",
      "sendmail:usr/sbin/sendmail",
      "sendmail:./sendmail",
      "sendmail-bs:sendmail",
      "sendmail://host/usr/sbin/sendmail",
      "sendmail:/usr/sbin/sendmail?maxMessages=3",
    ]) {
      assert.throws(
        () => createTransporter(bad),
        (e: unknown) => e instanceof TransportConfigError && /smtp:\/\/.*sendmail-bs:/.test(e.message),
        `expected ${JSON.stringify(bad)} to be refused`,
      );
    }
  });

  test("a relative sendmail path is refused because it would depend on PATH", () => {
    assert.throws(() => createTransporter("sendmail:sendmail"), /absolute path/);
  });

  test("the accepted URL forms build the matching transports", () => {
    assert.equal(createTransporter("smtp://127.0.0.1:2525").transporter.name, "SMTP (pipelined)");
    assert.equal(createTransporter("smtp://127.0.0.1:2525?pipelining=false").transporter.name, "SMTP (pool)");
    assert.equal(createTransporter("smtps://u:p@mail.example.com").transporter.name, "SMTP (pool)");
    assert.equal(createTransporter("sendmail:").transporter.name, "sendmail-pipe");
    assert.equal(createTransporter("sendmail:/usr/sbin/sendmail?timeout=5000").transporter.name, "sendmail-pipe");
    assert.equal(createTransporter("sendmail:///usr/sbin/sendmail").transporter.name, "sendmail-pipe");
    assert.equal(createTransporter("sendmail-bs:/usr/sbin/sendmail?maxConnections=2").transporter.name, "sendmail-bs");
    const options = createTransporter("smtp://h:2525?maxConnections=9&timeout=1234").options as Record<string, unknown>;
    assert.equal(options.maxConnections, 9);
    assert.equal(options.socketTimeout, 1234);
    assert.equal(options.greetingTimeout, 1234);
    assert.equal(options.port, 2525);
    assert.equal(options.pool, true);
    assert.equal((createTransporter("smtp://h").options as Record<string, unknown>).port, 25);
    assert.equal((createTransporter("smtps://h").options as Record<string, unknown>).port, 465);
    assert.match(describeTransport("sendmail:"), /^sendmail:\/usr\/sbin\/sendmail /);
    assert.match(describeTransport("smtp://nope?x=1"), /invalid/);
  });

  test("an existing transporter is used as it is, and a transport object is wrapped", async () => {
    const existing = nodemailer.createTransport({ jsonTransport: true });
    assert.equal(createTransporter(existing), existing);
    const sent: string[] = [];
    const custom = createTransporter({
      name: "memory",
      version: "1",
      send(m, cb) {
        sent.push(m.message.messageId());
        cb(null, { envelope: m.message.getEnvelope(), messageId: m.message.messageId(), response: "250 OK id=1abcDE-000123-AB" });
      },
    });
    const m = mail();
    const result = toHandoffResult(await custom.sendMail(m.sendOptions));
    assert.deepEqual(sent, [m.messageId]);
    assert.equal(result.queueId, "1abcDE-000123-AB");
    assert.equal(describeTransport(custom), "nodemailer transporter (memory)");
  });
});
