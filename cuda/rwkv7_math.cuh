// Per-element math of the RWKV-7 time mixing, the same on host and device, shared by the generic
// ops (modelops.cu: unary_f and friends) and the fused chains (rwkv7_fused.cu), so that the fast
// path and the composition a hacker edits round each value the same way.
#pragma once
#include <cmath>

// torch.nn.functional.softplus with beta = 1, threshold = 20: z itself above the threshold.
__host__ __device__ inline float softplus_f(float z) { return z > 20.0f ? z : log1pf(expf(z)); }
// d softplus(z) / dz, as torch's softplus_backward: 1 above the threshold, else e^z / (e^z + 1).
__host__ __device__ inline float softplus_df(float z) {
  if (z > 20.0f) return 1.0f;
  float e = expf(z);
  return e / (e + 1.0f);
}
__host__ __device__ inline float sigmoid_f(float x) { return 1.0f / (1.0f + expf(-x)); }
// through the output, as torch's sigmoid_backward
__host__ __device__ inline float sigmoid_dy(float y) { return y * (1.0f - y); }
// The decay the model feeds WKV-7: -softplus(-x) - 0.5, so that exp(-exp(w)) lies in (0.545, 1).
__host__ __device__ inline float rwkv7_decay_f(float x) { return -softplus_f(-x) - 0.5f; }
__host__ __device__ inline float rwkv7_decay_df(float x) { return softplus_df(-x); }
// exp(min(x, 0)); torch.clamp(max=0) passes the gradient where x <= 0 (its mask is `self <= max`),
// so at x == 0 the gradient is exp(0); it is 0 only where x > 0. y is the forward's output.
__host__ __device__ inline float exp_min0_f(float x) { return expf(fminf(x, 0.0f)); }
__host__ __device__ inline float exp_min0_df(float x, float y) { return x <= 0.0f ? y : 0.0f; }

// The token-shift mixes: x + xx * coef with xx = shift(x) - x and coef = time_maa_x (the first
// mix) or m + time_maa_i (the four after the LoRA): add(x, mul(xx, coef)) of the composition.
__host__ __device__ inline float mix_f(float x, float xx, float coef) { return x + xx * coef; }
