/** Start the faulty MTA (soak/mta-server.ts) in its own process and drive it over IPC. */
import { fork, type ChildProcess } from "node:child_process";
import { fileURLToPath } from "node:url";
import type { MtaConfig, MtaReport } from "./mta-server.js";

const ENTRY = fileURLToPath(new URL("./mta-server.ts", import.meta.url));

export interface FaultyMta {
  /** `smtp://127.0.0.1:PORT` */
  readonly url: string;
  readonly pid: number;
  configure(config: MtaConfig): Promise<void>;
  /** Stop listening: new connections are refused, open ones are dropped. */
  refuse(): Promise<void>;
  accept(): Promise<void>;
  report(): Promise<MtaReport>;
  close(): Promise<void>;
}

export async function startFaultyMta(options: { seed: number; rejectRate: number }): Promise<FaultyMta> {
  const child: ChildProcess = fork(ENTRY, [], {
    execArgv: ["--import", "tsx"],
    env: { ...process.env, SOAK_SEED: String(options.seed), SOAK_REJECT_RATE: String(options.rejectRate) },
    stdio: ["ignore", "inherit", "inherit", "ipc"],
  });
  const pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  let nextId = 1;
  let exited = false;
  const ready = new Promise<{ url: string }>((resolve, reject) => {
    child.on("message", (raw: unknown) => {
      const msg = raw as { ready?: boolean; url?: string; id?: number; ok?: boolean; result?: unknown; error?: string };
      if (msg.ready) return resolve({ url: msg.url! });
      const p = msg.id === undefined ? undefined : pending.get(msg.id);
      if (!p) return;
      pending.delete(msg.id!);
      if (msg.ok) p.resolve(msg.result);
      else p.reject(new Error(`faulty MTA: ${msg.error}`));
    });
    child.once("exit", (code, signal) => {
      exited = true;
      const err = new Error(`the faulty MTA process exited (code ${code}, signal ${signal})`);
      reject(err);
      for (const p of pending.values()) p.reject(err);
      pending.clear();
    });
  });
  const { url } = await ready;
  const call = <T>(cmd: string, extra: Record<string, unknown> = {}): Promise<T> => {
    if (exited) return Promise.reject(new Error("the faulty MTA process is gone"));
    const id = nextId++;
    return new Promise<T>((resolve, reject) => {
      pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      child.send({ id, cmd, ...extra });
    });
  };
  return {
    url,
    pid: child.pid ?? 0,
    configure: (config) => call("configure", { config }),
    refuse: () => call("refuse"),
    accept: () => call("accept"),
    report: () => call<MtaReport>("report"),
    async close() {
      if (exited) return;
      const gone = new Promise((r) => child.once("exit", r));
      await call("close").catch(() => {});
      const timer = setTimeout(() => child.kill("SIGKILL"), 3000);
      await gone;
      clearTimeout(timer);
    },
  };
}
