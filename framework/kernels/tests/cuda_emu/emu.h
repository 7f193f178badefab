// A CPU emulation of the CUDA execution model, enough to run cuda/fused.cu on the host: the
// threads of a block run as OS threads (so warp shuffles, votes and __syncthreads are real
// rendezvous between them), blocks one after another (so `__shared__` can be a static).
// Used by tests/cuda_emu.rs to check the kernels' code against the CPU kernels on machines
// without a GPU.
#pragma once
#include <barrier>
#include <cmath>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__
#define __shared__ static

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

namespace emu {
struct Warp {
    explicit Warp(unsigned n) : bar(n) {}
    std::barrier<> bar;
    float f[32];
    double d[32];
    int i[32];
};
struct Block {
    explicit Block(unsigned n) : bar(n) {}
    std::barrier<> bar;
    std::vector<std::unique_ptr<Warp>> warps;
};
inline thread_local Block* block = nullptr;
}  // namespace emu

inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

inline void __syncthreads() { emu::block->bar.arrive_and_wait(); }

inline emu::Warp& emu_warp() { return *emu::block->warps[threadIdx.x / 32]; }

// The value of lane `lane ^ o`, exchanged through the warp's `slots`.
template <typename V>
inline V emu_shfl_xor(V v, int o, V* slots) {
    emu::Warp& w = emu_warp();
    const unsigned lane = threadIdx.x % 32;
    slots[lane] = v;
    w.bar.arrive_and_wait();
    const V r = slots[lane ^ o];
    w.bar.arrive_and_wait();
    return r;
}

inline float __shfl_xor_sync(unsigned, float v, int o) { return emu_shfl_xor(v, o, emu_warp().f); }
inline double __shfl_xor_sync(unsigned, double v, int o) { return emu_shfl_xor(v, o, emu_warp().d); }

inline int __any_sync(unsigned, int p) {
    emu::Warp& w = emu_warp();
    const unsigned lane = threadIdx.x % 32;
    w.i[lane] = p;
    w.bar.arrive_and_wait();
    int any = 0;
    for (int l = 0; l < 32; ++l) any |= w.i[l] != 0;
    w.bar.arrive_and_wait();
    return any;
}

using std::fmax;
using std::min;

// Runs `kernel(args...)` over `grid` × `block` (x and y of the grid, x of the block).
template <typename K, typename... A>
void emu_launch(K kernel, dim3 grid, dim3 block, A... args) {
    gridDim = grid;
    blockDim = block;
    for (unsigned by = 0; by < grid.y; ++by) {
        for (unsigned bx = 0; bx < grid.x; ++bx) {
            emu::Block b(block.x);
            for (unsigned w = 0; w < (block.x + 31) / 32; ++w) b.warps.push_back(std::make_unique<emu::Warp>(32));
            std::vector<std::thread> threads;
            threads.reserve(block.x);
            for (unsigned t = 0; t < block.x; ++t) {
                threads.emplace_back([&, t] {
                    emu::block = &b;
                    threadIdx = dim3{t, 0, 0};
                    blockIdx = dim3{bx, by, 0};
                    kernel(args...);
                    // A thread that has left no longer holds up the others' barriers.
                    emu_warp().bar.arrive_and_drop();
                    b.bar.arrive_and_drop();
                });
            }
            for (auto& th : threads) th.join();
        }
    }
}
