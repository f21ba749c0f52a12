// The attention panel shared by AttentionView and AttentionEditor: token strip,
// heatmap of one head (hover, click a query, drag to zoom), the layers x heads
// grid, the head view (one query's lines to its keys in every head of a layer),
// and export buttons. Matrices arrive on request as binary buffers; token text
// only ever goes through textContent or canvas fillText, never innerHTML.
import type { AnyModel } from "@anywidget/types";
import { binRange, cellAt, colour, headColour, headViewKeys, type Matrix, maxOf, regionOf, toPixels } from "./heatmap";
import { el, exportButtons, Requests, select, shown } from "./widget_io";


export interface ViewState {
  model_name: string;
  tokens: string[];
  n_prompt: number;
  n_layers: number;
  n_heads: number;
  layer: number;
  head: number;
  query: number;
  output_text: string;
  zoom: number[];
  revision: number;
  overview_size: number; // Python's OVERVIEW: the pooled size of a heatmap (defined once, sent as state)
  grid_size: number; // Python's GRID_CELL: the pooled size of each thumbnail of the grid
}

const HEATMAP_PX = 420;
const GRID_CELL_PX = 22;
const HEADVIEW_ROW_PX = 18;
const AXIS_LABELS = 40; // up to this many tokens in view, each gets its label on the axes
export interface PanelOptions {
  /** What a click on a token does: pick the query (default) or select keys (the editor). */
  stripMode?: () => "query" | "keys";
  onKeys?: (span: [number, number]) => void;
  keySpan?: () => number[];
  /** Outlines drawn on the grid (picked or ablated heads). */
  gridMarks?: () => { layer: number; head: number; colour: string }[];
  /** Return true when the click was handled (e.g. shift-click picks a head). */
  onGridClick?: (layer: number, head: number, event: MouseEvent) => boolean;
}

export interface Panel {
  element: HTMLElement;
  /** Redraw what depends on outside state: key highlight, grid marks. */
  refresh(): void;
  destroy(): void;
}

export function mountAttention(model: AnyModel<ViewState>, requests: Requests, options: PanelOptions = {}): Panel {
  let tokens = model.get("tokens");
  let alive = true;
  let overview: Matrix | null = null;
  const nHeads = model.get("n_heads");
  const nLayers = model.get("n_layers");
  const region = (): [number, number, number, number] => {
    const z = model.get("zoom");
    return z.length === 4 ? [z[0], z[1], z[2], z[3]] : [0, tokens.length, 0, tokens.length];
  };

  const view = el("div", "lw-attn");
  const header = el("div", "lw-attn-header");
  const [layerLabel, layerBox] = select("layer", nLayers, "L");
  const [headLabel, headBox] = select("head", nHeads, "H");
  const status = el("span", "lw-attn-status");
  const unzoom = el("button", "lw-button", "reset zoom");
  unzoom.hidden = true;
  const exports = exportButtons(requests, "attention", (text) => (status.textContent = text));
  header.append(layerLabel, headLabel, unzoom, status, exports);

  const strip = el("div", "lw-attn-tokens");
  strip.setAttribute("aria-label", "tokens: click one to see where it attends");
  let chips: HTMLSpanElement[] = [];

  const body = el("div", "lw-attn-body");
  const mapBox = el("div", "lw-attn-map");
  const canvas = el("canvas", "lw-attn-heatmap");
  canvas.width = canvas.height = HEATMAP_PX;
  canvas.setAttribute("aria-label", "attention heatmap: rows are queries, columns are keys; drag to zoom");
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
  mapBox.append(el("div", "lw-attn-caption", "queries ↓  keys →  (drag to zoom)"), plot, tooltip, lasso);
  const gridBox = el("div", "lw-attn-gridbox");
  const grid = el("canvas", "lw-attn-grid");
  grid.width = nHeads * GRID_CELL_PX;
  grid.height = nLayers * GRID_CELL_PX;
  grid.setAttribute("aria-label", "all layers (rows) by heads (columns): click one to show it");
  gridBox.append(el("div", "lw-attn-caption", "all heads: layer ↓ head →"), grid);
  const headViewBox = el("div", "lw-attn-headview");
  const headCaption = el("div", "lw-attn-caption", "head view: pick a query token");
  const legend = el("div", "lw-attn-legend");
  const lines = el("canvas", "lw-attn-lines");
  lines.width = 300;
  lines.height = 60;
  headViewBox.append(headCaption, legend, lines);
  body.append(mapBox, gridBox, headViewBox);
  view.append(header, strip, body);

  for (let h = 0; h < nHeads; h++) {
    const swatch = el("button", "lw-attn-swatch", String(h));
    swatch.style.borderColor = headColour(h, nHeads);
    swatch.style.color = headColour(h, nHeads);
    swatch.title = `head ${h}: show it in the heatmap`;
    swatch.addEventListener("click", () => {
      model.set("head", h);
      model.save_changes();
    });
    legend.append(swatch);
  }

  const ctx = canvas.getContext("2d")!;
  const gctx = grid.getContext("2d")!;
  const lctx = lines.getContext("2d")!;

  // --- the token strip ---
  let anchor = -1; // where a key selection started (click, drag or shift-click extends from it)
  let dragging = false;
  function keysPicked(a: number, b: number) {
    options.onKeys?.([Math.min(a, b), Math.max(a, b) + 1]);
  }
  function buildStrip() {
    const nPrompt = model.get("n_prompt");
    chips = tokens.map((token, i) => {
      const chip = el("span", i < nPrompt ? "lw-tok" : "lw-tok lw-tok-gen", shown(token));
      chip.tabIndex = 0;
      chip.setAttribute("role", "button");
      chip.dataset.index = String(i);
      chip.title = `${i}: ${JSON.stringify(token)}${i < nPrompt ? "" : " (generated)"}`;
      return chip;
    });
    strip.replaceChildren(...chips);
    refreshKeys();
  }
  const chipIndex = (target: EventTarget | null) => {
    const index = (target as HTMLElement | null)?.dataset?.index;
    return index === undefined ? -1 : Number(index);
  };
  function pickQuery(i: number) {
    model.set("query", model.get("query") === i ? -1 : i);
    model.save_changes();
  }
  strip.addEventListener("mousedown", (event) => {
    const i = chipIndex(event.target);
    if (i < 0 || options.stripMode?.() !== "keys") return;
    event.preventDefault(); // no text selection while dragging a span
    dragging = true;
    if (event.shiftKey && anchor >= 0) keysPicked(anchor, i);
    else {
      anchor = i;
      keysPicked(i, i);
    }
  });
  strip.addEventListener("mouseover", (event) => {
    const i = chipIndex(event.target);
    if (dragging && i >= 0 && anchor >= 0) keysPicked(anchor, i);
  });
  const stopDrag = () => (dragging = false);
  window.addEventListener("mouseup", stopDrag);
  strip.addEventListener("click", (event) => {
    const i = chipIndex(event.target);
    if (i >= 0 && options.stripMode?.() !== "keys") pickQuery(i);
  });
  strip.addEventListener("keydown", (event) => {
    const i = chipIndex(event.target);
    if (i < 0 || (event.key !== "Enter" && event.key !== " ")) return;
    event.preventDefault();
    if (options.stripMode?.() !== "keys") pickQuery(i);
    else if (event.shiftKey && anchor >= 0) keysPicked(anchor, i);
    else {
      anchor = i;
      keysPicked(i, i);
    }
  });
  function refreshKeys() {
    const span = options.keySpan?.() ?? [];
    chips.forEach((chip, i) => chip.classList.toggle("lw-tok-key", span.length === 2 && i >= span[0] && i < span[1]));
  }

  // --- heatmap ---
  function drawHeatmap() {
    if (!overview) return;
    const started = performance.now();
    const image = new ImageData(toPixels(overview), overview.cols, overview.rows);
    const off = document.createElement("canvas");
    off.width = overview.cols;
    off.height = overview.rows;
    off.getContext("2d")!.putImageData(image, 0, 0);
    ctx.imageSmoothingEnabled = false;
    ctx.clearRect(0, 0, HEATMAP_PX, HEATMAP_PX);
    ctx.drawImage(off, 0, 0, HEATMAP_PX, HEATMAP_PX);
    const [q0, q1] = region();
    const q = model.get("query");
    if (q >= q0 && q < q1) { // mark the selected query's row
      const row = Math.floor(((q - q0) * overview.rows) / (q1 - q0));
      ctx.strokeStyle = "#e6550d";
      ctx.lineWidth = 2;
      const h = HEATMAP_PX / overview.rows;
      ctx.strokeRect(1, row * h + 1, HEATMAP_PX - 2, Math.max(2, h - 2));
    }
    drawAxes();
    canvas.dataset.drawn = "true";
    canvas.dataset.drawMs = (performance.now() - started).toFixed(2); // read by the benchmark
  }

  let gridImage: HTMLCanvasElement | null = null; // the thumbnails, painted once per answer
  function paintThumbnails(maps: Matrix): HTMLCanvasElement {
    const size = maps.cols;
    const image = document.createElement("canvas");
    image.width = grid.width;
    image.height = grid.height;
    const ictx = image.getContext("2d")!;
    ictx.imageSmoothingEnabled = false;
    const off = document.createElement("canvas");
    off.width = off.height = size;
    const octx = off.getContext("2d")!;
    for (let layer = 0; layer < nLayers; layer++) {
      for (let head = 0; head < nHeads; head++) {
        const start = (layer * nHeads + head) * size;
        const one = { rows: size, cols: size, data: maps.data.subarray(start * size, (start + size) * size) };
        octx.putImageData(new ImageData(toPixels(one, maxOf(one)), size, size), 0, 0);
        ictx.drawImage(off, head * GRID_CELL_PX + 1, layer * GRID_CELL_PX + 1, GRID_CELL_PX - 2, GRID_CELL_PX - 2);
      }
    }
    return image;
  }

  /** Token labels along both axes when few enough fit, positions otherwise. */
  function drawAxes() {
    const [q0, q1, k0, k1] = region();
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

  function drawGrid() {
    gctx.clearRect(0, 0, grid.width, grid.height);
    if (!gridImage) return;
    gctx.drawImage(gridImage, 0, 0);
    grid.dataset.drawn = "true";
    const outline = (layer: number, head: number, colour: string, inset: number) => {
      gctx.strokeStyle = colour;
      gctx.lineWidth = 2;
      gctx.strokeRect(head * GRID_CELL_PX + inset, layer * GRID_CELL_PX + inset, GRID_CELL_PX - 2 * inset,
        GRID_CELL_PX - 2 * inset);
    };
    for (const mark of options.gridMarks?.() ?? []) outline(mark.layer, mark.head, mark.colour, 3);
    outline(model.get("layer"), model.get("head"), "#e6550d", 1);
  }

  async function loadOverview() {
    const layer = model.get("layer");
    const head = model.get("head");
    const [q0, q1, k0, k1] = region();
    const zoomed = model.get("zoom").length === 4;
    unzoom.hidden = !zoomed;
    status.textContent = "loading…";
    try {
      const m = zoomed
        ? await requests.ask("tile", { layer, head, q0, q1, k0, k1, size: model.get("overview_size") })
        : await requests.ask("overview", { layer, head, size: model.get("overview_size") });
      if (!alive || layer !== model.get("layer") || head !== model.get("head")) return;
      overview = m;
      status.textContent = zoomed
        ? `layer ${layer}, head ${head}: queries ${q0}–${q1 - 1}, keys ${k0}–${k1 - 1}`
        : `layer ${layer}, head ${head}: ${tokens.length} tokens`;
      drawHeatmap();
      drawGrid();
    } catch (error) {
      status.textContent = `error: ${(error as Error).message}`;
    }
  }

  async function loadRow() {
    const q = model.get("query");
    chips.forEach((chip, i) => chip.classList.toggle("lw-tok-query", i === q));
    if (q < 0) {
      chips.forEach((chip) => {
        chip.style.removeProperty("background-color");
        chip.classList.remove("lw-tok-dark");
      });
      drawHeatmap();
      drawHeadView(null, q);
      return;
    }
    try {
      const layer = model.get("layer");
      const rows = await requests.ask("heads", { layer, query: q });
      if (!alive || q !== model.get("query") || layer !== model.get("layer")) return;
      const head = model.get("head");
      const row = rows.data.subarray(head * rows.cols, (head + 1) * rows.cols);
      let max = 0;
      for (const v of row) max = Math.max(max, v);
      max = max || 1;
      chips.forEach((chip, i) => {
        const [r, g, b] = colour(row[i] / max);
        chip.style.backgroundColor = `rgb(${r}, ${g}, ${b})`;
        chip.classList.toggle("lw-tok-dark", row[i] / max > 0.55);
      });
      drawHeatmap();
      drawHeadView(rows, q);
    } catch (error) {
      status.textContent = `error: ${(error as Error).message}`;
    }
  }

  // --- head view: the query on the left, its strongest keys on the right, a line per head ---
  function drawHeadView(rows: Matrix | null, q: number) {
    if (!rows || q < 0) {
      lines.height = 60;
      lctx.clearRect(0, 0, lines.width, lines.height);
      headCaption.textContent = "head view: pick a query token";
      delete lines.dataset.drawn;
      return;
    }
    const keys = headViewKeys(rows);
    lines.height = Math.max(60, keys.length * HEADVIEW_ROW_PX + 10);
    const width = lines.width;
    lctx.clearRect(0, 0, width, lines.height);
    const style = getComputedStyle(view);
    lctx.font = `12px ${style.getPropertyValue("--jp-code-font-family") || "monospace"}`;
    lctx.fillStyle = style.color || "#000";
    lctx.textBaseline = "middle";
    const qy = lines.height / 2;
    const label = (text: string) => (text.length > 14 ? `${text.slice(0, 13)}…` : text);
    lctx.textAlign = "right";
    lctx.fillText(label(shown(tokens[q])), 95, qy);
    lctx.textAlign = "left";
    keys.forEach((k, i) => lctx.fillText(`${label(shown(tokens[k]))} ${k}`, width - 95, 14 + i * HEADVIEW_ROW_PX));
    const current = model.get("head");
    lctx.globalAlpha = 0.55;
    for (let h = 0; h < rows.rows; h++) {
      lctx.strokeStyle = headColour(h, rows.rows);
      keys.forEach((k, i) => {
        const w = rows.data[h * rows.cols + k];
        if (w < 0.01) return;
        lctx.lineWidth = Math.max(0.5, w * (h === current ? 10 : 6));
        lctx.beginPath();
        lctx.moveTo(100, qy);
        lctx.lineTo(width - 100, 14 + i * HEADVIEW_ROW_PX);
        lctx.stroke();
      });
    }
    lctx.globalAlpha = 1;
    headCaption.textContent = `head view: layer ${model.get("layer")}, query ${q}, line width = weight`;
    lines.dataset.drawn = "true";
  }

  // --- pointer on the heatmap: hover tooltip, click picks a query, drag zooms ---
  let pressed: { row: number; col: number; x: number; y: number } | null = null;
  const cellFromEvent = (event: MouseEvent) => {
    if (!overview) return null;
    const box = canvas.getBoundingClientRect();
    return cellAt(event.clientX - box.left, event.clientY - box.top, box.width, box.height, overview.rows, overview.cols);
  };
  canvas.addEventListener("mousemove", (event) => {
    const cell = cellFromEvent(event);
    const box = canvas.getBoundingClientRect();
    if (pressed) {
      const [x0, y0] = [pressed.x, pressed.y];
      const [x1, y1] = [event.clientX - box.left, event.clientY - box.top];
      Object.assign(lasso.style, {
        left: `${canvas.offsetLeft + Math.min(x0, x1)}px`, top: `${canvas.offsetTop + Math.min(y0, y1)}px`,
        width: `${Math.abs(x1 - x0)}px`, height: `${Math.abs(y1 - y0)}px`,
      });
      lasso.hidden = Math.abs(x1 - x0) < 4 && Math.abs(y1 - y0) < 4;
    }
    if (!cell || !overview) {
      tooltip.hidden = true;
      return;
    }
    const [rq0, rq1, rk0, rk1] = region();
    const [q0, q1] = binRange(cell.row, overview.rows, rq1 - rq0).map((v) => v + rq0);
    const [k0, k1] = binRange(cell.col, overview.cols, rk1 - rk0).map((v) => v + rk0);
    const name = (a: number, b: number) => (b - a === 1 ? `${a} ${JSON.stringify(tokens[a])}` : `${a}-${b - 1}`);
    const weight = overview.data[cell.row * overview.cols + cell.col];
    tooltip.textContent = `query ${name(q0, q1)} → key ${name(k0, k1)}: ${weight.toFixed(3)}${q1 - q0 > 1 || k1 - k0 > 1 ? " (max)" : ""}`;
    tooltip.style.left = `${canvas.offsetLeft + event.clientX - box.left + 12}px`;
    tooltip.style.top = `${canvas.offsetTop + event.clientY - box.top + 12}px`;
    tooltip.hidden = false;
  });
  canvas.addEventListener("mouseleave", () => (tooltip.hidden = true));
  canvas.addEventListener("mousedown", (event) => {
    const cell = cellFromEvent(event);
    if (!cell) return;
    event.preventDefault();
    const box = canvas.getBoundingClientRect();
    pressed = { ...cell, x: event.clientX - box.left, y: event.clientY - box.top };
  });
  const release = (event: MouseEvent) => {
    if (!pressed || !overview) return;
    const start = pressed;
    pressed = null;
    lasso.hidden = true;
    const box = canvas.getBoundingClientRect();
    const x = Math.min(Math.max(event.clientX - box.left, 0), box.width - 1);
    const y = Math.min(Math.max(event.clientY - box.top, 0), box.height - 1);
    const end = cellAt(x, y, box.width, box.height, overview.rows, overview.cols)!;
    if (Math.abs(x - start.x) < 4 && Math.abs(y - start.y) < 4) { // a click: pick that query
      const [q0, q1] = region();
      model.set("query", binRange(end.row, overview.rows, q1 - q0)[0] + q0);
      model.save_changes();
      return;
    }
    const zoom = regionOf(start, end, overview.rows, overview.cols, region());
    if (zoom[1] - zoom[0] < 2 && zoom[3] - zoom[2] < 2) return;
    model.set("zoom", zoom);
    model.save_changes();
  };
  window.addEventListener("mouseup", release);
  unzoom.addEventListener("click", () => {
    model.set("zoom", []);
    model.save_changes();
  });

  grid.addEventListener("click", (event) => {
    const box = grid.getBoundingClientRect();
    const cell = cellAt(event.clientX - box.left, event.clientY - box.top, box.width, box.height, nLayers, nHeads);
    if (!cell || options.onGridClick?.(cell.row, cell.col, event)) return;
    model.set("layer", cell.row);
    model.set("head", cell.col);
    model.save_changes();
  });
  layerBox.addEventListener("change", () => {
    model.set("layer", Number(layerBox.value));
    model.save_changes();
  });
  headBox.addEventListener("change", () => {
    model.set("head", Number(headBox.value));
    model.save_changes();
  });

  function loadGrid() {
    requests.ask("grid", { size: model.get("grid_size") }).then((m) => {
      if (!alive) return;
      gridImage = paintThumbnails(m);
      drawGrid();
    }).catch((error) => (status.textContent = `error: ${(error as Error).message}`));
  }

  const onSelection = () => {
    layerBox.value = String(model.get("layer"));
    headBox.value = String(model.get("head"));
    loadOverview().then(loadRow);
  };
  const onQuery = () => void loadRow();
  const onRevision = () => { // a new run (the editor regenerated): new tokens, new maps
    tokens = model.get("tokens");
    overview = null;
    gridImage = null;
    delete canvas.dataset.drawn; // "drawn" means drawn for this run
    delete grid.dataset.drawn;
    buildStrip();
    onSelection();
    loadGrid();
  };
  model.on("change:layer", onSelection);
  model.on("change:head", onSelection);
  model.on("change:zoom", onSelection);
  model.on("change:query", onQuery);
  model.on("change:revision", onRevision);

  buildStrip();
  onSelection();
  loadGrid();

  return {
    element: view,
    refresh() {
      refreshKeys();
      drawGrid();
    },
    destroy() {
      alive = false;
      window.removeEventListener("mouseup", stopDrag);
      window.removeEventListener("mouseup", release);
      model.off("change:layer", onSelection);
      model.off("change:head", onSelection);
      model.off("change:zoom", onSelection);
      model.off("change:query", onQuery);
      model.off("change:revision", onRevision);
    },
  };
}
