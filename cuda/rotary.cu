// Rotary position embedding (the 11/08/24 modded-nanogpt Rotary + apply_rotary_emb) on fp32
// [B,T,H,D] activations, half-split convention, cos/sin rounded to bf16 as the original caches them.
#include "common.cuh"

// The original's table entry for position t and frequency i (0 <= i < D/2), computed in fp32 as
// torch does: inv_freq = 1 / (base ** ((2i) / D)), freq = t * inv_freq, then cos/sin -> bf16.
__host__ __device__ inline void rotary_cos_sin(int t, int i, int D, float* c, float* s) {
  float expo = (float)(2 * i) / (float)D;
  float inv_freq = 1.0f / powf(10000.0f, expo);
  float freq = (float)t * inv_freq;
  *c = mn_bf16_to_f32(mn_f32_to_bf16(cosf(freq)));
  *s = mn_bf16_to_f32(mn_f32_to_bf16(sinf(freq)));
}

// One thread per (row, i) pair: x1 = x[row, i], x2 = x[row, i + D/2].
//   forward:  y1 = x1 c + x2 s,  y2 = -x1 s + x2 c
//   backward: dx1 += dy1 c - dy2 s,  dx2 += dy1 s + dy2 c  (the transpose of the rotation)
template <bool BACKWARD>
__global__ void rotary_kernel(float* out, const float* in, int64_t pairs, int T, int H, int D,
                              int acc) {
  const int half = D / 2;
  for (int64_t p = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; p < pairs;
       p += (int64_t)gridDim.x * blockDim.x) {
    int i = (int)(p % half);
    int64_t row = p / half;  // (b, t, h) flattened
    int t = (int)((row / H) % T);
    float c, s;
    rotary_cos_sin(t, i, D, &c, &s);
    int64_t o = row * D + i;
    float a = in[o], b = in[o + half];
    if (BACKWARD) {
      MN_GRAD_STORE(out[o], a * c - b * s, acc);
      MN_GRAD_STORE(out[o + half], a * s + b * c, acc);
    } else {
      out[o] = a * c + b * s;
      out[o + half] = -a * s + b * c;
    }
  }
}

static int rotary_check(const char* name, int B, int T, int H, int D) {
  MN_REQUIRE(B > 0 && T > 0 && H > 0 && D > 0, "%s: B=%d T=%d H=%d D=%d must be positive", name,
             B, T, H, D);
  MN_REQUIRE(D % 2 == 0, "%s: head dim D=%d must be even", name, D);
  return 0;
}

MN_API int mn_rotary_forward(float* out, float* x, int B, int T, int H, int D, void* stream) {
  if (int rc = rotary_check("rotary_forward", B, T, H, D)) return rc;
  int64_t pairs = (int64_t)B * T * H * (D / 2);
  return mn_launch("rotary_forward", rotary_kernel<false>, mn_blocks_for(pairs, 256), 256, 0,
                   stream, out, (const float*)x, pairs, T, H, D, 0);
}

MN_API int mn_rotary_backward(float* dx, float* dout, int B, int T, int H, int D, int accumulate,
                              void* stream) {
  if (int rc = rotary_check("rotary_backward", B, T, H, D)) return rc;
  int64_t pairs = (int64_t)B * T * H * (D / 2);
  return mn_launch("rotary_backward", rotary_kernel<true>, mn_blocks_for(pairs, 256), 256, 0,
                   stream, dx, (const float*)dout, pairs, T, H, D, MN_ACC_BIT(accumulate, 0));
}
