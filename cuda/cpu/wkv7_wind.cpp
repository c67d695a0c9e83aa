// WKV-7 wind (the tensor-core chunk-16 kernel, cuda/wkv7_wind.cu): the same semantics and saved
// buffers as mn_wkv7_forward / mn_wkv7_backward, so the cpu backend is that double-precision
// reference (cuda/cpu/wkv7.cpp): forward fills y, s_ckpt and sa exactly as the kernel defines them;
// backward recomputes everything from the inputs and does not read s_ckpt or sa. Only the argument
// checks differ (cuda/entry_checks.h), so that errors name the wind entry points.
#include "../entry_checks.h"
#include "cpu_common.h"

MN_API int mn_wkv7_wind_forward(float* y, float* s_ckpt, float* sa, mn_bf16* r, mn_bf16* w,
                                mn_bf16* k, mn_bf16* v, mn_bf16* a, mn_bf16* b, int B, int T,
                                int H, int N, void* stream) {
  if (int rc = mn_check_wkv7_wind_shape("wkv7_wind_forward", B, T, H, N)) return rc;
  MN_REQUIRE(y && s_ckpt && sa && r && w && k && v && a && b,
             "wkv7_wind_forward: NULL tensor argument");
  return mn_wkv7_forward(y, s_ckpt, sa, r, w, k, v, a, b, B, T, H, N, stream);
}

MN_API int mn_wkv7_wind_backward(void* dr, void* dw, void* dk, void* dv, void* da, void* db,
                                 float* dy, mn_bf16* r, mn_bf16* w, mn_bf16* k, mn_bf16* v,
                                 mn_bf16* a, mn_bf16* b, float* s_ckpt, float* sa, int B, int T,
                                 int H, int N, int drkv_bf16, int dwab_bf16, int accumulate,
                                 void* stream) {
  if (int rc = mn_check_wkv7_wind_shape("wkv7_wind_backward", B, T, H, N)) return rc;
  MN_REQUIRE(dr && dw && dk && dv && da && db && dy && r && w && k && v && a && b && s_ckpt && sa,
             "wkv7_wind_backward: NULL tensor argument");
  return mn_wkv7_backward(dr, dw, dk, dv, da, db, dy, r, w, k, v, a, b, s_ckpt, sa, B, T, H, N,
                          drkv_bf16, dwab_bf16, accumulate, stream);
}
