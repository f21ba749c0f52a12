// Pure logic of the debugger view: the timeline strip binned to the pixels it has,
// its colours and marks, the histogram's bar heights. No DOM: tested with vitest.
import { colour } from "./heatmap";

export type RGB = [number, number, number];

/** Mark bits per call, as Python sends them (widgets/debugger_view.py _mark). */
export const NONFINITE = 1;
export const BEYOND_FLOAT16 = 2;
export const HIT = 4;

export interface Bin {
  first: number; // the first call in this pixel column
  value: number; // the largest known value of its calls (-1: none known yet)
  marks: number; // the OR of its calls' marks
}

/** Calls binned into `width` columns (a call per column when they fit): each column keeps the
 * largest value and every mark of its calls, so one NaN among thousands still shows. */
export function binStrip(values: number[], marks: number[], width: number): Bin[] {
  const n = values.length;
  const columns = Math.max(1, Math.min(n, Math.floor(width)));
  const bins: Bin[] = [];
  for (let c = 0; c < columns && n > 0; c++) {
    const first = Math.floor((c * n) / columns);
    const last = Math.max(first + 1, Math.floor(((c + 1) * n) / columns));
    let value = -1;
    let mark = 0;
    for (let i = first; i < last; i++) {
      value = Math.max(value, values[i]);
      mark |= marks[i] ?? 0;
    }
    bins.push({ first, value, marks: mark });
  }
  return bins;
}

/** The call a click at column `x` of a strip `width` wide lands on. */
export function callAt(x: number, width: number, n: number): number {
  if (n <= 0) return 0;
  return Math.max(0, Math.min(n - 1, Math.floor((x / Math.max(1, width)) * n)));
}

/** A column's colour: the sequential scale over 0..vmax, grey where nothing is known yet, red
 * where an output is not finite. */
export function stripColour(bin: Bin, vmax: number): RGB {
  if (bin.marks & NONFINITE) return [200, 30, 30];
  if (bin.value < 0) return [190, 190, 190];
  return colour(vmax > 0 ? bin.value / vmax : 0);
}

/** Bar heights for a histogram, 0..height, on a square-root scale (one tall bin does not flatten
 * the rest), a non-empty bin at least 1 pixel. */
export function barHeights(counts: number[], height: number): number[] {
  const top = Math.sqrt(Math.max(1, ...counts));
  return counts.map((c) => (c > 0 ? Math.max(1, Math.round((Math.sqrt(c) / top) * height)) : 0));
}
