#!/usr/bin/env node
/**
 * Prepares the Prisma client of one or more examples:
 *
 *   node examples/generate.mjs signup-sqlite postgres-sidecar signup-mariadb   (no names: every example)
 *
 * Each example keeps its own models in examples/<name>/prisma/schema.prisma. This script copies the
 * outbox models from prisma/<provider>/outbox.prisma next to it as prisma/mail_outbox.prisma (the
 * file `mail-outbox init --schema prisma` writes in an application), so the examples always use the
 * models the package ships, then runs `prisma generate` on the folder into examples/<name>/generated.
 * Both outputs are gitignored. A client already generated from the same schema is left alone.
 */
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("../", import.meta.url));
const examplesDir = path.join(root, "examples");
const prismaCli = path.join(root, "node_modules", "prisma", "build", "index.js");

const names = process.argv.slice(2).filter((a) => !a.startsWith("--"));
const force = process.argv.includes("--force");
const all = readdirSync(examplesDir).filter((d) => existsSync(path.join(examplesDir, d, "prisma", "schema.prisma")));
for (const name of names) {
  if (!all.includes(name)) {
    console.error(`examples/generate.mjs: no example "${name}" (expected examples/${name}/prisma/schema.prisma); examples: ${all.join(", ")}`);
    process.exit(2);
  }
}

// Prisma 7's CLI looks for its native schema engine before `generate` and downloads it when it is
// missing. `generate` never runs it, so where downloads are blocked any existing file will do.
// On a machine with network access this changes nothing that matters.
const env = { ...process.env, PRISMA_HIDE_UPDATE_MESSAGE: "1", CHECKPOINT_DISABLE: "1" };
if (!env.PRISMA_SCHEMA_ENGINE_BINARY) env.PRISMA_SCHEMA_ENGINE_BINARY = process.execPath;

for (const name of names.length > 0 ? names : all) {
  const schemaDir = path.join(examplesDir, name, "prisma");
  const appSchema = readFileSync(path.join(schemaDir, "schema.prisma"), "utf8");
  const provider = /datasource\s+\w+\s*\{[^}]*provider\s*=\s*"(postgresql|sqlite|mysql)"/.exec(appSchema)?.[1];
  if (provider === undefined) {
    console.error(`examples/${name}/prisma/schema.prisma: no datasource with provider "postgresql", "sqlite" or "mysql"`);
    process.exit(2);
  }
  const models = readFileSync(path.join(root, "prisma", provider, "outbox.prisma"), "utf8");
  const outboxFile = path.join(schemaDir, "mail_outbox.prisma");
  if (!existsSync(outboxFile) || readFileSync(outboxFile, "utf8") !== models) writeFileSync(outboxFile, models);

  const stamp = path.join(examplesDir, name, "generated", ".schema-hash");
  const hash = createHash("sha256")
    .update(appSchema)
    .update(models)
    .update(readFileSync(path.join(root, "node_modules", "prisma", "package.json")))
    .digest("hex");
  if (!force && existsSync(stamp) && readFileSync(stamp, "utf8") === hash) continue;
  const started = Date.now();
  try {
    execFileSync(process.execPath, [prismaCli, "generate", "--schema", schemaDir], { cwd: root, env, stdio: ["ignore", "pipe", "pipe"] });
  } catch (err) {
    process.stderr.write(String(err.stdout ?? "") + String(err.stderr ?? ""));
    console.error(`examples/generate.mjs: prisma generate failed for examples/${name}`);
    process.exit(1);
  }
  writeFileSync(stamp, hash);
  console.log(`Generated the Prisma client of examples/${name} (${provider}) in ${((Date.now() - started) / 1000).toFixed(1)} s.`);
}
