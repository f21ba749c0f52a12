import { describe, expect, it } from "vitest";
import { invokeOverComm, Requests } from "./widget_io";

type Handler = (msg: any, buffers?: DataView[]) => void;

/** A model whose Python side answers anywidget commands the way anywidget's does. */
function fakeModel(answer: (msg: any) => [any, ArrayBuffer[]], delay = 0) {
  const handlers = new Set<Handler>();
  const sent: any[] = [];
  const model = {
    get: () => undefined, set: () => {}, save_changes: () => {},
    on: (_event: string, handler: Handler) => handlers.add(handler),
    off: (_event: string, handler: Handler) => handlers.delete(handler),
    send(content: any) {
      sent.push(content);
      const [response, buffers] = answer(content.msg);
      const reply = { id: content.id, kind: "anywidget-command-response", response };
      setTimeout(() => {
        for (const h of [...handlers]) h({ id: "someone-else", kind: "anywidget-command-response", response: "no" });
        for (const h of [...handlers]) h(reply, buffers.map((b) => new DataView(b)));
      }, delay);
    },
  };
  return { model: model as any, sent, handlers };
}

describe("invokeOverComm", () => {
  it("sends anywidget's command message and resolves with its own reply and buffers", async () => {
    const { model, sent, handlers } = fakeModel((msg) => [{ type: "reply", echo: msg.what }, [new Uint8Array([7, 8]).buffer]]);
    const [reply, buffers] = await invokeOverComm(model)<any>("request", { what: "grid" });
    expect(sent[0]).toMatchObject({ kind: "anywidget-command", name: "request", msg: { what: "grid" } });
    expect(reply).toEqual({ type: "reply", echo: "grid" });
    expect(buffers[0].getUint8(1)).toBe(8);
    expect(handlers.size).toBe(0);  // its listener is gone once answered
  });
  it("rejects when the view's signal aborts, and stops listening", async () => {
    const { model, handlers } = fakeModel(() => [{}, []], 50);
    const controller = new AbortController();
    const call = invokeOverComm(model)("request", {}, { signal: controller.signal });
    controller.abort(new Error("closed"));
    await expect(call).rejects.toThrow("closed");
    expect(handlers.size).toBe(0);
  });
});

describe("Requests", () => {
  it("uses the host's invoke where it has one", async () => {
    const { model, sent } = fakeModel(() => [{ type: "reply" }, []]);
    const invoke = async () => [{ type: "reply", from: "host" }, []] as any;
    const [reply] = await new Requests(model, { invoke }, new AbortController().signal).raw("grid", {});
    expect((reply as any).from).toBe("host");
    expect(sent).toHaveLength(0);
  });
  it("goes over the comm where the host's invoke is a stub (marimo), and stays there", async () => {
    const { model, sent } = fakeModel(() => [{ type: "reply", from: "comm" }, []]);
    let stubCalls = 0;
    const invoke = async () => { stubCalls++; throw new Error("anywidget.invoke not supported in marimo"); };
    const requests = new Requests(model, { invoke } as any, new AbortController().signal);
    expect(((await requests.raw("grid", {}))[0] as any).from).toBe("comm");
    expect(((await requests.raw("grid", {}))[0] as any).from).toBe("comm");
    expect(stubCalls).toBe(1);
    expect(sent).toHaveLength(2);
  });
  it("retries every call that met the stub, also calls made at the same time", async () => {
    const { model } = fakeModel((msg) => [{ type: "reply", from: msg.what }, []], 5);
    const invoke = async () => { await new Promise((r) => setTimeout(r, 1)); throw new Error("invoke not supported"); };
    const requests = new Requests(model, { invoke } as any, new AbortController().signal);
    const replies = await Promise.all(["overview", "grid", "heads"].map((what) => requests.raw(what, {})));
    expect(replies.map(([reply]) => (reply as any).from)).toEqual(["overview", "grid", "heads"]);
  });
  it("passes other failures and error replies on as errors", async () => {
    const { model } = fakeModel(() => [{ type: "error", message: "layer 99 is out of range" }, []]);
    await expect(new Requests(model, undefined, new AbortController().signal).raw("grid", {}))
      .rejects.toThrow("layer 99 is out of range");
    const broken = async () => { throw new Error("kernel died"); };
    await expect(new Requests(model, { invoke: broken } as any, new AbortController().signal).raw("grid", {}))
      .rejects.toThrow("kernel died");
  });
});
