// Rotary embedding reference: builds the cos/sin table [T, D/2] once (fp32 as torch computes it,
// rounded to bf16 as the original caches it), then applies the rotation row by row.
#include <vector>

#include "cpu_common.h"

static void rotary_table(int T, int D, std::vector<float>& cosv, std::vector<float>& sinv) {
  int half = D / 2;
  cosv.resize((size_t)T * half);
  sinv.resize((size_t)T * half);
  for (int j = 0; j < half; j++) {
    float e = (float)(2 * j) / (float)D;        // arange(0, dim, 2).float() / dim
    float inv = 1.0f / std::pow(10000.0f, e);   // 1 / base**e in fp32
    for (int t = 0; t < T; t++) {
      float f = (float)t * inv;                 // torch.outer(t, inv_freq)
      cosv[(size_t)t * half + j] = bf16_to_f32(f32_to_bf16(std::cos(f)));
      sinv[(size_t)t * half + j] = bf16_to_f32(f32_to_bf16(std::sin(f)));
    }
  }
}

static int rotary_args(const char* name, int B, int T, int H, int D) {
  MN_REQUIRE(B > 0 && T > 0 && H > 0 && D > 0, "%s: B=%d T=%d H=%d D=%d must be positive", name,
             B, T, H, D);
  MN_REQUIRE(D % 2 == 0, "%s: head dim D=%d must be even", name, D);
  return 0;
}

// sign = +1: out = R x (forward, written);  sign = -1: out += R^T x (backward, accumulated)
static void rotary_apply(float* out, const float* x, int B, int T, int H, int D, bool backward) {
  std::vector<float> cv, sv;
  rotary_table(T, D, cv, sv);
  int half = D / 2;
#pragma omp parallel for collapse(2) if ((int64_t)B * T * H * D > 100000)
  for (int b = 0; b < B; b++) {
    for (int t = 0; t < T; t++) {
      for (int h = 0; h < H; h++) {
        const float* xr = x + (((int64_t)b * T + t) * H + h) * D;
        float* yr = out + (((int64_t)b * T + t) * H + h) * D;
        for (int j = 0; j < half; j++) {
          float c = cv[(size_t)t * half + j], s = sv[(size_t)t * half + j];
          float x1 = xr[j], x2 = xr[j + half];
          if (backward) {
            yr[j] += c * x1 - s * x2;
            yr[j + half] += s * x1 + c * x2;
          } else {
            yr[j] = c * x1 + s * x2;
            yr[j + half] = c * x2 - s * x1;
          }
        }
      }
    }
  }
}

MN_API int mn_rotary_forward(float* out, float* x, int B, int T, int H, int D, void*) {
  if (int rc = rotary_args("rotary_forward", B, T, H, D)) return rc;
  rotary_apply(out, x, B, T, H, D, false);
  return 0;
}

MN_API int mn_rotary_backward(float* dx, float* dout, int B, int T, int H, int D, int accumulate,
                              void*) {
  if (int rc = rotary_args("rotary_backward", B, T, H, D)) return rc;
  cpu_clear_unless(accumulate, 0, dx, (int64_t)B * T * H * D);
  rotary_apply(dx, dout, B, T, H, D, true);
  return 0;
}
