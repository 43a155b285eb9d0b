/**
 * `ingest`: delivery reports recorded through a real store (SQLite file, PostgreSQL schema),
 * linked by signed token, ENVID or Message-ID; idempotent; forged and unreadable reports refused
 * with nothing recorded; the Maildir mode moving every file and losing none; and the command's
 * exit statuses for a Postfix pipe. One report comes from real Postfix end to end.
 */
import { describe, it, after, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { execFile } from "node:child_process";
import { chownSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { promisify } from "node:util";
import { tmpdir } from "node:os";
import path from "node:path";
import { PassThrough } from "node:stream";
import { Registry } from "prom-client";
import { ForgedReportError, UnreadableReportError } from "../src/errors.js";
import { newId } from "../src/ids.js";
import { toSqliteTime, type Db } from "../src/db.js";
import { ingestMaildir, ingestReport, refusalKind, FAILED_FOLDER } from "../src/fate/ingest.js";
import { handoffEnvelope, parseDsnOptions, signToken } from "../src/fate/token.js";
import { EX_DATAERR, EX_NOPERM, EX_TEMPFAIL } from "../src/cli/ingest.js";
import { main } from "../src/cli/main.js";
import { createTransporter, rawSendMailOptions } from "../src/transport.js";
import type { FateEvent } from "../src/fate/watch.js";
import { freshPostgres, freshSqlite, openFixture, sqliteOf } from "./support/db.js";
import { needPostfix, needPostgres, POSTFIX_SENDMAIL } from "./support/services.js";
import { POSTFIX_LOG, TEST_MAILDIR } from "./support/postfix.js";

const execFileAsync = promisify(execFile);

const SECRET = "ingest test secret: 32 bytes ok!";
const T0 = new Date("2026-03-01T12:00:00.000Z");

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Insert a mail as the relay leaves it once the MTA took it. */
async function seedSent(db: Db, envelopeTo: string[], envelopeFrom = "outbox-test@localhost"): Promise<{ id: string; messageId: string; raw: Buffer; envelopeFrom: string; envelopeTo: string[] }> {
  const id = newId();
  const messageId = `<${id}@example.test>`;
  const raw = Buffer.from(`From: app@example.test\r\nTo: ${envelopeTo.join(", ")}\r\nMessage-ID: ${messageId}\r\nSubject: ingest test\r\n\r\nbody\r\n`);
  const v: Record<string, unknown> = {
    id,
    message_id: messageId,
    status: "sent",
    priority: 0,
    envelope_from: envelopeFrom,
    envelope_to: JSON.stringify(envelopeTo),
    subject: "ingest test",
    raw,
    size: raw.length,
    metadata: null,
    attempts: 1,
    max_attempts: 5,
    send_at: T0,
    next_attempt_at: T0,
    accepted: JSON.stringify(envelopeTo),
    uncertain_handoffs: 0,
    created_at: T0,
    updated_at: T0,
    sent_at: T0,
  };
  const cols = Object.keys(v);
  if (db.dialect === "postgresql") {
    const json = new Set(["envelope_to", "metadata", "accepted"]);
    await db.pool.query(`INSERT INTO mail_outbox (${cols.join(", ")}) VALUES (${cols.map((c, i) => `$${i + 1}${json.has(c) ? "::jsonb" : ""}`).join(", ")})`, Object.values(v));
  } else {
    const vals = Object.fromEntries(Object.entries(v).map(([k, x]) => [k, x instanceof Date ? toSqliteTime(x) : x]));
    sqliteOf(db).db.prepare(`INSERT INTO mail_outbox (${cols.join(", ")}) VALUES (${cols.map((c) => `@${c}`).join(", ")})`).run(vals);
  }
  return { id, messageId, raw, envelopeFrom, envelopeTo };
}

interface ReportSpec {
  readonly envid?: string | null;
  readonly to?: string;
  readonly returnedMessageId?: string | null;
  readonly reportId?: string;
  readonly recipients: readonly { readonly rcpt: string; readonly action: string; readonly status: string; readonly diag?: string }[];
}

/** A delivery report in the shape Postfix writes (see test/dsn.test.ts for real ones). */
function report(spec: ReportSpec): Buffer {
  const b = `b${randomUUID()}`;
  const reportId = spec.reportId ?? `<${randomUUID()}@localhost>`;
  return Buffer.from(
    [
      `Return-Path: <>`,
      `X-Original-To: ${spec.to ?? "bounces@localhost"}`,
      `Delivered-To: ${spec.to ?? "bounces@localhost"}`,
      `Date: Mon, 30 Nov 2026 19:22:18 +0000 (UTC)`,
      `From: Mail Delivery System <MAILER-DAEMON@localhost>`,
      `Subject: Undelivered Mail Returned to Sender`,
      `To: ${spec.to ?? "bounces@localhost"}`,
      `MIME-Version: 1.0`,
      `Content-Type: multipart/report; report-type=delivery-status;`,
      `\tboundary="${b}"`,
      `Message-Id: ${reportId}`,
      ``,
      `--${b}`,
      `Content-Type: text/plain; charset=utf-8`,
      ``,
      `The mail system`,
      ``,
      `--${b}`,
      `Content-Type: message/delivery-status`,
      ``,
      `Reporting-MTA: dns; localhost`,
      ...(spec.envid ? [`Original-Envelope-Id: ${spec.envid}`] : []),
      `X-Postfix-Queue-ID: 4390B16E2E3`,
      `Arrival-Date: Mon, 30 Nov 2026 19:22:18 +0000 (UTC)`,
      ...spec.recipients.flatMap((r) => [
        ``,
        `Final-Recipient: rfc822; ${r.rcpt}`,
        `Original-Recipient: rfc822;${r.rcpt}`,
        `Action: ${r.action}`,
        `Status: ${r.status}`,
        `Remote-MTA: dns; mx.example.org`,
        `Diagnostic-Code: smtp; ${r.diag ?? `${r.status.startsWith("5") ? 550 : 450} ${r.status} reply`}`,
        `Last-Attempt-Date: Mon, 30 Nov 2026 19:22:19 +0000 (UTC)`,
      ]),
      ``,
      `--${b}`,
      `Content-Type: text/rfc822-headers`,
      ``,
      ...(spec.returnedMessageId ? [`Message-ID: ${spec.returnedMessageId}`] : []),
      `Subject: ingest test`,
      ``,
      `--${b}--`,
      ``,
    ].join("\r\n"),
  );
}

async function refusal(p: Promise<unknown>): Promise<Error> {
  try {
    await p;
  } catch (err) {
    return err as Error;
  }
  assert.fail("the report was recorded but should have been refused");
}

/** Run `mail-outbox ingest <args>` through the CLI's `main()`, feeding `stdin`; exit status and output. */
async function runIngest(args: string[], env: Record<string, string | undefined>, stdin: Buffer | null): Promise<{ code: number; stderr: string; stdout: string }> {
  let stderr = "";
  let stdout = "";
  const input = new PassThrough();
  input.end(stdin ?? Buffer.alloc(0));
  const code = await main(["ingest", ...args], {
    stdout: { write: (s: string | Uint8Array) => (stdout += String(s)) },
    stderr: { write: (s: string | Uint8Array) => (stderr += String(s)) },
    env,
    stdin: input,
  });
  return { code, stderr, stdout };
}

const backends = [
  { name: "SQLite", open: async () => freshSqlite() },
  { name: "PostgreSQL", open: async () => freshPostgres() },
] as const;

for (const backend of backends) {
  describe(`ingest on ${backend.name}`, () => {
    let fixture: Promise<{ db: Db; url: string; cleanup: () => Promise<void> }> | null = null;
    /** The backend's database, opened by the first test that runs; null (test skipped) when PostgreSQL is absent. */
    const ready = async (t: TestContext) => {
      if (backend.name === "PostgreSQL" && !(await needPostgres(t))) return null;
      fixture ??= (async () => {
        const fx = await backend.open();
        return { db: await openFixture(fx), url: fx.url, cleanup: fx.cleanup };
      })();
      return fixture;
    };
    after(async () => {
      if (!fixture) return;
      const { db, cleanup } = await fixture;
      await db.close();
      await cleanup();
    });

    it("a real Postfix bounce, linked by its signed token (ENVID and VERP), is recorded once; read again it is a duplicate", async (t) => {
      const fx = await ready(t);
      if (!fx || !needPostfix(t)) return;
      const { db } = fx;
      const tag = `ing${randomUUID().slice(0, 8)}`;
      const mail = await seedSent(db, [`outbox-test+${tag}@localhost`, `nosuch${tag}@localhost`]);
      const envelope = handoffEnvelope(mail, parseDsnOptions({ secret: SECRET, verp: true }));
      assert.match(envelope.from, /^outbox-test\+[a-z2-7]{26}\.[a-z2-7]{20}@localhost$/);
      const transporter = createTransporter(`sendmail:${POSTFIX_SENDMAIL}`);
      await transporter.sendMail(rawSendMailOptions(envelope, mail.raw, mail.messageId));
      transporter.close();
      const files = await waitForFiles(`X-Original-To: ${envelope.from}`, 1);
      after(() => files.forEach((f) => rmSync(f, { force: true })));
      const bounce = readFileSync(files[0]!);

      const registry = new Registry();
      const seen: FateEvent[] = [];
      const first = await ingestReport(db, bounce, { secret: SECRET, suppress: { expiresAt: null }, metrics: registry, onEvent: (e) => seen.push(e) });
      assert.equal(first.result, "recorded");
      assert.equal(first.mailId, mail.id);
      assert.equal(first.linkedBy, "token");
      assert.equal(first.recorded.length, 1);
      assert.deepEqual(
        { recipient: first.recorded[0]!.recipient, event: first.recorded[0]!.event, dsnStatus: first.recorded[0]!.dsnStatus, source: first.recorded[0]!.source, messageId: first.recorded[0]!.messageId },
        { recipient: `nosuch${tag}@localhost`, event: "bounced", dsnStatus: "5.1.1", source: "dsn", messageId: mail.messageId },
      );
      assert.match(first.recorded[0]!.reply ?? "", /unknown user/);
      assert.deepEqual(seen.map((e) => e.id), first.recorded.map((e) => e.id), "onEvent saw each recorded event");
      assert.deepEqual([...(await db.findSuppressed([`NOSUCH${tag}@localhost`], new Date()))], [`nosuch${tag}@localhost`], "--suppress listed the hard bounce");

      const again = await ingestReport(db, bounce, { secret: SECRET, metrics: registry });
      assert.equal(again.result, "duplicate");
      assert.equal(again.recorded.length, 0);
      assert.equal((await db.listDeliveryEvents(mail.id)).length, 1, "one event stored for two reads");
      const metrics = await registry.getMetricsAsJSON();
      const value = (name: string, labels: Record<string, string>) =>
        metrics.find((m) => m.name === name)?.values.find((v) => Object.entries(labels).every(([k, x]) => v.labels[k] === x))?.value;
      assert.equal(value("mail_outbox_reports_total", { result: "recorded" }), 1);
      assert.equal(value("mail_outbox_reports_total", { result: "duplicate" }), 1);
      assert.equal(value("mail_outbox_fates_total", { event: "bounced", source: "dsn" }), 1);
    });

    it("without a secret: linked by ENVID = the mail id, else by the returned Message-ID; every recipient's fate recorded", async (t) => {
      const fx = await ready(t);
      if (!fx) return;
      const { db } = fx;
      const a = await seedSent(db, ["ann@example.org", "bob@example.org", "cy@example.org", "dee@example.org"]);
      const byEnvid = await ingestReport(db, report({ envid: a.id, recipients: [{ rcpt: "ann@example.org", action: "failed", status: "5.1.1" }, { rcpt: "bob@example.org", action: "delayed", status: "4.4.1" }] }), { secret: null });
      assert.equal(byEnvid.linkedBy, "envid");
      const byMid = await ingestReport(
        db,
        report({ envid: "something-else", returnedMessageId: a.messageId, recipients: [{ rcpt: "cy@example.org", action: "failed", status: "4.4.7" }, { rcpt: "dee@example.org", action: "relayed", status: "2.0.0" }] }),
        { secret: null },
      );
      assert.equal(byMid.linkedBy, "message-id");
      const events = await db.listDeliveryEvents(a.id);
      assert.deepEqual(
        events.map((e) => [e.recipient, e.event, e.dsnStatus, e.remoteMta, e.queueId]).sort(),
        [
          ["ann@example.org", "bounced", "5.1.1", "mx.example.org", "4390B16E2E3"],
          ["bob@example.org", "deferred", "4.4.1", "mx.example.org", "4390B16E2E3"],
          ["cy@example.org", "expired", "4.4.7", "mx.example.org", "4390B16E2E3"],
          ["dee@example.org", "delivered", "2.0.0", "mx.example.org", "4390B16E2E3"],
        ],
      );
      assert.deepEqual(events.map((e) => e.at.toISOString())[0], "2026-11-30T19:22:19.000Z", "at = Last-Attempt-Date");
    });

    it("with a secret, a report without a valid token is refused as forged and records nothing", async (t) => {
      const fx = await ready(t);
      if (!fx) return;
      const { db } = fx;
      const m = await seedSent(db, ["ann@example.org"]);
      const recipients = [{ rcpt: "ann@example.org", action: "failed", status: "5.1.1" }];
      const cases = [
        { what: "the bare mail id as ENVID", spec: { envid: m.id, returnedMessageId: m.messageId, recipients } },
        { what: "a token signed with another secret", spec: { envid: signToken(m.id, `${SECRET}-other`), recipients } },
        { what: "a VERP address with a forged token", spec: { to: `bounces+${signToken(m.id, `${SECRET}-other`)}@localhost`, recipients } },
        { what: "no ENVID and no VERP", spec: { returnedMessageId: m.messageId, recipients } },
      ];
      for (const c of cases) {
        const err = await refusal(ingestReport(db, report(c.spec), { secret: SECRET }));
        assert.ok(err instanceof ForgedReportError, `${c.what}: ${err.message}`);
        assert.equal(refusalKind(err), "forged");
      }
      assert.deepEqual(await db.listDeliveryEvents(m.id), [], "nothing recorded");
      const ok = await ingestReport(db, report({ to: `bounces+${signToken(m.id, SECRET)}@localhost`, recipients }), { secret: SECRET });
      assert.equal(ok.linkedBy, "token", "the VERP address alone links");
      const viaEnv = await ingestReport(db, report({ recipients: [{ rcpt: "ann@example.org", action: "delayed", status: "4.4.1" }] }), {
        secret: SECRET,
        envelopeRecipient: `bounces+${signToken(m.id, SECRET)}@localhost`,
      });
      assert.equal(viaEnv.mailId, m.id, "the envelope recipient Postfix passes links too");
    });

    it("unreadable input and reports naming no mail are refused, saying why, and record nothing", async (t) => {
      const fx = await ready(t);
      if (!fx) return;
      const { db } = fx;
      const registry = new Registry();
      const garbage = await refusal(ingestReport(db, Buffer.from("Subject: hello\r\n\r\nnot a report\r\n"), { secret: null, metrics: registry }));
      assert.ok(garbage instanceof UnreadableReportError);
      assert.equal(refusalKind(garbage), "unreadable");
      assert.match(garbage.message, /no message\/delivery-status part/);
      const nobody = await refusal(ingestReport(db, report({ envid: newId(), returnedMessageId: "<nobody@nowhere>", recipients: [{ rcpt: "x@example.org", action: "failed", status: "5.1.1" }] }), { secret: null, metrics: registry }));
      assert.ok(nobody instanceof UnreadableReportError);
      assert.equal(refusalKind(nobody), "unlinked");
      assert.match(nobody.message, /names no mail of this outbox/);
      const values = (await registry.getSingleMetric("mail_outbox_reports_total")!.get()).values.map((v) => [v.labels.result, v.value]);
      assert.deepEqual(values.sort(), [["unlinked", 1], ["unreadable", 1]]);
    });

    it("Maildir: handled reports move to cur/ seen, refused ones to .Failed, none is lost; a second run finds nothing", async (t) => {
      const fx = await ready(t);
      if (!fx) return;
      const { db } = fx;
      const m = await seedSent(db, ["ann@example.org"]);
      const dir = mkdtempSync(path.join(tmpdir(), "mail-outbox-maildir-"));
      after(() => rmSync(dir, { recursive: true, force: true }));
      for (const sub of ["tmp", "new", "cur"]) mkdirSync(path.join(dir, sub));
      const good = report({ to: `bounces+${signToken(m.id, SECRET)}@localhost`, recipients: [{ rcpt: "ann@example.org", action: "failed", status: "5.1.1" }] });
      writeFileSync(path.join(dir, "new", "1.a.host"), good);
      writeFileSync(path.join(dir, "new", "2.b.host"), good); // the same report twice: a duplicate
      writeFileSync(path.join(dir, "new", "3.c.host"), "not a report at all\n");
      writeFileSync(path.join(dir, "new", "4.d.host"), report({ envid: m.id, recipients: [{ rcpt: "ann@example.org", action: "failed", status: "5.1.1" }] })); // forged under a secret
      writeFileSync(path.join(dir, "cur", "5.e.host:2,"), report({ envid: signToken(m.id, SECRET), recipients: [{ rcpt: "ann@example.org", action: "delayed", status: "4.4.1" }] })); // read by a mail client, not seen
      writeFileSync(path.join(dir, "cur", "6.f.host:2,S"), "seen before: left alone\n");
      const summary = await ingestMaildir(db, dir, { secret: SECRET });
      assert.deepEqual(summary.counts, { recorded: 2, duplicate: 1, forged: 1, unlinked: 0, unreadable: 1 });
      assert.equal(summary.stoppedBy, null);
      assert.deepEqual(readdirSync(path.join(dir, "new")), []);
      assert.deepEqual(readdirSync(path.join(dir, "cur")).sort(), ["1.a.host:2,S", "2.b.host:2,S", "5.e.host:2,S", "6.f.host:2,S"]);
      assert.deepEqual(readdirSync(path.join(dir, FAILED_FOLDER, "new")).sort(), ["3.c.host", "4.d.host"]);
      assert.ok(existsSync(path.join(dir, FAILED_FOLDER, "maildirfolder")), "a Maildir++ folder");
      assert.equal(readFileSync(path.join(dir, FAILED_FOLDER, "new", "3.c.host"), "utf8"), "not a report at all\n", "moved unchanged");
      assert.equal((await db.listDeliveryEvents(m.id)).length, 2);
      const second = await ingestMaildir(db, dir, { secret: SECRET });
      assert.deepEqual(second.files, []);
    });

    it("the command: exit 0 recorded or duplicate, 65 unreadable or unlinked, 77 forged, 75 when the database is unavailable", async (t) => {
      const fx = await ready(t);
      if (!fx) return;
      const { db, url } = fx;
      const m = await seedSent(db, ["ann@example.org"]);
      const env = { DATABASE_URL: url, MAIL_OUTBOX_BOUNCE_SECRET: SECRET };
      const bounce = report({ envid: signToken(m.id, SECRET), recipients: [{ rcpt: "ann@example.org", action: "failed", status: "5.1.1" }] });
      const ok = await runIngest([], env, bounce);
      assert.equal(ok.code, 0, ok.stderr);
      assert.match(ok.stderr, /^mail-outbox ingest: recorded ann@example\.org bounced \(5\.1\.1\) for mail .* \(linked by token\)\n$/);
      const dup = await runIngest([], env, bounce);
      assert.equal(dup.code, 0);
      assert.match(dup.stderr, /already recorded/);
      const junk = await runIngest([], env, Buffer.from("hello\n"));
      assert.equal(junk.code, EX_DATAERR);
      assert.match(junk.stderr, /^mail-outbox ingest: unreadable: Delivery report not recorded: /);
      const forged = await runIngest([], env, report({ envid: m.id, recipients: [{ rcpt: "ann@example.org", action: "failed", status: "5.1.1" }] }));
      assert.equal(forged.code, EX_NOPERM);
      assert.match(forged.stderr, /forged/);
      const recipientFlag = await runIngest(["--recipient", `b+${signToken(m.id, SECRET)}@localhost`], env, report({ recipients: [{ rcpt: "ann@example.org", action: "delayed", status: "4.4.1" }] }));
      assert.equal(recipientFlag.code, 0, recipientFlag.stderr);
      // Postfix's local(8) passes the VERP address of an alias delivery as ORIGINAL_RECIPIENT.
      const fromEnv = await runIngest([], { ...env, ORIGINAL_RECIPIENT: `b+${signToken(m.id, SECRET)}@localhost` }, report({ recipients: [{ rcpt: "ann@example.org", action: "delayed", status: "4.7.0" }] }));
      assert.equal(fromEnv.code, 0, fromEnv.stderr);
      assert.match(fromEnv.stderr, /ann@example\.org deferred \(4\.7\.0\)/);
      const down = await runIngest([], { ...env, DATABASE_URL: "postgresql://postgres@127.0.0.1:1/nothing" }, bounce);
      assert.equal(down.code, EX_TEMPFAIL);
      assert.match(down.stderr, /tries again/);
      const junkWhileDown = await runIngest([], { ...env, DATABASE_URL: "postgresql://postgres@127.0.0.1:1/nothing" }, Buffer.from("hello\n"));
      assert.equal(junkWhileDown.code, EX_DATAERR, "input that is no report is refused even while the database is down");
      const badSecret = await runIngest([], { ...env, MAIL_OUTBOX_BOUNCE_SECRET: "short" }, bounce);
      assert.equal(badSecret.code, EX_TEMPFAIL, "a misconfiguration keeps the report queued at the MTA");
      assert.match(badSecret.stderr, /at least 16 bytes/);
      assert.ok(!`${ok.stderr}${forged.stderr}${badSecret.stderr}`.includes(SECRET), "the secret is never printed");

      const json = await runIngest(["--json"], env, report({ envid: signToken(m.id, SECRET), recipients: [{ rcpt: "ann@example.org", action: "delivered", status: "2.0.0" }] }));
      assert.equal(json.code, 0, json.stderr);
      const printed = JSON.parse(json.stdout) as { result: string; mailId: string; linkedBy: string; events: { event: string }[] };
      assert.deepEqual([printed.result, printed.mailId, printed.linkedBy, printed.events.map((e) => e.event)], ["recorded", m.id, "token", ["delivered"]]);

      const dir = mkdtempSync(path.join(tmpdir(), "mail-outbox-maildir-cli-"));
      after(() => rmSync(dir, { recursive: true, force: true }));
      for (const sub of ["tmp", "new", "cur"]) mkdirSync(path.join(dir, sub));
      writeFileSync(path.join(dir, "new", "1.a.host"), bounce);
      writeFileSync(path.join(dir, "new", "2.b.host"), "junk\n");
      const maildir = await runIngest(["--maildir", dir], env, null);
      assert.equal(maildir.code, 0, maildir.stderr);
      assert.match(maildir.stdout, /1\.a\.host: report already recorded/);
      assert.match(maildir.stdout, /2\.b\.host: unreadable, moved to .*\.Failed\/new\/2\.b\.host/);
      assert.match(maildir.stderr, /0 recorded, 1 duplicate, 1 unreadable, 0 unlinked, 0 forged/);
      const maildirDown = await runIngest(["--maildir", dir], { ...env, DATABASE_URL: "postgresql://postgres@127.0.0.1:1/nothing" }, null);
      assert.equal(maildirDown.code, 0, "nothing left to read: the database is not needed");
      writeFileSync(path.join(dir, "new", "3.c.host"), bounce);
      const stopped = await runIngest(["--maildir", dir], { ...env, DATABASE_URL: "postgresql://postgres@127.0.0.1:1/nothing" }, null);
      assert.equal(stopped.code, EX_TEMPFAIL, stopped.stderr);
      assert.ok(existsSync(path.join(dir, "new", "3.c.host")), "left for the next run");
    });

    // The command runs as the mailbox's user: a PostgreSQL URL needs no file permissions for it.
    if (backend.name === "PostgreSQL")
      it("wired into Postfix (a .forward pipe, as an alias would): a real bounce is recorded, forged and unreadable reports returned, a database outage deferred", async (t) => {
      const fx = await ready(t);
      if (!fx || !needPostfix(t)) return;
      const { db, url } = fx;
      const started = Date.now();
      const tag = `ing${randomUUID().slice(0, 6)}`;
      const down = `${tag}d`;
      const command = (databaseUrl: string) =>
        `"|/usr/bin/env DATABASE_URL=${databaseUrl} MAIL_OUTBOX_BOUNCE_SECRET='${SECRET}' /usr/bin/node --import ${path.resolve("node_modules/tsx/dist/loader.mjs")} ${path.resolve("src/cli.ts")} ingest"\n`;
      const forwards = [
        [path.join(TEST_HOME, `.forward+${tag}`), command(url)],
        [path.join(TEST_HOME, `.forward+${down}`), command("postgresql://postgres@127.0.0.1:1/nothing")],
      ] as const;
      for (const [file, text] of forwards) {
        writeFileSync(file, text, { mode: 0o600 });
        chownSync(file, statSync(TEST_HOME).uid, statSync(TEST_HOME).gid);
      }
      after(() => {
        for (const [file] of forwards) rmSync(file, { force: true });
        for (const f of findFiles(tag)) rmSync(f, { force: true });
      });

      // 1. A mail whose bounce address is outbox-test+<tag>: its real bounce is piped into ingest.
      const mail = await seedSent(db, [`outbox-test@localhost`, `nosuch${tag}@localhost`], `outbox-test+${tag}@localhost`);
      const transporter = createTransporter(`sendmail:${POSTFIX_SENDMAIL}`);
      await transporter.sendMail(rawSendMailOptions(handoffEnvelope(mail, parseDsnOptions({ secret: SECRET })), mail.raw, mail.messageId));
      transporter.close();
      const deadline = Date.now() + 30_000;
      while ((await db.listDeliveryEvents(mail.id)).length === 0) {
        if (Date.now() > deadline) throw new Error(`no event recorded by the piped ingest within 30 s; see /var/log/postfix.log for outbox-test+${tag}`);
        await sleep(100);
      }
      const [event] = await db.listDeliveryEvents(mail.id);
      assert.equal(event?.event, "bounced");
      assert.equal(event?.recipient, `nosuch${tag}@localhost`);
      assert.match(await waitForLog(new RegExp(`to=<outbox-test\\+${tag}@localhost>.*status=sent \\(delivered to command`)), /status=sent/);

      // 2. A report with no valid token: ingest exits 77, and Postfix returns it (bounced, 5.7.0).
      const forged = report({ envid: mail.id, returnedMessageId: mail.messageId, recipients: [{ rcpt: "outbox-test@localhost", action: "failed", status: "5.1.1" }] });
      await sendmailRaw(`outbox-test+${tag}sink@localhost`, `outbox-test+${tag}@localhost`, forged);
      assert.match(await waitForLog(new RegExp(`to=<outbox-test\\+${tag}@localhost>.*status=bounced`)), /dsn=5\.7\.0/);

      // 3. Not a report: ingest exits 65, and Postfix returns it (bounced, 5.6.0).
      await sendmailRaw(`outbox-test+${tag}sink@localhost`, `outbox-test+${tag}@localhost`, Buffer.from(`Subject: not a report ${tag}\r\n\r\nhello\r\n`));
      assert.match(await waitForLog(new RegExp(`to=<outbox-test\\+${tag}@localhost>.*status=bounced.*unreadable`)), /dsn=5\.6\.0/);

      // 4. The database is down: ingest exits 75, and Postfix keeps the report queued (deferred).
      await sendmailRaw(`outbox-test+${tag}sink@localhost`, `outbox-test+${down}@localhost`, report({ envid: signToken(mail.id, SECRET), recipients: [{ rcpt: "outbox-test@localhost", action: "delayed", status: "4.4.1" }] }));
      const deferred = await waitForLog(new RegExp(`to=<outbox-test\\+${down}@localhost>.*status=deferred`));
      assert.match(deferred, /dsn=4\.3\.0/);
      const qid = /: ([0-9A-F]+): to=/.exec(deferred)?.[1];
      if (qid) await execFileAsync("/usr/sbin/postsuper", ["-d", qid]).catch(() => {});
      assert.equal((await db.listDeliveryEvents(mail.id)).length, 1, "nothing recorded from the forged or the deferred report");
      t.diagnostic(`bounce piped into ingest and recorded, forged and unreadable reports returned, outage deferred: ${Date.now() - started} ms`);
    });
  });
}

/** Home of the mailbox user (the .forward files of the Postfix test). */
const TEST_HOME = path.dirname(TEST_MAILDIR);

async function sendmailRaw(from: string, to: string, raw: Buffer): Promise<void> {
  const run = execFileAsync(POSTFIX_SENDMAIL, ["-i", "-f", from, "--", to]);
  run.child.stdin!.end(raw.toString("latin1").replace(/\r\n/g, "\n"));
  await run;
}

/** The first line of Postfix's log, from now on, that matches `re`. */
async function waitForLog(re: RegExp, timeoutMs = 30_000): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const line = readFileSync(POSTFIX_LOG, "utf8").split("\n").find((l) => re.test(l));
    if (line !== undefined) return line;
    if (Date.now() > deadline) throw new Error(`no line matching ${re} in ${POSTFIX_LOG} within ${timeoutMs} ms`);
    await sleep(100);
  }
}

function findFiles(needle: string): string[] {
  const found: string[] = [];
  for (const sub of ["new", "cur"]) {
    const dir = path.join(TEST_MAILDIR, sub);
    for (const name of existsSync(dir) ? readdirSync(dir) : []) {
      try {
        if (readFileSync(path.join(dir, name)).includes(needle)) found.push(path.join(dir, name));
      } catch {
        /* moved meanwhile */
      }
    }
  }
  return found;
}

/** Files in the test Maildir whose text contains `needle`, once `count` are there. */
async function waitForFiles(needle: string, count: number, timeoutMs = 20_000): Promise<string[]> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const found: string[] = [];
    for (const sub of ["new", "cur"]) {
      const dir = path.join(TEST_MAILDIR, sub);
      for (const name of existsSync(dir) ? readdirSync(dir) : []) {
        try {
          if (readFileSync(path.join(dir, name)).includes(needle)) found.push(path.join(dir, name));
        } catch {
          /* moved meanwhile */
        }
      }
    }
    if (found.length >= count) return found;
    if (Date.now() > deadline) throw new Error(`no mail with ${JSON.stringify(needle)} in ${TEST_MAILDIR} within ${timeoutMs} ms; see /var/log/postfix.log`);
    await sleep(100);
  }
}
