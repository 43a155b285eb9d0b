/**
 * `mail-outbox init`: add the two outbox models to an application's Prisma schema.
 *
 * The models come from this package's `prisma/<provider>/outbox.prisma`, the same files the
 * migrations are generated from, so what the application's Prisma client knows matches the tables
 * the relay writes.
 */
import { existsSync } from "node:fs";
import { appendFile, readdir, readFile, stat, writeFile } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { OptionsError } from "./errors.js";

export type SchemaProvider = "postgresql" | "sqlite";

export interface InitOptions {
  /**
   * The application's Prisma schema: a `schema.prisma` file (the models are appended to it) or a
   * multi-file schema folder (they are written to `mail_outbox.prisma` in it).
   */
  readonly schemaPath: string;
  /** Which database the schema is for. @default read from the schema's `datasource` block */
  readonly provider?: SchemaProvider;
  /** Resolve a relative `schemaPath` from here. @default process.cwd() */
  readonly cwd?: string;
}

export interface InitResult {
  /** False when the schema already had the models: nothing was written. */
  readonly changed: boolean;
  readonly provider: SchemaProvider;
  /** The file that was written, or the one that already holds `model OutboxEmail`. */
  readonly schemaFile: string;
  /** One sentence saying what happened. */
  readonly message: string;
  /** What to run next, as text for a terminal. */
  readonly nextSteps: string;
}

const PRISMA_DIR = new URL("../prisma/", import.meta.url);
const MODEL = /^[ \t]*model[ \t]+(OutboxEmail|OutboxEmailAttempt)[ \t]*\{/m;

/**
 * Add `OutboxEmail` and `OutboxEmailAttempt` to the schema at `schemaPath`. Idempotent: when the
 * schema already has `model OutboxEmail` (or `OutboxEmailAttempt`), nothing is written and the result says so.
 *
 * @example
 * const r = await initSchema({ schemaPath: "prisma/schema.prisma" });
 * console.log(r.message + "\n" + r.nextSteps);
 * @throws OptionsError when the schema is missing, its provider is neither PostgreSQL nor SQLite, or `provider` contradicts it.
 */
export async function initSchema(options: InitOptions): Promise<InitResult> {
  if (typeof options?.schemaPath !== "string" || options.schemaPath.trim() === "") {
    throw new OptionsError("Expected `schemaPath` to name your Prisma schema, for example prisma/schema.prisma.");
  }
  if (options.provider !== undefined && options.provider !== "postgresql" && options.provider !== "sqlite") {
    throw new OptionsError(`Expected \`provider\` to be "postgresql" or "sqlite", got ${JSON.stringify(options.provider)}.`);
  }
  const target = path.resolve(options.cwd ?? process.cwd(), options.schemaPath);
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
    throw new OptionsError(`Cannot tell the database from ${target}: it has no datasource block with provider "postgresql" or "sqlite". Pass --provider postgresql or --provider sqlite.`);
  }

  const existing = contents.find((c) => MODEL.test(stripComments(c.text)));
  if (existing !== undefined) {
    return {
      changed: false,
      provider,
      schemaFile: existing.file,
      message: `${existing.file} already has the outbox models; nothing was changed.`,
      nextSteps: nextSteps(provider),
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
    return { changed: true, provider, schemaFile: file, message: `Wrote the outbox models to ${file}.`, nextSteps: nextSteps(provider) };
  }
  const text = contents[0]?.text ?? "";
  const eol = text.includes("\r\n") ? "\r\n" : "\n";
  if (eol === "\r\n") models = models.replace(/\r?\n/g, "\r\n");
  const separator = text === "" ? "" : text.endsWith(eol) ? eol : eol + eol;
  await appendFile(target, separator + models);
  return { changed: true, provider, schemaFile: target, message: `Added the outbox models (OutboxEmail, OutboxEmailAttempt) to ${target}.`, nextSteps: nextSteps(provider) };
}

/** Where this package keeps the PostgreSQL NOTIFY trigger for Prisma Migrate users. */
export function notifyTriggerPath(): string {
  return fileURLToPath(new URL("postgresql/notify-trigger.sql", PRISMA_DIR));
}

function nextSteps(provider: SchemaProvider): string {
  const lines = [
    "Next steps:",
    "  1. Create the tables, either",
    "       npx prisma migrate dev --name mail_outbox",
    "     or, to let mail-outbox manage them: list them in prisma.config.ts as",
    '       tables: { external: ["mail_outbox", "mail_outbox_attempt"] }',
    "     and run",
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
  const n = provider === "postgresql" ? 3 : 2;
  lines.push(
    `  ${n}. npx prisma generate, then enqueue mail in your transactions with the mailOutbox() extension.`,
    `  ${n + 1}. Run the relay: DATABASE_URL=... MAIL_OUTBOX_TRANSPORT=smtp://127.0.0.1:25 npx mail-outbox relay`,
    `  ${n + 2}. Check the setup: npx mail-outbox doctor`,
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
  throw new OptionsError(`The schema's datasource provider is ${JSON.stringify(provider)}; prisma-mail-outbox supports "postgresql" and "sqlite".`);
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
