#include "../entry_checks.h"
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

MN_API int mn_copy_columns(void* dst, int ld_dst, int dst_bf16, void* src, int ld_src,
                           int src_bf16, int rows, int cols, int accumulate, void*) {
  if (int rc = mn_check_copy_columns(dst, ld_dst, dst_bf16, src, ld_src, src_bf16, rows, cols,
                                     accumulate))
    return rc;
  const bool acc = MN_ACC_BIT(accumulate, 0);
  for (int64_t r = 0; r < rows; r++) {
    for (int64_t c = 0; c < cols; c++) {
      const int64_t s = r * ld_src + c, d = r * ld_dst + c;
      const float v = src_bf16 ? bf16_to_f32(((mn_bf16*)src)[s]) : ((float*)src)[s];
      if (dst_bf16) ((mn_bf16*)dst)[d] = f32_to_bf16(v);
      else ((float*)dst)[d] = acc ? ((float*)dst)[d] + v : v;
    }
  }
  return 0;
}
