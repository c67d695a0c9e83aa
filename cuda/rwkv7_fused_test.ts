// Fused RWKV-7 time-mixing kernels (rwkv7_fused.cu / cpu/rwkv7_fused.cpp):
//   - emu (and cuda with a GPU) vs cpu, forward (fp32 and bf16 outputs) and backward, at shapes
//     with one and several sequences, a T of 1, and enough rows for the two-stage column sums;
//   - cpu vs a float64 reference written here from the math (forward, and the backward's
//     gradients from the derivative by hand), gradients pre-filled so `+=` is what is checked;
//   - the accumulate bits: a clear bit overwrites a NaN-filled gradient, a parameter-vector
//     gradient's clear bit is an error;
//   - backward twice gives the same bits (the column sums are ordered).
// That the fused ops equal the generic ops' composition inside the model is train_rwkv7_test.ts's
// fused-vs-unfused check.
import assert from "node:assert/strict";
import { type Backend, bf16ToF32, f32ToBf16 } from "./backend.ts";
import { checkBf16Gate } from "./test/gate_bf16_cases.ts";
import {
  backend,
  checkKernel,
  compare,
  EXACT,
  f64,
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
// error ~sqrt(rows) 2^-24 |terms| (|terms| ~ 1 here). 4e-5 is ~10x the worst seen over 20 seeds.
const SUM: Tol = { atol: 4e-5, rtol: 2e-5 };
const ALL = -1; // accumulate every gradient
const J = ["rg", "wa", "k", "v"] as const;

function draw(c: Cfg, rng: Rng) {
  const n = c.B * c.T * c.C;
  return {
    x: rng.normal(n),
    m: J.map(() => rng.normal(n, 0.5)),
    maa: J.map(() => rng.uniform(c.C, 0, 1)),
    maaX: rng.uniform(c.C, 0, 1),
    dout: J.map(() => rng.normal(n)),
    g0: J.map(() => rng.normal(n)), // gradients' prior contents (+=)
    gx0: rng.normal(n),
    gp0: J.map(() => rng.normal(c.C)),
  };
}
type Draw = ReturnType<typeof draw>;

const f32In = (data: Float32Array, shape: number[]) => ({ data, shape });

function mixXForward(be: Backend, c: Cfg, d: Draw, bf16: boolean) {
  const { B, T, C } = c;
  return withTensors(
    be,
    { x: f32In(d.x, [B, T, C]), maa: f32In(d.maaX, [C]) },
    { out: { shape: [B, T, C], dtype: bf16 ? "bf16" : "f32" } },
    (t) => {
      const rc = be.k.mn_rwkv7_mix_x_forward(
        t.out.ptr,
        t.x.ptr,
        t.maa.ptr,
        bf16 ? 1 : 0,
        B,
        T,
        C,
        be.stream,
      );
      assert.equal(rc, 0, be.lastError());
    },
  );
}

/** doutBf16: dout given as its bf16 rounding (the maa LoRA's bf16 dX) */
function mixXBackward(be: Backend, c: Cfg, d: Draw, accumulate = ALL, doutBf16 = false) {
  const { B, T, C } = c;
  const dout = doutBf16
    ? { data: f32ToBf16(d.dout[0]), shape: [B, T, C], dtype: "bf16" as const }
    : f32In(d.dout[0], [B, T, C]);
  return withTensors(
    be,
    { x: f32In(d.x, [B, T, C]), maa: f32In(d.maaX, [C]), dout },
    {
      dx: { shape: [B, T, C], init: accumulate & 1 ? d.gx0 : undefined },
      dmaa: { shape: [C], init: d.gp0[0] },
    },
    (t) => {
      const rc = be.k.mn_rwkv7_mix_x_backward(
        t.dx.ptr,
        t.dmaa.ptr,
        t.dout.ptr,
        t.x.ptr,
        t.maa.ptr,
        doutBf16 ? 1 : 0,
        B,
        T,
        C,
        accumulate,
        be.stream,
      );
      assert.equal(rc, 0, be.lastError());
    },
  );
}

/** m_j as a kernel input: fp32, or its bf16 rounding (the LoRA's bf16 output) */
const mIn = (m: Float32Array, shape: number[], bf16: boolean) =>
  bf16 ? { data: f32ToBf16(m), shape, dtype: "bf16" as const } : f32In(m, shape);
type In = { data: Float32Array | Uint16Array; shape: number[]; dtype?: "bf16" };

function mix4Forward(be: Backend, c: Cfg, d: Draw, bf16: boolean, mBf16 = false) {
  const { B, T, C } = c, act = [B, T, C];
  const ins: Record<string, In> = { x: f32In(d.x, act) };
  J.forEach((j, i) => {
    ins["m_" + j] = mIn(d.m[i], act, mBf16);
    ins["maa_" + j] = f32In(d.maa[i], [C]);
  });
  const outs = Object.fromEntries(
    J.map((j) => ["out_" + j, { shape: act, dtype: bf16 ? "bf16" as const : "f32" as const }]),
  );
  return withTensors(be, ins, outs, (t) => {
    const rc = be.k.mn_rwkv7_mix4_forward(
      ...J.map((j) => t["out_" + j].ptr) as Ptr4,
      t.x.ptr,
      ...J.map((j) => t["m_" + j].ptr) as Ptr4,
      ...J.map((j) => t["maa_" + j].ptr) as Ptr4,
      bf16 ? 1 : 0,
      mBf16 ? 1 : 0,
      B,
      T,
      C,
      be.stream,
    );
    assert.equal(rc, 0, be.lastError());
  });
}
type Ptr4 = [Deno.PointerValue, Deno.PointerValue, Deno.PointerValue, Deno.PointerValue];

/** The bf16 gradient parts of the mixes' outputs: dout_j and a second part (none for "wa", as
 * xwa's one consumer in the model) */
const PARTS = (d: Draw) => ({
  dout: d.dout.map(f32ToBf16),
  dout2: J.map((j, i) => (j === "wa" ? null : f32ToBf16(d.dout[(i + 1) % 4]))),
});
/** The fp32 gradients the parts stand for: their widened values summed in float */
function partsSummed(d: Draw): Draw {
  const p = PARTS(d);
  return {
    ...d,
    dout: p.dout.map((a, i) => {
      const x = bf16ToF32(a), y = p.dout2[i] ? bf16ToF32(p.dout2[i]!) : null;
      return y ? x.map((v, e) => Math.fround(v + y[e])) : x;
    }),
  };
}

/** mBf16: bf16 m_j inputs; dmBf16: bf16 dm_j outputs (overwritten); parts: the gradients as bf16
 * parts (PARTS) */
function mix4Backward(
  be: Backend,
  c: Cfg,
  d: Draw,
  accumulate = ALL,
  mBf16 = false,
  dmBf16 = false,
  parts = false,
) {
  const { B, T, C } = c, act = [B, T, C];
  const ins: Record<string, In> = { x: f32In(d.x, act) };
  const outs: Record<string, { shape: number[]; init?: Float32Array; dtype?: "bf16" }> = {
    dx: { shape: act, init: accumulate & 1 ? d.gx0 : undefined },
  };
  J.forEach((j, i) => {
    ins["m_" + j] = mIn(d.m[i], act, mBf16);
    ins["maa_" + j] = f32In(d.maa[i], [C]);
    if (parts) {
      const pd = PARTS(d);
      ins["dout_" + j] = { data: pd.dout[i], shape: act, dtype: "bf16" };
      if (pd.dout2[i]) ins["dout2_" + j] = { data: pd.dout2[i]!, shape: act, dtype: "bf16" };
    } else ins["dout_" + j] = f32In(d.dout[i], act);
    outs["dm_" + j] = dmBf16 ? { shape: act, dtype: "bf16" } : {
      shape: act,
      init: (accumulate >> (1 + i)) & 1 ? d.g0[i] : undefined,
    };
    outs["dmaa_" + j] = { shape: [C], init: d.gp0[i] };
  });
  return withTensors(be, ins, outs, (t) => {
    const p = (pre: string) => J.map((j) => t[pre + j].ptr) as Ptr4;
    const rc = be.k.mn_rwkv7_mix4_backward(
      t.dx.ptr,
      ...p("dm_"),
      ...p("dmaa_"),
      ...p("dout_"),
      ...J.map((j) => t["dout2_" + j]?.ptr ?? null) as Ptr4,
      t.x.ptr,
      ...p("m_"),
      ...p("maa_"),
      mBf16 ? 1 : 0,
      dmBf16 ? 1 : 0,
      parts ? 1 : 0,
      B,
      T,
      C,
      accumulate,
      be.stream,
    );
    assert.equal(rc, 0, be.lastError());
  });
}

// ---- float64 references ----
/** xx[i] = x[i-1] - x[i] within a sequence (zero before t = 0) */
function xxRef(x: Float32Array, { T, C }: Cfg): Float64Array {
  return Float64Array.from(x, (v, e) => (Math.floor(e / C) % T ? x[e - C] : 0) - v);
}
function mixXRef(c: Cfg, d: Draw) {
  const xx = xxRef(d.x, c), n = d.x.length, { T, C } = c;
  const out = Float64Array.from(d.x, (v, e) => v + xx[e] * d.maaX[e % C]);
  // out[t] = x[t](1 - p) + x[t-1] p
  const dx = new Float64Array(n), dmaa = Float64Array.from(d.gp0[0]);
  for (let e = 0; e < n; e++) {
    const last = (Math.floor(e / C) + 1) % T === 0, p = d.maaX[e % C];
    dx[e] = d.gx0[e] + d.dout[0][e] * (1 - p) + (last ? 0 : d.dout[0][e + C] * p);
    dmaa[e % C] += d.dout[0][e] * xx[e];
  }
  return { out, dx, dmaa };
}
function mix4Ref(c: Cfg, d: Draw) {
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

// ---- emu (and cuda) vs cpu ----
const tolOf = (k: string): Tol => (k.startsWith("dmaa") ? SUM : TOL_F32);
for (const bf16 of [false, true]) {
  checkKernel({
    name: `rwkv7_mix_x_forward (${bf16 ? "bf16" : "fp32"} out)`,
    configs: SHAPES,
    label,
    tol: bf16 ? { out: TOL_BF16 } : { out: TOL_F32 },
    run: (be, c, rng) => mixXForward(be, c, draw(c, rng), bf16),
  });
  checkKernel({
    name: `rwkv7_mix4_forward (${bf16 ? "bf16" : "fp32"} out)`,
    configs: SHAPES,
    label,
    tol: Object.fromEntries(J.map((j) => ["out_" + j, bf16 ? TOL_BF16 : TOL_F32])),
    run: (be, c, rng) => mix4Forward(be, c, draw(c, rng), bf16),
  });
}
checkKernel({
  name: "rwkv7_mix4_forward (bf16 m in, bf16 out)",
  configs: SHAPES,
  label,
  tol: Object.fromEntries(J.map((j) => ["out_" + j, TOL_BF16])),
  run: (be, c, rng) => mix4Forward(be, c, draw(c, rng), true, true),
});
checkKernel({
  name: "rwkv7_mix4_backward (bf16 m in, bf16 dm out)",
  configs: SHAPES,
  label,
  tol: Object.fromEntries(
    ["dx", ...J.flatMap((j) => ["dm_" + j, "dmaa_" + j])].map((
      k,
    ) => [k, k.startsWith("dm_") ? TOL_BF16 : tolOf(k)]),
  ),
  run: (be, c, rng) => mix4Backward(be, c, draw(c, rng), 0x1e1, true, true),
});
checkKernel({
  name: "rwkv7_mix4_backward (bf16 gradient parts, bf16 m in, bf16 dm out)",
  configs: SHAPES,
  label,
  tol: Object.fromEntries(
    ["dx", ...J.flatMap((j) => ["dm_" + j, "dmaa_" + j])].map((
      k,
    ) => [k, k.startsWith("dm_") ? TOL_BF16 : tolOf(k)]),
  ),
  run: (be, c, rng) => mix4Backward(be, c, draw(c, rng), 0x1e1, true, true, true),
});
for (const doutBf16 of [false, true]) {
  checkKernel({
    name: `rwkv7_mix_x_backward${doutBf16 ? " (bf16 dout)" : ""}`,
    configs: SHAPES,
    label,
    tol: { dx: TOL_F32, dmaa: SUM },
    run: (be, c, rng) => mixXBackward(be, c, draw(c, rng), ALL, doutBf16),
  });
}
checkKernel({
  name: "rwkv7_mix4_backward",
  configs: SHAPES,
  label,
  tol: Object.fromEntries(
    ["dx", ...J.flatMap((j) => ["dm_" + j, "dmaa_" + j])].map((k) => [k, tolOf(k)]),
  ),
  run: (be, c, rng) => mix4Backward(be, c, draw(c, rng)),
});

// ---- cpu vs float64 ----
Deno.test("rwkv7 fused mixes: cpu forward and backward match a float64 reference", () => {
  const be = backend("cpu");
  SHAPES.forEach((c, ci) => {
    const d = draw(c, new Rng(SEED + ci));
    const wantX = mixXRef(c, d), want4 = mix4Ref(c, d);
    const check = (got: Record<string, ArrayLike<number>>, want: Record<string, Float64Array>) => {
      for (const k of Object.keys(got)) {
        compare(`${label(c)} ${k}`, got[k], want[k], tolOf(k));
      }
    };
    check(mixXForward(be, c, d, false), wantX);
    check(mixXBackward(be, c, d), wantX);
    check(mix4Forward(be, c, d, false), want4);
    check(mix4Backward(be, c, d), want4);
    // bf16 outputs are the fp32 values rounded once
    const b = mix4Forward(be, c, d, true);
    for (const j of J) {
      compare(`${label(c)} bf16 out_${j}`, b["out_" + j], want4["out_" + j], TOL_BF16);
    }
  });
});

testEachBackend(
  "rwkv7 fused mixes: bf16 m_j read as their values, bf16 dm_j the fp32 ones rounded once, bf16 gradient parts (and mix_x's bf16 dout) as their float sum",
  (name) => {
    const round = (a: Float32Array) => bf16ToF32(f32ToBf16(a));
    const be = backend(name);
    for (const c of SHAPES) {
      const d = draw(c, new Rng(SEED));
      const dr = { ...d, m: d.m.map(round) }; // what a bf16 m holds
      const want = mix4Forward(be, c, dr, true), got = mix4Forward(be, c, d, true, true);
      for (const j of J) {
        compare(`${name} ${label(c)} out_${j}`, got["out_" + j], want["out_" + j], EXACT);
      }
      const bw = mix4Backward(be, c, dr, 0x1e0), bg = mix4Backward(be, c, d, 0x1e0, true, true);
      for (const k of Object.keys(bw)) {
        const w = k.startsWith("dm_") ? round(bw[k] as Float32Array) : bw[k];
        compare(`${name} ${label(c)} ${k}`, bg[k], w, EXACT);
      }
      // bf16 dm_j are only overwritten
      assert.throws(() => mix4Backward(be, c, d, ALL, true, true), /bf16 dm_j are overwritten/);
      // a bf16 dout of mix_x: the fp32 backward on its values, bit for bit
      const xb = mixXBackward(be, c, d, 2, true);
      const xf = mixXBackward(be, c, { ...d, dout: d.dout.map(round) }, 2);
      for (const k of Object.keys(xf)) {
        compare(`${name} ${label(c)} mix_x ${k}`, xb[k], xf[k], EXACT);
      }
      // bf16 gradient parts: the fp32 backward on their float sums, bit for bit
      const ps = mix4Backward(be, c, d, 0x1e1, true, true, true);
      const pf = mix4Backward(be, c, partsSummed(d), 0x1e1, true, true);
      for (const k of Object.keys(pf)) {
        compare(`${name} ${label(c)} parts ${k}`, ps[k], pf[k], EXACT);
      }
    }
  },
);

Deno.test("rwkv7 fused mixes: accumulate bits (clear = overwrite without reading; dmaa must add)", () => {
  for (const name of ["cpu", "emu"] as const) {
    const be = backend(name);
    const c = SHAPES[2], d = draw(c, new Rng(SEED));
    // clear bits for dx and dm_*: the poisoned (NaN) buffers are overwritten
    const add = mix4Backward(be, c, d);
    const over = mix4Backward(be, c, d, 0x1e0);
    const over0 = { ...d, g0: d.g0.map((g) => g.map(() => 0)), gx0: d.gx0.map(() => 0) };
    const addToZero = mix4Backward(be, c, over0);
    for (const k of ["dx", ...J.map((j) => "dm_" + j)]) {
      compare(`${name} overwritten ${k}`, over[k], addToZero[k], EXACT);
      assert.ok(add[k].some((v, i) => v !== over[k][i]), `${name} ${k}: += and = differ`);
    }
    const x0 = mixXBackward(be, c, { ...d, gx0: d.gx0.map(() => 0) });
    compare(`${name} mix_x overwritten dx`, mixXBackward(be, c, d, 2).dx, x0.dx, EXACT);
    // a parameter gradient's bit clear is refused
    assert.throws(() => mixXBackward(be, c, d, 1), /parameter-vector gradients accumulate/);
    assert.throws(() => mix4Backward(be, c, d, 0x0ff), /parameter-vector gradients accumulate/);
    // ordered sums: the same bits twice
    const again = mix4Backward(be, c, d);
    for (const k of Object.keys(add)) compare(`${name} rerun ${k}`, again[k], add[k], EXACT);
  }
});

type Vals = Record<string, ArrayLike<number>>;
/** Each backward gradient `got["d" + name]` (accumulated onto d.prior[name]) against float64
 * central differences of `loss(act, par)`, one input element at a time. */
function checkCentralDifferences(
  got: Record<string, ArrayLike<number>>,
  d: { act: Vals; par: Vals; prior: Vals },
  acts: readonly string[],
  pars: readonly string[],
  loss: (act: Vals, par: Vals) => number,
  tol: Tol,
) {
  const h = 1e-6;
  for (const name of [...acts, ...pars]) {
    const isPar = pars.includes(name);
    const base = f64((isPar ? d.par : d.act)[name]);
    const fd = base.map((_, i) => {
      const at = (x: number) => {
        const v = base.slice();
        v[i] = x;
        return isPar ? loss(d.act, { ...d.par, [name]: v }) : loss({ ...d.act, [name]: v }, d.par);
      };
      return (at(base[i] + h) - at(base[i] - h)) / (2 * h);
    });
    const want = fd.map((v, i) => v + d.prior[name][i]);
    compare(`d${name} vs central differences`, got["d" + name], want, tol);
  }
}

// ---- (b) the chain between the projections and the WKV call ----
type HCfg = { N: number; H: number; D: number };
const HSHAPES: HCfg[] = [
  { N: 1, H: 1, D: 16 },
  { N: 5, H: 3, D: 33 }, // a head size that is not a multiple of the warp
  { N: 16, H: 2, D: 64 },
  { N: 300, H: 2, D: 32 }, // several row tiles in the column sums
];
const hLabel = (c: HCfg) => `[${c.N},${c.H},${c.D}]`;
const ACTS = ["dec", "k0", "kkk", "aaa", "mam", "mkm"] as const;
const PVEC = ["time_decay", "time_aaaaa", "time_misc_a", "time_misc_k"] as const;
const OUTS = ["w", "k", "a", "b"] as const;
const EPS = 1e-12;

function drawChain(c: HCfg, rng: Rng) {
  const n = c.N * c.H * c.D, C = c.H * c.D;
  const act = Object.fromEntries(ACTS.map((k) => [k, rng.normal(n)])) as Record<
    string,
    Float32Array
  >;
  // dec spans the softplus threshold; some w*mk > 0 (exp(min(., 0)) = 1, no gradient there)
  act.dec = rng.normal(n, 4);
  const par = Object.fromEntries(PVEC.map((k) => [k, rng.normal(C, 0.5)])) as Record<
    string,
    Float32Array
  >;
  const dout = Object.fromEntries(OUTS.map((k) => [k, rng.normal(n)])) as Record<
    string,
    Float32Array
  >;
  const prior = Object.fromEntries(
    [...ACTS, ...PVEC].map((k) => [k, rng.normal(k.startsWith("time") ? C : n)]),
  );
  return { act, par, dout, prior };
}
type Chain = ReturnType<typeof drawChain>;

/** inBf16: the six inputs as bf16 (their values rounded) */
function chainForward(be: Backend, c: HCfg, d: Chain, bf16: boolean, inBf16 = false) {
  const { N, H, D } = c, shape = [N, H * D], dt = bf16 ? "bf16" as const : "f32" as const;
  const ins = Object.fromEntries([
    ...ACTS.map((k) => [k, mIn(d.act[k], shape, inBf16)]),
    ...PVEC.map((k) => [k, f32In(d.par[k], [H * D])]),
  ]);
  const outs: Record<string, { shape: number[]; dtype?: "bf16" | "f32" }> = {
    w: { shape, dtype: dt },
    k: { shape },
    a: { shape, dtype: dt },
    b: { shape, dtype: dt },
  };
  if (bf16) outs.k_bf16 = { shape, dtype: "bf16" };
  return withTensors(be, ins, outs, (t) => {
    be.k.mn_rwkv7_wkv_inputs_forward(
      t.w.ptr,
      t.k.ptr,
      bf16 ? t.k_bf16.ptr : null,
      t.a.ptr,
      t.b.ptr,
      ...ACTS.map((k) => t[k].ptr),
      ...PVEC.map((k) => t[k].ptr),
      bf16 ? 1 : 0,
      inBf16 ? 1 : 0,
      N,
      H,
      D,
      EPS,
      be.stream,
    );
  });
}

/** inBf16: bf16 inputs; gradBf16: the six activation gradients written bf16 (overwritten);
 * doutBf16: the outputs' gradients given bf16 (WKV's: dw, da, db, and dk with "all") */
function chainBackward(
  be: Backend,
  c: HCfg,
  d: Chain,
  accumulate = ALL,
  inBf16 = false,
  gradBf16 = false,
  doutBf16: "" | "wab" | "all" = "",
) {
  const { N, H, D } = c, C = H * D, shape = [N, C];
  const doutIn = (k: string) => doutBf16 === "all" || (doutBf16 === "wab" && k !== "k");
  const ins = Object.fromEntries([
    ...OUTS.map((k) => ["d" + k, mIn(d.dout[k], shape, doutIn(k))]),
    ...ACTS.map((k) => [k, mIn(d.act[k], shape, inBf16)]),
    ...PVEC.map((k) => [k, f32In(d.par[k], [C])]),
  ]);
  const outs = Object.fromEntries([...ACTS, ...PVEC].map((k, i) => [
    "d" + k,
    i < 6 && gradBf16
      ? { shape, dtype: "bf16" as const }
      : { shape: i < 6 ? shape : [C], init: (accumulate >> i) & 1 ? d.prior[k] : undefined },
  ]));
  return withTensors(be, ins, outs, (t) => {
    be.k.mn_rwkv7_wkv_inputs_backward(
      ...[...ACTS, ...PVEC].map((k) => t["d" + k].ptr),
      ...OUTS.map((k) => t["d" + k].ptr),
      ...ACTS.map((k) => t[k].ptr),
      ...PVEC.map((k) => t[k].ptr),
      inBf16 ? 1 : 0,
      gradBf16 ? 1 : 0,
      doutBf16 ? 1 : 0,
      doutBf16 === "all" ? 1 : 0,
      N,
      H,
      D,
      EPS,
      accumulate,
      be.stream,
    );
  });
}

/** float64 forward of the chain (kernels.h), for the reference values and finite differences */
function chainRef(
  c: HCfg,
  act: Record<string, ArrayLike<number>>,
  par: Record<string, ArrayLike<number>>,
) {
  const { N, H, D } = c, C = H * D, n = N * C;
  const sig = (x: number) => 1 / (1 + Math.exp(-x));
  const sp = (z: number) => (z > 20 ? z : Math.log1p(Math.exp(z)));
  const r = Object.fromEntries(OUTS.map((k) => [k, new Float64Array(n)]));
  for (let row = 0; row < N * H; row++) {
    let ss = 0;
    for (let j = 0; j < D; j++) ss += (act.k0[row * D + j] + act.kkk[row * D + j]) ** 2;
    const denom = Math.max(Math.sqrt(ss), EPS);
    for (let j = 0; j < D; j++) {
      const e = row * D + j, ch = (row % H) * D + j;
      const w = -sp(-(act.dec[e] + par.time_decay[ch])) - 0.5;
      const kk = (act.k0[e] + act.kkk[e]) / denom;
      const a = sig(act.aaa[e] + par.time_aaaaa[ch]);
      const ma = sig(act.mam[e] + par.time_misc_a[ch]);
      const mk = sig(act.mkm[e] + par.time_misc_k[ch]);
      const ka = act.k0[e] * a;
      r.w[e] = w;
      r.k[e] = (ka + (act.k0[e] - ka) * ma) * Math.exp(Math.min(w * mk, 0));
      r.a[e] = -kk;
      r.b[e] = kk * a;
    }
  }
  return r;
}

checkKernel({
  name: "rwkv7_wkv_inputs_forward (fp32 out)",
  configs: HSHAPES,
  label: hLabel,
  // the head's norm is a float sum in another order: a few ulp in kk, then through the chain
  tol: { w: TOL_F32, k: TOL_F32, a: TOL_F32, b: TOL_F32 },
  run: (be, c, rng) => chainForward(be, c, drawChain(c, rng), false),
});
checkKernel({
  name: "rwkv7_wkv_inputs_forward (bf16 out)",
  configs: HSHAPES,
  label: hLabel,
  tol: { w: TOL_BF16, k: TOL_F32, a: TOL_BF16, b: TOL_BF16, k_bf16: TOL_BF16 },
  run: (be, c, rng) => chainForward(be, c, drawChain(c, rng), true),
});
checkKernel({
  name: "rwkv7_wkv_inputs_backward",
  configs: HSHAPES,
  label: hLabel,
  tol: Object.fromEntries(
    [...ACTS, ...PVEC].map((k) => ["d" + k, k.startsWith("time") ? SUM : TOL_F32]),
  ),
  run: (be, c, rng) => chainBackward(be, c, drawChain(c, rng)),
});

Deno.test("rwkv7_wkv_inputs: cpu forward matches float64, backward matches float64 central differences", () => {
  const be = backend("cpu");
  const c: HCfg = { N: 3, H: 2, D: 8 };
  const d = drawChain(c, new Rng(SEED));
  // keep w*mk away from the clamp's kink and dec away from the softplus threshold
  d.act.dec = d.act.dec.map((v) => Math.max(-3, Math.min(3, v)));
  const want = chainRef(c, d.act, d.par);
  const fwd = chainForward(be, c, d, false);
  for (const k of OUTS) compare(`forward ${k}`, fwd[k], want[k], TOL_F32);
  const got = chainBackward(be, c, d);
  // L = sum_out dout . out: dL/dinput by central differences on the float64 forward
  const loss = (act: Vals, par: Vals) => {
    const o = chainRef(c, act, par);
    return OUTS.reduce((s, k) => s + o[k].reduce((t, v, i) => t + v * d.dout[k][i], 0), 0);
  };
  checkCentralDifferences(got, d, ACTS, PVEC, loss, { atol: 2e-5, rtol: 2e-5 });
});

Deno.test("rwkv7_wkv_inputs: accumulate bits (clear = overwrite, set = add; parameter sums of the terms alone)", () => {
  for (const name of ["cpu", "emu"] as const) {
    const be = backend(name);
    for (const c of [HSHAPES[2], HSHAPES[3]]) { // one row tile, several
      const d = drawChain(c, new Rng(SEED));
      const add = chainBackward(be, c, d); // every bit set: the six outputs hold prior + term
      const over = chainBackward(be, c, d, 0x3c0); // activations overwritten (NaN before)
      for (const [i, k] of ACTS.entries()) {
        const want = add["d" + k].map((v, j) => v - d.prior[k][j]);
        compare(
          `${name} ${hLabel(c)} d${k}: overwrite = accumulate - prior`,
          over["d" + k],
          want,
          TOL_F32,
        );
        assert.ok(Number.isFinite(over["d" + k][0]), `${name} d${k} (bit ${i}) written`);
      }
      // the parameter sums add the terms alone (never an accumulated output's prior), whatever
      // the six outputs' bits, and add into their own priors (bits 6-9 set)
      for (const k of PVEC) {
        compare(
          `${name} ${hLabel(c)} d${k}: independent of bits 0-5`,
          add["d" + k],
          over["d" + k],
          EXACT,
        );
      }
      const half = chainBackward(be, c, d, 0x3c0 | 0x9); // ddec, daaa accumulate; the rest not
      for (const k of PVEC) {
        compare(`${name} ${hLabel(c)} d${k}: mixed bits`, half["d" + k], add["d" + k], EXACT);
      }
      const zero = { ...d, prior: { ...d.prior } };
      for (const k of PVEC) zero.prior[k] = new Float32Array(c.H * c.D);
      const sums = chainBackward(be, c, zero, 0x3c0);
      for (const k of PVEC) {
        const want = sums["d" + k].map((v, j) => v + d.prior[k][j]);
        compare(`${name} ${hLabel(c)} d${k}: prior + sum`, add["d" + k], want, TOL_F32);
      }
      assert.throws(() => chainBackward(be, c, d, 0x1ff), /parameter-vector gradients accumulate/);
      const again = chainBackward(be, c, d);
      for (const k of Object.keys(add)) compare(`${name} rerun ${k}`, again[k], add[k], EXACT);
    }
  }
});

testEachBackend(
  "rwkv7_wkv_inputs: bf16 inputs (and bf16 output gradients) read as their values, bf16 gradients the fp32 ones rounded once",
  (name) => {
    const round = (a: Float32Array) => bf16ToF32(f32ToBf16(a));
    const be = backend(name);
    for (const c of HSHAPES) {
      const d = drawChain(c, new Rng(SEED));
      const act = Object.fromEntries(ACTS.map((k) => [k, round(d.act[k])]));
      const dr = { ...d, act }; // what bf16 inputs hold
      const want = chainForward(be, c, dr, true), got = chainForward(be, c, d, true, true);
      for (const k of Object.keys(want)) {
        compare(`${name} ${hLabel(c)} ${k}`, got[k], want[k], EXACT);
      }
      const bw = chainBackward(be, c, dr, 0x3c0), bg = chainBackward(be, c, d, 0x3c0, true, true);
      for (const k of Object.keys(bw)) {
        const isAct = (ACTS as readonly string[]).includes(k.slice(1));
        compare(
          `${name} ${hLabel(c)} ${k}`,
          bg[k],
          isAct ? round(bw[k] as Float32Array) : bw[k],
          EXACT,
        );
      }
      assert.throws(
        () => chainBackward(be, c, d, ALL, true, true),
        /bf16 gradients are overwritten/,
      );
      // WKV's bf16 gradients of the outputs: the fp32 kernel on their values
      for (const which of ["wab", "all"] as const) {
        const dout = Object.fromEntries(
          OUTS.map((k) => [k, which === "all" || k !== "k" ? round(d.dout[k]) : d.dout[k]]),
        );
        const fw = chainBackward(be, c, { ...d, dout }, 0x3c0, true, true);
        const fb = chainBackward(be, c, d, 0x3c0, true, true, which);
        for (const k of Object.keys(fw)) {
          compare(`${name} ${hLabel(c)} bf16 d${which} ${k}`, fb[k], fw[k], EXACT);
        }
      }
    }
  },
);

// ---- (c) after the WKV call: GroupNorm + bonus, times the gate ----
const GN_ACTS = ["y", "r", "k", "v", "gate"] as const;
const GN_PARS = ["weight", "bias", "u"] as const;
const GN_EPS = 64e-5;
// the backward sums its parameter gradients per row tile in blocks of up to 128 channels of a head
// (the forward keeps HSHAPES: its kernel is one warp per (row, head) at any D)
const GN_SHAPES: HCfg[] = [
  ...HSHAPES,
  { N: 130, H: 2, D: 136 }, // a head over 128 channels: two blocks per head; a last tile of 2 rows
];

function drawGn(c: HCfg, rng: Rng) {
  const n = c.N * c.H * c.D, C = c.H * c.D;
  const act = Object.fromEntries(GN_ACTS.map((k) => [k, rng.normal(n)])) as Record<
    string,
    Float32Array
  >;
  act.y = act.y.map((v, i) => v + (i % 7) * 0.3); // a per-group mean for the norm to remove
  const par = Object.fromEntries(GN_PARS.map((k) => [k, rng.normal(C, 0.5)])) as Record<
    string,
    Float32Array
  >;
  const prior = Object.fromEntries(
    [...GN_ACTS, ...GN_PARS].map((k, i) => [k, rng.normal(i < 5 ? n : C)]),
  );
  return { act, par, dout: rng.normal(n), prior };
}
type GnDraw = ReturnType<typeof drawGn>;

/** the [N, C] inputs: fp32, the gate bf16 (its LoRA's output) with gateBf16 */
const gnActs = (d: GnDraw, shape: number[], gateBf16: boolean) =>
  GN_ACTS.map((k) => [k, k === "gate" ? mIn(d.act[k], shape, gateBf16) : f32In(d.act[k], shape)]);

function gnForward(be: Backend, c: HCfg, d: GnDraw, bf16: boolean, gateBf16 = false) {
  const { N, H, D } = c, shape = [N, H * D];
  const ins = Object.fromEntries([
    ...gnActs(d, shape, gateBf16),
    ...GN_PARS.map((k) => [k, f32In(d.par[k], [H * D])]),
  ]);
  const outs = {
    out: { shape, dtype: bf16 ? "bf16" as const : "f32" as const },
    mean: { shape: [N, H] },
    rstd: { shape: [N, H] },
  };
  return withTensors(be, ins, outs, (t) => {
    be.k.mn_rwkv7_gn_bonus_gate_forward(
      t.out.ptr,
      t.mean.ptr,
      t.rstd.ptr,
      ...["y", "weight", "bias", "r", "k", "v", "u", "gate"].map((k) => t[k].ptr),
      bf16 ? 1 : 0,
      gateBf16 ? 1 : 0,
      N,
      H,
      D,
      GN_EPS,
      be.stream,
    );
  });
}

/** gateBf16: a bf16 gate input; dgateBf16: a bf16 dgate output (overwritten) */
function gnBackward(
  be: Backend,
  c: HCfg,
  d: GnDraw,
  accumulate = ALL,
  gateBf16 = false,
  dgateBf16 = false,
) {
  const { N, H, D } = c, C = H * D, shape = [N, C];
  // saved mean, rstd (the same on every backend input; the statistics do not read the gate)
  const stats = gnForward(backend("cpu"), c, d, false);
  const ins = Object.fromEntries([
    ...gnActs(d, shape, gateBf16),
    ...GN_PARS.map((k) => [k, f32In(d.par[k], [C])]),
    ["dout", f32In(d.dout, shape)],
    ["mean", f32In(stats.mean as Float32Array, [N, H])],
    ["rstd", f32In(stats.rstd as Float32Array, [N, H])],
  ]);
  const outs = Object.fromEntries([...GN_ACTS, ...GN_PARS].map((k, i) => [
    "d" + k,
    k === "gate" && dgateBf16 ? { shape, dtype: "bf16" as const } : {
      shape: i < 5 ? shape : [C],
      init: (accumulate >> i) & 1 ? d.prior[k] : undefined,
    },
  ]));
  return withTensors(be, ins, outs, (t) => {
    be.k.mn_rwkv7_gn_bonus_gate_backward(
      ...[...GN_ACTS, ...GN_PARS].map((k) => t["d" + k].ptr),
      ...["dout", "y", "weight", "bias", "mean", "rstd", "r", "k", "v", "u", "gate"].map((k) =>
        t[k].ptr
      ),
      gateBf16 ? 1 : 0,
      dgateBf16 ? 1 : 0,
      N,
      H,
      D,
      accumulate,
      be.stream,
    );
  });
}

/** float64 forward: (GroupNorm(y) + (sum r k u) v) * gate */
function gnRef(
  c: HCfg,
  act: Record<string, ArrayLike<number>>,
  par: Record<string, ArrayLike<number>>,
) {
  const { N, H, D } = c, out = new Float64Array(N * H * D);
  for (let row = 0; row < N * H; row++) {
    const e0 = row * D, c0 = (row % H) * D;
    let m = 0, s = 0;
    for (let j = 0; j < D; j++) m += act.y[e0 + j] / D;
    let v2 = 0;
    for (let j = 0; j < D; j++) v2 += (act.y[e0 + j] - m) ** 2 / D;
    for (let j = 0; j < D; j++) s += act.r[e0 + j] * act.k[e0 + j] * par.u[c0 + j];
    const rs = 1 / Math.sqrt(v2 + GN_EPS);
    for (let j = 0; j < D; j++) {
      const e = e0 + j, ch = c0 + j;
      const gn = (act.y[e] - m) * rs * par.weight[ch] + par.bias[ch];
      out[e] = (gn + s * act.v[e]) * act.gate[e];
    }
  }
  return out;
}

for (const bf16 of [false, true]) {
  checkKernel({
    name: `rwkv7_gn_bonus_gate_forward (${bf16 ? "bf16" : "fp32"} out)`,
    configs: HSHAPES,
    label: hLabel,
    // mean/rstd and the bonus scalar are float sums over the head in another order
    tol: { out: bf16 ? TOL_BF16 : SUM, mean: SUM, rstd: SUM },
    run: (be, c, rng) => gnForward(be, c, drawGn(c, rng), bf16),
  });
}
// du sums over the rows terms r k (dbonus . v) whose dot product runs over the head's D channels:
// |terms| ~ sqrt(D) (~12 at D = 136), and du's elements can cancel to ~0, so its error is absolute:
// the largest |emu - cpu| over all du elements at [130,2,136], seeds 1-50 and 229831619 (which failed
// SUM: 5.3e-5 at a du of 0.039), is 9.2e-5, at any element's size; atol 2e-4 is 2.2x that.
const SUM_DU: Tol = { atol: 2e-4, rtol: 2e-5 };
const gnGradTol = (k: string) => k === "u" ? SUM_DU : SUM;
checkKernel({
  name: "rwkv7_gn_bonus_gate_backward",
  configs: GN_SHAPES,
  label: hLabel,
  tol: Object.fromEntries([...GN_ACTS, ...GN_PARS].map((k) => ["d" + k, gnGradTol(k)])),
  run: (be, c, rng) => gnBackward(be, c, drawGn(c, rng)),
});
checkKernel({
  name: "rwkv7_gn_bonus_gate_forward (bf16 gate in, bf16 out)",
  configs: HSHAPES,
  label: hLabel,
  tol: { out: TOL_BF16, mean: SUM, rstd: SUM },
  run: (be, c, rng) => gnForward(be, c, drawGn(c, rng), true, true),
});
checkKernel({
  name: "rwkv7_gn_bonus_gate_backward (bf16 gate in, bf16 dgate out)",
  configs: GN_SHAPES,
  label: hLabel,
  tol: Object.fromEntries(
    [...GN_ACTS, ...GN_PARS].map((k) => ["d" + k, k === "gate" ? TOL_BF16 : gnGradTol(k)]),
  ),
  run: (be, c, rng) => gnBackward(be, c, drawGn(c, rng), 0xe0, true, true),
});

Deno.test("rwkv7_gn_bonus_gate: cpu forward matches float64, backward matches float64 central differences", () => {
  const be = backend("cpu");
  const c: HCfg = { N: 3, H: 2, D: 8 };
  const d = drawGn(c, new Rng(SEED));
  compare("forward", gnForward(be, c, d, false).out, gnRef(c, d.act, d.par), SUM);
  const got = gnBackward(be, c, d);
  const loss = (act: Vals, par: Vals) =>
    gnRef(c, act, par).reduce((s, v, i) => s + v * d.dout[i], 0);
  checkCentralDifferences(got, d, GN_ACTS, GN_PARS, loss, { atol: 5e-5, rtol: 2e-5 });
});

Deno.test("rwkv7_gn_bonus_gate: accumulate bits (clear = overwrite; parameter bits must be set)", () => {
  for (const name of ["cpu", "emu"] as const) {
    const be = backend(name);
    // one row tile (the sums added into the outputs by the pass itself) and several (partials)
    for (const c of [GN_SHAPES[2], GN_SHAPES[4]]) {
      const d = drawGn(c, new Rng(SEED)), at = `${name} ${hLabel(c)}`;
      const add = gnBackward(be, c, d);
      const over = gnBackward(be, c, d, 0xe0);
      for (const k of GN_ACTS) {
        const want = add["d" + k].map((v, j) => v - d.prior[k][j]);
        compare(`${at} d${k}: overwrite = accumulate - prior`, over["d" + k], want, TOL_F32);
      }
      for (const k of GN_PARS) compare(`${at} d${k}`, add["d" + k], over["d" + k], EXACT);
      assert.throws(() => gnBackward(be, c, d, 0x7f), /parameter-vector gradients accumulate/);
      const again = gnBackward(be, c, d);
      for (const k of Object.keys(add)) compare(`${at} rerun ${k}`, again[k], add[k], EXACT);
    }
  }
});

Deno.test("rwkv7_gn_bonus_gate: the elementwise gradients do not depend on the row tiling", () => {
  // the first 20 rows alone are one row tile; in 300 rows they lie in the first of 5 tiles: the
  // pass that also sums the parameter gradients must give their elementwise gradients the same bits
  const be = backend("emu");
  const c = GN_SHAPES[3], d = drawGn(c, new Rng(SEED));
  const p: HCfg = { ...c, N: 20 }, n = p.N * p.H * p.D;
  const head = (a: Record<string, Float32Array>, keys: readonly string[]) =>
    Object.fromEntries(
      Object.entries(a).map(([k, v]) => [k, keys.includes(k) ? v.slice(0, n) : v]),
    );
  const dp = {
    ...d,
    act: head(d.act, GN_ACTS),
    dout: d.dout.slice(0, n),
    prior: head(d.prior, GN_ACTS),
  };
  const all = gnBackward(be, c, d), part = gnBackward(be, p, dp);
  for (const k of GN_ACTS) {
    compare(`d${k} of rows 0-19`, part["d" + k], all["d" + k].slice(0, n), EXACT);
  }
});

testEachBackend(
  "rwkv7_gn_bonus_gate: a bf16 gate read as its values, a bf16 dgate the fp32 one rounded once",
  (name) => {
    checkBf16Gate({
      shapes: GN_SHAPES,
      label: hLabel,
      draw: drawGn,
      rounded: (d, round) => ({ ...d, act: { ...d.act, gate: round(d.act.gate) } }),
      forward: gnForward,
      backward: gnBackward,
      acc: 0xe0,
    }, name);
  },
);

// ---- (d) the value residual: lerp(v, v1, sigmoid(mv + time_misc_v)) ----
type VCfg = { N: number; C: number };
const VSHAPES: VCfg[] = [{ N: 1, C: 5 }, { N: 7, C: 33 }, { N: 300, C: 40 }]; // 300: row tiles
const vLabel = (c: VCfg) => `[${c.N},${c.C}]`;
const V_ACTS = ["v", "v1", "mv"] as const;
const V_PARS = ["tmv"] as const;

function drawValue(c: VCfg, rng: Rng) {
  const n = c.N * c.C;
  const act: Vals = { v: rng.normal(n), v1: rng.normal(n), mv: rng.normal(n, 2) };
  const par: Vals = { tmv: rng.normal(c.C, 0.5) };
  const prior: Vals = {
    v: rng.normal(n),
    v1: rng.normal(n),
    mv: rng.normal(n),
    tmv: rng.normal(c.C),
  };
  return { act, par, prior, dout: rng.normal(n) };
}
type ValueDraw = ReturnType<typeof drawValue>;

function valueRef(c: VCfg, act: Vals, par: Vals): Float64Array {
  return Float64Array.from({ length: c.N * c.C }, (_, e) => {
    const g = 1 / (1 + Math.exp(-(act.mv[e] + par.tmv[e % c.C])));
    return act.v[e] + (act.v1[e] - act.v[e]) * g;
  });
}

/** v, v1, mv as kernel inputs: fp32, mv bf16 (its LoRA's output) with mvBf16 */
const valueActs = (d: ValueDraw, shape: number[], mvBf16: boolean) =>
  V_ACTS.map((k) => [k, mIn(d.act[k] as Float32Array, shape, k === "mv" && mvBf16)]);

function valueForward(be: Backend, c: VCfg, d: ValueDraw, bf16: boolean, mvBf16 = false) {
  const shape = [c.N, c.C];
  const outs: Record<string, { shape: number[]; dtype?: "bf16" | "f32" }> = { out: { shape } };
  if (bf16) outs.out_bf16 = { shape, dtype: "bf16" };
  return withTensors(
    be,
    {
      ...Object.fromEntries(valueActs(d, shape, mvBf16)),
      tmv: f32In(d.par.tmv as Float32Array, [c.C]),
    },
    outs,
    (t) => {
      const rc = be.k.mn_rwkv7_value_mix_forward(
        t.out.ptr,
        bf16 ? t.out_bf16.ptr : null,
        ...V_ACTS.map((k) => t[k].ptr),
        t.tmv.ptr,
        mvBf16 ? 1 : 0,
        c.N,
        c.C,
        be.stream,
      );
      assert.equal(rc, 0, be.lastError());
    },
  );
}

/** mvBf16: a bf16 mv input; dmvBf16, dvBf16: bf16 dmv, dv outputs (overwritten); doutBf16: dout
 * given as its bf16 rounding */
function valueBackward(
  be: Backend,
  c: VCfg,
  d: ValueDraw,
  accumulate = ALL,
  mvBf16 = false,
  dmvBf16 = false,
  dvBf16 = false,
  doutBf16 = false,
) {
  const shape = [c.N, c.C];
  const ins = {
    dout: doutBf16
      ? { data: f32ToBf16(d.dout), shape, dtype: "bf16" as const }
      : f32In(d.dout, shape),
    ...Object.fromEntries(valueActs(d, shape, mvBf16)),
    tmv: f32In(d.par.tmv as Float32Array, [c.C]),
  };
  const outs = Object.fromEntries([...V_ACTS, ...V_PARS].map((k, i) => [
    "d" + k,
    (k === "mv" && dmvBf16) || (k === "v" && dvBf16) ? { shape, dtype: "bf16" as const } : {
      shape: i < 3 ? shape : [c.C],
      init: (accumulate >> i) & 1 ? d.prior[k] as Float32Array : undefined,
    },
  ]));
  return withTensors(be, ins, outs, (t) => {
    const rc = be.k.mn_rwkv7_value_mix_backward(
      ...[...V_ACTS, ...V_PARS].map((k) => t["d" + k].ptr),
      t.dout.ptr,
      ...V_ACTS.map((k) => t[k].ptr),
      t.tmv.ptr,
      mvBf16 ? 1 : 0,
      dmvBf16 ? 1 : 0,
      dvBf16 ? 1 : 0,
      doutBf16 ? 1 : 0,
      c.N,
      c.C,
      accumulate,
      be.stream,
    );
    if (rc) throw new Error(be.lastError());
  });
}

for (const bf16 of [false, true]) {
  checkKernel({
    name: `rwkv7_value_mix_forward (${bf16 ? "with" : "no"} bf16 copy)`,
    configs: VSHAPES,
    label: vLabel,
    tol: bf16 ? { out: TOL_F32, out_bf16: TOL_BF16 } : { out: TOL_F32 },
    run: (be, c, rng) => valueForward(be, c, drawValue(c, rng), bf16),
  });
}
checkKernel({
  name: "rwkv7_value_mix_backward",
  configs: VSHAPES,
  label: vLabel,
  tol: { dv: TOL_F32, dv1: TOL_F32, dmv: TOL_F32, dtmv: SUM },
  run: (be, c, rng) => valueBackward(be, c, drawValue(c, rng)),
});
checkKernel({
  name: "rwkv7_value_mix_forward (bf16 mv in, with bf16 copy)",
  configs: VSHAPES,
  label: vLabel,
  tol: { out: TOL_F32, out_bf16: TOL_BF16 },
  run: (be, c, rng) => valueForward(be, c, drawValue(c, rng), true, true),
});
checkKernel({
  name: "rwkv7_value_mix_backward (bf16 mv in, bf16 dmv out)",
  configs: VSHAPES,
  label: vLabel,
  tol: { dv: TOL_F32, dv1: TOL_F32, dmv: TOL_BF16, dtmv: SUM },
  run: (be, c, rng) => valueBackward(be, c, drawValue(c, rng), 0x8, true, true),
});
checkKernel({
  name: "rwkv7_value_mix_backward (bf16 mv and dout in, bf16 dmv and dv out)",
  configs: VSHAPES,
  label: vLabel,
  tol: { dv: TOL_BF16, dv1: TOL_F32, dmv: TOL_BF16, dtmv: SUM },
  run: (be, c, rng) => valueBackward(be, c, drawValue(c, rng), 0xa, true, true, true, true),
});

testEachBackend(
  "rwkv7_value_mix: a bf16 mv (and dout) read as its values, a bf16 dmv (and dv) the fp32 one rounded once",
  (name) => {
    const round = (a: Float32Array) => bf16ToF32(f32ToBf16(a));
    const be = backend(name);
    for (const c of VSHAPES) {
      const d = drawValue(c, new Rng(SEED));
      const dr = { ...d, act: { ...d.act, mv: round(d.act.mv as Float32Array) } }; // a bf16 mv
      const want = valueForward(be, c, dr, true), got = valueForward(be, c, d, true, true);
      for (const k of Object.keys(want)) {
        compare(`${name} ${vLabel(c)} ${k}`, got[k], want[k], EXACT);
      }
      // fp32 dmv from a bf16 mv (its gradient has another writer), a bf16 dmv, and a bf16 dv too
      for (const [dmvBf16, dvBf16] of [[false, false], [true, false], [true, true]]) {
        const bw = valueBackward(be, c, dr, 0x8);
        const bg = valueBackward(be, c, d, 0x8, true, dmvBf16, dvBf16);
        for (const k of Object.keys(bw)) {
          const bf = (k === "dmv" && dmvBf16) || (k === "dv" && dvBf16);
          compare(
            `${name} ${vLabel(c)} ${k}`,
            bg[k],
            bf ? round(bw[k] as Float32Array) : bw[k],
            EXACT,
          );
        }
      }
      assert.throws(() => valueBackward(be, c, d, ALL, true, true), /bf16 dmv is overwritten/);
      assert.throws(() => valueBackward(be, c, d, 0x9, true, true, true), /bf16 dv is overwritten/);
      // a bf16 dout: the fp32 backward on its values
      const dd = { ...d, dout: round(d.dout) };
      const fo = valueBackward(be, c, dd, 0xa, true),
        bo = valueBackward(be, c, d, 0xa, true, false, false, true);
      for (const k of Object.keys(fo)) {
        compare(`${name} ${vLabel(c)} bf16 dout ${k}`, bo[k], fo[k], EXACT);
      }
    }
  },
);

Deno.test("rwkv7_value_mix: cpu forward matches float64, backward matches float64 central differences", () => {
  const be = backend("cpu");
  const c: VCfg = { N: 4, C: 6 };
  const d = drawValue(c, new Rng(SEED));
  const want = valueRef(c, d.act, d.par);
  compare("forward", valueForward(be, c, d, false).out, want, TOL_F32);
  compare("forward bf16 copy", valueForward(be, c, d, true).out_bf16, want, TOL_BF16);
  const got = valueBackward(be, c, d);
  const loss = (act: Vals, par: Vals) =>
    valueRef(c, act, par).reduce((s, v, i) => s + v * d.dout[i], 0);
  checkCentralDifferences(got, d, V_ACTS, V_PARS, loss, { atol: 2e-5, rtol: 2e-5 });
});

Deno.test("rwkv7_value_mix: accumulate bits (clear = overwrite a NaN-poisoned gradient; dtmv must add)", () => {
  for (const name of ["cpu", "emu"] as const) {
    const be = backend(name);
    const c = VSHAPES[2], d = drawValue(c, new Rng(SEED));
    const add = valueBackward(be, c, d);
    const over = valueBackward(be, c, d, 0x8);
    const zeros = { ...d, prior: { ...d.prior } };
    for (const k of V_ACTS) zeros.prior[k] = new Float32Array(c.N * c.C);
    const addToZero = valueBackward(be, c, zeros);
    for (const k of V_ACTS) {
      compare(`${name} overwritten d${k}`, over["d" + k], addToZero["d" + k], EXACT);
      assert.ok(
        add["d" + k].some((v, i) => v !== over["d" + k][i]),
        `${name} d${k}: += and = differ`,
      );
    }
    compare(`${name} dtmv`, add.dtmv, over.dtmv, EXACT);
    assert.throws(() => valueBackward(be, c, d, 0x7), /parameter-vector gradients accumulate/);
    const again = valueBackward(be, c, d);
    for (const k of Object.keys(add)) compare(`${name} rerun ${k}`, again[k], add[k], EXACT);
  }
});
