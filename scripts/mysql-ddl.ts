/**
 * The MySQL/MariaDB DDL of the outbox models, rendered from prisma/mysql/outbox.prisma.
 *
 * Prisma's schema engine compiled to WebAssembly (`@prisma/schema-engine-wasm`, what
 * scripts/gen-migration-sql.ts uses for PostgreSQL and SQLite) has no MySQL connector ("Unsupported
 * adapter provider: Mysql"), and the native engine cannot be downloaded offline. So for MySQL the
 * SQL is rendered here, in the form `prisma migrate diff --from-empty --to-schema` prints for the
 * mysql provider (backquoted names, `DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci`,
 * unique keys and indexes inside CREATE TABLE, foreign keys after). test/schema-drift.test.ts then
 * checks the shipped SQL against this rendering and the live tables on MariaDB against the models.
 *
 * The parser reads the subset of the Prisma schema language the outbox models use: scalar fields
 * with `@id`, `@unique`, `@default(...)`, `@map`, `@db.*`; relation fields; `@@index`, `@@unique`,
 * `@@map`. Anything else is an error, so a model change it does not understand cannot pass silently.
 */

export interface ModelField {
  readonly name: string;
  readonly column: string;
  /** Prisma scalar type: String, Int, BigInt, Float, Boolean, DateTime, Json, Bytes. */
  readonly type: string;
  readonly optional: boolean;
  readonly id: boolean;
  readonly unique: boolean;
  /** The `@default(...)` argument as written, or null. */
  readonly default: string | null;
  /** `@db.X(args)` as `X(args)`, or null. */
  readonly nativeType: string | null;
}

export interface ModelIndex {
  readonly name: string;
  readonly columns: readonly { readonly column: string; readonly desc: boolean }[];
  readonly unique: boolean;
}

export interface ModelRelation {
  readonly field: string;
  readonly columns: readonly string[];
  readonly references: string;
  readonly referencedColumns: readonly string[];
  readonly onDelete: string;
}

export interface ParsedModel {
  readonly name: string;
  readonly table: string;
  readonly fields: readonly ModelField[];
  readonly indexes: readonly ModelIndex[];
  readonly relations: readonly ModelRelation[];
}

const SCALARS = new Set(["String", "Int", "BigInt", "Float", "Boolean", "DateTime", "Json", "Bytes", "Decimal"]);

function mapArg(attrs: string): string | null {
  return /@map\("([^"]+)"\)/.exec(attrs)?.[1] ?? null;
}

/** Parse the outbox models (see the module comment for the subset understood). */
export function parseModels(source: string): ParsedModel[] {
  const text = source.replace(/\/\/[^\n]*/g, "");
  const models: ParsedModel[] = [];
  for (const m of text.matchAll(/model\s+(\w+)\s*\{([^}]*)\}/g)) {
    const name = m[1]!;
    const body = m[2]!.split("\n").map((l) => l.trim()).filter((l) => l !== "");
    let table = name;
    const raw: { name: string; type: string; optional: boolean; list: boolean; attrs: string }[] = [];
    const blockAttrs: string[] = [];
    for (const line of body) {
      if (line.startsWith("@@")) {
        blockAttrs.push(line);
        continue;
      }
      const f = /^(\w+)\s+(\w+)(\[\])?(\?)?\s*(.*)$/.exec(line);
      if (!f) throw new Error(`model ${name}: cannot read the line ${JSON.stringify(line)}`);
      raw.push({ name: f[1]!, type: f[2]!, list: f[3] !== undefined, optional: f[4] !== undefined, attrs: f[5] ?? "" });
    }
    const fields: ModelField[] = [];
    const relations: ModelRelation[] = [];
    const columnOf = (field: string) => {
      const r = raw.find((x) => x.name === field);
      if (!r) throw new Error(`model ${name}: no field ${field}`);
      return mapArg(r.attrs) ?? r.name;
    };
    for (const r of raw) {
      if (!SCALARS.has(r.type)) {
        if (r.list) continue; // the other side of a relation
        const rel = /@relation\(fields:\s*\[([^\]]+)\],\s*references:\s*\[([^\]]+)\](?:,\s*onDelete:\s*(\w+))?\)/.exec(r.attrs);
        if (!rel) throw new Error(`model ${name}: the relation field ${r.name} has no @relation(fields, references)`);
        relations.push({
          field: r.name,
          columns: rel[1]!.split(",").map((s) => s.trim()),
          references: r.type,
          referencedColumns: rel[2]!.split(",").map((s) => s.trim()),
          onDelete: rel[3] ?? "Restrict",
        });
        continue;
      }
      const rest = r.attrs.replace(/@map\("[^"]*"\)/, "").replace(/@default\((?:[^()]|\([^()]*\))*\)/, "").replace(/@db\.\w+(\([^)]*\))?/, "").replace(/@id\b/, "").replace(/@unique\b/, "").trim();
      if (rest !== "") throw new Error(`model ${name}: field ${r.name} has attributes this renderer does not know: ${rest}`);
      const def = /@default\(((?:[^()]|\([^()]*\))*)\)/.exec(r.attrs)?.[1] ?? null;
      const native = /@db\.(\w+(?:\([^)]*\))?)/.exec(r.attrs)?.[1] ?? null;
      fields.push({
        name: r.name,
        column: mapArg(r.attrs) ?? r.name,
        type: r.type,
        optional: r.optional,
        id: /@id\b/.test(r.attrs),
        unique: /@unique\b/.test(r.attrs),
        default: def,
        nativeType: native,
      });
    }
    const indexes: ModelIndex[] = [];
    for (const a of blockAttrs) {
      const map = /@@map\("([^"]+)"\)/.exec(a);
      if (map) {
        table = map[1]!;
        continue;
      }
      const idx = /^@@(index|unique)\(\[([^\]]+)\](?:,\s*map:\s*"([^"]+)")?\)$/.exec(a);
      if (!idx) throw new Error(`model ${name}: cannot read ${a}`);
      const columns = idx[2]!.split(",").map((s) => {
        const c = /^\s*(\w+)(\(sort:\s*(Asc|Desc)\))?\s*$/.exec(s);
        if (!c) throw new Error(`model ${name}: cannot read the index field ${s}`);
        return { column: columnOf(c[1]!), desc: c[3] === "Desc" };
      });
      if (!idx[3]) throw new Error(`model ${name}: give ${a} a map: name (the relay's SQL does not depend on it, doctor names it)`);
      indexes.push({ name: idx[3], columns, unique: idx[1] === "unique" });
    }
    models.push({ name, table, fields, indexes, relations });
  }
  return models;
}

/** The column type Prisma's MySQL connector gives a field (its `@db.*` type, else the scalar's default). */
export function mysqlColumnType(f: ModelField): string {
  if (f.nativeType !== null) {
    const n = /^(\w+)(?:\(([^)]*)\))?$/.exec(f.nativeType)!;
    const base = n[1]!;
    const args = n[2];
    const names: Record<string, string> = {
      Char: "CHAR",
      VarChar: "VARCHAR",
      Text: "TEXT",
      MediumText: "MEDIUMTEXT",
      LongText: "LONGTEXT",
      LongBlob: "LONGBLOB",
      Blob: "BLOB",
      DateTime: "DATETIME",
      Double: "DOUBLE",
      Int: "INTEGER",
      BigInt: "BIGINT",
    };
    const sqlName = names[base];
    if (sqlName === undefined) throw new Error(`@db.${f.nativeType} is not a type this renderer knows`);
    return args !== undefined ? `${sqlName}(${args})` : sqlName;
  }
  const defaults: Record<string, string> = {
    String: "VARCHAR(191)",
    Int: "INTEGER",
    BigInt: "BIGINT",
    Float: "DOUBLE",
    Boolean: "BOOLEAN",
    DateTime: "DATETIME(3)",
    Json: "JSON",
    Bytes: "LONGBLOB",
  };
  const t = defaults[f.type];
  if (t === undefined) throw new Error(`the type ${f.type} is not one this renderer knows`);
  return t;
}

function defaultClause(f: ModelField): string {
  if (f.default === null) return "";
  if (f.default === "autoincrement()") return " AUTO_INCREMENT";
  if (f.default === "now()") {
    const p = /DATETIME\((\d)\)/.exec(mysqlColumnType(f))?.[1];
    return ` DEFAULT CURRENT_TIMESTAMP${p !== undefined ? `(${p})` : ""}`;
  }
  if (/^"(.*)"$/.test(f.default)) return ` DEFAULT '${f.default.slice(1, -1).replace(/'/g, "''")}'`;
  if (/^-?\d+(\.\d+)?$/.test(f.default) || f.default === "true" || f.default === "false") return ` DEFAULT ${f.default}`;
  throw new Error(`@default(${f.default}) is not a default this renderer knows`);
}

const q = (name: string) => `\`${name}\``;

/** The SQL that creates the models' tables on an empty MySQL/MariaDB database, as Prisma prints it. */
export function renderMysqlDdl(models: readonly ParsedModel[]): string {
  const out: string[] = [];
  for (const m of models) {
    const lines = m.fields.map((f) => `    ${q(f.column)} ${mysqlColumnType(f)} ${f.optional ? "NULL" : "NOT NULL"}${defaultClause(f)},`);
    // Prisma leaves a blank line between the columns and the keys.
    lines.push("");
    for (const f of m.fields.filter((x) => x.unique)) lines.push(`    UNIQUE INDEX ${q(`${m.table}_${f.column}_key`)}(${q(f.column)}),`);
    for (const i of m.indexes) {
      lines.push(`    ${i.unique ? "UNIQUE " : ""}INDEX ${q(i.name)}(${i.columns.map((c) => `${q(c.column)}${c.desc ? " DESC" : ""}`).join(", ")}),`);
    }
    const ids = m.fields.filter((f) => f.id);
    if (ids.length === 0) throw new Error(`model ${m.name} has no @id`);
    lines.push(`    PRIMARY KEY (${ids.map((f) => q(f.column)).join(", ")})`);
    out.push(`-- CreateTable\nCREATE TABLE ${q(m.table)} (\n${lines.join("\n")}\n) DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;\n`);
  }
  const byName = new Map(models.map((m) => [m.name, m]));
  for (const m of models) {
    for (const r of m.relations) {
      const target = byName.get(r.references);
      if (!target) throw new Error(`model ${m.name}: the relation ${r.field} references the unknown model ${r.references}`);
      const cols = r.columns.map((c) => m.fields.find((f) => f.name === c)?.column ?? c);
      const refs = r.referencedColumns.map((c) => target.fields.find((f) => f.name === c)?.column ?? c);
      const action = (a: string) => a.replace(/([a-z])([A-Z])/g, "$1 $2").toUpperCase();
      out.push(
        `-- AddForeignKey\nALTER TABLE ${q(m.table)} ADD CONSTRAINT ${q(`${m.table}_${cols.join("_")}_fkey`)} FOREIGN KEY (${cols.map(q).join(", ")}) REFERENCES ${q(target.table)}(${refs.map(q).join(", ")}) ON DELETE ${action(r.onDelete)} ON UPDATE CASCADE;\n`,
      );
    }
  }
  return out.join("\n");
}

// ---------------------------------------------------------------------------------------------
// The models against a live MySQL/MariaDB database: what `prisma migrate diff` would compare,
// for test/schema-drift.test.ts and `npm run gen:sql -- --check` (the wasm engine cannot).

/** One table as information_schema describes it, in terms both MySQL 8 and MariaDB report alike. */
export interface MysqlTableShape {
  readonly collation: string;
  /** column -> `type NULL|NOT NULL [DEFAULT x] [AUTO_INCREMENT]`, e.g. `varchar(16) NOT NULL DEFAULT pending`. */
  readonly columns: Readonly<Record<string, string>>;
  /** index name (PRIMARY included) -> `UNIQUE (a, b DESC)` or `INDEX (a)`. */
  readonly indexes: Readonly<Record<string, string>>;
  /** foreign key name -> `(a) REFERENCES t(b) ON DELETE x ON UPDATE y`. */
  readonly foreignKeys: Readonly<Record<string, string>>;
}

/**
 * A column type as both servers name it: INTEGER is `int`, MariaDB (and MySQL before 8.0.19) add a
 * display width to integers (`int(11)`), and MariaDB's JSON is LONGTEXT with a `json_valid` CHECK.
 */
function columnType(type: string, json: boolean): string {
  const t = type.toLowerCase();
  if (t === "json" || (t === "longtext" && json)) return "json";
  return t.replace(/^integer\b/, "int").replace(/^(tinyint|smallint|mediumint|int|bigint)\(\d+\)/, "$1");
}

/** A column default as both servers report it: MySQL 8 gives strings unquoted, MariaDB quoted, and 'NULL' for none. */
function columnDefault(value: string | null): string | null {
  if (value === null || value.toUpperCase() === "NULL") return null;
  const unquoted = /^'(.*)'$/s.exec(value)?.[1]?.replace(/''/g, "'");
  return unquoted ?? value.toLowerCase();
}

function describeColumn(type: string, nullable: boolean, def: string | null, autoIncrement: boolean): string {
  return `${type} ${nullable ? "NULL" : "NOT NULL"}${def !== null ? ` DEFAULT ${def}` : ""}${autoIncrement ? " AUTO_INCREMENT" : ""}`;
}

/** The tables the models describe, by table name, in the terms of {@link readMysqlShape}. */
export function expectedMysqlShape(models: readonly ParsedModel[]): Map<string, MysqlTableShape> {
  const out = new Map<string, MysqlTableShape>();
  const byName = new Map(models.map((m) => [m.name, m]));
  for (const m of models) {
    const columns: Record<string, string> = {};
    for (const f of m.fields) {
      const def =
        f.default === null || f.default === "autoincrement()"
          ? null
          : f.default === "now()"
            ? `current_timestamp(${/DATETIME\((\d)\)/.exec(mysqlColumnType(f))?.[1] ?? ""})`
            : /^"(.*)"$/.exec(f.default)?.[1] ?? f.default;
      columns[f.column] = describeColumn(columnType(mysqlColumnType(f), f.type === "Json"), f.optional, def, f.default === "autoincrement()");
    }
    const indexes: Record<string, string> = {};
    indexes.PRIMARY = `UNIQUE (${m.fields.filter((f) => f.id).map((f) => f.column).join(", ")})`;
    for (const f of m.fields.filter((x) => x.unique)) indexes[`${m.table}_${f.column}_key`] = `UNIQUE (${f.column})`;
    for (const i of m.indexes) indexes[i.name] = `${i.unique ? "UNIQUE" : "INDEX"} (${i.columns.map((c) => `${c.column}${c.desc ? " DESC" : ""}`).join(", ")})`;
    const foreignKeys: Record<string, string> = {};
    for (const r of m.relations) {
      const target = byName.get(r.references)!;
      const cols = r.columns.map((c) => m.fields.find((f) => f.name === c)?.column ?? c);
      const refs = r.referencedColumns.map((c) => target.fields.find((f) => f.name === c)?.column ?? c);
      const action = r.onDelete.replace(/([a-z])([A-Z])/g, "$1 $2").toUpperCase();
      foreignKeys[`${m.table}_${cols.join("_")}_fkey`] = `(${cols.join(", ")}) REFERENCES ${target.table}(${refs.join(", ")}) ON DELETE ${action} ON UPDATE CASCADE`;
    }
    out.set(m.table, { collation: "utf8mb4_unicode_ci", columns, indexes, foreignKeys });
  }
  return out;
}

/** What runs a query: a `mariadb` pool or connection (`(sql, params) => rows`). */
export type MysqlQuery = (sql: string, params: unknown[]) => Promise<Record<string, unknown>[]>;

/** The tables `tables` of `database` as information_schema describes them (absent tables absent). */
export async function readMysqlShape(query: MysqlQuery, database: string, tables: readonly string[]): Promise<Map<string, MysqlTableShape>> {
  const out = new Map<string, MysqlTableShape>();
  if (tables.length === 0) return out;
  const t = await query(`SELECT TABLE_NAME, TABLE_COLLATION FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME IN (?)`, [database, tables]);
  const cols = await query(
    `SELECT c.TABLE_NAME, c.COLUMN_NAME, c.COLUMN_TYPE, c.IS_NULLABLE, c.COLUMN_DEFAULT, c.EXTRA,
            EXISTS (SELECT 1 FROM information_schema.CHECK_CONSTRAINTS k WHERE k.CONSTRAINT_SCHEMA = c.TABLE_SCHEMA AND k.TABLE_NAME = c.TABLE_NAME
                     AND k.CHECK_CLAUSE = CONCAT('json_valid(\`', c.COLUMN_NAME, '\`)')) AS JSON_CHECKED
       FROM information_schema.COLUMNS c WHERE c.TABLE_SCHEMA = ? AND c.TABLE_NAME IN (?) ORDER BY c.ORDINAL_POSITION`,
    [database, tables],
  );
  const idx = await query(
    `SELECT TABLE_NAME, INDEX_NAME, NON_UNIQUE, COLUMN_NAME, COLLATION FROM information_schema.STATISTICS
      WHERE TABLE_SCHEMA = ? AND TABLE_NAME IN (?) ORDER BY TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX`,
    [database, tables],
  );
  const fks = await query(
    `SELECT r.TABLE_NAME, r.CONSTRAINT_NAME, r.REFERENCED_TABLE_NAME, r.DELETE_RULE, r.UPDATE_RULE, u.COLUMN_NAME, u.REFERENCED_COLUMN_NAME
       FROM information_schema.REFERENTIAL_CONSTRAINTS r
       JOIN information_schema.KEY_COLUMN_USAGE u ON u.CONSTRAINT_SCHEMA = r.CONSTRAINT_SCHEMA AND u.TABLE_NAME = r.TABLE_NAME AND u.CONSTRAINT_NAME = r.CONSTRAINT_NAME
      WHERE r.CONSTRAINT_SCHEMA = ? AND r.TABLE_NAME IN (?) ORDER BY r.TABLE_NAME, r.CONSTRAINT_NAME, u.ORDINAL_POSITION`,
    [database, tables],
  );
  for (const row of t) {
    const table = String(row.TABLE_NAME);
    const columns: Record<string, string> = {};
    for (const c of cols.filter((x) => x.TABLE_NAME === table)) {
      columns[String(c.COLUMN_NAME)] = describeColumn(
        columnType(String(c.COLUMN_TYPE), Number(c.JSON_CHECKED) === 1),
        c.IS_NULLABLE === "YES",
        columnDefault(c.COLUMN_DEFAULT === null ? null : String(c.COLUMN_DEFAULT)),
        /auto_increment/i.test(String(c.EXTRA)),
      );
    }
    const indexParts = new Map<string, { unique: boolean; columns: string[] }>();
    for (const i of idx.filter((x) => x.TABLE_NAME === table)) {
      const name = String(i.INDEX_NAME);
      const entry = indexParts.get(name) ?? { unique: Number(i.NON_UNIQUE) === 0, columns: [] };
      entry.columns.push(`${String(i.COLUMN_NAME)}${i.COLLATION === "D" ? " DESC" : ""}`);
      indexParts.set(name, entry);
    }
    const indexes = Object.fromEntries([...indexParts].map(([name, i]) => [name, `${i.unique ? "UNIQUE" : "INDEX"} (${i.columns.join(", ")})`]));
    const fkParts = new Map<string, { cols: string[]; refs: string[]; target: string; onDelete: string; onUpdate: string }>();
    for (const f of fks.filter((x) => x.TABLE_NAME === table)) {
      const name = String(f.CONSTRAINT_NAME);
      const entry = fkParts.get(name) ?? { cols: [], refs: [], target: String(f.REFERENCED_TABLE_NAME), onDelete: String(f.DELETE_RULE), onUpdate: String(f.UPDATE_RULE) };
      entry.cols.push(String(f.COLUMN_NAME));
      entry.refs.push(String(f.REFERENCED_COLUMN_NAME));
      fkParts.set(name, entry);
    }
    const foreignKeys = Object.fromEntries(
      [...fkParts].map(([name, f]) => [name, `(${f.cols.join(", ")}) REFERENCES ${f.target}(${f.refs.join(", ")}) ON DELETE ${f.onDelete} ON UPDATE ${f.onUpdate}`]),
    );
    out.set(table, { collation: String(row.TABLE_COLLATION), columns, indexes, foreignKeys });
  }
  return out;
}

/** Where the live tables differ from the models, one line each; empty when they match. */
export function mysqlShapeDifferences(expected: ReadonlyMap<string, MysqlTableShape>, live: ReadonlyMap<string, MysqlTableShape>): string[] {
  const out: string[] = [];
  for (const [table, want] of expected) {
    const have = live.get(table);
    if (have === undefined) {
      out.push(`table ${table} is missing`);
      continue;
    }
    if (have.collation !== want.collation) out.push(`table ${table} has collation ${have.collation}, the models' migration ${want.collation}`);
    for (const kind of ["columns", "indexes", "foreignKeys"] as const) {
      const names = new Set([...Object.keys(want[kind]), ...Object.keys(have[kind])]);
      for (const name of names) {
        const w = want[kind][name];
        const h = have[kind][name];
        if (w === h) continue;
        const what = `${kind === "columns" ? "column" : kind === "indexes" ? "index" : "foreign key"} ${table}.${name}`;
        out.push(w === undefined ? `${what} is not in the models (${h})` : h === undefined ? `${what} is missing (models: ${w})` : `${what} is ${h}, the models say ${w}`);
      }
    }
  }
  return out;
}
