/**
 * A tiny SMTP server for the examples, so they run without a mail server to set up. It listens on
 * 127.0.0.1 (a free port), takes every message, answers the end of DATA the way Postfix does
 * (`250 2.0.0 Ok: queued as 8CCD166093`) and prints one line per message it accepted.
 *
 * It stands in for your MTA (Postfix, a smarthost, a mail provider's SMTP endpoint). It keeps the
 * messages in memory only and delivers nothing; your application never needs this file.
 * Built on the `smtp-server` package (a dev dependency of this repository).
 */
import { randomBytes } from "node:crypto";
import type { AddressInfo } from "node:net";
import { SMTPServer } from "smtp-server";

export interface AcceptedMessage {
  /** The Message-ID header, with angle brackets. */
  readonly messageId: string | null;
  readonly subject: string | null;
  readonly envelopeFrom: string;
  readonly recipients: readonly string[];
  /** The id in the 250 reply, which the relay records as the row's `mta_queue_id`. */
  readonly queueId: string;
  /** The whole reply, as the relay records it in `mta_response`. */
  readonly reply: string;
  readonly size: number;
}

export interface LocalMta {
  /** `smtp://127.0.0.1:PORT`: pass it to `createRelay({ transport })` or as MAIL_OUTBOX_TRANSPORT. */
  readonly url: string;
  readonly accepted: readonly AcceptedMessage[];
  close(): Promise<void>;
}

function header(raw: string, name: string): string | null {
  const end = raw.search(/\r?\n\r?\n/);
  const head = (end >= 0 ? raw.slice(0, end) : raw).replace(/\r?\n[ \t]+/g, " ");
  const m = new RegExp(`^${name}:[ \\t]*(.*)$`, "im").exec(head);
  return m?.[1]?.trim() || null;
}

/** Start the server. `print` receives one line per accepted message (default: console.log). */
export async function startLocalMta(print: (line: string) => void = console.log): Promise<LocalMta> {
  const accepted: AcceptedMessage[] = [];
  const server = new SMTPServer({
    logger: false,
    authOptional: true,
    disabledCommands: ["STARTTLS"],
    hideSTARTTLS: true,
    banner: "example MTA (prisma-mail-outbox examples/shared/local-mta.ts)",
    onData(stream, session, callback) {
      const chunks: Buffer[] = [];
      stream.on("data", (c: Buffer) => chunks.push(c));
      stream.on("end", () => {
        const raw = Buffer.concat(chunks);
        const text = raw.toString("latin1");
        const queueId = randomBytes(5).toString("hex").toUpperCase();
        const message = `2.0.0 Ok: queued as ${queueId}`;
        const mailFrom = session.envelope.mailFrom;
        const entry: AcceptedMessage = {
          messageId: header(text, "message-id"),
          subject: header(text, "subject"),
          envelopeFrom: mailFrom ? mailFrom.address : "",
          recipients: session.envelope.rcptTo.map((r) => r.address),
          queueId,
          reply: `250 ${message}`,
          size: raw.length,
        };
        accepted.push(entry);
        print(`   MTA    accepted ${entry.messageId} for ${entry.recipients.join(", ")} (${entry.size} bytes), replied "${entry.reply}"`);
        callback(null, message);
      });
    },
  });
  server.on("error", () => {});
  await new Promise<void>((resolve, reject) => {
    server.server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve());
  });
  const { port } = server.server.address() as AddressInfo;
  return {
    url: `smtp://127.0.0.1:${port}`,
    accepted,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
