/**
 * Checking a whole mail (src/mail-input.ts, src/plain-data.ts): the shape of the input, keys that can
 * change a prototype, values that throw while they are read, and the queue fields.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { composeMail } from "../src/compose.js";
import { BASE, DEFAULTS, FROM, NOW, boom, expectRefusals, refusal, revokedProxy, throwingDescriptor, throwingKeys, throwingLength, throwingPrototype, type Hostile } from "./support/mail.js";

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

test("all problems of a mail are reported at once", async () => {
  const err = await refusal({ to: ["ann@example.com", "bob@"], subject: "Hi\r\nBcc: evil@evil.example", priority: 5000 }, { ...DEFAULTS, defaultFrom: FROM });
  assert.equal(err.problems.length, 3, err.problems.join("\n"));
  assert.match(err.problems.join("\n"), /to\[1\]: "bob@"/);
  assert.match(err.problems.join("\n"), /subject: contains a line break/);
  assert.match(err.problems.join("\n"), /priority: must be an integer/);
  assert.match(err.message, /Mail refused, nothing was written \(3 problems\)/);
});

const getterInput = { ...BASE };
Object.defineProperty(getterInput, "subject", { get: () => "changes every time", enumerable: true });
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

const SHAPE: readonly Hostile[] = [
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
  // C1 controls and the Unicode line and paragraph separators, wherever C0 controls are refused
  { name: "a C1 control in an unknown field's name", input: { ...BASE, "x\u009by": 1 }, expectProblemMatching: /^\["x\\u009by"\]: unknown field/ },
];

test("a mail that is not a plain object of known fields is refused with a problem that names the field", async (t) => {
  await expectRefusals(t, SHAPE);
});

const POLLUTION: readonly Hostile[] = [
  // prototype pollution
  { name: "__proto__ at the top (JSON.parse)", input: JSON.parse('{"to":"ann@example.com","from":"a@example.com","__proto__":{"bcc":"evil@evil.example"}}'), expectProblemMatching: /^__proto__: the key is refused anywhere/ },
  { name: "constructor at the top", input: { ...BASE, constructor: { prototype: {} } }, expectProblemMatching: /^constructor: the key is refused/ },
  { name: "__proto__ in metadata (JSON.parse)", input: { ...BASE, metadata: JSON.parse('{"a":{"__proto__":{"polluted":true}}}') }, expectProblemMatching: /^metadata\.a\["__proto__"\]: the key is refused/ },
  { name: "prototype in metadata", input: { ...BASE, metadata: { prototype: 1 } }, expectProblemMatching: /^metadata\["prototype"\]: the key is refused/ },
  { name: "__proto__ in headers (JSON.parse)", input: { ...BASE, headers: JSON.parse('{"__proto__":{"value":"x\\r\\nBcc: e@evil.example","prepared":true}}') }, expectProblemMatching: /^headers\["__proto__"\]: the key is refused/ },
  { name: "__proto__ in an attachment (JSON.parse)", input: { ...BASE, attachments: [JSON.parse('{"content":"x","__proto__":{"path":"/etc/passwd"}}')] }, expectProblemMatching: /^attachments\[0\]\["__proto__"\]: the key is refused/ },
  { name: "constructor in an address object", input: { ...BASE, to: [JSON.parse('{"address":"ann@example.com","constructor":1}')] }, expectProblemMatching: /^to\[0\]\["constructor"\]: the key is refused/ },
];

test("a key that can change a prototype is refused anywhere in a mail", async (t) => {
  await expectRefusals(t, POLLUTION);
});

const QUEUE_FIELDS: readonly Hostile[] = [
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
  // C1 controls and the Unicode line and paragraph separators, wherever C0 controls are refused
  { name: "a C1 control in the idempotencyKey", input: { ...BASE, idempotencyKey: "order\u008542" }, expectProblemMatching: /^idempotencyKey: contains the control character U\+0085/ },
  { name: "U+2029 in the idempotencyKey", input: { ...BASE, idempotencyKey: "order\u202942" }, expectProblemMatching: /^idempotencyKey: contains the Unicode paragraph separator U\+2029/ },
];

test("invalid queue fields are refused with a problem that names the field", async (t) => {
  await expectRefusals(t, QUEUE_FIELDS);
});

const THROWING: readonly Hostile[] = [
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

test("a value that throws while it is read is a problem naming the field, never a raw error", async (t) => {
  await expectRefusals(t, THROWING);
});
