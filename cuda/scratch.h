// Library-internal scratch memory for the two-stage reductions (kernels.h, convention "Scratch").
// Host code only; implemented by runtime_cuda.cu (cuda) and runtime_host.cpp (emu).
#pragma once
#include <cstdint>

// Sets *out to a device buffer of at least `bytes` bytes that only work on `stream` uses, for the
// call in progress: the buffer of one call may be reused by the next call on the same stream, which
// is safe because work on a stream runs in order. Returns 0, or an error code with the message set
// (mn_fail). The buffer is never freed while the library is loaded; it is not one of the caller's
// mn_malloc allocations.
//
// cuda: one buffer per (device, stream), grown on demand to a multiple of 1 MiB; growing waits for
//   the stream (the old buffer may still be read by queued kernels) and then frees the old buffer,
//   so it is not allowed during CUDA graph capture (none of our callers captures).
// emu: one buffer per host thread (emu runs synchronously), reallocated to exactly `bytes` whenever
//   the size changes, so AddressSanitizer sees a kernel that overruns its partials.
int mn_scratch(void** out, int64_t bytes, void* stream);
