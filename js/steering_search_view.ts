// The steering search: every edit tried as a point, fluency cost to the right, success up, the
// Pareto front joined and listed below. Click (or Enter on) a point or a row of the front and
// Python installs its edits in the linked editor, which regenerates. Labels are set with
// textContent only (a label holds token text).
import type { AnyModel, RenderProps } from "@anywidget/types";
import { frontPath, type Point, scales } from "./lib/steering_search";
import { followTheme } from "./lib/theme";
import { el, exportButtons, focusable, redrawOn, Requests } from "./lib/widget_io";

interface SearchState {
  title: string;
  points: Point[];
  plain: number;
  installed: number;
  status: string;
}

const SVG = "http://www.w3.org/2000/svg";
const FRAME = { width: 560, height: 320, left: 56, bottom: 36 };
const COLOURS: Record<string, string> = { attention: "#2b8cbe", direction: "#e6550d", none: "#222" };

function svg<K extends keyof SVGElementTagNameMap>(tag: K, attrs: Record<string, string | number>): SVGElementTagNameMap[K] {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  return node;
}

function axes(plot: SVGSVGElement, s: ReturnType<typeof scales>): void {
  const bottom = FRAME.height - FRAME.bottom;
  plot.append(svg("line", { x1: FRAME.left, x2: FRAME.width, y1: bottom, y2: bottom, class: "lw-ss-axis" }),
    svg("line", { x1: FRAME.left, x2: FRAME.left, y1: 0, y2: bottom, class: "lw-ss-axis" }));
  for (const t of s.xTicks) {
    const label = svg("text", { x: s.x(t), y: bottom + 14, "text-anchor": "middle", class: "lw-ss-tick" });
    label.textContent = String(t);
    plot.append(label);
  }
  for (const t of s.yTicks) {
    const label = svg("text", { x: FRAME.left - 4, y: s.y(t) + 3, "text-anchor": "end", class: "lw-ss-tick" });
    label.textContent = String(t);
    plot.append(label);
  }
  const xName = svg("text", { x: (FRAME.left + FRAME.width) / 2, y: FRAME.height - 4, "text-anchor": "middle",
    class: "lw-ss-name" });
  xName.textContent = "fluency cost (KL over the model's own continuation, nats)";
  const yName = svg("text", { x: 12, y: bottom / 2, "text-anchor": "middle", class: "lw-ss-name",
    transform: `rotate(-90 12 ${bottom / 2})` });
  yName.textContent = "success";
  plot.append(xName, yName);
}

function drawPlot(m: AnyModel<SearchState>, install: (index: number) => void): SVGSVGElement {
  const points = m.get("points");
  const s = scales(points, m.get("plain"), FRAME);
  const plot = svg("svg", { width: FRAME.width, height: FRAME.height, class: "lw-ss-plot", role: "group",
    "aria-label": "candidates: fluency cost right, success up; Enter on a point installs it" });
  axes(plot, s);
  const plain = svg("line", { x1: FRAME.left, x2: FRAME.width, y1: s.y(m.get("plain")), y2: s.y(m.get("plain")),
    class: "lw-ss-plain" });
  plot.append(plain, svg("path", { d: frontPath(points, s), class: "lw-ss-front" }));
  points.forEach((p, i) => {
    const dot = svg("circle", { cx: s.x(p.cost), cy: s.y(p.success), r: p.front ? 5 : 3.5, fill: COLOURS[p.kind],
      class: `lw-ss-point${p.front ? " lw-ss-on-front" : ""}${i === m.get("installed") ? " lw-ss-installed" : ""}` });
    const text = `${p.label}: success ${p.success.toFixed(4)}, fluency cost ${p.cost.toFixed(4)}`;
    const tip = svg("title", {});
    tip.textContent = text;
    dot.append(tip);
    dot.setAttribute("aria-label", text);
    dot.setAttribute("role", "button");
    dot.dataset.index = String(i);
    focusable(dot as unknown as HTMLElement);
    dot.addEventListener("click", () => install(i));
    dot.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        install(i);
      }
    });
    plot.append(dot);
  });
  return plot;
}

function drawFront(m: AnyModel<SearchState>, install: (index: number) => void): HTMLElement {
  const list = el("ol", "lw-ss-list");
  const front = m.get("points").map((p, i) => [p, i] as const).filter(([p]) => p.front)
    .sort(([a], [b]) => a.cost - b.cost);
  for (const [p, i] of front) {
    const row = el("li", i === m.get("installed") ? "lw-ss-installed" : "");
    const button = el("button", "lw-button", "install");
    button.dataset.index = String(i);
    button.setAttribute("aria-label", `install ${p.label}`);
    button.addEventListener("click", () => install(i));
    row.append(button, ` ${p.label}: success ${p.success.toFixed(4)}, cost ${p.cost.toFixed(4)}`);
    list.append(row);
  }
  return list;
}

function render({ model, el: root, experimental, signal }: RenderProps<SearchState>): () => void {
  const m = model as AnyModel<SearchState>;
  const frame = el("div", "lw-panel lw-ss");
  const stopTheme = followTheme(frame);
  const title = el("div", "lw-ss-title");
  const scroller = el("div", "lw-ss-scroll");
  const heading = el("div", "lw-ed-label", "the front (no other edit is as successful for less cost), cheapest first:");
  const list = el("div");
  const status = el("div", "lw-ss-status");
  status.setAttribute("role", "status");
  const requests = new Requests(model, experimental, signal);
  const report = (text: string) => (status.textContent = text);
  frame.append(title, scroller, heading, list, status, exportButtons(requests, "steering_search", report));
  root.append(frame);
  const install = async (index: number) => {
    report(`installing ${m.get("points")[index].label}…`);
    try {
      await requests.raw("install", { index });
      report(m.get("status"));
    } catch (error) {
      report(`error: ${(error as Error).message}`);
    }
  };
  const draw = () => {
    title.textContent = m.get("title");
    scroller.replaceChildren(drawPlot(m, install));
    list.replaceChildren(drawFront(m, install));
    if (m.get("status")) report(m.get("status"));
  };
  const stop = redrawOn(m, ["title", "points", "plain", "installed", "status"], draw);
  return () => {
    stopTheme();
    stop();
  };
}

export default { render };
