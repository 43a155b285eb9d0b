/**
 * Exactly the committed bytes on every transport, through the real Postfix that
 * scripts/install-postfix.sh sets up (needPostfix: skipped locally without it, a failure in CI).
 *
 * Rows are stored with hand-made `raw` bytes (a Prisma create, as a row written before compose
 * normalised line endings, or by other means, would be), the relay hands them to Postfix over each
 * of the four transports, and the body in the delivered Maildir file (after the headers Postfix
 * adds; Maildir stores LF line ends) must be the same bytes on all four.
 */
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import type { TestContext } from "node:test";
import { createRelay } from "../src/index.js";
import { newId } from "../src/ids.js";
import { needPostfix, POSTFIX_SENDMAIL } from "./support/services.js";
import { TEST_ADDRESS, findDelivered } from "./support/postfix.js";
import { freshSqlite, prismaClientFor } from "./support/db.js";

const TRANSPORTS = [
  { name: "smtp:// with the pipelining client", spec: "smtp://127.0.0.1:25?timeout=10000" },
  { name: "smtp:// with nodemailer's pool (pipelining=false)", spec: "smtp://127.0.0.1:25?pipelining=false&timeout=10000" },
  { name: "sendmail: (pipe)", spec: `sendmail:${POSTFIX_SENDMAIL}?timeout=10000` },
  { name: "sendmail-bs: (SMTP over sendmail -bs)", spec: `sendmail-bs:${POSTFIX_SENDMAIL}?timeout=10000` },
] as const;

/** Every line-end trap: dot lines, a lone CR before a dot, a lone LF, CR CR LF, no final newline. */
const TRAP_BODY = Buffer.from(".leading dot\r\n.\r\n..two dots\r\nlone CR\r.\r\nafter lone CR\r\nlone LF\nafter lone LF\r\nCR CR LF\r\r\nlast line without newline", "latin1");
/** What the mailbox must hold for it: each lone CR and LF a line end of its own, LF line ends, a final newline. */
const TRAP_DELIVERED = ".leading dot\n.\n..two dots\nlone CR\n.\nafter lone CR\nlone LF\nafter lone LF\nCR CR LF\n\nlast line without newline\n";

const EIGHT_BIT_BODY = "Grüße aus Köln, 8 bit: äöü ß €\r\n";

function rawMessage(messageId: string, subject: string, body: Buffer, headers: string[] = []): Buffer {
  const head = [
    "From: App <app@localhost>",
    `To: ${TEST_ADDRESS}`,
    `Message-ID: ${messageId}`,
    `Subject: ${subject}`,
    `Date: ${new Date().toUTCString()}`,
    ...headers,
    "",
    "",
  ].join("\r\n");
  return Buffer.concat([Buffer.from(head, "latin1"), body]);
}

/** The body of a delivered Maildir file: everything after the first empty line. */
function bodyOf(delivered: Buffer): Buffer {
  const end = delivered.indexOf("\n\n");
  assert.ok(end >= 0, "the delivered file has a header section");
  return delivered.subarray(end + 2);
}

async function deliver(t: TestContext, spec: string, rows: { messageId: string; raw: Buffer }[]): Promise<void> {
  const fx = await freshSqlite(t);
  const prisma = await prismaClientFor(fx.url, t);
  const now = new Date();
  for (const r of rows) {
    await prisma.outboxEmail.create({
      data: { id: newId(), messageId: r.messageId, envelopeFrom: "app@localhost", envelopeTo: [TEST_ADDRESS], subject: "wire", raw: new Uint8Array(r.raw), size: r.raw.length, maxAttempts: 3, sendAt: now, nextAttemptAt: now },
    });
  }
  const counts = await createRelay({ databaseUrl: fx.url, transport: spec, pollIntervalMs: 50, logger: false }).runOnce();
  assert.equal(counts.sent, rows.length, `sent ${counts.sent} of ${rows.length} (dead ${counts.dead}, retried ${counts.retried})`);
}

describe("the same committed bytes through Postfix on every transport", () => {
  const trapBodies = new Map<string, Buffer>();

  for (const transport of TRANSPORTS) {
    test(`${transport.name}: dot lines, lone CR, lone LF, CR CR LF and a missing final newline arrive as the same lines; an 8-bit message arrives intact`, async (t) => {
      if (!needPostfix(t)) return;
      const tag = `${transport.name.replace(/\W+/g, "-")}${newId().slice(0, 8)}`;
      const trapId = `<wire-trap-${tag}@outbox.test>`;
      const trap = { messageId: trapId, raw: rawMessage(trapId, `wire trap via ${transport.name}`, TRAP_BODY) };
      const eightId = `<wire-8bit-${tag}@outbox.test>`;
      const eightHeaders = ["MIME-Version: 1.0", "Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: 8bit"];
      const eight = { messageId: eightId, raw: rawMessage(eightId, `8-bit via ${transport.name}`, Buffer.from(EIGHT_BIT_BODY, "utf8"), eightHeaders) };
      await deliver(t, transport.spec, [trap, eight]);

      const trapped = await findDelivered(trap.messageId, 15_000);
      assert.ok(trapped, `${trap.messageId} delivered`);
      const body = bodyOf(trapped);
      assert.equal(body.toString("latin1"), TRAP_DELIVERED);
      trapBodies.set(transport.name, body);

      const eightBit = await findDelivered(eight.messageId, 15_000);
      assert.ok(eightBit, `${eight.messageId} delivered`);
      assert.deepEqual(bodyOf(eightBit), Buffer.from(EIGHT_BIT_BODY.replace(/\r\n/g, "\n"), "utf8"));
      assert.match(eightBit.toString("latin1"), /^Content-Transfer-Encoding: 8bit$/m, "not converted on the way");
    });
  }

  test("the four transports delivered byte-identical bodies for the same stored bytes", (t) => {
    if (!needPostfix(t)) return;
    assert.equal(trapBodies.size, TRANSPORTS.length, "every transport delivered");
    const [first, ...rest] = [...trapBodies.values()];
    for (const b of rest) assert.deepEqual(b, first);
  });
});
