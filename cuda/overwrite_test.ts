// The `accumulate` argument of every backward entry point (kernels.h): with a gradient's bit
// clear the kernel must overwrite it without reading it. Each case fills the gradient(s) under test
// with NaN, clears their bits, and must get exactly (bit for bit, up to the sign of zero) what the
// same call gives accumulating into zeros: a kernel that still adds, or leaves an element it has
// no term for (time_shift's last step, embedding rows no id selects) unwritten, keeps a NaN. Per
// entry point: the even-numbered gradients overwritten (the others accumulate into zeros), the
// odd-numbered ones, all of them at once, and the second one alone.
// On cpu (the references), emu, and cuda when a GPU is visible.
import assert from "node:assert/strict";
import { kernelsHeaderConstants, kernelsHeaderFunctions } from "./abi.ts";
import { type Backend, bf16ToF32, type Dtype, f32ToBf16, type HostArray } from "./backend.ts";
import { backend, CUDA_RUNS, Rng, SEED, withTensors } from "./test/harness.ts";
import * as att from "./test/attention_cases.ts";
import * as w6 from "./test/wkv6_cases.ts";
import * as w7 from "./test/wkv7_cases.ts";
import type { Shape as WkvShape } from "./test/wkv_cases.ts";

const OP = kernelsHeaderConstants();

/** One backward entry point: its gradient outputs' sizes (signature order) and a runner that makes
 * the same inputs every time (seeded), runs any forward the backward needs, then the backward with
 * the gradients starting at `init` and mask `acc`, and returns the gradients. */
interface Case {
  fn: string;
  grads: number[];
  run(be: Backend, init: Float32Array[], acc: number): Float32Array[];
}

type In = Record<string, { data: HostArray; shape: number[]; dtype?: Dtype }>;
/** A case over withTensors: `inputs(rng)` are uploaded, gradients g0, g1, ... start at init. */
function simple(
  fn: string,
  grads: number[],
  inputs: (rng: Rng) => In,
  call: (be: Backend, t: Record<string, Deno.PointerValue>, acc: number) => void,
): Case {
  return {
    fn,
    grads,
    run(be, init, acc) {
      const outs: Record<string, { shape: number[]; init: Float32Array }> = {};
      grads.forEach((n, i) => (outs[`g${i}`] = { shape: [n], init: init[i] }));
      const r = withTensors(be, inputs(new Rng(SEED)), outs, (t) => {
        const p: Record<string, Deno.PointerValue> = {};
        for (const [k, v] of Object.entries(t)) p[k] = v.ptr;
        call(be, p, acc);
      });
      return grads.map((_, i) => r[`g${i}`] as Float32Array);
    },
  };
}

const f = (rng: Rng, n: number, lo = -1, hi = 1) => ({ data: rng.uniform(n, lo, hi), shape: [n] });
/** a norm's input x [rows, C], affine w, b [C], dy, and the forward's out and statistics [stats] */
const normInputs = (r: Rng, rows: number, C: number, stats: number): In => ({
  x: f(r, rows * C),
  w: f(r, C),
  b: f(r, C),
  dy: f(r, rows * C),
  out: f(r, rows * C),
  mean: f(r, stats),
  rstd: f(r, stats),
});

// shapes: small (the emu runs a block's threads as host threads), with the reductions' two-stage
// paths where they have one (n > 4096 elements for the full sums, N > 64 rows for the column sums)
const n = 5000, N = 70, C = 40;
const CASES: Case[] = [
  simple("mn_relu2_backward", [n], (r) => ({ x: f(r, n), dy: f(r, n) }), (be, t, acc) => {
    be.k.mn_relu2_backward(t.g0, t.dy, t.x, BigInt(n), acc, be.stream);
  }),
  simple(
    "mn_axpby_backward",
    [n, n, 1, 1],
    (r) => ({ x: f(r, n), y: f(r, n), a: f(r, 1), b: f(r, 1), dy: f(r, n) }),
    (be, t, acc) =>
      be.k.mn_axpby_backward(
        t.g0,
        t.g1,
        t.g2,
        t.g3,
        t.dy,
        t.x,
        t.y,
        t.a,
        t.b,
        BigInt(n),
        acc,
        be.stream,
      ),
  ),
  ...["TANH", "SIGMOID", "RWKV7_DECAY", "EXP_MIN0", "NEG"].map((op) =>
    simple(
      `mn_unary_backward ${op}`,
      [n],
      (r) => ({ x: f(r, n, -3, 3), out: f(r, n), dy: f(r, n) }),
      (be, t, acc) => {
        const code = OP[`MN_OP_${op}`];
        be.k.mn_unary_forward(t.out, t.x, code, BigInt(n), be.stream);
        be.k.mn_unary_backward(t.g0, t.dy, t.x, t.out, code, BigInt(n), acc, be.stream);
      },
    )
  ),
  // the bf16 activations' backward with an fp32 dx (a bf16 dx is only overwritten: its test
  // refuses the bit), from a bf16 dout
  ...["TANH", "SIGMOID", "RWKV7_DECAY", "EXP_MIN0", "NEG"].map((op) =>
    simple(
      `mn_unary_backward_bf16 ${op}`,
      [n],
      (r) => ({
        x: { data: f32ToBf16(r.uniform(n, -3, 3)), shape: [n], dtype: "bf16" },
        out: { data: f32ToBf16(r.uniform(n)), shape: [n], dtype: "bf16" },
        dy: { data: f32ToBf16(r.uniform(n)), shape: [n], dtype: "bf16" },
      }),
      (be, t, acc) => {
        const code = OP[`MN_OP_${op}`];
        be.k.mn_unary_forward_bf16(t.out, t.x, code, BigInt(n), be.stream);
        be.k.mn_unary_backward_bf16(t.g0, t.dy, t.x, t.out, code, BigInt(n), 1, 0, acc, be.stream);
      },
    )
  ),
  simple(
    "mn_mul_backward",
    [n, n],
    (r) => ({ x: f(r, n), y: f(r, n), dy: f(r, n) }),
    (be, t, acc) => be.k.mn_mul_backward(t.g0, t.g1, t.dy, t.x, t.y, BigInt(n), acc, be.stream),
  ),
  simple(
    "mn_lerp_backward",
    [n, n, n],
    (r) => ({ x: f(r, n), y: f(r, n), g: f(r, n, 0, 1), dy: f(r, n) }),
    (be, t, acc) =>
      be.k.mn_lerp_backward(t.g0, t.g1, t.g2, t.dy, t.x, t.y, t.g, BigInt(n), acc, be.stream),
  ),
  simple(
    "mn_add_row_vector_backward",
    [N * C, C],
    (r) => ({ dy: f(r, N * C) }),
    (be, t, acc) => be.k.mn_add_row_vector_backward(t.g0, t.g1, t.dy, N, C, acc, be.stream),
  ),
  simple(
    "mn_mul_row_vector_backward",
    [N * C, C],
    (r) => ({ x: f(r, N * C), v: f(r, C), dy: f(r, N * C) }),
    (be, t, acc) =>
      be.k.mn_mul_row_vector_backward(t.g0, t.g1, t.dy, t.x, t.v, N, C, acc, be.stream),
  ),
  simple(
    "mn_time_shift_backward",
    [2 * 5 * 7],
    (r) => ({ dy: f(r, 70) }),
    (be, t, acc) => be.k.mn_time_shift_backward(t.g0, t.dy, 2, 5, 7, acc, be.stream),
  ),
  simple(
    "mn_l2norm_backward",
    [50 * 16],
    (r) => ({ x: f(r, 800), dy: f(r, 800) }),
    (be, t, acc) => be.k.mn_l2norm_backward(t.g0, t.dy, t.x, 50, 16, 1e-12, acc, be.stream),
  ),
  simple(
    "mn_groupnorm_backward",
    [N * 24, 24, 24],
    (r) => normInputs(r, N, 24, N * 3),
    (be, t, acc) => {
      be.k.mn_groupnorm_forward(t.out, t.mean, t.rstd, t.x, t.w, t.b, N, 3, 8, 1e-5, be.stream);
      be.k.mn_groupnorm_backward(
        t.g0,
        t.g1,
        t.g2,
        t.dy,
        t.x,
        t.w,
        t.mean,
        t.rstd,
        N,
        3,
        8,
        acc,
        be.stream,
      );
    },
  ),
  simple(
    "mn_rwkv7_bonus_backward",
    [N * 32, N * 32, N * 32, 32],
    (r) => ({ r: f(r, N * 32), k: f(r, N * 32), v: f(r, N * 32), u: f(r, 32), dy: f(r, N * 32) }),
    (be, t, acc) =>
      be.k.mn_rwkv7_bonus_backward(
        t.g0,
        t.g1,
        t.g2,
        t.g3,
        t.dy,
        t.r,
        t.k,
        t.v,
        t.u,
        N,
        2,
        16,
        acc,
        be.stream,
      ),
  ),
  // fp32 and bf16 dout (mn_layernorm_backward_bf16)
  ...[false, true].map((bf16) =>
    simple(
      bf16 ? "mn_layernorm_backward_bf16" : "mn_layernorm_backward",
      [N * C, C, C],
      (r) => {
        const i = normInputs(r, N, C, N);
        if (!bf16) return i;
        return { ...i, dy: { ...i.dy, data: f32ToBf16(i.dy.data as Float32Array), dtype: "bf16" } };
      },
      (be, t, acc) => {
        be.k.mn_layernorm_forward(t.out, t.mean, t.rstd, t.x, t.w, t.b, N, C, 1e-5, be.stream);
        const bwd = bf16 ? be.k.mn_layernorm_backward_bf16 : be.k.mn_layernorm_backward;
        bwd(t.g0, t.g1, t.g2, t.dy, t.x, t.w, t.mean, t.rstd, N, C, acc, be.stream);
      },
    )
  ),
  // RWKV-7's mix + ln1: ds, ds_bf16 (NULL here: bf16, only overwritten, its bit ignored), dx0,
  // dweight, dbias, da, db, after the forward with a branch
  {
    fn: "mn_mix_layernorm_backward",
    grads: [N * C, 0, N * C, C, C, 1, 1],
    run(be, init, acc) {
      const r = new Rng(SEED);
      const outs: Record<string, { shape: number[]; init?: Float32Array }> = {
        xo: { shape: [N * C] },
        out: { shape: [N * C] },
        mean: { shape: [N] },
        rstd: { shape: [N] },
      };
      init.forEach((v, i) => i !== 1 && (outs[`g${i}`] = { shape: [v.length], init: v }));
      const t = withTensors(
        be,
        {
          x: f(r, N * C),
          br: f(r, N * C),
          x0: f(r, N * C),
          w: f(r, C),
          b: f(r, C),
          ab: f(r, 2, 0.5, 1.5),
          dy: f(r, N * C),
          gin: f(r, N * C),
        },
        outs,
        (t) => {
          const k = be.k, s = be.stream, [a, b] = [t.ab.rows(0, 1).ptr, t.ab.rows(1, 1).ptr];
          k.mn_mix_layernorm_forward(
            null,
            t.xo.ptr,
            t.out.ptr,
            t.mean.ptr,
            t.rstd.ptr,
            t.x.ptr,
            t.br.ptr,
            t.x0.ptr,
            a,
            b,
            t.w.ptr,
            t.b.ptr,
            N,
            C,
            1e-5,
            s,
          );
          k.mn_mix_layernorm_backward(
            t.g0.ptr,
            null,
            t.g2.ptr,
            t.g3.ptr,
            t.g4.ptr,
            t.g5.ptr,
            t.g6.ptr,
            t.dy.ptr,
            t.gin.ptr,
            t.xo.ptr,
            t.x.ptr,
            t.br.ptr,
            t.x0.ptr,
            a,
            b,
            t.w.ptr,
            t.mean.ptr,
            t.rstd.ptr,
            N,
            C,
            acc,
            s,
          );
        },
      );
      return init.map((_, i) => (i === 1 ? new Float32Array(0) : t[`g${i}`] as Float32Array));
    },
  },
  simple(
    "mn_rmsnorm_backward",
    [N * C],
    (r) => ({ x: f(r, N * C), dy: f(r, N * C), out: f(r, N * C), rstd: f(r, N) }),
    (be, t, acc) => {
      be.k.mn_rmsnorm_forward(t.out, t.rstd, t.x, N, C, 1e-6, be.stream);
      be.k.mn_rmsnorm_backward(t.g0, t.dy, t.x, t.rstd, N, C, acc, be.stream);
    },
  ),
  // ids from [0, V - 3): the last 3 rows of dwte get no term, so overwriting must zero them
  simple("mn_embedding_backward", [17 * 40], (r) => ({
    idx: {
      data: Int32Array.from({ length: 60 }, () => Math.floor(r.next() * 14)),
      shape: [60],
      dtype: "i32",
    },
    dy: f(r, 60 * 40),
  }), (be, t, acc) => be.k.mn_embedding_backward(t.g0, t.idx, t.dy, 60, 40, 17, acc, be.stream)),
  simple(
    "mn_rotary_backward",
    [8 * 2 * 8],
    (r) => ({ dy: f(r, 128) }),
    (be, t, acc) => be.k.mn_rotary_backward(t.g0, t.dy, 1, 8, 2, 8, acc, be.stream),
  ),
];

// the recurrences and attention, through the runners their own tests use
const WS: WkvShape = { B: 1, T: 32, H: 2, N: 16 };
// N = 128: the backstep WKV-7 and WKV-6 dk/dw kernels fix their flags at compile time there
const WS128: WkvShape = { B: 1, T: 16, H: 1, N: 128 };
const wkvImpls = [
  ...(["wkv7", "wkv7g", "wkv7g_f32", "wind"] as const).map((impl) => [impl, WS] as const),
  ["wkv7", WS128] as const,
];
for (const [impl, WS] of wkvImpls) {
  const wn = WS.B * WS.T * WS.H * WS.N;
  const fn = {
    wkv7: "mn_wkv7_backward",
    wkv7g: "mn_wkv7g_backward",
    wkv7g_f32: "mn_wkv7g_backward_f32",
    wind: "mn_wkv7_wind_backward",
  }[impl];
  CASES.push({
    fn: `${fn} N=${WS.N}`,
    grads: w7.GRADS.map(() => wn),
    run(be, init, acc) {
      const rng = new Rng(SEED);
      const x = impl === "wkv7g_f32"
        ? w7.makeInputsF32(rng, WS, "model")
        : w7.makeInputs(rng, WS, "model");
      const r = w7.runWkv7(be, impl, WS, x, init, acc);
      return w7.GRADS.map((g) => r[g]);
    },
  });
}
const wkv6Impls = [
  ...(["wkv6", "wkv6_f32", "chunked"] as const).map((impl) => [impl, WS] as const),
  ["wkv6", WS128] as const,
];
for (const [impl, WS] of wkv6Impls) {
  const fn = {
    wkv6: "mn_wkv6_backward",
    wkv6_f32: "mn_wkv6_backward_f32",
    chunked: "mn_wkv6_chunked_backward",
  }[impl];
  CASES.push({
    fn: `${fn} N=${WS.N}`,
    grads: w6.GRADS.map((g) => w6.gradNumel(WS, g)),
    run(be, init, acc) {
      const x = w6.makeInputs(new Rng(SEED), WS, "model");
      const xs = impl !== "wkv6_f32" ? x : {
        ...x,
        r: bf16ToF32(x.r),
        k: bf16ToF32(x.k),
        v: bf16ToF32(x.v),
        w: bf16ToF32(x.w),
      };
      const r = w6.runWkv6(be, impl, WS, xs, init, acc);
      return w6.GRADS.map((g) => r[g]);
    },
  });
}
const AS: att.Shape = { B: 1, T: 40, H: 2, D: 32 };
for (const impl of ["cc", "cc_f32", "tc", "tc_bf16"] as const) {
  const fn = {
    cc: "mn_attention_backward",
    cc_f32: "mn_attention_backward_f32",
    tc: "mn_attention_tc_backward",
    tc_bf16: "mn_attention_tc_backward_bf16",
  }[impl];
  CASES.push({
    fn,
    grads: att.GRADS.map(() => att.numel(AS)),
    run(be, init, acc) {
      const x = att.makeInputs(new Rng(SEED), AS);
      const xs = impl !== "cc_f32"
        ? x
        : { q: bf16ToF32(x.q), k: bf16ToF32(x.k), v: bf16ToF32(x.v), dout: x.dout };
      const r = att.runAttention(be, AS, xs, init, impl, acc);
      return att.GRADS.map((g) => r[g]);
    },
  });
}

/** bit for bit, but +0 == -0 (the sum 0 + (-0) is +0, an overwrite keeps -0) */
function sameBits(what: string, got: Float32Array, want: Float32Array) {
  assert.equal(got.length, want.length, what);
  const gb = new Uint32Array(got.buffer, got.byteOffset, got.length);
  const wb = new Uint32Array(want.buffer, want.byteOffset, want.length);
  for (let i = 0; i < got.length; i++) {
    if (gb[i] !== wb[i] && !(got[i] === 0 && want[i] === 0)) {
      assert.fail(`${what}: element ${i} is ${got[i]}, accumulating into 0 gives ${want[i]}`);
    }
  }
}

function checkCase(be: Backend, c: Case) {
  const zeros = () => c.grads.map((m) => new Float32Array(m));
  const want = c.run(be, zeros(), -1);
  const nan = (m: number) => new Float32Array(m).fill(NaN);
  const all = c.grads.map((_, i) => i);
  const masks = [0, 1].map((odd) => all.filter((i) => i % 2 === odd)).filter((cl) => cl.length)
    .map((cl) => ({ clear: cl, acc: cl.reduce((m, i) => m & ~(1 << i), -1) }));
  masks.push({ clear: all, acc: 0 });
  // one alone: WKV-6's dk (1) and dw (3) share a compile-time flag, so their bits differing is a
  // path of its own (as are WKV-7's mixed masks)
  if (all.length > 1) masks.push({ clear: [1], acc: -1 & ~2 });
  for (const { clear, acc } of masks) {
    const init = c.grads.map((m, i) => (clear.includes(i) ? nan(m) : new Float32Array(m)));
    const got = c.run(be, init, acc);
    got.forEach((g, i) => sameBits(`${c.fn} grad ${i}, mask ${acc} (seed ${SEED})`, g, want[i]));
  }
}

for (const name of ["cpu", "emu", "cuda"] as const) {
  Deno.test({
    name: `overwrite: every backward entry point ignores a gradient with its bit clear (${name})`,
    ignore: name === "cuda" && !CUDA_RUNS,
    fn() {
      const be = backend(name);
      for (const c of CASES) {
        const t0 = performance.now();
        checkCase(be, c);
        if (Deno.env.get("MN_TIME_CASES")) console.log(c.fn, (performance.now() - t0).toFixed(0));
      }
    },
  });
}

/** backwards whose accumulate bits are tested in their own file (the fused blocks of issue #15) */
const OWN_OVERWRITE_TESTS: Record<string, string[]> = {
  "./rwkv7_fused_test.ts": [
    "mn_rwkv7_mix_x_backward",
    "mn_rwkv7_mix4_backward",
    "mn_rwkv7_wkv_inputs_backward",
    "mn_rwkv7_gn_bonus_gate_backward",
    "mn_rwkv7_value_mix_backward",
  ],
  "./rwkv6_fused_test.ts": [
    "mn_rwkv6_mix5_backward",
    "mn_rwkv6_decay_k_backward",
    "mn_rwkv6_gn_gate_backward",
  ],
  "./gpt2_fused_test.ts": [
    "mn_mix_rmsnorm_backward",
    "mn_qk_rmsnorm_rotary_backward",
    "mn_value_mix_backward",
    "mn_relu2_backward_bf16io", // bf16 dinp: accumulate must be 0 (NaN-poisoned, overwritten)
  ],
};
Deno.test("overwrite: the table covers every backward entry point of kernels.h", () => {
  const backwards = kernelsHeaderFunctions().map((fn) => fn.name).filter((s) =>
    s.includes("backward")
  );
  const covered = new Set(CASES.map((c) => c.fn.split(" ")[0]));
  // the fused backwards check their bits beside their other tests (NaN-poisoned outputs under a
  // clear bit): the file must still name each one in such a test
  for (const [file, fns] of Object.entries(OWN_OVERWRITE_TESTS)) {
    const text = Deno.readTextFileSync(new URL(file, import.meta.url));
    assert.match(text, /NaN|poison/, `${file}: no poisoned-output test`);
    for (const f of fns) {
      assert.ok(text.includes(f.slice(3)), `${file} does not test ${f}`);
      covered.add(f);
    }
  }
  assert.deepEqual(backwards.filter((s) => !covered.has(s)), []);
  for (const fn of kernelsHeaderFunctions().filter((fn) => fn.name.includes("backward"))) {
    const i = fn.params.findIndex((p) => p.name === "accumulate");
    assert.equal(i, fn.params.length - 2, `${fn.name}: accumulate just before stream`);
  }
});

// Aliased outputs (kernels.h: the first's bit decides, the later one's is set), as the tape passes
// them for axpby(x, x) and mul(x, x): the first occurrence overwrites NaN, the second adds to it.
for (const name of ["cpu", "emu", "cuda"] as const) {
  Deno.test({
    name: `overwrite: aliased gradient outputs of axpby and mul (${name})`,
    ignore: name === "cuda" && !CUDA_RUNS,
    fn() {
      const be = backend(name), rng = new Rng(SEED);
      const x = rng.uniform(n), dy = rng.uniform(n), ab = rng.uniform(2);
      const run = (init: number, axpbyAcc: number, mulAcc: number) =>
        withTensors(be, {
          x: { data: x, shape: [n] },
          dy: { data: dy, shape: [n] },
          a: { data: ab.subarray(0, 1), shape: [1] },
          b: { data: ab.subarray(1), shape: [1] },
        }, {
          dx: { shape: [n], init: new Float32Array(n).fill(init) },
          ds: { shape: [1], init: new Float32Array(1).fill(init) },
          mx: { shape: [n], init: new Float32Array(n).fill(init) },
        }, (t) => {
          const k = be.k, s = be.stream;
          const [p, q] = [t.dx.ptr, t.ds.ptr];
          k.mn_axpby_backward(
            p,
            p,
            q,
            q,
            t.dy.ptr,
            t.x.ptr,
            t.x.ptr,
            t.a.ptr,
            t.b.ptr,
            BigInt(n),
            axpbyAcc,
            s,
          );
          k.mn_mul_backward(t.mx.ptr, t.mx.ptr, t.dy.ptr, t.x.ptr, t.x.ptr, BigInt(n), mulAcc, s);
        }) as Record<string, Float32Array>;
      const want = run(0, -1, -1), got = run(NaN, 0b1010, 0b10);
      for (const k of ["dx", "ds", "mx"]) sameBits(`${k} (seed ${SEED})`, got[k], want[k]);
    },
  });
}
