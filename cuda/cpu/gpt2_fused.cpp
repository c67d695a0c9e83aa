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
MN_API int mn_qk_rmsnorm_rotary_forward(float* out_f32, mn_bf16* out_bf16, float* rstd, float* x,
                                        int B, int T, int H, int D, float eps, void* stream) {
  const char* fn = "qk_rmsnorm_rotary_forward";
  MN_REQUIRE(rstd && x, "%s: NULL pointer argument", fn);
  MN_REQUIRE(out_f32 || out_bf16, "%s: out_f32 and out_bf16 both NULL", fn);
  if (int rc = mn_check_qk_heads(fn, B, T, H, D)) return rc;
  const int64_t n = (int64_t)B * T * H * D;
  std::vector<float> normed(n), rotated(n);
  if (int rc = mn_rmsnorm_forward(normed.data(), rstd, x, B * T * H, D, eps, stream)) return rc;
  if (int rc = mn_rotary_forward(rotated.data(), normed.data(), B, T, H, D, stream)) return rc;
  for (int64_t i = 0; i < n; i++) {
    if (out_f32) out_f32[i] = rotated[i];
    if (out_bf16) out_bf16[i] = f32_to_bf16(rotated[i]);
  }
  return 0;
}

MN_API int mn_qk_rmsnorm_rotary_backward(float* dx, float* dout, float* x, float* rstd, int B,
                                         int T, int H, int D, int accumulate, void* stream) {
  const char* fn = "qk_rmsnorm_rotary_backward";
  MN_REQUIRE(dx && dout && x && rstd, "%s: NULL pointer argument", fn);
  if (int rc = mn_check_qk_heads(fn, B, T, H, D)) return rc;
  const int64_t n = (int64_t)B * T * H * D;
  std::vector<float> dnormed(n);
  if (int rc = mn_rotary_backward(dnormed.data(), dout, B, T, H, D, 0, stream)) return rc;
  return mn_rmsnorm_backward(dx, dnormed.data(), x, rstd, B * T * H, D, accumulate & 1, stream);
}

MN_API int mn_value_mix_forward(float* out_f32, mn_bf16* out_bf16, float* v, float* v1,
                                float* lamb, int64_t n, void*) {
  const char* fn = "value_mix_forward";
  MN_REQUIRE(v && v1 && lamb, "%s: NULL pointer argument", fn);
  MN_REQUIRE(out_f32 || out_bf16, "%s: out_f32 and out_bf16 both NULL", fn);
  MN_REQUIRE(n > 0, "%s: n = %lld must be > 0", fn, (long long)n);
  const float l = lamb[0];
  for (int64_t i = 0; i < n; i++) {
    const float o = v[i] + l * (v1[i] - v[i]);
    if (out_f32) out_f32[i] = o;
    if (out_bf16) out_bf16[i] = f32_to_bf16(o);
  }
  return 0;
}

MN_API int mn_value_mix_backward(float* dv, float* dv1, float* dlamb, float* dout, float* v,
                                 float* v1, float* lamb, int64_t n, int accumulate, void*) {
  const char* fn = "value_mix_backward";
  MN_REQUIRE(dlamb && dout && v && v1 && lamb, "%s: NULL pointer argument", fn);
  MN_REQUIRE(n > 0, "%s: n = %lld must be > 0", fn, (long long)n);
  const double l = lamb[0];
  const bool same = dv && dv == dv1;
  double s = 0;
  for (int64_t i = 0; i < n; i++) {
    const double g = dout[i];
    if (same) {
      dv[i] = (float)(((accumulate & 1) ? (double)dv[i] : 0.0) + g);
    } else {
      if (dv) dv[i] = (float)(((accumulate & 1) ? (double)dv[i] : 0.0) + (1 - l) * g);
      if (dv1) dv1[i] = (float)(((accumulate & 2) ? (double)dv1[i] : 0.0) + l * g);
    }
    s += g * ((double)v1[i] - v[i]);
  }
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
  for (int64_t i = 0; i < n; i++) out[i] = f32_to_bf16(relu2_ref(bf16_to_f32(inp[i])));
  return 0;
}

MN_API int mn_relu2_backward_bf16io(mn_bf16* dinp, mn_bf16* dout, mn_bf16* inp, int64_t n,
                                    int accumulate, void*) {
  if (int rc = mn_check_relu2_backward_bf16io(dinp, dout, inp, n, accumulate)) return rc;
  for (int64_t i = 0; i < n; i++) {
    const float x = bf16_to_f32(inp[i]);
    dinp[i] = f32_to_bf16(2.0f * (x > 0.0f ? x : 0.0f) * bf16_to_f32(dout[i]));
  }
  return 0;
}

// bf16 cross-entropy: the fp32 reference on the widened logits, its gradient rounded once.
MN_API int mn_softcap_crossentropy_bf16(float* losses, mn_bf16* dlogits, mn_bf16* logits,
                                        int32_t* targets, int N, int V, float softcap, float dloss,
                                        void* stream) {
  if (int rc = mn_check_softcap_crossentropy_bf16(losses, logits, targets, N, V, softcap, dloss))
    return rc;
  const int64_t n = (int64_t)N * V;
  // kept between calls: a fresh N x V buffer each call (100 MB for the CPU demo's 512 rows) cost
  // more in page faults than the cross-entropy itself
  // (the OpenMP workers below use the calling thread's buffer through x, not their own)
  static thread_local std::vector<float> buffer;
  if ((int64_t)buffer.size() < n) buffer.resize(n);
  float* x = buffer.data();
#pragma omp parallel for if (n > 100000)
  for (int64_t i = 0; i < n; i++) x[i] = bf16_to_f32(logits[i]);
  if (int rc = mn_softcap_crossentropy(losses, dlogits ? x : nullptr, x, targets, N, V, softcap,
                                       dloss, stream))
    return rc;
  if (dlogits) {
#pragma omp parallel for if (n > 100000)
    for (int64_t i = 0; i < n; i++) dlogits[i] = f32_to_bf16(x[i]);
  }
  return 0;
}
