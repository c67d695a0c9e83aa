#include "cpu_common.h"

MN_API int mn_cast_f32_to_bf16(mn_bf16* out, float* inp, int64_t n, void*) {
  MN_REQUIRE(n >= 0, "cast_f32_to_bf16: n = %lld", (long long)n);
#pragma omp parallel for if (n > 100000)
  for (int64_t i = 0; i < n; i++) out[i] = f32_to_bf16(inp[i]);
  return 0;
}

MN_API int mn_cast_bf16_to_f32(float* out, mn_bf16* inp, int64_t n, void*) {
  MN_REQUIRE(n >= 0, "cast_bf16_to_f32: n = %lld", (long long)n);
#pragma omp parallel for if (n > 100000)
  for (int64_t i = 0; i < n; i++) out[i] = bf16_to_f32(inp[i]);
  return 0;
}
