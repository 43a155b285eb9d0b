/**
 * A pooled SMTP transport for the relay's hot path that pipelines (RFC 2920): MAIL FROM, every
 * RCPT TO and DATA go out in one write, the message and its final dot in a second one, so a
 * message costs two round trips instead of nodemailer's four or more. A connection carries up to
 * `pipelineDepth` (4) transactions at once: the next one's commands follow a message's final dot
 * in the same write, and the replies, which come back in order, are matched to them in order.
 * It carries messages that are already composed (`raw`), which is all the relay sends. A server
 * that does not offer PIPELINING gets one command at a time and one transaction per connection.
 *
 * Cost per message (the relay's hot path): one write system call (what a turn of the event loop
 * wrote to a connection goes out as one buffer), replies parsed out of one reused read buffer
 * (`onread`: no readable stream, no buffer per read), one promise for the pipelined group's
 * replies and one for the final reply. bench/transport-only.ts measures it without a database.
 *
 * It implements nodemailer's transport interface (`name`, `version`, `send`, `verify`, `close`,
 * `isIdle`), so `createTransporter` can hand it out like any transport, and declares its
 * `capabilities` (see `TransportCapabilities` in src/transport.ts): `sendRaw(envelope, raw)`,
 * which the relay calls directly to skip nodemailer's Mailer (no MimeNode per message), and
 * `capacity`, the hand-offs it carries at once, which sizes the relay's default concurrency.
 *
 * Scope: plain SMTP, no STARTTLS and no AUTH: `createTransporter` picks it by default for a
 * loopback MTA (a local Postfix or smarthost sidecar) without credentials, requireTLS, rateLimit
 * or maxRequeues, or when the URL says `pipelining=true`; everything else keeps nodemailer's pool.
 * Errors carry `code` and `responseCode` as nodemailer's do, so `classifyError` treats them alike.
 *
 * What goes into DATA is what every transport writes (src/wire.ts): lone CR/LF normalised to
 * CRLF, then dot-stuffed. A message with 8-bit bytes is declared `BODY=8BITMIME` when the server
 * offered 8BITMIME in its EHLO reply; otherwise it fails with `EightBitMimeError` (permanent)
 * before any command of its transaction is written.
 *
 * Delivery status notifications (RFC 3461): when the envelope carries a `DsnRequest` and the
 * server offered DSN in its EHLO reply, MAIL FROM gets `RET=` and `ENVID=` and every RCPT TO gets
 * `NOTIFY=` and `ORCPT=rfc822;<recipient>` (values xtext-encoded; no ORCPT for a recipient with
 * non-ASCII characters, which would need RFC 6533's utf-8 type). To a server without DSN, nothing
 * is added (the MTA's defaults apply).
 *
 * Over 400 lines: one SMTP client, the connection (greeting, EHLO, pipelined transactions, replies
 * matched in order) and the pool over it; the two share the protocol's state and read best together.
 */
import net from "node:net";
import { performance } from "node:perf_hooks";
import type { Transport } from "nodemailer";
import { encodeXText } from "nodemailer/lib/shared";
import { EightBitMimeError } from "./errors.js";
import { eightBitAt, toSmtpData } from "./wire.js";

import { dsnRequestOf, nodemailerDsn, type DsnRequest, type NodemailerDsn, type RawEnvelope, type RawSend, type RawSendResult } from "./transport.js";

export interface PipelinedSmtpOptions {
  readonly host: string;
  readonly port: number;
  readonly maxConnections: number;
  /** Messages per connection before it is replaced. */
  readonly maxMessages: number;
  readonly name: string;
  readonly connectionTimeoutMs: number;
  readonly socketTimeoutMs: number;
  /** Transactions one connection carries at once when the server offers PIPELINING. @default 4 */
  readonly pipelineDepth?: number;
  /**
   * A full SMTP client to switch to, for good, when the server answers 530 (it requires STARTTLS
   * or AUTH before mail, which this client does not speak): `createTransporter` passes nodemailer's
   * pool with the same URL's options. Without it, 530 is a permanent failure like any 5xx.
   */
  readonly fallback?: () => FallbackSender;
}

/** What the pipelined transport needs of the client it falls back to (a nodemailer Transporter). */
export interface FallbackSender {
  sendMail(mail: { envelope: { from: string; to: string[] }; raw: Buffer; dsn?: NodemailerDsn }): Promise<RawSendResult>;
  close(): void;
  isIdle?(): boolean;
}

interface Reply {
  readonly code: number;
  readonly text: string;
}

/** What waits for the next reply: replies come back in the order of the commands. */
interface ReplyWaiter {
  ok(reply: Reply): void;
  err(error: Error): void;
}

/**
 * One waiter for a pipelined group of `n` commands: it is queued once per command and settles
 * one promise with the `n` replies, instead of a promise per reply (the hot path's groups are
 * MAIL FROM, RCPT TO and DATA of every mail).
 */
class ReplyGroup implements ReplyWaiter {
  readonly replies: Reply[] = [];
  constructor(
    private readonly n: number,
    private readonly resolve: (replies: Reply[]) => void,
    readonly err: (error: Error) => void,
  ) {}

  ok(reply: Reply): void {
    this.replies.push(reply);
    if (this.replies.length === this.n) this.resolve(this.replies);
  }
}

/** Bytes of the buffer a connection reads into (reused for every read: replies are parsed out of it at once). */
const READ_BUFFER_BYTES = 16 * 1024;

const noop = (): void => {};

function smtpError(message: string, code: string, responseCode?: number, response?: string): Error {
  return Object.assign(new Error(message), { code, ...(responseCode !== undefined ? { responseCode, response } : {}) });
}

function flushConnection(c: Connection): void {
  c.flush();
}

class Connection {
  private readonly socket: net.Socket;
  /** Bytes of a reply line that has not ended yet (copied: the read buffer is reused). */
  private carry: Buffer | null = null;
  private lines: string[] = [];
  private readonly waiting: ReplyWaiter[] = [];
  /** Writes gathered in this turn of the event loop, sent as one buffer when its microtasks are done. */
  private out: (string | Buffer)[] = [];
  /** Whether a transaction holds the turn to write (its commands are out, its message not yet). */
  private turnTaken = false;
  /** Transactions waiting for the turn, in order. */
  private readonly turns: (() => void)[] = [];
  /** Whether writes are being gathered for one segment, sent when the current microtasks are done. */
  corked = false;
  broken: Error | null = null;
  /** Transactions started on this connection (counted against maxMessages). */
  started = 0;
  /** Transactions started and not yet answered. */
  inflight = 0;
  /** Transactions started whose message is not written yet: the connection has a write ahead of it. */
  unsent = 0;
  /**
   * Whether the server answered the last transaction quickly (its 354 and its final reply each
   * within {@link QUICK_REPLY_MS} of the write they answer): then new transactions may be stacked
   * on a connection that writes anyway (see `acquire`); a slow server gets them spread instead.
   */
  quick = false;
  /** Whether the server offered PIPELINING (RFC 2920); without it, commands go one at a time. */
  pipelining = false;
  /** Whether the server offered 8BITMIME (RFC 6152); without it, 8-bit messages are refused unsent. */
  eightBitMime = false;
  /** Whether the server offered DSN (RFC 3461); without it, no DSN parameters are sent. */
  dsn = false;
  readonly opened: Promise<void>;

  constructor(private readonly o: PipelinedSmtpOptions) {
    // `onread`: replies are parsed out of one reused buffer, without the readable stream's
    // machinery and a new buffer per read ('data' events are not emitted; 'end', 'close' and
    // 'error' are).
    const socket = net.connect({
      host: o.host,
      port: o.port,
      onread: {
        buffer: Buffer.allocUnsafe(READ_BUFFER_BYTES),
        callback: (n: number, buf: Uint8Array) => {
          this.onData(buf as Buffer, n);
          return true;
        },
      },
    });
    this.socket = socket;
    this.socket.setNoDelay(true);
    this.socket.setTimeout(o.socketTimeoutMs, () => this.fail(smtpError("Timeout", "ETIMEDOUT")));
    this.socket.on("error", (e: Error & { code?: string }) => this.fail(smtpError(e.message, e.code === "ECONNREFUSED" ? "ECONNREFUSED" : "ESOCKET")));
    this.socket.on("close", () => this.fail(smtpError("Connection closed", "ECONNECTION")));
    const timer = setTimeout(() => this.fail(smtpError("Connection timeout", "ETIMEDOUT")), o.connectionTimeoutMs);
    this.opened = (async () => {
      try {
        // Errors here carry nodemailer's `command` (CONN, EHLO, HELO): a refused session is not a refused mail.
        const greeting = await this.reply();
        if (greeting.code !== 220) throw Object.assign(smtpError(`Invalid greeting: ${greeting.text}`, "EPROTOCOL", greeting.code, greeting.text), { command: "CONN" });
        socket.write(`EHLO ${o.name}\r\n`);
        const ehlo = await this.reply();
        if (ehlo.code === 421) throw Object.assign(smtpError(ehlo.text, "ECONNECTION", ehlo.code, ehlo.text), { command: "EHLO" });
        if (ehlo.code !== 250) {
          // A server without ESMTP: HELO, as nodemailer does, and no pipelining.
          socket.write(`HELO ${o.name}\r\n`);
          const helo = await this.reply();
          if (helo.code !== 250) throw Object.assign(smtpError(helo.text, "EPROTOCOL", helo.code, helo.text), { command: "HELO" });
          return;
        }
        this.pipelining = /^250[ -]PIPELINING\b/im.test(ehlo.text);
        this.eightBitMime = /^250[ -]8BITMIME\b/im.test(ehlo.text);
        this.dsn = /^250[ -]DSN\b/im.test(ehlo.text);
      } finally {
        clearTimeout(timer);
      }
    })();
    this.opened.catch(() => this.close());
  }

  private fail(e: Error): void {
    this.broken ??= e;
    this.out = [];
    for (const w of this.waiting.splice(0)) w.err(e);
    this.socket.destroy();
  }

  /**
   * Hot path (a read or more per mail): reply lines found by index in the read buffer, checked
   * byte by byte (no string per chunk, no regular expression per line).
   */
  private onData(buf: Buffer, n: number): void {
    let data = buf.subarray(0, n);
    if (this.carry !== null) {
      data = Buffer.concat([this.carry, data]);
      this.carry = null;
    }
    const length = data.length;
    let start = 0;
    let i: number;
    while (start < length && (i = data.indexOf(10, start)) >= 0) {
      const end = i > start && data[i - 1] === 13 ? i - 1 : i;
      const lineStart = start;
      start = i + 1;
      // An SMTP reply line: /^[2-5]\d\d(?:[ -]|$)/.
      const c0 = data[lineStart]!;
      const c1 = data[lineStart + 1]!;
      const c2 = data[lineStart + 2]!;
      const c3 = end - lineStart > 3 ? data[lineStart + 3]! : 32;
      if (end - lineStart < 3 || c0 < 50 || c0 > 53 || c1 < 48 || c1 > 57 || c2 < 48 || c2 > 57 || (c3 !== 32 && c3 !== 45)) {
        // Not an SMTP reply: the connection cannot be trusted to pair replies with commands.
        const line = data.toString("latin1", lineStart, end);
        this.fail(smtpError(`Invalid reply from the server: ${JSON.stringify(line.slice(0, 200))}`, "EPROTOCOL"));
        return;
      }
      const line = data.toString("latin1", lineStart, end);
      if (c3 === 45 /* "-": more lines follow */) {
        this.lines.push(line);
        continue;
      }
      let text = line;
      if (this.lines.length > 0) {
        this.lines.push(line);
        text = this.lines.join("\n");
        this.lines = [];
      }
      const w = this.waiting.shift();
      if (w) w.ok({ code: (c0 - 48) * 100 + (c1 - 48) * 10 + (c2 - 48), text });
      else {
        this.fail(smtpError(`Unexpected reply: ${text}`, "EPROTOCOL"));
        return;
      }
    }
    // The rest of a line that has not ended: copied, since the read buffer is used again.
    if (start < length) this.carry = Buffer.from(data.subarray(start));
  }

  private reply(): Promise<Reply> {
    if (this.broken) return Promise.reject(this.broken);
    return new Promise((resolve, reject) => this.waiting.push({ ok: resolve, err: reject }));
  }

  /**
   * Write now, but let whatever else is written before the current microtasks finish go out in
   * the same segment: the next transaction's MAIL FROM, RCPT TO and DATA follow a message's final
   * dot in one write (RFC 2920 allows the message content to start a group). The pieces go out as
   * one buffer in one `write` (one system call, none of the stream's writev bookkeeping).
   */
  private write(data: string | Buffer): void {
    this.out.push(data);
    if (!this.corked) {
      this.corked = true;
      process.nextTick(flushConnection, this);
    }
  }

  /** Send what `write` gathered. */
  flush(): void {
    this.corked = false;
    const out = this.out;
    if (out.length === 0) return;
    this.out = [];
    if (this.broken) return;
    if (out.length === 1) {
      this.socket.write(out[0]!);
      return;
    }
    let size = 0;
    for (const piece of out) size += typeof piece === "string" ? Buffer.byteLength(piece) : piece.length;
    const segment = Buffer.allocUnsafe(size);
    let at = 0;
    for (const piece of out) at += typeof piece === "string" ? segment.write(piece, at) : piece.copy(segment, at);
    this.socket.write(segment);
  }

  /** Hand the turn to write to the next transaction waiting for it, or free it. */
  private passTurn(): void {
    const next = this.turns.shift();
    if (next) next();
    else this.turnTaken = false;
  }

  /**
   * Hand over one message. With PIPELINING, a connection carries several transactions at once:
   * each one sends its commands as soon as the one before has sent its message, and the replies,
   * which come back in order, are matched to them in order. Without it, one transaction at a time.
   */
  async send(envelope: RawEnvelope, raw: Buffer): Promise<RawSendResult> {
    this.started++;
    this.inflight++;
    this.unsent++;
    let passed = false;
    const pass = () => {
      if (!passed) {
        passed = true;
        this.unsent--;
        this.passTurn();
      }
    };
    try {
      if (this.turnTaken) await new Promise<void>((resolve) => this.turns.push(resolve));
      else this.turnTaken = true;
      if (this.broken) throw this.broken;
      return await this.transaction(envelope, raw, this.pipelining ? pass : noop);
    } finally {
      this.inflight--;
      pass();
    }
  }

  /** `sent` is called once the message and its final dot are written: the next transaction may start. */
  private async transaction(envelope: RawEnvelope, raw: Buffer, sent: () => void): Promise<RawSendResult> {
    let bodySent = false;
    try {
      // RFC 6152: 8-bit bytes go only to a server that offers 8BITMIME, declared on MAIL FROM. To
      // one that does not, nothing is sent (no command either): a permanent EightBitMimeError.
      const eightBit = eightBitAt(raw);
      if (eightBit >= 0 && !this.eightBitMime) throw new EightBitMimeError(`${this.o.host}:${this.o.port}`, eightBit);
      const dsn = this.dsn ? (envelope.dsn ?? null) : null;
      const mailFrom = `MAIL FROM:<${envelope.from}>${eightBit >= 0 ? " BODY=8BITMIME" : ""}${dsn ? ` RET=${dsn.ret} ENVID=${encodeXText(dsn.envid)}` : ""}\r\n`;
      let replies: Reply[];
      let data: Reply;
      let commandsAt = 0;
      if (this.pipelining) {
        // One string for the group: MAIL FROM, every RCPT TO, DATA.
        let group = mailFrom;
        for (const t of envelope.to) group += rcptLine(t, dsn);
        group += "DATA\r\n";
        commandsAt = performance.now();
        replies = await this.group(group, envelope.to.length + 2);
        data = replies[replies.length - 1]!;
        replies = replies.slice(0, -1);
      } else {
        // One at a time: stop at a refused MAIL FROM, and send DATA only if a recipient was accepted.
        const mailReply = await this.command(mailFrom);
        replies = [mailReply];
        if (mailReply.code < 400) for (const t of envelope.to) replies.push(await this.command(rcptLine(t, dsn)));
        data = replies.length > 1 && replies.slice(1).some((r) => r.code < 300) ? await this.command("DATA\r\n") : { code: 0, text: "DATA not sent" };
      }
      const mail = replies[0]!;
      if (mail.code >= 400) {
        if (data.code === 354) await this.abortData();
        throw smtpError(`Mail command failed: ${mail.text}`, "EENVELOPE", mail.code, mail.text);
      }
      // The common case, every recipient accepted: no lists of refusals built.
      let accepted: readonly string[] = envelope.to;
      const rejectedErrors: RawSendResult["rejectedErrors"] = [];
      if (replies.some((r, i) => i > 0 && r.code >= 300)) {
        const taken: string[] = [];
        for (let i = 1; i < replies.length; i++) {
          const r = replies[i]!;
          const recipient = envelope.to[i - 1]!;
          if (r.code < 300) taken.push(recipient);
          else rejectedErrors.push({ recipient, response: r.text, responseCode: r.code });
        }
        accepted = taken;
      }
      const rejected = () => ({ rejected: rejectedErrors.map((e) => e.recipient), rejectedErrors });
      if (accepted.length === 0) {
        if (data.code === 354) await this.abortData();
        // A deferred (4xx) recipient makes the whole failure transient, as with nodemailer.
        const first = rejectedErrors.find((e) => e.responseCode < 500) ?? rejectedErrors[0]!;
        throw Object.assign(smtpError(`Can't send mail - all recipients were rejected: ${first.response}`, "EENVELOPE", first.responseCode, first.response), rejected());
      }
      if (data.code !== 354) {
        // Some recipient was accepted: the DATA reply decides (a 451 here is "try later", whatever a
        // refused recipient said).
        throw Object.assign(smtpError(`Data command failed: ${data.text}`, "EENVELOPE", data.code, data.text), rejected());
      }
      const final = this.reply();
      // Lone CR/LF normalised to CRLF and dot-stuffed (src/wire.ts): no bare CR before a "." can
      // end DATA early at a receiver that treats a bare CR as a line end.
      const body = toSmtpData(raw);
      const bodyAt = performance.now();
      this.write(body);
      this.write(body[body.length - 1] === 0x0a ? ".\r\n" : "\r\n.\r\n");
      bodySent = true;
      sent();
      const end = await final;
      if (this.pipelining) this.quick = bodyAt - commandsAt < QUICK_REPLY_MS && performance.now() - bodyAt < QUICK_REPLY_MS;
      if (end.code !== 250) throw smtpError(`Message failed: ${end.text}`, "EMESSAGE", end.code, end.text);
      return { response: end.text, accepted: [...accepted], rejected: rejectedErrors.map((e) => e.recipient), rejectedErrors };
    } catch (err) {
      // Refused before the message went out: reset the transaction before the connection is used
      // again (a MAIL FROM it accepted would otherwise make the next one a "nested MAIL command").
      // After the final dot the transaction is over whatever the reply, and the next one may
      // already be on the wire: no RSET then.
      if (!bodySent && !this.broken && (err as { responseCode?: number }).responseCode !== undefined) {
        const reset = await this.command("RSET\r\n").catch(() => null);
        if (!reset || reset.code !== 250) this.fail(smtpError("RSET failed", "EPROTOCOL"));
      }
      throw err;
    }
  }

  /** Send a pipelined group of `n` commands in one write; its `n` replies, in order. */
  private group(commands: string, n: number): Promise<Reply[]> {
    if (this.broken) return Promise.reject(this.broken);
    const replies = new Promise<Reply[]>((resolve, reject) => {
      const group = new ReplyGroup(n, resolve, reject);
      for (let i = 0; i < n; i++) this.waiting.push(group);
    });
    this.write(commands);
    return replies;
  }

  /** Send one command and wait for its reply. */
  private command(line: string): Promise<Reply> {
    const r = this.reply();
    this.write(line);
    return r;
  }

  /** After 354 with no recipient left: end the empty message at once and reset, as nodemailer does. */
  private async abortData(): Promise<void> {
    await this.command(".\r\n").catch(() => {});
  }

  close(): void {
    // Whatever was gathered goes out before QUIT.
    if (this.corked) this.flush();
    if (!this.broken) this.socket.end("QUIT\r\n");
    this.broken ??= smtpError("Connection closed", "ECONNECTION");
  }
}

/** An RCPT TO line, with the DSN parameters when asked for and offered. */
function rcptLine(to: string, dsn: DsnRequest | null): string {
  if (!dsn) return `RCPT TO:<${to}>\r\n`;
  return `RCPT TO:<${to}> NOTIFY=${dsn.notify.join(",")}${/^[\x21-\x7e]+$/.test(to) ? ` ORCPT=rfc822;${encodeXText(to)}` : ""}\r\n`;
}

/** Transactions one connection carries at once when the server pipelines. */
export const DEFAULT_PIPELINE_DEPTH = 4;

/** A server whose 354 and final reply each come within this many ms is "quick" (see `Connection.quick`). */
const QUICK_REPLY_MS = 5;

export function createPipelinedSmtpTransport(
  o: PipelinedSmtpOptions,
): Transport & { readonly capabilities: { readonly capacity: number; readonly sendRaw: RawSend }; close(): void; isIdle(): boolean; verify(): Promise<true> } {
  const depth = Math.max(1, o.pipelineDepth ?? DEFAULT_PIPELINE_DEPTH);
  const conns = new Set<Connection>();
  const opening = new Set<Promise<Connection>>();
  const waiters: (() => void)[] = [];
  let closed = false;

  const usable = (c: Connection) => !c.broken && c.started < o.maxMessages;
  const retire = (c: Connection) => {
    if (c.inflight === 0 && !usable(c)) {
      conns.delete(c);
      c.close();
    }
  };
  const wake = () => {
    const w = waiters.shift();
    if (w) w();
  };

  /**
   * A connection with room for one more transaction, from those open: `ready` (one to use now),
   * else the least busy pipelining one with room (used when no new connection may be opened).
   */
  const pick = (): { ready: Connection | null; best: Connection | null } => {
    let best: Connection | null = null;
    // (Deleting the current entry of a Set while iterating it is safe.)
    for (const c of conns) {
      if (!usable(c)) {
        retire(c);
        continue;
      }
      // A connection to a quick server that writes anyway, in this turn of the event loop
      // (corked) or with a message still waiting for its 354: the transaction's commands ride in
      // that segment instead of a write of their own (on loopback the write system call is most
      // of the client's CPU per mail: 1.27 writes per mail became 1.05). Stacking transactions
      // costs nothing when the server answers in a few ms; a slow one gets them spread over idle
      // connections as before, where they overlap its delays.
      if (c.quick && c.pipelining && c.inflight < depth && (c.corked || c.unsent > 0)) return { ready: c, best };
      if (c.inflight === 0) return { ready: c, best };
      if (c.pipelining && c.inflight < depth && (!best || c.inflight < best.inflight)) best = c;
    }
    return { ready: null, best };
  };

  /** A connection with room for one more transaction: an idle one, a new one, or the least busy pipelining one. */
  const acquire = async (): Promise<Connection> => {
    for (;;) {
      if (closed) throw smtpError("The transport is closed", "ECONNECTION");
      const { ready, best } = pick();
      if (ready) return ready;
      if (conns.size + opening.size < o.maxConnections) {
        const conn = new Connection(o);
        const opened = conn.opened.then(() => conn);
        opening.add(opened);
        try {
          await opened;
        } finally {
          opening.delete(opened);
          wake();
        }
        if (closed) {
          conn.close();
          continue;
        }
        conns.add(conn);
        return conn;
      }
      if (best) return best;
      await new Promise<void>((resolve) => waiters.push(resolve));
    }
  };

  let fallback: FallbackSender | null = null;
  const viaFallback = (envelope: RawEnvelope, raw: Buffer) =>
    fallback!.sendMail({ envelope: { from: envelope.from, to: [...envelope.to] }, raw, ...(envelope.dsn ? { dsn: nodemailerDsn(envelope.dsn) } : {}) });

  const sendRaw = async (envelope: RawEnvelope, raw: Buffer): Promise<RawSendResult> => {
    if (fallback) return viaFallback(envelope, raw);
    // Most hand-offs find a connection at once: no await for those.
    const c = (!closed && pick().ready) || (await acquire());
    try {
      return await c.send(envelope, raw);
    } catch (err) {
      // 530: the MTA wants STARTTLS or AUTH first (5.7.0). The message was not taken; hand it, and
      // every later one, to the full client instead of parking it as a permanent failure.
      if ((err as { responseCode?: number }).responseCode === 530 && o.fallback && !closed) {
        if (!fallback) {
          fallback = o.fallback();
          process.emitWarning(
            `${o.host}:${o.port} answered ${JSON.stringify((err as { response?: string }).response ?? "530")}: it requires STARTTLS or AUTH, which the pipelining SMTP client does not speak; switching to nodemailer's SMTP pool. Add ?pipelining=false to the transport URL to start with it.`,
            { code: "MAIL_OUTBOX_PIPELINING_FALLBACK" },
          );
          for (const idle of conns) if (idle.inflight === 0) idle.close();
        }
        return viaFallback(envelope, raw);
      }
      throw err;
    } finally {
      if (closed) {
        if (c.inflight === 0) c.close();
      } else {
        retire(c);
      }
      wake();
    }
  };
  return {
    name: "SMTP (pipelined)",
    version: "1.0.0",
    capabilities: {
      /** Hand-offs it carries at once when the server pipelines; the relay sizes its default concurrency by it. */
      capacity: o.maxConnections * depth,
      sendRaw,
    },
    send(mail, callback) {
      const given = mail.data.envelope as RawEnvelope | undefined;
      const raw = mail.data.raw;
      // nodemailer's `dsn` message option (see `rawSendMailOptions`), when the envelope has none.
      const envelope = given && given.dsn === undefined ? { ...given, dsn: dsnRequestOf(mail.data as { dsn?: unknown }) } : given;
      if (!envelope || !Buffer.isBuffer(raw)) {
        callback(smtpError("The pipelined SMTP transport sends only composed messages (envelope and raw Buffer)", "EMESSAGE"), undefined as never);
        return;
      }
      sendRaw(envelope, raw).then(
        (r) => callback(null, { envelope, messageId: String((mail.data as { messageId?: unknown }).messageId ?? ""), ...r } as never),
        (e: Error) => callback(e, undefined as never),
      );
    },
    async verify(): Promise<true> {
      const c = new Connection(o);
      try {
        await c.opened;
      } finally {
        c.close();
      }
      return true;
    },
    isIdle: () => (fallback ? (fallback.isIdle?.() ?? true) : conns.size + opening.size < o.maxConnections || [...conns].some((c) => usable(c) && c.inflight < (c.pipelining ? depth : 1))),
    close() {
      closed = true;
      for (const c of conns) if (c.inflight === 0) c.close();
      for (const w of waiters.splice(0)) w();
      fallback?.close();
    },
  };
}
