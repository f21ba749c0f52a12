// The head view: the picked query on the left, its strongest keys on the
// right, a line per head of the layer (width by weight), and a swatch per head
// that opens it. Token text is drawn with fillText, never as markup.
import { headColour, headRgb, headViewKeys, type Matrix } from "./heatmap";
import { inkOn } from "./matrix";
import { el, shown } from "./widget_io";

const ROW_PX = 18;

export interface HeadView {
  element: HTMLElement;
  /** rows: one query's attention in every head of `layer` [heads, keys]; null clears. */
  draw(rows: Matrix | null, query: number, layer: number, head: number, tokens: string[]): void;
}

export function mountHeadView(heads: number, onHead: (head: number) => void): HeadView {
  const box = el("div", "lw-attn-headview");
  const caption = el("div", "lw-attn-caption", "head view: pick a query token");
  const swatches = el("div", "lw-attn-legend");
  const lines = el("canvas", "lw-attn-lines");
  lines.width = 300;
  lines.height = 60;
  box.append(caption, swatches, lines);
  for (let h = 0; h < heads; h++) {
    const swatch = el("button", "lw-attn-swatch", String(h));
    swatch.style.borderColor = swatch.style.backgroundColor = headColour(h, heads);
    swatch.style.color = inkOn(headRgb(h, heads));  // a filled swatch: its number in the ink that reads on it
    swatch.title = `head ${h}: show it in the heatmap`;
    swatch.addEventListener("click", () => onHead(h));
    swatches.append(swatch);
  }
  const ctx = lines.getContext("2d")!;

  function draw(rows: Matrix | null, query: number, layer: number, head: number, tokens: string[]) {
    if (!rows || query < 0) {
      lines.height = 60;
      ctx.clearRect(0, 0, lines.width, lines.height);
      caption.textContent = "head view: pick a query token";
      delete lines.dataset.drawn;
      return;
    }
    const keys = headViewKeys(rows);
    lines.height = Math.max(60, keys.length * ROW_PX + 10);
    const width = lines.width;
    ctx.clearRect(0, 0, width, lines.height);
    const style = getComputedStyle(box);
    ctx.font = `12px ${style.getPropertyValue("--jp-code-font-family") || "monospace"}`;
    ctx.fillStyle = style.color || "#000";
    ctx.textBaseline = "middle";
    const qy = lines.height / 2;
    const label = (text: string) => (text.length > 14 ? `${text.slice(0, 13)}…` : text);
    ctx.textAlign = "right";
    ctx.fillText(label(shown(tokens[query])), 95, qy);
    ctx.textAlign = "left";
    keys.forEach((k, i) => ctx.fillText(`${label(shown(tokens[k]))} ${k}`, width - 95, 14 + i * ROW_PX));
    ctx.globalAlpha = 0.55;
    for (let h = 0; h < rows.rows; h++) {
      ctx.strokeStyle = headColour(h, rows.rows);
      keys.forEach((k, i) => {
        const w = rows.data[h * rows.cols + k];
        if (w < 0.01) return;
        ctx.lineWidth = Math.max(0.5, w * (h === head ? 10 : 6));
        ctx.beginPath();
        ctx.moveTo(100, qy);
        ctx.lineTo(width - 100, 14 + i * ROW_PX);
        ctx.stroke();
      });
    }
    ctx.globalAlpha = 1;
    caption.textContent = `head view: layer ${layer}, query ${query}, line width = weight`;
    lines.dataset.drawn = "true";
  }

  return { element: box, draw };
}
