// GradientMonitor controls: status, alerts, and per group a scale slider and a
// clip box that steer the gradients (Python applies them before the optimizer
// step). The charts beside this are bokeh (jupyter_bokeh), fed from Python.
import type { AnyModel, RenderProps } from "@anywidget/types";
import { el, exportButtons, redrawOn, Requests } from "./lib/widget_io";
import { followTheme } from "./lib/theme";

interface Alert { step: number; group: string; kind: string; message: string }
interface Setting { scale: number; clip: number | null }
interface Incident {
  step: number; rank: number; kinds: string[]; groups: string[];
  worst: { batch: number; example: number; loss: number | string } | null;
}
interface MonitorState {
  groups: string[];
  colours: string[];
  step: number;
  steps_plotted: number;
  loss: number | null;
  global_norm: number | null;
  alerts: Alert[];
  n_alerts: number;
  steering: Record<string, Setting>;
  applied: Record<string, Setting & { groups: string[] }>;
  error: string;
  dark: boolean;
  incidents: Incident[];
}

/** The flight recorder's incidents, newest first, each with a button that replays its step. */
function incidentList(box: HTMLElement, incidents: Incident[], requests: Requests) {
  const result = el("div", "lw-mon-replay");
  result.setAttribute("role", "status");
  const list = el("ul");
  incidents.slice(-5).reverse().forEach((incident) => {
    const index = incidents.indexOf(incident);
    const worst = incident.worst ? `; worst example ${incident.worst.example} of batch ${incident.worst.batch}` : "";
    const item = el("li", "", `step ${incident.step} (rank ${incident.rank}): ${incident.kinds.join(", ")} in ` +
      `${incident.groups.slice(0, 3).join(", ")}${incident.groups.length > 3 ? ", …" : ""}${worst} `);
    const button = el("button", "lw-button", "replay");
    button.dataset.step = String(incident.step);
    button.title = "run this step again, forward and backward, under the debugger's breakpoints";
    button.addEventListener("click", async () => {
      button.disabled = true;
      result.textContent = `replaying step ${incident.step}…`;
      try {
        const [reply] = await requests.raw("replay", { index });
        result.textContent = String(reply.text ?? "");
      } catch (error) {
        result.textContent = `error: ${(error as Error).message}`;
      } finally {
        button.disabled = false;
      }
    });
    item.append(button);
    list.append(item);
  });
  box.replaceChildren(...(incidents.length
    ? [el("span", "lw-label", `incidents (${incidents.length}), newest first: the step kept for replay`), list, result]
    : []));
}

/** One group's steering row (name, scale slider, clip box, what is applied), appended to `table`. */
function steerRow(group: string, colour: string, table: HTMLElement, send: (group: string, setting: Setting) => void) {
  const name = el("span", "lw-mon-group", group);
  name.style.borderLeftColor = colour;
  const slider = el("input", "lw-mon-scale");
  slider.type = "range";
  slider.min = "0";
  slider.max = "2";
  slider.step = "0.05";
  slider.value = "1";
  slider.setAttribute("aria-label", `gradient scale of ${group}`);
  slider.dataset.group = group;
  const value = el("span", "lw-mon-value", "×1.00");
  const clip = el("input", "lw-mon-clip");
  clip.type = "number";
  clip.min = "0";
  clip.step = "any";
  clip.placeholder = "no clip";
  clip.setAttribute("aria-label", `clip the gradient norm of ${group} at`);
  const applied = el("span", "lw-mon-applied");
  const current = (): Setting => ({
    scale: Number(slider.value),
    clip: clip.value === "" || !(Number(clip.value) > 0) ? null : Number(clip.value),
  });
  slider.addEventListener("input", () => (value.textContent = `×${Number(slider.value).toFixed(2)}`));
  slider.addEventListener("change", () => send(group, current()));
  clip.addEventListener("change", () => send(group, current()));
  const row = el("div", "lw-mon-row");
  row.append(name, slider, value, el("span", "lw-note", "clip"), clip, applied);
  table.append(row);
  return { group, slider, value, clip, applied };
}

function render({ model, el: root, experimental, signal }: RenderProps<MonitorState>): () => void {
  const m = model as AnyModel<MonitorState>;
  const frame = el("div", "lw-panel lw-monitor");
  const stopTheme = followTheme(frame, (dark) => { // the bokeh charts follow in Python
    model.set("dark", dark);
    model.save_changes();
  });
  const header = el("div", "lw-mon-header");
  const status = el("span", "lw-mon-status");
  status.setAttribute("role", "status");
  const requests = new Requests(model, experimental, signal);
  const exports = exportButtons(requests, "gradient-monitor", (text) => {
    if (!text.startsWith("error")) return;
    errorBox.textContent = text;
    errorBox.hidden = false;
  });
  header.append(el("span", "lw-attn-title", "Gradient monitor"), status, exports);
  const alertsBox = el("div", "lw-mon-alerts");
  alertsBox.setAttribute("role", "alert");
  const incidentsBox = el("div", "lw-mon-incidents");
  const errorBox = el("div", "lw-error");
  const details = el("details", "lw-mon-steer");
  const summary = el("summary", "", "steer gradients per group (scale, clip) — applied before the optimizer step");
  const table = el("div", "lw-mon-table");
  details.append(summary, table);
  frame.append(header, alertsBox, incidentsBox, errorBox, details);
  root.replaceChildren(frame);

  function send(group: string, setting: Setting) {
    const steering = { ...m.get("steering") };
    if (setting.scale === 1 && setting.clip === null) delete steering[group];
    else steering[group] = setting;
    m.set("steering", steering);
    m.save_changes();
  }

  const rows = m.get("groups").map((group, i) => steerRow(group, m.get("colours")[i], table, send));

  function draw() {
    const loss = m.get("loss");
    const norm = m.get("global_norm");
    status.textContent = `step ${m.get("step")}` +
      (loss === null || loss === undefined ? "" : `, loss ${loss.toFixed(4)}`) +
      (norm === null || norm === undefined ? "" : `, global gradient norm ${norm.toPrecision(3)}`) +
      `, ${m.get("n_alerts")} alerts`;
    status.dataset.stepsPlotted = String(m.get("steps_plotted"));
    const alerts = m.get("alerts");
    const list = el("ul");
    for (const alert of alerts.slice(-5).reverse()) list.append(el("li", `lw-mon-${alert.kind}`, alert.message));
    alertsBox.replaceChildren(...(alerts.length ? [el("span", "lw-label", `alerts (${m.get("n_alerts")}), newest first`), list] : []));
    errorBox.textContent = m.get("error");
    errorBox.hidden = !m.get("error");
    const applied = m.get("applied");
    for (const row of rows) {
      const rules = Object.values(applied).filter((r) => r.groups.includes(row.group)); // rules compose
      const scale = rules.reduce((s, r) => s * r.scale, 1);
      const clips = rules.map((r) => r.clip).filter((c): c is number => c !== null);
      const clip = clips.length ? Math.min(...clips) : null;
      row.applied.textContent = rules.length ? `applied: ×${scale}${clip !== null ? `, clip ${clip}` : ""}` : "";
      row.applied.dataset.scale = String(scale);
      const wanted = m.get("steering")[row.group];
      if (wanted && document.activeElement !== row.slider) {
        row.slider.value = String(wanted.scale);
        row.value.textContent = `×${wanted.scale.toFixed(2)}`;
      }
    }
  }
  const stop = redrawOn(m, ["step", "steps_plotted", "alerts", "applied", "error", "loss"], draw);
  const stopIncidents = redrawOn(m, ["incidents"], () => incidentList(incidentsBox, m.get("incidents"), requests));
  return () => {
    stopTheme();
    stop();
    stopIncidents();
  };
}

export default { render };
