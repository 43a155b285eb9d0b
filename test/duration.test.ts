/**
 * Durations and points in time as an operator types them (src/duration.ts): `--older-than 30d`,
 * `--since 2h`, `--until 2025-02-01T08:30Z`. Pure parsing, no database.
 */
import { test, describe } from "node:test";
import assert from "node:assert/strict";
import { MAX_DURATION_MS, parseDuration, parseSince } from "../src/duration.js";
import { OptionsError } from "../src/errors.js";

const NOW = new Date("2025-03-01T12:00:00Z");

function refusal(fn: () => unknown): OptionsError {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof OptionsError, `expected an OptionsError, got ${String(e)}`);
    return e;
  }
  assert.fail("expected a refusal");
}

describe("what an operator is told about a duration or time that is refused", () => {
  test("a refused duration or time names the option it was given to and shows what is expected", () => {
    assert.match(refusal(() => parseDuration("1x", "--older-than")).message, /^The --older-than value "1x" is not valid\. Expected a duration like "30d", "2h"/);
    assert.match(refusal(() => parseDuration("30m1h", "--lease")).message, /^The --lease value "30m1h" repeats a unit or puts a smaller one first\./);
    assert.match(refusal(() => parseDuration("")).message, /^The duration is empty\. Expected a duration like/);
    assert.match(refusal(() => parseSince("yesterday", NOW, "--since")).message, /^The --since value "yesterday" is neither a duration .* nor an ISO date\/time/);
    assert.match(refusal(() => parseSince("2025-02-30", NOW, "--until")).message, /^The --until value "2025-02-30" is not a real date\/time\.$/);
    assert.match(refusal(() => parseSince("   ", NOW, "--since")).message, /^The --since value is empty: give a duration back from now/);
  });

  test("a time with an impossible UTC offset is refused", () => {
    for (const bad of ["2025-02-01T08:30+24:00", "2025-02-01T08:30-05:60"]) {
      assert.match(refusal(() => parseSince(bad, NOW, "--since")).message, /has an invalid UTC offset/, bad);
    }
  });
});

describe("the durations and times that are accepted", () => {
  test("the longest duration accepted is 100 years; one millisecond more is refused", () => {
    assert.equal(MAX_DURATION_MS, 36_500 * 86_400_000);
    assert.equal(parseDuration("36500d"), MAX_DURATION_MS);
    assert.match(refusal(() => parseDuration("36500d1ms", "--older-than")).message, /is longer than 100 years/);
  });

  test("times are read as an operator types them: a space for T, lower case, offsets with or without a colon, extra fraction digits, surrounding blanks", () => {
    assert.equal(parseSince("2025-02-01 08:30", NOW).toISOString(), "2025-02-01T08:30:00.000Z");
    assert.equal(parseSince("2025-02-01t08:30z", NOW).toISOString(), "2025-02-01T08:30:00.000Z");
    assert.equal(parseSince("2025-02-01T08:30:00+0530", NOW).toISOString(), "2025-02-01T03:00:00.000Z");
    assert.equal(parseSince("2025-02-01T08:30:00-05:00", NOW).toISOString(), "2025-02-01T13:30:00.000Z");
    assert.equal(parseSince("2025-02-01T08:30:00.123456789Z", NOW).toISOString(), "2025-02-01T08:30:00.123Z");
    assert.equal(parseSince("  2h  ", NOW).toISOString(), "2025-03-01T10:00:00.000Z");
    assert.equal(parseSince("0s", NOW).toISOString(), NOW.toISOString());
  });
});

// Moved from admin.test.ts.
describe("durations and times typed by an operator", () => {
  test("durations in every unit and combined are read exactly", () => {
    assert.equal(parseDuration("30d"), 30 * 86_400_000);
    assert.equal(parseDuration("2h"), 7_200_000);
    assert.equal(parseDuration("15m"), 900_000);
    assert.equal(parseDuration("45s"), 45_000);
    assert.equal(parseDuration("500ms"), 500);
    assert.equal(parseDuration("1h30m"), 5_400_000);
    assert.equal(parseDuration("1d2h3m4s5ms"), 86_400_000 + 7_200_000 + 180_000 + 4_000 + 5);
    assert.equal(parseDuration("0s"), 0);
  });

  test("malformed, negative, exponent, out-of-order and overflowing durations are refused", () => {
    for (const bad of ["", "-1h", "1x", "1e9d", "1.5h", "h", "30", " 1h", "1h ", "1H", "30m1h", "1h1h", "99999999999999d", "36501d", "1h-", "1_000s"]) {
      assert.throws(() => parseDuration(bad), OptionsError, `should refuse ${JSON.stringify(bad)}`);
    }
  });

  test("since accepts a duration back from now or an ISO date/time, read as UTC without an offset", () => {
    const now = new Date("2025-03-01T12:00:00Z");
    assert.equal(parseSince("2h", now).toISOString(), "2025-03-01T10:00:00.000Z");
    assert.equal(parseSince("2025-02-01", now).toISOString(), "2025-02-01T00:00:00.000Z");
    assert.equal(parseSince("2025-02-01T08:30", now).toISOString(), "2025-02-01T08:30:00.000Z");
    assert.equal(parseSince("2025-02-01T08:30:15.250Z", now).toISOString(), "2025-02-01T08:30:15.250Z");
    assert.equal(parseSince("2025-02-01T08:30:00+02:00", now).toISOString(), "2025-02-01T06:30:00.000Z");
  });

  test("since refuses words, impossible dates and bare numbers", () => {
    for (const bad of ["", "yesterday", "2025-13-01", "2025-02-30", "2025-02-01T25:00", "1700000000", "-2h", "2025/02/01", "' OR 1=1 --"]) {
      assert.throws(() => parseSince(bad), OptionsError, `should refuse ${JSON.stringify(bad)}`);
    }
  });
});
