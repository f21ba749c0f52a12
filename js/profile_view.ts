// ProfileView: where a run's time and memory went. The findings in words, an
// icicle of the module tree by time (click a module to zoom into it), the
// memory allocated over the run with each forward (step) marked and the KV
// cache per step, a sortable table, and export (PNG, SVG, HTML, Chrome trace).
import type { AnyModel, RenderProps } from "@anywidget/types";
import { icicle, type ModuleRow, polyline, sortedBy } from "./lib/icicle";
import { el, exportButtons, focusable, redrawOn, Requests } from "./lib/widget_io";
import { followTheme } from "./lib/theme";

interface Row extends ModuleRow {
  calls: number;
  prefill_s: number;
  decode_s: number;
  flops: number;
  peak_bytes: number;
  [key: string]: unknown;
}

interface ProfileState {
  title: string;
  findings: string[];
  modules: Row[];
  timeline: [number, number][];
  step_times: number[];
  steps: { step: number; seconds: number; kv_cache_bytes: number }[];
  zoom: string;
}

const KIND_COLOURS: Record<string, string> = {
  attention: "#6a51a3", mlp: "#e6550d", head: "#31a354", embedding: "#3182bd", norm: "#969696",
  block: "#9e9ac8", model: "#bdbdbd", other: "#d9d9d9",
};
const SVG = "http://www.w3.org/2000/svg";
const COLUMNS: [keyof Row, string][] = [["module", "module"], ["kind", "kind"], ["calls", "calls"],
  ["total_s", "total ms"], ["self_s", "self ms"], ["flops", "MFLOP"], ["peak_bytes", "peak KiB"]];

function mib(bytes: number): string {
  return `${(bytes / 2 ** 20).toFixed(1)} MiB`;
}

function svgEl(tag: string, attrs: Record<string, string | number>): SVGElement {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  return node;
}

/** The allocation timeline with each forward marked, into `memory`. */
function drawMemory(m: AnyModel<ProfileState>, memory: HTMLElement) {
  const points = m.get("timeline");
  const width = 640;
  const height = 120;
  const svg = svgEl("svg", { width, height: height + 18, class: "lw-prof-chart", role: "img" }) as SVGSVGElement;
  svg.append(svgEl("polyline", { points: polyline(points, width, height), fill: "none", stroke: "#6a51a3",
    "stroke-width": 1.5 }));
  const tMax = points.length ? points[points.length - 1][0] || 1 : 1;
  m.get("step_times").forEach((t, i) => {
    const x = (t / tMax) * width;
    svg.append(svgEl("line", { x1: x, x2: x, y1: 0, y2: height, stroke: "#e6550d", "stroke-opacity": 0.35 }));
    if (i < 40) {
      const label = svgEl("text", { x: x + 2, y: height + 14, "font-size": 10, fill: "currentColor" });
      label.textContent = i === 0 ? "prefill" : String(i);
      svg.append(label);
    }
  });
  const peak = Math.max(0, ...points.map((p) => p[1]));
  const steps = m.get("steps");
  const kv = steps.length ? steps[steps.length - 1].kv_cache_bytes : 0;
  memory.replaceChildren(el("div", "lw-prof-caption", `memory allocated during the run (peak ${mib(peak)}); ` +
    `forwards marked; KV cache ${mib(kv)} after the last step`), svg);
}

function render({ model, el: root, experimental, signal }: RenderProps<ProfileState>): () => void {
  const m = model as AnyModel<ProfileState>;
  const frame = el("div", "lw-panel lw-prof");
  const stopTheme = followTheme(frame);
  const title = el("div", "lw-prof-title");
  const findings = el("ul", "lw-prof-findings");
  const crumbs = el("div", "lw-prof-crumbs");
  const ice = el("div", "lw-prof-icicle");
  const memory = el("div", "lw-prof-memory");
  const table = el("table", "lw-prof-table");
  const status = el("div", "lw-prof-status");
  const requests = new Requests(model, experimental, signal);
  const exports = exportButtons(requests, "profile", (text) => (status.textContent = text),
    ["png", "svg", "html", "json"]);
  frame.append(title, findings, crumbs, ice, memory, table, exports, status);
  root.append(frame);
  let sortKey: keyof Row = "self_s";

  const zoomTo = (name: string) => {
    m.set("zoom", name);
    m.save_changes();
  };

  function drawIcicle() {
    const boxes = icicle(m.get("modules"), m.get("zoom"));
    const levels = Math.max(1, ...boxes.map((b) => b.level + 1));
    ice.replaceChildren();
    ice.style.height = `${levels * 22}px`;
    for (const box of boxes) {
      const width = (box.x1 - box.x0) * 100;
      if (width < 0.15) continue;
      const cell = el("div", "lw-prof-box", width > 4 ? box.row.module.split(".").slice(-2).join(".") : "");
      cell.style.left = `${box.x0 * 100}%`;
      cell.style.width = `${width}%`;
      cell.style.top = `${box.level * 22}px`;
      cell.style.background = KIND_COLOURS[box.row.kind] ?? KIND_COLOURS.other;
      cell.title = `${box.row.module} (${box.row.kind}): ${(box.row.total_s * 1e3).toFixed(2)} ms total, ` +
        `${(box.row.self_s * 1e3).toFixed(2)} ms itself`;
      cell.dataset.module = box.row.module;
      focusable(cell);
      cell.addEventListener("click", () => zoomTo(box.level === 0 ? "" : box.row.module));
      cell.addEventListener("keydown", (e) => { if (e.key === "Enter") zoomTo(box.row.module); });
      ice.append(cell);
    }
    const zoom = m.get("zoom");
    crumbs.replaceChildren(el("span", "", zoom ? `zoomed into ${zoom} ` : "the whole model (click a module to zoom) "));
    if (zoom) {
      const back = el("button", "lw-button", "whole model");
      back.addEventListener("click", () => zoomTo(""));
      crumbs.append(back);
    }
  }

  function drawTable() {
    const head = el("tr");
    for (const [key, label] of COLUMNS) {
      const th = el("th", key === sortKey ? "lw-prof-sorted" : "", label);
      focusable(th);
      th.addEventListener("click", () => { sortKey = key; drawTable(); });
      head.append(th);
    }
    const rows = sortedBy(m.get("modules"), sortKey).slice(0, 40);
    table.replaceChildren(head, ...rows.map((r) => {
      const tr = el("tr");
      const cells = [r.module, r.kind, String(r.calls), (r.total_s * 1e3).toFixed(2), (r.self_s * 1e3).toFixed(2),
        (r.flops / 1e6).toFixed(1), (r.peak_bytes / 1024).toFixed(0)];
      cells.forEach((text, i) => tr.append(el("td", i > 1 ? "lw-prof-num" : "", text)));
      tr.addEventListener("click", () => zoomTo(r.module));
      focusable(tr);
      tr.addEventListener("keydown", (e) => { if (e.key === "Enter") zoomTo(r.module); });
      return tr;
    }));
  }

  function draw() {
    title.textContent = m.get("title");
    findings.replaceChildren(...m.get("findings").map((f) => el("li", "", f)));
    drawIcicle();
    drawMemory(m, memory);
    drawTable();
  }
  const stop = redrawOn(m, ["modules", "zoom", "timeline", "findings"], draw);
  return () => {
    stopTheme();
    stop();
  };
}

export default { render };
