// LayerNorm (torch's: biased variance, affine weight and bias) and RMSNorm without weight
// (F.rms_norm(x, (C,), eps)) over rows of C elements, fp32 statistics.
//
// Forward: one block per row, block sums by mn_block_sum (fixed order). LayerNorm's backward: one
// pass over the rows writes dinp and sums the dweight/dbias terms per row tile (partials in library
// scratch), reduce.cuh's col_sums_finish adds the tiles in order, so the result is deterministic
// (layernorm_backward_fused_kernel); rows wider than it keeps in registers take a block per row
// for dinp and reduce.cuh's column sums for dweight/dbias.
#include "common.cuh"
#include "entry_checks.h"
#include "reduce.cuh"

// xhat = (x - mean) * rstd: the forward, dinp and the parameter gradients all use this one
// rounding, so dweight sees the xhat the forward produced.
__host__ __device__ inline float ln_xhat(float x, float mean, float rstd) {
  return (x - mean) * rstd;
}

// Threads per row block: enough warps to cover C, at most 256, a multiple of 32 (mn_block_sum).
static inline int norm_threads(int C) {
  int t = 32 * ((C + 31) / 32);
  return t > 256 ? 256 : t;
}

__device__ inline void ln_store(float* p, float v) { *p = v; }
__device__ inline void ln_store(bf16* p, float v) { *p = mn_f32_to_bf16(v); }

// One row of LayerNorm, run by the whole block (callers: one block per row). x may be what this
// thread itself just wrote (add_layernorm_forward_kernel): each thread reads only its own columns.
template <typename T>
__device__ void layernorm_row(T* y, float* mean, float* rstd, const float* x, const float* weight,
                              const float* bias, int C, float eps, float* scratch) {
  float s = 0.0f;
  for (int c = threadIdx.x; c < C; c += blockDim.x) s += x[c];
  const float m = mn_block_sum(s, scratch) / C;
  float v = 0.0f;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    float d = x[c] - m;
    v += d * d;
  }
  const float r = rsqrtf(mn_block_sum(v, scratch) / C + eps);
  for (int c = threadIdx.x; c < C; c += blockDim.x)
    ln_store(&y[c], ln_xhat(x[c], m, r) * weight[c] + bias[c]);
  if (threadIdx.x == 0) {
    *mean = m;
    *rstd = r;
  }
}

// T: float, or bf16 (the next matmul's operand, rounded once from the same fp32 value)
template <typename T>
__global__ void layernorm_forward_kernel(T* out, float* mean, float* rstd, const float* inp,
                                         const float* weight, const float* bias, int C, float eps) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  layernorm_row(out + row * C, mean + row, rstd + row, inp + row * C, weight, bias, C, eps,
                scratch);
}

__device__ inline float ln_load(const float* p) { return *p; }
__device__ inline float ln_load(const bf16* p) { return mn_bf16_to_f32(*p); }

// The residual add and the LayerNorm after it (RWKV's x = x + att; ln2(x)): sum = inp + branch in
// fp32, out = LayerNorm(sum) as the next matmul's bf16 operand. The row of sum is read back from
// cache, so DRAM sees inp and branch once: mn_add then mn_layernorm_forward_bf16 read sum again.
// B: float, or bf16 (a branch autocast's matmul wrote in bf16).
template <typename B>
__global__ void add_layernorm_forward_kernel(float* sum, bf16* out, float* mean, float* rstd,
                                             const float* inp, const B* branch,
                                             const float* weight, const float* bias, int C,
                                             float eps) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  float* x = sum + row * C;
  for (int c = threadIdx.x; c < C; c += blockDim.x)
    x[c] = inp[row * C + c] + ln_load(&branch[row * C + c]);
  layernorm_row(out + row * C, mean + row, rstd + row, x, weight, bias, C, eps, scratch);
}

// RWKV-7's x = l0 * (x + mlp) + l1 * x0; ln1(x) between blocks: DRAM sees x, mlp and x0 read once
// and each output written once, the row of x_out read back from cache (mn_add, mn_axpby_forward
// then mn_layernorm_forward read the sum and x_out back from DRAM). Each value is the expression
// those kernels evaluate (ew_add's x + y, axpby's a * x + b * y: the same fma contraction), so the
// sums and statistics are theirs.
__global__ void mix_layernorm_forward_kernel(float* sum, float* x_out, float* out, float* mean,
                                             float* rstd, const float* x, const float* branch,
                                             const float* x0, const float* a, const float* b,
                                             const float* weight, const float* bias, int C,
                                             float eps) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const float av = a[0], bv = b[0];
  float* xo = x_out + row * C;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    const int64_t e = row * C + c;
    float s = x[e];
    if (branch) {
      s = s + branch[e];
      if (sum) sum[e] = s;
    }
    xo[c] = av * s + bv * x0[e];
  }
  layernorm_row(out + row * C, mean + row, rstd + row, xo, weight, bias, C, eps, scratch);
}

// dinp += rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dout * weight, xhat = (x - mean) * rstd.
// One element's term, shared by the backward kernels (LayerNorm's and the mix + ln1 one) so their
// dinp is the same bits.
__host__ __device__ inline float ln_dinp(float g, float xhat, float mg, float mgx, float r) {
  return r * (g - mg - xhat * mgx);
}

// The rows backward for C > kLnMaxSlots * 32 (wider than the fused kernel keeps in registers):
// one block of norm_threads(C) per row; thread t owns columns t, t + blockDim, ...
// D: dout's storage (fp32, or bf16: the gradient a bf16 operand's GEMM wrote), read as its values.
template <typename D>
__global__ void layernorm_backward_dinp_kernel(float* dinp, const D* dout, const float* inp,
                                               const float* weight, const float* mean,
                                               const float* rstd, int C, int acc) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const float* x = inp + row * C;
  const D* dy = dout + row * C;
  float* dx = dinp + row * C;
  const float m = mean[row], r = rstd[row];
  float sg = 0.0f, sgx = 0.0f;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    float g = ln_load(&dy[c]) * weight[c];
    sg += g;
    sgx += g * ln_xhat(x[c], m, r);
  }
  const float mg = mn_block_sum(sg, scratch) / C;
  const float mgx = mn_block_sum(sgx, scratch) / C;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    float g = ln_load(&dy[c]) * weight[c];
    float xhat = ln_xhat(x[c], m, r);
    MN_GRAD_STORE(dx[c], ln_dinp(g, xhat, mg, mgx, r), acc);
  }
}

// Column-sum terms (reduce.cuh) of dweight[c] += sum_i dout[i,c] * xhat[i,c] and
// dbias[c] += sum_i dout[i,c].
template <typename D>
struct LayerNormParamTerm {
  const D* dout;
  const float* inp;
  const float* mean;
  const float* rstd;
  int C;
  struct Load {
    float d, x, m, r;
  };
  __device__ void begin(int) {}
  __device__ Load load(int64_t i, int c) const {
    const int64_t e = i * C + c;
    return Load{ln_load(&dout[e]), inp[e], mean[i], rstd[i]};
  }
  __device__ void use(int64_t, int, const Load& l, float* acc) const {
    acc[0] += l.d * ln_xhat(l.x, l.m, l.r);
    acc[1] += l.d;
  }
};

// The fused backward: a block of kLnWarps warps per row tile (mn_reduce::row_tile_plan(N, 1));
// warp w takes rows i0 + w, i0 + w + 8, ... of its tile one at a time and lane l owns columns
// l + 32 k, k < J (the row's dout and xhat stay in registers between its sums and dinp). The row
// sums mean(g), mean(g * xhat) repeat the order of the block-per-row kernel's mn_block_sum over
// norm_threads(C) threads, so dinp is the same bits: that block's thread w * 32 + l sums columns
// 32 (w + 8 j) + l, j = 0, 1, ... (C > 256: 8 warps; else j = 0 only), which this lane holds as
// slots k = w + 8 j; the butterfly of mn_warp_sum over those partials gives "warp w"'s sum, and
// the sums of warps 0, 1, ... are added in order from 0 (there are min(8, ceil(C / 32)) of them).
// Each warp adds dout * xhat and dout of its rows (in increasing order) per column in its own
// shared-memory row pair (in registers too they would not leave 2 blocks of 256 threads per SM:
// the row itself takes 2 J of them); at the end the block adds its warps' sums in warp order: one
// partial [2][C] per tile, in part (tiles > 1) or straight into dweight, dbias (one tile). The
// partials are summed by reduce.cuh's col_sums_finish.
constexpr int kLnWarps = 8;      // rows in flight per block
constexpr int kLnThreads = kLnWarps * 32;
constexpr int kLnRowWarps = 8;   // warps of the row kernel's block: norm_threads(C) <= 256
constexpr int kLnMaxSlots = 24;  // columns per lane at most: C <= 768 fused (48 KB shared)

template <typename D, int J>
__global__ void __launch_bounds__(kLnThreads, 2)
    layernorm_backward_fused_kernel(float* dinp, float* part, float* dweight, float* dbias,
                                    const D* dout, const float* inp, const float* weight,
                                    const float* mean, const float* rstd, int64_t N, int C,
                                    int64_t tile_rows, int accumulate) {
  static_assert(J % kLnRowWarps == 0, "slots k = w + 8 j: whole rounds of the row kernel's warps");
  MN_DYNAMIC_SHARED(float, sums);  // [kLnWarps][2][C]: each warp's dweight, dbias terms
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int row_warps = (C + 31) / 32 < kLnRowWarps ? (C + 31) / 32 : kLnRowWarps;
  const int acc_dx = MN_ACC_BIT(accumulate, 0);
  const int64_t i0 = (int64_t)blockIdx.x * tile_rows;
  const int64_t i1 = i0 + tile_rows < N ? i0 + tile_rows : N;
  float* sw = sums + (int64_t)warp * 2 * C;  // this warp's alone until the __syncthreads below
  float* sb = sw + C;
  for (int c = lane; c < C; c += 32) sw[c] = sb[c] = 0.0f;
  for (int64_t i = i0 + warp; i < i1; i += kLnWarps) {
    const float* x = inp + i * C;
    const D* dy = dout + i * C;
    float* dx = dinp + i * C;
    const float m = mean[i], r = rstd[i];
    float d[J], xh[J];
#pragma unroll
    for (int k = 0; k < J; k++) {
      const int c = k * 32 + lane;
      d[k] = c < C ? ln_load(&dy[c]) : 0.0f;
      xh[k] = c < C ? ln_xhat(x[c], m, r) : 0.0f;
    }
    float tg = 0.0f, tgx = 0.0f;  // mn_block_sum's totals: warps added in order from 0
#pragma unroll
    for (int w = 0; w < kLnRowWarps; w++) {
      if (w >= row_warps) break;
      float sg = 0.0f, sgx = 0.0f;  // the row kernel's thread w * 32 + lane
#pragma unroll
      for (int k = w; k < J; k += kLnRowWarps) {
        const int c = k * 32 + lane;
        if (c < C) {
          float g = d[k] * weight[c];
          sg += g;
          sgx += g * xh[k];
        }
      }
      tg += mn_warp_sum(sg);
      tgx += mn_warp_sum(sgx);
    }
    const float mg = tg / C, mgx = tgx / C;
#pragma unroll
    for (int k = 0; k < J; k++) {
      const int c = k * 32 + lane;
      if (c < C) {
        MN_GRAD_STORE(dx[c], ln_dinp(d[k] * weight[c], xh[k], mg, mgx, r), acc_dx);
        sw[c] += d[k] * xh[k];
        sb[c] += d[k];
      }
    }
  }
  __syncthreads();
  for (int c = threadIdx.x; c < C; c += kLnThreads) {
    float vw = sums[c], vb = sums[C + c];
    for (int w = 1; w < kLnWarps; w++) {
      vw += sums[(int64_t)w * 2 * C + c];
      vb += sums[(int64_t)w * 2 * C + C + c];
    }
    if (part) {
      part[((int64_t)blockIdx.x * 2 + 0) * C + c] = vw;
      part[((int64_t)blockIdx.x * 2 + 1) * C + c] = vb;
    } else {
      MN_GRAD_STORE(dweight[c], vw, MN_ACC_BIT(accumulate, 1));
      MN_GRAD_STORE(dbias[c], vb, MN_ACC_BIT(accumulate, 2));
    }
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
                                        const float* rstd, int C, int acc) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const float* x = inp + row * C;
  const float* dy = dout + row * C;
  float* dx = dinp + row * C;
  const float r = rstd[row];
  float s = 0.0f;
  for (int c = threadIdx.x; c < C; c += blockDim.x) s += dy[c] * x[c];
  const float k = mn_block_sum(s, scratch) / C * r * r;
  for (int c = threadIdx.x; c < C; c += blockDim.x) MN_GRAD_STORE(dx[c], r * (dy[c] - x[c] * k), acc);
}

#define NORM_SHAPE_CHECK(fn, N, C) \
  MN_REQUIRE((N) > 0 && (C) > 0, "%s: bad shape N = %d, C = %d", fn, (int)(N), (int)(C))

MN_API int mn_layernorm_forward(float* out, float* mean, float* rstd, float* inp, float* weight,
                                float* bias, int N, int C, float eps, void* stream) {
  const char* fn = "layernorm_forward";
  if (int rc = mn_check_layernorm_forward(fn, out, mean, rstd, inp, weight, bias, N, C, eps))
    return rc;
  return mn_launch(fn, layernorm_forward_kernel<float>, N, norm_threads(C), 0, stream, out, mean,
                   rstd, (const float*)inp, (const float*)weight, (const float*)bias, C, eps);
}

MN_API int mn_layernorm_forward_bf16(mn_bf16* out, float* mean, float* rstd, float* inp,
                                     float* weight, float* bias, int N, int C, float eps,
                                     void* stream) {
  const char* fn = "layernorm_forward_bf16";
  if (int rc = mn_check_layernorm_forward(fn, out, mean, rstd, inp, weight, bias, N, C, eps))
    return rc;
  return mn_launch(fn, layernorm_forward_kernel<bf16>, N, norm_threads(C), 0, stream, (bf16*)out,
                   mean, rstd, (const float*)inp, (const float*)weight, (const float*)bias, C,
                   eps);
}

MN_API int mn_add_layernorm_forward(float* sum, mn_bf16* out, float* mean, float* rstd, float* inp,
                                    void* branch, int branch_bf16, float* weight, float* bias,
                                    int N, int C, float eps, void* stream) {
  const char* fn = "add_layernorm_forward";
  if (int rc = mn_check_add_layernorm_forward(fn, sum, out, mean, rstd, inp, branch, weight, bias,
                                              N, C, eps))
    return rc;
  if (branch_bf16)
    return mn_launch(fn, add_layernorm_forward_kernel<bf16>, N, norm_threads(C), 0, stream, sum,
                     (bf16*)out, mean, rstd, (const float*)inp, (const bf16*)branch,
                     (const float*)weight, (const float*)bias, C, eps);
  return mn_launch(fn, add_layernorm_forward_kernel<float>, N, norm_threads(C), 0, stream, sum,
                   (bf16*)out, mean, rstd, (const float*)inp, (const float*)branch,
                   (const float*)weight, (const float*)bias, C, eps);
}

MN_API int mn_mix_layernorm_forward(float* sum, float* x_out, float* out, float* mean, float* rstd,
                                    float* x, float* branch, float* x0, float* a, float* b,
                                    float* weight, float* bias, int N, int C, float eps,
                                    void* stream) {
  const char* fn = "mix_layernorm_forward";
  if (int rc = mn_check_mix_layernorm_forward(fn, sum, x_out, out, mean, rstd, x, branch, x0, a, b,
                                              weight, bias, N, C, eps))
    return rc;
  return mn_launch(fn, mix_layernorm_forward_kernel, N, norm_threads(C), 0, stream, sum, x_out,
                   out, mean, rstd, (const float*)x, (const float*)branch, (const float*)x0,
                   (const float*)a, (const float*)b, (const float*)weight, (const float*)bias, C,
                   eps);
}

// The fused kernel with J column slots per lane (J * 32 >= C).
template <typename D, int J>
static int layernorm_backward_fused(float* dinp, float* dweight, float* dbias, const D* dout,
                                    float* inp, float* weight, float* mean, float* rstd, int N,
                                    int C, int accumulate, void* stream) {
  const mn_reduce::ColPlan p = mn_reduce::row_tile_plan(N, 1);
  float* part = nullptr;
  if (p.tiles > 1) {
    if (int rc = mn_reduce::scratch_floats(&part, (int64_t)p.tiles * 2 * C, stream)) return rc;
  }
  int rc = mn_launch("layernorm_backward_fused", layernorm_backward_fused_kernel<D, J>,
                     (unsigned)p.tiles, kLnThreads, (size_t)kLnWarps * 2 * C * sizeof(float),
                     stream, dinp, part, dweight, dbias, dout,
                     (const float*)inp, (const float*)weight, (const float*)mean,
                     (const float*)rstd, (int64_t)N, C, p.tile_rows, accumulate);
  if (rc || p.tiles == 1) return rc;
  return mn_reduce::col_sums_finish<2>(part, p.tiles, mn_reduce::ColOuts{{dweight, dbias}}, C,
                                       accumulate >> 1 & 3, stream);
}

template <typename D>
static int layernorm_backward(const char* fn, float* dinp, float* dweight, float* dbias,
                              const D* dout, float* inp, float* weight, float* mean, float* rstd,
                              int N, int C, int accumulate, void* stream) {
  MN_REQUIRE(dinp && dweight && dbias && dout && inp && weight && mean && rstd,
             "%s: NULL pointer argument", fn);
  NORM_SHAPE_CHECK(fn, N, C);
  // the fewest column slots that hold the row: registers per thread grow with them
  const int slots = (C + 31) / 32;
  if (slots <= 8)
    return layernorm_backward_fused<D, 8>(dinp, dweight, dbias, dout, inp, weight, mean, rstd, N,
                                          C, accumulate, stream);
  if (slots <= 16)
    return layernorm_backward_fused<D, 16>(dinp, dweight, dbias, dout, inp, weight, mean, rstd, N,
                                           C, accumulate, stream);
  if (slots <= kLnMaxSlots)
    return layernorm_backward_fused<D, kLnMaxSlots>(dinp, dweight, dbias, dout, inp, weight, mean,
                                                    rstd, N, C, accumulate, stream);
  int rc = mn_launch("layernorm_backward_dinp", layernorm_backward_dinp_kernel<D>, N,
                     norm_threads(C), 0, stream, dinp, dout, (const float*)inp,
                     (const float*)weight, (const float*)mean, (const float*)rstd, C,
                     MN_ACC_BIT(accumulate, 0));
  if (rc) return rc;
  float* part = nullptr;
  if ((rc = mn_reduce::scratch_floats(&part, mn_reduce::col_scratch_floats(N, C, 2), stream)))
    return rc;
  return mn_reduce::col_sums<2>("layernorm_backward_params",
                                LayerNormParamTerm<D>{dout, (const float*)inp, (const float*)mean,
                                                      (const float*)rstd, C},
                                dweight, dbias, N, C, accumulate >> 1 & 3, part, stream);
}

MN_API int mn_layernorm_backward(float* dinp, float* dweight, float* dbias, float* dout,
                                 float* inp, float* weight, float* mean, float* rstd, int N, int C,
                                 int accumulate, void* stream) {
  return layernorm_backward("layernorm_backward", dinp, dweight, dbias, (const float*)dout, inp,
                            weight, mean, rstd, N, C, accumulate, stream);
}

MN_API int mn_layernorm_backward_bf16(float* dinp, float* dweight, float* dbias, mn_bf16* dout,
                                      float* inp, float* weight, float* mean, float* rstd, int N,
                                      int C, int accumulate, void* stream) {
  return layernorm_backward("layernorm_backward_bf16", dinp, dweight, dbias, (const bf16*)dout,
                            inp, weight, mean, rstd, N, C, accumulate, stream);
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
                               int accumulate, void* stream) {
  const char* fn = "rmsnorm_backward";
  MN_REQUIRE(dinp && dout && inp && rstd, "%s: NULL pointer argument", fn);
  NORM_SHAPE_CHECK(fn, N, C);
  return mn_launch(fn, rmsnorm_backward_kernel, N, norm_threads(C), 0, stream, dinp,
                   (const float*)dout, (const float*)inp, (const float*)rstd, C,
                   MN_ACC_BIT(accumulate, 0));
}

// ---- RWKV-7's residual mix + ln1, backward (mn_mix_layernorm_backward) ----
// One block per row tile (reduce.cuh row_tile_plan(N, 1): the tiling depends on N only), one
// warp per row, lane l holding columns l, l + 32, ... in registers: the row's two LayerNorm sums
// are warp sums (mn_warp_sum's fixed butterfly), and each lane keeps its columns' dweight/dbias
// terms over the tile's rows in registers (a column-sum kernel would read dout and x_out again).
// At the tile's end the warps' partials are added in warp order into scratch, and
// col_sums_finish adds the tiles in tile order. DRAM sees dout, g_in, x_out, x, branch, x0 (and
// dx0 when it accumulates) read once and ds, ds_bf16, dx0 written once.
constexpr int kMixLnWarps = 8;  // rows in flight per block

// LayerNorm's input gradient of one element: ln_dinp above, the LayerNorm backwards' expression.

// The gradient outputs and flags (one struct argument: fewer kernel parameters to pass).
struct MixLnGrads {
  float* ds;
  bf16* ds_bf16;
  float* dx0;
  float* part;  // [tiles][2][C] dweight/dbias partials, then [tiles][2] da/db partials
  int acc_ds, acc_dx0;
};

// V: columns per lane (C <= 32 V); the per-lane arrays stay in registers (fully unrolled).
template <int V>
__global__ void __launch_bounds__(kMixLnWarps * 32)
    mix_layernorm_backward_kernel(MixLnGrads G, const float* dout, const float* g_in,
                                  const float* x_out, const float* x, const float* branch,
                                  const float* x0, const float* a, const float* b,
                                  const float* weight, const float* mean, const float* rstd,
                                  int64_t N, int C, int64_t tile_rows, int tiles) {
  __shared__ float red[kMixLnWarps][V * 32];
  __shared__ float red_ab[2][kMixLnWarps];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const float av = a[0], bv = b[0];
  const int64_t i0 = (int64_t)blockIdx.x * tile_rows;
  const int64_t i1 = i0 + tile_rows < N ? i0 + tile_rows : N;
  float pw[V], pb[V];  // this lane's columns: sum of dout * xhat, sum of dout
#pragma unroll
  for (int j = 0; j < V; j++) pw[j] = pb[j] = 0.0f;
  float pa = 0.0f, pbb = 0.0f;  // sum of g * s, sum of g * x0
  for (int64_t i = i0 + warp; i < i1; i += kMixLnWarps) {
    const int64_t o = i * C;
    const float m = mean[i], r = rstd[i];
    float gw[V], xh[V];
    float sg = 0.0f, sgx = 0.0f;
#pragma unroll
    for (int j = 0; j < V; j++) {
      const int c = lane + 32 * j;
      gw[j] = xh[j] = 0.0f;
      if (c < C) {
        const float d = dout ? dout[o + c] : 0.0f;
        xh[j] = ln_xhat(x_out[o + c], m, r);
        gw[j] = d * weight[c];
        sg += gw[j];
        sgx += gw[j] * xh[j];
        pw[j] += d * xh[j];  // LayerNormParamTerm's terms
        pb[j] += d;
      }
    }
    const float mg = mn_warp_sum(sg) / C;
    const float mgx = mn_warp_sum(sgx) / C;
#pragma unroll
    for (int j = 0; j < V; j++) {
      const int c = lane + 32 * j;
      if (c < C) {
        const int64_t e = o + c;
        float g = ln_dinp(gw[j], xh[j], mg, mgx, r);
        if (g_in) g = g_in[e] + g;  // read before ds (which may be g_in) is written
        const float s = branch ? x[e] + branch[e] : x[e];  // the forward's x + branch
        pa += g * s;
        pbb += g * x0[e];
        if (G.ds) MN_GRAD_STORE(G.ds[e], av * g, G.acc_ds);
        if (G.ds_bf16) G.ds_bf16[e] = mn_f32_to_bf16(av * g);
        // after ds: when ds == dx0 (x is x0) this adds to the term just stored
        if (G.dx0) MN_GRAD_STORE(G.dx0[e], bv * g, G.acc_dx0);
      }
    }
  }
  // the tile's partials: warps added in warp order
#pragma unroll
  for (int k = 0; k < 2; k++) {
#pragma unroll
    for (int j = 0; j < V; j++) {
      const int c = lane + 32 * j;
      if (c < C) red[warp][c] = k ? pb[j] : pw[j];
    }
    __syncthreads();
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
      float s = 0.0f;
#pragma unroll
      for (int w = 0; w < kMixLnWarps; w++) s += red[w][c];
      G.part[((int64_t)blockIdx.x * 2 + k) * C + c] = s;
    }
    __syncthreads();
  }
  pa = mn_warp_sum(pa);
  pbb = mn_warp_sum(pbb);
  if (lane == 0) {
    red_ab[0][warp] = pa;
    red_ab[1][warp] = pbb;
  }
  __syncthreads();
  if (threadIdx.x < 2) {
    float s = 0.0f;
#pragma unroll
    for (int w = 0; w < kMixLnWarps; w++) s += red_ab[threadIdx.x][w];
    G.part[(int64_t)tiles * 2 * C + 2 * (int64_t)blockIdx.x + threadIdx.x] = s;
  }
}

template <int V>
static int mix_layernorm_backward_launch(const char* fn, const MixLnGrads& G, unsigned tiles,
                                         void* stream, const float* dout, const float* g_in,
                                         const float* x_out, const float* x, const float* branch,
                                         const float* x0, const float* a, const float* b,
                                         const float* weight, const float* mean,
                                         const float* rstd, int64_t N, int C, int64_t tile_rows) {
  return mn_launch(fn, mix_layernorm_backward_kernel<V>, tiles, kMixLnWarps * 32, 0, stream, G,
                   dout, g_in, x_out, x, branch, x0, a, b, weight, mean, rstd, N, C, tile_rows,
                   (int)tiles);
}

MN_API int mn_mix_layernorm_backward(float* ds, mn_bf16* ds_bf16, float* dx0, float* dweight,
                                     float* dbias, float* da, float* db, float* dout, float* g_in,
                                     float* x_out, float* x, float* branch, float* x0, float* a,
                                     float* b, float* weight, float* mean, float* rstd, int N,
                                     int C, int accumulate, void* stream) {
  const char* fn = "mix_layernorm_backward";
  if (int rc = mn_check_mix_layernorm_backward(fn, ds, ds_bf16, dx0, dweight, dbias, da, db, dout,
                                               g_in, x_out, x, branch, x0, a, b, weight, mean,
                                               rstd, N, C, accumulate))
    return rc;
  const mn_reduce::ColPlan p = mn_reduce::row_tile_plan(N, 1);
  float* part = nullptr;
  if (int rc = mn_reduce::scratch_floats(&part, (int64_t)p.tiles * 2 * (C + 1), stream)) return rc;
  const MixLnGrads G{ds, (bf16*)ds_bf16, dx0, part, MN_ACC_BIT(accumulate, 0),
                     MN_ACC_BIT(accumulate, 2)};
  // columns per lane: the smallest instantiation that covers C (registers scale with it)
  const int v = (C + 31) / 32;
  auto launch = v <= 4    ? mix_layernorm_backward_launch<4>
                : v <= 8  ? mix_layernorm_backward_launch<8>
                : v <= 16 ? mix_layernorm_backward_launch<16>
                : v <= 24 ? mix_layernorm_backward_launch<24>
                          : mix_layernorm_backward_launch<32>;
  int rc = launch(fn, G, (unsigned)p.tiles, stream, dout, g_in, x_out, x, branch, x0, a, b,
                  weight, mean, rstd, N, C, p.tile_rows);
  if (rc) return rc;
  if ((rc = mn_reduce::col_sums_finish<2>(part, p.tiles, mn_reduce::ColOuts{{dweight, dbias}}, C,
                                          accumulate >> 3 & 3, stream)))
    return rc;
  return mn_reduce::col_sums_finish<2>(part + (int64_t)p.tiles * 2 * C, p.tiles,
                                       mn_reduce::ColOuts{{da, db}}, 1, accumulate >> 5 & 3,
                                       stream);
}
