// Rotary position embedding (the 11/08/24 modded-nanogpt Rotary + apply_rotary_emb) on fp32
// [B,T,H,D] activations, half-split convention, cos/sin rounded to bf16 as the original caches them.
#include "common.cuh"
#include "rotary.cuh"

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
