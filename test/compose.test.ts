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
  RESERVED_HEADERS,
} from "../src/compose.js";
import { newId, isUuid, normalizeMessageId } from "../src/ids.js";
import { InvalidMailError, MailTooLargeError, OptionsError } from "../src/errors.js";
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
        assert.doesNotMatch(p, /[\r\n\0\x1b]/, "a problem sentence carries a raw control character");
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
  const problems = validateComposeDefaults({ maxAttempts: 0, maxMessageBytes: -1, messageIdDomain: "bad domain", defaultFrom: "nope" });
  assert.equal(problems.length, 4, problems.join("\n"));
  assert.match(problems[0] ?? "", /^Expected `maxAttempts` to be an integer from 1 to 1000, got 0\.$/);
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
