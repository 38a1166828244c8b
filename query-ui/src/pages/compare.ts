// Compare: two scopes side by side (A: the page's window and filters; B: the previous window, the
// same window, or its own window, with its own filters, e.g. another model or node): percentiles
// and the slow cohort's phase breakdown, with deltas.
import { type Breakdown, type FilterValues, get, PHASES } from '../api';
import { legend, stackedBar } from '../bars';
import { scopeControls } from '../controls';
import type { Ctx } from '../ctx';
import { h, section } from '../dom';
import { fmtChange, fmtCount, fmtDeltaMs, fmtMs, fmtPoints, fmtShare, fmtTimeS, levelName } from '../format';
import { fill } from '../load';
import { apiParams, FILTERS, href, resolveWindow, type ResolvedWindow, withParams } from '../state';

const LEVELS = [0.5, 0.9, 0.99];
const METRICS = ['e2e', 'ttft', 'tpot', ...PHASES];
const B_WINDOWS: [string, string][] = [
  ['prev', 'the window before A'],
  ['same', 'the same window as A'],
  ['custom', 'its own window'],
];

/** A `b_` filter value meaning "all", distinct from an absent one ("the same as A"). */
const ALL = '*';

/** B's scope as plain parameters (`b_model` → `model`), and its window. */
function scopeB(p: URLSearchParams, a: ResolvedWindow): { params: URLSearchParams; w: ResolvedWindow; mode: string } {
  const mode = B_WINDOWS.some(([k]) => k === p.get('b_window')) ? (p.get('b_window') as string) : 'prev';
  const params = new URLSearchParams();
  for (const f of FILTERS) {
    // B's filters default to A's: comparing windows keeps the scope, comparing models changes one.
    // `*` is "all" chosen for B while A has a filter.
    const v = p.has(`b_${f}`) ? p.get(`b_${f}`) : p.get(f);
    if (v && v !== ALL) params.set(f, v);
  }
  let w: ResolvedWindow;
  if (mode === 'same') w = { ...a, range: null };
  else if (mode === 'custom') {
    for (const k of ['range', 'from', 'to']) {
      const v = p.get(`b_${k}`);
      if (v) params.set(k, v);
    }
    w = resolveWindow(params);
  } else w = { from: a.from - (a.to - a.from), to: a.from, range: null };
  return { params, w, mode };
}

export async function compare(root: HTMLElement, ctx: Ctx): Promise<void> {
  const p = ctx.route.params;
  const wa = resolveWindow(p);
  const b = scopeB(p, wa);
  const go = (np: URLSearchParams) => ctx.go(href('compare', np));

  const ca = scopeControls(p, wa, go, { title: 'A', testid: 'controls-a' });
  // B's controls edit the b_ parameters; B's filter dropdowns show "same as A" when unset.
  const bParams = new URLSearchParams(p);
  for (const f of FILTERS) {
    if (!p.has(`b_${f}`) && p.get(f)) bParams.set(`b_${f}`, p.get(f) as string);
    if (p.get(`b_${f}`) === ALL) bParams.set(`b_${f}`, '');
  }
  const goB = (np: URLSearchParams) => {
    // "All" for B where A filters must stay in the URL (an absent b_ filter means "as A").
    for (const f of FILTERS) if (!np.get(`b_${f}`) && np.get(f)) np.set(`b_${f}`, ALL);
    go(withParams(np, { b_window: np.get('b_from') || np.get('b_range') ? 'custom' : np.get('b_window') }));
  };
  const cb = scopeControls(bParams, b.w, goB, {
    prefix: 'b_',
    title: 'B',
    testid: 'controls-b',
  });
  const mode = h('select', { 'aria-label': 'B window', 'data-testid': 'b-window' });
  for (const [k, label] of B_WINDOWS) mode.appendChild(new Option(`B window: ${label}`, k));
  mode.value = b.mode;
  mode.addEventListener('change', () => {
    // Leaving "its own window" drops B's window, so that a later B filter change keeps the mode.
    const changes: Record<string, string | null> = { b_window: mode.value === 'prev' ? null : mode.value };
    if (mode.value !== 'custom') Object.assign(changes, { b_range: null, b_from: null, b_to: null });
    go(withParams(p, changes));
  });
  cb.el.insertBefore(mode, cb.el.children[1] ?? null);
  if (b.mode !== 'custom') cb.el.classList.add('window-inherited');

  const head = h('div', { class: 'body' });
  const pct = h('div', { class: 'body' });
  const cohorts = h('div', { class: 'body' });
  root.append(
    h('div', { class: 'compare-controls' }, ca.el, cb.el),
    section('A and B', 'compare-scopes', head),
    section('Percentiles', 'compare-percentiles', pct),
    section('Slow cohort breakdown', 'compare-cohorts', cohorts),
  );

  const apA = apiParams(p, wa);
  const apB = apiParams(b.params, b.w);
  const filtersFor = (w: ResolvedWindow) => get<FilterValues>('filters', new URLSearchParams({ from: String(w.from), to: String(w.to) }), ctx.signal);
  const fvs = Promise.all([
    filtersFor(wa).then((v) => ctx.current() && ca.setFilters(v)),
    filtersFor(b.w).then((v) => ctx.current() && cb.setFilters(v)),
  ]).catch(() => undefined);
  const both = Promise.all([get<Breakdown>('breakdown', apA, ctx.signal), get<Breakdown>('breakdown', apB, ctx.signal)]);
  await Promise.all([
    fvs,
    fill(ctx, head, () => both, ([a, bb]) => renderScopes(head, a, bb, apA, apB)),
    fill(ctx, pct, () => both, ([a, bb]) => renderPercentiles(pct, a, bb)),
    fill(ctx, cohorts, () => both, ([a, bb]) => renderCohorts(cohorts, a, bb)),
  ]);
}

function describe(ap: URLSearchParams): string {
  const parts = [`${fmtTimeS(Number(ap.get('from')))} – ${fmtTimeS(Number(ap.get('to')))} UTC`];
  for (const f of FILTERS) {
    const v = ap.get(f);
    if (v) parts.push(`${f} = ${v}`);
  }
  return parts.join(', ');
}

function renderScopes(el: HTMLElement, a: Breakdown, b: Breakdown, apA: URLSearchParams, apB: URLSearchParams): void {
  el.append(
    h(
      'table',
      { class: 'attrs' },
      h(
        'tbody',
        null,
        h('tr', null, h('th', null, 'A'), h('td', { 'data-testid': 'scope-a' }, describe(apA)), h('td', { class: 'n' }, `${fmtCount(a.count)} requests`)),
        h('tr', null, h('th', null, 'B'), h('td', { 'data-testid': 'scope-b' }, describe(apB)), h('td', { class: 'n' }, `${fmtCount(b.count)} requests`)),
      ),
    ),
  );
}

function value(bd: Breakdown, metric: string, q: number): number | null {
  const r = bd.quantiles.find((x) => Math.abs(x.q - q) < 1e-9);
  return r ? (r[`${metric}_ms` as keyof typeof r] as number | null) : null;
}

function renderPercentiles(el: HTMLElement, a: Breakdown, b: Breakdown): void {
  const cls = (va: number | null, vb: number | null) => (va !== null && vb !== null && va > 0 ? (vb > va * 1.05 ? 'worse' : vb < va * 0.95 ? 'better' : '') : '');
  el.append(
    h(
      'div',
      { class: 'table-wrap' },
      h(
        'table',
        { class: 'num', 'data-testid': 'compare-table' },
        h(
          'thead',
          null,
          h('tr', null, h('th', null, ''), LEVELS.map((q) => h('th', { colspan: 4, class: 'group' }, levelName(q)))),
          h('tr', null, h('th', null, 'metric'), LEVELS.map(() => [h('th', null, 'A'), h('th', null, 'B'), h('th', null, 'B − A'), h('th', null, 'change')])),
        ),
        h(
          'tbody',
          null,
          METRICS.map((m) =>
            h(
              'tr',
              { 'data-metric': m },
              h('th', null, m),
              LEVELS.map((q) => {
                const va = value(a, m, q);
                const vb = value(b, m, q);
                return [
                  h('td', { 'data-testid': `cmp-a-${m}-${levelName(q)}` }, fmtMs(va)),
                  h('td', { 'data-testid': `cmp-b-${m}-${levelName(q)}` }, fmtMs(vb)),
                  h('td', { class: cls(va, vb) }, va !== null && vb !== null ? fmtDeltaMs(vb - va) : '—'),
                  h('td', { class: cls(va, vb) }, fmtChange(va, vb)),
                ];
              }),
            ),
          ),
        ),
      ),
    ),
    h('p', { class: 'muted small' }, 'Red: B more than 5 % slower than A; green: more than 5 % faster.'),
  );
}

function renderCohorts(el: HTMLElement, a: Breakdown, b: Breakdown): void {
  const sa = a.slow_vs_median;
  const sb = b.slow_vs_median;
  if (!sa || !sb) {
    el.append(h('p', { class: 'muted' }, `No requests in ${!sa ? 'A' : 'B'}.`));
    return;
  }
  const names = [...PHASES, 'unattributed'];
  const m = (c: typeof sa.slow, n: string) => (n === 'unattributed' ? c.unattributed : c.phases[n as (typeof PHASES)[number]]);
  const bar = (label: string, c: typeof sa.slow, testid: string) =>
    h(
      'div',
      { class: 'bar-row', 'data-testid': testid },
      h('span', { class: 'bar-label' }, label),
      stackedBar(
        names.map((n) => ({ name: n, value: Math.max(0, m(c, n).share), title: `${n}: ${fmtShare(m(c, n).share)} (${fmtMs(m(c, n).mean_ms)})` })),
        Math.max(1, names.reduce((s, n) => s + Math.max(0, m(c, n).share), 0)),
      ),
      h('span', { class: 'bar-value' }, fmtMs(c.mean_e2e_ms)),
    );
  el.append(
    h('p', null, `A slow: ${sa.slow.definition}, ${fmtCount(sa.slow.count)} requests · B slow: ${sb.slow.definition}, ${fmtCount(sb.slow.count)} requests`),
    legend(names),
    h('div', { class: 'bars' }, bar('A slow', sa.slow, 'cmp-bar-a'), bar('B slow', sb.slow, 'cmp-bar-b'), bar('A median', sa.median, 'cmp-bar-a-median'), bar('B median', sb.median, 'cmp-bar-b-median')),
    h(
      'table',
      { class: 'num', 'data-testid': 'compare-cohort-table' },
      h(
        'thead',
        null,
        h('tr', null, ['phase', 'A slow: mean', 'share', 'B slow: mean', 'share', 'Δ mean', 'Δ share'].map((c) => h('th', null, c))),
      ),
      h(
        'tbody',
        null,
        names.map((n) =>
          h(
            'tr',
            { 'data-phase': n },
            h('th', null, n),
            h('td', null, fmtMs(m(sa.slow, n).mean_ms)),
            h('td', null, fmtShare(m(sa.slow, n).share)),
            h('td', null, fmtMs(m(sb.slow, n).mean_ms)),
            h('td', null, fmtShare(m(sb.slow, n).share)),
            h('td', null, fmtDeltaMs(m(sb.slow, n).mean_ms - m(sa.slow, n).mean_ms)),
            h('td', null, fmtPoints(m(sb.slow, n).share - m(sa.slow, n).share)),
          ),
        ),
      ),
    ),
  );
}
