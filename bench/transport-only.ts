/**
 * The pipelined SMTP transport alone, without a database: N mails through `sendRaw` with C in
 * flight, into Postfix's smtp-sink; prints mails/s and the process CPU per 1,000 mails. For A/B
 * work on src/smtp-pipelined.ts (`BENCH_SRC_DIR` picks the source tree).
 *
 *   node --import tsx bench/transport-only.ts [mails] [concurrency]
 */
import path from "node:path";
import { pathToFileURL } from "node:url";
import { startSmtpSink } from "./sink.js";
import { mailTemplate, rawWith, newMessageId, FROM, TO } from "./mail.js";

const mails = Number(process.argv[2] ?? 40_000);
const concurrency = Number(process.argv[3] ?? 40);
const src = process.env.BENCH_SRC_DIR ?? path.join(import.meta.dirname, "..", "src");
const { createPipelinedSmtpTransport } = (await import(pathToFileURL(path.join(src, "smtp-pipelined.ts")).href)) as typeof import("../src/smtp-pipelined.js");

const sink = await startSmtpSink();
const t = await mailTemplate();
const raws = Array.from({ length: 1000 }, () => rawWith(t, newMessageId()));
const transport = createPipelinedSmtpTransport({ host: "127.0.0.1", port: sink.port, maxConnections: 10, maxMessages: 100_000, name: "bench", connectionTimeoutMs: 10_000, socketTimeoutMs: 60_000 });
const send = transport.capabilities.sendRaw;
async function run(n: number): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < n) {
      const i = next++;
      await send({ from: FROM, to: [TO] }, raws[i % raws.length]!);
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
}
await run(5_000); // warm-up: connections open, code optimised
const cpu0 = process.cpuUsage();
const t0 = performance.now();
await run(mails);
const ms = performance.now() - t0;
const cpu = process.cpuUsage(cpu0);
console.log(`${mails} mails in ${ms.toFixed(0)} ms: ${((mails / ms) * 1000).toFixed(0)} mails/s, ${(((cpu.user + cpu.system) / 1000 / mails) * 1000).toFixed(1)} ms CPU per 1000 mails (user ${((cpu.user / 1000 / mails) * 1000).toFixed(1)}, sys ${((cpu.system / 1000 / mails) * 1000).toFixed(1)})`);
transport.close();
await sink.close();
