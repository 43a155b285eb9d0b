import { test } from "node:test";
import assert from "node:assert/strict";
import { Readable } from "node:stream";
import { simpleParser } from "mailparser";
import {
  composeMail,
  validateMailInput,
  validateComposeDefaults,
  normalizeEmailAddress,
  DEFAULT_MAX_ATTEMPTS,
  DEFAULT_MAX_HEADER_BYTES,
  DEFAULT_MAX_MESSAGE_BYTES,
  MAX_RECIPIENTS,
  RESERVED_HEADERS,
} from "../src/compose.js";
import { bareLineEndAt } from "../src/wire.js";
import { newId, isUuid, normalizeMessageId } from "../src/ids.js";
import { HeaderTooLargeError, InvalidMailError, MailTooLargeError, OptionsError } from "../src/errors.js";
import type { ComposeDefaults } from "../src/types.js";

const NOW = new Date("2031-05-06T07:08:09.000Z");
const DEFAULTS: ComposeDefaults = {
  maxAttempts: DEFAULT_MAX_ATTEMPTS,
  maxMessageBytes: DEFAULT_MAX_MESSAGE_BYTES,
  maxHeaderBytes: DEFAULT_MAX_HEADER_BYTES,
};
const FROM = "Shop <shop@example.com>";
const BASE = { from: FROM, to: "ann@example.com", subject: "Hello", text: "Hi" };

async function refusal(input: unknown, defaults: ComposeDefaults = DEFAULTS): Promise<InvalidMailError> {
  try {
    await composeMail(input, defaults, NOW);
  } catch (err) {
    assert.ok(err instanceof InvalidMailError, `expected InvalidMailError, got ${String(err)}`);
    return err;
  }
  assert.fail("the mail was accepted but should have been refused");
}

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

// ----------------------------------------------------------------------------------------------
// Line breaks (issue 8, A1): each of CRLF, CR and LF is one line break, stored as CRLF
// ----------------------------------------------------------------------------------------------

/** Every byte offset of a lone CR or a lone LF, by a different method than the library's. */
function loneLineBreaks(raw: Buffer): number[] {
  const found: number[] = [];
  for (let i = 0; i < raw.length; i++) {
    if (raw[i] === 0x0d && raw[i + 1] !== 0x0a) found.push(i);
    if (raw[i] === 0x0a && raw[i - 1] !== 0x0d) found.push(i);
  }
  return found;
}

const LINE_BREAK_CASES: readonly { name: string; body: string; lines: string }[] = [
  { name: "a lone CR", body: "one\rtwo", lines: "one\ntwo" },
  { name: "a lone LF", body: "one\ntwo", lines: "one\ntwo" },
  { name: "CR CR LF", body: "one\r\r\ntwo", lines: "one\n\ntwo" },
  { name: "LF CR", body: "one\n\rtwo", lines: "one\n\ntwo" },
  { name: "dot lines after lone CR and LF", body: "hi\r.\rMAIL FROM:<evil@evil.example>\n.\n..\r\n.x", lines: "hi\n.\nMAIL FROM:<evil@evil.example>\n.\n..\n.x" },
  { name: "no final newline", body: "last line without a newline", lines: "last line without a newline" },
  { name: "only line breaks", body: "\r\n\r\n\r", lines: "\n\n\n" },
  { name: "a long line and a lone CR", body: `${"word ".repeat(60)}\r${"x".repeat(200)}`, lines: `${"word ".repeat(60)}\n${"x".repeat(200)}` },
];

test("text and html with lone CR, lone LF, CR CR LF, dot lines or no final newline are stored with CRLF only and parse back line for line", async (t) => {
  for (const { name, body, lines } of LINE_BREAK_CASES) {
    for (const charset of ["ASCII (7bit)", "non-ASCII (quoted-printable)"] as const) {
      await t.test(`${name}, ${charset}`, async () => {
        const prefix = charset === "ASCII (7bit)" ? "" : "Grüße\n";
        const expected = (charset === "ASCII (7bit)" ? "" : "Grüße\n") + lines;
        for (const parts of [{ text: prefix + body }, { html: prefix + body }, { text: prefix + body, html: prefix + body }]) {
          const mail = await composeMail({ ...BASE, text: undefined, ...parts }, DEFAULTS, NOW);
          assert.deepEqual(loneLineBreaks(mail.raw), [], "a lone CR or LF was stored");
          assert.equal(bareLineEndAt(mail.raw), -1);
          const parsed = await simpleParser(mail.raw);
          // The composer ends every part with a line break; a final newline is not part of the content.
          const strip = (v: string | false | undefined): string => String(v).replace(/\n$/, "");
          if (parts.text !== undefined) assert.equal(strip(parsed.text), expected.replace(/\n$/, ""));
          if ("html" in parts) assert.equal(strip(parsed.html), expected.replace(/\n$/, ""));
        }
      });
    }
  }
});

test("a message/rfc822 attachment with lone CR and LF is stored with CRLF line breaks", async () => {
  const forwarded = "Subject: fwd\nFrom: a@example.com\n\nline one\rline two\r\r\n.\nend";
  const mail = await composeMail(
    { ...BASE, attachments: [{ content: forwarded, contentType: "message/rfc822" }, { content: Buffer.from(forwarded), contentType: "message/rfc822" }] },
    DEFAULTS,
    NOW,
  );
  assert.deepEqual(loneLineBreaks(mail.raw), []);
  const raw = mail.raw.toString("latin1");
  const crlf = "Subject: fwd\r\nFrom: a@example.com\r\n\r\nline one\r\nline two\r\n\r\n.\r\nend";
  assert.equal(raw.split(crlf).length - 1, 2, "both parts hold the forwarded mail with CRLF line breaks");
});

test("other attachments keep their bytes exactly, CR and LF included (they are base64-encoded)", async () => {
  const bytes = Buffer.from("a\rb\nc\r\r\nd\n.\r", "latin1");
  const mail = await composeMail(
    { ...BASE, attachments: [{ filename: "a.txt", content: bytes.toString("latin1"), encoding: "binary" }, { filename: "b.bin", content: bytes }] },
    DEFAULTS,
    NOW,
  );
  assert.deepEqual(loneLineBreaks(mail.raw), []);
  const parsed = await simpleParser(mail.raw);
  assert.deepEqual(parsed.attachments.map((a) => a.content.toString("hex")), [bytes.toString("hex"), bytes.toString("hex")]);
});

test("attachment bytes are read from the caller's memory without calling anything a Uint8Array subclass overrides", async () => {
  class Sneaky extends Uint8Array {
    override get buffer(): ArrayBuffer {
      throw new Error("buffer getter called");
    }
    override toString(): string {
      throw new Error("toString called");
    }
  }
  const backing = new Uint8Array([0x78, 0x0d, 0x79, 0x80, 0x0a, 0x7a, 0x00]);
  const content = new Sneaky(backing.buffer, 1, 5);
  const mail = await composeMail({ ...BASE, attachments: [{ filename: "s.bin", content }] }, DEFAULTS, NOW);
  const parsed = await simpleParser(mail.raw);
  assert.equal(parsed.attachments[0]?.content.toString("hex"), "0d79800a7a");
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

// ----------------------------------------------------------------------------------------------
// 7-bit (issue 8, A2)
// ----------------------------------------------------------------------------------------------

const EIGHT_BIT = /[\x80-\xff]/;

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

test("a message/rfc822 attachment with 8-bit content is the only part stored as 8-bit, and is labelled so", async () => {
  const forwarded = Buffer.from("Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?=\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGrüße, 8-bit.\r\n");
  const mail = await composeMail({ ...BASE, subject: "Fwd: Grüße", text: "Weitergeleitet: Grüße", attachments: [{ content: forwarded, contentType: "message/rfc822" }] }, DEFAULTS, NOW);
  const raw = mail.raw.toString("latin1");
  const partStart = raw.indexOf(forwarded.toString("latin1"));
  assert.ok(partStart > 0, "the forwarded mail is stored as it is");
  const eightBit = [...mail.raw.entries()].filter(([, b]) => b >= 0x80).map(([i]) => i);
  assert.ok(eightBit.length > 0);
  assert.ok(eightBit.every((i) => i >= partStart && i < partStart + forwarded.length), "8-bit bytes outside the message/rfc822 part");
  assert.match(raw, /Content-Type: message\/rfc822\r\nContent-Transfer-Encoding: 8bit\r\n/);
  assert.equal(raw.replace(forwarded.toString("latin1"), "").match(/Content-Transfer-Encoding: 8bit/gi)?.length, 1, "only that part is labelled 8bit");
  assert.doesNotMatch(raw.slice(0, raw.indexOf("\r\n\r\n")), EIGHT_BIT);
});

test("envelope recipients are bare addresses from to, cc and bcc, deduplicated without regard to case, in order", async () => {
  const mail = await composeMail(
    {
      from: FROM,
      to: "Ann <ann@example.com>, Team: bob@example.com, carol@example.com;",
      cc: ["ANN@EXAMPLE.COM", { name: "Dave", address: "dave@example.com" }],
      bcc: "Bob@Example.com, erin@example.com",
    },
    DEFAULTS,
    NOW,
  );
  assert.deepEqual(mail.envelopeTo, ["ann@example.com", "bob@example.com", "carol@example.com", "dave@example.com", "erin@example.com"]);
  assert.equal(mail.envelopeFrom, "shop@example.com");
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

test("an international domain is written in punycode in the headers, the envelope and the Message-ID", async () => {
  const mail = await composeMail({ from: "Jõgeva <info@jõgeva.ee>", to: "Ann <ann@bücher.example>", text: "tere" }, DEFAULTS, NOW);
  assert.equal(mail.envelopeFrom, "info@xn--jgeva-dua.ee");
  assert.deepEqual(mail.envelopeTo, ["ann@xn--bcher-kva.example"]);
  assert.equal(mail.messageId, `<${mail.id}@xn--jgeva-dua.ee>`);
  const raw = mail.raw.toString("latin1");
  assert.match(raw, /^From: .*<info@xn--jgeva-dua\.ee>\r$/m);
  assert.match(raw, /^To: Ann <ann@xn--bcher-kva\.example>\r$/m);
  assert.equal(normalizeEmailAddress("ann@Jõgeva.EE"), "ann@xn--jgeva-dua.ee");
});

test("an IP literal domain is accepted", async () => {
  const mail = await composeMail({ from: "ops@[192.0.2.1]", to: ["root@[IPv6:2001:db8::1]"], text: "x" }, DEFAULTS, NOW);
  assert.deepEqual(mail.envelopeTo, ["root@[IPv6:2001:db8::1]"]);
  assert.equal(mail.messageId, `<${mail.id}@[192.0.2.1]>`);
});

test("queue fields get their defaults, and explicit values are kept", async () => {
  const plain = await composeMail({ ...BASE }, { ...DEFAULTS, maxAttempts: 7 }, NOW);
  assert.equal(plain.priority, 0);
  assert.equal(plain.sendAt.getTime(), NOW.getTime());
  assert.equal(plain.idempotencyKey, null);
  assert.equal(plain.maxAttempts, 7);
  assert.equal(plain.metadata, null);

  const later = new Date("2031-06-01T00:00:00Z");
  const metadata = { userId: 42, tags: ["a", "b"], nested: { ok: true, none: null } };
  const full = await composeMail(
    { ...BASE, priority: -5, sendAt: later, idempotencyKey: "order-42-shipped", maxAttempts: 3, metadata },
    DEFAULTS,
    NOW,
  );
  assert.equal(full.priority, -5);
  assert.equal(full.sendAt.getTime(), later.getTime());
  assert.equal(full.idempotencyKey, "order-42-shipped");
  assert.equal(full.maxAttempts, 3);
  assert.deepEqual(full.metadata, metadata);
  later.setFullYear(2040);
  metadata.tags.push("mutated later");
  assert.equal(full.sendAt.getUTCFullYear(), 2031, "sendAt is a copy");
  assert.deepEqual((full.metadata as { tags: string[] }).tags, ["a", "b"], "metadata is a copy");

  const noSubject = await composeMail({ from: FROM, to: "ann@example.com" }, DEFAULTS, NOW);
  assert.equal(noSubject.subject, "");
});

// ----------------------------------------------------------------------------------------------
// Hostile input
// ----------------------------------------------------------------------------------------------

interface Hostile {
  readonly name: string;
  readonly input: unknown;
  readonly expectProblemMatching: RegExp;
  readonly defaults?: ComposeDefaults;
}

const cyclic: Record<string, unknown> = { a: 1 };
cyclic.self = cyclic;
const getterInput = { ...BASE };
Object.defineProperty(getterInput, "subject", { get: () => "changes every time", enumerable: true });

// Values that throw while they are read. The message carries CRLF and ESC to show that it is quoted safely.
const boom = (): never => {
  throw new Error("trap\r\nBcc: evil@evil.example\x1b[0m");
};
const revokedProxy = (): object => {
  const r = Proxy.revocable({}, {});
  r.revoke();
  return r.proxy;
};
const throwingKeys = <T extends object>(target: T): T => new Proxy(target, { ownKeys: boom });
const throwingDescriptor = <T extends object>(target: T): T => new Proxy(target, { getOwnPropertyDescriptor: boom });
const throwingPrototype = <T extends object>(target: T): T => new Proxy(target, { getPrototypeOf: boom });
const throwingLength = <T extends object>(target: T): T =>
  new Proxy(target, { get: (t, key, receiver) => (key === "length" ? boom() : Reflect.get(t, key, receiver)) });
const throwsUninspectable = new Proxy({}, {
  ownKeys: () => {
    throw revokedProxy();
  },
});
class NamelessAddress {
  static get name(): string {
    return boom();
  }
}
const recipients = (n: number, from = 0): string[] => Array.from({ length: n }, (_, i) => `user${from + i}@example.com`);

const HOSTILE: readonly Hostile[] = [
  // shape
  { name: "a string instead of a mail", input: "ann@example.com", expectProblemMatching: /^mail: expected a plain object/ },
  { name: "an array instead of a mail", input: [BASE], expectProblemMatching: /^mail: expected a plain object.*got an array/ },
  { name: "null instead of a mail", input: null, expectProblemMatching: /^mail: expected a plain object.*got null/ },
  { name: "a class instance instead of a mail", input: new Map(), expectProblemMatching: /^mail: expected a plain object.*got a Map/ },
  { name: "an unknown field", input: { ...BASE, attachment: [] }, expectProblemMatching: /^attachment: unknown field; the allowed fields are from, to, cc, bcc, replyTo/ },
  { name: "a misspelt field", input: { ...BASE, reply_to: "x@example.com" }, expectProblemMatching: /^reply_to: unknown field; did you mean replyTo\?/ },
  { name: "a messageId field", input: { ...BASE, messageId: "<x@y>" }, expectProblemMatching: /^messageId: unknown field; the Message-ID is made from the row id/ },
  { name: "a getter field", input: getterInput, expectProblemMatching: /^subject: is a getter or setter/ },
  { name: "a symbol key", input: { ...BASE, [Symbol("x")]: 1 }, expectProblemMatching: /^mail: has the symbol key Symbol\("x"\)/ },
  // prototype pollution
  { name: "__proto__ at the top (JSON.parse)", input: JSON.parse('{"to":"ann@example.com","from":"a@example.com","__proto__":{"bcc":"evil@evil.example"}}'), expectProblemMatching: /^__proto__: the key is refused anywhere/ },
  { name: "constructor at the top", input: { ...BASE, constructor: { prototype: {} } }, expectProblemMatching: /^constructor: the key is refused/ },
  { name: "__proto__ in metadata (JSON.parse)", input: { ...BASE, metadata: JSON.parse('{"a":{"__proto__":{"polluted":true}}}') }, expectProblemMatching: /^metadata\.a\["__proto__"\]: the key is refused/ },
  { name: "prototype in metadata", input: { ...BASE, metadata: { prototype: 1 } }, expectProblemMatching: /^metadata\["prototype"\]: the key is refused/ },
  { name: "__proto__ in headers (JSON.parse)", input: { ...BASE, headers: JSON.parse('{"__proto__":{"value":"x\\r\\nBcc: e@evil.example","prepared":true}}') }, expectProblemMatching: /^headers\["__proto__"\]: the key is refused/ },
  { name: "__proto__ in an attachment (JSON.parse)", input: { ...BASE, attachments: [JSON.parse('{"content":"x","__proto__":{"path":"/etc/passwd"}}')] }, expectProblemMatching: /^attachments\[0\]\["__proto__"\]: the key is refused/ },
  { name: "constructor in an address object", input: { ...BASE, to: [JSON.parse('{"address":"ann@example.com","constructor":1}')] }, expectProblemMatching: /^to\[0\]\["constructor"\]: the key is refused/ },
  // senders and recipients
  { name: "no from and no defaultFrom", input: { to: "ann@example.com", text: "x" }, expectProblemMatching: /^from: no sender; pass from, or set defaultFrom/ },
  { name: "no recipient at all", input: { from: FROM, subject: "x" }, expectProblemMatching: /^to: no recipient; give at least one address in to, cc or bcc/ },
  { name: "only empty recipient lists", input: { from: FROM, to: [], cc: [], bcc: [] }, expectProblemMatching: /^to: no recipient/ },
  { name: "an address without a domain", input: { ...BASE, to: ["ann@example.com", "bob@"] }, expectProblemMatching: /^to\[1\]: "bob@" is not a valid email address \(the domain after @ is missing\)/ },
  { name: "an address without @", input: { ...BASE, to: "bob" }, expectProblemMatching: /^to: "bob" is not a valid email address/ },
  { name: "an address with two @", input: { ...BASE, cc: "a@b@example.com" }, expectProblemMatching: /^cc: "a@b@example\.com" is not a valid email address \(it has more than one @\)/ },
  { name: "an address starting with - (sendmail option)", input: { ...BASE, to: "-oQ/tmp/x@example.com" }, expectProblemMatching: /^to: "-oQ\/tmp\/x@example\.com" is not a valid email address \(it starts with "-"/ },
  { name: "a from starting with -", input: { ...BASE, from: "Evil <-f@example.com>" }, expectProblemMatching: /^from: "-f@example\.com" is not a valid email address \(it starts with "-"/ },
  { name: "an address object starting with -", input: { ...BASE, bcc: { address: "-bs@example.com" } }, expectProblemMatching: /^bcc\.address: "-bs@example\.com" .*starts with "-"/ },
  { name: "a local part over 64", input: { ...BASE, to: `${"a".repeat(65)}@example.com` }, expectProblemMatching: /^to: ".*" is not a valid email address \(the part before @ is 65 bytes, over the limit of 64\)/ },
  { name: "a domain over 255", input: { ...BASE, to: `a@${`${"b".repeat(63)}.`.repeat(4)}com` }, expectProblemMatching: /^to: .*the domain is 259 characters, over the limit of 255/ },
  { name: "an address over 320", input: { ...BASE, to: `${"a".repeat(320)}@example.com` }, expectProblemMatching: /^to: .*it is 332 characters, over the limit of 320/ },
  { name: "a non-ASCII local part", input: { ...BASE, to: "jörg@example.com" }, expectProblemMatching: /^to: .*SMTPUTF8/ },
  { name: "a percent-encoded domain", input: { ...BASE, to: "a@exa%41mple.com" }, expectProblemMatching: /^to: .*the domain may hold only letters, digits, hyphens and dots/ },
  { name: "an underscore in the domain", input: { ...BASE, to: "a@exa_mple.com" }, expectProblemMatching: /^to: .*the domain may hold only letters/ },
  { name: "an empty domain label", input: { ...BASE, to: "a@example..com" }, expectProblemMatching: /^to: .*empty label/ },
  { name: "a bare IP as domain", input: { ...BASE, to: "a@192.0.2.1" }, expectProblemMatching: /^to: .*write an IP literal in brackets/ },
  { name: "a broken IP literal", input: { ...BASE, to: "a@[999.0.2.1]" }, expectProblemMatching: /^to: .*is not an IP literal/ },
  { name: "CRLF in a to string", input: { ...BASE, to: "ann@example.com\r\nBcc: evil@evil.example" }, expectProblemMatching: /^to: contains a line break \(CR or LF\)/ },
  { name: "LF in a cc string", input: { ...BASE, cc: "ann@example.com\nX-Evil: 1" }, expectProblemMatching: /^cc: contains a line break/ },
  { name: "NUL in an address", input: { ...BASE, to: "ann@example.com\0" }, expectProblemMatching: /^to: contains a NUL character/ },
  { name: "a control character in an address", input: { ...BASE, to: "an\x07n@example.com" }, expectProblemMatching: /^to: contains the control character U\+0007/ },
  { name: "CRLF in an address object", input: { ...BASE, to: [{ address: "ann@example.com\r\nBcc: e@evil.example" }] }, expectProblemMatching: /^to\[0\]\.address: .*it contains a line break/ },
  { name: "two from addresses", input: { ...BASE, from: "a@example.com, b@example.com" }, expectProblemMatching: /^from: must be exactly one address, got 2/ },
  { name: "from as an array", input: { ...BASE, from: ["a@example.com"] }, expectProblemMatching: /^from: must be one address, got an array/ },
  { name: "an address of the wrong type", input: { ...BASE, to: 42 }, expectProblemMatching: /^to: must be an address string or \{ name, address \}, got 42/ },
  { name: "an unknown key in an address object", input: { ...BASE, to: { address: "ann@example.com", email: "x" } }, expectProblemMatching: /^to\.email: unknown field; the allowed fields are name, address/ },
  { name: "an invalid replyTo", input: { ...BASE, replyTo: ["ok@example.com", "nope"] }, expectProblemMatching: /^replyTo\[1\]: "nope" is not a valid email address/ },
  // display names: header injection through every address field
  { name: "CRLF in the from display name", input: { ...BASE, from: { name: "Shop\r\nBcc: evil@evil.example", address: "shop@example.com" } }, expectProblemMatching: /^from\.name: contains a line break/ },
  { name: "CRLF in a to display name", input: { ...BASE, to: [{ name: "Ann\r\nBcc: evil@evil.example", address: "ann@example.com" }] }, expectProblemMatching: /^to\[0\]\.name: contains a line break/ },
  { name: "LF in a cc display name", input: { ...BASE, cc: { name: "Bob\nX-Evil: 1", address: "bob@example.com" } }, expectProblemMatching: /^cc\.name: contains a line break/ },
  { name: "CR in a bcc display name", input: { ...BASE, bcc: [{ name: "Sam\rX: 1", address: "sam@example.com" }] }, expectProblemMatching: /^bcc\[0\]\.name: contains a line break/ },
  { name: "CRLF in a replyTo display name", input: { ...BASE, replyTo: { name: "Help\r\nTo: x@evil.example", address: "help@example.com" } }, expectProblemMatching: /^replyTo\.name: contains a line break/ },
  { name: "an escape sequence in a display name", input: { ...BASE, to: { name: "\x1b[31mAnn", address: "ann@example.com" } }, expectProblemMatching: /^to\.name: contains the control character U\+001B/ },
  { name: "a lone surrogate in a display name", input: { ...BASE, to: { name: "Ann \ud800", address: "ann@example.com" } }, expectProblemMatching: /^to\.name: is not well-formed UTF-16/ },
  { name: "a display name of the wrong type", input: { ...BASE, to: { name: 5, address: "ann@example.com" } }, expectProblemMatching: /^to\.name: must be a string, got 5/ },
  // subject and bodies
  { name: "CRLF in the subject", input: { ...BASE, subject: "Hi\r\nBcc: evil@evil.example" }, expectProblemMatching: /^subject: contains a line break \(CR or LF\)/ },
  { name: "LF in the subject", input: { ...BASE, subject: "Hi\nX-Evil: 1" }, expectProblemMatching: /^subject: contains a line break/ },
  { name: "CR in the subject", input: { ...BASE, subject: "Hi\rX-Evil: 1" }, expectProblemMatching: /^subject: contains a line break/ },
  { name: "NUL in the subject", input: { ...BASE, subject: "Hi\0" }, expectProblemMatching: /^subject: contains a NUL character/ },
  { name: "a subject of the wrong type", input: { ...BASE, subject: 42 }, expectProblemMatching: /^subject: must be a string, got 42/ },
  { name: "a lone high surrogate in the subject", input: { ...BASE, subject: "Hi \ud83d" }, expectProblemMatching: /^subject: is not well-formed UTF-16/ },
  { name: "a subject word too long for a header line", input: { ...BASE, subject: "x".repeat(1000) }, expectProblemMatching: /^subject: has a 1000-character run without spaces/ },
  { name: "text as a Buffer", input: { ...BASE, text: Buffer.from("hi") }, expectProblemMatching: /^text: must be a string, got a Buffer/ },
  { name: "html as an object", input: { ...BASE, html: { path: "/etc/passwd" } }, expectProblemMatching: /^html: must be a string, got an object/ },
  { name: "a lone low surrogate in the text", input: { ...BASE, text: "a\udc00b" }, expectProblemMatching: /^text: is not well-formed UTF-16/ },
  { name: "a lone surrogate in the html", input: { ...BASE, html: "<p>\ud800</p>" }, expectProblemMatching: /^html: is not well-formed UTF-16/ },
  { name: "NUL in the text", input: { ...BASE, text: "a\0b" }, expectProblemMatching: /^text: contains a NUL character/ },
  // headers
  { name: "CRLF in a header value", input: { ...BASE, headers: { "X-Note": "ok\r\nBcc: evil@evil.example" } }, expectProblemMatching: /^headers\["X-Note"\]: the value contains a line break/ },
  { name: "NUL in a header value", input: { ...BASE, headers: { "X-Note": "a\0b" } }, expectProblemMatching: /^headers\["X-Note"\]: the value contains a NUL/ },
  { name: "CRLF in a header name", input: { ...BASE, headers: { "X-A\r\nBcc": "evil@evil.example" } }, expectProblemMatching: /^headers\["X-A\\r\\nBcc"\]: the header name contains a line break/ },
  { name: "a colon in a header name", input: { ...BASE, headers: { "X-A: b": "c" } }, expectProblemMatching: /^headers\["X-A: b"\]: is not a header field name/ },
  { name: "a non-ASCII header name", input: { ...BASE, headers: { "X-Grüße": "c" } }, expectProblemMatching: /^headers\["X-Grüße"\]: is not a header field name/ },
  { name: "an empty header name", input: { ...BASE, headers: { "": "c" } }, expectProblemMatching: /^headers\[""\]: is not a header field name/ },
  { name: "a header value of the wrong type", input: { ...BASE, headers: { "X-Count": 3 } }, expectProblemMatching: /^headers\["X-Count"\]: the value must be a string, got 3/ },
  { name: "an empty header value", input: { ...BASE, headers: { "X-Empty": " " } }, expectProblemMatching: /^headers\["X-Empty"\]: the value is empty/ },
  { name: "a header word too long for a line", input: { ...BASE, headers: { "X-Token": "t".repeat(950) } }, expectProblemMatching: /^headers\["X-Token"\]: the value has a 950-character run/ },
  { name: "headers as an array", input: { ...BASE, headers: [["X-A", "b"]] }, expectProblemMatching: /^headers: must be a plain object/ },
  ...RESERVED_HEADERS.map((name, i) => {
    const spelt = i % 2 === 0 ? name.toLowerCase() : name.toUpperCase();
    return {
      name: `the composer-owned header ${spelt}`,
      input: { ...BASE, headers: { [spelt]: "x@evil.example" } },
      expectProblemMatching: new RegExp(`^headers\\[${JSON.stringify(spelt)}\\]: the composer sets this header itself`),
    };
  }),
  // attachments
  { name: "a file path attachment", input: { ...BASE, attachments: [{ filename: "passwd", path: "/etc/passwd" }] }, expectProblemMatching: /^attachments\[0\]\.path: file paths are not accepted; nothing may be read from disk or the network inside a transaction; pass the bytes as content$/ },
  { name: "a URL attachment", input: { ...BASE, attachments: [{ href: "http://169.254.169.254/latest/meta-data/" }] }, expectProblemMatching: /^attachments\[0\]\.href: URLs are not accepted; nothing may be read from disk or the network/ },
  { name: "a content object that points to a file", input: { ...BASE, attachments: [{ filename: "a", content: { path: "/etc/passwd" } }] }, expectProblemMatching: /^attachments\[0\]\.content: must be a Buffer, Uint8Array or string, got an object/ },
  { name: "a stream as content", input: { ...BASE, attachments: [{ filename: "a", content: Readable.from(["x"]) }] }, expectProblemMatching: /^attachments\[0\]\.content: streams are not accepted/ },
  { name: "an attachment without content", input: { ...BASE, attachments: [{ filename: "a.txt" }] }, expectProblemMatching: /^attachments\[0\]\.content: is missing/ },
  { name: "an attachment that is not an object", input: { ...BASE, attachments: ["/etc/passwd"] }, expectProblemMatching: /^attachments\[0\]: must be an object such as \{ filename, content \}/ },
  { name: "attachments that are not an array", input: { ...BASE, attachments: { filename: "a", content: "x" } }, expectProblemMatching: /^attachments: must be an array/ },
  { name: "an unknown attachment field", input: { ...BASE, attachments: [{ content: "x", raw: "Content-Type: text/plain\r\n\r\nx" }] }, expectProblemMatching: /^attachments\[0\]\.raw: unknown field; the allowed fields are filename, content/ },
  { name: "CRLF in an attachment filename", input: { ...BASE, attachments: [{ filename: "a.txt\r\nBcc: evil@evil.example", content: "x" }] }, expectProblemMatching: /^attachments\[0\]\.filename: contains a line break/ },
  { name: "NUL in an attachment filename", input: { ...BASE, attachments: [{ filename: "a.txt\0.exe", content: "x" }] }, expectProblemMatching: /^attachments\[0\]\.filename: contains a NUL/ },
  { name: "CRLF in a contentType", input: { ...BASE, attachments: [{ content: "x", contentType: "text/plain\r\nX-Evil: 1" }] }, expectProblemMatching: /^attachments\[0\]\.contentType: contains a line break/ },
  { name: "CRLF in a cid", input: { ...BASE, attachments: [{ content: "x", cid: "logo\r\nX-Evil: 1" }] }, expectProblemMatching: /^attachments\[0\]\.cid: contains a line break/ },
  { name: "a contentType that is not a MIME type", input: { ...BASE, attachments: [{ content: "x", contentType: "pdf" }] }, expectProblemMatching: /^attachments\[0\]\.contentType: "pdf" is not a MIME type/ },
  { name: "a multipart contentType", input: { ...BASE, attachments: [{ content: "x", contentType: "multipart/mixed" }] }, expectProblemMatching: /^attachments\[0\]\.contentType: multipart types/ },
  { name: "an unknown encoding", input: { ...BASE, attachments: [{ content: "x", encoding: "utf16le" }] }, expectProblemMatching: /^attachments\[0\]\.encoding: must be one of utf8, base64, hex, binary/ },
  { name: "an encoding on a Buffer", input: { ...BASE, attachments: [{ content: Buffer.from("x"), encoding: "base64" }] }, expectProblemMatching: /^attachments\[0\]\.encoding: applies only to string content/ },
  { name: "content that is not base64", input: { ...BASE, attachments: [{ content: "not base64!", encoding: "base64" }] }, expectProblemMatching: /^attachments\[0\]\.content: is not base64/ },
  { name: "a bad contentDisposition", input: { ...BASE, attachments: [{ content: "x", contentDisposition: "form-data" }] }, expectProblemMatching: /^attachments\[0\]\.contentDisposition: must be "attachment" or "inline"/ },
  { name: "a lone surrogate in string content", input: { ...BASE, attachments: [{ content: "\udfff" }] }, expectProblemMatching: /^attachments\[0\]\.content: is not well-formed UTF-16/ },
  { name: "101 attachments", input: { ...BASE, attachments: Array.from({ length: 101 }, (_, i) => ({ filename: `${i}.txt`, content: "x" })) }, expectProblemMatching: /^attachments: 101 attachments, over the limit of 100/ },
  // queue fields
  { name: "a fractional priority", input: { ...BASE, priority: 1.5 }, expectProblemMatching: /^priority: must be an integer from -1000 to 1000, got 1\.5/ },
  { name: "a priority out of range", input: { ...BASE, priority: 1001 }, expectProblemMatching: /^priority: must be an integer from -1000 to 1000, got 1001/ },
  { name: "a priority as a string", input: { ...BASE, priority: "1" }, expectProblemMatching: /^priority: must be an integer .*got "1"/ },
  { name: "sendAt as a string", input: { ...BASE, sendAt: "2031-01-01T00:00:00Z" }, expectProblemMatching: /^sendAt: must be a Date, got the string "2031-01-01T00:00:00Z"; pass new Date\(/ },
  { name: "sendAt as an Invalid Date", input: { ...BASE, sendAt: new Date("nope") }, expectProblemMatching: /^sendAt: is an Invalid Date/ },
  { name: "sendAt as a number", input: { ...BASE, sendAt: 1_900_000_000_000 }, expectProblemMatching: /^sendAt: must be a Date, got 1900000000000/ },
  { name: "an empty idempotencyKey", input: { ...BASE, idempotencyKey: "" }, expectProblemMatching: /^idempotencyKey: is empty/ },
  { name: "an idempotencyKey over 255", input: { ...BASE, idempotencyKey: "k".repeat(256) }, expectProblemMatching: /^idempotencyKey: is 256 characters, over the limit of 255/ },
  { name: "a line break in the idempotencyKey", input: { ...BASE, idempotencyKey: "a\nb" }, expectProblemMatching: /^idempotencyKey: contains a line break/ },
  { name: "a tab in the idempotencyKey", input: { ...BASE, idempotencyKey: "a\tb" }, expectProblemMatching: /^idempotencyKey: contains the control character U\+0009/ },
  { name: "an idempotencyKey of the wrong type", input: { ...BASE, idempotencyKey: 42 }, expectProblemMatching: /^idempotencyKey: must be a string, got 42/ },
  { name: "maxAttempts of 0", input: { ...BASE, maxAttempts: 0 }, expectProblemMatching: /^maxAttempts: must be an integer from 1 to 1000, got 0/ },
  { name: "maxAttempts over 1000", input: { ...BASE, maxAttempts: 1001 }, expectProblemMatching: /^maxAttempts: must be an integer from 1 to 1000, got 1001/ },
  { name: "fractional maxAttempts", input: { ...BASE, maxAttempts: 2.5 }, expectProblemMatching: /^maxAttempts: must be an integer from 1 to 1000, got 2\.5/ },
  // metadata
  { name: "a function in metadata", input: { ...BASE, metadata: { fn: () => 1 } }, expectProblemMatching: /^metadata\.fn: is a function, which JSON cannot hold/ },
  { name: "a bigint in metadata", input: { ...BASE, metadata: { id: 12n } }, expectProblemMatching: /^metadata\.id: is a bigint/ },
  { name: "undefined inside metadata", input: { ...BASE, metadata: { a: [1, undefined] } }, expectProblemMatching: /^metadata\.a\[1\]: is undefined, which JSON drops/ },
  { name: "NaN in metadata", input: { ...BASE, metadata: { n: Number.NaN } }, expectProblemMatching: /^metadata\.n: NaN is not a JSON number/ },
  { name: "a cycle in metadata", input: { ...BASE, metadata: cyclic }, expectProblemMatching: /^metadata\.self: refers back to one of its parents \(a cycle\)/ },
  { name: "a Date in metadata", input: { ...BASE, metadata: { at: new Date(0) } }, expectProblemMatching: /^metadata\.at: is a Date.*toISOString\(\)/ },
  { name: "a Map in metadata", input: { ...BASE, metadata: { m: new Map() } }, expectProblemMatching: /^metadata\.m: is a Map, not plain JSON/ },
  { name: "a lone surrogate in metadata", input: { ...BASE, metadata: { s: "\ud800" } }, expectProblemMatching: /^metadata\.s: is not well-formed UTF-16/ },
  { name: "metadata over 64 KiB", input: { ...BASE, metadata: { blob: "x".repeat(70_000) } }, expectProblemMatching: /^metadata: serialises to 70011 bytes of JSON, over the limit of 65536/ },
  { name: "a sparse metadata array of a billion elements", input: { ...BASE, metadata: { a: Object.assign([], { length: 1_000_000_000 }) } }, expectProblemMatching: /^metadata\.a: has 1000000000 elements, more than fit in 65536 bytes of JSON/ },
  // C1 controls and the Unicode line and paragraph separators, wherever C0 controls are refused
  { name: "a C1 control (NEL) in the subject", input: { ...BASE, subject: "Hi\u0085there" }, expectProblemMatching: /^subject: contains the control character U\+0085$/ },
  { name: "a C1 control (CSI) in the subject", input: { ...BASE, subject: "Hi \u009b31m" }, expectProblemMatching: /^subject: contains the control character U\+009B$/ },
  { name: "U+2028 in the subject", input: { ...BASE, subject: "Hi\u2028Bcc: evil@evil.example" }, expectProblemMatching: /^subject: contains the Unicode line separator U\+2028, which some programs treat as a line break/ },
  { name: "U+2029 in the subject", input: { ...BASE, subject: "Hi\u2029there" }, expectProblemMatching: /^subject: contains the Unicode paragraph separator U\+2029/ },
  { name: "a C1 control in a display name string", input: { ...BASE, to: "Ann\u0080 <ann@example.com>" }, expectProblemMatching: /^to: contains the control character U\+0080/ },
  { name: "U+2029 in a display name object", input: { ...BASE, cc: { name: "Bob\u2029", address: "bob@example.com" } }, expectProblemMatching: /^cc\.name: contains the Unicode paragraph separator U\+2029/ },
  { name: "a C1 control in the from display name", input: { ...BASE, from: { name: "Shop\u009f", address: "shop@example.com" } }, expectProblemMatching: /^from\.name: contains the control character U\+009F/ },
  { name: "a C1 control in a header name", input: { ...BASE, headers: { "X-A\u009b": "x" } }, expectProblemMatching: /^headers\["X-A\\u009b"\]: the header name contains the control character U\+009B/ },
  { name: "a C1 control in a header value", input: { ...BASE, headers: { "X-Note": "a\u0085b" } }, expectProblemMatching: /^headers\["X-Note"\]: the value contains the control character U\+0085/ },
  { name: "U+2028 in a header value", input: { ...BASE, headers: { "X-Note": "a\u2028b" } }, expectProblemMatching: /^headers\["X-Note"\]: the value contains the Unicode line separator U\+2028/ },
  { name: "a C1 control in an attachment filename", input: { ...BASE, attachments: [{ filename: "a\u009b.txt", content: "x" }] }, expectProblemMatching: /^attachments\[0\]\.filename: contains the control character U\+009B/ },
  { name: "U+2028 in an attachment filename", input: { ...BASE, attachments: [{ filename: "a\u2028.txt", content: "x" }] }, expectProblemMatching: /^attachments\[0\]\.filename: contains the Unicode line separator U\+2028/ },
  { name: "a C1 control in a contentType", input: { ...BASE, attachments: [{ content: "x", contentType: "text/plain; x=\u0085" }] }, expectProblemMatching: /^attachments\[0\]\.contentType: contains the control character U\+0085/ },
  { name: "a C1 control in a cid", input: { ...BASE, attachments: [{ content: "x", cid: "logo\u0085@example.com" }] }, expectProblemMatching: /^attachments\[0\]\.cid: contains the control character U\+0085/ },
  { name: "a non-ASCII cid (Content-ID is ASCII)", input: { ...BASE, attachments: [{ content: "x", cid: "lögo@example.com" }] }, expectProblemMatching: /^attachments\[0\]\.cid: may hold only printable ASCII without spaces or angle brackets/ },
  { name: "a C1 control in the idempotencyKey", input: { ...BASE, idempotencyKey: "order\u008542" }, expectProblemMatching: /^idempotencyKey: contains the control character U\+0085/ },
  { name: "U+2029 in the idempotencyKey", input: { ...BASE, idempotencyKey: "order\u202942" }, expectProblemMatching: /^idempotencyKey: contains the Unicode paragraph separator U\+2029/ },
  { name: "a C1 control in an unknown field's name", input: { ...BASE, "x\u009by": 1 }, expectProblemMatching: /^\["x\\u009by"\]: unknown field/ },
  // message/* attachments go out unencoded
  { name: "a NUL byte in a message/rfc822 attachment", input: { ...BASE, attachments: [{ content: Buffer.from("Subject: x\r\n\r\na\0b\r\n"), contentType: "message/rfc822" }] }, expectProblemMatching: /^attachments\[0\]\.content: has a NUL byte at offset 15; a message\/\* part cannot be encoded/ },
  { name: "a line over 998 octets in a message/rfc822 attachment", input: { ...BASE, attachments: [{ content: `Subject: x\n\n${"y".repeat(999)}\n`, contentType: "message/rfc822" }] }, expectProblemMatching: /^attachments\[0\]\.content: has a line longer than 998 octets.*attach it as application\/octet-stream instead/ },
  // recipients past Postfix's smtpd_recipient_limit
  { name: "10,000 recipients in one to string", input: { ...BASE, to: recipients(10_000).join(", ") }, expectProblemMatching: /^to: 10000 distinct recipients in to, cc and bcc together, over the limit of 1000 per mail \(Postfix's default smtpd_recipient_limit\); send several mails$/ },
  { name: "10,000 recipients in a to array", input: { ...BASE, to: recipients(10_000) }, expectProblemMatching: /^to: 10000 entries, over the limit of 1000 recipients per mail; send several mails$/ },
  { name: "1,001 distinct recipients over to, cc and bcc", input: { ...BASE, to: recipients(600), cc: recipients(300, 600), bcc: recipients(101, 900) }, expectProblemMatching: /^to: 1001 distinct recipients in to, cc and bcc together, over the limit of 1000/ },
  // a value that throws while it is read (a getter, a Proxy trap) is a problem naming the field, never a raw error
  { name: "a mail whose ownKeys trap throws", input: throwingKeys({ ...BASE }), expectProblemMatching: /^mail: reading it threw Error "trap\\r\\nBcc: evil@evil\.example\\u001b\[0m"; pass plain data/ },
  { name: "a revoked Proxy as the mail", input: revokedProxy(), expectProblemMatching: /^mail: reading it threw TypeError/ },
  { name: "a mail whose getPrototypeOf trap throws", input: throwingPrototype({ ...BASE }), expectProblemMatching: /^mail: reading it threw Error/ },
  { name: "a mail whose property descriptor trap throws", input: throwingDescriptor({ ...BASE }), expectProblemMatching: /^from: reading it threw Error/ },
  { name: "an address object whose ownKeys trap throws", input: { ...BASE, to: [throwingKeys({ address: "ann@example.com" })] }, expectProblemMatching: /^to\[0\]: reading it threw Error/ },
  { name: "an address list whose length throws", input: { ...BASE, to: throwingLength(["ann@example.com"]) }, expectProblemMatching: /^to: reading it threw Error/ },
  { name: "an address list whose element descriptor throws", input: { ...BASE, cc: throwingDescriptor(["ann@example.com"]) }, expectProblemMatching: /^cc\[0\]: reading it threw Error/ },
  { name: "a revoked Proxy as bcc", input: { ...BASE, bcc: revokedProxy() }, expectProblemMatching: /^bcc: reading it threw TypeError/ },
  { name: "a revoked Proxy as from", input: { ...BASE, from: revokedProxy() }, expectProblemMatching: /^from: reading it threw TypeError/ },
  { name: "a thrown value that throws again when inspected", input: { ...BASE, replyTo: [throwsUninspectable] }, expectProblemMatching: /^replyTo\[0\]: reading it threw a value that could not be inspected either/ },
  { name: "an address class whose name getter throws", input: { ...BASE, to: new NamelessAddress() }, expectProblemMatching: /^to: must be an address string or \{ name, address \}, got a value that could not be inspected/ },
  { name: "headers whose ownKeys trap throws", input: { ...BASE, headers: throwingKeys({ "X-A": "b" }) }, expectProblemMatching: /^headers: reading it threw Error/ },
  { name: "a header whose descriptor trap throws", input: { ...BASE, headers: throwingDescriptor({ "X-A": "b" }) }, expectProblemMatching: /^headers\["X-A"\]: reading it threw Error/ },
  { name: "attachments as a revoked Proxy", input: { ...BASE, attachments: revokedProxy() }, expectProblemMatching: /^attachments: reading it threw TypeError/ },
  { name: "an attachment whose ownKeys trap throws", input: { ...BASE, attachments: [throwingKeys({ content: "x" })] }, expectProblemMatching: /^attachments\[0\]: reading it threw Error/ },
  { name: "attachment content with a throwing pipe getter", input: { ...BASE, attachments: [{ content: { get pipe() { return boom(); } } }] }, expectProblemMatching: /^attachments\[0\]\.content: reading it threw Error/ },
  { name: "attachment content whose getPrototypeOf trap throws", input: { ...BASE, attachments: [{ content: throwingPrototype(new Uint8Array(1)) }] }, expectProblemMatching: /^attachments\[0\]\.content: reading it threw Error/ },
  { name: "nested metadata whose ownKeys trap throws", input: { ...BASE, metadata: { a: { b: throwingKeys({}) } } }, expectProblemMatching: /^metadata\.a\.b: reading it threw Error/ },
  { name: "metadata as a revoked Proxy", input: { ...BASE, metadata: revokedProxy() }, expectProblemMatching: /^metadata: reading it threw TypeError/ },
  { name: "a metadata array whose length throws", input: { ...BASE, metadata: { list: throwingLength([1]) } }, expectProblemMatching: /^metadata\.list: reading it threw Error/ },
  { name: "sendAt as a Proxy of a Date", input: { ...BASE, sendAt: new Proxy(new Date(), {}) }, expectProblemMatching: /^sendAt: reading it threw TypeError/ },
];

test("hostile input is refused with a problem that names the field", async (t) => {
  for (const { name, input, expectProblemMatching, defaults } of HOSTILE) {
    await t.test(name, async () => {
      const err = await refusal(input, defaults);
      assert.ok(
        err.problems.some((p) => expectProblemMatching.test(p)),
        `no problem matches ${expectProblemMatching}; got:\n${err.problems.join("\n")}`,
      );
      for (const p of err.problems) {
        assert.doesNotMatch(p, /[\0-\x1f\x7f-\x9f\u2028\u2029]/, "a problem sentence carries a raw control character");
      }
      assert.deepEqual(validateMailInput(input, defaults ?? DEFAULTS), err.problems, "validateMailInput agrees");
    });
  }
  assert.equal(Object.prototype.hasOwnProperty.call(Object.prototype, "polluted"), false);
});

test("all problems of a mail are reported at once", async () => {
  const err = await refusal({ to: ["ann@example.com", "bob@"], subject: "Hi\r\nBcc: evil@evil.example", priority: 5000 }, { ...DEFAULTS, defaultFrom: FROM });
  assert.equal(err.problems.length, 3, err.problems.join("\n"));
  assert.match(err.problems.join("\n"), /to\[1\]: "bob@"/);
  assert.match(err.problems.join("\n"), /subject: contains a line break/);
  assert.match(err.problems.join("\n"), /priority: must be an integer/);
  assert.match(err.message, /Mail refused, nothing was written \(3 problems\)/);
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

test("more than 1,000 distinct recipients are refused, duplicates count once", async () => {
  assert.equal(MAX_RECIPIENTS, 1000);
  const mail = await composeMail({ ...BASE, to: recipients(600), cc: recipients(300, 600), bcc: [...recipients(100, 900), "USER0@example.com"] }, DEFAULTS, NOW);
  assert.equal(mail.envelopeTo.length, 1000);
  const err = await refusal({ ...BASE, to: recipients(600), cc: recipients(300, 600), bcc: recipients(101, 900) });
  assert.deepEqual(err.problems, [
    "to: 1001 distinct recipients in to, cc and bcc together, over the limit of 1000 per mail (Postfix's default smtpd_recipient_limit); send several mails",
  ]);
});

test("100 attachments are accepted", async () => {
  const mail = await composeMail(
    { ...BASE, attachments: Array.from({ length: 100 }, (_, i) => ({ filename: `${i}.txt`, content: `file ${i}` })) },
    DEFAULTS,
    NOW,
  );
  const parsed = await simpleParser(mail.raw);
  assert.equal(parsed.attachments.length, 100);
  assert.equal(parsed.attachments[99]?.content.toString(), "file 99");
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

test("row ids are UUIDv7 and increase strictly within a process", () => {
  const ids = Array.from({ length: 5000 }, () => newId());
  for (const id of ids) assert.match(id, /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  for (let i = 1; i < ids.length; i++) assert.ok((ids[i - 1] ?? "") < (ids[i] ?? ""), `ids out of order at ${i}`);
  assert.equal(isUuid(ids[0]), true);
  assert.equal(isUuid("not-a-uuid"), false);
  assert.equal(isUuid(42), false);
});

test("a Message-ID is found with or without angle brackets", () => {
  assert.equal(normalizeMessageId("abc@example.com"), "<abc@example.com>");
  assert.equal(normalizeMessageId("  <abc@example.com>\n"), "<abc@example.com>");
  assert.equal(normalizeMessageId("<abc@[192.0.2.1]>"), "<abc@[192.0.2.1]>");
  for (const bad of ["", "abc", "<abc@example.com", "abc@example.com>", "@example.com", "abc@", "a b@example.com", "<a<b@example.com>", "ä@example.com", "a\r\n@x"]) {
    assert.equal(normalizeMessageId(bad), null, JSON.stringify(bad));
  }
});
