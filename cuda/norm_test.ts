import assert from "node:assert/strict";
import { Graph, Param, type Var } from "./autograd.ts";
import { type Backend, bf16ToF32, f32ToBf16, type Tensor } from "./backend.ts";
import {
  backend,
  checkKernel,
  compare,
  compareRel,
  EXACT,
  f64,
  HAS_GPU,
  maxAbsDiff,
  numericalGrad,
  relErr,
  Rng,
  SEED,
  type Tol,
  TOL_F32,
  VARIANT,
  withTensors,
} from "./test/harness.ts";

interface Cfg {
  N: number;
  C: number;
}
// C: a single element, less than a warp, odd, the GPT width, more than 256 threads cover in one
// pass and not a multiple of 32; N: one row up to 64 rows (not a multiple of the 8 row groups).
const allConfigs: Cfg[] = [
  { N: 1, C: 1 },
  { N: 3, C: 17 },
  { N: 64, C: 1 },
  { N: 5, C: 768 },
  { N: 64, C: 1000 },
  { N: 13, C: 33 },
];
// Under the sanitizers (10x slower emu) the largest shape is left out; every ragged edge (C not a
// multiple of 32 or of the block, N not a multiple of the 8 row groups) is in the smaller ones.
const configs = VARIANT ? allConfigs.filter(({ N, C }) => N * C <= 2000) : allConfigs;
const label = ({ N, C }: Cfg) => `[${N},${C}]`;
const EPS = 1e-5;

/** rows with a per-row offset and scale, so mean subtraction and the variance both matter */
function rowsOf(rng: Rng, N: number, C: number): Float32Array {
  const x = rng.normal(N * C);
  for (let i = 0; i < N; i++) {
    const off = 4 * (rng.next() - 0.5), sc = 0.5 + 2 * rng.next();
    for (let c = 0; c < C; c++) x[i * C + c] = off + sc * x[i * C + c];
  }
  return x;
}

// ---- the kernels on tensors named as in kernels.h (out, mean, rstd, x, w, b, dinp, ...)
type Named = Record<string, Tensor>;
/** the layernorm forward's inputs x [N,C], w [C], b [C] */
const lnInputs = (x: Float32Array, w: Float32Array, b: Float32Array, N: number, C: number) => ({
  x: { data: x, shape: [N, C] },
  w: { data: w, shape: [C] },
  b: { data: b, shape: [C] },
});
/** the layernorm forward's outputs out [N,C], mean [N], rstd [N] */
const lnOutputs = (N: number, C: number) => ({
  out: { shape: [N, C] },
  mean: { shape: [N] },
  rstd: { shape: [N] },
});
const lnForward = (be: Backend, t: Named, N: number, C: number) =>
  be.k.mn_layernorm_forward(
    t.out.ptr,
    t.mean.ptr,
    t.rstd.ptr,
    t.x.ptr,
    t.w.ptr,
    t.b.ptr,
    N,
    C,
    EPS,
    be.stream,
  );
const lnBackward = (be: Backend, t: Named, N: number, C: number) =>
  be.k.mn_layernorm_backward(
    t.dinp.ptr,
    t.dweight.ptr,
    t.dbias.ptr,
    t.dout.ptr,
    t.x.ptr,
    t.w.ptr,
    t.mean.ptr,
    t.rstd.ptr,
    N,
    C,
    -1,
    be.stream,
  );
const rmsForward = (be: Backend, t: Named, N: number, C: number) =>
  be.k.mn_rmsnorm_forward(t.out.ptr, t.rstd.ptr, t.x.ptr, N, C, EPS, be.stream);
const rmsBackward = (be: Backend, t: Named, N: number, C: number) =>
  be.k.mn_rmsnorm_backward(t.dinp.ptr, t.dout.ptr, t.x.ptr, t.rstd.ptr, N, C, -1, be.stream);

// ---- independent float64 forwards (the definitions, as torch states them)
function layernorm64(
  x: Float64Array,
  w: Float64Array,
  b: Float64Array,
  N: number,
  C: number,
  eps: number,
) {
  const out = new Float64Array(N * C), mean = new Float64Array(N), rstd = new Float64Array(N);
  for (let i = 0; i < N; i++) {
    let mu = 0;
    for (let c = 0; c < C; c++) mu += x[i * C + c];
    mu /= C;
    let v = 0;
    for (let c = 0; c < C; c++) v += (x[i * C + c] - mu) ** 2;
    const r = 1 / Math.sqrt(v / C + eps);
    for (let c = 0; c < C; c++) out[i * C + c] = (x[i * C + c] - mu) * r * w[c] + b[c];
    mean[i] = mu;
    rstd[i] = r;
  }
  return { out, mean, rstd };
}

function rmsnorm64(x: Float64Array, N: number, C: number, eps: number) {
  const out = new Float64Array(N * C), rstd = new Float64Array(N);
  for (let i = 0; i < N; i++) {
    let ms = 0;
    for (let c = 0; c < C; c++) ms += x[i * C + c] ** 2;
    const r = 1 / Math.sqrt(ms / C + eps);
    for (let c = 0; c < C; c++) out[i * C + c] = x[i * C + c] * r;
    rstd[i] = r;
  }
  return { out, rstd };
}

// ---- emu (and cuda) vs cpu
// Forward: fp32 block sums vs the reference's double statistics differ by a few ulp of values
// that are O(1..10), hence fp32 tolerance.
checkKernel({
  name: "layernorm_forward",
  configs,
  label,
  tol: TOL_F32,
  run(be, { N, C }, rng) {
    const x = rowsOf(rng, N, C), w = rng.normal(C), b = rng.normal(C);
    return withTensors(be, lnInputs(x, w, b, N, C), lnOutputs(N, C), (t) => lnForward(be, t, N, C));
  },
});

// The bf16-out forward (the next matmul's operand): on every backend exactly that backend's fp32
// forward then the cast (one rounding of the same fp32 value), mean and rstd bit for bit; its
// argument checks are the fp32 forward's.
function layernormBf16Check(be: Backend, name: string) {
  for (const { N, C } of configs) {
    const rng = new Rng(5000 + N * C);
    const x = rowsOf(rng, N, C), w = rng.normal(C), b = rng.normal(C);
    const r = withTensors(be, lnInputs(x, w, b, N, C), {
      ...lnOutputs(N, C),
      cast: { shape: [N, C], dtype: "bf16" },
      bf16: { shape: [N, C], dtype: "bf16" },
      mean2: { shape: [N] },
      rstd2: { shape: [N] },
    }, (t) => {
      lnForward(be, t, N, C);
      be.k.mn_cast_f32_to_bf16(t.cast.ptr, t.out.ptr, BigInt(N * C), be.stream);
      be.k.mn_layernorm_forward_bf16(
        t.bf16.ptr,
        t.mean2.ptr,
        t.rstd2.ptr,
        t.x.ptr,
        t.w.ptr,
        t.b.ptr,
        N,
        C,
        EPS,
        be.stream,
      );
    });
    const l = `layernorm_forward_bf16 [${N},${C}] (${name})`;
    compare(`${l} out`, r.bf16, r.cast, EXACT);
    compare(`${l} mean`, r.mean2, r.mean, EXACT);
    compare(`${l} rstd`, r.rstd2, r.rstd, EXACT);
  }
  withTensors(be, {}, { a: { shape: [8], dtype: "bf16" }, s: { shape: [8] } }, (t) => {
    const k = be.k, a = t.a.ptr, f = t.s.ptr, st = be.stream;
    const cases: [() => unknown, RegExp][] = [
      [() => k.mn_layernorm_forward_bf16(a, f, null, f, f, f, 2, 4, EPS, st), /NULL pointer/],
      [() => k.mn_layernorm_forward_bf16(a, f, f, f, f, f, 0, 4, EPS, st), /bad shape N = 0/],
      [() => k.mn_layernorm_forward_bf16(a, f, f, f, f, f, 2, 4, -1, st), /eps = -1 must/],
    ];
    for (const [fn, re] of cases) {
      assert.throws(fn, new RegExp("layernorm_forward_bf16: .*" + re.source), `${name}: ${re}`);
    }
  });
}
for (const name of ["cpu", "emu", "cuda"] as const) {
  Deno.test({
    name: `layernorm_forward_bf16: the fp32 forward then the cast, bit for bit (${name})`,
    ignore: name === "cuda" && !HAS_GPU,
    fn: () => layernormBf16Check(backend(name, name === "emu" ? VARIANT : ""), name),
  });
}

// The residual add + LayerNorm: on every backend exactly mn_add (of the branch as fp32: a bf16
// branch cast up first, exact) then mn_layernorm_forward_bf16 on the sum, bit for bit, with an
// fp32 and a bf16 branch; so emu vs cpu is those kernels' own checks. Then its argument checks.
function addLayernormCheck(be: Backend, name: string) {
  for (const { N, C } of configs) {
    for (const branchBf16 of [0, 1]) {
      const rng = new Rng(7000 + N * C + branchBf16);
      const x = rowsOf(rng, N, C), w = rng.normal(C), b = rng.normal(C), y = rowsOf(rng, N, C);
      const r = withTensors(be, {
        ...lnInputs(x, w, b, N, C),
        y: branchBf16
          ? { data: f32ToBf16(y), shape: [N, C], dtype: "bf16" as const }
          : { data: y, shape: [N, C] },
      }, {
        yf: { shape: [N, C] },
        sum: { shape: [N, C] },
        sum2: { shape: [N, C] },
        out: { shape: [N, C], dtype: "bf16" },
        out2: { shape: [N, C], dtype: "bf16" },
        mean: { shape: [N] },
        rstd: { shape: [N] },
        mean2: { shape: [N] },
        rstd2: { shape: [N] },
      }, (t) => {
        const k = be.k, st = be.stream;
        k.mn_add_layernorm_forward(
          t.sum.ptr,
          t.out.ptr,
          t.mean.ptr,
          t.rstd.ptr,
          t.x.ptr,
          t.y.ptr,
          branchBf16,
          t.w.ptr,
          t.b.ptr,
          N,
          C,
          EPS,
          st,
        );
        if (branchBf16) k.mn_cast_bf16_to_f32(t.yf.ptr, t.y.ptr, BigInt(N * C), st);
        else k.mn_memcpy_d2d(t.yf.ptr, t.y.ptr, BigInt(4 * N * C), st);
        k.mn_add(t.sum2.ptr, t.x.ptr, t.yf.ptr, BigInt(N * C), st);
        k.mn_layernorm_forward_bf16(
          t.out2.ptr,
          t.mean2.ptr,
          t.rstd2.ptr,
          t.sum2.ptr,
          t.w.ptr,
          t.b.ptr,
          N,
          C,
          EPS,
          st,
        );
      });
      const l = `add_layernorm_forward [${N},${C}] branch ${branchBf16 ? "bf16" : "f32"} (${name})`;
      compare(`${l} sum`, r.sum, r.sum2, EXACT);
      compare(`${l} out`, r.out, r.out2, EXACT);
      compare(`${l} mean`, r.mean, r.mean2, EXACT);
      compare(`${l} rstd`, r.rstd, r.rstd2, EXACT);
    }
  }
  withTensors(
    be,
    {},
    { a: { shape: [8], dtype: "bf16" }, s: { shape: [8] }, u: { shape: [8] } },
    (t) => {
      const k = be.k, a = t.a.ptr, f = t.s.ptr, u = t.u.ptr, st = be.stream;
      const cases: [() => unknown, RegExp][] = [
        [() => k.mn_add_layernorm_forward(u, a, f, f, f, null, 0, f, f, 2, 4, EPS, st), /NULL/],
        [() => k.mn_add_layernorm_forward(u, a, f, f, f, u, 0, f, f, 2, 4, EPS, st), /alias/],
        [() => k.mn_add_layernorm_forward(u, a, f, f, f, f, 0, f, f, 0, 4, EPS, st), /bad shape/],
        [() => k.mn_add_layernorm_forward(u, a, f, f, f, f, 0, f, f, 2, 4, -1, st), /eps = -1/],
      ];
      for (const [fn, re] of cases) {
        assert.throws(fn, new RegExp("add_layernorm_forward: .*" + re.source), `${name}: ${re}`);
      }
    },
  );
}
for (const name of ["cpu", "emu", "cuda"] as const) {
  Deno.test({
    name: `add_layernorm_forward: mn_add then layernorm_forward_bf16, bit for bit (${name})`,
    ignore: name === "cuda" && !HAS_GPU,
    fn: () => addLayernormCheck(backend(name, name === "emu" ? VARIANT : ""), name),
  });
}

// RWKV-7's residual mix + ln1: on every backend exactly mn_add (with a branch), mn_axpby_forward
// (x0 as y) then mn_layernorm_forward, bit for bit: the first block's case (no branch, x is x0),
// no branch with x apart from x0, a branch with and without its sum stored. Then its argument
// checks.
const MIX_CASES = [
  { branch: false, sum: false, sameX0: true },
  { branch: false, sum: false, sameX0: false },
  { branch: true, sum: true, sameX0: false },
  { branch: true, sum: false, sameX0: false },
];
function mixLayernormCheck(be: Backend, name: string) {
  for (const { N, C } of configs) {
    for (const mc of MIX_CASES) {
      const rng = new Rng(7100 + N * C + (mc.branch ? 1 : 0) + (mc.sameX0 ? 2 : 0));
      const x = rowsOf(rng, N, C), w = rng.normal(C), b = rng.normal(C);
      const br = rowsOf(rng, N, C), x0 = rowsOf(rng, N, C);
      // lambdas away from 0 and 1, so both products round
      const ab = new Float32Array([0.5 + rng.next(), rng.next() - 0.5]);
      const r = withTensors(be, {
        ...lnInputs(x, w, b, N, C),
        br: { data: br, shape: [N, C] },
        x0: { data: x0, shape: [N, C] },
        ab: { data: ab, shape: [2] },
      }, {
        sum: { shape: [N, C] },
        sum2: { shape: [N, C] },
        xo: { shape: [N, C] },
        xo2: { shape: [N, C] },
        ...lnOutputs(N, C),
        out2: { shape: [N, C] },
        mean2: { shape: [N] },
        rstd2: { shape: [N] },
      }, (t) => {
        const k = be.k, st = be.stream, n = BigInt(N * C);
        const x0p = mc.sameX0 ? t.x.ptr : t.x0.ptr;
        const a = t.ab.rows(0, 1).ptr, bb = t.ab.rows(1, 1).ptr;
        k.mn_mix_layernorm_forward(
          mc.sum ? t.sum.ptr : null,
          t.xo.ptr,
          t.out.ptr,
          t.mean.ptr,
          t.rstd.ptr,
          t.x.ptr,
          mc.branch ? t.br.ptr : null,
          x0p,
          a,
          bb,
          t.w.ptr,
          t.b.ptr,
          N,
          C,
          EPS,
          st,
        );
        if (mc.branch) k.mn_add(t.sum2.ptr, t.x.ptr, t.br.ptr, n, st);
        const s = mc.branch ? t.sum2.ptr : t.x.ptr;
        k.mn_axpby_forward(t.xo2.ptr, s, x0p, a, bb, n, st);
        k.mn_layernorm_forward(
          t.out2.ptr,
          t.mean2.ptr,
          t.rstd2.ptr,
          t.xo2.ptr,
          t.w.ptr,
          t.b.ptr,
          N,
          C,
          EPS,
          st,
        );
      });
      const l = `mix_layernorm_forward [${N},${C}] ${JSON.stringify(mc)} (${name})`;
      if (mc.sum) compare(`${l} sum`, r.sum, r.sum2, EXACT);
      else assert.ok(r.sum.every(Number.isNaN), `${l}: sum written`);
      compare(`${l} x_out`, r.xo, r.xo2, EXACT);
      compare(`${l} out`, r.out, r.out2, EXACT);
      compare(`${l} mean`, r.mean, r.mean2, EXACT);
      compare(`${l} rstd`, r.rstd, r.rstd2, EXACT);
    }
  }
  withTensors(be, {}, { s: { shape: [8] }, u: { shape: [8] }, v: { shape: [8] } }, (t) => {
    const k = be.k, f = t.s.ptr, u = t.u.ptr, v = t.v.ptr, st = be.stream;
    const mix = (sum: Deno.PointerValue, xo: Deno.PointerValue, br: Deno.PointerValue, N = 2) =>
      k.mn_mix_layernorm_forward(sum, xo, u, f, f, f, br, f, f, f, f, f, N, 4, EPS, st);
    const cases: [() => unknown, RegExp][] = [
      [() => mix(null, null, null), /NULL/],
      [() => mix(v, v, null), /sum given without a branch/],
      [() => mix(v, v, f), /must not alias/],
      [() => mix(null, u, f), /must not alias/],
      [() => mix(null, f, null), /must not alias x, branch or x0/],
      [() => mix(null, v, null, 0), /bad shape/],
    ];
    for (const [fn, re] of cases) {
      assert.throws(fn, new RegExp("mix_layernorm_forward: .*" + re.source), `${name}: ${re}`);
    }
  });
}
for (const name of ["cpu", "emu", "cuda"] as const) {
  Deno.test({
    name: `mix_layernorm_forward: mn_add, axpby then layernorm_forward, bit for bit (${name})`,
    ignore: name === "cuda" && !HAS_GPU,
    fn: () => mixLayernormCheck(backend(name, name === "emu" ? VARIANT : ""), name),
  });
}

// The tape op: Graph.mixLayernorm through three blocks (the first without a branch, x is x0; the
// later ones' branch a function of the previous ln1, as the MLP's output is: an elementwise
// product, or a matmul whose output's gradient may be bf16) against add, axpby and layernorm.
// "f32": the same tape, so the residual, the ln1 outputs and every gradient (x0's from all of its uses, the
// lambdas', the LayerNorms', the branch's) are the same bits. "bf16": the values the same bits,
// the gradients from mn_mix_layernorm_backward (the matmul branch's gradient written in bf16
// directly rather than cast): on cpu the same bits too (its reference is the composition), on
// emu within the bounds below of the generic ops' (its sums in another order).
// The tensors' gradients, normwise: with the mul branch only fp32 sums differ; with the matmul
// branch the fused kernel and the cast round r's gradient from fp32 values summed in different
// orders, so where one straddles a bf16 rounding boundary the two differ by one bf16 ulp (2^-8
// relative) and that spreads through the matmul's backward into a row of x0's gradient and a
// column of R's (MN_TEST_SEED=1331325160 failed the elementwise fp32 bound this test had).
// Seeds 11-310 on emu (`deno run -A tools/kernel_sweep.ts mix_layernorm`), worst: mul 3.2e-7
// (B0), matmul 2.73e-4 (seed 236, X0; p99 4.1e-5, median 7.6e-8); bounds ~3x.
export const MIX_BF16_REL = { mul: 1e-6, matmul: 1e-3 };
// The lambdas' gradients (2 elements, each a sum over all N x C elements, up to ~20, with
// cancellation) in another fp32 order: within rel normwise, or atol absolute where they cancel
// to small values (as the trainers' smallTol/smallAtol). Normwise over seeds 11-310: worst
// 3.96e-5 (matmul, seed 294; mul 2.98e-5, seed 170, where the old elementwise bound failed);
// absolute over seeds 1-14 and the worst ones: mul 5.3e-5, matmul 8.2e-4 (294, at ~20).
export const MIX_LAMBDA = { rel: 1e-4, atol: 2e-4 };
const BLOCKS = [0, 1, 2];
export const MIX_OUTPUTS = "(0-4: out, x, ln1 of blocks 0-2; then X0, R, L, W, B grads)";
/** the outputs that are the lambdas' gradients */
export const MIX_LAMBDA_GRADS = [7, 8, 9];
/** the test's graph, run through add/axpby/layernorm (want) and mixLayernorm (got) on one
 * backend, with how often the fused backward ran and wrote ds over g_in */
export function runMixLayernorm(
  be: Backend,
  precision: "f32" | "bf16",
  branchOp: "mul" | "matmul",
  rng: Rng,
) {
  const N = 74, C = 40;
  const mk = (n: string, shape: number[], a: Float32Array) => new Param(be, n, be.upload(a, shape));
  const X0 = mk("X0", [N, C], rng.normal(N * C));
  const R = branchOp === "mul"
    ? mk("R", [N, C], rng.normal(N * C))
    : mk("R", [C, C], rng.normal(C * C, 0.2));
  const L = BLOCKS.map((l) => mk(`L${l}`, [2], new Float32Array([0.5 + rng.next(), rng.next()])));
  const W = BLOCKS.map((l) => mk(`W${l}`, [C], rng.uniform(C, 0.5, 1.5)));
  const B = BLOCKS.map((l) => mk(`B${l}`, [C], rng.uniform(C, -0.2, 0.2)));
  const dy = be.upload(rng.normal(N * C), [N, C]);
  const params = [X0, R, ...L, ...W, ...B];
  const run = (fused: boolean) => {
    const g = new Graph(be);
    g.precision = precision;
    for (const p of params) p.zeroGrad();
    const x0 = g.tanh(g.param(X0));
    let x = x0, branch: Var | null = null;
    const outs: Var[] = [];
    for (const l of BLOCKS) {
      const lam = g.param(L[l]), [w, b] = [g.param(W[l]), g.param(B[l])];
      const [a0, a1] = [g.scalarOf(lam, 0), g.scalarOf(lam, 1)];
      let h: Var;
      if (fused) [x, h] = g.mixLayernorm(x, branch, a0, x0, a1, w, b);
      else {
        x = g.axpby(a0, branch ? g.add(x, branch) : x, a1, x0);
        h = g.layernorm(x, w, b);
      }
      outs.push(h);
      branch = branchOp === "mul"
        ? g.mul(g.tanh(h), g.param(R))
        : g.matmul(g.tanh(h), g.param(R), true);
    }
    const out = g.add(g.add(x, branch!), outs[BLOCKS.length - 1]);
    be.k.mn_memcpy_d2d(g.grad(out), dy.ptr, BigInt(dy.nbytes), be.stream);
    const vals = [out, x, ...outs].map((v) => be.downloadF32(v.t));
    g.backward();
    g.release();
    return [...vals, ...params.map((p) => be.downloadF32(p.grad))];
  };
  const k = be.k as unknown as Record<string, (...a: unknown[]) => number>;
  const fusedBwd = k.mn_mix_layernorm_backward;
  let calls = 0, inPlace = 0, callsUnfused = 0;
  const addr = (p: unknown) => p && Deno.UnsafePointer.value(p as Deno.PointerObject);
  k.mn_mix_layernorm_backward = (...a) => {
    calls++;
    if (a[0] && addr(a[0]) === addr(a[8])) inPlace++; // ds over g_in
    return fusedBwd(...a);
  };
  try {
    const want = run(false);
    callsUnfused = calls;
    const got = run(true);
    return { want, got, calls: calls - callsUnfused, callsUnfused, inPlace };
  } finally {
    k.mn_mix_layernorm_backward = fusedBwd;
  }
}
for (const name of ["cpu", "emu"] as const) {
  for (const precision of ["f32", "bf16"] as const) {
    for (const branchOp of ["mul", "matmul"] as const) {
      Deno.test(`Graph.mixLayernorm (${precision}, ${branchOp} branch): values and gradients as add, axpby, layernorm (${name})`, () => {
        const { want, got, calls, callsUnfused, inPlace } = runMixLayernorm(
          backend(name),
          precision,
          branchOp,
          new Rng(SEED),
        );
        assert.equal(callsUnfused, 0, "the generic composition calls the fused backward");
        assert.equal(calls, precision === "bf16" ? BLOCKS.length : 0, "fused backward calls");
        // the later blocks' x_out gradients are theirs alone by then (the first writes x0's)
        assert.equal(inPlace, precision === "bf16" ? 2 : 0, "ds written over g_in");
        got.forEach((v, i) => {
          assert.ok(v.some((e) => e !== 0), `${name}: output ${i} is all zero`);
          const what = `${name} ${precision} output ${i} ${MIX_OUTPUTS}`;
          // the cpu's fused reference is the composition, bit for bit
          if (precision === "f32" || i < 2 + BLOCKS.length || name === "cpu") {
            compare(what, v, want[i], EXACT);
          } else if (MIX_LAMBDA_GRADS.includes(i)) {
            const rel = relErr(v, want[i]), abs = maxAbsDiff(v, want[i]);
            assert.ok(
              rel <= MIX_LAMBDA.rel || abs <= MIX_LAMBDA.atol,
              `${what}: relative ${rel} > ${MIX_LAMBDA.rel} and absolute ${abs} > ${MIX_LAMBDA.atol} (replay with MN_TEST_SEED=${SEED})`,
            );
          } else compareRel(what, v, want[i], MIX_BF16_REL[branchOp]);
        });
      });
    }
  }
}

// Backward: statistics come from the cpu's forward on both backends (the same saved mean/rstd,
// as in training). Grads start non-zero and backward runs twice (+= semantics). dweight/dbias sum
// up to 2 x 64 rows of O(1..10) terms in another fp32 order than the double reference (measured
// max error 4e-6 at [64,1000], a quarter of the fp32 limit), so a little more atol: 2e-5.
const TOL_SUM: Tol = { atol: 2e-5, rtol: 1e-5 };
checkKernel({
  name: "layernorm_backward",
  configs,
  label,
  tol: { dinp: TOL_F32, dweight: TOL_SUM, dbias: TOL_SUM },
  run(be, { N, C }, rng) {
    const x = rowsOf(rng, N, C), w = rng.normal(C), b = rng.normal(C), dout = rng.normal(N * C);
    const ref = backend("cpu");
    const stats = withTensors(
      ref,
      lnInputs(x, w, b, N, C),
      lnOutputs(N, C),
      (t) => lnForward(ref, t, N, C),
    );
    const init = { dinp: rng.normal(N * C), dweight: rng.normal(C), dbias: rng.normal(C) };
    return withTensors(be, {
      x: { data: x, shape: [N, C] },
      w: { data: w, shape: [C] },
      dout: { data: dout, shape: [N, C] },
      mean: { data: stats.mean, shape: [N] },
      rstd: { data: stats.rstd, shape: [N] },
    }, {
      dinp: { shape: [N, C], init: init.dinp },
      dweight: { shape: [C], init: init.dweight },
      dbias: { shape: [C], init: init.dbias },
    }, (t) => {
      for (let rep = 0; rep < 2; rep++) lnBackward(be, t, N, C);
    });
  },
});

// ---- RWKV-7's mix + ln1 backward (mn_mix_layernorm_backward)
// Three calls per shape, each the way a tape may make it: "inplace" (a branch, ds written over
// g_in's buffer, its bf16 rounding for the branch, dx0 and the parameter gradients added into),
// "first" (the first block: no branch, x is x0, so ds == dx0: ds overwrites a NaN-poisoned
// buffer and dx0's term adds to it, g_in NULL, every parameter gradient overwritten over NaN) and
// "apart" (a branch, g_in its own input, ds and dx0 overwritten over NaN, no bf16). The saved
// statistics come from the cpu's forward on every backend, as in training.
const MIXB_MODES = ["inplace", "first", "apart"] as const;
type MixbMode = typeof MIXB_MODES[number];
/** accumulate bits: ds 0, ds_bf16 1, dx0 2, dweight 3, dbias 4, da 5, db 6 */
const MIXB_ACC: Record<MixbMode, number> = { inplace: 0b1111100, first: 0b100, apart: 0 };
function mixbInputs(rng: Rng, N: number, C: number) {
  return {
    x: rowsOf(rng, N, C),
    br: rowsOf(rng, N, C),
    x0: rowsOf(rng, N, C),
    w: rng.normal(C),
    b: rng.normal(C),
    dout: rng.normal(N * C),
    gin: rng.normal(N * C),
    // lambdas away from 0 and 1, so both products round
    ab: new Float32Array([0.5 + rng.next(), rng.next() - 0.5]),
    init: { dx0: rng.normal(N * C), dw: rng.normal(C), db: rng.normal(C), dab: rng.normal(2) },
  };
}
type MixbIn = ReturnType<typeof mixbInputs>;
/** the forward's x_out, mean, rstd of mode m on the cpu */
function mixbStats(m: MixbMode, v: MixbIn, N: number, C: number) {
  const ref = backend("cpu");
  return withTensors(
    ref,
    {
      x: { data: v.x, shape: [N, C] },
      br: { data: v.br, shape: [N, C] },
      x0: { data: v.x0, shape: [N, C] },
      ab: { data: v.ab, shape: [2] },
      w: { data: v.w, shape: [C] },
      b: { data: v.b, shape: [C] },
    },
    { xo: { shape: [N, C] }, out: { shape: [N, C] }, mean: { shape: [N] }, rstd: { shape: [N] } },
    (t) =>
      ref.k.mn_mix_layernorm_forward(
        null,
        t.xo.ptr,
        t.out.ptr,
        t.mean.ptr,
        t.rstd.ptr,
        t.x.ptr,
        m === "first" ? null : t.br.ptr,
        m === "first" ? t.x.ptr : t.x0.ptr,
        t.ab.rows(0, 1).ptr,
        t.ab.rows(1, 1).ptr,
        t.w.ptr,
        t.b.ptr,
        N,
        C,
        EPS,
        ref.stream,
      ),
  );
}
/** mode m's inputs and gradient buffers on be: ds (fp32; in place: holding g_in), dsb (bf16),
 * dx0, dw, db [C] and dab [2] (da, db), initialised where m adds into them, else poisoned */
function withMixb(
  be: Backend,
  m: MixbMode,
  v: MixbIn,
  N: number,
  C: number,
  fn: (t: Named) => void,
) {
  const s = mixbStats(m, v, N, C);
  const acc = m === "inplace";
  return withTensors(be, {
    x: { data: v.x, shape: [N, C] },
    br: { data: v.br, shape: [N, C] },
    x0: { data: v.x0, shape: [N, C] },
    ab: { data: v.ab, shape: [2] },
    w: { data: v.w, shape: [C] },
    dout: { data: v.dout, shape: [N, C] },
    gin: { data: v.gin, shape: [N, C] },
    xo: { data: s.xo, shape: [N, C] },
    mean: { data: s.mean, shape: [N] },
    rstd: { data: s.rstd, shape: [N] },
  }, {
    ds: { shape: [N, C], init: acc ? v.gin : undefined },
    dsb: { shape: [N, C], dtype: "bf16" },
    dx0: { shape: [N, C], init: acc ? v.init.dx0 : undefined },
    dw: { shape: [C], init: acc ? v.init.dw : undefined },
    db: { shape: [C], init: acc ? v.init.db : undefined },
    dab: { shape: [2], init: acc ? v.init.dab : undefined },
  }, fn);
}
const mixbFused = (be: Backend, m: MixbMode, t: Named, N: number, C: number) =>
  be.k.mn_mix_layernorm_backward(
    m === "first" ? t.dx0.ptr : t.ds.ptr,
    m === "inplace" ? t.dsb.ptr : null,
    t.dx0.ptr,
    t.dw.ptr,
    t.db.ptr,
    t.dab.rows(0, 1).ptr,
    t.dab.rows(1, 1).ptr,
    t.dout.ptr,
    m === "first" ? null : m === "inplace" ? t.ds.ptr : t.gin.ptr,
    t.xo.ptr,
    t.x.ptr,
    m === "first" ? null : t.br.ptr,
    m === "first" ? t.x.ptr : t.x0.ptr,
    t.ab.rows(0, 1).ptr,
    t.ab.rows(1, 1).ptr,
    t.w.ptr,
    t.mean.ptr,
    t.rstd.ptr,
    N,
    C,
    MIXB_ACC[m],
    be.stream,
  );
/** mode m's outputs under names prefixed with the mode ("first": ds is dx0) */
function mixbOutputs(m: MixbMode, r: Record<string, Float32Array | Int32Array>) {
  const keys = m === "inplace" ? ["ds", "dsb", "dx0"] : m === "first" ? ["dx0"] : ["ds", "dx0"];
  const out: Record<string, Float32Array> = {};
  for (const k of [...keys, "dw", "db", "dab"]) out[`${m}.${k}`] = r[k] as Float32Array;
  return out;
}

// emu (cuda) vs cpu. ds, dx0: LayerNorm's dinp (TOL_F32, as layernorm_backward's) plus g_in,
// times a lambda. dsb: one bf16 rounding of ds, which may round the other way when the two fp32
// values straddle a rounding boundary: one bf16 ulp, at most 2^-7 relative. dw, db:
// layernorm_backward's TOL_SUM. dab: sums over all N * C elements of g * s and g * x0 in another
// fp32 order than the double reference. Measured on emu, seeds 1-12, the largest error over the
// tolerance: ds 0.033, dx0 0.030, dw 0.14, db 0.093, dab 0.20 (all at [64,1000]), dsb 0.74 (a
// one-ulp flip).
const MIXB_TOL_DAB: Tol = { atol: 2e-3, rtol: 2e-5 };
checkKernel({
  name: "mix_layernorm_backward",
  configs,
  label,
  tol: Object.fromEntries(MIXB_MODES.flatMap((m) => [
    [`${m}.ds`, TOL_F32],
    [`${m}.dsb`, { atol: 1e-6, rtol: 2 ** -7 }],
    [`${m}.dx0`, TOL_F32],
    [`${m}.dw`, TOL_SUM],
    [`${m}.db`, TOL_SUM],
    [`${m}.dab`, MIXB_TOL_DAB],
  ])),
  run(be, { N, C }, rng) {
    const v = mixbInputs(rng, N, C);
    const res: Record<string, Float32Array> = {};
    for (const m of MIXB_MODES) {
      const r = withMixb(be, m, v, N, C, (t) => mixbFused(be, m, t, N, C));
      Object.assign(res, mixbOutputs(m, r));
    }
    for (const [k, a] of Object.entries(res)) {
      assert.ok(!a.some(Number.isNaN), `mix_layernorm_backward ${k}: NaN (a poisoned output read)`);
    }
    return res;
  },
});

// cpu: the fused reference against the composition it replaces, mn_layernorm_backward (its dinp
// added to g_in) then mn_axpby_backward (x = x + branch from mn_add, y = x0) and the cast of ds:
// the same products and sums in the same order, so bit for bit.
Deno.test("mix_layernorm_backward: cpu = layernorm_backward, axpby_backward (and the cast), bit for bit", () => {
  const be = backend("cpu"), k = be.k, st = be.stream;
  for (const { N, C } of configs) {
    const v = mixbInputs(new Rng(SEED + N * C), N, C);
    for (const m of MIXB_MODES) {
      const fused = withMixb(be, m, v, N, C, (t) => mixbFused(be, m, t, N, C));
      const comp = withMixb(be, m, v, N, C, (t) => {
        const n = BigInt(N * C), acc = MIXB_ACC[m];
        const sum = be.alloc([N, C]), g = be.alloc([N, C]);
        try {
          // x_out's gradient: g_in plus LayerNorm's dinp (in place, "inplace": ds holds g_in)
          const gin = m === "inplace" ? t.ds : m === "apart" ? t.gin : null;
          if (gin) k.mn_memcpy_d2d(g.ptr, gin.ptr, BigInt(g.nbytes), st);
          k.mn_layernorm_backward(
            g.ptr,
            t.dw.ptr,
            t.db.ptr,
            t.dout.ptr,
            t.xo.ptr,
            t.w.ptr,
            t.mean.ptr,
            t.rstd.ptr,
            N,
            C,
            (gin ? 1 : 0) | (acc >> 3 & 3) << 1,
            st,
          );
          if (m !== "first") k.mn_add(sum.ptr, t.x.ptr, t.br.ptr, n, st);
          const first = m === "first";
          k.mn_axpby_backward(
            first ? t.dx0.ptr : t.ds.ptr,
            t.dx0.ptr,
            t.dab.rows(0, 1).ptr,
            t.dab.rows(1, 1).ptr,
            g.ptr,
            first ? t.x.ptr : sum.ptr,
            first ? t.x.ptr : t.x0.ptr,
            t.ab.rows(0, 1).ptr,
            t.ab.rows(1, 1).ptr,
            n,
            (acc & 1) | (acc >> 2 & 1) << 1 | (acc >> 5 & 3) << 2,
            st,
          );
          if (m === "inplace") k.mn_cast_f32_to_bf16(t.dsb.ptr, t.ds.ptr, n, st);
        } finally {
          be.free(sum);
          be.free(g);
        }
      });
      const [a, b] = [mixbOutputs(m, fused), mixbOutputs(m, comp)];
      for (const key of Object.keys(a)) compare(`[${N},${C}] ${key}`, a[key], b[key], EXACT);
    }
  }
});

Deno.test("mix_layernorm_backward: bad arguments are one-line errors", () => {
  for (const name of ["cpu", "emu"] as const) {
    const be = backend(name), k = be.k, st = be.stream;
    withTensors(be, {}, {
      p: { shape: [8] },
      q: { shape: [8] },
      r: { shape: [8] },
      u: { shape: [8] },
      v: { shape: [8] },
      h: { shape: [8], dtype: "bf16" },
    }, (t) => {
      const [p, q, r, u, v, h] = [t.p.ptr, t.q.ptr, t.r.ptr, t.u.ptr, t.v.ptr, t.h.ptr];
      const [a1, a2] = [t.v.rows(1, 1).ptr, t.v.rows(2, 1).ptr];
      // ds, ds_bf16, dx0, dweight, dbias, da, db; dout, g_in; inputs (f); C; accumulate
      const call = (
        ds: Deno.PointerValue,
        dsb: Deno.PointerValue,
        dx0: Deno.PointerValue,
        dw: Deno.PointerValue,
        da: Deno.PointerValue,
        db: Deno.PointerValue,
        gin: Deno.PointerValue,
        C: number,
        acc: number,
      ) =>
        k.mn_mix_layernorm_backward(
          ds,
          dsb,
          dx0,
          dw,
          u,
          da,
          db,
          p,
          gin,
          p,
          p,
          p,
          p,
          p,
          p,
          p,
          p,
          p,
          2,
          C,
          acc,
          st,
        );
      const cases: [() => unknown, RegExp][] = [
        [() => call(q, null, null, null, a1, a2, null, 4, 0), /NULL pointer argument/],
        [() => call(q, null, null, r, a1, a2, null, 0, 0), /bad shape N = 2, C = 0/],
        [() => call(q, null, null, r, a1, a2, null, 1025, 0), /C must be in \[1, 1024\]/],
        [() => call(q, h, null, r, a1, a2, null, 4, 2), /a bf16 ds_bf16 is overwritten/],
        [() => call(q, null, q, r, a1, a2, null, 4, 0), /ds == dx0 .*bit 2 must be set/],
        [() => call(q, null, null, r, a1, a1, null, 4, 0), /da == db .*bit 6 must be set/],
        [() => call(q, null, null, u, a1, a2, null, 4, 0), /dweight and dbias must not alias/],
        [() => call(p, null, null, r, a1, a2, null, 4, 0), /aliases an input other than g_in/],
        [() => call(q, null, v, r, a1, a2, v, 4, 0), /dx0 must not alias g_in/],
        [() => call(q, h, null, r, a1, a2, h, 4, 0), /ds_bf16 aliases another tensor/],
      ];
      for (const [fn, re] of cases) {
        assert.throws(fn, new RegExp("mix_layernorm_backward: .*" + re.source), `${name}: ${re}`);
      }
    });
  }
});

checkKernel({
  name: "rmsnorm_forward",
  configs,
  label,
  tol: TOL_F32,
  run(be, { N, C }, rng) {
    const x = rowsOf(rng, N, C);
    return withTensors(be, { x: { data: x, shape: [N, C] } }, {
      out: { shape: [N, C] },
      rstd: { shape: [N] },
    }, (t) => rmsForward(be, t, N, C));
  },
});

checkKernel({
  name: "rmsnorm_backward",
  configs,
  label,
  tol: TOL_F32,
  run(be, { N, C }, rng) {
    const x = rowsOf(rng, N, C), dout = rng.normal(N * C);
    const ref = backend("cpu");
    const stats = withTensors(ref, { x: { data: x, shape: [N, C] } }, {
      out: { shape: [N, C] },
      rstd: { shape: [N] },
    }, (t) => rmsForward(ref, t, N, C));
    return withTensors(
      be,
      {
        x: { data: x, shape: [N, C] },
        dout: { data: dout, shape: [N, C] },
        rstd: { data: stats.rstd, shape: [N] },
      },
      { dinp: { shape: [N, C], init: rng.normal(N * C) } },
      (t) => {
        rmsBackward(be, t, N, C);
        rmsBackward(be, t, N, C);
      },
    );
  },
});

// ---- cpu reference vs the float64 definitions and finite differences
// Forward: fp32 inputs, double statistics, one fp32 rounding of the output: 1e-6 relative.
const TOL_FWD64: Tol = { atol: 1e-6, rtol: 1e-6 };
// Backward vs central differences (h = 1e-6, float64): the reference rounds the saved mean/rstd
// and each gradient to fp32 (~1e-7 relative), the difference quotient adds ~1e-9; 1e-5 is slack.
const TOL_GRAD: Tol = { atol: 1e-5, rtol: 1e-5 };

const sub = (a: ArrayLike<number>, b: ArrayLike<number>) =>
  Float64Array.from(a, (v, i) => v - b[i]);

Deno.test("layernorm: cpu matches float64 forward and finite-difference gradients (accumulating)", () => {
  const be = backend("cpu");
  for (const { N, C } of [{ N: 3, C: 17 }, { N: 2, C: 1 }, { N: 4, C: 40 }]) {
    const rng = new Rng(7 * N + C);
    const x = rowsOf(rng, N, C), w = rng.normal(C), b = rng.normal(C), dout = rng.normal(N * C);
    const init = { dinp: rng.normal(N * C), dweight: rng.normal(C), dbias: rng.normal(C) };
    const r = withTensors(be, { ...lnInputs(x, w, b, N, C), dout: { data: dout, shape: [N, C] } }, {
      ...lnOutputs(N, C),
      dinp: { shape: [N, C], init: init.dinp },
      dweight: { shape: [C], init: init.dweight },
      dbias: { shape: [C], init: init.dbias },
    }, (t) => {
      lnForward(be, t, N, C);
      lnBackward(be, t, N, C);
    });
    const [x64, w64, b64] = [f64(x), f64(w), f64(b)];
    const want = layernorm64(x64, w64, b64, N, C, EPS);
    compare(`[${N},${C}] out`, r.out, want.out, TOL_FWD64);
    compare(`[${N},${C}] mean`, r.mean, want.mean, TOL_FWD64);
    compare(`[${N},${C}] rstd`, r.rstd, want.rstd, TOL_FWD64);
    const gx = numericalGrad((v) => layernorm64(v, w64, b64, N, C, EPS).out, x64, dout);
    const gw = numericalGrad((v) => layernorm64(x64, v, b64, N, C, EPS).out, w64, dout);
    const gb = numericalGrad((v) => layernorm64(x64, w64, v, N, C, EPS).out, b64, dout);
    compare(`[${N},${C}] dinp`, sub(r.dinp, init.dinp), gx, TOL_GRAD);
    compare(`[${N},${C}] dweight`, sub(r.dweight, init.dweight), gw, TOL_GRAD);
    compare(`[${N},${C}] dbias`, sub(r.dbias, init.dbias), gb, TOL_GRAD);
  }
});

Deno.test("rmsnorm: cpu matches float64 forward and finite-difference gradients (accumulating)", () => {
  const be = backend("cpu");
  for (const { N, C } of [{ N: 3, C: 17 }, { N: 2, C: 1 }, { N: 4, C: 40 }]) {
    const rng = new Rng(11 * N + C);
    const x = rowsOf(rng, N, C), dout = rng.normal(N * C), init = rng.normal(N * C);
    const r = withTensors(be, {
      x: { data: x, shape: [N, C] },
      dout: { data: dout, shape: [N, C] },
    }, {
      out: { shape: [N, C] },
      rstd: { shape: [N] },
      dinp: { shape: [N, C], init },
    }, (t) => {
      rmsForward(be, t, N, C);
      rmsBackward(be, t, N, C);
    });
    const x64 = f64(x);
    const want = rmsnorm64(x64, N, C, EPS);
    compare(`[${N},${C}] out`, r.out, want.out, TOL_FWD64);
    compare(`[${N},${C}] rstd`, r.rstd, want.rstd, TOL_FWD64);
    const gx = numericalGrad((v) => rmsnorm64(v, N, C, EPS).out, x64, dout);
    compare(`[${N},${C}] dinp`, sub(r.dinp, init), gx, TOL_GRAD);
  }
});

Deno.test("norms: NULL pointers, non-positive sizes and a bad eps are clear errors", () => {
  for (const name of ["cpu", "emu"] as const) {
    const be = backend(name);
    const a = be.zeros([2, 4]), b = be.zeros([2, 4]), w = be.zeros([4]), s = be.zeros([2]);
    const k = be.k, st = be.stream;
    try {
      const cases: [() => void, RegExp][] = [
        [
          () => k.mn_layernorm_forward(a.ptr, s.ptr, null, b.ptr, w.ptr, w.ptr, 2, 4, EPS, st),
          /mn_layernorm_forward .*layernorm_forward: NULL pointer/,
        ],
        [
          () => k.mn_layernorm_forward(a.ptr, s.ptr, s.ptr, b.ptr, w.ptr, w.ptr, 0, 4, EPS, st),
          /mn_layernorm_forward .*bad shape N = 0, C = 4/,
        ],
        [
          () => k.mn_layernorm_forward(a.ptr, s.ptr, s.ptr, b.ptr, w.ptr, w.ptr, 2, 4, -1, st),
          /mn_layernorm_forward .*eps = -1 must be >= 0/,
        ],
        [
          () =>
            k.mn_layernorm_backward(
              a.ptr,
              w.ptr,
              null,
              b.ptr,
              b.ptr,
              w.ptr,
              s.ptr,
              s.ptr,
              2,
              4,
              -1,
              st,
            ),
          /mn_layernorm_backward .*NULL pointer/,
        ],
        [
          () =>
            k.mn_layernorm_backward(
              a.ptr,
              w.ptr,
              w.ptr,
              b.ptr,
              b.ptr,
              w.ptr,
              s.ptr,
              s.ptr,
              2,
              -4,
              -1,
              st,
            ),
          /mn_layernorm_backward .*bad shape N = 2, C = -4/,
        ],
        [
          () => k.mn_rmsnorm_forward(null, s.ptr, b.ptr, 2, 4, EPS, st),
          /mn_rmsnorm_forward .*rmsnorm_forward: NULL pointer/,
        ],
        [
          () => k.mn_rmsnorm_forward(a.ptr, s.ptr, b.ptr, 2, 0, EPS, st),
          /mn_rmsnorm_forward .*bad shape N = 2, C = 0/,
        ],
        [
          () => k.mn_rmsnorm_forward(a.ptr, s.ptr, b.ptr, 2, 4, NaN, st),
          /mn_rmsnorm_forward .*eps = nan must be >= 0/,
        ],
        [
          () => k.mn_rmsnorm_backward(a.ptr, b.ptr, b.ptr, null, 2, 4, -1, st),
          /mn_rmsnorm_backward .*NULL pointer/,
        ],
        [
          () => k.mn_rmsnorm_backward(a.ptr, b.ptr, b.ptr, s.ptr, -1, 4, -1, st),
          /mn_rmsnorm_backward .*bad shape N = -1/,
        ],
      ];
      for (const [fn, re] of cases) assert.throws(fn, re, `${name}: ${re}`);
    } finally {
      for (const t of [a, b, w, s]) be.free(t);
    }
  }
});

Deno.test({
  name: "norms: cuda backward is bit-identical run to run (deterministic reductions)",
  ignore: !HAS_GPU,
  fn() {
    const be = backend("cuda");
    const N = 4096, C = 768, rng = new Rng(5);
    const x = rowsOf(rng, N, C), w = rng.normal(C), b = rng.normal(C), dout = rng.normal(N * C);
    const runOnce = () =>
      withTensors(be, { ...lnInputs(x, w, b, N, C), dout: { data: dout, shape: [N, C] } }, {
        ...lnOutputs(N, C),
        dinp: { shape: [N, C], init: new Float32Array(N * C) },
        dweight: { shape: [C], init: new Float32Array(C) },
        dbias: { shape: [C], init: new Float32Array(C) },
      }, (t) => {
        lnForward(be, t, N, C);
        lnBackward(be, t, N, C);
        be.sync();
      });
    const r1 = runOnce(), r2 = runOnce();
    for (const key of Object.keys(r1)) compare(`run-to-run ${key}`, r2[key], r1[key], EXACT);
  },
});

// A bf16 dout (the gradient the next matmul's backward GEMM wrote in bf16) is read as its values:
// mn_layernorm_backward_bf16 = mn_layernorm_backward on the widened dout, bit for bit, adding into
// the gradients (accumulate all) and overwriting NaN-poisoned ones (none).
for (const name of ["cpu", "emu", "cuda"] as const) {
  Deno.test({
    name: `layernorm_backward_bf16: the fp32 backward on the widened dout, bit for bit (${name})`,
    ignore: name === "cuda" && !HAS_GPU,
    fn: () => lnBackwardBf16(backend(name), name),
  });
}
function lnBackwardBf16(be: Backend, name: string) {
  for (const [N, C] of [[1, 1], [3, 17], [5, 768], [40, 1000]]) {
    const rng = new Rng(8000 + N);
    const x = rng.normal(N * C), w = rng.normal(C), b = rng.normal(C);
    const dout = bf16ToF32(f32ToBf16(rng.normal(N * C))), init = rng.normal(N * C + 2 * C);
    for (const acc of [-1, 0]) {
      const run = (bf16: boolean) =>
        withTensors(be, {
          x: { data: x, shape: [N, C] },
          w: { data: w, shape: [C] },
          b: { data: b, shape: [C] },
          dout: bf16
            ? { data: f32ToBf16(dout), shape: [N, C], dtype: "bf16" }
            : { data: dout, shape: [N, C] },
        }, {
          out: { shape: [N, C] },
          mean: { shape: [N] },
          rstd: { shape: [N] },
          dinp: acc ? { shape: [N * C], init: init.slice(0, N * C) } : { shape: [N * C] },
          dweight: acc ? { shape: [C], init: init.slice(N * C, N * C + C) } : { shape: [C] },
          dbias: acc ? { shape: [C], init: init.slice(N * C + C) } : { shape: [C] },
        }, (t) => {
          lnForward(be, t, N, C);
          const bwd = bf16 ? be.k.mn_layernorm_backward_bf16 : be.k.mn_layernorm_backward;
          const p = [t.dinp, t.dweight, t.dbias, t.dout, t.x, t.w, t.mean, t.rstd].map((v) =>
            v.ptr
          );
          bwd(...p, N, C, acc, be.stream);
        });
      const want = run(false), got = run(true);
      for (const k of ["dinp", "dweight", "dbias"]) {
        compare(`${name} [${N},${C}] acc ${acc} ${k}`, got[k], want[k], EXACT);
      }
    }
  }
}
