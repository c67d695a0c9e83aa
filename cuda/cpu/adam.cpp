// Reference Adam step (torch.optim.Adam, amsgrad off), each element in double, state stored fp32:
//   g = grad + wd * p;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
//   p = p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
#include "cpu_common.h"

MN_API int mn_adam_step(float* param, float* grad, float* m, float* v, int64_t n, float lr,
                        float beta1, float beta2, float eps, float weight_decay, int step, void*) {
  MN_REQUIRE(n >= 0, "adam_step: n = %lld", (long long)n);
  MN_REQUIRE(step >= 1, "adam_step: step = %d (steps count from 1)", step);
  MN_REQUIRE(lr >= 0.0f && eps >= 0.0f && weight_decay >= 0.0f,
             "adam_step: lr=%g eps=%g weight_decay=%g must be >= 0", lr, eps, weight_decay);
  MN_REQUIRE(beta1 >= 0.0f && beta1 < 1.0f && beta2 >= 0.0f && beta2 < 1.0f,
             "adam_step: betas (%g, %g) must be in [0, 1)", beta1, beta2);
  if (n == 0) return 0;
  MN_REQUIRE(param && grad && m && v, "adam_step: NULL tensor");
  const double b1 = beta1, b2 = beta2;
  const double bc1 = 1.0 - std::pow(b1, step), bc2 = 1.0 - std::pow(b2, step);
#pragma omp parallel for if (n > 100000)
  for (int64_t i = 0; i < n; i++) {
    double p = param[i];
    double g = (double)grad[i] + (double)weight_decay * p;
    double mi = b1 * m[i] + (1.0 - b1) * g;
    double vi = b2 * v[i] + (1.0 - b2) * g * g;
    m[i] = (float)mi;
    v[i] = (float)vi;
    // the update uses the stored (fp32) moments, as every later step will
    double denom = std::sqrt((double)v[i]) / std::sqrt(bc2) + eps;
    param[i] = (float)(p - (double)lr / bc1 * (double)m[i] / denom);
  }
  return 0;
}
