// CPU emulation of the CUDA kernels in kernels/*.cuh, for tests/test_cuda_emulation.py: without a
// GPU (CI, most development machines) this is the only way the CUDA device code and the
// csrc/cuda/*.cu launchers get executed at all, so it is built with ASan/UBSan.
//
// Model: each warp's 32 lanes are OS threads (a persistent pool), __shfl_xor_sync is a barrier
// exchange between them, and the blocks of a launch and the warps of a block run one after the
// other. That is a legal CUDA schedule for these kernels (they use no shared memory, no
// __syncthreads and no inter-block communication; workspaces are reduced by a later launch).
// The flip side: races between warps or blocks cannot show up here (there are none by design:
// no atomics, each output written by one thread); timing and performance are not modelled.
// Misuse that would hang or misbehave on a GPU is counted in emu::errors and printed:
//   - a shuffle with a partial mask or width (the kernels only use full-warp shuffles),
//   - lanes of a warp executing different numbers of shuffles ("lanes shuffled unevenly"),
//   - a grid size outside [1, 2^31 - 1].
// kernels/common.cuh skips its real launch() and <cuda_runtime.h> when HANET_CUDA_EMULATION is
// defined; this header provides launch() instead. The launchers' CUDA-runtime calls (device
// properties, stream, guard, launch check) are rewritten by emu_sources.py; emu::sm_count stands in
// for the SM count, so tests can drive the tilings chosen for different GPUs.
#pragma once
#define HANET_CUDA_EMULATION 1
#include <atomic>
#include <barrier>
#include <cassert>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)

struct dim3 { unsigned x = 1, y = 1, z = 1; };
struct alignas(16) uint4 { unsigned x, y, z, w; };  // CUDA's vector types that kernels/common.cuh moves packs through
struct alignas(8) uint2 { unsigned x, y; };
using cudaStream_t = void*;

namespace emu {
inline thread_local dim3 thread_idx, block_idx;
inline dim3 block_dim, grid_dim;
struct Warp {
  std::barrier<> bar{32};
  alignas(8) unsigned char slots[32][8];
  int shuffles[32] = {};
};
inline thread_local Warp* warp = nullptr;
inline thread_local int lane = 0;
inline int sm_count = 2;
inline std::atomic<long> launches{0};
inline std::atomic<long> errors{0};
}  // namespace emu

#define threadIdx (emu::thread_idx)
#define blockIdx (emu::block_idx)
#define blockDim (emu::block_dim)
#define gridDim (emu::grid_dim)

template <typename T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = 32) {
  static_assert(sizeof(T) <= 8);
  if (mask != 0xffffffffu || width != 32) { emu::errors++; std::fprintf(stderr, "emu: bad shfl args\n"); }
  emu::Warp& w = *emu::warp;
  w.shuffles[emu::lane]++;
  std::memcpy(w.slots[emu::lane], &value, sizeof(T));
  w.bar.arrive_and_wait();
  T out;
  std::memcpy(&out, w.slots[emu::lane ^ lane_mask], sizeof(T));
  w.bar.arrive_and_wait();
  return out;
}

namespace emu {
// 32 persistent lane threads; run_warp() hands them one warp's work and waits for it.
struct LanePool {
  std::barrier<> start{33}, done{33};
  std::function<void(int)> job;
  bool stop = false;
  std::vector<std::thread> threads;
  LanePool() {
    for (int l = 0; l < 32; ++l) threads.emplace_back([this, l] {
      for (;;) {
        start.arrive_and_wait();
        if (stop) return;
        job(l);
        done.arrive_and_wait();
      }
    });
  }
  void run_warp(std::function<void(int)> f) {
    job = std::move(f);
    start.arrive_and_wait();
    done.arrive_and_wait();
  }
  ~LanePool() { stop = true; start.arrive_and_wait(); for (auto& t : threads) t.join(); }
};
inline LanePool& pool() { static LanePool p; return p; }
}  // namespace emu

namespace hanet_fast { namespace cuda {
constexpr int kEmuThreads = 256;
// The real launch() cuts grid-stride grids to the blocks the GPU holds at once (resident_grid()
// of kernels/common.cuh, run here too); 2 per SM stand in for that occupancy, so that the
// grid-stride loops take several turns.
template <typename... Params, typename Device, typename... Args>
void launch(void (*kernel)(Params...), int64_t blocks, const Device& device, Args... args) {
  emu::launches++;
  blocks = resident_grid(reinterpret_cast<const void*>(kernel), blocks, device.sm_count,
                         [](const void*) { return 2; });
  if (blocks < 1 || blocks > (int64_t(1) << 31) - 1) { emu::errors++; std::fprintf(stderr, "emu: bad grid %ld\n", (long)blocks); return; }
  emu::grid_dim = dim3{static_cast<unsigned>(blocks), 1, 1};
  emu::block_dim = dim3{kEmuThreads, 1, 1};
  for (int64_t b = 0; b < blocks; ++b) {
    for (int wi = 0; wi < kEmuThreads / 32; ++wi) {
      emu::Warp w;
      std::atomic<int> finished{0};
      emu::pool().run_warp([&](int l) {
        emu::thread_idx = dim3{static_cast<unsigned>(wi * 32 + l), 0, 0};
        emu::block_idx = dim3{static_cast<unsigned>(b), 0, 0};
        emu::warp = &w;
        emu::lane = l;
        kernel(static_cast<Params>(args)...);
        w.bar.arrive_and_drop();  // a lane that is done no longer takes part (a real warp would hang or misbehave)
      });
      for (int l = 1; l < 32; ++l) {
        if (w.shuffles[l] != w.shuffles[0]) { emu::errors++; std::fprintf(stderr, "emu: lanes shuffled unevenly\n"); break; }
      }
    }
  }
}
}}  // namespace hanet_fast::cuda
