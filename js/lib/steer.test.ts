import { describe, expect, it } from "vitest";
import {
  applySteer, describeEdit, diffTokens, type EditSpec, factorToSlider, SLIDER_MAX, sliderToFactor, spanOf,
  steerEdits, toggleAblation,
} from "./steer";

describe("factor slider", () => {
  it("runs from 0 (mask) through 1 in the middle to 10, on a log scale", () => {
    expect(sliderToFactor(0)).toBe(0);
    expect(sliderToFactor(SLIDER_MAX / 2)).toBe(1);
    expect(sliderToFactor(SLIDER_MAX)).toBe(10);
    expect(sliderToFactor(1)).toBeCloseTo(0.1, 2);
    expect(sliderToFactor(750)).toBeCloseTo(Math.sqrt(10), 2);
  });
  it("is monotone and inverts", () => {
    let last = -1;
    for (let p = 0; p <= SLIDER_MAX; p += 10) {
      const f = sliderToFactor(p);
      expect(f).toBeGreaterThan(last);
      last = f;
      if (p > 0) expect(Math.abs(factorToSlider(f) - p)).toBeLessThanOrEqual(1);
    }
    expect(factorToSlider(0)).toBe(0);
    expect(factorToSlider(1000)).toBe(SLIDER_MAX);
  });
});

describe("edits from the UI", () => {
  it("builds the same dicts as Python's ScaleAttention.to_dict", () => {
    expect(steerEdits([3, 5], 4, { scope: "all" })).toEqual([
      { kind: "scale_attention", factor: 4, keys: [[3, 5]], queries: null, layers: null, heads: null },
    ]);
    expect(steerEdits([3, 5], 4, { scope: "layers", from: 4, to: 2 })[0].layers).toEqual([2, 3, 4]);
  });
  it("groups picked heads by layer", () => {
    const made = steerEdits([0, 1], 2, { scope: "picked", picked: [[3, 1], [1, 0], [3, 0], [3, 1]] });
    expect(made.map((m) => [m.layers, m.heads])).toEqual([[[1], [0]], [[3], [0, 1]]]);
  });
  it("replaces an edit on the same keys and heads, removes it at factor 1, keeps the others", () => {
    const ablate: EditSpec = { kind: "ablate_head", layer: 0, head: 1, mode: "zero" };
    let specs: EditSpec[] = [ablate];
    specs = applySteer(specs, steerEdits([2, 4], 3, { scope: "all" }));
    specs = applySteer(specs, steerEdits([6, 7], 0, { scope: "all" }));
    specs = applySteer(specs, steerEdits([2, 4], 5, { scope: "all" }));
    expect(specs).toHaveLength(3);
    expect(specs.filter((s) => s.kind === "scale_attention").map((s) => (s as { factor: number }).factor)).toEqual([0, 5]);
    specs = applySteer(specs, steerEdits([2, 4], 1, { scope: "all" }));
    expect(specs).toHaveLength(2);
    expect(specs[0]).toEqual(ablate);
  });
  it("toggles ablations", () => {
    const on = toggleAblation([], 2, 3);
    expect(on).toEqual([{ kind: "ablate_head", layer: 2, head: 3, mode: "zero" }]);
    expect(toggleAblation(on, 2, 3)).toEqual([]);
  });
  it("describes edits with their tokens", () => {
    const tokens = ["The", " cat", " sat"];
    expect(describeEdit(steerEdits([1, 3], 2.5, { scope: "all" })[0], tokens))
      .toBe('×2.5 on keys 1–2 " cat sat"; all layers and heads');
    expect(describeEdit(steerEdits([0, 1], 0, { scope: "layers", from: 1, to: 4 })[0], tokens))
      .toBe('×0 on keys 0 "The"; layers 1–4, all heads');
    expect(describeEdit({ kind: "ablate_head", layer: 1, head: 2, mode: "zero" }, tokens)).toBe("ablate layer 1 head 2 (zero)");
    expect(describeEdit({ kind: "ablate_head", layer: 1, head: 2, mode: "zero", positions: [[1, 2]] }, tokens))
      .toBe('ablate layer 1 head 2 at 1 " cat" (zero)');
  });
  it("orders a span whichever way it was dragged", () => {
    expect(spanOf(5, 2)).toEqual([2, 6]);
    expect(spanOf(3, 3)).toEqual([3, 4]);
  });
});

describe("token diff", () => {
  it("marks nothing when equal", () => {
    expect(diffTokens(["a", "b"], ["a", "b"])).toEqual({ before: [false, false], after: [false, false] });
  });
  it("marks a substitution on both sides", () => {
    expect(diffTokens([" a", " cat", "."], [" a", " dog", "."])).toEqual({
      before: [false, true, false],
      after: [false, true, false],
    });
  });
  it("keeps the common tail after an insertion in line", () => {
    const d = diffTokens(["x", "y", "z"], ["x", "new", "y", "z"]);
    expect(d.after).toEqual([false, true, false, false]);
    expect(d.before).toEqual([false, false, false]);
  });
  it("handles empty sides", () => {
    expect(diffTokens([], ["a"])).toEqual({ before: [], after: [true] });
  });
});

describe("an encoder-decoder's kinds of attention", () => {
  it("tags edits with the stack they steer, and none for a decoder-only model's one attention", () => {
    expect(steerEdits([2, 4], 5, { scope: "all" }, "cross")[0].stack).toBe("cross");
    expect("stack" in steerEdits([2, 4], 5, { scope: "all" }, "self")[0]).toBe(false);
    expect(toggleAblation([], 1, 0, "encoder")).toEqual([{ kind: "ablate_head", layer: 1, head: 0, mode: "zero", stack: "encoder" }]);
  });
  it("keeps the same keys and heads of two stacks apart", () => {
    const cross = steerEdits([2, 4], 5, { scope: "all" }, "cross");
    const encoder = steerEdits([2, 4], 3, { scope: "all" }, "encoder");
    expect(applySteer(cross, encoder)).toHaveLength(2);
    expect(applySteer([...cross, ...encoder], steerEdits([2, 4], 1, { scope: "all" }, "cross"))).toEqual(encoder);
    const both = toggleAblation(toggleAblation([], 0, 1, "cross"), 0, 1, "decoder");
    expect(both).toHaveLength(2);
    expect(toggleAblation(both, 0, 1, "cross")).toEqual([both[1]]);
    expect(describeEdit(cross[0], ["a", "b", "c", "d"])).toContain("of cross attention");
  });
});
