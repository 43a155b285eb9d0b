/**
 * The one SMTP server of this repository: the tests, the soak, the benchmark and the examples all
 * use it. Not part of the package (`package.json` "files" leaves it out); it sits at the top
 * level, not under test/, because the examples and the benchmark use it too.
 *
 * - `startTestSmtp()`: a real SMTP server in this process (the `smtp-server` package) on
 *   127.0.0.1, with hooks that inject faults (replies, dropped connections, stalls; at the
 *   greeting, MAIL FROM, RCPT TO or the end of DATA). It answers the end of DATA like Postfix
 *   (`250 2.0.0 Ok: queued as 8CCD166093`, a 10-hex-digit queue id unique to the server) and
 *   records every message it takes, or with `capture: "count"` only counts Message-IDs (the
 *   benchmark's sink).
 * - `startScriptedSmtp()`: a raw peer that answers each command line from a script, for replies
 *   `smtp-server` cannot be made to give (a refused DATA command, a line that is not SMTP, a 554
 *   greeting that keeps the session open). It is a separate function, not a mode of the server
 *   above: `smtp-server` sends 354 itself before it calls `onData` and writes only well-formed
 *   replies, so those replies need a socket of its own.
 * - Fault hooks: `failRate` (seeded random share of messages), `failTimes`, `rejectRecipients`,
 *   `combineFaults`, and the seeded PRNG `seededRandom` (the soak's faults draw from it).
 *
 * @example
 * ```ts
 * const smtp = await startTestSmtp({ faults: failRate({ transient: 0.1, seed: 7 }) });
 * try {
 *   const transporter = createTransporter(smtp.url);
 *   ...
 *   await smtp.waitFor(100, 10_000);
 *   assert.ok([...smtp.countByMessageId().values()].every((n) => n === 1));
 * } finally {
 *   await smtp.close();
 * }
 * ```
 */
import { EventEmitter } from "node:events";
import net from "node:net";
import type { AddressInfo, Socket } from "node:net";
import { SMTPServer } from "smtp-server";
import type { SMTPServerSession, SMTPServerDataStream } from "smtp-server";

export type FaultPhase = "connect" | "mail" | "rcpt" | "data";

export interface FaultContext {
  readonly phase: FaultPhase;
  /** The recipient being answered (phase `rcpt`). */
  readonly recipient?: string;
  /** The Message-ID header of the message (phase `data` only, after the body was received; null when it has none). */
  readonly messageId?: string | null;
  /** 1 for the first connection the server accepted, 2 for the next... */
  readonly session: number;
}

/**
 * What to do instead of the normal answer:
 * - `{ reply: 451, message }`: answer with that code (4xx/5xx). At `data` the message is not recorded.
 * - `{ drop: true }`: destroy the connection without answering. At `data` this happens after the
 *   whole body was received, and the server keeps the message (recorded, `replyDropped: true`):
 *   the MTA took it but the client never heard, the duplicate window. `keep: false` discards it.
 * - `{ stallMs }`: answer normally, but only after `stallMs`. At `data` the message is recorded
 *   before the stall (a real MTA commits, then answers).
 */
export type Fault = { readonly reply: number; readonly message?: string } | { readonly drop: true; readonly keep?: boolean } | { readonly stallMs: number };

export type FaultHook = (ctx: FaultContext) => Fault | undefined;

export interface ReceivedMessage {
  /** The Message-ID header as written, with angle brackets; null when the message has none. */
  readonly messageId: string | null;
  readonly envelopeFrom: string;
  readonly recipients: string[];
  readonly raw: Buffer;
  /** The id given in the 250 reply (also given to a dropped reply). */
  readonly queueId: string;
  readonly receivedAt: number;
  /** The connection was dropped instead of answering 250 (a `{ drop: true }` fault at `data`). */
  readonly replyDropped: boolean;
  /** The user name that authenticated, if any. */
  readonly authUser: string | null;
  readonly session: number;
  /** The parameters of its MAIL FROM command, upper-cased keys (`{ BODY: "8BITMIME" }`); `{}` for none. */
  readonly mailFromArgs: Record<string, string>;
}

export interface TestSmtp {
  readonly port: number;
  /** `smtp://127.0.0.1:PORT` */
  readonly url: string;
  /** Every message taken, in order (always empty with `capture: "count"`). */
  readonly messages: ReceivedMessage[];
  /** How often each Message-ID arrived (duplicates show as > 1; `(none)` for messages without one). A copy. */
  countByMessageId(): Map<string, number>;
  /**
   * Resolve once `predicate(messages)` holds, or once `count` messages arrived; reject after
   * `timeoutMs`. With `capture: "count"` a count counts every message taken since `clear()`.
   */
  waitFor(predicateOrCount: ((messages: readonly ReceivedMessage[]) => boolean) | number, timeoutMs?: number): Promise<void>;
  /** Forget the messages and counts taken so far (the benchmark's sink between runs). */
  clear(): void;
  setFaults(hook: FaultHook | null): void;
  /** Connections accepted so far. */
  readonly sessions: number;
  /** Every MAIL FROM the server answered, taken or not, in order, with its parameters (empty with `capture: "count"`). */
  readonly mailFroms: { readonly address: string; readonly args: Record<string, string> }[];
  /** Every byte clients sent, all sessions in order of arrival (empty unless `captureWire`). */
  wire(): Buffer;
  /** Stop listening and drop open connections: new connections get ECONNREFUSED. */
  refuseConnections(): Promise<void>;
  /** Listen again, on the same port. */
  acceptConnections(): Promise<void>;
  close(): Promise<void>;
}

export interface StartTestSmtpOptions {
  readonly faults?: FaultHook;
  /** @default 0 (any free port) */
  readonly port?: number;
  /** Require AUTH with exactly these credentials (535 otherwise). Without it any credentials are accepted and AUTH is optional. */
  readonly auth?: { readonly user: string; readonly pass: string };
  /** Leave PIPELINING out of the EHLO reply, as a server without RFC 2920 would. */
  readonly hidePipelining?: boolean;
  /** Answer EHLO with 500, as a server without ESMTP would (HELO still works). */
  readonly disableEhlo?: boolean;
  /** Leave 8BITMIME out of the EHLO reply, as a server without RFC 6152 would. */
  readonly hide8BitMime?: boolean;
  /**
   * Leave DSN out of the EHLO reply, as a server without RFC 3461 would: an MTA relaying to it
   * then sends the `relayed` notification itself when the sender asked for NOTIFY=SUCCESS.
   */
  readonly hideDsn?: boolean;
  /** Keep every byte clients send (see `wire()`), for tests of what goes over the socket. */
  readonly captureWire?: boolean;
  /**
   * `messages`: keep every message taken (`messages`, `mailFroms`). `count`: read only the first
   * 16 KiB of each message, for its Message-ID, and keep nothing but how often each Message-ID
   * arrived (`countByMessageId()`): the benchmark's sink, where the server's own cost counts.
   * @default "messages"
   */
  readonly capture?: "messages" | "count";
  /**
   * Called with one line per message taken, e.g.
   * `accepted <id@example.com> for ann@example.com (1234 bytes), replied "250 2.0.0 Ok: queued as 8CCD166093"`
   * (the examples print it).
   */
  readonly print?: (line: string) => void;
}

/** The Message-ID header of a raw message (unfolded, trimmed), or null. */
export function parseMessageId(raw: Buffer): string | null {
  return messageIdIn(raw.toString("latin1"));
}

/** The Message-ID header in the text of a message (or of its first bytes), or null. */
function messageIdIn(text: string): string | null {
  const end = text.search(/\r?\n\r?\n/);
  const head = end >= 0 ? text.slice(0, end) : text;
  // The header's line and its continuation lines, unfolded.
  const m = /^message-id:[ \t]*(.*(?:\r?\n[ \t].*)*)/im.exec(head);
  const value = m?.[1]?.replace(/\r?\n[ \t]+/g, " ").trim();
  return value ? value : null;
}

/** Bytes of each message read for its Message-ID with `capture: "count"`. */
const COUNT_HEAD_BYTES = 16 * 1024;
const EMPTY = Buffer.alloc(0);

function smtpError(code: number, message: string): Error & { responseCode: number } {
  return Object.assign(new Error(message), { responseCode: code });
}

function defaultText(code: number): string {
  if (code === 421) return "4.3.2 Service not available, closing transmission channel (injected)";
  if (code >= 500) return "5.7.1 Rejected (injected)";
  return "4.3.0 Try again later (injected)";
}

export async function startTestSmtp(options: StartTestSmtpOptions = {}): Promise<TestSmtp> {
  let hook: FaultHook | null = options.faults ?? null;
  const keep = (options.capture ?? "messages") === "messages";
  const print = options.print;
  const messages: ReceivedMessage[] = [];
  /** `capture: "count"`: how often each Message-ID arrived, and how many messages in all. */
  const counts = new Map<string, number>();
  let counted = 0;
  const mailFroms: { address: string; args: Record<string, string> }[] = [];
  const wireChunks: Buffer[] = [];
  const argsOf = (args: unknown): Record<string, string> =>
    typeof args === "object" && args !== null ? Object.fromEntries(Object.entries(args).map(([k, v]) => [k.toUpperCase(), String(v)])) : {};
  const events = new EventEmitter();
  events.setMaxListeners(0);
  const sessionNumbers = new Map<string, number>();
  const timers = new Set<NodeJS.Timeout>();
  let sessions = 0;
  let listening = false;
  let closed = false;

  // Queue ids: 10 hex digits, unique to this server and ascending with time, as Postfix's are
  // (random steps from a random start: no set of ids to keep, no call to the system's random source).
  let lastQueueId = Math.floor(Math.random() * 2 ** 38);
  const newQueueId = (): string => {
    lastQueueId += 1 + Math.floor(Math.random() * 2 ** 16);
    return lastQueueId.toString(16).toUpperCase().padStart(10, "0");
  };
  const later = (ms: number, fn: () => void) => {
    const t = setTimeout(() => {
      timers.delete(t);
      fn();
    }, ms);
    timers.add(t);
  };
  const sessionNo = (session: SMTPServerSession) => sessionNumbers.get(session.id) ?? 0;

  const server: SMTPServer = new SMTPServer({
    logger: false,
    authOptional: options.auth === undefined,
    allowInsecureAuth: true,
    disabledCommands: ["STARTTLS", ...(options.disableEhlo ? ["EHLO"] : [])],
    hideSTARTTLS: true,
    hidePIPELINING: options.hidePipelining ?? false,
    hide8BITMIME: options.hide8BitMime ?? false,
    hideDSN: options.hideDsn ?? false,
    closeTimeout: 500,
    onAuth(auth, _session, callback) {
      if (options.auth && (auth.username !== options.auth.user || auth.password !== options.auth.pass)) {
        callback(smtpError(535, "5.7.8 Authentication credentials invalid"));
        return;
      }
      callback(null, { user: auth.username ?? "" });
    },
    onConnect(session, callback) {
      sessions += 1;
      sessionNumbers.set(session.id, sessions);
      apply({ phase: "connect", session: sessions }, session, callback);
    },
    onMailFrom(address, session, callback) {
      if (keep) mailFroms.push({ address: address.address, args: argsOf(address.args) });
      apply({ phase: "mail", session: sessionNo(session) }, session, callback);
    },
    onRcptTo(address, session, callback) {
      apply({ phase: "rcpt", recipient: address.address, session: sessionNo(session) }, session, callback);
    },
    onData(stream: SMTPServerDataStream, session, callback) {
      // `capture: "count"` keeps only the first bytes, as text: the benchmark's sink must cost no
      // more than the counting sink it replaced (about 12 to 14 µs per end of DATA here).
      const chunks: Buffer[] = [];
      let head = "";
      let size = 0;
      stream.on("data", (c: Buffer) => {
        if (keep) chunks.push(c);
        else if (size < COUNT_HEAD_BYTES) head += c.toString("latin1");
        size += c.length;
      });
      stream.on("end", () => {
        const raw = keep ? Buffer.concat(chunks) : EMPTY;
        const messageId = keep ? parseMessageId(raw) : messageIdIn(head);
        const fault = hook?.({ phase: "data", messageId, session: sessionNo(session) });
        const record = (replyDropped: boolean): string => {
          const queueId = newQueueId();
          const from = session.envelope.mailFrom;
          const recipients = keep || print ? session.envelope.rcptTo.map((r) => r.address) : [];
          if (keep) {
            messages.push({
              messageId,
              envelopeFrom: from ? from.address : "",
              recipients,
              raw,
              queueId,
              receivedAt: Date.now(),
              replyDropped,
              authUser: typeof session.user === "string" ? session.user : null,
              session: sessionNo(session),
              mailFromArgs: argsOf(from ? from.args : undefined),
            });
          } else {
            const key = messageId ?? "(none)";
            counts.set(key, (counts.get(key) ?? 0) + 1);
            counted += 1;
          }
          print?.(
            `${replyDropped ? "kept" : "accepted"} ${messageId ?? "(no Message-ID)"} for ${recipients.join(", ")} (${size} bytes), ` +
              (replyDropped ? "dropped the connection instead of replying" : `replied "250 2.0.0 Ok: queued as ${queueId}"`),
          );
          events.emit("message");
          return queueId;
        };
        if (fault && "reply" in fault) {
          callback(smtpError(fault.reply, fault.message ?? defaultText(fault.reply)));
        } else if (fault && "drop" in fault) {
          if (fault.keep !== false) record(true);
          dropConnection(session);
        } else if (fault && "stallMs" in fault) {
          const queueId = record(false);
          later(fault.stallMs, () => callback(null, `2.0.0 Ok: queued as ${queueId}`));
        } else {
          callback(null, `2.0.0 Ok: queued as ${record(false)}`);
        }
      });
    },
  });
  // Connection errors (a client that resets) are reported here; without a listener they would crash the test.
  server.on("error", () => {});
  if (options.captureWire) {
    // A second 'connection' listener, after smtp-server's own: the client sends nothing before
    // the greeting, so no byte arrives before smtp-server reads the socket too.
    server.server.on("connection", (socket: Socket) => socket.on("data", (chunk: Buffer) => wireChunks.push(chunk)));
  }

  function dropConnection(session: SMTPServerSession): void {
    for (const connection of server.connections) {
      if (connection.session === session || connection.id === session.id) connection._socket.destroy();
    }
  }

  function apply(ctx: FaultContext, session: SMTPServerSession, callback: (err?: Error | null) => void): void {
    const fault = hook?.(ctx);
    if (!fault) return callback();
    if ("reply" in fault) return callback(smtpError(fault.reply, fault.message ?? defaultText(fault.reply)));
    if ("drop" in fault) return dropConnection(session);
    later(fault.stallMs, () => callback());
  }

  const listen = (port: number) =>
    new Promise<number>((resolve, reject) => {
      const onError = (err: Error) => reject(err);
      server.server.once("error", onError);
      server.server.listen(port, "127.0.0.1", () => {
        server.server.removeListener("error", onError);
        listening = true;
        resolve((server.server.address() as AddressInfo).port);
      });
    });
  const stopListening = () =>
    new Promise<void>((resolve) => {
      if (!listening) return resolve();
      listening = false;
      server.server.close(() => resolve());
      for (const connection of server.connections) connection._socket.destroy();
    });

  let port: number;
  try {
    port = await listen(options.port ?? 0);
  } catch (err) {
    // The port is taken (EADDRINUSE): nothing listens, release the server and let the caller pick another.
    server.close(() => {});
    throw err;
  }
  const taken = () => (keep ? messages.length : counted);

  return {
    port,
    url: `smtp://127.0.0.1:${port}`,
    messages,
    mailFroms,
    wire: () => Buffer.concat(wireChunks),
    get sessions() {
      return sessions;
    },
    countByMessageId() {
      if (!keep) return new Map(counts);
      const byId = new Map<string, number>();
      for (const m of messages) {
        const key = m.messageId ?? "(none)";
        byId.set(key, (byId.get(key) ?? 0) + 1);
      }
      return byId;
    },
    waitFor(predicateOrCount, timeoutMs = 10_000) {
      const check = typeof predicateOrCount === "number" ? () => taken() >= predicateOrCount : () => predicateOrCount(messages);
      if (check()) return Promise.resolve();
      return new Promise<void>((resolve, reject) => {
        const onMessage = () => {
          if (!check()) return;
          clearTimeout(timer);
          events.off("message", onMessage);
          resolve();
        };
        const timer = setTimeout(() => {
          events.off("message", onMessage);
          const wanted = typeof predicateOrCount === "number" ? `${predicateOrCount} messages` : "the condition";
          reject(new Error(`test SMTP server: waited ${timeoutMs} ms for ${wanted}; ${taken()} received`));
        }, timeoutMs);
        events.on("message", onMessage);
      });
    },
    clear() {
      messages.length = 0;
      mailFroms.length = 0;
      counts.clear();
      counted = 0;
    },
    setFaults(next) {
      hook = next;
    },
    refuseConnections: stopListening,
    async acceptConnections() {
      if (listening || closed) return;
      await listen(port);
    },
    async close() {
      if (closed) return;
      closed = true;
      for (const t of timers) clearTimeout(t);
      timers.clear();
      for (const connection of server.connections) connection._socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

// ---- fault hooks ---------------------------------------------------------------------------------

/** A small seeded PRNG (mulberry32): the same seed gives the same fault plan. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export interface FailRateOptions {
  /** Share of messages answered 451 at the end of DATA. @default 0 */
  readonly transient?: number;
  /** Share answered 554. @default 0 */
  readonly permanent?: number;
  /** Share whose connection is dropped after the body was received (kept by the server: duplicate window). @default 0 */
  readonly drop?: number;
  /** Share whose 250 is delayed by `stallMs`. @default 0 */
  readonly stall?: number;
  /** @default 1000 */
  readonly stallMs?: number;
  /** @default 1 */
  readonly seed?: number;
}

/**
 * Fail a random share of messages at the end of DATA, reproducibly for a given seed.
 * Each message draws once per attempt, so a retried message may go through.
 */
export function failRate(options: FailRateOptions): FaultHook {
  const random = seededRandom(options.seed ?? 1);
  const transient = options.transient ?? 0;
  const permanent = options.permanent ?? 0;
  const drop = options.drop ?? 0;
  const stall = options.stall ?? 0;
  return (ctx) => {
    if (ctx.phase !== "data") return undefined;
    const r = random();
    if (r < transient) return { reply: 451 };
    if (r < transient + permanent) return { reply: 554 };
    if (r < transient + permanent + drop) return { drop: true };
    if (r < transient + permanent + drop + stall) return { stallMs: options.stallMs ?? 1000 };
    return undefined;
  };
}

/** The first `times` calls at `phase` get `fault`, later ones go through (a server that recovers). */
export function failTimes(times: number, fault: Fault, phase: FaultPhase = "data"): FaultHook {
  let left = times;
  return (ctx) => {
    if (ctx.phase !== phase || left <= 0) return undefined;
    left -= 1;
    return fault;
  };
}

/** Refuse the recipients that `match` selects at RCPT TO (550 by default), accept the others. */
export function rejectRecipients(match: (recipient: string) => boolean, reply = 550, message?: string): FaultHook {
  return (ctx) => {
    if (ctx.phase !== "rcpt" || ctx.recipient === undefined || !match(ctx.recipient)) return undefined;
    return message === undefined ? { reply } : { reply, message };
  };
}

/** The first hook that returns a fault wins. */
export function combineFaults(...hooks: FaultHook[]): FaultHook {
  return (ctx) => {
    for (const h of hooks) {
      const f = h(ctx);
      if (f) return f;
    }
    return undefined;
  };
}

// ---- the scripted peer ---------------------------------------------------------------------------

export interface SmtpScript {
  /** The greeting. @default "220 scripted ESMTP" */
  readonly greeting?: string;
  /** The reply to RCPT TO for this address. @default "250 2.1.5 Ok" */
  readonly rcpt?: (address: string) => string;
  /** The reply to DATA; a 354 lets the message in. @default "354 go ahead" */
  readonly data?: () => string;
  /** Offer PIPELINING in the EHLO reply. @default true */
  readonly pipelining?: boolean;
}

export interface ScriptedSmtp {
  readonly port: number;
  /** `smtp://127.0.0.1:PORT` */
  readonly url: string;
  /** Command lines received, in order (a message body shows as `<body>`). */
  readonly log: string[];
  close(): Promise<void>;
}

/**
 * A scripted SMTP peer for replies `smtp-server` cannot be made to give (see the module's header).
 * It answers each command line from `script`, takes every message body with
 * `250 2.0.0 Ok: queued as SCRIPTED1` and keeps nothing but `log`; use `startTestSmtp()` for
 * everything it can do.
 */
export async function startScriptedSmtp(script: SmtpScript): Promise<ScriptedSmtp> {
  const log: string[] = [];
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    socket.on("error", () => {});
    socket.write(`${script.greeting ?? "220 scripted ESMTP"}\r\n`);
    let buffer = "";
    let inData = false;
    socket.on("data", (chunk: Buffer) => {
      buffer += chunk.toString("latin1");
      for (;;) {
        if (inData) {
          const end = buffer.startsWith(".\r\n") ? 0 : buffer.indexOf("\r\n.\r\n");
          if (end < 0) return;
          buffer = buffer.slice(end === 0 ? 3 : end + 5);
          inData = false;
          log.push("<body>");
          socket.write("250 2.0.0 Ok: queued as SCRIPTED1\r\n");
          continue;
        }
        const i = buffer.indexOf("\r\n");
        if (i < 0) return;
        const line = buffer.slice(0, i);
        buffer = buffer.slice(i + 2);
        log.push(line);
        const verb = line.slice(0, 4).toUpperCase();
        if (verb === "EHLO") socket.write(`250-scripted\r\n${script.pipelining === false ? "" : "250-PIPELINING\r\n"}250 8BITMIME\r\n`);
        else if (verb === "HELO" || verb === "MAIL" || verb === "RSET") socket.write("250 Ok\r\n");
        else if (verb === "RCPT") socket.write(`${script.rcpt?.(line.replace(/^RCPT TO:<(.*)>.*$/i, "$1")) ?? "250 2.1.5 Ok"}\r\n`);
        else if (verb === "DATA") {
          const reply = script.data?.() ?? "354 go ahead";
          socket.write(`${reply}\r\n`);
          inData = reply.startsWith("354");
        } else if (verb === "QUIT") socket.end("221 Bye\r\n");
        else socket.write("502 5.5.2 Error: command not recognized\r\n");
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    port,
    url: `smtp://127.0.0.1:${port}`,
    log,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}
