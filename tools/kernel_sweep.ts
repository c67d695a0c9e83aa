// Measures a kernel test's random-input errors over many seeds, the data its bounds are set from
// (with a stated margin, in the comment beside them). For each seed: the test's shapes and kinds with
// the inputs it draws (forShapesAndKinds, as `MN_TEST_SEED=seed` would), emu against the cpu
// reference, and per output the worst normwise relative error over the shapes. Prints per kind and
// output the median, 99th percentile and worst over the seeds (with the seed and shape), and how
// often the test's bound was exceeded.
//
//   deno run -A tools/kernel_sweep.ts wind|attention_tc|mix_layernorm [--seeds 1-400]
//
// ~5 s a seed on 2 cores. Not a test; the test itself runs one fresh seed each time.
import { parseArgs } from "node:util";
import {
  addedPart,
  backend,
  forShapesAndKinds,
  maxAbs,
  maxAbsDiff,
  relErr,
  Rng,
  SEED,
  seedList,
} from "../cuda/test/harness.ts";
import { numel } from "../cuda/test/wkv_cases.ts";
import { GRADS } from "../cuda/test/wkv7_cases.ts";
import * as att from "../cuda/test/attention_cases.ts";
import { bound, KINDS, makeInputs, runWind, SHAPES } from "../cuda/wkv7_wind_test.ts";
import * as attTc from "../cuda/attention_tc_test.ts";
import { MIX_BF16_REL, MIX_LAMBDA, MIX_LAMBDA_GRADS, runMixLayernorm } from "../cuda/norm_test.ts";

interface Sweep {
  /** per output (named "kind.output"): the normwise error of one shape and kind */
  errors(seed: number): Map<string, { err: number; shape: number }>;
  /** the test's bound for "kind.output" */
  bound(key: string): number;
}

const SWEEPS: Record<string, () => Sweep> = {
  wind: () => {
    const [ref, emu] = [backend("cpu"), backend("emu")];
    return {
      errors(seed) {
        const out = new Map<string, { err: number; shape: number }>();
        // forShapesAndKinds draws from SEED + seedBase + ...: this seed's inputs, as the test's
        forShapesAndKinds(SHAPES, KINDS, (s, kind, rng) => {
          const x = makeInputs(rng, s, kind);
          const init = GRADS.map(() => rng.normal(numel(s), 0.1));
          const want = addedPart(runWind(ref, s, x, init), GRADS, init);
          const got = addedPart(runWind(emu, s, x, init), GRADS, init);
          for (const key of Object.keys(want)) {
            putWorst(out, `${kind}.${key}`, relErr(got[key], want[key]), SHAPES.indexOf(s));
          }
        }, seed - SEED);
        return out;
      },
      bound(key) {
        const [kind, out] = key.split(".");
        return bound(out, kind as (typeof KINDS)[number]);
      },
    };
  },
  // the tensor-core attention (cuda/attention_tc_test.ts): out and lse normwise, each gradient
  // against the largest of the three (as its compareVsCpu)
  attention_tc: () => {
    const [ref, emu] = [backend("cpu"), backend("emu")];
    return {
      errors(seed) {
        const out = new Map<string, { err: number; shape: number }>();
        forShapesAndKinds(attTc.SHAPES, attTc.KINDS, (s, kind, rng) => {
          const x = att.makeInputs(rng, s, kind);
          const init = att.GRADS.map(() => rng.normal(att.numel(s), 0.1));
          const want = addedPart(att.runAttention(ref, s, x, init, "tc"), att.GRADS, init);
          const got = addedPart(att.runAttention(emu, s, x, init, "tc"), att.GRADS, init);
          const shape = attTc.SHAPES.indexOf(s);
          const gscale = Math.max(...att.GRADS.map((g) => maxAbs(want[g])));
          for (const g of att.GRADS) {
            putWorst(out, `${kind}.${g}`, maxAbsDiff(got[g], want[g]) / gscale, shape);
          }
          for (const k of ["out", "lse"]) {
            putWorst(out, `${kind}.${k}`, relErr(got[k], want[k]), shape);
          }
        }, seed - SEED);
        return out;
      },
      bound(key) {
        const out = key.split(".")[1];
        return out === "out" || out === "lse" ? attTc.REL_TC[out] : attTc.REL_TC.grad;
      },
    };
  },
  // Graph.mixLayernorm against add/axpby/layernorm on emu, bf16 (cuda/norm_test.ts), both branch
  // kinds, as the test measures: per gradient normwise ("op.output"); for the lambdas' the smaller
  // of normwise / MIX_LAMBDA.rel and absolute / MIX_LAMBDA.atol ("op.lambdas", bound 1)
  mix_layernorm: () => {
    const emu = backend("emu");
    return {
      errors(seed) {
        const out = new Map<string, { err: number; shape: number }>();
        for (const op of ["mul", "matmul"] as const) {
          const { want, got } = runMixLayernorm(emu, "bf16", op, new Rng(seed));
          for (let i = 5; i < got.length; i++) {
            const rel = relErr(got[i], want[i]);
            if (MIX_LAMBDA_GRADS.includes(i)) {
              const abs = maxAbsDiff(got[i], want[i]);
              putWorst(
                out,
                `${op}.lambdas`,
                Math.min(rel / MIX_LAMBDA.rel, abs / MIX_LAMBDA.atol),
                0,
              );
            } else putWorst(out, `${op}.${i}`, rel, 0);
          }
        }
        return out;
      },
      bound(key) {
        const [op, out] = key.split(".") as [keyof typeof MIX_BF16_REL, string];
        return out === "lambdas" ? 1 : MIX_BF16_REL[op];
      },
    };
  },
};

/** keeps the larger error per key */
function putWorst(
  out: Map<string, { err: number; shape: number }>,
  k: string,
  err: number,
  shape: number,
) {
  if (err > (out.get(k)?.err ?? -1)) out.set(k, { err, shape });
}

if (import.meta.main) {
  let values, positionals;
  try {
    ({ values, positionals } = parseArgs({
      args: Deno.args,
      options: { seeds: { type: "string", default: "1-100" } },
      allowPositionals: true,
      strict: true,
    }));
  } catch (e) {
    console.error(`error: ${(e as Error).message.split("\n")[0]}`);
    Deno.exit(2);
  }
  const make = SWEEPS[positionals[0]];
  if (positionals.length !== 1 || !make) {
    console.error(`error: expected one kernel, one of: ${Object.keys(SWEEPS).join(", ")}`);
    Deno.exit(2);
  }
  let seeds: number[];
  try {
    seeds = seedList(values.seeds!);
  } catch (e) {
    console.error(`error: ${(e as Error).message}`);
    Deno.exit(2);
  }
  const sweep = make();
  const all = new Map<string, { err: number; seed: number; shape: number }[]>();
  const t0 = performance.now();
  for (const [i, seed] of seeds.entries()) {
    for (const [k, e] of sweep.errors(seed)) {
      if (!all.has(k)) all.set(k, []);
      all.get(k)!.push({ ...e, seed });
    }
    if ((i + 1) % 10 === 0) {
      const s = (performance.now() - t0) / 1e3;
      console.error(`${i + 1}/${seeds.length} seeds, ${s.toFixed(0)} s`);
    }
  }
  const fmt = (x: number) => x.toExponential(2);
  console.log(`${positionals[0]}: seeds ${values.seeds} (${seeds.length}), emu vs cpu`);
  for (const [k, rows] of [...all].sort(([a], [b]) => a.localeCompare(b))) {
    rows.sort((a, b) => a.err - b.err);
    const at = (q: number) => rows[Math.min(rows.length - 1, Math.floor(q * (rows.length - 1)))];
    const w = rows.at(-1)!, b = sweep.bound(k);
    const over = rows.filter((r) => r.err > b).length;
    console.log(
      `${k.padEnd(16)} median ${fmt(at(0.5).err)}  p99 ${fmt(at(0.99).err)}  worst ${
        fmt(w.err)
      } (seed ${w.seed}, shape ${w.shape})  bound ${fmt(b)} (${(b / w.err).toFixed(1)}x)${
        over ? `  OVER at ${over} seeds` : ""
      }`,
    );
  }
}
