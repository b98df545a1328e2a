// The launch plans of the CUDA launch sequences (kernels/*.cuh) at given shapes, without a GPU:
// scripts/kernel_report.py builds this with the host compiler, and it runs the real host-side
// planning code (tilings, grid sizes, vector-width choice, the cut to the resident blocks) with a
// launch() that records each kernel and its grid instead of running it. Pointers are null
// (16-byte aligned, as the caching allocator's are), so the vectorised paths are the ones planned.
//
//     kernel_plans [OCCUPANCY]
// OCCUPANCY: a file of `mangled kernel name <blocks per SM>` lines (what the CUDA occupancy
// calculator would answer; kernel_report.py computes it from ptxas's registers), which
// resident_grid() of kernels/common.cuh asks instead of the GPU; a kernel it does not name gets
// kMaxBlocksPerSm, as launch() does when the calculator fails.
// stdin: one case a line, `id op dtype format B C H W R sm_count`, op one of pool_avg_fwd,
// pool_max_fwd, pool_avg_bwd, pool_max_bwd, gate_fwd, gate_bwd; dtype float32, float64,
// float16, bfloat16; format nchw or channels_last.
// stdout: one launch a line, `id <TAB> mangled kernel name <TAB> blocks as planned <TAB> grid
// <TAB> threads per block`.
#define HANET_CUDA_EMULATION 1
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <dlfcn.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <type_traits>
#include <unordered_map>

// Enough of CUDA for the device code to compile as (never called) host code.
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct alignas(8) uint2 {
  unsigned x, y;
};
using cudaStream_t = void*;
inline dim3 threadIdx, blockIdx, blockDim, gridDim;
template <typename T>
T __shfl_xor_sync(unsigned, T value, int, int = 32) {
  return value;
}

#include "../kernels/common.cuh"

namespace hanet_fast {
namespace cuda {
inline std::string current_case;
inline std::unordered_map<std::string, int> occupancy_table;  // mangled name -> blocks per SM

inline const char* kernel_name(const void* kernel) {
  Dl_info info{};
  return dladdr(kernel, &info) && info.dli_sname ? info.dli_sname : "?";
}

inline int table_occupancy(const void* kernel) {
  const auto known = occupancy_table.find(kernel_name(kernel));
  return known == occupancy_table.end() ? kMaxBlocksPerSm : known->second;
}

// The real launch() without the launch: the planned blocks and the grid resident_grid() makes of them.
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), int64_t blocks, const Device& device, Args...) {
  const void* address = reinterpret_cast<const void*>(kernel);
  const int64_t grid = resident_grid(address, blocks, device.sm_count, table_occupancy);
  std::printf("%s\t%s\t%lld\t%lld\t%d\n", current_case.c_str(), kernel_name(address),
              static_cast<long long>(blocks), static_cast<long long>(grid), kThreads);
}
}  // namespace cuda
}  // namespace hanet_fast

#include "../kernels/height_gate.cuh"
#include "../kernels/height_pool.cuh"

namespace hc = hanet_fast::cuda;

template <typename T>
using acc_of = std::conditional_t<std::is_same_v<T, double>, double, float>;

template <typename scalar_t>
void plan(const std::string& op, bool cl, int64_t B, int64_t C, int64_t H, int64_t W, int64_t R, int sms) {
  using acc_t = acc_of<scalar_t>;
  const hc::Device device{sms, nullptr};
  const auto check = [] {};
  const scalar_t* x = nullptr;
  scalar_t* out = nullptr;
  acc_t* ws = nullptr;
  int64_t* idx = nullptr;
  if (op == "pool_avg_fwd" || op == "pool_max_fwd") {
    const auto p = hc::pool::plan_forward<scalar_t>(x, B, C, H, W, cl, device);
    hc::with_index_type(std::max(B * C * H * W, p.workspace), [&](auto tag) {
      using index_t = decltype(tag);
      if (op == "pool_max_fwd") {
        hc::pool::forward<scalar_t, acc_t, index_t, true>(p, out, idx, x, ws, idx, B, C, H, W, R, device, check);
      } else {
        hc::pool::forward<scalar_t, acc_t, index_t, false>(p, out, idx, x, ws, idx, B, C, H, W, R, device, check);
      }
    });
  } else if (op == "pool_avg_bwd") {
    hc::with_index_type(B * C * H * W, [&](auto tag) {
      using index_t = decltype(tag);
      hc::pool::avg_backward<scalar_t, acc_t, index_t>(out, x, ws, B, C, H, W, R, cl, device, check);
    });
  } else if (op == "pool_max_bwd") {
    hc::with_index_type(B * C * H * W, [&](auto tag) {
      using index_t = decltype(tag);
      hc::pool::max_backward<scalar_t, acc_t, index_t>(out, x, idx, B, C, H, W, R, cl, device, check);
    });
  } else if (op == "gate_fwd") {
    const auto p = hc::gate::make_plan<scalar_t>({x, out}, B, C, H, W, cl, device);
    hc::with_index_type(std::max(B * C * H * W, B * C * R), [&](auto tag) {
      using index_t = decltype(tag);
      hc::gate::forward<scalar_t, acc_t, index_t>(p, out, x, x, H, R, device, check);
    });
  } else if (op == "gate_bwd") {
    const auto p = hc::gate::make_plan<scalar_t>({x, x, out}, B, C, H, W, cl, device);
    hc::with_index_type(std::max({B * C * H * W, p.workspace, B * C * R}), [&](auto tag) {
      using index_t = decltype(tag);
      hc::gate::backward<scalar_t, acc_t, index_t, true>(p, out, out, ws, x, x, x, B, C, H, R, device, check);
    });
  } else {
    std::fprintf(stderr, "kernel_plans: unknown op %s\n", op.c_str());
    std::exit(2);
  }
}

int main(int argc, char** argv) {
  if (argc > 2) {
    std::fprintf(stderr, "usage: kernel_plans [OCCUPANCY] < cases\n");
    return 2;
  }
  if (argc == 2) {
    std::ifstream table(argv[1]);
    if (!table) {
      std::fprintf(stderr, "kernel_plans: cannot read %s\n", argv[1]);
      return 2;
    }
    std::string name;
    int per_sm = 0;
    while (table >> name >> per_sm) hc::occupancy_table[name] = per_sm;
    if (!table.eof()) {
      std::fprintf(stderr, "kernel_plans: %s: expected `name blocks_per_sm` lines\n", argv[1]);
      return 2;
    }
  }
  std::string line;
  while (std::getline(std::cin, line)) {
    if (line.empty()) continue;
    std::istringstream in(line);
    std::string id, op, dtype, format;
    int64_t B, C, H, W, R;
    int sms;
    if (!(in >> id >> op >> dtype >> format >> B >> C >> H >> W >> R >> sms)) {
      std::fprintf(stderr, "kernel_plans: cannot parse '%s'\n", line.c_str());
      return 2;
    }
    hc::current_case = id;
    const bool cl = format == "channels_last";
    if (dtype == "float32") {
      plan<float>(op, cl, B, C, H, W, R, sms);
    } else if (dtype == "float64") {
      plan<double>(op, cl, B, C, H, W, R, sms);
    } else if (dtype == "float16") {
      plan<c10::Half>(op, cl, B, C, H, W, R, sms);
    } else if (dtype == "bfloat16") {
      plan<c10::BFloat16>(op, cl, B, C, H, W, R, sms);
    } else {
      std::fprintf(stderr, "kernel_plans: unknown dtype %s\n", dtype.c_str());
      return 2;
    }
  }
  return 0;
}
