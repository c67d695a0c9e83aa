import { bf16ToF32, f32ToBf16 } from "./backend.ts";
import { backend, checkKernel, compare, EXACT, targets, withTensors } from "./test/harness.ts";
import type { Backend } from "./backend.ts";

// D = A @ B + C with the tensor-core wrappers (cuda/mma.cuh) vs the cpu triple loop.
// Tolerance: products of bf16 values are exact in fp32 and the cpu sums them in double, so the only
// difference is the fp32 accumulation order of the K + 1 terms: |err| <= (K + 1) 2^-24 sum|terms|.
// With unit-normal inputs and K <= 64 that sum stays below ~60, giving 65 * 6e-8 * 60 < 2.5e-4; the
// typical error is far smaller (a random walk), so atol 2.5e-4 with a small rtol.
const TOL_MMA = { atol: 2.5e-4, rtol: 1e-5 };

function runMma(
  be: Backend,
  M: number,
  N: number,
  K: number,
  a: Uint16Array,
  b: Uint16Array,
  c: Float32Array,
) {
  return withTensors(
    be,
    {
      a: { data: a, shape: [M, K], dtype: "bf16" },
      b: { data: b, shape: [K, N], dtype: "bf16" },
      c: { data: c, shape: [M, N] },
    },
    { d: { shape: [M, N] } },
    (t) => {
      const rc = be.k.mn_mma_selftest(t.d.ptr, t.a.ptr, t.b.ptr, t.c.ptr, M, N, K, be.stream);
      if (rc !== 0) throw new Error(`mn_mma_selftest returned ${rc}`);
    },
  );
}

checkKernel({
  name: "mma_selftest",
  configs: [{ M: 16, N: 8, K: 16 }, { M: 32, N: 16, K: 48 }, { M: 64, N: 64, K: 64 }],
  tol: TOL_MMA,
  run(be, { M, N, K }, rng) {
    const a = f32ToBf16(rng.normal(M * K, 1));
    const b = f32ToBf16(rng.normal(K * N, 1));
    const c = rng.normal(M * N, 1);
    return runMma(be, M, N, K, a, b, c);
  },
});

// Layout test, independent of any fragment table: A's elements encode their (row, col) as distinct
// integers (exact in bf16), B is a 0/1 selector picking one k per column n, C encodes its (row, col)
// in multiples of 4096 (all sums stay exact in fp32). Then D[r][n] = A[r][sel(n)] + C[r][n] exactly,
// and any misplaced A, B, C or D fragment element, or a wrong ldmatrix row/transposition, shows up
// as a wrong integer. K = 32 runs both of the kernel's A paths (ldmatrix.x4 and .x4.trans).
const M0 = 16, N0 = 8, K0 = 32;
function aCode(r: number, k: number): number {
  return k < 16 ? r * 16 + k : -(r * 16 + (k - 16)) - 1; // |value| <= 256: exact in bf16
}
function layoutCase(shift: number) {
  const a = new Float32Array(M0 * K0), b = new Float32Array(K0 * N0), c = new Float32Array(M0 * N0);
  const sel = (n: number) => (n * 5 + shift) % K0; // over shift = 0..31 every k is picked
  for (let r = 0; r < M0; r++) for (let k = 0; k < K0; k++) a[r * K0 + k] = aCode(r, k);
  for (let n = 0; n < N0; n++) b[sel(n) * N0 + n] = 1;
  for (let r = 0; r < M0; r++) for (let n = 0; n < N0; n++) c[r * N0 + n] = 4096 * (r * N0 + n + 1);
  const want = new Float32Array(M0 * N0);
  for (let r = 0; r < M0; r++) {
    for (let n = 0; n < N0; n++) want[r * N0 + n] = aCode(r, sel(n)) + c[r * N0 + n];
  }
  // the bf16 inputs must be exact for the test to mean anything
  compare("layout inputs exact", bf16ToF32(f32ToBf16(a)), a, EXACT);
  return { a: f32ToBf16(a), b: f32ToBf16(b), c, want };
}

for (const t of targets()) {
  Deno.test({
    name: `mma_selftest: fragment layout (element-encoding A, selector B) on ${t.name}${
      t.variant ? "-" + t.variant : ""
    }`,
    ignore: !t.run,
    fn() {
      for (const name of ["cpu", t.name] as const) {
        const be = backend(name, name === "cpu" ? "" : t.variant);
        for (let shift = 0; shift < K0; shift++) {
          const { a, b, c, want } = layoutCase(shift);
          const got = runMma(be, M0, N0, K0, a, b, c);
          compare(`mma layout shift ${shift} (${name})`, got.d, want, EXACT);
        }
      }
    },
  });
}

Deno.test("mma_selftest: shapes that are not multiples of the tile are rejected", () => {
  for (const name of ["cpu", "emu"] as const) {
    const be = backend(name);
    for (const [M, N, K] of [[15, 8, 16], [16, 12, 16], [16, 8, 24], [0, 8, 16]]) {
      let msg = "";
      try {
        be.k.mn_mma_selftest(null, null, null, null, M, N, K, be.stream);
      } catch (e) {
        msg = String(e);
      }
      if (!msg.includes("mma_selftest")) {
        throw new Error(`${name}: mma_selftest(${M}, ${N}, ${K}) accepted`);
      }
    }
  }
});

// ldmatrix's lane map, read out directly (no mma involved): emu vs cpu (the cpu backend writes out
// the PTX ISA table), and the cpu table against this file's own reading of the PTX ISA:
// lane l gets row l/4, cols 2(l%4)+{0,1} of each 8x8 matrix; .trans gives the transpose.
function fragmentMap(be: Backend, which: number) {
  return withTensors(be, {}, {
    rows: { shape: [256], dtype: "i32" },
    cols: { shape: [256], dtype: "i32" },
  }, (t) => {
    be.k.mn_mma_fragment_map(t.rows.ptr, t.cols.ptr, which, be.stream);
  });
}

checkKernel({
  name: "mma_fragment_map",
  configs: [{ which: 0 }, { which: 1 }],
  tol: EXACT,
  run: (be, { which }) => fragmentMap(be, which),
});

Deno.test("mma_fragment_map: cpu table matches the PTX ldmatrix description", () => {
  const be = backend("cpu");
  for (const which of [0, 1]) {
    const got = fragmentMap(be, which);
    const wantR: number[] = [], wantC: number[] = [];
    for (let lane = 0; lane < 32; lane++) {
      for (let q = 0; q < 4; q++) {
        for (let h = 0; h < 2; h++) {
          const inRow = Math.floor(lane / 4), inCol = (lane % 4) * 2 + h;
          wantR.push(8 * (q % 2) + (which ? inCol : inRow));
          wantC.push(8 * Math.floor(q / 2) + (which ? inRow : inCol));
        }
      }
    }
    compare(`ldmatrix rows which=${which}`, got.rows, wantR, EXACT);
    compare(`ldmatrix cols which=${which}`, got.cols, wantC, EXACT);
  }
});
