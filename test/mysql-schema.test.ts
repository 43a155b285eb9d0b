/**
 * migrate, inspectSchema and the repairs on MySQL/MariaDB, where DDL is not transactional: the
 * migration lock (GET_LOCK), a migration that fails or is interrupted halfway and is completed by
 * the next migrate, and what the shipped MySQL migrations declare (catalog).
 */
import { describe, it } from "node:test";
import type { TestContext } from "node:test";
import assert from "node:assert/strict";
import mariadb from "mariadb";
import { openDatabase, type MysqlDb } from "../src/db.js";
import { SchemaError } from "../src/errors.js";
import { catalog } from "../src/migrations.js";
import { expectedColumns, expectedIndexes, inspectSchema, loadMigrations, migrate, MIGRATIONS_TABLE } from "../src/migrate.js";
import { statements } from "../src/migrations.js";
import { migrationLockName } from "../src/stores/mysql/schema-sql.js";
import { freshMysql, mysqlAdmin, mysqlUrl, uniqueSchemaName } from "./support/db.js";
import { MYSQL_ADMIN_URL, needMysql } from "./support/services.js";

/** A new, empty database (no tables); dropped after the test. */
async function emptyMysql(t: TestContext): Promise<{ url: string; database: string }> {
  const database = uniqueSchemaName("mig");
  await mysqlAdmin([`CREATE DATABASE \`${database}\` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci`]);
  t.after(() => mysqlAdmin([`DROP DATABASE IF EXISTS \`${database}\``]));
  return { url: mysqlUrl(database), database };
}

async function open(t: TestContext, url: string): Promise<MysqlDb> {
  const db = await openDatabase(url);
  assert.equal(db.dialect, "mysql");
  t.after(() => db.close());
  return db as MysqlDb;
}

async function tables(db: MysqlDb): Promise<string[]> {
  const rows: { TABLE_NAME: string }[] = await db.pool.query(`SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? ORDER BY TABLE_NAME`, [db.database]);
  return rows.map((r) => r.TABLE_NAME);
}

async function recorded(db: MysqlDb): Promise<Record<string, string>> {
  const rows: { version: string; kind: string }[] = await db.pool.query(`SELECT version, kind FROM ${MIGRATIONS_TABLE}`);
  return Object.fromEntries(rows.map((r) => [r.version, r.kind]));
}

describe("migrate on MariaDB", () => {
  it("creates every outbox table on an empty database, records 0001_init, finds nothing wrong, and a second run does nothing", async (t) => {
    if (!(await needMysql(t))) return;
    const { url } = await emptyMysql(t);
    const db = await open(t, url);
    assert.deepEqual((await migrate(db, { dryRun: true })).applied, ["0001_init"]);
    assert.deepEqual(await tables(db), [], "a dry run changes nothing");
    const first = await migrate(db);
    assert.deepEqual(first, { applied: ["0001_init"], alreadyApplied: [], baselined: [], repaired: [] });
    assert.deepEqual(await recorded(db), { "0001_init": "applied" });
    assert.ok((await tables(db)).includes("mail_outbox_lock"));
    assert.deepEqual(await inspectSchema(db), []);
    assert.deepEqual(await migrate(db), { applied: [], alreadyApplied: ["0001_init"], baselined: [], repaired: [] });
  });

  it("on a database that does not exist, migrate says to create it (with the character set and collation)", async (t) => {
    if (!(await needMysql(t))) return;
    const database = uniqueSchemaName("none");
    const db = await open(t, `${mysqlUrl(database)}?connect_timeout=1`);
    await assert.rejects(migrate(db), (err: unknown) => {
      assert.ok(err instanceof SchemaError);
      assert.equal(err.message, `The database ${database} does not exist on the server: create it (CREATE DATABASE \`${database}\` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci), then run migrate again.`);
      return true;
    });
  });

  it("several processes migrating the same new database at once all succeed, and each migration runs once", async (t) => {
    if (!(await needMysql(t))) return;
    const { url } = await emptyMysql(t);
    const dbs = await Promise.all([1, 2, 3, 4].map(() => open(t, url)));
    const results = await Promise.all(dbs.map((db) => migrate(db)));
    assert.equal(results.flatMap((r) => r.applied).length, 1, "0001_init ran once");
    assert.equal(results.flatMap((r) => r.alreadyApplied).length, 3);
    assert.deepEqual(results.flatMap((r) => r.repaired), []);
    assert.deepEqual(await inspectSchema(dbs[0]!), []);
  });

  it("a migrate waits while another process holds the database's migration lock, then runs", async (t) => {
    if (!(await needMysql(t))) return;
    const { url, database } = await emptyMysql(t);
    const u = new URL(MYSQL_ADMIN_URL);
    const holder = await mariadb.createConnection({ host: u.hostname, port: Number(u.port || 3306), user: decodeURIComponent(u.username) || "root" });
    t.after(() => holder.end());
    assert.equal(Number((await holder.query(`SELECT GET_LOCK(?, 0) AS got`, [migrationLockName(database)]))[0].got), 1);
    const db = await open(t, url);
    let settled = false;
    const running = migrate(db).finally(() => {
      settled = true;
    });
    await new Promise((r) => setTimeout(r, 500));
    assert.equal(settled, false, "migrate waits for the lock");
    assert.deepEqual(await tables(db), [], "nothing was created while the lock was held elsewhere");
    await holder.query(`SELECT RELEASE_LOCK(?)`, [migrationLockName(database)]);
    assert.deepEqual((await running).applied, ["0001_init"]);
  });

  it("a migration that fails halfway keeps what it created, says so, and the next migrate completes it once the cause is fixed", async (t) => {
    if (!(await needMysql(t))) return;
    const { url } = await emptyMysql(t);
    const db = await open(t, url);
    // A table in the way, of the wrong shape: its CREATE TABLE is skipped, then the foreign key to it fails.
    await db.pool.query("CREATE TABLE mail_outbox_attempt (id CHAR(36) NOT NULL PRIMARY KEY, email_id INT NOT NULL)");
    await assert.rejects(migrate(db), (err: unknown) => {
      assert.ok(err instanceof SchemaError);
      assert.match(err.message, /Migration 0001_init failed on database \w+ of mysql:\/\//);
      assert.match(err.message, /was kept/);
      assert.match(err.message, /run migrate again: it continues where this run stopped/);
      assert.doesNotMatch(err.message, /rolled back/);
      return true;
    });
    assert.deepEqual(await recorded(db), { "0001_init": "started" });
    assert.ok((await tables(db)).includes("mail_outbox_lock"), "the tables before the failing statement were kept");
    const problems = await inspectSchema(db);
    assert.ok(problems.some((p) => p.kind === "migration" && /0001_init have not been applied/.test(p.message)), JSON.stringify(problems));
    assert.ok(problems.some((p) => p.kind === "foreign-key" && p.repairable), "the missing foreign key is migrate's to add, not Prisma Migrate's");

    await db.pool.query("DROP TABLE mail_outbox_attempt");
    const again = await migrate(db);
    assert.deepEqual(again.applied, ["0001_init"]);
    assert.deepEqual(await recorded(db), { "0001_init": "applied" });
    assert.deepEqual(await inspectSchema(db), []);
  });

  it("a migration interrupted after some of its tables (the process died) is resumed by the next migrate", async (t) => {
    if (!(await needMysql(t))) return;
    const { url } = await emptyMysql(t);
    const db = await open(t, url);
    const [init] = await loadMigrations("mysql");
    // What a process that died after its third CREATE TABLE leaves behind.
    await db.pool.query(`CREATE TABLE ${MIGRATIONS_TABLE} (version VARCHAR(64) NOT NULL PRIMARY KEY, applied_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3), kind VARCHAR(16) NOT NULL DEFAULT 'applied')`);
    await db.pool.query(`INSERT INTO ${MIGRATIONS_TABLE} (version, kind) VALUES ('0001_init', 'started')`);
    for (const stmt of statements(init!.sql).slice(0, 3)) await db.pool.query(stmt);
    await db.pool.query("INSERT INTO mail_outbox (id, message_id, envelope_from, envelope_to, subject, raw, size, max_attempts, send_at, next_attempt_at) VALUES (UUID(), '<kept@test>', 'a@example.com', '[\"b@example.com\"]', 's', 'raw', 3, 5, NOW(3), NOW(3))");

    const result = await migrate(db);
    assert.deepEqual(result.applied, ["0001_init"]);
    assert.deepEqual(await recorded(db), { "0001_init": "applied" });
    assert.deepEqual(await inspectSchema(db), []);
    const kept: { n: number }[] = await db.pool.query("SELECT COUNT(*) AS n FROM mail_outbox");
    assert.equal(Number(kept[0]!.n), 1, "the tables made before the interruption were kept with their rows");
  });

  it("tables created from the models by Prisma Migrate are recorded as a baseline, not touched", async (t) => {
    if (!(await needMysql(t))) return;
    const { url } = await emptyMysql(t);
    const db = await open(t, url);
    for (const m of await loadMigrations("mysql")) for (const stmt of statements(m.sql)) await db.pool.query(stmt);
    const result = await migrate(db);
    assert.deepEqual(result.baselined, ["0001_init"]);
    assert.deepEqual(await recorded(db), { "0001_init": "baseline" });
    assert.deepEqual(await inspectSchema(db), []);
  });

  it("a dropped index, foreign key, nullable column and table are reported as repairable and recreated by migrate, the index with its DESC column", async (t) => {
    if (!(await needMysql(t))) return;
    const fx = await freshMysql(t);
    const db = await open(t, fx.url);
    await db.pool.query("DROP INDEX mail_outbox_claim_idx ON mail_outbox");
    await db.pool.query("ALTER TABLE mail_outbox_attempt DROP FOREIGN KEY mail_outbox_attempt_email_id_fkey");
    await db.pool.query("ALTER TABLE mail_outbox DROP COLUMN trace_context");
    await db.pool.query("DROP TABLE mail_outbox_delivery");
    const problems = await inspectSchema(db);
    assert.deepEqual(problems.map((p) => [p.kind, p.table, p.repairable]).sort(), [
      ["column", "mail_outbox", true],
      ["foreign-key", "mail_outbox_attempt", true],
      ["index", "mail_outbox", true],
      ["table", "mail_outbox_delivery", true],
    ]);
    assert.ok(problems.find((p) => p.kind === "column")!.blocksRelay, "the relay writes trace_context");

    const dry = await migrate(db, { dryRun: true });
    const result = await migrate(db);
    assert.deepEqual(result.repaired, dry.repaired);
    assert.deepEqual([...result.repaired].sort(), [
      "column mail_outbox.trace_context",
      "foreign key mail_outbox_attempt_email_id_fkey (0001_init)",
      "foreign key mail_outbox_delivery_email_id_fkey (0001_init)",
      "index mail_outbox_claim_idx (0001_init)",
      "table mail_outbox_delivery (0001_init)",
    ]);
    assert.deepEqual(await inspectSchema(db), []);
    assert.deepEqual((await migrate(db)).repaired, []);
    const claim: { COLUMN_NAME: string; COLLATION: string | null }[] = await db.pool.query(
      "SELECT COLUMN_NAME, COLLATION FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = ? AND INDEX_NAME = 'mail_outbox_claim_idx' ORDER BY SEQ_IN_INDEX",
      [db.database],
    );
    assert.deepEqual(claim.map((c) => `${c.COLUMN_NAME} ${c.COLLATION}`), ["status A", "priority D", "next_attempt_at A"]);
  });

  it("a missing NOT NULL column blocks the relay and is not repaired; a nullable column made NOT NULL gets a MODIFY statement that fixes it", async (t) => {
    if (!(await needMysql(t))) return;
    const fx = await freshMysql(t);
    const db = await open(t, fx.url);
    await db.pool.query("ALTER TABLE mail_outbox DROP COLUMN subject");
    await db.pool.query("ALTER TABLE mail_outbox MODIFY lease_owner VARCHAR(255) NOT NULL DEFAULT ''");
    const problems = await inspectSchema(db);
    const subject = problems.find((p) => p.message.includes("mail_outbox.subject"));
    assert.ok(subject && subject.blocksRelay && !subject.repairable, JSON.stringify(problems));
    assert.match(subject.fix, /ALTER TABLE `mail_outbox` ADD COLUMN `subject` TEXT NOT NULL DEFAULT <value>/);
    const leaseOwner = problems.find((p) => p.message.includes("mail_outbox.lease_owner"));
    assert.ok(leaseOwner, JSON.stringify(problems));
    assert.equal(leaseOwner.fix, "ALTER TABLE `mail_outbox` MODIFY `lease_owner` VARCHAR(255) NULL");
    assert.deepEqual((await migrate(db)).repaired, []);
    await db.pool.query(leaseOwner.fix);
    assert.deepEqual((await inspectSchema(db)).map((p) => p.message), [problems.find((p) => p === subject)!.message]);
  });

  it("a JSON column is recognised on MariaDB (LONGTEXT with its json_valid check), and one of another type is reported", async (t) => {
    if (!(await needMysql(t))) return;
    const fx = await freshMysql(t);
    const db = await open(t, fx.url);
    await db.pool.query("ALTER TABLE mail_outbox MODIFY metadata VARCHAR(255) NULL");
    const problems = await inspectSchema(db);
    assert.deepEqual(problems.map((p) => p.message), ["column mail_outbox.metadata has type text, expected json"]);
  });
});

describe("the shipped MySQL migrations, as migrate reads them", () => {
  it("name every table, column, index and foreign key the outbox expects, and each index's statement recreates it alone", async () => {
    const cat = catalog(await loadMigrations("mysql"));
    assert.equal(cat.mysql, true);
    assert.deepEqual([...cat.tables.keys()].sort(), [...new Set(expectedColumns({ columnTypes: {} as never }).map((c) => c.table))].sort());
    assert.deepEqual([...cat.columns.keys()].sort(), expectedColumns({ columnTypes: {} as never }).map((c) => `${c.table}.${c.column}`).sort());
    assert.deepEqual([...cat.indexes.keys()].sort(), expectedIndexes().map((i) => i.name).sort());
    assert.equal(cat.indexes.get("mail_outbox_claim_idx")!.sql, "CREATE INDEX `mail_outbox_claim_idx` ON `mail_outbox`(`status`, `priority` DESC, `next_attempt_at`)");
    assert.equal(cat.indexes.get("mail_outbox_message_id_key")!.sql, "CREATE UNIQUE INDEX `mail_outbox_message_id_key` ON `mail_outbox`(`message_id`)");
    assert.deepEqual([...cat.foreignKeys.keys()].sort(), ["mail_outbox_attempt_email_id_fkey", "mail_outbox_delivery_email_id_fkey"]);
    assert.equal(cat.columns.get("mail_outbox.lease_owner"), "`lease_owner` VARCHAR(255) NULL");
    assert.deepEqual(catalog(await loadMigrations("postgresql")).mysql, false);
  });
});
