// Model ops, cpu reference: plain loops written from the math (see kernels.h), sums in double.
#include <algorithm>
#include <vector>

#include "cpu_common.h"
#include "../entry_checks.h"

namespace {

bool known_op(int op) {
  switch (op) {
    case MN_OP_TANH:
    case MN_OP_SIGMOID:
    case MN_OP_RWKV7_DECAY:
    case MN_OP_EXP_MIN0:
    case MN_OP_NEG: return true;
    default: return false;
  }
}

// torch softplus(z), beta = 1, threshold = 20
float softplus(float z) { return z > 20.0f ? z : std::log1p(std::exp(z)); }

float unary(int op, float x) {
  if (op == MN_OP_TANH) return std::tanh(x);
  if (op == MN_OP_SIGMOID) return 1.0f / (1.0f + std::exp(-x));
  if (op == MN_OP_RWKV7_DECAY) return -softplus(-x) - 0.5f;
  if (op == MN_OP_EXP_MIN0) return std::exp(x < 0.0f ? x : 0.0f);
  return -x;
}

// derivative at input x with forward output y (tanh, sigmoid and exp differentiate through y)
float unary_grad(int op, float x, float y) {
  if (op == MN_OP_TANH) return 1.0f - y * y;
  if (op == MN_OP_SIGMOID) return y * (1.0f - y);
  if (op == MN_OP_RWKV7_DECAY) {
    // d/dx (-softplus(-x)) = sigmoid(-x), which is exactly 1 where softplus is linear (-x > 20)
    float z = -x;
    if (z > 20.0f) return 1.0f;
    return 1.0f / (1.0f + std::exp(-z));
  }
  if (op == MN_OP_EXP_MIN0) return x > 0.0f ? 0.0f : y;  // clamp(max=0) lets x == 0 through
  return -1.0f;
}

// Each element is a libm call or two (~10 ns): worth two threads from a few thousand elements on,
// where the plain elementwise loops wait for 100000.
constexpr int64_t kUnaryParallel = 8192;
}  // namespace

MN_API int mn_unary_forward(float* out, float* x, int op, int64_t n, void*) {
  MN_REQUIRE(known_op(op), "unary_forward: unknown op code %d (see MN_OP_* in kernels.h)", op);
  MN_REQUIRE(n >= 0, "unary_forward: n = %lld", (long long)n);
#pragma omp parallel for if (n > kUnaryParallel)
  for (int64_t i = 0; i < n; i++) out[i] = unary(op, x[i]);
  return 0;
}

MN_API int mn_unary_backward(float* dx, float* dout, float* x, float* out, int op, int64_t n,
                             int accumulate, void*) {
  MN_REQUIRE(known_op(op), "unary_backward: unknown op code %d (see MN_OP_* in kernels.h)", op);
  MN_REQUIRE(n >= 0, "unary_backward: n = %lld", (long long)n);
  MN_REQUIRE(dx && dout, "unary_backward: dx and dout are required");
  cpu_clear_unless(accumulate, 0, dx, n);
  bool need_x = op == MN_OP_RWKV7_DECAY || op == MN_OP_EXP_MIN0;
  bool need_out = op == MN_OP_TANH || op == MN_OP_SIGMOID || op == MN_OP_EXP_MIN0;
  MN_REQUIRE(x || !need_x, "unary_backward: op %d needs the forward input x", op);
  MN_REQUIRE(out || !need_out, "unary_backward: op %d needs the forward output", op);
#pragma omp parallel for if (n > kUnaryParallel)
  for (int64_t i = 0; i < n; i++)
    dx[i] += dout[i] * unary_grad(op, need_x ? x[i] : 0.0f, need_out ? out[i] : 0.0f);
  return 0;
}

MN_API int mn_unary_forward_bf16(mn_bf16* out, mn_bf16* x, int op, int64_t n, void*) {
  MN_REQUIRE(known_op(op), "unary_forward_bf16: unknown op code %d (see MN_OP_* in kernels.h)",
             op);
  MN_REQUIRE(n >= 0, "unary_forward_bf16: n = %lld", (long long)n);
#pragma omp parallel for if (n > kUnaryParallel)
  for (int64_t i = 0; i < n; i++) out[i] = f32_to_bf16(unary(op, bf16_to_f32(x[i])));
  return 0;
}

MN_API int mn_unary_backward_bf16(void* dx, void* dout, mn_bf16* x, mn_bf16* out, int op,
                                  int64_t n, int dout_bf16, int dx_bf16, int accumulate, void*) {
  MN_REQUIRE(known_op(op), "unary_backward_bf16: unknown op code %d (see MN_OP_* in kernels.h)",
             op);
  MN_REQUIRE(n >= 0, "unary_backward_bf16: n = %lld", (long long)n);
  MN_REQUIRE(dx && dout, "unary_backward_bf16: dx and dout are required");
  bool need_x = op == MN_OP_RWKV7_DECAY || op == MN_OP_EXP_MIN0;
  bool need_out = op == MN_OP_TANH || op == MN_OP_SIGMOID || op == MN_OP_EXP_MIN0;
  MN_REQUIRE(x || !need_x, "unary_backward_bf16: op %d needs the forward input x", op);
  MN_REQUIRE(out || !need_out, "unary_backward_bf16: op %d needs the forward output", op);
  if (int rc = mn_check_bf16_grad_overwritten("unary_backward_bf16", "dx", dx_bf16, accumulate, 0))
    return rc;
#pragma omp parallel for if (n > kUnaryParallel)
  for (int64_t i = 0; i < n; i++) {
    float d = dout_bf16 ? bf16_to_f32(((mn_bf16*)dout)[i]) : ((float*)dout)[i];
    float g = d * unary_grad(op, need_x ? bf16_to_f32(x[i]) : 0.0f,
                             need_out ? bf16_to_f32(out[i]) : 0.0f);
    if (dx_bf16) ((mn_bf16*)dx)[i] = f32_to_bf16(g);
    else if (accumulate & 1) ((float*)dx)[i] += g;
    else ((float*)dx)[i] = g;
  }
  return 0;
}

MN_API int mn_mul_forward(float* out, float* x, float* y, int64_t n, void*) {
  MN_REQUIRE(n >= 0, "mul_forward: n = %lld", (long long)n);
  for (int64_t i = 0; i < n; i++) out[i] = x[i] * y[i];
  return 0;
}

MN_API int mn_mul_backward(float* dx, float* dy, float* dout, float* x, float* y, int64_t n,
                           int accumulate, void*) {
  MN_REQUIRE(n >= 0, "mul_backward: n = %lld", (long long)n);
  cpu_clear_unless(accumulate, 0, dx, n);
  if (dy != dx) cpu_clear_unless(accumulate, 1, dy, n);
  for (int64_t i = 0; i < n; i++) {
    if (dx) dx[i] += dout[i] * y[i];
    if (dy) dy[i] += dout[i] * x[i];
  }
  return 0;
}

MN_API int mn_lerp_forward(float* out, float* x, float* y, float* g, int64_t n, void*) {
  MN_REQUIRE(n >= 0, "lerp_forward: n = %lld", (long long)n);
  for (int64_t i = 0; i < n; i++) out[i] = x[i] + (y[i] - x[i]) * g[i];
  return 0;
}

MN_API int mn_lerp_backward(float* dx, float* dy, float* dg, float* dout, float* x, float* y,
                            float* g, int64_t n, int accumulate, void*) {
  MN_REQUIRE(n >= 0, "lerp_backward: n = %lld", (long long)n);
  cpu_clear_unless(accumulate, 0, dx, n);
  if (dy != dx) cpu_clear_unless(accumulate, 1, dy, n);
  if (dg != dx && dg != dy) cpu_clear_unless(accumulate, 2, dg, n);
  for (int64_t i = 0; i < n; i++) {
    if (dx) dx[i] += dout[i] * (1.0f - g[i]);
    if (dy) dy[i] += dout[i] * g[i];
    if (dg) dg[i] += dout[i] * (y[i] - x[i]);
  }
  return 0;
}

MN_API int mn_add_row_vector_forward(float* out, float* x, float* v, int N, int C, void*) {
  MN_REQUIRE(N > 0 && C > 0, "add_row_vector_forward: bad shape N = %d, C = %d", N, C);
  for (int i = 0; i < N; i++)
    for (int c = 0; c < C; c++) out[(int64_t)i * C + c] = x[(int64_t)i * C + c] + v[c];
  return 0;
}

MN_API int mn_add_row_vector_backward(float* dx, float* dv, float* dout, int N, int C,
                                      int accumulate, void*) {
  MN_REQUIRE(N > 0 && C > 0, "add_row_vector_backward: bad shape N = %d, C = %d", N, C);
  MN_REQUIRE(dv, "add_row_vector_backward: dv is required (only dx may be NULL)");
  cpu_clear_unless(accumulate, 0, dx, (int64_t)N * C);
  cpu_clear_unless(accumulate, 1, dv, C);
  for (int c = 0; c < C; c++) {
    double s = 0;
    for (int i = 0; i < N; i++) {
      float d = dout[(int64_t)i * C + c];
      if (dx) dx[(int64_t)i * C + c] += d;
      s += d;
    }
    dv[c] += (float)s;
  }
  return 0;
}

MN_API int mn_mul_row_vector_forward(float* out, float* x, float* v, int N, int C, void*) {
  MN_REQUIRE(N > 0 && C > 0, "mul_row_vector_forward: bad shape N = %d, C = %d", N, C);
  for (int i = 0; i < N; i++)
    for (int c = 0; c < C; c++) out[(int64_t)i * C + c] = x[(int64_t)i * C + c] * v[c];
  return 0;
}

MN_API int mn_mul_row_vector_backward(float* dx, float* dv, float* dout, float* x, float* v, int N,
                                      int C, int accumulate, void*) {
  MN_REQUIRE(N > 0 && C > 0, "mul_row_vector_backward: bad shape N = %d, C = %d", N, C);
  cpu_clear_unless(accumulate, 0, dx, (int64_t)N * C);
  cpu_clear_unless(accumulate, 1, dv, C);
  for (int c = 0; c < C; c++) {
    double s = 0;
    for (int i = 0; i < N; i++) {
      int64_t k = (int64_t)i * C + c;
      if (dx) dx[k] += dout[k] * v[c];
      s += (double)dout[k] * x[k];
    }
    if (dv) dv[c] += (float)s;
  }
  return 0;
}

MN_API int mn_time_shift_forward(float* out, float* x, int B, int T, int C, void*) {
  MN_REQUIRE(B > 0 && T > 0 && C > 0, "time_shift_forward: bad shape [%d, %d, %d]", B, T, C);
  MN_REQUIRE(out != x, "time_shift_forward: in-place is not supported");
  for (int b = 0; b < B; b++)
    for (int t = 0; t < T; t++) {
      float* o = out + ((int64_t)b * T + t) * C;
      const float* prev = x + ((int64_t)b * T + t - 1) * C;
      for (int c = 0; c < C; c++) o[c] = t == 0 ? 0.0f : prev[c];
    }
  return 0;
}

MN_API int mn_time_shift_backward(float* dx, float* dout, int B, int T, int C, int accumulate,
                                  void*) {
  MN_REQUIRE(B > 0 && T > 0 && C > 0, "time_shift_backward: bad shape [%d, %d, %d]", B, T, C);
  MN_REQUIRE(dx && dout, "time_shift_backward: dx and dout are required");
  MN_REQUIRE(dx != dout, "time_shift_backward: in-place is not supported");
  cpu_clear_unless(accumulate, 0, dx, (int64_t)B * T * C);
  // out[b,t] = x[b,t-1]  =>  dx[b,t] += dout[b,t+1] for t + 1 < T
  for (int b = 0; b < B; b++)
    for (int t = 0; t + 1 < T; t++) {
      float* d = dx + ((int64_t)b * T + t) * C;
      const float* g = dout + ((int64_t)b * T + t + 1) * C;
      for (int c = 0; c < C; c++) d[c] += g[c];
    }
  return 0;
}

MN_API int mn_l2norm_forward(float* out, float* x, int N, int D, float eps, void*) {
  MN_REQUIRE(N > 0 && D > 0, "l2norm_forward: bad shape N = %d, D = %d", N, D);
  MN_REQUIRE(eps >= 0.0f, "l2norm_forward: eps = %g must be >= 0", (double)eps);
#pragma omp parallel for if ((int64_t)N * D > 100000)
  for (int i = 0; i < N; i++) {
    const float* xr = x + (int64_t)i * D;
    double ss = 0;
    for (int j = 0; j < D; j++) ss += (double)xr[j] * xr[j];
    double denom = std::max(std::sqrt(ss), (double)eps);
    for (int j = 0; j < D; j++) out[(int64_t)i * D + j] = (float)(xr[j] / denom);
  }
  return 0;
}

MN_API int mn_l2norm_backward(float* dx, float* dout, float* x, int N, int D, float eps,
                              int accumulate, void*) {
  MN_REQUIRE(N > 0 && D > 0, "l2norm_backward: bad shape N = %d, D = %d", N, D);
  MN_REQUIRE(eps >= 0.0f, "l2norm_backward: eps = %g must be >= 0", (double)eps);
  MN_REQUIRE(dx && dout, "l2norm_backward: dx and dout are required");
  cpu_clear_unless(accumulate, 0, dx, (int64_t)N * D);
#pragma omp parallel for if ((int64_t)N * D > 100000)
  for (int i = 0; i < N; i++) {
    const float* xr = x + (int64_t)i * D;
    const float* gr = dout + (int64_t)i * D;
    float* dr = dx + (int64_t)i * D;
    double ss = 0, xg = 0;
    for (int j = 0; j < D; j++) {
      ss += (double)xr[j] * xr[j];
      xg += (double)xr[j] * gr[j];
    }
    double nrm = std::sqrt(ss);
    if (nrm < eps) {  // denominator clamped to the constant eps: no gradient through the norm
      for (int j = 0; j < D; j++) dr[j] += (float)(gr[j] / (double)eps);
    } else {  // d(x/n) = dx/n - x (x.dx)/n^3
      for (int j = 0; j < D; j++) dr[j] += (float)(gr[j] / nrm - xr[j] * xg / (nrm * nrm * nrm));
    }
  }
  return 0;
}

MN_API int mn_groupnorm_forward(float* out, float* mean, float* rstd, float* x, float* weight,
                                float* bias, int N, int G, int D, float eps, void*) {
  MN_REQUIRE(N > 0 && G > 0 && D > 0, "groupnorm_forward: bad shape N = %d, G = %d, D = %d", N, G,
             D);
  MN_REQUIRE((int64_t)G * D <= 2147483647, "groupnorm_forward: G*D = %lld channels is too many",
             (long long)G * D);
  MN_REQUIRE(eps >= 0.0f, "groupnorm_forward: eps = %g must be >= 0", (double)eps);
  const int64_t C = (int64_t)G * D;
  for (int i = 0; i < N; i++)
    for (int g = 0; g < G; g++) {
      const int64_t off = i * C + (int64_t)g * D;
      double s = 0, sq = 0;
      for (int j = 0; j < D; j++) s += x[off + j];
      double mu = s / D;
      for (int j = 0; j < D; j++) sq += (x[off + j] - mu) * (x[off + j] - mu);
      double rs = 1.0 / std::sqrt(sq / D + (double)eps);
      for (int j = 0; j < D; j++) {
        int64_t c = (int64_t)g * D + j;
        out[off + j] = (float)((x[off + j] - mu) * rs * weight[c] + bias[c]);
      }
      mean[(int64_t)i * G + g] = (float)mu;
      rstd[(int64_t)i * G + g] = (float)rs;
    }
  return 0;
}

MN_API int mn_groupnorm_backward(float* dx, float* dweight, float* dbias, float* dout, float* x,
                                 float* weight, float* mean, float* rstd, int N, int G, int D,
                                 int accumulate, void*) {
  MN_REQUIRE(N > 0 && G > 0 && D > 0, "groupnorm_backward: bad shape N = %d, G = %d, D = %d", N,
             G, D);
  MN_REQUIRE((int64_t)G * D <= 2147483647, "groupnorm_backward: G*D = %lld channels is too many",
             (long long)G * D);
  MN_REQUIRE(dx && dweight && dbias, "groupnorm_backward: dx, dweight and dbias are required");
  const int64_t C = (int64_t)G * D;
  cpu_clear_unless(accumulate, 0, dx, (int64_t)N * C);
  cpu_clear_unless(accumulate, 1, dweight, C);
  cpu_clear_unless(accumulate, 2, dbias, C);
  // parameter gradients: column sums over rows, rows in order
  for (int64_t c = 0; c < C; c++) {
    const int64_t g = c / D;
    double sw = 0, sb = 0;
    for (int i = 0; i < N; i++) {
      double xhat = ((double)x[i * C + c] - mean[i * G + g]) * rstd[i * G + g];
      sw += dout[i * C + c] * xhat;
      sb += dout[i * C + c];
    }
    dweight[c] += (float)sw;
    dbias[c] += (float)sb;
  }
  // input gradient per (row, group): the layernorm backward over the group's D channels
  for (int i = 0; i < N; i++)
    for (int g = 0; g < G; g++) {
      const int64_t off = i * C + (int64_t)g * D;
      const double mu = mean[(int64_t)i * G + g], rs = rstd[(int64_t)i * G + g];
      double mean_dxhat = 0, mean_dxhat_xhat = 0;
      for (int j = 0; j < D; j++) {
        double dxhat = (double)dout[off + j] * weight[g * D + j];
        mean_dxhat += dxhat / D;
        mean_dxhat_xhat += dxhat * (x[off + j] - mu) * rs / D;
      }
      for (int j = 0; j < D; j++) {
        double dxhat = (double)dout[off + j] * weight[g * D + j];
        double xhat = (x[off + j] - mu) * rs;
        dx[off + j] += (float)(rs * (dxhat - mean_dxhat - xhat * mean_dxhat_xhat));
      }
    }
  return 0;
}

MN_API int mn_rwkv7_bonus_forward(float* out, float* r, float* k, float* v, float* u, int N, int H,
                                  int D, void*) {
  MN_REQUIRE(N > 0 && H > 0 && D > 0, "rwkv7_bonus_forward: bad shape N = %d, H = %d, D = %d", N,
             H, D);
  for (int i = 0; i < N; i++)
    for (int h = 0; h < H; h++) {
      const int64_t off = ((int64_t)i * H + h) * D;
      double s = 0;
      for (int j = 0; j < D; j++) s += (double)r[off + j] * k[off + j] * u[h * D + j];
      for (int j = 0; j < D; j++) out[off + j] = (float)(s * v[off + j]);
    }
  return 0;
}

MN_API int mn_rwkv7_bonus_backward(float* dr, float* dk, float* dv, float* du, float* dout,
                                   float* r, float* k, float* v, float* u, int N, int H, int D,
                                   int accumulate, void*) {
  MN_REQUIRE(N > 0 && H > 0 && D > 0, "rwkv7_bonus_backward: bad shape N = %d, H = %d, D = %d", N,
             H, D);
  MN_REQUIRE(D <= 1024, "rwkv7_bonus_backward: head size D = %d > 1024 is not supported", D);
  MN_REQUIRE(dr && dk && dv && du, "rwkv7_bonus_backward: dr, dk, dv and du are required");
  cpu_clear_unless(accumulate, 0, dr, (int64_t)N * H * D);
  cpu_clear_unless(accumulate, 1, dk, (int64_t)N * H * D);
  cpu_clear_unless(accumulate, 2, dv, (int64_t)N * H * D);
  cpu_clear_unless(accumulate, 3, du, (int64_t)H * D);
  for (int h = 0; h < H; h++) {
    std::vector<double> du_acc(D, 0.0);
    for (int i = 0; i < N; i++) {
      const int64_t off = ((int64_t)i * H + h) * D;
      double s = 0, ds = 0;  // s = sum r k u (the forward's scale); ds = dL/ds = dout . v
      for (int j = 0; j < D; j++) {
        s += (double)r[off + j] * k[off + j] * u[h * D + j];
        ds += (double)dout[off + j] * v[off + j];
      }
      for (int j = 0; j < D; j++) {
        dv[off + j] += (float)(s * dout[off + j]);
        dr[off + j] += (float)(ds * k[off + j] * u[h * D + j]);
        dk[off + j] += (float)(ds * r[off + j] * u[h * D + j]);
        du_acc[j] += ds * r[off + j] * k[off + j];
      }
    }
    for (int j = 0; j < D; j++) du[h * D + j] += (float)du_acc[j];
  }
  return 0;
}
