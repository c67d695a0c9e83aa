/* The kernel ABI: every entry point of libmn_{cuda,emu,cpu}.so, in plain C.
 *
 * This header is the ONE table of entry points. cuda/abi.ts parses it at load time to build the
 * Deno.dlopen symbol table, so a declaration here is all the TypeScript side needs to call a
 * function. Keep one declaration per line group, ending in ");", with only these types:
 *   int, int64_t, float, double, and pointers (any `T*`). Return type is always int.
 *
 * Conventions:
 * - Every function returns 0 on success, else an error code; mn_last_error() then has a message.
 * - Pointers are device pointers (host memory on the cpu/emu backends) unless named host_*.
 * - `stream` is an opaque cudaStream_t (NULL = default stream); cpu/emu run synchronously.
 * - Tensors are dense row-major. Shapes in comments: [N, C] means N rows of C elements.
 * - mn_bf16 is the bit pattern of a bfloat16 (same as __nv_bfloat16 / torch.bfloat16).
 * - Element counts are int64_t `n`; byte counts are int64_t `bytes`. Never mix them.
 * - BACKWARD `accumulate`: every backward entry point takes `int accumulate` just before `stream`,
 *   a bitmask over its gradient outputs (the `d...` pointers, parameter gradients included) in
 *   signature order: bit i set = the i-th is added into (`+=`, the old behaviour: a tensor used
 *   twice, parameter gradients over micro-steps); bit clear = it is overwritten WITHOUT being read
 *   (its old contents may be garbage or NaN; kernels store `acc ? old + v : v`, never `old*0 + v`).
 *   -1 accumulates everything. An overwritten output gets every element written, including the
 *   ones whose gradient is 0 (time_shift's last step; embedding_backward zero-fills dwte first).
 *   Bits of NULL outputs are ignored. Two outputs that alias (e.g. axpby's dx == dy): the first's
 *   bit decides, the later one's must be set (its contribution is added to the first's).
 *   The autograd tape (cuda/autograd.ts) overwrites an activation gradient on its first write, so
 *   no gradient buffer is zero-filled before backward.
 * - Reductions are deterministic (no float atomics): same inputs, same bits, every run. Sums over
 *   rows or elements (the parameter gradients dv/dweight/dbias/du, axpby's da/db, sum_squares) run
 *   over a full grid in two stages (cuda/reduce.cuh): blocks over row tiles (or element chunks)
 *   write partials, a second pass adds them in a fixed order. The tiling depends on the shape only.
 * - Scratch: those two-stage reductions (and embedding_backward's sort) keep their partials in
 *   library-internal scratch, not in a caller's buffer (cuda/scratch.h): on cuda one buffer per
 *   (device, stream), allocated with cudaMalloc on first use and grown (never shrunk) in 1 MiB steps;
 *   on emu a malloc per host thread; cpu needs none. It is NOT one of the caller's mn_malloc
 *   allocations (the trainers' allocator counts and Backend.bytesInUse do not see it; cudaMemGetInfo
 *   does). Size: the largest need of any call so far: at most 0.5 MiB for the column sums at any
 *   shape (row tiles x 2 x C floats, tiles <= ceil(1024 / ceil(C / 32)); 1024 x 2 floats); the
 *   fused row passes' partials: layernorm_backward's 1.5 MiB (up to 256 row tiles x 2 x C floats,
 *   C <= 768), mix_layernorm_backward's 256 x 2 x (C + 1) floats (1.6 MB at C = 768), the fused
 *   GroupNorm backwards' tiles x 3 x C floats (tiles <= ceil(1024 / (H ceil(D / 128))): at most
 *   ~1.5 MiB plus 12 C bytes); plus N*H floats for rwkv7_bonus_backward (3 MiB at N = 65,536,
 *   H = 12) and ~5 N ints for embedding_backward (1.3 MiB at N = 65,536). Growing it waits for the
 *   stream, so the first call of a bigger shape synchronizes once. Under CUDA graph capture a call
 *   that would grow it fails the
 *   capture (a sync is illegal there); --cuda_graph's warm-up steps grow it to the step's needs
 *   first, so the captured calls find it large enough and only reuse it.
 */
#ifndef MN_KERNELS_H
#define MN_KERNELS_H
#include <stdint.h>

#ifdef __cplusplus
#define MN_API extern "C" __attribute__((visibility("default")))
#else
#define MN_API __attribute__((visibility("default")))
#endif

typedef uint16_t mn_bf16;

/* ---- runtime: backend identity, errors, memory, streams (runtime_cuda.cu / runtime_host.cpp) */
MN_API int mn_backend_name(char* host_buf, int len); /* "cuda", "emu" or "cpu" */
MN_API int mn_last_error(char* host_buf, int len);   /* message of the last failure, this thread */
MN_API int mn_device_count(int* host_count);         /* GPUs visible; cpu/emu report 1 */
MN_API int mn_device_name(int device, char* host_buf, int len);
MN_API int mn_set_device(int device);
MN_API int mn_malloc(void** host_out, int64_t bytes);
MN_API int mn_free(void* p);
MN_API int mn_memcpy_h2d(void* dst, void* host_src, int64_t bytes, void* stream);
MN_API int mn_memcpy_d2h(void* host_dst, void* src, int64_t bytes, void* stream);
MN_API int mn_memcpy_d2d(void* dst, void* src, int64_t bytes, void* stream);
MN_API int mn_memset(void* p, int byte_value, int64_t bytes, void* stream);
MN_API int mn_stream_create(void** host_out);
MN_API int mn_stream_destroy(void* stream);
MN_API int mn_synchronize(void* stream); /* waits for the stream, or the whole device if NULL */
MN_API int mn_mem_get_info(int64_t* host_free, int64_t* host_total);
/* Pinned (page-locked) host memory: cudaMallocHost on cuda, so that mn_memcpy_h2d from it is a true
 * asynchronous copy (from pageable memory the runtime stages it and the host waits); plain malloc on
 * emu/cpu. The host must not write a pinned buffer while a copy from it may still be queued. */
MN_API int mn_host_alloc(void** host_out, int64_t bytes);
MN_API int mn_host_free(void* pinned);
/* Events: order one stream after a point of another (mn_stream_wait_event, no host wait), or let
 * the host wait for that point alone (mn_event_synchronize). cpu/emu: no-ops (every call already
 * ran when it returned). Timing is disabled (cudaEventDisableTiming: the cheapest kind). */
MN_API int mn_event_create(void** host_out);
MN_API int mn_event_destroy(void* event);
MN_API int mn_event_record(void* event, void* stream);
MN_API int mn_event_synchronize(void* event);
MN_API int mn_stream_wait_event(void* stream, void* event);
/* CUDA graphs (cuda only; emu/cpu fail with a message, a caller runs eagerly there): begin
 * capturing `stream` (thread-local mode), end the capture and instantiate it (host_exec_out: a
 * cudaGraphExec_t), replay it on a stream, destroy it. A failed capture is ended and discarded
 * before the error is returned, so the stream is usable again. */
MN_API int mn_graph_begin_capture(void* stream);
MN_API int mn_graph_end_capture(void* stream, void** host_exec_out);
MN_API int mn_graph_launch(void* exec, void* stream);
MN_API int mn_graph_destroy(void* exec);

/* ---- matmul (gemm.cu: cuBLAS on cuda, our tiled kernel on emu; cpu: OpenBLAS) ----------------
 * For each batch item i: C_i[M,N] = alpha * op(A_i)[M,K] @ op(B_i)[K,N] + beta * C_i
 * op(X) = X, or X^T when trans_x != 0 (A stored [K,M] then). lda/ldb/ldc are row strides in
 * elements; stride_a/b/c step between batch items. A and B are bf16; C is fp32 when c_bf16 == 0,
 * else bf16. Accumulation is fp32. cublas_path: absolute path of libcublas.so (NULL = search by
 * soname); without cuBLAS the cuda build falls back to the tiled kernel (slow; it says so once). */
MN_API int mn_gemm_init(const char* host_cublas_path, const char* host_cublaslt_path);
MN_API int mn_gemm_provider(char* host_buf, int len); /* "cublas", "tiled-kernel" or "openblas" */
MN_API int mn_gemm_bf16(int trans_a, int trans_b, int M, int N, int K, float alpha, mn_bf16* A,
                        int lda, int64_t stride_a, mn_bf16* B, int ldb, int64_t stride_b, float beta,
                        void* C, int ldc, int64_t stride_c, int c_bf16, int batch, void* stream);
/* Same semantics as mn_gemm_bf16 with fp32 A and B and an fp32 C (for exact-precision tests and
 * fp32 matmuls): fp32 arithmetic throughout (cuBLAS CUBLAS_COMPUTE_32F_PEDANTIC, no TF32). */
MN_API int mn_gemm_f32(int trans_a, int trans_b, int M, int N, int K, float alpha, float* A,
                       int lda, int64_t stride_a, float* B, int ldb, int64_t stride_b, float beta,
                       float* C, int ldc, int64_t stride_c, int batch, void* stream);

/* ---- cast (cast.cu) ------------------------------------------------------------------------ */
MN_API int mn_cast_f32_to_bf16(mn_bf16* out, float* inp, int64_t n, void* stream); /* RNE */
MN_API int mn_cast_bf16_to_f32(float* out, mn_bf16* inp, int64_t n, void* stream);
/* A block of columns between two row-major matrices: dst[r, c] (+)= src[r, c] for r < rows,
 * c < cols, dst's rows ld_dst elements apart and src's ld_src (>= cols; pass the pointers at the
 * block's first element). Graph.matmulShared's concatenated weight operand, its output split into
 * one matrix per weight, its gathered output gradients and its parameter gradients' blocks.
 * dst_bf16 / src_bf16: 1 = bf16, 0 = fp32; a bf16 dst is rounded once (RNE), so bf16 -> bf16 and
 * fp32 -> fp32 are exact copies. accumulate bit 0 set: added into dst (fp32 dst only; one fp32
 * add per element), clear: dst overwritten without being read. dst and src must not overlap. */
MN_API int mn_copy_columns(void* dst, int ld_dst, int dst_bf16, void* src, int ld_src,
                           int src_bf16, int rows, int cols, int accumulate, void* stream);

/* ---- layout (transpose.cu) ----------------------------------------------------------------- */
/* out[C, R] = x[R, C]^T, fp32 (Muon works on the wide orientation of tall matrices) */
MN_API int mn_transpose(float* out, float* x, int R, int C, void* stream);

/* ---- embedding (embedding.cu) -------------------------------------------------------------- */
/* out[i, :] = wte[idx[i], :];  idx [N] int32 in [0, V), wte [V, C], out [N, C] */
MN_API int mn_embedding_forward(float* out, int32_t* idx, float* wte, int N, int C, int V,
                                void* stream);
/* dwte[idx[i], :] += dout[i, :], deterministic: every element is the fp32 running sum over i in
 * increasing order, bit for bit on every backend. Bit 0 of accumulate clear: dwte is zeroed first
 * (rows no id selects get no term). cuda/emu: a stable radix sort of the ids, then
 * one warp per (id, 32 columns) (library scratch: 5 N + 16 ceil(N / 1024) + 2 ints). */
MN_API int mn_embedding_backward(float* dwte, int32_t* idx, float* dout, int N, int C, int V,
                                 int accumulate, void* stream);

/* ---- norms (norm.cu): rows of C elements, fp32 statistics ---------------------------------- */
/* LayerNorm with weight and bias [C]; mean, rstd [N] saved for backward */
MN_API int mn_layernorm_forward(float* out, float* mean, float* rstd, float* inp, float* weight,
                                float* bias, int N, int C, float eps, void* stream);
/* The same with out written in bf16 only (the next matmul's operand: mn_layernorm_forward then the
 * cast, in one pass); mn_layernorm_backward reads inp, mean and rstd, not out. */
MN_API int mn_layernorm_forward_bf16(mn_bf16* out, float* mean, float* rstd, float* inp,
                                     float* weight, float* bias, int N, int C, float eps,
                                     void* stream);
/* The residual add and the LayerNorm after it, in one pass: sum = inp + branch [N, C] fp32 (branch
 * fp32, or bf16 with branch_bf16: an output projection autocast wrote in bf16), out = LayerNorm(sum)
 * in bf16 as mn_layernorm_forward_bf16 writes it (mn_add then that, bit for bit); the backward is
 * mn_layernorm_backward on sum. sum must not alias out or branch. */
MN_API int mn_add_layernorm_forward(float* sum, mn_bf16* out, float* mean, float* rstd, float* inp,
                                    void* branch, int branch_bf16, float* weight, float* bias,
                                    int N, int C, float eps, void* stream);
/* RWKV-7's residual mix and ln1 in one pass: s = x + branch (branch: the previous block's MLP
 * output, fp32; NULL: s = x, the first block, where x may be x0), x_out = a[0] * s + b[0] * x0,
 * out = LayerNorm(x_out) in fp32, mean and rstd [N] as mn_layernorm_forward saves them: mn_add,
 * mn_axpby_forward then mn_layernorm_forward, bit for bit. sum [N, C] receives s when given
 * (the generic backward's axpby scalar gradient reads it; NULL under the fused one, which
 * recomputes s); it must be NULL when branch is. The backward is mn_mix_layernorm_backward, or
 * mn_layernorm_backward on x_out, then mn_axpby_backward (x = s, y = x0). The outputs (sum, x_out,
 * out) must not alias each other nor x, branch, x0. */
MN_API int mn_mix_layernorm_forward(float* sum, float* x_out, float* out, float* mean, float* rstd,
                                    float* x, float* branch, float* x0, float* a, float* b,
                                    float* weight, float* bias, int N, int C, float eps,
                                    void* stream);
/* Its backward in one row pass (the bf16 path's; mn_layernorm_backward on x_out, then
 * mn_axpby_backward with x = s, y = x0, up to the order of the sums): per row,
 *   g = g_in + rstd * (gw - mean_c(gw) - xhat * mean_c(gw * xhat)),  gw = dout * weight,
 *   xhat = (x_out - mean) * rstd  (LayerNorm's input gradient plus x_out's gradient from its other
 *   consumers, g_in; NULL counts as 0, as does a NULL dout),
 * then ds = a[0] * g (s's gradient, shared by x and branch), dx0 += b[0] * g, and the sums
 * dweight[c] = sum_i dout * xhat, dbias[c] = sum_i dout, da = sum g * s, db = sum g * x0, where
 * s = x + branch is recomputed as the forward rounded it (branch NULL: s = x), so the forward
 * needs no saved sum. All fp32; ds_bf16 (NULL = none) receives bf16(a[0] * g), the branch's
 * gradient as its backward GEMMs' operand, rounded once from this call's term whatever bit 0 says.
 * accumulate bits: ds 0, ds_bf16 1 (must be clear: only overwritten), dx0 2, dweight 3, dbias 4,
 * da 5, db 6. ds, ds_bf16 and dx0 may be NULL; dweight, dbias, da, db are required. Aliasing: ds
 * may be g_in (in place: each element is read before it is written); ds may be dx0 (x is x0: the
 * terms are stored in order, bit 2 must be set) and da may be db (bit 6 set); nothing else.
 * Deterministic: one block per row tile (reduce.cuh row_tile_plan(N, 1)), one warp per row,
 * warp and tile sums in a fixed order, partials in library scratch (tiles x 2 x (C + 1) floats:
 * 1.6 MB at N = 32768, C = 768), summed in tile order by reduce.cuh's col_sums_finish. C <= 1024. */
MN_API int mn_mix_layernorm_backward(float* ds, mn_bf16* ds_bf16, float* dx0, float* dweight,
                                     float* dbias, float* da, float* db, float* dout, float* g_in,
                                     float* x_out, float* x, float* branch, float* x0, float* a,
                                     float* b, float* weight, float* mean, float* rstd, int N,
                                     int C, int accumulate, void* stream);
/* dinp, dweight, dbias (accumulate bits 0, 1, 2) from dout and the forward's inp, mean, rstd. C <=
 * 768: one pass over the rows writes dinp and sums dout * xhat and dout per row tile into scratch
 * partials (a warp per row; dinp the same bits as the block-per-row kernel wider rows use), a small
 * second pass adds the tiles in order to dweight, dbias; C > 768: dinp by a block per row, then
 * dweight, dbias by the two-stage column sums (dout and inp read again). */
MN_API int mn_layernorm_backward(float* dinp, float* dweight, float* dbias, float* dout, float* inp,
                                 float* weight, float* mean, float* rstd, int N, int C,
                                 int accumulate, void* stream);
/* The same with a bf16 dout (the gradient of a bf16 LayerNorm output that the next matmul's
 * backward GEMM wrote in bf16, as autocast's), read as its values: mn_layernorm_backward on the
 * widened dout, bit for bit. */
MN_API int mn_layernorm_backward_bf16(float* dinp, float* dweight, float* dbias, mn_bf16* dout,
                                      float* inp, float* weight, float* mean, float* rstd, int N,
                                      int C, int accumulate, void* stream);
/* RMSNorm without weight, as F.rms_norm(x, (C,), eps): out = x * rsqrt(mean(x^2) + eps) */
MN_API int mn_rmsnorm_forward(float* out, float* rstd, float* inp, int N, int C, float eps,
                              void* stream);
MN_API int mn_rmsnorm_backward(float* dinp, float* dout, float* inp, float* rstd, int N, int C,
                               int accumulate, void* stream);

/* ---- elementwise (elementwise.cu) ---------------------------------------------------------- */
MN_API int mn_relu2_forward(float* out, float* inp, int64_t n, void* stream); /* relu(x)^2 */
MN_API int mn_relu2_backward(float* dinp, float* dout, float* inp, int64_t n, int accumulate,
                             void* stream);
/* out = a[0]*x + b[0]*y with a, b scalars in device memory (the blocks' learned lambdas) */
MN_API int mn_axpby_forward(float* out, float* x, float* y, float* a, float* b, int64_t n,
                            void* stream);
/* dx += a*dout; dy += b*dout; da += sum(dout*x); db += sum(dout*y). dx/dy/da/db may be NULL;
 * dx may be dy and da may be db (x, y one tensor; a, b one scalar): both contributions added. */
MN_API int mn_axpby_backward(float* dx, float* dy, float* da, float* db, float* dout, float* x,
                             float* y, float* a, float* b, int64_t n, int accumulate, void* stream);
MN_API int mn_add(float* out, float* x, float* y, int64_t n, void* stream);     /* out = x + y */
MN_API int mn_axpy(float* y, float alpha, float* x, int64_t n, void* stream);   /* y += alpha*x */
MN_API int mn_scale(float* out, float* x, float alpha, int64_t n, void* stream); /* out = alpha*x */
MN_API int mn_fill(float* out, float value, int64_t n, void* stream);
/* out[0] = sum(x^2) over n elements, fp32 accumulation, deterministic */
MN_API int mn_sum_squares(float* out, float* x, int64_t n, void* stream);

/* ---- loss (crossentropy.cu) ---------------------------------------------------------------- */
/* z = softcap * tanh(logits / softcap); losses[i] = logsumexp(z[i,:]) - z[i, targets[i]].
 * If dlogits != NULL also writes dlogits[i,:] = dloss * (softmax(z[i,:]) - onehot) * dz/dlogits,
 * (written, not accumulated: the loss is where backward starts). dlogits may alias logits.
 * logits, dlogits [N, V]; targets [N] int32; losses [N]; softcap <= 0 disables the cap. */
MN_API int mn_softcap_crossentropy(float* losses, float* dlogits, float* logits, int32_t* targets,
                                   int N, int V, float softcap, float dloss, void* stream);
/* The same on bf16 logits (widened to fp32) writing bf16 dlogits (one rounding), the operand of
 * the lm head's backward matmuls: the GPT-2 record's bf16 logits. dlogits may alias logits. */
MN_API int mn_softcap_crossentropy_bf16(float* losses, mn_bf16* dlogits, mn_bf16* logits,
                                        int32_t* targets, int N, int V, float softcap, float dloss,
                                        void* stream);

/* ---- optimizer (adam.cu) ------------------------------------------------------------------- */
/* torch.optim.Adam step number `step` (1-based), bias-corrected, weight_decay added to the
 * gradient as torch.optim.Adam does (L2, not AdamW). All fp32. */
MN_API int mn_adam_step(float* param, float* grad, float* m, float* v, int64_t n, float lr,
                        float beta1, float beta2, float eps, float weight_decay, int step,
                        void* stream);
/* The same step over `count` tensors in one launch (as PyTorch's fused/foreach Adam): for each
 * tensor exactly mn_adam_step's per-element math (the same bits on every backend).
 * list: DEVICE array of int64_t [count][6], per tensor {param, grad, m, v, n, offset}: four device
 * addresses of fp32 tensors of n >= 1 elements and offset = the sum of n over the tensors before it
 * (so the tensors tile [0, total_n)); total_n = the sum of every n (the grid covers it: the host
 * side cannot read `list`). Tensors must not overlap one another. */
MN_API int mn_adam_multi_step(int64_t* list, int count, int64_t total_n, float lr, float beta1,
                              float beta2, float eps, float weight_decay, int step, void* stream);
/* mn_adam_multi_step with lr and step read from DEVICE memory, lr_step = {lr, step (an integer
 * >= 1 stored as float, exact up to 2^24)}: a step whose launches are recorded once (a CUDA graph)
 * still follows the schedule. The same bits as mn_adam_multi_step on emu and cpu; on cuda the
 * bias corrections come from the device's double pow (within an ulp of the host's). */
MN_API int mn_adam_multi_step_dev(int64_t* list, int count, int64_t total_n, float* lr_step,
                                  float beta1, float beta2, float eps, float weight_decay,
                                  void* stream);

/* ---- device-side scalars (scalars.cu): results left in, and factors read from, device memory,
 * so a training step never downloads a value to decide its next launch ------------------------ */
/* out[0] = alpha * sum(x) + beta * out[0] (beta == 0: out not read); deterministic (one block,
 * fixed order, fp32 accumulation); out must not lie inside x */
MN_API int mn_sum_into(float* out, float* x, int64_t n, float alpha, float beta, void* stream);
/* out = x / (sqrt(sumsq[0]) + eps), sumsq[0] read from device memory (e.g. mn_sum_squares's
 * result; the factor is computed in double, used in fp32). out may alias x; sumsq may not. */
MN_API int mn_scale_by_inv_norm(float* out, float* x, float* sumsq, float eps, int64_t n,
                                void* stream);

/* ---- model ops (modelops.cu): the small pieces the RWKV/GPT forwards are composed of ---------
 * Shapes: n elements; or N rows of C (row-major); "row vector" v [C] broadcast over rows. */
/* unary activations, op codes: */
#define MN_OP_TANH 1        /* tanh(x) */
#define MN_OP_SIGMOID 2     /* 1 / (1 + exp(-x)) */
#define MN_OP_RWKV7_DECAY 3 /* -softplus(-x) - 0.5 (softplus(z) = log(1 + exp(z)), stable) */
#define MN_OP_EXP_MIN0 4    /* exp(min(x, 0)); gradient 0 where x > 0 (as torch.clamp(max=0)) */
#define MN_OP_NEG 5         /* -x */
MN_API int mn_unary_forward(float* out, float* x, int op, int64_t n, void* stream);
/* dx += dout * f'(x); `out` is the forward's output (some ops use it), x the forward's input */
MN_API int mn_unary_backward(float* dx, float* dout, float* x, float* out, int op, int64_t n,
                             int accumulate, void* stream);
/* The same on bf16 x and out (an autocast activation: a bf16 matmul output's tanh/sigmoid, computed
 * in fp32 from the bf16 value and rounded once, as torch does on bf16 tensors). Backward: x, out
 * the forward's (bf16); dout fp32, or bf16 when dout_bf16 != 0 (the next matmul's bf16 dX); dx
 * fp32 (+= or = by bit 0 of accumulate), or bf16 when dx_bf16 != 0 (the operand gradient of the
 * matmul that produced x; overwritten: bit 0 clear), the fp32 value rounded once. */
MN_API int mn_unary_forward_bf16(mn_bf16* out, mn_bf16* x, int op, int64_t n, void* stream);
MN_API int mn_unary_backward_bf16(void* dx, void* dout, mn_bf16* x, mn_bf16* out, int op,
                                  int64_t n, int dout_bf16, int dx_bf16, int accumulate,
                                  void* stream);
/* out = x * y */
MN_API int mn_mul_forward(float* out, float* x, float* y, int64_t n, void* stream);
/* dx += dout*y; dy += dout*x; either may be NULL; dx may be dy (x * x): both added, in order */
MN_API int mn_mul_backward(float* dx, float* dy, float* dout, float* x, float* y, int64_t n,
                           int accumulate, void* stream);
/* out = x + (y - x) * g */
MN_API int mn_lerp_forward(float* out, float* x, float* y, float* g, int64_t n, void* stream);
MN_API int mn_lerp_backward(float* dx, float* dy, float* dg, float* dout, float* x, float* y,
                            float* g, int64_t n, int accumulate,
                            void* stream); /* any grad may be NULL */
/* out[i,c] = x[i,c] + v[c] */
MN_API int mn_add_row_vector_forward(float* out, float* x, float* v, int N, int C, void* stream);
/* dx += dout (dx may be NULL); dv[c] += sum_i dout[i,c] (deterministic) */
MN_API int mn_add_row_vector_backward(float* dx, float* dv, float* dout, int N, int C,
                                      int accumulate, void* stream);
/* out[i,c] = x[i,c] * v[c] */
MN_API int mn_mul_row_vector_forward(float* out, float* x, float* v, int N, int C, void* stream);
/* dx += dout*v; dv[c] += sum_i dout[i,c]*x[i,c]; either may be NULL */
MN_API int mn_mul_row_vector_backward(float* dx, float* dv, float* dout, float* x, float* v, int N,
                                      int C, int accumulate, void* stream);
/* token shift: out[b,t,:] = x[b,t-1,:] (zeros at t = 0); x, out [B,T,C] */
MN_API int mn_time_shift_forward(float* out, float* x, int B, int T, int C, void* stream);
MN_API int mn_time_shift_backward(float* dx, float* dout, int B, int T, int C, int accumulate,
                                  void* stream);
/* rows of D: out = x / max(||x||_2, eps) (F.normalize); x, out [N, D] */
MN_API int mn_l2norm_forward(float* out, float* x, int N, int D, float eps, void* stream);
MN_API int mn_l2norm_backward(float* dx, float* dout, float* x, int N, int D, float eps,
                              int accumulate, void* stream);
/* GroupNorm over G groups of D channels per row (nn.GroupNorm(G, G*D) on [N, G*D]), affine
 * weight/bias [G*D]; mean, rstd [N, G] saved for backward */
MN_API int mn_groupnorm_forward(float* out, float* mean, float* rstd, float* x, float* weight,
                                float* bias, int N, int G, int D, float eps, void* stream);
MN_API int mn_groupnorm_backward(float* dx, float* dweight, float* dbias, float* dout, float* x,
                                 float* weight, float* mean, float* rstd, int N, int G, int D,
                                 int accumulate, void* stream);
/* RWKV-7 bonus: out[i,h,:] = (sum_j r[i,h,j] k[i,h,j] u[h,j]) * v[i,h,:]; r,k,v,out [N,H,D],
 * u [H,D] (time_faaaa). Backward adds into (or overwrites) dr, dk, dv [N,H,D] and du [H,D]
 * (deterministic). */
MN_API int mn_rwkv7_bonus_forward(float* out, float* r, float* k, float* v, float* u, int N, int H,
                                  int D, void* stream);
MN_API int mn_rwkv7_bonus_backward(float* dr, float* dk, float* dv, float* du, float* dout,
                                   float* r, float* k, float* v, float* u, int N, int H, int D,
                                   int accumulate, void* stream);

/* ---- fused RWKV-7 time-mixing chains (rwkv7_fused.cu): the fast path of train_rwkv7.ts, each the
 * same math as its composition of the ops above --------------------------------------------------
 * x [B,T,C] fp32; xx = shift(x) - x (shift: token t-1 of the same sequence, zeros at t = 0).
 * Forward outputs are fp32, or bf16 (the next matmul's operand) when out_bf16 != 0.
 * `accumulate` (backward only, before `stream`): bit i refers to the i-th gradient output in
 * signature order; set = add into it, clear = overwrite it without reading it (it may hold NaN).
 * Parameter-vector gradients are column sums that only add: their bits must be set. */
/* out = x + xx * maa, maa [C] (time_maa_x) */
MN_API int mn_rwkv7_mix_x_forward(void* out, float* x, float* maa, int out_bf16, int B, int T,
                                  int C, void* stream);
/* gradient outputs: dx [B,T,C] (bit 0), dmaa [C] (bit 1, must be set); dout [B,T,C] fp32, or
 * bf16 when dout_bf16 != 0 (the bf16 dX of the maa LoRA's first layer, its one consumer) */
MN_API int mn_rwkv7_mix_x_backward(float* dx, float* dmaa, void* dout, float* x, float* maa,
                                   int dout_bf16, int B, int T, int C, int accumulate,
                                   void* stream);
/* out_j = x + xx * (m_j + maa_j) for j = rg, wa, k, v (xrg, xwa, xk, xv of the original);
 * m_j [B,T,C] (the maa LoRA's outputs: fp32, or bf16 when m_bf16 != 0), maa_j [C] */
MN_API int mn_rwkv7_mix4_forward(void* out_rg, void* out_wa, void* out_k, void* out_v, float* x,
                                 void* m_rg, void* m_wa, void* m_k, void* m_v, float* maa_rg,
                                 float* maa_wa, float* maa_k, float* maa_v, int out_bf16,
                                 int m_bf16, int B, int T, int C, void* stream);
/* gradient outputs: dx (bit 0), dm_rg..dm_v [B,T,C] (bits 1-4), dmaa_rg..dmaa_v [C] (bits 5-8,
 * must be set); m_j as in the forward. dout_j [B,T,C]: fp32, or with dout_bf16 != 0 bf16 plus an
 * optional second bf16 part dout2_j (NULL: none; must be NULL for fp32 dout): the gradient of
 * out_j is dout_j + dout2_j summed in fp32 (a mixed input's two matmul consumers each write their
 * dX in bf16, as autocast's two bf16 gradients summed in the fp32 input's gradient). dm_bf16 != 0:
 * the dm_j are written as bf16 (the LoRA's backward GEMM operand, as autocast's bf16 gradient of
 * a bf16 output), and only overwritten (bits 1-4 must be clear). One pass (the four dmaa_j are
 * one column sum). */
MN_API int mn_rwkv7_mix4_backward(float* dx, void* dm_rg, void* dm_wa, void* dm_k, void* dm_v,
                                  float* dmaa_rg, float* dmaa_wa, float* dmaa_k, float* dmaa_v,
                                  void* dout_rg, void* dout_wa, void* dout_k, void* dout_v,
                                  mn_bf16* dout2_rg, mn_bf16* dout2_wa, mn_bf16* dout2_k,
                                  mn_bf16* dout2_v, float* x, void* m_rg, void* m_wa, void* m_k,
                                  void* m_v, float* maa_rg, float* maa_wa, float* maa_k,
                                  float* maa_v, int m_bf16, int dm_bf16, int dout_bf16, int B,
                                  int T, int C, int accumulate, void* stream);

/* The chain between the projections and the WKV call, per row of C = H*D channels (heads of D):
 *   w = -softplus(-(dec + time_decay)) - 0.5;  kk = F.normalize(k0 + kkk) over each head (eps);
 *   a = sigmoid(aaa + time_aaaaa);  ma = sigmoid(mam + time_misc_a);
 *   mk = sigmoid(mkm + time_misc_k);  k = lerp(k0 * a, k0, ma) * exp(min(w * mk, 0));
 *   WKV's inputs: w, k, a_out = -kk, b_out = kk * a.
 * dec, k0, kkk, aaa, mam, mkm [N, C]: fp32, or bf16 (the projections' autocast outputs) when
 * in_bf16 != 0; the four parameter vectors [C]. k is written fp32 (the bonus reads it) and, when
 * k_bf16 is non-NULL, also as bf16; w, a_out, b_out fp32 or bf16. */
MN_API int mn_rwkv7_wkv_inputs_forward(void* w, float* k, mn_bf16* k_bf16, void* a, void* b,
                                       void* dec, void* k0, void* kkk, void* aaa, void* mam,
                                       void* mkm, float* time_decay, float* time_aaaaa,
                                       float* time_misc_a, float* time_misc_k, int out_bf16,
                                       int in_bf16, int N, int H, int D, float eps, void* stream);
/* gradient outputs: ddec, dk0, dkkk, daaa, dmam, dmkm [N, C] (bits 0-5; bf16 when grad_bf16 != 0,
 * then only overwritten: bits 0-5 clear), then the four parameter vectors' [C] (bits 6-9, must
 * be set); dw, dk, da, db [N, C]: the gradients of the outputs, fp32, or bf16 (WKV's bf16
 * gradients) for dw, da, db when dwab_bf16 != 0 and dk when dk_bf16 != 0; the six inputs as in
 * the forward (in_bf16). The pass that writes the six gradients also sums the four parameter terms
 * (fp32, whatever the six outputs' bits and dtype) per row tile: library scratch holds only the
 * tiles' partials (at most 256 * 4 * C floats); shared memory 128 * D bytes a block. */
MN_API int mn_rwkv7_wkv_inputs_backward(void* ddec, void* dk0, void* dkkk, void* daaa,
                                        void* dmam, void* dmkm, float* dtime_decay,
                                        float* dtime_aaaaa, float* dtime_misc_a,
                                        float* dtime_misc_k, void* dw, void* dk, void* da,
                                        void* db, void* dec, void* k0, void* kkk, void* aaa,
                                        void* mam, void* mkm, float* time_decay,
                                        float* time_aaaaa, float* time_misc_a,
                                        float* time_misc_k, int in_bf16, int grad_bf16,
                                        int dwab_bf16, int dk_bf16, int N, int H, int D, float eps,
                                        int accumulate, void* stream);

/* After the WKV call: out = (GroupNorm(y) + bonus) * gate per row of C = H*D, GroupNorm over the
 * H heads of D (weight, bias [C], eps; mean, rstd [N, H] saved), bonus = (sum_j r k u) v per head
 * (mn_rwkv7_bonus_forward); y, r, k, v [N, C] fp32, u [H, D]; gate [N, C] fp32, or bf16 (the gate
 * LoRA's autocast output) when gate_bf16 != 0; out fp32 or bf16 (the output projection's
 * operand). */
MN_API int mn_rwkv7_gn_bonus_gate_forward(void* out, float* mean, float* rstd, float* y,
                                          float* weight, float* bias, float* r, float* k, float* v,
                                          float* u, void* gate, int out_bf16, int gate_bf16, int N,
                                          int H, int D, float eps, void* stream);
/* gradient outputs: dy, dr, dk, dv, dgate [N, C] (bits 0-4), dweight, dbias [C], du [H, D]
 * (bits 5-7, must be set); dout [N, C]; gate as in the forward (gate_bf16). dgate_bf16 != 0:
 * dgate is written as bf16 (the gate LoRA's backward GEMM operand) and only overwritten (bit 4
 * must be clear). One pass reads dout, y, r, k, v, gate once: it writes the elementwise gradients
 * and sums dweight, dbias, du over row tiles (grid (H * ceil(D / 128), tiles)); a second launch adds
 * the tiles' partials in order. Scratch: those partials, tiles x 3 x C floats (none with one
 * tile). */
MN_API int mn_rwkv7_gn_bonus_gate_backward(float* dy, float* dr, float* dk, float* dv,
                                           void* dgate, float* dweight, float* dbias, float* du,
                                           float* dout, float* y, float* weight, float* bias,
                                           float* mean, float* rstd, float* r, float* k, float* v,
                                           float* u, void* gate, int gate_bf16, int dgate_bf16,
                                           int N, int H, int D, int accumulate, void* stream);
/* The value residual of the layers after the first: out = lerp(v, v1, sigmoid(mv + time_misc_v))
 * per row of C channels; v (this layer's value), v1 (the first layer's) [N, C] fp32; mv (the
 * LoRA's output) [N, C] fp32, or bf16 (its autocast output) when mv_bf16 != 0; time_misc_v [C].
 * out is fp32 (the bonus reads it) and, when out_bf16 is non-NULL, also WKV's bf16 operand. */
MN_API int mn_rwkv7_value_mix_forward(float* out, mn_bf16* out_bf16, float* v, float* v1,
                                      void* mv, float* time_misc_v, int mv_bf16, int N, int C,
                                      void* stream);
/* gradient outputs: dv, dv1, dmv [N, C] (bits 0-2; distinct buffers), dtime_misc_v [C] (bit 3,
 * must be set); dout [N, C] fp32, or bf16 when dout_bf16 != 0 (the mixed v's bf16 gradient); mv
 * as in the forward (mv_bf16). dmv_bf16 != 0: dmv is written as bf16 (the LoRA's backward GEMM
 * operand) and only overwritten (bit 2 must be clear); dv_bf16 != 0 the same for dv (the value
 * projection's operand; bit 0 clear). */
MN_API int mn_rwkv7_value_mix_backward(void* dv, float* dv1, void* dmv, float* dtime_misc_v,
                                       void* dout, float* v, float* v1, void* mv,
                                       float* time_misc_v, int mv_bf16, int dmv_bf16, int dv_bf16,
                                       int dout_bf16, int N, int C, int accumulate, void* stream);

/* ---- fused RWKV-6 time-mixing chains (rwkv7_fused.cu, beside RWKV-7's: the same per-element
 * math, rwkv7_math.cuh): the fast path of train_rwkv6.ts. Conventions as the RWKV-7 block above
 * (out_bf16, accumulate; parameter-vector gradients must have their bits set). RWKV-6's first mix
 * (xxx = x + xx * time_maa_x) is mn_rwkv7_mix_x_*. --------------------------------------------
 * out_j = x + xx * (m_j + maa_j) for j = w, k, v, r, g (xw, xk, xv, xr, xg of the original);
 * m_j [B,T,C] (the maa LoRA's outputs), maa_j [C] */
MN_API int mn_rwkv6_mix5_forward(void* out_w, void* out_k, void* out_v, void* out_r, void* out_g,
                                 float* x, float* m_w, float* m_k, float* m_v, float* m_r,
                                 float* m_g, float* maa_w, float* maa_k, float* maa_v,
                                 float* maa_r, float* maa_g, int out_bf16, int B, int T, int C,
                                 void* stream);
/* gradient outputs: dx (bit 0), dm_w..dm_g [B,T,C] (bits 1-5), dmaa_w..dmaa_g [C] (bits 6-10,
 * must be set); dout_j [B,T,C] fp32 */
MN_API int mn_rwkv6_mix5_backward(float* dx, float* dm_w, float* dm_k, float* dm_v, float* dm_r,
                                  float* dm_g, float* dmaa_w, float* dmaa_k, float* dmaa_v,
                                  float* dmaa_r, float* dmaa_g, float* dout_w, float* dout_k,
                                  float* dout_v, float* dout_r, float* dout_g, float* x, float* m_w,
                                  float* m_k, float* m_v, float* m_r, float* m_g, float* maa_w,
                                  float* maa_k, float* maa_v, float* maa_r, float* maa_g, int B,
                                  int T, int C, int accumulate, void* stream);
/* The decay and key chain before WKV-6, per row of C channels: w = ww + time_decay;
 * kw = k * exp(min(w, 0)). ww (the decay LoRA's output), k [N, C] fp32, time_decay [C]; w and kw
 * (WKV-6's w and k) fp32 or bf16. */
MN_API int mn_rwkv6_decay_k_forward(void* w, void* kw, float* ww, float* k, float* time_decay,
                                    int out_bf16, int N, int C, void* stream);
/* gradient outputs: dww, dk [N, C] (bits 0-1), dtime_decay [C] (bit 2, must be set); dw, dkw
 * [N, C]: the gradients of w and kw. w is recomputed from ww and time_decay. */
MN_API int mn_rwkv6_decay_k_backward(float* dww, float* dk, float* dtime_decay, float* dw,
                                     float* dkw, float* ww, float* k, float* time_decay, int N,
                                     int C, int accumulate, void* stream);
/* After the WKV call: out = GroupNorm(y) * gate per row of C = H*D, GroupNorm over the H heads of
 * D (weight, bias [C], eps; mean, rstd [N, H] saved); y [N, C] fp32; gate [N, C] fp32, or bf16
 * (the gate LoRA's autocast output) when gate_bf16 != 0; out fp32 or bf16 (the output
 * projection's operand). mn_rwkv7_gn_bonus_gate_* without the bonus. */
MN_API int mn_rwkv6_gn_gate_forward(void* out, float* mean, float* rstd, float* y, float* weight,
                                    float* bias, void* gate, int out_bf16, int gate_bf16, int N,
                                    int H, int D, float eps, void* stream);
/* gradient outputs: dy, dgate [N, C] (bits 0-1), dweight, dbias [C] (bits 2-3, must be set);
 * gate as in the forward (gate_bf16). dgate_bf16 != 0: dgate is written as bf16 (the gate LoRA's
 * backward GEMM operand) and only overwritten (bit 1 must be clear). One pass sums dweight, dbias
 * as it writes dy, dgate (as mn_rwkv7_gn_bonus_gate_backward; scratch tiles x 2 x C floats). */
MN_API int mn_rwkv6_gn_gate_backward(float* dy, void* dgate, float* dweight, float* dbias,
                                     float* dout, float* y, float* weight, float* bias,
                                     float* mean, float* rstd, void* gate, int gate_bf16,
                                     int dgate_bf16, int N, int H, int D, int accumulate,
                                     void* stream);

/* ---- WKV-7 (wkv7.cu): the RWKV-7 state recurrence, per (batch, head) ------------------------
 * r, w, k, v, a, b [B,T,H,N] bf16; decay d = exp(-exp(w)); S [N,N] (row i = value channel, column
 * j = key channel), S_{-1} = 0:  sa_t = S_{t-1} a_t;  S_t = S_{t-1} diag(d_t) + sa_t b_t^T + v_t k_t^T;
 * y_t = S_t r_t.  y [B,T,H,N] fp32 (written). T % 16 == 0; N in {16, 32, 64, 128} (64/128 in models,
 * 16/32 for tests). Chunk c = steps 16c .. 16c+15.
 * s_ckpt [B,H,T/16,N,N] fp32, written by forward: s_ckpt[b][h][c][j][i] = S_{16c+15}[i][j] (the
 *   state at the END of chunk c, stored transposed: key index j first). Same in both structures.
 * sa [B,T,H,N] fp32, written by mn_wkv7_forward: sa_t = S_{t-1} a_t.
 * Gradients dr, dw, dk, dv, da, db [B,T,H,N] fp32, += or = by `accumulate`; dy [B,T,H,N] fp32.
 * Backstepping structure (the original --fast_cuda): backward inverts the recurrence,
 *   S_{t-1} = (S_t - v_t k_t^T - sa_t b_t^T) diag(1/d_t), reloading S from s_ckpt every 16 steps
 *   (errors grow by up to 1/d per step within a chunk: meant for d in (0.545, 1) as the model has). */
MN_API int mn_wkv7_forward(float* y, float* s_ckpt, float* sa, mn_bf16* r, mn_bf16* w, mn_bf16* k,
                           mn_bf16* v, mn_bf16* a, mn_bf16* b, int B, int T, int H, int N,
                           void* stream);
/* (mn_wkv7_backward: a mask that adds into some of the six gradients and overwrites others zero-fills
 * the overwritten ones first: the kernel's flag is compile-time, so N = 128 keeps its registers).
 * drkv_bf16 != 0: dr, dk, dv are bf16; dwab_bf16 != 0: dw, da, db are: the WKV operands' bf16
 * gradients, as the original's kernel gives them, the fp32 value rounded once, or with the bit
 * set added into the bf16 value and the sum rounded (a bf16 tensor's gradient accumulated by
 * autograd). */
MN_API int mn_wkv7_backward(void* dr, void* dw, void* dk, void* dv, void* da, void* db,
                            float* dy, mn_bf16* r, mn_bf16* w, mn_bf16* k, mn_bf16* v, mn_bf16* a,
                            mn_bf16* b, float* s_ckpt, float* sa, int B, int T, int H, int N,
                            int drkv_bf16, int dwab_bf16, int accumulate, void* stream);
/* Reference structure (the original's default wkv7g): the same forward (no sa); backward RECOMPUTES
 * each 16-step chunk forward from its checkpoint (no inversion of the recurrence): slowest, most
 * accurate, any d in (0, 1). ws: scratch [B,H,17,N,N] fp32 (the 17 states S_{16c-1} .. S_{16c+15}
 * of the chunk in progress), contents undefined afterwards; the cpu backend does not touch it. */
MN_API int mn_wkv7g_forward(float* y, float* s_ckpt, mn_bf16* r, mn_bf16* w, mn_bf16* k,
                            mn_bf16* v, mn_bf16* a, mn_bf16* b, int B, int T, int H, int N,
                            void* stream);
MN_API int mn_wkv7g_backward(float* dr, float* dw, float* dk, float* dv, float* da, float* db,
                             float* dy, mn_bf16* r, mn_bf16* w, mn_bf16* k, mn_bf16* v, mn_bf16* a,
                             mn_bf16* b, float* s_ckpt, float* ws, int B, int T, int H, int N,
                             int accumulate, void* stream);
/* The recompute structure with fp32 inputs r, w, k, v, a, b (otherwise exactly mn_wkv7g_*): an
 * exact-fp32 path for tests (finite differences of a whole model need unrounded inputs). */
MN_API int mn_wkv7g_forward_f32(float* y, float* s_ckpt, float* r, float* w, float* k, float* v,
                                float* a, float* b, int B, int T, int H, int N, void* stream);
MN_API int mn_wkv7g_backward_f32(float* dr, float* dw, float* dk, float* dv, float* da, float* db,
                                 float* dy, float* r, float* w, float* k, float* v, float* a,
                                 float* b, float* s_ckpt, float* ws, int B, int T, int H, int N,
                                 int accumulate, void* stream);

/* ---- causal attention (attention.cu): FlashAttention-2 style, CUDA cores, fp32 accumulation ----
 * q, k, v [B,T,H,D] bf16 (the layout after the q/k/v linears: heads not transposed); D in
 * {16, 32, 64, 128} (64/128 in models, 16/32 for tests); scale = 1/sqrt(D); causal: query t sees
 * keys 0..t.  out[b,t,h,:] = sum_{j<=t} softmax_j(scale q_t.k_j) v_j, [B,T,H,D] fp32 (written);
 * lse [B,H,T] fp32 (written) = log sum_{j<=t} exp(scale q_t.k_j), saved for backward.
 * Backward: dout, out [B,T,H,D] fp32 and lse from the forward; dq, dk, dv [B,T,H,D] fp32,
 * += or = by `accumulate`, deterministic (no atomics). ws: scratch [B,H,T] fp32, contents undefined
 * afterwards (cuda/emu keep Delta = rowsum(dout * out) there; the cpu backend, which recomputes
 * everything from q, k, v in double, does not touch it). B, H <= 65535. */
MN_API int mn_attention_forward(float* out, float* lse, mn_bf16* q, mn_bf16* k, mn_bf16* v, int B,
                                int T, int H, int D, void* stream);
MN_API int mn_attention_backward(float* dq, float* dk, float* dv, float* dout, float* out,
                                 float* lse, mn_bf16* q, mn_bf16* k, mn_bf16* v, float* ws, int B,
                                 int T, int H, int D, int accumulate, void* stream);
/* The same with fp32 q, k, v (otherwise exactly mn_attention_*): an exact-fp32 path for tests
 * (finite differences of a whole model need unrounded inputs). */
MN_API int mn_attention_forward_f32(float* out, float* lse, float* q, float* k, float* v, int B,
                                    int T, int H, int D, void* stream);
MN_API int mn_attention_backward_f32(float* dq, float* dk, float* dv, float* dout, float* out,
                                     float* lse, float* q, float* k, float* v, float* ws, int B,
                                     int T, int H, int D, int accumulate, void* stream);

/* ---- WKV-6 (wkv6.cu): the RWKV-6 state recurrence, per (batch, head) ------------------------
 * r, k, v, w [B,T,H,N] bf16; decay d = exp(-exp(w)) (no clamp); u [H,N] fp32 (time_faaaa, the
 * bonus of the current token, shared over batch and time). S [N,N] (row i = value channel, column
 * j = key channel), S_{-1} = 0:
 *   y_t = S_{t-1} r_t + v_t * sum_j r_t[j] u[j] k_t[j];   S_t = S_{t-1} diag(d_t) + v_t k_t^T.
 * y [B,T,H,N] fp32 (written). N in {16, 32, 64, 128}; any T > 0 (no chunking).
 * Backward: dr, dk, dv, dw [B,T,H,N] fp32 and du [H,N] fp32 (summed over batch and time), all
 * += or = by `accumulate`; dy [B,T,H,N] fp32. Deterministic: du goes through per-(b,h) partials in
 * ws and an ordered sum over b. ws: fp32 scratch of B*H*N*(T+1) elements, [B,T,H,N] (the per-step terms
 * c_t[i] = r_t[i] (S_{t-1}^T dy_t)[i] of dw, written by a forward scan, read by the reverse one)
 * followed by [B,H,N] (du partials); contents undefined afterwards; the cpu backend ignores it. */
MN_API int mn_wkv6_forward(float* y, mn_bf16* r, mn_bf16* k, mn_bf16* v, mn_bf16* w, float* u,
                           int B, int T, int H, int N, void* stream);
MN_API int mn_wkv6_backward(float* dr, float* dk, float* dv, float* dw, float* du, float* dy,
                            mn_bf16* r, mn_bf16* k, mn_bf16* v, mn_bf16* w, float* u, float* ws,
                            int B, int T, int H, int N, int accumulate, void* stream);
/* The same with fp32 r, k, v, w (no rounding of the inputs): for gradient checks by finite
 * differences, which bf16 rounding would swamp. */
MN_API int mn_wkv6_forward_f32(float* y, float* r, float* k, float* v, float* w, float* u, int B,
                               int T, int H, int N, void* stream);
MN_API int mn_wkv6_backward_f32(float* dr, float* dk, float* dv, float* dw, float* du, float* dy,
                                float* r, float* k, float* v, float* w, float* u, float* ws, int B,
                                int T, int H, int N, int accumulate, void* stream);

/* ---- rotary (rotary.cu): the GPT-2 record's Rotary + apply_rotary_emb, per head --------------
 * x, out [B,T,H,D] fp32, D even, half-split: x1 = x[..., :D/2], x2 = x[..., D/2:]. For position t
 * and i < D/2: inv_freq_i = 1 / 10000^((2i)/D), f = t * inv_freq_i (fp32, as torch computes it),
 * c = bf16(cos f), s = bf16(sin f) (the original caches cos/sin as bfloat16).
 * Forward (written): y1 = x1 c + x2 s, y2 = -x1 s + x2 c; out may alias x.
 * Backward: dx1 += dy1 c - dy2 s, dx2 += dy1 s + dy2 c (+= or = by `accumulate`; dx must not alias dout). */
MN_API int mn_rotary_forward(float* out, float* x, int B, int T, int H, int D, void* stream);
MN_API int mn_rotary_backward(float* dx, float* dout, int B, int T, int H, int D, int accumulate,
                              void* stream);

/* ---- tensor-core wrappers (mma.cu): ABI self-test of cuda/mma.cuh ----------------------------
 * D [M,N] fp32 (written) = A [M,K] bf16 @ B [K,N] bf16 + C [M,N] fp32, all row-major, with
 * M % 16 == 0, N % 8 == 0, K % 16 == 0. One warp per 16x8 tile of D: tiles staged in shared memory,
 * fragments by ldmatrix (.x4 / .x4.trans for A, .x2.trans for B), products by
 * mma.sync.m16n8k16.row.col.f32.bf16.bf16.f32 (fp32 accumulation). The cpu backend accumulates in
 * double. */
MN_API int mn_mma_selftest(float* D, mn_bf16* A, mn_bf16* B, float* C, int M, int N, int K,
                           void* stream);
/* ldmatrix layout probe (one warp): a 16x16 b16 tile whose element (r, c) holds r * 16 + c, loaded
 * by ldmatrix.x4 (which = 0) or ldmatrix.x4.trans (which = 1) with matrix q = the 8x8 block at
 * (rows 8 (q % 2), cols 8 (q / 2)). lane_rows, lane_cols: int32 [32 lanes][4 regs][2 halves]
 * (written), the tile row / column of the element each half of each register received. */
MN_API int mn_mma_fragment_map(int* lane_rows, int* lane_cols, int which, void* stream);

/* ---- WKV-7 wind (wkv7_wind.cu): tensor-core chunk-16 WKV-7 (the original's --wind_cuda) --------
 * Exactly the semantics, shapes and saved buffers of mn_wkv7_forward / mn_wkv7_backward above:
 * r, w, k, v, a, b [B,T,H,N] bf16; y [B,T,H,N] fp32 (written); s_ckpt [B,H,T/16,N,N] fp32 (written,
 * s_ckpt[b][h][c][j][i] = S_{16c+15}[i][j]); sa [B,T,H,N] fp32 (written, sa_t = S_{t-1} a_t);
 * dr, dw, dk, dv, da, db [B,T,H,N] fp32 += or = by `accumulate`; dy [B,T,H,N] fp32. No workspace.
 * T % 16 == 0; N in {16, 32, 64, 128}. Each 16-step chunk is solved in closed form: 16x16 and
 * 16xN products as bf16 mma.sync with fp32 accumulation (operands, including the state, rounded
 * to bf16: normwise relative error ~5e-3 against the exact recurrence, up to ~3e-2 for dw with
 * decays much faster than the model's), a 16x16 triangular solve,
 * state and element-wise math in fp32; within a chunk the cumulative decays are centred, which
 * needs sum_t exp(w_t) over a chunk below ~170 (d > 2.4e-5 on average; the model's d > 0.545).
 * Backward reads S0 of each chunk from s_ckpt and sa_t from sa (no recurrence inversion, so no
 * 1/d error growth). Dynamic shared memory: forward 39 KiB (N=64) / 88 KiB (N=128); backward
 * 65 KiB (N=64) / 154 KiB (N=128, fits sm_80 and sm_90). The cpu backend is the double-precision
 * reference of mn_wkv7_* (it fills s_ckpt and sa identically). */
MN_API int mn_wkv7_wind_forward(float* y, float* s_ckpt, float* sa, mn_bf16* r, mn_bf16* w,
                                mn_bf16* k, mn_bf16* v, mn_bf16* a, mn_bf16* b, int B, int T,
                                int H, int N, void* stream);
MN_API int mn_wkv7_wind_backward(void* dr, void* dw, void* dk, void* dv, void* da, void* db,
                                 float* dy, mn_bf16* r, mn_bf16* w, mn_bf16* k, mn_bf16* v,
                                 mn_bf16* a, mn_bf16* b, float* s_ckpt, float* sa, int B, int T,
                                 int H, int N, int drkv_bf16, int dwab_bf16, int accumulate,
                                 void* stream);

/* ---- WKV-6 chunked (wkv6_chunked.cu): the --fla_cuda variant of WKV-6 ----------------------
 * Exactly the semantics of mn_wkv6_forward/backward (same r, k, v, w [B,T,H,N] bf16, u [H,N] fp32,
 * y [B,T,H,N] fp32 written; dr, dk, dv, dw [B,T,H,N] and du [H,N] fp32 (+= or = by `accumulate`), du summed over
 * batch and time, deterministic), computed in the manner of flash-linear-attention's chunk_rwkv6
 * (which the original's --fla_cuda calls; the differences, rounding only, are listed in
 * wkv6_chunked.cu): T in chunks of 16 steps (the last one may be shorter: any T > 0), pairwise
 * interactions inside a chunk from cumulative log-decays log d = -exp(w) (every factor exp(<= 0),
 * so no overflow for any decay), only the N x N state carried from chunk to chunk, fp32, CUDA
 * cores. dw is chunk-local (no running sum over T). NC = ceil(T / 16). N in {16, 32, 64, 128}.
 * s_ckpt [B,H,NC,N,N] fp32, written by forward, read by backward: s_ckpt[b][h][c][j][i] =
 *   S_{16c-1}[i][j], the state entering chunk c (key index j first; chunk 0's is 0).
 * ws: backward scratch of B*H*NC*N*(N+1) fp32 elements, contents undefined afterwards (the state
 *   gradient at each chunk's end [B,H,NC,N,N], then du partials [B,H,NC,N]); the cpu backend does
 *   not touch it.
 * mn_wkv6_chunked_sizes gives both element counts (host_ckpt_elems, host_ws_elems).
 * The cpu backend is the naive double-precision recurrence of mn_wkv6_* (it also writes s_ckpt). */
MN_API int mn_wkv6_chunked_sizes(int64_t* host_ckpt_elems, int64_t* host_ws_elems, int B, int T,
                                 int H, int N);
MN_API int mn_wkv6_chunked_forward(float* y, float* s_ckpt, mn_bf16* r, mn_bf16* k, mn_bf16* v,
                                   mn_bf16* w, float* u, int B, int T, int H, int N, void* stream);
MN_API int mn_wkv6_chunked_backward(float* dr, float* dk, float* dv, float* dw, float* du,
                                    float* dy, mn_bf16* r, mn_bf16* k, mn_bf16* v, mn_bf16* w,
                                    float* u, float* s_ckpt, float* ws, int B, int T, int H, int N,
                                    int accumulate, void* stream);

/* ---- causal attention on tensor cores (attention_tc.cu): FlashAttention-2 structure ------------
 * Exactly the semantics, layouts and workspace contract of mn_attention_forward/backward above:
 * q, k, v [B,T,H,D] bf16; out [B,T,H,D] fp32 (written); lse [B,H,T] fp32 (written); dout, out,
 * lse from the forward; dq, dk, dv [B,T,H,D] fp32 += or = by `accumulate`, deterministic (no atomics);
 * ws scratch [B,H,T] fp32 (Delta on cuda/emu, from the bf16-rounded dout; the cpu backend, the
 * double-precision reference of mn_attention_*, does not touch it). Every product runs as
 * mma.m16n8k16 with bf16 operands and fp32 accumulation: P, dS and dout are rounded to bf16 as
 * mma operands (softmax statistics, Delta and all sums stay fp32), so results differ from
 * mn_attention_* by a few bf16 roundings (up to ~5e-3 normwise; cuda/attention_tc_test.ts).
 * D in {16, 32, 64, 128}, any T >= 1, B, H <= 65535; tensor pointers 16-byte aligned. */
MN_API int mn_attention_tc_forward(float* out, float* lse, mn_bf16* q, mn_bf16* k, mn_bf16* v,
                                   int B, int T, int H, int D, void* stream);
MN_API int mn_attention_tc_backward(float* dq, float* dk, float* dv, float* dout, float* out,
                                    float* lse, mn_bf16* q, mn_bf16* k, mn_bf16* v, float* ws,
                                    int B, int T, int H, int D, int accumulate, void* stream);
/* The same with out (forward) and dout, out (backward) in bf16, as autocast's attention gives and
 * takes them: out is the fp32 result rounded once (the output projection's operand, no cast), dout
 * is what the dP and P^T dO products round it to anyway; only Delta = rowsum(dout * out) sees out's
 * rounding. grads_bf16 != 0: dq, dk, dv are written as bf16 (autocast's: what the QK-norm and
 * value-mix backwards read), each the fp32 result rounded once, and only overwritten (bits 0-2
 * must be clear); else fp32 under the accumulate bits. */
MN_API int mn_attention_tc_forward_bf16(mn_bf16* out, float* lse, mn_bf16* q, mn_bf16* k,
                                        mn_bf16* v, int B, int T, int H, int D, void* stream);
MN_API int mn_attention_tc_backward_bf16(void* dq, void* dk, void* dv, mn_bf16* dout,
                                         mn_bf16* out, float* lse, mn_bf16* q, mn_bf16* k,
                                         mn_bf16* v, float* ws, int B, int T, int H, int D,
                                         int grads_bf16, int accumulate, void* stream);

/* ---- GPT-2 fused chains (gpt2_fused.cu): what torch.compile fuses in the record's blocks -------
 * GRADIENT OUTPUTS OF THESE BACKWARDS follow `accumulate` (the argument before `stream`): bit i is
 * the i-th gradient-output pointer in signature order; set = add into it, clear = overwrite it
 * without reading it (its old contents may be NaN). Parameter gradients are always accumulated by
 * the callers (bit set).
 *
 * Mix + RMSNorm: x_out = a*(x + r) + b*y with a = ab[0], b = ab[1] in device memory (the blocks'
 * lambdas, or a constant [1, 1] for a residual add) and r an addend of x or NULL (x alone: r folds
 * the previous block's residual add x + mlp in), then F.rms_norm(x_out, (C,), eps): rstd [N], the
 * normed rows written as fp32 (out_f32) and/or as the bf16 operand of the next matmul (out_bf16);
 * either may be NULL, not both. x, x_out [N, C] fp32; r, y [N, C] fp32, or bf16 (an autocast
 * matmul's output, widened exactly) when r_bf16 / y_bf16 != 0. x may be y (both fp32); r is
 * neither. Every value is rounded as mn_add(x, r), mn_axpby_forward, mn_rmsnorm_forward (then
 * mn_cast_f32_to_bf16) would round it. */
MN_API int mn_mix_rmsnorm_forward(float* x_out, float* out_f32, mn_bf16* out_bf16, float* rstd,
                                  float* x, void* r, void* y, float* ab, int r_bf16, int y_bf16,
                                  int N, int C, float eps, void* stream);
/* g = dx_out + (the rmsnorm backward of dnorm at x_out, rstd); dx_out NULL counts as 0; dnorm
 * [N, C] fp32, or bf16 when dnorm_bf16 != 0 (the next linear's input gradient as autocast writes
 * it, widened exactly).
 * dx (bit 0) and dr (bit 1) get a*g, dy (bit 2) b*g, dab[0..1] (bit 3) sum(g*(x + r)) and
 * sum(g*y) over all N*C elements (deterministic two-stage sum). dab may be NULL (constant ab: not
 * reduced; else x and y are read, and r when given); dx, dr or dy may be NULL. dr_bf16 / dy_bf16
 * != 0: that gradient is written as bf16 (its producer's backward GEMM operand) and only
 * overwritten (its bit must be clear). dx == dy (x and y one fp32 tensor): both contributions,
 * (dx + a*g) + b*g, under bit 0; dr is distinct from both. */
MN_API int mn_mix_rmsnorm_backward(float* dx, void* dr, void* dy, float* dab, float* dx_out,
                                   void* dnorm, float* x_out, float* rstd, float* x, void* r,
                                   void* y, float* ab, int r_bf16, int y_bf16, int dr_bf16,
                                   int dy_bf16, int dnorm_bf16, int N, int C, int accumulate,
                                   void* stream);
/* QK-RMSNorm + rotary: per head row of x [B,T,H,D], fp32 or (x_bf16 != 0) bf16 (the projection's
 * autocast output, read as its values), its tokens' rows ld_x >= H*D elements apart (a column
 * block of the fused q|k|v GEMM's [B*T, 3C] output; dx the same block of its gradient),
 * F.rms_norm over D (rstd [B*T*H]) then mn_rotary_forward's rotation; written fp32 (out_f32)
 * and/or as the bf16 attention operand (out_bf16), either may be NULL, not both; rounded as rmsnorm
 * then rotary (then the cast) round. Backward: dx (bit 0) gets the rmsnorm backward of R^T dout at
 * x, rstd; x as in the forward (x_bf16); dout fp32, or bf16 (dout_bf16 != 0: the attention's bf16
 * gradient); dx_bf16 != 0: dx is written as bf16 (the projection's backward GEMM operand), the
 * fp32 value rounded once, and only overwritten (bit 0 must be clear). D even, <= 1024. */
MN_API int mn_qk_rmsnorm_rotary_forward(float* out_f32, mn_bf16* out_bf16, float* rstd, void* x,
                                        int x_bf16, int ld_x, int B, int T, int H, int D,
                                        float eps, void* stream);
MN_API int mn_qk_rmsnorm_rotary_backward(void* dx, void* dout, void* x, float* rstd, int x_bf16,
                                         int dout_bf16, int dx_bf16, int ld_x, int B, int T, int H,
                                         int D, int accumulate, void* stream);
/* Value residual: out = v + lamb[0] * (v1 - v) over n elements (fp32 and/or bf16 out, as above),
 * rounded as axpby(1, v, lamb, axpby(1, v1, -1, v)); v and v1 fp32, or both bf16 (v_bf16 != 0:
 * the projections' autocast outputs, read as their values). The n elements are [n / C, C] rows;
 * v's and v1's rows are ld_v >= C elements apart, dv's ld_dv (column blocks of the fused q|k|v
 * GEMM's output and gradient); out, dout, dv1 are contiguous. Backward: dv (bit 0) gets
 * dout - lamb dout, dv1 (bit 1) lamb dout, dlamb[0] (bit 2) sum(dout * (v1 - v)) (deterministic
 * two-stage sum). dv or dv1 may be NULL; dv == dv1 (v1 is v): both contributions, under bit 0.
 * dout fp32, or bf16 (dout_bf16 != 0). dv_bf16 != 0: dv is written as bf16 (the projection's
 * backward GEMM operand), the fp32 value rounded once, only overwritten (bit 0 clear), and is not
 * dv1. */
MN_API int mn_value_mix_forward(float* out_f32, mn_bf16* out_bf16, void* v, void* v1, float* lamb,
                                int v_bf16, int C, int ld_v, int64_t n, void* stream);
MN_API int mn_value_mix_backward(void* dv, float* dv1, float* dlamb, void* dout, void* v, void* v1,
                                 float* lamb, int v_bf16, int dout_bf16, int dv_bf16, int C,
                                 int ld_v, int ld_dv, int64_t n, int accumulate, void* stream);
/* relu(x)^2 written as the bf16 operand of the next matmul (mn_relu2_forward then the cast, in one
 * pass); its backward is mn_relu2_backward on the fp32 input. */
MN_API int mn_relu2_forward_bf16(mn_bf16* out, float* inp, int64_t n, void* stream);
/* The MLP's relu^2 on its bf16 pre-activation (the c_fc GEMM's bf16 output): out = relu(inp)^2
 * and dinp = 2 relu(inp) dout, each evaluated in fp32 and rounded once to bf16 (what autocast's
 * bf16 relu().square() and its backward give, to one rounding). dinp may be dout (in place).
 * dinp is bf16, so there is no sum to add to: accumulate must be 0 (else an error). */
MN_API int mn_relu2_forward_bf16io(mn_bf16* out, mn_bf16* inp, int64_t n, void* stream);
MN_API int mn_relu2_backward_bf16io(mn_bf16* dinp, mn_bf16* dout, mn_bf16* inp, int64_t n,
                                    int accumulate, void* stream);

#endif /* MN_KERNELS_H */
