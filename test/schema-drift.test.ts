/**
 * The shipped SQL (migrations/<dialect>/*.sql), the Prisma models users copy
 * (prisma/<dialect>/outbox.prisma) and the shape checkSchema() expects must describe the same
 * tables. Prisma's own schema engine (WebAssembly build) compares a database migrated with the
 * shipped SQL against the models, as `prisma migrate diff` would: adding a field to a model
 * without generating its migration (`npm run gen:sql`) fails here.
 */
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { randomUUID } from "node:crypto";
import { openDatabase } from "../src/db.js";
import type { Db } from "../src/db.js";
import { expectedColumns, expectedIndexes, migrate } from "../src/migrate.js";
import { diffLiveAgainstModels, diffShippedMysqlAgainstModels, initSql, migrationFiles, mysqlInitSql, type LiveTarget } from "../scripts/gen-migration-sql.js";
import { expectedMysqlShape, mysqlShapeDifferences, parseModels, readMysqlShape, renderMysqlDdl } from "../scripts/mysql-ddl.js";
import { OUTBOX_TABLE_NAMES } from "../src/migrations.js";
import type { MysqlDb } from "../src/db.js";
import { needMysql, needPostgres, PG_ADMIN_URL } from "./support/services.js";
import { dropSchema, freshMysql, freshPostgres, freshSqlite, postgresUrl, uniqueSchemaName, sqliteOf, USER_TABLE_SQL } from "./support/db.js";

/** The MySQL store of a fixture's database. */
function mysqlOf(db: Db): MysqlDb {
  if (db.dialect !== "mysql") throw new Error(`expected a MySQL database, got ${db.dialect}`);
  return db;
}

const root = new URL("../", import.meta.url);

/** A database that has run only the shipped migrations. */
async function migratedOnly(dialect: "sqlite" | "postgresql"): Promise<{ target: LiveTarget; url: string; cleanup(): Promise<void> }> {
  if (dialect === "sqlite") {
    const file = path.join(tmpdir(), `mail-outbox-drift-${randomUUID()}.db`);
    const db = await openDatabase(`file:${file}`);
    await migrate(db).finally(() => db.close());
    return {
      target: { provider: "sqlite", file },
      url: `file:${file}`,
      cleanup: async () => {
        for (const s of ["", "-wal", "-shm"]) await rm(file + s, { force: true });
      },
    };
  }
  const schema = uniqueSchemaName("drift");
  const url = postgresUrl(schema);
  const db = await openDatabase(url);
  await migrate(db).finally(() => db.close());
  return { target: { provider: "postgresql", connectionString: PG_ADMIN_URL, schema }, url, cleanup: () => dropSchema(schema) };
}

/**
 * Every outbox table the shipped SQL created (all `mail_outbox*` tables but the migrations record),
 * read from the catalog, so a table the SQL creates and src/schema.ts does not know fails too.
 */
async function liveTables(db: Db): Promise<string[]> {
  const rows =
    db.dialect === "postgresql"
      ? (await db.pool.query<{ name: string }>(`SELECT table_name AS name FROM information_schema.tables WHERE table_schema = $1`, [db.schema])).rows
      : (sqliteOf(db).db.prepare(`SELECT name FROM sqlite_master WHERE type = 'table'`).all() as { name: string }[]);
  return rows.map((r) => r.name).filter((n) => n.startsWith("mail_outbox") && n !== "mail_outbox_migrations").sort();
}

async function liveColumns(db: Db): Promise<{ table: string; column: string; type: string; nullable: boolean }[]> {
  if (db.dialect === "postgresql") {
    const r = await db.pool.query<{ table_name: string; column_name: string; data_type: string; is_nullable: string }>(
      `SELECT table_name, column_name, data_type, is_nullable FROM information_schema.columns
       WHERE table_schema = $1 AND table_name = ANY($2::text[])`,
      [db.schema, await liveTables(db)],
    );
    return r.rows.map((c) => ({ table: c.table_name, column: c.column_name, type: c.data_type, nullable: c.is_nullable === "YES" }));
  }
  const out: { table: string; column: string; type: string; nullable: boolean }[] = [];
  for (const table of await liveTables(db)) {
    for (const c of sqliteOf(db).db.prepare(`SELECT name, type, "notnull" AS nn, pk FROM pragma_table_info(?)`).all(table) as {
      name: string;
      type: string;
      nn: number;
      pk: number;
    }[]) {
      out.push({ table, column: c.name, type: c.type, nullable: c.nn === 0 && c.pk === 0 });
    }
  }
  return out;
}

async function liveIndexes(db: Db): Promise<string[]> {
  if (db.dialect === "postgresql") {
    const r = await db.pool.query<{ indexname: string }>(
      `SELECT indexname FROM pg_indexes WHERE schemaname = $1 AND tablename = ANY($2::text[]) AND indexname NOT LIKE '%_pkey'`,
      [db.schema, await liveTables(db)],
    );
    return r.rows.map((r) => r.indexname);
  }
  return (
    sqliteOf(db).db
      .prepare(`SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name IN (SELECT value FROM json_each(?)) AND name NOT LIKE 'sqlite_autoindex%'`)
      .all(JSON.stringify(await liveTables(db))) as { name: string }[]
  ).map((r) => r.name);
}

const sortBy = <T extends { table: string; column: string }>(xs: T[]) =>
  [...xs].sort((a, b) => `${a.table}.${a.column}`.localeCompare(`${b.table}.${b.column}`));

for (const dialect of ["sqlite", "postgresql"] as const) {
  describe(`schema drift on ${dialect}`, () => {
    it(`a database migrated with the shipped SQL is exactly what prisma/${dialect}/outbox.prisma describes`, async (t) => {
      if (dialect === "postgresql" && !(await needPostgres(t))) return;
      const fx = await migratedOnly(dialect);
      try {
        const diff = await diffLiveAgainstModels(fx.target);
        assert.ok(
          diff.empty,
          `migrations/${dialect} and prisma/${dialect}/outbox.prisma disagree. Run \`npm run gen:sql\` to generate the missing migration.\n` +
            `${diff.summary}\n${diff.script}`,
        );
      } finally {
        await fx.cleanup();
      }
    });

    it("the shape checkSchema() expects is the shape the shipped SQL creates, column for column and index for index", async (t) => {
      if (dialect === "postgresql" && !(await needPostgres(t))) return;
      const fx = await migratedOnly(dialect);
      const db = await openDatabase(fx.url);
      try {
        const hint = "update COLUMNS / INDEXES in src/schema.ts to match the models";
        assert.deepEqual(await liveTables(db), [...new Set(expectedColumns(db).map((c) => c.table))].sort(), hint);
        assert.deepEqual(sortBy(await liveColumns(db)), sortBy(expectedColumns(db)), hint);
        assert.deepEqual((await liveIndexes(db)).sort(), expectedIndexes().map((i) => i.name).sort(), hint);
      } finally {
        await db.close();
        await fx.cleanup();
      }
    });

    it("the test fixtures' database matches the tests' Prisma schema, User table included", async (t) => {
      if (dialect === "postgresql" && !(await needPostgres(t))) return;
      const schema = await readFile(new URL(`test/prisma/${dialect}/schema.prisma`, root), "utf8");
      const hint = "run `node scripts/generate-test-clients.mjs` (npm's pretest) after changing the models, or fix USER_TABLE_SQL in test/support/db.ts";
      if (dialect === "sqlite") {
        const fx = await freshSqlite(t);
        const diff = await diffLiveAgainstModels({ provider: "sqlite", file: fx.file }, { schema });
        assert.ok(diff.empty, `${hint}\n${diff.summary}\n${diff.script}`);
      } else {
        const fx = await freshPostgres(t);
        const diff = await diffLiveAgainstModels({ provider: "postgresql", connectionString: PG_ADMIN_URL, schema: fx.schema }, { schema });
        assert.ok(diff.empty, `${hint}\n${diff.summary}\n${diff.script}`);
      }
    });

    it("0001_init.sql is the SQL Prisma generates from the models (no hand edits)", async () => {
      const files = await migrationFiles(dialect);
      assert.equal(files[0], "0001_init.sql");
      const shipped = await readFile(new URL(`migrations/${dialect}/0001_init.sql`, root), "utf8");
      const statements = (sql: string) => sql.replace(/^--.*\n/gm, "").trim();
      // Once later migrations exist, the models are ahead of 0001 by design; the live diff above covers them.
      if (files.length === 1 || (dialect === "postgresql" && files.length === 2 && files[1] === "0002_notify.sql")) {
        assert.equal(statements(shipped), statements(await initSql(dialect)));
      }
    });
  });
}

describe("schema drift on mysql (MariaDB here)", () => {
  // Prisma's wasm schema engine has no MySQL connector: the live tables are compared with the
  // models as scripts/mysql-ddl.ts reads them (information_schema against the parsed models).
  it("a database migrated with the shipped SQL is exactly what prisma/mysql/outbox.prisma describes: columns, types, nullability, defaults, indexes (column order, DESC), unique keys, cascading foreign keys", async (t) => {
    if (!(await needMysql(t))) return;
    const differences = await diffShippedMysqlAgainstModels();
    assert.deepEqual(differences, [], "migrations/mysql and prisma/mysql/outbox.prisma disagree: write the next MySQL migration (see scripts/gen-migration-sql.ts)");
  });

  it("the comparison sees a difference: a column of another type, a lost default, an index without DESC, a foreign key without cascade", async (t) => {
    if (!(await needMysql(t))) return;
    const fx = await freshMysql(t);
    const db = await openDatabase(fx.url);
    t.after(() => db.close());
    const pool = mysqlOf(db).pool;
    await pool.query("ALTER TABLE mail_outbox MODIFY subject VARCHAR(255) NOT NULL, ALTER status DROP DEFAULT");
    await pool.query("DROP INDEX mail_outbox_claim_idx ON mail_outbox");
    await pool.query("CREATE INDEX mail_outbox_claim_idx ON mail_outbox (status, priority, next_attempt_at)");
    await pool.query("ALTER TABLE mail_outbox_delivery DROP FOREIGN KEY mail_outbox_delivery_email_id_fkey");
    await pool.query("ALTER TABLE mail_outbox_delivery ADD CONSTRAINT mail_outbox_delivery_email_id_fkey FOREIGN KEY (email_id) REFERENCES mail_outbox (id)");
    const models = parseModels(await readFile(new URL("prisma/mysql/outbox.prisma", root), "utf8"));
    const live = await readMysqlShape((sql, params) => pool.query(sql, params), fx.database, OUTBOX_TABLE_NAMES);
    assert.deepEqual(mysqlShapeDifferences(expectedMysqlShape(models), live), [
      "column mail_outbox.status is varchar(16) NOT NULL, the models say varchar(16) NOT NULL DEFAULT pending",
      "column mail_outbox.subject is varchar(255) NOT NULL, the models say text NOT NULL",
      "index mail_outbox.mail_outbox_claim_idx is INDEX (status, priority, next_attempt_at), the models say INDEX (status, priority DESC, next_attempt_at)",
      "foreign key mail_outbox_delivery.mail_outbox_delivery_email_id_fkey is (email_id) REFERENCES mail_outbox(id) ON DELETE RESTRICT ON UPDATE RESTRICT, the models say (email_id) REFERENCES mail_outbox(id) ON DELETE CASCADE ON UPDATE CASCADE",
    ]);
  });

  it("the shape checkSchema() expects is the shape the shipped SQL creates, column for column and index for index", async (t) => {
    if (!(await needMysql(t))) return;
    const fx = await freshMysql(t);
    const db = await openDatabase(fx.url);
    t.after(() => db.close());
    const { shape } = await db.readSchema();
    const hint = "update COLUMNS / INDEXES in src/schema.ts (or COLUMN_TYPES in src/stores/mysql/schema-sql.ts) to match the models";
    assert.deepEqual([...shape.tables].sort(), [...new Set(expectedColumns(db).map((c) => c.table))].sort(), hint);
    assert.deepEqual(sortBy(shape.columns.map(({ table, column, type, nullable }) => ({ table, column, type, nullable }))), sortBy(expectedColumns(db)), hint);
    assert.deepEqual([...shape.indexes].sort(), expectedIndexes().map((i) => i.name).sort(), hint);
    assert.equal(shape.cascadeFk, true);
    assert.deepEqual([...(shape.cascadeFkTables ?? [])], ["mail_outbox_delivery"]);
  });

  it("the test fixtures' database matches the tests' Prisma schema, User table included", async (t) => {
    if (!(await needMysql(t))) return;
    const fx = await freshMysql(t);
    const db = await openDatabase(fx.url);
    t.after(() => db.close());
    const pool = mysqlOf(db).pool;
    const models = parseModels(await readFile(new URL("test/prisma/mysql/schema.prisma", root), "utf8"));
    const live = await readMysqlShape((sql, params) => pool.query(sql, params), fx.database, [...OUTBOX_TABLE_NAMES, "User"]);
    const hint = "run `node scripts/generate-test-clients.mjs` (npm's pretest) after changing the models, or fix USER_TABLE_SQL.mysql in test/support/db.ts";
    assert.deepEqual(mysqlShapeDifferences(expectedMysqlShape(models), live), [], hint);
    const user = models.filter((m) => m.name === "User");
    assert.equal(renderMysqlDdl(user), `-- CreateTable\n${USER_TABLE_SQL.mysql}\n`, "USER_TABLE_SQL.mysql is the rendering of the User model");
  });

  it("0001_init.sql is the rendering of the models by scripts/mysql-ddl.ts (no hand edits)", async () => {
    const files = await migrationFiles("mysql");
    assert.equal(files[0], "0001_init.sql");
    const shipped = await readFile(new URL("migrations/mysql/0001_init.sql", root), "utf8");
    const statements = (sql: string) => sql.replace(/^--.*\n/gm, "").trim();
    // Once later migrations exist, the models are ahead of 0001 by design; the live comparison above covers them.
    if (files.length === 1) assert.equal(statements(shipped), statements(await mysqlInitSql()));
  });
});

describe("the PostgreSQL notify trigger", () => {
  it("prisma/postgresql/notify-trigger.sql and migrations/postgresql/0002_notify.sql run the same statements", async () => {
    const statements = async (p: string) => (await readFile(new URL(p, root), "utf8")).replace(/^--.*\n/gm, "").trim();
    assert.equal(await statements("prisma/postgresql/notify-trigger.sql"), await statements("migrations/postgresql/0002_notify.sql"));
  });
});
