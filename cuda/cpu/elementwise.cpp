// Elementwise ops, reference: one loop each. Full sums accumulate in double (the reference is the
// exact-as-practical answer the fp32 kernels are compared with).
#include <algorithm>

#include "cpu_common.h"

#define CHECK_N(fn, n) MN_REQUIRE((n) > 0, "%s: n = %lld must be > 0", fn, (long long)(n))
#define CHECK_PTRS(fn, cond) MN_REQUIRE(cond, "%s: NULL pointer argument", fn)
#define PAR_FOR _Pragma("omp parallel for if (n > 100000)")

MN_API int mn_relu2_forward(float* out, float* inp, int64_t n, void*) {
  CHECK_PTRS("relu2_forward", out && inp);
  CHECK_N("relu2_forward", n);
  PAR_FOR
  for (int64_t i = 0; i < n; i++) {
    float r = std::max(inp[i], 0.0f);
    out[i] = r * r;
  }
  return 0;
}

// d/dx relu(x)^2 = 2 relu(x) (0 at x = 0, as torch's relu backward)
MN_API int mn_relu2_backward(float* dinp, float* dout, float* inp, int64_t n, int accumulate,
                             void*) {
  CHECK_PTRS("relu2_backward", dinp && dout && inp);
  CHECK_N("relu2_backward", n);
  cpu_clear_unless(accumulate, 0, dinp, n);
  PAR_FOR
  for (int64_t i = 0; i < n; i++) dinp[i] += 2.0f * std::max(inp[i], 0.0f) * dout[i];
  return 0;
}

MN_API int mn_axpby_forward(float* out, float* x, float* y, float* a, float* b, int64_t n, void*) {
  CHECK_PTRS("axpby_forward", out && x && y && a && b);
  CHECK_N("axpby_forward", n);
  const float av = *a, bv = *b;
  PAR_FOR
  for (int64_t i = 0; i < n; i++) out[i] = av * x[i] + bv * y[i];
  return 0;
}

MN_API int mn_axpby_backward(float* dx, float* dy, float* da, float* db, float* dout, float* x,
                             float* y, float* a, float* b, int64_t n, int accumulate, void*) {
  const char* fn = "axpby_backward";
  CHECK_PTRS(fn, dout);
  MN_REQUIRE(!dx || a, "%s: dx given but a is NULL", fn);
  MN_REQUIRE(!dy || b, "%s: dy given but b is NULL", fn);
  MN_REQUIRE(!da || x, "%s: da given but x is NULL", fn);
  MN_REQUIRE(!db || y, "%s: db given but y is NULL", fn);
  CHECK_N(fn, n);
  cpu_clear_unless(accumulate, 0, dx, n);
  if (dy != dx) cpu_clear_unless(accumulate, 1, dy, n);
  cpu_clear_unless(accumulate, 2, da, 1);
  if (db != da) cpu_clear_unless(accumulate, 3, db, 1);
  if (dx) {
    const float av = *a;
    for (int64_t i = 0; i < n; i++) dx[i] += av * dout[i];
  }
  if (dy) {
    const float bv = *b;
    for (int64_t i = 0; i < n; i++) dy[i] += bv * dout[i];
  }
  if (da) {
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += (double)dout[i] * x[i];
    *da += (float)s;
  }
  if (db) {
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += (double)dout[i] * y[i];
    *db += (float)s;
  }
  return 0;
}

MN_API int mn_add(float* out, float* x, float* y, int64_t n, void*) {
  CHECK_PTRS("add", out && x && y);
  CHECK_N("add", n);
  PAR_FOR
  for (int64_t i = 0; i < n; i++) out[i] = x[i] + y[i];
  return 0;
}

MN_API int mn_axpy(float* y, float alpha, float* x, int64_t n, void*) {
  CHECK_PTRS("axpy", y && x);
  CHECK_N("axpy", n);
  PAR_FOR
  for (int64_t i = 0; i < n; i++) y[i] += alpha * x[i];
  return 0;
}

MN_API int mn_scale(float* out, float* x, float alpha, int64_t n, void*) {
  CHECK_PTRS("scale", out && x);
  CHECK_N("scale", n);
  PAR_FOR
  for (int64_t i = 0; i < n; i++) out[i] = alpha * x[i];
  return 0;
}

MN_API int mn_fill(float* out, float value, int64_t n, void*) {
  CHECK_PTRS("fill", out);
  CHECK_N("fill", n);
  PAR_FOR
  for (int64_t i = 0; i < n; i++) out[i] = value;
  return 0;
}

MN_API int mn_sum_squares(float* out, float* x, int64_t n, void*) {
  CHECK_PTRS("sum_squares", out && x);
  CHECK_N("sum_squares", n);
  double s = 0;
  for (int64_t i = 0; i < n; i++) s += (double)x[i] * x[i];
  out[0] = (float)s;
  return 0;
}
