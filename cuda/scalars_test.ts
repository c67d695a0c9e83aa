// scalars.cu: device-side sums and a scaling by a norm read from device memory (issue #16).
import assert from "node:assert/strict";
import {
  backend,
  checkKernel,
  compare,
  EXACT,
  Rng,
  SEED,
  type Tol,
  VARIANT,
  withTensors,
} from "./test/harness.ts";

const SIZES = [1, 33, 1000, 4097, ...(VARIANT ? [] : [40000])];

// The kernel sums in fp32 in a fixed tree order, the reference in double: |sum| reaches ~sqrt(n)
// x 1 (normal data) through ~n/threads + log2(threads) fp32 roundings of partial sums up to
// ~sqrt(n): atol 1e-4 at n = 40000 (ulp of 200 is 1.5e-5); rtol 1e-6 for the large values.
const TOL_SUM: Tol = { atol: 1e-4, rtol: 1e-6 };

interface SumCfg {
  n: number;
  alpha: number;
  beta: number;
  init: number;
}
const SUM_CONFIGS: SumCfg[] = SIZES.flatMap((n) => [
  { n, alpha: 1, beta: 0, init: NaN }, // beta 0: out is written, never read (NaN stays out)
  { n, alpha: 1 / n, beta: 1, init: 2.5 }, // a mean accumulated into a running value
  { n, alpha: -0.5, beta: 0.25, init: -3 },
]);

checkKernel({
  name: "sum_into",
  configs: SUM_CONFIGS,
  label: (c) => `n=${c.n} alpha=${c.alpha} beta=${c.beta}`,
  tol: TOL_SUM,
  run(be, c, rng) {
    return withTensors(be, { x: { data: rng.normal(c.n), shape: [c.n] } }, {
      out: { shape: [1], init: new Float32Array([c.init]) },
    }, (t) => {
      be.k.mn_sum_into(t.out.ptr, t.x.ptr, t.x.n, c.alpha, c.beta, be.stream);
    });
  },
});

interface NormCfg {
  n: number;
  sumsq: number;
  eps: number;
  inPlace: boolean;
}
const NORM_CONFIGS: NormCfg[] = SIZES.flatMap((n) => [
  { n, sumsq: 1234.5, eps: 1e-7, inPlace: false },
  { n, sumsq: 0, eps: 1e-7, inPlace: true }, // a zero norm: x / eps
  { n, sumsq: 3e-9, eps: 1e-3, inPlace: false },
]);

// One fp32 rounding of x * f (emu/cuda) vs x / d in double rounded once (cpu), with f itself an
// fp32 rounding of 1/d: two roundings apart at most, rtol 2.5e-7.
checkKernel({
  name: "scale_by_inv_norm",
  configs: NORM_CONFIGS,
  label: (c) => `n=${c.n} sumsq=${c.sumsq} eps=${c.eps}${c.inPlace ? " in place" : ""}`,
  tol: { atol: 0, rtol: 2.5e-7 },
  run(be, c, rng) {
    return withTensors(
      be,
      {
        x: { data: rng.normal(c.n), shape: [c.n] },
        s: { data: new Float32Array([c.sumsq]), shape: [1] },
      },
      { out: { shape: [c.n] } },
      (t) => {
        if (c.inPlace) {
          be.k.mn_scale_by_inv_norm(t.x.ptr, t.x.ptr, t.s.ptr, c.eps, t.x.n, be.stream);
          be.k.mn_memcpy_d2d(t.out.ptr, t.x.ptr, BigInt(t.x.nbytes), be.stream);
        } else be.k.mn_scale_by_inv_norm(t.out.ptr, t.x.ptr, t.s.ptr, c.eps, t.x.n, be.stream);
      },
    );
  },
});

Deno.test("sum_into: cpu is the float64 sum, scaled and added", () => {
  const be = backend("cpu");
  const rng = new Rng(SEED + 5);
  const x = rng.normal(777);
  const sum = x.reduce((s, v) => s + v, 0);
  for (const [alpha, beta, init] of [[1, 0, NaN], [0.125, 1, 4], [-2, -0.5, 3]]) {
    const r = withTensors(be, { x: { data: x, shape: [777] } }, {
      out: { shape: [1], init: new Float32Array([init]) },
    }, (t) => be.k.mn_sum_into(t.out.ptr, t.x.ptr, t.x.n, alpha, beta, be.stream));
    const want = Math.fround(alpha * sum + (beta === 0 ? 0 : beta * init));
    compare(`alpha ${alpha} beta ${beta}`, r.out, [want], { atol: 0, rtol: 1e-7 });
  }
});

Deno.test("scale_by_inv_norm: after mn_sum_squares it gives the bits of the host-side factor it replaces (emu), the float64 formula (cpu)", () => {
  // Before issue #16 the trainers downloaded sum(x^2) and launched mn_scale with the fp32 alpha
  // 1 / (sqrt(s) + eps) computed in double on the host; the device factor is the same number.
  const rng = new Rng(SEED + 6);
  const n = 3000, eps = 1e-7;
  const x = rng.normal(n, 0.3);
  for (const name of ["emu", "cpu"] as const) {
    const be = backend(name);
    const r = withTensors(be, { x: { data: x, shape: [n] } }, {
      s: { shape: [1] },
      dev: { shape: [n] },
      host: { shape: [n] },
    }, (t) => {
      be.k.mn_sum_squares(t.s.ptr, t.x.ptr, t.x.n, be.stream);
      be.k.mn_scale_by_inv_norm(t.dev.ptr, t.x.ptr, t.s.ptr, eps, t.x.n, be.stream);
      const s = (be.download(t.s) as Float32Array)[0];
      const alpha = 1 / (Math.sqrt(s) + Math.fround(eps));
      be.k.mn_scale(t.host.ptr, t.x.ptr, alpha, t.x.n, be.stream);
    });
    const s = r.s[0], norm = Math.sqrt(s);
    if (name === "emu") compare("emu: device factor vs host factor", r.dev, r.host, EXACT);
    else {
      const want = Float64Array.from(x, (v) => v / (norm + Math.fround(eps)));
      compare("cpu vs float64", r.dev, want, { atol: 0, rtol: 1e-7 });
    }
    const unit = Math.sqrt(Array.from(r.dev).reduce((a, v) => a + v * v, 0));
    assert.ok(Math.abs(unit - 1) < 1e-5, `${name}: ||out|| = ${unit}`);
  }
});

Deno.test("scalars: argument checks", () => {
  for (const name of ["cpu", "emu"] as const) {
    const be = backend(name);
    const t = be.zeros([8]);
    try {
      const at = (i: number) => Deno.UnsafePointer.offset(t.ptr, 4 * i);
      assert.throws(() => be.k.mn_sum_into(t.ptr, t.ptr, 0n, 1, 0, be.stream), /n = 0/);
      assert.throws(
        () => be.k.mn_sum_into(at(3), t.ptr, 8n, 1, 0, be.stream),
        /out must not lie inside x/,
      );
      assert.throws(
        () => be.k.mn_scale_by_inv_norm(t.ptr, t.ptr, null, 1e-7, 8n, be.stream),
        /NULL pointer/,
      );
      assert.throws(
        () => be.k.mn_scale_by_inv_norm(t.ptr, t.ptr, at(2), 1e-7, 8n, be.stream),
        /sumsq must not lie inside x/,
      );
      assert.throws(
        () => be.k.mn_scale_by_inv_norm(t.ptr, t.ptr, at(8), 0, 8n, be.stream),
        /eps = 0 must be > 0/,
      );
    } finally {
      be.free(t);
    }
  }
});
