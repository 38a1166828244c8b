// Number and time formatting. The browser test (tests/browser.mjs) formats API values with the
// same rules to compare what is shown; keep the two in step.

/** Milliseconds: 3 decimals below 1 ms, 2 below 100 ms, 1 below 10 s, none above. */
export function fmtMs(v: number | null | undefined): string {
  if (v === null || v === undefined || !Number.isFinite(v)) return '—';
  const a = Math.abs(v);
  const d = a < 1 ? 3 : a < 100 ? 2 : a < 10000 ? 1 : 0;
  // No "-0.000 ms" for tiny negative differences.
  return `${(Number(v.toFixed(d)) === 0 ? 0 : v).toFixed(d)} ms`;
}

/** A signed millisecond difference. */
export function fmtDeltaMs(v: number | null | undefined): string {
  if (v === null || v === undefined || !Number.isFinite(v)) return '—';
  return (v > 0 ? '+' : '') + fmtMs(v);
}

/** A share (0.25) as a percentage: `25.0 %`. */
export function fmtShare(v: number | null | undefined): string {
  if (v === null || v === undefined || !Number.isFinite(v)) return '—';
  return `${(v * 100).toFixed(1)} %`;
}

/** A share difference in percentage points: `+3.2 pp`. */
export function fmtPoints(v: number | null | undefined): string {
  if (v === null || v === undefined || !Number.isFinite(v)) return '—';
  const p = v * 100;
  return `${p > 0 ? '+' : ''}${p.toFixed(1)} pp`;
}

/** Relative change of b against a: `+12.5 %`. */
export function fmtChange(a: number | null | undefined, b: number | null | undefined): string {
  if (a === null || a === undefined || b === null || b === undefined || !(a > 0)) return '—';
  const c = ((b - a) / a) * 100;
  return `${c > 0 ? '+' : ''}${c.toFixed(1)} %`;
}

/** An integer with thousands separators. */
export function fmtCount(n: number | null | undefined): string {
  if (n === null || n === undefined || !Number.isFinite(n)) return '—';
  return String(Math.round(n)).replace(/\B(?=(\d{3})+(?!\d))/g, ',');
}

function pad(n: number, w = 2): string {
  return String(n).padStart(w, '0');
}

/** Unix seconds → `2024-05-01 12:00:00` (UTC). */
export function fmtTimeS(s: number): string {
  const d = new Date(s * 1000);
  return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())}`;
}

/** Unix ns → `2024-05-01 12:00:00.123456` (UTC, µs; JS numbers hold ns instants to ~0.25 µs). */
export function fmtTimeNs(ns: number): string {
  const s = Math.floor(ns / 1e9);
  const us = Math.floor((ns - s * 1e9) / 1e3);
  return `${fmtTimeS(s)}.${pad(Math.max(0, Math.min(999999, us)), 6)}`;
}

/** Unix ns → `2024-05-01 12:00:00.123` (UTC, ms). */
export function fmtTimeMs(ns: number): string {
  return fmtTimeNs(ns).slice(0, 23);
}

/** `2024-05-01 12:00:00` or `2024-05-01T12:00:00Z` (UTC) or Unix seconds → Unix seconds. */
export function parseTime(v: string): number | null {
  const t = v.trim();
  if (/^\d+(\.\d+)?$/.test(t)) return Math.floor(Number(t));
  const m = /^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2})(?::(\d{2}))?Z?$/.exec(t);
  if (!m) return null;
  const ms = Date.UTC(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], m[6] ? +m[6] : 0);
  return Number.isFinite(ms) ? Math.floor(ms / 1000) : null;
}

/** 0.99 → `p99`, 0.999 → `p99.9`. */
export function levelName(q: number): string {
  return `p${+(q * 100).toFixed(4)}`;
}
