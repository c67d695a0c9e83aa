// The bf16 gate of the fused GroupNorm (+ bonus) + gate kernels, RWKV-7's mn_rwkv7_gn_bonus_gate_*
// and RWKV-6's mn_rwkv6_gn_gate_* (one template in cuda/rwkv7_fused.cu): the check both test files
// run with their own callers.
import assert from "node:assert/strict";
import type { Backend } from "../backend.ts";
import { bf16ToF32, f32ToBf16 } from "../backend.ts";
import { backend, compare, EXACT, Rng, SEED } from "./harness.ts";

type Outputs = Record<string, Float32Array | Int32Array>;
/** a family's callers: forward(be, c, draw, bf16Out, gateBf16), backward(be, c, draw, accumulate,
 * gateBf16, dgateBf16); rounded(draw): the draw with its gate rounded to bf16 values */
export interface GateCase<C, D> {
  shapes: C[];
  label: (c: C) => string;
  draw: (c: C, rng: Rng) => D;
  rounded: (d: D, round: (a: Float32Array) => Float32Array) => D;
  forward: (be: Backend, c: C, d: D, bf16: boolean, gateBf16?: boolean) => Outputs;
  backward: (be: Backend, c: C, d: D, acc: number, gateBf16?: boolean, dgate?: boolean) => Outputs;
  /** an accumulate mask with the parameter gradients' bits set, dgate's clear */
  acc: number;
}

/** On backend `name`: a bf16 gate gives the fp32 kernel's outputs on the rounded gate bit for bit;
 * from a bf16 gate an fp32 dgate is the fp32 one, a bf16 dgate that rounded once; a bf16 dgate
 * refuses to be added into (it has one writer). */
export function checkBf16Gate<C, D>(k: GateCase<C, D>, name: "cpu" | "emu" | "cuda") {
  const round = (a: Float32Array) => bf16ToF32(f32ToBf16(a));
  const be = backend(name);
  for (const c of k.shapes) {
    const d = k.draw(c, new Rng(SEED));
    const dr = k.rounded(d, round); // what a bf16 gate holds
    for (const bf16 of [false, true]) {
      const want = k.forward(be, c, dr, bf16), got = k.forward(be, c, d, bf16, true);
      for (const key of Object.keys(want)) {
        const l = `${name} ${k.label(c)} ${bf16 ? "bf16" : "fp32"} ${key}`;
        compare(l, got[key], want[key], EXACT);
      }
    }
    // fp32 dgate from a bf16 gate (its gradient has another writer), and a bf16 dgate
    for (const dgateBf16 of [false, true]) {
      const bw = k.backward(be, c, dr, k.acc), bg = k.backward(be, c, d, k.acc, true, dgateBf16);
      for (const key of Object.keys(bw)) {
        const w = key === "dgate" && dgateBf16 ? round(bw[key] as Float32Array) : bw[key];
        compare(`${name} ${k.label(c)} ${key}`, bg[key], w, EXACT);
      }
    }
    assert.throws(() => k.backward(be, c, d, -1, true, true), /bf16 dgate is overwritten/);
  }
}
