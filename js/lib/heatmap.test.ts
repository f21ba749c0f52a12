import { describe, expect, it } from "vitest";
import { asDataView, binRange, cellAt, colour, decodeRowsUint8, luminance, maxOf, toPixels, headColour, headRgb, headViewKeys, regionOf, diverging, gridLayout } from "./heatmap";

function buffers(values: number[], scales: number[]): [DataView, DataView] {
  const s = new DataView(new ArrayBuffer(scales.length * 4));
  scales.forEach((v, i) => s.setFloat32(i * 4, v, true));
  return [new DataView(Uint8Array.from(values).buffer), s];
}

describe("decodeRowsUint8", () => {
  it("applies one scale per row", () => {
    const [v, s] = buffers([255, 0, 51, 255], [0.5, 1.0]);
    const m = decodeRowsUint8([2, 2], v, s);
    expect(Array.from(m.data).map((x) => +x.toFixed(3))).toEqual([0.5, 0, 0.2, 1]);
  });
  it("refuses buffers of the wrong size", () => {
    const [v, s] = buffers([1, 2, 3], [1]);
    expect(() => decodeRowsUint8([2, 2], v, s)).toThrow(/do not match/);
  });
  it("honours the byteOffset of a sliced buffer", () => {
    const backing = new Uint8Array([9, 9, 9, 255, 128]);
    const view = asDataView(backing.subarray(3));
    expect(view.byteLength).toBe(2);
    expect(view.getUint8(0)).toBe(255);
  });
});

describe("colour", () => {
  it("runs from white to dark, and darkens monotonically (reads in greyscale)", () => {
    expect(colour(0)).toEqual([255, 255, 255]);
    let last = Infinity;
    for (let i = 0; i <= 100; i++) {
      const l = luminance(colour(i / 100));
      expect(l).toBeLessThanOrEqual(last + 1e-9);
      last = l;
    }
    expect(luminance(colour(1))).toBeLessThan(0.05);
  });
  it("clamps and survives NaN", () => {
    expect(colour(-1)).toEqual(colour(0));
    expect(colour(7)).toEqual(colour(1));
    expect(colour(Number.NaN)).toEqual(colour(0));
  });
});

describe("pixels and geometry", () => {
  it("makes one RGBA pixel per cell, the max in full colour", () => {
    const m = { rows: 1, cols: 2, data: Float32Array.from([0, 0.5]) };
    expect(maxOf(m)).toBe(0.5);
    const px = toPixels(m);
    expect(px.length).toBe(8);
    expect(Array.from(px.slice(4, 8))).toEqual([...colour(1), 255]);
  });
  it("finds the cell under the pointer", () => {
    expect(cellAt(0, 0, 100, 100, 4, 4)).toEqual({ row: 0, col: 0 });
    expect(cellAt(99, 30, 100, 100, 4, 4)).toEqual({ row: 1, col: 3 });
    expect(cellAt(100, 5, 100, 100, 4, 4)).toBeNull();
  });
  it("splits positions into bins like the Python side", () => {
    expect(binRange(0, 3, 10)).toEqual([0, 3]);
    expect(binRange(1, 3, 10)).toEqual([3, 7]);
    expect(binRange(2, 3, 10)).toEqual([7, 10]);
  });
});

describe("head view and zoom geometry", () => {
  it("keeps each head's strong keys, in token order", () => {
    const rows = { rows: 2, cols: 5, data: new Float32Array([0.7, 0.2, 0.05, 0.04, 0.01, 0.0, 0.0, 0.1, 0.0, 0.9]) };
    expect(headViewKeys(rows, 2, 0.02)).toEqual([0, 1, 2, 4]);
    expect(headViewKeys(rows, 2, 0.5)).toEqual([0, 4]);
    expect(headViewKeys(rows, 5, 0.02, 2)).toEqual([0, 4]);
  });
  it("gives heads distinct colours", () => {
    const colours = new Set(Array.from({ length: 12 }, (_, h) => headColour(h, 12)));
    expect(colours.size).toBe(12);
  });
  it("maps a dragged rectangle back to token positions, inside a zoomed region too", () => {
    expect(regionOf({ row: 1, col: 3 }, { row: 0, col: 2 }, 4, 4, [0, 4, 0, 4])).toEqual([0, 2, 2, 4]);
    // 100 tokens pooled into 10 bins, zoomed to queries 50-100, keys 0-50
    expect(regionOf({ row: 0, col: 0 }, { row: 4, col: 9 }, 10, 10, [50, 100, 0, 50])).toEqual([50, 75, 0, 50]);
  });
});

describe("diverging colours for signed scores", () => {
  it("is white at zero and darkens with magnitude on both sides, alike in greyscale", () => {
    expect(diverging(0)).toEqual([255, 255, 255]);
    let last = 1.1;
    for (const v of [0, 0.25, 0.5, 0.75, 1]) {
      const [pos, neg] = [luminance(diverging(v)), luminance(diverging(-v))];
      expect(pos).toBeLessThan(last);
      expect(Math.abs(pos - neg)).toBeLessThan(0.12); // the sign is not carried by lightness alone
      last = pos;
    }
    expect(diverging(5)).toEqual(diverging(1));
    expect(diverging(-1)[2]).toBeGreaterThan(diverging(-1)[0]); // negative is blue
  });
});

describe("gridLayout", () => {
  it("keeps a square-ish model in one block", () => {
    const g = gridLayout(4, 8, 22, 8);
    expect([g.blocks, g.perBlock, g.width, g.height]).toEqual([1, 4, 176, 88]);
    expect(g.origin(3, 7)).toEqual([154, 66]);
    expect(g.at(160, 70)).toEqual({ layer: 3, head: 7 });
  });
  it("wraps many layers into side-by-side blocks, and maps points back", () => {
    const g = gridLayout(30, 9, 22, 8); // SmolLM2: 30 layers x 9 heads
    expect([g.blocks, g.perBlock]).toEqual([2, 15]);
    expect(g.height / g.width).toBeLessThan(1);
    for (const [layer, head] of [[0, 0], [14, 8], [15, 0], [29, 8]]) {
      const [x, y] = g.origin(layer, head);
      expect(g.at(x + 11, y + 11)).toEqual({ layer, head });
    }
    expect(g.at(9 * 22 + 3, 10)).toBeNull(); // the gap between blocks
  });
  it("says null past the last layer of a short last block", () => {
    const g = gridLayout(7, 2, 10, 4); // 2 blocks of 4 layers: the second holds 3
    expect([g.blocks, g.perBlock]).toEqual([2, 4]);
    expect(g.at(24 + 5, 35)).toBeNull();
    expect(g.at(24 + 5, 25)).toEqual({ layer: 6, head: 0 });
  });
});

describe("head colours", () => {
  it("are the HSL hues as rgb (red first, then round the wheel)", () => {
    expect(headRgb(0, 6)).toEqual([195, 34, 34]);  // hsl(0, 70%, 45%)
    expect(headRgb(2, 6)).toEqual([34, 195, 34]);  // hsl(120, 70%, 45%)
    expect(headColour(4, 6)).toBe("rgb(34, 34, 195)");
  });
});
