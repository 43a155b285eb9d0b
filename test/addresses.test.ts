/**
 * Addresses (src/addresses.ts): parsing, the addr-spec and domain rules, the envelope, display names, and
 * the recipient limit.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { composeMail } from "../src/compose.js";
import { MAX_RECIPIENTS, normalizeEmailAddress } from "../src/addresses.js";
import { BASE, DEFAULTS, FROM, NOW, expectRefusals, recipients, refusal, type Hostile } from "./support/mail.js";

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

test("more than 1,000 distinct recipients are refused, duplicates count once", async () => {
  assert.equal(MAX_RECIPIENTS, 1000);
  const mail = await composeMail({ ...BASE, to: recipients(600), cc: recipients(300, 600), bcc: [...recipients(100, 900), "USER0@example.com"] }, DEFAULTS, NOW);
  assert.equal(mail.envelopeTo.length, 1000);
  const err = await refusal({ ...BASE, to: recipients(600), cc: recipients(300, 600), bcc: recipients(101, 900) });
  assert.deepEqual(err.problems, [
    "to: 1001 distinct recipients in to, cc and bcc together, over the limit of 1000 per mail (Postfix's default smtpd_recipient_limit); send several mails",
  ]);
});

const SENDERS_AND_RECIPIENTS: readonly Hostile[] = [
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
  // recipients past Postfix's smtpd_recipient_limit
  { name: "10,000 recipients in one to string", input: { ...BASE, to: recipients(10_000).join(", ") }, expectProblemMatching: /^to: 10000 distinct recipients in to, cc and bcc together, over the limit of 1000 per mail \(Postfix's default smtpd_recipient_limit\); send several mails$/ },
  { name: "10,000 recipients in a to array", input: { ...BASE, to: recipients(10_000) }, expectProblemMatching: /^to: 10000 entries, over the limit of 1000 recipients per mail; send several mails$/ },
  { name: "1,001 distinct recipients over to, cc and bcc", input: { ...BASE, to: recipients(600), cc: recipients(300, 600), bcc: recipients(101, 900) }, expectProblemMatching: /^to: 1001 distinct recipients in to, cc and bcc together, over the limit of 1000/ },
];

test("an invalid sender or recipient is refused with a problem that names the field", async (t) => {
  await expectRefusals(t, SENDERS_AND_RECIPIENTS);
});

const DISPLAY_NAMES: readonly Hostile[] = [
  // display names: header injection through every address field
  { name: "CRLF in the from display name", input: { ...BASE, from: { name: "Shop\r\nBcc: evil@evil.example", address: "shop@example.com" } }, expectProblemMatching: /^from\.name: contains a line break/ },
  { name: "CRLF in a to display name", input: { ...BASE, to: [{ name: "Ann\r\nBcc: evil@evil.example", address: "ann@example.com" }] }, expectProblemMatching: /^to\[0\]\.name: contains a line break/ },
  { name: "LF in a cc display name", input: { ...BASE, cc: { name: "Bob\nX-Evil: 1", address: "bob@example.com" } }, expectProblemMatching: /^cc\.name: contains a line break/ },
  { name: "CR in a bcc display name", input: { ...BASE, bcc: [{ name: "Sam\rX: 1", address: "sam@example.com" }] }, expectProblemMatching: /^bcc\[0\]\.name: contains a line break/ },
  { name: "CRLF in a replyTo display name", input: { ...BASE, replyTo: { name: "Help\r\nTo: x@evil.example", address: "help@example.com" } }, expectProblemMatching: /^replyTo\.name: contains a line break/ },
  { name: "an escape sequence in a display name", input: { ...BASE, to: { name: "\x1b[31mAnn", address: "ann@example.com" } }, expectProblemMatching: /^to\.name: contains the control character U\+001B/ },
  { name: "a lone surrogate in a display name", input: { ...BASE, to: { name: "Ann \ud800", address: "ann@example.com" } }, expectProblemMatching: /^to\.name: is not well-formed UTF-16/ },
  { name: "a display name of the wrong type", input: { ...BASE, to: { name: 5, address: "ann@example.com" } }, expectProblemMatching: /^to\.name: must be a string, got 5/ },
  // C1 controls and the Unicode line and paragraph separators, wherever C0 controls are refused
  { name: "a C1 control in a display name string", input: { ...BASE, to: "Ann\u0080 <ann@example.com>" }, expectProblemMatching: /^to: contains the control character U\+0080/ },
  { name: "U+2029 in a display name object", input: { ...BASE, cc: { name: "Bob\u2029", address: "bob@example.com" } }, expectProblemMatching: /^cc\.name: contains the Unicode paragraph separator U\+2029/ },
  { name: "a C1 control in the from display name", input: { ...BASE, from: { name: "Shop\u009f", address: "shop@example.com" } }, expectProblemMatching: /^from\.name: contains the control character U\+009F/ },
];

test("a display name that could inject a header line is refused with a problem that names the field", async (t) => {
  await expectRefusals(t, DISPLAY_NAMES);
});
