import { describe, expect, it } from "vitest";
import { barHeights, binStrip, callAt, HIT, NONFINITE, stripColour } from "./debugger";

describe("the debugger's timeline strip", () => {
  it("keeps a call per column when they fit", () => {
    const bins = binStrip([0.1, 0.5, -1], [0, HIT, 0], 100);
    expect(bins.map((b) => b.first)).toEqual([0, 1, 2]);
    expect(bins[1].marks).toBe(HIT);
  });
  it("keeps the largest value and every mark when calls share a column", () => {
    const values = Array.from({ length: 1000 }, (_, i) => (i === 500 ? 3 : 1));
    const marks = values.map((_, i) => (i === 501 ? NONFINITE : 0));
    const bins = binStrip(values, marks, 10);
    expect(bins).toHaveLength(10);
    expect(bins[5].value).toBe(3);
    expect(bins[5].marks & NONFINITE).toBeTruthy();
    expect(bins[4].marks).toBe(0);
  });
  it("maps a click to the call under it", () => {
    expect(callAt(0, 200, 1000)).toBe(0);
    expect(callAt(199.9, 200, 1000)).toBe(999);
    expect(callAt(100, 200, 1000)).toBe(500);
    expect(callAt(5, 200, 0)).toBe(0);
  });
  it("colours unknown grey and non-finite red", () => {
    expect(stripColour({ first: 0, value: -1, marks: 0 }, 2)).toEqual([190, 190, 190]);
    expect(stripColour({ first: 0, value: 1, marks: NONFINITE }, 2)).toEqual([200, 30, 30]);
    expect(stripColour({ first: 0, value: 0, marks: 0 }, 2)).toEqual([255, 255, 255]);
  });
  it("draws histogram bars on a square-root scale", () => {
    expect(barHeights([0, 1, 100], 40)).toEqual([0, 4, 40]);
    expect(barHeights([0, 0], 40)).toEqual([0, 0]);
  });
});
