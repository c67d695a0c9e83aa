// Tensor-core instruction wrappers: thin inline-PTX under nvcc, emulated warp collectives under the
// CUDA emulator (-DMN_EMU). Include after common.cuh. Every function must be called by all 32 lanes
// of a full warp (as the .sync.aligned instructions require).
//
// Fragment layouts, from the PTX ISA ("Warp-level matrix fragments"):
//  * mma.m16n8k16 with .bf16 inputs (PTX ISA 9.7.14.5.8 in the 9.x manuals, 9.7.13.4.8 in older
//    ones, "Matrix Fragments for mma.m16n8k16 with floating point type"; the A formula below was
//    compared with a transcription of that section on 2026-11-28; B and C were not in the excerpt
//    read, so the first real-GPU run of cuda/mma_test.ts is their check): groupID = lane >> 2, tig = lane % 4 (thread id in group).
//    A (16x16, .row): 4 .b32 regs, each 2 bf16 (low half = element 0). Element i in 0..7 (reg i/2):
//      row = groupID + 8 * ((i / 2) % 2)   (a0,a1,a4,a5: groupID; a2,a3,a6,a7: groupID + 8)
//      col = tig * 2 + (i % 2) + 8 * (i / 4)
//    B (16x8, .col): 2 .b32 regs. Element i in 0..3: row (k) = tig * 2 + (i % 2) + 8 * (i / 2),
//      col (n) = groupID.
//    C/D (16x8 f32): 4 floats. Element i in 0..3: row = groupID + 8 * (i / 2), col = tig * 2 + i % 2.
//  * ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16 (PTX ISA 9.7.13.4.15, "ldmatrix"): lanes
//    8j..8j+7 give the addresses of rows 0..7 of matrix j (for .x1 only lanes 0-7 are used, .x2
//    lanes 0-15). Destination reg j of lane l holds matrix j's elements (row l/4, cols 2(l%4) and
//    2(l%4)+1) in its low and high halves; with .trans the matrix is transposed first, i.e. it
//    holds elements (row 2(l%4), col l/4) and (row 2(l%4)+1, col l/4).
#pragma once

#include <stdint.h>

#ifdef MN_EMU

// bf16 bits (the low or high half of a .b32 register) to float: exact.
inline float mn_emu_bf16_bits_to_f32(uint32_t bits16) {
  uint32_t u = bits16 << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline void mn_mma_m16n8k16_bf16(float d[4], const uint32_t a[4], const uint32_t b[2],
                                 const float c[4]) {
  struct Frag {
    uint32_t a[4], b[2];
    float c[4];
  };
  Frag mine;
  for (int i = 0; i < 4; i++) mine.a[i] = a[i], mine.c[i] = c[i];
  for (int i = 0; i < 2; i++) mine.b[i] = b[i];
  Frag all[32];
  emu::warp_allgather(&mine, sizeof mine, all);
  float A[16][16], B[16][8], C[16][8];
  for (int l = 0; l < 32; l++) {
    int g = l >> 2, t = l & 3;
    for (int i = 0; i < 8; i++) {
      uint32_t bits = (all[l].a[i / 2] >> (16 * (i % 2))) & 0xffffu;
      A[g + 8 * ((i / 2) % 2)][t * 2 + (i % 2) + 8 * (i / 4)] = mn_emu_bf16_bits_to_f32(bits);
    }
    for (int i = 0; i < 4; i++) {
      uint32_t bits = (all[l].b[i / 2] >> (16 * (i % 2))) & 0xffffu;
      B[t * 2 + (i % 2) + 8 * (i / 2)][g] = mn_emu_bf16_bits_to_f32(bits);
      C[g + 8 * (i / 2)][t * 2 + i % 2] = all[l].c[i];
    }
  }
  int lane = (int)(emu::t_linear_tid % 32);
  int g = lane >> 2, t = lane & 3;
  for (int i = 0; i < 4; i++) {
    int row = g + 8 * (i / 2), col = t * 2 + i % 2;
    // Products of bf16 values are exact in fp32; the sum runs over k in order 0..15, then + c.
    float acc = 0.f;
    for (int k = 0; k < 16; k++) acc += A[row][k] * B[k][col];
    d[i] = acc + C[row][col];
  }
}

// Shared pieces of the ldmatrix emulation: nmat matrices, lane 8j+r points at row r of matrix j.
inline void mn_emu_ldmatrix(uint32_t* r, int nmat, const void* smem_row_ptr, bool trans) {
  const void* all[32];
  emu::warp_allgather(&smem_row_ptr, sizeof smem_row_ptr, all);
  int lane = (int)(emu::t_linear_tid % 32);
  for (int j = 0; j < nmat; j++) {
    uint16_t e[2];
    for (int h = 0; h < 2; h++) {
      int row = trans ? 2 * (lane % 4) + h : lane / 4;
      int col = trans ? lane / 4 : 2 * (lane % 4) + h;
      std::memcpy(&e[h], (const unsigned char*)all[8 * j + row] + 2 * col, 2);
    }
    r[j] = (uint32_t)e[0] | ((uint32_t)e[1] << 16);
  }
}

inline void mn_ldmatrix_x1(uint32_t r[1], const void* p) { mn_emu_ldmatrix(r, 1, p, false); }
inline void mn_ldmatrix_x2(uint32_t r[2], const void* p) { mn_emu_ldmatrix(r, 2, p, false); }
inline void mn_ldmatrix_x4(uint32_t r[4], const void* p) { mn_emu_ldmatrix(r, 4, p, false); }
inline void mn_ldmatrix_x1_trans(uint32_t r[1], const void* p) { mn_emu_ldmatrix(r, 1, p, true); }
inline void mn_ldmatrix_x2_trans(uint32_t r[2], const void* p) { mn_emu_ldmatrix(r, 2, p, true); }
inline void mn_ldmatrix_x4_trans(uint32_t r[4], const void* p) { mn_emu_ldmatrix(r, 4, p, true); }

#else  // nvcc: the instructions themselves (sm_80+)

__device__ inline void mn_mma_m16n8k16_bf16(float d[4], const uint32_t a[4], const uint32_t b[2],
                                            const float c[4]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
        "f"(c[2]), "f"(c[3]));
}

__device__ inline uint32_t mn_smem_addr(const void* p) {
  return (uint32_t)__cvta_generic_to_shared(p);
}

__device__ inline void mn_ldmatrix_x1(uint32_t r[1], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n"
               : "=r"(r[0])
               : "r"(mn_smem_addr(p)));
}
__device__ inline void mn_ldmatrix_x2(uint32_t r[2], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(mn_smem_addr(p)));
}
__device__ inline void mn_ldmatrix_x4(uint32_t r[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(mn_smem_addr(p)));
}
__device__ inline void mn_ldmatrix_x1_trans(uint32_t r[1], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n"
               : "=r"(r[0])
               : "r"(mn_smem_addr(p)));
}
__device__ inline void mn_ldmatrix_x2_trans(uint32_t r[2], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(mn_smem_addr(p)));
}
__device__ inline void mn_ldmatrix_x4_trans(uint32_t r[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(mn_smem_addr(p)));
}

#endif
