// A stand-in for two CUDA runtime calls, preloaded (LD_PRELOAD) ahead of libcudart by
// cuda/backend_test.ts so that libmn_cuda.so's GPU count can be checked against driver states this
// machine does not have. The answers come from the environment:
//   MN_FAKE_CUDA_ERROR    what cudaGetDeviceCount returns (a cudaError_t number; 0 = success)
//   MN_FAKE_CUDA_DEVICES  the count it reports on success
//   MN_FAKE_CUDA_DRIVER   what cudaDriverGetVersion reports (0: no driver installed; 12020 = 12.2)
#include <cuda_runtime_api.h>

#include <cstdlib>

static int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::atoi(v) : fallback;
}

extern "C" cudaError_t cudaGetDeviceCount(int* count) {
  cudaError_t e = (cudaError_t)env_int("MN_FAKE_CUDA_ERROR", 0);
  *count = e == cudaSuccess ? env_int("MN_FAKE_CUDA_DEVICES", 1) : 0;
  return e;
}

extern "C" cudaError_t cudaDriverGetVersion(int* version) {
  *version = env_int("MN_FAKE_CUDA_DRIVER", 0);
  return cudaSuccess;
}
