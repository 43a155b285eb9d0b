/**
 * The `verify` lease-expiry policy: an uncertain hand-off (the relay died between handing a mail
 * to the MTA and recording the answer) is settled from the MTA's own record.
 *
 * - The pure decision (`decideVerify`), case by case.
 * - Against the real Postfix on this machine: a relay process SIGKILLed right after Postfix's
 *   `250` (its write of the outcome hangs, so the kill lands in the duplicate window every time):
 *   a follower records Postfix's `queued` line, and a second relay under "verify" marks the mail
 *   sent with the queue id found: exactly one copy in the Maildir. And a relay SIGKILLed before
 *   Postfix got the final dot (a proxy holds it back): nothing is resent until a follower has read
 *   past the moment the mail was held, then it is handed over again: exactly one copy.
 */
import { describe, it, after, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import net from "node:net";
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { createRelay, mailOutbox, openDatabase, type Relay } from "../src/index.js";
import type { VerifiedEvent } from "../src/fate/verify.js";
import { decideVerify, DEFAULT_VERIFY_WINDOW_MS, postfixRunning, VERIFY_MARGIN_MS } from "../src/fate/verify.js";
import { followLog } from "../src/fate/follow-log.js";
import type { Db } from "../src/db.js";
import type { VerifyCandidate } from "../src/store.js";
import { freshPostgres, freshSqlite, prismaClientFor, sqliteOf } from "./support/db.js";
import { needPostfix, needPostgres } from "./support/services.js";
import { deliveredCount, findDelivered, POSTFIX_LOG, TEST_ADDRESS } from "./support/postfix.js";

// ---- the pure decision ------------------------------------------------------------------------

const T0 = new Date("2031-05-06T07:00:00.000Z");
const at = (ms: number) => new Date(T0.getTime() + ms);
const candidate = (over: Partial<VerifyCandidate> = {}): VerifyCandidate => ({
  id: "0190b5a4-0000-7000-8000-000000000001",
  messageId: "<m1@example.com>",
  envelopeTo: ["ann@example.com"],
  heldAt: T0,
  knownQueueIds: [],
  ...over,
});

describe("decideVerify: what the MTA's record says about a held uncertain hand-off", () => {
  it("a queued event under a queue id the outbox did not know means the MTA has it: received, with that queue id", () => {
    const c = candidate();
    const [d] = decideVerify({ candidates: [c], evidence: new Map([[c.id, [{ queueId: "4Xy1Z2", at: at(-300) }]]]), caughtUpAt: null, now: at(100) });
    assert.equal(d?.kind, "received");
    assert.ok(d?.kind === "received");
    assert.equal(d.resolution.queueId, "4Xy1Z2");
    assert.deepEqual(d.resolution.at, at(-300));
    assert.match(d.resolution.response, /queued it as 4Xy1Z2/);
  });

  it("a queue id recorded for an earlier attempt is no evidence of the lost one", () => {
    const c = candidate({ knownQueueIds: ["AAA111"] });
    const evidence = new Map([[c.id, [{ queueId: "aaa111", at: at(-60_000) }]]]);
    assert.equal(decideVerify({ candidates: [c], evidence, caughtUpAt: null, now: at(100) })[0]?.kind, "wait");
    assert.equal(decideVerify({ candidates: [c], evidence, caughtUpAt: at(VERIFY_MARGIN_MS), now: at(VERIFY_MARGIN_MS + 10) })[0]?.kind, "absent");
  });

  it("of several unknown queue ids, the earliest queued event is the one reported", () => {
    const c = candidate();
    const evidence = new Map([[c.id, [{ queueId: "LATER", at: at(-10) }, { queueId: "FIRST", at: at(-500) }]]]);
    const [d] = decideVerify({ candidates: [c], evidence, caughtUpAt: null, now: at(0) });
    assert.ok(d?.kind === "received");
    assert.equal(d.resolution.queueId, "FIRST");
  });

  it("no evidence and a follower that read the log past heldAt + margin: absent, handed over again", () => {
    const [d] = decideVerify({ candidates: [candidate()], evidence: new Map(), caughtUpAt: at(VERIFY_MARGIN_MS), now: at(VERIFY_MARGIN_MS + 1) });
    assert.equal(d?.kind, "absent");
    assert.ok(d?.kind === "absent");
    assert.match(d.resolution.response, /not in the MTA's log/);
  });

  it("a follower that has not read past heldAt + margin yet: wait, nothing is resent", () => {
    const [d] = decideVerify({ candidates: [candidate()], evidence: new Map(), caughtUpAt: at(VERIFY_MARGIN_MS - 1), now: at(60_000) });
    assert.deepEqual(d && { kind: d.kind, reason: d.kind === "wait" ? d.reason : null }, { kind: "wait", reason: "behind" });
  });

  it("no follower ever ran against the database: wait, and say so", () => {
    const [d] = decideVerify({ candidates: [candidate()], evidence: new Map(), caughtUpAt: null, now: at(60_000) });
    assert.deepEqual(d && { kind: d.kind, reason: d.kind === "wait" ? d.reason : null }, { kind: "wait", reason: "no-follower" });
  });

  it("held longer than the window without evidence: left held for a person, even if a follower is caught up", () => {
    const now = at(DEFAULT_VERIFY_WINDOW_MS);
    assert.equal(decideVerify({ candidates: [candidate()], evidence: new Map(), caughtUpAt: now, now })[0]?.kind, "expired");
    assert.equal(decideVerify({ candidates: [candidate()], evidence: new Map(), caughtUpAt: null, now: at(2000), windowMs: 2000 })[0]?.kind, "expired");
  });

  it("evidence still settles a mail past the window (the MTA has it: marking it sent is the truth)", () => {
    const c = candidate();
    const [d] = decideVerify({ candidates: [c], evidence: new Map([[c.id, [{ queueId: "Q1", at: at(10) }]]]), caughtUpAt: null, now: at(DEFAULT_VERIFY_WINDOW_MS * 2) });
    assert.equal(d?.kind, "received");
  });

  it("local submission (sendmail:, sendmail-bs:): a silent log proves nothing until Postfix logs something after the hold, and its pickup had time to drain the maildrop", () => {
    const base = { candidates: [candidate()], evidence: new Map(), caughtUpAt: at(20_000), now: at(20_000), requireMtaActivity: true };
    const kind = (d: ReturnType<typeof decideVerify>[number] | undefined) => (d?.kind === "wait" ? `wait ${d.reason}` : d?.kind);
    assert.equal(kind(decideVerify({ ...base, logEventTimes: [] })[0]), "wait mta-quiet", "Postfix stopped: its log is silent");
    assert.equal(kind(decideVerify({ ...base, logEventTimes: [at(VERIFY_MARGIN_MS - 1)] })[0]), "wait mta-quiet", "activity before heldAt + margin does not count");
    assert.equal(kind(decideVerify({ ...base, logEventTimes: [at(18_000)] })[0]), "wait behind", "Postfix just came back: pickup may still be draining the maildrop");
    assert.equal(kind(decideVerify({ ...base, logEventTimes: [at(17_000), at(19_999)] })[0]), "absent", "the first sign of life is 3 s behind the follower");
    assert.equal(kind(decideVerify({ ...base, requireMtaActivity: false })[0]), "absent", "over SMTP the follower's position is enough");
  });

  it("local submission on a quiet outbox: postqueue's unbroken streak of answers, begun before heldAt + margin, is a sign of life at heldAt + margin (the soak's last hold went unsettled without this)", () => {
    // Held at 0; Postfix answered every probe since 500 ms (before heldAt + margin); nothing logged since.
    const base = { candidates: [candidate()], evidence: new Map(), requireMtaActivity: true, logEventTimes: [], mtaRunningSince: at(500) };
    const kind = (d: ReturnType<typeof decideVerify>[number] | undefined) => (d?.kind === "wait" ? `wait ${d.reason}` : d?.kind);
    assert.equal(kind(decideVerify({ ...base, caughtUpAt: at(1000), now: at(1000) })[0]), "wait behind", "before heldAt + margin: too early");
    assert.equal(kind(decideVerify({ ...base, caughtUpAt: at(VERIFY_MARGIN_MS + 2999), now: at(60_000) })[0]), "wait behind", "the follower is not yet 3 s past heldAt + margin");
    assert.equal(kind(decideVerify({ ...base, caughtUpAt: at(VERIFY_MARGIN_MS + 3000), now: at(60_000) })[0]), "absent", "the streak covered heldAt + margin, the follower read 3 s past it");
    assert.equal(kind(decideVerify({ ...base, mtaRunningSince: at(10_000), caughtUpAt: at(12_999), now: at(13_000) })[0]), "wait behind", "a streak begun after the hold counts from its start");
    assert.equal(kind(decideVerify({ ...base, mtaRunningSince: at(10_000), caughtUpAt: at(13_000), now: at(13_000) })[0]), "absent");
    assert.equal(kind(decideVerify({ ...base, mtaRunningSince: null, caughtUpAt: at(60_000), now: at(60_000) })[0]), "wait mta-quiet", "the last probe said no");
  });

  it("each candidate is decided on its own, in order", () => {
    const a = candidate({ id: "a", heldAt: at(0) });
    const b = candidate({ id: "b", heldAt: at(5000) });
    const c = candidate({ id: "c", heldAt: at(0) });
    const decisions = decideVerify({ candidates: [a, b, c], evidence: new Map([["c", [{ queueId: "QC", at: at(1) }]]]), caughtUpAt: at(3000), now: at(6000) });
    assert.deepEqual(decisions.map((d) => [d.candidate.id, d.kind]), [["a", "absent"], ["b", "wait"], ["c", "received"]]);
  });
});

describe("postfixRunning: whether Postfix runs, from its postqueue", () => {
  it("says yes for a clean exit, and no for a failure, a missing program, or root's fallback that warns the mail system is down", async () => {
    const dir = mkdtempSync(path.join(tmpdir(), "verify-postqueue-"));
    try {
      const script = (name: string, body: string) => {
        const file = path.join(dir, name);
        writeFileSync(file, `#!/bin/sh\n${body}\n`);
        chmodSync(file, 0o755);
        return file;
      };
      assert.equal(await postfixRunning(script("up", "echo 'Mail queue is empty'; exit 0")), true);
      assert.equal(await postfixRunning(script("down", "echo 'postqueue: fatal: Queue report unavailable - mail system is down' >&2; exit 69")), false);
      assert.equal(
        await postfixRunning(script("root-fallback", "echo 'postqueue: warning: Mail system is down -- accessing queue directly (Connect to the postfix showq service: No such file or directory)' >&2; echo 'Mail queue is empty'; exit 0")),
        false,
      );
      assert.equal(await postfixRunning(path.join(dir, "missing")), false);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

// ---- against the real Postfix -------------------------------------------------------------------

const RELAY_PROCESS = fileURLToPath(new URL("../soak/relay-process.ts", import.meta.url));
const LEASE_MS = 1000;

type ChildEvent = Record<string, unknown> & { event: string };

/** A relay process (soak/relay-process.ts) printing its events; `waitFor` a matching one. */
function spawnRelay(env: Record<string, string>) {
  const child: ChildProcess = spawn(process.execPath, ["--import", "tsx", RELAY_PROCESS], {
    env: { ...process.env, RELAY_EVENTS: "1", SAMPLE_INTERVAL_MS: "60000", MAIL_OUTBOX_LOG_LEVEL: "error", ...env },
    stdio: ["ignore", "pipe", "inherit"],
  });
  const events: ChildEvent[] = [];
  const waiters: (() => void)[] = [];
  createInterface({ input: child.stdout! }).on("line", (line) => {
    try {
      events.push(JSON.parse(line) as ChildEvent);
    } catch {
      return;
    }
    for (const w of waiters.splice(0)) w();
  });
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  return {
    child,
    events,
    async kill(): Promise<void> {
      child.kill("SIGKILL");
      await exited;
    },
    waitFor(pred: (e: ChildEvent) => boolean, ms = 20_000): Promise<ChildEvent> {
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`timed out waiting for a relay event; saw ${JSON.stringify(events.map((e) => e.event))}`)), ms);
        const check = () => {
          const found = events.find(pred);
          if (found) {
            clearTimeout(timer);
            resolve(found);
          } else waiters.push(check);
        };
        check();
      });
    },
  };
}

/**
 * A TCP proxy to Postfix's port 25 that forwards everything except the end of DATA: the final
 * `CRLF.CRLF` is held back, so Postfix has the whole body but never the dot. `dotHeld` settles
 * when that happens.
 */
async function dotHoldingProxy(): Promise<{ port: number; dotHeld: Promise<void>; close(): Promise<void> }> {
  let markHeld!: () => void;
  const dotHeld = new Promise<void>((resolve) => (markHeld = resolve));
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const upstream = net.connect(25, "127.0.0.1");
    sockets.add(client).add(upstream);
    upstream.pipe(client);
    let dataMode = false;
    let held = false;
    let pending = Buffer.alloc(0);
    client.on("data", (chunk: Buffer) => {
      if (held) return;
      if (!dataMode) {
        upstream.write(chunk);
        if (/(^|\r\n)DATA\r\n/i.test(chunk.toString("latin1"))) dataMode = true;
        return;
      }
      pending = Buffer.concat([pending, chunk]);
      const end = pending.indexOf("\r\n.\r\n");
      if (end >= 0) {
        upstream.write(pending.subarray(0, end));
        held = true;
        markHeld();
        return;
      }
      // Keep the last bytes: the terminator may be split over two chunks.
      upstream.write(pending.subarray(0, Math.max(0, pending.length - 4)));
      pending = pending.subarray(Math.max(0, pending.length - 4));
    });
    const down = () => {
      client.destroy();
      upstream.destroy();
    };
    client.on("close", down).on("error", down);
    upstream.on("close", down).on("error", down);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    port: (server.address() as net.AddressInfo).port,
    dotHeld,
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

async function rowOf(store: Db, messageId: string): Promise<{ status: string; uncertain: number; queueId: string | null }> {
  const sql = "SELECT status, uncertain_handoffs, mta_queue_id FROM mail_outbox WHERE message_id = $1";
  const row =
    store.dialect === "postgresql"
      ? (await store.pool.query(sql, [messageId])).rows[0]
      : sqliteOf(store).db.prepare(sql.replace("$1", "?")).get(messageId);
  const r = row as { status: string; uncertain_handoffs: number | string; mta_queue_id: string | null };
  return { status: r.status, uncertain: Number(r.uncertain_handoffs), queueId: r.mta_queue_id };
}

/** Read Postfix's log once to its end into this database (the follower's cursor is per database). */
async function followOnce(store: Db): Promise<void> {
  await followLog({ store, path: POSTFIX_LOG, once: true, logger: false }).stopped;
}

function waitForEvent<T>(relay: Relay, event: "verified" | "warning" | "rescued" | "sent", pred: (e: T) => boolean = () => true, ms = 20_000): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      relay.off(event, on as never);
      reject(new Error(`no ${event} event within ${ms} ms`));
    }, ms);
    function on(e: T) {
      if (!pred(e)) return;
      clearTimeout(timer);
      relay.off(event, on as never);
      resolve(e);
    }
    relay.on(event, on as never);
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

for (const dialect of ["sqlite", "postgresql"] as const) {
  describe(`verify against a real Postfix, on ${dialect}`, () => {
    async function setup(t: TestContext) {
      if (!needPostfix(t)) return null;
      if (dialect === "postgresql" && !(await needPostgres(t))) return null;
      const fx = dialect === "sqlite" ? await freshSqlite() : await freshPostgres();
      const prisma = (await prismaClientFor(fx.url)).$extends(mailOutbox({ defaultFrom: "Shop <shop@localhost>", messageIdDomain: "verify.example.com" }));
      const store = await openDatabase(fx.url);
      const relays: Relay[] = [];
      after(async () => {
        for (const r of relays) await r.stop({ deadlineMs: 1000 }).catch(() => {});
        await store.close();
        await prisma.$disconnect();
        await fx.cleanup();
      });
      const enqueue = async (subject: string): Promise<{ id: string; messageId: string }> =>
        (await (prisma as any).outboxEmail.enqueue({ to: TEST_ADDRESS, subject, text: "verify" })) as { id: string; messageId: string };
      const verifier = () => {
        const relay = createRelay({ db: store, transport: "smtp://127.0.0.1:25", relayId: "verifier", leaseMs: LEASE_MS, pollIntervalMs: 50, leaseExpiryPolicy: "verify", logger: false });
        relays.push(relay);
        return relay;
      };
      return { url: fx.url, store, enqueue, verifier };
    }

    it("a relay killed after Postfix's 250 but before recording it: the follower finds the queued mail, verify marks it sent with that queue id, and it arrives once", async (t) => {
      const s = await setup(t);
      if (!s) return;
      const mail = await s.enqueue(`verify received ${dialect} ${Date.now()}`);
      // The follower's position: the end of the log, before the hand-off.
      await followOnce(s.store);
      const victim = spawnRelay({
        DATABASE_URL: s.url,
        MAIL_OUTBOX_TRANSPORT: "smtp://127.0.0.1:25",
        RELAY_ID: "victim",
        RELAY_OPTIONS: JSON.stringify({ leaseMs: LEASE_MS, pollIntervalMs: 50 }),
        COMPLETE_DELAY_MS: String(1e9), // the write of the outcome never happens
      });
      const sent = await victim.waitFor((e) => e.event === "sent" && e.messageId === mail.messageId);
      await victim.kill();
      assert.ok(typeof sent.queueId === "string" && sent.queueId.length > 0, "Postfix answered 250 with a queue id");

      const relay = s.verifier();
      const verified = waitForEvent<VerifiedEvent>(relay, "verified");
      const rescued = waitForEvent(relay, "rescued");
      await relay.start();
      await rescued;
      // Held, and nothing resent while the follower has not read the log past the kill.
      await sleep(VERIFY_MARGIN_MS + 500);
      assert.equal((await rowOf(s.store, mail.messageId)).status, "held");
      assert.ok(await findDelivered(mail.messageId, 10_000), "Postfix delivered the copy it took before the kill");
      await followOnce(s.store);
      const e = await verified;
      assert.deepEqual(e, { id: mail.id, messageId: mail.messageId, result: "received", queueId: sent.queueId });
      const row = await rowOf(s.store, mail.messageId);
      assert.deepEqual(row, { status: "sent", uncertain: 1, queueId: sent.queueId });
      await sleep(1500); // a resend would land by now
      assert.equal(deliveredCount(mail.messageId), 1, "exactly one copy in the Maildir");
    });

    it("a relay killed before Postfix got the final dot: nothing is resent until a follower has read past the hold, then verify hands it over again, and it arrives once", async (t) => {
      const s = await setup(t);
      if (!s) return;
      const mail = await s.enqueue(`verify absent ${dialect} ${Date.now()}`);
      const proxy = await dotHoldingProxy();
      after(() => proxy.close());
      const victim = spawnRelay({
        DATABASE_URL: s.url,
        MAIL_OUTBOX_TRANSPORT: `smtp://127.0.0.1:${proxy.port}`,
        RELAY_ID: "victim",
        RELAY_OPTIONS: JSON.stringify({ leaseMs: LEASE_MS, pollIntervalMs: 50 }),
      });
      await proxy.dotHeld;
      await victim.kill();
      await proxy.close(); // Postfix sees the connection drop inside DATA and keeps nothing

      const relay = s.verifier();
      const verified = waitForEvent<VerifiedEvent>(relay, "verified");
      const rescued = waitForEvent(relay, "rescued");
      // No follower has ever run against this database: the relay says so, and waits.
      const warning = waitForEvent<Error>(relay, "warning", (e) => /follow-log/.test(e.message));
      await relay.start();
      await rescued;
      assert.match((await warning).message, /no `mail-outbox follow-log` has recorded a position in this database/);
      await sleep(VERIFY_MARGIN_MS + 200);
      assert.equal((await rowOf(s.store, mail.messageId)).status, "held", "held while no follower has read the log");
      assert.equal(deliveredCount(mail.messageId), 0);
      // A follower reads the log to its end now, past heldAt + margin: the mail was never queued.
      await followOnce(s.store);
      const e = await verified;
      assert.deepEqual(e, { id: mail.id, messageId: mail.messageId, result: "absent", queueId: null });
      assert.ok(await findDelivered(mail.messageId, 15_000), "handed over again and delivered");
      const row = await rowOf(s.store, mail.messageId);
      assert.equal(row.status, "sent");
      assert.equal(row.uncertain, 1);
      await sleep(1000);
      assert.equal(deliveredCount(mail.messageId), 1, "exactly one copy in the Maildir");
    });
  });
}
