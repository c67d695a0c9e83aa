// Fused RWKV-6 time-mixing kernels (rwkv7_fused.cu / cpu/rwkv7_fused.cpp, beside RWKV-7's):
//   - emu (and cuda with a GPU) vs cpu, forward (fp32 and bf16 outputs) and backward, at shapes
//     with one and several sequences, a T of 1, and enough rows for the two-stage column sums;
//   - cpu vs a float64 reference written here from the math, gradients pre-filled so `+=` is
//     what is checked;
//   - the accumulate bits: a clear bit overwrites a NaN-filled gradient, a parameter-vector
//     gradient's clear bit is an error; backward twice gives the same bits;
//   - each fused graph op (Graph.rwkv6Mix5, rwkv6DecayK, rwkv6GnGate) against the composition of
//     generic tape ops it replaces (train_rwkv6.ts's timeMixUnfused), values and gradients.
// That the whole fused model equals --unfused is train_rwkv6_test.ts's check.
import assert from "node:assert/strict";
import { type Backend, f32ToBf16 } from "./backend.ts";
import { Graph, Param, type Var } from "./autograd.ts";
import { checkBf16Gate } from "./test/gate_bf16_cases.ts";
import {
  backend,
  checkKernel,
  compare,
  EXACT,
  relErr,
  Rng,
  SEED,
  testEachBackend,
  type Tol,
  TOL_BF16,
  TOL_F32,
  withTensors,
} from "./test/harness.ts";

type Cfg = { B: number; T: number; C: number };
const SHAPES: Cfg[] = [
  { B: 1, T: 1, C: 5 },
  { B: 2, T: 3, C: 33 },
  { B: 3, T: 16, C: 64 },
  { B: 4, T: 64, C: 40 }, // 256 rows: several row tiles, so stage 2 of the column sums runs
];
const label = (c: Cfg) => `[${c.B},${c.T},${c.C}]`;
// The column sums add up to B*T terms in float, in an order other than the cpu's double sums:
// error ~sqrt(rows) 2^-24 |terms| (|terms| ~ 1 here); the bound as rwkv7_fused_test.ts's.
const SUM: Tol = { atol: 4e-5, rtol: 2e-5 };
const ALL = -1; // accumulate every gradient
const J = ["w", "k", "v", "r", "g"] as const;
type P5 = [
  Deno.PointerValue,
  Deno.PointerValue,
  Deno.PointerValue,
  Deno.PointerValue,
  Deno.PointerValue,
];
const f32In = (data: Float32Array, shape: number[]) => ({ data, shape });

// ---- the five mixes ----
function draw(c: Cfg, rng: Rng) {
  const n = c.B * c.T * c.C;
  return {
    x: rng.normal(n),
    m: J.map(() => rng.normal(n, 0.5)),
    maa: J.map(() => rng.uniform(c.C, 0, 1)),
    dout: J.map(() => rng.normal(n)),
    g0: J.map(() => rng.normal(n)), // gradients' prior contents (+=)
    gx0: rng.normal(n),
    gp0: J.map(() => rng.normal(c.C)),
  };
}
type Draw = ReturnType<typeof draw>;

function mix5Forward(be: Backend, c: Cfg, d: Draw, bf16: boolean) {
  const { B, T, C } = c, act = [B, T, C];
  const ins: Record<string, { data: Float32Array; shape: number[] }> = { x: f32In(d.x, act) };
  J.forEach((j, i) => {
    ins["m_" + j] = f32In(d.m[i], act);
    ins["maa_" + j] = f32In(d.maa[i], [C]);
  });
  const outs = Object.fromEntries(
    J.map((j) => ["out_" + j, { shape: act, dtype: bf16 ? "bf16" as const : "f32" as const }]),
  );
  return withTensors(be, ins, outs, (t) => {
    const p = (pre: string) => J.map((j) => t[pre + j].ptr) as P5;
    const rc = be.k.mn_rwkv6_mix5_forward(
      ...p("out_"),
      t.x.ptr,
      ...p("m_"),
      ...p("maa_"),
      bf16 ? 1 : 0,
      B,
      T,
      C,
      be.stream,
    );
    assert.equal(rc, 0, be.lastError());
  });
}

function mix5Backward(be: Backend, c: Cfg, d: Draw, accumulate = ALL) {
  const { B, T, C } = c, act = [B, T, C];
  const ins: Record<string, { data: Float32Array; shape: number[] }> = { x: f32In(d.x, act) };
  const outs: Record<string, { shape: number[]; init?: Float32Array }> = {
    dx: { shape: act, init: accumulate & 1 ? d.gx0 : undefined },
  };
  J.forEach((j, i) => {
    ins["m_" + j] = f32In(d.m[i], act);
    ins["maa_" + j] = f32In(d.maa[i], [C]);
    ins["dout_" + j] = f32In(d.dout[i], act);
    outs["dm_" + j] = { shape: act, init: (accumulate >> (1 + i)) & 1 ? d.g0[i] : undefined };
    outs["dmaa_" + j] = { shape: [C], init: d.gp0[i] };
  });
  return withTensors(be, ins, outs, (t) => {
    const p = (pre: string) => J.map((j) => t[pre + j].ptr) as P5;
    const rc = be.k.mn_rwkv6_mix5_backward(
      t.dx.ptr,
      ...p("dm_"),
      ...p("dmaa_"),
      ...p("dout_"),
      t.x.ptr,
      ...p("m_"),
      ...p("maa_"),
      B,
      T,
      C,
      accumulate,
      be.stream,
    );
    assert.equal(rc, 0, be.lastError());
  });
}

/** xx[i] = x[i-1] - x[i] within a sequence (zero before t = 0) */
function xxRef(x: Float32Array, { T, C }: Cfg): Float64Array {
  return Float64Array.from(x, (v, e) => (Math.floor(e / C) % T ? x[e - C] : 0) - v);
}
function mix5Ref(c: Cfg, d: Draw) {
  const xx = xxRef(d.x, c), n = d.x.length, { T, C } = c;
  const r: Record<string, Float64Array> = { dx: Float64Array.from(d.gx0) };
  J.forEach((j, i) => {
    const coef = (e: number) => d.m[i][e] + d.maa[i][e % C];
    r["out_" + j] = Float64Array.from(d.x, (v, e) => v + xx[e] * coef(e));
    r["dm_" + j] = Float64Array.from(d.g0[i], (g, e) => g + d.dout[i][e] * xx[e]);
    const dmaa = r["dmaa_" + j] = Float64Array.from(d.gp0[i]);
    for (let e = 0; e < n; e++) {
      const last = (Math.floor(e / C) + 1) % T === 0;
      r.dx[e] += d.dout[i][e] * (1 - coef(e)) + (last ? 0 : d.dout[i][e + C] * coef(e + C));
      dmaa[e % C] += d.dout[i][e] * xx[e];
    }
  });
  return r;
}

// ---- the decay and key chain ----
function drawDecay(c: Cfg, rng: Rng) {
  const n = c.B * c.T * c.C;
  // ww + time_decay straddles 0 (both sides of the clamp); some exact zeros: exp(min(0, 0)) = 1
  // and clamp(max=0) passes the gradient there
  const ww = rng.normal(n);
  for (let e = 0; e < n; e += 7) ww[e] = 0;
  return {
    ww,
    k: rng.normal(n),
    td: Float32Array.from({ length: c.C }, (_, i) => (i % 3 === 0 ? 0 : rng.normal(1)[0] * 0.5)),
    dw: rng.normal(n),
    dkw: rng.normal(n),
    g0: [rng.normal(n), rng.normal(n)],
    gp0: rng.normal(c.C),
  };
}
type DecayDraw = ReturnType<typeof drawDecay>;

function decayForward(be: Backend, c: Cfg, d: DecayDraw, bf16: boolean) {
  const N = c.B * c.T, C = c.C, dt = bf16 ? "bf16" as const : "f32" as const;
  return withTensors(
    be,
    { ww: f32In(d.ww, [N, C]), k: f32In(d.k, [N, C]), td: f32In(d.td, [C]) },
    { w: { shape: [N, C], dtype: dt }, kw: { shape: [N, C], dtype: dt } },
    (t) => {
      const rc = be.k.mn_rwkv6_decay_k_forward(
        t.w.ptr,
        t.kw.ptr,
        t.ww.ptr,
        t.k.ptr,
        t.td.ptr,
        bf16 ? 1 : 0,
        N,
        C,
        be.stream,
      );
      assert.equal(rc, 0, be.lastError());
    },
  );
}

function decayBackward(be: Backend, c: Cfg, d: DecayDraw, accumulate = ALL) {
  const N = c.B * c.T, C = c.C, act = [N, C];
  return withTensors(
    be,
    {
      ww: f32In(d.ww, act),
      k: f32In(d.k, act),
      td: f32In(d.td, [C]),
      dw: f32In(d.dw, act),
      dkw: f32In(d.dkw, act),
    },
    {
      dww: { shape: act, init: accumulate & 1 ? d.g0[0] : undefined },
      dk: { shape: act, init: accumulate & 2 ? d.g0[1] : undefined },
      dtd: { shape: [C], init: d.gp0 },
    },
    (t) => {
      const rc = be.k.mn_rwkv6_decay_k_backward(
        t.dww.ptr,
        t.dk.ptr,
        t.dtd.ptr,
        t.dw.ptr,
        t.dkw.ptr,
        t.ww.ptr,
        t.k.ptr,
        t.td.ptr,
        N,
        C,
        accumulate,
        be.stream,
      );
      assert.equal(rc, 0, be.lastError());
    },
  );
}

function decayRef(c: Cfg, d: DecayDraw) {
  const C = c.C, n = d.ww.length;
  const w = new Float64Array(n), kw = new Float64Array(n);
  const dww = Float64Array.from(d.g0[0]), dk = Float64Array.from(d.g0[1]);
  const dtd = Float64Array.from(d.gp0);
  for (let e = 0; e < n; e++) {
    const we = Math.fround(d.ww[e] + d.td[e % C]); // the fp32 sum both kernels form
    const ex = Math.exp(Math.min(we, 0));
    w[e] = we;
    kw[e] = d.k[e] * ex;
    const g = d.dw[e] + (we <= 0 ? d.dkw[e] * d.k[e] * ex : 0);
    dww[e] += g;
    dk[e] += d.dkw[e] * ex;
    dtd[e % C] += g;
  }
  return { w, kw, dww, dk, dtd };
}

// ---- GroupNorm times the gate ----
type HCfg = { N: number; H: number; D: number };
const HSHAPES: HCfg[] = [
  { N: 1, H: 1, D: 16 },
  { N: 5, H: 3, D: 33 }, // a head size that is not a multiple of the warp
  { N: 16, H: 2, D: 64 },
  { N: 300, H: 2, D: 32 }, // several row tiles in the column sums, a short last one
  { N: 130, H: 2, D: 136 }, // a head over 128 channels: two blocks per head; a last tile of 2 rows
];
const hLabel = (c: HCfg) => `[${c.N},${c.H},${c.D}]`;
const GN_EPS = 64e-5;

function drawGn(c: HCfg, rng: Rng) {
  const n = c.N * c.H * c.D, C = c.H * c.D;
  const y = rng.normal(n, 2);
  for (let e = 0; e < n; e++) y[e] += (Math.floor(e / c.D) % 3) - 1; // nonzero head means
  return {
    y,
    gate: rng.normal(n),
    weight: rng.uniform(C, 0.5, 1.5),
    bias: rng.normal(C, 0.3),
    dout: rng.normal(n),
    g0: [rng.normal(n), rng.normal(n)],
    gp0: [rng.normal(C), rng.normal(C)],
  };
}
type GnDraw = ReturnType<typeof drawGn>;

/** the gate as a kernel input: fp32, or bf16 (its LoRA's output) with gateBf16 */
const gateIn = (gate: Float32Array, shape: number[], gateBf16: boolean) =>
  gateBf16 ? { data: f32ToBf16(gate), shape, dtype: "bf16" as const } : f32In(gate, shape);

function gnForward(be: Backend, c: HCfg, d: GnDraw, bf16: boolean, gateBf16 = false) {
  const { N, H, D } = c, C = H * D;
  return withTensors(
    be,
    {
      y: f32In(d.y, [N, C]),
      weight: f32In(d.weight, [C]),
      bias: f32In(d.bias, [C]),
      gate: gateIn(d.gate, [N, C], gateBf16),
    },
    {
      out: { shape: [N, C], dtype: bf16 ? "bf16" : "f32" },
      mean: { shape: [N, H] },
      rstd: { shape: [N, H] },
    },
    (t) => {
      const rc = be.k.mn_rwkv6_gn_gate_forward(
        t.out.ptr,
        t.mean.ptr,
        t.rstd.ptr,
        t.y.ptr,
        t.weight.ptr,
        t.bias.ptr,
        t.gate.ptr,
        bf16 ? 1 : 0,
        gateBf16 ? 1 : 0,
        N,
        H,
        D,
        GN_EPS,
        be.stream,
      );
      assert.equal(rc, 0, be.lastError());
    },
  );
}

/** the backward, given the statistics of the forward on the same backend (they do not read the
 * gate); gateBf16: a bf16 gate input, dgateBf16: a bf16 dgate output (overwritten) */
function gnBackward(
  be: Backend,
  c: HCfg,
  d: GnDraw,
  accumulate = ALL,
  gateBf16 = false,
  dgateBf16 = false,
) {
  const { N, H, D } = c, C = H * D;
  const st = gnForward(be, c, d, false);
  return withTensors(
    be,
    {
      y: f32In(d.y, [N, C]),
      weight: f32In(d.weight, [C]),
      bias: f32In(d.bias, [C]),
      gate: gateIn(d.gate, [N, C], gateBf16),
      dout: f32In(d.dout, [N, C]),
      mean: f32In(st.mean as Float32Array, [N, H]),
      rstd: f32In(st.rstd as Float32Array, [N, H]),
    },
    {
      dy: { shape: [N, C], init: accumulate & 1 ? d.g0[0] : undefined },
      dgate: dgateBf16
        ? { shape: [N, C], dtype: "bf16" as const }
        : { shape: [N, C], init: accumulate & 2 ? d.g0[1] : undefined },
      dweight: { shape: [C], init: d.gp0[0] },
      dbias: { shape: [C], init: d.gp0[1] },
    },
    (t) => {
      const rc = be.k.mn_rwkv6_gn_gate_backward(
        t.dy.ptr,
        t.dgate.ptr,
        t.dweight.ptr,
        t.dbias.ptr,
        t.dout.ptr,
        t.y.ptr,
        t.weight.ptr,
        t.bias.ptr,
        t.mean.ptr,
        t.rstd.ptr,
        t.gate.ptr,
        gateBf16 ? 1 : 0,
        dgateBf16 ? 1 : 0,
        N,
        H,
        D,
        accumulate,
        be.stream,
      );
      assert.equal(rc, 0, be.lastError());
    },
  );
}

/** float64 forward out = GroupNorm(y) * gate */
function gnRef(
  c: HCfg,
  y: ArrayLike<number>,
  gate: ArrayLike<number>,
  weight: ArrayLike<number>,
  bias: ArrayLike<number>,
) {
  const { N, H, D } = c, out = new Float64Array(N * H * D);
  for (let row = 0; row < N * H; row++) {
    const e0 = row * D, c0 = (row % H) * D;
    let m = 0, v = 0;
    for (let j = 0; j < D; j++) m += y[e0 + j];
    m /= D;
    for (let j = 0; j < D; j++) v += (y[e0 + j] - m) ** 2;
    const rs = 1 / Math.sqrt(v / D + GN_EPS);
    for (let j = 0; j < D; j++) {
      const e = e0 + j;
      out[e] = ((y[e] - m) * rs * weight[c0 + j] + bias[c0 + j]) * gate[e];
    }
  }
  return out;
}

// ---- emu (and cuda) vs cpu ----
for (const bf16 of [false, true]) {
  const tol = bf16 ? TOL_BF16 : TOL_F32, kind = bf16 ? "bf16" : "fp32";
  checkKernel({
    name: `rwkv6_mix5_forward (${kind} out)`,
    configs: SHAPES,
    label,
    tol,
    run: (be, c, rng) => mix5Forward(be, c, draw(c, rng), bf16),
  });
  checkKernel({
    name: `rwkv6_decay_k_forward (${kind} out)`,
    configs: SHAPES,
    label,
    tol,
    run: (be, c, rng) => decayForward(be, c, drawDecay(c, rng), bf16),
  });
  checkKernel({
    name: `rwkv6_gn_gate_forward (${kind} out)`,
    configs: HSHAPES,
    label: hLabel,
    // the statistics in fp32 (emu) vs double (cpu): TOL_F32-sized, then the rounding of out
    tol: { out: bf16 ? TOL_BF16 : { atol: 2e-5, rtol: 2e-5 }, mean: TOL_F32, rstd: TOL_F32 },
    run: (be, c, rng) => gnForward(be, c, drawGn(c, rng), bf16),
  });
}
checkKernel({
  name: "rwkv6_mix5_backward",
  configs: SHAPES,
  label,
  tol: Object.fromEntries(
    ["dx", ...J.flatMap((j) => ["dm_" + j, "dmaa_" + j])].map((
      k,
    ) => [k, k.startsWith("dmaa") ? SUM : TOL_F32]),
  ),
  run: (be, c, rng) => mix5Backward(be, c, draw(c, rng)),
});
checkKernel({
  name: "rwkv6_decay_k_backward",
  configs: SHAPES,
  label,
  tol: { dww: TOL_F32, dk: TOL_F32, dtd: SUM },
  run: (be, c, rng) => decayBackward(be, c, drawDecay(c, rng)),
});
checkKernel({
  name: "rwkv6_gn_gate_backward",
  configs: HSHAPES,
  label: hLabel,
  // dy: a difference of per-head sums (fp32 on emu, double on cpu) times rstd ~ 1/2: ~10 ulps
  tol: { dy: { atol: 3e-5, rtol: 3e-5 }, dgate: TOL_F32, dweight: SUM, dbias: SUM },
  run: (be, c, rng) => gnBackward(be, c, drawGn(c, rng)),
});
checkKernel({
  name: "rwkv6_gn_gate_forward (bf16 gate in, bf16 out)",
  configs: HSHAPES,
  label: hLabel,
  tol: { out: TOL_BF16, mean: TOL_F32, rstd: TOL_F32 },
  run: (be, c, rng) => gnForward(be, c, drawGn(c, rng), true, true),
});
checkKernel({
  name: "rwkv6_gn_gate_backward (bf16 gate in, bf16 dgate out)",
  configs: HSHAPES,
  label: hLabel,
  tol: { dy: { atol: 3e-5, rtol: 3e-5 }, dgate: TOL_BF16, dweight: SUM, dbias: SUM },
  run: (be, c, rng) => gnBackward(be, c, drawGn(c, rng), 0xc, true, true),
});

testEachBackend(
  "rwkv6_gn_gate: a bf16 gate read as its values, a bf16 dgate the fp32 one rounded once",
  (name) => {
    checkBf16Gate({
      shapes: HSHAPES,
      label: hLabel,
      draw: drawGn,
      rounded: (d, round) => ({ ...d, gate: round(d.gate) }),
      forward: gnForward,
      backward: gnBackward,
      acc: 0xc,
    }, name);
  },
);

// ---- cpu vs float64 ----
Deno.test("rwkv6 fused kernels: cpu forward and backward match float64 references", () => {
  const be = backend("cpu");
  SHAPES.forEach((c, ci) => {
    const rng = new Rng(SEED + ci), d = draw(c, rng);
    const want = mix5Ref(c, d);
    const got = { ...mix5Forward(be, c, d, false), ...mix5Backward(be, c, d) };
    for (const k of Object.keys(want)) {
      compare(`mix5 ${label(c)} ${k}`, got[k], want[k], k.startsWith("dmaa") ? SUM : TOL_F32);
    }
    const dd = drawDecay(c, rng), wantD = decayRef(c, dd);
    const gotD = { ...decayForward(be, c, dd, false), ...decayBackward(be, c, dd) };
    for (const k of Object.keys(wantD)) {
      compare(`decay_k ${label(c)} ${k}`, gotD[k], wantD[k as keyof typeof wantD], TOL_F32);
    }
  });
  // GroupNorm * gate: forward against float64; backward against float64 central differences of
  // L = sum(dout * out) (the gradients added onto their prior contents)
  HSHAPES.slice(0, 3).forEach((c, ci) => {
    const d = drawGn(c, new Rng(SEED + 10 + ci));
    compare(
      `gn_gate ${hLabel(c)} out`,
      gnForward(be, c, d, false).out,
      gnRef(c, d.y, d.gate, d.weight, d.bias),
      { atol: 2e-6, rtol: 2e-6 },
    );
    const got = gnBackward(be, c, d);
    const L = (
      y: ArrayLike<number>,
      gate: ArrayLike<number>,
      weight: ArrayLike<number> = d.weight,
      bias: ArrayLike<number> = d.bias,
    ) => gnRef(c, y, gate, weight, bias).reduce((s, v, i) => s + v * d.dout[i], 0);
    const h = 1e-6;
    const fd = (base: Float32Array, at: (v: Float64Array) => number) =>
      Float64Array.from(base, (b, i) => {
        const v = Float64Array.from(base);
        v[i] = b + h;
        const up = at(v);
        v[i] = b - h;
        return (up - at(v)) / (2 * h);
      });
    const tol: Tol = { atol: 2e-5, rtol: 1e-4 };
    const add = (a: Float64Array, p: Float32Array) => a.map((v, i) => v + p[i]);
    compare("gn_gate dy", got.dy, add(fd(d.y, (v) => L(v, d.gate)), d.g0[0]), tol);
    compare("gn_gate dgate", got.dgate, add(fd(d.gate, (v) => L(d.y, v)), d.g0[1]), tol);
    const dw = fd(d.weight, (v) => L(d.y, d.gate, v));
    compare("gn_gate dweight", got.dweight, add(dw, d.gp0[0]), tol);
    const db = fd(d.bias, (v) => L(d.y, d.gate, d.weight, v));
    compare("gn_gate dbias", got.dbias, add(db, d.gp0[1]), tol);
  });
});

// ---- accumulate bits ----
Deno.test("rwkv6 fused kernels: accumulate bits (clear = overwrite without reading; parameter bits must be set)", () => {
  for (const name of ["cpu", "emu"] as const) {
    const be = backend(name);
    const c = SHAPES[3], rng = new Rng(SEED);
    // mix5: clear bits for dx and dm_*: the poisoned (NaN) buffers are overwritten
    const d = draw(c, rng);
    const add = mix5Backward(be, c, d);
    const over = mix5Backward(be, c, d, 0x7c0);
    const zero = { ...d, g0: d.g0.map((g) => g.map(() => 0)), gx0: d.gx0.map(() => 0) };
    const addToZero = mix5Backward(be, c, zero);
    for (const k of ["dx", ...J.map((j) => "dm_" + j)]) {
      compare(`${name} mix5 overwritten ${k}`, over[k], addToZero[k], EXACT);
      assert.ok(add[k].some((v, i) => v !== over[k][i]), `${name} ${k}: += and = differ`);
    }
    // one bit at a time: the others still add
    for (let bit = 0; bit < 6; bit++) {
      const one = mix5Backward(be, c, d, ALL & ~(1 << bit));
      const k = bit === 0 ? "dx" : "dm_" + J[bit - 1];
      compare(`${name} mix5 bit ${bit} ${k}`, one[k], addToZero[k], EXACT);
      const other = bit === 0 ? "dm_w" : "dx";
      compare(`${name} mix5 bit ${bit} ${other}`, one[other], add[other], EXACT);
    }
    assert.throws(() => mix5Backward(be, c, d, 0x3ff), /parameter-vector gradients accumulate/);
    const again = mix5Backward(be, c, d);
    for (const k of Object.keys(add)) compare(`${name} mix5 rerun ${k}`, again[k], add[k], EXACT);

    // decay_k
    const dd = drawDecay(c, rng);
    const dAdd = decayBackward(be, c, dd);
    const dZero = decayBackward(be, c, { ...dd, g0: dd.g0.map((g) => g.map(() => 0)) });
    for (const [acc, keys] of [[4, ["dww", "dk"]], [5, ["dk"]], [6, ["dww"]]] as const) {
      const r = decayBackward(be, c, dd, acc);
      for (const k of keys) compare(`${name} decay_k acc ${acc} ${k}`, r[k], dZero[k], EXACT);
      for (const k of ["dww", "dk"].filter((k) => !(keys as readonly string[]).includes(k))) {
        compare(`${name} decay_k acc ${acc} ${k} adds`, r[k], dAdd[k], EXACT);
      }
      compare(`${name} decay_k acc ${acc} dtd`, r.dtd, dAdd.dtd, EXACT);
    }
    assert.ok(dAdd.dk.some((v, i) => v !== dZero.dk[i]), `${name} decay_k: += and = differ`);
    assert.throws(() => decayBackward(be, c, dd, 3), /parameter-vector gradients accumulate/);

    // gn_gate
    const hc = HSHAPES[3], gd = drawGn(hc, rng);
    const gAdd = gnBackward(be, hc, gd);
    const gZero = gnBackward(be, hc, { ...gd, g0: gd.g0.map((g) => g.map(() => 0)) });
    for (const [acc, keys] of [[0xc, ["dy", "dgate"]], [0xd, ["dgate"]], [0xe, ["dy"]]] as const) {
      const r = gnBackward(be, hc, gd, acc);
      for (const k of keys) compare(`${name} gn_gate acc ${acc} ${k}`, r[k], gZero[k], EXACT);
      for (const k of ["dy", "dgate"].filter((k) => !(keys as readonly string[]).includes(k))) {
        compare(`${name} gn_gate acc ${acc} ${k} adds`, r[k], gAdd[k], EXACT);
      }
      for (const k of ["dweight", "dbias"]) {
        compare(`${name} gn_gate acc ${acc} ${k}`, r[k], gAdd[k], EXACT);
      }
    }
    assert.throws(() => gnBackward(be, hc, gd, 0x7), /parameter-vector gradients accumulate/);
    assert.throws(() => gnBackward(be, hc, gd, 0xb), /parameter-vector gradients accumulate/);
  }
});

// ---- the fused graph ops against the generic-op compositions they replace ----
/** Runs `build` on a fresh fp32 graph over parameters made from `vals`, backward from `douts`;
 * returns every output and every parameter's gradient. */
function runGraph(
  be: Backend,
  vals: Record<string, { data: Float32Array; shape: number[] }>,
  douts: Float32Array[],
  build: (g: Graph, P: Record<string, Var>) => Var[],
) {
  const params = Object.fromEntries(
    Object.entries(vals).map(([k, v]) => [k, new Param(be, k, be.upload(v.data, v.shape))]),
  );
  const g = new Graph(be);
  g.precision = "f32";
  const P = Object.fromEntries(Object.entries(params).map(([k, p]) => [k, g.param(p)]));
  const ys = build(g, P);
  const res: Record<string, Float32Array> = {};
  ys.forEach((y, i) => {
    res["out" + i] = be.downloadF32(y.t);
    y.g = be.upload(douts[i], [...y.shape]);
  });
  g.backward();
  for (const [k, p] of Object.entries(params)) res["d" + k] = be.downloadF32(p.grad);
  g.release();
  return res;
}

Deno.test("rwkv6 fused graph ops = their generic-op compositions (fp32 graph, cpu and emu)", () => {
  for (const name of ["cpu", "emu"] as const) {
    const be = backend(name);
    const c = SHAPES[3], act = [c.B, c.T, c.C], rng = new Rng(SEED + 100);
    const check = (
      what: string,
      a: Record<string, Float32Array>,
      b: Record<string, Float32Array>,
      tol: number,
    ) => {
      for (const k of Object.keys(b)) {
        const e = relErr(a[k], b[k]);
        assert.ok(e <= tol, `${name} ${what} ${k}: normwise difference ${e} (seed ${SEED})`);
      }
    };
    // mixes: time_maa_x's mix (rwkv7MixX) and the five
    const d = draw(c, rng);
    const vals: Record<string, { data: Float32Array; shape: number[] }> = {
      x: f32In(d.x, act),
      maaX: f32In(rng.uniform(c.C, 0, 1), [c.C]),
    };
    J.forEach((j, i) => {
      vals["m" + j] = f32In(d.m[i], act);
      vals["maa" + j] = f32In(d.maa[i], [c.C]);
    });
    const douts = [...d.dout, rng.normal(d.x.length)];
    const mJ = (P: Record<string, Var>) => J.map((j) => P["m" + j]);
    const maaJ = (P: Record<string, Var>) => J.map((j) => P["maa" + j]);
    const fused = runGraph(be, vals, douts, (g, P) => [
      ...g.rwkv6Mix5(P.x, mJ(P), maaJ(P)),
      g.rwkv7MixX(P.x, P.maaX),
    ]);
    const unfused = runGraph(be, vals, douts, (g, P) => {
      const xx = g.axpby(1, g.timeShift(P.x), -1, P.x);
      return [
        ...mJ(P).map((m, i) => g.add(P.x, g.mul(xx, g.addRow(m, maaJ(P)[i])))),
        g.add(P.x, g.mulRow(xx, P.maaX)),
      ];
    });
    // the same fp32 operations per element: only the order of the column sums differs
    check("mixes", fused, unfused, 2e-6);

    // decay and key chain
    const dd = drawDecay(c, rng), shape2 = [c.B * c.T, c.C];
    const dv = { ww: f32In(dd.ww, shape2), k: f32In(dd.k, shape2), td: f32In(dd.td, [c.C]) };
    const fusedD = runGraph(be, dv, [dd.dw, dd.dkw], (g, P) => {
      const { w, kw } = g.rwkv6DecayK(P.ww, P.k, P.td);
      return [w, kw];
    });
    const unfusedD = runGraph(be, dv, [dd.dw, dd.dkw], (g, P) => {
      const w = g.addRow(P.ww, P.td);
      return [w, g.mul(P.k, g.unary(w, "EXP_MIN0"))];
    });
    check("decay_k", fusedD, unfusedD, 2e-6);

    // GroupNorm * gate
    const hc = HSHAPES[3], gd = drawGn(hc, rng), C = hc.H * hc.D;
    const gv = {
      y: f32In(gd.y, [hc.N, C]),
      gate: f32In(gd.gate, [hc.N, C]),
      weight: f32In(gd.weight, [C]),
      bias: f32In(gd.bias, [C]),
    };
    const fusedG = runGraph(be, gv, [gd.dout], (g, P) => [
      g.rwkv6GnGate(P.y, P.weight, P.bias, P.gate, hc.H, GN_EPS),
    ]);
    const unfusedG = runGraph(be, gv, [gd.dout], (g, P) => [
      g.mul(g.groupnorm(P.y, P.weight, P.bias, hc.H, GN_EPS), P.gate),
    ]);
    check("gn_gate", fusedG, unfusedG, 2e-6);
  }
});
