// Reference matmul: bf16 operands widened to fp32, multiplied by OpenBLAS's sgemm (row-major),
// then C = alpha * product + beta * C stored as fp32 or rounded to bf16 (round to nearest even).
// mn_gemm_f32: fp32 operands and C handed to sgemm directly.
#include <cblas.h>

#include <algorithm>
#include <vector>

#include "cpu_common.h"

MN_API int mn_gemm_init(const char*, const char*) { return 0; }
MN_API int mn_gemm_provider(char* buf, int len) { return mn_copy_string(buf, len, "openblas"); }

namespace {
// Argument checks shared by mn_gemm_bf16 and mn_gemm_f32.
int gemm_check(const char* fn, int trans_a, int trans_b, int M, int N, int K, const void* A,
               int lda, int64_t stride_a, const void* B, int ldb, int64_t stride_b, const void* C,
               int ldc, int64_t stride_c, int batch) {
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
}  // namespace

MN_API int mn_gemm_bf16(int trans_a, int trans_b, int M, int N, int K, float alpha, mn_bf16* A,
                        int lda, int64_t stride_a, mn_bf16* B, int ldb, int64_t stride_b,
                        float beta, void* C, int ldc, int64_t stride_c, int c_bf16, int batch,
                        void*) {
  if (int rc = gemm_check("gemm", trans_a, trans_b, M, N, K, A, lda, stride_a, B, ldb, stride_b, C,
                          ldc, stride_c, batch))
    return rc;

  // op(A) as a dense fp32 [M, K], op(B) as [K, N], the product as [M, N].
  std::vector<float> a((size_t)M * K), b((size_t)K * N), p((size_t)M * N);
  for (int bi = 0; bi < batch; bi++) {
    const mn_bf16* Ai = A + bi * stride_a;
    const mn_bf16* Bi = B + bi * stride_b;
#pragma omp parallel for if ((int64_t)M * K > 100000)
    for (int m = 0; m < M; m++)
      for (int k = 0; k < K; k++)
        a[(size_t)m * K + k] =
            bf16_to_f32(trans_a ? Ai[(int64_t)k * lda + m] : Ai[(int64_t)m * lda + k]);
#pragma omp parallel for if ((int64_t)K * N > 100000)
    for (int k = 0; k < K; k++)
      for (int n = 0; n < N; n++)
        b[(size_t)k * N + n] =
            bf16_to_f32(trans_b ? Bi[(int64_t)n * ldb + k] : Bi[(int64_t)k * ldb + n]);
    // beta = 0 into a zeroed p, so the result cannot depend on what p held before (0 * NaN).
    std::fill(p.begin(), p.end(), 0.0f);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, alpha, a.data(), K, b.data(), N,
                0.0f, p.data(), N);
    // C = product + beta * C; with beta == 0 the old C is not read (it may be NaN garbage).
#pragma omp parallel for if ((int64_t)M * N > 100000)
    for (int m = 0; m < M; m++) {
      int64_t row = bi * stride_c + (int64_t)m * ldc;
      for (int n = 0; n < N; n++) {
        float v = p[(size_t)m * N + n];
        if (c_bf16) {
          mn_bf16* c = (mn_bf16*)C + row + n;
          if (beta != 0.0f) v += beta * bf16_to_f32(*c);
          *c = f32_to_bf16(v);
        } else {
          float* c = (float*)C + row + n;
          if (beta != 0.0f) v += beta * *c;
          *c = v;
        }
      }
    }
  }
  return 0;
}

// fp32 operands go to sgemm as they are (no copies): row-major, the transposes as BLAS flags.
MN_API int mn_gemm_f32(int trans_a, int trans_b, int M, int N, int K, float alpha, float* A,
                       int lda, int64_t stride_a, float* B, int ldb, int64_t stride_b, float beta,
                       float* C, int ldc, int64_t stride_c, int batch, void*) {
  if (int rc = gemm_check("gemm_f32", trans_a, trans_b, M, N, K, A, lda, stride_a, B, ldb,
                          stride_b, C, ldc, stride_c, batch))
    return rc;
  for (int bi = 0; bi < batch; bi++) {
    float* Ci = C + bi * stride_c;
    // beta == 0 never reads C (it may be NaN garbage): written as zeros first, so the result
    // cannot depend on whether this BLAS reads C when beta is 0.
    if (beta == 0.0f)
      for (int m = 0; m < M; m++) std::fill(Ci + (int64_t)m * ldc, Ci + (int64_t)m * ldc + N, 0.0f);
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                trans_b ? CblasTrans : CblasNoTrans, M, N, K, alpha, A + bi * stride_a, lda,
                B + bi * stride_b, ldb, beta, Ci, ldc);
  }
  return 0;
}
