/**
 * `migrate`: creates and upgrades the outbox tables with the versioned SQL shipped in
 * `migrations/<provider>/` (see ./migrations.ts), records each in `mail_outbox_migrations`, and
 * recreates what a recorded migration created and the database lost (see ./schema.ts). The
 * store runs each step in a transaction that other migrating processes wait for.
 */
import { performance } from "node:perf_hooks";
import { SchemaError } from "./errors.js";
import { OUTBOX_TABLE_NAMES, catalog, loadMigrations, type Migration } from "./migrations.js";
import { repairPlan, shapeProblems, type ProblemContext } from "./schema.js";
import type { RecordedMigrations, SchemaProblem, SchemaState, Store } from "./store.js";

export { MIGRATIONS_TABLE, loadMigrations, type Migration } from "./migrations.js";
export { checkSchema, expectedColumns, expectedIndexes, inspectSchema, type SchemaProblem } from "./schema.js";

export interface MigrateOptions {
  /** Report what would be done, change nothing. @default false */
  readonly dryRun?: boolean;
  /** Receives one line per migration (applied, already applied, baselined, or "would ..." in a dry run). @default no logging */
  readonly log?: (line: string) => void;
}

export interface MigrateResult {
  /** Versions whose SQL ran in this call (in a dry run: would run), in order. */
  applied: string[];
  /** Versions already recorded before this call. */
  alreadyApplied: string[];
  /**
   * Versions recorded without running their SQL because the tables already had their shape
   * (created by Prisma Migrate; see {@link migrate}). In a dry run: would be recorded.
   */
  baselined: string[];
  /**
   * Objects that a recorded migration creates but the database had lost (a dropped trigger,
   * index or table), recreated in this call from the migration's own statements. In a dry run:
   * would be recreated. One line each, e.g. `trigger mail_outbox_notify (0002_notify)`.
   */
  repaired: string[];
}

type Step = "already" | "apply" | "baseline";

/**
 * What to do with one migration, given what the database has recorded: "check" means the tables
 * were created by someone else (Prisma Migrate, from the models in `prisma/<provider>/outbox.prisma`:
 * `mail_outbox` exists without a record of `0001_init`, or `0001_init` was recorded as a baseline),
 * so the migration is recorded as a baseline if the tables already have the expected shape.
 */
function plan(m: Migration, recorded: RecordedMigrations): "already" | "apply" | "check" {
  // "started": MySQL, a migration interrupted halfway (see SchemaTransaction.recordStarted): resume it.
  if (recorded.versions?.get(m.version) === "started") return "apply";
  if (recorded.versions?.has(m.version)) return "already";
  const firstKind = recorded.versions?.get("0001_init");
  const ownedByPrismaMigrate = firstKind === "baseline" || (firstKind === undefined && recorded.outboxExists);
  return ownedByPrismaMigrate && !m.applyOnBaseline ? "check" : "apply";
}

function refusal(m: Migration, problems: readonly SchemaProblem[], provider: string, where: string): SchemaError {
  return new SchemaError(
    `The outbox tables in ${where} were not created by mail-outbox migrate (Prisma Migrate owns them) and do not match migration ${m.version}:\n` +
      problems.map((x) => `  - ${x.message}`).join("\n") +
      `\nBring them in line with the models in prisma/${provider}/outbox.prisma (copy the models into your schema and run \`prisma migrate dev\`), then run migrate again. ` +
      `If the tables hold nothing you need, drop them (${[...OUTBOX_TABLE_NAMES].reverse().join(", ")}) and let migrate create them.`,
  );
}

function failed(version: string, where: string, cause: unknown): SchemaError {
  return new SchemaError(
    `Migration ${version} failed on ${where} and was rolled back (nothing of it was kept): ${(cause as Error)?.message ?? String(cause)}. Fix the cause and run migrate again.`,
    { cause },
  );
}

/** Where DDL is not transactional (MySQL), the statements before the failing one were kept. */
function failedMidway(version: string, where: string, cause: unknown): SchemaError {
  return new SchemaError(
    `Migration ${version} failed on ${where}: ${(cause as Error)?.message ?? String(cause)}. This database commits each CREATE TABLE and ALTER TABLE on its own, so what the statements before the failing one created was kept, and the migration is recorded as started. Fix the cause and run migrate again: it continues where this run stopped, skipping what exists.`,
    { cause },
  );
}

function repairFailed(what: string, where: string, cause: unknown): SchemaError {
  return new SchemaError(
    `Recreating ${what} on ${where} failed and was rolled back (nothing of the repair was kept): ${(cause as Error)?.message ?? String(cause)}. Fix the cause (\`mail-outbox doctor\` lists what is wrong) and run migrate again.`,
    { cause },
  );
}

/** Where DDL is not transactional (MySQL), the repairs before the failing one were kept. */
function repairFailedMidway(what: string, done: readonly string[], where: string, cause: unknown): SchemaError {
  return new SchemaError(
    `Recreating ${what} on ${where} failed: ${(cause as Error)?.message ?? String(cause)}. ${done.length > 0 ? `What was recreated before it was kept (${done.join(", ")}): this database commits each CREATE and ALTER on its own. ` : ""}Fix the cause (\`mail-outbox doctor\` lists what is wrong) and run migrate again.`,
    { cause },
  );
}

/**
 * The migrations whose objects `migrate` may recreate: those it ran itself (recorded as
 * "applied"), and the idempotent ones (the notify trigger) however they were recorded. Objects of
 * a baseline belong to Prisma Migrate.
 */
function repairableMigrations(migrations: readonly Migration[], recorded: RecordedMigrations): Migration[] {
  return migrations.filter((m) => (m.applyOnBaseline ? recorded.versions?.has(m.version) : recorded.versions?.get(m.version) === "applied"));
}

/**
 * Create or upgrade the outbox tables: run the SQL files shipped in `migrations/<provider>/` that
 * the database has not run yet, in order, each in its own transaction, and record each in the
 * table `mail_outbox_migrations`. Running it again does nothing; it is safe to run at every start.
 *
 * **Repair.** A migration it applied whose objects the database has lost is made good again, from
 * the migration's own statements, in one transaction: a dropped table, an index, the foreign key
 * (PostgreSQL), a nullable column or one with a constant default, and the PostgreSQL notify
 * trigger and its function (`0002_notify`, also when the tables are Prisma Migrate's). They are listed in `repaired`. What cannot be
 * recreated without choosing values for existing rows (a lost NOT NULL column, a column of
 * another type) is left alone; {@link inspectSchema} and `mail-outbox doctor` say what to do.
 *
 * On PostgreSQL it works in the schema of the URL (`?schema=`, default `public`), creating the
 * schema if needed, and each transaction takes an advisory lock for that schema, so several
 * processes (two init containers, two relays) can migrate at once: one waits, then finds the
 * work done. On SQLite each transaction is `BEGIN IMMEDIATE`, with the same effect.
 *
 * **MySQL and MariaDB** commit each CREATE TABLE and ALTER TABLE on its own, so a migration
 * cannot be rolled back: each step holds a named lock (`GET_LOCK`) for the database instead of a
 * transaction, and a migration is recorded as `started` before its first statement. One that
 * fails or is interrupted halfway keeps what it created; the next migrate resumes it, skipping
 * the tables, indexes, foreign keys and columns that exist, and records it as applied.
 *
 * **Tables created by Prisma Migrate.** If `mail_outbox` exists but `0001_init` was never
 * recorded (you copied the models from `prisma/<provider>/outbox.prisma` into your schema and
 * ran `prisma migrate`), migrate does not touch the tables: when their columns, types and
 * indexes are what this version expects, it records the table migrations as `baseline` (listed
 * in `baselined`), and still runs (and repairs) the few migrations about things Prisma's models
 * cannot describe (on PostgreSQL, the notify trigger of `0002_notify`). When the shape differs it
 * throws a {@link SchemaError} listing the differences and leaves the tables as they are; a table,
 * column or index later lost from such tables is not recreated either (your Prisma migrations may
 * be about to add it): {@link inspectSchema} gives the statement. Later
 * upgrades follow the same rule: update the models, run `prisma migrate dev`, then migrate
 * records them. To keep Prisma Migrate from reporting `mail_outbox_migrations` as drift, list it
 * under `tables.external` in your `prisma.config.ts` (schema-qualified on PostgreSQL:
 * `"public.mail_outbox_migrations"`).
 *
 * @returns the versions run (`applied`), found recorded (`alreadyApplied`), recorded without
 *   running (`baselined`), and the lost objects recreated (`repaired`).
 * @throws SchemaError when a migration or a repair fails (it is rolled back; on MySQL what ran
 *   before the failing statement is kept and the next migrate resumes), or when tables made
 *   by Prisma Migrate do not have the expected columns.
 * @example
 * const db = await openDatabase(process.env.DATABASE_URL);
 * const { applied, repaired } = await migrate(db, { log: console.log });
 * await db.close();
 */
export async function migrate(db: Store, options: MigrateOptions = {}): Promise<MigrateResult> {
  const log = options.log ?? (() => {});
  const dryRun = options.dryRun ?? false;
  const migrations = await loadMigrations(db.provider);
  const all = catalog(migrations);
  const result: MigrateResult = { applied: [], alreadyApplied: [], baselined: [], repaired: [] };
  const where = db.where;
  const would = dryRun ? "would " : "";
  // Only used for tables found without a record: Prisma Migrate made them.
  const ctx: ProblemContext = { store: db, catalog: all, owner: "prisma" };
  const record = (m: Migration, step: Step, ms: number) => {
    if (step === "already") {
      result.alreadyApplied.push(m.version);
      log(`${m.version} already applied`);
    } else if (step === "apply") {
      result.applied.push(m.version);
      log(dryRun ? `would apply ${m.version}` : `applied ${m.version} (${Math.round(ms)} ms)`);
    } else {
      result.baselined.push(m.version);
      log(`${would}record ${m.version} as baseline: the tables were created outside mail-outbox migrate and have its shape`);
    }
  };
  const repaired = (what: readonly string[]) => {
    for (const w of what) {
      result.repaired.push(w);
      log(`${dryRun ? "would recreate" : "recreated"} ${w}: recorded as applied, but missing from the database`);
    }
  };
  /** Tables made by Prisma Migrate are recorded as a baseline when they have the expected shape. */
  const decide = (m: Migration, state: SchemaState): Step => {
    const p = plan(m, state.recorded);
    if (p !== "check") return p;
    // The shape up to this migration: tables made from an earlier version's models are recorded
    // as a baseline of that version, and a later migration is refused until the models are updated.
    const problems = shapeProblems({ ...ctx, upTo: m.version }, state.shape).filter((x) => x.kind !== "trigger");
    if (problems.length > 0) throw refusal(m, problems, db.provider, where);
    return "baseline";
  };

  if (dryRun) {
    const state = await db.readSchema();
    for (const m of migrations) record(m, decide(m, state), 0);
    repaired(repairPlan(catalog(repairableMigrations(migrations, state.recorded)), state.shape).map((x) => x.what));
    return result;
  }
  await db.schemaTransaction((tx) => tx.ensureMigrationsTable());
  for (const m of migrations) {
    const started = performance.now();
    const step = await db.schemaTransaction(async (tx): Promise<Step> => {
      const step = decide(m, await tx.read());
      if (step === "already") return step;
      if (step === "apply") {
        await tx.recordStarted?.(m.version);
        try {
          await tx.exec(m.sql);
        } catch (err) {
          throw tx.recordStarted ? failedMidway(m.version, where, err) : failed(m.version, where, err);
        }
        const broken = await tx.danglingForeignKeys();
        if (broken > 0) throw failed(m.version, where, new Error(`it leaves ${broken} rows whose foreign key points nowhere`));
      }
      await tx.record(m.version, step === "apply" ? "applied" : "baseline");
      return step;
    });
    record(m, step, performance.now() - started);
  }
  // Planned inside the transaction: a second process migrating at once finds nothing left to do.
  const done = await db.schemaTransaction(async (tx) => {
    const state = await tx.read();
    const steps = repairPlan(catalog(repairableMigrations(migrations, state.recorded)), state.shape);
    for (const x of steps) {
      try {
        await tx.exec(x.sql);
      } catch (err) {
        throw tx.recordStarted ? repairFailedMidway(x.what, steps.slice(0, steps.indexOf(x)).map((y) => y.what), where, err) : repairFailed(x.what, where, err);
      }
    }
    const broken = steps.length > 0 ? await tx.danglingForeignKeys() : 0;
    if (broken > 0) {
      throw repairFailed(steps.map((x) => x.what).join(", "), where, new Error(`it leaves ${broken} attempt rows whose mail is gone (DELETE FROM mail_outbox_attempt WHERE email_id NOT IN (SELECT id FROM mail_outbox))`));
    }
    return steps.map((x) => x.what);
  });
  repaired(done);
  return result;
}
