/**
 * JSON values: a mail's `metadata` is copied deeply as plain JSON that survives the round trip
 * through the database unchanged, or refused with a problem for each value that would not (at most
 * 20 listed).
 */
import { describe, fieldPath, isDate, isPlainObject, pollutionProblem, POLLUTION_KEYS, symbolName, unreadable } from "./plain-data.js";
import { isWellFormed } from "./text.js";
import type { JsonValue } from "./types.js";

/** `metadata` may serialise to at most this many bytes of JSON (UTF-8). */
export const MAX_METADATA_BYTES = 64 * 1024;
const MAX_METADATA_DEPTH = 64;
const MAX_METADATA_PROBLEMS = 20;

/**
 * `metadata` must be plain JSON that survives a round trip unchanged: null, booleans, finite
 * numbers, well-formed strings, arrays without holes, and plain objects. Refused, each with its
 * path: undefined (JSON would drop it silently), functions, symbols, bigint, NaN and Infinity
 * (JSON turns them into null), Dates (JSON turns them into strings: pass `date.toISOString()`),
 * other class instances (Map, Set, Buffer...), cycles, nesting deeper than 64, and the keys
 * `__proto__`, `constructor`, `prototype`. The serialised JSON may be at most 64 KiB.
 * `undefined` or `null` metadata is stored as null. The value returned is a deep copy.
 */
export function checkMetadata(value: unknown, problems: string[]): JsonValue | null {
  if (value === undefined || value === null) return null;
  const found: string[] = [];
  const copy = copyJson(value, "metadata", 0, new Set(), found);
  if (found.length > 0) {
    problems.push(...found.slice(0, MAX_METADATA_PROBLEMS));
    if (found.length > MAX_METADATA_PROBLEMS) {
      problems.push(`metadata: ${found.length - MAX_METADATA_PROBLEMS} more problems like these were found and not listed`);
    }
    return null;
  }
  const bytes = Buffer.byteLength(JSON.stringify(copy), "utf8");
  if (bytes > MAX_METADATA_BYTES) {
    problems.push(
      `metadata: serialises to ${bytes} bytes of JSON, over the limit of ${MAX_METADATA_BYTES}; keep large data in your own tables and put its id here`,
    );
    return null;
  }
  return copy;
}

/** A deep copy of `value` as JSON; each problem found goes to `found`, naming its path. */
function copyJson(value: unknown, path: string, depth: number, ancestors: Set<object>, found: string[]): JsonValue {
  if (found.length > MAX_METADATA_PROBLEMS) return null;
  if (typeof value !== "object" || value === null) return copyJsonValue(value, path, depth, ancestors, found);
  // Objects are where a getter or Proxy can throw; the innermost path that threw is named.
  try {
    return copyJsonValue(value, path, depth, ancestors, found);
  } catch (err) {
    found.push(unreadable(path, err));
    return null;
  }
}

function copyJsonValue(value: unknown, path: string, depth: number, ancestors: Set<object>, found: string[]): JsonValue {
  switch (typeof value) {
    case "string":
      if (!isWellFormed(value)) found.push(`${path}: is not well-formed UTF-16 (it has a lone surrogate)`);
      return value;
    case "boolean":
      return value;
    case "number":
      if (!Number.isFinite(value)) found.push(`${path}: ${value} is not a JSON number (JSON would store it as null)`);
      return value;
    case "undefined":
      found.push(`${path}: is undefined, which JSON drops; use null or leave the key out`);
      return null;
    case "bigint":
      found.push(`${path}: is a bigint, which JSON cannot hold; pass it as a string`);
      return null;
    case "function":
    case "symbol":
      found.push(`${path}: is a ${typeof value}, which JSON cannot hold`);
      return null;
  }
  if (value === null) return null;
  const obj = value as object;
  if (ancestors.has(obj)) {
    found.push(`${path}: refers back to one of its parents (a cycle), which JSON cannot hold`);
    return null;
  }
  if (depth >= MAX_METADATA_DEPTH) {
    found.push(`${path}: nests deeper than ${MAX_METADATA_DEPTH} levels`);
    return null;
  }
  if (isDate(obj)) {
    found.push(`${path}: is a Date, which JSON turns into a string; pass date.toISOString()`);
    return null;
  }
  ancestors.add(obj);
  try {
    if (Array.isArray(obj)) {
      const out: JsonValue[] = [];
      const length = obj.length;
      // Each element serialises to at least one byte and a comma.
      if (length > MAX_METADATA_BYTES / 2) {
        found.push(`${path}: has ${length} elements, more than fit in ${MAX_METADATA_BYTES} bytes of JSON`);
        return null;
      }
      for (let i = 0; i < length; i++) {
        if (found.length > MAX_METADATA_PROBLEMS) break;
        const desc = Object.getOwnPropertyDescriptor(obj, i);
        if (desc === undefined || !("value" in desc)) {
          found.push(`${path}[${i}]: is ${desc === undefined ? "a hole in the array" : "a getter"}; pass plain data`);
          out.push(null);
          continue;
        }
        out.push(copyJson(desc.value, `${path}[${i}]`, depth + 1, ancestors, found));
      }
      return out;
    }
    if (!isPlainObject(obj)) {
      found.push(`${path}: is ${describe(obj)}, not plain JSON; convert it to a plain object, array or string`);
      return null;
    }
    const out: { [key: string]: JsonValue } = {};
    for (const key of Reflect.ownKeys(obj)) {
      if (typeof key === "symbol") {
        found.push(`${path}: has the symbol key ${symbolName(key)}, which JSON drops`);
        continue;
      }
      const field = fieldPath(path, key);
      if (POLLUTION_KEYS.has(key)) {
        found.push(pollutionProblem(field));
        continue;
      }
      if (!isWellFormed(key)) {
        found.push(`${path}: has a key that is not well-formed UTF-16 (a lone surrogate)`);
        continue;
      }
      const desc = Object.getOwnPropertyDescriptor(obj, key);
      if (desc === undefined) continue;
      if (!("value" in desc)) {
        found.push(`${field}: is a getter or setter; pass plain data`);
        continue;
      }
      if (!desc.enumerable) continue; // JSON.stringify leaves these out as well
      // Plain assignment is safe: "__proto__" was refused above.
      out[key] = copyJson(desc.value, field, depth + 1, ancestors, found);
    }
    return out;
  } finally {
    ancestors.delete(obj);
  }
}
