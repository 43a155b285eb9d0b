/**
 * Attachments: bytes given inline (Buffer, Uint8Array, or a string with an encoding), never a path,
 * URL or stream, so nothing is read from disk or the network inside a transaction. Every attachment
 * goes out base64-encoded except `message/*` (a forwarded mail), which may not be encoded: its line
 * breaks are made CRLF here and it is labelled 7bit or 8bit.
 */
import { describe, guard, isPlainObject, readOwnFields } from "./plain-data.js";
import { isWellFormed, LINE_BREAK, textProblem } from "./text.js";

/** At most this many attachments per mail. */
export const MAX_ATTACHMENTS = 100;

/** The fields an attachment accepts. */
export const ATTACHMENT_FIELDS = ["filename", "content", "encoding", "contentType", "cid", "contentDisposition"] as const;

const ENCODINGS = ["utf8", "base64", "hex", "binary"] as const;
const DISPOSITIONS = ["attachment", "inline"] as const;
const MAX_FILENAME = 255;
const MAX_TOKEN = 255;
/** RFC 2045 token, for both halves of a content type. */
const MIME_TOKEN = "[!#$%&'*+.^_`|~0-9A-Za-z-]+";
const CONTENT_TYPE = new RegExp(`^${MIME_TOKEN}/${MIME_TOKEN}(?:\\s*;.*)?$`);
/** The %TypedArray%.prototype getters: a Uint8Array subclass or a changed prototype cannot answer for them. */
const TYPED_ARRAY_PROTO = Object.getPrototypeOf(Uint8Array.prototype) as object;
const typedArrayGetter = (name: string): ((this: unknown) => unknown) => {
  const get = Object.getOwnPropertyDescriptor(TYPED_ARRAY_PROTO, name)?.get;
  if (get === undefined) throw new Error(`%TypedArray%.prototype.${name} has no getter`);
  return get as (this: unknown) => unknown;
};
const typedArrayBuffer = typedArrayGetter("buffer");
const typedArrayByteOffset = typedArrayGetter("byteOffset");
const typedArrayByteLength = typedArrayGetter("byteLength");

/** An attachment that passed its checks, as the composer will write it. */
export interface CheckedAttachment {
  readonly filename?: string;
  readonly content: string | Buffer;
  readonly encoding?: (typeof ENCODINGS)[number];
  readonly contentType?: string;
  readonly cid?: string;
  readonly contentDisposition?: (typeof DISPOSITIONS)[number];
  /** For message/* parts, which cannot be encoded: 8bit only when the content has bytes over 0x7F. */
  readonly contentTransferEncoding?: "7bit" | "8bit";
  /** Lower bound of the bytes this attachment adds to the composed message. */
  readonly minComposedBytes: number;
}

/** The `attachments` of a mail; each refused one is a problem naming it (`attachments[2].filename`). */
export function checkAttachments(value: unknown, problems: string[]): CheckedAttachment[] {
  const out: CheckedAttachment[] = [];
  if (value === undefined) return out;
  if (!Array.isArray(value)) {
    problems.push(`attachments: must be an array, got ${describe(value)}`);
    return out;
  }
  if (value.length > MAX_ATTACHMENTS) {
    problems.push(`attachments: ${value.length} attachments, over the limit of ${MAX_ATTACHMENTS}; zip them into one`);
    return out;
  }
  for (let i = 0; i < value.length; i++) {
    const field = `attachments[${i}]`;
    const a = guard(field, problems, null, () => {
      const desc = Object.getOwnPropertyDescriptor(value, i);
      if (desc === undefined || !("value" in desc)) {
        problems.push(`${field}: is ${desc === undefined ? "a hole in the array" : "a getter"}; pass { filename, content }`);
        return null;
      }
      return checkAttachment(desc.value, field, problems);
    });
    if (a !== null) out.push(a);
  }
  return out;
}

/** One attachment: a plain object with `ATTACHMENT_FIELDS`, its `content` given as bytes. */
function checkAttachment(item: unknown, field: string, problems: string[]): CheckedAttachment | null {
  if (!isPlainObject(item)) {
    problems.push(`${field}: must be an object such as { filename, content }, got ${describe(item)}`);
    return null;
  }
  const before = problems.length;
  // path and href get their own sentence, so take them out of the unknown-field check.
  for (const key of ["path", "href"] as const) {
    if (Object.prototype.hasOwnProperty.call(item, key)) {
      problems.push(
        `${field}.${key}: ${key === "path" ? "file paths" : "URLs"} are not accepted; nothing may be read from disk or the network inside a transaction; pass the bytes as content`,
      );
    }
  }
  const rest = Object.create(null) as Record<string, unknown>;
  for (const key of Reflect.ownKeys(item)) {
    if (key === "path" || key === "href") continue;
    const desc = Object.getOwnPropertyDescriptor(item, key);
    if (desc !== undefined) Object.defineProperty(rest, key, desc);
  }
  const f = readOwnFields(rest, field, ATTACHMENT_FIELDS, problems);

  const content = f.get("content");
  const encodingValue = f.get("encoding");
  let encoding: (typeof ENCODINGS)[number] | undefined;
  if (encodingValue !== undefined) {
    if (typeof encodingValue !== "string" || !(ENCODINGS as readonly string[]).includes(encodingValue)) {
      problems.push(`${field}.encoding: must be one of ${ENCODINGS.join(", ")}, got ${describe(encodingValue)}`);
    } else {
      encoding = encodingValue as (typeof ENCODINGS)[number];
    }
  }
  const bytes = guard(`${field}.content`, problems, undefined, () => checkContent(content, encoding, f.has("content"), field, before, problems));

  const filename = checkToken(f.get("filename"), `${field}.filename`, MAX_FILENAME, problems, true);
  const contentType = checkToken(f.get("contentType"), `${field}.contentType`, MAX_TOKEN, problems, false);
  if (contentType !== undefined) {
    if (!CONTENT_TYPE.test(contentType)) {
      problems.push(`${field}.contentType: ${describe(contentType)} is not a MIME type such as "application/pdf"`);
    } else if (/^multipart\//i.test(contentType)) {
      problems.push(`${field}.contentType: multipart types describe the message structure and cannot be an attachment's type`);
    }
  }
  const cid = checkToken(f.get("cid"), `${field}.cid`, MAX_TOKEN, problems, false);
  if (cid !== undefined && /[^\x21-\x3b\x3d\x3f-\x7e]/.test(cid.replace(/^<(.*)>$/, "$1"))) {
    problems.push(`${field}.cid: may hold only printable ASCII without spaces or angle brackets; use an id such as "logo@example.com"`);
  }
  const disposition = f.get("contentDisposition");
  if (disposition !== undefined && !(DISPOSITIONS as readonly unknown[]).includes(disposition)) {
    problems.push(`${field}.contentDisposition: must be "attachment" or "inline", got ${describe(disposition)}`);
  }

  if (problems.length > before || bytes === undefined) return null;
  if (contentType !== undefined && /^message\//i.test(contentType)) {
    // A message/* part cannot be encoded (RFC 2046 5.2.1): its bytes go out as they are, so its line
    // breaks are made CRLF here and its label says whether it has 8-bit bytes.
    const part = messagePart(typeof bytes === "string" ? Buffer.from(bytes, encoding ?? "utf8") : bytes);
    if ("reason" in part) {
      problems.push(`${field}.content: ${part.reason}`);
      return null;
    }
    return {
      ...(filename !== undefined ? { filename } : {}),
      content: part.bytes,
      contentType,
      ...(cid !== undefined ? { cid } : {}),
      ...(disposition !== undefined ? { contentDisposition: disposition as (typeof DISPOSITIONS)[number] } : {}),
      contentTransferEncoding: part.eightBit ? "8bit" : "7bit",
      minComposedBytes: part.bytes.length,
    };
  }
  // Every other attachment goes out base64-encoded.
  const rawBytes = typeof bytes === "string" ? Buffer.byteLength(bytes, encoding ?? "utf8") : bytes.length;
  return {
    ...(filename !== undefined ? { filename } : {}),
    content: bytes,
    ...(encoding !== undefined ? { encoding } : {}),
    ...(contentType !== undefined ? { contentType } : {}),
    ...(cid !== undefined ? { cid } : {}),
    ...(disposition !== undefined ? { contentDisposition: disposition as (typeof DISPOSITIONS)[number] } : {}),
    minComposedBytes: 4 * Math.ceil(rawBytes / 3),
  };
}

/**
 * The bytes of an attachment's `content` (a string, or a Buffer that is the library's own view of the
 * caller's memory, so nothing the caller overrides is called later), or undefined with a problem.
 */
function checkContent(
  content: unknown,
  encoding: (typeof ENCODINGS)[number] | undefined,
  given: boolean,
  field: string,
  before: number,
  problems: string[],
): string | Buffer | undefined {
  let bytes: string | Buffer | undefined;
  if (content === undefined) {
    if (!given && problems.length === before) {
      problems.push(`${field}.content: is missing; pass the bytes as a Buffer, Uint8Array or string`);
    }
  } else if (typeof content === "string") {
    const reason = isWellFormed(content) ? null : "is not well-formed UTF-16 (it has a lone surrogate); pass a Buffer for binary data";
    if (reason !== null) problems.push(`${field}.content: ${reason}`);
    else if (encoding === "base64" && !/^[A-Za-z0-9+/\s]*={0,2}\s*$/.test(content)) {
      problems.push(`${field}.content: is not base64 although encoding is "base64"`);
    } else if (encoding === "hex" && (content.length % 2 !== 0 || !/^[0-9A-Fa-f]*$/.test(content))) {
      problems.push(`${field}.content: is not an even number of hex digits although encoding is "hex"`);
    } else bytes = content;
  } else if (ArrayBuffer.isView(content) && content instanceof Uint8Array) {
    if (encoding !== undefined) {
      problems.push(`${field}.encoding: applies only to string content; leave it out for a Buffer or Uint8Array`);
    }
    bytes = Buffer.from(
      typedArrayBuffer.call(content) as ArrayBuffer,
      typedArrayByteOffset.call(content) as number,
      typedArrayByteLength.call(content) as number,
    );
  } else if (content instanceof ArrayBuffer) {
    problems.push(`${field}.content: is an ArrayBuffer; wrap it as Buffer.from(arrayBuffer)`);
  } else if (content !== null && typeof content === "object" && typeof (content as { pipe?: unknown }).pipe === "function") {
    problems.push(`${field}.content: streams are not accepted; read the stream into a Buffer before the transaction`);
  } else {
    problems.push(`${field}.content: must be a Buffer, Uint8Array or string, got ${describe(content)}`);
  }
  return bytes;
}

/**
 * The content of a message/* part with every line break made CRLF (a lone CR or LF is one line
 * break), and whether it has 8-bit bytes; or why it cannot be sent unencoded. Returns `buf` itself
 * when it needs no change.
 */
function messagePart(buf: Buffer): { bytes: Buffer; eightBit: boolean } | { reason: string } {
  const why = "; a message/* part cannot be encoded (RFC 2046 5.2.1), so attach it as application/octet-stream instead";
  let eightBit = false;
  let lone = false;
  let line = 0;
  for (let i = 0; i < buf.length; i++) {
    const c = buf[i] as number;
    if (c === 0x0d || c === 0x0a) {
      if (c === 0x0d && buf[i + 1] === 0x0a) i++;
      else lone = true;
      line = 0;
    } else if (c === 0) {
      return { reason: `has a NUL byte at offset ${i}${why}` };
    } else {
      if (c > 0x7f) eightBit = true;
      if (++line > 998) return { reason: `has a line longer than 998 octets (RFC 5322 2.1.1)${why}` };
    }
  }
  // latin1 maps each byte to one code unit and back, so only the line breaks change.
  return { bytes: lone ? Buffer.from(buf.toString("latin1").replace(LINE_BREAK, "\r\n"), "latin1") : buf, eightBit };
}

/** A short single-line string field of an attachment. */
function checkToken(value: unknown, field: string, max: number, problems: string[], allowSpaces: boolean): string | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== "string") {
    problems.push(`${field}: must be a string, got ${describe(value)}`);
    return undefined;
  }
  if (value.trim() === "") {
    problems.push(`${field}: is empty; leave it out instead`);
    return undefined;
  }
  const reason = textProblem(value, { allowTab: false });
  if (reason !== null) {
    problems.push(`${field}: ${reason}`);
    return undefined;
  }
  if (value.length > max) {
    problems.push(`${field}: is ${value.length} characters, over the limit of ${max}`);
    return undefined;
  }
  if (!allowSpaces && /^\s|\s$/.test(value)) {
    problems.push(`${field}: has leading or trailing spaces; remove them`);
    return undefined;
  }
  return value;
}
