/**
 * What the CLI prints as text (src/cli/format.ts), for cases test/cli.test.ts does not reach
 * through a database: long selections, long columns, durations. Pure functions, no database.
 */
import { test, describe } from "node:test";
import assert from "node:assert/strict";
import type { MailRecord, ReplayResult } from "../src/admin.js";
import { formatList, formatMs, formatReplay } from "../src/cli/format.js";

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
});
