// Every layer x head as a small map (painted once per answer, outlines redrawn
// on selection). Many layers wrap into side-by-side blocks (gridLayout). A click
// opens that head; the editor's shift-click picks it instead.
import { gridLayout, type Matrix, maxOf, toPixels } from "./heatmap";
import { el, focusable } from "./widget_io";

const CELL_PX = 22;
const GAP_PX = 8;

export interface GridMark {
  layer: number;
  head: number;
  colour: string;
}

export interface GridView {
  element: HTMLElement;
  /** New thumbnails: [layers * heads * size, size] as Python's attention_grid stacks them. */
  paint(maps: Matrix | null): void;
  /** Redraw the thumbnails with the selected head and `marks` outlined. */
  draw(selected: { layer: number; head: number }, marks: GridMark[]): void;
}

export function mountGrid(layers: number, heads: number,
  onClick: (layer: number, head: number, event: MouseEvent | KeyboardEvent) => void, attending: number[] = []): GridView {
  const silent = attending.length ? [...Array(layers).keys()].filter((l) => !attending.includes(l)) : [];
  const layout = gridLayout(layers, heads, CELL_PX, GAP_PX);
  const box = el("div", "lw-attn-gridbox");
  const grid = el("canvas", "lw-attn-grid");
  grid.width = layout.width;
  grid.height = layout.height;
  grid.setAttribute("aria-label", "all layers (rows) by heads (columns): click one, or move with the arrow keys, to show it");
  focusable(grid);
  const blocks = layout.blocks === 1 ? "" : `, ${layout.perBlock} layers per column block`;
  box.append(el("div", "lw-attn-caption", `all heads: layer ↓ head →${blocks}`), grid,
    el("div", "lw-note", "each map scaled to its own maximum" +
      (silent.length ? "; grey: a layer without attention (linear attention or state space)" : "")));
  const gctx = grid.getContext("2d")!;
  let thumbnails: HTMLCanvasElement | null = null;

  function paint(maps: Matrix | null) {
    thumbnails = null;
    delete grid.dataset.drawn;
    if (!maps) return;
    const size = maps.cols;
    const image = document.createElement("canvas");
    image.width = grid.width;
    image.height = grid.height;
    const ictx = image.getContext("2d")!;
    ictx.imageSmoothingEnabled = false;
    const off = document.createElement("canvas");
    off.width = off.height = size;
    const octx = off.getContext("2d")!;
    for (let layer = 0; layer < layers; layer++) {
      for (let head = 0; head < heads; head++) {
        const start = (layer * heads + head) * size;
        const one = { rows: size, cols: size, data: maps.data.subarray(start * size, (start + size) * size) };
        octx.putImageData(new ImageData(toPixels(one, maxOf(one)), size, size), 0, 0);
        const [x, y] = layout.origin(layer, head);
        if (silent.includes(layer)) {  // nothing attends here: no map to draw
          ictx.fillStyle = "#d9d9d9";
          ictx.fillRect(x + 1, y + 1, CELL_PX - 2, CELL_PX - 2);
          continue;
        }
        ictx.drawImage(off, x + 1, y + 1, CELL_PX - 2, CELL_PX - 2);
      }
    }
    ictx.fillStyle = "#9e9e9e"; // a rule between column blocks: each starts again at its own first layer
    for (let block = 1; block < layout.blocks; block++) {
      const [x] = layout.origin(block * layout.perBlock, 0);
      ictx.fillRect(x - GAP_PX / 2 - 1, 0, 2, grid.height);
    }
    thumbnails = image;
  }

  let shown = { layer: 0, head: 0 };
  function draw(selected: { layer: number; head: number }, marks: GridMark[]) {
    shown = selected;
    gctx.clearRect(0, 0, grid.width, grid.height);
    if (!thumbnails) return;
    gctx.drawImage(thumbnails, 0, 0);
    grid.dataset.drawn = "true";
    const outline = (layer: number, head: number, colour: string, inset: number) => {
      const [x, y] = layout.origin(layer, head);
      gctx.strokeStyle = colour;
      gctx.lineWidth = 2;
      gctx.strokeRect(x + inset, y + inset, CELL_PX - 2 * inset, CELL_PX - 2 * inset);
    };
    for (const mark of marks) outline(mark.layer, mark.head, mark.colour, 3);
    outline(selected.layer, selected.head, "#e6550d", 1);
  }

  grid.addEventListener("click", (event) => {
    const rect = grid.getBoundingClientRect();
    const scale = grid.width / rect.width; // the canvas may be drawn smaller than its pixels
    const cell = layout.at((event.clientX - rect.left) * scale, (event.clientY - rect.top) * scale);
    if (cell) onClick(cell.layer, cell.head, event);
  });

  grid.addEventListener("keydown", (event) => { // arrows: the next head, or the next layer that attends
    const step: Record<string, [number, number]> = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1],
      ArrowRight: [0, 1] };
    const move = step[event.key];
    if (!move) return;
    event.preventDefault();
    let layer = shown.layer + move[0];
    while (silent.includes(layer)) layer += move[0];
    const head = shown.head + move[1];
    if (layer >= 0 && layer < layers && head >= 0 && head < heads) onClick(layer, head, event);
  });

  return { element: box, paint, draw };
}
