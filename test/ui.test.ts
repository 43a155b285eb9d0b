/**
 * The dashboard over HTTP, without a browser: escaping of hostile mail, the security headers,
 * CSRF and origin checks, read-only mode, authentication, the loopback refusal, keyset pagination
 * and filters, single and bulk actions with their attempt-log lines. On SQLite and PostgreSQL.
 */
import assert from "node:assert/strict";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { describe, test, type TestContext } from "node:test";
import { main } from "../src/cli/main.js";
import { openDatabase, type Db } from "../src/db.js";
import { OptionsError } from "../src/errors.js";
import { createDashboardHandler, PAGE_CSP, PREVIEW_CSP, serveDashboard, type DashboardServer, type ServeDashboardOptions } from "../src/ui/index.js";
import { escapeHtml, html, raw } from "../src/ui/html.js";
import { freshMysql, freshPostgres, freshSqlite } from "./support/db.js";
import { needMysql, needPostgres } from "./support/services.js";
import { hostileMail, seedAttempt, seedMail, XSS } from "./support/ui-fixtures.js";

describe("html template", () => {
  test("every interpolation is escaped; raw() and nested html pass as they are", () => {
    const evil = `<script>alert("x")</script>&'\``;
    assert.equal(html`<p title="${evil}">${evil}</p>`.value, `<p title="&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#39;&#96;">&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#39;&#96;</p>`);
    assert.equal(html`<ul>${["<a>", html`<li>${"<b>"}</li>`]}</ul>`.value, "<ul>&lt;a&gt;<li>&lt;b&gt;</li></ul>");
    assert.equal(html`${raw("<svg></svg>")}`.value, "<svg></svg>");
    assert.equal(html`${null}${undefined}${false}${0}`.value, "0");
    assert.equal(html`${{ toString: () => "<x>" }}`.value, "&lt;x&gt;");
    assert.equal(escapeHtml(`"'<>&`), "&quot;&#39;&lt;&gt;&amp;");
  });
});

interface Fx {
  readonly url: string;
  readonly db: Db;
}

const databases: readonly { name: string; open: (t: TestContext) => Promise<Fx | null> }[] = [
  {
    name: "SQLite",
    open: async (t) => {
      const fx = await freshSqlite(t);
      const db = await openDatabase(fx.url);
      t.after(() => db.close());
      return { url: fx.url, db };
    },
  },
  {
    name: "PostgreSQL",
    open: async (t) => {
      if (!(await needPostgres(t))) return null;
      const fx = await freshPostgres(t);
      const db = await openDatabase(fx.url);
      t.after(() => db.close());
      return { url: fx.url, db };
    },
  },
  {
    name: "MariaDB",
    open: async (t) => {
      if (!(await needMysql(t))) return null;
      const fx = await freshMysql(t);
      const db = await openDatabase(fx.url);
      t.after(() => db.close());
      return { url: fx.url, db };
    },
  },
];

async function serve(t: TestContext, options: ServeDashboardOptions): Promise<DashboardServer> {
  const ui = await serveDashboard({ port: 0, ...options });
  t.after(() => ui.close());
  return ui;
}

/** A browser-like session: keeps the CSRF cookie, reads the form token from the last page. */
class Session {
  cookie = "";
  constructor(
    readonly base: string,
    readonly headers: Record<string, string> = {},
  ) {}
  async get(path: string): Promise<{ status: number; text: string; headers: Headers }> {
    const r = await fetch(this.base + path, { headers: { ...this.headers, ...(this.cookie ? { cookie: this.cookie } : {}) }, redirect: "manual" });
    const set = r.headers.get("set-cookie");
    if (set !== null) this.cookie = set.split(";")[0] ?? "";
    return { status: r.status, text: await r.text(), headers: r.headers };
  }
  async post(path: string, form: Record<string, string>, extra: Record<string, string> = {}): Promise<{ status: number; text: string }> {
    const r = await fetch(this.base + path, {
      method: "POST",
      headers: { ...this.headers, "content-type": "application/x-www-form-urlencoded", ...(this.cookie ? { cookie: this.cookie } : {}), ...extra },
      body: new URLSearchParams(form).toString(),
      redirect: "manual",
    });
    return { status: r.status, text: await r.text() };
  }
}

function token(page: string): string {
  const m = /name="csrf" value="([^"]+)"/.exec(page);
  assert.ok(m?.[1], "the page has a CSRF field");
  return m[1];
}

function listedIds(page: string): string[] {
  return [...page.matchAll(/href="[^"]*\/mails\/([0-9a-f-]{36})"/g)].map((m) => m[1]!);
}

async function statusOf(db: Db, id: string): Promise<string> {
  return (await db.findMail({ id }, false))!.mail.status;
}

for (const d of databases) {
  describe(`dashboard on ${d.name}`, () => {
    test("hostile subject, display name, filename and metadata are escaped on every page; the preview is sandboxed under its own CSP", async (t) => {
      const fx = await d.open(t);
      if (fx === null) return;
      const { id } = await seedMail(fx.db, hostileMail("http://127.0.0.1:9/beacon"));
      const ui = await serve(t, { db: fx.db });
      const s = new Session(ui.url);
      for (const path of ["/", "/mails", `/mails/${id}`, `/mails?subject=${encodeURIComponent("<script>")}`, `/mails?recipient=${encodeURIComponent(XSS)}`]) {
        const r = await s.get(path);
        assert.equal(r.status, 200, path);
        assert.equal(r.headers.get("content-security-policy"), PAGE_CSP, path);
        assert.equal(r.headers.get("x-content-type-options"), "nosniff");
        assert.equal(r.headers.get("referrer-policy"), "no-referrer");
        assert.equal(r.headers.get("x-frame-options"), "DENY");
        assert.doesNotMatch(r.text, /<script|<img|<link(?! rel="stylesheet" href="[^"]*\/style\.css")/i, `${path} carries no live markup from the mail`);
      }
      const detail = (await s.get(`/mails/${id}`)).text;
      assert.match(detail, /&lt;script&gt;alert\(1\)&lt;\/script&gt;&lt;img src=x onerror=alert\(1\)&gt;\.txt/, "the filename is shown, escaped");
      assert.match(detail, /<iframe class="preview" sandbox=""/);
      assert.match(detail, /Evil &lt;script&gt;/, "the From header's display name is shown, escaped");
      const preview = await s.get(`/mails/${id}/preview`);
      assert.equal(preview.headers.get("content-security-policy"), PREVIEW_CSP);
      assert.match(PREVIEW_CSP, /default-src 'none'/);
      assert.doesNotMatch(preview.text, /<meta[^>]*\shttp-equiv/i, "meta refresh is disarmed");
      assert.doesNotMatch(preview.text, /<iframe|<link/i, "nested frames and links are inert");
    });

    test("read-only by default: action pages and POSTs are refused with 403 and nothing changes", async (t) => {
      const fx = await d.open(t);
      if (fx === null) return;
      const { id } = await seedMail(fx.db, { status: "dead" });
      const ui = await serve(t, { db: fx.db });
      const s = new Session(ui.url);
      const detail = await s.get(`/mails/${id}`);
      assert.doesNotMatch(detail.text, /Replay…/);
      assert.equal((await s.get(`/mails/${id}/replay`)).status, 403);
      assert.equal((await s.get(`/bulk?action=replay&status=dead`)).status, 403);
      const r = await s.post(`/mails/${id}/replay`, { csrf: "x" });
      assert.equal(r.status, 403);
      assert.match(r.text, /read-only/);
      assert.equal(await statusOf(fx.db, id), "dead");
    });

    test("an action without the CSRF token, with a wrong one, or from another origin is refused; with it the mail is replayed and logged with the actor", async (t) => {
      const fx = await d.open(t);
      if (fx === null) return;
      const { id } = await seedMail(fx.db, { status: "dead" });
      const ui = await serve(t, { db: fx.db, readOnly: false });
      const s = new Session(ui.url);
      const confirm = await s.get(`/mails/${id}/replay`);
      assert.equal(confirm.status, 200);
      const csrf = token(confirm.text);
      assert.equal((await s.post(`/mails/${id}/replay`, {})).status, 403, "no token");
      assert.equal((await s.post(`/mails/${id}/replay`, { csrf: `${csrf}x` })).status, 403, "wrong token");
      const stranger = new Session(ui.url);
      assert.equal((await stranger.post(`/mails/${id}/replay`, { csrf })).status, 403, "token without its cookie");
      assert.equal((await s.post(`/mails/${id}/replay`, { csrf }, { origin: "http://evil.example" })).status, 403, "cross-origin");
      assert.equal((await s.post(`/mails/${id}/replay`, { csrf }, { origin: "null" })).status, 403, "opaque origin (a sandboxed frame)");
      assert.equal(await statusOf(fx.db, id), "dead");
      const ok = await s.post(`/mails/${id}/replay`, { csrf }, { origin: ui.url });
      assert.equal(ok.status, 200, ok.text);
      assert.match(ok.text, /Replayed 1 mail/);
      assert.equal(await statusOf(fx.db, id), "pending");
      const log = await fx.db.listAttempts(id);
      assert.deepEqual(log.map((a) => [a.outcome, a.relay]), [["replayed", "ui"]]);
    });

    test("replaying a sent mail needs the explicit resend confirmation", async (t) => {
      const fx = await d.open(t);
      if (fx === null) return;
      const { id } = await seedMail(fx.db, { status: "sent" });
      const ui = await serve(t, { db: fx.db, readOnly: false });
      const s = new Session(ui.url);
      const csrf = token((await s.get(`/mails/${id}/replay`)).text);
      const refused = await s.post(`/mails/${id}/replay`, { csrf });
      assert.equal(refused.status, 409);
      assert.equal(await statusOf(fx.db, id), "sent");
      assert.equal((await s.post(`/mails/${id}/replay`, { csrf, resend_sent: "1" })).status, 200);
      assert.equal(await statusOf(fx.db, id), "pending");
    });

    test("cancel and resolving an uncertain held mail are recorded with the basic-auth user", async (t) => {
      const fx = await d.open(t);
      if (fx === null) return;
      const pending = await seedMail(fx.db, { status: "pending" });
      const held = await seedMail(fx.db, { status: "held", uncertainHandoffs: 1 });
      const auth = { basic: { user: "ops", password: "correct horse" } };
      const ui = await serve(t, { db: fx.db, readOnly: false, auth });
      assert.equal((await new Session(ui.url).get("/")).status, 401);
      assert.equal((await new Session(ui.url, { authorization: `Basic ${Buffer.from("ops:wrong").toString("base64")}` }).get("/")).status, 401);
      const s = new Session(ui.url, { authorization: `Basic ${Buffer.from("ops:correct horse").toString("base64")}` });
      const csrf = token((await s.get(`/mails/${pending.id}/cancel`)).text);
      assert.equal((await s.post(`/mails/${pending.id}/cancel`, { csrf })).status, 200);
      assert.equal(await statusOf(fx.db, pending.id), "cancelled");
      assert.deepEqual((await fx.db.listAttempts(pending.id)).map((a) => [a.outcome, a.relay]), [["cancelled", "ui:ops"]]);
      const page = await s.get(`/mails/${held.id}/resolve`);
      assert.equal(page.status, 200);
      assert.equal((await s.post(`/mails/${held.id}/resolve`, { csrf, resolution: "received", queue_id: "4XyZ1" })).status, 200);
      const after = (await fx.db.findMail({ id: held.id }, false))!.mail;
      assert.equal(after.status, "sent");
      assert.equal(after.mtaQueueId, "4XyZ1");
      assert.deepEqual((await fx.db.listAttempts(held.id)).map((a) => [a.outcome, a.relay]), [["verified", "ui:ops"]]);
    });

    test("keyset pagination is stable: every mail once, in order, even with equal created_at and mail added meanwhile", async (t) => {
      const fx = await d.open(t);
      if (fx === null) return;
      const at = new Date("2030-01-01T00:00:00.000Z");
      const seeded: string[] = [];
      for (let i = 0; i < 23; i++) seeded.push((await seedMail(fx.db, { createdAt: new Date(at.getTime() + (i % 3 === 0 ? 0 : i * 1000)) })).id);
      const handler = createDashboardHandler({ db: fx.db, pageSize: 10 });
      const server = createServer((req, res) => handler(req, res));
      await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
      t.after(() => new Promise<void>((r) => server.close(() => r())));
      const s = new Session(`http://127.0.0.1:${(server.address() as AddressInfo).port}`);
      const seen: string[] = [];
      let path: string | null = "/mails";
      let pages = 0;
      while (path !== null) {
        const page = await s.get(path);
        assert.equal(page.status, 200);
        seen.push(...listedIds(page.text));
        if (pages === 0) await seedMail(fx.db, { createdAt: new Date(at.getTime() + 999_999) }); // newer than all: must not shift later pages
        pages += 1;
        const next = /<a rel="next" href="([^"]+)"/.exec(page.text);
        path = next ? next[1]!.replace(/&amp;/g, "&") : null;
      }
      assert.equal(pages, 3);
      assert.equal(new Set(seen).size, seen.length, "no mail twice");
      assert.deepEqual(new Set(seen), new Set(seeded), "every mail once");
      const rows = await fx.db.listMails({ byIds: false, ids: [], messageIds: [], statuses: null, recipient: null, since: null, until: new Date("2030-02-01T00:00:00Z"), uncertainOnly: false, fate: null }, 100);
      assert.deepEqual(seen, rows.map((r) => r.id).filter((id) => seeded.includes(id)), "newest first, ties by id, as `list` orders them");
      assert.equal((await s.get("/mails?before=nonsense")).status, 400);
      const one = await seedMail(fx.db, {});
      const m = (await fx.db.findMail({ id: one.id }, false))!.mail;
      const found = await s.get(`/find?q=${encodeURIComponent(m.messageId.slice(1, -1))}`);
      assert.equal(found.status, 303);
      assert.equal(found.headers.get("location"), `/mails/${one.id}`);
      assert.equal((await s.get(`/find?q=${encodeURIComponent("<nobody@example.com>")}`)).status, 404);
      assert.equal((await s.get(`/find?q=${encodeURIComponent(XSS)}`)).status, 400);
    });

    test("filters: status, recipient (any case), subject, metadata, uncertain, partial, time range; bad input is a 400 page", async (t) => {
      const fx = await d.open(t);
      if (fx === null) return;
      const a = await seedMail(fx.db, { status: "dead", to: ["Ann@Example.com"], subject: "Invoice 42", metadata: { tenant: "acme", n: 3 } });
      const b = await seedMail(fx.db, { status: "sent", to: ["bob@example.com"], subject: "Welcome", rejected: [{ recipient: "x@example.com", response: "550 no" }], accepted: ["bob@example.com"] });
      const c = await seedMail(fx.db, { status: "held", uncertainHandoffs: 1, subject: "Reset", to: ["carol@example.com"], createdAt: new Date("2020-01-01T00:00:00Z") });
      const ui = await serve(t, { db: fx.db });
      const s = new Session(ui.url);
      const ids = async (q: string) => listedIds((await s.get(`/mails?${q}`)).text).sort();
      assert.deepEqual(await ids("status=dead"), [a.id]);
      assert.deepEqual(await ids("status=dead&status=sent"), [a.id, b.id].sort());
      assert.deepEqual(await ids("recipient=ann%40example.COM"), [a.id]);
      assert.deepEqual(await ids("subject=invoice"), [a.id]);
      assert.deepEqual(await ids("meta=tenant%3Dacme"), [a.id]);
      assert.deepEqual(await ids("meta=n%3D3"), [a.id]);
      assert.deepEqual(await ids("uncertain=1"), [c.id]);
      assert.deepEqual(await ids("partial=1"), [b.id]);
      assert.deepEqual(await ids("until=2021-01-01"), [c.id]);
      assert.deepEqual(await ids("since=2021-01-01T00:00"), [a.id, b.id].sort());
      assert.equal((await s.get("/mails?status=nope")).status, 400);
      assert.equal((await s.get("/mails?meta=no-equals-sign")).status, 400);
      assert.equal((await s.get("/mails?since=yesterday")).status, 400);
    });

    test("bulk replay by filter: a dry-run count, then an explicit confirmation; a changed selection asks again", async (t) => {
      const fx = await d.open(t);
      if (fx === null) return;
      const dead = [await seedMail(fx.db, { status: "dead", subject: "bulk" }), await seedMail(fx.db, { status: "dead", subject: "bulk" })];
      const other = await seedMail(fx.db, { status: "dead", subject: "other" });
      const ui = await serve(t, { db: fx.db, readOnly: false });
      const s = new Session(ui.url);
      const dry = await s.get("/bulk?action=replay&subject=bulk");
      assert.equal(dry.status, 200);
      assert.match(dry.text, /<strong>2<\/strong> mails match; <strong>2<\/strong> would be replayed \(2 dead\)/);
      const csrf = token(dry.text);
      assert.equal((await s.post("/bulk", { csrf, action: "replay", subject: "bulk", expected: "2" })).status, 400, "without the confirmation box");
      await seedMail(fx.db, { status: "dead", subject: "bulk" });
      const changed = await s.post("/bulk", { csrf, action: "replay", subject: "bulk", expected: "2", confirm: "1" });
      assert.equal(changed.status, 409);
      assert.match(changed.text, /selection changed/);
      const done = await s.post("/bulk", { csrf, action: "replay", subject: "bulk", expected: "3", confirm: "1" });
      assert.equal(done.status, 200, done.text);
      assert.match(done.text, /Replayed 3 mails/);
      for (const m of dead) assert.equal(await statusOf(fx.db, m.id), "pending");
      assert.equal(await statusOf(fx.db, other.id), "dead");
      assert.equal((await fx.db.listAttempts(dead[0]!.id))[0]?.relay, "ui");
    });

    test("pause and resume every relay from the overview, recorded with the actor", async (t) => {
      const fx = await d.open(t);
      if (fx === null) return;
      const ui = await serve(t, { db: fx.db, readOnly: false });
      const s = new Session(ui.url);
      const csrf = token((await s.get("/")).text);
      assert.equal((await s.post("/pause", { reason: "MTA maintenance" })).status, 403, "no token");
      assert.equal((await s.post("/pause", { csrf, reason: "MTA maintenance" })).status, 200);
      assert.deepEqual((await fx.db.listPauses()).map((p) => [p.scope, p.pausedBy, p.reason]), [["all", "ui", "MTA maintenance"]]);
      assert.match((await s.get("/")).text, /MTA maintenance/);
      assert.equal((await s.post("/resume", { csrf, scope: "all" })).status, 200);
      assert.deepEqual(await fx.db.listPauses(), []);
    });

    test("overview: counts and hand-off charts from the attempt log", async (t) => {
      const fx = await d.open(t);
      if (fx === null) return;
      const m = await seedMail(fx.db, { status: "sent" });
      await seedAttempt(fx.db, m.id, { outcome: "transient", startedAt: new Date(Date.now() - 5 * 60_000), durationMs: 900, attempt: 1 });
      await seedAttempt(fx.db, m.id, { outcome: "accepted", startedAt: new Date(Date.now() - 2 * 60_000), durationMs: 100, attempt: 2 });
      const ui = await serve(t, { db: fx.db });
      const page = (await new Session(ui.url).get("/")).text;
      assert.match(page, /Last hour, per minute: 1 handed over, 1 failed/);
      assert.match(page, /Last 24 hours, per hour: 1 handed over, 1 failed/);
      assert.match(page, /Hand-off duration, last hour: mean 500 ms, longest 900 ms/);
      assert.match(page, /<svg /);
    });
  });
}

describe("mounting and refusals", () => {
  test("under a base path on plain http: links carry it, other paths go to next()", async (t) => {
    const fx = await freshSqlite(t);
    const handler = createDashboardHandler({ databaseUrl: fx.url, basePath: "/outbox" });
    t.after(() => handler.close());
    const server = createServer((req, res) =>
      handler(req, res, () => {
        res.statusCode = 418;
        res.end("app");
      }),
    );
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    t.after(() => new Promise<void>((r) => server.close(() => r())));
    const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    const r = await fetch(`${base}/outbox/`);
    assert.equal(r.status, 200);
    const text = await r.text();
    assert.match(text, /href="\/outbox\/mails"/);
    assert.match(text, /href="\/outbox\/style.css"/);
    assert.equal((await fetch(`${base}/elsewhere`)).status, 418);
    assert.equal((await fetch(`${base}/outbox/style.css`)).headers.get("content-type"), "text/css; charset=utf-8");
  });

  test("Express-style mounting (req.baseUrl set, req.url stripped) links under the mount point", async (t) => {
    const fx = await freshSqlite(t);
    const handler = createDashboardHandler({ databaseUrl: fx.url });
    t.after(() => handler.close());
    const server = createServer((req, res) => {
      Object.assign(req, { baseUrl: "/admin/outbox", url: req.url!.slice("/admin/outbox".length) || "/" });
      handler(req, res);
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    t.after(() => new Promise<void>((r) => server.close(() => r())));
    const text = await (await fetch(`http://127.0.0.1:${(server.address() as AddressInfo).port}/admin/outbox/mails`)).text();
    assert.match(text, /action="\/admin\/outbox\/mails"/);
  });

  test("no password in any page: the database URL is shown redacted", async (t) => {
    if (!(await needPostgres(t))) return;
    const fx = await freshPostgres(t);
    const u = new URL(fx.url);
    u.password = "s3cret-pass";
    const db = await openDatabase(u.toString());
    t.after(() => db.close());
    await seedMail(db, {});
    const ui = await serve(t, { db });
    for (const path of ["/", "/mails"]) {
      const text = (await new Session(ui.url).get(path)).text;
      assert.doesNotMatch(text, /s3cret-pass/);
      assert.match(text, /:\*\*\*@/);
    }
  });

  test("listening beyond loopback without credentials is refused (library and CLI, exit 2)", async (t) => {
    const fx = await freshSqlite(t);
    await assert.rejects(serveDashboard({ databaseUrl: fx.url, host: "0.0.0.0", port: 0 }), (e: unknown) => e instanceof OptionsError && /Refusing to serve the dashboard on 0\.0\.0\.0 without authentication/.test(e.message));
    let err = "";
    const code = await main(["ui", "--host", "0.0.0.0", "--port", "0"], {
      stdout: { write: () => true },
      stderr: { write: (s: string | Uint8Array) => ((err += String(s)), true) },
      env: { DATABASE_URL: fx.url },
    });
    assert.equal(code, 2);
    assert.match(err, /Refusing to serve the dashboard on 0\.0\.0\.0 without authentication: set MAIL_OUTBOX_UI_USER and MAIL_OUTBOX_UI_PASSWORD/);
    assert.throws(() => createDashboardHandler({ databaseUrl: fx.url, auth: { bearer: "short" } }), OptionsError);
  });

  test("the CLI serves until SIGTERM, read-only, with the URL on stdout", async (t) => {
    const fx = await freshSqlite(t);
    const listeners = new Set<() => void>();
    let out = "";
    let resolveUrl: (u: string) => void = () => {};
    const url = new Promise<string>((r) => (resolveUrl = r));
    const run = main(["ui", "--port", "0"], {
      stdout: {
        write: (s: string | Uint8Array) => {
          out += String(s);
          const m = /serving (\S+)\//.exec(out);
          if (m?.[1]) resolveUrl(m[1]);
          return true;
        },
      },
      stderr: { write: () => true },
      env: { DATABASE_URL: fx.url },
      signals: { on: (_e, l) => listeners.add(l), off: (_e, l) => listeners.delete(l) },
    });
    const base = await url;
    assert.match(out, /read-only/);
    assert.equal((await fetch(`${base}/mails`)).status, 200);
    for (const l of [...listeners]) l();
    assert.equal(await run, 0);
  });
});
