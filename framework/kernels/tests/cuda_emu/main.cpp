// Runs one kernel of cuda/fused.cu under the CPU emulation (emu.h), with the launch shapes of
// src/cuda.rs: `main <kernel>` reads the kernel's arguments from stdin (arrays as a u64 count
// and the raw little-endian values; scalars as 4 raw bytes) and writes its output array(s) to
// stdout the same way. Driven by tests/cuda_emu.rs.
#include "emu.h"
#include "../../cuda/fused.cu"

#include <cstdio>
#include <cstring>
#include <string>

template <typename T>
static T scalar() {
    T v;
    if (std::fread(&v, sizeof(T), 1, stdin) != 1) {
        std::fprintf(stderr, "emu: short input\n");
        std::exit(2);
    }
    return v;
}

template <typename T>
static std::vector<T> array() {
    const uint64_t n = scalar<uint64_t>();
    std::vector<T> v(n ? n : 1);
    if (n && std::fread(v.data(), sizeof(T), n, stdin) != n) {
        std::fprintf(stderr, "emu: short input\n");
        std::exit(2);
    }
    return v;
}

// An output buffer as `alloc` gives it on the device: not zeroed. NaN, so an element a kernel
// fails to write shows in the comparison.
static std::vector<float> uninit(size_t n) { return std::vector<float>(n, NAN); }

static void emit(const std::vector<float>& v) {
    const uint64_t n = v.size();
    std::fwrite(&n, sizeof n, 1, stdout);
    std::fwrite(v.data(), sizeof(float), n, stdout);
}

static void emit64(const std::vector<double>& v) {
    const uint64_t n = v.size();
    std::fwrite(&n, sizeof n, 1, stdout);
    std::fwrite(v.data(), sizeof(double), n, stdout);
}

static std::vector<unsigned short> to_bf16(const std::vector<float>& v) {
    std::vector<unsigned short> b(v.size());
    for (size_t i = 0; i < v.size(); ++i) b[i] = f32_to_bf16(v[i]);
    return b;
}

static std::vector<float> from_bf16(const std::vector<unsigned short>& b) {
    std::vector<float> v(b.size());
    for (size_t i = 0; i < b.size(); ++i) v[i] = bf16_to_f32(b[i]);
    return v;
}

static const unsigned ROW_WARPS_BLOCK = 256, ROW_BLOCK = 512;
static dim3 warp_rows(unsigned rows) { return dim3{std::max(1u, (rows + ROW_WARPS_BLOCK / 32 - 1) / (ROW_WARPS_BLOCK / 32)), 1, 1}; }
static dim3 block_rows(unsigned rows) { return dim3{std::max(1u, rows), 1, 1}; }

int main(int argc, char** argv) {
    if (argc != 2) return 2;
    const std::string k = argv[1];
    if (k == "masked_softmax") {
        auto x = array<float>();
        const auto rows = scalar<uint32_t>(), sq = scalar<uint32_t>(), sk = scalar<uint32_t>();
        const auto scale = scalar<float>();
        const auto causal = scalar<int32_t>();
        auto keep = array<uint8_t>();
        const auto has_keep = scalar<int32_t>();
        const auto rpb = scalar<uint32_t>();
        const auto bf16 = scalar<int32_t>();
        const size_t n = (size_t)rows * sk;
        if (!bf16) {
            std::vector<float> y(uninit(n));
            emu_launch(tram_masked_softmax_f32, warp_rows(rows), dim3{ROW_WARPS_BLOCK}, (const float*)x.data(), y.data(), rows, sq, sk, scale,
                       causal, (const uint8_t*)keep.data(), has_keep, rpb);
            emit(y);
        } else {
            auto xb = to_bf16(x);
            std::vector<unsigned short> yb(n, 0x7fc0);
            emu_launch(tram_masked_softmax_bf16, warp_rows(rows), dim3{ROW_WARPS_BLOCK}, (const unsigned short*)xb.data(), yb.data(), rows, sq,
                       sk, scale, causal, (const uint8_t*)keep.data(), has_keep, rpb);
            emit(from_bf16(yb));
        }
    } else if (k == "softmax_bwd") {
        auto y = array<float>(), g = array<float>();
        const auto rows = scalar<uint32_t>(), n = scalar<uint32_t>();
        const auto scale = scalar<float>();
        const auto bf16 = scalar<int32_t>();
        if (!bf16) {
            std::vector<float> dx(uninit((size_t)rows * n));
            emu_launch(tram_softmax_bwd_f32, warp_rows(rows), dim3{ROW_WARPS_BLOCK}, (const float*)y.data(), (const float*)g.data(), dx.data(),
                       rows, n, scale);
            emit(dx);
        } else {
            auto yb = to_bf16(y), gb = to_bf16(g);
            std::vector<unsigned short> db((size_t)rows * n, 0x7fc0);
            emu_launch(tram_softmax_bwd_bf16, warp_rows(rows), dim3{ROW_WARPS_BLOCK}, (const unsigned short*)yb.data(),
                       (const unsigned short*)gb.data(), db.data(), rows, n, scale);
            emit(from_bf16(db));
        }
    } else if (k == "layer_norm") {
        // Values arrive and leave as f32; with bf16 they are bf16 values, run through the bf16
        // kernels as their bits (the weight / bias gradient sums stay f32).
        auto x = array<float>(), w = array<float>(), b = array<float>(), g = array<float>();
        const auto rows = scalar<uint32_t>(), d = scalar<uint32_t>();
        const auto eps = scalar<float>();
        const auto chunk = scalar<uint32_t>();
        const auto bf16 = scalar<int32_t>();
        const size_t n = (size_t)rows * d;
        const unsigned chunks = std::max(1u, (rows + chunk - 1) / chunk);
        std::vector<float> y(uninit(n)), dx(uninit(n)), mom(uninit(2 * (size_t)rows)), part(uninit(2 * (size_t)chunks * d));
        const dim3 wb_grid{(d + 255) / 256, chunks, 1};
        if (!bf16) {
            emu_launch(tram_layer_norm_f32, warp_rows(rows), dim3{ROW_WARPS_BLOCK}, (const float*)x.data(), (const float*)w.data(),
                       (const float*)b.data(), y.data(), rows, d, eps);
            emu_launch(tram_layer_norm_bwd_f32, warp_rows(rows), dim3{ROW_WARPS_BLOCK}, (const float*)x.data(), (const float*)w.data(),
                       (const float*)g.data(), dx.data(), rows, d, eps);
            emu_launch(tram_layer_norm_moments_f32, warp_rows(rows), dim3{ROW_WARPS_BLOCK}, (const float*)x.data(), mom.data(), rows, d, eps);
            emu_launch(tram_layer_norm_wb_f32, wb_grid, dim3{256}, (const float*)x.data(), (const float*)g.data(), (const float*)mom.data(),
                       part.data(), rows, d, chunk);
        } else {
            auto xb = to_bf16(x), wb = to_bf16(w), bb = to_bf16(b), gb = to_bf16(g);
            std::vector<unsigned short> yb(n, 0x7fc0), db(n, 0x7fc0);
            emu_launch(tram_layer_norm_bf16, warp_rows(rows), dim3{ROW_WARPS_BLOCK}, (const unsigned short*)xb.data(),
                       (const unsigned short*)wb.data(), (const unsigned short*)bb.data(), yb.data(), rows, d, eps);
            emu_launch(tram_layer_norm_bwd_bf16, warp_rows(rows), dim3{ROW_WARPS_BLOCK}, (const unsigned short*)xb.data(),
                       (const unsigned short*)wb.data(), (const unsigned short*)gb.data(), db.data(), rows, d, eps);
            emu_launch(tram_layer_norm_moments_bf16, warp_rows(rows), dim3{ROW_WARPS_BLOCK}, (const unsigned short*)xb.data(), mom.data(),
                       rows, d, eps);
            emu_launch(tram_layer_norm_wb_bf16, wb_grid, dim3{256}, (const unsigned short*)xb.data(), (const unsigned short*)gb.data(),
                       (const float*)mom.data(), part.data(), rows, d, chunk);
            y = from_bf16(yb);
            dx = from_bf16(db);
        }
        std::vector<float> dw(d, 0.0f), dbias(d, 0.0f);
        for (unsigned c = 0; c < chunks; ++c)
            for (unsigned j = 0; j < d; ++j) {
                dw[j] += part[(size_t)c * d + j];
                dbias[j] += part[(size_t)(chunks + c) * d + j];
            }
        emit(y);
        emit(dx);
        emit(dw);
        emit(dbias);
    } else if (k == "log_softmax") {
        auto x = array<float>(), g = array<float>();
        const auto rows = scalar<uint32_t>(), n = scalar<uint32_t>();
        std::vector<float> y(uninit((size_t)rows * n)), dx(uninit((size_t)rows * n));
        emu_launch(tram_log_softmax_f32, block_rows(rows), dim3{ROW_BLOCK}, (const float*)x.data(), y.data(), n);
        emu_launch(tram_log_softmax_bwd_f32, block_rows(rows), dim3{ROW_BLOCK}, (const float*)y.data(), (const float*)g.data(), dx.data(), n);
        emit(y);
        emit(dx);
    } else if (k == "cross_entropy") {
        auto x = array<float>();
        auto t = array<uint32_t>();
        auto g = array<float>();
        const auto rows = scalar<uint32_t>(), n = scalar<uint32_t>();
        const auto bf16 = scalar<int32_t>();
        std::vector<float> loss(uninit(rows));
        if (!bf16) {
            std::vector<float> dx(uninit((size_t)rows * n));
            emu_launch(tram_cross_entropy_rows_f32, block_rows(rows), dim3{ROW_BLOCK}, (const float*)x.data(), (const uint32_t*)t.data(),
                       loss.data(), n);
            emu_launch(tram_cross_entropy_rows_bwd_f32, block_rows(rows), dim3{ROW_BLOCK}, (const float*)x.data(), (const uint32_t*)t.data(),
                       (const float*)g.data(), dx.data(), n);
            emit(loss);
            emit(dx);
        } else {
            auto xb = to_bf16(x);
            std::vector<unsigned short> db((size_t)rows * n, 0x7fc0);
            emu_launch(tram_cross_entropy_rows_bf16, block_rows(rows), dim3{ROW_BLOCK}, (const unsigned short*)xb.data(),
                       (const uint32_t*)t.data(), loss.data(), n);
            emu_launch(tram_cross_entropy_rows_bwd_bf16, block_rows(rows), dim3{ROW_BLOCK}, (const unsigned short*)xb.data(),
                       (const uint32_t*)t.data(), (const float*)g.data(), db.data(), n);
            emit(loss);
            emit(from_bf16(db));
        }
    } else if (k == "kl_rows") {
        auto t = array<float>(), c = array<float>(), g = array<float>();
        const auto rows = scalar<uint32_t>(), n = scalar<uint32_t>();
        std::vector<float> kl(uninit(rows)), both(uninit(2 * (size_t)rows * n));
        emu_launch(tram_kl_rows_f32, block_rows(rows), dim3{ROW_BLOCK}, (const float*)t.data(), (const float*)c.data(), kl.data(), n);
        emu_launch(tram_kl_rows_bwd_f32, block_rows(rows), dim3{ROW_BLOCK}, (const float*)t.data(), (const float*)c.data(),
                   (const float*)g.data(), both.data(), rows, n);
        emit(kl);
        emit(std::vector<float>(both.begin(), both.begin() + (size_t)rows * n));
        emit(std::vector<float>(both.begin() + (size_t)rows * n, both.end()));
    } else if (k == "kl_rows_f64") {
        // The f64 kernels (the radius δ); arrays and outputs in f64.
        auto t = array<double>(), c = array<double>(), g = array<double>();
        const auto rows = scalar<uint32_t>(), n = scalar<uint32_t>();
        std::vector<double> kl(rows, NAN), both(2 * (size_t)rows * n, NAN);
        emu_launch(tram_kl_rows_f64, block_rows(rows), dim3{ROW_BLOCK}, (const double*)t.data(), (const double*)c.data(), kl.data(), n);
        emu_launch(tram_kl_rows_bwd_f64, block_rows(rows), dim3{ROW_BLOCK}, (const double*)t.data(), (const double*)c.data(),
                   (const double*)g.data(), both.data(), rows, n);
        emit64(kl);
        emit64(std::vector<double>(both.begin(), both.begin() + (size_t)rows * n));
        emit64(std::vector<double>(both.begin() + (size_t)rows * n, both.end()));
    } else if (k == "gelu") {
        // Values arrive and leave as f32; with bf16 they are bf16 values, run through the bf16
        // kernels as their bits.
        auto x = array<float>(), g = array<float>();
        const auto kind = scalar<int32_t>(), bf16 = scalar<int32_t>();
        const unsigned long long n = x.size();
        const unsigned blocks = (unsigned)std::min<unsigned long long>(std::max(1ull, (n + 255) / 256), 1ull << 20);
        std::vector<float> y(uninit(n)), dx(uninit(n));
        if (!bf16) {
            emu_launch(tram_gelu_f32, dim3{blocks}, dim3{256}, (const float*)x.data(), y.data(), n, kind);
            emu_launch(tram_gelu_bwd_f32, dim3{blocks}, dim3{256}, (const float*)x.data(), (const float*)g.data(), dx.data(), n, kind);
        } else {
            std::vector<unsigned short> xb(n), gb(n), yb(n, 0x7fc0), db(n, 0x7fc0);
            for (size_t i = 0; i < n; ++i) {
                xb[i] = f32_to_bf16(x[i]);
                gb[i] = f32_to_bf16(g[i]);
            }
            emu_launch(tram_gelu_bf16, dim3{blocks}, dim3{256}, (const unsigned short*)xb.data(), yb.data(), n, kind);
            emu_launch(tram_gelu_bwd_bf16, dim3{blocks}, dim3{256}, (const unsigned short*)xb.data(), (const unsigned short*)gb.data(),
                       db.data(), n, kind);
            for (size_t i = 0; i < n; ++i) {
                y[i] = bf16_to_f32(yb[i]);
                dx[i] = bf16_to_f32(db[i]);
            }
        }
        emit(y);
        emit(dx);
    } else if (k == "adam") {
        auto p = array<float>(), g = array<float>(), m = array<float>(), v = array<float>();
        const auto kind = scalar<int32_t>();
        float c[8];
        for (float& x : c) x = scalar<float>();  // decay, b1, 1-b1, b2, 1-b2, 1/sqrt(bc2), eps, step
        const unsigned long long n = p.size();
        const unsigned blocks = (unsigned)std::min<unsigned long long>(std::max(1ull, (n + 255) / 256), 1ull << 20);
        emu_launch(tram_adam_update_f32, dim3{blocks}, dim3{256}, p.data(), (const float*)g.data(), m.data(), v.data(), n, kind, c[0], c[1],
                   c[2], c[3], c[4], c[5], c[6], c[7]);
        emit(p);
        emit(m);
        emit(v);
    } else if (k == "sgd") {
        auto p = array<float>(), g = array<float>(), buf = array<float>();
        int32_t f[4];
        for (int32_t& x : f) x = scalar<int32_t>();  // has_buf, l2, first, nesterov
        float c[4];
        for (float& x : c) x = scalar<float>();  // wd, mu, 1-dampening, lr
        const unsigned long long n = p.size();
        const unsigned blocks = (unsigned)std::min<unsigned long long>(std::max(1ull, (n + 255) / 256), 1ull << 20);
        emu_launch(tram_sgd_update_f32, dim3{blocks}, dim3{256}, p.data(), (const float*)g.data(), f[0] ? buf.data() : (float*)nullptr, n,
                   f[0], f[1], f[2], f[3], c[0], c[1], c[2], c[3]);
        emit(p);
        emit(buf);
    } else if (k == "embedding") {
        // Forward rows, the stable id order and the table gradient (f32 values in and out; with
        // bf16 the table and gradient are bf16 values, run as their bits).
        auto table = array<float>();
        auto ids = array<uint32_t>();
        auto g = array<float>();
        const auto vocab = scalar<uint32_t>(), d = scalar<uint32_t>();
        const auto bf16 = scalar<int32_t>();
        const unsigned n = (unsigned)ids.size();
        std::vector<uint32_t> order(n, 0xffffffffu);
        emu_launch(tram_embedding_order, dim3{std::max(1u, (n + 255) / 256)}, dim3{256}, (const uint32_t*)ids.data(), order.data(), n);
        std::vector<float> y(uninit((size_t)n * d)), grad((size_t)vocab * d, 0.0f);  // the caller zeroes the table gradient
        if (!bf16) {
            emu_launch(tram_embedding_f32, dim3{n}, dim3{256}, (const uint32_t*)(const void*)table.data(), (const uint32_t*)ids.data(),
                       (uint32_t*)(void*)y.data(), d, vocab);
            emu_launch(tram_embedding_grad_f32, dim3{n}, dim3{256}, (const float*)g.data(), (const uint32_t*)ids.data(),
                       (const uint32_t*)order.data(), grad.data(), n, d, vocab);
        } else {
            auto tb = to_bf16(table), gb = to_bf16(g);
            std::vector<unsigned short> yb((size_t)n * d, 0x7fc0), db((size_t)vocab * d, 0);
            emu_launch(tram_embedding_bf16, dim3{n}, dim3{256}, (const unsigned short*)tb.data(), (const uint32_t*)ids.data(), yb.data(), d,
                       vocab);
            emu_launch(tram_embedding_grad_bf16, dim3{n}, dim3{256}, (const unsigned short*)gb.data(), (const uint32_t*)ids.data(),
                       (const uint32_t*)order.data(), db.data(), n, d, vocab);
            y = from_bf16(yb);
            grad = from_bf16(db);
        }
        emit(y);
        emit(grad);
        std::vector<float> of(n);
        for (unsigned i = 0; i < n; ++i) of[i] = (float)order[i];
        emit(of);
    } else if (k == "add_bias") {
        // y = x + b and the bias gradient of upstream g: column partial sums over row chunks,
        // added up in chunk order (the caller's sum over dim 0).
        auto x = array<float>(), b = array<float>(), g = array<float>();
        const auto rows = scalar<uint32_t>(), n = scalar<uint32_t>(), chunk = scalar<uint32_t>();
        const auto bf16 = scalar<int32_t>();
        const unsigned long long total = (unsigned long long)rows * n;
        const unsigned blocks = (unsigned)std::min<unsigned long long>(std::max(1ull, (total + 255) / 256), 1ull << 20);
        const unsigned chunks = std::max(1u, (rows + chunk - 1) / chunk);
        std::vector<float> y(uninit(total)), part(uninit((size_t)chunks * n));
        if (!bf16) {
            emu_launch(tram_add_bias_f32, dim3{blocks}, dim3{256}, (const float*)x.data(), (const float*)b.data(), y.data(), total, n);
            emu_launch(tram_col_sums_f32, dim3{(n + 255) / 256, chunks, 1}, dim3{256}, (const float*)g.data(), part.data(), rows, n, chunk);
        } else {
            auto xb = to_bf16(x), bb = to_bf16(b), gb = to_bf16(g);
            std::vector<unsigned short> yb(total, 0x7fc0);
            emu_launch(tram_add_bias_bf16, dim3{blocks}, dim3{256}, (const unsigned short*)xb.data(), (const unsigned short*)bb.data(), yb.data(),
                       total, n);
            emu_launch(tram_col_sums_bf16, dim3{(n + 255) / 256, chunks, 1}, dim3{256}, (const unsigned short*)gb.data(), part.data(), rows, n,
                       chunk);
            y = from_bf16(yb);
        }
        std::vector<float> db(n, 0.0f);
        for (unsigned c = 0; c < chunks; ++c)
            for (unsigned j = 0; j < n; ++j) db[j] += part[(size_t)c * n + j];
        emit(y);
        emit(db);
    } else {
        std::fprintf(stderr, "emu: unknown kernel %s\n", k.c_str());
        return 2;
    }
    return 0;
}
