/**
 * Relay processes for the soak (soak/relay-process.ts): start, SIGKILL, SIGTERM, restart, and
 * remember each incarnation's life, how it ended and its memory samples.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { openSync, closeSync } from "node:fs";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

const ENTRY = fileURLToPath(new URL("./relay-process.ts", import.meta.url));

/** Every relay process alive now, so an interrupted soak can take them down with it. */
const live = new Set<ChildProcess>();

/** SIGKILL every relay process of this soak (for Ctrl-C). */
export function killAllRelays(): void {
  for (const child of live) child.kill("SIGKILL");
}

export interface RelaySpec {
  /** Short name in reports: `pg-a`, `sqlite-a`, `postfix-bs`. */
  readonly name: string;
  /** Put before the name in the relay id (and so in PostgreSQL's application_name): `soak-<run>-`. */
  readonly idPrefix: string;
  readonly databaseUrl: string;
  readonly transport: string;
  /** RelayOptions numbers (concurrency, batchSize, leaseMs, ...), passed as JSON. */
  readonly options: { readonly concurrency: number } & Record<string, unknown>;
  /** Relay log (stderr) is appended here. */
  readonly logFile: string;
  readonly stopDeadlineMs?: number;
  /** Extra environment for the process (soak/relay-process.ts fault hooks: COMPLETE_DELAY_MS, RELAY_EVENTS). */
  readonly env?: Readonly<Record<string, string>>;
}

export type EndReason = "SIGKILL" | "SIGTERM" | "final-stop" | "unexpected";

export interface Incarnation {
  readonly n: number;
  readonly relayId: string;
  readonly pid: number;
  readonly startedAt: number;
  endedAt: number | null;
  /** Why it ended: killed by the harness, stopped by it, or on its own (a crash). */
  endReason: EndReason | null;
  exitCode: number | null;
  exitSignal: string | null;
  /** [ms since start, rss bytes], every half second. */
  readonly samples: [number, number][];
  peakRss: number;
  sent: number;
  /** The relay printed its `stopped` line (a graceful stop finished). */
  stoppedCleanly: boolean;
  /** Uncertain hand-offs it settled under leaseExpiryPolicy "verify" (its `verified` events, with RELAY_EVENTS=1). */
  readonly verified: { received: number; absent: number };
}

export class RelaySlot {
  readonly spec: RelaySpec;
  readonly incarnations: Incarnation[] = [];
  private child: ChildProcess | null = null;
  private exited: Promise<void> = Promise.resolve();
  /** The harness is killing or stopping it on purpose. */
  private intent: EndReason | null = null;
  private readonly onUnexpected: (slot: RelaySlot, inc: Incarnation) => void;

  constructor(spec: RelaySpec, onUnexpected: (slot: RelaySlot, inc: Incarnation) => void = () => {}) {
    this.spec = spec;
    this.onUnexpected = onUnexpected;
  }

  get running(): boolean {
    return this.child !== null;
  }

  get current(): Incarnation | undefined {
    return this.running ? this.incarnations.at(-1) : undefined;
  }

  /** Spawn a new incarnation; resolves once it printed `started` (or after 20 s). */
  async start(): Promise<void> {
    if (this.child) return;
    const n = this.incarnations.length + 1;
    const relayId = `${this.spec.idPrefix}${this.spec.name}#${n}`;
    const log = openSync(this.spec.logFile, "a");
    const child = spawn(process.execPath, ["--import", "tsx", ENTRY], {
      env: {
        ...process.env,
        DATABASE_URL: this.spec.databaseUrl,
        MAIL_OUTBOX_TRANSPORT: this.spec.transport,
        RELAY_ID: relayId,
        RELAY_OPTIONS: JSON.stringify(this.spec.options),
        STOP_DEADLINE_MS: String(this.spec.stopDeadlineMs ?? 3000),
        ...this.spec.env,
      },
      stdio: ["ignore", "pipe", log],
    });
    closeSync(log);
    live.add(child);
    const inc: Incarnation = {
      n,
      relayId,
      pid: child.pid ?? 0,
      startedAt: Date.now(),
      endedAt: null,
      endReason: null,
      exitCode: null,
      exitSignal: null,
      samples: [],
      peakRss: 0,
      sent: 0,
      stoppedCleanly: false,
      verified: { received: 0, absent: 0 },
    };
    this.incarnations.push(inc);
    this.child = child;
    this.intent = null;
    let markStarted: () => void = () => {};
    const started = new Promise<void>((resolve) => (markStarted = resolve));
    createInterface({ input: child.stdout! }).on("line", (line) => {
      let e: { event?: string; rss?: number; maxRss?: number; sent?: number; result?: string };
      try {
        e = JSON.parse(line);
      } catch {
        return;
      }
      if (e.event === "started") markStarted();
      if (e.event === "sample" || e.event === "stopped") {
        inc.samples.push([Date.now() - inc.startedAt, e.rss ?? 0]);
        // Not process.resourceUsage().maxRSS: on Linux a spawned child's maxRSS starts at its
        // parent's RSS at fork time (the high-water mark survives fork+exec), so it says nothing here.
        inc.peakRss = Math.max(inc.peakRss, e.rss ?? 0);
        inc.sent = e.sent ?? inc.sent;
      }
      if (e.event === "stopped") inc.stoppedCleanly = true;
      if (e.event === "verified" && (e.result === "received" || e.result === "absent")) inc.verified[e.result] += 1;
    });
    this.exited = new Promise<void>((resolve) => {
      child.once("exit", (code, signal) => {
        live.delete(child);
        inc.endedAt = Date.now();
        inc.exitCode = code;
        inc.exitSignal = signal;
        inc.endReason = this.intent ?? "unexpected";
        this.child = null;
        markStarted();
        if (inc.endReason === "unexpected") this.onUnexpected(this, inc);
        resolve();
      });
    });
    const timer = setTimeout(markStarted, 20_000);
    await started;
    clearTimeout(timer);
  }

  /** SIGKILL now; resolves once the process is gone. */
  async kill(): Promise<Incarnation | undefined> {
    const inc = this.current;
    if (!this.child) return undefined;
    this.intent = "SIGKILL";
    this.child.kill("SIGKILL");
    await this.exited;
    return inc;
  }

  /** SIGTERM (graceful stop); SIGKILL after `graceMs`. Resolves once the process is gone. */
  async stop(reason: "SIGTERM" | "final-stop", graceMs = 15_000): Promise<Incarnation | undefined> {
    const inc = this.current;
    const child = this.child;
    if (!child) return undefined;
    this.intent = reason;
    child.kill("SIGTERM");
    const timer = setTimeout(() => child.kill("SIGKILL"), graceMs);
    await this.exited;
    clearTimeout(timer);
    return inc;
  }
}

/** Median of a list of numbers (0 for none). */
function median(xs: number[]): number {
  if (xs.length === 0) return 0;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

export interface MemoryFinding {
  readonly name: string;
  readonly peakRss: number;
  readonly incarnations: number;
  /** Longest life of one incarnation, ms. */
  readonly longestLifeMs: number;
  /**
   * RSS growth over the longest-lived incarnation that lived at least `minLifeMs`: median of the
   * last quarter of its samples minus median of its second quarter (after start-up). Null when none lived long enough.
   */
  readonly growth: number | null;
}

export function memoryOf(slot: RelaySlot, minLifeMs = 60_000): MemoryFinding {
  let peak = 0;
  let longest: Incarnation | null = null;
  let longestLife = 0;
  for (const inc of slot.incarnations) {
    peak = Math.max(peak, inc.peakRss);
    const life = (inc.endedAt ?? Date.now()) - inc.startedAt;
    if (life > longestLife) {
      longestLife = life;
      longest = inc;
    }
  }
  let growth: number | null = null;
  if (longest && longestLife >= minLifeMs && longest.samples.length >= 20) {
    const s = longest.samples.map(([, rss]) => rss);
    const q = Math.floor(s.length / 4);
    growth = median(s.slice(s.length - q)) - median(s.slice(q, 2 * q));
  }
  return { name: slot.spec.name, peakRss: peak, incarnations: slot.incarnations.length, longestLifeMs: longestLife, growth };
}
