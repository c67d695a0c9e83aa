// The rotary cos/sin table entry, shared by rotary.cu and the fused QK-norm + rotary of
// gpt2_fused.cu so that both rotate by the same bf16 values.
#pragma once
#include "common.cuh"

// The original's table entry for position t and frequency i (0 <= i < D/2), computed in fp32 as
// torch does: inv_freq = 1 / (base ** ((2i) / D)), freq = t * inv_freq, then cos/sin -> bf16.
__host__ __device__ inline void rotary_cos_sin(int t, int i, int D, float* c, float* s) {
  float expo = (float)(2 * i) / (float)D;
  float inv_freq = 1.0f / powf(10000.0f, expo);
  float freq = (float)t * inv_freq;
  *c = mn_bf16_to_f32(mn_f32_to_bf16(cosf(freq)));
  *s = mn_bf16_to_f32(mn_f32_to_bf16(sinf(freq)));
}
