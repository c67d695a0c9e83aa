// Matrix multiply, row-major and batched: C_i = alpha * op(A_i) @ op(B_i) + beta * C_i, with fp32
// accumulation: mn_gemm_bf16 (bf16 A and B, fp32 or bf16 C) and mn_gemm_f32 (all fp32), see
// kernels.h.
//
// cuda build: cuBLAS, loaded at run time with dlopen (this tree has no cuBLAS headers or import
// library, and a machine without cuBLAS still trains, slowly). Row-major data is handed to the
// column-major library by the usual identity: a row-major [R, C] matrix with row stride ld is the
// column-major [C, R] matrix with leading dimension ld, i.e. its transpose. So
// C^T = op(B)^T op(A)^T is one column-major GEMM with the operands swapped: m = N, n = M, A' = B,
// B' = A.
// emu build, and the cuda build without cuBLAS: gemm_tiled_kernel below (shared-memory tiles),
// templated on the operand and C element types.
#include "common.cuh"

#ifndef MN_EMU
#include <dlfcn.h>

#include <mutex>
#endif

// ---- the tiled kernel ------------------------------------------------------------------------
// One block computes a GT_BM x GT_BN tile of C with 16 x 16 threads; thread (tx, ty) owns the 4 x 4
// outputs at rows ty + 16 i, columns tx + 16 j of the tile (so a warp writes 16 consecutive
// columns). K advances GT_BK at a time through fp32 copies of the A and B tiles in shared memory
// (widened from bf16, or copied as they are).
constexpr int GT_BM = 64, GT_BN = 64, GT_BK = 16, GT_T = 16, GT_R = 4;
constexpr int GT_THREADS = GT_T * GT_T;                // 256
static_assert(GT_BM == GT_T * GT_R && GT_BN == GT_T * GT_R, "each thread owns GT_R x GT_R outputs");
static_assert(GT_BM * GT_BK == 4 * GT_THREADS && GT_BN * GT_BK == 4 * GT_THREADS,
              "each thread loads 4 elements of each operand tile");

// Operand and C element access for the two element types (the one place the types differ).
__device__ inline float gemm_load(const bf16* p, int64_t i) { return mn_bf16_to_f32(p[i]); }
__device__ inline float gemm_load(const float* p, int64_t i) { return p[i]; }
__device__ inline void gemm_store(bf16* p, int64_t i, float v) { p[i] = mn_f32_to_bf16(v); }
__device__ inline void gemm_store(float* p, int64_t i, float v) { p[i] = v; }

// op(X)[r, c] for a matrix with row stride ld, stored transposed when trans != 0; 0 outside the
// rows x cols bounds (the partial tiles at the edges of C and of K).
template <typename T>
__device__ inline float gemm_operand(const T* X, int ld, int trans, int r, int c, int rows,
                                     int cols) {
  if (r >= rows || c >= cols) return 0.0f;
  int64_t idx = trans ? (int64_t)c * ld + r : (int64_t)r * ld + c;
  return gemm_load(X, idx);
}

// T: the A/B element type (bf16 or float); TC: the C element type (bf16 or float).
template <typename T, typename TC>
__global__ void __launch_bounds__(GT_THREADS)
    gemm_tiled_kernel(int trans_a, int trans_b, int M, int N, int K, float alpha, const T* A,
                      int lda, int64_t stride_a, const T* B, int ldb, int64_t stride_b,
                      float beta, TC* C, int ldc, int64_t stride_c) {
  __shared__ float As[GT_BK][GT_BM + 1];  // As[k][m] = op(A)[m0 + m, k0 + k]; +1 avoids bank
  __shared__ float Bs[GT_BK][GT_BN + 1];  // conflicts on the column-wise stores
  const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * GT_T + tx;
  const int m0 = blockIdx.y * GT_BM, n0 = blockIdx.x * GT_BN;
  A += blockIdx.z * stride_a;
  B += blockIdx.z * stride_b;
  const int64_t c_off = blockIdx.z * stride_c;

  float acc[GT_R][GT_R];
  for (int i = 0; i < GT_R; i++)
    for (int j = 0; j < GT_R; j++) acc[i][j] = 0.0f;

  for (int k0 = 0; k0 < K; k0 += GT_BK) {
    for (int r = 0; r < 4; r++) {
      int e = tid + r * GT_THREADS;
      // Consecutive threads read consecutive addresses of the stored matrix in both layouts.
      int am = trans_a ? e % GT_BM : e / GT_BK, ak = trans_a ? e / GT_BM : e % GT_BK;
      As[ak][am] = gemm_operand(A, lda, trans_a, m0 + am, k0 + ak, M, K);
      int bk = trans_b ? e % GT_BK : e / GT_BN, bn = trans_b ? e / GT_BK : e % GT_BN;
      Bs[bk][bn] = gemm_operand(B, ldb, trans_b, k0 + bk, n0 + bn, K, N);
    }
    __syncthreads();
    for (int k = 0; k < GT_BK; k++) {
      float a[GT_R], b[GT_R];
      for (int i = 0; i < GT_R; i++) a[i] = As[k][ty + GT_T * i];
      for (int j = 0; j < GT_R; j++) b[j] = Bs[k][tx + GT_T * j];
      for (int i = 0; i < GT_R; i++)
        for (int j = 0; j < GT_R; j++) acc[i][j] += a[i] * b[j];
    }
    __syncthreads();  // the tiles are overwritten by the next k0
  }

  for (int i = 0; i < GT_R; i++) {
    int m = m0 + ty + GT_T * i;
    if (m >= M) break;
    for (int j = 0; j < GT_R; j++) {
      int n = n0 + tx + GT_T * j;
      if (n >= N) break;
      int64_t idx = c_off + (int64_t)m * ldc + n;
      float v = alpha * acc[i][j];
      // beta == 0 never reads C: it may hold garbage (NaN), as in BLAS.
      if (beta != 0.0f) v += beta * gemm_load(C, idx);
      gemm_store(C, idx, v);
    }
  }
}

template <typename T, typename TC>
static int gemm_tiled(int trans_a, int trans_b, int M, int N, int K, float alpha, const T* A,
                      int lda, int64_t stride_a, const T* B, int ldb, int64_t stride_b,
                      float beta, TC* C, int ldc, int64_t stride_c, int batch, void* stream) {
  MN_REQUIRE((M + GT_BM - 1) / GT_BM <= 65535, "gemm (tiled kernel): M=%d is more than %d rows", M,
             65535 * GT_BM);
  const int max_z = 65535;  // gridDim.z limit: larger batches go in chunks
  for (int b0 = 0; b0 < batch; b0 += max_z) {
    int nb = batch - b0 < max_z ? batch - b0 : max_z;
    dim3 grid((N + GT_BN - 1) / GT_BN, (M + GT_BM - 1) / GT_BM, nb);
    int rc = mn_launch("gemm_tiled", gemm_tiled_kernel<T, TC>, grid, dim3(GT_T, GT_T), 0, stream,
                       trans_a, trans_b, M, N, K, alpha, A + b0 * stride_a, lda, stride_a,
                       B + b0 * stride_b, ldb, stride_b, beta, C + b0 * stride_c, ldc, stride_c);
    if (rc) return rc;
  }
  return 0;
}

// Argument checks shared by mn_gemm_bf16 and mn_gemm_f32.
static int gemm_check(const char* fn, int trans_a, int trans_b, int M, int N, int K,
                      const void* A, int lda, int64_t stride_a, const void* B, int ldb,
                      int64_t stride_b, const void* C, int ldc, int64_t stride_c, int batch) {
  MN_REQUIRE(M > 0 && N > 0 && K > 0 && batch > 0, "%s: bad sizes M=%d N=%d K=%d batch=%d", fn, M,
             N, K, batch);
  MN_REQUIRE(A && B && C, "%s: NULL operand", fn);
  MN_REQUIRE(lda >= (trans_a ? M : K), "%s: lda=%d is less than the %d columns of stored A", fn,
             lda, trans_a ? M : K);
  MN_REQUIRE(ldb >= (trans_b ? K : N), "%s: ldb=%d is less than the %d columns of stored B", fn,
             ldb, trans_b ? K : N);
  MN_REQUIRE(ldc >= N, "%s: ldc=%d is less than N=%d", fn, ldc, N);
  MN_REQUIRE(stride_a >= 0 && stride_b >= 0 && stride_c >= 0,
             "%s: negative batch stride (%lld, %lld, %lld)", fn, (long long)stride_a,
             (long long)stride_b, (long long)stride_c);
  MN_REQUIRE(batch == 1 || stride_c > 0, "%s: batch=%d items would all write one C (stride_c=0)",
             fn, batch);
  return 0;
}

// ---- cuBLAS through dlopen (cuda build only) ----------------------------------------------------
#ifndef MN_EMU
// The subset of the cuBLAS C API used here, declared from NVIDIA's documentation. Enums are C
// enums (int-sized) in the ABI. Values, checked against the documentation:
//  - cublasStatus_t: CUBLAS_STATUS_SUCCESS = 0
//      https://docs.nvidia.com/cuda/nvmath-python/latest/bindings/generated/nvmath.bindings.cublas.Status.html
//  - cublasOperation_t: CUBLAS_OP_N = 0, CUBLAS_OP_T = 1
//      https://docs.nvidia.com/cuda/nvmath-python/1.0.0/bindings/generated/nvmath.bindings.cublas.Operation.html
//  - cublasComputeType_t: CUBLAS_COMPUTE_32F = 68, CUBLAS_COMPUTE_32F_PEDANTIC = 69
//      https://docs.nvidia.com/cuda/nvmath-python/latest/bindings/generated/nvmath.bindings.cublas.ComputeType.html
//    cublasGemmEx lists CUDA_R_32F A/B/C with CUBLAS_COMPUTE_32F or CUBLAS_COMPUTE_32F_PEDANTIC;
//    the FP32 emulation that COMPUTE_32F can be switched to since cuBLAS 12.9 is described in
//      https://developer.nvidia.com/blog/unlocking-tensor-core-performance-with-floating-point-emulation-in-cublas
//  - cublasGemmAlgo_t: CUBLAS_GEMM_DEFAULT (= CUBLAS_GEMM_DFALT) = -1
//      https://docs.nvidia.com/cuda/nvmath-python/latest/bindings/generated/nvmath.bindings.cublas.GemmAlgo.html
//  - cudaDataType: CUDA_R_16BF = 14, CUDA_R_32F = 0, from the CUDA toolkit's own library_types.h
//    (included by cuda_runtime.h); asserted below so a mismatch fails the build.
// Symbol names are the exported ones (cublas_v2.h maps cublasCreate to cublasCreate_v2 etc.).
namespace cublas_abi {
enum : int { CUBLAS_STATUS_SUCCESS = 0 };
enum : int { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 };
enum : int { CUBLAS_COMPUTE_32F = 68, CUBLAS_COMPUTE_32F_PEDANTIC = 69 };
enum : int { CUBLAS_GEMM_DEFAULT = -1 };
typedef int (*create_fn)(void** handle);
typedef int (*set_stream_fn)(void* handle, cudaStream_t stream);
typedef int (*gemm_strided_batched_ex_fn)(
    void* handle, int transa, int transb, int m, int n, int k, const void* alpha, const void* A,
    int Atype, int lda, long long strideA, const void* B, int Btype, int ldb, long long strideB,
    const void* beta, void* C, int Ctype, int ldc, long long strideC, int batchCount,
    int computeType, int algo);
typedef const char* (*status_string_fn)(int status);
typedef int (*set_workspace_fn)(void* handle, void* workspace, size_t bytes);
}  // namespace cublas_abi
static_assert(CUDA_R_16BF == 14 && CUDA_R_32F == 0, "cudaDataType values (library_types.h)");

namespace {
constexpr int kMaxDevices = 64;
constexpr size_t kWorkspaceBytes = 32u << 20;
struct CublasState {
  std::mutex mu;
  bool initialized = false;  // mn_gemm_init ran (explicitly, or implicitly on first use)
  bool available = false;    // the library loaded and every symbol resolved
  bool warned = false;       // the one fallback warning was printed
  cublas_abi::create_fn create = nullptr;
  cublas_abi::set_stream_fn set_stream = nullptr;
  cublas_abi::gemm_strided_batched_ex_fn gemm = nullptr;
  cublas_abi::status_string_fn status_string = nullptr;
  cublas_abi::set_workspace_fn set_workspace = nullptr;
  void* handle[kMaxDevices] = {};
  void* workspace[kMaxDevices] = {};  // ours, set on handle[d] (see kWorkspaceBytes)
  cudaStream_t stream[kMaxDevices] = {};  // the stream last set on handle[d]
};
CublasState g_cublas;

// Caller holds g_cublas.mu.
void cublas_fallback_warning(const char* why) {
  g_cublas.available = false;
  if (g_cublas.warned) return;
  g_cublas.warned = true;
  std::fprintf(stderr,
               "warning: mn_gemm: cuBLAS unavailable (%s); using the slow tiled GEMM kernel\n",
               why);
}

// Caller holds g_cublas.mu.
void cublas_load(const char* cublas_path, const char* cublaslt_path) {
  g_cublas.initialized = true;
  char why[400];
  // cuBLAS resolves its cuBLASLt dependency through the loader; a copy outside the default search
  // path is made visible by loading it first, globally.
  if (cublaslt_path && cublaslt_path[0]) dlopen(cublaslt_path, RTLD_NOW | RTLD_GLOBAL);
  void* lib = nullptr;
  if (cublas_path && cublas_path[0]) {
    lib = dlopen(cublas_path, RTLD_NOW | RTLD_LOCAL);
    if (!lib) std::snprintf(why, sizeof why, "%s", dlerror());
  } else {
    for (const char* soname : {"libcublas.so.13", "libcublas.so.12", "libcublas.so"}) {
      lib = dlopen(soname, RTLD_NOW | RTLD_LOCAL);
      if (lib) break;
    }
    if (!lib) std::snprintf(why, sizeof why, "no libcublas.so.13/.12/.so on the library path");
  }
  if (!lib) return cublas_fallback_warning(why);
  g_cublas.create = (cublas_abi::create_fn)dlsym(lib, "cublasCreate_v2");
  g_cublas.set_stream = (cublas_abi::set_stream_fn)dlsym(lib, "cublasSetStream_v2");
  g_cublas.gemm = (cublas_abi::gemm_strided_batched_ex_fn)dlsym(lib, "cublasGemmStridedBatchedEx");
  g_cublas.status_string = (cublas_abi::status_string_fn)dlsym(lib, "cublasGetStatusString");
  g_cublas.set_workspace = (cublas_abi::set_workspace_fn)dlsym(lib, "cublasSetWorkspace_v2");
  if (!g_cublas.create || !g_cublas.set_stream || !g_cublas.gemm || !g_cublas.set_workspace)
    return cublas_fallback_warning("a cuBLAS symbol is missing");
  g_cublas.available = true;
}

const char* cublas_status_name(int status) {
  const char* s = g_cublas.status_string ? g_cublas.status_string(status) : nullptr;
  return s ? s : "cuBLAS error";
}
}  // namespace

MN_API int mn_gemm_init(const char* cublas_path, const char* cublaslt_path) {
  std::lock_guard<std::mutex> lock(g_cublas.mu);
  if (!g_cublas.initialized) cublas_load(cublas_path, cublaslt_path);
  return 0;
}

MN_API int mn_gemm_provider(char* buf, int len) {
  bool available;
  {
    std::lock_guard<std::mutex> lock(g_cublas.mu);
    if (!g_cublas.initialized) cublas_load(nullptr, nullptr);
    available = g_cublas.available;
  }
  return mn_copy_string(buf, len, available ? "cublas" : "tiled-kernel");
}

// The handle of the current device with `stream` set, or nullptr to use the tiled kernel. A
// non-zero return is an error to report.
static int cublas_handle_for(void* stream, void** out) {
  *out = nullptr;
  std::lock_guard<std::mutex> lock(g_cublas.mu);
  if (!g_cublas.initialized) cublas_load(nullptr, nullptr);
  if (!g_cublas.available) return 0;
  int dev = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e != cudaSuccess) return mn_fail((int)e, "gemm: cudaGetDevice: %s", cudaGetErrorString(e));
  if (dev < 0 || dev >= kMaxDevices) return 0;
  if (!g_cublas.handle[dev]) {
    void* h = nullptr;
    int st = g_cublas.create(&h);
    if (st != cublas_abi::CUBLAS_STATUS_SUCCESS) {
      char why[200];
      std::snprintf(why, sizeof why, "cublasCreate failed: %s (%d)", cublas_status_name(st), st);
      cublas_fallback_warning(why);
      return 0;
    }
    g_cublas.handle[dev] = h;
    g_cublas.stream[dev] = nullptr;  // a new handle runs on the default stream
    // A workspace of our own, allocated here (the first GEMM, long before any graph capture):
    // with cuBLAS's default pool a GEMM may allocate inside a capture, which capture forbids (and
    // each capture would keep another workspace alive). cuBLAS's CUDA-graph notes ask for
    // exactly this; 32 MiB is their recommendation for Hopper (4 MiB elsewhere):
    //   https://docs.nvidia.com/cuda/cublas/index.html#cuda-graphs-support
    //   https://docs.nvidia.com/cuda/cublas/index.html#cublassetworkspace
    e = cudaMalloc(&g_cublas.workspace[dev], kWorkspaceBytes);
    if (e != cudaSuccess) {
      (void)cudaGetLastError();
      g_cublas.workspace[dev] = nullptr;
      return mn_fail(MN_ERR_OUT_OF_MEMORY, "gemm: cuBLAS workspace: %s", cudaGetErrorString(e));
    }
  }
  if (g_cublas.stream[dev] != (cudaStream_t)stream) {
    int st = g_cublas.set_stream(g_cublas.handle[dev], (cudaStream_t)stream);
    if (st != cublas_abi::CUBLAS_STATUS_SUCCESS)
      return mn_fail(st, "gemm: cublasSetStream: %s (%d)", cublas_status_name(st), st);
    g_cublas.stream[dev] = (cudaStream_t)stream;
    // cublasSetStream puts the handle back on the default workspace pool every time
    // (https://docs.nvidia.com/cuda/cublas/index.html#cublassetstream): set ours again.
    st = g_cublas.set_workspace(g_cublas.handle[dev], g_cublas.workspace[dev], kWorkspaceBytes);
    if (st != cublas_abi::CUBLAS_STATUS_SUCCESS)
      return mn_fail(st, "gemm: cublasSetWorkspace: %s (%d)", cublas_status_name(st), st);
  }
  *out = g_cublas.handle[dev];
  return 0;
}
#else
MN_API int mn_gemm_init(const char*, const char*) { return 0; }
MN_API int mn_gemm_provider(char* buf, int len) { return mn_copy_string(buf, len, "tiled-kernel"); }
#endif

#ifndef MN_EMU
// One column-major cublasGemmStridedBatchedEx for the row-major problem: C^T[N, M] = op(B)^T[N, K]
// @ op(A)^T[K, M]; stored B is op(B)^T column-major when trans_b == 0 (so no transpose), and
// likewise for A. *used = 0 when cuBLAS is unavailable (then the caller runs the tiled kernel).
static int gemm_cublas(int* used, int trans_a, int trans_b, int M, int N, int K, float alpha,
                       const void* A, int lda, int64_t stride_a, const void* B, int ldb,
                       int64_t stride_b, int ab_type, float beta, void* C, int ldc,
                       int64_t stride_c, int c_type, int compute_type, int batch, void* stream) {
  *used = 0;
  void* handle = nullptr;
  if (int rc = cublas_handle_for(stream, &handle)) return rc;
  if (!handle) return 0;
  *used = 1;
  using namespace cublas_abi;
  int st = g_cublas.gemm(handle, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                         trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K, &alpha, B, ab_type, ldb,
                         stride_b, A, ab_type, lda, stride_a, &beta, C, c_type, ldc, stride_c,
                         batch, compute_type, CUBLAS_GEMM_DEFAULT);
  if (st != CUBLAS_STATUS_SUCCESS)
    return mn_fail(st, "gemm: cublasGemmStridedBatchedEx(M=%d N=%d K=%d batch=%d): %s (%d)", M, N,
                   K, batch, cublas_status_name(st), st);
  return 0;
}
#endif

MN_API int mn_gemm_bf16(int trans_a, int trans_b, int M, int N, int K, float alpha, mn_bf16* A,
                        int lda, int64_t stride_a, mn_bf16* B, int ldb, int64_t stride_b,
                        float beta, void* C, int ldc, int64_t stride_c, int c_bf16, int batch,
                        void* stream) {
  if (int rc = gemm_check("gemm", trans_a, trans_b, M, N, K, A, lda, stride_a, B, ldb, stride_b, C,
                          ldc, stride_c, batch))
    return rc;
#ifndef MN_EMU
  int used = 0;
  if (int rc = gemm_cublas(&used, trans_a, trans_b, M, N, K, alpha, A, lda, stride_a, B, ldb,
                           stride_b, CUDA_R_16BF, beta, C, ldc, stride_c,
                           c_bf16 ? CUDA_R_16BF : CUDA_R_32F, cublas_abi::CUBLAS_COMPUTE_32F,
                           batch, stream))
    return rc;
  if (used) return 0;
#endif
  const bf16 *a = (const bf16*)A, *b = (const bf16*)B;
  if (c_bf16)
    return gemm_tiled(trans_a, trans_b, M, N, K, alpha, a, lda, stride_a, b, ldb, stride_b, beta,
                      (bf16*)C, ldc, stride_c, batch, stream);
  return gemm_tiled(trans_a, trans_b, M, N, K, alpha, a, lda, stride_a, b, ldb, stride_b, beta,
                    (float*)C, ldc, stride_c, batch, stream);
}

MN_API int mn_gemm_f32(int trans_a, int trans_b, int M, int N, int K, float alpha, float* A,
                       int lda, int64_t stride_a, float* B, int ldb, int64_t stride_b, float beta,
                       float* C, int ldc, int64_t stride_c, int batch, void* stream) {
  if (int rc = gemm_check("gemm_f32", trans_a, trans_b, M, N, K, A, lda, stride_a, B, ldb,
                          stride_b, C, ldc, stride_c, batch))
    return rc;
#ifndef MN_EMU
  // CUBLAS_COMPUTE_32F_PEDANTIC, not CUBLAS_COMPUTE_32F: this entry point exists for exact-fp32
  // results. With plain COMPUTE_32F, settings outside this call (the handle's math mode, cuBLAS
  // environment variables) can switch fp32 GEMMs to reduced-precision tensor-core paths (TF32, or
  // the BF16x9 FP32 emulation of cuBLAS 12.9+); the pedantic type asks for the prescribed fp32
  // arithmetic in every phase whatever those settings are. Its cost is irrelevant here (tests,
  // small fp32 matmuls).
  int used = 0;
  if (int rc = gemm_cublas(&used, trans_a, trans_b, M, N, K, alpha, A, lda, stride_a, B, ldb,
                           stride_b, CUDA_R_32F, beta, C, ldc, stride_c, CUDA_R_32F,
                           cublas_abi::CUBLAS_COMPUTE_32F_PEDANTIC, batch, stream))
    return rc;
  if (used) return 0;
#endif
  return gemm_tiled(trans_a, trans_b, M, N, K, alpha, (const float*)A, lda, stride_a,
                    (const float*)B, ldb, stride_b, beta, C, ldc, stride_c, batch, stream);
}
