// Causal attention on tensor cores (cuda/attention_tc.cu; cpu: the double-precision reference of
// cuda/cpu/attention.cpp, itself checked against float64 and finite differences in
// cuda/attention_test.ts): forward and backward, emu (and cuda) vs cpu.
//
// Error model: q, k, v are bf16 and exact inputs everywhere. The kernel rounds three more things
// to bf16 (unit roundoff u = 2^-9 ~ 2e-3) because they are mma operands: the probabilities P
// (out = P V / l, dV = P^T dO), dS (dQ = dS K, dK = dS^T Q) and dout (dP = dO V^T, dV). Each
// output element is a weighted sum whose weights carry independent relative errors <= u, so its
// error is <= u sum_j |w_j x_j| and typically far smaller (the roundings average out); normwise
// against max|want| that is a few times 1e-3 (measured below). lse does not see any of it (max
// and sum are fp32): fp32-rounding-sized, as the CUDA-core kernel. Delta is computed from the same
// bf16 dout as dP, so dS = P (dP - Delta) stays consistent (sum_j dS_tj = 0 up to fp32): with the
// fp32 dout there instead, nearly one-hot rows (the "sharp" inputs) doubled the dq/dk error.
// A wrong fragment mapping, mask or scale gives errors of O(1), far above the bounds: planted
// (i) a swap of the ldmatrix sub-matrices of the k-major B loader (V in P V, dO and Q in the
// backward), (ii) the row halves of an accumulator-to-A-operand conversion (P, dS) swapped,
// (iii) the sub-matrices of the n-major B loader (K in Q K^T) swapped: each failed the first
// shape, with gradient errors of 3 to 5 against bounds of 0.04 to 0.06.
import assert from "node:assert/strict";
import { bf16ToF32, f32ToBf16 } from "./backend.ts";
import {
  checkAttentionAccumulates,
  checkAttentionArguments,
  compareVsCpu,
  GRADS,
  type Kind,
  makeInputs,
  numel,
  runAttention,
  type Shape,
  zeroGrads,
} from "./test/attention_cases.ts";
import {
  backend,
  compare,
  fmtErrors,
  forShapesAndKinds,
  HAS_GPU,
  relErr,
  Rng,
  SEED,
  type ShapeCase,
  testAccumulates,
  testTargets,
  VARIANT,
  withTensors,
} from "./test/harness.ts";

// ---- a) emu (and cuda) vs cpu ---------------------------------------------------------------------
// T = 1 (one key), 17, 40 (one partial 64-row tile), 64 (one full tile), 100, 200 (full and
// partial tiles: the online softmax across key tiles, the dK/dV loop over several query tiles,
// skipped 16-row blocks, ragged ends); every head size (D = 16/32: one/two 16-wide k steps; 128
// at T = 80: the dK/dV kernel's 32-row query tiles, three of them). On a GPU also longer
// sequences (many tiles, an unbalanced grid).
export const SHAPES: Shape[] = VARIANT
  ? [{ B: 1, T: 17, H: 1, D: 16 }, { B: 1, T: 1, H: 1, D: 64 }]
  : [
    { B: 2, T: 1, H: 2, D: 64 },
    { B: 1, T: 17, H: 2, D: 64 },
    { B: 1, T: 64, H: 1, D: 64 },
    { B: 1, T: 100, H: 1, D: 64 },
    { B: 1, T: 200, H: 1, D: 64 },
    { B: 2, T: 17, H: 3, D: 16 },
    { B: 1, T: 40, H: 1, D: 32 },
    { B: 1, T: 80, H: 1, D: 128 },
  ];
const GPU_SHAPES: Shape[] = [
  { B: 2, T: 300, H: 3, D: 64 },
  { B: 1, T: 1024, H: 2, D: 64 },
  { B: 1, T: 257, H: 2, D: 128 },
];
export const KINDS: Kind[] = VARIANT ? ["normal"] : ["normal", "sharp"];
// Normwise bounds (see the error model above); worst measured on emu over 40 seeds in brackets:
// out [1.7e-3], dq/dk/dv [5.0e-3] (against the largest of the three gradients): 3x margins.
// The CUDA-core kernel's bounds (cuda/attention_test.ts) are 1e-5 / 2e-5 for out / grads: the
// difference is the bf16 rounding of P, dS and dout, nothing else. lse is fp32 throughout
// [1.9e-7; 2.0e-6 once when the T = 1 shape had a single lse value]: at T = 1 lse is the score
// itself, whose fp32 dot-product error scales with sum_i |q_i k_i| rather than |q.k|.
export const REL_TC = { out: 5e-3, lse: 1e-5, grad: 1.5e-2 };

testTargets((tname) => `attention_tc forward+backward: ${tname} vs cpu`, (ref, be, tname, tgt) => {
  const worst: Record<string, number> = {};
  const shapes = tgt.name === "cuda" ? [...SHAPES, ...GPU_SHAPES] : SHAPES;
  forShapesAndKinds(shapes, KINDS, (s, kind, rng) => {
    const x = makeInputs(rng, s, kind);
    const init = GRADS.map(() => rng.normal(numel(s), 0.1));
    const want = runAttention(ref, s, x, init, "tc");
    const got = runAttention(be, s, x, init, "tc");
    compareVsCpu("attention_tc", tname, s, kind, want, got, init, REL_TC, worst);
  });
  console.log(`attention_tc ${tname} vs cpu, worst normwise error:`, fmtErrors(worst));
});

// ---- a') bf16 out and dout (mn_attention_tc_*_bf16) ----------------------------------------------
// On each backend the bf16 entry points are the fp32 ones on the rounded values, bit for bit: the
// forward's out is the fp32 out rounded once (lse unchanged), and the backward with bf16 dout and
// out gives the fp32 backward's gradients for dout, out holding those bf16 values (the fp32 kernel
// rounds dout to bf16 for its products anyway; Delta then reads the same numbers). So emu vs cpu
// for them is a) above. Gradients start at `init` (+=), as there.
function bf16EntryPoints(name: "cpu" | "emu" | "cuda") {
  const be = backend(name, name === "emu" ? VARIANT : "");
  const shapes = VARIANT ? SHAPES : SHAPES.filter((s) => s.T <= 100);
  forShapesAndKinds(shapes, ["normal"], (s, _kind, rng) => {
    const { B, T, H, D } = s, shp = [B, T, H, D], n = numel(s);
    const x = makeInputs(rng, s);
    const init = GRADS.map(() => rng.normal(n, 0.1));
    const doutBf16 = f32ToBf16(x.dout);
    const grads = (tag: string) =>
      Object.fromEntries(GRADS.map((g, i) => [g + tag, { shape: shp, init: init[i] }]));
    const r = withTensors(be, {
      q: { data: x.q, shape: shp, dtype: "bf16" },
      k: { data: x.k, shape: shp, dtype: "bf16" },
      v: { data: x.v, shape: shp, dtype: "bf16" },
      dout16: { data: doutBf16, shape: shp, dtype: "bf16" },
    }, {
      out: { shape: shp },
      out16: { shape: shp, dtype: "bf16" },
      out16f: { shape: shp }, // out16's values in fp32
      dout16f: { shape: shp },
      lse: { shape: [B, H, T] },
      lse16: { shape: [B, H, T] },
      ws: { shape: [B, H, T] },
      ...grads(""),
      ...grads("16"),
      // overwritten (acc 0, NaN-poisoned): fp32, and bf16 (grads_bf16)
      ...Object.fromEntries(GRADS.map((g) => [g + "0", { shape: shp }])),
      ...Object.fromEntries(GRADS.map((g) => [g + "b", { shape: shp, dtype: "bf16" as const }])),
    }, (t) => {
      const k = be.k, st = be.stream, [q, kk, v] = [t.q.ptr, t.k.ptr, t.v.ptr];
      k.mn_attention_tc_forward(t.out.ptr, t.lse.ptr, q, kk, v, B, T, H, D, st);
      k.mn_attention_tc_forward_bf16(t.out16.ptr, t.lse16.ptr, q, kk, v, B, T, H, D, st);
      k.mn_cast_bf16_to_f32(t.out16f.ptr, t.out16.ptr, BigInt(n), st);
      k.mn_cast_bf16_to_f32(t.dout16f.ptr, t.dout16.ptr, BigInt(n), st);
      const [dq, dk, dv] = [t.dq.ptr, t.dk.ptr, t.dv.ptr];
      k.mn_attention_tc_backward(
        dq,
        dk,
        dv,
        t.dout16f.ptr,
        t.out16f.ptr,
        t.lse.ptr,
        q,
        kk,
        v,
        t.ws.ptr,
        B,
        T,
        H,
        D,
        7,
        st,
      );
      const [dq16, dk16, dv16] = [t.dq16.ptr, t.dk16.ptr, t.dv16.ptr];
      k.mn_attention_tc_backward_bf16(
        dq16,
        dk16,
        dv16,
        t.dout16.ptr,
        t.out16.ptr,
        t.lse.ptr,
        q,
        kk,
        v,
        t.ws.ptr,
        B,
        T,
        H,
        D,
        0,
        7,
        st,
      );
      const rest = [t.lse.ptr, q, kk, v, t.ws.ptr, B, T, H, D] as const;
      k.mn_attention_tc_backward(
        t.dq0.ptr,
        t.dk0.ptr,
        t.dv0.ptr,
        t.dout16f.ptr,
        t.out16f.ptr,
        ...rest,
        0,
        st,
      );
      const gb = [t.dqb.ptr, t.dkb.ptr, t.dvb.ptr] as const;
      k.mn_attention_tc_backward_bf16(...gb, t.dout16.ptr, t.out16.ptr, ...rest, 1, 0, st);
      assert.throws(
        () => k.mn_attention_tc_backward_bf16(...gb, t.dout16.ptr, t.out16.ptr, ...rest, 1, 4, st),
        /bf16 gradients are overwritten/,
      );
    });
    const l = `attention_tc_*_bf16 [${B},${T},${H},${D}] (${name})`;
    const exact = { atol: 0, rtol: 0 };
    compare(`${l} out`, r.out16, bf16ToF32(f32ToBf16(r.out as Float32Array)), exact);
    compare(`${l} lse`, r.lse16, r.lse, exact);
    for (const g of GRADS) compare(`${l} ${g}`, r[g + "16"], r[g], exact);
    // bf16 gradients: the fp32 ones rounded once
    for (const g of GRADS) {
      compare(
        `${l} bf16 ${g}`,
        r[g + "b"],
        bf16ToF32(f32ToBf16(r[g + "0"] as Float32Array)),
        exact,
      );
    }
    assert.ok(relErr(r.dv16 as Float32Array, init[2]) > 0, `${l}: dv unchanged`); // dq, dk vanish at T = 1
  });
}
for (const name of ["cpu", "emu", "cuda"] as const) {
  Deno.test({
    name: `attention_tc: the bf16 entry points are the fp32 ones on rounded values (${name})`,
    ignore: name === "cuda" && !HAS_GPU,
    fn: () => bf16EntryPoints(name),
  });
}

// ---- b) accumulation and determinism ----------------------------------------------------------
testAccumulates("attention_tc", ["emu", "cuda"], (name) => {
  checkAttentionAccumulates(backend(name), name, "tc");
}, VARIANT !== "");

// ---- c) causality ---------------------------------------------------------------------------------
// Changing key/value j0 must leave every earlier query's out and lse bit-identical (masked keys
// contribute exactly 0) and change query j0's; changing q and dout of query t0 must leave dq of
// every other query and dk, dv of every later key bit-identical and change dv of key t0 (through
// P^T dO). T = 70 crosses a 64-row tile.
Deno.test({
  name: "attention_tc: causal masking (emu)",
  ignore: VARIANT !== "",
  fn() {
    const s: Shape = { B: 1, T: 70, H: 1, D: 16 };
    const { H, D } = s;
    const row = (t: number) => t * H * D;
    const be = backend("emu"), exact = { atol: 0, rtol: 0 };
    const zero = zeroGrads(s);
    const x = makeInputs(new Rng(SEED + 400), s);
    const run = (y: typeof x) => runAttention(be, s, y, zero, "tc");
    const base = run(x);
    for (const j0 of [0, 63, 64]) {
      const rng = new Rng(SEED + 401 + j0);
      const lo = row(j0), hi = row(j0 + 1);
      const y = { ...x, k: x.k.slice(), v: x.v.slice() };
      y.k.set(f32ToBf16(rng.normal(D)), lo);
      y.v.set(f32ToBf16(rng.normal(D)), lo);
      const kv = run(y);
      compare(`out before key ${j0}`, kv.out.subarray(0, lo), base.out.subarray(0, lo), exact);
      compare(`lse before key ${j0}`, kv.lse.subarray(0, j0), base.lse.subarray(0, j0), exact);
      assert.ok(relErr(kv.out.subarray(lo, hi), base.out.subarray(lo, hi)) > 0);

      const z = { ...x, q: x.q.slice(), dout: x.dout.slice() };
      z.q.set(f32ToBf16(rng.normal(D)), lo);
      z.dout.set(rng.normal(D), lo);
      const qd = run(z);
      compare(`dq before query ${j0}`, qd.dq.subarray(0, lo), base.dq.subarray(0, lo), exact);
      compare(`dq after query ${j0}`, qd.dq.subarray(hi), base.dq.subarray(hi), exact);
      compare(`dk after query ${j0}`, qd.dk.subarray(hi), base.dk.subarray(hi), exact);
      compare(`dv after query ${j0}`, qd.dv.subarray(hi), base.dv.subarray(hi), exact);
      assert.ok(relErr(qd.dv.subarray(lo, hi), base.dv.subarray(lo, hi)) > 0);
    }
  },
});

// ---- d) arguments ---------------------------------------------------------------------------------
Deno.test("attention_tc: bad arguments give clear errors (cpu, emu)", () => {
  for (const name of ["cpu", "emu"] as const) {
    const be = backend(name);
    const cases: ShapeCase[] = [
      [1, 16, 1, 48, /head size D = 48 is not supported \(16, 32, 64 or 128\)/],
      [1, 16, 1, 256, /head size D = 256 is not supported/],
      [0, 16, 1, 64, /B = 0, T = 16, H = 1 must all be > 0/],
      [1, 0, 1, 64, /T = 0, H = 1 must all be > 0/],
      [1, 1, 70000, 16, /H = 70000 exceed the grid limit 65535/],
    ];
    const named = (entry: string, re: RegExp) => new RegExp(`${entry}: .*` + re.source);
    checkAttentionArguments(be, name, "tc", cases, named, (f, i) => {
      const odd = Deno.UnsafePointer.offset(i as Deno.PointerObject, 2); // 2-byte aligned
      assert.throws(
        () => be.k.mn_attention_tc_forward(f, f, odd, i, i, 1, 16, 1, 16, null),
        /attention_tc_forward: out, q, k, v must be 16-byte aligned/,
      );
      assert.throws(
        () => be.k.mn_attention_tc_backward(f, f, f, f, f, f, i, odd, i, f, 1, 16, 1, 16, -1, null),
        /attention_tc_backward: dq, dk, dv, dout, q, k, v must be 16-byte aligned/,
      );
    });
  }
});
