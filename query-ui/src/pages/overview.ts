// Overview: the window's latency at a glance: percentiles over time, the distribution, the phase
// breakdown per percentile and what is different about the slowest requests.
import { type Breakdown, type FilterValues, get, type Gap, type Groups, type Histogram, PHASES, RESOURCE_LABELS, RESOURCES, type Timeseries } from '../api';
import { legend, stackedBar, type Segment } from '../bars';
import { countChart, destroyChartsIn, histogramChart, LEVEL_COLORS, lineChart } from '../charts';
import { scopeControls } from '../controls';
import type { Ctx } from '../ctx';
import { append, h, section } from '../dom';
import { fmtCount, fmtDeltaMs, fmtMs, fmtPoints, fmtShare, levelName } from '../format';
import { fill } from '../load';
import { apiParams, href, parseHash, resolveWindow, scopeOf, withParams } from '../state';

const METRICS = ['e2e', 'ttft', 'tpot'] as const;
const METRIC_TITLES: Record<string, string> = { e2e: 'End to end (E2E)', ttft: 'Time to first token (TTFT)', tpot: 'Time per output token (TPOT)' };

export async function overview(root: HTMLElement, ctx: Ctx): Promise<void> {
  const p = ctx.route.params;
  const w = resolveWindow(p);
  const ap = apiParams(p, w);
  // The histogram's choices are rewritten into the URL in place: carry the current ones over.
  const go = (np: URLSearchParams) => {
    const now = parseHash(location.hash).params;
    ctx.go(href('overview', withParams(np, { hist: now.get('hist'), hist_scale: now.get('hist_scale') })));
  };
  const controls = scopeControls(p, w, go);

  const summary = h('div', { class: 'body' });
  const ts = h('div', { class: 'body' });
  const hist = h('div', { class: 'body' });
  const phases = h('div', { class: 'body' });
  const cohorts = h('div', { class: 'body' });
  root.append(
    controls.el,
    section('Summary', 'summary', summary),
    section('Latency percentiles over time', 'timeseries', ts),
    h(
      'div',
      { class: 'grid2' },
      section('Latency distribution', 'histogram', hist),
      section('Phase breakdown per percentile', 'phases', phases),
    ),
    section('Slowest requests vs typical requests', 'cohorts', cohorts),
  );
  const tenants = h('div', { class: 'body' });

  const windowOnly = new URLSearchParams({ from: String(w.from), to: String(w.to) });
  const fv = get<FilterValues>('filters', windowOnly, ctx.signal)
    .then(async (v) => {
      if (!ctx.current()) return;
      controls.setFilters(v);
      // Tenants exist only where node-probe extracts them: the section appears with them.
      if (!(v.tenants ?? []).length) return;
      root.append(section('Latency by tenant', 'tenants', tenants));
      const gp = withParams(ap, { by: 'tenant', quantiles: '0.5,0.9,0.99', limit: '50' });
      await fill(ctx, tenants, () => get<Groups>('groups', gp, ctx.signal), (g) => renderTenants(tenants, g, p));
    })
    .catch(() => undefined);

  const breakdown = get<Breakdown>('breakdown', ap, ctx.signal);
  await Promise.all([
    fv,
    fill(ctx, summary, () => breakdown, (b) => renderSummary(summary, b, p)),
    fill(ctx, phases, () => breakdown, (b) => renderPhases(phases, b)),
    fill(ctx, cohorts, () => breakdown, (b) => {
      renderCohorts(cohorts, b);
      renderResources(cohorts, b);
      renderGaps(cohorts, b);
    }),
    fill(
      ctx,
      ts,
      () => get<Timeseries>('timeseries', ap, ctx.signal),
      (t) => renderTimeseries(ts, t),
    ),
    histogramSection(ctx, hist, ap, p),
  ]);
}

function stat(label: string, value: string, testid: string): HTMLElement {
  return h('div', { class: 'stat' }, h('div', { class: 'stat-label' }, label), h('div', { class: 'stat-value', 'data-testid': testid }, value));
}

function renderSummary(el: HTMLElement, b: Breakdown, p: URLSearchParams): void {
  const row = (q: number) => b.quantiles.find((r) => Math.abs(r.q - q) < 1e-9);
  const tiles: HTMLElement[] = [stat('requests', fmtCount(b.count), 'stat-count')];
  for (const m of METRICS) {
    for (const q of [0.5, 0.9, 0.99]) {
      const r = row(q);
      const v = r ? (r[`${m}_ms` as keyof typeof r] as number | null) : null;
      tiles.push(stat(`${m.toUpperCase()} ${levelName(q)}`, fmtMs(v), `stat-${m}-${levelName(q)}`));
    }
  }
  el.append(
    h('div', { class: 'stats' }, tiles),
    h(
      'p',
      null,
      h('a', { href: href('requests', withParams(scopeOf(p), { sort: 'e2e', order: 'desc' })), 'data-testid': 'link-slowest' }, 'Slowest requests →'),
      ' ',
      h('span', { class: 'muted' }, `window ${b.window.from} – ${b.window.to}`),
    ),
  );
}

function renderTenants(el: HTMLElement, g: Groups, p: URLSearchParams): void {
  const head = ['tenant', 'requests', '5xx', 'E2E p50', 'p90', 'p99', 'TTFT p50', 'p90', 'p99', 'TPOT p50', 'p90', 'p99'];
  const rows = g.groups.map((r) => {
    const label = r.value === '' ? h('span', { class: 'muted' }, '(none)') : r.value;
    const cell =
      r.value === ''
        ? h('td', null, label)
        : h('td', null, h('a', { href: href('overview', withParams(scopeOf(p), { tenant: r.value })) }, label));
    const ms = [r.e2e_ms, r.ttft_ms, r.tpot_ms].flatMap((l) => [0, 1, 2].map((i) => h('td', null, fmtMs(l[i] ?? null))));
    return h('tr', { 'data-tenant': r.value }, cell, h('td', null, fmtCount(r.count)), h('td', null, fmtCount(r.errors)), ms);
  });
  el.append(
    h(
      'div',
      { class: 'table-wrap' },
      h(
        'table',
        { class: 'num compact', 'data-testid': 'tenants-table' },
        h('thead', null, h('tr', null, head.map((c) => h('th', null, c)))),
        h('tbody', null, rows),
      ),
    ),
    h('p', { class: 'muted' }, `${fmtCount(g.count)} requests (ms)${g.truncated ? '; the 50 busiest tenants shown' : ''}`),
  );
}

function renderTimeseries(el: HTMLElement, t: Timeseries): void {
  if (t.count === 0) {
    el.append(h('p', { class: 'muted', 'data-testid': 'empty' }, 'No requests in this window.'));
    return;
  }
  const xs = t.buckets.map((b) => b.start_unix_s);
  const grid = h('div', { class: 'grid3' });
  el.append(h('p', { class: 'muted' }, `${fmtCount(t.count)} requests in ${t.buckets.length} buckets of ${t.step_s} s (UTC)`), grid);
  for (const m of METRICS) {
    const box = h('div', { class: 'chart', 'data-testid': `chart-${m}` });
    grid.append(h('div', null, h('h3', null, METRIC_TITLES[m]), box));
    const key = `${m}_ms` as 'e2e_ms' | 'ttft_ms' | 'tpot_ms';
    lineChart(
      box,
      xs,
      t.quantiles.map((q, i) => ({
        label: levelName(q),
        color: LEVEL_COLORS[i % LEVEL_COLORS.length],
        values: t.buckets.map((b) => b[key]?.[i] ?? null),
      })),
    );
  }
  const counts = h('div', { class: 'chart', 'data-testid': 'chart-count' });
  el.append(h('h3', null, 'Requests per bucket'), counts);
  countChart(
    counts,
    xs,
    t.buckets.map((b) => b.count),
  );
}

/** The latest render of each histogram section: an older one's late response is dropped. */
const histRenders = new WeakMap<HTMLElement, number>();

async function histogramSection(ctx: Ctx, el: HTMLElement, ap: URLSearchParams, p: URLSearchParams): Promise<void> {
  const metric = ['e2e', 'ttft', 'tpot'].includes(p.get('hist') ?? '') ? (p.get('hist') as string) : 'e2e';
  const scale = p.get('hist_scale') === 'linear' ? 'linear' : 'log';
  const mine = (histRenders.get(el) ?? 0) + 1;
  histRenders.set(el, mine);
  const body = h('div');
  const pick = (np: URLSearchParams) => {
    ctx.replaceUrl(href('overview', np));
    destroyChartsIn(el);
    el.replaceChildren();
    void histogramSection(ctx, el, ap, np);
  };
  const mSel = h('select', { 'aria-label': 'histogram metric', 'data-testid': 'hist-metric' });
  for (const m of METRICS) mSel.appendChild(new Option(m, m));
  mSel.value = metric;
  mSel.addEventListener('change', () => pick(withParams(p, { hist: mSel.value === 'e2e' ? null : mSel.value })));
  const sSel = h('select', { 'aria-label': 'histogram scale', 'data-testid': 'hist-scale' });
  for (const s of ['log', 'linear']) sSel.appendChild(new Option(`${s} buckets`, s));
  sSel.value = scale;
  sSel.addEventListener('change', () => pick(withParams(p, { hist_scale: sSel.value === 'log' ? null : sSel.value })));
  el.append(h('div', { class: 'toolbar' }, mSel, sSel), body);
  const q = new URLSearchParams(ap);
  q.set('metric', metric);
  q.set('scale', scale);
  q.set('buckets', '40');
  await fill(
    ctx,
    body,
    () => get<Histogram>('histogram', q, ctx.signal),
    (hg) => {
      if (histRenders.get(el) !== mine) return;
      if (hg.count === 0) {
        body.append(h('p', { class: 'muted' }, `No requests with ${metric} in this window.`));
        return;
      }
      const box = h('div', { class: 'chart', 'data-testid': 'chart-histogram' });
      body.append(
        box,
        h(
          'p',
          { class: 'muted' },
          `${fmtCount(hg.count)} requests, ${fmtMs(hg.min_ms)} – ${fmtMs(hg.max_ms)}, ${hg.scale} buckets`,
          metric === 'e2e' ? ' · click a bar for the requests at least that slow' : '',
        ),
      );
      histogramChart(
        box,
        hg.buckets,
        metric === 'e2e'
          ? (b) =>
              ctx.go(
                href(
                  'requests',
                  withParams(scopeOf(p), { min_e2e_ms: String(Math.floor(b.lo_ms * 1000) / 1000), sort: 'e2e', order: 'asc' }),
                ),
              )
          : undefined,
      );
    },
  );
}

function renderPhases(el: HTMLElement, b: Breakdown): void {
  if (b.count === 0) {
    el.append(h('p', { class: 'muted' }, 'No requests in this window.'));
    return;
  }
  const phaseVal = (r: Breakdown['quantiles'][number], ph: string) => r[`${ph}_ms` as keyof typeof r] as number | null;
  const scale = Math.max(
    ...b.quantiles.map((r) => Math.max(r.e2e_ms ?? 0, PHASES.reduce((s, ph) => s + (phaseVal(r, ph) ?? 0), 0))),
  );
  const rows = b.quantiles.map((r) => {
    const segs: Segment[] = PHASES.map((ph) => ({
      name: ph,
      value: phaseVal(r, ph),
      title: `${ph} ${levelName(r.q)}: ${fmtMs(phaseVal(r, ph))}`,
    }));
    return h(
      'div',
      { class: 'bar-row', 'data-testid': `phase-bar-${levelName(r.q)}` },
      h('span', { class: 'bar-label' }, levelName(r.q)),
      stackedBar(segs, scale, r.e2e_ms !== null ? { at: r.e2e_ms, title: `e2e ${levelName(r.q)}: ${fmtMs(r.e2e_ms)}` } : undefined),
      h('span', { class: 'bar-value' }, fmtMs(r.e2e_ms)),
    );
  });
  const cols = ['e2e', 'ttft', 'tpot', ...PHASES];
  const table = h(
    'table',
    { class: 'num compact', 'data-testid': 'quantile-table' },
    h('thead', null, h('tr', null, h('th', null, 'level'), cols.map((c) => h('th', null, c)))),
    h(
      'tbody',
      null,
      b.quantiles.map((r) =>
        h(
          'tr',
          null,
          h('th', null, levelName(r.q)),
          cols.map((c) => h('td', { 'data-testid': `q-${c}-${levelName(r.q)}` }, fmtMs(phaseVal(r, c)))),
        ),
      ),
    ),
  );
  el.append(
    legend([...PHASES]),
    h('div', { class: 'bars' }, rows),
    h(
      'p',
      { class: 'muted small' },
      "Each segment is that phase's own percentile (the phases of different requests), the tick the e2e percentile; they need not add up.",
    ),
    h('div', { class: 'table-wrap' }, table),
  );
}

function renderCohorts(el: HTMLElement, b: Breakdown): void {
  const c = b.slow_vs_median;
  if (!c) {
    el.append(h('p', { class: 'muted' }, 'No requests in this window.'));
    return;
  }
  const names = [...PHASES, 'unattributed'] as const;
  const mean = (co: typeof c.slow, n: string) => (n === 'unattributed' ? co.unattributed : co.phases[n as (typeof PHASES)[number]]);
  const diff = (n: string) => (n === 'unattributed' ? c.unattributed_diff : c.diff[n as (typeof PHASES)[number]]);
  const shareBar = (label: string, co: typeof c.slow, testid: string) =>
    h(
      'div',
      { class: 'bar-row', 'data-testid': testid },
      h('span', { class: 'bar-label' }, label),
      stackedBar(
        names.map((n) => ({ name: n, value: Math.max(0, mean(co, n).share), title: `${n}: ${fmtShare(mean(co, n).share)} (${fmtMs(mean(co, n).mean_ms)})` })),
        Math.max(1, names.reduce((s, n) => s + Math.max(0, mean(co, n).share), 0)),
      ),
      h('span', { class: 'bar-value' }, fmtMs(co.mean_e2e_ms)),
    );
  const table = h(
    'table',
    { class: 'num', 'data-testid': 'cohort-table' },
    h(
      'thead',
      null,
      h(
        'tr',
        null,
        h('th', null, 'phase'),
        h('th', null, 'median: mean'),
        h('th', null, 'share'),
        h('th', null, 'slow: mean'),
        h('th', null, 'share'),
        h('th', null, 'Δ mean'),
        h('th', null, 'Δ share'),
      ),
    ),
    h(
      'tbody',
      null,
      names.map((n) =>
        h(
          'tr',
          { class: c.largest_difference === n ? 'largest' : '', 'data-phase': n },
          h('th', null, n, c.largest_difference === n ? h('span', { class: 'badge' }, 'largest difference') : null),
          h('td', null, fmtMs(mean(c.median, n).mean_ms)),
          h('td', null, fmtShare(mean(c.median, n).share)),
          h('td', null, fmtMs(mean(c.slow, n).mean_ms)),
          h('td', null, fmtShare(mean(c.slow, n).share)),
          h('td', null, fmtDeltaMs(diff(n).mean_ms)),
          h('td', { 'data-testid': `cohort-delta-share-${n}` }, fmtPoints(diff(n).share)),
        ),
      ),
    ),
  );
  append(el, [
    h(
      'p',
      null,
      h('strong', null, 'slow: '),
      `${c.slow.definition} — ${fmtCount(c.slow.count)} requests, mean e2e ${fmtMs(c.slow.mean_e2e_ms)}`,
      h('br'),
      h('strong', null, 'median: '),
      `${c.median.definition} — ${fmtCount(c.median.count)} requests, mean e2e ${fmtMs(c.median.mean_e2e_ms)}`,
    ),
    legend([...names]),
    h('div', { class: 'bars' }, shareBar('median', c.median, 'cohort-bar-median'), shareBar(`slow`, c.slow, 'cohort-bar-slow')),
    table,
    c.largest_difference
      ? h('p', { 'data-testid': 'largest-difference' }, 'The slow requests differ most in ', h('strong', null, c.largest_difference), ` (${fmtPoints(diff(c.largest_difference).share)} of e2e).`)
      : null,
  ]);
}

/** GPU time, CPU-bound time and collective wait per request, when the window has any: their
 * percentiles and the slow cohort against the median one. They overlap the phases. */
function renderResources(el: HTMLElement, b: Breakdown): void {
  const counts = (b.samples as Record<string, unknown>).resources as Record<string, number> | undefined;
  if (!counts || RESOURCES.every((r) => !counts[r])) return;
  const c = b.slow_vs_median;
  const head = h(
    'tr',
    null,
    h('th', null, 'GPU side'),
    b.quantiles.map((q) => h('th', null, `p${levelName(q.q)}`)),
    c?.resources_diff ? [h('th', null, 'median: mean'), h('th', null, 'slow: mean'), h('th', null, 'Δ share')] : null,
  );
  const rows = RESOURCES.map((r) =>
    h(
      'tr',
      { 'data-resource': r },
      h('th', null, RESOURCE_LABELS[r], h('span', { class: 'muted small' }, ` (${fmtCount(counts[r] ?? 0)} requests)`)),
      b.quantiles.map((q) => h('td', null, fmtMs(q.resources?.[r] ?? null))),
      c?.resources_diff
        ? [
            h('td', null, fmtMs(c.median.resources?.[r].mean_ms ?? null)),
            h('td', null, fmtMs(c.slow.resources?.[r].mean_ms ?? null)),
            h('td', null, fmtPoints(c.resources_diff[r].share)),
          ]
        : null,
    ),
  );
  el.append(
    h('h3', null, 'GPU side'),
    h('p', { class: 'muted small' }, 'Per request, from the CUDA and NCCL hooks; these overlap the phases above (a step is both prefill or decode time and GPU time).'),
    h('div', { class: 'table-wrap' }, h('table', { class: 'num', 'data-testid': 'resources-table' }, h('thead', null, head), h('tbody', null, rows))),
  );
}

/** Token gaps, what the client saw beside what the engine did, when the window has any: TPOT
 * and the longest gap, wire and engine side by side. A wire gap the engine did not have was
 * spent delivering, not generating. */
function renderGaps(el: HTMLElement, b: Breakdown): void {
  const counts = (b.samples as Record<string, unknown>).gaps as Record<Gap, number> | undefined;
  if (!counts || (!counts.engine_tpot && !counts.max_gap)) return;
  const head = h('tr', null, h('th', null, 'token gaps'), b.quantiles.map((q) => h('th', null, `p${levelName(q.q)}`)));
  const row = (key: string, label: string, n: number, value: (q: Breakdown['quantiles'][number]) => number | null) =>
    h(
      'tr',
      { 'data-gap': key },
      h('th', null, label, h('span', { class: 'muted small' }, ` (${fmtCount(n)} requests)`)),
      b.quantiles.map((q) => h('td', null, fmtMs(value(q)))),
    );
  const rows = [
    row('tpot', 'TPOT, wire', b.samples.tpot ?? 0, (q) => q.tpot_ms),
    row('engine_tpot', 'TPOT, engine', counts.engine_tpot ?? 0, (q) => q.gaps?.engine_tpot ?? null),
    row('max_gap', 'longest gap, wire', counts.max_gap ?? 0, (q) => q.gaps?.max_gap ?? null),
    row('engine_max_gap', 'longest gap, engine', counts.engine_max_gap ?? 0, (q) => q.gaps?.engine_max_gap ?? null),
  ];
  el.append(
    h('h3', null, 'Token gaps: wire vs engine'),
    h('p', { class: 'muted small' }, 'Per request: what the client saw between tokens beside what the engine took between its outputs. A wire gap larger than the engine’s was spent in delivery.'),
    h('div', { class: 'table-wrap' }, h('table', { class: 'num', 'data-testid': 'gaps-table' }, h('thead', null, head), h('tbody', null, rows))),
  );
}
