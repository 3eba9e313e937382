#ifndef VFFN_CKERNELS_H
#define VFFN_CKERNELS_H
#include <stddef.h>

/// Widens `n` little-endian bfloat16 values at `src` (any alignment) to f32: the top half of
/// each f32's bit pattern, so exact. Uses AVX-512 or AVX2 where the CPU has them.
void vffn_bf16_to_f32(const void *src, float *dst, size_t n);

/// Widens `n` little-endian IEEE half values to f32 with the CPU's F16C instructions and
/// returns 1, or returns 0 without writing when the CPU has no F16C (the caller converts).
int vffn_f16_to_f32(const void *src, float *dst, size_t n);

/// Whether this CPU runs `vffn_gemm_bf16` (AVX-512 F, BW and VL).
int vffn_gemm_bf16_available(void);

/// `y[t][n] = sum_k x[t][k] * w[n][k]` for t < T, n < N: f32 activations `x` (row stride `ldx`)
/// times bfloat16 weights `w` (row stride `ldw`, in elements, any alignment), into f32 `y` (row
/// stride `ldy`). Only when `vffn_gemm_bf16_available()`.
void vffn_gemm_bf16(const float *x, size_t ldx, const void *w, size_t ldw, float *y, size_t ldy, size_t T, size_t N, size_t K);

#endif
