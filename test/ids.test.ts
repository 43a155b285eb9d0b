/**
 * Row ids and Message-IDs (src/ids.ts).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { newId, isUuid, normalizeMessageId } from "../src/ids.js";

test("row ids are UUIDv7 and increase strictly within a process", () => {
  const ids = Array.from({ length: 5000 }, () => newId());
  for (const id of ids) assert.match(id, /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  for (let i = 1; i < ids.length; i++) assert.ok((ids[i - 1] ?? "") < (ids[i] ?? ""), `ids out of order at ${i}`);
  assert.equal(isUuid(ids[0]), true);
  assert.equal(isUuid("not-a-uuid"), false);
  assert.equal(isUuid(42), false);
});

test("a Message-ID is found with or without angle brackets", () => {
  assert.equal(normalizeMessageId("abc@example.com"), "<abc@example.com>");
  assert.equal(normalizeMessageId("  <abc@example.com>\n"), "<abc@example.com>");
  assert.equal(normalizeMessageId("<abc@[192.0.2.1]>"), "<abc@[192.0.2.1]>");
  for (const bad of ["", "abc", "<abc@example.com", "abc@example.com>", "@example.com", "abc@", "a b@example.com", "<a<b@example.com>", "ä@example.com", "a\r\n@x"]) {
    assert.equal(normalizeMessageId(bad), null, JSON.stringify(bad));
  }
});
