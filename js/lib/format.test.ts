import { describe, expect, it } from "vitest";
import { factRows, formatCount, formatInt, type ModelFacts } from "./format";

const smollm2: ModelFacts = {
  name: "smollm2-135m", architecture: "LlamaForCausalLM", model_type: "llama", kind: "causal",
  n_layers: 30, n_heads: 9, n_kv_heads: 3, head_dim: 64, hidden_size: 576, vocab_size: 49152,
  context_length: 8192, n_parameters: 134515008, dtype: "float32", device: "cpu", attn_implementation: "sdpa",
};

describe("formatCount", () => {
  it("abbreviates with one decimal", () => {
    expect(formatCount(134515008)).toBe("134.5M");
    expect(formatCount(4339200)).toBe("4.3M");
    expect(formatCount(7_000_000_000)).toBe("7.0B");
    expect(formatCount(1500)).toBe("1.5k");
    expect(formatCount(999)).toBe("999");
  });
});

describe("formatInt", () => {
  it("groups thousands independent of locale", () => {
    expect(formatInt(8192)).toBe("8,192");
    expect(formatInt(49152)).toBe("49,152");
    expect(formatInt(1234567)).toBe("1,234,567");
    expect(formatInt(512)).toBe("512");
  });
});

describe("factRows", () => {
  it("names grouped key/value heads and the context", () => {
    const rows = Object.fromEntries(factRows(smollm2));
    expect(rows["heads per layer"]).toBe("9 (3 key/value heads, grouped)");
    expect(rows["context length"]).toBe("8,192 tokens");
    expect(rows["parameters"]).toBe("134.5M");
    expect(rows["kind"]).toMatch(/^causal/);
  });
  it("says when the context is unknown and heads are not grouped", () => {
    const rows = Object.fromEntries(factRows({ ...smollm2, n_kv_heads: 9, context_length: null, kind: "masked" }));
    expect(rows["heads per layer"]).toBe("9");
    expect(rows["context length"]).toBe("unknown");
    expect(rows["kind"]).toMatch(/^masked/);
  });
});
