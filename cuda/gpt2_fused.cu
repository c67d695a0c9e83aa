// The GPT-2 record's pointwise chains fused the way torch.compile fuses them (kernels.h, "GPT-2
// fused chains"): each reads its inputs once and writes only what later kernels or the backward
// read. The unfused composition of generic ops (axpby / add, rmsnorm, cast) stays in the tape for
// hackers; these kernels round every value as that composition does, so the fast path and the
// generic path agree to the order of the scalar gradients' sums.
//
// Mix + RMSNorm. Forward: one block per row (the rmsnorm's block sum in the same thread order as
// rmsnorm_forward_kernel). Backward: a full grid of `blocks` blocks over contiguous row chunks
// (sized from N only); each row's dot(dnorm, x_out) is a block sum, then every element's g is
// formed once and feeds dx, dy and the per-thread partials of sum(g*x), sum(g*y); the block's
// partials go to library scratch and reduce.cuh's full-sum kernel adds them in block order. No
// float atomics, so the scalar gradients are bit-identical from run to run.
#include "common.cuh"
#include "reduce.cuh"

// x_out = a*x + b*y, written as mn_axpby_forward writes it (the residual the next ops read).
__host__ __device__ inline float mix_value(float a, float x, float b, float y) {
  return a * x + b * y;
}
// rmsnorm's contribution to the gradient of its input: r * (dnorm - x * k), k = mean(dnorm*x) r^2
// (rmsnorm_backward_kernel's expression), added to the gradient x_out already has.
__host__ __device__ inline float mix_rms_grad(float dxo, float r, float dn, float xo, float k) {
  return dxo + r * (dn - xo * k);
}

static inline int mix_threads(int C) {  // norm.cu's norm_threads: the same block sums
  int t = 32 * ((C + 31) / 32);
  return t > 256 ? 256 : t;
}

__global__ void mix_rmsnorm_forward_kernel(float* x_out, float* out_f32, bf16* out_bf16,
                                           float* rstd, const float* x, const float* y,
                                           const float* ab, int C, float eps) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const float a = ab[0], b = ab[1];
  const float* xr = x + row * C;
  const float* yr = y + row * C;
  float* xo = x_out + row * C;
  float s = 0.0f;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    const float v = mix_value(a, xr[c], b, yr[c]);
    xo[c] = v;
    s += v * v;
  }
  const float r = rsqrtf(mn_block_sum(s, scratch) / C + eps);
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    const float o = xo[c] * r;  // this thread's own store above
    if (out_f32) out_f32[row * C + c] = o;
    if (out_bf16) out_bf16[row * C + c] = mn_f32_to_bf16(o);
  }
  if (threadIdx.x == 0) rstd[row] = r;
}

// Rows per block of the backward: up to 1024 blocks (one wave of 256-thread blocks on 132 SMs),
// from N alone, so the partials' order never depends on the device.
struct MixPlan {
  int blocks;
  int rows;
};
static inline MixPlan mix_plan(int N) {
  const int want = N < 1024 ? N : 1024;
  const int rows = (N + want - 1) / want;
  return MixPlan{(N + rows - 1) / rows, rows};
}

// part != NULL: block b writes its two partial sums to part[2b], part[2b + 1]; part == NULL (one
// block): they go straight to dab under bit 2. kSame: dx == dy.
template <bool kSame>
__global__ void mix_rmsnorm_backward_kernel(float* dx, float* dy, float* dab, float* part,
                                            const float* dx_out, const float* dnorm,
                                            const float* x_out, const float* rstd,
                                            const float* x, const float* y, const float* ab,
                                            int N, int C, int rows, int accumulate) {
  __shared__ float scratch[32];
  const float a = ab[0], b = ab[1];
  const bool acc_x = accumulate & 1, acc_y = accumulate & 2;
  float s0 = 0.0f, s1 = 0.0f;
  const int i0 = blockIdx.x * rows;
  const int i1 = i0 + rows < N ? i0 + rows : N;
  for (int i = i0; i < i1; i++) {
    const int64_t o = (int64_t)i * C;
    const float r = rstd[i];
    float d = 0.0f;
    for (int c = threadIdx.x; c < C; c += blockDim.x) d += dnorm[o + c] * x_out[o + c];
    const float k = mn_block_sum(d, scratch) / C * r * r;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
      const int64_t e = o + c;
      const float g = mix_rms_grad(dx_out ? dx_out[e] : 0.0f, r, dnorm[e], x_out[e], k);
      if (kSame) {
        const float t = acc_x ? dx[e] + a * g : a * g;
        dx[e] = t + b * g;
      } else {
        if (dx) dx[e] = acc_x ? dx[e] + a * g : a * g;
        if (dy) dy[e] = acc_y ? dy[e] + b * g : b * g;
      }
      if (dab) {
        s0 += g * x[e];
        s1 += g * y[e];
      }
    }
  }
  if (!dab) return;
  const float t0 = mn_block_sum(s0, scratch);
  const float t1 = mn_block_sum(s1, scratch);
  if (threadIdx.x == 0) {
    if (part) {
      part[2 * (int64_t)blockIdx.x] = t0;
      part[2 * (int64_t)blockIdx.x + 1] = t1;
    } else {
      const bool acc = accumulate & 4;
      dab[0] = acc ? dab[0] + t0 : t0;
      dab[1] = acc ? dab[1] + t1 : t1;
    }
  }
}

#define MIX_SHAPE_CHECK(fn, N, C) \
  MN_REQUIRE((N) > 0 && (C) > 0, "%s: bad shape N = %d, C = %d", fn, (int)(N), (int)(C))

MN_API int mn_mix_rmsnorm_forward(float* x_out, float* out_f32, mn_bf16* out_bf16, float* rstd,
                                  float* x, float* y, float* ab, int N, int C, float eps,
                                  void* stream) {
  const char* fn = "mix_rmsnorm_forward";
  MN_REQUIRE(x_out && rstd && x && y && ab, "%s: NULL pointer argument", fn);
  MN_REQUIRE(out_f32 || out_bf16, "%s: out_f32 and out_bf16 both NULL", fn);
  MIX_SHAPE_CHECK(fn, N, C);
  MN_REQUIRE(eps >= 0.0f, "%s: eps = %g must be >= 0", fn, (double)eps);
  return mn_launch(fn, mix_rmsnorm_forward_kernel, N, mix_threads(C), 0, stream, x_out, out_f32,
                   (bf16*)out_bf16, rstd, (const float*)x, (const float*)y, (const float*)ab, C,
                   eps);
}

MN_API int mn_mix_rmsnorm_backward(float* dx, float* dy, float* dab, float* dx_out, float* dnorm,
                                   float* x_out, float* rstd, float* x, float* y, float* ab, int N,
                                   int C, int accumulate, void* stream) {
  const char* fn = "mix_rmsnorm_backward";
  MN_REQUIRE(dnorm && x_out && rstd && ab, "%s: NULL pointer argument", fn);
  MN_REQUIRE(!dab || (x && y), "%s: dab given but x or y is NULL", fn);
  MIX_SHAPE_CHECK(fn, N, C);
  const MixPlan p = mix_plan(N);
  float* part = nullptr;
  if (dab && p.blocks > 1) {
    if (int rc = mn_reduce::scratch_floats(&part, 2 * (int64_t)p.blocks, stream)) return rc;
  }
  const bool same = dx && dx == dy;
  int rc = mn_launch(fn, same ? mix_rmsnorm_backward_kernel<true> : mix_rmsnorm_backward_kernel<false>,
                     p.blocks, mix_threads(C), 0, stream, dx, dy, dab, part,
                     (const float*)dx_out, (const float*)dnorm, (const float*)x_out,
                     (const float*)rstd, (const float*)x, (const float*)y, (const float*)ab, N, C,
                     p.rows, accumulate);
  if (rc || !part) return rc;
  // the blocks' partials in block order (at most 1024: one block of the full-sum kernel)
  return mn_reduce::full_sums<2>("mix_rmsnorm_backward_dab", mn_reduce::FullPartialsTerm<2>{part},
                                 dab, dab + 1, p.blocks, (accumulate & 4) ? 1 : 0, nullptr, stream);
}
