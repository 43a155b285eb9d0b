/**
 * `initSchema` (`mail-outbox init`): the outbox models added to an application's Prisma schema,
 * in the flavour of its provider, once. And the `prisma.config.ts` that `mail-outbox init` prints (and the README shows) for the route where
 * `mail-outbox migrate` creates the tables: the real `prisma generate` accepts it, and Prisma's
 * schema engine, given its table names, sees no drift in a database that `migrate` created.
 */
import { test, describe } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readFile, rm, symlink, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { bindMigrationAwareSqlAdapterFactory } from "@prisma/driver-adapter-utils";
import { PrismaBetterSqlite3 } from "@prisma/adapter-better-sqlite3";
import { initSchema, OUTBOX_TABLES, prismaConfigFor } from "../src/init.js";
import { diffLiveAgainstModels, loadSchemaEngineWasm, REPO_ROOT } from "../scripts/gen-migration-sql.js";
import { freshPostgres, freshSqlite } from "./support/db.js";
import { needPostgres } from "./support/services.js";

const ROOT = fileURLToPath(new URL("../", import.meta.url));
const TSX = import.meta.resolve("tsx");

function run(file: string, args: string[], cwd: string, env: Record<string, string | undefined>): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    const { DATABASE_URL: _d, ...base } = process.env;
    execFile(file, args, { cwd, env: { ...base, ...env }, timeout: 120_000 }, (error, stdout, stderr) =>
      resolve({ code: error ? (typeof error.code === "number" ? error.code : -1) : 0, out: `${stdout}${stderr}` }),
    );
  });
}

/**
 * `prisma generate` in `dir`, offline: the CLI resolves the native schema engine before it
 * generates (and would download it); generate never runs it, so the variable may name any file.
 */
function prismaGenerate(dir: string): Promise<{ code: number; out: string }> {
  return run(path.join(ROOT, "node_modules/.bin/prisma"), ["generate"], dir, {
    DATABASE_URL: "postgresql://app@127.0.0.1:5432/app",
    PRISMA_SCHEMA_ENGINE_BINARY: process.execPath,
    PRISMA_HIDE_UPDATE_MESSAGE: "1",
    CHECKPOINT_DISABLE: "1",
  });
}

/** A new application directory: node_modules (this repository's), and a schema with a User model. */
async function app(t: { after(fn: () => Promise<void>): void }, provider: "postgresql" | "sqlite" | "mysql"): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), "mail-outbox-app-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  await mkdir(path.join(dir, "prisma"));
  await symlink(path.join(ROOT, "node_modules"), path.join(dir, "node_modules"), "dir");
  await writeFile(
    path.join(dir, "prisma", "schema.prisma"),
    `generator client {\n  provider = "prisma-client"\n  output   = "./generated"\n}\n\ndatasource db {\n  provider = "${provider}"\n}\n\nmodel User {\n  id Int @id\n}\n`,
  );
  return dir;
}

/** The TypeScript between `import { defineConfig` and the closing `});` (as printed, or as in a README block). */
function configIn(text: string): string {
  const m = /^[ \t]*import \{ defineConfig[\s\S]*?^[ \t]*\}\);$/m.exec(text);
  assert.ok(m, `no prisma.config.ts in:\n${text}`);
  const indent = /^[ \t]*/.exec(m[0])?.[0] ?? "";
  return `${m[0].split("\n").map((l) => (l.startsWith(indent) ? l.slice(indent.length) : l)).join("\n")}\n`;
}

/** The same config as it was before Prisma 7.10's rule was known: `tables.external` without the flag. */
function withoutFlag(config: string): string {
  const old = config.replace(/^.*experimental:.*\n/m, "");
  assert.notEqual(old, config);
  return old;
}

describe("adding the outbox models to a schema", () => {
  test("a SQLite schema gets the SQLite flavour of the models, and a multi-file schema folder gets mail_outbox.prisma, once", async (t) => {
    const dir = await mkdtemp(path.join(os.tmpdir(), "mail-outbox-init-"));
    t.after(() => rm(dir, { recursive: true, force: true }));
    const lite = path.join(dir, "lite.prisma");
    await writeFile(lite, `datasource db {\n  provider = "sqlite"\n}\n`);
    const r = await initSchema({ schemaPath: lite });
    assert.equal(r.provider, "sqlite");
    assert.doesNotMatch(await readFile(lite, "utf8"), /@db\./);

    const folder = path.join(dir, "multi");
    await mkdir(folder);
    await writeFile(path.join(folder, "schema.prisma"), `datasource db {\n  provider = "postgresql"\n}\n`);
    const multi = await initSchema({ schemaPath: folder });
    assert.equal(multi.schemaFile, path.join(folder, "mail_outbox.prisma"));
    assert.match(await readFile(multi.schemaFile, "utf8"), /model OutboxEmailAttempt \{/);
    assert.equal((await initSchema({ schemaPath: folder })).changed, false);
  });

  test("a schema holding an earlier version's two outbox models gets the delivery-fate models and OutboxEmail.deliveries, and the real `prisma generate` accepts it", async (t) => {
    const dir = await app(t, "postgresql");
    const schemaFile = path.join(dir, "prisma", "schema.prisma");
    const models = await readFile(path.join(ROOT, "prisma", "postgresql", "outbox.prisma"), "utf8");
    // What `init` wrote before the delivery-fate models existed.
    const earlier = models
      .slice(0, models.indexOf("/// What the MTA did with an OutboxEmail"))
      .replace(/^\s*deliveries\s+OutboxDelivery\[\]\n/m, "")
      .replace(/@@index\(\[queueId\], map: "mail_outbox_attempt_queue_idx"\)\n\s*/, "");
    assert.doesNotMatch(earlier, /OutboxDelivery/);
    await writeFile(schemaFile, `${await readFile(schemaFile, "utf8")}\n${earlier}`);
    const r = await initSchema({ schemaPath: schemaFile });
    assert.equal(r.changed, true);
    assert.match(r.message, /OutboxDelivery, OutboxSuppression, OutboxLogCursor/);
    const text = await readFile(schemaFile, "utf8");
    for (const m of ["OutboxEmail", "OutboxEmailAttempt", "OutboxDelivery", "OutboxSuppression", "OutboxLogCursor"]) {
      assert.equal(text.match(new RegExp(`^model ${m} \\{`, "gm"))?.length, 1, `one model ${m}`);
    }
    assert.match(text, /^\s*deliveries\s+OutboxDelivery\[\]$/m);
    assert.equal((await initSchema({ schemaPath: schemaFile })).changed, false, "once");
    const generated = await prismaGenerate(dir);
    assert.equal(generated.code, 0, generated.out);
    assert.ok(existsSync(path.join(dir, "prisma", "generated", "models", "OutboxDelivery.ts")));
  });

  test("a schema holding the delivery-fate version's five models gets the operations models and OutboxEmail.traceContext, and the real `prisma generate` accepts it", async (t) => {
    const dir = await app(t, "sqlite");
    const schemaFile = path.join(dir, "prisma", "schema.prisma");
    const models = await readFile(path.join(ROOT, "prisma", "sqlite", "outbox.prisma"), "utf8");
    // What `init` wrote before the operations models existed.
    const earlier = models.slice(0, models.indexOf("/// A pause of the relays")).replace(/^\s*traceContext\s.*\n/m, "");
    assert.doesNotMatch(earlier, /OutboxPause|traceContext/);
    await writeFile(schemaFile, `${await readFile(schemaFile, "utf8")}\n${earlier}`);
    const r = await initSchema({ schemaPath: schemaFile });
    assert.equal(r.changed, true);
    assert.match(r.message, /the models OutboxPause, OutboxRate, OutboxLock and the field OutboxEmail\.traceContext/);
    const text = await readFile(schemaFile, "utf8");
    for (const m of ["OutboxEmail", "OutboxEmailAttempt", "OutboxDelivery", "OutboxSuppression", "OutboxLogCursor", "OutboxPause", "OutboxRate", "OutboxLock"]) {
      assert.equal(text.match(new RegExp(`^model ${m} \\{`, "gm"))?.length, 1, `one model ${m}`);
    }
    assert.equal(text.match(/^\s*traceContext\s+String\?\s+@map\("trace_context"\)$/gm)?.length, 1);
    assert.equal((await initSchema({ schemaPath: schemaFile })).changed, false, "once");
    const generated = await prismaGenerate(dir);
    assert.equal(generated.code, 0, generated.out);
    assert.ok(existsSync(path.join(dir, "prisma", "generated", "models", "OutboxLock.ts")));
  });

  test("the PostgreSQL schema of DATABASE_URL (?schema=) qualifies the table names in the printed prisma.config.ts", async (t) => {
    const dir = await app(t, "postgresql");
    const expected = `external: [${OUTBOX_TABLES.map((n) => JSON.stringify(`billing.${n}`)).join(", ")}]`;
    const viaCli = await run(process.execPath, ["--import", TSX, path.join(ROOT, "src/cli.ts"), "init"], dir, { DATABASE_URL: "postgresql://app@127.0.0.1:5432/app?schema=billing" });
    assert.equal(viaCli.code, 0, viaCli.out);
    assert.ok(configIn(viaCli.out).includes(expected), viaCli.out);
    const again = await initSchema({ schemaPath: "prisma/schema.prisma", cwd: dir, databaseUrl: "postgres://app@db/app?schema=billing" });
    assert.equal(again.changed, false);
    assert.ok(again.prismaConfig.includes(expected), again.prismaConfig);
    const plain = await initSchema({ schemaPath: "prisma/schema.prisma", cwd: dir, databaseUrl: "file:./dev.db" });
    assert.ok(plain.prismaConfig.includes(`"public.mail_outbox"`), "without a PostgreSQL URL: public");
  });
});

describe("the prisma.config.ts for the mail-outbox migrate route", () => {
  for (const provider of ["postgresql", "sqlite"] as const) {
    test(`\`mail-outbox init\` prints a prisma.config.ts with which the real \`prisma generate\` builds the client (${provider}); the old one without experimental.externalTables fails`, async (t) => {
      const dir = await app(t, provider);
      const init = await run(process.execPath, ["--import", TSX, path.join(ROOT, "src/cli.ts"), "init"], dir, {});
      assert.equal(init.code, 0, init.out);
      const config = configIn(init.out);
      const names = provider === "postgresql" ? OUTBOX_TABLES.map((n) => `public.${n}`) : [...OUTBOX_TABLES];
      assert.ok(config.includes(`external: [${names.map((n) => JSON.stringify(n)).join(", ")}]`), config);
      assert.ok(config.includes(`schema: "prisma/schema.prisma"`), "the schema path, relative to the directory of prisma.config.ts");

      await writeFile(path.join(dir, "prisma.config.ts"), config);
      const generated = await prismaGenerate(dir);
      assert.equal(generated.code, 0, generated.out);
      assert.match(generated.out, /Generated Prisma Client/);
      assert.ok(existsSync(path.join(dir, "prisma", "generated", "models", "OutboxEmail.ts")), "the client has the outbox models");

      await writeFile(path.join(dir, "prisma.config.ts"), withoutFlag(config));
      const old = await prismaGenerate(dir);
      assert.notEqual(old.code, 0, "Prisma 7.10 refuses tables.external without the flag");
      assert.match(old.out, /requires `experimental\.externalTables`/);
    });
  }

  test("`mail-outbox init` on a MySQL schema (provider \"mysql\", for MySQL and MariaDB) adds the MySQL models, prints plain table names, and the real `prisma generate` builds the client", async (t) => {
    const dir = await app(t, "mysql");
    const init = await run(process.execPath, ["--import", TSX, path.join(ROOT, "src/cli.ts"), "init"], dir, { DATABASE_URL: "mysql://app@127.0.0.1:3306/app" });
    assert.equal(init.code, 0, init.out);
    assert.match(init.out, /MySQL\/MariaDB: use the driver adapter @prisma\/adapter-mariadb/);
    const text = await readFile(path.join(dir, "prisma", "schema.prisma"), "utf8");
    const models = await readFile(path.join(ROOT, "prisma", "mysql", "outbox.prisma"), "utf8");
    assert.ok(text.endsWith(models), "the models of prisma/mysql/outbox.prisma, as they are");
    assert.match(text, /messageId\s+String\s+@unique @map\("message_id"\) @db\.VarChar\(512\)/);
    const config = configIn(init.out);
    assert.ok(config.includes(`external: [${OUTBOX_TABLES.map((n) => JSON.stringify(n)).join(", ")}]`), config);
    await writeFile(path.join(dir, "prisma.config.ts"), config);
    const generated = await prismaGenerate(dir);
    assert.equal(generated.code, 0, generated.out);
    assert.ok(existsSync(path.join(dir, "prisma", "generated", "models", "OutboxLock.ts")), "the client has the outbox models");

    // --provider mysql where the schema has no datasource yet; a contradicting --provider is refused.
    const bare = path.join(dir, "bare.prisma");
    await writeFile(bare, "");
    assert.equal((await initSchema({ schemaPath: bare, provider: "mysql" })).provider, "mysql");
    assert.match(await readFile(bare, "utf8"), /@db\.LongBlob/);
    await assert.rejects(initSchema({ schemaPath: path.join(dir, "prisma", "schema.prisma"), provider: "sqlite" }), /datasource says mysql, but provider sqlite was asked for/);
  });

  test("the README's prisma.config.ts works with the real `prisma generate`", async (t) => {
    const readme = await readFile(path.join(ROOT, "README.md"), "utf8");
    const block = [...readme.matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1] ?? "").find((b) => b.includes("tables:"));
    assert.ok(block, "README shows a prisma.config.ts with tables.external");
    const config = configIn(block);
    assert.match(config, /experimental: \{ externalTables: true \}/);
    const dir = await app(t, "postgresql");
    await writeFile(path.join(dir, "prisma.config.ts"), config);
    const generated = await prismaGenerate(dir);
    assert.equal(generated.code, 0, generated.out);
    await writeFile(path.join(dir, "prisma.config.ts"), withoutFlag(config));
    assert.notEqual((await prismaGenerate(dir)).code, 0);
  });

  test("with the printed table names, Prisma's schema engine sees no drift in a SQLite database that `mail-outbox migrate` created", async () => {
    const fx = await freshSqlite();
    try {
      const config = prismaConfigFor("sqlite");
      const external = JSON.parse(/external: (\[.*\])/.exec(config)?.[1] ?? "null") as string[];
      const models = await readFile(path.join(ROOT, "prisma", "sqlite", "outbox.prisma"), "utf8");
      // The tests' User table is in the fixture; the application's schema after `mail-outbox init`.
      const schema = `datasource db {\n  provider = "sqlite"\n}\n\nmodel User {\n  id    Int     @id @default(autoincrement())\n  email String  @unique\n  name  String?\n}\n\n${models}`;
      const glue = await loadSchemaEngineWasm();
      const factory = new PrismaBetterSqlite3({ url: fx.url });
      const engine = await glue.SchemaEngine.new({ datamodels: [["schema.prisma", schema]] }, () => {}, bindMigrationAwareSqlAdapterFactory(factory));
      try {
        const files = [{ path: "schema.prisma", content: schema }];
        const diff = (externalTables: string[]) =>
          engine.diff({
            from: { tag: "schemaDatasource", files, configDir: REPO_ROOT },
            to: { tag: "schemaDatamodel", files },
            script: false,
            exitCode: true,
            filters: { externalTables, externalEnums: [] },
          });
        const listed = await diff(external);
        assert.equal(listed.exitCode, 0, listed.stdout ?? "");
        // Without the list, Prisma Migrate would want to drop the record of migrations.
        const unlisted = await diff([]);
        assert.equal(unlisted.exitCode, 2);
        assert.match(unlisted.stdout ?? "", /mail_outbox_migrations/);
        // Schema-qualified names are refused on SQLite.
        await assert.rejects(diff(external.map((n) => `main.${n}`)), /simple identifiers/);
      } finally {
        engine.free();
      }
    } finally {
      await fx.cleanup();
    }
  });

  test("with the printed table names, Prisma's schema engine sees no drift in a PostgreSQL schema that `mail-outbox migrate` created", async (t) => {
    if (!(await needPostgres(t))) return;
    const fx = await freshPostgres();
    t.after(() => fx.cleanup());
    const config = prismaConfigFor("postgresql", { postgresSchema: fx.schema });
    const external = JSON.parse(/external: (\[.*\])/.exec(config)?.[1] ?? "null") as string[];
    // diffLiveAgainstModels leaves out `<schema>.<table>` for mail_outbox_migrations and each table
    // given: exactly the names printed, which the engine wants qualified on PostgreSQL.
    assert.deepEqual(external, OUTBOX_TABLES.map((n) => `${fx.schema}.${n}`));
    const userOnly = `datasource db {\n  provider = "postgresql"\n}\n\nmodel User {\n  id    Int     @id @default(autoincrement())\n  email String  @unique\n  name  String?\n}\n`;
    const connectionString = fx.url.replace(/\?.*$/, "");
    const diff = await diffLiveAgainstModels({ provider: "postgresql", connectionString, schema: fx.schema }, { schema: userOnly, ignoreTables: OUTBOX_TABLES.filter((n) => n !== "mail_outbox_migrations") });
    assert.equal(diff.empty, true, diff.summary);
  });
});
