// The full-grid two-stage reductions (cuda/reduce.cuh) behind every parameter-gradient and scalar
// reduction: add/mul_row_vector_backward's dv, axpby_backward's da/db, sum_squares, LayerNorm's and
// GroupNorm's dweight/dbias and the RWKV-7 bonus's du. The kernels' own test files check them at
// small shapes (one row tile); here the row counts span many tiles and are not multiples of any
// block, tile or unroll size, so the tiling, the ragged last tile and the second stage all run:
//   - emu (and cuda with a GPU) vs cpu, gradients pre-filled so += is what is checked;
//   - determinism: the same call twice gives the same bits, and the fused passes (dx with dv,
//     dx/dy with da/db) give the same bits for the reduced gradient as the unfused ones.
// Sizes, chosen to keep emu (a few ms per 256-thread block on a shared machine) at seconds per test:
//   rows N = 1, 7 (one tile); 203 x 10 (4 tiles of 64, the last one 11 rows); 2049 x 40 (33 tiles,
//   the last one a single row); 65,537 x 3 for the row-vector ops (228 tiles of 288 rows, the last
//   one 161); full sums over n = 1, 7, 4097 (two blocks, the second with one element), 65,537 (17
//   blocks); 5,000,011 (977 blocks of 5120 elements: the per-block chunk above its minimum) only
//   on cuda (emu: ~3 s per call). The norms and the bonus stop at 203 rows: their dx kernels run one block per
//   row (or per 8 rows) and emu time grows with the block count, while the column sums they share
//   with the row-vector ops are the same code. LayerNorm's fused row pass (C <= 768) tiles by
//   row_tile_plan(N, 1): 203 rows are 4 tiles of 64 rows, the last one 11, then col_sums_finish.
// Under the sanitizers (emu 10x slower) only N <= 203 and n <= 4097 run.
import type { Backend } from "./backend.ts";
import {
  backend,
  checkKernel,
  compare,
  CUDA_RUNS,
  EXACT,
  Rng,
  SEED,
  type Tol,
  TOL_F32,
  VARIANT,
  withTensors,
} from "./test/harness.ts";

type Out = Record<string, Float32Array>;
/** fp32 sums of up to N terms of size ~1 in another order than the cpu's double sums: the error
 * grows like sqrt(N); 5e-5 sqrt(N) is ~30x what 8 seeds measured at N = 65,537, while a dropped
 * row (an error of ~1) or a dropped tile (~sqrt(tile rows)) is far outside it. */
const sumTol = (N: number): Tol => ({ atol: 5e-5 * Math.sqrt(N), rtol: 2e-5 });
const ROW_LIMIT = VARIANT ? 203 : Infinity;
const N_LIMIT = VARIANT ? 4097 : 65537;

interface Rows {
  N: number;
  C: number;
}
const ROWS_NORM: Rows[] = [{ N: 1, C: 4 }, { N: 7, C: 34 }, { N: 203, C: 10 }];
const ROWS_BIG: Rows[] = [...ROWS_NORM, { N: 2049, C: 40 }, { N: 65537, C: 3 }].filter(({ N }) =>
  N <= ROW_LIMIT
);
const SIZES = [1, 7, 4097, 65537].filter((n) => n <= N_LIMIT);
const rowLabel = ({ N, C }: Rows) => `[${N},${C}]`;

/** uploads f32 inputs and pre-filled gradients, runs fn, returns every gradient */
function runWith(
  be: Backend,
  inputs: Record<string, [Float32Array, number[]]>,
  grads: Record<string, [Float32Array, number[]]>,
  fn: (p: Record<string, Deno.PointerValue>) => void,
): Out {
  const ins = Object.fromEntries(
    Object.entries(inputs).map(([k, [data, shape]]) => [k, { data, shape }]),
  );
  const outs = Object.fromEntries(
    Object.entries(grads).map(([k, [init, shape]]) => [k, { shape, init }]),
  );
  return withTensors(be, ins, outs, (t) => {
    const p: Record<string, Deno.PointerValue> = {};
    for (const [k, v] of Object.entries(t)) p[k] = v.ptr;
    fn(p);
  }) as Out;
}

// ---- the calls, each with the gradients it is given (the others NULL) ----
type Call = (be: Backend, rng: Rng) => Out;

function rowVector(mul: boolean, { N, C }: Rows, want: ("dx" | "dv")[]): Call {
  return (be, rng) => {
    const dout = rng.normal(N * C), x = rng.normal(N * C), v = rng.normal(C);
    const init = { dx: rng.normal(N * C), dv: rng.normal(C) };
    const grads: Record<string, [Float32Array, number[]]> = {};
    if (want.includes("dx")) grads.dx = [init.dx, [N, C]];
    if (want.includes("dv")) grads.dv = [init.dv, [C]];
    return runWith(be, { dout: [dout, [N, C]], x: [x, [N, C]], v: [v, [C]] }, grads, (p) => {
      const dx = p.dx ?? null, dv = p.dv ?? null;
      if (mul) be.k.mn_mul_row_vector_backward(dx, dv, p.dout, p.x, p.v, N, C, -1, be.stream);
      else be.k.mn_add_row_vector_backward(dx, dv, p.dout, N, C, -1, be.stream);
    });
  };
}

function axpby(n: number, want: ("dx" | "dy" | "da" | "db")[]): Call {
  return (be, rng) => {
    const x = rng.normal(n), y = rng.normal(n), dout = rng.normal(n), ab = rng.normal(2);
    const init = { dx: rng.normal(n), dy: rng.normal(n), da: rng.normal(1), db: rng.normal(1) };
    const grads: Record<string, [Float32Array, number[]]> = {};
    for (const g of want) grads[g] = [init[g], [init[g].length]];
    return runWith(
      be,
      {
        x: [x, [n]],
        y: [y, [n]],
        dout: [dout, [n]],
        a: [ab.subarray(0, 1), [1]],
        b: [ab.subarray(1), [1]],
      },
      grads,
      (p) =>
        be.k.mn_axpby_backward(
          p.dx ?? null,
          p.dy ?? null,
          p.da ?? null,
          p.db ?? null,
          p.dout,
          p.x,
          p.y,
          p.a,
          p.b,
          BigInt(n),
          -1,
          be.stream,
        ),
    );
  };
}

/** x and y one tensor, and a and b one scalar (the first block's x = a x0 + b x0): dx == dy and
 * da == db, so each element gets both contributions */
function axpbyAliased(n: number): Call {
  return (be, rng) => {
    const x = rng.normal(n), dout = rng.normal(n), a = rng.normal(1);
    return runWith(
      be,
      { x: [x, [n]], dout: [dout, [n]], a: [a, [1]] },
      { dx: [rng.normal(n), [n]], da: [rng.normal(1), [1]] },
      (p) =>
        be.k.mn_axpby_backward(
          p.dx,
          p.dx,
          p.da,
          p.da,
          p.dout,
          p.x,
          p.x,
          p.a,
          p.a,
          BigInt(n),
          -1,
          be.stream,
        ),
    );
  };
}

function sumSquares(n: number): Call {
  return (be, rng) =>
    runWith(
      be,
      { x: [rng.normal(n), [n]] },
      { out: [new Float32Array([123]), [1]] },
      (p) => be.k.mn_sum_squares(p.out, p.x, BigInt(n), be.stream),
    );
}

/** rows with a per-row offset and scale, so xhat differs from x */
function shifted(rng: Rng, N: number, C: number): Float32Array {
  const x = rng.normal(N * C);
  for (let i = 0; i < N; i++) {
    const off = 4 * (rng.next() - 0.5), sc = 0.5 + 2 * rng.next();
    for (let c = 0; c < C; c++) x[i * C + c] = off + sc * x[i * C + c];
  }
  return x;
}

// The norms' saved statistics come from the cpu forward on every backend, so the backward calls
// see the same inputs and only their own rounding differs.
function layernorm({ N, C }: Rows): Call {
  return (be, rng) => {
    const x = shifted(rng, N, C), w = rng.normal(C), b = rng.normal(C), dout = rng.normal(N * C);
    const cpu = backend("cpu");
    const st = runWith(
      cpu,
      { x: [x, [N, C]], w: [w, [C]], b: [b, [C]] },
      {
        out: [new Float32Array(N * C), [N, C]],
        mean: [new Float32Array(N), [N]],
        rstd: [new Float32Array(N), [N]],
      },
      (p) =>
        cpu.k.mn_layernorm_forward(p.out, p.mean, p.rstd, p.x, p.w, p.b, N, C, 1e-5, cpu.stream),
    );
    return runWith(be, {
      x: [x, [N, C]],
      w: [w, [C]],
      dout: [dout, [N, C]],
      mean: [st.mean, [N]],
      rstd: [st.rstd, [N]],
    }, {
      dinp: [rng.normal(N * C), [N, C]],
      dweight: [rng.normal(C), [C]],
      dbias: [rng.normal(C), [C]],
    }, (p) =>
      be.k.mn_layernorm_backward(
        p.dinp,
        p.dweight,
        p.dbias,
        p.dout,
        p.x,
        p.w,
        p.mean,
        p.rstd,
        N,
        C,
        -1,
        be.stream,
      ));
  };
}

/** GroupNorm with G = 2 groups of C / 2 channels (C even) */
function groupnorm({ N, C }: Rows): Call {
  const G = 2, D = C / 2;
  return (be, rng) => {
    const x = shifted(rng, N, C), w = rng.normal(C), b = rng.normal(C), dout = rng.normal(N * C);
    const cpu = backend("cpu");
    const st = runWith(cpu, { x: [x, [N, C]], w: [w, [C]], b: [b, [C]] }, {
      out: [new Float32Array(N * C), [N, C]],
      mean: [new Float32Array(N * G), [N, G]],
      rstd: [new Float32Array(N * G), [N, G]],
    }, (p) =>
      cpu.k.mn_groupnorm_forward(
        p.out,
        p.mean,
        p.rstd,
        p.x,
        p.w,
        p.b,
        N,
        G,
        D,
        64e-5,
        cpu.stream,
      ));
    return runWith(be, {
      x: [x, [N, C]],
      w: [w, [C]],
      dout: [dout, [N, C]],
      mean: [st.mean, [N, G]],
      rstd: [st.rstd, [N, G]],
    }, {
      dx: [rng.normal(N * C), [N, C]],
      dweight: [rng.normal(C), [C]],
      dbias: [rng.normal(C), [C]],
    }, (p) =>
      be.k.mn_groupnorm_backward(
        p.dx,
        p.dweight,
        p.dbias,
        p.dout,
        p.x,
        p.w,
        p.mean,
        p.rstd,
        N,
        G,
        D,
        -1,
        be.stream,
      ));
  };
}

/** the RWKV-7 bonus with H = 2 heads of C / 2 */
function bonus({ N, C }: Rows): Call {
  const H = 2, D = C / 2;
  return (be, rng) => {
    const sh = [N, H, D], n = N * C;
    return runWith(be, {
      r: [rng.normal(n), sh],
      k: [rng.normal(n), sh],
      v: [rng.normal(n), sh],
      u: [rng.normal(C), [H, D]],
      dout: [rng.normal(n), sh],
    }, {
      dr: [rng.normal(n), sh],
      dk: [rng.normal(n), sh],
      dv: [rng.normal(n), sh],
      du: [rng.normal(C), [H, D]],
    }, (p) =>
      be.k.mn_rwkv7_bonus_backward(
        p.dr,
        p.dk,
        p.dv,
        p.du,
        p.dout,
        p.r,
        p.k,
        p.v,
        p.u,
        N,
        H,
        D,
        -1,
        be.stream,
      ));
  };
}

// ---- emu (cuda) vs cpu over the sizes ----
interface Case {
  label: string;
  call: Call;
}
/** checkKernel over the cases; one tolerance table for all (sums: that of the most terms) */
function check(name: string, cases: Case[], tol: Record<string, Tol>) {
  checkKernel({
    name: `${name} (full-grid reductions)`,
    configs: cases,
    label: (c) => c.label,
    tol,
    run: (be, c, rng) => c.call(be, rng),
  });
}
const widest = (rows: Rows[]) => sumTol(Math.max(...rows.map(({ N }) => N)));

check(
  "add_row_vector_backward",
  ROWS_BIG.flatMap((r) => [
    { label: `${rowLabel(r)} dx,dv`, call: rowVector(false, r, ["dx", "dv"]) },
    { label: `${rowLabel(r)} dv`, call: rowVector(false, r, ["dv"]) },
  ]),
  { dx: TOL_F32, dv: widest(ROWS_BIG) },
);
check(
  "mul_row_vector_backward",
  ROWS_BIG.flatMap((r) =>
    ([["dx", "dv"], ["dv"], ["dx"]] as ("dx" | "dv")[][]).filter((w) =>
      r.N < 65537 || w.includes("dv")
    ).map((want) => ({
      label: `${rowLabel(r)} ${want}`,
      call: rowVector(true, r, want),
    }))
  ),
  { dx: TOL_F32, dv: widest(ROWS_BIG) },
);
// every subset the entry point treats differently
const AXPBY_SETS: ("dx" | "dy" | "da" | "db")[][] = [
  ["dx", "dy", "da", "db"],
  ["da", "db"],
  ["da"],
  ["db"],
  ["dx", "da"],
];
const fullTol = sumTol(Math.max(...SIZES));
check(
  "axpby_backward",
  SIZES.flatMap((n) => [
    ...AXPBY_SETS.map((want) => ({ label: `n=${n} ${want}`, call: axpby(n, want) })),
    { label: `n=${n} dx = dy, da = db`, call: axpbyAliased(n) },
  ]),
  { dx: TOL_F32, dy: TOL_F32, da: fullTol, db: fullTol },
);
// sum_squares writes (out starts at 123). Positive terms, no cancellation: each result is at most
// ~50 fp32 additions deep (per thread, block, partials), so 50 x 2^-24 < 4e-6 relative bounds it.
check("sum_squares", SIZES.map((n) => ({ label: `n=${n}`, call: sumSquares(n) })), {
  out: { atol: 0, rtol: 4e-6 },
});
// dinp/dx of the norms: one row's block sums, as in their own test files
const ROW_TOL: Tol = { atol: 5e-5, rtol: 2e-5 };
check(
  "layernorm_backward",
  ROWS_NORM.map((r) => ({ label: rowLabel(r), call: layernorm(r) })),
  { dinp: ROW_TOL, dweight: widest(ROWS_NORM), dbias: widest(ROWS_NORM) },
);
check(
  "groupnorm_backward",
  ROWS_NORM.map((r) => ({ label: rowLabel(r), call: groupnorm(r) })),
  { dx: ROW_TOL, dweight: widest(ROWS_NORM), dbias: widest(ROWS_NORM) },
);
check(
  "rwkv7_bonus_backward",
  ROWS_NORM.map((r) => ({ label: rowLabel(r), call: bonus(r) })),
  { dr: ROW_TOL, dk: ROW_TOL, dv: ROW_TOL, du: widest(ROWS_NORM) },
);

// ---- determinism: the same bits twice, and fused = unfused for the reduced gradient ----
const DET_TARGETS = VARIANT ? [] : (["emu", "cuda"] as const);
for (const name of DET_TARGETS) {
  Deno.test({
    name: `reductions: bit-identical run to run, fused = unfused (${name})`,
    ignore: name === "cuda" && !CUDA_RUNS,
    fn() {
      const be = backend(name);
      const big: Rows = { N: 2049, C: 40 }, mid: Rows = { N: 203, C: 10 };
      const calls: [string, Call][] = [
        ["add_row_vector dx,dv", rowVector(false, big, ["dx", "dv"])],
        ["mul_row_vector dx,dv", rowVector(true, big, ["dx", "dv"])],
        ["axpby all", axpby(65537, ["dx", "dy", "da", "db"])],
        ["sum_squares", sumSquares(65537)],
        ["layernorm", layernorm(mid)],
        ["groupnorm", groupnorm(mid)],
        ["bonus", bonus(mid)],
      ];
      for (const [what, call] of calls) {
        const a = call(be, new Rng(SEED)), b = call(be, new Rng(SEED));
        for (const k of Object.keys(a)) compare(`${name} ${what} ${k} twice`, b[k], a[k], EXACT);
      }
      // the reduced gradient does not depend on whether the elementwise one is fused in
      const pairs: [string, Out, Out, string[]][] = [
        [
          "add_row_vector",
          rowVector(false, big, ["dx", "dv"])(be, new Rng(SEED)),
          rowVector(false, big, ["dv"])(be, new Rng(SEED)),
          ["dv"],
        ],
        [
          "mul_row_vector",
          rowVector(true, big, ["dx", "dv"])(be, new Rng(SEED)),
          rowVector(true, big, ["dv"])(be, new Rng(SEED)),
          ["dv"],
        ],
        [
          "axpby",
          axpby(65537, ["dx", "dy", "da", "db"])(be, new Rng(SEED)),
          axpby(65537, ["da", "db"])(be, new Rng(SEED)),
          ["da", "db"],
        ],
        [
          "axpby da alone",
          axpby(65537, ["da", "db"])(be, new Rng(SEED)),
          axpby(65537, ["da"])(be, new Rng(SEED)),
          ["da"],
        ],
      ];
      for (const [what, fused, alone, keys] of pairs) {
        for (const k of keys) {
          compare(`${name} ${what} ${k} fused vs alone`, fused[k], alone[k], EXACT);
        }
      }
      // and fused = unfused for the elementwise gradients too (one rounding of the same formula)
      const dxFused = axpby(4097, ["dx", "dy", "da", "db"])(be, new Rng(SEED));
      const dxAlone = axpby(4097, ["dx", "dy"])(be, new Rng(SEED));
      for (const k of ["dx", "dy"]) {
        compare(`${name} axpby ${k} fused vs alone`, dxFused[k], dxAlone[k], EXACT);
      }
    },
  });
}

// cuda only: full sums whose per-block chunk exceeds its minimum (more than 1024 x 4096 elements)
Deno.test({
  name: "reductions: full sums over 5,000,011 elements (977 blocks of 5120): cuda vs cpu",
  ignore: !CUDA_RUNS,
  fn() {
    const n = 5000011, sum = sumTol(n);
    const tols: Record<string, Tol> = {
      out: { atol: 0, rtol: 4e-6 },
      da: sum,
      db: sum,
      dx: TOL_F32,
      dy: TOL_F32,
    };
    for (
      const [what, call, keys] of [
        ["sum_squares", sumSquares(n), ["out"]],
        ["axpby all", axpby(n, ["dx", "dy", "da", "db"]), ["dx", "dy", "da", "db"]],
      ] as [string, Call, string[]][]
    ) {
      const want = call(backend("cpu"), new Rng(SEED)), got = call(backend("cuda"), new Rng(SEED));
      const again = call(backend("cuda"), new Rng(SEED));
      for (const k of keys) {
        compare(`${what} ${k} cuda vs cpu`, got[k], want[k], tols[k]);
        compare(`${what} ${k} cuda twice`, again[k], got[k], EXACT);
      }
    }
  },
});
