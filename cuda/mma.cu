// ABI self-test of the tensor-core wrappers in mma.cuh: D = A @ B + C with one warp per 16x8 tile
// of D, the A/B tiles staged in shared memory, fragments loaded with ldmatrix, products by mma.
#include "common.cuh"
#include "mma.cuh"

// One block = one warp = one 16x8 tile of D (grid (N/8, M/16)). Per 16-wide k step, A's 16x16 tile
// is staged both as sA[m][k] and transposed as sAT[k][m]; even k steps load the A fragments with
// ldmatrix.x4 from sA, odd ones with ldmatrix.x4.trans from sAT (so both paths are exercised). B's
// 16x8 tile sB[k][n] (row-major, i.e. k-major) gives the "col" B fragments via ldmatrix.x2.trans.
__global__ void mma_selftest_kernel(float* D, const bf16* A, const bf16* B, const float* C, int M,
                                    int N, int K) {
  alignas(16) __shared__ bf16 sA[16][16];
  alignas(16) __shared__ bf16 sAT[16][16];
  alignas(16) __shared__ bf16 sB[16][8];
  int lane = threadIdx.x;
  int m0 = blockIdx.y * 16, n0 = blockIdx.x * 8;
  int g = lane >> 2, t = lane & 3;
  float acc[4];
  for (int i = 0; i < 4; i++)
    acc[i] = C[(int64_t)(m0 + g + 8 * (i / 2)) * N + n0 + t * 2 + i % 2];
  for (int k0 = 0, step = 0; k0 < K; k0 += 16, step++) {
    for (int e = lane; e < 256; e += 32) {
      int r = e / 16, c = e % 16;
      bf16 v = A[(int64_t)(m0 + r) * K + k0 + c];
      sA[r][c] = v;
      sAT[c][r] = v;
    }
    for (int e = lane; e < 128; e += 32) {
      int r = e / 8, c = e % 8;
      sB[r][c] = B[(int64_t)(k0 + r) * N + n0 + c];
    }
    __syncthreads();
    uint32_t a[4], b[2];
    int j = lane / 8, r = lane % 8;
    if (step % 2 == 0)
      mn_ldmatrix_x4(a, &sA[r + 8 * (j % 2)][8 * (j / 2)]);  // matrix j: rows 8(j%2).., cols 8(j/2)..
    else
      mn_ldmatrix_x4_trans(a, &sAT[8 * (j / 2) + r][8 * (j % 2)]);  // the same, stored transposed
    mn_ldmatrix_x2_trans(b, &sB[(lane % 16)][0]);  // matrix 0: k 0-7, matrix 1: k 8-15
    float d[4];
    mn_mma_m16n8k16_bf16(d, a, b, acc);
    for (int i = 0; i < 4; i++) acc[i] = d[i];
    __syncthreads();  // the tiles are overwritten by the next step
  }
  for (int i = 0; i < 4; i++)
    D[(int64_t)(m0 + g + 8 * (i / 2)) * N + n0 + t * 2 + i % 2] = acc[i];
}

MN_API int mn_mma_selftest(float* D, mn_bf16* A, mn_bf16* B, float* C, int M, int N, int K,
                           void* stream) {
  MN_REQUIRE(M > 0 && N > 0 && K > 0, "mma_selftest: M = %d, N = %d, K = %d must be > 0", M, N, K);
  MN_REQUIRE(M % 16 == 0 && N % 8 == 0 && K % 16 == 0,
             "mma_selftest: need M %% 16 == 0, N %% 8 == 0, K %% 16 == 0 (M = %d, N = %d, K = %d)",
             M, N, K);
  MN_REQUIRE(M / 16 <= 65535, "mma_selftest: M = %d too large", M);
  return mn_launch("mma_selftest", mma_selftest_kernel, dim3(N / 8, M / 16), 32, 0, stream,
                   (float*)D, (const bf16*)A, (const bf16*)B, (const float*)C, M, N, K);
}

// ldmatrix layout probe: a 16x16 b16 tile whose element (r, c) holds the bits r * 16 + c is loaded
// with ldmatrix.x4 (which = 0) or .x4.trans (which = 1), lane 8j + i pointing at row i of matrix j =
// the 8x8 block at (rows 8 (j % 2), cols 8 (j / 2)) — the A-fragment order used above. Output
// [32 lanes][4 regs][2 halves]: the tile row and column each half received.
__global__ void mma_fragment_map_kernel(int* lane_rows, int* lane_cols, int which) {
  alignas(16) __shared__ uint16_t tile[16][16];
  int lane = threadIdx.x;
  for (int e = lane; e < 256; e += 32) tile[e / 16][e % 16] = (uint16_t)e;
  __syncthreads();
  uint32_t r[4];
  int j = lane / 8, i = lane % 8;
  const void* p = &tile[8 * (j % 2) + i][8 * (j / 2)];
  if (which == 0)
    mn_ldmatrix_x4(r, p);
  else
    mn_ldmatrix_x4_trans(r, p);
  for (int q = 0; q < 4; q++)
    for (int h = 0; h < 2; h++) {
      int code = (int)((r[q] >> (16 * h)) & 0xffffu);
      lane_rows[(lane * 4 + q) * 2 + h] = code / 16;
      lane_cols[(lane * 4 + q) * 2 + h] = code % 16;
    }
}

MN_API int mn_mma_fragment_map(int* lane_rows, int* lane_cols, int which, void* stream) {
  MN_REQUIRE(which == 0 || which == 1, "mma_fragment_map: which = %d (0: ldmatrix.x4, 1: .trans)",
             which);
  return mn_launch("mma_fragment_map", mma_fragment_map_kernel, 1, 32, 0, stream, lane_rows,
                   lane_cols, which);
}
