/**
 * The suppression list (`mail_outbox_suppression`): addresses that hard-bounced (added by `ingest`
 * and `follow-log` with `--suppress`) or that an operator put there, and the policy `enqueue()`
 * applies to them. This module holds what the policy needs: checking the option and the addresses,
 * the lookup through the application's Prisma client (inside its transaction), and the split of a
 * mail's recipients. The operator functions over the store (`listSuppressions`, `suppress`,
 * `unsuppress`) are in ../admin-read.ts and ../admin-change.ts.
 *
 * Addresses are compared without regard to case: the list stores them lower-cased (the domain in
 * punycode, as on the envelope), and lookups lower-case what they look for. An entry whose
 * `expires_at` has passed counts as absent.
 */
import { normalizeEmailAddress } from "../addresses.js";
import { OptionsError, SchemaError } from "../errors.js";

/**
 * What `enqueue()` does with a recipient on the suppression list.
 * - `"off"`: nothing; the list is not read (no query).
 * - `"refuse"`: throw `SuppressedRecipientError` naming them; nothing is written.
 * - `"skip"`: leave them out of the envelope; they are listed in `EnqueueResult.suppressed`. When every
 *   recipient is suppressed, the row is written as `cancelled` (never handed over) with `last_error` saying why.
 */
export type SuppressionPolicy = "off" | "refuse" | "skip";
export const SUPPRESSION_POLICIES: readonly SuppressionPolicy[] = ["off", "refuse", "skip"];

/** The `suppression` option of `mailOutbox()`. @throws OptionsError for anything but "off", "refuse", "skip". */
export function checkSuppressionPolicy(value: unknown): SuppressionPolicy {
  if (value === undefined) return "off";
  if (typeof value === "string" && (SUPPRESSION_POLICIES as readonly string[]).includes(value)) return value as SuppressionPolicy;
  throw new OptionsError(`Expected \`suppression\` to be "off", "refuse" or "skip", got ${typeof value === "string" ? JSON.stringify(value) : String(value)}.`);
}

/**
 * The form an address has on the suppression list: the envelope form (`normalizeEmailAddress`),
 * lower-cased. Null when it is not an address this library sends to.
 *
 * @example
 * suppressionKey("Ann@Example.COM"); // "ann@example.com"
 */
export function suppressionKey(address: string): string | null {
  const wire = typeof address === "string" ? normalizeEmailAddress(address.trim()) : null;
  return wire === null ? null : wire.toLowerCase();
}

/**
 * The list forms of addresses an operator typed, each once, in the order given.
 * @throws OptionsError naming every one that is not an email address.
 */
export function checkSuppressionAddresses(addresses: readonly string[]): string[] {
  if (!Array.isArray(addresses) || addresses.length === 0) {
    throw new OptionsError("Expected one or more email addresses, like ann@example.com.");
  }
  const bad: string[] = [];
  const out: string[] = [];
  for (const a of addresses) {
    const key = typeof a === "string" ? suppressionKey(a) : null;
    if (key === null) bad.push(JSON.stringify(a));
    else if (!out.includes(key)) out.push(key);
  }
  if (bad.length > 0) {
    throw new OptionsError(`Not an email address: ${bad.join(", ")}. Give bare addresses like ann@example.com.`);
  }
  return out;
}

/** The recipients of one mail split by the list: `kept` in envelope order, `suppressed` lower-cased. */
export interface RecipientSplit {
  readonly kept: string[];
  readonly suppressed: string[];
}

export function splitRecipients(envelopeTo: readonly string[], suppressed: ReadonlySet<string>): RecipientSplit {
  const kept: string[] = [];
  const out: string[] = [];
  for (const r of envelopeTo) {
    const key = r.toLowerCase();
    if (suppressed.has(key)) {
      if (!out.includes(key)) out.push(key);
    } else {
      kept.push(r);
    }
  }
  return { kept, suppressed: out };
}

/** `last_error` of a mail written as cancelled because every recipient is suppressed. */
export function allSuppressedMessage(suppressed: readonly string[]): string {
  return (
    `Not handed over: every recipient is on the suppression list (${suppressed.join(", ")}). ` +
    "See `mail-outbox suppress list`; to send it anyway, `mail-outbox suppress remove <address>`, then `mail-outbox replay <id>`."
  );
}

/** The subset of the `outboxSuppression` model delegate the lookup uses. */
interface SuppressionDelegate {
  findMany(args: {
    where: { address: { in: string[] } };
    select: { address: true; expiresAt: true };
  }): PromiseLike<{ address: string; expiresAt: Date | null }[]>;
}

/** Addresses per lookup query: far below SQLite's and PostgreSQL's bound-parameter limits. */
const LOOKUP_CHUNK = 500;

/**
 * The addresses of `recipients` on the suppression list and not expired at `now` (lower-cased), read
 * through `client.outboxSuppression`: the application's Prisma client, or its interactive
 * transaction (then the read is part of that transaction).
 *
 * @throws SchemaError when the client has no `OutboxSuppression` model, or its table is missing.
 */
export async function findSuppressedWithPrisma(client: unknown, recipients: readonly string[], now: Date): Promise<Set<string>> {
  const delegate = (client as { outboxSuppression?: Partial<SuppressionDelegate> } | null)?.outboxSuppression;
  if (delegate === undefined || typeof delegate.findMany !== "function") {
    throw new SchemaError(
      'mailOutbox({ suppression }) reads the suppression list through the `OutboxSuppression` model, which this Prisma client does not have. ' +
        "Add the outbox models to your schema (`mail-outbox init --schema prisma/schema.prisma` adds the missing ones), create the table " +
        '(`prisma migrate dev`, or `mail-outbox migrate`), run `prisma generate`, or set `suppression: "off"`.',
    );
  }
  const keys = [...new Set(recipients.map((r) => r.toLowerCase()))];
  const found = new Set<string>();
  for (let i = 0; i < keys.length; i += LOOKUP_CHUNK) {
    let rows: { address: string; expiresAt: Date | null }[];
    try {
      rows = await delegate.findMany({ where: { address: { in: keys.slice(i, i + LOOKUP_CHUNK) } }, select: { address: true, expiresAt: true } });
    } catch (err) {
      if ((err as { code?: unknown } | null)?.code === "P2021") {
        throw new SchemaError(
          "The suppression table mail_outbox_suppression does not exist in this database. Create it with `mail-outbox migrate` (or your Prisma migration), " +
            'or set `suppression: "off"`.',
          { cause: err },
        );
      }
      throw err;
    }
    // Expiry is compared here rather than in SQL: the same on every database, whatever text form SQLite holds.
    for (const row of rows) {
      if (row.expiresAt === null || new Date(row.expiresAt).getTime() > now.getTime()) found.add(row.address.toLowerCase());
    }
  }
  return found;
}
