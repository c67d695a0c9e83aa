// Embedding lookup, reference: plain loops. Every id is checked before anything is written.
#include "cpu_common.h"

static int check_ids(const char* fn, const int32_t* idx, int N, int V) {
  for (int i = 0; i < N; i++)
    MN_REQUIRE(idx[i] >= 0 && idx[i] < V, "%s: idx[%d] = %d is outside [0, %d)", fn, i, idx[i], V);
  return 0;
}

static int check_args(const char* fn, float* a, int32_t* idx, float* b, int N, int C, int V) {
  MN_REQUIRE(a && idx && b, "%s: NULL pointer argument", fn);
  MN_REQUIRE(N > 0 && C > 0 && V > 0, "%s: bad shape N = %d, C = %d, V = %d", fn, N, C, V);
  return check_ids(fn, idx, N, V);
}

MN_API int mn_embedding_forward(float* out, int32_t* idx, float* wte, int N, int C, int V, void*) {
  if (int rc = check_args("embedding_forward", out, idx, wte, N, C, V)) return rc;
#pragma omp parallel for if ((int64_t)N * C > 100000)
  for (int i = 0; i < N; i++) {
    const float* src = wte + (int64_t)idx[i] * C;
    float* dst = out + (int64_t)i * C;
    for (int c = 0; c < C; c++) dst[c] = src[c];
  }
  return 0;
}

MN_API int mn_embedding_backward(float* dwte, int32_t* idx, float* dout, int N, int C, int V,
                                 int accumulate, void*) {
  if (int rc = check_args("embedding_backward", dwte, idx, dout, N, C, V)) return rc;
  cpu_clear_unless(accumulate, 0, dwte, (int64_t)V * C);
  // rows in increasing order; each element of dwte is a plain fp32 running sum
  for (int i = 0; i < N; i++) {
    float* dst = dwte + (int64_t)idx[i] * C;
    const float* src = dout + (int64_t)i * C;
    for (int c = 0; c < C; c++) dst[c] += src[c];
  }
  return 0;
}
