/**
 * The package as it is published: `npm run build`, `npm pack`, the tarball installed into a fresh
 * application with its own generated Prisma client (SQLite), then what a new user does with it:
 * `mail-outbox init`, `prisma generate`, `mail-outbox migrate`, an app that enqueues in a
 * transaction, and the relay from the package's bin into the local Postfix, stopped with SIGTERM.
 * Also what other consumers rely on: CommonJS `require()`, TypeScript's `moduleResolution: node`,
 * and README links that work on the registry page.
 *
 * The install runs with `--prefer-offline` from the npm cache this repository's own install
 * filled (the same versions of Prisma, its SQLite adapter and better-sqlite3), and with
 * `--ignore-scripts`: better-sqlite3's install step compiles SQLite (minutes, and its prebuilt
 * download is not reachable offline), so the addon the repository built for the same version and
 * the same Node is copied in instead. Nothing else from the repository is used by the app.
 */
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, type SpawnOptions } from "node:child_process";
import { cpSync, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { createRequire } from "node:module";
import { randomUUID } from "node:crypto";
import { needPostfix } from "./support/services.js";
import { findDelivered, TEST_ADDRESS } from "./support/postfix.js";

const ROOT = fileURLToPath(new URL("../", import.meta.url));
const REPOSITORY = "https://github.com/prisma-mail-outbox/prisma-mail-outbox";
const TSC = path.join(ROOT, "node_modules", "typescript", "bin", "tsc");
const TSX_LOADER = pathToFileURL(path.join(ROOT, "node_modules", "tsx", "dist", "loader.mjs")).href;
const fromRoot = createRequire(path.join(ROOT, "package.json"));

interface Run {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
  readonly ms: number;
}

/** The environment for every child: this one without npm's per-script variables (they would point npm at this repository) or the test runner's. */
function childEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (k.startsWith("npm_") || k === "NODE_TEST_CONTEXT" || k === "INIT_CWD" || k === "DATABASE_URL" || k === "MAIL_OUTBOX_TRANSPORT") continue;
    env[k] = v;
  }
  return { ...env, PRISMA_HIDE_UPDATE_MESSAGE: "1", CHECKPOINT_DISABLE: "1", ...extra };
}

function run(command: string, args: readonly string[], options: SpawnOptions & { timeoutMs?: number } = {}): Promise<Run> {
  const started = Date.now();
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ["ignore", "pipe", "pipe"], env: childEnv(), ...options });
    let stdout = "";
    let stderr = "";
    child.stdout!.setEncoding("utf8").on("data", (c: string) => (stdout += c));
    child.stderr!.setEncoding("utf8").on("data", (c: string) => (stderr += c));
    const timer = setTimeout(() => child.kill("SIGKILL"), options.timeoutMs ?? 120_000);
    child.once("error", reject);
    child.once("close", (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, ms: Date.now() - started });
    });
  });
}

function ok(r: Run, what: string): Run {
  assert.equal(r.code, 0, `${what} failed (exit ${r.code}, signal ${r.signal})\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`);
  return r;
}

function installedVersion(name: string): string {
  return (JSON.parse(readFileSync(path.join(ROOT, "node_modules", name, "package.json"), "utf8")) as { version: string }).version;
}

/** Every `better-sqlite3` directory under `dir/node_modules` (hoisted or nested). */
function betterSqliteDirs(nodeModules: string): string[] {
  const found: string[] = [];
  const walk = (dir: string, depth: number) => {
    if (depth > 4 || !existsSync(dir)) return;
    for (const name of readdirSync(dir)) {
      const full = path.join(dir, name);
      if (name === "better-sqlite3") found.push(full);
      else if (name.startsWith("@")) walk(full, depth);
      else if (existsSync(path.join(full, "node_modules"))) walk(path.join(full, "node_modules"), depth + 1);
    }
  };
  walk(nodeModules, 0);
  return found;
}

/** A running relay: stop it with a signal and get how it exited. */
function startRelay(command: string, args: readonly string[], cwd: string, env: Record<string, string>) {
  const child = spawn(command, args, { cwd, env: childEnv(env), stdio: ["ignore", "pipe", "pipe"] });
  let stdout = "";
  let stderr = "";
  child.stdout.setEncoding("utf8").on("data", (c: string) => (stdout += c));
  child.stderr.setEncoding("utf8").on("data", (c: string) => (stderr += c));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
  return {
    child,
    output: () => `--- stdout\n${stdout}\n--- stderr\n${stderr}`,
    stdout: () => stdout,
    /** Send `signal`; resolve with the exit status (or reject after `timeoutMs`, killing it). */
    async stop(signal: NodeJS.Signals, timeoutMs = 20_000) {
      child.kill(signal);
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(() => {
          child.kill("SIGKILL");
          reject(new Error(`the relay did not exit within ${timeoutMs} ms of ${signal}\n${stdout}\n${stderr}`));
        }, timeoutMs);
      });
      try {
        return await Promise.race([exited, timeout]);
      } finally {
        clearTimeout(timer);
      }
    },
    kill: () => child.kill("SIGKILL"),
  };
}

const APP_SCHEMA = `generator client {
  provider     = "prisma-client"
  output       = "../src/generated/prisma"
  moduleFormat = "esm"
}

datasource db {
  provider = "sqlite"
}

model User {
  id    Int     @id @default(autoincrement())
  email String  @unique
  name  String?
}
`;

// What Prisma Migrate would create for the User model (it cannot run offline here).
const USER_TABLE = `CREATE TABLE "User" ("id" INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, "email" TEXT NOT NULL, "name" TEXT);
CREATE UNIQUE INDEX "User_email_key" ON "User"("email");`;

/** The application: a sign-up that enqueues a welcome mail in an interactive transaction, and one in a batch transaction. */
const APP_SOURCE = `import { PrismaClient } from "./generated/prisma/client.js";
import { PrismaBetterSqlite3 } from "@prisma/adapter-better-sqlite3";
import { mailOutbox } from "prisma-mail-outbox";
import { expectEnqueued } from "prisma-mail-outbox/testing";

const prisma = new PrismaClient({ adapter: new PrismaBetterSqlite3({ url: process.env.DATABASE_URL! }) }).$extends(
  mailOutbox({ defaultFrom: "Shop <shop@localhost>" }),
);
const email = process.argv[2]!;
const welcome = await prisma.$transaction(async (tx) => {
  const user = await tx.user.create({ data: { email, name: "Ann" } });
  const mail = await tx.outboxEmail.enqueue({ to: email, subject: "Welcome", text: \`Hello \${user.name}\`, metadata: { userId: user.id } });
  await expectEnqueued(tx, { to: email, count: 1 });
  return mail;
});
const [, batched] = await prisma.$transaction([
  prisma.user.create({ data: { email: "batch-" + email } }),
  prisma.outboxEmail.enqueue({ to: email, subject: "Welcome (batch)", text: "Hello again" }),
]);
console.log(JSON.stringify({ messageIds: [welcome.messageId, batched.messageId] }));
await prisma.$disconnect();
`;

/** A CommonJS consumer, written as NestJS-style TypeScript compiled with module CommonJS and moduleResolution node. */
const CJS_CONSUMER_TS = `import { mailOutbox, createRelay, InvalidMailError, type EnqueueResult } from "prisma-mail-outbox";
import { expectEnqueued, type EnqueuedMatch } from "prisma-mail-outbox/testing";
const extension = mailOutbox({ defaultFrom: "shop@localhost" });
const match: EnqueuedMatch = { to: "ann@localhost", count: 1 };
const none: EnqueueResult | null = null;
console.log(JSON.stringify({ extension: typeof extension, createRelay: typeof createRelay, expectEnqueued: typeof expectEnqueued, error: new InvalidMailError(["x"]).name, match, none }));
`;

const CJS_TSCONFIG = {
  compilerOptions: {
    target: "ES2022",
    module: "CommonJS",
    moduleResolution: "node",
    esModuleInterop: true,
    strict: true,
    skipLibCheck: true,
    types: [],
    outDir: "out",
    rootDir: ".",
  },
  files: ["consumer.ts"],
};

describe("the published package, installed into a fresh app", { timeout: 300_000 }, () => {
  let work = "";
  let app = "";
  let tarball = "";
  let packedFiles: string[] = [];
  let bin = "";
  const figures: string[] = [];
  const env = () => ({ DATABASE_URL: "file:./app.db" });

  before(async () => {
    const started = Date.now();
    work = mkdtempSync(path.join(tmpdir(), "mail-outbox-package-"));
    app = path.join(work, "app");
    mkdirSync(app);

    let r = ok(await run("npm", ["run", "build"], { cwd: ROOT }), "npm run build");
    figures.push(`build ${r.ms} ms`);
    r = ok(await run("npm", ["pack", "--json", "--pack-destination", work], { cwd: ROOT }), "npm pack");
    figures.push(`pack ${r.ms} ms`);
    const packed = (JSON.parse(r.stdout) as { filename: string; files: { path: string }[]; size: number }[])[0]!;
    tarball = path.join(work, packed.filename);
    packedFiles = packed.files.map((f) => f.path);
    figures.push(`tarball ${packed.size} bytes, ${packedFiles.length} files`);

    writeFileSync(path.join(app, "package.json"), JSON.stringify({ name: "outbox-consumer", private: true, type: "module" }, null, 2));
    const deps = [
      tarball,
      `@prisma/client@${installedVersion("@prisma/client")}`,
      `@prisma/adapter-better-sqlite3@${installedVersion("@prisma/adapter-better-sqlite3")}`,
      `better-sqlite3@${installedVersion("better-sqlite3")}`,
      `prisma@${installedVersion("prisma")}`,
    ];
    r = ok(await run("npm", ["install", "--prefer-offline", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error", ...deps], { cwd: app, timeoutMs: 240_000 }), "npm install");
    figures.push(`install ${r.ms} ms`);
    const addon = path.join(ROOT, "node_modules", "better-sqlite3", "build", "Release", "better_sqlite3.node");
    for (const dir of betterSqliteDirs(path.join(app, "node_modules"))) {
      mkdirSync(path.join(dir, "build", "Release"), { recursive: true });
      cpSync(addon, path.join(dir, "build", "Release", "better_sqlite3.node"));
    }
    const pkg = JSON.parse(readFileSync(path.join(app, "node_modules", "prisma-mail-outbox", "package.json"), "utf8")) as { bin: Record<string, string> };
    bin = path.join(app, "node_modules", "prisma-mail-outbox", pkg.bin["mail-outbox"]!);
    figures.push(`set-up total ${Date.now() - started} ms`);
  });

  after(async () => {
    console.log(`# package test figures: ${figures.join("; ")}`);
    if (work) rmSync(work, { recursive: true, force: true });
  });

  it("ships the LICENSE, repository links, no source maps into unshipped sources, and README links that resolve on the registry page", async () => {
    const pkg = JSON.parse(readFileSync(path.join(app, "node_modules", "prisma-mail-outbox", "package.json"), "utf8")) as Record<string, unknown>;
    assert.ok(packedFiles.includes("LICENSE"), "LICENSE is in the tarball");
    assert.match(readFileSync(path.join(app, "node_modules", "prisma-mail-outbox", "LICENSE"), "utf8"), /^MIT License/);
    assert.equal(pkg.license, "MIT");
    assert.ok(pkg.repository && pkg.homepage && pkg.bugs, "repository, homepage and bugs are set");
    assert.deepEqual(packedFiles.filter((f) => f.endsWith(".map")), [], "no source maps in the tarball");
    for (const f of packedFiles.filter((f) => f.endsWith(".js"))) {
      const text = readFileSync(path.join(app, "node_modules", "prisma-mail-outbox", f), "utf8");
      assert.ok(!text.includes("sourceMappingURL"), `${f} points to a source map`);
    }
    // A relative link works on the registry page only if it names a shipped file; links to the
    // repository must name a file that exists in it.
    const readme = readFileSync(path.join(app, "node_modules", "prisma-mail-outbox", "README.md"), "utf8");
    const links = [...readme.matchAll(/\]\(([^)\s]+)\)/g)].map((m) => m[1]!);
    assert.ok(links.length > 0);
    for (const link of links) {
      if (link.startsWith("#") || link.startsWith("mailto:")) continue;
      if (link.startsWith(`${REPOSITORY}/`)) {
        const m = /^\/(?:blob|tree)\/main\/([^#?]+)/.exec(link.slice(REPOSITORY.length));
        if (m) assert.ok(existsSync(path.join(ROOT, m[1]!)), `README links to ${link}, which is not in the repository`);
        continue;
      }
      if (/^[a-z]+:/i.test(link)) continue;
      const target = link.replace(/[#?].*$/, "").replace(/^\.\//, "").replace(/\/$/, "");
      assert.ok(packedFiles.some((f) => f === target || f.startsWith(`${target}/`)), `README links to ${link}, which is not in the package: the link is dead on the registry page`);
    }
  });

  it("init, prisma generate and migrate from the installed package prepare the app's database", async () => {
    mkdirSync(path.join(app, "prisma"), { recursive: true });
    writeFileSync(path.join(app, "prisma", "schema.prisma"), APP_SCHEMA);
    let r = ok(await run(path.join(app, "node_modules", ".bin", "mail-outbox"), ["init", "--schema", "prisma/schema.prisma"], { cwd: app }), "mail-outbox init");
    assert.match(readFileSync(path.join(app, "prisma", "schema.prisma"), "utf8"), /model OutboxEmail \{/);
    // `prisma generate` never runs the schema engine; pointing it at any file stops the CLI from downloading one.
    r = ok(
      await run(process.execPath, [path.join(app, "node_modules", "prisma", "build", "index.js"), "generate", "--schema", "prisma/schema.prisma"], {
        cwd: app,
        env: childEnv({ PRISMA_SCHEMA_ENGINE_BINARY: process.execPath }),
      }),
      "prisma generate",
    );
    figures.push(`prisma generate ${r.ms} ms`);
    r = ok(await run(process.execPath, [bin, "migrate"], { cwd: app, env: childEnv(env()) }), "mail-outbox migrate");
    assert.match(r.stdout, /applied/);
    // The app's own table, as Prisma Migrate would create it.
    ok(
      await run(process.execPath, ["-e", `const D = require("better-sqlite3"); const db = new D("app.db"); db.exec(${JSON.stringify(USER_TABLE)}); db.close();`], { cwd: app }),
      "create the User table",
    );
    r = await run(process.execPath, [bin, "doctor"], { cwd: app, env: childEnv(env()) });
    assert.match(r.stdout, /ok\s+schema/, r.stdout + r.stderr);
  });

  /** Run the app once (TypeScript through tsx, as the generated client is TypeScript): returns the Message-IDs it committed. */
  async function enqueueInApp(recipient: string): Promise<string[]> {
    mkdirSync(path.join(app, "src"), { recursive: true });
    writeFileSync(path.join(app, "src", "app.ts"), APP_SOURCE);
    const r = ok(await run(process.execPath, ["--import", TSX_LOADER, "src/app.ts", recipient], { cwd: app, env: childEnv(env()) }), "the app");
    const line = r.stdout.trim().split("\n").pop()!;
    return (JSON.parse(line) as { messageIds: string[] }).messageIds;
  }

  it("the relay from the package's bin under plain node hands the app's committed mail to Postfix and exits 0 on SIGTERM", async (t) => {
    if (!needPostfix(t)) return;
    const recipient = TEST_ADDRESS.replace("@", `+pkg-${randomUUID().slice(0, 8)}@`);
    const messageIds = await enqueueInApp(recipient);
    assert.equal(messageIds.length, 2);
    const started = Date.now();
    const relay = startRelay(process.execPath, [bin, "relay", "--poll", "200ms"], app, { ...env(), MAIL_OUTBOX_TRANSPORT: "smtp://127.0.0.1:25" });
    try {
      for (const id of messageIds) assert.ok(await findDelivered(id, 30_000), `${id} reached the Maildir\n${relay.output()}`);
      figures.push(`relay (node) start to 2 delivered ${Date.now() - started} ms`);
      const exit = await relay.stop("SIGTERM");
      assert.deepEqual(exit, { code: 0, signal: null }, relay.output());
      assert.match(relay.stdout(), /stopped: .*sent 2/);
    } finally {
      relay.kill();
    }
  });

  it("the documented production command line, `exec node_modules/.bin/mail-outbox relay`, delivers and stops gracefully on SIGTERM with exit 0", async (t) => {
    if (!needPostfix(t)) return;
    const recipient = TEST_ADDRESS.replace("@", `+pkg-${randomUUID().slice(0, 8)}@`);
    const messageIds = await enqueueInApp(recipient);
    const relay = startRelay("sh", ["-c", "exec node_modules/.bin/mail-outbox relay"], app, { ...env(), MAIL_OUTBOX_TRANSPORT: "smtp://127.0.0.1:25" });
    try {
      for (const id of messageIds) assert.ok(await findDelivered(id, 30_000), `${id} reached the Maildir\n${relay.output()}`);
      // The shell replaced itself with node: the signal reaches the relay, not a wrapper that exits and leaves it running.
      const exit = await relay.stop("SIGTERM");
      assert.deepEqual(exit, { code: 0, signal: null }, relay.output());
      assert.match(relay.stdout(), /stopped: .*sent 2/);
      assert.match(relay.output(), /"signal":"SIGTERM"/);
    } finally {
      relay.kill();
    }
  });

  it("CommonJS: require() of the package and of prisma-mail-outbox/testing works (Node's require(esm)), and TypeScript resolves both under moduleResolution node (node10) and NodeNext", async () => {
    const dir = path.join(app, "cjs");
    mkdirSync(dir, { recursive: true });
    writeFileSync(path.join(dir, "package.json"), JSON.stringify({ type: "commonjs" }));
    writeFileSync(
      path.join(dir, "plain.cjs"),
      `const { mailOutbox, createRelay } = require("prisma-mail-outbox");
const { expectEnqueued } = require("prisma-mail-outbox/testing");
const { version } = require("prisma-mail-outbox/package.json");
console.log(JSON.stringify({ mailOutbox: typeof mailOutbox, createRelay: typeof createRelay, expectEnqueued: typeof expectEnqueued, version, extension: typeof mailOutbox({ defaultFrom: "shop@localhost" }) }));
`,
    );
    let r = ok(await run(process.execPath, ["plain.cjs"], { cwd: dir }), "require() from a .cjs file");
    assert.deepEqual(JSON.parse(r.stdout), { mailOutbox: "function", createRelay: "function", expectEnqueued: "function", version: "0.1.0", extension: "function" });
    assert.doesNotMatch(r.stderr, /ExperimentalWarning/);

    writeFileSync(path.join(dir, "consumer.ts"), CJS_CONSUMER_TS);
    // NestJS's classic setting (module CommonJS, moduleResolution node10), and a CommonJS file under NodeNext.
    for (const [name, compilerOptions] of [
      ["node10", {}],
      ["nodenext", { module: "NodeNext", moduleResolution: "NodeNext", esModuleInterop: undefined }],
    ] as const) {
      const config = { ...CJS_TSCONFIG, compilerOptions: { ...CJS_TSCONFIG.compilerOptions, ...compilerOptions, outDir: `out-${name}` } };
      writeFileSync(path.join(dir, `tsconfig.${name}.json`), JSON.stringify(config, null, 2));
      r = ok(await run(process.execPath, [TSC, "-p", `tsconfig.${name}.json`], { cwd: dir }), `tsc (${name}) on a CommonJS consumer`);
      figures.push(`tsc ${name} consumer ${r.ms} ms`);
      assert.match(readFileSync(path.join(dir, `out-${name}`, "consumer.js"), "utf8"), /require\("prisma-mail-outbox\/testing"\)/);
      r = ok(await run(process.execPath, [`out-${name}/consumer.js`], { cwd: dir }), `the compiled CommonJS consumer (${name})`);
      assert.equal((JSON.parse(r.stdout) as { expectEnqueued: string }).expectEnqueued, "function");
    }
  });

  it("Jest in CommonJS mode loads the package and runs its migrations with the configuration the README gives (Node < 24.9)", async () => {
    const dir = path.join(app, "jest-cjs");
    mkdirSync(dir, { recursive: true });
    writeFileSync(path.join(dir, "package.json"), JSON.stringify({ type: "commonjs" }));
    writeFileSync(
      path.join(dir, "outbox.test.js"),
      `const os = require("node:os");
const path = require("node:path");
const { mailOutbox, InvalidMailError, openDatabase, migrate } = require("prisma-mail-outbox");
const { expectEnqueued } = require("prisma-mail-outbox/testing");
test("the outbox in Jest's CommonJS mode", async () => {
  expect(typeof mailOutbox({ defaultFrom: "shop@localhost" })).toBe("function");
  expect(typeof expectEnqueued).toBe("function");
  expect(new InvalidMailError(["x"])).toBeInstanceOf(Error);
  // migrate() reads the SQL shipped next to it, located through import.meta.url.
  const db = await openDatabase("file:" + path.join(${JSON.stringify(dir)}, "jest.db"));
  try {
    expect((await migrate(db)).applied.length).toBeGreaterThan(0);
  } finally {
    await db.close();
  }
});
`,
    );
    // The README's configuration, with the tools resolved from this repository instead of the app's own devDependencies.
    const config = {
      rootDir: dir,
      testEnvironment: "node",
      cacheDirectory: path.join(work, "jest-cache"),
      transformIgnorePatterns: ["/node_modules/(?!(prisma-mail-outbox|p-retry|is-network-error)/)"],
      transform: {
        "\\.[cm]?js$": [
          fromRoot.resolve("babel-jest"),
          { plugins: [fromRoot.resolve("babel-plugin-transform-import-meta"), fromRoot.resolve("@babel/plugin-transform-modules-commonjs")] },
        ],
      },
    };
    const r = ok(
      await run(process.execPath, [path.join(ROOT, "node_modules", "jest", "bin", "jest.js"), "--ci", "--watchman=false", "--config", JSON.stringify(config)], { cwd: dir }),
      "jest in CommonJS mode",
    );
    figures.push(`jest ${r.ms} ms`);
    assert.match(r.stderr, /Tests:\s+1 passed, 1 total/);
  });
});
