// Model ops: the small pieces the RWKV-7 (and GPT) forwards are composed of, with their backwards.
// Elementwise ops are grid-stride loops; per-row ops (l2norm, groupnorm, bonus) give one warp to a
// row of D elements; column reductions (dv of the row-vector ops, dweight/dbias of groupnorm, du of
// the bonus) are the two-stage column sums of reduce.cuh (full grid of row tiles, partials summed
// in a fixed order), so they are deterministic without float atomics. Every backward accumulates.
#include "common.cuh"
#include "entry_checks.h"
#include "reduce.cuh"
#include "rwkv7_math.cuh"

namespace {

constexpr int kThreads = 256;   // elementwise and warp-per-row kernels
constexpr int kWarps = kThreads / 32;
// The bonus backward once kept du partials in shared memory; the limit stays so that every backend
// (the cpu reference checks it too) accepts the same shapes.
constexpr int kBonusMaxD = 1024;

// ---- per-element math, the same on host and device ----

__host__ __device__ inline bool unary_op_valid(int op) {
  return op == MN_OP_TANH || op == MN_OP_SIGMOID || op == MN_OP_RWKV7_DECAY ||
         op == MN_OP_EXP_MIN0 || op == MN_OP_NEG;
}
__host__ __device__ inline bool unary_bwd_needs_x(int op) {
  return op == MN_OP_RWKV7_DECAY || op == MN_OP_EXP_MIN0;
}
__host__ __device__ inline bool unary_bwd_needs_out(int op) {
  return op == MN_OP_TANH || op == MN_OP_SIGMOID || op == MN_OP_EXP_MIN0;
}

__host__ __device__ inline float unary_f(int op, float x) {
  switch (op) {
    case MN_OP_TANH: return tanhf(x);
    case MN_OP_SIGMOID: return sigmoid_f(x);
    case MN_OP_RWKV7_DECAY: return rwkv7_decay_f(x);
    case MN_OP_EXP_MIN0: return exp_min0_f(x);
    default: return -x;  // MN_OP_NEG (op codes are validated on the host)
  }
}

// f'(x), from the forward's input x and/or output y (as torch: tanh/sigmoid/exp use the result).
__host__ __device__ inline float unary_df(int op, float x, float y) {
  switch (op) {
    case MN_OP_TANH: return 1.0f - y * y;
    case MN_OP_SIGMOID: return sigmoid_dy(y);
    case MN_OP_RWKV7_DECAY: return rwkv7_decay_df(x);
    case MN_OP_EXP_MIN0: return exp_min0_df(x, y);
    default: return -1.0f;
  }
}

// Row-vector ops, out = x * v (mul) or x + v (add, where v and x below are exactly 1):
// d out / d x contributes dout * v, d out / d v contributes dout * x. Used by the fused dx+dv term
// and the dx-only kernel alike, so both round the same way.
__host__ __device__ inline float rowvec_dx(float dout, float v) { return dout * v; }
__host__ __device__ inline float rowvec_dv(float dout, float x) { return dout * x; }



#define GRID_STRIDE(i, n)                                                     \
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (n); \
       i += (int64_t)gridDim.x * blockDim.x)

// Warp-per-row loop: every lane of a warp takes the same rows, so warp shuffles inside are full.
#define WARP_ROWS(row, rows)                                                             \
  for (int64_t row = blockIdx.x * (int64_t)kWarps + threadIdx.x / 32; row < (rows); \
       row += (int64_t)gridDim.x * kWarps)

// ---- elementwise ----

// X: the dtype of x and out (bf16: an autocast activation, computed in fp32 and rounded once)
template <class X>
__global__ void unary_forward_kernel(X* out, const X* x, int op, int64_t n) {
  GRID_STRIDE(i, n) mn_put_grad(out[i], unary_f(op, mn_ld(x + i)), 0);
}

// DO: dout's dtype; DX: dx's (bf16: overwritten, mn_put_grad)
template <class X, class DO, class DX>
__global__ void unary_backward_kernel(DX* dx, const DO* dout, const X* x, const X* out, int op,
                                      int64_t n, int acc) {
  GRID_STRIDE(i, n) {
    float xi = x ? mn_ld(x + i) : 0.0f, yi = out ? mn_ld(out + i) : 0.0f;
    mn_put_grad(dx[i], mn_ld(dout + i) * unary_df(op, xi, yi), acc);
  }
}

__global__ void mul_forward_kernel(float* out, const float* x, const float* y, int64_t n) {
  GRID_STRIDE(i, n) out[i] = x[i] * y[i];
}

__global__ void mul_backward_kernel(float* dx, float* dy, const float* dout, const float* x,
                                    const float* y, int64_t n, int acc) {
  const int ax = MN_ACC_BIT(acc, 0), ay = MN_ACC_BIT(acc, 1);
  GRID_STRIDE(i, n) {
    float d = dout[i];
    if (dx) MN_GRAD_STORE(dx[i], d * y[i], ax);
    if (dy) MN_GRAD_STORE(dy[i], d * x[i], ay);
  }
}

__global__ void lerp_forward_kernel(float* out, const float* x, const float* y, const float* g,
                                    int64_t n) {
  GRID_STRIDE(i, n) out[i] = lerp_f(x[i], y[i], g[i]);
}

__global__ void lerp_backward_kernel(float* dx, float* dy, float* dg, const float* dout,
                                     const float* x, const float* y, const float* g, int64_t n,
                                     int acc) {
  const int ax = MN_ACC_BIT(acc, 0), ay = MN_ACC_BIT(acc, 1), ag = MN_ACC_BIT(acc, 2);
  GRID_STRIDE(i, n) {
    float d = dout[i], gi = g[i];
    if (dx) MN_GRAD_STORE(dx[i], d * (1.0f - gi), ax);
    if (dy) MN_GRAD_STORE(dy[i], d * gi, ay);
    if (dg) MN_GRAD_STORE(dg[i], d * (y[i] - x[i]), ag);
  }
}

// out[i,c] = x[i,c] * v[c] (kMul) or x[i,c] + v[c]
template <bool kMul>
__global__ void row_vector_forward_kernel(float* out, const float* x, const float* v, int N,
                                          int C) {
  GRID_STRIDE(i, (int64_t)N * C) out[i] = kMul ? x[i] * v[i % C] : x[i] + v[i % C];
}

// dx[i,c] += dout[i,c] * (kMul ? v[c] : 1) alone (mul_row_vector_backward with dv NULL).
template <bool kMul>
__global__ void row_vector_dx_kernel(float* __restrict__ dx, const float* __restrict__ dout,
                                     const float* __restrict__ v, int C, int64_t n, int acc) {
  GRID_STRIDE(i, n) MN_GRAD_STORE(dx[i], rowvec_dx(dout[i], kMul ? v[i % C] : 1.0f), acc);
}

// Column-sum term of the row-vector backwards: dv[c] += sum_i dout[i,c] * (kMul ? x[i,c] : 1),
// with dx[i,c] += dout[i,c] * (kMul ? v[c] : 1) fused in when kDx (dout is read once); dx_acc
// clear: dx is stored, not loaded.
template <bool kMul, bool kDx>
struct RowVecTerm {
  float* dx;
  const float* dout;
  const float* x;
  const float* v;
  int C;
  float vc;
  int dx_acc;
  struct Load {
    float d, x, dx;
  };
  __device__ void begin(int c) { vc = kMul && kDx ? v[c] : 1.0f; }
  __device__ Load load(int64_t i, int c) const {
    const int64_t e = i * C + c;
    Load l;
    l.d = dout[e];
    l.x = kMul ? x[e] : 1.0f;
    l.dx = kDx && dx_acc ? dx[e] : 0.0f;
    return l;
  }
  __device__ void use(int64_t i, int c, const Load& l, float* acc) const {
    if (kDx) dx[i * C + c] = dx_acc ? l.dx + rowvec_dx(l.d, vc) : rowvec_dx(l.d, vc);
    acc[0] += rowvec_dv(l.d, l.x);
  }
};

__global__ void time_shift_forward_kernel(float* out, const float* x, int T, int C, int64_t n) {
  int64_t TC = (int64_t)T * C;
  GRID_STRIDE(i, n) out[i] = (i % TC) < C ? 0.0f : x[i - C];
}

// The last step's x feeds no output: its gradient is 0 (stored when overwriting).
__global__ void time_shift_backward_kernel(float* dx, const float* dout, int T, int C, int64_t n,
                                           int acc) {
  int64_t TC = (int64_t)T * C;
  GRID_STRIDE(i, n) {
    if ((i % TC) < TC - C) MN_GRAD_STORE(dx[i], dout[i + C], acc);
    else if (!acc) dx[i] = 0.0f;
  }
}

// ---- per-row: one warp per row of D ----

// F.normalize: out = x / max(||x||, eps).
__global__ void l2norm_forward_kernel(float* out, const float* x, int64_t rows, int D,
                                      float eps) {
  int lane = threadIdx.x % 32;
  WARP_ROWS(row, rows) {
    const float* xr = x + row * D;
    float ss = 0.0f;
    for (int j = lane; j < D; j += 32) ss += xr[j] * xr[j];
    float inv = 1.0f / fmaxf(sqrtf(mn_warp_sum(ss)), eps);
    for (int j = lane; j < D; j += 32) out[row * D + j] = xr[j] * inv;
  }
}

// With n = ||x||: where n >= eps (torch's clamp_min passes the gradient where self >= min),
// dx = dout / n - x (x . dout) / n^3; below eps the denominator is the constant eps: dx = dout/eps.
__global__ void l2norm_backward_kernel(float* dx, const float* dout, const float* x, int64_t rows,
                                       int D, float eps, int acc) {
  int lane = threadIdx.x % 32;
  WARP_ROWS(row, rows) {
    const float* xr = x + row * D;
    const float* gr = dout + row * D;
    float ss = 0.0f, dot = 0.0f;
    for (int j = lane; j < D; j += 32) {
      ss += xr[j] * xr[j];
      dot += xr[j] * gr[j];
    }
    float nrm = sqrtf(mn_warp_sum(ss));
    dot = mn_warp_sum(dot);
    if (nrm >= eps) {
      float inv = 1.0f / nrm;
      float coef = dot * inv * inv * inv;
      for (int j = lane; j < D; j += 32) MN_GRAD_STORE(dx[row * D + j], gr[j] * inv - xr[j] * coef, acc);
    } else {
      float inv = 1.0f / eps;
      for (int j = lane; j < D; j += 32) MN_GRAD_STORE(dx[row * D + j], gr[j] * inv, acc);
    }
  }
}

// GroupNorm: row `row` of [N*G] is group g = row % G of sample row / G; channels g*D .. g*D+D-1.
__global__ void groupnorm_forward_kernel(float* out, float* mean, float* rstd, const float* x,
                                         const float* weight, const float* bias, int64_t rows,
                                         int G, int D, float eps) {
  int lane = threadIdx.x % 32;
  WARP_ROWS(row, rows) {
    const float* xr = x + row * D;
    const int c0 = (int)(row % G) * D;
    float s = 0.0f;
    for (int j = lane; j < D; j += 32) s += xr[j];
    float m = mn_warp_sum(s) / D;
    float sq = 0.0f;
    for (int j = lane; j < D; j += 32) sq += (xr[j] - m) * (xr[j] - m);
    float rs = rsqrtf(mn_warp_sum(sq) / D + eps);  // biased variance, as nn.GroupNorm
    for (int j = lane; j < D; j += 32)
      out[row * D + j] = norm_xhat(xr[j], m, rs) * weight[c0 + j] + bias[c0 + j];
    if (lane == 0) {
      mean[row] = m;
      rstd[row] = rs;
    }
  }
}

// dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), dxhat = dout * weight.
__global__ void groupnorm_backward_dx_kernel(float* dx, const float* dout, const float* x,
                                             const float* weight, const float* mean,
                                             const float* rstd, int64_t rows, int G, int D,
                                             int acc) {
  int lane = threadIdx.x % 32;
  WARP_ROWS(row, rows) {
    const float* xr = x + row * D;
    const float* gr = dout + row * D;
    const int c0 = (int)(row % G) * D;
    const float m = mean[row], rs = rstd[row];
    float s1 = 0.0f, s2 = 0.0f;
    for (int j = lane; j < D; j += 32) {
      float dxh = gr[j] * weight[c0 + j];
      s1 += dxh;
      s2 += dxh * norm_xhat(xr[j], m, rs);
    }
    s1 = mn_warp_sum(s1) / D;
    s2 = mn_warp_sum(s2) / D;
    for (int j = lane; j < D; j += 32) {
      float xh = norm_xhat(xr[j], m, rs);
      MN_GRAD_STORE(dx[row * D + j], rs * (gr[j] * weight[c0 + j] - s1 - xh * s2), acc);
    }
  }
}

// Column-sum terms of the GroupNorm parameter gradients over C = G*D columns:
// dweight[c] += sum_i dout[i,c] * xhat[i,c]; dbias[c] += sum_i dout[i,c].
struct GroupNormParamTerm {
  const float* dout;
  const float* x;
  const float* mean;
  const float* rstd;
  int G, D;
  int g;
  struct Load {
    float d, x, m, r;
  };
  __device__ void begin(int c) { g = c / D; }
  __device__ Load load(int64_t i, int c) const {
    const int64_t e = i * ((int64_t)G * D) + c, r = i * G + g;
    return Load{dout[e], x[e], mean[r], rstd[r]};
  }
  __device__ void use(int64_t, int, const Load& l, float* acc) const {
    acc[0] += l.d * norm_xhat(l.x, l.m, l.r);
    acc[1] += l.d;
  }
};

// RWKV-7 bonus: row `row` of [N*H] is head h = row % H; s = sum_j r k u[h]; out = s * v.
__global__ void bonus_forward_kernel(float* out, const float* r, const float* k, const float* v,
                                     const float* u, int64_t rows, int H, int D) {
  int lane = threadIdx.x % 32;
  WARP_ROWS(row, rows) {
    const int64_t b = row * D;
    const float* ur = u + (int64_t)(row % H) * D;
    float s = 0.0f;
    for (int j = lane; j < D; j += 32) s += r[b + j] * k[b + j] * ur[j];
    s = mn_warp_sum(s);
    for (int j = lane; j < D; j += 32) out[b + j] = s * v[b + j];
  }
}

// ds = dout . v; dv += s * dout; dr += ds * k * u; dk += ds * r * u; ds_out[row] = ds (for du).
__global__ void bonus_backward_rkv_kernel(float* dr, float* dk, float* dv, float* ds_out,
                                          const float* dout, const float* r, const float* k,
                                          const float* v, const float* u, int64_t rows, int H,
                                          int D, int acc) {
  const int ar = MN_ACC_BIT(acc, 0), ak = MN_ACC_BIT(acc, 1), av = MN_ACC_BIT(acc, 2);
  int lane = threadIdx.x % 32;
  WARP_ROWS(row, rows) {
    const int64_t b = row * D;
    const float* ur = u + (int64_t)(row % H) * D;
    float s = 0.0f, ds = 0.0f;
    for (int j = lane; j < D; j += 32) {
      s += r[b + j] * k[b + j] * ur[j];
      ds += dout[b + j] * v[b + j];
    }
    s = mn_warp_sum(s);
    ds = mn_warp_sum(ds);
    for (int j = lane; j < D; j += 32) {
      MN_GRAD_STORE(dv[b + j], s * dout[b + j], av);
      MN_GRAD_STORE(dr[b + j], ds * k[b + j] * ur[j], ar);
      MN_GRAD_STORE(dk[b + j], ds * r[b + j] * ur[j], ak);
    }
    if (lane == 0) ds_out[row] = ds;
  }
}

inline unsigned warp_row_blocks(int64_t rows) { return mn_blocks_for(rows, kWarps); }

template <bool kMul>
int row_vector_forward(const char* name, float* out, float* x, float* v, int N, int C,
                       void* stream) {
  MN_REQUIRE(N > 0 && C > 0, "%s: bad shape N = %d, C = %d", name, N, C);
  return mn_launch(name, row_vector_forward_kernel<kMul>, mn_blocks_for((int64_t)N * C, kThreads),
                   kThreads, 0, stream, out, (const float*)x, (const float*)v, N, C);
}

// dx (may be NULL) and dv (may be NULL when kMul) of the row-vector ops: dv by the column sums with
// dx fused in, or dx alone by an elementwise pass.
template <bool kMul>
int row_vector_backward(const char* name, float* dx, float* dv, const float* dout,
                        const float* x, const float* v, int N, int C, int accumulate,
                        void* stream) {
  const int ax = MN_ACC_BIT(accumulate, 0), av = MN_ACC_BIT(accumulate, 1);
  if (!dv) {
    const int64_t n = (int64_t)N * C;
    return mn_launch(name, row_vector_dx_kernel<kMul>, mn_blocks_for(n, kThreads), kThreads, 0,
                     stream, dx, dout, v, C, n, ax);
  }
  float* part = nullptr;
  if (int rc = mn_reduce::scratch_floats(&part, mn_reduce::col_scratch_floats(N, C, 1), stream))
    return rc;
  if (dx)
    return mn_reduce::col_sums<1>(name, RowVecTerm<kMul, true>{dx, dout, x, v, C, 1.0f, ax}, dv,
                                  nullptr, N, C, av, part, stream);
  return mn_reduce::col_sums<1>(name, RowVecTerm<kMul, false>{nullptr, dout, x, v, C, 1.0f, 0},
                                dv, nullptr, N, C, av, part, stream);
}

}  // namespace

// ---- entry points ----

namespace {
int unary_check(const char* fn, int op, int64_t n) {
  MN_REQUIRE(unary_op_valid(op), "%s: unknown op code %d (see MN_OP_* in kernels.h)", fn, op);
  MN_REQUIRE(n >= 0, "%s: n = %lld", fn, (long long)n);
  return 0;
}
int unary_backward_check(const char* fn, const void* dx, const void* dout, const void* x,
                         const void* out, int op, int64_t n) {
  if (int rc = unary_check(fn, op, n)) return rc;
  MN_REQUIRE(dx && dout, "%s: dx and dout are required", fn);
  MN_REQUIRE(x || !unary_bwd_needs_x(op), "%s: op %d needs the forward input x", fn, op);
  MN_REQUIRE(out || !unary_bwd_needs_out(op), "%s: op %d needs the forward output", fn, op);
  return 0;
}
}  // namespace

MN_API int mn_unary_forward(float* out, float* x, int op, int64_t n, void* stream) {
  if (int rc = unary_check("unary_forward", op, n)) return rc;
  if (n == 0) return 0;
  return mn_launch("unary_forward", unary_forward_kernel<float>, mn_blocks_for(n, kThreads),
                   kThreads, 0, stream, out, (const float*)x, op, n);
}

MN_API int mn_unary_backward(float* dx, float* dout, float* x, float* out, int op, int64_t n,
                             int accumulate, void* stream) {
  if (int rc = unary_backward_check("unary_backward", dx, dout, x, out, op, n)) return rc;
  if (n == 0) return 0;
  return mn_launch("unary_backward", unary_backward_kernel<float, float, float>,
                   mn_blocks_for(n, kThreads), kThreads, 0, stream, dx, (const float*)dout,
                   (const float*)x, (const float*)out, op, n, MN_ACC_BIT(accumulate, 0));
}

MN_API int mn_unary_forward_bf16(mn_bf16* out, mn_bf16* x, int op, int64_t n, void* stream) {
  if (int rc = unary_check("unary_forward_bf16", op, n)) return rc;
  if (n == 0) return 0;
  return mn_launch("unary_forward_bf16", unary_forward_kernel<bf16>, mn_blocks_for(n, kThreads),
                   kThreads, 0, stream, (bf16*)out, (const bf16*)x, op, n);
}

MN_API int mn_unary_backward_bf16(void* dx, void* dout, mn_bf16* x, mn_bf16* out, int op,
                                  int64_t n, int dout_bf16, int dx_bf16, int accumulate,
                                  void* stream) {
  if (int rc = unary_backward_check("unary_backward_bf16", dx, dout, x, out, op, n)) return rc;
  if (int rc = mn_check_bf16_grad_overwritten("unary_backward_bf16", "dx", dx_bf16, accumulate, 0))
    return rc;
  if (n == 0) return 0;
  return mn_with_dtypes(dout_bf16, dx_bf16, 1, [&](auto dot, auto dxt, auto) {
    using DO = typename decltype(dot)::type;
    using DX = typename decltype(dxt)::type;
    return mn_launch("unary_backward_bf16", unary_backward_kernel<bf16, DO, DX>,
                     mn_blocks_for(n, kThreads), kThreads, 0, stream, (DX*)dx, (const DO*)dout,
                     (const bf16*)x, (const bf16*)out, op, n, MN_ACC_BIT(accumulate, 0));
  });
}

MN_API int mn_mul_forward(float* out, float* x, float* y, int64_t n, void* stream) {
  MN_REQUIRE(n >= 0, "mul_forward: n = %lld", (long long)n);
  if (n == 0) return 0;
  return mn_launch("mul_forward", mul_forward_kernel, mn_blocks_for(n, kThreads), kThreads, 0,
                   stream, out, (const float*)x, (const float*)y, n);
}

MN_API int mn_mul_backward(float* dx, float* dy, float* dout, float* x, float* y, int64_t n,
                           int accumulate, void* stream) {
  MN_REQUIRE(n >= 0, "mul_backward: n = %lld", (long long)n);
  if (n == 0 || (!dx && !dy)) return 0;
  return mn_launch("mul_backward", mul_backward_kernel, mn_blocks_for(n, kThreads), kThreads, 0,
                   stream, dx, dy, (const float*)dout, (const float*)x, (const float*)y, n,
                   accumulate);
}

MN_API int mn_lerp_forward(float* out, float* x, float* y, float* g, int64_t n, void* stream) {
  MN_REQUIRE(n >= 0, "lerp_forward: n = %lld", (long long)n);
  if (n == 0) return 0;
  return mn_launch("lerp_forward", lerp_forward_kernel, mn_blocks_for(n, kThreads), kThreads, 0,
                   stream, out, (const float*)x, (const float*)y, (const float*)g, n);
}

MN_API int mn_lerp_backward(float* dx, float* dy, float* dg, float* dout, float* x, float* y,
                            float* g, int64_t n, int accumulate, void* stream) {
  MN_REQUIRE(n >= 0, "lerp_backward: n = %lld", (long long)n);
  if (n == 0 || (!dx && !dy && !dg)) return 0;
  return mn_launch("lerp_backward", lerp_backward_kernel, mn_blocks_for(n, kThreads), kThreads, 0,
                   stream, dx, dy, dg, (const float*)dout, (const float*)x, (const float*)y,
                   (const float*)g, n, accumulate);
}

MN_API int mn_add_row_vector_forward(float* out, float* x, float* v, int N, int C, void* stream) {
  return row_vector_forward<false>("add_row_vector_forward", out, x, v, N, C, stream);
}

MN_API int mn_add_row_vector_backward(float* dx, float* dv, float* dout, int N, int C,
                                      int accumulate, void* stream) {
  MN_REQUIRE(N > 0 && C > 0, "add_row_vector_backward: bad shape N = %d, C = %d", N, C);
  MN_REQUIRE(dv, "add_row_vector_backward: dv is required (only dx may be NULL)");
  return row_vector_backward<false>("add_row_vector_backward", dx, dv, dout, nullptr, nullptr, N,
                                    C, accumulate, stream);
}

MN_API int mn_mul_row_vector_forward(float* out, float* x, float* v, int N, int C, void* stream) {
  return row_vector_forward<true>("mul_row_vector_forward", out, x, v, N, C, stream);
}

MN_API int mn_mul_row_vector_backward(float* dx, float* dv, float* dout, float* x, float* v, int N,
                                      int C, int accumulate, void* stream) {
  MN_REQUIRE(N > 0 && C > 0, "mul_row_vector_backward: bad shape N = %d, C = %d", N, C);
  if (!dx && !dv) return 0;
  MN_REQUIRE(dout && (!dx || v) && (!dv || x),
             "mul_row_vector_backward: dout, v (for dx) and x (for dv) are required");
  return row_vector_backward<true>("mul_row_vector_backward", dx, dv, dout, x, v, N, C,
                                   accumulate, stream);
}

MN_API int mn_time_shift_forward(float* out, float* x, int B, int T, int C, void* stream) {
  MN_REQUIRE(B > 0 && T > 0 && C > 0, "time_shift_forward: bad shape [%d, %d, %d]", B, T, C);
  MN_REQUIRE(out != x, "time_shift_forward: in-place is not supported");
  int64_t n = (int64_t)B * T * C;
  return mn_launch("time_shift_forward", time_shift_forward_kernel, mn_blocks_for(n, kThreads),
                   kThreads, 0, stream, out, (const float*)x, T, C, n);
}

MN_API int mn_time_shift_backward(float* dx, float* dout, int B, int T, int C, int accumulate,
                                  void* stream) {
  MN_REQUIRE(B > 0 && T > 0 && C > 0, "time_shift_backward: bad shape [%d, %d, %d]", B, T, C);
  MN_REQUIRE(dx && dout, "time_shift_backward: dx and dout are required");
  MN_REQUIRE(dx != dout, "time_shift_backward: in-place is not supported");
  int64_t n = (int64_t)B * T * C;
  return mn_launch("time_shift_backward", time_shift_backward_kernel, mn_blocks_for(n, kThreads),
                   kThreads, 0, stream, dx, (const float*)dout, T, C, n, MN_ACC_BIT(accumulate, 0));
}

MN_API int mn_l2norm_forward(float* out, float* x, int N, int D, float eps, void* stream) {
  MN_REQUIRE(N > 0 && D > 0, "l2norm_forward: bad shape N = %d, D = %d", N, D);
  MN_REQUIRE(eps >= 0.0f, "l2norm_forward: eps = %g must be >= 0", (double)eps);
  return mn_launch("l2norm_forward", l2norm_forward_kernel, warp_row_blocks(N), kThreads, 0,
                   stream, out, (const float*)x, (int64_t)N, D, eps);
}

MN_API int mn_l2norm_backward(float* dx, float* dout, float* x, int N, int D, float eps,
                              int accumulate, void* stream) {
  MN_REQUIRE(N > 0 && D > 0, "l2norm_backward: bad shape N = %d, D = %d", N, D);
  MN_REQUIRE(eps >= 0.0f, "l2norm_backward: eps = %g must be >= 0", (double)eps);
  MN_REQUIRE(dx && dout, "l2norm_backward: dx and dout are required");
  return mn_launch("l2norm_backward", l2norm_backward_kernel, warp_row_blocks(N), kThreads, 0,
                   stream, dx, (const float*)dout, (const float*)x, (int64_t)N, D, eps,
                   MN_ACC_BIT(accumulate, 0));
}

MN_API int mn_groupnorm_forward(float* out, float* mean, float* rstd, float* x, float* weight,
                                float* bias, int N, int G, int D, float eps, void* stream) {
  MN_REQUIRE(N > 0 && G > 0 && D > 0, "groupnorm_forward: bad shape N = %d, G = %d, D = %d", N, G,
             D);
  MN_REQUIRE((int64_t)G * D <= 2147483647, "groupnorm_forward: G*D = %lld channels is too many",
             (long long)G * D);
  MN_REQUIRE(eps >= 0.0f, "groupnorm_forward: eps = %g must be >= 0", (double)eps);
  int64_t rows = (int64_t)N * G;
  return mn_launch("groupnorm_forward", groupnorm_forward_kernel, warp_row_blocks(rows), kThreads,
                   0, stream, out, mean, rstd, (const float*)x, (const float*)weight,
                   (const float*)bias, rows, G, D, eps);
}

MN_API int mn_groupnorm_backward(float* dx, float* dweight, float* dbias, float* dout, float* x,
                                 float* weight, float* mean, float* rstd, int N, int G, int D,
                                 int accumulate, void* stream) {
  MN_REQUIRE(N > 0 && G > 0 && D > 0, "groupnorm_backward: bad shape N = %d, G = %d, D = %d", N,
             G, D);
  MN_REQUIRE((int64_t)G * D <= 2147483647, "groupnorm_backward: G*D = %lld channels is too many",
             (long long)G * D);
  MN_REQUIRE(dx && dweight && dbias, "groupnorm_backward: dx, dweight and dbias are required");
  int64_t rows = (int64_t)N * G;
  int rc = mn_launch("groupnorm_backward_dx", groupnorm_backward_dx_kernel, warp_row_blocks(rows),
                     kThreads, 0, stream, dx, (const float*)dout, (const float*)x,
                     (const float*)weight, (const float*)mean, (const float*)rstd, rows, G, D,
                     MN_ACC_BIT(accumulate, 0));
  if (rc) return rc;
  const int C = G * D;
  float* part = nullptr;
  if ((rc = mn_reduce::scratch_floats(&part, mn_reduce::col_scratch_floats(N, C, 2), stream)))
    return rc;
  return mn_reduce::col_sums<2>(
      "groupnorm_backward_params",
      GroupNormParamTerm{(const float*)dout, (const float*)x, (const float*)mean,
                         (const float*)rstd, G, D, 0},
      dweight, dbias, N, C, accumulate >> 1 & 3, part, stream);
}

MN_API int mn_rwkv7_bonus_forward(float* out, float* r, float* k, float* v, float* u, int N, int H,
                                  int D, void* stream) {
  MN_REQUIRE(N > 0 && H > 0 && D > 0, "rwkv7_bonus_forward: bad shape N = %d, H = %d, D = %d", N,
             H, D);
  int64_t rows = (int64_t)N * H;
  return mn_launch("rwkv7_bonus_forward", bonus_forward_kernel, warp_row_blocks(rows), kThreads, 0,
                   stream, out, (const float*)r, (const float*)k, (const float*)v,
                   (const float*)u, rows, H, D);
}

MN_API int mn_rwkv7_bonus_backward(float* dr, float* dk, float* dv, float* du, float* dout,
                                   float* r, float* k, float* v, float* u, int N, int H, int D,
                                   int accumulate, void* stream) {
  MN_REQUIRE(N > 0 && H > 0 && D > 0, "rwkv7_bonus_backward: bad shape N = %d, H = %d, D = %d", N,
             H, D);
  MN_REQUIRE(D <= kBonusMaxD, "rwkv7_bonus_backward: head size D = %d > %d is not supported", D,
             kBonusMaxD);
  MN_REQUIRE(dr && dk && dv && du, "rwkv7_bonus_backward: dr, dk, dv and du are required");
  MN_REQUIRE((int64_t)H * D <= 2147483647, "rwkv7_bonus_backward: H*D = %lld is too many",
             (long long)H * D);
  const int64_t rows = (int64_t)N * H;
  const int C = H * D;
  // scratch: ds [N, H], then the du partials
  float* ds = nullptr;
  if (int rc = mn_reduce::scratch_floats(&ds, rows + mn_reduce::col_scratch_floats(N, C, 1),
                                         stream))
    return rc;
  float* part = ds + rows;
  int rc = mn_launch("rwkv7_bonus_backward_rkv", bonus_backward_rkv_kernel, warp_row_blocks(rows),
                     kThreads, 0, stream, dr, dk, dv, ds, (const float*)dout, (const float*)r,
                     (const float*)k, (const float*)v, (const float*)u, rows, H, D, accumulate);
  if (rc) return rc;
  return mn_reduce::col_sums<1>("rwkv7_bonus_backward_u",
                                BonusDuTerm{ds, (const float*)r, (const float*)k, H, D, 0}, du,
                                nullptr, N, C, MN_ACC_BIT(accumulate, 3), part, stream);
}
