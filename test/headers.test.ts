/**
 * Extra header fields (src/headers.ts).
 */
import { test } from "node:test";
import { RESERVED_HEADERS } from "../src/headers.js";
import { BASE, expectRefusals, type Hostile } from "./support/mail.js";

const HEADERS: readonly Hostile[] = [
  // headers
  { name: "CRLF in a header value", input: { ...BASE, headers: { "X-Note": "ok\r\nBcc: evil@evil.example" } }, expectProblemMatching: /^headers\["X-Note"\]: the value contains a line break/ },
  { name: "NUL in a header value", input: { ...BASE, headers: { "X-Note": "a\0b" } }, expectProblemMatching: /^headers\["X-Note"\]: the value contains a NUL/ },
  { name: "CRLF in a header name", input: { ...BASE, headers: { "X-A\r\nBcc": "evil@evil.example" } }, expectProblemMatching: /^headers\["X-A\\r\\nBcc"\]: the header name contains a line break/ },
  { name: "a colon in a header name", input: { ...BASE, headers: { "X-A: b": "c" } }, expectProblemMatching: /^headers\["X-A: b"\]: is not a header field name/ },
  { name: "a non-ASCII header name", input: { ...BASE, headers: { "X-Grüße": "c" } }, expectProblemMatching: /^headers\["X-Grüße"\]: is not a header field name/ },
  { name: "an empty header name", input: { ...BASE, headers: { "": "c" } }, expectProblemMatching: /^headers\[""\]: is not a header field name/ },
  { name: "a header value of the wrong type", input: { ...BASE, headers: { "X-Count": 3 } }, expectProblemMatching: /^headers\["X-Count"\]: the value must be a string, got 3/ },
  { name: "an empty header value", input: { ...BASE, headers: { "X-Empty": " " } }, expectProblemMatching: /^headers\["X-Empty"\]: the value is empty/ },
  { name: "a header word too long for a line", input: { ...BASE, headers: { "X-Token": "t".repeat(950) } }, expectProblemMatching: /^headers\["X-Token"\]: the value has a 950-character run/ },
  { name: "headers as an array", input: { ...BASE, headers: [["X-A", "b"]] }, expectProblemMatching: /^headers: must be a plain object/ },
  ...RESERVED_HEADERS.map((name, i) => {
    const spelt = i % 2 === 0 ? name.toLowerCase() : name.toUpperCase();
    return {
      name: `the composer-owned header ${spelt}`,
      input: { ...BASE, headers: { [spelt]: "x@evil.example" } },
      expectProblemMatching: new RegExp(`^headers\\[${JSON.stringify(spelt)}\\]: the composer sets this header itself`),
    };
  }),
  // C1 controls and the Unicode line and paragraph separators, wherever C0 controls are refused
  { name: "a C1 control in a header name", input: { ...BASE, headers: { "X-A\u009b": "x" } }, expectProblemMatching: /^headers\["X-A\\u009b"\]: the header name contains the control character U\+009B/ },
  { name: "a C1 control in a header value", input: { ...BASE, headers: { "X-Note": "a\u0085b" } }, expectProblemMatching: /^headers\["X-Note"\]: the value contains the control character U\+0085/ },
  { name: "U+2028 in a header value", input: { ...BASE, headers: { "X-Note": "a\u2028b" } }, expectProblemMatching: /^headers\["X-Note"\]: the value contains the Unicode line separator U\+2028/ },
];

test("a header that is not a plain name: value line, or that the composer owns, is refused with a problem that names it", async (t) => {
  await expectRefusals(t, HEADERS);
});
