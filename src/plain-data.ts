/**
 * Reading untrusted input without being tricked by it, and naming what was found.
 *
 * Everything the application hands to `enqueue()` is read through here: only own data properties,
 * each read once (a getter cannot answer twice); symbol keys, accessors and the keys that can change
 * an object's prototype are refused; and whatever a getter, a Proxy trap or a revoked Proxy throws
 * becomes a problem that names the field (`to[0]: reading it threw ...`), never a raw error.
 * `describe` shows a value in a problem sentence; it never throws and never prints a raw control
 * character.
 */

/** Own keys refused anywhere in a mail: copying them into an object can change its prototype. */
export const POLLUTION_KEYS = new Set(["__proto__", "constructor", "prototype"]);

/** An object literal or `Object.create(null)`: not an array, a class instance or a Date. */
export function isPlainObject(value: unknown): value is object {
  if (value === null || typeof value !== "object" || Array.isArray(value)) return false;
  const proto = Object.getPrototypeOf(value) as unknown;
  return proto === Object.prototype || proto === null;
}

/** A Date, by `instanceof` (a Proxy of a Date passes; reading its time through the intrinsic then throws). */
export function isDate(value: unknown): value is Date {
  return value instanceof Date;
}

/** An integer from `min` to `max`, both included. */
export function isIntIn(value: unknown, min: number, max: number): value is number {
  return typeof value === "number" && Number.isInteger(value) && value >= min && value <= max;
}

/**
 * Reads the own data properties of `obj` once (so a getter cannot answer twice), refusing
 * symbol keys, prototype-pollution keys, accessors and keys not in `allowed`. `undefined`
 * values count as absent.
 */
export function readOwnFields(
  obj: object,
  path: string,
  allowed: readonly string[],
  problems: string[],
  hints: Readonly<Record<string, string>> = {},
): Map<string, unknown> {
  const out = new Map<string, unknown>();
  const allowedSet = new Set(allowed);
  let keys: (string | symbol)[];
  try {
    keys = Reflect.ownKeys(obj);
  } catch (err) {
    problems.push(unreadable(path || "mail", err));
    return out;
  }
  for (const key of keys) {
    if (typeof key === "symbol") {
      problems.push(`${path || "mail"}: has the symbol key ${symbolName(key)}; only plain string keys are accepted`);
      continue;
    }
    const field = fieldPath(path, key);
    if (POLLUTION_KEYS.has(key)) {
      problems.push(pollutionProblem(field));
      continue;
    }
    if (!allowedSet.has(key)) {
      const loose = key.toLowerCase().replace(/[-_\s]/g, "");
      const near = allowed.find((a) => a.toLowerCase() === loose);
      const hint = near !== undefined ? `did you mean ${near}? ` : hints[loose] !== undefined ? `${hints[loose]}; ` : "";
      problems.push(`${field}: unknown field; ${hint}the allowed fields are ${allowed.join(", ")}`);
      continue;
    }
    const desc = guard(field, problems, undefined, () => Object.getOwnPropertyDescriptor(obj, key));
    if (desc === undefined) continue;
    if (!("value" in desc)) {
      problems.push(`${field}: is a getter or setter; pass plain data`);
      continue;
    }
    if (desc.value !== undefined) out.set(key, desc.value);
  }
  return out;
}

/**
 * `read()`, or `fallback` with a problem naming `field` when reading throws (a getter, a Proxy trap,
 * a revoked Proxy). Guards nest: the innermost one names the field most precisely.
 */
export function guard<T>(field: string, problems: string[], fallback: T, read: () => T): T {
  try {
    return read();
  } catch (err) {
    problems.push(unreadable(field, err));
    return fallback;
  }
}

/** The problem for a value that threw while it was read. */
export function unreadable(field: string, err: unknown): string {
  return `${field}: reading it threw ${describeThrown(err)}; pass plain data (no getter or Proxy that throws)`;
}

/** A short, safe rendering of a thrown value; reading it may throw again, which is caught here. */
export function describeThrown(err: unknown): string {
  try {
    if (err instanceof Error) {
      const name: unknown = err.name;
      const message: unknown = err.message;
      const shownName = typeof name === "string" && /^[A-Za-z]\w{0,40}$/.test(name) ? name : "an Error";
      return typeof message === "string" && message !== "" ? `${shownName} ${describe(message)}` : shownName;
    }
    return describe(err);
  } catch {
    return "a value that could not be inspected either";
  }
}

/** The problem for a key in `POLLUTION_KEYS`. */
export function pollutionProblem(field: string): string {
  return `${field}: the key is refused anywhere in a mail because it can change an object's prototype; rename or remove it`;
}

/** `a.b`, or `a["odd key"]` for keys that are not identifiers. */
export function fieldPath(path: string, key: string): string {
  if (/^[A-Za-z_$][\w$]*$/.test(key) && (path === "" || !POLLUTION_KEYS.has(key))) return path ? `${path}.${key}` : key;
  return `${path}[${quote(key)}]`;
}

/** `Symbol("description")`, quoted safely. */
export function symbolName(key: symbol): string {
  return `Symbol(${key.description === undefined ? "" : quote(key.description)})`;
}

/** `s` as a JSON string with DEL, the C1 controls and U+2028/U+2029 escaped as well, so it prints safely. */
export function quote(s: string): string {
  return JSON.stringify(s).replace(/[\u007f-\u009f\u2028\u2029]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
}

/**
 * A short, safe rendering of a value for a problem sentence (no raw control characters). Never throws:
 * inspecting a Proxy or a class with a throwing `name` gives a generic answer.
 */
export function describe(value: unknown): string {
  try {
    return describeUnsafe(value);
  } catch {
    return "a value that could not be inspected";
  }
}

function describeUnsafe(value: unknown): string {
  if (value === null) return "null";
  if (value === undefined) return "undefined";
  switch (typeof value) {
    case "string": {
      return quote(value.length > 80 ? `${value.slice(0, 77)}...` : value);
    }
    case "number":
    case "boolean":
      return String(value);
    case "bigint":
      return `${value}n`;
    case "function":
      return "a function";
    case "symbol":
      return "a symbol";
  }
  if (Array.isArray(value)) return "an array";
  if (isDate(value)) return "a Date";
  if (Buffer.isBuffer(value)) return "a Buffer";
  const proto = Object.getPrototypeOf(value) as { constructor?: { name?: unknown } } | null;
  const name = proto?.constructor?.name;
  if (proto === Object.prototype || proto === null) return "an object";
  return typeof name === "string" && name !== "" ? `a ${name}` : "an object";
}
