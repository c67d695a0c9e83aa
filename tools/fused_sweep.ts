// Seed sweep of the trainers' fused-vs---unfused checks (FUSED_CHECKS of train_gpt2_test.ts,
// train_rwkv7_test.ts and train_rwkv6_test.ts), to set their bounds from data: per check, the worst normwise relative
// gradient difference over the large tensors and the small ones (<= SMALL_TENSOR elements), and
// the loss difference, with the seed of each worst and the median of the per-seed worst.
//
//   deno run -A tools/fused_sweep.ts gpt2|rwkv7|rwkv6 [--seeds 1-20] [--be cpu|emu] [--precision bf16]
import { parseArgs } from "node:util";
import { backendDifference, SMALL_TENSOR, tinyLossAndGrads } from "../cuda/test/trainer_harness.ts";

const { values, positionals } = parseArgs({
  args: Deno.args,
  allowPositionals: true,
  options: {
    seeds: { type: "string", default: "1-20" },
    be: { type: "string" },
    precision: { type: "string", default: "bf16" },
  },
});
const which = positionals[0];
const [lo, hi] = values.seeds!.split("-").map(Number);
/** a fused check as its test applies it (smallTol/smallAtol: tensors of <= SMALL_TENSOR elements
 * pass within either; without them every tensor is held to tol) */
interface Check {
  be: "cpu" | "emu";
  precision: string;
  flags: string[];
  tol: number;
  smallTol?: number;
  smallAtol?: number;
  lossTol: number;
}
// deno-lint-ignore no-explicit-any
let trainer: any, checks: Check[];
if (which === "gpt2") {
  trainer = await import("../train_gpt2.ts");
  const t = await import("../train_gpt2_test.ts");
  checks = t.FUSED_CHECKS.map((c) => ({ ...c, flags: t.TINY }));
} else if (which === "rwkv7") {
  trainer = await import("../train_rwkv7.ts");
  const t = await import("../train_rwkv7_test.ts");
  checks = t.FUSED_CHECKS.map((c) => ({ ...c, be: "cpu" }));
} else if (which === "rwkv6") {
  trainer = await import("../train_rwkv6.ts");
  const t = await import("../train_rwkv6_test.ts");
  checks = t.FUSED_CHECKS.map((c) => ({ ...c, be: "cpu" }));
} else throw new Error("usage: fused_sweep.ts gpt2|rwkv7|rwkv6 [--seeds a-b] [--be cpu|emu]");
for (const c of checks) {
  if (c.precision !== values.precision || (values.be && c.be !== values.be)) continue;
  const rows: {
    seed: number;
    big: number;
    small: number;
    smallAbs: number;
    loss: number;
    name: string;
    /** the test would fail at this seed */
    fails: boolean;
  }[] = [];
  for (let seed = lo; seed <= hi; seed++) {
    const prec = c.precision as "bf16" | "f32";
    const fused = tinyLossAndGrads(trainer, c.flags, c.be, seed, prec);
    const unfused = tinyLossAndGrads(trainer, [...c.flags, "--unfused"], c.be, seed, prec);
    const d = backendDifference(unfused, fused);
    let big = 0, small = 0, smallAbs = 0, name = "", fails = d.loss > c.lossTol;
    for (const [n, rel] of d.perTensor) {
      const u = unfused.grads.get(n)!, f = fused.grads.get(n)!;
      if (u.length > SMALL_TENSOR || c.smallTol === undefined) {
        if (rel > big) [big, name] = [rel, n];
        fails ||= rel > c.tol;
        continue;
      }
      let abs = 0;
      u.forEach((v, i) => (abs = Math.max(abs, Math.abs(v - f[i]))));
      [small, smallAbs] = [Math.max(small, rel), Math.max(smallAbs, abs)];
      fails ||= rel > c.smallTol && abs > (c.smallAtol ?? 0);
    }
    rows.push({ seed, big, small, smallAbs, loss: d.loss, name, fails });
  }
  const worst = (k: "big" | "small" | "smallAbs" | "loss") => {
    const s = [...rows].sort((a, b) => a[k] - b[k]);
    const w = s[s.length - 1];
    const q = (p: number) => s[Math.floor(p * (s.length - 1))][k].toExponential(2);
    return `${k} worst ${w[k].toExponential(2)} (seed ${w.seed}${
      k === "big" ? ", " + w.name : ""
    }) median ${q(0.5)} p99 ${q(0.99)} p99.9 ${q(0.999)}`;
  };
  console.log(`${which} ${c.be} ${c.precision} seeds ${lo}-${hi}:`);
  for (const k of ["big", "small", "smallAbs", "loss"] as const) console.log("  " + worst(k));
  const failed = rows.filter((r) => r.fails).map((r) => r.seed);
  console.log(
    `  the test's bounds (tensors ${c.tol}, small ${c.smallTol ?? "-"} or ${
      c.smallAtol ?? "-"
    } absolute, loss ${c.lossTol}): ${
      failed.length
        ? `exceeded at ${failed.length} seeds: ${failed.slice(0, 10).join(", ")}`
        : "held"
    }`,
  );
}
