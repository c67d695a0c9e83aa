import assert from "node:assert/strict";
import {
  backend,
  checkKernel,
  compare,
  EXACT,
  f64,
  numericalGrad,
  Rng,
  VARIANT,
  withTensors,
} from "./test/harness.ts";
import type { Backend } from "./backend.ts";

interface Cfg {
  N: number;
  C: number;
  V: number;
}
// Small V relative to N: ids repeat, several times within one group of rows, which is what the
// backward's in-register merge of repeated ids must get right.
const allConfigs: Cfg[] = [
  { N: 1, C: 1, V: 1 },
  { N: 5, C: 17, V: 3 },
  { N: 64, C: 33, V: 5 },
  { N: 37, C: 768, V: 50 },
  { N: 64, C: 1000, V: 7 },
  { N: 9, C: 200, V: 1 }, // every row the same id
];
// Under the sanitizers (10x slower emu) the largest shape is left out: the ragged edges that
// could go out of bounds are all in the smaller ones.
const configs = VARIANT ? allConfigs.filter(({ N, C }) => N * C <= 30000) : allConfigs;
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
// kernel's register merge of repeated ids keeps that order), so the results are bit-identical.
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
        be.k.mn_embedding_backward(t.dwte.ptr, t.idx.ptr, t.dout.ptr, N, C, V, be.stream);
        be.k.mn_embedding_backward(t.dwte.ptr, t.idx.ptr, t.dout.ptr, N, C, V, be.stream);
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
        be.k.mn_embedding_backward(t.dwte.ptr, t.idx.ptr, t.dout.ptr, N, C, V, be.stream);
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
        () => be.k.mn_embedding_backward(w.ptr, null, a.ptr, 2, 3, 3, be.stream),
        /mn_embedding_backward .*embedding_backward: NULL pointer/,
      );
      expectError(
        be,
        () => be.k.mn_embedding_forward(a.ptr, idx.ptr, w.ptr, 0, 3, 3, be.stream),
        /mn_embedding_forward .*bad shape N = 0, C = 3, V = 3/,
      );
      expectError(
        be,
        () => be.k.mn_embedding_backward(w.ptr, idx.ptr, a.ptr, 2, -1, 3, be.stream),
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
          () => be.k.mn_embedding_backward(w.ptr, idx.ptr, a.ptr, 2, 3, 2, be.stream),
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
      be.k.mn_embedding_backward(t.dwte.ptr, t.idx.ptr, t.dout.ptr, 4, 2, 2, be.stream);
    },
  );
  compare("forward", r.out, [3, 4, NaN, NaN, NaN, NaN, 1, 2], EXACT);
  compare("backward", r.dwte, [1000, 1000, 1, 1], EXACT);
});
