// The tensor-core attention entry points on the cpu backend: the same semantics as
// mn_attention_forward/backward, so they are that double-precision reference (cpu/attention.cpp),
// after the tensor-core entry points' argument checks (cuda/entry_checks.h, shared with cuda/emu).
#include "../entry_checks.h"
#include "cpu_common.h"

MN_API int mn_attention_tc_forward(float* out, float* lse, mn_bf16* q, mn_bf16* k, mn_bf16* v,
                                   int B, int T, int H, int D, void* stream) {
  if (int rc = mn_check_attention_tc_forward(out, lse, q, k, v, B, T, H, D)) return rc;
  return mn_attention_forward(out, lse, q, k, v, B, T, H, D, stream);
}

MN_API int mn_attention_tc_backward(float* dq, float* dk, float* dv, float* dout, float* out,
                                    float* lse, mn_bf16* q, mn_bf16* k, mn_bf16* v, float* ws,
                                    int B, int T, int H, int D, int accumulate, void* stream) {
  if (int rc = mn_check_attention_tc_backward(dq, dk, dv, dout, out, lse, q, k, v, ws, B, T,
                                                H, D))
    return rc;
  return mn_attention_backward(dq, dk, dv, dout, out, lse, q, k, v, ws, B, T, H, D, accumulate,
                               stream);
}
