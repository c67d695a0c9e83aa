// GPT-2 fused chains, reference: the definitions (axpby, then F.rms_norm), row statistics and the
// scalar gradients' sums in double.
#include <vector>

#include "cpu_common.h"
#include "../entry_checks.h"

// an fp32 or bf16 input (r, y), widened exactly
static inline float mix_in(const void* p, int is_bf16, int64_t i) {
  return is_bf16 ? bf16_to_f32(((const mn_bf16*)p)[i]) : ((const float*)p)[i];
}
// x + r rounded to fp32 as mn_add stores it, or x alone
static inline float mix_base(const float* x, const void* r, int r_bf16, int64_t i) {
  return r ? x[i] + mix_in(r, r_bf16, i) : x[i];
}

MN_API int mn_mix_rmsnorm_forward(float* x_out, float* out_f32, mn_bf16* out_bf16, float* rstd,
                                  float* x, void* r, void* y, float* ab, int r_bf16, int y_bf16,
                                  int N, int C, float eps, void*) {
  const char* fn = "mix_rmsnorm_forward";
  if (int rc = mn_check_mix_rmsnorm_forward(fn, x_out, out_f32, out_bf16, rstd, x, r, y, ab, N, C,
                                            eps))
    return rc;
  const float a = ab[0], b = ab[1];
#pragma omp parallel for if ((int64_t)N * C > 100000)
  for (int i = 0; i < N; i++) {
    const int64_t o = (int64_t)i * C;
    double ms = 0;
    for (int c = 0; c < C; c++) {
      const float s = mix_base(x, r, r_bf16, o + c);
      x_out[o + c] = a * s + b * mix_in(y, y_bf16, o + c);  // fp32, as the residual is stored
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

// a gradient output: fp32 (+= or =), or bf16 (overwritten; the entry check keeps its bit clear)
static inline void mix_out(void* p, int is_bf16, bool acc, int64_t i, double v) {
  if (is_bf16) {
    ((mn_bf16*)p)[i] = f32_to_bf16((float)v);
  } else {
    float* q = (float*)p;
    q[i] = (float)((acc ? (double)q[i] : 0.0) + v);
  }
}

// g = dx_out + r dnorm - r^3 x_out / C * sum_c dnorm_c x_out_c (the rmsnorm backward), then the
// axpby backward of g, then the add's (dx and dr both get a*g).
MN_API int mn_mix_rmsnorm_backward(float* dx, void* dr, void* dy, float* dab, float* dx_out,
                                   void* dnorm, float* x_out, float* rstd, float* x, void* r,
                                   void* y, float* ab, int r_bf16, int y_bf16, int dr_bf16,
                                   int dy_bf16, int dnorm_bf16, int N, int C, int accumulate,
                                   void*) {
  const char* fn = "mix_rmsnorm_backward";
  if (int rc = mn_check_mix_rmsnorm_backward(fn, dx, dr, dy, dab, dnorm, x_out, rstd, x, r, y, ab,
                                             y_bf16, dr_bf16, dy_bf16, N, C, accumulate))
    return rc;
  const double a = ab[0], b = ab[1];
  const bool acc_x = accumulate & 1, acc_r = accumulate & 2, acc_y = accumulate & 4;
  const bool acc_ab = accumulate & 8;
  const bool same = dx && (void*)dx == dy;
  double sa = 0, sb = 0;
  for (int i = 0; i < N; i++) {
    const int64_t o = (int64_t)i * C;
    const double rs = rstd[i];
    double dot = 0;
    for (int c = 0; c < C; c++) dot += (double)mix_in(dnorm, dnorm_bf16, o + c) * x_out[o + c];
    for (int c = 0; c < C; c++) {
      const int64_t e = o + c;
      const double g = (dx_out ? (double)dx_out[e] : 0.0) + rs * mix_in(dnorm, dnorm_bf16, e) -
                       rs * rs * rs * x_out[e] * dot / C;
      if (same) {
        dx[e] = (float)((acc_x ? (double)dx[e] : 0.0) + (a + b) * g);
      } else {
        if (dx) dx[e] = (float)((acc_x ? (double)dx[e] : 0.0) + a * g);
        if (dy) mix_out(dy, dy_bf16, acc_y, e, b * g);
      }
      if (dr) mix_out(dr, dr_bf16, acc_r, e, a * g);
      if (dab) {
        sa += g * mix_base(x, r, r_bf16, e);
        sb += g * mix_in(y, y_bf16, e);
      }
    }
  }
  if (dab) {
    dab[0] = (float)((acc_ab ? (double)dab[0] : 0.0) + sa);
    dab[1] = (float)((acc_ab ? (double)dab[1] : 0.0) + sb);
  }
  return 0;
}

// QK-RMSNorm + rotary: the composition of this backend's own rmsnorm and rotary references.
// A [rows, C] input whose rows are ld elements apart, fp32 or bf16, as contiguous fp32 values (the
// fp32 definitions below then apply unchanged); scatter writes such a tensor back (bf16: rounded
// once).
static std::vector<float> gather(const void* p, int bf16, int64_t rows, int64_t C, int64_t ld) {
  std::vector<float> out(rows * C);
  for (int64_t r = 0; r < rows; r++)
    for (int64_t c = 0; c < C; c++)
      out[r * C + c] = bf16 ? bf16_to_f32(((const mn_bf16*)p)[r * ld + c])
                            : ((const float*)p)[r * ld + c];
  return out;
}
static void scatter(void* p, int bf16, const std::vector<float>& v, int64_t C, int64_t ld) {
  const int64_t rows = (int64_t)v.size() / C;
  for (int64_t r = 0; r < rows; r++)
    for (int64_t c = 0; c < C; c++) {
      if (bf16) ((mn_bf16*)p)[r * ld + c] = f32_to_bf16(v[r * C + c]);
      else ((float*)p)[r * ld + c] = v[r * C + c];
    }
}

MN_API int mn_qk_rmsnorm_rotary_forward(float* out_f32, mn_bf16* out_bf16, float* rstd, void* x,
                                        int x_bf16, int ld_x, int B, int T, int H, int D,
                                        float eps, void* stream) {
  const char* fn = "qk_rmsnorm_rotary_forward";
  MN_REQUIRE(rstd && x, "%s: NULL pointer argument", fn);
  MN_REQUIRE(out_f32 || out_bf16, "%s: out_f32 and out_bf16 both NULL", fn);
  if (int rc = mn_check_qk_heads(fn, B, T, H, D)) return rc;
  if (int rc = mn_check_row_stride(fn, "ld_x", ld_x, H * D)) return rc;
  const int64_t n = (int64_t)B * T * H * D;
  std::vector<float> xf = gather(x, x_bf16, (int64_t)B * T, H * D, ld_x), normed(n), rotated(n);
  if (int rc = mn_rmsnorm_forward(normed.data(), rstd, xf.data(), B * T * H, D, eps, stream))
    return rc;
  if (int rc = mn_rotary_forward(rotated.data(), normed.data(), B, T, H, D, stream)) return rc;
  for (int64_t i = 0; i < n; i++) {
    if (out_f32) out_f32[i] = rotated[i];
    if (out_bf16) out_bf16[i] = f32_to_bf16(rotated[i]);
  }
  return 0;
}

MN_API int mn_qk_rmsnorm_rotary_backward(void* dx, void* dout, void* x, float* rstd, int x_bf16,
                                         int dout_bf16, int dx_bf16, int ld_x, int B, int T, int H,
                                         int D, int accumulate, void* stream) {
  const char* fn = "qk_rmsnorm_rotary_backward";
  MN_REQUIRE(dx && dout && x && rstd, "%s: NULL pointer argument", fn);
  if (int rc = mn_check_qk_heads(fn, B, T, H, D)) return rc;
  if (int rc = mn_check_bf16_grad_overwritten(fn, "dx", dx_bf16, accumulate, 0)) return rc;
  if (int rc = mn_check_row_stride(fn, "ld_x", ld_x, H * D)) return rc;
  const int64_t n = (int64_t)B * T * H * D, tokens = (int64_t)B * T, C = H * D;
  std::vector<float> dnormed(n), xf = gather(x, x_bf16, tokens, C, ld_x);
  std::vector<float> doutf = gather(dout, dout_bf16, tokens, C, C);
  // the gradient to add to (fp32 only): gathered, added into, written back
  std::vector<float> dxf = (accumulate & 1) ? gather(dx, 0, tokens, C, ld_x) : std::vector<float>(n);
  if (int rc = mn_rotary_backward(dnormed.data(), doutf.data(), B, T, H, D, 0, stream)) return rc;
  if (int rc = mn_rmsnorm_backward(dxf.data(), dnormed.data(), xf.data(), rstd, B * T * H, D,
                                   accumulate & 1, stream))
    return rc;
  scatter(dx, dx_bf16, dxf, C, ld_x);
  return 0;
}

MN_API int mn_value_mix_forward(float* out_f32, mn_bf16* out_bf16, void* v, void* v1, float* lamb,
                                int v_bf16, int C, int ld_v, int64_t n, void*) {
  const char* fn = "value_mix_forward";
  MN_REQUIRE(v && v1 && lamb, "%s: NULL pointer argument", fn);
  MN_REQUIRE(out_f32 || out_bf16, "%s: out_f32 and out_bf16 both NULL", fn);
  if (int rc = mn_check_value_mix_rows(fn, n, C, ld_v, C)) return rc;
  const std::vector<float> vf = gather(v, v_bf16, n / C, C, ld_v);
  const std::vector<float> v1f = gather(v1, v_bf16, n / C, C, ld_v);
  const float l = lamb[0];
  for (int64_t i = 0; i < n; i++) {
    const float o = vf[i] + l * (v1f[i] - vf[i]);
    if (out_f32) out_f32[i] = o;
    if (out_bf16) out_bf16[i] = f32_to_bf16(o);
  }
  return 0;
}

MN_API int mn_value_mix_backward(void* dv, float* dv1, float* dlamb, void* dout, void* v, void* v1,
                                 float* lamb, int v_bf16, int dout_bf16, int dv_bf16, int C,
                                 int ld_v, int ld_dv, int64_t n, int accumulate, void*) {
  const char* fn = "value_mix_backward";
  MN_REQUIRE(dlamb && dout && v && v1 && lamb, "%s: NULL pointer argument", fn);
  if (int rc = mn_check_value_mix_rows(fn, n, C, ld_v, ld_dv)) return rc;
  if (int rc = mn_check_bf16_grad_overwritten(fn, "dv", dv_bf16, accumulate, 0)) return rc;
  MN_REQUIRE(!dv_bf16 || !dv || dv != (void*)dv1,
             "%s: a bf16 dv cannot be dv1 (v1 is v: its gradient sums in fp32)", fn);
  MN_REQUIRE(!dv || dv != (void*)dv1 || ld_dv == C, "%s: dv == dv1 must be contiguous (ld_dv = C)",
             fn);
  const int64_t rows = n / C;
  const std::vector<float> vf = gather(v, v_bf16, rows, C, ld_v), v1f = gather(v1, v_bf16, rows, C, ld_v);
  const std::vector<float> doutf = gather(dout, dout_bf16, rows, C, C);
  const double l = lamb[0];
  const bool same = dv && dv == (void*)dv1;
  std::vector<float> dvf = dv && (accumulate & 1) ? gather(dv, 0, rows, C, ld_dv) : std::vector<float>(n);
  double s = 0;
  for (int64_t i = 0; i < n; i++) {
    const double g = doutf[i];
    if (same) {
      dvf[i] = (float)(((accumulate & 1) ? (double)dvf[i] : 0.0) + g);
    } else {
      if (dv) dvf[i] = (float)(((accumulate & 1) ? (double)dvf[i] : 0.0) + (1 - l) * g);
      if (dv1) dv1[i] = (float)(((accumulate & 2) ? (double)dv1[i] : 0.0) + l * g);
    }
    s += g * ((double)v1f[i] - vf[i]);
  }
  if (dv) scatter(dv, dv_bf16, dvf, C, ld_dv);
  dlamb[0] = (float)(((accumulate & 4) ? (double)dlamb[0] : 0.0) + s);
  return 0;
}

// relu(x)^2 and 2 relu(x) dout in fp32, rounded once to bf16
static inline float relu2_ref(float x) {
  const float r = x > 0.0f ? x : 0.0f;
  return r * r;
}

MN_API int mn_relu2_forward_bf16(mn_bf16* out, float* inp, int64_t n, void*) {
  if (int rc = mn_check_elementwise("relu2_forward_bf16", out && inp, n)) return rc;
  for (int64_t i = 0; i < n; i++) out[i] = f32_to_bf16(relu2_ref(inp[i]));
  return 0;
}

MN_API int mn_relu2_forward_bf16io(mn_bf16* out, mn_bf16* inp, int64_t n, void*) {
  if (int rc = mn_check_elementwise("relu2_forward_bf16io", out && inp, n)) return rc;
#pragma omp parallel for if (n > 100000)
  for (int64_t i = 0; i < n; i++) out[i] = f32_to_bf16(relu2_ref(bf16_to_f32(inp[i])));
  return 0;
}

MN_API int mn_relu2_backward_bf16io(mn_bf16* dinp, mn_bf16* dout, mn_bf16* inp, int64_t n,
                                    int accumulate, void*) {
  if (int rc = mn_check_relu2_backward_bf16io(dinp, dout, inp, n, accumulate)) return rc;
#pragma omp parallel for if (n > 100000)
  for (int64_t i = 0; i < n; i++) {
    const float x = bf16_to_f32(inp[i]);
    dinp[i] = f32_to_bf16(2.0f * (x > 0.0f ? x : 0.0f) * bf16_to_f32(dout[i]));
  }
  return 0;
}

// mn_softcap_crossentropy_bf16: crossentropy.cpp (its table of the capped bf16 values)
