import assert from "node:assert/strict";
import { backend, checkKernel, EXACT, withTensors } from "./test/harness.ts";

checkKernel({
  name: "transpose",
  configs: [{ R: 1, C: 1 }, { R: 3, C: 70 }, { R: 64, C: 32 }, { R: 100, C: 33 }],
  tol: EXACT,
  label: ({ R, C }) => `[${R},${C}]`,
  run(be, { R, C }, rng) {
    return withTensors(be, { x: { data: rng.normal(R * C), shape: [R, C] } }, {
      y: { shape: [C, R] },
    }, (t) => {
      be.k.mn_transpose(t.y.ptr, t.x.ptr, R, C, be.stream);
    });
  },
});

Deno.test("transpose: cpu is the index permutation; in-place is refused", () => {
  const be = backend("cpu");
  const x = new Float32Array([1, 2, 3, 4, 5, 6]);
  const r = withTensors(be, { x: { data: x, shape: [2, 3] } }, { y: { shape: [3, 2] } }, (t) => {
    be.k.mn_transpose(t.y.ptr, t.x.ptr, 2, 3, be.stream);
    assert.throws(
      () => be.k.mn_transpose(t.x.ptr, t.x.ptr, 2, 3, be.stream),
      /in-place is not supported/,
    );
  });
  assert.deepEqual([...r.y], [1, 4, 2, 5, 3, 6]);
});
