// CUDA kernels of height_gate (DESIGN §1): y = x * up(attn)[..., None], up = linear resize of
// attn [B, C, R] to x's height H (align_corners=False), and its backward. The same algorithm
// as csrc/cpu/height_gate_kernel.cpp, with the same index math (kernels/index_math.h):
//
// forward   each (row, segment) item (NCHW) or (pixel row, segment, channel vector) thread
//           (NHWC) computes its row's upsampled attention from the two coarse taps in
//           registers, then scales its x elements: up(attn) is never stored.
// backward  one pass reads grad_y and x once and writes grad_x = grad_y * up(attn) once
//           (kGradX; the attn-only variant skips it) while it sums grad_y * x over each
//           row's columns (a group butterfly in NCHW, per thread in NHWC) into a workspace of
//           one acc_t per (row, segment); then one thread per grad_attn[b, c, r] applies the
//           transposed interpolation: the rows h whose taps touch r, in increasing h, lo tap
//           before hi tap, as the CPU kernel does. No atomics: deterministic.
#pragma once

#include "common.cuh"

namespace hanet_fast {
namespace cuda {
namespace gate {

using index::linear_taps;
using index::LinearTaps;

// up(attn)[h] for one (b, c) plane of attn (R contiguous values).
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t upsampled(const scalar_t* attn_plane, int64_t h, int64_t R, int64_t H) {
  const LinearTaps<acc_t> t = linear_taps<acc_t>(h, R, H);
  return t.w_lo * static_cast<acc_t>(attn_plane[t.lo]) + t.w_hi * static_cast<acc_t>(attn_plane[t.hi]);
}

// ------------------------------------------------------------------------------ forward
template <typename scalar_t, typename acc_t, typename index_t, int V>
__global__ void __launch_bounds__(kThreads)
    forward_nchw_kernel(scalar_t* __restrict__ y, const scalar_t* __restrict__ x, const scalar_t* __restrict__ attn,
                        RowTiling t, int64_t H, int64_t R) {
  const int64_t items = t.rows * t.segments;
  const GroupLane g = group_lane(t.group);
  for (int64_t base = g.first; base < items; base += g.step) {
    const int64_t item = base + g.group_in_warp;
    if (item >= items) continue;  // no shuffles in this kernel
    const RowPiece<index_t> piece = row_piece<index_t>(t, item);
    const index_t row = piece.row;
    const int64_t begin = piece.begin, end = piece.end;
    const index_t plane = row / static_cast<index_t>(H);
    const index_t h = row - plane * static_cast<index_t>(H);
    const acc_t a = upsampled<scalar_t, acc_t>(attn + static_cast<int64_t>(plane) * R, h, R, H);
    const index_t offset = row * static_cast<index_t>(t.width);
    const scalar_t* in = x + offset;
    scalar_t* out = y + offset;
    const index_t step = static_cast<index_t>(t.group * V);
#pragma unroll 4
    for (index_t w = static_cast<index_t>(begin) + static_cast<index_t>(g.lane * V); w < static_cast<index_t>(end);
         w += step) {
      const Pack<scalar_t, V> p = load_pack<V>(in + w);
      Pack<scalar_t, V> q;
#pragma unroll
      for (int k = 0; k < V; ++k) q.v[k] = static_cast<scalar_t>(static_cast<acc_t>(p.v[k]) * a);
      store_pack<V>(out + w, q);
    }
  }
}

template <typename scalar_t, typename acc_t, typename index_t, int V>
__global__ void __launch_bounds__(kThreads)
    forward_nhwc_kernel(scalar_t* __restrict__ y, const scalar_t* __restrict__ x, const scalar_t* __restrict__ attn,
                        PixelTiling t, int64_t H, int64_t R) {
  const int64_t n = pixel_items(t, V);
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    const PixelPiece<index_t> piece = pixel_piece<index_t, V>(t, i);
    const index_t c = piece.c, pixel_row = piece.pixel_row;
    const index_t b = pixel_row / static_cast<index_t>(H);
    const index_t h = pixel_row - b * static_cast<index_t>(H);
    const LinearTaps<acc_t> taps = linear_taps<acc_t>(h, R, H);
    const scalar_t* attn_c = attn + (static_cast<int64_t>(b) * t.channels + c) * R;  // attn[b, c, :]
    acc_t a[V];
#pragma unroll
    for (int k = 0; k < V; ++k) {
      a[k] = taps.w_lo * static_cast<acc_t>(attn_c[k * R + taps.lo]) + taps.w_hi * static_cast<acc_t>(attn_c[k * R + taps.hi]);
    }
    const int64_t w0 = piece.w0, w1 = piece.w1;
    const index_t offset = (pixel_row * static_cast<index_t>(t.width) + static_cast<index_t>(w0)) *
                               static_cast<index_t>(t.channels) +
                           c;
    const scalar_t* in = x + offset;
    scalar_t* out = y + offset;
    const index_t channels = static_cast<index_t>(t.channels);
#pragma unroll 4
    for (index_t w = static_cast<index_t>(w0); w < static_cast<index_t>(w1); ++w, in += channels, out += channels) {
      const Pack<scalar_t, V> p = load_pack<V>(in);
      Pack<scalar_t, V> q;
#pragma unroll
      for (int k = 0; k < V; ++k) q.v[k] = static_cast<scalar_t>(static_cast<acc_t>(p.v[k]) * a[k]);
      store_pack<V>(out, q);
    }
  }
}

// ------------------------------------------------------------------------------ backward, pass 1
// NCHW: per (row, segment) item, grad_x = grad_y * up(attn) (kGradX) and
// row_sums[item] = sum over the segment of grad_y * x.
template <typename scalar_t, typename acc_t, typename index_t, int V, bool kGradX>
__global__ void __launch_bounds__(kThreads)
    backward_nchw_kernel(scalar_t* __restrict__ grad_x, acc_t* __restrict__ row_sums,
                         const scalar_t* __restrict__ grad_y, const scalar_t* __restrict__ x,
                         const scalar_t* __restrict__ attn, RowTiling t, int64_t H, int64_t R) {
  const int64_t items = t.rows * t.segments;
  const GroupLane g = group_lane(t.group);
  for (int64_t base = g.first; base < items; base += g.step) {
    const int64_t item = base + g.group_in_warp;
    const bool valid = item < items;
    acc_t sum = 0;
    if (valid) {
      const RowPiece<index_t> piece = row_piece<index_t>(t, item);
      const index_t row = piece.row;
      const int64_t begin = piece.begin, end = piece.end;
      acc_t a = 0;
      if constexpr (kGradX) {
        const index_t plane = row / static_cast<index_t>(H);
        const index_t h = row - plane * static_cast<index_t>(H);
        a = upsampled<scalar_t, acc_t>(attn + static_cast<int64_t>(plane) * R, h, R, H);
      }
      const index_t offset = row * static_cast<index_t>(t.width);
      const index_t step = static_cast<index_t>(t.group * V);
      // Unrolled 4 times with 64-bit indices, the float kernel spilled (16 B stack frame) and
      // stored half of grad_x with 32-bit STG; twice keeps every access 128-bit.
      constexpr int kUnroll = sizeof(index_t) == 4 ? 4 : 2;
#pragma unroll kUnroll
      for (index_t w = static_cast<index_t>(begin) + static_cast<index_t>(g.lane * V); w < static_cast<index_t>(end);
           w += step) {
        const Pack<scalar_t, V> gy = load_pack<V>(grad_y + offset + w);
        const Pack<scalar_t, V> xv = load_pack<V>(x + offset + w);
        Pack<scalar_t, V> gx;
#pragma unroll
        for (int k = 0; k < V; ++k) {
          const acc_t gk = static_cast<acc_t>(gy.v[k]);
          sum += gk * static_cast<acc_t>(xv.v[k]);
          if constexpr (kGradX) gx.v[k] = static_cast<scalar_t>(gk * a);
        }
        if constexpr (kGradX) store_pack<V>(grad_x + offset + w, gx);
      }
    }
    sum = group_sum(sum, t.group);  // the whole warp (groups past the end add zeros)
    if (valid && g.lane == 0) row_sums[item] = sum;
  }
}

// NHWC: per (pixel row, segment, channel vector) thread, the same; row_sums laid out [B, H, S, C].
template <typename scalar_t, typename acc_t, typename index_t, int V, bool kGradX>
__global__ void __launch_bounds__(kThreads)
    backward_nhwc_kernel(scalar_t* __restrict__ grad_x, acc_t* __restrict__ row_sums,
                         const scalar_t* __restrict__ grad_y, const scalar_t* __restrict__ x,
                         const scalar_t* __restrict__ attn, PixelTiling t, int64_t H, int64_t R) {
  const int64_t n = pixel_items(t, V);
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    const PixelPiece<index_t> piece = pixel_piece<index_t, V>(t, i);
    const index_t c = piece.c, seg = piece.seg, pixel_row = piece.pixel_row;
    acc_t a[V];
    acc_t sum[V];
#pragma unroll
    for (int k = 0; k < V; ++k) {
      a[k] = 0;
      sum[k] = 0;
    }
    if constexpr (kGradX) {
      const index_t b = pixel_row / static_cast<index_t>(H);
      const index_t h = pixel_row - b * static_cast<index_t>(H);
      const LinearTaps<acc_t> taps = linear_taps<acc_t>(h, R, H);
      const scalar_t* attn_c = attn + (static_cast<int64_t>(b) * t.channels + c) * R;  // attn[b, c, :]
#pragma unroll
      for (int k = 0; k < V; ++k) {
        a[k] = taps.w_lo * static_cast<acc_t>(attn_c[k * R + taps.lo]) +
               taps.w_hi * static_cast<acc_t>(attn_c[k * R + taps.hi]);
      }
    }
    const int64_t w0 = piece.w0, w1 = piece.w1;
    const index_t offset = (pixel_row * static_cast<index_t>(t.width) + static_cast<index_t>(w0)) *
                               static_cast<index_t>(t.channels) +
                           c;
    const scalar_t* gy_in = grad_y + offset;
    const scalar_t* x_in = x + offset;
    scalar_t* gx_out = kGradX ? grad_x + offset : nullptr;
    const index_t channels = static_cast<index_t>(t.channels);
#pragma unroll 4
    for (index_t w = static_cast<index_t>(w0); w < static_cast<index_t>(w1); ++w, gy_in += channels, x_in += channels) {
      const Pack<scalar_t, V> gy = load_pack<V>(gy_in);
      const Pack<scalar_t, V> xv = load_pack<V>(x_in);
      Pack<scalar_t, V> gx;
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const acc_t gk = static_cast<acc_t>(gy.v[k]);
        sum[k] += gk * static_cast<acc_t>(xv.v[k]);
        if constexpr (kGradX) gx.v[k] = static_cast<scalar_t>(gk * a[k]);
      }
      if constexpr (kGradX) {
        store_pack<V>(gx_out, gx);
        gx_out += channels;
      }
    }
    acc_t* out = row_sums + ((pixel_row * static_cast<index_t>(t.segments) + seg) * static_cast<index_t>(t.channels) + c);
#pragma unroll
    for (int k = 0; k < V; ++k) out[k] = sum[k];
  }
}

// ------------------------------------------------------------------------------ backward, pass 2
// The first row h in [0, H] whose low tap is >= target (H if none). The low tap is
// nondecreasing in h: the source coordinate is a monotone function of h rounded
// monotonically, then clamped and floored.
template <typename acc_t>
__device__ __forceinline__ int64_t first_row_reaching(int64_t target, int64_t R, int64_t H) {
  int64_t lo = 0, hi = H;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (linear_taps<acc_t>(mid, R, H).lo >= target) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  return lo;
}

// grad_attn[b, c, r] (contiguous [B, C, R]) = sum over rows h, increasing, of w_lo(h) * s(h)
// if lo(h) == r, then w_hi(h) * s(h) if hi(h) == r, where s(h) = the row's segment sums
// added in segment order. Only rows with lo(h) in {r - 1, r} can touch r (hi = lo or lo + 1).
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    attn_grad_kernel(scalar_t* __restrict__ grad_attn, const acc_t* __restrict__ row_sums, int64_t B, int64_t C,
                     int64_t H, int64_t R, RowLayout ws) {
  const int64_t n = B * C * R;
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    const BCK at = split_bck(i, C, R, ws.channels_fastest);  // neighbouring threads: neighbouring workspace reads
    const int64_t r = at.k;
    const int64_t base = at.b * ws.b_stride + at.c * ws.c_stride;
    const int64_t h_end = first_row_reaching<acc_t>(r + 1, R, H);
    acc_t total = 0;
    for (int64_t h = first_row_reaching<acc_t>(r - 1, R, H); h < h_end; ++h) {
      const LinearTaps<acc_t> taps = linear_taps<acc_t>(h, R, H);
      if (taps.lo != r && taps.hi != r) continue;
      acc_t s = 0;
      for (int64_t seg = 0; seg < ws.segments; ++seg) s += row_sums[base + h * ws.h_stride + seg * ws.s_stride];
      if (taps.lo == r) total += taps.w_lo * s;
      if (taps.hi == r) total += taps.w_hi * s;
    }
    grad_attn[(at.b * C + at.c) * R + r] = static_cast<scalar_t>(total);
  }
}

// ------------------------------------------------------------------------------ launch sequences
// Host side: picks the tiling and launches on device, calling check() after each launch.
struct Plan {
  bool channels_last;
  int vec;  // 1, or vec_width<scalar_t>() when W (NCHW) / C (NHWC) and every pointer allow it
  RowTiling rows;
  PixelTiling pixels;
  int64_t workspace;  // backward: elements of row_sums
  RowLayout layout;   // backward: where row_sums keeps (b, c, h, segment)
};

// `pointers` are every large tensor the kernel touches (x, y / grad_y, grad_x; null ones ignored).
template <typename scalar_t>
Plan make_plan(std::initializer_list<const scalar_t*> pointers, int64_t B, int64_t C, int64_t H, int64_t W,
          bool channels_last, const Device& device) {
  constexpr int V = vec_width<scalar_t>();
  bool aligned = true;
  for (const scalar_t* p : pointers) aligned = aligned && (p == nullptr || is_aligned(p, 16));
  Plan plan{};
  plan.channels_last = channels_last;
  if (!channels_last) {
    plan.vec = (W % V == 0 && aligned) ? V : 1;
    plan.rows = plan_rows(B * C * H, W, plan.vec, device.target_threads());
    plan.workspace = plan.rows.rows * plan.rows.segments;
    plan.layout = RowLayout::nchw(C, H, plan.rows.segments);
  } else {
    plan.vec = (C % V == 0 && aligned) ? V : 1;
    plan.pixels = plan_pixels(B * H, W, C, plan.vec, device.target_pixel_threads());
    plan.workspace = B * H * plan.pixels.segments * C;
    plan.layout = RowLayout::nhwc(C, H, plan.pixels.segments);
  }
  return plan;
}

template <typename scalar_t, typename acc_t, typename index_t, typename Check>
void forward(const Plan& plan, scalar_t* y, const scalar_t* x, const scalar_t* attn, int64_t H, int64_t R,
             const Device& device, Check&& check) {
  constexpr int V = vec_width<scalar_t>();
  if (!plan.channels_last) {
    const int64_t blocks = blocks_for_rows(device, plan.rows);
    if (plan.vec == V) {
      launch(forward_nchw_kernel<scalar_t, acc_t, index_t, V>, blocks, device, y, x, attn, plan.rows, H, R);
    } else {
      launch(forward_nchw_kernel<scalar_t, acc_t, index_t, 1>, blocks, device, y, x, attn, plan.rows, H, R);
    }
  } else {
    const PixelTiling& t = plan.pixels;
    const int64_t blocks = device.blocks_for(pixel_items(t, plan.vec));
    if (plan.vec == V) {
      launch(forward_nhwc_kernel<scalar_t, acc_t, index_t, V>, blocks, device, y, x, attn, t, H, R);
    } else {
      launch(forward_nhwc_kernel<scalar_t, acc_t, index_t, 1>, blocks, device, y, x, attn, t, H, R);
    }
  }
  check();
}

// grad_x and attn are null for the attn-only variant (kGradX false); row_sums holds
// plan.workspace elements; grad_attn is [B, C, R] contiguous.
template <typename scalar_t, typename acc_t, typename index_t, bool kGradX, typename Check>
void backward(const Plan& plan, scalar_t* grad_x, scalar_t* grad_attn, acc_t* row_sums, const scalar_t* grad_y,
              const scalar_t* x, const scalar_t* attn, int64_t B, int64_t C, int64_t H, int64_t R,
              const Device& device, Check&& check) {
  constexpr int V = vec_width<scalar_t>();
  if (!plan.channels_last) {
    const int64_t blocks = blocks_for_rows(device, plan.rows);
    if (plan.vec == V) {
      launch(backward_nchw_kernel<scalar_t, acc_t, index_t, V, kGradX>, blocks, device, grad_x, row_sums,
             grad_y, x, attn, plan.rows, H, R);
    } else {
      launch(backward_nchw_kernel<scalar_t, acc_t, index_t, 1, kGradX>, blocks, device, grad_x, row_sums,
             grad_y, x, attn, plan.rows, H, R);
    }
  } else {
    const PixelTiling& t = plan.pixels;
    const int64_t blocks = device.blocks_for(pixel_items(t, plan.vec));
    if (plan.vec == V) {
      launch(backward_nhwc_kernel<scalar_t, acc_t, index_t, V, kGradX>, blocks, device, grad_x, row_sums,
             grad_y, x, attn, t, H, R);
    } else {
      launch(backward_nhwc_kernel<scalar_t, acc_t, index_t, 1, kGradX>, blocks, device, grad_x, row_sums,
             grad_y, x, attn, t, H, R);
    }
  }
  check();
  launch(attn_grad_kernel<scalar_t, acc_t>, device.blocks_for(B * C * R), device, grad_attn, row_sums, B, C, H,
         R, plan.layout);
  check();
}

}  // namespace gate
}  // namespace cuda
}  // namespace hanet_fast
