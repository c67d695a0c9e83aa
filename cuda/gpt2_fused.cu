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
//
// QK-RMSNorm + rotary: one block per head row of D elements (rmsnorm_forward_kernel's launch and
// block sum), each thread its element c and, for the rotation, its partner c +- D/2 read again from
// the same row (an L1 hit). Value mix: elementwise forward; the backward is a reduce.cuh full sum
// whose term also writes dv and dv1.
#include "common.cuh"
#include "entry_checks.h"
#include "reduce.cuh"
#include "rotary.cuh"

// x_out = a*x + b*y, written as mn_axpby_forward writes it (the residual the next ops read).
__host__ __device__ inline float mix_value(float a, float x, float b, float y) {
  return a * x + b * y;
}
// rmsnorm's contribution to the gradient of its input: r * (dnorm - x * k), k = mean(dnorm*x) r^2
// (rmsnorm_backward_kernel's expression), added to the gradient x_out already has.
__host__ __device__ inline float mix_rms_grad(float dxo, float r, float dn, float xo, float k) {
  return dxo + r * (dn - xo * k);
}
// An input that is fp32, or bf16 (an autocast matmul's output; widened exactly); the flag is
// uniform over the grid, so the branch costs no divergence.
__device__ inline float mix_load(const void* p, int is_bf16, int64_t i) {
  return is_bf16 ? mn_bf16_to_f32(((const bf16*)p)[i]) : ((const float*)p)[i];
}
// x + r as mn_add rounds it (the residual add folded in), or x alone without r
__device__ inline float mix_base(const float* x, const void* r, int r_bf16, int64_t i) {
  return r ? x[i] + mix_load(r, r_bf16, i) : x[i];
}
// A gradient output: fp32 (overwritten or added into per its accumulate bit), or bf16 (only
// overwritten: the entry point checks its bit is clear).
__device__ inline void mix_store(void* p, int is_bf16, bool acc, int64_t i, float v) {
  if (is_bf16) {
    ((bf16*)p)[i] = mn_f32_to_bf16(v);
  } else {
    float* q = (float*)p;
    q[i] = acc ? q[i] + v : v;
  }
}

static inline int mix_threads(int C) {  // norm.cu's norm_threads: the same block sums
  int t = 32 * ((C + 31) / 32);
  return t > 256 ? 256 : t;
}

__global__ void mix_rmsnorm_forward_kernel(float* x_out, float* out_f32, bf16* out_bf16,
                                           float* rstd, const float* x, const void* r,
                                           const void* y, const float* ab, int r_bf16,
                                           int y_bf16, int C, float eps) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const float a = ab[0], b = ab[1];
  float* xo = x_out + row * C;
  float s = 0.0f;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    const int64_t e = row * C + c;
    const float v = mix_value(a, mix_base(x, r, r_bf16, e), b, mix_load(y, y_bf16, e));
    xo[c] = v;
    s += v * v;
  }
  const float rs = rsqrtf(mn_block_sum(s, scratch) / C + eps);
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    const float o = xo[c] * rs;  // this thread's own store above
    if (out_f32) out_f32[row * C + c] = o;
    if (out_bf16) out_bf16[row * C + c] = mn_f32_to_bf16(o);
  }
  if (threadIdx.x == 0) rstd[row] = rs;
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

// The backward's pointers and flags (one struct argument: fewer kernel parameters to pass).
struct MixGrads {
  float* dx;
  void* dr;
  void* dy;
  float* dab;
  float* part;
  int r_bf16, y_bf16, dr_bf16, dy_bf16, dnorm_bf16;
};

// part != NULL: block b writes its two partial sums to part[2b], part[2b + 1]; part == NULL (one
// block): they go straight to dab under bit 3. kSame: dx == dy (x is y, both fp32).
template <bool kSame>
__global__ void mix_rmsnorm_backward_kernel(MixGrads G, const float* dx_out, const void* dnorm,
                                            const float* x_out, const float* rstd,
                                            const float* x, const void* r, const void* y,
                                            const float* ab, int N, int C, int rows,
                                            int accumulate) {
  __shared__ float scratch[32];
  const float a = ab[0], b = ab[1];
  const bool acc_x = accumulate & 1, acc_r = accumulate & 2, acc_y = accumulate & 4;
  float s0 = 0.0f, s1 = 0.0f;
  const int i0 = blockIdx.x * rows;
  const int i1 = i0 + rows < N ? i0 + rows : N;
  for (int i = i0; i < i1; i++) {
    const int64_t o = (int64_t)i * C;
    const float rs = rstd[i];
    float d = 0.0f;
    for (int c = threadIdx.x; c < C; c += blockDim.x)
      d += mix_load(dnorm, G.dnorm_bf16, o + c) * x_out[o + c];
    const float k = mn_block_sum(d, scratch) / C * rs * rs;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
      const int64_t e = o + c;
      const float dn = mix_load(dnorm, G.dnorm_bf16, e);
      const float g = mix_rms_grad(dx_out ? dx_out[e] : 0.0f, rs, dn, x_out[e], k);
      if (kSame) {
        const float t = acc_x ? G.dx[e] + a * g : a * g;
        G.dx[e] = t + b * g;
      } else {
        if (G.dx) G.dx[e] = acc_x ? G.dx[e] + a * g : a * g;
        if (G.dy) mix_store(G.dy, G.dy_bf16, acc_y, e, b * g);
      }
      if (G.dr) mix_store(G.dr, G.dr_bf16, acc_r, e, a * g);
      if (G.dab) {
        s0 += g * mix_base(x, r, G.r_bf16, e);
        s1 += g * mix_load(y, G.y_bf16, e);
      }
    }
  }
  if (!G.dab) return;
  const float t0 = mn_block_sum(s0, scratch);
  const float t1 = mn_block_sum(s1, scratch);
  if (threadIdx.x == 0) {
    if (G.part) {
      G.part[2 * (int64_t)blockIdx.x] = t0;
      G.part[2 * (int64_t)blockIdx.x + 1] = t1;
    } else {
      const bool acc = accumulate & 8;
      G.dab[0] = acc ? G.dab[0] + t0 : t0;
      G.dab[1] = acc ? G.dab[1] + t1 : t1;
    }
  }
}

MN_API int mn_mix_rmsnorm_forward(float* x_out, float* out_f32, mn_bf16* out_bf16, float* rstd,
                                  float* x, void* r, void* y, float* ab, int r_bf16, int y_bf16,
                                  int N, int C, float eps, void* stream) {
  const char* fn = "mix_rmsnorm_forward";
  if (int rc = mn_check_mix_rmsnorm_forward(fn, x_out, out_f32, out_bf16, rstd, x, r, y, ab, N, C,
                                            eps))
    return rc;
  return mn_launch(fn, mix_rmsnorm_forward_kernel, N, mix_threads(C), 0, stream, x_out, out_f32,
                   (bf16*)out_bf16, rstd, (const float*)x, (const void*)r, (const void*)y,
                   (const float*)ab, r_bf16, y_bf16, C, eps);
}

MN_API int mn_mix_rmsnorm_backward(float* dx, void* dr, void* dy, float* dab, float* dx_out,
                                   void* dnorm, float* x_out, float* rstd, float* x, void* r,
                                   void* y, float* ab, int r_bf16, int y_bf16, int dr_bf16,
                                   int dy_bf16, int dnorm_bf16, int N, int C, int accumulate,
                                   void* stream) {
  const char* fn = "mix_rmsnorm_backward";
  if (int rc = mn_check_mix_rmsnorm_backward(fn, dx, dr, dy, dab, dnorm, x_out, rstd, x, r, y, ab,
                                             y_bf16, dr_bf16, dy_bf16, N, C, accumulate))
    return rc;
  const MixPlan p = mix_plan(N);
  float* part = nullptr;
  if (dab && p.blocks > 1) {
    if (int rc = mn_reduce::scratch_floats(&part, 2 * (int64_t)p.blocks, stream)) return rc;
  }
  const bool same = dx && (void*)dx == dy;
  const MixGrads G{dx, dr, dy, dab, part, r_bf16, y_bf16, dr_bf16, dy_bf16, dnorm_bf16};
  int rc = mn_launch(fn, same ? mix_rmsnorm_backward_kernel<true> : mix_rmsnorm_backward_kernel<false>,
                     p.blocks, mix_threads(C), 0, stream, G, (const float*)dx_out,
                     (const void*)dnorm, (const float*)x_out, (const float*)rstd, (const float*)x,
                     (const void*)r, (const void*)y, (const float*)ab, N, C, p.rows, accumulate);
  if (rc || !part) return rc;
  // the blocks' partials in block order (at most 1024: one block of the full-sum kernel)
  return mn_reduce::full_sums<2>("mix_rmsnorm_backward_dab", mn_reduce::FullPartialsTerm<2>{part},
                                 dab, dab + 1, p.blocks, (accumulate & 8) ? 3 : 0, nullptr, stream);
}

// ---- QK-RMSNorm + rotary ----
// y = x * r, then the rotation of rotary_kernel: first half y1 c + y2 s, second half -y1 s + y2 c.
__host__ __device__ inline float rot_first(float a, float b, float c, float s) { return a * c + b * s; }
__host__ __device__ inline float rot_second(float a, float b, float c, float s) {
  return -a * s + b * c;
}
// the transpose (rotary_kernel<true>): first half d1 c - d2 s, second half d1 s + d2 c
__host__ __device__ inline float rot_back_first(float a, float b, float c, float s) {
  return a * c - b * s;
}
__host__ __device__ inline float rot_back_second(float a, float b, float c, float s) {
  return a * s + b * c;
}

// Row = (b, t, h) flattened; t = (row / H) % T. Thread c (< D) owns element c. TX: the input's
// storage (fp32, or the bf16 autocast output of the projection), read as its values.
__device__ inline float qk_load(const float* p) { return *p; }
__device__ inline float qk_load(const bf16* p) { return mn_bf16_to_f32(*p); }
__device__ inline void qk_store(float* p, float v) { *p = v; }
__device__ inline void qk_store(bf16* p, float v) { *p = mn_f32_to_bf16(v); }

// x (and dx) rows of a token are ld_x elements apart (a column block of the fused q|k|v GEMM's
// output); the head row's D elements are contiguous.
__device__ inline int64_t qk_at(int64_t row, int H, int D, int ld_x) {
  return (row / H) * ld_x + (row % H) * D;
}

template <typename TX>
__global__ void qk_rmsnorm_rotary_forward_kernel(float* out_f32, bf16* out_bf16, float* rstd,
                                                 const TX* x, int T, int H, int D, int ld_x,
                                                 float eps) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const TX* xr = x + qk_at(row, H, D, ld_x);
  const int c = threadIdx.x, half = D / 2;
  const float v = c < D ? qk_load(xr + c) : 0.0f;
  const float r = rsqrtf(mn_block_sum(v * v, scratch) / D + eps);
  if (threadIdx.x == 0) rstd[row] = r;
  if (c >= D) return;
  const int i = c < half ? c : c - half;
  float cs, sn;
  rotary_cos_sin((int)((row / H) % T), i, D, &cs, &sn);
  const float y1 = qk_load(xr + i) * r, y2 = qk_load(xr + i + half) * r;
  const float o = c < half ? rot_first(y1, y2, cs, sn) : rot_second(y1, y2, cs, sn);
  if (out_f32) out_f32[row * D + c] = o;
  if (out_bf16) out_bf16[row * D + c] = mn_f32_to_bf16(o);
}

// dy = R^T dout (the gradient of the normed row), then rmsnorm's backward with the saved rstd.
// TD bf16: dx is the projection's bf16 GEMM operand, rounded once (only overwritten).
template <typename TX, typename TO, typename TD>
__global__ void qk_rmsnorm_rotary_backward_kernel(TD* dx, const TO* dout, const TX* x,
                                                  const float* rstd, int T, int H, int D, int ld_x,
                                                  int accumulate) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x, at = qk_at(row, H, D, ld_x);
  const int c = threadIdx.x, half = D / 2;
  const float r = rstd[row];
  float dy = 0.0f, xv = 0.0f;
  if (c < D) {
    const int i = c < half ? c : c - half;
    float cs, sn;
    rotary_cos_sin((int)((row / H) % T), i, D, &cs, &sn);
    const float d1 = qk_load(dout + row * D + i), d2 = qk_load(dout + row * D + i + half);
    dy = c < half ? rot_back_first(d1, d2, cs, sn) : rot_back_second(d1, d2, cs, sn);
    xv = qk_load(x + at + c);
  }
  const float k = mn_block_sum(dy * xv, scratch) / D * r * r;
  if (c >= D) return;
  const float g = mix_rms_grad(0.0f, r, dy, xv, k);
  qk_store(dx + at + c, (accumulate & 1) ? qk_load(dx + at + c) + g : g);
}

MN_API int mn_qk_rmsnorm_rotary_forward(float* out_f32, mn_bf16* out_bf16, float* rstd, void* x,
                                        int x_bf16, int ld_x, int B, int T, int H, int D,
                                        float eps, void* stream) {
  const char* fn = "qk_rmsnorm_rotary_forward";
  MN_REQUIRE(rstd && x, "%s: NULL pointer argument", fn);
  MN_REQUIRE(out_f32 || out_bf16, "%s: out_f32 and out_bf16 both NULL", fn);
  if (int rc = mn_check_qk_heads(fn, B, T, H, D)) return rc;
  MN_REQUIRE(eps >= 0.0f, "%s: eps = %g must be >= 0", fn, (double)eps);
  if (int rc = mn_check_row_stride(fn, "ld_x", ld_x, H * D)) return rc;
  const int64_t rows = (int64_t)B * T * H;
  MN_REQUIRE(rows <= 0x7fffffffLL, "%s: %lld rows exceed the grid", fn, (long long)rows);
  return mn_with_dtype(x_bf16, [&](auto tx) {
    using TX = typename decltype(tx)::type;
    return mn_launch(fn, qk_rmsnorm_rotary_forward_kernel<TX>, (unsigned)rows, mix_threads(D), 0,
                     stream, out_f32, (bf16*)out_bf16, rstd, (const TX*)x, T, H, D, ld_x, eps);
  });
}

MN_API int mn_qk_rmsnorm_rotary_backward(void* dx, void* dout, void* x, float* rstd, int x_bf16,
                                         int dout_bf16, int dx_bf16, int ld_x, int B, int T, int H,
                                         int D, int accumulate, void* stream) {
  const char* fn = "qk_rmsnorm_rotary_backward";
  MN_REQUIRE(dx && dout && x && rstd, "%s: NULL pointer argument", fn);
  if (int rc = mn_check_qk_heads(fn, B, T, H, D)) return rc;
  if (int rc = mn_check_bf16_grad_overwritten(fn, "dx", dx_bf16, accumulate, 0)) return rc;
  if (int rc = mn_check_row_stride(fn, "ld_x", ld_x, H * D)) return rc;
  const int64_t rows = (int64_t)B * T * H;
  MN_REQUIRE(rows <= 0x7fffffffLL, "%s: %lld rows exceed the grid", fn, (long long)rows);
  return mn_with_dtypes(x_bf16, dout_bf16, dx_bf16, [&](auto tx, auto to, auto td) {
    using TX = typename decltype(tx)::type;
    using TO = typename decltype(to)::type;
    using TD = typename decltype(td)::type;
    return mn_launch(fn, qk_rmsnorm_rotary_backward_kernel<TX, TO, TD>, (unsigned)rows,
                     mix_threads(D), 0, stream, (TD*)dx, (const TO*)dout, (const TX*)x,
                     (const float*)rstd, T, H, D, ld_x, accumulate);
  });
}

// ---- value residual: out = v + lamb * (v1 - v), as axpby(1, v, lamb, axpby(1, v1, -1, v)) ----
__host__ __device__ inline float vmix_diff(float v, float v1) { return 1.0f * v1 + -1.0f * v; }
__host__ __device__ inline float vmix_value(float v, float v1, float lamb) {
  return 1.0f * v + lamb * vmix_diff(v, v1);
}

// Element i of a [n / C, C] tensor whose rows are ld elements apart (v, v1: a column block of
// the fused q|k|v GEMM's output; dv: of its gradient). Strided tensors have n < 2^32 (the entry
// points check): a 32-bit division, whose registers the unrolled full-sum loads can afford.
__host__ __device__ inline int64_t vmix_at(int64_t i, int C, int ld) {
  if (ld == C) return i;
  const uint32_t u = (uint32_t)i, c = (uint32_t)C;
  return (int64_t)(u / c) * ld + (u % c);
}

template <typename TV>
__global__ void value_mix_forward_kernel(float* out_f32, bf16* out_bf16, const TV* v,
                                         const TV* v1, const float* lamb, int64_t n, int C,
                                         int ld_v) {
  const float l = lamb[0];
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t at = vmix_at(i, C, ld_v);
    const float o = vmix_value(qk_load(v + at), qk_load(v1 + at), l);
    if (out_f32) out_f32[i] = o;
    if (out_bf16) out_bf16[i] = mn_f32_to_bf16(o);
  }
}

// dv gets g, then -(lamb g) (the outer axpby's, then the inner's); dv1 gets lamb g; dlamb sums
// g (v1 - v). kSame: dv == dv1 (v1 is v, the first block): ((dv + g) + lamb g) - lamb g, the
// unfused order. TV: v and v1's storage; TD bf16: dv is the projection's bf16 GEMM operand,
// rounded once (only overwritten; never kSame: dv1 gathers every block's share in fp32).
template <bool kSame, typename TV, typename TO, typename TD>
struct ValueMixTerm {
  TD* dv;
  float* dv1;
  const TO* dout;
  const TV* v;
  const TV* v1;
  const float* lamb_at;  // device scalar, read once per thread by begin()
  int accumulate;
  int C, ld_v, ld_dv;
  float lamb;
  struct Load {
    float g, v, v1, dv, dv1;
  };
  __device__ void begin() { lamb = lamb_at[0]; }
  __device__ Load load(int64_t i) const {
    const bool a0 = accumulate & 1, a1 = accumulate & 2;
    const int64_t iv = vmix_at(i, C, ld_v), idv = vmix_at(i, C, ld_dv);
    return Load{qk_load(dout + i), qk_load(v + iv), qk_load(v1 + iv),
                dv && a0 ? qk_load(dv + idv) : 0.0f, !kSame && dv1 && a1 ? dv1[i] : 0.0f};
  }
  __device__ void use(int64_t i, const Load& l, float* acc) const {
    const float dt = lamb * l.g;  // the gradient of (v1 - v), stored fp32 by the unfused op
    const int64_t idv = vmix_at(i, C, ld_dv);
    if (kSame) {
      qk_store(dv + idv, ((l.dv + l.g) + dt) + -1.0f * dt);
    } else {
      if (dv) qk_store(dv + idv, (l.dv + l.g) + -1.0f * dt);
      if (dv1) dv1[i] = l.dv1 + dt;
    }
    acc[0] += l.g * vmix_diff(l.v, l.v1);
  }
};

MN_API int mn_value_mix_forward(float* out_f32, mn_bf16* out_bf16, void* v, void* v1, float* lamb,
                                int v_bf16, int C, int ld_v, int64_t n, void* stream) {
  const char* fn = "value_mix_forward";
  MN_REQUIRE(v && v1 && lamb, "%s: NULL pointer argument", fn);
  MN_REQUIRE(out_f32 || out_bf16, "%s: out_f32 and out_bf16 both NULL", fn);
  if (int rc = mn_check_value_mix_rows(fn, n, C, ld_v, C)) return rc;
  return mn_with_dtype(v_bf16, [&](auto tv) {
    using TV = typename decltype(tv)::type;
    return mn_launch(fn, value_mix_forward_kernel<TV>, mn_blocks_for(n, 256), 256, 0, stream,
                     out_f32, (bf16*)out_bf16, (const TV*)v, (const TV*)v1, (const float*)lamb, n,
                     C, ld_v);
  });
}

MN_API int mn_value_mix_backward(void* dv, float* dv1, float* dlamb, void* dout, void* v, void* v1,
                                 float* lamb, int v_bf16, int dout_bf16, int dv_bf16, int C,
                                 int ld_v, int ld_dv, int64_t n, int accumulate, void* stream) {
  const char* fn = "value_mix_backward";
  MN_REQUIRE(dlamb && dout && v && v1 && lamb, "%s: NULL pointer argument", fn);
  if (int rc = mn_check_value_mix_rows(fn, n, C, ld_v, ld_dv)) return rc;
  MN_REQUIRE(!dv || dv != (void*)dv1 || ld_dv == C, "%s: dv == dv1 must be contiguous (ld_dv = C)",
             fn);
  if (int rc = mn_check_bf16_grad_overwritten(fn, "dv", dv_bf16, accumulate, 0)) return rc;
  MN_REQUIRE(!dv_bf16 || !dv || (void*)dv != (void*)dv1,
             "%s: a bf16 dv cannot be dv1 (v1 is v: its gradient sums in fp32)", fn);
  float* part = nullptr;
  if (int rc = mn_reduce::scratch_floats(&part, mn_reduce::full_scratch_floats(n, 1), stream))
    return rc;
  const int acc = (accumulate & 4) ? 1 : 0;
  return mn_with_dtypes(v_bf16, dout_bf16, dv_bf16, [&](auto tv, auto to, auto td) {
    using TV = typename decltype(tv)::type;
    using TO = typename decltype(to)::type;
    using TD = typename decltype(td)::type;
    const TV *vt = (const TV*)v, *v1t = (const TV*)v1;
    const TO* d = (const TO*)dout;
    if (dv && dv == dv1)
      return mn_reduce::full_sums<1>(
          fn,
          ValueMixTerm<true, TV, TO, TD>{(TD*)dv, dv1, d, vt, v1t, lamb, accumulate, C, ld_v, ld_dv,
                                         0.0f},
          dlamb, nullptr, n, acc, part, stream);
    return mn_reduce::full_sums<1>(
        fn,
        ValueMixTerm<false, TV, TO, TD>{(TD*)dv, dv1, d, vt, v1t, lamb, accumulate, C, ld_v, ld_dv,
                                        0.0f},
        dlamb, nullptr, n, acc, part, stream);
  });
}

// ---- ReLU^2 of the MLP (c_fc -> relu(x)^2 -> c_proj) in bf16 ----
// The per-element math is common.cuh's mn_relu2_fwd / mn_relu2_grad (elementwise.cu's fp32
// kernels use the same), evaluated in fp32 and rounded once to bf16.
__global__ void relu2_forward_bf16_kernel(bf16* out, const float* inp, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x)
    out[i] = mn_f32_to_bf16(mn_relu2_fwd(inp[i]));
}

MN_API int mn_relu2_forward_bf16(mn_bf16* out, float* inp, int64_t n, void* stream) {
  const char* fn = "relu2_forward_bf16";
  if (int rc = mn_check_elementwise(fn, out && inp, n)) return rc;
  return mn_launch(fn, relu2_forward_bf16_kernel, mn_blocks_for(n, 256), 256, 0, stream,
                   (bf16*)out, (const float*)inp, n);
}

__global__ void relu2_forward_bf16io_kernel(bf16* out, const bf16* inp, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x)
    out[i] = mn_f32_to_bf16(mn_relu2_fwd(mn_bf16_to_f32(inp[i])));
}

MN_API int mn_relu2_forward_bf16io(mn_bf16* out, mn_bf16* inp, int64_t n, void* stream) {
  const char* fn = "relu2_forward_bf16io";
  if (int rc = mn_check_elementwise(fn, out && inp, n)) return rc;
  return mn_launch(fn, relu2_forward_bf16io_kernel, mn_blocks_for(n, 256), 256, 0, stream,
                   (bf16*)out, (const bf16*)inp, n);
}

// dinp may be dout (in place): each element is read, then written, by one thread
__global__ void relu2_backward_bf16io_kernel(bf16* dinp, const bf16* dout, const bf16* inp,
                                             int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x)
    dinp[i] = mn_f32_to_bf16(mn_relu2_grad(mn_bf16_to_f32(inp[i]), mn_bf16_to_f32(dout[i])));
}

MN_API int mn_relu2_backward_bf16io(mn_bf16* dinp, mn_bf16* dout, mn_bf16* inp, int64_t n,
                                    int accumulate, void* stream) {
  const char* fn = "relu2_backward_bf16io";
  if (int rc = mn_check_relu2_backward_bf16io(dinp, dout, inp, n, accumulate)) return rc;
  return mn_launch(fn, relu2_backward_bf16io_kernel, mn_blocks_for(n, 256), 256, 0, stream,
                   (bf16*)dinp, (const bf16*)dout, (const bf16*)inp, n);
}
