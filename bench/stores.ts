/**
 * A fresh database for each contender and run (a new PostgreSQL schema, a new SQLite file, or a
 * new database on the MariaDB server at TEST_MYSQL_URL),
 * the bulk loaders that fill it with mails already committed, and the checks that every mail
 * came out the other end.
 *
 * Every loader writes the same message (see ./mail.ts) with a fresh Message-ID per mail.
 * PostgreSQL loads are one statement each (generate_series), as a backlog would look after
 * an application had enqueued mail for a while: one row per mail, next_attempt_at one
 * millisecond apart. MariaDB loads are batched INSERTs from here (the same rows), the way the
 * driver's `batch()` sends them: MySQL has no generate_series, and a recursive CTE is capped at
 * 1,000 rows on MySQL 8 unless a session setting says otherwise.
 */
import { randomUUID } from "node:crypto";
import { rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import pg from "pg";
import { openDatabase, quoteIdent, toSqliteTime } from "../src/db.js";
import { migrate } from "../src/migrate.js";
import { mysqlAdmin, mysqlUrl } from "../test/support/db.js";
import { MESSAGE_ID_DOMAIN, newMessageId, rawWith, type MailTemplate } from "./mail.js";

export const ADMIN_URL = process.env.TEST_POSTGRES_URL ?? "postgresql://postgres@127.0.0.1:5432/test";

export type ContenderName = "relay-pg" | "relay-sqlite" | "relay-mariadb" | "graphile-worker" | "pg-boss";
export const CONTENDERS: readonly ContenderName[] = ["relay-pg", "relay-sqlite", "relay-mariadb", "graphile-worker", "pg-boss"];
/** Our relay, on one of its stores. */
export type RelayContender = "relay-pg" | "relay-sqlite" | "relay-mariadb";
export function isRelay(c: ContenderName): c is RelayContender {
  return c === "relay-pg" || c === "relay-sqlite" || c === "relay-mariadb";
}
/** The pg-boss queue and graphile-worker task every job goes to. */
export const QUEUE = "send_mail";

export interface Store {
  readonly contender: ContenderName;
  /** `postgresql://...?schema=...` for the relay on PostgreSQL, the admin URL for the job queues, `file:...` for SQLite, `mysql://.../<database>` for MariaDB. */
  readonly url: string;
  /** PostgreSQL schema (every PostgreSQL contender gets its own), the SQLite file, or the MariaDB database. */
  readonly schema: string;
  cleanup(): Promise<void>;
}

export function schemaUrl(schema: string): string {
  const u = new URL(ADMIN_URL);
  u.searchParams.set("schema", schema);
  return u.toString();
}

export async function withAdmin<T>(fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const c = new pg.Client({ connectionString: ADMIN_URL, application_name: "mail-outbox bench" });
  await c.connect();
  try {
    return await fn(c);
  } finally {
    await c.end();
  }
}

async function dropSchema(schema: string): Promise<void> {
  await withAdmin((c) => c.query(`DROP SCHEMA IF EXISTS ${quoteIdent(schema)} CASCADE`));
}

function schemaName(prefix: string): string {
  return `bench_${prefix}_${randomUUID().replace(/-/g, "").slice(0, 12)}`;
}

/** A new, empty, migrated store for `contender`. */
export async function freshStore(contender: ContenderName): Promise<Store> {
  if (contender === "relay-sqlite") {
    const file = path.join(tmpdir(), `mail-outbox-bench-${randomUUID()}.db`);
    const db = await openDatabase(`file:${file}`);
    try {
      await migrate(db);
    } finally {
      await db.close();
    }
    return {
      contender,
      url: `file:${file}`,
      schema: file,
      async cleanup() {
        for (const s of ["", "-wal", "-shm", "-journal"]) await rm(file + s, { force: true });
      },
    };
  }
  if (contender === "relay-mariadb") {
    const database = schemaName("relay");
    const cleanup = () => mysqlAdmin([`DROP DATABASE IF EXISTS \`${database}\``]);
    try {
      await mysqlAdmin([`CREATE DATABASE \`${database}\` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci`]);
      const db = await openDatabase(mysqlUrl(database), { poolSize: 1 });
      try {
        await migrate(db);
      } finally {
        await db.close();
      }
    } catch (err) {
      await cleanup().catch(() => {});
      throw err;
    }
    return { contender, url: mysqlUrl(database), schema: database, cleanup };
  }
  const schema = schemaName(contender === "relay-pg" ? "relay" : contender === "graphile-worker" ? "gw" : "pgboss");
  const cleanup = () => dropSchema(schema);
  try {
    if (contender === "relay-pg") {
      const db = await openDatabase(schemaUrl(schema), { poolSize: 1 });
      try {
        await migrate(db);
      } finally {
        await db.close();
      }
    } else if (contender === "graphile-worker") {
      const { runMigrations } = await import("./contenders/graphile.js");
      await runMigrations(schema);
    } else {
      const { installPgBoss } = await import("./contenders/pgboss.js");
      await installPgBoss(schema);
    }
  } catch (err) {
    await cleanup().catch(() => {});
    throw err;
  }
  return { contender, url: contender === "relay-pg" ? schemaUrl(schema) : ADMIN_URL, schema, cleanup };
}

const RELAY_LOAD = (schema: string) => `
INSERT INTO ${quoteIdent(schema)}.mail_outbox
  (id, message_id, status, priority, envelope_from, envelope_to, subject, raw, size, attempts, max_attempts,
   send_at, next_attempt_at, created_at, updated_at)
SELECT id, mid, 'pending', 0, $1, $2::jsonb, $3, $4::bytea || convert_to(mid, 'UTF8') || $5::bytea, $6, 0, 25, t, t, t, t
FROM (
  SELECT id, '<' || id || '@${MESSAGE_ID_DOMAIN}>' AS mid, now() - ($7::int - i) * interval '1 millisecond' AS t
  FROM (SELECT gen_random_uuid() AS id, i FROM generate_series(1, $7::int) i) g
) x`;

const RELAY_LOAD_MYSQL = `
INSERT INTO mail_outbox (id, message_id, status, priority, envelope_from, envelope_to, subject, raw, size, attempts,
  max_attempts, send_at, next_attempt_at, created_at, updated_at)
VALUES (?, ?, 'pending', 0, ?, ?, ?, ?, ?, 0, 25, ?, ?, ?, ?)`;
/** Rows per `batch()` of the MariaDB load (about 2 KiB each). */
const MYSQL_LOAD_CHUNK = 1000;

const GRAPHILE_LOAD = (schema: string) => `
SELECT count(*)::int AS n FROM ${quoteIdent(schema)}.add_jobs(array(
  SELECT row('${QUEUE}', json_build_object('mid', mid, 'from', $1::text, 'to', $2::json, 'raw', $3::text || mid || $4::text),
             null, null, null, null, null, null)::${quoteIdent(schema)}.job_spec
  FROM (SELECT '<' || gen_random_uuid() || '@${MESSAGE_ID_DOMAIN}>' AS mid FROM generate_series(1, $5::int)) g
))`;

/** The job payload the graphile-worker and pg-boss tasks receive: the same bytes the relay sends. */
export interface JobPayload {
  readonly mid: string;
  readonly from: string;
  readonly to: readonly string[];
  readonly raw: string;
}

export function jobPayload(t: MailTemplate, mid: string): JobPayload {
  return { mid, from: t.envelopeFrom, to: [...t.envelopeTo], raw: rawWith(t, mid).toString("latin1") };
}

/** Commit `n` mails for `store`'s contender. Returns the time it took, in ms. */
export async function bulkLoad(store: Store, t: MailTemplate, n: number): Promise<number> {
  const started = performance.now();
  if (store.contender === "relay-sqlite") {
    const db = await openDatabase(store.url);
    if (db.dialect !== "sqlite") throw new Error("expected SQLite");
    try {
      const insert = db.db.prepare(
        `INSERT INTO mail_outbox (id, message_id, status, priority, envelope_from, envelope_to, subject, raw, size, attempts,
           max_attempts, send_at, next_attempt_at, created_at, updated_at)
         VALUES (?, ?, 'pending', 0, ?, ?, ?, ?, ?, 0, 25, ?, ?, ?, ?)`,
      );
      const base = Date.now() - n;
      const to = JSON.stringify(t.envelopeTo);
      db.db.transaction(() => {
        for (let i = 0; i < n; i++) {
          const id = randomUUID();
          const mid = newMessageId(id);
          const at = toSqliteTime(new Date(base + i));
          insert.run(id, mid, t.envelopeFrom, to, t.subject, rawWith(t, mid), t.size, at, at, at, at);
        }
      })();
    } finally {
      await db.close();
    }
  } else if (store.contender === "relay-mariadb") {
    const db = await openDatabase(store.url, { poolSize: 1 });
    if (db.dialect !== "mysql") throw new Error("expected MySQL/MariaDB");
    try {
      const base = Date.now() - n;
      const to = JSON.stringify(t.envelopeTo);
      for (let from = 0; from < n; from += MYSQL_LOAD_CHUNK) {
        const rows = Array.from({ length: Math.min(MYSQL_LOAD_CHUNK, n - from) }, (_, k) => {
          const id = randomUUID();
          const mid = newMessageId(id);
          const at = new Date(base + from + k);
          return [id, mid, t.envelopeFrom, to, t.subject, rawWith(t, mid), t.size, at, at, at, at];
        });
        await db.pool.batch(RELAY_LOAD_MYSQL, rows);
      }
      // Fresh statistics, as InnoDB's background statistics would have them after a real backlog.
      await db.pool.query("ANALYZE TABLE mail_outbox");
    } finally {
      await db.close();
    }
  } else if (store.contender === "relay-pg") {
    await withAdmin((c) =>
      c.query(RELAY_LOAD(store.schema), [t.envelopeFrom, JSON.stringify(t.envelopeTo), t.subject, t.prefix, t.suffix, t.size, n]),
    );
  } else if (store.contender === "graphile-worker") {
    await withAdmin((c) =>
      c.query(GRAPHILE_LOAD(store.schema), [t.envelopeFrom, JSON.stringify(t.envelopeTo), t.prefix.toString("latin1"), t.suffix.toString("latin1"), n]),
    );
  } else {
    const { loadPgBoss } = await import("./contenders/pgboss.js");
    await loadPgBoss(store.schema, t, n);
  }
  // Fresh statistics, as autovacuum would have them after a real backlog built up.
  if (store.contender !== "relay-sqlite" && store.contender !== "relay-mariadb") {
    const table = store.contender === "relay-pg" ? "mail_outbox" : store.contender === "graphile-worker" ? "_private_jobs" : "job";
    await withAdmin((c) => c.query(`VACUUM ANALYZE ${quoteIdent(store.schema)}.${table}`));
  }
  return performance.now() - started;
}

export interface Outcome {
  /** Mails recorded as handed over (relay: status sent; graphile-worker: job deleted; pg-boss: job completed). */
  readonly done: number;
  /** Mails not in that state. */
  readonly left: number;
  /** Mails with more than one accepted hand-off recorded (relay only: attempt rows with outcome accepted). */
  readonly handedOverTwice: number;
}

/** What the store says after a run. */
export async function outcome(store: Store): Promise<Outcome> {
  if (store.contender === "relay-sqlite") {
    const db = await openDatabase(store.url);
    if (db.dialect !== "sqlite") throw new Error("expected SQLite");
    try {
      const r = db.db.prepare(`SELECT sum(status = 'sent') AS done, sum(status <> 'sent') AS left FROM mail_outbox`).get() as { done: number | null; left: number | null };
      const d = db.db
        .prepare(`SELECT count(*) AS n FROM (SELECT email_id FROM mail_outbox_attempt WHERE outcome = 'accepted' GROUP BY email_id HAVING count(*) > 1)`)
        .get() as { n: number };
      return { done: r.done ?? 0, left: r.left ?? 0, handedOverTwice: d.n };
    } finally {
      await db.close();
    }
  }
  if (store.contender === "relay-mariadb") {
    const db = await openDatabase(store.url, { poolSize: 1 });
    if (db.dialect !== "mysql") throw new Error("expected MySQL/MariaDB");
    try {
      const [r] = (await db.pool.query(`SELECT coalesce(sum(status = 'sent'), 0) AS done, coalesce(sum(status <> 'sent'), 0) AS remaining FROM mail_outbox`)) as {
        done: number | string;
        remaining: number | string;
      }[];
      const [d] = (await db.pool.query(
        `SELECT count(*) AS n FROM (SELECT email_id FROM mail_outbox_attempt WHERE outcome = 'accepted' GROUP BY email_id HAVING count(*) > 1) x`,
      )) as { n: number | string }[];
      return { done: Number(r!.done), left: Number(r!.remaining), handedOverTwice: Number(d!.n) };
    } finally {
      await db.close();
    }
  }
  const s = quoteIdent(store.schema);
  return withAdmin(async (c) => {
    if (store.contender === "relay-pg") {
      const r = await c.query<{ done: number; left: number }>(
        `SELECT count(*) FILTER (WHERE status = 'sent')::int AS done, count(*) FILTER (WHERE status <> 'sent')::int AS left FROM ${s}.mail_outbox`,
      );
      const d = await c.query<{ n: number }>(
        `SELECT count(*)::int AS n FROM (SELECT email_id FROM ${s}.mail_outbox_attempt WHERE outcome = 'accepted' GROUP BY email_id HAVING count(*) > 1) x`,
      );
      return { done: r.rows[0]!.done, left: r.rows[0]!.left, handedOverTwice: d.rows[0]!.n };
    }
    if (store.contender === "graphile-worker") {
      const r = await c.query<{ left: number }>(`SELECT count(*)::int AS left FROM ${s}._private_jobs`);
      return { done: -1, left: r.rows[0]!.left, handedOverTwice: 0 };
    }
    const r = await c.query<{ done: number; left: number }>(
      `SELECT count(*) FILTER (WHERE state = 'completed')::int AS done, count(*) FILTER (WHERE state <> 'completed')::int AS left FROM ${s}.job WHERE name = $1`,
      [QUEUE],
    );
    return { done: r.rows[0]!.done, left: r.rows[0]!.left, handedOverTwice: 0 };
  });
}
