/**
 * What the relay writes for a hand-off, decided without a database or a socket: sent, partly
 * refused, deferred for some recipients, retried after backoff, or dead; and the backoff itself.
 */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { backoffDelay, decideFailed, decideHandedOff, handoffOutcome, type Backoff } from "../src/outcome.js";
import { EightBitMimeError, HandoffTimeoutError } from "../src/errors.js";
import type { ClaimedMail, OutcomeAttempt } from "../src/store.js";

const startedAt = new Date("2026-01-02T03:04:05.000Z");
const attempt: OutcomeAttempt = { id: "m1", attemptId: "a1", attempt: 1, startedAt, durationMs: 12 };
const noJitter: Backoff = { baseMs: 5000, maxMs: 3_600_000, jitter: 0 };
const middle = () => 0.5;

function mail(attempts: number, maxAttempts = 5, to = ["ann@example.com", "bob@example.com"]): ClaimedMail {
  return { id: "m1", messageId: "<m1@example.com>", envelopeFrom: "app@example.com", envelopeTo: to, raw: Buffer.from("x"), priority: 0, attempts, maxAttempts, uncertainHandoffs: 0, traceContext: null };
}

/** A reply to one recipient as nodemailer's `info.rejectedErrors` carries it. */
function refusal(recipient: string, responseCode: number, text: string) {
  return Object.assign(new Error(text), { recipient, response: `${responseCode} ${text}`, responseCode, code: "EENVELOPE" });
}

describe("the outcome of a hand-off the MTA took", () => {
  it("a mail accepted for every recipient is sent, with the reply and queue id", () => {
    const o = decideHandedOff(mail(1), attempt, { response: "250 2.0.0 Ok: queued as 8CCD166093", accepted: ["ann@example.com", "bob@example.com"], rejected: [] }, noJitter, middle);
    assert.deepEqual(o, {
      ...attempt,
      kind: "accepted",
      response: "250 2.0.0 Ok: queued as 8CCD166093",
      queueId: "8CCD166093",
      accepted: ["ann@example.com", "bob@example.com"],
      rejected: [],
    });
    assert.equal(handoffOutcome(o), "accepted");
  });

  it("recipients refused with 5xx are final: the mail is sent to the others and recorded as partly refused", () => {
    const o = decideHandedOff(
      mail(1),
      attempt,
      { response: "250 Ok", accepted: ["ann@example.com"], rejected: ["bob@example.com"], rejectedErrors: [refusal("bob@example.com", 550, "5.1.1 User unknown")] },
      noJitter,
      middle,
    );
    assert.equal(o.kind, "accepted");
    assert.deepEqual(o.rejected, [{ recipient: "bob@example.com", response: "550 5.1.1 User unknown" }]);
    assert.equal(handoffOutcome(o), "partial");
  });

  it("recipients deferred with 4xx get the mail on a later attempt, after backoff; refused ones do not", () => {
    const o = decideHandedOff(
      mail(2, 5, ["ann@example.com", "bob@example.com", "cid@example.com"]),
      attempt,
      {
        response: "250 Ok",
        accepted: ["ann@example.com"],
        rejected: ["bob@example.com", "cid@example.com"],
        rejectedErrors: [refusal("bob@example.com", 451, "4.7.1 Try again later"), refusal("cid@example.com", 550, "5.1.1 User unknown")],
      },
      noJitter,
      middle,
    );
    assert.equal(o.kind, "partial");
    if (o.kind !== "partial") return;
    assert.deepEqual(o.deferred, [{ recipient: "bob@example.com", response: "451 4.7.1 Try again later" }]);
    assert.deepEqual(o.rejected, [{ recipient: "cid@example.com", response: "550 5.1.1 User unknown" }]);
    assert.deepEqual(o.accepted, ["ann@example.com"]);
    assert.equal(o.delayMs, 10_000, "second attempt: base x 2");
    assert.equal(o.error, "deferred for bob@example.com (451 4.7.1 Try again later)");
    assert.equal(handoffOutcome(o), "partial");
  });

  it("a deferral is told from a refusal by the reply code, not by the reply text", () => {
    const info = {
      response: "250 Ok",
      accepted: ["ann@example.com"],
      rejected: ["bob@example.com"],
      // The text says 4xx, the code says 5xx: the code decides.
      rejectedErrors: [Object.assign(new Error("x"), { recipient: "bob@example.com", response: "451 looks temporary", responseCode: 550 })],
    };
    assert.equal(decideHandedOff(mail(1), attempt, info, noJitter, middle).kind, "accepted");
    // Without a responseCode field, the code that starts the reply decides (RFC 5321: three digits, then text).
    const bare = { ...info, rejectedErrors: [{ recipient: "bob@example.com", response: "452 4.2.2 Mailbox full" }] };
    assert.equal(decideHandedOff(mail(1), attempt, bare, noJitter, middle).kind, "partial");
  });

  it("a deferral on the last attempt is final: the mail is sent to the accepted recipients and the deferred ones are listed as refused", () => {
    const o = decideHandedOff(
      mail(5, 5),
      attempt,
      { response: "250 Ok", accepted: ["ann@example.com"], rejected: ["bob@example.com"], rejectedErrors: [refusal("bob@example.com", 451, "later")] },
      noJitter,
      middle,
    );
    assert.equal(o.kind, "accepted");
    assert.deepEqual(o.rejected, [{ recipient: "bob@example.com", response: "451 later" }]);
  });
});

describe("the outcome of a hand-off that failed", () => {
  it("a transient failure (4xx) is retried after backoff, with the error, its code and the reply", () => {
    const err = Object.assign(new Error("Message failed: 451 4.3.0 Try later"), { code: "EMESSAGE", responseCode: 451, response: "451 4.3.0 Try later" });
    const o = decideFailed(mail(3), attempt, err, noJitter, middle);
    assert.deepEqual(o, {
      ...attempt,
      kind: "transient",
      delayMs: 20_000,
      error: "EMESSAGE: Message failed: 451 4.3.0 Try later",
      errorCode: "EMESSAGE",
      response: "451 4.3.0 Try later",
      responseCode: 451,
    });
    assert.equal(handoffOutcome(o), "transient");
  });

  it("a connection error and a hand-off timeout are transient", () => {
    assert.equal(decideFailed(mail(1), attempt, Object.assign(new Error("connect ECONNREFUSED"), { code: "ECONNECTION" }), noJitter, middle).kind, "transient");
    assert.equal(decideFailed(mail(1), attempt, new HandoffTimeoutError("slow"), noJitter, middle).kind, "transient");
  });

  it("a permanent failure (5xx, or 8-bit mail for a server without 8BITMIME) makes the mail dead at once, with the refused recipients", () => {
    const err = Object.assign(new Error("Can't send mail - all recipients were rejected: 550 5.1.1 User unknown"), {
      code: "EENVELOPE",
      responseCode: 550,
      response: "550 5.1.1 User unknown",
      rejectedErrors: [refusal("ann@example.com", 550, "5.1.1 User unknown")],
    });
    const o = decideFailed(mail(1), attempt, err, noJitter, middle);
    assert.equal(o.kind, "permanent");
    if (o.kind !== "permanent") return;
    assert.equal(o.error, "EENVELOPE: Can't send mail - all recipients were rejected: 550 5.1.1 User unknown");
    assert.equal(o.responseCode, 550);
    assert.deepEqual(o.rejected, [{ recipient: "ann@example.com", response: "550 5.1.1 User unknown" }]);
    assert.equal(handoffOutcome(o), "permanent");
    const eightBit = decideFailed(mail(1), attempt, new EightBitMimeError("127.0.0.1:25", 42), noJitter, middle);
    assert.equal(eightBit.kind, "permanent");
    assert.equal(eightBit.errorCode, "E8BITMIME");
  });

  it("a transient failure on the last attempt makes the mail dead, saying the attempts are used up and what failed last", () => {
    const err = Object.assign(new Error("Greeting never received"), { code: "ETIMEDOUT" });
    const o = decideFailed(mail(5, 5), attempt, err, noJitter, middle);
    assert.equal(o.kind, "permanent");
    assert.equal(o.error, "attempts exhausted (5 of 5); last error: ETIMEDOUT: Greeting never received");
    assert.equal(o.errorCode, "ETIMEDOUT");
    assert.equal(handoffOutcome(o), "permanent");
  });

  it("a failure is classified by code, not by what its message says", () => {
    assert.equal(decideFailed(mail(1), attempt, new Error("550 permanent failure, says the text"), noJitter, middle).kind, "transient");
  });
});

describe("backoff", () => {
  it("doubles from baseMs with each attempt, up to maxMs", () => {
    const b: Backoff = { baseMs: 1000, maxMs: 10_000, jitter: 0 };
    assert.deepEqual([1, 2, 3, 4, 5, 6].map((n) => backoffDelay(n, b)), [1000, 2000, 4000, 8000, 10_000, 10_000]);
    assert.equal(backoffDelay(0, b), 1000, "before the first attempt counts as the first");
    assert.equal(backoffDelay(500, { baseMs: 5000, maxMs: 3_600_000, jitter: 0 }), 3_600_000, "no overflow for many attempts");
  });

  it("spreads each delay by at most ±jitter of itself", () => {
    const b: Backoff = { baseMs: 10_000, maxMs: 3_600_000, jitter: 0.2 };
    assert.equal(backoffDelay(1, b, () => 0), 8000);
    assert.equal(backoffDelay(1, b, () => 0.5), 10_000);
    assert.equal(backoffDelay(1, b, () => 0.999_999), 12_000);
    for (let i = 0; i < 1000; i++) {
      const d = backoffDelay(3, b);
      assert.ok(d >= 32_000 && d <= 48_000, String(d));
    }
    assert.equal(backoffDelay(1, { baseMs: 0, maxMs: 0, jitter: 1 }, () => 0.7), 0, "never negative");
  });

  it("the partial and retry decisions use it", () => {
    const b: Backoff = { baseMs: 1000, maxMs: 60_000, jitter: 0.5 };
    const err = Object.assign(new Error("x"), { code: "ECONNECTION" });
    const o = decideFailed(mail(2), attempt, err, b, () => 0);
    assert.equal(o.kind === "transient" ? o.delayMs : -1, 1000, "2000 - 50%");
  });
});
