// Pure logic of the matrix views (logit lens, patching, sweeps, comparison):
// cell colours on a sequential or diverging scale, ink that reads on them, the
// legend's stops, and the window of columns. No DOM: tested with vitest.
import { colour, diverging, luminance } from "./heatmap";

export type Scale = "sequential" | "diverging";
export type RGB = [number, number, number];

/** Colour of a value on the scale: sequential maps 0..vmax, diverging -vmax..vmax. */
export function cellColour(value: number, scale: Scale, vmax: number): RGB {
  const v = Number.isFinite(value) ? value / (vmax || 1) : 0;
  return scale === "diverging" ? diverging(Math.max(-1, Math.min(1, v))) : colour(v);
}

/** Text colour that reads on a cell: black or white, whichever contrasts more (WCAG). Where the
 * two are equal, at luminance 0.179, each still has 4.58:1, above AA's 4.5:1 for body text. */
export function inkOn(rgb: RGB): string {
  return luminance(rgb) < 0.179 ? "#fff" : "#000";
}

/** The legend: value labels with their colours, five stops across the scale. */
export function legendStops(scale: Scale, vmax: number): { label: string; rgb: RGB }[] {
  const fractions = scale === "diverging" ? [-1, -0.5, 0, 0.5, 1] : [0, 0.25, 0.5, 0.75, 1];
  return fractions.map((f) => ({
    label: (scale === "diverging" && f > 0 ? "+" : "") + formatValue(f * vmax),
    rgb: cellColour(f * vmax, scale, vmax),
  }));
}

export function formatValue(v: number): string {
  if (v === 0) return "0";
  const a = Math.abs(v);
  return a >= 100 || a < 0.01 ? v.toExponential(1) : v.toPrecision(2);
}

/** The next window start when stepping by `step` columns (clamped to the ends). */
export function windowStart(start: number, step: number, total: number, size: number): number {
  return Math.max(0, Math.min(Math.max(0, total - size), start + step));
}

/** A cell's number in two significant digits: small and large values as small and large ones
 * ("6.3e-7", not "0"), and only an exact zero as 0. Python's export writes the same
 * (llm_widgets/export/matrix.py cell_text). */
export function cellText(v: number): string {
  return Number.isFinite(v) ? formatValue(v) : String(v);
}

/** Bar lengths in percent of the largest value (negative values, a patch that made things
 * worse, drawn as none; their number is still written beside the bar). */
export function barPercents(values: number[]): number[] {
  const top = Math.max(0, ...values.filter(Number.isFinite));
  return values.map((v) => (top > 0 && Number.isFinite(v) ? (Math.max(0, v) / top) * 100 : 0));
}

/** A share as a percentage with one decimal ("42.3%", "-0.1%"). */
export function percent(v: number): string {
  return Number.isFinite(v) ? `${(v * 100).toFixed(1)}%` : String(v);
}
