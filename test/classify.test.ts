/**
 * Classifying what the MTA answered, by `err.code` and `err.responseCode`, never by text: failures
 * (transient or permanent), queue ids, refused and deferred recipients, an MTA that is down; and
 * keeping secrets out of what is logged and stored (src/redact.ts).
 */
import { test, describe } from "node:test";
import assert from "node:assert/strict";
import {
  classifyError,
  isConnectionRefused,
  isMtaUnreachable,
  parseQueueId,
  recipientReplyCode,
  rejectedRecipientsOf,
  toHandoffResult,
} from "../src/classify.js";
import { EightBitMimeError, HandoffTimeoutError, SendmailExitError } from "../src/errors.js";
import { collectSecrets, redactSecrets, redactUrl, scrubSecrets } from "../src/redact.js";

describe("classifying MTA answers", () => {
  test("queue ids are read from Postfix, Exim and Sendmail replies, and absent from replies without one", () => {
    assert.equal(parseQueueId("250 2.0.0 Ok: queued as 8CCD166093"), "8CCD166093");
    assert.equal(parseQueueId("250 2.0.0 Ok: queued as 4XyZ0k2fQmz1w9"), "4XyZ0k2fQmz1w9");
    assert.equal(parseQueueId("250 OK id=1abcDE-000123-AB"), "1abcDE-000123-AB");
    assert.equal(parseQueueId("250 OK id=1rXyZa-00000001234-ABCD"), "1rXyZa-00000001234-ABCD");
    assert.equal(parseQueueId("250 2.0.0 x8J3Z4aB012345 Message accepted for delivery"), "x8J3Z4aB012345");
    assert.equal(parseQueueId("250 x8J3Z4aB012345 Message accepted for delivery"), "x8J3Z4aB012345");
    assert.equal(parseQueueId("250 OK: message queued"), null);
    assert.equal(parseQueueId("sendmail exited 0"), null);
    assert.equal(parseQueueId(""), null);
    assert.equal(parseQueueId(null), null);
    assert.equal(parseQueueId(undefined), null);
  });

  test("failures are classified by code and reply code, never by text", () => {
    const cases: Array<[unknown, "transient" | "permanent"]> = [
      [{ code: "EMESSAGE", responseCode: 451, response: "451 try later" }, "transient"],
      [{ code: "EMESSAGE", responseCode: 452 }, "transient"],
      [{ code: "EMESSAGE", responseCode: 421 }, "transient"],
      [{ code: "EMESSAGE", responseCode: 552, response: "552 too big" }, "permanent"],
      [{ code: "EENVELOPE", responseCode: 550 }, "permanent"],
      [{ code: "EENVELOPE", responseCode: 503 }, "transient"],
      [{ code: "EENVELOPE" }, "permanent"],
      [{ code: "EAUTH", responseCode: 535 }, "transient"],
      [{ code: "ECONNECTION" }, "transient"],
      [{ code: "ETIMEDOUT" }, "transient"],
      [{ code: "ESOCKET" }, "transient"],
      [{ code: "ECONNREFUSED" }, "transient"],
      [{ code: "ECONNRESET" }, "transient"],
      [{ code: "EPIPE" }, "transient"],
      [{ code: "EDNS" }, "transient"],
      [{ code: "EPROTOCOL" }, "transient"],
      [{ code: "ETLS" }, "transient"],
      [new SendmailExitError("sendmail exited with code 75", 75, null, "temp"), "transient"],
      [new HandoffTimeoutError("silent"), "transient"],
      [new EightBitMimeError("127.0.0.1:25", 42), "permanent"],
      [{ code: "E8BITMIME" }, "permanent"],
      [Object.assign(new Error("Permanent failure: 550 in the text only"), {}), "transient"],
      ["a string", "transient"],
      [null, "transient"],
    ];
    for (const [err, kind] of cases) {
      assert.equal(classifyError(err).kind, kind, JSON.stringify(err));
    }
    const f = classifyError(new SendmailExitError("x exited", 75, null, ""));
    assert.equal(f.code, "ESENDMAIL");
    assert.equal(classifyError(new HandoffTimeoutError("slow")).code, "ETIMEDOUT");
    const multi = classifyError(Object.assign(new Error("line one\r\nline two"), { code: "EMESSAGE", responseCode: 554 }));
    assert.equal(multi.message, "EMESSAGE: line one line two");
  });

  test("toHandoffResult keeps the reply, the queue id and who was refused", () => {
    const result = toHandoffResult({
      response: "250 2.0.0 Ok: queued as 8CCD166093",
      accepted: ["a@x"],
      rejected: ["b@x"],
      rejectedErrors: [Object.assign(new Error("no"), { recipient: "b@x", response: "550 5.1.1 no such user" })],
    });
    assert.deepEqual(result, {
      response: "250 2.0.0 Ok: queued as 8CCD166093",
      queueId: "8CCD166093",
      accepted: ["a@x"],
      rejected: [{ recipient: "b@x", response: "550 5.1.1 no such user" }],
    });
    assert.deepEqual(toHandoffResult({}), { response: "", queueId: null, accepted: [], rejected: [] });
  });
});

describe("recipients and outages", () => {
  test("a recipient's reply code says whether it was deferred (4xx) or refused (5xx)", () => {
    const info = {
      rejected: ["a@x", "b@x", "c@x"],
      rejectedErrors: [
        { recipient: "a@x", response: "451 4.7.1 later", responseCode: 451 },
        { recipient: "b@x", response: "550 5.1.1 unknown" },
        { recipient: "c@x", response: "no code here" },
      ],
    };
    assert.equal(recipientReplyCode(info, "a@x"), 451);
    assert.equal(recipientReplyCode(info, "b@x"), 550, "from the reply's leading code when the field is absent");
    assert.equal(recipientReplyCode(info, "c@x"), null);
    assert.equal(recipientReplyCode(info, "d@x"), null);
    assert.equal(recipientReplyCode({}, "a@x"), null);
  });

  test("the recipients a failed hand-off names are kept with their replies", () => {
    const err = Object.assign(new Error("all refused"), { code: "EENVELOPE", rejectedErrors: [{ recipient: "a@x", response: "550 no" }, { recipient: "b@x" }] });
    assert.deepEqual(rejectedRecipientsOf(err), [
      { recipient: "a@x", response: "550 no" },
      { recipient: "b@x", response: null },
    ]);
    assert.equal(rejectedRecipientsOf(new Error("x")), null);
    assert.equal(rejectedRecipientsOf(null), null);
  });

  test("a refused connection (nothing reached the MTA) is told apart from one closed after DATA", () => {
    assert.equal(isConnectionRefused(Object.assign(new Error("connect ECONNREFUSED"), { code: "ECONNREFUSED" })), true);
    assert.equal(isConnectionRefused(Object.assign(new Error("x"), { code: "ESOCKET", cause: { code: "ECONNREFUSED" } })), true);
    assert.equal(isConnectionRefused(Object.assign(new Error("closed"), { code: "ECONNECTION" })), false, "may have the mail");
    assert.equal(isConnectionRefused(Object.assign(new Error("x"), { code: "ECONNREFUSED", responseCode: 421 })), false, "the MTA answered");
    assert.equal(isConnectionRefused(new Error("ECONNREFUSED in the text only")), false);
    assert.equal(isConnectionRefused(null), false);
  });

  test("an MTA that does not answer at all is an outage; a reply is about the mail", () => {
    for (const code of ["ECONNECTION", "ECONNREFUSED", "ETIMEDOUT", "ESOCKET", "ECONNRESET", "EPIPE", "EDNS"]) assert.equal(isMtaUnreachable(code, null), true, code);
    assert.equal(isMtaUnreachable("ECONNECTION", 421), false);
    assert.equal(isMtaUnreachable("EMESSAGE", null), false);
    assert.equal(isMtaUnreachable(null, null), false);
  });
});

describe("redaction", () => {
  test("URLs lose their password and secret-looking parameters; SQLite URLs stay as written", () => {
    assert.equal(redactUrl("postgresql://app:hunter2@db/prod"), "postgresql://app:***@db/prod");
    assert.equal(redactUrl("smtp://u:p@mx:25?token=abc&timeout=5"), "smtp://u:***@mx:25?token=***&timeout=5");
    assert.equal(redactUrl("file:./dev.db"), "file:./dev.db");
    assert.equal(redactUrl("file:./dev.db?password=x"), "file:./dev.db?password=***");
    assert.equal(redactUrl("not a url"), "not a url");
  });

  test("free text loses credentials in URLs and pass=/secret=/token= values", () => {
    assert.equal(redactSecrets("535 failed for smtp://me:hunter2@mx (password=hunter2&x=1)"), "535 failed for smtp://me:***@mx (password=***&x=1)");
  });

  test("CLI output loses every occurrence of a password found in the URLs it was given", () => {
    const secrets = collectSecrets(["postgresql://app:p%40ss-word@db/x", undefined, "smtp://mx?secret=topsecret"]);
    assert.deepEqual(secrets, ["p%40ss-word", "p@ss-word", "topsecret"]);
    assert.equal(scrubSecrets("could not log in with p@ss-word to postgresql://app:p%40ss-word@db/x", secrets), "could not log in with *** to postgresql://app:***@db/x");
  });
});
