import assert from "node:assert/strict";
import { type Backend, bf16ToF32, f32ToBf16 } from "./backend.ts";
import { backend, checkKernel, compare, Rng, SEED, type Tol, withTensors } from "./test/harness.ts";

/** One GEMM call: shapes, transposes, batch, scalars, C dtype and row padding (lda etc. > width). */
interface G {
  M: number;
  N: number;
  K: number;
  ta: number;
  tb: number;
  batch: number;
  alpha: number;
  beta: number;
  cbf16: number;
  pad: number;
  /** every batch item uses the same A (stride_a = 0, a shared weight) */
  shareA?: boolean;
}

/** Stored layout of A, B, C for a config: row strides, batch strides, buffer sizes (elements). */
function layout(c: G) {
  const [rA, cA] = c.ta ? [c.K, c.M] : [c.M, c.K];
  const [rB, cB] = c.tb ? [c.N, c.K] : [c.K, c.N];
  const lda = cA + c.pad, ldb = cB + c.pad, ldc = c.N + c.pad;
  const gap = c.batch > 1 ? 5 : 0; // batch items not packed back to back
  const strideA = c.shareA ? 0 : rA * lda + gap,
    strideB = rB * ldb + gap,
    strideC = c.M * ldc + gap;
  return {
    lda,
    ldb,
    ldc,
    strideA,
    strideB,
    strideC,
    sizeA: (c.batch - 1) * strideA + rA * lda,
    sizeB: (c.batch - 1) * strideB + rB * ldb,
    sizeC: (c.batch - 1) * strideC + c.M * ldc,
  };
}

/** Operand element type: mn_gemm_bf16 (bf16 bits) or mn_gemm_f32 (C is then always fp32). */
type Op = "bf16" | "f32";

interface Data {
  /** bf16 bits for mn_gemm_bf16, fp32 values for mn_gemm_f32 */
  A: Uint16Array | Float32Array;
  B: Uint16Array | Float32Array;
  /** the initial C (fp32, or bf16 bits when cbf16), or null: C starts poisoned (NaN), beta = 0 */
  C0: Float32Array | Uint16Array | null;
}

function draw(c: G, rng: Rng, op: Op = "bf16"): Data {
  const L = layout(c);
  const A = op === "bf16" ? f32ToBf16(rng.normal(L.sizeA)) : rng.normal(L.sizeA);
  const B = op === "bf16" ? f32ToBf16(rng.normal(L.sizeB)) : rng.normal(L.sizeB);
  let C0: Float32Array | Uint16Array | null = null;
  if (c.beta !== 0) C0 = c.cbf16 ? f32ToBf16(rng.normal(L.sizeC)) : rng.normal(L.sizeC);
  return { A, B, C0 };
}

function runGemm(be: Backend, c: G, d: Data, op: Op = "bf16"): Float32Array {
  const L = layout(c);
  const cdt = c.cbf16 ? "bf16" : "f32";
  const res = withTensors(
    be,
    {
      A: { data: d.A, shape: [L.sizeA], dtype: op },
      B: { data: d.B, shape: [L.sizeB], dtype: op },
    },
    { C: d.C0 ? { shape: [L.sizeC], dtype: cdt, init: d.C0 } : { shape: [L.sizeC], dtype: cdt } },
    (t) => {
      // the arguments both entry points share; mn_gemm_bf16 adds c_bf16 before the batch
      const args = [
        c.ta,
        c.tb,
        c.M,
        c.N,
        c.K,
        c.alpha,
        t.A.ptr,
        L.lda,
        BigInt(L.strideA),
        t.B.ptr,
        L.ldb,
        BigInt(L.strideB),
        c.beta,
        t.C.ptr,
        L.ldc,
        BigInt(L.strideC),
      ] as const;
      if (op === "f32") be.k.mn_gemm_f32(...args, c.batch, be.stream);
      else be.k.mn_gemm_bf16(...args, c.cbf16, c.batch, be.stream);
    },
  );
  return res.C as Float32Array;
}

/**
 * float64 GEMM of the same inputs (bf16 or fp32) over the whole C buffer: written elements get
 * alpha * op(A) @ op(B) + beta * C0 (exact, not rounded to the output dtype); the padding between
 * rows and between batch items keeps C0 (NaN where C started poisoned).
 */
function refGemm(c: G, d: Data): Float64Array {
  const L = layout(c);
  const wide = (x: Uint16Array | Float32Array) => x instanceof Uint16Array ? bf16ToF32(x) : x;
  const A = wide(d.A), B = wide(d.B);
  const C0 = d.C0 ? (c.cbf16 ? bf16ToF32(d.C0 as Uint16Array) : d.C0 as Float32Array) : null;
  const out = new Float64Array(L.sizeC).fill(NaN);
  if (C0) out.set(C0);
  for (let b = 0; b < c.batch; b++) {
    const a0 = b * L.strideA, b0 = b * L.strideB, c0 = b * L.strideC;
    for (let m = 0; m < c.M; m++) {
      for (let n = 0; n < c.N; n++) {
        let s = 0;
        for (let k = 0; k < c.K; k++) {
          const a = c.ta ? A[a0 + k * L.lda + m] : A[a0 + m * L.lda + k];
          const bv = c.tb ? B[b0 + n * L.ldb + k] : B[b0 + k * L.ldb + n];
          s += a * bv;
        }
        const idx = c0 + m * L.ldc + n;
        out[idx] = c.alpha * s + (c.beta !== 0 ? c.beta * C0![idx] : 0);
      }
    }
  }
  return out;
}

/**
 * Absolute error of an fp32 dot product of K terms of N(0,1) bf16 values (products exact in fp32):
 * each of the K additions rounds with relative error <= 2^-24 of a partial sum of typical size
 * sqrt(k), so the accumulated error is a random walk of typical size ~ 2^-24 * K (summing in a
 * different order, as OpenBLAS's blocking and our tiles do, gives a different walk of that size).
 * 1e-6 * K * |alpha| is ~16x that typical size (room for the tail over thousands of elements), and
 * still ~1e-6 * sqrt(K) relative to a typical |C| ~ sqrt(K) * |alpha|, so a wrong index or a
 * dropped k term (error ~ 1) cannot pass.
 */
function accErr(Kmax: number, alphaMax: number): number {
  return 1e-6 * Kmax * alphaMax;
}

const F32_CONFIGS: G[] = [
  { M: 1, N: 1, K: 1, ta: 0, tb: 0, batch: 1, alpha: 1, beta: 0, cbf16: 0, pad: 0 },
  { M: 17, N: 33, K: 65, ta: 0, tb: 1, batch: 1, alpha: 0.5, beta: 1, cbf16: 0, pad: 3 },
  { M: 64, N: 128, K: 96, ta: 1, tb: 0, batch: 1, alpha: 1, beta: 0, cbf16: 0, pad: 0 },
  { M: 17, N: 33, K: 65, ta: 1, tb: 1, batch: 3, alpha: -1.5, beta: 1, cbf16: 0, pad: 2 },
  {
    M: 70,
    N: 40,
    K: 300,
    ta: 0,
    tb: 0,
    batch: 2,
    alpha: 1,
    beta: 0.5,
    cbf16: 0,
    pad: 1,
    shareA: true,
  },
];
const BF16_CONFIGS: G[] = [
  { M: 1, N: 1, K: 1, ta: 0, tb: 0, batch: 1, alpha: 1, beta: 0, cbf16: 1, pad: 0 },
  { M: 17, N: 33, K: 65, ta: 1, tb: 0, batch: 1, alpha: 1, beta: 0, cbf16: 1, pad: 1 },
  { M: 64, N: 128, K: 96, ta: 0, tb: 1, batch: 3, alpha: 0.5, beta: 1, cbf16: 1, pad: 0 },
  { M: 33, N: 17, K: 16, ta: 1, tb: 1, batch: 2, alpha: -1.5, beta: -1, cbf16: 1, pad: 4 },
];
const maxK = (cs: G[]) => Math.max(...cs.map((c) => c.K));
const maxAlpha = (cs: G[]) => Math.max(...cs.map((c) => Math.abs(c.alpha)));
const label = (c: G) =>
  `${c.M}x${c.N}x${c.K} ta${c.ta} tb${c.tb} batch${c.batch} alpha${c.alpha} beta${c.beta} ` +
  `${c.cbf16 ? "bf16" : "f32"} pad${c.pad}${c.shareA ? " sharedA" : ""}`;

// fp32 C: the two accumulation orders differ by accErr; rtol covers the final alpha*acc + beta*C
// roundings (a few fp32 ulps of |C|).
checkKernel({
  name: "gemm_bf16 (fp32 C)",
  configs: F32_CONFIGS,
  tol: { atol: accErr(maxK(F32_CONFIGS), maxAlpha(F32_CONFIGS)), rtol: 1e-5 },
  label,
  run: (be, c, rng) => ({ C: runGemm(be, c, draw(c, rng)) }),
});

// bf16 C: fp32 values within accErr of each other can round to neighbouring bf16 values: one bf16
// ulp, which is at most 2^-7 of the value (8 significant bits).
checkKernel({
  name: "gemm_bf16 (bf16 C)",
  configs: BF16_CONFIGS,
  tol: { atol: accErr(maxK(BF16_CONFIGS), maxAlpha(BF16_CONFIGS)), rtol: 2 ** -7 },
  label,
  run: (be, c, rng) => ({ C: runGemm(be, c, draw(c, rng)) }),
});

Deno.test("gemm_bf16: cpu matches a float64 matmul of the same bf16 inputs", () => {
  const be = backend("cpu");
  [...F32_CONFIGS, ...BF16_CONFIGS].forEach((c, i) => {
    const d = draw(c, new Rng(SEED + 100 + i));
    const got = runGemm(be, c, d);
    // fp32 C: the accumulation error only (plus a few ulps of rounding); bf16 C: additionally the
    // one round-to-nearest of the output, at most half a bf16 ulp = 2^-8 of the value.
    const tol: Tol = { atol: accErr(c.K, Math.abs(c.alpha)), rtol: c.cbf16 ? 2 ** -8 : 1e-6 };
    compare(`gemm ${label(c)} (cpu vs float64)`, got, refGemm(c, d), tol);
  });
});

// ---- mn_gemm_f32: the same shape table (every config, C forced to fp32), fp32 operands ----------
// Error model: the operands are arbitrary fp32 values now, so each product rounds too (relative
// 2^-24, a random walk like the additions'); the sum's error stays of the accErr size, which is
// ~16x the typical size and still ~1e-6 sqrt(K) relative to |C|.
const GEMM_F32_CONFIGS: G[] = [...F32_CONFIGS, ...BF16_CONFIGS].map((c) => ({ ...c, cbf16: 0 }));

checkKernel({
  name: "gemm_f32",
  configs: GEMM_F32_CONFIGS,
  tol: { atol: accErr(maxK(GEMM_F32_CONFIGS), maxAlpha(GEMM_F32_CONFIGS)), rtol: 1e-5 },
  label,
  run: (be, c, rng) => ({ C: runGemm(be, c, draw(c, rng, "f32"), "f32") }),
});

Deno.test("gemm_f32: cpu matches a float64 matmul of the same fp32 inputs", () => {
  const be = backend("cpu");
  GEMM_F32_CONFIGS.forEach((c, i) => {
    const d = draw(c, new Rng(SEED + 200 + i), "f32");
    const got = runGemm(be, c, d, "f32");
    compare(`gemm_f32 ${label(c)} (cpu vs float64)`, got, refGemm(c, d), {
      atol: accErr(c.K, Math.abs(c.alpha)),
      rtol: 1e-6,
    });
  });
});

Deno.test("gemm_f32: operands are not rounded to bf16 (cpu, emu)", () => {
  // 1 + 2^-20 has no bf16 representation (8 significant bits): squared with K = 1 it gives
  // 1 + 2^-19 (+ 2^-40, lost in fp32), where a bf16 rounding of the operands would give exactly 1.
  const x = 1 + 2 ** -20;
  const c: G = { M: 1, N: 1, K: 1, ta: 0, tb: 0, batch: 1, alpha: 1, beta: 0, cbf16: 0, pad: 0 };
  for (const name of ["cpu", "emu"] as const) {
    const got = runGemm(backend(name), c, {
      A: new Float32Array([x]),
      B: new Float32Array([x]),
      C0: null,
    }, "f32");
    assert.equal(got[0], 1 + 2 ** -19, name);
  }
});

Deno.test("gemm_bf16: bf16 output is the round-to-nearest-even of the fp32 result", () => {
  // K = 1, alpha = 1: a*b of two 8-bit significands is exact in fp32, so the bf16 output must be
  // exactly RNE(a*b) (the host f32ToBf16 is checked against RNE in cast_test.ts). Cases: round
  // down (1 + 2^-6 + 2^-14), a tie resolved upward to even (3 + 1.5 ulp), a negative tie
  // (-(1.5 + 1.5 ulp)), and a plain round up (2.25 + 1.5 ulp + 2^-14).
  const a = new Float32Array([1 + 2 ** -7, 3, -1.5, 1.5 + 2 ** -7]);
  const b = new Float32Array([1 + 2 ** -7, 1 + 2 ** -7, 1 + 2 ** -7, 1.5 + 2 ** -7]);
  const exact = a.map((x, i) => x * b[i]); // exact in fp32: 8-bit x 8-bit significands
  const want = bf16ToF32(f32ToBf16(exact));
  assert.deepEqual([...want], [1 + 2 ** -6, 3 + 2 ** -5, -(1.5 + 2 ** -6), 2.25 + 2 ** -5]);
  for (const name of ["cpu", "emu"] as const) {
    const be = backend(name);
    for (let i = 0; i < a.length; i++) {
      const c: G = {
        M: 1,
        N: 1,
        K: 1,
        ta: 0,
        tb: 0,
        batch: 1,
        alpha: 1,
        beta: 0,
        cbf16: 1,
        pad: 0,
      };
      const d: Data = {
        A: f32ToBf16(a.subarray(i, i + 1)),
        B: f32ToBf16(b.subarray(i, i + 1)),
        C0: null,
      };
      const got = runGemm(be, c, d);
      assert.equal(got[0], want[i], `${name}: ${a[i]} * ${b[i]}`);
    }
  }
});

Deno.test("gemm_bf16: providers and argument checks", () => {
  assert.equal(backend("cpu").gemmProvider(), "openblas");
  assert.equal(backend("emu").gemmProvider(), "tiled-kernel");
  for (const name of ["cpu", "emu"] as const) {
    const be = backend(name);
    const z = be.zeros([64], "bf16");
    const cz = be.zeros([64]);
    try {
      // (ta, M, N, K, lda, ldc, batch = 1, stride_c = 0) with B = [K, N] untransposed, ldb = N
      type Call = [number, number, number, number, number, number, number?, bigint?];
      const args = (ab: Deno.PointerValue, [ta, M, N, K, lda, ldc, , sc = 0n]: Call) =>
        [ta, 0, M, N, K, 1, ab, lda, 0n, ab, N, 0n, 0, cz.ptr, ldc, sc] as const;
      const call = (...a: Call) => be.k.mn_gemm_bf16(...args(z.ptr, a), 0, a[6] ?? 1, be.stream);
      const callF32 = (...a: Call) => be.k.mn_gemm_f32(...args(cz.ptr, a), a[6] ?? 1, be.stream);
      for (const [f, fn] of [[call, "gemm"], [callF32, "gemm_f32"]] as const) {
        f(0, 4, 4, 4, 4, 4); // valid
        assert.throws(() => f(0, 4, 4, 4, 3, 4), new RegExp(`${fn}: lda=3`));
        assert.throws(() => f(1, 5, 4, 4, 4, 4), /lda=4/); // A stored [K, M] needs lda >= M
        assert.throws(() => f(0, 4, 4, 4, 4, 3), /ldc=3/);
        assert.throws(() => f(0, 0, 4, 4, 4, 4), /bad sizes/);
        assert.throws(() => f(0, 2, 2, 2, 2, 2, 2, 0n), /stride_c=0/);
      }
    } finally {
      be.free(z);
      be.free(cz);
    }
  }
});
