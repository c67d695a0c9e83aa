// LayerNorm (torch's: biased variance, affine weight and bias) and RMSNorm without weight
// (F.rms_norm(x, (C,), eps)) over rows of C elements, fp32 statistics.
//
// Forward and dinp: one block per row, block sums by mn_block_sum (fixed order). LayerNorm's
// dweight/dbias: a second kernel where each column is owned by one block column of NORM_RG
// threads; each thread sums a fixed strided subset of the rows, and the NORM_RG partials are added
// in a fixed order, so the result is deterministic.
#include "common.cuh"

// Threads per row block: enough warps to cover C, at most 256, a multiple of 32 (mn_block_sum).
static inline int norm_threads(int C) {
  int t = 32 * ((C + 31) / 32);
  return t > 256 ? 256 : t;
}

__global__ void layernorm_forward_kernel(float* out, float* mean, float* rstd, const float* inp,
                                         const float* weight, const float* bias, int C,
                                         float eps) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const float* x = inp + row * C;
  float* y = out + row * C;
  float s = 0.0f;
  for (int c = threadIdx.x; c < C; c += blockDim.x) s += x[c];
  const float m = mn_block_sum(s, scratch) / C;
  float v = 0.0f;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    float d = x[c] - m;
    v += d * d;
  }
  const float r = rsqrtf(mn_block_sum(v, scratch) / C + eps);
  for (int c = threadIdx.x; c < C; c += blockDim.x) y[c] = (x[c] - m) * r * weight[c] + bias[c];
  if (threadIdx.x == 0) {
    mean[row] = m;
    rstd[row] = r;
  }
}

// dinp += rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dout * weight, xhat = (x - mean) * rstd
__global__ void layernorm_backward_dinp_kernel(float* dinp, const float* dout, const float* inp,
                                               const float* weight, const float* mean,
                                               const float* rstd, int C) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const float* x = inp + row * C;
  const float* dy = dout + row * C;
  float* dx = dinp + row * C;
  const float m = mean[row], r = rstd[row];
  float sg = 0.0f, sgx = 0.0f;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    float g = dy[c] * weight[c];
    sg += g;
    sgx += g * (x[c] - m) * r;
  }
  const float mg = mn_block_sum(sg, scratch) / C;
  const float mgx = mn_block_sum(sgx, scratch) / C;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    float g = dy[c] * weight[c];
    float xhat = (x[c] - m) * r;
    dx[c] += r * (g - mg - xhat * mgx);
  }
}

constexpr int NORM_COLS = 32;  // columns per block (one warp-width: coalesced row reads)
constexpr int NORM_RG = 8;     // row groups per block: thread (tx, ty) sums rows ty, ty+8, ...

// dweight[c] += sum_i dout[i,c] * xhat[i,c];  dbias[c] += sum_i dout[i,c]
__global__ void layernorm_backward_params_kernel(float* dweight, float* dbias, const float* dout,
                                                 const float* inp, const float* mean,
                                                 const float* rstd, int N, int C) {
  __shared__ float pw[NORM_RG][NORM_COLS];
  __shared__ float pb[NORM_RG][NORM_COLS];
  const int c = blockIdx.x * NORM_COLS + threadIdx.x;
  float sw = 0.0f, sb = 0.0f;
  if (c < C) {
    for (int i = threadIdx.y; i < N; i += NORM_RG) {
      int64_t e = (int64_t)i * C + c;
      float dy = dout[e];
      sw += dy * (inp[e] - mean[i]) * rstd[i];
      sb += dy;
    }
  }
  pw[threadIdx.y][threadIdx.x] = sw;
  pb[threadIdx.y][threadIdx.x] = sb;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    float tw = 0.0f, tb = 0.0f;
    for (int k = 0; k < NORM_RG; k++) {
      tw += pw[k][threadIdx.x];
      tb += pb[k][threadIdx.x];
    }
    dweight[c] += tw;
    dbias[c] += tb;
  }
}

__global__ void rmsnorm_forward_kernel(float* out, float* rstd, const float* inp, int C,
                                       float eps) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const float* x = inp + row * C;
  float* y = out + row * C;
  float s = 0.0f;
  for (int c = threadIdx.x; c < C; c += blockDim.x) s += x[c] * x[c];
  const float r = rsqrtf(mn_block_sum(s, scratch) / C + eps);
  for (int c = threadIdx.x; c < C; c += blockDim.x) y[c] = x[c] * r;
  if (threadIdx.x == 0) rstd[row] = r;
}

// y = x * r, r = (mean(x^2) + eps)^-1/2:  dx += r * (dy - x * r^2 * mean(dy * x))
__global__ void rmsnorm_backward_kernel(float* dinp, const float* dout, const float* inp,
                                        const float* rstd, int C) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const float* x = inp + row * C;
  const float* dy = dout + row * C;
  float* dx = dinp + row * C;
  const float r = rstd[row];
  float s = 0.0f;
  for (int c = threadIdx.x; c < C; c += blockDim.x) s += dy[c] * x[c];
  const float k = mn_block_sum(s, scratch) / C * r * r;
  for (int c = threadIdx.x; c < C; c += blockDim.x) dx[c] += r * (dy[c] - x[c] * k);
}

#define NORM_SHAPE_CHECK(fn, N, C) \
  MN_REQUIRE((N) > 0 && (C) > 0, "%s: bad shape N = %d, C = %d", fn, (int)(N), (int)(C))

MN_API int mn_layernorm_forward(float* out, float* mean, float* rstd, float* inp, float* weight,
                                float* bias, int N, int C, float eps, void* stream) {
  const char* fn = "layernorm_forward";
  MN_REQUIRE(out && mean && rstd && inp && weight && bias, "%s: NULL pointer argument", fn);
  NORM_SHAPE_CHECK(fn, N, C);
  MN_REQUIRE(eps >= 0.0f, "%s: eps = %g must be >= 0", fn, (double)eps);
  return mn_launch(fn, layernorm_forward_kernel, N, norm_threads(C), 0, stream, out, mean, rstd,
                   (const float*)inp, (const float*)weight, (const float*)bias, C, eps);
}

MN_API int mn_layernorm_backward(float* dinp, float* dweight, float* dbias, float* dout,
                                 float* inp, float* weight, float* mean, float* rstd, int N, int C,
                                 void* stream) {
  const char* fn = "layernorm_backward";
  MN_REQUIRE(dinp && dweight && dbias && dout && inp && weight && mean && rstd,
             "%s: NULL pointer argument", fn);
  NORM_SHAPE_CHECK(fn, N, C);
  int rc = mn_launch("layernorm_backward_dinp", layernorm_backward_dinp_kernel, N, norm_threads(C),
                     0, stream, dinp, (const float*)dout, (const float*)inp,
                     (const float*)weight, (const float*)mean, (const float*)rstd, C);
  if (rc) return rc;
  return mn_launch("layernorm_backward_params", layernorm_backward_params_kernel,
                   (C + NORM_COLS - 1) / NORM_COLS, dim3(NORM_COLS, NORM_RG), 0, stream, dweight,
                   dbias, (const float*)dout, (const float*)inp, (const float*)mean,
                   (const float*)rstd, N, C);
}

MN_API int mn_rmsnorm_forward(float* out, float* rstd, float* inp, int N, int C, float eps,
                              void* stream) {
  const char* fn = "rmsnorm_forward";
  MN_REQUIRE(out && rstd && inp, "%s: NULL pointer argument", fn);
  NORM_SHAPE_CHECK(fn, N, C);
  MN_REQUIRE(eps >= 0.0f, "%s: eps = %g must be >= 0", fn, (double)eps);
  return mn_launch(fn, rmsnorm_forward_kernel, N, norm_threads(C), 0, stream, out, rstd,
                   (const float*)inp, C, eps);
}

MN_API int mn_rmsnorm_backward(float* dinp, float* dout, float* inp, float* rstd, int N, int C,
                               void* stream) {
  const char* fn = "rmsnorm_backward";
  MN_REQUIRE(dinp && dout && inp && rstd, "%s: NULL pointer argument", fn);
  NORM_SHAPE_CHECK(fn, N, C);
  return mn_launch(fn, rmsnorm_backward_kernel, N, norm_threads(C), 0, stream, dinp,
                   (const float*)dout, (const float*)inp, (const float*)rstd, C);
}
