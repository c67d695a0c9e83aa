// fp32 <-> bf16 conversion (round to nearest even, as torch's .to(torch.bfloat16)).
#include "common.cuh"

__global__ void cast_f32_to_bf16_kernel(bf16* out, const float* inp, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x)
    out[i] = mn_f32_to_bf16(inp[i]);
}

__global__ void cast_bf16_to_f32_kernel(float* out, const bf16* inp, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x)
    out[i] = mn_bf16_to_f32(inp[i]);
}

MN_API int mn_cast_f32_to_bf16(mn_bf16* out, float* inp, int64_t n, void* stream) {
  MN_REQUIRE(n >= 0, "cast_f32_to_bf16: n = %lld", (long long)n);
  if (n == 0) return 0;
  return mn_launch("cast_f32_to_bf16", cast_f32_to_bf16_kernel, mn_blocks_for(n, 256), 256, 0,
                   stream, (bf16*)out, (const float*)inp, n);
}

MN_API int mn_cast_bf16_to_f32(float* out, mn_bf16* inp, int64_t n, void* stream) {
  MN_REQUIRE(n >= 0, "cast_bf16_to_f32: n = %lld", (long long)n);
  if (n == 0) return 0;
  return mn_launch("cast_bf16_to_f32", cast_bf16_to_f32_kernel, mn_blocks_for(n, 256), 256, 0,
                   stream, (float*)out, (const bf16*)inp, n);
}
