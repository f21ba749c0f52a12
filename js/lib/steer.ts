// Pure logic of the attention editor: the factor slider's scale, turning UI
// choices into edits (the same dicts as Python's ScaleAttention / AblateHead
// to_dict), and the token diff of old and new outputs. Tested with vitest.

export interface ScaleSpec {
  kind: "scale_attention";
  factor: number;
  keys: [number, number][];
  queries: [number, number][] | null;
  layers: number[] | null;
  heads: number[] | null;
  stack?: string; // an encoder-decoder's "encoder", "decoder" or "cross"; absent for a decoder-only model
}
export interface AblateSpec {
  kind: "ablate_head";
  layer: number;
  head: number;
  mode: "zero" | "mean";
  stack?: string;
  positions?: [number, number][]; // only there; absent: at every position
}

/** A residual-stream direction, as Python's Direction.to_dict() (the vector as base64 float32). */
export interface DirectionSpec {
  vector_f32: string;
  model: string | null;
  layer: number | null;
  name: string;
}
export interface SteerSpec {
  kind: "steer_residual";
  direction: DirectionSpec;
  layers: number[];
  strength: number;
  positions: "prompt" | "generated" | [number, number][] | null;
  stack?: string;
}

/** The stack field an edit carries: none for a decoder-only model's one attention. */
const onStack = (stack: string | null | undefined) => (stack && stack !== "self" ? { stack } : {});
export interface AblateMlpSpec {
  kind: "ablate_mlp";
  layer: number;
  positions?: [number, number][]; // only there; absent: at every position
}
export type EditSpec = ScaleSpec | AblateSpec | SteerSpec | AblateMlpSpec;

/** Which heads a slider applies to. */
export type Scope =
  | { scope: "all" }
  | { scope: "layers"; from: number; to: number } // inclusive
  | { scope: "picked"; picked: [number, number][] }; // [layer, head] pairs

export const SLIDER_MAX = 1000;
const MIDDLE = SLIDER_MAX / 2;

/** Slider position (0..1000) to factor: 0 masks, then log scale 0.1 .. 1 (middle) .. 10. */
export function sliderToFactor(position: number): number {
  if (position <= 0) return 0;
  const p = Math.min(SLIDER_MAX, position);
  return Number((10 ** ((p - MIDDLE) / MIDDLE)).toPrecision(3));
}

/** The inverse, for showing a factor set from Python. */
export function factorToSlider(factor: number): number {
  if (!(factor > 0)) return 0;
  const p = Math.round(MIDDLE + MIDDLE * Math.log10(factor));
  return Math.min(SLIDER_MAX, Math.max(1, p));
}

/** The edits one slider setting makes: one per layer when heads were picked in the grid. */
export function steerEdits(keys: [number, number], factor: number, target: Scope, stack: string | null = null): ScaleSpec[] {
  const base = { kind: "scale_attention" as const, factor, keys: [keys] as [number, number][], queries: null, ...onStack(stack) };
  if (target.scope === "all") return [{ ...base, layers: null, heads: null }];
  if (target.scope === "layers") {
    const [a, b] = [Math.min(target.from, target.to), Math.max(target.from, target.to)];
    return [{ ...base, layers: Array.from({ length: b - a + 1 }, (_, i) => a + i), heads: null }];
  }
  const byLayer = new Map<number, number[]>();
  for (const [layer, head] of target.picked) byLayer.set(layer, [...(byLayer.get(layer) ?? []), head]);
  return [...byLayer.entries()]
    .sort(([a], [b]) => a - b)
    .map(([layer, heads]) => ({ ...base, layers: [layer], heads: [...new Set(heads)].sort((x, y) => x - y) }));
}

/** Whether two scale edits steer the same keys, queries, layers, heads and stack (their factors aside). */
export const sameTarget = (a: ScaleSpec, b: ScaleSpec) => JSON.stringify([a.keys, a.queries, a.layers, a.heads, a.stack ?? null]) ===
  JSON.stringify([b.keys, b.queries, b.layers, b.heads, b.stack ?? null]);

/** Edits after moving the slider: edits on the same keys and heads are replaced; factor 1 removes them. */
export function applySteer(specs: EditSpec[], made: ScaleSpec[]): EditSpec[] {
  const kept = specs.filter((s) => s.kind !== "scale_attention" || !made.some((m) => sameTarget(s, m)));
  return made[0]?.factor === 1 ? kept : [...kept, ...made];
}

/** Ablate a head, or bring it back if it was ablated. */
export function toggleAblation(specs: EditSpec[], layer: number, head: number, stack: string | null = null): EditSpec[] {
  const which = onStack(stack);
  const hit = (s: EditSpec) => s.kind === "ablate_head" && s.layer === layer && s.head === head &&
    (s.stack ?? null) === (which.stack ?? null);
  return specs.some(hit) ? specs.filter((s) => !hit(s))
    : [...specs, { kind: "ablate_head", layer, head, mode: "zero", ...which }];
}

function spans(spans: [number, number][], tokens: string[]): string {
  return spans
    .map(([a, b]) => `${b - a === 1 ? a : `${a}–${b - 1}`} ${JSON.stringify(tokens.slice(a, b).join(""))}`)
    .join(", ");
}

function list(values: number[]): string {
  const sorted = [...values].sort((a, b) => a - b);
  const contiguous = sorted.every((v, i) => i === 0 || v === sorted[i - 1] + 1);
  return contiguous && sorted.length > 2 ? `${sorted[0]}–${sorted[sorted.length - 1]}` : sorted.join(", ");
}

/** One line for the edit list. */
export function describeEdit(spec: EditSpec, tokens: string[]): string {
  if (spec.kind === "ablate_mlp") {
    return `ablate block ${spec.layer}'s MLP${spec.positions ? ` at ${spans(spec.positions, tokens)}` : ""}`;
  }
  if (spec.kind === "steer_residual") {
    const at = spec.positions === null ? "" : typeof spec.positions === "string" ? ` at the ${spec.positions} tokens`
      : ` at ${spans(spec.positions, tokens)}`;
    const stream = spec.stack ? ` of the ${spec.stack}` : "";
    return `add ${spec.strength} × ${JSON.stringify(spec.direction.name || "direction")} after block${
      spec.layers.length > 1 ? "s" : ""} ${list(spec.layers)}${stream}${at}`;
  }
  const of = spec.stack ? ` of ${spec.stack} attention` : "";
  if (spec.kind === "ablate_head") {
    const at = spec.positions ? ` at ${spans(spec.positions, tokens)}` : "";
    return `ablate layer ${spec.layer} head ${spec.head}${of}${at} (${spec.mode})`;
  }
  const where = spec.layers === null && spec.heads === null
    ? "all layers and heads"
    : `${spec.layers === null ? "all layers" : `layers ${list(spec.layers)}`}, ${spec.heads === null ? "all heads" : `heads ${list(spec.heads)}`}`;
  const queries = spec.queries ? `, queries ${spans(spec.queries, tokens)}` : "";
  return `×${spec.factor} on keys ${spans(spec.keys, tokens)}${queries}; ${where}${of}`;
}

/** Which tokens changed between two outputs: a longest-common-subsequence diff.
 *  Returns, per token of each side, whether it is not in the common part. */
export function diffTokens(before: string[], after: string[]): { before: boolean[]; after: boolean[] } {
  const n = before.length;
  const m = after.length;
  const lcs: number[][] = Array.from({ length: n + 1 }, () => new Array<number>(m + 1).fill(0));
  for (let i = n - 1; i >= 0; i--) {
    for (let j = m - 1; j >= 0; j--) {
      lcs[i][j] = before[i] === after[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
    }
  }
  const out = { before: new Array<boolean>(n).fill(true), after: new Array<boolean>(m).fill(true) };
  let i = 0;
  let j = 0;
  while (i < n && j < m) {
    if (before[i] === after[j]) {
      out.before[i++] = false;
      out.after[j++] = false;
    } else if (lcs[i + 1][j] >= lcs[i][j + 1]) i++;
    else j++;
  }
  return out;
}

/** The span covered by two picked positions, stop exclusive. */
export function spanOf(a: number, b: number): [number, number] {
  return [Math.min(a, b), Math.max(a, b) + 1];
}
