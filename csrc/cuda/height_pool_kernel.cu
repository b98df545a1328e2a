// CUDA launchers of height_pool (avg / max, forward / backward): checks, memory format, output
// and workspace allocation, dtype and index-type dispatch. The kernels and their launch
// sequences are in kernels/height_pool.cuh; they run on the current stream of x's device.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

#include "../../kernels/height_pool.cuh"
#include "../checks.h"
#include "../layout.h"
#include "launch.h"

namespace hanet_fast {
namespace cuda {
namespace {

// ---------------------------------------------------------------------------- forward
// indices is undefined for avg pooling.
template <bool kMax>
void pool_forward(const at::Tensor& x, int64_t rows, at::Tensor& out, at::Tensor& indices) {
  const bool channels_last = memory_format_of(x) == at::MemoryFormat::ChannelsLast;
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const Device device = current_device();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "height_pool_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* x_ptr = x.const_data_ptr<scalar_t>();
    const pool::ForwardPlan plan = pool::plan_forward(x_ptr, B, C, H, W, channels_last, device);
    at::Tensor ws_value = at::empty({plan.workspace}, x.options().dtype(acc_dtype<scalar_t>()));
    at::Tensor ws_index;
    if (kMax) ws_index = at::empty({plan.workspace}, x.options().dtype(at::kLong));
    int64_t* out_index = kMax ? indices.data_ptr<int64_t>() : nullptr;
    int64_t* ws_index_ptr = kMax ? ws_index.data_ptr<int64_t>() : nullptr;
    with_index_type(std::max(x.numel(), plan.workspace), [&](auto index_tag) {
      using index_t = decltype(index_tag);
      pool::forward<scalar_t, acc_t, index_t, kMax>(plan, out.data_ptr<scalar_t>(), out_index, x_ptr,
                                                    ws_value.data_ptr<acc_t>(), ws_index_ptr, B, C, H, W, rows,
                                                    device, kLaunchCheck);
    });
  });
}

at::Tensor height_pool_avg_cuda(const at::Tensor& x_in, int64_t rows) {
  check_height_pool(x_in, rows);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(memory_format_of(x_in));
  at::Tensor out = at::empty({x.size(0), x.size(1), rows}, x.options());
  if (out.numel() == 0) return out;
  at::Tensor no_indices;
  pool_forward<false>(x, rows, out, no_indices);
  return out;
}

std::tuple<at::Tensor, at::Tensor> height_pool_max_cuda(const at::Tensor& x_in, int64_t rows) {
  check_height_pool(x_in, rows);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(memory_format_of(x_in));
  at::Tensor out = at::empty({x.size(0), x.size(1), rows}, x.options());
  at::Tensor indices = at::empty({x.size(0), x.size(1), rows}, x.options().dtype(at::kLong));
  if (out.numel() == 0) return {out, indices};
  pool_forward<true>(x, rows, out, indices);
  return {out, indices};
}

// ---------------------------------------------------------------------------- backward
// The checks of csrc/cpu/height_pool_kernel.cpp, worded the same.
at::Tensor grad_input_for(const at::Tensor& grad_out, int64_t height, int64_t width, bool channels_last) {
  return at::empty({grad_out.size(0), grad_out.size(1), height, width},
                   grad_out.options().memory_format(channels_last ? at::MemoryFormat::ChannelsLast
                                                                  : at::MemoryFormat::Contiguous));
}

at::Tensor height_pool_avg_backward_cuda(const at::Tensor& grad_out_in, int64_t height, int64_t width,
                                         bool channels_last) {
  check_pool_grad(grad_out_in, height, width);
  const c10::cuda::CUDAGuard guard(grad_out_in.device());
  const at::Tensor grad_out = grad_out_in.contiguous();
  at::Tensor grad_x = grad_input_for(grad_out, height, width, channels_last);
  if (grad_x.numel() == 0) return grad_x;
  const int64_t B = grad_out.size(0), C = grad_out.size(1), R = grad_out.size(2);
  const Device device = current_device();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_out.scalar_type(), "height_pool_avg_backward_cuda",
                                  [&] {
                                    using acc_t = at::opmath_type<scalar_t>;
                                    at::Tensor coef =
                                        at::empty({B * C * height}, grad_out.options().dtype(acc_dtype<scalar_t>()));
                                    with_index_type(grad_x.numel(), [&](auto index_tag) {
                                      using index_t = decltype(index_tag);
                                      pool::avg_backward<scalar_t, acc_t, index_t>(
                                          grad_x.data_ptr<scalar_t>(), grad_out.const_data_ptr<scalar_t>(),
                                          coef.data_ptr<acc_t>(), B, C, height, width, R, channels_last, device,
                                          kLaunchCheck);
                                    });
                                  });
  return grad_x;
}

at::Tensor height_pool_max_backward_cuda(const at::Tensor& grad_out_in, const at::Tensor& indices_in, int64_t height,
                                         int64_t width, bool channels_last) {
  check_pool_grad(grad_out_in, height, width);
  check_pool_indices(indices_in, grad_out_in, height, width);
  const c10::cuda::CUDAGuard guard(grad_out_in.device());
  const at::Tensor grad_out = grad_out_in.contiguous();
  const at::Tensor indices = indices_in.contiguous();
  at::Tensor grad_x = grad_input_for(grad_out, height, width, channels_last);  // every element written once
  if (grad_x.numel() == 0) return grad_x;
  const int64_t B = grad_out.size(0), C = grad_out.size(1), R = grad_out.size(2);
  const Device device = current_device();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_out.scalar_type(), "height_pool_max_backward_cuda",
                                  [&] {
                                    using acc_t = at::opmath_type<scalar_t>;
                                    with_index_type(grad_x.numel(), [&](auto index_tag) {
                                      using index_t = decltype(index_tag);
                                      pool::max_backward<scalar_t, acc_t, index_t>(
                                          grad_x.data_ptr<scalar_t>(), grad_out.const_data_ptr<scalar_t>(),
                                          indices.const_data_ptr<int64_t>(), B, C, height, width, R, channels_last,
                                          device, kLaunchCheck);
                                    });
                                  });
  return grad_x;
}

}  // namespace

TORCH_LIBRARY_IMPL(hanet_fast, CUDA, m) {
  m.impl("height_pool_avg", &height_pool_avg_cuda);
  m.impl("height_pool_avg_backward", &height_pool_avg_backward_cuda);
  m.impl("height_pool_max", &height_pool_max_cuda);
  m.impl("height_pool_max_backward", &height_pool_max_backward_cuda);
}

}  // namespace cuda
}  // namespace hanet_fast
