// Reference softcapped cross-entropy, row by row in double precision:
//   z_i = softcap * tanh(x_i / softcap) (z = x when softcap <= 0),
//   loss = log(sum_i exp(z_i)) - z_t,
//   dlogits_i = dloss * (exp(z_i) / sum_j exp(z_j) - [i == t]) * dz_i/dx_i.
//
// The per-element work (a tanh and an exp per logit, 50304 logits a row in the trainers) runs 8
// doubles at a time through exp and tanh written here (cpu_math.h), accurate to a few double ulps,
// so every fp32 output is the double result rounded once, as with libm's scalar exp and tanh
// (which made this kernel ~45x slower than its memory traffic). Each row: the largest logit gives
// the shift zmax (tanh is increasing); one pass computes e_i = exp(z_i - zmax), dz_i and their sum;
// the gradient is dloss * (e_i / sum - [i == t]) * dz_i (dloss / sum * e_i * dz_i off the target). dz_i = 1 - tanh^2 is computed as
// 4e / (1 + e)^2 with e = exp(-2|x_i| / softcap): accurate also where tanh saturates (|x| >~ 5
// softcap), where 1 - t * t keeps no correct digit (those gradients are then below 1e-8 of dloss).
//
// bf16 logits (mn_softcap_crossentropy_bf16) are the fp32 reference on the widened values, the
// gradient rounded to bf16 once more. A bf16 logit is one of 65536 values, so z and dz of each come
// from a table built with the same vector tanh (the same bits as computing them per logit, half the
// work of a row), and the row is read and its gradient written in bf16 directly.
#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <vector>

#include "cpu_common.h"
#include "cpu_math.h"
#include "../entry_checks.h"

namespace {
struct Row {
  double zmax, sum, zt;  // the shift, sum_i exp(z_i - zmax), z of the target
};

// e[0, n) = exp(z - zmax) for lanes [0, n), added to the lane sums (inlined: vectors stay local)
static inline __attribute__((always_inline)) void add_exp(double* e, mn_math::vd z, double zmax,
                                                          int n, mn_math::vd* sum) {
  using namespace mn_math;
  vd ei = mn_math::exp(z - zmax);
  if (n < kLanes) ei = lanes_below(n) ? ei : 0.0;
  *sum += ei;
  store(e, ei, n);
}
static inline __attribute__((always_inline)) double lane_sum(mn_math::vd sum) {
  double s = 0.0;
  for (int l = 0; l < mn_math::kLanes; l++) s += sum[l];
  return s;
}

// One row: e_i = exp(z_i - zmax) and dz_i into the caller's scratch; the sum of the e_i.
MN_HOST_ISA_CLONES
Row ce_row(const float* x, int V, int t, bool capped, double cap, double* e, double* dz) {
  using namespace mn_math;
  vf m8 = vf{} - INFINITY;
  int i = 0;
  for (; i + kLanes <= V; i += kLanes) {
    vf v;
    std::memcpy(&v, x + i, sizeof v);
    m8 = v > m8 ? v : m8;
  }
  float xmax = -INFINITY;
  for (int l = 0; l < kLanes; l++) xmax = m8[l] > xmax ? m8[l] : xmax;
  for (; i < V; i++) xmax = x[i] > xmax ? x[i] : xmax;
  const double inv_cap = capped ? 1.0 / cap : 1.0;
  // z of the largest logit and of the target: lane 0 of a broadcast, the same math as the row's
  const vd ends = lanes_below(1) ? splat(xmax) : splat(x[t]);
  vd unused;
  const vd zends = capped ? cap * mn_math::tanh(ends * inv_cap, &unused) : ends;
  const double zmax = zends[0], zt = zends[1];
  vd sum = splat(0.0);
  for (int i0 = 0; i0 < V; i0 += kLanes) {
    const int n = std::min(kLanes, V - i0);
    const vd y = load_f32(x + i0, n);
    vd z = y;
    if (capped) {
      vd dth;
      z = cap * mn_math::tanh(y * inv_cap, &dth);
      store(dz + i0, dth, n);
    }
    add_exp(e + i0, z, zmax, n, &sum);
  }
  return {zmax, lane_sum(sum), zt};
}

// z_i = softcap * tanh(x_i / softcap) and dz_i of every bf16 value x_i (indexed by its bits),
// kept per calling thread for the last softcap (the trainers use one)
struct SoftcapTable {
  float cap = NAN;
  std::vector<double> z, dz;  // [65536] each
};

MN_HOST_ISA_CLONES
void softcap_table_fill(double* z, double* dz, double cap) {
  using namespace mn_math;
  const double inv_cap = 1.0 / cap;
  for (int h0 = 0; h0 < 65536; h0 += kLanes) {
    vd y;
    for (int l = 0; l < kLanes; l++) y[l] = bf16_to_f32((mn_bf16)(h0 + l));
    vd dth;
    const vd zv = cap * mn_math::tanh(y * inv_cap, &dth);
    store(z + h0, zv, kLanes);
    store(dz + h0, dth, kLanes);
  }
}

const SoftcapTable& softcap_table(float softcap) {
  static thread_local SoftcapTable t;
  if (!(t.cap == softcap)) {
    t.z.resize(65536);
    t.dz.resize(65536);
    softcap_table_fill(t.z.data(), t.dz.data(), softcap);
    t.cap = softcap;
  }
  return t;
}

// ce_row on bf16 logits: the same lanes, the same sums, z and dz from the table (or z = x when
// uncapped, tab null)
MN_HOST_ISA_CLONES
Row ce_row_bf16(const mn_bf16* x, int V, int t, const SoftcapTable* tab, double* e, double* dz) {
  using namespace mn_math;
  vf m8 = vf{} - INFINITY;
  int i = 0;
  for (; i + kLanes <= V; i += kLanes) {
    vf v;
    for (int l = 0; l < kLanes; l++) v[l] = bf16_to_f32(x[i + l]);
    m8 = v > m8 ? v : m8;
  }
  float xmax = -INFINITY;
  for (int l = 0; l < kLanes; l++) xmax = m8[l] > xmax ? m8[l] : xmax;
  for (; i < V; i++) xmax = bf16_to_f32(x[i]) > xmax ? bf16_to_f32(x[i]) : xmax;
  uint32_t xmax_bits;
  std::memcpy(&xmax_bits, &xmax, 4);  // xmax is one of the row's bf16 values, or -inf
  const mn_bf16 hmax = (mn_bf16)(xmax_bits >> 16);
  const double zmax = tab ? tab->z[hmax] : xmax;
  const double zt = tab ? tab->z[x[t]] : bf16_to_f32(x[t]);
  // z_i (and dz_i) looked up into the scratch first, then exp on whole vectors of it: assembling a
  // vector from eight scalar lookups in registers stalled on the stack round trip
  for (int j = 0; j < V; j++) {
    e[j] = tab ? tab->z[x[j]] : bf16_to_f32(x[j]);
    if (tab) dz[j] = tab->dz[x[j]];
  }
  vd sum = splat(0.0);
  for (int i0 = 0; i0 < V; i0 += kLanes) {
    const int n = std::min(kLanes, V - i0);
    vd z = {};
    if (n == kLanes) std::memcpy(&z, e + i0, sizeof z);
    else
      for (int l = 0; l < n; l++) z[l] = e[i0 + l];
    add_exp(e + i0, z, zmax, n, &sum);
  }
  return {zmax, lane_sum(sum), zt};
}

inline void put_grad(float* d, int i, double v) { d[i] = (float)v; }
// the fp32 gradient rounded to bf16 (the fp32 reference's value, rounded once more)
inline void put_grad(mn_bf16* d, int i, double v) { d[i] = f32_to_bf16((float)v); }

template <class G>
MN_HOST_ISA_CLONES void ce_grad(G* d, const double* e, const double* dz, int V, int t, bool capped,
                                double sum, double dloss) {
  const double s = dloss / sum;
  if (capped)
    for (int i = 0; i < V; i++) put_grad(d, i, s * e[i] * dz[i]);
  else
    for (int i = 0; i < V; i++) put_grad(d, i, s * e[i]);
  put_grad(d, t, dloss * (e[t] / sum - 1.0) * (capped ? dz[t] : 1.0));
}

// Every row of losses (and dlogits) through row(r, e, dz) -> Row, rows split over the threads.
template <class G, class RowFn>
int ce_rows(float* losses, G* dlogits, int32_t* targets, int N, int V, bool capped, float dloss,
            RowFn row_fn) {
  for (int r = 0; r < N; r++)
    MN_REQUIRE(targets[r] >= 0 && targets[r] < V,
               "softcap_crossentropy: target %d of row %d is not in [0, %d)", targets[r], r, V);
  const bool parallel = (int64_t)N * V > 100000;
  const int nt = parallel ? omp_get_max_threads() : 1;
  // per thread: e and dz of one row, computed before anything is written (dlogits may be logits)
  const size_t row = ((size_t)V + mn_math::kLanes + 7) / 8 * 8;
  double* scratch = (double*)std::aligned_alloc(64, (size_t)nt * 2 * row * sizeof(double));
  if (!scratch) return mn_fail(MN_ERR_OUT_OF_MEMORY, "softcap_crossentropy: out of memory");
#pragma omp parallel num_threads(nt) if (parallel)
  {
    double* e = scratch + (size_t)omp_get_thread_num() * 2 * row;
    double* dz = e + row;
#pragma omp for
    for (int r = 0; r < N; r++) {
      const int t = targets[r];
      const Row w = row_fn(r, t, e, dz);
      losses[r] = (float)(w.zmax + std::log(w.sum) - w.zt);
      if (dlogits) ce_grad(dlogits + (int64_t)r * V, e, dz, V, t, capped, w.sum, (double)dloss);
    }
  }
  std::free(scratch);
  return 0;
}
}  // namespace

MN_API int mn_softcap_crossentropy(float* losses, float* dlogits, float* logits, int32_t* targets,
                                   int N, int V, float softcap, float dloss, void*) {
  MN_REQUIRE(N > 0 && V > 0, "softcap_crossentropy: bad shape N=%d V=%d", N, V);
  MN_REQUIRE(losses && logits && targets, "softcap_crossentropy: NULL losses, logits or targets");
  MN_REQUIRE(softcap == softcap && dloss == dloss, "softcap_crossentropy: NaN softcap or dloss");
  const bool capped = softcap > 0.0f;
  const double cap = softcap;
  return ce_rows(losses, dlogits, targets, N, V, capped, dloss,
                 [&](int r, int t, double* e, double* dz) {
                   return ce_row(logits + (int64_t)r * V, V, t, capped, cap, e, dz);
                 });
}

MN_API int mn_softcap_crossentropy_bf16(float* losses, mn_bf16* dlogits, mn_bf16* logits,
                                        int32_t* targets, int N, int V, float softcap, float dloss,
                                        void*) {
  if (int rc = mn_check_softcap_crossentropy_bf16(losses, logits, targets, N, V, softcap, dloss))
    return rc;
  const bool capped = softcap > 0.0f;
  const SoftcapTable* tab = capped ? &softcap_table(softcap) : nullptr;
  return ce_rows(losses, dlogits, targets, N, V, capped, dloss,
                 [&](int r, int t, double* e, double* dz) {
                   return ce_row_bf16(logits + (int64_t)r * V, V, t, tab, e, dz);
                 });
}
