// Device-side scalars, reference: the sum in double, the norm's factor in double.
#include "cpu_common.h"

MN_API int mn_sum_into(float* out, float* x, int64_t n, float alpha, float beta, void*) {
  MN_REQUIRE(out && x, "sum_into: NULL pointer argument");
  MN_REQUIRE(n > 0, "sum_into: n = %lld must be > 0", (long long)n);
  MN_REQUIRE(out < x || out >= x + n, "sum_into: out must not lie inside x");
  double s = 0;
  for (int64_t i = 0; i < n; i++) s += x[i];
  const double old = beta == 0.0f ? 0.0 : (double)beta * out[0];
  out[0] = (float)(old + (double)alpha * s);
  return 0;
}

MN_API int mn_scale_by_inv_norm(float* out, float* x, float* sumsq, float eps, int64_t n, void*) {
  MN_REQUIRE(out && x && sumsq, "scale_by_inv_norm: NULL pointer argument");
  MN_REQUIRE(n > 0, "scale_by_inv_norm: n = %lld must be > 0", (long long)n);
  MN_REQUIRE(eps > 0.0f, "scale_by_inv_norm: eps = %g must be > 0", eps);
  MN_REQUIRE(sumsq < x || sumsq >= x + n, "scale_by_inv_norm: sumsq must not lie inside x");
  MN_REQUIRE(sumsq < out || sumsq >= out + n, "scale_by_inv_norm: sumsq must not lie inside out");
  const double norm = std::sqrt((double)sumsq[0]);
#pragma omp parallel for if (n > 100000)
  for (int64_t i = 0; i < n; i++) out[i] = (float)((double)x[i] / (norm + (double)eps));
  return 0;
}
