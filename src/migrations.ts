/**
 * The migrations shipped in `migrations/<provider>/` (generated from `prisma/<provider>/outbox.prisma`
 * by `npm run gen:sql`), and what they create, by name: the statements `migrate` runs again to
 * repair a database that lost one of them (a dropped trigger, index or table).
 */
import { readFile, readdir } from "node:fs/promises";
import { SchemaError } from "./errors.js";

/**
 * The tables the shipped migrations create, in the order they are created: the outbox, its attempt
 * log, (0003/0002_delivery_fate) the delivery events, the suppression list and the log
 * follower's cursor, and (0004/0003_operations) the relays' shared operations state: pauses,
 * hand-off rate limits and named leases.
 */
export const OUTBOX_TABLE_NAMES = [
  "mail_outbox",
  "mail_outbox_attempt",
  "mail_outbox_delivery",
  "mail_outbox_suppression",
  "mail_outbox_log_cursor",
  "mail_outbox_pause",
  "mail_outbox_rate",
  "mail_outbox_lock",
] as const;

/** The table that records which shipped migrations a database has run. */
export const MIGRATIONS_TABLE = "mail_outbox_migrations";

/** One shipped migration file. */
export interface Migration {
  /** The file name without `.sql`, e.g. `0001_init`. Recorded in `mail_outbox_migrations.version`. */
  readonly version: string;
  readonly sql: string;
  /**
   * Also run when the tables were created by Prisma Migrate (the file says
   * `-- mail-outbox: apply-on-baseline`): idempotent statements about things Prisma's models do not
   * describe, such as the PostgreSQL notify trigger.
   */
  readonly applyOnBaseline: boolean;
}


const MIGRATIONS_DIR = new URL("../migrations/", import.meta.url);

/**
 * The shipped migrations for a database (its Prisma provider: "postgresql", "sqlite", "mysql"), in order. They are found relative to this module
 * (`../migrations/`), which holds from `src/` under tsx and from `dist/` in the published package.
 */
export async function loadMigrations(provider: string): Promise<Migration[]> {
  const dir = new URL(`${provider}/`, MIGRATIONS_DIR);
  let names: string[];
  try {
    names = (await readdir(dir)).filter((f) => /^\d{4}_[a-z0-9_]+\.sql$/.test(f)).sort();
  } catch (cause) {
    throw new SchemaError(`The migrations folder ${dir.pathname} cannot be read; reinstall prisma-mail-outbox.`, { cause });
  }
  return Promise.all(
    names.map(async (name) => {
      const sql = await readFile(new URL(name, dir), "utf8");
      return { version: name.slice(0, -4), sql, applyOnBaseline: /^-- mail-outbox: apply-on-baseline$/m.test(sql) };
    }),
  );
}

// What the shipped migrations create, by name: the statements `migrate` runs again to repair a
// database that lost one of them (a dropped trigger, index or table). The table migrations are
// Prisma's generated SQL (one statement per object, each ending in `;` at the end of a line); the
// idempotent ones (`-- mail-outbox: apply-on-baseline`, PL/pgSQL bodies with `;` inside) are run
// again as a whole.

export interface Catalog {
  /** table -> its CREATE TABLE statement */
  readonly tables: Map<string, { sql: string; version: string }>;
  /** "table.column" -> its definition as the migration writes it: `"lease_owner" TEXT` */
  readonly columns: Map<string, string>;
  /** "table.column" -> the migration that adds it to its table (`ALTER TABLE ... ADD COLUMN`); absent for columns created with their table. */
  readonly addedColumns: Map<string, string>;
  /** index -> its CREATE INDEX; `withTable`: also created by its table's CREATE TABLE (MySQL). */
  readonly indexes: Map<string, { sql: string; version: string; withTable?: boolean }>;
  /** constraint name -> ALTER TABLE ... ADD CONSTRAINT ... FOREIGN KEY (PostgreSQL, MySQL) */
  readonly foreignKeys: Map<string, { sql: string; version: string }>;
  /** Idempotent migrations with the triggers and functions they create. */
  readonly idempotent: { readonly migration: Migration; readonly triggers: { name: string; table: string }[]; readonly functions: string[] }[];
  /** The migrations are MySQL's (backquoted names, indexes inside CREATE TABLE). */
  readonly mysql: boolean;
}

/** A migration's statements, comment lines left out (each ends in `;` at the end of a line). */
export function statements(sql: string): string[] {
  return sql
    .split("\n")
    .filter((line) => !line.trimStart().startsWith("--"))
    .join("\n")
    .split(/;[ \t]*(?:\n|$)/)
    .map((x) => x.trim())
    .filter((x) => x !== "");
}

export function catalog(migrations: readonly Migration[]): Catalog {
  const mysql = migrations.some((m) => /^CREATE TABLE `/m.test(m.sql));
  const c: Catalog = { tables: new Map(), columns: new Map(), addedColumns: new Map(), indexes: new Map(), foreignKeys: new Map(), idempotent: [], mysql };
  for (const m of migrations) {
    if (m.applyOnBaseline) {
      const triggers = [...m.sql.matchAll(/CREATE\s+TRIGGER\s+(?:IF\s+NOT\s+EXISTS\s+)?"?(\w+)"?[\s\S]*?\sON\s+"?(\w+)"?/gi)].map((x) => ({ name: x[1]!, table: x[2]! }));
      const functions = [...m.sql.matchAll(/CREATE\s+(?:OR\s+REPLACE\s+)?FUNCTION\s+"?(\w+)"?/gi)].map((x) => x[1]!);
      c.idempotent.push({ migration: m, triggers, functions });
      continue;
    }
    for (const stmt of statements(m.sql)) {
      let x: RegExpExecArray | null;
      if (mysql) {
        mysqlStatement(c, stmt, m.version);
      } else if ((x = /^CREATE TABLE "(\w+)" \(([\s\S]*)\)$/.exec(stmt))) {
        const table = x[1]!;
        c.tables.set(table, { sql: stmt, version: m.version });
        for (const line of x[2]!.split("\n")) {
          const col = /^\s*"(\w+)"\s+(.+?),?\s*$/.exec(line);
          if (col) c.columns.set(`${table}.${col[1]}`, `"${col[1]}" ${col[2]}`);
        }
      } else if ((x = /^ALTER TABLE "(\w+)" ADD COLUMN\s+("(\w+)" .+)$/s.exec(stmt))) {
        c.columns.set(`${x[1]}.${x[3]}`, x[2]!);
        c.addedColumns.set(`${x[1]}.${x[3]}`, m.version);
      } else if ((x = /^CREATE (?:UNIQUE )?INDEX "(\w+)"/.exec(stmt))) {
        c.indexes.set(x[1]!, { sql: stmt, version: m.version });
      } else if ((x = /^ALTER TABLE "\w+" ADD CONSTRAINT "(\w+)" FOREIGN KEY/.exec(stmt))) {
        c.foreignKeys.set(x[1]!, { sql: stmt, version: m.version });
      }
    }
  }
  return c;
}

/**
 * One statement of a MySQL migration, in the form Prisma prints for MySQL: unique keys and indexes
 * are lines of their CREATE TABLE (recorded here as the CREATE INDEX that recreates one alone),
 * foreign keys are `ALTER TABLE ... ADD CONSTRAINT` after the tables.
 */
function mysqlStatement(c: Catalog, stmt: string, version: string): void {
  let x: RegExpExecArray | null;
  if ((x = /^CREATE TABLE `(\w+)` \(([\s\S]*)\)[^)]*$/.exec(stmt))) {
    const table = x[1]!;
    c.tables.set(table, { sql: stmt, version });
    for (const line of x[2]!.split("\n")) {
      const col = /^\s*`(\w+)`\s+(.+?),?\s*$/.exec(line);
      if (col) c.columns.set(`${table}.${col[1]}`, `\`${col[1]}\` ${col[2]}`);
      const index = /^\s*(UNIQUE )?INDEX `(\w+)`\s*(\(.*\)),?\s*$/.exec(line);
      if (index) c.indexes.set(index[2]!, { sql: `CREATE ${index[1] ?? ""}INDEX \`${index[2]}\` ON \`${table}\`${index[3]}`, version, withTable: true });
    }
  } else if ((x = /^ALTER TABLE `(\w+)` ADD COLUMN\s+(`(\w+)` .+)$/s.exec(stmt))) {
    c.columns.set(`${x[1]}.${x[3]}`, x[2]!);
    c.addedColumns.set(`${x[1]}.${x[3]}`, version);
  } else if ((x = /^CREATE (?:UNIQUE )?INDEX `(\w+)`/.exec(stmt))) {
    c.indexes.set(x[1]!, { sql: stmt, version });
  } else if ((x = /^ALTER TABLE `\w+` ADD CONSTRAINT `(\w+)` FOREIGN KEY/.exec(stmt))) {
    c.foreignKeys.set(x[1]!, { sql: stmt, version });
  }
}

/**
 * A column `ALTER TABLE ... ADD COLUMN` can add to a table that holds rows, on both databases:
 * nullable, or NOT NULL with a constant default. (A NOT NULL column without one needs a value for
 * every existing row, which only the operator can choose.)
 */
export function addableColumn(definition: string | undefined): definition is string {
  if (definition === undefined || /PRIMARY KEY|REFERENCES/i.test(definition)) return false;
  if (!/NOT NULL/i.test(definition)) return true;
  return /DEFAULT\s+(?:-?\d+(?:\.\d+)?|'(?:[^']|'')*')\s*$/i.test(definition);
}
