/**
 * The dashboard's list page on 1,000,000 mails in PostgreSQL, over HTTP.
 *
 *   node --import tsx bench/ui-list.ts [--rows 1000000] [--runs 7] [--keep]
 *
 * Loads the rows in one statement (generate_series) into a fresh schema, ANALYZEs, serves the
 * dashboard on loopback and times (median and max of --runs, after one warm-up) the first page, a
 * deep keyset page (the cursor of row 900,000), a status filter, a subject filter, and a recipient
 * filter (a recipient with 20 mails spread over the whole table: the worst case, since recipients
 * live in a JSON array without an index). Prints the figures and writes them to
 * /tmp/issue/figures-ui.md (or --out).
 */
import { writeFileSync } from "node:fs";
import { performance } from "node:perf_hooks";
import pg from "pg";
import { openDatabase, quoteIdent } from "../src/db.js";
import { migrate } from "../src/migrate.js";
import { serveDashboard } from "../src/ui/index.js";
import { ADMIN_URL, schemaUrl } from "./stores.js";

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] !== undefined ? process.argv[i + 1]! : fallback;
}

const ROWS = Number(arg("rows", "1000000"));
const RUNS = Number(arg("runs", "7"));
const OUT = arg("out", "/tmp/issue/figures-ui.md");
const KEEP = process.argv.includes("--keep");
const RECIPIENTS = 50_000;

const schema = `bench_ui_${Date.now().toString(36)}`;
const admin = new pg.Client({ connectionString: ADMIN_URL });
await admin.connect();
const db = await openDatabase(schemaUrl(schema), { poolSize: 4 });
try {
  await migrate(db);
  const t0 = performance.now();
  const q = quoteIdent(schema);
  // Three mails per second of created_at (ties on purpose: keyset pages must break them by id).
  await admin.query(
    `INSERT INTO ${q}.mail_outbox (id, message_id, status, envelope_from, envelope_to, subject, raw, size, metadata,
       attempts, max_attempts, send_at, next_attempt_at, created_at, updated_at, sent_at)
     SELECT gen_random_uuid(), '<' || g || '.ui@bench.example>',
       (ARRAY['sent','sent','sent','sent','dead','pending','held','cancelled'])[1 + g % 8],
       'shop@example.com', jsonb_build_array('user' || (g % ${RECIPIENTS}) || '@example.com'),
       'Receipt #' || g, convert_to('Subject: Receipt' || chr(13) || chr(10) || chr(13) || chr(10) || 'hi', 'UTF8'), 24,
       jsonb_build_object('tenant', 't' || (g % 100)),
       1, 5, now(), now(), now() - (g / 3) * interval '1 second', now(), NULL
     FROM generate_series(1, $1::int) g`,
    [ROWS],
  );
  await admin.query(`ANALYZE ${q}.mail_outbox`);
  const loadS = (performance.now() - t0) / 1000;
  console.log(`loaded ${ROWS} rows in ${loadS.toFixed(1)} s`);

  const deepAt = Math.min(900_000, ROWS - 100);
  const deep = await admin.query<{ created_at: Date; id: string }>(`SELECT created_at, id FROM ${q}.mail_outbox ORDER BY created_at DESC, id DESC OFFSET $1 LIMIT 1`, [deepAt]);
  const cursor = `${deep.rows[0]!.created_at.getTime()}.${deep.rows[0]!.id}`;

  const ui = await serveDashboard({ db, port: 0 });
  const cases: [string, string][] = [
    ["first page (50 rows)", "/mails"],
    [`deep keyset page (after row ${deepAt.toLocaleString("en")})`, `/mails?before=${cursor}`],
    ["status filter (dead)", "/mails?status=dead"],
    ["subject filter (contains \"#4242\")", "/mails?subject=%234242"],
    [`recipient filter (20 mails among ${ROWS.toLocaleString("en")})`, `/mails?recipient=user4242%40example.com`],
    ["metadata filter (tenant=t7)", "/mails?meta=tenant%3Dt7"],
    ["overview (counts, fates, charts)", "/"],
  ];
  const lines: string[] = [];
  for (const [name, path] of cases) {
    const times: number[] = [];
    let rows = 0;
    for (let i = 0; i <= RUNS; i++) {
      const s = performance.now();
      const r = await fetch(ui.url + path);
      const text = await r.text();
      if (r.status !== 200) throw new Error(`${path}: HTTP ${r.status}: ${text.slice(0, 300)}`);
      if (i > 0) times.push(performance.now() - s);
      rows = (text.match(/<tr>\n<td class="mono">/g) ?? []).length;
    }
    times.sort((a, b) => a - b);
    const median = times[Math.floor(times.length / 2)]!;
    const max = times.at(-1)!;
    const line = `| ${name} | ${rows} | ${median.toFixed(0)} ms | ${max.toFixed(0)} ms |`;
    console.log(line);
    lines.push(line);
  }
  await ui.close();
  const plan = await admin.query(`EXPLAIN SELECT id FROM ${q}.mail_outbox WHERE created_at <= now() ORDER BY created_at DESC, id DESC LIMIT 51`);
  const report = [
    `# Dashboard list page on ${ROWS.toLocaleString("en")} mails (PostgreSQL)`,
    "",
    `bench/ui-list.ts, ${new Date().toISOString()}: one HTTP GET per figure over loopback (render included), median and max of ${RUNS} runs after one warm-up; PostgreSQL 15 on the shared CI box (2 cores, other jobs running). Load: ${loadS.toFixed(1)} s (one INSERT ... generate_series, then ANALYZE).`,
    "",
    "| page | rows shown | median | max |",
    "|---|---:|---:|---:|",
    ...lines,
    "",
    `Plan of the keyset scan: ${plan.rows.map((r: Record<string, string>) => Object.values(r)[0]).join(" / ")}`,
  ].join("\n");
  writeFileSync(OUT, `${report}\n`);
  console.log(`\nwritten to ${OUT}`);
} finally {
  await db.close();
  if (!KEEP) await admin.query(`DROP SCHEMA IF EXISTS ${quoteIdent(schema)} CASCADE`);
  await admin.end();
}
