/**
 * `mail-outbox init`: add the outbox models to an application's Prisma schema, and print the
 * `prisma.config.ts` that keeps their tables out of Prisma Migrate when `mail-outbox migrate`
 * creates them instead.
 *
 * The models come from this package's `prisma/<provider>/outbox.prisma`, the same files the
 * migrations are generated from, so what the application's Prisma client knows matches the tables
 * the relay writes.
 */
import { existsSync } from "node:fs";
import { appendFile, readdir, readFile, stat, writeFile } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { databaseSchema } from "./db.js";
import { OptionsError } from "./errors.js";
import { MIGRATIONS_TABLE, OUTBOX_TABLE_NAMES } from "./migrations.js";

/** The Prisma provider of the application's schema; `mysql` covers MySQL 8 and MariaDB 10.6+ (Prisma has one provider for both). */
export type SchemaProvider = "postgresql" | "sqlite" | "mysql";

export interface InitOptions {
  /**
   * The application's Prisma schema: a `schema.prisma` file (the models are appended to it) or a
   * multi-file schema folder (they are written to `mail_outbox.prisma` in it).
   */
  readonly schemaPath: string;
  /** Which database the schema is for. @default read from the schema's `datasource` block */
  readonly provider?: SchemaProvider;
  /** Resolve a relative `schemaPath` from here; also where `prisma.config.ts` lives. @default process.cwd() */
  readonly cwd?: string;
  /**
   * PostgreSQL: the schema that holds the outbox tables (`?schema=` in DATABASE_URL), used to
   * qualify the names in `prismaConfig`. @default "public"
   */
  readonly postgresSchema?: string;
  /**
   * The application's DATABASE_URL: when it is a PostgreSQL URL, its `?schema=` is the default of
   * `postgresSchema` (what `mail-outbox init` passes). Other URLs are ignored.
   * @throws DatabaseConfigError for a PostgreSQL URL that is not valid.
   */
  readonly databaseUrl?: string;
}

export interface InitResult {
  /** False when the schema already had the models: nothing was written. */
  readonly changed: boolean;
  readonly provider: SchemaProvider;
  /** The file that was written, or the one that already holds `model OutboxEmail`. */
  readonly schemaFile: string;
  /** One sentence saying what happened. */
  readonly message: string;
  /** What to run next, as text for a terminal (it ends with `prismaConfig`). */
  readonly nextSteps: string;
  /**
   * A complete `prisma.config.ts` for the route where `mail-outbox migrate` creates the tables: it
   * lists them under `tables.external` (so Prisma Migrate neither creates them nor reports them as
   * drift) with `experimental.externalTables`, which Prisma 7.10 requires next to it.
   */
  readonly prismaConfig: string;
}

/**
 * The tables `mail-outbox migrate` creates, for `tables.external` in `prisma.config.ts`:
 * the outbox, its attempt log, the delivery events, the suppression list, the log follower's
 * cursor, the relays' pauses, rate limits and leases, and the record of the migrations run.
 */
export const OUTBOX_TABLES = [...OUTBOX_TABLE_NAMES, MIGRATIONS_TABLE] as const;

/** The outbox models, in the order of `prisma/<provider>/outbox.prisma`. */
const MODEL_NAMES = [
  "OutboxEmail",
  "OutboxEmailAttempt",
  "OutboxDelivery",
  "OutboxSuppression",
  "OutboxLogCursor",
  "OutboxPause",
  "OutboxRate",
  "OutboxLock",
] as const;

/**
 * A complete `prisma.config.ts` that lists the outbox tables as external. Prisma's schema engine
 * wants the names schema-qualified on PostgreSQL (`public.mail_outbox`) and plain on SQLite and
 * MySQL (which has no schemas inside a database), and
 * every Prisma command refuses `tables.external` without `experimental: { externalTables: true }`.
 *
 * @example
 * await writeFile("prisma.config.ts", prismaConfigFor("postgresql", { schemaPath: "prisma/schema.prisma" }));
 */
export function prismaConfigFor(provider: SchemaProvider, options: { readonly schemaPath?: string; readonly postgresSchema?: string } = {}): string {
  const pgSchema = options.postgresSchema ?? "public";
  if (!/^[A-Za-z_][A-Za-z0-9_$]{0,62}$/.test(pgSchema)) {
    throw new OptionsError(`Expected \`postgresSchema\` to be a plain identifier (letters, digits, _ and $), got ${JSON.stringify(pgSchema)}.`);
  }
  const names = OUTBOX_TABLES.map((t) => JSON.stringify(provider === "postgresql" ? `${pgSchema}.${t}` : t));
  const naming =
    provider === "postgresql"
      ? `    // PostgreSQL: schema-qualified names (the schema is DATABASE_URL's ?schema=, default public).`
      : provider === "mysql"
        ? `    // MySQL/MariaDB: plain table names (in the database of DATABASE_URL).`
        : `    // SQLite: plain table names.`;
  return [
    `import { defineConfig, env } from "prisma/config";`,
    ``,
    `export default defineConfig({`,
    `  schema: ${JSON.stringify(options.schemaPath ?? "prisma/schema.prisma")},`,
    `  datasource: { url: env("DATABASE_URL") },`,
    `  // Prisma 7.10 refuses tables.external (in generate, migrate and db) without this flag.`,
    `  experimental: { externalTables: true },`,
    `  tables: {`,
    `    // Created and upgraded by \`mail-outbox migrate\`: Prisma Migrate leaves them alone, the client still has the models.`,
    naming,
    `    external: [${names.join(", ")}],`,
    `  },`,
    `});`,
    ``,
  ].join("\n");
}

const PRISMA_DIR = new URL("../prisma/", import.meta.url);
const MODEL = /^[ \t]*model[ \t]+(OutboxEmail|OutboxEmailAttempt)[ \t]*\{/m;

/** The models of the schema text that are outbox models. */
function outboxModelsIn(text: string): Set<string> {
  const found = new Set<string>();
  for (const m of stripComments(text).matchAll(/^[ \t]*model[ \t]+(\w+)[ \t]*\{/gm)) {
    if ((MODEL_NAMES as readonly string[]).includes(m[1]!)) found.add(m[1]!);
  }
  return found;
}

/** One model block of the package's models file, with the `///` comment lines above it. */
function modelBlock(models: string, name: string): string {
  const m = new RegExp(`(?:^///[^\\n]*\\n)*^model ${name} \\{[\\s\\S]*?^\\}\\n`, "m").exec(models);
  if (m === null) throw new Error(`prisma-mail-outbox: model ${name} is missing from its own models file; reinstall the package.`);
  return m[0];
}

/** The fields of OutboxEmail that later versions added, as the models file writes them. */
const LATER_FIELDS: readonly { readonly name: string; readonly line: string }[] = [
  { name: "traceContext", line: `  traceContext      String?              @map("trace_context")` },
];

/** OutboxEmail's block in the schema text (up to its closing brace or first `@@` line). */
function outboxEmailBlock(text: string): RegExpExecArray | null {
  return /^([ \t]*model[ \t]+OutboxEmail[ \t]*\{[^}]*?)(^[ \t]*\}|^[ \t]*@@)/m.exec(text);
}

/** The fields of {@link LATER_FIELDS} that the schema's OutboxEmail lacks (none when it has no OutboxEmail). */
function missingFields(text: string): string[] {
  const block = outboxEmailBlock(stripComments(text));
  if (block === null) return [];
  return LATER_FIELDS.filter((f) => !new RegExp(`^[ \\t]*${f.name}\\s`, "m").test(block[1]!)).map((f) => f.name);
}

/**
 * A schema made by an earlier `init` (OutboxEmail and OutboxEmailAttempt, without the delivery-fate
 * or operations models, or OutboxEmail without `traceContext`): add the missing models after the
 * others, OutboxEmail's back-relation field `deliveries` that Prisma requires for OutboxDelivery,
 * and OutboxEmail's later fields. Returns the new text, or null when OutboxEmail's block cannot be
 * found to add the fields to.
 */
function upgradedSchema(text: string, models: string, missing: readonly string[], fields: readonly string[], eol: string): string | null {
  let out = text;
  const lines = LATER_FIELDS.filter((f) => fields.includes(f.name)).map((f) => f.line);
  if (missing.includes("OutboxDelivery") && !/^\s*deliveries\s+OutboxDelivery\[\]/m.test(out)) lines.push(`  deliveries        OutboxDelivery[]`);
  if (lines.length > 0) {
    const block = outboxEmailBlock(out);
    if (block === null) return null;
    const at = block.index + block[1]!.length;
    out = `${out.slice(0, at)}${lines.map((l) => l + eol).join("")}${out.slice(at)}`;
  }
  let added = missing.map((name) => modelBlock(models, name)).join("\n");
  if (eol === "\r\n") added = added.replace(/\r?\n/g, "\r\n");
  const separator = out === "" ? "" : out.endsWith(eol) ? eol : eol + eol;
  return out + separator + added;
}

/**
 * Add the outbox models (`OutboxEmail`, `OutboxEmailAttempt`, the delivery-fate models
 * `OutboxDelivery`, `OutboxSuppression`, `OutboxLogCursor`, and the operations models
 * `OutboxPause`, `OutboxRate`, `OutboxLock`) to the schema at `schemaPath`.
 * Idempotent: when the schema already has them all, nothing is written and the result says so. A
 * schema from an earlier version gets the missing models added next to the ones it has, with the
 * fields `OutboxEmail` lacks (`deliveries OutboxDelivery[]`, `traceContext`).
 *
 * @example
 * const r = await initSchema({ schemaPath: "prisma/schema.prisma" });
 * console.log(r.message + "\n" + r.nextSteps);
 * @throws OptionsError when the schema is missing, its provider is not PostgreSQL, SQLite or MySQL, or `provider` contradicts it.
 */
export async function initSchema(options: InitOptions): Promise<InitResult> {
  // First, as `mail-outbox init` always did: a malformed DATABASE_URL is reported before the schema is looked at.
  const postgresSchema = options?.postgresSchema ?? databaseSchema(options?.databaseUrl) ?? undefined;
  if (typeof options?.schemaPath !== "string" || options.schemaPath.trim() === "") {
    throw new OptionsError("Expected `schemaPath` to name your Prisma schema, for example prisma/schema.prisma.");
  }
  if (options.provider !== undefined && options.provider !== "postgresql" && options.provider !== "sqlite" && options.provider !== "mysql") {
    throw new OptionsError(`Expected \`provider\` to be "postgresql", "sqlite" or "mysql", got ${JSON.stringify(options.provider)}.`);
  }
  const cwd = options.cwd ?? process.cwd();
  const target = path.resolve(cwd, options.schemaPath);
  if (!existsSync(target)) {
    throw new OptionsError(`No Prisma schema at ${target}; pass the path of your schema.prisma (or of your schema folder).`);
  }
  const isDir = (await stat(target)).isDirectory();
  const files = isDir ? await prismaFiles(target) : [target];
  if (files.length === 0) throw new OptionsError(`The folder ${target} holds no .prisma file; pass the path of your schema.`);
  const contents = await Promise.all(files.map(async (f) => ({ file: f, text: await readFile(f, "utf8") })));

  const detected = detectProvider(contents.map((c) => c.text).join("\n"));
  if (detected !== null && options.provider !== undefined && detected !== options.provider) {
    throw new OptionsError(`The schema's datasource says ${detected}, but provider ${options.provider} was asked for; drop --provider or fix the datasource.`);
  }
  const provider = options.provider ?? detected;
  if (provider === null) {
    throw new OptionsError(`Cannot tell the database from ${target}: it has no datasource block with provider "postgresql", "sqlite" or "mysql". Pass --provider postgresql, --provider sqlite or --provider mysql.`);
  }

  const relative = path.relative(cwd, target).split(path.sep).join("/");
  const prismaConfig = prismaConfigFor(provider, {
    schemaPath: relative === "" ? "." : relative,
    ...(postgresSchema !== undefined ? { postgresSchema } : {}),
  });
  const steps = nextSteps(provider, prismaConfig);
  const existing = contents.find((c) => MODEL.test(stripComments(c.text)));
  const present = new Set(contents.flatMap((c) => [...outboxModelsIn(c.text)]));
  const missing = MODEL_NAMES.filter((n) => !present.has(n));
  const home = contents.find((c) => outboxModelsIn(c.text).has("OutboxEmail"));
  const fields = home === undefined ? [] : missingFields(home.text);
  if (existing !== undefined && (missing.length > 0 || fields.length > 0) && home !== undefined && !missing.includes("OutboxEmailAttempt")) {
    // An earlier version's models: add what this version needs next to them.
    const models = await readFile(new URL(`${provider}/outbox.prisma`, PRISMA_DIR), "utf8");
    const eol = home.text.includes("\r\n") ? "\r\n" : "\n";
    const upgraded = upgradedSchema(home.text, models, missing, fields, eol);
    if (upgraded !== null) {
      await writeFile(home.file, upgraded);
      const addedFields = [...fields, ...(missing.includes("OutboxDelivery") ? ["deliveries"] : [])].map((f) => `OutboxEmail.${f}`);
      const what = [
        ...(missing.length > 0 ? [`the models ${missing.join(", ")}`] : []),
        ...(addedFields.length > 0 ? [`the field${addedFields.length > 1 ? "s" : ""} ${addedFields.join(", ")}`] : []),
      ].join(" and ");
      return {
        changed: true,
        provider,
        schemaFile: home.file,
        message: `Added ${what} to ${home.file}, next to the outbox models it had.`,
        nextSteps: steps,
        prismaConfig,
      };
    }
  }
  if (existing !== undefined) {
    return {
      changed: false,
      provider,
      schemaFile: existing.file,
      message: `${existing.file} already has the outbox models; nothing was changed.`,
      nextSteps: steps,
      prismaConfig,
    };
  }

  let models = await readFile(new URL(`${provider}/outbox.prisma`, PRISMA_DIR), "utf8");
  if (isDir) {
    const file = path.join(target, "mail_outbox.prisma");
    try {
      await writeFile(file, models, { flag: "wx" });
    } catch (cause) {
      if ((cause as NodeJS.ErrnoException).code === "EEXIST") {
        throw new OptionsError(`${file} exists but holds no outbox models; move it away or add the models from ${fileURLToPath(new URL(`${provider}/outbox.prisma`, PRISMA_DIR))} yourself.`, { cause });
      }
      throw cause;
    }
    return { changed: true, provider, schemaFile: file, message: `Wrote the outbox models to ${file}.`, nextSteps: steps, prismaConfig };
  }
  const text = contents[0]?.text ?? "";
  const eol = text.includes("\r\n") ? "\r\n" : "\n";
  if (eol === "\r\n") models = models.replace(/\r?\n/g, "\r\n");
  const separator = text === "" ? "" : text.endsWith(eol) ? eol : eol + eol;
  await appendFile(target, separator + models);
  return { changed: true, provider, schemaFile: target, message: `Added the outbox models (${MODEL_NAMES.join(", ")}) to ${target}.`, nextSteps: steps, prismaConfig };
}

/** Where this package keeps the PostgreSQL NOTIFY trigger for Prisma Migrate users. */
export function notifyTriggerPath(): string {
  return fileURLToPath(new URL("postgresql/notify-trigger.sql", PRISMA_DIR));
}

function nextSteps(provider: SchemaProvider, prismaConfig: string): string {
  const lines = [
    "Next steps:",
    "  1. Create the tables, either with Prisma Migrate:",
    "       npx prisma migrate dev --name mail_outbox",
    "     or with mail-outbox, keeping them out of Prisma Migrate: merge the prisma.config.ts below",
    "     into yours (tables.external needs experimental.externalTables), then run",
    "       npx mail-outbox migrate",
  ];
  if (provider === "postgresql") {
    lines.push(
      "  2. PostgreSQL: wake the relay at commit time with the NOTIFY trigger (mail-outbox migrate installs it;",
      "     with Prisma Migrate, create a migration with --create-only and paste in",
      `       ${notifyTriggerPath()}`,
      "     ). Without it the relay still finds mail by polling.",
    );
  }
  if (provider === "mysql") {
    lines.push(
      "  2. MySQL/MariaDB: use the driver adapter @prisma/adapter-mariadb (for MySQL too). There is no LISTEN/NOTIFY:",
      "     the relay polls, faster while there is mail. mail-outbox migrate takes a lock (GET_LOCK) so two init",
      "     containers queue; MySQL commits each CREATE TABLE, so an interrupted migrate is finished by running it again.",
    );
  }
  const n = provider === "sqlite" ? 2 : 3;
  lines.push(
    `  ${n}. npx prisma generate, then enqueue mail in your transactions with the mailOutbox() extension.`,
    `  ${n + 1}. Run the relay: DATABASE_URL=... MAIL_OUTBOX_TRANSPORT=smtp://127.0.0.1:25 exec node_modules/.bin/mail-outbox relay (not npx: it does not pass SIGTERM on)`,
    `  ${n + 2}. Check the setup: npx mail-outbox doctor`,
    "",
    "prisma.config.ts for the mail-outbox migrate route:",
    "",
    prismaConfig.trimEnd(),
  );
  return lines.join("\n");
}

function stripComments(text: string): string {
  return text.replace(/\/\/[^\n]*/g, "");
}

/** The provider of the first `datasource` block, normalised; null if there is none or it is another database. */
function detectProvider(schema: string): SchemaProvider | null {
  const block = /datasource\s+\w+\s*\{([^}]*)\}/.exec(stripComments(schema));
  if (block === null) return null;
  const provider = /provider\s*=\s*"([^"]*)"/.exec(block[1] ?? "")?.[1];
  if (provider === undefined) return null;
  if (provider === "postgresql" || provider === "postgres") return "postgresql";
  if (provider === "sqlite") return "sqlite";
  if (provider === "mysql") return "mysql";
  throw new OptionsError(`The schema's datasource provider is ${JSON.stringify(provider)}; prisma-mail-outbox supports "postgresql", "sqlite" and "mysql" (MySQL and MariaDB).`);
}

async function prismaFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory() && entry.name !== "migrations" && entry.name !== "node_modules") out.push(...(await prismaFiles(full)));
    else if (entry.isFile() && entry.name.endsWith(".prisma")) out.push(full);
  }
  return out.sort();
}
