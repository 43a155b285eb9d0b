/**
 * Composing (src/compose.ts): the message that comes out parses back to what went in, Bcc stays out of the
 * headers, line ends are CRLF only, the bytes are 7-bit where MIME allows, the Message-ID, and the limits
 * on the message and header sizes and on the compose defaults.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { simpleParser } from "mailparser";
import {
  composeMail,
  validateMailInput,
  validateComposeDefaults,
  DEFAULT_MAX_HEADER_BYTES,
  DEFAULT_MAX_MESSAGE_BYTES,
} from "../src/compose.js";
import { MAX_RECIPIENTS } from "../src/addresses.js";
import { bareLineEndAt } from "../src/wire.js";
import { isUuid } from "../src/ids.js";
import { HeaderTooLargeError, MailTooLargeError, OptionsError } from "../src/errors.js";
import { BASE, DEFAULTS, FROM, NOW, recipients, refusal, revokedProxy } from "./support/mail.js";

test("a composed mail parses back to the same subject, text, html, attachments and Message-ID", async () => {
  const pdf = Buffer.from([0x25, 0x50, 0x44, 0x46, 0x00, 0xff, 0x10, 0x80]);
  const png = new Uint8Array([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  const text = "Grüße, Ann!\nYour order 42 has shipped.\n" + "long line ".repeat(40);
  const html = '<p>Grüße, <b>Ann</b>!</p><img src="cid:logo@shop.example">';
  const mail = await composeMail(
    {
      from: FROM,
      to: ["Ann Ärger <ann@example.com>"],
      cc: { name: "Bob, Jr.", address: "bob@example.org" },
      replyTo: "support@example.com",
      subject: "Ihre Bestellung – order #42",
      text,
      html,
      attachments: [
        { filename: "invoice 42.pdf", content: pdf, contentType: "application/pdf" },
        { filename: "logo.png", content: png, contentType: "image/png", cid: "logo@shop.example" },
        { filename: "note.txt", content: Buffer.from("base64 note").toString("base64"), encoding: "base64" },
      ],
      headers: { "X-Order-Id": "42", "List-Unsubscribe": "<mailto:unsubscribe@example.com>" },
    },
    DEFAULTS,
    NOW,
  );
  const parsed = await simpleParser(mail.raw, { keepCidLinks: true });
  assert.equal(parsed.subject, "Ihre Bestellung – order #42");
  assert.equal(mail.subject, "Ihre Bestellung – order #42");
  assert.equal(parsed.text?.replace(/\n$/, ""), text.replace(/\n$/, ""));
  assert.equal(parsed.html, html);
  assert.equal(parsed.messageId, mail.messageId);
  assert.equal(parsed.date?.getTime(), NOW.getTime());
  assert.equal(parsed.headers.get("x-order-id"), "42");
  assert.deepEqual(
    parsed.attachments.map((a) => [a.filename, a.contentType, a.content.toString("hex")]).sort((a, b) => String(a[0]).localeCompare(String(b[0]))),
    [
      ["invoice 42.pdf", "application/pdf", pdf.toString("hex")],
      ["logo.png", "image/png", Buffer.from(png).toString("hex")],
      ["note.txt", "text/plain", Buffer.from("base64 note").toString("hex")],
    ],
  );
  assert.equal(parsed.attachments.find((a) => a.filename === "logo.png")?.cid, "logo@shop.example");
  const from = parsed.from?.value[0];
  assert.deepEqual([from?.name, from?.address], ["Shop", "shop@example.com"]);
  assert.equal(parsed.to && !Array.isArray(parsed.to) ? parsed.to.value[0]?.name : null, "Ann Ärger");
  assert.equal(parsed.cc && !Array.isArray(parsed.cc) ? parsed.cc.value[0]?.name : null, "Bob, Jr.");
  assert.equal(mail.size, mail.raw.length);
  assert.match(mail.messageId, /^<[0-9a-f-]{36}@example\.com>$/);
  assert.equal(mail.messageId, `<${mail.id}@example.com>`);
  assert.ok(isUuid(mail.id));
});

test("Bcc recipients get the mail but never appear in its headers", async () => {
  const mail = await composeMail(
    { ...BASE, cc: "carol@example.com", bcc: ["Secret Sam <sam@hidden.example>", { address: "eve@hidden.example" }] },
    DEFAULTS,
    NOW,
  );
  assert.deepEqual(mail.envelopeTo, ["ann@example.com", "carol@example.com", "sam@hidden.example", "eve@hidden.example"]);
  const raw = mail.raw.toString("latin1");
  assert.doesNotMatch(raw, /^bcc:/im);
  assert.doesNotMatch(raw, /hidden\.example|Secret Sam/);
  const parsed = await simpleParser(mail.raw);
  assert.equal(parsed.bcc, undefined);
});

test("the message has CRLF line ends only and no line longer than 998 octets", async () => {
  const mail = await composeMail(
    {
      ...BASE,
      subject: "word ".repeat(300),
      text: "unix\nline ends\nand a " + "verylongword".repeat(200) + "\n",
      html: "<p>\n" + "x".repeat(3000) + "\n</p>",
      headers: { "X-Many-Words": "w ".repeat(1000) },
    },
    DEFAULTS,
    NOW,
  );
  const raw = mail.raw.toString("latin1");
  assert.doesNotMatch(raw, /[^\r]\n/, "bare LF found");
  assert.doesNotMatch(raw, /\r(?!\n)/, "bare CR found");
  const longest = Math.max(...raw.split("\r\n").map((l) => l.length));
  assert.ok(longest <= 998, `a line is ${longest} octets`);
});

test("bareLineEndAt finds the first lone CR or LF of a stored message", () => {
  assert.equal(bareLineEndAt(Buffer.from("a\r\nb\r\n")), -1);
  assert.equal(bareLineEndAt(Buffer.from("")), -1);
  assert.equal(bareLineEndAt(Buffer.from("a\r\n.\rb\r\n")), 4);
  assert.equal(bareLineEndAt(Buffer.from("a\r\nb\nc\r")), 4);
  assert.equal(bareLineEndAt(Buffer.from("\nx")), 0);
  assert.equal(bareLineEndAt(Buffer.from("x\r")), 1);
  assert.equal(bareLineEndAt(Buffer.from("a\r\r\n")), 1);
  assert.equal(bareLineEndAt(new Uint8Array([0x61, 0x0a])), 1);
});

test("a mail with non-ASCII in every field is stored as 7-bit bytes", async () => {
  const forwarded = "Subject: hello\r\nFrom: a@example.com\r\n\r\nASCII only.\r\n";
  const mail = await composeMail(
    {
      from: "Jürgen Ölmann <shop@bücher.example>",
      to: [{ name: "Ann Ärger, „Chefin“", address: "ann@例え.jp" }, "Zoë 🎉 <zoe@example.com>"],
      cc: "Ğül <g@example.com>",
      replyTo: "Ωmega <o@example.com>",
      subject: `Grüße – 注文 #42 🎉 ${"läng ".repeat(40)}`,
      text: `Grüße\n${"ä".repeat(200)}\n.\n`,
      html: '<p>Grüße 🎉</p><img src="cid:logo@example.com">',
      headers: { "X-Note": `Grüße aus Köln ${"wörter ".repeat(30)}`, "X-Ascii": "plain" },
      attachments: [
        { filename: "Grüße 注文.pdf", content: Buffer.from([0xff, 0x00, 0x80, 0x0d]), contentType: "application/pdf" },
        { filename: "ß.txt", content: "Grüße\r\n", contentType: "text/plain; charset=utf-8; format=\"flöwed\"" },
        { filename: "Ünicode.bin", content: "Grüße".repeat(100), encoding: "utf8" },
        { filename: "logo.png", content: Buffer.from([1, 2, 3]), contentType: "image/png", cid: "logo@example.com" },
        { filename: "Weitergeleitet: Grüße.eml", content: Buffer.from(forwarded).toString("base64"), encoding: "base64", contentType: "message/rfc822" },
        { content: Buffer.from(forwarded).toString("hex"), encoding: "hex", contentType: "message/rfc822" },
      ],
    },
    DEFAULTS,
    NOW,
  );
  const at = mail.raw.findIndex((b) => b >= 0x80);
  assert.equal(at, -1, `an 8-bit byte at ${at}: ${JSON.stringify(mail.raw.subarray(Math.max(0, at - 80), at + 20).toString("latin1"))}`);
  const raw = mail.raw.toString("latin1");
  assert.doesNotMatch(raw, /Content-Transfer-Encoding: 8bit/i, "no part is labelled 8bit");
  assert.equal(raw.match(/Content-Type: message\/rfc822(?:;[^\r]*(?:\r\n [^\r]*)*)?\r\nContent-Transfer-Encoding: 7bit\r\n/g)?.length, 2);
  const parsed = await simpleParser(mail.raw);
  assert.equal(parsed.subject, `Grüße – 注文 #42 🎉 ${"läng ".repeat(40)}`);
  assert.equal(parsed.headers.get("x-ascii"), "plain");
  assert.deepEqual(parsed.attachments.map((a) => a.filename ?? "").sort(), ["Grüße 注文.pdf", "logo.png", "ß.txt", "Ünicode.bin"].sort());
  assert.match(raw, /filename\*0\*=utf-8''Weitergeleitet%3A%20Gr%C3%BC%C3%9Fe\.eml/, "the message/rfc822 part keeps its file name");
});

test("the default from is used when the mail has none, and its domain names the Message-ID", async () => {
  const mail = await composeMail(
    { to: "ann@example.com", text: "hi" },
    { ...DEFAULTS, defaultFrom: { name: "Billing", address: "billing@shop.example" } },
    NOW,
  );
  assert.equal(mail.envelopeFrom, "billing@shop.example");
  assert.match(mail.messageId, /@shop\.example>$/);
  const parsed = await simpleParser(mail.raw);
  assert.deepEqual(parsed.from?.value.map((a) => [a.name, a.address]), [["Billing", "billing@shop.example"]]);

  const own = await composeMail({ ...BASE }, { ...DEFAULTS, defaultFrom: "other@other.example", messageIdDomain: "mail.Shop.example" }, NOW);
  assert.equal(own.envelopeFrom, "shop@example.com", "an explicit from wins over defaultFrom");
  assert.equal(own.messageId, `<${own.id}@mail.shop.example>`, "messageIdDomain wins over the sender's domain");
});

test("a mail over maxMessageBytes is refused with MailTooLargeError", async (t) => {
  await t.test("an attachment larger than the limit is refused before composing", async () => {
    const started = Date.now();
    const huge = Buffer.alloc(DEFAULT_MAX_MESSAGE_BYTES + 1024 * 1024);
    await assert.rejects(composeMail({ ...BASE, attachments: [{ filename: "big.bin", content: huge }] }, DEFAULTS, NOW), (err) => {
      assert.ok(err instanceof MailTooLargeError);
      assert.equal(err.limit, DEFAULT_MAX_MESSAGE_BYTES);
      assert.ok(err.size > DEFAULT_MAX_MESSAGE_BYTES);
      return true;
    });
    assert.ok(Date.now() - started < 1000, "refusing a huge attachment should not compose it");
  });
  await t.test("attachments that fit raw but not base64-encoded are refused", async () => {
    await assert.rejects(
      composeMail({ ...BASE, attachments: [{ filename: "a.bin", content: Buffer.alloc(9000) }] }, { ...DEFAULTS, maxMessageBytes: 10_000 }, NOW),
      MailTooLargeError,
    );
  });
  await t.test("a message whose parts fit but whose composed bytes do not is refused after composing", async () => {
    const limit = 2000;
    const err = await refusal({ ...BASE, text: "x ".repeat(850) }, { ...DEFAULTS, maxMessageBytes: limit });
    assert.ok(err instanceof MailTooLargeError);
    assert.equal(err.limit, limit);
    const fits = await composeMail({ ...BASE, text: "x ".repeat(850) }, DEFAULTS, NOW);
    assert.equal(err.size > limit, true);
    assert.ok(Math.abs(err.size - fits.size) < 100, "size is the composed size (give or take the random boundary)");
  });
  await t.test("the early estimate never exceeds the real composed size", async () => {
    const content = Buffer.alloc(30_000, 7);
    const mail = await composeMail({ ...BASE, attachments: [{ filename: "a.bin", content }] }, DEFAULTS, NOW);
    assert.ok(mail.size >= 4 * Math.ceil(content.length / 3) + Buffer.byteLength(BASE.text));
  });
});

test("by default a mail must fit Postfix's default message_size_limit (10,240,000) with room for the headers Postfix adds", async (t) => {
  assert.equal(DEFAULT_MAX_MESSAGE_BYTES, 10_000_000);
  const lines = (bytes: number): string => `${"x".repeat(74)}\r\n`.repeat(Math.floor(bytes / 76)) + "y".repeat(bytes % 76);
  await t.test("a 10,100,000-byte message is refused", async () => {
    const text = lines(10_100_000);
    assert.equal(Buffer.byteLength(text), 10_100_000);
    const err = await refusal({ ...BASE, text });
    assert.ok(err instanceof MailTooLargeError);
    assert.equal(err.limit, 10_000_000);
    assert.ok(err.size >= 10_100_000);
  });
  await t.test("a message whose body fits but whose composed bytes exceed 10,000,000 is refused after composing", async () => {
    const text = lines(9_999_900);
    const err = await refusal({ ...BASE, text });
    assert.ok(err instanceof MailTooLargeError);
    assert.ok(err.size > 10_000_000 && err.size < 10_001_000, `size ${err.size}`);
  });
});

test("a header section over maxHeaderBytes (default 100,000, below Postfix's header_size_limit of 102,400) is refused with HeaderTooLargeError", async (t) => {
  assert.ok(DEFAULT_MAX_HEADER_BYTES <= 100_000 && DEFAULT_MAX_HEADER_BYTES < 102_400);
  await t.test("a 1 MB subject", async () => {
    const input = { ...BASE, subject: "word ".repeat(200_000) };
    const err = await refusal(input);
    assert.ok(err instanceof HeaderTooLargeError, String(err));
    assert.equal(err.name, "HeaderTooLargeError");
    assert.equal(err.limit, DEFAULT_MAX_HEADER_BYTES);
    assert.ok(err.size >= 800_000, `size ${err.size}`); // a lower bound: the subject without its spaces
    assert.match(err.problems[0] ?? "", /^headers: the header section of the message is at least \d+ bytes, over the limit of 100000 bytes, .*use bcc, or send several mails.*raise maxHeaderBytes/);
    assert.deepEqual(validateMailInput(input, DEFAULTS), err.problems);
  });
  await t.test("999 recipients with long display names in to", async () => {
    const to = Array.from({ length: 999 }, (_, i) => ({ name: `Recipient number ${i} of the quarterly newsletter for the sales and marketing departments of the northern region`, address: `user${i}@example.com` }));
    const err = await refusal({ ...BASE, to });
    assert.ok(err instanceof HeaderTooLargeError);
  });
  await t.test("1,000 recipients with short addresses in to still fit", async () => {
    const mail = await composeMail({ ...BASE, to: recipients(MAX_RECIPIENTS).join(", ") }, DEFAULTS, NOW);
    assert.equal(mail.envelopeTo.length, 1000);
    assert.ok(mail.raw.indexOf("\r\n\r\n") <= DEFAULT_MAX_HEADER_BYTES);
  });
  await t.test("the composed header section is measured exactly: up to the limit is accepted, one byte over is refused", async () => {
    const blanks = " ".repeat(300);
    for (const input of [
      { ...BASE, subject: "a fairly ordinary subject line ".repeat(30), headers: { "X-Campaign": "spring ".repeat(100) } },
      // Runs of white space that folding shortens: the estimate made before composing must not refuse these.
      { ...BASE, from: { name: `A${blanks}B`, address: "a@example.com" }, subject: `x${blanks}y\t${blanks}`, headers: { "X-A": `v${blanks}w${blanks}` } },
    ]) {
      const measured = await composeMail(input, DEFAULTS, NOW);
      const headerBytes = measured.raw.indexOf("\r\n\r\n");
      assert.ok(headerBytes > 1000);
      await composeMail(input, { ...DEFAULTS, maxHeaderBytes: headerBytes }, NOW);
      const err = await refusal(input, { ...DEFAULTS, maxHeaderBytes: headerBytes - 1 });
      assert.ok(err instanceof HeaderTooLargeError);
      assert.equal(err.size, headerBytes);
      assert.match(err.message, new RegExp(`the header section of the message is ${headerBytes} bytes, over the limit of ${headerBytes - 1} bytes`));
    }
  });
  await t.test("Bcc recipients do not count: they are not in the header section", async () => {
    const mail = await composeMail({ ...BASE, bcc: Array.from({ length: 999 }, (_, i) => ({ name: "x".repeat(200), address: `b${i}@example.com` })) }, DEFAULTS, NOW);
    assert.equal(mail.envelopeTo.length, 1000);
  });
});

test("invalid defaults are refused with OptionsError", async () => {
  assert.deepEqual(validateComposeDefaults(DEFAULTS), []);
  const problems = validateComposeDefaults({ maxAttempts: 0, maxMessageBytes: -1, maxHeaderBytes: 0, messageIdDomain: "bad domain", defaultFrom: "nope" });
  assert.equal(problems.length, 5, problems.join("\n"));
  assert.match(problems[0] ?? "", /^Expected `maxAttempts` to be an integer from 1 to 1000, got 0\.$/);
  assert.ok(problems.includes("Expected `maxHeaderBytes` to be a positive integer, got 0."), problems.join("\n"));
  assert.deepEqual(validateComposeDefaults({ ...DEFAULTS, maxHeaderBytes: 1.5 }), ["Expected `maxHeaderBytes` to be a positive integer, got 1.5."]);
  const { maxHeaderBytes: _omitted, ...withoutHeaderLimit } = DEFAULTS;
  assert.deepEqual(validateComposeDefaults(withoutHeaderLimit), ["Expected `maxHeaderBytes` to be a positive integer, got undefined."]);
  await assert.rejects(composeMail(BASE, { ...DEFAULTS, maxHeaderBytes: -1 }, NOW), OptionsError);
  const unreadableDefaults = validateComposeDefaults({ ...DEFAULTS, defaultFrom: revokedProxy() });
  assert.equal(unreadableDefaults.length, 1);
  assert.match(unreadableDefaults[0] ?? "", /^Expected the compose defaults to be plain data, but reading them threw TypeError/);
  await assert.rejects(composeMail({ to: "ann@example.com" }, { ...DEFAULTS, defaultFrom: revokedProxy() as never }, NOW), OptionsError);
  await assert.rejects(composeMail(BASE, { ...DEFAULTS, messageIdDomain: "x\r\ny" }, NOW), OptionsError);
});
