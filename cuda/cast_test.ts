import { bf16ToF32, f32ToBf16 } from "./backend.ts";
import assert from "node:assert/strict";
import { checkKernel, compare, EXACT, Rng, withTensors } from "./test/harness.ts";
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

// mn_copy_columns, as Graph.matmulShared uses it: a block of `cols` columns of an ld_src-wide
// matrix into an ld_dst-wide one, every dtype pair, overwritten and added (fp32 dst). The dst is
// wider than the block (or starts inside it): its other columns stay poisoned on both backends,
// so a write outside the block fails the comparison as much as a missed one.
type CopyCase = {
  rows: number;
  cols: number;
  ldSrc: number;
  ldDst: number;
  srcOff: number;
  dstOff: number;
  src: "f32" | "bf16";
  dst: "f32" | "bf16";
  acc: 0 | 1;
};
const copyCases: CopyCase[] = [
  // a GEMM's [N, 96] output split (the second block: offset 64)
  {
    rows: 300,
    cols: 17,
    ldSrc: 97,
    ldDst: 17,
    srcOff: 64,
    dstOff: 0,
    src: "f32",
    dst: "f32",
    acc: 0,
  },
  // output gradients gathered as the bf16 operand
  {
    rows: 257,
    cols: 16,
    ldSrc: 16,
    ldDst: 48,
    srcOff: 0,
    dstOff: 16,
    src: "f32",
    dst: "bf16",
    acc: 0,
  },
  {
    rows: 257,
    cols: 16,
    ldSrc: 16,
    ldDst: 48,
    srcOff: 0,
    dstOff: 32,
    src: "bf16",
    dst: "bf16",
    acc: 0,
  },
  // a parameter gradient's block of the concatenated dW, added
  {
    rows: 33,
    cols: 64,
    ldSrc: 96,
    ldDst: 64,
    srcOff: 16,
    dstOff: 0,
    src: "f32",
    dst: "f32",
    acc: 1,
  },
  { rows: 33, cols: 7, ldSrc: 9, ldDst: 11, srcOff: 2, dstOff: 3, src: "bf16", dst: "f32", acc: 1 },
  {
    rows: 1,
    cols: 1000,
    ldSrc: 1000,
    ldDst: 1001,
    srcOff: 0,
    dstOff: 1,
    src: "bf16",
    dst: "f32",
    acc: 0,
  },
];

checkKernel({
  name: "copy_columns",
  configs: copyCases,
  tol: EXACT,
  label: (c) => `${c.rows}x${c.cols} ${c.src}->${c.dst} acc ${c.acc}`,
  run(be, c, rng) {
    const srcLen = c.rows * c.ldSrc, dstLen = c.rows * c.ldDst;
    const x = rng.normal(srcLen, 3);
    const src = c.src === "bf16" ? f32ToBf16(x) : x;
    // an added-into dst holds values outside the block too; an overwritten one is poisoned
    const init = c.acc ? rng.normal(dstLen) : undefined;
    return withTensors(
      be,
      { x: { data: src, shape: [srcLen], dtype: c.src } },
      { y: { shape: [dstLen], dtype: c.dst, init } },
      (t) => {
        const at = (p: Deno.PointerValue, elems: number, dt: string) =>
          Deno.UnsafePointer.offset(p as Deno.PointerObject, elems * (dt === "bf16" ? 2 : 4));
        be.k.mn_copy_columns(
          at(t.y.ptr, c.dstOff, c.dst),
          c.ldDst,
          c.dst === "bf16" ? 1 : 0,
          at(t.x.ptr, c.srcOff, c.src),
          c.ldSrc,
          c.src === "bf16" ? 1 : 0,
          c.rows,
          c.cols,
          c.acc,
          be.stream,
        );
      },
    );
  },
});

Deno.test("copy_columns: cpu writes exactly the block (its values, its rounding), and refuses bad calls", () => {
  const be = backend("cpu"), rng = new Rng(3);
  const [rows, cols, ldSrc, ldDst] = [5, 3, 7, 4];
  const x = rng.normal(rows * ldSrc), old = rng.normal(rows * ldDst);
  const run = (dst: "f32" | "bf16", acc: number) =>
    withTensors(
      be,
      { x: { data: x, shape: [rows * ldSrc] } },
      {
        y: { shape: [rows * ldDst], dtype: dst, init: dst === "f32" ? old : f32ToBf16(old) },
      },
      (t) =>
        be.k.mn_copy_columns(
          t.y.ptr,
          ldDst,
          dst === "bf16" ? 1 : 0,
          t.x.ptr,
          ldSrc,
          0,
          rows,
          cols,
          acc,
          be.stream,
        ),
    ).y;
  const want = (f: (o: number, v: number) => number, base: Float32Array) =>
    base.map((o, i) => {
      const [r, c] = [Math.floor(i / ldDst), i % ldDst];
      return c < cols ? f(o, x[r * ldSrc + c]) : o;
    });
  compare("overwrite", run("f32", 0), want((_, v) => v, old), EXACT);
  compare("add", run("f32", 1), want((o, v) => Math.fround(o + v), old), EXACT);
  const oldBf16 = bf16ToF32(f32ToBf16(old));
  compare(
    "bf16",
    run("bf16", 0),
    want((_, v) => bf16ToF32(f32ToBf16(Float32Array.of(v)))[0], oldBf16),
    EXACT,
  );
  for (const name of ["cpu", "emu"] as const) {
    const b = backend(name), t = b.alloc([64], "f32"), u = b.alloc([64], "f32");
    try {
      const call = (ldd: number, db: number, acc: number) => () =>
        b.k.mn_copy_columns(t.ptr, ldd, db, u.ptr, 8, 0, 4, 8, acc, b.stream);
      assert.throws(call(8, 1, 1), /copy_columns: accumulating into a bf16 dst would round twice/);
      assert.throws(
        call(7, 0, 0),
        /copy_columns: row strides ld_dst = 7, ld_src = 8 below cols = 8/,
      );
      assert.throws(call(8, 2, 0), /copy_columns: dst_bf16 = 2, src_bf16 = 0 must be 0 or 1/);
    } finally {
      b.free(t);
      b.free(u);
    }
  }
});
