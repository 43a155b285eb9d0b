/**
 * The cost of the relay's gauges (`store.gauges()`) on a large outbox: bulk-loads N rows (default
 * 1,000,000; 90% sent, the rest pending (due and scheduled), held, dead, cancelled and sending,
 * some with an uncertain hand-off) into a fresh PostgreSQL schema and a temporary SQLite file,
 * then times `gauges()` (median of 10 after one warm-up) and, for comparison, the plain
 * `GROUP BY status` count. On PostgreSQL it measures both right after the load (the visibility
 * map not yet set: index-only scans still visit the heap) and after VACUUM (as autovacuum leaves
 * a table), and prints the plan of the gauges statement. The schema and the file are removed
 * afterwards.
 *
 *   node --import tsx bench/ops-gauges.ts [--rows 1000000] [--only postgresql|sqlite|mariadb]
 */
import { performance } from "node:perf_hooks";
import { openDatabase, type Db } from "../src/db.js";
import { GAUGES as PG_GAUGES, SENT_EXACT_BELOW, gauges as pgGauges } from "../src/stores/postgres/ops-sql.js";
import { STATUSES } from "../src/states.js";
import { GAUGES as MYSQL_GAUGES } from "../src/stores/mysql/ops-sql.js";
import { freshMysql, freshPostgres, freshSqlite } from "../test/support/db.js";

const args = process.argv.slice(2);
const arg = (name: string) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const ROWS = Number(arg("--rows") ?? 1_000_000);
const ONLY = arg("--only");
const RUNS = 10;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

async function time(fn: () => Promise<unknown>): Promise<{ median: number; min: number; max: number }> {
  await fn();
  const xs: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    const t0 = performance.now();
    await fn();
    xs.push(performance.now() - t0);
  }
  return { median: median(xs), min: Math.min(...xs), max: Math.max(...xs) };
}

const fmt = (x: { median: number; min: number; max: number }) => `${x.median.toFixed(1)} ms (min ${x.min.toFixed(1)}, max ${x.max.toFixed(1)})`;

/**
 * The status of row i (0-based), per 1000 rows: 900 sent, 40 pending and due, 20 pending for
 * later, 5 held (uncertain), 20 dead (every 10th uncertain), 14 cancelled, 1 sending.
 */
const STATUS_CASE = (i: string) => `CASE
  WHEN ${i} % 1000 < 900 THEN 'sent'
  WHEN ${i} % 1000 < 960 THEN 'pending'
  WHEN ${i} % 1000 < 965 THEN 'held'
  WHEN ${i} % 1000 < 985 THEN 'dead'
  WHEN ${i} % 1000 < 999 THEN 'cancelled'
  ELSE 'sending' END`;
const DUE_CASE = (i: string, past: string, future: string) => `CASE WHEN ${i} % 1000 BETWEEN 940 AND 959 THEN ${future} ELSE ${past} END`;
const UNCERTAIN_CASE = (i: string) => `CASE WHEN ${i} % 1000 BETWEEN 960 AND 964 OR (${i} % 1000 BETWEEN 965 AND 984 AND ${i} % 10 = 0) THEN 1 ELSE 0 END`;

function expected(rows: number) {
  const per = new Map<string, number>(STATUSES.map((s) => [s, 0]));
  let due = 0;
  let uncertain = 0;
  for (let i = 0; i < rows; i++) {
    const k = i % 1000;
    const s = k < 900 ? "sent" : k < 960 ? "pending" : k < 965 ? "held" : k < 985 ? "dead" : k < 999 ? "cancelled" : "sending";
    per.set(s, per.get(s)! + 1);
    if (k >= 900 && k < 940) due++;
    if ((k >= 960 && k < 965) || (k >= 965 && k < 985 && i % 10 === 0)) uncertain++;
  }
  return { per, due, uncertain };
}

function check(db: Db, g: Awaited<ReturnType<Db["gauges"]>>): string {
  const want = expected(ROWS);
  const got = new Map(g.byStatus.map((s) => [s.status, s.n]));
  const bad = [...want.per].filter(([s, n]) => got.get(s) !== n).map(([s, n]) => `${s} ${got.get(s)} (expected ${n})`);
  if (g.due !== want.due) bad.push(`due ${g.due} (expected ${want.due})`);
  if (g.uncertain !== want.uncertain) bad.push(`uncertain ${g.uncertain} (expected ${want.uncertain})`);
  if (bad.length > 0) throw new Error(`${db.dialect}: wrong gauges: ${bad.join(", ")}`);
  return `counts exact (due ${g.due}, oldest due ${g.oldestDueAgeSeconds?.toFixed(0)} s, uncertain ${g.uncertain}, held ${g.held}, dead ${g.dead})`;
}

const lines: string[] = [];
const out = (line: string) => {
  lines.push(line);
  console.log(line);
};

async function postgres(): Promise<void> {
  const fx = await freshPostgres();
  const db = await openDatabase(fx.url, { poolSize: 1 });
  try {
    if (db.dialect !== "postgresql") throw new Error("expected PostgreSQL");
    const t0 = performance.now();
    await db.pool.query(
      `INSERT INTO mail_outbox (id, message_id, status, priority, envelope_from, envelope_to, subject, raw, size,
                                attempts, max_attempts, send_at, next_attempt_at, uncertain_handoffs, created_at, updated_at, sent_at)
       SELECT gen_random_uuid(), '<' || i || '@bench.example>', ${STATUS_CASE("i")}, 0, 'app@example.test', '["ann@example.test"]'::jsonb,
              'hi', '\\x4d6573736167652d49443a'::bytea, 11, 1, 5, now() - interval '1 day',
              ${DUE_CASE("i", "now() - interval '1 hour' + (i % 1000) * interval '1 second'", "now() + interval '1 hour'")},
              ${UNCERTAIN_CASE("i")}, now() - interval '1 day', now(), NULL
       FROM generate_series(0, $1::int - 1) AS i`,
      [ROWS],
    );
    await db.pool.query("ANALYZE mail_outbox");
    const size = (await db.pool.query<{ t: string; i: string }>(`SELECT pg_size_pretty(pg_table_size('mail_outbox')) AS t, pg_size_pretty(pg_relation_size('mail_outbox_claim_idx')) AS i`)).rows[0]!;
    out(`### PostgreSQL 15, ${ROWS.toLocaleString("en")} rows (loaded in ${((performance.now() - t0) / 1000).toFixed(1)} s; table ${size.t}, mail_outbox_claim_idx ${size.i})`);
    out("");
    const group = () => db.pool.query(`SELECT status, count(*) FROM mail_outbox GROUP BY status`);
    const exactSent = async () => Number((await db.pool.query<{ n: string }>(`SELECT count(*) AS n FROM mail_outbox WHERE status = 'sent'`)).rows[0]!.n);
    const estimate = async () => {
      const g = await pgGauges(db.pool);
      const sent = g.byStatus.find((x) => x.status === "sent")!.n;
      const exact = await exactSent();
      return `sent ${g.sentEstimated ? "estimated" : "counted"}: ${sent.toLocaleString("en")} (exact ${exact.toLocaleString("en")}, error ${(((sent - exact) / exact) * 100).toFixed(2)}%)`;
    };
    out(`- right after the load (ANALYZE, no VACUUM: the visibility map is empty, index-only scans visit the heap):`);
    out(`  - gauges(): ${fmt(await time(() => db.gauges()))}; ${await estimate()}`);
    out(`  - gauges() counting sent exactly: ${fmt(await time(() => pgGauges(db.pool, Number.POSITIVE_INFINITY)))}`);
    out(`  - plain \`SELECT status, count(*) ... GROUP BY status\`: ${fmt(await time(group))}`);
    await db.pool.query("VACUUM (ANALYZE) mail_outbox");
    out(`- after VACUUM (as autovacuum keeps a table):`);
    out(`  - gauges(): ${fmt(await time(() => db.gauges()))}; ${check(db, { ...(await pgGauges(db.pool, Number.POSITIVE_INFINITY)) })}; ${await estimate()}`);
    out(`  - gauges() counting sent exactly: ${fmt(await time(() => pgGauges(db.pool, Number.POSITIVE_INFINITY)))}`);
    out(`  - plain \`SELECT status, count(*) ... GROUP BY status\`: ${fmt(await time(group))}`);
    out(`  - \`count(*) WHERE status = 'sent'\` alone: ${fmt(await time(exactSent))}`);
    // Traffic since the last VACUUM: 5% of the rows sent again (dead tuples, new pages), 1% new mail.
    await db.pool.query(`UPDATE mail_outbox SET updated_at = now() WHERE status = 'sent' AND random() < 0.055`);
    await db.pool.query(
      `INSERT INTO mail_outbox (id, message_id, status, envelope_from, envelope_to, subject, raw, size, max_attempts, send_at, next_attempt_at)
       SELECT gen_random_uuid(), '<new' || i || '@bench.example>', 'sent', 'app@example.test', '["ann@example.test"]', 'hi', '\\x00'::bytea, 1, 5, now(), now()
       FROM generate_series(1, $1::int) AS i`,
      [Math.round(ROWS / 100)],
    );
    // The statistics collector takes a backend's counts at its next idle moment, at most once a second.
    await new Promise((resolve) => setTimeout(resolve, 2000));
    out(`- after traffic without VACUUM (5% of the rows updated, 1% inserted as sent): gauges(): ${fmt(await time(() => db.gauges()))}; ${await estimate()}`);
    await db.pool.query("VACUUM (ANALYZE) mail_outbox");
    out(`  (\`sent\` comes from the statistics above ${SENT_EXACT_BELOW.toLocaleString("en")} rows, counted exactly below)`);
    const plan = await db.pool.query<{ "QUERY PLAN": string }>(`EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, TIMING OFF) ${PG_GAUGES}`, [STATUSES.filter((x) => x !== "sent"), SENT_EXACT_BELOW]);
    out("");
    out("EXPLAIN (ANALYZE, BUFFERS) of the gauges statement, after VACUUM (scan nodes):");
    out("```");
    for (const r of plan.rows) {
      const l = r["QUERY PLAN"];
      if (/Scan|Heap Fetches|Buffers|Execution Time|Planning Time/.test(l)) out(l.replace(/\s+$/, ""));
    }
    out("```");
  } finally {
    await db.close();
    await fx.cleanup();
  }
}

async function sqlite(): Promise<void> {
  const fx = await freshSqlite();
  const db = await openDatabase(fx.url);
  try {
    if (db.dialect !== "sqlite") throw new Error("expected SQLite");
    const t0 = performance.now();
    const ts = (offset: string) => `strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now', ${offset})`;
    db.db.exec("BEGIN");
    db.db
      .prepare(
        `WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < @rows)
         INSERT INTO mail_outbox (id, message_id, status, priority, envelope_from, envelope_to, subject, raw, size,
                                  attempts, max_attempts, send_at, next_attempt_at, uncertain_handoffs, created_at, updated_at)
         SELECT lower(hex(randomblob(16))), '<' || i || '@bench.example>', ${STATUS_CASE("i")}, 0, 'app@example.test', '["ann@example.test"]',
                'hi', x'4d6573736167652d49443a', 11, 1, 5, ${ts("'-1 day'")},
                ${DUE_CASE("i", `strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now', '-1 hour', '+' || (i % 1000) || ' seconds')`, ts("'+1 hour'"))},
                ${UNCERTAIN_CASE("i")}, ${ts("'-1 day'")}, ${ts("'0 seconds'")}
         FROM n`,
      )
      .run({ rows: ROWS });
    db.db.exec("COMMIT");
    db.db.exec("ANALYZE");
    const { bytes } = db.db.prepare(`SELECT page_count * page_size AS bytes FROM pragma_page_count(), pragma_page_size()`).get() as { bytes: number };
    out(`### SQLite ${(db.db.prepare("SELECT sqlite_version() AS v").get() as { v: string }).v}, ${ROWS.toLocaleString("en")} rows (loaded in ${((performance.now() - t0) / 1000).toFixed(1)} s; file ${(bytes / 1048576).toFixed(0)} MiB)`);
    out("");
    out(`- gauges(): ${fmt(await time(() => db.gauges()))}; ${check(db, await db.gauges())}`);
    out(`- plain \`SELECT status, count(*) ... GROUP BY status\`: ${fmt(await time(async () => db.db.prepare(`SELECT status, count(*) FROM mail_outbox GROUP BY status`).all()))}`);
    out(`- \`count(*) WHERE status = 'sent'\` alone: ${fmt(await time(async () => db.db.prepare(`SELECT count(*) FROM mail_outbox WHERE status = 'sent'`).get()))}`);
    out(`- \`count(*)\` of the whole table: ${fmt(await time(async () => db.db.prepare(`SELECT count(*) FROM mail_outbox`).get()))}`);
    const plan = db.db.prepare(`EXPLAIN QUERY PLAN SELECT (SELECT count(*) FROM mail_outbox m WHERE m.status = 'sent'), (SELECT count(*) FROM mail_outbox WHERE status = 'pending' AND next_attempt_at <= 'x'), (SELECT count(*) FROM mail_outbox WHERE status IN ('pending', 'sending', 'held', 'dead') AND uncertain_handoffs > 0)`).all() as { detail: string }[];
    out(`- plan: ${plan.map((p) => p.detail).join("; ")}`);
  } finally {
    await db.close();
    await fx.cleanup();
  }
}

/** MariaDB (MySQL's SQL): every count exact, `sent` included (src/stores/mysql/ops-sql.ts GAUGES). */
async function mariadb(): Promise<void> {
  const fx = await freshMysql();
  const db = await openDatabase(fx.url, { poolSize: 1 });
  try {
    if (db.dialect !== "mysql") throw new Error("expected MySQL/MariaDB");
    const t0 = performance.now();
    await db.pool.query(
      `INSERT INTO mail_outbox (id, message_id, status, priority, envelope_from, envelope_to, subject, raw, size,
                                attempts, max_attempts, send_at, next_attempt_at, uncertain_handoffs, created_at, updated_at)
       WITH RECURSIVE d(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM d WHERE i < 999)
       SELECT UUID(), CONCAT('<', n.i, '@bench.example>'), ${STATUS_CASE("n.i")}, 0, 'app@example.test', '["ann@example.test"]',
              'hi', X'4d6573736167652d49443a', 11, 1, 5, NOW(3) - INTERVAL 1 DAY,
              ${DUE_CASE("n.i", "NOW(3) - INTERVAL 1 HOUR + INTERVAL (n.i % 1000) SECOND", "NOW(3) + INTERVAL 1 HOUR")},
              ${UNCERTAIN_CASE("n.i")}, NOW(3) - INTERVAL 1 DAY, NOW(3)
       FROM (SELECT a.i * 1000 + b.i AS i FROM d a, d b) n WHERE n.i < ?`,
      [ROWS],
    );
    await db.pool.query("ANALYZE TABLE mail_outbox");
    const [v] = (await db.pool.query("SELECT version() AS v")) as [{ v: string }];
    out(`### MariaDB ${v.v}, ${ROWS.toLocaleString("en")} rows (loaded in ${((performance.now() - t0) / 1000).toFixed(1)} s)`);
    out("");
    out(`- gauges(): ${fmt(await time(() => db.gauges()))}; ${check(db, await db.gauges())}`);
    out(`- plain \`SELECT status, count(*) ... GROUP BY status\`: ${fmt(await time(() => db.pool.query(`SELECT status, count(*) FROM mail_outbox GROUP BY status`)))}`);
    out(`- \`count(*) WHERE status = 'sent'\` alone: ${fmt(await time(() => db.pool.query(`SELECT count(*) FROM mail_outbox WHERE status = 'sent'`)))}`);
    out(`- the gauges without \`sent\` (every other status by its range of mail_outbox_claim_idx): ${fmt(await time(() => db.pool.query(`SELECT status, count(*) FROM mail_outbox WHERE status IN ('pending', 'sending', 'dead', 'cancelled', 'held') GROUP BY status`)))}`);
    const plan = (await db.pool.query(`EXPLAIN ${MYSQL_GAUGES}`)) as { table: string | null; type: string | null; key: string | null; rows: number | null; Extra: string | null }[];
    out(`- plan: ${plan.map((p) => `${p.table} ${p.type} ${p.key ?? "-"} (${p.rows} rows${p.Extra ? `, ${p.Extra}` : ""})`).join("; ")}`);
  } finally {
    await db.close();
    await fx.cleanup();
  }
}

out(`## Gauge query cost (bench/ops-gauges.ts, ${new Date().toISOString().slice(0, 16)}Z, median of ${RUNS} after one warm-up)`);
out("");
if (ONLY !== "sqlite" && ONLY !== "mariadb") await postgres();
out("");
if (ONLY !== "postgresql" && ONLY !== "mariadb") await sqlite();
out("");
if (ONLY === undefined || ONLY === "mariadb") await mariadb();
