/**
 * The one message every contender hands over: composed once by the library's own composer
 * (about 2 KiB, one recipient), then copied with a fresh Message-ID per mail. The copies differ
 * only in the Message-ID, whose length never changes, so every mail has exactly the same size.
 */
import { randomUUID } from "node:crypto";
import { composeMail, DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_HEADER_BYTES, DEFAULT_MAX_MESSAGE_BYTES } from "../src/compose.js";

export const FROM = "shop@example.com";
export const TO = "customer@example.net";
export const MESSAGE_ID_DOMAIN = "bench.example.com";

export interface MailTemplate {
  /** Bytes before the Message-ID in the raw message. */
  readonly prefix: Buffer;
  /** Bytes after it. */
  readonly suffix: Buffer;
  readonly envelopeFrom: string;
  readonly envelopeTo: readonly string[];
  readonly subject: string;
  /** Size of every copy in bytes. */
  readonly size: number;
  /** The input given to `composeMail` / `enqueue()` (for the Prisma enqueue-cost runs). */
  readonly input: { readonly from: string; readonly to: string; readonly subject: string; readonly text: string };
}

/** A body of readable lines, so the message is about `targetBytes` long after composing. */
function body(chars: number): string {
  const line = "Thank you for your order. It ships tomorrow, tracking follows.";
  let out = "";
  let n = 0;
  while (out.length < chars) out += `${++n}. ${line}\n`;
  return out.slice(0, chars);
}

/** `<uuid@bench.example.com>`: a new Message-ID, the same length every time. */
export function newMessageId(id: string = randomUUID()): string {
  return `<${id}@${MESSAGE_ID_DOMAIN}>`;
}

/** Compose the template: a ~2 KiB message (headers + quoted-printable-free text body). */
export async function mailTemplate(targetBytes = 2048): Promise<MailTemplate> {
  const defaults = { maxAttempts: DEFAULT_MAX_ATTEMPTS, maxMessageBytes: DEFAULT_MAX_MESSAGE_BYTES, maxHeaderBytes: DEFAULT_MAX_HEADER_BYTES, messageIdDomain: MESSAGE_ID_DOMAIN };
  const probe = { from: `Shop <${FROM}>`, to: TO, subject: "Your order has shipped", text: body(100) };
  const first = await composeMail(probe, defaults);
  const input = { ...probe, text: body(100 + Math.max(0, targetBytes - first.raw.length)) };
  const mail = await composeMail(input, defaults);
  const raw = mail.raw;
  const at = raw.indexOf(mail.messageId);
  if (at < 0) throw new Error("the composed message does not contain its Message-ID");
  return {
    prefix: raw.subarray(0, at),
    suffix: raw.subarray(at + mail.messageId.length),
    envelopeFrom: mail.envelopeFrom,
    envelopeTo: mail.envelopeTo,
    subject: mail.subject,
    size: raw.length,
    input,
  };
}

/** The raw bytes of one copy with this Message-ID. */
export function rawWith(t: MailTemplate, messageId: string): Buffer {
  return Buffer.concat([t.prefix, Buffer.from(messageId, "latin1"), t.suffix]);
}
