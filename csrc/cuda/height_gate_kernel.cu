// CUDA launchers of height_gate (forward, backward, attn-only backward): checks, memory format,
// output and workspace allocation, dtype and index-type dispatch. The kernels and their launch
// sequences are in kernels/height_gate.cuh; they run on the current stream of x's device.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

#include "../../kernels/height_gate.cuh"
#include "../checks.h"
#include "../layout.h"
#include "launch.h"

namespace hanet_fast {
namespace cuda {
namespace {

at::Tensor height_gate_cuda(const at::Tensor& x_in, const at::Tensor& attn_in) {
  check_height_gate(x_in, attn_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto format = memory_format_of(x_in);
  const at::Tensor x = x_in.contiguous(format);
  const at::Tensor attn = attn_in.contiguous();
  at::Tensor y = at::empty(x.sizes(), x.options().memory_format(format));
  if (y.numel() == 0) return y;
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), R = attn.size(2);
  const Device device = current_device();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "height_gate_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* x_ptr = x.const_data_ptr<scalar_t>();
    scalar_t* y_ptr = y.data_ptr<scalar_t>();
    const gate::Plan plan = gate::make_plan<scalar_t>({x_ptr, y_ptr}, B, C, H, W,
                                                      format == at::MemoryFormat::ChannelsLast, device);
    with_index_type(std::max(x.numel(), B * C * R), [&](auto index_tag) {
      using index_t = decltype(index_tag);
      gate::forward<scalar_t, acc_t, index_t>(plan, y_ptr, x_ptr, attn.const_data_ptr<scalar_t>(), H, R, device,
                                              kLaunchCheck);
    });
  });
  return y;
}

// Shared by the two backward ops: grad_x is written only when it is defined (then attn is too).
void height_gate_backward_impl(const at::Tensor& grad_y_in, const at::Tensor& x_in, const at::Tensor& attn,
                               at::Tensor& grad_x, at::Tensor& grad_attn) {
  const auto format = memory_format_of(x_in);
  const at::Tensor x = x_in.contiguous(format);
  const at::Tensor grad_y = grad_y_in.contiguous(format);  // e.g. the stride-0 gradient of .sum()
  if (x.numel() == 0) {
    grad_attn.zero_();
    return;
  }
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), R = grad_attn.size(2);
  const Device device = current_device();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "height_gate_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* grad_y_ptr = grad_y.const_data_ptr<scalar_t>();
    const scalar_t* x_ptr = x.const_data_ptr<scalar_t>();
    scalar_t* grad_x_ptr = grad_x.defined() ? grad_x.data_ptr<scalar_t>() : nullptr;
    const gate::Plan plan = gate::make_plan<scalar_t>({grad_y_ptr, x_ptr, grad_x_ptr}, B, C, H, W,
                                                      format == at::MemoryFormat::ChannelsLast, device);
    at::Tensor row_sums = at::empty({plan.workspace}, x.options().dtype(acc_dtype<scalar_t>()));
    with_index_type(std::max({x.numel(), plan.workspace, B * C * R}), [&](auto index_tag) {
      using index_t = decltype(index_tag);
      if (grad_x.defined()) {
        gate::backward<scalar_t, acc_t, index_t, true>(plan, grad_x_ptr, grad_attn.data_ptr<scalar_t>(),
                                                       row_sums.data_ptr<acc_t>(), grad_y_ptr, x_ptr,
                                                       attn.const_data_ptr<scalar_t>(), B, C, H, R, device,
                                                       kLaunchCheck);
      } else {
        gate::backward<scalar_t, acc_t, index_t, false>(plan, nullptr, grad_attn.data_ptr<scalar_t>(),
                                                        row_sums.data_ptr<acc_t>(), grad_y_ptr, x_ptr, nullptr, B, C,
                                                        H, R, device, kLaunchCheck);
      }
    });
  });
}

// The checks of csrc/cpu/height_gate_kernel.cpp, worded the same.
std::tuple<at::Tensor, at::Tensor> height_gate_backward_cuda(const at::Tensor& grad_y, const at::Tensor& x,
                                                             const at::Tensor& attn_in) {
  check_height_gate(x, attn_in);
  check_grad_y(grad_y, x);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor attn = attn_in.contiguous();
  at::Tensor grad_x = at::empty(x.sizes(), x.options().memory_format(memory_format_of(x)));
  at::Tensor grad_attn = at::empty(attn.sizes(), attn.options());
  height_gate_backward_impl(grad_y, x, attn, grad_x, grad_attn);
  return {grad_x, grad_attn};
}

at::Tensor height_gate_attn_backward_cuda(const at::Tensor& grad_y, const at::Tensor& x, int64_t rows) {
  check_feature_map(x, "x");
  check_grad_y(grad_y, x);
  TORCH_CHECK_VALUE(rows >= 1, "hanet_fast: rows must be >= 1, got ", rows);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor grad_x;  // undefined: not written
  at::Tensor grad_attn =
      at::empty({x.size(0), x.size(1), rows}, x.options().memory_format(at::MemoryFormat::Contiguous));
  height_gate_backward_impl(grad_y, x, at::Tensor(), grad_x, grad_attn);
  return grad_attn;
}

}  // namespace

TORCH_LIBRARY_IMPL(hanet_fast, CUDA, m) {
  m.impl("height_gate", &height_gate_cuda);
  m.impl("height_gate_backward", &height_gate_backward_cuda);
  m.impl("height_gate_attn_backward", &height_gate_attn_backward_cuda);
}

}  // namespace cuda
}  // namespace hanet_fast
