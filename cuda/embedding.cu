// Token embedding lookup and its deterministic backward.
//   forward:  out[i, :] = wte[idx[i], :]
//   backward: dwte[idx[i], :] += dout[i, :], summed over i in increasing order
// Ids must lie in [0, V). The kernels do not report a bad id (that would need a host sync); they
// stay in bounds instead: forward writes NaN for the row of a bad id (so it shows up in the loss),
// backward drops its gradient. The cpu reference checks every id and fails with a message.
#include "common.cuh"

__host__ __device__ inline bool emb_valid(int32_t v, int V) { return v >= 0 && v < V; }

__global__ void embedding_forward_kernel(float* out, const int32_t* idx, const float* wte, int N,
                                         int C, int V) {
  int64_t total = (int64_t)N * C;
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total;
       e += (int64_t)gridDim.x * blockDim.x) {
    int64_t i = e / C;
    int c = (int)(e - i * C);
    int32_t v = idx[i];
    out[e] = emb_valid(v, V) ? wte[(int64_t)v * C + c] : __int_as_float(0x7fc00000);
  }
}

// One thread per channel c owns column c of dwte, so no two threads touch the same element and the
// sum over rows runs in the fixed order i = 0, 1, ..., N-1. Rows are taken EMB_K at a time so that
// EMB_K loads of dwte are in flight at once; repeated ids inside a group are merged in registers
// (the first occurrence is the leader and adds the later ones in row order), which gives exactly
// the serial result: dwte[v] + dout[i1] + dout[i2] + ... in increasing i.
constexpr int EMB_K = 8;

__global__ void embedding_backward_kernel(float* dwte, const int32_t* idx, const float* dout, int N,
                                          int C, int V) {
  int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  for (int i0 = 0; i0 < N; i0 += EMB_K) {
    int32_t v[EMB_K];
    float g[EMB_K], acc[EMB_K];
    bool lead[EMB_K];
#pragma unroll
    for (int k = 0; k < EMB_K; k++) {
      int i = i0 + k;
      v[k] = i < N ? idx[i] : -1;
      if (!emb_valid(v[k], V)) v[k] = -1;  // past the end, or a bad id: contributes nothing
      g[k] = v[k] >= 0 ? dout[(int64_t)i * C + c] : 0.0f;
    }
#pragma unroll
    for (int k = 0; k < EMB_K; k++) {
      lead[k] = v[k] >= 0;
#pragma unroll
      for (int j = 0; j < k; j++)
        if (v[j] == v[k]) lead[k] = false;
      acc[k] = lead[k] ? dwte[(int64_t)v[k] * C + c] : 0.0f;
    }
#pragma unroll
    for (int k = 0; k < EMB_K; k++) {
      // find this row's leader (the first row of the group with the same id) and add to it
#pragma unroll
      for (int j = 0; j <= k; j++) {
        if (lead[j] && v[j] == v[k]) {
          acc[j] += g[k];
          break;
        }
      }
    }
#pragma unroll
    for (int k = 0; k < EMB_K; k++)
      if (lead[k]) dwte[(int64_t)v[k] * C + c] = acc[k];
  }
}

static int embedding_check(const char* fn, float* a, int32_t* idx, float* b, int N, int C, int V) {
  MN_REQUIRE(a && idx && b, "%s: NULL pointer argument", fn);
  MN_REQUIRE(N > 0 && C > 0 && V > 0, "%s: bad shape N = %d, C = %d, V = %d", fn, N, C, V);
  return 0;
}

MN_API int mn_embedding_forward(float* out, int32_t* idx, float* wte, int N, int C, int V,
                                void* stream) {
  if (int rc = embedding_check("embedding_forward", out, idx, wte, N, C, V)) return rc;
  int64_t total = (int64_t)N * C;
  return mn_launch("embedding_forward", embedding_forward_kernel, mn_blocks_for(total, 256), 256, 0,
                   stream, out, (const int32_t*)idx, (const float*)wte, N, C, V);
}

MN_API int mn_embedding_backward(float* dwte, int32_t* idx, float* dout, int N, int C, int V,
                                 void* stream) {
  if (int rc = embedding_check("embedding_backward", dwte, idx, dout, N, C, V)) return rc;
  int threads = C < 128 ? 32 * ((C + 31) / 32) : 128;
  return mn_launch("embedding_backward", embedding_backward_kernel, (C + threads - 1) / threads,
                   threads, 0, stream, dwte, (const int32_t*)idx, (const float*)dout, N, C, V);
}
