// Fused RWKV-7 time-mixing chains: what torch.compile turns into one generated kernel each, here
// written by hand, with the generic tape ops (modelops.cu) left as the composition a record
// hacker edits. Forward kernels write the operand the next matmul reads (bf16 when the trainer runs
// bf16) instead of an fp32 value plus a cast; backward kernels recompute the cheap intermediates
// (xx = shift(x) - x) from the saved input instead of keeping them. Parameter-vector gradients are
// reduce.cuh's two-stage column sums (deterministic, no float atomics), with the elementwise
// gradients written by the same pass that reads dout for the sums.
//
// Gradient outputs follow the `accumulate` convention of kernels.h: bit i set = add into the i-th
// gradient pointer, clear = overwrite it without reading (it may hold NaN). The column sums only
// add, so the parameter-vector gradients' bits must be set.
#include "common.cuh"
#include "reduce.cuh"
#include "rwkv7_math.cuh"

namespace {

constexpr int kThreads = 256;

#define GRID_STRIDE(i, n)                                                     \
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (n); \
       i += (int64_t)gridDim.x * blockDim.x)

__device__ inline void store(float* p, float v) { *p = v; }
__device__ inline void store(bf16* p, float v) { *p = mn_f32_to_bf16(v); }

// (acc ? old + v : v) into p[e], reading p only when adding (an overwritten gradient may be NaN).
__device__ inline void put_grad(float* p, int64_t e, bool acc, float v) {
  p[e] = acc ? p[e] + v : v;
}

// xx[i, c] of x [B*T, C]: the previous token's value minus this one's (the token before t = 0 of a
// sequence is zero). Row i is token i % T of its sequence.
__device__ inline float shift_diff(const float* x, int64_t i, int c, int T, int C) {
  const int64_t e = i * C + c;
  const float prev = i % T ? x[e - C] : 0.0f;
  return prev - x[e];
}

// ---- (a) token shift and the five mixes ----

// xxx = x + xx * maa[c]
template <class Out>
__global__ void mix_x_forward_kernel(Out* out, const float* x, const float* maa, int T, int C,
                                     int64_t n) {
  GRID_STRIDE(e, n) {
    const int64_t i = e / C;
    const int c = (int)(e % C);
    store(out + e, mix_f(x[e], shift_diff(x, i, c, T, C), maa[c]));
  }
}

// out_j = x + xx * (m_j + maa_j), j < 4 (the original's xrg, xwa, xk, xv)
struct Mix4Args {
  const float* m[4];
  const float* maa[4];
};
template <class Out>
__global__ void mix4_forward_kernel(Out* o0, Out* o1, Out* o2, Out* o3, const float* x,
                                    Mix4Args a, int T, int C, int64_t n) {
  GRID_STRIDE(e, n) {
    const int64_t i = e / C;
    const int c = (int)(e % C);
    const float xe = x[e], xx = shift_diff(x, i, c, T, C);
    Out* o[4] = {o0, o1, o2, o3};
#pragma unroll
    for (int j = 0; j < 4; j++) store(o[j] + e, mix_f(xe, xx, a.m[j][e] + a.maa[j][c]));
  }
}

// Backward of xxx = x + xx * maa: token t's dx gets dout[t] (1 - maa) from its own mix and
// dout[t+1] maa from the next token's xx; dmaa[c] += sum_i dout xx. dx is written here, in the
// column-sum pass that reads dout anyway.
struct MixXTerm {
  float* dx;
  const float* dout;
  const float* x;
  const float* maa;
  int T, C;
  bool acc_dx;
  float p;
  struct Load {
    float d, dn, xx, old;
  };
  __device__ void begin(int c) { p = maa[c]; }
  __device__ Load load(int64_t i, int c) const {
    const int64_t e = i * C + c;
    Load l;
    l.d = dout[e];
    l.dn = (i + 1) % T ? dout[e + C] : 0.0f;
    l.xx = shift_diff(x, i, c, T, C);
    l.old = acc_dx ? dx[e] : 0.0f;
    return l;
  }
  __device__ void use(int64_t i, int c, const Load& l, float* acc) const {
    const float v = l.d * (1.0f - p) + l.dn * p;
    dx[i * C + c] = acc_dx ? l.old + v : v;
    acc[0] += l.d * l.xx;
  }
};

// Backward of the four mixes, pass 1: dx (all four mixes, own token and next token's xx),
// dm_j = dout_j xx, and the sums of dmaa_0, dmaa_1. Pass 2 (Mix4TailTerm) sums dmaa_2, dmaa_3:
// reduce.cuh's column sums carry two outputs.
struct Mix4Grads {
  float* dm[4];
  const float* dout[4];
};
struct Mix4Term {
  float* dx;
  Mix4Grads g;
  Mix4Args a;
  const float* x;
  int T, C;
  int acc;  // the accumulate bits: 0 dx, 1..4 dm_j
  float p[4];
  struct Load {
    float d[4], m[4], dn[4], mn[4], xx;
  };
  __device__ void begin(int c) {
#pragma unroll
    for (int j = 0; j < 4; j++) p[j] = a.maa[j][c];
  }
  __device__ Load load(int64_t i, int c) const {
    const int64_t e = i * C + c;
    const bool next = (i + 1) % T != 0;
    Load l;
#pragma unroll
    for (int j = 0; j < 4; j++) {
      l.d[j] = g.dout[j][e];
      l.m[j] = a.m[j][e];
      l.dn[j] = next ? g.dout[j][e + C] : 0.0f;
      l.mn[j] = next ? a.m[j][e + C] : 0.0f;
    }
    l.xx = shift_diff(x, i, c, T, C);
    return l;
  }
  __device__ void use(int64_t i, int c, const Load& l, float* s) const {
    const int64_t e = i * C + c;
    float v = 0.0f;
#pragma unroll
    for (int j = 0; j < 4; j++) {
      v += l.d[j] * (1.0f - (l.m[j] + p[j])) + l.dn[j] * (l.mn[j] + p[j]);
      put_grad(g.dm[j], e, (acc >> (1 + j)) & 1, l.d[j] * l.xx);
    }
    put_grad(dx, e, acc & 1, v);
    s[0] += l.d[0] * l.xx;
    s[1] += l.d[1] * l.xx;
  }
};
struct Mix4TailTerm {
  const float* d2;
  const float* d3;
  const float* x;
  int T, C;
  struct Load {
    float d2, d3, xx;
  };
  __device__ void begin(int) {}
  __device__ Load load(int64_t i, int c) const {
    const int64_t e = i * C + c;
    return Load{d2[e], d3[e], shift_diff(x, i, c, T, C)};
  }
  __device__ void use(int64_t, int, const Load& l, float* s) const {
    s[0] += l.d2 * l.xx;
    s[1] += l.d3 * l.xx;
  }
};

}  // namespace

// ---- entry points ----

MN_API int mn_rwkv7_mix_x_forward(void* out, float* x, float* maa, int out_bf16, int B, int T,
                                  int C, void* stream) {
  MN_REQUIRE(B > 0 && T > 0 && C > 0, "rwkv7_mix_x_forward: bad shape [%d, %d, %d]", B, T, C);
  MN_REQUIRE(out && x && maa, "rwkv7_mix_x_forward: out, x and maa are required");
  MN_REQUIRE(out != (void*)x, "rwkv7_mix_x_forward: in-place is not supported");
  const int64_t n = (int64_t)B * T * C;
  if (out_bf16)
    return mn_launch("rwkv7_mix_x_forward", mix_x_forward_kernel<bf16>,
                     mn_blocks_for(n, kThreads), kThreads, 0, stream, (bf16*)out,
                     (const float*)x, (const float*)maa, T, C, n);
  return mn_launch("rwkv7_mix_x_forward", mix_x_forward_kernel<float>, mn_blocks_for(n, kThreads),
                   kThreads, 0, stream, (float*)out, (const float*)x, (const float*)maa, T, C, n);
}

MN_API int mn_rwkv7_mix_x_backward(float* dx, float* dmaa, float* dout, float* x, float* maa,
                                   int B, int T, int C, int accumulate, void* stream) {
  MN_REQUIRE(B > 0 && T > 0 && C > 0, "rwkv7_mix_x_backward: bad shape [%d, %d, %d]", B, T, C);
  MN_REQUIRE(dx && dmaa && dout && x && maa,
             "rwkv7_mix_x_backward: dx, dmaa, dout, x and maa are required");
  MN_REQUIRE(accumulate & 2, "rwkv7_mix_x_backward: dmaa accumulates (bit 1 must be set)");
  const int64_t N = (int64_t)B * T;
  MN_REQUIRE(N <= 2147483647, "rwkv7_mix_x_backward: %lld rows is too many", (long long)N);
  float* part = nullptr;
  if (int rc = mn_reduce::scratch_floats(&part, mn_reduce::col_scratch_floats(N, C, 1), stream))
    return rc;
  return mn_reduce::col_sums<1>(
      "rwkv7_mix_x_backward",
      MixXTerm{dx, (const float*)dout, (const float*)x, (const float*)maa, T, C,
               (accumulate & 1) != 0, 0.0f},
      dmaa, nullptr, N, C, part, stream);
}

MN_API int mn_rwkv7_mix4_forward(void* out_rg, void* out_wa, void* out_k, void* out_v, float* x,
                                 float* m_rg, float* m_wa, float* m_k, float* m_v, float* maa_rg,
                                 float* maa_wa, float* maa_k, float* maa_v, int out_bf16, int B,
                                 int T, int C, void* stream) {
  MN_REQUIRE(B > 0 && T > 0 && C > 0, "rwkv7_mix4_forward: bad shape [%d, %d, %d]", B, T, C);
  MN_REQUIRE(out_rg && out_wa && out_k && out_v && x && m_rg && m_wa && m_k && m_v && maa_rg &&
                 maa_wa && maa_k && maa_v,
             "rwkv7_mix4_forward: every pointer is required");
  const int64_t n = (int64_t)B * T * C;
  const Mix4Args a{{m_rg, m_wa, m_k, m_v}, {maa_rg, maa_wa, maa_k, maa_v}};
  if (out_bf16)
    return mn_launch("rwkv7_mix4_forward", mix4_forward_kernel<bf16>, mn_blocks_for(n, kThreads),
                     kThreads, 0, stream, (bf16*)out_rg, (bf16*)out_wa, (bf16*)out_k,
                     (bf16*)out_v, (const float*)x, a, T, C, n);
  return mn_launch("rwkv7_mix4_forward", mix4_forward_kernel<float>, mn_blocks_for(n, kThreads),
                   kThreads, 0, stream, (float*)out_rg, (float*)out_wa, (float*)out_k,
                   (float*)out_v, (const float*)x, a, T, C, n);
}

MN_API int mn_rwkv7_mix4_backward(float* dx, float* dm_rg, float* dm_wa, float* dm_k, float* dm_v,
                                  float* dmaa_rg, float* dmaa_wa, float* dmaa_k, float* dmaa_v,
                                  float* dout_rg, float* dout_wa, float* dout_k, float* dout_v,
                                  float* x, float* m_rg, float* m_wa, float* m_k, float* m_v,
                                  float* maa_rg, float* maa_wa, float* maa_k, float* maa_v, int B,
                                  int T, int C, int accumulate, void* stream) {
  MN_REQUIRE(B > 0 && T > 0 && C > 0, "rwkv7_mix4_backward: bad shape [%d, %d, %d]", B, T, C);
  MN_REQUIRE(dx && dm_rg && dm_wa && dm_k && dm_v && dmaa_rg && dmaa_wa && dmaa_k && dmaa_v &&
                 dout_rg && dout_wa && dout_k && dout_v && x && m_rg && m_wa && m_k && m_v &&
                 maa_rg && maa_wa && maa_k && maa_v,
             "rwkv7_mix4_backward: every pointer is required");
  MN_REQUIRE((accumulate & 0x1e0) == 0x1e0,
             "rwkv7_mix4_backward: the dmaa gradients accumulate (bits 5..8 must be set)");
  const int64_t N = (int64_t)B * T;
  MN_REQUIRE(N <= 2147483647, "rwkv7_mix4_backward: %lld rows is too many", (long long)N);
  float* part = nullptr;
  if (int rc = mn_reduce::scratch_floats(&part, mn_reduce::col_scratch_floats(N, C, 2), stream))
    return rc;
  const Mix4Args a{{m_rg, m_wa, m_k, m_v}, {maa_rg, maa_wa, maa_k, maa_v}};
  const Mix4Grads g{{dm_rg, dm_wa, dm_k, dm_v}, {dout_rg, dout_wa, dout_k, dout_v}};
  int rc = mn_reduce::col_sums<2>("rwkv7_mix4_backward",
                                  Mix4Term{dx, g, a, (const float*)x, T, C, accumulate, {}},
                                  dmaa_rg, dmaa_wa, N, C, part, stream);
  if (rc) return rc;
  return mn_reduce::col_sums<2>(
      "rwkv7_mix4_backward_tail",
      Mix4TailTerm{(const float*)dout_k, (const float*)dout_v, (const float*)x, T, C}, dmaa_k,
      dmaa_v, N, C, part, stream);
}
