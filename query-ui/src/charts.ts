// Charts (uPlot): percentiles over time and histograms. Stacked phase bars are plain DOM
// (bars.ts). Series labels are constants; values reach the canvas or text nodes only.
import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';

import { fmtMs, fmtTimeS } from './format';

const live = new Set<{ u: uPlot; el: HTMLElement; height: number }>();

/** Destroys every chart (on navigation). */
export function destroyCharts(): void {
  for (const c of live) c.u.destroy();
  live.clear();
}

/** Destroys the charts inside `container` (a section about to be drawn again). */
export function destroyChartsIn(container: HTMLElement): void {
  for (const c of live) {
    if (container.contains(c.el)) {
      c.u.destroy();
      live.delete(c);
    }
  }
}

window.addEventListener('resize', () => {
  for (const c of live) c.u.setSize({ width: widthOf(c.el), height: c.height });
});

function widthOf(el: HTMLElement): number {
  return Math.max(280, (el.clientWidth || 600) - 4);
}

/** Short axis label for milliseconds. */
export function axisMs(v: number): string {
  if (v >= 10000) return `${+(v / 1000).toFixed(1)} s`;
  if (v >= 1000) return `${+(v / 1000).toFixed(2)} s`;
  if (v >= 1) return `${+v.toFixed(1)} ms`;
  return `${+v.toFixed(3)} ms`;
}

export const LEVEL_COLORS = ['#4c78a8', '#f58518', '#e45756', '#72b7b2', '#54a24b', '#b279a2', '#9d755d', '#bab0ac'];

export interface LineSeries {
  label: string;
  values: (number | null)[];
  color: string;
}

function utc(ts: number): Date {
  return uPlot.tzDate(new Date(ts * 1000), 'Etc/UTC');
}

/** Time axis labels (UTC, 24 h): `HH:MM`, with seconds when ticks are closer than a minute and
 * the date when the axis spans more than a day. */
function timeAxis(u: uPlot, splits: number[]): string[] {
  const min = u.scales.x.min ?? 0;
  const max = u.scales.x.max ?? 0;
  const gap = splits.length > 1 ? splits[1] - splits[0] : 60;
  return splits.map((s) => {
    const t = fmtTimeS(s);
    const hm = gap < 60 ? t.slice(11, 19) : t.slice(11, 16);
    return max - min > 86400 ? `${t.slice(5, 10)} ${hm}` : hm;
  });
}

/** Tick spacings for time axes: whole seconds and up (buckets are at least 1 s). */
const TIME_INCRS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800];

const timeLegend = (_u: uPlot, v: number | null) => (v === null || v === undefined ? '—' : `${fmtTimeS(v)} UTC`);

/** Below this many values a series draws a point at each of them. */
const FEW_POINTS = 60;

/** Where a series draws points: at every value when it has few (null: all), else at the values
 * with no neighbour to draw a line to, which would otherwise not show at all (a window whose
 * requests all fall in one bucket). */
export function pointIndices(values: (number | null | undefined)[]): number[] | null {
  const has = (i: number) => values[i] !== null && values[i] !== undefined;
  let n = 0;
  for (let i = 0; i < values.length; i++) if (has(i)) n++;
  if (n < FEW_POINTS) return null;
  const out: number[] = [];
  for (let i = 0; i < values.length; i++) if (has(i) && !has(i - 1) && !has(i + 1)) out.push(i);
  return out;
}

/** An x range that is never empty: a single bucket gets half a bucket's room either side. */
function xRange(step: number) {
  return (_u: uPlot, min: number, max: number): uPlot.Range.MinMax =>
    min === max ? [min - step / 2, max + step / 2] : [min, max];
}

/** Bucket width of `xs` (seconds): the gap between the first two, else a minute. */
function stepOf(xs: number[]): number {
  return xs.length > 1 ? Math.max(1, xs[1] - xs[0]) : 60;
}

/** Lines over time (x: Unix seconds), y in ms starting at 0. */
export function lineChart(el: HTMLElement, xs: number[], series: LineSeries[], height = 220): uPlot {
  const opts: uPlot.Options = {
    width: widthOf(el),
    height,
    tzDate: utc,
    scales: {
      x: { time: true, range: xRange(stepOf(xs)) },
      y: { range: (_u, _min, max) => [0, max > 0 ? max * 1.08 : 1] },
    },
    axes: [
      { stroke: '#555', grid: { stroke: '#eee' }, values: timeAxis, incrs: TIME_INCRS },
      { stroke: '#555', grid: { stroke: '#eee' }, size: 64, values: (_u, splits) => splits.map(axisMs) },
    ],
    series: [
      { label: 'time', value: timeLegend },
      ...series.map((s) => ({
        label: s.label,
        stroke: s.color,
        width: 1.5,
        spanGaps: false,
        points: { show: true, size: 4, filter: pointIndices(s.values) },
        value: (_u: uPlot, v: number | null) => fmtMs(v),
      })),
    ],
    legend: { live: true },
  };
  const u = new uPlot(opts, [xs, ...series.map((s) => s.values)] as uPlot.AlignedData, el);
  live.add({ u, el, height });
  return u;
}

/** Request counts over time as bars. */
export function countChart(el: HTMLElement, xs: number[], counts: number[], height = 120): uPlot {
  const opts: uPlot.Options = {
    width: widthOf(el),
    height,
    tzDate: utc,
    scales: {
      x: { time: true, range: xRange(stepOf(xs)) },
      y: { range: (_u, _min, max) => [0, max > 0 ? max * 1.1 : 1] },
    },
    axes: [
      { stroke: '#555', grid: { stroke: '#eee' }, values: timeAxis, incrs: TIME_INCRS },
      { stroke: '#555', grid: { stroke: '#eee' }, size: 64 },
    ],
    series: [
      { label: 'time', value: timeLegend },
      {
        label: 'requests',
        stroke: '#888',
        fill: 'rgba(136,136,136,0.35)',
        paths: uPlot.paths.bars!({ size: [0.9, 40] }),
        points: { show: false },
      },
    ],
  };
  const u = new uPlot(opts, [xs, counts], el);
  live.add({ u, el, height });
  return u;
}

export interface HistBucket {
  lo_ms: number;
  hi_ms: number;
  count: number;
}

/** A histogram: one bar per bucket (x: bucket index, labelled with the lower edges). */
export function histogramChart(
  el: HTMLElement,
  buckets: HistBucket[],
  onPick?: (b: HistBucket) => void,
  height = 220,
): uPlot {
  const xs = buckets.map((_, i) => i);
  const max = Math.max(1, ...buckets.map((b) => b.count));
  const opts: uPlot.Options = {
    width: widthOf(el),
    height,
    scales: {
      x: { time: false, range: [-0.5, buckets.length - 0.5] },
      y: { range: [0, max * 1.1] },
    },
    axes: [
      {
        stroke: '#555',
        grid: { show: false },
        splits: () => {
          const step = Math.max(1, Math.ceil(buckets.length / 8));
          return xs.filter((i) => i % step === 0).map((i) => i - 0.5);
        },
        values: (_u, splits) => splits.map((s) => axisMs(buckets[Math.round(s + 0.5)]?.lo_ms ?? 0)),
      },
      { stroke: '#555', grid: { stroke: '#eee' }, size: 64 },
    ],
    series: [
      {
        label: 'bucket',
        value: (_u, i) => {
          const b = i === null ? undefined : buckets[Math.round(i)];
          return b ? `${fmtMs(b.lo_ms)} – ${fmtMs(b.hi_ms)}` : '—';
        },
      },
      {
        label: 'requests',
        stroke: '#4c78a8',
        fill: 'rgba(76,120,168,0.55)',
        paths: uPlot.paths.bars!({ size: [0.92, 80] }),
        points: { show: false },
      },
    ],
  };
  const u = new uPlot(opts, [xs, buckets.map((b) => b.count)], el);
  if (onPick) {
    u.over.style.cursor = 'pointer';
    u.over.addEventListener('click', () => {
      const i = u.cursor.idx;
      if (i !== null && i !== undefined && buckets[i]) onPick(buckets[i]);
    });
  }
  live.add({ u, el, height });
  return u;
}
