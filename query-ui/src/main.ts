// inferscope UI: hash router, header, and the pages.
import './style.css';

import { destroyCharts } from './charts';
import type { Ctx } from './ctx';
import { h, replace } from './dom';
import { compare } from './pages/compare';
import { overview } from './pages/overview';
import { requests } from './pages/requests';
import { trace } from './pages/trace';
import { href, parseHash, scopeOf, type Page } from './state';

const app = document.getElementById('app') as HTMLElement;
let generation = 0;
let abort: AbortController | null = null;

const PAGES: Record<Page, (root: HTMLElement, ctx: Ctx) => Promise<void>> = {
  overview,
  requests,
  trace,
  compare,
};

function header(page: Page, params: URLSearchParams): HTMLElement {
  const scope = scopeOf(params);
  const link = (p: Page, label: string) =>
    h('a', { href: href(p, scope), class: p === page ? 'active' : '', 'data-testid': `nav-${p}` }, label);
  return h(
    'header',
    { class: 'top' },
    h('a', { class: 'brand', href: href('overview', scope) }, 'inferscope'),
    h('nav', null, link('overview', 'Overview'), link('requests', 'Requests'), link('compare', 'Compare')),
    h('a', { class: 'api-link', href: '/openapi.yaml' }, 'API'),
  );
}

async function render(): Promise<void> {
  const route = parseHash(location.hash);
  const mine = ++generation;
  abort?.abort();
  abort = new AbortController();
  destroyCharts();
  app.dataset.state = 'loading';
  app.dataset.page = route.page;
  app.dataset.gen = String(mine);
  const main = h('main', { class: `page page-${route.page}` });
  replace(app, header(route.page, route.params), main);
  const ctx: Ctx = {
    route,
    current: () => mine === generation,
    go: (hash) => {
      location.hash = hash;
    },
    replaceUrl: (hash) => history.replaceState(null, '', hash),
    signal: abort.signal,
  };
  const t0 = performance.now();
  try {
    await PAGES[route.page](main, ctx);
  } catch (e) {
    if (!ctx.current()) return;
    main.appendChild(h('p', { class: 'error', 'data-testid': 'page-error' }, `Error: ${(e as Error).message}`));
  }
  if (ctx.current()) {
    app.dataset.state = 'ready';
    app.dataset.renderMs = String(Math.round(performance.now() - t0));
  }
}

window.addEventListener('hashchange', () => void render());
void render();
