// AttributionView: input tokens coloured by their attribution score (diverging
// colours, sign also as a mark), the target and contrast with probabilities,
// method and step selects (Python recomputes), the head-importance grid
// (click a head to open it in a linked attention view), and export.
import type { AnyModel, RenderProps } from "@anywidget/types";
import { el, exportButtons, focusable, redrawOn, Requests, shown } from "./lib/widget_io";
import { diverging } from "./lib/heatmap";
import { inkOn } from "./lib/matrix";
import { followTheme } from "./lib/theme";

interface AttributionState {
  tokens: string[];
  scores: number[];
  n_prompt: number;
  target: string;
  contrast: string | null;
  p_target: number;
  p_contrast: number | null;
  quantity: string;
  score: number;
  delta: number | null;
  notes: string[];
  method: string;
  methods: string[];
  step: number;
  step_labels: string[];
  head_importance: number[][];
  layer: number;
  head: number;
  busy: boolean;
  error: string;
}
const CELL = 16;

/** The tokens as chips coloured by score (orange +, blue −), a sign mark on those that count. */
function scoreChips(tokens: string[], scores: number[], nPrompt: number): HTMLSpanElement[] {
  const peak = Math.max(1e-12, ...scores.map(Math.abs));
  return tokens.map((token, i) => {
    const v = scores[i] / peak;
    const chip = el("span", i < nPrompt ? "lw-tok" : "lw-tok lw-tok-gen", shown(token));
    const [r, g, b] = diverging(v);
    chip.style.backgroundColor = `rgb(${r}, ${g}, ${b})`;
    chip.style.color = inkOn([r, g, b]);
    if (Math.abs(v) > 0.05) chip.dataset.sign = v > 0 ? "+" : "−";
    chip.title = `${i}: ${JSON.stringify(token)} score ${scores[i].toPrecision(4)}`;
    chip.dataset.score = String(scores[i]);
    return chip;
  });
}

/** A select of (value, text) options, named for screen readers. */
function options(name: string, items: [string, string][]): HTMLSelectElement {
  const box = el("select");
  box.setAttribute("aria-label", name);
  for (const [value, text] of items) {
    const option = el("option", "", text);
    option.value = value;
    box.append(option);
  }
  return box;
}

/** A select with its visible label. */
function label(text: string, box: HTMLElement): HTMLElement {
  const wrap = el("label", "lw-select", `${text} `);
  wrap.append(box);
  return wrap;
}

/** The head-importance grid's picking: a click on a head, or the arrow keys from the picked one. */
function headPicker(m: AnyModel<AttributionState>, grid: HTMLCanvasElement) {
  const pick = (layer: number, head: number) => {
    m.set("layer", layer);
    m.set("head", head);
    m.save_changes();
  };
  grid.addEventListener("click", (event) => {
    const box = grid.getBoundingClientRect();
    const heads = m.get("head_importance");
    pick(Math.floor(((event.clientY - box.top) / box.height) * heads.length),
      Math.floor(((event.clientX - box.left) / box.width) * heads[0].length));
  });
  focusable(grid);
  grid.addEventListener("keydown", (event) => {
    const step = ({ ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] } as
      Record<string, [number, number]>)[event.key];
    const heads = m.get("head_importance");
    if (!step || !heads.length) return;
    event.preventDefault();
    pick(Math.min(heads.length - 1, Math.max(0, Math.max(0, m.get("layer")) + step[0])),
      Math.min(heads[0].length - 1, Math.max(0, Math.max(0, m.get("head")) + step[1])));
  });
}

function render({ model, el: root, experimental, signal }: RenderProps<AttributionState>): () => void {
  const m = model as AnyModel<AttributionState>;
  const frame = el("div", "lw-panel lw-attrib");
  const stopTheme = followTheme(frame);
  const header = el("div", "lw-attrib-header");
  const title = el("span", "lw-attn-title");
  const methodBox = options("attribution method", m.get("methods").map((method) => [method, method.replace(/_/g, " ")]));
  const stepBox = options("generation step",
    m.get("step_labels").map((token, i) => [String(i), `step ${i}: ${JSON.stringify(token)}`]));
  const busy = el("span", "lw-busy-note", "computing…");
  const requests = new Requests(model, experimental, signal);
  const exports = exportButtons(requests, "attribution", (text) => {
    if (!text.startsWith("error")) return;
    errorBox.textContent = text;
    errorBox.hidden = false;
  });
  header.append(title, label("method", methodBox), label("for", stepBox), busy, exports);
  const summary = el("div", "lw-attrib-summary");
  const strip = el("div", "lw-attn-tokens lw-attrib-tokens");
  strip.setAttribute("aria-label", "input tokens coloured by attribution: orange (+) towards the target, blue (−) away");
  const notes = el("div", "lw-note");
  const errorBox = el("div", "lw-error");
  errorBox.setAttribute("role", "alert");
  const gridBox = el("div", "lw-attrib-grid");
  const gridCaption = el("div", "lw-attn-caption", "head importance (attention × gradient): layer ↓ head →, click to open");
  const grid = el("canvas", "lw-attn-grid");
  gridBox.append(gridCaption, grid);
  frame.append(header, summary, strip, notes, errorBox, gridBox);
  root.replaceChildren(frame);

  function draw() {
    title.textContent = `why ${JSON.stringify(m.get("target"))}` +
      (m.get("contrast") !== null ? `, not ${JSON.stringify(m.get("contrast"))}` : "");
    methodBox.value = m.get("method");
    stepBox.value = String(m.get("step"));
    const pc = m.get("p_contrast");
    summary.textContent = `${m.get("quantity")} = ${m.get("score").toFixed(3)}; ` +
      `p(${JSON.stringify(m.get("target"))}) ${m.get("p_target").toFixed(3)}` +
      (pc !== null && pc !== undefined ? `, p(${JSON.stringify(m.get("contrast"))}) ${pc.toFixed(3)}` : "") +
      (m.get("delta") !== null && m.get("delta") !== undefined ? `; completeness gap ${m.get("delta")!.toPrecision(3)}` : "");
    strip.replaceChildren(...scoreChips(m.get("tokens"), m.get("scores"), m.get("n_prompt")));
    notes.textContent = m.get("notes").join(" ");
    errorBox.textContent = m.get("error");
    errorBox.hidden = !m.get("error");
    busy.hidden = !m.get("busy");
    drawGrid();
  }

  function drawGrid() {
    const heads = m.get("head_importance");
    gridBox.hidden = heads.length === 0;
    if (!heads.length) return;
    grid.width = heads[0].length * CELL;
    grid.height = heads.length * CELL;
    const ctx = grid.getContext("2d")!;
    const peak = Math.max(1e-12, ...heads.flat().map(Math.abs));
    heads.forEach((row, layer) => row.forEach((v, head) => {
      const [r, g, b] = diverging(v / peak);
      ctx.fillStyle = `rgb(${r}, ${g}, ${b})`;
      ctx.fillRect(head * CELL + 1, layer * CELL + 1, CELL - 2, CELL - 2);
    }));
    if (m.get("layer") >= 0) {
      ctx.strokeStyle = "#e6550d";
      ctx.lineWidth = 2;
      ctx.strokeRect(m.get("head") * CELL + 1, m.get("layer") * CELL + 1, CELL - 2, CELL - 2);
    }
    grid.dataset.drawn = "true";
  }

  headPicker(m, grid);
  methodBox.addEventListener("change", () => {
    m.set("method", methodBox.value);
    m.save_changes();
  });
  stepBox.addEventListener("change", () => {
    m.set("step", Number(stepBox.value));
    m.save_changes();
  });
  const stop = redrawOn(m, ["scores", "method", "step", "busy", "error", "head_importance", "layer", "head", "target"], draw);
  return () => {
    stopTheme();
    stop();
  };
}

export default { render };
