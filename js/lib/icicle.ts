// Pure layout of the profile's icicle chart: the module tree by time, each
// module a box as wide as its share of its parent's time, one row per depth.
// No DOM: tested with vitest.

export interface ModuleRow {
  module: string;
  depth: number;
  total_s: number;
  self_s: number;
  kind: string;
}

export interface Box {
  row: ModuleRow;
  level: number; // depth below the zoomed module (0 = the zoomed module itself)
  x0: number; // fractions of the width
  x1: number;
}

/** The nearest module in `rows` that encloses `name` (by dotted prefix); the root for top-level names. */
export function parentOf(name: string, names: Set<string>, root: string): string | null {
  if (name === root) return null;
  let prefix = name;
  while (prefix.includes(".")) {
    prefix = prefix.slice(0, prefix.lastIndexOf("."));
    if (names.has(prefix)) return prefix;
  }
  return root;
}

/** Boxes of the subtree under `zoom` (the root when empty), at most `levels` deep. */
export function icicle(rows: ModuleRow[], zoom = "", levels = 6): Box[] {
  if (!rows.length) return [];
  const root = rows.find((r) => r.depth === 0)?.module ?? rows[0].module;
  const names = new Set(rows.map((r) => r.module));
  const children = new Map<string, ModuleRow[]>();
  for (const row of rows) {
    const parent = parentOf(row.module, names, root);
    if (parent === null) continue;
    if (!children.has(parent)) children.set(parent, []);
    children.get(parent)!.push(row);
  }
  const start = rows.find((r) => r.module === (zoom || root)) ?? rows.find((r) => r.module === root)!;
  const boxes: Box[] = [];
  const place = (row: ModuleRow, level: number, x0: number, x1: number) => {
    boxes.push({ row, level, x0, x1 });
    if (level + 1 >= levels) return;
    const kids = children.get(row.module) ?? [];
    const total = row.total_s || 1;
    let x = x0;
    for (const kid of kids) {
      const width = ((x1 - x0) * kid.total_s) / total;
      place(kid, level + 1, x, x + width);
      x += width;
    }
  };
  place(start, 0, 0, 1);
  return boxes;
}

/** Points of a memory timeline scaled into a width x height box (y grows downwards). */
export function polyline(points: [number, number][], width: number, height: number): string {
  if (!points.length) return "";
  const tMax = points[points.length - 1][0] || 1;
  const yMax = Math.max(...points.map((p) => p[1]), 1);
  return points.map(([t, y]) => `${((t / tMax) * width).toFixed(1)},${(height - (y / yMax) * height).toFixed(1)}`)
    .join(" ");
}

/** Rows sorted by a column (numbers descending, text ascending). */
export function sortedBy<T extends Record<string, unknown>>(rows: T[], key: keyof T): T[] {
  return [...rows].sort((a, b) => {
    const x = a[key];
    const y = b[key];
    return typeof x === "number" && typeof y === "number" ? y - x : String(x).localeCompare(String(y));
  });
}
