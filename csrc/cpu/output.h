// Allocation of the CPU kernels' large outputs.
//
// A fresh output of tens of MB comes straight from mmap, and its first write faults in
// one 4 KiB page at a time: measured on the 2-core dev VM, allocating and filling 67 MB
// took 46 ms with 4 KiB pages against 13 ms after madvise(MADV_HUGEPAGE), when a copy
// into memory already mapped took 9 ms. So the kernels ask for transparent huge pages
// on the outputs they are about to write. The advice is only advice: where the kernel
// refuses it (THP "never", non-anonymous memory), nothing changes but the speed.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace hanet_fast {
namespace cpu {

inline void advise_huge_pages(void* data, int64_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHugePage = uintptr_t(2) << 20;
  if (bytes < int64_t(4 * kHugePage)) return;  // small outputs: too few faults to matter
  const uintptr_t begin = reinterpret_cast<uintptr_t>(data);
  const uintptr_t first = (begin + kHugePage - 1) & ~(kHugePage - 1);
  const uintptr_t last = (begin + static_cast<uintptr_t>(bytes)) & ~(kHugePage - 1);
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#else
  (void)data;
  (void)bytes;
#endif
}

// at::empty, with huge pages requested for what the kernel will write.
inline at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor out = at::empty(sizes, options);
  advise_huge_pages(out.data_ptr(), out.nbytes());
  return out;
}

}  // namespace cpu
}  // namespace hanet_fast
