// AttentionEditor: the attention panel plus steering. Select key tokens, move
// the factor slider, pick layers and heads, ablate heads; on release the edits
// go to Python (edit_specs), which regenerates and sends the new output. The
// outputs with and without edits stand side by side, changed tokens marked.
import type { AnyModel, RenderProps } from "@anywidget/types";
import { mountAttention, type ViewState } from "./lib/attention_panel";
import { download, el, Requests, shown } from "./lib/widget_io";
import {
  applySteer, describeEdit, diffTokens, type EditSpec, factorToSlider, type Scope, SLIDER_MAX, sliderToFactor,
  steerEdits, toggleAblation,
} from "./lib/steer";

interface EditorState extends ViewState {
  prompt_text: string;
  edit_specs: EditSpec[];
  key_span: number[];
  picked: number[][];
  baseline_tokens: string[];
  new_tokens: string[];
  target: string;
  p_before: number;
  p_after: number;
  busy: boolean;
  waiting: boolean;
  error: string;
  fidelity: number;
  record_json: string;
  runs: number;
  run_seconds: number;
}

const DEBOUNCE_MS = 250;

function render({ model, el: root, experimental, signal }: RenderProps<EditorState>): () => void {
  const m = model as AnyModel<EditorState>;
  let mode: "keys" | "query" = "keys";
  const nLayers = m.get("n_layers");
  const nHeads = m.get("n_heads");

  const frame = el("div", "lw-panel lw-editor");
  const header = el("div", "lw-ed-header");
  const title = el("span", "lw-attn-title", `Attention editor: ${m.get("model_name")}`);
  const badge = el("span", "lw-ed-badge");
  const busy = el("span", "lw-ed-busy", "regenerating…");
  busy.setAttribute("role", "status");
  header.append(title, badge, busy);

  // -- steering controls --
  const steer = el("div", "lw-ed-steer");
  const modes = el("div", "lw-ed-row");
  modes.append(el("span", "lw-ed-label", "clicking a token"));
  const modeName = `lw-mode-${Math.random().toString(36).slice(2)}`; // radios of this widget only
  for (const [value, text] of [["keys", "selects keys to steer"], ["query", "shows its attention"]] as const) {
    const label = el("label", "lw-ed-radio");
    const radio = el("input");
    radio.type = "radio";
    radio.name = modeName;
    radio.value = value;
    radio.checked = value === mode;
    radio.addEventListener("change", () => (mode = value));
    label.append(radio, ` ${text}`);
    modes.append(label);
  }
  const keysRow = el("div", "lw-ed-row");
  const keysText = el("span", "lw-ed-keys");
  const clearKeys = el("button", "lw-button", "clear");
  clearKeys.addEventListener("click", () => setKeys([]));
  keysRow.append(el("span", "lw-ed-label", "keys"), keysText, clearKeys);

  const sliderRow = el("div", "lw-ed-row");
  const slider = el("input", "lw-ed-factor");
  slider.type = "range";
  slider.min = "0";
  slider.max = String(SLIDER_MAX);
  slider.value = String(SLIDER_MAX / 2);
  slider.setAttribute("aria-label", "attention factor on the selected keys: 0 masks, 1 changes nothing, 10 emphasises");
  const factorText = el("span", "lw-ed-factor-value", "×1");
  const hint = el("span", "lw-ed-hint");
  sliderRow.append(el("span", "lw-ed-label", "factor"), el("span", "lw-ed-scale", "0"), slider,
    el("span", "lw-ed-scale", "10"), factorText, hint);

  const scopeRow = el("div", "lw-ed-row");
  const scope = el("select", "lw-ed-scope");
  for (const [value, text] of [["all", "all layers and heads"], ["layers", "layers from … to …"],
    ["picked", "heads picked in the grid"]] as const) {
    const option = el("option", "", text);
    option.value = value;
    scope.append(option);
  }
  const number = (value: number, label: string) => {
    const box = el("input", "lw-ed-layer");
    box.type = "number";
    box.min = "0";
    box.max = String(nLayers - 1);
    box.value = String(value);
    box.setAttribute("aria-label", label);
    return box;
  };
  const fromLayer = number(0, "first layer");
  const toLayer = number(nLayers - 1, "last layer");
  const layerRange = el("span", "lw-ed-range");
  layerRange.append(fromLayer, " to ", toLayer);
  const pickedText = el("span", "lw-ed-picked");
  scopeRow.append(el("span", "lw-ed-label", "applies to"), scope, layerRange, pickedText);

  const actions = el("div", "lw-ed-row");
  const pick = el("button", "lw-button lw-ed-pick");
  const ablate = el("button", "lw-button lw-ed-ablate");
  const reset = el("button", "lw-button lw-ed-reset", "reset");
  reset.title = "remove every edit: back to the run without edits";
  const record = el("button", "lw-button lw-ed-record", "download record");
  record.title = "the run record (JSON): lw.replay(record) runs it again";
  actions.append(pick, ablate, reset, record);
  steer.append(modes, keysRow, sliderRow, scopeRow, actions);

  const editsBox = el("div", "lw-ed-edits");
  const compare = el("div", "lw-ed-compare");
  const before = el("div", "lw-ed-out lw-ed-before");
  const after = el("div", "lw-ed-out lw-ed-after");
  const prob = el("div", "lw-ed-prob");
  compare.append(before, after);
  const error = el("div", "lw-ed-error");
  error.setAttribute("role", "alert");

  const panel = mountAttention(m, new Requests(experimental.invoke, signal), {
    stripMode: () => mode,
    onKeys: (span) => setKeys(span),
    keySpan: () => m.get("key_span"),
    gridMarks: () => [
      ...m.get("picked").map(([layer, head]) => ({ layer, head, colour: "#2b8cbe" })),
      ...m.get("edit_specs").filter((s) => s.kind === "ablate_head")
        .map((s) => ({ layer: (s as { layer: number }).layer, head: (s as { head: number }).head, colour: "#636363" })),
    ],
    onGridClick: (layer, head, event) => {
      if (!(event.shiftKey || event.ctrlKey || event.metaKey)) return false;
      togglePick(layer, head);
      return true;
    },
  });
  frame.append(header, steer, editsBox, compare, prob, error, panel.element);
  root.replaceChildren(frame);

  // -- state to edits --
  function setKeys(span: number[]) {
    m.set("key_span", span);
    m.save_changes();
  }
  function togglePick(layer: number, head: number) {
    const picked = m.get("picked");
    const has = picked.some(([l, h]) => l === layer && h === head);
    m.set("picked", has ? picked.filter(([l, h]) => l !== layer || h !== head) : [...picked, [layer, head]]);
    m.save_changes();
  }
  function target(): Scope {
    if (scope.value === "layers") {
      const clamp = (v: number) => Math.min(nLayers - 1, Math.max(0, Math.round(v) || 0));
      return { scope: "layers", from: clamp(Number(fromLayer.value)), to: clamp(Number(toLayer.value)) };
    }
    if (scope.value === "picked") return { scope: "picked", picked: m.get("picked").map(([l, h]) => [l, h]) };
    return { scope: "all" };
  }
  let pending: EditSpec[] | null = null; // edits waiting for the current run to finish
  function send(specs: EditSpec[]) {
    if (m.get("busy")) {
      pending = specs;
      return;
    }
    m.set("error", "");
    m.set("edit_specs", specs);
    m.save_changes();
  }
  let timer: ReturnType<typeof setTimeout> | undefined;
  let pointer = false; // a mouse or touch release commits at once; key presses are debounced
  function commitSlider() {
    clearTimeout(timer);
    const delay = pointer ? 0 : DEBOUNCE_MS;
    pointer = false;
    timer = setTimeout(() => {
      const span = m.get("key_span");
      if (span.length !== 2) return;
      const made = steerEdits([span[0], span[1]], sliderToFactor(Number(slider.value)), target());
      if (made.length === 0) {
        m.set("error", "no heads picked: shift-click heads in the grid, or apply to all layers");
        m.save_changes();
        return;
      }
      send(applySteer(m.get("edit_specs"), made));
    }, delay);
  }
  slider.addEventListener("input", () => (factorText.textContent = `×${sliderToFactor(Number(slider.value))}`));
  slider.addEventListener("pointerdown", () => (pointer = true));
  slider.addEventListener("change", commitSlider); // on release, or on each key press (debounced)
  scope.addEventListener("change", drawControls);
  ablate.addEventListener("click", () => send(toggleAblation(m.get("edit_specs"), m.get("layer"), m.get("head"))));
  pick.addEventListener("click", () => togglePick(m.get("layer"), m.get("head")));
  reset.addEventListener("click", () => send([]));
  record.addEventListener("click", () => download("llm-widgets-record.json", m.get("record_json"), "application/json"));

  // -- edits and outputs to the screen --
  function drawControls() {
    const span = m.get("key_span");
    const tokens = m.get("tokens");
    const has = span.length === 2;
    keysText.textContent = has
      ? `${span[1] - span[0] === 1 ? span[0] : `${span[0]}–${span[1] - 1}`} ${JSON.stringify(tokens.slice(span[0], span[1]).join(""))}`
      : "none";
    clearKeys.disabled = !has;
    slider.disabled = !has;
    hint.textContent = has ? "" : "select key tokens in the strip first (click, drag, or shift-click to extend)";
    layerRange.hidden = scope.value !== "layers";
    const picked = m.get("picked");
    pickedText.hidden = scope.value !== "picked";
    pickedText.textContent = picked.length
      ? picked.map(([l, h]) => `L${l}H${h}`).join(" ")
      : "none yet: shift-click heads in the grid, or use “pick”";
    const [layer, head] = [m.get("layer"), m.get("head")];
    const ablated = m.get("edit_specs").some((s) => s.kind === "ablate_head" && s.layer === layer && s.head === head);
    ablate.textContent = ablated ? `restore L${layer} H${head}` : `ablate L${layer} H${head}`;
    ablate.setAttribute("aria-pressed", String(ablated));
    const isPicked = picked.some(([l, h]) => l === layer && h === head);
    pick.textContent = isPicked ? `unpick L${layer} H${head}` : `pick L${layer} H${head}`;
    // the slider shows the factor of the edit on these keys and heads, if there is one
    if (has) {
      const made = steerEdits([span[0], span[1]], 1, target());
      const same = m.get("edit_specs").find((s) => s.kind === "scale_attention" &&
        made.some((x) => JSON.stringify([x.keys, x.layers, x.heads]) === JSON.stringify([s.keys, s.layers, s.heads])));
      const factor = same?.kind === "scale_attention" ? same.factor : 1;
      slider.value = String(factor === 1 ? SLIDER_MAX / 2 : factorToSlider(factor));
      factorText.textContent = `×${factor}`;
    }
    panel.refresh();
  }

  function drawEdits() {
    const specs = m.get("edit_specs");
    const tokens = m.get("tokens");
    const items = specs.map((spec, i) => {
      const item = el("li", "", describeEdit(spec, tokens));
      const remove = el("button", "lw-button lw-ed-remove", "×");
      remove.title = "remove this edit";
      remove.setAttribute("aria-label", `remove edit ${i + 1}`);
      remove.addEventListener("click", () => send(specs.filter((_, j) => j !== i)));
      item.append(" ", remove);
      return item;
    });
    const list = el("ul");
    list.append(...items);
    editsBox.replaceChildren(el("span", "lw-ed-label", specs.length ? `edits (${specs.length})` : "edits: none, the run as the model makes it"));
    if (specs.length) editsBox.append(list);
    reset.disabled = specs.length === 0;
  }

  function drawOutputs() {
    const old = m.get("baseline_tokens");
    const now = m.get("new_tokens");
    const diff = diffTokens(old, now);
    const side = (box: HTMLElement, label: string, tokens: string[], changed: boolean[]) => {
      const text = el("div", "lw-ed-text");
      tokens.forEach((token, i) => text.append(el("span", changed[i] ? "lw-changed" : "", shown(token))));
      box.replaceChildren(el("div", "lw-ed-label", label), text);
    };
    side(before, "without edits", old, diff.before);
    const changes = diff.after.filter(Boolean).length;
    const took = m.get("run_seconds") ? `, ${m.get("run_seconds").toFixed(1)} s` : "";
    side(after, m.get("edit_specs").length ? `with edits (${changes} tokens changed${took})` : "with edits (none yet)", now,
      diff.after);
    after.dataset.text = now.join("");
    after.dataset.runs = String(m.get("runs"));
    after.dataset.runSeconds = String(m.get("run_seconds"));
    const [p0, p1] = [m.get("p_before"), m.get("p_after")];
    const delta = p1 - p0;
    prob.textContent = `p(${JSON.stringify(m.get("target"))} next) ${p0.toFixed(3)} → ${p1.toFixed(3)} ` +
      `(${delta >= 0 ? "+" : "−"}${Math.abs(delta).toFixed(3)})`;
  }

  function drawStatus() {
    const isBusy = m.get("busy");
    busy.hidden = !isBusy;
    busy.textContent = m.get("waiting") ? "waiting for the model (another run holds it)…" : "regenerating…";
    frame.classList.toggle("lw-busy", isBusy);
    frame.setAttribute("aria-busy", String(isBusy));
    const message = m.get("error");
    error.hidden = !message;
    error.textContent = message ? `Regenerating failed, nothing changed: ${message}` : "";
    if (!isBusy && pending) {
      const next = pending;
      pending = null;
      send(next);
    }
  }

  function drawBadge() {
    const f = m.get("fidelity");
    badge.textContent = `fidelity: max |Δlogit| ${f === 0 ? "0" : f.toExponential(1)}`;
    badge.title = "largest logit difference between the instrumented and the plain model on this prompt, no edits";
    badge.classList.toggle("lw-ed-badge-bad", f > 1e-3);
  }

  const onEdits = () => {
    drawEdits();
    drawControls();
  };
  const onOutputs = () => drawOutputs();
  const events: [string, () => void][] = [
    ["change:edit_specs", onEdits], ["change:key_span", drawControls], ["change:picked", drawControls],
    ["change:layer", drawControls], ["change:head", drawControls], ["change:tokens", onEdits],
    ["change:new_tokens", onOutputs], ["change:runs", onOutputs], ["change:run_seconds", onOutputs], ["change:p_after", onOutputs],
    ["change:busy", drawStatus], ["change:waiting", drawStatus], ["change:error", drawStatus], ["change:fidelity", drawBadge],
  ];
  for (const [name, handler] of events) m.on(name, handler);
  drawBadge();
  drawEdits();
  drawControls();
  drawOutputs();
  drawStatus();

  return () => {
    clearTimeout(timer);
    for (const [name, handler] of events) m.off(name, handler);
    panel.destroy();
  };
}

export default { render };
