// The tape's own behaviour: shape errors from TypeScript, buffer reuse, gradients through fan-out.
import assert from "node:assert/strict";
import { GradAccumulator, Graph, Param, type Var } from "./autograd.ts";
import { bf16ToF32, f32ToBf16 } from "./backend.ts";
import { backend, compare, Rng, TOL_BF16 } from "./test/harness.ts";

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
    for (const p of ps) {
      h = g.matmul(h, g.param(p), true);
      h.bf16Grad = false; // fp32 gradients and their casts (else each is written in bf16)
    }
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

Deno.test("autograd: add hands its gradient to both inputs uncopied; a later writer into one copies it first", () => {
  // z = (a + b) + c, a = tanh(pa), b = tanh(pb), c = a * pc recorded between b and a + b:
  // backward shares dz among a + b and c, then among a and b; c's backward then adds into a's
  // gradient while b's producer has yet to read the shared values, so a must get its own copy
  // first (else b's gradient would carry pc too)
  const n = 5, rng = new Rng(3);
  const build = (be: ReturnType<typeof backend>, withC: boolean) => {
    const g = new Graph(be);
    const ps = ["pa", "pb", "pc"].map((name) =>
      new Param(be, name, be.upload(rng.uniform(n), [n]))
    );
    const [a, b] = [g.tanh(g.param(ps[0])), g.tanh(g.param(ps[1]))];
    const c = withC ? g.mul(a, g.param(ps[2])) : null;
    const y = g.add(a, b);
    const z = c ? g.add(y, c) : y;
    g.grad(z); // zeros, then ones written below
    be.k.mn_fill(g.grad(z), 1, n, be.stream);
    return { g, ps };
  };
  const be = backend("cpu");
  const { g, ps } = build(be, true);
  g.backward();
  const [pa, pb, pc] = ps.map((p) => be.downloadF32(p.data));
  const [ga, gb, gc] = ps.map((p) => be.downloadF32(p.grad));
  g.release();
  for (let i = 0; i < n; i++) {
    const [ta, tb] = [Math.tanh(pa[i]), Math.tanh(pb[i])];
    assert.ok(Math.abs(ga[i] - (1 + pc[i]) * (1 - ta * ta)) < 1e-6, `pa.grad[${i}]`);
    assert.ok(Math.abs(gb[i] - (1 - tb * tb)) < 1e-6, `pb.grad[${i}]`);
    assert.ok(Math.abs(gc[i] - ta) < 1e-6, `pc.grad[${i}]`);
  }
  // the copies backward makes (dry backend: calls recorded, not run): none when nothing writes
  // into a shared gradient, one when c's backward does
  for (const [withC, copies] of [[false, 0], [true, 1]] as const) {
    const dry = backend("dry");
    const { g } = build(dry, withC);
    const before = dry.trace!.events.length;
    g.backward();
    const memcpy = dry.trace!.functions.indexOf("mn_memcpy_d2d");
    const made = dry.trace!.events.slice(before).filter((e) => "c" in e && e.c === memcpy);
    assert.equal(made.length, copies, `copies with c: ${withC}`);
    g.release();
  }
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

Deno.test("autograd: a matmul writes the gradient of a matmul output it alone reads in bf16, same bits, no cast (cpu, emu)", () => {
  // (x @ w1) @ w2, a LoRA without activation: the outer matmul's backward writes d(x @ w1) in
  // bf16 (one rounding of the GEMM's fp32 result, as the cast was) and the inner one reads it as
  // its operand; with the inner output's bf16Grad cleared (the old path) the same parameter
  // gradients come from an fp32 gradient and one cast more. Also read by an add, the inner
  // output's gradient has two writers and stays fp32.
  for (const name of ["cpu", "emu"] as const) {
    const be = backend(name), rng = new Rng(11);
    const [N, C, D] = [6, 40, 8];
    const X = new Param(be, "x", be.upload(rng.normal(N * C), [N, C]));
    const W1 = new Param(be, "w1", be.upload(rng.normal(C * D, 0.3), [C, D]));
    const W2 = new Param(be, "w2", be.upload(rng.normal(D * D, 0.3), [D, D]));
    const dy = be.upload(rng.normal(N * D), [N, D]);
    const run = (bf16Grad: boolean, addToo: boolean) => {
      let casts = 0;
      const inner = be.k.mn_cast_f32_to_bf16;
      be.k.mn_cast_f32_to_bf16 = (...a) => (casts++, inner(...a));
      try {
        const g = new Graph(be);
        for (const p of [X, W1, W2]) p.zeroGrad();
        const h = g.matmul(g.param(X), g.param(W1));
        h.bf16Grad = bf16Grad;
        const y0 = g.matmul(h, g.param(W2));
        const y = addToo ? g.add(y0, h) : y0;
        be.k.mn_memcpy_d2d(g.grad(y), dy.ptr, BigInt(dy.nbytes), be.stream);
        const before = casts;
        g.backward();
        g.release();
        return { grads: [X, W1, W2].map((p) => be.downloadF32(p.grad)), casts: casts - before };
      } finally {
        be.k.mn_cast_f32_to_bf16 = inner;
      }
    };
    const [now, old] = [run(true, false), run(false, false)];
    now.grads.forEach((v, i) => {
      assert.ok(v.some((e) => e !== 0), `${name}: gradient ${i} is all zero`);
      assert.deepEqual(v, old.grads[i], `${name}: gradient ${i} (x, w1, w2)`);
    });
    assert.equal(old.casts - now.casts, 1, `${name}: d(x @ w1)'s cast`);
    const [two, twoOld] = [run(true, true), run(false, true)];
    assert.equal(two.casts, twoOld.casts, `${name}: two writers: fp32 and the cast`);
    two.grads.forEach((v, i) => assert.deepEqual(v, twoOld.grads[i], `${name}: two writers ${i}`));
  }
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

// Graph.matmulShared against one Graph.matmul per weight on the same values: outputs, the
// input's gradient (through tanh, so it is an activation gradient from the pool) and each
// weight's. The input has a second consumer recorded before the op ("first write": the op's dx
// GEMM overwrites the stale pool buffer) or after it ("added": it adds); parameter gradients start
// nonzero (they add); one output may get no gradient, or a bf16 one (a gradSinksBf16 writer), and
// two may be bf16 outputs (outBf16). The step runs twice on one graph: stale pool buffers must not
// change a bit.
Deno.test("autograd: matmulShared (one GEMM over concatenated weights) equals separate matmuls (cpu, emu; bf16, f32)", () => {
  const [B, T, K] = [2, 9, 24], widths = [8, 3, 5];
  const variants = [
    "first write",
    "added",
    "unused output",
    "bf16 gradient",
    "bf16 outputs",
  ] as const;
  for (const name of ["cpu", "emu"] as const) {
    for (const precision of ["bf16", "f32"] as const) {
      for (const variant of variants) {
        if (variant === "bf16 gradient" && precision === "f32") continue; // bf16 path only
        const be = backend(name), rng = new Rng(11);
        const up = (a: Float32Array | Uint16Array, shape: number[], dt?: "bf16") =>
          be.upload(a, shape, dt);
        const param = (n: string, shape: number[], std: number) =>
          new Param(be, n, up(rng.normal(shape.reduce((a, b) => a * b), std), shape));
        const xp = param("x", [B, T, K], 1), q = param("q", [K, 4], 0.3);
        const ws = widths.map((D, j) => param(`w${j}`, [K, D], 0.3));
        const params = [xp, q, ...ws];
        const gInit = params.map((p) => rng.normal(p.numel));
        const dys = widths.map((D) => rng.normal(B * T * D));
        const dq = rng.normal(B * T * 4);
        const run = (shared: boolean) => {
          const g = new Graph(be);
          g.precision = precision;
          let gemms = 0;
          const k = be.k as Record<string, unknown>;
          const saved = ["mn_gemm_bf16", "mn_gemm_f32"].map((f) => [f, k[f]] as const);
          for (const [f, inner] of saved) {
            k[f] = (...a: unknown[]) => (gemms++, (inner as (...a: unknown[]) => number)(...a));
          }
          const step = () => {
            params.forEach((p, i) =>
              be.k.mn_memcpy_h2d(p.grad.ptr, gInit[i], BigInt(p.grad.nbytes), be.stream)
            );
            const x = g.tanh(g.param(xp));
            const other = () => g.matmul(x, g.param(q));
            const before = variant === "added" ? null : other();
            const g0 = gemms;
            const wv = ws.map((p) => g.param(p));
            // "bf16 outputs": y_1, y_2 bf16 on the bf16 path (matmul's outBf16 the reference)
            const ob = widths.map((_, j) => variant === "bf16 outputs" && j > 0);
            const ys = shared
              ? g.matmulShared(x, wv, ob)
              : wv.map((w, j) => g.matmul(x, w, false, ob[j]));
            ys.forEach((y, j) => {
              const dt = ob[j] && precision === "bf16" ? "bf16" : "f32";
              assert.equal(y.t.dtype, dt, `${name} ${precision} ${variant}: y${j}`);
            });
            const fwdGemms = gemms - g0;
            const after = variant === "added" ? other() : null;
            (before ?? after)!.g = up(dq, [B, T, 4]);
            ys.forEach((y, j) => {
              if (variant === "unused output" && j === 1) return;
              const d = dys[j];
              if (variant === "bf16 gradient" && j === 0) {
                y.g = shared
                  ? up(f32ToBf16(d), y.shape.slice(), "bf16")
                  : up(bf16ToF32(f32ToBf16(d)), y.shape.slice());
              } else y.g = up(d, y.shape.slice());
            });
            const ys0 = ys.map((y) => be.downloadF32(y.t));
            const g1 = gemms;
            g.backward();
            const bwdGemms = gemms - g1;
            const out = {
              ys: ys0,
              grads: params.map((p) => be.downloadF32(p.grad)),
              fwdGemms,
              bwdGemms,
            };
            g.release();
            return out;
          };
          const first = step(), second = step();
          assert.deepEqual(
            second,
            first,
            `${name} ${precision} ${variant}: a second step on stale buffers`,
          );
          for (const [f, inner] of saved) k[f] = inner;
          return { ...first, memsets: g.gradMemsets };
        };
        const want = run(false), got = run(true);
        const what = `${name} ${precision} ${variant}`;
        assert.equal(got.fwdGemms, 1, `${what}: forward GEMMs`);
        assert.equal(got.bwdGemms, 2 + 2, `${what}: backward GEMMs (dx, dW; and q's matmul)`);
        assert.equal(want.bwdGemms, 2 * widths.length - (variant === "unused output" ? 2 : 0) + 2);
        // an unused output's gradient is a zeroed block (one counted memset, each step)
        assert.equal(got.memsets, variant === "unused output" ? 2 : 0, `${what}: memsets`);
        const tol = { atol: 1e-5, rtol: 1e-5 }; // fp32 sums in another order (dx: over 16 columns)
        // a bf16 output: the same rounding of fp32 sums that may differ in the last bit
        const tolY = (j: number) =>
          variant === "bf16 outputs" && j > 0 && precision === "bf16" ? TOL_BF16 : tol;
        want.ys.forEach((y, j) => compare(`${what}: y${j}`, got.ys[j], y, tolY(j)));
        want.grads.forEach((gw, i) => {
          compare(`${what}: ${params[i].name}.grad`, got.grads[i], gw, tol);
          const unused = variant === "unused output" && params[i] === ws[1]; // adds zeros
          assert.equal(
            gw.some((v, k) => v !== gInit[i][k]),
            !unused,
            `${what}: ${params[i].name} got a gradient`,
          );
        });
        for (const p of params) {
          be.free(p.data);
          be.free(p.grad);
        }
      }
    }
  }
});
