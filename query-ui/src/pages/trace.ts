// Trace: one request as a waterfall across processes and nodes (http.server root, frontend,
// queue, prefill, decode, stream_out, the engine steps with their batches), token chunk ticks,
// and every attribute of the clicked span.
import { get, type Endpoint, type Hop, type RequestDetail, type RequestExplanation, type Span, type Step, type Trace } from '../api';
import type { Ctx } from '../ctx';
import { h, replace, section } from '../dom';
import { fmtCount, fmtMs, fmtTimeMs, fmtTimeNs } from '../format';
import { fill } from '../load';
import { href } from '../state';

const SPAN_COLORS: Record<string, string> = {
  'http.server': '#7f7f7f',
  frontend: '#9ecae9',
  queue: '#f58518',
  prefill: '#54a24b',
  decode: '#4c78a8',
  stream_out: '#b279a2',
  'engine.step': '#e45756',
  'http.client': '#17becf',
};

function traceLink(id: string, text?: string): HTMLElement {
  return h('a', { href: href(`trace/${encodeURIComponent(id)}`), class: 'mono', 'data-testid': 'trace-link' }, text ?? id);
}

export async function trace(root: HTMLElement, ctx: Ctx): Promise<void> {
  const id = ctx.route.traceId ?? '';
  const body = h('div', { class: 'body' });
  root.append(h('h1', { class: 'trace-title' }, 'Trace ', h('span', { class: 'mono', 'data-testid': 'trace-id' }, id)), body);
  if (!/^[0-9a-fA-F]{32}$/.test(id)) {
    replace(body, h('p', { class: 'error', 'data-testid': 'section-error' }, 'A trace id is 32 hex digits.'));
    return;
  }
  const q = new URLSearchParams();
  for (const k of ['from', 'to', 'follow']) {
    const v = ctx.route.params.get(k);
    if (v) q.set(k, v);
  }
  await fill(
    ctx,
    body,
    () => get<Trace>(`traces/${id.toLowerCase()}`, q, ctx.signal),
    (t) => renderTrace(body, t, q),
  );
  // Why it was slow: a section of its own, so that a failure here leaves the trace shown.
  const why = h('div', { 'data-testid': 'explain' }, h('p', { class: 'muted loading' }, 'loading…'));
  body.insertBefore(section('Why was it slow', 'section-explain', why), body.children[1] ?? null);
  try {
    const window = new URLSearchParams(q);
    window.delete('follow');
    const x = await get<RequestExplanation>(`explain/${id.toLowerCase()}`, window, ctx.signal);
    replace(why);
    renderExplanation(why, x);
  } catch (e) {
    if (ctx.signal.aborted) return;
    replace(why, h('p', { class: 'muted' }, `No explanation: ${e instanceof Error ? e.message : String(e)}`));
  }
}

function renderExplanation(el: HTMLElement, x: RequestExplanation): void {
  el.append(h('p', { 'data-testid': 'explain-summary' }, x.summary));
  const list = h('ul', { class: 'explain-findings' });
  for (const f of x.findings.filter((f) => f.excess_ms > 0)) {
    list.append(h('li', { 'data-testid': 'explain-finding', 'data-cause': f.cause }, `+${fmtMs(f.excess_ms)} ${f.sentence}`));
  }
  el.append(list, h('p', { class: 'muted' }, `Typical: medians of ${fmtCount(x.reference_count)} requests of the same model in the hour around it.`));
}

function renderTrace(el: HTMLElement, t: Trace, q: URLSearchParams): void {
  const t0 = Math.min(...t.spans.map((s) => s.start_unix_ns), ...t.requests.map((r) => r.start_unix_ns));
  const rel = (ns: number) => (ns - t0) / 1e6;
  const end = Math.max(
    1e-3,
    ...t.spans.map((s) => s.offset_ms + s.duration_ms),
    ...t.requests.map((r) => rel(r.start_unix_ns) + r.e2e_ms),
  );
  const stepSpans = t.spans.filter((s) => s.name === 'engine.step');
  el.append(
    h(
      'p',
      { class: 'trace-meta' },
      h('span', { 'data-testid': 'trace-span-count' }, `${fmtCount(t.spans.length)} spans`),
      ' · ',
      `${t.requests.length} request row${t.requests.length === 1 ? '' : 's'}`,
      ' · ',
      `${fmtCount(stepSpans.length)} engine steps`,
      ' · nodes: ',
      t.nodes.join(', '),
      ' · ',
      h('span', { 'data-testid': 'trace-total' }, `total ${fmtMs(end)}`),
      t.spans_truncated ? h('span', { class: 'error-inline' }, ' (spans truncated)') : null,
      t.steps_truncated ? h('span', { class: 'error-inline' }, ' (steps truncated)') : null,
    ),
  );
  for (const r of t.requests) el.append(requestCard(r));
  if (t.hops?.length) el.append(section('Hops', 'section-hops', hopsSection(t, q)));
  for (const r of t.requests) {
    const g = tokenGaps(r);
    if (g) el.append(section('Token gaps: wire vs engine', 'section-token-gaps', g));
  }

  const details = h('div', { class: 'details', 'data-testid': 'span-details' }, h('p', { class: 'muted' }, 'Click a span for its attributes.'));
  const select = (s: Span, bar: HTMLElement) => {
    for (const b of el.querySelectorAll('.span-bar.selected')) b.classList.remove('selected');
    bar.classList.add('selected');
    renderDetails(details, s, t);
  };
  const wf = waterfall(t, end, rel, select);
  el.append(section('Waterfall', 'waterfall', wf), section('Span details', 'details', details));
  const root = t.spans.find((s) => s.name === 'http.server') ?? t.spans[0];
  if (root) {
    const bar = wf.querySelector<HTMLElement>(`.span-bar[data-span-id="${CSS.escape(root.span_id)}"]`);
    if (bar) select(root, bar);
  }
  el.append(stepsSection(t), batchedSection(t));
}

/** The response's usage counts, `–` for each the server did not report. */
function fmtTokens(r: RequestDetail): string {
  const n = (v: number | null | undefined) => (v == null ? '–' : String(v));
  return `${n(r.prompt_tokens)} / ${n(r.completion_tokens)}`;
}

function requestCard(r: RequestDetail): HTMLElement {
  const key: [string, string][] = [
    ['model', r.model],
    ['node / pid', `${r.node} / ${r.pid}`],
    ['request', `${r.method} ${r.path}`],
    ['status', `${r.status} ${r.outcome}`],
    ['start (UTC)', fmtTimeMs(r.start_unix_ns)],
    ['e2e', fmtMs(r.e2e_ms)],
    ['ttft', fmtMs(r.ttft_ms)],
    ['first text', fmtMs(r.first_text_ms ?? null)],
    ['tpot', fmtMs(r.tpot_ms)],
    ['frontend', fmtMs(r.frontend_ms)],
    ['queue', fmtMs(r.queue_ms)],
    ['prefill', fmtMs(r.prefill_ms)],
    ['decode', fmtMs(r.decode_ms)],
    ['delivery', fmtMs(r.delivery_ms)],
    ['chunks / steps', `${r.chunks} / ${r.engine_steps}`],
    ...gpuFields(r),
    ['tokens in / out', fmtTokens(r)],
    ['connection', fmtConnection(r)],
  ];
  const all = Object.entries(r).filter(([k]) => k !== 'chunk_offsets_ms' && k !== 'step_ids' && k !== 'engine_output_offsets_ms');
  return h(
    'section',
    { class: 'card request-card', 'data-testid': 'request-card' },
    h('dl', { class: 'kv' }, key.map(([k, v]) => [h('dt', null, k), h('dd', { 'data-field': k }, v)])),
    h(
      'details',
      null,
      h('summary', null, 'all fields'),
      h(
        'table',
        { class: 'attrs', 'data-testid': 'request-fields' },
        h(
          'tbody',
          null,
          all.map(([k, v]) => h('tr', null, h('th', null, k), h('td', null, v === null ? '—' : typeof v === 'object' ? JSON.stringify(v) : String(v)))),
          h('tr', null, h('th', null, 'step_ids'), h('td', null, r.step_ids.join(', '))),
          h('tr', null, h('th', null, 'chunk_offsets_ms'), h('td', null, r.chunk_offsets_ms.map((x) => x.toFixed(2)).join(', '))),
        ),
      ),
    ),
  );
}

/** A request's GPU side for its card (none when the CUDA hooks saw none of its steps). */
function gpuFields(r: RequestDetail): [string, string][] {
  if (r.gpu_ms == null) return [];
  const out: [string, string][] = [
    ['GPU (latency / cost)', `${fmtMs(r.gpu_ms)} / ${fmtMs(r.gpu_cost_ms ?? null)}${r.gpu_upper_bound_steps ? ` (${r.gpu_upper_bound_steps} steps upper bounds)` : ''}`],
    ['CPU-bound steps', fmtMs(r.gpu_host_bound_ms ?? null)],
  ];
  if (r.collectives != null) {
    out.push(['collectives (wait)', `${r.collectives} (${fmtMs(r.collective_wait_ms ?? null)})`]);
    out.push(['straggler', r.straggler_rank == null ? '—' : `rank ${r.straggler_rank} (+${fmtMs(r.straggler_lag_ms ?? null)})`]);
  }
  return out;
}

const GPU_CLASS_COLORS: Record<string, string> = {
  full_graph: '#72b7b2',
  piecewise: '#eeca3b',
  eager: '#ff9da6',
};

/** Rows shown of the token-gap table. */
const GAP_ROWS = 64;

function gapsOf(offsets: number[]): number[] {
  return offsets.slice(1).map((x, i) => x - offsets[i]);
}

function gapSummary(g: number[]): string {
  if (g.length === 0) return '—';
  const s = [...g].sort((a, b) => a - b);
  return `p50 ${fmtMs(s[Math.floor((s.length - 1) / 2)])}, max ${fmtMs(s[s.length - 1])}`;
}

/** For each engine output, the first wire token event written at or after it (each used once):
 * the event that delivered it, or null. */
export function matchOutputs(engine: number[], wire: number[]): (number | null)[] {
  const out: (number | null)[] = [];
  let i = 0;
  for (const e of engine) {
    while (i < wire.length && wire[i] < e) i++;
    out.push(i < wire.length ? wire[i++] : null);
  }
  return out;
}

/** A request's tokens as the engine produced them (outputs back in the frontend) and as the
 * client got them (the SSE token event that followed each output), side by side: the gaps on
 * each side and the delivery delay of each token; null without tokens. */
function tokenGaps(r: RequestDetail): HTMLElement | null {
  const engine = r.engine_output_offsets_ms ?? [];
  const wireAll = r.chunk_offsets_ms;
  const wire = engine.length > 0 ? matchOutputs(engine, wireAll) : wireAll;
  const times = engine.length > 0 ? engine : wireAll;
  if (times.length < 2 && engine.length === 0) return null;
  const n = Math.min(GAP_ROWS, times.length);
  const rows = [];
  const delays: number[] = [];
  for (let i = 0; i < times.length; i++) {
    const w = wire[i];
    if (engine.length > 0 && w !== null && w !== undefined) delays.push(w - engine[i]);
    if (i >= n) continue;
    const prevW = i > 0 ? wire[i - 1] : null;
    const wGap = w !== null && w !== undefined && prevW !== null && prevW !== undefined ? w - prevW : null;
    const eGap = engine.length > 0 && i > 0 ? engine[i] - engine[i - 1] : null;
    rows.push(
      h(
        'tr',
        { 'data-gap': String(i + 1) },
        h('td', null, String(i + 1)),
        h('td', { class: 'num' }, fmtMs(engine.length > 0 ? engine[i] : null)),
        h('td', { class: 'num' }, fmtMs(w ?? null)),
        h('td', { class: 'num' }, fmtMs(eGap)),
        h('td', { class: 'num' }, fmtMs(wGap)),
        h('td', { class: 'num' }, engine.length > 0 && w !== null && w !== undefined ? fmtMs(w - engine[i]) : '—'),
      ),
    );
  }
  return h(
    'div',
    { 'data-testid': 'token-gaps' },
    h(
      'p',
      { class: 'muted' },
      `gaps — engine: ${gapSummary(gapsOf(engine))} · wire (all SSE token events): ${gapSummary(gapsOf(wireAll))}`,
      engine.length > 0 ? ` · delivery delay (engine output → its SSE event): ${gapSummary(delays)}` : '',
      n < times.length ? ` · first ${n} tokens shown` : '',
    ),
    h(
      'table',
      { class: 'attrs' },
      h(
        'thead',
        null,
        h('tr', null, ['token', 'engine', 'wire', 'engine gap', 'wire gap', 'delay'].map((c) => h('th', null, c))),
      ),
      h('tbody', null, rows),
    ),
  );
}

function niceStep(total: number, n: number): number {
  const raw = total / n;
  const p = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 5, 10]) if (m * p >= raw) return m * p;
  return 10 * p;
}

function waterfall(t: Trace, total: number, rel: (ns: number) => number, onSelect: (s: Span, bar: HTMLElement) => void): HTMLElement {
  const pct = (ms: number) => `${Math.max(0, Math.min(100, (ms / total) * 100))}%`;
  const wf = h('div', { class: 'waterfall' });

  // Time axis.
  const axis = h('div', { class: 'wf-track wf-axis' });
  const step = niceStep(total, 6);
  for (let x = 0; x <= total + 1e-9; x += step) {
    const tick = h('span', { class: 'axis-tick' }, fmtMs(x));
    tick.style.left = pct(x);
    axis.appendChild(tick);
  }
  wf.append(h('div', { class: 'wf-row wf-head' }, h('div', { class: 'wf-label' }, 'span (node)'), axis));

  // Tree order: children by start; the engine steps of a parent share one lane after its other children.
  const ids = new Set(t.spans.map((s) => s.span_id));
  const children = new Map<string, Span[]>();
  const roots: Span[] = [];
  for (const s of t.spans) {
    if (s.parent_span_id && ids.has(s.parent_span_id) && s.parent_span_id !== s.span_id) {
      const list = children.get(s.parent_span_id) ?? [];
      list.push(s);
      children.set(s.parent_span_id, list);
    } else roots.push(s);
  }
  const byStart = (a: Span, b: Span) => a.offset_ms - b.offset_ms || b.duration_ms - a.duration_ms;
  const bar = (s: Span, cls = 'span-bar') => {
    const b = h('div', {
      class: cls,
      role: 'button',
      tabindex: 0,
      'data-span-id': s.span_id,
      'data-name': s.name,
      'data-testid': 'span-bar',
      title: `${s.name}: ${fmtMs(s.duration_ms)} at +${fmtMs(s.offset_ms)}`,
    });
    b.style.left = pct(s.offset_ms);
    b.style.width = `max(2px, ${pct(s.duration_ms)})`;
    b.style.background = SPAN_COLORS[s.name] ?? '#8c6d31';
    const pick = () => onSelect(s, b);
    b.addEventListener('click', pick);
    b.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' || e.key === ' ') pick();
    });
    return b;
  };
  const chunkTicks = (track: HTMLElement, s: Span) => {
    const r = t.requests.find((x) => x.node === s.node && x.pid === s.pid) ?? t.requests[0];
    if (!r) return;
    const base = rel(r.start_unix_ns);
    for (const off of r.chunk_offsets_ms) {
      const tick = h('div', { class: 'chunk-tick', 'data-testid': 'chunk-tick', title: `chunk at +${fmtMs(base + off)}` });
      tick.style.left = pct(base + off);
      track.appendChild(tick);
    }
  };
  const hasStreamOut = t.spans.some((s) => s.name === 'stream_out');
  const visited = new Set<string>();
  const row = (s: Span, depth: number) => {
    if (visited.has(s.span_id)) return;
    visited.add(s.span_id);
    const track = h('div', { class: 'wf-track' });
    const b = bar(s);
    track.appendChild(b);
    const text = h('span', { class: 'bar-text', 'data-testid': 'span-duration' }, fmtMs(s.duration_ms));
    text.style.left = `calc(${pct(s.offset_ms + s.duration_ms)} + 4px)`;
    if (s.offset_ms + s.duration_ms > total * 0.8) {
      text.style.left = '';
      text.style.right = `calc(${pct(total - s.offset_ms)} + 4px)`;
    }
    track.appendChild(text);
    if (s.name === 'stream_out' || (s.name === 'decode' && !hasStreamOut)) chunkTicks(track, s);
    const clockNote = s.clock_error_ns !== undefined ? ` ±${fmtMs(s.clock_error_ns / 1e6)}` : '';
    const label = h(
      'div',
      { class: 'wf-label', title: `${s.name} on ${s.node} (pid ${s.pid})${clockNote ? `, placed on the first node's clock${clockNote}` : ''}` },
      h('span', { class: 'wf-name' }, s.name),
      h('span', { class: 'wf-node', 'data-testid': clockNote ? 'clock-error' : null }, ` ${s.node}${clockNote}`),
    );
    label.style.paddingLeft = `${4 + depth * 14}px`;
    wf.append(h('div', { class: 'wf-row', 'data-span-id': s.span_id, 'data-name': s.name }, label, track));
    const kids = (children.get(s.span_id) ?? []).sort(byStart);
    for (const k of kids.filter((k) => k.name !== 'engine.step')) row(k, depth + 1);
    const steps = kids.filter((k) => k.name === 'engine.step');
    if (steps.length) {
      const lane = h('div', { class: 'wf-track' });
      for (const st of steps) {
        visited.add(st.span_id);
        const sb = bar(st, 'span-bar step');
        sb.title = `engine step ${st.attributes['engine.step_id'] ?? '?'}: ${fmtMs(st.duration_ms)}, batch ${st.attributes['engine.batch_size'] ?? '?'}`;
        lane.appendChild(sb);
      }
      const label = h('div', { class: 'wf-label' }, h('span', { class: 'wf-name' }, `engine.step × ${steps.length}`), h('span', { class: 'wf-node' }, ` ${steps[0].node}`));
      label.style.paddingLeft = `${4 + (depth + 1) * 14}px`;
      wf.append(h('div', { class: 'wf-row wf-steps', 'data-name': 'engine.step' }, label, lane));
      gpuLanes(steps, depth + 1);
    }
  };
  // Under the engine steps: their GPU time by class (hatched when the host paced it), then the
  // collectives' straggler per step, when the hooks saw them.
  const gpuLanes = (steps: Span[], depth: number) => {
    const withGpu = steps.filter((st) => st.attributes['gpu.ms'] !== undefined);
    if (withGpu.length) {
      const lane = h('div', { class: 'wf-track', 'data-testid': 'gpu-lane' });
      for (const st of withGpu) {
        const ms = Number(st.attributes['gpu.ms']);
        const cls = st.attributes['gpu.class'] ?? '';
        const hostBound = st.attributes['gpu.host_bound'] === 'true';
        const g = h('div', { class: `gpu-bar${hostBound ? ' host-bound' : ''}`, 'data-testid': 'gpu-bar', 'data-class': cls });
        g.style.left = pct(st.offset_ms);
        g.style.width = `max(2px, ${pct(Math.min(ms, st.duration_ms))})`;
        g.style.backgroundColor = GPU_CLASS_COLORS[cls] ?? '#bab0ac';
        g.title = `GPU ${fmtMs(ms)} (${cls}${hostBound ? ', CPU-bound' : ''}${st.attributes['gpu.upper_bound'] === 'true' ? ', upper bound' : ''}) in a ${fmtMs(st.duration_ms)} step`;
        lane.appendChild(g);
      }
      const label = h('div', { class: 'wf-label' }, h('span', { class: 'wf-name' }, 'GPU'), h('span', { class: 'wf-node' }, ' by class'));
      label.style.paddingLeft = `${4 + depth * 14}px`;
      wf.append(h('div', { class: 'wf-row wf-gpu', 'data-name': 'gpu' }, label, lane));
    }
    const withColl = steps.filter((st) => st.attributes['nccl.straggler_rank'] !== undefined);
    if (withColl.length) {
      const lane = h('div', { class: 'wf-track', 'data-testid': 'collective-lane' });
      for (const st of withColl) {
        const lag = Number(st.attributes['nccl.straggler_lag_ms']);
        const m = h('div', { class: 'collective-mark', 'data-testid': 'collective-mark', 'data-rank': st.attributes['nccl.straggler_rank'] });
        m.style.left = pct(st.offset_ms);
        m.style.width = `max(2px, ${pct(Math.min(lag, st.duration_ms))})`;
        m.title = `${st.attributes['nccl.collectives']} collectives waited ${fmtMs(Number(st.attributes['nccl.wait_ms']))}; rank ${st.attributes['nccl.straggler_rank']} was last (+${fmtMs(lag)})`;
        m.textContent = `r${st.attributes['nccl.straggler_rank']}`;
        lane.appendChild(m);
      }
      const label = h('div', { class: 'wf-label' }, h('span', { class: 'wf-name' }, 'collectives'), h('span', { class: 'wf-node' }, ' straggler rank'));
      label.style.paddingLeft = `${4 + depth * 14}px`;
      wf.append(h('div', { class: 'wf-row wf-collectives', 'data-name': 'collectives' }, label, lane));
    }
  };
  for (const r of roots.sort(byStart)) row(r, 0);
  return wf;
}

/** A clock offset in ms with its sign. */
function fmtOffsetNs(ns: number): string {
  return `${ns < 0 ? '−' : '+'}${fmtMs(Math.abs(ns) / 1e6)}`;
}

/** The calls this trace made and the call it served, with both halves, network times and the
 * bounds of the two nodes' clock offset; a link to one waterfall across them. */
function hopsSection(t: Trace, q: URLSearchParams): HTMLElement {
  const following = q.get('follow') === 'hops';
  const other = new URLSearchParams(q);
  if (following) other.delete('follow');
  else other.set('follow', 'hops');
  const toggle = h(
    'a',
    { href: href(`trace/${encodeURIComponent(t.trace_id)}`, other), 'data-testid': 'follow-hops' },
    following ? 'Show this trace only' : 'Follow the hops: one waterfall across nodes',
  );
  const half = (x: Hop['client']) => (x ? `${x.node} · pid ${x.pid}` : '— (not traced)');
  const rows = (t.hops ?? []).map((hp) => {
    const peer = hp.direction === 'outbound' ? hp.server : hp.client;
    const peerTrace = peer?.trace_id && peer.trace_id !== t.trace_id ? traceLink(peer.trace_id, peer.trace_id.slice(0, 12) + '…') : '—';
    const clock =
      hp.offset_lo_ns === null || hp.offset_hi_ns === null
        ? '—'
        : hp.client?.node === hp.server?.node
          ? 'same node'
          : `${fmtOffsetNs(hp.offset_lo_ns)} … ${fmtOffsetNs(hp.offset_hi_ns)}${hp.offset_consistent ? '' : ' (inconsistent)'}`;
    return h(
      'tr',
      { 'data-hop-id': hp.hop_id, 'data-direction': hp.direction },
      h('td', null, hp.direction),
      h('td', { 'data-col': 'link' }, hp.link ?? '—'),
      h('td', null, half(hp.client)),
      h('td', null, half(hp.server)),
      h('td', null, peerTrace),
      h('td', { class: 'num' }, hp.to_server_ms === null ? '—' : fmtMs(hp.to_server_ms)),
      h('td', { class: 'num' }, hp.from_server_ms === null ? '—' : fmtMs(hp.from_server_ms)),
      h('td', { 'data-col': 'clock', title: `from ${hp.offset_samples} exchanges between the two nodes` }, clock),
    );
  });
  const table = h(
    'table',
    { class: 'data', 'data-testid': 'hops-table' },
    h(
      'thead',
      null,
      h('tr', null, ...['direction', 'linked by', 'caller', 'server', 'other trace', 'to server', 'back', 'server clock − caller clock'].map((c) => h('th', null, c))),
    ),
    h('tbody', null, ...rows),
  );
  const clocks = following && t.clocks?.length
    ? h('p', { class: 'muted', 'data-testid': 'node-clocks' }, 'Clocks against ', t.clocks[0].node, ': ', t.clocks.slice(1).map((c) => `${c.node} ${fmtOffsetNs(c.offset_lo_ns)} … ${fmtOffsetNs(c.offset_hi_ns)}`).join(', ') || 'one node only', '. Spans of other nodes are placed on its clock (± half the bounds).')
    : null;
  return h('div', null, h('p', null, toggle), table, clocks);
}

function renderDetails(el: HTMLElement, s: Span, t: Trace): void {
  const fields: [string, string | Node][] = [
    ['name', s.name],
    ['span_id', s.span_id],
    ['parent_span_id', s.parent_span_id || '—'],
    ['node', s.node],
    ['pid', String(s.pid)],
    ['start (UTC)', fmtTimeNs(s.start_unix_ns)],
    ['offset', fmtMs(s.offset_ms)],
    ['duration', fmtMs(s.duration_ms)],
  ];
  const stepId = s.attributes['engine.step_id'];
  const step: Step | undefined =
    s.name === 'engine.step' && stepId !== undefined ? t.steps.find((x) => x.node === s.node && String(x.step_id) === stepId) : undefined;
  replace(
    el,
    h('h3', null, s.name),
    h('table', { class: 'attrs' }, h('tbody', null, fields.map(([k, v]) => h('tr', null, h('th', null, k), h('td', { 'data-field': k }, v))))),
    h('h4', null, 'Attributes'),
    Object.keys(s.attributes).length
      ? h(
          'table',
          { class: 'attrs', 'data-testid': 'span-attributes' },
          h(
            'tbody',
            null,
            Object.entries(s.attributes).map(([k, v]) => h('tr', null, h('th', null, k), h('td', { 'data-attr': k }, v))),
          ),
        )
      : h('p', { class: 'muted' }, 'none'),
    s.links.length
      ? [h('h4', null, 'Links'), h('ul', null, s.links.map((l) => h('li', null, traceLink(l.trace_id), ` span ${l.span_id}`)))]
      : null,
    step ? [h('h4', null, 'Engine step'), stepSummary(step)] : null,
  );
}

function sharedList(st: Step): HTMLElement {
  const shown = st.shared_with.slice(0, 8);
  return h(
    'span',
    { class: 'shared' },
    `${st.shared_with_count} other${st.shared_with_count === 1 ? '' : 's'}`,
    shown.length ? ': ' : '',
    shown.map((id, i) => [i ? ', ' : '', traceLink(id, id.slice(0, 8))]),
    st.shared_with_count > shown.length ? ` +${st.shared_with_count - shown.length} more` : '',
  );
}

function stepSummary(st: Step): HTMLElement {
  return h(
    'p',
    null,
    `step ${st.step_id} on ${st.node}: ${fmtMs(st.duration_ms)}, batch size ${st.batch_size ?? '—'}; `,
    sharedList(st),
  );
}

function stepsSection(t: Trace): HTMLElement {
  if (!t.steps.length) return section('Engine steps', 'steps', h('p', { class: 'muted' }, 'No engine steps (the engine was not followed).'));
  return section(
    'Engine steps',
    'steps',
    h('p', { class: 'muted' }, 'Each step is one forward pass of the engine; every request in its batch waited for it.'),
    h(
      'div',
      { class: 'table-wrap' },
      h(
        'table',
        { class: 'num', 'data-testid': 'steps-table' },
        h(
          'thead',
          null,
          h(
            'tr',
            null,
            h('th', null, 'step'),
            h('th', { class: 'left' }, 'node'),
            ['offset', 'duration', 'batch size', 'GPU', 'launches'].map((c) => h('th', null, c)),
            h('th', { class: 'left' }, 'GPU class'),
            h('th', { class: 'left' }, 'straggler'),
            h('th', { class: 'left' }, 'other requests in this step'),
          ),
        ),
        h(
          'tbody',
          null,
          t.steps.map((st) =>
            h(
              'tr',
              { 'data-step-id': String(st.step_id) },
              h('td', null, String(st.step_id)),
              h('td', { class: 'left' }, st.node),
              h('td', null, fmtMs(st.offset_ms)),
              h('td', { 'data-col': 'duration' }, fmtMs(st.duration_ms)),
              h('td', { 'data-col': 'batch' }, st.batch_size === null ? '—' : String(st.batch_size)),
              h('td', { 'data-col': 'gpu' }, st.gpu ? fmtMs(st.gpu.gpu_ms) : '—'),
              h('td', { 'data-col': 'launches' }, st.gpu ? `${st.gpu.graph_launches} / ${st.gpu.kernel_launches}` : '—'),
              h('td', { class: 'left', 'data-col': 'gpu-class' }, st.gpu ? `${st.gpu.class}${st.gpu.host_bound ? ', CPU-bound' : ''}${st.gpu.ranks > 1 ? `, ${st.gpu.ranks} ranks` : ''}` : '—'),
              h('td', { class: 'left', 'data-col': 'straggler' }, st.collectives ? `rank ${st.collectives.straggler_rank} (+${fmtMs(st.collectives.straggler_lag_ms)})` : '—'),
              h('td', { class: 'left' }, sharedList(st)),
            ),
          ),
        ),
      ),
    ),
  );
}

function batchedSection(t: Trace): HTMLElement {
  if (!t.batched_with.length) return section('Batched with', 'batched', h('p', { class: 'muted' }, 'No other stored request shared an engine step.'));
  return section(
    'Batched with',
    'batched',
    h(
      'div',
      { class: 'table-wrap' },
      h(
        'table',
        { class: 'num', 'data-testid': 'batched-table' },
        h(
          'thead',
          null,
          h('tr', null, h('th', null, 'trace'), h('th', { class: 'left' }, 'model'), ['start (UTC)', 'e2e', 'ttft', 'shared steps'].map((c) => h('th', null, c))),
        ),
        h(
          'tbody',
          null,
          t.batched_with.map((n) =>
            h(
              'tr',
              null,
              h('td', { class: 'left' }, traceLink(n.trace_id, n.trace_id.slice(0, 12) + '…')),
              h('td', { class: 'left' }, n.model),
              h('td', null, fmtTimeMs(n.start_unix_ns)),
              h('td', null, fmtMs(n.e2e_ms)),
              h('td', null, fmtMs(n.ttft_ms)),
              h('td', null, String(n.shared_steps)),
            ),
          ),
        ),
      ),
    ),
  );
}

/** `client → server` with the first bytes' TCP sequence numbers (how hops on two hosts are joined). */
function fmtConnection(r: RequestDetail): string {
  const ep = (e: Endpoint | null, text: string) => (e ? (e.ip.includes(':') ? `[${e.ip}]:${e.port}` : `${e.ip}:${e.port}`) : text || '?');
  const seq = (n: number | null) => (n === null ? '—' : String(n));
  return `${ep(r.client_endpoint, r.client)} → ${ep(r.server_endpoint, r.server)} (seq req ${seq(r.req_tcp_seq)}, resp ${seq(r.resp_tcp_seq)})`;
}
