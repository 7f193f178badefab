// CUDA kernels of tram's keyed random streams (README "GPU (CUDA)"): dropout masks bit for bit
// the CPU's, and TRAM-x / R3F noise by the same counter-based scheme as the CPU. One thread per
// (row, ChaCha8 block): block b of row r gives the row's elements 8b .. 8b + 7
// (keyed_rng.h says which words feed which element). Compiled to PTX by build.rs (feature
// `cuda`, nvcc --fmad=false: no contraction, as the host build); launched by src/keyed.rs with
// blocks of up to 1024 threads (candle's LaunchConfig::for_num_elems), hence the launch bounds
// (at most 64 registers a thread; ptxas reports 32 for the masks and 48 for the noise on sm_90).
#include "keyed_rng.h"

// Row r of the launch is example `offset + r` of the key; `per_row` elements per row,
// `blocks` = ceil(per_row / 8) threads per row.
#define TRAM_THREAD_ROW_BLOCK                                                                      \
    tram_u64 t = (tram_u64)blockIdx.x * blockDim.x + threadIdx.x;                                  \
    if (t >= rows * blocks) return;                                                                \
    tram_u64 r = t / blocks, b = t % blocks;                                                       \
    tram_u32 w[16];                                                                                \
    tram_keyed_block(seed, domain, draw, offset + r, b, w);                                        \
    tram_u64 base = r * per_row + 8 * b;                                                           \
    int n = per_row - 8 * b < 8 ? (int)(per_row - 8 * b) : 8;

// The dropout mask: `bits` (the scale 1 / keep in the tensor's dtype, as raw bits) where the
// element is kept, 0 where dropped; T is an unsigned integer of the dtype's width.
#define TRAM_DROPOUT_MASK(NAME, T)                                                                 \
    extern "C" __global__ void __launch_bounds__(1024) NAME(T *out, tram_u64 rows, tram_u64 per_row, tram_u64 blocks,      \
                                    tram_u64 seed, tram_u64 domain, tram_u64 draw,                 \
                                    tram_u64 offset, double keep, tram_u64 bits) {                 \
        TRAM_THREAD_ROW_BLOCK                                                                      \
        int kept[8];                                                                               \
        tram_dropout_block(w, keep, kept);                                                         \
        for (int j = 0; j < n; j++) out[base + j] = kept[j] ? (T)bits : (T)0;                     \
    }

TRAM_DROPOUT_MASK(tram_dropout_mask_b16, unsigned short)
TRAM_DROPOUT_MASK(tram_dropout_mask_b32, unsigned int)
TRAM_DROPOUT_MASK(tram_dropout_mask_b64, unsigned long long)

// Noise (f32): normal != 0 N(0, sigma^2) by Box-Muller, else U(-sigma, sigma).
extern "C" __global__ void __launch_bounds__(1024) tram_keyed_noise_f32(float *out, tram_u64 rows, tram_u64 per_row, tram_u64 blocks,
                                                tram_u64 seed, tram_u64 domain, tram_u64 draw, tram_u64 offset,
                                                int normal, float sigma) {
    TRAM_THREAD_ROW_BLOCK
    float v[8];
    tram_noise_block(w, normal, sigma, v);
    for (int j = 0; j < n; j++) out[base + j] = v[j];
}
