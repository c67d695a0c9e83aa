import assert from "node:assert/strict";
import {
  backend,
  checkKernel,
  compare,
  CUDA_RUNS,
  EXACT,
  f64,
  numericalGrad,
  Rng,
  SEED,
  VARIANT,
  withTensors,
} from "./test/harness.ts";
import type { Backend } from "./backend.ts";

interface Cfg {
  N: number;
  C: number;
  V: number;
}
// Small V relative to N: ids repeat, many times for one id (more rows than the 32 the backward's
// segment walk loads at once). The backward sorts ids in tiles of 1024 keys, 4 bits per pass: the
// larger shapes span 2 and 3 tiles (ragged last tiles) and 3 and 4 passes (V = 300: 9 bits with
// the invalid-id key V; V = 50,257, GPT-2's vocabulary: 16 bits).
const allConfigs: Cfg[] = [
  { N: 1, C: 1, V: 1 },
  { N: 5, C: 17, V: 3 },
  { N: 64, C: 33, V: 5 },
  { N: 37, C: 768, V: 50 },
  { N: 64, C: 1000, V: 7 },
  { N: 9, C: 200, V: 1 }, // every row the same id
  { N: 1100, C: 4, V: 300 },
  { N: 2049, C: 40, V: 300 },
  { N: 1500, C: 3, V: 50257 },
];
// Under the sanitizers (10x slower emu) the largest shapes are left out: the ragged edges that
// could go out of bounds, and two sort tiles, are all in the smaller ones.
const configs = VARIANT ? allConfigs.filter(({ N, C }) => N * C <= 30000 && N <= 1100) : allConfigs;
const label = ({ N, C, V }: Cfg) => `N=${N} C=${C} V=${V}`;

function ids(rng: Rng, N: number, V: number): Int32Array {
  const idx = rng.ints(N, V);
  if (N > 3) idx[N - 1] = idx[0]; // a repeat that spans groups of rows
  return idx;
}

// A gather is a copy, so every backend must be bit-exact.
checkKernel({
  name: "embedding_forward",
  configs,
  label,
  tol: EXACT,
  run(be, { N, C, V }, rng) {
    const idx = ids(rng, N, V);
    const wte = rng.normal(V * C);
    return withTensors(be, { idx: { data: idx, shape: [N] }, wte: { data: wte, shape: [V, C] } }, {
      out: { shape: [N, C] },
    }, (t) => be.k.mn_embedding_forward(t.out.ptr, t.idx.ptr, t.wte.ptr, N, C, V, be.stream));
  },
});

// Each dwte element is an fp32 running sum over rows in increasing order on every backend (the
// kernel sorts rows by id stably and walks each id's rows in order), so the results are
// bit-identical.
// dwte starts non-zero and backward runs twice: accumulation, not assignment.
checkKernel({
  name: "embedding_backward",
  configs,
  label,
  tol: EXACT,
  run(be, { N, C, V }, rng) {
    const idx = ids(rng, N, V);
    const dout = rng.normal(N * C);
    const init = rng.normal(V * C);
    return withTensors(
      be,
      { idx: { data: idx, shape: [N] }, dout: { data: dout, shape: [N, C] } },
      {
        dwte: { shape: [V, C], init },
      },
      (t) => {
        be.k.mn_embedding_backward(t.dwte.ptr, t.idx.ptr, t.dout.ptr, N, C, V, -1, be.stream);
        be.k.mn_embedding_backward(t.dwte.ptr, t.idx.ptr, t.dout.ptr, N, C, V, -1, be.stream);
      },
    );
  },
});

function gather64(wte: Float64Array, idx: Int32Array, C: number): Float64Array {
  const out = new Float64Array(idx.length * C);
  for (let i = 0; i < idx.length; i++) {
    for (let c = 0; c < C; c++) out[i * C + c] = wte[idx[i] * C + c];
  }
  return out;
}

Deno.test("embedding: cpu forward is the gather; backward matches float64 finite differences, accumulating", () => {
  const be = backend("cpu");
  for (const { N, C, V } of [{ N: 6, C: 3, V: 4 }, { N: 11, C: 5, V: 2 }]) {
    const rng = new Rng(N * 100 + C);
    const idx = ids(rng, N, V);
    const wte = rng.normal(V * C);
    const dout = rng.normal(N * C);
    const init = rng.normal(V * C);
    const r = withTensors(
      be,
      {
        idx: { data: idx, shape: [N] },
        wte: { data: wte, shape: [V, C] },
        dout: { data: dout, shape: [N, C] },
      },
      { out: { shape: [N, C] }, dwte: { shape: [V, C], init } },
      (t) => {
        be.k.mn_embedding_forward(t.out.ptr, t.idx.ptr, t.wte.ptr, N, C, V, be.stream);
        be.k.mn_embedding_backward(t.dwte.ptr, t.idx.ptr, t.dout.ptr, N, C, V, -1, be.stream);
      },
    );
    compare("forward vs float64", r.out, gather64(f64(wte), idx, C), EXACT);
    const g = numericalGrad((w) => gather64(w, idx, C), f64(wte), dout);
    compare("dwte - init vs finite differences", r.dwte.map((v, i) => v - init[i]), g, {
      atol: 1e-5,
      rtol: 1e-5,
    });
    // an id that never occurs gets no gradient at all
    for (let v = 0; v < V; v++) {
      if (!idx.includes(v)) {
        compare(
          `untouched row ${v}`,
          r.dwte.subarray(v * C, v * C + C),
          init.subarray(v * C, v * C + C),
          EXACT,
        );
      }
    }
  }
});

function expectError(be: Backend, fn: () => void, pattern: RegExp) {
  assert.throws(fn, (e: Error) => {
    assert.match(e.message, pattern, `${be.name}: ${e.message}`);
    return true;
  });
}

Deno.test("embedding: NULL pointers, bad shapes and (cpu) bad ids are clear errors", () => {
  for (const name of ["cpu", "emu"] as const) {
    const be = backend(name);
    const idx = be.upload(new Int32Array([0, 2]));
    const a = be.zeros([2, 3]), w = be.zeros([3, 3]);
    try {
      expectError(
        be,
        () => be.k.mn_embedding_forward(null, idx.ptr, w.ptr, 2, 3, 3, be.stream),
        /mn_embedding_forward .*embedding_forward: NULL pointer/,
      );
      expectError(
        be,
        () => be.k.mn_embedding_backward(w.ptr, null, a.ptr, 2, 3, 3, -1, be.stream),
        /mn_embedding_backward .*embedding_backward: NULL pointer/,
      );
      expectError(
        be,
        () => be.k.mn_embedding_forward(a.ptr, idx.ptr, w.ptr, 0, 3, 3, be.stream),
        /mn_embedding_forward .*bad shape N = 0, C = 3, V = 3/,
      );
      expectError(
        be,
        () => be.k.mn_embedding_backward(w.ptr, idx.ptr, a.ptr, 2, -1, 3, -1, be.stream),
        /mn_embedding_backward .*bad shape N = 2, C = -1/,
      );
      expectError(
        be,
        () => be.k.mn_embedding_forward(a.ptr, idx.ptr, w.ptr, 2, 3, 0, be.stream),
        /mn_embedding_forward .*V = 0/,
      );
      if (name === "cpu") {
        // V = 2 makes idx[1] = 2 out of range
        expectError(
          be,
          () => be.k.mn_embedding_forward(a.ptr, idx.ptr, w.ptr, 2, 3, 2, be.stream),
          /embedding_forward: idx\[1\] = 2 is outside \[0, 2\)/,
        );
        expectError(
          be,
          () => be.k.mn_embedding_backward(w.ptr, idx.ptr, a.ptr, 2, 3, 2, -1, be.stream),
          /embedding_backward: idx\[1\] = 2 is outside \[0, 2\)/,
        );
      }
    } finally {
      for (const t of [idx, a, w]) be.free(t);
    }
  }
});

Deno.test("embedding: emu stays in bounds on a bad id (NaN row forward, dropped gradient backward)", () => {
  const be = backend("emu");
  const idx = new Int32Array([1, 5, -1, 0]);
  const wte = new Float32Array([1, 2, 3, 4]); // V = 2, C = 2
  const dout = new Float32Array([1, 1, 10, 10, 100, 100, 1000, 1000]);
  const r = withTensors(
    be,
    {
      idx: { data: idx, shape: [4] },
      wte: { data: wte, shape: [2, 2] },
      dout: { data: dout, shape: [4, 2] },
    },
    { out: { shape: [4, 2] }, dwte: { shape: [2, 2], init: new Float32Array(4) } },
    (t) => {
      be.k.mn_embedding_forward(t.out.ptr, t.idx.ptr, t.wte.ptr, 4, 2, 2, be.stream);
      be.k.mn_embedding_backward(t.dwte.ptr, t.idx.ptr, t.dout.ptr, 4, 2, 2, -1, be.stream);
    },
  );
  compare("forward", r.out, [3, 4, NaN, NaN, NaN, NaN, 1, 2], EXACT);
  compare("backward", r.dwte, [1000, 1000, 1, 1], EXACT);
});

/** dwte after `init` += dout rows in increasing row order, fp32 additions, bad ids dropped */
function serialBackward(
  init: Float32Array,
  idx: Int32Array,
  dout: Float32Array,
  C: number,
  V: number,
): Float32Array {
  const d = init.slice();
  for (let i = 0; i < idx.length; i++) {
    const v = idx[i];
    if (v < 0 || v >= V) continue;
    for (let c = 0; c < C; c++) d[v * C + c] = Math.fround(d[v * C + c] + dout[i * C + c]);
  }
  return d;
}

// 65,537 rows over 7 ids (~9,400 rows each, 65 sort tiles, the last with one key), and bad ids
// (negative, = V, > V) spread over several tiles: every backend against the fp32 serial sum, bit
// for bit (cuda also twice: deterministic). emu takes ~2 s for the big one.
for (const name of VARIANT ? [] : ["cpu", "emu", "cuda"] as const) {
  Deno.test({
    name: `embedding_backward: ${name} is the serial fp32 sum at 65,537 rows; bad ids dropped`,
    ignore: name === "cuda" && !CUDA_RUNS,
    fn() {
      const be = backend(name);
      const rng = new Rng(SEED + 77);
      const cases = [{ N: 65537, C: 3, V: 7, bad: false }, { N: 3001, C: 5, V: 10, bad: true }];
      for (const { N, C, V, bad } of cases) {
        if (bad && name === "cpu") continue; // the cpu reference refuses bad ids
        const idx = rng.ints(N, V);
        if (bad) { for (let i = 3; i < N; i += 97) idx[i] = [-1, V, V + 5, -1000][i % 4]; }
        const dout = rng.normal(N * C), init = rng.normal(V * C);
        const run = () =>
          withTensors(
            be,
            { idx: { data: idx, shape: [N] }, dout: { data: dout, shape: [N, C] } },
            {
              dwte: { shape: [V, C], init },
            },
            (t) =>
              be.k.mn_embedding_backward(t.dwte.ptr, t.idx.ptr, t.dout.ptr, N, C, V, -1, be.stream),
          )
            .dwte;
        const got = run();
        compare(
          `${name} N=${N} V=${V} vs serial`,
          got,
          serialBackward(init, idx, dout, C, V),
          EXACT,
        );
        if (name === "cuda") compare(`${name} N=${N} twice`, run(), got, EXACT);
      }
    },
  });
}
