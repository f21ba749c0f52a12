// The attention panel shared by AttentionView and AttentionEditor: the header
// (layer and head, zoom, status, export), the token strip, one head's heatmap,
// the layers x heads grid and the head view, each a part of its own
// (attention_strip, attention_heatmap, attention_grid, head_view). This file
// asks Python for what they draw and keeps them in step with the model's state.
// Matrices arrive on request as binary buffers; token text only ever goes
// through textContent or canvas fillText, never innerHTML.
import type { AnyModel } from "@anywidget/types";
import { mountGrid, type GridMark } from "./attention_grid";
import { mountHeatmap, type Region } from "./attention_heatmap";
import { mountStrip } from "./attention_strip";
import type { Matrix } from "./heatmap";
import { mountHeadView } from "./head_view";
import { mountTokenLines } from "./token_lines";
import { el, exportButtons, Requests, select } from "./widget_io";

const STACK_NAMES: Record<string, string> = { encoder: "encoder (source → source)", decoder: "decoder (output → output)",
  cross: "cross (output → source)" };

export interface ViewState {
  model_name: string;
  tokens: string[];
  n_prompt: number;
  n_layers: number;
  n_heads: number;
  layer: number;
  head: number;
  query: number;
  cell: number[]; // [query, key] of the heatmap cell clicked ([query, -1]: a pooled cell's row), [] for none
  output_text: string;
  zoom: number[];
  revision: number;
  overview_size: number; // Python's OVERVIEW: the pooled size of a heatmap (defined once, sent as state)
  grid_size: number; // Python's GRID_CELL: the pooled size of each thumbnail of the grid
  attention_layers: number[]; // all layers, but a hybrid model's linear-attention / state-space ones
  sink_layers: number[]; // layers with attention sinks: a row's weights sum to less than 1
  stacks: string[]; // ["self"], or an encoder-decoder's ["encoder", "decoder", "cross"]
  stack: string; // the kind of attention shown
  query_range: number[]; // [start, stop) of the positions that are its queries
  key_range: number[]; // and of its keys
  n_source: number; // an encoder-decoder's source tokens come first
}

export interface PanelOptions {
  /** What a click on a token does: pick the query (default) or select keys (the editor). */
  stripMode?: () => "query" | "keys";
  onKeys?: (span: [number, number]) => void;
  keySpan?: () => number[];
  /** Outlines drawn on the grid (picked or ablated heads). */
  gridMarks?: () => GridMark[];
  /** Return true when the click was handled (e.g. shift-click picks a head). */
  onGridClick?: (layer: number, head: number, event: MouseEvent | KeyboardEvent) => boolean;
}

export interface Panel {
  element: HTMLElement;
  /** Redraw what depends on outside state: key highlight, grid marks. */
  refresh(): void;
  destroy(): void;
}

/** The panel, with a switch between an encoder-decoder's three kinds of attention: each kind has its
 *  own layers, heads and positions, so switching mounts the panel again (Python sends the new shape). */
export function mountAttention(model: AnyModel<ViewState>, requests: Requests, options: PanelOptions = {}): Panel {
  const box = el("div", "lw-attn-stacked");
  const stacks = model.get("stacks") ?? [];
  const chooser = el("div", "lw-attn-stackbar");
  chooser.hidden = stacks.length < 2;
  chooser.setAttribute("role", "radiogroup");
  chooser.setAttribute("aria-label", "which attention");
  const buttons = stacks.map((name) => {
    const button = el("button", "lw-button lw-attn-stackbtn", STACK_NAMES[name] ?? name);
    button.dataset.stack = name;
    button.setAttribute("role", "radio");
    button.addEventListener("click", () => {
      model.set("stack", name);
      model.save_changes();
    });
    return button;
  });
  chooser.append(el("span", "lw-ed-label", "attention:"), ...buttons);
  let shown = model.get("stack");
  let inner = mountStack(model, requests, options);
  const mark = () => buttons.forEach((b) => b.setAttribute("aria-checked", String(b.dataset.stack === shown)));
  mark();
  box.append(chooser, inner.element);
  const onRevision = () => {
    if (model.get("stack") === shown) return;
    inner.destroy();
    shown = model.get("stack");
    inner = mountStack(model, requests, options);
    box.replaceChildren(chooser, inner.element);
    mark();
  };
  model.on("change:revision", onRevision);
  return {
    element: box,
    refresh: () => inner.refresh(),
    destroy() {
      model.off("change:revision", onRevision);
      inner.destroy();
    },
  };
}

/** The panel's parts, laid out, their controls wired to `set`. */
function mountParts(model: AnyModel<ViewState>, requests: Requests, options: PanelOptions,
  set: (changes: Partial<ViewState>) => void) {
  const { header, layerBox, headBox, status, unzoom } = mountHeader(model, requests);
  const strip = mountStrip({ mode: () => options.stripMode?.() ?? "query", onKeys: options.onKeys, keySpan: options.keySpan,
    onQuery: (i) => pickQuery(model, i, status) });
  const heatmap = mountHeatmap((query, key) => set({ query, cell: [query, key] }), (zoom) => set({ zoom }));
  const grid = mountGrid(model.get("n_layers"), model.get("n_heads"), (layer, head, event) => {
    if (!(model.get("attention_layers") ?? [layer]).includes(layer)) return;  // a blank row: no attention there
    if (!options.onGridClick?.(layer, head, event)) set({ layer, head });
  }, model.get("attention_layers") ?? []);
  const headView = mountHeadView(model.get("n_heads"), (head) => set({ head }));
  const lines = model.get("stack") === "cross" ? mountTokenLines() : null; // output tokens, lines to the source
  const body = el("div", "lw-attn-body");
  body.append(heatmap.element, grid.element, headView.element, ...(lines ? [lines.element] : []));
  const view = el("div", "lw-attn");
  view.append(header, strip.element, body);
  layerBox.addEventListener("change", () => set({ layer: Number(layerBox.value) }));
  headBox.addEventListener("change", () => set({ head: Number(headBox.value) }));
  unzoom.addEventListener("click", () => set({ zoom: [] }));
  return { view, layerBox, headBox, status, unzoom, strip, heatmap, grid, headView, lines };
}

function mountStack(model: AnyModel<ViewState>, requests: Requests, options: PanelOptions): Panel {
  let alive = true;
  let overview: Matrix | null = null;
  const set = (changes: Partial<ViewState>) => {
    for (const [key, value] of Object.entries(changes)) model.set(key as keyof ViewState, value as never);
    model.save_changes();
  };
  const tokens = () => model.get("tokens");
  const region = () => shownRegion(model);
  const failed = (error: unknown) => (status.textContent = `error: ${(error as Error).message}`);

  const { view, layerBox, headBox, status, unzoom, strip, heatmap, grid, headView, lines } =
    mountParts(model, requests, options, set);
  const drawGrid = () => grid.draw({ layer: model.get("layer"), head: model.get("head") }, options.gridMarks?.() ?? []);

  async function loadOverview() {
    const [layer, head] = [model.get("layer"), model.get("head")];
    const [q0, q1, k0, k1] = region();
    const zoomed = model.get("zoom").length === 4;
    const size = model.get("overview_size");
    unzoom.hidden = !zoomed;
    status.textContent = "loading…";
    try {
      const m = zoomed ? await requests.ask("tile", { layer, head, q0, q1, k0, k1, size })
        : await requests.ask("overview", { layer, head, size });
      if (!alive || layer !== model.get("layer") || head !== model.get("head")) return;
      overview = m;
      status.textContent = describe(layer, head, zoomed ? [q0, q1, k0, k1] : null, region(),
        (model.get("sink_layers") ?? []).includes(layer));
      heatmap.draw(overview, region(), tokens(), model.get("query"));
      lines?.draw(zoomed ? null : overview, region(), tokens(), head);
      drawGrid();
    } catch (error) {
      failed(error);
    }
  }

  async function loadRow() {
    const [q, layer] = [model.get("query"), model.get("layer")];
    strip.markQuery(q);
    if (q < 0) {
      strip.colourBy(null);
      heatmap.draw(overview, region(), tokens(), q);
      headView.draw(null, q, layer, model.get("head"), tokens());
      return;
    }
    try {
      const rows = await requests.ask("heads", { layer, query: q });
      if (!alive || q !== model.get("query") || layer !== model.get("layer")) return;
      const head = model.get("head");
      strip.colourBy(rows.data.subarray(head * rows.cols, (head + 1) * rows.cols));
      heatmap.draw(overview, region(), tokens(), q);
      headView.draw(rows, q, layer, head, tokens());
    } catch (error) {
      failed(error);
    }
  }

  function loadGrid() {
    requests.ask("grid", { size: model.get("grid_size") }).then((maps) => {
      if (!alive) return;
      grid.paint(maps);
      drawGrid();
    }).catch(failed);
  }

  const onSelection = () => {
    layerBox.value = String(model.get("layer"));
    headBox.value = String(model.get("head"));
    loadOverview().then(loadRow);
  };
  const onQuery = () => void loadRow();
  const onRevision = () => { // a new run (the editor regenerated, a batch row picked): new tokens, new maps
    overview = null;
    delete heatmap.canvas.dataset.drawn; // "drawn" means drawn for this run
    grid.paint(null);
    strip.show(tokens(), model.get("n_prompt"), model.get("n_source") ?? 0);
    onSelection();
    loadGrid();
  };
  const events: [string, () => void][] = [["change:layer", onSelection], ["change:head", onSelection],
    ["change:zoom", onSelection], ["change:query", onQuery], ["change:revision", onRevision]];
  for (const [name, handler] of events) model.on(name, handler);

  onRevision();
  return {
    element: view,
    refresh() {
      strip.refreshKeys();
      drawGrid();
    },
    destroy() {
      alive = false;
      strip.destroy();
      heatmap.destroy();
      for (const [name, handler] of events) model.off(name, handler);
    },
  };
}

/** The region on screen: the zoom, or all of this attention's queries and keys. */
function shownRegion(model: AnyModel<ViewState>): Region {
  const z = model.get("zoom");
  const n = model.get("tokens").length;
  const [q0, q1] = model.get("query_range") ?? [0, n];
  const [k0, k1] = model.get("key_range") ?? [0, n];
  return z.length === 4 ? [z[0], z[1], z[2], z[3]] : [q0, q1, k0, k1];
}

/** A click on token i picks it as the query (again: unpicks it), if it is one of this attention's queries
 *  (in cross-attention a source token is not: the status line says so). */
function pickQuery(model: AnyModel<ViewState>, i: number, status: HTMLElement) {
  const [q0, q1] = model.get("query_range") ?? [0, model.get("tokens").length];
  if (i < q0 || i >= q1) {
    status.textContent = `token ${i} is not a query of this attention: pick one of ${q0}–${q1 - 1}`;
    return;
  }
  model.set("query", model.get("query") === i ? -1 : i);
  model.save_changes();
}

/** The status line: which head, which region, and where a row's missing weight went. */
function describe(layer: number, head: number, zoom: number[] | null, region: number[], sink: boolean): string {
  const [q0, q1, k0, k1] = region;
  const whole = q0 === k0 && q1 === k1 ? `${q1 - q0} tokens` : `${q1 - q0} queries × ${k1 - k0} keys`;
  const where = zoom ? `queries ${zoom[0]}–${zoom[1] - 1}, keys ${zoom[2]}–${zoom[3] - 1}` : whole;
  return `layer ${layer}, head ${head}: ${where}` + (sink ? "; rows sum to less than 1: the rest goes to the attention sink" : "");
}

/** Layer and head selects, the zoom reset, the status line and the export buttons. */
function mountHeader(model: AnyModel<ViewState>, requests: Requests) {
  const header = el("div", "lw-attn-header");
  const [layerLabel, layerBox] = select("layer", model.get("n_layers"), "L");
  const attending = new Set(model.get("attention_layers") ?? []);
  for (const option of layerBox.options) {  // a hybrid model's other layers have no attention to show
    if (attending.size && !attending.has(Number(option.value))) {
      option.disabled = true;
      option.textContent += " (no attention)";
    }
  }
  const [headLabel, headBox] = select("head", model.get("n_heads"), "H");
  const status = el("span", "lw-attn-status");
  const unzoom = el("button", "lw-button", "reset zoom");
  unzoom.hidden = true;
  header.append(layerLabel, headLabel, unzoom, status, exportButtons(requests, "attention", (text) => (status.textContent = text)));
  return { header, layerBox, headBox, status, unzoom };
}
