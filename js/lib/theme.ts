// Light or dark, from what the page paints under the widget: JupyterLab's and
// Notebook 7's themes, VS Code's and marimo's dark modes all end as a background
// colour, so no host API is needed. The panel gets the class lw-dark (CSS picks
// inks that keep 4.5:1 on it) and a callback hears each change.
import { luminance } from "./heatmap";

/** [r, g, b, alpha] of a CSS colour as getComputedStyle gives it ("rgb(...)" or "rgba(...)"). */
export function parseColour(css: string): [number, number, number, number] {
  const parts = css.match(/[\d.]+/g)?.map(Number) ?? [];
  if (parts.length < 3) return [0, 0, 0, 0];
  return [parts[0], parts[1], parts[2], parts.length > 3 ? parts[3] : 1];
}

/** Whether the first opaque background from `node` upwards is dark (none: the page's white). */
export function onDark(node: Element): boolean {
  for (let at: Element | null = node; at; at = at.parentElement) {
    const [r, g, b, a] = parseColour(getComputedStyle(at).backgroundColor);
    if (a >= 0.5) return luminance([r, g, b]) < 0.18;
  }
  return false;
}

/** Keep `panel`'s lw-dark class (and `onChange`) in step with the page's theme; returns the stop.
 * Themes switch by attributes and classes on <html> and <body> (and new stylesheets), so
 * those are watched, checked again a moment later for the stylesheet to apply. */
export function followTheme(panel: HTMLElement, onChange: (dark: boolean) => void = () => {}): () => void {
  let dark: boolean | null = null;
  const check = () => {
    if (!panel.isConnected) return;
    const now = onDark(panel);
    if (now === dark) return;
    dark = now;
    panel.classList.toggle("lw-dark", now);
    onChange(now);
  };
  let timers: number[] = [];
  const soon = () => {  // now, and again as a new stylesheet applies; a newer change replaces the pending checks
    check();
    timers.forEach((t) => clearTimeout(t));
    timers = [50, 300, 1000].map((ms) => window.setTimeout(check, ms));
  };
  const observer = new MutationObserver(soon);
  for (const node of [document.documentElement, document.body]) {
    observer.observe(node, { attributes: true, attributeFilter: ["class", "style", "data-jp-theme-light", "data-theme"] });
  }
  observer.observe(document.head, { childList: true });
  const scheme = window.matchMedia?.("(prefers-color-scheme: dark)");
  scheme?.addEventListener?.("change", soon);
  requestAnimationFrame(soon);  // attached by then
  return () => {
    observer.disconnect();
    scheme?.removeEventListener?.("change", soon);
    timers.forEach((t) => clearTimeout(t));
  };
}
