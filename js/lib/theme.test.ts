import { describe, expect, it } from "vitest";
import { parseColour } from "./theme";

describe("parseColour", () => {
  it("reads what getComputedStyle gives", () => {
    expect(parseColour("rgb(33, 33, 33)")).toEqual([33, 33, 33, 1]);
    expect(parseColour("rgba(255, 255, 255, 0.54)")).toEqual([255, 255, 255, 0.54]);
    expect(parseColour("rgba(0, 0, 0, 0)")[3]).toBe(0);  // transparent: look further up
    expect(parseColour("")[3]).toBe(0);
  });
});
