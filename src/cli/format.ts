/**
 * What the `mail-outbox` commands print as text, and their JSON. Pure functions of the library's
 * results: every table, duration and time an operator reads comes from here, so the text of each
 * command is specified by test/cli.test.ts and changes only there.
 */
import type {
  CancelResult,
  DeliveryEventRecord,
  MailDetail,
  MailRecord,
  PurgeResult,
  RecipientFate,
  ReplayResult,
  StatusReport,
  SuppressionRecord,
  SuppressResult,
  UnsuppressResult,
} from "../admin.js";
import type { DoctorReport } from "../doctor.js";
import type { PauseRecord, PauseResult, RateRecord, ResumeResult } from "../ops.js";
import type { RelayCounts } from "../relay.js";
import { STATUSES } from "../states.js";
import { FATES, type Fate } from "../store.js";

/** The JSON every `--json` prints: two-space indented, bigints as numbers, one trailing newline. */
export function formatJson(value: unknown): string {
  return `${JSON.stringify(value, jsonReplacer, 2)}\n`;
}

function jsonReplacer(this: unknown, _key: string, value: unknown): unknown {
  if (typeof value === "bigint") return Number(value);
  return value;
}

/** ISO UTC with milliseconds; "-" for none. */
export function iso(d: Date | null): string {
  return d === null ? "-" : d.toISOString();
}

/** ISO UTC to the second, for tables. */
function isoShort(d: Date | null): string {
  return d === null ? "-" : d.toISOString().replace(/\.\d{3}Z$/, "Z");
}

export function plural(n: number, word: string, many = `${word}s`): string {
  return `${n} ${n === 1 ? word : many}`;
}

/** A duration for people: "500ms", "45s", "2m30s", "1d4h" (the two largest units). */
export function formatMs(ms: number): string {
  if (ms < 1000) return `${ms}ms`;
  const parts: string[] = [];
  let rest = Math.round(ms / 1000);
  for (const [unit, size] of [["d", 86_400], ["h", 3_600], ["m", 60], ["s", 1]] as const) {
    if (rest >= size) {
      parts.push(`${Math.floor(rest / size)}${unit}`);
      rest %= size;
    }
  }
  return parts.slice(0, 2).join("");
}

/** The relay's counts on one line: `relay --once`, and after `stopped: ` when it stops. */
export function formatCounts(c: RelayCounts): string {
  return `claimed ${c.claimed}, sent ${c.sent}, retried ${c.retried}, dead ${c.dead}, released ${c.released}, rescued ${c.rescued}`;
}

function statusLabel(m: { status: string; uncertain: boolean; partlyRefused?: boolean }): string {
  return [m.status, m.partlyRefused === true ? "PARTLY REFUSED" : "", m.uncertain ? "UNCERTAIN" : ""].filter((x) => x !== "").join(" ");
}

/** `status`: one row per status with notes, the uncertain warning, the next attempt. */
export function formatStatus(r: StatusReport): string {
  const rows: [string, string, string][] = [];
  for (const s of STATUSES) {
    const notes: string[] = [];
    if (s === "pending" && r.duePending > 0) {
      notes.push(`${r.duePending} due now`);
      if (r.oldestDueAgeMs !== null) notes.push(`oldest due created ${formatMs(r.oldestDueAgeMs)} ago`);
      if (r.maxDueLagMs !== null) notes.push(`waiting up to ${formatMs(r.maxDueLagMs)}`);
    }
    if (s === "sending" && r.expiredLeases > 0) notes.push(`${r.expiredLeases} with an expired lease (a relay died or stalled)`);
    const u = r.uncertain.byStatus[s];
    if (u > 0) notes.push(`${u} uncertain`);
    rows.push([s, String(r.counts[s]), notes.join(", ")]);
  }
  for (const [s, n] of Object.entries(r.otherStatuses)) rows.push([s, String(n), "unknown status"]);
  rows.push(["total", String(r.total), ""]);
  const w0 = Math.max(...rows.map((x) => x[0].length));
  const w1 = Math.max(...rows.map((x) => x[1].length));
  const lines = rows.map(([a, b, c]) => `${a.padEnd(w0)}  ${b.padStart(w1)}${c ? `  ${c}` : ""}`.trimEnd());
  if (r.uncertain.total > 0) {
    lines.push(`UNCERTAIN: ${plural(r.uncertain.total, "mail")} may have reached the MTA without a record (see: mail-outbox list --uncertain)`);
  }
  lines.push(`next attempt  ${r.nextAttemptAt === null ? "-" : iso(r.nextAttemptAt)}`);
  lines.push(`as of         ${iso(r.at)}`);
  if (FATES.every((f) => r.fates[f] === 0)) {
    lines.push("", "After the hand-off: nothing recorded (`mail-outbox follow-log` and `mail-outbox ingest` record what the MTA did with each recipient)");
    return `${lines.join("\n")}\n`;
  }
  lines.push("", "After the hand-off (recipients by current fate, as follow-log and ingest recorded it):");
  const note: Record<Fate, string> = {
    delivered: "",
    deferred: "the MTA is still trying",
    bounced: "see: mail-outbox list --fate bounced",
    expired: "the MTA gave up (queue lifetime); see: mail-outbox list --fate expired",
  };
  const fw = Math.max(...FATES.map((f) => String(r.fates[f]).length));
  for (const f of FATES) {
    const n = r.fates[f];
    lines.push(`  ${f.padEnd(9)}  ${String(n).padStart(fw)}${n > 0 && note[f] !== "" ? `  ${note[f]}` : ""}`);
  }
  return `${lines.join("\n")}\n`;
}

/**
 * A mail's fates in a few characters, for the FATE column of `list`: the fate when there is one
 * recipient ("-" before any report), else counts ("1 bounced, 2 delivered"), the bad ones first.
 */
export function fateSummary(fates: readonly RecipientFate[] | undefined): string {
  if (fates === undefined || fates.length === 0) return "-";
  if (fates.length === 1) return fates[0]?.fate ?? "-";
  const order: readonly (Fate | null)[] = ["bounced", "expired", "deferred", "delivered", null];
  return order
    .map((f) => [f, fates.filter((x) => x.fate === f).length] as const)
    .filter(([, n]) => n > 0)
    .map(([f, n]) => `${n} ${f ?? "unreported"}`)
    .join(", ");
}

/**
 * `list`: one row per mail (NEXT: when a pending mail is tried next), and under a row, indented: the
 * last error of a mail not sent, or the recipients the MTA refused for a sent mail (status PARTLY REFUSED).
 * With `fates` (by mail id) and a reported fate among the mails, a FATE column after STATUS says what
 * became of the recipients after the hand-off (see `fateSummary`).
 */
export function formatList(mails: readonly MailRecord[], limit: number, fates?: ReadonlyMap<string, readonly RecipientFate[]>): string {
  if (mails.length === 0) return "no mails match\n";
  const withFate = fates !== undefined && mails.some((m) => fates.get(m.id)?.some((f) => f.fate !== null) === true);
  const header = ["ID", "STATUS", ...(withFate ? ["FATE"] : []), "TRIES", "CREATED", "NEXT", "TO", "SUBJECT"];
  const rows = mails.map((m) => [
    m.id,
    statusLabel(m),
    ...(withFate ? [fateSummary(fates?.get(m.id))] : []),
    `${m.attempts}/${m.maxAttempts}`,
    isoShort(m.createdAt),
    m.status === "pending" ? isoShort(m.nextAttemptAt) : "-",
    clip(m.envelopeTo.length <= 1 ? (m.envelopeTo[0] ?? "") : `${m.envelopeTo[0]} +${m.envelopeTo.length - 1}`, 40),
    clip(oneLine(m.subject), 50),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const fmt = (r: readonly string[]) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i] ?? 0))).join("  ").trimEnd();
  const lines = [fmt(header)];
  mails.forEach((m, i) => {
    lines.push(fmt(rows[i] ?? []));
    if (m.partlyRefused && m.rejected !== null) {
      const who = m.rejected.map((r) => `${r.recipient}${r.response ? ` (${oneLine(r.response)})` : ""}`).join(", ");
      lines.push(`  refused ${m.rejected.length} of ${m.envelopeTo.length}: ${clip(who, 160)}`);
    } else if (m.status !== "sent" && m.lastError !== null) {
      lines.push(`  last error: ${clip(oneLine(m.lastError), 160)}`);
    }
  });
  if (mails.length === limit) lines.push(`(${limit} shown, newest first; --limit shows more)`);
  return `${lines.join("\n")}\n`;
}

/** `show`: the fields of one mail, then its attempts timeline. */
export function formatShow(m: MailDetail): string {
  const fields: [string, string][] = [
    ["id", m.id],
    ["message-id", m.messageId],
    [
      "status",
      [
        m.status,
        m.partlyRefused && m.rejected !== null ? `(PARTLY REFUSED: ${m.rejected.length} of ${m.envelopeTo.length} recipients refused, see rejected)` : "",
        m.uncertain ? `(UNCERTAIN: ${plural(m.uncertainHandoffs, "hand-off")} interrupted; the MTA may or may not have this mail)` : "",
      ]
        .filter((x) => x !== "")
        .join(" "),
    ],
    ["from", m.envelopeFrom],
    ["to", m.envelopeTo.join(", ")],
    ["subject", oneLine(m.subject)],
    ["size", `${m.size} bytes`],
    ["priority", String(m.priority)],
    ["attempts", `${m.attempts} of ${m.maxAttempts}`],
    ["created", iso(m.createdAt)],
    ["send at", iso(m.sendAt)],
    ["next attempt", m.status === "pending" ? iso(m.nextAttemptAt) : "-"],
    ["updated", iso(m.updatedAt)],
    ["sent", iso(m.sentAt)],
  ];
  if (m.leaseOwner !== null) fields.push(["lease", `${m.leaseOwner} until ${iso(m.leaseExpiresAt)}`]);
  if (m.idempotencyKey !== null) fields.push(["idempotency key", m.idempotencyKey]);
  if (m.lastError !== null) fields.push(["last error", oneLine(m.lastError)]);
  if (m.mtaResponse !== null) fields.push(["mta response", oneLine(m.mtaResponse)]);
  if (m.mtaQueueId !== null) fields.push(["mta queue id", m.mtaQueueId]);
  if (m.accepted !== null) fields.push(["accepted", m.accepted.join(", ") || "-"]);
  if (m.rejected !== null && m.rejected.length > 0) fields.push(["rejected", m.rejected.map((r) => `${r.recipient}: ${oneLine(r.response)}`).join("; ")]);
  if (m.metadata !== null) fields.push(["metadata", JSON.stringify(m.metadata)]);
  const w = Math.max(...fields.map(([k]) => k.length)) + 1;
  const lines = fields.map(([k, v]) => `${`${k}:`.padEnd(w)}  ${v}`);
  lines.push("", m.attemptLog.length === 0 ? "attempts: none yet" : "attempts:");
  for (const a of m.attemptLog) {
    const detail = [
      a.responseCode !== null && !(a.response ?? "").startsWith(String(a.responseCode)) ? String(a.responseCode) : "",
      a.response !== null ? oneLine(a.response) : "",
      a.error !== null && a.error !== a.response ? oneLine(a.error) : "",
      a.errorCode !== null ? `(${a.errorCode})` : "",
      a.queueId !== null && !(a.response ?? "").includes(a.queueId) ? `queue id ${a.queueId}` : "",
    ]
      .filter((x) => x !== "")
      .join("  ");
    // Operator actions (replay, cancel) are recorded with attempt 0.
    lines.push(`  ${iso(a.startedAt)}  ${a.attempt === 0 ? "op" : `#${a.attempt}`}  ${a.outcome.padEnd(13)}  ${a.relay}  ${a.durationMs}ms${detail ? `  ${detail}` : ""}`);
  }
  lines.push(...formatAfterHandoff(m));
  return `${lines.join("\n")}\n`;
}

/**
 * The part of `show` after the attempts: when the MTA queued the mail (under which queue id), then per
 * recipient its current fate and every event that led there (when, DSN status, next hop or remote MTA,
 * the reply or reason, and whether the MTA's log or a delivery report said so). Nothing for a mail not
 * handed over and without events.
 */
function formatAfterHandoff(m: MailDetail): string[] {
  if (m.deliveryEvents.length === 0 && m.fates.length === 0) return [];
  if (m.deliveryEvents.length === 0) {
    return ["", "after the hand-off: nothing reported yet (`mail-outbox follow-log` and `mail-outbox ingest` record what the MTA did)"];
  }
  const lines = ["", "after the hand-off:"];
  for (const e of m.deliveryEvents) {
    if (e.event === "queued") lines.push(`  ${iso(e.at)}  queued as ${e.queueId ?? "?"} by the MTA  (${e.source})`);
  }
  // A recipient's event names its queue id only when it is not the one the mail is known by.
  const known = new Set([m.mtaQueueId, ...m.deliveryEvents.filter((e) => e.event === "queued").map((e) => e.queueId)]);
  const w = Math.max(...m.fates.map((f) => f.recipient.length));
  for (const f of m.fates) {
    const key = f.recipient.toLowerCase();
    const events = m.deliveryEvents.filter((e) => e.event !== "queued" && e.recipient.toLowerCase() === key);
    lines.push(`  ${f.recipient.padEnd(w)}  ${f.fate === null ? "no report yet" : `${f.fate.toUpperCase()}${f.event ? ` at ${iso(f.event.at)}` : ""}`}`);
    for (const e of events) lines.push(`    ${formatDeliveryEvent(known.has(e.queueId) ? { ...e, queueId: null } : e)}`);
  }
  return lines;
}

/** One delivery event on one line: time, event, DSN status, where, the reply (clipped), its queue id, the source. */
export function formatDeliveryEvent(e: DeliveryEventRecord): string {
  return [
    iso(e.at),
    e.event.padEnd(9),
    e.dsnStatus ?? "",
    e.remoteMta !== null ? `via ${e.remoteMta}` : "",
    e.reply !== null ? clip(oneLine(e.reply), 300) : "",
    e.queueId !== null ? `queue id ${e.queueId}` : "",
    `(${e.source})`,
  ]
    .filter((x) => x !== "")
    .join("  ");
}

/** `suppress list`: one row per entry; with expired entries shown, those are marked. */
export function formatSuppressions(list: readonly SuppressionRecord[], { now, limit }: { readonly now: Date; readonly limit: number }): string {
  if (list.length === 0) return "no suppressed addresses\n";
  const header = ["ADDRESS", "SOURCE", "CREATED", "EXPIRES", "REASON"];
  const rows = list.map((s) => [
    s.address,
    s.source,
    isoShort(s.createdAt),
    s.expiresAt === null ? "never" : `${isoShort(s.expiresAt)}${s.expiresAt.getTime() <= now.getTime() ? " (expired)" : ""}`,
    clip(oneLine(s.reason), 100),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const fmt = (r: readonly string[]) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i] ?? 0))).join("  ").trimEnd();
  const lines = [fmt(header), ...rows.map(fmt)];
  if (list.length === limit) lines.push(`(${limit} shown; --limit shows more)`);
  return `${lines.join("\n")}\n`;
}

/** `suppress add`: what is on the list now, and until when. */
export function formatSuppress(result: SuppressResult): string {
  const until = result.expiresAt === null ? "no expiry" : `until ${iso(result.expiresAt)}`;
  return `suppressed ${plural(result.addresses.length, "address", "addresses")} (${until})\n${capped(result.addresses, (a) => `  ${a}`)}`;
}

/** `suppress remove`: how many entries went, and the addresses that were not on the list. */
export function formatUnsuppress(result: UnsuppressResult, { expired }: { readonly expired: boolean }): string {
  const what = expired ? plural(result.removed, "expired entry", "expired entries") : plural(result.removed, "address", "addresses");
  return `removed ${what} from the suppression list\n${capped(result.notFound, (a) => `  not on the list: ${a}`)}`;
}

/** `replay`: what was (or would be) replayed, skipped and not found. `confirmed`: --yes was given. */
export function formatReplay(result: ReplayResult, { dryRun, confirmed }: { readonly dryRun: boolean; readonly confirmed: boolean }): string {
  const verb = dryRun ? "would replay" : "replayed";
  let text = `${verb} ${plural(result.replayed.length, "mail")}${dryRun ? " (dry run: nothing changed)" : ""}\n`;
  const sent = result.replayed.filter((m) => m.from === "sent").length;
  if (dryRun && sent > 0 && !confirmed) text += `${plural(sent, "of them was", "of them were")} sent already: the replay delivers ${sent === 1 ? "it" : "them"} again and needs --yes\n`;
  text += capped(result.replayed, (m) => `  ${m.id}  ${m.messageId}  was ${m.from}`);
  text += capped(result.skipped, (s) => `  skipped ${s.id}  ${s.messageId}  ${s.status}: ${s.reason}`);
  text += capped(result.notFound, (n) => `  not found: ${n}`);
  return text;
}

/** `cancel`: what was (or would be) cancelled, cancelled already, refused and not found. */
export function formatCancel(result: CancelResult, { dryRun }: { readonly dryRun: boolean }): string {
  const already = result.alreadyCancelled.length > 0 ? `, ${result.alreadyCancelled.length} cancelled already` : "";
  return (
    `${dryRun ? "would cancel" : "cancelled"} ${plural(result.cancelled.length, "mail")}${already}${dryRun ? " (dry run: nothing changed)" : ""}\n` +
    capped(result.cancelled, (m) => `  ${m.id}  ${m.messageId}  was ${m.from}`) +
    capped(result.alreadyCancelled, (m) => `  ${m.id}  ${m.messageId}  cancelled already: nothing to do`) +
    capped(result.notCancellable, (s) => `  not cancelled ${s.id}  ${s.messageId}  ${s.status}: ${s.reason}`) +
    capped(result.notFound, (n) => `  not found: ${n}`)
  );
}

/** `purge`: how many were (or would be) deleted, per status, and the cut-off. */
export function formatPurge(result: PurgeResult, { dryRun }: { readonly dryRun: boolean }): string {
  const parts = Object.entries(result.byStatus).map(([s, n]) => `${s} ${n}`).join(", ");
  const when = result.cutoff === null ? "of any age" : `last changed before ${iso(result.cutoff)}`;
  return `${dryRun ? "would delete" : "deleted"} ${plural(result.deleted, "mail")} (${parts}) ${when}${dryRun ? " (dry run: nothing changed)" : ""}\n`;
}

/** `doctor`: one line per check, and under a check that is not ok, how to fix it. */
export function formatDoctor(report: DoctorReport): string {
  const width = Math.max(...report.checks.map((c) => c.name.length));
  const label = { ok: "ok  ", warn: "WARN", fail: "FAIL" } as const;
  let text = "";
  for (const c of report.checks) {
    text += `${label[c.status]}  ${c.name.padEnd(width)}  ${c.message}\n`;
    if (c.status !== "ok" && c.fix !== null) text += `${" ".repeat(width + 8)}fix: ${c.fix}\n`;
  }
  return text;
}

/** One line per item, at most 100 (--json gives them all). */
function capped<T>(items: readonly T[], line: (item: T) => string, max = 100): string {
  const shown = items.slice(0, max).map((x) => `${line(x)}\n`);
  if (items.length > max) shown.push(`  ... and ${items.length - max} more (--json lists them all)\n`);
  return shown.join("");
}

function oneLine(s: string): string {
  return s.replace(/\s*[\r\n]+\s*/g, " ");
}

function clip(s: string, max: number): string {
  return s.length <= max ? s : `${s.slice(0, max - 1)}…`;
}

/** `pause`: what was paused, or that it was already. */
export function formatPause(r: PauseResult): string {
  const p = r.pause;
  const who = p ? ` by ${p.pausedBy} since ${iso(p.pausedAt)}${p.reason ? ` (${p.reason})` : ""}` : "";
  const what =
    r.scope === "all"
      ? "every relay stops claiming within one poll interval; hand-offs in flight finish"
      : r.scope.startsWith("sender:")
        ? `no relay claims mail from ${r.scope.slice(7)} (within one poll interval)`
        : `the relays of ${r.scope.slice(10)} stop claiming within one poll interval; hand-offs in flight finish`;
  return r.paused ? `paused ${r.scope}: ${what}\n` : `${r.scope} was paused already${who}\n`;
}

/** `resume`: the scopes lifted, and those that were not paused. */
export function formatResume(r: ResumeResult): string {
  const lines: string[] = [];
  if (r.resumed.length > 0) lines.push(`resumed ${r.resumed.join(", ")}`);
  for (const s of r.notPaused) lines.push(`${s} was not paused`);
  if (lines.length === 0) lines.push("nothing was paused");
  return `${lines.join("\n")}\n`;
}

/** The pauses in force (`pause` without change, `status`). */
export function formatPauses(list: readonly PauseRecord[]): string {
  if (list.length === 0) return "no pauses\n";
  return `${list.map((p) => `paused ${p.scope}  by ${p.pausedBy} since ${iso(p.pausedAt)}${p.reason ? `  (${p.reason})` : ""}`).join("\n")}\n`;
}

/** `pace ls` and `status`: the shared rate limits. */
export function formatPaces(list: readonly RateRecord[]): string {
  if (list.length === 0) return "no rate limits\n";
  return `${list.map((r) => `pace ${r.bucket}  ${formatRate(r.rate)}, burst ${r.burst}`).join("\n")}\n`;
}

/** `50/s`, `0.5/s` (one every 2 s). */
export function formatRate(rate: number): string {
  return rate >= 1 ? `${Number(rate.toFixed(3))}/s` : `${Number(rate.toFixed(6))}/s (one every ${formatMs(1000 / rate)})`;
}
