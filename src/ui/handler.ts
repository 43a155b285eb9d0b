/**
 * The dashboard as a Node request handler, `(req, res, next?)`: mount it in `http.createServer`,
 * Express (`app.use("/outbox", handler)`), Fastify or a Next.js custom server. It reads through the
 * operator functions (admin.ts) and the store's dashboard statements, and changes rows only through
 * replayMails, cancelMails and resolveUncertain, so every action lands in the attempt log with its actor.
 *
 * Security model: mail content is hostile. Every page is server-rendered with `html` (everything
 * escaped), carries no script, and is served with a strict Content-Security-Policy; the HTML preview
 * is a separate URL shown in `<iframe sandbox>` under `default-src 'none'` (no script, no remote
 * load). Actions are off unless `readOnly: false`, are POST only, and need a CSRF token (an HMAC of a
 * per-handler secret and a random HttpOnly SameSite=Strict cookie) and a same-origin request.
 * Authentication (basic or bearer) is checked before anything else when configured.
 */
import { createHash, createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";
import { cancelMails, getStatus, replayMails, showMail, type CancelResult, type ReplayResult } from "../admin.js";
import { errorMessage, parseMailRef } from "../admin-common.js";
import { openDatabase } from "../db.js";
import { pauseRelays } from "../ops.js";
import { MailOutboxError, NotFoundError, OptionsError, UnsafeOperationError } from "../errors.js";
import { redactSecrets } from "../redact.js";
import type { MailRecord, Store } from "../store.js";
import { toSeries } from "./charts.js";
import { parseMessage, previewDocument } from "./message.js";
import {
  bulkConfirmPage,
  confirmMailPage,
  detailPage,
  errorPage,
  listPage,
  overviewPage,
  resolvePage,
  resultPage,
  type PageContext,
} from "./pages.js";
import { filterParams, isUuid, pageQuery, parseCursor, parseFilter, type Cursor, type ListFilter } from "./query.js";
import { STYLE_CSS } from "./style.js";

/** How the dashboard authenticates requests. Both given: either one is accepted. */
export interface DashboardAuth {
  /** HTTP basic auth (the browser asks); the user name is the actor in the attempt log (`ui:<user>`). */
  readonly basic?: { readonly user: string; readonly password: string };
  /** `Authorization: Bearer <token>` (for a proxy or a script in front of it). */
  readonly bearer?: string;
}

export interface DashboardOptions {
  /** An open store (`openDatabase()`); the handler does not close it. Give this or `databaseUrl`. */
  readonly db?: Store;
  /** A database URL the handler opens on first use and closes with `close()`. */
  readonly databaseUrl?: string;
  /** No action at all (replay, cancel, resolve): POSTs are refused with 403. @default true */
  readonly readOnly?: boolean;
  /** Require credentials on every request. @default none (only for a loopback listener; `serveDashboard` enforces it) */
  readonly auth?: DashboardAuth;
  /**
   * Where the handler is mounted when the server passes it the full path (plain http, Fastify):
   * `"/outbox"`. Under Express's `app.use("/outbox", handler)` it is taken from `req.baseUrl`. @default ""
   */
  readonly basePath?: string;
  /** Rows per list page (10 to 500). @default 50 */
  readonly pageSize?: number;
}

/** A Node request handler with `close()` (closes the database when it opened it). */
export type DashboardHandler = ((req: IncomingMessage, res: ServerResponse, next?: (err?: unknown) => void) => void) & {
  close(): Promise<void>;
};

/** The main pages' policy: styles from the stylesheet only, frames only from here (the preview), no script at all. */
export const PAGE_CSP = "default-src 'none'; style-src 'self'; img-src 'self' data:; frame-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
/** The preview's policy: its own inline styles and data: images, nothing else, sandboxed even when opened directly. */
export const PREVIEW_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; font-src data:; form-action 'none'; frame-ancestors 'self'; base-uri 'none'; sandbox";

/** Mails one bulk action may take; more must be narrowed by the filter first. */
export const MAX_BULK = 10_000;
const MAX_BODY = 64 * 1024;
const CSRF_COOKIE = "mail_outbox_csrf";

class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

/**
 * Create the dashboard handler.
 *
 * @example
 * // plain node:http, everything under /outbox
 * const handler = createDashboardHandler({ databaseUrl: process.env.DATABASE_URL, basePath: "/outbox" });
 * http.createServer((req, res) => handler(req, res, () => { res.statusCode = 404; res.end(); })).listen(8025, "127.0.0.1");
 * @example
 * // Express, actions on, behind basic auth
 * app.use("/outbox", createDashboardHandler({ db, readOnly: false, auth: { basic: { user: "ops", password: process.env.UI_PASSWORD! } } }));
 * @throws OptionsError for a missing database, both `db` and `databaseUrl`, or a bad `basePath`, `auth` or `pageSize`.
 */
export function createDashboardHandler(options: DashboardOptions): DashboardHandler {
  if (options === null || typeof options !== "object") throw new OptionsError("Expected options with `db` (an open store) or `databaseUrl`.");
  if ((options.db === undefined) === (options.databaseUrl === undefined)) {
    throw new OptionsError("Expected exactly one of `db` (an open store) and `databaseUrl` (file:... or postgresql://...).");
  }
  const basePath = options.basePath ?? "";
  if (basePath !== "" && !/^(\/[A-Za-z0-9._~-]+)+$/.test(basePath)) {
    throw new OptionsError(`Expected \`basePath\` to be "" or a path like "/outbox" (no trailing slash), got ${JSON.stringify(basePath)}.`);
  }
  const auth = checkAuth(options.auth);
  const pageSize = options.pageSize ?? 50;
  if (!Number.isSafeInteger(pageSize) || pageSize < 10 || pageSize > 500) throw new OptionsError(`Expected \`pageSize\` to be a whole number from 10 to 500, got ${JSON.stringify(pageSize)}.`);
  const actions = options.readOnly === false;
  const secret = randomBytes(32);
  let opened: Promise<Store> | undefined;
  const store = (): Promise<Store> => {
    if (options.db !== undefined) return Promise.resolve(options.db);
    opened ??= openDatabase(options.databaseUrl);
    return opened;
  };

  const handler = ((req: IncomingMessage, res: ServerResponse, next?: (err?: unknown) => void) => {
    const url = new URL(req.url ?? "/", "http://dashboard.invalid");
    const baseUrl = (req as { baseUrl?: unknown }).baseUrl;
    let prefix: string;
    let path = url.pathname;
    if (typeof baseUrl === "string" && baseUrl !== "") {
      prefix = baseUrl; // Express stripped its mount path from req.url already
    } else {
      prefix = basePath;
      if (basePath !== "") {
        if (path === basePath) path = "/";
        else if (path.startsWith(`${basePath}/`)) path = path.slice(basePath.length);
        else {
          if (next !== undefined) next();
          else send(res, 404, "text/plain; charset=utf-8", "Not found\n");
          return;
        }
      }
    }
    void serve(req, res, url, path, prefix).catch((err: unknown) => {
      if (!res.headersSent) send(res, 500, "text/plain; charset=utf-8", `Internal error: ${redactSecrets(errorMessage(err))}\n`);
      else res.destroy();
    });
  }) as DashboardHandler;

  handler.close = async () => {
    if (opened !== undefined) {
      const db = await opened.catch(() => null);
      opened = undefined;
      await db?.close();
    }
  };

  async function serve(req: IncomingMessage, res: ServerResponse, url: URL, path: string, prefix: string): Promise<void> {
    const who = authenticate(req, auth);
    if (who === null) {
      res.setHeader("WWW-Authenticate", auth.basic !== undefined ? 'Basic realm="mail-outbox", charset="UTF-8"' : 'Bearer realm="mail-outbox"');
      send(res, 401, "text/plain; charset=utf-8", "Authentication required.\n");
      return;
    }
    const method = req.method ?? "GET";
    if (path === "/style.css" && (method === "GET" || method === "HEAD")) {
      send(res, 200, "text/css; charset=utf-8", STYLE_CSS, method === "HEAD");
      return;
    }
    const cookieToken = readCookie(req, CSRF_COOKIE);
    const nonce = cookieToken ?? randomBytes(18).toString("base64url");
    if (cookieToken === null) {
      const secure = (req.socket as { encrypted?: boolean }).encrypted === true ? "; Secure" : "";
      res.setHeader("Set-Cookie", `${CSRF_COOKIE}=${nonce}; Path=${prefix === "" ? "/" : prefix}; HttpOnly; SameSite=Strict${secure}`);
    }
    const ctx: PageContext = {
      prefix,
      actions,
      csrf: csrfToken(secret, nonce),
      database: "",
      actor: who === "" ? "ui" : `ui:${who}`,
    };
    let page: PageContext = ctx;
    try {
      const db = await store();
      page = { ...ctx, database: db.displayUrl };
      const segments = path.split("/").filter((s) => s !== "");
      if (method === "POST") {
        if (!actions) throw new HttpError(403, "The dashboard is read-only: start it with --allow-actions (or readOnly: false) to replay, cancel or resolve mail.");
        checkOrigin(req);
        const form = await readForm(req);
        const token = form.get("csrf") ?? "";
        if (cookieToken === null || !safeEqual(token, csrfToken(secret, cookieToken))) {
          throw new HttpError(403, "The form's CSRF token is missing or does not match: reload the page and submit it again.");
        }
        await post(db, page, res, segments, form);
        return;
      }
      if (method !== "GET" && method !== "HEAD") {
        res.setHeader("Allow", "GET, HEAD, POST");
        throw new HttpError(405, `${method} is not served here.`);
      }
      await get(db, page, res, segments, url, method === "HEAD");
    } catch (err) {
      const status = err instanceof HttpError ? err.status : err instanceof OptionsError ? 400 : err instanceof NotFoundError ? 404 : err instanceof UnsafeOperationError ? 409 : 500;
      const message = err instanceof HttpError || err instanceof MailOutboxError ? err.message : `Something went wrong: ${errorMessage(err)}`;
      sendPage(res, status, errorPage(page, status, redactSecrets(message)));
    }
  }

  async function get(db: Store, ctx: PageContext, res: ServerResponse, seg: readonly string[], url: URL, head: boolean): Promise<void> {
    const [a, b, c] = seg;
    if (seg.length === 0) {
      const now = new Date();
      const hourSince = new Date(Math.floor((now.getTime() - 3_600_000) / 60_000) * 60_000 + 60_000);
      const daySince = new Date(Math.floor((now.getTime() - 86_400_000) / 3_600_000) * 3_600_000 + 3_600_000);
      const [report, pauses, hour, day] = await Promise.all([getStatus(db, { now }), db.listPauses(), db.attemptBuckets(hourSince, 60_000), db.attemptBuckets(daySince, 3_600_000)]);
      return sendPage(res, 200, overviewPage(ctx, { report, pauses, hour: toSeries(hour, hourSince, now, 60_000), day: toSeries(day, daySince, now, 3_600_000) }), head);
    }
    if (a === "mails" && seg.length === 1) {
      let filter: ListFilter;
      try {
        filter = parseFilter(url.searchParams);
      } catch (e) {
        return sendPage(res, 400, listPage(ctx, parseFilter(new URLSearchParams()), [], null, false, errorMessage(e)), head);
      }
      try {
        const before = parseCursor(url.searchParams.get("before"));
        const rows = await db.listMailPage(pageQuery(filter, before, pageSize + 1));
        const mails = rows.slice(0, pageSize);
        const last = mails.at(-1);
        const next: Cursor | null = rows.length > pageSize && last !== undefined ? { createdAt: last.createdAt, id: last.id } : null;
        return sendPage(res, 200, listPage(ctx, filter, mails, next, before !== null, null), head);
      } catch (e) {
        if (!(e instanceof OptionsError)) throw e;
        return sendPage(res, 400, listPage(ctx, filter, [], null, false, e.message), head);
      }
    }
    if (a === "mails" && b !== undefined && seg.length <= 3) {
      if (!isUuid(b)) throw new HttpError(404, "No such mail: the address names no mail id.");
      if (c === undefined) {
        const detail = await showMail(db, b, { raw: true });
        const message = await parseMessage(detail.raw ?? null);
        return sendPage(res, 200, detailPage(ctx, detail, message), head);
      }
      if (c === "preview") {
        const found = await db.findMail({ id: b.toLowerCase() }, true);
        if (found === undefined) throw new HttpError(404, "No such mail.");
        res.setHeader("Content-Security-Policy", PREVIEW_CSP);
        commonHeaders(res, false);
        res.setHeader("X-Frame-Options", "SAMEORIGIN");
        send(res, 200, "text/html; charset=utf-8", previewDocument(await parseMessage(found.raw)), head);
        return;
      }
      if (c === "replay" || c === "cancel" || c === "resolve") {
        requireActions(ctx);
        const mail = await mailById(db, b);
        return sendPage(res, 200, c === "resolve" ? resolvePage(ctx, mail) : confirmMailPage(ctx, mail, c), head);
      }
    }
    if (a === "find" && seg.length === 1) {
      const ref = parseMailRef(url.searchParams.get("q") ?? "");
      const found = await db.findMail(ref.kind === "id" ? { id: ref.id } : { messageId: ref.messageId }, false);
      if (found === undefined) throw new HttpError(404, "No mail has this id or Message-ID.");
      res.setHeader("Location", `${ctx.prefix}/mails/${found.mail.id}`);
      return sendPage(res, 303, "", head);
    }
    if (a === "bulk" && seg.length === 1) {
      requireActions(ctx);
      const action = bulkAction(url.searchParams.get("action"));
      const filter = parseFilter(url.searchParams);
      return sendPage(res, 200, bulkConfirmPage(ctx, { ...(await bulkPreview(db, action, filter, ctx.actor)), note: null }), head);
    }
    throw new HttpError(404, "There is no such page.");
  }

  async function post(db: Store, ctx: PageContext, res: ServerResponse, seg: readonly string[], form: URLSearchParams): Promise<void> {
    const [a, b, c] = seg;
    if (a === "mails" && b !== undefined && isUuid(b) && seg.length === 3) {
      const mail = await mailById(db, b);
      const back = `${ctx.prefix}/mails/${mail.id}`;
      if (c === "replay") {
        const r = await replayMails(db, { ids: [mail.id], resendSent: form.get("resend_sent") === "1", actor: ctx.actor });
        return sendPage(res, 200, resultPage(ctx, "Replay", r, back));
      }
      if (c === "cancel") {
        const r = await cancelMails(db, { ids: [mail.id], actor: ctx.actor });
        return sendPage(res, 200, resultPage(ctx, "Cancel", r, back));
      }
      if (c === "resolve") {
        const resolution = form.get("resolution");
        let changed: boolean;
        if (resolution === "received") {
          const queueId = (form.get("queue_id") ?? "").trim();
          if (!/^[A-Za-z0-9._-]{1,100}$/.test(queueId)) throw new OptionsError("Give the MTA's queue id for this mail (letters, digits, . _ -), as its log shows it.");
          changed = await db.resolveUncertain(mail.id, ctx.actor, { kind: "received", queueId, at: new Date(), response: `marked handed over by ${ctx.actor} (queue id ${queueId})` });
        } else if (resolution === "absent") {
          changed = await db.resolveUncertain(mail.id, ctx.actor, { kind: "absent", response: `marked not handed over by ${ctx.actor}: sent again with the same Message-ID` });
        } else {
          throw new OptionsError('Expected resolution "received" or "absent".');
        }
        const message = changed
          ? resolution === "received"
            ? "Marked as handed over: the mail is sent."
            : "The mail is pending again and will be handed over with the same Message-ID."
          : "Nothing changed: the mail is no longer held (a relay or another operator settled it).";
        return sendPage(res, changed ? 200 : 409, resultPage(ctx, "Resolve", { message }, back));
      }
    }
    if ((a === "pause" || a === "resume") && seg.length === 1) {
      const back = `${ctx.prefix}/`;
      if (a === "pause") {
        const reason = (form.get("reason") ?? "").trim();
        const r = await pauseRelays(db, { by: ctx.actor, ...(reason !== "" ? { reason } : {}) });
        return sendPage(res, 200, resultPage(ctx, "Pause", { message: r.paused ? "Every relay pauses within one poll interval; hand-offs in flight finish." : "The relays were paused already." }, back));
      }
      // The scope exactly as listed (the store's key), lifted as it is.
      const scope = form.get("scope") ?? "";
      const resumed = (await db.listPauses()).some((p) => p.scope === scope) && (await db.removePause(scope));
      return sendPage(res, 200, resultPage(ctx, "Resume", { message: resumed ? `Resumed ${scope}.` : "It was not paused." }, back));
    }
    if (a === "bulk" && seg.length === 1) {
      const action = bulkAction(form.get("action"));
      const filter = parseFilter(form);
      const expected = Number(form.get("expected"));
      if (form.get("confirm") !== "1") throw new OptionsError("Tick the confirmation box to run a bulk action.");
      const ids = await matchingIds(db, filter);
      const preview = await bulkPreview(db, action, filter, ctx.actor, ids);
      if (preview.changing !== expected) {
        return sendPage(
          res,
          409,
          bulkConfirmPage(ctx, { ...preview, note: `The selection changed since the dry run: ${preview.changing} mails now instead of ${Number.isFinite(expected) ? expected : "?"}. Check again.` }),
        );
      }
      let result: ReplayResult | CancelResult;
      if (action === "replay") result = await replayMails(db, { ids, resendSent: form.get("resend_sent") === "1", actor: ctx.actor });
      else result = await cancelMails(db, { ids, actor: ctx.actor });
      const back = `${ctx.prefix}/mails?${new URLSearchParams(filterParams(filter)).toString()}`;
      return sendPage(res, 200, resultPage(ctx, action === "replay" ? "Replay by filter" : "Cancel by filter", result, back));
    }
    throw new HttpError(404, "There is no such action.");
  }

  async function matchingIds(db: Store, filter: ListFilter): Promise<string[]> {
    const ids: string[] = [];
    let before: Cursor | null = null;
    for (;;) {
      const rows: MailRecord[] = await db.listMailPage(pageQuery(filter, before, 1000));
      for (const r of rows) ids.push(r.id);
      if (ids.length > MAX_BULK) throw new OptionsError(`More than ${MAX_BULK} mails match: narrow the filter (status, time range, recipient) and act on them in parts.`);
      const last = rows.at(-1);
      if (rows.length < 1000 || last === undefined) return ids;
      before = { createdAt: last.createdAt, id: last.id };
    }
  }

  async function bulkPreview(db: Store, action: "replay" | "cancel", filter: ListFilter, actor: string, known?: string[]) {
    const ids = known ?? (await matchingIds(db, filter));
    const byStatus: Record<string, number> = {};
    let changing = 0;
    let skipped = 0;
    if (ids.length > 0) {
      if (action === "replay") {
        const r = await replayMails(db, { ids, dryRun: true, actor });
        for (const m of r.replayed) byStatus[m.from] = (byStatus[m.from] ?? 0) + 1;
        changing = r.replayed.length;
        skipped = r.skipped.length;
      } else {
        const r = await cancelMails(db, { ids, dryRun: true, actor });
        for (const m of r.cancelled) byStatus[m.from] = (byStatus[m.from] ?? 0) + 1;
        changing = r.cancelled.length;
        skipped = r.notCancellable.length + r.alreadyCancelled.length;
      }
    }
    return { action, filter, matched: ids.length, byStatus, changing, skipped, sent: action === "replay" ? (byStatus.sent ?? 0) : 0, limit: MAX_BULK, note: null };
  }

  return handler;
}

async function mailById(db: Store, id: string): Promise<MailRecord> {
  const found = await db.findMail({ id: id.toLowerCase() }, false);
  if (found === undefined) throw new HttpError(404, "No such mail.");
  return found.mail;
}

function requireActions(ctx: PageContext): void {
  if (!ctx.actions) throw new HttpError(403, "The dashboard is read-only: start it with --allow-actions (or readOnly: false) to replay, cancel or resolve mail.");
}

function bulkAction(value: string | null): "replay" | "cancel" {
  if (value === "replay" || value === "cancel") return value;
  throw new OptionsError('Expected action "replay" or "cancel".');
}

function checkAuth(auth: DashboardAuth | undefined): DashboardAuth {
  if (auth === undefined) return {};
  if (auth === null || typeof auth !== "object") throw new OptionsError("Expected `auth` to be { basic: { user, password } } or { bearer: token }.");
  if (auth.basic !== undefined) {
    const { user, password } = auth.basic;
    if (typeof user !== "string" || user === "" || user.includes(":") || typeof password !== "string" || password === "") {
      throw new OptionsError("Expected `auth.basic` to have a non-empty `user` (without ':') and a non-empty `password`.");
    }
  }
  if (auth.bearer !== undefined && (typeof auth.bearer !== "string" || auth.bearer.length < 16)) {
    throw new OptionsError("Expected `auth.bearer` to be a token of at least 16 characters.");
  }
  return auth;
}

/** Whether auth is configured at all. */
export function hasAuth(auth: DashboardAuth | undefined): boolean {
  return auth !== undefined && (auth.basic !== undefined || auth.bearer !== undefined);
}

function digest(s: string): Buffer {
  return createHash("sha256").update(s, "utf8").digest();
}

function safeEqual(a: string, b: string): boolean {
  return timingSafeEqual(digest(a), digest(b));
}

/** The user name (basic), "" (bearer or no auth configured), or null: refused. */
function authenticate(req: IncomingMessage, auth: DashboardAuth): string | null {
  if (auth.basic === undefined && auth.bearer === undefined) return "";
  const header = req.headers.authorization ?? "";
  const space = header.indexOf(" ");
  const scheme = header.slice(0, space).toLowerCase();
  const value = header.slice(space + 1).trim();
  if (auth.bearer !== undefined && scheme === "bearer" && safeEqual(value, auth.bearer)) return "";
  if (auth.basic !== undefined && scheme === "basic") {
    const decoded = Buffer.from(value, "base64").toString("utf8");
    const colon = decoded.indexOf(":");
    if (colon < 0) return null;
    const user = decoded.slice(0, colon);
    const okUser = safeEqual(user, auth.basic.user);
    const okPassword = safeEqual(decoded.slice(colon + 1), auth.basic.password);
    if (okUser && okPassword) return user;
  }
  return null;
}

function csrfToken(secret: Buffer, nonce: string): string {
  return createHmac("sha256", secret).update(nonce).digest("base64url");
}

function readCookie(req: IncomingMessage, name: string): string | null {
  for (const part of (req.headers.cookie ?? "").split(";")) {
    const eq = part.indexOf("=");
    if (eq > 0 && part.slice(0, eq).trim() === name) {
      const v = part.slice(eq + 1).trim();
      return /^[A-Za-z0-9_-]{16,64}$/.test(v) ? v : null;
    }
  }
  return null;
}

/**
 * A POST must come from a page of this host. Browsers send `Sec-Fetch-Site`: anything but
 * same-origin is refused. Under `Referrer-Policy: no-referrer` Chromium sends `Origin: null` even
 * for the dashboard's own forms, so "null" passes only with `Sec-Fetch-Site: same-origin` (a sandboxed
 * frame's opaque origin is cross-site); any other Origin must name this host.
 */
function checkOrigin(req: IncomingMessage): void {
  const site = req.headers["sec-fetch-site"];
  if (site !== undefined && site !== "same-origin") throw new HttpError(403, "The request comes from another site: actions are only taken from this dashboard's own pages.");
  const origin = req.headers.origin;
  if (origin === undefined || (origin === "null" && site === "same-origin")) return;
  let host: string | null = null;
  try {
    host = origin === "null" ? null : new URL(origin).host;
  } catch {
    host = null;
  }
  const forwarded = req.headers["x-forwarded-host"];
  const hosts = [req.headers.host, ...(typeof forwarded === "string" ? forwarded.split(",").map((h) => h.trim()) : [])];
  if (host === null || !hosts.includes(host)) throw new HttpError(403, "The request comes from another origin: actions are only taken from this dashboard's own pages.");
}

async function readForm(req: IncomingMessage): Promise<URLSearchParams> {
  const parsed = (req as { body?: unknown }).body;
  if (parsed !== undefined && parsed !== null && typeof parsed === "object" && !Buffer.isBuffer(parsed)) {
    // A framework parsed the body already (Express's urlencoded()).
    const out = new URLSearchParams();
    for (const [k, v] of Object.entries(parsed as Record<string, unknown>)) for (const x of Array.isArray(v) ? v : [v]) out.append(k, String(x));
    return out;
  }
  const type = (req.headers["content-type"] ?? "").split(";")[0]?.trim().toLowerCase();
  if (type !== "application/x-www-form-urlencoded") throw new HttpError(415, "Actions are posted as forms (application/x-www-form-urlencoded).");
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_BODY) throw new HttpError(413, "The form is too large.");
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString("utf8"));
}

function commonHeaders(res: ServerResponse, page: boolean): void {
  if (page) {
    res.setHeader("Content-Security-Policy", PAGE_CSP);
    res.setHeader("X-Frame-Options", "DENY");
  }
  res.setHeader("X-Content-Type-Options", "nosniff");
  res.setHeader("Referrer-Policy", "no-referrer");
  res.setHeader("Cross-Origin-Opener-Policy", "same-origin");
  res.setHeader("Cross-Origin-Resource-Policy", "same-origin");
  res.setHeader("Cache-Control", "no-store");
}

function send(res: ServerResponse, status: number, type: string, body: string, head = false): void {
  if (!res.hasHeader("Content-Security-Policy")) commonHeaders(res, true);
  else commonHeaders(res, false);
  res.statusCode = status;
  res.setHeader("Content-Type", type);
  res.setHeader("Content-Length", Buffer.byteLength(body));
  res.end(head ? undefined : body);
}

function sendPage(res: ServerResponse, status: number, body: string, head = false): void {
  send(res, status, "text/html; charset=utf-8", body, head);
}
