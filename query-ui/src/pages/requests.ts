// Requests: the server-paged, sortable request list (slowest first by default); each row links
// to its trace.
import { type FilterValues, get, type RequestList, type RequestSummary } from '../api';
import { scopeControls } from '../controls';
import type { Ctx } from '../ctx';
import { h, section } from '../dom';
import { fmtCount, fmtMs, fmtTimeMs } from '../format';
import { fill } from '../load';
import { apiParams, href, resolveWindow, withParams } from '../state';

const SORTABLE = ['start', 'e2e', 'ttft', 'queue', 'prefill', 'decode'];
const LIMITS = ['25', '50', '100', '250'];

interface Column {
  key: string;
  label: string;
  cell: (r: RequestSummary) => string | Node;
  num?: boolean;
}

export async function requests(root: HTMLElement, ctx: Ctx): Promise<void> {
  const p = ctx.route.params;
  const w = resolveWindow(p);
  const go = (np: URLSearchParams) => ctx.go(href('requests', np));
  const sort = SORTABLE.includes(p.get('sort') ?? '') ? (p.get('sort') as string) : 'e2e';
  const order = p.get('order') === 'asc' ? 'asc' : 'desc';
  const limit = LIMITS.includes(p.get('limit') ?? '') ? (p.get('limit') as string) : '50';
  const offset = Math.max(0, Math.floor(Number(p.get('offset') ?? 0)) || 0);
  const minE2e = p.get('min_e2e_ms') ?? '';

  const controls = scopeControls(withParams(p, { offset: null }), w, go);
  const min = h('input', { type: 'number', min: 0, step: 'any', class: 'narrow', 'aria-label': 'min e2e (ms)', 'data-testid': 'min-e2e' });
  min.value = minE2e;
  const lim = h('select', { 'aria-label': 'rows per page', 'data-testid': 'limit' });
  for (const l of LIMITS) lim.appendChild(new Option(`${l} rows`, l));
  lim.value = limit;
  lim.addEventListener('change', () => go(withParams(p, { limit: lim.value === '50' ? null : lim.value, offset: null })));
  const extra = h(
    'form',
    {
      class: 'toolbar',
      onsubmit: (ev: Event) => {
        ev.preventDefault();
        go(withParams(p, { min_e2e_ms: min.value.trim() || null, offset: null }));
      },
    },
    h('label', null, 'e2e at least ', min, ' ms'),
    h('button', { type: 'submit' }, 'Apply'),
    lim,
  );
  controls.el.append(extra);

  const body = h('div', { class: 'body' });
  root.append(controls.el, section('Requests', 'requests', body));

  const q = apiParams(p, w);
  q.set('sort', sort);
  q.set('order', order);
  q.set('limit', limit);
  q.set('offset', String(offset));
  if (minE2e) q.set('min_e2e_ms', minE2e);
  const traceScope = new URLSearchParams({ from: String(w.from), to: String(w.to) });

  const fv = get<FilterValues>('filters', new URLSearchParams({ from: String(w.from), to: String(w.to) }), ctx.signal)
    .then((v) => {
      if (ctx.current()) controls.setFilters(v);
    })
    .catch(() => undefined);

  const columns: Column[] = [
    { key: 'start', label: 'start (UTC)', cell: (r) => fmtTimeMs(r.start_unix_ns) },
    {
      key: 'trace',
      label: 'trace',
      cell: (r) => h('a', { href: href(`trace/${encodeURIComponent(r.trace_id)}`, traceScope), class: 'mono', 'data-testid': 'trace-link' }, r.trace_id.slice(0, 12) + '…'),
    },
    { key: 'model', label: 'model', cell: (r) => r.model },
    { key: 'node', label: 'node', cell: (r) => r.node },
    { key: 'status', label: 'status', cell: (r) => String(r.status), num: true },
    { key: 'outcome', label: 'outcome', cell: (r) => r.outcome },
    { key: 'e2e', label: 'e2e', cell: (r) => fmtMs(r.e2e_ms), num: true },
    { key: 'ttft', label: 'ttft', cell: (r) => fmtMs(r.ttft_ms), num: true },
    { key: 'tpot', label: 'tpot', cell: (r) => fmtMs(r.tpot_ms), num: true },
    { key: 'frontend', label: 'frontend', cell: (r) => fmtMs(r.frontend_ms), num: true },
    { key: 'queue', label: 'queue', cell: (r) => fmtMs(r.queue_ms), num: true },
    { key: 'prefill', label: 'prefill', cell: (r) => fmtMs(r.prefill_ms), num: true },
    { key: 'decode', label: 'decode', cell: (r) => fmtMs(r.decode_ms), num: true },
    { key: 'delivery', label: 'delivery', cell: (r) => fmtMs(r.delivery_ms), num: true },
    { key: 'chunks', label: 'chunks', cell: (r) => String(r.chunks), num: true },
  ];

  const header = h(
    'tr',
    null,
    columns.map((c) => {
      if (!SORTABLE.includes(c.key)) return h('th', { class: c.num ? 'n' : '' }, c.label);
      const active = c.key === sort;
      const nextOrder = active && order === 'desc' ? 'asc' : 'desc';
      return h(
        'th',
        { class: `${c.num ? 'n ' : ''}sortable${active ? ' active' : ''}`, 'aria-sort': active ? (order === 'desc' ? 'descending' : 'ascending') : 'none' },
        h(
          'a',
          { href: href('requests', withParams(p, { sort: c.key, order: nextOrder, offset: null })), 'data-testid': `sort-${c.key}` },
          c.label,
          active ? (order === 'desc' ? ' ▼' : ' ▲') : '',
        ),
      );
    }),
  );

  await Promise.all([
    fv,
    fill(
      ctx,
      body,
      () => get<RequestList>('requests', q, ctx.signal),
      (list) => {
        // Paging keeps the window fixed: under a relative window ("last hour") each page
        // would otherwise end at a new "now", and rows would repeat or go missing.
        const paged = w.range ? withParams(p, { range: null, from: String(w.from), to: String(w.to) }) : p;
        const first = list.requests.length ? list.offset + 1 : 0;
        const last = list.offset + list.requests.length;
        const pager = h(
          'div',
          { class: 'pager' },
          list.offset > 0
            ? h('a', { href: href('requests', withParams(paged, { offset: String(Math.max(0, list.offset - Number(limit))) })), 'data-testid': 'prev' }, '← previous')
            : h('span', { class: 'muted' }, '← previous'),
          h('span', { 'data-testid': 'page-info' }, `rows ${fmtCount(first)}–${fmtCount(last)} of ${fmtCount(list.total)}`),
          list.next_offset !== null
            ? h('a', { href: href('requests', withParams(paged, { offset: String(list.next_offset) })), 'data-testid': 'next' }, 'next →')
            : h('span', { class: 'muted' }, 'next →'),
        );
        const rows = list.requests.map((r) => {
          const tr = h(
            'tr',
            { 'data-trace-id': r.trace_id, class: 'clickable' },
            columns.map((c) => {
              const v = c.cell(r);
              return h('td', { class: c.num ? 'n' : '', 'data-col': c.key, title: typeof v === 'string' ? v : null }, v);
            }),
          );
          tr.addEventListener('click', (ev) => {
            if ((ev.target as Element).closest('a')) return;
            ctx.go(href(`trace/${encodeURIComponent(r.trace_id)}`, traceScope));
          });
          return tr;
        });
        body.append(
          pager,
          h(
            'div',
            { class: 'table-wrap' },
            h(
              'table',
              { class: 'num requests', 'data-testid': 'requests-table' },
              h('thead', null, header),
              h('tbody', null, rows.length ? rows : h('tr', null, h('td', { colspan: columns.length, class: 'muted' }, 'No requests match.'))),
            ),
          ),
        );
      },
    ),
  ]);
}
