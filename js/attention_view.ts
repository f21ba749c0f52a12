// AttentionView: one head's attention as a heatmap, every head as a grid, and
// the tokens as a clickable strip coloured by the selected query's attention.
// Matrices arrive on request as binary buffers; token text only ever goes
// through textContent or canvas fillText, never innerHTML.
import type { AnyModel, RenderProps } from "@anywidget/types";
import { asDataView, binRange, cellAt, colour, decodeRowsUint8, type Matrix, maxOf, toPixels } from "./lib/heatmap";

interface ViewState {
  model_name: string;
  tokens: string[];
  n_prompt: number;
  n_layers: number;
  n_heads: number;
  layer: number;
  head: number;
  query: number;
  output_text: string;
}

type Reply = { type: string; id: number; shape: [number, number]; message?: string };
const HEATMAP_PX = 420;
const GRID_CELL_PX = 22;
const GRID_SIZE = 24;

function el<K extends keyof HTMLElementTagNameMap>(tag: K, cls = "", text?: string): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** Visible form of a token: spaces and newlines shown, never interpreted. */
function shown(token: string): string {
  return token.replace(/\n/g, "↵").replace(/\t/g, "⇥") || "∅";
}

class Requests {
  private next = 1;
  private pending = new Map<number, { resolve: (m: Matrix) => void; reject: (e: Error) => void }>();
  constructor(private model: AnyModel<ViewState>) {
    this.onMessage = this.onMessage.bind(this);
    model.on("msg:custom", this.onMessage);
  }
  ask(what: string, params: Record<string, number>): Promise<Matrix> {
    const id = this.next++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.model.send({ type: "request", id, what, ...params });
    });
  }
  onMessage(msg: Reply, buffers: (ArrayBuffer | DataView)[]) {
    const waiting = this.pending.get(msg.id);
    if (!waiting) return;
    this.pending.delete(msg.id);
    if (msg.type === "error") waiting.reject(new Error(msg.message ?? "request failed"));
    else waiting.resolve(decodeRowsUint8(msg.shape, asDataView(buffers[0]), asDataView(buffers[1])));
  }
  close() {
    this.model.off("msg:custom", this.onMessage);
    this.pending.clear();
  }
}

function select(label: string, count: number, prefix: string): [HTMLLabelElement, HTMLSelectElement] {
  const wrap = el("label", "lw-select", `${label} `);
  const box = el("select");
  for (let i = 0; i < count; i++) {
    const option = el("option", "", `${prefix}${i}`);
    option.value = String(i);
    box.append(option);
  }
  wrap.append(box);
  return [wrap, box];
}

function render({ model, el: root }: RenderProps<ViewState>): () => void {
  const tokens = model.get("tokens");
  const nPrompt = model.get("n_prompt");
  const requests = new Requests(model);
  let overview: Matrix | null = null;
  let alive = true;

  const view = el("div", "lw-panel lw-attn");
  const header = el("div", "lw-attn-header");
  header.append(el("span", "lw-attn-title", model.get("model_name")));
  const [layerLabel, layerBox] = select("layer", model.get("n_layers"), "L");
  const [headLabel, headBox] = select("head", model.get("n_heads"), "H");
  const status = el("span", "lw-attn-status");
  header.append(layerLabel, headLabel, status);

  const strip = el("div", "lw-attn-tokens");
  strip.setAttribute("aria-label", "tokens: click one to see where it attends");
  const chips = tokens.map((token, i) => {
    const chip = el("span", i < nPrompt ? "lw-tok" : "lw-tok lw-tok-gen", shown(token));
    chip.tabIndex = 0;
    chip.setAttribute("role", "button");
    chip.title = `${i}: ${JSON.stringify(token)}${i < nPrompt ? "" : " (generated)"}`;
    const pick = () => {
      model.set("query", model.get("query") === i ? -1 : i);
      model.save_changes();
    };
    chip.addEventListener("click", pick);
    chip.addEventListener("keydown", (e) => {
      if (e.key === "Enter" || e.key === " ") {
        e.preventDefault();
        pick();
      }
    });
    strip.append(chip);
    return chip;
  });

  const body = el("div", "lw-attn-body");
  const mapBox = el("div", "lw-attn-map");
  const canvas = el("canvas", "lw-attn-heatmap");
  canvas.width = canvas.height = HEATMAP_PX;
  canvas.setAttribute("aria-label", "attention heatmap: rows are queries, columns are keys");
  const tooltip = el("div", "lw-attn-tooltip");
  tooltip.hidden = true;
  mapBox.append(el("div", "lw-attn-caption", "queries ↓  keys →"), canvas, tooltip);
  const gridBox = el("div", "lw-attn-gridbox");
  const grid = el("canvas", "lw-attn-grid");
  grid.width = model.get("n_heads") * GRID_CELL_PX;
  grid.height = model.get("n_layers") * GRID_CELL_PX;
  grid.setAttribute("aria-label", "all layers (rows) by heads (columns): click one to show it");
  gridBox.append(el("div", "lw-attn-caption", "all heads: layer ↓ head →"), grid);
  body.append(mapBox, gridBox);
  view.append(header, strip, body);
  root.replaceChildren(view);

  const ctx = canvas.getContext("2d")!;
  const gctx = grid.getContext("2d")!;
  let gridMaps: Matrix | null = null;

  function drawHeatmap() {
    if (!overview) return;
    const image = new ImageData(toPixels(overview), overview.cols, overview.rows);
    const off = document.createElement("canvas");
    off.width = overview.cols;
    off.height = overview.rows;
    off.getContext("2d")!.putImageData(image, 0, 0);
    ctx.imageSmoothingEnabled = false;
    ctx.clearRect(0, 0, HEATMAP_PX, HEATMAP_PX);
    ctx.drawImage(off, 0, 0, HEATMAP_PX, HEATMAP_PX);
    canvas.dataset.drawn = "true";
    const q = model.get("query");
    if (q >= 0) {  // mark the selected query's row
      const row = Math.floor((q * overview.rows) / tokens.length);
      ctx.strokeStyle = "#e6550d";
      ctx.lineWidth = 2;
      const h = HEATMAP_PX / overview.rows;
      ctx.strokeRect(1, row * h + 1, HEATMAP_PX - 2, Math.max(2, h - 2));
    }
  }

  function drawGrid() {
    if (!gridMaps) return;
    const nHeads = model.get("n_heads");
    const size = gridMaps.cols;
    for (let layer = 0; layer < model.get("n_layers"); layer++) {
      for (let head = 0; head < nHeads; head++) {
        const start = (layer * nHeads + head) * size;
        const one = { rows: size, cols: size, data: gridMaps.data.subarray(start * size, (start + size) * size) };
        const off = document.createElement("canvas");
        off.width = off.height = size;
        off.getContext("2d")!.putImageData(new ImageData(toPixels(one, maxOf(one)), size, size), 0, 0);
        gctx.imageSmoothingEnabled = false;
        gctx.drawImage(off, head * GRID_CELL_PX + 1, layer * GRID_CELL_PX + 1, GRID_CELL_PX - 2, GRID_CELL_PX - 2);
      }
    }
    grid.dataset.drawn = "true";  // for tests and exports: the grid is on screen
    gctx.strokeStyle = "#e6550d";
    gctx.lineWidth = 2;
    gctx.strokeRect(model.get("head") * GRID_CELL_PX + 1, model.get("layer") * GRID_CELL_PX + 1,
      GRID_CELL_PX - 2, GRID_CELL_PX - 2);
  }

  async function loadOverview() {
    const layer = model.get("layer");
    const head = model.get("head");
    status.textContent = "loading…";
    try {
      const m = await requests.ask("overview", { layer, head, size: 512 });
      if (!alive || layer !== model.get("layer") || head !== model.get("head")) return;
      overview = m;
      status.textContent = `layer ${layer}, head ${head}: ${tokens.length} tokens`;
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
      chips.forEach((chip) => chip.style.removeProperty("background-color"));
      drawHeatmap();
      return;
    }
    try {
      const row = await requests.ask("row", { layer: model.get("layer"), head: model.get("head"), query: q });
      if (!alive || q !== model.get("query")) return;
      const max = maxOf(row);
      chips.forEach((chip, i) => {
        const [r, g, b] = colour(row.data[i] / max);
        chip.style.backgroundColor = `rgb(${r}, ${g}, ${b})`;
        chip.classList.toggle("lw-tok-dark", row.data[i] / max > 0.55);
      });
      drawHeatmap();
    } catch (error) {
      status.textContent = `error: ${(error as Error).message}`;
    }
  }

  canvas.addEventListener("mousemove", (event) => {
    if (!overview) return;
    const box = canvas.getBoundingClientRect();
    const cell = cellAt(event.clientX - box.left, event.clientY - box.top, box.width, box.height,
      overview.rows, overview.cols);
    if (!cell) {
      tooltip.hidden = true;
      return;
    }
    const [q0, q1] = binRange(cell.row, overview.rows, tokens.length);
    const [k0, k1] = binRange(cell.col, overview.cols, tokens.length);
    const name = (a: number, b: number) => (b - a === 1 ? `${a} ${JSON.stringify(tokens[a])}` : `${a}-${b - 1}`);
    const weight = overview.data[cell.row * overview.cols + cell.col];
    tooltip.textContent = `query ${name(q0, q1)} → key ${name(k0, k1)}: ${weight.toFixed(3)}${q1 - q0 > 1 ? " (max)" : ""}`;
    tooltip.style.left = `${event.clientX - box.left + 12}px`;
    tooltip.style.top = `${event.clientY - box.top + 12}px`;
    tooltip.hidden = false;
  });
  canvas.addEventListener("mouseleave", () => (tooltip.hidden = true));
  canvas.addEventListener("click", (event) => {
    if (!overview) return;
    const box = canvas.getBoundingClientRect();
    const cell = cellAt(event.clientX - box.left, event.clientY - box.top, box.width, box.height, overview.rows, overview.cols);
    if (!cell) return;
    model.set("query", binRange(cell.row, overview.rows, tokens.length)[0]);
    model.save_changes();
  });
  grid.addEventListener("click", (event) => {
    const box = grid.getBoundingClientRect();
    const cell = cellAt(event.clientX - box.left, event.clientY - box.top, box.width, box.height,
      model.get("n_layers"), model.get("n_heads"));
    if (!cell) return;
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

  const onSelection = () => {
    layerBox.value = String(model.get("layer"));
    headBox.value = String(model.get("head"));
    loadOverview().then(loadRow);
  };
  const onQuery = () => void loadRow();
  model.on("change:layer", onSelection);
  model.on("change:head", onSelection);
  model.on("change:query", onQuery);

  onSelection();
  requests.ask("grid", { size: GRID_SIZE }).then((m) => {
    if (!alive) return;
    gridMaps = m;
    drawGrid();
  }).catch((error) => (status.textContent = `error: ${(error as Error).message}`));

  return () => {
    alive = false;
    requests.close();
    model.off("change:layer", onSelection);
    model.off("change:head", onSelection);
    model.off("change:query", onQuery);
  };
}

export default { render };
