/**
 * The list's filters and cursor as they travel in URLs and forms: parsed and checked here (bad input
 * is an {@link OptionsError} the page shows), written back by {@link filterParams} for links.
 */
import { parseSince } from "../duration.js";
import { OptionsError } from "../errors.js";
import { STATUSES, type OutboxStatus } from "../states.js";
import { FATES, type Fate, type MailFilter, type MailPageQuery } from "../store.js";

export interface ListFilter {
  readonly statuses: readonly OutboxStatus[];
  readonly recipient: string;
  readonly subject: string;
  /** `key=value` as typed. */
  readonly meta: string;
  readonly since: string;
  readonly until: string;
  readonly uncertain: boolean;
  readonly partial: boolean;
  readonly fate: Fate | "";
}

export const EMPTY_FILTER: ListFilter = { statuses: [], recipient: "", subject: "", meta: "", since: "", until: "", uncertain: false, partial: false, fate: "" };

export interface Cursor {
  readonly createdAt: Date;
  readonly id: string;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const META_KEY = /^[A-Za-z0-9_.-]{1,100}$/;
const MAX_TEXT = 320;

function text(params: URLSearchParams, name: string): string {
  const v = (params.get(name) ?? "").trim();
  if (v.length > MAX_TEXT) throw new OptionsError(`The ${name} filter is longer than ${MAX_TEXT} characters.`);
  return v;
}

/** The filter in a query string (or a posted form). */
export function parseFilter(params: URLSearchParams): ListFilter {
  const statuses: OutboxStatus[] = [];
  for (const s of params.getAll("status")) {
    if (s === "") continue;
    if (!(STATUSES as readonly string[]).includes(s)) throw new OptionsError(`Unknown status ${JSON.stringify(s)}: use one of ${STATUSES.join(", ")}.`);
    if (!statuses.includes(s as OutboxStatus)) statuses.push(s as OutboxStatus);
  }
  const fate = params.get("fate") ?? "";
  if (fate !== "" && !(FATES as readonly string[]).includes(fate)) throw new OptionsError(`Unknown fate ${JSON.stringify(fate)}: use one of ${FATES.join(", ")}.`);
  return {
    statuses,
    recipient: text(params, "recipient"),
    subject: text(params, "subject"),
    meta: text(params, "meta"),
    since: text(params, "since"),
    until: text(params, "until"),
    uncertain: params.get("uncertain") === "1",
    partial: params.get("partial") === "1",
    fate: fate as Fate | "",
  };
}

/** The filter as query parameters (only what is set), for links and hidden form fields. */
export function filterParams(f: ListFilter): [string, string][] {
  const out: [string, string][] = f.statuses.map((s) => ["status", s]);
  for (const k of ["recipient", "subject", "meta", "since", "until"] as const) if (f[k] !== "") out.push([k, f[k]]);
  if (f.uncertain) out.push(["uncertain", "1"]);
  if (f.partial) out.push(["partial", "1"]);
  if (f.fate !== "") out.push(["fate", f.fate]);
  return out;
}

export function isEmptyFilter(f: ListFilter): boolean {
  return filterParams(f).length === 0;
}

/** `datetime-local` inputs carry no zone: read them as UTC, as the pages show times. */
function time(value: string, now: Date, what: string): Date | null {
  if (value === "") return null;
  return parseSince(value, now, what);
}

/** The store's query for one page. */
export function pageQuery(f: ListFilter, before: Cursor | null, limit: number, now = new Date()): MailPageQuery {
  let metadata: MailPageQuery["metadata"] = null;
  if (f.meta !== "") {
    const eq = f.meta.indexOf("=");
    const key = eq < 0 ? "" : f.meta.slice(0, eq).trim();
    if (!META_KEY.test(key)) throw new OptionsError('The metadata filter is key=value with a top-level key of letters, digits, "_", "." or "-" (e.g. tenant=acme).');
    metadata = { key, value: f.meta.slice(eq + 1).trim() };
  }
  const filter: MailFilter = {
    byIds: false,
    ids: [],
    messageIds: [],
    statuses: f.statuses.length > 0 ? f.statuses : null,
    recipient: f.recipient === "" ? null : f.recipient,
    since: time(f.since, now, "since"),
    until: time(f.until, now, "until"),
    uncertainOnly: f.uncertain,
    fate: f.fate === "" ? null : f.fate,
  };
  return { filter, subject: f.subject === "" ? null : f.subject, metadata, partialOnly: f.partial, before, limit };
}

/** `<created_at ms>.<id>`: the last row of a page, the next page's start. */
export function encodeCursor(c: Cursor): string {
  return `${c.createdAt.getTime()}.${c.id}`;
}

export function parseCursor(value: string | null): Cursor | null {
  if (value === null || value === "") return null;
  const dot = value.indexOf(".");
  const ms = Number(value.slice(0, dot));
  const id = value.slice(dot + 1);
  if (dot < 1 || !Number.isSafeInteger(ms) || !UUID.test(id)) throw new OptionsError("The page cursor in the address is not one this dashboard wrote; start from the first page.");
  return { createdAt: new Date(ms), id: id.toLowerCase() };
}

export function isUuid(value: string): boolean {
  return UUID.test(value);
}
