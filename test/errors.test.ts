/**
 * The errors (src/errors.ts): one module, every class named, keeping its cause, and a message that
 * says what to do.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import * as errors from "../src/errors.js";

/** How to build each class whose constructor is not `(message, { cause })`, with the advice its own message gives. */
const BUILD: Readonly<Record<string, { make: (cause: unknown) => Error; advice?: RegExp }>> = {
  InvalidMailError: { make: (cause) => new errors.InvalidMailError(["to: no recipient; give at least one address in to, cc or bcc"], { cause }), advice: /give at least one address/ },
  MailTooLargeError: { make: (cause) => new errors.MailTooLargeError(2000, 1000, { cause }), advice: /raise maxMessageBytes, or link to large files/ },
  HeaderTooLargeError: { make: (cause) => new errors.HeaderTooLargeError(2000, 1000, { atLeast: true, cause }), advice: /use bcc, or send several mails.*raise maxHeaderBytes/ },
  DuplicateIdempotencyKeyError: { make: (cause) => new errors.DuplicateIdempotencyKeyError("k", "id", "<id@x>", { cause }), advice: /Treat the operation as done, or use a new key/ },
  SchemaNotReadyError: { make: (cause) => new errors.SchemaNotReadyError("Run mail-outbox migrate.", ["x"], ["OutboxEmail"], { cause }) },
  HandoffTimeoutError: { make: (cause) => new errors.HandoffTimeoutError("Timed out; the mail will be retried.", { cause }) },
  SendmailExitError: { make: (cause) => new errors.SendmailExitError("sendmail exited 75; the mail was not handed over", 75, null, "", { cause }) },
  EightBitMimeError: { make: (cause) => new errors.EightBitMimeError("mx.example:25", 12, { cause }), advice: /Enable 8BITMIME on that MTA .*then replay the mail/ },
  SuppressedRecipientError: { make: (cause) => new errors.SuppressedRecipientError(["bob@example.net"], { cause }), advice: /mail-outbox suppress remove <address>.*"skip"/ },
  UnreadableReportError: { make: (cause) => new errors.UnreadableReportError("not a multipart/report", { cause }) },
  ForgedReportError: { make: (cause) => new errors.ForgedReportError("the token does not verify", { cause }), advice: /Nothing was recorded/ },
  ComposedMailAlreadyEnqueuedError: { make: (cause) => new errors.ComposedMailAlreadyEnqueuedError("m1", "<m1@example.com>", { cause }), advice: /compose the mail again/ },
};

test("every error class has its own name, keeps its cause, and is a MailOutboxError", () => {
  const classes = Object.entries(errors).filter(([, v]) => typeof v === "function" && v.prototype instanceof Error);
  assert.ok(classes.length >= 15, `only ${classes.length} error classes found`);
  for (const [name, Class] of classes) {
    const cause = new Error(`the cause of ${name}`);
    const build = BUILD[name];
    const err = build !== undefined ? build.make(cause) : new (Class as new (m: string, o: { cause: unknown }) => Error)("Do this to fix it.", { cause });
    assert.equal(err.name, name, `${name}.name`);
    assert.equal(err.cause, cause, `${name} keeps its cause`);
    assert.ok(err instanceof errors.MailOutboxError, `${name} extends MailOutboxError`);
    assert.ok(err.message.length > 0, `${name} has a message`);
    if (build?.advice !== undefined) assert.match(err.message, build.advice, `${name} says what to do`);
    assert.match(String(err.stack), new RegExp(`^${name}: `), `${name} shows its name in the stack`);
  }
});

test("an error built without a cause has none", () => {
  assert.equal("cause" in new errors.MailTooLargeError(2, 1), false);
  assert.equal("cause" in new errors.HeaderTooLargeError(2, 1, { atLeast: true }), false);
  assert.equal("cause" in new errors.EightBitMimeError("mx", -1), false);
  assert.equal("cause" in new errors.SendmailExitError("x", 1, null, ""), false);
});
