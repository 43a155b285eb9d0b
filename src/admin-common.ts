/**
 * What the operator functions share: reading an id argument, checking options with exact
 * messages, building a `MailFilter`, and running on a store with its errors translated into
 * what to do (a missing table, a database that cannot be reached).
 */
import { withStore } from "./db.js";
import { MailOutboxError, NotFoundError, OptionsError, SchemaError } from "./errors.js";
import { STATUSES, isOutboxStatus, type OutboxStatus } from "./states.js";
import { FATES, type Fate, type MailFilter, type Store } from "./store.js";
import type { DbOrUrl, MailRef } from "./admin.js";

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
/** A Message-ID: printable ASCII without spaces or angle brackets inside, one "@". */
const MESSAGE_ID = /^<?([\x21-\x3b\x3d\x3f-\x7e]+@[\x21-\x3b\x3d\x3f-\x7e]+)>?$/;

/**
 * Read a CLI/admin id argument: a row UUID, `<local@domain>` or `local@domain`.
 * @throws OptionsError for anything else.
 */
export function parseMailRef(text: string): MailRef {
  const s = typeof text === "string" ? text.trim() : "";
  if (UUID.test(s)) return { kind: "id", id: s.toLowerCase() };
  const m = s.length <= 998 ? MESSAGE_ID.exec(s) : null;
  if (m !== null && (s.startsWith("<") === s.endsWith(">")) && m[1] !== undefined && m[1].split("@").length === 2) {
    return { kind: "messageId", messageId: `<${m[1]}>` };
  }
  throw new OptionsError(
    `${JSON.stringify(text)} is neither a mail id (a UUID like 0193a1b2-...) nor a Message-ID (<local@domain>); copy it from \`mail-outbox list\`.`,
  );
}

export function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

export function buildFilter(input: {
  refs: readonly MailRef[] | null;
  statuses: readonly OutboxStatus[] | null;
  recipient?: string | undefined;
  since?: Date | undefined;
  until?: Date | undefined;
  uncertain?: boolean | undefined;
  /** Mail with a recipient whose current fate is this. @default null (any) */
  fate?: Fate | null | undefined;
}): MailFilter {
  const refs = input.refs ?? [];
  return {
    byIds: input.refs !== null,
    ids: [...new Set(refs.flatMap((r) => (r.kind === "id" ? [r.id] : [])))],
    messageIds: [...new Set(refs.flatMap((r) => (r.kind === "messageId" ? [r.messageId] : [])))],
    statuses: input.statuses === null ? null : [...input.statuses],
    recipient: checkRecipient(input.recipient),
    since: input.since === undefined ? null : checkDate(input.since, "since"),
    until: input.until === undefined ? null : checkDate(input.until, "until"),
    uncertainOnly: input.uncertain === true,
    fate: input.fate === undefined || input.fate === null ? null : checkFilterFate(input.fate),
  };
}

function checkFilterFate(value: unknown): Fate {
  if (typeof value === "string" && (FATES as readonly string[]).includes(value)) return value as Fate;
  throw new OptionsError(`Unknown fate ${JSON.stringify(value)}: use one of ${FATES.join(", ")}.`);
}

export function checkRecipient(value: string | undefined): string | null {
  if (value === undefined) return null;
  const s = typeof value === "string" ? value.trim() : "";
  // eslint-disable-next-line no-control-regex
  if (s === "" || s.length > 320 || /[\x00-\x1f\x7f]/.test(s)) {
    throw new OptionsError(`Expected \`recipient\` to be an email address like ann@example.com, got ${JSON.stringify(value)}.`);
  }
  return s;
}

export function checkStatuses<S extends OutboxStatus>(value: S | readonly S[] | OutboxStatus | readonly OutboxStatus[] | undefined, allowed: readonly S[], verb: string): S[] | null {
  if (value === undefined) return null;
  const list: readonly unknown[] = Array.isArray(value) ? value : [value];
  if (list.length === 0) return null;
  const out: S[] = [];
  for (const s of list) {
    if (!isOutboxStatus(s)) {
      throw new OptionsError(`Unknown status ${JSON.stringify(s)}: use one of ${STATUSES.join(", ")}.`);
    }
    if (!(allowed as readonly string[]).includes(s)) {
      throw new OptionsError(`${verb} does not apply to ${s} mails; it takes ${allowed.join(", ")}.`);
    }
    if (!out.includes(s as S)) out.push(s as S);
  }
  return out;
}

export function checkDate(value: Date, what: string): Date {
  if (!(value instanceof Date) || Number.isNaN(value.getTime())) {
    throw new OptionsError(`Expected \`${what}\` to be a valid Date, got ${String(value)}.`);
  }
  return value;
}

export function checkActor(value: string | undefined): string {
  if (value === undefined) return "operator";
  if (typeof value !== "string" || value.trim() === "" || value.length > 200) {
    throw new OptionsError("Expected `actor` to be a non-empty name of at most 200 characters.");
  }
  return value.trim();
}

export function zeroCounts<K extends string>(keys: readonly K[]): Record<K, number> {
  const out = {} as Record<K, number>;
  for (const k of keys) out[k] = 0;
  return out;
}

export function minDate(a: Date | null, b: Date | null | undefined): Date | null {
  if (b === null || b === undefined) return a;
  if (a === null) return b;
  return b.getTime() < a.getTime() ? b : a;
}

export function truncate(s: string, max: number): string {
  return s.length <= max ? s : `${s.slice(0, max - 1)}…`;
}

export function notFound(ref: string, db: Store): NotFoundError {
  return new NotFoundError(`No mail ${JSON.stringify(ref)} in the outbox at ${db.displayUrl}; find it with \`mail-outbox list\` (by --to, --since or --status).`);
}

/** Run `fn` on `dbOrUrl`, opening and closing the database when given a URL; missing tables become SchemaError. */
export async function withDb<T>(dbOrUrl: DbOrUrl, fn: (db: Store) => Promise<T>): Promise<T> {
  return withStore(dbOrUrl, async (db) => {
    try {
      return await fn(db);
    } catch (err) {
      throw translateError(err, db);
    }
  });
}

/**
 * The message of an error, also for AggregateError (whose own message may be empty: "connect
 * ECONNREFUSED" on ::1 and 127.0.0.1), in one line for the `mariadb` driver's errors: their message
 * adds the connection id and the statement's SQL on more lines, the server's own words are
 * `sqlMessage`; and its "pool timeout" when no connection could be made at all has the reason
 * (access denied, unknown database, connection refused) only as its cause.
 */
export function errorMessage(err: unknown): string {
  if (err instanceof AggregateError && err.message === "") {
    const inner = err.errors.map((e) => errorMessage(e)).filter((m) => m !== "");
    if (inner.length > 0) return [...new Set(inner)].join("; ");
  }
  const driver = err as { code?: unknown; sqlMessage?: unknown; cause?: unknown } | null;
  if (err instanceof Error && driver?.code === "ER_GET_CONNECTION_TIMEOUT" && driver.cause instanceof Error) return errorMessage(driver.cause);
  if (err instanceof Error && typeof driver?.sqlMessage === "string" && driver.sqlMessage !== "") return driver.sqlMessage.split("\n")[0]!.trim();
  if (err instanceof Error) return err.message || String((err as { code?: unknown }).code ?? err.name);
  return String(err);
}

/**
 * Turn a missing table or column into a SchemaError, and a database that cannot be reached (or
 * refuses us) into a MailOutboxError naming it (password redacted), each saying what to do.
 */
function translateError(err: unknown, db: Store): unknown {
  if (err instanceof MailOutboxError) return err;
  const message = errorMessage(err);
  const kind = db.classifyError(err);
  if (kind === "unavailable" || kind === "busy" || kind === "refused") {
    return new MailOutboxError(`Cannot reach the database at ${db.displayUrl}: ${message}. Check DATABASE_URL (or --database-url) and that the database is running.`, { cause: err });
  }
  if (kind === "schema") {
    return new SchemaError(
      `The outbox tables in ${db.displayUrl} are missing or out of date (${message}). Create them with \`mail-outbox migrate\` (or your Prisma migration), then check with \`mail-outbox doctor\`.`,
      { cause: err },
    );
  }
  return err;
}
