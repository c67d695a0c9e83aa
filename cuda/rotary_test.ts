// Rotary embedding (cuda/rotary.cu, cuda/cpu/rotary.cpp): forward and accumulating backward.
//
// Error model: the rotation itself is two products and one sum per output in fp32 (~1e-7 relative
// to |x1| + |x2|). The cos/sin table is computed in fp32 (powf, cosf, sinf) and rounded to bf16 as
// the original does; two implementations whose libm results differ in the last fp32 bit can round
// a table entry to neighbouring bf16 values (one bf16 ulp <= 2^-8 for |c|, |s| <= 1), which moves
// an output by at most 2^-8 (|x1| + |x2|). So each output pair is checked per element against
//   |got - want| <= rel * (|x1| + |x2|),
// with rel = 2^-20 where both sides use the same libm (emu vs cpu on this machine, both glibc) and
// rel = 2^-8 + 2^-20 where they need not (cuda's cosf vs glibc, the TS float64 reference), plus a
// count: at most 1% of the pairs may exceed the tight bound (table flips are rare).
import assert from "node:assert/strict";
import { type Backend, bf16ToF32, f32ToBf16 } from "./backend.ts";
import { backend, numericalGrad, Rng, SEED, targets, withTensors } from "./test/harness.ts";

interface Shape {
  B: number;
  T: number;
  H: number;
  D: number;
}
const SHAPES: Shape[] = [
  { B: 1, T: 5, H: 1, D: 2 },
  { B: 2, T: 33, H: 3, D: 16 }, // 1584 pairs: not a multiple of the 256-thread block
  { B: 1, T: 300, H: 2, D: 128 }, // positions up to 299 with the model's head size
];
const TIGHT = 2 ** -20, FLIP = 2 ** -8 + 2 ** -20;
const numel = (s: Shape) => s.B * s.T * s.H * s.D;
const label = (s: Shape) => `(B=${s.B},T=${s.T},H=${s.H},D=${s.D})`;

/** The table as the original computes it: fp32 arithmetic, cos/sin rounded to bf16. */
const tables = new Map<string, { c: Float64Array; s: Float64Array }>();
function table(T: number, D: number): { c: Float64Array; s: Float64Array } {
  const key = `${T},${D}`;
  if (!tables.has(key)) tables.set(key, makeTable(T, D));
  return tables.get(key)!;
}
function makeTable(T: number, D: number): { c: Float64Array; s: Float64Array } {
  const half = D / 2, f = Math.fround;
  const c = new Float64Array(T * half), s = new Float64Array(T * half);
  for (let i = 0; i < half; i++) {
    const inv = f(1 / f(Math.pow(10000, f(f(2 * i) / D))));
    for (let t = 0; t < T; t++) {
      const fr = f(t * inv);
      const rb = (x: number) => bf16ToF32(f32ToBf16(new Float32Array([x])))[0];
      c[t * half + i] = rb(Math.cos(fr));
      s[t * half + i] = rb(Math.sin(fr));
    }
  }
  return { c, s };
}

/** float64 forward (transpose = backward's map) with the table above */
function rope64(x: ArrayLike<number>, sh: Shape, transpose = false): Float64Array {
  const { T, D } = sh, half = D / 2, rows = numel(sh) / D, H = sh.H;
  const { c, s } = table(T, D);
  const y = new Float64Array(x.length);
  for (let r = 0; r < rows; r++) {
    const t = Math.floor(r / H) % T;
    for (let i = 0; i < half; i++) {
      const a = x[r * D + i], b = x[r * D + i + half];
      const cc = c[t * half + i], ss = s[t * half + i];
      y[r * D + i] = transpose ? a * cc - b * ss : a * cc + b * ss;
      y[r * D + i + half] = transpose ? a * ss + b * cc : -a * ss + b * cc;
    }
  }
  return y;
}

/** per-element check against rel * (|x1| + |x2|) of the pair; at most 1% of pairs above TIGHT */
function checkPairs(
  what: string,
  got: ArrayLike<number>,
  want: ArrayLike<number>,
  x: ArrayLike<number>,
  D: number,
  rel: number,
) {
  const half = D / 2;
  let loose = 0, worst = 0;
  for (let e = 0; e < got.length; e++) {
    const i = e % D, base = e - i, j = i % half;
    const scale = Math.abs(x[base + j]) + Math.abs(x[base + j + half]) + 1e-30;
    const err = Math.abs(got[e] - want[e]) / scale;
    if (!(err <= rel)) {
      throw new Error(
        `${what}: element ${e}: got ${got[e]}, want ${want[e]} (err ${
          err.toExponential(2)
        } x pair scale > ${rel.toExponential(2)}; MN_TEST_SEED=${SEED})`,
      );
    }
    if (err > TIGHT) loose++;
    worst = Math.max(worst, err);
  }
  assert.ok(loose <= 0.01 * got.length, `${what}: ${loose} of ${got.length} outputs beyond 2^-20`);
  return worst;
}

function run(be: Backend, sh: Shape, x: Float32Array, dy: Float32Array, init: Float32Array) {
  const { B, T, H, D } = sh, shp = [B, T, H, D];
  return withTensors(
    be,
    { x: { data: x, shape: shp }, dy: { data: dy, shape: shp } },
    { y: { shape: shp }, dx: { shape: shp, init } },
    (t) => {
      be.k.mn_rotary_forward(t.y.ptr, t.x.ptr, B, T, H, D, null);
      be.k.mn_rotary_backward(t.dx.ptr, t.dy.ptr, B, T, H, D, -1, null);
      be.k.mn_rotary_backward(t.dx.ptr, t.dy.ptr, B, T, H, D, -1, null); // accumulates twice
    },
  ) as Record<string, Float32Array>;
}

for (const tg of targets()) {
  const tname = tg.variant ? `${tg.name}-${tg.variant}` : tg.name;
  Deno.test({
    name: `rotary: ${tname} vs cpu, forward and accumulated backward`,
    ignore: !tg.run,
    fn() {
      const ref = backend("cpu"), be = backend(tg.name, tg.variant);
      const rel = tg.name === "cuda" ? FLIP : TIGHT;
      SHAPES.forEach((sh, ci) => {
        const rng = new Rng(SEED + ci);
        const n = numel(sh);
        const x = rng.normal(n), dy = rng.normal(n), init = rng.normal(n);
        const want = run(ref, sh, x, dy, init), got = run(be, sh, x, dy, init);
        checkPairs(`${label(sh)} y`, got.y, want.y, x, sh.D, rel);
        const dgot = got.dx.map((v, i) => v - init[i]), dwant = want.dx.map((v, i) => v - init[i]);
        checkPairs(`${label(sh)} dx`, dgot, dwant, dy, sh.D, rel + 2 ** -20);
      });
    },
  });
}

Deno.test("rotary: cpu forward matches the float64 math of the original's Rotary", () => {
  const be = backend("cpu");
  SHAPES.forEach((sh, ci) => {
    const rng = new Rng(SEED + 100 + ci);
    const n = numel(sh), x = rng.normal(n);
    const res = run(be, sh, x, new Float32Array(n), new Float32Array(n));
    checkPairs(`${label(sh)} y vs float64`, res.y, rope64(x, sh), x, sh.D, FLIP);
    // the rotation preserves each pair's norm up to the bf16 table (|c^2 + s^2 - 1| <= ~2^-7)
    let worst = 0;
    for (let e = 0; e < n; e += sh.D) {
      let a = 0, b = 0;
      for (let i = 0; i < sh.D; i++) (a += x[e + i] ** 2), (b += res.y[e + i] ** 2);
      worst = Math.max(worst, Math.abs(Math.sqrt(b / a) - 1));
    }
    assert.ok(worst < 2 ** -7, `${label(sh)}: norm changed by ${worst}`);
  });
  // position 0 is the identity: cos 0 = 1, sin 0 = 0
  const sh = { B: 1, T: 1, H: 2, D: 8 }, x = new Rng(SEED).normal(16);
  const res = run(be, sh, x, new Float32Array(16), new Float32Array(16));
  assert.deepEqual(Array.from(res.y), Array.from(x));
});

Deno.test("rotary: cpu backward vs float64 finite differences, += semantics", () => {
  const be = backend("cpu");
  for (const sh of SHAPES.slice(0, 2)) {
    const rng = new Rng(SEED + 200);
    const n = numel(sh), x = rng.normal(n), dy = rng.normal(n), init = rng.normal(n);
    const res = run(be, sh, x, dy, init);
    const fd = numericalGrad((z) => rope64(z, sh), Float64Array.from(x), dy, 1e-3);
    // the backward ran twice on top of init: dx = init + 2 * R^T dy
    const once = res.dx.map((v, i) => (v - init[i]) / 2);
    checkPairs(`${label(sh)} dx vs finite differences`, once, fd, dy, sh.D, FLIP + 2 ** -18);
  }
});

Deno.test("rotary: invalid arguments are one-line errors", () => {
  const be = backend("cpu");
  const emu = backend("emu");
  for (const b of [be, emu]) {
    const t = b.upload(new Float32Array(12), [12], "f32", "x");
    try {
      assert.throws(
        () => b.k.mn_rotary_forward(t.ptr, t.ptr, 1, 2, 2, 3, null),
        /D=3 must be even/,
      );
      assert.throws(
        () => b.k.mn_rotary_backward(t.ptr, t.ptr, 1, 0, 2, 2, -1, null),
        /must be positive/,
      );
    } finally {
      b.free(t);
    }
  }
});
