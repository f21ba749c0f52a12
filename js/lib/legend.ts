// A colour scale legend: the values a map's colours stand for, as labelled
// swatches (ink chosen to read on each). Shared by the attention heatmap and grid
// and the matrix views.
import { legendStops, inkOn, type Scale } from "./matrix";
import { el } from "./widget_io";

export function legend(name: string, scale: Scale, vmax: number): HTMLElement {
  const box = el("div", "lw-legend");
  box.append(el("span", "lw-legend-name", `${name}: `));
  for (const stop of legendStops(scale, vmax)) {
    const swatch = el("span", "lw-legend-swatch", stop.label);
    const [r, g, b] = stop.rgb;
    swatch.style.background = `rgb(${r}, ${g}, ${b})`;
    swatch.style.color = inkOn(stop.rgb);
    box.append(swatch);
  }
  return box;
}
