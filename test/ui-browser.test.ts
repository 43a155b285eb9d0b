/**
 * The dashboard in a real browser: playwright-core driving Debian's Chromium (/usr/bin/chromium,
 * headless). Each view loads on SQLite and PostgreSQL data; filter, page, open a mail, replay it with
 * the confirmation and see its status change; a hostile mail (script and event-handler payloads in
 * subject, display name, filename and HTML, remote loads to a local beacon) runs nothing (no dialog)
 * and loads nothing (the beacon receives no request, and no request leaves for another origin).
 *
 * MAIL_OUTBOX_SCREENSHOTS=1 also writes docs/screenshots/{overview,list,detail}.png (SQLite run).
 */
import assert from "node:assert/strict";
import { existsSync, mkdirSync } from "node:fs";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { describe, test, type TestContext } from "node:test";
import { openDatabase, type Db } from "../src/db.js";
import { serveDashboard } from "../src/ui/index.js";
import { freshPostgres, freshSqlite } from "./support/db.js";
import { needPostgres, needService } from "./support/services.js";
import { hostileMail, seedAttempt, seedMail, XSS } from "./support/ui-fixtures.js";

const CHROMIUM = process.env.MAIL_OUTBOX_CHROMIUM ?? "/usr/bin/chromium";
const SCREENSHOTS = process.env.MAIL_OUTBOX_SCREENSHOTS === "1";

function chromiumReason(): string | null {
  return existsSync(CHROMIUM) ? null : `${CHROMIUM} not found (apt-get install -y chromium; .ci/run does it)`;
}

async function beacon(t: TestContext): Promise<{ url: string; hits: string[]; connections: () => number }> {
  const hits: string[] = [];
  const server = createServer((req, res) => {
    hits.push(req.url ?? "");
    res.end();
  });
  let connections = 0;
  server.on("connection", () => (connections += 1));
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  t.after(() => {
    const closed = new Promise<void>((r) => server.close(() => r()));
    server.closeAllConnections();
    return closed;
  });
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/beacon`, hits, connections: () => connections };
}

/** A small, realistic outbox: sent, dead, pending and held mail with attempt logs, and the hostile mail. */
async function seed(db: Db, beaconUrl: string): Promise<{ hostile: string; replayMe: string }> {
  const now = Date.now();
  const customers = ["ann@example.com", "bob@example.org", "carol@example.net", "dave@example.com"];
  const subjects = ["Your receipt #", "Welcome aboard", "Password reset", "Weekly digest", "Your order has shipped"];
  for (let i = 0; i < 24; i++) {
    const status = i % 7 === 3 ? "dead" : i % 5 === 4 ? "pending" : "sent";
    const m = await seedMail(db, {
      status,
      to: [customers[i % customers.length]!],
      subject: `${subjects[i % subjects.length]}${subjects[i % subjects.length]!.endsWith("#") ? 1000 + i : ""}`,
      html: `<h1>Hello</h1><p>Mail number ${i}.</p>`,
      createdAt: new Date(now - (24 - i) * 170_000),
      metadata: { tenant: i % 2 === 0 ? "acme" : "globex" },
      attempts: status === "pending" ? 0 : 1,
    });
    if (status !== "pending") {
      await seedAttempt(db, m.id, {
        outcome: status === "sent" ? "accepted" : "permanent",
        startedAt: new Date(now - (24 - i) * 170_000 + 300),
        durationMs: 40 + ((i * 37) % 160),
        response: status === "sent" ? `250 2.0.0 Ok: queued as 4F${i}A` : "550 5.1.1 <x>: Recipient address rejected",
      });
    }
  }
  const held = await seedMail(db, { status: "held", uncertainHandoffs: 1, subject: "Invoice 2291", to: ["erin@example.com"], createdAt: new Date(now - 60_000) });
  await seedAttempt(db, held.id, { outcome: "transient", startedAt: new Date(now - 50_000), durationMs: 2100, response: "421 4.4.2 timeout" });
  const replayMe = await seedMail(db, { status: "dead", subject: "Replay me", to: ["frank@example.com"], createdAt: new Date(now - 30_000), attempts: 1, html: "<p>Hello Frank</p>", attachments: [{ filename: "invoice.pdf", content: "%PDF-1.4 ..." }] });
  await seedAttempt(db, replayMe.id, { outcome: "permanent", startedAt: new Date(now - 29_000), durationMs: 85, response: "554 5.7.1 Relay access denied" });
  const hostile = await seedMail(db, { ...hostileMail(beaconUrl), createdAt: new Date(now - 10_000) });
  return { hostile: hostile.id, replayMe: replayMe.id };
}

const databases: readonly { name: string; open: (t: TestContext) => Promise<Db | null> }[] = [
  {
    name: "SQLite",
    open: async (t) => {
      const fx = await freshSqlite(t);
      const db = await openDatabase(fx.url);
      t.after(() => db.close());
      return db;
    },
  },
  {
    name: "PostgreSQL",
    open: async (t) => {
      if (!(await needPostgres(t))) return null;
      const fx = await freshPostgres(t);
      const db = await openDatabase(fx.url);
      t.after(() => db.close());
      return db;
    },
  },
];

describe("dashboard in Chromium", () => {
  for (const d of databases) {
    test(`on ${d.name}: views, filter, page, open, replay with confirmation; hostile mail runs and loads nothing`, async (t) => {
      if (!needService(t, "Chromium", chromiumReason())) return;
      const db = await d.open(t);
      if (db === null) return;
      const trap = await beacon(t);
      const ids = await seed(db, trap.url);
      const ui = await serveDashboard({ db, port: 0, readOnly: false, pageSize: 10 });

      const { chromium } = await import("playwright-core");
      const browser = await chromium.launch({
        executablePath: CHROMIUM,
        headless: true,
        args: process.getuid?.() === 0 ? ["--no-sandbox"] : [],
      });
      // Closed before the dashboard's server (hooks run in order): its spare connections would hold the server's close.
      t.after(async () => {
        await browser.close();
        await ui.close();
      });
      const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
      const page = await context.newPage();
      const dialogs: string[] = [];
      const foreign: string[] = [];
      const violations: string[] = [];
      page.on("dialog", (dlg) => {
        dialogs.push(dlg.message());
        void dlg.dismiss();
      });
      // Chromium reports the loads the CSP blocks as requests that failed: only a response means something left.
      const blocked: string[] = [];
      context.on("response", (r) => {
        if (!r.url().startsWith(ui.url) && !r.url().startsWith("data:")) foreign.push(r.url());
      });
      context.on("requestfailed", (req) => {
        if (!req.url().startsWith(ui.url)) blocked.push(`${req.url()} ${req.failure()?.errorText ?? ""}`);
      });
      page.on("console", (msg) => {
        if (/Content Security Policy/i.test(msg.text())) violations.push(msg.text());
      });

      // Overview
      await page.goto(`${ui.url}/`);
      assert.equal(await page.textContent("h1"), "Overview");
      assert.ok((await page.locator("figure.chart svg").count()) >= 4, "four charts");
      assert.match((await page.textContent("figure.chart figcaption")) ?? "", /handed over/);
      if (SCREENSHOTS && d.name === "SQLite") await shot(page, "overview");

      // List, paging, filter
      await page.click("header.top >> text=Mails");
      const firstPage = await page.locator("tbody tr").count();
      assert.equal(firstPage, 10);
      const firstIds = await page.locator("tbody tr td:nth-child(5) a").evaluateAll((as) => as.map((a) => a.getAttribute("href")));
      if (SCREENSHOTS && d.name === "SQLite") await shot(page, "list");
      await page.click("text=Older »");
      const secondIds = await page.locator("tbody tr td:nth-child(5) a").evaluateAll((as) => as.map((a) => a.getAttribute("href")));
      assert.equal(secondIds.length, 10);
      assert.equal(secondIds.filter((h) => firstIds.includes(h)).length, 0, "the second page has no mail of the first");
      await page.fill("input[name=recipient]", "FRANK@example.com");
      await page.click("button:has-text('Filter')");
      assert.deepEqual(await page.locator("tbody tr td:nth-child(5)").allTextContents(), ["Replay me"]);

      // Hostile mail: its subject shows as text, nothing runs, nothing loads.
      await page.goto(`${ui.url}/mails?status=dead`);
      await page.click(`a[href$="/mails/${ids.hostile}"]`);
      await page.waitForLoadState("load");
      const h1 = (await page.textContent("h1")) ?? "";
      assert.ok(h1.startsWith(XSS), "the subject is shown as text");
      assert.ok(((await page.textContent("body")) ?? "").includes(`${XSS}.txt`), "the filename is shown as text");
      const preview = page.frameLocator("iframe.preview");
      assert.equal(await preview.locator("p").first().textContent(), "hi", "the preview renders the HTML");
      // Opened on its own, the preview is still sandboxed by its CSP.
      const direct = await context.newPage();
      direct.on("dialog", (dlg) => {
        dialogs.push(dlg.message());
        void dlg.dismiss();
      });
      await direct.goto(`${ui.url}/mails/${ids.hostile}/preview`);
      await direct.waitForLoadState("load");
      await direct.close();

      // Replay with confirmation
      await page.goto(`${ui.url}/mails/${ids.replayMe}`);
      assert.equal(await page.textContent("span.badge"), "dead");
      assert.match((await page.textContent("body")) ?? "", /554 5\.7\.1 Relay access denied/);
      assert.match((await page.textContent("body")) ?? "", /invoice\.pdf/);
      assert.equal(await page.frameLocator("iframe.preview").locator("p").textContent(), "Hello Frank");
      if (SCREENSHOTS && d.name === "SQLite") await shot(page, "detail");
      await page.click("text=Replay…");
      assert.equal(await page.textContent("h1"), "Replay this mail?");
      await page.click("button:has-text('Replay it')");
      assert.match((await page.textContent("main")) ?? "", /Replayed 1 mail/);
      await page.click("text=Back");
      assert.equal(await page.textContent("span.badge"), "pending");
      assert.match((await page.textContent("body")) ?? "", /replayed from dead by ui/);
      assert.equal((await db.findMail({ id: ids.replayMe }, false))?.mail.status, "pending");

      // Reading works with JavaScript disabled.
      const noJs = await browser.newContext({ javaScriptEnabled: false });
      const plain = await noJs.newPage();
      await plain.goto(`${ui.url}/mails?subject=receipt`);
      assert.ok((await plain.locator("tbody tr").count()) > 0);
      await noJs.close();

      assert.deepEqual(dialogs, [], "no script ran");
      assert.deepEqual(trap.hits, [], "the beacon received nothing");
      assert.equal(trap.connections(), 0, "not even a connection was opened to the beacon");
      assert.deepEqual(foreign, [], "no request left for another origin");
      assert.ok(blocked.some((b) => b.includes("/beacon/img")), "the remote image was attempted and blocked");
      for (const b of blocked) assert.match(b, / (csp|net::ERR_BLOCKED_BY_(CSP|CLIENT|RESPONSE)|net::ERR_ABORTED)$/, b);
      assert.ok(violations.length > 0, "the CSP blocked the payloads (reported on the console)");
    });
  }
});

async function shot(page: import("playwright-core").Page, name: string): Promise<void> {
  const dir = new URL("../docs/screenshots/", import.meta.url);
  mkdirSync(dir, { recursive: true });
  // A tall viewport rather than fullPage: Chromium leaves the sandboxed (out-of-process) preview frame blank in full-page captures.
  const height = name === "list" ? 900 : Number(await page.evaluate("document.documentElement.scrollHeight"));
  await page.setViewportSize({ width: 1280, height });
  if (name === "detail") await page.frameLocator("iframe.preview").locator("body").waitFor();
  await page.screenshot({ path: new URL(`${name}.png`, dir).pathname });
  await page.setViewportSize({ width: 1280, height: 900 });
}
