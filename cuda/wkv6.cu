#include "common.cuh"
// WKV-6, the RWKV-6 state recurrence (see cuda/kernels.h and shared/REFERENCE.md "WKV-6").
//
// Per (batch b, head h) a state S in R^{NxN}, S[i][j]: i = value channel, j = key channel,
// S_{-1} = 0, d_t = exp(-exp(w_t)):
//   y_t = S_{t-1} r_t + v_t * sum_j r_t[j] u[j] k_t[j];   S_t = S_{t-1} diag(d_t) + v_t k_t^T.
// Every kernel: grid (H, B), one block of N threads per (head, batch), a length-N fp32 state
// vector per thread in registers, the step's inputs staged through shared memory between two
// barriers, t walked sequentially (any T, no chunking).
//
// Backward. Let G_t = dL/dS_t through the later outputs only: G_t = sum_{s>t} dy_s r_s^T
// prod_{m=t+1}^{s-1} diag(d_m) (the u term of y_s does not involve the state), so
//   G_{t-1} = G_t diag(d_t) + dy_t r_t^T,  G_{T-1} = 0, and with vdy_t = v_t . dy_t:
//   dr_t = S_{t-1}^T dy_t + (u o k_t) vdy_t         forward scan, thread i = key channel i
//   du  += r_t o k_t vdy_t                          same scan; partials per (b,h), summed over b
//   dk_t = G_t^T v_t + (u o r_t) vdy_t              reverse scan, thread i = key channel i
//   dv_t = G_t k_t + dy_t (sum_j r_t[j] u[j] k_t[j]) reverse scan, thread i = value channel i
// dw: dL/dlog d_t[i] = sum_{tau<t<s} q(tau,s) with q(tau,s) = r_s[i] k_tau[i] (dy_s . v_tau)
// prod_{m=tau+1}^{s-1} d_m[i]. With c_s = sum_{tau<s} q(tau,s) = r_s[i] (S_{s-1}^T dy_s)[i] (a
// forward-scan quantity) and e_tau = sum_{s>tau} q(tau,s) = k_tau[i] (G_tau^T v_tau)[i] (a
// reverse-scan one), the pairs tau < t < s are those with s > t minus those with tau >= t:
//   D_t := dL/dlog d_t = sum_{s>t} c_s - sum_{tau>=t} e_tau,  so  D_t = D_{t+1} + c_{t+1} - e_t,
// a running sum of the reverse scan (D_T = 0, c_T = 0). The forward scan stores c_t in the
// scratch; dw_t = D_t * dlog d/dw = -exp(w_t) D_t. (The running value stays at the size of D
// itself; the rounding of the c and e terms, each up to ~|q|/(1-d), adds up over the steps.)

namespace {

// ---- per-element math -------------------------------------------------------------------------
__host__ __device__ inline float wkv6_decay(float w) { return expf(-expf(w)); }
// d(log d)/dw for d = exp(-exp(w))
__host__ __device__ inline float wkv6_dlogdecay_dw(float w) { return -expf(w); }

// Inputs r, k, v, w are bf16 (mn_wkv6_*) or fp32 (mn_wkv6_*_f32); the kernels are templated on
// that element type TI and read it only through these.
__device__ inline float wkv6_in(const bf16* p, int64_t i) { return mn_bf16_to_f32(p[i]); }
__device__ inline float wkv6_in(const float* p, int64_t i) { return p[i]; }

__device__ inline int64_t wkv6_index(int b, int t, int h, int i, int T, int H, int N) {
  return (((int64_t)b * T + t) * H + h) * N + i;
}

template <int N>
__device__ inline float wkv6_dot(const float (&x)[N], const float* y) {
  float acc = 0.0f;
#pragma unroll
  for (int j = 0; j < N; j++) acc += x[j] * y[j];
  return acc;
}

// sum_j a[j] * b[j] over shared-memory vectors
template <int N>
__device__ inline float wkv6_dot_shared(const float* a, const float* b) {
  float acc = 0.0f;
#pragma unroll
  for (int j = 0; j < N; j++) acc += a[j] * b[j];
  return acc;
}

// x[j] = x[j] * d[j] + a * b[j]   (d, b shared vectors)
template <int N>
__device__ inline void wkv6_decay_add(float (&x)[N], const float* d, float a, const float* b) {
#pragma unroll
  for (int j = 0; j < N; j++) x[j] = x[j] * d[j] + a * b[j];
}

// x[j] = x[j] * d + a * b[j]   (one decay for the whole vector)
template <int N>
__device__ inline void wkv6_decay_add1(float (&x)[N], float d, float a, const float* b) {
#pragma unroll
  for (int j = 0; j < N; j++) x[j] = x[j] * d + a * b[j];
}

// ---- kernels ----------------------------------------------------------------------------------
// Forward. Thread i owns row i of S (value channel i). Writes y [B,T,H,N].
template <int N, typename TI>
__global__ void __launch_bounds__(N)
    wkv6_forward_kernel(float* y, const TI* r_, const TI* k_, const TI* v_, const TI* w_,
                        const float* u_, int T, int H) {
  const int h = blockIdx.x, bb = blockIdx.y, i = threadIdx.x;
  __shared__ float r[N], k[N], d[N], ruk[N];
  const float ui = u_[(int64_t)h * N + i];
  float s[N];  // s[j] = S[i][j]
#pragma unroll
  for (int j = 0; j < N; j++) s[j] = 0.0f;

  for (int t = 0; t < T; t++) {
    const int64_t ind = wkv6_index(bb, t, h, i, T, H, N);
    const float ri = wkv6_in(r_, ind), ki = wkv6_in(k_, ind), vi = wkv6_in(v_, ind);
    const float di = wkv6_decay(wkv6_in(w_, ind));
    __syncthreads();  // the previous step's readers are done
    r[i] = ri;
    k[i] = ki;
    d[i] = di;
    ruk[i] = ri * ui * ki;
    __syncthreads();
    float bonus = 0.0f;
#pragma unroll
    for (int j = 0; j < N; j++) bonus += ruk[j];
    y[ind] = wkv6_dot<N>(s, r) + vi * bonus;
    wkv6_decay_add<N>(s, d, vi, k);
  }
}

// Backward, forward scan. Thread i owns column i of S (key channel i): sc[j] = S_{t-1}[j][i].
// dr += S_{t-1}^T dy + u k vdy; c_t -> cbuf [B,T,H,N]; du partial -> dupart [B,H,N] (written).
template <int N, typename TI>
__global__ void __launch_bounds__(N)
    wkv6_backward_scan_kernel(float* dr, float* cbuf, float* dupart, const float* dy_,
                              const TI* r_, const TI* k_, const TI* v_, const TI* w_,
                              const float* u_, int T, int H, int acc) {
  const int h = blockIdx.x, bb = blockIdx.y, i = threadIdx.x;
  __shared__ float v[N], dy[N];
  const float ui = u_[(int64_t)h * N + i];
  float sc[N];
#pragma unroll
  for (int j = 0; j < N; j++) sc[j] = 0.0f;
  float gu = 0.0f;

  for (int t = 0; t < T; t++) {
    const int64_t ind = wkv6_index(bb, t, h, i, T, H, N);
    const float ri = wkv6_in(r_, ind), ki = wkv6_in(k_, ind), vi = wkv6_in(v_, ind);
    const float di = wkv6_decay(wkv6_in(w_, ind)), dyi = dy_[ind];
    __syncthreads();
    v[i] = vi;
    dy[i] = dyi;
    __syncthreads();
    const float vdy = wkv6_dot_shared<N>(v, dy);
    const float q = wkv6_dot<N>(sc, dy);  // (S_{t-1}^T dy_t)[i]
    MN_GRAD_STORE(dr[ind], q + ui * ki * vdy, acc);
    cbuf[ind] = ri * q;
    gu += ri * ki * vdy;
    wkv6_decay_add1<N>(sc, di, ki, v);
  }
  dupart[((int64_t)bb * H + h) * N + i] = gu;
}

// Backward, reverse scan for dk and dw. Thread i owns column i of G (key channel i):
// gc[j] = G_t[j][i]. Reads c_t from cbuf (written by wkv6_backward_scan_kernel).
// At N = 128 the state column fills the registers and runtime flags made ptxas spill: there kAcc
// fixes them at compile time (dk and dw both added into, or both overwritten; the launcher
// zero-fills one of them when their bits differ). Smaller N read the bits of `acc` at run time.
template <int N, typename TI, bool kAcc>
__global__ void __launch_bounds__(N)
    wkv6_backward_dkdw_kernel(float* dk, float* dw, const float* cbuf, const float* dy_,
                              const TI* r_, const TI* k_, const TI* v_, const TI* w_,
                              const float* u_, int T, int H, int acc) {
  const int h = blockIdx.x, bb = blockIdx.y, i = threadIdx.x;
  __shared__ float v[N], dy[N];
  const float ui = u_[(int64_t)h * N + i];
  const int ak = N == 128 ? kAcc : MN_ACC_BIT(acc, 0), aw = N == 128 ? kAcc : MN_ACC_BIT(acc, 1);
  float gc[N];
#pragma unroll
  for (int j = 0; j < N; j++) gc[j] = 0.0f;
  float D = 0.0f, c_next = 0.0f;  // D_{t+1}, c_{t+1}

  for (int t = T - 1; t >= 0; t--) {
    const int64_t ind = wkv6_index(bb, t, h, i, T, H, N);
    const float ri = wkv6_in(r_, ind), ki = wkv6_in(k_, ind), vi = wkv6_in(v_, ind);
    const float wi = wkv6_in(w_, ind), dyi = dy_[ind], ci = cbuf[ind];
    const float di = wkv6_decay(wi);
    __syncthreads();
    v[i] = vi;
    dy[i] = dyi;
    __syncthreads();
    const float vdy = wkv6_dot_shared<N>(v, dy);
    const float gv = wkv6_dot<N>(gc, v);  // (G_t^T v_t)[i]
    MN_GRAD_STORE(dk[ind], gv + ui * ri * vdy, ak);
    D += c_next - ki * gv;  // D_t = D_{t+1} + c_{t+1} - e_t
    MN_GRAD_STORE(dw[ind], D * wkv6_dlogdecay_dw(wi), aw);
    c_next = ci;
    wkv6_decay_add1<N>(gc, di, ri, dy);  // G_{t-1} = G_t diag(d_t) + dy_t r_t^T, column i
  }
}

// Backward, reverse scan for dv. Thread i owns row i of G (value channel i): gr[j] = G_t[i][j].
// Launch bounds (N, 1): without the minimum of 1 block per SM, ptxas aims at a higher occupancy and
// spills 4 bytes at N = 64 (bf16, sm_80); the grid has only H*B blocks, so that occupancy is not
// needed.
template <int N, typename TI>
__global__ void __launch_bounds__(N, 1)
    wkv6_backward_dv_kernel(float* dv, const float* dy_, const TI* r_, const TI* k_,
                            const TI* w_, const float* u_, int T, int H, int acc) {
  const int h = blockIdx.x, bb = blockIdx.y, i = threadIdx.x;
  __shared__ float r[N], k[N], d[N], ruk[N];
  const float ui = u_[(int64_t)h * N + i];
  float gr[N];
#pragma unroll
  for (int j = 0; j < N; j++) gr[j] = 0.0f;

  for (int t = T - 1; t >= 0; t--) {
    const int64_t ind = wkv6_index(bb, t, h, i, T, H, N);
    const float ri = wkv6_in(r_, ind), ki = wkv6_in(k_, ind);
    const float di = wkv6_decay(wkv6_in(w_, ind)), dyi = dy_[ind];
    __syncthreads();
    r[i] = ri;
    k[i] = ki;
    d[i] = di;
    ruk[i] = ri * ui * ki;
    __syncthreads();
    float bonus = 0.0f;
#pragma unroll
    for (int j = 0; j < N; j++) bonus += ruk[j];
    MN_GRAD_STORE(dv[ind], wkv6_dot<N>(gr, k) + dyi * bonus, acc);
    wkv6_decay_add<N>(gr, d, dyi, r);  // G_{t-1} = G_t diag(d_t) + dy_t r_t^T, row i
  }
}

// du[h][i] (+)= sum_{b = 0..B-1} dupart[b][h][i], in order of b. grid (H), block N.
template <int N>
__global__ void __launch_bounds__(N)
    wkv6_du_reduce_kernel(float* du, const float* dupart, int B, int H, int acc) {
  const int h = blockIdx.x, i = threadIdx.x;
  float sum = 0.0f;
  for (int b = 0; b < B; b++) sum += dupart[((int64_t)b * H + h) * N + i];
  MN_GRAD_STORE(du[(int64_t)h * N + i], sum, acc);
}

// ---- host side ----------------------------------------------------------------------------------
int wkv6_check(const char* fn, int B, int T, int H, int N) {
  MN_REQUIRE(B > 0 && T > 0 && H > 0, "%s: B = %d, T = %d, H = %d must all be > 0", fn, B, T, H);
  MN_REQUIRE(N == 16 || N == 32 || N == 64 || N == 128,
             "%s: head size N = %d is not supported (16, 32, 64 or 128)", fn, N);
  MN_REQUIRE(B <= 65535, "%s: B = %d exceeds the grid limit 65535", fn, B);
  return 0;
}

template <int N, typename TI>
int wkv6_forward_launch(const char* fn, float* y, TI* r, TI* k, TI* v, TI* w, float* u, int B,
                        int T, int H, void* stream) {
  return mn_launch(fn, wkv6_forward_kernel<N, TI>, dim3(H, B), dim3(N), 0, stream, y,
                   (const TI*)r, (const TI*)k, (const TI*)v, (const TI*)w, (const float*)u, T,
                   H);
}

template <int N, typename TI>
int wkv6_backward_launch(float* dr, float* dk, float* dv, float* dw, float* du, float* dy, TI* r,
                         TI* k, TI* v, TI* w, float* u, float* ws, int B, int T, int H,
                         int accumulate, void* stream) {
  const TI *r_ = r, *k_ = k, *v_ = v, *w_ = w;
  float* cbuf = ws;                             // [B,T,H,N]
  float* dupart = ws + (int64_t)B * T * H * N;  // [B,H,N]
  const dim3 grid(H, B), block(N);
  if (int rc = mn_launch("wkv6_backward_scan", wkv6_backward_scan_kernel<N, TI>, grid, block, 0,
                         stream, dr, cbuf, dupart, (const float*)dy, r_, k_, v_, w_,
                         (const float*)u, T, H, MN_ACC_BIT(accumulate, 0)))
    return rc;
  // dk, dw: bits 1 and 3; at N = 128, when they differ the overwritten one is zeroed and both are
  // added into (see the kernel)
  int ak = MN_ACC_BIT(accumulate, 1), aw = MN_ACC_BIT(accumulate, 3);
  if (N == 128 && ak != aw) {
    if (int rc = mn_fill(ak ? dw : dk, 0.0f, (int64_t)B * T * H * N, stream)) return rc;
    ak = aw = 1;
  }
  auto dkdw = wkv6_backward_dkdw_kernel<N, TI, true>;
  if constexpr (N == 128) {  // only N = 128 instantiates the overwriting kernel
    if (!ak) dkdw = wkv6_backward_dkdw_kernel<N, TI, false>;
  }
  if (int rc = mn_launch("wkv6_backward_dkdw", dkdw, grid, block, 0, stream, dk, dw,
                         (const float*)cbuf, (const float*)dy, r_, k_, v_, w_, (const float*)u, T,
                         H, ak | aw << 1))
    return rc;
  if (int rc = mn_launch("wkv6_backward_dv", wkv6_backward_dv_kernel<N, TI>, grid, block, 0,
                         stream, dv, (const float*)dy, r_, k_, w_, (const float*)u, T, H,
                         MN_ACC_BIT(accumulate, 2)))
    return rc;
  return mn_launch("wkv6_du_reduce", wkv6_du_reduce_kernel<N>, dim3(H), block, 0, stream, du,
                   (const float*)dupart, B, H, MN_ACC_BIT(accumulate, 4));
}

template <typename TI>
int wkv6_forward_common(const char* fn, float* y, TI* r, TI* k, TI* v, TI* w, float* u, int B,
                        int T, int H, int N, void* stream) {
  if (int rc = wkv6_check(fn, B, T, H, N)) return rc;
  MN_REQUIRE(y && r && k && v && w && u, "%s: NULL tensor argument", fn);
  switch (N) {
    case 16: return wkv6_forward_launch<16>(fn, y, r, k, v, w, u, B, T, H, stream);
    case 32: return wkv6_forward_launch<32>(fn, y, r, k, v, w, u, B, T, H, stream);
    case 64: return wkv6_forward_launch<64>(fn, y, r, k, v, w, u, B, T, H, stream);
    default: return wkv6_forward_launch<128>(fn, y, r, k, v, w, u, B, T, H, stream);
  }
}

template <typename TI>
int wkv6_backward_common(const char* fn, float* dr, float* dk, float* dv, float* dw, float* du,
                         float* dy, TI* r, TI* k, TI* v, TI* w, float* u, float* ws, int B, int T,
                         int H, int N, int accumulate, void* stream) {
  if (int rc = wkv6_check(fn, B, T, H, N)) return rc;
  MN_REQUIRE(dr && dk && dv && dw && du && dy && r && k && v && w && u && ws,
             "%s: NULL tensor argument", fn);
#define MN_WKV6_BWD(NN) \
  return wkv6_backward_launch<NN>(dr, dk, dv, dw, du, dy, r, k, v, w, u, ws, B, T, H, accumulate, \
                                  stream)
  switch (N) {
    case 16: MN_WKV6_BWD(16);
    case 32: MN_WKV6_BWD(32);
    case 64: MN_WKV6_BWD(64);
    default: MN_WKV6_BWD(128);
  }
#undef MN_WKV6_BWD
}

}  // namespace

MN_API int mn_wkv6_forward(float* y, mn_bf16* r, mn_bf16* k, mn_bf16* v, mn_bf16* w, float* u,
                           int B, int T, int H, int N, void* stream) {
  return wkv6_forward_common("wkv6_forward", y, (bf16*)r, (bf16*)k, (bf16*)v, (bf16*)w, u, B, T,
                             H, N, stream);
}

MN_API int mn_wkv6_backward(float* dr, float* dk, float* dv, float* dw, float* du, float* dy,
                            mn_bf16* r, mn_bf16* k, mn_bf16* v, mn_bf16* w, float* u, float* ws,
                            int B, int T, int H, int N, int accumulate, void* stream) {
  return wkv6_backward_common("wkv6_backward", dr, dk, dv, dw, du, dy, (bf16*)r, (bf16*)k,
                              (bf16*)v, (bf16*)w, u, ws, B, T, H, N, accumulate, stream);
}

MN_API int mn_wkv6_forward_f32(float* y, float* r, float* k, float* v, float* w, float* u, int B,
                               int T, int H, int N, void* stream) {
  return wkv6_forward_common("wkv6_forward_f32", y, r, k, v, w, u, B, T, H, N, stream);
}

MN_API int mn_wkv6_backward_f32(float* dr, float* dk, float* dv, float* dw, float* du, float* dy,
                                float* r, float* k, float* v, float* w, float* u, float* ws,
                                int B, int T, int H, int N, int accumulate, void* stream) {
  return wkv6_backward_common("wkv6_backward_f32", dr, dk, dv, dw, du, dy, r, k, v, w, u, ws, B, T,
                              H, N, accumulate, stream);
}
