// The tape's own behaviour: shape errors from TypeScript, buffer reuse, gradients through fan-out.
import assert from "node:assert/strict";
import { GradAccumulator, Graph, Param, type Var } from "./autograd.ts";
import { backend, Rng } from "./test/harness.ts";

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

Deno.test("autograd: a backward closure's scratch (bf16 upstream gradients) is reused by the next one", () => {
  // a chain of L matmuls of the same shape: each backward casts its upstream gradient to a bf16
  // scratch; one such buffer serves all L (it went back to the pool when its closure returned)
  const allocated = (L: number) => {
    const be = backend("cpu");
    const g = new Graph(be);
    const ps = Array.from(
      { length: L },
      (_, i) => new Param(be, `w${i}`, be.upload(new Float32Array(64).fill(0.01), [8, 8])),
    );
    let h = g.input(be.upload(new Float32Array(8 * 8).fill(1), [8, 8]));
    for (const p of ps) h = g.matmul(h, g.param(p), true);
    g.grad(h);
    const before = be.bytesInUse;
    g.backward();
    const grew = be.bytesInUse - before;
    g.release();
    return grew;
  };
  const one = allocated(1), six = allocated(6);
  assert.ok(one > 0);
  // six matmuls: one activation gradient (8x8 fp32) more than one matmul (the chain's gradients
  // take turns in two buffers) and no more scratch: without the reuse it would be 5 x 8x8 bf16 more
  assert.equal(six - one, 8 * 8 * 4);
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

Deno.test("autograd: GradAccumulator adds each later micro-step's whole gradient to p.grad, in order", () => {
  // An embedding backward sums many rows into one token's gradient: letting micro-step 2 add into
  // micro-step 1's sums rounds differently from computing it alone and adding it once (PyTorch's
  // AccumulateGrad, and what a rank-ordered all-reduce of N processes' gradients does).
  const be = backend("cpu");
  const g = new Graph(be);
  const V = 3, C = 4, N = 500;
  const rng = new Rng(7);
  const p = new Param(be, "wte", be.upload(rng.normal(V * C), [V, C]));
  const micro = [0, 1, 2].map(() => ({
    idx: be.upload(rng.ints(N, V), [N], "i32"),
    dout: be.upload(rng.normal(N * C), [N, C]),
  }));
  const step = (i: number) => {
    const y = g.embedding(micro[i].idx, g.param(p), [1, N]);
    be.k.mn_memcpy_d2d(g.grad(y), micro[i].dout.ptr, BigInt(N * C * 4), be.stream);
    g.backward();
    g.release();
  };
  const alone = micro.map((_, i) => {
    p.zeroGrad();
    step(i);
    return be.download(p.grad) as Float32Array;
  });
  p.zeroGrad();
  new GradAccumulator(be, [p]).run(3, step);
  const want = alone[0].map((x, j) => Math.fround(Math.fround(x + alone[1][j]) + alone[2][j]));
  assert.deepEqual(be.download(p.grad), want);
  assert.equal(p.sink, p.grad, "backward writes p.grad again afterwards");
  // the order matters for these values: adding straight into p.grad rounds differently
  p.zeroGrad();
  [0, 1, 2].forEach(step);
  assert.notDeepEqual(be.download(p.grad), want);
});

// Issue #14: backward overwrites each activation gradient on its first write and adds after; a
// step's second run takes its gradient buffers from the pool still holding the first run's
// gradients, so any kernel that added into (or left unwritten part of) a buffer it was told to
// overwrite changes the second run's parameter gradients. Covers the aliased outputs (axpby(x, x),
// mul(x, x)), add's pass-through (both inputs new, and x + x), blockMatmul's column blocks and the
// loss head's row chunks.
Deno.test("autograd: first writes overwrite stale pool buffers (same bits on a second step), no memset", () => {
  for (const name of ["cpu", "emu"] as const) {
    const be = backend(name), rng = new Rng(7);
    const N = 16, C = 8, V = 11;
    const param = (n: string, shape: number[]) =>
      new Param(be, n, be.upload(rng.uniform(shape.reduce((a, b) => a * b)), shape));
    const [W0, W, Wb, head, lam] = [
      param("w0", [C, C]),
      param("w", [C, C]),
      param("wb", [2, C / 2, C]),
      param("head", [V, C]),
      param("lam", [2]),
    ];
    const x = be.upload(rng.uniform(N * C), [N, C]);
    const targets = be.upload(Int32Array.from({ length: N }, (_, i) => (3 * i) % V), [N], "i32");
    const g = new Graph(be);
    const step = () => {
      for (const p of [W0, W, Wb, head, lam]) p.zeroGrad();
      const x0 = g.rmsnorm(g.matmul(g.input(x), g.param(W0), true));
      const h = g.matmul(x0, g.param(W), true);
      const l = g.param(lam);
      const a = g.axpby(g.scalarOf(l, 0), x0, g.scalarOf(l, 1), x0);
      const [b1, b2] = g.blockMatmul(h, g.param(Wb));
      const m = g.mul(b1, b1);
      const s = g.add(g.add(m, b2), a);
      g.lmHeadLoss(g.tanh(g.add(s, s)), g.param(head), targets, 30, 1, N / 2);
      g.backward();
      g.release();
      return [W0, W, Wb, head, lam].map((p) => be.downloadF32(p.grad));
    };
    const first = step(), second = step();
    first.forEach((f, i) => {
      assert.ok(f.some((v) => v !== 0) && f.every(Number.isFinite), `${name} grad ${i}`);
      assert.deepEqual(second[i], f, `${name}: parameter ${i}'s gradient on the second step`);
    });
    assert.equal(g.gradMemsets, 0, `${name}: activation gradients zeroed`);
  }
});

Deno.test("autograd: a matmul output's sole consumer writes its gradient in bf16; a second consumer keeps it fp32", () => {
  // blockMatmul (bf16 outputs) -> rwkv7Mix4: the four dm_j are written bf16 by the mix kernel and
  // read by the LoRA's backward GEMMs as they are (no casts), and are the same bits as the fp32
  // gradients cast (bf16Grad cleared: the old path). With m_0 also read by a matmul, its gradient
  // has two writers: fp32 for all four, cast as before.
  const [B, T, C, D] = [1, 4, 8, 2];
  const run = (bf16Grad: boolean, secondUse: boolean) => {
    const be = backend("cpu");
    const rng = new Rng(7);
    const param = (name: string, shape: number[], scale = 0.5) =>
      new Param(be, name, be.upload(rng.normal(shape.reduce((a, b) => a * b, 1), scale), shape));
    const [w, hp, xp, q] = [
      param("w", [4, D, C]),
      param("h", [B, T, 4 * D]),
      param("x", [B, T, C]),
      param("q", [C, 3]),
    ];
    const maa = [0, 1, 2, 3].map((i) => param(`maa${i}`, [C]));
    let casts = 0;
    const inner = be.k.mn_cast_f32_to_bf16;
    be.k.mn_cast_f32_to_bf16 = (...a) => (casts++, inner(...a));
    const g = new Graph(be);
    const m = g.blockMatmul(g.param(hp), g.param(w), true); // 4 x [B, T, C] bf16
    for (const v of m) v.bf16Grad = bf16Grad;
    // recorded first, so its backward runs after the mix's: the mix is not the last writer
    const extra = secondUse ? g.matmul(m[0], g.param(q)) : null;
    const outs = g.rwkv7Mix4(g.param(xp), m, maa.map((p) => g.param(p)));
    const ones = (v: Var) =>
      be.k.mn_memcpy_d2d(
        g.grad(v),
        be.upload(new Float32Array(v.t.numel).fill(1)).ptr,
        BigInt(v.t.numel * 4),
        be.stream,
      );
    for (const o of outs) ones(o);
    if (extra) ones(extra);
    const before = casts;
    g.backward();
    const got = { w: be.download(w.grad), h: be.download(hp.grad), casts: casts - before };
    g.release();
    return got;
  };
  const sole = run(true, false), old = run(false, false);
  assert.deepEqual(sole.w, old.w);
  assert.deepEqual(sole.h, old.h);
  assert.equal(old.casts - sole.casts, 4); // the four dm_j casts are gone
  const two = run(true, true), twoOld = run(false, true);
  assert.deepEqual(two.w, twoOld.w);
  assert.equal(two.casts, twoOld.casts); // no bf16 gradient: cast as before
});

Deno.test("autograd: the gate and the value residual's mv, bf16 matmul outputs with one fused consumer, get bf16 gradients (no cast, same bits)", () => {
  // matmul(outBf16) -> rwkv7GnBonusGate's gate, rwkv7ValueMix's mv, rwkv6GnGate's gate: the fused
  // backward writes the gradient in bf16 and the GEMM's backward reads it as it is; the weight
  // and input gradients are the bits of the fp32 gradient's cast (bf16Grad cleared: the old path)
  const [N, K, C, H] = [8, 6, 8, 2];
  type P = Record<string, Var>;
  const consumers: Record<string, (g: Graph, p: P, z: Var) => Var> = {
    rwkv7GnBonusGate: (g, p, z) =>
      g.rwkv7GnBonusGate(p.y, p.wt, p.bs, p.r, p.k, p.v, p.u, z, H, 64e-5),
    rwkv7ValueMix: (g, p, z) => g.rwkv7ValueMix(p.v, p.v1, z, p.t),
    rwkv6GnGate: (g, p, z) => g.rwkv6GnGate(p.y, p.wt, p.bs, z, H, 64e-5),
  };
  for (const name of ["cpu", "emu"] as const) {
    for (const [op, consume] of Object.entries(consumers)) {
      const run = (bf16Grad: boolean) => {
        const be = backend(name), rng = new Rng(7);
        const param = (n: string, shape: number[], scale = 0.5) =>
          new Param(be, n, be.upload(rng.normal(shape.reduce((a, b) => a * b, 1), scale), shape));
        const ps = {
          h: param("h", [N, K]),
          wz: param("wz", [K, C]),
          ...Object.fromEntries(["y", "r", "k", "v", "v1"].map((n) => [n, param(n, [N, C])])),
          ...Object.fromEntries(["wt", "bs", "u", "t"].map((n) => [n, param(n, [C])])),
        };
        let casts = 0;
        const inner = be.k.mn_cast_f32_to_bf16;
        be.k.mn_cast_f32_to_bf16 = (...a) => (casts++, inner(...a));
        const g = new Graph(be);
        const p = Object.fromEntries(Object.entries(ps).map(([n, q]) => [n, g.param(q)]));
        const z = g.matmul(p.h, p.wz, false, true);
        assert.equal(z.t.dtype, "bf16");
        z.bf16Grad = bf16Grad;
        const out = consume(g, p, z);
        be.k.mn_memcpy_d2d(
          g.grad(out),
          be.upload(rng.normal(out.t.numel)).ptr,
          BigInt(out.t.numel * 4),
          be.stream,
        );
        const before = casts;
        g.backward();
        const got = {
          wz: be.download(ps.wz.grad),
          h: be.download(ps.h.grad),
          casts: casts - before,
        };
        g.release();
        return got;
      };
      const sole = run(true), old = run(false);
      assert.ok(Array.from(sole.wz).some((x) => x !== 0), `${name} ${op}: a gradient reached wz`);
      assert.deepEqual(sole.wz, old.wz, `${name} ${op}: wz`);
      assert.deepEqual(sole.h, old.h, `${name} ${op}: h`);
      assert.equal(old.casts - sole.casts, 1, `${name} ${op}: the gradient's cast is gone`);
    }
  }
});

Deno.test("autograd: matmul's operandOut writes the bf16 operand the cast of its fp32 output is, same gradients (cpu, emu)", () => {
  for (const name of ["cpu", "emu"] as const) {
    const be = backend(name), rng = new Rng(7);
    const xs = rng.normal(6 * 40), ws = rng.normal(24 * 40, 0.2), dys = rng.normal(6 * 24);
    const run = (operandOut: boolean) => {
      const g = new Graph(be);
      const x = new Param(be, "x", be.upload(xs, [2, 3, 40]));
      const w = new Param(be, "w", be.upload(ws, [24, 40]));
      const y = g.matmul(g.param(x), g.param(w), true, operandOut);
      assert.equal(y.t.dtype, operandOut ? "bf16" : "f32");
      const yb = be.download(g.bf16Of(y)); // the operand a consumer reads: the cast or y itself
      y.g = be.upload(dys, [2, 3, 24]);
      g.backward();
      const r = { yb, dx: be.download(x.grad), dw: be.download(w.grad) };
      g.release();
      return r;
    };
    const [plain, fused] = [run(false), run(true)];
    assert.deepEqual(fused.yb, plain.yb, `${name}: bf16 output`);
    assert.deepEqual(fused.dx, plain.dx, `${name}: dx`);
    assert.deepEqual(fused.dw, plain.dw, `${name}: dw`);
    // the "f32" path: an fp32 output
    const g = new Graph(be);
    g.precision = "f32";
    const a = g.input(be.upload(xs, [6, 40])), b = g.input(be.upload(ws, [24, 40]));
    assert.equal(g.matmul(a, b, true, true).t.dtype, "f32");
    g.release();
  }
});
