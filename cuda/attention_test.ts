// Causal attention (cuda/attention.cu, cuda/cpu/attention.cpp): forward and backward.
//
// Error model: q, k, v are bf16 and exact inputs to every implementation (cpu converts them to
// double, the kernels to fp32), so differences come only from arithmetic. The kernels work in
// fp32 (dot products of D terms, online softmax rescaling over T/32 key tiles, sums of up to T
// terms): relative rounding ~1e-7 per operation, growing with the number of terms; cpu works in
// double and rounds once to fp32 at the end. Errors are measured normwise per output tensor:
// max|got - want| <= rel * max|want| (a single gradient element can be tiny while its absolute
// error is set by the tensor's scale).
import assert from "node:assert/strict";
import type { Backend } from "./backend.ts";
import { bf16ToF32, f32ToBf16 } from "./backend.ts";
import {
  checkAttentionAccumulates,
  checkAttentionArguments,
  compareVsCpu,
  GRADS,
  type Inputs,
  type Kind,
  label,
  makeInputs,
  numel,
  runAttention,
  type Shape,
  zeroGrads,
} from "./test/attention_cases.ts";
import {
  backend,
  compare,
  compareRel,
  f64,
  fmtErrors,
  forShapesAndKinds,
  numericalGrad,
  relErr,
  Rng,
  SEED,
  testAccumulates,
  testTargets,
  VARIANT,
  withTensors,
} from "./test/harness.ts";

/** Forward only on `be`. */
function runForward(be: Backend, s: Shape, x: Inputs): Record<string, Float32Array> {
  const { B, T, H, D } = s, shp = [B, T, H, D];
  return withTensors(
    be,
    {
      q: { data: x.q, shape: shp, dtype: "bf16" },
      k: { data: x.k, shape: shp, dtype: "bf16" },
      v: { data: x.v, shape: shp, dtype: "bf16" },
    },
    { out: { shape: shp }, lse: { shape: [B, H, T] } },
    (t) => {
      be.k.mn_attention_forward(t.out.ptr, t.lse.ptr, t.q.ptr, t.k.ptr, t.v.ptr, B, T, H, D, null);
    },
  ) as Record<string, Float32Array>;
}

// ---- independent float64 reference in TypeScript (written from the math) ------------------------
interface F64 {
  q: Float64Array;
  k: Float64Array;
  v: Float64Array;
}
const toF64 = (x: Inputs): F64 => ({
  q: Float64Array.from(bf16ToF32(x.q)),
  k: Float64Array.from(bf16ToF32(x.k)),
  v: Float64Array.from(bf16ToF32(x.v)),
});

/** out [B,T,H,D] and lse [B,H,T] of causal softmax(q k^T / sqrt(D)) v, naively per row. */
function f64Attention(s: Shape, x: F64): { out: Float64Array; lse: Float64Array } {
  const { B, T, H, D } = s, scale = 1 / Math.sqrt(D);
  const out = new Float64Array(numel(s)), lse = new Float64Array(B * H * T);
  const sc = new Float64Array(T);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      for (let t = 0; t < T; t++) {
        const qo = ((b * T + t) * H + h) * D;
        let mx = -Infinity;
        for (let j = 0; j <= t; j++) {
          const ko = ((b * T + j) * H + h) * D;
          let d = 0;
          for (let i = 0; i < D; i++) d += x.q[qo + i] * x.k[ko + i];
          sc[j] = d * scale;
          mx = Math.max(mx, sc[j]);
        }
        let sum = 0;
        for (let j = 0; j <= t; j++) sum += Math.exp(sc[j] - mx);
        lse[(b * H + h) * T + t] = mx + Math.log(sum);
        for (let j = 0; j <= t; j++) {
          const p = Math.exp(sc[j] - mx) / sum, vo = ((b * T + j) * H + h) * D;
          for (let i = 0; i < D; i++) out[qo + i] += p * x.v[vo + i];
        }
      }
    }
  }
  return { out, lse };
}

// ---- a) emu (and cuda) vs cpu --------------------------------------------------------------------
// T = 1 (a single key), 17 (partial tiles), 64, 100 (several query tiles of 64 and 32 and key
// tiles of 32, none full at the end). Under the sanitizer builds only the smallest shapes.
const SHAPES: Shape[] = VARIANT ? [{ B: 1, T: 17, H: 2, D: 16 }, { B: 1, T: 1, H: 1, D: 64 }] : [
  { B: 1, T: 1, H: 1, D: 16 },
  { B: 2, T: 17, H: 3, D: 16 },
  { B: 1, T: 17, H: 2, D: 32 },
  { B: 2, T: 64, H: 2, D: 64 },
  { B: 1, T: 17, H: 1, D: 128 },
  { B: 1, T: 64, H: 2, D: 128 },
  { B: 1, T: 100, H: 1, D: 64 },
  { B: 1, T: 1, H: 2, D: 128 },
];
const KINDS: Kind[] = VARIANT ? ["normal"] : ["normal", "sharp"];
// Normwise bounds; worst measured over 20 seeds on emu in brackets: out [1.4e-6], lse [3.4e-7],
// dq/dk/dv [2.4e-6] (against the largest of the three). Margins of 7x or more; a wrong mask,
// scale or softmax gives O(1e-2) or worse, one bf16 rounding of anything ~4e-3.
const REL = { out: 1e-5, lse: 5e-6, grad: 2e-5 };

testTargets((tname) => `attention forward+backward: ${tname} vs cpu`, (ref, be, tname) => {
  const worst: Record<string, number> = {};
  forShapesAndKinds(SHAPES, KINDS, (s, kind, rng) => {
    const x = makeInputs(rng, s, kind);
    const init = GRADS.map(() => rng.normal(numel(s), 0.1));
    const want = runAttention(ref, s, x, init);
    const got = runAttention(be, s, x, init);
    compareVsCpu("attention", tname, s, kind, want, got, init, REL, worst);
  });
  console.log(`attention ${tname} vs cpu, worst normwise relative error:`, fmtErrors(worst));
});

// ---- b) longer sequences ---------------------------------------------------------------------
// cpu vs the float64 TS attention at T=1024 (cpu works in double and stores fp32: one rounding,
// <= 6e-8 relative per element; bound 1e-6), and emu vs cpu at T=256 (4 query tiles of 64, 8 of
// 32, 8 key tiles: the online-softmax rescaling runs over many tiles; same bounds as a). Worst
// over 20 seeds: cpu vs float64 out 4e-8, lse 3e-8; emu vs cpu out 3e-7, lse 8e-8, grads 1e-6.
Deno.test({
  name: "attention: cpu vs float64 at T=1024; emu vs cpu at T=256",
  ignore: VARIANT !== "",
  fn() {
    const s: Shape = { B: 1, T: 1024, H: 1, D: 64 };
    const x = makeInputs(new Rng(SEED + 200), s);
    const ref = f64Attention(s, toF64(x));
    const got = runForward(backend("cpu"), s, x);
    const errs = { out: relErr(got.out, ref.out), lse: relErr(got.lse, ref.lse) };
    console.log(`cpu vs f64 (T=1024, D=64): ${fmtErrors(errs)}`);
    compareRel("cpu out vs float64 (T=1024)", got.out, ref.out, 1e-6);
    compareRel("cpu lse vs float64 (T=1024)", got.lse, ref.lse, 1e-6);

    const s2: Shape = { B: 1, T: 256, H: 2, D: 64 };
    const rng = new Rng(SEED + 201);
    const x2 = makeInputs(rng, s2);
    const zero = zeroGrads(s2);
    const want = runAttention(backend("cpu"), s2, x2, zero);
    const t0 = performance.now();
    const got2 = runAttention(backend("emu"), s2, x2, zero);
    const ms = performance.now() - t0;
    const errs2: Record<string, number> = {};
    for (const key of Object.keys(want)) {
      errs2[key] = relErr(got2[key], want[key]);
      const rel = (GRADS as readonly string[]).includes(key) ? REL.grad : REL[key as "out" | "lse"];
      compareRel(`emu ${key} vs cpu (T=256)`, got2[key], want[key], rel);
    }
    console.log(`emu vs cpu (T=256, H=2, D=64, ${ms.toFixed(0)} ms fwd+bwd): ${fmtErrors(errs2)}`);
  },
});

// The gradients at T=1024 too: emu against the cpu reference, which is a naive attention computed
// in double (so this is the kernel against a float64 naive attention, rounded once to fp32).
// Same bounds as a); 16 query tiles and 32 key tiles exercise the online softmax over a long row.
Deno.test({
  name: "attention: emu forward and gradients vs the double-precision naive reference at T=1024",
  ignore: VARIANT !== "",
  fn() {
    const s: Shape = { B: 1, T: 1024, H: 1, D: 64 };
    const x = makeInputs(new Rng(SEED + 202), s);
    const zero = zeroGrads(s);
    const want = runAttention(backend("cpu"), s, x, zero);
    const got = runAttention(backend("emu"), s, x, zero);
    const errs: Record<string, number> = {};
    for (const key of Object.keys(want)) {
      errs[key] = relErr(got[key], want[key]);
      const rel = (GRADS as readonly string[]).includes(key) ? REL.grad : REL[key as "out" | "lse"];
      compareRel(`emu ${key} vs cpu (T=1024)`, got[key], want[key], rel);
    }
    console.log(`emu vs cpu (T=1024, D=64): ${fmtErrors(errs)}`);
  },
});

// ---- c) backward vs float64 finite differences -------------------------------------------------
// L = sum(dout * out) with the TS float64 forward; central differences with h = 1e-5: truncation
// ~h^2 |f'''| ~ 1e-10 relative, cancellation ~1e-16 |L| / h ~ 1e-11: negligible. cpu: double,
// stored as fp32 (bound 1e-6). emu: fp32 arithmetic, bound REL.grad as in a).
Deno.test("attention: backward (cpu, emu) vs float64 finite differences", () => {
  const s: Shape = { B: 1, T: 7, H: 2, D: 16 };
  for (const kind of ["normal", "sharp"] as Kind[]) {
    const rng = new Rng(SEED + 100 + (kind === "normal" ? 0 : 1));
    const x = makeInputs(rng, s, kind);
    const xf = toF64(x);
    const num = (["q", "k", "v"] as const).map((name) => {
      const f = (z: Float64Array) => f64Attention(s, { ...xf, [name]: z }).out;
      return numericalGrad(f, Float64Array.from(xf[name]), x.dout, 1e-5);
    });
    const ref = f64Attention(s, xf);
    const zero = zeroGrads(s);
    for (const [name, rel] of [["cpu", 1e-6], ["emu", REL.grad]] as const) {
      const got = runAttention(backend(name, name === "emu" ? VARIANT : ""), s, x, zero);
      compareRel(`${name} out vs float64 (${kind})`, got.out, ref.out, rel);
      compareRel(`${name} lse vs float64 (${kind})`, got.lse, ref.lse, rel);
      GRADS.forEach((g, gi) => {
        compareRel(`${name} ${g} vs finite differences (${kind})`, got[g], num[gi], rel);
      });
    }
  }
});

// ---- d) accumulation, determinism, causality, arguments ----------------------------------------
testAccumulates("attention", ["cpu", "emu", "cuda"], (name) => {
  checkAttentionAccumulates(backend(name, name === "emu" ? VARIANT : ""), name, "cc");
});

// Changing key/value j0 must leave every earlier query's out and lse bit-identical (masked keys
// contribute exactly 0) and change query j0's; changing q and dout of query t0 must leave dq of
// every other query and dk, dv of every later key bit-identical, and change dq of t0.
Deno.test("attention: causal masking (cpu, emu)", () => {
  const s: Shape = { B: 1, T: 70, H: 2, D: 16 };
  const { T, H, D } = s;
  const row = (t: number, h: number) => (t * H + h) * D;
  for (const name of ["cpu", "emu"] as const) {
    const be = backend(name, name === "emu" ? VARIANT : "");
    for (const j0 of [0, 33, 69]) {
      const rng = new Rng(SEED + 400 + j0);
      const x = makeInputs(rng, s);
      const base = runForward(be, s, x);
      const y = { ...x, k: x.k.slice(), v: x.v.slice() };
      const fresh = f32ToBf16(rng.normal(2 * H * D, 2));
      for (let h = 0; h < H; h++) {
        y.k.set(fresh.subarray(2 * h * D, (2 * h + 1) * D), row(j0, h));
        y.v.set(fresh.subarray((2 * h + 1) * D, (2 * h + 2) * D), row(j0, h));
      }
      const pert = runForward(be, s, y);
      const lo = row(j0, 0); // out rows of queries < j0
      compare(
        `${name} out before ${j0}`,
        pert.out.subarray(0, lo),
        base.out.subarray(0, lo),
        { atol: 0, rtol: 0 },
      );
      for (let h = 0; h < H; h++) {
        compare(
          `${name} lse before ${j0}`,
          pert.lse.subarray(h * T, h * T + j0),
          base.lse.subarray(h * T, h * T + j0),
          { atol: 0, rtol: 0 },
        );
      }
      assert.ok(relErr(pert.out.subarray(lo, lo + H * D), base.out.subarray(lo, lo + H * D)) > 0);
    }
    for (const t0 of [0, 40, 69]) {
      const rng = new Rng(SEED + 500 + t0);
      const x = makeInputs(rng, s);
      const zero = zeroGrads(s);
      const base = runAttention(be, s, x, zero);
      const y = { ...x, q: x.q.slice(), dout: x.dout.slice() };
      y.q.set(f32ToBf16(rng.normal(H * D, 2)), row(t0, 0));
      y.dout.set(rng.normal(H * D), row(t0, 0));
      const pert = runAttention(be, s, y, zero);
      const lo = row(t0, 0), hi = row(t0 + 1, 0);
      const exact = { atol: 0, rtol: 0 };
      compare(`${name} dq before ${t0}`, pert.dq.subarray(0, lo), base.dq.subarray(0, lo), exact);
      compare(`${name} dq after ${t0}`, pert.dq.subarray(hi), base.dq.subarray(hi), exact);
      compare(`${name} dk after ${t0}`, pert.dk.subarray(hi), base.dk.subarray(hi), exact);
      compare(`${name} dv after ${t0}`, pert.dv.subarray(hi), base.dv.subarray(hi), exact);
      // (query 0 sees one key: its dq is exactly 0 whatever q and dout are)
      if (t0 > 0) assert.ok(relErr(pert.dq.subarray(lo, hi), base.dq.subarray(lo, hi)) > 0);
      assert.ok(relErr(pert.dv.subarray(lo, hi), base.dv.subarray(lo, hi)) > 0);
    }
  }
});

Deno.test("attention: bad arguments give clear errors (cpu, emu)", () => {
  for (const name of ["cpu", "emu"] as const) {
    checkAttentionArguments(backend(name), name, "cc", [
      [1, 16, 1, 48, /head size D = 48 is not supported \(16, 32, 64 or 128\)/],
      [1, 16, 1, 256, /head size D = 256 is not supported/],
      [1, 16, 1, 0, /head size D = 0 is not supported/],
      [0, 16, 1, 64, /B = 0, T = 16, H = 1 must all be > 0/],
      [1, 0, 1, 64, /T = 0, H = 1 must all be > 0/],
      [1, 16, -1, 64, /H = -1 must all be > 0/],
      [1, 1, 70000, 16, /H = 70000 exceed the grid limit 65535/],
    ]);
  }
});

// ---- f) the fp32-input entry points (mn_attention_*_f32, for exact model-level tests) -----------
// 1. Given bf16-representable inputs they must reproduce the bf16 entry points bit for bit (same
//    arithmetic after the load), on every backend: this ties them to everything tested above.
// 2. With inputs that are not bf16-representable, emu (and cuda) vs cpu and cpu vs the float64 TS
//    reference, normwise with the bounds of a) (the error model does not depend on the input type).
const F32_SHAPES: Shape[] = VARIANT
  ? [{ B: 1, T: 17, H: 2, D: 16 }]
  : [{ B: 2, T: 17, H: 3, D: 16 }, { B: 1, T: 100, H: 1, D: 64 }, { B: 1, T: 33, H: 2, D: 128 }];

testTargets(
  (tname) => `attention fp32 inputs: = bf16 entry points on bf16 values; ${tname} vs cpu`,
  (ref, be, tname) => {
    F32_SHAPES.forEach((s, si) => {
      const rng = new Rng(SEED + 300 + si);
      const x = makeInputs(rng, s);
      const init = GRADS.map(() => rng.normal(numel(s), 0.1));
      const xF32 = { q: bf16ToF32(x.q), k: bf16ToF32(x.k), v: bf16ToF32(x.v), dout: x.dout };
      for (const b of [ref, be]) {
        const viaBf16 = runAttention(b, s, x, init);
        const viaF32 = runAttention(b, s, xF32, init, "cc_f32");
        for (const key of Object.keys(viaBf16)) {
          compare(
            `attention_f32 ${label(s)} ${key} (${b.name}: f32 vs bf16 entry)`,
            viaF32[key],
            viaBf16[key],
            { atol: 0, rtol: 0 },
          );
        }
      }
      // unrounded inputs: emu/cuda vs cpu, cpu vs float64
      const q = rng.normal(numel(s)), k = rng.normal(numel(s)), v = rng.normal(numel(s));
      const want = runAttention(ref, s, { q, k, v, dout: x.dout }, init, "cc_f32");
      const got = runAttention(be, s, { q, k, v, dout: x.dout }, init, "cc_f32");
      compareVsCpu("attention_f32", tname, s, undefined, want, got, init, REL);
      const r64 = f64Attention(s, { q: f64(q), k: f64(k), v: f64(v) });
      compareRel(`attention_f32 ${label(s)} out (cpu vs float64)`, want.out, r64.out, 1e-6);
      compareRel(`attention_f32 ${label(s)} lse (cpu vs float64)`, want.lse, r64.lse, 1e-6);
    });
  },
);
