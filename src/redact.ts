/**
 * The one place that keeps secrets out of logs, messages and stored errors.
 *
 * - `redactUrl(url)`: one URL (database or transport) fit for logs: password and secret-looking
 *   query parameters replaced by `***`.
 * - `redactSecrets(text)`: free text (an MTA reply, an error message) with any `scheme://user:pass@`
 *   and `pass=` / `secret=` / `token=` values replaced by `***`.
 * - `collectSecrets(values)` / `scrubSecrets(text, secrets)`: for output that may echo a password
 *   anywhere (the CLI): the passwords found in the given URLs, then every occurrence of them.
 */

const SECRET_KEY = /pass|secret|token/i;

/**
 * A database or transport URL fit for logs and messages: the password, and the values of query
 * parameters named like `pass`, `secret` or `token`, replaced by `***`. A SQLite URL comes back as
 * written (`file:./dev.db`, not the WHATWG form `file:///dev.db`, which reads like `/dev.db`).
 * Strings that are not URLs come back unchanged.
 *
 * @example
 * redactUrl("postgresql://app:hunter2@db/prod"); // "postgresql://app:***@db/prod"
 * redactUrl("file:./dev.db"); // "file:./dev.db"
 */
export function redactUrl(url: string): string {
  if (/^file:/i.test(url)) {
    return url.replace(/\/\/([^:/@]*):([^@/]*)@/, "//$1:***@").replace(/([?&][^=&#]*(?:pass|secret|token)[^=&#]*=)[^&#]*/gi, "$1***");
  }
  try {
    const u = new URL(url);
    if (u.password) u.password = "***";
    for (const key of [...u.searchParams.keys()]) {
      if (SECRET_KEY.test(key)) u.searchParams.set(key, "***");
    }
    return u.toString();
  } catch {
    return url.replace(/\/\/([^:/@]+):([^@/]*)@/, "//$1:***@");
  }
}

/**
 * Remove credentials that may appear in free text: `scheme://user:pass@` becomes
 * `scheme://user:***@`, `pass=...` (also `password=`, `secret=`, `token=`) becomes `pass=***`.
 *
 * @example
 * redactSecrets("535 auth failed for smtp://me:hunter2@mx"); // "535 auth failed for smtp://me:***@mx"
 */
export function redactSecrets(text: string): string {
  return text
    .replace(/([a-z][a-z0-9+.-]*:\/\/[^\s:/@]*):[^\s@/]*@/gi, "$1:***@")
    .replace(/\b(pass(?:word)?|secret|token)=([^\s&]+)/gi, "$1=***");
}

/**
 * The passwords found in URLs among `values` (as written and URL-decoded) and the values of their
 * secret-looking query parameters, longest first, for {@link scrubSecrets}. Shorter than 3
 * characters are left out (they would blank out ordinary text).
 */
export function collectSecrets(values: readonly (string | undefined)[]): string[] {
  const found = new Set<string>();
  for (const v of values) {
    if (typeof v !== "string") continue;
    for (const m of v.matchAll(/:\/\/[^:/@\s]*:([^@\s]+)@/g)) {
      const p = m[1];
      if (p === undefined || p === "" || p === "***") continue;
      found.add(p);
      try {
        found.add(decodeURIComponent(p));
      } catch {
        // not percent-encoded
      }
    }
    for (const m of v.matchAll(/[?&][^=&\s]*(?:pass|secret|token)[^=&\s]*=([^&\s]+)/gi)) {
      if (m[1] !== undefined && m[1] !== "***") found.add(m[1]);
    }
  }
  return [...found].filter((s) => s.length >= 3).sort((a, b) => b.length - a.length);
}

/**
 * `text` with URLs that carry a password or a secret-looking parameter redacted (other URLs are
 * left as written) and every occurrence of `secrets` (from {@link collectSecrets}) replaced by `***`.
 */
export function scrubSecrets(text: string, secrets: readonly string[]): string {
  let s = text.replace(/\b[a-z][a-z0-9+.-]*:\/\/[^\s"'<>]+/gi, (url) =>
    /:\/\/[^/\s@]*:[^@\s]*@|[?&][^=&]*(pass|secret|token)/i.test(url) ? redactUrl(url) : url,
  );
  for (const secret of secrets) s = s.split(secret).join("***");
  return s;
}
