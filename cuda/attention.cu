#include "common.cuh"
#include "entry_checks.h"
// Causal attention, FlashAttention-2 structure on CUDA cores (no tensor cores), fp32 accumulation.
// See cuda/kernels.h for the ABI. q, k, v [B,T,H,D] bf16; scale = 1/sqrt(D); query t sees keys
// 0..t. No T x T matrix is ever stored: scores live one (query tile x key tile) at a time in
// shared memory.
//
// Forward: one block per (query tile of 64 rows, head, batch), 8 warps, warp w owning rows
//   8w..8w+7 of the tile. Key/value tiles of 32 rows are staged in shared memory; per key tile:
//   1. scores: lane c computes s[r][c] = scale q_r.k_c for its warp's 8 rows (K stored with a
//      padded row stride D+1 so that the 32 lanes hit 32 different banks);
//   2. online softmax per row (4 lanes per row, 8 keys each, shuffles within the 4):
//      m' = max(m, max_c s), p = exp(s - m'), l = l exp(m - m') + sum_c p, O = O exp(m - m');
//   3. O[r][d] += sum_c p[r][c] v[c][d], lane owning d = lane + 32 j.
//   out = O / l, lse = m + log l.
// Backward (P is recomputed from lse, never stored):
//   a. Delta[b,h,t] = dout_t . out_t (one warp per row) into ws;
//   b. dK/dV: one block per (key tile of 32, head, batch); loops over the query tiles (32 rows)
//      at or after the key tile, recomputing P = exp(scale q.k - lse), dP = dout.v,
//      dS = P (dP - Delta), and accumulating dV += P^T dout, dK += scale dS^T q in registers;
//   c. dQ: one block per (query tile of 32, head, batch); loops over the key tiles up to the
//      diagonal, recomputing the same P and dS, dQ += scale dS K.
//   Every gradient element is owned by exactly one thread of one block, which adds its total to
//   the output once: deterministic, and exactly `+=`.

namespace {

constexpr int ATT_BC = 32;       // keys per tile = warp size: lane c scores key c of the tile
constexpr int ATT_WARPS = 8;     // 256 threads per block
constexpr int ATT_THREADS = ATT_WARPS * 32;
constexpr int ATT_FWD_BR = 64;   // forward query rows per block (8 per warp)
constexpr int ATT_BWD_BR = 32;   // backward query rows per tile (4 per warp)
constexpr int ATT_LDS = ATT_BC + 1;  // row stride of the score / probability tiles

// ---- per-element helpers ----------------------------------------------------------------------
__device__ inline float att_load(const bf16* p, int64_t i) { return mn_bf16_to_f32(p[i]); }
__device__ inline float att_load(const float* p, int64_t i) { return p[i]; }

// Element (b, t, h, 0) of a [B,T,H,D] tensor.
__device__ inline int64_t att_row(int b, int t, int h, int T, int H, int D) {
  return (((int64_t)b * T + t) * H + h) * D;
}

// Stages rows t0 .. t0+rows-1 of head h of a [B,T,H,D] tensor into dst (row stride ld), as fp32;
// rows at or past T are zero. Called by the whole block (no barrier inside).
template <int D, typename TI>
__device__ inline void att_stage_rows(float* dst, int ld, const TI* src, int b, int t0, int rows,
                                      int T, int H, int h) {
  for (int i = threadIdx.x; i < rows * D; i += blockDim.x) {
    const int r = i / D, d = i % D, t = t0 + r;
    dst[r * ld + d] = t < T ? att_load(src, att_row(b, t, h, T, H, D) + d) : 0.0f;
  }
}

// Shared memory of the forward kernel, in floats.
template <int D>
constexpr int att_fwd_smem_floats() {
  return ATT_FWD_BR * D + 2 * ATT_BC * (D + 1) + ATT_FWD_BR * ATT_LDS + ATT_FWD_BR;
}
// Shared memory of both backward kernels, in floats.
template <int D>
constexpr int att_bwd_smem_floats() {
  return 2 * ATT_BWD_BR * D + 2 * ATT_BC * (D + 1) + 2 * ATT_BWD_BR * ATT_LDS + 2 * ATT_BWD_BR;
}

// Minimum resident blocks per SM asked of ptxas for the forward (0: none, its own heuristic).
// On sm_80 at D = 64 that heuristic aims at 4 blocks (64 registers) and spills 4 bytes, while the
// 41.7 KB of shared memory per block let only 3 blocks fit in the SM's 164 KB anyway: asking for 3
// gives it 79 registers, no spill, and the same occupancy. (The CUDA guide's pattern for
// per-architecture launch bounds; sm_90 and the other D keep the default.)
template <int D>
constexpr int att_fwd_min_blocks() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
  return D == 64 ? 3 : 0;
#else
  return 0;
#endif
}

// ---- forward ----------------------------------------------------------------------------------
// grid (ceil(T/64), H, B), block 256. Warp w owns query rows r0 = 8w .. 8w+7 of the tile:
// - scores: lane c = key c of the tile, for the 8 rows;
// - softmax: lane = 4 (row - r0) + g: the 4 lanes of a row take 8 keys each (keys 8g .. 8g+7), so
//   the row max and sum need 2 shuffle steps (instead of 5 per row with a lane per key);
// - P V: lane owns output columns d = lane + 32 j of the 8 rows.
template <int D, typename TI>
__global__ void __launch_bounds__(ATT_THREADS, att_fwd_min_blocks<D>())
    attention_forward_kernel(float* out, float* lse, const TI* q, const TI* k, const TI* v,
                             int T, int H, float scale) {
  constexpr int BR = ATT_FWD_BR, RPW = BR / ATT_WARPS, LDK = D + 1;
  constexpr int DPL = (D + 31) / 32;    // output columns per lane: d = lane + 32 j
  constexpr int LPR = 32 / RPW;         // lanes per row in the softmax phase
  constexpr int KPL = ATT_BC / LPR;     // keys per lane in the softmax phase
  static_assert(RPW * LPR == 32 && KPL * LPR == ATT_BC, "softmax lane layout");
  MN_DYNAMIC_SHARED(float, smem);
  float* sQ = smem;               // [BR][D]
  float* sK = sQ + BR * D;        // [BC][LDK]
  float* sV = sK + ATT_BC * LDK;  // [BC][LDK]
  float* sP = sV + ATT_BC * LDK;  // [BR][LDS] scores, then probabilities
  float* sRow = sP + BR * ATT_LDS;  // [BR] per-row factor: exp(m_old - m_new), finally 1 / l
  const int h = blockIdx.y, b = blockIdx.z;
  const int q0 = blockIdx.x * BR;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, r0 = warp * RPW;
  const int sr = r0 + lane / LPR, sg = lane % LPR;  // softmax phase: row, key group

  att_stage_rows<D>(sQ, D, q, b, q0, BR, T, H, h);
  float m = -INFINITY, l = 0.0f;  // running max and sum of row sr (same in its LPR lanes)
  float o[RPW][DPL];
#pragma unroll
  for (int i = 0; i < RPW; i++)
#pragma unroll
    for (int j = 0; j < DPL; j++) o[i][j] = 0.0f;

  const int last = (q0 + BR < T ? q0 + BR : T) - 1;  // the block's last query
  const int nkt = last / ATT_BC + 1;                  // key tiles up to it
  for (int kt = 0; kt < nkt; kt++) {
    const int k0 = kt * ATT_BC;
    __syncthreads();  // everyone is done with the previous tile's sK, sV, sP
    att_stage_rows<D>(sK, LDK, k, b, k0, ATT_BC, T, H, h);
    att_stage_rows<D>(sV, LDK, v, b, k0, ATT_BC, T, H, h);
    __syncthreads();

    // 1. scaled, masked scores of key k0 + lane against the warp's rows
    {
      float s[RPW];
#pragma unroll
      for (int i = 0; i < RPW; i++) s[i] = 0.0f;
      const float* krow = sK + lane * LDK;
      for (int d = 0; d < D; d++) {
        const float kd = krow[d];
#pragma unroll
        for (int i = 0; i < RPW; i++) s[i] += sQ[(r0 + i) * D + d] * kd;
      }
      const int key = k0 + lane;
#pragma unroll
      for (int i = 0; i < RPW; i++) {
        const int qrow = q0 + r0 + i;
        sP[(r0 + i) * ATT_LDS + lane] = (key <= qrow && key < T) ? s[i] * scale : -INFINITY;
      }
    }
    __syncwarp();  // rows r0.. of sP and sRow are written and read by this warp only
    // 2. online softmax of row sr over keys KPL*sg ..
    {
      float* prow = sP + sr * ATT_LDS + KPL * sg;
      float x[KPL], tmax = -INFINITY;
#pragma unroll
      for (int u = 0; u < KPL; u++) {
        x[u] = prow[u];
        tmax = fmaxf(tmax, x[u]);
      }
      for (int off = 1; off < LPR; off <<= 1)
        tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, off));
      const float mn = fmaxf(m, tmax);
      // mn is finite from the first tile on (key 0 is visible to every row); the guard keeps a
      // row without any visible key so far at p = 0 instead of NaN
      const float mref = mn == -INFINITY ? 0.0f : mn;
      float sum = 0.0f;
#pragma unroll
      for (int u = 0; u < KPL; u++) {
        const float p = expf(x[u] - mref);
        prow[u] = p;
        sum += p;
      }
      for (int off = 1; off < LPR; off <<= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
      const float alpha = expf(m - mref);
      l = l * alpha + sum;
      m = mn;
      if (sg == 0) sRow[sr] = alpha;
    }
    __syncwarp();
    // 3. O = O alpha + P V
#pragma unroll
    for (int i = 0; i < RPW; i++) {
      const float alpha = sRow[r0 + i];
#pragma unroll
      for (int j = 0; j < DPL; j++) o[i][j] *= alpha;
    }
    if (D >= 32 || lane < D) {
      for (int c = 0; c < ATT_BC; c++) {
        float vv[DPL];
#pragma unroll
        for (int j = 0; j < DPL; j++) vv[j] = sV[c * LDK + lane + 32 * j];
#pragma unroll
        for (int i = 0; i < RPW; i++) {
          const float p = sP[(r0 + i) * ATT_LDS + c];
#pragma unroll
          for (int j = 0; j < DPL; j++) o[i][j] += p * vv[j];
        }
      }
    }
  }

  __syncwarp();  // every lane has read the last alpha from sRow
  if (sg == 0) {
    sRow[sr] = 1.0f / l;
    const int t = q0 + sr;
    if (t < T) lse[((int64_t)b * H + h) * T + t] = m + logf(l);
  }
  __syncwarp();
#pragma unroll
  for (int i = 0; i < RPW; i++) {
    const int t = q0 + r0 + i;
    if (t >= T || !(D >= 32 || lane < D)) continue;
    const float inv = sRow[r0 + i];
    float* orow = out + att_row(b, t, h, T, H, D);
#pragma unroll
    for (int j = 0; j < DPL; j++) orow[lane + 32 * j] = o[i][j] * inv;
  }
}

// ---- backward ---------------------------------------------------------------------------------
// Delta[b,h,t] = sum_d dout[b,t,h,d] out[b,t,h,d]; one warp per (b, t, h) row, 8 rows per block.
template <int D>
__global__ void __launch_bounds__(ATT_THREADS)
    attention_delta_kernel(float* delta, const float* dout, const float* out, int B, int T,
                           int H) {
  const int64_t row = (int64_t)blockIdx.x * ATT_WARPS + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= (int64_t)B * T * H) return;  // whole warps leave together
  const float* a = dout + row * D;
  const float* o = out + row * D;
  float acc = 0.0f;
  for (int d = lane; d < D; d += 32) acc += a[d] * o[d];
  acc = mn_warp_sum(acc);
  const int h = (int)(row % H), t = (int)((row / H) % T), b = (int)(row / ((int64_t)H * T));
  if (lane == 0) delta[((int64_t)b * H + h) * T + t] = acc;
}

// The staged tiles of one (query tile, key tile) pair of the backward kernels.
struct AttBwdTiles {
  float* Q;      // [BR][D]   q rows of the query tile
  float* dO;     // [BR][D]   dout rows
  float* K;      // [BC][D+1] k rows of the key tile
  float* V;      // [BC][D+1] v rows
  float* P;      // [BR][LDS] probabilities
  float* dS;     // [BR][LDS] dS = P (dP - Delta)
  float* L;      // [BR]      lse of the query rows (0 past T)
  float* Delta;  // [BR]      Delta of the query rows (0 past T)
};

template <int D>
__device__ inline AttBwdTiles att_bwd_tiles(float* smem) {
  AttBwdTiles s;
  s.Q = smem;
  s.dO = s.Q + ATT_BWD_BR * D;
  s.K = s.dO + ATT_BWD_BR * D;
  s.V = s.K + ATT_BC * (D + 1);
  s.P = s.V + ATT_BC * (D + 1);
  s.dS = s.P + ATT_BWD_BR * ATT_LDS;
  s.L = s.dS + ATT_BWD_BR * ATT_LDS;
  s.Delta = s.L + ATT_BWD_BR;
  return s;
}

// Stages the query-side rows q0.. of the tile: q, dout, lse, Delta (whole block, no barrier).
template <int D, typename TI>
__device__ inline void att_stage_queries(const AttBwdTiles& s, const TI* q, const float* dout,
                                         const float* lse, const float* delta, int b, int q0,
                                         int T, int H, int h) {
  att_stage_rows<D>(s.Q, D, q, b, q0, ATT_BWD_BR, T, H, h);
  att_stage_rows<D>(s.dO, D, dout, b, q0, ATT_BWD_BR, T, H, h);
  for (int r = threadIdx.x; r < ATT_BWD_BR; r += blockDim.x) {
    const int t = q0 + r;
    const int64_t i = ((int64_t)b * H + h) * T + t;
    s.L[r] = t < T ? lse[i] : 0.0f;
    s.Delta[r] = t < T ? delta[i] : 0.0f;
  }
}

// P and dS of the staged pair (query rows q0.., keys k0..): lane c = key, warp w = rows 4w..4w+3.
// Masked entries (key > query, or query past T) are exactly 0 in both.
template <int D>
__device__ inline void att_bwd_probs(const AttBwdTiles& s, int q0, int k0, int T, float scale) {
  constexpr int RPW = ATT_BWD_BR / ATT_WARPS, LDK = D + 1;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, r0 = warp * RPW;
  float sc[RPW], dp[RPW];
#pragma unroll
  for (int i = 0; i < RPW; i++) sc[i] = dp[i] = 0.0f;
  const float* krow = s.K + lane * LDK;
  const float* vrow = s.V + lane * LDK;
  for (int d = 0; d < D; d++) {
    const float kd = krow[d], vd = vrow[d];
#pragma unroll
    for (int i = 0; i < RPW; i++) {
      sc[i] += s.Q[(r0 + i) * D + d] * kd;
      dp[i] += s.dO[(r0 + i) * D + d] * vd;
    }
  }
  const int key = k0 + lane;
#pragma unroll
  for (int i = 0; i < RPW; i++) {
    const int r = r0 + i, qrow = q0 + r;
    const bool visible = key <= qrow && qrow < T;
    const float p = visible ? expf(sc[i] * scale - s.L[r]) : 0.0f;
    s.P[r * ATT_LDS + lane] = p;
    s.dS[r * ATT_LDS + lane] = visible ? p * (dp[i] - s.Delta[r]) : 0.0f;
  }
}

// dK, dV: grid (ceil(T/32), H, B), block 256. Thread (warp w, lane) owns keys c = 4w + i and
// columns d = lane + 32 j.
template <int D, typename TI>
__global__ void __launch_bounds__(ATT_THREADS)
    attention_backward_dkv_kernel(float* dk, float* dv, const float* dout, const float* lse,
                                  const float* delta, const TI* q, const TI* k, const TI* v,
                                  int T, int H, float scale, int acc) {
  constexpr int RPW = ATT_BC / ATT_WARPS, DPL = (D + 31) / 32, LDK = D + 1;
  MN_DYNAMIC_SHARED(float, smem);
  const AttBwdTiles s = att_bwd_tiles<D>(smem);
  const int h = blockIdx.y, b = blockIdx.z, k0 = blockIdx.x * ATT_BC;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, c0 = warp * RPW;
  const bool active = D >= 32 || lane < D;

  att_stage_rows<D>(s.K, LDK, k, b, k0, ATT_BC, T, H, h);
  att_stage_rows<D>(s.V, LDK, v, b, k0, ATT_BC, T, H, h);
  float gk[RPW][DPL], gv[RPW][DPL];
#pragma unroll
  for (int i = 0; i < RPW; i++)
#pragma unroll
    for (int j = 0; j < DPL; j++) gk[i][j] = gv[i][j] = 0.0f;

  // query tiles that can see a key of this tile: those ending at or after k0
  for (int q0 = (k0 / ATT_BWD_BR) * ATT_BWD_BR; q0 < T; q0 += ATT_BWD_BR) {
    __syncthreads();  // the previous query tile is no longer read
    att_stage_queries<D>(s, q, dout, lse, delta, b, q0, T, H, h);
    __syncthreads();
    att_bwd_probs<D>(s, q0, k0, T, scale);
    __syncthreads();
    if (active) {
      for (int r = 0; r < ATT_BWD_BR; r++) {
        float qd[DPL], dod[DPL];
#pragma unroll
        for (int j = 0; j < DPL; j++) {
          qd[j] = s.Q[r * D + lane + 32 * j];
          dod[j] = s.dO[r * D + lane + 32 * j];
        }
#pragma unroll
        for (int i = 0; i < RPW; i++) {
          const float p = s.P[r * ATT_LDS + c0 + i], ds = s.dS[r * ATT_LDS + c0 + i];
#pragma unroll
          for (int j = 0; j < DPL; j++) {
            gv[i][j] += p * dod[j];
            gk[i][j] += ds * qd[j];
          }
        }
      }
    }
  }

  if (!active) return;
#pragma unroll
  for (int i = 0; i < RPW; i++) {
    const int t = k0 + c0 + i;
    if (t >= T) continue;
    const int64_t base = att_row(b, t, h, T, H, D);
#pragma unroll
    for (int j = 0; j < DPL; j++) {
      MN_GRAD_STORE(dk[base + lane + 32 * j], gk[i][j] * scale, MN_ACC_BIT(acc, 0));
      MN_GRAD_STORE(dv[base + lane + 32 * j], gv[i][j], MN_ACC_BIT(acc, 1));
    }
  }
}

// dQ: grid (ceil(T/32), H, B), block 256. Thread (warp w, lane) owns query rows r = 4w + i and
// columns d = lane + 32 j.
template <int D, typename TI>
__global__ void __launch_bounds__(ATT_THREADS)
    attention_backward_dq_kernel(float* dq, const float* dout, const float* lse,
                                 const float* delta, const TI* q, const TI* k, const TI* v,
                                 int T, int H, float scale, int acc) {
  constexpr int RPW = ATT_BWD_BR / ATT_WARPS, DPL = (D + 31) / 32, LDK = D + 1;
  MN_DYNAMIC_SHARED(float, smem);
  const AttBwdTiles s = att_bwd_tiles<D>(smem);
  const int h = blockIdx.y, b = blockIdx.z, q0 = blockIdx.x * ATT_BWD_BR;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, r0 = warp * RPW;
  const bool active = D >= 32 || lane < D;

  att_stage_queries<D>(s, q, dout, lse, delta, b, q0, T, H, h);
  float g[RPW][DPL];
#pragma unroll
  for (int i = 0; i < RPW; i++)
#pragma unroll
    for (int j = 0; j < DPL; j++) g[i][j] = 0.0f;

  const int last = (q0 + ATT_BWD_BR < T ? q0 + ATT_BWD_BR : T) - 1;  // the tile's last query
  for (int k0 = 0; k0 <= last; k0 += ATT_BC) {
    __syncthreads();  // the previous key tile is no longer read
    att_stage_rows<D>(s.K, LDK, k, b, k0, ATT_BC, T, H, h);
    att_stage_rows<D>(s.V, LDK, v, b, k0, ATT_BC, T, H, h);
    __syncthreads();
    att_bwd_probs<D>(s, q0, k0, T, scale);
    __syncthreads();
    if (active) {
      for (int c = 0; c < ATT_BC; c++) {
        float kd[DPL];
#pragma unroll
        for (int j = 0; j < DPL; j++) kd[j] = s.K[c * LDK + lane + 32 * j];
#pragma unroll
        for (int i = 0; i < RPW; i++) {
          const float ds = s.dS[(r0 + i) * ATT_LDS + c];
#pragma unroll
          for (int j = 0; j < DPL; j++) g[i][j] += ds * kd[j];
        }
      }
    }
  }

  if (!active) return;
#pragma unroll
  for (int i = 0; i < RPW; i++) {
    const int t = q0 + r0 + i;
    if (t >= T) continue;
    const int64_t base = att_row(b, t, h, T, H, D);
#pragma unroll
    for (int j = 0; j < DPL; j++) MN_GRAD_STORE(dq[base + lane + 32 * j], g[i][j] * scale, acc);
  }
}

// ---- host side ----------------------------------------------------------------------------------
inline unsigned att_tiles(int T, int rows) { return (unsigned)((T + rows - 1) / rows); }

template <int D, typename TI>
int att_forward(float* out, float* lse, const TI* q, const TI* k, const TI* v, int B, int T, int H,
                void* stream) {
  const float scale = 1.0f / sqrtf((float)D);
  return mn_launch("attention_forward", attention_forward_kernel<D, TI>,
                   dim3(att_tiles(T, ATT_FWD_BR), H, B), dim3(ATT_THREADS),
                   sizeof(float) * att_fwd_smem_floats<D>(), stream, out, lse, q, k, v, T, H,
                   scale);
}

template <int D, typename TI>
int att_backward(float* dq, float* dk, float* dv, float* dout, float* out, float* lse,
                 const TI* q, const TI* k, const TI* v, float* ws, int B, int T, int H,
                 int accumulate, void* stream) {
  const float scale = 1.0f / sqrtf((float)D);
  const int64_t rows = (int64_t)B * T * H;
  if (int rc = mn_launch("attention_backward_delta", attention_delta_kernel<D>,
                         dim3((unsigned)((rows + ATT_WARPS - 1) / ATT_WARPS)), dim3(ATT_THREADS),
                         0, stream, ws, (const float*)dout, (const float*)out, B, T, H))
    return rc;
  const size_t smem = sizeof(float) * att_bwd_smem_floats<D>();
  if (int rc = mn_launch("attention_backward_dkv", attention_backward_dkv_kernel<D, TI>,
                         dim3(att_tiles(T, ATT_BC), H, B), dim3(ATT_THREADS), smem, stream, dk, dv,
                         (const float*)dout, (const float*)lse, (const float*)ws, q, k, v, T, H,
                         scale, accumulate >> 1 & 3))
    return rc;
  return mn_launch("attention_backward_dq", attention_backward_dq_kernel<D, TI>,
                   dim3(att_tiles(T, ATT_BWD_BR), H, B), dim3(ATT_THREADS), smem, stream, dq,
                   (const float*)dout, (const float*)lse, (const float*)ws, q, k, v, T, H, scale,
                   MN_ACC_BIT(accumulate, 0));
}

// One dispatch over D for both input types (bf16: the model's entry points; fp32: exact tests).
template <typename TI>
int att_forward_any(float* out, float* lse, const TI* q, const TI* k, const TI* v, int B, int T,
                    int H, int D, void* stream) {
  if (int rc = mn_check_attention_shape("attention_forward", B, T, H, D)) return rc;
  MN_REQUIRE(out && lse && q && k && v, "attention_forward: NULL tensor argument");
  switch (D) {
    case 16: return att_forward<16>(out, lse, q, k, v, B, T, H, stream);
    case 32: return att_forward<32>(out, lse, q, k, v, B, T, H, stream);
    case 64: return att_forward<64>(out, lse, q, k, v, B, T, H, stream);
    default: return att_forward<128>(out, lse, q, k, v, B, T, H, stream);
  }
}

template <typename TI>
int att_backward_any(float* dq, float* dk, float* dv, float* dout, float* out, float* lse,
                     const TI* q, const TI* k, const TI* v, float* ws, int B, int T, int H, int D,
                     int accumulate, void* stream) {
  if (int rc = mn_check_attention_shape("attention_backward", B, T, H, D)) return rc;
  MN_REQUIRE(dq && dk && dv && dout && out && lse && q && k && v && ws,
             "attention_backward: NULL tensor argument");
  switch (D) {
    case 16:
      return att_backward<16>(dq, dk, dv, dout, out, lse, q, k, v, ws, B, T, H, accumulate, stream);
    case 32:
      return att_backward<32>(dq, dk, dv, dout, out, lse, q, k, v, ws, B, T, H, accumulate, stream);
    case 64:
      return att_backward<64>(dq, dk, dv, dout, out, lse, q, k, v, ws, B, T, H, accumulate, stream);
    default:
      return att_backward<128>(dq, dk, dv, dout, out, lse, q, k, v, ws, B, T, H, accumulate, stream);
  }
}

}  // namespace

MN_API int mn_attention_forward(float* out, float* lse, mn_bf16* q, mn_bf16* k, mn_bf16* v, int B,
                                int T, int H, int D, void* stream) {
  return att_forward_any(out, lse, (const bf16*)q, (const bf16*)k, (const bf16*)v, B, T, H, D,
                         stream);
}

MN_API int mn_attention_backward(float* dq, float* dk, float* dv, float* dout, float* out,
                                 float* lse, mn_bf16* q, mn_bf16* k, mn_bf16* v, float* ws, int B,
                                 int T, int H, int D, int accumulate, void* stream) {
  return att_backward_any(dq, dk, dv, dout, out, lse, (const bf16*)q, (const bf16*)k,
                          (const bf16*)v, ws, B, T, H, D, accumulate, stream);
}

MN_API int mn_attention_forward_f32(float* out, float* lse, float* q, float* k, float* v, int B,
                                    int T, int H, int D, void* stream) {
  return att_forward_any(out, lse, (const float*)q, (const float*)k, (const float*)v, B, T, H, D,
                         stream);
}

MN_API int mn_attention_backward_f32(float* dq, float* dk, float* dv, float* dout, float* out,
                                     float* lse, float* q, float* k, float* v, float* ws, int B,
                                     int T, int H, int D, int accumulate, void* stream) {
  return att_backward_any(dq, dk, dv, dout, out, lse, (const float*)q, (const float*)k,
                          (const float*)v, ws, B, T, H, D, accumulate, stream);
}
