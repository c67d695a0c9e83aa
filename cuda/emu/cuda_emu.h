// CUDA execution model on the CPU, so the SAME .cu sources compile with g++ and run in tests.
//
// What it does: every thread block runs with one OS thread per CUDA thread; __syncthreads is a real
// std::barrier over the block's live threads; warp shuffles/votes are per-warp collectives (slot
// exchange between two warp barriers); __shared__ is function-static storage, which is correct
// because blocks of a launch run one after another; dynamic shared memory is a per-launch buffer.
// Because they are real threads with real barriers, ThreadSanitizer sees a missing __syncthreads as
// a data race, and AddressSanitizer sees an out-of-bounds global or shared write.
//
// What it cannot do (see README "Emulator limits"): blocks never run concurrently (a kernel that
// waits for another block deadlocks), warp collectives need every lane of the warp (full masks
// only), no tensor-core PTX / inline asm, no textures, no cooperative groups, no clusters.
#pragma once
#ifdef __CUDACC__
#error "cuda_emu.h is for the host compiler only"
#endif

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>

#include <cuda_bf16.h>
#include <vector_types.h>

#ifndef MN_EMU
#define MN_EMU 1
#endif
// cuda's host_defines.h gives these attribute meanings; on the CPU they are plain C++.
#undef __global__
#undef __device__
#undef __host__
#undef __forceinline__
#undef __noinline__
#undef __launch_bounds__
#undef __shared__
#undef __constant__
#undef __grid_constant__
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __shared__ static
#define __constant__ static const
#define __grid_constant__

namespace emu {

struct Block;  // one running thread block: its barrier, its warps, its dynamic shared memory

// Per-CUDA-thread identity, set by the launcher before the kernel body runs.
inline thread_local uint3 t_thread_idx;
inline thread_local uint3 t_block_idx;
inline thread_local dim3 t_block_dim;
inline thread_local dim3 t_grid_dim;
inline thread_local Block* t_block = nullptr;
inline thread_local unsigned t_linear_tid = 0;

void syncthreads();                 // block barrier over the threads still running the body
void syncwarp();                    // warp barrier
uint64_t warp_exchange(uint64_t mine, int src_lane, bool* src_valid);  // collective slot swap
unsigned warp_ballot(bool pred);
void* dynamic_smem();
// Collective: every lane of the (full) warp copies `bytes` bytes from `mine` into all[lane * bytes];
// on return `all` holds every lane's block (lane order). At most 256 bytes per lane.
void warp_allgather(const void* mine, size_t bytes, void* all);
int warp_size_of_current();  // lanes in this thread's warp (the last warp of a block may be short)

// The most dynamic shared memory a launch may ask for: sm_80's per-block opt-in limit (A100, 163 KB;
// sm_90 allows 227 KB), so that what runs here also launches on the oldest GPU the build targets.
constexpr size_t kMaxDynamicSmemSm80 = 163 * 1024;
// Runs body() once per CUDA thread for every block of the grid. Returns 0, or a CUDA-like error
// code (9 = invalid configuration, also for more than kMaxDynamicSmemSm80 bytes of dynamic shared
// memory) and sets the message returned by launch_error().
int launch(dim3 grid, dim3 block, size_t dynamic_smem_bytes, const std::function<void()>& body);
const char* launch_error();

template <typename T>
inline T shfl_generic(T v, int src_lane, int width) {
  static_assert(sizeof(T) <= 8, "emulated shuffles move at most 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  int lane = (int)(t_linear_tid % 32);
  int base = width < 32 ? (lane / width) * width : 0;
  int src = base + (((src_lane % width) + width) % width);
  bool valid = true;
  uint64_t got = warp_exchange(bits, src, &valid);
  if (!valid) return v;  // CUDA returns the caller's own value for a lane outside the warp
  T out;
  std::memcpy(&out, &got, sizeof(T));
  return out;
}

}  // namespace emu

#define threadIdx (::emu::t_thread_idx)
#define blockIdx (::emu::t_block_idx)
#define blockDim (::emu::t_block_dim)
#define gridDim (::emu::t_grid_dim)
#define warpSize 32

inline void __syncthreads() { emu::syncthreads(); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu::syncwarp(); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }

template <typename T>
inline T __shfl_sync(unsigned, T v, int src, int width = 32) {
  return emu::shfl_generic(v, src, width);
}
template <typename T>
inline T __shfl_xor_sync(unsigned, T v, int mask, int width = 32) {
  int lane = (int)(emu::t_linear_tid % 32);
  int within = lane % width;
  return emu::shfl_generic(v, (within ^ mask), width);
}
template <typename T>
inline T __shfl_down_sync(unsigned, T v, unsigned delta, int width = 32) {
  int lane = (int)(emu::t_linear_tid % 32);
  int within = lane % width;
  int src = within + (int)delta;
  T got = emu::shfl_generic(v, src < width ? src : within, width);
  return got;
}
template <typename T>
inline T __shfl_up_sync(unsigned, T v, unsigned delta, int width = 32) {
  int lane = (int)(emu::t_linear_tid % 32);
  int within = lane % width;
  int src = within - (int)delta;
  return emu::shfl_generic(v, src >= 0 ? src : within, width);
}
inline unsigned __ballot_sync(unsigned, int pred) { return emu::warp_ballot(pred != 0); }
inline int __any_sync(unsigned m, int pred) { return __ballot_sync(m, pred) != 0; }
inline int __all_sync(unsigned, int pred) {
  unsigned b = emu::warp_ballot(pred != 0);
  int n = emu::warp_size_of_current();
  unsigned full = n == 32 ? 0xffffffffu : ((1u << n) - 1u);
  return b == full;
}

// Atomics: std::atomic_ref so ThreadSanitizer understands them.
template <typename T>
inline T atomicAdd(T* p, T v) {
  return std::atomic_ref<T>(*p).fetch_add(v, std::memory_order_relaxed);
}
template <typename T>
inline T atomicSub(T* p, T v) {
  return std::atomic_ref<T>(*p).fetch_sub(v, std::memory_order_relaxed);
}
template <typename T>
inline T atomicExch(T* p, T v) {
  return std::atomic_ref<T>(*p).exchange(v, std::memory_order_relaxed);
}
template <typename T>
inline T atomicCAS(T* p, T expected, T desired) {
  std::atomic_ref<T>(*p).compare_exchange_strong(expected, desired, std::memory_order_relaxed);
  return expected;
}
template <typename T>
inline T atomicMax(T* p, T v) {
  std::atomic_ref<T> a(*p);
  T cur = a.load(std::memory_order_relaxed);
  while (cur < v && !a.compare_exchange_weak(cur, v, std::memory_order_relaxed)) {
  }
  return cur;
}
template <typename T>
inline T atomicMin(T* p, T v) {
  std::atomic_ref<T> a(*p);
  T cur = a.load(std::memory_order_relaxed);
  while (cur > v && !a.compare_exchange_weak(cur, v, std::memory_order_relaxed)) {
  }
  return cur;
}

// Device math that the host library lacks (or names differently).
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __saturatef(float x) { return std::min(1.0f, std::max(0.0f, x)); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
template <typename T>
inline T __ldg(const T* p) {
  return *p;
}
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline unsigned __float_as_uint(float x) {
  unsigned u;
  std::memcpy(&u, &x, 4);
  return u;
}
inline float __uint_as_float(unsigned u) {
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}
inline int __float_as_int(float x) {
  int u;
  std::memcpy(&u, &x, 4);
  return u;
}
inline float __int_as_float(int u) {
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}

// Dynamic shared memory: `MN_DYNAMIC_SHARED(float, smem);` declares `smem` in both builds.
#define MN_DYNAMIC_SHARED(type, name) type* name = reinterpret_cast<type*>(::emu::dynamic_smem())
