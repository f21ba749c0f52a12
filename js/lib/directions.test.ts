import { describe, expect, it } from "vitest";
import { applyDirection, positionToStrength, projectionColour, steerSpec, steersWith, strengthToPosition } from "./directions";
import { describeEdit, type EditSpec } from "./steer";

const d = { vector_f32: "AACAPw==", model: "m", layer: 6, name: "pos - neg" };
const other = { ...d, name: "other" };
const ablate: EditSpec = { kind: "ablate_head", layer: 1, head: 2, mode: "zero" };

describe("the directions panel", () => {
  it("replaces the same direction's edit after the same block, keeps the rest, and 0 removes it", () => {
    const first = applyDirection([ablate], steerSpec(d, 6, 2, "all"));
    expect(first).toHaveLength(2);
    const moved = applyDirection([...first, steerSpec(other, 6, 1, "all")], steerSpec(d, 6, -3, "generated"));
    expect(moved.filter((s) => s.kind === "steer_residual").map((s) => s.kind === "steer_residual" && s.strength))
      .toEqual([1, -3]);
    expect(applyDirection(moved, steerSpec(d, 6, 0, "all")).some((s) => steersWith(s, d, 6))).toBe(false);
    expect(applyDirection(moved, steerSpec(d, 7, 1, "all")).filter((s) => s.kind === "steer_residual")).toHaveLength(3);
  });

  it("maps the slider to strengths around 0 and back", () => {
    expect(positionToStrength(0, 11.7)).toBe(0);
    expect(positionToStrength(100, 11.7)).toBe(11.7);
    expect(positionToStrength(-50, 11.7)).toBe(-5.85);
    expect(positionToStrength(500, 2)).toBe(2);
    expect(strengthToPosition(-5.85, 11.7)).toBe(-50);
    expect(strengthToPosition(99, 11.7)).toBe(100);
  });

  it("colours projections red along, blue against", () => {
    expect(projectionColour(2, 2)).toBe("rgba(214, 39, 40, 0.800)");
    expect(projectionColour(-1, 2)).toBe("rgba(33, 102, 172, 0.400)");
    expect(projectionColour(0, 0)).toBe("rgba(214, 39, 40, 0.000)");
  });

  it("describes an MLP ablation", () => {
    expect(describeEdit({ kind: "ablate_mlp", layer: 3, positions: [[1, 2]] }, ["a", "b"])).toBe(
      "ablate block 3's MLP at 1 \"b\"");
  });

  it("describes a steer edit in the edit list", () => {
    expect(describeEdit(steerSpec(d, 6, 4, "generated"), [])).toBe('add 4 × "pos - neg" after block 6 at the generated tokens');
    expect(describeEdit({ ...steerSpec(d, 6, 4, "all"), positions: [[1, 3]] }, ["a", "b", "c"])).toBe(
      'add 4 × "pos - neg" after block 6 at 1–2 "bc"');
  });
});
