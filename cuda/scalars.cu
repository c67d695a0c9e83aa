// Device-side scalars (issue #16, a step the host never waits on): a reduction that leaves its
// result in device memory, and a scaling that reads its factor from device memory, so a trainer
// never downloads a value to decide the next launch (the loss of a micro-step, Muon's norm).
#include <cmath>

#include "common.cuh"
#include "entry_checks.h"

// The factor 1 / (sqrt(sumsq) + eps), in double as the trainers computed it on the host before
// (then used in fp32, as a host float alpha of mn_scale was).
__host__ __device__ inline float inv_norm_factor(float sumsq, float eps) {
  return (float)(1.0 / (sqrt((double)sumsq) + (double)eps));
}

// out = beta * out + alpha * sum, where beta == 0 does not read out (as BLAS's beta).
__host__ __device__ inline float sum_into_update(float old, float sum, float alpha, float beta) {
  return beta == 0.0f ? alpha * sum : beta * old + alpha * sum;
}

// One block: a fixed summation order (each thread a strided partial sum, then mn_block_sum), so
// the result is the same bits every run.
__global__ void sum_into_kernel(float* out, const float* x, int64_t n, float alpha, float beta) {
  __shared__ float scratch[32];
  float s = 0.0f;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += x[i];
  s = mn_block_sum(s, scratch);
  if (threadIdx.x == 0) out[0] = sum_into_update(beta == 0.0f ? 0.0f : out[0], s, alpha, beta);
}

// Each thread reads the sum of squares once, then scales its elements (grid-stride).
__global__ void scale_by_inv_norm_kernel(float* out, const float* x, const float* sumsq, float eps,
                                         int64_t n) {
  const float f = inv_norm_factor(sumsq[0], eps);
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x)
    out[i] = x[i] * f;
}

// Threads of the single reduction block: 1024 for large n, else one warp per 32 elements, at most
// 256 (the rule of elementwise.cu's full sums).
static inline int sum_threads(int64_t n) {
  if (n > 16384) return 1024;
  return n >= 256 ? 256 : (int)(32 * ((n + 31) / 32));
}

MN_API int mn_sum_into(float* out, float* x, int64_t n, float alpha, float beta, void* stream) {
  if (int rc = mn_check_sum_into(out, x, n)) return rc;
  return mn_launch("sum_into", sum_into_kernel, 1, sum_threads(n), 0, stream, out, (const float*)x,
                   n, alpha, beta);
}

MN_API int mn_scale_by_inv_norm(float* out, float* x, float* sumsq, float eps, int64_t n,
                                void* stream) {
  if (int rc = mn_check_scale_by_inv_norm(out, x, sumsq, eps, n)) return rc;
  return mn_launch("scale_by_inv_norm", scale_by_inv_norm_kernel, mn_blocks_for(n, 256), 256, 0,
                   stream, out, (const float*)x, (const float*)sumsq, eps, n);
}
