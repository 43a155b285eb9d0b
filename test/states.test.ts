/**
 * The state table itself (src/states.ts): well formed, and saying what the operator functions
 * promise. That every status change the stores make is in it is checked by
 * test/store-conformance.test.ts.
 */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { STATUSES, TRANSITIONS, isOutboxStatus, type OutboxStatus } from "../src/states.js";

describe("the state table", () => {
  it("names only known statuses, and no transition leads where it starts", () => {
    for (const [name, t] of Object.entries(TRANSITIONS)) {
      assert.ok(isOutboxStatus(t.to), `${name} leads to a known status`);
      assert.ok(t.from.length > 0 && t.from.every(isOutboxStatus), `${name} starts from known statuses`);
      assert.ok(!t.from.includes(t.to), `${name} changes the status`);
    }
  });

  it("every status can be reached and, except sending's hand-off, left by an operator", () => {
    const reached = new Set<OutboxStatus>(["pending"]);
    for (const t of Object.values(TRANSITIONS)) reached.add(t.to);
    assert.deepEqual([...reached].sort(), [...STATUSES].sort());
    const left = new Set(Object.values(TRANSITIONS).flatMap((t) => t.from));
    assert.deepEqual([...left].sort(), [...STATUSES].sort(), "no status is a trap");
  });

  it("a mail in sending is neither cancelled nor replayed by an operator: only its relay or a rescue moves it", () => {
    assert.ok(!TRANSITIONS.cancel.from.includes("sending"));
    assert.ok(!TRANSITIONS.replay.from.includes("sending"));
    assert.deepEqual(TRANSITIONS.cancel.from, ["pending", "held"]);
    assert.deepEqual(TRANSITIONS.replay.from, ["dead", "cancelled", "held", "sent"]);
  });

  it("the MTA's acceptance is recorded even on a row rescued meanwhile, so it is not sent again", () => {
    assert.deepEqual(TRANSITIONS["accepted-late"], { from: ["pending", "held"], to: "sent" });
    assert.deepEqual(TRANSITIONS["lease-expired-exhausted"], { from: ["sending"], to: "dead" });
  });
});
