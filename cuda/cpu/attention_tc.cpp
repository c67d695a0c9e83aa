// The tensor-core attention entry points on the cpu backend: the same semantics as
// mn_attention_forward/backward, so they are that double-precision reference (cpu/attention.cpp),
// after the tensor-core entry points' argument checks (cuda/entry_checks.h, shared with cuda/emu).
#include "../entry_checks.h"
#include "cpu_common.h"

#include <vector>

MN_API int mn_attention_tc_forward(float* out, float* lse, mn_bf16* q, mn_bf16* k, mn_bf16* v,
                                   int B, int T, int H, int D, void* stream) {
  if (int rc = mn_check_attention_tc_forward("attention_tc_forward", out, lse, q, k, v, B, T, H,
                                             D))
    return rc;
  return mn_attention_forward(out, lse, q, k, v, B, T, H, D, stream);
}

// bf16 out: the reference's fp32 out rounded once
MN_API int mn_attention_tc_forward_bf16(mn_bf16* out, float* lse, mn_bf16* q, mn_bf16* k,
                                        mn_bf16* v, int B, int T, int H, int D, void* stream) {
  if (int rc = mn_check_attention_tc_forward("attention_tc_forward_bf16", out, lse, q, k, v, B, T,
                                             H, D))
    return rc;
  std::vector<float> o((size_t)B * T * H * D);
  if (int rc = mn_attention_forward(o.data(), lse, q, k, v, B, T, H, D, stream)) return rc;
  for (size_t i = 0; i < o.size(); i++) out[i] = f32_to_bf16(o[i]);
  return 0;
}

MN_API int mn_attention_tc_backward(float* dq, float* dk, float* dv, float* dout, float* out,
                                    float* lse, mn_bf16* q, mn_bf16* k, mn_bf16* v, float* ws,
                                    int B, int T, int H, int D, int accumulate, void* stream) {
  if (int rc = mn_check_attention_tc_backward("attention_tc_backward", dq, dk, dv, dout, out, lse,
                                              q, k, v, ws, B, T, H, D))
    return rc;
  return mn_attention_backward(dq, dk, dv, dout, out, lse, q, k, v, ws, B, T, H, D, accumulate,
                               stream);
}

// bf16 dout and out: the reference backward on their fp32 values; bf16 gradients its results
// rounded once
MN_API int mn_attention_tc_backward_bf16(void* dq, void* dk, void* dv, mn_bf16* dout,
                                         mn_bf16* out, float* lse, mn_bf16* q, mn_bf16* k,
                                         mn_bf16* v, float* ws, int B, int T, int H, int D,
                                         int grads_bf16, int accumulate, void* stream) {
  const char* fn = "attention_tc_backward_bf16";
  if (int rc = mn_check_attention_tc_backward(fn, dq, dk, dv, dout, out, lse, q, k, v, ws, B, T,
                                              H, D))
    return rc;
  if (int rc = mn_check_bf16_grads_overwritten(fn, grads_bf16, accumulate, 7)) return rc;
  const size_t n = (size_t)B * T * H * D;
  std::vector<float> d(n), o(n), g(grads_bf16 ? 3 * n : 0);
  for (size_t i = 0; i < n; i++) d[i] = bf16_to_f32(dout[i]), o[i] = bf16_to_f32(out[i]);
  float* gq = grads_bf16 ? g.data() : (float*)dq;
  float* gk = grads_bf16 ? g.data() + n : (float*)dk;
  float* gv = grads_bf16 ? g.data() + 2 * n : (float*)dv;
  if (int rc = mn_attention_backward(gq, gk, gv, d.data(), o.data(), lse, q, k, v, ws, B, T, H, D,
                                     accumulate, stream))
    return rc;
  if (grads_bf16) {
    void* outs[3] = {dq, dk, dv};
    for (int j = 0; j < 3; j++)
      for (size_t i = 0; i < n; i++) ((mn_bf16*)outs[j])[i] = f32_to_bf16(g[j * n + i]);
  }
  return 0;
}
