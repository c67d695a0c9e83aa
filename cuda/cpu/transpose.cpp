#include "cpu_common.h"

MN_API int mn_transpose(float* out, float* x, int R, int C, void*) {
  MN_REQUIRE(R > 0 && C > 0, "transpose: bad shape [%d, %d]", R, C);
  MN_REQUIRE(out != x, "transpose: in-place is not supported");
  for (int r = 0; r < R; r++)
    for (int c = 0; c < C; c++) out[(int64_t)c * R + r] = x[(int64_t)r * C + c];
  return 0;
}
