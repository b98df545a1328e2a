// CPU kernels of height_gate: y = x * up(attn)[..., None], up = linear resize of the
// rows of attn [B, C, R] to x's height H (align_corners=False).
//
// Forward and backward each make one pass over the large tensors; the upsampled
// attention exists only one row (NCHW) or one pixel's channels (NHWC) at a time.
// The backward collects sum_w grad_y * x per (b, c, h) in a small acc_t workspace
// (1/W of the tensor) and applies the transposed interpolation to it afterwards in a
// fixed order, so grad_attn is deterministic.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <vector>

#include "../../kernels/index_math.h"
#include "../checks.h"
#include "../layout.h"
#include "output.h"
#include "parallel.h"
#include "runs.h"

namespace hanet_fast {
namespace cpu {
namespace {

using index::linear_taps;

// The interpolation taps of every output row, computed once per call.
template <typename acc>
std::vector<index::LinearTaps<acc>> taps_per_row(int64_t rows, int64_t height) {
  std::vector<index::LinearTaps<acc>> taps(height);
  for (int64_t h = 0; h < height; ++h) taps[h] = linear_taps<acc>(h, rows, height);
  return taps;
}

template <typename scalar_t>
inline acc_t<scalar_t> upsampled(const scalar_t* attn_plane, const index::LinearTaps<acc_t<scalar_t>>& t) {
  return t.w_lo * widen(attn_plane[t.lo]) + t.w_hi * widen(attn_plane[t.hi]);
}

// up[c] for every channel of batch b at one row.
template <typename scalar_t>
inline void upsampled_channels(acc_t<scalar_t>* up, const scalar_t* attn_batch, int64_t channels, int64_t rows,
                               const index::LinearTaps<acc_t<scalar_t>>& t) {
  for (int64_t c = 0; c < channels; ++c) up[c] = upsampled(attn_batch + c * rows, t);
}

template <typename scalar_t>
void gate_forward(scalar_t* y, const scalar_t* x, const scalar_t* attn, int64_t batch, int64_t channels,
                  int64_t height, int64_t width, int64_t rows, bool channels_last) {
  const auto taps = taps_per_row<acc_t<scalar_t>>(rows, height);
  if (!channels_last) {
    at::parallel_for(0, batch * channels * height, grain_for(width), [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const auto a = upsampled(attn + (row / height) * rows, taps[row % height]);
        scale_run(y + row * width, x + row * width, a, width);
      }
    });
    return;
  }
  at::parallel_for(0, batch * height, grain_for(width * channels), [&](int64_t begin, int64_t end) {
    std::vector<acc_t<scalar_t>> up(channels);
    for (int64_t bh = begin; bh < end; ++bh) {
      upsampled_channels(up.data(), attn + (bh / height) * channels * rows, channels, rows, taps[bh % height]);
      for (int64_t w = 0; w < width; ++w) {
        const int64_t offset = (bh * width + w) * channels;
        mul_run(y + offset, x + offset, up.data(), channels);
      }
    }
  });
}

// grad_attn[b, c, :] = up^T(row_sums[b, c, :]) where row_sums[b, c, h] sits at
// b * C * H + c * c_stride + h * h_stride.
template <typename scalar_t>
void transposed_interpolation(scalar_t* grad_attn, const acc_t<scalar_t>* row_sums, int64_t batch, int64_t channels,
                              int64_t height, int64_t rows, int64_t c_stride, int64_t h_stride) {
  const auto taps = taps_per_row<acc_t<scalar_t>>(rows, height);
  at::parallel_for(0, batch * channels, grain_for(height), [&](int64_t begin, int64_t end) {
    std::vector<acc_t<scalar_t>> acc(rows);
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t b = plane / channels, c = plane % channels;
      const acc_t<scalar_t>* sums = row_sums + b * channels * height + c * c_stride;
      std::fill(acc.begin(), acc.end(), acc_t<scalar_t>(0));
      for (int64_t h = 0; h < height; ++h) {
        const acc_t<scalar_t> s = sums[h * h_stride];
        acc[taps[h].lo] += taps[h].w_lo * s;
        acc[taps[h].hi] += taps[h].w_hi * s;
      }
      store_run(grad_attn + plane * rows, acc.data(), rows);
    }
  });
}

template <typename scalar_t, bool kWriteGradX>
void gate_backward(scalar_t* grad_x, scalar_t* grad_attn, const scalar_t* grad_y, const scalar_t* x,
                   const scalar_t* attn, int64_t batch, int64_t channels, int64_t height, int64_t width, int64_t rows,
                   bool channels_last) {
  std::vector<acc_t<scalar_t>> row_sums(batch * channels * height);
  acc_t<scalar_t>* sums = row_sums.data();
  const auto taps = taps_per_row<acc_t<scalar_t>>(rows, height);
  if (!channels_last) {
    at::parallel_for(0, batch * channels * height, grain_for(width), [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const acc_t<scalar_t> a = kWriteGradX ? upsampled(attn + (row / height) * rows, taps[row % height]) : 0;
        sums[row] = gate_backward_run<scalar_t, kWriteGradX>(grad_x + row * width, grad_y + row * width,
                                                             x + row * width, a, width);
      }
    });
    transposed_interpolation(grad_attn, sums, batch, channels, height, rows, /*c_stride=*/height, /*h_stride=*/1);
    return;
  }
  at::parallel_for(0, batch * height, grain_for(width * channels), [&](int64_t begin, int64_t end) {
    std::vector<acc_t<scalar_t>> up(kWriteGradX ? channels : 0);
    for (int64_t bh = begin; bh < end; ++bh) {
      if constexpr (kWriteGradX) {
        upsampled_channels(up.data(), attn + (bh / height) * channels * rows, channels, rows, taps[bh % height]);
      }
      acc_t<scalar_t>* pixel_sums = sums + bh * channels;  // workspace laid out [B, H, C]
      std::fill(pixel_sums, pixel_sums + channels, acc_t<scalar_t>(0));
      for (int64_t w = 0; w < width; ++w) {
        const int64_t offset = (bh * width + w) * channels;
        gate_backward_run_per_element<scalar_t, kWriteGradX>(grad_x + offset, grad_y + offset, x + offset, up.data(),
                                                             pixel_sums, channels);
      }
    }
  });
  transposed_interpolation(grad_attn, sums, batch, channels, height, rows, /*c_stride=*/1, /*h_stride=*/channels);
}

at::Tensor height_gate_cpu(const at::Tensor& x_in, const at::Tensor& attn_in) {
  check_height_gate(x_in, attn_in);
  const auto format = memory_format_of(x_in);
  const at::Tensor x = x_in.contiguous(format);
  const at::Tensor attn = attn_in.contiguous();
  at::Tensor y = empty_output(x.sizes(), x.options().memory_format(format));
  if (y.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "height_gate_cpu", [&] {
    gate_forward<scalar_t>(y.data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), attn.const_data_ptr<scalar_t>(),
                           x.size(0), x.size(1), x.size(2), x.size(3), attn.size(2),
                           format == at::MemoryFormat::ChannelsLast);
  });
  return y;
}

// Shared by the two backward ops: grad_x is written only when it is defined.
void height_gate_backward_impl(const at::Tensor& grad_y_in, const at::Tensor& x_in, const at::Tensor& attn,
                               at::Tensor& grad_x, at::Tensor& grad_attn) {
  const auto format = memory_format_of(x_in);
  const at::Tensor x = x_in.contiguous(format);
  const at::Tensor grad_y = grad_y_in.contiguous(format);
  if (x.numel() == 0) {
    grad_attn.zero_();
    return;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "height_gate_backward_cpu", [&] {
    const bool channels_last = format == at::MemoryFormat::ChannelsLast;
    const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), R = grad_attn.size(2);
    if (grad_x.defined()) {
      gate_backward<scalar_t, true>(grad_x.data_ptr<scalar_t>(), grad_attn.data_ptr<scalar_t>(),
                                    grad_y.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
                                    attn.const_data_ptr<scalar_t>(), B, C, H, W, R, channels_last);
    } else {
      gate_backward<scalar_t, false>(nullptr, grad_attn.data_ptr<scalar_t>(), grad_y.const_data_ptr<scalar_t>(),
                                     x.const_data_ptr<scalar_t>(), nullptr, B, C, H, W, R, channels_last);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> height_gate_backward_cpu(const at::Tensor& grad_y, const at::Tensor& x,
                                                            const at::Tensor& attn_in) {
  check_height_gate(x, attn_in);
  check_grad_y(grad_y, x);
  const at::Tensor attn = attn_in.contiguous();
  at::Tensor grad_x = empty_output(x.sizes(), x.options().memory_format(memory_format_of(x)));
  at::Tensor grad_attn = at::empty(attn.sizes(), attn.options());
  height_gate_backward_impl(grad_y, x, attn, grad_x, grad_attn);
  return {grad_x, grad_attn};
}

at::Tensor height_gate_attn_backward_cpu(const at::Tensor& grad_y, const at::Tensor& x, int64_t rows) {
  check_feature_map(x, "x");
  check_grad_y(grad_y, x);
  TORCH_CHECK_VALUE(rows >= 1, "hanet_fast: rows must be >= 1, got ", rows);
  at::Tensor grad_x;  // undefined: not written
  at::Tensor grad_attn = at::empty({x.size(0), x.size(1), rows}, x.options().memory_format(at::MemoryFormat::Contiguous));
  height_gate_backward_impl(grad_y, x, at::Tensor(), grad_x, grad_attn);
  return grad_attn;
}

}  // namespace

TORCH_LIBRARY_IMPL(hanet_fast, CPU, m) {
  m.impl("height_gate", &height_gate_cpu);
  m.impl("height_gate_backward", &height_gate_backward_cpu);
  m.impl("height_gate_attn_backward", &height_gate_attn_backward_cpu);
}

}  // namespace cpu
}  // namespace hanet_fast
