// Runtime for the cuda build: thin wrappers over the CUDA runtime. Compiled only by nvcc.
#include "common.cuh"
#ifndef MN_EMU
#include <mutex>

#include "scratch.h"

static int check(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return 0;
  return mn_fail((int)e, "%s: %s", what, cudaGetErrorString(e));
}

MN_API int mn_backend_name(char* buf, int len) { return mn_copy_string(buf, len, "cuda"); }
MN_API int mn_last_error(char* buf, int len) { return mn_copy_string(buf, len, mn_error_buf); }
// "No GPU" is cudaErrorNoDevice, or no NVIDIA driver at all (the runtime then says
// cudaErrorInsufficientDriver and cudaDriverGetVersion gives 0). Any other failure, such as a
// driver older than this build's CUDA runtime, is an error with its reason: reported as "0 GPUs"
// it would send a trainer to the cpu backend without a word. (cuda/backend_test.ts checks this
// mapping by interposing a fake cudaGetDeviceCount/cudaDriverGetVersion, test/fake_cudart.cpp.)
MN_API int mn_device_count(int* count) {
  *count = 0;
  cudaError_t e = cudaGetDeviceCount(count);
  if (e == cudaSuccess) return 0;
  *count = 0;
  (void)cudaGetLastError();
  int driver = 0, runtime = 0;
  if (cudaDriverGetVersion(&driver) != cudaSuccess) driver = -1;
  if (cudaRuntimeGetVersion(&runtime) != cudaSuccess) runtime = 0;
  if (e == cudaErrorNoDevice || (e == cudaErrorInsufficientDriver && driver == 0)) return 0;
  if (e == cudaErrorInsufficientDriver) {
    return mn_fail((int)e,
                   "cudaGetDeviceCount: the NVIDIA driver supports CUDA %d.%d, older than this "
                   "build's CUDA runtime %d.%d: update the driver (or build with an older CUDA "
                   "toolkit)",
                   driver / 1000, driver % 1000 / 10, runtime / 1000, runtime % 1000 / 10);
  }
  return check(e, "cudaGetDeviceCount");
}
MN_API int mn_device_name(int device, char* buf, int len) {
  cudaDeviceProp prop;
  if (int rc = check(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties")) return rc;
  char s[300];
  std::snprintf(s, sizeof s, "%s (sm_%d%d, %d SMs, %.1f GiB)", prop.name, prop.major, prop.minor,
                prop.multiProcessorCount, prop.totalGlobalMem / 1073741824.0);
  return mn_copy_string(buf, len, s);
}
MN_API int mn_set_device(int device) { return check(cudaSetDevice(device), "cudaSetDevice"); }
MN_API int mn_malloc(void** out, int64_t bytes) {
  MN_REQUIRE(bytes >= 0, "mn_malloc: negative size %lld", (long long)bytes);
  cudaError_t e = cudaMalloc(out, bytes == 0 ? 1 : (size_t)bytes);
  if (e == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError();
    size_t free_b = 0, total = 0;
    cudaMemGetInfo(&free_b, &total);
    return mn_fail(MN_ERR_OUT_OF_MEMORY, "out of GPU memory allocating %.1f MiB (%.1f MiB free of %.1f MiB)",
                   bytes / 1048576.0, free_b / 1048576.0, total / 1048576.0);
  }
  return check(e, "cudaMalloc");
}
MN_API int mn_free(void* p) { return check(cudaFree(p), "cudaFree"); }
MN_API int mn_memcpy_h2d(void* dst, void* src, int64_t bytes, void* s) {
  return check(cudaMemcpyAsync(dst, src, (size_t)bytes, cudaMemcpyHostToDevice, (cudaStream_t)s),
               "cudaMemcpy host->device");
}
MN_API int mn_memcpy_d2h(void* dst, void* src, int64_t bytes, void* s) {
  // Synchronous: the caller reads the host buffer right after.
  if (int rc = check(cudaMemcpyAsync(dst, src, (size_t)bytes, cudaMemcpyDeviceToHost, (cudaStream_t)s),
                     "cudaMemcpy device->host"))
    return rc;
  return check(cudaStreamSynchronize((cudaStream_t)s), "cudaStreamSynchronize");
}
MN_API int mn_memcpy_d2d(void* dst, void* src, int64_t bytes, void* s) {
  return check(cudaMemcpyAsync(dst, src, (size_t)bytes, cudaMemcpyDeviceToDevice, (cudaStream_t)s),
               "cudaMemcpy device->device");
}
MN_API int mn_memset(void* p, int value, int64_t bytes, void* s) {
  return check(cudaMemsetAsync(p, value, (size_t)bytes, (cudaStream_t)s), "cudaMemset");
}
MN_API int mn_stream_create(void** out) {
  return check(cudaStreamCreateWithFlags((cudaStream_t*)out, cudaStreamNonBlocking), "cudaStreamCreate");
}
MN_API int mn_stream_destroy(void* s) { return check(cudaStreamDestroy((cudaStream_t)s), "cudaStreamDestroy"); }
MN_API int mn_synchronize(void* s) {
  if (s) return check(cudaStreamSynchronize((cudaStream_t)s), "cudaStreamSynchronize");
  return check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
}
MN_API int mn_mem_get_info(int64_t* free_bytes, int64_t* total) {
  size_t f = 0, t = 0;
  if (int rc = check(cudaMemGetInfo(&f, &t), "cudaMemGetInfo")) return rc;
  *free_bytes = (int64_t)f;
  *total = (int64_t)t;
  return 0;
}

// ---- pinned memory, events, graphs -----------------------------------------------------------
MN_API int mn_host_alloc(void** out, int64_t bytes) {
  MN_REQUIRE(bytes >= 0, "mn_host_alloc: negative size %lld", (long long)bytes);
  return check(cudaMallocHost(out, bytes == 0 ? 1 : (size_t)bytes), "cudaMallocHost");
}
MN_API int mn_host_free(void* p) { return check(cudaFreeHost(p), "cudaFreeHost"); }
MN_API int mn_event_create(void** out) {
  return check(cudaEventCreateWithFlags((cudaEvent_t*)out, cudaEventDisableTiming), "cudaEventCreate");
}
MN_API int mn_event_destroy(void* e) { return check(cudaEventDestroy((cudaEvent_t)e), "cudaEventDestroy"); }
MN_API int mn_event_record(void* e, void* s) {
  return check(cudaEventRecord((cudaEvent_t)e, (cudaStream_t)s), "cudaEventRecord");
}
MN_API int mn_event_synchronize(void* e) {
  return check(cudaEventSynchronize((cudaEvent_t)e), "cudaEventSynchronize");
}
MN_API int mn_stream_wait_event(void* s, void* e) {
  return check(cudaStreamWaitEvent((cudaStream_t)s, (cudaEvent_t)e, 0), "cudaStreamWaitEvent");
}
// Stream capture turns every call on `stream` (and on streams that wait on an event recorded in
// it: the fork/join of the communication stream) into graph nodes instead of running them:
//   https://docs.nvidia.com/cuda/cuda-c-programming-guide/index.html#creating-a-graph-using-stream-capture
//   https://docs.nvidia.com/cuda/cuda-c-programming-guide/index.html#cross-stream-dependencies-and-events
// Thread-local mode: the capture forbids "unsafe" calls (cudaMalloc, synchronous copies, stream
// syncs: what a step must not do anyway) on this thread only. Global mode would also fail the
// capture for such calls from threads that are not ours (NCCL's proxy thread), which NCCL's guide
// names as the case for thread-local mode:
//   https://docs.nvidia.com/deeplearning/nccl/user-guide/docs/usage/cudagraph.html
//   https://docs.nvidia.com/cuda/cuda-runtime-api/group__CUDART__STREAM.html (cudaStreamBeginCapture,
//   cudaThreadExchangeStreamCaptureMode)
MN_API int mn_graph_begin_capture(void* s) {
  MN_REQUIRE(s, "graph capture: the legacy default stream cannot be captured");
  return check(cudaStreamBeginCapture((cudaStream_t)s, cudaStreamCaptureModeThreadLocal),
               "cudaStreamBeginCapture");
}
MN_API int mn_graph_end_capture(void* s, void** exec_out) {
  *exec_out = nullptr;
  cudaGraph_t graph = nullptr;
  // Ends the capture even when a call inside it failed (the capture is then invalidated and this
  // returns cudaErrorStreamCaptureInvalidated): afterwards the stream runs eagerly again.
  cudaError_t e = cudaStreamEndCapture((cudaStream_t)s, &graph);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    if (graph) cudaGraphDestroy(graph);
    return check(e, "cudaStreamEndCapture");
  }
  cudaGraphExec_t exec = nullptr;
  e = cudaGraphInstantiateWithFlags(&exec, graph, 0);
  cudaGraphDestroy(graph);  // the executable graph is a copy; the template is no longer needed
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return check(e, "cudaGraphInstantiateWithFlags");
  }
  *exec_out = exec;
  return 0;
}
MN_API int mn_graph_launch(void* exec, void* s) {
  return check(cudaGraphLaunch((cudaGraphExec_t)exec, (cudaStream_t)s), "cudaGraphLaunch");
}
MN_API int mn_graph_destroy(void* exec) {
  return check(cudaGraphExecDestroy((cudaGraphExec_t)exec), "cudaGraphExecDestroy");
}

// ---- scratch (scratch.h): one buffer per (device, stream), grown on demand, never shrunk ----
namespace {
struct ScratchSlot {
  int device;
  void* stream;
  void* ptr;
  int64_t bytes;
};
constexpr int kScratchSlots = 64;  // (device, stream) pairs; a process uses one or two
std::mutex g_scratch_mu;
ScratchSlot g_scratch[kScratchSlots];
int g_scratch_used = 0;
}  // namespace

int mn_scratch(void** out, int64_t bytes, void* stream) {
  MN_REQUIRE(bytes >= 0, "scratch: negative size %lld", (long long)bytes);
  int device = 0;
  if (int rc = check(cudaGetDevice(&device), "scratch: cudaGetDevice")) return rc;
  std::lock_guard<std::mutex> lk(g_scratch_mu);
  ScratchSlot* slot = nullptr;
  for (int i = 0; i < g_scratch_used && !slot; i++)
    if (g_scratch[i].device == device && g_scratch[i].stream == stream) slot = &g_scratch[i];
  if (!slot) {
    MN_REQUIRE(g_scratch_used < kScratchSlots, "scratch: more than %d (device, stream) pairs",
               kScratchSlots);
    slot = &g_scratch[g_scratch_used++];
    *slot = ScratchSlot{device, stream, nullptr, 0};
  }
  if (slot->bytes < bytes) {
    const int64_t mib = 1 << 20;
    int64_t grown = (bytes + mib - 1) / mib * mib;
    if (slot->ptr) {
      // queued kernels on this stream may still read the old buffer
      if (int rc = check(cudaStreamSynchronize((cudaStream_t)stream), "scratch: sync")) return rc;
      if (int rc = check(cudaFree(slot->ptr), "scratch: cudaFree")) return rc;
      slot->ptr = nullptr;
      slot->bytes = 0;
    }
    cudaError_t e = cudaMalloc(&slot->ptr, (size_t)grown);
    if (e != cudaSuccess) {
      (void)cudaGetLastError();
      slot->ptr = nullptr;
      return mn_fail(MN_ERR_OUT_OF_MEMORY, "scratch: out of GPU memory allocating %.1f MiB",
                     grown / 1048576.0);
    }
    slot->bytes = grown;
  }
  *out = slot->ptr;
  return 0;
}
#endif
