/**
 * The stored raw message as the dashboard shows it: its header lines, the body for the preview,
 * and its attachments with their sizes. mailparser does the MIME work; nothing here is trusted
 * (it is shown escaped, the preview only inside a sandboxed frame with its own strict CSP).
 */
import { simpleParser } from "mailparser";

export interface ParsedAttachment {
  readonly filename: string | null;
  readonly contentType: string;
  readonly size: number;
  /** Inline part referred to from the HTML (`cid:`). */
  readonly inline: boolean;
}

export interface ParsedMessage {
  /** Header lines as written (unfolded), in order. */
  readonly headers: readonly { readonly name: string; readonly value: string }[];
  readonly html: string | null;
  readonly text: string | null;
  readonly attachments: readonly ParsedAttachment[];
  /** Set when the message could not be parsed: what went wrong. */
  readonly error: string | null;
}

/** Messages larger than this are not parsed for the page (the size is shown; `mail-outbox show --raw` has the bytes). */
export const MAX_PARSE_BYTES = 25 * 1024 * 1024;

export async function parseMessage(raw: Buffer | null): Promise<ParsedMessage> {
  if (raw === null || raw.length === 0) return { headers: [], html: null, text: null, attachments: [], error: "the stored message is empty" };
  if (raw.length > MAX_PARSE_BYTES) {
    return { headers: [], html: null, text: null, attachments: [], error: `the message is ${raw.length} bytes, more than the dashboard parses (${MAX_PARSE_BYTES})` };
  }
  try {
    const m = await simpleParser(raw, { skipTextToHtml: true });
    return {
      headers: m.headerLines.map((h) => {
        const colon = h.line.indexOf(":");
        return { name: colon > 0 ? h.line.slice(0, colon) : h.key, value: (colon > 0 ? h.line.slice(colon + 1) : h.line).replace(/\r?\n[ \t]+/g, " ").trim() };
      }),
      html: typeof m.html === "string" ? m.html : null,
      text: m.text ?? null,
      attachments: m.attachments.map((a) => ({
        filename: a.filename ?? null,
        contentType: a.contentType,
        size: a.size ?? a.content.length,
        inline: a.related === true,
      })),
      error: null,
    };
  } catch (e) {
    return { headers: [], html: null, text: null, attachments: [], error: `the message could not be parsed: ${e instanceof Error ? e.message : String(e)}` };
  }
}

/**
 * The HTML body made into the preview document. It is shown in `<iframe sandbox>` (no scripts, an
 * opaque origin) under `default-src 'none'; img-src data:`, which blocks scripts and remote loads.
 * Defence in depth on top: `<meta http-equiv>` is disarmed (a refresh would navigate the frame), and
 * nested frames, objects and links are renamed to inert elements (Chromium opens a connection to a
 * nested frame's host before the CSP refuses the load: that alone would tell a sender the mail was viewed).
 * Renaming tags is safe against encoding tricks: a tag name follows `<` literally or it is not a tag.
 */
export function previewDocument(message: ParsedMessage): string {
  if (message.html !== null) {
    return message.html
      .replace(/http-equiv/gi, "data-disarmed-http-equiv")
      .replace(/<(\/?)(iframe|frame|frameset|object|embed|portal|fencedframe|link)(?=[\s/>]|$)/gi, "<$1x-blocked-$2");
  }
  const text = (message.text ?? message.error ?? "").replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
  return `<!doctype html><meta charset="utf-8"><pre style="white-space:pre-wrap;font:13px/1.4 monospace">${text}</pre>`;
}
