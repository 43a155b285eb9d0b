/** Small statistics for the benchmark: medians of runs, percentiles of latencies. */

export function median(xs: readonly number[]): number {
  if (xs.length === 0) return Number.NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** Nearest-rank percentile (p in 0..100) of unsorted values. */
export function percentile(xs: readonly number[], p: number): number {
  if (xs.length === 0) return Number.NaN;
  const s = [...xs].sort((a, b) => a - b);
  const rank = Math.min(s.length, Math.max(1, Math.ceil((p / 100) * s.length)));
  return s[rank - 1]!;
}

export function max(xs: readonly number[]): number {
  return xs.reduce((a, b) => (b > a ? b : a), Number.NEGATIVE_INFINITY);
}

/** Rotate `xs` by `k` places: round k of an interleaved schedule starts with a different contender. */
export function rotate<T>(xs: readonly T[], k: number): T[] {
  const n = xs.length;
  if (n === 0) return [];
  const r = ((k % n) + n) % n;
  return [...xs.slice(r), ...xs.slice(0, r)];
}

export function fmt(x: number, digits = 0): string {
  if (!Number.isFinite(x)) return "n/a";
  return x.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
}
