// Reference matmul: bf16 operands widened to fp32 (exactly), multiplied by OpenBLAS's sgemm
// (row-major, fp32 accumulation), then C = alpha * product + beta * C stored as fp32 or rounded to
// bf16 (round to nearest even). mn_gemm_f32: fp32 operands and C handed to sgemm directly.
//
// How it runs (the cpu trainers' matmuls are these calls, so they must run at sgemm speed):
// - one thread pool: OpenBLAS is set to one thread and the work is split over our OpenMP threads,
//   each calling sgemm on its own block of C (rows or columns; K is never split, so every element
//   is the same K-term fp32 sum the unsplit call makes). Two pools spin-waiting on the same cores
//   (OpenMP's and OpenBLAS's) made every kernel wait for a core;
// - the widened operands and the product tiles live in buffers that are kept between calls (grown,
//   never zero-filled): a fresh allocation per call cost more page faults and memset than the
//   sgemm;
// - an fp32 C with beta == 0 is written by sgemm directly (BLAS never reads C when beta is 0);
//   otherwise each thread's product goes to a cache-sized tile and is then combined with C
//   (product + beta * C, rounded to bf16 when C is bf16), as the unblocked formula says.
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <mutex>

#include "cpu_common.h"
#include "cpu_math.h"

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

// A 64-byte aligned fp32 buffer kept between calls: grows when a call needs more, never shrinks.
struct Buffer {
  float* p = nullptr;
  size_t cap = 0;
  float* get(size_t n) {
    if (n <= cap) return p;
    std::free(p);
    p = (float*)std::aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64);
    cap = p ? n : 0;
    return p;
  }
};
constexpr int kMaxThreads = 256;
Buffer widened_a, widened_b, tiles[kMaxThreads];
// The buffers are shared: one call at a time (calls come from one host thread in practice).
std::mutex gemm_mutex;

// Our threads split the work; OpenBLAS (the pthread build Debian installs by default) must not
// start its own pool inside each of them.
void blas_one_thread() {
  static std::once_flag once;
  std::call_once(once, [] { openblas_set_num_threads(1); });
}

int thread_count(int64_t M, int64_t N, int64_t K) {
  // up to 128^3 multiply-adds (~50 us on one core) a second thread saves little, and on a busy
  // machine waiting for it can cost a whole scheduler time slice
  if (M * N * K <= (int64_t)1 << 21 || std::max(M, N) < 32) return 1;
  return std::clamp(omp_get_max_threads(), 1, kMaxThreads);
}

// Thread t's share [lo, hi) of n, cut at multiples of 16 (whole register tiles for the kernel).
void share(int n, int t, int nt, int* lo, int* hi) {
  int64_t units = (n + 15) / 16;
  *lo = (int)std::min<int64_t>(n, units * t / nt * 16);
  *hi = (int)std::min<int64_t>(n, units * (t + 1) / nt * 16);
}

// One operand as sgemm sees it: stored row-major with leading dimension ld, transposed or not.
struct Operand {
  const float* p;
  int ld;
  int trans;
  // op(X) starting at row r (the left operand's rows) or column c (the right operand's columns)
  const float* rows_from(int r) const { return trans ? p + r : p + (int64_t)r * ld; }
  const float* cols_from(int c) const { return trans ? p + (int64_t)c * ld : p + c; }
};

// C[m0:m1, n0:n1] = alpha * op(A) op(B) (+ beta C when beta != 0), sgemm on this thread.
void sgemm_block(int m0, int m1, int n0, int n1, int K, float alpha, const Operand& a,
                 const Operand& b, float beta, float* C, int64_t ldc) {
  if (m1 <= m0 || n1 <= n0) return;
  cblas_sgemm(CblasRowMajor, a.trans ? CblasTrans : CblasNoTrans,
              b.trans ? CblasTrans : CblasNoTrans, m1 - m0, n1 - n0, K, alpha, a.rows_from(m0),
              a.ld, b.cols_from(n0), b.ld, beta, C + (int64_t)m0 * ldc + n0, (int)ldc);
}

// Splits C [M, N] into nt parts along its longer side; calls fn(t, m0, m1, n0, n1) for each part,
// t being the thread that runs it (parts are sized for nt threads: a smaller team runs several
// parts per thread, so no part outgrows the tile of the thread that runs it).
template <class F>
void split_c(int M, int N, int nt, F fn) {
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    const int t = omp_get_thread_num(), team = omp_get_num_threads();
    for (int part = t; part < nt; part += team) {
      int lo, hi;
      if (N >= M) {
        share(N, part, nt, &lo, &hi);
        fn(t, 0, M, lo, hi);
      } else {
        share(M, part, nt, &lo, &hi);
        fn(t, lo, hi, 0, N);
      }
    }
  }
}

// The conversion rows, compiled for the running CPU's widest vectors (the baseline build's SSE2
// loops were ~6% of the CPU demo's time).
MN_HOST_ISA_CLONES
void widen_row(float* d, const mn_bf16* s, int n) {
  for (int c = 0; c < n; c++) d[c] = bf16_to_f32(s[c]);
}
// c = p + beta * c, rounded to bf16 (with beta == 0 the old c is not read: it may be NaN garbage)
MN_HOST_ISA_CLONES
void combine_row_bf16(mn_bf16* c, const float* p, float beta, int n) {
  if (beta != 0.0f)
    for (int i = 0; i < n; i++) c[i] = f32_to_bf16(p[i] + beta * bf16_to_f32(c[i]));
  else
    for (int i = 0; i < n; i++) c[i] = f32_to_bf16(p[i]);
}
// c = p + beta * c in fp32 (beta != 0 here: with beta == 0, sgemm writes an fp32 C directly)
MN_HOST_ISA_CLONES
void combine_row_f32(float* c, const float* p, float beta, int n) {
  for (int i = 0; i < n; i++) c[i] = p[i] + beta * c[i];
}

// rows x cols of bf16 (leading dimension ld) widened into a dense fp32 [rows, cols].
void widen(float* dst, const mn_bf16* src, int rows, int cols, int ld, int nt) {
#pragma omp parallel for num_threads(nt) if (nt > 1 && (int64_t)rows * cols > 100000)
  for (int r = 0; r < rows; r++) widen_row(dst + (int64_t)r * cols, src + (int64_t)r * ld, cols);
}
}  // namespace

MN_API int mn_gemm_bf16(int trans_a, int trans_b, int M, int N, int K, float alpha, mn_bf16* A,
                        int lda, int64_t stride_a, mn_bf16* B, int ldb, int64_t stride_b,
                        float beta, void* C, int ldc, int64_t stride_c, int c_bf16, int batch,
                        void*) {
  if (int rc = gemm_check("gemm", trans_a, trans_b, M, N, K, A, lda, stride_a, B, ldb, stride_b, C,
                          ldc, stride_c, batch))
    return rc;
  std::lock_guard<std::mutex> lock(gemm_mutex);
  blas_one_thread();
  const int nt = thread_count(M, N, K);
  // A and B widened as stored (no transposes here: sgemm takes them as flags)
  const int rows_a = trans_a ? K : M, cols_a = trans_a ? M : K;
  const int rows_b = trans_b ? N : K, cols_b = trans_b ? K : N;
  float* wa = widened_a.get((size_t)rows_a * cols_a);
  float* wb = widened_b.get((size_t)rows_b * cols_b);
  // Product tiles: fp32 C with beta == 0 needs none; else each thread's block of C, cut into
  // row ranges of at most 2^21 floats (8 MiB) but at least 1024 rows: every sgemm call packs its
  // whole B block again, which costs as much as the multiply when the rows are few.
  const bool direct = !c_bf16 && beta == 0.0f;
  const int block_rows = N >= M ? M : std::min(M, ((M + 15) / 16 + nt - 1) / nt * 16);
  const int tile_cols = N >= M ? std::min(N, ((N + 15) / 16 + nt - 1) / nt * 16) : N;
  const int tile_rows = std::min(block_rows, std::max(1024, (1 << 21) / tile_cols));
  bool ok = wa && wb;
  for (int t = 0; t < nt && !direct && ok; t++) ok = tiles[t].get((size_t)tile_rows * tile_cols);
  if (!ok) return mn_fail(MN_ERR_OUT_OF_MEMORY, "gemm: out of memory for the fp32 operands");
  const Operand a{wa, cols_a, trans_a}, b{wb, cols_b, trans_b};

  for (int bi = 0; bi < batch; bi++) {
    if (bi == 0 || stride_a != 0) widen(wa, A + bi * stride_a, rows_a, cols_a, lda, nt);
    if (bi == 0 || stride_b != 0) widen(wb, B + bi * stride_b, rows_b, cols_b, ldb, nt);
    if (direct) {
      float* Ci = (float*)C + bi * stride_c;
      split_c(M, N, nt, [&](int, int m0, int m1, int n0, int n1) {
        sgemm_block(m0, m1, n0, n1, K, alpha, a, b, 0.0f, Ci, ldc);
      });
      continue;
    }
    split_c(M, N, nt, [&](int t, int m0, int m1, int n0, int n1) {
      float* p = tiles[t].p;
      const int w = n1 - n0;
      for (int r0 = m0; r0 < m1; r0 += tile_rows) {
        const int r1 = std::min(m1, r0 + tile_rows);
        // the product of rows [r0, r1) into the tile (its row r is C's row r0 + r)
        sgemm_block(0, r1 - r0, 0, w, K, alpha, Operand{a.rows_from(r0), a.ld, a.trans},
                    Operand{b.cols_from(n0), b.ld, b.trans}, 0.0f, p, w);
        // C = product + beta * C
        for (int r = r0; r < r1; r++) {
          const float* pr = p + (int64_t)(r - r0) * w;
          const int64_t row = bi * stride_c + (int64_t)r * ldc + n0;
          if (c_bf16) combine_row_bf16((mn_bf16*)C + row, pr, beta, w);
          else combine_row_f32((float*)C + row, pr, beta, w);
        }
      }
    });
  }
  return 0;
}

// fp32 operands go to sgemm as they are (no copies): row-major, the transposes as BLAS flags,
// split over our threads as above.
MN_API int mn_gemm_f32(int trans_a, int trans_b, int M, int N, int K, float alpha, float* A,
                       int lda, int64_t stride_a, float* B, int ldb, int64_t stride_b, float beta,
                       float* C, int ldc, int64_t stride_c, int batch, void*) {
  if (int rc = gemm_check("gemm_f32", trans_a, trans_b, M, N, K, A, lda, stride_a, B, ldb,
                          stride_b, C, ldc, stride_c, batch))
    return rc;
  blas_one_thread();
  const int nt = thread_count(M, N, K);
  for (int bi = 0; bi < batch; bi++) {
    float* Ci = C + bi * stride_c;
    // beta == 0 never reads C (it may be NaN garbage): written as zeros first, so the result
    // cannot depend on whether this BLAS reads C when beta is 0.
    if (beta == 0.0f)
      for (int m = 0; m < M; m++) std::fill(Ci + (int64_t)m * ldc, Ci + (int64_t)m * ldc + N, 0.0f);
    const Operand a{A + bi * stride_a, lda, trans_a}, b{B + bi * stride_b, ldb, trans_b};
    split_c(M, N, nt, [&](int, int m0, int m1, int n0, int n1) {
      sgemm_block(m0, m1, n0, n1, K, alpha, a, b, beta, Ci, ldc);
    });
  }
  return 0;
}
