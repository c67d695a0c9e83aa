// The cpu backend's fast paths keep it the reference (issue #19): its bf16 GEMM is exactly sgemm
// of the exactly widened operands, however it splits the work; its cross-entropy is the double
// result rounded once to fp32, the saturated softcap included.
import assert from "node:assert/strict";
import type { Backend } from "../backend.ts";
import { bf16ToF32, f32ToBf16 } from "../backend.ts";
import { backend, Rng, SEED } from "../test/harness.ts";

interface G {
  ta: number;
  tb: number;
  M: number;
  N: number;
  K: number;
  alpha: number;
  beta: number;
  cbf16: number;
  batch: number;
  /** batch items share A (stride_a = 0) */
  shareA?: boolean;
  /** extra elements at the end of every stored row (lda etc. > width) */
  pad: number;
}

// Shapes that take each path: one thread (small), columns split with sgemm writing C (fp32 C,
// beta 0), rows split, product tiles then C (beta != 0 or bf16 C), two tiles per thread (on 2
// cores), batches with a shared A and padded rows.
const CONFIGS: G[] = [
  { ta: 0, tb: 0, M: 5, N: 7, K: 3, alpha: 1, beta: 0, cbf16: 0, batch: 1, pad: 0 },
  { ta: 0, tb: 1, M: 64, N: 1000, K: 96, alpha: 1, beta: 0, cbf16: 0, batch: 1, pad: 0 },
  { ta: 1, tb: 0, M: 1000, N: 48, K: 130, alpha: 0.5, beta: 0, cbf16: 0, batch: 1, pad: 3 },
  { ta: 0, tb: 0, M: 96, N: 200, K: 300, alpha: 1, beta: 1, cbf16: 0, batch: 1, pad: 0 },
  { ta: 1, tb: 1, M: 2100, N: 300, K: 40, alpha: -1.5, beta: 0.25, cbf16: 0, batch: 1, pad: 1 },
  { ta: 0, tb: 1, M: 2200, N: 2048, K: 8, alpha: 1, beta: 0.5, cbf16: 1, batch: 1, pad: 0 },
  {
    ta: 1,
    tb: 0,
    M: 80,
    N: 96,
    K: 70,
    alpha: 2,
    beta: -1,
    cbf16: 1,
    batch: 3,
    shareA: true,
    pad: 2,
  },
];

function layout(c: G) {
  const [rA, cA] = c.ta ? [c.K, c.M] : [c.M, c.K];
  const [rB, cB] = c.tb ? [c.N, c.K] : [c.K, c.N];
  const lda = cA + c.pad, ldb = cB + c.pad, ldc = c.N + c.pad;
  const sA = c.shareA ? 0 : rA * lda + 7, sB = rB * ldb + 7, sC = c.M * ldc + 7;
  return {
    lda,
    ldb,
    ldc,
    sA,
    sB,
    sC,
    nA: (c.batch - 1) * sA + rA * lda,
    nB: (c.batch - 1) * sB + rB * ldb,
    nC: (c.batch - 1) * sC + c.M * ldc,
  };
}

/** mn_gemm_bf16 on bf16 A, B; C starts as C0 (fp32 values, or bf16 bits when cbf16). */
function gemmBf16(be: Backend, c: G, A: Uint16Array, B: Uint16Array, C0: Float32Array) {
  const L = layout(c);
  const a = be.upload(A, [L.nA], "bf16"), b = be.upload(B, [L.nB], "bf16");
  const cc = c.cbf16 ? be.upload(f32ToBf16(C0), [L.nC], "bf16") : be.upload(C0, [L.nC]);
  be.k.mn_gemm_bf16(
    c.ta,
    c.tb,
    c.M,
    c.N,
    c.K,
    c.alpha,
    a.ptr,
    L.lda,
    BigInt(L.sA),
    b.ptr,
    L.ldb,
    BigInt(L.sB),
    c.beta,
    cc.ptr,
    L.ldc,
    BigInt(L.sC),
    c.cbf16,
    c.batch,
    be.stream,
  );
  const out = be.downloadF32(cc);
  for (const t of [a, b, cc]) be.free(t);
  return out;
}

/** alpha * op(A) op(B) by mn_gemm_f32 (sgemm) on the widened operands, into a zeroed C. */
function sgemmProduct(be: Backend, c: G, A: Float32Array, B: Float32Array) {
  const L = layout(c);
  const a = be.upload(A, [L.nA]), b = be.upload(B, [L.nB]), p = be.zeros([L.nC]);
  be.k.mn_gemm_f32(
    c.ta,
    c.tb,
    c.M,
    c.N,
    c.K,
    c.alpha,
    a.ptr,
    L.lda,
    BigInt(L.sA),
    b.ptr,
    L.ldb,
    BigInt(L.sB),
    0,
    p.ptr,
    L.ldc,
    BigInt(L.sC),
    c.batch,
    be.stream,
  );
  const out = be.download(p) as Float32Array;
  for (const t of [a, b, p]) be.free(t);
  return out;
}

Deno.test("cpu gemm_bf16 is sgemm of the widened operands, bit for bit up to OpenBLAS's own split rounding, on every path", () => {
  const be = backend("cpu");
  CONFIGS.forEach((c, i) => {
    const rng = new Rng(SEED + i);
    const L = layout(c);
    const A = f32ToBf16(rng.normal(L.nA)), B = f32ToBf16(rng.normal(L.nB));
    // C0: random where written; the gaps between rows and batch items must keep their values
    const C0 = c.cbf16 ? bf16ToF32(f32ToBf16(rng.normal(L.nC))) : rng.normal(L.nC);
    const got = gemmBf16(be, c, A, B, C0);
    const p = sgemmProduct(be, c, bf16ToF32(A), bf16ToF32(B));
    // the product, then + beta * C in fp32 (C not read when beta is 0), stored as bf16 when C is
    // (round to nearest even; the untouched gaps hold bf16 values already)
    const store = (prod: number, j: number) => {
      const v = c.beta !== 0 ? Math.fround(prod + Math.fround(c.beta * C0[j])) : prod;
      return c.cbf16 ? bf16ToF32(f32ToBf16(Float32Array.of(v)))[0] : v;
    };
    let want: Float32Array = Float32Array.from(C0);
    for (let bi = 0; bi < c.batch; bi++) {
      for (let m = 0; m < c.M; m++) {
        for (let n = 0; n < c.N; n++) {
          const j = bi * L.sC + m * L.ldc + n;
          want[j] = c.beta !== 0 ? Math.fround(p[j] + Math.fround(c.beta * C0[j])) : p[j];
        }
      }
    }
    if (c.cbf16) want = bf16ToF32(f32ToBf16(want));
    // OpenBLAS itself is not bit-stable across how a product is split: its kernels for small
    // blocks may sum a K = 8 dot product in another order than the whole sgemm does (seed
    // 38621537: a tile's product -0.86425787 where the whole one is -0.86425781, one fp32 ulp, and
    // the bf16 C rounds the other way). So an element that differs must be sgemm's result for one
    // of the product's fp32 neighbours; a wrong operand, stride or beta is far outside that.
    const neighbour = (j: number, dir: number) => {
      const f = Float32Array.of(p[j]), u = new Int32Array(f.buffer);
      u[0] += p[j] > 0 || Object.is(p[j], 0) ? dir : -dir;
      return store(f[0], j);
    };
    let bad = -1;
    for (let j = 0; j < want.length && bad < 0; j++) {
      if (Object.is(got[j], want[j])) continue;
      const inC = (j % L.sC) < c.M * L.ldc && (j % L.sC) % L.ldc < c.N;
      if (!inC || ![1, -1].some((dir) => Object.is(got[j], neighbour(j, dir)))) bad = j;
    }
    assert.equal(
      bad,
      -1,
      `${JSON.stringify(c)} (seed ${SEED}): element ${bad} is ${got[bad]}, sgemm gives ${
        want[bad]
      }`,
    );
  });
});

/** float64 softcapped cross-entropy of one row, with 1 - tanh^2 as 4e / (1 + e)^2 (exact form). */
function ceRow64(x: Float32Array, t: number, cap: number, dloss: number) {
  const V = x.length;
  const z = new Float64Array(V), dz = new Float64Array(V);
  let zmax = -Infinity;
  for (let i = 0; i < V; i++) {
    const y = x[i] / cap, e = Math.exp(-2 * Math.abs(y));
    z[i] = cap * Math.tanh(y);
    dz[i] = 4 * e / ((1 + e) * (1 + e));
    zmax = Math.max(zmax, z[i]);
  }
  let sum = 0;
  for (let i = 0; i < V; i++) sum += Math.exp(z[i] - zmax);
  const d = new Float64Array(V);
  for (let i = 0; i < V; i++) {
    d[i] = dloss * (Math.exp(z[i] - zmax) / sum - (i === t ? 1 : 0)) * dz[i];
  }
  return { loss: zmax + Math.log(sum) - z[t], d };
}

Deno.test("cpu softcap_crossentropy: every output is the float64 value rounded once", () => {
  const be = backend("cpu");
  const rng = new Rng(SEED);
  const N = 6, V = 3001, cap = 15, dloss = 0.37;
  // logits from 1e-6 to 1000: tiny (tanh's series), moderate, and saturated (|x| / cap up to 67,
  // where 1 - t * t would be 0 or noise but the gradient is a tiny non-zero number)
  const x = new Float32Array(N * V);
  for (let i = 0; i < x.length; i++) {
    x[i] = (rng.next() < 0.5 ? -1 : 1) * 10 ** (-6 + 9 * rng.next());
  }
  const tg = Int32Array.from({ length: N }, () => Math.floor(rng.next() * V));
  const tx = be.upload(x, [N, V]), tt = be.upload(tg, [N]);
  const tl = be.alloc([N]), td = be.alloc([N, V]);
  be.k.mn_softcap_crossentropy(tl.ptr, td.ptr, tx.ptr, tt.ptr, N, V, cap, dloss, be.stream);
  const losses = be.download(tl) as Float32Array, d = be.download(td) as Float32Array;
  for (const t of [tx, tt, tl, td]) be.free(t);
  // within one fp32 ulp of the float64 value (the double results differ from it by ~1e-15)
  const ulp = (v: number) => Math.max(2 ** -149, 2 ** (Math.floor(Math.log2(Math.abs(v))) - 23));
  let worst = 0, at = "";
  for (let r = 0; r < N; r++) {
    const ref = ceRow64(x.subarray(r * V, (r + 1) * V), tg[r], cap, dloss);
    const el = Math.abs(losses[r] - ref.loss) / ulp(ref.loss);
    if (el > worst) [worst, at] = [el, `loss of row ${r}`];
    for (let i = 0; i < V; i++) {
      const e = Math.abs(d[r * V + i] - ref.d[i]) / ulp(ref.d[i]);
      if (e > worst) [worst, at] = [e, `dlogits[${r}, ${i}] (x = ${x[r * V + i]})`];
    }
  }
  assert.ok(
    worst <= 1,
    `${at}: ${worst.toFixed(1)} fp32 ulps from the float64 value (seed ${SEED})`,
  );
});
