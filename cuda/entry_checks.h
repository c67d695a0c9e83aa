// Argument checks shared by a kernel family's entry points in every build (cuda/emu in the .cu
// file, the cpu reference in cpu/<family>.cpp): a bad call gets the same one-line message from
// every backend, and the rule lives in one place. Host code only; include after kernels.h.
#pragma once

#include <cstdint>
#include <initializer_list>

#include "kernels.h"
#include "grad_acc.h"
#include "mn_error.h"

inline bool mn_aligned16(const void* p) { return ((uintptr_t)p & 15u) == 0; }

// causal attention (attention.cu, attention_tc.cu): the grid is (query tiles, H, B)
inline int mn_check_attention_shape(const char* fn, int B, int T, int H, int D) {
  MN_REQUIRE(B > 0 && T > 0 && H > 0, "%s: B = %d, T = %d, H = %d must all be > 0", fn, B, T, H);
  MN_REQUIRE(D == 16 || D == 32 || D == 64 || D == 128,
             "%s: head size D = %d is not supported (16, 32, 64 or 128)", fn, D);
  MN_REQUIRE(B <= 65535 && H <= 65535, "%s: B = %d, H = %d exceed the grid limit 65535", fn, B,
             H);
  return 0;
}

// the tensor-core kernels load q, k, v, out and dout with 16-byte vector loads
inline int mn_check_attention_tc_forward(const char* fn, const void* out, float* lse, mn_bf16* q,
                                         mn_bf16* k, mn_bf16* v, int B, int T, int H, int D) {
  if (int rc = mn_check_attention_shape(fn, B, T, H, D)) return rc;
  MN_REQUIRE(out && lse && q && k && v, "%s: NULL tensor argument", fn);
  MN_REQUIRE(mn_aligned16(out) && mn_aligned16(q) && mn_aligned16(k) && mn_aligned16(v),
             "%s: out, q, k, v must be 16-byte aligned", fn);
  return 0;
}
inline int mn_check_attention_tc_backward(const char* fn, const void* dq, const void* dk,
                                          const void* dv, const void* dout, const void* out,
                                          float* lse,
                                          mn_bf16* q, mn_bf16* k, mn_bf16* v, float* ws, int B,
                                          int T, int H, int D) {
  if (int rc = mn_check_attention_shape(fn, B, T, H, D)) return rc;
  MN_REQUIRE(dq && dk && dv && dout && out && lse && q && k && v && ws,
             "%s: NULL tensor argument", fn);
  MN_REQUIRE(mn_aligned16(dq) && mn_aligned16(dk) && mn_aligned16(dv) && mn_aligned16(dout) &&
                 mn_aligned16(q) && mn_aligned16(k) && mn_aligned16(v),
             "%s: dq, dk, dv, dout, q, k, v must be 16-byte aligned", fn);
  return 0;
}

// tensor-core WKV-7 (wkv7_wind.cu): 16-step chunks, grid (H, B)
inline int mn_check_wkv7_wind_shape(const char* fn, int B, int T, int H, int N) {
  MN_REQUIRE(B > 0 && T > 0 && H > 0, "%s: B = %d, T = %d, H = %d must all be > 0", fn, B, T, H);
  MN_REQUIRE(T % 16 == 0, "%s: T = %d is not a multiple of the chunk length 16", fn, T);
  MN_REQUIRE(N == 16 || N == 32 || N == 64 || N == 128,
             "%s: head size N = %d is not supported (16, 32, 64 or 128)", fn, N);
  MN_REQUIRE(B <= 65535, "%s: B = %d exceeds the grid limit 65535", fn, B);
  return 0;
}

// chunked WKV-6 (wkv6_chunked.cu): 16-step chunks, the last one possibly shorter; grid
// (chunks, H, B) for the parallel passes
inline int64_t mn_wkv6_chunked_count(int T) { return (T + 15) / 16; }
inline int mn_check_wkv6_chunked_shape(const char* fn, int B, int T, int H, int N) {
  MN_REQUIRE(B > 0 && T > 0 && H > 0, "%s: B = %d, T = %d, H = %d must all be > 0", fn, B, T, H);
  MN_REQUIRE(N == 16 || N == 32 || N == 64 || N == 128,
             "%s: head size N = %d is not supported (16, 32, 64 or 128)", fn, N);
  MN_REQUIRE(B <= 65535 && H <= 65535, "%s: B = %d, H = %d exceed the grid limit 65535", fn, B,
             H);
  return 0;
}
inline int mn_check_wkv6_chunked_count(const char* fn, int T) {
  MN_REQUIRE(mn_wkv6_chunked_count(T) <= 65535, "%s: T = %d gives more than 65535 chunks", fn, T);
  return 0;
}

// Adam (adam.cu): the hyperparameters of mn_adam_step and mn_adam_multi_step
inline int mn_check_adam(const char* fn, float lr, float beta1, float beta2, float eps,
                         float weight_decay, int step) {
  MN_REQUIRE(step >= 1, "%s: step = %d (steps count from 1)", fn, step);
  MN_REQUIRE(lr >= 0.0f && eps >= 0.0f && weight_decay >= 0.0f,
             "%s: lr=%g eps=%g weight_decay=%g must be >= 0", fn, lr, eps, weight_decay);
  MN_REQUIRE(beta1 >= 0.0f && beta1 < 1.0f && beta2 >= 0.0f && beta2 < 1.0f,
             "%s: betas (%g, %g) must be in [0, 1)", fn, beta1, beta2);
  return 0;
}
inline int mn_check_adam_multi_step(int64_t* list, int count, int64_t total_n) {
  MN_REQUIRE(count >= 0 && total_n >= 0, "adam_multi_step: count = %d, total_n = %lld", count,
             (long long)total_n);
  MN_REQUIRE((count == 0) == (total_n == 0),
             "adam_multi_step: %d tensors cannot hold total_n = %lld elements", count,
             (long long)total_n);
  MN_REQUIRE(count == 0 || list, "adam_multi_step: NULL list");
  return 0;
}

// device-side scalars (scalars.cu)
inline int mn_check_sum_into(float* out, float* x, int64_t n) {
  MN_REQUIRE(out && x, "sum_into: NULL pointer argument");
  MN_REQUIRE(n > 0, "sum_into: n = %lld must be > 0", (long long)n);
  MN_REQUIRE(out < x || out >= x + n, "sum_into: out must not lie inside x");
  return 0;
}
inline int mn_check_scale_by_inv_norm(float* out, float* x, float* sumsq, float eps, int64_t n) {
  MN_REQUIRE(out && x && sumsq, "scale_by_inv_norm: NULL pointer argument");
  MN_REQUIRE(n > 0, "scale_by_inv_norm: n = %lld must be > 0", (long long)n);
  MN_REQUIRE(eps > 0.0f, "scale_by_inv_norm: eps = %g must be > 0", eps);
  MN_REQUIRE(sumsq < x || sumsq >= x + n, "scale_by_inv_norm: sumsq must not lie inside x");
  MN_REQUIRE(sumsq < out || sumsq >= out + n, "scale_by_inv_norm: sumsq must not lie inside out");
  return 0;
}

// The fused RWKV-7 and RWKV-6 time-mixing entry points (rwkv7_fused.cu, cpu/rwkv7_fused.cpp):
// dims a, b, c > 0 ([B, T, C], [N, H, D] or [N, C, 1]); `cols` columns per row fit an int (the
// column sums' index); every tensor pointer given; the parameter-vector gradients, whose column
// sums only add, have their accumulate bits (param_bits; 0 for a forward) set; eps >= 0.
// A bf16 gradient output (a matmul output's gradient with this kernel as its one writer) is only
// overwritten: adding into it would round twice. Shared by the fused RWKV backwards.
// bf16 gradients are written once by their only writer: the bits in `mask` must be clear
inline int mn_check_bf16_grads_overwritten(const char* fn, int bf16, int accumulate, int mask) {
  MN_REQUIRE(!bf16 || !(accumulate & mask),
             "%s: bf16 gradients are overwritten (accumulate bits 0x%x must be clear)", fn, mask);
  return 0;
}
inline int mn_check_bf16_grad_overwritten(const char* fn, const char* grad, int bf16,
                                          int accumulate, int bit) {
  MN_REQUIRE(!bf16 || !(accumulate >> bit & 1),
             "%s: a bf16 %s is overwritten (accumulate bit %d must be clear)", fn, grad, bit);
  return 0;
}
inline int mn_check_rwkv7_fused(const char* fn, int a, int b, int c, int64_t cols,
                                std::initializer_list<const void*> tensors, int accumulate,
                                int param_bits, float eps) {
  MN_REQUIRE(a > 0 && b > 0 && c > 0, "%s: bad shape %d x %d x %d", fn, a, b, c);
  MN_REQUIRE(cols <= 2147483647, "%s: %lld columns is too many", fn, (long long)cols);
  for (const void* t : tensors) MN_REQUIRE(t, "%s: every tensor pointer is required", fn);
  MN_REQUIRE((accumulate & param_bits) == param_bits,
             "%s: the parameter-vector gradients accumulate (bits 0x%x must be set)", fn,
             param_bits);
  MN_REQUIRE(eps >= 0.0f, "%s: eps = %g must be >= 0", fn, (double)eps);
  return 0;
}

// mn_rwkv7_mix4_backward: every tensor but the optional second parts dout2_j (bf16 dout only);
// bf16 dm_j are overwritten
inline int mn_check_rwkv7_mix4_backward(
    float* dx, void* dm_rg, void* dm_wa, void* dm_k, void* dm_v, float* dmaa_rg, float* dmaa_wa,
    float* dmaa_k, float* dmaa_v, void* dout_rg, void* dout_wa, void* dout_k, void* dout_v,
    mn_bf16* dout2_rg, mn_bf16* dout2_wa, mn_bf16* dout2_k, mn_bf16* dout2_v, float* x, void* m_rg,
    void* m_wa, void* m_k, void* m_v, float* maa_rg, float* maa_wa, float* maa_k, float* maa_v,
    int dm_bf16, int dout_bf16, int B, int T, int C, int accumulate) {
  const char* fn = "rwkv7_mix4_backward";
  if (int rc = mn_check_rwkv7_fused(fn, B, T, C, C,
                                     {dx, dm_rg, dm_wa, dm_k, dm_v, dmaa_rg, dmaa_wa, dmaa_k,
                                      dmaa_v, dout_rg, dout_wa, dout_k, dout_v, x, m_rg, m_wa, m_k,
                                      m_v, maa_rg, maa_wa, maa_k, maa_v},
                                     accumulate, 0x1e0, 0.0f))
    return rc;
  MN_REQUIRE(!dm_bf16 || !(accumulate & 0x1e),
             "%s: bf16 dm_j are overwritten (accumulate bits 1-4 must be clear)", fn);
  MN_REQUIRE(dout_bf16 || !(dout2_rg || dout2_wa || dout2_k || dout2_v),
             "%s: second gradient parts dout2_j are bf16: they need dout_bf16 = 1", fn);
  return 0;
}

// mn_rwkv7_value_mix_backward: distinct gradient buffers; bf16 dmv and dv are overwritten
inline int mn_check_rwkv7_value_mix_backward(void* dv, float* dv1, void* dmv, float* dtime_misc_v,
                                             void* dout, float* v, float* v1, void* mv,
                                             float* time_misc_v, int dmv_bf16, int dv_bf16, int N,
                                             int C, int accumulate) {
  const char* fn = "rwkv7_value_mix_backward";
  if (int rc = mn_check_rwkv7_fused(fn, N, C, 1, C,
                                     {dv, dv1, dmv, dtime_misc_v, dout, v, v1, mv, time_misc_v},
                                     accumulate, 0x8, 0.0f))
    return rc;
  MN_REQUIRE(dv != (void*)dv1 && dv != dmv && (void*)dv1 != dmv,
             "%s: dv, dv1 and dmv must be distinct buffers", fn);
  if (int rc = mn_check_bf16_grad_overwritten(fn, "dmv", dmv_bf16, accumulate, 2)) return rc;
  return mn_check_bf16_grad_overwritten(fn, "dv", dv_bf16, accumulate, 0);
}

// LayerNorm's forward (norm.cu), fp32 or bf16 out
inline int mn_check_layernorm_forward(const char* fn, const void* out, float* mean, float* rstd,
                                      float* inp, float* weight, float* bias, int N, int C,
                                      float eps) {
  MN_REQUIRE(out && mean && rstd && inp && weight && bias, "%s: NULL pointer argument", fn);
  MN_REQUIRE(N > 0 && C > 0, "%s: bad shape N = %d, C = %d", fn, N, C);
  MN_REQUIRE(eps >= 0.0f, "%s: eps = %g must be >= 0", fn, (double)eps);
  return 0;
}
inline int mn_check_add_layernorm_forward(const char* fn, float* sum, const void* out, float* mean,
                                          float* rstd, float* inp, const void* branch,
                                          float* weight, float* bias, int N, int C, float eps) {
  MN_REQUIRE(sum && branch, "%s: NULL pointer argument", fn);
  MN_REQUIRE((const void*)sum != (const void*)out && (const void*)sum != branch &&
                 (const void*)inp != (const void*)out,
             "%s: sum must not alias out or branch, nor inp out", fn);
  return mn_check_layernorm_forward(fn, out, mean, rstd, inp, weight, bias, N, C, eps);
}
inline int mn_check_mix_layernorm_forward(const char* fn, float* sum, float* x_out, float* out,
                                          float* mean, float* rstd, float* x, float* branch,
                                          float* x0, float* a, float* b, float* weight,
                                          float* bias, int N, int C, float eps) {
  MN_REQUIRE(x_out && x0 && a && b, "%s: NULL pointer argument", fn);
  MN_REQUIRE(branch || !sum, "%s: sum given without a branch (s is x itself)", fn);
  // every thread reads its own columns before it writes them, but x_out is read back (the
  // statistics) and sum stays what axpby's backward reads: each output its own buffer
  const float* outs[] = {sum, x_out, out};
  const float* ins[] = {x, branch, x0};
  for (int i = 0; i < 3; i++) {
    if (!outs[i]) continue;
    for (int j = i + 1; j < 3; j++)
      MN_REQUIRE(outs[i] != outs[j], "%s: sum, x_out and out must not alias", fn);
    for (const float* in : ins)
      MN_REQUIRE(outs[i] != in, "%s: an output must not alias x, branch or x0", fn);
  }
  return mn_check_layernorm_forward(fn, out, mean, rstd, x, weight, bias, N, C, eps);
}
// RWKV-7's mix + ln1 backward: one warp per row holding its columns in registers (C <= 1024).
// ds may be g_in (every element's g_in is read before its ds is written, by the same thread) or
// dx0 (x is x0: the two stores run in order in one thread, so dx0 adds to ds: its bit must be
// set); da may be db likewise (bit 6 set). No other output aliases another or an input.
constexpr int kMixLayernormMaxC = 1024;
inline int mn_check_mix_layernorm_backward(const char* fn, float* ds, mn_bf16* ds_bf16,
                                           float* dx0, float* dweight, float* dbias, float* da,
                                           float* db, float* dout, float* g_in, float* x_out,
                                           float* x, float* branch, float* x0, float* a,
                                           float* b, float* weight, float* mean, float* rstd,
                                           int N, int C, int accumulate) {
  MN_REQUIRE(dweight && dbias && da && db && x_out && x && x0 && a && b && weight && mean && rstd,
             "%s: NULL pointer argument", fn);
  MN_REQUIRE(N > 0 && C > 0 && C <= kMixLayernormMaxC,
             "%s: bad shape N = %d, C = %d (C must be in [1, %d])", fn, N, C, kMixLayernormMaxC);
  if (int rc = mn_check_bf16_grad_overwritten(fn, "ds_bf16", ds_bf16 != nullptr, accumulate, 1))
    return rc;
  MN_REQUIRE(!ds || ds != dx0 || MN_ACC_BIT(accumulate, 2),
             "%s: ds == dx0 (x is x0) adds dx0's term to ds: accumulate bit 2 must be set", fn);
  MN_REQUIRE(da != db || MN_ACC_BIT(accumulate, 6),
             "%s: da == db adds db's sum to da: accumulate bit 6 must be set", fn);
  MN_REQUIRE(dweight != dbias, "%s: dweight and dbias must not alias", fn);
  const float* ins[] = {dout, x_out, x, branch, x0, weight, mean, rstd};
  const float* outs[] = {ds, dx0, dweight, dbias, da, db};
  for (const float* o : outs) {
    for (const float* in : ins)
      MN_REQUIRE(!o || o != in, "%s: a gradient output aliases an input other than g_in", fn);
  }
  MN_REQUIRE(!dx0 || dx0 != g_in, "%s: dx0 must not alias g_in (ds may)", fn);
  const void* bf = ds_bf16;
  for (const float* p : {ds, dx0, dout, g_in, x_out, x, branch, x0})
    MN_REQUIRE(!bf || bf != (const void*)p, "%s: ds_bf16 aliases another tensor", fn);
  return 0;
}
// GPT-2 fused chains (gpt2_fused.cu): rows of C channels; QK heads of D (even: rotary pairs)
inline int mn_check_rows(const char* fn, int N, int C) {
  MN_REQUIRE(N > 0 && C > 0, "%s: bad shape N = %d, C = %d", fn, N, C);
  return 0;
}
// Mix + RMSNorm: r (the folded residual addend) distinct from x and y; x may be y only when both
// are fp32 (one tensor). A bf16 gradient has one writer: overwritten, never added into.
inline int mn_check_mix_rmsnorm_forward(const char* fn, float* x_out, float* out_f32,
                                        mn_bf16* out_bf16, float* rstd, float* x, void* r, void* y,
                                        float* ab, int N, int C, float eps) {
  MN_REQUIRE(x_out && rstd && x && y && ab, "%s: NULL pointer argument", fn);
  MN_REQUIRE(out_f32 || out_bf16, "%s: out_f32 and out_bf16 both NULL", fn);
  MN_REQUIRE(!r || (r != (void*)x && r != y), "%s: r must be distinct from x and y", fn);
  if (int rc = mn_check_rows(fn, N, C)) return rc;
  MN_REQUIRE(eps >= 0.0f, "%s: eps = %g must be >= 0", fn, (double)eps);
  return 0;
}
inline int mn_check_mix_rmsnorm_backward(const char* fn, float* dx, void* dr, void* dy,
                                         float* dab, void* dnorm, float* x_out, float* rstd,
                                         float* x, void* r, void* y, float* ab, int y_bf16,
                                         int dr_bf16, int dy_bf16, int N, int C, int accumulate) {
  MN_REQUIRE(dnorm && x_out && rstd && ab, "%s: NULL pointer argument", fn);
  MN_REQUIRE(!dab || (x && y), "%s: dab given but x or y is NULL", fn);
  MN_REQUIRE(!dr || r, "%s: dr given but r is NULL", fn);
  MN_REQUIRE(!dr || (dr != (void*)dx && dr != dy), "%s: dr must be distinct from dx and dy", fn);
  MN_REQUIRE(!dy || dy != (void*)dx || (!y_bf16 && !dy_bf16),
             "%s: dx == dy (x is y) must be fp32", fn);
  if (int rc = mn_check_bf16_grad_overwritten(fn, "dr", dr && dr_bf16, accumulate, 1)) return rc;
  if (int rc = mn_check_bf16_grad_overwritten(fn, "dy", dy && dy_bf16, accumulate, 2)) return rc;
  return mn_check_rows(fn, N, C);
}
inline int mn_check_qk_heads(const char* fn, int B, int T, int H, int D) {
  MN_REQUIRE(B > 0 && T > 0 && H > 0 && D > 0, "%s: B=%d T=%d H=%d D=%d must be positive", fn, B,
             T, H, D);
  MN_REQUIRE(D % 2 == 0 && D <= 1024, "%s: head dim D=%d must be even and <= 1024", fn, D);
  return 0;
}
// a row stride (elements between rows) of at least the row's width
inline int mn_check_row_stride(const char* fn, const char* name, int64_t ld, int64_t width) {
  MN_REQUIRE(ld >= width, "%s: %s = %lld is less than the row width %lld", fn, name, (long long)ld,
             (long long)width);
  return 0;
}
// the value mix's n elements as [n / C, C] rows; v, v1 rows ld_v apart, dv rows ld_dv apart
inline int mn_check_value_mix_rows(const char* fn, int64_t n, int C, int ld_v, int ld_dv) {
  MN_REQUIRE(n > 0, "%s: n = %lld must be > 0", fn, (long long)n);
  MN_REQUIRE(C > 0 && n % C == 0, "%s: n = %lld is not a whole number of rows of C = %d", fn,
             (long long)n, C);
  if (int rc = mn_check_row_stride(fn, "ld_v", ld_v, C)) return rc;
  if (int rc = mn_check_row_stride(fn, "ld_dv", ld_dv, C)) return rc;
  MN_REQUIRE((ld_v == C && ld_dv == C) || n <= 0xffffffffLL,
             "%s: n = %lld is too many elements for strided rows (at most 2^32 - 1)", fn, (long long)n);
  return 0;
}
// one pass over n elements (the bf16 relu^2 kernels of the MLP, gpt2_fused.cu); ptrs_ok: every
// pointer argument is non-NULL
inline int mn_check_elementwise(const char* fn, bool ptrs_ok, int64_t n) {
  MN_REQUIRE(ptrs_ok, "%s: NULL pointer argument", fn);
  MN_REQUIRE(n > 0, "%s: n = %lld must be > 0", fn, (long long)n);
  return 0;
}
// a bf16 gradient is only ever overwritten (no bf16 sum to add to)
inline int mn_check_relu2_backward_bf16io(mn_bf16* dinp, mn_bf16* dout, mn_bf16* inp, int64_t n,
                                          int accumulate) {
  const char* fn = "relu2_backward_bf16io";
  if (int rc = mn_check_elementwise(fn, dinp && dout && inp, n)) return rc;
  MN_REQUIRE(accumulate == 0, "%s: accumulate = %d; a bf16 dinp is only overwritten (0)", fn,
             accumulate);
  return 0;
}
// softcapped cross-entropy on bf16 logits (crossentropy.cu)
inline int mn_check_softcap_crossentropy_bf16(float* losses, mn_bf16* logits, int32_t* targets,
                                               int N, int V, float softcap, float dloss) {
  const char* fn = "softcap_crossentropy_bf16";
  MN_REQUIRE(N > 0 && V > 0, "%s: bad shape N=%d V=%d", fn, N, V);
  MN_REQUIRE(losses && logits && targets, "%s: NULL losses, logits or targets", fn);
  MN_REQUIRE(softcap == softcap && dloss == dloss, "%s: NaN softcap or dloss", fn);
  return 0;
}

// mn_copy_columns (cast.cu): a rows x cols block between matrices with row strides
inline int mn_check_copy_columns(void* dst, int ld_dst, int dst_bf16, void* src, int ld_src,
                                 int src_bf16, int rows, int cols, int accumulate) {
  MN_REQUIRE(rows >= 0 && cols >= 0, "copy_columns: bad block [%d, %d]", rows, cols);
  MN_REQUIRE(ld_dst >= cols && ld_src >= cols,
             "copy_columns: row strides ld_dst = %d, ld_src = %d below cols = %d", ld_dst, ld_src,
             cols);
  MN_REQUIRE((dst_bf16 == 0 || dst_bf16 == 1) && (src_bf16 == 0 || src_bf16 == 1),
             "copy_columns: dst_bf16 = %d, src_bf16 = %d must be 0 or 1", dst_bf16, src_bf16);
  MN_REQUIRE(!(MN_ACC_BIT(accumulate, 0) && dst_bf16),
             "copy_columns: accumulating into a bf16 dst would round twice");
  MN_REQUIRE((rows == 0 || cols == 0) || (dst && src), "copy_columns: NULL tensor argument");
  MN_REQUIRE(dst != src || rows == 0 || cols == 0, "copy_columns: dst and src are the same");
  return 0;
}
