// The GPT-2 fused chains (gpt2_fused.cu): emu (and cuda) against the cpu reference, and the fused
// kernels against the unfused composition of generic kernels they replace, on the same backend.
import type { Backend, Tensor } from "./backend.ts";
import {
  backend,
  checkKernel,
  compare,
  EXACT,
  Rng,
  targetName,
  targets,
  type Tol,
  TOL_BF16,
  TOL_F32,
  VARIANT,
  withTensors,
} from "./test/harness.ts";

interface Cfg {
  N: number;
  C: number;
  kind: Kind;
}
// mix: the blocks' lambdas (x and y distinct); same: the first block, where x and y are one tensor
// (x0 = x); residual: x + att, constant [1, 1], no scalar gradients; nodxo: no gradient reached
// x_out from later ops (dx_out NULL).
type Kind = "mix" | "same" | "residual" | "nodxo";
const KINDS: Kind[] = ["mix", "same", "residual", "nodxo"];
// C: one element, less than a warp, ragged, the GPT width, over one 256-thread pass; N: one row
// up to more rows than the backward's 1024 blocks (several rows per block, a short last block).
const SHAPES: [number, number][] = [[1, 1], [3, 17], [5, 768], [64, 1000], [2100, 33]];
const shapes = VARIANT ? SHAPES.filter(([N, C]) => N * C <= 2000) : SHAPES;
// the emulator runs one thread per CUDA thread: the largest shape (2100 blocks) in one kind only
const configs: Cfg[] = shapes.flatMap(([N, C]) =>
  (N > 1000 ? ["mix" as Kind] : KINDS).map((kind) => ({ N, C, kind }))
);
const label = ({ N, C, kind }: Cfg) => `[${N},${C}] ${kind}`;
const EPS = 1.1920928955078125e-7; // the tape's rmsnorm eps

/** rows with a per-row offset and scale, so the rms differs from row to row */
function rowsOf(rng: Rng, N: number, C: number): Float32Array {
  const x = rng.normal(N * C);
  for (let i = 0; i < N; i++) {
    const off = 2 * (rng.next() - 0.5), sc = 0.5 + 2 * rng.next();
    for (let c = 0; c < C; c++) x[i * C + c] = off + sc * x[i * C + c];
  }
  return x;
}
const abOf = (rng: Rng, kind: Kind) =>
  kind === "residual" ? new Float32Array([1, 1]) : new Float32Array([
    0.5 + rng.next(),
    rng.next() - 0.5,
  ]);

type Named = Record<string, Tensor>;
const yPtr = (t: Named, kind: Kind) => (kind === "same" ? t.x.ptr : t.y.ptr);
function forward(be: Backend, t: Named, { N, C, kind }: Cfg) {
  be.k.mn_mix_rmsnorm_forward(
    t.x_out.ptr,
    t.out_f32.ptr,
    t.out_bf16.ptr,
    t.rstd.ptr,
    t.x.ptr,
    yPtr(t, kind),
    t.ab.ptr,
    N,
    C,
    EPS,
    be.stream,
  );
}
function backward(be: Backend, t: Named, { N, C, kind }: Cfg, accumulate: number) {
  be.k.mn_mix_rmsnorm_backward(
    t.dx.ptr,
    kind === "same" ? t.dx.ptr : t.dy.ptr,
    kind === "residual" ? null : t.dab.ptr,
    kind === "nodxo" ? null : t.dx_out.ptr,
    t.dnorm.ptr,
    t.x_out.ptr,
    t.rstd.ptr,
    t.x.ptr,
    yPtr(t, kind),
    t.ab.ptr,
    N,
    C,
    accumulate,
    be.stream,
  );
}

interface Inputs {
  x: Float32Array;
  y: Float32Array;
  ab: Float32Array;
}
function inputsOf(rng: Rng, { N, C, kind }: Cfg): Inputs {
  return { x: rowsOf(rng, N, C), y: rowsOf(rng, N, C), ab: abOf(rng, kind) };
}
const upload = (inp: Inputs, N: number, C: number) => ({
  x: { data: inp.x, shape: [N, C] },
  y: { data: inp.y, shape: [N, C] },
  ab: { data: inp.ab, shape: [2] },
});

// Forward: x_out is one fp32 multiply-add per element on both (nvcc may contract it to an fma:
// one rounding less); the statistics are fp32 block sums against double sums.
checkKernel({
  name: "mix_rmsnorm_forward",
  configs,
  label,
  tol: { x_out: TOL_F32, out_f32: TOL_F32, out_bf16: TOL_BF16, rstd: TOL_F32 },
  run(be, cfg, rng) {
    const { N, C } = cfg;
    return withTensors(be, upload(inputsOf(rng, cfg), N, C), {
      x_out: { shape: [N, C] },
      out_f32: { shape: [N, C] },
      out_bf16: { shape: [N, C], dtype: "bf16" },
      rstd: { shape: [N] },
    }, (t) => forward(be, t, cfg));
  },
});

/** the saved forward values (the cpu's, as norm_test does) and the upstream gradients */
function backwardCase(rng: Rng, cfg: Cfg) {
  const { N, C } = cfg;
  const inp = inputsOf(rng, cfg);
  const ref = backend("cpu");
  const saved = withTensors(ref, upload(inp, N, C), {
    x_out: { shape: [N, C] },
    out_f32: { shape: [N, C] },
    out_bf16: { shape: [N, C], dtype: "bf16" },
    rstd: { shape: [N] },
  }, (t) => forward(ref, t, cfg));
  return {
    inputs: {
      ...upload(inp, N, C),
      x_out: { data: saved.x_out, shape: [N, C] },
      rstd: { data: saved.rstd, shape: [N] },
      dx_out: { data: rng.normal(N * C), shape: [N, C] },
      dnorm: { data: rng.normal(N * C), shape: [N, C] },
    },
    init: { dx: rng.normal(N * C), dy: rng.normal(N * C), dab: rng.normal(2) },
  };
}

// The scalar gradients sum N*C terms of O(1) in another order than the double reference (measured
// max |error| 3.1e-5 at [2100,33] = 69,300 terms whose sums are ~200: ~1.5e-7 relative); bound
// 1e-5 relative to the sum plus 1e-6 * sqrt(N*C) absolute, margin > 4x at every shape.
const tolDab = ({ N, C }: Cfg): Tol => ({ atol: 1e-6 * Math.sqrt(N * C), rtol: 1e-5 });
const TOL_DAB = tolDab({ N: 2100, C: 33, kind: "mix" }); // the largest shape's
// dx, dy: one row sum of C terms and a cancellation r (dnorm - x_out k), O(1): a few fp32 ulps.
const TOL_DX: Tol = { atol: 2e-5, rtol: 2e-5 };
for (const acc of [-1, 0]) {
  checkKernel({
    name: `mix_rmsnorm_backward (accumulate ${acc === -1 ? "all" : "none, outputs poisoned"})`,
    configs,
    label,
    tol: { dx: TOL_DX, dy: TOL_DX, dab: TOL_DAB },
    run(be, cfg, rng) {
      const { N, C } = cfg;
      const c = backwardCase(rng, cfg);
      // accumulate 0: no init, so the outputs start as NaN (harness poison) and must be written
      // without being read
      const out = (name: "dx" | "dy" | "dab", shape: number[]) =>
        acc === -1 ? { shape, init: c.init[name] } : { shape };
      const res: Record<string, ArrayLike<number>> = withTensors(be, c.inputs, {
        dx: out("dx", [N, C]),
        dy: out("dy", [N, C]),
        dab: out("dab", [2]),
      }, (t) => backward(be, t, cfg, acc));
      // what this kind leaves alone (dy is dx; constant ab) is not compared
      if (cfg.kind === "same") delete res.dy;
      if (cfg.kind === "residual") delete res.dab;
      return res;
    },
  });
}

// ---- fused vs the unfused composition it replaces, on one backend (emu; cuda with a GPU):
// forward axpby (or add) -> rmsnorm -> cast; backward rmsnorm_backward into dx_out, then
// axpby_backward (or two axpys). Every element is rounded the same way, so the outputs are
// bit-identical; only the scalar gradients' sums run in another order.
for (const tgt of targets()) {
  if (tgt.name === "cpu") continue;
  const tname = targetName(tgt);
  Deno.test({
    name: `mix_rmsnorm: fused == unfused generic kernels (${tname})`,
    ignore: !tgt.run,
    fn() {
      const be = backend(tgt.name, tgt.variant);
      configs.filter((c) => c.N <= 1000).forEach((cfg, ci) => {
        const { N, C, kind } = cfg;
        const rng = new Rng(1000 + ci);
        const inp = inputsOf(rng, cfg);
        const dxo = rng.normal(N * C), dn = rng.normal(N * C);
        const n = BigInt(N * C);
        const fused = withTensors(be, {
          ...upload(inp, N, C),
          dx_out: { data: dxo, shape: [N, C] },
          dnorm: { data: dn, shape: [N, C] },
        }, {
          x_out: { shape: [N, C] },
          out_f32: { shape: [N, C] },
          out_bf16: { shape: [N, C], dtype: "bf16" },
          rstd: { shape: [N] },
          dx: { shape: [N, C], init: new Float32Array(N * C) },
          dy: { shape: [N, C], init: new Float32Array(N * C) },
          dab: { shape: [2], init: new Float32Array(2) },
        }, (t) => {
          forward(be, t, cfg);
          backward(be, t, cfg, -1);
        });
        const unfused = withTensors(be, {
          ...upload(inp, N, C),
          dnorm: { data: dn, shape: [N, C] },
        }, {
          x_out: { shape: [N, C] },
          out_f32: { shape: [N, C] },
          out_bf16: { shape: [N, C], dtype: "bf16" },
          rstd: { shape: [N] },
          dx_out: { shape: [N, C], init: kind === "nodxo" ? new Float32Array(N * C) : dxo },
          dx: { shape: [N, C], init: new Float32Array(N * C) },
          dy: { shape: [N, C], init: new Float32Array(N * C) },
          dab: { shape: [2], init: new Float32Array(2) },
        }, (t) => {
          const k = be.k, s = be.stream, y = yPtr(t, kind);
          const b = Deno.UnsafePointer.offset(t.ab.ptr!, 4);
          if (kind === "residual") k.mn_add(t.x_out.ptr, t.x.ptr, y, n, s);
          else k.mn_axpby_forward(t.x_out.ptr, t.x.ptr, y, t.ab.ptr, b, n, s);
          k.mn_rmsnorm_forward(t.out_f32.ptr, t.rstd.ptr, t.x_out.ptr, N, C, EPS, s);
          k.mn_cast_f32_to_bf16(t.out_bf16.ptr, t.out_f32.ptr, n, s);
          k.mn_rmsnorm_backward(t.dx_out.ptr, t.dnorm.ptr, t.x_out.ptr, t.rstd.ptr, N, C, s);
          const dy = kind === "same" ? t.dx.ptr : t.dy.ptr;
          if (kind === "residual") {
            k.mn_axpy(t.dx.ptr, 1, t.dx_out.ptr, n, s);
            k.mn_axpy(dy, 1, t.dx_out.ptr, n, s);
          } else {
            const db = Deno.UnsafePointer.offset(t.dab.ptr!, 4);
            k.mn_axpby_backward(
              t.dx.ptr,
              dy,
              t.dab.ptr,
              db,
              t.dx_out.ptr,
              t.x.ptr,
              y,
              t.ab.ptr,
              b,
              n,
              s,
            );
          }
        });
        for (const key of ["x_out", "out_f32", "out_bf16", "rstd", "dx", "dy"]) {
          compare(
            `${label(cfg)} ${key} fused vs unfused (${tname})`,
            fused[key],
            unfused[key],
            EXACT,
          );
        }
        // two fp32 orders of the same N*C terms
        compare(
          `${label(cfg)} dab fused vs unfused (${tname})`,
          fused.dab,
          unfused.dab,
          tolDab(cfg),
        );
      });
    },
  });
}
