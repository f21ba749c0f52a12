// AttentionEditor: the attention panel plus steering. Select key tokens, move
// the factor slider, pick layers and heads, ablate heads; on release the edits
// go to Python (edit_specs), which regenerates and sends the new output. The
// outputs with and without edits stand side by side, changed tokens marked.
// The steering controls, the edit list and the outputs are in lib/editor.ts.
import type { AnyModel, RenderProps } from "@anywidget/types";
import { mountAttention } from "./lib/attention_panel";
import { type DirectionsState, mountDirections } from "./lib/directions";
import { drawEdits, drawOutputs, type EditorState, mountSteerControls } from "./lib/editor";
import type { EditSpec } from "./lib/steer";
import { el, Requests } from "./lib/widget_io";
import { followTheme } from "./lib/theme";

/** The grid's marks: heads picked for steering (blue), ablated heads (grey). */
function gridMarks(m: AnyModel<EditorState>) {
  return [
    ...m.get("picked").map(([layer, head]) => ({ layer, head, colour: "#2b8cbe" })),
    ...m.get("edit_specs").flatMap((s) => (s.kind === "ablate_head" ? [{ layer: s.layer, head: s.head, colour: "#636363" }] : [])),
  ];
}

/** The badge: how far the instrumented model's logits are from the plain model's, no edits. */
function drawFidelity(badge: HTMLElement, f: number): void {
  badge.textContent = `fidelity: max |Δlogit| ${f === 0 ? "0" : f.toExponential(1)}`;
  badge.title = "largest logit difference between the instrumented and the plain model on this prompt, no edits";
  badge.classList.toggle("lw-ed-badge-bad", f > 1e-3);
}

function render({ model, el: root, experimental, signal }: RenderProps<EditorState>): () => void {
  const m = model as AnyModel<EditorState>;
  const frame = el("div", "lw-panel lw-editor");
  const stopTheme = followTheme(frame);
  const header = el("div", "lw-ed-header");
  const badge = el("span", "lw-ed-badge");
  const busy = el("span", "lw-ed-busy", "regenerating…");
  busy.setAttribute("role", "status");
  header.append(el("span", "lw-attn-title", `Attention editor: ${m.get("model_name")}`), badge, busy);
  const editsBox = el("div", "lw-ed-edits");
  const compare = el("div", "lw-ed-compare");
  const before = el("div", "lw-ed-out lw-ed-before");
  const after = el("div", "lw-ed-out lw-ed-after");
  const prob = el("div", "lw-ed-prob");
  compare.append(before, after);
  const error = el("div", "lw-error");
  error.setAttribute("role", "alert");

  let pending: EditSpec[] | null = null; // edits waiting for the current run to finish
  const send = (specs: EditSpec[]) => {
    if (m.get("busy")) {
      pending = specs;
      return;
    }
    m.set("error", "");
    m.set("edit_specs", specs);
    m.save_changes();
  };
  const setKeys = (span: number[]) => {
    m.set("key_span", span);
    m.save_changes();
  };
  const togglePick = (layer: number, head: number) => {
    const picked = m.get("picked");
    const has = picked.some(([l, h]) => l === layer && h === head);
    m.set("picked", has ? picked.filter(([l, h]) => l !== layer || h !== head) : [...picked, [layer, head]]);
    m.save_changes();
  };
  const controls = mountSteerControls(m, { send, setKeys, togglePick, refresh: () => panel.refresh() });
  const directions = mountDirections(model as unknown as AnyModel<DirectionsState>, send);
  const panel = mountAttention(m, new Requests(model, experimental, signal), {
    stripMode: controls.mode,
    onKeys: setKeys,
    keySpan: () => m.get("key_span"),
    gridMarks: () => gridMarks(m),
    onGridClick: (layer, head, event) => {
      if (!(event.shiftKey || event.ctrlKey || event.metaKey)) return false;
      togglePick(layer, head);
      return true;
    },
  });
  frame.append(header, controls.element, directions.element, editsBox, compare, prob, error, panel.element);
  root.replaceChildren(frame);

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
  const drawBadge = () => drawFidelity(badge, m.get("fidelity"));
  const onEdits = () => {
    drawEdits(editsBox, m, send);
    controls.draw();
  };
  const onOutputs = () => drawOutputs(before, after, prob, m);
  const events: [string, () => void][] = [
    ["change:edit_specs", onEdits], ["change:key_span", controls.draw], ["change:picked", controls.draw],
    ["change:layer", controls.draw], ["change:head", controls.draw], ["change:tokens", onEdits],
    ["change:new_tokens", onOutputs], ["change:runs", onOutputs], ["change:run_seconds", onOutputs], ["change:p_after", onOutputs],
    ["change:busy", drawStatus], ["change:waiting", drawStatus], ["change:error", drawStatus], ["change:fidelity", drawBadge],
  ];
  for (const [name, handler] of events) m.on(name, handler);
  drawBadge();
  onEdits();
  onOutputs();
  drawStatus();

  return () => {
    stopTheme();
    controls.destroy();
    directions.destroy();
    for (const [name, handler] of events) m.off(name, handler);
    panel.destroy();
  };
}

export default { render };
