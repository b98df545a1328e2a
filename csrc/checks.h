// Input checks of the C++ ops, worded as hanet_fast/ops/_validate.py words them so that
// a direct torch.ops.hanet_fast.* call fails the same way as the public Python API.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/arange.h>
#include <c10/util/Exception.h>

#include <limits>
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

// The dtypes every kernel computes in (DESIGN §1; hanet_fast/ops/_validate.py FLOAT_DTYPES).
inline bool is_kernel_dtype(at::ScalarType t) {
  return t == at::kHalf || t == at::kBFloat16 || t == at::kFloat || t == at::kDouble;
}

// TypeError unless t is a dense tensor of a kernel dtype (float8 is a floating type to ATen,
// but no kernel is built for it). Sparse tensors never get here: csrc/dense_only.cpp refuses
// them at dispatch.
inline void check_dense_float(const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(t.layout() == at::kStrided, "hanet_fast: ", name, " must be a dense (strided) tensor, got layout ",
                   t.layout(), "; convert it with ", name, ".to_dense()");
  TORCH_CHECK_TYPE(is_kernel_dtype(t.scalar_type()), "hanet_fast: ", name, " must have a ",
                   at::isFloatingType(t.scalar_type()) ? "dtype" : "floating-point dtype",
                   " among float16, bfloat16, float32, float64, got ", t.scalar_type());
}

inline void check_feature_map(const at::Tensor& x, const char* name) {
  TORCH_CHECK_VALUE(x.dim() == 4, "hanet_fast: ", name, " must be a 4-D tensor [B, C, H, W], got ", x.dim(),
                    "-D with shape ", shape_str(x));
  check_dense_float(x, name);
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
  check_dense_float(attn, "attn");
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

// grad_y of height_gate's backward ops: x's shape, dtype and device.
inline void check_grad_y(const at::Tensor& grad_y, const at::Tensor& x) {
  check_same_device(grad_y, "grad_y", x);
  TORCH_CHECK_VALUE(grad_y.sizes() == x.sizes(), "hanet_fast: grad_y must have x's shape ", shape_str(x), ", got ",
                    shape_str(grad_y));
  TORCH_CHECK_TYPE(grad_y.scalar_type() == x.scalar_type(), "hanet_fast: grad_y must have x's dtype ",
                   x.scalar_type(), ", got ", grad_y.scalar_type());
}

// grad_out [B, C, rows] of height_pool's backward ops, and the input size it goes back to.
inline void check_pool_grad(const at::Tensor& grad_out, int64_t height, int64_t width) {
  TORCH_CHECK_VALUE(grad_out.dim() == 3, "hanet_fast: grad_out must be a 3-D tensor [B, C, rows], got ",
                    grad_out.dim(), "-D with shape ", shape_str(grad_out));
  check_dense_float(grad_out, "grad_out");
  TORCH_CHECK_VALUE(height >= 1 && width >= 1, "hanet_fast: height and width must be >= 1, got ", height, " and ",
                    width);
}

// The argmax saved by height_pool_max, handed back to its backward, which writes through it:
// each entry of bin i must be a flat index h * width + w of its (b, c) plane with h among the
// bin's rows [floor(i * height / R), ceil((i + 1) * height / R)), i.e. lie in
// [bin_start * width, bin_end * width). Checked with ATen ops, so the same code serves CPU and
// CUDA tensors (on CUDA it costs one synchronisation before the launch).
inline void check_pool_indices(const at::Tensor& indices, const at::Tensor& grad_out, int64_t height, int64_t width) {
  TORCH_CHECK_VALUE(indices.sizes() == grad_out.sizes() && indices.scalar_type() == at::kLong,
                    "hanet_fast: indices must be an int64 tensor shaped like grad_out ", shape_str(grad_out),
                    ", got ", indices.scalar_type(), " ", shape_str(indices));
  check_same_device(indices, "indices", grad_out);
  const int64_t rows = grad_out.size(2);
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  // The bin bounds below multiply (bin + 1) * height and bin_end * width.
  TORCH_CHECK_VALUE(height <= kMax / (rows + 1) && width <= kMax / (height + 1),
                    "hanet_fast: height and width are too large for rows = ", rows, ": got ", height, " and ", width);
  if (indices.numel() == 0) return;
  const at::Tensor bins = at::arange(rows, indices.options());
  const at::Tensor lo = bins.mul(height).div(rows, "floor").mul(width);               // bin_start * width
  const at::Tensor hi = bins.add(1).mul(height).sub(1).div(rows, "floor").add(1).mul(width);  // bin_end * width
  const at::Tensor outside = indices.lt(lo).logical_or_(indices.ge(hi));
  if (!outside.any().item<bool>()) return;
  const int64_t first = outside.flatten().to(at::kInt).argmax().item<int64_t>();
  const int64_t bin = first % rows, plane = first / rows;
  const int64_t h0 = lo[bin].item<int64_t>() / width, h1 = hi[bin].item<int64_t>() / width;
  TORCH_CHECK_VALUE(false, "hanet_fast: indices must hold, for each bin i, a flat index h * W + w with h in the bin's ",
                    "rows [floor(i*H/R), ceil((i+1)*H/R)) and 0 <= w < W (H = ", height, ", W = ", width, ", R = ",
                    rows, "); got ", indices.flatten()[first].item<int64_t>(), " at [", plane / grad_out.size(1), ", ",
                    plane % grad_out.size(1), ", ", bin, "], whose rows are [", h0, ", ", h1, ")");
}

}  // namespace hanet_fast
