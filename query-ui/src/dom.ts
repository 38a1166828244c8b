// Safe DOM construction. Every string given here becomes a text node or an attribute value set
// with setAttribute; nothing is ever parsed as HTML (this project never uses innerHTML), so text
// from traced requests (models, paths, attributes) cannot become markup or script.

export type Child = Node | string | number | null | undefined | false | Child[];
export type AttrValue = string | number | boolean | null | undefined;
export type Attrs = {
  [name: string]: AttrValue | EventListener | undefined;
};

/** Only fragment links and same-origin paths are allowed as href values. */
export function safeHref(v: string): string {
  return v.startsWith('#') || (v.startsWith('/') && !v.startsWith('//')) ? v : '#';
}

/** `h('a', {href: '#/x', class: 'y'}, 'text', child)`. */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs?: Attrs | null,
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  if (attrs) {
    for (const [k, v] of Object.entries(attrs)) {
      if (v === undefined || v === null || v === false) continue;
      if (k.startsWith('on') && typeof v === 'function') {
        el.addEventListener(k.slice(2), v as EventListener);
      } else if (k === 'href') {
        el.setAttribute('href', safeHref(String(v)));
      } else if (v === true) {
        el.setAttribute(k, '');
      } else {
        el.setAttribute(k, String(v));
      }
    }
  }
  append(el, children);
  return el;
}

/** Appends children (strings as text nodes). */
export function append(el: Node, children: Child[]): void {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.appendChild(typeof c === 'string' || typeof c === 'number' ? document.createTextNode(String(c)) : c);
  }
}

/** Replaces all children of `el`. */
export function replace(el: Element, ...children: Child[]): void {
  el.replaceChildren();
  append(el, children);
}

/** A `<select>` with an "all" entry; values and labels are set as text. */
export function select(
  name: string,
  options: { value: string; label?: string }[],
  current: string,
  allLabel: string,
  onChange: (v: string) => void,
): HTMLSelectElement {
  const s = h('select', { name, 'aria-label': name, 'data-testid': `filter-${name}` });
  s.appendChild(new Option(allLabel, ''));
  let found = current === '';
  for (const o of options) {
    s.appendChild(new Option(o.label ?? o.value, o.value));
    if (o.value === current) found = true;
  }
  // A value from the URL that the window does not have any more stays selectable.
  if (!found) s.appendChild(new Option(current, current));
  s.value = current;
  s.addEventListener('change', () => onChange(s.value));
  return s;
}

/** A section with a title. */
export function section(title: string, testid: string, ...children: Child[]): HTMLElement {
  return h('section', { class: 'card', 'data-testid': testid }, h('h2', null, title), ...children);
}

/** A "loading" or error placeholder. */
export function note(text: string, cls = 'muted'): HTMLElement {
  return h('p', { class: cls }, text);
}
