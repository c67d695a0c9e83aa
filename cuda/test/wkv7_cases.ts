// WKV-7 test pieces shared by cuda/wkv7_test.ts (backstepping mn_wkv7_*, recompute mn_wkv7g_*)
// and cuda/wkv7_wind_test.ts (tensor-core mn_wkv7_wind_*): inputs, names, and one
// forward+backward runner for every entry point. No Deno.test here.
import type { Backend, Dtype, HostArray } from "../backend.ts";
import { f32ToBf16 } from "../backend.ts";
import type { Rng, ShapeCase } from "./harness.ts";
import { withTensors } from "./harness.ts";
import { numel, type Shape } from "./wkv_cases.ts";

export const CHUNK = 16;
export const INPUTS = ["r", "w", "k", "v", "a", "b"] as const;
export const GRADS = ["dr", "dw", "dk", "dv", "da", "db"] as const;
export type InputName = typeof INPUTS[number];
/** bf16 r, w, k, v, a, b (exact inputs to every implementation); fp32 dy */
export type Inputs = Record<InputName, Uint16Array> & { dy: Float32Array };
/** fp32 inputs of mn_wkv7g_*_f32 (not rounded to bf16) */
export type InputsF32 = Record<InputName, Float32Array> & { dy: Float32Array };
export type Kind = "model" | "random";
/** "wkv7": backstepping mn_wkv7_*; "wkv7g": recompute mn_wkv7g_*; "wkv7g_f32": its fp32-input
 * mn_wkv7g_*_f32; "wind": tensor-core mn_wkv7_wind_* (the same ABI and buffers as "wkv7") */
export type Impl = "wkv7" | "wkv7g" | "wkv7g_f32" | "wind";

export const zeroGrads = (s: Shape) => GRADS.map(() => new Float32Array(numel(s)));

const softplus = (z: number) => (z > 0 ? z + Math.log1p(Math.exp(-z)) : Math.log1p(Math.exp(z)));

/**
 * Inputs as the model makes them ("model": w = -softplus(-x) - 0.5 so d in (0.545, 1); a = -kk,
 * b = kk * alpha with kk L2-normalised per head and alpha in (0, 1); r, v ~ N(0, 1),
 * k ~ N(0, 0.25)), or independent random ones with small magnitudes ("random"; w uniform in
 * wRange, a, b uniform in +-1/sqrt(N)). All fp32 (see makeInputs for bf16); dy ~ N(0, 1).
 */
export function makeInputsF32(
  rng: Rng,
  s: Shape,
  kind: Kind,
  wRange: [number, number] = [-2.5, -0.5],
): InputsF32 {
  const n = numel(s), N = s.N;
  let r: Float32Array,
    w: Float32Array,
    k: Float32Array,
    v: Float32Array,
    a: Float32Array,
    b: Float32Array;
  if (kind === "model") {
    const x = rng.normal(n);
    w = x.map((xi) => -softplus(-xi) - 0.5);
    const kk = rng.normal(n), alpha = rng.uniform(n, 0, 1);
    for (let g = 0; g < n; g += N) {
      let ss = 0;
      for (let i = 0; i < N; i++) ss += kk[g + i] ** 2;
      const inv = 1 / Math.max(Math.sqrt(ss), 1e-12);
      for (let i = 0; i < N; i++) kk[g + i] *= inv;
    }
    a = kk.map((z) => -z);
    b = kk.map((z, i) => z * alpha[i]);
    r = rng.normal(n);
    k = rng.normal(n, 0.5);
    v = rng.normal(n);
  } else {
    w = rng.uniform(n, wRange[0], wRange[1]);
    r = rng.uniform(n, -1, 1);
    k = rng.uniform(n, -1, 1);
    v = rng.uniform(n, -1, 1);
    a = rng.uniform(n, -1 / Math.sqrt(N), 1 / Math.sqrt(N));
    b = rng.uniform(n, -1 / Math.sqrt(N), 1 / Math.sqrt(N));
  }
  return { r, w, k, v, a, b, dy: rng.normal(n) };
}

/** makeInputsF32 with r, w, k, v, a, b rounded to bf16; dy stays fp32. */
export function makeInputs(
  rng: Rng,
  s: Shape,
  kind: Kind,
  wRange: [number, number] = [-2.5, -0.5],
): Inputs {
  const x = makeInputsF32(rng, s, kind, wRange);
  return {
    r: f32ToBf16(x.r),
    w: f32ToBf16(x.w),
    k: f32ToBf16(x.k),
    v: f32ToBf16(x.v),
    a: f32ToBf16(x.a),
    b: f32ToBf16(x.b),
    dy: x.dy,
  };
}

/**
 * Forward then backward of `impl` on `be`; gradients start from `gradInit` (+=). `x` holds bf16
 * inputs, or fp32 ones for "wkv7g_f32". Returns y, s_ckpt, (wkv7, wind: sa,) and the gradients.
 */
export function runWkv7(
  be: Backend,
  impl: Impl,
  s: Shape,
  x: Inputs | InputsF32,
  gradInit: Float32Array[],
  acc = -1, // the backward's accumulate mask (kernels.h)
  bf16 = { drkv: false, dwab: false }, // wkv7, wind: dr, dk, dv / dw, da, db in bf16
): Record<string, Float32Array> {
  const { B, T, H, N } = s, shp = [B, T, H, N];
  const dtype = impl === "wkv7g_f32" ? "f32" : "bf16";
  const inputs: Record<string, { data: HostArray; shape: number[]; dtype?: Dtype }> = {
    dy: { data: x.dy, shape: shp },
  };
  for (const name of INPUTS) inputs[name] = { data: x[name], shape: shp, dtype };
  const outputs: Record<string, { shape: number[]; init?: HostArray; dtype?: Dtype }> = {
    y: { shape: shp },
    s_ckpt: { shape: [B, H, T / CHUNK, N, N] },
  };
  // the forward's sa [B,T,H,N] (wkv7, wind), or the recompute backward's ws [B,H,17,N,N]
  if (impl === "wind") outputs.sa = { shape: shp };
  else outputs.scratch = { shape: impl === "wkv7" ? shp : [B, H, CHUNK + 1, N, N] };
  GRADS.forEach((g, i) => {
    const isBf16 = ["dw", "da", "db"].includes(g) ? bf16.dwab : bf16.drkv;
    outputs[g] = isBf16
      ? { shape: shp, init: f32ToBf16(gradInit[i]), dtype: "bf16" }
      : { shape: shp, init: gradInit[i] };
  });
  const out = withTensors(be, inputs, outputs, (t) => {
    const ins = [t.r.ptr, t.w.ptr, t.k.ptr, t.v.ptr, t.a.ptr, t.b.ptr] as const;
    const grads = GRADS.map((g) => t[g].ptr);
    if (impl === "wkv7g" || impl === "wkv7g_f32") {
      const [fwd, bwd] = impl === "wkv7g_f32"
        ? [be.k.mn_wkv7g_forward_f32, be.k.mn_wkv7g_backward_f32]
        : [be.k.mn_wkv7g_forward, be.k.mn_wkv7g_backward];
      fwd(t.y.ptr, t.s_ckpt.ptr, ...ins, B, T, H, N, be.stream);
      bwd(...grads, t.dy.ptr, ...ins, t.s_ckpt.ptr, t.scratch.ptr, B, T, H, N, acc, be.stream);
    } else {
      const [fwd, bwd] = impl === "wind"
        ? [be.k.mn_wkv7_wind_forward, be.k.mn_wkv7_wind_backward]
        : [be.k.mn_wkv7_forward, be.k.mn_wkv7_backward];
      const sa = (impl === "wind" ? t.sa : t.scratch).ptr;
      fwd(t.y.ptr, t.s_ckpt.ptr, sa, ...ins, B, T, H, N, be.stream);
      bwd(
        ...grads,
        t.dy.ptr,
        ...ins,
        t.s_ckpt.ptr,
        sa,
        B,
        T,
        H,
        N,
        bf16.drkv ? 1 : 0,
        bf16.dwab ? 1 : 0,
        acc,
        be.stream,
      );
    }
  }) as Record<string, Float32Array>;
  if (impl === "wkv7") out.sa = out.scratch;
  delete out.scratch;
  return out;
}

/** Shapes every WKV-7 entry point rejects, with what its error message says. */
export const BAD_SHAPES: ShapeCase[] = [
  [1, 24, 1, 64, /T = 24 is not a multiple of the chunk length 16/],
  [1, 16, 1, 48, /head size N = 48 is not supported \(16, 32, 64 or 128\)/],
  [1, 16, 1, 256, /head size N = 256 is not supported/],
  [0, 16, 1, 64, /B = 0, T = 16, H = 1 must all be > 0/],
  [1, 16, 0, 64, /must all be > 0/],
];
