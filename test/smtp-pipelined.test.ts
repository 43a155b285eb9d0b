/**
 * The pipelining SMTP transport (the default for `smtp://` to a loopback host, or
 * `smtp://host:port?pipelining=true`), against the real in-process SMTP server: bytes arrive
 * exactly as composed, replies are classified like nodemailer's, a refused transaction leaves the
 * connection usable, and a server without PIPELINING gets the commands one at a time.
 */
import { describe, it, after } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import { createTransporter, createRelay, mailOutbox, TransportConfigError, describeTransport } from "../src/index.js";
import { classifyError } from "../src/classify.js";
import { startScriptedSmtp, startTestSmtp, type StartTestSmtpOptions, type TestSmtp } from "../testkit/smtp.js";
import { freshSqlite, prismaClientFor } from "./support/db.js";
import { transportCapabilities, type RawSend } from "../src/transport.js";

function rawMessage(id: string, body: string): Buffer {
  return Buffer.from([`From: a@example.com`, `To: b@example.com`, `Message-ID: <${id}@example.com>`, `Subject: t`, ``, body, ``].join("\r\n"));
}

type Send = RawSend;

/** The raw sender the transport declares (the pipelining transport always does). */
function rawSender(t: ReturnType<typeof createTransporter>): RawSend {
  const send = transportCapabilities(t).sendRaw;
  assert.ok(send, "the transport declares sendRaw");
  return send;
}

/** A server of its own and a one-connection pipelining transport to it, both closed afterwards. */
async function withOneConnection(options: StartTestSmtpOptions, fn: (server: TestSmtp, send: Send) => Promise<void>): Promise<void> {
  const server = await startTestSmtp(options);
  const t = createTransporter(`${server.url}?maxConnections=1`);
  try {
    await fn(server, rawSender(t));
  } finally {
    t.close();
    await server.close();
  }
}

describe("pipelining SMTP transport", async () => {
  const smtp = await startTestSmtp();
  after(() => smtp.close());
  const transporter = createTransporter(`${smtp.url}?pipelining=true&maxConnections=2`);
  const raw = rawSender(transporter);
  after(() => transporter.close());

  it("hands over the composed bytes exactly, dot-stuffing lines that start with a dot", async () => {
    const sent = rawMessage("dots", [".", ".leading dot", "..two dots", "end."].join("\r\n"));
    const r = await raw({ from: "a@example.com", to: ["b@example.com"] }, sent);
    assert.match(r.response, /^250 .*queued as/);
    const got = smtp.messages.find((m) => m.messageId === "<dots@example.com>");
    assert.ok(got);
    assert.equal(got.raw.toString("latin1").replace(/\r\n$/, ""), sent.toString("latin1").replace(/\r\n$/, ""));
  });

  it("reports accepted and refused recipients, and keeps the connection usable after a refused transaction", async () => {
    smtp.setFaults((ctx) => {
      if (ctx.phase === "rcpt" && ctx.recipient?.startsWith("nobody")) return { reply: 550, message: "5.1.1 No such user" };
      if (ctx.phase === "mail" && ctx.session > 0 && smtp.messages.length === 2) return undefined;
      return undefined;
    });
    const r = await raw({ from: "a@example.com", to: ["x@example.com", "nobody@example.com"] }, rawMessage("partial", "x"));
    assert.deepEqual(r.accepted, ["x@example.com"]);
    assert.deepEqual(r.rejected, ["nobody@example.com"]);
    const err = await raw({ from: "a@example.com", to: ["nobody1@example.com", "nobody2@example.com"] }, rawMessage("none", "x")).catch((e: unknown) => e);
    assert.equal(classifyError(err).kind, "permanent");
    assert.equal(classifyError(err).responseCode, 550);
    smtp.setFaults((ctx) => (ctx.phase === "rcpt" ? { reply: 451, message: "4.3.0 later" } : undefined));
    const soft = await raw({ from: "a@example.com", to: ["y@example.com"] }, rawMessage("soft", "x")).catch((e: unknown) => e);
    assert.equal(classifyError(soft).kind, "transient");
    smtp.setFaults((ctx) => (ctx.phase === "mail" ? { reply: 553, message: "5.7.1 Sender refused" } : undefined));
    const sender = await raw({ from: "bad@example.com", to: ["y@example.com"] }, rawMessage("sender", "x")).catch((e: unknown) => e);
    assert.equal(classifyError(sender).kind, "permanent");
    smtp.setFaults(null);
    const ok = await raw({ from: "a@example.com", to: ["z@example.com"] }, rawMessage("after", "x"));
    assert.deepEqual(ok.accepted, ["z@example.com"]);
    assert.equal(smtp.countByMessageId().get("<after@example.com>"), 1);
  });

  it("a refused connection is a transient failure", async () => {
    const down = createTransporter("smtp://127.0.0.1:1?pipelining=true");
    const err = await rawSender(down)({ from: "a@example.com", to: ["b@example.com"] }, rawMessage("down", "x")).catch((e: unknown) => e);
    down.close();
    assert.equal(classifyError(err).kind, "transient");
  });

  it("is refused with TLS or credentials, which it does not speak", () => {
    assert.throws(() => createTransporter("smtps://127.0.0.1:465?pipelining=true"), TransportConfigError);
    assert.throws(() => createTransporter("smtp://u:secret@127.0.0.1:25?pipelining=true"), (e: unknown) => e instanceof TransportConfigError && !String(e).includes("secret"));
  });

  it("is the default for a loopback host without credentials, and nodemailer's pool otherwise", () => {
    const name = (spec: string) => {
      const t = createTransporter(spec);
      try {
        return t.transporter.name;
      } finally {
        t.close();
      }
    };
    assert.equal(name("smtp://127.0.0.1:2525"), "SMTP (pipelined)");
    assert.equal(name("smtp://localhost:25"), "SMTP (pipelined)");
    assert.equal(name("smtp://[::1]:25"), "SMTP (pipelined)");
    assert.equal(name("smtp://127.0.0.1:2525?pipelining=false"), "SMTP (pool)");
    assert.equal(name("smtp://u:p@127.0.0.1:2525"), "SMTP (pool)");
    assert.equal(name("smtp://127.0.0.1:2525?requireTLS=true"), "SMTP (pool)");
    assert.equal(name("smtp://127.0.0.1:2525?rateLimit=10"), "SMTP (pool)");
    assert.equal(name("smtp://mail.example.com:25"), "SMTP (pool)");
    assert.equal(name("smtp://mail.example.com:25?pipelining=true"), "SMTP (pipelined)");
    assert.match(describeTransport("smtp://127.0.0.1:2525"), /pipelined plain SMTP/);
    assert.match(describeTransport("smtp://mail.example.com"), /pooled SMTP/);
  });

  it("sends the commands one at a time to a server that does not offer PIPELINING", async () => {
    await withOneConnection({ hidePipelining: true }, async (plain, send) => {
      const ok = await send({ from: "a@example.com", to: ["x@example.com", "y@example.com"] }, rawMessage("lockstep", ".dot\r\nbody"));
      assert.deepEqual(ok.accepted, ["x@example.com", "y@example.com"]);
      plain.setFaults((ctx) => (ctx.phase === "rcpt" && ctx.recipient?.startsWith("nobody") ? { reply: 550, message: "5.1.1 No such user" } : undefined));
      const part = await send({ from: "a@example.com", to: ["nobody@example.com", "z@example.com"] }, rawMessage("lockstep-part", "x"));
      assert.deepEqual(part.rejected, ["nobody@example.com"]);
      const none = await send({ from: "a@example.com", to: ["nobody@example.com"] }, rawMessage("lockstep-none", "x")).catch((e: unknown) => e);
      assert.equal(classifyError(none).kind, "permanent");
      plain.setFaults((ctx) => (ctx.phase === "mail" ? { reply: 451, message: "4.3.0 later" } : undefined));
      const soft = await send({ from: "a@example.com", to: ["y@example.com"] }, rawMessage("lockstep-soft", "x")).catch((e: unknown) => e);
      assert.equal(classifyError(soft).kind, "transient");
      plain.setFaults(null);
      await send({ from: "a@example.com", to: ["z@example.com"] }, rawMessage("lockstep-after", "x"));
      const seen = plain.countByMessageId();
      assert.deepEqual(
        ["<lockstep@example.com>", "<lockstep-part@example.com>", "<lockstep-none@example.com>", "<lockstep-soft@example.com>", "<lockstep-after@example.com>"].map((id) => seen.get(id) ?? 0),
        [1, 1, 0, 0, 1],
      );
      const got = plain.messages.find((m) => m.messageId === "<lockstep@example.com>")!;
      assert.match(got.raw.toString("latin1"), /\r\n\.dot\r\nbody/);
    });
  });

  it("greets a server without ESMTP with HELO, and hands mail over one command at a time", async () => {
    await withOneConnection({ disableEhlo: true }, async (old, send) => {
      const results = await Promise.all([0, 1, 2].map((i) => send({ from: "a@example.com", to: [`h${i}@example.com`] }, rawMessage(`helo-${i}`, "x"))));
      for (const r of results) assert.match(r.response, /^250 /);
      assert.deepEqual([0, 1, 2].map((i) => old.countByMessageId().get(`<helo-${i}@example.com>`)), [1, 1, 1]);
    });
  });

  for (const pipelining of [true, false]) {
    it(`a DATA deferred with 4xx after one recipient was accepted and one refused is transient (${pipelining ? "pipelined" : "one at a time"})`, async () => {
      const peer = await startScriptedSmtp({ pipelining, rcpt: (a) => (a.startsWith("bad") ? "550 5.1.1 No such user" : "250 2.1.5 Ok"), data: () => "451 4.3.0 Error: queue file write error" });
      const t = createTransporter(`smtp://127.0.0.1:${peer.port}?maxConnections=1`);
      try {
        const err = await rawSender(t)({ from: "a@example.com", to: ["good@example.com", "bad@example.com"] }, rawMessage("data451", "x")).catch((e: unknown) => e);
        const c = classifyError(err);
        assert.equal(c.kind, "transient");
        assert.equal(c.responseCode, 451);
        assert.ok(!peer.log.includes("<body>"), "no message was sent");
      } finally {
        t.close();
        await peer.close();
      }
    });
  }

  it("a session refused at the greeting (554) is a transient failure through either SMTP client: the MTA said nothing about the mail", async () => {
    const peer = await startScriptedSmtp({ greeting: "554 5.7.1 No SMTP service here" });
    try {
      for (const query of ["", "&pipelining=false"]) {
        const t = createTransporter(`smtp://127.0.0.1:${peer.port}?maxConnections=1${query}`);
        try {
          const err = await t.sendMail({ envelope: { from: "a@example.com", to: ["x@example.com"] }, raw: rawMessage("greet", "x") }).catch((e: unknown) => e);
          const c = classifyError(err);
          assert.equal(c.kind, "transient", `${t.transporter.name}: ${c.message}`);
          assert.equal(c.responseCode, 554);
        } finally {
          t.close();
        }
      }
    } finally {
      await peer.close();
    }
  });

  it("a reply line that is not SMTP fails the connection, and the mail is a transient failure", async () => {
    const peer = await startScriptedSmtp({ rcpt: () => "hello there" });
    const t = createTransporter(`smtp://127.0.0.1:${peer.port}?maxConnections=1`);
    try {
      const err = await rawSender(t)({ from: "a@example.com", to: ["x@example.com"] }, rawMessage("garbage", "x")).catch((e: unknown) => e);
      const c = classifyError(err);
      assert.equal(c.kind, "transient");
      assert.equal(c.code, "EPROTOCOL");
    } finally {
      t.close();
      await peer.close();
    }
  });

  it("reads replies that arrive in pieces: a line split across reads, a multi-line reply, several replies in one read", async () => {
    // A peer of its own that writes every reply a few bytes at a time (each piece its own TCP
    // segment), then answers the next group in one piece: the client must join lines across reads
    // (its read buffer is reused for every read) and split several replies out of one.
    const received: string[] = [];
    const server = net.createServer((socket) => {
      let pending = Promise.resolve();
      const say = (text: string, pieces: number) => {
        pending = pending.then(async () => {
          const size = Math.max(1, Math.ceil(text.length / pieces));
          for (let i = 0; i < text.length; i += size) {
            socket.write(text.slice(i, i + size));
            await new Promise((r) => setTimeout(r, 2));
          }
        });
      };
      say("220 pieces ESMTP\r\n", 7);
      let inData = false;
      let buffer = "";
      socket.on("data", (d: Buffer) => {
        buffer += d.toString("latin1");
        // Every reply to this read in one string, written in 3 pieces: replies share pieces and
        // lines are cut in the middle.
        let out = "";
        const reply = (text: string) => (out += text);
        let i: number;
        while ((i = buffer.indexOf("\r\n")) >= 0) {
          const line = buffer.slice(0, i);
          buffer = buffer.slice(i + 2);
          if (inData) {
            if (line === ".") {
              inData = false;
              reply(`250 2.0.0 Ok: queued as PIECES${received.length}\r\n`);
            } else received.push(line);
            continue;
          }
          if (line.startsWith("EHLO")) reply("250-pieces.example\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 DSN\r\n");
          else if (line.startsWith("MAIL")) reply("250 2.1.0 Ok\r\n");
          else if (line.startsWith("RCPT")) reply("250 2.1.5 Ok\r\n");
          else if (line === "DATA") {
            inData = true;
            reply("354 go ahead\r\n");
          } else if (line === "QUIT") reply("221 bye\r\n");
        }
        if (out !== "") say(out, 3);
      });
      socket.on("error", () => {});
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    const port = (server.address() as net.AddressInfo).port;
    const t = createTransporter(`smtp://127.0.0.1:${port}?maxConnections=1`);
    try {
      const send = rawSender(t);
      const results = await Promise.all([1, 2, 3].map((n) => send({ from: "a@example.com", to: ["x@example.com"] }, rawMessage(`pieces-${n}`, `body ${n}`))));
      assert.ok(results.every((r) => /^250 2\.0\.0 Ok: queued as PIECES\d+$/.test(r.response)), JSON.stringify(results.map((r) => r.response)));
      assert.deepEqual(received.filter((l) => l.startsWith("Message-ID")), ["Message-ID: <pieces-1@example.com>", "Message-ID: <pieces-2@example.com>", "Message-ID: <pieces-3@example.com>"]);
    } finally {
      t.close();
      await new Promise((r) => server.close(r));
    }
  });

  it("carries several transactions at once on one connection, each answered on its own", async () => {
    await withOneConnection({}, async (one, send) => {
      one.setFaults((ctx) => {
        if (ctx.phase === "rcpt" && ctx.recipient === "refused@example.com") return { reply: 550, message: "5.1.1 No such user" };
        if (ctx.phase === "data" && ctx.messageId === "<burst-7@example.com>") return { reply: 452, message: "4.3.1 Out of memory" };
        if (ctx.phase === "data" && ctx.messageId === "<burst-11@example.com>") return { reply: 554, message: "5.6.0 Bad message" };
        return undefined;
      });
      const results = await Promise.allSettled(
        Array.from({ length: 40 }, (_, i) => send({ from: "a@example.com", to: [i === 3 ? "refused@example.com" : `r${i}@example.com`] }, rawMessage(`burst-${i}`, `.body ${i}`))),
      );
      const kinds = results.map((r) => (r.status === "fulfilled" ? "ok" : classifyError(r.reason).kind));
      assert.equal(kinds[3], "permanent");
      assert.equal(kinds[7], "transient");
      assert.equal(kinds[11], "permanent");
      assert.equal(kinds.filter((k) => k === "ok").length, 37);
      const seen = one.countByMessageId();
      results.forEach((r, i) => assert.equal(seen.get(`<burst-${i}@example.com>`) ?? 0, r.status === "fulfilled" ? 1 : 0, `burst-${i}`));
      for (const r of results) if (r.status === "fulfilled") assert.match(r.value.response, /^250 /);
      // Each reply went to its own transaction: the queue id in a 250 is that of the message recorded under it.
      for (const [i, r] of results.entries()) {
        if (r.status !== "fulfilled") continue;
        const got = one.messages.find((m) => m.messageId === `<burst-${i}@example.com>`)!;
        assert.ok(r.value.response.includes(got.queueId), `burst-${i}: ${r.value.response} vs ${got.queueId}`);
      }
      assert.equal(one.sessions, 1, "one connection carried them all");
    });
  });

  it("switches to nodemailer's pool for good when the MTA demands STARTTLS or AUTH (530), losing no mail", async () => {
    const warnings: Error[] = [];
    const onWarning = (w: Error) => warnings.push(w);
    process.on("warning", onWarning);
    try {
      await withOneConnection({}, async (strict, send) => {
        // The first connection (the pipelining client's) is refused with 530 at MAIL FROM, as Postfix
        // does with smtpd_tls_security_level=encrypt; later connections (nodemailer's) are served.
        strict.setFaults((ctx) => (ctx.phase === "mail" && ctx.session === 1 ? { reply: 530, message: "5.7.0 Must issue a STARTTLS command first" } : undefined));
        const results = await Promise.all(Array.from({ length: 6 }, (_, i) => send({ from: "a@example.com", to: [`f${i}@example.com`] }, rawMessage(`fallback-${i}`, "x"))));
        for (const r of results) assert.match(r.response, /^250 /);
        const seen = strict.countByMessageId();
        for (let i = 0; i < 6; i++) assert.equal(seen.get(`<fallback-${i}@example.com>`), 1, `fallback-${i}`);
        assert.ok(strict.messages.every((m) => m.session > 1), "nothing was taken on the refused connection");
      });
      await new Promise((r) => setImmediate(r));
      assert.equal(warnings.filter((w) => (w as { code?: string }).code === "MAIL_OUTBOX_PIPELINING_FALLBACK").length, 1);
    } finally {
      process.off("warning", onWarning);
    }
  });

  it("carries the relay: 300 enqueued mails each arrive once", async () => {
    const fx = await freshSqlite();
    const prisma: any = (await prismaClientFor(fx.url)).$extends(mailOutbox({ defaultFrom: "app@example.com" }));
    try {
      const mails = await prisma.outboxEmail.enqueueMany(Array.from({ length: 300 }, (_, i) => ({ to: `p${i}@example.com`, subject: `p ${i}`, text: `.line ${i}\n.\nend` })));
      const counts = await createRelay({ databaseUrl: fx.url, transport: `${smtp.url}?pipelining=true`, logger: false }).runOnce();
      assert.equal(counts.sent, 300);
      const seen = smtp.countByMessageId();
      for (const m of mails) assert.equal(seen.get(m.messageId), 1);
    } finally {
      await prisma.$disconnect();
      await fx.cleanup();
    }
  });
});
