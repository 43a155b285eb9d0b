/**
 * What the transports write to the MTA (src/wire.ts), against real servers in this process:
 * lone CR/LF in a stored message never reach DATA (every transport normalises them to CRLF the
 * same way), and 8-bit content is declared with BODY=8BITMIME, or not sent at all to a server
 * that does not offer 8BITMIME (the mail goes `dead` with a reason that says what to do).
 *
 * Rows are written with hand-made `raw` bytes (a Prisma create, not `enqueue`), as rows stored
 * before compose normalised line endings would be. Postfix end to end: test/wire-postfix.test.ts.
 */
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { createTransporter, createRelay, EightBitMimeError } from "../src/index.js";
import { classifyError } from "../src/classify.js";
import { bareLineEndAt, eightBitAt, hasEightBit, toCrlf, toLf, toSmtpData } from "../src/wire.js";
import { transportCapabilities } from "../src/transport.js";
import { newId } from "../src/ids.js";
import { startTestSmtp, type StartTestSmtpOptions, type TestSmtp } from "../testkit/smtp.js";
import { freshSqlite, prismaClientFor } from "./support/db.js";

/** A body with every line-end trap: dot lines, lone CR before a dot, lone LF, CR CR LF, no final newline. */
const TRAP_BODY = Buffer.from(".leading dot\r\n.\r\n..two dots\r\nlone CR\r.\r\nafter lone CR\r\nlone LF\nafter lone LF\r\nCR CR LF\r\r\nlast line without newline", "latin1");
/** The same lines, each ended by CRLF, as every transport must send them (before dot-stuffing). */
const TRAP_BODY_CRLF = Buffer.from(".leading dot\r\n.\r\n..two dots\r\nlone CR\r\n.\r\nafter lone CR\r\nlone LF\r\nafter lone LF\r\nCR CR LF\r\n\r\nlast line without newline", "latin1");

function message(id: string, body: Buffer | string, extraHeaders: string[] = []): Buffer {
  const head = [`From: a@example.com`, `To: b@example.com`, `Message-ID: <${id}@example.com>`, `Subject: wire`, ...extraHeaders, ``, ``].join("\r\n");
  return Buffer.concat([Buffer.from(head, "latin1"), Buffer.isBuffer(body) ? body : Buffer.from(body, "utf8")]);
}

/** An 8-bit message: a UTF-8 text part declared `Content-Transfer-Encoding: 8bit`. */
function eightBitMessage(id: string): Buffer {
  return message(id, "Grüße aus Köln\r\n", ["MIME-Version: 1.0", "Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: 8bit"]);
}

/** The DATA content a client wrote (between the 354 and the final dot line), from a captured stream. */
function dataSections(wire: Buffer): Buffer[] {
  const text = wire.toString("latin1");
  const out: Buffer[] = [];
  let at = 0;
  for (;;) {
    const start = text.indexOf("DATA\r\n", at);
    if (start < 0) return out;
    const end = text.indexOf("\r\n.\r\n", start + 6);
    if (end < 0) return out;
    out.push(Buffer.from(text.slice(start + 6, end + 2), "latin1"));
    at = end + 5;
  }
}

const CLIENTS = [
  { name: "the pipelining client", query: "?maxConnections=1" },
  { name: "nodemailer's pool (pipelining=false)", query: "?maxConnections=1&pipelining=false" },
] as const;

/** Send `raw` the way the relay does: `sendRaw` when the transport declares it, else `sendMail`. */
async function handOff(spec: string, raw: Buffer, to = ["b@example.com"]) {
  const t = createTransporter(spec);
  try {
    const sendRaw = transportCapabilities(t).sendRaw;
    return sendRaw ? await sendRaw({ from: "a@example.com", to }, raw) : await t.sendMail({ envelope: { from: "a@example.com", to }, raw });
  } finally {
    t.close();
  }
}

async function withServer(options: StartTestSmtpOptions, fn: (server: TestSmtp) => Promise<void>): Promise<void> {
  const server = await startTestSmtp({ captureWire: true, ...options });
  try {
    await fn(server);
  } finally {
    await server.close();
  }
}

describe("wire bytes (src/wire.ts)", () => {
  it("each lone CR and lone LF becomes CRLF (CR CR LF is two line ends), and a clean message is returned as it is, not copied", () => {
    assert.deepEqual(toCrlf(TRAP_BODY), TRAP_BODY_CRLF);
    assert.equal(bareLineEndAt(TRAP_BODY_CRLF), -1);
    assert.equal(bareLineEndAt(TRAP_BODY), TRAP_BODY.indexOf("\r."));
    assert.deepEqual(toCrlf(Buffer.from("a\rb")), Buffer.from("a\r\nb"));
    assert.deepEqual(toCrlf(Buffer.from("\n")), Buffer.from("\r\n"));
    assert.deepEqual(toCrlf(Buffer.from("a\r")), Buffer.from("a\r\n"));
    const clean = message("clean", "one\r\ntwo\r\n");
    assert.equal(toCrlf(clean), clean, "no copy");
    assert.equal(toSmtpData(clean), clean, "no copy");
    assert.equal(toLf(Buffer.from("no CR\n")).toString(), "no CR\n");
    assert.deepEqual(toLf(TRAP_BODY), Buffer.from(TRAP_BODY_CRLF.toString("latin1").replace(/\r\n/g, "\n"), "latin1"), "the sendmail pipe gets the same lines");
  });

  it("DATA content is dot-stuffed after normalising, so a dot after a lone CR is stuffed too", () => {
    const data = toSmtpData(TRAP_BODY).toString("latin1");
    assert.equal(data, "..leading dot\r\n..\r\n...two dots\r\nlone CR\r\n..\r\nafter lone CR\r\nlone LF\r\nafter lone LF\r\nCR CR LF\r\n\r\nlast line without newline");
  });

  it("8-bit content is found by its first byte >= 0x80", () => {
    assert.equal(hasEightBit(Buffer.from("plain ASCII\r\n")), false);
    assert.equal(hasEightBit(Buffer.alloc(0)), false);
    assert.equal(eightBitAt(Buffer.from("ab\u00e9", "latin1")), 2);
    assert.equal(eightBitAt(eightBitMessage("x")), eightBitMessage("x").indexOf(0xc3));
  });

  it("the checks on a clean message take microseconds and copy nothing (measured, reported)", (t) => {
    const line = Buffer.from(`${"a".repeat(74)}\r\n`);
    for (const size of [2 * 1024, 1024 * 1024]) {
      const msg = Buffer.concat(Array.from({ length: Math.ceil(size / line.length) }, () => line)).subarray(0, Math.floor(size / line.length) * line.length);
      const runs = size < 10_000 ? 20_000 : 50;
      const check = () => toSmtpData(msg) === msg && eightBitAt(msg) < 0 && toLf(toCrlf(msg)).length > 0;
      for (let i = 0; i < runs; i++) check();
      const started = process.hrtime.bigint();
      for (let i = 0; i < runs; i++) assert.ok(toSmtpData(msg) === msg && eightBitAt(msg) < 0);
      const us = Number(process.hrtime.bigint() - started) / 1000 / runs;
      t.diagnostic(`${size} bytes: line-end scan + dot check + 8-bit check ${us.toFixed(2)} µs per message`);
    }
  });
});

describe("what the SMTP clients write into DATA", () => {
  it("the pipelining client never sends a lone CR or LF: <CR>.<CR><LF> in a stored body goes out as CRLF, dot-stuffed", async () => {
    await withServer({}, async (server) => {
      await handOff(`${server.url}?maxConnections=1`, message("smuggle", TRAP_BODY));
      const [data] = dataSections(server.wire());
      assert.ok(data, "a DATA section was captured");
      assert.equal(bareLineEndAt(data), -1, `lone CR or LF at byte ${bareLineEndAt(data)} of DATA`);
      assert.ok(!data.includes("\r.\r"), "no <CR>.<CR> in DATA");
      assert.ok(data.toString("latin1").endsWith("\r\n..\r\nafter lone CR\r\nlone LF\r\nafter lone LF\r\nCR CR LF\r\n\r\nlast line without newline\r\n"));
      const got = server.messages.find((m) => m.messageId === "<smuggle@example.com>");
      assert.ok(got, "the server took the message whole");
      assert.ok(got.raw.toString("latin1").endsWith(`\r\n\r\n${TRAP_BODY_CRLF.toString("latin1")}\r\n`));
    });
  });

  it("both SMTP clients put the same DATA bytes on the wire for one stored message", async () => {
    const sections: Buffer[] = [];
    for (const client of CLIENTS) {
      await withServer({}, async (server) => {
        await handOff(`${server.url}${client.query}`, message("same", TRAP_BODY));
        const [data] = dataSections(server.wire());
        assert.ok(data, `${client.name}: a DATA section was captured`);
        sections.push(data);
      });
    }
    assert.deepEqual(sections[0], sections[1]);
  });
});

describe("8-bit content (RFC 6152)", () => {
  for (const client of CLIENTS) {
    it(`${client.name}: an 8-bit message is declared BODY=8BITMIME to a server that offers 8BITMIME and arrives intact; a 7-bit one is not`, async () => {
      const warnings: string[] = [];
      const onWarning = (w: Error & { code?: string }) => warnings.push(String(w.code));
      process.on("warning", onWarning);
      await withServer({}, async (server) => {
        const eight = eightBitMessage("eight");
        await handOff(`${server.url}${client.query}`, eight);
        await handOff(`${server.url}${client.query}`, message("seven", "plain\r\n"));
        await new Promise((r) => setImmediate(r));
        process.off("warning", onWarning);
        // The pool's guard relies on nodemailer internals (src/wire.ts); it warns when they moved.
        assert.ok(!warnings.includes("MAIL_OUTBOX_NODEMAILER_INTERNALS"), "the 8BITMIME guard was installed on the connection");
        const got8 = server.messages.find((m) => m.messageId === "<eight@example.com>");
        assert.ok(got8);
        assert.equal(got8.mailFromArgs.BODY, "8BITMIME");
        assert.deepEqual(got8.raw, eight);
        const got7 = server.messages.find((m) => m.messageId === "<seven@example.com>");
        assert.equal(got7?.mailFromArgs.BODY, undefined);
      });
    });

    it(`${client.name}: to a server without 8BITMIME an 8-bit message is not sent at all and fails permanently with E8BITMIME; 7-bit mail still goes`, async () => {
      await withServer({ hide8BitMime: true }, async (server) => {
        const err = await handOff(`${server.url}${client.query}`, eightBitMessage("refused")).then(
          () => assert.fail("an 8-bit message was handed to a server without 8BITMIME"),
          (e: unknown) => e,
        );
        assert.ok(err instanceof EightBitMimeError, String(err));
        const c = classifyError(err);
        assert.equal(c.code, "E8BITMIME");
        assert.equal(c.kind, "permanent");
        assert.match(c.message, /does not offer 8BITMIME.*Enable 8BITMIME/);
        assert.match(c.message, new RegExp(`127\\.0\\.0\\.1:${server.port}`));
        assert.equal(hasEightBit(server.wire()), false, "no 8-bit byte went over the socket");
        assert.deepEqual(server.mailFroms, [], "not even MAIL FROM was sent");
        await handOff(`${server.url}${client.query}`, message("after", "plain\r\n"));
        assert.equal(server.countByMessageId().get("<after@example.com>"), 1);
      });
    });
  }
});

describe("stored rows through the relay", () => {
  let fx: Awaited<ReturnType<typeof freshSqlite>>;
  let prisma: Awaited<ReturnType<typeof prismaClientFor>>;
  before(async () => {
    fx = await freshSqlite();
    prisma = await prismaClientFor(fx.url);
  });
  after(async () => {
    await prisma?.$disconnect();
    await fx?.cleanup();
  });

  /** A pending row with these exact bytes, as a row stored before the fix (or by other means) would be. */
  async function storeRow(raw: Buffer, messageId: string, to = "b@example.com"): Promise<string> {
    const id = newId();
    const now = new Date();
    await prisma.outboxEmail.create({
      data: { id, messageId, envelopeFrom: "a@example.com", envelopeTo: [to], subject: "wire", raw: new Uint8Array(raw), size: raw.length, maxAttempts: 5, sendAt: now, nextAttemptAt: now },
    });
    return id;
  }
  const quick = { pollIntervalMs: 50, leaseMs: 5000, backoff: { baseMs: 100, maxMs: 200, jitter: 0 }, logger: false as const };

  for (const client of CLIENTS) {
    it(`${client.name}: a stored 8-bit mail for a server without 8BITMIME goes dead on its first attempt, with a reason that says what to do`, async () => {
      await withServer({ hide8BitMime: true }, async (server) => {
        const messageId = `<dead-${newId()}@example.com>`;
        const id = await storeRow(eightBitMessage(messageId.slice(1, -1).replace(/@example\.com$/, "")), messageId);
        const counts = await createRelay({ databaseUrl: fx.url, transport: `${server.url}${client.query}`, ...quick }).runOnce();
        assert.equal(counts.dead, 1);
        const row = await prisma.outboxEmail.findUniqueOrThrow({ where: { id } });
        assert.equal(row.status, "dead");
        assert.equal(row.attempts, 1, "not retried");
        assert.match(row.lastError ?? "", /8-bit bytes.*does not offer 8BITMIME.*mail-outbox replay/);
        const attempts = await prisma.outboxEmailAttempt.findMany({ where: { emailId: id } });
        assert.deepEqual(attempts.map((a) => a.errorCode), ["E8BITMIME"]);
        assert.equal(hasEightBit(server.wire()), false, "no 8-bit byte went over the socket");
      });
    });

    it(`${client.name}: a stored row with lone CR/LF arrives with CRLF line ends only`, async () => {
      await withServer({}, async (server) => {
        const messageId = `<trap-${newId()}@example.com>`;
        const raw = Buffer.concat([Buffer.from(`From: a@example.com\r\nTo: b@example.com\r\nMessage-ID: ${messageId}\r\nSubject: trap\r\n\r\n`), TRAP_BODY]);
        await storeRow(raw, messageId);
        const counts = await createRelay({ databaseUrl: fx.url, transport: `${server.url}${client.query}`, ...quick }).runOnce();
        assert.equal(counts.sent, 1);
        const [data] = dataSections(server.wire());
        assert.ok(data);
        assert.equal(bareLineEndAt(data), -1);
        const got = server.messages.find((m) => m.messageId === messageId);
        assert.ok(got?.raw.toString("latin1").endsWith(`\r\n\r\n${TRAP_BODY_CRLF.toString("latin1")}\r\n`));
      });
    });
  }
});

describe("local programs (stand-ins, no MTA needed)", () => {
  let dir = "";
  before(() => {
    dir = mkdtempSync(path.join(tmpdir(), "outbox-wire-"));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it("sendmail: an 8-bit message is passed with -B 8BITMIME, a 7-bit one without, and lone CRs become line ends", async () => {
    const out = path.join(dir, "capture");
    const program = path.join(dir, "capture-sendmail");
    writeFileSync(program, `#!/bin/sh\nprintf '%s\\n' "$@" > ${out}.args; cat > ${out}.stdin; exit 0\n`, { mode: 0o755 });
    const t = createTransporter(`sendmail:${program}`);
    await t.sendMail({ envelope: { from: "a@example.com", to: ["b@example.com"] }, raw: eightBitMessage("pipe8") });
    assert.deepEqual(readFileSync(`${out}.args`, "utf8").trimEnd().split("\n"), ["-i", "-B", "8BITMIME", "-f", "a@example.com", "--", "b@example.com"]);
    assert.ok(readFileSync(`${out}.stdin`).includes(Buffer.from("Grüße aus Köln\n")));
    await t.sendMail({ envelope: { from: "a@example.com", to: ["b@example.com"] }, raw: message("pipe7", TRAP_BODY) });
    assert.deepEqual(readFileSync(`${out}.args`, "utf8").trimEnd().split("\n"), ["-i", "-f", "a@example.com", "--", "b@example.com"]);
    const stdin = readFileSync(`${out}.stdin`, "latin1");
    assert.ok(!stdin.includes("\r"), "LF line ends only");
    assert.ok(stdin.endsWith(`\n\n${TRAP_BODY_CRLF.toString("latin1").replace(/\r\n/g, "\n")}`));
  });

  /** A stand-in for `sendmail -bs`: SMTP on stdin/stdout, EHLO with or without 8BITMIME, every byte read logged. */
  function fakeBs(name: string, offer8BitMime: boolean): { program: string; log: string } {
    const program = path.join(dir, name);
    const log = `${program}.log`;
    writeFileSync(
      program,
      `#!${process.execPath}
const fs = require("node:fs");
const out = (s) => process.stdout.write(s + "\\r\\n");
let buf = "", data = false;
out("220 fake ESMTP");
process.stdin.on("data", (chunk) => {
  fs.appendFileSync(${JSON.stringify(log)}, chunk);
  buf += chunk.toString("latin1");
  for (;;) {
    if (data) {
      const end = buf.indexOf("\\r\\n.\\r\\n");
      if (end < 0) return;
      buf = buf.slice(end + 5); data = false; out("250 2.0.0 Ok: queued as FAKE1"); continue;
    }
    const i = buf.indexOf("\\r\\n");
    if (i < 0) return;
    const line = buf.slice(0, i); buf = buf.slice(i + 2);
    const verb = line.slice(0, 4).toUpperCase();
    if (verb === "EHLO") out(${offer8BitMime ? '"250-fake\\r\\n250 8BITMIME"' : '"250 fake"'});
    else if (verb === "DATA") { out("354 go ahead"); data = true; }
    else if (verb === "QUIT") { out("221 bye"); process.exit(0); }
    else out("250 ok");
  }
});
process.stdin.on("end", () => process.exit(0));
`,
      { mode: 0o755 },
    );
    return { program, log };
  }

  it("sendmail-bs: BODY=8BITMIME is declared when the program's SMTP server offers 8BITMIME, and nothing is sent when it does not", async () => {
    const offers = fakeBs("bs-8bit", true);
    const t1 = createTransporter(`sendmail-bs:${offers.program}?timeout=5000`);
    try {
      await t1.sendMail({ envelope: { from: "a@example.com", to: ["b@example.com"] }, raw: eightBitMessage("bs8") });
    } finally {
      t1.close();
    }
    assert.match(readFileSync(offers.log, "latin1"), /^MAIL FROM:<a@example\.com> BODY=8BITMIME\r$/m);

    const lacks = fakeBs("bs-7bit", false);
    const t2 = createTransporter(`sendmail-bs:${lacks.program}?timeout=5000`);
    try {
      const err = await t2.sendMail({ envelope: { from: "a@example.com", to: ["b@example.com"] }, raw: eightBitMessage("bs7") }).then(
        () => assert.fail("sent to a server without 8BITMIME"),
        (e: unknown) => e,
      );
      const c = classifyError(err);
      assert.equal(c.code, "E8BITMIME");
      assert.equal(c.kind, "permanent");
      assert.ok(c.message.includes(`${lacks.program} -bs does not offer 8BITMIME`), c.message);
      const seen = existsSync(lacks.log) ? readFileSync(lacks.log) : Buffer.alloc(0);
      assert.equal(hasEightBit(seen), false, "no 8-bit byte reached the program");
      assert.doesNotMatch(seen.toString("latin1"), /MAIL FROM/);
      // The transporter still carries 7-bit mail.
      await t2.sendMail({ envelope: { from: "a@example.com", to: ["b@example.com"] }, raw: message("bs-after", "plain\r\n") });
      assert.match(readFileSync(lacks.log, "latin1"), /^MAIL FROM:<a@example\.com>\r$/m);
    } finally {
      t2.close();
    }
  });
});
