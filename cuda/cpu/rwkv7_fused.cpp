// Fused RWKV-7 time-mixing chains, cpu reference: plain loops from the math of kernels.h, sums
// over rows in double. Written independently of rwkv7_fused.cu (emu-vs-cpu compares the two).
#include <vector>

#include "cpu_common.h"

namespace {

// x[b, t-1, c] - x[b, t, c] with a zero token before t = 0; row = b*T + t
inline float token_diff(const float* x, int64_t row, int64_t c, int T, int C) {
  float prev = row % T == 0 ? 0.0f : x[(row - 1) * C + c];
  return prev - x[row * C + c];
}

inline void write_out(void* out, bool bf16, int64_t e, float v) {
  if (bf16) ((mn_bf16*)out)[e] = f32_to_bf16(v);
  else ((float*)out)[e] = v;
}

inline void grad_out(float* g, int64_t e, int accumulate, int bit, float v) {
  g[e] = (accumulate >> bit) & 1 ? g[e] + v : v;
}

}  // namespace

MN_API int mn_rwkv7_mix_x_forward(void* out, float* x, float* maa, int out_bf16, int B, int T,
                                  int C, void*) {
  MN_REQUIRE(B > 0 && T > 0 && C > 0, "rwkv7_mix_x_forward: bad shape [%d, %d, %d]", B, T, C);
  MN_REQUIRE(out && x && maa, "rwkv7_mix_x_forward: out, x and maa are required");
  MN_REQUIRE(out != (void*)x, "rwkv7_mix_x_forward: in-place is not supported");
  const int64_t N = (int64_t)B * T;
#pragma omp parallel for if (N * C > 100000)
  for (int64_t i = 0; i < N; i++)
    for (int64_t c = 0; c < C; c++) {
      float xi = x[i * C + c];
      write_out(out, out_bf16, i * C + c, xi + token_diff(x, i, c, T, C) * maa[c]);
    }
  return 0;
}

MN_API int mn_rwkv7_mix_x_backward(float* dx, float* dmaa, float* dout, float* x, float* maa,
                                   int B, int T, int C, int accumulate, void*) {
  MN_REQUIRE(B > 0 && T > 0 && C > 0, "rwkv7_mix_x_backward: bad shape [%d, %d, %d]", B, T, C);
  MN_REQUIRE(dx && dmaa && dout && x && maa,
             "rwkv7_mix_x_backward: dx, dmaa, dout, x and maa are required");
  MN_REQUIRE(accumulate & 2, "rwkv7_mix_x_backward: dmaa accumulates (bit 1 must be set)");
  const int64_t N = (int64_t)B * T;
  // out[t] = x[t] (1 - maa) + x[t-1] maa: x[t] reaches out[t] and out[t+1]
  std::vector<double> s(C, 0.0);
  for (int64_t i = 0; i < N; i++) {
    bool last = (i + 1) % T == 0;
    for (int64_t c = 0; c < C; c++) {
      float g = dout[i * C + c];
      float next = last ? 0.0f : dout[(i + 1) * C + c];
      double v = (double)g * (1.0 - (double)maa[c]) + (double)next * maa[c];
      grad_out(dx, i * C + c, accumulate, 0, (float)v);
      s[c] += (double)g * token_diff(x, i, c, T, C);
    }
  }
  for (int c = 0; c < C; c++) dmaa[c] += (float)s[c];
  return 0;
}

MN_API int mn_rwkv7_mix4_forward(void* out_rg, void* out_wa, void* out_k, void* out_v, float* x,
                                 float* m_rg, float* m_wa, float* m_k, float* m_v, float* maa_rg,
                                 float* maa_wa, float* maa_k, float* maa_v, int out_bf16, int B,
                                 int T, int C, void*) {
  MN_REQUIRE(B > 0 && T > 0 && C > 0, "rwkv7_mix4_forward: bad shape [%d, %d, %d]", B, T, C);
  void* outs[4] = {out_rg, out_wa, out_k, out_v};
  const float* m[4] = {m_rg, m_wa, m_k, m_v};
  const float* maa[4] = {maa_rg, maa_wa, maa_k, maa_v};
  for (int j = 0; j < 4; j++)
    MN_REQUIRE(outs[j] && m[j] && maa[j], "rwkv7_mix4_forward: every pointer is required");
  MN_REQUIRE(x, "rwkv7_mix4_forward: every pointer is required");
  const int64_t N = (int64_t)B * T;
#pragma omp parallel for if (N * C > 100000)
  for (int64_t i = 0; i < N; i++)
    for (int64_t c = 0; c < C; c++) {
      const int64_t e = i * C + c;
      float xx = token_diff(x, i, c, T, C);
      for (int j = 0; j < 4; j++) write_out(outs[j], out_bf16, e, x[e] + xx * (m[j][e] + maa[j][c]));
    }
  return 0;
}

MN_API int mn_rwkv7_mix4_backward(float* dx, float* dm_rg, float* dm_wa, float* dm_k, float* dm_v,
                                  float* dmaa_rg, float* dmaa_wa, float* dmaa_k, float* dmaa_v,
                                  float* dout_rg, float* dout_wa, float* dout_k, float* dout_v,
                                  float* x, float* m_rg, float* m_wa, float* m_k, float* m_v,
                                  float* maa_rg, float* maa_wa, float* maa_k, float* maa_v, int B,
                                  int T, int C, int accumulate, void*) {
  MN_REQUIRE(B > 0 && T > 0 && C > 0, "rwkv7_mix4_backward: bad shape [%d, %d, %d]", B, T, C);
  float* dm[4] = {dm_rg, dm_wa, dm_k, dm_v};
  float* dmaa[4] = {dmaa_rg, dmaa_wa, dmaa_k, dmaa_v};
  const float* dout[4] = {dout_rg, dout_wa, dout_k, dout_v};
  const float* m[4] = {m_rg, m_wa, m_k, m_v};
  const float* maa[4] = {maa_rg, maa_wa, maa_k, maa_v};
  for (int j = 0; j < 4; j++)
    MN_REQUIRE(dm[j] && dmaa[j] && dout[j] && m[j] && maa[j],
               "rwkv7_mix4_backward: every pointer is required");
  MN_REQUIRE(dx && x, "rwkv7_mix4_backward: every pointer is required");
  MN_REQUIRE((accumulate & 0x1e0) == 0x1e0,
             "rwkv7_mix4_backward: the dmaa gradients accumulate (bits 5..8 must be set)");
  const int64_t N = (int64_t)B * T;
  std::vector<double> s(4 * (size_t)C, 0.0);
  for (int64_t i = 0; i < N; i++) {
    bool last = (i + 1) % T == 0;
    for (int64_t c = 0; c < C; c++) {
      const int64_t e = i * C + c;
      float xx = token_diff(x, i, c, T, C);
      double v = 0.0;
      for (int j = 0; j < 4; j++) {
        double coef = (double)m[j][e] + maa[j][c];
        v += (double)dout[j][e] * (1.0 - coef);
        if (!last) v += (double)dout[j][e + C] * ((double)m[j][e + C] + maa[j][c]);
        grad_out(dm[j], e, accumulate, 1 + j, dout[j][e] * xx);
        s[j * C + c] += (double)dout[j][e] * xx;
      }
      grad_out(dx, e, accumulate, 0, (float)v);
    }
  }
  for (int j = 0; j < 4; j++)
    for (int c = 0; c < C; c++) dmaa[j][c] += (float)s[j * C + c];
  return 0;
}
