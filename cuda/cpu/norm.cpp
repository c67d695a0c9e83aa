// LayerNorm and RMSNorm, reference: straight from the formulas, statistics in double.
//   LayerNorm: mu = mean(x), var = mean((x - mu)^2) (biased, as torch), rstd = 1/sqrt(var + eps),
//              y = (x - mu) * rstd * w + b
//   RMSNorm:   rstd = 1/sqrt(mean(x^2) + eps), y = x * rstd
#include <vector>

#include "cpu_common.h"
#include "../entry_checks.h"

static int check_shape(const char* fn, int N, int C) {
  MN_REQUIRE(N > 0 && C > 0, "%s: bad shape N = %d, C = %d", fn, N, C);
  return 0;
}

// out: float or mn_bf16 (rounded once from the fp32 value the fp32 forward writes)
template <typename T>
static int layernorm_forward(const char* fn, T* out, float* mean, float* rstd, float* inp,
                             float* weight, float* bias, int N, int C, float eps) {
  if (int rc = mn_check_layernorm_forward(fn, out, mean, rstd, inp, weight, bias, N, C, eps))
    return rc;
#pragma omp parallel for if ((int64_t)N * C > 100000)
  for (int i = 0; i < N; i++) {
    const float* x = inp + (int64_t)i * C;
    double mu = 0;
    for (int c = 0; c < C; c++) mu += x[c];
    mu /= C;
    double var = 0;
    for (int c = 0; c < C; c++) var += (x[c] - mu) * (x[c] - mu);
    var /= C;
    double rs = 1.0 / std::sqrt(var + (double)eps);
    T* y = out + (int64_t)i * C;
    for (int c = 0; c < C; c++) {
      const float v = (float)((x[c] - mu) * rs * weight[c] + bias[c]);
      if constexpr (sizeof(T) == 2) y[c] = f32_to_bf16(v);
      else y[c] = v;
    }
    mean[i] = (float)mu;
    rstd[i] = (float)rs;
  }
  return 0;
}

MN_API int mn_layernorm_forward(float* out, float* mean, float* rstd, float* inp, float* weight,
                                float* bias, int N, int C, float eps, void*) {
  return layernorm_forward("layernorm_forward", out, mean, rstd, inp, weight, bias, N, C, eps);
}

MN_API int mn_layernorm_forward_bf16(mn_bf16* out, float* mean, float* rstd, float* inp,
                                     float* weight, float* bias, int N, int C, float eps, void*) {
  return layernorm_forward("layernorm_forward_bf16", out, mean, rstd, inp, weight, bias, N, C,
                           eps);
}

MN_API int mn_add_layernorm_forward(float* sum, mn_bf16* out, float* mean, float* rstd, float* inp,
                                    void* branch, int branch_bf16, float* weight, float* bias,
                                    int N, int C, float eps, void*) {
  const char* fn = "add_layernorm_forward";
  if (int rc = mn_check_add_layernorm_forward(fn, sum, out, mean, rstd, inp, branch, weight, bias,
                                              N, C, eps))
    return rc;
  const int64_t n = (int64_t)N * C;
#pragma omp parallel for if (n > 100000)
  for (int64_t i = 0; i < n; i++) {
    const float b = branch_bf16 ? bf16_to_f32(((const mn_bf16*)branch)[i]) : ((float*)branch)[i];
    sum[i] = inp[i] + b;
  }
  return layernorm_forward(fn, out, mean, rstd, sum, weight, bias, N, C, eps);
}

// mn_add, mn_axpby_forward, mn_layernorm_forward: each value rounded as those write it
MN_API int mn_mix_layernorm_forward(float* sum, float* x_out, float* out, float* mean, float* rstd,
                                    float* x, float* branch, float* x0, float* a, float* b,
                                    float* weight, float* bias, int N, int C, float eps, void*) {
  const char* fn = "mix_layernorm_forward";
  if (int rc = mn_check_mix_layernorm_forward(fn, sum, x_out, out, mean, rstd, x, branch, x0, a, b,
                                              weight, bias, N, C, eps))
    return rc;
  const int64_t n = (int64_t)N * C;
  const float av = *a, bv = *b;
#pragma omp parallel for if (n > 100000)
  for (int64_t i = 0; i < n; i++) {
    float s = x[i];
    if (branch) {
      s = s + branch[i];
      if (sum) sum[i] = s;
    }
    x_out[i] = av * s + bv * x0[i];
  }
  return layernorm_forward(fn, out, mean, rstd, x_out, weight, bias, N, C, eps);
}

// With xhat = (x - mean) * rstd and g = dout * w (the gradient reaching xhat):
//   dx = rstd * (g - mean_c(g) - xhat * mean_c(g * xhat)),  dw = sum_i dout * xhat,  db = sum_i dout
MN_API int mn_layernorm_backward(float* dinp, float* dweight, float* dbias, float* dout,
                                 float* inp, float* weight, float* mean, float* rstd, int N, int C,
                                 int accumulate, void*) {
  const char* fn = "layernorm_backward";
  MN_REQUIRE(dinp && dweight && dbias && dout && inp && weight && mean && rstd,
             "%s: NULL pointer argument", fn);
  if (int rc = check_shape(fn, N, C)) return rc;
  cpu_clear_unless(accumulate, 0, dinp, (int64_t)N * C);
  cpu_clear_unless(accumulate, 1, dweight, C);
  cpu_clear_unless(accumulate, 2, dbias, C);
#pragma omp parallel for if ((int64_t)N * C > 100000)
  for (int i = 0; i < N; i++) {
    const float* x = inp + (int64_t)i * C;
    const float* dy = dout + (int64_t)i * C;
    double mu = mean[i], rs = rstd[i];
    double sg = 0, sgx = 0;
    for (int c = 0; c < C; c++) {
      double g = (double)dy[c] * weight[c];
      sg += g;
      sgx += g * (x[c] - mu) * rs;
    }
    sg /= C;
    sgx /= C;
    float* dx = dinp + (int64_t)i * C;
    for (int c = 0; c < C; c++) {
      double g = (double)dy[c] * weight[c];
      double xhat = (x[c] - mu) * rs;
      dx[c] += (float)(rs * (g - sg - xhat * sgx));
    }
  }
  // parameter gradients: each column summed over rows in order, then added once
#pragma omp parallel for if ((int64_t)N * C > 100000)
  for (int c = 0; c < C; c++) {
    double sw = 0, sb = 0;
    for (int i = 0; i < N; i++) {
      double dy = dout[(int64_t)i * C + c];
      sw += dy * (inp[(int64_t)i * C + c] - (double)mean[i]) * rstd[i];
      sb += dy;
    }
    dweight[c] += (float)sw;
    dbias[c] += (float)sb;
  }
  return 0;
}

// mn_layernorm_backward on x_out (its dinp added to g_in), then mn_axpby_backward (x = s, y = x0)
// on that total g, with s = x + branch recomputed as the forward rounds it. Each element's g_in
// is read before its ds is written (ds may be g_in), and ds is stored before dx0 adds (ds may be
// dx0); the sums in double, rounded once: mn_layernorm_backward then mn_axpby_backward, bit for bit.
MN_API int mn_mix_layernorm_backward(float* ds, mn_bf16* ds_bf16, float* dx0, float* dweight,
                                     float* dbias, float* da, float* db, float* dout, float* g_in,
                                     float* x_out, float* x, float* branch, float* x0, float* a,
                                     float* b, float* weight, float* mean, float* rstd, int N,
                                     int C, int accumulate, void*) {
  const char* fn = "mix_layernorm_backward";
  if (int rc = mn_check_mix_layernorm_backward(fn, ds, ds_bf16, dx0, dweight, dbias, da, db, dout,
                                               g_in, x_out, x, branch, x0, a, b, weight, mean,
                                               rstd, N, C, accumulate))
    return rc;
  const float av = *a, bv = *b;
  const bool acc_ds = MN_ACC_BIT(accumulate, 0), acc_dx0 = MN_ACC_BIT(accumulate, 2);
  std::vector<double> sw(C, 0.0), sb(C, 0.0);
  double sa = 0, sbb = 0;
  for (int i = 0; i < N; i++) {
    const int64_t o = (int64_t)i * C;
    const double mu = mean[i], rs = rstd[i];
    double mg = 0, mgx = 0;
    // mn_layernorm_backward's products, associated as it writes them
    for (int c = 0; c < C; c++) {
      const double d = dout ? dout[o + c] : 0.0, g = d * weight[c];
      mg += g;
      mgx += g * (x_out[o + c] - mu) * rs;
      sw[c] += d * (x_out[o + c] - mu) * rs;
      sb[c] += d;
    }
    mg /= C;
    mgx /= C;
    for (int c = 0; c < C; c++) {
      const int64_t e = o + c;
      const double d = dout ? dout[e] : 0.0;
      const double xhat = (x_out[e] - mu) * rs;
      const float dinp = (float)(rs * (d * weight[c] - mg - xhat * mgx));
      const float g = g_in ? g_in[e] + dinp : dinp;
      const float s = branch ? x[e] + branch[e] : x[e];
      sa += (double)g * s;
      sbb += (double)g * x0[e];
      if (ds) ds[e] = acc_ds ? ds[e] + av * g : av * g;
      if (ds_bf16) ds_bf16[e] = f32_to_bf16(av * g);
      if (dx0) dx0[e] = acc_dx0 ? dx0[e] + bv * g : bv * g;
    }
  }
  for (int c = 0; c < C; c++) {
    dweight[c] = MN_ACC_BIT(accumulate, 3) ? dweight[c] + (float)sw[c] : (float)sw[c];
    dbias[c] = MN_ACC_BIT(accumulate, 4) ? dbias[c] + (float)sb[c] : (float)sb[c];
  }
  *da = MN_ACC_BIT(accumulate, 5) ? *da + (float)sa : (float)sa;
  *db = MN_ACC_BIT(accumulate, 6) ? *db + (float)sbb : (float)sbb;
  return 0;
}

// bf16 dout: the definition above on its values
MN_API int mn_layernorm_backward_bf16(float* dinp, float* dweight, float* dbias, mn_bf16* dout,
                                      float* inp, float* weight, float* mean, float* rstd, int N,
                                      int C, int accumulate, void* stream) {
  MN_REQUIRE(dout, "%s: NULL pointer argument", "layernorm_backward_bf16");
  if (int rc = check_shape("layernorm_backward_bf16", N, C)) return rc;
  std::vector<float> d((size_t)N * C);
  for (size_t e = 0; e < d.size(); e++) d[e] = bf16_to_f32(dout[e]);
  return mn_layernorm_backward(dinp, dweight, dbias, d.data(), inp, weight, mean, rstd, N, C,
                               accumulate, stream);
}

MN_API int mn_rmsnorm_forward(float* out, float* rstd, float* inp, int N, int C, float eps, void*) {
  const char* fn = "rmsnorm_forward";
  MN_REQUIRE(out && rstd && inp, "%s: NULL pointer argument", fn);
  if (int rc = check_shape(fn, N, C)) return rc;
  MN_REQUIRE(eps >= 0.0f, "%s: eps = %g must be >= 0", fn, (double)eps);
#pragma omp parallel for if ((int64_t)N * C > 100000)
  for (int i = 0; i < N; i++) {
    const float* x = inp + (int64_t)i * C;
    double ms = 0;
    for (int c = 0; c < C; c++) ms += (double)x[c] * x[c];
    double rs = 1.0 / std::sqrt(ms / C + (double)eps);
    float* y = out + (int64_t)i * C;
    for (int c = 0; c < C; c++) y[c] = (float)(x[c] * rs);
    rstd[i] = (float)rs;
  }
  return 0;
}

// y_c = x_c * r(x), dr/dx_k = -r^3 x_k / C, so dx_k = r * dy_k - r^3 x_k / C * sum_c dy_c x_c
MN_API int mn_rmsnorm_backward(float* dinp, float* dout, float* inp, float* rstd, int N, int C,
                               int accumulate, void*) {
  const char* fn = "rmsnorm_backward";
  MN_REQUIRE(dinp && dout && inp && rstd, "%s: NULL pointer argument", fn);
  if (int rc = check_shape(fn, N, C)) return rc;
  cpu_clear_unless(accumulate, 0, dinp, (int64_t)N * C);
#pragma omp parallel for if ((int64_t)N * C > 100000)
  for (int i = 0; i < N; i++) {
    const float* x = inp + (int64_t)i * C;
    const float* dy = dout + (int64_t)i * C;
    double r = rstd[i];
    double dot = 0;
    for (int c = 0; c < C; c++) dot += (double)dy[c] * x[c];
    float* dx = dinp + (int64_t)i * C;
    for (int c = 0; c < C; c++) dx[c] += (float)(r * dy[c] - r * r * r * x[c] * dot / C);
  }
  return 0;
}
