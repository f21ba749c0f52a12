// The token strip: one chip per token (generated ones dashed), keyboard and
// mouse. In "query" mode a click picks the query; in "keys" mode (the editor)
// click, drag or shift-click selects a span of keys. Text through textContent only.
import { colour } from "./heatmap";
import { inkOn } from "./matrix";
import { spanOf } from "./steer";
import { el, focusable, shown } from "./widget_io";

export interface StripOptions {
  mode: () => "query" | "keys";
  onQuery: (position: number) => void;
  onKeys?: (span: [number, number]) => void;
  keySpan?: () => number[];
}

export interface Strip {
  element: HTMLElement;
  /** nSource: an encoder-decoder's source tokens, first (the output starts after a rule). */
  show(tokens: string[], nPrompt: number, nSource?: number): void;
  markQuery(query: number): void;
  /** Colour every chip by its weight in `row` (null: plain). */
  colourBy(row: Float32Array | null): void;
  refreshKeys(): void;
  destroy(): void;
}

export function mountStrip(options: StripOptions): Strip {
  const strip = el("div", "lw-attn-tokens");
  strip.setAttribute("aria-label", "tokens: click one to see where it attends");
  let chips: HTMLSpanElement[] = [];
  let anchor = -1; // where a key selection started (click, drag or shift-click extends from it)
  let dragging = false;

  const keysPicked = (a: number, b: number) => options.onKeys?.(spanOf(a, b));
  const pickKeys = (i: number, extend: boolean) => {
    if (extend && anchor >= 0) keysPicked(anchor, i);
    else {
      anchor = i;
      keysPicked(i, i);
    }
  };
  const chipIndex = (target: EventTarget | null) => {
    const index = (target as HTMLElement | null)?.dataset?.index;
    return index === undefined ? -1 : Number(index);
  };
  const keysMode = () => options.mode() === "keys";

  strip.addEventListener("mousedown", (event) => {
    const i = chipIndex(event.target);
    if (i < 0 || !keysMode()) return;
    event.preventDefault(); // no text selection while dragging a span
    dragging = true;
    pickKeys(i, event.shiftKey);
  });
  strip.addEventListener("mouseover", (event) => {
    const i = chipIndex(event.target);
    if (dragging && i >= 0 && anchor >= 0) keysPicked(anchor, i);
  });
  const stopDrag = () => (dragging = false);
  window.addEventListener("mouseup", stopDrag);
  strip.addEventListener("click", (event) => {
    const i = chipIndex(event.target);
    if (i >= 0 && !keysMode()) options.onQuery(i);
  });
  strip.addEventListener("keydown", (event) => {
    const i = chipIndex(event.target);
    if (i < 0 || (event.key !== "Enter" && event.key !== " ")) return;
    event.preventDefault();
    if (keysMode()) pickKeys(i, event.shiftKey);
    else options.onQuery(i);
  });

  function refreshKeys() {
    const span = options.keySpan?.() ?? [];
    chips.forEach((chip, i) => chip.classList.toggle("lw-tok-key", span.length === 2 && i >= span[0] && i < span[1]));
  }

  return {
    element: strip,
    show(tokens, nPrompt, nSource = 0) {
      const role = (i: number) => (i >= nPrompt ? " (generated)" : i < nSource ? " (source)" : nSource ? " (decoder start)" : "");
      chips = tokens.map((token, i) => {
        const chip = el("span", i < nPrompt ? "lw-tok" : "lw-tok lw-tok-gen", shown(token));
        if (nSource && i === nSource) chip.classList.add("lw-tok-output-start");
        focusable(chip);
        chip.setAttribute("role", "button");
        chip.dataset.index = String(i);
        chip.title = `${i}: ${JSON.stringify(token)}${role(i)}`;
        return chip;
      });
      strip.replaceChildren(...chips);
      refreshKeys();
    },
    markQuery(query) {
      chips.forEach((chip, i) => chip.classList.toggle("lw-tok-query", i === query));
    },
    colourBy(row) {
      if (!row) {
        chips.forEach((chip) => {
          chip.style.removeProperty("background-color");
          chip.style.removeProperty("color");
        });
        return;
      }
      let max = 0;
      for (const v of row) max = Math.max(max, v);
      max = max || 1;
      chips.forEach((chip, i) => {
        const [r, g, b] = colour(row[i] / max);
        chip.style.backgroundColor = `rgb(${r}, ${g}, ${b})`;
        chip.style.color = inkOn([r, g, b]);
      });
    },
    refreshKeys,
    destroy() {
      window.removeEventListener("mouseup", stopDrag);
    },
  };
}
