// Shared by the WKV kernel tests (cuda/wkv6_test.ts, cuda/wkv6_chunked_test.ts, cuda/wkv7_test.ts,
// cuda/wkv7_wind_test.ts): the shape, and the emu/cuda-vs-cpu comparison they all make. The
// per-kernel inputs and runners are in cuda/test/wkv6_cases.ts and cuda/test/wkv7_cases.ts. No
// Deno.test here (test files must not import each other).
import { addedPart, compareRel, relErr } from "./harness.ts";

/** B sequences of T steps, H heads of head size N; tensors [B, T, H, N] */
export interface Shape {
  B: number;
  T: number;
  H: number;
  N: number;
}

export const numel = ({ B, T, H, N }: Shape) => B * T * H * N;
export const label = (s: Shape, kind?: string) =>
  `(B=${s.B},T=${s.T},H=${s.H},N=${s.N}${kind ? " " + kind : ""})`;

/**
 * Every output of `got` against the cpu's `want`, normwise (compareRel) within `rel(key)`; both
 * ran with the gradients `grads` starting at `init` (+=), and for those what the call added is
 * compared. Messages "<what> <shape kind> <key> (<tname> vs cpu)"; the errors go into
 * worst[tag(key)] (the maximum).
 */
export function compareVsCpu(
  what: string,
  tname: string,
  s: Shape,
  kind: string | undefined,
  want: Record<string, Float32Array>,
  got: Record<string, Float32Array>,
  grads: readonly string[],
  init: Float32Array[],
  rel: (key: string) => number,
  worst: Record<string, number>,
  tag: (key: string) => string = (key) => key,
) {
  const [w, g] = [addedPart(want, grads, init), addedPart(got, grads, init)];
  for (const key of Object.keys(w)) {
    worst[tag(key)] = Math.max(worst[tag(key)] ?? 0, relErr(g[key], w[key]));
    compareRel(`${what} ${label(s, kind)} ${key} (${tname} vs cpu)`, g[key], w[key], rel(key));
  }
}
