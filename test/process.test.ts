/**
 * The relay as a process (issue 11, item 8): what SIGTERM and SIGINT do, the exit statuses, a fatal
 * error as one JSON log line, no `sendmail` child outliving the relay, the relay as PID 1 (in a
 * new PID namespace, with `unshare`), and `follow-log`'s liveness. The relay runs as the real
 * program (`node --import tsx src/cli.ts relay`, a child process) on a fresh SQLite file; mail
 * goes to stand-in `sendmail` programs that hang (no MTA needed) or to the in-process SMTP server.
 * A stand-in's processes carry a marker in their command line and environment; after the relay
 * exits, /proc is scanned for it.
 */
import { describe, it } from "node:test";
import type { TestContext } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { randomUUID } from "node:crypto";
import { EventEmitter, once } from "node:events";
import net from "node:net";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { performance } from "node:perf_hooks";
import { PassThrough } from "node:stream";
import { fileURLToPath } from "node:url";
import nodemailer from "nodemailer";
import { mailOutbox, openDatabase, followLog } from "../src/index.js";
import { main } from "../src/cli/main.js";
import { createSendmailTransport, runningSendmailChildren } from "../src/sendmail.js";
import { createSendmailBsTransport } from "../src/sendmail-bs.js";
import { freshSqlite, prismaClientFor } from "./support/db.js";
import { startTestSmtp } from "../testkit/smtp.js";

const ROOT = fileURLToPath(new URL("../", import.meta.url));
const TSX = import.meta.resolve("tsx");
const CLI = path.join(ROOT, "src/cli.ts");

type Line = Record<string, unknown>;

function jsonLines(text: string): Line[] {
  return text
    .split("\n")
    .filter((l) => l !== "")
    .map((l) => {
      try {
        return JSON.parse(l) as Line;
      } catch {
        return assert.fail(`not a JSON log line: ${JSON.stringify(l)}\n--- stderr:\n${text}`);
      }
    });
}

/** The pids of processes whose command line or environment holds `marker` (zombies have neither). */
function processesWith(marker: string): number[] {
  const found: number[] = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    for (const file of ["cmdline", "environ"]) {
      try {
        if (readFileSync(`/proc/${entry}/${file}`).includes(marker)) {
          found.push(Number(entry));
          break;
        }
      } catch {
        // gone meanwhile, or not ours to read
      }
    }
  }
  return found;
}

/** Wait (up to `ms`) for `cond`, checking every 50 ms; false if it never held. */
async function until(cond: () => boolean, ms: number): Promise<boolean> {
  const end = performance.now() + ms;
  while (performance.now() < end) {
    if (cond()) return true;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return cond();
}

/**
 * A stand-in sendmail that never finishes. `ignoreTerm`: it ignores SIGTERM too (only SIGKILL ends
 * it). The marker is in its path (its command line) and exported (the environment of its children).
 */
function hangingSendmail(dir: string, ignoreTerm: boolean): { program: string; marker: string } {
  const marker = `hang-${randomUUID()}`;
  const program = path.join(dir, `sendmail-${marker}`);
  writeFileSync(program, `#!/bin/sh\nexport OUTBOX_TEST_MARKER=${marker}\n${ignoreTerm ? "trap '' TERM\n" : ""}cat > /dev/null\nwhile :; do sleep 1; done\n`, { mode: 0o755 });
  return { program, marker };
}

interface Running {
  readonly child: ChildProcess;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  stdout(): string;
  stderr(): string;
  /** Resolves when stderr holds a JSON line with this `msg`. */
  logged(msg: string, ms?: number): Promise<void>;
}

/** Start `command ...args` with the CLI's environment, collecting its output. */
function startProgram(t: TestContext, command: string, args: string[], env: Record<string, string>): Running {
  const { DATABASE_URL: _d, MAIL_OUTBOX_TRANSPORT: _t, MAIL_OUTBOX_LOG_LEVEL: _l, MAIL_OUTBOX_LOG_FORMAT: _f, ...base } = process.env;
  const child = spawn(command, args, { cwd: ROOT, env: { ...base, ...env }, stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  let err = "";
  const waiters: Array<() => void> = [];
  child.stdout!.on("data", (d: Buffer) => (out += d.toString()));
  child.stderr!.on("data", (d: Buffer) => {
    err += d.toString();
    for (const w of waiters.splice(0)) w();
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.on("exit", (code, signal) => resolve({ code, signal })));
  t.after(() => void child.kill("SIGKILL"));
  return {
    child,
    exited,
    stdout: () => out,
    stderr: () => err,
    logged(msg, ms = 30_000) {
      return new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no log line ${JSON.stringify(msg)} within ${ms} ms; stderr:\n${err}`)), ms);
        const check = () => {
          if (err.includes(`"msg":${JSON.stringify(msg)}`)) {
            clearTimeout(timer);
            resolve();
          } else {
            waiters.push(check);
          }
        };
        void exited.then(() => {
          if (!err.includes(`"msg":${JSON.stringify(msg)}`)) {
            clearTimeout(timer);
            reject(new Error(`exited before logging ${JSON.stringify(msg)}; stderr:\n${err}`));
          }
        });
        check();
      });
    },
  };
}

function startRelay(t: TestContext, args: string[], env: Record<string, string>): Running {
  return startProgram(t, process.execPath, ["--import", TSX, CLI, "relay", ...args], { MAIL_OUTBOX_LOG_FORMAT: "json", ...env });
}

/** A SQLite outbox with one pending mail; returns its URL and the mail's id. */
async function outboxWithMail(t: TestContext): Promise<{ url: string; id: string }> {
  const fx = await freshSqlite(t);
  const prisma: any = (await prismaClientFor(fx.url)).$extends(mailOutbox({ defaultFrom: "app@example.com" }));
  try {
    const mail = await prisma.outboxEmail.enqueue({ to: "ann@example.com", subject: "process", text: "hello" });
    return { url: fx.url, id: mail.id as string };
  } finally {
    await prisma.$disconnect();
  }
}

async function statusOf(url: string, id: string): Promise<{ status: string; attempts: number }> {
  const db = await openDatabase(url);
  try {
    const found = await db.findMail({ id }, false);
    assert.ok(found, `mail ${id} is in the outbox`);
    return { status: found.mail.status, attempts: found.mail.attempts };
  } finally {
    await db.close();
  }
}

const tmp = () => mkdtempSync(path.join(tmpdir(), "outbox-process-"));

describe("the relay's signals and exit statuses", () => {
  for (const scheme of ["sendmail", "sendmail-bs"] as const) {
    it(`${scheme}: SIGTERM stops the relay with exit 0 after its stop deadline, and no ${scheme} child outlives it (one that ignores SIGTERM too)`, async (t) => {
      const dir = tmp();
      t.after(() => rmSync(dir, { recursive: true, force: true }));
      const { url, id } = await outboxWithMail(t);
      const fake = hangingSendmail(dir, true);
      const relay = startRelay(t, ["--poll", "100ms", "--stop-timeout", "1s"], { DATABASE_URL: url, MAIL_OUTBOX_TRANSPORT: `${scheme}:${fake.program}` });
      await relay.logged("relay started");
      assert.ok(await until(() => processesWith(fake.marker).length > 0, 20_000), `the stand-in never ran; stderr:\n${relay.stderr()}`);
      relay.child.kill("SIGTERM");
      const { code } = await relay.exited;
      assert.equal(code, 0, relay.stderr());
      const log = jsonLines(relay.stderr());
      assert.ok(log.some((l) => l.signal === "SIGTERM" && /^stopping; hand-offs in flight get 1s/.test(String(l.msg))));
      assert.ok(log.some((l) => /stop deadline reached with hand-offs still in flight/.test(String(l.msg))), relay.stderr());
      assert.ok(log.some((l) => l.msg === "relay stopped"));
      assert.match(relay.stdout(), /^stopped: claimed 1\b/m);
      // SIGKILL was sent to the stand-in's process group before the relay exited; the kernel ends it at once.
      assert.ok(await until(() => processesWith(fake.marker).length === 0, 5000), `still running after the relay exited: ${processesWith(fake.marker).join(", ")}`);
      // The hand-off was cut short: nothing recorded, the lease covers the mail (an uncertain hand-off once it expires).
      assert.equal((await statusOf(url, id)).status, "sending");
    });
  }

  it("a second SIGTERM exits at once with 143 (a second SIGINT with 130), and kills the sendmail child on the way out", async (t) => {
    const dir = tmp();
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    for (const [signal, expected] of [["SIGTERM", 143], ["SIGINT", 130]] as const) {
      const { url } = await outboxWithMail(t);
      const fake = hangingSendmail(dir, false);
      const relay = startRelay(t, ["--poll", "100ms", "--stop-timeout", "60s"], { DATABASE_URL: url, MAIL_OUTBOX_TRANSPORT: `sendmail:${fake.program}` });
      await relay.logged("relay started");
      assert.ok(await until(() => processesWith(fake.marker).length > 0, 20_000), relay.stderr());
      relay.child.kill(signal);
      await relay.logged("stopping; hand-offs in flight get 1m (send the signal again to exit at once)");
      relay.child.kill(signal);
      const { code } = await relay.exited;
      assert.equal(code, expected, relay.stderr());
      const log = jsonLines(relay.stderr());
      assert.ok(log.some((l) => l.signal === signal && l.exitCode === expected && l.level === 40 && /^exiting at once/.test(String(l.msg))), relay.stderr());
      assert.ok(await until(() => processesWith(fake.marker).length === 0, 5000), `still running: ${processesWith(fake.marker).join(", ")}`);
    }
  });

  it("a fatal error (tables missing, database unreachable) is one JSON log line with err and exitCode, exit 1, and no plain text in the stream", async (t) => {
    const dir = tmp();
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const empty = path.join(dir, "empty.db");
    writeFileSync(empty, "");
    const smtp = await startTestSmtp();
    t.after(() => smtp.close());
    const cases = [
      { url: `file:${empty}`, type: "SchemaNotReadyError", message: /^The relay did not start: .*table mail_outbox is missing.*`mail-outbox migrate`/ },
      // Port 1 on the loopback: nothing listens, the connection is refused at once.
      { url: "postgresql://root:hunter2@127.0.0.1:1/none", type: null, message: /ECONNREFUSED|connect/ },
    ];
    for (const c of cases) {
      const relay = startRelay(t, ["--poll", "100ms"], { DATABASE_URL: c.url, MAIL_OUTBOX_TRANSPORT: smtp.url });
      const { code } = await relay.exited;
      assert.equal(code, 1, relay.stderr());
      const log = jsonLines(relay.stderr()); // every line of stderr is JSON
      const fatal = log.filter((l) => l.level === 60);
      assert.equal(fatal.length, 1, relay.stderr());
      const line = fatal[0]!;
      assert.equal(line.exitCode, 1);
      if (c.type !== null) assert.equal((line.err as Line).type, c.type);
      else assert.equal(typeof (line.err as Line).type, "string");
      assert.match(String(line.msg), c.message);
      assert.equal((line.err as Line).message, line.msg);
      assert.doesNotMatch(relay.stderr(), /mail-outbox: /);
      assert.doesNotMatch(relay.stderr(), /hunter2/, "no password in the log");
      assert.equal(relay.stdout(), "");
    }
    // Readable logs (MAIL_OUTBOX_LOG_FORMAT=pretty, or a terminal): the error is the usual plain line.
    const pretty = startRelay(t, [], { DATABASE_URL: `file:${empty}`, MAIL_OUTBOX_TRANSPORT: smtp.url, MAIL_OUTBOX_LOG_FORMAT: "pretty" });
    assert.equal((await pretty.exited).code, 1);
    assert.match(pretty.stderr(), /^mail-outbox: The relay did not start: /m);
    // A usage error found by the command (bad tuning) is a JSON line too, with exit 2.
    const usage = startRelay(t, ["--concurrency", "0"], { DATABASE_URL: `file:${empty}`, MAIL_OUTBOX_TRANSPORT: smtp.url });
    assert.equal((await usage.exited).code, 2, usage.stderr());
    const [only] = jsonLines(usage.stderr());
    assert.equal(only?.level, 60);
    assert.equal(only?.exitCode, 2);
    assert.equal((only?.err as Line | undefined)?.type, "OptionsError");
  });

  it("SIGTERM while the relay is still starting (its database ping not answered) ends the command at once with 0, claiming nothing", async (t) => {
    // A PostgreSQL address that accepts the connection and never answers: the ping waits (up to its 10 s connect timeout).
    const sockets: net.Socket[] = [];
    const silent = net.createServer((socket) => void sockets.push(socket));
    silent.listen(0, "127.0.0.1");
    await once(silent, "listening");
    t.after(() => {
      for (const s of sockets) s.destroy();
      silent.close();
    });
    const port = (silent.address() as net.AddressInfo).port;
    let stderr = "";
    const signals = new EventEmitter();
    const io = { stdout: { write: () => true }, stderr: { write: (c: string | Uint8Array) => ((stderr += c.toString()), true) }, env: { DATABASE_URL: `postgresql://relay@127.0.0.1:${port}/none`, MAIL_OUTBOX_TRANSPORT: "smtp://127.0.0.1:25" }, signals };
    const run = main(["relay"], io as never);
    await once(silent, "connection");
    assert.equal(signals.listenerCount("SIGTERM"), 1, "the handler is there before the relay runs");
    signals.emit("SIGTERM");
    assert.equal(await run, 0, stderr);
    const [line, ...rest] = jsonLines(stderr);
    assert.deepEqual(rest, []);
    assert.equal(line?.msg, "stopping before the relay started; nothing was claimed");
    assert.equal(line?.signal, "SIGTERM");
    // The ping fails once the connection goes: nothing more is written, and the handlers are removed.
    for (const s of sockets) s.destroy();
    assert.ok(await until(() => signals.listenerCount("SIGTERM") === 0, 5000), "handlers removed when the command's work ended");
    assert.equal(stderr.split("\n").filter(Boolean).length, 1, stderr);
  });

  it("as PID 1 in its own PID namespace, the relay stops on SIGTERM with exit 0 (Node has no default handlers there)", async (t) => {
    const probe = spawnSync("unshare", ["--fork", "--pid", "--mount-proc", "true"], { encoding: "utf8", timeout: 10_000 });
    if (probe.error || probe.status !== 0) {
      t.skip(`unshare --pid is not available here (${probe.error?.message ?? probe.stderr.trim()}): needs util-linux and CAP_SYS_ADMIN (root)`);
      return;
    }
    const { url, id } = await outboxWithMail(t);
    const smtp = await startTestSmtp();
    t.after(() => smtp.close());
    const relay = startProgram(t, "unshare", ["--fork", "--pid", "--mount-proc", process.execPath, "--import", TSX, CLI, "relay", "--poll", "100ms"], {
      DATABASE_URL: url,
      MAIL_OUTBOX_TRANSPORT: smtp.url,
      MAIL_OUTBOX_LOG_FORMAT: "json",
    });
    await smtp.waitFor(1, 30_000);
    await relay.logged("relay started");
    // unshare does not pass signals on: signal the relay itself, found as unshare's child.
    const pid = childOf(relay.child.pid!);
    assert.ok(pid !== null, "the relay runs under unshare");
    const nspid = /^NSpid:\s+(.*)$/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1]?.trim().split(/\s+/);
    assert.equal(nspid?.at(-1), "1", `the relay is PID 1 in its namespace (NSpid: ${nspid?.join(" ")})`);
    process.kill(pid, "SIGTERM");
    const { code } = await relay.exited;
    assert.equal(code, 0, relay.stderr());
    const log = jsonLines(relay.stderr());
    assert.ok(log.some((l) => l.signal === "SIGTERM" && /^stopping/.test(String(l.msg))), relay.stderr());
    assert.ok(log.some((l) => l.msg === "relay stopped"));
    assert.match(relay.stdout(), /^stopped: claimed 1, sent 1/m);
    assert.equal((await statusOf(url, id)).status, "sent");
  });
});

/** The first child of `pid` (from /proc/<pid>/task/<pid>/children). */
function childOf(pid: number): number | null {
  try {
    const first = readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").trim().split(/\s+/)[0];
    return first ? Number(first) : null;
  } catch {
    return null;
  }
}

describe("sendmail children of the transports", () => {
  it("closing a sendmail: transport kills the program still running (its whole process group) and fails that hand-off", async (t) => {
    const dir = tmp();
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const fake = hangingSendmail(dir, false);
    const transport = createSendmailTransport({ path: fake.program, timeoutMs: 60_000 });
    const transporter = nodemailer.createTransport(transport);
    const sent = transporter.sendMail({ envelope: { from: "a@example.com", to: ["b@example.com"] }, raw: "Subject: x\r\n\r\nbody\r\n" });
    assert.ok(await until(() => processesWith(fake.marker).length > 0, 10_000));
    assert.equal(runningSendmailChildren(), 1);
    transporter.close();
    await assert.rejects(sent, /was killed by SIGTERM when the transport was closed/);
    assert.ok(await until(() => processesWith(fake.marker).length === 0, 5000), "the program and its children are gone");
    assert.equal(runningSendmailChildren(), 0);
    await assert.rejects(
      transporter.sendMail({ envelope: { from: "a@example.com", to: ["b@example.com"] }, raw: "Subject: y\r\n\r\nbody\r\n" }),
      /was closed before this mail's turn came/,
    );
  });

  it("closing a sendmail-bs: transport ends a session still waiting for the program", async (t) => {
    const dir = tmp();
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const fake = hangingSendmail(dir, false);
    const transporter = nodemailer.createTransport(createSendmailBsTransport({ path: fake.program, timeoutMs: 60_000 }));
    const sent = transporter.sendMail({ envelope: { from: "a@example.com", to: ["b@example.com"] }, raw: "Subject: x\r\n\r\nbody\r\n" });
    assert.ok(await until(() => processesWith(fake.marker).length > 0, 10_000));
    transporter.close();
    await assert.rejects(sent);
    assert.ok(await until(() => processesWith(fake.marker).length === 0, 5000), "the program is gone");
  });
});

describe("follow-log liveness", () => {
  it("liveness is the follower's loop turning: ok while it turns, failing once a turn is overdue or it stopped", async (t) => {
    const fx = await freshSqlite(t);
    const store = await openDatabase(fx.url);
    t.after(() => store.close());
    const stream = new PassThrough();
    const follower = followLog({ store, stream, name: "liveness", logger: false });
    let caughtUp!: () => void;
    const caught = new Promise<void>((resolve) => (caughtUp = resolve));
    follower.on("caughtUp", () => caughtUp());
    await caught; // a quiet stream still turns the loop (an empty batch each second)
    const now = follower.liveness();
    assert.equal(now.ok, true, now.detail);
    assert.match(now.detail, /^the follower's loop turned \d+ ms ago$/);
    assert.equal(follower.liveBoundMs, 30_000);
    const late = follower.liveness(performance.now() + follower.liveBoundMs + 1000);
    assert.equal(late.ok, false);
    assert.match(late.detail, /last turned \d+ ms ago \(bound 30000 ms\): it is stuck/);
    stream.end();
    await follower.stop();
    assert.deepEqual(follower.liveness(), { ok: false, detail: "the follower stopped" });
  });

  it("follow-log --metrics-port: /healthz answers with the loop check; SIGTERM stops it with 0", async (t) => {
    const dir = tmp();
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const fx = await freshSqlite(t);
    const logFile = path.join(dir, "postfix.log");
    writeFileSync(logFile, "");
    let stderr = "";
    const signals = new EventEmitter();
    let serving!: (url: string) => void;
    const served = new Promise<string>((resolve) => (serving = resolve));
    const io = {
      stdout: { write: () => true },
      stderr: {
        write: (c: string | Uint8Array) => {
          stderr += c.toString();
          const m = /"metrics":"(http:\/\/[^"]+)\/metrics"/.exec(stderr);
          if (m) serving(m[1]!);
          return true;
        },
      },
      env: { DATABASE_URL: fx.url, MAIL_OUTBOX_LOG_LEVEL: "info" },
      signals,
    };
    const run = main(["follow-log", logFile, "--metrics-port", "0", "--poll", "50ms"], io as never);
    const base = await served;
    type Report = { status: string; checks: Record<string, { ok: boolean; detail: string }> };
    let body: Report | null = null;
    assert.ok(
      await until(() => {
        void fetch(`${base}/healthz`).then(async (r) => (body = r.status === 200 ? ((await r.json()) as Report) : null), () => {});
        return body !== null && /loop turned/.test(body.checks.follower?.detail ?? "");
      }, 10_000),
      `no healthy loop check: ${JSON.stringify(body)}\n${stderr}`,
    );
    signals.emit("SIGTERM");
    assert.equal(await run, 0, stderr);
  });
});
