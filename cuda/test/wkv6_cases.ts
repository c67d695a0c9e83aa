// WKV-6 test pieces shared by cuda/wkv6_test.ts (the sequential kernels) and
// cuda/wkv6_chunked_test.ts (the chunked --fla_cuda kernels): inputs, names, and one
// forward+backward runner for every entry point. No Deno.test here.
import type { Backend, Dtype, HostArray } from "../backend.ts";
import { f32ToBf16 } from "../backend.ts";
import type { Rng } from "./harness.ts";
import { withTensors } from "./harness.ts";
import { numel, type Shape } from "./wkv_cases.ts";

export const INPUTS = ["r", "k", "v", "w"] as const;
export const GRADS = ["dr", "dk", "dv", "dw", "du"] as const;
export type InputName = typeof INPUTS[number];
export type GradName = typeof GRADS[number];
/** bf16 r, k, v, w (exact inputs to every implementation); fp32 u [H, N] and dy */
export type Inputs = Record<InputName, Uint16Array> & { u: Float32Array; dy: Float32Array };
/** fp32 r, k, v, w for the mn_wkv6_*_f32 entry points */
export type InputsF32 = Record<InputName, Float32Array> & { u: Float32Array; dy: Float32Array };
export type Kind = "model" | "random" | "extreme";
/** "wkv6": mn_wkv6_*; "wkv6_f32": mn_wkv6_*_f32; "chunked": mn_wkv6_chunked_* */
export type Impl = "wkv6" | "wkv6_f32" | "chunked";

export const gradShape = (s: Shape, g: GradName) => g === "du" ? [s.H, s.N] : [s.B, s.T, s.H, s.N];
export const gradNumel = (s: Shape, g: GradName) => gradShape(s, g).reduce((a, b) => a * b, 1);
export const zeroGrads = (s: Shape) => GRADS.map((g) => new Float32Array(gradNumel(s, g)));

/**
 * "model": as the RWKV-6 model makes them: w = time_decay + lora, time_decay per channel in
 * (-6, -1) plus a tanh-bounded per-token part of +-0.9, so w in about (-6.9, -0.1) and
 * d = exp(-exp(w)) in (0.40, 0.999); k pre-scaled by exp(min(w, 0)); u (time_faaaa) in (-1, 1).
 * "random": r, k, v, u uniform in (-1, 1), w uniform in wRange.
 * "extreme": as "random" but half the channels w in (2, 4) (d down to 1e-24 per step, chunk
 * products far below fp32's range), the rest w in (-12, -8) (d within 6e-6 of 1: almost no decay).
 */
export function makeInputs(
  rng: Rng,
  s: Shape,
  kind: Kind,
  wRange: [number, number] = [-6, 1],
): Inputs {
  const n = numel(s), { H, N } = s;
  let r: Float32Array, k: Float32Array, v: Float32Array, w: Float32Array;
  const u = rng.uniform(H * N, -1, 1);
  if (kind === "model") {
    const decay = rng.uniform(H * N, -6, -1), lora = rng.normal(n);
    w = lora.map((z, g) => decay[g % (H * N)] + 0.9 * Math.tanh(z));
    r = rng.normal(n);
    k = rng.normal(n).map((z, g) => z * Math.exp(Math.min(w[g], 0)));
    v = rng.normal(n);
  } else {
    r = rng.uniform(n, -1, 1);
    k = rng.uniform(n, -1, 1);
    v = rng.uniform(n, -1, 1);
    w = kind === "random"
      ? rng.uniform(n, wRange[0], wRange[1])
      : rng.uniform(n, 0, 1).map((z, g) => (g % N) % 2 ? 2 + 2 * z : -12 + 4 * z);
  }
  return {
    r: f32ToBf16(r),
    k: f32ToBf16(k),
    v: f32ToBf16(v),
    w: f32ToBf16(w),
    u,
    dy: rng.normal(n),
  };
}

/** mn_wkv6_chunked_sizes: elements of s_ckpt and of the backward's workspace */
export function chunkedSizes(be: Backend, s: Shape): { ckpt: number; ws: number } {
  const out = new BigInt64Array(2);
  be.k.mn_wkv6_chunked_sizes(out.subarray(0, 1), out.subarray(1, 2), s.B, s.T, s.H, s.N);
  return { ckpt: Number(out[0]), ws: Number(out[1]) };
}

/**
 * Forward then backward of `impl` on `be`; gradients start from `gradInit` (+=). `x` holds bf16
 * r, k, v, w, or fp32 ones for "wkv6_f32". Returns y, (chunked: s_ckpt,) and the gradients.
 */
export function runWkv6(
  be: Backend,
  impl: Impl,
  s: Shape,
  x: Inputs | InputsF32,
  gradInit: Float32Array[],
  acc = -1, // the backward's accumulate mask (kernels.h)
): Record<string, Float32Array> {
  const { B, T, H, N } = s, shp = [B, T, H, N];
  const dtype = impl === "wkv6_f32" ? "f32" : "bf16";
  const inputs: Record<string, { data: HostArray; shape: number[]; dtype?: Dtype }> = {
    u: { data: x.u, shape: [H, N] },
    dy: { data: x.dy, shape: shp },
  };
  for (const name of INPUTS) inputs[name] = { data: x[name], shape: shp, dtype };
  const outputs: Record<string, { shape: number[]; init?: Float32Array }> = { y: { shape: shp } };
  if (impl === "chunked") {
    const { ckpt, ws } = chunkedSizes(be, s);
    outputs.s_ckpt = { shape: [ckpt] }; // [B,H,NC,N,N]
    outputs.ws = { shape: [ws] };
  } else {
    outputs.ws = { shape: [B * H * N * (T + 1)] };
  }
  GRADS.forEach((g, i) => (outputs[g] = { shape: gradShape(s, g), init: gradInit[i] }));
  const out = withTensors(be, inputs, outputs, (t) => {
    const ins = [t.r.ptr, t.k.ptr, t.v.ptr, t.w.ptr, t.u.ptr] as const;
    const grads = GRADS.map((g) => t[g].ptr);
    if (impl === "chunked") {
      be.k.mn_wkv6_chunked_forward(t.y.ptr, t.s_ckpt.ptr, ...ins, B, T, H, N, be.stream);
      be.k.mn_wkv6_chunked_backward(
        ...grads,
        t.dy.ptr,
        ...ins,
        t.s_ckpt.ptr,
        t.ws.ptr,
        B,
        T,
        H,
        N,
        acc,
        be.stream,
      );
    } else {
      const [fwd, bwd] = impl === "wkv6_f32"
        ? [be.k.mn_wkv6_forward_f32, be.k.mn_wkv6_backward_f32]
        : [be.k.mn_wkv6_forward, be.k.mn_wkv6_backward];
      fwd(t.y.ptr, ...ins, B, T, H, N, be.stream);
      bwd(...grads, t.dy.ptr, ...ins, t.ws.ptr, B, T, H, N, acc, be.stream);
    }
  }) as Record<string, Float32Array>;
  delete out.ws;
  return out;
}

/** Runs `fn` with device buffers for the argument checks: fp32 y, g (2*32*2*128 elements), ws
 * (twice that) and a bf16 i, all large enough for any shape the checks pass. */
export function withArgBuffers(
  be: Backend,
  fn: (
    y: Deno.PointerValue,
    g: Deno.PointerValue,
    ws: Deno.PointerValue,
    i: Deno.PointerValue,
  ) => void,
) {
  const n = 2 * 32 * 2 * 128;
  withTensors(be, {}, {
    y: { shape: [n] },
    g: { shape: [n] },
    ws: { shape: [n * 2] },
    i: { shape: [n], dtype: "bf16" },
  }, (t) => fn(t.y.ptr, t.g.ptr, t.ws.ptr, t.i.ptr));
}
