/**
 * What every transport writes to the MTA: the stored bytes of a message, made safe for the wire
 * the same way by all four (`smtp://` pipelining, nodemailer's SMTP pool, `sendmail:`,
 * `sendmail-bs:`), so that one row gives one body whichever transport carries it.
 *
 * **Line endings.** SMTP allows CR and LF in DATA only together, as CRLF (RFC 5321 2.3.8). A lone
 * CR or lone LF is where receivers disagree: one that ends a line at a bare CR reads
 * `<CR>.<CR><LF>` as the end of DATA and the rest of the body as commands ("SMTP smuggling",
 * 2023). Compose writes CRLF only; rows written before that, or by other means, can hold lone
 * ones. Every wire writer normalises them instead of refusing the mail: each lone CR and each
 * lone LF becomes CRLF (so CR CR LF is two line ends). That is what nodemailer's own DATA stream
 * does, what a mail client shows for such a body anyway, and it loses no committed mail; refusing
 * would park mail that every MTA can carry once its line ends are fixed. The `sendmail:` pipe
 * gets the same lines with LF endings (the local sendmail convention).
 *
 * **8-bit bytes.** A message with a byte >= 0x80 is sent with `BODY=8BITMIME` (RFC 6152) to a
 * server that offers 8BITMIME, and to `sendmail` with `-B 8BITMIME`. A server that does not offer
 * it gets nothing: the hand-off fails with `EightBitMimeError` (code `E8BITMIME`, permanent).
 *
 * Cost: the checks run on every hand-off. A message that is already clean (CRLF only, 7-bit) is
 * scanned with `Buffer#indexOf` (two calls per line) and `buffer.isAscii` (SIMD) and never
 * copied: about 2 µs for 2 KiB and 1 ms for 1 MiB of 76-byte lines on a 2-core machine, up to
 * twice that under load (test/wire.test.ts reports it). Only a message that needs a change is copied.
 */
import { isAscii } from "node:buffer";
import SMTPPool from "nodemailer/lib/smtp-pool";
import type { SMTPPoolOptions, SMTPPoolSendCallback, SMTPPoolSentMessageInfo } from "nodemailer/lib/smtp-pool";
import type { MailMessage } from "nodemailer";
import { EightBitMimeError } from "./errors.js";

const CR = 0x0d;
const LF = 0x0a;
const DOT = 0x2e;

/**
 * One pass over the line ends, two `Buffer#indexOf` calls per line and no copy: the offset of the
 * first lone CR or lone LF; else -1 when every line end is a CRLF and no line starts with ".",
 * -2 when every line end is a CRLF and some line starts with "." (it needs dot-stuffing).
 */
function scanLines(b: Buffer): number {
  let dot = b[0] === DOT;
  let from = 0;
  for (;;) {
    const cr = b.indexOf(CR, from);
    const lf = b.indexOf(LF, from);
    if (cr < 0) return lf >= 0 ? lf : dot ? -2 : -1;
    if (lf !== cr + 1) return lf >= 0 && lf < cr ? lf : cr;
    from = lf + 1;
    if (b[from] === DOT) dot = true;
  }
}

function asBuffer(buf: Uint8Array): Buffer {
  return Buffer.isBuffer(buf) ? buf : Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
}

/** Offset of the first lone CR or lone LF in `buf`, or -1 when every CR and LF in it is part of a CRLF. */
export function bareLineEndAt(buf: Uint8Array): number {
  return Math.max(scanLines(asBuffer(buf)), -1);
}

/** True when some byte of `buf` is >= 0x80 (8-bit data in the sense of RFC 6152). */
export function hasEightBit(buf: Uint8Array): boolean {
  return buf.length > 0 && !isAscii(buf);
}

/** Offset of the first byte >= 0x80, or -1 (a SIMD check first; the loop runs only for 8-bit mail). */
export function eightBitAt(buf: Uint8Array): number {
  if (!hasEightBit(buf)) return -1;
  for (let i = 0; i < buf.length; i++) if (buf[i]! >= 0x80) return i;
  return -1;
}

function latin1(buf: Uint8Array): string {
  return asBuffer(buf).toString("latin1");
}

function normalise(buf: Buffer): Buffer {
  return Buffer.from(latin1(buf).replace(/\r\n?|\n/g, "\r\n"), "latin1");
}

/**
 * Every lone CR and lone LF turned into CRLF; `buf` itself when there is none (no copy).
 * CR CR LF becomes CRLF CRLF, as in nodemailer's DATA stream.
 */
export function toCrlf(buf: Buffer): Buffer {
  return scanLines(buf) < 0 ? buf : normalise(buf);
}

/** The same lines as `toCrlf`, ended by LF only (for a local sendmail program); `buf` itself when it has no CR. */
export function toLf(buf: Buffer): Buffer {
  if (buf.indexOf(CR) < 0) return buf;
  return Buffer.from(latin1(buf).replace(/\r\n?/g, "\n"), "latin1");
}

/**
 * The DATA content for an SMTP client that writes the socket itself: line ends normalised to
 * CRLF (see `toCrlf`) and every line that starts with "." given a second one (RFC 5321 4.5.2).
 * `buf` itself when there is nothing to change. The caller adds the final `.` line (after a CRLF
 * when the message does not end with one).
 */
export function toSmtpData(buf: Buffer): Buffer {
  const scan = scanLines(buf);
  if (scan === -1) return buf;
  const crlf = scan === -2 ? buf : normalise(buf);
  if (scan !== -2 && crlf[0] !== DOT && crlf.indexOf("\n.") < 0) return crlf;
  return Buffer.from(latin1(crlf).replace(/^\./, "..").replace(/\n\./g, "\n.."), "latin1");
}

// ---- nodemailer's SMTP pool -----------------------------------------------------------------

/** The part of nodemailer's SMTPConnection the 8BITMIME guard touches. */
interface GuardedConnection {
  send(envelope: { use8BitMime?: boolean } | undefined, message: unknown, done: (err: Error | null, info?: unknown) => void): void;
}

let warnedInternals = false;
function warnInternals(what: string): void {
  if (warnedInternals) return;
  warnedInternals = true;
  process.emitWarning(
    `prisma-mail-outbox: nodemailer's ${what} is not where this version expects it; 8-bit mail to a server without 8BITMIME is no longer refused (BODY=8BITMIME is still declared when offered). Please report this with your nodemailer version.`,
    { code: "MAIL_OUTBOX_NODEMAILER_INTERNALS" },
  );
}

/**
 * Whether the server this connection greeted offered 8BITMIME in its EHLO reply.
 *
 * Relies on nodemailer internals, isolated here: SMTPConnection keeps the EHLO keywords it
 * recognised in `_supportedExtensions` (nodemailer 10; `8BITMIME` among them) and has no public
 * accessor for them. test/wire.test.ts pins this down against servers with and without 8BITMIME.
 * When the field is missing, the answer is `true` (nodemailer then decides alone: it declares
 * BODY=8BITMIME when offered) and a warning is emitted once.
 */
function offers8BitMime(connection: object): boolean {
  const extensions = (connection as { _supportedExtensions?: unknown })._supportedExtensions;
  if (!Array.isArray(extensions)) {
    warnInternals("SMTPConnection._supportedExtensions");
    return true;
  }
  return extensions.includes("8BITMIME");
}

/** The first 8-bit byte of messages under way, by the envelope object nodemailer hands to the connection. */
const eightBitOffsets = new WeakMap<object, number>();
/** Envelopes of 8-bit messages that passed a guarded connection (to notice a guard that was never installed). */
const guardedEnvelopes = new WeakSet<object>();

/**
 * nodemailer's SMTP pool, writing what the other transports write (see the top of this module):
 * a `raw` message gets its lone CR/LF normalised to CRLF, and one with 8-bit bytes is declared
 * with `BODY=8BITMIME` (nodemailer's `envelope.use8BitMime`), or refused with
 * `EightBitMimeError` before MAIL FROM when the connection's server does not offer 8BITMIME.
 * Used for `smtp(s)://` without pipelining and, through `SendmailBsPool`, for `sendmail-bs:`.
 *
 * Delivery status notifications: nodemailer's `dsn` message option (`{ id, return, notify }`,
 * what `rawSendMailOptions` in src/transport.ts passes) becomes `RET=`/`ENVID=` on MAIL FROM and
 * `NOTIFY=` on each RCPT TO when the server offers DSN; nodemailer sends no per-recipient ORCPT
 * (it has one `orcpt` per message, which would be wrong for all but one recipient).
 */
export class WireSmtpPool extends SMTPPool {
  constructor(options: SMTPPoolOptions) {
    super(options);
    // nodemailer internals, isolated here: the pool creates one PoolResource per connection in
    // `_createConnection()`, and the resource sets `resource.connection` (an SMTPConnection) once
    // it connects, before it sends anything. Guard each connection as it is set.
    const pool = this as unknown as { _createConnection?: () => object };
    const create = pool._createConnection;
    if (typeof create !== "function") {
      warnInternals("SMTPPool._createConnection");
      return;
    }
    pool._createConnection = () => {
      const resource = create.call(this);
      let connection: GuardedConnection | undefined = (resource as { connection?: GuardedConnection }).connection;
      Object.defineProperty(resource, "connection", {
        configurable: true,
        enumerable: true,
        get: () => connection,
        set: (c: GuardedConnection | undefined) => {
          connection = c && this.guard(c);
        },
      });
      return resource;
    };
  }

  /** The server, as error messages name it. */
  protected serverName(): string {
    return `${this.options.host ?? "localhost"}:${this.options.port ?? 25}`;
  }

  /** Refuse an 8-bit message on a connection whose server did not offer 8BITMIME, before MAIL FROM. */
  private guard(connection: GuardedConnection): GuardedConnection {
    const send = connection.send;
    connection.send = (envelope, message, done) => {
      if (envelope?.use8BitMime === true) guardedEnvelopes.add(envelope);
      if (envelope?.use8BitMime === true && !offers8BitMime(connection)) {
        const stream = message as { destroy?: () => void } | null;
        if (typeof stream?.destroy === "function") stream.destroy();
        const err = new EightBitMimeError(this.serverName(), eightBitOffsets.get(envelope) ?? -1);
        setImmediate(() => done(err));
        return;
      }
      send.call(connection, envelope, message, done);
    };
    return connection;
  }

  override send(mail: MailMessage<SMTPPoolSentMessageInfo>, callback: SMTPPoolSendCallback): boolean {
    const raw: unknown = mail.data.raw;
    const bytes = Buffer.isBuffer(raw) ? raw : raw instanceof Uint8Array ? Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength) : typeof raw === "string" ? Buffer.from(raw, "utf8") : null;
    // A message nodemailer composes itself (no `raw`) is left to nodemailer.
    if (bytes !== null) {
      const clean = toCrlf(bytes);
      if (clean !== raw) mail.message.setRaw(clean);
      const at = eightBitAt(bytes); // an offset into the stored message
      if (at >= 0) {
        mail.message.setEnvelope({ ...mail.message.getEnvelope(), use8BitMime: true });
        const envelope = mail.message.getEnvelope();
        eightBitOffsets.set(envelope, at);
        return super.send(mail, (err, info) => {
          // Sent without passing the guard: nodemailer's internals moved (see the constructor).
          if (!err && !guardedEnvelopes.has(envelope)) warnInternals("PoolResource.connection");
          callback(err, info);
        });
      }
    }
    return super.send(mail, callback);
  }
}
