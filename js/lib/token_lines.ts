// Cross-attention as lines between two token strips (as bertviz draws it): the
// output tokens on the left, the source tokens on the right, a line from each
// output token to each source token it attends to, its opacity the weight. Drawn
// from the heatmap's own map when every token has its cell; text via fillText only.
import type { Matrix } from "./heatmap";
import type { Region } from "./attention_heatmap";
import { el, shown } from "./widget_io";

const ROW_PX = 16;
const MAX_TOKENS = 80; // beyond, one line per pair is a grey wall: the heatmap says it better

export interface TokenLines {
  element: HTMLElement;
  /** map: the head's weights over `region` (null: nothing to draw, e.g. while zoomed). */
  draw(map: Matrix | null, region: Region, tokens: string[], head: number): void;
}

export function mountTokenLines(): TokenLines {
  const box = el("div", "lw-attn-lines-box");
  const caption = el("div", "lw-attn-caption", "output → source");
  const canvas = el("canvas", "lw-attn-xlines");
  canvas.width = 320;
  canvas.setAttribute("aria-label", "cross-attention: each output token's lines to the source tokens it attends to");
  box.append(caption, canvas);
  const ctx = canvas.getContext("2d")!;

  function draw(map: Matrix | null, [q0, q1, k0, k1]: Region, tokens: string[], head: number) {
    const exact = map !== null && map.rows === q1 - q0 && map.cols === k1 - k0;
    if (!exact || Math.max(map.rows, map.cols) > MAX_TOKENS) {
      canvas.height = 0;
      caption.textContent = "output → source: lines are drawn for the whole map of up to 80 tokens a side";
      delete canvas.dataset.drawn;
      return;
    }
    canvas.height = Math.max(map.rows, map.cols) * ROW_PX + 8;
    const { width, height } = canvas;
    ctx.clearRect(0, 0, width, height);
    const style = getComputedStyle(box);
    ctx.font = `12px ${style.getPropertyValue("--jp-code-font-family") || "monospace"}`;
    ctx.fillStyle = style.color || "#000";
    ctx.textBaseline = "middle";
    const label = (text: string) => (text.length > 12 ? `${text.slice(0, 11)}…` : text);
    const y = (i: number, n: number) => 4 + ((i + 0.5) * (height - 8)) / n;
    ctx.textAlign = "right";
    for (let q = 0; q < map.rows; q++) ctx.fillText(label(shown(tokens[q0 + q])), 92, y(q, map.rows));
    ctx.textAlign = "left";
    for (let k = 0; k < map.cols; k++) ctx.fillText(label(shown(tokens[k0 + k])), width - 92, y(k, map.cols));
    ctx.strokeStyle = "#3182bd";
    for (let q = 0; q < map.rows; q++) {
      for (let k = 0; k < map.cols; k++) {
        const w = map.data[q * map.cols + k];
        if (w < 0.02) continue;
        ctx.globalAlpha = Math.min(1, w * 1.2);
        ctx.lineWidth = 0.5 + 2.5 * w;
        ctx.beginPath();
        ctx.moveTo(98, y(q, map.rows));
        ctx.lineTo(width - 98, y(k, map.cols));
        ctx.stroke();
      }
    }
    ctx.globalAlpha = 1;
    caption.textContent = `output → source, head ${head}: line opacity = weight`;
    canvas.dataset.drawn = "true";
  }

  return { element: box, draw };
}
