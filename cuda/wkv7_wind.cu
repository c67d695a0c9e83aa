#include "common.cuh"
#include "entry_checks.h"
#include "mma.cuh"
// WKV-7 on tensor cores, chunk-16 form (the original's --wind_cuda algorithm; see cuda/kernels.h
// and shared/REFERENCE.md "WKV-7"). Same semantics and saved buffers as mn_wkv7_forward/backward.
//
// One block of N/16 warps per (head h, batch b); the state S [N][N] (value i, key j) lives in fp32
// mma accumulators, warp w owning rows i in [16w, 16w+16). Within a chunk of 16 steps (local time
// t = 0..15, S0 = state before the chunk) write ell_t = log d_t = -exp(w_t) per key channel,
// L_t = ell_0 + .. + ell_t (inclusive) and Lx_t = L_t - ell_t (exclusive). Unrolling the
// recurrence,
// with U[t] = sa_t and rows of the [16][N] matrices being time steps:
//   U   = (I - AB)^{-1} (As S0^T + AK V)          (a lower-triangular 16x16 solve, in fp32)
//   Y   = Rs S0^T + QB U + QK V
//   S15 = S0 diag(E) + U^T Be + V^T Ke
// where (x_t[j] the input at step t, channel j; c = L_15 / 2 per channel)
//   Rc = r e^{L-c}, Kc = k e^{c-L}, Ac = a e^{Lx-c}, Bc = b e^{c-L}     (centred, for the 16x16s)
//   Rs = r e^{L},   As = a e^{Lx}                                      (against S0)
//   Ke = k e^{L15-L}, Be = b e^{L15-L}, E = e^{L15}                    (into the chunk's end state)
//   AB = Ac Bc^T, AK = Ac Kc^T (strictly lower), QB = Rc Bc^T, QK = Rc Kc^T (lower incl. diagonal).
// Entry (t, tau) of AK is sum_j a_t k_tau prod_{tau<m<t} d_m: the centring c cancels in every
// product, and keeps each factor within e^{|L15|/2} instead of 1/prod(d) = e^{|L15|} (overflow of
// fp32 only when a chunk's sum of exp(w) exceeds ~170; the model's w <= -0.5 gives at most ~10).
// Products are bf16 x bf16 mma with fp32 accumulation (operands rounded to bf16: the ~5e-3
// normwise relative error of this kernel); the solve, the state and all element-wise math are fp32.
//
// Backward, per chunk from the last (G = dL/dS15 in fp32 accumulators, from the later chunks):
//   dU = QB^T dY + Be G^T;   dZ = (I - AB)^{-T} dU  (fp32 back-substitution)
//   dAB = dZ U^T, dAK = dZ V^T (strict), dQB = dY U^T, dQK = dY V^T (incl.)
//   dV = QK^T dY + AK^T dZ + Ke G^T;  dBe = U G;  dKe = V G;  dRs = dY S0;  dAs = dZ S0
//   dRc = dQB Bc + dQK Kc;  dAc = dAB Bc + dAK Kc;
//   dBc = dAB^T Ac + dQB^T Rc;  dKc = dAK^T Ac + dQK^T Rc
//   G <- G diag(E) + dY^T Rs + dZ^T As   (dL/dS0, the previous chunk's end state)
// then through the scalings: dr = dRc e^{L-c} + dRs e^{L} etc., and for the decays (c held fixed,
// as the result does not depend on it) the coefficients of L_t, Lx_t and L15:
//   gL_t = r dr - k dk - b db,  gLx_t = a da,
//   gL15 = sum_t (k dKe + b dBe) e^{L15-L} + E sum_i G S0,
//   dell_m = sum_{t>=m} gL_t + sum_{t>m} gLx_t + gL15;  dw_m = dell_m * ell_m  (d ell/dw = ell).
// Terms whose decay factor is exactly 1 (the diagonal of QB, QK, the first subdiagonal of AB, AK,
// Ke and Be at t = 15) enter two of these coefficients with opposite signs that every suffix sum
// includes together: they are left out of them (and their input gradients added in fp32).
// U (= sa) and the chunk-end states (s_ckpt) come from the forward; S0 of chunk c is s_ckpt[c-1].

namespace {

constexpr int CH = 16;  // chunk length = the mma tile edge

// ---- shared-memory layout -----------------------------------------------------------------------
// bf16 matrices are padded by 8 elements per row (16 bytes: keeps ldmatrix rows 16-byte aligned and
// spreads rows over banks).
template <int N>
struct WindDims {
  static constexpr int WARPS = N / 16;
  static constexpr int THREADS = 32 * WARPS;
  static constexpr int LDC = N + 8;      // row stride of a [16][N] chunk matrix (time x channel)
  static constexpr int LDS = N + 8;      // row stride of an [N][N] state matrix
  static constexpr int LDT = CH + 8;     // row stride of a [16][16] time x time matrix
  static constexpr int CM = CH * LDC;    // elements of one chunk matrix
  static constexpr int SM = N * LDS;     // elements of one state matrix
  static constexpr int TM = CH * LDT;    // elements of one time matrix
  // forward: 10 chunk matrices, S0, AK/QB/QK (bf16); AB [16][16], U [16][N], E [N] (fp32)
  static constexpr size_t FWD_SMEM =
      (size_t)(10 * CM + SM + 3 * TM) * 2 + (size_t)(CH * CH + CH * N + N) * 4;
  // backward: 12 chunk matrices, S0, G, 7 time matrices (bf16); AB [16][16], dU [16][N], L [16][N],
  // gL [16][N], E [N], gE [N], E-gradient partials [WARPS][N], band [4][16] (fp32)
  static constexpr size_t BWD_SMEM = (size_t)(12 * CM + 2 * SM + 7 * TM) * 2 +
                                     (size_t)(CH * CH + 3 * CH * N + 2 * N + WARPS * N + 4 * CH) *
                                         4;
};

// Chunk matrices [16][LDC] bf16, row t = local step, column = channel.
struct ChunkMats {
  bf16 *rc, *kc, *ac, *bc, *rs, *as, *ke, *be, *v, *u;
};

// The 10 chunk matrices laid out back to back from p, cm elements each.
__device__ inline ChunkMats chunk_mats(bf16* p, int cm) {
  return ChunkMats{p,          p + cm,     p + 2 * cm, p + 3 * cm, p + 4 * cm,
                   p + 5 * cm, p + 6 * cm, p + 7 * cm, p + 8 * cm, p + 9 * cm};
}

// ---- warp-level tensor-core helpers -------------------------------------------------------------
// An fp32 16x16 tile is two m16n8 accumulators: acc[4 * nt + e] (nt = column half, e = 0..3) is
// element (row g + 8 (e / 2), column 8 nt + 2 tig + e % 2), g = lane / 4, tig = lane % 4.
__device__ inline int frag_row(int q) { return (threadIdx.x % 32) / 4 + 8 * ((q % 4) / 2); }
__device__ inline int frag_col(int q) { return 8 * (q / 4) + 2 * (threadIdx.x % 4) + q % 2; }

// ldmatrix.x4 addresses: lane 8 m + r points at row r of 8x8 matrix m.
// A operand, A[row][k] = p[row * ld + k]: matrix m = rows 8 (m % 2), k 8 (m / 2) (the mma A order).
__device__ inline void load_a(uint32_t a[4], const bf16* p, int ld) {
  const int l = threadIdx.x % 32, m = l / 8, r = l % 8;
  mn_ldmatrix_x4(a, p + (r + 8 * (m % 2)) * ld + 8 * (m / 2));
}
// A operand stored transposed, A[row][k] = p[k * ld + row]: the same blocks, read with .trans.
__device__ inline void load_a_t(uint32_t a[4], const bf16* p, int ld) {
  const int l = threadIdx.x % 32, m = l / 8, r = l % 8;
  mn_ldmatrix_x4_trans(a, p + (r + 8 * (m / 2)) * ld + 8 * (m % 2));
}
// B operand for 16 columns, B[k][n] = p[k * ld + n]: regs 0, 1 = k 0-7, 8-15 of columns 0-7;
// regs 2, 3 the same for columns 8-15 (b of the two n8 mma), read with .trans.
__device__ inline void load_b(uint32_t b[4], const bf16* p, int ld) {
  const int l = threadIdx.x % 32, m = l / 8, r = l % 8;
  mn_ldmatrix_x4_trans(b, p + (r + 8 * (m % 2)) * ld + 8 * (m / 2));
}
// B operand stored transposed, B[k][n] = p[n * ld + k] (a product X Y^T with Y row-major).
__device__ inline void load_b_t(uint32_t b[4], const bf16* p, int ld) {
  const int l = threadIdx.x % 32, m = l / 8, r = l % 8;
  mn_ldmatrix_x4(b, p + (r + 8 * (m / 2)) * ld + 8 * (m % 2));
}

// acc (16x16 fp32) += A [16 x K] @ B [K x 16]; AT / BT: operand stored transposed (see above).
// KU: how many of the K / 16 steps are unrolled (8 = all, for every K <= 128). Fully unrolled, the
// compiler loads every step's operands ahead (8 registers a step); a smaller KU keeps fewer live.
template <bool AT, bool BT, int KU = 8>
__device__ inline void mm_acc(float acc[8], const bf16* A, int lda, const bf16* B, int ldb, int K) {
#pragma unroll KU
  for (int k0 = 0; k0 < K; k0 += 16) {
    uint32_t a[4], b[4];
    if (AT)
      load_a_t(a, A + k0 * lda, lda);
    else
      load_a(a, A + k0, lda);
    if (BT)
      load_b_t(b, B + k0, ldb);
    else
      load_b(b, B + k0 * ldb, ldb);
    mn_mma_m16n8k16_bf16(acc, a, b, acc);
    mn_mma_m16n8k16_bf16(acc + 4, a, b + 2, acc + 4);
  }
}

__device__ inline void zero8(float acc[8]) {
#pragma unroll
  for (int q = 0; q < 8; q++) acc[q] = 0.0f;
}

// Keeps the lower triangle (row > col, or row >= col when !strict), zeroes the rest.
__device__ inline void mask_lower(float acc[8], bool strict) {
#pragma unroll
  for (int q = 0; q < 8; q++) {
    const int r = frag_row(q), c = frag_col(q);
    if (strict ? r <= c : r < c) acc[q] = 0.0f;
  }
}

__device__ inline void store_tile(const float acc[8], float* p, int ld) {
#pragma unroll
  for (int q = 0; q < 8; q++) p[frag_row(q) * ld + frag_col(q)] = acc[q];
}
__device__ inline void store_tile(const float acc[8], bf16* p, int ld) {
#pragma unroll
  for (int q = 0; q < 8; q++) p[frag_row(q) * ld + frag_col(q)] = mn_f32_to_bf16(acc[q]);
}

// ---- per-element math ---------------------------------------------------------------------------
// log d for the decay d = exp(-exp(w))
__host__ __device__ inline float wind_log_decay(float w) { return -expf(w); }

__device__ inline int64_t wind_index(int b, int t, int h, int j, int T, int H, int N) {
  return (((int64_t)b * T + t) * H + h) * N + j;
}

// Channel j of a chunk (thread j < N): the cumulative log-decays and the scaled operands.
// Writes L[t] (16 registers), the bf16 chunk matrices except v and u, and E[j].
template <int N>
__device__ inline void wind_prep_channel(float (&L)[CH], const ChunkMats& m, float* E,
                                         const bf16* r_, const bf16* w_, const bf16* k_,
                                         const bf16* a_, const bf16* b_, int64_t ind0,
                                         int64_t tstride, int j) {
  constexpr int LDC = WindDims<N>::LDC;
  float acc = 0.0f;
#pragma unroll
  for (int t = 0; t < CH; t++) {
    acc += wind_log_decay(mn_bf16_to_f32(w_[ind0 + t * tstride]));
    L[t] = acc;
  }
  const float L15 = L[CH - 1], c = 0.5f * L15;
#pragma unroll
  for (int t = 0; t < CH; t++) {
    const int64_t ind = ind0 + t * tstride;
    const float r = mn_bf16_to_f32(r_[ind]), k = mn_bf16_to_f32(k_[ind]);
    const float a = mn_bf16_to_f32(a_[ind]), b = mn_bf16_to_f32(b_[ind]);
    const float Lt = L[t], Lx = t ? L[t - 1] : 0.0f;
    const float up = expf(c - Lt), to_end = expf(L15 - Lt);
    const int o = t * LDC + j;
    m.rc[o] = mn_f32_to_bf16(r * expf(Lt - c));
    m.rs[o] = mn_f32_to_bf16(r * expf(Lt));
    m.kc[o] = mn_f32_to_bf16(k * up);
    m.ke[o] = mn_f32_to_bf16(k * to_end);
    m.ac[o] = mn_f32_to_bf16(a * expf(Lx - c));
    m.as[o] = mn_f32_to_bf16(a * expf(Lx));
    m.bc[o] = mn_f32_to_bf16(b * up);
    m.be[o] = mn_f32_to_bf16(b * to_end);
  }
  E[j] = expf(L15);
}

// The four 16x16 time products X_p Y_p^T (K = N), product p on warp p % WARPS:
//   p = 0: x0 y0^T strictly lower -> fp32 out0 (ld 16);   p = 1: x0 y1^T strictly lower -> bf16 t1
//   p = 2: x1 y0^T lower -> bf16 t2;                       p = 3: x1 y1^T lower -> bf16 t3
// out0b: when non-null, p = 0 goes there in bf16 (ld LDT) instead of fp32.
// band: when non-null, the entries whose decay factor is exactly 1 are moved out of the tiles into
// band [4][16] fp32: band[p][t] = entry (t, t - 1) for p = 0, 1 (t >= 1) and (t, t) for p = 2, 3.
template <int N>
__device__ inline void wind_time_products(const bf16* x0, const bf16* x1, const bf16* y0,
                                          const bf16* y1, float* out0, bf16* out0b, bf16* t1,
                                          bf16* t2, bf16* t3, float* band) {
  using D = WindDims<N>;
  const int warp = threadIdx.x / 32;
  for (int p = warp; p < 4; p += D::WARPS) {
    float acc[8];
    zero8(acc);
    mm_acc<false, true>(acc, p < 2 ? x0 : x1, D::LDC, p % 2 == 0 ? y0 : y1, D::LDC, N);
    mask_lower(acc, p < 2);
    if (band) {
#pragma unroll
      for (int q = 0; q < 8; q++) {
        const int r = frag_row(q), c = frag_col(q);
        if (r - c == (p < 2 ? 1 : 0)) {
          band[p * CH + r] = acc[q];
          acc[q] = 0.0f;
        }
      }
    }
    if (p == 0) {
      if (out0b)
        store_tile(acc, out0b, D::LDT);
      else
        store_tile(acc, out0, CH);
    } else {
      store_tile(acc, p == 1 ? t1 : p == 2 ? t2 : t3, D::LDT);
    }
  }
}

// ---- forward ------------------------------------------------------------------------------------
// grid (H, B), block 2N threads (N/16 warps). Writes y, sa [B,T,H,N] and s_ckpt [B,H,T/16,N,N]
// (s_ckpt[b][h][c][j][i] = S_{16c+15}[i][j]).
template <int N>
__global__ void __launch_bounds__(WindDims<N>::THREADS)
    wind_forward_kernel(float* y, float* s_ckpt, float* sa, const bf16* r_, const bf16* w_,
                        const bf16* k_, const bf16* v_, const bf16* a_, const bf16* b_, int T,
                        int H) {
  using D = WindDims<N>;
  constexpr int LDC = D::LDC, LDS = D::LDS, LDT = D::LDT, NT = N / 16;
  MN_DYNAMIC_SHARED(unsigned char, smem);
  bf16* hp = (bf16*)smem;
  const ChunkMats m = chunk_mats(hp, D::CM);  // 10 x [16][LDC]
  bf16* S0 = hp + 10 * D::CM;                               // [N][LDS]: S0[i][j], bf16
  bf16* AK = S0 + D::SM;                                    // [16][LDT]
  bf16* QB = AK + D::TM;                                    // [16][LDT]
  bf16* QK = QB + D::TM;                                    // [16][LDT]
  float* AB = (float*)(QK + D::TM);                         // [16][16]
  float* Uf = AB + CH * CH;                                 // [16][N]: right-hand side, fp32
  float* E = Uf + CH * N;                                   // [N]

  const int h = blockIdx.x, bb = blockIdx.y, tid = threadIdx.x;
  const int warp = tid / 32, i0 = 16 * warp;  // this warp's rows of S / columns of Y
  const int64_t tstride = (int64_t)H * N;
  const int nc = T / CH;
  float* ckpt = s_ckpt + ((int64_t)bb * H + h) * nc * N * N;
  float st[NT][8];  // S[i0 .. i0+15][16 jt ..]: this warp's row stripe of the state, fp32
#pragma unroll
  for (int jt = 0; jt < NT; jt++) zero8(st[jt]);

  for (int c = 0; c < nc; c++) {
    const int64_t ind0 = wind_index(bb, c * CH, h, 0, T, H, N);
    __syncthreads();  // the previous chunk is done with shared memory
    if (tid < N) {
      float L[CH];
      wind_prep_channel<N>(L, m, E, r_, w_, k_, a_, b_, ind0 + tid, tstride, tid);
    } else {
      const int j = tid - N;
      for (int t = 0; t < CH; t++) m.v[t * LDC + j] = v_[ind0 + t * tstride + j];
    }
#pragma unroll
    for (int jt = 0; jt < NT; jt++) store_tile(st[jt], S0 + i0 * LDS + 16 * jt, LDS);
    __syncthreads();

    wind_time_products<N>(m.ac, m.rc, m.bc, m.kc, AB, nullptr, AK, QB, QK, nullptr);
    __syncthreads();

    {  // right-hand side of the solve, columns i0..: As S0^T + AK V
      float acc[8];
      zero8(acc);
      mm_acc<false, true>(acc, m.as, LDC, S0 + i0 * LDS, LDS, N);
      mm_acc<false, false>(acc, AK, LDT, m.v + i0, LDC, CH);
      store_tile(acc, Uf + i0, N);
    }
    __syncthreads();

    if (tid < N) {  // forward substitution, column i: U_t = rhs_t + sum_{tau<t} AB[t][tau] U_tau
      const int i = tid;
      float u[CH];
#pragma unroll
      for (int t = 0; t < CH; t++) {
        float s = Uf[t * N + i];
#pragma unroll
        for (int tau = 0; tau < t; tau++) s += AB[t * CH + tau] * u[tau];
        u[t] = s;
        m.u[t * LDC + i] = mn_f32_to_bf16(s);
        sa[ind0 + t * tstride + i] = s;
      }
    }
    __syncthreads();

    {  // Y = Rs S0^T + QB U + QK V, columns i0..
      float acc[8];
      zero8(acc);
      mm_acc<false, true>(acc, m.rs, LDC, S0 + i0 * LDS, LDS, N);
      mm_acc<false, false>(acc, QB, LDT, m.u + i0, LDC, CH);
      mm_acc<false, false>(acc, QK, LDT, m.v + i0, LDC, CH);
#pragma unroll
      for (int q = 0; q < 8; q++)
        y[ind0 + frag_row(q) * tstride + i0 + frag_col(q)] = acc[q];
    }
    // S15 = S0 diag(E) + U^T Be + V^T Ke on this warp's rows; saved (transposed) as chunk c's end.
    float* dst = ckpt + (int64_t)c * N * N;
#pragma unroll
    for (int jt = 0; jt < NT; jt++) {
      float* s = st[jt];
#pragma unroll
      for (int q = 0; q < 8; q++) s[q] *= E[16 * jt + frag_col(q)];
      mm_acc<true, false>(s, m.u + i0, LDC, m.be + 16 * jt, LDC, CH);
      mm_acc<true, false>(s, m.v + i0, LDC, m.ke + 16 * jt, LDC, CH);
#pragma unroll
      for (int q = 0; q < 8; q++)
        dst[(int64_t)(16 * jt + frag_col(q)) * N + i0 + frag_row(q)] = s[q];
    }
  }
}

// ---- backward -----------------------------------------------------------------------------------
// grid (H, B), block 2N threads. Accumulates dr, dw, dk, dv, da, db [B,T,H,N]; G1: the element
// type of dr, dk, dv, G2: of dw, da, db (fp32 or bf16, MN_PUT_GRAD).
template <int N, class G1, class G2>
__global__ void __launch_bounds__(WindDims<N>::THREADS)
    wind_backward_kernel(G1* dr_, G2* dw_, G1* dk_, G1* dv_, G2* da_, G2* db_,
                         const float* dy_, const bf16* r_, const bf16* w_, const bf16* k_,
                         const bf16* v_, const bf16* a_, const bf16* b_, const float* s_ckpt,
                         const float* sa_, int T, int H, int acc) {
  using D = WindDims<N>;
  constexpr int LDC = D::LDC, LDS = D::LDS, LDT = D::LDT, NT = N / 16, WARPS = D::WARPS;
  const int ar = MN_ACC_BIT(acc, 0), aw = MN_ACC_BIT(acc, 1), ak = MN_ACC_BIT(acc, 2);
  const int av = MN_ACC_BIT(acc, 3), aa = MN_ACC_BIT(acc, 4), ab = MN_ACC_BIT(acc, 5);
  MN_DYNAMIC_SHARED(unsigned char, smem);
  bf16* hp = (bf16*)smem;
  const ChunkMats m = chunk_mats(hp, D::CM);  // 10 x [16][LDC]
  bf16* dY = hp + 10 * D::CM;                               // [16][LDC]
  bf16* dZ = dY + D::CM;                                    // [16][LDC]
  bf16* S0 = dZ + D::CM;                                    // [N][LDS]: S0[i][j]
  bf16* Gs = S0 + D::SM;                                    // [N][LDS]: G[i][j]
  bf16* AK = Gs + D::SM;                                    // [16][LDT] each, from here
  bf16* QB = AK + D::TM;
  bf16* QK = QB + D::TM;
  bf16* dAB = QK + D::TM;
  bf16* dAK = dAB + D::TM;
  bf16* dQB = dAK + D::TM;
  bf16* dQK = dQB + D::TM;
  float* AB = (float*)(dQK + D::TM);  // [16][16]
  float* dUf = AB + CH * CH;          // [16][N]: dU (fp32); later reused for gLx
  float* Ls = dUf + CH * N;           // [16][N]: L_t per channel
  float* gL = Ls + CH * N;            // [16][N]
  float* E = gL + CH * N;             // [N]
  float* gE = E + N;                  // [N]: sum_t (k dKe + b dBe) e^{L15-L}
  float* dEp = gE + N;                // [WARPS][N]: per-warp partial sums of G * S0 over rows
  float* band = dEp + WARPS * N;      // [4][16]: the unit-decay entries of dAB, dAK, dQB, dQK
  float* gLx = dUf;

  const int h = blockIdx.x, bb = blockIdx.y, tid = threadIdx.x;
  const int warp = tid / 32, i0 = 16 * warp, lane = tid % 32;
  const int64_t tstride = (int64_t)H * N;
  const int nc = T / CH;
  const float* ckpt = s_ckpt + ((int64_t)bb * H + h) * nc * N * N;
  float G[NT][8];  // dL/dS15 of the current chunk, rows i0 .. i0+15
#pragma unroll
  for (int jt = 0; jt < NT; jt++) zero8(G[jt]);

  for (int c = nc - 1; c >= 0; c--) {
    const int64_t ind0 = wind_index(bb, c * CH, h, 0, T, H, N);
    __syncthreads();  // the previous chunk is done with shared memory
    if (tid < N) {
      float L[CH];
      wind_prep_channel<N>(L, m, E, r_, w_, k_, a_, b_, ind0 + tid, tstride, tid);
#pragma unroll
      for (int t = 0; t < CH; t++) Ls[t * N + tid] = L[t];
    } else {
      const int j = tid - N;
      for (int t = 0; t < CH; t++) {
        const int64_t ind = ind0 + t * tstride + j;
        m.v[t * LDC + j] = v_[ind];
        m.u[t * LDC + j] = mn_f32_to_bf16(sa_[ind]);
        dY[t * LDC + j] = mn_f32_to_bf16(dy_[ind]);
      }
    }
    // S0 (chunk c-1's end, or 0) and G on this warp's rows: bf16 copies for the products, and the
    // per-column partial sums of G * S0 (the gradient of E).
#pragma unroll
    for (int jt = 0; jt < NT; jt++) {
      float s0[8];
#pragma unroll
      for (int q = 0; q < 8; q++)
        s0[q] = c > 0 ? ckpt[(int64_t)(c - 1) * N * N + (int64_t)(16 * jt + frag_col(q)) * N + i0 +
                             frag_row(q)]
                      : 0.0f;
      store_tile(s0, S0 + i0 * LDS + 16 * jt, LDS);
      store_tile(G[jt], Gs + i0 * LDS + 16 * jt, LDS);
      float part[2][2];  // [column half][column parity]: rows g and g + 8 of this lane
#pragma unroll
      for (int nt = 0; nt < 2; nt++)
#pragma unroll
        for (int e = 0; e < 2; e++)
          part[nt][e] =
              G[jt][4 * nt + e] * s0[4 * nt + e] + G[jt][4 * nt + 2 + e] * s0[4 * nt + 2 + e];
#pragma unroll
      for (int o = 4; o < 32; o <<= 1)  // sum over the 8 row groups (lane bits 2..4)
#pragma unroll
        for (int nt = 0; nt < 2; nt++)
#pragma unroll
          for (int e = 0; e < 2; e++) part[nt][e] += __shfl_xor_sync(0xffffffffu, part[nt][e], o);
      if (lane < 4)
#pragma unroll
        for (int nt = 0; nt < 2; nt++)
#pragma unroll
          for (int e = 0; e < 2; e++) dEp[warp * N + 16 * jt + 8 * nt + 2 * lane + e] = part[nt][e];
    }
    __syncthreads();

    wind_time_products<N>(m.ac, m.rc, m.bc, m.kc, AB, nullptr, AK, QB, QK, nullptr);
    __syncthreads();

    {  // dU = QB^T dY + Be G^T, columns i0..
      float acc[8];
      zero8(acc);
      mm_acc<true, false>(acc, QB, LDT, dY + i0, LDC, CH);
      mm_acc<false, true>(acc, m.be, LDC, Gs + i0 * LDS, LDS, N);
      store_tile(acc, dUf + i0, N);
    }
    __syncthreads();

    if (tid < N) {  // back substitution, column i: dZ_t = dU_t + sum_{tau>t} AB[tau][t] dZ_tau
      const int i = tid;
      float z[CH];
#pragma unroll
      for (int t = CH - 1; t >= 0; t--) {
        float s = dUf[t * N + i];
#pragma unroll
        for (int tau = t + 1; tau < CH; tau++) s += AB[tau * CH + t] * z[tau];
        z[t] = s;
        dZ[t * LDC + i] = mn_f32_to_bf16(s);
      }
    }
    __syncthreads();

    // dAB, dAK without their first subdiagonal, dQB, dQK without their diagonal: see below.
    wind_time_products<N>(dZ, dY, m.u, m.v, nullptr, dAB, dAK, dQB, dQK, band);
    __syncthreads();

    {  // this warp's channels j = i0..i0+15: the input gradients
      // The entries of the 16x16 matrices whose decay factor is exactly 1 (QB, QK at (t, t):
      // r_t.b_t, r_t.k_t; AB, AK at (t, t-1): a_t.b_{t-1}, a_t.k_{t-1}; Ke, Be at t = 15) are
      // taken out of the decay gradients, where their two contributions cancel exactly (the same
      // term, + at one L index and - at another that every suffix sum includes together): with
      // fast decays they dominate the sums while the true dw is small, and their bf16 rounding
      // would not cancel. Their input gradients are added in fp32 from band (dr_t += dQB_tt b_t +
      // dQK_tt k_t etc.).
      const int j0 = i0;
      const float* dqb = band + 2 * CH;  // diagonals of dQB, dQK
      const float* dqk = band + 3 * CH;
      const float* dab = band;  // first subdiagonals of dAB, dAK: dab[t] = dAB[t][t-1]
      const float* dak = band + CH;
      float gl[8], glx[8], ge[8], L[8], Lx[8], L15[8];
#pragma unroll
      for (int q = 0; q < 8; q++) {
        const int t = frag_row(q), j = j0 + frag_col(q);
        L[q] = Ls[t * N + j];
        Lx[q] = t ? Ls[(t - 1) * N + j] : 0.0f;
        L15[q] = Ls[(CH - 1) * N + j];
        ge[q] = 0.0f;
      }
      // The products over K = N unroll four steps at a time at N = 128: this block runs beside
      // the 64 accumulator registers of G, and their fully unrolled operand loads spilled (ptxas:
      // 92 B on sm_90, 56 B on sm_80; 0 with KU = 4 or 2). N <= 64 is unchanged.
      constexpr int KU = N >= 128 ? 4 : 8;
      // global index of element q, and of the same channel one step later / earlier
      auto at = [&](int q) { return ind0 + frag_row(q) * tstride + j0 + frag_col(q); };
      auto in = [](const bf16* p, int64_t i) { return mn_bf16_to_f32(p[i]); };
      float x[8], y[8];
      // r: dRc = dQB Bc + dQK Kc, dRs = dY S0
      zero8(x);
      zero8(y);
      mm_acc<false, false>(x, dQB, LDT, m.bc + j0, LDC, CH);
      mm_acc<false, false>(x, dQK, LDT, m.kc + j0, LDC, CH);
      mm_acc<false, false, KU>(y, dY, LDC, S0 + j0, LDS, N);
#pragma unroll
      for (int q = 0; q < 8; q++) {
        const int t = frag_row(q);
        const int64_t i = at(q);
        const float g = x[q] * expf(L[q] - 0.5f * L15[q]) + y[q] * expf(L[q]);
        gl[q] = in(r_, i) * g;
        MN_PUT_GRAD(dr_[i], g + dqb[t] * in(b_, i) + dqk[t] * in(k_, i), ar);
      }
      // k: dKc = dAK^T Ac + dQK^T Rc, dKe = V G
      zero8(x);
      zero8(y);
      mm_acc<true, false>(x, dAK, LDT, m.ac + j0, LDC, CH);
      mm_acc<true, false>(x, dQK, LDT, m.rc + j0, LDC, CH);
      mm_acc<false, false, KU>(y, m.v, LDC, Gs + j0, LDS, N);
#pragma unroll
      for (int q = 0; q < 8; q++) {
        const int t = frag_row(q);
        const int64_t i = at(q);
        const float kq = in(k_, i);
        const float gc = x[q] * expf(0.5f * L15[q] - L[q]), ge_ = y[q] * expf(L15[q] - L[q]);
        float g = gc + ge_ + dqk[t] * in(r_, i);
        if (t < CH - 1) {
          g += dak[t + 1] * in(a_, i + tstride);
          gl[q] -= kq * (gc + ge_);
          ge[q] += kq * ge_;
        } else {
          gl[q] -= kq * gc;
        }
        MN_PUT_GRAD(dk_[i], g, ak);
      }
      // a: dAc = dAB Bc + dAK Kc, dAs = dZ S0
      zero8(x);
      zero8(y);
      mm_acc<false, false>(x, dAB, LDT, m.bc + j0, LDC, CH);
      mm_acc<false, false>(x, dAK, LDT, m.kc + j0, LDC, CH);
      mm_acc<false, false, KU>(y, dZ, LDC, S0 + j0, LDS, N);
#pragma unroll
      for (int q = 0; q < 8; q++) {
        const int t = frag_row(q);
        const int64_t i = at(q);
        const float g = x[q] * expf(Lx[q] - 0.5f * L15[q]) + y[q] * expf(Lx[q]);
        glx[q] = in(a_, i) * g;
        MN_PUT_GRAD(da_[i], t ? g + dab[t] * in(b_, i - tstride) + dak[t] * in(k_, i - tstride) : g,
                    aa);
      }
      // b: dBc = dAB^T Ac + dQB^T Rc, dBe = U G
      zero8(x);
      zero8(y);
      mm_acc<true, false>(x, dAB, LDT, m.ac + j0, LDC, CH);
      mm_acc<true, false>(x, dQB, LDT, m.rc + j0, LDC, CH);
      mm_acc<false, false, KU>(y, m.u, LDC, Gs + j0, LDS, N);
#pragma unroll
      for (int q = 0; q < 8; q++) {
        const int t = frag_row(q);
        const int64_t i = at(q);
        const float bq = in(b_, i);
        const float gc = x[q] * expf(0.5f * L15[q] - L[q]), ge_ = y[q] * expf(L15[q] - L[q]);
        float g = gc + ge_ + dqb[t] * in(r_, i);
        if (t < CH - 1) {
          g += dab[t + 1] * in(a_, i + tstride);
          gl[q] -= bq * (gc + ge_);
          ge[q] += bq * ge_;
        } else {
          gl[q] -= bq * gc;
        }
        MN_PUT_GRAD(db_[i], g, ab);
      }
      // v: dV = QK^T dY + AK^T dZ + Ke G^T
      zero8(x);
      mm_acc<true, false>(x, QK, LDT, dY + j0, LDC, CH);
      mm_acc<true, false>(x, AK, LDT, dZ + j0, LDC, CH);
      mm_acc<false, true, KU>(x, m.ke, LDC, Gs + j0 * LDS, LDS, N);
#pragma unroll
      for (int q = 0; q < 8; q++) MN_PUT_GRAD(dv_[at(q)], x[q], av);

      store_tile(gl, gL + j0, N);
      store_tile(glx, gLx + j0, N);
      // gE: sum over the 16 rows (rows g, g + 8 in this lane; the 8 groups across lane bits 2..4)
      float part[2][2];
#pragma unroll
      for (int nt = 0; nt < 2; nt++)
#pragma unroll
        for (int e = 0; e < 2; e++) part[nt][e] = ge[4 * nt + e] + ge[4 * nt + 2 + e];
#pragma unroll
      for (int o = 4; o < 32; o <<= 1)
#pragma unroll
        for (int nt = 0; nt < 2; nt++)
#pragma unroll
          for (int e = 0; e < 2; e++) part[nt][e] += __shfl_xor_sync(0xffffffffu, part[nt][e], o);
      if (lane < 4)
#pragma unroll
        for (int nt = 0; nt < 2; nt++)
#pragma unroll
          for (int e = 0; e < 2; e++) gE[j0 + 8 * nt + 2 * lane + e] = part[nt][e];
    }
    // G <- G diag(E) + dY^T Rs + dZ^T As (dL/dS0), this warp's rows
#pragma unroll
    for (int jt = 0; jt < NT; jt++) {
      float* g = G[jt];
#pragma unroll
      for (int q = 0; q < 8; q++) g[q] *= E[16 * jt + frag_col(q)];
      mm_acc<true, false>(g, dY + i0, LDC, m.rs + 16 * jt, LDC, CH);
      mm_acc<true, false>(g, dZ + i0, LDC, m.as + 16 * jt, LDC, CH);
    }
    __syncthreads();

    if (tid < N) {  // the decays, channel j: suffix sums over the chunk
      const int j = tid;
      float ge_sum = 0.0f;
      for (int w = 0; w < WARPS; w++) ge_sum += dEp[w * N + j];
      const float gl15 = gE[j] + E[j] * ge_sum;
      float sL = 0.0f, sLx = 0.0f;  // sum_{t>=m} gL_t, sum_{t>m} gLx_t
      for (int t = CH - 1; t >= 0; t--) {
        sL += gL[t * N + j];
        const int64_t ind = ind0 + t * tstride + j;
        const float ell = wind_log_decay(mn_bf16_to_f32(w_[ind]));
        MN_PUT_GRAD(dw_[ind], (sL + sLx + gl15) * ell, aw);
        sLx += gLx[t * N + j];
      }
    }
  }
}

// ---- host side ----------------------------------------------------------------------------------
template <int N>
int wind_forward_launch(float* y, float* s_ckpt, float* sa, mn_bf16* r, mn_bf16* w, mn_bf16* k,
                        mn_bf16* v, mn_bf16* a, mn_bf16* b, int B, int T, int H, void* stream) {
  using D = WindDims<N>;
  return mn_launch("wkv7_wind_forward", wind_forward_kernel<N>, dim3(H, B), dim3(D::THREADS),
                   D::FWD_SMEM, stream, y, s_ckpt, sa, (const bf16*)r, (const bf16*)w,
                   (const bf16*)k, (const bf16*)v, (const bf16*)a, (const bf16*)b, T, H);
}

template <int N, class G1, class G2>
int wind_backward_launch(G1* dr, G2* dw, G1* dk, G1* dv, G2* da, G2* db, float* dy, mn_bf16* r,
                         mn_bf16* w, mn_bf16* k, mn_bf16* v, mn_bf16* a, mn_bf16* b,
                         float* s_ckpt, float* sa, int B, int T, int H, int accumulate,
                         void* stream) {
  using D = WindDims<N>;
  return mn_launch("wkv7_wind_backward", wind_backward_kernel<N, G1, G2>, dim3(H, B),
                   dim3(D::THREADS), D::BWD_SMEM, stream, dr, dw, dk, dv, da, db,
                   (const float*)dy, (const bf16*)r, (const bf16*)w, (const bf16*)k,
                   (const bf16*)v, (const bf16*)a, (const bf16*)b, (const float*)s_ckpt,
                   (const float*)sa, T, H, accumulate);
}

}  // namespace

MN_API int mn_wkv7_wind_forward(float* y, float* s_ckpt, float* sa, mn_bf16* r, mn_bf16* w,
                                mn_bf16* k, mn_bf16* v, mn_bf16* a, mn_bf16* b, int B, int T,
                                int H, int N, void* stream) {
  if (int rc = mn_check_wkv7_wind_shape("wkv7_wind_forward", B, T, H, N)) return rc;
  MN_REQUIRE(y && s_ckpt && sa && r && w && k && v && a && b,
             "wkv7_wind_forward: NULL tensor argument");
  switch (N) {
    case 16: return wind_forward_launch<16>(y, s_ckpt, sa, r, w, k, v, a, b, B, T, H, stream);
    case 32: return wind_forward_launch<32>(y, s_ckpt, sa, r, w, k, v, a, b, B, T, H, stream);
    case 64: return wind_forward_launch<64>(y, s_ckpt, sa, r, w, k, v, a, b, B, T, H, stream);
    default: return wind_forward_launch<128>(y, s_ckpt, sa, r, w, k, v, a, b, B, T, H, stream);
  }
}

MN_API int mn_wkv7_wind_backward(void* dr, void* dw, void* dk, void* dv, void* da, void* db,
                                 float* dy, mn_bf16* r, mn_bf16* w, mn_bf16* k, mn_bf16* v,
                                 mn_bf16* a, mn_bf16* b, float* s_ckpt, float* sa, int B, int T,
                                 int H, int N, int drkv_bf16, int dwab_bf16, int accumulate,
                                 void* stream) {
  if (int rc = mn_check_wkv7_wind_shape("wkv7_wind_backward", B, T, H, N)) return rc;
  MN_REQUIRE(dr && dw && dk && dv && da && db && dy && r && w && k && v && a && b && s_ckpt && sa,
             "wkv7_wind_backward: NULL tensor argument");
  return mn_with_dtypes(drkv_bf16, dwab_bf16, 0, [&](auto t1, auto t2, auto) {
    using G1 = typename decltype(t1)::type;
    using G2 = typename decltype(t2)::type;
#define MN_WIND_BWD(NN)                                                                         \
  return wind_backward_launch<NN, G1, G2>((G1*)dr, (G2*)dw, (G1*)dk, (G1*)dv, (G2*)da, (G2*)db, \
                                          dy, r, w, k, v, a, b, s_ckpt, sa, B, T, H, accumulate, \
                                          stream)
    switch (N) {
      case 16: MN_WIND_BWD(16);
      case 32: MN_WIND_BWD(32);
      case 64: MN_WIND_BWD(64);
      default: MN_WIND_BWD(128);
    }
#undef MN_WIND_BWD
  });
}
