/** Our relay, on PostgreSQL, SQLite or MariaDB, with hooks on its own events and on the statement that records outcomes. */
import type pg from "pg";
import type Database from "better-sqlite3";
import { openDatabase, toSqliteTime, type Db, type MysqlStore } from "../../src/db.js";
import { createRelay } from "../../src/relay.js";
import { COMPLETE_ACCEPTED } from "../../src/stores/sqlite/relay-sql.js";
import { rawWith, type MailTemplate } from "../mail.js";
import type { CommonSettings, Hooks, Producer, Running } from "./types.js";
import { sqliteOf } from "../../test/support/db.js";

export interface RelaySettings extends Omit<CommonSettings, "concurrency"> {
  /** `postgresql://...?schema=...`, `file:...` or `mysql://.../<database>` */
  readonly url: string;
  readonly relayId: string;
  /** Unset: the relay's default (sized by the transport's capacity). */
  readonly concurrency?: number;
  /** Unset: the relay's default. */
  readonly batchSize?: number;
  readonly pollIntervalMs: number;
}

type AnyFn = (...args: unknown[]) => unknown;

/** Count the rows each completion statement records, once it has committed. */
function hookPostgres(pool: pg.Pool, hooks: Hooks): void {
  const query = pool.query.bind(pool) as unknown as AnyFn;
  (pool as unknown as { query: AnyFn }).query = (...args: unknown[]) => {
    const result = query(...args);
    const config = args[0] as { name?: string } | undefined;
    if ((config?.name === "mail_outbox_complete" || config?.name === "mail_outbox_complete_sent") && result instanceof Promise) {
      result.then((r: { rows: { changed?: number }[] }) => hooks.recorded(r.rows[0]?.changed ?? 0), () => {});
    }
    return result;
  };
}

/** SQLite: the completion runs as one transaction of prepared statements; count the accepted rows, report after commit. */
function hookSqlite(database: Database.Database, hooks: Hooks): void {
  let pending = 0;
  const prepare = database.prepare.bind(database);
  database.prepare = ((sql: string) => {
    const st = prepare(sql);
    if (sql === COMPLETE_ACCEPTED) {
      const run = st.run.bind(st) as AnyFn;
      (st as unknown as { run: AnyFn }).run = (...args: unknown[]) => {
        const r = run(...args) as { changes: number };
        pending += r.changes;
        return r;
      };
    }
    return st;
  }) as typeof database.prepare;
  const transaction = database.transaction.bind(database);
  database.transaction = ((fn: AnyFn) => {
    const tx = transaction(fn) as unknown as AnyFn;
    return (...args: unknown[]) => {
      const r = tx(...args);
      if (pending > 0) {
        const n = pending;
        pending = 0;
        hooks.recorded(n);
      }
      return r;
    };
  }) as unknown as typeof database.transaction;
}

/**
 * MariaDB: the completion is several statements in one transaction (./src/stores/mysql/relay-sql.ts);
 * count the rows `complete` reports changed once it has resolved, which is after its COMMIT.
 */
function hookMysql(db: MysqlStore, hooks: Hooks): void {
  const complete = db.complete.bind(db);
  Object.assign(db, {
    complete: async (...args: Parameters<typeof complete>) => {
      const changed = await complete(...args);
      hooks.recorded(changed);
      return changed;
    },
  });
}

/** A nodemailer transport object that accepts every raw send at once (see BENCH_NULL_TRANSPORT). */
function nullTransport() {
  const sendRaw = (envelope: { to: readonly string[] }) => Promise.resolve({ response: "250 2.0.0 Ok: queued as NULL", accepted: [...envelope.to], rejected: [], rejectedErrors: [] });
  return {
    name: "null",
    version: "1",
    capabilities: { capacity: 40, sendRaw },
    send(_mail: unknown, callback: (err: Error | null, info: unknown) => void) {
      callback(new Error("the null transport takes raw sends only"), null);
    },
  };
}

export async function startRelay(s: RelaySettings, hooks: Hooks): Promise<Running> {
  const db: Db = await openDatabase(s.url, { applicationName: `mail-outbox bench ${s.relayId}` });
  if (db.dialect === "postgresql") hookPostgres(db.pool, hooks);
  else if (db.dialect === "mysql") hookMysql(db, hooks);
  else hookSqlite(sqliteOf(db).db, hooks);
  const relay = createRelay({
    db,
    // BENCH_NULL_TRANSPORT=1: a transport that takes every mail at once, without a socket, to see
    // what the relay and its database cost without SMTP (an analysis aid; the sink sees nothing).
    transport: process.env.BENCH_NULL_TRANSPORT ? nullTransport() : s.smtpUrl,
    relayId: s.relayId,
    ...(s.concurrency !== undefined ? { concurrency: s.concurrency } : {}),
    ...(s.batchSize !== undefined ? { batchSize: s.batchSize } : {}),
    pollIntervalMs: s.pollIntervalMs,
    logger: false,
  });
  relay.on("claimed", () => hooks.claimed());
  relay.on("sent", (e) => hooks.sent(e.messageId));
  await relay.start();
  return {
    async stop() {
      await relay.stop({ deadlineMs: 10_000 });
      await db.close();
    },
  };
}

/** What `enqueue()` writes, as one autocommitted INSERT (the latency producer). */
export async function relayProducer(url: string, t: MailTemplate, connections: number): Promise<Producer> {
  const db = await openDatabase(url, { poolSize: connections, applicationName: "mail-outbox bench producer" });
  const to = JSON.stringify(t.envelopeTo);
  const sql = `INSERT INTO mail_outbox (id, message_id, status, priority, envelope_from, envelope_to, subject, raw, size, attempts,
     max_attempts, send_at, next_attempt_at, created_at, updated_at)
     VALUES ($1, $2, 'pending', 0, $3, $4, $5, $6, $7, 0, 25, $8, $8, $8, $8)`;
  if (db.dialect === "postgresql") {
    return {
      async enqueue(mid) {
        const id = mid.slice(1, 37);
        await db.pool.query({ name: "bench_enqueue", text: sql, values: [id, mid, t.envelopeFrom, to, t.subject, rawWith(t, mid), t.size, new Date()] });
      },
      close: () => db.close(),
    };
  }
  if (db.dialect === "mysql") {
    const text = sql.replace(/\$\d/g, "?");
    return {
      async enqueue(mid) {
        const at = new Date();
        await db.pool.query(text, [mid.slice(1, 37), mid, t.envelopeFrom, to, t.subject, rawWith(t, mid), t.size, at, at, at, at]);
      },
      close: () => db.close(),
    };
  }
  const insert = sqliteOf(db).db.prepare(sql.replace(/\$\d/g, "?"));
  return {
    async enqueue(mid) {
      const at = toSqliteTime(new Date());
      insert.run(mid.slice(1, 37), mid, t.envelopeFrom, to, t.subject, rawWith(t, mid), t.size, at, at, at, at);
    },
    close: () => db.close(),
  };
}
