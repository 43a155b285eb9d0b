/**
 * The `sendmail-bs:` transport: SMTP over the stdin/stdout of `<sendmail> -bs`.
 *
 * `sendmail -bs` runs an SMTP session on its standard input and output (Postfix runs its
 * `smtpd` in stand-alone mode, Exim its own receiver), so the relay gets real SMTP replies,
 * per-recipient answers and the MTA's queue id (`250 2.0.0 Ok: queued as 8CCD166093`) without
 * a TCP listener. It is nodemailer's pooled SMTP transport whose `getSocket` spawns the program
 * and hands nodemailer a Duplex over the child's pipes; each pooled connection is one child
 * process that carries many messages.
 *
 * Timeouts: Postfix's `sendmail -bs` blocks (before its greeting) while the Postfix daemon is
 * stopped. nodemailer's greeting timer is a real timer, and its idle timeout calls
 * `socket.setTimeout`, which this Duplex implements for real (inactivity on the pipes in either
 * direction). When one fires the child's process group is killed and the hand-off fails with
 * `HandoffTimeoutError` (code `ETIMEDOUT`, transient).
 *
 * Postfix trap: the queue id in the `-bs` reply is the id of the maildrop file. Postfix's pickup
 * daemon then gives the mail a new queue id, the one logged with `message-id=<...>` by cleanup
 * and with the delivery. The reply's id appears in the log only as `smtpd[..]: ID: client=...`.
 * Tie the row to the MTA log by Message-ID. (Over TCP, `smtp://`, the reply's id is the one
 * cleanup logs.)
 *
 * Delivery status notifications: nodemailer's `dsn` message option (what `rawSendMailOptions` in
 * src/transport.ts passes) goes out as on any SMTP connection (`RET=`, `ENVID=` on MAIL FROM,
 * `NOTIFY=` on each RCPT TO; no ORCPT). Postfix trap, seen with Postfix 3.7 (test/dsn.test.ts):
 * `sendmail -bs` honours NOTIFY and RET but drops the ENVID on its way through the maildrop, so
 * its reports carry no `Original-Envelope-Id`: they link by the VERP return path (turn `verp` on
 * when a bounce secret is set) or by the returned Message-ID.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { Duplex } from "node:stream";
import type net from "node:net";
import type { SMTPPoolOptions, SMTPPoolSendCallback, SMTPPoolSentMessageInfo } from "nodemailer/lib/smtp-pool";
import type { MailMessage, NodemailerError, VerifyCallback } from "nodemailer";
import { HandoffTimeoutError, SendmailExitError, TransportConfigError } from "./errors.js";
import { checkSendmailPath, DEFAULT_SENDMAIL_PATH, killProcessGroup, sendmailProblem, trackChild } from "./sendmail.js";
import { WireSmtpPool } from "./wire.js";

export interface SendmailBsTransportOptions {
  /** Absolute path of the sendmail program. @default "/usr/sbin/sendmail" */
  readonly path?: string;
  /**
   * How long the program may stay silent: before its greeting, and between any two bytes of
   * the session afterwards. @default 60000
   */
  readonly timeoutMs?: number;
  /** Child processes (SMTP sessions) open at once. @default 5 */
  readonly maxConnections?: number;
  /** Messages one child carries before it is replaced. @default 1000 */
  readonly maxMessages?: number;
  /** Name sent in EHLO. @default "localhost" */
  readonly name?: string;
  /** nodemailer logger (`true` logs to the console). @default false */
  readonly logger?: SMTPPoolOptions["logger"];
}

const STDERR_LIMIT = 8 * 1024;
/** After we close stdin (QUIT sent), how long the program may take to exit before it is killed. */
const EXIT_GRACE_MS = 2000;

const killGroup = killProcessGroup;

/**
 * A Duplex over a child's stdout (read side) and stdin (write side), shaped enough like a
 * `net.Socket` for nodemailer: `setTimeout` is a real inactivity timer that emits `timeout`,
 * `setKeepAlive` and `setNoDelay` do nothing. Destroying it kills the child's process group.
 */
export class ChildProcessSocket extends Duplex {
  readonly child: ChildProcess;
  /** For nodemailer's log lines. */
  readonly remoteAddress: string;
  readonly remotePort: number;
  readonly localAddress = "stdio";
  readonly localPort = 0;
  stderr = "";
  private idleMs = 0;
  private idleTimer: NodeJS.Timeout | undefined;
  private exitTimer: NodeJS.Timeout | undefined;
  private readonly program: string;

  constructor(program: string, args: readonly string[]) {
    super({ allowHalfOpen: true });
    this.program = program;
    // detached: own process group, so a timeout kills whatever the program forked too.
    const child = spawn(program, args, { stdio: ["pipe", "pipe", "pipe"], detached: true });
    // Killed with its group when this process exits, should it still run then (sendmail.ts).
    trackChild(child);
    this.child = child;
    this.remoteAddress = `${program} ${args.join(" ")}`;
    this.remotePort = child.pid ?? 0;
    const stdout = child.stdout!;
    const stdin = child.stdin!;
    child.stderr!.setEncoding("utf8");
    child.stderr!.on("data", (chunk: string) => {
      if (this.stderr.length < STDERR_LIMIT) this.stderr = (this.stderr + chunk).slice(0, STDERR_LIMIT);
    });
    stdout.on("data", (chunk: Buffer) => {
      this.touch();
      if (!this.push(chunk)) stdout.pause();
    });
    stdin.on("error", (err) => this.destroy(err));
    child.on("error", (err) => {
      const e = new SendmailExitError(`Cannot run ${program}: ${err.message}. ${sendmailProblem(program) ?? ""}`.trim(), null, null, this.stderr);
      e.cause = err;
      this.destroy(e);
    });
    child.on("close", (code, signal) => {
      clearTimeout(this.exitTimer);
      if (this.destroyed) return;
      if (code === 0 || this.writableEnded) {
        this.push(null); // EOF after QUIT (or after we gave up): a normal end of the session
        return;
      }
      const how = signal !== null ? `was killed by ${signal}` : `exited with code ${code}`;
      const detail = this.stderr.trim() ? `: ${this.stderr.trim()}` : "";
      this.destroy(new SendmailExitError(`${this.remoteAddress} ${how} before the SMTP session ended${detail}`, code, signal, this.stderr));
    });
  }

  override _read(): void {
    this.child.stdout?.resume();
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this.touch();
    const stdin = this.child.stdin;
    if (!stdin || stdin.destroyed) return callback(new Error(`${this.program}: stdin is closed`));
    if (stdin.write(chunk)) callback();
    else stdin.once("drain", () => callback());
  }

  override _final(callback: (error?: Error | null) => void): void {
    this.child.stdin?.end();
    // The program exits after QUIT; one that does not is killed.
    this.exitTimer = setTimeout(() => killGroup(this.child, "SIGKILL"), EXIT_GRACE_MS);
    this.exitTimer.unref();
    callback();
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    clearTimeout(this.idleTimer);
    clearTimeout(this.exitTimer);
    this.child.stdin?.destroy();
    this.child.stdout?.destroy();
    if (this.child.exitCode === null && this.child.signalCode === null) {
      killGroup(this.child, "SIGTERM");
      const child = this.child;
      setTimeout(() => killGroup(child, "SIGKILL"), 1000).unref();
    }
    callback(error);
  }

  /** Like `net.Socket#setTimeout`: emit `timeout` after `ms` without traffic either way; 0 turns it off. */
  setTimeout(ms: number, callback?: () => void): this {
    this.idleMs = Number.isFinite(ms) && ms > 0 ? ms : 0;
    if (callback) this.once("timeout", callback);
    this.touch();
    return this;
  }

  setKeepAlive(): this {
    return this;
  }

  setNoDelay(): this {
    return this;
  }

  private touch(): void {
    clearTimeout(this.idleTimer);
    this.idleTimer = undefined;
    if (this.idleMs > 0 && !this.destroyed) {
      this.idleTimer = setTimeout(() => this.emit("timeout"), this.idleMs);
      this.idleTimer.unref();
    }
  }
}

/**
 * nodemailer's SMTP pool whose connections are `<program> -bs` child processes, and whose
 * timeouts come back as `HandoffTimeoutError`. Line ends and 8-bit content are handled as on
 * every transport (`WireSmtpPool`, src/wire.ts): lone CR/LF become CRLF, an 8-bit message is
 * declared `BODY=8BITMIME` (Postfix's stand-alone smtpd offers it), or refused with
 * `EightBitMimeError` when the program's SMTP server does not offer it.
 */
export class SendmailBsPool extends WireSmtpPool {
  readonly program: string;
  readonly timeoutMs: number;
  /** The sessions (child processes) of this pool not yet ended, for `close()`. */
  private readonly sessions = new Set<ChildProcessSocket>();

  constructor(options: SendmailBsTransportOptions = {}) {
    const program = checkSendmailPath(options.path ?? DEFAULT_SENDMAIL_PATH, "sendmail-bs:");
    const timeoutMs = options.timeoutMs ?? 60_000;
    if (!Number.isFinite(timeoutMs) || timeoutMs <= 0) {
      throw new TransportConfigError("Expected `timeoutMs` to be a positive number of milliseconds.");
    }
    super({
      pool: true,
      host: "localhost",
      port: 25,
      name: options.name ?? "localhost",
      secure: false,
      ignoreTLS: true,
      maxConnections: options.maxConnections ?? 5,
      maxMessages: options.maxMessages ?? 1000,
      // The relay retries on its own schedule; a hidden resend by the pool only widens the duplicate window.
      maxRequeues: 0,
      connectionTimeout: timeoutMs,
      greetingTimeout: timeoutMs,
      socketTimeout: timeoutMs,
      socketCloseTimeout: EXIT_GRACE_MS,
      logger: options.logger ?? false,
    });
    this.program = program;
    this.timeoutMs = timeoutMs;
    this.name = "sendmail-bs";
  }

  protected override serverName(): string {
    return `${this.program} -bs`;
  }

  override getSocket(_options: SMTPPoolOptions, callback: (err: Error | null, socketOptions?: { connection?: net.Socket } | false) => void): void {
    const problem = sendmailProblem(this.program);
    if (problem !== null) {
      setImmediate(() => callback(new SendmailExitError(`Cannot run ${this.program} -bs: ${problem}`, null, null, "")));
      return;
    }
    const socket = new ChildProcessSocket(this.program, ["-bs"]);
    this.sessions.add(socket);
    socket.child.once("exit", () => this.sessions.delete(socket));
    socket.once("close", () => this.sessions.delete(socket));
    setImmediate(() => callback(null, { connection: socket as unknown as net.Socket }));
  }

  /**
   * Close the pool: idle sessions get QUIT (nodemailer's close; a program that has not exited 2 s
   * later is killed), and sessions still carrying a message are ended at once, their program's
   * process group killed (SIGTERM, SIGKILL after a second). The relay closes its transport when it
   * stops, after its stop deadline: such a hand-off is not recorded, and its lease makes the mail
   * an uncertain hand-off (see the relay's `leaseExpiryPolicy`).
   */
  override close(): void {
    super.close();
    for (const socket of this.sessions) {
      if (!socket.writableEnded && !socket.destroyed) {
        socket.destroy(new SendmailExitError(`${this.program} -bs was stopped: the transport was closed with this session still running`, null, "SIGTERM", socket.stderr));
      }
    }
  }

  /** nodemailer's timeout errors say "Timeout"; say which program and what to check instead. */
  private explain<E extends Error & { code?: string | undefined }>(err: E): E {
    if (err.code !== "ETIMEDOUT") return err;
    return new HandoffTimeoutError(
      `${this.program} -bs was silent for ${this.timeoutMs} ms and was killed (${err.message}). With Postfix this happens while the Postfix daemon is stopped: check \`postfix status\`.`,
      { cause: err },
    ) as unknown as E;
  }

  override send(mail: MailMessage<SMTPPoolSentMessageInfo>, callback: SMTPPoolSendCallback): boolean {
    return super.send(mail, (err, info) => {
      if (err) callback(this.explain(err));
      else callback(null, info);
    });
  }

  override verify(): Promise<true>;
  override verify(callback: VerifyCallback): void;
  override verify(callback?: VerifyCallback): Promise<true> | void {
    const result = super.verify().catch((err: Error) => {
      throw this.explain(err);
    });
    if (!callback) return result;
    result.then(
      () => callback(null, true),
      (err: NodemailerError) => (callback as (err: NodemailerError) => void)(err),
    );
  }
}

/**
 * Create the `sendmail-bs:` transport. Wrap it with `nodemailer.createTransport()` (as
 * `createTransporter("sendmail-bs:/usr/sbin/sendmail")` does).
 *
 * @example
 * ```ts
 * const transporter = nodemailer.createTransport(createSendmailBsTransport({ path: "/usr/sbin/sendmail", timeoutMs: 30_000 }));
 * ```
 */
export function createSendmailBsTransport(options: SendmailBsTransportOptions = {}): SendmailBsPool {
  return new SendmailBsPool(options);
}
