// Device-side scalars, reference: the sum in double, the norm's factor in double.
#include "../entry_checks.h"
#include "cpu_common.h"

MN_API int mn_sum_into(float* out, float* x, int64_t n, float alpha, float beta, void*) {
  if (int rc = mn_check_sum_into(out, x, n)) return rc;
  double s = 0;
  for (int64_t i = 0; i < n; i++) s += x[i];
  const double old = beta == 0.0f ? 0.0 : (double)beta * out[0];
  out[0] = (float)(old + (double)alpha * s);
  return 0;
}

MN_API int mn_scale_by_inv_norm(float* out, float* x, float* sumsq, float eps, int64_t n, void*) {
  if (int rc = mn_check_scale_by_inv_norm(out, x, sumsq, eps, n)) return rc;
  const double norm = std::sqrt((double)sumsq[0]);
#pragma omp parallel for if (n > 100000)
  for (int64_t i = 0; i < n; i++) out[i] = (float)((double)x[i] / (norm + (double)eps));
  return 0;
}
