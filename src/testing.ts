/**
 * Test helpers for applications that use the outbox (in the manner of River's rivertest):
 * assert, inside the transaction under test, that it enqueued the mail you expect. Inside a
 * transaction they look only at the mail that transaction enqueued, so other mail in a shared
 * database (committed by other tests or processes) never counts.
 *
 * @example
 * ```ts
 * import { expectEnqueued } from "prisma-mail-outbox/testing";
 * await prisma.$transaction(async (tx) => {
 *   await signUp(tx, "ann@example.com");
 *   await expectEnqueued(tx, { to: "ann@example.com", subject: /welcome/i });
 * });
 * ```
 */
import { AssertionError } from "node:assert";
import { enqueuedInTransaction, isTransactionClient } from "./extension.js";

export interface EnqueuedMail {
  readonly id: string;
  readonly messageId: string;
  readonly status: string;
  readonly envelopeFrom: string;
  readonly envelopeTo: readonly string[];
  readonly subject: string;
  readonly idempotencyKey: string | null;
  readonly metadata: unknown;
  /** The committed RFC 5322 message. */
  readonly raw: Buffer;
}

export interface EnqueuedMatch {
  /** A recipient (to, cc or bcc), compared case-insensitively. */
  readonly to?: string;
  readonly from?: string;
  readonly subject?: string | RegExp;
  readonly idempotencyKey?: string;
  /** Every key given here must be equal (JSON-wise) in the mail's metadata. */
  readonly metadata?: Readonly<Record<string, unknown>>;
  /** How many mails must match. @default at least one */
  readonly count?: number;
}

interface ClientLike {
  outboxEmail: { findMany(args: unknown): PromiseLike<Record<string, unknown>[]> };
}

function toMail(r: Record<string, unknown>): EnqueuedMail {
  return {
    id: String(r.id),
    messageId: String(r.messageId),
    status: String(r.status),
    envelopeFrom: String(r.envelopeFrom),
    envelopeTo: (r.envelopeTo as string[]) ?? [],
    subject: String(r.subject ?? ""),
    idempotencyKey: (r.idempotencyKey as string | null) ?? null,
    metadata: r.metadata ?? null,
    raw: Buffer.from(r.raw as Uint8Array),
  };
}

function matches(m: EnqueuedMail, q: EnqueuedMatch): boolean {
  if (q.to !== undefined && !m.envelopeTo.some((a) => a.toLowerCase() === q.to!.toLowerCase())) return false;
  if (q.from !== undefined && m.envelopeFrom.toLowerCase() !== q.from.toLowerCase()) return false;
  if (q.subject instanceof RegExp ? !q.subject.test(m.subject) : q.subject !== undefined && q.subject !== m.subject) return false;
  if (q.idempotencyKey !== undefined && m.idempotencyKey !== q.idempotencyKey) return false;
  if (q.metadata !== undefined) {
    const md = (m.metadata ?? {}) as Record<string, unknown>;
    for (const [k, v] of Object.entries(q.metadata)) if (JSON.stringify(md[k]) !== JSON.stringify(v)) return false;
  }
  return true;
}

/** Every mail the client (or transaction) can see in the outbox, oldest first. */
export async function listEnqueued(client: unknown, where: Record<string, unknown> = {}): Promise<EnqueuedMail[]> {
  const rows = await (client as ClientLike).outboxEmail.findMany({ where, orderBy: { id: "asc" } });
  return rows.map(toMail);
}

/**
 * The mail `tx` enqueued, oldest first: on an interactive transaction client (`tx` in
 * `prisma.$transaction(async (tx) => ...)`), the mail enqueued through `tx.outboxEmail` in that
 * transaction and nothing else (the extension records their ids per transaction; the rows are read
 * through `tx`). On a client outside a transaction, every pending mail in the outbox.
 */
export async function listEnqueuedBy(tx: unknown): Promise<EnqueuedMail[]> {
  if (!isTransactionClient(tx)) return listEnqueued(tx, { status: "pending" });
  const delegate = (tx as ClientLike).outboxEmail;
  const ids = (typeof delegate === "object" && delegate !== null ? enqueuedInTransaction(delegate) : undefined) ?? [];
  if (ids.length === 0) return [];
  return listEnqueued(tx, { id: { in: [...ids] } });
}

/**
 * Assert that the transaction `tx` enqueued mail matching `match`; returns the matches.
 * Inside `prisma.$transaction(async (tx) => ...)` only the mail enqueued through this `tx` counts
 * (call it with the same `tx` the code under test used; a nested `tx.$transaction(...)` has its own).
 * Given a client outside a transaction, it looks at every pending mail in the outbox.
 * Throws an AssertionError that lists what was enqueued instead.
 */
export async function expectEnqueued(tx: unknown, match: EnqueuedMatch): Promise<EnqueuedMail[]> {
  const inTransaction = isTransactionClient(tx);
  const all = await listEnqueuedBy(tx);
  const hits = all.filter((m) => matches(m, match));
  const ok = match.count === undefined ? hits.length > 0 : hits.length === match.count;
  if (!ok) {
    const seen = all.map((m) => `  ${m.messageId} to=${m.envelopeTo.join(",")} subject=${JSON.stringify(m.subject)}`).join("\n") || "  (none)";
    throw new AssertionError({
      message: `Expected ${match.count ?? "at least one"} enqueued mail matching ${JSON.stringify(match, (_k, v) => (v instanceof RegExp ? String(v) : v))}, found ${hits.length}. ${inTransaction ? "Mail this transaction enqueued" : "Pending mail in the outbox"}:\n${seen}`,
      actual: hits.length,
      expected: match.count ?? 1,
      operator: match.count === undefined ? ">=" : "===",
    });
  }
  return hits;
}

/** Assert that nothing matching `match` is enqueued (for example after a rollback). */
export async function expectNotEnqueued(tx: unknown, match: Omit<EnqueuedMatch, "count">): Promise<void> {
  await expectEnqueued(tx, { ...match, count: 0 });
}
