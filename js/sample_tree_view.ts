// The sample tree: all the answers sampling gave, left to right, each branch as
// tall as the answers through it, coloured by the next token's entropy (or the
// branch point's decisiveness), outcomes at the leaves. Click (or Enter on) a box
// for its numbers and its top alternatives; force one and Python continues from
// the kept cache, the new branch drawn when the layout comes back; open an
// answer's trace in a linked attention view. Text is set with textContent only.
import type { AnyModel, RenderProps } from "@anywidget/types";
import { cellColour, inkOn } from "./lib/matrix";
import { alternativeLabel, boxLabel, colourValues, place, type Segment, treeHeight } from "./lib/sample_tree";
import { followTheme } from "./lib/theme";
import { el, exportButtons, focusable, redrawOn, Requests, shown } from "./lib/widget_io";

interface Alternative {
  token_id: number;
  text: string;
  prob: number;
  taken: boolean;
}

interface TreeState {
  title: string;
  segments: Segment[];
  colour_by: "entropy" | "decisiveness";
  selected: number;
  detail: string[];
  alternatives: Alternative[];
  answers: number[];
  error: string;
}

const COLUMN = 190; // px per split

function boxes(m: AnyModel<TreeState>, pick: (node: number) => void): HTMLElement {
  const segments = m.get("segments");
  const height = treeHeight(segments);
  const area = el("div", "lw-st-tree");
  area.style.height = `${height}px`;
  area.style.width = `${(Math.max(0, ...segments.map((s) => s.column)) + 1) * COLUMN}px`;
  const [values, top] = colourValues(segments, m.get("colour_by"));
  segments.forEach((s, i) => {
    const box = el("div", "lw-st-box", boxLabel(s, shown));
    const at = place(s, COLUMN, height);
    Object.assign(box.style, { left: `${at.left}px`, top: `${at.top}px`, width: `${at.width}px`,
      height: `${at.height}px`, lineHeight: `${Math.min(at.height, 16)}px` });
    const value = values[i];
    const rgb = value === null ? ([240, 240, 240] as [number, number, number]) : cellColour(value, "sequential", top || 1);
    box.style.background = `rgb(${rgb.join(", ")})`;
    box.style.color = inkOn(rgb);
    const what = value === null ? "" : `, ${m.get("colour_by")} ${value.toFixed(2)} bits`;
    box.title = `${s.text}\n${s.count} answers${s.forced ? `, ${s.forced} forced` : ""}, p ${s.prob.toPrecision(3)}${what}`;
    box.setAttribute("aria-label", box.title);
    focusable(box);
    box.dataset.node = String(s.node);
    if (s.node === m.get("selected")) box.classList.add("lw-st-selected");
    if (s.forced && !s.count) box.classList.add("lw-st-forced");
    box.addEventListener("click", () => pick(s.node));
    box.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        pick(s.node);
      }
    });
    area.append(box);
  });
  return area;
}

function details(m: AnyModel<TreeState>, requests: Requests, report: (text: string) => void): HTMLElement {
  const box = el("div", "lw-st-detail");
  box.setAttribute("role", "status");
  box.append(...m.get("detail").map((line) => el("div", "", line)));
  const node = m.get("selected");
  if (node < 0) return box;
  const row = el("div", "lw-st-alternatives");
  row.append(el("span", "", "force instead: "));
  for (const alt of m.get("alternatives")) {
    const button = el("button", "lw-button", alternativeLabel(alt.text, alt.prob, shown));
    button.dataset.token = String(alt.token_id);
    button.title = alt.taken ? "sampled already: forcing it adds a greedy continuation" : "continue greedily from here";
    if (alt.taken) button.classList.add("lw-st-taken");
    button.addEventListener("click", async () => {
      report(`forcing ${shown(alt.text)}…`);
      try {
        const [reply] = await requests.raw("force", { node, token: alt.token_id });
        report(`forced: answer ${reply.answer}`);
      } catch (error) {
        report(`error: ${(error as Error).message}`);
      }
    });
    row.append(button);
  }
  const open = el("div", "lw-st-answers");
  open.append(el("span", "", "open in the attention view: "));
  for (const answer of m.get("answers").slice(0, 12)) {
    const button = el("button", "lw-button", `answer ${answer}`);
    button.addEventListener("click", async () => {
      try {
        await requests.raw("open", { answer });
        report(`answer ${answer} opened`);
      } catch (error) {
        report(`error: ${(error as Error).message}`);
      }
    });
    open.append(button);
  }
  box.append(row, open);
  return box;
}

function render({ model, el: root, experimental, signal }: RenderProps<TreeState>): () => void {
  const m = model as AnyModel<TreeState>;
  const frame = el("div", "lw-panel lw-st");
  const stopTheme = followTheme(frame);
  const title = el("div", "lw-st-title");
  const controls = el("div", "lw-st-controls");
  const label = el("label", "", "colour by ");
  const colour = el("select", "lw-select");
  for (const by of ["entropy", "decisiveness"]) colour.append(new Option(by, by));
  label.append(colour);
  controls.append(label);
  const scroller = el("div", "lw-st-scroll");
  const detail = el("div");
  const status = el("div", "lw-st-status");
  const requests = new Requests(model, experimental, signal);
  const report = (text: string) => {
    status.textContent = text;
    status.classList.toggle("lw-st-error", text.startsWith("error"));
  };
  frame.append(title, controls, scroller, detail, status, exportButtons(requests, "sample_tree", report));
  root.append(frame);
  colour.addEventListener("change", () => {
    m.set("colour_by", colour.value as TreeState["colour_by"]);
    m.save_changes();
  });
  const pick = (node: number) => {
    m.set("selected", node);
    m.save_changes();
  };
  const draw = () => {
    title.textContent = m.get("title");
    colour.value = m.get("colour_by");
    scroller.replaceChildren(boxes(m, pick));
    detail.replaceChildren(details(m, requests, report));
    if (m.get("error")) report(`error: ${m.get("error")}`);
  };
  const stop = redrawOn(m, ["segments", "colour_by", "selected", "detail", "alternatives", "answers", "error", "title"],
    draw);
  return () => {
    stopTheme();
    stop();
  };
}

export default { render };
