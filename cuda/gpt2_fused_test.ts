// The GPT-2 fused chains (gpt2_fused.cu): emu (and cuda) against the cpu reference, and the fused
// kernels against the unfused composition of generic kernels they replace, on the same backend.
import assert from "node:assert/strict";
import { type Backend, bf16ToF32, f32ToBf16, type Tensor } from "./backend.ts";
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
// x_out from later ops (dx_out NULL); att: the residual with att a bf16 matmul output whose
// gradient is written bf16 (its GEMM operand), and dnorm bf16 (the MLP's input gradient); fold: mix with the previous block's residual add
// folded in (x + r, r fp32: the "f32" path); foldbf16: the same with r the MLP's bf16 output and
// its gradient written bf16.
type Kind = "mix" | "same" | "residual" | "nodxo" | "att" | "fold" | "foldbf16";
const KINDS: Kind[] = ["mix", "same", "residual", "nodxo", "att", "fold", "foldbf16"];
const hasR = (k: Kind) => k === "fold" || k === "foldbf16";
const rBf16 = (k: Kind) => (k === "foldbf16" ? 1 : 0);
const yBf16 = (k: Kind) => (k === "att" ? 1 : 0);
const dnormBf16 = yBf16;
const constAb = (k: Kind) => k === "residual" || k === "att";
// C: one element, less than a warp, ragged, the GPT width, over one 256-thread pass; N: one row
// up to more rows than the backward's 1024 blocks (several rows per block, a short last block).
const SHAPES: [number, number][] = [[1, 1], [3, 17], [5, 768], [64, 1000], [2100, 33]];
const shapes = VARIANT ? SHAPES.filter(([N, C]) => N * C <= 2000) : SHAPES;
// the emulator runs one thread per CUDA thread: the largest shape (2100 blocks) in two kinds only
const configs: Cfg[] = shapes.flatMap(([N, C]) =>
  (N > 1000 ? ["mix" as Kind, "foldbf16" as Kind] : KINDS).map((kind) => ({ N, C, kind }))
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
  constAb(kind) ? new Float32Array([1, 1]) : new Float32Array([
    0.5 + rng.next(),
    rng.next() - 0.5,
  ]);

type Named = Record<string, Tensor>;
/** the ABI's dtype flag of a tensor */
const isBf16 = (t: Tensor) => (t.dtype === "bf16" ? 1 : 0);
const yPtr = (t: Named, kind: Kind) => (kind === "same" ? t.x.ptr : t.y.ptr);
const rPtr = (t: Named, kind: Kind) => (hasR(kind) ? t.r.ptr : null);
function forward(be: Backend, t: Named, { N, C, kind }: Cfg) {
  be.k.mn_mix_rmsnorm_forward(
    t.x_out.ptr,
    t.out_f32.ptr,
    t.out_bf16.ptr,
    t.rstd.ptr,
    t.x.ptr,
    rPtr(t, kind),
    yPtr(t, kind),
    t.ab.ptr,
    rBf16(kind),
    yBf16(kind),
    N,
    C,
    EPS,
    be.stream,
  );
}
/** the backward; a bf16 gradient (dr, dy of the bf16 kinds) is only overwritten: its bit cleared */
function backward(be: Backend, t: Named, { N, C, kind }: Cfg, accumulate: number) {
  const bf16Bits = (rBf16(kind) ? 2 : 0) | (yBf16(kind) ? 4 : 0);
  be.k.mn_mix_rmsnorm_backward(
    t.dx.ptr,
    hasR(kind) ? t.dr.ptr : null,
    kind === "same" ? t.dx.ptr : t.dy.ptr,
    constAb(kind) ? null : t.dab.ptr,
    kind === "nodxo" ? null : t.dx_out.ptr,
    t.dnorm.ptr,
    t.x_out.ptr,
    t.rstd.ptr,
    t.x.ptr,
    rPtr(t, kind),
    yPtr(t, kind),
    t.ab.ptr,
    rBf16(kind),
    yBf16(kind),
    rBf16(kind),
    yBf16(kind),
    dnormBf16(kind),
    N,
    C,
    accumulate & ~bf16Bits,
    be.stream,
  );
}

interface Inputs {
  x: Float32Array;
  y: Float32Array;
  r: Float32Array;
  ab: Float32Array;
}
function inputsOf(rng: Rng, { N, C, kind }: Cfg): Inputs {
  return { x: rowsOf(rng, N, C), y: rowsOf(rng, N, C), r: rowsOf(rng, N, C), ab: abOf(rng, kind) };
}
/** as the kind stores them (y, r bf16 in the bf16 kinds); widened: every input fp32 with the
 * values the bf16 kinds hold (the unfused kernels' inputs) */
const upload = (inp: Inputs, { N, C, kind }: Cfg, widened = false) => {
  const as = (v: Float32Array, bf16: number) =>
    !bf16
      ? { data: v, shape: [N, C] }
      : widened
      ? { data: bf16ToF32(f32ToBf16(v)), shape: [N, C] }
      : { data: f32ToBf16(v), shape: [N, C], dtype: "bf16" as const };
  return {
    x: { data: inp.x, shape: [N, C] },
    y: as(inp.y, yBf16(kind)),
    r: as(inp.r, rBf16(kind)),
    ab: { data: inp.ab, shape: [2] },
  };
};
/** dnorm as the kind stores it (bf16 in att), or widened (the unfused kernels' fp32 input) */
const operandOf = (v: Float32Array, { N, C, kind }: Cfg, widened = false) =>
  !dnormBf16(kind)
    ? { data: v, shape: [N, C] }
    : widened
    ? { data: bf16ToF32(f32ToBf16(v)), shape: [N, C] }
    : { data: f32ToBf16(v), shape: [N, C], dtype: "bf16" as const };
/** the gradient outputs' dtypes: dr and dy bf16 in the bf16 kinds */
const gradDtype = (kind: Kind, name: "dr" | "dy") =>
  (name === "dr" ? rBf16(kind) : yBf16(kind)) ? "bf16" as const : "f32" as const;

// Forward: x_out is one fp32 multiply-add per element on both (nvcc may contract it to an fma:
// one rounding less); the statistics are fp32 block sums against double sums.
checkKernel({
  name: "mix_rmsnorm_forward",
  configs,
  label,
  tol: { x_out: TOL_F32, out_f32: TOL_F32, out_bf16: TOL_BF16, rstd: TOL_F32 },
  run(be, cfg, rng) {
    const { N, C } = cfg;
    return withTensors(be, upload(inputsOf(rng, cfg), cfg), {
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
  const saved = withTensors(ref, upload(inp, cfg), {
    x_out: { shape: [N, C] },
    out_f32: { shape: [N, C] },
    out_bf16: { shape: [N, C], dtype: "bf16" },
    rstd: { shape: [N] },
  }, (t) => forward(ref, t, cfg));
  return {
    inputs: {
      ...upload(inp, cfg),
      x_out: { data: saved.x_out, shape: [N, C] },
      rstd: { data: saved.rstd, shape: [N] },
      dx_out: { data: rng.normal(N * C), shape: [N, C] },
      dnorm: operandOf(rng.normal(N * C), cfg),
    },
    init: {
      dx: rng.normal(N * C),
      dr: rng.normal(N * C),
      dy: rng.normal(N * C),
      dab: rng.normal(2),
    },
  };
}

// The scalar gradients sum N*C terms of O(1) in another order than the double reference (measured
// max |error| 3.1e-5 at [2100,33] = 69,300 terms whose sums are ~200: ~1.5e-7 relative); bound
// 1e-5 relative to the sum plus 1e-6 * sqrt(N*C) absolute, margin > 4x at every shape.
const tolDab = ({ N, C }: Cfg): Tol => ({ atol: 1e-6 * Math.sqrt(N * C), rtol: 1e-5 });
const TOL_DAB = tolDab({ N: 2100, C: 33, kind: "mix" }); // the largest shape's
// dx, dr, dy: one row sum of C terms and a cancellation r (dnorm - x_out k), O(1): a few fp32
// ulps (a bf16 dr or dy: that, then one bf16 rounding that may go the other way).
const TOL_DX: Tol = { atol: 2e-5, rtol: 2e-5 };
for (const acc of [-1, 0]) {
  checkKernel({
    name: `mix_rmsnorm_backward (accumulate ${acc === -1 ? "all" : "none, outputs poisoned"})`,
    configs,
    label,
    tol: { dx: TOL_DX, dr: TOL_DX, dy: TOL_DX, dr_bf16: TOL_BF16, dy_bf16: TOL_BF16, dab: TOL_DAB },
    run(be, cfg, rng) {
      const { N, C, kind } = cfg;
      const c = backwardCase(rng, cfg);
      // accumulate 0 (and a bf16 gradient, always overwritten): no init, so the outputs start as
      // NaN (harness poison) and must be written without being read
      const out = (name: "dx" | "dr" | "dy" | "dab", shape: number[]) => {
        const dtype = name === "dr" || name === "dy" ? gradDtype(kind, name) : "f32";
        return acc === -1 && dtype === "f32" ? { shape, init: c.init[name] } : { shape, dtype };
      };
      const res: Record<string, ArrayLike<number>> = withTensors(be, c.inputs, {
        dx: out("dx", [N, C]),
        dr: out("dr", [N, C]),
        dy: out("dy", [N, C]),
        dab: out("dab", [2]),
      }, (t) => backward(be, t, cfg, acc));
      // what this kind leaves alone (no r; dy is dx; constant ab) is not compared
      if (!hasR(kind)) delete res.dr;
      if (kind === "same") delete res.dy;
      if (constAb(kind)) delete res.dab;
      for (const key of ["dr", "dy"] as const) {
        if (key in res && gradDtype(kind, key) === "bf16") {
          res[`${key}_bf16`] = res[key];
          delete res[key];
        }
      }
      return res;
    },
  });
}

/**
 * How close a fused kernel's output must be to the unfused kernels': bit-identical on emu (g++
 * rounds every operation as written). nvcc contracts multiply-adds into FMAs kernel by kernel, so
 * on cuda the two may differ by an fp32 rounding (and a bf16 output by the one bf16 step that can
 * then flip); a wrong kernel is off by O(1).
 */
function sameAs(target: string, key: string): Tol {
  if (target !== "cuda") return EXACT;
  return key.endsWith("bf16") ? TOL_BF16 : { atol: 1e-6, rtol: 1e-5 };
}

// ---- fused vs the unfused composition it replaces, on one backend (emu; cuda with a GPU):
// forward [add x + r] -> axpby (or add) -> rmsnorm -> cast; backward rmsnorm_backward into dx_out,
// then axpby_backward (or two axpys) [then the add's: its gradient into dx and dr]. A bf16 input
// (y, r, dnorm) enters the unfused kernels widened to fp32, and a bf16 gradient is the unfused fp32 one
// cast. Every element is rounded the same way, so the outputs are bit-identical; only the scalar
// gradients' sums run in another order.
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
        const zeros = (dtype: "f32" | "bf16" = "f32") =>
          dtype === "f32" ? { shape: [N, C], init: new Float32Array(N * C) } : {
            shape: [N, C],
            dtype,
          };
        const fused = withTensors(be, {
          ...upload(inp, cfg),
          dx_out: { data: dxo, shape: [N, C] },
          dnorm: operandOf(dn, cfg),
        }, {
          x_out: { shape: [N, C] },
          out_f32: { shape: [N, C] },
          out_bf16: { shape: [N, C], dtype: "bf16" },
          rstd: { shape: [N] },
          dx: zeros(),
          dr: zeros(gradDtype(kind, "dr")),
          dy: zeros(gradDtype(kind, "dy")),
          dab: { shape: [2], init: new Float32Array(2) },
        }, (t) => {
          forward(be, t, cfg);
          backward(be, t, cfg, -1);
        });
        const unfused = withTensors(be, {
          ...upload(inp, cfg, true),
          dnorm: operandOf(dn, cfg, true),
        }, {
          s: { shape: [N, C] }, // x + r [N, C] fp32
          x_out: { shape: [N, C] },
          out_f32: { shape: [N, C] },
          out_bf16: { shape: [N, C], dtype: "bf16" },
          rstd: { shape: [N] },
          dx_out: { shape: [N, C], init: kind === "nodxo" ? new Float32Array(N * C) : dxo },
          ds: zeros(), // the gradient of x + r
          dx: zeros(),
          dr: zeros(),
          dy: zeros(),
          dab: { shape: [2], init: new Float32Array(2) },
        }, (t) => {
          const k = be.k, st = be.stream, y = yPtr(t, kind);
          const b = Deno.UnsafePointer.offset(t.ab.ptr!, 4);
          const x = hasR(kind) ? t.s.ptr : t.x.ptr, dx = hasR(kind) ? t.ds.ptr : t.dx.ptr;
          if (hasR(kind)) k.mn_add(t.s.ptr, t.x.ptr, t.r.ptr, n, st);
          if (constAb(kind)) k.mn_add(t.x_out.ptr, x, y, n, st);
          else k.mn_axpby_forward(t.x_out.ptr, x, y, t.ab.ptr, b, n, st);
          k.mn_rmsnorm_forward(t.out_f32.ptr, t.rstd.ptr, t.x_out.ptr, N, C, EPS, st);
          k.mn_cast_f32_to_bf16(t.out_bf16.ptr, t.out_f32.ptr, n, st);
          k.mn_rmsnorm_backward(t.dx_out.ptr, t.dnorm.ptr, t.x_out.ptr, t.rstd.ptr, N, C, -1, st);
          const dy = kind === "same" ? t.dx.ptr : t.dy.ptr;
          if (constAb(kind)) {
            k.mn_axpy(dx, 1, t.dx_out.ptr, n, st);
            k.mn_axpy(dy, 1, t.dx_out.ptr, n, st);
          } else {
            const db = Deno.UnsafePointer.offset(t.dab.ptr!, 4);
            k.mn_axpby_backward(dx, dy, t.dab.ptr, db, t.dx_out.ptr, x, y, t.ab.ptr, b, n, -1, st);
          }
          if (hasR(kind)) { // the add's backward: the identity to both
            k.mn_axpy(t.dx.ptr, 1, t.ds.ptr, n, st);
            k.mn_axpy(t.dr.ptr, 1, t.ds.ptr, n, st);
          }
        });
        const keys = [
          "x_out",
          "out_f32",
          "out_bf16",
          "rstd",
          "dx",
          "dy",
          ...hasR(kind) ? ["dr"] : [],
        ];
        for (const key of keys) {
          const bf16Grad = (key === "dr" || key === "dy") &&
            gradDtype(kind, key) === "bf16";
          compare(
            `${label(cfg)} ${key} fused vs unfused (${tname})`,
            fused[key],
            bf16Grad ? bf16Round(unfused[key]) : unfused[key],
            sameAs(tgt.name, bf16Grad ? `${key}_bf16` : key),
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

// ---- QK-RMSNorm + rotary
interface QkCfg {
  B: number;
  T: number;
  H: number;
  D: number;
}
// D: the smallest even, the model's head sizes (a part of a warp, one warp, two, four)
const QK_ALL: QkCfg[] = [
  { B: 1, T: 3, H: 1, D: 2 },
  { B: 2, T: 5, H: 3, D: 16 },
  { B: 1, T: 7, H: 2, D: 64 },
  { B: 2, T: 9, H: 2, D: 128 },
];
const qkConfigs = VARIANT ? QK_ALL.filter((c) => c.B * c.T * c.H * c.D <= 2000) : QK_ALL;
const qkLabel = ({ B, T, H, D }: QkCfg) => `[${B},${T},${H},${D}]`;
const qkN = ({ B, T, H, D }: QkCfg) => B * T * H * D;
const qkForward = (be: Backend, t: Named, { B, T, H, D }: QkCfg) =>
  be.k.mn_qk_rmsnorm_rotary_forward(
    t.out_f32.ptr,
    t.out_bf16.ptr,
    t.rstd.ptr,
    t.x.ptr,
    isBf16(t.x),
    H * D,
    B,
    T,
    H,
    D,
    EPS,
    be.stream,
  );
const qkBackward = (be: Backend, t: Named, { B, T, H, D }: QkCfg, acc: number) =>
  be.k.mn_qk_rmsnorm_rotary_backward(
    t.dx.ptr,
    t.dout.ptr,
    t.x.ptr,
    t.rstd.ptr,
    isBf16(t.x),
    isBf16(t.dout),
    isBf16(t.dx),
    H * D,
    B,
    T,
    H,
    D,
    acc,
    be.stream,
  );
const qkOutputs = (c: QkCfg) => ({
  out_f32: { shape: [qkN(c)] },
  out_bf16: { shape: [qkN(c)], dtype: "bf16" as const },
  rstd: { shape: [c.B * c.T * c.H] },
});
/** head rows with their own offset and scale */
const qkInput = (rng: Rng, c: QkCfg) => rowsOf(rng, c.B * c.T * c.H, c.D);

checkKernel({
  name: "qk_rmsnorm_rotary_forward",
  configs: qkConfigs,
  label: qkLabel,
  tol: { out_f32: TOL_F32, out_bf16: TOL_BF16, rstd: TOL_F32 },
  run(be, c, rng) {
    const x = qkInput(rng, c);
    return withTensors(
      be,
      { x: { data: x, shape: [qkN(c)] } },
      qkOutputs(c),
      (t) => qkForward(be, t, c),
    );
  },
});
for (const acc of [-1, 0]) {
  checkKernel({
    name: `qk_rmsnorm_rotary_backward (accumulate ${acc === -1 ? "all" : "none, output poisoned"})`,
    configs: qkConfigs,
    label: qkLabel,
    tol: TOL_DX,
    run(be, c, rng) {
      const x = qkInput(rng, c), dout = rng.normal(qkN(c)), init = rng.normal(qkN(c));
      const ref = backend("cpu");
      const saved = withTensors(
        ref,
        { x: { data: x, shape: [qkN(c)] } },
        qkOutputs(c),
        (t) => qkForward(ref, t, c),
      );
      return withTensors(
        be,
        {
          x: { data: x, shape: [qkN(c)] },
          dout: { data: dout, shape: [qkN(c)] },
          rstd: { data: saved.rstd, shape: [c.B * c.T * c.H] },
        },
        { dx: acc === -1 ? { shape: [qkN(c)], init } : { shape: [qkN(c)] } },
        (t) => qkBackward(be, t, c, acc),
      );
    },
  });
}

// ---- value residual
interface VCfg {
  n: number;
  kind: "mix" | "same" | "nodv1";
}
// n: one element, ragged, more than one full-sum block (4096 elements each at least)
const V_ALL: VCfg[] = [1, 999, 9000].flatMap((n) =>
  (["mix", "same", "nodv1"] as const).map((kind) => ({ n, kind }))
);
const vConfigs = VARIANT ? V_ALL.filter((c) => c.n <= 2000) : V_ALL;
const vLabel = ({ n, kind }: VCfg) => `[${n}] ${kind}`;
const v1Ptr = (t: Named, c: VCfg) => (c.kind === "same" ? t.v.ptr : t.v1.ptr);
const vForward = (be: Backend, t: Named, c: VCfg) =>
  be.k.mn_value_mix_forward(
    t.out_f32.ptr,
    t.out_bf16.ptr,
    t.v.ptr,
    v1Ptr(t, c),
    t.lamb.ptr,
    isBf16(t.v),
    c.n,
    c.n,
    BigInt(c.n),
    be.stream,
  );
const vBackward = (be: Backend, t: Named, c: VCfg, acc: number) =>
  be.k.mn_value_mix_backward(
    t.dv.ptr,
    c.kind === "same" ? t.dv.ptr : c.kind === "nodv1" ? null : t.dv1.ptr,
    t.dlamb.ptr,
    t.dout.ptr,
    t.v.ptr,
    v1Ptr(t, c),
    t.lamb.ptr,
    isBf16(t.v),
    isBf16(t.dout),
    isBf16(t.dv),
    c.n,
    c.n,
    c.n,
    BigInt(c.n),
    acc,
    be.stream,
  );
const vInputs = (rng: Rng, n: number) => ({
  v: { data: rng.normal(n), shape: [n] },
  v1: { data: rng.normal(n), shape: [n] },
  lamb: { data: new Float32Array([rng.next()]), shape: [1] },
  dout: { data: rng.normal(n), shape: [n] },
});
checkKernel({
  name: "value_mix_forward",
  configs: vConfigs,
  label: vLabel,
  tol: { out_f32: TOL_F32, out_bf16: TOL_BF16 },
  run(be, c, rng) {
    return withTensors(be, vInputs(rng, c.n), {
      out_f32: { shape: [c.n] },
      out_bf16: { shape: [c.n], dtype: "bf16" },
    }, (t) => vForward(be, t, c));
  },
});
for (const acc of [-1, 0]) {
  checkKernel({
    name: `value_mix_backward (accumulate ${acc === -1 ? "all" : "none, outputs poisoned"})`,
    configs: vConfigs,
    label: vLabel,
    // dlamb: up to 9000 products of O(1) in fp32 order against double (1e-6 sqrt(n) absolute)
    tol: { dv: TOL_F32, dv1: TOL_F32, dlamb: { atol: 1e-4, rtol: 1e-5 } },
    run(be, c, rng) {
      const inp = vInputs(rng, c.n);
      const out = (shape: number[]) =>
        acc === -1 ? { shape, init: rng.normal(shape[0]) } : { shape };
      const res: Record<string, ArrayLike<number>> = withTensors(be, inp, {
        dv: out([c.n]),
        dv1: out([c.n]),
        dlamb: out([1]),
      }, (t) => vBackward(be, t, c, acc));
      if (c.kind !== "mix") delete res.dv1; // dv1 is dv, or not given
      return res;
    },
  });
}

// The projections' bf16 outputs (autocast's q, k, v) as inputs, bf16 gradients as outputs: a bf16
// input gives the fp32 kernel's results on its values bit for bit, a bf16 gradient is the fp32 one
// rounded once, and refuses to be added into (it has one writer).
for (const tgt of [{ name: "cpu" as const, variant: "" as const, run: true }, ...targets()]) {
  const tname = tgt.name === "cpu" ? "cpu" : targetName(tgt);
  Deno.test({
    name:
      `qk_rmsnorm_rotary and value_mix: bf16 inputs (x, v, dout) read as their values, bf16 gradients rounded once (${tname})`,
    ignore: !tgt.run,
    fn() {
      const be = backend(tgt.name, tgt.variant);
      const round = (a: Float32Array) => bf16ToF32(f32ToBf16(a));
      const as = (data: Float32Array, bf16: boolean) => ({
        data: bf16 ? f32ToBf16(data) : data,
        shape: [data.length],
        dtype: bf16 ? "bf16" as const : "f32" as const,
      });
      const grad = (n: number, bf16: boolean, init?: Float32Array) => ({
        shape: [n],
        dtype: bf16 ? "bf16" as const : "f32" as const,
        init: init && bf16 ? f32ToBf16(init) : init,
      });
      const same = (l: string, got: Record<string, ArrayLike<number>>, want: typeof got) => {
        for (const key of Object.keys(want)) compare(`${l} ${key}`, got[key], want[key], EXACT);
      };
      qkConfigs.forEach((c, ci) => {
        const rng = new Rng(4000 + ci), n = qkN(c), l = `${qkLabel(c)} (${tname})`;
        const x = round(qkInput(rng, c)), dout = round(rng.normal(n)), init = rng.normal(n);
        const fwd = (bf16: boolean) =>
          withTensors(be, { x: as(x, bf16) }, qkOutputs(c), (t) => qkForward(be, t, c));
        const want = fwd(false);
        same(`${l} forward`, fwd(true), want);
        // bf16 x, dout, dx: the projection's output, the attention's gradient, the GEMM operand
        const bwd = (xBf16: boolean, dxBf16: boolean, acc: number, doutBf16 = xBf16) =>
          withTensors(
            be,
            {
              x: as(x, xBf16),
              dout: as(dout, doutBf16),
              rstd: as(want.rstd as Float32Array, false),
            },
            { dx: grad(n, dxBf16, acc ? init : undefined) },
            (t) => qkBackward(be, t, c, acc),
          );
        same(`${l} fp32 dx from bf16 x`, bwd(true, false, -1), bwd(false, false, -1));
        same(
          `${l} fp32 dx from bf16 x, fp32 dout`,
          bwd(true, false, -1, false),
          bwd(false, false, -1),
        );
        const dx = round(bwd(false, false, 0).dx as Float32Array);
        same(`${l} bf16 dx`, bwd(true, true, 0), { dx });
        assert.throws(() => bwd(true, true, 1), /bf16 dx is overwritten/);
      });
      vConfigs.forEach((c, ci) => {
        const rng = new Rng(5000 + ci), l = `${vLabel(c)} (${tname})`;
        const inp = vInputs(rng, c.n);
        const v = round(inp.v.data), v1 = round(inp.v1.data), init = rng.normal(c.n);
        const dout = round(inp.dout.data);
        const ins = (bf16: boolean, doutBf16 = bf16) => ({
          v: as(v, bf16),
          v1: as(v1, bf16),
          lamb: inp.lamb,
          dout: as(dout, doutBf16),
        });
        const fwd = (bf16: boolean) =>
          withTensors(be, ins(bf16), {
            out_f32: { shape: [c.n] },
            out_bf16: { shape: [c.n], dtype: "bf16" },
          }, (t) => vForward(be, t, c));
        same(`${l} forward`, fwd(true), fwd(false));
        // dv1 and dlamb add (bits 1, 2); dv adds under bit 0
        const bwd = (vBf16: boolean, dvBf16: boolean, acc: number, doutBf16 = vBf16) => {
          const r: Record<string, ArrayLike<number>> = withTensors(be, ins(vBf16, doutBf16), {
            dv: grad(c.n, dvBf16, acc & 1 ? init : undefined),
            dv1: grad(c.n, false, init),
            dlamb: { shape: [1], init: new Float32Array([0.25]) },
          }, (t) => vBackward(be, t, c, acc));
          if (c.kind !== "mix") delete r.dv1;
          return r;
        };
        same(`${l} fp32 dv from bf16 v`, bwd(true, false, 7), bwd(false, false, 7));
        same(
          `${l} fp32 dv from bf16 v, fp32 dout`,
          bwd(true, false, 7, false),
          bwd(false, false, 7),
        );
        if (c.kind === "same") {
          assert.throws(() => bwd(true, true, 6), /bf16 dv cannot be dv1/);
          return;
        }
        const want = bwd(false, false, 6);
        same(`${l} bf16 dv`, bwd(true, true, 6), { ...want, dv: round(want.dv as Float32Array) });
        assert.throws(() => bwd(true, true, 7), /bf16 dv is overwritten/);
      });
    },
  });
}

// Strided q, k, v (column blocks of the fused q|k|v GEMM's [N, 3C] output, rows ld apart) and
// their strided gradients: the same values as contiguous ones, bit for bit, the columns between
// the blocks neither read (they hold 1e30) nor written (they keep their sentinel).
for (const tgt of [{ name: "cpu" as const, variant: "" as const, run: true }, ...targets()]) {
  const tname = tgt.name === "cpu" ? "cpu" : targetName(tgt);
  Deno.test({
    name: `qk_rmsnorm_rotary and value_mix: strided inputs and gradients (${tname})`,
    ignore: !tgt.run,
    fn() {
      const be = backend(tgt.name, tgt.variant), k = be.k, st = be.stream;
      const SENTINEL = 7;
      /** rows of C values spread to rows of ld, the gaps filled with `fill` */
      const spread = (a: Float32Array, C: number, ld: number, fill: number) => {
        const out = new Float32Array((a.length / C) * ld).fill(fill);
        for (let r = 0; r < a.length / C; r++) out.set(a.subarray(r * C, r * C + C), r * ld);
        return out;
      };
      const squeeze = (a: ArrayLike<number>, C: number, ld: number) => {
        const rows = a.length / ld, out = new Float32Array(rows * C);
        for (let r = 0; r < rows; r++) for (let c = 0; c < C; c++) out[r * C + c] = a[r * ld + c];
        return out;
      };
      const gaps = (l: string, a: ArrayLike<number>, C: number, ld: number) => {
        for (let i = 0; i < a.length; i++) {
          if (i % ld >= C) assert.equal(a[i], SENTINEL, `${l}: gap element ${i} written`);
        }
      };
      const bf = (a: Float32Array) => ({ data: f32ToBf16(a), dtype: "bf16" as const });
      qkConfigs.forEach((c, ci) => {
        const rng = new Rng(6000 + ci), { B, T, H, D } = c, n = qkN(c), C = H * D, ld = C + 6;
        const l = `${qkLabel(c)} (${tname})`;
        const x = qkInput(rng, c), dout = rng.normal(n);
        const run = (ldx: number, ldArg = ldx) => {
          const xs = ldx === C ? x : spread(x, C, ldx, 1e30);
          const dx0 = new Float32Array(xs.length).fill(SENTINEL);
          return withTensors(be, {
            x: { ...bf(xs), shape: [xs.length] },
            dout: { ...bf(dout), shape: [n] },
          }, {
            ...qkOutputs(c),
            dx: { shape: [xs.length], dtype: "bf16", init: f32ToBf16(dx0) },
          }, (t) => {
            k.mn_qk_rmsnorm_rotary_forward(
              t.out_f32.ptr,
              t.out_bf16.ptr,
              t.rstd.ptr,
              t.x.ptr,
              1,
              ldArg,
              B,
              T,
              H,
              D,
              EPS,
              st,
            );
            k.mn_qk_rmsnorm_rotary_backward(
              t.dx.ptr,
              t.dout.ptr,
              t.x.ptr,
              t.rstd.ptr,
              1,
              1,
              1,
              ldArg,
              B,
              T,
              H,
              D,
              0,
              st,
            );
          });
        };
        const want = run(C), got = run(ld);
        for (const key of ["out_f32", "out_bf16", "rstd"]) {
          compare(`${l} strided ${key}`, got[key], want[key], EXACT);
        }
        compare(`${l} strided dx`, squeeze(got.dx, C, ld), want.dx, EXACT);
        gaps(`${l} dx`, got.dx, C, ld);
        assert.throws(() => run(C, C - 1), /ld_x = \d+ is less than the row width/);
      });
      vConfigs.forEach((c, ci) => {
        if (c.n % 9 !== 0) return; // rows of C = 9
        const rng = new Rng(7000 + ci), C = 9, ld = 3 * C, l = `${vLabel(c)} (${tname})`;
        const inp = vInputs(rng, c.n);
        const run = (ldv: number) => {
          const sv = (a: Float32Array) => (ldv === C ? a : spread(a, C, ldv, 1e30));
          const [v, v1] = [sv(inp.v.data), sv(inp.v1.data)];
          const dv0 = new Float32Array(v.length).fill(SENTINEL);
          return withTensors(be, {
            v: { ...bf(v), shape: [v.length] },
            v1: { ...bf(v1), shape: [v.length] },
            lamb: inp.lamb,
            dout: inp.dout,
          }, {
            out_bf16: { shape: [c.n], dtype: "bf16" },
            dv: { shape: [v.length], dtype: "bf16", init: f32ToBf16(dv0) },
            dv1: { shape: [c.n], init: new Float32Array(c.n) },
            dlamb: { shape: [1], init: new Float32Array(1) },
          }, (t) => {
            const n = BigInt(c.n);
            k.mn_value_mix_forward(
              null,
              t.out_bf16.ptr,
              t.v.ptr,
              t.v1.ptr,
              t.lamb.ptr,
              1,
              C,
              ldv,
              n,
              st,
            );
            k.mn_value_mix_backward(
              t.dv.ptr,
              t.dv1.ptr,
              t.dlamb.ptr,
              t.dout.ptr,
              t.v.ptr,
              t.v1.ptr,
              t.lamb.ptr,
              1,
              0,
              1,
              C,
              ldv,
              ldv,
              n,
              6,
              st,
            );
          });
        };
        const want = run(C), got = run(ld);
        for (const key of ["out_bf16", "dv1", "dlamb"]) {
          compare(`${l} strided ${key}`, got[key], want[key], EXACT);
        }
        compare(`${l} strided dv`, squeeze(got.dv, C, ld), want.dv, EXACT);
        gaps(`${l} dv`, got.dv, C, ld);
      });
    },
  });
}

// fused == the unfused kernels, on emu (and cuda): bit for bit but the scalar sum
for (const tgt of targets()) {
  if (tgt.name === "cpu") continue;
  const tname = targetName(tgt);
  Deno.test({
    name: `qk_rmsnorm_rotary and value_mix: fused == unfused generic kernels (${tname})`,
    ignore: !tgt.run,
    fn() {
      const be = backend(tgt.name, tgt.variant), k = be.k, s = be.stream;
      qkConfigs.forEach((c, ci) => {
        const rng = new Rng(2000 + ci);
        const { B, T, H, D } = c, n = qkN(c), rows = B * T * H;
        const x = qkInput(rng, c), dout = rng.normal(n);
        const ins = { x: { data: x, shape: [n] }, dout: { data: dout, shape: [n] } };
        const outs = { ...qkOutputs(c), dx: { shape: [n], init: new Float32Array(n) } };
        const fused = withTensors(be, ins, outs, (t) => {
          qkForward(be, t, c);
          qkBackward(be, t, c, -1);
        });
        const unfused = withTensors(be, ins, {
          ...outs,
          normed: { shape: [n] },
          dnormed: { shape: [n], init: new Float32Array(n) },
        }, (t) => {
          k.mn_rmsnorm_forward(t.normed.ptr, t.rstd.ptr, t.x.ptr, rows, D, EPS, s);
          k.mn_rotary_forward(t.out_f32.ptr, t.normed.ptr, B, T, H, D, s);
          k.mn_cast_f32_to_bf16(t.out_bf16.ptr, t.out_f32.ptr, BigInt(n), s);
          k.mn_rotary_backward(t.dnormed.ptr, t.dout.ptr, B, T, H, D, -1, s);
          k.mn_rmsnorm_backward(t.dx.ptr, t.dnormed.ptr, t.x.ptr, t.rstd.ptr, rows, D, -1, s);
        });
        for (const key of ["out_f32", "out_bf16", "rstd", "dx"]) {
          compare(
            `${qkLabel(c)} ${key} fused vs unfused (${tname})`,
            fused[key],
            unfused[key],
            sameAs(tgt.name, key),
          );
        }
      });
      vConfigs.forEach((c, ci) => {
        const rng = new Rng(3000 + ci);
        const ins = vInputs(rng, c.n), n = BigInt(c.n);
        const zeros = () => ({ shape: [c.n], init: new Float32Array(c.n) });
        const outs = {
          out_f32: { shape: [c.n] },
          out_bf16: { shape: [c.n], dtype: "bf16" as const },
          dv: zeros(),
          dv1: zeros(),
          dlamb: { shape: [1], init: new Float32Array(1) },
        };
        const fused = withTensors(be, ins, outs, (t) => {
          vForward(be, t, c);
          vBackward(be, t, c, -1);
        });
        const unfused = withTensors(be, ins, {
          ...outs,
          diff: { shape: [c.n] },
          ddiff: zeros(),
          one: { shape: [1], init: new Float32Array([1]) },
          minus: { shape: [1], init: new Float32Array([-1]) },
        }, (t) => {
          const v1 = v1Ptr(t, c);
          const dv1 = c.kind === "same" ? t.dv.ptr : c.kind === "nodv1" ? null : t.dv1.ptr;
          k.mn_axpby_forward(t.diff.ptr, v1, t.v.ptr, t.one.ptr, t.minus.ptr, n, s);
          k.mn_axpby_forward(t.out_f32.ptr, t.v.ptr, t.diff.ptr, t.one.ptr, t.lamb.ptr, n, s);
          k.mn_cast_f32_to_bf16(t.out_bf16.ptr, t.out_f32.ptr, n, s);
          // the tape's order: the outer axpby's backward, then the inner one's
          const args = [t.dout.ptr, t.v.ptr, t.diff.ptr, t.one.ptr, t.lamb.ptr, n, -1, s] as const;
          k.mn_axpby_backward(t.dv.ptr, t.ddiff.ptr, null, t.dlamb.ptr, ...args);
          k.mn_axpby_backward(
            dv1,
            t.dv.ptr,
            null,
            null,
            t.ddiff.ptr,
            v1,
            t.v.ptr,
            t.one.ptr,
            t.minus.ptr,
            n,
            -1,
            s,
          );
        });
        for (const key of ["out_f32", "out_bf16", "dv", "dv1"]) {
          compare(
            `${vLabel(c)} ${key} fused vs unfused (${tname})`,
            fused[key],
            unfused[key],
            sameAs(tgt.name, key),
          );
        }
        compare(`${vLabel(c)} dlamb fused vs unfused (${tname})`, fused.dlamb, unfused.dlamb, {
          atol: 1e-4,
          rtol: 1e-5,
        });
      });
    },
  });
}

// ---- ReLU^2 into bf16: the cast of mn_relu2_forward's output, bit for bit, on every backend
// (one rounding of the same fp32 square); n over the grid-stride loop's ragged end
function relu2Check(be: Backend, name: string) {
  for (const n of [1, 1000]) {
    const x = new Rng(4000 + n).normal(n);
    x[0] = 0; // the kink: 0
    const r = withTensors(be, { x: { data: x, shape: [n] } }, {
      fused: { shape: [n], dtype: "bf16" },
      f32: { shape: [n] },
      cast: { shape: [n], dtype: "bf16" },
    }, (t) => {
      be.k.mn_relu2_forward_bf16(t.fused.ptr, t.x.ptr, BigInt(n), be.stream);
      be.k.mn_relu2_forward(t.f32.ptr, t.x.ptr, BigInt(n), be.stream);
      be.k.mn_cast_f32_to_bf16(t.cast.ptr, t.f32.ptr, BigInt(n), be.stream);
    });
    compare(`relu2_forward_bf16 [${n}] (${name})`, r.fused, r.cast, EXACT);
  }
}
Deno.test("relu2_forward_bf16: equals relu2_forward then the cast (cpu)", () => {
  relu2Check(backend("cpu"), "cpu");
});
for (const tgt of targets()) {
  const tname = targetName(tgt);
  Deno.test({
    name: `relu2_forward_bf16: equals relu2_forward then the cast (${tname})`,
    ignore: !tgt.run,
    fn: () => relu2Check(backend(tgt.name, tgt.variant), tname),
  });
}

// ---- the MLP's relu^2 on bf16 (mn_relu2_forward_bf16io / mn_relu2_backward_bf16io): a product
// of bf16 values is exact in fp32, so relu(u)^2 and 2 relu(u) dA have one rounding, to bf16, and
// every backend must give exactly the float64 answer rounded once (the cpu reference and emu are
// each checked against it, so also bit for bit against each other). n: one element, odd sizes
// over one and several 256-thread blocks. Outputs start NaN-poisoned (accumulate 0 overwrites).
const bf16Round = (x: ArrayLike<number>) => bf16ToF32(f32ToBf16(Float32Array.from(x)));
function relu2Bf16ioCheck(be: Backend, name: string) {
  for (const n of [1, 1001, 4099]) {
    const rng = new Rng(4100 + n);
    const u = f32ToBf16(rng.normal(n)), dA = f32ToBf16(rng.normal(n));
    if (n > 3) u[1] = 0x8000, u[2] = 0, u[3] = 0xbf80; // -0, +0 (the kink), -1
    const uf = bf16ToF32(u), df = bf16ToF32(dA);
    const wantA = bf16Round(uf.map((x) => (x > 0 ? x * x : 0)));
    const wantDu = bf16Round(uf.map((x, i) => (x > 0 ? 2 * x * df[i] : 0)));
    const r = withTensors(be, {
      u: { data: u, shape: [n], dtype: "bf16" },
      dA: { data: dA, shape: [n], dtype: "bf16" },
    }, {
      a: { shape: [n], dtype: "bf16" },
      du: { shape: [n], dtype: "bf16" },
    }, (t) => {
      be.k.mn_relu2_forward_bf16io(t.a.ptr, t.u.ptr, BigInt(n), be.stream);
      be.k.mn_relu2_backward_bf16io(t.du.ptr, t.dA.ptr, t.u.ptr, BigInt(n), 0, be.stream);
      // in place (the tape's use): du over dA
      be.k.mn_relu2_backward_bf16io(t.dA.ptr, t.dA.ptr, t.u.ptr, BigInt(n), 0, be.stream);
    });
    compare(`relu2_forward_bf16io [${n}] (${name})`, r.a, wantA, EXACT);
    compare(`relu2_backward_bf16io [${n}] (${name})`, r.du, wantDu, EXACT);
    const inPlace = withTensors(be, { u: { data: u, shape: [n], dtype: "bf16" } }, {
      d: { shape: [n], dtype: "bf16", init: dA },
    }, (t) => be.k.mn_relu2_backward_bf16io(t.d.ptr, t.d.ptr, t.u.ptr, BigInt(n), 0, be.stream));
    compare(`relu2_backward_bf16io in place [${n}] (${name})`, inPlace.d, wantDu, EXACT);
  }
  // a bf16 gradient has no sum to add to: any accumulate bit is an error, as are n and NULLs
  withTensors(be, {}, { x: { shape: [4], dtype: "bf16" } }, (t) => {
    const k = be.k, p = t.x.ptr, st = be.stream;
    const cases: [() => unknown, RegExp][] = [
      [() => k.mn_relu2_backward_bf16io(p, p, p, 4n, 1, st), /accumulate = 1/],
      [() => k.mn_relu2_backward_bf16io(p, p, p, 4n, -1, st), /accumulate = -1/],
      [() => k.mn_relu2_backward_bf16io(p, null, p, 4n, 0, st), /NULL pointer/],
      [() => k.mn_relu2_backward_bf16io(p, p, p, 0n, 0, st), /n = 0/],
      [() => k.mn_relu2_forward_bf16io(null, p, 4n, st), /NULL pointer/],
      [() => k.mn_relu2_forward_bf16io(p, p, -2n, st), /n = -2/],
    ];
    for (const [fn, re] of cases) assert.throws(fn, re, `${name}: ${re}`);
  });
}
Deno.test("relu2 bf16io: exact on cpu", () => relu2Bf16ioCheck(backend("cpu"), "cpu"));
for (const tgt of targets()) {
  const tname = targetName(tgt);
  Deno.test({
    name: `relu2 bf16io: exact (${tname})`,
    ignore: !tgt.run,
    fn: () => relu2Bf16ioCheck(backend(tgt.name, tgt.variant), tname),
  });
}

// ---- softcapped cross-entropy on bf16 logits: on every backend exactly the fp32 kernel on the
// widened logits with its dlogits cast (the math is fp32 either way), and emu against cpu
interface CeCfg {
  N: number;
  V: number;
  softcap: number;
}
// V: under one 256-thread pass, ragged over several; softcap 30 (the model's) and off. With a
// gradient the row is staged in shared memory up to V = 81920 (crossentropy.cu
// CE_STAGE_MAX_BYTES): rows of 300 and 997 start off 16-byte alignment (rows 1 and 2 of 300 at 8
// and 0 bytes, row 1 of 997 at 10), V = 50304 is the trainers' row, and V = 81921 (the first V
// above the limit) runs the direct kernel, which reads the logits from global memory twice.
const CE_ALL: CeCfg[] = [
  { N: 1, V: 7, softcap: 30 },
  { N: 3, V: 300, softcap: 30 },
  { N: 2, V: 997, softcap: 30 },
  { N: 5, V: 1000, softcap: 0 },
  { N: 2, V: 50304, softcap: 30 },
  { N: 2, V: 81921, softcap: 30 },
];
const ceConfigs = VARIANT ? CE_ALL.filter((c) => c.N * c.V <= 2000) : CE_ALL;
const ceLabel = ({ N, V, softcap }: CeCfg) => `[${N},${V}] softcap ${softcap}`;
/** logits of O(10) (beyond the cap's linear range; `scale`) rounded to bf16, targets in range */
function ceCase(rng: Rng, { N, V }: CeCfg, scale = 20) {
  const x = f32ToBf16(rng.normal(N * V).map((v) => scale * v)); // bf16 bit patterns
  const targets = Int32Array.from({ length: N }, () => Math.floor(rng.next() * V));
  return { x, targets };
}
const ceRun = (be: Backend, c: CeCfg, rng: Rng) => {
  const { x, targets } = ceCase(rng, c);
  return withTensors(
    be,
    {
      logits: { data: x, shape: [c.N * c.V], dtype: "bf16" },
      targets: { data: targets, shape: [c.N], dtype: "i32" },
    },
    { losses: { shape: [c.N] }, dlogits: { shape: [c.N * c.V], dtype: "bf16" } },
    (t) =>
      be.k.mn_softcap_crossentropy_bf16(
        t.losses.ptr,
        t.dlogits.ptr,
        t.logits.ptr,
        t.targets.ptr,
        c.N,
        c.V,
        c.softcap,
        0.25,
        be.stream,
      ),
  );
};
checkKernel({
  name: "softcap_crossentropy_bf16",
  configs: ceConfigs,
  label: ceLabel,
  // the fp32 kernel's emu-vs-cpu bounds (crossentropy_test.ts scale), then one bf16 rounding
  tol: { losses: { atol: 1e-5, rtol: 1e-5 }, dlogits: TOL_BF16 },
  run: ceRun,
});
/** every bf16 bit pattern but the NaNs (65282 values: +-0, subnormals, +-inf), shuffled per row:
 * the cpu reference takes a capped logit's z and dz from a table of all bf16 values */
function ceEveryBf16(rng: Rng, N: number) {
  const values: number[] = [];
  for (let h = 0; h < 65536; h++) if ((h & 0x7fff) <= 0x7f80) values.push(h);
  const x = new Uint16Array(N * values.length);
  for (let r = 0; r < N; r++) {
    const row = values.slice();
    for (let i = row.length - 1; i > 0; i--) {
      const j = Math.floor(rng.next() * (i + 1));
      [row[i], row[j]] = [row[j], row[i]];
    }
    x.set(row, r * row.length);
  }
  const targets = Int32Array.from({ length: N }, () => Math.floor(rng.next() * values.length));
  return { x, targets, V: values.length };
}
function ceMatchesF32(be: Backend, name: string) {
  const every = ceEveryBf16(new Rng(4999), 2);
  const cases = [
    ...ceConfigs.map((c, ci) => ({ c, ...ceCase(new Rng(5000 + ci), c) })),
    { c: { N: 2, V: every.V, softcap: 30 }, x: every.x, targets: every.targets },
    { c: { N: 2, V: every.V, softcap: 0.5 }, x: every.x, targets: every.targets },
  ];
  cases.forEach(({ c, x, targets }) => {
    const n = c.N * c.V;
    const r = withTensors(be, {
      logits: { data: x, shape: [n], dtype: "bf16" },
      targets: { data: targets, shape: [c.N], dtype: "i32" },
    }, {
      losses: { shape: [c.N] },
      dlogits: { shape: [n], dtype: "bf16" },
      wide: { shape: [n] },
      losses32: { shape: [c.N] },
      cast: { shape: [n], dtype: "bf16" },
    }, (t) => {
      const k = be.k, s = be.stream, tg = t.targets.ptr;
      // in place, as the lm head runs it
      k.mn_softcap_crossentropy_bf16(
        t.losses.ptr,
        t.logits.ptr,
        t.logits.ptr,
        tg,
        c.N,
        c.V,
        c.softcap,
        0.25,
        s,
      );
      k.mn_memcpy_d2d(t.dlogits.ptr, t.logits.ptr, BigInt(2 * n), s);
      // the reference pair on the widened logits (uploaded again: the buffer now holds dlogits)
      const again = be.upload(x, [n], "bf16");
      k.mn_cast_bf16_to_f32(t.wide.ptr, again.ptr, BigInt(n), s);
      be.free(again);
      k.mn_softcap_crossentropy(
        t.losses32.ptr,
        t.wide.ptr,
        t.wide.ptr,
        tg,
        c.N,
        c.V,
        c.softcap,
        0.25,
        s,
      );
      k.mn_cast_f32_to_bf16(t.cast.ptr, t.wide.ptr, BigInt(n), s);
    });
    compare(`${ceLabel(c)} losses (${name})`, r.losses, r.losses32, EXACT);
    compare(`${ceLabel(c)} dlogits (${name})`, r.dlogits, r.cast, EXACT);
  });
}
// With a gradient the emu/cuda kernel stages the row in shared memory (V <= 81920); loss-only it
// reads the logits directly: the same bf16 values in the same order, so the same loss bits. A
// target outside [0, V) gives a NaN loss and gradient row on either path, the other rows untouched.
// Logits of scale 1 as well: there the sum of exp has many terms of one size, so a change of the
// summation order changes the loss bits in most rows (at scale 20 a few terms dominate).
function ceStagedMatchesDirect(be: Backend, name: string) {
  ceConfigs.flatMap((c) => [{ c, scale: 20 }, { c, scale: 1 }]).forEach(({ c, scale }, ci) => {
    const { x, targets } = ceCase(new Rng(6000 + ci), c, scale);
    const bad = targets.slice();
    bad[c.N - 1] = c.V;
    const n = c.N * c.V;
    const r = withTensors(be, {
      logits: { data: x, shape: [n], dtype: "bf16" },
      targets: { data: targets, shape: [c.N], dtype: "i32" },
      bad: { data: bad, shape: [c.N], dtype: "i32" },
    }, {
      staged: { shape: [c.N] },
      direct: { shape: [c.N] },
      badLosses: { shape: [c.N] },
      dlogits: { shape: [n], dtype: "bf16" },
      badDlogits: { shape: [n], dtype: "bf16" },
    }, (t) => {
      const k = be.k, s = be.stream, x = t.logits.ptr, N = c.N, V = c.V, cap = c.softcap;
      k.mn_softcap_crossentropy_bf16(
        t.staged.ptr,
        t.dlogits.ptr,
        x,
        t.targets.ptr,
        N,
        V,
        cap,
        1,
        s,
      );
      k.mn_softcap_crossentropy_bf16(t.direct.ptr, null, x, t.targets.ptr, N, V, cap, 1, s);
      k.mn_softcap_crossentropy_bf16(
        t.badLosses.ptr,
        t.badDlogits.ptr,
        x,
        t.bad.ptr,
        N,
        V,
        cap,
        1,
        s,
      );
    });
    compare(`${ceLabel(c)} staged vs direct losses (${name})`, r.staged, r.direct, EXACT);
    const last = (c.N - 1) * c.V;
    assert.ok(Number.isNaN(r.badLosses[c.N - 1]), `${ceLabel(c)}: bad target, loss not NaN`);
    assert.ok(r.badDlogits.subarray(last).every(Number.isNaN), `${ceLabel(c)}: bad row not NaN`);
    compare(
      `${ceLabel(c)} other rows' losses`,
      r.badLosses.subarray(0, c.N - 1),
      r.staged.subarray(0, c.N - 1),
      EXACT,
    );
    compare(
      `${ceLabel(c)} other rows' dlogits`,
      r.badDlogits.subarray(0, last),
      r.dlogits.subarray(0, last),
      EXACT,
    );
  });
}
for (const tgt of targets()) {
  const tname = targetName(tgt);
  Deno.test({
    name: `softcap_crossentropy_bf16: staged and direct rows give the same losses (${tname})`,
    ignore: !tgt.run,
    fn: () => ceStagedMatchesDirect(backend(tgt.name, tgt.variant), tname),
  });
}
Deno.test("softcap_crossentropy_bf16: the fp32 kernel on widened logits, then the cast (cpu)", () => {
  ceMatchesF32(backend("cpu"), "cpu");
});
for (const tgt of targets()) {
  const tname = targetName(tgt);
  Deno.test({
    name: `softcap_crossentropy_bf16: the fp32 kernel on widened logits, then the cast (${tname})`,
    ignore: !tgt.run,
    fn: () => ceMatchesF32(backend(tgt.name, tgt.variant), tname),
  });
}
