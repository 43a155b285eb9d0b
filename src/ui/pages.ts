/**
 * The dashboard's pages, rendered on the server from domain records with the `html` template
 * (everything escaped unless built here). No page carries script; forms are plain GET (filters)
 * and POST (actions, with the CSRF token).
 */
import type { CancelResult, MailDetail, ReplayResult, StatusReport } from "../admin.js";
import { STATUSES } from "../states.js";
import { FATES, type MailRecord, type PauseRecord } from "../store.js";
import { latencyChart, throughputChart, type Series } from "./charts.js";
import { html, type SafeHtml } from "./html.js";
import type { ParsedMessage } from "./message.js";
import { encodeCursor, filterParams, isEmptyFilter, type Cursor, type ListFilter } from "./query.js";

/** What every page needs to know about the request. */
export interface PageContext {
  /** The mount point, "" or "/outbox": every link starts with it. */
  readonly prefix: string;
  readonly actions: boolean;
  /** The CSRF token for the forms of this response. */
  readonly csrf: string;
  /** The database, password redacted. */
  readonly database: string;
  readonly actor: string;
}

export function time(d: Date | null): string {
  return d === null ? "-" : d.toISOString().replace("T", " ").replace(/\.\d{3}Z$/, "Z");
}

export function age(ms: number | null): string {
  if (ms === null) return "-";
  if (ms < 1000) return `${ms} ms`;
  const s = Math.round(ms / 1000);
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  if (s < 172_800) return `${(s / 3600).toFixed(1)} h`;
  return `${(s / 86_400).toFixed(1)} d`;
}

export function bytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

function qs(pairs: readonly [string, string][]): string {
  const p = new URLSearchParams(pairs).toString();
  return p === "" ? "" : `?${p}`;
}

export function layout(ctx: PageContext, title: string, body: SafeHtml): string {
  return html`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>${title} · mail-outbox</title>
<link rel="stylesheet" href="${ctx.prefix}/style.css"></head>
<body><header class="top"><a class="brand" href="${ctx.prefix}/">mail-outbox</a><a href="${ctx.prefix}/">Overview</a><a href="${ctx.prefix}/mails">Mails</a>
<form class="find" method="get" action="${ctx.prefix}/find"><input type="search" name="q" placeholder="mail id or Message-ID" aria-label="Open a mail by id or Message-ID"></form>
<span class="mode">${ctx.actions ? `actions enabled, as ${ctx.actor}` : "read-only"}</span></header>
<main>${body}</main>
<footer>Database: <span class="mono">${ctx.database}</span> · times in UTC</footer></body></html>`.value;
}

function statusBadges(m: MailRecord): SafeHtml {
  return html`<span class="badge s-${m.status}">${m.status}</span>${m.uncertain ? html` <span class="badge s-uncertain">uncertain</span>` : ""}${
    m.partlyRefused ? html` <span class="badge s-partial">partly refused</span>` : ""
  }`;
}

// ---------------------------------------------------------------------------------------------
// Overview

export interface OverviewData {
  readonly report: StatusReport;
  readonly pauses: readonly PauseRecord[];
  readonly hour: readonly Series[];
  readonly day: readonly Series[];
}

export function overviewPage(ctx: PageContext, d: OverviewData): string {
  const r = d.report;
  const card = (label: string, n: number, href: string | null, note: SafeHtml | string = "") =>
    html`<div class="card">${href === null ? html`<div class="n">${n}</div>` : html`<a href="${href}"><div class="n">${n}</div></a>`}<div class="muted">${label}</div>${note}</div>`;
  const body = html`<h1>Overview</h1>
<div class="cards">
${STATUSES.map((s) => card(s, r.counts[s], `${ctx.prefix}/mails${qs([["status", s]])}`, r.uncertain.byStatus[s] > 0 ? html`<div class="warn">${r.uncertain.byStatus[s]} uncertain</div>` : ""))}
</div>
<h2>Queue</h2>
<table class="kv">
<tr><th>Due now</th><td>${r.duePending}</td></tr>
<tr><th>Oldest due mail created</th><td>${r.oldestDueAgeMs === null ? "-" : `${age(r.oldestDueAgeMs)} ago`}</td></tr>
<tr><th>Longest wait past due</th><td>${age(r.maxDueLagMs)}</td></tr>
<tr><th>Next scheduled attempt</th><td>${time(r.nextAttemptAt)}</td></tr>
<tr><th>Uncertain hand-offs</th><td>${r.uncertain.total > 0 ? html`<a class="warn" href="${ctx.prefix}/mails?uncertain=1">${r.uncertain.total}</a>` : "0"}</td></tr>
<tr><th>Held</th><td>${r.counts.held > 0 ? html`<a class="warn" href="${ctx.prefix}/mails?status=held">${r.counts.held}</a>` : "0"}</td></tr>
<tr><th>Expired leases (sending)</th><td>${r.expiredLeases}</td></tr>
<tr><th>Pauses</th><td>${d.pauses.length === 0 ? "none" : d.pauses.map(
    (p) =>
      html`<div><span class="mono">${p.scope}</span> by ${p.pausedBy} since ${time(p.pausedAt)}${p.reason ? html`: ${p.reason}` : ""}${
        ctx.actions
          ? html` <form class="inline" method="post" action="${ctx.prefix}/resume">${hidden("csrf", ctx.csrf)}${hidden("scope", p.scope)}<button type="submit">Resume</button></form>`
          : ""
      }</div>`,
  )}${
    ctx.actions && !d.pauses.some((p) => p.scope === "all")
      ? html`<form class="pause" method="post" action="${ctx.prefix}/pause">${hidden("csrf", ctx.csrf)}<label>Reason <input type="text" name="reason" maxlength="500"></label> <button type="submit" class="danger">Pause every relay</button></form>`
      : ""
  }</td></tr>
</table>
<h2>Hand-offs (attempt log)</h2>
<div class="charts">
${throughputChart(d.hour, "Last hour, per minute")}
${throughputChart(d.day, "Last 24 hours, per hour")}
${latencyChart(d.hour, "Hand-off duration, last hour")}
${latencyChart(d.day, "Hand-off duration, last 24 hours")}
</div>
<h2>After the hand-off (recipients per current fate)</h2>
<div class="cards">${FATES.map((f) => card(f, r.fates[f], `${ctx.prefix}/mails${qs([["fate", f]])}`))}</div>
<p class="muted">Fates are recorded by <span class="mono">mail-outbox follow-log</span> and <span class="mono">ingest</span>; zeros when neither runs.</p>`;
  return layout(ctx, "Overview", body);
}

// ---------------------------------------------------------------------------------------------
// List

export function filterForm(ctx: PageContext, f: ListFilter): SafeHtml {
  return html`<form class="filters" method="get" action="${ctx.prefix}/mails">
<fieldset><legend class="muted">Status</legend>${STATUSES.map(
    (s) => html`<label><input type="checkbox" name="status" value="${s}"${f.statuses.includes(s) ? html` checked` : ""}> ${s}</label>`,
  )}</fieldset>
<label>Recipient <input type="search" name="recipient" value="${f.recipient}" placeholder="ann@example.com"></label>
<label>Subject contains <input type="search" name="subject" value="${f.subject}"></label>
<label>Metadata <input type="text" name="meta" value="${f.meta}" placeholder="key=value"></label>
<label>Created since <input type="text" name="since" value="${f.since}" placeholder="2h or 2024-05-01T12:00"></label>
<label>until <input type="text" name="until" value="${f.until}" placeholder="ISO date/time"></label>
<label>Fate <select name="fate"><option value="">any</option>${FATES.map((x) => html`<option value="${x}"${f.fate === x ? html` selected` : ""}>${x}</option>`)}</select></label>
<label><span><input type="checkbox" name="uncertain" value="1"${f.uncertain ? html` checked` : ""}> uncertain</span></label>
<label><span><input type="checkbox" name="partial" value="1"${f.partial ? html` checked` : ""}> partial</span></label>
<button type="submit">Filter</button> <a class="button secondary" href="${ctx.prefix}/mails">Clear</a>
</form>`;
}

export function listPage(ctx: PageContext, f: ListFilter, mails: readonly MailRecord[], next: Cursor | null, paged: boolean, error: string | null): string {
  const fq = filterParams(f);
  const rows = mails.map(
    (m) => html`<tr>
<td class="mono">${time(m.createdAt)}</td>
<td>${statusBadges(m)}</td>
<td class="break">${m.envelopeFrom}</td>
<td class="break">${m.envelopeTo.slice(0, 3).join(", ")}${m.envelopeTo.length > 3 ? ` +${m.envelopeTo.length - 3}` : ""}</td>
<td class="break"><a href="${ctx.prefix}/mails/${m.id}">${m.subject === "" ? "(no subject)" : m.subject}</a></td>
<td class="num">${m.attempts}/${m.maxAttempts}</td>
<td class="num">${bytes(m.size)}</td></tr>`,
  );
  const body = html`<h1>Mails</h1>
${filterForm(ctx, f)}
${error === null ? "" : html`<div class="error">${error}</div>`}
${
  ctx.actions
    ? html`<div class="actions"><a class="button secondary" href="${ctx.prefix}/bulk${qs([["action", "replay"], ...fq])}">Replay all matching…</a><a class="button secondary" href="${ctx.prefix}/bulk${qs([["action", "cancel"], ...fq])}">Cancel all matching…</a></div>`
    : ""
}
<table><thead><tr><th>Created</th><th>Status</th><th>From</th><th>To</th><th>Subject</th><th class="num">Attempts</th><th class="num">Size</th></tr></thead>
<tbody>${rows.length === 0 ? html`<tr><td colspan="7" class="muted">No mail matches${isEmptyFilter(f) ? "" : " these filters"}.</td></tr>` : rows}</tbody></table>
<nav class="pager">${paged ? html`<a href="${ctx.prefix}/mails${qs(fq)}">« Newest</a>` : ""}${
    next === null ? html`<span class="muted">End of the list</span>` : html`<a rel="next" href="${ctx.prefix}/mails${qs([...fq, ["before", encodeCursor(next)]])}">Older »</a>`
  }</nav>`;
  return layout(ctx, "Mails", body);
}

// ---------------------------------------------------------------------------------------------
// Detail

function list(values: readonly string[] | null): SafeHtml | string {
  if (values === null || values.length === 0) return "-";
  return html`${values.map((v, i) => html`${i > 0 ? ", " : ""}<span class="break">${v}</span>`)}`;
}

export function detailPage(ctx: PageContext, m: MailDetail, msg: ParsedMessage): string {
  const actions: SafeHtml[] = [];
  if (ctx.actions) {
    if (["dead", "cancelled", "held", "sent"].includes(m.status)) actions.push(html`<a class="button" href="${ctx.prefix}/mails/${m.id}/replay">Replay…</a>`);
    if (["pending", "held"].includes(m.status)) actions.push(html`<a class="button danger" href="${ctx.prefix}/mails/${m.id}/cancel">Cancel…</a>`);
    if (m.status === "held" && m.uncertain) actions.push(html`<a class="button secondary" href="${ctx.prefix}/mails/${m.id}/resolve">Resolve uncertain hand-off…</a>`);
  }
  const body = html`<h1>${m.subject === "" ? "(no subject)" : m.subject}</h1>
<p>${statusBadges(m)} <span class="mono muted">${m.id}</span></p>
${actions.length > 0 ? html`<div class="actions">${actions}</div>` : ""}
${m.uncertain ? html`<div class="notice">A relay died while it held this mail (${m.uncertainHandoffs} time${m.uncertainHandoffs === 1 ? "" : "s"}): the MTA may have it already.</div>` : ""}
<h2>Envelope</h2>
<table class="kv">
<tr><th>Message-ID</th><td class="mono break">${m.messageId}</td></tr>
<tr><th>From (envelope)</th><td class="break">${m.envelopeFrom}</td></tr>
<tr><th>To (envelope)</th><td>${list(m.envelopeTo)}</td></tr>
<tr><th>Accepted by the MTA</th><td>${list(m.accepted)}</td></tr>
<tr><th>Refused by the MTA</th><td>${m.rejected === null || m.rejected.length === 0 ? "-" : m.rejected.map((r) => html`<div><span class="break">${r.recipient}</span>: <span class="mono">${r.response}</span></div>`)}</td></tr>
<tr><th>MTA queue id</th><td class="mono">${m.mtaQueueId ?? "-"}</td></tr>
<tr><th>MTA response</th><td class="mono break">${m.mtaResponse ?? "-"}</td></tr>
<tr><th>Last error</th><td class="mono break">${m.lastError ?? "-"}</td></tr>
<tr><th>Attempts</th><td>${m.attempts} of ${m.maxAttempts}</td></tr>
<tr><th>Priority</th><td>${m.priority}</td></tr>
<tr><th>Created</th><td>${time(m.createdAt)}</td></tr>
<tr><th>Send at</th><td>${time(m.sendAt)}</td></tr>
<tr><th>Next attempt</th><td>${m.status === "pending" ? time(m.nextAttemptAt) : "-"}</td></tr>
<tr><th>Sent</th><td>${time(m.sentAt)}</td></tr>
<tr><th>Updated</th><td>${time(m.updatedAt)}</td></tr>
<tr><th>Lease</th><td>${m.leaseOwner === null ? "-" : html`<span class="mono">${m.leaseOwner}</span> until ${time(m.leaseExpiresAt)}`}</td></tr>
<tr><th>Size</th><td>${bytes(m.size)}</td></tr>
<tr><th>Idempotency key</th><td class="mono break">${m.idempotencyKey ?? "-"}</td></tr>
<tr><th>Metadata</th><td class="mono break">${m.metadata === null ? "-" : JSON.stringify(m.metadata)}</td></tr>
</table>
<h2>Recipients after the hand-off</h2>
${
  m.fates.length === 0
    ? html`<p class="muted">Nothing reported yet (follow-log, ingest).</p>`
    : html`<table><thead><tr><th>Recipient</th><th>Fate</th><th>When</th><th>DSN</th><th>Remote MTA</th><th>Reply</th><th class="num">Events</th></tr></thead><tbody>${m.fates.map(
        (f) =>
          html`<tr><td class="break">${f.recipient}</td><td>${f.fate ?? "-"}</td><td class="mono">${time(f.event?.at ?? null)}</td><td class="mono">${f.event?.dsnStatus ?? "-"}</td><td class="break">${f.event?.remoteMta ?? "-"}</td><td class="mono break">${f.event?.reply ?? "-"}</td><td class="num">${f.events}</td></tr>`,
      )}</tbody></table>`
}
<h2>Attempt timeline</h2>
${
  m.attemptLog.length === 0
    ? html`<p class="muted">No attempt yet.</p>`
    : html`<table><thead><tr><th>Started</th><th class="num">#</th><th>By</th><th>Outcome</th><th class="num">Duration</th><th>Code</th><th>Reply / error</th><th>Queue id</th></tr></thead><tbody>${m.attemptLog.map(
        (a) =>
          html`<tr><td class="mono">${time(a.startedAt)}</td><td class="num">${a.attempt}</td><td class="mono break">${a.relay}</td><td>${a.outcome}</td><td class="num">${a.durationMs} ms</td><td class="mono">${a.responseCode ?? ""} ${a.errorCode ?? ""}</td><td class="mono break">${a.response ?? ""}${a.error !== null && a.error !== a.response ? html`<div>${a.error}</div>` : ""}</td><td class="mono">${a.queueId ?? ""}</td></tr>`,
      )}</tbody></table>`
}
${
  m.deliveryEvents.length === 0
    ? ""
    : html`<h2>Delivery events</h2><table><thead><tr><th>At</th><th>Event</th><th>Recipient</th><th>Source</th><th>Queue id</th><th>DSN</th><th>Reply</th></tr></thead><tbody>${m.deliveryEvents.map(
        (e) =>
          html`<tr><td class="mono">${time(e.at)}</td><td>${e.event}</td><td class="break">${e.recipient}</td><td>${e.source}</td><td class="mono">${e.queueId ?? ""}</td><td class="mono">${e.dsnStatus ?? ""}</td><td class="mono break">${e.reply ?? ""}</td></tr>`,
      )}</tbody></table>`
}
<h2>Attachments</h2>
${
  msg.attachments.length === 0
    ? html`<p class="muted">None.</p>`
    : html`<table><thead><tr><th>File name</th><th>Type</th><th class="num">Size</th><th></th></tr></thead><tbody>${msg.attachments.map(
        (a) => html`<tr><td class="break">${a.filename ?? "(no name)"}</td><td class="mono">${a.contentType}</td><td class="num">${bytes(a.size)}</td><td>${a.inline ? "inline" : ""}</td></tr>`,
      )}</tbody></table>`
}
<h2>Preview</h2>
${msg.error !== null ? html`<div class="error">${msg.error}</div>` : ""}
<iframe class="preview" sandbox="" referrerpolicy="no-referrer" src="${ctx.prefix}/mails/${m.id}/preview" title="Preview of the message (scripts and remote content blocked)"></iframe>
<h2>Headers</h2>
<table><tbody>${msg.headers.map((h) => html`<tr><th class="mono">${h.name}</th><td class="mono break">${h.value}</td></tr>`)}</tbody></table>`;
  return layout(ctx, m.subject === "" ? "Mail" : m.subject, body);
}

// ---------------------------------------------------------------------------------------------
// Actions

function hidden(name: string, value: string): SafeHtml {
  return html`<input type="hidden" name="${name}" value="${value}">`;
}

export function confirmMailPage(ctx: PageContext, m: MailRecord, action: "replay" | "cancel"): string {
  const sent = action === "replay" && m.status === "sent";
  const body = html`<h1>${action === "replay" ? "Replay" : "Cancel"} this mail?</h1>
<table class="kv"><tr><th>Subject</th><td class="break">${m.subject}</td></tr><tr><th>To</th><td>${list(m.envelopeTo)}</td></tr><tr><th>Status</th><td>${statusBadges(m)}</td></tr><tr><th>Message-ID</th><td class="mono break">${m.messageId}</td></tr></table>
<p>${
    action === "replay"
      ? "It goes back to pending, due now, with the same Message-ID; its history stays in the attempt log."
      : "It will not be sent. The attempt log records who cancelled it."
  }</p>
${sent ? html`<div class="notice">The MTA accepted this mail already: a replay delivers it again.</div>` : ""}
<form method="post" action="${ctx.prefix}/mails/${m.id}/${action}">
${hidden("csrf", ctx.csrf)}
${sent ? html`<p><label><input type="checkbox" name="resend_sent" value="1" required> Yes, send this mail again</label></p>` : ""}
<div class="actions"><button type="submit" class="${action === "cancel" ? "danger" : ""}">${action === "replay" ? "Replay" : "Cancel"} it</button><a class="button secondary" href="${ctx.prefix}/mails/${m.id}">Back</a></div>
</form>`;
  return layout(ctx, `${action} ${m.subject}`, body);
}

export function resolvePage(ctx: PageContext, m: MailRecord): string {
  const body = html`<h1>Resolve the uncertain hand-off</h1>
<p>A relay died while handing this mail over; it is held. Check the MTA's log for its Message-ID <span class="mono">${m.messageId}</span>.</p>
<form method="post" action="${ctx.prefix}/mails/${m.id}/resolve">${hidden("csrf", ctx.csrf)}${hidden("resolution", "received")}
<h2>The MTA has it</h2><p><label>MTA queue id <input type="text" name="queue_id" required pattern="[A-Za-z0-9._-]{1,100}"></label></p>
<button type="submit">Mark as handed over</button></form>
<form method="post" action="${ctx.prefix}/mails/${m.id}/resolve">${hidden("csrf", ctx.csrf)}${hidden("resolution", "absent")}
<h2>The MTA does not have it</h2><p>It is handed over again with the same Message-ID.</p>
<button type="submit" class="danger">Resend it</button></form>
<p><a href="${ctx.prefix}/mails/${m.id}">Back</a></p>`;
  return layout(ctx, "Resolve", body);
}

export interface BulkPreview {
  readonly action: "replay" | "cancel";
  readonly filter: ListFilter;
  readonly matched: number;
  /** Would change, by status before. */
  readonly byStatus: Readonly<Record<string, number>>;
  readonly changing: number;
  readonly skipped: number;
  readonly sent: number;
  readonly note: string | null;
  readonly limit: number;
}

export function bulkConfirmPage(ctx: PageContext, p: BulkPreview): string {
  const fq = filterParams(p.filter);
  const verb = p.action === "replay" ? "Replay" : "Cancel";
  const body = html`<h1>${verb} every mail matching the filter?</h1>
<p>Dry run: <strong>${p.matched}</strong> mail${p.matched === 1 ? "" : "s"} match; <strong>${p.changing}</strong> would be ${p.action === "replay" ? "replayed" : "cancelled"}${
    Object.keys(p.byStatus).length > 0 ? html` (${Object.entries(p.byStatus).map(([s, n], i) => html`${i > 0 ? ", " : ""}${n} ${s}`)})` : ""
  }; ${p.skipped} left as they are (the state machine does not allow it).</p>
${p.note === null ? "" : html`<div class="notice">${p.note}</div>`}
<table class="kv">${fq.length === 0 ? html`<tr><th>Filter</th><td>none: every mail</td></tr>` : fq.map(([k, v]) => html`<tr><th>${k}</th><td class="break">${v}</td></tr>`)}</table>
${
  p.changing === 0
    ? html`<p>Nothing to do.</p>`
    : html`<form method="post" action="${ctx.prefix}/bulk">
${hidden("csrf", ctx.csrf)}${hidden("action", p.action)}${hidden("expected", String(p.changing))}${fq.map(([k, v]) => hidden(k, v))}
${p.sent > 0 ? html`<p class="notice"><label><input type="checkbox" name="resend_sent" value="1" required> ${p.sent} of them were accepted by the MTA already: send them again</label></p>` : ""}
<p><label><input type="checkbox" name="confirm" value="1" required> I have checked the count: ${p.action} ${p.changing} mail${p.changing === 1 ? "" : "s"}</label></p>
<div class="actions"><button type="submit" class="${p.action === "cancel" ? "danger" : ""}">${verb} ${p.changing}</button><a class="button secondary" href="${ctx.prefix}/mails${qs(fq)}">Back to the list</a></div>
</form>`
}`;
  return layout(ctx, `${verb} by filter`, body);
}

export function resultPage(ctx: PageContext, title: string, result: ReplayResult | CancelResult | { readonly message: string }, back: string): string {
  let summary: SafeHtml;
  if ("message" in result) summary = html`<div class="done">${result.message}</div>`;
  else if ("replayed" in result) {
    summary = html`<div class="done">Replayed ${result.replayed.length} mail${result.replayed.length === 1 ? "" : "s"}.</div>${
      result.skipped.length > 0 ? html`<div class="notice">Left as they are: ${result.skipped.map((s) => html`<div><span class="mono">${s.messageId}</span> (${s.status}): ${s.reason}</div>`)}</div>` : ""
    }`;
  } else {
    summary = html`<div class="done">Cancelled ${result.cancelled.length} mail${result.cancelled.length === 1 ? "" : "s"}${
      result.alreadyCancelled.length > 0 ? `; ${result.alreadyCancelled.length} cancelled already` : ""
    }.</div>${
      result.notCancellable.length > 0
        ? html`<div class="notice">Not cancelled: ${result.notCancellable.map((s) => html`<div><span class="mono">${s.messageId}</span> (${s.status}): ${s.reason}</div>`)}</div>`
        : ""
    }`;
  }
  return layout(ctx, title, html`<h1>${title}</h1>${summary}<p><a class="button secondary" href="${back}">Back</a></p>`);
}

export function errorPage(ctx: PageContext, status: number, message: string): string {
  return layout(ctx, `Error ${status}`, html`<h1>${status === 404 ? "Not found" : status === 403 ? "Refused" : status === 400 ? "Bad request" : "Error"}</h1><div class="error">${message}</div><p><a href="${ctx.prefix}/">Overview</a></p>`);
}
