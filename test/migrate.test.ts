import { describe, it } from "node:test";
import type { TestContext } from "node:test";
import assert from "node:assert/strict";
import { rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { randomUUID } from "node:crypto";
import pg from "pg";
import { openDatabase } from "../src/db.js";
import type { Db } from "../src/db.js";
import { SchemaError } from "../src/errors.js";
import { checkSchema, inspectSchema, loadMigrations, migrate, MIGRATIONS_TABLE, type Migration } from "../src/migrate.js";
import { needPostgres, PG_ADMIN_URL } from "./support/services.js";
import { dropSchema, postgresUrl, uniqueSchemaName, pgOf } from "./support/db.js";

/** The operations tables (pauses, rate limits, leases): required by the relay. */
const OPS_TABLES = ["mail_outbox_pause", "mail_outbox_rate", "mail_outbox_lock"] as const;

type Dialect = "sqlite" | "postgresql";

/** A URL to a database (SQLite file / PostgreSQL schema) that does not exist yet; removed after the test. */
function emptyDatabaseUrl(t: TestContext, dialect: Dialect): { url: string; schema: string } {
  if (dialect === "sqlite") {
    const file = path.join(tmpdir(), `mail-outbox-migrate-${randomUUID()}.db`);
    t.after(async () => {
      for (const s of ["", "-wal", "-shm"]) await rm(file + s, { force: true });
    });
    return { url: `file:${file}`, schema: "main" };
  }
  const schema = uniqueSchemaName("mig");
  t.after(() => dropSchema(schema));
  return { url: postgresUrl(schema), schema };
}

async function open(t: TestContext, url: string): Promise<Db> {
  const db = await openDatabase(url);
  t.after(() => db.close());
  return db;
}

async function exec(db: Db, sql: string): Promise<void> {
  if (db.dialect === "sqlite") db.db.exec(sql);
  else await pgOf(db).pool.query(sql);
}

async function tableExists(db: Db, table: string): Promise<boolean> {
  if (db.dialect === "sqlite") return db.db.prepare(`SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?`).get(table) !== undefined;
  const r = await pgOf(db).pool.query(`SELECT to_regclass(format('%I.%I', $1::text, $2::text)) AS t`, [pgOf(db).schema, table]);
  return r.rows[0].t !== null;
}

async function count(db: Db, sql: string): Promise<number> {
  if (db.dialect === "sqlite") return Number((db.db.prepare(sql).get() as { n: number }).n);
  return Number((await pgOf(db).pool.query(sql)).rows[0].n);
}

/** The table migrations (not the idempotent ones Prisma's models cannot describe), as `prisma migrate dev` creates the tables from the copied models. */
async function prismaMigrateDev(db: Db, migrations: readonly Migration[]): Promise<void> {
  for (const m of migrations) if (!m.applyOnBaseline) await exec(db, m.sql);
}

/** Insert one outbox row with plain SQL, as enqueue() would. */
async function insertMail(db: Db): Promise<void> {
  const now = new Date().toISOString();
  const values = [randomUUID(), `<${randomUUID()}@test>`, "a@example.com", JSON.stringify(["b@example.com"]), Buffer.from("raw"), 3, 5, now, now];
  const cols = "id, message_id, envelope_from, envelope_to, raw, size, max_attempts, send_at, next_attempt_at";
  if (db.dialect === "sqlite") db.db.prepare(`INSERT INTO mail_outbox (${cols}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`).run(...values);
  else await pgOf(db).pool.query(`INSERT INTO mail_outbox (${cols}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`, values);
}

/**
 * An outbox as the previous version's migrate left it: every shipped migration before the one
 * whose version ends in `suffix` run and recorded, nothing of that one, and one mail in it.
 */
async function previousVersion(t: TestContext, dialect: Dialect, suffix: string): Promise<{ db: Db; migrations: Migration[]; next: Migration; previous: Migration[] }> {
  const migrations = await loadMigrations(dialect);
  const next = migrations.find((m) => m.version.endsWith(suffix));
  assert.ok(next, `a ${suffix.slice(1)} migration is shipped`);
  const previous = migrations.filter((m) => m.version < next.version);
  const db = await open(t, emptyDatabaseUrl(t, dialect).url);
  if (dialect === "postgresql") await exec(db, `CREATE SCHEMA ${(db as { schema: string }).schema}`);
  await exec(db, `CREATE TABLE ${MIGRATIONS_TABLE} (version TEXT PRIMARY KEY, applied_at TEXT NOT NULL DEFAULT '', kind TEXT NOT NULL DEFAULT 'applied')`);
  for (const m of previous) {
    await exec(db, m.sql);
    await exec(db, `INSERT INTO ${MIGRATIONS_TABLE} (version) VALUES ('${m.version}')`);
  }
  await insertMail(db);
  return { db, migrations, next, previous };
}

for (const dialect of ["sqlite", "postgresql"] as const) {
  describe(`migrate on ${dialect}`, () => {
    it("creates the outbox tables on an empty database, and running it again changes nothing", async (t) => {
      if (dialect === "postgresql" && !(await needPostgres(t))) return;
      const all = (await loadMigrations(dialect)).map((m) => m.version);
      const db = await open(t, emptyDatabaseUrl(t, dialect).url);
      const lines: string[] = [];
      const first = await migrate(db, { log: (l) => lines.push(l) });
      assert.deepEqual(first, { applied: all, alreadyApplied: [], baselined: [], repaired: [] });
      assert.equal(lines.length, all.length);
      assert.deepEqual(await checkSchema(db), []);
      await insertMail(db);
      const second = await migrate(db);
      assert.deepEqual(second, { applied: [], alreadyApplied: all, baselined: [], repaired: [] });
      assert.equal(await count(db, `SELECT count(*) AS n FROM ${MIGRATIONS_TABLE}`), all.length);
      assert.equal(await count(db, `SELECT count(*) AS n FROM mail_outbox`), 1, "the mail written in between is still there");
    });

    it("a dry run lists what it would apply and creates nothing", async (t) => {
      if (dialect === "postgresql" && !(await needPostgres(t))) return;
      const all = (await loadMigrations(dialect)).map((m) => m.version);
      const db = await open(t, emptyDatabaseUrl(t, dialect).url);
      const lines: string[] = [];
      assert.deepEqual(await migrate(db, { dryRun: true, log: (l) => lines.push(l) }), { applied: all, alreadyApplied: [], baselined: [], repaired: [] });
      assert.ok(lines.every((l) => l.startsWith("would apply")), lines.join("\n"));
      assert.equal(await tableExists(db, "mail_outbox"), false);
      assert.equal(await tableExists(db, MIGRATIONS_TABLE), false);
    });

    it("checkSchema names a dropped column, a missing index and missing tables", async (t) => {
      if (dialect === "postgresql" && !(await needPostgres(t))) return;
      const db = await open(t, emptyDatabaseUrl(t, dialect).url);
      if (dialect === "postgresql") await exec(db, `CREATE SCHEMA ${(db as { schema: string }).schema}`);
      const missing = await checkSchema(db);
      assert.ok(missing.some((p) => p.includes("table mail_outbox is missing")), missing.join("\n"));
      assert.ok(missing.some((p) => p.includes("table mail_outbox_attempt is missing")), missing.join("\n"));

      await migrate(db);
      assert.deepEqual(await checkSchema(db), []);
      await exec(db, `ALTER TABLE mail_outbox DROP COLUMN lease_owner`);
      await exec(db, `DROP INDEX mail_outbox_created_idx`);
      const problems = await checkSchema(db);
      assert.equal(problems.length, 2, problems.join("\n"));
      assert.match(problems[0]!, /column mail_outbox\.lease_owner is missing \(expected text/i);
      assert.match(problems[1]!, /index mail_outbox_created_idx on mail_outbox is missing/);
    });

    it("migrate recreates what a recorded migration created and the database lost (table, index, nullable column), keeping the rows, and says so", async (t) => {
      if (dialect === "postgresql" && !(await needPostgres(t))) return;
      const db = await open(t, emptyDatabaseUrl(t, dialect).url);
      await migrate(db);
      await insertMail(db);
      await exec(db, `DROP TABLE mail_outbox_attempt`);
      await exec(db, `DROP INDEX mail_outbox_claim_idx`);
      await exec(db, `ALTER TABLE mail_outbox DROP COLUMN mta_queue_id`);
      const before = await checkSchema(db);
      assert.equal(before.length, 3, before.join("\n"));
      assert.ok(before.every((p) => p.endsWith("(run `mail-outbox migrate`)")), before.join("\n"));

      const dry = await migrate(db, { dryRun: true });
      assert.equal(await tableExists(db, "mail_outbox_attempt"), false, "a dry run changes nothing");

      const lines: string[] = [];
      const result = await migrate(db, { log: (l) => lines.push(l) });
      assert.deepEqual(result.applied, []);
      assert.ok(result.repaired.some((r) => r.startsWith("table mail_outbox_attempt")), result.repaired.join("\n"));
      assert.ok(result.repaired.some((r) => r.startsWith("index mail_outbox_claim_idx")), result.repaired.join("\n"));
      assert.ok(result.repaired.includes("column mail_outbox.mta_queue_id"), result.repaired.join("\n"));
      assert.ok(lines.some((l) => /^recreated table mail_outbox_attempt .*missing from the database/.test(l)), lines.join("\n"));
      assert.deepEqual(dry.repaired, result.repaired, "the dry run listed what was then done");
      assert.deepEqual(await checkSchema(db), []);
      assert.equal(await count(db, `SELECT count(*) AS n FROM mail_outbox`), 1, "the mail is still there");
      assert.deepEqual((await migrate(db)).repaired, [], "a second run has nothing to repair");
    });

    it("a lost NOT NULL column is not recreated by migrate; checkSchema gives the statement to run by hand", async (t) => {
      if (dialect === "postgresql" && !(await needPostgres(t))) return;
      const db = await open(t, emptyDatabaseUrl(t, dialect).url);
      await migrate(db);
      await exec(db, `ALTER TABLE mail_outbox DROP COLUMN size`);
      assert.deepEqual((await migrate(db)).repaired, []);
      const problems = await checkSchema(db);
      assert.equal(problems.length, 1, problems.join("\n"));
      assert.match(problems[0]!, /column mail_outbox\.size is missing .*ALTER TABLE "mail_outbox" ADD COLUMN "size" INTEGER NOT NULL DEFAULT <value>/);
    });

    it("in tables Prisma Migrate owns, migrate leaves a lost index alone and checkSchema gives the statement, while a lost notify trigger is recreated", async (t) => {
      if (dialect === "postgresql" && !(await needPostgres(t))) return;
      const migrations = await loadMigrations(dialect);
      const db = await open(t, emptyDatabaseUrl(t, dialect).url);
      if (dialect === "postgresql") await exec(db, `CREATE SCHEMA ${(db as { schema: string }).schema}`);
      await prismaMigrateDev(db, migrations); // what `prisma migrate dev` runs for the copied models
      await migrate(db); // records 0001_init as a baseline
      await exec(db, `DROP INDEX mail_outbox_created_idx`);
      if (dialect === "postgresql") await exec(db, `DROP TRIGGER mail_outbox_notify ON mail_outbox`);
      const result = await migrate(db);
      assert.deepEqual(result.repaired, dialect === "postgresql" ? ["trigger mail_outbox_notify (0002_notify)"] : []);
      const problems = await checkSchema(db);
      assert.equal(problems.length, 1, problems.join("\n"));
      assert.match(problems[0]!, /^index mail_outbox_created_idx on mail_outbox is missing \(your Prisma migrations own the outbox tables: .*npx prisma migrate dev --create-only.*: CREATE INDEX "mail_outbox_created_idx" ON "mail_outbox"\("created_at"\)\)$/);
    });

    it("checkSchema names a column of the wrong type", async (t) => {
      if (dialect === "postgresql" && !(await needPostgres(t))) return;
      const db = await open(t, emptyDatabaseUrl(t, dialect).url);
      await migrate(db);
      if (dialect === "postgresql") await exec(db, `ALTER TABLE mail_outbox ALTER COLUMN envelope_to TYPE text`);
      else await exec(db, `ALTER TABLE mail_outbox DROP COLUMN mta_queue_id; ALTER TABLE mail_outbox ADD COLUMN mta_queue_id INTEGER`);
      const problems = await checkSchema(db);
      const col = dialect === "postgresql" ? "envelope_to has type text, expected jsonb" : "mta_queue_id has type INTEGER, expected TEXT";
      assert.ok(problems.some((p) => p.includes(`column mail_outbox.${col}`)), problems.join("\n"));
    });

    it("tables that Prisma Migrate created from the models are recorded as a baseline, not created again", async (t) => {
      if (dialect === "postgresql" && !(await needPostgres(t))) return;
      const migrations = await loadMigrations(dialect);
      const db = await open(t, emptyDatabaseUrl(t, dialect).url);
      if (dialect === "postgresql") await exec(db, `CREATE SCHEMA ${(db as { schema: string }).schema}`);
      await prismaMigrateDev(db, migrations); // what `prisma migrate dev` runs for the copied models
      await insertMail(db);
      const result = await migrate(db);
      assert.deepEqual(result.baselined, migrations.filter((m) => !m.applyOnBaseline).map((m) => m.version));
      assert.deepEqual(result.applied, dialect === "postgresql" ? ["0002_notify"] : []);
      assert.equal(await count(db, `SELECT count(*) AS n FROM mail_outbox`), 1);
      assert.deepEqual(await checkSchema(db), []);
      assert.deepEqual(await migrate(db), { applied: [], alreadyApplied: migrations.map((m) => m.version), baselined: [], repaired: [] });
    });

    it("an outbox migrated by an earlier version (before the delivery-fate tables) is brought up by migrate: the new tables appear, its mail is kept", async (t) => {
      if (dialect === "postgresql" && !(await needPostgres(t))) return;
      const { db, migrations, next: fate, previous } = await previousVersion(t, dialect, "_delivery_fate");
      const before = await inspectSchema(db);
      assert.ok(before.some((p) => p.kind === "migration" && p.message.includes(fate.version)), "doctor says the new migration is due");
      for (const table of ["mail_outbox_delivery", "mail_outbox_suppression", "mail_outbox_log_cursor"]) {
        const p = before.find((x) => x.kind === "table" && x.table === table);
        assert.ok(p, `${table} reported missing`);
        assert.equal(p.blocksRelay, false, "the relay keeps working until the upgrade is migrated");
      }
      // What blocks the relay is only what came later than the delivery-fate tables: the operations state.
      assert.deepEqual(
        before.filter((p) => p.blocksRelay).map((p) => p.message).sort(),
        [...OPS_TABLES.map((t) => `table ${t} is missing`), `column mail_outbox.trace_context is missing (expected ${db.columnTypes.text})`].sort(),
      );
      const result = await migrate(db);
      assert.deepEqual(result.applied, migrations.filter((m) => m.version >= fate.version).map((m) => m.version));
      assert.deepEqual(result.alreadyApplied, previous.map((m) => m.version));
      for (const table of ["mail_outbox_delivery", "mail_outbox_suppression", "mail_outbox_log_cursor"]) assert.equal(await tableExists(db, table), true, table);
      assert.equal(await count(db, `SELECT count(*) AS n FROM mail_outbox`), 1);
      assert.deepEqual(await checkSchema(db), []);
    });

    it("an outbox migrated before the operations tables stops the relay (a relay that cannot see a pause must not send) until migrate adds them; its mail is kept", async (t) => {
      if (dialect === "postgresql" && !(await needPostgres(t))) return;
      const { db, next: ops } = await previousVersion(t, dialect, "_operations");
      const before = await inspectSchema(db);
      for (const table of OPS_TABLES) {
        const p = before.find((x) => x.kind === "table" && x.table === table);
        assert.ok(p, `${table} reported missing`);
        assert.equal(p.blocksRelay, true, `${table}: the relay must not send without it`);
        assert.equal(p.repairable, true);
        assert.match(p.fix, /mail-outbox migrate/);
      }
      const column = before.find((x) => x.kind === "column" && x.message.includes("trace_context"));
      assert.ok(column, "mail_outbox.trace_context reported missing");
      assert.deepEqual([column.blocksRelay, column.repairable], [true, true]);
      const result = await migrate(db);
      assert.deepEqual(result.applied, [ops.version]);
      for (const table of OPS_TABLES) assert.equal(await tableExists(db, table), true, table);
      assert.equal(await count(db, `SELECT count(*) AS n FROM mail_outbox`), 1);
      assert.deepEqual(await checkSchema(db), []);
    });

    it("a lost operations table is recreated by migrate", async (t) => {
      if (dialect === "postgresql" && !(await needPostgres(t))) return;
      const db = await open(t, emptyDatabaseUrl(t, dialect).url);
      await migrate(db);
      await exec(db, `DROP TABLE mail_outbox_pause`);
      const problems = await inspectSchema(db);
      assert.deepEqual(problems.map((p) => [p.kind, p.table, p.repairable, p.blocksRelay]), [["table", "mail_outbox_pause", true, true]]);
      const repaired = (await migrate(db)).repaired;
      assert.ok(repaired.some((r) => r.startsWith("table mail_outbox_pause")), repaired.join("\n"));
      assert.deepEqual(await checkSchema(db), []);
    });

    it("a lost delivery-fate table is recreated by migrate, with its indexes and its foreign key", async (t) => {
      if (dialect === "postgresql" && !(await needPostgres(t))) return;
      const db = await open(t, emptyDatabaseUrl(t, dialect).url);
      await migrate(db);
      await exec(db, `DROP TABLE mail_outbox_delivery`);
      const repaired = (await migrate(db)).repaired;
      assert.ok(repaired.some((r) => r.startsWith("table mail_outbox_delivery")), repaired.join("\n"));
      assert.ok(repaired.some((r) => r.startsWith("index mail_outbox_delivery_event_key_key")), repaired.join("\n"));
      if (dialect === "postgresql") assert.ok(repaired.some((r) => r.startsWith("foreign key mail_outbox_delivery_email_id_fkey")), repaired.join("\n"));
      assert.deepEqual(await checkSchema(db), []);
    });

    it("a lost cascading foreign key of mail_outbox_delivery is reported (purge would leave its events behind) and recreated by migrate", async (t) => {
      if (dialect !== "postgresql") return t.skip("SQLite adds a foreign key only with its table (covered by the lost-table test)");
      if (!(await needPostgres(t))) return;
      const db = await open(t, emptyDatabaseUrl(t, dialect).url);
      await migrate(db);
      await exec(db, `ALTER TABLE mail_outbox_delivery DROP CONSTRAINT mail_outbox_delivery_email_id_fkey`);
      const problems = await inspectSchema(db);
      assert.deepEqual(problems.map((p) => [p.kind, p.table, p.repairable, p.blocksRelay]), [["foreign-key", "mail_outbox_delivery", true, false]]);
      assert.deepEqual((await migrate(db)).repaired, ["foreign key mail_outbox_delivery_email_id_fkey (0003_delivery_fate)"]);
      assert.deepEqual(await checkSchema(db), []);
    });

    it("tables Prisma Migrate made from an earlier version's models: that version is recorded as a baseline, and the delivery-fate migration is refused until the models are updated", async (t) => {
      if (dialect === "postgresql" && !(await needPostgres(t))) return;
      const migrations = await loadMigrations(dialect);
      const db = await open(t, emptyDatabaseUrl(t, dialect).url);
      if (dialect === "postgresql") await exec(db, `CREATE SCHEMA ${(db as { schema: string }).schema}`);
      await exec(db, migrations[0]!.sql); // the earlier models: OutboxEmail and OutboxEmailAttempt only
      await assert.rejects(migrate(db), (err: unknown) => {
        assert.ok(err instanceof SchemaError);
        assert.match(err.message, /do not match migration \d{4}_delivery_fate/);
        assert.match(err.message, /table mail_outbox_delivery is missing/);
        assert.doesNotMatch(err.message, /mail_outbox_created_idx/);
        return true;
      });
      assert.equal(await count(db, `SELECT count(*) AS n FROM ${MIGRATIONS_TABLE} WHERE version = '0001_init' AND kind = 'baseline'`), 1);
      assert.equal(await tableExists(db, "mail_outbox_delivery"), false, "Prisma Migrate's tables are left alone");
    });

    it("tables created outside migrate with another shape are refused with a SchemaError that names the differences, and left alone", async (t) => {
      if (dialect === "postgresql" && !(await needPostgres(t))) return;
      const db = await open(t, emptyDatabaseUrl(t, dialect).url);
      if (dialect === "postgresql") await exec(db, `CREATE SCHEMA ${(db as { schema: string }).schema}`);
      await exec(db, `CREATE TABLE mail_outbox (id TEXT PRIMARY KEY, body TEXT)`);
      await assert.rejects(migrate(db), (err: unknown) => {
        assert.ok(err instanceof SchemaError);
        assert.match(err.message, /not created by mail-outbox migrate/);
        assert.match(err.message, /column mail_outbox\.message_id is missing/);
        assert.match(err.message, /table mail_outbox_attempt is missing/);
        assert.match(err.message, /prisma migrate dev/);
        return true;
      });
      assert.equal(await tableExists(db, "mail_outbox_attempt"), false);
      assert.equal(await count(db, `SELECT count(*) AS n FROM ${MIGRATIONS_TABLE}`), 0);
    });
  });
}

describe("migrate on postgresql, concurrently", () => {
  it("several processes migrating the same new schema at once all succeed, and each migration runs once", async (t) => {
    if (!(await needPostgres(t))) return;
    const all = (await loadMigrations("postgresql")).map((m) => m.version);
    const { url } = emptyDatabaseUrl(t, "postgresql");
    const dbs = await Promise.all([1, 2, 3, 4].map(() => open(t, url)));
    const results = await Promise.all(dbs.map((db) => migrate(db)));
    for (const r of results) assert.deepEqual([...r.applied, ...r.alreadyApplied].sort(), all);
    assert.deepEqual(results.flatMap((r) => r.applied).sort(), all, "every migration was applied by exactly one process");
    assert.equal(await count(dbs[0]!, `SELECT count(*) AS n FROM ${MIGRATIONS_TABLE}`), all.length);
    assert.deepEqual(await checkSchema(dbs[0]!), []);
  });
});

describe("the PostgreSQL notify trigger", () => {
  it("an INSERT into mail_outbox notifies channel mail_outbox once per statement at commit, never on rollback, and not when mail_outbox.notify is off", async (t) => {
    if (!(await needPostgres(t))) return;
    const { url, schema } = emptyDatabaseUrl(t, "postgresql");
    const db = await open(t, url);
    await migrate(db);
    if (db.dialect !== "postgresql") throw new Error("unreachable");

    // Released here rather than in t.after: the pool's close (registered earlier) would wait for them.
    const listener = new pg.Client({ connectionString: PG_ADMIN_URL });
    await listener.connect();
    const c = await db.pool.connect();
    try {
      const received: string[] = [];
      listener.on("notification", (n) => {
        if (n.channel === "mail_outbox" && n.payload === schema) received.push(n.payload);
      });
      await listener.query("LISTEN mail_outbox");
      const settle = () => new Promise((r) => setTimeout(r, 150));
      const row = () => [randomUUID(), `<${randomUUID()}@t>`];
      const insert2 = `INSERT INTO mail_outbox (id, message_id, envelope_from, envelope_to, raw, size, max_attempts, send_at, next_attempt_at)
        VALUES ($1, $2, 'a@x', '[]', '\\x00', 1, 1, now(), now()), ($3, $4, 'a@x', '[]', '\\x00', 1, 1, now(), now())`;

      await c.query("BEGIN");
      await c.query(insert2, [...row(), ...row()]);
      await settle();
      assert.equal(received.length, 0, "nothing is delivered before commit");
      await c.query("COMMIT");
      await settle();
      assert.equal(received.length, 1, "one notification for one INSERT statement of two rows");

      await c.query("BEGIN");
      await c.query(insert2, [...row(), ...row()]);
      await c.query("ROLLBACK");
      await settle();
      assert.equal(received.length, 1, "a rolled-back INSERT notifies nobody");

      await c.query("SET mail_outbox.notify = off");
      await c.query(insert2, [...row(), ...row()]);
      await settle();
      assert.equal(received.length, 1, "mail_outbox.notify = off silences the trigger");
      await c.query("RESET mail_outbox.notify");
    } finally {
      c.release();
      await listener.end();
    }
  });
});
