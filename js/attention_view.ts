// AttentionView: one head's attention as a heatmap, every head as a grid, the
// head view, and the tokens as a clickable strip coloured by the selected
// query's attention. All of it lives in lib/attention_panel.ts, shared with
// the editor. A batch (TraceBatch) adds a row selector: Python swaps the row's
// trace in and bumps `revision`, and the panel reloads.
import type { RenderProps } from "@anywidget/types";
import { mountAttention, type ViewState } from "./lib/attention_panel";
import { el, Requests, select } from "./lib/widget_io";
import { followTheme } from "./lib/theme";

interface BatchState extends ViewState {
  n_rows: number;
  row: number;
}

function render({ model, el: root, experimental, signal }: RenderProps<BatchState>): () => void {
  const frame = el("div", "lw-panel lw-attn-view");
  const stopTheme = followTheme(frame);
  const title = el("div", "lw-attn-title", model.get("model_name"));
  const panel = mountAttention(model, new Requests(model, experimental, signal));
  frame.append(title);
  let off = () => {};
  if (model.get("n_rows") > 1) {
    const [wrap, box] = select("batch row", model.get("n_rows"), "");
    wrap.classList.add("lw-attn-row");
    box.value = String(model.get("row"));
    box.addEventListener("change", () => {
      model.set("row", Number(box.value));
      model.save_changes();
    });
    const onRow = () => { box.value = String(model.get("row")); };
    model.on("change:row", onRow);
    off = () => model.off("change:row", onRow);
    title.append(" ", wrap);
  }
  frame.append(panel.element);
  root.replaceChildren(frame);
  return () => {
    stopTheme();
    off();
    panel.destroy();
  };
}

export default { render };
