// Double-precision exp and tanh on 8 lanes at a time (GCC vector extensions: AVX-512, AVX2 or SSE2
// code from the same source), for the reference's hot loops where libm's scalar calls were the
// whole cost. Written from the textbook method, only + - * / and bit operations (no FMA, so the
// result does not depend on the instruction set):
// - exp(x): x = k ln2 + r with k = round(x / ln2) and |r| <= ln2 / 2 (ln2 in two parts, the first
//   with 32 significant bits so k * ln2_hi is exact), exp(r) by its Taylor polynomial to r^13
//   (truncation < 1e-17 relative), times 2^k built in the exponent bits. x < -708 gives 0 (the
//   exact value is below 2^-1021), x > 709 gives +inf, NaN stays NaN.
// - tanh(y) from expm1(-2|y|) (the same polynomial without its constant term), and its derivative.
// Measured against glibc over 2e6 arguments in [-40, 40] (many tiny): relative error <= ~1e-15,
// far below the 6e-8 of the fp32 results computed from them.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

// Hot loops are compiled for AVX-512, AVX2 and baseline x86-64, picked at load time for the CPU
// that runs them (so a library built on one machine still runs on another).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MN_HOST_ISA_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MN_HOST_ISA_CLONES
#endif

// Every function here is always inlined and the files that include this header keep the vectors
// local, so no 64-byte vector crosses a call boundary whose ABI would depend on the instruction set
// (GCC warns about that possibility at every use).
#pragma GCC diagnostic ignored "-Wpsabi"

namespace mn_math {
constexpr int kLanes = 8;
typedef double vd __attribute__((vector_size(64)));
typedef int64_t vi __attribute__((vector_size(64)));
typedef float vf __attribute__((vector_size(32)));
#define MN_INLINE static inline __attribute__((always_inline))

MN_INLINE vd splat(double v) { return vd{} + v; }

// n (1..8) floats widened to doubles; lanes n.. are 0
MN_INLINE vd load_f32(const float* p, int n) {
  vf f = {};
  if (n == kLanes)
    std::memcpy(&f, p, sizeof f);  // one vector load (a variable size would be a libc call)
  else
    for (int i = 0; i < n; i++) f[i] = p[i];
  return __builtin_convertvector(f, vd);
}
// lanes [0, n) of v to p[0, n)
MN_INLINE void store(double* p, vd v, int n) {
  if (n == kLanes)
    std::memcpy(p, &v, sizeof v);
  else
    for (int i = 0; i < n; i++) p[i] = v[i];
}
// lanes [0, n) set
MN_INLINE vi lanes_below(int n) {
  const vi idx = {0, 1, 2, 3, 4, 5, 6, 7};
  return idx < n;
}

// exp(x) = scale * (1 + pm), scale = 2^k (x clamped to [-708, 709]); pm = exp(r) - 1 keeps its
// digits when x is tiny (then k = 0 and r = x), which exp(x) - 1 would not.
MN_INLINE void exp_parts(vd x, vd* scale, vd* pm) {
  const double log2e = 0x1.71547652b82fep0;
  const double ln2_hi = 0x1.62e42fee00000p-1, ln2_lo = 0x1.a39ef35793c76p-33;
  const double magic = 0x1.8p52;  // adding it rounds |v| < 2^51 to an integer (ties to even)
  vd xc = x < -708.0 ? splat(-708.0) : x;
  xc = xc > 709.0 ? splat(709.0) : xc;
  vd kd = xc * log2e + magic;
  const vi k = (vi)kd - (vi)splat(magic);
  kd -= magic;
  const vd r = (xc - kd * ln2_hi) - kd * ln2_lo;
  // exp(r) - 1 = r + r^2/2! + ... + r^13/13!, by Estrin's scheme (pairs, then pairs of pairs: a
  // short dependency chain, where Horner's 13 dependent steps left the core waiting)
  const vd r2 = r * r, r4 = r2 * r2, r8 = r4 * r4;
  const vd c23 = 0.5 + r * (1.0 / 6.0), c45 = 1.0 / 24.0 + r * (1.0 / 120.0),
           c67 = 1.0 / 720.0 + r * (1.0 / 5040.0), c89 = 1.0 / 40320.0 + r * (1.0 / 362880.0),
           c1011 = 1.0 / 3628800.0 + r * (1.0 / 39916800.0),
           c1213 = 1.0 / 479001600.0 + r * (1.0 / 6227020800.0);
  const vd c25 = c23 + r2 * c45, c69 = c67 + r2 * c89, c1013 = c1011 + r2 * c1213;
  const vd c29 = c25 + r4 * c69;
  *pm = r + r2 * (c29 + r8 * c1013);
  *scale = (vd)((k + 1023) << 52);
}

MN_INLINE vd exp(vd x) {
  vd scale, pm;
  exp_parts(x, &scale, &pm);
  vd res = scale * (1.0 + pm);
  res = x < -708.0 ? splat(0.0) : res;
  res = x > 709.0 ? splat(INFINITY) : res;
  return res;
}

// tanh(y), and its derivative 1 - tanh(y)^2 into *dtanh. With e = exp(-2|y|):
// tanh|y| = (1 - e) / (1 + e) = -expm1(-2|y|) / (2 + expm1(-2|y|)), no cancellation at small |y|;
// 1 - tanh^2 = 4e / (1 + e)^2, no cancellation where tanh saturates (1 - t * t would keep no
// correct digit there).
MN_INLINE vd tanh(vd y, vd* dtanh) {
  const vd a = y < 0.0 ? -y : y;
  const vd x = -2.0 * a;
  vd scale, pm;
  exp_parts(x, &scale, &pm);
  // exp(x) - 1 = scale * pm + (scale - 1): exact scale - 1, and pm itself when scale is 1
  vd em1 = scale * pm + (scale - 1.0), e = scale * (1.0 + pm);
  em1 = x < -708.0 ? splat(-1.0) : em1;
  e = x < -708.0 ? splat(0.0) : e;
  const vd q = 1.0 / (2.0 + em1);
  *dtanh = 4.0 * e * (q * q);
  const vd t = -em1 * q;
  return y < 0.0 ? -t : t;
}
#undef MN_INLINE
}  // namespace mn_math
