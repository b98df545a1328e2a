// What both CUDA launchers take from the CUDA runtime: the device the kernels tile for (SM count
// and current stream), the check after each launch, and the accumulation dtype of workspaces.
// One header, so the CPU emulation (tests/cuda_emulation/emu_sources.py) has one place to replace.
#pragma once
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include <type_traits>

#include "../../kernels/common.cuh"

namespace hanet_fast {
namespace cuda {

inline Device current_device() {
  return {at::cuda::getCurrentDeviceProperties()->multiProcessorCount, at::cuda::getCurrentCUDAStream().stream()};
}

// Passed to the launch sequences in kernels/*.cuh, which call it after every launch.
inline const auto kLaunchCheck = [] { C10_CUDA_KERNEL_LAUNCH_CHECK(); };

template <typename scalar_t>
at::ScalarType acc_dtype() {
  return std::is_same_v<at::opmath_type<scalar_t>, double> ? at::kDouble : at::kFloat;
}

}  // namespace cuda
}  // namespace hanet_fast
