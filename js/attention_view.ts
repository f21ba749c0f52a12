// AttentionView: one head's attention as a heatmap, every head as a grid, the
// head view, and the tokens as a clickable strip coloured by the selected
// query's attention. All of it lives in lib/attention_panel.ts, shared with
// the editor.
import type { RenderProps } from "@anywidget/types";
import { mountAttention, type ViewState } from "./lib/attention_panel";
import { el, Requests } from "./lib/widget_io";

function render({ model, el: root, experimental, signal }: RenderProps<ViewState>): () => void {
  const frame = el("div", "lw-panel lw-attn-view");
  const title = el("div", "lw-attn-title", model.get("model_name"));
  const panel = mountAttention(model, new Requests(experimental.invoke, signal));
  frame.append(title, panel.element);
  root.replaceChildren(frame);
  return () => panel.destroy();
}

export default { render };
