#include "common.cuh"
#include "entry_checks.h"
#include "mma.cuh"
// Causal attention on tensor cores, FlashAttention-2 structure: the same ABI, layouts and
// workspace contract as mn_attention_forward/backward (cuda/attention.cu, see cuda/kernels.h), with
// every matrix product done by mma.sync.m16n8k16 (bf16 operands, fp32 accumulation) through the
// wrappers of cuda/mma.cuh. q, k, v [B,T,H,D] bf16; scale = 1/sqrt(D); query t sees keys 0..t.
//
// Blocks have 4 warps; each warp owns 16 rows of its block's tile (the M side of every mma), so
// the row statistics of the online softmax stay inside a warp (4 lanes per row, 2 shuffles).
// Operands are staged in shared memory as bf16 with a row stride of D + 8 elements (16 bytes of
// padding: the 8 rows one ldmatrix reads then start in 8 different 4-bank groups, no conflicts).
// What is rounded to bf16 for the mma operands beyond the bf16 inputs: the probabilities P (in
// the P V and P^T dO products), dS (in dS K and dS^T Q) and dout (in dP = dout V^T and
// P^T dout). Softmax statistics (max, sum, lse), Delta and all accumulators stay fp32.
//
// Forward: grid (ceil(T/64), H, B), a block = 64 query rows (the longest rows first). Per key tile
//   of 64: S = Q K^T (Q fragments held in registers), masked and scaled into log2 units; online
//   softmax m' = max(m, rowmax S), P = 2^(S - m'), l = l 2^(m - m') + rowsum P, O = O 2^(m - m')
//   + P V, with P fed from the accumulator registers straight into the A operand of the next mma.
//   out = O / l, lse = (m + log2 l) ln 2.
// Backward (P recomputed from lse, never stored):
//   a. Delta = rowsum(bf16(dout) * out) into ws [B,H,T] (the same rounded dout as in dP, so that
//      dS = P (dP - Delta) sums to 0 over a row as it should: with the fp32 dout the mismatch
//      doubled the dq/dk error on nearly one-hot rows);
//   b. dK, dV: a block = 64 keys (16 per warp), looping over the query tiles (64 rows; 32 for
//      D = 128, for registers) at or after them:
//      S^T = K Q^T, P^T = 2^(S^T - lse log2 e), dP^T = V dO^T, dS^T = P^T (dP^T - Delta),
//      dV += P^T dO, dK += dS^T Q (accumulators in registers, one += per element at the end);
//   c. dQ: a block = 64 queries (16 per warp), looping over the key tiles up to the diagonal:
//      the same P and dS (as S = Q K^T, dP = dO V^T), dQ += dS K.
//   Every gradient element is owned by exactly one thread, which adds its total once: no
//   atomics, deterministic, exactly `+=`. Warps skip the 16-row blocks that the causal mask
//   empties (whole-warp decisions, so the warp collectives stay uniform).
//
// mma fragment layouts (mma.cuh): lane = 4 g + tig. A 16x16: regs {row g, cols 2tig..; row g+8,
// cols 2tig..; row g, cols 8+2tig..; row g+8, cols 8+2tig..}. B 16x8 (k x n): regs {k 2tig.., n g;
// k 8+2tig.., n g}. C 16x8: c[i] at row g + 8 (i / 2), col 2 tig + i % 2.

namespace {

constexpr int TC_WARPS = 4;
constexpr int TC_THREADS = TC_WARPS * 32;
constexpr int TC_BR = 64;  // query rows per block (forward, dQ): 16 per warp
constexpr int TC_BC = 64;  // keys per tile (forward, dQ) and per block (dK/dV): 16 per warp
// Minimum resident blocks per SM in the forward's __launch_bounds__: 2 x 128 threads leave the
// 255-register cap unchanged, but steer ptxas away from a 4-byte spill it chose for D = 32 on
// sm_80 (on the backward kernels the same hint costs registers: 164 -> 193 for dK/dV at D = 64).
constexpr int TC_MIN_BLOCKS = 2;
constexpr float TC_LOG2E = 1.4426950408889634f;
constexpr float TC_LN2 = 0.6931471805599453f;

// Query rows per step of the dK/dV kernel: its registers hold dK, dV (D/2 floats each per lane)
// and S^T, dP^T (BQ/2 each), so D = 128 takes half-height query tiles to stay below 255.
template <int D>
constexpr int tc_bwd_bq() {
  return D >= 128 ? 32 : 64;
}

// ---- per-element helpers ----------------------------------------------------------------------
// Element (b, t, h, 0) of a [B,T,H,D] tensor.
__device__ inline int64_t tc_row(int b, int t, int h, int T, int H, int D) {
  return (((int64_t)b * T + t) * H + h) * D;
}

__device__ inline uint16_t tc_bits(bf16 x) {
  uint16_t u;
  memcpy(&u, &x, 2);
  return u;
}

// Two floats as a bf16x2 register (round to nearest even; low half = first element).
__device__ inline uint32_t tc_pack(float lo, float hi) {
  return (uint32_t)tc_bits(mn_f32_to_bf16(lo)) | ((uint32_t)tc_bits(mn_f32_to_bf16(hi)) << 16);
}

// Two adjacent output elements, fp32 or as a bf16 pair (one 4-byte store either way per pair)
__device__ inline void tc_store2(float* p, float lo, float hi) {
  *reinterpret_cast<float2*>(p) = make_float2(lo, hi);
}
__device__ inline void tc_store2(bf16* p, float lo, float hi) {
  *reinterpret_cast<uint32_t*>(p) = tc_pack(lo, hi);
}
// A pair of gradient elements: fp32 overwritten or (acc) added to, the old values not loaded when
// overwritten (they may be NaN); bf16 (the projections' backward GEMM operand, rounded once) only
// overwritten (the entry point checks)
__device__ inline void tc_grad2(float* p, float lo, float hi, bool acc) {
  float2* q = reinterpret_cast<float2*>(p);
  float2 x = acc ? *q : float2{0.0f, 0.0f};
  x.x = acc ? x.x + lo : lo;
  x.y = acc ? x.y + hi : hi;
  *q = x;
}
__device__ inline void tc_grad2(bf16* p, float lo, float hi, bool) { tc_store2(p, lo, hi); }
// An element of dout as the mma operand rounds it (a bf16 dout already is), and of out
__device__ inline float tc_rounded(float x) { return mn_bf16_to_f32(mn_f32_to_bf16(x)); }
__device__ inline float tc_rounded(bf16 x) { return mn_bf16_to_f32(x); }
__device__ inline float tc_value(float x) { return x; }
__device__ inline float tc_value(bf16 x) { return mn_bf16_to_f32(x); }

// ---- fragments ----------------------------------------------------------------------------------
// A operand: the 16x16 block at (r0, c0) of a row-major bf16 tile with row stride LD.
// ldmatrix matrix j = the 8x8 block at (rows 8 (j % 2), cols 8 (j / 2)): regs a0..a3 in order.
template <int LD>
__device__ inline void tc_frag_a(uint32_t a[4], const bf16* s, int r0, int c0) {
  const int lane = threadIdx.x % 32, j = lane / 8;
  mn_ldmatrix_x4(a, s + (r0 + lane % 8 + 8 * (j % 2)) * LD + c0 + 8 * (j / 2));
}

// B operands of the n-tiles n0..n0+7 (b[0], b[1]) and n0+8..n0+15 (b[2], b[3]) over k0..k0+15,
// from a tile stored n-major (X[n][k] row-major, B[k][n] = X[n][k]: K for S = Q K^T). Without
// .trans lane l gets (row l/4, cols 2(l%4)..) = (n = g, k = 2tig..): the B layout as it stands.
template <int LD>
__device__ inline void tc_frag_b_nk(uint32_t b[4], const bf16* s, int n0, int k0) {
  const int lane = threadIdx.x % 32, j = lane / 8;
  mn_ldmatrix_x4(b, s + (n0 + lane % 8 + 8 * (j / 2)) * LD + k0 + 8 * (j % 2));
}

// The same from a tile stored k-major (X[k][n] row-major, B[k][n] = X[k][n]: V for P V). With
// .trans lane l gets (row 2(l%4).., col l/4) = (k = 2tig.., n = g).
template <int LD>
__device__ inline void tc_frag_b_kn(uint32_t b[4], const bf16* s, int k0, int n0) {
  const int lane = threadIdx.x % 32, j = lane / 8;
  mn_ldmatrix_x4_trans(b, s + (k0 + lane % 8 + 8 * (j % 2)) * LD + n0 + 8 * (j / 2));
}

// A operand from two fp32 accumulator tiles: c0 = columns 0..7, c1 = columns 8..15 of a 16x16
// block (the C layout of the product that made them is the A layout, column halves apart),
// rounded to bf16.
__device__ inline void tc_frag_a_from_acc(uint32_t a[4], const float c0[4], const float c1[4]) {
  a[0] = tc_pack(c0[0], c0[1]);
  a[1] = tc_pack(c0[2], c0[3]);
  a[2] = tc_pack(c1[0], c1[1]);
  a[3] = tc_pack(c1[2], c1[3]);
}

// d (+)= a b for the two n-tiles of b (b[0..1], b[2..3]).
__device__ inline void tc_mma2(float d0[4], float d1[4], const uint32_t a[4], const uint32_t b[4]) {
  mn_mma_m16n8k16_bf16(d0, a, b, d0);
  mn_mma_m16n8k16_bf16(d1, a, b + 2, d1);
}

// ---- staging (whole block, no barrier inside) ---------------------------------------------------
// Rows t0 .. t0+rows-1 of head h of a bf16 [B,T,H,D] tensor into a [rows][D+8] tile; rows at or
// past T are zero. 16-byte copies (8 elements).
template <int D>
__device__ inline void tc_stage(bf16* dst, const bf16* src, int b, int t0, int rows, int T, int H,
                                int h) {
  constexpr int CH = D / 8;
  for (int i = threadIdx.x; i < rows * CH; i += blockDim.x) {
    const int r = i / CH, c = i % CH, t = t0 + r;
    uint4 x = make_uint4(0u, 0u, 0u, 0u);
    if (t < T) x = *reinterpret_cast<const uint4*>(src + tc_row(b, t, h, T, H, D) + 8 * c);
    *reinterpret_cast<uint4*>(dst + r * (D + 8) + 8 * c) = x;
  }
}

// The same for an fp32 tensor (dout), rounded to bf16: 4 elements per step.
template <int D>
__device__ inline void tc_stage(bf16* dst, const float* src, int b, int t0, int rows, int T, int H,
                                int h) {
  constexpr int CH = D / 4;
  for (int i = threadIdx.x; i < rows * CH; i += blockDim.x) {
    const int r = i / CH, c = i % CH, t = t0 + r;
    float4 x = make_float4(0.f, 0.f, 0.f, 0.f);
    if (t < T) x = *reinterpret_cast<const float4*>(src + tc_row(b, t, h, T, H, D) + 4 * c);
    *reinterpret_cast<uint2*>(dst + r * (D + 8) + 4 * c) =
        make_uint2(tc_pack(x.x, x.y), tc_pack(x.z, x.w));
  }
}

// dout into its bf16 tile: the fp32 one rounded (above), or a bf16 one copied 4 elements per
// step like it (16-byte copies of it made ptxas spill the bf16 dQ kernel at D = 64)
template <int D>
__device__ inline void tc_stage_dout(bf16* dst, const float* src, int b, int t0, int rows, int T,
                                     int H, int h) {
  tc_stage<D>(dst, src, b, t0, rows, T, H, h);
}
template <int D>
__device__ inline void tc_stage_dout(bf16* dst, const bf16* src, int b, int t0, int rows, int T,
                                     int H, int h) {
  constexpr int CH = D / 4;
  for (int i = threadIdx.x; i < rows * CH; i += blockDim.x) {
    const int r = i / CH, c = i % CH, t = t0 + r;
    uint2 x = make_uint2(0u, 0u);
    if (t < T) x = *reinterpret_cast<const uint2*>(src + tc_row(b, t, h, T, H, D) + 4 * c);
    *reinterpret_cast<uint2*>(dst + r * (D + 8) + 4 * c) = x;
  }
}

// 16-row blocks 0 .. n-1 of a 64-key tile starting at k0 that rows up to `last_row` can see.
__device__ inline int tc_visible_blocks(int last_row, int k0) {
  if (last_row < k0) return 0;
  const int n = (last_row - k0) / 16 + 1;
  return n < TC_BC / 16 ? n : TC_BC / 16;
}

// ---- forward ----------------------------------------------------------------------------------
// O: float, or bf16 (the output projection's operand, rounded once from the same fp32 value)
template <int D, typename O>
__global__ void __launch_bounds__(TC_THREADS, TC_MIN_BLOCKS)
    attention_tc_forward_kernel(O* out, float* lse, const bf16* q, const bf16* k, const bf16* v,
                                int T, int H, float scale_log2) {
  constexpr int LD = D + 8, KS = D / 16, NT = TC_BC / 8, DT = D / 8;
  MN_DYNAMIC_SHARED(uint4, smem);
  bf16* sQ = reinterpret_cast<bf16*>(smem);  // [BR][LD]
  bf16* sK = sQ + TC_BR * LD;                // [BC][LD]
  bf16* sV = sK + TC_BC * LD;                // [BC][LD]
  const int h = blockIdx.y, b = blockIdx.z;
  const int q0 = (gridDim.x - 1 - blockIdx.x) * TC_BR;  // the longest rows start first
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, tig = lane % 4;
  const int wr0 = q0 + 16 * warp;  // the warp's first query row

  tc_stage<D>(sQ, q, b, q0, TC_BR, T, H, h);
  __syncthreads();
  uint32_t qf[KS][4];  // the warp's 16 query rows as A operands, one per 16 columns of d
#pragma unroll
  for (int kk = 0; kk < KS; kk++) tc_frag_a<LD>(qf[kk], sQ, 16 * warp, 16 * kk);

  float o[DT][4];                  // O of rows g, g+8 (C layout), columns 8 dt + 2 tig ..
  float m[2] = {-INFINITY, -INFINITY};  // running max (log2 units) of rows g, g + 8
  float l[2] = {0.f, 0.f};         // this lane's part of the running sum of those rows
#pragma unroll
  for (int dt = 0; dt < DT; dt++)
#pragma unroll
    for (int i = 0; i < 4; i++) o[dt][i] = 0.f;

  const int last = (q0 + TC_BR < T ? q0 + TC_BR : T) - 1;  // the block's last query
  const int nkt = last / TC_BC + 1;                         // key tiles up to it
  for (int kt = 0; kt < nkt; kt++) {
    const int k0 = kt * TC_BC;
    __syncthreads();  // everyone is done with the previous tile
    tc_stage<D>(sK, k, b, k0, TC_BC, T, H, h);
    tc_stage<D>(sV, v, b, k0, TC_BC, T, H, h);
    __syncthreads();
    const int nkb = tc_visible_blocks(wr0 + 15, k0);  // key blocks of 16 the warp can see
    if (nkb == 0 || wr0 >= T) continue;

    // S = Q K^T for the visible key blocks
    float s[NT][4];
#pragma unroll
    for (int j = 0; j < NT; j++)
#pragma unroll
      for (int i = 0; i < 4; i++) s[j][i] = 0.f;
#pragma unroll
    for (int kk = 0; kk < KS; kk++)
#pragma unroll
      for (int jb = 0; jb < NT / 2; jb++)
        if (jb < nkb) {
          uint32_t bk[4];
          tc_frag_b_nk<LD>(bk, sK, 16 * jb, 16 * kk);
          tc_mma2(s[2 * jb], s[2 * jb + 1], qf[kk], bk);
        }

    // mask and scale; row max over the tile (4 lanes per row)
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int j = 0; j < NT; j++)
#pragma unroll
      for (int i = 0; i < 4; i++) {
        const int key = k0 + 8 * j + 2 * tig + (i & 1), row = wr0 + g + 8 * (i >> 1);
        const float x = (key <= row && j / 2 < nkb) ? s[j][i] * scale_log2 : -INFINITY;
        s[j][i] = x;
        mx[i >> 1] = fmaxf(mx[i >> 1], x);
      }
    float alpha[2], mref[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
      const float mn = fmaxf(m[r], mx[r]);
      // every row sees key 0, so mn is finite from the first tile on; the guard keeps a row
      // without a visible key at p = 0 instead of NaN
      mref[r] = mn == -INFINITY ? 0.f : mn;
      alpha[r] = exp2f(m[r] - mref[r]);
      m[r] = mn;
      l[r] *= alpha[r];
    }
#pragma unroll
    for (int j = 0; j < NT; j++)
#pragma unroll
      for (int i = 0; i < 4; i++) {
        const float p = exp2f(s[j][i] - mref[i >> 1]);
        s[j][i] = p;
        l[i >> 1] += p;  // fp32 p: the normaliser does not see P's bf16 rounding
      }
#pragma unroll
    for (int dt = 0; dt < DT; dt++)
#pragma unroll
      for (int i = 0; i < 4; i++) o[dt][i] *= alpha[i >> 1];

    // O += P V: P (bf16) straight from the S accumulators
#pragma unroll
    for (int kb = 0; kb < NT / 2; kb++)
      if (kb < nkb) {
        uint32_t ap[4];
        tc_frag_a_from_acc(ap, s[2 * kb], s[2 * kb + 1]);
#pragma unroll
        for (int dp = 0; dp < DT / 2; dp++) {
          uint32_t bv[4];
          tc_frag_b_kn<LD>(bv, sV, 16 * kb, 16 * dp);
          tc_mma2(o[2 * dp], o[2 * dp + 1], ap, bv);
        }
      }
  }

  // finish: l over the 4 lanes of each row; out = O / l, lse = (m + log2 l) ln 2
#pragma unroll
  for (int r = 0; r < 2; r++) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    const int row = wr0 + g + 8 * r;
    if (row >= T) continue;
    const float inv = 1.f / l[r];
    O* orow = out + tc_row(b, row, h, T, H, D);
#pragma unroll
    for (int dt = 0; dt < DT; dt++) tc_store2(orow + 8 * dt + 2 * tig, o[dt][2 * r] * inv, o[dt][2 * r + 1] * inv);
    if (tig == 0) lse[((int64_t)b * H + h) * T + row] = (m[r] + log2f(l[r])) * TC_LN2;
  }
}

// ---- backward ---------------------------------------------------------------------------------
// Delta[b,h,t] = sum_d bf16(dout[b,t,h,d]) out[b,t,h,d], summed in fp32; one warp per (b, t, h)
// row.
template <int D, typename O>
__global__ void __launch_bounds__(TC_THREADS)
    attention_tc_delta_kernel(float* delta, const O* dout, const O* out, int B, int T, int H) {
  const int64_t row = (int64_t)blockIdx.x * TC_WARPS + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= (int64_t)B * T * H) return;  // whole warps leave together
  const O* a = dout + row * D;
  const O* o = out + row * D;
  float acc = 0.f;
  for (int d = lane; d < D; d += 32) acc += tc_rounded(a[d]) * tc_value(o[d]);
  for (int off = 16; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
  const int h = (int)(row % H), t = (int)((row / H) % T), b = (int)(row / ((int64_t)H * T));
  if (lane == 0) delta[((int64_t)b * H + h) * T + t] = acc;
}

// dK, dV: grid (ceil(T/64), H, B). Warp w owns keys kw0 = k0 + 16 w .. +15 (the M side: S^T, P^T,
// dP^T, dS^T have keys as rows, queries as columns) and their dK, dV rows.
template <int D, typename O, typename G>
__global__ void __launch_bounds__(TC_THREADS)
    attention_tc_backward_dkv_kernel(G* dk, G* dv, const O* dout, const float* lse,
                                     const float* delta, const bf16* q, const bf16* k,
                                     const bf16* v, int T, int H, float scale, float scale_log2,
                                     int acc) {
  constexpr int BQ = tc_bwd_bq<D>(), LD = D + 8, KS = D / 16, QT = BQ / 8, DT = D / 8;
  MN_DYNAMIC_SHARED(uint4, smem);
  bf16* sK = reinterpret_cast<bf16*>(smem);  // [BC][LD]
  bf16* sV = sK + TC_BC * LD;                // [BC][LD]
  bf16* sQ = sV + TC_BC * LD;                // [BQ][LD]
  bf16* sdO = sQ + BQ * LD;                  // [BQ][LD] dout rounded to bf16
  float* sL = reinterpret_cast<float*>(sdO + BQ * LD);  // [BQ] lse log2(e) (0 past T)
  float* sDelta = sL + BQ;                              // [BQ] Delta (0 past T)
  const int h = blockIdx.y, b = blockIdx.z;
  const int k0 = blockIdx.x * TC_BC;  // key tile 0 (the most query tiles) starts first
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, tig = lane % 4;
  const int kw0 = k0 + 16 * warp;

  tc_stage<D>(sK, k, b, k0, TC_BC, T, H, h);
  tc_stage<D>(sV, v, b, k0, TC_BC, T, H, h);
  float gk[DT][4], gv[DT][4];  // dK, dV of keys kw0 + g, + 8 (C layout)
#pragma unroll
  for (int dt = 0; dt < DT; dt++)
#pragma unroll
    for (int i = 0; i < 4; i++) gk[dt][i] = gv[dt][i] = 0.f;

  // query tiles that can see a key of this tile: those ending at or after k0
  for (int q0 = (k0 / BQ) * BQ; q0 < T; q0 += BQ) {
    __syncthreads();  // the previous query tile is no longer read
    tc_stage<D>(sQ, q, b, q0, BQ, T, H, h);
    tc_stage_dout<D>(sdO, dout, b, q0, BQ, T, H, h);
    for (int r = threadIdx.x; r < BQ; r += blockDim.x) {
      const int t = q0 + r;
      const int64_t i = ((int64_t)b * H + h) * T + t;
      sL[r] = t < T ? lse[i] * TC_LOG2E : 0.f;
      sDelta[r] = t < T ? delta[i] : 0.f;
    }
    __syncthreads();
    // 16-query blocks [qb_lo, qb_hi) with a query >= kw0 and < T (kw0 - q0 is a multiple of 16)
    const int qb_lo = kw0 > q0 ? (kw0 - q0) / 16 : 0;
    const int qb_hi = (T - q0 + 15) / 16 < BQ / 16 ? (T - q0 + 15) / 16 : BQ / 16;
    if (qb_lo >= qb_hi || kw0 >= T) continue;

    // S^T = K Q^T and dP^T = V dO^T
    float st[QT][4], dpt[QT][4];
#pragma unroll
    for (int j = 0; j < QT; j++)
#pragma unroll
      for (int i = 0; i < 4; i++) st[j][i] = dpt[j][i] = 0.f;
#pragma unroll
    for (int kk = 0; kk < KS; kk++) {
      uint32_t ak[4], av[4];
      tc_frag_a<LD>(ak, sK, 16 * warp, 16 * kk);
      tc_frag_a<LD>(av, sV, 16 * warp, 16 * kk);
#pragma unroll
      for (int jb = 0; jb < QT / 2; jb++)
        if (jb >= qb_lo && jb < qb_hi) {
          uint32_t bq[4], bo[4];
          tc_frag_b_nk<LD>(bq, sQ, 16 * jb, 16 * kk);
          tc_mma2(st[2 * jb], st[2 * jb + 1], ak, bq);
          tc_frag_b_nk<LD>(bo, sdO, 16 * jb, 16 * kk);
          tc_mma2(dpt[2 * jb], dpt[2 * jb + 1], av, bo);
        }
    }
    // P^T and dS^T = P^T (dP^T - Delta); exactly 0 where masked (key > query, query >= T)
#pragma unroll
    for (int j = 0; j < QT; j++)
#pragma unroll
      for (int i = 0; i < 4; i++) {
        const int c = 8 * j + 2 * tig + (i & 1), query = q0 + c, key = kw0 + g + 8 * (i >> 1);
        const bool visible = key <= query && query < T;
        const float p = visible ? exp2f(st[j][i] * scale_log2 - sL[c]) : 0.f;
        st[j][i] = p;
        dpt[j][i] = p * (dpt[j][i] - sDelta[c]);
      }
    // dV += P^T dO and dK += dS^T Q, over the query blocks as the k dimension
#pragma unroll
    for (int jb = 0; jb < QT / 2; jb++)
      if (jb >= qb_lo && jb < qb_hi) {
        uint32_t ap[4], ads[4];
        tc_frag_a_from_acc(ap, st[2 * jb], st[2 * jb + 1]);
        tc_frag_a_from_acc(ads, dpt[2 * jb], dpt[2 * jb + 1]);
#pragma unroll
        for (int dp = 0; dp < DT / 2; dp++) {
          uint32_t bo[4], bq[4];
          tc_frag_b_kn<LD>(bo, sdO, 16 * jb, 16 * dp);
          tc_mma2(gv[2 * dp], gv[2 * dp + 1], ap, bo);
          tc_frag_b_kn<LD>(bq, sQ, 16 * jb, 16 * dp);
          tc_mma2(gk[2 * dp], gk[2 * dp + 1], ads, bq);
        }
      }
  }

#pragma unroll
  for (int r = 0; r < 2; r++) {
    const int key = kw0 + g + 8 * r;
    if (key >= T) continue;
    const int64_t base = tc_row(b, key, h, T, H, D);
#pragma unroll
    for (int dt = 0; dt < DT; dt++) {
      const int64_t at = base + 8 * dt + 2 * tig;
      tc_grad2(dk + at, gk[dt][2 * r] * scale, gk[dt][2 * r + 1] * scale, MN_ACC_BIT(acc, 0));
      tc_grad2(dv + at, gv[dt][2 * r], gv[dt][2 * r + 1], MN_ACC_BIT(acc, 1));
    }
  }
}

// dQ: grid (ceil(T/64), H, B). Warp w owns query rows wr0 = q0 + 16 w .. +15 and their dQ rows.
template <int D, typename O, typename G>
__global__ void __launch_bounds__(TC_THREADS)
    attention_tc_backward_dq_kernel(G* dq, const O* dout, const float* lse,
                                    const float* delta, const bf16* q, const bf16* k,
                                    const bf16* v, int T, int H, float scale, float scale_log2,
                                    int acc) {
  constexpr int LD = D + 8, KS = D / 16, NT = TC_BC / 8, DT = D / 8;
  MN_DYNAMIC_SHARED(uint4, smem);
  bf16* sQ = reinterpret_cast<bf16*>(smem);  // [BR][LD]
  bf16* sdO = sQ + TC_BR * LD;               // [BR][LD] dout rounded to bf16
  bf16* sK = sdO + TC_BR * LD;               // [BC][LD]
  bf16* sV = sK + TC_BC * LD;                // [BC][LD]
  const int h = blockIdx.y, b = blockIdx.z;
  const int q0 = (gridDim.x - 1 - blockIdx.x) * TC_BR;  // the longest rows start first
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, tig = lane % 4;
  const int wr0 = q0 + 16 * warp;

  tc_stage<D>(sQ, q, b, q0, TC_BR, T, H, h);
  tc_stage_dout<D>(sdO, dout, b, q0, TC_BR, T, H, h);
  float L[2], Dl[2];  // lse log2(e) and Delta of rows g, g + 8 (0 past T)
#pragma unroll
  for (int r = 0; r < 2; r++) {
    const int t = wr0 + g + 8 * r;
    const int64_t i = ((int64_t)b * H + h) * T + t;
    L[r] = t < T ? lse[i] * TC_LOG2E : 0.f;
    Dl[r] = t < T ? delta[i] : 0.f;
  }
  float gq[DT][4];
#pragma unroll
  for (int dt = 0; dt < DT; dt++)
#pragma unroll
    for (int i = 0; i < 4; i++) gq[dt][i] = 0.f;

  const int last = (q0 + TC_BR < T ? q0 + TC_BR : T) - 1;  // the block's last query
  const int nkt = last / TC_BC + 1;
  for (int kt = 0; kt < nkt; kt++) {
    const int k0 = kt * TC_BC;
    __syncthreads();  // the previous key tile is no longer read (and sQ, sdO are staged)
    tc_stage<D>(sK, k, b, k0, TC_BC, T, H, h);
    tc_stage<D>(sV, v, b, k0, TC_BC, T, H, h);
    __syncthreads();
    const int nkb = tc_visible_blocks(wr0 + 15, k0);
    if (nkb == 0 || wr0 >= T) continue;

    // S = Q K^T and dP = dO V^T
    float s[NT][4], dp[NT][4];
#pragma unroll
    for (int j = 0; j < NT; j++)
#pragma unroll
      for (int i = 0; i < 4; i++) s[j][i] = dp[j][i] = 0.f;
#pragma unroll
    for (int kk = 0; kk < KS; kk++) {
      uint32_t aq[4], ao[4];
      tc_frag_a<LD>(aq, sQ, 16 * warp, 16 * kk);
      tc_frag_a<LD>(ao, sdO, 16 * warp, 16 * kk);
#pragma unroll
      for (int jb = 0; jb < NT / 2; jb++)
        if (jb < nkb) {
          uint32_t bk[4], bv[4];
          tc_frag_b_nk<LD>(bk, sK, 16 * jb, 16 * kk);
          tc_mma2(s[2 * jb], s[2 * jb + 1], aq, bk);
          tc_frag_b_nk<LD>(bv, sV, 16 * jb, 16 * kk);
          tc_mma2(dp[2 * jb], dp[2 * jb + 1], ao, bv);
        }
    }
    // dS = P (dP - Delta), exactly 0 where masked
#pragma unroll
    for (int j = 0; j < NT; j++)
#pragma unroll
      for (int i = 0; i < 4; i++) {
        const int key = k0 + 8 * j + 2 * tig + (i & 1), r = i >> 1, row = wr0 + g + 8 * r;
        const bool visible = key <= row && row < T;
        const float p = visible ? exp2f(s[j][i] * scale_log2 - L[r]) : 0.f;
        dp[j][i] = p * (dp[j][i] - Dl[r]);
      }
    // dQ += dS K
#pragma unroll
    for (int kb = 0; kb < NT / 2; kb++)
      if (kb < nkb) {
        uint32_t ads[4];
        tc_frag_a_from_acc(ads, dp[2 * kb], dp[2 * kb + 1]);
#pragma unroll
        for (int dd = 0; dd < DT / 2; dd++) {
          uint32_t bk[4];
          tc_frag_b_kn<LD>(bk, sK, 16 * kb, 16 * dd);
          tc_mma2(gq[2 * dd], gq[2 * dd + 1], ads, bk);
        }
      }
  }

#pragma unroll
  for (int r = 0; r < 2; r++) {
    const int row = wr0 + g + 8 * r;
    if (row >= T) continue;
    const int64_t base = tc_row(b, row, h, T, H, D);
#pragma unroll
    for (int dt = 0; dt < DT; dt++)
      tc_grad2(dq + base + 8 * dt + 2 * tig, gq[dt][2 * r] * scale, gq[dt][2 * r + 1] * scale, acc);
  }
}

// ---- host side ----------------------------------------------------------------------------------
template <int D>
constexpr size_t tc_fwd_smem() {
  return sizeof(bf16) * (TC_BR + 2 * TC_BC) * (D + 8);
}
template <int D>
constexpr size_t tc_dkv_smem() {
  return sizeof(bf16) * (2 * TC_BC + 2 * tc_bwd_bq<D>()) * (D + 8) +
         sizeof(float) * 2 * tc_bwd_bq<D>();
}
template <int D>
constexpr size_t tc_dq_smem() {
  return sizeof(bf16) * (2 * TC_BR + 2 * TC_BC) * (D + 8);
}

inline unsigned tc_tiles(int T, int rows) { return (unsigned)((T + rows - 1) / rows); }

template <int D, typename O>
int tc_forward(const char* fn, O* out, float* lse, const bf16* q, const bf16* k, const bf16* v,
               int B, int T, int H, void* stream) {
  const float scale_log2 = TC_LOG2E / sqrtf((float)D);
  return mn_launch(fn, attention_tc_forward_kernel<D, O>,
                   dim3(tc_tiles(T, TC_BR), H, B), dim3(TC_THREADS), tc_fwd_smem<D>(), stream,
                   out, lse, q, k, v, T, H, scale_log2);
}

template <int D, typename O, typename G>
int tc_backward(G* dq, G* dk, G* dv, const O* dout, const O* out, const float* lse,
                const bf16* q, const bf16* k, const bf16* v, float* ws, int B, int T, int H,
                int accumulate, void* stream) {
  const float scale = 1.0f / sqrtf((float)D), scale_log2 = TC_LOG2E * scale;
  const int64_t rows = (int64_t)B * T * H;
  if (int rc = mn_launch("attention_tc_backward_delta", attention_tc_delta_kernel<D, O>,
                         dim3((unsigned)((rows + TC_WARPS - 1) / TC_WARPS)), dim3(TC_THREADS), 0,
                         stream, ws, dout, out, B, T, H))
    return rc;
  if (int rc = mn_launch("attention_tc_backward_dkv", attention_tc_backward_dkv_kernel<D, O, G>,
                         dim3(tc_tiles(T, TC_BC), H, B), dim3(TC_THREADS), tc_dkv_smem<D>(),
                         stream, dk, dv, dout, lse, (const float*)ws, q, k, v, T, H, scale,
                         scale_log2, accumulate >> 1 & 3))
    return rc;
  return mn_launch("attention_tc_backward_dq", attention_tc_backward_dq_kernel<D, O, G>,
                   dim3(tc_tiles(T, TC_BR), H, B), dim3(TC_THREADS), tc_dq_smem<D>(), stream, dq,
                   dout, lse, (const float*)ws, q, k, v, T, H, scale, scale_log2,
                   MN_ACC_BIT(accumulate, 0));
}


// One entry point pair per output dtype: out (and dout) fp32, or bf16 (_bf16)
template <typename O>
int tc_forward_any(const char* fn, O* out, float* lse, mn_bf16* q, mn_bf16* k, mn_bf16* v, int B,
                   int T, int H, int D, void* stream) {
  const bf16 *bq = (const bf16*)q, *bk = (const bf16*)k, *bv = (const bf16*)v;
  switch (D) {
    case 16: return tc_forward<16>(fn, out, lse, bq, bk, bv, B, T, H, stream);
    case 32: return tc_forward<32>(fn, out, lse, bq, bk, bv, B, T, H, stream);
    case 64: return tc_forward<64>(fn, out, lse, bq, bk, bv, B, T, H, stream);
    default: return tc_forward<128>(fn, out, lse, bq, bk, bv, B, T, H, stream);
  }
}
template <typename O, typename G>
int tc_backward_any(G* dq, G* dk, G* dv, const O* dout, const O* out, float* lse,
                    mn_bf16* q, mn_bf16* k, mn_bf16* v, float* ws, int B, int T, int H, int D,
                    int acc, void* stream) {
  const bf16 *bq = (const bf16*)q, *bk = (const bf16*)k, *bv = (const bf16*)v;
  switch (D) {
    case 16: return tc_backward<16>(dq, dk, dv, dout, out, lse, bq, bk, bv, ws, B, T, H, acc, stream);
    case 32: return tc_backward<32>(dq, dk, dv, dout, out, lse, bq, bk, bv, ws, B, T, H, acc, stream);
    case 64: return tc_backward<64>(dq, dk, dv, dout, out, lse, bq, bk, bv, ws, B, T, H, acc, stream);
    default:
      return tc_backward<128>(dq, dk, dv, dout, out, lse, bq, bk, bv, ws, B, T, H, acc, stream);
  }
}

}  // namespace

MN_API int mn_attention_tc_forward(float* out, float* lse, mn_bf16* q, mn_bf16* k, mn_bf16* v,
                                   int B, int T, int H, int D, void* stream) {
  if (int rc = mn_check_attention_tc_forward("attention_tc_forward", out, lse, q, k, v, B, T, H,
                                             D))
    return rc;
  return tc_forward_any("attention_tc_forward", out, lse, q, k, v, B, T, H, D, stream);
}

MN_API int mn_attention_tc_forward_bf16(mn_bf16* out, float* lse, mn_bf16* q, mn_bf16* k,
                                        mn_bf16* v, int B, int T, int H, int D, void* stream) {
  if (int rc = mn_check_attention_tc_forward("attention_tc_forward_bf16", out, lse, q, k, v, B, T,
                                             H, D))
    return rc;
  return tc_forward_any("attention_tc_forward_bf16", (bf16*)out, lse, q, k, v, B, T, H, D, stream);
}

MN_API int mn_attention_tc_backward(float* dq, float* dk, float* dv, float* dout, float* out,
                                    float* lse, mn_bf16* q, mn_bf16* k, mn_bf16* v, float* ws,
                                    int B, int T, int H, int D, int accumulate, void* stream) {
  if (int rc = mn_check_attention_tc_backward("attention_tc_backward", dq, dk, dv, dout, out, lse,
                                              q, k, v, ws, B, T, H, D))
    return rc;
  return tc_backward_any(dq, dk, dv, (const float*)dout, (const float*)out, lse, q, k, v, ws, B, T,
                         H, D, accumulate, stream);
}

MN_API int mn_attention_tc_backward_bf16(void* dq, void* dk, void* dv, mn_bf16* dout,
                                         mn_bf16* out, float* lse, mn_bf16* q, mn_bf16* k,
                                         mn_bf16* v, float* ws, int B, int T, int H, int D,
                                         int grads_bf16, int accumulate, void* stream) {
  const char* fn = "attention_tc_backward_bf16";
  if (int rc = mn_check_attention_tc_backward(fn, dq, dk, dv, dout, out, lse, q, k, v, ws, B, T,
                                              H, D))
    return rc;
  if (int rc = mn_check_bf16_grads_overwritten(fn, grads_bf16, accumulate, 7)) return rc;
  const bf16 *d = (const bf16*)dout, *o = (const bf16*)out;
  if (grads_bf16)
    return tc_backward_any((bf16*)dq, (bf16*)dk, (bf16*)dv, d, o, lse, q, k, v, ws, B, T, H, D,
                           accumulate, stream);
  return tc_backward_any((float*)dq, (float*)dk, (float*)dv, d, o, lse, q, k, v, ws, B, T, H, D,
                         accumulate, stream);
}
