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
 * - BACKWARD KERNELS ACCUMULATE: every gradient output is `+=`, never `=`, so that a tensor used
 *   twice and gradient accumulation over micro-steps both just work. Zero grads before a step.
 * - Reductions are deterministic (no float atomics): same inputs, same bits, every run.
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

/* ---- cast (cast.cu) ------------------------------------------------------------------------ */
MN_API int mn_cast_f32_to_bf16(mn_bf16* out, float* inp, int64_t n, void* stream); /* RNE */
MN_API int mn_cast_bf16_to_f32(float* out, mn_bf16* inp, int64_t n, void* stream);

/* ---- embedding (embedding.cu) -------------------------------------------------------------- */
/* out[i, :] = wte[idx[i], :];  idx [N] int32 in [0, V), wte [V, C], out [N, C] */
MN_API int mn_embedding_forward(float* out, int32_t* idx, float* wte, int N, int C, int V,
                                void* stream);
/* dwte[idx[i], :] += dout[i, :], deterministic (fixed summation order over i) */
MN_API int mn_embedding_backward(float* dwte, int32_t* idx, float* dout, int N, int C, int V,
                                 void* stream);

/* ---- norms (norm.cu): rows of C elements, fp32 statistics ---------------------------------- */
/* LayerNorm with weight and bias [C]; mean, rstd [N] saved for backward */
MN_API int mn_layernorm_forward(float* out, float* mean, float* rstd, float* inp, float* weight,
                                float* bias, int N, int C, float eps, void* stream);
MN_API int mn_layernorm_backward(float* dinp, float* dweight, float* dbias, float* dout,
                                 float* inp, float* weight, float* mean, float* rstd, int N, int C,
                                 void* stream);
/* RMSNorm without weight, as F.rms_norm(x, (C,), eps): out = x * rsqrt(mean(x^2) + eps) */
MN_API int mn_rmsnorm_forward(float* out, float* rstd, float* inp, int N, int C, float eps,
                              void* stream);
MN_API int mn_rmsnorm_backward(float* dinp, float* dout, float* inp, float* rstd, int N, int C,
                               void* stream);

/* ---- elementwise (elementwise.cu) ---------------------------------------------------------- */
MN_API int mn_relu2_forward(float* out, float* inp, int64_t n, void* stream); /* relu(x)^2 */
MN_API int mn_relu2_backward(float* dinp, float* dout, float* inp, int64_t n, void* stream);
/* out = a[0]*x + b[0]*y with a, b scalars in device memory (the blocks' learned lambdas) */
MN_API int mn_axpby_forward(float* out, float* x, float* y, float* a, float* b, int64_t n,
                            void* stream);
/* dx += a*dout; dy += b*dout; da += sum(dout*x); db += sum(dout*y). dx/dy/da/db may be NULL. */
MN_API int mn_axpby_backward(float* dx, float* dy, float* da, float* db, float* dout, float* x,
                             float* y, float* a, float* b, int64_t n, void* stream);
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

/* ---- optimizer (adam.cu) ------------------------------------------------------------------- */
/* torch.optim.Adam step number `step` (1-based), bias-corrected, weight_decay added to the
 * gradient as torch.optim.Adam does (L2, not AdamW). All fp32. */
MN_API int mn_adam_step(float* param, float* grad, float* m, float* v, int64_t n, float lr,
                        float beta1, float beta2, float eps, float weight_decay, int step,
                        void* stream);

#endif /* MN_KERNELS_H */
