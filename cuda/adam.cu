// One torch.optim.Adam step (amsgrad=False, maximize=False), elementwise, fp32 state:
//   g = grad + weight_decay * param                      (L2 decay folded into the gradient)
//   m = lerp(m, g, 1 - beta1)                            (= beta1 m + (1 - beta1) g)
//   v = beta2 v + (1 - beta2) g^2
//   param -= (lr / (1 - beta1^t)) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
// The scalars step_size = lr / bc1 and sqrt(bc2) are computed on the host in double, as torch's
// single-tensor Adam does with Python floats, then used in fp32 by the kernel.
#include <cmath>

#include "common.cuh"

// torch's lerp: a + w (b - a) for w < 0.5, else b - (b - a)(1 - w) (exact at both ends).
__host__ __device__ inline float adam_lerp(float a, float b, float w) {
  return w < 0.5f ? a + w * (b - a) : b - (b - a) * (1.0f - w);
}

__global__ void adam_step_kernel(float* param, const float* grad, float* m, float* v, int64_t n,
                                 float beta1, float beta2, float eps, float weight_decay,
                                 float step_size, float bc2_sqrt) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    float p = param[i];
    float g = grad[i];
    if (weight_decay != 0.0f) g += weight_decay * p;
    float mi = adam_lerp(m[i], g, 1.0f - beta1);
    float vi = beta2 * v[i] + (1.0f - beta2) * (g * g);
    m[i] = mi;
    v[i] = vi;
    float denom = sqrtf(vi) / bc2_sqrt + eps;
    param[i] = p - step_size * (mi / denom);
  }
}

MN_API int mn_adam_step(float* param, float* grad, float* m, float* v, int64_t n, float lr,
                        float beta1, float beta2, float eps, float weight_decay, int step,
                        void* stream) {
  MN_REQUIRE(n >= 0, "adam_step: n = %lld", (long long)n);
  MN_REQUIRE(step >= 1, "adam_step: step = %d (steps count from 1)", step);
  MN_REQUIRE(lr >= 0.0f && eps >= 0.0f && weight_decay >= 0.0f,
             "adam_step: lr=%g eps=%g weight_decay=%g must be >= 0", lr, eps, weight_decay);
  MN_REQUIRE(beta1 >= 0.0f && beta1 < 1.0f && beta2 >= 0.0f && beta2 < 1.0f,
             "adam_step: betas (%g, %g) must be in [0, 1)", beta1, beta2);
  if (n == 0) return 0;
  MN_REQUIRE(param && grad && m && v, "adam_step: NULL tensor");
  const double bc1 = 1.0 - std::pow((double)beta1, (double)step);
  const double bc2 = 1.0 - std::pow((double)beta2, (double)step);
  const float step_size = (float)((double)lr / bc1);
  const float bc2_sqrt = (float)std::sqrt(bc2);
  return mn_launch("adam_step", adam_step_kernel, mn_blocks_for(n, 256), 256, 0, stream, param,
                   (const float*)grad, m, v, n, beta1, beta2, eps, weight_decay, step_size,
                   bc2_sqrt);
}
