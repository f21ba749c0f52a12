// The debugger view: where a debugged run stopped and why, the call stack, a timeline
// strip of every module call (click to travel), the blocks' outputs as a layers x steps
// grid, the calls around the current one, step / over / out / continue / back, the
// breakpoints, and an inspector for the current call's tensor. Python does the work
// (llm_widgets/widgets/debugger_view.py); text is set with textContent only.
import type { AnyModel, RenderProps } from "@anywidget/types";
import { barHeights, binStrip, callAt, HIT, stripColour } from "./lib/debugger";
import { colour } from "./lib/heatmap";
import { followTheme } from "./lib/theme";
import { el, exportButtons, focusable, redrawOn, Requests } from "./lib/widget_io";

interface CallRow {
  call: number; depth: number; module: string; path: string; kind: string;
  where: string; shape: string; numbers: string; hit: boolean;
}

interface Inspected {
  part?: string; shape?: number[]; dtype?: string; lines?: string[]; histogram?: number[];
  edges?: number[]; heat?: number[][]; heat_label?: string; tokens?: string[];
}

interface DebuggerState {
  title: string;
  status: string[];
  stack: { call: number; label: string }[];
  position: number;
  statistic: string;
  strip: number[];
  marks: number[];
  grid: number[][];
  calls: CallRow[];
  breakpoints: string[];
  inspector: Inspected;
  error: string;
}

const STRIP_W = 720;
const STRIP_H = 28;

function rgb([r, g, b]: [number, number, number]): string {
  return `rgb(${r}, ${g}, ${b})`;
}

function drawStrip(canvas: HTMLCanvasElement, m: AnyModel<DebuggerState>): void {
  const values = m.get("strip");
  const marks = m.get("marks");
  const ctx = canvas.getContext("2d");
  if (!ctx) return;
  const bins = binStrip(values, marks, STRIP_W);
  const vmax = Math.max(1e-9, ...values);
  const w = STRIP_W / Math.max(1, bins.length);
  ctx.clearRect(0, 0, STRIP_W, STRIP_H);
  bins.forEach((bin, i) => {
    ctx.fillStyle = rgb(stripColour(bin, vmax));
    ctx.fillRect(i * w, 6, Math.ceil(w), STRIP_H - 6);
    if (bin.marks & HIT) {
      ctx.fillStyle = "#d32f2f";
      ctx.fillRect(i * w, 0, Math.max(2, w), 5);
    }
  });
  const n = Math.max(1, values.length);
  ctx.fillStyle = "#1976d2";
  ctx.fillRect((m.get("position") / n) * STRIP_W - 1, 0, 3, STRIP_H);
}

function drawGrid(canvas: HTMLCanvasElement, grid: number[][]): void {
  const rows = grid.length;
  const cols = rows ? grid[0].length : 0;
  const cell = Math.max(4, Math.min(24, Math.floor(360 / Math.max(1, cols))));
  canvas.width = Math.max(1, cols * cell);
  canvas.height = Math.max(1, rows * 10);
  const ctx = canvas.getContext("2d");
  if (!ctx) return;
  const vmax = Math.max(1e-9, ...grid.flat());
  grid.forEach((row, r) =>
    row.forEach((v, c) => {
      ctx.fillStyle = v < 0 ? "rgb(190, 190, 190)" : rgb(colour(v / vmax));
      ctx.fillRect(c * cell, r * 10, cell, 10);
    }),
  );
}

function drawInspector(box: HTMLElement, info: Inspected): void {
  if (!info.shape) {
    box.replaceChildren(el("div", "lw-dbg-hint", "press inspect to recompute the current call's tensor"));
    return;
  }
  const head = el("div", "lw-dbg-mono", `${info.part}: [${info.shape.join(", ")}] ${info.dtype}`);
  const lines = (info.lines ?? []).map((line) => el("div", "lw-dbg-mono", line));
  const hist = el("canvas", "lw-dbg-hist");
  const counts = info.histogram ?? [];
  hist.width = counts.length * 6;
  hist.height = 40;
  const hctx = hist.getContext("2d");
  if (hctx) {
    hctx.fillStyle = "#1976d2";
    barHeights(counts, 40).forEach((h, i) => hctx.fillRect(i * 6, 40 - h, 5, h));
  }
  const edges = info.edges ?? [0, 0];
  const range = el("div", "lw-dbg-mono", `histogram of finite values, ${edges[0].toPrecision(3)} … ${edges[1].toPrecision(3)}`);
  const heat = el("canvas", "lw-dbg-heat");
  const plane = info.heat ?? [];
  const cols = plane.length ? plane[0].length : 0;
  heat.width = Math.max(1, cols * 4);
  heat.height = Math.max(1, plane.length * 4);
  const ctx = heat.getContext("2d");
  if (ctx) {
    const vmax = Math.max(1e-12, ...plane.flat());
    plane.forEach((row, r) =>
      row.forEach((v, c) => {
        ctx.fillStyle = rgb(colour(v / vmax));
        ctx.fillRect(c * 4, r * 4, 4, 4);
      }),
    );
  }
  const tokens = (info.tokens ?? []).length
    ? [el("div", "lw-dbg-mono", `top tokens at the last position: ${(info.tokens ?? []).join("  ")}`)]
    : [];
  box.replaceChildren(head, ...lines, hist, range, heat, el("div", "lw-dbg-hint", info.heat_label ?? ""), ...tokens);
}

function callTable(rows: CallRow[], current: number, go: (call: number) => void): HTMLTableElement {
  const table = el("table", "lw-dbg-calls");
  for (const row of rows) {
    const tr = el("tr", row.call === current ? "lw-dbg-current" : "");
    const name = el("td", "lw-dbg-mono", `${"  ".repeat(row.depth)}${row.module}`);
    name.title = row.path;
    tr.append(
      el("td", "lw-dbg-num", String(row.call)), name, el("td", "", row.kind), el("td", "", row.where),
      el("td", "lw-dbg-mono", row.shape), el("td", "lw-dbg-mono", row.numbers), el("td", "lw-dbg-hit", row.hit ? "●" : ""),
    );
    focusable(tr);
    tr.addEventListener("click", () => go(row.call));
    tr.addEventListener("keydown", (event) => {
      if (event.key === "Enter") go(row.call);
    });
    table.append(tr);
  }
  return table;
}

type Ask = (what: string, params: Record<string, number | string>) => Promise<void>;

function options(names: string[]): HTMLSelectElement {
  const select = el("select", "lw-dbg-select");
  for (const name of names) {
    const option = el("option", "", name);
    option.value = name;
    select.append(option);
  }
  return select;
}

/** Step / over / out / continue / back, and the statistic that colours the strip. */
function controlBar(m: AnyModel<DebuggerState>, ask: Ask, buttons: HTMLButtonElement[], busy: HTMLElement): HTMLElement {
  const bar = el("div", "lw-dbg-controls");
  for (const [label, how, hint] of [
    ["◀ back", "back", "the call before"], ["step ▸", "step", "the next call (into this one)"],
    ["over ↷", "over", "the next call outside this one"], ["out ↑", "out", "the call this one runs inside"],
    ["continue ▶▶", "continue", "on to the next breakpoint hit"],
  ]) {
    const button = el("button", "lw-button", label);
    button.title = hint;
    button.dataset.move = how;
    button.addEventListener("click", () => void ask("move", { how }));
    buttons.push(button);
    bar.append(button);
  }
  const statistic = options(["rms", "max", "nonfinite", "beyond_float16"]);
  statistic.className = "lw-dbg-select lw-dbg-statistic";
  statistic.title = "what colours the strip and the grid";
  statistic.addEventListener("change", () => {
    m.set("statistic", statistic.value);
    m.save_changes();
  });
  bar.append(el("span", "", " colour by "), statistic, busy);
  return bar;
}

/** A kind, its argument, and the button that adds the breakpoint. */
function breakpointForm(ask: Ask, buttons: HTMLButtonElement[]): HTMLElement {
  const form = el("div", "lw-dbg-add");
  const kind = options(["NonFinite", "Overflow", "NormJump", "TargetDrop", "At"]);
  const arg = el("input", "lw-dbg-arg");
  arg.placeholder = "argument: dtype, factor, target or module path";
  const add = el("button", "lw-button", "add breakpoint");
  add.addEventListener("click", () => void ask("breakpoint", { kind: kind.value, arg: arg.value }));
  buttons.push(add);
  form.append(kind, arg, add);
  return form;
}

/** Which tensor of the current call, and the button that recomputes it. */
function inspectForm(ask: Ask, buttons: HTMLButtonElement[]): HTMLElement {
  const form = el("div", "lw-dbg-add-inspect");
  const part = options(["output", "input", "weight", "attention"]);
  const inspect = el("button", "lw-button", "inspect");
  inspect.title = "recompute the current call's tensor (the run replayed up to it)";
  inspect.addEventListener("click", () => void ask("inspect", { part: part.value }));
  buttons.push(inspect);
  form.append(part, inspect);
  return form;
}

function stackLinks(chain: { call: number; label: string }[], go: (call: number) => void): HTMLElement[] {
  return chain.flatMap((entry, i) => {
    const link = el("button", "lw-dbg-frame", entry.label);
    link.addEventListener("click", () => go(entry.call));
    return i ? [el("span", "", " › "), link] : [link];
  });
}

function pointRows(texts: string[], ask: Ask): HTMLElement[] {
  return texts.map((text, index) => {
    const row = el("div", "lw-dbg-point");
    const remove = el("button", "lw-button", "×");
    remove.title = "remove this breakpoint";
    remove.addEventListener("click", () => void ask("unbreak", { index }));
    row.append(el("span", "lw-dbg-mono", text), remove);
    return row;
  });
}

function render({ model, el: root, experimental, signal }: RenderProps<DebuggerState>): () => void {
  const m = model as AnyModel<DebuggerState>;
  const frame = el("div", "lw-panel lw-dbg");
  const stopTheme = followTheme(frame);
  const requests = new Requests(model, experimental, signal);
  const title = el("div", "lw-dbg-title");
  const status = el("div", "lw-dbg-status");
  status.setAttribute("role", "status");
  const busy = el("span", "lw-dbg-busy");
  const buttons: HTMLButtonElement[] = [];
  const ask: Ask = async (what, params) => {
    busy.textContent = "running…";
    buttons.forEach((b) => (b.disabled = true));
    try {
      await requests.raw(what, params);
    } catch {
      // the error reply is also set on the model (error), shown below
    } finally {
      busy.textContent = "";
      buttons.forEach((b) => (b.disabled = false));
    }
  };
  const go = (call: number) => void ask("move", { how: "goto", call });
  const controls = controlBar(m, ask, buttons, busy);
  const stack = el("div", "lw-dbg-stack");
  const strip = el("canvas", "lw-dbg-strip");
  strip.width = STRIP_W;
  strip.height = STRIP_H;
  strip.title = "every call of the run, in order: click to travel there (red ticks: breakpoint hits)";
  strip.addEventListener("click", (event) => {
    const box = strip.getBoundingClientRect();
    go(callAt(((event.clientX - box.left) / box.width) * STRIP_W, STRIP_W, m.get("strip").length));
  });
  focusable(strip); // left and right: the call before or after
  strip.addEventListener("keydown", (event) => {
    const step = { ArrowLeft: -1, ArrowRight: 1 }[event.key as "ArrowLeft" | "ArrowRight"];
    if (!step) return;
    event.preventDefault();
    go(Math.min(m.get("strip").length - 1, Math.max(0, m.get("position") + step)));
  });
  const gridCanvas = el("canvas", "lw-dbg-gridcanvas");
  const gridBox = el("div", "lw-dbg-grid");
  gridBox.append(el("div", "lw-dbg-hint", "the blocks' outputs: layers down, generation steps across"), gridCanvas);
  const calls = el("div", "lw-dbg-callbox");
  const points = el("div", "lw-dbg-points");
  const inspector = el("div", "lw-dbg-inspector");
  const errorBox = el("div", "lw-dbg-error");
  const exports = exportButtons(requests, "timeline", (text) => {
    if (text.startsWith("error")) errorBox.textContent = text;
  }, ["png", "svg", "html", "csv"]);
  frame.append(
    title, status, controls, stack, strip, gridBox, calls, el("div", "lw-dbg-section", "breakpoints"), points,
    breakpointForm(ask, buttons), el("div", "lw-dbg-section", "inspector"), inspectForm(ask, buttons), inspector,
    errorBox, exports,
  );
  root.append(frame);
  const statistic = controls.querySelector("select") as HTMLSelectElement;

  function draw() {
    title.textContent = m.get("title");
    status.replaceChildren(...m.get("status").map((line) => el("div", "", line)));
    statistic.value = m.get("statistic");
    stack.replaceChildren(...stackLinks(m.get("stack"), go));
    drawStrip(strip, m);
    drawGrid(gridCanvas, m.get("grid"));
    calls.replaceChildren(callTable(m.get("calls"), m.get("position"), go));
    points.replaceChildren(...pointRows(m.get("breakpoints"), ask));
    drawInspector(inspector, m.get("inspector"));
    const message = m.get("error");
    errorBox.hidden = !message;
    errorBox.textContent = message;
  }
  draw();
  const stop = redrawOn(m, ["status", "stack", "position", "strip", "marks", "grid", "calls", "breakpoints",
    "inspector", "error", "statistic", "title"], draw);
  return () => {
    stopTheme();
    stop();
  };
}

export default { render };
