/**
 * Metadata (src/json.ts): plain JSON that survives the round trip, or a problem naming the path.
 */
import { test } from "node:test";
import { BASE, expectRefusals, type Hostile } from "./support/mail.js";

const cyclic: Record<string, unknown> = { a: 1 };
cyclic.self = cyclic;

const METADATA: readonly Hostile[] = [
  // metadata
  { name: "a function in metadata", input: { ...BASE, metadata: { fn: () => 1 } }, expectProblemMatching: /^metadata\.fn: is a function, which JSON cannot hold/ },
  { name: "a bigint in metadata", input: { ...BASE, metadata: { id: 12n } }, expectProblemMatching: /^metadata\.id: is a bigint/ },
  { name: "undefined inside metadata", input: { ...BASE, metadata: { a: [1, undefined] } }, expectProblemMatching: /^metadata\.a\[1\]: is undefined, which JSON drops/ },
  { name: "NaN in metadata", input: { ...BASE, metadata: { n: Number.NaN } }, expectProblemMatching: /^metadata\.n: NaN is not a JSON number/ },
  { name: "a cycle in metadata", input: { ...BASE, metadata: cyclic }, expectProblemMatching: /^metadata\.self: refers back to one of its parents \(a cycle\)/ },
  { name: "a Date in metadata", input: { ...BASE, metadata: { at: new Date(0) } }, expectProblemMatching: /^metadata\.at: is a Date.*toISOString\(\)/ },
  { name: "a Map in metadata", input: { ...BASE, metadata: { m: new Map() } }, expectProblemMatching: /^metadata\.m: is a Map, not plain JSON/ },
  { name: "a lone surrogate in metadata", input: { ...BASE, metadata: { s: "\ud800" } }, expectProblemMatching: /^metadata\.s: is not well-formed UTF-16/ },
  { name: "metadata over 64 KiB", input: { ...BASE, metadata: { blob: "x".repeat(70_000) } }, expectProblemMatching: /^metadata: serialises to 70011 bytes of JSON, over the limit of 65536/ },
  { name: "a sparse metadata array of a billion elements", input: { ...BASE, metadata: { a: Object.assign([], { length: 1_000_000_000 }) } }, expectProblemMatching: /^metadata\.a: has 1000000000 elements, more than fit in 65536 bytes of JSON/ },
];

test("metadata that would not survive a JSON round trip unchanged is refused with a problem that names the path", async (t) => {
  await expectRefusals(t, METADATA);
});
