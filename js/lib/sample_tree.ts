// Pure logic of the sample tree view: where each box goes (Python lays the tree out as
// fractions: a column per split, a height by the answers through it), its colour's
// scale, and the label of a box and of an alternative. No DOM: tested with vitest.
import { percent } from "./matrix";

export interface Segment {
  node: number;
  first: number;
  column: number;
  y0: number;
  y1: number;
  text: string;
  count: number;
  forced: number;
  prob: number;
  entropy: number | null;
  decisiveness: number | null;
  leaf: boolean;
  outcome: string;
}

export interface Placed {
  left: number;
  top: number;
  width: number;
  height: number;
}

/** Pixels of a box: `column` px per split, the height shared by the answers (a gap of 1 px). */
export function place(s: Segment, column: number, height: number): Placed {
  return {
    left: s.column * column,
    top: Math.round(s.y0 * height),
    width: column - 4,
    height: Math.max(1, Math.round(s.y1 * height) - Math.round(s.y0 * height) - 1),
  };
}

/** The height that gives the thinnest answer `row` px (at least `least`, at most `most`). */
export function treeHeight(segments: Segment[], row = 18, least = 120, most = 2400): number {
  const thinnest = Math.min(...segments.map((s) => s.y1 - s.y0).filter((h) => h > 0), 1);
  return Math.max(least, Math.min(most, Math.ceil(row / thinnest)));
}

/** The value a box is coloured by, and the scale's top (0 when nothing has a value). */
export function colourValues(segments: Segment[], by: "entropy" | "decisiveness"): [(number | null)[], number] {
  const values = segments.map((s) => s[by]);
  const top = Math.max(0, ...values.filter((v): v is number => v !== null && Number.isFinite(v)));
  return [values, top];
}

/** A box's text: a leaf's outcome first (a long answer's end is cut off on screen), its count,
 * then its tokens (the prompt's tail for the first box). */
export function boxLabel(s: Segment, shown: (t: string) => string, keep = 60): string {
  const text = shown(s.text);
  const cut = text.length > keep ? `…${text.slice(text.length - keep + 1)}` : text;
  const outcome = s.outcome ? `[${s.outcome}] ` : "";
  const forced = s.forced ? `, ${s.forced} forced` : "";
  return `${outcome}(${s.count}${forced}) ${cut}`;
}

/** An alternative next token as a button's text: the token and its probability in percent. */
export function alternativeLabel(text: string, prob: number, shown: (t: string) => string): string {
  return `${shown(text)} ${percent(prob)}`;
}
