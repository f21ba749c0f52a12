import { describe, expect, it } from "vitest";
import { barPercents, cellColour, cellText, formatValue, inkOn, legendStops, percent, windowStart } from "./matrix";

describe("matrix views", () => {
  it("maps sequential values from white to dark and clamps", () => {
    expect(cellColour(0, "sequential", 1)).toEqual([255, 255, 255]);
    expect(cellColour(2, "sequential", 1)).toEqual(cellColour(1, "sequential", 1));
    expect(cellColour(Number.NaN, "sequential", 1)).toEqual([255, 255, 255]);
  });
  it("maps diverging values around a white zero", () => {
    expect(cellColour(0, "diverging", 3)).toEqual([255, 255, 255]);
    const [r1, , b1] = cellColour(3, "diverging", 3);
    const [r2, , b2] = cellColour(-3, "diverging", 3);
    expect(r1).toBeGreaterThan(b1); // orange towards +
    expect(b2).toBeGreaterThan(r2); // blue towards -
  });
  it("picks ink that reads on the cell", () => {
    expect(inkOn([255, 255, 255])).toBe("#000");
    expect(inkOn(cellColour(1, "sequential", 1))).toBe("#fff");
  });
  it("labels the legend with the values it maps", () => {
    const stops = legendStops("diverging", 2);
    expect(stops.map((s) => s.label)).toEqual(["-2.0", "-1.0", "0", "+1.0", "+2.0"]);
    expect(legendStops("sequential", 1)[0].rgb).toEqual([255, 255, 255]);
    expect(formatValue(0.001)).toBe("1.0e-3");
  });
  it("writes cell numbers short, small ones as small, only zero as 0", () => {
    expect(cellText(0)).toBe("0");
    expect(cellText(-0)).toBe("0");
    expect(cellText(-1.2e-7)).toBe("-1.2e-7");
    expect(cellText(0.004)).toBe("4.0e-3");
    expect(cellText(1)).toBe("1.0");
    expect(cellText(0.01)).toBe("0.010");
    expect(cellText(123)).toBe("1.2e+2");
    expect(cellText(0.9134)).toBe("0.91");
    expect(cellText(-5.5)).toBe("-5.5");
  });
  it("keeps the window inside the columns", () => {
    expect(windowStart(0, -24, 100, 24)).toBe(0);
    expect(windowStart(70, 24, 100, 24)).toBe(76);
    expect(windowStart(10, 5, 20, 24)).toBe(0);
  });
  it("draws blame bars against the largest share, negative shares as none", () => {
    expect(barPercents([0.5, 0.25, -0.1, Number.NaN])).toEqual([100, 50, 0, 0]);
    expect(barPercents([-0.2, 0])).toEqual([0, 0]);
    expect(barPercents([])).toEqual([]);
    expect(percent(0.4234)).toBe("42.3%");
    expect(percent(-0.001)).toBe("-0.1%");
  });
});
