#ifndef VFFN_CKERNELS_H
#define VFFN_CKERNELS_H
#include <stddef.h>

/// Widens `n` little-endian bfloat16 values at `src` (any alignment) to f32: the top half of
/// each f32's bit pattern, so exact. Uses AVX-512 or AVX2 where the CPU has them.
void vffn_bf16_to_f32(const void *src, float *dst, size_t n);

/// Widens `n` little-endian IEEE half values to f32 with the CPU's F16C instructions and
/// returns 1, or returns 0 without writing when the CPU has no F16C (the caller converts).
int vffn_f16_to_f32(const void *src, float *dst, size_t n);

#endif
