/**
 * Shared by the tests of composing and of the input checks (compose, mail-input, addresses, text,
 * headers, attachments, json): a fixed clock and defaults, a valid base mail, values that throw while
 * they are read, and the runner for tables of hostile input.
 */
import assert from "node:assert/strict";
import type { TestContext } from "node:test";
import { composeMail, DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_HEADER_BYTES, DEFAULT_MAX_MESSAGE_BYTES, validateMailInput } from "../../src/compose.js";
import { InvalidMailError } from "../../src/errors.js";
import type { ComposeDefaults } from "../../src/types.js";

export const NOW = new Date("2031-05-06T07:08:09.000Z");
export const DEFAULTS: ComposeDefaults = {
  maxAttempts: DEFAULT_MAX_ATTEMPTS,
  maxMessageBytes: DEFAULT_MAX_MESSAGE_BYTES,
  maxHeaderBytes: DEFAULT_MAX_HEADER_BYTES,
};
export const FROM = "Shop <shop@example.com>";
export const BASE = { from: FROM, to: "ann@example.com", subject: "Hello", text: "Hi" };

export async function refusal(input: unknown, defaults: ComposeDefaults = DEFAULTS): Promise<InvalidMailError> {
  try {
    await composeMail(input, defaults, NOW);
  } catch (err) {
    assert.ok(err instanceof InvalidMailError, `expected InvalidMailError, got ${String(err)}`);
    return err;
  }
  assert.fail("the mail was accepted but should have been refused");
}

/** Every byte offset of a lone CR or a lone LF, by a different method than the library's. */
export function loneLineBreaks(raw: Buffer): number[] {
  const found: number[] = [];
  for (let i = 0; i < raw.length; i++) {
    if (raw[i] === 0x0d && raw[i + 1] !== 0x0a) found.push(i);
    if (raw[i] === 0x0a && raw[i - 1] !== 0x0d) found.push(i);
  }
  return found;
}

export const recipients = (n: number, from = 0): string[] => Array.from({ length: n }, (_, i) => `user${from + i}@example.com`);

// Values that throw while they are read. The message carries CRLF and ESC to show that it is quoted safely.
export const boom = (): never => {
  throw new Error("trap\r\nBcc: evil@evil.example\x1b[0m");
};
export const revokedProxy = (): object => {
  const r = Proxy.revocable({}, {});
  r.revoke();
  return r.proxy;
};
export const throwingKeys = <T extends object>(target: T): T => new Proxy(target, { ownKeys: boom });
export const throwingDescriptor = <T extends object>(target: T): T => new Proxy(target, { getOwnPropertyDescriptor: boom });
export const throwingPrototype = <T extends object>(target: T): T => new Proxy(target, { getPrototypeOf: boom });
export const throwingLength = <T extends object>(target: T): T =>
  new Proxy(target, { get: (t, key, receiver) => (key === "length" ? boom() : Reflect.get(t, key, receiver)) });

/** A mail that must be refused, and a problem it must be refused with. */
export interface Hostile {
  readonly name: string;
  readonly input: unknown;
  readonly expectProblemMatching: RegExp;
  readonly defaults?: ComposeDefaults;
}

/**
 * One subtest per case: `composeMail` refuses the input with `InvalidMailError`, one of whose problems
 * matches; no problem sentence carries a raw control character; `validateMailInput` lists the same
 * problems; and nothing polluted `Object.prototype` along the way.
 */
export async function expectRefusals(t: TestContext, cases: readonly Hostile[]): Promise<void> {
  for (const { name, input, expectProblemMatching, defaults } of cases) {
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
}
