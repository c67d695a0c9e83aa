// Shared by the cpu reference build: written from the math, independent of the CUDA sources
// (no cuda headers here), so that emu-vs-cpu compares two separate implementations.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "../kernels.h"
#include "../mn_error.h"
#include "../grad_acc.h"

// The references compute every gradient with `+=`; an output to be overwritten (its bit of
// `accumulate` clear, kernels.h) is zeroed first: the same values, and the old contents (maybe NaN)
// are never read.
inline void cpu_clear_unless(int accumulate, int bit, float* p, int64_t n) {
  if (p && !MN_ACC_BIT(accumulate, bit)) std::memset(p, 0, (size_t)n * sizeof(float));
}

// bfloat16 <-> float by bit manipulation: round to nearest even, NaN stays NaN.
inline float bf16_to_f32(mn_bf16 h) {
  uint32_t u = (uint32_t)h << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline mn_bf16 f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (mn_bf16)((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return (mn_bf16)(u >> 16);
}
