// What a page gets from the router.
import type { Route } from './state';

export interface Ctx {
  route: Route;
  /** False once the user navigated elsewhere: late results are dropped. */
  current(): boolean;
  /** Navigates to a hash route (`#/…`). */
  go(hash: string): void;
  /** Rewrites the URL without re-rendering (in-page choices that should stay linkable). */
  replaceUrl(hash: string): void;
  /** The page's data requests are aborted on navigation. */
  signal: AbortSignal;
}
