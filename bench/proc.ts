/**
 * Child processes of the benchmark. bench/child.ts is bundled once per run with esbuild into
 * .bench-build/child.mjs at the top of the repo (packages stay external; one level below the top, so
 * the library's `new URL("../migrations/", import.meta.url)` finds the shipped SQL as it does from
 * dist/), so each child is plain `node` without a
 * TypeScript loader: it starts fast, its RSS is the contender's own, and `--cpu-prof` profiles
 * show the contender's code.
 */
import { fork, type ChildProcess } from "node:child_process";
import { mkdirSync } from "node:fs";
import { fileURLToPath } from "node:url";
import path from "node:path";
import { build } from "esbuild";
import type { ChildConfig, ChildMessage, ProducerResult, WorkerResult } from "./child.js";

const here = path.dirname(fileURLToPath(import.meta.url));
const srcDir = path.join(here, "..", "src");
/**
 * BENCH_SRC_DIR=/path/to/patched/src: bundle the children against a patched copy of src/ (same
 * file names) instead of src/, to measure a proposed change A/B without touching src/.
 */
const altSrc = process.env.BENCH_SRC_DIR ? path.resolve(process.env.BENCH_SRC_DIR) : null;
const outfile = path.join(here, "..", ".bench-build", altSrc ? "child-alt.mjs" : "child.mjs");
let built: Promise<void> | null = null;

export function buildChild(): Promise<void> {
  built ??= (async () => {
    mkdirSync(path.dirname(outfile), { recursive: true });
    await build({
      entryPoints: [path.join(here, "child.ts")],
      outfile,
      bundle: true,
      platform: "node",
      format: "esm",
      target: "node20",
      packages: "external",
      sourcemap: "inline",
      logLevel: "error",
      plugins: altSrc
        ? [
            {
              name: "alt-src",
              setup(b) {
                b.onResolve({ filter: /^\.\.?\// }, (args) => {
                  const target = path.resolve(args.resolveDir, args.path.replace(/\.js$/, ".ts"));
                  if (!args.importer.startsWith(altSrc) && !target.startsWith(srcDir + path.sep)) return undefined;
                  const inAlt = target.startsWith(srcDir + path.sep) ? path.join(altSrc, path.relative(srcDir, target)) : target;
                  return { path: inAlt };
                });
              },
            },
          ]
        : [],
    });
  })();
  return built;
}

export interface Child<R> {
  readonly pid: number;
  /** Resolves when the child has connected and is about to start (worker) or waits for `go()` (producer). */
  readonly ready: Promise<void>;
  readonly result: Promise<R>;
  /** Producer: start the clock. Worker with expected 0: stop. */
  go(): void;
  kill(): void;
}

export interface ForkOptions {
  /** Directory for a `--cpu-prof` profile of this child. */
  readonly cpuProfDir?: string;
  /** Fail the result after this long. @default 10 minutes */
  readonly timeoutMs?: number;
  /** Worker with `reportProgress`: called with each batch of recorded mails. */
  readonly onProgress?: (recorded: number) => void;
}

export async function startChild<R extends WorkerResult | ProducerResult>(config: ChildConfig, options: ForkOptions = {}): Promise<Child<R>> {
  await buildChild();
  const execArgv = options.cpuProfDir ? ["--cpu-prof", "--cpu-prof-dir", options.cpuProfDir] : [];
  // graphile-worker logs every success unless NO_LOG_SUCCESS is set; give it its fastest setting.
  const child: ChildProcess = fork(outfile, [JSON.stringify(config)], { execArgv, env: { ...process.env, NO_LOG_SUCCESS: "1" }, stdio: ["ignore", "inherit", "inherit", "ipc"] });
  let readyResolve!: () => void;
  let readyReject!: (e: Error) => void;
  const ready = new Promise<void>((res, rej) => ((readyResolve = res), (readyReject = rej)));
  ready.catch(() => {});
  const result = new Promise<R>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`${config.role} ${config.contender} took longer than ${(options.timeoutMs ?? 600_000) / 1000} s`));
    }, options.timeoutMs ?? 600_000);
    child.on("message", (m: ChildMessage) => {
      if (m.type === "ready") readyResolve();
      else if (m.type === "progress") options.onProgress?.(m.recorded);
      else if (m.type === "error") {
        clearTimeout(timer);
        const e = new Error(`${config.role} ${config.contender} failed: ${m.message}`);
        readyReject(e);
        reject(e);
      } else {
        clearTimeout(timer);
        resolve(m as R);
      }
    });
    child.once("exit", (code, signal) => {
      clearTimeout(timer);
      const e = new Error(`${config.role} ${config.contender} exited (${code ?? signal}) before reporting`);
      readyReject(e);
      reject(e);
    });
  });
  result.catch(() => {});
  // A child that has reported may still hold a socket open for a moment: do not wait for it.
  void result.then(() => setTimeout(() => child.kill("SIGKILL"), options.cpuProfDir ? 5000 : 1000).unref(), () => {});
  return {
    pid: child.pid ?? -1,
    ready,
    result,
    go: () => child.send({ go: true }),
    kill: () => child.kill("SIGKILL"),
  };
}
