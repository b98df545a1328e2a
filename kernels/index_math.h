// Index math shared by the CPU (csrc/cpu) and CUDA (kernels/*.cuh) kernels.
//
// Both formulas reproduce ATen bit for bit, so the fused kernels pick the same rows
// and weights as F.adaptive_{avg,max}_pool2d and F.interpolate(mode="linear").
#pragma once

#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define HANET_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define HANET_HOST_DEVICE inline
#endif

namespace hanet_fast {
namespace index {

// Adaptive pooling bin `bin` of `bins` over `size` input rows covers
// [bin_start, bin_end) = [floor(bin * size / bins), ceil((bin + 1) * size / bins)).
// Written as ATen writes it (AdaptivePooling.h) so that bin * size cannot overflow.
HANET_HOST_DEVICE int64_t bin_start(int64_t bin, int64_t bins, int64_t size) {
  return (bin / bins) * size + ((bin % bins) * size) / bins;
}

HANET_HOST_DEVICE int64_t bin_end(int64_t bin, int64_t bins, int64_t size) {
  return 1 + ((bin + 1) * size - 1) / bins;
}

// The two source taps of output row `dst` when linearly resizing `in_size` rows to
// `out_size` rows with align_corners=False: out[dst] = w_lo * in[lo] + w_hi * in[hi].
template <typename acc_t>
struct LinearTaps {
  int64_t lo;
  int64_t hi;
  acc_t w_lo;
  acc_t w_hi;
};

// As ATen's area_pixel_compute_scale / area_pixel_compute_source_index /
// guard_index_and_lambda (UpSample.h), computed in acc_t (float, or double for double).
template <typename acc_t>
HANET_HOST_DEVICE LinearTaps<acc_t> linear_taps(int64_t dst, int64_t in_size, int64_t out_size) {
  const acc_t scale = static_cast<acc_t>(in_size) / static_cast<acc_t>(out_size);
  acc_t src = scale * (static_cast<acc_t>(dst) + static_cast<acc_t>(0.5)) - static_cast<acc_t>(0.5);
  if (src < static_cast<acc_t>(0)) {
    src = static_cast<acc_t>(0);
  }
  int64_t lo = static_cast<int64_t>(src);  // src >= 0, so truncation is floor
  if (lo > in_size - 1) {
    lo = in_size - 1;
  }
  acc_t lambda = src - static_cast<acc_t>(lo);
  lambda = lambda < static_cast<acc_t>(0) ? static_cast<acc_t>(0) : lambda;
  lambda = lambda > static_cast<acc_t>(1) ? static_cast<acc_t>(1) : lambda;
  const int64_t hi = lo < in_size - 1 ? lo + 1 : lo;
  return {lo, hi, static_cast<acc_t>(1) - lambda, lambda};
}

}  // namespace index
}  // namespace hanet_fast
