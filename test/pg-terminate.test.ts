/**
 * A PostgreSQL backend terminated at any moment (a restart, pg_terminate_backend, a failover)
 * must never crash the process: node-postgres emits 'error' on a client nobody listens to, e.g.
 * while pg-pool is still connecting it. The soak found one such crash (a relay exited 1).
 */
import { it } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { fileURLToPath } from "node:url";
import { needPostgres } from "./support/services.js";
import { freshPostgres } from "./support/db.js";

const run = promisify(execFile);

it("queries on a store's pool while its backends are terminated 150 times: the process survives, the queries fail or succeed", async (t) => {
  if (!(await needPostgres(t))) return;
  const fx = await freshPostgres();
  t.after(() => fx.cleanup());
  const script = fileURLToPath(new URL("./fixtures/terminate-backends.ts", import.meta.url));
  const { stdout } = await run(process.execPath, ["--import", "tsx", script, fx.url, "150"], { timeout: 120_000 });
  const m = /survived (\d+) (\d+)/.exec(stdout);
  assert.ok(m, stdout);
  assert.ok(Number(m[1]) > 0, "queries went through between the terminations");
});
