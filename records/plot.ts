// Loss curves of one or more training logs as one SVG: val and train loss against step and
// against training time, one colour per log, so runs can be compared at a glance.
//   deno run -A records/plot.ts OUT.svg LOG [LOG ...]
// A log is any file with the trainers' lines (`step:N/M val_loss:X train_time:Tms ...` and
// `step:N/M train_loss:X train_time:Tms ...`): the logs/<run>.txt files and console captures.

export interface Curve {
  name: string;
  val: { step: number; ms: number; loss: number }[];
  train: { step: number; ms: number; loss: number }[];
}

export function parseLog(text: string, name: string): Curve {
  const c: Curve = { name, val: [], train: [] };
  const re = /^step:(\d+)\/\d+ (val|train)_loss:([\d.]+|nan) train_time:(\d+)ms/;
  for (const line of text.split("\n")) {
    const m = re.exec(line.trim());
    if (!m || m[3] === "nan") continue;
    c[m[2] as "val" | "train"].push({ step: Number(m[1]), loss: Number(m[3]), ms: Number(m[4]) });
  }
  if (c.val.length + c.train.length === 0) {
    throw new Error(
      `${name}: no "step:N/M train_loss:..." or "val_loss:..." lines (not a training log?)`,
    );
  }
  return c;
}

const COLORS = [
  "#1f77b4",
  "#d62728",
  "#2ca02c",
  "#ff7f0e",
  "#9467bd",
  "#8c564b",
  "#e377c2",
  "#17becf",
];

function panel(
  curves: Curve[],
  kind: "val" | "train",
  xkey: "step" | "ms",
  x0: number,
  y0: number,
  w: number,
  h: number,
): string {
  const pts = curves.flatMap((c) => c[kind]);
  if (pts.length === 0) return "";
  const xs = pts.map((p) => (xkey === "ms" ? p.ms / 1000 : p.step)), ys = pts.map((p) => p.loss);
  const [xmin, xmax] = [Math.min(...xs), Math.max(...xs, Math.min(...xs) + 1)];
  const [ymin, ymax] = [Math.min(...ys), Math.max(...ys, Math.min(...ys) + 0.01)];
  const px = (x: number) => x0 + 50 + ((x - xmin) / (xmax - xmin)) * (w - 60);
  const py = (y: number) => y0 + h - 30 - ((y - ymin) / (ymax - ymin)) * (h - 50);
  const out: string[] = [];
  out.push(
    `<rect x="${x0 + 50}" y="${y0 + 20}" width="${w - 60}" height="${
      h - 50
    }" fill="none" stroke="#999"/>`,
  );
  out.push(
    `<text x="${x0 + w / 2}" y="${y0 + 14}" text-anchor="middle" font-size="13">${kind} loss vs ${
      xkey === "ms" ? "time (s)" : "step"
    }</text>`,
  );
  for (let i = 0; i <= 4; i++) {
    const y = ymin + ((ymax - ymin) * i) / 4, x = xmin + ((xmax - xmin) * i) / 4;
    out.push(
      `<text x="${x0 + 46}" y="${py(y) + 4}" text-anchor="end" font-size="10">${
        y.toFixed(2)
      }</text>`,
    );
    out.push(
      `<text x="${px(x)}" y="${y0 + h - 16}" text-anchor="middle" font-size="10">${
        xkey === "ms" ? x.toFixed(0) : Math.round(x)
      }</text>`,
    );
  }
  curves.forEach((c, i) => {
    const line = c[kind].map((p) =>
      `${px(xkey === "ms" ? p.ms / 1000 : p.step).toFixed(1)},${py(p.loss).toFixed(1)}`
    );
    if (line.length) {
      out.push(
        `<polyline fill="none" stroke="${COLORS[i % COLORS.length]}" stroke-width="1.5" points="${
          line.join(" ")
        }"/>`,
      );
    }
  });
  return out.join("\n");
}

export function plotSvg(curves: Curve[]): string {
  const W = 900, H = 620, pw = W / 2, ph = 280;
  const esc = (s: string) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  const legend = curves.map((c, i) =>
    `<text x="20" y="${H - 40 + 14 * i - 14 * (curves.length - 1)}" font-size="11" fill="${
      COLORS[i % COLORS.length]
    }">${esc(c.name)}</text>`
  );
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    panel(curves, "val", "step", 0, 0, pw, ph),
    panel(curves, "val", "ms", pw, 0, pw, ph),
    panel(curves, "train", "step", 0, ph, pw, ph),
    panel(curves, "train", "ms", pw, ph, pw, ph),
    ...legend,
    "</svg>",
  ].join("\n");
}

if (import.meta.main) {
  const [out, ...logs] = Deno.args;
  if (!out || !out.endsWith(".svg") || logs.length === 0) {
    console.error("usage: deno run -A records/plot.ts OUT.svg LOG [LOG ...]");
    Deno.exit(2);
  }
  try {
    const curves = logs.map((f) => parseLog(Deno.readTextFileSync(f), f));
    const tmp = `${out}.tmp-${Deno.pid}`;
    Deno.writeTextFileSync(tmp, plotSvg(curves));
    Deno.renameSync(tmp, out);
    console.log(
      `${out}: ${
        curves.map((c) => `${c.name} (${c.val.length} val, ${c.train.length} train points)`).join(
          ", ",
        )
      }`,
    );
  } catch (e) {
    console.error(`error: ${(e as Error).message}`);
    Deno.exit(2);
  }
}
