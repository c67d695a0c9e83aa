#include "common.cuh"
#include <type_traits>
// WKV-7, the RWKV-7 state recurrence (see cuda/kernels.h and shared/REFERENCE.md "WKV-7").
//
// Per (batch b, head h) a state S in R^{NxN}, S[i][j]: i = value channel, j = key channel,
// S_{-1} = 0:
//   d_t = exp(-exp(w_t));  sa_t = S_{t-1} a_t;  S_t = S_{t-1} diag(d_t) + sa_t b_t^T + v_t k_t^T;
//   y_t = S_t r_t.
// Two structures, both one block per (h, b), fp32 state in registers. The forward has one thread
// per row i (block N); the backward P = wkv7_lanes(N) adjacent lanes per row (block N*P; P = 1 for
// N <= 32, N/32 above: see "lane slices" below), so that no kernel spills registers.
// - backstepping (mn_wkv7_*, the original --fast_cuda): forward saves S every 16 steps and sa_t;
//   backward walks t downwards, row i holding column i of S (inverting the recurrence:
//   S_{t-1} = (S_t - v k^T - sa b^T) diag(1/d)) and row i / column i of G = dL/dS_t.
// - recompute (mn_wkv7g_*): same forward; backward re-runs each 16-step chunk forward from its
//   checkpoint into a scratch buffer and reads S_{t-1}, S_t back from it (no inversion).
//   mn_wkv7g_*_f32 are the same kernels instantiated for fp32 inputs (template parameter TI).
//
// Checkpoint convention (shared with cuda/cpu/wkv7.cpp): chunk c = steps 16c .. 16c+15;
//   s_ckpt[b][h][c][j][i] = S_{16c+15}[i][j], i.e. the state at the END of chunk c, stored
//   key-major (the transpose of S), so that forward thread i (row i) writes coalesced.

namespace {

constexpr int WKV7_CHUNK = 16;
constexpr int WKV7G_STATES = WKV7_CHUNK + 1;  // S_{16c-1} .. S_{16c+15} in the scratch buffer

// ---- per-element math -------------------------------------------------------------------------
__host__ __device__ inline float wkv7_decay(float w) { return expf(-expf(w)); }
// d(decay)/dw for decay d = exp(-exp(w))
__host__ __device__ inline float wkv7_ddecay_dw(float w, float d) { return -expf(w) * d; }

// Inputs r, w, k, v, a, b are bf16 (mn_wkv7_*, mn_wkv7g_*) or fp32 (mn_wkv7g_*_f32); the kernels
// are templated on that element type TI and read it only through these.
__device__ inline float load_input(const bf16* p, int64_t i) { return mn_bf16_to_f32(p[i]); }
__device__ inline float load_input(const float* p, int64_t i) { return p[i]; }

__device__ inline int64_t wkv7_index(int b, int t, int h, int i, int T, int H, int N) {
  return (((int64_t)b * T + t) * H + h) * N + i;
}

// ---- lane slices -------------------------------------------------------------------------------
// The backward kernels keep 3 vectors of N fp32 per row in registers (column of S, row and column
// of G). At N >= 64 that does not fit in 255 registers, so there each row is split over
// P = N/32 adjacent lanes of one warp (block N*P threads): lane p of row i holds the entries
// j = jj*P + p, jj < N/P, of each vector (interleaved, so the P lanes read P consecutive shared
// words: no bank conflicts), and dot products are summed over the P lanes with shuffles.
// N <= 32 keeps one thread per row (P = 1, no shuffles). The forward keeps N per thread (P = 1).
// Per thread that is 3 x 32 state registers at N = 64 (block 128) and N = 128 (block 512, where the
// register file allows 128 per thread); ptxas fits both in 128 registers on sm_80 and sm_90.
__host__ __device__ constexpr int wkv7_lanes(int N) { return N >= 64 ? N / 32 : 1; }

// Sum of x over the P adjacent lanes of a row (a butterfly of xor shuffles). IEEE addition is
// commutative, so every lane of the row ends with the bitwise same value, run after run.
// Every lane of the warp must call it.
template <int P>
__device__ inline float wkv7_lane_sum(float x) {
#pragma unroll
  for (int m = 1; m < P; m <<= 1) x += __shfl_xor_sync(0xffffffffu, x, m);
  return x;
}

// Partial dot product of this lane's slice x[jj] (entry j = jj*P + p) with a full vector y[N].
template <int NS, int P>
__device__ inline float wkv7_slice_dot(const float (&x)[NS], const float* y, int p) {
  float acc = 0.0f;
#pragma unroll
  for (int jj = 0; jj < NS; jj++) acc += x[jj] * y[jj * P + p];
  return acc;
}

// ---- forward pieces (a thread owns the slice s of row i of S) ---------------------------------
// s <- s diag(d) + sa b^T + v k^T on the slice (sa = the full (S a)[i], vi = v[i]).
template <int NS, int P>
__device__ inline void wkv7_row_update(float (&s)[NS], const float* d, const float* b,
                                       const float* k, float sa, float vi, int p) {
#pragma unroll
  for (int jj = 0; jj < NS; jj++) {
    const int j = jj * P + p;
    s[jj] = s[jj] * d[j] + sa * b[j] + vi * k[j];
  }
}

// ---- backward pieces (slices sc of S[:][i], grow of G[i][:], gcol of G[:][i]) -----------------
// Inputs of one step, staged in shared memory by the block (all [N]).
struct Wkv7Stage {
  float *r, *d, *k, *v, *a, *b, *dy, *sa, *dsa;
};

// Own (index i) values of one step.
struct Wkv7Own {
  float r, w, d, k, v, a, b, dy;
};

// G_t = G_t(incoming) + dy_t r_t^T, on the slices of row i and column i.
template <int NS, int P>
__device__ inline void wkv7_add_dy_r(float (&grow)[NS], float (&gcol)[NS], const Wkv7Stage& s,
                                     const Wkv7Own& o, int p) {
#pragma unroll
  for (int jj = 0; jj < NS; jj++) {
    const int j = jj * P + p;
    grow[jj] += o.dy * s.r[j];
    gcol[jj] += s.dy[j] * o.r;
  }
}

// With sc = column i of S_{t-1} and G = G_t: the gradients of step t (accumulated into the outputs
// at `ind` by lane 0 of the row), then G <- G_{t-1} (without the dy_{t-1} r_{t-1}^T term, added by
// the next step). Contains a block barrier and shuffles: every thread of the block must call it.
// BACKSTEP: sc comes in as column i of S_t and is first turned into S_{t-1} by inverting the
// recurrence, S_{t-1}[j][i] = (S_t - v k^T - sa b^T)[j][i] / d[i], in the same loop (one pass over
// the staged v, sa: a separate pass lets the compiler keep them in registers, which spills at
// N=128 on sm_80).
// G1: the element type of dk, dv (and dr), G2: of dw, da, db: fp32, or bf16 (the WKV operands'
// bf16 gradients, as the original's kernel gives them; mn_put_grad).
template <int NS, int P, bool BACKSTEP, class G1 = float, class G2 = float>
__device__ inline void wkv7_grad_step(float (&sc)[NS], float (&grow)[NS], float (&gcol)[NS],
                                      const Wkv7Stage& s, const Wkv7Own& o, int i, int p,
                                      int64_t ind, G2* dw, G1* dk, G1* dv, G2* da, G2* db,
                                      int acc) {
  float dd = 0.0f, dki = 0.0f, dbi = 0.0f, dvi = 0.0f, dsai = 0.0f;
  const float inv_d = BACKSTEP ? 1.0f / o.d : 0.0f;
#pragma unroll
  for (int jj = 0; jj < NS; jj++) {
    const int j = jj * P + p;
    if constexpr (BACKSTEP) sc[jj] = (sc[jj] - s.v[j] * o.k - s.sa[j] * o.b) * inv_d;
    dd += gcol[jj] * sc[jj];     // sum_j G[j][i] S_{t-1}[j][i]
    dki += gcol[jj] * s.v[j];    // (G^T v)[i]
    dbi += gcol[jj] * s.sa[j];   // (G^T sa)[i]
    dvi += grow[jj] * s.k[j];    // (G k)[i]
    dsai += grow[jj] * s.b[j];   // (G b)[i]
  }
  dd = wkv7_lane_sum<P>(dd);
  dki = wkv7_lane_sum<P>(dki);
  dbi = wkv7_lane_sum<P>(dbi);
  dvi = wkv7_lane_sum<P>(dvi);
  dsai = wkv7_lane_sum<P>(dsai);
  if (p == 0) s.dsa[i] = dsai;  // the previous step's readers of dsa passed the staging barriers
  __syncthreads();
  const float dai = wkv7_lane_sum<P>(wkv7_slice_dot<NS, P>(sc, s.dsa, p));  // (S_{t-1}^T dsa)[i]
#pragma unroll
  for (int jj = 0; jj < NS; jj++) {
    const int j = jj * P + p;
    grow[jj] = grow[jj] * s.d[j] + dsai * s.a[j];
    gcol[jj] = gcol[jj] * o.d + o.a * s.dsa[j];
  }
  if (p == 0) {
    mn_put_grad(dw[ind], dd * wkv7_ddecay_dw(o.w, o.d), MN_ACC_BIT(acc, 1));
    mn_put_grad(dk[ind], dki, MN_ACC_BIT(acc, 2));
    mn_put_grad(dv[ind], dvi, MN_ACC_BIT(acc, 3));
    mn_put_grad(da[ind], dai, MN_ACC_BIT(acc, 4));
    mn_put_grad(db[ind], dbi, MN_ACC_BIT(acc, 5));
  }
}

// Loads step t's inputs: own values into `o` (every lane of the row), and the staged copies for
// the block (lane 0 of the row). Two barriers: nobody still reads the previous step's stage when
// it is overwritten, and all of it is written before anyone reads it.
template <typename TI>
__device__ inline void wkv7_stage(const Wkv7Stage& s, Wkv7Own& o, int i, int p, int64_t ind,
                                  const TI* r_, const TI* w_, const TI* k_, const TI* v_,
                                  const TI* a_, const TI* b_, const float* dy_) {
  o.r = load_input(r_, ind);
  o.w = load_input(w_, ind);
  o.d = wkv7_decay(o.w);
  o.k = load_input(k_, ind);
  o.v = load_input(v_, ind);
  o.a = load_input(a_, ind);
  o.b = load_input(b_, ind);
  o.dy = dy_[ind];
  __syncthreads();
  if (p == 0) {
    s.r[i] = o.r;
    s.d[i] = o.d;
    s.k[i] = o.k;
    s.v[i] = o.v;
    s.a[i] = o.a;
    s.b[i] = o.b;
    s.dy[i] = o.dy;
  }
}

// ---- kernels ----------------------------------------------------------------------------------
// grid (H, B), block N. Writes y [B,T,H,N], s_ckpt [B,H,T/16,N,N] (see the convention above) and,
// when sa_out != nullptr, sa [B,T,H,N].
template <int N, typename TI>
__global__ void __launch_bounds__(N)
    wkv7_forward_kernel(float* y, float* s_ckpt, float* sa_out, const TI* r_, const TI* w_,
                        const TI* k_, const TI* v_, const TI* a_, const TI* b_, int T, int H) {
  const int h = blockIdx.x, bb = blockIdx.y, i = threadIdx.x;
  __shared__ float r[N], d[N], k[N], a[N], b[N];
  float s[N];  // row i of S
#pragma unroll
  for (int j = 0; j < N; j++) s[j] = 0.0f;
  float* ckpt = s_ckpt + ((int64_t)bb * H + h) * (T / WKV7_CHUNK) * N * N;

  for (int t = 0; t < T; t++) {
    const int64_t ind = wkv7_index(bb, t, h, i, T, H, N);
    const float vi = load_input(v_, ind);
    const float ri = load_input(r_, ind), di = wkv7_decay(load_input(w_, ind));
    const float ki = load_input(k_, ind), ai = load_input(a_, ind);
    const float bi = load_input(b_, ind);
    __syncthreads();  // the previous step's readers are done
    r[i] = ri;
    d[i] = di;
    k[i] = ki;
    a[i] = ai;
    b[i] = bi;
    __syncthreads();

    const float sa = wkv7_slice_dot<N, 1>(s, a, 0);
    if (sa_out) sa_out[ind] = sa;
    wkv7_row_update<N, 1>(s, d, b, k, sa, vi, 0);
    y[ind] = wkv7_slice_dot<N, 1>(s, r, 0);

    if ((t + 1) % WKV7_CHUNK == 0) {
      float* dst = ckpt + (int64_t)(t / WKV7_CHUNK) * N * N + i;
#pragma unroll
      for (int j = 0; j < N; j++) dst[j * N] = s[j];
    }
  }
}

// Backstepping backward. grid (H, B), block N*P (lane p of row i is thread i*P + p).
// At N = 128 the state slices fill the registers and a runtime accumulate mask made ptxas spill:
// there kAcc fixes it at compile time (all six added into, or all overwritten; the launcher
// zero-fills the overwritten ones of a mixed mask). Smaller N take the mask `acc_in` at run time
// (a compile-time flag made ptxas spill at N = 32 on sm_80 instead). G1: the element type of dr,
// dk, dv; G2: of dw, da, db (wkv7_grad_step).
template <int N, bool kAcc, class G1, class G2>
__global__ void __launch_bounds__(N * wkv7_lanes(N))
    wkv7_backward_kernel(G1* dr, G2* dw, G1* dk, G1* dv, G2* da, G2* db,
                         const float* dy_, const bf16* r_, const bf16* w_, const bf16* k_,
                         const bf16* v_, const bf16* a_, const bf16* b_, const float* s_ckpt,
                         const float* sa_, int T, int H, int acc_in) {
  const int acc = N == 128 ? (kAcc ? -1 : 0) : acc_in;
  constexpr int P = wkv7_lanes(N), NS = N / P;
  const int h = blockIdx.x, bb = blockIdx.y, i = threadIdx.x / P, p = threadIdx.x % P;
  __shared__ float r[N], d[N], k[N], v[N], a[N], b[N], dy[N], sa[N], dsa[N];
  const Wkv7Stage st{r, d, k, v, a, b, dy, sa, dsa};
  float sc[NS], grow[NS], gcol[NS];  // slices of S[:][i], G[i][:], G[:][i]
#pragma unroll
  for (int jj = 0; jj < NS; jj++) sc[jj] = grow[jj] = gcol[jj] = 0.0f;
  const float* ckpt = s_ckpt + ((int64_t)bb * H + h) * (T / WKV7_CHUNK) * N * N;

  for (int t = T - 1; t >= 0; t--) {
    const int64_t ind = wkv7_index(bb, t, h, i, T, H, N);
    Wkv7Own o;
    const float sai = sa_[ind];
    wkv7_stage(st, o, i, p, ind, r_, w_, k_, v_, a_, b_, dy_);
    if (p == 0) sa[i] = sai;
    __syncthreads();

    if ((t + 1) % WKV7_CHUNK == 0) {  // reload S_t: row i of the checkpoint = column i of S
      const float* src = ckpt + (int64_t)(t / WKV7_CHUNK) * N * N + (int64_t)i * N + p;
#pragma unroll
      for (int jj = 0; jj < NS; jj++) sc[jj] = src[jj * P];
    }
    const float dri = wkv7_lane_sum<P>(wkv7_slice_dot<NS, P>(sc, dy, p));  // (S_t^T dy)[i]
    if (p == 0) mn_put_grad(dr[ind], dri, MN_ACC_BIT(acc, 0));
    wkv7_add_dy_r<NS, P>(grow, gcol, st, o, p);
    // backsteps sc to S_{t-1}, then the gradients of step t
    wkv7_grad_step<NS, P, true, G1, G2>(sc, grow, gcol, st, o, i, p, ind, dw, dk, dv, da, db, acc);
  }
}

// Recompute backward. grid (H, B), block N*P (lane p of row i is thread i*P + p). ws: scratch
// [B,H,17,N,N], ws[b][h][m][i][j] = S_{16c-1+m}[i][j] for the chunk c in progress (value index i
// first).
template <int N, typename TI>
__global__ void __launch_bounds__(N * wkv7_lanes(N))
    wkv7g_backward_kernel(float* dr, float* dw, float* dk, float* dv, float* da, float* db,
                          const float* dy_, const TI* r_, const TI* w_, const TI* k_,
                          const TI* v_, const TI* a_, const TI* b_, const float* s_ckpt,
                          float* ws, int T, int H, int acc) {
  constexpr int P = wkv7_lanes(N), NS = N / P;
  const int h = blockIdx.x, bb = blockIdx.y, i = threadIdx.x / P, p = threadIdx.x % P;
  __shared__ float r[N], d[N], k[N], v[N], a[N], b[N], dy[N], sa[N], dsa[N];
  __shared__ float sa_chunk[WKV7_CHUNK][N];  // sa_t of the chunk's steps, recomputed
  const Wkv7Stage st{r, d, k, v, a, b, dy, sa, dsa};
  float grow[NS], gcol[NS];  // slices of G[i][:], G[:][i]
#pragma unroll
  for (int jj = 0; jj < NS; jj++) grow[jj] = gcol[jj] = 0.0f;
  const int nchunks = T / WKV7_CHUNK;
  const float* ckpt = s_ckpt + ((int64_t)bb * H + h) * nchunks * N * N;
  float* states = ws + ((int64_t)bb * H + h) * WKV7G_STATES * N * N;

  for (int c = nchunks - 1; c >= 0; c--) {
    // Phase A: the lanes of row i re-run it forward over the chunk from S_{16c-1} (checkpoint
    // c-1, or 0), each on its slice.
    {
      float s[NS];  // slice of S[i][:]
      if (c > 0) {
        const float* src = ckpt + (int64_t)(c - 1) * N * N + (int64_t)p * N + i;
#pragma unroll
        for (int jj = 0; jj < NS; jj++) s[jj] = src[(int64_t)jj * P * N];  // transposed
      } else {
#pragma unroll
        for (int jj = 0; jj < NS; jj++) s[jj] = 0.0f;
      }
      __syncthreads();  // the previous chunk's phase B is done with `states` and sa_chunk
      float* row = states + (int64_t)i * N + p;
#pragma unroll
      for (int jj = 0; jj < NS; jj++) row[jj * P] = s[jj];
      for (int m = 0; m < WKV7_CHUNK; m++) {
        const int64_t ind = wkv7_index(bb, c * WKV7_CHUNK + m, h, i, T, H, N);
        const float vi = load_input(v_, ind), di = wkv7_decay(load_input(w_, ind));
        const float ki = load_input(k_, ind), ai = load_input(a_, ind);
        const float bi = load_input(b_, ind);
        __syncthreads();
        if (p == 0) {
          d[i] = di;
          k[i] = ki;
          a[i] = ai;
          b[i] = bi;
        }
        __syncthreads();
        const float sai = wkv7_lane_sum<P>(wkv7_slice_dot<NS, P>(s, a, p));
        if (p == 0) sa_chunk[m][i] = sai;
        wkv7_row_update<NS, P>(s, d, b, k, sai, vi, p);
        row = states + (int64_t)(m + 1) * N * N + (int64_t)i * N + p;
#pragma unroll
        for (int jj = 0; jj < NS; jj++) row[jj * P] = s[jj];
      }
    }
    // Phase B: the chunk's steps downwards, S_t and S_{t-1} read back by column.
    for (int m = WKV7_CHUNK - 1; m >= 0; m--) {
      const int64_t ind = wkv7_index(bb, c * WKV7_CHUNK + m, h, i, T, H, N);
      Wkv7Own o;
      wkv7_stage(st, o, i, p, ind, r_, w_, k_, v_, a_, b_, dy_);
      if (p == 0) sa[i] = sa_chunk[m][i];
      __syncthreads();  // also orders phase A's writes of `states` before the reads below

      float sc[NS];  // slice of S_t[:][i], then of S_{t-1}[:][i]
      const float* cur = states + (int64_t)(m + 1) * N * N + (int64_t)p * N + i;
#pragma unroll
      for (int jj = 0; jj < NS; jj++) sc[jj] = cur[(int64_t)jj * P * N];  // S_t[j][i]
      const float dri = wkv7_lane_sum<P>(wkv7_slice_dot<NS, P>(sc, dy, p));
      if (p == 0) MN_GRAD_STORE(dr[ind], dri, MN_ACC_BIT(acc, 0));
      wkv7_add_dy_r<NS, P>(grow, gcol, st, o, p);
      const float* prev = states + (int64_t)m * N * N + (int64_t)p * N + i;
#pragma unroll
      for (int jj = 0; jj < NS; jj++) sc[jj] = prev[(int64_t)jj * P * N];  // S_{t-1}[j][i]
      wkv7_grad_step<NS, P, false>(sc, grow, gcol, st, o, i, p, ind, dw, dk, dv, da, db, acc);
    }
  }
}

// ---- host side ----------------------------------------------------------------------------------
int wkv7_check(const char* fn, int B, int T, int H, int N) {
  MN_REQUIRE(B > 0 && T > 0 && H > 0, "%s: B = %d, T = %d, H = %d must all be > 0", fn, B, T, H);
  MN_REQUIRE(T % WKV7_CHUNK == 0, "%s: T = %d is not a multiple of the chunk length %d", fn, T,
             WKV7_CHUNK);
  MN_REQUIRE(N == 16 || N == 32 || N == 64 || N == 128,
             "%s: head size N = %d is not supported (16, 32, 64 or 128)", fn, N);
  MN_REQUIRE(B <= 65535, "%s: B = %d exceeds the grid limit 65535", fn, B);
  return 0;
}

// The device element type of an ABI input pointer.
inline const bf16* dev_input(const mn_bf16* p) { return (const bf16*)p; }
inline const float* dev_input(const float* p) { return p; }

template <int N, typename TI>
int wkv7_forward_launch(const char* name, float* y, float* s_ckpt, float* sa, const TI* r,
                        const TI* w, const TI* k, const TI* v, const TI* a, const TI* b, int B,
                        int T, int H, void* stream) {
  return mn_launch(name, wkv7_forward_kernel<N, TI>, dim3(H, B), dim3(N), 0, stream, y, s_ckpt, sa,
                   r, w, k, v, a, b, T, H);
}

template <int N, class G1, class G2>
int wkv7_backward_launch(G1* dr, G2* dw, G1* dk, G1* dv, G2* da, G2* db, float* dy, mn_bf16* r,
                         mn_bf16* w, mn_bf16* k, mn_bf16* v, mn_bf16* a, mn_bf16* b,
                         float* s_ckpt, float* sa, int B, int T, int H, int accumulate,
                         void* stream) {
  const dim3 block(N * wkv7_lanes(N));  // P lanes per row
  int mask = accumulate & 63;
  if (N == 128 && mask != 0 && mask != 63) {  // mixed: zero the overwritten ones, add into all
    void* grads[6] = {dr, dw, dk, dv, da, db};
    const bool bf16s[6] = {std::is_same_v<G1, bf16>, std::is_same_v<G2, bf16>,
                           std::is_same_v<G1, bf16>, std::is_same_v<G1, bf16>,
                           std::is_same_v<G2, bf16>, std::is_same_v<G2, bf16>};
    const int64_t n = (int64_t)B * T * H * N;  // even (N >= 16): a bf16 one is n / 2 zero floats
    for (int i = 0; i < 6; i++) {
      if (MN_ACC_BIT(mask, i)) continue;
      if (int rc = mn_fill((float*)grads[i], 0.0f, bf16s[i] ? n / 2 : n, stream)) return rc;
    }
    mask = 63;
  }
  auto kernel = wkv7_backward_kernel<N, true, G1, G2>;
  if constexpr (N == 128) {  // only N = 128 instantiates the overwriting kernel
    if (!mask) kernel = wkv7_backward_kernel<N, false, G1, G2>;
  }
  return mn_launch("wkv7_backward", kernel, dim3(H, B), block, 0, stream, dr, dw, dk, dv, da, db,
                   (const float*)dy, (const bf16*)r, (const bf16*)w, (const bf16*)k,
                   (const bf16*)v, (const bf16*)a, (const bf16*)b, (const float*)s_ckpt,
                   (const float*)sa, T, H, mask);
}

template <int N, typename TI>
int wkv7g_backward_launch(const char* name, float* dr, float* dw, float* dk, float* dv, float* da,
                          float* db, float* dy, const TI* r, const TI* w, const TI* k, const TI* v,
                          const TI* a, const TI* b, float* s_ckpt, float* ws, int B, int T, int H,
                          int accumulate, void* stream) {
  const dim3 block(N * wkv7_lanes(N));  // P lanes per row
  return mn_launch(name, wkv7g_backward_kernel<N, TI>, dim3(H, B), block, 0, stream, dr, dw, dk, dv,
                   da, db, (const float*)dy, r, w, k, v, a, b, (const float*)s_ckpt, ws, T, H,
                   accumulate);
}

// TA: the ABI input type (mn_bf16 or float).
template <typename TA>
int wkv7_forward_common(const char* name, float* y, float* s_ckpt, float* sa, TA* r, TA* w, TA* k,
                        TA* v, TA* a, TA* b, int B, int T, int H, int N, void* stream) {
  if (int rc = wkv7_check(name, B, T, H, N)) return rc;
  MN_REQUIRE(y && s_ckpt && r && w && k && v && a && b, "%s: NULL tensor argument", name);
#define MN_WKV7_FWD(NN)                                                                          \
  return wkv7_forward_launch<NN>(name, y, s_ckpt, sa, dev_input(r), dev_input(w), dev_input(k), \
                                 dev_input(v), dev_input(a), dev_input(b), B, T, H, stream)
  switch (N) {
    case 16: MN_WKV7_FWD(16);
    case 32: MN_WKV7_FWD(32);
    case 64: MN_WKV7_FWD(64);
    default: MN_WKV7_FWD(128);
  }
#undef MN_WKV7_FWD
}

template <typename TA>
int wkv7g_backward_common(const char* name, float* dr, float* dw, float* dk, float* dv, float* da,
                          float* db, float* dy, TA* r, TA* w, TA* k, TA* v, TA* a, TA* b,
                          float* s_ckpt, float* ws, int B, int T, int H, int N, int accumulate,
                          void* stream) {
  if (int rc = wkv7_check(name, B, T, H, N)) return rc;
  MN_REQUIRE(dr && dw && dk && dv && da && db && dy && r && w && k && v && a && b && s_ckpt && ws,
             "%s: NULL tensor argument", name);
#define MN_WKV7G_BWD(NN)                                                                       \
  return wkv7g_backward_launch<NN>(name, dr, dw, dk, dv, da, db, dy, dev_input(r), dev_input(w), \
                                   dev_input(k), dev_input(v), dev_input(a), dev_input(b),     \
                                   s_ckpt, ws, B, T, H, accumulate, stream)
  switch (N) {
    case 16: MN_WKV7G_BWD(16);
    case 32: MN_WKV7G_BWD(32);
    case 64: MN_WKV7G_BWD(64);
    default: MN_WKV7G_BWD(128);
  }
#undef MN_WKV7G_BWD
}

}  // namespace

MN_API int mn_wkv7_forward(float* y, float* s_ckpt, float* sa, mn_bf16* r, mn_bf16* w, mn_bf16* k,
                           mn_bf16* v, mn_bf16* a, mn_bf16* b, int B, int T, int H, int N,
                           void* stream) {
  if (int rc = wkv7_check("wkv7_forward", B, T, H, N)) return rc;
  MN_REQUIRE(sa, "wkv7_forward: NULL tensor argument (sa)");
  return wkv7_forward_common("wkv7_forward", y, s_ckpt, sa, r, w, k, v, a, b, B, T, H, N, stream);
}

MN_API int mn_wkv7_backward(void* dr, void* dw, void* dk, void* dv, void* da, void* db,
                            float* dy, mn_bf16* r, mn_bf16* w, mn_bf16* k, mn_bf16* v, mn_bf16* a,
                            mn_bf16* b, float* s_ckpt, float* sa, int B, int T, int H, int N,
                            int drkv_bf16, int dwab_bf16, int accumulate, void* stream) {
  if (int rc = wkv7_check("wkv7_backward", B, T, H, N)) return rc;
  MN_REQUIRE(dr && dw && dk && dv && da && db && dy && r && w && k && v && a && b && s_ckpt && sa,
             "wkv7_backward: NULL tensor argument");
  return mn_with_dtypes(drkv_bf16, dwab_bf16, 0, [&](auto t1, auto t2, auto) {
    using G1 = typename decltype(t1)::type;
    using G2 = typename decltype(t2)::type;
#define MN_WKV7_BWD(NN)                                                                         \
  return wkv7_backward_launch<NN, G1, G2>((G1*)dr, (G2*)dw, (G1*)dk, (G1*)dv, (G2*)da, (G2*)db, \
                                          dy, r, w, k, v, a, b, s_ckpt, sa, B, T, H, accumulate, \
                                          stream)
    switch (N) {
      case 16: MN_WKV7_BWD(16);
      case 32: MN_WKV7_BWD(32);
      case 64: MN_WKV7_BWD(64);
      default: MN_WKV7_BWD(128);
    }
#undef MN_WKV7_BWD
  });
}

MN_API int mn_wkv7g_forward(float* y, float* s_ckpt, mn_bf16* r, mn_bf16* w, mn_bf16* k,
                            mn_bf16* v, mn_bf16* a, mn_bf16* b, int B, int T, int H, int N,
                            void* stream) {
  return wkv7_forward_common("wkv7g_forward", y, s_ckpt, (float*)nullptr, r, w, k, v, a, b, B, T,
                             H, N, stream);
}

MN_API int mn_wkv7g_backward(float* dr, float* dw, float* dk, float* dv, float* da, float* db,
                             float* dy, mn_bf16* r, mn_bf16* w, mn_bf16* k, mn_bf16* v, mn_bf16* a,
                             mn_bf16* b, float* s_ckpt, float* ws, int B, int T, int H, int N,
                             int accumulate, void* stream) {
  return wkv7g_backward_common("wkv7g_backward", dr, dw, dk, dv, da, db, dy, r, w, k, v, a, b,
                               s_ckpt, ws, B, T, H, N, accumulate, stream);
}

MN_API int mn_wkv7g_forward_f32(float* y, float* s_ckpt, float* r, float* w, float* k, float* v,
                                float* a, float* b, int B, int T, int H, int N, void* stream) {
  return wkv7_forward_common("wkv7g_forward_f32", y, s_ckpt, (float*)nullptr, r, w, k, v, a, b, B,
                             T, H, N, stream);
}

MN_API int mn_wkv7g_backward_f32(float* dr, float* dw, float* dk, float* dv, float* da, float* db,
                                 float* dy, float* r, float* w, float* k, float* v, float* a,
                                 float* b, float* s_ckpt, float* ws, int B, int T, int H, int N,
                                 int accumulate, void* stream) {
  return wkv7g_backward_common("wkv7g_backward_f32", dr, dw, dk, dv, da, db, dy, r, w, k, v, a, b,
                               s_ckpt, ws, B, T, H, N, accumulate, stream);
}
