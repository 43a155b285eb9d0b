/**
 * The overview's charts as inline SVG drawn on the server from the attempt log: hand-offs per time
 * bucket (handed over / failed), and their mean duration. No script; colours come from style.css
 * classes, labels are escaped by `html`.
 */
import type { AttemptBucket } from "../store.js";
import { html, type SafeHtml } from "./html.js";

export interface Series {
  readonly start: Date;
  /** accepted + partial */
  readonly ok: number;
  /** transient + permanent */
  readonly failed: number;
  /** Mean duration of all hand-offs in the bucket, ms; null when none. */
  readonly avgMs: number | null;
  readonly maxMs: number | null;
}

/** Every bucket from `since` to `now`, zeros included, from the store's rows. */
export function toSeries(rows: readonly AttemptBucket[], since: Date, now: Date, bucketMs: number): Series[] {
  const first = Math.floor(since.getTime() / bucketMs);
  const last = Math.floor(now.getTime() / bucketMs);
  const acc = new Map<number, { ok: number; failed: number; sum: number; max: number }>();
  for (let b = first; b <= last; b++) acc.set(b, { ok: 0, failed: 0, sum: 0, max: 0 });
  for (const r of rows) {
    const a = acc.get(Math.round(r.start.getTime() / bucketMs));
    if (a === undefined) continue;
    if (r.outcome === "accepted" || r.outcome === "partial") a.ok += r.n;
    else a.failed += r.n;
    a.sum += r.avgMs * r.n;
    a.max = Math.max(a.max, r.maxMs);
  }
  return [...acc.entries()].map(([b, a]) => {
    const n = a.ok + a.failed;
    return { start: new Date(b * bucketMs), ok: a.ok, failed: a.failed, avgMs: n === 0 ? null : a.sum / n, maxMs: n === 0 ? null : a.max };
  });
}

const W = 480;
const H = 120;
const PAD = 4;

function label(d: Date): string {
  return d.toISOString().slice(11, 16);
}

/** Stacked bars: handed over (green) under failed (red), per bucket. */
export function throughputChart(series: readonly Series[], title: string): SafeHtml {
  const max = Math.max(1, ...series.map((s) => s.ok + s.failed));
  const bw = (W - 2 * PAD) / Math.max(1, series.length);
  const total = series.reduce((t, s) => t + s.ok, 0);
  const failed = series.reduce((t, s) => t + s.failed, 0);
  const bars = series.map((s, i) => {
    const x = (PAD + i * bw).toFixed(1);
    const hOk = ((s.ok / max) * (H - 2 * PAD)).toFixed(1);
    const hFail = ((s.failed / max) * (H - 2 * PAD)).toFixed(1);
    const yOk = (H - PAD - Number(hOk)).toFixed(1);
    const yFail = (Number(yOk) - Number(hFail)).toFixed(1);
    const w = Math.max(1, bw - 1).toFixed(1);
    return html`<g><title>${label(s.start)} UTC: ${s.ok} handed over, ${s.failed} failed</title><rect class="bar-ok" x="${x}" y="${yOk}" width="${w}" height="${hOk}"></rect><rect class="bar-fail" x="${x}" y="${yFail}" width="${w}" height="${hFail}"></rect></g>`;
  });
  return html`<figure class="chart"><figcaption>${title}: ${total} handed over, ${failed} failed (peak ${max === 1 && total + failed === 0 ? 0 : max} per bucket)</figcaption>
<svg viewBox="0 0 ${W} ${H}" width="${W}" height="${H}" role="img" aria-label="${title}"><line class="axis" x1="0" y1="${H - PAD}" x2="${W}" y2="${H - PAD}"></line>${bars}</svg>
<div class="chart-axis"><span>${series[0] ? label(series[0].start) : ""}</span><span>${series.at(-1) ? label(series.at(-1)!.start) : ""} UTC</span></div></figure>`;
}

/** Bars of the mean hand-off duration per bucket (the longest in the tooltip). */
export function latencyChart(series: readonly Series[], title: string): SafeHtml {
  const max = Math.max(1, ...series.map((s) => s.avgMs ?? 0));
  const bw = (W - 2 * PAD) / Math.max(1, series.length);
  const withData = series.filter((s) => s.avgMs !== null);
  const overallMax = Math.max(0, ...withData.map((s) => s.maxMs ?? 0));
  const n = series.reduce((t, s) => t + s.ok + s.failed, 0);
  const mean = n === 0 ? null : series.reduce((t, s) => t + (s.avgMs ?? 0) * (s.ok + s.failed), 0) / n;
  const bars = series.map((s, i) => {
    if (s.avgMs === null) return html``;
    const h = ((s.avgMs / max) * (H - 2 * PAD)).toFixed(1);
    return html`<g><title>${label(s.start)} UTC: mean ${Math.round(s.avgMs)} ms, longest ${s.maxMs} ms</title><rect class="bar-lat" x="${(PAD + i * bw).toFixed(1)}" y="${(H - PAD - Number(h)).toFixed(1)}" width="${Math.max(1, bw - 1).toFixed(1)}" height="${h}"></rect></g>`;
  });
  return html`<figure class="chart"><figcaption>${title}: ${mean === null ? "no hand-offs" : `mean ${Math.round(mean)} ms, longest ${overallMax} ms`} (bar height: mean per bucket, top ${Math.round(max)} ms)</figcaption>
<svg viewBox="0 0 ${W} ${H}" width="${W}" height="${H}" role="img" aria-label="${title}"><line class="axis" x1="0" y1="${H - PAD}" x2="${W}" y2="${H - PAD}"></line>${bars}</svg>
<div class="chart-axis"><span>${series[0] ? label(series[0].start) : ""}</span><span>${series.at(-1) ? label(series.at(-1)!.start) : ""} UTC</span></div></figure>`;
}
