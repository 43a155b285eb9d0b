/**
 * Mails for the dashboard's tests (test/ui.test.ts, test/ui-browser.test.ts): rows written straight
 * into a fixture's tables with a real MIME message (nodemailer's composer), attempt-log lines, and
 * the hostile mail whose subject, names, filename and HTML carry script and remote-load payloads.
 */
import { randomUUID } from "node:crypto";
import MailComposer from "nodemailer/lib/mail-composer";
import type { Db } from "../../src/db.js";
import { insertRow } from "./db.js";

export const XSS = `<script>alert(1)</script><img src=x onerror=alert(1)>`;

export interface SeedMail {
  readonly id?: string;
  readonly status?: string;
  readonly to?: readonly string[];
  readonly subject?: string;
  readonly fromName?: string;
  readonly html?: string;
  readonly text?: string;
  readonly attachments?: readonly { readonly filename: string; readonly content: string }[];
  readonly createdAt?: Date;
  readonly metadata?: unknown;
  readonly attempts?: number;
  readonly uncertainHandoffs?: number;
  readonly rejected?: readonly { recipient: string; response: string }[];
  readonly accepted?: readonly string[];
}

export async function composeRaw(m: SeedMail, messageId: string): Promise<Buffer> {
  const composer = new MailComposer({
    from: { name: m.fromName ?? "Shop", address: "shop@example.com" },
    to: [...(m.to ?? ["ann@example.com"])],
    subject: m.subject ?? "Hello",
    messageId,
    ...(m.html !== undefined ? { html: m.html } : {}),
    text: m.text ?? "Hi there",
    attachments: (m.attachments ?? []).map((a) => ({ filename: a.filename, content: a.content })),
  });
  return await new Promise<Buffer>((resolve, reject) => composer.compile().build((err, buf) => (err ? reject(err) : resolve(buf))));
}

/** Insert one mail; returns its id and Message-ID. */
export async function seedMail(db: Db, m: SeedMail = {}): Promise<{ id: string; messageId: string }> {
  const id = m.id ?? randomUUID();
  const messageId = `<${randomUUID()}@example.com>`;
  const raw = await composeRaw(m, messageId);
  const at = m.createdAt ?? new Date();
  const status = m.status ?? "pending";
  await insertRow(db, "mail_outbox", {
    id,
    message_id: messageId,
    status,
    envelope_from: "shop@example.com",
    envelope_to: JSON.stringify(m.to ?? ["ann@example.com"]),
    subject: m.subject ?? "Hello",
    raw,
    size: raw.length,
    metadata: m.metadata === undefined ? null : JSON.stringify(m.metadata),
    attempts: m.attempts ?? 0,
    max_attempts: 5,
    send_at: at,
    next_attempt_at: at,
    uncertain_handoffs: m.uncertainHandoffs ?? 0,
    rejected: m.rejected === undefined ? null : JSON.stringify(m.rejected),
    accepted: m.accepted === undefined ? null : JSON.stringify(m.accepted),
    sent_at: status === "sent" ? at : null,
    created_at: at,
    updated_at: at,
  });
  return { id, messageId };
}

/** One hand-off line in the attempt log. */
export async function seedAttempt(db: Db, emailId: string, a: { outcome: string; startedAt: Date; durationMs: number; response?: string; attempt?: number }): Promise<void> {
  await insertRow(db, "mail_outbox_attempt", {
    id: randomUUID(),
    email_id: emailId,
    attempt: a.attempt ?? 1,
    relay: "relay-test",
    started_at: a.startedAt,
    duration_ms: a.durationMs,
    outcome: a.outcome,
    response: a.response ?? null,
    response_code: a.outcome === "accepted" ? 250 : null,
    error_code: null,
    error: null,
    queue_id: null,
  });
}

/** The hostile mail: every field an attacker writes carries a payload; `beacon` is a URL that must never be fetched. */
export function hostileMail(beacon: string): SeedMail {
  return {
    status: "dead",
    subject: `${XSS} "quoted" & 'single'`,
    fromName: `Evil ${XSS}`,
    to: ["victim@example.com"],
    html: `<p>hi</p>${XSS}<img src="${beacon}/img"><link rel="stylesheet" href="${beacon}/css"><meta http-equiv="refresh" content="0;url=${beacon}/refresh"><iframe src="${beacon}/frame"></iframe><form action="${beacon}/form"><button>go</button></form><div style="background:url(${beacon}/bg)">x</div>`,
    attachments: [{ filename: `${XSS}.txt`, content: "payload" }],
    metadata: { note: XSS },
  };
}
