// How the CPU kernels split work across threads.
#pragma once

#include <algorithm>
#include <cstdint>

namespace hanet_fast {
namespace cpu {

// Elements one parallel task should at least touch for its work to outweigh its
// scheduling (ATen's at::internal::GRAIN_SIZE, which not every torch exports here).
constexpr int64_t kGrainElements = 32768;

// Items per task when each item touches `elements_per_item` elements.
inline int64_t grain_for(int64_t elements_per_item) {
  return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, elements_per_item));
}

}  // namespace cpu
}  // namespace hanet_fast
