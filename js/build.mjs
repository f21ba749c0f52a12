// Bundles every widget entry (js/*.ts) and its stylesheet (js/*.css) into
// llm_widgets/static/, one self-contained ES module each: no CDN, no imports
// at run time, so the widgets work offline, on remote kernels and in VS Code.
import { build } from "esbuild";
import { readdirSync } from "node:fs";

const entries = readdirSync("js")
  .filter((f) => f.endsWith(".ts") || f.endsWith(".css"))
  .map((f) => `js/${f}`);

await build({
  entryPoints: entries,
  outdir: "llm_widgets/static",
  bundle: true,
  format: "esm",
  target: "es2020",
  minify: true,
  sourcemap: false,
  logLevel: "info",
});
