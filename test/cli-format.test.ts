/**
 * What the CLI prints as text (src/cli/format.ts), for cases test/cli.test.ts does not reach
 * through a database: long selections, long columns, durations. Pure functions, no database.
 */
import { test, describe } from "node:test";
import assert from "node:assert/strict";
import type { DeliveryEventRecord, MailDetail, MailRecord, ReplayResult, StatusReport } from "../src/admin.js";
import { recipientFates } from "../src/admin-read.js";
import { fateSummary, formatList, formatMs, formatReplay, formatShow, formatStatus, formatSuppressions } from "../src/cli/format.js";

function mail(over: Partial<MailRecord> = {}): MailRecord {
  const at = new Date("2025-03-01T12:00:00.000Z");
  return {
    id: "0195a1b2-7c3d-7e4f-8a5b-6c7d8e9f0a1b",
    messageId: "<x@example.test>",
    status: "dead",
    priority: 0,
    idempotencyKey: null,
    envelopeFrom: "app@example.test",
    envelopeTo: ["ann@example.test"],
    subject: "hello",
    size: 100,
    metadata: null,
    attempts: 5,
    maxAttempts: 5,
    sendAt: at,
    nextAttemptAt: at,
    leaseOwner: null,
    leaseExpiresAt: null,
    lastError: null,
    mtaResponse: null,
    mtaQueueId: null,
    accepted: null,
    rejected: null,
    uncertainHandoffs: 0,
    uncertain: false,
    partlyRefused: false,
    createdAt: at,
    updatedAt: at,
    sentAt: null,
    ...over,
  };
}

describe("text output for people", () => {
  test("durations are shown in their two largest units", () => {
    assert.equal(formatMs(500), "500ms");
    assert.equal(formatMs(10_000), "10s");
    assert.equal(formatMs(150_000), "2m30s");
    assert.equal(formatMs(90_061_000), "1d1h");
  });

  test("a replay of more than 100 mails lists 100 and says how many more --json lists", () => {
    const replayed = Array.from({ length: 150 }, (_, i) => ({ id: `id-${i}`, messageId: `<m${i}@example.test>`, from: "dead" as const }));
    const result: ReplayResult = { dryRun: false, matched: 150, replayed, skipped: [], notFound: [] };
    const lines = formatReplay(result, { dryRun: false, confirmed: false }).trimEnd().split("\n");
    assert.equal(lines[0], "replayed 150 mails");
    assert.equal(lines.length, 1 + 100 + 1);
    assert.equal(lines.at(-1), "  ... and 50 more (--json lists them all)");
  });

  test("a dry run that would resend sent mail says it needs --yes, until --yes is given", () => {
    const result: ReplayResult = { dryRun: true, matched: 2, replayed: [{ id: "a", messageId: "<a@x>", from: "sent" }, { id: "b", messageId: "<b@x>", from: "sent" }], skipped: [], notFound: [] };
    assert.match(formatReplay(result, { dryRun: true, confirmed: false }), /^2 of them were sent already: the replay delivers them again and needs --yes$/m);
    assert.doesNotMatch(formatReplay(result, { dryRun: true, confirmed: true }), /needs --yes/);
  });

  test("list keeps each mail on one row: a multi-line subject is joined, long recipients and subjects are clipped", () => {
    const text = formatList([mail({ subject: `first\r\n second ${"x".repeat(80)}`, envelopeTo: [`${"a".repeat(60)}@example.test`, "bob@example.test"] })], 50);
    const [header, row, ...rest] = text.trimEnd().split("\n");
    assert.match(header!, /^ID\s+STATUS\s+TRIES\s+CREATED\s+NEXT\s+TO\s+SUBJECT$/);
    assert.deepEqual(rest, []);
    const subject = row!.slice(header!.indexOf("SUBJECT"));
    assert.equal(subject.length, 50);
    assert.ok(subject.startsWith("first second x") && subject.endsWith("…"), subject);
    const to = row!.slice(header!.indexOf("TO"), header!.indexOf("SUBJECT")).trimEnd();
    assert.equal(to.length, 40);
    assert.ok(to.endsWith("…"), to);
  });

  test("show ends with what the MTA did after the hand-off: the queue id, then per recipient its fate and the events that led there", () => {
    const at = (s: number) => new Date(Date.UTC(2025, 2, 1, 12, 0, s));
    let n = 0;
    const ev = (recipient: string, event: DeliveryEventRecord["event"], s: number, over: Partial<DeliveryEventRecord> = {}): DeliveryEventRecord => ({
      id: `ev-${n++}`,
      emailId: "m",
      recipient,
      event,
      at: at(s),
      recordedAt: at(s),
      source: "log",
      queueId: null,
      dsnStatus: null,
      remoteMta: null,
      reply: null,
      eventKey: `k${n}`,
      ...over,
    });
    const base = mail({ status: "sent", envelopeTo: ["ann@example.test", "bob@example.test", "carl@example.test"], accepted: ["ann@example.test", "bob@example.test", "carl@example.test"] });
    const events = [
      ev("", "queued", 1, { queueId: "4BCD1234" }),
      ev("ann@example.test", "delivered", 2, { dsnStatus: "2.0.0", remoteMta: "mx.example.test[192.0.2.1]:25", reply: "250 2.0.0 Ok: queued as 99" }),
      ev("bob@example.test", "deferred", 3, { dsnStatus: "4.4.1", reply: "connect to mx.example.test[192.0.2.2]:25:\r\n Connection timed out" }),
      ev("bob@example.test", "bounced", 40, { source: "dsn", dsnStatus: "5.1.1", remoteMta: "dns; mx.example.test", reply: "smtp; 550 5.1.1 user unknown" }),
    ];
    const detail: MailDetail = { ...base, attemptLog: [], deliveryEvents: events, fates: recipientFates(base, events) };
    const text = formatShow(detail);
    const after = text.slice(text.indexOf("after the hand-off:"));
    assert.equal(
      after,
      [
        "after the hand-off:",
        "  2025-03-01T12:00:01.000Z  queued as 4BCD1234 by the MTA  (log)",
        "  ann@example.test   DELIVERED at 2025-03-01T12:00:02.000Z",
        "    2025-03-01T12:00:02.000Z  delivered  2.0.0  via mx.example.test[192.0.2.1]:25  250 2.0.0 Ok: queued as 99  (log)",
        "  bob@example.test   BOUNCED at 2025-03-01T12:00:40.000Z",
        "    2025-03-01T12:00:03.000Z  deferred   4.4.1  connect to mx.example.test[192.0.2.2]:25: Connection timed out  (log)",
        "    2025-03-01T12:00:40.000Z  bounced    5.1.1  via dns; mx.example.test  smtp; 550 5.1.1 user unknown  (dsn)",
        "  carl@example.test  no report yet",
        "",
      ].join("\n"),
    );
    const quiet = formatShow({ ...base, attemptLog: [], deliveryEvents: [], fates: recipientFates(base, []) });
    assert.match(quiet, /\nafter the hand-off: nothing reported yet \(`mail-outbox follow-log` and `mail-outbox ingest` record what the MTA did\)\n$/);
    const pending = mail({ status: "pending" });
    assert.doesNotMatch(formatShow({ ...pending, attemptLog: [], deliveryEvents: [], fates: recipientFates(pending, []) }), /after the hand-off/);
  });

  test("list gets a FATE column only when a listed mail has a reported fate, the bad fates first", () => {
    const one = mail({ id: "0195a1b2-0000-7000-8000-000000000001", status: "sent" });
    const two = mail({ id: "0195a1b2-0000-7000-8000-000000000002", status: "sent" });
    const f = (recipient: string, fate: "delivered" | "bounced" | null) => ({ recipient, fate, event: null, events: fate === null ? 0 : 1 });
    const fates = new Map([
      [one.id, [f("ann@example.test", "delivered"), f("bob@example.test", "bounced"), f("carl@example.test", "delivered"), f("dora@example.test", null)]],
      [two.id, [f("eve@example.test", "bounced")]],
    ]);
    const lines = formatList([one, two], 50, fates).trimEnd().split("\n");
    assert.match(lines[0]!, /^ID\s+STATUS\s+FATE\s+TRIES\s+CREATED\s+NEXT\s+TO\s+SUBJECT$/);
    assert.equal(lines[1]!.slice(lines[0]!.indexOf("FATE")).split("  ")[0], "1 bounced, 2 delivered, 1 unreported");
    assert.match(lines[2]!, /\ssent\s+bounced\s+5\/5\s/);
    assert.match(formatList([one], 50, new Map([[one.id, [f("ann@example.test", null)]]])), /^ID\s+STATUS\s+TRIES/);
    assert.equal(fateSummary([]), "-");
    assert.equal(fateSummary(undefined), "-");
  });

  test("status ends with recipients per fate after the hand-off, pointing at the listing of the bad ones", () => {
    const zero = { pending: 0, sending: 0, sent: 0, dead: 0, cancelled: 0, held: 0 };
    const report: StatusReport = {
      at: new Date("2025-03-01T12:00:00.000Z"),
      counts: { ...zero, sent: 14 },
      total: 14,
      otherStatuses: {},
      uncertain: { total: 0, byStatus: zero },
      duePending: 0,
      oldestDueAgeMs: null,
      maxDueLagMs: null,
      nextAttemptAt: null,
      expiredLeases: 0,
      fates: { delivered: 120, deferred: 3, bounced: 2, expired: 0 },
    };
    const text = formatStatus(report);
    assert.ok(
      text.endsWith(
        [
          "After the hand-off (recipients by current fate, as follow-log and ingest recorded it):",
          "  delivered  120",
          "  deferred     3  the MTA is still trying",
          "  bounced      2  see: mail-outbox list --fate bounced",
          "  expired      0",
          "",
        ].join("\n"),
      ),
      text,
    );
    const none = formatStatus({ ...report, fates: { delivered: 0, deferred: 0, bounced: 0, expired: 0 } });
    assert.ok(none.endsWith("\nAfter the hand-off: nothing recorded (`mail-outbox follow-log` and `mail-outbox ingest` record what the MTA did with each recipient)\n"), none);
  });

  test("the suppression list is a table; expired entries are marked; a full page says --limit shows more", () => {
    const now = new Date("2025-03-01T12:00:00.000Z");
    const entry = (address: string, expiresAt: Date | null) => ({ address, reason: "5.1.1 user\nunknown", source: "bounce", emailId: null, createdAt: new Date("2025-02-01T00:00:00.000Z"), expiresAt });
    const lines = formatSuppressions([entry("ann@example.test", null), entry("bob@example.test", new Date("2025-02-15T00:00:00.000Z"))], { now, limit: 2 }).trimEnd().split("\n");
    assert.match(lines[0]!, /^ADDRESS\s+SOURCE\s+CREATED\s+EXPIRES\s+REASON$/);
    assert.match(lines[1]!, /^ann@example\.test\s+bounce\s+2025-02-01T00:00:00Z\s+never\s+5\.1\.1 user unknown$/);
    assert.match(lines[2]!, /^bob@example\.test\s+bounce\s+\S+\s+2025-02-15T00:00:00Z \(expired\)\s+5\.1\.1/);
    assert.equal(lines[3], "(2 shown; --limit shows more)");
    assert.equal(formatSuppressions([], { now, limit: 10 }), "no suppressed addresses\n");
  });
});
