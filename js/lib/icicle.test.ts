import { describe, expect, it } from "vitest";
import { icicle, parentOf, polyline, sortedBy } from "./icicle";

const rows = [
  { module: "Root", depth: 0, total_s: 10, self_s: 1, kind: "model" },
  { module: "model", depth: 1, total_s: 8, self_s: 0, kind: "other" },
  { module: "model.layers.0", depth: 3, total_s: 4, self_s: 1, kind: "block" },
  { module: "model.layers.0.attn", depth: 4, total_s: 3, self_s: 3, kind: "attention" },
  { module: "model.layers.1", depth: 3, total_s: 4, self_s: 4, kind: "block" },
  { module: "lm_head", depth: 1, total_s: 1, self_s: 1, kind: "head" },
];

describe("icicle", () => {
  it("finds the nearest enclosing module", () => {
    const names = new Set(rows.map((r) => r.module));
    expect(parentOf("model.layers.0", names, "Root")).toBe("model"); // model.layers never ran: skipped
    expect(parentOf("lm_head", names, "Root")).toBe("Root");
    expect(parentOf("Root", names, "Root")).toBeNull();
  });
  it("gives children widths by their share of the parent's time", () => {
    const boxes = icicle(rows);
    const get = (name: string) => boxes.find((b) => b.row.module === name)!;
    expect(get("Root")).toMatchObject({ level: 0, x0: 0, x1: 1 });
    expect(get("model").x1).toBeCloseTo(0.8);
    expect(get("lm_head").x0).toBeCloseTo(0.8);
    expect(get("model.layers.1").x0).toBeCloseTo(0.4);
    expect(get("model.layers.0.attn").level).toBe(3);
  });
  it("zooms into a module", () => {
    const boxes = icicle(rows, "model.layers.0");
    expect(boxes[0]).toMatchObject({ level: 0, x0: 0, x1: 1 });
    expect(boxes.find((b) => b.row.module === "model.layers.0.attn")!.x1).toBeCloseTo(0.75);
    expect(boxes.some((b) => b.row.module === "lm_head")).toBe(false);
  });
  it("scales a timeline and sorts a table", () => {
    expect(polyline([[0, 0], [2, 10]], 100, 50)).toBe("0.0,50.0 100.0,0.0");
    expect(sortedBy(rows, "self_s")[0].module).toBe("model.layers.1");
    expect(sortedBy(rows, "module")[0].module).toBe("lm_head");
  });
});
