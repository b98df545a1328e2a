// CPU kernels of height_pool: adaptive pooling of x [B, C, H, W] into [B, C, R] rows.
//
// x is read once: a first pass reduces every row over its width into a small acc_t
// workspace (1/W of x), a second pass combines the rows of each adaptive bin. Bins
// overlap when H % R != 0 or H < R; the row reductions are still done once.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
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

using index::bin_end;
using index::bin_start;

// Where the per-row workspace keeps (b, c, h): [B, C, H] for NCHW, [B, H, C] for NHWC,
// matching the input so that the first pass writes it sequentially.
struct RowWorkspaceLayout {
  int64_t channels, height, c_stride, h_stride;
  RowWorkspaceLayout(int64_t C, int64_t H, bool channels_last)
      : channels(C), height(H), c_stride(channels_last ? 1 : H), h_stride(channels_last ? C : 1) {}
  int64_t plane_base(int64_t plane) const { return (plane / channels) * channels * height + (plane % channels) * c_stride; }
};

// The PyTorch max rule: a later value wins if it is larger or NaN (so NaN propagates
// and, among equal maxima, the first one is kept).
template <typename acc>
inline bool replaces_max(acc value, acc current) {
  return value > current || std::isnan(value);
}

// ---------------------------------------------------------------------------- avg
template <typename scalar_t>
void pool_avg(scalar_t* out, const scalar_t* x, int64_t B, int64_t C, int64_t H, int64_t W, int64_t R,
              bool channels_last) {
  using acc = acc_t<scalar_t>;
  std::vector<acc> row_sums(B * C * H);
  acc* sums = row_sums.data();
  if (!channels_last) {
    at::parallel_for(0, B * C * H, grain_for(W), [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) sums[row] = sum_run(x + row * W, W);
    });
  } else {
    at::parallel_for(0, B * H, grain_for(W * C), [&](int64_t begin, int64_t end) {
      for (int64_t bh = begin; bh < end; ++bh) {
        acc* pixel_sums = sums + bh * C;
        std::fill(pixel_sums, pixel_sums + C, acc(0));
        for (int64_t w = 0; w < W; ++w) accumulate_run(pixel_sums, x + (bh * W + w) * C, C);
      }
    });
  }
  const RowWorkspaceLayout layout(C, H, channels_last);
  at::parallel_for(0, B * C, grain_for(H), [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      const acc* plane_sums = sums + layout.plane_base(plane);
      for (int64_t bin = 0; bin < R; ++bin) {
        const int64_t h0 = bin_start(bin, R, H), h1 = bin_end(bin, R, H);
        acc total = 0;
        for (int64_t h = h0; h < h1; ++h) total += plane_sums[h * layout.h_stride];
        out[plane * R + bin] = static_cast<scalar_t>(total / static_cast<acc>((h1 - h0) * W));
      }
    }
  });
}

// grad_x[b, c, h, :] = sum over bins containing h of grad_out[b, c, bin] / (bin rows * W)
template <typename scalar_t>
void pool_avg_backward(scalar_t* grad_x, const scalar_t* grad_out, int64_t B, int64_t C, int64_t H, int64_t W,
                       int64_t R, bool channels_last) {
  using acc = acc_t<scalar_t>;
  std::vector<acc> row_grads(B * C * H, acc(0));
  acc* coeffs = row_grads.data();
  const RowWorkspaceLayout layout(C, H, channels_last);
  at::parallel_for(0, B * C, grain_for(H + R), [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      acc* plane_coeffs = coeffs + layout.plane_base(plane);
      for (int64_t bin = 0; bin < R; ++bin) {
        const int64_t h0 = bin_start(bin, R, H), h1 = bin_end(bin, R, H);
        const acc g = static_cast<acc>(grad_out[plane * R + bin]) / static_cast<acc>((h1 - h0) * W);
        for (int64_t h = h0; h < h1; ++h) plane_coeffs[h * layout.h_stride] += g;
      }
    }
  });
  if (!channels_last) {
    at::parallel_for(0, B * C * H, grain_for(W), [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) fill_run(grad_x + row * W, coeffs[row], W);
    });
    return;
  }
  at::parallel_for(0, B * H, grain_for(W * C), [&](int64_t begin, int64_t end) {
    for (int64_t bh = begin; bh < end; ++bh) {
      for (int64_t w = 0; w < W; ++w) store_run(grad_x + (bh * W + w) * C, coeffs + bh * C, C);
    }
  });
}

// ---------------------------------------------------------------------------- max
// The maximum of one contiguous row and the column the PyTorch rule picks for it. Both
// loops are written so that they vectorise (integer counts rather than boolean flags, a
// chunked search for the first maximum): the scalar forms ran at about a third of the speed.
template <typename scalar_t>
std::pair<acc_t<scalar_t>, int64_t> row_max_and_arg(const scalar_t* __restrict__ values, int64_t n) {
  using acc = acc_t<scalar_t>;
  acc best = -std::numeric_limits<acc>::infinity();
  int64_t nans = 0;
#pragma omp simd reduction(max : best) reduction(+ : nans)
  for (int64_t i = 0; i < n; ++i) {
    const acc v = widen(values[i]);
    best = std::max(best, v);  // NaN is counted below, not compared
    nans += v != v;
  }
  if (nans) {  // the last NaN wins
    for (int64_t i = n - 1;; --i) {
      if (std::isnan(widen(values[i]))) return {widen(values[i]), i};
    }
  }
  // The first maximum wins (an all -inf row gives column 0); find the chunk holding it first.
  constexpr int64_t kChunk = 16;
  int64_t i = 0;
  for (; i + kChunk <= n; i += kChunk) {
    int64_t hits = 0;
#pragma omp simd reduction(+ : hits)
    for (int64_t j = 0; j < kChunk; ++j) hits += widen(values[i + j]) == best;
    if (hits) break;
  }
  for (; i < n; ++i) {
    if (widen(values[i]) == best) return {widen(values[i]), i};  // keeps the sign of a zero
  }
  return {best, 0};
}

template <typename scalar_t>
void pool_max(scalar_t* out, int64_t* indices, const scalar_t* x, int64_t B, int64_t C, int64_t H, int64_t W,
              int64_t R, bool channels_last) {
  using acc = acc_t<scalar_t>;
  // Per row: its maximum and the column where the PyTorch rule finds it.
  std::vector<acc> row_max(B * C * H);
  std::vector<int64_t> row_arg(B * C * H);
  if (!channels_last) {
    at::parallel_for(0, B * C * H, grain_for(W), [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const auto found = row_max_and_arg(x + row * W, W);
        row_max[row] = found.first;
        row_arg[row] = found.second;
      }
    });
  } else {
    at::parallel_for(0, B * H, grain_for(W * C), [&](int64_t begin, int64_t end) {
      for (int64_t bh = begin; bh < end; ++bh) {
        acc* best = row_max.data() + bh * C;
        int64_t* best_w = row_arg.data() + bh * C;
        std::fill(best, best + C, -std::numeric_limits<acc>::infinity());
        std::fill(best_w, best_w + C, int64_t(0));
        for (int64_t w = 0; w < W; ++w) {
          const scalar_t* values = x + (bh * W + w) * C;
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) {
            const acc v = widen(values[c]);
            const bool wins = replaces_max(v, best[c]);
            best[c] = wins ? v : best[c];
            best_w[c] = wins ? w : best_w[c];
          }
        }
      }
    });
  }
  const RowWorkspaceLayout layout(C, H, channels_last);
  at::parallel_for(0, B * C, grain_for(H), [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t base = layout.plane_base(plane);
      for (int64_t bin = 0; bin < R; ++bin) {
        const int64_t h0 = bin_start(bin, R, H), h1 = bin_end(bin, R, H);
        // Rows are scanned in order with the same rule, which reproduces a scan of
        // the whole bin in row-major order.
        acc best = row_max[base + h0 * layout.h_stride];
        int64_t best_index = h0 * W + row_arg[base + h0 * layout.h_stride];
        for (int64_t h = h0 + 1; h < h1; ++h) {
          const acc v = row_max[base + h * layout.h_stride];
          if (replaces_max(v, best)) {
            best = v;
            best_index = h * W + row_arg[base + h * layout.h_stride];
          }
        }
        out[plane * R + bin] = static_cast<scalar_t>(best);
        indices[plane * R + bin] = best_index;
      }
    }
  });
}

template <typename scalar_t>
void pool_max_backward(scalar_t* grad_x, const scalar_t* grad_out, const int64_t* indices, int64_t B, int64_t C,
                       int64_t H, int64_t W, int64_t R, bool channels_last) {
  using acc = acc_t<scalar_t>;
  // One task owns a whole (b, c) plane, so bins sharing an argmax add up in bin order.
  at::parallel_for(0, B * C, grain_for(R), [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t b = plane / C, c = plane % C;
      for (int64_t bin = 0; bin < R; ++bin) {
        const int64_t flat = indices[plane * R + bin];
        const int64_t offset = channels_last ? (b * H * W + flat) * C + c : plane * H * W + flat;
        grad_x[offset] = static_cast<scalar_t>(static_cast<acc>(grad_x[offset]) + static_cast<acc>(grad_out[plane * R + bin]));
      }
    }
  });
}

// ---------------------------------------------------------------------------- ops
at::Tensor height_pool_avg_cpu(const at::Tensor& x_in, int64_t rows) {
  check_height_pool(x_in, rows);
  const auto format = memory_format_of(x_in);
  const at::Tensor x = x_in.contiguous(format);
  at::Tensor out = at::empty({x.size(0), x.size(1), rows}, x.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "height_pool_avg_cpu", [&] {
    pool_avg<scalar_t>(out.data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), x.size(0), x.size(1), x.size(2),
                       x.size(3), rows, format == at::MemoryFormat::ChannelsLast);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> height_pool_max_cpu(const at::Tensor& x_in, int64_t rows) {
  check_height_pool(x_in, rows);
  const auto format = memory_format_of(x_in);
  const at::Tensor x = x_in.contiguous(format);
  at::Tensor out = at::empty({x.size(0), x.size(1), rows}, x.options());
  at::Tensor indices = at::empty({x.size(0), x.size(1), rows}, x.options().dtype(at::kLong));
  if (out.numel() == 0) return {out, indices};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "height_pool_max_cpu", [&] {
    pool_max<scalar_t>(out.data_ptr<scalar_t>(), indices.data_ptr<int64_t>(), x.const_data_ptr<scalar_t>(),
                       x.size(0), x.size(1), x.size(2), x.size(3), rows, format == at::MemoryFormat::ChannelsLast);
  });
  return {out, indices};
}

at::Tensor grad_input_for(const at::Tensor& grad_out, int64_t height, int64_t width, bool channels_last) {
  return empty_output({grad_out.size(0), grad_out.size(1), height, width},
                   grad_out.options().memory_format(channels_last ? at::MemoryFormat::ChannelsLast
                                                                  : at::MemoryFormat::Contiguous));
}

at::Tensor height_pool_avg_backward_cpu(const at::Tensor& grad_out_in, int64_t height, int64_t width,
                                        bool channels_last) {
  check_pool_grad(grad_out_in, height, width);
  const at::Tensor grad_out = grad_out_in.contiguous();
  at::Tensor grad_x = grad_input_for(grad_out, height, width, channels_last);
  if (grad_x.numel() == 0) return grad_x;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_out.scalar_type(), "height_pool_avg_backward_cpu",
                                  [&] {
                                    pool_avg_backward<scalar_t>(grad_x.data_ptr<scalar_t>(),
                                                                grad_out.const_data_ptr<scalar_t>(), grad_out.size(0),
                                                                grad_out.size(1), height, width, grad_out.size(2),
                                                                channels_last);
                                  });
  return grad_x;
}

at::Tensor height_pool_max_backward_cpu(const at::Tensor& grad_out_in, const at::Tensor& indices_in, int64_t height,
                                        int64_t width, bool channels_last) {
  check_pool_grad(grad_out_in, height, width);
  check_pool_indices(indices_in, grad_out_in, height, width);
  const at::Tensor grad_out = grad_out_in.contiguous();
  const at::Tensor indices = indices_in.contiguous();
  at::Tensor grad_x = grad_input_for(grad_out, height, width, channels_last).zero_();
  if (grad_x.numel() == 0) return grad_x;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_out.scalar_type(), "height_pool_max_backward_cpu",
                                  [&] {
                                    pool_max_backward<scalar_t>(grad_x.data_ptr<scalar_t>(),
                                                                grad_out.const_data_ptr<scalar_t>(),
                                                                indices.const_data_ptr<int64_t>(), grad_out.size(0),
                                                                grad_out.size(1), height, width, grad_out.size(2),
                                                                channels_last);
                                  });
  return grad_x;
}

}  // namespace

TORCH_LIBRARY_IMPL(hanet_fast, CPU, m) {
  m.impl("height_pool_avg", &height_pool_avg_cpu);
  m.impl("height_pool_avg_backward", &height_pool_avg_backward_cpu);
  m.impl("height_pool_max", &height_pool_max_cpu);
  m.impl("height_pool_max_backward", &height_pool_max_backward_cpu);
}

}  // namespace cpu
}  // namespace hanet_fast
