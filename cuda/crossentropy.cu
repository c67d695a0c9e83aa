// Softcapped cross-entropy over rows of logits, with its gradient fused in (see kernels.h):
//   z = softcap * tanh(x / softcap)   (z = x when softcap <= 0)
//   loss = logsumexp(z) - z[target]
//   dlogits = dloss * (softmax(z) - onehot(target)) * (1 - tanh^2(x / softcap))
// One block per row, three passes over the row: max of z, sum of exp(z - max), then the loss and
// the gradient. The gradient pass reads x[i] and writes dlogits[i] from the same thread, so dlogits
// may be logits itself (the lm head reuses the logits buffer).
//
// A target outside [0, V) cannot be reported from the GPU without a host sync, so that row gets a
// NaN loss and, when dlogits is given, a NaN gradient row: the failure shows in the loss instead of
// training silently on a wrong class. The cpu build rejects it with an error instead.
#include "common.cuh"

constexpr int CE_THREADS = 256;

// z = softcap * tanh(x / softcap), or x uncapped.
__host__ __device__ inline float ce_z(float x, float softcap) {
  return softcap > 0.0f ? softcap * tanhf(x / softcap) : x;
}
// dz/dx = 1 - tanh^2(u) = sech^2(u) = 4 e / (1 + e)^2 with e = exp(-2|u|), u = x / softcap. Written
// this way because 1 - t*t cancels where the cap saturates (t near 1 leaves dz with a relative
// error of ~2^-24 / (1 - t^2), 1e-4 at |u| = 4); this form is accurate to a few ulps everywhere.
__host__ __device__ inline float ce_dz(float x, float softcap) {
  if (softcap <= 0.0f) return 1.0f;
  float e = expf(-2.0f * fabsf(x / softcap));
  float d = 1.0f + e;
  return 4.0f * e / (d * d);
}

__global__ void __launch_bounds__(CE_THREADS)
    softcap_crossentropy_kernel(float* losses, float* dlogits, const float* logits,
                                const int32_t* targets, int V, float softcap, float dloss) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const float* x = logits + row * V;
  const int target = targets[row];
  const bool valid = target >= 0 && target < V;
  // Read before the first barrier: no thread writes dlogits (possibly = logits) before that.
  const float z_target = valid ? ce_z(x[target], softcap) : 0.0f;

  float m = -INFINITY;
  for (int i = threadIdx.x; i < V; i += blockDim.x) m = fmaxf(m, ce_z(x[i], softcap));
  m = mn_block_max(m, scratch);

  float s = 0.0f;
  for (int i = threadIdx.x; i < V; i += blockDim.x) s += expf(ce_z(x[i], softcap) - m);
  s = mn_block_sum(s, scratch);

  const float nan = __int_as_float(0x7fc00000);
  const float lse = m + logf(s);
  if (threadIdx.x == 0) losses[row] = valid ? lse - z_target : nan;
  if (!dlogits) return;
  float* d = dlogits + row * V;
  const float inv_s = 1.0f / s;
  for (int i = threadIdx.x; i < V; i += blockDim.x) {
    float p = expf(ce_z(x[i], softcap) - m) * inv_s;
    d[i] = valid ? dloss * (p - (i == target ? 1.0f : 0.0f)) * ce_dz(x[i], softcap) : nan;
  }
}

MN_API int mn_softcap_crossentropy(float* losses, float* dlogits, float* logits, int32_t* targets,
                                   int N, int V, float softcap, float dloss, void* stream) {
  MN_REQUIRE(N > 0 && V > 0, "softcap_crossentropy: bad shape N=%d V=%d", N, V);
  MN_REQUIRE(losses && logits && targets, "softcap_crossentropy: NULL losses, logits or targets");
  MN_REQUIRE(softcap == softcap && dloss == dloss, "softcap_crossentropy: NaN softcap or dloss");
  return mn_launch("softcap_crossentropy", softcap_crossentropy_kernel, dim3(N), dim3(CE_THREADS),
                   0, stream, losses, dlogits, (const float*)logits, (const int32_t*)targets, V,
                   softcap, dloss);
}
