// The tape's own behaviour: shape errors from TypeScript, buffer reuse, gradients through fan-out.
import assert from "node:assert/strict";
import { Graph, Param } from "./autograd.ts";
import { backend } from "./test/harness.ts";

Deno.test("autograd: mismatched shapes passed from TypeScript are clear errors, not crashes", () => {
  const be = backend("cpu");
  const g = new Graph(be);
  const a = g.input(be.zeros([2, 3])), b = g.input(be.zeros([3, 2])), w = g.input(be.zeros([4, 5]));
  assert.throws(() => g.add(a, b), /^Error: add: shapes \[2,3\] and \[3,2\] differ$/);
  assert.throws(() => g.mul(a, b), /mul: shapes \[2,3\] and \[3,2\] differ/);
  assert.throws(() => g.matmul(a, w), /matmul: \[2,3\] @ \[4,5\]: inner sizes 3 and 4 differ/);
  assert.throws(
    () => g.addRow(a, g.input(be.zeros([4]))),
    /addRow: vector has 4 elements, rows have 3/,
  );
  assert.throws(
    () => g.groupnorm(a, a, a, 2, 1e-5),
    /groupnorm: 3 channels do not split into 2 groups/,
  );
  const head = g.input(be.zeros([10, 3]));
  assert.throws(
    () => g.lmHeadLoss(a, head, be.zeros([5], "i32"), 30),
    /lmHeadLoss: 5 targets for 2 rows/,
  );
});

Deno.test("autograd: after the first step, a step allocates nothing (buffers come from the pool)", () => {
  const be = backend("cpu");
  const g = new Graph(be);
  const p = new Param(be, "w", be.upload(new Float32Array(12).fill(0.5), [4, 3]));
  const x = be.upload(new Float32Array(24).fill(1), [8, 3]);
  const step = () => {
    const y = g.tanh(g.matmul(g.input(x), g.param(p), true)); // [8, 4]
    const z = g.mul(y, y);
    const s = g.add(z, y);
    g.grad(s); // start backward from a zero gradient: exercises the tape without a loss op
    g.backward();
    g.release();
  };
  step();
  const after1 = be.bytesInUse;
  for (let i = 0; i < 3; i++) step();
  assert.equal(be.bytesInUse, after1);
});

Deno.test("autograd: a value used twice gets the sum of both gradients (accumulating kernels)", () => {
  const be = backend("cpu");
  const g = new Graph(be);
  const p = new Param(be, "v", be.upload(new Float32Array([1, 2, 3]), [3]));
  const v = g.param(p);
  const y = g.mul(v, v); // d(sum y)/dv = 2v, through both inputs of one op
  const ones = be.upload(new Float32Array([1, 1, 1]), [3]);
  be.k.mn_memcpy_d2d(g.grad(y), ones.ptr, 12n, be.stream);
  g.backward();
  assert.deepEqual([...be.download(p.grad)], [2, 4, 6]);
  g.release();
});
