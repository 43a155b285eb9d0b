/**
 * Text (src/text.ts): the subject and the bodies; line breaks in bodies are stored as CRLF.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { simpleParser } from "mailparser";
import { composeMail } from "../src/compose.js";
import { bareLineEndAt } from "../src/wire.js";
import { BASE, DEFAULTS, NOW, expectRefusals, loneLineBreaks, type Hostile } from "./support/mail.js";

// Line breaks (issue 8, A1): each of CRLF, CR and LF is one line break, stored as CRLF.

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

const SUBJECT_AND_BODIES: readonly Hostile[] = [
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
  // C1 controls and the Unicode line and paragraph separators, wherever C0 controls are refused
  { name: "a C1 control (NEL) in the subject", input: { ...BASE, subject: "Hi\u0085there" }, expectProblemMatching: /^subject: contains the control character U\+0085$/ },
  { name: "a C1 control (CSI) in the subject", input: { ...BASE, subject: "Hi \u009b31m" }, expectProblemMatching: /^subject: contains the control character U\+009B$/ },
  { name: "U+2028 in the subject", input: { ...BASE, subject: "Hi\u2028Bcc: evil@evil.example" }, expectProblemMatching: /^subject: contains the Unicode line separator U\+2028, which some programs treat as a line break/ },
  { name: "U+2029 in the subject", input: { ...BASE, subject: "Hi\u2029there" }, expectProblemMatching: /^subject: contains the Unicode paragraph separator U\+2029/ },
];

test("a subject or body with line breaks, control characters or lone surrogates where they are refused is refused with a problem that names the field", async (t) => {
  await expectRefusals(t, SUBJECT_AND_BODIES);
});
