// Elementwise fp32 ops: relu(x)^2, a*x + b*y with device-side scalars, add/axpy/scale/fill, and the
// two full reductions (axpby's scalar gradients, sum of squares).
//
// Full reductions run as ONE block of up to 1024 threads: thread t sums elements t, t + T, ...
// in order, then mn_block_sum combines the threads in a fixed order. Deterministic, and needs no
// scratch memory (the ABI has no workspace argument), at the price of using a single SM.
// In-place use (out == x or out == y) is fine everywhere: each element is read and written by the
// same thread.
#include "common.cuh"

__host__ __device__ inline float relu2_fwd(float x) { return x > 0.0f ? x * x : 0.0f; }
__host__ __device__ inline float relu2_grad(float x, float dout) {
  return x > 0.0f ? 2.0f * x * dout : 0.0f;
}

#define EW_GRID_STRIDE(i, n)                                               \
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (n); \
       i += (int64_t)gridDim.x * blockDim.x)

constexpr int EW_THREADS = 256;

__global__ void relu2_forward_kernel(float* out, const float* inp, int64_t n) {
  EW_GRID_STRIDE(i, n) out[i] = relu2_fwd(inp[i]);
}

__global__ void relu2_backward_kernel(float* dinp, const float* dout, const float* inp, int64_t n) {
  EW_GRID_STRIDE(i, n) dinp[i] += relu2_grad(inp[i], dout[i]);
}

__global__ void axpby_forward_kernel(float* out, const float* x, const float* y, const float* a,
                                     const float* b, int64_t n) {
  const float av = a[0], bv = b[0];
  EW_GRID_STRIDE(i, n) out[i] = av * x[i] + bv * y[i];
}

__global__ void axpby_backward_dxdy_kernel(float* dx, float* dy, const float* dout, const float* a,
                                           const float* b, int64_t n) {
  const float av = dx ? a[0] : 0.0f, bv = dy ? b[0] : 0.0f;
  EW_GRID_STRIDE(i, n) {
    float g = dout[i];
    if (dx) dx[i] += av * g;
    if (dy) dy[i] += bv * g;
  }
}

// da[0] += sum(dout * x), db[0] += sum(dout * y); one block (see the file comment)
__global__ void axpby_backward_dadb_kernel(float* da, float* db, const float* dout, const float* x,
                                           const float* y, int64_t n) {
  __shared__ float scratch[32];
  float sa = 0.0f, sb = 0.0f;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    float g = dout[i];
    if (da) sa += g * x[i];
    if (db) sb += g * y[i];
  }
  sa = mn_block_sum(sa, scratch);
  sb = mn_block_sum(sb, scratch);
  if (threadIdx.x == 0) {
    if (da) da[0] += sa;
    if (db) db[0] += sb;
  }
}

__global__ void ew_add_kernel(float* out, const float* x, const float* y, int64_t n) {
  EW_GRID_STRIDE(i, n) out[i] = x[i] + y[i];
}

__global__ void ew_axpy_kernel(float* y, float alpha, const float* x, int64_t n) {
  EW_GRID_STRIDE(i, n) y[i] += alpha * x[i];
}

__global__ void ew_scale_kernel(float* out, const float* x, float alpha, int64_t n) {
  EW_GRID_STRIDE(i, n) out[i] = alpha * x[i];
}

__global__ void ew_fill_kernel(float* out, float value, int64_t n) {
  EW_GRID_STRIDE(i, n) out[i] = value;
}

__global__ void sum_squares_kernel(float* out, const float* x, int64_t n) {
  __shared__ float scratch[32];
  float s = 0.0f;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += x[i] * x[i];
  s = mn_block_sum(s, scratch);
  if (threadIdx.x == 0) out[0] = s;
}

// Threads of the single reduction block: 1024 for large n (the most loads in flight one block can
// have); for small n one warp per 32 elements, at most 256 (cheaper to launch, above all on emu).
static inline int reduce_threads(int64_t n) {
  if (n > 16384) return 1024;
  return n >= 256 ? 256 : (int)(32 * ((n + 31) / 32));
}

#define EW_REQUIRE_N(fn, n) MN_REQUIRE((n) > 0, "%s: n = %lld must be > 0", fn, (long long)(n))
#define EW_REQUIRE_PTRS(fn, cond) MN_REQUIRE(cond, "%s: NULL pointer argument", fn)
#define EW_LAUNCH(fn, kernel, n, ...) \
  mn_launch(fn, kernel, mn_blocks_for(n, EW_THREADS), EW_THREADS, 0, stream, __VA_ARGS__)

MN_API int mn_relu2_forward(float* out, float* inp, int64_t n, void* stream) {
  const char* fn = "relu2_forward";
  EW_REQUIRE_PTRS(fn, out && inp);
  EW_REQUIRE_N(fn, n);
  return EW_LAUNCH(fn, relu2_forward_kernel, n, out, (const float*)inp, n);
}

MN_API int mn_relu2_backward(float* dinp, float* dout, float* inp, int64_t n, void* stream) {
  const char* fn = "relu2_backward";
  EW_REQUIRE_PTRS(fn, dinp && dout && inp);
  EW_REQUIRE_N(fn, n);
  return EW_LAUNCH(fn, relu2_backward_kernel, n, dinp, (const float*)dout, (const float*)inp, n);
}

MN_API int mn_axpby_forward(float* out, float* x, float* y, float* a, float* b, int64_t n,
                            void* stream) {
  const char* fn = "axpby_forward";
  EW_REQUIRE_PTRS(fn, out && x && y && a && b);
  EW_REQUIRE_N(fn, n);
  return EW_LAUNCH(fn, axpby_forward_kernel, n, out, (const float*)x, (const float*)y,
                   (const float*)a, (const float*)b, n);
}

MN_API int mn_axpby_backward(float* dx, float* dy, float* da, float* db, float* dout, float* x,
                             float* y, float* a, float* b, int64_t n, void* stream) {
  const char* fn = "axpby_backward";
  EW_REQUIRE_PTRS(fn, dout);
  MN_REQUIRE(!dx || a, "%s: dx given but a is NULL", fn);
  MN_REQUIRE(!dy || b, "%s: dy given but b is NULL", fn);
  MN_REQUIRE(!da || x, "%s: da given but x is NULL", fn);
  MN_REQUIRE(!db || y, "%s: db given but y is NULL", fn);
  EW_REQUIRE_N(fn, n);
  if (dx || dy) {
    int rc = EW_LAUNCH("axpby_backward_dxdy", axpby_backward_dxdy_kernel, n, dx, dy,
                       (const float*)dout, (const float*)a, (const float*)b, n);
    if (rc) return rc;
  }
  if (da || db) {
    return mn_launch("axpby_backward_dadb", axpby_backward_dadb_kernel, 1, reduce_threads(n), 0,
                     stream, da, db, (const float*)dout, (const float*)x, (const float*)y, n);
  }
  return 0;
}

MN_API int mn_add(float* out, float* x, float* y, int64_t n, void* stream) {
  const char* fn = "add";
  EW_REQUIRE_PTRS(fn, out && x && y);
  EW_REQUIRE_N(fn, n);
  return EW_LAUNCH(fn, ew_add_kernel, n, out, (const float*)x, (const float*)y, n);
}

MN_API int mn_axpy(float* y, float alpha, float* x, int64_t n, void* stream) {
  const char* fn = "axpy";
  EW_REQUIRE_PTRS(fn, y && x);
  EW_REQUIRE_N(fn, n);
  return EW_LAUNCH(fn, ew_axpy_kernel, n, y, alpha, (const float*)x, n);
}

MN_API int mn_scale(float* out, float* x, float alpha, int64_t n, void* stream) {
  const char* fn = "scale";
  EW_REQUIRE_PTRS(fn, out && x);
  EW_REQUIRE_N(fn, n);
  return EW_LAUNCH(fn, ew_scale_kernel, n, out, (const float*)x, alpha, n);
}

MN_API int mn_fill(float* out, float value, int64_t n, void* stream) {
  const char* fn = "fill";
  EW_REQUIRE_PTRS(fn, out);
  EW_REQUIRE_N(fn, n);
  return EW_LAUNCH(fn, ew_fill_kernel, n, out, value, n);
}

MN_API int mn_sum_squares(float* out, float* x, int64_t n, void* stream) {
  const char* fn = "sum_squares";
  EW_REQUIRE_PTRS(fn, out && x);
  EW_REQUIRE_N(fn, n);
  return mn_launch(fn, sum_squares_kernel, 1, reduce_threads(n), 0, stream, out, (const float*)x,
                   n);
}
