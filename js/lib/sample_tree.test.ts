import { describe, expect, it } from "vitest";
import { alternativeLabel, boxLabel, colourValues, place, type Segment, treeHeight } from "./sample_tree";

const seg = (over: Partial<Segment>): Segment => ({
  node: 0, first: 0, column: 0, y0: 0, y1: 1, text: "a", count: 4, forced: 0, prob: 1,
  entropy: null, decisiveness: null, leaf: false, outcome: "", ...over,
});

describe("sample tree", () => {
  it("places boxes by column and by the answers through them", () => {
    expect(place(seg({ column: 2, y0: 0.25, y1: 0.5 }), 100, 400)).toEqual({ left: 200, top: 100, width: 96, height: 99 });
    expect(place(seg({ y0: 0.5, y1: 0.5 }), 100, 400).height).toBe(1);
  });
  it("makes the thinnest answer one row tall, within bounds", () => {
    expect(treeHeight([seg({}), seg({ y0: 0, y1: 0.125 })], 18)).toBe(144);
    expect(treeHeight([seg({})], 18)).toBe(120);
    expect(treeHeight([seg({ y1: 1e-6 })], 18)).toBe(2400);
  });
  it("colours by entropy or decisiveness, with the largest on top", () => {
    const segments = [seg({ entropy: 2, decisiveness: null }), seg({ entropy: 0.5, decisiveness: 1 })];
    expect(colourValues(segments, "entropy")).toEqual([[2, 0.5], 2]);
    expect(colourValues(segments, "decisiveness")).toEqual([[null, 1], 1]);
    expect(colourValues([seg({})], "entropy")[1]).toBe(0);
  });
  it("labels boxes with their tokens, outcome and count, long text cut at the start", () => {
    const shown = (t: string) => t.replace(/\n/g, "↵");
    expect(boxLabel(seg({ text: " blue.\n", outcome: "blue", count: 3 }), shown)).toBe("[blue] (3)  blue.↵");
    expect(boxLabel(seg({ text: "x".repeat(80), forced: 1, count: 0 }), shown, 10)).toBe(`(0, 1 forced) …${"x".repeat(9)}`);
    expect(alternativeLabel(" of", 0.0492, shown)).toBe(" of 4.9%");
  });
});
