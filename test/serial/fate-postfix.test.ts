/**
 * Delivery fates against the real Postfix (scripts/install-postfix.sh): a real outbox
 * (PostgreSQL, and SQLite) hands a mix of mails to Postfix through each transport, Postfix really
 * delivers, defers, bounces and expires them (local users, and four SMTP servers on loopback routed
 * by the port in their domain: test/support/postfix-fate.ts), and what the outbox records from each
 * source must equal what Postfix logged, read independently of src/fate/ (the oracle):
 *
 * - `follow-log` (source `log`): per recipient the same fate, second and DSN code as the log, every
 *   status line exactly once, across a restart and a real `postfix logrotate`;
 * - `ingest` of the DSNs Postfix sent to the bounce Maildir (source `dsn`): every bounced and
 *   expired recipient, the delivered ones when NOTIFY=SUCCESS was asked, nothing else; the same
 *   reports twice record nothing more; a real bounce carrying a forged token is refused;
 * - suppression after a real hard bounce: `refuse` throws, `skip` leaves the address out.
 *
 * Takes about 30 s, most of it waiting for Postfix to give up on the expiring mail (its queue
 * lifetime is 15 s here). Needs root (it rotates Postfix's log and reads the bounce Maildir).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtempSync, readFileSync, renameSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { createRelay, mailOutbox, openDatabase } from "../../src/index.js";
import type { Db } from "../../src/db.js";
import { followLog } from "../../src/fate/follow-log.js";
import { ingestMaildir, ingestReport } from "../../src/fate/ingest.js";
import { ForgedReportError, SuppressedRecipientError } from "../../src/errors.js";
import { signToken } from "../../src/fate/token.js";
import { freshPostgres, freshSqlite, prismaClientFor } from "../support/db.js";
import { needPostfix, needPostgres, needService, POSTFIX_SENDMAIL } from "../support/services.js";
import { POSTFIX_LOG } from "../support/postfix.js";
import {
  BOUNCE_ADDRESS,
  PostfixLogTail,
  collectReports,
  compareDsnFates,
  compareLogFates,
  fateKey,
  fateSetupReason,
  keepFlushing,
  postfixCommand,
  readPostfixFates,
  settled,
  startFateDomains,
  type ExpectedMail,
  type FateDomains,
  type LoggedFate,
  type RecordedFateEvent,
} from "../support/postfix-fate.js";

const SECRET = "fate-test-secret-0123456789abcdef";
const TRANSPORTS = ["smtp://127.0.0.1:25", "sendmail:", "sendmail-bs:"] as const;

interface PlannedMail {
  readonly name: string;
  readonly to: readonly string[];
  /** What Postfix should do with each recipient (the setup's promise; the oracle checks it). */
  readonly intended: Readonly<Record<string, LoggedFate>>;
}

/** One mail per kind of destination, and one with four recipients of four fates. */
function mix(d: FateDomains, label: string, transport: string): PlannedMail[] {
  const refusedAtRcpt = transport.startsWith("smtp:");
  const one = (name: string, to: string, fate: LoggedFate): PlannedMail => ({ name, to: [to], intended: { [to]: fate } });
  const unknown = `nobody-${d.tag}-${label}@localhost`;
  const known = `outbox-test+${d.tag}-${label}-u@localhost`;
  return [
    one("local", `outbox-test+${d.tag}-${label}@localhost`, "delivered"),
    // An unknown local user: Postfix's smtpd refuses it at RCPT (the hand-off's rejected list, no
    // fate); `sendmail` and `sendmail -bs` (seen here: its stand-alone smtpd takes it) hand it to
    // pickup, and local(8) bounces it.
    { name: "local+unknown", to: [known, unknown], intended: refusedAtRcpt ? { [known]: "delivered" } : { [known]: "delivered", [unknown]: "bounced" } },
    one("delivered", d.address("delivered", `ann-${label}`), "delivered"),
    one("deferred", d.address("deferred", `bob-${label}`), "delivered"),
    one("bounced", d.address("bounced", `cy-${label}`), "bounced"),
    one("expired", d.address("expired", `dee-${label}`), "expired"),
    {
      name: "four fates",
      to: [d.address("delivered", `eve-${label}`), d.address("bounced", `fay-${label}`), d.address("expired", `gus-${label}`), d.address("deferred", `hal-${label}`)],
      intended: {
        [d.address("delivered", `eve-${label}`)]: "delivered",
        [d.address("bounced", `fay-${label}`)]: "bounced",
        [d.address("expired", `gus-${label}`)]: "expired",
        [d.address("deferred", `hal-${label}`)]: "delivered",
      },
    },
  ];
}

interface Outbox {
  readonly label: string;
  readonly url: string;
  readonly store: Db;
  readonly prisma: any;
  /** Handed-over mails with their recipients Postfix decides on (not refused at RCPT). */
  readonly mails: (ExpectedMail & { readonly id: string; readonly planned: PlannedMail; readonly transport: string })[];
  readonly secret: string | null;
  readonly success: boolean;
}

/** The events a store recorded for these mails, with their Message-IDs. */
async function recorded(o: Outbox): Promise<RecordedFateEvent[]> {
  const out: RecordedFateEvent[] = [];
  for (const m of o.mails) for (const e of await o.store.listDeliveryEvents(m.id)) out.push({ ...e, messageId: m.messageId });
  return out;
}

async function sleep(ms: number): Promise<void> {
  await new Promise((r) => setTimeout(r, ms));
}

test("what Postfix did with each recipient is recorded from its log and from its DSNs, exactly as it logged it", { timeout: 180_000 }, async (t) => {
  if (!needPostfix(t) || !(await needPostgres(t)) || !needService(t, "Postfix set up for delivery fates", await fateSetupReason())) return;
  const started = Date.now();
  const tail = new PostfixLogTail().start();
  t.after(() => tail.stop());
  const domains = await startFateDomains();
  t.after(() => domains.close());
  const work = mkdtempSync(path.join(tmpdir(), "outbox-fates-"));
  t.after(() => rmSync(work, { recursive: true, force: true }));

  const pgFx = await freshPostgres(t);
  const liteFx = await freshSqlite(t);
  const open = async (label: string, url: string, secret: string | null, success: boolean): Promise<Outbox> => {
    const store = await openDatabase(url);
    t.after(() => store.close());
    const prisma = (await prismaClientFor(url, t)).$extends(mailOutbox({ defaultFrom: `Fate test <${BOUNCE_ADDRESS}>` }));
    return { label, url, store, prisma, mails: [], secret, success };
  };
  // PostgreSQL: a bounce secret (signed ENVIDs, and VERP return paths outbox-bounces+<token>@localhost),
  // NOTIFY=FAILURE,DELAY (the default).
  // SQLite: plain ENVIDs (the mail's id), and NOTIFY=SUCCESS too: Postfix reports deliveries as well.
  const pg = await open("pg", pgFx.url, SECRET, false);
  const lite = await open("lite", liteFx.url, null, true);

  // Place each follower's cursor at the end of the log before anything is sent.
  for (const o of [pg, lite]) await followLog({ store: o.store, path: POSTFIX_LOG, once: true, logger: false }).stopped;

  // ---- hand the mixes over: each transport on PostgreSQL, sendmail-bs: on SQLite.
  const handOver = async (o: Outbox, transport: string) => {
    const plan = mix(domains, `${o.label}-${transport.replace(/\W+/g, "")}`, transport);
    const enqueued: { id: string; messageId: string }[] = [];
    for (const p of plan) enqueued.push(await o.prisma.outboxEmail.enqueue({ to: [...p.to], subject: `fate ${p.name} via ${transport}`, text: `${p.name}\n` }));
    const rejected = new Map<string, string[]>();
    const relay = createRelay({
      databaseUrl: o.url,
      transport,
      pollIntervalMs: 50,
      backoff: { baseMs: 200, maxMs: 1000, jitter: 0 },
      logger: false,
      dsn: { notify: o.success ? ["SUCCESS", "FAILURE", "DELAY"] : ["FAILURE", "DELAY"], ...(o.secret ? { secret: o.secret, verp: true } : {}) },
    });
    relay.on("sent", (e) => rejected.set(e.id, e.rejected.map((r) => r.recipient.toLowerCase())));
    try {
      // Once, or again after a retry (another test file may stop Postfix for a moment).
      for (const deadline = Date.now() + 60_000; relay.counts().sent < plan.length; await sleep(200)) {
        await relay.runOnce();
        if (Date.now() > deadline) assert.fail(`${o.label} via ${transport}: handed over ${relay.counts().sent} of ${plan.length} mails in 60 s`);
      }
    } finally {
      await relay.stop(); // closes its transport (sendmail -bs sessions, SMTP connections) and database pool
    }
    assert.equal(relay.counts().dead, 0, `${o.label} via ${transport}: no mail given up on`);
    plan.forEach((p, i) => {
      const { id, messageId } = enqueued[i]!;
      const refused = rejected.get(id) ?? [];
      // Postfix refuses exactly the unknown local user, and only over SMTP.
      assert.deepEqual(refused, p.to.filter((r) => !(r in p.intended)).map((r) => r.toLowerCase()), `${p.name} via ${transport}: refused at RCPT`);
      o.mails.push({ id, messageId, planned: p, transport, recipients: Object.keys(p.intended) });
    });
  };
  for (const transport of TRANSPORTS) await handOver(pg, transport);
  await handOver(lite, "sendmail-bs:");
  const all = [...pg.mails, ...lite.mails];
  t.diagnostic(`${all.length} mails handed over in ${Date.now() - started} ms`);

  // ---- restart and rotation. The PostgreSQL follower runs once now (the first fates are in the
  // log, the expiring mail not yet) and stops; while both followers are stopped the log is rotated
  // as logrotate(8) with delaycompress does it (renamed to postfix.log.1, Postfix reopens its log);
  // then both follow live (hard bounces suppressed) across a real `postfix logrotate` (renamed to
  // a dated name and gzipped a second later), until Postfix is done with every mail.
  await tail.waitFor((lines) => {
    const f = readPostfixFates(lines);
    return pg.mails.every((m) => m.recipients.every((r) => f.recipients.has(fateKey(m.messageId, r))));
  }, 30_000, "a first status for every recipient");
  const first = await followLog({ store: pg.store, path: POSTFIX_LOG, once: true, suppress: { expiresAt: null }, logger: false }).stopped;
  assert.ok(first.recorded > 0, "the first run recorded the fates logged so far");

  // Each rotation reloads Postfix, which leaves mail that was in delivery at that moment waiting
  // 60 s (see flushQueue): flush the queue until Postfix has settled every mail.
  const stopFlushing = keepFlushing();
  t.after(stopFlushing);
  renameSync(POSTFIX_LOG, `${POSTFIX_LOG}.1`);
  await postfixCommand(["reload"]);
  await tail.waitFor(() => tail.rotations >= 1, 10_000, "the rename rotation");
  const followers = [pg, lite].map((o) => followLog({ store: o.store, path: POSTFIX_LOG, pollIntervalMs: 50, suppress: { expiresAt: null }, logger: false }));
  t.after(() => Promise.all(followers.map((f) => f.stop())));
  // Let both finish postfix.log.1 (the file their cursors name) before the log is rotated again.
  for (const deadline = Date.now() + 10_000; !followers.every((f) => f.counts().rotations >= 1); await sleep(20)) {
    if (Date.now() > deadline) assert.fail(`follow-log did not finish ${POSTFIX_LOG}.1 within 10 s: ${JSON.stringify(followers.map((f) => f.counts()))}`);
  }
  await postfixCommand(["logrotate"]);
  await tail.waitFor(() => tail.rotations >= 2, 10_000, "postfix logrotate");

  // ---- wait until Postfix is done with every mail (the expiring ones take its queue lifetime).
  await tail.waitFor((lines) => {
    const f = readPostfixFates(lines);
    return all.every((m) => settled(f, m.messageId, m.recipients));
  }, 120_000, "Postfix to settle every mail");
  stopFlushing();
  const logged = readPostfixFates(tail.lines);
  t.diagnostic(`Postfix settled every mail ${Date.now() - started} ms after the start`);

  // The setup did what it promises: each recipient's fate in the log is the intended one.
  for (const m of all) {
    for (const [r, fate] of Object.entries(m.planned.intended)) assert.equal(logged.recipients.get(fateKey(m.messageId, r))?.fate, fate, `${m.planned.name} via ${m.transport}: Postfix's fate for ${r}`);
    if (m.planned.name === "deferred") assert.ok(logged.recipients.get(fateKey(m.messageId, m.recipients[0]!))!.events.some((e) => e.fate === "deferred"), "deferred before delivered");
  }

  // The live followers catch up (their caught-up time passes the last line), then stop.
  const lastLine = tail.lines.at(-1)!.arrivedAt;
  for (const o of [pg, lite]) {
    for (const deadline = Date.now() + 10_000; ; await sleep(50)) {
      const caught = await o.store.logCaughtUpAt();
      if (caught && caught.getTime() >= lastLine) break;
      if (Date.now() > deadline) assert.fail(`${o.label}: follow-log did not catch up with the log within 10 s`);
    }
  }
  const counts = await Promise.all(followers.map((f) => f.stop()));
  for (const c of counts) assert.ok(c.rotations >= 2, `follow-log finished both rotated files (${JSON.stringify(c)})`);
  // A restart after all that records nothing new: nothing was lost, nothing is counted twice.
  for (const o of [pg, lite]) {
    const again = await followLog({ store: o.store, path: POSTFIX_LOG, once: true, logger: false }).stopped;
    assert.equal(again.recorded, 0, `${o.label}: a restart records nothing more`);
  }

  await t.test("follow-log: every recipient's fate, time and DSN code as Postfix logged it; each status line once", async () => {
    for (const o of [pg, lite]) {
      const c = compareLogFates(o.mails, logged, await recorded(o));
      t.diagnostic(`${o.label}: follow-log ${c.matched}/${c.checked} recipients matched, ${c.unmatched.length} unmatched, ${c.wrong.length} wrong`);
      assert.deepEqual(c.unmatched, [], `${o.label}: unmatched`);
      assert.deepEqual(c.wrong, [], `${o.label}: wrong`);
      assert.equal(c.matched, c.checked);
    }
  });

  await t.test("ingest: the DSNs Postfix sent record the same fates; twice records nothing more", async () => {
    for (const o of [pg, lite]) {
      const dir = path.join(work, `maildir-${o.label}`);
      const copied = collectReports(o.mails.map((m) => m.messageId), dir, { move: true });
      const expectedReports = o.mails.reduce((n, m) => n + (logged.notifications.get(m.messageId)?.length ?? 0), 0);
      assert.equal(copied, expectedReports, `${o.label}: one report in the Maildir per notification Postfix logged`);
      const summary = await ingestMaildir(o.store, dir, { secret: o.secret });
      assert.deepEqual(summary.counts, { recorded: copied, duplicate: 0, forged: 0, unlinked: 0, unreadable: 0 }, `${o.label}: every report recorded`);
      const c = compareDsnFates(o.mails, logged, await recorded(o), { success: o.success });
      t.diagnostic(`${o.label}: ${copied} reports; ingest ${c.matched}/${c.checked} recipients matched, ${c.unmatched.length} unmatched, ${c.wrong.length} wrong`);
      assert.deepEqual(c.unmatched, [], `${o.label}: unmatched`);
      assert.deepEqual(c.wrong, [], `${o.label}: wrong`);
      // The same reports again (as a pipe transport would deliver a copy twice): nothing more.
      const before = (await recorded(o)).length;
      for (const f of summary.files) {
        const again = await ingestReport(o.store, readFileSync(f.movedTo), { secret: o.secret });
        assert.equal(again.result, "duplicate", `${o.label}: ${path.basename(f.file)} read again`);
      }
      assert.equal((await recorded(o)).length, before, `${o.label}: the same reports again record nothing`);
    }
  });

  await t.test("a real bounce whose token is forged is refused and records nothing", async () => {
    // A mail with the Message-ID of a delivered outbox mail, its ENVID a token signed with another secret.
    const victim = pg.mails.find((m) => m.planned.name === "delivered")!;
    const forgedEnvid = signToken(victim.id, "not-the-secret-of-this-outbox");
    const to = domains.address("bounced", "forged");
    const raw = `From: ${BOUNCE_ADDRESS}\nTo: ${to}\nMessage-ID: ${victim.messageId}\nSubject: forged\n\nforged\n`;
    const tail2 = tail.lines.length;
    await new Promise<void>((resolve, reject) => {
      const child = execFile(POSTFIX_SENDMAIL, ["-i", "-f", BOUNCE_ADDRESS, "-N", "failure", "-R", "hdrs", "-V", forgedEnvid, "--", to], (err) => (err ? reject(err) : resolve()));
      child.stdin?.end(raw);
    });
    await tail.waitFor(() => {
      const f = readPostfixFates(tail.lines.slice(tail2));
      return (f.notifications.get(victim.messageId) ?? []).some((n) => n.delivered);
    }, 60_000, "the forged bounce");
    const dir = path.join(work, "maildir-forged");
    assert.equal(collectReports([victim.messageId], dir, { move: true }), 1, "one report about the forged mail");
    const events = (await recorded(pg)).length;
    const result = await ingestMaildir(pg.store, dir, { secret: SECRET });
    assert.deepEqual(result.counts, { recorded: 0, duplicate: 0, forged: 1, unlinked: 0, unreadable: 0 }, "refused as forged");
    const [file] = result.files;
    assert.ok(file && "error" in file && file.error instanceof ForgedReportError, "with a ForgedReportError");
    assert.match(file.movedTo, /\.Failed/, "kept in the .Failed folder for a person to look at");
    assert.equal((await recorded(pg)).length, events, "nothing recorded from the forged report");
  });

  await t.test("after a real hard bounce, suppression refuses or skips the address as configured", async () => {
    const bounced = pg.mails.find((m) => m.planned.name === "bounced")!.recipients[0]!;
    assert.ok((await pg.store.findSuppressed([bounced], new Date())).has(bounced.toLowerCase()), "follow-log put the hard bounce on the list");
    const base = await prismaClientFor(pg.url, t);
    const refuse = base.$extends(mailOutbox({ defaultFrom: BOUNCE_ADDRESS, suppression: "refuse" })) as any;
    await assert.rejects(refuse.outboxEmail.enqueue({ to: bounced, subject: "again", text: "again" }), (err: unknown) => err instanceof SuppressedRecipientError);
    const skip = base.$extends(mailOutbox({ defaultFrom: BOUNCE_ADDRESS, suppression: "skip" })) as any;
    const ok = `outbox-test+${domains.tag}-skip@localhost`;
    const r = await skip.outboxEmail.enqueue({ to: [bounced, ok], subject: "skip", text: "skip" });
    assert.deepEqual(r.suppressed, [bounced.toLowerCase()]);
    const row = await pg.store.findMail({ id: r.id }, false);
    assert.deepEqual(row?.mail.envelopeTo, [ok]);
    const none = await skip.outboxEmail.enqueue({ to: bounced, subject: "skip all", text: "skip all" });
    assert.equal((await pg.store.findMail({ id: none.id }, false))?.mail.status, "cancelled");
    const off = base.$extends(mailOutbox({ defaultFrom: BOUNCE_ADDRESS })) as any;
    assert.deepEqual((await off.outboxEmail.enqueue({ to: bounced, subject: "off", text: "off" })).suppressed ?? [], []);
  });

  t.diagnostic(`the whole test took ${Date.now() - started} ms`);
});
