// Hash routes and the state they carry: `#/overview?range=1h&model=m`,
// `#/requests?from=1714560000&to=1714563600&sort=ttft`, `#/trace/<id>`, `#/compare?…&b_model=x`.
// Every page's view is fully described by its URL, so any view can be linked.

export type Page = 'overview' | 'requests' | 'trace' | 'compare';

export interface Route {
  page: Page;
  /** The trace id of `#/trace/{id}`. */
  traceId?: string;
  params: URLSearchParams;
}

/** Window presets: URL key, seconds, label. */
export const PRESETS: [string, number, string][] = [
  ['15m', 900, '15 m'],
  ['1h', 3600, '1 h'],
  ['6h', 6 * 3600, '6 h'],
  ['24h', 86400, '24 h'],
];
export const DEFAULT_RANGE = '1h';

/** The filter parameters shared by the request endpoints (and the URL). */
export const FILTERS = ['model', 'node', 'engine', 'status', 'tenant'] as const;
export type FilterName = (typeof FILTERS)[number];

/** Parameters that define "which requests": window + filters. */
export const SCOPE = ['range', 'from', 'to', ...FILTERS];

export function parseHash(hash: string): Route {
  const raw = hash.replace(/^#\/?/, '');
  const qi = raw.indexOf('?');
  const path = qi >= 0 ? raw.slice(0, qi) : raw;
  const params = new URLSearchParams(qi >= 0 ? raw.slice(qi + 1) : '');
  const parts = path.split('/').filter(Boolean);
  switch (parts[0]) {
    case 'requests':
      return { page: 'requests', params };
    case 'compare':
      return { page: 'compare', params };
    case 'trace': {
      // A malformed escape (`%zz`) is kept as typed: the trace page then reports it as an
      // unknown id instead of the app failing to render.
      let id = parts[1] ?? '';
      try {
        id = decodeURIComponent(id);
      } catch {
        /* keep the raw text */
      }
      return { page: 'trace', traceId: id, params };
    }
    default:
      return { page: 'overview', params };
  }
}

/** `#/{page}?{params}` (empty values left out). */
export function href(page: string, params?: URLSearchParams): string {
  const p = new URLSearchParams();
  params?.forEach((v, k) => {
    if (v !== '') p.set(k, v);
  });
  const qs = p.toString();
  return `#/${page}${qs ? `?${qs}` : ''}`;
}

/** Only the window and filter parameters of `params` (with an optional prefix, e.g. `b_`). */
export function scopeOf(params: URLSearchParams, prefix = ''): URLSearchParams {
  const out = new URLSearchParams();
  for (const k of SCOPE) {
    const v = params.get(prefix + k);
    if (v) out.set(k, v);
  }
  return out;
}

export interface ResolvedWindow {
  from: number;
  to: number;
  /** The preset, when the window is relative to now. */
  range: string | null;
}

/** The window of `params`: absolute `from`/`to` (Unix seconds) or a preset ending now. */
export function resolveWindow(params: URLSearchParams, now = Date.now() / 1000): ResolvedWindow {
  const from = Number(params.get('from'));
  const to = Number(params.get('to'));
  if (params.get('from') && params.get('to') && Number.isFinite(from) && Number.isFinite(to) && from < to) {
    return { from: Math.floor(from), to: Math.ceil(to), range: null };
  }
  const range = params.get('range') ?? DEFAULT_RANGE;
  const secs = PRESETS.find(([k]) => k === range)?.[1] ?? 3600;
  const t = Math.ceil(now);
  return { from: t - secs, to: t, range };
}

/** API query parameters: the resolved window and the filters. */
export function apiParams(params: URLSearchParams, w: ResolvedWindow): URLSearchParams {
  const p = new URLSearchParams();
  p.set('from', String(w.from));
  p.set('to', String(w.to));
  for (const f of FILTERS) {
    const v = params.get(f);
    if (v) p.set(f, v);
  }
  return p;
}

/** A copy of `params` with `changes` applied (`null` or '' deletes). */
export function withParams(params: URLSearchParams, changes: Record<string, string | null>): URLSearchParams {
  const p = new URLSearchParams(params);
  for (const [k, v] of Object.entries(changes)) {
    if (v === null || v === '') p.delete(k);
    else p.set(k, v);
  }
  return p;
}
