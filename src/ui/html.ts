/**
 * HTML by tagged template: every interpolation is escaped unless it is a {@link SafeHtml} made by
 * `html` itself or by an explicit `raw()`. Mail content is written by strangers (subjects, names,
 * filenames, MTA replies), so the safe way is the default and the unsafe one has a name to grep for.
 *
 * @example
 * html`<td>${mail.subject}</td>`; // "<script>" comes out as "&lt;script&gt;"
 * html`<ul>${items.map((i) => html`<li>${i}</li>`)}</ul>`; // arrays are joined, each part escaped
 */

/** A fragment that is HTML already (made by `html` or `raw`): interpolated as it is. */
export class SafeHtml {
  constructor(readonly value: string) {}
  toString(): string {
    return this.value;
  }
}

const ESCAPES: Readonly<Record<string, string>> = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;", "`": "&#96;" };

/** Text made safe for an element's content and for a quoted attribute value. */
export function escapeHtml(text: string): string {
  return text.replace(/[&<>"'`]/g, (c) => ESCAPES[c] ?? c);
}

/** Any value as escaped HTML: null, undefined and false are empty; arrays are joined; SafeHtml passes. */
function render(value: unknown): string {
  if (value instanceof SafeHtml) return value.value;
  if (value === null || value === undefined || value === false) return "";
  if (Array.isArray(value)) return value.map(render).join("");
  return escapeHtml(String(value));
}

/** The tagged template: literal parts as written, every interpolation escaped (see the module's doc). */
export function html(strings: TemplateStringsArray, ...values: readonly unknown[]): SafeHtml {
  let out = strings[0] ?? "";
  for (let i = 0; i < values.length; i++) out += render(values[i]) + (strings[i + 1] ?? "");
  return new SafeHtml(out);
}

/** Trusted HTML, interpolated unescaped. Only for fragments this code built itself (an SVG chart from numbers). */
export function raw(trusted: string): SafeHtml {
  return new SafeHtml(trusted);
}
