/**
 * The shape of the outbox tables that the relay and `enqueue()` rely on, and what is wrong with a
 * database's tables: `inspectSchema` (for doctor and the relay) and the repair plan `migrate` runs.
 * Database-agnostic: each store reads its catalog into a `LiveShape` and names its column types.
 * test/schema-drift.test.ts checks that a database migrated with the shipped SQL has exactly
 * these columns and indexes, so this list cannot drift.
 */
import { MIGRATIONS_TABLE, OUTBOX_TABLE_NAMES, addableColumn, catalog, loadMigrations, type Catalog, type Migration } from "./migrations.js";
import type { ColumnKind, LiveShape, RecordedMigrations, SchemaProblem, Store } from "./store.js";

export type { SchemaProblem } from "./store.js";

/** Expected columns: [kind, nullable], per table (in the order the migrations create them). */
const COLUMNS: Readonly<Record<(typeof OUTBOX_TABLE_NAMES)[number], Readonly<Record<string, readonly [ColumnKind, boolean]>>>> = {
  mail_outbox: {
    id: ["id", false],
    message_id: ["text", false],
    status: ["text", false],
    priority: ["int", false],
    idempotency_key: ["text", true],
    envelope_from: ["text", false],
    envelope_to: ["json", false],
    subject: ["text", false],
    raw: ["bytes", false],
    size: ["int", false],
    metadata: ["json", true],
    attempts: ["int", false],
    max_attempts: ["int", false],
    send_at: ["time", false],
    next_attempt_at: ["time", false],
    lease_owner: ["text", true],
    lease_expires_at: ["time", true],
    last_error: ["text", true],
    mta_response: ["text", true],
    mta_queue_id: ["text", true],
    accepted: ["json", true],
    rejected: ["json", true],
    uncertain_handoffs: ["int", false],
    created_at: ["time", false],
    updated_at: ["time", false],
    sent_at: ["time", true],
    trace_context: ["text", true],
  },
  mail_outbox_attempt: {
    id: ["id", false],
    email_id: ["id", false],
    attempt: ["int", false],
    relay: ["text", false],
    started_at: ["time", false],
    duration_ms: ["int", false],
    outcome: ["text", false],
    response: ["text", true],
    response_code: ["int", true],
    error_code: ["text", true],
    error: ["text", true],
    queue_id: ["text", true],
  },
  mail_outbox_delivery: {
    id: ["id", false],
    email_id: ["id", false],
    recipient: ["text", false],
    event: ["text", false],
    at: ["time", false],
    recorded_at: ["time", false],
    source: ["text", false],
    queue_id: ["text", true],
    dsn_status: ["text", true],
    remote_mta: ["text", true],
    reply: ["text", true],
    event_key: ["text", false],
  },
  mail_outbox_suppression: {
    address: ["text", false],
    reason: ["text", false],
    source: ["text", false],
    email_id: ["id", true],
    created_at: ["time", false],
    expires_at: ["time", true],
  },
  mail_outbox_log_cursor: {
    name: ["text", false],
    file_id: ["text", false],
    offset: ["bigint", false],
    state: ["json", true],
    caught_up_at: ["time", true],
    updated_at: ["time", false],
  },
  mail_outbox_pause: {
    scope: ["text", false],
    paused_at: ["time", false],
    paused_by: ["text", false],
    reason: ["text", true],
  },
  mail_outbox_rate: {
    bucket: ["text", false],
    rate: ["float", false],
    burst: ["int", false],
    tokens: ["float", false],
    refilled_at: ["time", false],
    updated_at: ["time", false],
  },
  mail_outbox_lock: {
    name: ["text", false],
    owner: ["text", false],
    expires_at: ["time", false],
    data: ["json", true],
    updated_at: ["time", false],
  },
};

/**
 * The delivery-fate tables: the relay and `enqueue()` work without them (only `ingest`,
 * `follow-log`, suppression and the `verify` policy need them), so a problem with them does not
 * stop the relay, and a database migrated before they existed keeps relaying until it is migrated.
 * The operations tables (mail_outbox_pause, _rate, _lock) and mail_outbox.trace_context are not
 * among them: a relay that cannot read the pauses and the shared rate limits must not send, so
 * their absence blocks the relay like the core tables' (the fix: `mail-outbox migrate`).
 */
const FATE_TABLES: ReadonlySet<string> = new Set(["mail_outbox_delivery", "mail_outbox_suppression", "mail_outbox_log_cursor"]);

/** Tables other than mail_outbox_attempt whose email_id references mail_outbox(id) with ON DELETE CASCADE. */
const CASCADE_TABLES = ["mail_outbox_delivery"] as const;



/** Indexes by name (the names Prisma gives them from the models), with the columns they cover. */
const INDEXES: Readonly<Record<string, { readonly table: string; readonly unique: boolean }>> = {
  mail_outbox_message_id_key: { table: "mail_outbox", unique: true },
  mail_outbox_idempotency_key_key: { table: "mail_outbox", unique: true },
  mail_outbox_claim_idx: { table: "mail_outbox", unique: false },
  mail_outbox_lease_idx: { table: "mail_outbox", unique: false },
  mail_outbox_created_idx: { table: "mail_outbox", unique: false },
  mail_outbox_attempt_email_idx: { table: "mail_outbox_attempt", unique: false },
  mail_outbox_attempt_queue_idx: { table: "mail_outbox_attempt", unique: false },
  mail_outbox_delivery_event_key_key: { table: "mail_outbox_delivery", unique: true },
  mail_outbox_delivery_email_idx: { table: "mail_outbox_delivery", unique: false },
  mail_outbox_delivery_queue_idx: { table: "mail_outbox_delivery", unique: false },
  mail_outbox_delivery_event_idx: { table: "mail_outbox_delivery", unique: false },
  mail_outbox_delivery_recorded_idx: { table: "mail_outbox_delivery", unique: false },
};

/** The table a foreign key of the catalog belongs to (`ALTER TABLE "t" ADD CONSTRAINT ...`). */
function foreignKeyTable(sql: string): string | undefined {
  return /^ALTER TABLE ["`](\w+)["`]/.exec(sql)?.[1];
}

/** A table or column name quoted as the catalog's migrations quote it (MySQL: backquotes). */
function quoted(cat: Catalog, name: string): string {
  return cat.mysql ? `\`${name}\`` : `"${name}"`;
}

/** The statement that drops a foreign key (MySQL drops one by `DROP FOREIGN KEY`). */
function dropForeignKey(cat: Catalog, table: string, fk: string): string {
  return `ALTER TABLE ${quoted(cat, table)} DROP ${cat.mysql ? "FOREIGN KEY" : "CONSTRAINT"} ${quoted(cat, fk)}`;
}

/** The columns (name, type as the store's database names it, nullable) that a migrated database has. */
export function expectedColumns(store: Pick<Store, "columnTypes">): { table: string; column: string; type: string; nullable: boolean }[] {
  return Object.entries(COLUMNS).flatMap(([table, cols]) =>
    Object.entries(cols).map(([column, [kind, nullable]]) => ({ table, column, type: store.columnTypes[kind], nullable })),
  );
}

/** The index names a migrated database has, by table. */
export function expectedIndexes(): { name: string; table: string; unique: boolean }[] {
  return Object.entries(INDEXES).map(([name, i]) => ({ name, ...i }));
}


export interface ProblemContext {
  /** The store's provider, its column types and its fix for a NOT NULL column. */
  readonly store: Pick<Store, "provider" | "columnTypes" | "dropNotNullFix">;
  /** The statements of every shipped migration. */
  readonly catalog: Catalog;
  /**
   * Who made the tables: "fresh" (nothing recorded, no outbox table: never set up; Prisma Migrate
   * may still be due to create them), "migrate" (`mail-outbox migrate` ran 0001_init), or
   * "prisma" (Prisma Migrate: 0001_init recorded as a baseline, or tables without a record).
   * `migrate` recreates lost tables, columns and indexes only in the first two cases: in tables
   * Prisma Migrate owns, a missing object may be one the user's Prisma migrations are still due to
   * add, and creating it would make that migration fail.
   */
  readonly owner: "fresh" | "migrate" | "prisma";
  /**
   * Only the objects created by this migration version and the ones before it (their version in
   * `catalog`): what a baseline of that version needs. @default every object
   */
  readonly upTo?: string;
}

export const MIGRATE = "run `mail-outbox migrate`";

export function ownerOf(recorded: RecordedMigrations): ProblemContext["owner"] {
  const first = recorded.versions?.get("0001_init");
  // "started": MySQL, mail-outbox migrate was interrupted in 0001_init and resumes it.
  if (first === "applied" || first === "started") return "migrate";
  if (first === "baseline" || recorded.outboxExists) return "prisma";
  return "fresh";
}

/** The fix for an object missing from tables that Prisma Migrate owns: a Prisma migration, or the statement by hand. */
function prismaFix(provider: string, sql: string | undefined): string {
  const statement = sql === undefined ? `the statements in migrations/${provider}/0001_init.sql of prisma-mail-outbox` : sql.replace(/\s+/g, " ");
  return `your Prisma migrations own the outbox tables: restore it in a Prisma migration (\`npx prisma migrate dev --create-only\`, then add it), or run it by hand (\`npx prisma db execute --stdin\`): ${statement}`;
}

export function shapeProblems(ctx: ProblemContext, live: LiveShape): SchemaProblem[] {
  const { catalog: cat } = ctx;
  /** Whether an object created by migration `version` is part of the check (see `upTo`). */
  const due = (version: string | undefined) => ctx.upTo === undefined || version === undefined || version <= ctx.upTo;
  const provider = ctx.store.provider;
  const prisma = ctx.owner === "prisma";
  const problems: SchemaProblem[] = [];
  const models = `prisma/${provider}/outbox.prisma`;
  const fixTable =
    ctx.owner === "fresh"
      ? `${MIGRATE}, or \`prisma migrate deploy\` when the outbox models (${models}) are in your Prisma migrations`
      : prisma
        ? prismaFix(provider, undefined)
        : MIGRATE;
  for (const [table, cols] of Object.entries(COLUMNS)) {
    if (!due(cat.tables.get(table)?.version)) continue;
    const blocksRelay = !FATE_TABLES.has(table);
    if (!live.tables.has(table)) {
      problems.push({ kind: "table", table, message: `table ${table} is missing`, fix: fixTable, repairable: !prisma && cat.tables.has(table), blocksRelay });
      continue;
    }
    const have = new Map(live.columns.filter((c) => c.table === table).map((c) => [c.column, c]));
    for (const [column, [kind, nullable]] of Object.entries(cols)) {
      // A column a later migration adds to an existing table is not part of an earlier baseline.
      if (!due(cat.addedColumns.get(`${table}.${column}`))) continue;
      const type = ctx.store.columnTypes[kind];
      const c = have.get(column);
      if (c === undefined) {
        const definition = cat.columns.get(`${table}.${column}`);
        const repairable = !prisma && addableColumn(definition);
        problems.push({
          kind: "column",
          table,
          message: `column ${table}.${column} is missing (expected ${type}${nullable ? "" : " NOT NULL"})`,
          fix: repairable
            ? MIGRATE
            : prisma && addableColumn(definition)
              ? prismaFix(provider, `ALTER TABLE ${quoted(cat, table)} ADD COLUMN ${definition}`)
              : `add it by hand, giving existing rows a value: ALTER TABLE ${quoted(cat, table)} ADD COLUMN ${definition ?? `${quoted(cat, column)} ${type}`} DEFAULT <value>, then drop the default (see ${models}); or, if the outbox holds nothing you need, drop its tables (${[...OUTBOX_TABLE_NAMES].reverse().join(", ")}) and ${MIGRATE}`,
          repairable,
          blocksRelay,
        });
        continue;
      }
      if (c.type.toLowerCase() !== type.toLowerCase()) {
        problems.push({
          kind: "column",
          table,
          message: `column ${table}.${column} has type ${c.type}, expected ${type}`,
          fix: `change it to match ${models}`,
          repairable: false,
          blocksRelay,
        });
      }
      if (nullable && !c.nullable) {
        problems.push({
          kind: "column",
          table,
          message: `column ${table}.${column} is NOT NULL but the outbox writes NULL into it`,
          fix: ctx.store.dropNotNullFix(table, column, models, cat.columns.get(`${table}.${column}`)),
          repairable: false,
          blocksRelay,
        });
      }
    }
    for (const c of have.values()) {
      if (!(c.column in cols) && !c.nullable && !c.hasDefault) {
        problems.push({
          kind: "column",
          table,
          message: `column ${table}.${c.column} is not part of the outbox, NOT NULL and has no default, so inserts will fail`,
          fix: "give it a default or make it nullable",
          repairable: false,
          blocksRelay: false,
        });
      }
    }
  }
  for (const [name, { table }] of Object.entries(INDEXES)) {
    if (live.tables.has(table) && !live.indexes.has(name) && due(cat.indexes.get(name)?.version)) {
      const create = cat.indexes.get(name);
      const repairable = !prisma && create !== undefined;
      problems.push({ kind: "index", table, message: `index ${name} on ${table} is missing`, fix: repairable ? MIGRATE : prismaFix(provider, create?.sql), repairable, blocksRelay: false });
    }
  }
  if (live.tables.has("mail_outbox") && live.tables.has("mail_outbox_attempt") && !live.cascadeFk) {
    const fk = [...cat.foreignKeys].find(([, add]) => foreignKeyTable(add.sql) === "mail_outbox_attempt")?.[0];
    const repairable = !prisma && fk !== undefined && !live.constraints.has(fk);
    problems.push({
      kind: "foreign-key",
      table: "mail_outbox_attempt",
      message: "mail_outbox_attempt.email_id has no foreign key to mail_outbox(id) with ON DELETE CASCADE",
      fix: repairable
        ? MIGRATE
        : prisma && fk !== undefined && !live.constraints.has(fk)
          ? prismaFix(provider, cat.foreignKeys.get(fk)?.sql)
          : fk !== undefined
          ? `drop the constraint ${fk} (${dropForeignKey(cat, "mail_outbox_attempt", fk)}), then ${MIGRATE}`
          : `recreate mail_outbox_attempt as ${models} describes it (SQLite adds a foreign key only with the table)`,
      repairable,
      blocksRelay: false,
    });
  }
  for (const table of CASCADE_TABLES) {
    // Stores that do not report these keys (cascadeFkTables absent) are not checked.
    if (live.cascadeFkTables === undefined || !live.tables.has("mail_outbox") || !live.tables.has(table) || live.cascadeFkTables.has(table)) continue;
    if (!due(cat.tables.get(table)?.version)) continue;
    const fk = [...cat.foreignKeys].find(([, add]) => foreignKeyTable(add.sql) === table)?.[0];
    const repairable = !prisma && fk !== undefined && !live.constraints.has(fk);
    problems.push({
      kind: "foreign-key",
      table,
      message: `${table}.email_id has no foreign key to mail_outbox(id) with ON DELETE CASCADE, so purging mail leaves its rows behind`,
      fix: repairable
        ? MIGRATE
        : prisma && fk !== undefined && !live.constraints.has(fk)
          ? prismaFix(provider, cat.foreignKeys.get(fk)?.sql)
          : fk !== undefined
            ? `drop the constraint ${fk} (${dropForeignKey(cat, table, fk)}), then ${MIGRATE}`
            : `recreate ${table} as ${models} describes it (SQLite adds a foreign key only with the table)`,
      repairable,
      blocksRelay: false,
    });
  }
  for (const { migration, triggers } of cat.idempotent) {
    for (const t of triggers) {
      if (!live.tables.has(t.table) || live.routines.has(`trigger:${t.name}`)) continue;
      const notify = t.name === "mail_outbox_notify";
      problems.push({
        kind: "trigger",
        table: t.table,
        message: notify
          ? `the notify trigger ${t.name} on ${t.table} is missing, so relays see new mail only when they poll`
          : `trigger ${t.name} on ${t.table} (migration ${migration.version}) is missing`,
        fix: notify ? `${MIGRATE}, or add prisma/postgresql/notify-trigger.sql to a Prisma migration` : MIGRATE,
        repairable: true,
        blocksRelay: false,
      });
    }
  }
  return problems;
}

/**
 * What `migrate` runs to give back a database what its recorded migrations created and it has
 * lost, in order: tables, columns that can be added to a table with rows, indexes, the foreign
 * key, and the idempotent migrations (the notify trigger) whose objects are gone.
 */
export function repairPlan(cat: Catalog, live: LiveShape): { what: string; sql: string }[] {
  const plan: { what: string; sql: string }[] = [];
  const tables = new Set(live.tables);
  for (const table of Object.keys(COLUMNS)) {
    const create = cat.tables.get(table);
    if (!tables.has(table) && create) {
      plan.push({ what: `table ${table} (${create.version})`, sql: create.sql });
      tables.add(table);
    }
  }
  for (const [table, cols] of Object.entries(COLUMNS)) {
    if (!tables.has(table)) continue;
    // A table recreated above has the columns of its CREATE TABLE; a later migration's columns are added to it here.
    const recreated = !live.tables.has(table);
    const have = new Set(live.columns.filter((c) => c.table === table).map((c) => c.column));
    for (const column of Object.keys(cols)) {
      const key = `${table}.${column}`;
      const definition = cat.columns.get(key);
      const missing = recreated ? cat.addedColumns.has(key) : !have.has(column);
      if (missing && addableColumn(definition)) plan.push({ what: `column ${table}.${column}`, sql: `ALTER TABLE ${quoted(cat, table)} ADD COLUMN ${definition}` });
    }
  }
  for (const [name, { table }] of Object.entries(INDEXES)) {
    const create = cat.indexes.get(name);
    // A table recreated above has the indexes its CREATE TABLE declares (MySQL).
    if (create?.withTable && !live.tables.has(table)) continue;
    if (tables.has(table) && !live.indexes.has(name) && create) plan.push({ what: `index ${name} (${create.version})`, sql: create.sql });
  }
  // A table created above gets its foreign key here (PostgreSQL) or with the table (SQLite).
  for (const [name, add] of cat.foreignKeys) {
    const table = foreignKeyTable(add.sql);
    if (table === undefined || !tables.has("mail_outbox") || !tables.has(table) || live.constraints.has(name)) continue;
    const lost =
      !live.tables.has("mail_outbox") ||
      !live.tables.has(table) ||
      (table === "mail_outbox_attempt" ? !live.cascadeFk : live.cascadeFkTables !== undefined && !live.cascadeFkTables.has(table));
    if (lost) plan.push({ what: `foreign key ${name} (${add.version})`, sql: add.sql });
  }
  for (const { migration, triggers, functions } of cat.idempotent) {
    const lost = [
      ...triggers.filter((t) => tables.has(t.table) && !live.routines.has(`trigger:${t.name}`)).map((t) => `trigger ${t.name}`),
      ...functions.filter((f) => !live.routines.has(`function:${f}`)).map((f) => `function ${f}()`),
    ];
    if (lost.length > 0) plan.push({ what: `${lost.join(", ")} (${migration.version})`, sql: migration.sql });
  }
  return plan;
}

/**
 * Check that the outbox tables have the columns, types, indexes and foreign key that the relay
 * and `enqueue()` rely on, that every shipped migration is recorded (when `migrate` manages the
 * tables), and (PostgreSQL) that the notify trigger exists. Changes nothing.
 *
 * @returns one entry per problem, with what is wrong, what to do, whether `mail-outbox migrate`
 *   fixes it, and whether the relay can run with it; empty when all is well.
 * @example
 * const problems = await inspectSchema(db);
 * for (const p of problems) console.error(`${p.message}: ${p.fix}`);
 */
export async function inspectSchema(db: Store): Promise<SchemaProblem[]> {
  const migrations = await loadMigrations(db.provider);
  const { shape, recorded } = await db.readSchema();
  const problems = shapeProblems({ store: db, catalog: catalog(migrations), owner: ownerOf(recorded) }, shape);
  problems.push(...pending(migrations, recorded));
  return problems;
}

/**
 * {@link inspectSchema} as sentences: one per problem, each saying what to do; empty when all is well.
 * @example
 * const problems = await checkSchema(db);
 * if (problems.length > 0) console.error(problems.join("\n"));
 */
export async function checkSchema(db: Store): Promise<string[]> {
  return (await inspectSchema(db)).map((p) => `${p.message} (${p.fix})`);
}

/** Migrations missing from a database that mail-outbox migrate manages. */
function pending(migrations: readonly Migration[], recorded: RecordedMigrations): SchemaProblem[] {
  if (recorded.versions === null || recorded.versions.size === 0) return [];
  const missing = migrations.filter((m) => !recorded.versions!.has(m.version) || recorded.versions!.get(m.version) === "started").map((m) => m.version);
  return missing.length === 0
    ? []
    : [{ kind: "migration", table: MIGRATIONS_TABLE, message: `migrations ${missing.join(", ")} have not been applied`, fix: MIGRATE, repairable: true, blocksRelay: false }];
}