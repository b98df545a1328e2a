// Which memory layout a kernel runs in (the rule of hanet_fast/ops/layout.py).
#pragma once

#include <ATen/core/Tensor.h>

namespace hanet_fast {

// A contiguous tensor runs as NCHW (also when it is channels_last-contiguous too,
// e.g. C == 1); otherwise a channels_last-contiguous one runs as NHWC.
inline bool is_channels_last(const at::Tensor& x) {
  return !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
}

inline at::MemoryFormat memory_format_of(const at::Tensor& x) {
  return is_channels_last(x) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

}  // namespace hanet_fast
