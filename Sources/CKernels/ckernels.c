// Weight decoding for the forward pass. The checkpoint's bf16/f16 weights are widened to f32 a
// block at a time right before each matrix product, so this runs once per weight per product
// and must keep up with memory bandwidth; the compiler vectorizes these loops for each target
// below, and the entry points pick the widest one the CPU has at run time.
#include "ckernels.h"
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

static void bf16_generic(const void *src, float *dst, size_t n) { BF16_LOOP }

#if defined(__x86_64__)
#include <immintrin.h>

__attribute__((target("avx512f,avx512bw"))) static void bf16_avx512(const void *src, float *dst, size_t n) { BF16_LOOP }
__attribute__((target("avx2"))) static void bf16_avx2(const void *src, float *dst, size_t n) { BF16_LOOP }

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

// ---- y = x W^T with W in bf16, read in place ----
//
// For the forward pass's products on bf16 checkpoints: OpenBLAS needs f32 operands, so each
// product decoded W to f32 and sgemm packed it again, a pass over W per call that costs more
// than the multiply when few tokens take a depth loop. This kernel widens W in registers.
// Tiles of 4 weight rows x 6 tokens keep 24 accumulators of 16 lanes over the whole K; 64-row
// chunks of W stay in L2 while every token block passes over them.

#define TILE 4
#define CHUNK 64

__attribute__((target("avx512f,avx512bw,avx512vl,fma"))) static inline __m512 bf16_load(const uint16_t *p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}

__attribute__((target("avx512f,avx512bw,avx512vl,fma"))) static inline __m512 bf16_load_masked(const uint16_t *p, __mmask16 m) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
}

// The horizontal sums of four accumulators, into y[0..3]: pairwise unpacks leave, in each 128-bit
// lane, that lane's sums for the four, and the four lanes are then added. Each output's sum is a
// fixed order over its own accumulator's lanes, whatever the other three hold, so an edge tile
// (zeros in place of missing rows) rounds every output exactly as a full tile does, and results
// do not depend on how the products are split among threads.
__attribute__((target("avx512f,avx512bw,avx512vl,fma"))) static inline __m128 reduce4(__m512 a0, __m512 a1, __m512 a2, __m512 a3) {
    __m512 s01 = _mm512_add_ps(_mm512_unpacklo_ps(a0, a1), _mm512_unpackhi_ps(a0, a1));
    __m512 s23 = _mm512_add_ps(_mm512_unpacklo_ps(a2, a3), _mm512_unpackhi_ps(a2, a3));
    __m512 s = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(s01), _mm512_castps_pd(s23))),
                             _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(s01), _mm512_castps_pd(s23))));
    __m256 h = _mm256_add_ps(_mm512_castps512_ps256(s), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(s), 1)));
    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

// A full tile of 4 weight rows x `tokens` tokens (a constant wherever it is inlined, so the loops
// unroll and the accumulators stay in registers). The wide tile is 4 x 6: 24 accumulators, each
// widened weight vector used by 6 tokens (4 x 4 used it 4 times, and spent a third of its issue
// slots widening and loading); 4 x 4 takes 4 or 5 leftover tokens.
#define TOKENS 6

__attribute__((target("avx512f,avx512bw,avx512vl,fma"), always_inline)) static inline void tile4xn(
    const float *x, size_t ldx, const uint16_t *w, size_t ldw, float *y, size_t ldy, size_t K, const int tokens) {
    __m512 acc[TOKENS][TILE];
    for (int i = 0; i < tokens; i++)
        for (int j = 0; j < TILE; j++) acc[i][j] = _mm512_setzero_ps();
    size_t k = 0;
    for (; k + 16 <= K; k += 16) {
        __m512 wv[TILE];
        for (int j = 0; j < TILE; j++) wv[j] = bf16_load(w + j * ldw + k);
        for (int i = 0; i < tokens; i++) {
            __m512 xv = _mm512_loadu_ps(x + i * ldx + k);
            for (int j = 0; j < TILE; j++) acc[i][j] = _mm512_fmadd_ps(xv, wv[j], acc[i][j]);
        }
    }
    if (k < K) {
        __mmask16 m = (__mmask16)((1u << (K - k)) - 1);
        __m512 wv[TILE];
        for (int j = 0; j < TILE; j++) wv[j] = bf16_load_masked(w + j * ldw + k, m);
        for (int i = 0; i < tokens; i++) {
            __m512 xv = _mm512_maskz_loadu_ps(m, x + i * ldx + k);
            for (int j = 0; j < TILE; j++) acc[i][j] = _mm512_fmadd_ps(xv, wv[j], acc[i][j]);
        }
    }
    for (int i = 0; i < tokens; i++) _mm_storeu_ps(y + i * ldy, reduce4(acc[i][0], acc[i][1], acc[i][2], acc[i][3]));
}

__attribute__((target("avx512f,avx512bw,avx512vl,fma"))) static void tile4x6(const float *x, size_t ldx, const uint16_t *w, size_t ldw,
                                                                               float *y, size_t ldy, size_t K) {
    tile4xn(x, ldx, w, ldw, y, ldy, K, TOKENS);
}

__attribute__((target("avx512f,avx512bw,avx512vl,fma"))) static void tile4x4(const float *x, size_t ldx, const uint16_t *w, size_t ldw,
                                                                               float *y, size_t ldy, size_t K) {
    tile4xn(x, ldx, w, ldw, y, ldy, K, TILE);
}

// An edge tile of tr tokens x nr rows (at most 6 and 4): the same arithmetic for each output it has.
__attribute__((target("avx512f,avx512bw,avx512vl,fma"))) static void tile_edge(const float *x, size_t ldx, const uint16_t *w, size_t ldw,
                                                                                float *y, size_t ldy, size_t K, size_t tr, size_t nr) {
    for (size_t i = 0; i < tr; i++) {
        __m512 acc[TILE] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
        for (size_t j = 0; j < nr; j++) {
            size_t k = 0;
            for (; k + 16 <= K; k += 16) acc[j] = _mm512_fmadd_ps(_mm512_loadu_ps(x + i * ldx + k), bf16_load(w + j * ldw + k), acc[j]);
            if (k < K) {
                __mmask16 m = (__mmask16)((1u << (K - k)) - 1);
                acc[j] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, x + i * ldx + k), bf16_load_masked(w + j * ldw + k, m), acc[j]);
            }
        }
        float out[TILE];
        _mm_storeu_ps(out, reduce4(acc[0], acc[1], acc[2], acc[3]));
        for (size_t j = 0; j < nr; j++) y[i * ldy + j] = out[j];
    }
}

__attribute__((target("avx512f,avx512bw,avx512vl,fma"))) static void gemm_bf16_avx512(const float *x, size_t ldx, const uint16_t *w, size_t ldw,
                                                                                       float *y, size_t ldy, size_t T, size_t N, size_t K) {
    for (size_t n0 = 0; n0 < N; n0 += CHUNK) {
        size_t n1 = n0 + CHUNK < N ? n0 + CHUNK : N;
        for (size_t t = 0; t < T; t += TOKENS) {
            size_t tr = T - t < TOKENS ? T - t : TOKENS;
            for (size_t n = n0; n < n1; n += TILE) {
                size_t nr = n1 - n < TILE ? n1 - n : TILE;
                if (tr == TOKENS && nr == TILE) tile4x6(x + t * ldx, ldx, w + n * ldw, ldw, y + t * ldy + n, ldy, K);
                else if (tr >= TILE && nr == TILE) {
                    tile4x4(x + t * ldx, ldx, w + n * ldw, ldw, y + t * ldy + n, ldy, K);
                    if (tr > TILE) tile_edge(x + (t + TILE) * ldx, ldx, w + n * ldw, ldw, y + (t + TILE) * ldy + n, ldy, K, tr - TILE, nr);
                } else tile_edge(x + t * ldx, ldx, w + n * ldw, ldw, y + t * ldy + n, ldy, K, tr, nr);
            }
        }
    }
}

int vffn_gemm_bf16_available(void) {
    static int has = -1;
    if (has < 0) has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
    return has;
}

void vffn_gemm_bf16(const float *x, size_t ldx, const void *w, size_t ldw, float *y, size_t ldy, size_t T, size_t N, size_t K) {
    gemm_bf16_avx512(x, ldx, (const uint16_t *)w, ldw, y, ldy, T, N, K);
}

#else  // Not x86-64: plain loops, and no bf16 kernel (the forward widens and calls sgemm).

void vffn_bf16_to_f32(const void *src, float *dst, size_t n) { bf16_generic(src, dst, n); }

int vffn_f16_to_f32(const void *src, float *dst, size_t n) { (void)src; (void)dst; (void)n; return 0; }

int vffn_gemm_bf16_available(void) { return 0; }

void vffn_gemm_bf16(const float *x, size_t ldx, const void *w, size_t ldw, float *y, size_t ldy, size_t T, size_t N, size_t K) {
    (void)x; (void)ldx; (void)w; (void)ldw; (void)y; (void)ldy; (void)T; (void)N; (void)K;
}
#endif
