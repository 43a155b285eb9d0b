/**
 * Attachments (src/attachments.ts): inline bytes only, kept exactly (base64), and message/* parts, which go
 * out unencoded with CRLF line breaks.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { Readable } from "node:stream";
import { simpleParser } from "mailparser";
import { composeMail } from "../src/compose.js";
import { BASE, DEFAULTS, NOW, expectRefusals, loneLineBreaks, type Hostile } from "./support/mail.js";

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

const EIGHT_BIT = /[\x80-\xff]/;

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

const ATTACHMENTS: readonly Hostile[] = [
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
  // C1 controls and the Unicode line and paragraph separators, wherever C0 controls are refused
  { name: "a C1 control in an attachment filename", input: { ...BASE, attachments: [{ filename: "a\u009b.txt", content: "x" }] }, expectProblemMatching: /^attachments\[0\]\.filename: contains the control character U\+009B/ },
  { name: "U+2028 in an attachment filename", input: { ...BASE, attachments: [{ filename: "a\u2028.txt", content: "x" }] }, expectProblemMatching: /^attachments\[0\]\.filename: contains the Unicode line separator U\+2028/ },
  { name: "a C1 control in a contentType", input: { ...BASE, attachments: [{ content: "x", contentType: "text/plain; x=\u0085" }] }, expectProblemMatching: /^attachments\[0\]\.contentType: contains the control character U\+0085/ },
  { name: "a C1 control in a cid", input: { ...BASE, attachments: [{ content: "x", cid: "logo\u0085@example.com" }] }, expectProblemMatching: /^attachments\[0\]\.cid: contains the control character U\+0085/ },
  { name: "a non-ASCII cid (Content-ID is ASCII)", input: { ...BASE, attachments: [{ content: "x", cid: "lögo@example.com" }] }, expectProblemMatching: /^attachments\[0\]\.cid: may hold only printable ASCII without spaces or angle brackets/ },
  // message/* attachments go out unencoded
  { name: "a NUL byte in a message/rfc822 attachment", input: { ...BASE, attachments: [{ content: Buffer.from("Subject: x\r\n\r\na\0b\r\n"), contentType: "message/rfc822" }] }, expectProblemMatching: /^attachments\[0\]\.content: has a NUL byte at offset 15; a message\/\* part cannot be encoded/ },
  { name: "a line over 998 octets in a message/rfc822 attachment", input: { ...BASE, attachments: [{ content: `Subject: x\n\n${"y".repeat(999)}\n`, contentType: "message/rfc822" }] }, expectProblemMatching: /^attachments\[0\]\.content: has a line longer than 998 octets.*attach it as application\/octet-stream instead/ },
];

test("an attachment that is not inline bytes with plain single-line fields is refused with a problem that names the field", async (t) => {
  await expectRefusals(t, ATTACHMENTS);
});
