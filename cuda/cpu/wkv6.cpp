// WKV-6 reference, written from the math in double precision (see cuda/kernels.h):
//   d_t = exp(-exp(w_t)); y_t = S_{t-1} r_t + v_t sum_j r_t[j] u[j] k_t[j];
//   S_t = S_{t-1} diag(d_t) + v_t k_t^T; S_{-1} = 0.
// Forward: a naive recurrence over the full matrix S. Backward: recomputes and keeps every S_t,
// then the textbook reverse pass with the full matrix Gm = dL/dS_t (through later outputs):
//   Gm_{t-1} = Gm_t diag(d_t) + dy_t r_t^T, and dL/dd_t[j] = sum_i Gm_t[i][j] S_{t-1}[i][j]
// directly (not the running-sum form the CUDA kernels use). ws is not touched.
#include <vector>

#include "cpu_common.h"

namespace {

int check(const char* fn, int B, int T, int H, int N) {
  MN_REQUIRE(B > 0 && T > 0 && H > 0, "%s: B = %d, T = %d, H = %d must all be > 0", fn, B, T, H);
  MN_REQUIRE(N == 16 || N == 32 || N == 64 || N == 128,
             "%s: head size N = %d is not supported (16, 32, 64 or 128)", fn, N);
  MN_REQUIRE(B <= 65535, "%s: B = %d exceeds the grid limit 65535", fn, B);
  return 0;
}

// Threads only for real work (tiny test shapes stay on the calling thread; see cpu/wkv7.cpp).
bool parallel_worth_it(int B, int T, int H, int N) {
  return B * H > 1 && (int64_t)B * H * T * N * N >= (1 << 22);
}

// One (batch, head) slice in double; x[t*N + i].
struct Head {
  int T, N;
  std::vector<double> r, k, v, w, d, u;
  std::vector<double> S;  // S[(t+1)*N*N + i*N + j] = S_t[i][j]; S_{-1} = 0

  Head(int T_, int N_) : T(T_), N(N_) {
    for (auto* x : {&r, &k, &v, &w, &d}) x->assign((size_t)T * N, 0.0);
    u.assign(N, 0.0);
  }
  static double in(mn_bf16 x) { return bf16_to_f32(x); }
  static double in(float x) { return x; }
  template <typename TI>
  void load(const TI* r_, const TI* k_, const TI* v_, const TI* w_, const float* u_, int bb, int h,
            int H) {
    for (int i = 0; i < N; i++) u[i] = u_[(int64_t)h * N + i];
    for (int t = 0; t < T; t++)
      for (int i = 0; i < N; i++) {
        const int64_t g = (((int64_t)bb * T + t) * H + h) * N + i;
        const size_t l = (size_t)t * N + i;
        r[l] = in(r_[g]);
        k[l] = in(k_[g]);
        v[l] = in(v_[g]);
        w[l] = in(w_[g]);
        d[l] = std::exp(-std::exp(w[l]));
      }
  }
  const double* state(int t) const { return S.data() + (size_t)(t + 1) * N * N; }  // t >= -1
  // Runs the recurrence; y(t, i) for every step into `y` ([T*N]).
  void forward(std::vector<double>& y) {
    const size_t NN = (size_t)N * N;
    S.assign((size_t)(T + 1) * NN, 0.0);
    y.assign((size_t)T * N, 0.0);
    for (int t = 0; t < T; t++) {
      const double* P = state(t - 1);
      double* C = S.data() + (size_t)(t + 1) * NN;
      const size_t o = (size_t)t * N;
      double bonus = 0;  // sum_j r[j] u[j] k[j]
      for (int j = 0; j < N; j++) bonus += r[o + j] * u[j] * k[o + j];
      for (int i = 0; i < N; i++) {
        double yi = v[o + i] * bonus;
        for (int j = 0; j < N; j++) {
          yi += P[i * N + j] * r[o + j];
          C[i * N + j] = P[i * N + j] * d[o + j] + v[o + i] * k[o + j];
        }
        y[o + i] = yi;
      }
    }
  }
};

}  // namespace

// The bf16 entry points and their fp32-input twins share one body, templated on the input type.
namespace {

template <typename TI>
int wkv6_forward_common(const char* fn, float* y, TI* r, TI* k, TI* v, TI* w, float* u, int B,
                        int T, int H, int N) {
  if (int rc = check(fn, B, T, H, N)) return rc;
  MN_REQUIRE(y && r && k && v && w && u, "%s: NULL tensor argument", fn);
#pragma omp parallel for collapse(2) schedule(dynamic) if (parallel_worth_it(B, T, H, N))
  for (int bb = 0; bb < B; bb++)
    for (int h = 0; h < H; h++) {
      Head hd(T, N);
      hd.load(r, k, v, w, u, bb, h, H);
      std::vector<double> yh;
      hd.forward(yh);
      for (int t = 0; t < T; t++)
        for (int i = 0; i < N; i++)
          y[(((int64_t)bb * T + t) * H + h) * N + i] = (float)yh[(size_t)t * N + i];
    }
  return 0;
}

template <typename TI>
int wkv6_backward_common(const char* fn, float* dr, float* dk, float* dv, float* dw, float* du,
                         float* dy, TI* r, TI* k, TI* v, TI* w, float* u, float* ws, int B, int T,
                         int H, int N, int accumulate) {
  if (int rc = check(fn, B, T, H, N)) return rc;
  MN_REQUIRE(dr && dk && dv && dw && du && dy && r && k && v && w && u && ws,
             "%s: NULL tensor argument", fn);
  const int64_t n = (int64_t)B * T * H * N;
  cpu_clear_unless(accumulate, 0, dr, n);
  cpu_clear_unless(accumulate, 1, dk, n);
  cpu_clear_unless(accumulate, 2, dv, n);
  cpu_clear_unless(accumulate, 3, dw, n);
  cpu_clear_unless(accumulate, 4, du, (int64_t)H * N);
  // du partials per (b, h) in double, summed over b in order at the end (deterministic).
  std::vector<double> dupart((size_t)B * H * N, 0.0);
#pragma omp parallel for collapse(2) schedule(dynamic) if (parallel_worth_it(B, T, H, N))
  for (int bb = 0; bb < B; bb++)
    for (int h = 0; h < H; h++) {
      Head hd(T, N);
      hd.load(r, k, v, w, u, bb, h, H);
      std::vector<double> yh;
      hd.forward(yh);
      std::vector<double> Gm((size_t)N * N, 0.0), dyt(N);
      double* dup = &dupart[((size_t)bb * H + h) * N];
      for (int t = T - 1; t >= 0; t--) {
        const size_t o = (size_t)t * N;
        auto gi = [&](int i) { return (((int64_t)bb * T + t) * H + h) * N + i; };
        const double *rt = &hd.r[o], *kt = &hd.k[o], *vt = &hd.v[o], *dt = &hd.d[o];
        const double *wt = &hd.w[o], *ut = hd.u.data();
        const double* Sp = hd.state(t - 1);
        for (int i = 0; i < N; i++) dyt[i] = dy[gi(i)];
        double vdy = 0, bonus = 0;
        for (int i = 0; i < N; i++) vdy += vt[i] * dyt[i];
        for (int j = 0; j < N; j++) bonus += rt[j] * ut[j] * kt[j];
        for (int j = 0; j < N; j++) {  // key channel j: sums over the value index i
          double sr = 0, sk = 0, sd = 0;
          for (int i = 0; i < N; i++) {
            sr += Sp[i * N + j] * dyt[i];
            sk += Gm[i * N + j] * vt[i];
            sd += Gm[i * N + j] * Sp[i * N + j];
          }
          dr[gi(j)] += (float)(sr + ut[j] * kt[j] * vdy);
          dk[gi(j)] += (float)(sk + ut[j] * rt[j] * vdy);
          // dL/dw = dL/dd * dd/dw, dd/dw = -exp(w) d
          dw[gi(j)] += (float)(sd * -std::exp(wt[j]) * dt[j]);
          dup[j] += rt[j] * kt[j] * vdy;
        }
        for (int i = 0; i < N; i++) {  // value channel i: sums over the key index j
          double sv = 0;
          for (int j = 0; j < N; j++) sv += Gm[i * N + j] * kt[j];
          dv[gi(i)] += (float)(sv + dyt[i] * bonus);
        }
        // S_t = S_{t-1} diag(d_t) + ..., y_t uses S_{t-1} r_t: Gm_{t-1} = Gm_t diag(d_t) + dy r^T
        for (int i = 0; i < N; i++)
          for (int j = 0; j < N; j++) Gm[i * N + j] = Gm[i * N + j] * dt[j] + dyt[i] * rt[j];
      }
    }
  for (int h = 0; h < H; h++)
    for (int j = 0; j < N; j++) {
      double s = 0;
      for (int bb = 0; bb < B; bb++) s += dupart[((size_t)bb * H + h) * N + j];
      du[(int64_t)h * N + j] += (float)s;
    }
  return 0;
}

}  // namespace

MN_API int mn_wkv6_forward(float* y, mn_bf16* r, mn_bf16* k, mn_bf16* v, mn_bf16* w, float* u,
                           int B, int T, int H, int N, void*) {
  return wkv6_forward_common("wkv6_forward", y, r, k, v, w, u, B, T, H, N);
}

MN_API int mn_wkv6_backward(float* dr, float* dk, float* dv, float* dw, float* du, float* dy,
                            mn_bf16* r, mn_bf16* k, mn_bf16* v, mn_bf16* w, float* u, float* ws,
                            int B, int T, int H, int N, int accumulate, void*) {
  return wkv6_backward_common("wkv6_backward", dr, dk, dv, dw, du, dy, r, k, v, w, u, ws, B, T, H,
                              N, accumulate);
}

MN_API int mn_wkv6_forward_f32(float* y, float* r, float* k, float* v, float* w, float* u, int B,
                               int T, int H, int N, void*) {
  return wkv6_forward_common("wkv6_forward_f32", y, r, k, v, w, u, B, T, H, N);
}

MN_API int mn_wkv6_backward_f32(float* dr, float* dk, float* dv, float* dw, float* du, float* dy,
                                float* r, float* k, float* v, float* w, float* u, float* ws,
                                int B, int T, int H, int N, int accumulate, void*) {
  return wkv6_backward_common("wkv6_backward_f32", dr, dk, dv, dw, du, dy, r, k, v, w, u, ws, B, T,
                              H, N, accumulate);
}
