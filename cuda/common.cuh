// Included first by every .cu file: the launch helper, error reporting and small per-element math
// shared by kernels. Under nvcc it is plain CUDA; under g++ (-DMN_EMU) cuda/emu/cuda_emu.h is
// force-included first and provides the execution model.
#pragma once
#include <cstdint>
#include <type_traits>
#include <utility>

#ifndef MN_EMU
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#define MN_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#endif

#include "kernels.h"
#include "mn_error.h"
#include "grad_acc.h"

typedef __nv_bfloat16 bf16;

// ---- the launch helper: the only way kernels are started, so emu and cuda take one code path ----
template <typename... KArgs, typename... Args>
inline int mn_launch(const char* name, void (*kernel)(KArgs...), dim3 grid, dim3 block,
                     size_t smem_bytes, void* stream, Args... args) {
#ifdef MN_EMU
  (void)stream;
  int rc = emu::launch(grid, block, smem_bytes, [&]() { kernel(KArgs(args)...); });
  if (rc) return mn_fail(rc, "%s: %s", name, emu::launch_error());
  return 0;
#else
  if (smem_bytes > 48 * 1024) {
    cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         (int)smem_bytes);
    if (e != cudaSuccess) return mn_fail((int)e, "%s: %s", name, cudaGetErrorString(e));
  }
  kernel<<<grid, block, smem_bytes, (cudaStream_t)stream>>>(KArgs(args)...);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return mn_fail((int)e, "%s launch: %s", name, cudaGetErrorString(e));
  return 0;
#endif
}

// A kernel over fp32-or-bf16 tensors (the ABI's *_bf16 flags): mn_with_dtype(flag, f) calls f
// with mn_dtype<bf16> or mn_dtype<float>, whose ::type instantiates the kernel; nested calls give
// every combination one launch site.
template <typename T>
struct mn_dtype {
  using type = T;
};
template <typename F>
inline int mn_with_dtype(int is_bf16, F&& f) {
  return is_bf16 ? f(mn_dtype<bf16>{}) : f(mn_dtype<float>{});
}
// three flags at once: f(mn_dtype<A>{}, mn_dtype<B>{}, mn_dtype<C>{})
template <typename F>
inline int mn_with_dtypes(int a_bf16, int b_bf16, int c_bf16, F&& f) {
  return mn_with_dtype(a_bf16, [&](auto a) {
    return mn_with_dtype(b_bf16, [&](auto b) {
      return mn_with_dtype(c_bf16, [&](auto c) { return f(a, b, c); });
    });
  });
}

inline unsigned mn_blocks_for(int64_t n, int threads) {
  int64_t b = (n + threads - 1) / threads;
  return (unsigned)(b < 1 ? 1 : (b > 65535LL * 16 ? 65535LL * 16 : b));
}

// ---- per-element math, the same on host and device ----
__host__ __device__ inline float mn_bf16_to_f32(bf16 x) { return __bfloat162float(x); }
__host__ __device__ inline bf16 mn_f32_to_bf16(float x) { return __float2bfloat16_rn(x); }
// relu(x)^2 and its gradient 2 relu(x) dout (0 at x = 0, as torch's relu backward): the fp32
// relu2 kernels (elementwise.cu) and the bf16 ones of the MLP (gpt2_fused.cu)
__host__ __device__ inline float mn_relu2_fwd(float x) { return x > 0.0f ? x * x : 0.0f; }
__host__ __device__ inline float mn_relu2_grad(float x, float dout) {
  return x > 0.0f ? 2.0f * x * dout : 0.0f;
}

// An fp32 or bf16 element as float
__device__ inline float mn_ld(const float* p) { return *p; }
__device__ inline float mn_ld(const bf16* p) { return mn_bf16_to_f32(*p); }
// A gradient element, added into or overwritten by its accumulate bit: fp32 (MN_GRAD_STORE), or
// bf16 (a bf16 value's gradient, as autograd keeps it: the sum rounded to bf16 at every add).
__device__ inline void mn_put_grad(float& g, float v, int add) { MN_GRAD_STORE(g, v, add); }
__device__ inline void mn_put_grad(bf16& g, float v, int add) {
  g = mn_f32_to_bf16(add ? mn_bf16_to_f32(g) + v : v);
}
// The same as a statement, v evaluated inside the select as MN_GRAD_STORE does (the fp32 case is
// MN_GRAD_STORE itself): the register-tight WKV kernels compile as they did before bf16 gradients.
#define MN_PUT_GRAD(ref, v, add)                                           \
  do {                                                                     \
    if constexpr (std::is_same_v<std::decay_t<decltype(ref)>, float>) {    \
      MN_GRAD_STORE(ref, v, add);                                          \
    } else {                                                               \
      (ref) = mn_f32_to_bf16((add) ? mn_bf16_to_f32(ref) + (v) : (v));     \
    }                                                                      \
  } while (0)

// Sum over the 32 lanes of a warp (all active); every lane gets it, in one fixed butterfly order.
__device__ inline float mn_warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Block-wide sum for blockDim.x a multiple of 32 (<= 1024); every thread gets the result.
// `scratch` is __shared__ float[32]. Fixed order, so deterministic.
__device__ inline float mn_block_sum(float v, float* scratch) {
  v = mn_warp_sum(v);
  int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nwarps = (blockDim.x + 31) / 32;
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float total = 0.0f;
  for (int w = 0; w < nwarps; w++) total += scratch[w];
  return total;
}

__device__ inline float mn_block_max(float v, float* scratch) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nwarps = (blockDim.x + 31) / 32;
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float m = scratch[0];
  for (int w = 1; w < nwarps; w++) m = fmaxf(m, scratch[w]);
  return m;
}
