// Model ops (modelops.cu / cpu/modelops.cpp), driven by one table of op specs. For every op:
//   - forward and backward, emu (and cuda with a GPU) vs cpu, at several shapes (checkKernel);
//   - cpu forward vs an independent float64 forward written here, and cpu backward vs float64
//     central differences of that forward, with gradients pre-filled so += is what is checked;
//   - grads the header lets be NULL: the others come out bit-identical; required ones: an error;
//   - backward twice on the same inputs gives the same bits (the column sums are ordered).
// Then torch's edge conventions (clamp's gradient at 0, F.normalize below eps) and bad arguments.
import assert from "node:assert/strict";
import { kernelsHeaderConstants, parseHeaderConstants } from "./abi.ts";
import { type Backend, bf16ToF32, f32ToBf16, type Tensor } from "./backend.ts";
import {
  backend,
  checkKernel,
  compare,
  EXACT,
  f64,
  numericalGrad,
  Rng,
  SEED,
  testTargets,
  type Tol,
  TOL_F32,
  withTensors,
} from "./test/harness.ts";

const HEADER = kernelsHeaderConstants();
const opCode = (name: string): number => {
  const v = HEADER[`MN_OP_${name}`];
  if (v === undefined) throw new Error(`MN_OP_${name} is not defined in cuda/kernels.h`);
  return v;
};

type Cfg = Record<string, number>;
type Arrays = Record<string, Float64Array>;
type Ptrs = Record<string, Deno.PointerValue>;
const numel = (shape: number[]) => shape.reduce((a, b) => a * b, 1);
const fill = (n: number, f: (i: number) => number) =>
  Float64Array.from({ length: n }, (_, i) => f(i));

// Tolerances. Elementwise ops use the same float formulas on both sides (CUDA's tanhf/expf/log1pf
// are within 2 ulp of glibc's): TOL_F32. Reductions (row norms, the bonus dot products, column sums
// over up to 64 rows) round in float in a different order from the cpu's double sums; the error
// grows like sqrt(#terms) * 2^-24 * the size of the terms (up to ~10 for du = sum ds*r*k): 1e-5
// measured at worst over 26 seeds, under SUM's limit of 5e-5 + 2e-5 |want| with room for cuda's
// FMA contractions.
const SUM: Tol = { atol: 5e-5, rtol: 2e-5 };
// cpu backward (computed in double, rounded once to float, then += onto the float init) vs float64
// central differences (h = 1e-6: truncation ~1e-12, cancellation ~1e-10): two float roundings,
// ~1.2e-7 relative; 60 seeds passed at 1e-6, so 3e-6 has margin and still sees a wrong eps.
const FD: Tol = { atol: 3e-6, rtol: 3e-6 };
const GN_EPS = 64e-5; // nn.GroupNorm eps of RWKV-7 (1e-5 * head_size_divisor^2)
const L2_EPS = 1e-12; // F.normalize default

interface Spec {
  name: string;
  configs: Cfg[]; // emu/cuda vs cpu
  fdConfigs: Cfg[]; // small shapes for the finite differences
  inputs: (c: Cfg) => Record<string, number[]>;
  outputs: (c: Cfg) => Record<string, number[]>; // forward outputs; `out` is the differentiated one
  /** inputs that get a gradient d<name>; `nullable` ones may be passed as NULL */
  grads: string[];
  nullable?: string[];
  /** input values (default normal(0, 1)); fd: drawn for finite differences (avoid kinks) */
  draw?: (name: string, n: number, rng: Rng, fd: boolean) => Float32Array;
  forward: (be: Backend, p: Ptrs, c: Cfg) => void;
  backward: (be: Backend, p: Ptrs, c: Cfg) => void;
  /** independent float64 forward: `out`, plus any saved statistics to check */
  ref: (x: Arrays, c: Cfg) => Arrays;
  tol?: Record<string, Tol>; // per output/grad name, default TOL_F32
}

// ---- float64 references, from the PyTorch definitions ----
const softplus = (z: number) => (z > 20 ? z : Math.log1p(Math.exp(z))); // beta 1, threshold 20
const UNARY: {
  name: string;
  f: (x: number) => number;
  specials: number[];
  fdSpecials: number[];
}[] = [
  { name: "TANH", f: Math.tanh, specials: [0, 10, -10], fdSpecials: [0, 4, -4] },
  {
    name: "SIGMOID",
    f: (x) => 1 / (1 + Math.exp(-x)),
    specials: [0, 50, -50, -100],
    fdSpecials: [0, 8, -8],
  },
  // big |x| on both sides of torch's threshold (a naive log(1 + exp(z)) overflows at z = 89)
  {
    name: "RWKV7_DECAY",
    f: (x) => -softplus(-x) - 0.5,
    specials: [-19.9, -20.1, -100, 100, -1e4],
    fdSpecials: [-19.5, -21, -100, 100, 30],
  },
  // exact zeros (the kink) only where no finite difference is taken
  {
    name: "EXP_MIN0",
    f: (x) => Math.exp(Math.min(x, 0)),
    specials: [0, -0, 1e-30, -1e-30, 100],
    fdSpecials: [-0.01, 0.01, 5, -5],
  },
  { name: "NEG", f: (x) => -x, specials: [0], fdSpecials: [0] },
];

function l2normRef(x: Float64Array, N: number, D: number): Float64Array {
  const out = new Float64Array(N * D);
  for (let i = 0; i < N; i++) {
    let ss = 0;
    for (let j = 0; j < D; j++) ss += x[i * D + j] ** 2;
    const denom = Math.max(Math.sqrt(ss), L2_EPS);
    for (let j = 0; j < D; j++) out[i * D + j] = x[i * D + j] / denom;
  }
  return out;
}

function groupnormRef({ x, weight, bias }: Arrays, { N, G, D }: Cfg): Arrays {
  const out = new Float64Array(N * G * D),
    mean = new Float64Array(N * G),
    rstd = new Float64Array(N * G);
  for (let r = 0; r < N * G; r++) {
    const row = x.subarray(r * D, r * D + D);
    const mu = row.reduce((a, b) => a + b, 0) / D;
    const variance = row.reduce((a, b) => a + (b - mu) ** 2, 0) / D;
    const rs = 1 / Math.sqrt(variance + GN_EPS);
    for (let j = 0; j < D; j++) {
      const c = (r % G) * D + j;
      out[r * D + j] = (row[j] - mu) * rs * weight[c] + bias[c];
    }
    mean[r] = mu;
    rstd[r] = rs;
  }
  return { out, mean, rstd };
}

function bonusRef({ r, k, v, u }: Arrays, { N, H, D }: Cfg): Float64Array {
  const out = new Float64Array(N * H * D);
  for (let row = 0; row < N * H; row++) {
    const h = row % H;
    let s = 0;
    for (let j = 0; j < D; j++) s += r[row * D + j] * k[row * D + j] * u[h * D + j];
    for (let j = 0; j < D; j++) out[row * D + j] = s * v[row * D + j];
  }
  return out;
}

// ---- the table ----
const ELEM: Cfg[] = [{ n: 1 }, { n: 7 }, { n: 64 * 33 }, { n: 4097 }];
const ROWS: Cfg[] = [{ N: 1, C: 1 }, { N: 7, C: 33 }, { N: 64, C: 256 }, { N: 64, C: 1 }, {
  N: 7,
  C: 300,
}];
const HEADS: Cfg[] = [
  { N: 1, G: 1, D: 16 },
  { N: 7, G: 3, D: 64 },
  { N: 64, G: 1, D: 16 },
  { N: 64, G: 2, D: 64 },
  { N: 5, G: 2, D: 33 },
];
const HEADS_FD: Cfg[] = [{ N: 3, G: 2, D: 16 }, { N: 2, G: 2, D: 64 }, { N: 2, G: 1, D: 33 }];
const withH = (cs: Cfg[]) => cs.map(({ N, G, D }) => ({ N, H: G, D }));
const big = (n: number | bigint) => BigInt(n);
const flat = (c: Cfg) => ({ x: [c.n] });
/** x [N, C] with a row vector v [C]: the shapes, configs and tolerances the two ops share */
const rowVectorSpec = (
  s: Pick<Spec, "name" | "nullable" | "forward" | "backward" | "ref">,
): Spec => ({
  configs: ROWS,
  fdConfigs: [{ N: 5, C: 7 }],
  inputs: ({ N, C }) => ({ x: [N, C], v: [C] }),
  outputs: ({ N, C }) => ({ out: [N, C] }),
  grads: ["x", "v"],
  tol: { dv: SUM },
  ...s,
});

const SPECS: Spec[] = [
  ...UNARY.map(({ name, f, specials, fdSpecials }): Spec => {
    const op = opCode(name);
    return {
      name: `unary ${name}`,
      configs: ELEM,
      fdConfigs: [{ n: 40 }],
      inputs: flat,
      outputs: (c) => ({ out: [c.n] }),
      grads: ["x"],
      draw(_name, n, rng, fd) {
        const x = rng.normal(n, 3);
        const sp = fd ? fdSpecials : specials;
        for (let i = 0; i < n; i += 3) x[i] = sp[(i / 3) % sp.length];
        return x;
      },
      forward: (be, p, c) => be.k.mn_unary_forward(p.out, p.x, op, big(c.n), be.stream),
      backward: (be, p, c) =>
        be.k.mn_unary_backward(p.dx, p.dout, p.x, p.out, op, big(c.n), -1, be.stream),
      ref: ({ x }) => ({ out: x.map(f) }),
    };
  }),
  {
    name: "mul",
    configs: ELEM,
    fdConfigs: [{ n: 20 }],
    inputs: (c) => ({ x: [c.n], y: [c.n] }),
    outputs: (c) => ({ out: [c.n] }),
    grads: ["x", "y"],
    nullable: ["x", "y"],
    forward: (be, p, c) => be.k.mn_mul_forward(p.out, p.x, p.y, big(c.n), be.stream),
    backward: (be, p, c) =>
      be.k.mn_mul_backward(p.dx, p.dy, p.dout, p.x, p.y, big(c.n), -1, be.stream),
    ref: ({ x, y }) => ({ out: x.map((xi, i) => xi * y[i]) }),
  },
  {
    name: "lerp",
    configs: ELEM,
    fdConfigs: [{ n: 20 }],
    inputs: (c) => ({ x: [c.n], y: [c.n], g: [c.n] }),
    outputs: (c) => ({ out: [c.n] }),
    grads: ["x", "y", "g"],
    nullable: ["x", "y", "g"],
    draw: (name, n, rng) => (name === "g" ? rng.uniform(n, 0, 1) : rng.normal(n)),
    forward: (be, p, c) => be.k.mn_lerp_forward(p.out, p.x, p.y, p.g, big(c.n), be.stream),
    backward: (be, p, c) =>
      be.k.mn_lerp_backward(p.dx, p.dy, p.dg, p.dout, p.x, p.y, p.g, big(c.n), -1, be.stream),
    ref: ({ x, y, g }) => ({ out: x.map((xi, i) => xi + (y[i] - xi) * g[i]) }),
  },
  rowVectorSpec({
    name: "add_row_vector",
    nullable: ["x"],
    forward: (be, p, { N, C }) => be.k.mn_add_row_vector_forward(p.out, p.x, p.v, N, C, be.stream),
    backward: (be, p, { N, C }) =>
      be.k.mn_add_row_vector_backward(p.dx, p.dv, p.dout, N, C, -1, be.stream),
    ref: ({ x, v }, { C }) => ({ out: x.map((xi, i) => xi + v[i % C]) }),
  }),
  rowVectorSpec({
    name: "mul_row_vector",
    nullable: ["x", "v"],
    forward: (be, p, { N, C }) => be.k.mn_mul_row_vector_forward(p.out, p.x, p.v, N, C, be.stream),
    backward: (be, p, { N, C }) =>
      be.k.mn_mul_row_vector_backward(p.dx, p.dv, p.dout, p.x, p.v, N, C, -1, be.stream),
    ref: ({ x, v }, { C }) => ({ out: x.map((xi, i) => xi * v[i % C]) }),
  }),
  {
    name: "time_shift",
    configs: [{ B: 1, T: 1, C: 1 }, { B: 2, T: 7, C: 33 }, { B: 3, T: 5, C: 256 }, {
      B: 1,
      T: 9,
      C: 1,
    }],
    fdConfigs: [{ B: 2, T: 5, C: 3 }],
    inputs: ({ B, T, C }) => ({ x: [B, T, C] }),
    outputs: ({ B, T, C }) => ({ out: [B, T, C] }),
    grads: ["x"],
    forward: (be, p, { B, T, C }) => be.k.mn_time_shift_forward(p.out, p.x, B, T, C, be.stream),
    backward: (be, p, { B, T, C }) =>
      be.k.mn_time_shift_backward(p.dx, p.dout, B, T, C, -1, be.stream),
    ref: ({ x }, { T, C }) => ({
      out: fill(x.length, (i) => (Math.floor(i / C) % T === 0 ? 0 : x[i - C])),
    }),
  },
  {
    name: "l2norm",
    configs: [
      { N: 1, D: 16 },
      { N: 7, D: 64 },
      { N: 64, D: 16 },
      { N: 64, D: 64 },
      { N: 5, D: 33 },
      { N: 3, D: 100 },
    ],
    fdConfigs: [{ N: 4, D: 16 }, { N: 2, D: 64 }, { N: 2, D: 33 }],
    inputs: ({ N, D }) => ({ x: [N, D] }),
    outputs: ({ N, D }) => ({ out: [N, D] }),
    grads: ["x"],
    forward: (be, p, { N, D }) => be.k.mn_l2norm_forward(p.out, p.x, N, D, L2_EPS, be.stream),
    backward: (be, p, { N, D }) =>
      be.k.mn_l2norm_backward(p.dx, p.dout, p.x, N, D, L2_EPS, -1, be.stream),
    ref: ({ x }, { N, D }) => ({ out: l2normRef(x, N, D) }),
    tol: { out: SUM, dx: SUM },
  },
  {
    name: "groupnorm",
    configs: HEADS,
    fdConfigs: HEADS_FD,
    inputs: ({ N, G, D }) => ({ x: [N, G * D], weight: [G * D], bias: [G * D] }),
    outputs: ({ N, G, D }) => ({ out: [N, G * D], mean: [N, G], rstd: [N, G] }),
    grads: ["x", "weight", "bias"],
    // an offset and a scale per row, as the WKV output has
    draw: (
      name,
      n,
      rng,
    ) => (name === "x" ? rng.normal(n, 2).map((v, i) => v + (i % 5) - 2) : rng.normal(n)),
    forward: (be, p, { N, G, D }) =>
      be.k.mn_groupnorm_forward(
        p.out,
        p.mean,
        p.rstd,
        p.x,
        p.weight,
        p.bias,
        N,
        G,
        D,
        GN_EPS,
        be.stream,
      ),
    backward: (be, p, { N, G, D }) =>
      be.k.mn_groupnorm_backward(
        p.dx,
        p.dweight,
        p.dbias,
        p.dout,
        p.x,
        p.weight,
        p.mean,
        p.rstd,
        N,
        G,
        D,
        -1,
        be.stream,
      ),
    ref: groupnormRef,
    tol: { out: SUM, mean: SUM, rstd: SUM, dx: SUM, dweight: SUM, dbias: SUM },
  },
  {
    name: "rwkv7_bonus",
    configs: withH(HEADS),
    fdConfigs: withH(HEADS_FD),
    inputs: ({ N, H, D }) => ({ r: [N, H, D], k: [N, H, D], v: [N, H, D], u: [H, D] }),
    outputs: ({ N, H, D }) => ({ out: [N, H, D] }),
    grads: ["r", "k", "v", "u"],
    forward: (be, p, { N, H, D }) =>
      be.k.mn_rwkv7_bonus_forward(p.out, p.r, p.k, p.v, p.u, N, H, D, be.stream),
    backward: (be, p, { N, H, D }) =>
      be.k.mn_rwkv7_bonus_backward(
        p.dr,
        p.dk,
        p.dv,
        p.du,
        p.dout,
        p.r,
        p.k,
        p.v,
        p.u,
        N,
        H,
        D,
        -1,
        be.stream,
      ),
    ref: (a, c) => ({ out: bonusRef(a, c) }),
    tol: { out: SUM, dr: SUM, dk: SUM, dv: SUM, du: SUM },
  },
];

// ---- running a spec ----
interface Run {
  res: Record<string, Float32Array | Int32Array>;
  inputs: Record<string, Float32Array>;
  dout: Float32Array;
  init: Record<string, Float32Array>; // grads before the backward
}

/** Forward (and, with `backward`, backward into pre-filled grads; `nulls` passed as NULL). */
function runSpec(
  be: Backend,
  s: Spec,
  c: Cfg,
  rng: Rng,
  opt: { backward?: boolean; nulls?: string[]; fd?: boolean } = {},
): Run {
  const shapes = s.inputs(c), outs = s.outputs(c);
  const inputs: Record<string, Float32Array> = {};
  for (const [k, sh] of Object.entries(shapes)) {
    inputs[k] = s.draw?.(k, numel(sh), rng, !!opt.fd) ?? rng.normal(numel(sh));
  }
  const dout = rng.normal(numel(outs.out));
  const init: Record<string, Float32Array> = {};
  for (const g of s.grads) init[g] = rng.normal(numel(shapes[g])); // drawn even when NULL
  const nulls = opt.nulls ?? [];
  const inSpec: Record<string, { data: Float32Array; shape: number[] }> = {};
  for (const [k, data] of Object.entries(inputs)) inSpec[k] = { data, shape: shapes[k] };
  const outSpec: Record<string, { shape: number[]; init?: Float32Array }> = {};
  for (const [k, shape] of Object.entries(outs)) outSpec[k] = { shape };
  if (opt.backward) {
    inSpec.dout = { data: dout, shape: outs.out };
    for (const g of s.grads) {
      if (!nulls.includes(g)) outSpec[`d${g}`] = { shape: shapes[g], init: init[g] };
    }
  }
  const res = withTensors(be, inSpec, outSpec, (t: Record<string, Tensor>) => {
    const p: Ptrs = {};
    for (const [k, v] of Object.entries(t)) p[k] = v.ptr;
    for (const g of nulls) p[`d${g}`] = null;
    s.forward(be, p, c);
    if (opt.backward) s.backward(be, p, c);
  });
  return { res, inputs, dout, init };
}

const tolOf = (s: Spec, key: string) => s.tol?.[key] ?? TOL_F32;
const label = (c: Cfg) => Object.entries(c).map(([k, v]) => `${k}=${v}`).join(",");

for (const s of SPECS) {
  for (const backward of [false, true]) {
    const run = (be: Backend, c: Cfg, rng: Rng) => runSpec(be, s, c, rng, { backward }).res;
    checkKernel({
      name: `${s.name} ${backward ? "backward" : "forward"}`,
      configs: s.configs,
      label,
      run,
      tol: Object.fromEntries(
        [...Object.keys(s.outputs(s.configs[0])), ...s.grads.map((g) => `d${g}`)].map((
          k,
        ) => [k, tolOf(s, k)]),
      ),
    });
  }

  Deno.test(`${s.name}: cpu forward matches float64, backward accumulates float64 finite differences`, () => {
    const be = backend("cpu");
    s.fdConfigs.forEach((c, ci) => {
      const { res, inputs, dout, init } = runSpec(be, s, c, new Rng(SEED + 1000 + ci), {
        backward: true,
        fd: true,
      });
      const x64: Arrays = Object.fromEntries(Object.entries(inputs).map(([k, v]) => [k, f64(v)]));
      const want = s.ref(x64, c);
      for (const [k, w] of Object.entries(want)) {
        compare(`${s.name} ${label(c)} ${k} vs float64`, res[k], w, TOL_F32);
      }
      for (const g of s.grads) {
        const num = numericalGrad((xg) => s.ref({ ...x64, [g]: xg }, c).out, f64(inputs[g]), dout);
        const expect = num.map((d, i) => init[g][i] + d);
        compare(
          `${s.name} ${label(c)} d${g} vs finite differences (+= onto pre-filled)`,
          res[`d${g}`],
          expect,
          FD,
        );
      }
    });
  });

  Deno.test(`${s.name}: NULL grads where the header allows them, an error elsewhere; deterministic`, () => {
    for (const name of ["cpu", "emu"] as const) {
      const be = backend(name);
      const c = s.fdConfigs[0];
      const full = runSpec(be, s, c, new Rng(SEED)).res;
      const again = runSpec(be, s, c, new Rng(SEED), { backward: true }).res;
      const twice = runSpec(be, s, c, new Rng(SEED), { backward: true }).res;
      for (const k of Object.keys(again)) {
        compare(`${name} ${s.name} ${k} run twice`, twice[k], again[k], EXACT);
      }
      compare(`${name} ${s.name} forward alone vs with backward`, again.out, full.out, EXACT);
      const nullable = s.nullable ?? [];
      const nullSets = [...nullable.map((g) => [g]), ...(nullable.length > 1 ? [nullable] : [])];
      for (const nulls of nullSets) {
        const part = runSpec(be, s, c, new Rng(SEED), { backward: true, nulls }).res;
        for (const g of s.grads.filter((g) => !nulls.includes(g))) {
          compare(
            `${name} ${s.name} d${g} with ${nulls.map((n) => `d${n}`)} NULL`,
            part[`d${g}`],
            again[`d${g}`],
            EXACT,
          );
        }
      }
      for (const g of s.grads.filter((g) => !nullable.includes(g))) {
        assert.throws(
          () => runSpec(be, s, c, new Rng(SEED), { backward: true, nulls: [g] }),
          /required/,
          `${name} ${s.name}: NULL d${g} must be refused`,
        );
      }
    }
  });
}

// ---- torch's edge conventions, checked on cpu and emu ----
Deno.test("unary EXP_MIN0: gradient passes at x == 0 (torch.clamp(max=0) masks x <= max), not for x > 0", () => {
  const x = new Float32Array([0, -0, 1e-30, 2, -2, -1e-30]);
  const dout = new Float32Array([1.5, -2, 3, 4, 5, 6]);
  const want = [1.5, -2, 0, 0, 5 * Math.exp(-2), 6];
  for (const name of ["cpu", "emu"] as const) {
    const be = backend(name);
    const r = withTensors(be, { x: { data: x, shape: [6] }, dout: { data: dout, shape: [6] } }, {
      out: { shape: [6] },
      dx: { shape: [6], init: new Float32Array(6) },
    }, (t) => {
      be.k.mn_unary_forward(t.out.ptr, t.x.ptr, opCode("EXP_MIN0"), 6n, be.stream);
      be.k.mn_unary_backward(
        t.dx.ptr,
        t.dout.ptr,
        t.x.ptr,
        t.out.ptr,
        opCode("EXP_MIN0"),
        6n,
        -1,
        be.stream,
      );
    });
    compare(`${name} exp_min0 out`, r.out, [1, 1, 1, 1, Math.exp(-2), 1], TOL_F32);
    compare(`${name} exp_min0 dx`, r.dx, want, TOL_F32);
  }
});

Deno.test("l2norm: rows with ||x|| < eps are divided by eps, with gradient dout / eps (F.normalize)", () => {
  const D = 16, eps = 1e-6;
  const x = new Float32Array(3 * D);
  x[D] = 3e-7; // row 1: norm 5e-7 < eps; row 0: all zero
  x[D + 1] = -4e-7;
  for (let j = 0; j < D; j++) x[2 * D + j] = j - 7; // row 2: ordinary
  const dout = new Rng(SEED).normal(3 * D);
  const out = new Float64Array(3 * D), dx = new Float64Array(3 * D);
  for (let j = 0; j < 2 * D; j++) [out[j], dx[j]] = [x[j] / eps, dout[j] / eps];
  const row2 = l2normRef(f64(x.subarray(2 * D)), 1, D);
  const nrm = Math.hypot(...x.subarray(2 * D));
  const dot = row2.reduce((a, o, j) => a + o * dout[2 * D + j], 0);
  for (let j = 0; j < D; j++) {
    out[2 * D + j] = row2[j];
    dx[2 * D + j] = (dout[2 * D + j] - row2[j] * dot) / nrm;
  }
  for (const name of ["cpu", "emu"] as const) {
    const be = backend(name);
    const r = withTensors(be, {
      x: { data: x, shape: [3, D] },
      dout: { data: dout, shape: [3, D] },
    }, {
      out: { shape: [3, D] },
      dx: { shape: [3, D], init: new Float32Array(3 * D) },
    }, (t) => {
      be.k.mn_l2norm_forward(t.out.ptr, t.x.ptr, 3, D, eps, be.stream);
      be.k.mn_l2norm_backward(t.dx.ptr, t.dout.ptr, t.x.ptr, 3, D, eps, -1, be.stream);
    });
    compare(`${name} l2norm out`, r.out, out, TOL_F32);
    compare(`${name} l2norm dx`, r.dx, dx, TOL_F32);
  }
});

Deno.test("modelops: bad op codes, sizes and arguments are refused with a clear message", () => {
  const n = null, S = null;
  const tanh = opCode("TANH");
  const cases: [string, (k: Backend["k"]) => unknown, RegExp][] = [
    ["op 0", (k) => k.mn_unary_forward(n, n, 0, 4n, S), /unary_forward: unknown op code 0/],
    [
      "op 99",
      (k) => k.mn_unary_backward(n, n, n, n, 99, 4n, -1, S),
      /unary_backward: unknown op code 99/,
    ],
    ["n < 0", (k) => k.mn_unary_forward(n, n, tanh, -1n, S), /unary_forward: n = -1/],
    [
      "tanh without out",
      (k) => k.mn_unary_backward(n, n, n, n, tanh, 4n, -1, S),
      /required|needs the forward output/,
    ],
    ["mul n < 0", (k) => k.mn_mul_forward(n, n, n, -5n, S), /mul_forward: n = -5/],
    [
      "lerp n < 0",
      (k) => k.mn_lerp_backward(n, n, n, n, n, n, n, -2n, -1, S),
      /lerp_backward: n = -2/,
    ],
    [
      "row N = 0",
      (k) => k.mn_add_row_vector_forward(n, n, n, 0, 4, S),
      /add_row_vector_forward: bad shape N = 0/,
    ],
    [
      "row C < 0",
      (k) => k.mn_mul_row_vector_backward(n, n, n, n, n, 3, -1, -1, S),
      /mul_row_vector_backward: bad shape/,
    ],
    [
      "shift T = 0",
      (k) => k.mn_time_shift_forward(n, n, 1, 0, 4, S),
      /time_shift_forward: bad shape/,
    ],
    [
      "shift in place",
      (k) => k.mn_time_shift_forward(n, n, 1, 2, 4, S),
      /in-place is not supported/,
    ],
    [
      "l2norm D = 0",
      (k) => k.mn_l2norm_forward(n, n, 4, 0, 1e-12, S),
      /l2norm_forward: bad shape N = 4, D = 0/,
    ],
    [
      "l2norm eps < 0",
      (k) => k.mn_l2norm_backward(n, n, n, 4, 4, -1, -1, S),
      /eps = -1 must be >= 0/,
    ],
    [
      "groupnorm G = 0",
      (k) => k.mn_groupnorm_forward(n, n, n, n, n, n, 2, 0, 16, 1e-5, S),
      /groupnorm_forward: bad shape/,
    ],
    [
      "groupnorm eps NaN",
      (k) => k.mn_groupnorm_forward(n, n, n, n, n, n, 2, 2, 16, NaN, S),
      /eps = nan must be >= 0/,
    ],
    [
      "bonus H = 0",
      (k) => k.mn_rwkv7_bonus_forward(n, n, n, n, n, 2, 0, 64, S),
      /rwkv7_bonus_forward: bad shape/,
    ],
    [
      "bonus D too big",
      (k) => k.mn_rwkv7_bonus_backward(n, n, n, n, n, n, n, n, n, 2, 2, 2000, -1, S),
      /D = 2000 > 1024/,
    ],
  ];
  for (const name of ["cpu", "emu"] as const) {
    const be = backend(name);
    for (const [what, call, re] of cases) assert.throws(() => call(be.k), re, `${name}: ${what}`);
  }
});

Deno.test("abi: #define NAME <int> constants are parsed, other defines are not", () => {
  const text = "#define MN_OP_A 1  /* one */\n  #define MN_OP_B -7\n#define MN_API extern\n" +
    "#define MN_X 1.5\n#define MN_GUARD\n";
  assert.deepEqual(parseHeaderConstants(text), { MN_OP_A: 1, MN_OP_B: -7 });
  assert.throws(() => parseHeaderConstants("#define A 1\n#define A 2\n"), /A is defined twice/);
  assert.equal(HEADER.MN_OP_TANH, opCode("TANH"));
});

/** The bf16 unary kernels on `be` against its own fp32 ones on the widened values, bit for bit. */
function checkUnaryBf16(name: string, be: Backend) {
  const n = 1000;
  const rng = new Rng(SEED + 7);
  const xb = f32ToBf16(rng.normal(n, 2)), doutB = f32ToBf16(rng.normal(n)), dx0 = rng.normal(n);
  const [x, dout] = [bf16ToF32(xb), bf16ToF32(doutB)]; // the bf16 values, widened
  const round = (a: Float32Array) => bf16ToF32(f32ToBf16(a));
  const N = BigInt(n);
  for (const op of ["TANH", "SIGMOID", "RWKV7_DECAY", "EXP_MIN0", "NEG"] as const) {
    const code = opCode(op);
    // bf16: out, then dx from a bf16 or fp32 dout into a bf16 (overwritten) or fp32 (+=) dx
    const b = withTensors(be, {
      x: { data: xb, shape: [n], dtype: "bf16" },
      doutB: { data: doutB, shape: [n], dtype: "bf16" },
      doutF: { data: dout, shape: [n] },
    }, {
      out: { shape: [n], dtype: "bf16" },
      dxBB: { shape: [n], dtype: "bf16" },
      dxBF: { shape: [n], init: dx0 },
      dxFF: { shape: [n], init: dx0 },
    }, (t) => {
      be.k.mn_unary_forward_bf16(t.out.ptr, t.x.ptr, code, N, be.stream);
      const bwd = (dx: Tensor, d: Tensor, doutBf16: number, dxBf16: number, acc: number) =>
        be.k.mn_unary_backward_bf16(
          dx.ptr,
          d.ptr,
          t.x.ptr,
          t.out.ptr,
          code,
          N,
          doutBf16,
          dxBf16,
          acc,
          be.stream,
        );
      assert.equal(bwd(t.dxBB, t.doutB, 1, 1, 0), 0, be.lastError());
      assert.equal(bwd(t.dxBF, t.doutB, 1, 0, 1), 0, be.lastError());
      assert.equal(bwd(t.dxFF, t.doutF, 0, 0, 1), 0, be.lastError());
      assert.throws(
        () => bwd(t.dxBB, t.doutB, 1, 1, 1),
        /unary_backward_bf16: a bf16 dx is overwritten/,
      );
    });
    // fp32 kernels on the widened values (out rounded as the bf16 forward stores it)
    const outR = round(
      withTensors(
        be,
        { x: { data: x, shape: [n] } },
        { out: { shape: [n] } },
        (t) => be.k.mn_unary_forward(t.out.ptr, t.x.ptr, code, N, be.stream),
      ).out as Float32Array,
    );
    const f = withTensors(
      be,
      {
        x: { data: x, shape: [n] },
        out: { data: outR, shape: [n] },
        dout: { data: dout, shape: [n] },
      },
      { dxOver: { shape: [n] }, dxAdd: { shape: [n], init: dx0 } },
      (t) => {
        for (const [dx, acc] of [[t.dxOver, 0], [t.dxAdd, 1]] as const) {
          be.k.mn_unary_backward(dx.ptr, t.dout.ptr, t.x.ptr, t.out.ptr, code, N, acc, be.stream);
        }
      },
    );
    const what = `${name} ${op}`;
    compare(`${what} out`, b.out, outR, EXACT);
    compare(`${what} bf16 dx`, b.dxBB, round(f.dxOver as Float32Array), EXACT);
    compare(`${what} fp32 dx from bf16 dout`, b.dxBF, f.dxAdd, EXACT);
    compare(`${what} fp32 dx from fp32 dout`, b.dxFF, f.dxAdd, EXACT);
  }
}
const UNARY_BF16 =
  "unary bf16: the fp32 op on the bf16 values rounded once; dout bf16 or fp32, dx bf16 (the fp32 one rounded once) or fp32 (+=); bit for bit";
Deno.test(`${UNARY_BF16} (cpu)`, () => checkUnaryBf16("cpu", backend("cpu")));
testTargets((t) => `${UNARY_BF16} (${t})`, (_ref, be, tname) => checkUnaryBf16(tname, be));
