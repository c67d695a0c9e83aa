// WKV-7 reference, written from the math in double precision (see cuda/kernels.h):
//   d_t = exp(-exp(w_t)); sa_t = S_{t-1} a_t; S_t = S_{t-1} diag(d_t) + sa_t b_t^T + v_t k_t^T;
//   y_t = S_t r_t; S_{-1} = 0.
// Forward: a naive recurrence that keeps every S_t. Backward: recomputes the forward in double from
// the inputs (it does not read s_ckpt / sa / ws) and runs the textbook reverse pass with the full
// matrix G_t = dL/dS_t. The backstepping (mn_wkv7_*) and recompute (mn_wkv7g_*) entry points are
// the same math here; mn_wkv7g_*_f32 read fp32 inputs instead of bf16 (templated input loading);
// s_ckpt and sa are filled with the same meaning as the CUDA kernels:
//   s_ckpt[b][h][c][j][i] = S_{16c+15}[i][j] (end of chunk c, transposed);
//   sa[b][t][h][i] = sa_t[i].
#include <algorithm>
#include <vector>

#include "cpu_common.h"
#include "cpu_math.h"

namespace {

constexpr int CHUNK = 16;

int check(const char* fn, int B, int T, int H, int N) {
  MN_REQUIRE(B > 0 && T > 0 && H > 0, "%s: B = %d, T = %d, H = %d must all be > 0", fn, B, T, H);
  MN_REQUIRE(T % CHUNK == 0, "%s: T = %d is not a multiple of the chunk length %d", fn, T, CHUNK);
  MN_REQUIRE(N == 16 || N == 32 || N == 64 || N == 128,
             "%s: head size N = %d is not supported (16, 32, 64 or 128)", fn, N);
  MN_REQUIRE(B <= 65535, "%s: B = %d exceeds the grid limit 65535", fn, B);
  return 0;
}

// Threads only for real work: tiny test shapes stay on the calling thread (an OpenMP pool started
// after emulator threads exited makes ThreadSanitizer report glibc's stack-cache reuse).
bool parallel_worth_it(int B, int T, int H, int N) {
  return B * H > 1 && (int64_t)B * H * T * N * N >= (1 << 22);
}

// Inputs are bf16 (mn_wkv7_*, mn_wkv7g_*) or fp32 (mn_wkv7g_*_f32): the only difference is how
// one element is read, so everything below is templated on the input type and uses this.
inline double load_input(const mn_bf16* p, int64_t i) { return bf16_to_f32(p[i]); }
inline double load_input(const float* p, int64_t i) { return p[i]; }

// One (batch, head) slice of the inputs, converted to double; x[t*N + i].
//
// Loop order (issue #19): every sum below adds its terms in the textbook order (index ascending,
// from 0), one element at a time as before, but the loops run over the other index innermost, so
// the compiler evaluates 2-8 of these sums side by side in vector lanes: the same operations on
// the same values, so the same bits. The forward works on S_t transposed (ST[j*N + i] = S_t[i][j])
// so that sa and y are such column-wise sums; the backward keeps the states as S_t[i][j] and G_t in
// both orientations (updated by the same expressions, so equal) for its row and column sums.
struct Head {
  int T, N;
  std::vector<double> r, d, k, v, a, b, w;
  std::vector<double> S;   // S[(t+1)*N*N + i*N + j] = S_t[i][j], S[0..N*N) = S_{-1} = 0
  std::vector<double> sa;  // sa[t*N + i]
  std::vector<double> Y;   // y[t*N + i] = (S_t r_t)_i
  std::vector<double> ckpt;  // the transposed state at every chunk end: ckpt[c*N*N + j*N + i]

  Head(int T_, int N_) : T(T_), N(N_) {
    for (auto* x : {&r, &d, &k, &v, &a, &b, &w}) x->assign((size_t)T * N, 0.0);
  }
  template <typename TI>
  void load(const TI* r_, const TI* w_, const TI* k_, const TI* v_, const TI* a_, const TI* b_,
            int bb, int h, int H) {
    for (int t = 0; t < T; t++)
      for (int i = 0; i < N; i++) {
        const int64_t g = (((int64_t)bb * T + t) * H + h) * N + i;
        const size_t l = (size_t)t * N + i;
        r[l] = load_input(r_, g);
        w[l] = load_input(w_, g);
        d[l] = std::exp(-std::exp(w[l]));
        k[l] = load_input(k_, g);
        v[l] = load_input(v_, g);
        a[l] = load_input(a_, g);
        b[l] = load_input(b_, g);
      }
  }
  const double* state(int t) const { return S.data() + (size_t)(t + 1) * N * N; }  // S_t, t >= -1
};

// The recurrence of one head, compiled for the CPU's vector width (cpu_math.h).
// all_states: keep every S_t (row-major) for the backward; else only the chunk-end checkpoints.
MN_HOST_ISA_CLONES
void head_forward(Head& hd, bool all_states) {
  const int T = hd.T, N = hd.N;
  auto &S = hd.S, &ckpt = hd.ckpt, &sa = hd.sa, &Y = hd.Y;
  const auto &a = hd.a, &b = hd.b, &d = hd.d, &k = hd.k, &v = hd.v, &r = hd.r;
  const size_t NN = (size_t)N * N;
  if (all_states) S.assign((size_t)(T + 1) * NN, 0.0);
  ckpt.assign((size_t)(T / CHUNK) * NN, 0.0);
  sa.assign((size_t)T * N, 0.0);
  Y.assign((size_t)T * N, 0.0);
  std::vector<double> P(NN, 0.0), C(NN);  // S_{t-1} and S_t, transposed
  for (int t = 0; t < T; t++) {
    const double *at = &a[(size_t)t * N], *bt = &b[(size_t)t * N], *dt = &d[(size_t)t * N];
    const double *kt = &k[(size_t)t * N], *vt = &v[(size_t)t * N], *rt = &r[(size_t)t * N];
    double* __restrict s = &sa[(size_t)t * N];  // sa_i = sum_j S_{t-1}[i][j] a_j
    for (int j = 0; j < N; j++)
      for (int i = 0; i < N; i++) s[i] += P[(size_t)j * N + i] * at[j];
    // S_t[i][j] = S_{t-1}[i][j] d_j + sa_i b_j + v_i k_j
    for (int j = 0; j < N; j++)
      for (int i = 0; i < N; i++)
        C[(size_t)j * N + i] = P[(size_t)j * N + i] * dt[j] + s[i] * bt[j] + vt[i] * kt[j];
    double* __restrict yt = &Y[(size_t)t * N];  // y_i = sum_j S_t[i][j] r_j
    for (int j = 0; j < N; j++)
      for (int i = 0; i < N; i++) yt[i] += C[(size_t)j * N + i] * rt[j];
    if (t % CHUNK == CHUNK - 1) std::copy(C.begin(), C.end(), ckpt.begin() + (t / CHUNK) * NN);
    if (all_states) {
      double* St = S.data() + (size_t)(t + 1) * NN;
      for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++) St[(size_t)i * N + j] = C[(size_t)j * N + i];
    }
    P.swap(C);
  }
}

template <typename TI>
int forward(const char* fn, float* y, float* s_ckpt, float* sa, const TI* r, const TI* w,
            const TI* k, const TI* v, const TI* a, const TI* b, int B, int T, int H, int N) {
  if (int rc = check(fn, B, T, H, N)) return rc;
  MN_REQUIRE(y && s_ckpt && r && w && k && v && a && b, "%s: NULL tensor argument", fn);
  const int nc = T / CHUNK;
#pragma omp parallel for collapse(2) schedule(dynamic) if (parallel_worth_it(B, T, H, N))
  for (int bb = 0; bb < B; bb++)
    for (int h = 0; h < H; h++) {
      Head hd(T, N);
      hd.load(r, w, k, v, a, b, bb, h, H);
      head_forward(hd, false);
      for (int t = 0; t < T; t++)
        for (int i = 0; i < N; i++) {
          const int64_t g = (((int64_t)bb * T + t) * H + h) * N + i;
          y[g] = (float)hd.Y[(size_t)t * N + i];
          if (sa) sa[g] = (float)hd.sa[(size_t)t * N + i];
        }
      // s_ckpt holds S transposed, as the checkpoints do
      const int64_t NN = (int64_t)N * N;
      float* dst = s_ckpt + ((int64_t)bb * H + h) * nc * NN;
      for (int64_t e = 0; e < nc * NN; e++) dst[e] = (float)hd.ckpt[e];
    }
  return 0;
}

// The reverse pass of one head (its forward states in hd), compiled for the CPU's vector width.
MN_HOST_ISA_CLONES
void head_backward(const Head& hd, const float* dy, float* dr, float* dw, float* dk, float* dv,
                   float* da, float* db, int bb, int h, int H) {
  const int T = hd.T, N = hd.N;
  // G[i*N + j] = G_t[i][j] and GT[j*N + i], the same numbers
  std::vector<double> G((size_t)N * N, 0.0), GT((size_t)N * N, 0.0), dsa(N), dyt(N);
  std::vector<double> sj(N), sd(N), sk(N), sb(N), sv(N);
  for (int t = T - 1; t >= 0; t--) {
    const size_t o = (size_t)t * N;
    const double *rt = &hd.r[o], *dt = &hd.d[o], *kt = &hd.k[o], *vt = &hd.v[o];
    const double *at = &hd.a[o], *bt = &hd.b[o], *wt = &hd.w[o], *sat = &hd.sa[o];
    const double* St = hd.state(t);
    const double* Sp = hd.state(t - 1);
    auto gi = [&](int i) { return (((int64_t)bb * T + t) * H + h) * N + i; };
    for (int i = 0; i < N; i++) dyt[i] = dy[gi(i)];
    // G_t = (carried from t+1) + dy_t r_t^T
    for (int i = 0; i < N; i++)
      for (int j = 0; j < N; j++) G[(size_t)i * N + j] += dyt[i] * rt[j];
    for (int j = 0; j < N; j++)
      for (int i = 0; i < N; i++) GT[(size_t)j * N + i] += dyt[i] * rt[j];
    // dr = S_t^T dy: sums over i
    std::fill(sj.begin(), sj.end(), 0.0);
    for (int i = 0; i < N; i++)
      for (int j = 0; j < N; j++) sj[j] += St[(size_t)i * N + j] * dyt[i];
    for (int j = 0; j < N; j++) dr[gi(j)] += (float)sj[j];
    // column sums over the value index i
    std::fill(sd.begin(), sd.end(), 0.0);
    std::fill(sk.begin(), sk.end(), 0.0);
    std::fill(sb.begin(), sb.end(), 0.0);
    for (int i = 0; i < N; i++)
      for (int j = 0; j < N; j++) {
        const double g = G[(size_t)i * N + j];
        sd[j] += g * Sp[(size_t)i * N + j];
        sk[j] += g * vt[i];
        sb[j] += g * sat[i];
      }
    for (int j = 0; j < N; j++) {
      // dL/dw = dL/dd * dd/dw, dd/dw = -exp(w) d
      dw[gi(j)] += (float)(sd[j] * -std::exp(wt[j]) * dt[j]);
      dk[gi(j)] += (float)sk[j];
      db[gi(j)] += (float)sb[j];
    }
    // row sums over the key index j (from G transposed)
    std::fill(sv.begin(), sv.end(), 0.0);
    std::fill(dsa.begin(), dsa.end(), 0.0);
    for (int j = 0; j < N; j++)
      for (int i = 0; i < N; i++) {
        const double g = GT[(size_t)j * N + i];
        sv[i] += g * kt[j];
        dsa[i] += g * bt[j];
      }
    for (int i = 0; i < N; i++) dv[gi(i)] += (float)sv[i];
    // da = S_{t-1}^T dsa: sums over i
    std::fill(sj.begin(), sj.end(), 0.0);
    for (int i = 0; i < N; i++)
      for (int j = 0; j < N; j++) sj[j] += Sp[(size_t)i * N + j] * dsa[i];
    for (int j = 0; j < N; j++) da[gi(j)] += (float)sj[j];
    // S_t = S_{t-1} (diag(d_t) + a_t b_t^T) + ..., so G_{t-1} (before its own dy r^T term)
    // = G_t (diag(d_t) + b_t a_t^T) = G_t diag(d_t) + dsa_t a_t^T
    for (int i = 0; i < N; i++)
      for (int j = 0; j < N; j++)
        G[(size_t)i * N + j] = G[(size_t)i * N + j] * dt[j] + dsa[i] * at[j];
    for (int j = 0; j < N; j++)
      for (int i = 0; i < N; i++)
        GT[(size_t)j * N + i] = GT[(size_t)j * N + i] * dt[j] + dsa[i] * at[j];
  }
}

template <typename TI>
int backward(const char* fn, float* dr, float* dw, float* dk, float* dv, float* da, float* db,
             const float* dy, const TI* r, const TI* w, const TI* k, const TI* v, const TI* a,
             const TI* b, int B, int T, int H, int N, int accumulate) {
  if (int rc = check(fn, B, T, H, N)) return rc;
  MN_REQUIRE(dr && dw && dk && dv && da && db && dy && r && w && k && v && a && b,
             "%s: NULL tensor argument", fn);
  float* grads[6] = {dr, dw, dk, dv, da, db};
  for (int i = 0; i < 6; i++) cpu_clear_unless(accumulate, i, grads[i], (int64_t)B * T * H * N);
#pragma omp parallel for collapse(2) schedule(dynamic) if (parallel_worth_it(B, T, H, N))
  for (int bb = 0; bb < B; bb++)
    for (int h = 0; h < H; h++) {
      Head hd(T, N);
      hd.load(r, w, k, v, a, b, bb, h, H);
      head_forward(hd, true);
      head_backward(hd, dy, dr, dw, dk, dv, da, db, bb, h, H);
    }
  return 0;
}

}  // namespace

MN_API int mn_wkv7_forward(float* y, float* s_ckpt, float* sa, mn_bf16* r, mn_bf16* w, mn_bf16* k,
                           mn_bf16* v, mn_bf16* a, mn_bf16* b, int B, int T, int H, int N, void*) {
  if (int rc = check("wkv7_forward", B, T, H, N)) return rc;
  MN_REQUIRE(sa, "wkv7_forward: NULL tensor argument (sa)");
  return forward("wkv7_forward", y, s_ckpt, sa, r, w, k, v, a, b, B, T, H, N);
}

MN_API int mn_wkv7_backward(void* dr, void* dw, void* dk, void* dv, void* da, void* db,
                            float* dy, mn_bf16* r, mn_bf16* w, mn_bf16* k, mn_bf16* v, mn_bf16* a,
                            mn_bf16* b, float* s_ckpt, float* sa, int B, int T, int H, int N,
                            int drkv_bf16, int dwab_bf16, int accumulate, void*) {
  if (int rc = check("wkv7_backward", B, T, H, N)) return rc;
  MN_REQUIRE(s_ckpt && sa, "wkv7_backward: NULL tensor argument");
  void* g[6] = {dr, dw, dk, dv, da, db};
  if (!drkv_bf16 && !dwab_bf16)
    return backward("wkv7_backward", (float*)dr, (float*)dw, (float*)dk, (float*)dv, (float*)da,
                    (float*)db, dy, r, w, k, v, a, b, B, T, H, N, accumulate);
  for (void* p : g) MN_REQUIRE(p, "wkv7_backward: NULL tensor argument");
  // bf16 gradients: the fp32 ones computed alone, then rounded (bit clear) or added to the bf16
  // value with the sum rounded (bit set)
  const bool bf[6] = {drkv_bf16 != 0, dwab_bf16 != 0, drkv_bf16 != 0,
                      drkv_bf16 != 0, dwab_bf16 != 0, dwab_bf16 != 0};
  const size_t n = (size_t)B * T * H * N;
  std::vector<std::vector<float>> tmp(6);
  float* out[6];
  int acc = accumulate;
  for (int i = 0; i < 6; i++) {
    if (bf[i]) {
      tmp[i].assign(n, 0.0f);
      out[i] = tmp[i].data();
      acc &= ~(1 << i);
    } else {
      out[i] = (float*)g[i];
    }
  }
  if (int rc = backward("wkv7_backward", out[0], out[1], out[2], out[3], out[4], out[5], dy, r, w,
                        k, v, a, b, B, T, H, N, acc))
    return rc;
  for (int i = 0; i < 6; i++) {
    if (!bf[i]) continue;
    mn_bf16* d = (mn_bf16*)g[i];
    const bool add = (accumulate >> i) & 1;
    for (size_t e = 0; e < n; e++) d[e] = f32_to_bf16(add ? bf16_to_f32(d[e]) + out[i][e] : out[i][e]);
  }
  return 0;
}

MN_API int mn_wkv7g_forward(float* y, float* s_ckpt, mn_bf16* r, mn_bf16* w, mn_bf16* k,
                            mn_bf16* v, mn_bf16* a, mn_bf16* b, int B, int T, int H, int N, void*) {
  return forward<mn_bf16>("wkv7g_forward", y, s_ckpt, nullptr, r, w, k, v, a, b, B, T, H, N);
}

MN_API int mn_wkv7g_backward(float* dr, float* dw, float* dk, float* dv, float* da, float* db,
                             float* dy, mn_bf16* r, mn_bf16* w, mn_bf16* k, mn_bf16* v, mn_bf16* a,
                             mn_bf16* b, float* s_ckpt, float* ws, int B, int T, int H, int N,
                             int accumulate, void*) {
  if (int rc = check("wkv7g_backward", B, T, H, N)) return rc;
  MN_REQUIRE(s_ckpt && ws, "wkv7g_backward: NULL tensor argument");
  return backward("wkv7g_backward", dr, dw, dk, dv, da, db, dy, r, w, k, v, a, b, B, T, H, N,
                  accumulate);
}

MN_API int mn_wkv7g_forward_f32(float* y, float* s_ckpt, float* r, float* w, float* k, float* v,
                                float* a, float* b, int B, int T, int H, int N, void*) {
  return forward<float>("wkv7g_forward_f32", y, s_ckpt, nullptr, r, w, k, v, a, b, B, T, H, N);
}

MN_API int mn_wkv7g_backward_f32(float* dr, float* dw, float* dk, float* dv, float* da, float* db,
                                 float* dy, float* r, float* w, float* k, float* v, float* a,
                                 float* b, float* s_ckpt, float* ws, int B, int T, int H, int N,
                                 int accumulate, void*) {
  if (int rc = check("wkv7g_backward_f32", B, T, H, N)) return rc;
  MN_REQUIRE(s_ckpt && ws, "wkv7g_backward_f32: NULL tensor argument");
  return backward<float>("wkv7g_backward_f32", dr, dw, dk, dv, da, db, dy, r, w, k, v, a, b, B, T,
                         H, N, accumulate);
}
