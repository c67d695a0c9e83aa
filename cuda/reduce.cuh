// Deterministic two-stage reductions over a full grid (kernels.h, conventions "Reductions" and
// "Scratch"), shared by the parameter-gradient and scalar reductions of elementwise.cu, norm.cu and
// modelops.cu.
//
// Column sums, out_k[c] += sum_i term_k(i, c) over the N rows of an [N, C] operand:
//   stage 1, grid (ceil(C / 32), tiles), block 32 x 8: block (x, y) owns 32 columns and the rows of
//     row tile y; thread (tx, ty) sums rows ty, ty + 8, ... of the tile in increasing order (4 rows
//     loaded before any is added, so 4 loads per operand are in flight), the 8 row lanes are added
//     in lane order, and the block writes its partial row to scratch [tiles][K][C];
//   stage 2 is the same kernel over the partials ([tiles, K*C] as one tile): the tiles are summed
//     in tile order and added to out_k[c] (or stored there: bit k of `accumulate` clear, the
//     backward convention of kernels.h).
//   With one tile (small N), stage 1 adds straight into out and there is no stage 2.
// Full sums, out_k = sum_i term_k(i) over n elements: stage 1, `blocks` blocks of 256 threads, block
//   b owns the contiguous chunk [b * chunk, (b + 1) * chunk), thread t sums elements t, t + 256, ...
//   of the chunk in order, mn_block_sum adds the threads in a fixed order; stage 2 is one block over
//   the `blocks` partials. One block: no stage 2.
// The tiling depends only on the shape (never on the device), and every addition happens in a
// fixed order, so the results are bit-identical from run to run and across GPUs of one
// architecture. No float atomics anywhere.
//
// A Term is a small struct (passed by value) with:
//   struct Load {...};                          values of one row (or element) read from memory
//   __device__ void begin(int c)                once per column before the rows (column sums only)
//   __device__ Load load(int64_t i, int c)      reads only; the kernel issues 4 loads before 4 uses
//   __device__ void use(int64_t i, int c, const Load&, float* acc)   acc[0..K) += terms; may also
//                                               write a fused elementwise output (e.g. dx)
// (full sums drop the column argument: begin(), load(i), use(i, l, acc)). Per-element math lives in __host__ __device__ helpers next
// to each term, shared with the kernels that compute the same quantity unfused.
#pragma once
#include <algorithm>

#include "common.cuh"
#include "scratch.h"

namespace mn_reduce {

constexpr int kCols = 32;            // columns per block: one warp reads 128 contiguous bytes/row
constexpr int kLanes = 8;            // row lanes per block (256 threads)
constexpr int kUnroll = 4;           // rows loaded ahead by each thread
constexpr int kTargetBlocks = 1024;  // ~one full wave of 256-thread blocks on a 132-SM GPU
constexpr int kMinTileRows = 64;     // rows per tile at least: 8 rows for each row lane
constexpr int kMaxTiles = 256;       // bounds the partials (and stage 2's work per column)

struct ColPlan {
  unsigned col_blocks;  // blocks per row tile: ceil(C / kCols) for the column sums
  int tiles;            // row tiles (grid.y of stage 1); 1 = no stage 2
  int64_t tile_rows;    // rows per tile, a multiple of kLanes * kUnroll (the last tile may be short)
};

// Row tiles for a grid of `blocks_per_tile` blocks per row tile: about kTargetBlocks blocks in
// all, at least kMinTileRows rows a tile, at most kMaxTiles tiles, rows per tile a multiple of
// kLanes * kUnroll (the last tile may be short). Also the tiling of fused passes that sum their
// own column terms per row tile (col_sums_finish), e.g. one block per head.
inline ColPlan row_tile_plan(int64_t N, int64_t blocks_per_tile) {
  ColPlan p;
  p.col_blocks = (unsigned)blocks_per_tile;
  int64_t want = (kTargetBlocks + blocks_per_tile - 1) / blocks_per_tile;
  int64_t by_rows = (N + kMinTileRows - 1) / kMinTileRows;
  int64_t tiles = std::min<int64_t>(std::min<int64_t>(want, by_rows), kMaxTiles);
  if (tiles < 1) tiles = 1;
  const int64_t step = kLanes * kUnroll;
  p.tile_rows = ((N + tiles - 1) / tiles + step - 1) / step * step;
  p.tiles = (int)((N + p.tile_rows - 1) / p.tile_rows);
  return p;
}

inline ColPlan col_plan(int64_t N, int64_t C) { return row_tile_plan(N, (C + kCols - 1) / kCols); }

// Scratch floats the column sums of K outputs over [N, C] need (0 with one tile).
inline int64_t col_scratch_floats(int64_t N, int64_t C, int K) {
  ColPlan p = col_plan(N, C);
  return p.tiles > 1 ? (int64_t)p.tiles * K * C : 0;
}

constexpr int kMaxSums = 4;  // column sums one pass carries at most

// The outputs of column sums: o[k] for k < K ([C] floats each).
struct ColOuts {
  float* o[kMaxSums];
};

// Stage 1 (and, with PartialsTerm, stage 2) of the column sums. part != NULL: block (x, y) writes
// its sums to part[(y * K + k) * C + c]; part == NULL: adds them to outs.o[k][c] when bit k of
// `accumulate` is set, else stores them (not read).
template <int K, class Term>
__global__ void __launch_bounds__(kCols* kLanes)
    col_sums_kernel(Term term, float* part, ColOuts outs, int64_t N, int C, int64_t tile_rows,
                    int accumulate) {
  static_assert(K >= 1 && K <= kMaxSums, "one to four outputs");
  __shared__ float red[K][kLanes][kCols];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int c = blockIdx.x * kCols + tx;
  const int64_t i0 = (int64_t)blockIdx.y * tile_rows;
  const int64_t i1 = i0 + tile_rows < N ? i0 + tile_rows : N;
  float acc[K];
#pragma unroll
  for (int k = 0; k < K; k++) acc[k] = 0.0f;
  if (c < C) {
    Term t = term;
    t.begin(c);
    int64_t i = i0 + ty;
    for (; i + (kUnroll - 1) * kLanes < i1; i += kUnroll * kLanes) {
      typename Term::Load v[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; u++) v[u] = t.load(i + u * kLanes, c);
#pragma unroll
      for (int u = 0; u < kUnroll; u++) t.use(i + u * kLanes, c, v[u], acc);
    }
    for (; i < i1; i += kLanes) {
      typename Term::Load v = t.load(i, c);
      t.use(i, c, v, acc);
    }
  }
#pragma unroll
  for (int k = 0; k < K; k++) red[k][ty][tx] = acc[k];
  __syncthreads();
  if (ty == 0 && c < C) {
#pragma unroll
    for (int k = 0; k < K; k++) {
      float s = 0.0f;
#pragma unroll
      for (int r = 0; r < kLanes; r++) s += red[k][r][tx];
      if (part) {
        part[((int64_t)blockIdx.y * K + k) * C + c] = s;
      } else {
        MN_GRAD_STORE(outs.o[k][c], s, MN_ACC_BIT(accumulate, k));
      }
    }
  }
}

// Stage 2's term: row t of the partials [tiles][K][C]; column c of output k is column k*C + c.
template <int K>
struct PartialsTerm {
  const float* part;
  int C;
  struct Load {
    float p[K];
  };
  __device__ void begin(int) {}
  __device__ Load load(int64_t t, int c) const {
    Load l;
#pragma unroll
    for (int k = 0; k < K; k++) l.p[k] = part[(t * K + k) * C + c];
    return l;
  }
  __device__ void use(int64_t, int, const Load& l, float* acc) const {
#pragma unroll
    for (int k = 0; k < K; k++) acc[k] += l.p[k];
  }
};

// Stage 2 alone: outs.o[k][c] (+= when bit k of accumulate is set, else =) the sum over t < tiles,
// in tile order, of part[(t * K + k) * C + c]. For kernels that compute their own stage-1
// partials (a fused elementwise pass that also sums its parameter terms per row tile).
template <int K>
int col_sums_finish(const float* part, int tiles, ColOuts outs, int C, int accumulate,
                    void* stream) {
  const dim3 block(kCols, kLanes);
  return mn_launch("column_sums_finish", col_sums_kernel<K, PartialsTerm<K>>,
                   dim3((unsigned)((C + kCols - 1) / kCols), 1), block, 0, stream,
                   PartialsTerm<K>{part, C}, (float*)nullptr, outs, (int64_t)tiles, C,
                   (int64_t)tiles, accumulate);
}

// outs.o[k][c] (+= when bit k of accumulate is set, else =) sum over the N rows of term_k(i, c),
// k < K. part: scratch of col_scratch_floats(N, C, K) floats (NULL when that is 0).
template <int K, class Term>
int col_sums(const char* name, Term term, ColOuts outs, int64_t N, int C, int accumulate,
             float* part, void* stream) {
  const ColPlan p = col_plan(N, C);
  const dim3 block(kCols, kLanes);
  if (p.tiles == 1)
    return mn_launch(name, col_sums_kernel<K, Term>, dim3(p.col_blocks, 1), block, 0, stream,
                     term, (float*)nullptr, outs, N, C, p.tile_rows, accumulate);
  int rc = mn_launch(name, col_sums_kernel<K, Term>, dim3(p.col_blocks, p.tiles), block, 0,
                     stream, term, part, outs, N, C, p.tile_rows, accumulate);
  if (rc) return rc;
  return col_sums_finish<K>(part, p.tiles, outs, C, accumulate, stream);
}
// The one- and two-output form (out1 may be NULL when K == 1).
template <int K, class Term>
int col_sums(const char* name, Term term, float* out0, float* out1, int64_t N, int C,
             int accumulate, float* part, void* stream) {
  static_assert(K == 1 || K == 2, "one or two outputs: pass ColOuts for more");
  return col_sums<K, Term>(name, term, ColOuts{{out0, out1, nullptr, nullptr}}, N, C, accumulate,
                           part, stream);
}

// ---- full sums ----
constexpr int kFullThreads = 256;
constexpr int kFullMaxBlocks = 1024;
constexpr int64_t kFullMinChunk = 4096;  // 16 elements per thread at least

struct FullPlan {
  int blocks;
  int64_t chunk;  // elements per block, a multiple of kFullThreads * kUnroll
};

inline FullPlan full_plan(int64_t n) {
  const int64_t step = kFullThreads * kUnroll;
  int64_t chunk = (n + kFullMaxBlocks - 1) / kFullMaxBlocks;
  if (chunk < kFullMinChunk) chunk = kFullMinChunk;
  chunk = (chunk + step - 1) / step * step;
  return FullPlan{(int)((n + chunk - 1) / chunk), chunk};
}

inline int64_t full_scratch_floats(int64_t n, int K) {
  FullPlan p = full_plan(n);
  return p.blocks > 1 ? (int64_t)p.blocks * K : 0;
}

// Block b sums term(i) over i in its chunk; part != NULL: part[b * K + k] = sum; else out_k[0] =
// sum, or += sum when bit k of `accumulate` is set. out0 == out1: stored in order k = 0, 1.
template <int K, class Term>
__global__ void __launch_bounds__(kFullThreads)
    full_sums_kernel(Term term, float* part, float* out0, float* out1, int64_t n, int64_t chunk,
                     int accumulate) {
  __shared__ float scratch[32];
  const int64_t i0 = (int64_t)blockIdx.x * chunk;
  const int64_t i1 = i0 + chunk < n ? i0 + chunk : n;
  float acc[K];
#pragma unroll
  for (int k = 0; k < K; k++) acc[k] = 0.0f;
  Term t = term;
  t.begin();
  int64_t i = i0 + threadIdx.x;
  for (; i + (kUnroll - 1) * kFullThreads < i1; i += kUnroll * kFullThreads) {
    typename Term::Load v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; u++) v[u] = t.load(i + u * kFullThreads);
#pragma unroll
    for (int u = 0; u < kUnroll; u++) t.use(i + u * kFullThreads, v[u], acc);
  }
  for (; i < i1; i += kFullThreads) {
    typename Term::Load v = t.load(i);
    t.use(i, v, acc);
  }
#pragma unroll
  for (int k = 0; k < K; k++) {
    float s = mn_block_sum(acc[k], scratch);
    if (threadIdx.x == 0) {
      float* out = k == 0 ? out0 : out1;
      if (part) part[(int64_t)blockIdx.x * K + k] = s;
      else if (out) MN_GRAD_STORE(out[0], s, MN_ACC_BIT(accumulate, k));
    }
  }
}

template <int K>
struct FullPartialsTerm {
  const float* part;
  struct Load {
    float p[K];
  };
  __device__ void begin() {}
  __device__ Load load(int64_t b) const {
    Load l;
#pragma unroll
    for (int k = 0; k < K; k++) l.p[k] = part[b * K + k];
    return l;
  }
  __device__ void use(int64_t, const Load& l, float* acc) const {
#pragma unroll
    for (int k = 0; k < K; k++) acc[k] += l.p[k];
  }
};

// out_k[0] (=, or += when bit k of accumulate is set) sum of term_k(i) over i < n; a NULL out_k is
// skipped.
// part: scratch of full_scratch_floats(n, K) floats (NULL when that is 0).
template <int K, class Term>
int full_sums(const char* name, Term term, float* out0, float* out1, int64_t n, int accumulate,
              float* part, void* stream) {
  static_assert(K == 1 || K == 2, "one or two outputs");
  const FullPlan p = full_plan(n);
  if (p.blocks == 1)
    return mn_launch(name, full_sums_kernel<K, Term>, 1, kFullThreads, 0, stream, term,
                     (float*)nullptr, out0, out1, n, p.chunk, accumulate);
  int rc = mn_launch(name, full_sums_kernel<K, Term>, p.blocks, kFullThreads, 0, stream, term,
                     part, out0, out1, n, p.chunk, accumulate);
  if (rc) return rc;
  return mn_launch("full_sums_finish", full_sums_kernel<K, FullPartialsTerm<K>>, 1, kFullThreads,
                   0, stream, FullPartialsTerm<K>{part}, (float*)nullptr, out0, out1,
                   (int64_t)p.blocks, (int64_t)p.blocks, accumulate);
}

// Scratch of `floats` floats for this call (NULL when floats == 0); returns an error code or 0.
inline int scratch_floats(float** out, int64_t floats, void* stream) {
  *out = nullptr;
  if (floats <= 0) return 0;
  void* p = nullptr;
  if (int rc = mn_scratch(&p, floats * (int64_t)sizeof(float), stream)) return rc;
  *out = (float*)p;
  return 0;
}

}  // namespace mn_reduce
