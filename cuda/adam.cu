// One torch.optim.Adam step (amsgrad=False, maximize=False), elementwise, fp32 state:
//   g = grad + weight_decay * param                      (L2 decay folded into the gradient)
//   m = lerp(m, g, 1 - beta1)                            (= beta1 m + (1 - beta1) g)
//   v = beta2 v + (1 - beta2) g^2
//   param -= (lr / (1 - beta1^t)) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
// The scalars step_size = lr / bc1 and sqrt(bc2) are computed on the host in double, as torch's
// single-tensor Adam does with Python floats, then used in fp32 by the kernel.
// mn_adam_multi_step runs the same element update over a list of tensors in one launch.
#include <cmath>

#include "common.cuh"
#include "entry_checks.h"

// torch's lerp: a + w (b - a) for w < 0.5, else b - (b - a)(1 - w) (exact at both ends).
__host__ __device__ inline float adam_lerp(float a, float b, float w) {
  return w < 0.5f ? a + w * (b - a) : b - (b - a) * (1.0f - w);
}

// The update of element i: the one piece of math both kernels run (so they agree bit for bit).
__host__ __device__ inline void adam_element(float* param, const float* grad, float* m, float* v,
                                             int64_t i, float beta1, float beta2, float eps,
                                             float weight_decay, float step_size,
                                             float bc2_sqrt) {
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

__global__ void adam_step_kernel(float* param, const float* grad, float* m, float* v, int64_t n,
                                 float beta1, float beta2, float eps, float weight_decay,
                                 float step_size, float bc2_sqrt) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x)
    adam_element(param, grad, m, v, i, beta1, beta2, eps, weight_decay, step_size, bc2_sqrt);
}

// One entry of the multi-tensor list: {param, grad, m, v, n, offset} as int64_t.
constexpr int ADAM_LIST_FIELDS = 6;

// The tensor holding flat index j (offset <= j < offset + n): a binary search over the offsets.
__device__ inline int adam_find_tensor(const int64_t* list, int count, int64_t j) {
  int lo = 0, hi = count - 1;
  while (lo < hi) {
    int mid = (lo + hi + 1) / 2;
    if (list[mid * ADAM_LIST_FIELDS + 5] <= j) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

// Grid-stride over the flat index space [0, total_n) of all tensors. A thread keeps the tensor of
// its previous element and searches only when its next element lies outside it (large tensors
// span many grid strides; small ones are passed over by the search).
__device__ inline void adam_multi_step_body(const int64_t* list, int count, int64_t total_n,
                                            float beta1, float beta2, float eps,
                                            float weight_decay, float step_size, float bc2_sqrt) {
  int t = -1;
  int64_t begin = 0, end = 0;
  for (int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; j < total_n;
       j += (int64_t)gridDim.x * blockDim.x) {
    if (j < begin || j >= end) {
      t = adam_find_tensor(list, count, j);
      begin = list[t * ADAM_LIST_FIELDS + 5];
      end = begin + list[t * ADAM_LIST_FIELDS + 4];
    }
    const int64_t* e = list + t * ADAM_LIST_FIELDS;
    adam_element((float*)e[0], (const float*)e[1], (float*)e[2], (float*)e[3], j - begin, beta1,
                 beta2, eps, weight_decay, step_size, bc2_sqrt);
  }
}

__global__ void adam_multi_step_kernel(const int64_t* list, int count, int64_t total_n,
                                       float beta1, float beta2, float eps, float weight_decay,
                                       float step_size, float bc2_sqrt) {
  adam_multi_step_body(list, count, total_n, beta1, beta2, eps, weight_decay, step_size, bc2_sqrt);
}

// The scalars of every entry point, in double: on the host (after mn_check_adam), or on the
// device from lr and step in device memory (mn_adam_multi_step_dev).
__host__ __device__ inline void adam_scalars(float lr, float beta1, float beta2, int step,
                                             float* step_size, float* bc2_sqrt) {
  const double bc1 = 1.0 - pow((double)beta1, (double)step);
  const double bc2 = 1.0 - pow((double)beta2, (double)step);
  *step_size = (float)((double)lr / bc1);
  *bc2_sqrt = (float)sqrt(bc2);
}

// lr_step = {lr, step} in device memory, written before the launch (or a graph replay, whose
// kernel arguments are frozen): each block's first thread derives the two scalars once.
__global__ void adam_multi_step_dev_kernel(const int64_t* list, int count, int64_t total_n,
                                           const float* lr_step, float beta1, float beta2,
                                           float eps, float weight_decay) {
  __shared__ float sc[2];
  if (threadIdx.x == 0) adam_scalars(lr_step[0], beta1, beta2, (int)lr_step[1], &sc[0], &sc[1]);
  __syncthreads();
  adam_multi_step_body(list, count, total_n, beta1, beta2, eps, weight_decay, sc[0], sc[1]);
}

MN_API int mn_adam_step(float* param, float* grad, float* m, float* v, int64_t n, float lr,
                        float beta1, float beta2, float eps, float weight_decay, int step,
                        void* stream) {
  MN_REQUIRE(n >= 0, "adam_step: n = %lld", (long long)n);
  if (int rc = mn_check_adam("adam_step", lr, beta1, beta2, eps, weight_decay, step)) return rc;
  if (n == 0) return 0;
  MN_REQUIRE(param && grad && m && v, "adam_step: NULL tensor");
  float step_size, bc2_sqrt;
  adam_scalars(lr, beta1, beta2, step, &step_size, &bc2_sqrt);
  return mn_launch("adam_step", adam_step_kernel, mn_blocks_for(n, 256), 256, 0, stream, param,
                   (const float*)grad, m, v, n, beta1, beta2, eps, weight_decay, step_size,
                   bc2_sqrt);
}

MN_API int mn_adam_multi_step(int64_t* list, int count, int64_t total_n, float lr, float beta1,
                              float beta2, float eps, float weight_decay, int step, void* stream) {
  if (int rc = mn_check_adam_multi_step(list, count, total_n)) return rc;
  if (int rc = mn_check_adam("adam_multi_step", lr, beta1, beta2, eps, weight_decay, step))
    return rc;
  if (count == 0) return 0;
  float step_size, bc2_sqrt;
  adam_scalars(lr, beta1, beta2, step, &step_size, &bc2_sqrt);
  return mn_launch("adam_multi_step", adam_multi_step_kernel, mn_blocks_for(total_n, 256), 256, 0,
                   stream, (const int64_t*)list, count, total_n, beta1, beta2, eps, weight_decay,
                   step_size, bc2_sqrt);
}

MN_API int mn_adam_multi_step_dev(int64_t* list, int count, int64_t total_n, float* lr_step,
                                  float beta1, float beta2, float eps, float weight_decay,
                                  void* stream) {
  if (int rc = mn_check_adam_multi_step(list, count, total_n)) return rc;
  // lr and step are on the device: checked with a representative value, the rest by the caller
  if (int rc = mn_check_adam("adam_multi_step_dev", 0.0f, beta1, beta2, eps, weight_decay, 1))
    return rc;
  MN_REQUIRE(lr_step, "adam_multi_step_dev: NULL lr_step");
  if (count == 0) return 0;
  return mn_launch("adam_multi_step_dev", adam_multi_step_dev_kernel, mn_blocks_for(total_n, 256),
                   256, 0, stream, (const int64_t*)list, count, total_n, (const float*)lr_step,
                   beta1, beta2, eps, weight_decay);
}
