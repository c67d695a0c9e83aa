// Token embedding lookup and its deterministic backward.
//   forward:  out[i, :] = wte[idx[i], :]
//   backward: dwte[idx[i], :] += dout[i, :], summed over i in increasing order
// Ids must lie in [0, V). The kernels do not report a bad id (that would need a host sync); they
// stay in bounds instead: forward writes NaN for the row of a bad id (so it shows up in the loss),
// backward drops its gradient. The cpu reference checks every id and fails with a message.
#include <algorithm>

#include "common.cuh"
#include "scratch.h"

__host__ __device__ inline bool emb_valid(int32_t v, int V) { return v >= 0 && v < V; }

__global__ void embedding_forward_kernel(float* out, const int32_t* idx, const float* wte, int N,
                                         int C, int V) {
  int64_t total = (int64_t)N * C;
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total;
       e += (int64_t)gridDim.x * blockDim.x) {
    int64_t i = e / C;
    int c = (int)(e - i * C);
    int32_t v = idx[i];
    out[e] = emb_valid(v, V) ? wte[(int64_t)v * C + c] : __int_as_float(0x7fc00000);
  }
}

// Backward, at full width and still exactly the serial sum of the cpu reference: every element
// dwte[v, c] is the fp32 chain dwte[v, c] + dout[i1, c] + dout[i2, c] + ... over the rows i1 < i2 <
// ... with id v, so different ids are independent and only the rows of one id need an order.
//   1. stable LSD radix sort of (id, row) by id, 4 bits per pass (ceil(bits(V) / 4) passes, 4 for
//      GPT-2's 50,257), each pass three launches: per-tile digit counts, one exclusive scan of the
//      counts (digit-major, so equal digits keep tile order), and the scatter, which ranks each key
//      within its tile from per-thread digit counts in shared memory (no atomics: stable and
//      deterministic). Invalid ids sort last as the key V and are dropped.
//   2. one block lists the segment starts (first position of each id) in order;
//   3. one warp per (segment, 32 columns) walks its id's rows in increasing row order, loading 32
//      rows' gradients before adding them, and writes dwte once per element.
// Scratch (library-internal, scratch.h): 5 N + 16 * tiles + 2 ints.

constexpr int kSortThreads = 256;
constexpr int kSortItems = 4;  // keys per thread: a tile is 1024 consecutive keys
constexpr int kSortTile = kSortThreads * kSortItems;
constexpr int kDigits = 16;  // 4-bit digits
constexpr int kScanMaxThreads = 1024;  // single-block scans: 16+ elements per thread, 32..1024
constexpr int kSegWarps = 8;  // warps per block of the segment kernel
constexpr int kSegRows = 32;  // rows of a segment loaded before they are added

// Threads of a single-block scan over n elements: a multiple of 32, at least 16 elements each, at
// most kScanMaxThreads (small launches for small inputs: cheaper on emu too).
inline int scan_threads(int64_t n) {
  int64_t t = (n + 16 * 32 - 1) / (16 * 32) * 32;
  return (int)std::min<int64_t>(std::max<int64_t>(t, 32), kScanMaxThreads);
}

// The key of row i: its id, or V for an id outside [0, V) (sorted last, then dropped).
__host__ __device__ inline int32_t emb_key(int32_t v, int V) { return emb_valid(v, V) ? v : V; }

// Exclusive prefix sum of one int per thread over the block (blockDim.x a multiple of 32, at most
// 1024); *total gets the block's sum. `sm` is __shared__ int[32]. Fixed order.
__device__ inline int block_exclusive_scan(int v, int* sm, int* total) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
  int incl = v;
  for (int o = 1; o < 32; o <<= 1) {
    int t = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += t;
  }
  __syncthreads();  // sm may still be read by a previous call
  if (lane == 31) sm[warp] = incl;
  __syncthreads();
  int before = 0, all = 0;
  for (int w = 0; w < nwarps; w++) {
    if (w < warp) before += sm[w];
    all += sm[w];
  }
  *total = all;
  return before + incl - v;
}

// The digits of one thread's kSortItems keys of tile `tile` (first pass: from idx, later passes:
// from the previous pass's keys), and its rank base per digit within the tile:
// rank[d] = #keys of the tile with digit d held by lower threads. d == kDigits marks "no key".
struct TileKeys {
  int32_t key[kSortItems];
  int digit[kSortItems];
};

__device__ inline TileKeys load_tile_keys(const int32_t* keys, const int32_t* idx, int N, int V,
                                          int shift) {
  TileKeys k;
  const int64_t base = (int64_t)blockIdx.x * kSortTile + (int64_t)threadIdx.x * kSortItems;
#pragma unroll
  for (int j = 0; j < kSortItems; j++) {
    const int64_t i = base + j;
    k.key[j] = i < N ? (keys ? keys[i] : emb_key(idx[i], V)) : 0;
    k.digit[j] = i < N ? (k.key[j] >> shift) & (kDigits - 1) : kDigits;
  }
  return k;
}

// counts [kDigits][kSortThreads] (shared) := this thread's digit counts; then every (d, t) entry is
// replaced by its exclusive prefix over the digit-major order (digit d, thread t), so
// counts[d][t] - counts[d][0] = keys with digit d in threads < t, and the tile's count of digit d is
// counts[d + 1][0] - counts[d][0] (with counts[kDigits][0] taken as the tile's key count).
__device__ inline void tile_digit_scan(const TileKeys& k, int (*counts)[kSortThreads], int* sm,
                                       int* tile_keys) {
  const int t = threadIdx.x;
  for (int d = 0; d < kDigits; d++) counts[d][t] = 0;
#pragma unroll
  for (int j = 0; j < kSortItems; j++)
    if (k.digit[j] < kDigits) counts[k.digit[j]][t]++;  // this thread's own column: no race
  __syncthreads();
  // thread t scans entries t * 16 .. t * 16 + 15 of the digit-major order
  constexpr int kPer = kDigits * kSortThreads / kSortThreads;
  const int d = t / (kSortThreads / kPer), t0 = (t % (kSortThreads / kPer)) * kPer;
  int local[kPer], sum = 0;
#pragma unroll
  for (int u = 0; u < kPer; u++) {
    local[u] = sum;
    sum += counts[d][t0 + u];
  }
  int total = 0;
  const int before = block_exclusive_scan(sum, sm, &total);
  __syncthreads();  // everyone has read counts before it is overwritten
#pragma unroll
  for (int u = 0; u < kPer; u++) counts[d][t0 + u] = before + local[u];
  *tile_keys = total;
  __syncthreads();
}

// Pass step 1: hist[d * tiles + tile] = keys of the tile with digit d.
__global__ void __launch_bounds__(kSortThreads)
    sort_count_kernel(int* hist, const int32_t* keys, const int32_t* idx, int N, int V,
                      int shift) {
  __shared__ int counts[kDigits][kSortThreads];
  __shared__ int sm[32];
  const TileKeys k = load_tile_keys(keys, idx, N, V, shift);
  int tile_keys = 0;
  tile_digit_scan(k, counts, sm, &tile_keys);
  if (threadIdx.x < kDigits) {
    const int d = threadIdx.x;
    const int next = d + 1 < kDigits ? counts[d + 1][0] : tile_keys;
    hist[(int64_t)d * gridDim.x + blockIdx.x] = next - counts[d][0];
  }
}

// Pass step 2 (one block): exclusive prefix sum of hist [n] in place, in index order.
__global__ void __launch_bounds__(kScanMaxThreads) exclusive_scan_kernel(int* hist, int64_t n) {
  __shared__ int sm[32];
  const int64_t per = (n + blockDim.x - 1) / blockDim.x;
  const int64_t i0 = threadIdx.x * per, i1 = i0 + per < n ? i0 + per : n;
  int sum = 0;
  for (int64_t i = i0; i < i1; i++) sum += hist[i];
  int total = 0;
  int run = block_exclusive_scan(sum, sm, &total);
  for (int64_t i = i0; i < i1; i++) {
    const int c = hist[i];
    hist[i] = run;
    run += c;
  }
}

// Pass step 3: each key (and its row) goes to offset[digit, tile] + its rank in the tile.
__global__ void __launch_bounds__(kSortThreads)
    sort_scatter_kernel(int32_t* keys_out, int32_t* rows_out, const int32_t* keys,
                        const int32_t* rows, const int32_t* idx, const int* offsets, int N, int V,
                        int shift) {
  __shared__ int counts[kDigits][kSortThreads];
  __shared__ int sm[32];
  const TileKeys k = load_tile_keys(keys, idx, N, V, shift);
  int tile_keys = 0;
  tile_digit_scan(k, counts, sm, &tile_keys);
  const int t = threadIdx.x;
  const int64_t base = (int64_t)blockIdx.x * kSortTile + (int64_t)t * kSortItems;
  int seen[kDigits];  // this thread's earlier keys per digit (small loop, unrolled)
#pragma unroll
  for (int d = 0; d < kDigits; d++) seen[d] = 0;
#pragma unroll
  for (int j = 0; j < kSortItems; j++) {
    const int d = k.digit[j];
    if (d == kDigits) continue;
    int mine = 0;
#pragma unroll
    for (int e = 0; e < kDigits; e++)
      if (e == d) mine = seen[e]++;
    const int64_t pos = (int64_t)offsets[(int64_t)d * gridDim.x + blockIdx.x] +
                        (counts[d][t] - counts[d][0]) + mine;
    keys_out[pos] = k.key[j];
    rows_out[pos] = rows ? rows[base + j] : (int32_t)(base + j);
  }
}

// seg [count + 1]: the first position of each valid id in the sorted keys, in order, then the end
// of the valid keys; *nseg = count. One block.
__global__ void __launch_bounds__(kScanMaxThreads)
    segment_starts_kernel(int32_t* seg, int* nseg, const int32_t* keys, int N, int V) {
  __shared__ int sm[32];
  const int64_t per = ((int64_t)N + blockDim.x - 1) / blockDim.x;
  const int64_t p0 = threadIdx.x * per, p1 = p0 + per < N ? p0 + per : N;
  int starts = 0, valid = 0;
  for (int64_t p = p0; p < p1; p++) {
    const int32_t key = keys[p];
    if (key < V) {
      valid++;
      if (p == 0 || keys[p - 1] != key) starts++;
    }
  }
  int total = 0, total_valid = 0;
  int at = block_exclusive_scan(starts, sm, &total);
  block_exclusive_scan(valid, sm, &total_valid);
  for (int64_t p = p0; p < p1; p++) {
    const int32_t key = keys[p];
    if (key < V && (p == 0 || keys[p - 1] != key)) seg[at++] = (int32_t)p;
  }
  if (threadIdx.x == 0) {
    seg[total] = total_valid;
    *nseg = total;
  }
}

// dwte[v, c] = dwte[v, c] + dout[i1, c] + dout[i2, c] + ... for the rows i1 < i2 < ... of segment s
// (the serial order of the cpu reference). Warp w of the grid takes segments w, w + warps, ...;
// blockIdx.y picks 32 columns, one per lane.
__global__ void __launch_bounds__(kSegWarps * 32)
    embedding_segments_kernel(float* dwte, const float* dout, const int32_t* keys,
                              const int32_t* rows, const int32_t* seg, const int* nseg, int C) {
  const int lane = threadIdx.x % 32;
  const int c = blockIdx.y * 32 + lane;
  const bool col = c < C;
  const int count = *nseg;
  const int warps = gridDim.x * kSegWarps;
  for (int s = blockIdx.x * kSegWarps + threadIdx.x / 32; s < count; s += warps) {
    const int32_t p0 = seg[s], p1 = seg[s + 1];
    const int64_t v = keys[p0];
    float acc = col ? dwte[v * C + c] : 0.0f;
    for (int32_t q = p0; q < p1; q += kSegRows) {
      const int cnt = p1 - q < kSegRows ? p1 - q : kSegRows;
      float g[kSegRows];
#pragma unroll
      for (int u = 0; u < kSegRows; u++)  // rows[q + u]: one broadcast load per warp
        g[u] = col && u < cnt ? dout[(int64_t)rows[q + u] * C + c] : 0.0f;
#pragma unroll
      for (int u = 0; u < kSegRows; u++)
        if (u < cnt) acc += g[u];
    }
    if (col) dwte[v * C + c] = acc;
  }
}

static int embedding_check(const char* fn, float* a, int32_t* idx, float* b, int N, int C, int V) {
  MN_REQUIRE(a && idx && b, "%s: NULL pointer argument", fn);
  MN_REQUIRE(N > 0 && C > 0 && V > 0, "%s: bad shape N = %d, C = %d, V = %d", fn, N, C, V);
  return 0;
}

MN_API int mn_embedding_forward(float* out, int32_t* idx, float* wte, int N, int C, int V,
                                void* stream) {
  if (int rc = embedding_check("embedding_forward", out, idx, wte, N, C, V)) return rc;
  int64_t total = (int64_t)N * C;
  return mn_launch("embedding_forward", embedding_forward_kernel, mn_blocks_for(total, 256), 256, 0,
                   stream, out, (const int32_t*)idx, (const float*)wte, N, C, V);
}

MN_API int mn_embedding_backward(float* dwte, int32_t* idx, float* dout, int N, int C, int V,
                                 int accumulate, void* stream) {
  if (int rc = embedding_check("embedding_backward", dwte, idx, dout, N, C, V)) return rc;
  MN_REQUIRE(V < 2147483647, "embedding_backward: V = %d is too large", V);
  MN_REQUIRE(C <= 65535 * 32, "embedding_backward: C = %d is too large (at most %d)", C,
             65535 * 32);
  // Rows of ids that do not occur get no segment, so overwriting means zeroing all of dwte first
  // (dwte is a parameter gradient: in training it always accumulates).
  if (!MN_ACC_BIT(accumulate, 0)) {
    if (int rc = mn_fill(dwte, 0.0f, (int64_t)V * C, stream)) return rc;
  }
  const int tiles = (int)(((int64_t)N + kSortTile - 1) / kSortTile);
  int bits = 0;
  while (bits < 31 && (V >> bits) != 0) bits++;  // keys lie in [0, V]
  const int passes = (bits + 3) / 4;
  const int64_t hist_n = (int64_t)kDigits * tiles;
  void* mem = nullptr;
  if (int rc = mn_scratch(&mem, (4 * (int64_t)N + hist_n + (int64_t)N + 2) * 4, stream)) return rc;
  int32_t* buf[2][2] = {{(int32_t*)mem, (int32_t*)mem + N},
                        {(int32_t*)mem + 2 * (int64_t)N, (int32_t*)mem + 3 * (int64_t)N}};
  int* hist = (int*)mem + 4 * (int64_t)N;
  int32_t* seg = (int32_t*)(hist + hist_n);
  int* nseg = (int*)(seg + N + 1);
  const int32_t* keys = nullptr;  // first pass: keys from idx, rows = positions
  const int32_t* rows = nullptr;
  for (int p = 0; p < passes; p++) {
    const int shift = 4 * p;
    int32_t* keys_out = buf[p % 2][0];
    int32_t* rows_out = buf[p % 2][1];
    int rc = mn_launch("embedding_backward_sort_count", sort_count_kernel, tiles, kSortThreads, 0,
                       stream, hist, keys, (const int32_t*)idx, N, V, shift);
    if (!rc)
      rc = mn_launch("embedding_backward_sort_scan", exclusive_scan_kernel, 1,
                     scan_threads(hist_n), 0, stream, hist, hist_n);
    if (!rc)
      rc = mn_launch("embedding_backward_sort_scatter", sort_scatter_kernel, tiles, kSortThreads,
                     0, stream, keys_out, rows_out, keys, rows, (const int32_t*)idx,
                     (const int*)hist, N, V, shift);
    if (rc) return rc;
    keys = keys_out;
    rows = rows_out;
  }
  if (int rc = mn_launch("embedding_backward_segments", segment_starts_kernel, 1, scan_threads(N),
                         0, stream, seg, nseg, keys, N, V))
    return rc;
  const unsigned col_chunks = (unsigned)((C + 31) / 32);
  const int64_t want = (4096 + col_chunks - 1) / col_chunks;
  // segments <= min(N, V): one warp each at most, ~4096 blocks in all at the most
  const int64_t by_segs = (std::min<int64_t>(N, V) + kSegWarps - 1) / kSegWarps;
  const unsigned seg_blocks = (unsigned)std::max<int64_t>(1, std::min(want, by_segs));
  return mn_launch("embedding_backward", embedding_segments_kernel, dim3(seg_blocks, col_chunks),
                   kSegWarps * 32, 0, stream, dwte, (const float*)dout, keys, rows,
                   (const int32_t*)seg, (const int*)nseg, C);
}
