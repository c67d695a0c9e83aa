// Reference Adam step (torch.optim.Adam, amsgrad off), each element in double, state stored fp32:
//   g = grad + wd * p;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
//   p = p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
// mn_adam_multi_step: the same element update over each tensor of a list.
#include "../entry_checks.h"
#include "cpu_common.h"
#include "cpu_math.h"

namespace {

struct AdamScalars {
  double b1, b2, bc1, bc2, lr, eps, wd;
};

AdamScalars adam_scalars(float lr, float beta1, float beta2, float eps, float weight_decay,
                         int step) {
  const double b1 = beta1, b2 = beta2;
  return {b1, b2, 1.0 - std::pow(b1, step), 1.0 - std::pow(b2, step), lr, eps, weight_decay};
}

// Elements [i0, i1) of one tensor, compiled for the running CPU's widest vectors (double sqrt and
// division, 8 lanes with AVX-512 where the baseline build has 2).
MN_HOST_ISA_CLONES
void adam_range(float* param, const float* grad, float* m, float* v, int64_t i0, int64_t i1,
                const AdamScalars& s) {
  for (int64_t i = i0; i < i1; i++) {
    double p = param[i];
    double g = (double)grad[i] + s.wd * p;
    double mi = s.b1 * m[i] + (1.0 - s.b1) * g;
    double vi = s.b2 * v[i] + (1.0 - s.b2) * g * g;
    m[i] = (float)mi;
    v[i] = (float)vi;
    // the update uses the stored (fp32) moments, as every later step will
    double denom = std::sqrt((double)v[i]) / std::sqrt(s.bc2) + s.eps;
    param[i] = (float)(p - s.lr / s.bc1 * (double)m[i] / denom);
  }
}

// One tensor of n elements.
void adam_tensor(float* param, const float* grad, float* m, float* v, int64_t n,
                 const AdamScalars& s) {
  const int64_t chunk = 8192;
#pragma omp parallel for if (n > 100000)
  for (int64_t i0 = 0; i0 < n; i0 += chunk)
    adam_range(param, grad, m, v, i0, i0 + chunk < n ? i0 + chunk : n, s);
}

}  // namespace

MN_API int mn_adam_step(float* param, float* grad, float* m, float* v, int64_t n, float lr,
                        float beta1, float beta2, float eps, float weight_decay, int step, void*) {
  MN_REQUIRE(n >= 0, "adam_step: n = %lld", (long long)n);
  if (int rc = mn_check_adam("adam_step", lr, beta1, beta2, eps, weight_decay, step)) return rc;
  if (n == 0) return 0;
  MN_REQUIRE(param && grad && m && v, "adam_step: NULL tensor");
  adam_tensor(param, grad, m, v, n, adam_scalars(lr, beta1, beta2, eps, weight_decay, step));
  return 0;
}

MN_API int mn_adam_multi_step_dev(int64_t* list, int count, int64_t total_n, float* lr_step,
                                  float beta1, float beta2, float eps, float weight_decay,
                                  void* stream) {
  MN_REQUIRE(lr_step, "adam_multi_step_dev: NULL lr_step");
  const float step = lr_step[1];  // "device" memory is host memory here
  MN_REQUIRE(step >= 1 && step <= 16777216.0f && step == (float)(int)step,
             "adam_multi_step_dev: step %g is not an integer in [1, 2^24]", (double)step);
  return mn_adam_multi_step(list, count, total_n, lr_step[0], beta1, beta2, eps, weight_decay,
                            (int)step, stream);
}

MN_API int mn_adam_multi_step(int64_t* list, int count, int64_t total_n, float lr, float beta1,
                              float beta2, float eps, float weight_decay, int step, void*) {
  if (int rc = mn_check_adam_multi_step(list, count, total_n)) return rc;
  if (int rc = mn_check_adam("adam_multi_step", lr, beta1, beta2, eps, weight_decay, step))
    return rc;
  if (count == 0) return 0;
  // the list is in "device" memory, which is host memory here: check it as the kernel assumes it
  int64_t offset = 0;
  for (int t = 0; t < count; t++) {
    const int64_t* e = list + 6 * t;
    MN_REQUIRE(e[0] && e[1] && e[2] && e[3], "adam_multi_step: tensor %d has a NULL address", t);
    MN_REQUIRE(e[4] >= 1, "adam_multi_step: tensor %d has n = %lld", t, (long long)e[4]);
    MN_REQUIRE(e[5] == offset, "adam_multi_step: tensor %d has offset %lld, expected %lld", t,
               (long long)e[5], (long long)offset);
    offset += e[4];
  }
  MN_REQUIRE(offset == total_n, "adam_multi_step: the tensors hold %lld elements, total_n = %lld",
             (long long)offset, (long long)total_n);
  const AdamScalars s = adam_scalars(lr, beta1, beta2, eps, weight_decay, step);
  for (int t = 0; t < count; t++) {
    const int64_t* e = list + 6 * t;
    adam_tensor((float*)e[0], (const float*)e[1], (float*)e[2], (float*)e[3], e[4], s);
  }
  return 0;
}
