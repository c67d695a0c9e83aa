// Per-element math of the RWKV-7 time mixing, the same on host and device, shared by the generic
// ops (modelops.cu: unary_f and friends) and the fused chains (rwkv7_fused.cu), so that the fast
// path and the composition a hacker edits round each value the same way.
#pragma once
#include <cmath>
#include <cstdint>

// torch.nn.functional.softplus with beta = 1, threshold = 20: z itself above the threshold.
__host__ __device__ inline float softplus_f(float z) { return z > 20.0f ? z : log1pf(expf(z)); }
// d softplus(z) / dz, as torch's softplus_backward: 1 above the threshold, else e^z / (e^z + 1).
__host__ __device__ inline float softplus_df(float z) {
  if (z > 20.0f) return 1.0f;
  float e = expf(z);
  return e / (e + 1.0f);
}
__host__ __device__ inline float sigmoid_f(float x) { return 1.0f / (1.0f + expf(-x)); }
// through the output, as torch's sigmoid_backward
__host__ __device__ inline float sigmoid_dy(float y) { return y * (1.0f - y); }
// The decay the model feeds WKV-7: -softplus(-x) - 0.5, so that exp(-exp(w)) lies in (0.545, 1).
__host__ __device__ inline float rwkv7_decay_f(float x) { return -softplus_f(-x) - 0.5f; }
__host__ __device__ inline float rwkv7_decay_df(float x) { return softplus_df(-x); }
// exp(min(x, 0)); torch.clamp(max=0) passes the gradient where x <= 0 (its mask is `self <= max`),
// so at x == 0 the gradient is exp(0); it is 0 only where x > 0. y is the forward's output.
__host__ __device__ inline float exp_min0_f(float x) { return expf(fminf(x, 0.0f)); }
__host__ __device__ inline float exp_min0_df(float x, float y) { return x <= 0.0f ? y : 0.0f; }

// The token-shift mixes: x + xx * coef with xx = shift(x) - x and coef = time_maa_x (the first
// mix) or m + time_maa_i (the four after the LoRA): add(x, mul(xx, coef)) of the composition.
__host__ __device__ inline float mix_f(float x, float xx, float coef) { return x + xx * coef; }

// Normalised value of a norm: (x - mean) * rstd. GroupNorm's forward, dx and parameter-gradient
// kernels (modelops.cu and the fused GroupNorm + bonus + gate) all use it, so dweight sees the
// same xhat the forward produced.
__host__ __device__ inline float norm_xhat(float x, float mean, float rstd) {
  return (x - mean) * rstd;
}

// torch.lerp(x, y, g) as the composition computes it: x + (y - x) * g
__host__ __device__ inline float lerp_f(float x, float y, float g) { return x + (y - x) * g; }

// The chain between the projections and the WKV call, one element (channel c of a row), given the
// head's 1 / max(||k + kkk||, eps) (F.normalize of kk over the head):
//   w = decay(dec + time_decay); kk = (k + kkk) * inv; a = sigmoid(aaa + time_aaaaa);
//   ma = sigmoid(mam + time_misc_a); mk = sigmoid(mkm + time_misc_k);
//   k' = lerp(k * a, k, ma) * exp(min(w * mk, 0)); WKV's a = -kk and b = kk * a.
// The inputs after the bias add (dec + time_decay, ...) are what both directions take.
struct WkvInputsFwd {
  float w, kk, a, ma, mk, k1, e, k;
};
__host__ __device__ inline WkvInputsFwd wkv_inputs_f(float dec, float k0, float s, float inv,
                                                     float aaa, float mam, float mkm) {
  WkvInputsFwd f;
  f.w = rwkv7_decay_f(dec);
  f.kk = s * inv;
  f.a = sigmoid_f(aaa);
  f.ma = sigmoid_f(mam);
  f.mk = sigmoid_f(mkm);
  f.k1 = lerp_f(k0 * f.a, k0, f.ma);
  f.e = exp_min0_f(f.w * f.mk);
  f.k = f.k1 * f.e;
  return f;
}
// Its backward for one element, all but kk's normalisation: from the gradients of WKV's w, k, a
// (= -kk), b (= kk * a), the gradients of dec, aaa, mam, mkm (before their bias adds) and of k
// along its two direct paths (k0); dkk is the gradient that reaches kk, for the head's l2norm
// backward.
struct WkvInputsBwd {
  float ddec, dk0, dkk, daaa, dmam, dmkm;
};
__host__ __device__ inline WkvInputsBwd wkv_inputs_df(const WkvInputsFwd& f, float dec, float k0,
                                                      float dw, float dk, float da, float db) {
  WkvInputsBwd g;
  const float dk1 = dk * f.e;
  const float dz = dk * f.k1 * exp_min0_df(f.w * f.mk, f.e);  // through exp(min(w mk, 0))
  const float ka = k0 * f.a;
  const float dka = dk1 * (1.0f - f.ma);  // lerp's d/dx
  g.dkk = -da + db * f.a;
  g.ddec = (dw + dz * f.mk) * rwkv7_decay_df(dec);
  g.dk0 = dka * f.a + dk1 * f.ma;
  g.daaa = (db * f.kk + dka * k0) * sigmoid_dy(f.a);
  g.dmam = dk1 * (k0 - ka) * sigmoid_dy(f.ma);
  g.dmkm = dz * f.w * sigmoid_dy(f.mk);
  return g;
}

// One row's term of the bonus gradient du[h, j]: ds * r[j] * k[j], ds = dout . v of that row.
__host__ __device__ inline float bonus_du_term(float ds, float r, float k) { return ds * r * k; }

// Column-sum term (reduce.cuh) of du over the C = H*D columns of [N, H*D]: du[h,j] += sum_i
// ds[i,h] r k, with ds [N, H] from modelops.cu's bonus backward (the fused GroupNorm + bonus + gate
// backward adds bonus_du_term in its own elementwise pass).
struct BonusDuTerm {
  const float* ds;
  const float* r;
  const float* k;
  int H, D;
  int h;
  struct Load {
    float ds, r, k;
  };
  __device__ void begin(int c) { h = c / D; }
  __device__ Load load(int64_t i, int c) const {
    const int64_t e = i * ((int64_t)H * D) + c;
    return Load{ds[i * H + h], r[e], k[e]};
  }
  __device__ void use(int64_t, int, const Load& l, float* acc) const {
    acc[0] += bonus_du_term(l.ds, l.r, l.k);
  }
};
