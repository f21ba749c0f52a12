// The steering search view's geometry: where each candidate sits (fluency cost right, success
// up), the front as a path, and the axis ticks. Pure functions, tested with vitest.

export interface Point {
  label: string;
  kind: "attention" | "direction" | "none";
  success: number;
  cost: number;
  front: boolean;
}

export interface Frame {
  width: number;
  height: number;
  left: number; // room for the y axis
  bottom: number; // room for the x axis
}

export interface Scale {
  x(cost: number): number;
  y(success: number): number;
  xTicks: number[];
  yTicks: number[];
}

/** About five round ticks covering [lo, hi]. */
export function ticks(lo: number, hi: number, count = 5): number[] {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / count;
  const step = 10 ** Math.floor(Math.log10(raw));
  const nice = [1, 2, 5, 10].map((f) => f * step).find((s) => (hi - lo) / s <= count) ?? 10 * step;
  const out: number[] = [];
  for (let v = Math.ceil(lo / nice) * nice; v <= hi + nice * 1e-9; v += nice) out.push(Number(v.toPrecision(6)));
  return out;
}

/** The plot's scales: every point and the unedited run inside, a margin around. */
export function scales(points: Point[], plain: number, frame: Frame): Scale {
  const costs = [0, ...points.map((p) => p.cost)];
  const successes = [plain, ...points.map((p) => p.success)];
  const [x0, x1] = [0, Math.max(...costs) || 1];
  let [y0, y1] = [Math.min(...successes), Math.max(...successes)];
  if (y1 - y0 < 1e-9) [y0, y1] = [y0 - 0.5, y1 + 0.5];
  const pad = (y1 - y0) * 0.05;
  [y0, y1] = [y0 - pad, y1 + pad];
  const inner = { w: frame.width - frame.left - 8, h: frame.height - frame.bottom - 8 };
  return {
    x: (c) => frame.left + ((c - x0) / (x1 * 1.05 - x0)) * inner.w,
    y: (s) => 8 + (1 - (s - y0) / (y1 - y0)) * inner.h,
    xTicks: ticks(x0, x1),
    yTicks: ticks(y0, y1),
  };
}

/** The front's points, cheapest first, as an SVG path. */
export function frontPath(points: Point[], scale: Scale): string {
  return points
    .filter((p) => p.front)
    .sort((a, b) => a.cost - b.cost)
    .map((p, i) => `${i ? "L" : "M"}${scale.x(p.cost).toFixed(1)},${scale.y(p.success).toFixed(1)}`)
    .join(" ");
}
