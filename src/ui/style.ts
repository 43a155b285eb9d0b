/** The dashboard's one stylesheet, served at `<base>/style.css` (the pages' CSP allows styles from 'self' only). */
export const STYLE_CSS = `
:root { color-scheme: light; --fg: #1d2330; --muted: #5f6b7a; --line: #d9dee5; --bg: #f6f7f9; --ok: #2f8f4e; --fail: #c23b3b; --warn: #b7791f; --lat: #3b6fc2; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); background: var(--bg); }
header.top { display: flex; gap: 1.5rem; align-items: baseline; padding: .7rem 1.2rem; background: #1d2330; color: #fff; }
header.top a { color: #cfe0ff; text-decoration: none; }
header.top .brand { font-weight: 600; color: #fff; }
header.top form.find input { width: 22rem; font-size: 12px; }
header.top .mode { margin-left: auto; font-size: 12px; color: #aab4c3; }
main { padding: 1rem 1.2rem 3rem; max-width: 1400px; }
h1 { font-size: 20px; margin: .2rem 0 1rem; word-break: break-word; }
h2 { font-size: 16px; margin: 1.6rem 0 .5rem; }
table { border-collapse: collapse; background: #fff; border: 1px solid var(--line); width: 100%; }
th, td { text-align: left; padding: .35rem .55rem; border-bottom: 1px solid var(--line); vertical-align: top; }
th { background: #eef1f5; font-weight: 600; font-size: 12px; color: var(--muted); }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
table.kv th { width: 14rem; }
.break { word-break: break-all; }
.mono { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 12px; }
.muted { color: var(--muted); }
.badge { display: inline-block; padding: 0 .45rem; border-radius: 9px; font-size: 12px; background: #e4e8ee; }
.s-sent { background: #dcf3e3; } .s-dead { background: #f8dcdc; } .s-pending { background: #e3ecfb; }
.s-held, .s-uncertain, .s-partial { background: #fbeccc; } .s-cancelled { background: #e9e9e9; } .s-sending { background: #e6e0fa; }
.cards { display: flex; flex-wrap: wrap; gap: .8rem; }
.card { background: #fff; border: 1px solid var(--line); padding: .6rem .9rem; min-width: 9rem; }
.card .n { font-size: 22px; font-weight: 600; }
.card a { color: inherit; text-decoration: none; }
.warn { color: var(--warn); font-weight: 600; }
form.filters { display: flex; flex-wrap: wrap; gap: .6rem; align-items: end; background: #fff; border: 1px solid var(--line); padding: .7rem; margin-bottom: .8rem; }
form.filters label { display: flex; flex-direction: column; font-size: 12px; color: var(--muted); }
form.filters fieldset { border: 0; padding: 0; margin: 0; display: flex; gap: .5rem; font-size: 12px; }
input[type=text], input[type=search], select { font: inherit; padding: .25rem .4rem; border: 1px solid var(--line); }
button, .button { font: inherit; padding: .3rem .8rem; border: 1px solid #3b6fc2; background: #3b6fc2; color: #fff; cursor: pointer; text-decoration: none; display: inline-block; }
button.danger, .button.danger { background: var(--fail); border-color: var(--fail); }
.button.secondary { background: #fff; color: #3b6fc2; }
.actions { display: flex; gap: .5rem; flex-wrap: wrap; margin: .5rem 0 1rem; }
.pager { display: flex; gap: 1rem; margin: .8rem 0; }
.notice { background: #fff8e6; border: 1px solid #f0d48a; padding: .6rem .8rem; margin: .6rem 0; }
.error { background: #fdecec; border: 1px solid #efb3b3; padding: .6rem .8rem; margin: .6rem 0; }
.done { background: #e9f7ee; border: 1px solid #a9dcb9; padding: .6rem .8rem; margin: .6rem 0; }
form.inline { display: inline; }
iframe.preview { width: 100%; height: 480px; border: 1px solid var(--line); background: #fff; }
figure.chart { background: #fff; border: 1px solid var(--line); margin: 0; padding: .5rem .7rem; }
figure.chart figcaption { font-size: 12px; color: var(--muted); margin-bottom: .3rem; }
figure.chart svg { display: block; width: 100%; height: auto; }
form.pause { margin-top: .4rem; }
.chart-axis { display: flex; justify-content: space-between; font-size: 11px; color: var(--muted); }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap: .8rem; }
rect.bar-ok { fill: var(--ok); } rect.bar-fail { fill: var(--fail); } rect.bar-lat { fill: var(--lat); }
line.axis { stroke: var(--line); }
footer { color: var(--muted); font-size: 12px; padding: 1rem 1.2rem; }
`;
