/**
 * The soak's audit (soak/audit.ts) catches each kind of broken promise. Pure: no services.
 */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { audit, type AuditInput, type RowFact } from "../../soak/audit.js";
import { fateOf, type MtaCopy } from "../../soak/faults.js";
import { newLedger, type MailPlan } from "../../soak/producers.js";

const plan = (over: Partial<MailPlan> = {}): MailPlan => ({ op: "single", refused: [], recipients: 1, idempotencyKey: null, ...over });
const row = (messageId: string, over: Partial<RowFact> = {}): RowFact => ({
  messageId,
  status: "sent",
  uncertainHandoffs: 0,
  lastError: null,
  mtaResponse: "250 2.0.0 Ok: queued as ABC",
  rejected: null,
  idempotencyKey: null,
  attempts: 1,
  permanentCode: null,
  timeouts: 0,
  ...over,
});
const copy = (messageId: string, over: Partial<MtaCopy> = {}): MtaCopy => ({ messageId, kind: "ok", rollbackMarker: false, recipients: ["u@example.com"], at: 0, ...over });

/** Three committed mails, all delivered once; one rolled back and never seen. */
function clean(): AuditInput & { rows: RowFact[]; copies: MtaCopy[] } {
  const ledger = newLedger();
  for (const id of ["<a@x>", "<b@x>", "<c@x>"]) ledger.committed.set(id, plan());
  ledger.rolledBack.set("<r@x>", plan({ op: "rollback" }));
  return {
    label: "test",
    ledger,
    rows: ["<a@x>", "<b@x>", "<c@x>"].map((id) => row(id)),
    copies: ["<a@x>", "<b@x>", "<c@x>"].map((id) => copy(id)),
    rejectRate: 0,
    mtaName: "SMTP server",
    kills: [{ how: "SIGKILL", relay: "r#1", concurrency: 2 }],
    dbRestarts: [],
    backendKills: 0,
    notes: [],
    settled: true,
    memory: [{ name: "r", peakRss: 100 * 2 ** 20, incarnations: 2, longestLifeMs: 120_000, growth: 2 * 2 ** 20 }],
    maxRssBytes: 400 * 2 ** 20,
    maxGrowthBytes: 64 * 2 ** 20,
    unexpectedExits: [],
  };
}

describe("soak audit", () => {
  it("passes a run where every committed mail arrived once and nothing rolled back arrived", () => {
    const r = audit(clean());
    assert.equal(r.passed, true, r.failures.join("\n"));
    assert.match(r.line, /^test: committed 3, delivered 3, dead 0, lost 0, rolled-back delivered 0, duplicates 0 \(relay died 0 of bound 2: in flight at 1 kills; drop after DATA 0; timeout after accept 0\)/);
    assert.match(r.line, /=> PASS$/);
  });

  it("fails when a committed mail is neither at the MTA nor dead (lost), even if its row says sent", () => {
    const input = clean();
    input.copies.pop();
    const r = audit(input);
    assert.equal(r.passed, false);
    assert.equal(r.counts.lost, 1);
    assert.ok(r.failures.some((f) => f.includes("lost") && f.includes("<c@x>")));
  });

  it("counts a mail dead with a 5xx the MTA gave it as accounted for, and refuses one the MTA would have taken", () => {
    const rejectRate = 0.5;
    const ids = Array.from({ length: 40 }, (_, i) => `<m${i}@x>`);
    const refused = ids.find((id) => fateOf(id, rejectRate) === "reject")!;
    const normal = ids.find((id) => fateOf(id, rejectRate) === "normal")!;
    const input = clean();
    input.ledger.committed.set(refused, plan());
    input.rows.push(row(refused, { status: "dead", permanentCode: 554, mtaResponse: "554 5.7.1 no", lastError: "554 5.7.1 no" }));
    const ok = audit({ ...input, rejectRate });
    assert.equal(ok.passed, true, ok.failures.join("\n"));
    assert.match(ok.line, /dead 1 \(all with a 5xx reply recorded\)/);

    input.ledger.committed.set(normal, plan());
    input.rows.push(row(normal, { status: "dead", permanentCode: 554, mtaResponse: "554 5.7.1 no", lastError: "554" }));
    const bad = audit({ ...input, rejectRate });
    assert.equal(bad.passed, false);
    assert.ok(bad.failures.some((f) => f.includes("5xx the MTA never gave")));
  });

  it("fails when mail of a rolled-back transaction reaches the MTA, by Message-ID or by its marker", () => {
    const byId = clean();
    byId.copies.push(copy("<r@x>"));
    assert.equal(audit(byId).counts.rolledBackDelivered, 1);
    const byMarker = clean();
    byMarker.copies.push(copy("<never-recorded@x>", { rollbackMarker: true }));
    const r = audit(byMarker);
    assert.equal(r.passed, false);
    assert.equal(r.counts.rolledBackDelivered, 1);
  });

  it("fails on a duplicate that no relay death, dropped reply or timeout explains", () => {
    const input = clean();
    input.copies.push(copy("<a@x>"));
    const r = audit(input);
    assert.equal(r.passed, false);
    assert.equal(r.counts.dupUnexplained, 1);
  });

  it("explains duplicates by their cause and checks those from relay deaths against the bound", () => {
    const input = clean();
    input.copies.splice(0, 3, copy("<a@x>", { kind: "drop-kept" }), copy("<a@x>"), copy("<b@x>", { kind: "stall-long" }), copy("<b@x>"), copy("<c@x>"), copy("<c@x>"));
    input.rows[2] = row("<c@x>", { uncertainHandoffs: 1 });
    const r = audit(input);
    assert.equal(r.passed, true, r.failures.join("\n"));
    assert.deepEqual([r.counts.dupDropAfterData, r.counts.dupTimeoutAfterAccept, r.counts.dupRelayDied], [1, 1, 1]);
    const over = audit({ ...input, kills: [] });
    assert.equal(over.passed, false);
    assert.ok(over.failures.some((f) => f.includes("exceed the bound 0")));
  });

  it('under leaseExpiryPolicy "verify", a duplicate caused by a relay death fails the run (goal 0), whatever the kills bound', () => {
    const input = clean();
    input.copies.push(copy("<c@x>"));
    input.rows[2] = row("<c@x>", { uncertainHandoffs: 1 });
    assert.equal(audit(input).passed, true, "under resend the kill explains it");
    const r = audit({ ...input, verifyPolicy: true });
    assert.equal(r.passed, false);
    assert.equal(r.counts.dupRelayDied, 1);
    assert.ok(r.failures.some((f) => f.includes('under leaseExpiryPolicy "verify" (goal 0)')), r.failures.join("\n"));
    assert.match(r.line, /relay died 1 under verify \(goal 0\)/);
    const fine = clean();
    fine.rows[2] = row("<c@x>", { uncertainHandoffs: 1 });
    assert.equal(audit({ ...fine, verifyPolicy: true }).passed, true, "an uncertain hand-off that arrived once is fine");
  });

  it("counts a duplicate after a timeout recorded on the relay's side (the MTA had answered) separately", () => {
    const input = clean();
    input.copies.push(copy("<a@x>"));
    input.rows[0] = row("<a@x>", { timeouts: 1, attempts: 2 });
    const r = audit(input);
    assert.equal(r.passed, true, r.failures.join("\n"));
    assert.equal(r.counts.dupRelayTimeout, 1);
    assert.match(r.line, /relay-side timeout after accept 1/);
  });

  it("does not count a mail sent again only to a recipient the MTA had deferred as a duplicate", () => {
    const input = clean();
    input.copies[0] = copy("<a@x>", { recipients: ["ann@example.com"] });
    input.copies.push(copy("<a@x>", { recipients: ["bob@example.com"] }));
    const r = audit(input);
    assert.equal(r.passed, true, r.failures.join("\n"));
    assert.equal(r.counts.duplicates, 0);
    input.copies.push(copy("<a@x>", { recipients: ["bob@example.com"] }));
    assert.equal(audit(input).counts.dupUnexplained, 1);
  });

  it("counts one timeout followed by a resend split over two partial attempts as one duplicate", () => {
    const input = clean();
    input.copies[0] = copy("<a@x>", { recipients: ["ann@example.com", "bob@example.com"] }); // the relay timed out
    input.copies.push(copy("<a@x>", { recipients: ["ann@example.com"] }), copy("<a@x>", { recipients: ["bob@example.com"] })); // bob deferred once
    input.rows[0] = row("<a@x>", { timeouts: 1, attempts: 3 });
    const r = audit(input);
    assert.equal(r.passed, true, r.failures.join("\n"));
    assert.equal(r.counts.extraCopies, 1);
  });

  it("fails on a row no relay will move on (held, or pending after settling)", () => {
    const input = clean();
    input.rows[1] = row("<b@x>", { status: "held", uncertainHandoffs: 1 });
    const r = audit(input);
    assert.equal(r.passed, false);
    assert.equal(r.counts.stuck, 1);
    assert.equal(audit({ ...clean(), settled: false }).passed, false);
  });

  it("fails when a relay's memory passes the limit or keeps growing", () => {
    const input = clean();
    assert.equal(audit({ ...input, memory: [{ ...input.memory[0]!, peakRss: 900 * 2 ** 20 }] }).passed, false);
    assert.equal(audit({ ...input, memory: [{ ...input.memory[0]!, growth: 200 * 2 ** 20 }] }).passed, false);
  });

  it("resolves in-doubt commits from the table: present counts as committed, absent as rolled back", () => {
    const input = clean();
    input.ledger.inDoubt.set("<d1@x>", plan());
    input.ledger.inDoubt.set("<d2@x>", plan());
    input.rows.push(row("<d1@x>"));
    input.copies.push(copy("<d1@x>"));
    const r = audit(input);
    assert.equal(r.passed, true, r.failures.join("\n"));
    assert.equal(r.counts.committed, 4);
    input.copies.push(copy("<d2@x>"));
    assert.equal(audit(input).counts.rolledBackDelivered, 1);
  });

  it("fails when a partly refused mail is sent without its refused recipient recorded", () => {
    const input = clean();
    input.ledger.committed.set("<p@x>", plan({ refused: ["refused-1@example.com"], recipients: 2 }));
    input.rows.push(row("<p@x>", { rejected: [] }));
    input.copies.push(copy("<p@x>"));
    assert.equal(audit(input).passed, false);
    input.rows[input.rows.length - 1] = row("<p@x>", { rejected: [{ recipient: "refused-1@example.com", response: "550 5.1.1 no" }] });
    assert.equal(audit(input).passed, true);
  });
});
