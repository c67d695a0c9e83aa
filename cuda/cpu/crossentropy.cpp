// Reference softcapped cross-entropy, row by row in double precision:
//   z_i = softcap * tanh(x_i / softcap) (z = x when softcap <= 0),
//   loss = log(sum_i exp(z_i)) - z_t,
//   dlogits_i = dloss * (exp(z_i) / sum_j exp(z_j) - [i == t]) * dz_i/dx_i.
#include <vector>

#include "cpu_common.h"

MN_API int mn_softcap_crossentropy(float* losses, float* dlogits, float* logits, int32_t* targets,
                                   int N, int V, float softcap, float dloss, void*) {
  MN_REQUIRE(N > 0 && V > 0, "softcap_crossentropy: bad shape N=%d V=%d", N, V);
  MN_REQUIRE(losses && logits && targets, "softcap_crossentropy: NULL losses, logits or targets");
  MN_REQUIRE(softcap == softcap && dloss == dloss, "softcap_crossentropy: NaN softcap or dloss");
  for (int r = 0; r < N; r++)
    MN_REQUIRE(targets[r] >= 0 && targets[r] < V,
               "softcap_crossentropy: target %d of row %d is not in [0, %d)", targets[r], r, V);
  const bool capped = softcap > 0.0f;
  const double cap = softcap;
#pragma omp parallel
  {
    std::vector<double> z(V), dz(V);  // computed before anything is written: dlogits may be logits
#pragma omp for
    for (int r = 0; r < N; r++) {
      const float* x = logits + (int64_t)r * V;
      double zmax = -INFINITY;
      for (int i = 0; i < V; i++) {
        double t = capped ? std::tanh(x[i] / cap) : 0.0;
        z[i] = capped ? cap * t : (double)x[i];
        dz[i] = capped ? 1.0 - t * t : 1.0;
        zmax = std::fmax(zmax, z[i]);
      }
      double sum = 0.0;
      for (int i = 0; i < V; i++) sum += std::exp(z[i] - zmax);
      const double lse = zmax + std::log(sum);
      const int t = targets[r];
      losses[r] = (float)(lse - z[t]);
      if (!dlogits) continue;
      float* d = dlogits + (int64_t)r * V;
      for (int i = 0; i < V; i++)
        d[i] = (float)(dloss * (std::exp(z[i] - lse) - (i == t ? 1.0 : 0.0)) * dz[i]);
    }
  }
  return 0;
}
