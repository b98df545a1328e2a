// Schemas of the hanet_fast operators. Kernels register themselves per backend in
// csrc/cpu/*.cpp and csrc/cuda/*.cu; fake kernels and autograd are registered from
// Python (hanet_fast/ops/_registration.py).
#include <torch/library.h>

TORCH_LIBRARY(hanet_fast, m) {
  // Width-wise adaptive pooling of x [B, C, H, W] into [B, C, rows].
  m.def("height_pool_avg(Tensor x, int rows) -> Tensor");
  m.def("height_pool_avg_backward(Tensor grad_out, SymInt height, SymInt width, bool channels_last) -> Tensor");
  // Max pooling also returns each bin's argmax as a flat index h * W + w into the plane.
  m.def("height_pool_max(Tensor x, int rows) -> (Tensor, Tensor)");
  m.def(
      "height_pool_max_backward(Tensor grad_out, Tensor indices, SymInt height, SymInt width, bool channels_last)"
      " -> Tensor");
  // y = x * linear_upsample(attn, H)[..., None] for attn [B, C, rows].
  m.def("height_gate(Tensor x, Tensor attn) -> Tensor");
  // (grad_x, grad_attn) in one pass over grad_y and x.
  m.def("height_gate_backward(Tensor grad_y, Tensor x, Tensor attn) -> (Tensor, Tensor)");
  // grad_attn alone, for when x needs no gradient.
  m.def("height_gate_attn_backward(Tensor grad_y, Tensor x, int rows) -> Tensor");
}
