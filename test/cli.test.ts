/**
 * The `mail-outbox` CLI: exit statuses, text and JSON output, dry runs, refusals, secrets, and the
 * relay command against a real SMTP server. Most tests run `main()` in-process; some run the real
 * program as a subprocess (`node --import tsx src/cli.ts ...`).
 */
import { test, describe } from "node:test";
import assert from "node:assert/strict";
import { EventEmitter } from "node:events";
import { execFile, spawn } from "node:child_process";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { main } from "../src/cli.js";
import { openDatabase, toSqliteTime, type Db, type SqliteDb } from "../src/db.js";
import { newId } from "../src/ids.js";
import { freshPostgres, freshSqlite, sqliteOf } from "./support/db.js";
import { needPostgres } from "./support/services.js";
import { startTestSmtp } from "../testkit/smtp.js";

const ROOT = fileURLToPath(new URL("../", import.meta.url));
const SECRET = "s3cr3t-pw";

interface Run {
  code: number;
  stdout: string;
  stderr: string;
  stdoutBytes: Buffer;
}

function collector() {
  const chunks: Buffer[] = [];
  return {
    write(chunk: string | Uint8Array) {
      chunks.push(typeof chunk === "string" ? Buffer.from(chunk) : Buffer.from(chunk));
      return true;
    },
    bytes: () => Buffer.concat(chunks),
  };
}

/** Run the CLI in-process. */
async function cli(args: string[], env: Record<string, string | undefined> = {}, signals?: EventEmitter): Promise<Run> {
  const stdout = collector();
  const stderr = collector();
  const code = await main(args, { stdout, stderr, env: { ...env }, ...(signals ? { signals: signals as never } : {}) });
  return { code, stdout: stdout.bytes().toString("utf8"), stderr: stderr.bytes().toString("utf8"), stdoutBytes: stdout.bytes() };
}

/** tsx's loader by URL, so the program also starts in a directory outside this repository. */
const TSX = import.meta.resolve("tsx");

/** Run the CLI as a real program (in `cwd`, by default the repository). */
function cliProcess(args: string[], env: Record<string, string | undefined>, cwd = ROOT): Promise<Run> {
  return new Promise((resolve) => {
    const { DATABASE_URL: _d, MAIL_OUTBOX_TRANSPORT: _t, ...base } = process.env;
    execFile(
      process.execPath,
      ["--import", TSX, path.join(ROOT, "src/cli.ts"), ...args],
      { cwd, env: { ...base, ...env }, encoding: "buffer", timeout: 60_000 },
      (error, stdout, stderr) => {
        const code = error ? (typeof error.code === "number" ? error.code : -1) : 0;
        resolve({ code, stdout: stdout.toString("utf8"), stderr: stderr.toString("utf8"), stdoutBytes: stdout });
      },
    );
  });
}

async function sqliteDb(t: { after(fn: () => Promise<void>): void }): Promise<{ db: SqliteDb; url: string }> {
  const fx = await freshSqlite();
  const db = await openDatabase(fx.url);
  assert.equal(db.dialect, "sqlite");
  t.after(async () => {
    await db.close();
    await fx.cleanup();
  });
  return { db: db as SqliteDb, url: fx.url };
}

const T0 = new Date("2025-03-01T12:00:00.000Z");

interface Seed {
  status?: string;
  to?: string[];
  subject?: string;
  attempts?: number;
  createdAt?: Date;
  updatedAt?: Date;
  uncertainHandoffs?: number;
  lastError?: string | null;
  raw?: Buffer;
}

/** A row as enqueue and the relay leave it. */
async function seed(db: Db, s: Seed = {}): Promise<{ id: string; messageId: string; raw: Buffer }> {
  const id = newId();
  const messageId = `<${id}@example.test>`;
  const to = s.to ?? ["ann@example.test"];
  const raw =
    s.raw ??
    Buffer.from(
      `From: app@example.test\r\nTo: ${to.join(", ")}\r\nSubject: ${s.subject ?? "hello"}\r\nMessage-ID: ${messageId}\r\nDate: Sat, 01 Mar 2025 12:00:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nbody\r\n`,
    );
  const createdAt = s.createdAt ?? T0;
  const v: Record<string, unknown> = {
    id,
    message_id: messageId,
    status: s.status ?? "pending",
    priority: 0,
    envelope_from: "app@example.test",
    envelope_to: JSON.stringify(to),
    subject: s.subject ?? "hello",
    raw,
    size: raw.length,
    attempts: s.attempts ?? 0,
    max_attempts: 5,
    send_at: createdAt,
    next_attempt_at: createdAt,
    last_error: s.lastError ?? null,
    uncertain_handoffs: s.uncertainHandoffs ?? 0,
    created_at: createdAt,
    updated_at: s.updatedAt ?? createdAt,
  };
  const cols = Object.keys(v);
  if (db.dialect === "postgresql") {
    await db.pool.query(
      `INSERT INTO mail_outbox (${cols.join(", ")}) VALUES (${cols.map((c, i) => `$${i + 1}${c === "envelope_to" ? "::jsonb" : ""}`).join(", ")})`,
      Object.values(v),
    );
  } else {
    const vals = Object.fromEntries(Object.entries(v).map(([k, x]) => [k, x instanceof Date ? toSqliteTime(x) : x]));
    sqliteOf(db).db.prepare(`INSERT INTO mail_outbox (${cols.join(", ")}) VALUES (${cols.map((c) => `@${c}`).join(", ")})`).run(vals);
  }
  return { id, messageId, raw };
}

async function dump(db: Db): Promise<string> {
  if (db.dialect === "postgresql") {
    const a = await db.pool.query("SELECT * FROM mail_outbox ORDER BY id");
    const b = await db.pool.query("SELECT * FROM mail_outbox_attempt ORDER BY id");
    return JSON.stringify([a.rows, b.rows]);
  }
  return JSON.stringify([sqliteOf(db).db.prepare("SELECT * FROM mail_outbox ORDER BY id").all(), sqliteOf(db).db.prepare("SELECT * FROM mail_outbox_attempt ORDER BY id").all()]);
}

/** Every line of a log stream, parsed as JSON; fails on a line that is not JSON (plain text in a JSON log). */
function jsonLines(text: string): Record<string, unknown>[] {
  return text
    .split("\n")
    .filter((l) => l !== "")
    .map((l) => {
      try {
        return JSON.parse(l) as Record<string, unknown>;
      } catch {
        assert.fail(`not a JSON log line: ${JSON.stringify(l)}`);
      }
    });
}

/** A TCP port on 127.0.0.1 where nothing listens. */
async function closedPort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as net.AddressInfo).port;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

// ---------------------------------------------------------------------------------------------

describe("reading the outbox from the command line", () => {
  test("status --json, run as a real program, exits 0 and prints every status with its count", async (t) => {
    const { db, url } = await sqliteDb(t);
    await seed(db, { status: "dead" });
    await seed(db, { status: "held", uncertainHandoffs: 1 });
    const r = await cliProcess(["status", "--json"], { DATABASE_URL: url });
    assert.equal(r.code, 0, r.stderr);
    const report = JSON.parse(r.stdout);
    assert.deepEqual(report.counts, { pending: 0, sending: 0, sent: 0, dead: 1, cancelled: 0, held: 1 });
    assert.equal(report.uncertain.total, 1);
    assert.match(report.at, /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/);
  });

  test("usage errors exit 2 as a real program, with one line on stderr and no stack trace", async (t) => {
    const { url } = await sqliteDb(t);
    for (const args of [["list", "--since", "1x"], ["nonsense"], ["list", "--status", "lost"], ["purge", "--status", "sent", "--older-than", "-1h"]]) {
      const r = await cliProcess(args, { DATABASE_URL: url });
      assert.equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
      assert.match(r.stderr, /^mail-outbox: /);
      assert.doesNotMatch(r.stderr, /\n\s+at /, "no stack trace");
    }
  });

  test("status text shows every status, the uncertain warning and the time of the next attempt", async (t) => {
    const { db, url } = await sqliteDb(t);
    await seed(db, { status: "sent", uncertainHandoffs: 2 });
    const r = await cli(["status"], { DATABASE_URL: url });
    assert.equal(r.code, 0, r.stderr);
    for (const s of ["pending", "sending", "sent", "dead", "cancelled", "held"]) assert.match(r.stdout, new RegExp(`^${s}\\s+\\d`, "m"));
    assert.match(r.stdout, /UNCERTAIN: 1 mail may have reached the MTA/);
  });

  test("list prints an aligned table newest first, marks uncertain mails, and filters by status, recipient, time and limit", async (t) => {
    const { db, url } = await sqliteDb(t);
    const a = await seed(db, { status: "sent", to: ["ann@example.test"], createdAt: new Date("2025-03-01T10:00:00Z"), subject: "first" });
    const b = await seed(db, { status: "held", to: ["bob@example.test", "carl@example.test"], createdAt: new Date("2025-03-01T11:00:00Z"), uncertainHandoffs: 1, subject: "second" });
    const r = await cli(["list"], { DATABASE_URL: url });
    assert.equal(r.code, 0, r.stderr);
    const lines = r.stdout.trimEnd().split("\n");
    assert.match(lines[0]!, /^ID\s+STATUS\s+TRIES\s+CREATED\s+NEXT\s+TO\s+SUBJECT$/);
    assert.ok(lines[1]!.startsWith(b.id));
    assert.match(lines[1]!, /held UNCERTAIN .*2025-03-01T11:00:00Z\s+-\s+bob@example\.test \+1\s+second/);
    assert.ok(lines[2]!.startsWith(a.id));
    assert.equal(lines[1]!.indexOf("CREATED") === -1 ? lines[0]!.indexOf("CREATED") : -1, lines[0]!.indexOf("CREATED"));
    assert.equal(lines[1]!.indexOf("2025-03-01T11"), lines[0]!.indexOf("CREATED"), "columns are aligned");

    const json = async (...args: string[]) => {
      const x = await cli(["--json", "list", ...args], { DATABASE_URL: url });
      assert.equal(x.code, 0, x.stderr);
      return (JSON.parse(x.stdout) as { id: string }[]).map((m) => m.id);
    };
    assert.deepEqual(await json("--status", "sent"), [a.id]);
    assert.deepEqual(await json("--status", "sent,held"), [b.id, a.id]);
    assert.deepEqual(await json("--to", "CARL@example.test"), [b.id]);
    assert.deepEqual(await json("--recipient", "ann@example.test"), [a.id]);
    assert.deepEqual(await json("--since", "2025-03-01T10:30Z"), [b.id]);
    assert.deepEqual(await json("--until", "2025-03-01T10:30:00+00:00"), [a.id]);
    assert.deepEqual(await json("--uncertain"), [b.id]);
    assert.deepEqual(await json("--limit", "1"), [b.id]);
    assert.deepEqual(await json("--to", "' OR 1=1 --"), []);
    assert.deepEqual(await json("--to", "%"), []);
    assert.deepEqual(await json("--to", "_"), []);

    for (const bad of [["--since", "yesterday"], ["--since", "2025-02-30"], ["--until", "1e9d"], ["--limit", "0"], ["--limit", "10001"], ["--limit", "1e3"], ["--status", "pending' OR 1=1 --"], ["--status", ""]]) {
      const x = await cli(["list", ...bad], { DATABASE_URL: url });
      assert.equal(x.code, 2, `${bad.join(" ")}: ${x.stderr}`);
      assert.equal(x.stdout, "");
    }
  });

  test("show prints the fields, then the attempts timeline; --raw writes the exact message bytes; unknown ids exit 1, malformed ids exit 2", async (t) => {
    const { db, url } = await sqliteDb(t);
    const raw = Buffer.concat([Buffer.from("Subject: bytes\r\n\r\n"), Buffer.from([0xe9, 0x00, 0xff, 0x0d, 0x0a])]);
    const m = await seed(db, { status: "dead", attempts: 5, lastError: "550 5.1.1 <ann@example.test>: Recipient address rejected", raw });
    db.db.prepare(
      `INSERT INTO mail_outbox_attempt (id, email_id, attempt, relay, started_at, duration_ms, outcome, response, response_code, error_code, error)
       VALUES (?, ?, 1, 'relay-a', ?, 35, 'permanent', '550 5.1.1 <ann@example.test>: Recipient address rejected', 550, 'EENVELOPE', NULL)`,
    ).run(newId(), m.id, toSqliteTime(new Date("2025-03-01T12:00:05Z")));

    const r = await cli(["show", m.messageId], { DATABASE_URL: url });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, new RegExp(`^id:\\s+${m.id}$`, "m"));
    assert.match(r.stdout, /^status:\s+dead$/m);
    assert.match(r.stdout, /^last error:\s+550 5\.1\.1/m);
    assert.match(r.stdout, /^attempts:\n {2}2025-03-01T12:00:05\.000Z {2}#1 {2}permanent\s+relay-a {2}35ms {2}550 5\.1\.1 .*\(EENVELOPE\)$/m);

    const rawRun = await cli(["show", m.id, "--raw"], { DATABASE_URL: url });
    assert.equal(rawRun.code, 0);
    assert.ok(rawRun.stdoutBytes.equals(raw), "raw bytes unchanged");

    const jsonRun = await cli(["show", m.id.slice(0), "--json", "--raw"], { DATABASE_URL: url });
    const parsed = JSON.parse(jsonRun.stdout);
    assert.equal(Buffer.from(parsed.raw, "base64").equals(raw), true);
    assert.equal(parsed.attemptLog.length, 1);

    assert.equal((await cli(["show", newId()], { DATABASE_URL: url })).code, 1);
    assert.equal((await cli(["show", "<nobody@example.test>"], { DATABASE_URL: url })).code, 1);
    const bad = await cli(["show", "' OR 1=1 --"], { DATABASE_URL: url });
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /neither a mail id .* nor a Message-ID/);
  });

  test("a SQLite URL naming a missing file is refused without creating it", async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), "mail-outbox-cli-"));
    try {
      const file = path.join(dir, "typo.db");
      const r = await cli(["status"], { DATABASE_URL: `file:${file}` });
      assert.equal(r.code, 2);
      assert.match(r.stderr, /does not exist/);
      await assert.rejects(readFile(file));
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe("changing the outbox from the command line", () => {
  test("replay --dry-run --json reports the selection and writes nothing; the real replay keeps the Message-ID and resets attempts", async (t) => {
    const { db, url } = await sqliteDb(t);
    const dead = await seed(db, { status: "dead", attempts: 5, lastError: "550 no" });
    await seed(db, { status: "sent" });
    const before = await dump(db);
    const dry = await cli(["replay", "--status", "dead", "--dry-run", "--json"], { DATABASE_URL: url });
    assert.equal(dry.code, 0, dry.stderr);
    const plan = JSON.parse(dry.stdout);
    assert.equal(plan.dryRun, true);
    assert.deepEqual(plan.replayed, [{ id: dead.id, messageId: dead.messageId, from: "dead" }]);
    assert.equal(await dump(db), before, "dry run wrote nothing");

    const real = await cli(["replay", dead.messageId], { DATABASE_URL: url });
    assert.equal(real.code, 0, real.stderr);
    assert.match(real.stdout, /^replayed 1 mail$/m);
    const shown = JSON.parse((await cli(["show", dead.id, "--json"], { DATABASE_URL: url })).stdout);
    assert.equal(shown.status, "pending");
    assert.equal(shown.messageId, dead.messageId);
    assert.equal(shown.attempts, 0);
    assert.equal(shown.attemptLog.at(-1).outcome, "replayed");
  });

  test("replay refuses a selection that matches everything, and --all needs --yes; both exit 2 and change nothing", async (t) => {
    const { db, url } = await sqliteDb(t);
    await seed(db, { status: "dead" });
    const before = await dump(db);
    const bare = await cli(["replay"], { DATABASE_URL: url });
    assert.equal(bare.code, 2);
    assert.match(bare.stderr, /^mail-outbox: Refusing to replay every dead and held mail/);
    const noYes = await cli(["replay", "--all"], { DATABASE_URL: url });
    assert.equal(noYes.code, 2);
    assert.match(noYes.stderr, /add --yes/);
    assert.equal(await dump(db), before);
    const dry = await cli(["replay", "--all", "--dry-run"], { DATABASE_URL: url });
    assert.equal(dry.code, 0);
    assert.match(dry.stdout, /would replay 1 mail \(dry run/);
    assert.equal(await dump(db), before);
    const yes = await cli(["replay", "--all", "--yes"], { DATABASE_URL: url });
    assert.equal(yes.code, 0, yes.stderr);
    assert.match(yes.stdout, /^replayed 1 mail$/m);
  });

  test("replay and cancel exit 1 and say why when a named mail is in the wrong state or missing", async (t) => {
    const { db, url } = await sqliteDb(t);
    const pending = await seed(db, { status: "pending" });
    const sent = await seed(db, { status: "sent" });
    const r = await cli(["replay", pending.id, newId()], { DATABASE_URL: url });
    assert.equal(r.code, 1);
    assert.match(r.stdout, /skipped .* pending: it is pending already/);
    assert.match(r.stdout, /not found: /);

    const c = await cli(["cancel", pending.id, sent.id], { DATABASE_URL: url });
    assert.equal(c.code, 1);
    assert.match(c.stdout, /^cancelled 1 mail$/m);
    assert.match(c.stdout, new RegExp(`not cancelled ${sent.id} .* sent: it was handed over`));
    assert.equal((await cli(["cancel"], { DATABASE_URL: url })).code, 2);
    assert.equal((await cli(["cancel", "' OR 1=1 --"], { DATABASE_URL: url })).code, 2);
  });

  test("purge needs --status and --older-than (or --all --yes), refuses statuses still in play, and --dry-run writes nothing", async (t) => {
    const { db, url } = await sqliteDb(t);
    await seed(db, { status: "sent", updatedAt: new Date("2024-01-01T00:00:00Z") });
    await seed(db, { status: "sent", updatedAt: new Date() });
    await seed(db, { status: "held", updatedAt: new Date("2024-01-01T00:00:00Z") });
    const before = await dump(db);
    for (const args of [
      ["purge"],
      ["purge", "--status", "sent"],
      ["purge", "--older-than", "30d"],
      ["purge", "--status", "held", "--older-than", "30d"],
      ["purge", "--status", "sent", "--older-than", "30 days"],
      ["purge", "--status", "sent", "--older-than", "1e9d"],
      ["purge", "--all"],
    ]) {
      const r = await cli(args, { DATABASE_URL: url });
      assert.equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
    }
    const dry = await cli(["purge", "--status", "sent", "--older-than", "30d", "--dry-run", "--json"], { DATABASE_URL: url });
    assert.equal(dry.code, 0, dry.stderr);
    assert.equal(JSON.parse(dry.stdout).deleted, 1);
    assert.equal(await dump(db), before);
    const real = await cli(["purge", "--status", "sent", "--older-than", "30d"], { DATABASE_URL: url });
    assert.equal(real.code, 0, real.stderr);
    assert.match(real.stdout, /^deleted 1 mail \(sent 1, dead 0, cancelled 0\) last changed before \d{4}-/);
    const counts = JSON.parse((await cli(["status", "--json"], { DATABASE_URL: url })).stdout).counts;
    assert.equal(counts.sent, 1);
    assert.equal(counts.held, 1);
  });
});

describe("secrets", () => {
  test("a database password never appears in any output of any command, also when the database is unreachable or with debug on", async () => {
    const port = await closedPort();
    const url = `postgresql://mailer:${SECRET}@127.0.0.1:${port}/outbox`;
    const transport = `smtp://relay:${SECRET}@127.0.0.1:${port}`;
    const id = newId();
    const commands = [
      ["status"],
      ["status", "--json"],
      ["list", "--to", "ann@example.test"],
      ["show", id],
      ["replay", id],
      ["replay", "--all", "--yes"],
      ["cancel", id],
      ["purge", "--status", "sent", "--older-than", "30d"],
      ["purge", "--status", "sent", "--older-than", "30d", "--dry-run", "--json"],
      ["migrate"],
      ["migrate", "--dry-run"],
      ["doctor"],
      ["doctor", "--json"],
      ["relay", "--once"],
      ["list", "--since", "bogus"],
      ["bogus-command"],
    ];
    const outputs: string[] = [];
    for (const args of commands) {
      for (const debug of ["0", "1"]) {
        const viaFlag = await cli(["--database-url", url, "--transport", transport, ...args], { MAIL_OUTBOX_DEBUG: debug });
        const viaEnv = await cli(args, { DATABASE_URL: url, MAIL_OUTBOX_TRANSPORT: transport, MAIL_OUTBOX_DEBUG: debug });
        for (const r of [viaFlag, viaEnv]) {
          assert.notEqual(r.code, 0, `${args.join(" ")} should fail on an unreachable database`);
          outputs.push(`$ ${args[0]}\n${r.stdout}\n${r.stderr}`);
        }
      }
    }
    const all = outputs.join("\n");
    assert.ok(!all.includes(SECRET), `the password leaked:\n${all.split("\n").filter((l) => l.includes(SECRET)).join("\n")}`);
    assert.match(all, /Cannot reach the database at postgresql:\/\/mailer:\*\*\*@127\.0\.0\.1/);
  });

  test("a database password never appears in the output of any command on a reachable PostgreSQL", async (t) => {
    if (!(await needPostgres(t))) return;
    const fx = await freshPostgres();
    const u = new URL(fx.url);
    u.username = "postgres";
    u.password = SECRET; // trust authentication accepts it
    const url = u.toString();
    const db = await openDatabase(fx.url);
    t.after(async () => {
      await db.close();
      await fx.cleanup();
    });
    const m = await seed(db, { status: "dead", lastError: "550 no" });
    const outputs: string[] = [];
    for (const args of [
      ["status"],
      ["list"],
      ["--json", "list"],
      ["show", m.id],
      ["replay", "--status", "dead", "--dry-run"],
      ["replay", m.id],
      ["cancel", m.id],
      ["purge", "--status", "cancelled", "--older-than", "0s", "--dry-run"],
      ["migrate", "--dry-run"],
      ["doctor", "--transport", `smtp://u:${SECRET}@127.0.0.1:${await closedPort()}`],
      ["show", newId()],
    ]) {
      const r = await cli(args, { DATABASE_URL: url, MAIL_OUTBOX_DEBUG: "1" });
      outputs.push(`$ ${args[0]} -> ${r.code}\n${r.stdout}\n${r.stderr}`);
    }
    const all = outputs.join("\n");
    assert.ok(!all.includes(SECRET), `the password leaked:\n${all}`);
    assert.match(all, /ok {4}database {3}reachable: postgresql:\/\/postgres:\*\*\*@/);
    assert.match(all, /FAIL {2}transport/);
  });
});

describe("the relay command", () => {
  test("relay --once hands the due mail to the MTA and prints the counts as JSON", async (t) => {
    const { db, url } = await sqliteDb(t);
    const smtp = await startTestSmtp();
    t.after(() => smtp.close());
    const a = await seed(db, { status: "pending", to: ["ann@example.test"] });
    const b = await seed(db, { status: "pending", to: ["bob@example.test"] });
    const r = await cli(["relay", "--once", "--json", "--relay-id", "cli-test"], { DATABASE_URL: url, MAIL_OUTBOX_TRANSPORT: smtp.url, MAIL_OUTBOX_LOG_LEVEL: "warn" });
    assert.equal(r.code, 0, r.stderr);
    const counts = JSON.parse(r.stdout);
    assert.equal(counts.sent, 2);
    assert.deepEqual(smtp.messages.map((m) => m.messageId).sort(), [a.messageId, b.messageId].sort());
    const shown = JSON.parse((await cli(["show", a.id, "--json"], { DATABASE_URL: url })).stdout);
    assert.equal(shown.status, "sent");
    assert.equal(shown.attemptLog[0].relay, "cli-test");
  });

  test("relay stops gracefully on SIGTERM and exits 0; a second signal makes it exit at once with 130", async (t) => {
    const { db, url } = await sqliteDb(t);
    const smtp = await startTestSmtp();
    t.after(() => smtp.close());
    await seed(db, { status: "pending" });
    const env = { DATABASE_URL: url, MAIL_OUTBOX_TRANSPORT: smtp.url, MAIL_OUTBOX_LOG_LEVEL: "info" };

    const signals = new EventEmitter();
    const running = cli(["relay", "--poll", "50ms", "--stop-timeout", "2s"], env, signals);
    await smtp.waitFor(1, 10_000);
    signals.emit("SIGTERM");
    const r = await running;
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^stopped: claimed 1, sent 1/m);
    const log = jsonLines(r.stderr);
    assert.ok(log.some((l) => l.signal === "SIGTERM" && /^stopping; hand-offs in flight get 2s/.test(String(l.msg))), r.stderr);
    assert.equal(signals.listenerCount("SIGTERM"), 0, "signal handlers removed");

    const signals2 = new EventEmitter();
    const running2 = cli(["relay", "--poll", "50ms"], env, signals2);
    await new Promise((resolve) => setTimeout(resolve, 500));
    signals2.emit("SIGINT");
    signals2.emit("SIGINT");
    const r2 = await running2;
    assert.equal(r2.code, 130);
    const log2 = jsonLines(r2.stderr);
    assert.ok(log2.some((l) => l.signal === "SIGINT" && l.level === 40 && /^exiting at once/.test(String(l.msg))), r2.stderr);
  });

  test("the relay program exits 0 after a graceful stop on a real SIGTERM", async (t) => {
    const { db, url } = await sqliteDb(t);
    const smtp = await startTestSmtp();
    t.after(() => smtp.close());
    const m = await seed(db, { status: "pending" });
    const { DATABASE_URL: _d, MAIL_OUTBOX_TRANSPORT: _t, ...base } = process.env;
    const child = spawn(process.execPath, ["--import", "tsx", path.join(ROOT, "src/cli.ts"), "relay", "--poll", "100ms"], {
      cwd: ROOT,
      env: { ...base, DATABASE_URL: url, MAIL_OUTBOX_TRANSPORT: smtp.url },
      stdio: ["ignore", "pipe", "pipe"],
    });
    t.after(() => void child.kill("SIGKILL"));
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
    await smtp.waitFor(1, 20_000);
    assert.equal(smtp.messages[0]?.messageId, m.messageId);
    child.kill("SIGTERM");
    assert.equal(await exited, 0, stderr);
    assert.match(stdout, /^stopped: claimed 1, sent 1/m);
    // stderr is the relay's JSON log from the first line to the last, the signal notice included.
    const log = jsonLines(stderr);
    assert.ok(log.some((l) => l.msg === "relay stopped"));
    assert.ok(log.some((l) => l.signal === "SIGTERM" && /^stopping/.test(String(l.msg))), stderr);
  });

  test("relay refuses to start without a transport (exit 2) or with bad tuning values (exit 2)", async (t) => {
    const { url } = await sqliteDb(t);
    assert.equal((await cli(["relay", "--once"], { DATABASE_URL: url })).code, 2);
    for (const bad of [["--concurrency", "0"], ["--batch-size", "x"], ["--lease", "0s"], ["--poll", "fast"], ["--lease-expiry-policy", "maybe"]]) {
      const r = await cli(["relay", "--once", ...bad], { DATABASE_URL: url, MAIL_OUTBOX_TRANSPORT: "smtp://127.0.0.1:1" });
      assert.equal(r.code, 2, `${bad.join(" ")}: ${r.stderr}`);
    }
  });
});

describe("init", () => {
  test("init appends the outbox models for the schema's provider once, and says so when they are already there", async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), "mail-outbox-init-"));
    try {
      const schema = path.join(dir, "schema.prisma");
      const original = `generator client {\n  provider = "prisma-client"\n  output   = "./generated"\n}\n\ndatasource db {\n  provider = "postgresql"\n}\n\nmodel User {\n  id Int @id\n}\n`;
      await writeFile(schema, original);
      const first = await cli(["init", "--schema", schema]);
      assert.equal(first.code, 0, first.stderr);
      assert.match(first.stdout, /Added the outbox models/);
      assert.match(first.stdout, /npx prisma migrate dev --name mail_outbox/);
      assert.match(first.stdout, /notify-trigger\.sql/);
      const text = await readFile(schema, "utf8");
      assert.ok(text.startsWith(original));
      assert.equal(text.match(/model OutboxEmail \{/g)?.length, 1);
      assert.match(text, /@db\.Timestamptz\(3\)/, "the PostgreSQL flavour of the models");

      // Prisma itself accepts the result (validate needs no schema engine download when the variable names a file).
      const validate = await new Promise<{ code: number; out: string }>((resolve) =>
        execFile(
          path.join(ROOT, "node_modules/.bin/prisma"),
          ["validate", "--schema", schema],
          { cwd: dir, env: { ...process.env, PRISMA_SCHEMA_ENGINE_BINARY: process.execPath, PRISMA_HIDE_UPDATE_MESSAGE: "1" }, timeout: 60_000 },
          (error, stdout, stderr) => resolve({ code: error ? 1 : 0, out: `${stdout}${stderr}` }),
        ),
      );
      assert.equal(validate.code, 0, validate.out);
      assert.match(validate.out, /is valid/);

      const second = await cli(["init", "--schema", schema]);
      assert.equal(second.code, 0);
      assert.match(second.stdout, /already has the outbox models; nothing was changed/);
      assert.equal(await readFile(schema, "utf8"), text);

      const lite = path.join(dir, "lite.prisma");
      await writeFile(lite, `datasource db {\n  provider = "sqlite"\n}\n`);
      const sqlserver = path.join(dir, "sqlserver.prisma");
      await writeFile(sqlserver, `datasource db {\n  provider = "sqlserver"\n}\n`);
      const unsupported = await cli(["init", "--schema", sqlserver]);
      assert.equal(unsupported.code, 2);
      assert.match(unsupported.stderr, /sqlserver/);
      assert.equal((await cli(["init", "--schema", path.join(dir, "missing.prisma")])).code, 2);
      const contradiction = await cli(["init", "--schema", lite, "--provider", "postgresql"]);
      assert.equal(contradiction.code, 2);
      assert.match(contradiction.stderr, /datasource says sqlite, but provider postgresql/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe("migrate and doctor", () => {
  test("migrate creates the tables on a new SQLite file, and doctor then passes the database and schema checks", async (t) => {
    const dir = await mkdtemp(path.join(os.tmpdir(), "mail-outbox-migrate-"));
    t.after(() => rm(dir, { recursive: true, force: true }));
    const url = `file:${path.join(dir, "new.db")}`;
    const smtp = await startTestSmtp();
    t.after(() => smtp.close());
    const m = await cli(["migrate"], { DATABASE_URL: url });
    assert.equal(m.code, 0, m.stderr);
    assert.match(m.stdout, /0001_init/);
    const d = await cli(["doctor", "--json"], { DATABASE_URL: url, MAIL_OUTBOX_TRANSPORT: smtp.url });
    assert.equal(d.code, 0, d.stdout + d.stderr);
    const report = JSON.parse(d.stdout);
    assert.equal(report.ok, true);
    assert.deepEqual(report.checks.map((c: { name: string }) => c.name), ["database", "schema", "times", "transport"]);
    const text = await cli(["doctor"], { DATABASE_URL: url });
    assert.equal(text.code, 1, "no transport configured");
    assert.match(text.stdout, /^ok {4}database/m);
    assert.match(text.stdout, /^FAIL {2}transport {2}not configured/m);
  });
});

describe("database URLs in output", () => {
  test("a SQLite URL is shown as the user gave it (file:./dev.db), not as file:///dev.db, in errors, doctor and the relay's start log", async (t) => {
    const dir = await mkdtemp(path.join(os.tmpdir(), "mail-outbox-url-"));
    t.after(() => rm(dir, { recursive: true, force: true }));
    assert.equal((await cli(["migrate"], { DATABASE_URL: `file:${path.join(dir, "dev.db")}` })).code, 0);
    const smtp = await startTestSmtp();
    t.after(() => smtp.close());
    const env = { DATABASE_URL: "file:./dev.db", MAIL_OUTBOX_TRANSPORT: smtp.url };

    const missing = await cliProcess(["show", newId()], env, dir);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /in the outbox at file:\.\/dev\.db;/);
    const doctor = await cliProcess(["doctor"], env, dir);
    assert.match(doctor.stdout, /reachable: file:\.\/dev\.db\b/);

    const { DATABASE_URL: _d, MAIL_OUTBOX_TRANSPORT: _t, ...base } = process.env;
    const child = spawn(process.execPath, ["--import", TSX, path.join(ROOT, "src/cli.ts"), "relay"], { cwd: dir, env: { ...base, ...env }, stdio: ["ignore", "pipe", "pipe"] });
    t.after(() => void child.kill("SIGKILL"));
    let stderr = "";
    const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no "relay started" line:\n${stderr}`)), 30_000);
      child.stderr.on("data", (d: Buffer) => {
        stderr += d.toString();
        if (stderr.includes('"relay started"')) {
          clearTimeout(timer);
          resolve();
        }
      });
    });
    child.kill("SIGTERM");
    assert.equal(await exited, 0, stderr);
    const started = jsonLines(stderr).find((l) => l.msg === "relay started");
    assert.equal(started?.database, "file:./dev.db");
    assert.doesNotMatch(`${missing.stderr}${doctor.stdout}${stderr}`, /file:\/\/\//);
  });
});

describe("help", () => {
  test("relay --help shows each default once, and every command's help lists the global options", async () => {
    const relay = await cli(["relay", "--help"]);
    assert.equal(relay.code, 0);
    // One block per option: its first line starts with "  -", continuation lines are indented further.
    const options = relay.stdout.split(/\n(?= {2}-)/).map((b) => b.replace(/\s+/g, " "));
    for (const block of options) assert.ok((block.match(/\(default/g) ?? []).length <= 1, `default shown twice: ${block}`);
    assert.ok(options.some((b) => /--stop-timeout <duration> .*\(default: 10s\)/.test(b)));
    for (const command of ["relay", "status", "list", "show", "replay", "cancel", "purge", "init", "migrate", "doctor"]) {
      const r = await cli([command, "--help"]);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /^Global Options:$/m, command);
      for (const flag of ["--database-url <url>", "--transport <spec>", "--json"]) assert.ok(r.stdout.includes(flag), `${command} --help lists ${flag}`);
    }
    const real = await cliProcess(["help", "cancel"], {});
    assert.equal(real.code, 0);
    assert.match(real.stdout, /Global Options:[\s\S]*--database-url/);
  });
});

describe("cancel and replay keep their promises", () => {
  test("cancelling a mail cancelled already exits 0 and says so; cancelling a sent mail exits 1 with the reason", async (t) => {
    const { db, url } = await sqliteDb(t);
    const pending = await seed(db, { status: "pending" });
    const sent = await seed(db, { status: "sent" });
    assert.equal((await cli(["cancel", pending.id], { DATABASE_URL: url })).code, 0);
    const before = await dump(db);

    const again = await cli(["cancel", pending.messageId], { DATABASE_URL: url });
    assert.equal(again.code, 0, again.stdout + again.stderr);
    assert.match(again.stdout, /^cancelled 0 mails, 1 cancelled already$/m);
    assert.match(again.stdout, new RegExp(`${pending.id} .* cancelled already: nothing to do`));
    const json = await cli(["--json", "cancel", pending.id], { DATABASE_URL: url });
    assert.equal(json.code, 0);
    assert.deepEqual(JSON.parse(json.stdout).alreadyCancelled, [{ id: pending.id, messageId: pending.messageId, status: "cancelled" }]);
    assert.equal(await dump(db), before, "nothing written for a mail cancelled already");

    const refused = await cli(["cancel", sent.id], { DATABASE_URL: url });
    assert.equal(refused.code, 1);
    assert.match(refused.stdout, new RegExp(`not cancelled ${sent.id} .* sent: it was handed over to the MTA already; it cannot be called back`));
  });

  test("a replay that would resend sent mail, by --status sent or by id, exits 2 and changes nothing without --yes", async (t) => {
    const { db, url } = await sqliteDb(t);
    const sent = await seed(db, { status: "sent" });
    const dead = await seed(db, { status: "dead" });
    const before = await dump(db);
    for (const args of [["replay", "--status", "sent"], ["replay", "--status", "dead,sent", "--since", "3650d"], ["replay", dead.id, sent.messageId]]) {
      const r = await cli(args, { DATABASE_URL: url });
      assert.equal(r.code, 2, `${args.join(" ")}: ${r.stdout}${r.stderr}`);
      assert.match(r.stderr, /^mail-outbox: Refusing to replay .*sent mail.*the MTA accepted .* already.*--yes/);
    }
    assert.equal(await dump(db), before, "nothing changed, the dead mail named with the sent one included");

    const dry = await cli(["replay", sent.id, "--dry-run"], { DATABASE_URL: url });
    assert.equal(dry.code, 0);
    assert.match(dry.stdout, /would replay 1 mail \(dry run/);
    assert.match(dry.stdout, /1 of them was sent already: the replay delivers it again and needs --yes/);
    assert.equal(await dump(db), before);

    const yes = await cli(["replay", "--status", "sent", "--yes"], { DATABASE_URL: url });
    assert.equal(yes.code, 0, yes.stderr);
    assert.match(yes.stdout, /^replayed 1 mail$/m);
    assert.equal(JSON.parse((await cli(["show", sent.id, "--json"], { DATABASE_URL: url })).stdout).status, "pending");
  });
});

describe("list tells what is going on with a mail", () => {
  test("list shows when pending mail is tried next and its last error, and marks a sent mail the MTA partly refused, in text and JSON", async (t) => {
    const { db, url } = await sqliteDb(t);
    const smtp = await startTestSmtp({
      faults: (ctx) =>
        ctx.phase !== "rcpt"
          ? undefined
          : ctx.recipient === "bob@example.test"
            ? { reply: 550, message: "5.1.1 <bob@example.test>: Recipient address rejected" }
            : ctx.recipient === "carl@example.test"
              ? { reply: 451, message: "4.3.0 try again later" }
              : undefined,
    });
    t.after(() => smtp.close());
    const partly = await seed(db, { status: "pending", to: ["ann@example.test", "bob@example.test"], subject: "partly" });
    const retry = await seed(db, { status: "pending", to: ["carl@example.test"], subject: "retry" });
    const relay = await cli(["relay", "--once", "--json"], { DATABASE_URL: url, MAIL_OUTBOX_TRANSPORT: smtp.url, MAIL_OUTBOX_LOG_LEVEL: "silent" });
    assert.equal(relay.code, 0, relay.stderr);
    assert.equal(JSON.parse(relay.stdout).sent, 1);

    const json = JSON.parse((await cli(["--json", "list"], { DATABASE_URL: url })).stdout) as Record<string, unknown>[];
    const p = json.find((m) => m.id === partly.id)!;
    const r = json.find((m) => m.id === retry.id)!;
    assert.equal(p.status, "sent");
    assert.equal(p.partlyRefused, true);
    assert.deepEqual((p.rejected as { recipient: string }[]).map((x) => x.recipient), ["bob@example.test"]);
    assert.equal(r.status, "pending");
    assert.equal(r.partlyRefused, false);
    assert.match(String(r.lastError), /451/);
    const next = new Date(String(r.nextAttemptAt));
    assert.ok(next.getTime() > Date.now(), "a retry is scheduled in the future");

    const text = await cli(["list"], { DATABASE_URL: url });
    assert.equal(text.code, 0, text.stderr);
    const lines = text.stdout.trimEnd().split("\n");
    const header = lines[0]!;
    const pLine = lines.findIndex((l) => l.startsWith(partly.id));
    const rLine = lines.findIndex((l) => l.startsWith(retry.id));
    assert.match(lines[pLine]!, /\bsent PARTLY REFUSED\b/);
    assert.match(lines[pLine + 1]!, /^ {2}refused 1 of 2: bob@example\.test \(550 5\.1\.1 /);
    assert.equal(lines[rLine]!.slice(header.indexOf("NEXT")).split(/\s+/)[0], next.toISOString().replace(/\.\d{3}Z$/, "Z"));
    assert.match(lines[rLine + 1]!, /^ {2}last error: .*451 4\.3\.0 try again later/);
    const shown = await cli(["show", partly.id], { DATABASE_URL: url });
    assert.match(shown.stdout, /^status:\s+sent \(PARTLY REFUSED: 1 of 2 recipients refused, see rejected\)$/m);
    assert.match(shown.stdout, /^rejected:\s+bob@example\.test: 550 5\.1\.1 /m);
  });
});

describe("what happened after the hand-off, from the command line", () => {
  test("show prints each recipient's timeline after the attempts, list filters and marks by fate, status counts the fates; text and JSON", async (t) => {
    const { db, url } = await sqliteDb(t);
    const a = await seed(db, { status: "sent", to: ["ann@example.test", "bob@example.test"], subject: "two", createdAt: new Date("2025-03-01T10:00:00Z") });
    const b = await seed(db, { status: "sent", to: ["carl@example.test"], subject: "one", createdAt: new Date("2025-03-01T11:00:00Z") });
    db.db.prepare("UPDATE mail_outbox SET accepted = envelope_to, mta_queue_id = '4BCD1234' WHERE status = 'sent'").run();
    let key = 0;
    const ev = (emailId: string, recipient: string, event: "queued" | "delivered" | "deferred" | "bounced" | "expired", at: string, extra: Record<string, unknown> = {}) => ({
      emailId,
      recipient,
      event,
      at: new Date(at),
      source: "log" as const,
      queueId: "4BCD1234",
      dsnStatus: null,
      remoteMta: null,
      reply: null,
      eventKey: `cli-test-${key++}`,
      ...extra,
    });
    await db.recordDeliveryEvents([
      ev(a.id, "", "queued", "2025-03-01T10:00:01Z"),
      ev(a.id, "ann@example.test", "delivered", "2025-03-01T10:00:02Z", { dsnStatus: "2.0.0", remoteMta: "mx.example.test[192.0.2.1]:25", reply: "250 2.0.0 Ok" }),
      ev(a.id, "bob@example.test", "deferred", "2025-03-01T10:00:03Z", { dsnStatus: "4.4.1", reply: "Connection timed out" }),
      ev(a.id, "bob@example.test", "bounced", "2025-03-01T10:05:00Z", { source: "dsn", dsnStatus: "5.1.1", remoteMta: "dns; mx.example.test", reply: "smtp; 550 5.1.1 user unknown" }),
      ev(b.id, "carl@example.test", "expired", "2025-03-06T11:00:00Z", { dsnStatus: "4.4.7", reply: "delivery temporarily suspended" }),
    ]);

    const shown = await cli(["show", a.id], { DATABASE_URL: url });
    assert.equal(shown.code, 0, shown.stderr);
    assert.match(shown.stdout, /\nafter the hand-off:\n {2}2025-03-01T10:00:01\.000Z {2}queued as 4BCD1234 by the MTA {2}\(log\)\n/);
    assert.match(shown.stdout, /^ {2}bob@example\.test {2}BOUNCED at 2025-03-01T10:05:00\.000Z\n {4}2025-03-01T10:00:03\.000Z {2}deferred {3}4\.4\.1 {2}Connection timed out {2}\(log\)\n {4}2025-03-01T10:05:00\.000Z {2}bounced {4}5\.1\.1 {2}via dns; mx\.example\.test {2}smtp; 550 5\.1\.1 user unknown {2}\(dsn\)$/m);
    assert.ok(shown.stdout.indexOf("attempts:") < shown.stdout.indexOf("after the hand-off:"), "after the attempts");
    const json = JSON.parse((await cli(["--json", "show", a.id], { DATABASE_URL: url })).stdout);
    assert.deepEqual(json.fates.map((f: { recipient: string; fate: string }) => `${f.recipient} ${f.fate}`), ["ann@example.test delivered", "bob@example.test bounced"]);
    assert.equal(json.fates[1].event.dsnStatus, "5.1.1");
    assert.equal(json.deliveryEvents.length, 4);
    assert.equal(json.deliveryEvents[0].queueId, "4BCD1234");

    const list = await cli(["list"], { DATABASE_URL: url });
    assert.equal(list.code, 0, list.stderr);
    const lines = list.stdout.trimEnd().split("\n");
    assert.match(lines[0]!, /^ID\s+STATUS\s+FATE\s+TRIES/);
    assert.match(lines[1]!, new RegExp(`^${b.id}\\s+sent\\s+expired\\s`));
    assert.match(lines[2]!, new RegExp(`^${a.id}\\s+sent\\s+1 bounced, 1 delivered\\s`));
    const ids = async (...args: string[]) => {
      const x = await cli(["--json", "list", ...args], { DATABASE_URL: url });
      assert.equal(x.code, 0, x.stderr);
      return (JSON.parse(x.stdout) as { id: string }[]).map((m) => m.id);
    };
    assert.deepEqual(await ids("--fate", "bounced"), [a.id]);
    assert.deepEqual(await ids("--fate", "expired"), [b.id]);
    assert.deepEqual(await ids("--fate", "delivered"), [a.id]);
    assert.deepEqual(await ids("--fate", "deferred"), []);
    const listed = JSON.parse((await cli(["--json", "list", "--fate", "expired"], { DATABASE_URL: url })).stdout);
    assert.equal(listed[0].fates[0].fate, "expired");
    for (const bad of ["lost", "BOUNCED", ""]) {
      const x = await cli(["list", "--fate", bad], { DATABASE_URL: url });
      assert.equal(x.code, 2, `--fate ${bad}: ${x.stderr}`);
      assert.match(x.stderr, /use one of delivered, deferred, bounced, expired/);
    }

    const status = await cli(["status"], { DATABASE_URL: url });
    assert.match(status.stdout, /\nAfter the hand-off \(recipients by current fate, as follow-log and ingest recorded it\):\n {2}delivered {2}1\n {2}deferred {3}0\n {2}bounced {4}1 {2}see: mail-outbox list --fate bounced\n {2}expired {4}1 {2}the MTA gave up/);
    const report = JSON.parse((await cli(["--json", "status"], { DATABASE_URL: url })).stdout);
    assert.deepEqual(report.fates, { delivered: 1, deferred: 0, bounced: 1, expired: 1 });
  });
});
