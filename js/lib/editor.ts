// The editor's parts besides the attention panel: its state, the steering
// controls (what clicking a token does, keys, factor slider, scope, actions),
// the list of edits and the outputs with and without them side by side.
import type { AnyModel } from "@anywidget/types";
import type { ViewState } from "./attention_panel";
import {
  applySteer, describeEdit, diffTokens, type EditSpec, factorToSlider, sameTarget, type Scope, SLIDER_MAX,
  sliderToFactor, steerEdits, toggleAblation,
} from "./steer";
import { download, el, shown } from "./widget_io";

export interface EditorState extends ViewState {
  prompt_text: string;
  edit_specs: EditSpec[];
  key_span: number[];
  picked: number[][];
  unedited_tokens: string[];
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
  class_bars: { label: string; before: number; after: number }[];
}

const DEBOUNCE_MS = 250;

export interface EditorActions {
  send(specs: EditSpec[]): void;
  setKeys(span: number[]): void;
  togglePick(layer: number, head: number): void;
  /** Redraw the panel's key highlight and grid marks. */
  refresh(): void;
}

export interface SteerControls {
  element: HTMLElement;
  mode(): "keys" | "query";
  draw(): void;
  destroy(): void;
}

/** The factor slider (0 to 10 on a log scale, 1 in the middle), its value and its hint. */
function factorSlider() {
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
  return { sliderRow, slider, factorText, hint };
}

/** Pick or ablate the head on screen, reset the edits, download the run record. */
function actionButtons() {
  const actionRow = el("div", "lw-ed-row");
  const pick = el("button", "lw-button lw-ed-pick");
  const ablate = el("button", "lw-button lw-ed-ablate");
  const reset = el("button", "lw-button lw-ed-reset", "reset");
  reset.title = "remove every edit: back to the run without edits";
  const record = el("button", "lw-button lw-ed-record", "download record");
  record.title = "the run record (JSON): lw.replay(record) runs it again";
  actionRow.append(pick, ablate, reset, record);
  return { actionRow, pick, ablate, reset, record };
}

export function mountSteerControls(m: AnyModel<EditorState>, actions: EditorActions): SteerControls {
  const nLayers = m.get("n_layers");
  let mode: "keys" | "query" = "keys";
  const steer = el("div", "lw-ed-steer");
  const modes = modeChoice(mode, (value) => (mode = value));
  const keysRow = el("div", "lw-ed-row");
  const keysText = el("span", "lw-ed-keys");
  const clearKeys = el("button", "lw-button", "clear");
  clearKeys.addEventListener("click", () => actions.setKeys([]));
  keysRow.append(el("span", "lw-ed-label", "keys"), keysText, clearKeys);

  const { sliderRow, slider, factorText, hint } = factorSlider();
  const { scopeRow, scope, fromLayer, toLayer, layerRange, pickedText } = scopeChoice(nLayers);
  const { actionRow, pick, ablate, reset, record } = actionButtons();
  steer.append(modes, keysRow, sliderRow, scopeRow, actionRow);

  function target(): Scope {
    if (scope.value === "layers") {
      const clamp = (v: number) => Math.min(nLayers - 1, Math.max(0, Math.round(v) || 0));
      return { scope: "layers", from: clamp(Number(fromLayer.value)), to: clamp(Number(toLayer.value)) };
    }
    if (scope.value === "picked") return { scope: "picked", picked: m.get("picked").map(([l, h]) => [l, h]) };
    return { scope: "all" };
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
      const made = steerEdits([span[0], span[1]], sliderToFactor(Number(slider.value)), target(), m.get("stack"));
      if (made.length === 0) {
        m.set("error", "no heads picked: shift-click heads in the grid, or apply to all layers");
        m.save_changes();
        return;
      }
      actions.send(applySteer(m.get("edit_specs"), made));
    }, delay);
  }
  slider.addEventListener("input", () => (factorText.textContent = `×${sliderToFactor(Number(slider.value))}`));
  slider.addEventListener("pointerdown", () => (pointer = true));
  slider.addEventListener("change", commitSlider); // on release, or on each key press (debounced)
  scope.addEventListener("change", drawControls);
  ablate.addEventListener("click", () => actions.send(toggleAblation(m.get("edit_specs"), m.get("layer"), m.get("head"), m.get("stack"))));
  pick.addEventListener("click", () => actions.togglePick(m.get("layer"), m.get("head")));
  reset.addEventListener("click", () => actions.send([]));
  record.addEventListener("click", () => download("llm-widgets-record.json", m.get("record_json"), "application/json"));

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
    const stack = m.get("stack") === "self" ? null : m.get("stack");
    const ablated = m.get("edit_specs").some((s) => s.kind === "ablate_head" && s.layer === layer && s.head === head &&
      (s.stack ?? null) === stack);
    ablate.textContent = ablated ? `restore L${layer} H${head}` : `ablate L${layer} H${head}`;
    ablate.setAttribute("aria-pressed", String(ablated));
    const isPicked = picked.some(([l, h]) => l === layer && h === head);
    pick.textContent = isPicked ? `unpick L${layer} H${head}` : `pick L${layer} H${head}`;
    // the slider shows the factor of the edit on these keys and heads, if there is one
    if (has) {
      const made = steerEdits([span[0], span[1]], 1, target(), m.get("stack"));
      const same = m.get("edit_specs").find((s) => s.kind === "scale_attention" && made.some((x) => sameTarget(x, s)));
      const factor = same?.kind === "scale_attention" ? same.factor : 1;
      slider.value = String(factor === 1 ? SLIDER_MAX / 2 : factorToSlider(factor));
      factorText.textContent = `×${factor}`;
    }
    reset.disabled = m.get("edit_specs").length === 0;
    actions.refresh();
  }

  return { element: steer, mode: () => mode, draw: drawControls, destroy: () => clearTimeout(timer) };
}

/** The radios that say what clicking a token does. */
function modeChoice(initial: "keys" | "query", onChange: (mode: "keys" | "query") => void): HTMLElement {
  const modes = el("div", "lw-ed-row");
  modes.append(el("span", "lw-ed-label", "clicking a token"));
  const modeName = `lw-mode-${Math.random().toString(36).slice(2)}`; // radios of this widget only
  for (const [value, text] of [["keys", "selects keys to steer"], ["query", "shows its attention"]] as const) {
    const label = el("label", "lw-ed-radio");
    const radio = el("input");
    radio.type = "radio";
    radio.name = modeName;
    radio.value = value;
    radio.checked = value === initial;
    radio.addEventListener("change", () => onChange(value));
    label.append(radio, ` ${text}`);
    modes.append(label);
  }
  return modes;
}

/** Where a steer applies: every layer and head, a range of layers, or the heads picked in the grid. */
function scopeChoice(nLayers: number) {
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
  return { scopeRow, scope, fromLayer, toLayer, layerRange, pickedText };
}

/** The list of edits, each with a button that removes it. */
export function drawEdits(box: HTMLElement, m: AnyModel<EditorState>, send: (specs: EditSpec[]) => void): void {
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
  box.replaceChildren(el("span", "lw-ed-label", specs.length ? `edits (${specs.length})` : "edits: none, the run as the model makes it"));
  if (specs.length) box.append(list);
}

/** The outputs without and with the edits, changed tokens marked, and p(target). */
export function drawOutputs(before: HTMLElement, after: HTMLElement, prob: HTMLElement, m: AnyModel<EditorState>): void {
  const old = m.get("unedited_tokens");
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
  const classes = m.get("class_bars") ?? [];
  prob.replaceChildren(el("span", "", `p(${JSON.stringify(m.get("target"))}${classes.length ? "" : " next"}) ` +
    `${p0.toFixed(3)} → ${p1.toFixed(3)} (${delta >= 0 ? "+" : "−"}${Math.abs(delta).toFixed(3)})`));
  if (classes.length) prob.append(classBars(classes));
}

/** A classifier's classes: a bar without edits (grey) over one with them (blue), and the numbers. */
function classBars(rows: { label: string; before: number; after: number }[]): HTMLElement {
  const box = el("div", "lw-ed-classes");
  box.setAttribute("aria-label", "class probabilities: without edits (grey bar), with them (blue bar)");
  for (const row of rows) {
    const line = el("div", "lw-ed-class");
    line.dataset.label = row.label;
    line.dataset.after = String(row.after);
    const bars = el("div", "lw-ed-class-bars");
    for (const [kind, p] of [["before", row.before], ["after", row.after]] as const) {
      const bar = el("div", `lw-ed-bar lw-ed-bar-${kind}`);
      bar.style.width = `${(100 * p).toFixed(1)}%`;
      bars.append(bar);
    }
    line.append(el("span", "lw-label", row.label), bars,
      el("span", "lw-ed-class-p", `${row.before.toFixed(3)} → ${row.after.toFixed(3)}`));
    box.append(line);
  }
  return box;
}
