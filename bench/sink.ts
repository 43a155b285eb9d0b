/**
 * Where every contender's mail goes, and the ceiling:
 * - Postfix's `smtp-sink` (C, one process, event-driven) when it is installed: it answers 250 to
 *   everything and leaves the CPU to the contenders. With `dump` it also appends every message to
 *   one file (used for the exactly-once check; it costs the sink about twice the CPU).
 * - otherwise, and for the quick CI variant, the repository's test SMTP server (testkit/smtp.ts)
 *   in this process, counting how often each Message-ID arrived and keeping nothing else.
 * - Postfix's `smtp-source` measures what the sink takes from a C client: the ceiling.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { accessSync, constants, createReadStream } from "node:fs";
import net from "node:net";
import path from "node:path";
import { createInterface } from "node:readline";
import { startTestSmtp } from "../testkit/smtp.js";

export interface Sink {
  readonly kind: "smtp-sink" | "smtp-server";
  readonly port: number;
  /** `smtp://127.0.0.1:PORT?maxConnections=10`: the transport every contender uses. */
  readonly url: string;
  /** smtp-server only: how often each Message-ID arrived since the last `clear()`; null for smtp-sink. */
  counts(): ReadonlyMap<string, number> | null;
  /** Forget the counts (smtp-server; nothing to forget for smtp-sink). */
  clear(): void;
  close(): Promise<void>;
}

/** SMTP connections every contender's pooled transport opens, as smtp-source's sessions. */
export const SMTP_CONNECTIONS = 10;

function sinkUrl(port: number): string {
  return `smtp://127.0.0.1:${port}?maxConnections=${SMTP_CONNECTIONS}`;
}

/** The path of a Postfix tool (`smtp-sink`, `smtp-source`), or null when Postfix's tools are not installed. */
export function postfixTool(name: string): string | null {
  const dirs = ["/usr/sbin", "/usr/lib/postfix/sbin", "/usr/libexec/postfix", ...(process.env.PATH ?? "").split(path.delimiter)];
  for (const dir of dirs) {
    if (!dir) continue;
    const file = path.join(dir, name);
    try {
      accessSync(file, constants.X_OK);
      return file;
    } catch {
      // next
    }
  }
  return null;
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

async function waitForPort(port: number, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect({ host: "127.0.0.1", port });
      s.once("connect", () => {
        s.destroy();
        resolve(true);
      });
      s.once("error", () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`nothing listens on 127.0.0.1:${port} after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

function runAsNobody(): string[] {
  return process.getuid?.() === 0 ? ["-u", "nobody"] : [];
}

/** Start Postfix's smtp-sink on a free port. `dump`: append every message to this file. */
export async function startSmtpSink(options: { readonly dump?: string } = {}): Promise<Sink> {
  const bin = postfixTool("smtp-sink");
  if (!bin) throw new Error("smtp-sink is not installed (apt-get install postfix)");
  const port = await freePort();
  const args = [...runAsNobody(), ...(options.dump ? ["-D", options.dump] : []), `127.0.0.1:${port}`, "1024"];
  const child: ChildProcess = spawn(bin, args, { stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  child.stderr?.on("data", (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  try {
    await waitForPort(port);
  } catch (err) {
    child.kill("SIGKILL");
    throw new Error(`smtp-sink did not start: ${stderr || (err as Error).message}`);
  }
  return {
    kind: "smtp-sink",
    port,
    url: sinkUrl(port),
    counts: () => null,
    clear: () => {},
    async close() {
      child.kill("SIGTERM");
      await exited;
    },
  };
}

/** A Message-ID header in the first lines of a message. */
function messageIdOf(head: string): string | null {
  const m = /^message-id:[ \t]*(<[^>\r\n]*>)/im.exec(head);
  return m?.[1] ?? null;
}

/** The test SMTP server in this process, counting Message-IDs only (`capture: "count"`). */
export async function startRecordingSink(): Promise<Sink> {
  const smtp = await startTestSmtp({ capture: "count" });
  return {
    kind: "smtp-server",
    port: smtp.port,
    url: sinkUrl(smtp.port),
    counts: () => smtp.countByMessageId(),
    clear: () => smtp.clear(),
    close: () => smtp.close(),
  };
}

/** Count each Message-ID in an smtp-sink `-D` dump file. */
export async function countDump(file: string): Promise<Map<string, number>> {
  const counts = new Map<string, number>();
  const lines = createInterface({ input: createReadStream(file, { encoding: "latin1" }), crlfDelay: Infinity });
  for await (const line of lines) {
    if (line.length > 11 && (line[0] === "M" || line[0] === "m")) {
      const id = messageIdOf(line);
      if (id) counts.set(id, (counts.get(id) ?? 0) + 1);
    }
  }
  return counts;
}

export interface SourceRun {
  readonly messages: number;
  readonly elapsedMs: number;
  readonly perSecond: number;
}

/** Postfix's smtp-source into the sink: `sessions` reused sessions (-d), `messages` of about `bytes` bytes. */
export async function runSmtpSource(port: number, messages: number, bytes: number, sessions = SMTP_CONNECTIONS): Promise<SourceRun> {
  const bin = postfixTool("smtp-source");
  if (!bin) throw new Error("smtp-source is not installed (apt-get install postfix)");
  // smtp-source adds From, To, Date and Message-Id headers (about 130 bytes) to -l bytes of payload.
  const payload = Math.max(1, bytes - 130);
  const args = ["-d", "-s", String(sessions), "-m", String(messages), "-l", String(payload), "-f", "shop@example.com", "-t", "customer@example.net", `127.0.0.1:${port}`];
  const started = performance.now();
  await new Promise<void>((resolve, reject) => {
    const child = spawn(bin, args, { stdio: ["ignore", "ignore", "pipe"] });
    let stderr = "";
    child.stderr?.on("data", (d: Buffer) => (stderr += d.toString()));
    child.once("error", reject);
    child.once("exit", (code) => (code === 0 ? resolve() : reject(new Error(`smtp-source exited with ${code}: ${stderr}`))));
  });
  const elapsedMs = performance.now() - started;
  return { messages, elapsedMs, perSecond: (messages / elapsedMs) * 1000 };
}
