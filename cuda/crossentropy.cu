// Softcapped cross-entropy over rows of logits, with its gradient fused in (see kernels.h):
//   z = softcap * tanh(x / softcap)   (z = x when softcap <= 0)
//   loss = logsumexp(z) - z[target]
//   dlogits = dloss * (softmax(z) - onehot(target)) * (1 - tanh^2(x / softcap))
// One block per row, two passes over the row (one without dlogits): an online softmax pass keeps
// each thread's running max m and sum s of exp(z - m) (rescaling s when m grows), the block merges
// the threads' (m, s) pairs in thread order (deterministic), then a second pass writes the
// gradient. The gradient pass reads x[i] and writes dlogits[i] from the same thread, so dlogits
// may be logits itself (the lm head reuses the logits buffer); no thread writes before the block
// has merged (a barrier), so every read of the first pass sees the logits.
//
// bf16 with a gradient (the lm head's call, V = 50304: a 100 KB row) first copies its row into
// shared memory and runs both passes there: the row is read from DRAM once instead of twice (the
// ~1000 rows in flight, ~100 MB, are beyond L2, so the second pass of the direct kernel goes back
// to DRAM). The passes are the direct kernel's, over the same bf16 values in the same
// per-thread order, so the results are bit for bit the direct kernel's (and the fp32 kernel's on
// the widened logits). Rows above CE_STAGE_MAX_BYTES, a GPU that cannot give a block that much
// shared memory, fp32 logits and loss-only calls run the direct kernel.
//
// A target outside [0, V) cannot be reported from the GPU without a host sync, so that row gets a
// NaN loss and, when dlogits is given, a NaN gradient row: the failure shows in the loss instead of
// training silently on a wrong class. The cpu build rejects it with an error instead.
#include "common.cuh"
#include "entry_checks.h"

constexpr int CE_THREADS = 256;
// The largest bf16 row staged in shared memory: 160 KB (V <= 81920), so that the block (with the
// 16 bytes of alignment slack and the merge scratch) stays under sm_80's 163 KB per-block opt-in
// (the emulator holds every kernel to it); sm_90 allows 227 KB.
constexpr size_t CE_STAGE_MAX_BYTES = 160 * 1024;
// 16-byte loads each thread has in flight while staging a row (see ce_stage_row).
constexpr int CE_STAGE_DEPTH = 8;

// z = softcap * tanh(x / softcap), or x uncapped.
__host__ __device__ inline float ce_z(float x, float softcap) {
  return softcap > 0.0f ? softcap * tanhf(x / softcap) : x;
}
// dz/dx = 1 - tanh^2(u) = sech^2(u) = 4 e / (1 + e)^2 with e = exp(-2|u|), u = x / softcap. Written
// this way because 1 - t*t cancels where the cap saturates (t near 1 leaves dz with a relative
// error of ~2^-24 / (1 - t^2), 1e-4 at |u| = 4); this form is accurate to a few ulps everywhere.
__host__ __device__ inline float ce_dz(float x, float softcap) {
  if (softcap <= 0.0f) return 1.0f;
  float e = expf(-2.0f * fabsf(x / softcap));
  float d = 1.0f + e;
  return 4.0f * e / (d * d);
}

// Online softmax statistics: (m, s) with s = sum exp(z_j - m) over the values seen, m their max.
// Adding z keeps s exact up to rounding: a larger z rescales s by exp(m - z) (<= 1, no overflow).
struct SoftmaxStat {
  float m, s;
};
__host__ __device__ inline SoftmaxStat softmax_add(SoftmaxStat a, float z) {
  if (z > a.m) return SoftmaxStat{z, a.s * expf(a.m - z) + 1.0f};  // a.m = -inf: s = 0 * 0 + 1
  return SoftmaxStat{a.m, a.s + expf(z - a.m)};
}
// Merge of two partial statistics (the same formula both ways round, with an empty side exact).
__host__ __device__ inline SoftmaxStat softmax_merge(SoftmaxStat a, SoftmaxStat b) {
  const float m = fmaxf(a.m, b.m);
  if (m == -INFINITY) return SoftmaxStat{m, 0.0f};
  return SoftmaxStat{m, a.s * expf(a.m - m) + b.s * expf(b.m - m)};
}

// Block-wide merge of every thread's statistic, in a fixed order (warp butterflies, then the warps
// in order); every thread gets the result. `sm` is __shared__ SoftmaxStat[32].
__device__ inline SoftmaxStat block_softmax_merge(SoftmaxStat v, SoftmaxStat* sm) {
  for (int o = 16; o > 0; o >>= 1) {
    SoftmaxStat other{__shfl_xor_sync(0xffffffffu, v.m, o), __shfl_xor_sync(0xffffffffu, v.s, o)};
    // merge in lane order, so both lanes of a pair compute the same bits
    v = (threadIdx.x & o) ? softmax_merge(other, v) : softmax_merge(v, other);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nwarps = (blockDim.x + 31) / 32;
  __syncthreads();
  if (lane == 0) sm[warp] = v;
  __syncthreads();
  SoftmaxStat all = sm[0];
  for (int w = 1; w < nwarps; w++) all = softmax_merge(all, sm[w]);
  return all;
}

// Logits and dlogits fp32, or bf16 (the GPT-2 lm head's, as the original's bf16 model): the math is
// fp32 either way, a bf16 logit widened on load and the gradient rounded once on store.
__device__ inline float ce_load(const float* p, int64_t i) { return p[i]; }
__device__ inline float ce_load(const bf16* p, int64_t i) { return mn_bf16_to_f32(p[i]); }
__device__ inline void ce_store(float* p, int64_t i, float v) { p[i] = v; }
__device__ inline void ce_store(bf16* p, int64_t i, float v) { p[i] = mn_f32_to_bf16(v); }

// Shared memory for a staged row of V bf16 logits: the row keeps its offset within 16 bytes (up to
// 7 elements of slack), so that 16-byte global loads land on 16-byte shared stores.
inline size_t ce_stage_bytes(int V) { return ((size_t)V + 7 + 7) / 8 * 16; }

// Copies the block's row x[0, V) into dynamic shared memory and returns where element 0 landed;
// every thread may read all of it on return (a barrier). The bulk moves in 16-byte words, each
// thread issuing CE_STAGE_DEPTH loads before its first store: 256 threads x 8 x 16 B = 32 KB in
// flight per block, 64 KB per SM with the two 100 KB blocks an SM holds at V = 50304, above the
// 20-30 KB that keeps an SM's share of DRAM bandwidth busy (H100 3.35 TB/s, H200 4.8 TB/s over
// 132 SMs: 25-36 GB/s per SM, x ~0.8 us latency). So the block stays at 256 threads (16 warps per
// SM for the two passes' math) rather than 512 or 1024: more threads are not needed for the loads,
// and would change which logits each thread sums, and with it the rounding of the losses, which
// are bit-identical with the direct and fp32 kernels. The few elements before the first and after
// the last aligned word are copied singly (never touching bytes outside the row: a neighbouring
// row may be another block's, being overwritten in place).
__device__ inline const bf16* ce_stage_row(const bf16* x, int V) {
  MN_DYNAMIC_SHARED(uint4, stage);
  const int mis = (int)(((uintptr_t)x >> 1) & 7);  // x's element offset within its 16 bytes
  bf16* sx = reinterpret_cast<bf16*>(stage) + mis;   // sx[i] holds x[i]
  const int to_word = (8 - mis) & 7;                 // elements before x's first aligned word
  const int head = V < to_word ? V : to_word;
  const int words = (V - head) / 8;
  const int tail = head + 8 * words;                 // first element after the last whole word
  const uint4* src = reinterpret_cast<const uint4*>(x + head);
  uint4* dst = stage + (mis ? 1 : 0);
  const int tid = threadIdx.x;
  if (tid < head) sx[tid] = x[tid];
  if (tid < V - tail) sx[tail + tid] = x[tail + tid];
  for (int w0 = 0; w0 < words; w0 += CE_STAGE_DEPTH * CE_THREADS) {
    uint4 v[CE_STAGE_DEPTH];
#pragma unroll
    for (int k = 0; k < CE_STAGE_DEPTH; k++) {
      const int w = w0 + k * CE_THREADS + tid;
      if (w < words) v[k] = src[w];
    }
#pragma unroll
    for (int k = 0; k < CE_STAGE_DEPTH; k++) {
      const int w = w0 + k * CE_THREADS + tid;
      if (w < words) dst[w] = v[k];
    }
  }
  __syncthreads();
  return sx;
}

// STAGED (bf16 only): the row is first copied to shared memory (ce_stage_row), and both passes
// read it there; launched with CE_THREADS threads and ce_stage_bytes(V) of dynamic shared memory.
template <typename T, bool STAGED>
__global__ void __launch_bounds__(CE_THREADS)
    softcap_crossentropy_kernel(float* losses, T* dlogits, const T* logits,
                                const int32_t* targets, int V, float softcap, float dloss) {
  __shared__ SoftmaxStat sm[32];
  const int64_t row = blockIdx.x;
  const T* x = logits + row * V;
  const int target = targets[row];
  if constexpr (STAGED) x = ce_stage_row(x, V);
  const bool valid = target >= 0 && target < V;
  // Read before the first barrier of the passes (or from the staged copy): no thread writes
  // dlogits (possibly = logits) before that.
  const float z_target = valid ? ce_z(ce_load(x, target), softcap) : 0.0f;

  SoftmaxStat st{-INFINITY, 0.0f};
  for (int i = threadIdx.x; i < V; i += blockDim.x)
    st = softmax_add(st, ce_z(ce_load(x, i), softcap));
  st = block_softmax_merge(st, sm);
  const float m = st.m, s = st.s;

  const float nan = __int_as_float(0x7fc00000);
  const float lse = m + logf(s);
  if (threadIdx.x == 0) losses[row] = valid ? lse - z_target : nan;
  if (!dlogits) return;
  T* d = dlogits + row * V;
  const float inv_s = 1.0f / s;
  for (int i = threadIdx.x; i < V; i += blockDim.x) {
    const float xi = ce_load(x, i);
    float p = expf(ce_z(xi, softcap) - m) * inv_s;
    ce_store(d, i, valid ? dloss * (p - (i == target ? 1.0f : 0.0f)) * ce_dz(xi, softcap) : nan);
  }
}

MN_API int mn_softcap_crossentropy(float* losses, float* dlogits, float* logits, int32_t* targets,
                                   int N, int V, float softcap, float dloss, void* stream) {
  MN_REQUIRE(N > 0 && V > 0, "softcap_crossentropy: bad shape N=%d V=%d", N, V);
  MN_REQUIRE(losses && logits && targets, "softcap_crossentropy: NULL losses, logits or targets");
  MN_REQUIRE(softcap == softcap && dloss == dloss, "softcap_crossentropy: NaN softcap or dloss");
  return mn_launch("softcap_crossentropy", softcap_crossentropy_kernel<float, false>, dim3(N),
                   dim3(CE_THREADS), 0, stream, losses, dlogits, (const float*)logits,
                   (const int32_t*)targets, V, softcap, dloss);
}

// Whether a bf16 row of V logits is staged in shared memory: at most CE_STAGE_MAX_BYTES, and (on a
// GPU) no more than the current device lets one block opt into, so that a smaller part (sm_86/89:
// 99 KB) runs the direct kernel instead of failing the launch.
static bool ce_can_stage(int V) {
  if ((size_t)V * sizeof(bf16) > CE_STAGE_MAX_BYTES) return false;
#ifdef MN_EMU
  return true;
#else
  int dev = 0, optin = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess)
    return false;
  return ce_stage_bytes(V) + 32 * sizeof(SoftmaxStat) <= (size_t)optin;
#endif
}

MN_API int mn_softcap_crossentropy_bf16(float* losses, mn_bf16* dlogits, mn_bf16* logits,
                                        int32_t* targets, int N, int V, float softcap, float dloss,
                                        void* stream) {
  if (int rc = mn_check_softcap_crossentropy_bf16(losses, logits, targets, N, V, softcap, dloss))
    return rc;
  if (dlogits && ce_can_stage(V))
    return mn_launch("softcap_crossentropy_bf16", softcap_crossentropy_kernel<bf16, true>, dim3(N),
                     dim3(CE_THREADS), ce_stage_bytes(V), stream, losses, (bf16*)dlogits,
                     (const bf16*)logits, (const int32_t*)targets, V, softcap, dloss);
  return mn_launch("softcap_crossentropy_bf16", softcap_crossentropy_kernel<bf16, false>, dim3(N),
                   dim3(CE_THREADS), 0, stream, losses, (bf16*)dlogits, (const bf16*)logits,
                   (const int32_t*)targets, V, softcap, dloss);
}
