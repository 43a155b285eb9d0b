/**
 * The faulty MTA, in a process of its own so that relay kills and database restarts never disturb
 * it. A real SMTP server (testkit/smtp.ts, the `smtp-server` package) with a fault hook driven
 * by soak/faults.ts. Started by soak/mta.ts with an IPC channel; answers commands on it and keeps,
 * for every message it took, one `MtaCopy` (Message-ID, which fault it went through, rollback marker).
 */
import { startTestSmtp, type Fault, type FaultContext } from "../testkit/smtp.js";
import {
  fateOf,
  isRefusedRecipient,
  NO_FAULTS,
  OP_HEADER,
  ROLLBACK_OP,
  seeded,
  type CopyKind,
  type FaultRates,
  type MtaCopy,
} from "./faults.js";

export interface MtaConfig {
  readonly rates: FaultRates;
  readonly rejectRate: number;
  readonly shortStallMs: number;
  readonly longStallMs: number;
}

export type MtaCommand =
  | { readonly id: number; readonly cmd: "configure"; readonly config: MtaConfig }
  | { readonly id: number; readonly cmd: "refuse" }
  | { readonly id: number; readonly cmd: "accept" }
  | { readonly id: number; readonly cmd: "report" }
  | { readonly id: number; readonly cmd: "close" };

export interface MtaReport {
  readonly copies: MtaCopy[];
  /** How often each fault was injected, by name. */
  readonly injected: Record<string, number>;
  readonly sessions: number;
}

const send = (msg: unknown) => process.send?.(msg);

const random = seeded(Number(process.env.SOAK_SEED ?? 1) ^ 0x5eed);
let config: MtaConfig = { rates: NO_FAULTS, rejectRate: Number(process.env.SOAK_REJECT_RATE ?? 0), shortStallMs: 200, longStallMs: 5000 };
const injected: Record<string, number> = {};
const count = (name: string) => (injected[name] = (injected[name] ?? 0) + 1);
/** Kind of each message the server records, in recording order (the hook runs just before the record). */
const kinds: CopyKind[] = [];
/** Sessions whose current message has every recipient deferred. */
const deferAll = new Set<number>();
const copies: MtaCopy[] = [];
/** When the server stopped listening: open sessions were cut, maybe between keeping a message and answering it. */
const refusedAt: number[] = [];

function hook(ctx: FaultContext): Fault | undefined {
  const r = config.rates;
  const draw = () => random();
  switch (ctx.phase) {
    case "connect": {
      const x = draw();
      if (x < r.connect421) return count("421 at greeting"), { reply: 421 };
      if (x < r.connect421 + r.connectDrop) return count("drop at greeting"), { drop: true };
      return undefined;
    }
    case "mail": {
      deferAll.delete(ctx.session);
      const x = draw();
      if (x < r.mail451) return count("451 to MAIL FROM"), { reply: 451 };
      if (x < r.mail451 + r.mailDrop) return count("drop at MAIL FROM"), { drop: true };
      if (x < r.mail451 + r.mailDrop + r.rcpt451All) deferAll.add(ctx.session);
      return undefined;
    }
    case "rcpt": {
      if (ctx.recipient !== undefined && isRefusedRecipient(ctx.recipient)) {
        count("550 to a refused recipient");
        return { reply: 550, message: "5.1.1 Recipient address rejected: User unknown (soak)" };
      }
      if (deferAll.has(ctx.session)) return count("451 to every RCPT TO"), { reply: 451 };
      if (draw() < r.rcpt450One) return count("450 to one RCPT TO"), { reply: 450, message: "4.2.0 Greylisted, try again later (soak)" };
      return undefined;
    }
    case "data": {
      const messageId = ctx.messageId ?? "";
      if (fateOf(messageId, config.rejectRate) === "reject") {
        count("554 at end of DATA (fixed per Message-ID)");
        return { reply: 554, message: "5.7.1 Message content rejected (soak)" };
      }
      let x = draw();
      const pick = (rate: number) => {
        if (x < rate) return true;
        x -= rate;
        return false;
      };
      if (pick(r.data451)) return count("451 at end of DATA"), { reply: 451 };
      if (pick(r.dataDropKept)) return count("drop after DATA, kept"), kinds.push("drop-kept"), { drop: true };
      if (pick(r.dataDropLost)) return count("drop after DATA, not kept"), { drop: true, keep: false };
      if (pick(r.stallShort)) return count("short stall"), kinds.push("stall-short"), { stallMs: config.shortStallMs };
      if (pick(r.stallLong)) return count("stall past the relay's timeout"), kinds.push("stall-long"), { stallMs: config.longStallMs };
      kinds.push("ok");
      return undefined;
    }
  }
}

const smtp = await startTestSmtp({ faults: hook });

function rollbackMarked(raw: Buffer): boolean {
  const text = raw.subarray(0, 16 * 1024).toString("latin1");
  const end = text.search(/\r?\n\r?\n/);
  const head = end >= 0 ? text.slice(0, end) : text;
  return new RegExp(`^${OP_HEADER}:[ \\t]*${ROLLBACK_OP}[ \\t]*$`, "im").test(head);
}

/** Move what the server recorded into compact copies (and drop the raw bytes). */
function drain(): void {
  const taken = smtp.messages.splice(0);
  const taggedKinds = kinds.splice(0, taken.length);
  taken.forEach((m, i) => {
    copies.push({
      messageId: m.messageId ?? "(none)",
      kind: taggedKinds[i] ?? "ok",
      rollbackMarker: rollbackMarked(m.raw),
      recipients: m.recipients.map((r) => r.toLowerCase()),
      at: m.receivedAt,
    });
  });
}
const drainTimer = setInterval(drain, 250);

/**
 * A copy kept while its 250 was still to be written (immediately, or after a stall) when a
 * refusal cut every open session: for the relay that is a drop after DATA.
 */
function cutByRefusal(c: MtaCopy): MtaCopy {
  if (c.kind === "drop-kept") return c;
  const answerBy = c.at + (c.kind === "stall-short" ? config.shortStallMs : c.kind === "stall-long" ? config.longStallMs : 0) + 100;
  return refusedAt.some((t) => t >= c.at - 10 && t <= answerBy) ? { ...c, kind: "drop-kept" } : c;
}

process.on("message", (raw: unknown) => {
  const msg = raw as MtaCommand;
  void (async () => {
    try {
      let result: unknown = null;
      if (msg.cmd === "configure") config = msg.config;
      else if (msg.cmd === "refuse") {
        refusedAt.push(Date.now());
        await smtp.refuseConnections();
      }
      else if (msg.cmd === "accept") await smtp.acceptConnections();
      else if (msg.cmd === "report") {
        drain();
        result = { copies: copies.map(cutByRefusal), injected, sessions: smtp.sessions } satisfies MtaReport;
      } else if (msg.cmd === "close") {
        clearInterval(drainTimer);
        await smtp.close();
        send({ id: msg.id, ok: true, result: null });
        process.disconnect?.();
        return;
      }
      send({ id: msg.id, ok: true, result });
    } catch (err) {
      send({ id: msg.id, ok: false, error: err instanceof Error ? err.message : String(err) });
    }
  })();
});
// The parent died: do not linger.
process.on("disconnect", () => process.exit(0));

send({ ready: true, url: smtp.url, port: smtp.port });
