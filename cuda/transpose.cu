// Matrix transpose through a shared-memory tile so both the reads and the writes are coalesced.
#include "common.cuh"

constexpr int TILE = 32;

__global__ void transpose_kernel(float* out, const float* x, int R, int C) {
  __shared__ float tile[TILE][TILE + 1];  // +1: no shared-memory bank conflicts on the column read
  int c = blockIdx.x * TILE + threadIdx.x;
  for (int dr = threadIdx.y; dr < TILE; dr += blockDim.y) {
    int r = blockIdx.y * TILE + dr;
    if (r < R && c < C) tile[dr][threadIdx.x] = x[(int64_t)r * C + c];
  }
  __syncthreads();
  int r = blockIdx.y * TILE + threadIdx.x;
  for (int dc = threadIdx.y; dc < TILE; dc += blockDim.y) {
    int cc = blockIdx.x * TILE + dc;
    if (r < R && cc < C) out[(int64_t)cc * R + r] = tile[threadIdx.x][dc];
  }
}

MN_API int mn_transpose(float* out, float* x, int R, int C, void* stream) {
  MN_REQUIRE(R > 0 && C > 0, "transpose: bad shape [%d, %d]", R, C);
  MN_REQUIRE(out != x, "transpose: in-place is not supported");
  MN_REQUIRE((C + TILE - 1) / TILE <= 2147483647 && (R + TILE - 1) / TILE <= 65535,
             "transpose: %d rows is too many", R);
  dim3 grid((C + TILE - 1) / TILE, (R + TILE - 1) / TILE);
  return mn_launch("transpose", transpose_kernel, grid, dim3(TILE, 8), 0, stream, out,
                   (const float*)x, R, C);
}
