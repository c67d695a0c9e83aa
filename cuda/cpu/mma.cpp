#include "cpu_common.h"

// D = A[M,K] @ B[K,N] + C, row-major, double accumulation, fp32 out.
MN_API int mn_mma_selftest(float* D, mn_bf16* A, mn_bf16* B, float* C, int M, int N, int K,
                           void*) {
  MN_REQUIRE(M > 0 && N > 0 && K > 0, "mma_selftest: M = %d, N = %d, K = %d must be > 0", M, N, K);
  MN_REQUIRE(M % 16 == 0 && N % 8 == 0 && K % 16 == 0,
             "mma_selftest: need M %% 16 == 0, N %% 8 == 0, K %% 16 == 0 (M = %d, N = %d, K = %d)",
             M, N, K);
  for (int m = 0; m < M; m++)
    for (int n = 0; n < N; n++) {
      double s = C[(int64_t)m * N + n];
      for (int k = 0; k < K; k++)
        s += (double)bf16_to_f32(A[(int64_t)m * K + k]) * bf16_to_f32(B[(int64_t)k * N + n]);
      D[(int64_t)m * N + n] = (float)s;
    }
  return 0;
}

// The PTX ISA's ldmatrix table (9.7.13.4.15): in an 8x8 matrix, lane l receives row l / 4, columns
// 2 (l % 4) and 2 (l % 4) + 1; .trans delivers the transpose (row 2 (l % 4) + h, column l / 4).
// Matrix q of .x4 is the 8x8 block at (rows 8 (q % 2), cols 8 (q / 2)) of the 16x16 probe tile.
MN_API int mn_mma_fragment_map(int* lane_rows, int* lane_cols, int which, void*) {
  MN_REQUIRE(which == 0 || which == 1, "mma_fragment_map: which = %d (0: ldmatrix.x4, 1: .trans)",
             which);
  for (int l = 0; l < 32; l++)
    for (int q = 0; q < 4; q++)
      for (int h = 0; h < 2; h++) {
        int r = which ? 2 * (l % 4) + h : l / 4;
        int c = which ? l / 4 : 2 * (l % 4) + h;
        lane_rows[(l * 4 + q) * 2 + h] = 8 * (q % 2) + r;
        lane_cols[(l * 4 + q) * 2 + h] = 8 * (q / 2) + c;
      }
  return 0;
}
