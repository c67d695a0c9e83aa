// GPT-2 fused chains, reference: the definitions (axpby, then F.rms_norm), row statistics and the
// scalar gradients' sums in double.
#include "cpu_common.h"

static int check_shape(const char* fn, int N, int C) {
  MN_REQUIRE(N > 0 && C > 0, "%s: bad shape N = %d, C = %d", fn, N, C);
  return 0;
}

MN_API int mn_mix_rmsnorm_forward(float* x_out, float* out_f32, mn_bf16* out_bf16, float* rstd,
                                  float* x, float* y, float* ab, int N, int C, float eps, void*) {
  const char* fn = "mix_rmsnorm_forward";
  MN_REQUIRE(x_out && rstd && x && y && ab, "%s: NULL pointer argument", fn);
  MN_REQUIRE(out_f32 || out_bf16, "%s: out_f32 and out_bf16 both NULL", fn);
  if (int rc = check_shape(fn, N, C)) return rc;
  MN_REQUIRE(eps >= 0.0f, "%s: eps = %g must be >= 0", fn, (double)eps);
  const float a = ab[0], b = ab[1];
#pragma omp parallel for if ((int64_t)N * C > 100000)
  for (int i = 0; i < N; i++) {
    const int64_t o = (int64_t)i * C;
    double ms = 0;
    for (int c = 0; c < C; c++) {
      x_out[o + c] = a * x[o + c] + b * y[o + c];  // fp32, as the residual stream is stored
      ms += (double)x_out[o + c] * x_out[o + c];
    }
    const double rs = 1.0 / std::sqrt(ms / C + (double)eps);
    for (int c = 0; c < C; c++) {
      const float v = (float)(x_out[o + c] * rs);
      if (out_f32) out_f32[o + c] = v;
      if (out_bf16) out_bf16[o + c] = f32_to_bf16(v);
    }
    rstd[i] = (float)rs;
  }
  return 0;
}

// g = dx_out + r dnorm - r^3 x_out / C * sum_c dnorm_c x_out_c (the rmsnorm backward), then the
// axpby backward of g.
MN_API int mn_mix_rmsnorm_backward(float* dx, float* dy, float* dab, float* dx_out, float* dnorm,
                                   float* x_out, float* rstd, float* x, float* y, float* ab, int N,
                                   int C, int accumulate, void*) {
  const char* fn = "mix_rmsnorm_backward";
  MN_REQUIRE(dnorm && x_out && rstd && ab, "%s: NULL pointer argument", fn);
  MN_REQUIRE(!dab || (x && y), "%s: dab given but x or y is NULL", fn);
  if (int rc = check_shape(fn, N, C)) return rc;
  const double a = ab[0], b = ab[1];
  const bool acc_x = accumulate & 1, acc_y = accumulate & 2, acc_ab = accumulate & 4;
  const bool same = dx && dx == dy;
  double sa = 0, sb = 0;
  for (int i = 0; i < N; i++) {
    const int64_t o = (int64_t)i * C;
    const double r = rstd[i];
    double dot = 0;
    for (int c = 0; c < C; c++) dot += (double)dnorm[o + c] * x_out[o + c];
    for (int c = 0; c < C; c++) {
      const int64_t e = o + c;
      const double g = (dx_out ? (double)dx_out[e] : 0.0) + r * dnorm[e] -
                       r * r * r * x_out[e] * dot / C;
      if (same) {
        dx[e] = (float)((acc_x ? (double)dx[e] : 0.0) + (a + b) * g);
      } else {
        if (dx) dx[e] = (float)((acc_x ? (double)dx[e] : 0.0) + a * g);
        if (dy) dy[e] = (float)((acc_y ? (double)dy[e] : 0.0) + b * g);
      }
      if (dab) {
        sa += g * x[e];
        sb += g * y[e];
      }
    }
  }
  if (dab) {
    dab[0] = (float)((acc_ab ? (double)dab[0] : 0.0) + sa);
    dab[1] = (float)((acc_ab ? (double)dab[1] : 0.0) + sb);
  }
  return 0;
}
