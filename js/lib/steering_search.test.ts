import { describe, expect, it } from "vitest";
import { frontPath, type Point, scales, ticks } from "./steering_search";

const points: Point[] = [
  { label: "a", kind: "attention", success: 0.1, cost: 0.01, front: true },
  { label: "b", kind: "direction", success: 0.05, cost: 0.02, front: false },
  { label: "c", kind: "attention", success: 0.8, cost: 0.2, front: true },
];

describe("the steering search plot", () => {
  it("makes round ticks", () => {
    expect(ticks(0, 1)).toEqual([0, 0.2, 0.4, 0.6, 0.8, 1]);
    expect(ticks(-0.05, 0.82)).toEqual([0, 0.2, 0.4, 0.6, 0.8]);
    expect(ticks(3, 3)).toEqual([3]);
  });

  it("puts cost to the right and success up, everything inside the frame", () => {
    const frame = { width: 400, height: 300, left: 50, bottom: 30 };
    const s = scales(points, 0.02, frame);
    expect(s.x(0.2)).toBeGreaterThan(s.x(0.01));
    expect(s.y(0.8)).toBeLessThan(s.y(0.1));
    for (const p of points) {
      expect(s.x(p.cost)).toBeGreaterThanOrEqual(frame.left);
      expect(s.x(p.cost)).toBeLessThanOrEqual(frame.width);
      expect(s.y(p.success)).toBeGreaterThanOrEqual(0);
      expect(s.y(p.success)).toBeLessThanOrEqual(frame.height - frame.bottom);
    }
    expect(frontPath(points, s).split("L")).toHaveLength(2);
    expect(frontPath(points, s).startsWith("M")).toBe(true);
  });
});
