/**
 * Real delivery fates from the local Postfix (scripts/install-postfix.sh), for the tests and the
 * benchmark of issue 10, and an independent reading of what Postfix logged about them.
 *
 * - `startFateDomains()`: four SMTP servers on loopback (testkit/smtp.ts) that answer 250
 *   (`delivered.<tag>.p<PORT>.test`), 451 once per message then 250 (`deferred...`), 550 at RCPT
 *   (`bounced...`) and 450 at RCPT forever (`expired...`, which Postfix gives up on after its
 *   `maximal_queue_lifetime`, 15 s here). Postfix finds each by the port in its domain (the
 *   transport table of scripts/install-postfix.sh routes `*.p<PORT>.test` for ports 20000-20999),
 *   so nothing in Postfix is changed or reloaded.
 * - `PostfixLogTail`: follows /var/log/postfix.log from now on, across `postfix logrotate`, and
 *   stamps each line with the time it was read (the log's own times have 1 s resolution).
 * - `readPostfixFates(lines)`: per Message-ID and recipient, every status Postfix logged and the
 *   current fate. This is the oracle of the tests, so it shares no code with src/fate/: a plain
 *   reading of the lines, written from Postfix's log format and nothing else.
 *
 * @example
 * ```ts
 * const tail = new PostfixLogTail().start();
 * const domains = await startFateDomains();
 * try {
 *   // ... mail to domains.address("bounced", "ann") ...
 *   const fates = readPostfixFates(tail.lines);
 *   fates.recipients.get(fateKey(messageId, domains.address("bounced", "ann")))?.fate; // "bounced"
 * } finally {
 *   await domains.close();
 *   tail.stop();
 * }
 * ```
 */
import { execFile } from "node:child_process";
import { randomUUID } from "node:crypto";
import { closeSync, copyFileSync, existsSync, fstatSync, mkdirSync, openSync, readdirSync, readFileSync, readSync, rmSync, statSync } from "node:fs";
import path from "node:path";
import { promisify } from "node:util";
import { startTestSmtp, type StartTestSmtpOptions, type TestSmtp } from "../../testkit/smtp.js";
import { POSTFIX_LOG, postfixRunning } from "./postfix.js";
import { POSTFIX } from "./services.js";

const execFileAsync = promisify(execFile);

/** The envelope sender of the fate tests: Postfix's DSNs land in `BOUNCE_MAILDIR`. */
export const BOUNCE_ADDRESS = "outbox-bounces@localhost";
export const BOUNCE_MAILDIR = process.env.OUTBOX_BOUNCE_MAILDIR ?? "/home/outbox-bounces/Maildir";
/** Postfix's queue lifetime as scripts/install-postfix.sh sets it: mail deferred this long expires. */
export const QUEUE_LIFETIME_MS = 15_000;

export type LoggedFate = "delivered" | "deferred" | "bounced" | "expired";
export type FateDomainKind = "delivered" | "deferred" | "bounced" | "expired";
export const FATE_DOMAIN_KINDS: readonly FateDomainKind[] = ["delivered", "deferred", "bounced", "expired"];

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * Null when Postfix is set up for the fate tests as scripts/install-postfix.sh does it (the
 * transport table of test ports, the 15 s queue lifetime, the bounce Maildir) and this process
 * runs as root, else what is missing.
 */
export async function fateSetupReason(): Promise<string | null> {
  let transportMaps: string;
  let lifetime: string;
  try {
    const { stdout } = await execFileAsync(POSTCONF, ["-h", "transport_maps", "maximal_queue_lifetime"]);
    [transportMaps = "", lifetime = ""] = stdout.split("\n");
  } catch (err) {
    return `postconf failed: ${(err as Error).message}`;
  }
  const missing: string[] = [];
  if (process.getuid?.() !== 0) missing.push("not running as root (the fate tests rotate Postfix's log and move files out of the bounce Maildir)");
  if (!transportMaps.includes("transport-test-ports")) missing.push(`transport_maps is "${transportMaps}" (no test ports table)`);
  if (lifetime !== `${QUEUE_LIFETIME_MS / 1000}s`) missing.push(`maximal_queue_lifetime is ${lifetime}, not ${QUEUE_LIFETIME_MS / 1000}s`);
  if (!existsSync(path.join(BOUNCE_MAILDIR, "new"))) missing.push(`${BOUNCE_MAILDIR}/new does not exist`);
  return missing.length === 0 ? null : `${missing.join("; ")}: run scripts/install-postfix.sh (as root)`;
}

const POSTCONF = "/usr/sbin/postconf";

// ---- the next hops -----------------------------------------------------------------------------

export interface FateDomains {
  /** Unique to this run: the domains are `<kind>.<tag>.p<PORT>.test`. */
  readonly tag: string;
  readonly domains: Readonly<Record<FateDomainKind, string>>;
  readonly servers: Readonly<Record<FateDomainKind, TestSmtp>>;
  /** `local@<kind>.<tag>.p<PORT>.test`. */
  address(kind: FateDomainKind, local: string): string;
  /** Stop the servers. */
  close(): Promise<void>;
}

export interface FateDomainsOptions {
  /** @default a random 8-character tag */
  readonly tag?: string;
  /**
   * Leave DSN out of the servers' EHLO, so that Postfix itself reports `relayed` to a sender that
   * asked for NOTIFY=SUCCESS (with DSN offered, the next hop would be responsible for that).
   * @default true
   */
  readonly hideDsn?: boolean;
}

/** The loopback ports Postfix routes `*.p<PORT>.test` to (scripts/install-postfix.sh, TEST_PORT_FIRST/LAST). */
export const TEST_PORTS = { first: 20_000, last: 20_999 } as const;

/** A test SMTP server on a free port of `TEST_PORTS`. */
async function startInRange(options: StartTestSmtpOptions): Promise<TestSmtp> {
  const size = TEST_PORTS.last - TEST_PORTS.first + 1;
  let lastError: unknown;
  for (let i = 0; i < 50; i++) {
    const port = TEST_PORTS.first + Math.floor(Math.random() * size);
    try {
      return await startTestSmtp({ ...options, port });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EADDRINUSE") throw err;
      lastError = err;
    }
  }
  throw new Error(`no free port in ${TEST_PORTS.first}-${TEST_PORTS.last} after 50 tries`, { cause: lastError });
}

/**
 * Start the four next hops, on ports of `TEST_PORTS`. Postfix routes them by the port in their
 * domain (the transport table of scripts/install-postfix.sh: `.p<PORT>.test` ->
 * `smtp:[127.0.0.1]:<PORT>`), so nothing in Postfix changes and mail may be sent to them at once.
 */
export async function startFateDomains(options: FateDomainsOptions = {}): Promise<FateDomains> {
  const tag = options.tag ?? randomUUID().replace(/-/g, "").slice(0, 8);
  const hideDsn = options.hideDsn ?? true;
  const deferredOnce = new Set<string>();
  const servers: Record<FateDomainKind, TestSmtp> = {
    delivered: await startInRange({ hideDsn }),
    deferred: await startInRange({
      hideDsn,
      faults: (ctx) => {
        if (ctx.phase !== "data" || !ctx.messageId || deferredOnce.has(ctx.messageId)) return undefined;
        deferredOnce.add(ctx.messageId);
        return { reply: 451, message: "4.3.0 Try again in a moment (deferred once)" };
      },
    }),
    bounced: await startInRange({ hideDsn, faults: (ctx) => (ctx.phase === "rcpt" ? { reply: 550, message: "5.1.1 No such user here (bounced)" } : undefined) }),
    expired: await startInRange({ hideDsn, faults: (ctx) => (ctx.phase === "rcpt" ? { reply: 450, message: "4.2.1 Mailbox busy, try later (expires)" } : undefined) }),
  };
  const domains = Object.fromEntries(FATE_DOMAIN_KINDS.map((k) => [k, `${k}.${tag}.p${servers[k].port}.test`])) as Record<FateDomainKind, string>;
  let closed = false;
  return {
    tag,
    domains,
    servers,
    address: (kind, local) => `${local}@${domains[kind]}`,
    async close() {
      if (closed) return;
      closed = true;
      await Promise.all(FATE_DOMAIN_KINDS.map((k) => servers[k].close()));
    },
  };
}

/**
 * `postqueue -f`: ask Postfix to attempt every queued mail now. After a `postfix reload` (which
 * `postfix logrotate` does too) a mail that was being delivered at that moment is left in the
 * incoming queue for 60 s, until new mail or a flush wakes the queue manager (Postfix's qmgr:
 * "skipped, still being delivered"); a test that rotates the log flushes while it waits.
 */
export async function flushQueue(): Promise<void> {
  await execFileAsync(POSTQUEUE, ["-f"]);
}

const POSTQUEUE = "/usr/sbin/postqueue";

/**
 * Run `postfix <args>` (reload, logrotate) once Postfix runs: another test file may have stopped it
 * for a moment (test/serial/postfix.test.ts does), and both commands fail while it is stopped. Tries
 * again until `timeoutMs`.
 */
export async function postfixCommand(args: readonly string[], timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      if (await postfixRunning()) {
        await execFileAsync(POSTFIX, [...args]);
        return;
      }
    } catch (err) {
      if (Date.now() > deadline) throw err;
    }
    if (Date.now() > deadline) throw new Error(`postfix ${args.join(" ")}: Postfix did not run within ${timeoutMs} ms`);
    await sleep(100);
  }
}

/** `flushQueue()` every `intervalMs` until the returned function is called. */
export function keepFlushing(intervalMs = 2000): () => void {
  const timer = setInterval(() => void flushQueue().catch(() => {}), intervalMs);
  return () => clearInterval(timer);
}

// ---- following the log ---------------------------------------------------------------------------

/** One line of the log, with the time it was read (ms since the epoch). */
export interface TailLine {
  readonly text: string;
  readonly arrivedAt: number;
}

/**
 * Follows Postfix's log from the moment `start()` is called, polling every `intervalMs`. A rotation
 * (the path now names another file: `postfix logrotate` renames it, and gzips it a second later) is
 * followed: the old file, still open, is read to its end, then the new one from its start.
 * `arrivedAt` is when the poll read the line: at most `intervalMs` after Postfix wrote it.
 */
export class PostfixLogTail {
  readonly lines: TailLine[] = [];
  /** Rotations seen. */
  rotations = 0;
  private fd: number | null = null;
  private ino = 0;
  private offset = 0;
  private partial = "";
  private timer: NodeJS.Timeout | null = null;

  constructor(
    readonly path: string = POSTFIX_LOG,
    private readonly intervalMs = 20,
  ) {}

  /** Start at the log's current end. */
  start(): this {
    this.open(true);
    this.timer = setInterval(() => this.poll(), this.intervalMs);
    this.timer.unref();
    return this;
  }

  private open(atEnd: boolean): void {
    const fd = openSync(this.path, "r");
    const st = fstatSync(fd);
    this.fd = fd;
    this.ino = st.ino;
    this.offset = atEnd ? st.size : 0;
    this.partial = "";
  }

  private drain(): void {
    if (this.fd === null) return;
    const buf = Buffer.alloc(1 << 16);
    for (;;) {
      const n = readSync(this.fd, buf, 0, buf.length, this.offset);
      if (n <= 0) break;
      this.offset += n;
      const now = Date.now();
      const text = this.partial + buf.subarray(0, n).toString("utf8");
      const parts = text.split("\n");
      this.partial = parts.pop() ?? "";
      for (const line of parts) if (line) this.lines.push({ text: line, arrivedAt: now });
    }
  }

  /** Read what was appended since the last poll (also called by the timer). */
  poll(): void {
    this.drain();
    let pathIno: number | null = null;
    try {
      pathIno = statSync(this.path).ino;
    } catch {
      return; // renamed, the new file not created yet: keep reading the old one
    }
    if (pathIno !== this.ino) {
      this.drain();
      if (this.fd !== null) closeSync(this.fd);
      this.rotations += 1;
      this.open(false);
      this.drain();
    }
  }

  /** Poll until `predicate(lines)` holds; reject after `timeoutMs`. */
  async waitFor(predicate: (lines: readonly TailLine[]) => boolean, timeoutMs: number, what = "the condition"): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      this.poll();
      if (predicate(this.lines)) return;
      if (Date.now() > deadline) throw new Error(`${this.path}: waited ${timeoutMs} ms for ${what}`);
      await sleep(this.intervalMs);
    }
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    this.poll();
    if (this.fd !== null) closeSync(this.fd);
    this.fd = null;
  }
}

// ---- the oracle: what Postfix logged, per Message-ID and recipient ----------------------------

/** One status Postfix logged for a recipient. */
export interface LoggedEvent {
  readonly fate: LoggedFate;
  /** The line's own time (1 s resolution, the machine's local time). */
  readonly at: Date;
  /** When the tail read it (the line's time when read from a string). */
  readonly arrivedAt: number;
  readonly queueId: string;
  readonly dsn: string | null;
  readonly relay: string | null;
  /** The text in parentheses after the status. */
  readonly reply: string | null;
  readonly line: string;
}

export interface LoggedRecipient {
  /** With angle brackets, as the outbox stores it. */
  readonly messageId: string;
  /** `orig_to` when Postfix logged one, else `to`; lower-cased. */
  readonly recipient: string;
  /** Every status, in log order. */
  readonly events: LoggedEvent[];
  /** The latest terminal event (delivered, bounced, expired), else the latest `deferred`. */
  readonly final: LoggedEvent;
  readonly fate: LoggedFate;
  /** Postfix sent a "delayed mail" DSN for its queue file while this recipient was deferred. */
  readonly delayNotified: boolean;
}

export interface PostfixFates {
  /** By `fateKey(messageId, recipient)`. */
  readonly recipients: Map<string, LoggedRecipient>;
  /** Queue ids per Message-ID, from `cleanup` lines, with the time qmgr took each into the active queue. */
  readonly queued: Map<string, { readonly queueId: string; readonly at: Date }[]>;
  /** Status lines whose queue id had no `cleanup` line among the lines read. */
  readonly unlinked: number;
  /** Queue ids whose queue file Postfix removed (`qmgr: QID: removed`): nothing more is logged for them. */
  readonly removed: Set<string>;
  /** The DSNs Postfix queued for each mail (`bounce: QID: sender ... notification: NEWID`), and whether each was delivered yet. */
  readonly notifications: Map<string, { readonly kind: string; readonly queueId: string; readonly delivered: boolean }[]>;
}

/** The key of `readPostfixFates().recipients`. */
export function fateKey(messageId: string, recipient: string): string {
  return `${messageId}\n${recipient.toLowerCase()}`;
}

const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
// "Nov 30 19:11:53 localhost postfix/smtp[9655]: A628916E2E3: rest"
const LINE = /^(\w{3}) +(\d{1,2}) (\d\d):(\d\d):(\d\d) \S+ postfix(?:\/[\w.-]+)*\/([\w-]+)\[\d+\]: ([0-9A-Za-z]+): (.*)$/;
const STATUS = /^to=<([^>]*)>, (?:orig_to=<([^>]*)>, )?relay=([^,]+), .*?\bdsn=(\d\.\d{1,3}\.\d{1,3}), status=(sent|deferred|bounced|expired) (?:\((.*)\))?$/;
const DELIVERY_AGENTS = new Set(["smtp", "lmtp", "local", "virtual", "pipe", "error", "retry", "discard"]);

/** The syslog time of a line, in the machine's time zone, in the year that puts it nearest to `now`. */
function syslogTime(mon: string, day: string, h: string, m: string, s: string, now: Date): Date {
  const month = MONTHS.indexOf(mon);
  const at = new Date(now.getFullYear(), month, Number(day), Number(h), Number(m), Number(s));
  if (at.getTime() - now.getTime() > 86_400_000) at.setFullYear(at.getFullYear() - 1);
  return at;
}

const bracketed = (id: string) => (id.startsWith("<") ? id : `<${id}>`);

/**
 * Read Postfix's log lines (from a `PostfixLogTail`, or plain strings) into the fate of every
 * recipient of every mail whose `cleanup` line is among them. Postfix reuses queue ids, so a queue
 * id means the mail of the latest `cleanup` line before it.
 */
export function readPostfixFates(lines: readonly (TailLine | string)[], now = new Date()): PostfixFates {
  const messageIdOf = new Map<string, string>();
  const byKey = new Map<string, { messageId: string; recipient: string; events: LoggedEvent[]; delayNotified: boolean }>();
  const keysOfQueueId = new Map<string, Set<string>>();
  const queued = new Map<string, { queueId: string; at: Date }[]>();
  const notified: { messageId: string; kind: string; queueId: string }[] = [];
  const sentQueueIds = new Set<string>();
  const removed = new Set<string>();
  let unlinked = 0;

  const record = (queueId: string, messageId: string, recipient: string, event: LoggedEvent) => {
    const key = fateKey(messageId, recipient);
    let entry = byKey.get(key);
    if (!entry) byKey.set(key, (entry = { messageId, recipient: recipient.toLowerCase(), events: [], delayNotified: false }));
    entry.events.push(event);
    let keys = keysOfQueueId.get(queueId);
    if (!keys) keysOfQueueId.set(queueId, (keys = new Set()));
    keys.add(key);
  };
  const lastOf = (key: string) => byKey.get(key)?.events.at(-1);

  for (const item of lines) {
    const text = typeof item === "string" ? item : item.text;
    const m = LINE.exec(text);
    if (!m) continue;
    const [, mon, day, hh, mm, ss, program, queueId, rest] = m as unknown as [string, string, string, string, string, string, string, string, string];
    const at = syslogTime(mon, day, hh, mm, ss, now);
    const arrivedAt = typeof item === "string" ? at.getTime() : item.arrivedAt;

    if (program === "cleanup") {
      const mid = /^message-id=(\S+)\s*$/.exec(rest);
      if (mid) {
        messageIdOf.set(queueId, bracketed(mid[1]!));
        keysOfQueueId.delete(queueId);
        removed.delete(queueId);
      }
      continue;
    }
    const messageId = messageIdOf.get(queueId);
    if (program === "qmgr") {
      if (messageId === undefined) continue;
      if (rest === "removed") {
        removed.add(queueId);
      } else if (/^from=<[^>]*>, size=\d+, nrcpt=\d+ \(queue active\)$/.test(rest)) {
        const list = queued.get(messageId) ?? [];
        if (!list.some((q) => q.queueId === queueId)) list.push({ queueId, at });
        queued.set(messageId, list);
      } else if (/^from=<[^>]*>, status=expired, returned to sender$/.test(rest)) {
        // Every recipient of this queue file still deferred has expired.
        for (const key of keysOfQueueId.get(queueId) ?? []) {
          const last = lastOf(key);
          if (last?.fate !== "deferred" || last.queueId !== queueId) continue;
          const entry = byKey.get(key)!;
          record(queueId, messageId, entry.recipient, { fate: "expired", at, arrivedAt, queueId, dsn: last.dsn, relay: last.relay, reply: last.reply, line: text });
        }
      }
      continue;
    }
    if (program === "bounce") {
      const n = /^sender (.+) notification: ([0-9A-Za-z]+)$/.exec(rest);
      if (messageId !== undefined && n) {
        notified.push({ messageId, kind: n[1]!, queueId: n[2]! });
        if (n[1] === "delay") for (const key of keysOfQueueId.get(queueId) ?? []) if (lastOf(key)?.fate === "deferred") byKey.get(key)!.delayNotified = true;
      }
      continue;
    }
    if (!DELIVERY_AGENTS.has(program)) continue;
    const s = STATUS.exec(rest);
    if (!s) continue;
    if (s[5] === "sent") sentQueueIds.add(queueId);
    if (messageId === undefined) {
      unlinked += 1;
      continue;
    }
    const [, to, origTo, relay, dsn, status, reply] = s;
    const fate: LoggedFate = status === "sent" ? "delivered" : (status as LoggedFate);
    record(queueId, messageId, origTo || to!, { fate, at, arrivedAt, queueId, dsn: dsn ?? null, relay: relay ?? null, reply: reply ?? null, line: text });
  }

  const recipients = new Map<string, LoggedRecipient>();
  for (const [key, entry] of byKey) {
    const terminal = entry.events.filter((e) => e.fate !== "deferred");
    const final = terminal.at(-1) ?? entry.events.at(-1)!;
    recipients.set(key, { ...entry, final, fate: final.fate });
  }
  const notifications = new Map<string, { kind: string; queueId: string; delivered: boolean }[]>();
  for (const n of notified) {
    const list = notifications.get(n.messageId) ?? [];
    list.push({ kind: n.kind, queueId: n.queueId, delivered: sentQueueIds.has(n.queueId) });
    notifications.set(n.messageId, list);
  }
  return { recipients, queued, unlinked, notifications, removed };
}

/**
 * Postfix is done with this mail: it logged a status for each of `recipients` (terminal ones), removed
 * every queue file of it, and delivered every DSN it sent about it. Nothing more will be logged.
 */
export function settled(fates: PostfixFates, messageId: string, recipients: readonly string[]): boolean {
  for (const r of recipients) {
    const entry = fates.recipients.get(fateKey(messageId, r));
    if (!entry || entry.fate === "deferred") return false;
  }
  const queued = fates.queued.get(messageId) ?? [];
  if (queued.length === 0 || !queued.every((q) => fates.removed.has(q.queueId))) return false;
  return (fates.notifications.get(messageId) ?? []).every((n) => n.delivered);
}

/**
 * Copy the DSNs about `messageIds` (found by the Message-ID in their returned headers) from the
 * bounce Maildir into a Maildir of the caller's (`dir`/new), so that `ingest` reads this run's
 * reports only: the bounce Maildir is shared by every test on the machine. With `move`, they are
 * taken out of the bounce Maildir (so it does not fill up). Returns how many.
 */
export function collectReports(messageIds: Iterable<string>, dir: string, options: { readonly move?: boolean; readonly from?: string } = {}): number {
  const from = options.from ?? BOUNCE_MAILDIR;
  const wanted = new Set(messageIds);
  for (const sub of ["new", "cur", "tmp"]) mkdirSync(path.join(dir, sub), { recursive: true });
  let copied = 0;
  for (const sub of ["new", "cur"]) {
    let names: string[] = [];
    try {
      names = readdirSync(path.join(from, sub));
    } catch {
      continue;
    }
    for (const name of names) {
      let text: string;
      try {
        text = readFileSync(path.join(from, sub, name), "latin1");
      } catch {
        continue; // moved meanwhile
      }
      const ids = text.match(/^message-id:[ \t]*(<[^>\s]+>)/gim)?.map((h) => h.replace(/^message-id:[ \t]*/i, "")) ?? [];
      if (!ids.some((id) => wanted.has(id))) continue;
      const target = path.join(dir, "new", name.split(":")[0]!);
      if (existsSync(target)) continue;
      copyFileSync(path.join(from, sub, name), target);
      if (options.move) rmSync(path.join(from, sub, name), { force: true });
      copied += 1;
    }
  }
  return copied;
}

// ---- comparing what the outbox recorded with what Postfix logged ------------------------------

/** The recorded events the comparison reads (`Store.listDeliveryEvents` / `deliveryEventsAfter` rows). */
export interface RecordedFateEvent {
  readonly messageId: string;
  readonly recipient: string;
  readonly event: "queued" | LoggedFate;
  readonly at: Date;
  readonly source: "log" | "dsn";
  readonly queueId: string | null;
  readonly dsnStatus: string | null;
}

/** A mail the outbox handed over, and the recipients whose fate Postfix decides (not refused at RCPT). */
export interface ExpectedMail {
  readonly messageId: string;
  readonly recipients: readonly string[];
}

export interface FateComparison {
  /** Recipients compared. */
  readonly checked: number;
  readonly matched: number;
  /** Recipients with a fate in Postfix's log and none recorded (or, for DSNs, none where one was due). */
  readonly unmatched: string[];
  /** Recipients whose recorded fate differs from the log, and events recorded that the log does not have. */
  readonly wrong: string[];
}

/** The current fate of a recipient from its events, as the design defines it: the latest terminal one, else deferred. */
export function currentFate(events: readonly { readonly event: string; readonly at: Date }[]): { fate: LoggedFate; at: Date } | null {
  const fates = events.filter((e) => e.event !== "queued").sort((a, b) => a.at.getTime() - b.at.getTime());
  const terminal = fates.filter((e) => e.event !== "deferred");
  const last = terminal.at(-1) ?? fates.at(-1);
  return last ? { fate: last.event as LoggedFate, at: last.at } : null;
}

function groupByRecipient(events: readonly RecordedFateEvent[], source: "log" | "dsn"): Map<string, RecordedFateEvent[]> {
  const out = new Map<string, RecordedFateEvent[]>();
  for (const e of events) {
    if (e.source !== source || e.event === "queued") continue;
    const key = fateKey(e.messageId, e.recipient);
    const list = out.get(key) ?? [];
    list.push(e);
    out.set(key, list);
  }
  return out;
}

/**
 * The fates `follow-log` recorded (source `log`) against Postfix's log, one to one: per recipient the
 * current fate, its time (the line's second) and its DSN code; and every status line of the log as
 * exactly one event (no line lost, none twice); and each mail's `queued` events are exactly the
 * queue files Postfix made of that Message-ID.
 */
export function compareLogFates(mails: readonly ExpectedMail[], logged: PostfixFates, recorded: readonly RecordedFateEvent[]): FateComparison {
  const byKey = groupByRecipient(recorded, "log");
  const expectedKeys = new Set<string>();
  const unmatched: string[] = [];
  const wrong: string[] = [];
  let checked = 0;
  let matched = 0;
  for (const mail of mails) {
    for (const recipient of mail.recipients) {
      const key = fateKey(mail.messageId, recipient);
      expectedKeys.add(key);
      checked += 1;
      const want = logged.recipients.get(key);
      const got = byKey.get(key) ?? [];
      const label = `${mail.messageId} ${recipient}`;
      if (!want) {
        unmatched.push(`${label}: no status in Postfix's log`);
        continue;
      }
      const fate = currentFate(got);
      if (!fate) {
        unmatched.push(`${label}: Postfix logged ${want.fate}, nothing recorded`);
        continue;
      }
      const lastOfFate = [...got].reverse().find((e) => e.event === fate.fate);
      const problems: string[] = [];
      if (fate.fate !== want.fate) problems.push(`fate ${fate.fate}, logged ${want.fate}`);
      if (Math.floor(fate.at.getTime() / 1000) !== Math.floor(want.final.at.getTime() / 1000)) problems.push(`at ${fate.at.toISOString()}, logged ${want.final.at.toISOString()}`);
      // (an expiry is qmgr's line, which has no dsn=: its code is the last deferral's, recorded or not)
      if (want.fate !== "expired" && lastOfFate && lastOfFate.dsnStatus !== want.final.dsn) problems.push(`dsn ${lastOfFate.dsnStatus}, logged ${want.final.dsn}`);
      // Every status line once: the same fates at the same seconds, as many times.
      const sig = (xs: readonly { fate?: string; event?: string; at: Date }[]) =>
        xs.map((x) => `${x.fate ?? x.event}@${Math.floor(x.at.getTime() / 1000)}`).sort().join(",");
      if (sig(want.events) !== sig(got)) problems.push(`events [${sig(got)}], logged [${sig(want.events)}]`);
      if (problems.length > 0) wrong.push(`${label}: ${problems.join("; ")}`);
      else matched += 1;
    }
  }
  for (const key of byKey.keys()) if (!expectedKeys.has(key)) wrong.push(`${key.replace("\n", " ")}: recorded, but not a recipient Postfix decided on`);
  for (const e of recorded) {
    if (e.source !== "log" || e.event !== "queued") continue;
    const ids = logged.queued.get(e.messageId)?.map((q) => q.queueId) ?? [];
    if (!ids.includes(e.queueId ?? "")) wrong.push(`${e.messageId}: queued as ${e.queueId}, Postfix queued it as ${ids.join(", ") || "nothing"}`);
  }
  // Each queue file Postfix made of a mail is recorded as `queued` (the proof the `verify` policy reads).
  for (const mail of mails) {
    const got = new Set(recorded.filter((e) => e.source === "log" && e.event === "queued" && e.messageId === mail.messageId).map((e) => e.queueId));
    for (const q of logged.queued.get(mail.messageId) ?? []) if (!got.has(q.queueId)) unmatched.push(`${mail.messageId}: Postfix queued it as ${q.queueId}, no queued event`);
  }
  return { checked, matched, unmatched, wrong };
}

/**
 * The fates `ingest` recorded from Postfix's DSNs (source `dsn`) against its log. Postfix sends a
 * report for a bounced or expired recipient always (NOTIFY=FAILURE), for a delivered one only when
 * `success` was asked (NOTIFY=SUCCESS; `relayed` to a next hop without DSN), and a "delayed" one
 * when a recipient was still deferred after delay_warning_time (logged as `sender delay
 * notification`): so a recorded `deferred` is right only where the log shows that notification.
 */
export function compareDsnFates(mails: readonly ExpectedMail[], logged: PostfixFates, recorded: readonly RecordedFateEvent[], options: { readonly success: boolean }): FateComparison {
  const byKey = groupByRecipient(recorded, "dsn");
  const expectedKeys = new Set<string>();
  const unmatched: string[] = [];
  const wrong: string[] = [];
  let checked = 0;
  let matched = 0;
  for (const mail of mails) {
    for (const recipient of mail.recipients) {
      const key = fateKey(mail.messageId, recipient);
      expectedKeys.add(key);
      checked += 1;
      const want = logged.recipients.get(key);
      const got = byKey.get(key) ?? [];
      const label = `${mail.messageId} ${recipient}`;
      if (!want) {
        unmatched.push(`${label}: no status in Postfix's log`);
        continue;
      }
      const fate = currentFate(got);
      const reported = want.fate === "bounced" || want.fate === "expired" || (want.fate === "delivered" && options.success);
      const problems: string[] = [];
      if (got.some((e) => e.event === "deferred") && !want.delayNotified) problems.push("deferred recorded, but Postfix sent no delay notification");
      if (reported) {
        if (!fate || fate.fate === "deferred") {
          unmatched.push(`${label}: Postfix logged ${want.fate}, no report recorded`);
          continue;
        }
        if (fate.fate !== want.fate) problems.push(`fate ${fate.fate}, logged ${want.fate}`);
        const last = [...got].reverse().find((e) => e.event === fate.fate);
        if (want.fate !== "delivered" && last && last.dsnStatus !== want.final.dsn) problems.push(`status ${last.dsnStatus}, logged dsn=${want.final.dsn}`);
      } else if (fate && fate.fate !== "deferred") {
        problems.push(`recorded ${fate.fate}, but Postfix sends no report for ${want.fate} here`);
      }
      if (problems.length > 0) wrong.push(`${label}: ${problems.join("; ")}`);
      else matched += 1;
    }
  }
  for (const key of byKey.keys()) if (!expectedKeys.has(key)) wrong.push(`${key.replace("\n", " ")}: recorded from a report, but not a recipient Postfix decided on`);
  return { checked, matched, unmatched, wrong };
}
