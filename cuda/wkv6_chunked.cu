#include "common.cuh"
#include "reduce.cuh"
#include "entry_checks.h"
// Chunked WKV-6 (the --fla_cuda variant): the RWKV-6 recurrence of cuda/wkv6.cu, evaluated the way
// flash-linear-attention's chunk_rwkv6 does it: T is cut into chunks of WKV6C_CHUNK = 16 steps
// (the last one may be shorter); only the N x N state crosses chunk boundaries, everything inside
// a chunk is pairwise interactions with cumulative log-decays. CUDA cores, fp32 throughout.
//
// Notation, per (batch b, head h), chunk c = steps t0 .. t0+L-1, key channel j, value channel i:
//   lw_t[j] = log d_t[j] = -exp(w_t[j]);   g_t[j] = sum_{m=t0}^{t} lw_m[j]  (inclusive, chunk-local)
//   gp_t = g_{t-1} (gp_{t0} = 0);   gl = g_{t0+L-1} (the whole chunk's log-decay).
// Every decay factor below is exp(g_a - g_b) with a >= b (or exp(gp_t), exp(gl)): an exponent <= 0,
// so no factor exceeds 1 whatever the decays are; very strong decays underflow to 0, which is the
// right limit. (The naive form exp(g_a) * exp(-g_b) overflows for RWKV-6's tiny decays.)
//
// Forward. S0 = S_{t0-1} (state entering the chunk, S[i][j]):
//   y_t[i] = sum_j S0[i][j] r_t[j] exp(gp_t[j]) + sum_{tau<=t} v_tau[i] A[t][tau]
//   A[t][tau] = sum_j r_t[j] k_tau[j] exp(gp_t[j] - g_tau[j])   (tau < t),   A[t][t] = sum_j r u k
//   S_end[i][j] = S0[i][j] exp(gl[j]) + sum_tau v_tau[i] k_tau[j] exp(gl[j] - g_tau[j])
// Kernel wkv6c_state walks the chunks of one (b, h) in order and stores each S0 (s_ckpt);
// wkv6c_output then does all chunks in parallel.
//
// Backward. Gc = dL/dS_end through later outputs (the state gradient leaving the chunk):
//   Gc_{previous chunk} = Gc exp(gl) + sum_s dy_s (r_s o exp(gp_s))^T       (wkv6c_dstate, reverse)
// and per chunk in parallel (wkv6c_grads), with vd[s][t] = v_t . dy_s:
//   dr_t[j] = exp(gp_t)(S0^T dy_t)[j] + sum_{tau<t} vd[t][tau] k_tau[j] exp(gp_t - g_tau) + u k_t vd[t][t]
//   dk_t[j] = exp(gl - g_t)(Gc^T v_t)[j] + sum_{s>t} vd[s][t] r_s[j] exp(gp_s - g_t) + u r_t vd[t][t]
//   dv_t[i] = sum_j Gc[i][j] k_t[j] exp(gl - g_t) + sum_{s>=t} dy_s[i] A[s][t]
//   du[j]  += sum_t r_t[j] k_t[j] vd[t][t]
//   dw_t[j] = dL/dlog d_t[j] * (-exp(w_t[j])), with dL/dlog d_t = d_t (Gm_t o S_{t-1}) summed over
//   the value index, expanded over the chunk (wkv6c_dlogd): local to the chunk, no cross-chunk sum,
//   and accurate for tiny d (FLA and cuda/wkv6.cu use a running sum of larger terms instead).
// du goes through per-(b, h, chunk) partials and an ordered sum (deterministic).
//
// Relation to the original's --fla_cuda (train_rwkv6.py, RUN_FLA_CHUNK): it calls fla's
// chunk_rwkv6(r, k, v, -exp(w), u, scale=1.0, initial_state=None, chunk_size=32) on bf16 tensors
// transposed to [B,H,T,N], with u = time_faaaa.bfloat16() [H,N]. Same function here: scale 1 (no
// scaling of r), u [H,N] shared over the batch with du summed over it, zero initial state, log
// decay -exp(w). Differences, all in rounding only: (1) the original computes -exp(w) in bf16 (a
// bf16 tensor op), so its log-decays carry a 2^-9 relative rounding; here -exp(w) is fp32 from the
// bf16 w, as in the default kernel. (2) fla feeds bf16 operands to tensor-core matmuls inside a
// chunk and returns y in bf16; here everything is fp32 on CUDA cores and y is fp32 (the trainer's
// default path keeps y fp32 too). (3) Chunks of 16, not 32: an evaluation order, not a semantic.
// (4) No transposes: [B,T,H,N] is read in place.

namespace {

constexpr int WKV6C_CHUNK = 16;

// ---- per-element math -------------------------------------------------------------------------
// log d = -exp(w), d = exp(-exp(w)) the RWKV-6 decay
__host__ __device__ inline float wkv6c_log_decay(float w) { return -expf(w); }

__device__ inline float wkv6c_in(const bf16* p, int64_t i) { return mn_bf16_to_f32(p[i]); }

__host__ __device__ inline int64_t wkv6c_index(int b, int t, int h, int i, int T, int H, int N) {
  return (((int64_t)b * T + t) * H + h) * N + i;
}

__host__ __device__ inline int wkv6c_chunks(int T) { return (T + WKV6C_CHUNK - 1) / WKV6C_CHUNK; }
// steps in the chunk starting at t0 (WKV6C_CHUNK, or fewer for the last one)
__host__ __device__ inline int wkv6c_length(int T, int t0) {
  return T - t0 < WKV6C_CHUNK ? T - t0 : WKV6C_CHUNK;
}

// offset of chunk c's N x N checkpoint of (b, h) in s_ckpt / ds_ckpt [B,H,NC,N,N]
__device__ inline int64_t wkv6c_ckpt(int b, int h, int c, int H, int NC, int N) {
  return (((int64_t)b * H + h) * NC + c) * N * N;
}

// Loads channel x of the chunk's inputs, zero beyond the chunk's length L, and its cumulative
// log-decay g_t (inclusive); returns gl. Shared arrays are [WKV6C_CHUNK][N] (row = step in chunk).
template <int N>
__device__ inline float wkv6c_cumulative(float (*g)[N], const bf16* w_, int b, int t0, int L,
                                         int h, int x, int T, int H) {
  float gsum = 0.0f;
#pragma unroll
  for (int t = 0; t < WKV6C_CHUNK; t++) {
    if (t < L) gsum += wkv6c_log_decay(wkv6c_in(w_, wkv6c_index(b, t0 + t, h, x, T, H, N)));
    g[t][x] = gsum;  // past L: repeats gl, never read as a decay of a real step
  }
  return gsum;
}

// g_{t-1} within the chunk (0 before its first step)
template <int N>
__device__ inline float wkv6c_gprev(const float (*g)[N], int t, int j) {
  return t > 0 ? g[t - 1][j] : 0.0f;
}

// ---- forward -----------------------------------------------------------------------------------
// The chunk-to-chunk state scan. grid (H, B), block N. Thread x owns row x of S (value channel x)
// and computes the per-channel decays of key channel x. s_ckpt[b][h][c][j][i] = S0 of chunk c.
template <int N>
__global__ void __launch_bounds__(N)
    wkv6c_state_kernel(float* s_ckpt, const bf16* k_, const bf16* v_, const bf16* w_, int T, int H,
                       int NC) {
  constexpr int CH = WKV6C_CHUNK;
  const int h = blockIdx.x, b = blockIdx.y, x = threadIdx.x;
  __shared__ float g[CH][N], kdec[CH][N], dlast[N];  // kdec[t][j] = k_t[j] exp(gl - g_t)
  float S[N];  // S[j] = S[x][j]
#pragma unroll
  for (int j = 0; j < N; j++) S[j] = 0.0f;

  for (int c = 0; c < NC; c++) {
    const int t0 = c * CH, L = wkv6c_length(T, t0);
    float* ck = s_ckpt + wkv6c_ckpt(b, h, c, H, NC, N);
#pragma unroll
    for (int j = 0; j < N; j++) ck[(int64_t)j * N + x] = S[j];
    if (c == NC - 1) break;  // the state after the last chunk is not needed
    __syncthreads();  // the previous chunk's readers of kdec / dlast are done
    const float gl = wkv6c_cumulative<N>(g, w_, b, t0, L, h, x, T, H);
    for (int t = 0; t < L; t++)
      kdec[t][x] = wkv6c_in(k_, wkv6c_index(b, t0 + t, h, x, T, H, N)) * expf(gl - g[t][x]);
    dlast[x] = expf(gl);
    __syncthreads();
#pragma unroll
    for (int j = 0; j < N; j++) S[j] *= dlast[j];
    for (int t = 0; t < L; t++) {
      const float vt = wkv6c_in(v_, wkv6c_index(b, t0 + t, h, x, T, H, N));
#pragma unroll
      for (int j = 0; j < N; j++) S[j] += vt * kdec[t][j];
    }
  }
}

// y for one chunk. grid (NC, H, B), block N.
template <int N>
__global__ void __launch_bounds__(N)
    wkv6c_output_kernel(float* y, const float* s_ckpt, const bf16* r_, const bf16* k_,
                        const bf16* v_, const bf16* w_, const float* u_, int T, int H, int NC) {
  constexpr int CH = WKV6C_CHUNK;
  const int c = blockIdx.x, h = blockIdx.y, b = blockIdx.z, x = threadIdx.x;
  const int t0 = c * CH, L = wkv6c_length(T, t0);
  // r, k [step][channel]; g cumulative log-decays; q[t][j] = r_t[j] exp(gp_t[j]); A [t][tau]
  __shared__ float r[CH][N], k[CH][N], g[CH][N], q[CH][N], us[N], A[CH][CH];

  // 1. channel x of the chunk (zero beyond L)
  wkv6c_cumulative<N>(g, w_, b, t0, L, h, x, T, H);
  for (int t = 0; t < CH; t++) {
    const bool in = t < L;
    const int64_t ind = wkv6c_index(b, t0 + (in ? t : 0), h, x, T, H, N);
    r[t][x] = in ? wkv6c_in(r_, ind) : 0.0f;
    k[t][x] = in ? wkv6c_in(k_, ind) : 0.0f;
    q[t][x] = r[t][x] * expf(wkv6c_gprev<N>(g, t, x));
  }
  us[x] = u_[(int64_t)h * N + x];
  __syncthreads();

  // 2. the chunk's interaction matrix, lower triangle with the u bonus on the diagonal
  for (int p = x; p < CH * CH; p += N) {
    const int t = p / CH, tau = p % CH;
    float acc = 0.0f;
    if (tau < t) {
      for (int j = 0; j < N; j++) acc += r[t][j] * k[tau][j] * expf(g[t - 1][j] - g[tau][j]);
    } else if (tau == t) {
      for (int j = 0; j < N; j++) acc += r[t][j] * us[j] * k[t][j];
    }
    A[t][tau] = acc;
  }
  __syncthreads();

  // 3. thread x = value channel i: the carried state's part, then the chunk's own part
  float acc[CH], vi[CH];
#pragma unroll
  for (int t = 0; t < CH; t++) {
    acc[t] = 0.0f;
    vi[t] = t < L ? wkv6c_in(v_, wkv6c_index(b, t0 + t, h, x, T, H, N)) : 0.0f;
  }
  if (c > 0) {  // S0 = 0 for the first chunk
    const float* ck = s_ckpt + wkv6c_ckpt(b, h, c, H, NC, N);
    for (int j = 0; j < N; j++) {
      const float s = ck[(int64_t)j * N + x];  // S0[x][j]
#pragma unroll
      for (int t = 0; t < CH; t++) acc[t] += s * q[t][j];
    }
  }
#pragma unroll
  for (int t = 0; t < CH; t++) {
#pragma unroll
    for (int tau = 0; tau <= t; tau++) acc[t] += vi[tau] * A[t][tau];
    if (t < L) y[wkv6c_index(b, t0 + t, h, x, T, H, N)] = acc[t];
  }
}

// ---- backward ----------------------------------------------------------------------------------
// The reverse chunk-to-chunk scan of the state gradient. grid (H, B), block N; thread x owns row x
// of Gc. ds_ckpt[b][h][c][j][i] = Gc[i][j] of chunk c (dL/dS at its end, through later outputs).
template <int N>
__global__ void __launch_bounds__(N)
    wkv6c_dstate_kernel(float* ds_ckpt, const float* dy_, const bf16* r_, const bf16* w_, int T,
                        int H, int NC) {
  constexpr int CH = WKV6C_CHUNK;
  const int h = blockIdx.x, b = blockIdx.y, x = threadIdx.x;
  __shared__ float g[CH][N], rdec[CH][N], dlast[N];  // rdec[t][j] = r_t[j] exp(gp_t[j])
  float G[N];  // G[j] = Gc[x][j]
#pragma unroll
  for (int j = 0; j < N; j++) G[j] = 0.0f;

  for (int c = NC - 1; c >= 0; c--) {
    const int t0 = c * CH, L = wkv6c_length(T, t0);
    float* ck = ds_ckpt + wkv6c_ckpt(b, h, c, H, NC, N);
#pragma unroll
    for (int j = 0; j < N; j++) ck[(int64_t)j * N + x] = G[j];
    if (c == 0) break;
    __syncthreads();
    const float gl = wkv6c_cumulative<N>(g, w_, b, t0, L, h, x, T, H);
    for (int t = 0; t < L; t++)
      rdec[t][x] = wkv6c_in(r_, wkv6c_index(b, t0 + t, h, x, T, H, N)) *
                   expf(wkv6c_gprev<N>(g, t, x));
    dlast[x] = expf(gl);
    __syncthreads();
#pragma unroll
    for (int j = 0; j < N; j++) G[j] *= dlast[j];
    for (int t = 0; t < L; t++) {
      const float dyt = dy_[wkv6c_index(b, t0 + t, h, x, T, H, N)];
#pragma unroll
      for (int j = 0; j < N; j++) G[j] += dyt * rdec[t][j];
    }
  }
}

// dL/dlog d_t[j] = d_t[j] sum_i Gm_t[i][j] S_{t-1}[i][j] (Gm_t = dL/dS_t through later outputs)
// for step t of the chunk and key channel j, from the four products of the chunk decompositions
//   S_{t-1} = S0 exp(gp_t) + sum_{tau<t} v_tau k_tau^T exp(gp_t - g_tau),
//   Gm_t    = Gc exp(gl - g_t) + sum_{s>t} dy_s r_s^T exp(gp_s - g_t):
//   P exp(gl) + sum_{tau<t} gv_tau k_tau exp(gl - g_tau) + sum_{s>t} sdy_s r_s exp(gp_s)
//   + sum_{s>t} sum_{tau<t} vd[s][tau] r_s k_tau exp(gp_s - g_tau)
// (P = Gc[:,j] . S0[:,j], gv_tau = (Gc^T v_tau)[j], sdy_s = (S0^T dy_s)[j]). Every exponent spans
// step t, so when d_t is tiny every term is: no cancellation of large terms (the running-sum form
// of cuda/wkv6.cu loses dw's relative accuracy there). Cost O(16^3) per channel and chunk.
template <int N>
__device__ __forceinline__ float wkv6c_dlogd(float P, float gl, const float (&sdy)[WKV6C_CHUNK],
                                    const float (&gv)[WKV6C_CHUNK],
                                    const float (*vd)[WKV6C_CHUNK], const float (*r)[N],
                                    const float (*k)[N], const float (*g)[N], int t, int L,
                                    int j) {
  // Loops over the whole chunk with guards: inlined into a fully unrolled loop over t, every
  // index of the register arrays sdy, gv, kd is then a constant (no local memory).
  const float gt = g[t][j];
  float D = P * expf(gl), kd[WKV6C_CHUNK];  // kd[tau] = k_tau exp(g_t - g_tau), tau < t
#pragma unroll
  for (int tau = 0; tau < WKV6C_CHUNK; tau++) {
    kd[tau] = tau < t ? k[tau][j] * expf(gt - g[tau][j]) : 0.0f;
    if (tau < t) D += gv[tau] * k[tau][j] * expf(gl - g[tau][j]);
  }
#pragma unroll
  for (int s = 1; s < WKV6C_CHUNK; s++) {
    if (s <= t || s >= L) continue;
    // exp(gp_s - g_tau) = exp(gp_s - g_t) exp(g_t - g_tau), both factors <= 1
    float inner = 0.0f;
#pragma unroll
    for (int tau = 0; tau < WKV6C_CHUNK - 1; tau++)
      if (tau < t) inner += vd[s][tau] * kd[tau];
    D += r[s][j] * (sdy[s] * expf(g[s - 1][j]) + inner * expf(g[s - 1][j] - gt));
  }
  return D;
}

// dr, dk, dv, dw and the du partials of one chunk. grid (NC, H, B), block N. At N = 16 ptxas
// aims for 128 registers and spills on sm_80; asking for one block per SM lifts that cap there
// (a minimum of 0 is the default: larger N keep their register counts).
template <int N>
__global__ void __launch_bounds__(N, N == 16 ? 1 : 0)
    wkv6c_grads_kernel(float* dr, float* dk, float* dv, float* dw, float* dupart,
                       const float* dy_, const bf16* r_, const bf16* k_, const bf16* v_,
                       const bf16* w_, const float* u_, const float* s_ckpt,
                       const float* ds_ckpt, int T, int H, int NC, int acc) {
  constexpr int CH = WKV6C_CHUNK;
  const int ar = MN_ACC_BIT(acc, 0), ak = MN_ACC_BIT(acc, 1), av = MN_ACC_BIT(acc, 2);
  const int aw = MN_ACC_BIT(acc, 3);
  const int c = blockIdx.x, h = blockIdx.y, b = blockIdx.z, x = threadIdx.x;
  const int t0 = c * CH, L = wkv6c_length(T, t0);
  // [step][channel], zero beyond L; vk is v until step 4, then k_t[j] exp(gl - g_t[j]) (see there)
  __shared__ float r[CH][N], k[CH][N], vk[CH][N], dy[CH][N], g[CH][N], us[N];
  __shared__ float A[CH][CH], vd[CH][CH];  // [s][t], s >= t: A as in the forward, vd = v_t . dy_s

  // 1. channel x of the chunk
  const float glx = wkv6c_cumulative<N>(g, w_, b, t0, L, h, x, T, H);
  for (int t = 0; t < CH; t++) {
    const bool in = t < L;
    const int64_t ind = wkv6c_index(b, t0 + (in ? t : 0), h, x, T, H, N);
    r[t][x] = in ? wkv6c_in(r_, ind) : 0.0f;
    k[t][x] = in ? wkv6c_in(k_, ind) : 0.0f;
    vk[t][x] = in ? wkv6c_in(v_, ind) : 0.0f;
    dy[t][x] = in ? dy_[ind] : 0.0f;
  }
  const float ux = u_[(int64_t)h * N + x];
  us[x] = ux;
  __syncthreads();

  // 2. pairwise terms, lower triangle
  for (int p = x; p < CH * CH; p += N) {
    const int s = p / CH, t = p % CH;
    float a = 0.0f, z = 0.0f;
    if (t < s) {
      for (int j = 0; j < N; j++) a += r[s][j] * k[t][j] * expf(g[s - 1][j] - g[t][j]);
    } else if (t == s) {
      for (int j = 0; j < N; j++) a += r[s][j] * us[j] * k[s][j];
    }
    if (t <= s)
      for (int i = 0; i < N; i++) z += vk[t][i] * dy[s][i];
    A[s][t] = a;
    vd[s][t] = z;
  }

  // 3. thread x = key channel j: dr, dk, dw, du
  float sdy[CH], gv[CH], P = 0.0f;  // (S0^T dy_t)[x], (Gc^T v_t)[x], sum_i Gc[i][x] S0[i][x]
#pragma unroll
  for (int t = 0; t < CH; t++) sdy[t] = gv[t] = 0.0f;
  const float* s0 = s_ckpt + wkv6c_ckpt(b, h, c, H, NC, N) + (int64_t)x * N;   // S0[:][x]
  const float* gc = ds_ckpt + wkv6c_ckpt(b, h, c, H, NC, N) + (int64_t)x * N;  // Gc[:][x]
  for (int i = 0; i < N; i++) {
    const float si = c > 0 ? s0[i] : 0.0f, gi = c < NC - 1 ? gc[i] : 0.0f;
    P += gi * si;
#pragma unroll
    for (int t = 0; t < CH; t++) {
      sdy[t] += si * dy[t][i];
      gv[t] += gi * vk[t][i];
    }
  }
  __syncthreads();  // A and vd complete; everyone is done reading v from vk

  float du_acc = 0.0f;
#pragma unroll
  for (int t = 0; t < CH; t++) {  // unrolled: sdy[t], gv[t] stay in registers
    if (t >= L) continue;
    const float gt = g[t][x], gp = wkv6c_gprev<N>(g, t, x);
    float drt = expf(gp) * sdy[t];
    for (int tau = 0; tau < t; tau++) drt += vd[t][tau] * k[tau][x] * expf(gp - g[tau][x]);
    float dkt = expf(glx - gt) * gv[t];
    for (int s = t + 1; s < L; s++) dkt += vd[s][t] * r[s][x] * expf(g[s - 1][x] - gt);
    const float bon = vd[t][t];
    const int64_t ind = wkv6c_index(b, t0 + t, h, x, T, H, N);
    MN_GRAD_STORE(dr[ind], drt + ux * k[t][x] * bon, ar);
    MN_GRAD_STORE(dk[ind], dkt + ux * r[t][x] * bon, ak);
    du_acc += r[t][x] * k[t][x] * bon;
    const float dwt = wkv6c_dlogd(P, glx, sdy, gv, vd, r, k, g, t, L, x) *
                      wkv6c_log_decay(wkv6c_in(w_, ind));  // d(log d)/dw = -exp(w) = log d
    MN_GRAD_STORE(dw[ind], dwt, aw);
  }
  dupart[(((int64_t)b * H + h) * NC + c) * N + x] = du_acc;

  // 4. thread x = value channel i: dv. vk now holds k_t[j] exp(gl[j] - g_t[j]).
  for (int t = 0; t < CH; t++) vk[t][x] = k[t][x] * expf(glx - g[t][x]);
  __syncthreads();
  float dvi[CH];
#pragma unroll
  for (int t = 0; t < CH; t++) dvi[t] = 0.0f;
  if (c < NC - 1) {  // Gc = 0 for the last chunk
    const float* gcr = ds_ckpt + wkv6c_ckpt(b, h, c, H, NC, N);
    for (int j = 0; j < N; j++) {
      const float gij = gcr[(int64_t)j * N + x];  // Gc[x][j]
#pragma unroll
      for (int t = 0; t < CH; t++) dvi[t] += gij * vk[t][j];
    }
  }
#pragma unroll
  for (int t = 0; t < CH; t++) {
    if (t >= L) continue;
    float acc = dvi[t];
    for (int s = t; s < L; s++) acc += dy[s][x] * A[s][t];
    MN_GRAD_STORE(dv[wkv6c_index(b, t0 + t, h, x, T, H, N)], acc, av);
  }
}

// Column-sum term (reduce.cuh) of du[h][x] = sum over (b, c) of dupart[b][h][c][x]: row i = (b, c)
// = (i / NC, i % NC) of B*NC rows, column h*N + x of H*N. One block per head summing all B*NC
// partials serially had 12 blocks at the record shape; the two-stage column sums spread the rows
// over a full grid and add them in a fixed order.
struct Wkv6cDuTerm {
  const float* dupart;
  int H, N, NC;
  int64_t col_off;  // (h * NC) * N + x for the column of begin()
  struct Load {
    float p;
  };
  __device__ void begin(int col) { col_off = (int64_t)(col / N) * NC * N + col % N; }
  __device__ Load load(int64_t i, int) const {
    const int64_t b = i / NC, c = i % NC;
    return Load{dupart[(b * H * NC + c) * N + col_off]};
  }
  __device__ void use(int64_t, int, const Load& l, float* acc) const { acc[0] += l.p; }
};

// ---- host side ----------------------------------------------------------------------------------
// Elements of ws for the backward: ds_ckpt [B,H,NC,N,N], then dupart [B,H,NC,N].
int64_t wkv6c_ws_elems(int B, int T, int H, int N) {
  return (int64_t)B * H * wkv6c_chunks(T) * N * (N + 1);
}

template <int N>
int wkv6c_forward_launch(float* y, float* s_ckpt, bf16* r, bf16* k, bf16* v, bf16* w, float* u,
                         int B, int T, int H, void* stream) {
  const int NC = wkv6c_chunks(T);
  if (int rc = mn_launch("wkv6_chunked_state", wkv6c_state_kernel<N>, dim3(H, B), dim3(N), 0,
                         stream, s_ckpt, (const bf16*)k, (const bf16*)v, (const bf16*)w, T, H,
                         NC))
    return rc;
  return mn_launch("wkv6_chunked_output", wkv6c_output_kernel<N>, dim3(NC, H, B), dim3(N), 0,
                   stream, y, (const float*)s_ckpt, (const bf16*)r, (const bf16*)k,
                   (const bf16*)v, (const bf16*)w, (const float*)u, T, H, NC);
}

template <int N>
int wkv6c_backward_launch(float* dr, float* dk, float* dv, float* dw, float* du, float* dy,
                          bf16* r, bf16* k, bf16* v, bf16* w, float* u, float* s_ckpt, float* ws,
                          int B, int T, int H, int accumulate, void* stream) {
  const int NC = wkv6c_chunks(T);
  float* ds_ckpt = ws;                                      // [B,H,NC,N,N]
  float* dupart = ds_ckpt + (int64_t)B * H * NC * N * N;  // [B,H,NC,N]
  if (int rc = mn_launch("wkv6_chunked_dstate", wkv6c_dstate_kernel<N>, dim3(H, B), dim3(N), 0,
                         stream, ds_ckpt, (const float*)dy, (const bf16*)r, (const bf16*)w, T, H,
                         NC))
    return rc;
  if (int rc = mn_launch("wkv6_chunked_grads", wkv6c_grads_kernel<N>, dim3(NC, H, B), dim3(N), 0,
                         stream, dr, dk, dv, dw, dupart, (const float*)dy, (const bf16*)r,
                         (const bf16*)k, (const bf16*)v, (const bf16*)w, (const float*)u,
                         (const float*)s_ckpt, (const float*)ds_ckpt, T, H, NC, accumulate))
    return rc;
  const int64_t rows = (int64_t)B * NC;
  float* part = nullptr;
  if (int rc = mn_reduce::scratch_floats(&part, mn_reduce::col_scratch_floats(rows, H * N, 1),
                                         stream))
    return rc;
  return mn_reduce::col_sums<1>("wkv6_chunked_du", Wkv6cDuTerm{dupart, H, N, NC, 0}, du, nullptr,
                                rows, H * N, MN_ACC_BIT(accumulate, 4), part, stream);
}

}  // namespace

MN_API int mn_wkv6_chunked_sizes(int64_t* host_ckpt_elems, int64_t* host_ws_elems, int B, int T,
                                 int H, int N) {
  if (int rc = mn_check_wkv6_chunked_shape("wkv6_chunked_sizes", B, T, H, N)) return rc;
  MN_REQUIRE(host_ckpt_elems && host_ws_elems, "wkv6_chunked_sizes: NULL output argument");
  *host_ckpt_elems = (int64_t)B * H * wkv6c_chunks(T) * N * N;
  *host_ws_elems = wkv6c_ws_elems(B, T, H, N);
  return 0;
}

MN_API int mn_wkv6_chunked_forward(float* y, float* s_ckpt, mn_bf16* r, mn_bf16* k, mn_bf16* v,
                                   mn_bf16* w, float* u, int B, int T, int H, int N,
                                   void* stream) {
  const char* fn = "wkv6_chunked_forward";
  if (int rc = mn_check_wkv6_chunked_shape(fn, B, T, H, N)) return rc;
  MN_REQUIRE(y && s_ckpt && r && k && v && w && u, "%s: NULL tensor argument", fn);
  if (int rc = mn_check_wkv6_chunked_count(fn, T)) return rc;
#define MN_WKV6C_FWD(NN)                                                                   \
  return wkv6c_forward_launch<NN>(y, s_ckpt, (bf16*)r, (bf16*)k, (bf16*)v, (bf16*)w, u, B, T, \
                                  H, stream)
  switch (N) {
    case 16: MN_WKV6C_FWD(16);
    case 32: MN_WKV6C_FWD(32);
    case 64: MN_WKV6C_FWD(64);
    default: MN_WKV6C_FWD(128);
  }
#undef MN_WKV6C_FWD
}

MN_API int mn_wkv6_chunked_backward(float* dr, float* dk, float* dv, float* dw, float* du,
                                    float* dy, mn_bf16* r, mn_bf16* k, mn_bf16* v, mn_bf16* w,
                                    float* u, float* s_ckpt, float* ws, int B, int T, int H, int N,
                                    int accumulate, void* stream) {
  const char* fn = "wkv6_chunked_backward";
  if (int rc = mn_check_wkv6_chunked_shape(fn, B, T, H, N)) return rc;
  MN_REQUIRE(dr && dk && dv && dw && du && dy && r && k && v && w && u && s_ckpt && ws,
             "%s: NULL tensor argument", fn);
  if (int rc = mn_check_wkv6_chunked_count(fn, T)) return rc;
#define MN_WKV6C_BWD(NN)                                                                       \
  return wkv6c_backward_launch<NN>(dr, dk, dv, dw, du, dy, (bf16*)r, (bf16*)k, (bf16*)v,       \
                                   (bf16*)w, u, s_ckpt, ws, B, T, H, accumulate, stream)
  switch (N) {
    case 16: MN_WKV6C_BWD(16);
    case 32: MN_WKV6C_BWD(32);
    case 64: MN_WKV6C_BWD(64);
    default: MN_WKV6C_BWD(128);
  }
#undef MN_WKV6C_BWD
}
