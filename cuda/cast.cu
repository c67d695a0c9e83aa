// fp32 <-> bf16 conversion (round to nearest even, as torch's .to(torch.bfloat16)).
#include "common.cuh"
#include "entry_checks.h"

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

// mn_copy_columns: a grid-stride loop over the block's rows * cols elements, consecutive threads
// along a row, so each row's run of cols elements is read and written coalesced (the tape's
// blocks are 16..128 columns of matrices up to a few hundred wide).
__device__ inline float copy_columns_load(const float* p) { return *p; }
__device__ inline float copy_columns_load(const bf16* p) { return mn_bf16_to_f32(*p); }
__device__ inline void copy_columns_store(float* p, float v, int acc) { MN_GRAD_STORE(*p, v, acc); }
__device__ inline void copy_columns_store(bf16* p, float v, int) { *p = mn_f32_to_bf16(v); }

template <typename D, typename S>
__global__ void copy_columns_kernel(D* dst, int ld_dst, const S* src, int ld_src, int rows,
                                    int cols, int acc) {
  const int64_t n = (int64_t)rows * cols;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t r = i / cols, c = i - r * cols;
    copy_columns_store(dst + r * ld_dst + c, copy_columns_load(src + r * ld_src + c), acc);
  }
}

template <typename D, typename S>
static int copy_columns_launch(void* dst, int ld_dst, void* src, int ld_src, int rows, int cols,
                               int acc, void* stream) {
  const int64_t n = (int64_t)rows * cols;
  return mn_launch("copy_columns", copy_columns_kernel<D, S>, mn_blocks_for(n, 256), 256, 0,
                   stream, (D*)dst, ld_dst, (const S*)src, ld_src, rows, cols, acc);
}

MN_API int mn_copy_columns(void* dst, int ld_dst, int dst_bf16, void* src, int ld_src,
                           int src_bf16, int rows, int cols, int accumulate, void* stream) {
  if (int rc = mn_check_copy_columns(dst, ld_dst, dst_bf16, src, ld_src, src_bf16, rows, cols,
                                     accumulate))
    return rc;
  if ((int64_t)rows * cols == 0) return 0;
  const int acc = MN_ACC_BIT(accumulate, 0);
  if (dst_bf16) {
    return src_bf16
               ? copy_columns_launch<bf16, bf16>(dst, ld_dst, src, ld_src, rows, cols, 0, stream)
               : copy_columns_launch<bf16, float>(dst, ld_dst, src, ld_src, rows, cols, 0, stream);
  }
  return src_bf16
             ? copy_columns_launch<float, bf16>(dst, ld_dst, src, ld_src, rows, cols, acc, stream)
             : copy_columns_launch<float, float>(dst, ld_dst, src, ld_src, rows, cols, acc, stream);
}
