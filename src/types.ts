/** Types shared by enqueue, the relay and the admin functions. */

export type JsonValue = string | number | boolean | null | JsonValue[] | { [key: string]: JsonValue };

/** An address as a plain string (`"Ann <ann@example.com>"` or `"ann@example.com"`) or as parts. */
export type AddressInput = string | { readonly name?: string; readonly address: string };

/** An attachment whose bytes are given inline. Paths and URLs are refused: nothing is fetched inside a transaction. */
export interface AttachmentInput {
  readonly filename?: string;
  /** The bytes, or a string (decoded with `encoding`, default UTF-8). */
  readonly content: string | Buffer | Uint8Array;
  readonly encoding?: "utf8" | "base64" | "hex" | "binary";
  /**
   * MIME type, e.g. `"application/pdf"`. Attachments are stored base64-encoded, except `message/*`
   * (a forwarded mail), which may not be encoded: its line breaks are stored as CRLF, it may not hold
   * NUL or lines over 998 octets, and it is labelled `7bit`, or `8bit` when it has bytes over 0x7F
   * (the only way a stored mail gets 8-bit bytes).
   */
  readonly contentType?: string;
  /** Content-ID for inline images referenced as `cid:` in the HTML. Printable ASCII without spaces or `<>`. */
  readonly cid?: string;
  readonly contentDisposition?: "attachment" | "inline";
}

/** What `enqueue()` accepts. Unknown fields are refused. */
export interface MailInput {
  /** Sender; falls back to the extension's `defaultFrom`. */
  readonly from?: AddressInput;
  readonly to?: AddressInput | readonly AddressInput[];
  readonly cc?: AddressInput | readonly AddressInput[];
  readonly bcc?: AddressInput | readonly AddressInput[];
  readonly replyTo?: AddressInput | readonly AddressInput[];
  readonly subject?: string;
  /** Plain-text body. Each CRLF, lone CR and lone LF is one line break; all are stored as CRLF. */
  readonly text?: string;
  /** HTML body; line breaks as in `text`. */
  readonly html?: string;
  readonly attachments?: readonly AttachmentInput[];
  /** Extra header fields. Values may not contain CR or LF. Fields the composer owns (From, To, Message-ID...) are refused. */
  readonly headers?: Readonly<Record<string, string>>;
  /** Higher is handed over first. An integer from -1000 to 1000. @default 0 */
  readonly priority?: number;
  /** Not before this time. @default now */
  readonly sendAt?: Date;
  /** At most one row ever holds a given key; a second enqueue with it throws `DuplicateIdempotencyKeyError`. */
  readonly idempotencyKey?: string;
  /** Attempts before the mail is parked as dead. @default the extension's `maxAttempts` */
  readonly maxAttempts?: number;
  /** Free JSON kept with the row for the application (a user id, an order id). */
  readonly metadata?: JsonValue;
}

export interface ComposeDefaults {
  readonly defaultFrom?: AddressInput;
  readonly maxAttempts: number;
  /**
   * Size limit of the composed RFC 5322 message in bytes; larger mail throws `MailTooLargeError`.
   * @default 10_000_000 (`DEFAULT_MAX_MESSAGE_BYTES`: Postfix's default message_size_limit, 10,240,000, less room for the headers it adds)
   */
  readonly maxMessageBytes: number;
  /**
   * Size limit of the composed header section (everything before the first empty line) in bytes;
   * larger throws `HeaderTooLargeError`.
   * @default 100_000 (`DEFAULT_MAX_HEADER_BYTES`: below Postfix's header_size_limit, 102,400, past which it truncates)
   */
  readonly maxHeaderBytes: number;
  /** Right-hand side of generated Message-IDs; default: the sender's domain. */
  readonly messageIdDomain?: string;
}

/** A mail ready to be written: every column `enqueue()` sets. */
export interface ComposedMail {
  /** Time-ordered id (UUIDv7). */
  readonly id: string;
  /** RFC 5322 Message-ID with angle brackets, e.g. `<0193...@example.com>`. Never changes, also on replay. */
  readonly messageId: string;
  readonly envelopeFrom: string;
  /** Every recipient (to, cc, bcc), bare addresses, deduplicated, in order. */
  readonly envelopeTo: readonly string[];
  readonly subject: string;
  /** The complete RFC 5322 message (Bcc not included in the headers). */
  readonly raw: Buffer;
  readonly size: number;
  readonly priority: number;
  readonly sendAt: Date;
  readonly idempotencyKey: string | null;
  readonly maxAttempts: number;
  readonly metadata: JsonValue | null;
}
