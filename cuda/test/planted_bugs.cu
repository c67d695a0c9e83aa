// Two deliberately broken kernels (and the fixed twin of the first). Built only into the
// sanitizer test libraries: cuda/sanitizers_test.ts runs them under ThreadSanitizer and
// AddressSanitizer to prove the emulator's sanitizer builds catch real kernel bugs.
#include "../common.cuh"

// Reverses each 64-element block through shared memory. With `sync` false the __syncthreads
// between the write and the read is missing: threads read slots other threads have not written.
__global__ void reverse_block_kernel(float* out, const float* inp, int sync) {
  __shared__ float tile[64];
  int i = blockIdx.x * 64 + threadIdx.x;
  tile[threadIdx.x] = inp[i];
  if (sync) __syncthreads();
  out[i] = tile[63 - threadIdx.x];
}

// Writes n + 1 elements into an n-element buffer (`<=` instead of `<`).
__global__ void off_by_one_kernel(float* out, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i <= n) out[i] = 1.0f;
}

extern "C" __attribute__((visibility("default"))) int planted_reverse_blocks(float* out, float* inp,
                                                                             int nblocks, int sync) {
  return mn_launch("reverse_block", reverse_block_kernel, nblocks, 64, 0, nullptr, out,
                   (const float*)inp, sync);
}

// Allocates exactly n floats (malloc, so AddressSanitizer puts a redzone right after) and runs
// the off-by-one kernel on them.
extern "C" __attribute__((visibility("default"))) int planted_off_by_one(int n) {
  float* out = (float*)malloc(sizeof(float) * n);
  int rc = mn_launch("off_by_one", off_by_one_kernel, (n + 64) / 64, 64, 0, nullptr, out, n);
  free(out);
  return rc;
}
