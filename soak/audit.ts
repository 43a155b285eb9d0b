/**
 * The audit: reconcile what the producers committed, what the outbox table says, and what the
 * MTA side accepted (by Message-ID), and say in one line whether the run kept its promises.
 *
 * A pure function of the collected facts, so test/soak/audit.test.ts can show that it catches
 * each kind of failure.
 */
import type { MtaCopy } from "./faults.js";
import { fateOf } from "./faults.js";
import type { Ledger, MailPlan } from "./producers.js";
import type { MemoryFinding } from "./relays.js";

/** One outbox row, as the audit needs it. */
export interface RowFact {
  readonly messageId: string;
  readonly status: string;
  readonly uncertainHandoffs: number;
  readonly lastError: string | null;
  readonly mtaResponse: string | null;
  readonly rejected: readonly { recipient: string; response: string | null }[] | null;
  readonly idempotencyKey: string | null;
  readonly attempts: number;
  /** Highest reply code among its attempts recorded as permanent (null: none). */
  readonly permanentCode: number | null;
  /**
   * Attempts that failed with a timeout (ETIMEDOUT, nodemailer's or the relay's handoffTimeoutMs):
   * the MTA may have taken the mail meanwhile, so one more copy is explained per timeout.
   */
  readonly timeouts: number;
}

export interface KillRecord {
  readonly how: "SIGKILL" | "SIGTERM";
  readonly relay: string;
  /** The victim's concurrency: at most this many hand-offs were in flight. */
  readonly concurrency: number;
}

export interface AuditInput {
  readonly label: string;
  readonly ledger: Ledger;
  readonly rows: readonly RowFact[];
  readonly copies: readonly MtaCopy[];
  /** Share of Message-IDs the MTA refuses with 554 (soak/faults.ts fateOf); 0 for Postfix. */
  readonly rejectRate: number;
  /** Where "delivered" was checked: `SMTP server`, `Postfix Maildir`. */
  readonly mtaName: string;
  readonly kills: readonly KillRecord[];
  /** One entry per server restart: the sum of the concurrency of the relays running at that moment. */
  readonly dbRestarts: readonly number[];
  readonly backendKills: number;
  /** Extra facts for the line (e.g. "MTA refusals 2", "postfix stops 2"). */
  readonly notes: readonly string[];
  /** The settle phase ended with no pending or sending row. */
  readonly settled: boolean;
  readonly memory: readonly MemoryFinding[];
  readonly maxRssBytes: number;
  /** Growth of RSS over a long-lived relay that counts as unbounded. */
  readonly maxGrowthBytes: number;
  /** Relay processes that exited without being told to. */
  readonly unexpectedExits: readonly string[];
  /**
   * The relays ran under leaseExpiryPolicy "verify" (with a log follower): a duplicate caused by a
   * relay death is a failure (goal 0), not something the kills explain.
   */
  readonly verifyPolicy?: boolean;
}

export interface AuditResult {
  readonly label: string;
  readonly passed: boolean;
  readonly line: string;
  /** One sentence per failed check, with up to 5 Message-IDs each. */
  readonly failures: string[];
  readonly counts: {
    committed: number;
    delivered: number;
    dead: number;
    dead5xx: number;
    deadOther: number;
    deliveredAndDead: number;
    lost: number;
    rolledBack: number;
    rolledBackDelivered: number;
    inDoubt: number;
    inDoubtCommitted: number;
    duplicates: number;
    extraCopies: number;
    dupRelayDied: number;
    dupDropAfterData: number;
    dupTimeoutAfterAccept: number;
    /** Duplicates after a timeout on the relay's side while the MTA had answered in time (the relay was slow). */
    dupRelayTimeout: number;
    dupUnexplained: number;
    bound: number;
    stuck: number;
    partial: number;
    deferredRecipientsDropped: number;
    sigkills: number;
    sigterms: number;
    /** Rows a relay died holding (uncertain_handoffs > 0). */
    uncertainRows: number;
  };
}

const MB = 1024 * 1024;
const sample = (xs: Iterable<string>, n = 5) => {
  const all = [...xs];
  return all.slice(0, n).join(", ") + (all.length > n ? `, ... (${all.length})` : "");
};

export function audit(input: AuditInput): AuditResult {
  const { ledger } = input;
  const failures: string[] = [];
  const fail = (what: string, ids: Iterable<string> = []) => {
    const list = [...ids];
    failures.push(list.length ? `${what}: ${sample(list)}` : what);
  };

  const rows = new Map(input.rows.map((r) => [r.messageId, r]));
  const copiesById = new Map<string, MtaCopy[]>();
  for (const c of input.copies) {
    const list = copiesById.get(c.messageId);
    if (list) list.push(c);
    else copiesById.set(c.messageId, [c]);
  }

  // What was committed: the ledger's commits, plus the in-doubt transactions whose mail is in the table.
  const committed = new Map<string, MailPlan>(ledger.committed);
  const rolledBack = new Map<string, MailPlan>(ledger.rolledBack);
  let inDoubtCommitted = 0;
  for (const [id, plan] of ledger.inDoubt) {
    if (rows.has(id)) {
      committed.set(id, plan);
      inDoubtCommitted++;
    } else rolledBack.set(id, plan);
  }

  // Rows nobody committed.
  const phantom = [...rows.keys()].filter((id) => !committed.has(id));
  const rolledBackCommitted = phantom.filter((id) => rolledBack.has(id));
  const unknownRows = phantom.filter((id) => !rolledBack.has(id));
  if (rolledBackCommitted.length) fail(`${rolledBackCommitted.length} mail(s) of rolled-back transactions are in the outbox table`, rolledBackCommitted);
  if (unknownRows.length) fail(`${unknownRows.length} outbox row(s) that no producer enqueued`, unknownRows);

  // MTA side: rolled-back mail must never arrive; nothing unknown should either.
  const rolledBackDelivered = new Set<string>();
  const unknownCopies = new Set<string>();
  for (const c of input.copies) {
    if (c.rollbackMarker && !committed.has(c.messageId)) rolledBackDelivered.add(c.messageId);
    else if (rolledBack.has(c.messageId)) rolledBackDelivered.add(c.messageId);
    else if (!committed.has(c.messageId)) unknownCopies.add(c.messageId);
  }
  if (rolledBackDelivered.size) fail(`${rolledBackDelivered.size} mail(s) of rolled-back transactions reached the ${input.mtaName}`, rolledBackDelivered);
  if (unknownCopies.size) fail(`${unknownCopies.size} Message-ID(s) reached the ${input.mtaName} that no committed transaction enqueued`, unknownCopies);

  // Every committed mail: delivered, or dead with its reason.
  let delivered = 0;
  let dead = 0;
  let dead5xx = 0;
  let deliveredAndDead = 0;
  let partial = 0;
  let deferredRecipientsDropped = 0;
  const deadOther: string[] = [];
  const lost: string[] = [];
  const stuck: string[] = [];
  const refusedButDelivered: string[] = [];
  const refusedNotDead: string[] = [];
  const unprovoked5xx: string[] = [];
  const partialNotRecorded: string[] = [];
  const missingRows: string[] = [];
  for (const [id, plan] of committed) {
    const row = rows.get(id);
    const atMta = (copiesById.get(id)?.length ?? 0) > 0;
    if (!row) {
      missingRows.push(id);
      if (!atMta) lost.push(id);
      else delivered++;
      continue;
    }
    const refusedWhole = plan.refused.length > 0 && plan.refused.length === plan.recipients;
    const refusedAtData = input.rejectRate > 0 && fateOf(id, input.rejectRate) === "reject";
    const shouldBeRefused = refusedWhole || refusedAtData;
    const isDead = row.status === "dead";
    const has5xx = (row.permanentCode ?? 0) >= 500 || /^5\d\d\b/.test(row.mtaResponse ?? "");
    if (atMta) delivered++;
    if (isDead) {
      dead++;
      if (has5xx) dead5xx++;
      else deadOther.push(id);
      if (atMta) deliveredAndDead++;
      if (!has5xx && !shouldBeRefused && !row.lastError) lost.push(id); // dead without a reason
      if (has5xx && !shouldBeRefused) unprovoked5xx.push(id);
    }
    if (shouldBeRefused) {
      if (atMta) refusedButDelivered.push(id);
      if (!isDead || !has5xx) refusedNotDead.push(id);
    } else if (!atMta && !isDead) {
      lost.push(id);
    }
    if (row.status !== "sent" && row.status !== "dead") stuck.push(id);
    if (row.status === "sent" && plan.refused.length > 0 && !shouldBeRefused) {
      partial++;
      const recorded = new Set((row.rejected ?? []).map((r) => r.recipient.toLowerCase()));
      if (!plan.refused.every((r) => recorded.has(r.toLowerCase()))) partialNotRecorded.push(id);
    }
    if (row.status === "sent") {
      for (const r of row.rejected ?? []) {
        if (/^4\d\d\b/.test(r.response ?? "")) deferredRecipientsDropped++;
      }
    }
  }
  if (deferredRecipientsDropped) fail(`${deferredRecipientsDropped} recipient(s) deferred with 4xx left behind on sent mail (in rejected, never retried)`);
  if (missingRows.length) fail(`${missingRows.length} committed mail(s) have no outbox row`, missingRows);
  if (lost.length) fail(`${lost.length} committed mail(s) lost: neither delivered nor dead with a reason`, lost);
  if (refusedButDelivered.length) fail(`${refusedButDelivered.length} mail(s) the MTA refuses with 5xx were delivered`, refusedButDelivered);
  if (refusedNotDead.length) fail(`${refusedNotDead.length} mail(s) the MTA refuses with 5xx are not dead with the 5xx reply recorded`, refusedNotDead);
  if (unprovoked5xx.length) fail(`${unprovoked5xx.length} mail(s) dead with a 5xx the MTA never gave them`, unprovoked5xx);
  if (partialNotRecorded.length) fail(`${partialNotRecorded.length} partly refused mail(s) sent without the refused recipients recorded`, partialNotRecorded);
  if (stuck.length) fail(`${stuck.length} row(s) stuck (not sent or dead after the run settled)`, stuck);
  if (!input.settled) fail("the run did not settle: pending or sending rows remained at the end of the settle phase");

  // Duplicates: each extra copy needs a cause.
  let duplicates = 0;
  let extraCopies = 0;
  let dupRelayDied = 0;
  let dupDrop = 0;
  let dupTimeout = 0;
  let dupRelayTimeout = 0;
  const unexplained: string[] = [];
  for (const [id, copies] of copiesById) {
    if (copies.length < 2 || !committed.has(id)) continue;
    // Count per recipient: a mail sent again only to a recipient the MTA had deferred is not a
    // duplicate, and one unknown outcome followed by a resend split over two partial attempts is
    // one duplicate, not two. Extra copies = the most any one recipient got, minus one.
    const perRecipient = new Map<string, number>();
    for (const c of copies) for (const r of c.recipients) perRecipient.set(r, (perRecipient.get(r) ?? 0) + 1);
    const extra = Math.max(0, ...[...perRecipient.values()].map((n) => n - 1));
    if (extra === 0) continue;
    duplicates++;
    extraCopies += extra;
    const earlier = copies.slice(0, -1);
    const drops = earlier.filter((c) => c.kind === "drop-kept").length;
    const late = earlier.filter((c) => c.kind === "stall-long").length;
    const row = rows.get(id);
    const uncertain = row?.uncertainHandoffs ?? 0;
    const timeouts = row?.timeouts ?? 0;
    // A late copy (MTA stalled past the timeout) is also a timeout on the relay's side: count it once.
    if (extra > drops + uncertain + Math.max(late, timeouts)) unexplained.push(id);
    else if (drops > 0) dupDrop++;
    else if (late > 0) dupTimeout++;
    else if (uncertain > 0) dupRelayDied++;
    else dupRelayTimeout++;
  }
  const sigkills = input.kills.filter((k) => k.how === "SIGKILL").length;
  const sigterms = input.kills.filter((k) => k.how === "SIGTERM").length;
  const boundKills = input.kills.reduce((s, k) => s + k.concurrency, 0);
  const boundDb = input.dbRestarts.reduce((s, c) => s + c, 0);
  const bound = boundKills + boundDb;
  if (unexplained.length) {
    fail(`${unexplained.length} Message-ID(s) reached the ${input.mtaName} more often than relay deaths, dropped replies and timeouts explain`, unexplained);
  }
  if (input.verifyPolicy && dupRelayDied > 0) {
    fail(`${dupRelayDied} duplicate(s) from relays that died under leaseExpiryPolicy "verify" (goal 0)`);
  } else if (dupRelayDied > bound) fail(`${dupRelayDied} duplicates from relays that died exceed the bound ${bound} (sum of the victims' concurrency)`);

  // Idempotency: one row per key.
  const perKey = new Map<string, number>();
  for (const r of input.rows) if (r.idempotencyKey) perKey.set(r.idempotencyKey, (perKey.get(r.idempotencyKey) ?? 0) + 1);
  const keyViolations = [...perKey].filter(([, n]) => n > 1).map(([k]) => k);
  if (keyViolations.length) fail(`${keyViolations.length} idempotency key(s) on more than one row`, keyViolations);
  if (ledger.idempotencySurprises.length) fail(`idempotent retries committed twice`, ledger.idempotencySurprises);
  const keysCommitted = [...ledger.keys].filter(([k, e]) => e.committed !== null && !perKey.has(k)).map(([k]) => k);
  if (keysCommitted.length) fail(`${keysCommitted.length} idempotent operation(s) committed but their key is on no row`, keysCommitted);

  // Memory and process health.
  for (const m of input.memory) {
    if (m.peakRss > input.maxRssBytes) fail(`relay ${m.name}: peak RSS ${Math.round(m.peakRss / MB)} MB over the limit ${Math.round(input.maxRssBytes / MB)} MB`);
    if (m.growth !== null && m.growth > input.maxGrowthBytes) {
      fail(`relay ${m.name}: RSS grew by ${Math.round(m.growth / MB)} MB over a ${Math.round(m.longestLifeMs / 1000)} s life (limit ${Math.round(input.maxGrowthBytes / MB)} MB)`);
    }
  }
  if (input.unexpectedExits.length) fail(`relay process(es) exited on their own`, input.unexpectedExits);

  const deadText =
    dead === 0 ? "dead 0" : deadOther.length === 0 ? `dead ${dead} (all with a 5xx reply recorded)` : `dead ${dead} (${dead5xx} with a 5xx reply recorded, ${deadOther.length} with another reason recorded)`;
  const boundParts = [`in flight at ${input.kills.length} kills`];
  if (input.dbRestarts.length) boundParts.push(`${input.dbRestarts.length} db restart${input.dbRestarts.length === 1 ? "" : "s"}`);
  const causes = [
    input.verifyPolicy ? `relay died ${dupRelayDied} under verify (goal 0)` : `relay died ${dupRelayDied} of bound ${bound}: ${boundParts.join(" + ")}`,
    `drop after DATA ${dupDrop}`,
    `timeout after accept ${dupTimeout}`,
  ];
  if (dupRelayTimeout) causes.push(`relay-side timeout after accept ${dupRelayTimeout}`);
  if (unexplained.length) causes.push(`unexplained ${unexplained.length}`);
  const peak = input.memory.map((m) => `${m.name} ${Math.round(m.peakRss / MB)}`).join(", ");
  const parts = [
    `committed ${committed.size}`,
    `delivered ${delivered}`,
    deadText,
    `lost ${lost.length}`,
    `rolled-back delivered ${rolledBackDelivered.size}`,
    `duplicates ${duplicates} (${causes.join("; ")})`,
    `stuck ${stuck.length}`,
    `relay kills ${sigkills}${sigterms ? ` (+${sigterms} SIGTERM)` : ""}`,
    `db restarts ${input.dbRestarts.length}`,
  ];
  if (input.backendKills) parts.push(`backends killed ${input.backendKills}`);
  const uncertainRows = input.rows.filter((r) => r.uncertainHandoffs > 0).length;
  if (uncertainRows) parts.push(`uncertain hand-offs ${uncertainRows}`);
  if (ledger.inDoubt.size) parts.push(`in-doubt commits ${ledger.inDoubt.size} (${inDoubtCommitted} committed)`);
  parts.push(...input.notes);
  if (peak) parts.push(`peak RSS MB ${peak}`);
  const passed = failures.length === 0;
  const line = `${input.label}: ${parts.join(", ")} => ${passed ? "PASS" : `FAIL (${failures.length})`}`;
  return {
    label: input.label,
    passed,
    line,
    failures,
    counts: {
      committed: committed.size,
      delivered,
      dead,
      dead5xx,
      deadOther: deadOther.length,
      deliveredAndDead,
      lost: lost.length,
      rolledBack: rolledBack.size,
      rolledBackDelivered: rolledBackDelivered.size,
      inDoubt: ledger.inDoubt.size,
      inDoubtCommitted,
      duplicates,
      extraCopies,
      dupRelayDied,
      dupDropAfterData: dupDrop,
      dupTimeoutAfterAccept: dupTimeout,
      dupRelayTimeout,
      dupUnexplained: unexplained.length,
      bound,
      stuck: stuck.length,
      partial,
      deferredRecipientsDropped,
      sigkills,
      sigterms,
      uncertainRows,
    },
  };
}
