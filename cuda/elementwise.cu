// Elementwise fp32 ops: relu(x)^2, a*x + b*y with device-side scalars, add/axpy/scale/fill, and the
// two full reductions (axpby's scalar gradients, sum of squares).
//
// Full reductions are reduce.cuh's two-stage full sums: up to 1024 blocks of 256 threads each sum
// a contiguous chunk in a fixed order into a partial (library scratch), one block sums the partials
// in block order. Deterministic; inputs up to 4096 elements take one block and no scratch.
// In-place use (out == x or out == y) is fine everywhere: each element is read and written by the
// same thread.
#include "common.cuh"
#include "reduce.cuh"

#define EW_GRID_STRIDE(i, n)                                               \
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (n); \
       i += (int64_t)gridDim.x * blockDim.x)

constexpr int EW_THREADS = 256;

__global__ void relu2_forward_kernel(float* out, const float* inp, int64_t n) {
  EW_GRID_STRIDE(i, n) out[i] = mn_relu2_fwd(inp[i]);
}

__global__ void relu2_backward_kernel(float* dinp, const float* dout, const float* inp, int64_t n,
                                      int acc) {
  EW_GRID_STRIDE(i, n) MN_GRAD_STORE(dinp[i], mn_relu2_grad(inp[i], dout[i]), acc);
}

__global__ void axpby_forward_kernel(float* out, const float* x, const float* y, const float* a,
                                     const float* b, int64_t n) {
  const float av = a[0], bv = b[0];
  EW_GRID_STRIDE(i, n) out[i] = av * x[i] + bv * y[i];
}

// d(a x + b y)/dx contributes a * dout (and b * dout to dy): shared by the dx/dy pass and the
// fused pass with the scalar gradients, so both round the same way.
__host__ __device__ inline float axpby_dx(float a, float dout) { return a * dout; }

// dx == dy: the two stores run in order in one thread, so dy's bit decides whether dx's term stays.
__global__ void axpby_backward_dxdy_kernel(float* dx, float* dy, const float* dout, const float* a,
                                           const float* b, int64_t n, int acc) {
  const float av = dx ? a[0] : 0.0f, bv = dy ? b[0] : 0.0f;
  const int ax = MN_ACC_BIT(acc, 0), ay = MN_ACC_BIT(acc, 1);
  EW_GRID_STRIDE(i, n) {
    float g = dout[i];
    if (dx) MN_GRAD_STORE(dx[i], axpby_dx(av, g), ax);
    if (dy) MN_GRAD_STORE(dy[i], axpby_dx(bv, g), ay);
  }
}

// Full-sum terms (reduce.cuh): sum(a * b) over one or two pairs, and sum(x^2).
__host__ __device__ inline float dot_term(float a, float b) { return a * b; }

struct DotTerm {  // sum(dout * x): da (or db with y)
  const float* dout;
  const float* x;
  struct Load {
    float g, x;
  };
  __device__ void begin() {}
  __device__ Load load(int64_t i) const { return Load{dout[i], x[i]}; }
  __device__ void use(int64_t, const Load& l, float* acc) const { acc[0] += dot_term(l.g, l.x); }
};

struct Dot2Term {  // sum(dout * x) and sum(dout * y) with one read of dout: da and db
  const float* dout;
  const float* x;
  const float* y;
  struct Load {
    float g, x, y;
  };
  __device__ void begin() {}
  __device__ Load load(int64_t i) const { return Load{dout[i], x[i], y[i]}; }
  __device__ void use(int64_t, const Load& l, float* acc) const {
    acc[0] += dot_term(l.g, l.x);
    acc[1] += dot_term(l.g, l.y);
  }
};

// All four gradients in one pass over dout (the model's case: the blocks' lambdas): dx, dy
// elementwise, da, db summed. Each element is read and written by one thread (in-place safe).
// kSame: dx == dy (x and y are one tensor, as in the first block where x is x0): the element gets
// both contributions in the order of the unfused kernel, (dx + a g) + b g, with one store (dx's bit
// clear: a g + b g; dy's bit clear: b g alone, as the unfused kernel's second store).
// ax, ay: the dx, dy bits of `accumulate`; an overwritten gradient is not loaded.
template <bool kSame>
struct AxpbyAllTerm {
  float* dx;
  float* dy;
  const float* dout;
  const float* x;
  const float* y;
  const float* a;
  const float* b;
  float av, bv;
  int ax, ay;
  struct Load {
    float g, x, y, dx, dy;
  };
  __device__ void begin() {
    av = a[0];
    bv = b[0];
  }
  __device__ Load load(int64_t i) const {
    return Load{dout[i], x[i], y[i], ax ? dx[i] : 0.0f, (kSame || !ay) ? 0.0f : dy[i]};
  }
  __device__ void use(int64_t i, const Load& l, float* acc) const {
    const float tx = ax ? l.dx + axpby_dx(av, l.g) : axpby_dx(av, l.g);
    if (kSame) {
      dx[i] = ay ? tx + axpby_dx(bv, l.g) : axpby_dx(bv, l.g);
    } else {
      dx[i] = tx;
      dy[i] = ay ? l.dy + axpby_dx(bv, l.g) : axpby_dx(bv, l.g);
    }
    acc[0] += dot_term(l.g, l.x);
    acc[1] += dot_term(l.g, l.y);
  }
};

struct SquareTerm {
  const float* x;
  struct Load {
    float x;
  };
  __device__ void begin() {}
  __device__ Load load(int64_t i) const { return Load{x[i]}; }
  __device__ void use(int64_t, const Load& l, float* acc) const { acc[0] += dot_term(l.x, l.x); }
};

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

MN_API int mn_relu2_backward(float* dinp, float* dout, float* inp, int64_t n, int accumulate,
                             void* stream) {
  const char* fn = "relu2_backward";
  EW_REQUIRE_PTRS(fn, dinp && dout && inp);
  EW_REQUIRE_N(fn, n);
  return EW_LAUNCH(fn, relu2_backward_kernel, n, dinp, (const float*)dout, (const float*)inp, n,
                   MN_ACC_BIT(accumulate, 0));
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
                             float* y, float* a, float* b, int64_t n, int accumulate,
                             void* stream) {
  const char* fn = "axpby_backward";
  EW_REQUIRE_PTRS(fn, dout);
  MN_REQUIRE(!dx || a, "%s: dx given but a is NULL", fn);
  MN_REQUIRE(!dy || b, "%s: dy given but b is NULL", fn);
  MN_REQUIRE(!da || x, "%s: da given but x is NULL", fn);
  MN_REQUIRE(!db || y, "%s: db given but y is NULL", fn);
  EW_REQUIRE_N(fn, n);
  float* part = nullptr;
  if (da || db) {
    if (int rc = mn_reduce::scratch_floats(&part, mn_reduce::full_scratch_floats(n, 2), stream))
      return rc;
  }
  const char* name = "axpby_backward_dadb";
  const int ax = MN_ACC_BIT(accumulate, 0), ay = MN_ACC_BIT(accumulate, 1);
  const int aa = MN_ACC_BIT(accumulate, 2), ab = MN_ACC_BIT(accumulate, 3);
  const int ada = aa | ab << 1;  // full_sums's mask: bit k for its out_k
  if (dx && dy && da && db && dx == dy)
    return mn_reduce::full_sums<2>(
        "axpby_backward_fused", AxpbyAllTerm<true>{dx, dy, dout, x, y, a, b, 0.0f, 0.0f, ax, ay},
        da, db, n, ada, part, stream);
  if (dx && dy && da && db)
    return mn_reduce::full_sums<2>(
        "axpby_backward_fused", AxpbyAllTerm<false>{dx, dy, dout, x, y, a, b, 0.0f, 0.0f, ax, ay},
        da, db, n, ada, part, stream);
  if (dx || dy) {
    int rc = EW_LAUNCH("axpby_backward_dxdy", axpby_backward_dxdy_kernel, n, dx, dy,
                       (const float*)dout, (const float*)a, (const float*)b, n, ax | ay << 1);
    if (rc) return rc;
  }
  if (da && db)
    return mn_reduce::full_sums<2>(name, Dot2Term{dout, x, y}, da, db, n, ada, part, stream);
  if (da) return mn_reduce::full_sums<1>(name, DotTerm{dout, x}, da, nullptr, n, aa, part, stream);
  if (db) return mn_reduce::full_sums<1>(name, DotTerm{dout, y}, db, nullptr, n, ab, part, stream);
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
  float* part = nullptr;
  if (int rc = mn_reduce::scratch_floats(&part, mn_reduce::full_scratch_floats(n, 1), stream))
    return rc;
  return mn_reduce::full_sums<1>(fn, SquareTerm{x}, out, nullptr, n, 0, part, stream);
}
