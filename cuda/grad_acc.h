/* The `accumulate` argument of the backward entry points (kernels.h), shared by cuda/emu kernels
 * and the cpu references so both decode it alike. Bit i refers to the i-th gradient output in
 * signature order: set = add into it, clear = overwrite it without reading it (the tape hands out
 * gradient buffers uninitialised, so the old contents may be NaN: `old * 0 + v` would keep them). */
#pragma once

#define MN_ACC_BIT(mask, i) ((int)((((unsigned)(mask)) >> (i)) & 1u))
/* ref: an lvalue (e.g. dx[i]); read only when acc is set */
#define MN_GRAD_STORE(ref, v, acc) ((ref) = (acc) ? (ref) + (v) : (v))
