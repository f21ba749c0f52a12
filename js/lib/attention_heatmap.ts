// One head's attention as a heatmap: token labels on both axes when few enough
// fit, a colour scale legend, a hover tooltip, a click that picks a query row
// and a dragged rectangle that zooms (the panel asks Python for that region).
import { binRange, cellAt, type Matrix, maxOf, regionOf, toPixels } from "./heatmap";
import { legend } from "./legend";
import { el, focusable, shown } from "./widget_io";

export type Region = [number, number, number, number]; // [q0, q1, k0, k1], stops exclusive

const HEATMAP_PX = 420;
const AXIS_LABELS = 40; // up to this many tokens in view, each gets its label on the axes

export interface HeatmapView {
  element: HTMLElement;
  canvas: HTMLCanvasElement;
  /** Draw `map` (pooled probabilities of `region`) with the picked query's row outlined. */
  draw(map: Matrix | null, region: Region, tokens: string[], query: number): void;
  destroy(): void;
}

/** The heatmap's elements: the canvas between its token axes, the colour scale, tooltip and lasso. */
function heatmapParts() {
  const box = el("div", "lw-attn-map");
  const canvas = el("canvas", "lw-attn-heatmap");
  canvas.width = canvas.height = HEATMAP_PX;
  canvas.setAttribute("aria-label",
    "attention heatmap: rows are queries, columns are keys; drag to zoom; arrow keys move a cell, Enter picks it");
  focusable(canvas);
  const spoken = el("div", "lw-sr-only"); // what the keyboard's cell is, read out as it moves
  spoken.setAttribute("role", "status");
  const tooltip = el("div", "lw-attn-tooltip");
  tooltip.hidden = true;
  const lasso = el("div", "lw-attn-lasso");
  lasso.hidden = true;
  const yAxis = el("div", "lw-attn-yaxis");
  const xAxis = el("div", "lw-attn-xaxis");
  yAxis.setAttribute("aria-hidden", "true"); // the tokens are in the strip; these only label the picture
  xAxis.setAttribute("aria-hidden", "true");
  const plot = el("div", "lw-attn-plot");
  plot.append(yAxis, canvas, el("div"), xAxis);
  const scale = el("div", "lw-attn-scale");
  box.append(el("div", "lw-attn-caption", "queries ↓  keys →  (drag to zoom)"), plot, scale, tooltip, lasso, spoken);
  return { box, canvas, tooltip, lasso, yAxis, xAxis, scale, spoken };
}

/** `onPick(query, key)`: a click on a cell; key -1 when the cell pools several keys. */
export function mountHeatmap(onPick: (query: number, key: number) => void,
  onZoom: (region: Region) => void): HeatmapView {
  const { box, canvas, tooltip, lasso, yAxis, xAxis, scale, spoken } = heatmapParts();
  const ctx = canvas.getContext("2d")!;

  let current: { map: Matrix; region: Region; tokens: string[]; query: number } | null = null;
  const pickCell = picker(onPick, () => current);
  const keys = keyboardCells(canvas, spoken, () => current, pickCell,
    () => current && draw(current.map, current.region, current.tokens, current.query));

  function draw(map: Matrix | null, region: Region, tokens: string[], query: number) {
    current = map ? { map, region, tokens, query } : null;
    if (!map) return;
    const started = performance.now();
    const off = document.createElement("canvas");
    off.width = map.cols;
    off.height = map.rows;
    const max = maxOf(map);
    off.getContext("2d")!.putImageData(new ImageData(toPixels(map, max), map.cols, map.rows), 0, 0);
    ctx.imageSmoothingEnabled = false;
    ctx.clearRect(0, 0, HEATMAP_PX, HEATMAP_PX);
    ctx.drawImage(off, 0, 0, HEATMAP_PX, HEATMAP_PX);
    outlineQuery(ctx, map, region, query);
    keys.outline(ctx, map);
    drawAxes(yAxis, xAxis, region, tokens);
    scale.replaceChildren(legend(map.rows < region[1] - region[0] ? "weight (max of each cell)" : "weight",
      "sequential", max));
    canvas.dataset.drawn = "true";
    canvas.dataset.drawMs = (performance.now() - started).toFixed(2); // read by the benchmark
  }

  // --- pointer: hover tooltip, click picks a query, drag zooms ---
  let pressed: { row: number; col: number; x: number; y: number } | null = null;
  const local = (event: MouseEvent) => {
    const rect = canvas.getBoundingClientRect();
    return { x: event.clientX - rect.left, y: event.clientY - rect.top, rect };
  };
  const cellFrom = (event: MouseEvent) => {
    if (!current) return null;
    const { x, y, rect } = local(event);
    return cellAt(x, y, rect.width, rect.height, current.map.rows, current.map.cols);
  };
  // where the canvas sits in the box the tooltip and lasso are placed in (its plot may be scrolled)
  const origin = () => {
    const [c, b] = [canvas.getBoundingClientRect(), box.getBoundingClientRect()];
    return { left: c.left - b.left, top: c.top - b.top };
  };
  canvas.addEventListener("mousemove", (event) => {
    const { x, y } = local(event);
    const at = origin();
    if (pressed) {
      Object.assign(lasso.style, {
        left: `${at.left + Math.min(pressed.x, x)}px`, top: `${at.top + Math.min(pressed.y, y)}px`,
        width: `${Math.abs(x - pressed.x)}px`, height: `${Math.abs(y - pressed.y)}px`,
      });
      lasso.hidden = Math.abs(x - pressed.x) < 4 && Math.abs(y - pressed.y) < 4;
    }
    const cell = cellFrom(event);
    if (!cell || !current) {
      tooltip.hidden = true;
      return;
    }
    tooltip.textContent = describeCell(current.map, current.region, current.tokens, cell);
    tooltip.style.left = `${at.left + x + 12}px`;
    tooltip.style.top = `${at.top + y + 12}px`;
    tooltip.hidden = false;
  });
  canvas.addEventListener("mouseleave", () => (tooltip.hidden = true));
  canvas.addEventListener("mousedown", (event) => {
    const cell = cellFrom(event);
    if (!cell) return;
    event.preventDefault();
    const { x, y } = local(event);
    pressed = { ...cell, x, y };
  });
  const release = (event: MouseEvent) => {
    if (!pressed || !current) return;
    const start = pressed;
    pressed = null;
    lasso.hidden = true;
    const { map, region } = current;
    const { rect, ...at } = local(event);
    const x = Math.min(Math.max(at.x, 0), rect.width - 1);
    const y = Math.min(Math.max(at.y, 0), rect.height - 1);
    const end = cellAt(x, y, rect.width, rect.height, map.rows, map.cols)!;
    if (Math.abs(x - start.x) < 4 && Math.abs(y - start.y) < 4) { // a click: pick that query (and key)
      pickCell(end.row, end.col);
      return;
    }
    const zoom = regionOf(start, end, map.rows, map.cols, region);
    if (zoom[1] - zoom[0] >= 2 || zoom[3] - zoom[2] >= 2) onZoom(zoom);
  };
  window.addEventListener("mouseup", release);

  return { element: box, canvas, draw, destroy: () => window.removeEventListener("mouseup", release) };
}

/** The selected query's row, outlined. */
function outlineQuery(ctx: CanvasRenderingContext2D, map: Matrix, [q0, q1]: Region, query: number) {
  if (query < q0 || query >= q1) return;
  const row = Math.floor(((query - q0) * map.rows) / (q1 - q0));
  const h = HEATMAP_PX / map.rows;
  ctx.strokeStyle = "#e6550d";
  ctx.lineWidth = 2;
  ctx.strokeRect(1, row * h + 1, HEATMAP_PX - 2, Math.max(2, h - 2));
}

/** What picking the map's cell (row, col) means: its first query, and its key (-1 when it pools several). */
function picker(onPick: (query: number, key: number) => void, now: () => { map: Matrix; region: Region } | null) {
  return (row: number, col: number) => {
    const shown = now();
    if (!shown) return;
    const { map, region } = shown;
    const [k0, k1] = binRange(col, map.cols, region[3] - region[2]);
    onPick(binRange(row, map.rows, region[1] - region[0])[0] + region[0], k1 - k0 === 1 ? k0 + region[2] : -1);
  };
}

/** The heatmap from the keyboard: arrows move a cell (outlined, and described in `spoken` for a
 * screen reader), Enter or Space picks it as a click does. */
function keyboardCells(canvas: HTMLCanvasElement, spoken: HTMLElement,
  now: () => { map: Matrix; region: Region; tokens: string[]; query: number } | null,
  pick: (row: number, col: number) => void, redraw: () => void) {
  let cell: { row: number; col: number } | null = null;
  const moves: Record<string, [number, number]> = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1],
    ArrowRight: [0, 1] };
  canvas.addEventListener("keydown", (event) => {
    const shown = now();
    if (!shown) return;
    const { map, region, tokens } = shown;
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      if (cell) pick(cell.row, cell.col);
      return;
    }
    const move = moves[event.key];
    if (!move) return;
    event.preventDefault();
    const clamp = (v: number, n: number) => Math.min(n - 1, Math.max(0, v));
    const [q0, q1] = region;
    const picked = shown.query >= q0 && shown.query < q1 ? Math.floor(((shown.query - q0) * map.rows) / (q1 - q0)) : 0;
    cell = cell ? { row: clamp(cell.row + move[0], map.rows), col: clamp(cell.col + move[1], map.cols) }
      : { row: picked, col: 0 }; // the first press lands on the picked query's row
    spoken.textContent = describeCell(map, region, tokens, cell);
    redraw();
  });
  canvas.addEventListener("blur", () => redraw());
  return {
    /** The keyboard's cell, outlined while the heatmap has the focus. */
    outline(ctx: CanvasRenderingContext2D, map: Matrix) {
      if (!cell || document.activeElement !== canvas) return;
      const [w, h] = [HEATMAP_PX / map.cols, HEATMAP_PX / map.rows];
      ctx.setLineDash([3, 2]);
      ctx.strokeStyle = "#3182bd";
      ctx.lineWidth = 2;
      ctx.strokeRect(cell.col * w + 1, cell.row * h + 1, Math.max(2, w - 2), Math.max(2, h - 2));
      ctx.setLineDash([]);
    },
  };
}

/** The tooltip of a cell: its query and key (or their ranges, when pooled) and weight. */
function describeCell(map: Matrix, [q0r, q1r, k0r, k1r]: Region, tokens: string[], cell: { row: number; col: number }) {
  const [q0, q1] = binRange(cell.row, map.rows, q1r - q0r).map((v) => v + q0r);
  const [k0, k1] = binRange(cell.col, map.cols, k1r - k0r).map((v) => v + k0r);
  const name = (a: number, b: number) => (b - a === 1 ? `${a} ${JSON.stringify(tokens[a])}` : `${a}-${b - 1}`);
  const weight = map.data[cell.row * map.cols + cell.col];
  return `query ${name(q0, q1)} → key ${name(k0, k1)}: ${weight.toFixed(3)}${q1 - q0 > 1 || k1 - k0 > 1 ? " (max)" : ""}`;
}

/** Token labels along both axes when few enough fit, positions otherwise. */
function drawAxes(yAxis: HTMLElement, xAxis: HTMLElement, [q0, q1, k0, k1]: Region, tokens: string[]) {
  const labels = (axis: HTMLElement, start: number, stop: number, vertical: boolean) => {
    const n = stop - start;
    const every = n <= AXIS_LABELS ? 1 : Math.ceil(n / 10);
    const marks: HTMLSpanElement[] = [];
    for (let i = 0; i < n; i += every) {
      const text = every === 1 ? shown(tokens[start + i]) : String(start + i);
      const mark = el("span", "lw-attn-tick", text.length > 12 ? `${text.slice(0, 11)}…` : text);
      const at = ((i + 0.5) / n) * HEATMAP_PX;
      if (vertical) mark.style.top = `${at}px`;
      else mark.style.left = `${at}px`;
      marks.push(mark);
    }
    axis.replaceChildren(...marks);
  };
  labels(yAxis, q0, q1, true);
  labels(xAxis, k0, k1, false);
}
