// The matrix views: LensView (layers x positions, each cell the token that
// layer predicts), PatchingView (effects of patching or ablating each site),
// CompareView (attention change per head), DivergenceView (where two models
// part: a strip of KL per generated token above, blame bars below). One labelled
// table of cells with a colour legend; hover for the value, click for detail (Python answers: top
// tokens, or opens the head / ablates it), a window over long sequences, and
// export. Text is set with textContent only.
import type { AnyModel, RenderProps } from "@anywidget/types";
import { legend } from "./lib/legend";
import { barPercents, cellColour, cellText, formatValue, inkOn, percent, type Scale, windowStart } from "./lib/matrix";
import { el, exportButtons, focusable, redrawOn, Requests, shown } from "./lib/widget_io";
import { followTheme } from "./lib/theme";

interface MatrixState {
  kind: string;
  title: string;
  summary: string[];
  values: number[][];
  words: string[][];
  row_labels: string[];
  column_labels: string[];
  scale: Scale;
  vmax: number;
  value_name: string;
  window_start: number;
  window_total: number;
  selected: number[];
  detail: string[];
  notes: string[];
  error: string;
  strip_values: number[];
  strip_labels: string[];
  strip_name: string;
  strip_mark: number;
  bar_labels: string[];
  bar_values: number[];
  bar_name: string;
}

function rgb([r, g, b]: [number, number, number]): string {
  return `rgb(${r}, ${g}, ${b})`;
}

function table(m: AnyModel<MatrixState>, onPick: (row: number, col: number) => void): HTMLTableElement {
  const values = m.get("values");
  const words = m.get("words");
  const columns = m.get("column_labels");
  const [selRow, selCol] = m.get("selected");
  const grid = el("table", "lw-mx-table");
  const head = el("tr");
  head.append(el("th"));
  for (const label of columns) {
    const th = el("th", "lw-mx-col", shown(label));
    th.title = label;
    head.append(th);
  }
  grid.append(head);
  m.get("row_labels").forEach((label, r) => {
    const tr = el("tr");
    tr.append(el("th", "lw-mx-row", label));
    values[r].forEach((value, c) => {
      const colour = cellColour(value, m.get("scale"), m.get("vmax"));
      const word = words.length ? shown(words[r][c]) : cellText(value);
      const td = el("td", "lw-mx-cell", word);
      td.style.background = rgb(colour);
      td.style.color = inkOn(colour);
      td.title = `${label}, ${columns[c]}: ${m.get("value_name")} ${formatValue(value)}`;
      td.setAttribute("aria-label", td.title); // what a screen reader announces on focus
      focusable(td);
      td.dataset.row = String(r);
      td.dataset.col = String(c);
      if (r === selRow && c === selCol) td.classList.add("lw-mx-selected");
      td.addEventListener("click", () => onPick(r, c));
      td.addEventListener("keydown", (event) => {
        if (event.key === "Enter" || event.key === " ") {
          event.preventDefault();
          onPick(r, c);
        }
      });
      tr.append(td);
    });
    grid.append(tr);
  });
  return grid;
}

/** A number per token (KL per generated token), coloured on its own scale, the marked one (the
 * first split) outlined and named. */
function strip(m: AnyModel<MatrixState>): HTMLElement {
  const values = m.get("strip_values");
  const labels = m.get("strip_labels");
  const box = el("div", "lw-mx-strip");
  if (!values.length) return box;
  const top = Math.max(...values.filter(Number.isFinite), 1e-12);
  box.append(el("span", "lw-mx-strip-name", `${m.get("strip_name")}:`));
  values.forEach((value, i) => {
    const colour = cellColour(value, "sequential", top);
    const token = el("span", "lw-mx-strip-token", shown(labels[i] ?? ""));
    token.style.background = rgb(colour);
    token.style.color = inkOn(colour);
    token.title = `${labels[i] ?? ""}: ${m.get("strip_name")} ${formatValue(value)}`;
    token.setAttribute("aria-label", token.title);
    if (i === m.get("strip_mark")) {
      token.classList.add("lw-mx-split");
      token.title += " (first split)";
    }
    box.append(token);
  });
  return box;
}

/** Horizontal bars, a label and a share each (the blame, largest first). */
function bars(m: AnyModel<MatrixState>): HTMLElement {
  const values = m.get("bar_values");
  const box = el("div", "lw-mx-bars");
  const widths = barPercents(values);
  if (values.length) box.append(el("div", "lw-mx-bars-name", m.get("bar_name")));
  m.get("bar_labels").forEach((label, i) => {
    const row = el("div", "lw-mx-bar-row");
    const track = el("div", "lw-mx-bar-track");
    const bar = el("div", "lw-mx-bar");
    bar.style.width = `${widths[i]}%`;
    track.append(bar);
    row.append(el("span", "lw-mx-bar-label", label), track, el("span", "lw-mx-bar-value", percent(values[i])));
    row.title = `${label}: ${percent(values[i])} of the divergence`;
    box.append(row);
  });
  return box;
}

function render({ model, el: root, experimental, signal }: RenderProps<MatrixState>): () => void {
  const m = model as AnyModel<MatrixState>;
  const frame = el("div", "lw-panel lw-mx");
  const stopTheme = followTheme(frame);
  const title = el("div", "lw-mx-title");
  const summary = el("div", "lw-mx-summary");
  const nav = el("div", "lw-mx-nav");
  const back = el("button", "lw-button", "◀ earlier");
  const next = el("button", "lw-button", "later ▶");
  const where = el("span", "lw-mx-where");
  nav.append(back, where, next);
  const body = el("div", "lw-mx-body");
  const detail = el("div", "lw-mx-detail");
  detail.setAttribute("role", "status");
  const errorBox = el("div", "lw-mx-error");
  const requests = new Requests(model, experimental, signal);
  const exports = exportButtons(requests, m.get("kind"), (text) => {
    if (!text.startsWith("error")) return;
    errorBox.textContent = text;
    errorBox.hidden = false;
  });
  frame.append(title, summary, nav, body, detail, errorBox, exports);
  root.append(frame);

  const pick = (row: number, col: number) => {
    m.set("selected", [row, col]);
    m.save_changes();
  };
  const move = (step: number) => {
    const size = m.get("column_labels").length;
    m.set("window_start", windowStart(m.get("window_start"), step, m.get("window_total"), size));
    m.save_changes();
  };
  back.addEventListener("click", () => move(-m.get("column_labels").length));
  next.addEventListener("click", () => move(m.get("column_labels").length));

  function draw() {
    title.textContent = m.get("title");
    summary.replaceChildren(...m.get("summary").map((line) => el("div", "", line)));
    const total = m.get("window_total");
    nav.hidden = total === 0;
    const start = m.get("window_start");
    where.textContent = `positions ${start}–${start + m.get("column_labels").length - 1} of ${total}`;
    back.disabled = start === 0;
    next.disabled = start + m.get("column_labels").length >= total;
    body.replaceChildren(strip(m), table(m, pick), legend(m.get("value_name"), m.get("scale"), m.get("vmax")),
      bars(m));
    detail.replaceChildren(...m.get("detail").map((line) => el("div", "", line)));
    const message = m.get("error");
    errorBox.hidden = !message;
    errorBox.textContent = message;
  }
  const stop = redrawOn(m, ["values", "words", "column_labels", "selected", "detail", "error", "summary",
    "window_start", "title", "vmax", "scale", "strip_values", "bar_values"], draw);
  return () => {
    stopTheme();
    stop();
  };
}

export default { render };
