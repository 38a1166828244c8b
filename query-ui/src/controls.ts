// Window and filter controls, shared by the overview, requests and compare pages.
import type { FilterValues } from './api';
import { h, replace, select } from './dom';
import { fmtTimeS, parseTime } from './format';
import { FILTERS, PRESETS, type ResolvedWindow, withParams } from './state';

export interface ScopeControls {
  el: HTMLElement;
  /** Fills the filter dropdowns. */
  setFilters(fv: FilterValues): void;
}

const FILTER_LABELS: Record<string, string> = {
  model: 'all models',
  node: 'all nodes',
  engine: 'all engines',
  status: 'any status',
  tenant: 'all tenants',
};

/**
 * Presets, from/to (UTC) and the filter dropdowns for the parameters `prefix + name` of
 * `params`; `go` receives the new parameters.
 */
export function scopeControls(
  params: URLSearchParams,
  w: ResolvedWindow,
  go: (p: URLSearchParams) => void,
  opts: { prefix?: string; title?: string; testid?: string } = {},
): ScopeControls {
  const pre = opts.prefix ?? '';
  const presets = h(
    'div',
    { class: 'presets', role: 'group', 'aria-label': 'window presets' },
    PRESETS.map(([key, , label]) =>
      h(
        'button',
        {
          type: 'button',
          class: w.range === key ? 'preset active' : 'preset',
          'data-testid': `${pre}preset-${key}`,
          onclick: () => go(withParams(params, { [pre + 'range']: key, [pre + 'from']: null, [pre + 'to']: null })),
        },
        label,
      ),
    ),
  );
  const from = h('input', { type: 'text', size: 19, 'aria-label': 'from (UTC)', 'data-testid': `${pre}from` });
  const to = h('input', { type: 'text', size: 19, 'aria-label': 'to (UTC)', 'data-testid': `${pre}to` });
  from.value = fmtTimeS(w.from);
  to.value = fmtTimeS(w.to);
  const err = h('span', { class: 'error-inline' });
  const apply = (ev: Event) => {
    ev.preventDefault();
    const f = parseTime(from.value);
    const t = parseTime(to.value);
    if (f === null || t === null || f >= t) {
      err.textContent = 'from/to: use YYYY-MM-DD HH:MM:SS (UTC), from before to';
      return;
    }
    go(withParams(params, { [pre + 'range']: null, [pre + 'from']: String(f), [pre + 'to']: String(t) }));
  };
  const form = h(
    'form',
    { class: 'window-form', onsubmit: apply },
    h('label', null, 'from ', from),
    h('label', null, 'to ', to),
    h('span', { class: 'muted' }, 'UTC'),
    h('button', { type: 'submit', 'data-testid': `${pre}apply` }, 'Apply'),
    err,
  );
  const filterBox = h('div', { class: 'filters' });
  const renderFilters = (fv: FilterValues | null) => {
    const opts: Record<string, { value: string; label?: string }[]> = {
      model: (fv?.models ?? []).map((v) => ({ value: v })),
      node: (fv?.nodes ?? []).map((v) => ({ value: v })),
      engine: (fv?.engines ?? []).map((v) => ({ value: v })),
      status: statusOptions(fv?.statuses ?? []),
      tenant: (fv?.tenants ?? []).map((v) => ({ value: v })),
    };
    // Tenants exist only where node-probe extracts them: no empty dropdown elsewhere.
    const shown = FILTERS.filter((f) => f !== 'tenant' || opts.tenant.length > 0 || params.get(pre + f));
    replace(
      filterBox,
      shown.map((f) =>
        select(pre + f, opts[f], params.get(pre + f) ?? '', FILTER_LABELS[f], (v) =>
          go(withParams(params, { [pre + f]: v })),
        ),
      ),
    );
  };
  renderFilters(null);
  const el = h(
    'div',
    { class: 'controls', 'data-testid': opts.testid ?? `${pre}controls` },
    opts.title ? h('strong', { class: 'side-title' }, opts.title) : null,
    presets,
    form,
    filterBox,
  );
  return { el, setFilters: renderFilters };
}

function statusOptions(statuses: number[]): { value: string; label?: string }[] {
  const classes = [...new Set(statuses.filter((s) => s >= 100).map((s) => Math.floor(s / 100)))].sort();
  return [
    ...classes.map((c) => ({ value: `${c}xx` })),
    ...statuses.map((s) => ({ value: String(s), label: s === 0 ? '0 (no response)' : String(s) })),
  ];
}
