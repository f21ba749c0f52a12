// The editor's directions panel: pick a residual-stream direction (or load one from a file),
// the block after which it is added, where, and its strength; the edit goes into the same list
// as the attention edits (a SteerResidual spec). Below, each token's projection onto the
// direction, without the edits and with them, to watch a long answer drift.
import type { AnyModel } from "@anywidget/types";
import type { EditorState } from "./editor";
import type { DirectionSpec, EditSpec, SteerSpec } from "./steer";
import { el, shown } from "./widget_io";

export interface DirectionsState extends EditorState {
  steers_directions: boolean;
  n_blocks: number;
  directions: DirectionSpec[];
  direction_view: { index: number; layer: number };
  direction_scale: number;
  strip: { before?: [string, number][]; after?: [string, number][] };
  load_path: string;
}

export const STRENGTH_STEPS = 100; // slider positions on each side of 0
export type Where = "all" | "prompt" | "generated";

const sameDirection = (a: DirectionSpec, b: DirectionSpec) => a.vector_f32 === b.vector_f32 && a.name === b.name;
const positionsOf = (where: Where): SteerSpec["positions"] => (where === "all" ? null : where);

/** The steer edit of a direction after one block: the slider's strength, at `where`. */
export function steerSpec(direction: DirectionSpec, layer: number, strength: number, where: Where): SteerSpec {
  return { kind: "steer_residual", direction, layers: [layer], strength, positions: positionsOf(where) };
}

/** Whether an edit steers with this direction after this block (whatever its strength). */
export function steersWith(spec: EditSpec, direction: DirectionSpec, layer: number): spec is SteerSpec {
  return spec.kind === "steer_residual" && sameDirection(spec.direction, direction) && spec.layers.length === 1 &&
    spec.layers[0] === layer;
}

/** The edits after moving the slider: that direction's edit after that block replaced; 0 removes it. */
export function applyDirection(specs: EditSpec[], made: SteerSpec): EditSpec[] {
  const kept = specs.filter((s) => !steersWith(s, made.direction, made.layers[0]));
  return made.strength === 0 ? kept : [...kept, made];
}

/** Slider position (-100..100) to strength (-scale..scale), three significant digits. */
export function positionToStrength(position: number, scale: number): number {
  const clamped = Math.max(-STRENGTH_STEPS, Math.min(STRENGTH_STEPS, position));
  return clamped === 0 ? 0 : Number(((clamped / STRENGTH_STEPS) * scale).toPrecision(3));
}

export function strengthToPosition(strength: number, scale: number): number {
  if (!(scale > 0)) return 0;
  return Math.max(-STRENGTH_STEPS, Math.min(STRENGTH_STEPS, Math.round((strength / scale) * STRENGTH_STEPS)));
}

/** A projection's colour: red along the direction, blue against it, stronger with size. */
export function projectionColour(value: number, scale: number): string {
  const a = scale > 0 ? Math.min(1, Math.abs(value) / scale) : 0;
  return value >= 0 ? `rgba(214, 39, 40, ${(0.8 * a).toFixed(3)})` : `rgba(33, 102, 172, ${(0.8 * a).toFixed(3)})`;
}

function labelled(text: string, control: HTMLElement): HTMLLabelElement {
  const label = el("label", "lw-select", `${text} `);
  label.append(control);
  return label;
}

function options(box: HTMLSelectElement, items: [string, string][]): void {
  box.replaceChildren(...items.map(([value, text]) => {
    const option = el("option", "", text);
    option.value = value;
    return option;
  }));
}

/** The panel; `send` regenerates with new edits (as the attention controls do). */
export function mountDirections(m: AnyModel<DirectionsState>, send: (specs: EditSpec[]) => void) {
  const box = el("div", "lw-ed-dirs");
  const pick = el("select", "lw-ed-dir");
  const block = el("select", "lw-ed-dir-block");
  const where = el("select", "lw-ed-dir-where");
  options(block, Array.from({ length: m.get("n_blocks") }, (_, i) => [String(i), `block ${i}`]));
  options(where, [["all", "every token"], ["prompt", "the prompt"], ["generated", "generated tokens"]]);
  const pickRow = el("div", "lw-ed-row");
  pickRow.append(el("span", "lw-ed-label", "direction"), pick, labelled("added after", block), labelled("at", where));
  const slider = el("input", "lw-ed-strength");
  slider.type = "range";
  slider.min = String(-STRENGTH_STEPS);
  slider.max = String(STRENGTH_STEPS);
  slider.value = "0";
  slider.setAttribute("aria-label", "strength of the direction added to the residual stream (0 adds nothing)");
  const [low, high, value] = [el("span", "lw-ed-scale"), el("span", "lw-ed-scale"), el("span", "lw-ed-strength-value")];
  const strengthRow = el("div", "lw-ed-row");
  strengthRow.append(el("span", "lw-ed-label", "strength"), low, slider, high, value);
  const path = el("input", "lw-ed-dir-path");
  path.type = "text";
  path.placeholder = "direction.safetensors (Direction.save)";
  path.setAttribute("aria-label", "path of a direction file on the kernel's machine");
  const load = el("button", "lw-button lw-ed-dir-load", "load");
  const loadRow = el("div", "lw-ed-row");
  loadRow.append(el("span", "lw-ed-label", "direction file"), path, load);
  const strip = el("div", "lw-ed-strip");
  box.append(pickRow, strengthRow, loadRow, strip);

  const direction = () => m.get("directions")[m.get("direction_view").index];
  const scale = () => m.get("direction_scale") || 1;
  const setView = (index: number, layer: number) => {
    m.set("direction_view", { index, layer });
    m.save_changes();
  };
  pick.addEventListener("change", () => setView(Number(pick.value), Number(block.value)));
  block.addEventListener("change", () => setView(Number(pick.value), Number(block.value)));
  slider.addEventListener("input", () => (value.textContent = `×${positionToStrength(Number(slider.value), scale())}`));
  const commit = () => {
    const d = direction();
    if (!d) return;
    const strength = positionToStrength(Number(slider.value), scale());
    send(applyDirection(m.get("edit_specs"), steerSpec(d, Number(block.value), strength, where.value as Where)));
  };
  slider.addEventListener("change", commit);
  where.addEventListener("change", commit);
  load.addEventListener("click", () => {
    if (!path.value.trim()) return;
    m.set("load_path", path.value.trim());
    m.save_changes();
  });

  function draw() {
    box.hidden = !m.get("steers_directions");
    pickRow.hidden = strengthRow.hidden = m.get("directions").length === 0; // until there is one: the load row only
    const view = m.get("direction_view");
    const names = m.get("directions").map((d, i): [string, string] => [String(i), d.name || `direction ${i}`]);
    options(pick, [["-1", names.length ? "pick one" : "none: give directions=[...] or load one"], ...names]);
    pick.value = String(view.index);
    block.value = String(view.layer);
    const d = direction();
    slider.disabled = where.disabled = !d;
    const s = scale();
    low.textContent = `−${s.toPrecision(2)}`;
    high.textContent = `+${s.toPrecision(2)}`;
    const current = d ? m.get("edit_specs").find((spec) => steersWith(spec, d, view.layer)) : undefined;
    const strength = current?.kind === "steer_residual" ? current.strength : 0;
    slider.value = String(strengthToPosition(strength, s));
    value.textContent = `×${strength}`;
    if (current?.kind === "steer_residual") where.value = current.positions === null ? "all" : String(current.positions);
    drawStrip(strip, m.get("strip"), view.layer);
  }
  const traits = ["directions", "direction_view", "direction_scale", "strip", "edit_specs", "steers_directions"];
  for (const name of traits) m.on(`change:${name}`, draw);
  draw();
  return { element: box, draw, destroy: () => traits.forEach((name) => m.off(`change:${name}`, draw)) };
}

/** Two rows of tokens coloured by their projection: without the edits, and with them. */
function drawStrip(box: HTMLElement, strip: DirectionsState["strip"], layer: number): void {
  const rows: [string, [string, number][]][] = [["without edits", strip.before ?? []], ["with edits", strip.after ?? []]];
  const scale = Math.max(1e-9, ...rows.flatMap(([, pairs]) => pairs.map(([, v]) => Math.abs(v))));
  box.hidden = !strip.before;
  box.replaceChildren(el("div", "lw-ed-label", `projection onto the direction after block ${layer} (red: along it, ` +
    `blue: against it; hover for the number)`));
  for (const [label, pairs] of rows) {
    const line = el("div", "lw-ed-strip-row");
    line.dataset.row = label;
    line.append(el("span", "lw-ed-label", label));
    for (const [token, v] of pairs) {
      const chip = el("span", "lw-tok", shown(token));
      chip.style.background = projectionColour(v, scale);
      chip.title = `${JSON.stringify(token)}: ${v.toFixed(2)}`;
      chip.dataset.value = String(v);
      line.append(chip);
    }
    box.append(line);
  }
}
