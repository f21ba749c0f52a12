// ModelCard: the facts of a loaded model at a glance. Text only through
// textContent: names from a model's config are data, never markup.
import type { AnyModel, RenderProps } from "@anywidget/types";
import { factRows, type ModelFacts } from "./lib/format";
import { el } from "./lib/widget_io";

interface CardState {
  facts: ModelFacts;
  source: Record<string, string>;
}

function draw(root: HTMLElement, model: AnyModel<CardState>): void {
  const facts = model.get("facts");
  const source = model.get("source") ?? {};
  const card = el("div", "lw-panel lw-card");
  card.append(el("div", "lw-card-title", facts.name));
  const list = el("dl", "lw-card-facts");
  for (const [label, value] of factRows(facts)) {
    list.append(el("dt", "", label), el("dd", "", value));
  }
  const origin = source.bundled ? `bundled: ${source.bundled}` : source.path;
  if (origin) list.append(el("dt", "", "source"), el("dd", "", origin));
  card.append(list);
  root.replaceChildren(card);
}

function render({ model, el: root }: RenderProps<CardState>): () => void {
  const redraw = () => draw(root, model);
  redraw();
  model.on("change:facts", redraw);
  model.on("change:source", redraw);
  return () => {
    model.off("change:facts", redraw);
    model.off("change:source", redraw);
  };
}

export default { render };
