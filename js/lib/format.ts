// Pure formatting of model facts for display. No DOM here: tested with vitest.

export interface ModelFacts {
  name: string;
  architecture: string;
  model_type: string;
  kind: string;
  n_layers: number;
  n_heads: number;
  n_kv_heads: number;
  head_dim: number;
  hidden_size: number;
  vocab_size: number;
  context_length: number | null;
  n_parameters: number;
  dtype: string;
  device: string;
  attn_implementation: string;
}

/** 134_515_008 -> "134.5M"; small numbers stay exact. */
export function formatCount(n: number): string {
  const units: [string, number][] = [["B", 1e9], ["M", 1e6], ["k", 1e3]];
  for (const [unit, size] of units) {
    if (Math.abs(n) >= size) return `${(n / size).toFixed(1)}${unit}`;
  }
  return String(n);
}

/** 8192 -> "8,192" whatever the browser's locale. */
export function formatInt(n: number): string {
  return String(Math.trunc(n)).replace(/\B(?=(\d{3})+(?!\d))/g, ",");
}

/** The rows of the model card, label then value, in reading order. */
export function factRows(f: ModelFacts): [string, string][] {
  const heads = f.n_kv_heads !== f.n_heads ? `${f.n_heads} (${f.n_kv_heads} key/value heads, grouped)` : `${f.n_heads}`;
  return [
    ["architecture", `${f.architecture} (${f.model_type})`],
    ["kind", f.kind === "causal" ? "causal: generates left to right" : "masked: attends both ways"],
    ["layers", String(f.n_layers)],
    ["heads per layer", heads],
    ["head size", String(f.head_dim)],
    ["hidden size", formatInt(f.hidden_size)],
    ["vocabulary", formatInt(f.vocab_size)],
    ["context length", f.context_length ? `${formatInt(f.context_length)} tokens` : "unknown"],
    ["parameters", formatCount(f.n_parameters)],
    ["weights", `${f.dtype} on ${f.device}`],
    ["attention", f.attn_implementation],
  ];
}
