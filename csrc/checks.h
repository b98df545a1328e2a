// Input checks of the C++ ops, worded as hanet_fast/ops/_validate.py words them so that
// a direct torch.ops.hanet_fast.* call fails the same way as the public Python API.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <sstream>
#include <string>

namespace hanet_fast {

inline std::string shape_str(const at::Tensor& t) {
  std::ostringstream out;
  out << "(";
  for (int64_t d = 0; d < t.dim(); ++d) {
    out << (d ? ", " : "") << t.size(d);
  }
  out << (t.dim() == 1 ? ",)" : ")");
  return out.str();
}

inline void check_feature_map(const at::Tensor& x, const char* name) {
  TORCH_CHECK_VALUE(x.dim() == 4, "hanet_fast: ", name, " must be a 4-D tensor [B, C, H, W], got ", x.dim(),
                    "-D with shape ", shape_str(x));
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()), "hanet_fast: ", name,
                   " must have a floating-point dtype, got ", x.scalar_type());
}

inline void check_height_pool(const at::Tensor& x, int64_t rows) {
  check_feature_map(x, "x");
  TORCH_CHECK_VALUE(x.size(2) >= 1 && x.size(3) >= 1,
                    "hanet_fast: x must have height and width >= 1 to be pooled, got shape ", shape_str(x));
  TORCH_CHECK_VALUE(rows >= 1, "hanet_fast: rows must be >= 1, got ", rows);
}

inline void check_attn(const at::Tensor& x, const at::Tensor& attn) {
  TORCH_CHECK_VALUE(attn.dim() == 3, "hanet_fast: attn must be a 3-D tensor [B, C, rows], got ", attn.dim(),
                    "-D with shape ", shape_str(attn));
  TORCH_CHECK_TYPE(at::isFloatingType(attn.scalar_type()),
                   "hanet_fast: attn must have a floating-point dtype, got ", attn.scalar_type());
  TORCH_CHECK_VALUE(attn.device() == x.device(), "hanet_fast: attn is on ", attn.device(), " but x is on ",
                    x.device(), "; they must be on one device");
  TORCH_CHECK_VALUE(attn.size(0) == x.size(0) && attn.size(1) == x.size(1),
                    "hanet_fast: attn must have x's batch and channel sizes [", x.size(0), ", ", x.size(1),
                    ", rows], got ", shape_str(attn));
  TORCH_CHECK_VALUE(attn.size(2) >= 1, "hanet_fast: attn must have at least one row (rows >= 1), got 0");
  TORCH_CHECK_TYPE(attn.scalar_type() == x.scalar_type(), "hanet_fast: attn must have x's dtype ",
                   x.scalar_type(), ", got ", attn.scalar_type());
}

inline void check_height_gate(const at::Tensor& x, const at::Tensor& attn) {
  check_feature_map(x, "x");
  check_attn(x, attn);
}

inline void check_same_device(const at::Tensor& t, const char* name, const at::Tensor& x) {
  TORCH_CHECK_VALUE(t.device() == x.device(), "hanet_fast: ", name, " is on ", t.device(), " but x is on ",
                    x.device(), "; they must be on one device");
}

}  // namespace hanet_fast
