// Loops over one contiguous run of elements, shared by the CPU kernels.
//
// Every loop computes in acc_t (float for float/half/bfloat16, double for double).
// They are plain loops that the compiler vectorises (`omp simd`; ATen's generic
// at::vec::Vectorized, which is what an extension gets without per-ISA builds, was
// measured 2-3x slower here). A reduction's vector width and order are fixed when
// the library is compiled, so results do not depend on threading: the kernels are
// deterministic.
#pragma once

#include <ATen/OpMathType.h>

#include <cstdint>

namespace hanet_fast {
namespace cpu {

template <typename scalar_t>
using acc_t = at::opmath_type<scalar_t>;

template <typename scalar_t>
inline acc_t<scalar_t> widen(scalar_t v) {
  return static_cast<acc_t<scalar_t>>(v);
}

// out[i] = in[i] * scale
template <typename scalar_t>
inline void scale_run(scalar_t* __restrict__ out, const scalar_t* __restrict__ in, acc_t<scalar_t> scale, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<scalar_t>(widen(in[i]) * scale);
}

// out[i] = in[i] * scales[i]
template <typename scalar_t>
inline void mul_run(scalar_t* __restrict__ out, const scalar_t* __restrict__ in,
                    const acc_t<scalar_t>* __restrict__ scales, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<scalar_t>(widen(in[i]) * scales[i]);
}

// out[i] = value
template <typename scalar_t>
inline void fill_run(scalar_t* __restrict__ out, acc_t<scalar_t> value, int64_t n) {
  const scalar_t v = static_cast<scalar_t>(value);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = v;
}

// out[i] = values[i], narrowed to scalar_t
template <typename scalar_t>
inline void store_run(scalar_t* __restrict__ out, const acc_t<scalar_t>* __restrict__ values, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<scalar_t>(values[i]);
}

// sum_i in[i]
template <typename scalar_t>
inline acc_t<scalar_t> sum_run(const scalar_t* __restrict__ in, int64_t n) {
  acc_t<scalar_t> total = 0;
#pragma omp simd reduction(+ : total)
  for (int64_t i = 0; i < n; ++i) total += widen(in[i]);
  return total;
}

// sums[i] += in[i]
template <typename scalar_t>
inline void accumulate_run(acc_t<scalar_t>* __restrict__ sums, const scalar_t* __restrict__ in, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) sums[i] += widen(in[i]);
}

// The height_gate backward over a run whose attention is one scalar (an NCHW row):
// writes grad_x[i] = grad_y[i] * scale when kWriteGradX and returns sum_i grad_y[i] * x[i].
template <typename scalar_t, bool kWriteGradX>
inline acc_t<scalar_t> gate_backward_run(scalar_t* __restrict__ grad_x, const scalar_t* __restrict__ grad_y,
                                         const scalar_t* __restrict__ x, acc_t<scalar_t> scale, int64_t n) {
  acc_t<scalar_t> total = 0;
#pragma omp simd reduction(+ : total)
  for (int64_t i = 0; i < n; ++i) {
    const acc_t<scalar_t> g = widen(grad_y[i]);
    total += g * widen(x[i]);
    if constexpr (kWriteGradX) grad_x[i] = static_cast<scalar_t>(g * scale);
  }
  return total;
}

// The height_gate backward over a run whose attention varies per element (one NHWC
// pixel's channels): grad_x[i] = grad_y[i] * scales[i] when kWriteGradX, and
// sums[i] += grad_y[i] * x[i].
template <typename scalar_t, bool kWriteGradX>
inline void gate_backward_run_per_element(scalar_t* __restrict__ grad_x, const scalar_t* __restrict__ grad_y,
                                          const scalar_t* __restrict__ x, const acc_t<scalar_t>* __restrict__ scales,
                                          acc_t<scalar_t>* __restrict__ sums, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const acc_t<scalar_t> g = widen(grad_y[i]);
    sums[i] += g * widen(x[i]);
    if constexpr (kWriteGradX) grad_x[i] = static_cast<scalar_t>(g * scales[i]);
  }
}

}  // namespace cpu
}  // namespace hanet_fast
