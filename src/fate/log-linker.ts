/**
 * How follow-log's lines find their mail (follow-log.ts): `LineLinker` turns a batch of Postfix log
 * lines into delivery events: the cleanup line's Message-ID links its queue id to a row (kept as a
 * pending link in the cursor's state until qmgr's `(queue active)` line, recorded as `queued`), the
 * queue ids met later are looked up (`mailIdsByQueueId`), each delivery line becomes its recipient's
 * event, and qmgr's expiry line expires the recipients not settled yet. It reads the database but
 * writes nothing: the follower records the events with the cursor, then calls `keep`.
 */
import { createHash } from "node:crypto";
import type { Logger } from "../logger.js";
import type { DeliveryEventInput, DeliveryEventKind, Fate, Store } from "../store.js";
import type { JsonValue } from "../types.js";
import { normalizeMessageId, parsePostfixLine, type PostfixDeliveryStatus, type PostfixLogEntry } from "./postfix-log.js";

const STATUS_EVENT: Readonly<Record<PostfixDeliveryStatus, Fate>> = { sent: "delivered", deferred: "deferred", bounced: "bounced", expired: "expired" };
const TERMINAL: ReadonlySet<DeliveryEventKind> = new Set(["delivered", "bounced", "expired"]);
/** Cleanup links older than this whose qmgr line never came (mail held, then deleted) are dropped from the state. */
const LINK_MAX_AGE_MS = 7 * 86_400_000;
const LINK_MAX = 20_000;
/** Queue ids remembered in memory (linked or known to be foreign). */
const CACHE_MAX = 50_000;

export interface Link {
  readonly mailId: string;
  readonly messageId: string | null;
}

/** A queue id linked by its cleanup line, waiting for the qmgr line (saved in the cursor's state). */
export interface PendingLink extends Link {
  readonly at: number;
}

interface LinkState {
  readonly pending: Map<string, PendingLink>;
  /** The bytes before the saved position, base64 (see LogFile). */
  readonly tail: string | null;
}

export function readState(json: JsonValue | null): LinkState {
  const pending = new Map<string, PendingLink>();
  let tail: string | null = null;
  if (json !== null && typeof json === "object" && !Array.isArray(json)) {
    const links = json.links;
    if (links !== null && typeof links === "object" && !Array.isArray(links)) {
      for (const [qid, v] of Object.entries(links)) {
        if (v === null || typeof v !== "object" || Array.isArray(v) || typeof v.mail !== "string") continue;
        pending.set(qid, { mailId: v.mail, messageId: typeof v.msg === "string" ? v.msg : null, at: typeof v.at === "number" ? v.at : Date.now() });
      }
    }
    if (typeof json.tail64 === "string") tail = json.tail64;
  }
  return { pending, tail };
}

export function writeState(pending: ReadonlyMap<string, PendingLink>, tail: string | null): JsonValue {
  const links: Record<string, JsonValue> = {};
  for (const [qid, l] of pending) links[qid] = { mail: l.mailId, msg: l.messageId, at: l.at };
  return { v: 1, links, tail64: tail };
}

/** What one batch of lines comes to. */
export interface Linked {
  readonly events: DeliveryEventInput[];
  /** mail id -> Message-ID, where known, for the events' payloads. */
  readonly messageIds: Map<string, string>;
  readonly pending: Map<string, PendingLink>;
  /** Queue ids resolved in this batch (null: not outbox mail), for the cache once recorded. */
  readonly resolved: Map<string, Link | null>;
  readonly foreign: number;
  /** Lines about outbox mail. */
  readonly outbox: number;
  readonly removed: readonly string[];
}

export function eventKey(line: string, extra = ""): string {
  return `log:${createHash("sha256").update(extra === "" ? line : `${line}\n${extra}`).digest("hex")}`;
}

/**
 * Turns lines into events: the cleanup/qmgr linking, the per-recipient events, the expiry of the
 * recipients not yet settled. Reads the database (lookups) but writes nothing; the follower
 * records what it returns, with the cursor, and only then keeps its new state.
 */
export class LineLinker {
  /** Queue ids seen and resolved (null: mail of no outbox). Bounded; the database answers for the rest. */
  readonly cache = new Map<string, Link | null>();

  constructor(
    private readonly store: Store,
    private readonly log: Logger,
  ) {}

  async link(lines: readonly string[], pendingBefore: ReadonlyMap<string, PendingLink>, now: Date): Promise<Linked> {
    const entries: { line: string; entry: PostfixLogEntry }[] = [];
    for (const line of lines) {
      const entry = parsePostfixLine(line, { now });
      if (entry !== null) entries.push({ line, entry });
    }
    const pending = new Map(pendingBefore);
    const resolved = new Map<string, Link | null>();
    const messageIds = new Map<string, string>();

    // One lookup per batch for the Message-IDs of cleanup lines...
    const wantedIds = [...new Set(entries.filter((e) => e.entry.kind === "message-id").map((e) => normalizeMessageId((e.entry as { messageId: string }).messageId)))];
    const byMessageId = wantedIds.length > 0 ? await this.store.mailIdsByMessageId(wantedIds) : new Map<string, string>();
    // ...and one for the queue ids met without their cleanup line (mail linked before, or handed over by SMTP).
    const linkedHere = new Set(entries.filter((e) => e.entry.kind === "message-id").map((e) => e.entry.queueId));
    const unknown = [
      ...new Set(entries.filter((e) => e.entry.kind !== "message-id").map((e) => e.entry.queueId)),
    ].filter((q) => !linkedHere.has(q) && !pending.has(q) && !this.cache.has(q));
    const byQueueId = unknown.length > 0 ? await this.store.mailIdsByQueueId(unknown) : new Map<string, string>();

    const resolve = (qid: string): Link | null => {
      const p = pending.get(qid);
      if (p !== undefined) return p;
      if (resolved.has(qid)) return resolved.get(qid) ?? null;
      if (this.cache.has(qid)) return this.cache.get(qid) ?? null;
      const mailId = byQueueId.get(qid);
      const link = mailId === undefined ? null : { mailId, messageId: null };
      resolved.set(qid, link);
      return link;
    };

    const events: DeliveryEventInput[] = [];
    const removed: string[] = [];
    let foreign = 0;
    let outbox = 0;
    for (const { line, entry } of entries) {
      const qid = entry.queueId;
      const foreignBefore = foreign;
      switch (entry.kind) {
        case "message-id": {
          const messageId = normalizeMessageId(entry.messageId);
          const mailId = byMessageId.get(messageId);
          if (mailId === undefined) {
            // A new queue id, or a reused one: its earlier link no longer holds.
            pending.delete(qid);
            resolved.set(qid, null);
            foreign += 1;
          } else {
            pending.set(qid, { mailId, messageId, at: entry.at.getTime() });
            resolved.delete(qid);
            messageIds.set(mailId, messageId);
          }
          break;
        }
        case "queued": {
          const p = pending.get(qid);
          if (p !== undefined) {
            // The first time the mail enters the active queue after its cleanup line: the MTA's proof it has it.
            pending.delete(qid);
            resolved.set(qid, { mailId: p.mailId, messageId: p.messageId });
            events.push({ emailId: p.mailId, recipient: "", event: "queued", at: entry.at, source: "log", queueId: qid, dsnStatus: null, remoteMta: null, reply: null, eventKey: eventKey(line) });
          } else if (resolve(qid) === null) {
            foreign += 1;
          }
          break;
        }
        case "delivery": {
          const link = resolve(qid);
          if (link === null) {
            foreign += 1;
            break;
          }
          events.push({
            emailId: link.mailId,
            recipient: entry.origTo ?? entry.to,
            event: STATUS_EVENT[entry.status],
            at: entry.at,
            source: "log",
            queueId: qid,
            dsnStatus: entry.dsn,
            remoteMta: entry.relay,
            reply: entry.reply,
            eventKey: eventKey(line),
          });
          break;
        }
        case "expired": {
          const link = resolve(qid);
          if (link === null) {
            foreign += 1;
            break;
          }
          for (const recipient of await this.unsettled(link.mailId, qid, events)) {
            events.push({ emailId: link.mailId, recipient, event: "expired", at: entry.at, source: "log", queueId: qid, dsnStatus: null, remoteMta: null, reply: entry.reason, eventKey: eventKey(line, recipient.toLowerCase()) });
          }
          break;
        }
        case "removed":
          if (resolve(qid) === null) foreign += 1;
          // Gone from the queue (also a held mail deleted before it was ever queued): forget the link.
          pending.delete(qid);
          removed.push(qid);
          break;
        case "notification":
          // Postfix's own bounce or delay notice: its cleanup line carries its own Message-ID, so it links to nothing.
          foreign += resolve(qid) === null ? 1 : 0;
          break;
      }
      if (foreign === foreignBefore) outbox += 1;
    }
    // Links whose qmgr line never came (a message held, then deleted) are not kept for ever.
    const cutoff = now.getTime() - LINK_MAX_AGE_MS;
    for (const [qid, p] of pending) if (p.at < cutoff) pending.delete(qid);
    while (pending.size > LINK_MAX) {
      const oldest = pending.keys().next().value as string;
      this.log.warn({ queueId: oldest }, "too many queue ids waiting for their qmgr line; forgetting the oldest");
      pending.delete(oldest);
    }
    return { events, messageIds, pending, resolved, foreign, outbox, removed };
  }

  /** Keep what a recorded batch resolved. */
  keep(linked: Linked): void {
    for (const [qid, link] of linked.resolved) {
      this.cache.delete(qid);
      this.cache.set(qid, link);
    }
    for (const qid of linked.removed) this.cache.delete(qid);
    while (this.cache.size > CACHE_MAX) this.cache.delete(this.cache.keys().next().value as string);
  }

  /**
   * The recipients of a mail that have no terminal event for this queue id (stored or in this
   * batch): the envelope the MTA accepted, plus any recipient the log named for this queue id.
   */
  private async unsettled(mailId: string, qid: string, batch: readonly DeliveryEventInput[]): Promise<string[]> {
    const found = await this.store.findMail({ id: mailId }, false);
    const stored = await this.store.listDeliveryEvents(mailId);
    const all = [...stored, ...batch.filter((e) => e.emailId === mailId)].filter((e) => e.queueId === qid && e.recipient !== "");
    const settled = new Set(all.filter((e) => TERMINAL.has(e.event)).map((e) => e.recipient.toLowerCase()));
    const candidates = new Map<string, string>();
    for (const r of [...(found?.mail.accepted ?? found?.mail.envelopeTo ?? []), ...all.map((e) => e.recipient)]) {
      if (!candidates.has(r.toLowerCase())) candidates.set(r.toLowerCase(), r);
    }
    return [...candidates].filter(([lower]) => !settled.has(lower)).map(([, r]) => r);
  }
}
