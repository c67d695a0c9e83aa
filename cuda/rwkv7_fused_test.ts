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
import type { Backend } from "./backend.ts";
import {
  backend,
  checkKernel,
  compare,
  EXACT,
  Rng,
  SEED,
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

function mixXBackward(be: Backend, c: Cfg, d: Draw, accumulate = ALL) {
  const { B, T, C } = c;
  return withTensors(
    be,
    { x: f32In(d.x, [B, T, C]), maa: f32In(d.maaX, [C]), dout: f32In(d.dout[0], [B, T, C]) },
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

function mix4Forward(be: Backend, c: Cfg, d: Draw, bf16: boolean) {
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
    const rc = be.k.mn_rwkv7_mix4_forward(
      ...J.map((j) => t["out_" + j].ptr) as Ptr4,
      t.x.ptr,
      ...J.map((j) => t["m_" + j].ptr) as Ptr4,
      ...J.map((j) => t["maa_" + j].ptr) as Ptr4,
      bf16 ? 1 : 0,
      B,
      T,
      C,
      be.stream,
    );
    assert.equal(rc, 0, be.lastError());
  });
}
type Ptr4 = [Deno.PointerValue, Deno.PointerValue, Deno.PointerValue, Deno.PointerValue];

function mix4Backward(be: Backend, c: Cfg, d: Draw, accumulate = ALL) {
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
    const p = (pre: string) => J.map((j) => t[pre + j].ptr) as Ptr4;
    const rc = be.k.mn_rwkv7_mix4_backward(
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
  name: "rwkv7_mix_x_backward",
  configs: SHAPES,
  label,
  tol: { dx: TOL_F32, dmaa: SUM },
  run: (be, c, rng) => mixXBackward(be, c, draw(c, rng)),
});
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
    assert.throws(() => mixXBackward(be, c, d, 1), /dmaa accumulates/);
    assert.throws(() => mix4Backward(be, c, d, 0x0ff), /dmaa gradients accumulate/);
    // ordered sums: the same bits twice
    const again = mix4Backward(be, c, d);
    for (const k of Object.keys(add)) compare(`${name} rerun ${k}`, again[k], add[k], EXACT);
  }
});
