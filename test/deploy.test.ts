/**
 * The deployment files under deploy/ (issue 11, item 8). Kubernetes and systemd do not run on the
 * test machine, so this checks what can be checked here: the manifest and the unit parse; every
 * flag they give `mail-outbox relay` is one its `--help` lists; the probes name the paths the relay
 * serves, on the port its `--metrics-port` flag opens, reachable from outside the container
 * (`--metrics-host 0.0.0.0`); the grace periods are longer than the relay's stop deadline; and the
 * relay started with the manifest's own arguments answers 200 on those probe paths. Where
 * `systemd-analyze` is installed the unit is also verified by systemd itself.
 */
import { describe, it } from "node:test";
import type { TestContext } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parseAllDocuments } from "yaml";
import { main } from "../src/cli/main.js";
import { parseDuration } from "../src/duration.js";
import { freshSqlite } from "./support/db.js";
import { startTestSmtp } from "../testkit/smtp.js";

const ROOT = fileURLToPath(new URL("../", import.meta.url));
const TSX = import.meta.resolve("tsx");
const MANIFEST = path.join(ROOT, "deploy/kubernetes/relay-sidecar.yaml");
const UNIT = path.join(ROOT, "deploy/systemd/mail-outbox-relay.service");
const ENV_EXAMPLE = path.join(ROOT, "deploy/systemd/relay.env.example");

interface Probe {
  readonly httpGet?: { readonly path?: string; readonly port?: string | number };
}
interface Container {
  readonly name: string;
  readonly command?: string[];
  readonly args?: string[];
  readonly ports?: { name?: string; containerPort: number }[];
  readonly env?: { name: string; value?: string }[];
  readonly livenessProbe?: Probe;
  readonly readinessProbe?: Probe;
  readonly resources?: { requests?: Record<string, string>; limits?: Record<string, string> };
  readonly securityContext?: { allowPrivilegeEscalation?: boolean; readOnlyRootFilesystem?: boolean; runAsNonRoot?: boolean; capabilities?: { drop?: string[] } };
}
interface PodSpec {
  readonly terminationGracePeriodSeconds?: number;
  readonly securityContext?: { runAsNonRoot?: boolean; runAsUser?: number };
  readonly initContainers?: Container[];
  readonly containers: Container[];
}

/** The long options `mail-outbox relay --help` lists (its own and the global ones). */
async function relayFlags(): Promise<Set<string>> {
  let out = "";
  const code = await main(["relay", "--help"], { stdout: { write: (c: string | Uint8Array) => ((out += c.toString()), true) }, stderr: { write: () => true }, env: {} });
  assert.equal(code, 0);
  return new Set([...out.matchAll(/^\s+(?:-\w, )?(--[a-z][a-z-]*)/gm)].map((m) => m[1]!));
}

/** The value of `--flag <value>` in an argument list. */
function flagValue(args: readonly string[], flag: string): string | undefined {
  const i = args.indexOf(flag);
  return i >= 0 ? args[i + 1] : undefined;
}

function podSpec(): PodSpec {
  const docs = parseAllDocuments(readFileSync(MANIFEST, "utf8"));
  for (const d of docs) assert.deepEqual(d.errors, [], "the manifest is valid YAML");
  const deployment = docs.map((d) => d.toJS() as { kind?: string; spec?: { template?: { spec?: PodSpec } } }).find((d) => d.kind === "Deployment");
  assert.ok(deployment?.spec?.template?.spec, "a Deployment with a pod template");
  return deployment.spec.template.spec;
}

function relayContainer(spec: PodSpec): Container {
  const relay = spec.containers.find((c) => c.args?.[0] === "relay");
  assert.ok(relay, "a container running `mail-outbox relay`");
  return relay;
}

/** Run `mail-outbox relay <args>` as a program until it logs "serving metrics"; returns the base URL it serves and a stop function. */
async function runRelay(t: TestContext, args: readonly string[], env: Record<string, string>): Promise<{ base: string; stop: () => Promise<number | null> }> {
  const { DATABASE_URL: _d, MAIL_OUTBOX_TRANSPORT: _t, MAIL_OUTBOX_LOG_FORMAT: _f, ...baseEnv } = process.env;
  const child = spawn(process.execPath, ["--import", TSX, path.join(ROOT, "src/cli.ts"), ...args], { cwd: ROOT, env: { ...baseEnv, ...env }, stdio: ["ignore", "ignore", "pipe"] });
  t.after(() => void child.kill("SIGKILL"));
  const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
  let stderr = "";
  const port = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the relay did not serve metrics within 30 s:\n${stderr}`)), 30_000);
    child.stderr.on("data", (d: Buffer) => {
      stderr += d.toString();
      const m = /"metrics":"http:\/\/[^"]*:(\d+)\/metrics"/.exec(stderr);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]!);
      }
    });
    void exited.then((code) => reject(new Error(`the relay exited (${code}) before serving metrics:\n${stderr}`)));
  });
  return {
    base: `http://127.0.0.1:${port}`,
    stop: async () => {
      child.kill("SIGTERM");
      return exited;
    },
  };
}

/** GET `url` until it answers 200 (the relay's first loop turn and MTA check), up to 15 s. */
async function answers200(url: string): Promise<{ status: number; body: string }> {
  const end = Date.now() + 15_000;
  let last = { status: 0, body: "" };
  while (Date.now() < end) {
    const res = await fetch(url);
    last = { status: res.status, body: await res.text() };
    if (last.status === 200) return last;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return last;
}

describe("the Kubernetes sidecar manifest", () => {
  it("wires liveness to /healthz and readiness to /readyz on the port --metrics-port opens, on 0.0.0.0", async () => {
    const spec = podSpec();
    const relay = relayContainer(spec);
    const args = relay.args ?? [];
    const port = flagValue(args, "--metrics-port");
    assert.equal(flagValue(args, "--metrics-host"), "0.0.0.0", "the kubelet probes the Pod's IP, not the loopback");
    assert.ok(port !== undefined && /^\d+$/.test(port), "--metrics-port with a fixed port");
    for (const [which, probe, route] of [["livenessProbe", relay.livenessProbe, "/healthz"], ["readinessProbe", relay.readinessProbe, "/readyz"]] as const) {
      assert.equal(probe?.httpGet?.path, route, which);
      const named = probe?.httpGet?.port;
      const containerPort = typeof named === "number" ? named : relay.ports?.find((p) => p.name === named)?.containerPort;
      assert.equal(containerPort, Number(port), `${which} probes the metrics port (${String(named)})`);
    }
    const flags = await relayFlags();
    for (const a of args.filter((a) => a.startsWith("--"))) assert.ok(flags.has(a), `mail-outbox relay --help lists ${a}`);
    assert.ok(relay.command?.at(-1)?.endsWith("/mail-outbox"), "the program itself is the container's process, not npm exec or npx");
  });

  it("gives the relay longer than its stop deadline, migrates in an init container, and runs non-root on a read-only root", async () => {
    const spec = podSpec();
    const relay = relayContainer(spec);
    const stopMs = parseDuration(flagValue(relay.args ?? [], "--stop-timeout") ?? "10s", "--stop-timeout");
    assert.ok((spec.terminationGracePeriodSeconds ?? 30) * 1000 > stopMs + 5000, `grace ${spec.terminationGracePeriodSeconds}s > stop deadline ${stopMs} ms + 5 s to record the last outcomes`);
    const migrate = spec.initContainers?.find((c) => c.args?.[0] === "migrate");
    assert.ok(migrate, "an init container running `mail-outbox migrate`");
    assert.ok(migrate.command?.at(-1)?.endsWith("/mail-outbox"));
    assert.equal(spec.securityContext?.runAsNonRoot, true);
    assert.ok((spec.securityContext?.runAsUser ?? 0) > 0);
    for (const c of [...spec.containers, ...(spec.initContainers ?? [])]) {
      assert.equal(c.securityContext?.readOnlyRootFilesystem, true, `${c.name}: read-only root`);
      assert.equal(c.securityContext?.allowPrivilegeEscalation, false, `${c.name}: no privilege escalation`);
      assert.deepEqual(c.securityContext?.capabilities?.drop, ["ALL"], `${c.name}: no capabilities`);
      assert.ok(c.resources?.requests?.memory && c.resources.limits?.memory, `${c.name}: memory request and limit`);
    }
    assert.equal(relay.env?.find((e) => e.name === "MAIL_OUTBOX_LOG_FORMAT")?.value, "json");
  });

  it("the relay started with the manifest's arguments answers 200 on the probe paths (an SMTP server, SQLite)", async (t) => {
    const relay = relayContainer(podSpec());
    const fx = await freshSqlite(t);
    const smtp = await startTestSmtp();
    t.after(() => smtp.close());
    // The manifest's arguments, with any free port for the fixed one (tests run side by side).
    const args = [...(relay.args ?? [])];
    args[args.indexOf("--metrics-port") + 1] = "0";
    const running = await runRelay(t, [...args, "--poll", "100ms"], { DATABASE_URL: fx.url, MAIL_OUTBOX_TRANSPORT: smtp.url, MAIL_OUTBOX_LOG_FORMAT: "json" });
    for (const probe of [relay.livenessProbe, relay.readinessProbe]) {
      const r = await answers200(running.base + probe!.httpGet!.path!);
      assert.equal(r.status, 200, `${probe!.httpGet!.path}: ${r.body}`);
      assert.equal((JSON.parse(r.body) as { status: string }).status, "ok");
    }
    assert.equal(await running.stop(), 0);
  });
});

/** `Key=value` lines of a unit file, by section (comments and blank lines left out). */
function unitFile(text: string): Map<string, Map<string, string>> {
  const sections = new Map<string, Map<string, string>>();
  let current: Map<string, string> | null = null;
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (line === "" || line.startsWith("#") || line.startsWith(";")) continue;
    const section = /^\[(.+)\]$/.exec(line);
    if (section) {
      current = new Map();
      sections.set(section[1]!, current);
      continue;
    }
    const kv = /^([A-Za-z]+)=(.*)$/.exec(line);
    assert.ok(kv && current, `a Key=value line inside a section: ${line}`);
    current.set(kv[1]!, kv[2]!);
  }
  return sections;
}

describe("the systemd unit", () => {
  const unit = unitFile(readFileSync(UNIT, "utf8"));
  const service = unit.get("Service")!;

  it("runs the relay with flags it has, stops it with SIGTERM given longer than its stop deadline, restarts it on failure only", async () => {
    assert.ok(service, "a [Service] section");
    const exec = service.get("ExecStart")!.split(/\s+/);
    assert.ok(exec[0]!.startsWith("/") && exec[0]!.endsWith("/mail-outbox"), "the program by absolute path");
    assert.equal(exec[1], "relay");
    const flags = await relayFlags();
    for (const a of exec.filter((a) => a.startsWith("--"))) assert.ok(flags.has(a), `mail-outbox relay --help lists ${a}`);
    assert.equal(service.get("KillSignal"), "SIGTERM");
    assert.equal(service.get("KillMode"), "mixed", "SIGTERM to the relay alone: it ends its sendmail children itself");
    const stopMs = parseDuration(flagValue(exec, "--stop-timeout") ?? "10s", "--stop-timeout");
    assert.ok(Number(service.get("TimeoutStopSec")) * 1000 > stopMs + 5000, `TimeoutStopSec=${service.get("TimeoutStopSec")} > stop deadline ${stopMs} ms + 5 s`);
    assert.equal(service.get("Restart"), "on-failure");
    assert.equal(service.get("RestartPreventExitStatus"), "2", "a usage error is not restarted");
    assert.ok(unit.get("Install")?.get("WantedBy"));
  });

  it("its environment file example names only what the relay reads", () => {
    const names = readFileSync(ENV_EXAMPLE, "utf8")
      .split("\n")
      .map((l) => /^#?([A-Z_]+)=/.exec(l)?.[1])
      .filter((n): n is string => n !== undefined);
    assert.deepEqual(names.sort(), ["DATABASE_URL", "MAIL_OUTBOX_BOUNCE_SECRET", "MAIL_OUTBOX_LOG_FORMAT", "MAIL_OUTBOX_LOG_LEVEL", "MAIL_OUTBOX_TRANSPORT"]);
    assert.match(readFileSync(UNIT, "utf8"), /^EnvironmentFile=\/etc\/mail-outbox\/relay\.env$/m);
  });

  it("systemd-analyze verify finds nothing to say about it (the program path replaced by one that exists here)", (t) => {
    const probe = spawnSync("systemd-analyze", ["--version"], { encoding: "utf8" });
    if (probe.error || probe.status !== 0) {
      t.skip("systemd-analyze is not installed here");
      return;
    }
    const dir = mkdtempSync(path.join(tmpdir(), "outbox-unit-"));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const copy = path.join(dir, "mail-outbox-relay.service");
    // verify checks that the program exists; everything else is the unit as shipped.
    writeFileSync(copy, readFileSync(UNIT, "utf8").replace(/^ExecStart=\S+/m, `ExecStart=${process.execPath} ${path.join(ROOT, "src/cli.ts")}`));
    const r = spawnSync("systemd-analyze", ["verify", copy], { encoding: "utf8", timeout: 30_000 });
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stderr.trim(), "", "no warning about any setting");
  });

  it("the relay started with the unit's ExecStart flags answers 200 on /healthz and /readyz", async (t) => {
    const exec = service.get("ExecStart")!.split(/\s+/).slice(1);
    const fx = await freshSqlite(t);
    const smtp = await startTestSmtp();
    t.after(() => smtp.close());
    exec[exec.indexOf("--metrics-port") + 1] = "0";
    const running = await runRelay(t, [...exec, "--poll", "100ms"], { DATABASE_URL: fx.url, MAIL_OUTBOX_TRANSPORT: smtp.url, MAIL_OUTBOX_LOG_FORMAT: "json" });
    for (const route of ["/healthz", "/readyz"]) {
      const r = await answers200(running.base + route);
      assert.equal(r.status, 200, `${route}: ${r.body}`);
    }
    assert.equal(await running.stop(), 0);
  });
});
