/**
 * `followLog()` on real SQLite and PostgreSQL stores: synthetic Postfix logs written by the test
 * for mail the test enqueued, read to the end (`once`) or followed while written; a restart at any
 * line, rename rotation and copytruncate while running and while stopped, a database outage
 * (SQLite: another connection holding the write lock; PostgreSQL: its connection cut and back), and
 * journald lines on a stream. Every test counts the events stored per mail and recipient against
 * what the log says: 0 lost, 0 doubled. The last test reads the real Postfix log after `sendmail`.
 */
import { describe, it, after } from "node:test";
import type { TestContext } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { readdirSync, readlinkSync } from "node:fs";
import { appendFile, copyFile, mkdtemp, readFile, rename, rm, stat, truncate, unlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { PassThrough } from "node:stream";
import { randomUUID } from "node:crypto";
import Database from "better-sqlite3";
import { Registry } from "prom-client";
import { openDatabase, type Db } from "../src/db.js";
import { mailOutbox } from "../src/extension.js";
import { EventEmitter } from "node:events";
import { main } from "../src/cli/main.js";
import { followLog, type FollowLogCounts, type FollowLogOptions } from "../src/fate/follow-log.js";
import type { FateEvent } from "../src/fate/watch.js";
import { freshPostgres, freshSqlite, prismaClientFor, sqliteOf } from "./support/db.js";
import { startProxy, type Proxy } from "./support/tcp-proxy.js";
import { PG_ADMIN_URL, POSTFIX_SENDMAIL, needPostfix, needPostgres } from "./support/services.js";
import { POSTFIX_LOG } from "./support/postfix.js";

const quiet = { logger: false as const };

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function waitFor(what: string, cond: () => boolean | Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

// ---------------------------------------------------------------------------------------------
// Mail and the log lines Postfix would write for it

interface TestMail {
  readonly id: string;
  readonly messageId: string;
  readonly queueId: string;
  readonly to: readonly string[];
  /** The lines Postfix logs for it, in order. */
  readonly lines: readonly string[];
  /** What follow-log must store: `event recipient`, sorted. */
  readonly expected: readonly string[];
}

const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
/** Syslog's stamp (local time, no year) or RFC 3339 (journalctl -o short-iso). */
function stamp(at: Date, form: "syslog" | "iso"): string {
  if (form === "iso") return at.toISOString().replace(/\.\d{3}Z$/, "+0000");
  const p = (n: number) => String(n).padStart(2, "0");
  return `${MONTHS[at.getMonth()]} ${String(at.getDate()).padStart(2, " ")} ${p(at.getHours())}:${p(at.getMinutes())}:${p(at.getSeconds())}`;
}

let queueCounter = 0x100000 + Math.floor(Math.random() * 0xe00000);
function nextQueueId(): string {
  queueCounter += 1;
  return `${queueCounter.toString(16).toUpperCase()}A${Math.floor(Math.random() * 16).toString(16).toUpperCase()}`;
}

/**
 * The log of one mail to ok@ and other@, in one of four shapes by `i`: the second recipient
 * bounced (5.1.1); deferred then delivered; delivered under a rewritten address (orig_to); or
 * deferred until the queue lifetime ran out (qmgr's expiry line).
 */
function mailLog(mail: { id: string; messageId: string; to: readonly string[] }, i: number, form: "syslog" | "iso", base: Date): TestMail {
  const qid = nextQueueId();
  const [ok = "", other = ""] = mail.to;
  const t = (s: number) => `${stamp(new Date(base.getTime() + s * 1000), form)} mailhost`;
  const lines = [
    `${t(0)} postfix/pickup[100]: ${qid}: uid=0 from=<app@example.com>`,
    `${t(0)} postfix/cleanup[101]: ${qid}: message-id=${mail.messageId}`,
    `${t(1)} postfix/qmgr[102]: ${qid}: from=<app@example.com>, size=300, nrcpt=2 (queue active)`,
    `${t(1)} postfix/smtp[103]: ${qid}: to=<${ok}>, relay=mx.ok.test[192.0.2.1]:25, delay=0.5, delays=0.1/0/0.2/0.2, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as X${i})`,
  ];
  const expected = ["queued ", `delivered ${ok}`];
  switch (i % 4) {
    case 0:
      lines.push(`${t(2)} postfix/smtp[103]: ${qid}: to=<${other}>, relay=mx.other.test[192.0.2.2]:25, delay=0.6, delays=0.1/0/0.2/0.3, dsn=5.1.1, status=bounced (host mx.other.test[192.0.2.2] said: 550 5.1.1 <${other}>: no such user (in reply to RCPT TO command))`);
      lines.push(`${t(2)} postfix/bounce[104]: ${qid}: sender non-delivery notification: ${nextQueueId()}`);
      expected.push(`bounced ${other}`);
      break;
    case 1:
      lines.push(`${t(2)} postfix/smtp[103]: ${qid}: to=<${other}>, relay=mx.other.test[192.0.2.2]:25, delay=0.6, delays=0.1/0/0.2/0.3, dsn=4.3.0, status=deferred (host mx.other.test[192.0.2.2] said: 451 4.3.0 try again later (in reply to end of DATA command))`);
      lines.push(`${t(50)} postfix/bounce[104]: ${qid}: sender delay notification: ${nextQueueId()}`);
      lines.push(`${t(62)} postfix/qmgr[102]: ${qid}: from=<app@example.com>, size=300, nrcpt=2 (queue active)`);
      lines.push(`${t(63)} postfix/smtp[103]: ${qid}: to=<${other}>, relay=mx.other.test[192.0.2.2]:25, delay=63, delays=62/0/0.5/0.5, dsn=2.0.0, status=sent (250 2.0.0 Ok)`);
      expected.push(`deferred ${other}`, `delivered ${other}`);
      break;
    case 2:
      lines.push(`${t(2)} postfix/local[105]: ${qid}: to=<rewritten-${i}@local.test>, orig_to=<${other}>, relay=local, delay=0.1, delays=0/0/0/0.1, dsn=2.0.0, status=sent (delivered to maildir)`);
      expected.push(`delivered ${other}`);
      break;
    default:
      lines.push(`${t(2)} postfix/smtp[103]: ${qid}: to=<${other}>, relay=none, delay=1, delays=1/0/0/0, dsn=4.4.1, status=deferred (connect to mx.other.test[192.0.2.2]:25: Connection refused)`);
      lines.push(`${t(90)} postfix/qmgr[102]: ${qid}: from=<app@example.com>, status=expired, returned to sender`);
      lines.push(`${t(90)} postfix/bounce[104]: ${qid}: sender non-delivery notification: ${nextQueueId()}`);
      expected.push(`deferred ${other}`, `expired ${other}`);
  }
  lines.push(`${t(91)} postfix/qmgr[102]: ${qid}: removed`);
  return { ...mail, queueId: qid, lines, expected: expected.sort() };
}

/** Lines of mail that is not in the outbox (Postfix's own bounces, another application) and lines of no mail. */
function foreignLines(i: number, base: Date, form: "syslog" | "iso"): string[] {
  const qid = nextQueueId();
  const t = `${stamp(base, form)} mailhost`;
  return [
    `${t} postfix/cleanup[101]: ${qid}: message-id=<${Date.now()}.${qid}@mailhost>`,
    `${t} postfix/qmgr[102]: ${qid}: from=<>, size=2115, nrcpt=1 (queue active)`,
    `${t} postfix/local[105]: ${qid}: to=<app@example.com>, relay=local, delay=0, delays=0/0/0/0, dsn=2.0.0, status=sent (delivered to maildir)`,
    `${t} postfix/qmgr[102]: ${qid}: removed`,
    `${t} postfix/smtpd[106]: connect from unknown[192.0.2.${i % 250}]`,
    `garbage line ${i} \u0000 ${"x".repeat(i)}`,
  ];
}

/** Lines of several mails interleaved as a busy Postfix writes them (groups of 4 mails in parallel), with foreign lines between. */
function interleave(mails: readonly TestMail[], base: Date, form: "syslog" | "iso"): string[] {
  const out: string[] = [];
  for (let g = 0; g < mails.length; g += 4) {
    const group = mails.slice(g, g + 4).map((m) => [...m.lines]);
    for (let k = 0; group.some((l) => l.length > 0); k++) {
      for (const l of group) {
        const line = l.shift();
        if (line !== undefined) out.push(line);
      }
      if (k === 2) out.push(...foreignLines(g + k, base, form));
    }
  }
  return out;
}

interface Setup {
  readonly url: string;
  readonly store: Db;
  readonly dir: string;
  readonly file: string;
  enqueue(n: number, tag: string): Promise<{ id: string; messageId: string; to: string[] }[]>;
  /** `event recipient` per mail id, sorted, as stored. */
  stored(mails: readonly { id: string }[]): Promise<Map<string, string[]>>;
  /** Rows in mail_outbox_delivery. */
  total(): Promise<number>;
}

async function setup(t: TestContext, dialect: "sqlite" | "postgresql", options: { url?: (fixtureUrl: string) => Promise<string> } = {}): Promise<Setup | null> {
  if (dialect === "postgresql" && !(await needPostgres(t))) return null;
  const fx = dialect === "sqlite" ? await freshSqlite() : await freshPostgres();
  const url = options.url ? await options.url(fx.url) : fx.url;
  const store = await openDatabase(url, { busyTimeoutMs: 50, poolSize: 2 });
  const prisma: any = (await prismaClientFor(fx.url)).$extends(mailOutbox({ defaultFrom: "app@example.com" }));
  const dir = await mkdtemp(path.join(tmpdir(), "follow-log-"));
  after(async () => {
    await prisma.$disconnect();
    await store.close();
    await fx.cleanup();
    await rm(dir, { recursive: true, force: true });
  });
  return {
    url,
    store,
    dir,
    file: path.join(dir, "postfix.log"),
    async enqueue(n, tag) {
      const out = [];
      for (let i = 0; i < n; i++) {
        const to = [`ok-${tag}-${i}@ok.test`, `other-${tag}-${i}@other.test`];
        const r = await prisma.outboxEmail.enqueue({ to, subject: `s${i}`, text: "x" });
        out.push({ id: r.id as string, messageId: r.messageId as string, to });
      }
      return out;
    },
    async stored(mails) {
      const m = new Map<string, string[]>();
      for (const mail of mails) m.set(mail.id, (await store.listDeliveryEvents(mail.id)).map((e) => `${e.event} ${e.recipient}`).sort());
      return m;
    },
    async total() {
      if (store.dialect === "postgresql") {
        const r = await store.pool.query(`SELECT count(*)::int AS n FROM ${store.schema === "public" ? "" : `"${store.schema}".`}mail_outbox_delivery`);
        return (r.rows[0] as { n: number }).n;
      }
      return (sqliteOf(store).db.prepare("SELECT count(*) AS n FROM mail_outbox_delivery").get() as { n: number }).n;
    },
  };
}

/** 0 lost, 0 doubled: every mail has exactly the events its log lines call for, and nothing else is stored. */
async function assertExactly(s: Setup, mails: readonly TestMail[]): Promise<void> {
  const stored = await s.stored(mails);
  for (const m of mails) assert.deepEqual(stored.get(m.id), m.expected, `events of ${m.messageId}`);
  assert.equal(await s.total(), mails.reduce((n, m) => n + m.expected.length, 0), "events stored in all");
}

async function runOnce(s: Setup, extra: Partial<FollowLogOptions> = {}): Promise<FollowLogCounts> {
  return followLog({ store: s.store, path: s.file, once: true, ...quiet, ...extra } as FollowLogOptions).stopped;
}

async function testMails(s: Setup, n: number, form: "syslog" | "iso" = "syslog"): Promise<{ mails: TestMail[]; lines: string[] }> {
  const base = new Date(Date.now() - 3_600_000);
  const mails = (await s.enqueue(n, randomUUID().slice(0, 6))).map((m, i) => mailLog(m, i, form, base));
  return { mails, lines: interleave(mails, base, form) };
}

/** The paths this process has open (Linux: /proc/self/fd). */
function openFiles(): string[] {
  return readdirSync("/proc/self/fd").flatMap((fd) => {
    try {
      return [readlinkSync(`/proc/self/fd/${fd}`)];
    } catch {
      return [];
    }
  });
}

const text = (lines: readonly string[]) => lines.map((l) => `${l}\n`).join("");

for (const dialect of ["sqlite", "postgresql"] as const) {
  describe(`followLog on ${dialect}`, () => {
    it("records each recipient's fate once, with its status, server and reply; passes over other mail and garbage", async (t) => {
      const s = await setup(t, dialect);
      if (!s) return;
      const { mails, lines } = await testMails(s, 24);
      await writeFile(s.file, text(lines));
      const registry = new Registry();
      const seen: FateEvent[] = [];
      const follower = followLog({ store: s.store, path: s.file, once: true, fromStart: true, batchLines: 37, metricsRegistry: registry, suppress: { expiresAt: null }, ...quiet });
      follower.on("fate", (e) => seen.push(e));
      const counts = await follower.stopped;
      await assertExactly(s, mails);
      const expectedTotal = mails.reduce((n, m) => n + m.expected.length, 0);
      assert.equal(counts.lines, lines.length);
      assert.equal(counts.recorded, expectedTotal);
      assert.equal(counts.duplicates, 0);
      assert.ok(counts.foreign >= 4 * 6, `foreign lines counted: ${counts.foreign}`);
      assert.equal(seen.length, expectedTotal, "one fate event per stored event");
      assert.ok(seen.every((e) => mails.some((m) => m.id === e.emailId && m.messageId === e.messageId)), "events carry their mail's Message-ID");

      // The details of a bounce, a rewritten recipient and an expiry.
      const bounce = (await s.store.listDeliveryEvents(mails[0]!.id)).find((e) => e.event === "bounced");
      assert.deepEqual(
        { recipient: bounce?.recipient, source: bounce?.source, queueId: bounce?.queueId, dsnStatus: bounce?.dsnStatus, remoteMta: bounce?.remoteMta },
        { recipient: mails[0]!.to[1], source: "log", queueId: mails[0]!.queueId, dsnStatus: "5.1.1", remoteMta: "mx.other.test[192.0.2.2]:25" },
      );
      assert.match(bounce?.reply ?? "", /^host mx\.other\.test\[192\.0\.2\.2\] said: 550 5\.1\.1 .* \(in reply to RCPT TO command\)$/);
      const expiry = (await s.store.listDeliveryEvents(mails[3]!.id)).find((e) => e.event === "expired");
      assert.deepEqual([expiry?.recipient, expiry?.reply], [mails[3]!.to[1], "returned to sender"]);
      // Hard bounces went on the suppression list (suppress option).
      const bounced = mails.filter((_, i) => i % 4 === 0).map((m) => m.to[1]!);
      assert.deepEqual([...(await s.store.findSuppressed(bounced, new Date()))].sort(), bounced.map((a) => a.toLowerCase()).sort());

      const cursor = await s.store.readLogCursor(s.file);
      assert.equal(cursor?.offset, (await stat(s.file)).size);
      assert.ok(cursor?.caughtUpAt instanceof Date, "caught_up_at set at the end of the log");
      assert.ok((await s.store.logCaughtUpAt())! >= cursor!.caughtUpAt!);
      const metrics = await registry.metrics();
      assert.match(metrics, new RegExp(`mail_outbox_fates_total\\{event="bounced",source="log"\\} ${bounced.length}`));
      assert.match(metrics, /mail_outbox_log_lines_total\{outcome="foreign"\} \d+/);

      // Read again from the start: nothing is stored twice.
      const again = await runOnce(s, { fromStart: true, batchLines: 500 });
      assert.equal(again.recorded, 0);
      // Every line's event again, except expiries: qmgr's expiry line names no recipient, and every one is settled now.
      assert.equal(again.duplicates, expectedTotal - mails.filter((_, i) => i % 4 === 3).length);
      await assertExactly(s, mails);
    });

    it("a restart at any line, even between a mail's cleanup and qmgr lines or inside a line, loses and doubles nothing", async (t) => {
      const s = await setup(t, dialect);
      if (!s) return;
      const { mails, lines } = await testMails(s, 12);
      await writeFile(s.file, "");
      // First run on the empty log: the position (0) is stored; every later run resumes there.
      await runOnce(s);
      const all = text(lines);
      // Cut points: after each of the first mail's cleanup lines, and a few inside lines.
      const cuts = [...new Set([all.indexOf("(queue active)") - 40, all.indexOf("\n", 1000) + 1, 1500, 2222, Math.floor(all.length / 2), all.length - 7, all.length])]
        .filter((c) => c > 0)
        .sort((a, b) => a - b);
      let from = 0;
      let recorded = 0;
      for (const cut of cuts) {
        await appendFile(s.file, all.slice(from, cut));
        from = cut;
        const counts = await runOnce(s, { batchLines: 5 });
        recorded += counts.recorded;
        assert.equal(counts.duplicates, 0);
      }
      await assertExactly(s, mails);
      assert.equal(recorded, mails.reduce((n, m) => n + m.expected.length, 0));
    });

    it("follows a rename rotation while running: the old file to its end (late lines too), then the new one", async (t) => {
      const s = await setup(t, dialect);
      if (!s) return;
      const { mails, lines } = await testMails(s, 16);
      const third = Math.floor(lines.length / 3);
      await writeFile(s.file, text(lines.slice(0, third)));
      const follower = followLog({ store: s.store, path: s.file, fromStart: true, pollIntervalMs: 20, batchLines: 10, ...quiet });
      let caughtUp = 0;
      follower.on("caughtUp", () => (caughtUp += 1));
      await waitFor("the first part", () => caughtUp > 0);
      await rename(s.file, `${s.file}.1`);
      // Postfix writes a little more to the renamed file before it reopens the log.
      await appendFile(`${s.file}.1`, text(lines.slice(third, 2 * third)));
      await writeFile(s.file, text(lines.slice(2 * third)));
      const expected = mails.reduce((n, m) => n + m.expected.length, 0);
      await waitFor("every event", async () => (await s.total()) >= expected);
      await sleep(100);
      const counts = await follower.stop();
      assert.equal(counts.rotations, 1);
      assert.equal(counts.lines, lines.length);
      await assertExactly(s, mails);
      const cursor = await s.store.readLogCursor(s.file);
      assert.equal(cursor?.offset, (await stat(s.file)).size);
    });

    it("two rename rotations before the old file went quiet (the middle file renamed, compressed and deleted): every file is read, none skipped", async (t) => {
      const s = await setup(t, dialect);
      if (!s) return;
      const { mails, lines } = await testMails(s, 16);
      const third = Math.floor(lines.length / 3);
      await writeFile(s.file, text(lines.slice(0, third)));
      const follower = followLog({ store: s.store, path: s.file, fromStart: true, pollIntervalMs: 20, batchLines: 10, ...quiet });
      let stopped = false;
      t.after(async () => {
        if (!stopped) await follower.stop().catch(() => {});
      });
      let caughtUp = 0;
      follower.on("caughtUp", () => (caughtUp += 1));
      await waitFor("the first part", () => caughtUp > 0);
      // First rotation: a new file with the middle lines...
      await rename(s.file, `${s.file}.1`);
      await writeFile(s.file, text(lines.slice(third, 2 * third)));
      // ...noticed by the follower: it holds the new file open (seen in /proc/self/fd)...
      await waitFor("the follower to hold the new file", () => openFiles().includes(s.file));
      // ...then, before the old file's quiet period is over, rotated again the way `postfix logrotate`
      // does (renamed, compressed, the uncompressed copy deleted), and a third file started.
      await rename(s.file, `${s.file}.2`);
      await unlink(`${s.file}.2`);
      await writeFile(s.file, text(lines.slice(2 * third)));
      const expected = mails.reduce((n, m) => n + m.expected.length, 0);
      await waitFor("every event", async () => (await s.total()) >= expected);
      await sleep(100);
      const counts = await follower.stop();
      stopped = true;
      assert.equal(counts.rotations, 2);
      assert.equal(counts.lines, lines.length);
      await assertExactly(s, mails);
    });

    it("follows copytruncate while running, and after it while stopped, when the file grew past the old position", async (t) => {
      const s = await setup(t, dialect);
      if (!s) return;
      const { mails, lines } = await testMails(s, 16);
      // A: 0..q before the first copytruncate; B: q..1.5q after it; C: 1.5q..2q while stopped; D: 2q.. after the second.
      const q = Math.floor(lines.length / 4);
      const h = q + Math.floor(q / 2);
      await writeFile(s.file, text(lines.slice(0, q)));
      {
        await using follower = followLog({ store: s.store, path: s.file, fromStart: true, pollIntervalMs: 20, ...quiet });
        let caughtUp = 0;
        follower.on("caughtUp", () => (caughtUp += 1));
        await waitFor("the first part", () => caughtUp > 0);
        await copyFile(s.file, `${s.file}.1`);
        await truncate(s.file, 0);
        await appendFile(s.file, text(lines.slice(q, h)));
        const size = (await stat(s.file)).size;
        await waitFor("the second part", async () => (await s.store.readLogCursor(s.file))?.offset === size && caughtUp > 1);
      }
      // Stopped: lines are written, the file is copied and truncated, and grows past where the follower was.
      await appendFile(s.file, text(lines.slice(h, 2 * q)));
      await copyFile(s.file, `${s.file}.1`);
      await writeFile(s.file, text(lines.slice(2 * q)));
      assert.ok((await stat(s.file)).size > (await s.store.readLogCursor(s.file))!.offset, "the new file is longer than the old position");
      const counts = await runOnce(s);
      assert.equal(counts.rotations, 1);
      await assertExactly(s, mails);
    });

    it("a rotation while stopped: the rest of the old file (found by its file id under a rotated name), then the new one", async (t) => {
      const s = await setup(t, dialect);
      if (!s) return;
      const { mails, lines } = await testMails(s, 12);
      const third = Math.floor(lines.length / 3);
      await writeFile(s.file, text(lines.slice(0, third)));
      await runOnce(s, { fromStart: true });
      await appendFile(s.file, text(lines.slice(third, 2 * third)));
      // logrotate with dateext, not compressed yet (delaycompress).
      await rename(s.file, `${s.file}-20261130`);
      await writeFile(`${s.file}.2.gz`, "not this one");
      await writeFile(s.file, text(lines.slice(2 * third)));
      const counts = await runOnce(s);
      assert.equal(counts.rotations, 1);
      assert.equal(counts.lines, lines.length - third);
      await assertExactly(s, mails);
    });

    it("rides out a database outage: keeps its position, warns, and records everything once when the database is back", async (t) => {
      let proxy: Proxy | null = null;
      const s = await setup(t, dialect, {
        url: async (u) => {
          if (dialect === "sqlite") return u;
          proxy = await startProxy(new URL(PG_ADMIN_URL));
          const url = new URL(u);
          url.host = `127.0.0.1:${proxy.port}`;
          return url.toString();
        },
      });
      if (!s) return;
      after(() => proxy?.close());
      const { mails, lines } = await testMails(s, 12);
      const half = Math.floor(lines.length / 2);
      await writeFile(s.file, text(lines.slice(0, half)));
      const follower = followLog({ store: s.store, path: s.file, fromStart: true, pollIntervalMs: 20, batchLines: 8, ...quiet });
      const warnings: Error[] = [];
      follower.on("warning", (e) => warnings.push(e));
      let caughtUp = 0;
      follower.on("caughtUp", () => (caughtUp += 1));
      await waitFor("the first half", () => caughtUp > 0);

      // The outage: SQLite's write lock held by another connection; PostgreSQL's connections cut and refused.
      let lock: Database.Database | null = null;
      if (dialect === "sqlite") {
        lock = new Database(s.store.dialect === "sqlite" ? s.store.filename : "");
        lock.exec("BEGIN EXCLUSIVE");
      } else {
        await proxy!.down();
      }
      await appendFile(s.file, text(lines.slice(half)));
      await waitFor("a warning", () => warnings.length > 0);
      await sleep(300);
      if (lock) {
        lock.exec("COMMIT");
        lock.close();
      } else {
        await proxy!.up();
      }
      const expected = mails.reduce((n, m) => n + m.expected.length, 0);
      await waitFor("every event", async () => (await s.total()) >= expected, 20_000);
      await sleep(100);
      const counts = await follower.stop();
      assert.equal(counts.lines, lines.length);
      assert.equal(counts.duplicates, 0);
      await assertExactly(s, mails);
    });

    it("finds mail handed over by SMTP through the queue id the relay recorded, when its cleanup line came before the follower started", async (t) => {
      const s = await setup(t, dialect);
      if (!s) return;
      const { mails } = await testMails(s, 4);
      // The relay's hand-off, as it records it: claimed, accepted by the MTA with its queue id.
      const claimed = await s.store.claim("relay-test", 100, 30_000);
      assert.equal(claimed.length, mails.length);
      await s.store.complete("relay-test", "relay-test", mails.map((m) => ({
        kind: "accepted" as const, id: m.id, attemptId: randomUUID(), attempt: 1, startedAt: new Date(), durationMs: 5,
        response: `250 2.0.0 Ok: queued as ${m.queueId}`, queueId: m.queueId, accepted: m.to, rejected: [],
      })));
      // The log from after each mail's cleanup and first qmgr lines: no `queued` event, every fate after it.
      const later = mails.map((m) => ({ ...m, lines: m.lines.filter((l) => !/cleanup|pickup/.test(l)).slice(1), expected: m.expected.filter((e) => e !== "queued ") }));
      await writeFile(s.file, text(later.flatMap((m) => m.lines)));
      const counts = await runOnce(s, { fromStart: true });
      assert.equal(counts.foreign, 0);
      await assertExactly(s, later);
    });

    it("reads journald's lines from a stream (journalctl -o short-iso) until it ends", async (t) => {
      const s = await setup(t, dialect);
      if (!s) return;
      const { mails, lines } = await testMails(s, 8, "iso");
      const stream = new PassThrough();
      const follower = followLog({ store: s.store, stream, name: "journal", batchMs: 20, ...quiet });
      for (let i = 0; i < lines.length; i += 7) {
        stream.write(text(lines.slice(i, i + 7)).slice(0, -3));
        stream.write(text(lines.slice(i, i + 7)).slice(-3));
        await sleep(5);
      }
      stream.end();
      const counts = await follower.stopped;
      assert.equal(counts.lines, lines.length);
      await assertExactly(s, mails);
      const cursor = await s.store.readLogCursor("journal");
      assert.ok(cursor?.caughtUpAt instanceof Date);
    });
  });
}

describe("followLog options", () => {
  it("refuses bad options with exact messages, and a missing file in once mode", async () => {
    const fx = await freshSqlite();
    const store = await openDatabase(fx.url);
    after(async () => {
      await store.close();
      await fx.cleanup();
    });
    assert.throws(() => followLog({ store, ...quiet } as FollowLogOptions), { name: "OptionsError", message: "followLog() needs exactly one of `path` (a log file) or `stream`." });
    assert.throws(() => followLog({ store, path: "/x", pollIntervalMs: 1, ...quiet }), { message: "Expected `pollIntervalMs` to be a whole number of at least 10, got 1." });
    assert.throws(() => followLog({ path: "/x" } as FollowLogOptions), /Expected `store`/);
    await assert.rejects(followLog({ store, path: path.join(tmpdir(), `none-${randomUUID()}.log`), once: true, ...quiet }).stopped, /does not exist/);
  });

  it("stops when its AbortSignal is aborted, waiting meanwhile for a log file that does not exist yet", async () => {
    const fx = await freshSqlite();
    const store = await openDatabase(fx.url);
    after(async () => {
      await store.close();
      await fx.cleanup();
    });
    const controller = new AbortController();
    const follower = followLog({ store, path: path.join(tmpdir(), `later-${randomUUID()}.log`), signal: controller.signal, pollIntervalMs: 20, ...quiet });
    const warnings: Error[] = [];
    follower.on("warning", (e) => warnings.push(e));
    await waitFor("the warning about the missing file", () => warnings.length > 0);
    assert.match(warnings[0]!.message, /does not exist yet; waiting for it/);
    controller.abort();
    assert.deepEqual(await follower.stopped, { lines: 0, recorded: 0, duplicates: 0, foreign: 0, rotations: 0, batches: 0 });
  });
});

describe("mail-outbox follow-log", () => {
  async function cli(args: string[], signals?: EventEmitter): Promise<{ code: number; stdout: string; stderr: string }> {
    let stdout = "";
    let stderr = "";
    const code = await main(args, {
      stdout: { write: (c: string | Uint8Array) => (stdout += String(c)) },
      stderr: { write: (c: string | Uint8Array) => (stderr += String(c)) },
      env: { MAIL_OUTBOX_LOG_LEVEL: "warn" },
      ...(signals ? { signals: signals as never } : {}),
    });
    return { code, stdout, stderr };
  }

  it("--once reads a log to its end and prints the counts; follow mode stops on SIGTERM and resumes where it stopped", async (t) => {
    const s = await setup(t, "sqlite");
    if (!s) return;
    const { mails, lines } = await testMails(s, 8);
    const half = Math.floor(lines.length / 2);
    await writeFile(s.file, text(lines.slice(0, half)));
    const once = await cli(["follow-log", s.file, "--once", "--from-start", "--json", "--database-url", s.url]);
    assert.equal(once.code, 0, once.stderr);
    const counts = JSON.parse(once.stdout) as FollowLogCounts;
    assert.equal(counts.lines, half);

    await appendFile(s.file, text(lines.slice(half)));
    const signals = new EventEmitter();
    const running = cli(["follow-log", s.file, "--poll", "20ms", "--suppress", "--suppress-for", "30d", "--database-url", s.url], signals);
    const expected = mails.reduce((n, m) => n + m.expected.length, 0);
    await waitFor("every event", async () => (await s.total()) >= expected);
    signals.emit("SIGTERM");
    const stopped = await running;
    assert.equal(stopped.code, 0, stopped.stderr);
    assert.match(stopped.stdout, new RegExp(`^stopped: lines ${lines.length - half}, recorded \\d+, already recorded 0, other mail \\d+, rotations 0\\n$`));
    assert.equal(signals.listenerCount("SIGTERM"), 0, "signal handlers removed");
    await assertExactly(s, mails);
    const suppressed = await s.store.listSuppressions({ address: null, includeExpired: false, now: new Date(), limit: 100 });
    assert.ok(suppressed.length > 0 && suppressed.every((e) => e.expiresAt !== null && e.expiresAt.getTime() > Date.now() + 29 * 86_400_000));
  });

  it("refuses options that do not go together, with exit status 2", async (t) => {
    const s = await setup(t, "sqlite");
    if (!s) return;
    const r = await cli(["follow-log", s.file, "--suppress-for", "30d", "--database-url", s.url]);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /--suppress-for needs --suppress/);
    const r2 = await cli(["follow-log", "-", "--from-start", "--database-url", s.url]);
    assert.equal(r2.code, 2);
    assert.match(r2.stderr, /journalctl --since/);
  });
});

// ---------------------------------------------------------------------------------------------
// The real Postfix

describe("followLog on this machine's Postfix log", () => {
  it("records delivered and bounced per recipient for mail sent with sendmail, linked by its Message-ID", async (t) => {
    if (!needPostfix(t)) return;
    const s = await setup(t, "sqlite");
    if (!s) return;
    // The position before sending: a first run stores the end of the log.
    await followLog({ store: s.store, path: POSTFIX_LOG, name: "real", once: true, ...quiet }).stopped;
    const [mail] = await s.enqueue(1, "real");
    const to = ["outbox-test@localhost", "nosuchuser@localhost"];
    const raw = `From: app@example.com\nTo: ${to.join(", ")}\nSubject: follow-log test\nMessage-ID: ${mail!.messageId}\n\nhello\n`;
    await new Promise<void>((resolve, reject) => {
      const child = execFile(POSTFIX_SENDMAIL, ["-i", "-f", "outbox-test+follow@localhost", ...to], (err) => (err ? reject(err) : resolve()));
      child.stdin!.end(raw);
    });
    // Wait until Postfix has logged both recipients of that mail.
    await waitFor(
      "Postfix's delivery lines",
      async () => {
        const log = await readFile(POSTFIX_LOG, "utf8");
        const qid = new RegExp(`postfix/cleanup\\[\\d+\\]: ([0-9A-Za-z]+): message-id=${mail!.messageId.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}`).exec(log)?.[1];
        return qid !== undefined && to.every((r) => log.includes(`${qid}: to=<${r}>`));
      },
      20_000,
    );
    const counts = await followLog({ store: s.store, path: POSTFIX_LOG, name: "real", once: true, ...quiet }).stopped;
    assert.equal(counts.recorded, 3);
    const events = await s.store.listDeliveryEvents(mail!.id);
    const byRecipient = new Map(events.map((e) => [e.recipient, e]));
    assert.deepEqual(events.map((e) => `${e.event} ${e.recipient}`).sort(), ["bounced nosuchuser@localhost", "delivered outbox-test@localhost", "queued "]);
    assert.deepEqual([byRecipient.get("nosuchuser@localhost")?.dsnStatus, byRecipient.get("nosuchuser@localhost")?.reply], ["5.1.1", 'unknown user: "nosuchuser"']);
    assert.deepEqual([byRecipient.get("outbox-test@localhost")?.dsnStatus, byRecipient.get("outbox-test@localhost")?.remoteMta], ["2.0.0", "local"]);
    const queued = byRecipient.get("");
    assert.ok(queued?.queueId && events.every((e) => e.queueId === queued.queueId), "every event names the queue id of the cleanup line");
  });
});
