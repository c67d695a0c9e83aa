// Runtime for the two host builds (emu and cpu): "device" memory is host memory, streams are
// synchronous no-ops. Allocations are exact-size so AddressSanitizer sees any overrun.
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "kernels.h"
#include "mn_error.h"
#ifdef MN_EMU
#include "scratch.h"
#endif

#ifndef MN_BACKEND_NAME
#error "define MN_BACKEND_NAME (\"emu\" or \"cpu\")"
#endif

MN_API int mn_backend_name(char* buf, int len) { return mn_copy_string(buf, len, MN_BACKEND_NAME); }
MN_API int mn_last_error(char* buf, int len) { return mn_copy_string(buf, len, mn_error_buf); }
MN_API int mn_device_count(int* count) {
  *count = 1;
  return 0;
}
MN_API int mn_device_name(int device, char* buf, int len) {
  MN_REQUIRE(device == 0, "device %d does not exist (the %s backend has one)", device,
             MN_BACKEND_NAME);
  return mn_copy_string(buf, len, "host CPU (" MN_BACKEND_NAME " backend)");
}
MN_API int mn_set_device(int device) {
  MN_REQUIRE(device == 0, "device %d does not exist (the %s backend has one)", device,
             MN_BACKEND_NAME);
  return 0;
}
MN_API int mn_malloc(void** out, int64_t bytes) {
  MN_REQUIRE(bytes >= 0, "mn_malloc: negative size %lld", (long long)bytes);
  // Exact size (16-byte aligned, enough for float4), so AddressSanitizer flags a 1-element overrun.
  void* p = std::malloc(bytes == 0 ? 1 : (size_t)bytes);
  if (!p) return mn_fail(MN_ERR_OUT_OF_MEMORY, "out of memory allocating %lld bytes", (long long)bytes);
  *out = p;
  return 0;
}
MN_API int mn_free(void* p) {
  std::free(p);
  return 0;
}
static int copy(void* dst, const void* src, int64_t bytes) {
  MN_REQUIRE(bytes >= 0, "memcpy: negative size %lld", (long long)bytes);
  MN_REQUIRE(bytes == 0 || (dst && src), "memcpy: NULL pointer");
  if (bytes) std::memmove(dst, src, (size_t)bytes);
  return 0;
}
MN_API int mn_memcpy_h2d(void* dst, void* src, int64_t bytes, void*) { return copy(dst, src, bytes); }
MN_API int mn_memcpy_d2h(void* dst, void* src, int64_t bytes, void*) { return copy(dst, src, bytes); }
MN_API int mn_memcpy_d2d(void* dst, void* src, int64_t bytes, void*) { return copy(dst, src, bytes); }
MN_API int mn_memset(void* p, int value, int64_t bytes, void*) {
  MN_REQUIRE(bytes >= 0, "memset: negative size %lld", (long long)bytes);
  if (bytes) std::memset(p, value, (size_t)bytes);
  return 0;
}
MN_API int mn_stream_create(void** out) {
  *out = nullptr;
  return 0;
}
MN_API int mn_stream_destroy(void*) { return 0; }
MN_API int mn_synchronize(void*) { return 0; }
MN_API int mn_mem_get_info(int64_t* free_bytes, int64_t* total) {
  *free_bytes = 0;
  *total = 0;
  return 0;
}

MN_API int mn_host_alloc(void** out, int64_t bytes) { return mn_malloc(out, bytes); }
MN_API int mn_host_free(void* p) { return mn_free(p); }
// Every call has finished when it returns: there is nothing for an event to mark. A non-NULL
// handle all the same, so that callers treat events alike on every backend.
MN_API int mn_event_create(void** out) {
  static char event;
  *out = &event;
  return 0;
}
MN_API int mn_event_destroy(void*) { return 0; }
MN_API int mn_event_record(void*, void*) { return 0; }
MN_API int mn_event_synchronize(void*) { return 0; }
MN_API int mn_stream_wait_event(void*, void*) { return 0; }
static int no_graphs() {
  return mn_fail(MN_ERR_INVALID_ARG, "CUDA graphs exist only on the cuda backend (%s runs eagerly)",
                 MN_BACKEND_NAME);
}
MN_API int mn_graph_begin_capture(void*) { return no_graphs(); }
MN_API int mn_graph_end_capture(void*, void** out) {
  *out = nullptr;
  return no_graphs();
}
MN_API int mn_graph_launch(void*, void*) { return no_graphs(); }
MN_API int mn_graph_destroy(void*) { return no_graphs(); }

#ifdef MN_EMU
// Scratch for the emu build's multi-stage kernels (scratch.h): emu runs every call synchronously on
// the calling thread, so one buffer per host thread is never shared by two calls in flight; it is
// reallocated to exactly the requested size so that AddressSanitizer sees an overrun.
namespace {
struct EmuScratch {
  void* p = nullptr;
  int64_t bytes = -1;
  ~EmuScratch() { std::free(p); }
};
thread_local EmuScratch t_scratch;
}  // namespace

int mn_scratch(void** out, int64_t bytes, void*) {
  MN_REQUIRE(bytes >= 0, "scratch: negative size %lld", (long long)bytes);
  if (bytes != t_scratch.bytes) {
    std::free(t_scratch.p);
    t_scratch.p = std::malloc(bytes == 0 ? 1 : (size_t)bytes);
    t_scratch.bytes = t_scratch.p ? bytes : -1;
    if (!t_scratch.p)
      return mn_fail(MN_ERR_OUT_OF_MEMORY, "out of memory allocating %lld bytes of scratch",
                     (long long)bytes);
  }
  *out = t_scratch.p;
  return 0;
}
#endif
