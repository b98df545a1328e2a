// CUDA kernels of height_pool (DESIGN §1): adaptive avg / max pooling of x [B, C, H, W] over
// its width into R coarse rows, and the backward of both. The same algorithm as
// csrc/cpu/height_pool_kernel.cpp, with the same index math (kernels/index_math.h):
//
// forward   1. x is read once: every row (split in segments when long, see common.cuh) is
//              reduced over its columns into a workspace of one acc_t per (row, segment): the
//              sum, or the maximum and its column under PyTorch's max rule.
//           2. one thread per output (b, c, bin) combines the rows h in [bin_start, bin_end)
//              and their segments, in order. Overlapping bins (H % R != 0, H < R) reuse the
//              row results.
// backward avg  grad_x[b, c, h, w] = sum over bins containing h of g[b, c, bin] / (rows * W):
//              the per-row coefficient first (one thread per (b, c, h), bins in order), then
//              grad_x written once.
// backward max  grad_x written once: each element gathers, in bin order, the gradients of the
//              bins of its row whose argmax it is (bins may share an argmax): no atomics, no
//              zero fill.
//
// Raw pointers and sizes only; `index_t` (int32_t or int64_t) is what divisions and offsets
// are computed in, int64_t once a tensor has 2^31 elements or more.
#pragma once

#include "common.cuh"

namespace hanet_fast {
namespace cuda {
namespace pool {

using index::bin_end;
using index::bin_start;

// ------------------------------------------------------------------------------ forward, step 1
// NCHW: per (row, segment) item, the sum (kMax false) or maximum + column (kMax true) of
// x[row, seg_begin : seg_end] into ws_value[item] (and ws_index[item]).
template <typename scalar_t, typename acc_t, typename index_t, int V, bool kMax>
__global__ void __launch_bounds__(kThreads)
    rows_nchw_kernel(const scalar_t* __restrict__ x, acc_t* __restrict__ ws_value, int64_t* __restrict__ ws_index,
                     RowTiling t) {
  const int64_t items = t.rows * t.segments;
  const GroupLane g = group_lane(t.group);
  for (int64_t base = g.first; base < items; base += g.step) {
    const int64_t item = base + g.group_in_warp;
    const bool valid = item < items;
    acc_t sum = 0;
    acc_t best = negative_infinity<acc_t>();
    index_t best_w = no_index<index_t>();  // a column: index_t is enough, widened when written
    if (valid) {
      const RowPiece<index_t> piece = row_piece<index_t>(t, item);
      const index_t row = piece.row;
      const index_t begin = static_cast<index_t>(piece.begin), end = static_cast<index_t>(piece.end);
      const index_t step = static_cast<index_t>(t.group * V);
      const scalar_t* in = x + static_cast<index_t>(row * static_cast<index_t>(t.width));
#pragma unroll 4
      for (index_t w = begin + static_cast<index_t>(g.lane * V); w < end; w += step) {
        const Pack<scalar_t, V> p = load_pack<V>(in + w);
#pragma unroll
        for (int k = 0; k < V; ++k) {
          const acc_t v = static_cast<acc_t>(p.v[k]);
          if constexpr (kMax) {
            take_max(best, best_w, v, static_cast<index_t>(w + k));
          } else {
            sum += v;
          }
        }
      }
    }
    // The whole warp reduces (groups past the end hold the identity).
    if constexpr (kMax) {
      group_max(best, best_w, t.group);
    } else {
      sum = group_sum(sum, t.group);
    }
    if (valid && g.lane == 0) {
      if constexpr (kMax) {
        ws_value[item] = best;
        ws_index[item] = static_cast<int64_t>(best_w);
      } else {
        ws_value[item] = sum;
      }
    }
  }
}

// NHWC: per (pixel row b * H + h, segment, vector of V channels), the same over the segment's
// columns, into the workspace laid out [B, H, S, C].
template <typename scalar_t, typename acc_t, typename index_t, int V, bool kMax>
__global__ void __launch_bounds__(kThreads)
    rows_nhwc_kernel(const scalar_t* __restrict__ x, acc_t* __restrict__ ws_value, int64_t* __restrict__ ws_index,
                     PixelTiling t) {
  const int64_t n = pixel_items(t, V);
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    const PixelPiece<index_t> piece = pixel_piece<index_t, V>(t, i);
    const index_t c = piece.c, seg = piece.seg, pixel_row = piece.pixel_row;
    const int64_t w0 = piece.w0, w1 = piece.w1;
    const scalar_t* in = x + (static_cast<index_t>(pixel_row * static_cast<index_t>(t.width) + static_cast<index_t>(w0)) *
                                  static_cast<index_t>(t.channels) +
                              c);
    acc_t sum[V];
    acc_t best[V];
    index_t best_w[V];  // columns: index_t is enough, widened when written
#pragma unroll
    for (int k = 0; k < V; ++k) {
      sum[k] = 0;
      best[k] = negative_infinity<acc_t>();
      best_w[k] = no_index<index_t>();
    }
    const index_t channels = static_cast<index_t>(t.channels);
#pragma unroll 4
    for (index_t w = static_cast<index_t>(w0); w < static_cast<index_t>(w1); ++w, in += channels) {
      const Pack<scalar_t, V> p = load_pack<V>(in);
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const acc_t v = static_cast<acc_t>(p.v[k]);
        if constexpr (kMax) {
          take_max(best[k], best_w[k], v, w);
        } else {
          sum[k] += v;
        }
      }
    }
    const index_t out = (pixel_row * static_cast<index_t>(t.segments) + seg) * static_cast<index_t>(t.channels) + c;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      if constexpr (kMax) {
        ws_value[out + k] = best[k];
        ws_index[out + k] = static_cast<int64_t>(best_w[k]);
      } else {
        ws_value[out + k] = sum[k];
      }
    }
  }
}

// ------------------------------------------------------------------------------ forward, step 2
// One thread per output (b, c, bin) of out [B, C, R] (contiguous): combines rows h0..h1-1 and
// their segments in order. Max: the flat index h * W + w of the winner goes to out_index.
// Neighbouring threads take neighbouring bins, or channels when the workspace is [B, H, S, C].
template <typename scalar_t, typename acc_t, bool kMax>
__global__ void __launch_bounds__(kThreads)
    bins_kernel(scalar_t* __restrict__ out, int64_t* __restrict__ out_index, const acc_t* __restrict__ ws_value,
                const int64_t* __restrict__ ws_index, int64_t B, int64_t C, int64_t H, int64_t W, int64_t R,
                RowLayout ws) {
  const int64_t n = B * C * R;
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    const BCK at_out = split_bck(i, C, R, ws.channels_fastest);
    const int64_t bin = at_out.k;
    const int64_t o = (at_out.b * C + at_out.c) * R + bin;
    const int64_t base = at_out.b * ws.b_stride + at_out.c * ws.c_stride;
    const int64_t h0 = bin_start(bin, R, H), h1 = bin_end(bin, R, H);
    if constexpr (kMax) {
      acc_t best = negative_infinity<acc_t>();
      int64_t best_index = kNoIndex;
      for (int64_t h = h0; h < h1; ++h) {
        for (int64_t s = 0; s < ws.segments; ++s) {
          const int64_t at = base + h * ws.h_stride + s * ws.s_stride;
          take_max(best, best_index, ws_value[at], h * W + ws_index[at]);
        }
      }
      out[o] = static_cast<scalar_t>(best);
      out_index[o] = best_index;
    } else {
      acc_t total = 0;
      for (int64_t h = h0; h < h1; ++h) {
        for (int64_t s = 0; s < ws.segments; ++s) total += ws_value[base + h * ws.h_stride + s * ws.s_stride];
      }
      out[o] = static_cast<scalar_t>(total / static_cast<acc_t>((h1 - h0) * W));
    }
  }
}

// ------------------------------------------------------------------------------ backward, avg
// coef[b, c, h] (at `ws`, segments unused) = sum over the bins containing h, in bin order, of
// grad_out[b, c, bin] / (bin rows * W). The bins containing h are consecutive and the first
// is floor(h * R / H) (bin i ends after h exactly when i >= h * R / H); membership is still
// checked with bin_start / bin_end.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    avg_coef_kernel(acc_t* __restrict__ coef, const scalar_t* __restrict__ grad_out, int64_t B, int64_t C, int64_t H,
                    int64_t W, int64_t R, RowLayout ws) {
  const int64_t n = B * C * H;
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    const BCK at = split_bck(i, C, H, ws.channels_fastest);
    const int64_t h = at.k;
    const scalar_t* g = grad_out + (at.b * C + at.c) * R;
    acc_t total = 0;
    for (int64_t bin = h * R / H; bin < R; ++bin) {
      const int64_t h0 = bin_start(bin, R, H);
      if (h0 > h) break;
      const int64_t h1 = bin_end(bin, R, H);
      if (h < h1) total += static_cast<acc_t>(g[bin]) / static_cast<acc_t>((h1 - h0) * W);
    }
    coef[at.b * ws.b_stride + at.c * ws.c_stride + h * ws.h_stride] = total;
  }
}

// NCHW: grad_x[row, :] = coef[row] (coef laid out [B, C, H]).
template <typename scalar_t, typename acc_t, typename index_t, int V>
__global__ void __launch_bounds__(kThreads)
    fill_rows_nchw_kernel(scalar_t* __restrict__ grad_x, const acc_t* __restrict__ coef, RowTiling t) {
  const int64_t items = t.rows * t.segments;
  const GroupLane g = group_lane(t.group);
  for (int64_t base = g.first; base < items; base += g.step) {
    const int64_t item = base + g.group_in_warp;
    if (item >= items) continue;  // no shuffles in this kernel
    const RowPiece<index_t> piece = row_piece<index_t>(t, item);
    const index_t row = piece.row;
    const int64_t begin = piece.begin, end = piece.end;
    Pack<scalar_t, V> p;
    const scalar_t value = static_cast<scalar_t>(coef[row]);
#pragma unroll
    for (int k = 0; k < V; ++k) p.v[k] = value;
    scalar_t* out = grad_x + static_cast<index_t>(row * static_cast<index_t>(t.width));
    const index_t step = static_cast<index_t>(t.group * V);
#pragma unroll 4
    for (index_t w = static_cast<index_t>(begin) + static_cast<index_t>(g.lane * V); w < static_cast<index_t>(end);
         w += step) {
      store_pack<V>(out + w, p);
    }
  }
}

// NHWC: grad_x[b, h, w, c] = coef[b, h, c] (coef laid out [B, H, C]).
template <typename scalar_t, typename acc_t, typename index_t, int V>
__global__ void __launch_bounds__(kThreads)
    fill_rows_nhwc_kernel(scalar_t* __restrict__ grad_x, const acc_t* __restrict__ coef, PixelTiling t) {
  const int64_t n = pixel_items(t, V);
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    const PixelPiece<index_t> piece = pixel_piece<index_t, V>(t, i);
    const index_t c = piece.c, pixel_row = piece.pixel_row;
    const int64_t w0 = piece.w0, w1 = piece.w1;
    const acc_t* values = coef + (pixel_row * static_cast<index_t>(t.channels) + c);
    Pack<scalar_t, V> p;
#pragma unroll
    for (int k = 0; k < V; ++k) p.v[k] = static_cast<scalar_t>(values[k]);
    scalar_t* out = grad_x + (static_cast<index_t>(pixel_row * static_cast<index_t>(t.width) + static_cast<index_t>(w0)) *
                                  static_cast<index_t>(t.channels) +
                              c);
    const index_t channels = static_cast<index_t>(t.channels);
    const index_t columns = static_cast<index_t>(w1 - w0);
    // Indexed from the segment's first column: with `out += channels` instead, nvcc split one
    // of the four unrolled 128-bit stores (int32 index) into two 64-bit ones.
#pragma unroll 4
    for (index_t w = 0; w < columns; ++w) store_pack<V>(out + w * channels, p);
  }
}

// ------------------------------------------------------------------------------ backward, max
// grad_x is written once, gathered: element (b, c, h, w) gets, in bin order, grad_out[b, c, i] of
// every bin i containing row h whose argmax is h * W + w, added as the CPU kernel adds them
// (acc_t, rounded to scalar_t after each bin). The bins containing h are consecutive, from
// floor(h * R / H) (see avg_coef_kernel), and few: at most 2 when H >= R. The argmax columns
// of the first kRowBins of them stay in registers, so a vector of columns none of them hits is
// stored as zeros without reading anything; a vector one of them hits (or every vector of a
// row in more bins) reads the bins' indices and gradients back. An index outside the row
// (only possible from hand-made indices) matches no element, as the scatter it replaces skipped it.
constexpr int kRowBins = 2;

// Bins [first, end) are the bins containing row h.
HANET_HOST_DEVICE void bins_of_row(int64_t h, int64_t R, int64_t H, int64_t& first, int64_t& end) {
  first = h * R / H;
  end = first;
  while (end < R && bin_start(end, R, H) <= h) ++end;
}

// The element at flat index `flat` of one plane's row h (indices / grads: that plane's R bins).
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ scalar_t gathered(const int64_t* indices, const scalar_t* grads, int64_t first, int64_t end,
                                             int64_t flat) {
  scalar_t value = static_cast<scalar_t>(0);
  for (int64_t bin = first; bin < end; ++bin) {
    if (indices[bin] == flat) value = static_cast<scalar_t>(static_cast<acc_t>(value) + static_cast<acc_t>(grads[bin]));
  }
  return value;
}

// NCHW: per (row, segment) item, as fill_rows_nchw_kernel.
template <typename scalar_t, typename acc_t, typename index_t, int V>
__global__ void __launch_bounds__(kThreads)
    max_gather_nchw_kernel(scalar_t* __restrict__ grad_x, const scalar_t* __restrict__ grad_out,
                           const int64_t* __restrict__ indices, RowTiling t, int64_t H, int64_t R) {
  const int64_t items = t.rows * t.segments;
  const GroupLane g = group_lane(t.group);
  for (int64_t base = g.first; base < items; base += g.step) {
    const int64_t item = base + g.group_in_warp;
    if (item >= items) continue;  // no shuffles in this kernel
    const RowPiece<index_t> piece = row_piece<index_t>(t, item);
    const index_t row = piece.row;
    const index_t plane = row / static_cast<index_t>(H);
    const int64_t h = row - plane * static_cast<index_t>(H);
    const int64_t row_start = h * t.width;  // flat index of (h, 0) in the plane
    const int64_t* plane_indices = indices + static_cast<int64_t>(plane) * R;
    const scalar_t* plane_grads = grad_out + static_cast<int64_t>(plane) * R;
    int64_t first, end_bin;
    bins_of_row(h, R, H, first, end_bin);
    const bool many = end_bin - first > kRowBins;
    index_t col[kRowBins];
#pragma unroll
    for (int j = 0; j < kRowBins; ++j) {
      const int64_t rel = first + j < end_bin ? plane_indices[first + j] - row_start : -1;
      col[j] = rel >= 0 && rel < t.width ? static_cast<index_t>(rel) : static_cast<index_t>(-1);
    }
    scalar_t* out = grad_x + static_cast<index_t>(row * static_cast<index_t>(t.width));
    const index_t step = static_cast<index_t>(t.group * V);
    // Not unrolled: the loop only stores (nothing to keep in flight), and copies of the gather
    // branch made the 16-bit kernels spill.
#pragma unroll 1
    for (index_t w = static_cast<index_t>(piece.begin) + static_cast<index_t>(g.lane * V);
         w < static_cast<index_t>(piece.end); w += step) {
      bool hit = many;
#pragma unroll
      for (int j = 0; j < kRowBins; ++j) hit |= static_cast<uint32_t>(col[j] - w) < static_cast<uint32_t>(V);
      Pack<scalar_t, V> p;
#pragma unroll
      for (int k = 0; k < V; ++k) p.v[k] = static_cast<scalar_t>(0);
      if (hit) {
#pragma unroll
        for (int k = 0; k < V; ++k) {
          p.v[k] = gathered<scalar_t, acc_t>(plane_indices, plane_grads, first, end_bin, row_start + w + k);
        }
      }
      store_pack<V>(out + w, p);
    }
  }
}

// NHWC: per (pixel row, segment, vector of V channels) thread, as fill_rows_nhwc_kernel.
template <typename scalar_t, typename acc_t, typename index_t, int V>
__global__ void __launch_bounds__(kThreads)
    max_gather_nhwc_kernel(scalar_t* __restrict__ grad_x, const scalar_t* __restrict__ grad_out,
                           const int64_t* __restrict__ indices, PixelTiling t, int64_t H, int64_t R) {
  const int64_t n = pixel_items(t, V);
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    const PixelPiece<index_t> piece = pixel_piece<index_t, V>(t, i);
    const index_t c = piece.c, pixel_row = piece.pixel_row;
    const index_t b = pixel_row / static_cast<index_t>(H);
    const int64_t h = pixel_row - b * static_cast<index_t>(H);
    const int64_t row_start = h * t.width;
    const int64_t plane0 = static_cast<int64_t>(b) * t.channels + c;  // plane of channel c; c + k is plane0 + k
    int64_t first, end_bin;
    bins_of_row(h, R, H, first, end_bin);
    const bool many = end_bin - first > kRowBins;
    index_t col[V][kRowBins];
#pragma unroll
    for (int k = 0; k < V; ++k) {
#pragma unroll
      for (int j = 0; j < kRowBins; ++j) {
        const int64_t rel = first + j < end_bin ? indices[(plane0 + k) * R + first + j] - row_start : -1;
        col[k][j] = rel >= 0 && rel < t.width ? static_cast<index_t>(rel) : static_cast<index_t>(-1);
      }
    }
    const index_t channels = static_cast<index_t>(t.channels);
    scalar_t* out = grad_x + (static_cast<index_t>(pixel_row * static_cast<index_t>(t.width) +
                                                   static_cast<index_t>(piece.w0)) * channels + c);
#pragma unroll 1  // as in max_gather_nchw_kernel
    for (index_t w = static_cast<index_t>(piece.w0); w < static_cast<index_t>(piece.w1); ++w, out += channels) {
      bool hit = many;
#pragma unroll
      for (int k = 0; k < V; ++k) {
#pragma unroll
        for (int j = 0; j < kRowBins; ++j) hit |= col[k][j] == w;
      }
      Pack<scalar_t, V> p;
#pragma unroll
      for (int k = 0; k < V; ++k) p.v[k] = static_cast<scalar_t>(0);
      if (hit) {
#pragma unroll
        for (int k = 0; k < V; ++k) {
          p.v[k] = gathered<scalar_t, acc_t>(indices + (plane0 + k) * R, grad_out + (plane0 + k) * R, first, end_bin,
                                             row_start + w);
        }
      }
      store_pack<V>(out, p);
    }
  }
}

// ------------------------------------------------------------------------------ launch sequences
// Everything below runs on the host: it picks the tiling and launches the kernels on
// device, calling check() after every launch. Buffers are raw device pointers.

// The forward's tiling, and how many (row, segment) values step 1 writes to the workspace.
struct ForwardPlan {
  bool channels_last;
  int vec;  // 1, or vec_width<scalar_t>() when the rows (NCHW) / channels (NHWC) allow 16-byte accesses
  RowTiling rows;
  PixelTiling pixels;
  int64_t workspace;  // elements of ws_value (and ws_index)
  RowLayout layout;
};

template <typename scalar_t>
ForwardPlan plan_forward(const scalar_t* x, int64_t B, int64_t C, int64_t H, int64_t W, bool channels_last,
                         const Device& device) {
  constexpr int V = vec_width<scalar_t>();
  ForwardPlan plan{};
  plan.channels_last = channels_last;
  if (!channels_last) {
    plan.vec = (W % V == 0 && is_aligned(x, 16)) ? V : 1;
    plan.rows = plan_rows(B * C * H, W, plan.vec, device.target_threads());
    plan.workspace = plan.rows.rows * plan.rows.segments;
    plan.layout = RowLayout::nchw(C, H, plan.rows.segments);
  } else {
    plan.vec = (C % V == 0 && is_aligned(x, 16)) ? V : 1;
    plan.pixels = plan_pixels(B * H, W, C, plan.vec, device.target_pixel_threads());
    plan.workspace = B * H * plan.pixels.segments * C;
    plan.layout = RowLayout::nhwc(C, H, plan.pixels.segments);
  }
  return plan;
}

// out [B, C, R] (and out_index for max); ws_value / ws_index hold plan.workspace elements.
template <typename scalar_t, typename acc_t, typename index_t, bool kMax, typename Check>
void forward(const ForwardPlan& plan, scalar_t* out, int64_t* out_index, const scalar_t* x, acc_t* ws_value,
             int64_t* ws_index, int64_t B, int64_t C, int64_t H, int64_t W, int64_t R, const Device& device,
             Check&& check) {
  constexpr int V = vec_width<scalar_t>();
  if (!plan.channels_last) {
    const int64_t blocks = blocks_for_rows(device, plan.rows);
    if (plan.vec == V) {
      launch(rows_nchw_kernel<scalar_t, acc_t, index_t, V, kMax>, blocks, device, x, ws_value, ws_index, plan.rows);
    } else {
      launch(rows_nchw_kernel<scalar_t, acc_t, index_t, 1, kMax>, blocks, device, x, ws_value, ws_index, plan.rows);
    }
  } else {
    const PixelTiling& t = plan.pixels;
    const int64_t blocks = device.blocks_for(pixel_items(t, plan.vec));
    if (plan.vec == V) {
      launch(rows_nhwc_kernel<scalar_t, acc_t, index_t, V, kMax>, blocks, device, x, ws_value, ws_index, t);
    } else {
      launch(rows_nhwc_kernel<scalar_t, acc_t, index_t, 1, kMax>, blocks, device, x, ws_value, ws_index, t);
    }
  }
  check();
  launch(bins_kernel<scalar_t, acc_t, kMax>, device.blocks_for(B * C * R), device, out, out_index, ws_value,
         ws_index, B, C, H, W, R, plan.layout);
  check();
}

template <typename scalar_t>
int vec_for_fill(const scalar_t* grad_x, int64_t C, int64_t W, bool channels_last) {
  constexpr int V = vec_width<scalar_t>();
  return ((channels_last ? C : W) % V == 0 && is_aligned(grad_x, 16)) ? V : 1;
}

// Average backward: coef holds B * C * H acc_t.
template <typename scalar_t, typename acc_t, typename index_t, typename Check>
void avg_backward(scalar_t* grad_x, const scalar_t* grad_out, acc_t* coef, int64_t B, int64_t C, int64_t H, int64_t W,
                  int64_t R, bool channels_last, const Device& device, Check&& check) {
  constexpr int V = vec_width<scalar_t>();
  const RowLayout layout = channels_last ? RowLayout::nhwc(C, H, 1) : RowLayout::nchw(C, H, 1);
  launch(avg_coef_kernel<scalar_t, acc_t>, device.blocks_for(B * C * H), device, coef, grad_out, B, C, H, W, R,
         layout);
  check();
  const int vec = vec_for_fill(grad_x, C, W, channels_last);
  if (!channels_last) {
    const RowTiling t = plan_rows(B * C * H, W, vec, device.target_threads());
    const int64_t blocks = blocks_for_rows(device, t);
    if (vec == V) {
      launch(fill_rows_nchw_kernel<scalar_t, acc_t, index_t, V>, blocks, device, grad_x, coef, t);
    } else {
      launch(fill_rows_nchw_kernel<scalar_t, acc_t, index_t, 1>, blocks, device, grad_x, coef, t);
    }
  } else {
    const PixelTiling t = plan_pixels(B * H, W, C, vec, device.target_pixel_threads());
    const int64_t blocks = device.blocks_for(t.pixel_rows * t.segments * (C / vec));
    if (vec == V) {
      launch(fill_rows_nhwc_kernel<scalar_t, acc_t, index_t, V>, blocks, device, grad_x, coef, t);
    } else {
      launch(fill_rows_nhwc_kernel<scalar_t, acc_t, index_t, 1>, blocks, device, grad_x, coef, t);
    }
  }
  check();
}

// Max backward: every element of grad_x written once (no zero fill first).
template <typename scalar_t, typename acc_t, typename index_t, typename Check>
void max_backward(scalar_t* grad_x, const scalar_t* grad_out, const int64_t* indices, int64_t B, int64_t C, int64_t H,
                  int64_t W, int64_t R, bool channels_last, const Device& device, Check&& check) {
  constexpr int V = vec_width<scalar_t>();
  const int vec = vec_for_fill(grad_x, C, W, channels_last);
  if (!channels_last) {
    const RowTiling t = plan_rows(B * C * H, W, vec, device.target_threads());
    const int64_t blocks = blocks_for_rows(device, t);
    if (vec == V) {
      launch(max_gather_nchw_kernel<scalar_t, acc_t, index_t, V>, blocks, device, grad_x, grad_out, indices, t, H, R);
    } else {
      launch(max_gather_nchw_kernel<scalar_t, acc_t, index_t, 1>, blocks, device, grad_x, grad_out, indices, t, H, R);
    }
  } else {
    const PixelTiling t = plan_pixels(B * H, W, C, vec, device.target_pixel_threads());
    const int64_t blocks = device.blocks_for(pixel_items(t, vec));
    if (vec == V) {
      launch(max_gather_nhwc_kernel<scalar_t, acc_t, index_t, V>, blocks, device, grad_x, grad_out, indices, t, H, R);
    } else {
      launch(max_gather_nhwc_kernel<scalar_t, acc_t, index_t, 1>, blocks, device, grad_x, grad_out, indices, t, H, R);
    }
  }
  check();
}

}  // namespace pool
}  // namespace cuda
}  // namespace hanet_fast
