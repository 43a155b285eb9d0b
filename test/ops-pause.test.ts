/**
 * Pause and resume (ops.ts, cli/ops.ts, the claim loop, /readyz): the scopes and transport keys;
 * the library functions on SQLite and PostgreSQL; and two real relay processes (`mail-outbox relay`,
 * spawned as the program) handing mail to an in-process SMTP server: `mail-outbox pause` stops both
 * within a poll interval while mail is due, /readyz says who paused and since when, `resume` drains
 * the outbox; a pause by sender domain holds only that domain's mail; a pause by transport names
 * the MTA without its credentials.
 */
import { describe, it } from "node:test";
import type { TestContext } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { createRelay, mailOutbox, openDatabase } from "../src/index.js";
import { OptionsError } from "../src/errors.js";
import { listPauses, parseScope, pauseRelays, relayOpsView, resumeRelays, transportKey } from "../src/ops.js";
import { main } from "../src/cli/main.js";
import { conformanceStores, freshMysql, freshPostgres, freshSqlite, prismaClientFor } from "./support/db.js";
import { needMysql, needPostgres } from "./support/services.js";
import { startTestSmtp, type TestSmtp } from "../testkit/smtp.js";

const CLI = fileURLToPath(new URL("../src/cli.ts", import.meta.url));
const ROOT = fileURLToPath(new URL("..", import.meta.url));
/** The relays' poll interval: a pause takes effect within one. */
const POLL_MS = 100;
/** How long "nothing more was handed over" is watched: many poll intervals. */
const QUIET_MS = 1200;

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

describe("scopes and transport keys", () => {
  it("a transport key names the MTA without credentials or parameters, and a key is its own key", () => {
    assert.equal(transportKey("smtp://relay:secret@Mail.Internal:587?maxConnections=10&timeout=3000"), "smtp://mail.internal:587");
    assert.equal(transportKey("smtp://127.0.0.1"), "smtp://127.0.0.1:25");
    assert.equal(transportKey("smtps://mx.example"), "smtps://mx.example:465");
    assert.equal(transportKey("smtp://[::1]:2525"), "smtp://[::1]:2525");
    assert.equal(transportKey("sendmail:"), "sendmail:/usr/sbin/sendmail");
    assert.equal(transportKey("sendmail:/usr/lib/sendmail?timeout=5000"), "sendmail:/usr/lib/sendmail");
    assert.equal(transportKey("sendmail-bs:"), "sendmail-bs:/usr/sbin/sendmail");
    assert.equal(transportKey({ host: "smtp.example", port: 2525 } as never), "smtp://smtp.example:2525");
    for (const k of ["smtp://mail.internal:587", "sendmail:/usr/sbin/sendmail", "sendmail-bs:/usr/sbin/sendmail"]) assert.equal(transportKey(k), k);
    assert.throws(() => transportKey("lmtp://x"), (e: unknown) => e instanceof OptionsError && /Unknown transport "lmtp:\/\/x"/.test(e.message));
    assert.throws(() => transportKey("smtp://u:hunter2@"), (e: unknown) => e instanceof OptionsError && !e.message.includes("hunter2"));
  });

  it("scopes read as operators write them; anything else is refused with what to write", () => {
    assert.equal(parseScope("all"), "all");
    assert.equal(parseScope("transport:smtp://u:p@MX:25?timeout=1"), "transport:smtp://mx:25");
    assert.equal(parseScope("sender:News.Example.COM"), "sender:news.example.com");
    assert.equal(parseScope("sender:app@example.com"), "sender:example.com");
    for (const bad of ["", "everything", "sender:", "sender:not a domain", "transport:ftp://x"]) {
      assert.throws(() => parseScope(bad), OptionsError, bad);
    }
  });

  it("a relay honours all, its own transport and every sender pause; only all and its transport stop it", () => {
    const at = new Date("2026-01-01T00:00:00Z");
    const p = (scope: string) => ({ scope, pausedAt: at, pausedBy: "cli:ann", reason: null });
    const key = "smtp://127.0.0.1:25";
    const none = relayOpsView(key, [], []);
    assert.equal(none.pausedBy, null);
    assert.deepEqual(none.buckets, []);
    const other = relayOpsView(key, [p("transport:smtp://mx:25"), p("sender:a.example")], []);
    assert.equal(other.pausedBy, null);
    assert.deepEqual(other.excludeSenderDomains, ["a.example"]);
    assert.deepEqual(other.honoured.map((x) => x.scope), ["sender:a.example"]);
    assert.equal(relayOpsView(key, [p(`transport:${key}`)], []).pausedBy?.scope, `transport:${key}`);
    assert.equal(relayOpsView(key, [p(`transport:${key}`), p("all")], []).pausedBy?.scope, "all");
    const rate = { bucket: `transport:${key}`, rate: 1, burst: 1, tokens: 1, refilledAt: at };
    assert.deepEqual(relayOpsView(key, [], [rate, { ...rate, bucket: "transport:smtp://mx:25" }]).buckets, [`transport:${key}`]);
  });
});

for (const s of conformanceStores) {
  it(`pauseRelays / resumeRelays / listPauses on ${s.name}: a second pause keeps the first one's actor; resume --all lifts every pause`, async (t) => {
    const db = await s.open(t);
    if (db === null) return;
    const first = await pauseRelays(db, { by: "cli:ann", reason: "MTA maintenance" });
    assert.equal(first.scope, "all");
    assert.equal(first.paused, true);
    assert.equal(first.pause?.pausedBy, "cli:ann");
    const again = await pauseRelays(db, { by: "cli:bob" });
    assert.equal(again.paused, false);
    assert.equal(again.pause?.pausedBy, "cli:ann");
    assert.equal(again.pause?.reason, "MTA maintenance");
    await pauseRelays(db, { sender: "News.Example", by: "cli:ann" });
    await pauseRelays(db, { transport: "smtp://u:p@mx.example:25?timeout=5", by: "cli:ann" });
    assert.deepEqual((await listPauses(db)).map((p) => p.scope).sort(), ["all", "sender:news.example", "transport:smtp://mx.example:25"]);
    await assert.rejects(pauseRelays(db, { sender: "a.example", transport: "smtp://mx:25" }), OptionsError);
    assert.deepEqual(await resumeRelays(db, { sender: "other.example" }), { resumed: [], notPaused: ["sender:other.example"] });
    assert.deepEqual(await resumeRelays(db, { transport: "smtp://mx.example" }), { resumed: ["transport:smtp://mx.example:25"], notPaused: [] });
    const all = await resumeRelays(db, { all: true });
    assert.deepEqual([...all.resumed].sort(), ["all", "sender:news.example"]);
    assert.deepEqual(await listPauses(db), []);
  });
}

// ---------------------------------------------------------------------------------------------
// Two relay processes

interface RelayProc {
  readonly child: ChildProcess;
  /** The operations port's base URL, from the "serving metrics" log line. */
  readonly base: Promise<string>;
  /** Log lines (JSON) seen so far. */
  readonly lines: Record<string, unknown>[];
  stop(): Promise<number | null>;
}

function spawnRelay(env: Record<string, string>, name: string): RelayProc {
  const child = spawn(process.execPath, ["--import", "tsx", CLI, "relay", "--poll", `${POLL_MS}ms`, "--metrics-port", "0", "--relay-id", name, "--stop-timeout", "3s"], {
    cwd: ROOT,
    env: { ...process.env, MAIL_OUTBOX_LOG_LEVEL: "info", MAIL_OUTBOX_LOG_FORMAT: "json", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const lines: Record<string, unknown>[] = [];
  let stderr = "";
  const base = new Promise<string>((resolve, reject) => {
    createInterface({ input: child.stderr! }).on("line", (line) => {
      stderr += `${line}\n`;
      try {
        const entry = JSON.parse(line) as Record<string, unknown>;
        lines.push(entry);
        if (entry.msg === "serving metrics") resolve(String(entry.metrics).replace(/\/metrics$/, ""));
      } catch {
        // not JSON: kept in stderr for the failure message
      }
    });
    child.once("exit", (code) => reject(new Error(`relay ${name} exited (${code}) before serving metrics: ${stderr}`)));
  });
  base.catch(() => {});
  child.stdout!.resume();
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  return {
    child,
    base,
    lines,
    async stop() {
      if (child.exitCode === null) child.kill("SIGTERM");
      return exited;
    },
  };
}

interface Ready {
  readonly code: number;
  readonly body: { status: string; checks: Record<string, { ok: boolean; detail: string; pauses?: { scope: string; pausedBy: string; pausedAt: string; reason: string | null }[] }> };
}

async function readyz(base: string): Promise<Ready> {
  const res = await fetch(`${base}/readyz`);
  return { code: res.status, body: (await res.json()) as Ready["body"] };
}

async function readyUntil(base: string, cond: (r: Ready) => boolean, what: string, timeoutMs = 15_000): Promise<Ready> {
  const deadline = Date.now() + timeoutMs;
  let last: Ready | null = null;
  while (Date.now() < deadline) {
    last = await readyz(base);
    if (cond(last)) return last;
    await sleep(50);
  }
  assert.fail(`/readyz at ${base} did not become ${what} within ${timeoutMs} ms; last: ${last?.code} ${JSON.stringify(last?.body)}`);
}

const isReady = (r: Ready) => r.code === 200 && r.body.checks.paused === undefined;
const pausedAs = (scope: string) => (r: Ready) => r.code === 503 && r.body.checks.paused?.ok === false && r.body.checks.paused.pauses?.some((p) => p.scope === scope) === true;

async function cli(args: string[], env: Record<string, string>): Promise<{ code: number; stdout: string; stderr: string }> {
  let stdout = "";
  let stderr = "";
  const code = await main(args, { stdout: { write: (c) => (stdout += String(c)) }, stderr: { write: (c) => (stderr += String(c)) }, env });
  return { code, stdout, stderr };
}

async function statusCounts(url: string): Promise<Record<string, number>> {
  const db = await openDatabase(url);
  try {
    return (await db.statusCounts(new Date())).reduce<Record<string, number>>((acc, r) => ({ ...acc, [r.status]: Number(r.total) }), {});
  } finally {
    await db.close();
  }
}

const fromDomain = (smtp: TestSmtp, domain: string) => smtp.messages.filter((m) => m.envelopeFrom.endsWith(`@${domain}`)).length;

for (const dialect of ["sqlite", "postgresql", "mysql"] as const) {
  describe(`pause and resume across two relay processes on ${dialect}`, () => {
    it("pause stops both relays within a poll interval while mail is due, /readyz names the pause, resume drains; a sender pause holds only its domain; a transport pause names the MTA", async (t: TestContext) => {
      if (dialect === "postgresql" && !(await needPostgres(t))) return;
      if (dialect === "mysql" && !(await needMysql(t))) return;
      const fx = dialect === "sqlite" ? await freshSqlite(t) : dialect === "postgresql" ? await freshPostgres(t) : await freshMysql(t);
      const smtp = await startTestSmtp();
      t.after(() => smtp.close());
      const prisma: any = (await prismaClientFor(fx.url, t)).$extends(mailOutbox({ defaultFrom: "app@fast.example" }));
      const env = { DATABASE_URL: fx.url, MAIL_OUTBOX_TRANSPORT: smtp.url };
      const relays = [spawnRelay(env, "relay-a"), spawnRelay(env, "relay-b")];
      t.after(async () => {
        for (const r of relays) await r.stop();
      });
      const bases = await Promise.all(relays.map((r) => r.base));
      for (const b of bases) await readyUntil(b, isReady, "ready");
      const enqueue = async (n: number, from: string, tag: string) => {
        for (let i = 0; i < n; i++) await prisma.outboxEmail.enqueue({ from, to: `${tag}${i}@example.com`, subject: `${tag} ${i}`, text: "x" });
      };

      // Working: mail goes.
      await enqueue(3, "app@fast.example", "warm");
      await smtp.waitFor(3, 15_000);

      // Pause everything: both relays show it on /readyz (scope, who, since when, why) within a poll interval or so.
      const paused = await cli(["pause", "--reason", "MTA maintenance", "--json"], { ...env, USER: "ann" });
      assert.equal(paused.code, 0, paused.stderr);
      assert.equal(JSON.parse(paused.stdout).scope, "all");
      for (const b of bases) {
        const r = await readyUntil(b, pausedAs("all"), "paused");
        const check = r.body.checks.paused!;
        assert.match(check.detail, /^paused \(all\) by cli:ann since \d{4}-.*\(MTA maintenance\)/);
        assert.deepEqual(check.pauses?.map((p) => [p.scope, p.pausedBy, p.reason]), [["all", "cli:ann", "MTA maintenance"]]);
        assert.equal(r.body.checks.database?.ok, true);
        const metrics = await (await fetch(`${b}/metrics`)).text();
        assert.match(metrics, /^mail_outbox_paused\{scope="all"\} 1$/m);
        assert.equal((await fetch(`${b}/healthz`)).status, 200, "the claim loop keeps turning while paused");
      }
      // Mail due while paused stays pending.
      await enqueue(5, "app@fast.example", "held");
      await sleep(QUIET_MS);
      assert.equal(smtp.messages.length, 3, "nothing handed over while paused");
      assert.equal((await statusCounts(fx.url)).pending, 5);
      const status = await cli(["status"], env);
      assert.match(status.stdout, /^paused all {2}by cli:ann since .* {2}\(MTA maintenance\)$/m);
      assert.ok(relays.every((r) => r.lines.some((l) => l.scope === "all" && /^paused \(all\)/.test(String(l.msg)))), "each relay logs the pause it sees");

      // Resume: both ready again, the outbox drains.
      const resumed = await cli(["resume"], env);
      assert.equal(resumed.code, 0, resumed.stderr);
      assert.match(resumed.stdout, /^resumed all$/m);
      await smtp.waitFor(8, 15_000);
      for (const b of bases) {
        await readyUntil(b, isReady, "ready again");
        assert.doesNotMatch(await (await fetch(`${b}/metrics`)).text(), /^mail_outbox_paused\{/m);
      }
      assert.ok(relays.every((r) => r.lines.some((l) => l.scope === "all" && /^pause lifted/.test(String(l.msg)))));

      // A sender pause: ready but listed; only the other domain's mail goes.
      assert.equal((await cli(["pause", "--sender", "slow.example"], env)).code, 0);
      for (const b of bases) {
        const r = await readyUntil(b, (x) => x.code === 200 && x.body.checks.paused?.ok === true, "ready with a sender pause listed");
        assert.match(r.body.checks.paused!.detail, /mail from slow\.example is paused/);
      }
      await enqueue(3, "app@slow.example", "slow");
      await enqueue(3, "app@fast.example", "fast");
      await smtp.waitFor((m) => m.filter((x) => x.recipients[0]?.startsWith("fast")).length === 3, 15_000);
      await sleep(QUIET_MS);
      assert.equal(fromDomain(smtp, "slow.example"), 0, "the paused sender's mail stays pending");
      assert.equal((await statusCounts(fx.url)).pending, 3);
      assert.equal((await cli(["resume", "--sender", "SLOW.example"], env)).code, 0);
      await smtp.waitFor(14, 15_000);
      assert.equal(fromDomain(smtp, "slow.example"), 3);

      // A transport pause, given as the URL with credentials and parameters: the key names the MTA only.
      const port = new URL(smtp.url).port;
      const tp = await cli(["pause", "--transport", `smtp://user:pw@127.0.0.1:${port}?timeout=5000`, "--json"], env);
      assert.equal(tp.code, 0, tp.stderr);
      const scope = `transport:smtp://127.0.0.1:${port}`;
      assert.equal(JSON.parse(tp.stdout).scope, scope);
      for (const b of bases) await readyUntil(b, pausedAs(scope), "paused by transport");
      const all = await cli(["resume", "--all", "--json"], env);
      assert.deepEqual(JSON.parse(all.stdout).resumed, [scope]);
      for (const b of bases) await readyUntil(b, isReady, "ready after resume --all");

      // Every mail went exactly once.
      assert.ok([...smtp.countByMessageId().values()].every((n) => n === 1));
      for (const r of relays) assert.equal(await r.stop(), 0);
    });
  });
}

it("pause and resume refuse what they cannot read, with exit 2 and what to write", async (t) => {
  const fx = await freshSqlite(t);
  const env = { DATABASE_URL: fx.url };
  const both = await cli(["pause", "--transport", "smtp://mx:25", "--sender", "a.example"], env);
  assert.equal(both.code, 2);
  assert.match(both.stderr, /either a transport or a sender domain, not both/);
  const bad = await cli(["pause", "--sender", "not a domain"], env);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /Expected a sender domain such as example\.com/);
  const r = await cli(["resume", "--all", "--sender", "a.example"], env);
  assert.equal(r.code, 2);
  const none = await cli(["resume"], env);
  assert.equal(none.code, 0);
  assert.match(none.stdout, /^all was not paused$/m);
});

it("relay --once (runOnce) while paused hands over nothing and returns; after resume it sends what is due", async (t) => {
  const fx = await freshSqlite(t);
  const smtp = await startTestSmtp();
  t.after(() => smtp.close());
  const prisma: any = (await prismaClientFor(fx.url, t)).$extends(mailOutbox({ defaultFrom: "app@example.com" }));
  await prisma.outboxEmail.enqueue({ to: "ann@example.com", subject: "once", text: "x" });
  await pauseRelays(fx.url, { transport: smtp.url, by: "test" });
  const relay = createRelay({ databaseUrl: fx.url, transport: smtp.url, logger: false });
  const paused = await relay.runOnce();
  assert.equal(paused.claimed, 0);
  assert.equal(smtp.messages.length, 0);
  await resumeRelays(fx.url, { transport: smtp.url });
  const resumed = await relay.runOnce();
  assert.equal(resumed.sent, 1);
  assert.equal(smtp.messages.length, 1);
  await relay.stop();
});

it("a pause releases mail claimed but not started (the attempt not counted) while the hand-off in flight finishes", async (t) => {
  const fx = await freshSqlite(t);
  let stalled = false;
  const smtp = await startTestSmtp({
    faults: (ctx) => {
      if (ctx.phase !== "data" || stalled) return undefined;
      stalled = true;
      return { stallMs: 1500 };
    },
  });
  t.after(() => smtp.close());
  const prisma: any = (await prismaClientFor(fx.url, t)).$extends(mailOutbox({ defaultFrom: "app@example.com" }));
  for (let i = 0; i < 5; i++) await prisma.outboxEmail.enqueue({ to: `r${i}@example.com`, subject: `m ${i}`, text: "x" });
  const relay = createRelay({ databaseUrl: fx.url, transport: smtp.url, concurrency: 1, batchSize: 5, pollIntervalMs: 50, logger: false, listen: false });
  t.after(() => relay.stop({ deadlineMs: 3000 }));
  await relay.start();
  const until = async (cond: () => boolean, what: string) => {
    const deadline = Date.now() + 10_000;
    while (!cond()) {
      if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}; counts ${JSON.stringify(relay.counts())}`);
      await sleep(20);
    }
  };
  await until(() => smtp.mailFroms.length === 1, "the first hand-off to start");
  assert.equal(relay.counts().claimed, 5, "one batch claimed: one in flight, four queued");
  await pauseRelays(fx.url, { by: "test" });
  await until(() => relay.counts().released === 4, "the four queued mails to be released");
  await until(() => relay.counts().sent === 1, "the hand-off in flight to finish");
  const db = await openDatabase(fx.url);
  try {
    assert.equal(db.dialect, "sqlite");
    const rows = (db.dialect === "sqlite" ? db.db.prepare("SELECT status, attempts FROM mail_outbox ORDER BY status").all() : []) as { status: string; attempts: number }[];
    assert.deepEqual(rows.filter((r) => r.status === "pending").map((r) => r.attempts), [0, 0, 0, 0], "released without counting the attempt");
  } finally {
    await db.close();
  }
  await sleep(QUIET_MS);
  assert.equal(smtp.messages.length, 1);
  await resumeRelays(fx.url, {});
  await smtp.waitFor(5, 10_000);
});
