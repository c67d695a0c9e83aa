// Fused RWKV-7 time-mixing chains, cpu reference: plain loops from the math of kernels.h, sums
// over rows in double. Written independently of rwkv7_fused.cu (emu-vs-cpu compares the two).
#include <cmath>
#include <vector>

#include "cpu_common.h"
#include "../entry_checks.h"

namespace {

// x[b, t-1, c] - x[b, t, c] with a zero token before t = 0; row = b*T + t
inline float token_diff(const float* x, int64_t row, int64_t c, int T, int C) {
  float prev = row % T == 0 ? 0.0f : x[(row - 1) * C + c];
  return prev - x[row * C + c];
}

inline void write_out(void* out, bool bf16, int64_t e, float v) {
  if (bf16) ((mn_bf16*)out)[e] = f32_to_bf16(v);
  else ((float*)out)[e] = v;
}

inline void grad_out(float* g, int64_t e, int accumulate, int bit, float v) {
  g[e] = (accumulate >> bit) & 1 ? g[e] + v : v;
}

// element e of an fp32 or bf16 tensor
inline float read_in(const void* t, bool bf16, int64_t e) {
  return bf16 ? bf16_to_f32(((const mn_bf16*)t)[e]) : ((const float*)t)[e];
}

}  // namespace

MN_API int mn_rwkv7_mix_x_forward(void* out, float* x, float* maa, int out_bf16, int B, int T,
                                  int C, void*) {
  if (int rc =
          mn_check_rwkv7_fused("rwkv7_mix_x_forward", B, T, C, C, {out, x, maa}, 0, 0, 0.0f))
    return rc;
  MN_REQUIRE(out != (void*)x, "rwkv7_mix_x_forward: in-place is not supported");
  const int64_t N = (int64_t)B * T;
#pragma omp parallel for if (N * C > 100000)
  for (int64_t i = 0; i < N; i++)
    for (int64_t c = 0; c < C; c++) {
      float xi = x[i * C + c];
      write_out(out, out_bf16, i * C + c, xi + token_diff(x, i, c, T, C) * maa[c]);
    }
  return 0;
}

MN_API int mn_rwkv7_mix_x_backward(float* dx, float* dmaa, void* dout, float* x, float* maa,
                                   int dout_bf16, int B, int T, int C, int accumulate, void*) {
  if (int rc = mn_check_rwkv7_fused("rwkv7_mix_x_backward", B, T, C, C,
                                     {dx, dmaa, dout, x, maa}, accumulate, 0x2, 0.0f))
    return rc;
  const int64_t N = (int64_t)B * T;
  // out[t] = x[t] (1 - maa) + x[t-1] maa: x[t] reaches out[t] and out[t+1]
  std::vector<double> s(C, 0.0);
  for (int64_t i = 0; i < N; i++) {
    bool last = (i + 1) % T == 0;
    for (int64_t c = 0; c < C; c++) {
      float g = read_in(dout, dout_bf16, i * C + c);
      float next = last ? 0.0f : read_in(dout, dout_bf16, (i + 1) * C + c);
      double v = (double)g * (1.0 - (double)maa[c]) + (double)next * maa[c];
      grad_out(dx, i * C + c, accumulate, 0, (float)v);
      s[c] += (double)g * token_diff(x, i, c, T, C);
    }
  }
  for (int c = 0; c < C; c++) dmaa[c] += (float)s[c];
  return 0;
}

MN_API int mn_rwkv7_mix4_forward(void* out_rg, void* out_wa, void* out_k, void* out_v, float* x,
                                 void* m_rg, void* m_wa, void* m_k, void* m_v, float* maa_rg,
                                 float* maa_wa, float* maa_k, float* maa_v, int out_bf16,
                                 int m_bf16, int B, int T, int C, void*) {
  if (int rc = mn_check_rwkv7_fused("rwkv7_mix4_forward", B, T, C, C,
                                     {out_rg, out_wa, out_k, out_v, x, m_rg, m_wa, m_k, m_v, maa_rg,
                                      maa_wa, maa_k, maa_v},
                                     0, 0, 0.0f))
    return rc;
  void* outs[4] = {out_rg, out_wa, out_k, out_v};
  const void* m[4] = {m_rg, m_wa, m_k, m_v};
  const float* maa[4] = {maa_rg, maa_wa, maa_k, maa_v};
  const int64_t N = (int64_t)B * T;
#pragma omp parallel for if (N * C > 100000)
  for (int64_t i = 0; i < N; i++)
    for (int64_t c = 0; c < C; c++) {
      const int64_t e = i * C + c;
      float xx = token_diff(x, i, c, T, C);
      for (int j = 0; j < 4; j++)
        write_out(outs[j], out_bf16, e, x[e] + xx * (read_in(m[j], m_bf16, e) + maa[j][c]));
    }
  return 0;
}

MN_API int mn_rwkv7_mix4_backward(float* dx, void* dm_rg, void* dm_wa, void* dm_k, void* dm_v,
                                  float* dmaa_rg, float* dmaa_wa, float* dmaa_k, float* dmaa_v,
                                  void* dout_rg, void* dout_wa, void* dout_k, void* dout_v,
                                  mn_bf16* dout2_rg, mn_bf16* dout2_wa, mn_bf16* dout2_k,
                                  mn_bf16* dout2_v, float* x, void* m_rg, void* m_wa, void* m_k,
                                  void* m_v, float* maa_rg, float* maa_wa, float* maa_k,
                                  float* maa_v, int m_bf16, int dm_bf16, int dout_bf16, int B,
                                  int T, int C, int accumulate, void*) {
  if (int rc = mn_check_rwkv7_mix4_backward(dx, dm_rg, dm_wa, dm_k, dm_v, dmaa_rg, dmaa_wa, dmaa_k,
                                            dmaa_v, dout_rg, dout_wa, dout_k, dout_v, dout2_rg,
                                            dout2_wa, dout2_k, dout2_v, x, m_rg, m_wa, m_k, m_v,
                                            maa_rg, maa_wa, maa_k, maa_v, dm_bf16, dout_bf16, B,
                                            T, C, accumulate))
    return rc;
  void* dm[4] = {dm_rg, dm_wa, dm_k, dm_v};
  float* dmaa[4] = {dmaa_rg, dmaa_wa, dmaa_k, dmaa_v};
  const void* dout[4] = {dout_rg, dout_wa, dout_k, dout_v};
  const mn_bf16* dout2[4] = {dout2_rg, dout2_wa, dout2_k, dout2_v};
  // out_j's gradient: dout_j (+ the second bf16 part), summed in float as the kernel does
  auto grad = [&](int j, int64_t e) {
    float d = read_in(dout[j], dout_bf16, e);
    if (dout2[j]) d += bf16_to_f32(dout2[j][e]);
    return d;
  };
  const void* m[4] = {m_rg, m_wa, m_k, m_v};
  const float* maa[4] = {maa_rg, maa_wa, maa_k, maa_v};
  const int64_t N = (int64_t)B * T;
  std::vector<double> s(4 * (size_t)C, 0.0);
  for (int64_t i = 0; i < N; i++) {
    bool last = (i + 1) % T == 0;
    for (int64_t c = 0; c < C; c++) {
      const int64_t e = i * C + c;
      float xx = token_diff(x, i, c, T, C);
      double v = 0.0;
      for (int j = 0; j < 4; j++) {
        double coef = (double)read_in(m[j], m_bf16, e) + maa[j][c];
        const float d = grad(j, e);
        v += (double)d * (1.0 - coef);
        if (!last) v += (double)grad(j, e + C) * ((double)read_in(m[j], m_bf16, e + C) + maa[j][c]);
        if (dm_bf16) ((mn_bf16*)dm[j])[e] = f32_to_bf16(d * xx);
        else grad_out((float*)dm[j], e, accumulate, 1 + j, d * xx);
        s[j * C + c] += (double)d * xx;
      }
      grad_out(dx, e, accumulate, 0, (float)v);
    }
  }
  for (int j = 0; j < 4; j++)
    for (int c = 0; c < C; c++) dmaa[j][c] += (float)s[j * C + c];
  return 0;
}

// ---- between the projections and the WKV call ----
namespace {

float sig(float x) { return 1.0f / (1.0f + std::exp(-x)); }
float softplus_torch(float z) { return z > 20.0f ? z : std::log1p(std::exp(z)); }

// One element's forward values, from its inputs after the bias adds.
struct Elem {
  float w, kk, a, ma, mk, ka, k1, z, e, k;
};
Elem elem(float dec, float k0, float s, float inv, float aaa, float mam, float mkm) {
  Elem f;
  f.w = -softplus_torch(-dec) - 0.5f;
  f.kk = s * inv;
  f.a = sig(aaa);
  f.ma = sig(mam);
  f.mk = sig(mkm);
  f.ka = k0 * f.a;
  f.k1 = f.ka + (k0 - f.ka) * f.ma;
  f.z = f.w * f.mk;
  f.e = std::exp(f.z < 0.0f ? f.z : 0.0f);
  f.k = f.k1 * f.e;
  return f;
}

struct Inputs {
  const float *dec, *k0, *kkk, *aaa, *mam, *mkm, *td, *ta, *tma, *tmk;
  Elem at(int64_t e, int64_t c, float inv) const {
    return elem(dec[e] + td[c], k0[e], k0[e] + kkk[e], inv, aaa[e] + ta[c], mam[e] + tma[c],
                mkm[e] + tmk[c]);
  }
  // ||k0 + kkk|| over the D channels at e0, in double
  double norm(int64_t e0, int D) const {
    double ss = 0.0;
    for (int j = 0; j < D; j++) {
      double s = (double)k0[e0 + j] + kkk[e0 + j];
      ss += s * s;
    }
    return std::sqrt(ss);
  }
};

}  // namespace

namespace {
// bf16 activations as the fp32 values they hold (the fp32 code below then reads them)
struct Widened {
  std::vector<float> v[6];
  float* p[6];
  Widened(void* const act[6], bool bf16, int64_t n) {
    for (int i = 0; i < 6; i++) {
      if (!bf16) {
        p[i] = (float*)act[i];
        continue;
      }
      v[i].resize(n);
      for (int64_t e = 0; e < n; e++) v[i][e] = bf16_to_f32(((const mn_bf16*)act[i])[e]);
      p[i] = v[i].data();
    }
  }
};

int wkv_inputs_forward_f32(void* w, float* k, mn_bf16* k_bf16, void* a, void* b, float* dec,
                           float* k0, float* kkk, float* aaa, float* mam, float* mkm,
                           float* time_decay, float* time_aaaaa, float* time_misc_a,
                           float* time_misc_k, int out_bf16, int N, int H, int D, float eps) {
  const Inputs in{dec, k0, kkk, aaa, mam, mkm, time_decay, time_aaaaa, time_misc_a, time_misc_k};
  const int64_t rows = (int64_t)N * H;
#pragma omp parallel for if (rows * D > 100000)
  for (int64_t r = 0; r < rows; r++) {
    const int64_t e0 = r * D, c0 = (r % H) * D;
    const double n = in.norm(e0, D);
    const float inv = (float)(1.0 / (n > eps ? n : (double)eps));
    for (int j = 0; j < D; j++) {
      const int64_t e = e0 + j;
      const Elem f = in.at(e, c0 + j, inv);
      write_out(w, out_bf16, e, f.w);
      k[e] = f.k;
      if (k_bf16) k_bf16[e] = f32_to_bf16(f.k);
      write_out(a, out_bf16, e, -f.kk);
      write_out(b, out_bf16, e, f.kk * f.a);
    }
  }
  return 0;
}
}  // namespace

MN_API int mn_rwkv7_wkv_inputs_forward(void* w, float* k, mn_bf16* k_bf16, void* a, void* b,
                                       void* dec, void* k0, void* kkk, void* aaa, void* mam,
                                       void* mkm, float* time_decay, float* time_aaaaa,
                                       float* time_misc_a, float* time_misc_k, int out_bf16,
                                       int in_bf16, int N, int H, int D, float eps, void*) {
  if (int rc = mn_check_rwkv7_fused("rwkv7_wkv_inputs_forward", N, H, D, (int64_t)H * D,
                                     {w, k, a, b, dec, k0, kkk, aaa, mam, mkm, time_decay,
                                      time_aaaaa, time_misc_a, time_misc_k},
                                     0, 0, eps))
    return rc;
  void* const act[6] = {dec, k0, kkk, aaa, mam, mkm};
  const Widened x(act, in_bf16, (int64_t)N * H * D);
  return wkv_inputs_forward_f32(w, k, k_bf16, a, b, x.p[0], x.p[1], x.p[2], x.p[3], x.p[4], x.p[5],
                                time_decay, time_aaaaa, time_misc_a, time_misc_k, out_bf16, N, H,
                                D, eps);
}

namespace {
int wkv_inputs_backward_f32(float* ddec, float* dk0, float* dkkk, float* daaa, float* dmam,
                            float* dmkm, float* dtime_decay, float* dtime_aaaaa,
                            float* dtime_misc_a, float* dtime_misc_k, float* dw, float* dk,
                            float* da, float* db, float* dec, float* k0, float* kkk, float* aaa,
                            float* mam, float* mkm, float* time_decay, float* time_aaaaa,
                            float* time_misc_a, float* time_misc_k, int N, int H, int D, float eps,
                            int accumulate) {
  const Inputs in{dec, k0, kkk, aaa, mam, mkm, time_decay, time_aaaaa, time_misc_a, time_misc_k};
  const int64_t rows = (int64_t)N * H, C = (int64_t)H * D;
  // per-row terms of the four parameter vectors, summed over rows in double afterwards
  std::vector<float> terms(4 * (size_t)N * C);
  std::vector<double> dkk(D);
#pragma omp parallel for if (rows * D > 100000) firstprivate(dkk)
  for (int64_t r = 0; r < rows; r++) {
    const int64_t e0 = r * D, c0 = (r % H) * D;
    const double n = in.norm(e0, D);
    const float inv = (float)(1.0 / (n > eps ? n : (double)eps));
    // gradient reaching kk: from WKV's a = -kk and b = kk * sigmoid(aaa)
    double dot = 0.0;
    for (int j = 0; j < D; j++) {
      const int64_t e = e0 + j;
      const float ag = sig(aaa[e] + time_aaaaa[c0 + j]);
      dkk[j] = -(double)da[e] + (double)db[e] * ag;
      dot += ((double)k0[e] + kkk[e]) * dkk[j];
    }
    for (int j = 0; j < D; j++) {
      const int64_t e = e0 + j, c = c0 + j;
      const Elem f = in.at(e, c, inv);
      // k = k1 * e, e = exp(min(z, 0)) (gradient through where z <= 0), k1 = ka + (k0 - ka) ma
      const double dk1 = (double)dk[e] * f.e;
      const double dz = f.z <= 0.0f ? (double)dk[e] * f.k1 * f.e : 0.0;
      const double dka = dk1 * (1.0 - f.ma);
      const double s = (double)k0[e] + kkk[e];
      // F.normalize's backward: clamp_min passes the gradient where the norm >= eps
      const double ds = n >= eps ? dkk[j] / n - s * dot / (n * n * n) : dkk[j] / eps;
      const double sp = -(double)(dec[e] + time_decay[c]);  // d(-softplus(-x))/dx = softplus'(-x)
      const double dsp = sp > 20.0 ? 1.0 : 1.0 / (1.0 + std::exp(-sp));
      const double vdec = ((double)dw[e] + dz * f.mk) * dsp;
      const double vaaa = ((double)db[e] * f.kk + dka * k0[e]) * f.a * (1.0 - f.a);
      const double vmam = dk1 * ((double)k0[e] - f.ka) * f.ma * (1.0 - f.ma);
      const double vmkm = dz * f.w * f.mk * (1.0 - f.mk);
      grad_out(ddec, e, accumulate, 0, (float)vdec);
      grad_out(dk0, e, accumulate, 1, (float)(dka * f.a + dk1 * f.ma + ds));
      grad_out(dkkk, e, accumulate, 2, (float)ds);
      grad_out(daaa, e, accumulate, 3, (float)vaaa);
      grad_out(dmam, e, accumulate, 4, (float)vmam);
      grad_out(dmkm, e, accumulate, 5, (float)vmkm);
      const int64_t row = r / H;
      const float t4[4] = {(float)vdec, (float)vaaa, (float)vmam, (float)vmkm};
      for (int i = 0; i < 4; i++) terms[((size_t)i * N + row) * C + c] = t4[i];
    }
  }
  float* outs[4] = {dtime_decay, dtime_aaaaa, dtime_misc_a, dtime_misc_k};
  for (int i = 0; i < 4; i++)
    for (int64_t c = 0; c < C; c++) {
      double sum = 0.0;
      for (int64_t row = 0; row < N; row++) sum += terms[((size_t)i * N + row) * C + c];
      outs[i][c] += (float)sum;
    }
  return 0;
}
}  // namespace

MN_API int mn_rwkv7_wkv_inputs_backward(void* ddec, void* dk0, void* dkkk, void* daaa,
                                        void* dmam, void* dmkm, float* dtime_decay,
                                        float* dtime_aaaaa, float* dtime_misc_a,
                                        float* dtime_misc_k, void* dw, void* dk, void* da,
                                        void* db, void* dec, void* k0, void* kkk, void* aaa,
                                        void* mam, void* mkm, float* time_decay,
                                        float* time_aaaaa, float* time_misc_a,
                                        float* time_misc_k, int in_bf16, int grad_bf16,
                                        int dwab_bf16, int dk_bf16, int N, int H, int D, float eps,
                                        int accumulate, void*) {
  if (int rc = mn_check_rwkv7_fused("rwkv7_wkv_inputs_backward", N, H, D, (int64_t)H * D,
                                     {ddec, dk0, dkkk, daaa, dmam, dmkm, dtime_decay, dtime_aaaaa,
                                      dtime_misc_a, dtime_misc_k, dw, dk, da, db, dec, k0, kkk, aaa,
                                      mam, mkm, time_decay, time_aaaaa, time_misc_a, time_misc_k},
                                     accumulate, 0x3c0, eps))
    return rc;
  MN_REQUIRE(!grad_bf16 || !(accumulate & 0x3f),
             "rwkv7_wkv_inputs_backward: bf16 gradients are overwritten (bits 0-5 must be clear)");
  const int64_t n = (int64_t)N * H * D;
  void* const act[6] = {dec, k0, kkk, aaa, mam, mkm};
  void* const grads[6] = {ddec, dk0, dkkk, daaa, dmam, dmkm};
  const Widened x(act, in_bf16, n);
  // the outputs' gradients (dw, da, db and dk each fp32 or bf16) as their values
  void* const wab[6] = {dw, da, db, dw, dw, dw};
  void* const kk[6] = {dk, dk, dk, dk, dk, dk};
  const Widened dwab(wab, dwab_bf16, dwab_bf16 ? n : 0), dkw(kk, dk_bf16, dk_bf16 ? n : 0);
  float* const dwf = dwab_bf16 ? dwab.p[0] : (float*)dw;
  float* const daf = dwab_bf16 ? dwab.p[1] : (float*)da;
  float* const dbf = dwab_bf16 ? dwab.p[2] : (float*)db;
  float* const dkf = dk_bf16 ? dkw.p[0] : (float*)dk;
  // bf16 gradients: the fp32 ones (overwritten) rounded once
  std::vector<float> tmp(grad_bf16 ? 6 * (size_t)n : 0);
  float* g[6];
  for (int i = 0; i < 6; i++) g[i] = grad_bf16 ? tmp.data() + i * n : (float*)grads[i];
  int rc = wkv_inputs_backward_f32(g[0], g[1], g[2], g[3], g[4], g[5], dtime_decay, dtime_aaaaa,
                                   dtime_misc_a, dtime_misc_k, dwf, dkf, daf, dbf, x.p[0], x.p[1],
                                   x.p[2], x.p[3], x.p[4], x.p[5], time_decay, time_aaaaa,
                                   time_misc_a, time_misc_k, N, H, D, eps, accumulate);
  if (rc || !grad_bf16) return rc;
  for (int i = 0; i < 6; i++)
    for (int64_t e = 0; e < n; e++) ((mn_bf16*)grads[i])[e] = f32_to_bf16(g[i][e]);
  return 0;
}

// ---- after the WKV call: GroupNorm + bonus, times the gate ----
namespace {

struct GnRow {
  double mean, rstd, s;  // GroupNorm statistics and the bonus scalar sum_j r k u of one (row, head)
};
GnRow gn_row(const float* y, const float* r, const float* k, const float* u, int64_t e0,
             int64_t c0, int D, float eps) {
  double m = 0.0, sq = 0.0, s = 0.0;
  for (int j = 0; j < D; j++) m += y[e0 + j];
  m /= D;
  for (int j = 0; j < D; j++) sq += (y[e0 + j] - m) * (y[e0 + j] - m);
  for (int j = 0; j < D; j++) s += (double)r[e0 + j] * k[e0 + j] * u[c0 + j];
  return GnRow{m, 1.0 / std::sqrt(sq / D + eps), s};
}

}  // namespace

MN_API int mn_rwkv7_gn_bonus_gate_forward(void* out, float* mean, float* rstd, float* y,
                                          float* weight, float* bias, float* r, float* k, float* v,
                                          float* u, void* gate, int out_bf16, int gate_bf16, int N,
                                          int H, int D, float eps, void*) {
  if (int rc = mn_check_rwkv7_fused("rwkv7_gn_bonus_gate_forward", N, H, D, (int64_t)H * D,
                                     {out, mean, rstd, y, weight, bias, r, k, v, u, gate}, 0, 0,
                                     eps))
    return rc;
  const int64_t rows = (int64_t)N * H;
#pragma omp parallel for if (rows * D > 100000)
  for (int64_t row = 0; row < rows; row++) {
    const int64_t e0 = row * D, c0 = (row % H) * D;
    const GnRow g = gn_row(y, r, k, u, e0, c0, D, eps);
    const float m = (float)g.mean, rs = (float)g.rstd, s = (float)g.s;
    for (int j = 0; j < D; j++) {
      const int64_t e = e0 + j;
      const float gn = (y[e] - m) * rs * weight[c0 + j] + bias[c0 + j];
      write_out(out, out_bf16, e, (gn + s * v[e]) * read_in(gate, gate_bf16, e));
    }
    mean[row] = m;
    rstd[row] = rs;
  }
  return 0;
}

MN_API int mn_rwkv7_gn_bonus_gate_backward(float* dy, float* dr, float* dk, float* dv,
                                           void* dgate, float* dweight, float* dbias, float* du,
                                           float* dout, float* y, float* weight, float* bias,
                                           float* mean, float* rstd, float* r, float* k, float* v,
                                           float* u, void* gate, int gate_bf16, int dgate_bf16,
                                           int N, int H, int D, int accumulate, void*) {
  if (int rc = mn_check_rwkv7_fused("rwkv7_gn_bonus_gate_backward", N, H, D, (int64_t)H * D,
                                     {dy, dr, dk, dv, dgate, dweight, dbias, du, dout, y, weight,
                                      bias, mean, rstd, r, k, v, u, gate},
                                     accumulate, 0xe0, 0.0f))
    return rc;
  if (int rc = mn_check_bf16_grad_overwritten("rwkv7_gn_bonus_gate_backward", "dgate", dgate_bf16,
                                              accumulate, 4))
    return rc;
  const int64_t rows = (int64_t)N * H, C = (int64_t)H * D;
  const auto gate_at = [&](int64_t e) { return (double)read_in(gate, gate_bf16, e); };
  std::vector<double> sw(C, 0.0), sb(C, 0.0), su(C, 0.0);
  for (int64_t row = 0; row < rows; row++) {
    const int64_t e0 = row * D, c0 = (row % H) * D;
    double s = 0.0;  // the bonus scalar, from the inputs (the forward did not keep it)
    for (int j = 0; j < D; j++) s += (double)r[e0 + j] * k[e0 + j] * u[c0 + j];
    const double m = mean[row], rs = rstd[row];
    // z = gn + s v is multiplied by the gate: its gradient is dz = dout * gate
    double ds = 0.0, s1 = 0.0, s2 = 0.0;
    for (int j = 0; j < D; j++) {
      const int64_t e = e0 + j;
      const double dz = dout[e] * gate_at(e), xh = (y[e] - m) * rs;
      ds += dz * v[e];
      s1 += dz * weight[c0 + j];
      s2 += dz * weight[c0 + j] * xh;
    }
    s1 /= D;
    s2 /= D;
    for (int j = 0; j < D; j++) {
      const int64_t e = e0 + j, c = c0 + j;
      const double dz = dout[e] * gate_at(e), xh = (y[e] - m) * rs;
      const double z = xh * weight[c] + bias[c] + s * v[e];
      grad_out(dy, e, accumulate, 0, (float)(rs * (dz * weight[c] - s1 - xh * s2)));
      grad_out(dr, e, accumulate, 1, (float)(ds * k[e] * u[c]));
      grad_out(dk, e, accumulate, 2, (float)(ds * r[e] * u[c]));
      grad_out(dv, e, accumulate, 3, (float)(s * dz));
      // a bf16 dgate: the fp32 one (overwritten) rounded once
      if (dgate_bf16) ((mn_bf16*)dgate)[e] = f32_to_bf16((float)(dout[e] * z));
      else grad_out((float*)dgate, e, accumulate, 4, (float)(dout[e] * z));
      sw[c] += dz * xh;
      sb[c] += dz;
      su[c] += ds * r[e] * k[e];
    }
  }
  for (int64_t c = 0; c < C; c++) {
    dweight[c] += (float)sw[c];
    dbias[c] += (float)sb[c];
    du[c] += (float)su[c];
  }
  return 0;
}

MN_API int mn_rwkv7_value_mix_forward(float* out, mn_bf16* out_bf16, float* v, float* v1,
                                      void* mv, float* time_misc_v, int mv_bf16, int N, int C,
                                      void*) {
  if (int rc = mn_check_rwkv7_fused("rwkv7_value_mix_forward", N, C, 1, C,
                                     {out, v, v1, mv, time_misc_v}, 0, 0, 0.0f))
    return rc;
#pragma omp parallel for if ((int64_t)N * C > 100000)
  for (int64_t i = 0; i < N; i++)
    for (int64_t c = 0; c < C; c++) {
      const int64_t e = i * C + c;
      const float g = 1.0f / (1.0f + std::exp(-(read_in(mv, mv_bf16, e) + time_misc_v[c])));
      const float o = v[e] + (v1[e] - v[e]) * g;
      out[e] = o;
      if (out_bf16) out_bf16[e] = f32_to_bf16(o);
    }
  return 0;
}

MN_API int mn_rwkv7_value_mix_backward(void* dv, float* dv1, void* dmv, float* dtime_misc_v,
                                       void* dout, float* v, float* v1, void* mv,
                                       float* time_misc_v, int mv_bf16, int dmv_bf16, int dv_bf16,
                                       int dout_bf16, int N, int C, int accumulate, void*) {
  if (int rc = mn_check_rwkv7_value_mix_backward(dv, dv1, dmv, dtime_misc_v, dout, v, v1, mv,
                                                 time_misc_v, dmv_bf16, dv_bf16, N, C, accumulate))
    return rc;
  std::vector<double> s(C, 0.0);
  for (int64_t i = 0; i < N; i++)
    for (int64_t c = 0; c < C; c++) {
      const int64_t e = i * C + c;
      const double m = read_in(mv, mv_bf16, e);
      const double g = 1.0 / (1.0 + std::exp(-(m + time_misc_v[c])));
      const double d = read_in(dout, dout_bf16, e), dg = d * ((double)v1[e] - v[e]) * g * (1.0 - g);
      // a bf16 dv or dmv: the fp32 one (overwritten) rounded once
      if (dv_bf16) ((mn_bf16*)dv)[e] = f32_to_bf16((float)(d * (1.0 - g)));
      else grad_out((float*)dv, e, accumulate, 0, (float)(d * (1.0 - g)));
      grad_out(dv1, e, accumulate, 1, (float)(d * g));
      if (dmv_bf16) ((mn_bf16*)dmv)[e] = f32_to_bf16((float)dg);
      else grad_out((float*)dmv, e, accumulate, 2, (float)dg);
      s[c] += dg;
    }
  for (int c = 0; c < C; c++) dtime_misc_v[c] += (float)s[c];
  return 0;
}

// ---- RWKV-6: the five mixes, the decay and key chain, GroupNorm times the gate ----

MN_API int mn_rwkv6_mix5_forward(void* out_w, void* out_k, void* out_v, void* out_r, void* out_g,
                                 float* x, float* m_w, float* m_k, float* m_v, float* m_r,
                                 float* m_g, float* maa_w, float* maa_k, float* maa_v,
                                 float* maa_r, float* maa_g, int out_bf16, int B, int T, int C,
                                 void*) {
  if (int rc = mn_check_rwkv7_fused("rwkv6_mix5_forward", B, T, C, C,
                                     {out_w, out_k, out_v, out_r, out_g, x, m_w, m_k, m_v, m_r, m_g,
                                      maa_w, maa_k, maa_v, maa_r, maa_g},
                                     0, 0, 0.0f))
    return rc;
  void* outs[5] = {out_w, out_k, out_v, out_r, out_g};
  const float* m[5] = {m_w, m_k, m_v, m_r, m_g};
  const float* maa[5] = {maa_w, maa_k, maa_v, maa_r, maa_g};
  const int64_t N = (int64_t)B * T;
#pragma omp parallel for if (N * C > 100000)
  for (int64_t i = 0; i < N; i++)
    for (int64_t c = 0; c < C; c++) {
      const int64_t e = i * C + c;
      float xx = token_diff(x, i, c, T, C);
      for (int j = 0; j < 5; j++)
        write_out(outs[j], out_bf16, e, x[e] + xx * (m[j][e] + maa[j][c]));
    }
  return 0;
}

MN_API int mn_rwkv6_mix5_backward(float* dx, float* dm_w, float* dm_k, float* dm_v, float* dm_r,
                                  float* dm_g, float* dmaa_w, float* dmaa_k, float* dmaa_v,
                                  float* dmaa_r, float* dmaa_g, float* dout_w, float* dout_k,
                                  float* dout_v, float* dout_r, float* dout_g, float* x, float* m_w,
                                  float* m_k, float* m_v, float* m_r, float* m_g, float* maa_w,
                                  float* maa_k, float* maa_v, float* maa_r, float* maa_g, int B,
                                  int T, int C, int accumulate, void*) {
  if (int rc = mn_check_rwkv7_fused(
          "rwkv6_mix5_backward", B, T, C, C,
          {dx, dm_w, dm_k, dm_v, dm_r, dm_g, dmaa_w, dmaa_k, dmaa_v, dmaa_r, dmaa_g, dout_w, dout_k,
           dout_v, dout_r, dout_g, x, m_w, m_k, m_v, m_r, m_g, maa_w, maa_k, maa_v, maa_r, maa_g},
          accumulate, 0x7c0, 0.0f))
    return rc;
  float* dm[5] = {dm_w, dm_k, dm_v, dm_r, dm_g};
  float* dmaa[5] = {dmaa_w, dmaa_k, dmaa_v, dmaa_r, dmaa_g};
  const float* dout[5] = {dout_w, dout_k, dout_v, dout_r, dout_g};
  const float* m[5] = {m_w, m_k, m_v, m_r, m_g};
  const float* maa[5] = {maa_w, maa_k, maa_v, maa_r, maa_g};
  const int64_t N = (int64_t)B * T;
  // out_j[t] = x[t] (1 - coef_j[t]) + x[t-1] coef_j[t]: x[t] reaches out_j[t] and out_j[t+1]
  std::vector<double> s(5 * (size_t)C, 0.0);
  for (int64_t i = 0; i < N; i++) {
    bool last = (i + 1) % T == 0;
    for (int64_t c = 0; c < C; c++) {
      const int64_t e = i * C + c;
      float xx = token_diff(x, i, c, T, C);
      double v = 0.0;
      for (int j = 0; j < 5; j++) {
        double coef = (double)m[j][e] + maa[j][c];
        v += (double)dout[j][e] * (1.0 - coef);
        if (!last) v += (double)dout[j][e + C] * ((double)m[j][e + C] + maa[j][c]);
        grad_out(dm[j], e, accumulate, 1 + j, dout[j][e] * xx);
        s[j * C + c] += (double)dout[j][e] * xx;
      }
      grad_out(dx, e, accumulate, 0, (float)v);
    }
  }
  for (int j = 0; j < 5; j++)
    for (int c = 0; c < C; c++) dmaa[j][c] += (float)s[j * C + c];
  return 0;
}

MN_API int mn_rwkv6_decay_k_forward(void* w, void* kw, float* ww, float* k, float* time_decay,
                                    int out_bf16, int N, int C, void*) {
  if (int rc = mn_check_rwkv7_fused("rwkv6_decay_k_forward", N, C, 1, C,
                                     {w, kw, ww, k, time_decay}, 0, 0, 0.0f))
    return rc;
#pragma omp parallel for if ((int64_t)N * C > 100000)
  for (int64_t i = 0; i < N; i++)
    for (int64_t c = 0; c < C; c++) {
      const int64_t e = i * C + c;
      const float we = ww[e] + time_decay[c];
      write_out(w, out_bf16, e, we);
      write_out(kw, out_bf16, e, k[e] * std::exp(we < 0.0f ? we : 0.0f));
    }
  return 0;
}

MN_API int mn_rwkv6_decay_k_backward(float* dww, float* dk, float* dtime_decay, float* dw,
                                     float* dkw, float* ww, float* k, float* time_decay, int N,
                                     int C, int accumulate, void*) {
  if (int rc = mn_check_rwkv7_fused("rwkv6_decay_k_backward", N, C, 1, C,
                                     {dww, dk, dtime_decay, dw, dkw, ww, k, time_decay},
                                     accumulate, 0x4, 0.0f))
    return rc;
  std::vector<double> s(C, 0.0);
  for (int64_t i = 0; i < N; i++)
    for (int64_t c = 0; c < C; c++) {
      const int64_t e = i * C + c;
      const float we = ww[e] + time_decay[c];
      const double ex = std::exp(we < 0.0f ? (double)we : 0.0);
      // clamp(max=0) passes the gradient where w <= 0
      const double g = (double)dw[e] + (we <= 0.0f ? (double)dkw[e] * k[e] * ex : 0.0);
      grad_out(dww, e, accumulate, 0, (float)g);
      grad_out(dk, e, accumulate, 1, (float)(dkw[e] * ex));
      s[c] += g;
    }
  for (int c = 0; c < C; c++) dtime_decay[c] += (float)s[c];
  return 0;
}

MN_API int mn_rwkv6_gn_gate_forward(void* out, float* mean, float* rstd, float* y, float* weight,
                                    float* bias, void* gate, int out_bf16, int gate_bf16, int N,
                                    int H, int D, float eps, void*) {
  if (int rc = mn_check_rwkv7_fused("rwkv6_gn_gate_forward", N, H, D, (int64_t)H * D,
                                     {out, mean, rstd, y, weight, bias, gate}, 0, 0, eps))
    return rc;
  const int64_t rows = (int64_t)N * H;
#pragma omp parallel for if (rows * D > 100000)
  for (int64_t row = 0; row < rows; row++) {
    const int64_t e0 = row * D, c0 = (row % H) * D;
    double m = 0.0, sq = 0.0;
    for (int j = 0; j < D; j++) m += y[e0 + j];
    m /= D;
    for (int j = 0; j < D; j++) sq += (y[e0 + j] - m) * (y[e0 + j] - m);
    const float mf = (float)m, rs = (float)(1.0 / std::sqrt(sq / D + eps));
    for (int j = 0; j < D; j++) {
      const int64_t e = e0 + j;
      const float gn = (y[e] - mf) * rs * weight[c0 + j] + bias[c0 + j];
      write_out(out, out_bf16, e, gn * read_in(gate, gate_bf16, e));
    }
    mean[row] = mf;
    rstd[row] = rs;
  }
  return 0;
}

MN_API int mn_rwkv6_gn_gate_backward(float* dy, void* dgate, float* dweight, float* dbias,
                                     float* dout, float* y, float* weight, float* bias,
                                     float* mean, float* rstd, void* gate, int gate_bf16,
                                     int dgate_bf16, int N, int H, int D, int accumulate, void*) {
  if (int rc = mn_check_rwkv7_fused("rwkv6_gn_gate_backward", N, H, D, (int64_t)H * D,
                                     {dy, dgate, dweight, dbias, dout, y, weight, bias, mean, rstd,
                                      gate},
                                     accumulate, 0xc, 0.0f))
    return rc;
  if (int rc = mn_check_bf16_grad_overwritten("rwkv6_gn_gate_backward", "dgate", dgate_bf16,
                                              accumulate, 1))
    return rc;
  const auto gate_at = [&](int64_t e) { return (double)read_in(gate, gate_bf16, e); };
  const int64_t rows = (int64_t)N * H, C = (int64_t)H * D;
  std::vector<double> sw(C, 0.0), sb(C, 0.0);
  for (int64_t row = 0; row < rows; row++) {
    const int64_t e0 = row * D, c0 = (row % H) * D;
    const double m = mean[row], rs = rstd[row];
    // GroupNorm's output gn is multiplied by the gate: its gradient is dz = dout * gate
    double s1 = 0.0, s2 = 0.0;
    for (int j = 0; j < D; j++) {
      const int64_t e = e0 + j;
      const double dz = dout[e] * gate_at(e), xh = (y[e] - m) * rs;
      s1 += dz * weight[c0 + j];
      s2 += dz * weight[c0 + j] * xh;
    }
    s1 /= D;
    s2 /= D;
    for (int j = 0; j < D; j++) {
      const int64_t e = e0 + j, c = c0 + j;
      const double dz = dout[e] * gate_at(e), xh = (y[e] - m) * rs;
      grad_out(dy, e, accumulate, 0, (float)(rs * (dz * weight[c] - s1 - xh * s2)));
      const float dg = (float)(dout[e] * (xh * weight[c] + bias[c]));
      // a bf16 dgate: the fp32 one (overwritten) rounded once
      if (dgate_bf16) ((mn_bf16*)dgate)[e] = f32_to_bf16(dg);
      else grad_out((float*)dgate, e, accumulate, 1, dg);
      sw[c] += dz * xh;
      sb[c] += dz;
    }
  }
  for (int64_t c = 0; c < C; c++) {
    dweight[c] += (float)sw[c];
    dbias[c] += (float)sb[c];
  }
  return 0;
}
