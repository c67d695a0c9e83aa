// A kernel whose dynamic shared memory size is the caller's, for the emulator's launch-limit test
// (cuda/emu_limits_test.ts). Built only into the emu test library libemu_limits.so.
#include "../common.cuh"

// Each thread writes its slots of the dynamic shared memory, then reads them back into out.
__global__ void smem_fill_kernel(float* out, int nfloats) {
  MN_DYNAMIC_SHARED(float, smem);
  for (int i = threadIdx.x; i < nfloats; i += blockDim.x) smem[i] = (float)i;
  __syncthreads();
  for (int i = threadIdx.x; i < nfloats; i += blockDim.x) out[i] = smem[i];
}

// Launches smem_fill_kernel with `bytes` of dynamic shared memory (a multiple of 4) over out.
extern "C" __attribute__((visibility("default"))) int limits_smem_fill(float* out, int bytes) {
  return mn_launch("smem_fill", smem_fill_kernel, 1, 128, (size_t)bytes, nullptr, out, bytes / 4);
}

extern "C" __attribute__((visibility("default"))) int limits_last_error(char* buf, int len) {
  return mn_copy_string(buf, len, mn_error_buf);
}
