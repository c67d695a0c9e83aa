// Chunked WKV-6 (cuda/wkv6_chunked.cu, the --fla_cuda kernel) against the cpu backend, which is
// the double-precision WKV-6 reference (cuda/cpu/wkv6.cpp, itself checked against float64 pair
// sums and finite differences in cuda/wkv6_test.ts) plus a double recurrence for the checkpoints.
//
// Error model: the bf16 inputs and fp32 u are exact inputs to both sides; the kernels work in fp32.
// y, dr, dk, dv, du, s_ckpt: sums of N x 16 (inside a chunk) plus one fp32 state carried over
// T/16 chunks, relative rounding ~1e-7 per operation. dw is a running sum of terms c_s, e_s that
// can be much larger than the result (as in cuda/wkv6.cu), so its error is larger. Errors are
// normwise: max|got - want| <= rel * max|want| per tensor (single gradient elements can be tiny
// while their absolute error is set by the tensor's scale).
import assert from "node:assert/strict";
import type { Backend } from "./backend.ts";
import {
  backend,
  checkAccumulates,
  checkShapeErrors,
  errorFrom,
  fmtErrors,
  forShapesAndKinds,
  relErr,
  Rng,
  SEED,
  type ShapeCase,
  testAccumulates,
  testTargets,
  VARIANT,
} from "./test/harness.ts";
import { compareVsCpu, type Shape } from "./test/wkv_cases.ts";
import {
  chunkedSizes,
  gradNumel,
  GRADS,
  type Inputs,
  type Kind,
  makeInputs as makeWkv6Inputs,
  runWkv6,
  withArgBuffers,
  zeroGrads,
} from "./test/wkv6_cases.ts";

/**
 * The inputs of cuda/test/wkv6_cases.ts ("model", "random", "extreme"), with "random" w uniform in
 * (-6, 2): d down to 6e-4, so a chunk's cumulative decay reaches exp(-118), which the naive
 * exp(g) * exp(-g) form cannot represent.
 */
const makeInputs = (rng: Rng, s: Shape, kind: Kind) => makeWkv6Inputs(rng, s, kind, [-6, 2]);

/** Forward then backward on `be`; gradients start from `gradInit` (+=). Returns y, s_ckpt, grads. */
const runChunked = (be: Backend, s: Shape, x: Inputs, gradInit: Float32Array[]) =>
  runWkv6(be, "chunked", s, x, gradInit);

// ---- a) emu (and cuda) vs cpu -------------------------------------------------------------------
// Whole chunks, a ragged last chunk (T % 16 != 0), T < 16 (one short chunk), and every head size.
// Under the sanitizer builds (MN_TEST_VARIANT) only the smallest shapes.
const SHAPES: Shape[] = VARIANT ? [{ B: 2, T: 21, H: 2, N: 16 }] : [
  { B: 1, T: 16, H: 1, N: 16 },
  { B: 2, T: 45, H: 2, N: 32 },
  { B: 1, T: 64, H: 1, N: 64 },
  { B: 1, T: 35, H: 1, N: 128 },
  { B: 3, T: 7, H: 2, N: 16 },
  { B: 2, T: 97, H: 3, N: 16 },
];
const KINDS: Kind[] = VARIANT ? ["model"] : ["model", "random", "extreme"];
// Tolerances, normwise (see the top). Worst measured over 9 seeds on emu in brackets:
// y, s_ckpt, dr, dk, dv, du [1.7e-6, s_ckpt random]: 5e-6. dw on model and random inputs
// [1.8e-6]: 5e-6 (the kernel's dw is a sum of genuinely small terms, no running-sum cancellation).
// dw on "extreme" inputs [1.4e-5]: 5e-5. There the cumulative log-decays reach |g| ~ 16 * 55 = 870
// within a chunk and a decay factor exp(g_a - g_b) carries the fp32 rounding of g (~|g| 2^-24
// absolute in the exponent, ~5e-5 relative), while dw = dL/dlog d * exp(w) weights exactly those
// channels by exp(w) up to 55.
const REL = { main: 5e-6, dw: 5e-6, dwExtreme: 5e-5 };
testTargets((tname) => `wkv6_chunked forward+backward: ${tname} vs cpu`, (ref, be, tname) => {
  const worst: Record<string, number> = {};
  forShapesAndKinds(SHAPES, KINDS, (s, kind, rng) => {
    const x = makeInputs(rng, s, kind);
    const init = GRADS.map((g) => rng.normal(gradNumel(s, g), 0.1));
    const want = runChunked(ref, s, x, init);
    const got = runChunked(be, s, x, init);
    const rel = (key: string) =>
      key !== "dw" ? REL.main : kind === "extreme" ? REL.dwExtreme : REL.dw;
    const tag = (key: string) => `${key} ${kind}`;
    compareVsCpu("wkv6_chunked", tname, s, kind, want, got, GRADS, init, rel, worst, tag);
  });
  console.log(`wkv6_chunked ${tname} vs cpu, worst normwise error:`, fmtErrors(worst));
});

// ---- b) a long sequence: many chunks of carried state -----------------------------------------
// 32 chunks of carried state. For comparison, the sequential kernel (cuda/wkv6_test.ts) measures
// dw errors of 4e-6 (model) and 1.3e-5 (random) on this shape.
Deno.test("wkv6_chunked: T=512 N=64 vs the double reference (emu)", () => {
  const s: Shape = { B: 1, T: 512, H: 1, N: 64 };
  // Worst measured over 9 seeds in brackets: y, dr, dk, dv, du, dw [1.3e-6]: 5e-6.
  const bound = { main: 5e-6, dw: 5e-6 };
  for (const kind of ["model", "random"] as Kind[]) {
    const rng = new Rng(SEED + 200 + (kind === "model" ? 0 : 1));
    const x = makeInputs(rng, s, kind);
    const want = runChunked(backend("cpu"), s, x, zeroGrads(s));
    const t0 = performance.now();
    const got = runChunked(backend("emu"), s, x, zeroGrads(s));
    const ms = performance.now() - t0;
    const errs: Record<string, number> = {};
    for (const key of ["y", ...GRADS]) errs[key] = relErr(got[key], want[key]);
    console.log(`emu vs cpu (T=512, N=64, ${kind}, ${ms.toFixed(0)} ms): ${fmtErrors(errs)}`);
    for (const [k, e] of Object.entries(errs)) {
      const b = k === "dw" ? bound.dw : bound.main;
      assert.ok(e <= b, `${kind} ${k}: normwise error ${e.toExponential(2)} > ${b} (seed ${SEED})`);
    }
  }
});

// ---- c) accumulation, determinism, argument checks -----------------------------------------------
testAccumulates("wkv6_chunked", ["cpu", "emu", "cuda"], (name) => {
  const be = backend(name);
  const s: Shape = { B: 3, T: 37, H: 2, N: 16 };
  const rng = new Rng(SEED + 300);
  const x = makeInputs(rng, s, "model");
  const init = GRADS.map((g) => rng.normal(gradNumel(s, g)));
  const run = (g: Float32Array[]) => runChunked(be, s, x, g);
  checkAccumulates(name, run, GRADS, zeroGrads(s), init, ["y", "s_ckpt"], name === "cuda");
});

Deno.test("wkv6_chunked: sizes follow the documented formula; bad arguments give clear errors", () => {
  for (const name of ["cpu", "emu"] as const) {
    const be = backend(name);
    for (const s of [{ B: 2, T: 33, H: 3, N: 64 }, { B: 1, T: 16, H: 1, N: 16 }]) {
      const NC = Math.ceil(s.T / 16);
      assert.deepEqual(chunkedSizes(be, s), {
        ckpt: s.B * s.H * NC * s.N * s.N,
        ws: s.B * s.H * NC * s.N * (s.N + 1),
      });
    }
    withArgBuffers(be, (y, g, ws, i) => {
      const cases: ShapeCase[] = [
        [1, 16, 1, 48, /head size N = 48 is not supported \(16, 32, 64 or 128\)/],
        [1, 16, 1, 0, /head size N = 0 is not supported/],
        [0, 16, 1, 64, /B = 0, T = 16, H = 1 must all be > 0/],
        [1, 0, 1, 64, /B = 1, T = 0, H = 1 must all be > 0/],
        [65536, 1, 1, 16, /B = 65536, H = 1 exceed the grid limit 65535/],
      ];
      checkShapeErrors(name, "N", cases, [
        [
          "wkv6_chunked_forward",
          (B, T, H, N) => be.k.mn_wkv6_chunked_forward(y, g, i, i, i, i, g, B, T, H, N, null),
        ],
        [
          "wkv6_chunked_backward",
          (B, T, H, N) =>
            be.k.mn_wkv6_chunked_backward(
              g,
              g,
              g,
              g,
              g,
              g,
              i,
              i,
              i,
              i,
              g,
              g,
              ws,
              B,
              T,
              H,
              N,
              -1,
              null,
            ),
        ],
      ], errorFrom);
      assert.throws(
        () => be.k.mn_wkv6_chunked_forward(y, null, i, i, i, i, g, 1, 16, 1, 16, null),
        /wkv6_chunked_forward: NULL/,
      );
      const g6 = [g, g, g, g, g, g] as const, i4 = [i, i, i, i] as const;
      assert.throws(
        () => be.k.mn_wkv6_chunked_backward(...g6, ...i4, g, g, null, 1, 16, 1, 16, -1, null),
        /wkv6_chunked_backward: NULL/,
      );
    });
  }
});

// ---- c) du: column sums over the B*NC per-chunk partials (reduce.cuh) ------------------------
// One row tile (1 and 7 partial rows) and the two-stage path (65 and 129 rows: 2 and 3 tiles of 64,
// the last holding a single row); the column sums themselves run at 65,537 rows in
// cuda/reduce_test.ts. du also comes out bit-identical from a second call (fixed order).
Deno.test("wkv6_chunked: du over B*NC = 1, 7, 65, 129 partial rows vs the double reference (emu)", () => {
  for (const [B, NC] of [[1, 1], [7, 1], [5, 13], [3, 43]]) {
    const s: Shape = { B, T: 16 * NC - 5, H: 2, N: 16 }; // a ragged last chunk
    const rng = new Rng(SEED + 300 + B);
    const x = makeInputs(rng, s, "model");
    const want = runChunked(backend("cpu"), s, x, zeroGrads(s));
    const got = runChunked(backend("emu"), s, x, zeroGrads(s));
    const again = runChunked(backend("emu"), s, x, zeroGrads(s));
    const e = relErr(got.du, want.du);
    assert.ok(
      e <= REL.main,
      `B*NC = ${B * NC}: du normwise error ${e.toExponential(2)} (seed ${SEED})`,
    );
    assert.deepEqual(again.du, got.du, `B*NC = ${B * NC}: du differs between two calls`);
  }
});
