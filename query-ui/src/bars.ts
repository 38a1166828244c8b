// Horizontal stacked bars in plain DOM (phase breakdowns), sized with CSSOM style properties.
import { h } from './dom';

export const PHASE_COLORS: Record<string, string> = {
  frontend: '#9ecae9',
  queue: '#f58518',
  prefill: '#54a24b',
  decode: '#4c78a8',
  delivery: '#b279a2',
  unattributed: '#c8c8c8',
};

export interface Segment {
  name: string;
  value: number | null;
  /** Tooltip text. */
  title: string;
}

/** A bar of `segments` on a track where `scale` is the full width; `marker` draws a tick. */
export function stackedBar(segments: Segment[], scale: number, marker?: { at: number; title: string }): HTMLElement {
  const track = h('div', { class: 'stack' });
  for (const s of segments) {
    const v = s.value ?? 0;
    if (!(v > 0) || !(scale > 0)) continue;
    const seg = h('div', { class: 'seg', title: s.title, 'data-phase': s.name });
    seg.style.width = `${Math.min(100, (v / scale) * 100)}%`;
    seg.style.background = PHASE_COLORS[s.name] ?? '#999';
    track.appendChild(seg);
  }
  if (marker && scale > 0 && marker.at > 0) {
    const m = h('div', { class: 'marker', title: marker.title });
    m.style.left = `${Math.min(100, (marker.at / scale) * 100)}%`;
    track.appendChild(m);
  }
  return track;
}

/** Colour swatches for the given names. */
export function legend(names: string[]): HTMLElement {
  return h(
    'div',
    { class: 'legend' },
    names.map((n) => {
      const sw = h('span', { class: 'swatch' });
      sw.style.background = PHASE_COLORS[n] ?? '#999';
      return h('span', { class: 'legend-item' }, sw, n);
    }),
  );
}
