// Chunked WKV-6 (--fla_cuda) on the cpu backend: the chunking is an evaluation order, not a
// different function, so y and every gradient come from the naive double-precision WKV-6
// reference (mn_wkv6_forward / mn_wkv6_backward in cpu/wkv6.cpp). The forward also writes the
// chunk checkpoints s_ckpt (the state entering each 16-step chunk) from its own naive recurrence
// in double, so that tests can check the kernels' state scan; ws is not touched.
#include <vector>

#include "../entry_checks.h"
#include "cpu_common.h"

namespace {

constexpr int CHUNK = 16;  // the chunk length of the ABI (cuda/kernels.h)

// s_ckpt[b][h][c][j][i] = S_{16c-1}[i][j]: S_t = S_{t-1} diag(exp(-exp(w_t))) + v_t k_t^T, S_{-1} = 0
void checkpoints(float* s_ckpt, const mn_bf16* k, const mn_bf16* v, const mn_bf16* w, int B,
                 int T, int H, int N) {
  const int64_t NC = mn_wkv6_chunked_count(T);
  for (int b = 0; b < B; b++)
    for (int h = 0; h < H; h++) {
      std::vector<double> S((size_t)N * N, 0.0);  // S[i * N + j]
      for (int c = 0; c < NC; c++) {
        float* ck = s_ckpt + (((int64_t)b * H + h) * NC + c) * N * N;
        for (int i = 0; i < N; i++)
          for (int j = 0; j < N; j++) ck[(int64_t)j * N + i] = (float)S[(size_t)i * N + j];
        for (int t = c * CHUNK; t < T && t < (c + 1) * CHUNK; t++) {
          const int64_t o = (((int64_t)b * T + t) * H + h) * N;
          for (int i = 0; i < N; i++)
            for (int j = 0; j < N; j++) {
              const double d = std::exp(-std::exp((double)bf16_to_f32(w[o + j])));
              double& s = S[(size_t)i * N + j];
              s = s * d + (double)bf16_to_f32(v[o + i]) * bf16_to_f32(k[o + j]);
            }
        }
      }
    }
}

}  // namespace

MN_API int mn_wkv6_chunked_sizes(int64_t* host_ckpt_elems, int64_t* host_ws_elems, int B, int T,
                                 int H, int N) {
  if (int rc = mn_check_wkv6_chunked_shape("wkv6_chunked_sizes", B, T, H, N)) return rc;
  MN_REQUIRE(host_ckpt_elems && host_ws_elems, "wkv6_chunked_sizes: NULL output argument");
  const int64_t NC = mn_wkv6_chunked_count(T);
  *host_ckpt_elems = (int64_t)B * H * NC * N * N;
  *host_ws_elems = (int64_t)B * H * NC * N * (N + 1);
  return 0;
}

MN_API int mn_wkv6_chunked_forward(float* y, float* s_ckpt, mn_bf16* r, mn_bf16* k, mn_bf16* v,
                                   mn_bf16* w, float* u, int B, int T, int H, int N,
                                   void* stream) {
  const char* fn = "wkv6_chunked_forward";
  if (int rc = mn_check_wkv6_chunked_shape(fn, B, T, H, N)) return rc;
  MN_REQUIRE(y && s_ckpt && r && k && v && w && u, "%s: NULL tensor argument", fn);
  if (int rc = mn_check_wkv6_chunked_count(fn, T)) return rc;
  if (int rc = mn_wkv6_forward(y, r, k, v, w, u, B, T, H, N, stream)) return rc;
  checkpoints(s_ckpt, k, v, w, B, T, H, N);
  return 0;
}

MN_API int mn_wkv6_chunked_backward(float* dr, float* dk, float* dv, float* dw, float* du,
                                    float* dy, mn_bf16* r, mn_bf16* k, mn_bf16* v, mn_bf16* w,
                                    float* u, float* s_ckpt, float* ws, int B, int T, int H, int N,
                                    int accumulate, void* stream) {
  const char* fn = "wkv6_chunked_backward";
  if (int rc = mn_check_wkv6_chunked_shape(fn, B, T, H, N)) return rc;
  MN_REQUIRE(dr && dk && dv && dw && du && dy && r && k && v && w && u && s_ckpt && ws,
             "%s: NULL tensor argument", fn);
  if (int rc = mn_check_wkv6_chunked_count(fn, T)) return rc;
  return mn_wkv6_backward(dr, dk, dv, dw, du, dy, r, k, v, w, u, ws, B, T, H, N, accumulate,
                          stream);
}
