/* The keyed random streams of tram (dropout masks, TRAM-x / R3F noise), one ChaCha8 block at a
 * time, so that a CUDA thread can produce any block of any row on its own.
 *
 * Shared by the CUDA kernels (keyed_rng.cu, compiled to PTX by build.rs with the `cuda`
 * feature) and by a host build with the system C compiler (tests/keyed_host.rs), which checks
 * this code against rand_chacha and the Rust CPU path without a GPU. Written in the common
 * subset of C99 and CUDA C++: no includes on the device, no C++ features.
 *
 * The stream of row `example` of draw `draw` is rand_chacha's `ChaCha8Rng::from_seed(key)`
 * (rand_chacha 0.9), key = the little-endian bytes of the u64s (seed, domain, draw, example):
 * the ChaCha state is the four constants, the key as eight little-endian u32 words, a 64-bit
 * block counter in words 12 (low) and 13 (high) starting at 0, and stream id 0 in words 14 and
 * 15; 8 rounds (4 double rounds); the output block is the permuted state plus the input state.
 * Word w of the stream is word w % 16 of block w / 16, and rand's `next_u64` reads two words,
 * low word first: u64 number j of the stream is words 2j (low) and 2j + 1 (high), so block b
 * holds u64s 8b .. 8b + 7 and every element below is a function of one block.
 */
#ifndef TRAM_KEYED_RNG_H
#define TRAM_KEYED_RNG_H

#ifdef __CUDACC__
#define TRAM_FN __device__ __forceinline__
#else
#include <math.h>
#define TRAM_FN static inline
#endif

typedef unsigned int tram_u32;
typedef unsigned long long tram_u64;

/* 2^-53: rand's `StandardUniform` f64 is (x >> 11) * 2^-53, in [0, 1). */
#define TRAM_TWO_M53 (1.0 / 9007199254740992.0)
/* 2 pi, the nearest double. */
#define TRAM_TWO_PI 6.283185307179586

TRAM_FN tram_u32 tram_rotl(tram_u32 x, int n) { return (x << n) | (x >> (32 - n)); }

#define TRAM_QR(a, b, c, d)                                                                        \
    a += b; d = tram_rotl(d ^ a, 16);                                                              \
    c += d; b = tram_rotl(b ^ c, 12);                                                              \
    a += b; d = tram_rotl(d ^ a, 8);                                                               \
    c += d; b = tram_rotl(b ^ c, 7);

/* Block `block` (the block counter) of the keyed ChaCha8 stream into out[16]. */
TRAM_FN void tram_keyed_block(tram_u64 seed, tram_u64 domain, tram_u64 draw, tram_u64 example, tram_u64 block,
                              tram_u32 out[16]) {
    tram_u32 in[16];
    int i;
    in[0] = 0x61707865u; in[1] = 0x3320646eu; in[2] = 0x79622d32u; in[3] = 0x6b206574u;
    in[4] = (tram_u32)seed; in[5] = (tram_u32)(seed >> 32);
    in[6] = (tram_u32)domain; in[7] = (tram_u32)(domain >> 32);
    in[8] = (tram_u32)draw; in[9] = (tram_u32)(draw >> 32);
    in[10] = (tram_u32)example; in[11] = (tram_u32)(example >> 32);
    in[12] = (tram_u32)block; in[13] = (tram_u32)(block >> 32);
    in[14] = 0u; in[15] = 0u;
    for (i = 0; i < 16; i++) out[i] = in[i];
    for (i = 0; i < 4; i++) {
        TRAM_QR(out[0], out[4], out[8], out[12]);
        TRAM_QR(out[1], out[5], out[9], out[13]);
        TRAM_QR(out[2], out[6], out[10], out[14]);
        TRAM_QR(out[3], out[7], out[11], out[15]);
        TRAM_QR(out[0], out[5], out[10], out[15]);
        TRAM_QR(out[1], out[6], out[11], out[12]);
        TRAM_QR(out[2], out[7], out[8], out[13]);
        TRAM_QR(out[3], out[4], out[9], out[14]);
    }
    for (i = 0; i < 16; i++) out[i] += in[i];
}

/* u64 number j (0..8) of a block: words 2j (low) and 2j + 1 (high), as rand's next_u64. */
TRAM_FN tram_u64 tram_u64_of(const tram_u32 w[16], int j) {
    return (tram_u64)w[2 * j] | ((tram_u64)w[2 * j + 1] << 32);
}

/* rand's f64 `StandardUniform` of one u64: [0, 1), exact. */
TRAM_FN double tram_unit(tram_u64 x) { return (double)(x >> 11) * TRAM_TWO_M53; }

/* Dropout: keep[j] = (element 8b + j of the row is kept), i.e. rand's `random::<f64>() < keep`
 * for u64 number 8b + j of the row's stream (the CPU path's draw, one u64 per element). */
TRAM_FN void tram_dropout_block(const tram_u32 w[16], double keep, int kept[8]) {
    int j;
    for (j = 0; j < 8; j++) kept[j] = tram_unit(tram_u64_of(w, j)) < keep;
}

/* Noise: the elements 8b .. 8b + 7 of a row from its block b, scaled by sigma in f32.
 * normal != 0: Box-Muller in f64 over pairs: elements 2k and 2k + 1 of the row take u64s 2k
 * (a) and 2k + 1 (b) of the stream, u1 = ((a >> 11) + 1) 2^-53 in (0, 1], u2 = (b >> 11) 2^-53,
 * r = sqrt(-2 ln u1), t = 2 pi u2, z(2k) = r cos t, z(2k + 1) = r sin t.
 * normal == 0: U(-1, 1) as 2 (a >> 11) 2^-53 - 1 (exact) for element j from u64 j.
 * Each value is rounded to f32 and multiplied by sigma (an f32). */
TRAM_FN void tram_noise_block(const tram_u32 w[16], int normal, float sigma, float out[8]) {
    int j;
    if (normal) {
        for (j = 0; j < 8; j += 2) {
            double u1 = (double)((tram_u64_of(w, j) >> 11) + 1) * TRAM_TWO_M53;
            double u2 = tram_unit(tram_u64_of(w, j + 1));
            double r = sqrt(-2.0 * log(u1));
            double t = TRAM_TWO_PI * u2;
            out[j] = (float)(r * cos(t)) * sigma;
            out[j + 1] = (float)(r * sin(t)) * sigma;
        }
    } else {
        for (j = 0; j < 8; j++) out[j] = (float)(2.0 * tram_unit(tram_u64_of(w, j)) - 1.0) * sigma;
    }
}

#endif
