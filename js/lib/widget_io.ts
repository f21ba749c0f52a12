// What every widget front end shares: elements with text only (never
// innerHTML), requests to Python answered by id over the comm, downloads of
// files Python rendered, and the export buttons. DOM code, no model logic.
import type { AnyModel, Experimental } from "@anywidget/types";
import { asDataView, decodeRowsUint8, type Matrix } from "./heatmap";

const MIME: Record<string, string> = {
  png: "image/png", svg: "image/svg+xml", html: "text/html", json: "application/json", csv: "text/csv",
};

type Reply = { type: string; shape: [number, number]; message?: string; name?: string; format?: string; answer?: number; text?: string };

export function el<K extends keyof HTMLElementTagNameMap>(tag: K, cls = "", text?: string): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** A labelled <select> of `count` options named prefix0, prefix1, ... (values "0", "1", ...). */
/** Make `node` a keyboard control of its own: reachable by Tab, and its keys its own, not the
 * notebook's shortcuts (JupyterLab's and Notebook 7's Lumino skips data-lm-suppress-shortcuts). */
export function focusable<T extends HTMLElement>(node: T): T {
  node.tabIndex = 0;
  node.dataset.lmSuppressShortcuts = "true";
  return node;
}

export function select(label: string, count: number, prefix: string): [HTMLLabelElement, HTMLSelectElement] {
  const wrap = el("label", "lw-select", `${label} `);
  const box = el("select");
  for (let i = 0; i < count; i++) {
    const option = el("option", "", `${prefix}${i}`);
    option.value = String(i);
    box.append(option);
  }
  wrap.append(box);
  return [wrap, box];
}

/** Visible form of a token: spaces and newlines shown, never interpreted. */
export function shown(token: string): string {
  return token.replace(/\n/g, "↵").replace(/\t/g, "⇥") || "∅";
}

/** Save bytes or text as a file through the browser's download (no network). */
export function download(name: string, data: BlobPart, mime: string): void {
  const url = URL.createObjectURL(new Blob([data], { type: mime }));
  const link = el("a");
  link.href = url;
  link.download = name;
  link.style.display = "none";
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

type Invoke = Experimental["invoke"];
let nextId = 0;

/** anywidget's command call written out over the comm: the same wire messages its
 * `experimental.invoke` sends ({id, kind: "anywidget-command", name, msg}) and the
 * reply its Python side returns, for hosts that render anywidgets without invoke
 * (marimo says "not supported"). */
export function invokeOverComm(model: AnyModel<any>): Invoke {
  return <T>(name: string, msg?: unknown, options: { buffers?: DataView[]; signal?: AbortSignal } = {}) =>
    new Promise<[T, DataView[]]>((resolve, reject) => {
      const id = `lw-${Date.now()}-${nextId++}`;
      const signal = options.signal;
      const onMsg = (reply: { id?: string; kind?: string; response?: T }, buffers: (ArrayBuffer | DataView)[] = []) => {
        if (reply?.id !== id || reply.kind !== "anywidget-command-response") return;
        stop();
        resolve([reply.response as T, buffers.map(asDataView)]);
      };
      const onAbort = () => {
        stop();
        reject(signal?.reason ?? new Error("the view was closed"));
      };
      const stop = () => {
        model.off("msg:custom", onMsg);
        signal?.removeEventListener("abort", onAbort);
      };
      if (signal?.aborted) return onAbort();
      model.on("msg:custom", onMsg);
      signal?.addEventListener("abort", onAbort, { once: true });
      model.send({ id, kind: "anywidget-command", name, msg }, undefined, options.buffers ?? []);
    });
}

/** Requests to the Python side, answered through anywidget's invoke (a command named
 * "request" on the widget: llm_widgets/widgets/_frontend.py `Answers`). The view's abort
 * signal goes with each call: no 3 s timeout for a long computation, and nothing is left
 * waiting once the view is gone. Where the host has no invoke, the same call goes over
 * the comm (invokeOverComm). */
export class Requests {
  private invoke: Invoke;
  private fallback: Invoke;
  constructor(model: AnyModel<any>, experimental: Experimental | undefined, private signal: AbortSignal) {
    this.fallback = invokeOverComm(model);
    this.invoke = experimental?.invoke ?? this.fallback;
  }
  private async call(msg: Record<string, number | string>): Promise<[Reply, DataView[]]> {
    const invoke = this.invoke;
    try {
      return await invoke<Reply>("request", msg, { signal: this.signal });
    } catch (error) {
      if (invoke === this.fallback || !/not supported/i.test(String((error as Error)?.message))) throw error;
      this.invoke = this.fallback;  // this host's invoke is a stub: use the comm from now on
      return this.fallback<Reply>("request", msg, { signal: this.signal });
    }
  }
  async raw(what: string, params: Record<string, number | string>): Promise<[Reply, DataView[]]> {
    const [reply, buffers] = await this.call({ what, ...params });
    if (reply.type === "error") throw new Error(reply.message ?? "request failed");
    return [reply, buffers.map(asDataView)];
  }
  async ask(what: string, params: Record<string, number | string>): Promise<Matrix> {
    const [msg, buffers] = await this.raw(what, params);
    return decodeRowsUint8(msg.shape, buffers[0], buffers[1]);
  }
}

/** PNG, SVG and HTML buttons: Python renders what is on screen, the browser saves it. */
export function exportButtons(requests: Requests, fallback: string, report: (text: string) => void,
  formats: string[] = ["png", "svg", "html"]): HTMLSpanElement {
  const box = el("span", "lw-attn-export");
  box.append(el("span", "", "export "));
  for (const fmt of formats) {
    const button = el("button", "lw-button", fmt === "json" ? "TRACE" : fmt.toUpperCase());
    button.dataset.format = fmt;
    button.title = `download what is shown as ${fmt.toUpperCase()}`;
    button.addEventListener("click", async () => {
      report(`exporting ${fmt.toUpperCase()}…`);
      try {
        const [msg, buffers] = await requests.raw("export", { format: fmt });
        const view = buffers[0];
        const name = msg.name ?? `${fallback}.${fmt}`;
        download(name, new Uint8Array(view.buffer as ArrayBuffer, view.byteOffset, view.byteLength), MIME[fmt]);
        report(`saved ${name}`);
      } catch (error) {
        report(`error: ${(error as Error).message}`);
      }
    });
    box.append(button);
  }
  return box;
}

/** Call `draw` now and whenever one of the traits changes; returns the unsubscribe. */
export function redrawOn(model: AnyModel<any>, traits: string[], draw: () => void): () => void {
  for (const trait of traits) model.on(`change:${trait}`, draw);
  draw();
  return () => {
    for (const trait of traits) model.off(`change:${trait}`, draw);
  };
}
