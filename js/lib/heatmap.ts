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

/** Relative luminance (sRGB, 0..1): used to check the map reads in greyscale. */
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
