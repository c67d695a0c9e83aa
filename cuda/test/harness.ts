// Kernel-check harness shared by cuda/*_test.ts.
//
// checkKernel() registers, for one kernel, one Deno test per target backend: emu vs cpu always,
// cuda vs cpu when a GPU is visible (otherwise the test is registered ignored, so `deno test`
// counts it as skipped). Under the sanitizer runs (MN_TEST_VARIANT=tsan|asan, started by
// cuda/sanitizers_test.ts with the runtime preloaded) the emu target is the sanitized library.
//
// Each run gets a fresh random seed (or $MN_TEST_SEED); a failure prints it so it can be replayed.
// Outputs are poisoned (all bytes 0xFF = NaN) before the call, so an element the kernel forgot to
// write fails the comparison.
import assert from "node:assert/strict";
import {
  Backend,
  type BackendName,
  type Dtype,
  gpuVisible,
  type HostArray,
  type Tensor,
  type Variant,
} from "../backend.ts";

export const VARIANT = (Deno.env.get("MN_TEST_VARIANT") ?? "") as Variant;
export const SEED = Number(Deno.env.get("MN_TEST_SEED") ?? Math.floor(Math.random() * 2 ** 31));
export const HAS_GPU = VARIANT === "" && gpuVisible();

/** The environment that keeps a sanitized run's process free of thread pools the sanitizer cannot
 * see into: the cpu reference loaded beside the sanitized emu library would otherwise start
 * OpenBLAS's and libgomp's (uninstrumented) workers, whose synchronisation ThreadSanitizer misses,
 * so it reports races inside them (seen with OpenBLAS's Haswell kernels: sgemm_beta vs a memset). */
export const SINGLE_THREADED_REFERENCE = { OPENBLAS_NUM_THREADS: "1", OMP_NUM_THREADS: "1" };

const cache = new Map<string, Backend>();
export function backend(name: BackendName, variant: Variant = ""): Backend {
  const key = `${name}:${variant}`;
  let be = cache.get(key);
  if (!be) {
    const threaded = Object.entries(SINGLE_THREADED_REFERENCE)
      .filter(([k, v]) => Deno.env.get(k) !== v).map(([k, v]) => `${k}=${v}`);
    if (VARIANT && name === "cpu" && threaded.length) {
      throw new Error(
        `sanitized run (MN_TEST_VARIANT=${VARIANT}): the cpu reference needs ${
          threaded.join(" ")
        } (cuda/sanitizers_test.ts sets them)`,
      );
    }
    be = Backend.open({ name, variant });
    cache.set(key, be);
  }
  return be;
}

/** The backends a kernel is checked on against cpu, with whether each can run here. */
export function targets(): { name: BackendName; variant: Variant; run: boolean }[] {
  if (VARIANT) return [{ name: "emu", variant: VARIANT, run: true }];
  return [
    { name: "emu", variant: "", run: true },
    { name: "cuda", variant: "", run: HAS_GPU },
  ];
}

/** mulberry32: small, fast, seedable. */
export class Rng {
  private s: number;
  constructor(seed: number) {
    this.s = seed >>> 0;
  }
  next(): number {
    let t = (this.s += 0x6d2b79f5);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  uniform(n: number, lo = -1, hi = 1): Float32Array {
    const a = new Float32Array(n);
    for (let i = 0; i < n; i++) a[i] = lo + (hi - lo) * this.next();
    return a;
  }
  normal(n: number, std = 1): Float32Array {
    const a = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      const u = Math.max(this.next(), 1e-12), v = this.next();
      a[i] = std * Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
    }
    return a;
  }
  ints(n: number, hi: number): Int32Array {
    const a = new Int32Array(n);
    for (let i = 0; i < n; i++) a[i] = Math.floor(this.next() * hi);
    return a;
  }
}

/** A tensor filled with 0xFF bytes (NaN in f32 and bf16), so unwritten outputs are caught. */
export function poisoned(be: Backend, shape: readonly number[], dtype: Dtype = "f32"): Tensor {
  const t = be.alloc(shape, dtype);
  be.k.mn_memset(t.ptr, 0xff, BigInt(t.nbytes), be.stream);
  return t;
}

export interface Tol {
  atol: number;
  rtol: number;
}
// llm.c's rule: |got - want| <= atol + rtol * |want|.
export const TOL_F32: Tol = { atol: 1e-5, rtol: 1e-5 };
// bf16 has 8 mantissa bits: one rounding step is 2^-8 relative; two independent roundings can
// differ by one ulp.
export const TOL_BF16: Tol = { atol: 1e-5, rtol: 2 ** -7 };
export const EXACT: Tol = { atol: 0, rtol: 0 };

export function compare(what: string, got: ArrayLike<number>, want: ArrayLike<number>, tol: Tol) {
  if (got.length !== want.length) {
    throw new Error(`${what}: length ${got.length}, expected ${want.length} (seed ${SEED})`);
  }
  let worst = -1, worstExcess = 0, bad = 0;
  for (let i = 0; i < got.length; i++) {
    const g = got[i], w = want[i];
    const err = Math.abs(g - w);
    const limit = tol.atol + tol.rtol * Math.abs(w);
    const ok = Number.isNaN(w) ? Number.isNaN(g) : g === w || err <= limit;
    if (!ok) {
      bad++;
      const excess = Number.isNaN(err) ? Infinity : err - limit;
      if (worst < 0 || excess > worstExcess) [worst, worstExcess] = [i, excess];
    }
  }
  if (bad) {
    throw new Error(
      `${what}: ${bad}/${got.length} elements off; worst at [${worst}]: got ${got[worst]}, ` +
        `want ${
          want[worst]
        } (atol ${tol.atol}, rtol ${tol.rtol}; replay with MN_TEST_SEED=${SEED})`,
    );
  }
}

export interface KernelCase<C> {
  /** test name prefix, e.g. "rmsnorm_forward" */
  name: string;
  /** configurations (shapes); include sizes that are not multiples of the block size */
  configs: C[];
  /** runs the kernel on `be` for inputs drawn from `rng` (same seed on both backends) and returns
   * its outputs downloaded to the host, as f32 arrays (or exact integer arrays). */
  run: (be: Backend, cfg: C, rng: Rng) => Record<string, ArrayLike<number>>;
  /** tolerance per output name (or one for all) */
  tol: Tol | Record<string, Tol>;
  /** label for a config in messages */
  label?: (cfg: C) => string;
}

export function checkKernel<C>(kc: KernelCase<C>) {
  for (const t of targets()) {
    const tname = t.variant ? `${t.name}-${t.variant}` : t.name;
    Deno.test({
      name: `${kc.name}: ${tname} vs cpu`,
      ignore: !t.run,
      fn() {
        const ref = backend("cpu");
        const be = backend(t.name, t.variant);
        kc.configs.forEach((cfg, ci) => {
          const lbl = kc.label ? kc.label(cfg) : JSON.stringify(cfg);
          const want = kc.run(ref, cfg, new Rng(SEED + ci));
          const got = kc.run(be, cfg, new Rng(SEED + ci));
          for (const key of Object.keys(want)) {
            const tol = "atol" in kc.tol ? kc.tol as Tol : (kc.tol as Record<string, Tol>)[key];
            if (!tol) throw new Error(`${kc.name}: no tolerance for output ${key}`);
            compare(`${kc.name} ${lbl} ${key} (${tname} vs cpu)`, got[key], want[key], tol);
          }
        });
      },
    });
  }
}

/** Uploads host arrays, runs `fn`, downloads `outputs`, frees everything it allocated. */
export function withTensors(
  be: Backend,
  inputs: Record<string, { data: HostArray; shape: number[]; dtype?: Dtype }>,
  outputs: Record<string, { shape: number[]; dtype?: Dtype; init?: HostArray }>,
  fn: (t: Record<string, Tensor>) => void,
): Record<string, Float32Array | Int32Array> {
  const t: Record<string, Tensor> = {};
  try {
    for (const [k, v] of Object.entries(inputs)) t[k] = be.upload(v.data, v.shape, v.dtype, k);
    for (const [k, v] of Object.entries(outputs)) {
      if (v.init) t[k] = be.upload(v.init, v.shape, v.dtype, k);
      else t[k] = poisoned(be, v.shape, v.dtype);
    }
    fn(t);
    const res: Record<string, Float32Array | Int32Array> = {};
    for (const k of Object.keys(outputs)) {
      res[k] = t[k].dtype === "i32" ? be.download(t[k]) as Int32Array : be.downloadF32(t[k]);
    }
    return res;
  } finally {
    for (const v of Object.values(t)) be.free(v);
  }
}

/**
 * Central finite differences of the scalar L(x) = sum(g * f(x)) in float64: the gradient a
 * backward kernel must produce for upstream gradient g. `f` is an independent float64 forward.
 */
export function numericalGrad(
  f: (x: Float64Array) => ArrayLike<number>,
  x: Float64Array,
  g: ArrayLike<number>,
  h = 1e-6,
): Float64Array {
  const out = new Float64Array(x.length);
  const dot = (y: ArrayLike<number>) => {
    let s = 0;
    for (let i = 0; i < y.length; i++) s += g[i] * y[i];
    return s;
  };
  for (let i = 0; i < x.length; i++) {
    const x0 = x[i];
    x[i] = x0 + h;
    const up = dot(f(x));
    x[i] = x0 - h;
    const down = dot(f(x));
    x[i] = x0;
    out[i] = (up - down) / (2 * h);
  }
  return out;
}

export const f64 = (a: ArrayLike<number>) => Float64Array.from(a);

/** max |a[i]| */
export function maxAbs(a: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]));
  return m;
}

/** normwise relative error max|got - want| / max|want| (for tensors whose elements can be tiny) */
export function relErr(got: ArrayLike<number>, want: ArrayLike<number>): number {
  let e = 0;
  for (let i = 0; i < got.length; i++) e = Math.max(e, Math.abs(got[i] - want[i]));
  return e / Math.max(maxAbs(want), 1e-30);
}

/** compare() with a normwise bound: every element within rel * max|want| */
export function compareRel(
  what: string,
  got: ArrayLike<number>,
  want: ArrayLike<number>,
  rel: number,
) {
  compare(what, got, want, { atol: rel * maxAbs(want), rtol: 0 });
}

/** "key 1.2e-7, key 3.4e-6" for printing measured errors */
export function fmtErrors(o: Record<string, number>): string {
  return Object.entries(o).map(([k, v]) => `${k} ${v.toExponential(1)}`).join(", ");
}

// ---- pieces shared by the kernel tests' own loops ------------------------------------------------

/** "emu", "cuda", or "emu-tsan" under a sanitizer variant: how test names spell a target. */
export const targetName = (t: { name: BackendName; variant: Variant }) =>
  t.variant ? `${t.name}-${t.variant}` : t.name;

/** Whether the cuda backend runs here (a GPU is visible and no sanitizer variant is selected). */
export const CUDA_RUNS = targets().some((t) => t.name === "cuda" && t.run);

/**
 * Registers one Deno test per target (as checkKernel does, for tests with their own loops): named
 * `name(tname)`, ignored where the target cannot run, `fn` gets the cpu reference and the target.
 */
export function testTargets(
  name: (tname: string) => string,
  fn: (ref: Backend, be: Backend, tname: string, target: { name: BackendName }) => void,
) {
  for (const tgt of targets()) {
    const tname = targetName(tgt);
    Deno.test({
      name: name(tname),
      ignore: !tgt.run,
      fn: () => fn(backend("cpu"), backend(tgt.name, tgt.variant), tname, tgt),
    });
  }
}

/** max |got[i] - want[i]| */
export function maxAbsDiff(got: ArrayLike<number>, want: ArrayLike<number>): number {
  let e = 0;
  for (let i = 0; i < got.length; i++) e = Math.max(e, Math.abs(got[i] - want[i]));
  return e;
}

/** a - b elementwise (in fp32) */
export const minus = (a: Float32Array, b: ArrayLike<number>) => a.map((z, i) => z - b[i]);

/**
 * The outputs of a backward that accumulated onto `init` (gradient `grads[i]` started at
 * `init[i]`), with those gradients replaced by what the call added; other outputs as they are.
 * Keeps the key order.
 */
export function addedPart(
  out: Record<string, Float32Array>,
  grads: readonly string[],
  init: Float32Array[],
): Record<string, Float32Array> {
  const res: Record<string, Float32Array> = {};
  for (const key of Object.keys(out)) {
    const gi = grads.indexOf(key);
    res[key] = gi >= 0 ? minus(out[key], init[gi]) : out[key];
  }
  return res;
}

/**
 * The accumulate-and-determinism check of a backward kernel: `run(gradInit)` runs forward then
 * backward with the gradients starting at gradInit. Run from `zero` twice and from `init` once:
 * the outputs named in `same` and every gradient must be bit-identical between the two runs from
 * zero; each gradient from `init` must be init + (the gradient from zero), one fp32 addition, bit
 * for bit; and no gradient may be all zero. Messages start with `what`.
 *
 * `fmaContracted` (cuda): nvcc fuses a kernel's last `acc * x + grad` into one fused multiply-add,
 * which rounds once where (init + g) rounds twice, so the first H200 run found 1-ulp differences
 * in 6 of 6 kernels. There each element may differ from init + g by 1e-6 (|init| + |g|), about 8
 * ulps: an overwrite or a second addition is off by |init| or |g|, far outside that.
 */
export function checkAccumulates(
  what: string,
  run: (gradInit: Float32Array[]) => Record<string, ArrayLike<number>>,
  grads: readonly string[],
  zero: Float32Array[],
  init: Float32Array[],
  same: readonly string[] = [],
  fmaContracted = false,
) {
  const g0 = run(zero);
  const g1 = run(init);
  const again = run(zero);
  for (const key of same) compare(`${what} ${key} rerun`, again[key], g0[key], EXACT);
  grads.forEach((g, i) => {
    // same inputs, same bits; and init + g is one fp32 addition of the same g
    compare(`${what} ${g} rerun`, again[g], g0[g], EXACT);
    const expect = init[i].map((z, j) => Math.fround(z + g0[g][j]));
    if (!fmaContracted) compare(`${what} ${g} += init`, g1[g], expect, EXACT);
    else {
      let bad = 0, worst = 0, at = -1;
      for (let j = 0; j < expect.length; j++) {
        const d = Math.abs(g1[g][j] - expect[j]);
        const r = d / (1e-6 * (Math.abs(init[i][j]) + Math.abs(g0[g][j])) + 1e-30);
        if (!(r <= 1)) bad++;
        if (!(r <= worst)) (worst = r), (at = j);
      }
      assert.equal(
        bad,
        0,
        `${what} ${g} += init: ${bad}/${expect.length} elements off by more than 1e-6 (|init| + |g|); ` +
          `worst at [${at}]: got ${g1[g][at]}, want ${
            expect[at]
          } (replay with MN_TEST_SEED=${SEED})`,
      );
    }
    assert.ok(maxAbs(g0[g]) > 0, `${what} ${g} is all zero`);
  });
}

/**
 * Registers `title (<backend>)` for cpu, emu and cuda (cuda ignored without a GPU): checks of one
 * backend against itself (two of its entry points, or a variant and the plain kernel).
 */
export function testEachBackend(title: string, fn: (name: "cpu" | "emu" | "cuda") => void) {
  for (const name of ["cpu", "emu", "cuda"] as const) {
    Deno.test({
      name: `${title} (${name})`,
      ignore: name === "cuda" && !CUDA_RUNS,
      fn: () => fn(name),
    });
  }
}

/** Registers `<kernel>: backward accumulates (+=) and is deterministic (<backend>)` per backend
 * in `names` (cuda ignored without a GPU; all ignored when `ignore`); `fn` gets the name. */
export function testAccumulates(
  kernel: string,
  names: readonly ("cpu" | "emu" | "cuda")[],
  fn: (name: "cpu" | "emu" | "cuda") => void,
  ignore = false,
) {
  for (const name of names) {
    Deno.test({
      name: `${kernel}: backward accumulates (+=) and is deterministic (${name})`,
      ignore: ignore || (name === "cuda" && !CUDA_RUNS),
      fn: () => fn(name),
    });
  }
}

/**
 * Runs `fn` for every shape and kind with its own Rng(SEED + seedBase + 10 * shape index + kind
 * index), the same on every backend: the sweep of the kernels' emu/cuda-vs-cpu tests.
 */
export function forShapesAndKinds<S, K>(
  shapes: readonly S[],
  kinds: readonly K[],
  fn: (s: S, kind: K, rng: Rng) => void,
  seedBase = 0,
) {
  shapes.forEach((s, si) =>
    kinds.forEach((kind, ki) => fn(s, kind, new Rng(SEED + seedBase + 10 * si + ki)))
  );
}

/** [B, T, H, head size, what the error message must match] */
export type ShapeCase = [number, number, number, number, RegExp];

/**
 * Bad-shape checks: for each case every entry point in `calls` (name, call with B, T, H and the
 * head size) must throw, its error matching `match(name, re)` (by default just `re`). Assertion
 * messages "<backend> B=.. T=.. H=.. <dim>=..".
 */
export function checkShapeErrors(
  backendName: string,
  dim: string,
  cases: readonly ShapeCase[],
  calls: [string, (B: number, T: number, H: number, X: number) => unknown][],
  match: (entry: string, re: RegExp) => RegExp | ((e: unknown) => boolean) = (_, re) => re,
) {
  for (const [B, T, H, X, re] of cases) {
    const where = `${backendName} B=${B} T=${T} H=${H} ${dim}=${X}`;
    for (const [entry, call] of calls) {
      assert.throws(() => call(B, T, H, X), match(entry, re), where);
    }
  }
}

/** An error whose message names the entry point ("<entry>: ") and matches `re`. */
export const errorFrom = (entry: string, re: RegExp) => (e: unknown) =>
  e instanceof Error && e.message.includes(`${entry}: `) && re.test(e.message);

/** A seed list for the sweep tools (tools/*_sweep.ts): "A-B" (inclusive) or "A,B,C". */
export function seedList(spec: string): number[] {
  const m = /^(\d+)-(\d+)$/.exec(spec);
  if (m && Number(m[1]) <= Number(m[2])) {
    return Array.from({ length: Number(m[2]) - Number(m[1]) + 1 }, (_, i) => Number(m[1]) + i);
  }
  const list = spec.split(",").map(Number);
  if (!list.every(Number.isInteger)) {
    throw new Error(`--seeds ${spec}: expected a range A-B or a list A,B,C`);
  }
  return list;
}
