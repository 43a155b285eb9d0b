/**
 * The Postfix log parser (src/fate/postfix-log.ts): lines as this machine's Postfix wrote them
 * (maillog_file), the same lines in journald's and rsyslog's RFC 3339 forms, the fields of
 * delivery lines (orig_to, conn_use, replies with parentheses), multi-instance syslog names, the
 * year of syslog timestamps, and lines it must pass over.
 */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { normalizeMessageId, parsePostfixLine, parseTimestamp, type PostfixLogEntry } from "../src/fate/postfix-log.js";

const NOW = new Date(2026, 10, 30, 20, 0, 0); // local time, as syslog stamps are read

/** Lines this machine's Postfix wrote to /var/log/postfix.log (sendmail to a local user and to a missing one). */
const REAL = [
  "Nov 30 19:05:12 localhost postfix/pickup[5641]: 0B8E516E2E1: uid=0 from=<outbox-test+bnc@localhost>",
  "Nov 30 19:05:12 localhost postfix/cleanup[6149]: 0B8E516E2E1: message-id=<probe1@x>",
  "Nov 30 19:05:12 localhost postfix/qmgr[5642]: 0B8E516E2E1: from=<outbox-test+bnc@localhost>, size=238, nrcpt=2 (queue active)",
  'Nov 30 19:05:12 localhost postfix/local[6153]: 0B8E516E2E1: to=<nosuchuser@localhost>, relay=local, delay=0.13, delays=0.06/0.02/0/0.04, dsn=5.1.1, status=bounced (unknown user: "nosuchuser")',
  "Nov 30 19:05:12 localhost postfix/local[6154]: 0B8E516E2E1: to=<outbox-test@localhost>, relay=local, delay=0.13, delays=0.06/0.04/0/0.03, dsn=2.0.0, status=sent (delivered to maildir)",
  "Nov 30 19:05:12 localhost postfix/bounce[6155]: 0B8E516E2E1: sender non-delivery notification: 24EAC16E2E5",
  "Nov 30 19:05:12 localhost postfix/qmgr[5642]: 0B8E516E2E1: removed",
  // Through the SMTP transport to loopback servers that answer 451 and 550, and a queue lifetime that ran out.
  "Nov 30 19:11:54 localhost postfix/smtp[9657]: B40D516E2E1: to=<bob@deferred.test>, relay=127.0.0.1[127.0.0.1]:38629, delay=0.28, delays=0.05/0.02/0.17/0.04, dsn=4.3.0, status=deferred (host 127.0.0.1[127.0.0.1] said: 451 4.3.0 try again later (deferred.test) (in reply to end of DATA command))",
  "Nov 30 19:12:08 localhost postfix/qmgr[9625]: D409616E2E8: from=<outbox-bounces@localhost>, status=expired, returned to sender",
];

function parse(line: string): PostfixLogEntry {
  const e = parsePostfixLine(line, { now: NOW });
  assert.ok(e !== null, `not parsed: ${line}`);
  return e;
}

describe("parsePostfixLine on this machine's Postfix log", () => {
  it("reads the cleanup, qmgr, delivery, bounce and removed lines of one mail", () => {
    const [pickup, cleanup, queued, bounced, sent, notification, removed] = REAL.map((l) => parsePostfixLine(l, { now: NOW }));
    assert.equal(pickup, null, "pickup's uid= line is not one follow-log acts on");
    assert.deepEqual(
      { ...cleanup, at: cleanup?.at.getTime() },
      { at: new Date(2026, 10, 30, 19, 5, 12).getTime(), host: "localhost", syslogName: "postfix", service: "cleanup", pid: 6149, queueId: "0B8E516E2E1", kind: "message-id", messageId: "<probe1@x>" },
    );
    assert.deepEqual({ kind: queued?.kind, from: (queued as { from: string }).from, size: (queued as { size: number }).size, nrcpt: (queued as { nrcpt: number }).nrcpt }, { kind: "queued", from: "outbox-test+bnc@localhost", size: 238, nrcpt: 2 });
    assert.equal(bounced?.kind, "delivery");
    if (bounced?.kind !== "delivery" || sent?.kind !== "delivery") return;
    assert.deepEqual(
      { to: bounced.to, origTo: bounced.origTo, relay: bounced.relay, delay: bounced.delay, dsn: bounced.dsn, status: bounced.status, reply: bounced.reply, service: bounced.service },
      { to: "nosuchuser@localhost", origTo: null, relay: "local", delay: 0.13, dsn: "5.1.1", status: "bounced", reply: 'unknown user: "nosuchuser"', service: "local" },
    );
    assert.deepEqual({ to: sent.to, dsn: sent.dsn, status: sent.status, reply: sent.reply }, { to: "outbox-test@localhost", dsn: "2.0.0", status: "sent", reply: "delivered to maildir" });
    assert.equal(notification?.kind, "notification");
    if (notification?.kind === "notification") assert.deepEqual([notification.what, notification.notificationQueueId], ["sender non-delivery", "24EAC16E2E5"]);
    assert.equal(removed?.kind, "removed");
  });

  it("keeps a remote server's reply whole, parentheses included", () => {
    const e = parse(REAL[7]!);
    assert.ok(e.kind === "delivery");
    assert.equal(e.status, "deferred");
    assert.equal(e.dsn, "4.3.0");
    assert.equal(e.relay, "127.0.0.1[127.0.0.1]:38629");
    assert.equal(e.reply, "host 127.0.0.1[127.0.0.1] said: 451 4.3.0 try again later (deferred.test) (in reply to end of DATA command)");
  });

  it("reads qmgr's expiry line", () => {
    const e = parse(REAL[8]!);
    assert.ok(e.kind === "expired");
    assert.deepEqual([e.queueId, e.from, e.reason, e.service], ["D409616E2E8", "outbox-bounces@localhost", "returned to sender", "qmgr"]);
  });
});

describe("parsePostfixLine: timestamp forms", () => {
  const body = "postfix/local[6154]: 0B8E516E2E1: to=<outbox-test@localhost>, relay=local, delay=0.13, delays=0.06/0.04/0/0.03, dsn=2.0.0, status=sent (delivered to maildir)";

  it("reads RFC 3339 stamps (rsyslog high precision, journalctl -o short-iso and short-iso-precise) in their own zone", () => {
    const cases: [string, string][] = [
      ["2026-11-30T19:05:12.123456+00:00", "2026-11-30T19:05:12.123Z"],
      ["2026-11-30T20:05:12.5+01:00", "2026-11-30T19:05:12.500Z"],
      ["2026-11-30T19:05:12+0000", "2026-11-30T19:05:12.000Z"],
      ["2026-11-30T14:05:12-0500", "2026-11-30T19:05:12.000Z"],
      ["2026-11-30T19:05:12Z", "2026-11-30T19:05:12.000Z"],
    ];
    for (const [stamp, iso] of cases) {
      const e = parse(`${stamp} mailhost ${body}`);
      assert.equal(e.at.toISOString(), iso, stamp);
      assert.equal(e.host, "mailhost");
      assert.equal(e.kind, "delivery");
    }
  });

  it("reads syslog stamps in local time, with a space-padded day, in this year or, when that is more than a day ahead, the last", () => {
    assert.equal(parse(`Nov  3 07:08:09 h ${body}`).at.getTime(), new Date(2026, 10, 3, 7, 8, 9).getTime());
    // The next day is still this year (clocks differ a little); later than that is last year's line.
    assert.equal(parse(`Dec  1 19:00:00 h ${body}`).at.getFullYear(), 2026);
    assert.equal(parse(`Dec 31 23:59:59 h ${body}`).at.getTime(), new Date(2025, 11, 31, 23, 59, 59).getTime());
    const january = new Date(2027, 0, 1, 0, 5, 0);
    assert.equal(parsePostfixLine(`Dec 31 23:59:58 h ${body}`, { now: january })?.at.getTime(), new Date(2026, 11, 31, 23, 59, 58).getTime());
  });

  it("refuses impossible stamps", () => {
    assert.equal(parseTimestamp("Feb 30 10:00:00 h x", NOW), null);
    assert.equal(parseTimestamp("Nov 30 25:00:00 h x", NOW), null);
    assert.equal(parseTimestamp("2026-13-01T00:00:00Z h x", NOW), null);
    assert.equal(parseTimestamp("2026-02-30T00:00:00Z h x", NOW), null);
    assert.equal(parseTimestamp("2026-11-30T19:05:12+25:00 h x", NOW), null);
  });
});

describe("parsePostfixLine: fields and names", () => {
  it("reports orig_to beside to, and passes over fields it does not know (conn_use)", () => {
    const e = parse(
      "2026-11-30T19:05:12+00:00 mx postfix/smtp[77]: 4F2A1C3D5E: to=<ann@mx.example>, orig_to=<Ann@Example.COM>, relay=mx.example[192.0.2.1]:25, conn_use=3, delay=1.2, delays=0.1/0/0.5/0.6, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as 9AB)",
    );
    assert.ok(e.kind === "delivery");
    assert.deepEqual([e.to, e.origTo, e.relay, e.delay, e.reply], ["ann@mx.example", "Ann@Example.COM", "mx.example[192.0.2.1]:25", 1.2, "250 2.0.0 Ok: queued as 9AB"]);
  });

  it("reads multi-instance syslog names, nested service names, long queue ids, and every delivery agent", () => {
    const multi = parse("Nov 30 19:05:12 h postfix-out/smtp[1]: 4Vr1Xk3F2Yz1bZq: to=<a@b.example>, relay=none, delay=30, delays=30/0/0/0, dsn=4.4.1, status=deferred (connect to b.example[192.0.2.9]:25: Connection refused)");
    assert.deepEqual([multi.syslogName, multi.service, multi.queueId, multi.kind], ["postfix-out", "smtp", "4Vr1Xk3F2Yz1bZq", "delivery"]);
    const nested = parse("Nov 30 19:05:12 h postfix/submission/cleanup[2]: ABCDEF0123: message-id=<x@y>");
    assert.deepEqual([nested.syslogName, nested.service, nested.kind], ["postfix/submission", "cleanup", "message-id"]);
    for (const service of ["lmtp", "virtual", "pipe", "error", "discard", "retry", "qmgr", "dovecot"]) {
      const e = parse(`Nov 30 19:05:12 h postfix/${service}[3]: ABCDEF0123: to=<a@b>, relay=${service}, delay=0, delays=0/0/0/0, dsn=2.0.0, status=sent (ok)`);
      assert.equal(e.kind, "delivery", service);
      assert.equal(e.service, service);
    }
    const expired = parse("Nov 30 19:05:12 h postfix/error[3]: ABCDEF0123: to=<a@b>, relay=none, delay=432000, delays=432000/0/0/0, dsn=4.4.7, status=expired (message expired)");
    assert.ok(expired.kind === "delivery" && expired.status === "expired");
    const noPid = parse("Nov 30 19:05:12 h postfix/qmgr: ABCDEF0123: removed");
    assert.equal(noPid.pid, null);
  });

  it("passes over lines that are not about a queued mail, other programs' lines, and garbage", () => {
    const ignored = [
      "",
      "garbage",
      "\u0000\u0001\u0002",
      "Nov 30 19:05:12 localhost postfix/postfix-script[5542]: the Postfix mail system is not running",
      "Nov 30 19:05:12 localhost postfix/smtpd[10]: connect from localhost[127.0.0.1]",
      "Nov 30 19:05:12 localhost postfix/smtpd[10]: NOQUEUE: reject: RCPT from localhost[127.0.0.1]: 554 5.7.1 <x@y>: Relay access denied",
      "Nov 30 19:05:12 localhost postfix/smtp[10]: warning: ABCDEF0123: something odd",
      "Nov 30 19:05:12 localhost postfix/smtpd[10]: ABCDEF0123: client=localhost[127.0.0.1]",
      "Nov 30 19:05:12 localhost postfix/cleanup[10]: ABCDEF0123: message-id=",
      "Nov 30 19:05:12 localhost sshd[10]: ABCDEF0123: to=<a@b>, relay=local, delay=0, delays=0/0/0/0, dsn=2.0.0, status=sent (not postfix)",
      "Nov 30 19:05:12 localhost postfix/local[10]: ABCDEF0123: to=<a@b>, relay=local, delay=0, dsn=2.0.0, status=lost (what?)",
      "Nov 30 19:05:12 localhost postfix/local[10]: ABCDEF0123: to=<a@b>, relay=local",
      "Nov 30 19:05:12 localhost postfix/local[10]: ABCDEF0123: to=<a@b",
      "Nov 30 19:05:12 localhost postfix/local[10]: ABCDEF0123: to=<a@b>, Relay=local, status=sent",
      "Nov 30 19:05:12 localhost postfix/qmgr[10]: ABCDEF0123: from=<a@b>, size=x, nrcpt=1 (queue active)",
      "Nov 30 19:05:12 localhost postfix/local[10]: ABCDEF0123: to=<a\u0000@b>, relay=local, delay=0, delays=0/0/0/0, dsn=2.0.0, status=sent (a NUL)",
      `Nov 30 19:05:12 localhost postfix/cleanup[10]: ABCDEF0123: message-id=<${"x".repeat(70_000)}>`,
    ];
    for (const line of ignored) assert.equal(parsePostfixLine(line, { now: NOW }), null, JSON.stringify(line.slice(0, 120)));
    assert.equal(parsePostfixLine(42 as unknown as string), null);
  });

  it("reads a line with a CR before its line break", () => {
    assert.equal(parse("Nov 30 19:05:12 localhost postfix/qmgr[5642]: 0B8E516E2E1: removed\r").kind, "removed");
  });
});

describe("normalizeMessageId", () => {
  it("gives the outbox's form, with angle brackets", () => {
    assert.equal(normalizeMessageId("<a@b>"), "<a@b>");
    assert.equal(normalizeMessageId(" a@b "), "<a@b>");
    assert.equal(normalizeMessageId("<a@b"), "<a@b>");
  });
});
