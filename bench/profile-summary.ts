/**
 * Summarise a V8 `.cpuprofile` (from `node --cpu-prof`): self time by package (or by file of this
 * project) and the top functions by self time.
 *
 *   node --import tsx bench/profile-summary.ts bench/.out/profiles/CPU.*.cpuprofile [--top 25]
 */
import { readFileSync } from "node:fs";

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
}
interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  hitCount?: number;
  children?: number[];
}
interface Profile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples?: number[];
  timeDeltas?: number[];
}

export interface ProfileSummary {
  readonly totalMs: number;
  readonly byPackage: { name: string; ms: number; share: number }[];
  readonly topFunctions: { name: string; where: string; ms: number; share: number }[];
}

/** The package (node_modules/<pkg>), `src/<file>`, `bench/...`, `node:<internal>` or a V8 pseudo-frame for a URL. */
function bucket(url: string, fn: string): string {
  if (!url) return fn.startsWith("(") ? fn : "(native)";
  const nm = url.lastIndexOf("node_modules/");
  if (nm >= 0) {
    const rest = url.slice(nm + "node_modules/".length).split("/");
    return rest[0]!.startsWith("@") ? `${rest[0]}/${rest[1]}` : rest[0]!;
  }
  if (url.startsWith("node:")) return url.split("/")[0]!;
  const m = /\/(src|bench|test)\/(.*)$/.exec(url);
  if (m) return `${m[1]}/${m[2]}`;
  return url;
}

export function summarize(profile: Profile, top = 25): ProfileSummary {
  const dt = new Map<number, number>();
  const samples = profile.samples ?? [];
  const deltas = profile.timeDeltas ?? [];
  for (let i = 0; i < samples.length; i++) dt.set(samples[i]!, (dt.get(samples[i]!) ?? 0) + (deltas[i] ?? 0));
  const totalUs = [...dt.values()].reduce((a, b) => a + b, 0);
  const pkgs = new Map<string, number>();
  const fns = new Map<string, { name: string; where: string; us: number }>();
  for (const n of profile.nodes) {
    const us = dt.get(n.id) ?? 0;
    if (us === 0) continue;
    const { functionName, url, lineNumber } = n.callFrame;
    const b = bucket(url, functionName);
    pkgs.set(b, (pkgs.get(b) ?? 0) + us);
    const key = `${functionName}|${url}|${lineNumber}`;
    const f = fns.get(key) ?? { name: functionName || "(anonymous)", where: `${b}:${lineNumber + 1}`, us: 0 };
    f.us += us;
    fns.set(key, f);
  }
  const share = (us: number) => us / Math.max(1, totalUs);
  return {
    totalMs: totalUs / 1000,
    byPackage: [...pkgs.entries()].sort((a, b) => b[1] - a[1]).map(([name, us]) => ({ name, ms: us / 1000, share: share(us) })),
    topFunctions: [...fns.values()]
      .sort((a, b) => b.us - a.us)
      .slice(0, top)
      .map((f) => ({ name: f.name, where: f.where, ms: f.us / 1000, share: share(f.us) })),
  };
}

export function formatSummary(s: ProfileSummary, packages = 15): string {
  const pct = (x: number) => `${(x * 100).toFixed(1)}%`;
  const lines = [`total sampled: ${s.totalMs.toFixed(0)} ms`, "", "self time by package / file:"];
  for (const p of s.byPackage.slice(0, packages)) lines.push(`  ${pct(p.share).padStart(6)}  ${p.ms.toFixed(0).padStart(7)} ms  ${p.name}`);
  lines.push("", "top functions by self time:");
  for (const f of s.topFunctions) lines.push(`  ${pct(f.share).padStart(6)}  ${f.ms.toFixed(0).padStart(7)} ms  ${f.name}  (${f.where})`);
  return lines.join("\n");
}

if (process.argv[1]?.endsWith("profile-summary.ts")) {
  const args = process.argv.slice(2);
  const topAt = args.indexOf("--top");
  const top = topAt >= 0 ? Number(args[topAt + 1]) : 25;
  const files = args.filter((a, i) => !a.startsWith("--") && (topAt < 0 || i !== topAt + 1));
  for (const file of files) {
    console.log(`== ${file}`);
    console.log(formatSummary(summarize(JSON.parse(readFileSync(file, "utf8")) as Profile, top)));
  }
}
