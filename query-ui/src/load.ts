// Loading a section: show "loading…", then the rendered content or the error (as text).
import { ApiError } from './api';
import type { Ctx } from './ctx';
import { h, replace } from './dom';

/** Runs `fetch`, then `render` into `body`; errors are shown in `body`. Never rejects. */
export async function fill<T>(
  ctx: Ctx,
  body: HTMLElement,
  fetch: () => Promise<T>,
  render: (data: T) => void,
): Promise<void> {
  replace(body, h('p', { class: 'muted loading' }, 'loading…'));
  try {
    const data = await fetch();
    if (!ctx.current()) return;
    body.replaceChildren();
    render(data);
  } catch (e) {
    if (!ctx.current() || (e as Error).name === 'AbortError') return;
    const msg = e instanceof ApiError ? e.message : `request failed: ${(e as Error).message}`;
    replace(body, h('p', { class: 'error', 'data-testid': 'section-error' }, msg));
  }
}
