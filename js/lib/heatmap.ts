// Pure logic of the attention views: decoding answers, colour, geometry.
// No DOM here: tested with vitest.

/** An answer of the Python side: uint8 values with one float32 scale per row. */
export interface Matrix {
  rows: number;
  cols: number;
  data: Float32Array; // row-major
}

/** Decode uint8 + per-row scale buffers (value = byte / 255 * scale[row]). */
export function decodeRowsUint8(shape: [number, number], values: DataView, scales: DataView): Matrix {
  const [rows, cols] = shape;
  if (values.byteLength !== rows * cols || scales.byteLength !== rows * 4) {
    throw new Error(`buffer sizes do not match shape ${rows}x${cols}`);
  }
  const data = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    const scale = scales.getFloat32(r * 4, true) / 255;
    for (let c = 0; c < cols; c++) data[r * cols + c] = values.getUint8(r * cols + c) * scale;
  }
  return { rows, cols, data };
}

/** A view on a received buffer, honouring its byteOffset (buffers may be slices). */
export function asDataView(buffer: ArrayBuffer | DataView | ArrayBufferView): DataView {
  if (buffer instanceof DataView) return buffer;
  if (ArrayBuffer.isView(buffer)) return new DataView(buffer.buffer, buffer.byteOffset, buffer.byteLength);
  return new DataView(buffer);
}

// A sequential map from light to dark blue-purple: lightness falls monotonically,
// so it reads in greyscale and in print. Stops as [r, g, b].
const STOPS: [number, number, number][] = [
  [255, 255, 255],
  [224, 236, 244],
  [158, 188, 218],
  [140, 150, 198],
  [136, 86, 167],
  [110, 1, 107],
  [50, 0, 60],
];

/** Colour of a weight in [0, 1] (clamped). */
export function colour(value: number): [number, number, number] {
  const v = Math.min(1, Math.max(0, Number.isFinite(value) ? value : 0)) * (STOPS.length - 1);
  const i = Math.min(STOPS.length - 2, Math.floor(v));
  const t = v - i;
  const [a, b] = [STOPS[i], STOPS[i + 1]];
  return [0, 1, 2].map((k) => Math.round(a[k] + (b[k] - a[k]) * t)) as [number, number, number];
}

/** Relative luminance (sRGB, 0..1, WCAG): which ink reads on a colour, and that the map reads in greyscale. */
export function luminance([r, g, b]: [number, number, number]): number {
  const lin = (c: number) => {
    const s = c / 255;
    return s <= 0.03928 ? s / 12.92 : ((s + 0.055) / 1.055) ** 2.4;
  };
  return 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b);
}

/** Scale weights for display: the largest weight shown as full colour. */
export function maxOf(m: Matrix): number {
  let max = 0;
  for (const v of m.data) if (v > max) max = v;
  return max > 0 ? max : 1;
}

/** RGBA pixels of a matrix, one pixel per cell, for putImageData. */
export function toPixels(m: Matrix, max = maxOf(m)): Uint8ClampedArray<ArrayBuffer> {
  const px = new Uint8ClampedArray(new ArrayBuffer(m.rows * m.cols * 4));
  for (let i = 0; i < m.data.length; i++) {
    const [r, g, b] = colour(m.data[i] / max);
    px.set([r, g, b, 255], i * 4);
  }
  return px;
}

/** Which cell of a rows x cols map drawn in a width x height box is at (x, y); null outside. */
export function cellAt(x: number, y: number, width: number, height: number, rows: number, cols: number):
  { row: number; col: number } | null {
  if (x < 0 || y < 0 || x >= width || y >= height) return null;
  return { row: Math.floor((y / height) * rows), col: Math.floor((x / width) * cols) };
}

/** The token positions a pooled cell covers: bins split n positions as evenly as Python's linspace. */
export function binRange(bin: number, bins: number, n: number): [number, number] {
  const edge = (i: number) => Math.round((i * n) / bins);
  return [edge(bin), edge(bin + 1)];
}

/** The keys the head view draws for one query: each head's strongest keys (weight at
 *  least `min`, at most `perHead` per head), at most `limit` in all, in token order. */
export function headViewKeys(rows: Matrix, perHead = 5, min = 0.02, limit = 24): number[] {
  const score = new Map<number, number>();
  for (let h = 0; h < rows.rows; h++) {
    const row = Array.from(rows.data.subarray(h * rows.cols, (h + 1) * rows.cols));
    const top = row.map((w, k) => [w, k]).sort((a, b) => b[0] - a[0]).slice(0, perHead);
    for (const [w, k] of top) if (w >= min) score.set(k, Math.max(score.get(k) ?? 0, w));
  }
  return [...score.entries()].sort((a, b) => b[1] - a[1]).slice(0, limit).map(([k]) => k).sort((a, b) => a - b);
}

/** A distinct colour per head (hues spread round the wheel, mid lightness: visible on light and dark). */
export function headColour(head: number, heads: number): string {
  return `rgb(${headRgb(head, heads).join(", ")})`;
}

/** A head's colour as [r, g, b]: hues spread around the wheel, saturation 70%, lightness 45%. */
export function headRgb(head: number, heads: number): [number, number, number] {
  const hue = (Math.round((head * 360) / Math.max(1, heads)) % 360) / 60;
  const chroma = (1 - Math.abs(2 * 0.45 - 1)) * 0.7;
  const x = chroma * (1 - Math.abs((hue % 2) - 1));
  const [r, g, b] = [[chroma, x, 0], [x, chroma, 0], [0, chroma, x], [0, x, chroma], [x, 0, chroma], [chroma, 0, x]][Math.floor(hue) % 6];
  const m = 0.45 - chroma / 2;
  return [r, g, b].map((v) => Math.round((v + m) * 255)) as [number, number, number];
}

/** The region [q0, q1, k0, k1] covered by a dragged rectangle between two cells of a map that
 *  shows `region` pooled into rows x cols cells (stop exclusive). */
export function regionOf(a: { row: number; col: number }, b: { row: number; col: number }, rows: number, cols: number,
  region: [number, number, number, number]): [number, number, number, number] {
  const [q0, q1, k0, k1] = region;
  const [r0, r1] = [Math.min(a.row, b.row), Math.max(a.row, b.row)];
  const [c0, c1] = [Math.min(a.col, b.col), Math.max(a.col, b.col)];
  const qs = [binRange(r0, rows, q1 - q0)[0], binRange(r1, rows, q1 - q0)[1]];
  const ks = [binRange(c0, cols, k1 - k0)[0], binRange(c1, cols, k1 - k0)[1]];
  return [q0 + qs[0], q0 + qs[1], k0 + ks[0], k0 + ks[1]];
}

// A diverging map for signed scores: white at 0, blue for negative, orange-brown for
// positive; lightness falls with |value| on both sides, so magnitude reads in greyscale
// (the sign is also drawn as a mark, never by colour alone).
const NEGATIVE: [number, number, number] = [33, 102, 172];
const POSITIVE: [number, number, number] = [179, 88, 6];

/** Colour of a signed value in [-1, 1] (clamped). */
export function diverging(value: number): [number, number, number] {
  const v = Math.max(-1, Math.min(1, Number.isFinite(value) ? value : 0));
  const end = v < 0 ? NEGATIVE : POSITIVE;
  const t = Math.abs(v);
  return [0, 1, 2].map((k) => Math.round(255 + (end[k] - 255) * t)) as [number, number, number];
}

/** Where each head's thumbnail sits in the layers x heads grid. A model with many more layers
 *  than heads (SmolLM2: 30 x 9) would be a tall thin strip: its layers wrap into side-by-side
 *  blocks, so the grid stays within about 2:1. */
export interface GridLayout {
  blocks: number;
  perBlock: number; // layers in each block (the last may hold fewer)
  width: number;
  height: number;
  origin(layer: number, head: number): [number, number];
  /** The (layer, head) under a point in canvas pixels, or null (a gap, or past the last layer). */
  at(x: number, y: number): { layer: number; head: number } | null;
}

export function gridLayout(layers: number, heads: number, cell: number, gap: number): GridLayout {
  const blocks = Math.max(1, Math.ceil(layers / (2 * heads)));
  const perBlock = Math.ceil(layers / blocks);
  const blockWidth = heads * cell + gap;
  return {
    blocks,
    perBlock,
    width: blocks * blockWidth - gap,
    height: perBlock * cell,
    origin: (layer, head) => [Math.floor(layer / perBlock) * blockWidth + head * cell, (layer % perBlock) * cell],
    at(x, y) {
      const block = Math.floor(x / blockWidth);
      const head = Math.floor((x - block * blockWidth) / cell);
      const layer = block * perBlock + Math.floor(y / cell);
      if (x < 0 || y < 0 || block >= blocks || head >= heads || y >= perBlock * cell || layer >= layers) return null;
      return { layer, head };
    },
  };
}
