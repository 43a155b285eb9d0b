/**
 * Postfix's log lines, parsed into what `follow-log` needs (follow-log.ts): pure functions, no I/O.
 *
 * Two timestamp forms are read:
 * - syslog's `Nov 30 19:05:12 host postfix/local[6154]: ...`, as Postfix's own `maillog_file`
 *   (postlogd), classic syslog daemons and `journalctl -o short` write it: no year and no zone.
 *   The time is read in the local time zone, the year is the current one, or the one before when
 *   that would put the line more than a day in the future (a December line read in January).
 * - RFC 3339 / ISO 8601 `2026-11-30T19:05:12.123456+00:00 host postfix/...`, as rsyslog's
 *   high-precision format and `journalctl -o short-iso` (`+0000`) or `-o short-iso-precise` write it.
 *
 * The program tag is `<syslog_name>/<service>[pid]`: `postfix/smtp`, `postfix-out/smtp` (a
 * multi-instance `syslog_name`), `postfix/submission/smtpd`. Any service is read, since a
 * master.cf entry may log delivery lines under its own name.
 *
 * The lines that matter, all after `QUEUEID: `:
 * - cleanup `message-id=<...>`: links the queue id to a Message-ID (how mail from `sendmail` and
 *   pickup, which gets its queue id inside Postfix, is found);
 * - qmgr `from=<...>, size=N, nrcpt=N (queue active)`: the mail is in Postfix's queue;
 * - a delivery agent's `to=<r>, [orig_to=<o>,] relay=..., delay=..., dsn=X.Y.Z, status=sent|deferred|bounced|expired (reply)`;
 * - qmgr `from=<...>, status=expired, returned to sender`: the queue lifetime ran out;
 * - qmgr `removed`: the queue file is gone;
 * - bounce `sender non-delivery notification: NEWQUEUEID` (and the delay and success forms).
 * Every other line (connections, warnings, other programs) parses to `null`.
 */

/** A delivery agent's `status=`. */
export type PostfixDeliveryStatus = "sent" | "deferred" | "bounced" | "expired";

/** What every parsed line carries. */
export interface PostfixLineHead {
  /** When the line was logged (see the module's notes on the year and the zone of syslog lines). */
  readonly at: Date;
  readonly host: string;
  /** The part of the tag before the service: `postfix`, or a multi-instance `postfix-out`. */
  readonly syslogName: string;
  /** The daemon or master.cf service: `smtp`, `local`, `qmgr`, `cleanup`, `bounce`... */
  readonly service: string;
  readonly pid: number | null;
  readonly queueId: string;
}

/** One line of Postfix's log that follow-log acts on. */
export type PostfixLogEntry =
  /** cleanup: the Message-ID header of the mail that got this queue id, as logged (usually with `<>`). */
  | (PostfixLineHead & { readonly kind: "message-id"; readonly messageId: string })
  /** qmgr: the mail entered the active queue (once per entry: again after each deferral). */
  | (PostfixLineHead & { readonly kind: "queued"; readonly from: string; readonly size: number | null; readonly nrcpt: number | null })
  | (PostfixLineHead & {
      readonly kind: "delivery";
      /** The recipient after rewriting (`to=`). */
      readonly to: string;
      /** The recipient as it was given to Postfix (`orig_to=`), when it differs from `to`. */
      readonly origTo: string | null;
      /** `relay=`: the next hop (`mx.example.com[192.0.2.1]:25`, `local`, `none`). */
      readonly relay: string | null;
      /** `delay=` in seconds. */
      readonly delay: number | null;
      /** `dsn=`: the enhanced status code, e.g. `5.1.1`. */
      readonly dsn: string | null;
      readonly status: PostfixDeliveryStatus;
      /** The text in parentheses after the status: the remote server's reply or Postfix's reason. */
      readonly reply: string | null;
    })
  /** qmgr: the mail stayed in the queue past `maximal_queue_lifetime`; `reason` is `returned to sender`. */
  | (PostfixLineHead & { readonly kind: "expired"; readonly from: string; readonly reason: string })
  | (PostfixLineHead & { readonly kind: "removed" })
  /** bounce: a notification about this mail was queued as `notificationQueueId` (`what`: `sender non-delivery`, `sender delay`...). */
  | (PostfixLineHead & { readonly kind: "notification"; readonly what: string; readonly notificationQueueId: string });

export interface ParseOptions {
  /** The reference for the year of syslog timestamps. @default new Date() */
  readonly now?: Date;
}

const MONTHS: Readonly<Record<string, number>> = { Jan: 0, Feb: 1, Mar: 2, Apr: 3, May: 4, Jun: 5, Jul: 6, Aug: 7, Sep: 8, Oct: 9, Nov: 10, Dec: 11 };
const DAY_MS = 86_400_000;

const SYSLOG_HEAD = /^(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) {1,2}(\d{1,2}) (\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))? (\S+) (.*)$/;
const ISO_HEAD = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:[.,](\d{1,9}))?(Z|[+-]\d{2}:?\d{2})? (\S+) (.*)$/i;
/** `postfix/local[6154]: rest`: the tag must have a slash (syslog_name/service); the pid is optional. */
const TAG = /^([^\s[\]:]+)\/([^\s[\]:/]+)(?:\[(\d+)\])?: (.*)$/;
/**
 * Short queue ids are upper-case hex; long ones (`enable_long_queue_ids`) use digits and consonants.
 * Neither matches words such as `warning` or `NOQUEUE`.
 */
const QUEUE_ID = /^([0-9A-F]{5,}|[0-9BCDFGHJKLMNPQRSTVWXYZbcdfghjklmnpqrstvwxyz]{10,}): (.*)$/;

const QUEUED = /^from=<(.*)>, size=(\d+), nrcpt=(\d+) \(queue active\)$/;
const EXPIRED = /^from=<(.*)>, status=expired, (.*)$/;
const NOTIFICATION = /^((?:sender|postmaster)(?: [a-z-]+)*) notification: ([0-9A-Za-z]{5,})$/;
const DELIVERY_STATUSES: ReadonlySet<string> = new Set(["sent", "deferred", "bounced", "expired"]);

/**
 * Parse one log line (without its line break). Returns null for any line follow-log does not act
 * on, and for garbage; never throws.
 *
 * @example
 * parsePostfixLine("Nov 30 19:05:12 localhost postfix/local[6154]: 0B8E516E2E1: to=<ann@localhost>, relay=local, delay=0.13, delays=0.06/0.04/0/0.03, dsn=2.0.0, status=sent (delivered to maildir)");
 * // { kind: "delivery", queueId: "0B8E516E2E1", to: "ann@localhost", status: "sent", dsn: "2.0.0", reply: "delivered to maildir", ... }
 */
export function parsePostfixLine(line: string, options: ParseOptions = {}): PostfixLogEntry | null {
  // Postfix never logs a NUL (nor could a database text column hold one).
  if (typeof line !== "string" || line.length > 65_536 || line.includes("\u0000")) return null;
  const text = line.endsWith("\r") ? line.slice(0, -1) : line;
  const stamped = parseTimestamp(text, options.now ?? new Date());
  if (stamped === null) return null;
  const tag = TAG.exec(stamped.rest);
  if (tag === null) return null;
  const [, syslogName = "", service = "", pid, afterTag = ""] = tag;
  const q = QUEUE_ID.exec(afterTag);
  if (q === null) return null;
  const [, queueId = "", body = ""] = q;
  const head: PostfixLineHead = { at: stamped.at, host: stamped.host, syslogName, service, pid: pid === undefined ? null : Number(pid), queueId };
  return parseBody(head, body);
}

function parseBody(head: PostfixLineHead, body: string): PostfixLogEntry | null {
  if (body.startsWith("to=<")) return parseDelivery(head, body);
  if (body.startsWith("message-id=")) {
    const messageId = body.slice("message-id=".length).trim();
    return messageId === "" ? null : { ...head, kind: "message-id", messageId };
  }
  if (body === "removed") return { ...head, kind: "removed" };
  let m = QUEUED.exec(body);
  if (m !== null) return { ...head, kind: "queued", from: m[1] ?? "", size: Number(m[2]), nrcpt: Number(m[3]) };
  m = EXPIRED.exec(body);
  if (m !== null) return { ...head, kind: "expired", from: m[1] ?? "", reason: m[2] ?? "" };
  m = NOTIFICATION.exec(body);
  if (m !== null) return { ...head, kind: "notification", what: m[1] ?? "", notificationQueueId: m[2] ?? "" };
  return null;
}

/**
 * `to=<r>, orig_to=<o>, relay=R, conn_use=N, delay=D, delays=a/b/c/d, dsn=X.Y.Z, status=S (reply)`:
 * fields read by name up to `status=`, so fields added by other Postfix versions are passed over.
 */
function parseDelivery(head: PostfixLineHead, body: string): PostfixLogEntry | null {
  const fields = new Map<string, string>();
  let pos = 0;
  let status: string | null = null;
  let reply: string | null = null;
  while (pos < body.length) {
    const eq = body.indexOf("=", pos);
    if (eq < 0) return null;
    const key = body.slice(pos, eq);
    if (!/^[a-z_]+$/.test(key)) return null;
    let value: string;
    let end: number;
    if (body[eq + 1] === "<") {
      // An address: up to the `>` that ends the field (addresses may contain commas and spaces).
      const close = body.indexOf(">, ", eq + 2);
      if (close < 0) return null;
      value = body.slice(eq + 2, close);
      end = close + 1;
    } else if (key === "status") {
      const m = /^([a-z]+)(?: \((.*)\))?$/s.exec(body.slice(eq + 1));
      if (m === null) return null;
      status = m[1] ?? null;
      reply = m[2] ?? null;
      break;
    } else {
      const comma = body.indexOf(", ", eq + 1);
      end = comma < 0 ? body.length : comma;
      value = body.slice(eq + 1, end);
    }
    fields.set(key, value);
    if (end >= body.length) break;
    if (body.slice(end, end + 2) !== ", ") return null;
    pos = end + 2;
  }
  if (status === null || !DELIVERY_STATUSES.has(status)) return null;
  const to = fields.get("to");
  if (to === undefined) return null;
  const delay = fields.get("delay");
  const delaySeconds = delay !== undefined && /^\d+(\.\d+)?$/.test(delay) ? Number(delay) : null;
  return {
    ...head,
    kind: "delivery",
    to,
    origTo: fields.get("orig_to") ?? null,
    relay: fields.get("relay") ?? null,
    delay: delaySeconds,
    dsn: fields.get("dsn") ?? null,
    status: status as PostfixDeliveryStatus,
    reply,
  };
}

/** The time, host and the rest of a line in either timestamp form; null when it has neither. */
export function parseTimestamp(line: string, now: Date = new Date()): { at: Date; host: string; rest: string } | null {
  let m = SYSLOG_HEAD.exec(line);
  if (m !== null) {
    const [, mon = "", day, hh, mi, ss, frac = "", host = "", rest = ""] = m;
    const month = MONTHS[mon] ?? 0;
    const fields = [Number(day), Number(hh), Number(mi), Number(ss), Number((frac + "000").slice(0, 3))] as const;
    if (fields[0] < 1 || fields[0] > 31 || fields[1] > 23 || fields[2] > 59 || fields[3] > 60) return null;
    let year = now.getFullYear();
    let at = new Date(year, month, ...fields);
    if (at.getTime() > now.getTime() + DAY_MS) {
      year -= 1;
      at = new Date(year, month, ...fields);
    }
    // Feb 30 and the like roll over into the next month: not a real time.
    if (at.getMonth() !== month) return null;
    return { at, host, rest };
  }
  m = ISO_HEAD.exec(line);
  if (m !== null) {
    const [, y, mo, d, hh, mi, ss, frac = "", zone, host = "", rest = ""] = m;
    const parts = [Number(y), Number(mo) - 1, Number(d), Number(hh), Number(mi), Number(ss), Number((frac + "000").slice(0, 3))] as const;
    if (parts[1] > 11 || parts[2] < 1 || parts[3] > 23 || parts[4] > 59 || parts[5] > 60) return null;
    let at: Date;
    if (zone === undefined) {
      at = new Date(...parts);
    } else {
      const utc = Date.UTC(...parts);
      let offsetMin = 0;
      if (zone.toUpperCase() !== "Z") {
        const z = /^([+-])(\d{2}):?(\d{2})$/.exec(zone);
        if (z === null || Number(z[2]) > 23 || Number(z[3]) > 59) return null;
        offsetMin = (z[1] === "-" ? -1 : 1) * (Number(z[2]) * 60 + Number(z[3]));
      }
      at = new Date(utc - offsetMin * 60_000);
    }
    if (Number.isNaN(at.getTime()) || new Date(Date.UTC(...parts)).getUTCDate() !== parts[2]) return null;
    return { at, host, rest };
  }
  return null;
}

/**
 * The outbox's form of a Message-ID as cleanup logged it: trimmed, with angle brackets (the outbox
 * stores it with them; cleanup logs the header as it is, so a header without them is logged without).
 */
export function normalizeMessageId(logged: string): string {
  const id = logged.trim();
  return id.startsWith("<") && id.endsWith(">") ? id : `<${id.replace(/^<|>$/g, "")}>`;
}
