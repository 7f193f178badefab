// CUDA kernels of tram-kernels' fused ops (f32): the masked attention softmax, layer norm,
// log-softmax and cross-entropy rows, forward and backward. Each is one pass over memory where
// the composed candle path (src/composed.rs) takes eight to twelve. The arithmetic follows the
// CPU kernels in src/ (same order of the reductions per row up to the split over lanes, f32
// accumulation, `expf` / `logf` / `sqrtf`), so the two agree within a few ulp; the parity tests
// are tests/device.rs (run wherever a GPU is present).
//
// Compiled to PTX by build.rs with the pinned nvcc when the `cuda` feature is on, embedded in
// the library and loaded through candle's CUDA device (src/cuda.rs). Every input is contiguous
// and row-major; a row is the last dimension.
#include <stdint.h>

#define FULL_MASK 0xffffffffu

// bf16 stored as its bits (unsigned short), converted by hand (round to nearest even, as the
// `half` crate), so the kernels need no CUDA header and also run under the host emulation.
__device__ __forceinline__ float bf16_to_f32(unsigned short b) {
    union {
        unsigned int u;
        float f;
    } v;
    v.u = (unsigned int)b << 16;
    return v.f;
}

__device__ __forceinline__ unsigned short f32_to_bf16(float f) {
    union {
        unsigned int u;
        float f;
    } v;
    v.f = f;
    if ((v.u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((v.u >> 16) | 0x0040u);  // NaN stays NaN (quiet)
    const unsigned int round = 0x7fffu + ((v.u >> 16) & 1u);
    return (unsigned short)((v.u + round) >> 16);
}

// Loads and stores of f32 or bf16 elements, computing in f32.
__device__ __forceinline__ float ld(const float* p, size_t i) { return p[i]; }
__device__ __forceinline__ float ld(const unsigned short* p, size_t i) { return bf16_to_f32(p[i]); }
__device__ __forceinline__ void st(float* p, size_t i, float v) { p[i] = v; }
__device__ __forceinline__ void st(unsigned short* p, size_t i, float v) { p[i] = f32_to_bf16(v); }
__device__ __forceinline__ double ld(const double* p, size_t i) { return p[i]; }


// Sum (MAX false) or maximum (MAX true) of two values, in f32 or f64 (R).
template <bool MAX, typename R>
__device__ __forceinline__ R combine(R a, R b) { return MAX ? fmax(a, b) : a + b; }

template <bool MAX, typename R>
__device__ __forceinline__ R warp_reduce(R v) {
    for (int o = 16; o > 0; o >>= 1) v = combine<MAX>(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

__device__ __forceinline__ float warp_sum(float v) { return warp_reduce<false>(v); }
__device__ __forceinline__ float warp_max(float v) { return warp_reduce<true>(v); }

// Sum or maximum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets
// the result. `sh` holds 32 values; the trailing barrier lets the caller reuse it.
template <bool MAX, typename R>
__device__ __forceinline__ R block_reduce(R v, R* sh) {
    const unsigned lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_reduce<MAX>(v);
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    if (warp == 0) {
        R w = lane < warps ? sh[lane] : (MAX ? (R)-INFINITY : (R)0);
        w = warp_reduce<MAX>(w);
        if (lane == 0) sh[0] = w;
    }
    __syncthreads();
    const R r = sh[0];
    __syncthreads();
    return r;
}

template <typename R>
__device__ __forceinline__ R block_sum(R v, R* sh) { return block_reduce<false>(v, sh); }
template <typename R>
__device__ __forceinline__ R block_max(R v, R* sh) { return block_reduce<true>(v, sh); }

// exp and log in the compute type (f32: expf / logf, f64: exp / log).
__device__ __forceinline__ float ex(float x) { return expf(x); }
__device__ __forceinline__ double ex(double x) { return exp(x); }
__device__ __forceinline__ float lg(float x) { return logf(x); }
__device__ __forceinline__ double lg(double x) { return log(x); }

// ---------------------------------------------------------------------------------------------
// Attention softmax: one warp per row of `[rows, sk]` scores (query i = row % sq). Keys after
// `lim` are masked when `causal`; with `has_keep`, keys whose `keep[batch][j]` is 0 are masked
// (batch = row / rows_per_batch). A row with no key to attend is uniform, as on the CPU.

// Scores and probabilities in f32 or bf16 (T), f32 compute; the probabilities are computed
// from the scores in each pass (no rounded intermediate is read back).
template <typename T>
__device__ __forceinline__ void masked_softmax(const T* __restrict__ x, T* __restrict__ y, unsigned rows, unsigned sq, unsigned sk, float scale,
                                               int causal, const uint8_t* __restrict__ keep, int has_keep, unsigned rows_per_batch) {
    const unsigned row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const unsigned lane = threadIdx.x & 31;
    if (row >= rows) return;  // the whole warp leaves together
    const size_t base = (size_t)row * sk;
    const unsigned lim = causal ? min(row % sq + sk - sq + 1, sk) : sk;
    const uint8_t* k = has_keep ? keep + (size_t)(row / rows_per_batch) * sk : nullptr;
    int found = 0;
    float m = -INFINITY;
    for (unsigned j = lane; j < lim; j += 32) {
        if (!k || k[j]) {
            found = 1;
            m = fmaxf(m, ld(x, base + j) * scale);
        }
    }
    if (!__any_sync(FULL_MASK, found)) {
        const float u = 1.0f / (float)sk;
        for (unsigned j = lane; j < sk; j += 32) st(y, base + j, u);
        return;
    }
    m = warp_max(m);
    float s = 0.0f;
    for (unsigned j = lane; j < lim; j += 32) s += (!k || k[j]) ? expf(ld(x, base + j) * scale - m) : 0.0f;
    const float inv = 1.0f / warp_sum(s);
    for (unsigned j = lane; j < lim; j += 32) st(y, base + j, (!k || k[j]) ? expf(ld(x, base + j) * scale - m) * inv : 0.0f);
    for (unsigned j = lim + lane; j < sk; j += 32) st(y, base + j, 0.0f);
}

extern "C" __global__ void tram_masked_softmax_f32(const float* __restrict__ x, float* __restrict__ y, unsigned rows, unsigned sq,
                                                   unsigned sk, float scale, int causal, const uint8_t* __restrict__ keep,
                                                   int has_keep, unsigned rows_per_batch) {
    masked_softmax(x, y, rows, sq, sk, scale, causal, keep, has_keep, rows_per_batch);
}

extern "C" __global__ void tram_masked_softmax_bf16(const unsigned short* __restrict__ x, unsigned short* __restrict__ y, unsigned rows,
                                                    unsigned sq, unsigned sk, float scale, int causal, const uint8_t* __restrict__ keep,
                                                    int has_keep, unsigned rows_per_batch) {
    masked_softmax(x, y, rows, sq, sk, scale, causal, keep, has_keep, rows_per_batch);
}

// dx = scale · y ⊙ (g − Σ g y), one warp per row.
template <typename T>
__device__ __forceinline__ void softmax_bwd(const T* __restrict__ y, const T* __restrict__ g, T* __restrict__ dx, unsigned rows, unsigned n,
                                            float scale) {
    const unsigned row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const unsigned lane = threadIdx.x & 31;
    if (row >= rows) return;
    const size_t base = (size_t)row * n;
    float d = 0.0f;
    for (unsigned j = lane; j < n; j += 32) d += ld(y, base + j) * ld(g, base + j);
    d = warp_sum(d);
    for (unsigned j = lane; j < n; j += 32) st(dx, base + j, scale * ld(y, base + j) * (ld(g, base + j) - d));
}

extern "C" __global__ void tram_softmax_bwd_f32(const float* __restrict__ y, const float* __restrict__ g, float* __restrict__ dx,
                                                unsigned rows, unsigned n, float scale) {
    softmax_bwd(y, g, dx, rows, n, scale);
}

extern "C" __global__ void tram_softmax_bwd_bf16(const unsigned short* __restrict__ y, const unsigned short* __restrict__ g,
                                                 unsigned short* __restrict__ dx, unsigned rows, unsigned n, float scale) {
    softmax_bwd(y, g, dx, rows, n, scale);
}

// ---------------------------------------------------------------------------------------------
// Layer norm over rows of width d: one warp per row, two-pass moments (biased variance). Input,
// weight, bias, output and gradients in f32 or bf16 (T, one dtype), f32 compute; the weight /
// bias gradient partial sums are f32.

template <typename T>
__device__ __forceinline__ void row_moments(const T* xr, unsigned d, float eps, unsigned lane, float* mean, float* rstd) {
    float s = 0.0f;
    for (unsigned j = lane; j < d; j += 32) s += ld(xr, j);
    const float m = warp_sum(s) / (float)d;
    float v = 0.0f;
    for (unsigned j = lane; j < d; j += 32) {
        const float c = ld(xr, j) - m;
        v += c * c;
    }
    const float var = warp_sum(v) / (float)d;
    *mean = m;
    *rstd = 1.0f / sqrtf(var + eps);
}

template <typename T>
__device__ __forceinline__ void layer_norm(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b, T* __restrict__ y,
                                           unsigned rows, unsigned d, float eps) {
    const unsigned row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const unsigned lane = threadIdx.x & 31;
    if (row >= rows) return;
    const T* xr = x + (size_t)row * d;
    T* yr = y + (size_t)row * d;
    float mean, rstd;
    row_moments(xr, d, eps, lane, &mean, &rstd);
    for (unsigned j = lane; j < d; j += 32) st(yr, j, (ld(xr, j) - mean) * rstd * ld(w, j) + ld(b, j));
}

extern "C" __global__ void tram_layer_norm_f32(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ b,
                                               float* __restrict__ y, unsigned rows, unsigned d, float eps) {
    layer_norm(x, w, b, y, rows, d, eps);
}

extern "C" __global__ void tram_layer_norm_bf16(const unsigned short* __restrict__ x, const unsigned short* __restrict__ w,
                                                const unsigned short* __restrict__ b, unsigned short* __restrict__ y, unsigned rows, unsigned d,
                                                float eps) {
    layer_norm(x, w, b, y, rows, d, eps);
}

// `[rows, 2]`: mean and 1/√(var + eps) of each row, for the weight / bias gradients.
template <typename T>
__device__ __forceinline__ void layer_norm_moments(const T* __restrict__ x, float* __restrict__ out, unsigned rows, unsigned d, float eps) {
    const unsigned row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const unsigned lane = threadIdx.x & 31;
    if (row >= rows) return;
    float mean, rstd;
    row_moments(x + (size_t)row * d, d, eps, lane, &mean, &rstd);
    if (lane == 0) {
        out[2 * row] = mean;
        out[2 * row + 1] = rstd;
    }
}

extern "C" __global__ void tram_layer_norm_moments_f32(const float* __restrict__ x, float* __restrict__ out, unsigned rows, unsigned d,
                                                       float eps) {
    layer_norm_moments(x, out, rows, d, eps);
}

extern "C" __global__ void tram_layer_norm_moments_bf16(const unsigned short* __restrict__ x, float* __restrict__ out, unsigned rows,
                                                        unsigned d, float eps) {
    layer_norm_moments(x, out, rows, d, eps);
}

// dx = rstd · (g w − mean(g w) − x̂ · mean(g w x̂)), one warp per row.
template <typename T>
__device__ __forceinline__ void layer_norm_bwd(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ g, T* __restrict__ dx,
                                               unsigned rows, unsigned d, float eps) {
    const unsigned row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const unsigned lane = threadIdx.x & 31;
    if (row >= rows) return;
    const T* xr = x + (size_t)row * d;
    const T* gr = g + (size_t)row * d;
    T* o = dx + (size_t)row * d;
    float mean, rstd;
    row_moments(xr, d, eps, lane, &mean, &rstd);
    float a = 0.0f, c = 0.0f;
    for (unsigned j = lane; j < d; j += 32) {
        const float gw = ld(gr, j) * ld(w, j);
        a += gw;
        c += gw * (ld(xr, j) - mean) * rstd;
    }
    a = warp_sum(a) / (float)d;
    c = warp_sum(c) / (float)d;
    for (unsigned j = lane; j < d; j += 32) {
        const float h = (ld(xr, j) - mean) * rstd;
        st(o, j, rstd * (ld(gr, j) * ld(w, j) - a - h * c));
    }
}

extern "C" __global__ void tram_layer_norm_bwd_f32(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ g,
                                                   float* __restrict__ dx, unsigned rows, unsigned d, float eps) {
    layer_norm_bwd(x, w, g, dx, rows, d, eps);
}

extern "C" __global__ void tram_layer_norm_bwd_bf16(const unsigned short* __restrict__ x, const unsigned short* __restrict__ w,
                                                    const unsigned short* __restrict__ g, unsigned short* __restrict__ dx, unsigned rows,
                                                    unsigned d, float eps) {
    layer_norm_bwd(x, w, g, dx, rows, d, eps);
}

// Partial weight / bias gradients: block (cx, cy) sums columns [256 cx, 256 cx + 256) over rows
// [chunk cy, chunk (cy + 1)) into out[0][cy][col] (Σ g x̂) and out[1][cy][col] (Σ g), in f32;
// the caller sums over the chunks. Adjacent threads read adjacent columns (coalesced).
template <typename T>
__device__ __forceinline__ void layer_norm_wb(const T* __restrict__ x, const T* __restrict__ g, const float* __restrict__ moments,
                                              float* __restrict__ out, unsigned rows, unsigned d, unsigned chunk) {
    const unsigned col = blockIdx.x * blockDim.x + threadIdx.x;
    const unsigned chunks = gridDim.y;
    if (col >= d) return;
    const unsigned r0 = blockIdx.y * chunk;
    const unsigned r1 = min(r0 + chunk, rows);
    float dw = 0.0f, db = 0.0f;
    for (unsigned r = r0; r < r1; ++r) {
        const float gv = ld(g, (size_t)r * d + col);
        dw += gv * (ld(x, (size_t)r * d + col) - moments[2 * r]) * moments[2 * r + 1];
        db += gv;
    }
    out[(size_t)blockIdx.y * d + col] = dw;
    out[(size_t)(chunks + blockIdx.y) * d + col] = db;
}

extern "C" __global__ void tram_layer_norm_wb_f32(const float* __restrict__ x, const float* __restrict__ g,
                                                  const float* __restrict__ moments, float* __restrict__ out, unsigned rows,
                                                  unsigned d, unsigned chunk) {
    layer_norm_wb(x, g, moments, out, rows, d, chunk);
}

extern "C" __global__ void tram_layer_norm_wb_bf16(const unsigned short* __restrict__ x, const unsigned short* __restrict__ g,
                                                   const float* __restrict__ moments, float* __restrict__ out, unsigned rows,
                                                   unsigned d, unsigned chunk) {
    layer_norm_wb(x, g, moments, out, rows, d, chunk);
}

// ---------------------------------------------------------------------------------------------
// Log-softmax and cross-entropy rows: one block per row (rows are vocabulary-wide).

// log-sum-exp of a row of T elements in compute type R (f32 for f32 / bf16, f64 for f64);
// every thread gets it.
template <typename T, typename R>
__device__ __forceinline__ R row_lse(const T* xr, unsigned n, R* sh, R* max_out) {
    R m = -INFINITY;
    for (unsigned j = threadIdx.x; j < n; j += blockDim.x) m = fmax(m, (R)ld(xr, j));
    m = block_max(m, sh);
    R s = 0;
    for (unsigned j = threadIdx.x; j < n; j += blockDim.x) s += ex((R)ld(xr, j) - m);
    s = block_sum(s, sh);
    *max_out = m;
    return m + lg(s);
}

extern "C" __global__ void tram_log_softmax_f32(const float* __restrict__ x, float* __restrict__ y, unsigned n) {
    __shared__ float sh[32];
    const float* xr = x + (size_t)blockIdx.x * n;
    float* yr = y + (size_t)blockIdx.x * n;
    float m;
    const float shift = row_lse(xr, n, sh, &m);
    for (unsigned j = threadIdx.x; j < n; j += blockDim.x) yr[j] = xr[j] - shift;
}

// dx = g − exp(y) Σ g.
extern "C" __global__ void tram_log_softmax_bwd_f32(const float* __restrict__ y, const float* __restrict__ g, float* __restrict__ dx,
                                                    unsigned n) {
    __shared__ float sh[32];
    const float* yr = y + (size_t)blockIdx.x * n;
    const float* gr = g + (size_t)blockIdx.x * n;
    float* o = dx + (size_t)blockIdx.x * n;
    float s = 0.0f;
    for (unsigned j = threadIdx.x; j < n; j += blockDim.x) s += gr[j];
    s = block_sum(s, sh);
    for (unsigned j = threadIdx.x; j < n; j += blockDim.x) o[j] = gr[j] - expf(yr[j]) * s;
}

// loss[row] = logsumexp(x_row) − x_row[t] for target t, 0 for an ignored row (t = 0xffffffff);
// logits in f32 or bf16 (T).
template <typename T>
__device__ __forceinline__ void cross_entropy_rows(const T* __restrict__ x, const uint32_t* __restrict__ targets, float* __restrict__ loss,
                                                   unsigned n) {
    __shared__ float sh[32];
    const uint32_t t = targets[blockIdx.x];
    if (t == 0xffffffffu) {
        if (threadIdx.x == 0) loss[blockIdx.x] = 0.0f;
        return;  // the whole block leaves: no barrier is reached
    }
    const T* xr = x + (size_t)blockIdx.x * n;
    float m;
    const float lse = row_lse(xr, n, sh, &m);
    if (threadIdx.x == 0) loss[blockIdx.x] = lse - ld(xr, t);
}

extern "C" __global__ void tram_cross_entropy_rows_f32(const float* __restrict__ x, const uint32_t* __restrict__ targets,
                                                       float* __restrict__ loss, unsigned n) {
    cross_entropy_rows(x, targets, loss, n);
}

extern "C" __global__ void tram_cross_entropy_rows_bf16(const unsigned short* __restrict__ x, const uint32_t* __restrict__ targets,
                                                        float* __restrict__ loss, unsigned n) {
    cross_entropy_rows(x, targets, loss, n);
}

// dx_row = g[row] · (softmax(x_row) − onehot(t)) in the logits' type, 0 for an ignored row.
template <typename T>
__device__ __forceinline__ void cross_entropy_rows_bwd(const T* __restrict__ x, const uint32_t* __restrict__ targets, const float* __restrict__ g,
                                                       T* __restrict__ dx, unsigned n) {
    __shared__ float sh[32];
    const uint32_t t = targets[blockIdx.x];
    T* o = dx + (size_t)blockIdx.x * n;
    if (t == 0xffffffffu) {
        for (unsigned j = threadIdx.x; j < n; j += blockDim.x) st(o, j, 0.0f);
        return;
    }
    const T* xr = x + (size_t)blockIdx.x * n;
    float m = -INFINITY;
    for (unsigned j = threadIdx.x; j < n; j += blockDim.x) m = fmaxf(m, ld(xr, j));
    m = block_max(m, sh);
    float s = 0.0f;
    for (unsigned j = threadIdx.x; j < n; j += blockDim.x) s += expf(ld(xr, j) - m);
    s = block_sum(s, sh);
    const float gr = g[blockIdx.x];
    const float f = gr / s;
    for (unsigned j = threadIdx.x; j < n; j += blockDim.x) st(o, j, expf(ld(xr, j) - m) * f - (j == t ? gr : 0.0f));
}

extern "C" __global__ void tram_cross_entropy_rows_bwd_f32(const float* __restrict__ x, const uint32_t* __restrict__ targets,
                                                           const float* __restrict__ g, float* __restrict__ dx, unsigned n) {
    cross_entropy_rows_bwd(x, targets, g, dx, n);
}

extern "C" __global__ void tram_cross_entropy_rows_bwd_bf16(const unsigned short* __restrict__ x, const uint32_t* __restrict__ targets,
                                                            const float* __restrict__ g, unsigned short* __restrict__ dx, unsigned n) {
    cross_entropy_rows_bwd(x, targets, g, dx, n);
}

// ---------------------------------------------------------------------------------------------
// Row-wise KL(softmax t ‖ softmax c): one block per row.

// kl[row] = Σ p_t (t − c + lse(c) − lse(t)), p_t = exp(t − lse(t)); in f32 or in f64 (R), the
// f64 kernels for the trust regions' radius δ (logits differing by ~σ·‖W‖, where f32 loses it).
// KL of one row (every thread gets it), with both log-normalisers.
template <typename R>
__device__ __forceinline__ R row_kl(const R* tr, const R* cr, unsigned n, R* sh, R* st, R* sc) {
    R m;
    *st = row_lse(tr, n, sh, &m);
    *sc = row_lse(cr, n, sh, &m);
    const R shift = *sc - *st;
    R s = 0;
    for (unsigned j = threadIdx.x; j < n; j += blockDim.x) s += ex(tr[j] - *st) * (tr[j] - cr[j] + shift);
    return block_sum(s, sh);
}

template <typename R>
__device__ __forceinline__ void kl_rows(const R* __restrict__ t, const R* __restrict__ c, R* __restrict__ kl, unsigned n) {
    __shared__ R sh[32];
    R st, sc;
    const R s = row_kl(t + (size_t)blockIdx.x * n, c + (size_t)blockIdx.x * n, n, sh, &st, &sc);
    if (threadIdx.x == 0) kl[blockIdx.x] = s;
}

extern "C" __global__ void tram_kl_rows_f32(const float* __restrict__ t, const float* __restrict__ c, float* __restrict__ kl, unsigned n) {
    kl_rows(t, c, kl, n);
}

extern "C" __global__ void tram_kl_rows_f64(const double* __restrict__ t, const double* __restrict__ c, double* __restrict__ kl, unsigned n) {
    kl_rows(t, c, kl, n);
}

// out[0][row] = g p_t ⊙ (log p_t − log p_c − KL), out[1][row] = g (p_c − p_t); out is
// [2, rows, n].
template <typename R>
__device__ __forceinline__ void kl_rows_bwd(const R* __restrict__ t, const R* __restrict__ c, const R* __restrict__ g, R* __restrict__ out,
                                            unsigned rows, unsigned n) {
    __shared__ R sh[32];
    const R* tr = t + (size_t)blockIdx.x * n;
    const R* cr = c + (size_t)blockIdx.x * n;
    R* dt = out + (size_t)blockIdx.x * n;
    R* dc = out + ((size_t)rows + blockIdx.x) * n;
    R st, sc;
    const R kl = row_kl(tr, cr, n, sh, &st, &sc);
    const R shift = sc - st;
    const R gr = g[blockIdx.x];
    for (unsigned j = threadIdx.x; j < n; j += blockDim.x) {
        const R pt = ex(tr[j] - st);
        dt[j] = gr * pt * (tr[j] - cr[j] + shift - kl);
        dc[j] = gr * (ex(cr[j] - sc) - pt);
    }
}

extern "C" __global__ void tram_kl_rows_bwd_f32(const float* __restrict__ t, const float* __restrict__ c, const float* __restrict__ g,
                                                float* __restrict__ out, unsigned rows, unsigned n) {
    kl_rows_bwd(t, c, g, out, rows, n);
}

extern "C" __global__ void tram_kl_rows_bwd_f64(const double* __restrict__ t, const double* __restrict__ c, const double* __restrict__ g,
                                                double* __restrict__ out, unsigned rows, unsigned n) {
    kl_rows_bwd(t, c, g, out, rows, n);
}

// ---------------------------------------------------------------------------------------------
// GELU, forward and backward, elementwise in f32 and bf16; f32 compute. kind 0: the tanh
// approximation, 1: erf.

#define GELU_SQRT_2_OVER_PI 0.7978845608028654f
#define GELU_COEF 0.044715f

__device__ __forceinline__ float gelu_value(int kind, float x) {
    if (kind == 0) return 0.5f * x * (1.0f + tanhf(GELU_SQRT_2_OVER_PI * (x + GELU_COEF * x * x * x)));
    return 0.5f * x * (1.0f + erff(x * 0.7071067811865476f));
}

__device__ __forceinline__ float gelu_derivative(int kind, float x) {
    if (kind == 0) {
        const float x2 = x * x;
        const float t = tanhf(GELU_SQRT_2_OVER_PI * (x + GELU_COEF * x2 * x));
        return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * GELU_SQRT_2_OVER_PI * (1.0f + 3.0f * GELU_COEF * x2);
    }
    const float phi = expf(-0.5f * x * x) * 0.3989422804014327f;
    return 0.5f * (1.0f + erff(x * 0.7071067811865476f)) + x * phi;
}

// Grid-stride loops over n elements.
extern "C" __global__ void tram_gelu_f32(const float* __restrict__ x, float* __restrict__ y, unsigned long long n, int kind) {
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (unsigned long long)gridDim.x * blockDim.x)
        y[i] = gelu_value(kind, x[i]);
}

extern "C" __global__ void tram_gelu_bf16(const unsigned short* __restrict__ x, unsigned short* __restrict__ y, unsigned long long n,
                                          int kind) {
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (unsigned long long)gridDim.x * blockDim.x)
        y[i] = f32_to_bf16(gelu_value(kind, bf16_to_f32(x[i])));
}

extern "C" __global__ void tram_gelu_bwd_f32(const float* __restrict__ x, const float* __restrict__ g, float* __restrict__ dx,
                                             unsigned long long n, int kind) {
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (unsigned long long)gridDim.x * blockDim.x)
        dx[i] = g[i] * gelu_derivative(kind, x[i]);
}

extern "C" __global__ void tram_gelu_bwd_bf16(const unsigned short* __restrict__ x, const unsigned short* __restrict__ g,
                                              unsigned short* __restrict__ dx, unsigned long long n, int kind) {
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (unsigned long long)gridDim.x * blockDim.x)
        dx[i] = f32_to_bf16(bf16_to_f32(g[i]) * gelu_derivative(kind, bf16_to_f32(x[i])));
}

// ---------------------------------------------------------------------------------------------
// In-place optimizer updates of src/update.rs on f32 device buffers: the composed candle ops'
// order of f32 operations (each `affine(x, mul, add)` is `x * mul + add`, the `+ 0` included,
// one rounding per operation: built with --fmad=false), so the result is the CPU's bit for bit.
// Grid-stride over n elements.

// decay_kind 0: none, 1: L2 (g + θ·λ), 2: decoupled (θ·(1 − lr·λ) before the step).
extern "C" __global__ void tram_adam_update_f32(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m, float* __restrict__ v,
                                                unsigned long long n, int decay_kind, float decay, float b1, float omb1, float b2,
                                                float omb2, float ibc2, float eps, float step) {
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (unsigned long long)gridDim.x * blockDim.x) {
        float th = p[i], gi = g[i];
        if (decay_kind == 1) gi = gi + (th * decay + 0.0f);
        if (decay_kind == 2) th = th * decay + 0.0f;
        const float mi = (m[i] * b1 + 0.0f) + (gi * omb1 + 0.0f);
        const float vi = (v[i] * b2 + 0.0f) + ((gi * gi) * omb2 + 0.0f);
        const float denom = sqrtf(vi) * ibc2 + eps;
        p[i] = th - ((mi / denom) * step + 0.0f);
        m[i] = mi;
        v[i] = vi;
    }
}

// SGD with optional L2 decay and momentum buffer (has_buf), its first step (the buffer becomes
// the gradient) and Nesterov momentum.
extern "C" __global__ void tram_sgd_update_f32(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ buf, unsigned long long n,
                                               int has_buf, int l2, int first, int nesterov, float wd, float mu, float omd, float lr) {
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (unsigned long long)gridDim.x * blockDim.x) {
        const float th = p[i];
        float d = l2 ? g[i] + (th * wd + 0.0f) : g[i];
        if (has_buf) {
            const float bi = first ? d : (buf[i] * mu + 0.0f) + (d * omd + 0.0f);
            buf[i] = bi;
            d = nesterov ? d + (bi * mu + 0.0f) : bi;
        }
        p[i] = th - (d * lr + 0.0f);
    }
}

// ---------------------------------------------------------------------------------------------
// Embedding rows and their table gradient summed in f32 (src/embedding.rs), and the bias
// addition with its column-sum gradient (src/bias.rs).

// out row i = table row ids[i] (block i; threads over the d columns), the elements copied as
// their bits (U: 16 bits for bf16, 32 for f32). An id at or past `vocab` gives a row of `nan`
// bits, so the loss it feeds is not finite and the engine's guard stops the step.
template <typename U>
__device__ __forceinline__ void embedding_rows(const U* __restrict__ table, const uint32_t* __restrict__ ids, U* __restrict__ out, unsigned d,
                                               unsigned vocab, U nan) {
    const uint32_t id = ids[blockIdx.x];
    U* o = out + (size_t)blockIdx.x * d;
    for (unsigned j = threadIdx.x; j < d; j += blockDim.x) o[j] = id < vocab ? table[(size_t)id * d + j] : nan;
}

extern "C" __global__ void tram_embedding_f32(const uint32_t* __restrict__ table, const uint32_t* __restrict__ ids, uint32_t* __restrict__ out,
                                              unsigned d, unsigned vocab) {
    embedding_rows(table, ids, out, d, vocab, 0x7fc00000u);
}

extern "C" __global__ void tram_embedding_bf16(const unsigned short* __restrict__ table, const uint32_t* __restrict__ ids,
                                               unsigned short* __restrict__ out, unsigned d, unsigned vocab) {
    embedding_rows(table, ids, out, d, vocab, (unsigned short)0x7fc0u);
}

// The stable sort of the n ids by value as a permutation: order[rank(i)] = i, rank(i) = #{j :
// ids[j] < ids[i]} + #{j < i : ids[j] = ids[i]}. One thread per position; the ids pass through
// shared memory a tile at a time (n² comparisons: 67 M for 8192 ids, no atomics, the same order
// on every run).
extern "C" __global__ void tram_embedding_order(const uint32_t* __restrict__ ids, uint32_t* __restrict__ order, unsigned n) {
    __shared__ uint32_t tile[256];
    const unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    const uint32_t mine = i < n ? ids[i] : 0u;
    unsigned rank = 0;
    for (unsigned t0 = 0; t0 < n; t0 += blockDim.x) {
        __syncthreads();
        if (t0 + threadIdx.x < n) tile[threadIdx.x] = ids[t0 + threadIdx.x];
        __syncthreads();
        const unsigned m = min(blockDim.x, n - t0);
        for (unsigned k = 0; k < m; ++k) {
            const uint32_t v = tile[k];
            rank += (v < mine || (v == mine && t0 + k < i)) ? 1u : 0u;
        }
    }
    if (i < n) order[rank] = i;
}

// Table gradient: block k handles the run of equal ids that starts at sorted position k (when
// one starts there; other blocks leave at once) and writes that id's row of `out` (zeroed by
// the caller): the gradient rows of the id summed in f32 in position order, the CPU kernel's
// order, so the sums are bitwise the CPU's; rounded once to T. Ids at or past `vocab` are
// skipped. Threads stride over the d columns.
template <typename T>
__device__ __forceinline__ void embedding_grad(const T* __restrict__ g, const uint32_t* __restrict__ ids, const uint32_t* __restrict__ order,
                                               T* __restrict__ out, unsigned n, unsigned d, unsigned vocab) {
    const unsigned k = blockIdx.x;
    const uint32_t id = ids[order[k]];
    if (id >= vocab || (k > 0 && ids[order[k - 1]] == id)) return;
    unsigned end = k + 1;
    while (end < n && ids[order[end]] == id) ++end;
    for (unsigned j = threadIdx.x; j < d; j += blockDim.x) {
        float acc = 0.0f;
        for (unsigned q = k; q < end; ++q) acc += ld(g, (size_t)order[q] * d + j);
        st(out, (size_t)id * d + j, acc);
    }
}

extern "C" __global__ void tram_embedding_grad_f32(const float* __restrict__ g, const uint32_t* __restrict__ ids,
                                                   const uint32_t* __restrict__ order, float* __restrict__ out, unsigned n, unsigned d,
                                                   unsigned vocab) {
    embedding_grad(g, ids, order, out, n, d, vocab);
}

extern "C" __global__ void tram_embedding_grad_bf16(const unsigned short* __restrict__ g, const uint32_t* __restrict__ ids,
                                                    const uint32_t* __restrict__ order, unsigned short* __restrict__ out, unsigned n,
                                                    unsigned d, unsigned vocab) {
    embedding_grad(g, ids, order, out, n, d, vocab);
}

// y = x + b over rows of n (grid-stride over all elements), one rounding to T.
template <typename T>
__device__ __forceinline__ void add_bias(const T* __restrict__ x, const T* __restrict__ b, T* __restrict__ y, unsigned long long total,
                                         unsigned n) {
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (unsigned long long)gridDim.x * blockDim.x)
        st(y, i, ld(x, i) + ld(b, i % n));
}

extern "C" __global__ void tram_add_bias_f32(const float* __restrict__ x, const float* __restrict__ b, float* __restrict__ y,
                                             unsigned long long total, unsigned n) {
    add_bias(x, b, y, total, n);
}

extern "C" __global__ void tram_add_bias_bf16(const unsigned short* __restrict__ x, const unsigned short* __restrict__ b,
                                              unsigned short* __restrict__ y, unsigned long long total, unsigned n) {
    add_bias(x, b, y, total, n);
}

// Column sums of g [rows, n] in f32: block (cx, cy) sums columns [256 cx, 256 cx + 256) over
// rows [chunk cy, chunk (cy + 1)) into out[cy][col]; the caller sums over the chunks. Adjacent
// threads read adjacent columns (coalesced), where a reduction over the leading dimension
// reads with stride n.
template <typename T>
__device__ __forceinline__ void col_sums(const T* __restrict__ g, float* __restrict__ out, unsigned rows, unsigned n, unsigned chunk) {
    const unsigned col = blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= n) return;
    const unsigned r0 = blockIdx.y * chunk;
    const unsigned r1 = min(r0 + chunk, rows);
    float s = 0.0f;
    for (unsigned r = r0; r < r1; ++r) s += ld(g, (size_t)r * n + col);
    out[(size_t)blockIdx.y * n + col] = s;
}

extern "C" __global__ void tram_col_sums_f32(const float* __restrict__ g, float* __restrict__ out, unsigned rows, unsigned n, unsigned chunk) {
    col_sums(g, out, rows, n, chunk);
}

extern "C" __global__ void tram_col_sums_bf16(const unsigned short* __restrict__ g, float* __restrict__ out, unsigned rows, unsigned n,
                                              unsigned chunk) {
    col_sums(g, out, rows, n, chunk);
}
