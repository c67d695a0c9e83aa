// The tensor-core attention entry points on the cpu backend: the same semantics as
// mn_attention_forward/backward, so they are that double-precision reference (cpu/attention.cpp),
// after the tensor-core build's own argument checks (same messages as cuda/emu).
#include <cstdint>

#include "cpu_common.h"

namespace {

int check(const char* fn, int B, int T, int H, int D) {
  MN_REQUIRE(B > 0 && T > 0 && H > 0, "%s: B = %d, T = %d, H = %d must all be > 0", fn, B, T, H);
  MN_REQUIRE(D == 16 || D == 32 || D == 64 || D == 128,
             "%s: head size D = %d is not supported (16, 32, 64 or 128)", fn, D);
  MN_REQUIRE(B <= 65535 && H <= 65535, "%s: B = %d, H = %d exceed the grid limit 65535", fn, B,
             H);
  return 0;
}

inline bool aligned(const void* p) { return ((uintptr_t)p & 15u) == 0; }

}  // namespace

MN_API int mn_attention_tc_forward(float* out, float* lse, mn_bf16* q, mn_bf16* k, mn_bf16* v,
                                   int B, int T, int H, int D, void* stream) {
  if (int rc = check("attention_tc_forward", B, T, H, D)) return rc;
  MN_REQUIRE(out && lse && q && k && v, "attention_tc_forward: NULL tensor argument");
  MN_REQUIRE(aligned(out) && aligned(q) && aligned(k) && aligned(v),
             "attention_tc_forward: out, q, k, v must be 16-byte aligned");
  return mn_attention_forward(out, lse, q, k, v, B, T, H, D, stream);
}

MN_API int mn_attention_tc_backward(float* dq, float* dk, float* dv, float* dout, float* out,
                                    float* lse, mn_bf16* q, mn_bf16* k, mn_bf16* v, float* ws,
                                    int B, int T, int H, int D, void* stream) {
  if (int rc = check("attention_tc_backward", B, T, H, D)) return rc;
  MN_REQUIRE(dq && dk && dv && dout && out && lse && q && k && v && ws,
             "attention_tc_backward: NULL tensor argument");
  MN_REQUIRE(aligned(dq) && aligned(dk) && aligned(dv) && aligned(dout) && aligned(q) &&
                 aligned(k) && aligned(v),
             "attention_tc_backward: dq, dk, dv, dout, q, k, v must be 16-byte aligned");
  return mn_attention_backward(dq, dk, dv, dout, out, lse, q, k, v, ws, B, T, H, D, stream);
}
