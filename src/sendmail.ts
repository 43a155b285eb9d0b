/**
 * The `sendmail:` transport: pipe each message into the local MTA's `sendmail` program.
 *
 * nodemailer 10's own sendmail transport does check the exit code (the silent success of
 * nodemailer issue #1524 is fixed there), but it has no timeout, drops the program's stderr and
 * passes recipients without `--`. This one spawns `<path> -i [-B 8BITMIME] [-N .. -R .. -V ..] -f <from> -- <rcpt...>`
 * (an argv array, no shell; `-B 8BITMIME` only for a message with 8-bit bytes), writes the raw
 * message to stdin with LF line endings (the local sendmail convention; a lone CR becomes a line
 * end too, as on every transport, see src/wire.ts), and calls the hand-off good only when the
 * program read the whole message and exited 0. A non-zero exit, a signal, or a program that is still
 * running after `timeoutMs` (it is killed) is a failure: `SendmailExitError` (code `ESENDMAIL`)
 * or `HandoffTimeoutError` (code `ETIMEDOUT`), both transient.
 *
 * The program answers nothing but its exit status, so the result carries no queue id
 * (`response` is `sendmail exited 0`): tie the outbox row to the MTA's log by Message-ID
 * (Postfix logs `postfix/cleanup[..]: QUEUEID: message-id=<...>`).
 *
 * Postfix's sendmail writes into the maildrop directory, so it succeeds even while the Postfix
 * daemon is stopped; the mail is delivered once the daemon starts.
 *
 * Child processes: each program runs in a process group of its own and is killed with its group
 * (SIGTERM, then SIGKILL) on timeout, when the transport is closed (the relay closes it when it
 * stops), and with SIGKILL when this process exits (`trackChild`): no `sendmail` outlives the relay
 * unless the relay itself is killed with SIGKILL.
 *
 * Delivery status notifications (RFC 3461): given nodemailer's `dsn` option (see
 * `rawSendMailOptions` in src/transport.ts), the program also gets `-N <notify> -R hdrs|full
 * -V <envid>`, the flags Postfix's and Sendmail's `sendmail` take for NOTIFY, RET and ENVID (no
 * per-recipient ORCPT on a command line). Exim's `sendmail` reads those letters otherwise (its
 * `-N` means "do not deliver"), so they are left out when the program is Exim (its real path names
 * exim, as Debian's /usr/sbin/sendmail -> exim4 does).
 */
import { spawn, type ChildProcess } from "node:child_process";
import { accessSync, constants as fsConstants, realpathSync, statSync } from "node:fs";
import path from "node:path";
import type { Transport, SentMessageInfo, MailMessage } from "nodemailer";
import { HandoffTimeoutError, SendmailExitError, TransportConfigError } from "./errors.js";
import { hasEightBit, toLf } from "./wire.js";
import { dsnRequestOf, type DsnRequest } from "./transport.js";

export interface SendmailTransportOptions {
  /** Absolute path of the sendmail program. @default "/usr/sbin/sendmail" */
  readonly path?: string;
  /** How long one hand-off may take before the program is killed. @default 60000 */
  readonly timeoutMs?: number;
  /** Programs running at once; further mails wait their turn (the wait does not count against `timeoutMs`). @default 5 */
  readonly maxProcesses?: number;
}

export const DEFAULT_SENDMAIL_PATH = "/usr/sbin/sendmail";
const STDERR_LIMIT = 8 * 1024;
const KILL_GRACE_MS = 1000;

type Callback = (err: Error | null, info?: SentMessageInfo) => void;

/**
 * Every `sendmail` / `sendmail -bs` child still running, in every transport of this process. Each
 * runs in a process group of its own (`detached`, so a Ctrl-C meant for the relay does not cut a
 * hand-off short); so that none outlives the process, the first one tracked installs an `exit`
 * handler that sends SIGKILL to each group still there. It runs on `process.exit()` and on a
 * normal end, which is how the CLI leaves after SIGTERM/SIGINT (also as PID 1); nothing runs on
 * SIGKILL, so a relay killed that way can leave a child behind until the child's own end.
 */
const liveChildren = new Set<ChildProcess>();
let exitHookInstalled = false;

function killAllOnExit(): void {
  for (const child of liveChildren) killProcessGroup(child, "SIGKILL");
  liveChildren.clear();
}

/**
 * Keep `child` (spawned `detached`) in the set of children killed when this process exits, until
 * it exits itself; also in `owned`, the set of the transport that started it (for its `close()`).
 */
export function trackChild(child: ChildProcess, owned?: Set<ChildProcess>): void {
  if (child.pid === undefined) return; // spawn failed: nothing runs
  liveChildren.add(child);
  owned?.add(child);
  child.once("exit", () => {
    liveChildren.delete(child);
    owned?.delete(child);
  });
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    process.on("exit", killAllOnExit);
  }
}

/** Signal the child's whole process group (the program may have forked), else the child itself. */
export function killProcessGroup(child: ChildProcess, signal: NodeJS.Signals): void {
  if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
  try {
    process.kill(-child.pid, signal);
  } catch {
    try {
      child.kill(signal);
    } catch {
      /* already gone */
    }
  }
}

/** How many sendmail children of this process are running now (for tests and diagnostics). */
export function runningSendmailChildren(): number {
  return liveChildren.size;
}

/** An envelope error nodemailer-style: code `EENVELOPE`, no reply code (so it classifies as permanent). */
function envelopeError(message: string): Error {
  return Object.assign(new Error(message), { code: "EENVELOPE" });
}

/**
 * Check that `p` names an absolute path.
 * @throws TransportConfigError for a relative path
 */
export function checkSendmailPath(p: string, scheme = "sendmail:"): string {
  if (!path.isAbsolute(p)) {
    throw new TransportConfigError(
      `The sendmail program must be given by absolute path (${scheme}/usr/sbin/sendmail), not ${JSON.stringify(p)}: a relative name depends on PATH and the working directory.`,
    );
  }
  return path.normalize(p);
}

/** Null when `p` is an executable file, else why not (for `doctor` and the first hand-off). */
export function sendmailProblem(p: string): string | null {
  try {
    const st = statSync(p);
    if (!st.isFile()) return `${p} is not a file`;
    accessSync(p, fsConstants.X_OK);
    return null;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ENOENT") return `${p} does not exist (is the MTA installed? Postfix: apt-get install postfix)`;
    if (code === "EACCES") return `${p} is not executable by this user`;
    return `${p} cannot be used: ${(err as Error).message}`;
  }
}

/** True when `program` is Exim (its real path names exim), whose -N/-R/-V are not the DSN flags. */
function isExim(program: string): boolean {
  try {
    return /exim/i.test(path.basename(realpathSync(program)));
  } catch {
    return false;
  }
}

/**
 * The DSN flags of Postfix's and Sendmail's `sendmail` for a request: `-N failure,delay -R hdrs -V <envid>`
 * (`-N never` for NEVER). The ENVID goes as it is (a mail id or a token: no spaces or controls).
 */
export function sendmailDsnArgs(dsn: DsnRequest): string[] {
  const args = ["-N", dsn.notify.map((n) => n.toLowerCase()).join(","), "-R", dsn.ret === "FULL" ? "full" : "hdrs"];
  if (dsn.envid !== "" && /^[\x21-\x7e]+$/.test(dsn.envid)) args.push("-V", dsn.envid);
  return args;
}

async function rawBytes(mail: MailMessage): Promise<Buffer> {
  const raw: unknown = mail.data.raw;
  if (Buffer.isBuffer(raw)) return raw;
  if (raw instanceof Uint8Array) return Buffer.from(raw);
  if (typeof raw === "string") return Buffer.from(raw, "utf8");
  // A composed message (no `raw`): let nodemailer build it.
  const chunks: Buffer[] = [];
  for await (const chunk of mail.message.createReadStream()) chunks.push(Buffer.from(chunk as Buffer));
  return Buffer.concat(chunks);
}

/**
 * Create the `sendmail:` transport object. Wrap it with `nodemailer.createTransport()` (as
 * `createTransporter("sendmail:/usr/sbin/sendmail")` does).
 *
 * @example
 * ```ts
 * const transporter = nodemailer.createTransport(createSendmailTransport({ path: "/usr/sbin/sendmail", timeoutMs: 30_000 }));
 * ```
 */
export function createSendmailTransport(
  options: SendmailTransportOptions = {},
): Transport & { readonly program: string; verify(callback?: (err: Error | null, ok?: true) => void): Promise<true>; close(): void } {
  const program = checkSendmailPath(options.path ?? DEFAULT_SENDMAIL_PATH);
  const timeoutMs = options.timeoutMs ?? 60_000;
  if (!Number.isFinite(timeoutMs) || timeoutMs <= 0) {
    throw new TransportConfigError("Expected `timeoutMs` to be a positive number of milliseconds.");
  }

  const exim = isExim(program);
  const maxProcesses = options.maxProcesses ?? 5;
  if (!Number.isSafeInteger(maxProcesses) || maxProcesses < 1) {
    throw new TransportConfigError("Expected `maxProcesses` to be a positive integer.");
  }
  let running = 0;
  const waiting: Array<() => void> = [];
  /** This transport's children still running, killed by `close()`. */
  const children = new Set<ChildProcess>();
  let closed = false;
  const acquire = (start: () => void) => {
    if (running < maxProcesses) {
      running += 1;
      start();
    } else {
      waiting.push(start);
    }
  };
  const release = () => {
    const next = waiting.shift();
    if (next) next();
    else running -= 1;
  };

  function send(mail: MailMessage, callback: Callback): void {
    const envelope = mail.message.getEnvelope();
    const messageId = mail.message.messageId();
    const dsn = exim ? null : dsnRequestOf(mail.data as { dsn?: unknown });
    const from = typeof envelope.from === "string" ? envelope.from : "";
    const to = (envelope.to ?? []).filter((a): a is string => typeof a === "string" && a !== "");
    if (to.length === 0) return callback(envelopeError("No recipients defined"));
    for (const addr of [from, ...to]) {
      if (/^"?-/.test(addr) || /[\r\n\0]/.test(addr)) {
        return callback(envelopeError(`Invalid envelope address ${JSON.stringify(addr)} for sendmail`));
      }
    }

    rawBytes(mail).then(
      (raw) =>
        acquire(() =>
          run(toLf(raw), from, to, messageId, dsn, (err, info) => {
            release();
            callback(err, info);
          }),
        ),
      (err: unknown) => callback(err instanceof Error ? err : new Error(String(err))),
    );
  }

  function run(raw: Buffer, from: string, to: string[], messageId: string, dsn: DsnRequest | null, callback: Callback): void {
    // Closed while this mail waited for its turn: it was never handed over.
    if (closed) return callback(new SendmailExitError(`Not handed over: the sendmail transport (${program}) was closed before this mail's turn came.`, null, null, ""));
    let done = false;
    let stderr = "";
    let timedOut = false;
    const finish = (err: Error | null, info?: SentMessageInfo) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      callback(err, info);
    };

    // RFC 6152 through the command line: `-B 8BITMIME` declares 8-bit content (Postfix's and
    // Sendmail's sendmail take it; Exim's ignores it), as BODY=8BITMIME does over SMTP.
    const args = ["-i", ...(hasEightBit(raw) ? ["-B", "8BITMIME"] : []), ...(dsn ? sendmailDsnArgs(dsn) : []), "-f", from === "" ? "<>" : from, "--", ...to];
    const child = spawn(program, args, { stdio: ["pipe", "ignore", "pipe"], detached: true });
    trackChild(child, children);
    const kill = (signal: NodeJS.Signals) => killProcessGroup(child, signal);
    const timer = setTimeout(() => {
      timedOut = true;
      kill("SIGTERM");
      setTimeout(() => kill("SIGKILL"), KILL_GRACE_MS).unref();
      finish(
        new HandoffTimeoutError(
          `${program} did not finish within ${timeoutMs} ms and was killed; the mail may or may not have been queued (check the MTA log for its Message-ID ${messageId}).${stderr ? ` stderr: ${stderr.trim()}` : ""}`,
        ),
      );
    }, timeoutMs);

    child.stderr.setEncoding("utf8");
    child.stderr.on("data", (chunk: string) => {
      if (stderr.length < STDERR_LIMIT) stderr = (stderr + chunk).slice(0, STDERR_LIMIT);
    });
    child.on("error", (err: NodeJS.ErrnoException) => {
      // spawn failed (ENOENT, EACCES): the program never ran.
      const e = new SendmailExitError(`Cannot run ${program}: ${err.message}. ${sendmailProblem(program) ?? ""}`.trim(), null, null, stderr);
      e.cause = err;
      finish(e);
    });
    // Settles true once the whole message was written into the pipe, false on EPIPE (the program
    // exited without reading it all; its exit status usually says more).
    child.stdin.on("error", () => {});
    const stdinDone = new Promise<boolean>((resolve) => {
      child.stdin.once("finish", () => resolve(true));
      child.stdin.once("error", () => resolve(false));
      child.stdin.once("close", () => resolve(child.stdin.writableFinished));
    });
    child.stdin.end(raw);
    child.on("close", async (code, signal) => {
      if (timedOut) return;
      const detail = stderr.trim() ? `: ${stderr.trim()}` : "";
      if (code === 0 && signal === null) {
        if (!(await stdinDone)) {
          finish(new SendmailExitError(`${program} exited 0 before reading the whole message; it was not handed over${detail}`, code, signal, stderr));
          return;
        }
        finish(null, {
          envelope: { from, to },
          messageId,
          response: "sendmail exited 0",
          accepted: [...to],
          rejected: [],
        });
        return;
      }
      const how =
        closed && signal !== null
          ? `was killed by ${signal} when the transport was closed (the relay stopped with this hand-off still running)`
          : signal !== null
            ? `was killed by ${signal}`
            : code === 127
              ? "exited with code 127 (command not found)"
              : `exited with code ${code}`;
      finish(new SendmailExitError(`${program} ${how}; the mail was not handed over${detail}`, code, signal, stderr));
    });
  }

  return {
    name: "sendmail-pipe",
    version: "1",
    program,
    send,
    /**
     * Kill the programs still running (SIGTERM to each process group, SIGKILL after a second); mails
     * waiting for a turn, and later ones, fail without being handed over. The relay closes its transport when it stops, after its
     * stop deadline: a hand-off still running then is not recorded, and its lease makes the mail an
     * uncertain hand-off (see the relay's `leaseExpiryPolicy`).
     */
    close(): void {
      closed = true;
      for (const child of children) {
        killProcessGroup(child, "SIGTERM");
        setTimeout(() => killProcessGroup(child, "SIGKILL"), KILL_GRACE_MS).unref();
      }
    },
    /** Resolves when the program exists and is executable; does not run it. Callback or promise, like nodemailer's. */
    verify(callback?: (err: Error | null, ok?: true) => void): Promise<true> {
      const problem = sendmailProblem(program);
      const result: Promise<true> =
        problem === null
          ? Promise.resolve(true)
          : Promise.reject(new SendmailExitError(`The sendmail transport is not usable: ${problem}`, null, null, ""));
      if (callback) {
        result.then(() => callback(null, true), (err: Error) => callback(err));
        result.catch(() => {});
      }
      return result;
    },
  };
}
