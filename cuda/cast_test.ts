import { bf16ToF32, f32ToBf16 } from "./backend.ts";
import { checkKernel, compare, EXACT, withTensors } from "./test/harness.ts";
import { backend } from "./test/harness.ts";

const sizes = [{ n: 1 }, { n: 255 }, { n: 1000 }, { n: 4097 }];

checkKernel({
  name: "cast_f32_to_bf16",
  configs: sizes,
  tol: EXACT,
  run(be, { n }, rng) {
    // Values across many binades, plus exact halfway cases that test round-to-nearest-even.
    const x = rng.normal(n, 100);
    for (let i = 0; i < n; i += 7) x[i] = 1 + (2 * (i % 3) + 1) * 2 ** -8;
    return withTensors(
      be,
      { x: { data: x, shape: [n] } },
      { y: { shape: [n], dtype: "bf16" } },
      (t) => {
        be.k.mn_cast_f32_to_bf16(t.y.ptr, t.x.ptr, t.x.n, be.stream);
      },
    );
  },
});

checkKernel({
  name: "cast_bf16_to_f32",
  configs: sizes,
  tol: EXACT,
  run(be, { n }, rng) {
    const x = f32ToBf16(rng.normal(n, 10));
    return withTensors(
      be,
      { x: { data: x, shape: [n], dtype: "bf16" } },
      { y: { shape: [n] } },
      (t) => {
        be.k.mn_cast_bf16_to_f32(t.y.ptr, t.x.ptr, t.x.n, be.stream);
      },
    );
  },
});

Deno.test("cast: cpu matches the host bf16 conversion (round to nearest even)", () => {
  const be = backend("cpu");
  const x = new Float32Array([1, 1 + 2 ** -8, 1 + 3 * 2 ** -8, -2.5, 65504, 1e-40, NaN, Infinity]);
  const res = withTensors(be, { x: { data: x, shape: [x.length] } }, {
    y: { shape: [x.length], dtype: "bf16" },
  }, (t) => be.k.mn_cast_f32_to_bf16(t.y.ptr, t.x.ptr, t.x.n, be.stream));
  compare("cast", res.y, bf16ToF32(f32ToBf16(x)), EXACT);
  // 1 + 2^-8 is a tie between 1 and 1 + 2^-7: even mantissa wins (1); 1 + 3*2^-8 rounds up.
  compare("ties", res.y.subarray(0, 3), [1, 1, 1 + 2 ** -6], EXACT);
});
