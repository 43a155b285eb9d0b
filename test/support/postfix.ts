/**
 * Helpers for tests against the local Postfix that scripts/install-postfix.sh sets up:
 * mail to `outbox-test@localhost` lands in /home/outbox-test/Maildir (one file per message),
 * and Postfix logs to /var/log/postfix.log.
 *
 * Stopping Postfix affects every test process on the machine: keep the window short and use
 * `withPostfixStopped`, which always starts it again.
 */
import { execFile } from "node:child_process";
import { closeSync, openSync, readSync, readdirSync, readFileSync, statSync } from "node:fs";
import path from "node:path";
import { promisify } from "node:util";
import { gunzipSync } from "node:zlib";
import { POSTFIX } from "./services.js";

const execFileAsync = promisify(execFile);

export const POSTFIX_LOG = process.env.POSTFIX_LOG ?? "/var/log/postfix.log";
/** A local address whose mail lands in `TEST_MAILDIR`; `outbox-test+anything@localhost` does too. */
export const TEST_ADDRESS = "outbox-test@localhost";
export const TEST_MAILDIR = process.env.OUTBOX_TEST_MAILDIR ?? "/home/outbox-test/Maildir";

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** `<id@host>` or `id@host` -> `id@host`, for comparing Message-IDs. */
function bareMessageId(messageId: string): string {
  return messageId.trim().replace(/^<|>$/g, "");
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

/** The Postfix master daemon runs (`postfix status` exits 0). */
export async function postfixRunning(): Promise<boolean> {
  try {
    await execFileAsync(POSTFIX, ["status"]);
    return true;
  } catch {
    return false;
  }
}

async function waitUntil(running: boolean, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while ((await postfixRunning()) !== running) {
    if (Date.now() > deadline) throw new Error(`Postfix did not ${running ? "start" : "stop"} within ${timeoutMs} ms; see ${POSTFIX_LOG}`);
    await sleep(50);
  }
}

/** `postfix stop`, and wait until the daemon is gone. */
export async function stopPostfix(timeoutMs = 15_000): Promise<void> {
  if (!(await postfixRunning())) return;
  await execFileAsync(POSTFIX, ["stop"]).catch(() => {});
  await waitUntil(false, timeoutMs);
}

/** `postfix start` (nothing when it runs), and wait until the daemon answers. */
export async function startPostfix(timeoutMs = 15_000): Promise<void> {
  if (await postfixRunning()) return;
  await execFileAsync(POSTFIX, ["start"]).catch(() => {});
  await waitUntil(true, timeoutMs);
}

/** Run `fn` with the Postfix daemon stopped; Postfix is started again whatever happens. */
export async function withPostfixStopped<T>(fn: () => Promise<T>): Promise<T> {
  await stopPostfix();
  try {
    return await fn();
  } finally {
    await startPostfix();
  }
}

// Maildir files never change once delivered: remember each one's Message-ID.
const headerCache = new Map<string, string | null>();

/** The first 16 KiB of a delivered mail file (its header), or null when it is gone (moved from new/ to cur/). */
export function readHead(file: string): string | null {
  try {
    const fd = openSync(file, "r");
    try {
      const buf = Buffer.alloc(16 * 1024);
      const n = readSync(fd, buf, 0, buf.length, 0);
      return buf.subarray(0, n).toString("latin1");
    } finally {
      closeSync(fd);
    }
  } catch {
    return null;
  }
}

function messageIdOfFile(file: string): string | null {
  const cached = headerCache.get(file);
  if (cached !== undefined) return cached;
  const head = readHead(file);
  if (head === null) return null; // moved from new/ to cur/ meanwhile
  const end = head.search(/\r?\n\r?\n/);
  const unfolded = (end >= 0 ? head.slice(0, end) : head).replace(/\r?\n[ \t]+/g, " ");
  const m = /^message-id:[ \t]*(.*)$/im.exec(unfolded);
  const id = m?.[1] ? bareMessageId(m[1]) : null;
  headerCache.set(file, id);
  return id;
}

/** The files in the test Maildir whose Message-ID is `messageId` (with or without angle brackets). */
export function deliveredFiles(messageId: string): string[] {
  const wanted = bareMessageId(messageId);
  const found: string[] = [];
  for (const sub of ["new", "cur"]) {
    const dir = path.join(TEST_MAILDIR, sub);
    let names: string[];
    try {
      names = readdirSync(dir);
    } catch {
      continue;
    }
    for (const name of names) {
      const file = path.join(dir, name);
      if (messageIdOfFile(file) === wanted) found.push(file);
    }
  }
  return found;
}

/**
 * Wait until a message with this Message-ID is in the test mailbox and return its raw bytes
 * (as delivered: Postfix adds Return-Path, Delivered-To and Received on top). Null after `timeoutMs`.
 */
export async function findDelivered(messageId: string, timeoutMs = 10_000): Promise<Buffer | null> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const [file] = deliveredFiles(messageId);
    if (file !== undefined) {
      try {
        return readFileSync(file);
      } catch {
        /* moved to cur/ between listing and reading: look again */
      }
    } else if (Date.now() > deadline) {
      return null;
    }
    await sleep(50);
  }
}

/** How many copies of this Message-ID are in the test mailbox now. */
export function deliveredCount(messageId: string): number {
  return deliveredFiles(messageId).length;
}

/**
 * The log as one text: the files rotated in the last 10 minutes (`postfix logrotate` renames the log
 * to `postfix.log.YYYYMMDD-HHMMSS` and gzips it; test/serial/fate-postfix.test.ts rotates it while other
 * test files may be reading), oldest first, then the current file.
 */
function readLog(): string {
  const dir = path.dirname(POSTFIX_LOG);
  const prefix = `${path.basename(POSTFIX_LOG)}.`;
  let rotated: { file: string; mtime: number }[] = [];
  try {
    rotated = readdirSync(dir)
      .filter((n) => n.startsWith(prefix))
      .map((n) => ({ file: path.join(dir, n), mtime: statSync(path.join(dir, n)).mtimeMs }))
      .filter((f) => Date.now() - f.mtime < 10 * 60_000)
      .sort((a, b) => a.mtime - b.mtime);
  } catch {
    // No listing: the current file only.
  }
  const parts = rotated.map(({ file }) => {
    try {
      const bytes = readFileSync(file);
      return (file.endsWith(".gz") ? gunzipSync(bytes) : bytes).toString("utf8");
    } catch {
      return "";
    }
  });
  try {
    parts.push(readFileSync(POSTFIX_LOG, "utf8"));
  } catch {
    // Not written yet.
  }
  return parts.join("");
}

/** The log's current size: pass it to `waitForLog` to look only at what comes after. */
export function logOffset(): number {
  try {
    return statSync(POSTFIX_LOG).size;
  } catch {
    return 0;
  }
}

/**
 * Queue ids Postfix gave to mail with this Message-ID, oldest first, from
 * `postfix/cleanup[..]: QUEUEID: message-id=<...>` lines.
 */
export function queueIdsForMessageId(messageId: string): string[] {
  const re = new RegExp(`postfix/cleanup\\[\\d+\\]: ([0-9A-Za-z]+): message-id=<?${escapeRegExp(bareMessageId(messageId))}>?\\s*$`, "gm");
  return [...readLog().matchAll(re)].map((m) => m[1]!);
}

/** Every Message-ID Postfix logged, with the queue ids it gave it (one read of the log). */
export function queueIdsByMessageId(): Map<string, string[]> {
  const out = new Map<string, string[]>();
  for (const m of readLog().matchAll(/postfix\/cleanup\[\d+\]: ([0-9A-Za-z]+): message-id=<?([^>\s]+)>?\s*$/gm)) {
    const list = out.get(m[2]!) ?? [];
    list.push(m[1]!);
    out.set(m[2]!, list);
  }
  return out;
}

/** Every log line about this queue id (`...: QUEUEID: ...`). */
export function logLinesForQueueId(queueId: string): string[] {
  return readLog()
    .split("\n")
    .filter((line) => line.includes(`: ${queueId}: `));
}

/** Wait for a log line (after byte `fromOffset`) that matches `regex`; reject after `timeoutMs`. */
export async function waitForLog(regex: RegExp, timeoutMs = 10_000, fromOffset = 0): Promise<RegExpExecArray> {
  const deadline = Date.now() + timeoutMs;
  const flags = regex.flags.replace("g", "");
  const re = new RegExp(regex.source, flags.includes("m") ? flags : `${flags}m`);
  for (;;) {
    const text = readLog();
    const m = re.exec(fromOffset > 0 ? Buffer.from(text).subarray(fromOffset).toString("utf8") : text);
    if (m) return m;
    if (Date.now() > deadline) throw new Error(`No line matching ${regex} in ${POSTFIX_LOG} within ${timeoutMs} ms`);
    await sleep(50);
  }
}
