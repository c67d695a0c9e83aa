// Shared by cuda/attention_test.ts (CUDA-core kernels) and cuda/attention_tc_test.ts (tensor
// cores): shapes, inputs, a forward+backward runner for every attention entry point, and the
// checks both files make the same way. No Deno.test here (test files must not import each other).
import assert from "node:assert/strict";
import type { Backend } from "../backend.ts";
import { f32ToBf16 } from "../backend.ts";
import {
  checkAccumulates,
  checkShapeErrors,
  compare,
  compareRel,
  maxAbs,
  maxAbsDiff,
  minus,
  relErr,
  Rng,
  SEED,
  type ShapeCase,
  withTensors,
} from "./harness.ts";

export interface Shape {
  B: number;
  T: number;
  H: number;
  D: number;
}
/** "normal": q, k, v ~ N(0, 1) (scores ~ N(0, 1)); "sharp": q, k ~ N(0, 3), scores with std ~9:
 * nearly one-hot softmax rows, where the running max and the masking must be exactly right. */
export type Kind = "normal" | "sharp";
/** bf16 q, k, v (exact inputs to every implementation); fp32 dout */
export interface Inputs {
  q: Uint16Array;
  k: Uint16Array;
  v: Uint16Array;
  dout: Float32Array;
}
/** fp32 q, k, v for the mn_attention_*_f32 entry points */
export type InputsF32 = { q: Float32Array; k: Float32Array; v: Float32Array; dout: Float32Array };
export const GRADS = ["dq", "dk", "dv"] as const;
/** "cc": the CUDA-core mn_attention_*; "cc_f32": its fp32-input mn_attention_*_f32; "tc": the
 * tensor-core mn_attention_tc_* */
/** cc: CUDA cores; cc_f32: their fp32-input variant; tc: tensor cores; tc_bf16: tensor cores
 * with bf16 out and dout (the dout given is rounded to bf16; out comes back as its fp32 values) */
export type Impl = "cc" | "cc_f32" | "tc" | "tc_bf16";

export const numel = ({ B, T, H, D }: Shape) => B * T * H * D;
export const label = (s: Shape, kind?: string) =>
  `(B=${s.B},T=${s.T},H=${s.H},D=${s.D}${kind ? " " + kind : ""})`;
export const zeroGrads = (s: Shape) => GRADS.map(() => new Float32Array(numel(s)));

export function makeInputs(rng: Rng, s: Shape, kind: Kind = "normal"): Inputs {
  const n = numel(s), std = kind === "sharp" ? 3 : 1;
  return {
    q: f32ToBf16(rng.normal(n, std)),
    k: f32ToBf16(rng.normal(n, std)),
    v: f32ToBf16(rng.normal(n)),
    dout: rng.normal(n),
  };
}

/**
 * Forward then backward of `impl` on `be` (each backend uses its own out/lse); the grads start at
 * `init` (+=). `x` holds bf16 q, k, v, or fp32 ones for "cc_f32". Returns out, lse, dq, dk, dv.
 */
export function runAttention(
  be: Backend,
  s: Shape,
  x: Inputs | InputsF32,
  init: Float32Array[],
  impl: Impl = "cc",
  acc = -1, // the backward's accumulate mask (kernels.h)
): Record<string, Float32Array> {
  const { B, T, H, D } = s, shp = [B, T, H, D];
  const dtype = impl === "cc_f32" ? "f32" : "bf16";
  const io = impl === "tc_bf16" ? "bf16" : "f32";
  const outputs: Record<string, { shape: number[]; dtype?: "bf16"; init?: Float32Array }> = {
    out: { shape: shp, dtype: io === "bf16" ? "bf16" : undefined },
    lse: { shape: [B, H, T] },
    ws: { shape: [B, H, T] },
  };
  GRADS.forEach((g, i) => (outputs[g] = { shape: shp, init: init[i] }));
  const [fwd, bwd] = impl === "tc"
    ? [be.k.mn_attention_tc_forward, be.k.mn_attention_tc_backward]
    : impl === "tc_bf16"
    ? [
      be.k.mn_attention_tc_forward_bf16,
      // fp32 gradients (grads_bf16 = 0), else the fp32 signature
      (...a: unknown[]) => be.k.mn_attention_tc_backward_bf16(...a.slice(0, -2), 0, ...a.slice(-2)),
    ]
    : impl === "cc_f32"
    ? [be.k.mn_attention_forward_f32, be.k.mn_attention_backward_f32]
    : [be.k.mn_attention_forward, be.k.mn_attention_backward];
  const res = withTensors(
    be,
    {
      q: { data: x.q, shape: shp, dtype },
      k: { data: x.k, shape: shp, dtype },
      v: { data: x.v, shape: shp, dtype },
      dout: io === "bf16"
        ? { data: f32ToBf16(x.dout), shape: shp, dtype: "bf16" }
        : { data: x.dout, shape: shp },
    },
    outputs,
    (t) => {
      fwd(t.out.ptr, t.lse.ptr, t.q.ptr, t.k.ptr, t.v.ptr, B, T, H, D, be.stream);
      bwd(
        t.dq.ptr,
        t.dk.ptr,
        t.dv.ptr,
        t.dout.ptr,
        t.out.ptr,
        t.lse.ptr,
        t.q.ptr,
        t.k.ptr,
        t.v.ptr,
        t.ws.ptr,
        B,
        T,
        H,
        D,
        acc,
        be.stream,
      );
    },
  ) as Record<string, Float32Array>;
  delete res.ws;
  return res;
}

/**
 * `got` against the cpu's `want` (both from runAttention with grads starting at `init`): what the
 * call added to each gradient within rel.grad times the largest of the three added gradients (dq
 * and dk vanish exactly at T = 1, a single key, while a kernel's are rounding-sized), out and lse
 * normwise within rel.out, rel.lse. Messages "<what> <shape> <key> (<tname> vs cpu)"; the
 * normwise errors go into `worst` (per key, the maximum).
 */
export function compareVsCpu(
  what: string,
  tname: string,
  s: Shape,
  kind: Kind | undefined,
  want: Record<string, Float32Array>,
  got: Record<string, Float32Array>,
  init: Float32Array[],
  rel: { out: number; lse: number; grad: number },
  worst: Record<string, number> = {},
) {
  const added = (r: Record<string, Float32Array>) => GRADS.map((g, gi) => minus(r[g], init[gi]));
  const [wg, gg] = [added(want), added(got)];
  const gscale = Math.max(...wg.map(maxAbs));
  GRADS.forEach((key, gi) => {
    worst[key] = Math.max(worst[key] ?? 0, maxAbsDiff(gg[gi], wg[gi]) / gscale);
    compare(`${what} ${label(s, kind)} ${key} (${tname} vs cpu)`, gg[gi], wg[gi], {
      atol: rel.grad * gscale,
      rtol: 0,
    });
  });
  for (const key of ["out", "lse"] as const) {
    worst[key] = Math.max(worst[key] ?? 0, relErr(got[key], want[key]));
    compareRel(`${what} ${label(s, kind)} ${key} (${tname} vs cpu)`, got[key], want[key], rel[key]);
  }
}

/** The backward accumulates (+=) and is deterministic (checkAccumulates), B=1 T=40 H=2 D=32. */
export function checkAttentionAccumulates(be: Backend, name: string, impl: Impl) {
  const s: Shape = { B: 1, T: 40, H: 2, D: 32 };
  const rng = new Rng(SEED + 300);
  const x = makeInputs(rng, s);
  const zero = zeroGrads(s);
  const init = GRADS.map(() => rng.normal(numel(s)));
  const run = (g: Float32Array[]) => runAttention(be, s, x, g, impl);
  checkAccumulates(name, run, GRADS, zero, init, ["out", "lse"], name === "cuda");
}

/**
 * The argument checks of mn_attention_* ("cc") or mn_attention_tc_* ("tc") on `be`: each shape
 * case makes forward and backward throw (error matching `match(entry, re)`), a NULL lse / ws is
 * named; then `more(f, i)` with an fp32 and a bf16 buffer of 2*16*2*128 elements.
 */
export function checkAttentionArguments(
  be: Backend,
  name: string,
  impl: "cc" | "tc",
  cases: ShapeCase[],
  match?: (entry: string, re: RegExp) => RegExp,
  more?: (f: Deno.PointerValue, i: Deno.PointerValue) => void,
) {
  const n = 2 * 16 * 2 * 128;
  const [fwdName, bwdName] = impl === "tc"
    ? ["attention_tc_forward", "attention_tc_backward"]
    : ["attention_forward", "attention_backward"];
  const [fwd, bwd] = impl === "tc"
    ? [be.k.mn_attention_tc_forward, be.k.mn_attention_tc_backward]
    : [be.k.mn_attention_forward, be.k.mn_attention_backward];
  withTensors(be, {}, {
    f: { shape: [n] },
    i: { shape: [n], dtype: "bf16" },
  }, (t) => {
    const f = t.f.ptr, i = t.i.ptr;
    checkShapeErrors(name, "D", cases, [
      [fwdName, (B, T, H, D) => fwd(f, f, i, i, i, B, T, H, D, null)],
      [bwdName, (B, T, H, D) => bwd(f, f, f, f, f, f, i, i, i, f, B, T, H, D, -1, null)],
    ], match);
    assert.throws(
      () => fwd(f, null, i, i, i, 1, 16, 1, 16, null),
      new RegExp(`${fwdName}: NULL tensor argument`),
    );
    assert.throws(
      () => bwd(f, f, f, f, f, f, i, i, i, null, 1, 16, 1, 16, -1, null),
      new RegExp(`${bwdName}: NULL tensor argument`),
    );
    more?.(f, i);
  });
}
