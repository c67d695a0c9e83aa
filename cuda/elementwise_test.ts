import assert from "node:assert/strict";
import {
  backend,
  checkKernel,
  compare,
  EXACT,
  f64,
  HAS_GPU,
  numericalGrad,
  Rng,
  type Tol,
  TOL_F32,
  VARIANT,
  withTensors,
} from "./test/harness.ts";

// 1, below a warp, odd, not a multiple of 256, a multiple, several passes of the 256-thread
// reduction block with a ragged tail; reductions also get one size above 16384, where the single
// reduction block has 1024 threads (slow to launch on emu, so only there).
// Under the sanitizers (10x slower emu) the sizes above 1024 are left out: the ragged edges are all
// in the smaller ones, and the 1024-thread block runs the same code as the 256-thread one.
const sizes = [{ n: 1 }, { n: 17 }, { n: 255 }, { n: 1000 }, { n: 1024 }, { n: 4097 }]
  .filter(({ n }) => !VARIANT || n <= 1024);
const BIG = VARIANT ? [] : [{ n: 20001 }];
const label = ({ n }: { n: number }) => `n=${n}`;

// Per-element results: one or two fp32 roundings; nvcc may contract a*x + b*y into an FMA (one
// rounding fewer than the reference), so fp32 tolerance rather than exact.
// Full sums (da, db, sum_squares): the kernel adds in fp32 in a tree order, the reference in
// double. Partial sums of sum(dout*x) reach |sum| ~ sqrt(n) ~ 141 here (ulp ~1.5e-5) through
// ~log2(threads) + n/threads roundings, so atol 1e-4; sums of squares ~ n: rtol 1e-5. Measured
// over 8 seeds at n = 4097 and 20001: at most 7% of this limit.
const TOL_SUM: Tol = { atol: 1e-4, rtol: 1e-5 };

/** values with some exactly 0 and some negative (relu2's kink and its zero side) */
function signed(rng: Rng, n: number): Float32Array {
  const x = rng.normal(n);
  for (let i = 0; i < n; i += 11) x[i] = 0;
  return x;
}

checkKernel({
  name: "relu2_forward",
  configs: sizes,
  label,
  tol: TOL_F32,
  run(be, { n }, rng) {
    return withTensors(
      be,
      { x: { data: signed(rng, n), shape: [n] } },
      { out: { shape: [n] } },
      (t) => {
        be.k.mn_relu2_forward(t.out.ptr, t.x.ptr, t.x.n, be.stream);
      },
    );
  },
});

checkKernel({
  name: "relu2_backward",
  configs: sizes,
  label,
  tol: TOL_F32,
  run(be, { n }, rng) {
    const x = signed(rng, n), dout = rng.normal(n), init = rng.normal(n);
    return withTensors(be, { x: { data: x, shape: [n] }, dout: { data: dout, shape: [n] } }, {
      dinp: { shape: [n], init },
    }, (t) => {
      be.k.mn_relu2_backward(t.dinp.ptr, t.dout.ptr, t.x.ptr, t.x.n, -1, be.stream);
      be.k.mn_relu2_backward(t.dinp.ptr, t.dout.ptr, t.x.ptr, t.x.n, -1, be.stream);
    });
  },
});

checkKernel({
  name: "axpby_forward",
  configs: sizes,
  label,
  tol: TOL_F32,
  run(be, { n }, rng) {
    const x = rng.normal(n), y = rng.normal(n), a = rng.normal(1), b = rng.normal(1);
    return withTensors(
      be,
      {
        x: { data: x, shape: [n] },
        y: { data: y, shape: [n] },
        a: { data: a, shape: [1] },
        b: { data: b, shape: [1] },
      },
      { out: { shape: [n] } },
      (t) => {
        be.k.mn_axpby_forward(t.out.ptr, t.x.ptr, t.y.ptr, t.a.ptr, t.b.ptr, t.x.n, be.stream);
      },
    );
  },
});

// Every subset of {dx, dy, da, db} (NULL for the others) over the sizes; grads start non-zero and
// backward runs twice (+= semantics). Outputs left NULL are not allocated at all.
const GRADS = ["dx", "dy", "da", "db"] as const;
const axpbyConfigs = [
  ...sizes.map(({ n }) => ({ n, mask: 15 })),
  ...[1, 2, 4, 8, 3, 12, 5, 10].map((mask) => ({ n: 17, mask })),
  ...(VARIANT ? [] : [3, 4, 8].map((mask) => ({ n: 4097, mask }))),
  ...BIG.map(({ n }) => ({ n, mask: 15 })),
];
checkKernel({
  name: "axpby_backward",
  configs: axpbyConfigs,
  label: ({ n, mask }) => `n=${n} grads=${GRADS.filter((_, k) => mask & (1 << k)).join(",")}`,
  tol: { dx: TOL_F32, dy: TOL_F32, da: TOL_SUM, db: TOL_SUM },
  run(be, { n, mask }, rng) {
    const x = rng.normal(n),
      y = rng.normal(n),
      dout = rng.normal(n),
      a = rng.normal(1),
      b = rng.normal(1);
    const outs: Record<string, { shape: number[]; init: Float32Array }> = {};
    GRADS.forEach((g, k) => {
      const len = g === "dx" || g === "dy" ? n : 1;
      const init = rng.normal(len);
      if (mask & (1 << k)) outs[g] = { shape: [len], init };
    });
    return withTensors(
      be,
      {
        x: { data: x, shape: [n] },
        y: { data: y, shape: [n] },
        dout: { data: dout, shape: [n] },
        a: { data: a, shape: [1] },
        b: { data: b, shape: [1] },
      },
      outs,
      (t) => {
        const p = (g: string) => t[g]?.ptr ?? null;
        for (let rep = 0; rep < 2; rep++) {
          be.k.mn_axpby_backward(
            p("dx"),
            p("dy"),
            p("da"),
            p("db"),
            t.dout.ptr,
            t.x.ptr,
            t.y.ptr,
            t.a.ptr,
            t.b.ptr,
            t.x.n,
            -1,
            be.stream,
          );
        }
      },
    );
  },
});

checkKernel({
  name: "add",
  configs: sizes,
  label,
  tol: EXACT, // one rounding of the same operands everywhere
  run(be, { n }, rng) {
    return withTensors(be, {
      x: { data: rng.normal(n), shape: [n] },
      y: { data: rng.normal(n), shape: [n] },
    }, {
      out: { shape: [n] },
    }, (t) => be.k.mn_add(t.out.ptr, t.x.ptr, t.y.ptr, t.x.n, be.stream));
  },
});

checkKernel({
  name: "axpy",
  configs: sizes,
  label,
  tol: TOL_F32, // FMA on cuda
  run(be, { n }, rng) {
    const alpha = rng.normal(1)[0];
    return withTensors(be, { x: { data: rng.normal(n), shape: [n] } }, {
      y: { shape: [n], init: rng.normal(n) },
    }, (t) => {
      be.k.mn_axpy(t.y.ptr, alpha, t.x.ptr, t.x.n, be.stream);
    });
  },
});

checkKernel({
  name: "scale",
  configs: sizes,
  label,
  tol: EXACT, // one rounding of the same product everywhere
  run(be, { n }, rng) {
    const alpha = rng.normal(1)[0];
    return withTensors(
      be,
      { x: { data: rng.normal(n), shape: [n] } },
      { out: { shape: [n] } },
      (t) => {
        be.k.mn_scale(t.out.ptr, t.x.ptr, alpha, t.x.n, be.stream);
      },
    );
  },
});

checkKernel({
  name: "fill",
  configs: sizes,
  label,
  tol: EXACT,
  run(be, { n }, rng) {
    const v = rng.normal(1)[0];
    return withTensors(
      be,
      {},
      { out: { shape: [n] } },
      (t) => be.k.mn_fill(t.out.ptr, v, BigInt(n), be.stream),
    );
  },
});

checkKernel({
  name: "sum_squares",
  configs: [...sizes, ...BIG],
  label,
  tol: TOL_SUM,
  run(be, { n }, rng) {
    // out starts non-zero: sum_squares writes, it does not accumulate
    return withTensors(be, { x: { data: rng.normal(n), shape: [n] } }, {
      out: { shape: [1], init: new Float32Array([123]) },
    }, (t) => {
      be.k.mn_sum_squares(t.out.ptr, t.x.ptr, t.x.n, be.stream);
    });
  },
});

// ---- cpu reference vs float64 definitions and finite differences
const TOL_GRAD: Tol = { atol: 1e-5, rtol: 1e-5 }; // fp32 rounding of O(1..10) values; h^2 ~ 1e-12
const sub = (a: ArrayLike<number>, b: ArrayLike<number>) =>
  Float64Array.from(a, (v, i) => v - b[i]);

Deno.test("relu2: cpu matches float64 forward and finite-difference gradient (accumulating)", () => {
  const be = backend("cpu");
  const n = 50, rng = new Rng(3);
  const x = rng.normal(n), dout = rng.normal(n), init = rng.normal(n);
  for (let i = 0; i < n; i++) if (Math.abs(x[i]) < 1e-3) x[i] = 0.5; // away from the kink
  const relu2 = (v: Float64Array) => v.map((e) => (e > 0 ? e * e : 0));
  const r = withTensors(be, { x: { data: x, shape: [n] }, dout: { data: dout, shape: [n] } }, {
    out: { shape: [n] },
    dinp: { shape: [n], init },
  }, (t) => {
    be.k.mn_relu2_forward(t.out.ptr, t.x.ptr, t.x.n, be.stream);
    be.k.mn_relu2_backward(t.dinp.ptr, t.dout.ptr, t.x.ptr, t.x.n, -1, be.stream);
  });
  compare("forward", r.out, relu2(f64(x)), TOL_F32);
  compare("dinp", sub(r.dinp, init), numericalGrad(relu2, f64(x), dout), TOL_GRAD);
  // at x = 0 exactly the gradient is 0 (torch: relu'(0) = 0)
  const z = withTensors(be, {
    x: { data: new Float32Array([0, -1]), shape: [2] },
    d: { data: new Float32Array([5, 5]), shape: [2] },
  }, {
    dinp: { shape: [2], init: new Float32Array([1, 1]) },
  }, (t) => be.k.mn_relu2_backward(t.dinp.ptr, t.d.ptr, t.x.ptr, 2n, -1, be.stream));
  compare("kink", z.dinp, [1, 1], EXACT);
});

Deno.test("axpby: cpu matches float64 forward and finite-difference gradients (accumulating)", () => {
  const be = backend("cpu");
  const n = 40, rng = new Rng(4);
  const x = rng.normal(n),
    y = rng.normal(n),
    dout = rng.normal(n),
    a = rng.normal(1),
    b = rng.normal(1);
  const init = { dx: rng.normal(n), dy: rng.normal(n), da: rng.normal(1), db: rng.normal(1) };
  const r = withTensors(be, {
    x: { data: x, shape: [n] },
    y: { data: y, shape: [n] },
    dout: { data: dout, shape: [n] },
    a: { data: a, shape: [1] },
    b: { data: b, shape: [1] },
  }, {
    out: { shape: [n] },
    dx: { shape: [n], init: init.dx },
    dy: { shape: [n], init: init.dy },
    da: { shape: [1], init: init.da },
    db: { shape: [1], init: init.db },
  }, (t) => {
    be.k.mn_axpby_forward(t.out.ptr, t.x.ptr, t.y.ptr, t.a.ptr, t.b.ptr, t.x.n, be.stream);
    be.k.mn_axpby_backward(
      t.dx.ptr,
      t.dy.ptr,
      t.da.ptr,
      t.db.ptr,
      t.dout.ptr,
      t.x.ptr,
      t.y.ptr,
      t.a.ptr,
      t.b.ptr,
      t.x.n,
      -1,
      be.stream,
    );
  });
  const f = (X: Float64Array, Y: Float64Array, A: number, B: number) =>
    X.map((v, i) => A * v + B * Y[i]);
  const [X, Y] = [f64(x), f64(y)];
  compare("forward", r.out, f(X, Y, a[0], b[0]), TOL_F32);
  compare("dx", sub(r.dx, init.dx), numericalGrad((v) => f(v, Y, a[0], b[0]), X, dout), TOL_GRAD);
  compare("dy", sub(r.dy, init.dy), numericalGrad((v) => f(X, v, a[0], b[0]), Y, dout), TOL_GRAD);
  compare(
    "da",
    sub(r.da, init.da),
    numericalGrad((v) => f(X, Y, v[0], b[0]), f64(a), dout),
    TOL_GRAD,
  );
  compare(
    "db",
    sub(r.db, init.db),
    numericalGrad((v) => f(X, Y, a[0], v[0]), f64(b), dout),
    TOL_GRAD,
  );
});

Deno.test("elementwise: cpu add/axpy/scale/fill/sum_squares match their float64 definitions", () => {
  const be = backend("cpu");
  const n = 300, rng = new Rng(5);
  const x = rng.normal(n), y = rng.normal(n), y0 = rng.normal(n);
  const r = withTensors(be, { x: { data: x, shape: [n] }, y: { data: y, shape: [n] } }, {
    add: { shape: [n] },
    axpy: { shape: [n], init: y0 },
    scale: { shape: [n] },
    fill: { shape: [n] },
    ss: { shape: [1] },
  }, (t) => {
    be.k.mn_add(t.add.ptr, t.x.ptr, t.y.ptr, t.x.n, be.stream);
    be.k.mn_axpy(t.axpy.ptr, 0.75, t.x.ptr, t.x.n, be.stream);
    be.k.mn_scale(t.scale.ptr, t.x.ptr, -3.5, t.x.n, be.stream);
    be.k.mn_fill(t.fill.ptr, 2.25, t.x.n, be.stream);
    be.k.mn_sum_squares(t.ss.ptr, t.x.ptr, t.x.n, be.stream);
  });
  compare("add", r.add, f64(x).map((v, i) => v + y[i]), TOL_F32);
  compare("axpy", r.axpy, f64(y0).map((v, i) => v + 0.75 * x[i]), TOL_F32);
  compare("scale", r.scale, f64(x).map((v) => -3.5 * v), TOL_F32);
  compare("fill", r.fill, new Float64Array(n).fill(2.25), EXACT);
  compare("sum_squares", r.ss, [f64(x).reduce((s, v) => s + v * v, 0)], TOL_F32);
});

Deno.test("elementwise: NULL pointers and non-positive sizes are clear errors", () => {
  for (const name of ["cpu", "emu"] as const) {
    const be = backend(name);
    const a = be.zeros([4]), b = be.zeros([4]), s = be.zeros([1]);
    const k = be.k, st = be.stream;
    try {
      const cases: [() => void, RegExp][] = [
        [
          () => k.mn_relu2_forward(null, a.ptr, 4n, st),
          /mn_relu2_forward .*relu2_forward: NULL pointer/,
        ],
        [
          () => k.mn_relu2_forward(a.ptr, b.ptr, 0n, st),
          /mn_relu2_forward .*relu2_forward: n = 0 must be > 0/,
        ],
        [
          () => k.mn_relu2_backward(a.ptr, b.ptr, null, 4n, -1, st),
          /mn_relu2_backward .*NULL pointer/,
        ],
        [
          () => k.mn_relu2_backward(a.ptr, b.ptr, b.ptr, -2n, -1, st),
          /mn_relu2_backward .*n = -2 must be > 0/,
        ],
        [
          () => k.mn_axpby_forward(a.ptr, a.ptr, b.ptr, s.ptr, null, 4n, st),
          /mn_axpby_forward .*NULL pointer/,
        ],
        [
          () => k.mn_axpby_forward(a.ptr, a.ptr, b.ptr, s.ptr, s.ptr, 0n, st),
          /mn_axpby_forward .*n = 0/,
        ],
        [
          () =>
            k.mn_axpby_backward(
              a.ptr,
              null,
              null,
              null,
              null,
              a.ptr,
              b.ptr,
              s.ptr,
              s.ptr,
              4n,
              -1,
              st,
            ),
          /mn_axpby_backward .*NULL pointer/,
        ],
        [
          () =>
            k.mn_axpby_backward(
              a.ptr,
              null,
              null,
              null,
              b.ptr,
              a.ptr,
              b.ptr,
              null,
              s.ptr,
              4n,
              -1,
              st,
            ),
          /mn_axpby_backward .*dx given but a is NULL/,
        ],
        [
          () =>
            k.mn_axpby_backward(
              null,
              a.ptr,
              null,
              null,
              b.ptr,
              a.ptr,
              b.ptr,
              s.ptr,
              null,
              4n,
              -1,
              st,
            ),
          /dy given but b is NULL/,
        ],
        [
          () =>
            k.mn_axpby_backward(
              null,
              null,
              s.ptr,
              null,
              b.ptr,
              null,
              b.ptr,
              s.ptr,
              s.ptr,
              4n,
              -1,
              st,
            ),
          /da given but x is NULL/,
        ],
        [
          () =>
            k.mn_axpby_backward(
              null,
              null,
              null,
              s.ptr,
              b.ptr,
              a.ptr,
              null,
              s.ptr,
              s.ptr,
              4n,
              -1,
              st,
            ),
          /db given but y is NULL/,
        ],
        [
          () =>
            k.mn_axpby_backward(
              a.ptr,
              null,
              null,
              null,
              b.ptr,
              a.ptr,
              b.ptr,
              s.ptr,
              s.ptr,
              -1n,
              -1,
              st,
            ),
          /mn_axpby_backward .*n = -1/,
        ],
        [() => k.mn_add(a.ptr, null, b.ptr, 4n, st), /mn_add .*add: NULL pointer/],
        [() => k.mn_add(a.ptr, a.ptr, b.ptr, 0n, st), /mn_add .*add: n = 0/],
        [() => k.mn_axpy(null, 1, a.ptr, 4n, st), /mn_axpy .*axpy: NULL pointer/],
        [() => k.mn_axpy(a.ptr, 1, b.ptr, 0n, st), /mn_axpy .*axpy: n = 0/],
        [() => k.mn_scale(a.ptr, null, 2, 4n, st), /mn_scale .*scale: NULL pointer/],
        [() => k.mn_scale(a.ptr, b.ptr, 2, -4n, st), /mn_scale .*scale: n = -4/],
        [() => k.mn_fill(null, 1, 4n, st), /mn_fill .*fill: NULL pointer/],
        [() => k.mn_fill(a.ptr, 1, 0n, st), /mn_fill .*fill: n = 0/],
        [() => k.mn_sum_squares(null, a.ptr, 4n, st), /mn_sum_squares .*sum_squares: NULL pointer/],
        [() => k.mn_sum_squares(s.ptr, a.ptr, 0n, st), /mn_sum_squares .*sum_squares: n = 0/],
      ];
      for (const [fn, re] of cases) assert.throws(fn, re, `${name}: ${re}`);
      // all four gradients NULL is a valid no-op
      k.mn_axpby_backward(null, null, null, null, b.ptr, null, null, null, null, 4n, -1, st);
    } finally {
      for (const t of [a, b, s]) be.free(t);
    }
  }
});

Deno.test({
  name: "elementwise: cuda reductions are bit-identical run to run",
  ignore: !HAS_GPU,
  fn() {
    const be = backend("cuda");
    const n = 1 << 22, rng = new Rng(9);
    const x = rng.normal(n), y = rng.normal(n), dout = rng.normal(n), ab = rng.normal(2);
    const runOnce = () =>
      withTensors(be, {
        x: { data: x, shape: [n] },
        y: { data: y, shape: [n] },
        dout: { data: dout, shape: [n] },
        ab: { data: ab, shape: [2] },
      }, {
        ss: { shape: [1] },
        da: { shape: [1], init: new Float32Array(1) },
        db: { shape: [1], init: new Float32Array(1) },
      }, (t) => {
        const b = t.ab.rows(1, 1).ptr;
        be.k.mn_sum_squares(t.ss.ptr, t.x.ptr, t.x.n, be.stream);
        be.k.mn_axpby_backward(
          null,
          null,
          t.da.ptr,
          t.db.ptr,
          t.dout.ptr,
          t.x.ptr,
          t.y.ptr,
          t.ab.ptr,
          b,
          t.x.n,
          -1,
          be.stream,
        );
        be.sync();
      });
    const r1 = runOnce(), r2 = runOnce();
    for (const key of Object.keys(r1)) compare(`run-to-run ${key}`, r2[key], r1[key], EXACT);
    compare("sum_squares vs float64", r1.ss, [f64(x).reduce((s, v) => s + v * v, 0)], {
      atol: 0,
      rtol: 1e-4,
    });
  },
});
