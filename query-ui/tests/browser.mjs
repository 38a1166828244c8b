#!/usr/bin/env node
// Browser test of the inferscope UI: headless Debian Chromium driven by playwright-core, against a
// running aggregator. Plain Node, no test runner: one line per check, `N passed, N failed` at the
// end, exit status 1 on any failure.
//
//   node query-ui/tests/browser.mjs --base http://127.0.0.1:7071 --out target/ui-artifacts \
//        [--from UNIX_S --to UNIX_S] [--hostile TRACE_ID] [--gpu TRACE_ID] [--hops TRACE_ID]
//        [--compare-model MODEL]
//   node query-ui/tests/browser.mjs --base … --out … --perf --from … --to … [--bound-ms 5000]
//
// Functional mode walks overview → slowest requests → the slowest request's trace, checks the
// numbers shown against the API, renders the hostile trace (attributes with markup) and checks
// that it stays text, and opens the compare page; screenshots go to --out. Perf mode measures
// the time until the overview and the requests table are rendered (fresh page loads) and checks
// them against --bound-ms.
import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { chromium } from 'playwright-core';

// ---------------------------------------------------------------------------------------------
// Arguments.
const args = {};
for (let i = 2; i < process.argv.length; i++) {
  const a = process.argv[i];
  if (!a.startsWith('--')) continue;
  const key = a.slice(2);
  const next = process.argv[i + 1];
  if (next === undefined || next.startsWith('--')) args[key] = true;
  else {
    args[key] = next;
    i++;
  }
}
const BASE = String(args.base ?? process.env.INFERSCOPE_UI_BASE ?? 'http://127.0.0.1:7071').replace(/\/$/, '');
const OUT = resolve(String(args.out ?? process.env.INFERSCOPE_ARTIFACTS ?? 'target/ui-artifacts'));
const CHROMIUM = String(args.chromium ?? process.env.INFERSCOPE_CHROMIUM ?? '/usr/bin/chromium');
const BOUND_MS = Number(args['bound-ms'] ?? 5000);
const TIMEOUT = Number(args['timeout-ms'] ?? 30000);
mkdirSync(OUT, { recursive: true });

// ---------------------------------------------------------------------------------------------
// Checks.
let passed = 0;
let failed = 0;
function check(name, ok, detail = '') {
  if (ok) {
    passed++;
    console.log(`ok   ${name}${detail ? ` (${detail})` : ''}`);
  } else {
    failed++;
    console.log(`FAIL ${name}${detail ? `: ${detail}` : ''}`);
  }
  return ok;
}
function eq(name, got, want) {
  return check(name, got === want, got === want ? String(got) : `shown ${JSON.stringify(got)}, expected ${JSON.stringify(want)}`);
}

// The UI's formatting rules (query-ui/src/format.ts).
function fmtMs(v) {
  if (v === null || v === undefined || !Number.isFinite(v)) return '—';
  const a = Math.abs(v);
  const d = a < 1 ? 3 : a < 100 ? 2 : a < 10000 ? 1 : 0;
  return `${(Number(v.toFixed(d)) === 0 ? 0 : v).toFixed(d)} ms`;
}
function fmtCount(n) {
  return String(Math.round(n)).replace(/\B(?=(\d{3})+(?!\d))/g, ',');
}

async function api(path, params = {}) {
  const qs = new URLSearchParams(Object.entries(params).filter(([, v]) => v !== undefined && v !== '')).toString();
  const r = await fetch(`${BASE}/api/v1/${path}${qs ? `?${qs}` : ''}`);
  if (!r.ok) throw new Error(`API ${path}: ${r.status} ${await r.text()}`);
  return r.json();
}

// ---------------------------------------------------------------------------------------------
// Browser.
const profile = mkdtempSync(join(tmpdir(), 'inferscope-ui-chromium-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: CHROMIUM,
  headless: true,
  args: [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--no-first-run',
  ],
  viewport: { width: 1480, height: 1000 },
  timezoneId: 'UTC',
});
const page = context.pages()[0] ?? (await context.newPage());
page.setDefaultTimeout(TIMEOUT);
const pageErrors = [];
page.on('pageerror', (e) => pageErrors.push(`pageerror: ${e.message}`));
page.on('console', (m) => {
  if (m.type() === 'error') pageErrors.push(`console.error: ${m.text()}`);
});
page.on('dialog', (d) => {
  pageErrors.push(`dialog opened: ${d.message()}`);
  void d.dismiss();
});

/** Loads `hash` as a fresh document and waits until the page says it is rendered. */
async function load(hash, pageName) {
  await page.goto('about:blank');
  const t0 = Date.now();
  await page.goto(`${BASE}/${hash}`);
  await page.waitForSelector(`#app[data-page="${pageName}"][data-state="ready"]`);
  return Date.now() - t0;
}

/** Waits for the render that follows a click (a new generation, rendered). */
async function afterClick(locator, pageName) {
  const gen = Number(await page.getAttribute('#app', 'data-gen'));
  await locator.click();
  await page.waitForFunction(
    ([g, p]) => {
      const app = document.getElementById('app');
      return Number(app.dataset.gen) > g && app.dataset.state === 'ready' && app.dataset.page === p;
    },
    [gen, pageName],
  );
}

async function text(sel) {
  return (await page.locator(sel).first().textContent())?.trim();
}

async function noSectionErrors(where) {
  const errs = await page.locator('[data-testid="section-error"], [data-testid="page-error"]').allTextContents();
  check(`${where}: no error shown`, errs.length === 0, errs.join(' | '));
}

async function shot(name) {
  const path = join(OUT, `${name}.png`);
  await page.screenshot({ path, fullPage: true });
  console.log(`     screenshot ${path}`);
}

async function xssClean(where) {
  const x = await page.evaluate(() => typeof window.__xss);
  eq(`${where}: window.__xss is undefined`, x, 'undefined');
  const imgs = await page.locator('img[src="x"]').count();
  eq(`${where}: no injected <img>`, imgs, 0);
}

// ---------------------------------------------------------------------------------------------
/** Pixels of the p50 series colour (LEVEL_COLORS[0], #4c78a8) on a chart's canvas. */
async function seriesPixels(testid) {
  return page.evaluate((id) => {
    const c = document.querySelector(`[data-testid="${id}"] canvas`);
    if (!c) return -1;
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let n = 0;
    for (let i = 0; i < d.length; i += 4) {
      const near = Math.abs(d[i] - 0x4c) < 24 && Math.abs(d[i + 1] - 0x78) < 24 && Math.abs(d[i + 2] - 0xa8) < 24;
      if (near && d[i + 3] > 128) n++;
    }
    return n;
  }, testid);
}

async function fewBuckets(from, to) {
  const wide = { from: String(Number(from) - 6 * 3600), to: String(Number(to) + 6 * 3600) };
  const ts = await api('timeseries', wide);
  const filled = ts.buckets.filter((b) => b.count > 0).length;
  await load(`#/overview?from=${wide.from}&to=${wide.to}`, 'overview');
  await noSectionErrors('overview (wide window)');
  for (const m of ['e2e', 'ttft']) {
    const px = await seriesPixels(`chart-${m}`);
    check(`overview: ${m} p50 drawn with ${filled} of ${ts.buckets.length} buckets filled`, ts.buckets.length >= 60 && filled <= 3 && px > 0, `${px} px`);
  }
  await shot('overview-wide');
}

async function functional() {
  const from = args.from;
  const to = args.to;
  if (!from || !to) throw new Error('--from and --to (Unix seconds) are required');
  const scope = `from=${from}&to=${to}`;

  // Overview.
  const bd = await api('breakdown', { from, to });
  const ts = await api('timeseries', { from, to });
  const ms = await load(`#/overview?${scope}`, 'overview');
  console.log(`     overview rendered in ${ms} ms`);
  await noSectionErrors('overview');
  const q = (lv) => bd.quantiles.find((r) => Math.abs(r.q - lv) < 1e-9);
  eq('overview: request count', await text('[data-testid="stat-count"]'), fmtCount(bd.count));
  eq('overview: p99 e2e', await text('[data-testid="stat-e2e-p99"]'), fmtMs(q(0.99).e2e_ms));
  eq('overview: p50 ttft', await text('[data-testid="stat-ttft-p50"]'), fmtMs(q(0.5).ttft_ms));
  eq('overview: p90 tpot', await text('[data-testid="stat-tpot-p90"]'), fmtMs(q(0.9).tpot_ms));
  eq('overview: p99.9 queue (table)', await text('[data-testid="q-queue-p99.9"]'), fmtMs(q(0.999).queue_ms));
  eq('overview: p99 decode (table)', await text('[data-testid="q-decode-p99"]'), fmtMs(q(0.99).decode_ms));
  for (const m of ['e2e', 'ttft', 'tpot', 'histogram']) {
    check(`overview: ${m} chart drawn`, (await page.locator(`[data-testid="chart-${m}"] canvas`).count()) > 0);
  }
  eq('overview: timeseries total', ts.buckets.reduce((s, b) => s + b.count, 0), bd.count);
  eq('overview: one phase bar per percentile', await page.locator('[data-testid^="phase-bar-"]').count(), bd.quantiles.length);
  const segs = await page.locator('[data-testid="phase-bar-p99"] .seg').count();
  check('overview: p99 phase bar has segments', segs > 0, `${segs} segments`);
  eq('overview: cohort rows (5 phases + unattributed)', await page.locator('[data-testid="cohort-table"] tbody tr').count(), 6);
  if (bd.slow_vs_median) {
    const d = bd.slow_vs_median.diff.queue.share * 100;
    eq('overview: queue Δ share', await text('[data-testid="cohort-delta-share-queue"]'), `${d > 0 ? '+' : ''}${d.toFixed(1)} pp`);
  }
  // The GPU side: a table of its own when, and only when, some request has one.
  const res = bd.samples.resources ?? {};
  const hasGpu = ['gpu', 'gpu_host_bound', 'collective_wait'].some((r) => (res[r] ?? 0) > 0);
  eq('overview: GPU side table iff GPU data', (await page.locator('[data-testid="resources-table"]').count()) > 0, hasGpu);
  if (hasGpu) {
    eq('overview: GPU side rows', await page.locator('[data-testid="resources-table"] tbody tr').count(), 3);
    eq('overview: p50 GPU time', await text('[data-testid="resources-table"] tr[data-resource="gpu"] td'), fmtMs(q(0.5).resources.gpu));
  }
  // Token gaps, wire beside engine: the real engine's streams have both.
  const gaps = bd.samples.gaps ?? {};
  check('overview: engine gaps known', (gaps.engine_tpot ?? 0) > 0);
  eq('overview: token gap rows', await page.locator('[data-testid="gaps-table"] tbody tr').count(), 4);
  eq('overview: p50 engine TPOT', await text('[data-testid="gaps-table"] tr[data-gap="engine_tpot"] td'), fmtMs(q(0.5).gaps.engine_tpot));
  eq('overview: p50 wire gap', await text('[data-testid="gaps-table"] tr[data-gap="max_gap"] td'), fmtMs(q(0.5).gaps.max_gap));
  // Tenants (here only the hostile request has one): a dropdown and a table of their own,
  // one row per group of /api/v1/groups, the markup shown as text.
  const fvals = await api('filters', { from, to });
  if ((fvals.tenants ?? []).length) {
    const g = await api('groups', { from, to, by: 'tenant', quantiles: '0.5,0.9,0.99' });
    eq('overview: one row per tenant', await page.locator('[data-testid="tenants-table"] tbody tr').count(), g.groups.length);
    check('overview: tenant dropdown', (await page.locator('[data-testid="filter-tenant"]').count()) === 1);
    await xssClean('overview tenants');
  }
  await shot('overview');

  // Histogram metric switch keeps the URL linkable.
  await page.locator('[data-testid="hist-metric"]').selectOption('ttft');
  await page.waitForFunction(() => location.hash.includes('hist=ttft'));
  await page.waitForSelector('[data-testid="chart-histogram"] canvas');
  check('overview: histogram metric in the URL', page.url().includes('hist=ttft'));

  // A wide window whose requests fall in one or two of its many buckets still draws them.
  await fewBuckets(from, to);
  await load(`#/overview?${scope}`, 'overview');

  // → Slowest requests.
  const list = await api('requests', { from, to, sort: 'e2e', order: 'desc', limit: 50 });
  await afterClick(page.locator('[data-testid="link-slowest"]'), 'requests');
  await noSectionErrors('requests');
  check('requests: URL carries the window', page.url().includes(`from=${from}`) && page.url().includes(`to=${to}`), page.url());
  eq('requests: rows shown', await page.locator('[data-testid="requests-table"] tbody tr[data-trace-id]').count(), list.requests.length);
  eq('requests: slowest first (trace)', await page.getAttribute('[data-testid="requests-table"] tbody tr[data-trace-id]', 'data-trace-id'), list.requests[0].trace_id);
  eq('requests: slowest e2e', await text('[data-testid="requests-table"] tbody tr td[data-col="e2e"]'), fmtMs(list.requests[0].e2e_ms));
  eq('requests: page info', await text('[data-testid="page-info"]'), `rows 1–${fmtCount(list.requests.length)} of ${fmtCount(list.total)}`);
  const e2es = await page.locator('[data-testid="requests-table"] tbody td[data-col="e2e"]').allTextContents();
  const nums = e2es.map((s) => parseFloat(s));
  check('requests: e2e descending', nums.every((v, i) => i === 0 || v <= nums[i - 1]));
  await shot('requests');

  // Sorting by ttft (server side).
  const byTtft = await api('requests', { from, to, sort: 'ttft', order: 'desc', limit: 50 });
  await afterClick(page.locator('[data-testid="sort-ttft"]'), 'requests');
  eq('requests: sorted by ttft (first row)', await page.getAttribute('[data-testid="requests-table"] tbody tr[data-trace-id]', 'data-trace-id'), byTtft.requests[0].trace_id);
  check('requests: sort in the URL', page.url().includes('sort=ttft'));
  if (list.total > 25) {
    await load(`#/requests?${scope}&limit=25`, 'requests');
    const p2 = await api('requests', { from, to, limit: 25, offset: 25 });
    await afterClick(page.locator('[data-testid="next"]'), 'requests');
    eq('requests: page 2 first row', await page.getAttribute('[data-testid="requests-table"] tbody tr[data-trace-id]', 'data-trace-id'), p2.requests[0]?.trace_id);
    // Under a relative window, paging pins the window so that rows neither repeat nor vanish.
    await load('#/requests?range=24h&limit=25', 'requests');
    await afterClick(page.locator('[data-testid="next"]'), 'requests');
    const paged = new URL(page.url()).hash;
    check('requests: paging a relative window pins from/to', /[?&]from=\d+/.test(paged) && /[?&]to=\d+/.test(paged) && !/[?&]range=/.test(paged), paged);
  }
  // A malformed trace link shows a message instead of a blank page.
  await load('#/trace/%zz', 'trace');
  check('trace: malformed link answered with an error', (await page.locator('[data-testid="section-error"], [data-testid="page-error"]').count()) > 0);
  await load(`#/requests?${scope}`, 'requests');

  // → The slowest request's trace.
  const slowest = list.requests[0].trace_id;
  await afterClick(page.locator('[data-testid="requests-table"] tbody tr[data-trace-id] [data-testid="trace-link"]').first(), 'trace');
  await noSectionErrors('trace');
  eq('trace: id', await text('[data-testid="trace-id"]'), slowest);
  const tr = await api(`traces/${slowest}`);
  eq('trace: span count shown', await text('[data-testid="trace-span-count"]'), `${fmtCount(tr.spans.length)} spans`);
  eq('trace: one bar per span', await page.locator('.waterfall [data-testid="span-bar"]').count(), tr.spans.length);
  let durOk = 0;
  const durBad = [];
  for (const s of tr.spans.filter((x) => x.name !== 'engine.step')) {
    const shown = (await page.locator(`.wf-row[data-span-id="${s.span_id}"] [data-testid="span-duration"]`).textContent())?.trim();
    if (shown === fmtMs(s.duration_ms)) durOk++;
    else durBad.push(`${s.name}: ${shown} vs ${fmtMs(s.duration_ms)}`);
  }
  check('trace: span durations shown match the API', durBad.length === 0, durBad.length ? durBad.join('; ') : `${durOk} spans`);
  for (const name of ['http.server', 'frontend', 'queue', 'prefill', 'decode', 'stream_out']) {
    check(`trace: ${name} row`, (await page.locator(`.wf-row[data-name="${name}"]`).count()) > 0);
  }
  const steps = tr.spans.filter((x) => x.name === 'engine.step');
  check('trace: engine steps in the waterfall', steps.length > 0 && (await page.locator('.wf-steps .span-bar.step').count()) === steps.length, `${steps.length} steps`);
  // GPU lanes under the steps: one bar per step the CUDA hooks saw, one mark per step whose
  // collectives were lined up across ranks.
  eq('trace: GPU bars', await page.locator('[data-testid="gpu-bar"]').count(), steps.filter((x) => x.attributes['gpu.ms'] !== undefined).length);
  eq('trace: collective marks', await page.locator('[data-testid="collective-mark"]').count(), steps.filter((x) => x.attributes['nccl.straggler_rank'] !== undefined).length);
  const stepRows = await page.locator('[data-testid="steps-table"] tbody tr').count();
  eq('trace: steps table rows', stepRows, tr.steps.length);
  const st = tr.steps.find((x) => x.batch_size !== null);
  if (st) {
    eq('trace: step batch size', await text(`[data-testid="steps-table"] tr[data-step-id="${st.step_id}"] td[data-col="batch"]`), String(st.batch_size));
    eq('trace: step duration', await text(`[data-testid="steps-table"] tr[data-step-id="${st.step_id}"] td[data-col="duration"]`), fmtMs(st.duration_ms));
  }
  const chunks = tr.requests.reduce((s, r) => s + r.chunk_offsets_ms.length, 0);
  eq('trace: token chunk ticks', await page.locator('[data-testid="chunk-tick"]').count(), chunks);
  // Tokens, engine beside wire: one row per engine output (else per SSE token event when there
  // are two or more), at most 64 per request.
  const gapRows = tr.requests.reduce((s, r) => {
    const e = (r.engine_output_offsets_ms ?? []).length;
    const w = r.chunk_offsets_ms.length;
    return s + Math.min(64, e > 0 ? e : w >= 2 ? w : 0);
  }, 0);
  eq('trace: token-gap rows (wire vs engine)', await page.locator('[data-testid="token-gaps"] tbody tr[data-gap]').count(), gapRows);
  const engineTimes = tr.requests.reduce((s, r) => s + (r.engine_output_offsets_ms ?? []).length, 0);
  check('trace: engine token times recorded', engineTimes > 0, `${engineTimes} engine outputs`);
  const shared = tr.steps.find((x) => x.shared_with.length > 0);
  if (shared) {
    check('trace: shared step links the other requests', (await page.locator(`[data-testid="steps-table"] tr[data-step-id="${shared.step_id}"] a[data-testid="trace-link"]`).count()) > 0);
  }
  // Click a step: the details panel shows its attributes and batch.
  if (steps.length) {
    await page.locator('.wf-steps .span-bar.step').first().click();
    eq('trace: clicked step details', await text('[data-testid="span-details"] h3'), 'engine.step');
    check('trace: step batch size in details', ((await text('[data-testid="span-details"] [data-attr="engine.batch_size"]')) ?? '') !== '');
  }
  await page.locator('.wf-row[data-name="http.server"] .span-bar').first().click();
  eq('trace: root details', await text('[data-testid="span-details"] h3'), 'http.server');
  await shot('trace');

  // Token chunk ticks of a streamed request (the slowest one may not be streamed).
  const streamed = list.requests.find((r) => r.chunks > 1 && r.trace_id !== slowest);
  if (streamed) {
    const st2 = await api(`traces/${streamed.trace_id}`);
    await load(`#/trace/${streamed.trace_id}`, 'trace');
    const n = st2.requests.reduce((s, r) => s + r.chunk_offsets_ms.length, 0);
    const shown = await page.locator('.wf-row[data-name="stream_out"] [data-testid="chunk-tick"]').count();
    check('trace: streamed request shows one tick per chunk on stream_out', n > 1 && shown === n, `${shown} ticks, ${n} chunks`);
    await shot('trace-streamed');
  }

  // A tensor-parallel GPU request: its GPU lanes, step columns and card fields.
  if (args.gpu) {
    const gid = String(args.gpu);
    const gt = await api(`traces/${gid}`);
    await load(`#/trace/${gid}`, 'trace');
    await noSectionErrors('gpu trace');
    const gsteps = gt.steps.filter((x) => x.gpu);
    eq('gpu trace: steps with a GPU side (API)', gsteps.length, 3);
    eq('gpu trace: one GPU bar per such step', await page.locator('[data-testid="gpu-bar"]').count(), gsteps.length);
    eq('gpu trace: host-bound bars hatched', await page.locator('[data-testid="gpu-bar"].host-bound').count(), gsteps.filter((x) => x.gpu.host_bound).length);
    eq('gpu trace: one straggler mark per step with collectives', await page.locator('[data-testid="collective-mark"]').count(), gt.steps.filter((x) => x.collectives).length);
    eq('gpu trace: straggler rank shown', await page.locator('[data-testid="collective-mark"]').first().getAttribute('data-rank'), String(gt.steps.find((x) => x.collectives).collectives.straggler_rank));
    const s0 = gsteps[0];
    eq('gpu trace: step GPU time', await text(`[data-testid="steps-table"] tr[data-step-id="${s0.step_id}"] td[data-col="gpu"]`), fmtMs(s0.gpu.gpu_ms));
    const r = gt.requests[0];
    eq('gpu trace: card GPU time', await text('[data-testid="request-card"] dd[data-field="GPU (latency / cost)"]'), `${fmtMs(r.gpu_ms)} / ${fmtMs(r.gpu_cost_ms)} (${r.gpu_upper_bound_steps} steps upper bounds)`);
    eq('gpu trace: card straggler', await text('[data-testid="request-card"] dd[data-field="straggler"]'), `rank ${r.straggler_rank} (+${fmtMs(r.straggler_lag_ms)})`);
    await xssClean('gpu trace');
    await shot('trace-gpu');
  }

  // A gateway's trace: its hops, then one waterfall across both nodes with clock bounds.
  if (args.hops) {
    const id = String(args.hops);
    const ht = await api(`traces/${id}`);
    await load(`#/trace/${id}`, 'trace');
    await noSectionErrors('hops trace');
    eq('hops: one row per hop', await page.locator('[data-testid="hops-table"] tbody tr[data-hop-id]').count(), ht.hops.length);
    const hop = ht.hops[0];
    eq('hops: link method', await text(`[data-testid="hops-table"] tr[data-hop-id="${hop.hop_id}"] td[data-col="link"]`), hop.link);
    check('hops: clock bounds shown', /…/.test(await text(`[data-testid="hops-table"] tr[data-hop-id="${hop.hop_id}"] td[data-col="clock"]`)));
    await afterClick(page.locator('[data-testid="follow-hops"]'), 'trace');
    await noSectionErrors('followed trace');
    const ft = await api(`traces/${id}`, { follow: 'hops' });
    eq('hops: followed waterfall has every span', await page.locator('.waterfall [data-testid="span-bar"]').count(), ft.spans.length);
    const names = await page.locator('.waterfall .wf-row[data-span-id]').evaluateAll((rows) => rows.map((r) => r.dataset.name));
    const call = names.indexOf('http.client');
    check('hops: the server root is drawn under the call', call >= 0 && names.slice(call + 1).includes('http.server'), names.join(' '));
    eq('hops: spans of the other node carry their clock error', await page.locator('[data-testid="clock-error"]').count(), ft.spans.filter((s) => s.clock_error_ns !== undefined).length);
    check('hops: node clocks listed', (await text('[data-testid="node-clocks"]'))?.includes(ft.clocks[1].node));
    await xssClean('hops trace');
    await shot('trace-hops');
  }

  // Hostile strings render as text.
  if (args.hostile) {
    const hid = String(args.hostile);
    const ht = await api(`traces/${hid}`);
    await load(`#/trace/${hid}`, 'trace');
    await noSectionErrors('hostile trace');
    for (const s of ht.spans) {
      if (!Object.values(s.attributes).some((v) => v.includes('<'))) continue;
      await page.locator(`.span-bar[data-span-id="${s.span_id}"]`).click();
      for (const [k, v] of Object.entries(s.attributes)) {
        if (!v.includes('<')) continue;
        eq(`hostile trace: attribute ${k} (${s.name}) shown as literal text`, await page.locator(`[data-testid="span-attributes"] td[data-attr="${k}"]`).textContent(), v);
      }
    }
    const xr = ht.requests[0]?.x_request_id ?? '';
    if (xr.includes('<')) {
      const cells = await page.locator('[data-testid="request-fields"] td').allTextContents();
      check('hostile trace: x_request_id shown as literal text', cells.includes(xr));
    }
    await xssClean('hostile trace');
    await shot('trace-hostile');
    const model = ht.requests[0]?.model ?? '';
    if (model.includes('<')) {
      await load(`#/requests?${scope}&model=${encodeURIComponent(model)}`, 'requests');
      eq('hostile model: listed as text in the requests table', await text('[data-testid="requests-table"] td[data-col="model"]'), model);
      await load(`#/overview?${scope}`, 'overview');
      const opts = await page.locator('[data-testid="filter-model"] option').allTextContents();
      check('hostile model: dropdown option is literal text', opts.includes(model));
      await xssClean('hostile model');
    }
  }

  // Compare: A = the window, B = the same window for one model (or the previous window).
  const bModel = args['compare-model'];
  const cmpHash = bModel ? `#/compare?${scope}&b_window=same&b_model=${encodeURIComponent(bModel)}` : `#/compare?${scope}`;
  await load(cmpHash, 'compare');
  await noSectionErrors('compare');
  const a = bd;
  const bParams = bModel ? { from, to, model: bModel } : { from: String(Number(from) - (Number(to) - Number(from))), to: from };
  const b = await api('breakdown', bParams);
  const qa = a.quantiles.find((r) => r.q === 0.99);
  const qb = b.quantiles.find((r) => r.q === 0.99);
  eq('compare: A p99 e2e', await text('[data-testid="cmp-a-e2e-p99"]'), fmtMs(qa.e2e_ms));
  eq('compare: B p99 e2e', await text('[data-testid="cmp-b-e2e-p99"]'), fmtMs(qb.e2e_ms));
  eq('compare: metrics × levels', await page.locator('[data-testid="compare-table"] tbody tr').count(), 8);
  check('compare: B scope shown', ((await text('[data-testid="scope-b"]')) ?? '').length > 0, await text('[data-testid="scope-b"]'));
  await shot('compare');
  await xssClean('compare');
  if (bModel) {
    // A filters one model; B is set to "all models" and stays so.
    await load(`#/compare?${scope}&model=${encodeURIComponent(bModel)}&b_window=same`, 'compare');
    const gen = Number(await page.getAttribute('#app', 'data-gen'));
    await page.selectOption('[data-testid="filter-b_model"]', '');
    await page.waitForFunction((g) => Number(document.getElementById('app').dataset.gen) > g && document.getElementById('app').dataset.state === 'ready', gen);
    const all = await api('breakdown', { from, to });
    eq('compare: B "all models" while A filters one', await text('[data-testid="cmp-b-e2e-p99"]'), fmtMs(all.quantiles.find((r) => r.q === 0.99).e2e_ms));
    eq('compare: B dropdown shows all models', await page.inputValue('[data-testid="filter-b_model"]'), '');
  }
}

// ---------------------------------------------------------------------------------------------
async function perf() {
  const from = args.from;
  const to = args.to;
  const scope = from && to ? `from=${from}&to=${to}` : 'range=1h';
  const bd = await api('breakdown', { from, to });
  console.log(`     ${fmtCount(bd.count)} requests in the window`);
  const times = { overview: [], requests: [] };
  for (let i = 0; i < 3; i++) {
    times.overview.push(await load(`#/overview?${scope}`, 'overview'));
    times.requests.push(await load(`#/requests?${scope}`, 'requests'));
  }
  await load(`#/overview?${scope}`, 'overview');
  eq('perf: overview counts every request', await text('[data-testid="stat-count"]'), fmtCount(bd.count));
  await noSectionErrors('perf overview');
  await shot('overview-1m');
  await load(`#/requests?${scope}`, 'requests');
  await noSectionErrors('perf requests');
  check('perf: requests table filled', (await page.locator('[data-testid="requests-table"] tbody tr[data-trace-id]').count()) === 50);
  await shot('requests-1m');
  for (const k of ['overview', 'requests']) {
    const t = times[k];
    const sorted = [...t].sort((x, y) => x - y);
    console.log(`     ${k}: rendered in ${t.join(', ')} ms (median ${sorted[1]} ms, bound ${BOUND_MS} ms)`);
    check(`perf: ${k} rendered under ${BOUND_MS} ms with ${fmtCount(bd.count)} requests stored`, Math.max(...t) < BOUND_MS, `max ${Math.max(...t)} ms`);
  }
}

// ---------------------------------------------------------------------------------------------
let crashed = null;
try {
  if (args.perf) await perf();
  else await functional();
} catch (e) {
  crashed = e;
  failed++;
  console.log(`FAIL unexpected error: ${e?.stack ?? e}`);
  try {
    await shot('failure');
  } catch {
    // ignore
  }
}
check('no page errors, console errors or dialogs', pageErrors.length === 0, pageErrors.join(' | '));
await context.close();
rmSync(profile, { recursive: true, force: true });
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed > 0 || crashed ? 1 : 0);
