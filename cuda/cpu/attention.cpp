// Causal attention reference, written from the math in double precision (see cuda/kernels.h):
//   s_tj = q_t . k_j / sqrt(D) for j <= t;  P_tj = exp(s_tj - lse_t), lse_t = log sum_j exp(s_tj);
//   out_t = sum_j P_tj v_j.
// Backward (L with dL/dout = dout), per query row t, all from q, k, v (out, lse, ws are not read):
//   dv_j += P_tj dout_t;  dP_tj = dout_t . v_j;  dS_tj = P_tj (dP_tj - sum_i P_ti dP_ti);
//   dq_t += scale sum_j dS_tj k_j;  dk_j += scale dS_tj q_t.
// Each row's scores are materialised (a vector of t+1 doubles); nothing is tiled.
#include <algorithm>
#include <vector>

#include "../entry_checks.h"
#include "cpu_common.h"

namespace {

// Threads only for real work (tiny test shapes stay on the calling thread, see cpu/wkv7.cpp).
bool parallel_worth_it(int B, int T, int H, int D) {
  return B * H > 1 && (int64_t)B * H * T * T * D >= (1 << 22);
}

// Inputs are bf16 (the model's entry points) or fp32 (the _f32 entry points for exact tests).
inline double in_value(mn_bf16 x) { return bf16_to_f32(x); }
inline double in_value(float x) { return x; }

// One (batch, head) slice of q, k, v as double, x[t*D + d].
struct Head {
  int T, D;
  double scale;
  std::vector<double> q, k, v;
  template <typename TI>
  Head(const TI* q_, const TI* k_, const TI* v_, int b, int h, int T_, int H, int D_)
      : T(T_), D(D_), scale(1.0 / std::sqrt((double)D_)) {
    q.resize((size_t)T * D);
    k.resize((size_t)T * D);
    v.resize((size_t)T * D);
    for (int t = 0; t < T; t++)
      for (int d = 0; d < D; d++) {
        const int64_t g = (((int64_t)b * T + t) * H + h) * D + d;
        q[(size_t)t * D + d] = in_value(q_[g]);
        k[(size_t)t * D + d] = in_value(k_[g]);
        v[(size_t)t * D + d] = in_value(v_[g]);
      }
  }
  // p[0..t] = softmax of row t's scores; returns lse_t.
  double probs(int t, std::vector<double>& p) const {
    p.assign((size_t)t + 1, 0.0);
    double mx = -INFINITY;
    for (int j = 0; j <= t; j++) {
      double s = 0;
      for (int d = 0; d < D; d++) s += q[(size_t)t * D + d] * k[(size_t)j * D + d];
      p[j] = s * scale;
      mx = std::max(mx, p[j]);
    }
    double sum = 0;
    for (int j = 0; j <= t; j++) sum += std::exp(p[j] - mx);
    const double lse = mx + std::log(sum);
    for (int j = 0; j <= t; j++) p[j] = std::exp(p[j] - lse);
    return lse;
  }
};

template <typename TI>
int forward_impl(float* out, float* lse, const TI* q, const TI* k, const TI* v, int B, int T,
                 int H, int D) {
  if (int rc = mn_check_attention_shape("attention_forward", B, T, H, D)) return rc;
  MN_REQUIRE(out && lse && q && k && v, "attention_forward: NULL tensor argument");
#pragma omp parallel for collapse(2) schedule(dynamic) if (parallel_worth_it(B, T, H, D))
  for (int b = 0; b < B; b++)
    for (int h = 0; h < H; h++) {
      const Head hd(q, k, v, b, h, T, H, D);
      std::vector<double> p, o((size_t)D);
      for (int t = 0; t < T; t++) {
        lse[((int64_t)b * H + h) * T + t] = (float)hd.probs(t, p);
        std::fill(o.begin(), o.end(), 0.0);
        for (int j = 0; j <= t; j++)
          for (int d = 0; d < D; d++) o[d] += p[j] * hd.v[(size_t)j * D + d];
        float* orow = out + (((int64_t)b * T + t) * H + h) * D;
        for (int d = 0; d < D; d++) orow[d] = (float)o[d];
      }
    }
  return 0;
}

template <typename TI>
int backward_impl(float* dq, float* dk, float* dv, float* dout, float* out, float* lse,
                  const TI* q, const TI* k, const TI* v, float* ws, int B, int T, int H, int D,
                  int accumulate) {
  if (int rc = mn_check_attention_shape("attention_backward", B, T, H, D)) return rc;
  MN_REQUIRE(dq && dk && dv && dout && out && lse && q && k && v && ws,
             "attention_backward: NULL tensor argument");
  const int64_t n = (int64_t)B * T * H * D;
  cpu_clear_unless(accumulate, 0, dq, n);
  cpu_clear_unless(accumulate, 1, dk, n);
  cpu_clear_unless(accumulate, 2, dv, n);
#pragma omp parallel for collapse(2) schedule(dynamic) if (parallel_worth_it(B, T, H, D))
  for (int b = 0; b < B; b++)
    for (int h = 0; h < H; h++) {
      const Head hd(q, k, v, b, h, T, H, D);
      const size_t n = (size_t)T * D;
      std::vector<double> gq(n, 0.0), gk(n, 0.0), gv(n, 0.0), p, dp, g((size_t)D);
      for (int t = 0; t < T; t++) {
        hd.probs(t, p);
        const float* grow = dout + (((int64_t)b * T + t) * H + h) * D;
        for (int d = 0; d < D; d++) g[d] = grow[d];
        dp.assign((size_t)t + 1, 0.0);
        double delta = 0;  // sum_j P_tj dP_tj = dout_t . out_t
        for (int j = 0; j <= t; j++) {
          for (int d = 0; d < D; d++) dp[j] += g[d] * hd.v[(size_t)j * D + d];
          delta += p[j] * dp[j];
        }
        for (int j = 0; j <= t; j++) {
          const double ds = p[j] * (dp[j] - delta) * hd.scale;
          for (int d = 0; d < D; d++) {
            gv[(size_t)j * D + d] += p[j] * g[d];
            gq[(size_t)t * D + d] += ds * hd.k[(size_t)j * D + d];
            gk[(size_t)j * D + d] += ds * hd.q[(size_t)t * D + d];
          }
        }
      }
      // one fp32 addition per element: the result is exactly init + (float)gradient
      for (int t = 0; t < T; t++)
        for (int d = 0; d < D; d++) {
          const int64_t o = (((int64_t)b * T + t) * H + h) * D + d;
          const size_t l = (size_t)t * D + d;
          dq[o] += (float)gq[l];
          dk[o] += (float)gk[l];
          dv[o] += (float)gv[l];
        }
    }
  return 0;
}

}  // namespace

MN_API int mn_attention_forward(float* out, float* lse, mn_bf16* q, mn_bf16* k, mn_bf16* v, int B,
                                int T, int H, int D, void*) {
  return forward_impl(out, lse, q, k, v, B, T, H, D);
}

MN_API int mn_attention_backward(float* dq, float* dk, float* dv, float* dout, float* out,
                                 float* lse, mn_bf16* q, mn_bf16* k, mn_bf16* v, float* ws, int B,
                                 int T, int H, int D, int accumulate, void*) {
  return backward_impl(dq, dk, dv, dout, out, lse, q, k, v, ws, B, T, H, D, accumulate);
}

MN_API int mn_attention_forward_f32(float* out, float* lse, float* q, float* k, float* v, int B,
                                    int T, int H, int D, void*) {
  return forward_impl(out, lse, q, k, v, B, T, H, D);
}

MN_API int mn_attention_backward_f32(float* dq, float* dk, float* dv, float* dout, float* out,
                                     float* lse, float* q, float* k, float* v, float* ws, int B,
                                     int T, int H, int D, int accumulate, void*) {
  return backward_impl(dq, dk, dv, dout, out, lse, q, k, v, ws, B, T, H, D, accumulate);
}
