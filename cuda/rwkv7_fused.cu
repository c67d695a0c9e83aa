// Fused RWKV-7 (and RWKV-6) time-mixing chains: what torch.compile turns into one generated kernel each, here
// written by hand, with the generic tape ops (modelops.cu) left as the composition a record
// hacker edits. Forward kernels write the operand the next matmul reads (bf16 when the trainer runs
// bf16) instead of an fp32 value plus a cast; backward kernels recompute the cheap intermediates
// (xx = shift(x) - x) from the saved input instead of keeping them. Parameter-vector gradients are
// reduce.cuh's two-stage column sums (deterministic, no float atomics), with the elementwise
// gradients written by the same pass that reads dout for the sums.
//
// Gradient outputs follow the `accumulate` convention of kernels.h: bit i set = add into the i-th
// gradient pointer, clear = overwrite it without reading (it may hold NaN). The column sums only
// add, so the parameter-vector gradients' bits must be set.
#include "common.cuh"
#include "entry_checks.h"
#include "reduce.cuh"
#include "rwkv7_math.cuh"

namespace {

constexpr int kThreads = 256;

#define GRID_STRIDE(i, n)                                                     \
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (n); \
       i += (int64_t)gridDim.x * blockDim.x)

__device__ inline void store(float* p, float v) { *p = v; }
__device__ inline void store(bf16* p, float v) { *p = mn_f32_to_bf16(v); }
__device__ inline float ld(const float* p) { return *p; }
__device__ inline float ld(const bf16* p) { return mn_bf16_to_f32(*p); }

// (acc ? old + v : v) into p[e], reading p only when adding (an overwritten gradient may be NaN).
__device__ inline void put_grad(float* p, int64_t e, bool acc, float v) {
  p[e] = acc ? p[e] + v : v;
}

// xx[i, c] of x [B*T, C]: the previous token's value minus this one's (the token before t = 0 of a
// sequence is zero). Row i is token i % T of its sequence.
__device__ inline float shift_diff(const float* x, int64_t i, int c, int T, int C) {
  const int64_t e = i * C + c;
  const float prev = i % T ? x[e - C] : 0.0f;
  return prev - x[e];
}

// ---- (a) token shift and the five mixes ----

// xxx = x + xx * maa[c]
template <class Out>
__global__ void mix_x_forward_kernel(Out* out, const float* x, const float* maa, int T, int C,
                                     int64_t n) {
  GRID_STRIDE(e, n) {
    const int64_t i = e / C;
    const int c = (int)(e % C);
    store(out + e, mix_f(x[e], shift_diff(x, i, c, T, C), maa[c]));
  }
}

// out_j = x + xx * (m_j + maa_j), j < J: RWKV-7's four (xrg, xwa, xk, xv), RWKV-6's five (xw,
// xk, xv, xr, xg); m_j fp32 or bf16 (M: RWKV-7's LoRA outputs in bf16)
template <int J, class M = float>
struct MixArgs {
  const M* m[J];
  const float* maa[J];
};
template <class Out, int J>
struct MixOuts {
  Out* o[J];
};
template <int J, class Out, class M = float>
__global__ void mixn_forward_kernel(MixOuts<Out, J> o, const float* x, MixArgs<J, M> a, int T,
                                    int C, int64_t n) {
  GRID_STRIDE(e, n) {
    const int64_t i = e / C;
    const int c = (int)(e % C);
    const float xe = x[e], xx = shift_diff(x, i, c, T, C);
#pragma unroll
    for (int j = 0; j < J; j++) store(o.o[j] + e, mix_f(xe, xx, ld(a.m[j] + e) + a.maa[j][c]));
  }
}

// Backward of xxx = x + xx * maa: token t's dx gets dout[t] (1 - maa) from its own mix and
// dout[t+1] maa from the next token's xx; dmaa[c] += sum_i dout xx. dx is written here, in the
// column-sum pass that reads dout anyway.
template <class DO>
struct MixXTerm {
  float* dx;
  const DO* dout;
  const float* x;
  const float* maa;
  int T, C;
  bool acc_dx;
  float p;
  struct Load {
    float d, dn, xx, old;
  };
  __device__ void begin(int c) { p = maa[c]; }
  __device__ Load load(int64_t i, int c) const {
    const int64_t e = i * C + c;
    Load l;
    l.d = ld(dout + e);
    l.dn = (i + 1) % T ? ld(dout + e + C) : 0.0f;
    l.xx = shift_diff(x, i, c, T, C);
    l.old = acc_dx ? dx[e] : 0.0f;
    return l;
  }
  __device__ void use(int64_t i, int c, const Load& l, float* acc) const {
    const float v = l.d * (1.0f - p) + l.dn * p;
    dx[i * C + c] = acc_dx ? l.old + v : v;
    acc[0] += l.d * l.xx;
  }
};

// Backward of the J mixes, pass 1: dx (all J mixes, own token and next token's xx),
// dm_j = dout_j xx, and the sums of dmaa_j for j < 4 (reduce.cuh's column sums carry four
// outputs; RWKV-6's fifth is MixTailTerm's pass). M: the dtype of m_j; DM: of dm_j (bf16 dm_j
// are overwritten: their accumulate bits are clear); DO: of dout_j: fp32, or bf16 with an
// optional second bf16 part dout2_j (the bf16 dX of a mixed input's two matmul consumers,
// autocast's two bf16 gradients summed in fp32).
template <int J, class DM = float, class DO = float>
struct MixGrads {
  DM* dm[J];
  const DO* dout[J];
  const DO* dout2[J];  // NULL: none (always NULL for fp32 dout)
  __device__ float d(int j, int64_t e) const {
    float v = ld(dout[j] + e);
    if (dout2[j]) v += ld(dout2[j] + e);
    return v;
  }
};
__device__ inline void put_dm(float* p, int64_t e, bool acc, float v) { put_grad(p, e, acc, v); }
__device__ inline void put_dm(bf16* p, int64_t e, bool, float v) { p[e] = mn_f32_to_bf16(v); }
template <int J, class M = float, class DM = float, class DO = float>
struct MixNTerm {
  static constexpr int K = J < mn_reduce::kMaxSums ? J : mn_reduce::kMaxSums;
  float* dx;
  MixGrads<J, DM, DO> g;
  MixArgs<J, M> a;
  const float* x;
  int T, C;
  int acc;  // the accumulate bits: 0 dx, 1..J dm_j
  float p[J];
  struct Load {
    float d[J], m[J], dn[J], mn[J], xx;
  };
  __device__ void begin(int c) {
#pragma unroll
    for (int j = 0; j < J; j++) p[j] = a.maa[j][c];
  }
  __device__ Load load(int64_t i, int c) const {
    const int64_t e = i * C + c;
    const bool next = (i + 1) % T != 0;
    Load l;
#pragma unroll
    for (int j = 0; j < J; j++) {
      l.d[j] = g.d(j, e);
      l.m[j] = ld(a.m[j] + e);
      l.dn[j] = next ? g.d(j, e + C) : 0.0f;
      l.mn[j] = next ? ld(a.m[j] + e + C) : 0.0f;
    }
    l.xx = shift_diff(x, i, c, T, C);
    return l;
  }
  __device__ void use(int64_t i, int c, const Load& l, float* s) const {
    const int64_t e = i * C + c;
    float v = 0.0f;
#pragma unroll
    for (int j = 0; j < J; j++) {
      v += l.d[j] * (1.0f - (l.m[j] + p[j])) + l.dn[j] * (l.mn[j] + p[j]);
      put_dm(g.dm[j], e, (acc >> (1 + j)) & 1, l.d[j] * l.xx);
    }
    put_grad(dx, e, acc & 1, v);
#pragma unroll
    for (int k = 0; k < K; k++) s[k] += l.d[k] * l.xx;
  }
};
// sum_i dout xx: RWKV-6's fifth mix (pass 1 sums the first four)
struct MixTailTerm {
  const float* d;
  const float* x;
  int T, C;
  struct Load {
    float d, xx;
  };
  __device__ void begin(int) {}
  __device__ Load load(int64_t i, int c) const {
    return Load{d[i * C + c], shift_diff(x, i, c, T, C)};
  }
  __device__ void use(int64_t, int, const Load& l, float* s) const { s[0] += l.d * l.xx; }
};

// ---- (b) between the projections and the WKV call ----

constexpr int kWarps = kThreads / 32;

// One warp per (row, head) of D channels (rows = N*H); every lane of a warp takes the same rows,
// so the warp shuffles inside are full.
#define HEAD_ROWS(row, rows)                                                             \
  for (int64_t row = blockIdx.x * (int64_t)kWarps + threadIdx.x / 32; row < (rows); \
       row += (int64_t)gridDim.x * kWarps)

// The six [N, C] inputs (fp32, or bf16: the projections' autocast outputs) and four [C] parameter
// vectors of the chain (rwkv7_math.cuh wkv_inputs_f).
template <class A>
struct WkvIn {
  const A* dec;
  const A* k0;
  const A* kkk;
  const A* aaa;
  const A* mam;
  const A* mkm;
  const float* td;
  const float* ta;
  const float* tma;
  const float* tmk;
};
// Element e (channel c) of the chain, given the head's inverse norm.
template <class A>
__device__ inline WkvInputsFwd wkv_at(const WkvIn<A>& in, int64_t e, int c, float inv) {
  const float k0 = ld(in.k0 + e);
  return wkv_inputs_f(ld(in.dec + e) + in.td[c], k0, k0 + ld(in.kkk + e), inv,
                      ld(in.aaa + e) + in.ta[c], ld(in.mam + e) + in.tma[c],
                      ld(in.mkm + e) + in.tmk[c]);
}
// One warp per (row, head) of D channels: the l2norm of kk is a sum over the head.
// 1 / max(||k + kkk||, eps) over the head at `base` (F.normalize), and ||.|| itself.
template <class A>
__device__ inline float head_norm(const WkvIn<A>& in, int64_t base, int D, int lane) {
  float ss = 0.0f;
  for (int j = lane; j < D; j += 32) {
    const float s = ld(in.k0 + base + j) + ld(in.kkk + base + j);
    ss += s * s;
  }
  return sqrtf(mn_warp_sum(ss));
}

template <class Out, class A>
__global__ void wkv_inputs_forward_kernel(Out* w, float* k, bf16* k_bf16, Out* a, Out* b,
                                          WkvIn<A> in, int64_t rows, int H, int D, float eps) {
  const int lane = threadIdx.x % 32;
  HEAD_ROWS(row, rows) {
    const int64_t base = row * D;
    const int c0 = (int)(row % H) * D;
    const float inv = 1.0f / fmaxf(head_norm(in, base, D, lane), eps);
    for (int j = lane; j < D; j += 32) {
      const int64_t e = base + j;
      const WkvInputsFwd f = wkv_at(in, e, c0 + j, inv);
      store(w + e, f.w);
      k[e] = f.k;
      if (k_bf16) k_bf16[e] = mn_f32_to_bf16(f.k);
      store(a + e, -f.kk);
      store(b + e, f.kk * f.a);
    }
  }
}

// Gradient outputs of the chain: ddec, dk0, dkkk, daaa, dmam, dmkm (bits 0-5; fp32, or bf16 and
// overwritten), the four parameter vectors' (dtd, dta, dtma, dtmk: always added into) and the
// gradients of the chain's outputs: dw, da, db fp32 or bf16 (DW: WKV's bf16 gradients), dk (DK).
template <class G, class DW = float, class DK = float>
struct WkvGrads {
  G* g[6];
  mn_reduce::ColOuts par;  // dtime_decay, dtime_aaaaa, dtime_misc_a, dtime_misc_k
  const DW* dw;
  const DK* dk;
  const DW* da;
  const DW* db;
};

// Block (h, y) of grid (H, tiles) takes head h of the rows of row tile y (mn_reduce::row_tile_plan
// over N with H blocks per tile); warp w of it the rows i0 + w, i0 + w + kWarps, ... in order, one
// (row, head) at a time, as one warp per (row, head) did before: the six elementwise gradients,
// the head's norm and its dot product are the same per-(row, head) math in the same order.
// The four parameter terms (ddec, daaa, dmam, dmkm before any accumulation or bf16 rounding) are
// summed per column in the same pass, instead of being written out and read back: lane l of a
// warp owns the head's columns j = l, l + 32, ... (every row), so its running sums live in the
// warp's own slice of shared memory [kWarps][4][D] (any D, no register array sized by D) and no
// two lanes touch one slot. The block's warps are then added in warp order and the block writes
// the tile's partial, part[(y * 4 + k) * C + c], for col_sums_finish<4> to add in tile order; with
// one tile (part NULL) it adds straight into the four outputs.
// l2norm backward as mn_l2norm_backward: dkk / n - s (s . dkk) / n^3 where n >= eps, else
// dkk / eps.
template <class A, class G, class DW, class DK>
__global__ void __launch_bounds__(kThreads)
    wkv_inputs_backward_kernel(WkvGrads<G, DW, DK> gr, WkvIn<A> in, float* part, int acc, int64_t N,
                               int64_t tile_rows, int H, int D, float eps) {
  MN_DYNAMIC_SHARED(float, sums);  // [kWarps][4][D]
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int h = blockIdx.x, C = H * D, c0 = h * D;
  float* const ws = sums + (int64_t)warp * 4 * D;
  for (int j = lane; j < D; j += 32)
    for (int i = 0; i < 4; i++) ws[i * D + j] = 0.0f;
  const int64_t i0 = (int64_t)blockIdx.y * tile_rows;
  const int64_t i1 = i0 + tile_rows < N ? i0 + tile_rows : N;
  for (int64_t r = i0 + warp; r < i1; r += kWarps) {
    const int64_t base = (r * H + h) * D;
    const float nrm = head_norm(in, base, D, lane);
    const float inv = 1.0f / fmaxf(nrm, eps);
    float dot = 0.0f;
    for (int j = lane; j < D; j += 32) {
      const int64_t e = base + j;
      const float a = sigmoid_f(ld(in.aaa + e) + in.ta[c0 + j]);
      dot += (ld(in.k0 + e) + ld(in.kkk + e)) * (-ld(gr.da + e) + ld(gr.db + e) * a);
    }
    dot = mn_warp_sum(dot);
    const float coef = dot * inv * inv * inv;
    for (int j = lane; j < D; j += 32) {
      const int64_t e = base + j;
      const int c = c0 + j;
      const WkvInputsFwd f = wkv_at(in, e, c, inv);
      const float k0 = ld(in.k0 + e);
      const WkvInputsBwd d = wkv_inputs_df(f, ld(in.dec + e) + in.td[c], k0, ld(gr.dw + e),
                                           ld(gr.dk + e), ld(gr.da + e), ld(gr.db + e));
      const float ds = nrm >= eps ? d.dkk * inv - (k0 + ld(in.kkk + e)) * coef : d.dkk / eps;
      const float v[6] = {d.ddec, d.dk0 + ds, ds, d.daaa, d.dmam, d.dmkm};
#pragma unroll
      for (int i = 0; i < 6; i++) put_dm(gr.g[i], e, (acc >> i) & 1, v[i]);
      const float t[4] = {d.ddec, d.daaa, d.dmam, d.dmkm};
#pragma unroll
      for (int i = 0; i < 4; i++) ws[i * D + j] += t[i];
    }
  }
  __syncthreads();
  // the tile's sums: slot (k, j) added over the warps in order 0 .. kWarps-1 (k unrolled: a
  // runtime index into gr.par.o would put the kernel's argument struct on the stack)
#pragma unroll
  for (int k = 0; k < 4; k++) {
    for (int j = threadIdx.x; j < D; j += kThreads) {
      float v = 0.0f;
      for (int w = 0; w < kWarps; w++) v += sums[(w * 4 + k) * D + j];
      if (part) part[((int64_t)blockIdx.y * 4 + k) * C + c0 + j] = v;
      else MN_GRAD_STORE(gr.par.o[k][c0 + j], v, MN_ACC_BIT(acc, 6 + k));
    }
  }
}

// ---- (c) after the WKV call: GroupNorm + bonus, times the gate ----

// The inputs of the chain after WKV: y (WKV's output), GroupNorm's affine weight/bias [C], the
// bonus's r, k, v [N, C] and u [H, D] (time_faaaa), the gate [N, C] (fp32, or bf16: G, the gate
// LoRA's autocast output).
template <class G = float>
struct GnIn {
  const float* y;
  const float* weight;
  const float* bias;
  const float* r;
  const float* k;
  const float* v;
  const float* u;
  const G* gate;
};
// sum_j r k u over the head at `base` (channels c0 ..): the bonus's per-(row, head) scalar
template <class G>
__device__ inline float bonus_scalar(const GnIn<G>& in, int64_t base, int c0, int D, int lane) {
  float s = 0.0f;
  for (int j = lane; j < D; j += 32) s += in.r[base + j] * in.k[base + j] * in.u[c0 + j];
  return mn_warp_sum(s);
}

// kBonus false: RWKV-6's GroupNorm(y) * gate (r, k, v, u unread)
template <bool kBonus, class Out, class G>
__global__ void gn_bonus_gate_forward_kernel(Out* out, float* mean, float* rstd, GnIn<G> in,
                                             int64_t rows, int H, int D, float eps) {
  const int lane = threadIdx.x % 32;
  HEAD_ROWS(row, rows) {
    const int64_t base = row * D;
    const int c0 = (int)(row % H) * D;
    const float* yr = in.y + base;
    float sum = 0.0f;
    for (int j = lane; j < D; j += 32) sum += yr[j];
    const float m = mn_warp_sum(sum) / D;
    float sq = 0.0f;
    for (int j = lane; j < D; j += 32) sq += (yr[j] - m) * (yr[j] - m);
    const float rs = rsqrtf(mn_warp_sum(sq) / D + eps);  // biased variance, as nn.GroupNorm
    const float s = kBonus ? bonus_scalar(in, base, c0, D, lane) : 0.0f;
    for (int j = lane; j < D; j += 32) {
      const int c = c0 + j;
      const float gn = norm_xhat(yr[j], m, rs) * in.weight[c] + in.bias[c];
      const float z = kBonus ? gn + s * in.v[base + j] : gn;
      store(out + base + j, z * ld(in.gate + base + j));
    }
    if (lane == 0) {
      mean[row] = m;
      rstd[row] = rs;
    }
  }
}

// Per (row, head): dgate = dout * (gn + bonus); with dz = dout * gate the gradient of gn + bonus,
// the bonus's dv, dr, dk (ds = dz . v) and GroupNorm's dx (as groupnorm_backward_dx_kernel). The
// same pass sums the parameter gradients over its rows (reduce.cuh's stage 1, done here so that
// dout, gate, y, r, k are read once): dweight += dz xhat, dbias += dz, du += ds r k (column c of
// each is channel c = h*D + j). kBonus false: RWKV-6's GroupNorm * gate, no bonus (dr, dk, dv
// unused, no du).
//   grid (H * gn_col_groups(D), tiles), kThreads: block (x, y) owns head h = x / groups, the
//   kGnBlockCols columns of that head from jb = (x % groups) * kGnBlockCols, and the rows of row
//   tile y (mn_reduce::row_tile_plan over H * groups blocks per tile). Warp w takes rows w, w + 8,
//   ... of the tile in increasing order, one (row, head) at a time (the head-wide sums read the
//   whole head; the elementwise outputs are written for the block's columns only, so each is
//   written once); lane l owns columns jb + l, jb + l + 32, ... and adds its rows' terms in row
//   order. The warps' sums are then added in warp order through shared memory: the partial of
//   (tile, k, c) goes to part[(y * K + k) * C + c] for mn_reduce::col_sums_finish, or, with one
//   tile (part NULL), into outs.o[k][c] (bit k of pacc set: +=). Fixed tiling and order: the sums
//   are the same bits on every run.
// G: the gate's dtype; DG: dgate's (bf16: overwritten, its accumulate bit clear).
constexpr int kGnColsPerLane = 4;  // a head of up to 128 channels in one block column
constexpr int kGnBlockCols = 32 * kGnColsPerLane;
static_assert(kGnBlockCols <= kThreads, "one thread per column adds the warps' sums");
__host__ __device__ inline int gn_col_groups(int D) {
  return (D + kGnBlockCols - 1) / kGnBlockCols;
}

template <bool kBonus, class G, class DG>
__global__ void __launch_bounds__(kThreads)
    gn_bonus_gate_backward_kernel(float* dy, float* dr, float* dk, float* dv, DG* dgate,
                                  float* part, mn_reduce::ColOuts outs, const float* dout,
                                  const float* mean, const float* rstd, GnIn<G> in, int acc,
                                  int pacc, int64_t N, int H, int D, int64_t tile_rows) {
  constexpr int K = kBonus ? 3 : 2;  // dweight, dbias (, du)
  __shared__ float red[K][kWarps][kGnBlockCols];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int groups = gn_col_groups(D);
  const int h = (int)(blockIdx.x / groups);
  const int jb = (int)(blockIdx.x % groups) * kGnBlockCols;
  const int c0 = h * D;
  const int64_t i0 = (int64_t)blockIdx.y * tile_rows;
  const int64_t i1 = i0 + tile_rows < N ? i0 + tile_rows : N;
  float sum[K][kGnColsPerLane];
#pragma unroll
  for (int k = 0; k < K; k++)
#pragma unroll
    for (int q = 0; q < kGnColsPerLane; q++) sum[k][q] = 0.0f;
  for (int64_t i = i0 + warp; i < i1; i += kWarps) {
    const int64_t row = i * H + h;
    const int64_t base = row * D;
    const float m = mean[row], rs = rstd[row];
    const float s = kBonus ? bonus_scalar(in, base, c0, D, lane) : 0.0f;
    float ds = 0.0f, s1 = 0.0f, s2 = 0.0f;
    for (int j = lane; j < D; j += 32) {
      const int64_t e = base + j;
      const float dz = dout[e] * ld(in.gate + e);
      const float dxh = dz * in.weight[c0 + j];
      if (kBonus) ds += dz * in.v[e];
      s1 += dxh;
      s2 += dxh * norm_xhat(in.y[e], m, rs);
    }
    if (kBonus) ds = mn_warp_sum(ds);
    s1 = mn_warp_sum(s1) / D;
    s2 = mn_warp_sum(s2) / D;
#pragma unroll
    for (int q = 0; q < kGnColsPerLane; q++) {
      const int j = jb + q * 32 + lane;
      if (j >= D) continue;
      const int64_t e = base + j;
      const int c = c0 + j;
      const float xh = norm_xhat(in.y[e], m, rs);
      const float gn = xh * in.weight[c] + in.bias[c];
      const float z = kBonus ? gn + s * in.v[e] : gn;
      const float dz = dout[e] * ld(in.gate + e);
      put_grad(dy, e, acc & 1, rs * (dz * in.weight[c] - s1 - xh * s2));
      if constexpr (kBonus) {
        put_grad(dr, e, (acc >> 1) & 1, ds * in.k[e] * in.u[c]);
        put_grad(dk, e, (acc >> 2) & 1, ds * in.r[e] * in.u[c]);
        put_grad(dv, e, (acc >> 3) & 1, s * dz);
        put_dm(dgate, e, (acc >> 4) & 1, dout[e] * z);
        sum[2][q] += bonus_du_term(ds, in.r[e], in.k[e]);
      } else {
        put_dm(dgate, e, (acc >> 1) & 1, dout[e] * z);
      }
      sum[0][q] += dz * xh;
      sum[1][q] += dz;
    }
  }
#pragma unroll
  for (int k = 0; k < K; k++)
#pragma unroll
    for (int q = 0; q < kGnColsPerLane; q++) red[k][warp][q * 32 + lane] = sum[k][q];
  __syncthreads();
  // thread jj < kGnBlockCols adds column jb + jj of the K sums (k unrolled: outs stays in
  // registers)
  const int jj = threadIdx.x;
  if (jj < kGnBlockCols && jb + jj < D) {
    const int C = H * D, c = c0 + jb + jj;
#pragma unroll
    for (int k = 0; k < K; k++) {
      float s = 0.0f;
#pragma unroll
      for (int w = 0; w < kWarps; w++) s += red[k][w][jj];
      if (part) {
        part[((int64_t)blockIdx.y * K + k) * C + c] = s;
      } else {
        MN_GRAD_STORE(outs.o[k][c], s, MN_ACC_BIT(pacc, k));
      }
    }
  }
}

// ---- (d) the value residual of layers after the first ----

// out = lerp(v, v1, sigmoid(mv + time_misc_v[c])) as fp32 (the bonus reads it) and, when out_bf16
// is non-NULL, also as WKV's bf16 operand; mv fp32 or bf16 (M: the LoRA's autocast output)
template <class M>
__global__ void value_mix_forward_kernel(float* out, bf16* out_bf16, const float* v,
                                         const float* v1, const M* mv, const float* tmv, int C,
                                         int64_t n) {
  GRID_STRIDE(e, n) {
    const float o = lerp_f(v[e], v1[e], sigmoid_f(ld(mv + e) + tmv[e % C]));
    out[e] = o;
    if (out_bf16) out_bf16[e] = mn_f32_to_bf16(o);
  }
}

// Its backward, in the column-sum pass over dout: dv = dout (1 - g), dv1 = dout g,
// dmv = dout (v1 - v) g (1 - g), dtime_misc_v[c] += sum_i dmv, with g recomputed from mv.
// M: mv's dtype; DM: dmv's (bf16: overwritten, its accumulate bit clear, so old[2] is 0).
template <class M, class DM, class DV, class DO>
struct ValueMixTerm {
  DV* dv;  // bf16: overwritten (bit 0 clear), the value projection's backward GEMM operand
  float* dv1;
  DM* dmv;
  const DO* dout;  // bf16: the bonus's and WKV's bf16 gradient of the mixed v
  const float* v;
  const float* v1;
  const M* mv;
  const float* tmv;
  int C;
  int acc;  // bits 0 dv, 1 dv1, 2 dmv
  float bias;
  struct Load {
    float d, v, v1, mv, old[3];
  };
  __device__ void begin(int c) { bias = tmv[c]; }
  __device__ Load load(int64_t i, int c) const {
    const int64_t e = i * C + c;
    Load l{ld(dout + e), v[e], v1[e], ld(mv + e), {0.0f, 0.0f, 0.0f}};
    if (acc & 1) l.old[0] = ld(dv + e);
    if (acc & 2) l.old[1] = dv1[e];
    if (acc & 4) l.old[2] = ld(dmv + e);
    return l;
  }
  __device__ void use(int64_t i, int c, const Load& l, float* sums) const {
    const int64_t e = i * C + c;
    const float g = sigmoid_f(l.mv + bias);
    const float dg = l.d * (l.v1 - l.v) * sigmoid_dy(g);
    store(dv + e, l.old[0] + l.d * (1.0f - g));
    dv1[e] = l.old[1] + l.d * g;
    store(dmv + e, l.old[2] + dg);
    sums[0] += dg;
  }
};

// ---- RWKV-6: the decay and key chain before WKV-6 ----

// w = ww + time_decay[c]; kw = k * exp(min(w, 0)) (the composition's addRow, unary EXP_MIN0, mul)
template <class Out>
__global__ void decay_k_forward_kernel(Out* w, Out* kw, const float* ww, const float* k,
                                       const float* td, int C, int64_t n) {
  GRID_STRIDE(e, n) {
    const float we = ww[e] + td[e % C];
    store(w + e, we);
    store(kw + e, k[e] * exp_min0_f(we));
  }
}

// Backward, in the column-sum pass over dtime_decay: w recomputed, e = exp(min(w, 0));
// dww = dw + (dkw k) exp_min0'(w), dk = dkw e; dtime_decay += sum_i dww.
struct DecayKTerm {
  float* dww;
  float* dk;
  const float* dw;
  const float* dkw;
  const float* ww;
  const float* k;
  const float* td;
  int C;
  int acc;  // bits: 0 dww, 1 dk
  float t;
  struct Load {
    float dw, dkw, ww, k, oww, ok;
  };
  __device__ void begin(int c) { t = td[c]; }
  __device__ Load load(int64_t i, int c) const {
    const int64_t e = i * C + c;
    Load l;
    l.dw = dw[e];
    l.dkw = dkw[e];
    l.ww = ww[e];
    l.k = k[e];
    l.oww = acc & 1 ? dww[e] : 0.0f;
    l.ok = acc & 2 ? dk[e] : 0.0f;
    return l;
  }
  __device__ void use(int64_t i, int c, const Load& l, float* s) const {
    const int64_t e = i * C + c;
    const float we = l.ww + t, ex = exp_min0_f(we);
    const float g = l.dw + l.dkw * l.k * exp_min0_df(we, ex);
    dww[e] = acc & 1 ? l.oww + g : g;
    const float gk = l.dkw * ex;
    dk[e] = acc & 2 ? l.ok + gk : gk;
    s[0] += g;
  }
};

}  // namespace

// ---- entry points ----

MN_API int mn_rwkv7_mix_x_forward(void* out, float* x, float* maa, int out_bf16, int B, int T,
                                  int C, void* stream) {
  if (int rc =
          mn_check_rwkv7_fused("rwkv7_mix_x_forward", B, T, C, C, {out, x, maa}, 0, 0, 0.0f))
    return rc;
  MN_REQUIRE(out != (void*)x, "rwkv7_mix_x_forward: in-place is not supported");
  const int64_t n = (int64_t)B * T * C;
  if (out_bf16)
    return mn_launch("rwkv7_mix_x_forward", mix_x_forward_kernel<bf16>,
                     mn_blocks_for(n, kThreads), kThreads, 0, stream, (bf16*)out,
                     (const float*)x, (const float*)maa, T, C, n);
  return mn_launch("rwkv7_mix_x_forward", mix_x_forward_kernel<float>, mn_blocks_for(n, kThreads),
                   kThreads, 0, stream, (float*)out, (const float*)x, (const float*)maa, T, C, n);
}

MN_API int mn_rwkv7_mix_x_backward(float* dx, float* dmaa, void* dout, float* x, float* maa,
                                   int dout_bf16, int B, int T, int C, int accumulate,
                                   void* stream) {
  if (int rc = mn_check_rwkv7_fused("rwkv7_mix_x_backward", B, T, C, C,
                                     {dx, dmaa, dout, x, maa}, accumulate, 0x2, 0.0f))
    return rc;
  const int64_t N = (int64_t)B * T;
  float* part = nullptr;
  if (int rc = mn_reduce::scratch_floats(&part, mn_reduce::col_scratch_floats(N, C, 1), stream))
    return rc;
  // parameter-vector gradients always add (their accumulate bits are required set): col_sums'
  // own mask is all ones throughout this file
  return mn_with_dtype(dout_bf16, [&](auto dt) {
    using DO = typename decltype(dt)::type;
    return mn_reduce::col_sums<1>(
        "rwkv7_mix_x_backward",
        MixXTerm<DO>{dx, (const DO*)dout, (const float*)x, (const float*)maa, T, C,
                     (accumulate & 1) != 0, 0.0f},
        dmaa, nullptr, N, C, 1, part, stream);
  });
}

namespace {
template <class M>
int mix4_forward(void* out_rg, void* out_wa, void* out_k, void* out_v, const float* x,
                 const MixArgs<4, M>& a, bool out_bf16, int T, int64_t C, int64_t n, void* stream) {
  if (out_bf16)
    return mn_launch("rwkv7_mix4_forward", mixn_forward_kernel<4, bf16, M>,
                     mn_blocks_for(n, kThreads), kThreads, 0, stream,
                     MixOuts<bf16, 4>{{(bf16*)out_rg, (bf16*)out_wa, (bf16*)out_k, (bf16*)out_v}},
                     x, a, T, (int)C, n);
  return mn_launch("rwkv7_mix4_forward", mixn_forward_kernel<4, float, M>,
                   mn_blocks_for(n, kThreads), kThreads, 0, stream,
                   MixOuts<float, 4>{{(float*)out_rg, (float*)out_wa, (float*)out_k, (float*)out_v}},
                   x, a, T, (int)C, n);
}
template <class M, class DM, class DO>
int mix4_backward(float* dx, DM* const dm[4], float* const dmaa[4], const DO* const dout[4],
                  const DO* const dout2[4], const float* x, const MixArgs<4, M>& a, int T, int C,
                  int64_t N, int accumulate, float* part, void* stream) {
  const MixGrads<4, DM, DO> g{{dm[0], dm[1], dm[2], dm[3]},
                              {dout[0], dout[1], dout[2], dout[3]},
                              {dout2[0], dout2[1], dout2[2], dout2[3]}};
  return mn_reduce::col_sums<4>("rwkv7_mix4_backward",
                                MixNTerm<4, M, DM, DO>{dx, g, a, x, T, C, accumulate, {}},
                                mn_reduce::ColOuts{{dmaa[0], dmaa[1], dmaa[2], dmaa[3]}}, N, C,
                                0xf, part, stream);
}
}  // namespace

MN_API int mn_rwkv7_mix4_forward(void* out_rg, void* out_wa, void* out_k, void* out_v, float* x,
                                 void* m_rg, void* m_wa, void* m_k, void* m_v, float* maa_rg,
                                 float* maa_wa, float* maa_k, float* maa_v, int out_bf16,
                                 int m_bf16, int B, int T, int C, void* stream) {
  if (int rc = mn_check_rwkv7_fused("rwkv7_mix4_forward", B, T, C, C,
                                     {out_rg, out_wa, out_k, out_v, x, m_rg, m_wa, m_k, m_v, maa_rg,
                                      maa_wa, maa_k, maa_v},
                                     0, 0, 0.0f))
    return rc;
  const int64_t n = (int64_t)B * T * C;
  const float* maa[4] = {maa_rg, maa_wa, maa_k, maa_v};
  if (m_bf16)
    return mix4_forward(out_rg, out_wa, out_k, out_v, x,
                        MixArgs<4, bf16>{{(const bf16*)m_rg, (const bf16*)m_wa, (const bf16*)m_k,
                                        (const bf16*)m_v},
                                       {maa[0], maa[1], maa[2], maa[3]}},
                        out_bf16, T, C, n, stream);
  return mix4_forward(out_rg, out_wa, out_k, out_v, x,
                      MixArgs<4, float>{{(const float*)m_rg, (const float*)m_wa,
                                       (const float*)m_k, (const float*)m_v},
                                      {maa[0], maa[1], maa[2], maa[3]}},
                      out_bf16, T, C, n, stream);
}

MN_API int mn_rwkv7_mix4_backward(float* dx, void* dm_rg, void* dm_wa, void* dm_k, void* dm_v,
                                  float* dmaa_rg, float* dmaa_wa, float* dmaa_k, float* dmaa_v,
                                  void* dout_rg, void* dout_wa, void* dout_k, void* dout_v,
                                  mn_bf16* dout2_rg, mn_bf16* dout2_wa, mn_bf16* dout2_k,
                                  mn_bf16* dout2_v, float* x, void* m_rg, void* m_wa, void* m_k,
                                  void* m_v, float* maa_rg, float* maa_wa, float* maa_k,
                                  float* maa_v, int m_bf16, int dm_bf16, int dout_bf16, int B,
                                  int T, int C, int accumulate, void* stream) {
  if (int rc = mn_check_rwkv7_mix4_backward(dx, dm_rg, dm_wa, dm_k, dm_v, dmaa_rg, dmaa_wa, dmaa_k,
                                            dmaa_v, dout_rg, dout_wa, dout_k, dout_v, dout2_rg,
                                            dout2_wa, dout2_k, dout2_v, x, m_rg, m_wa, m_k, m_v,
                                            maa_rg, maa_wa, maa_k, maa_v, dm_bf16, dout_bf16, B,
                                            T, C, accumulate))
    return rc;
  const int64_t N = (int64_t)B * T;
  float* part = nullptr;
  if (int rc = mn_reduce::scratch_floats(&part, mn_reduce::col_scratch_floats(N, C, 4), stream))
    return rc;
  float* const dmaa[4] = {dmaa_rg, dmaa_wa, dmaa_k, dmaa_v};
  void* const dout[4] = {dout_rg, dout_wa, dout_k, dout_v};
  mn_bf16* const dout2[4] = {dout2_rg, dout2_wa, dout2_k, dout2_v};
  const float* maa[4] = {maa_rg, maa_wa, maa_k, maa_v};
  void* const dmv[4] = {dm_rg, dm_wa, dm_k, dm_v};
  void* const mv[4] = {m_rg, m_wa, m_k, m_v};
  return mn_with_dtypes(m_bf16, dm_bf16, dout_bf16, [&](auto mt, auto dmt, auto dot) {
    using M = typename decltype(mt)::type;
    using DM = typename decltype(dmt)::type;
    using DO = typename decltype(dot)::type;
    const MixArgs<4, M> a{{(const M*)mv[0], (const M*)mv[1], (const M*)mv[2], (const M*)mv[3]},
                          {maa[0], maa[1], maa[2], maa[3]}};
    DM* const dm[4] = {(DM*)dmv[0], (DM*)dmv[1], (DM*)dmv[2], (DM*)dmv[3]};
    const DO* const d[4] = {(const DO*)dout[0], (const DO*)dout[1], (const DO*)dout[2],
                            (const DO*)dout[3]};
    const DO* const d2[4] = {(const DO*)dout2[0], (const DO*)dout2[1], (const DO*)dout2[2],
                             (const DO*)dout2[3]};
    return mix4_backward(dx, dm, dmaa, d, d2, x, a, T, C, N, accumulate, part, stream);
  });
}

namespace {
template <class A>
int wkv_inputs_forward(void* w, float* k, mn_bf16* k_bf16, void* a, void* b, const WkvIn<A>& in,
                       bool out_bf16, int64_t rows, int H, int D, float eps, void* stream) {
  const unsigned blocks = mn_blocks_for(rows, kWarps);
  if (out_bf16)
    return mn_launch("rwkv7_wkv_inputs_forward", wkv_inputs_forward_kernel<bf16, A>, blocks,
                     kThreads, 0, stream, (bf16*)w, k, (bf16*)k_bf16, (bf16*)a, (bf16*)b, in, rows,
                     H, D, eps);
  return mn_launch("rwkv7_wkv_inputs_forward", wkv_inputs_forward_kernel<float, A>, blocks,
                   kThreads, 0, stream, (float*)w, k, (bf16*)k_bf16, (float*)a, (float*)b, in,
                   rows, H, D, eps);
}
template <class A>
WkvIn<A> wkv_in(void* const act[6], float* const par[4]) {
  return WkvIn<A>{(const A*)act[0], (const A*)act[1], (const A*)act[2], (const A*)act[3],
                  (const A*)act[4], (const A*)act[5], par[0], par[1], par[2], par[3]};
}
// The backward pass over grid (H, tiles), then (several tiles) the tiles' partial parameter sums
// into the four outputs.
template <class A, class G, class DW, class DK>
int wkv_inputs_backward_launch(const WkvGrads<G, DW, DK>& gr, const WkvIn<A>& in, float* part,
                               const mn_reduce::ColPlan& p, int acc, int64_t N, int H, int D,
                               float eps, void* stream) {
  const size_t smem = (size_t)kWarps * 4 * D * sizeof(float);
  if (int rc = mn_launch("rwkv7_wkv_inputs_backward", wkv_inputs_backward_kernel<A, G, DW, DK>,
                         dim3((unsigned)H, (unsigned)p.tiles), kThreads, smem, stream, gr, in,
                         part, acc, N, p.tile_rows, H, D, eps))
    return rc;
  if (p.tiles == 1) return 0;
  return mn_reduce::col_sums_finish<4>(part, p.tiles, gr.par, H * D, acc >> 6, stream);
}
}  // namespace

MN_API int mn_rwkv7_wkv_inputs_forward(void* w, float* k, mn_bf16* k_bf16, void* a, void* b,
                                       void* dec, void* k0, void* kkk, void* aaa, void* mam,
                                       void* mkm, float* time_decay, float* time_aaaaa,
                                       float* time_misc_a, float* time_misc_k, int out_bf16,
                                       int in_bf16, int N, int H, int D, float eps, void* stream) {
  if (int rc = mn_check_rwkv7_fused("rwkv7_wkv_inputs_forward", N, H, D, (int64_t)H * D,
                                     {w, k, a, b, dec, k0, kkk, aaa, mam, mkm, time_decay,
                                      time_aaaaa, time_misc_a, time_misc_k},
                                     0, 0, eps))
    return rc;
  const int64_t rows = (int64_t)N * H;
  void* const act[6] = {dec, k0, kkk, aaa, mam, mkm};
  float* const par[4] = {time_decay, time_aaaaa, time_misc_a, time_misc_k};
  if (in_bf16)
    return wkv_inputs_forward(w, k, k_bf16, a, b, wkv_in<bf16>(act, par), out_bf16, rows, H, D, eps,
                              stream);
  return wkv_inputs_forward(w, k, k_bf16, a, b, wkv_in<float>(act, par), out_bf16, rows, H, D, eps,
                            stream);
}

MN_API int mn_rwkv7_wkv_inputs_backward(void* ddec, void* dk0, void* dkkk, void* daaa,
                                        void* dmam, void* dmkm, float* dtime_decay,
                                        float* dtime_aaaaa, float* dtime_misc_a,
                                        float* dtime_misc_k, void* dw, void* dk, void* da,
                                        void* db, void* dec, void* k0, void* kkk, void* aaa,
                                        void* mam, void* mkm, float* time_decay,
                                        float* time_aaaaa, float* time_misc_a,
                                        float* time_misc_k, int in_bf16, int grad_bf16,
                                        int dwab_bf16, int dk_bf16, int N, int H, int D, float eps,
                                        int accumulate, void* stream) {
  if (int rc = mn_check_rwkv7_fused("rwkv7_wkv_inputs_backward", N, H, D, (int64_t)H * D,
                                     {ddec, dk0, dkkk, daaa, dmam, dmkm, dtime_decay, dtime_aaaaa,
                                      dtime_misc_a, dtime_misc_k, dw, dk, da, db, dec, k0, kkk, aaa,
                                      mam, mkm, time_decay, time_aaaaa, time_misc_a, time_misc_k},
                                     accumulate, 0x3c0, eps))
    return rc;
  MN_REQUIRE(!grad_bf16 || !(accumulate & 0x3f),
             "rwkv7_wkv_inputs_backward: bf16 gradients are overwritten (bits 0-5 must be clear)");
  // The four parameter terms are summed per row tile by the backward kernel itself (fp32, before
  // any accumulation or bf16 rounding of the gradient outputs): scratch holds only the tiles'
  // partials [tiles][4][C].
  const mn_reduce::ColPlan p = mn_reduce::row_tile_plan(N, H);
  float* part = nullptr;
  if (int rc = mn_reduce::scratch_floats(&part, p.tiles > 1 ? (int64_t)p.tiles * 4 * H * D : 0,
                                         stream))
    return rc;
  void* const g6[6] = {ddec, dk0, dkkk, daaa, dmam, dmkm};
  float* const dpar[4] = {dtime_decay, dtime_aaaaa, dtime_misc_a, dtime_misc_k};
  void* const act6[6] = {dec, k0, kkk, aaa, mam, mkm};
  float* const par[4] = {time_decay, time_aaaaa, time_misc_a, time_misc_k};
  return mn_with_dtypes(in_bf16, grad_bf16, dwab_bf16, [&](auto a, auto g, auto w) {
    return mn_with_dtype(dk_bf16, [&](auto k) {
      using A = typename decltype(a)::type;
      using G = typename decltype(g)::type;
      using DW = typename decltype(w)::type;
      using DK = typename decltype(k)::type;
      const WkvGrads<G, DW, DK> gr{
          {(G*)g6[0], (G*)g6[1], (G*)g6[2], (G*)g6[3], (G*)g6[4], (G*)g6[5]},
          {{dpar[0], dpar[1], dpar[2], dpar[3]}},
          (const DW*)dw,
          (const DK*)dk,
          (const DW*)da,
          (const DW*)db};
      return wkv_inputs_backward_launch(gr, wkv_in<A>(act6, par), part, p, accumulate, N, H, D,
                                        eps, stream);
    });
  });
}

namespace {
template <class Out, class G>
int gn_bonus_gate_forward(Out* out, float* mean, float* rstd, const GnIn<G>& in, int64_t rows,
                          int H, int D, float eps, void* stream) {
  return mn_launch("rwkv7_gn_bonus_gate_forward", gn_bonus_gate_forward_kernel<true, Out, G>,
                   mn_blocks_for(rows, kWarps), kThreads, 0, stream, out, mean, rstd, in, rows, H,
                   D, eps);
}
template <class G>
GnIn<G> gn_in(float* y, float* weight, float* bias, float* r, float* k, float* v, float* u,
              void* gate) {
  return GnIn<G>{y, weight, bias, r, k, v, u, (const G*)gate};
}
// The fused backward of GroupNorm (+ bonus) * gate for a gate of dtype G and a dgate of DG: one
// pass (gn_bonus_gate_backward_kernel, which also sums the K parameter gradients per row tile),
// then, with several row tiles, col_sums_finish<K> of its partials into outs (pacc: their bits,
// all set: they add).
template <bool kBonus, class G, class DG>
int gn_backward(const char* name, float* dy, float* dr, float* dk, float* dv, DG* dgate,
                mn_reduce::ColOuts outs, const float* dout, const float* mean, const float* rstd,
                const GnIn<G>& in, int N, int H, int D, int acc, int pacc, void* stream) {
  constexpr int K = kBonus ? 3 : 2;
  const int C = H * D;
  const int groups = gn_col_groups(D);
  const mn_reduce::ColPlan p = mn_reduce::row_tile_plan(N, (int64_t)H * groups);
  float* part = nullptr;
  if (p.tiles > 1)
    if (int rc = mn_reduce::scratch_floats(&part, (int64_t)p.tiles * K * C, stream)) return rc;
  int rc = mn_launch(name, gn_bonus_gate_backward_kernel<kBonus, G, DG>,
                     dim3((unsigned)(H * groups), (unsigned)p.tiles), kThreads, 0, stream, dy, dr,
                     dk, dv, dgate, part, outs, dout, mean, rstd, in, acc, pacc, (int64_t)N, H, D,
                     p.tile_rows);
  if (rc || p.tiles == 1) return rc;
  return mn_reduce::col_sums_finish<K>(part, p.tiles, outs, C, pacc, stream);
}
}  // namespace

MN_API int mn_rwkv7_gn_bonus_gate_forward(void* out, float* mean, float* rstd, float* y,
                                          float* weight, float* bias, float* r, float* k, float* v,
                                          float* u, void* gate, int out_bf16, int gate_bf16, int N,
                                          int H, int D, float eps, void* stream) {
  if (int rc = mn_check_rwkv7_fused("rwkv7_gn_bonus_gate_forward", N, H, D, (int64_t)H * D,
                                     {out, mean, rstd, y, weight, bias, r, k, v, u, gate}, 0, 0,
                                     eps))
    return rc;
  const int64_t rows = (int64_t)N * H;
  if (gate_bf16) {
    const GnIn<bf16> in = gn_in<bf16>(y, weight, bias, r, k, v, u, gate);
    if (out_bf16) return gn_bonus_gate_forward((bf16*)out, mean, rstd, in, rows, H, D, eps, stream);
    return gn_bonus_gate_forward((float*)out, mean, rstd, in, rows, H, D, eps, stream);
  }
  const GnIn<float> in = gn_in<float>(y, weight, bias, r, k, v, u, gate);
  if (out_bf16) return gn_bonus_gate_forward((bf16*)out, mean, rstd, in, rows, H, D, eps, stream);
  return gn_bonus_gate_forward((float*)out, mean, rstd, in, rows, H, D, eps, stream);
}

MN_API int mn_rwkv7_gn_bonus_gate_backward(float* dy, float* dr, float* dk, float* dv,
                                           void* dgate, float* dweight, float* dbias, float* du,
                                           float* dout, float* y, float* weight, float* bias,
                                           float* mean, float* rstd, float* r, float* k, float* v,
                                           float* u, void* gate, int gate_bf16, int dgate_bf16,
                                           int N, int H, int D, int accumulate, void* stream) {
  if (int rc = mn_check_rwkv7_fused("rwkv7_gn_bonus_gate_backward", N, H, D, (int64_t)H * D,
                                     {dy, dr, dk, dv, dgate, dweight, dbias, du, dout, y, weight,
                                      bias, mean, rstd, r, k, v, u, gate},
                                     accumulate, 0xe0, 0.0f))
    return rc;
  if (int rc = mn_check_bf16_grad_overwritten("rwkv7_gn_bonus_gate_backward", "dgate", dgate_bf16,
                                              accumulate, 4))
    return rc;
  // dweight, dbias, du are bits 5-7 of the entry's accumulate, 0-2 of the sums'
  const mn_reduce::ColOuts outs{{dweight, dbias, du, nullptr}};
  const int pacc = (accumulate >> 5) & 7;
  const float *dout_c = dout, *mean_c = mean, *rstd_c = rstd;
  const auto run = [&](auto in) {
    if (dgate_bf16)
      return gn_backward<true>("rwkv7_gn_bonus_gate_backward", dy, dr, dk, dv, (bf16*)dgate, outs,
                               dout_c, mean_c, rstd_c, in, N, H, D, accumulate, pacc, stream);
    return gn_backward<true>("rwkv7_gn_bonus_gate_backward", dy, dr, dk, dv, (float*)dgate, outs,
                             dout_c, mean_c, rstd_c, in, N, H, D, accumulate, pacc, stream);
  };
  if (gate_bf16) return run(gn_in<bf16>(y, weight, bias, r, k, v, u, gate));
  return run(gn_in<float>(y, weight, bias, r, k, v, u, gate));
}

MN_API int mn_rwkv7_value_mix_forward(float* out, mn_bf16* out_bf16, float* v, float* v1,
                                      void* mv, float* time_misc_v, int mv_bf16, int N, int C,
                                      void* stream) {
  if (int rc = mn_check_rwkv7_fused("rwkv7_value_mix_forward", N, C, 1, C,
                                     {out, v, v1, mv, time_misc_v}, 0, 0, 0.0f))
    return rc;
  const int64_t n = (int64_t)N * C;
  if (mv_bf16)
    return mn_launch("rwkv7_value_mix_forward", value_mix_forward_kernel<bf16>,
                     mn_blocks_for(n, kThreads), kThreads, 0, stream, out, (bf16*)out_bf16,
                     (const float*)v, (const float*)v1, (const bf16*)mv,
                     (const float*)time_misc_v, C, n);
  return mn_launch("rwkv7_value_mix_forward", value_mix_forward_kernel<float>,
                   mn_blocks_for(n, kThreads), kThreads, 0, stream, out, (bf16*)out_bf16,
                   (const float*)v, (const float*)v1, (const float*)mv,
                   (const float*)time_misc_v, C, n);
}

namespace {
template <class M, class DM, class DV, class DO>
int value_mix_backward(DV* dv, float* dv1, DM* dmv, float* dtime_misc_v, const DO* dout,
                       const float* v, const float* v1, const M* mv, const float* tmv, int N,
                       int C, int accumulate, float* part, void* stream) {
  return mn_reduce::col_sums<1>(
      "rwkv7_value_mix_backward",
      ValueMixTerm<M, DM, DV, DO>{dv, dv1, dmv, dout, v, v1, mv, tmv, C, accumulate & 7, 0.0f},
      dtime_misc_v, nullptr, N, C, 1, part, stream);
}
}  // namespace

MN_API int mn_rwkv7_value_mix_backward(void* dv, float* dv1, void* dmv, float* dtime_misc_v,
                                       void* dout, float* v, float* v1, void* mv,
                                       float* time_misc_v, int mv_bf16, int dmv_bf16, int dv_bf16,
                                       int dout_bf16, int N, int C, int accumulate, void* stream) {
  if (int rc = mn_check_rwkv7_value_mix_backward(dv, dv1, dmv, dtime_misc_v, dout, v, v1, mv,
                                                 time_misc_v, dmv_bf16, dv_bf16, N, C, accumulate))
    return rc;
  float* part = nullptr;
  if (int rc = mn_reduce::scratch_floats(&part, mn_reduce::col_scratch_floats(N, C, 1), stream))
    return rc;
  return mn_with_dtypes(mv_bf16, dmv_bf16, dv_bf16, [&](auto mt, auto dmt, auto dvt) {
    using M = typename decltype(mt)::type;
    using DM = typename decltype(dmt)::type;
    using DV = typename decltype(dvt)::type;
    return mn_with_dtype(dout_bf16, [&](auto dot) {
      using DO = typename decltype(dot)::type;
      return value_mix_backward((DV*)dv, dv1, (DM*)dmv, dtime_misc_v, (const DO*)dout, v, v1,
                                (const M*)mv, time_misc_v, N, C, accumulate, part, stream);
    });
  });
}

// ---- RWKV-6 ----

MN_API int mn_rwkv6_mix5_forward(void* out_w, void* out_k, void* out_v, void* out_r, void* out_g,
                                 float* x, float* m_w, float* m_k, float* m_v, float* m_r,
                                 float* m_g, float* maa_w, float* maa_k, float* maa_v,
                                 float* maa_r, float* maa_g, int out_bf16, int B, int T, int C,
                                 void* stream) {
  if (int rc = mn_check_rwkv7_fused("rwkv6_mix5_forward", B, T, C, C,
                                     {out_w, out_k, out_v, out_r, out_g, x, m_w, m_k, m_v, m_r, m_g,
                                      maa_w, maa_k, maa_v, maa_r, maa_g},
                                     0, 0, 0.0f))
    return rc;
  const int64_t n = (int64_t)B * T * C;
  const MixArgs<5> a{{m_w, m_k, m_v, m_r, m_g}, {maa_w, maa_k, maa_v, maa_r, maa_g}};
  void* o[5] = {out_w, out_k, out_v, out_r, out_g};
  if (out_bf16)
    return mn_launch("rwkv6_mix5_forward", mixn_forward_kernel<5, bf16>,
                     mn_blocks_for(n, kThreads), kThreads, 0, stream,
                     MixOuts<bf16, 5>{{(bf16*)o[0], (bf16*)o[1], (bf16*)o[2], (bf16*)o[3],
                                       (bf16*)o[4]}},
                     (const float*)x, a, T, C, n);
  return mn_launch("rwkv6_mix5_forward", mixn_forward_kernel<5, float>,
                   mn_blocks_for(n, kThreads), kThreads, 0, stream,
                   MixOuts<float, 5>{{(float*)o[0], (float*)o[1], (float*)o[2], (float*)o[3],
                                      (float*)o[4]}},
                   (const float*)x, a, T, C, n);
}

MN_API int mn_rwkv6_mix5_backward(float* dx, float* dm_w, float* dm_k, float* dm_v, float* dm_r,
                                  float* dm_g, float* dmaa_w, float* dmaa_k, float* dmaa_v,
                                  float* dmaa_r, float* dmaa_g, float* dout_w, float* dout_k,
                                  float* dout_v, float* dout_r, float* dout_g, float* x, float* m_w,
                                  float* m_k, float* m_v, float* m_r, float* m_g, float* maa_w,
                                  float* maa_k, float* maa_v, float* maa_r, float* maa_g, int B,
                                  int T, int C, int accumulate, void* stream) {
  if (int rc = mn_check_rwkv7_fused(
          "rwkv6_mix5_backward", B, T, C, C,
          {dx, dm_w, dm_k, dm_v, dm_r, dm_g, dmaa_w, dmaa_k, dmaa_v, dmaa_r, dmaa_g, dout_w, dout_k,
           dout_v, dout_r, dout_g, x, m_w, m_k, m_v, m_r, m_g, maa_w, maa_k, maa_v, maa_r, maa_g},
          accumulate, 0x7c0, 0.0f))
    return rc;
  const int64_t N = (int64_t)B * T;
  float* part = nullptr;
  if (int rc = mn_reduce::scratch_floats(&part, mn_reduce::col_scratch_floats(N, C, 4), stream))
    return rc;
  const MixArgs<5> a{{m_w, m_k, m_v, m_r, m_g}, {maa_w, maa_k, maa_v, maa_r, maa_g}};
  const MixGrads<5> g{
      {dm_w, dm_k, dm_v, dm_r, dm_g}, {dout_w, dout_k, dout_v, dout_r, dout_g}, {}};
  int rc = mn_reduce::col_sums<4>(
      "rwkv6_mix5_backward", MixNTerm<5>{dx, g, a, (const float*)x, T, C, accumulate, {}},
      mn_reduce::ColOuts{{dmaa_w, dmaa_k, dmaa_v, dmaa_r}}, N, C, 0xf, part, stream);
  if (rc) return rc;
  return mn_reduce::col_sums<1>("rwkv6_mix5_backward_tail",
                                MixTailTerm{dout_g, (const float*)x, T, C}, dmaa_g,
                                nullptr, N, C, 1, part, stream);
}

MN_API int mn_rwkv6_decay_k_forward(void* w, void* kw, float* ww, float* k, float* time_decay,
                                    int out_bf16, int N, int C, void* stream) {
  if (int rc = mn_check_rwkv7_fused("rwkv6_decay_k_forward", N, C, 1, C,
                                     {w, kw, ww, k, time_decay}, 0, 0, 0.0f))
    return rc;
  const int64_t n = (int64_t)N * C;
  if (out_bf16)
    return mn_launch("rwkv6_decay_k_forward", decay_k_forward_kernel<bf16>,
                     mn_blocks_for(n, kThreads), kThreads, 0, stream, (bf16*)w, (bf16*)kw,
                     (const float*)ww, (const float*)k, (const float*)time_decay, C, n);
  return mn_launch("rwkv6_decay_k_forward", decay_k_forward_kernel<float>,
                   mn_blocks_for(n, kThreads), kThreads, 0, stream, (float*)w, (float*)kw,
                   (const float*)ww, (const float*)k, (const float*)time_decay, C, n);
}

MN_API int mn_rwkv6_decay_k_backward(float* dww, float* dk, float* dtime_decay, float* dw,
                                     float* dkw, float* ww, float* k, float* time_decay, int N,
                                     int C, int accumulate, void* stream) {
  if (int rc = mn_check_rwkv7_fused("rwkv6_decay_k_backward", N, C, 1, C,
                                     {dww, dk, dtime_decay, dw, dkw, ww, k, time_decay},
                                     accumulate, 0x4, 0.0f))
    return rc;
  float* part = nullptr;
  if (int rc = mn_reduce::scratch_floats(&part, mn_reduce::col_scratch_floats(N, C, 1), stream))
    return rc;
  return mn_reduce::col_sums<1>(
      "rwkv6_decay_k_backward",
      DecayKTerm{dww, dk, (const float*)dw, (const float*)dkw, (const float*)ww, (const float*)k,
                 (const float*)time_decay, C, accumulate, 0.0f},
      dtime_decay, nullptr, N, C, 1, part, stream);
}

namespace {
template <class Out, class G>
int gn_gate_forward(Out* out, float* mean, float* rstd, const GnIn<G>& in, int64_t rows, int H,
                    int D, float eps, void* stream) {
  return mn_launch("rwkv6_gn_gate_forward", gn_bonus_gate_forward_kernel<false, Out, G>,
                   mn_blocks_for(rows, kWarps), kThreads, 0, stream, out, mean, rstd, in, rows, H,
                   D, eps);
}
}  // namespace

MN_API int mn_rwkv6_gn_gate_forward(void* out, float* mean, float* rstd, float* y, float* weight,
                                    float* bias, void* gate, int out_bf16, int gate_bf16, int N,
                                    int H, int D, float eps, void* stream) {
  if (int rc = mn_check_rwkv7_fused("rwkv6_gn_gate_forward", N, H, D, (int64_t)H * D,
                                     {out, mean, rstd, y, weight, bias, gate}, 0, 0, eps))
    return rc;
  const int64_t rows = (int64_t)N * H;
  const auto run = [&](auto in) {
    if (out_bf16) return gn_gate_forward((bf16*)out, mean, rstd, in, rows, H, D, eps, stream);
    return gn_gate_forward((float*)out, mean, rstd, in, rows, H, D, eps, stream);
  };
  if (gate_bf16) return run(gn_in<bf16>(y, weight, bias, nullptr, nullptr, nullptr, nullptr, gate));
  return run(gn_in<float>(y, weight, bias, nullptr, nullptr, nullptr, nullptr, gate));
}

MN_API int mn_rwkv6_gn_gate_backward(float* dy, void* dgate, float* dweight, float* dbias,
                                     float* dout, float* y, float* weight, float* bias,
                                     float* mean, float* rstd, void* gate, int gate_bf16,
                                     int dgate_bf16, int N, int H, int D, int accumulate,
                                     void* stream) {
  if (int rc = mn_check_rwkv7_fused("rwkv6_gn_gate_backward", N, H, D, (int64_t)H * D,
                                     {dy, dgate, dweight, dbias, dout, y, weight, bias, mean, rstd,
                                      gate},
                                     accumulate, 0xc, 0.0f))
    return rc;
  if (int rc = mn_check_bf16_grad_overwritten("rwkv6_gn_gate_backward", "dgate", dgate_bf16,
                                              accumulate, 1))
    return rc;
  // dweight, dbias are bits 2-3 of the entry's accumulate, 0-1 of the sums'
  const mn_reduce::ColOuts outs{{dweight, dbias, nullptr, nullptr}};
  const int acc = accumulate & 3, pacc = (accumulate >> 2) & 3;
  const float *dout_c = dout, *mean_c = mean, *rstd_c = rstd;
  float* none = nullptr;  // the bonus's dr, dk, dv: not written
  const auto run = [&](auto in) {
    if (dgate_bf16)
      return gn_backward<false>("rwkv6_gn_gate_backward", dy, none, none, none, (bf16*)dgate,
                                outs, dout_c, mean_c, rstd_c, in, N, H, D, acc, pacc, stream);
    return gn_backward<false>("rwkv6_gn_gate_backward", dy, none, none, none, (float*)dgate, outs,
                              dout_c, mean_c, rstd_c, in, N, H, D, acc, pacc, stream);
  };
  if (gate_bf16) return run(gn_in<bf16>(y, weight, bias, nullptr, nullptr, nullptr, nullptr, gate));
  return run(gn_in<float>(y, weight, bias, nullptr, nullptr, nullptr, nullptr, gate));
}
