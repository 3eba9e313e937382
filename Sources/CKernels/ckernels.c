// Weight decoding for the forward pass. The checkpoint's bf16/f16 weights are widened to f32 a
// block at a time right before each matrix product, so this runs once per weight per product
// and must keep up with memory bandwidth; the compiler vectorizes these loops for each target
// below, and the entry points pick the widest one the CPU has at run time.
#include "ckernels.h"
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#define BF16_LOOP                                                   \
    const uint8_t *s = (const uint8_t *)src;                        \
    for (size_t i = 0; i < n; i++) {                                \
        uint16_t h;                                                 \
        memcpy(&h, s + 2 * i, 2);                                   \
        uint32_t u = (uint32_t)h << 16;                             \
        memcpy(dst + i, &u, 4);                                     \
    }

__attribute__((target("avx512f,avx512bw"))) static void bf16_avx512(const void *src, float *dst, size_t n) { BF16_LOOP }
__attribute__((target("avx2"))) static void bf16_avx2(const void *src, float *dst, size_t n) { BF16_LOOP }
static void bf16_generic(const void *src, float *dst, size_t n) { BF16_LOOP }

void vffn_bf16_to_f32(const void *src, float *dst, size_t n) {
    static int level = -1;
    if (level < 0) level = __builtin_cpu_supports("avx512bw") ? 2 : __builtin_cpu_supports("avx2") ? 1 : 0;
    if (level == 2) bf16_avx512(src, dst, n);
    else if (level == 1) bf16_avx2(src, dst, n);
    else bf16_generic(src, dst, n);
}

__attribute__((target("avx,f16c"))) static void f16_f16c(const void *src, float *dst, size_t n) {
    const uint8_t *s = (const uint8_t *)src;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m128i h = _mm_loadu_si128((const __m128i *)(s + 2 * i));
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
    }
    for (; i < n; i++) {
        uint16_t h;
        memcpy(&h, s + 2 * i, 2);
        dst[i] = _cvtsh_ss(h);
    }
}

int vffn_f16_to_f32(const void *src, float *dst, size_t n) {
    static int has = -1;
    if (has < 0) has = __builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx");
    if (!has) return 0;
    f16_f16c(src, dst, n);
    return 1;
}
