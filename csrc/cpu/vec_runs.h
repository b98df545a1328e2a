// Vectorised loops over one contiguous run of elements, shared by the CPU kernels.
//
// Every loop computes in acc_t (float for float/half/bfloat16, double for double):
// half and bfloat16 vectors are widened to two float vectors. Reductions keep one
// partial sum per vector lane and add the lanes in a fixed order, so results do not
// depend on threading: the kernels are deterministic.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <cstdint>
#include <type_traits>

namespace hanet_fast {
namespace cpu {

template <typename scalar_t>
using acc_t = at::opmath_type<scalar_t>;

// Moves Vec::size() scalars between memory and kParts vectors of acc_t.
template <typename scalar_t, bool kReduced = at::is_reduced_floating_point_v<scalar_t>>
struct VecIO {
  using Vec = at::vec::Vectorized<scalar_t>;
  using AccVec = Vec;
  static constexpr int64_t kStep = Vec::size();
  static constexpr int kParts = 1;
  static void load(const scalar_t* p, AccVec* out) { out[0] = Vec::loadu(p); }
  static void store(scalar_t* p, const AccVec* v) { v[0].store(p); }
};

template <typename scalar_t>
struct VecIO<scalar_t, true> {
  using Vec = at::vec::Vectorized<scalar_t>;
  using AccVec = at::vec::Vectorized<float>;
  static constexpr int64_t kStep = Vec::size();
  static constexpr int kParts = 2;
  static void load(const scalar_t* p, AccVec* out) {
    auto parts = at::vec::convert_to_float<scalar_t>(Vec::loadu(p));
    out[0] = std::get<0>(parts);
    out[1] = std::get<1>(parts);
  }
  static void store(scalar_t* p, const AccVec* v) { at::vec::convert_from_float<scalar_t>(v[0], v[1]).store(p); }
};

// Loads kParts acc vectors straight from an acc_t buffer laid out like the scalars.
template <typename scalar_t>
inline void load_acc(const acc_t<scalar_t>* p, typename VecIO<scalar_t>::AccVec* out) {
  using IO = VecIO<scalar_t>;
  for (int part = 0; part < IO::kParts; ++part) {
    out[part] = IO::AccVec::loadu(p + part * IO::AccVec::size());
  }
}

// out[i] = in[i] * scale
template <typename scalar_t>
inline void scale_run(scalar_t* out, const scalar_t* in, acc_t<scalar_t> scale, int64_t n) {
  using IO = VecIO<scalar_t>;
  const typename IO::AccVec scale_vec(scale);
  int64_t i = 0;
  for (; i + IO::kStep <= n; i += IO::kStep) {
    typename IO::AccVec v[IO::kParts];
    IO::load(in + i, v);
    for (int part = 0; part < IO::kParts; ++part) v[part] = v[part] * scale_vec;
    IO::store(out + i, v);
  }
  for (; i < n; ++i) out[i] = static_cast<scalar_t>(static_cast<acc_t<scalar_t>>(in[i]) * scale);
}

// out[i] = in[i] * scales[i]
template <typename scalar_t>
inline void mul_run(scalar_t* out, const scalar_t* in, const acc_t<scalar_t>* scales, int64_t n) {
  using IO = VecIO<scalar_t>;
  int64_t i = 0;
  for (; i + IO::kStep <= n; i += IO::kStep) {
    typename IO::AccVec v[IO::kParts], s[IO::kParts];
    IO::load(in + i, v);
    load_acc<scalar_t>(scales + i, s);
    for (int part = 0; part < IO::kParts; ++part) v[part] = v[part] * s[part];
    IO::store(out + i, v);
  }
  for (; i < n; ++i) out[i] = static_cast<scalar_t>(static_cast<acc_t<scalar_t>>(in[i]) * scales[i]);
}

// out[i] = value
template <typename scalar_t>
inline void fill_run(scalar_t* out, acc_t<scalar_t> value, int64_t n) {
  using IO = VecIO<scalar_t>;
  typename IO::AccVec v[IO::kParts];
  for (int part = 0; part < IO::kParts; ++part) v[part] = typename IO::AccVec(value);
  int64_t i = 0;
  for (; i + IO::kStep <= n; i += IO::kStep) IO::store(out + i, v);
  for (; i < n; ++i) out[i] = static_cast<scalar_t>(value);
}

// out[i] = values[i] (acc_t -> scalar_t)
template <typename scalar_t>
inline void store_run(scalar_t* out, const acc_t<scalar_t>* values, int64_t n) {
  using IO = VecIO<scalar_t>;
  int64_t i = 0;
  for (; i + IO::kStep <= n; i += IO::kStep) {
    typename IO::AccVec v[IO::kParts];
    load_acc<scalar_t>(values + i, v);
    IO::store(out + i, v);
  }
  for (; i < n; ++i) out[i] = static_cast<scalar_t>(values[i]);
}

// Adds the lanes of kParts partial-sum vectors in a fixed order.
template <typename scalar_t>
inline acc_t<scalar_t> sum_lanes(const typename VecIO<scalar_t>::AccVec* partial) {
  using IO = VecIO<scalar_t>;
  acc_t<scalar_t> lanes[IO::AccVec::size()];
  acc_t<scalar_t> total = 0;
  for (int part = 0; part < IO::kParts; ++part) {
    partial[part].store(lanes);
    for (int64_t lane = 0; lane < IO::AccVec::size(); ++lane) total += lanes[lane];
  }
  return total;
}

// sum_i in[i]
template <typename scalar_t>
inline acc_t<scalar_t> sum_run(const scalar_t* in, int64_t n) {
  using IO = VecIO<scalar_t>;
  typename IO::AccVec partial[IO::kParts];
  for (int part = 0; part < IO::kParts; ++part) partial[part] = typename IO::AccVec(0);
  int64_t i = 0;
  for (; i + IO::kStep <= n; i += IO::kStep) {
    typename IO::AccVec v[IO::kParts];
    IO::load(in + i, v);
    for (int part = 0; part < IO::kParts; ++part) partial[part] = partial[part] + v[part];
  }
  acc_t<scalar_t> total = sum_lanes<scalar_t>(partial);
  for (; i < n; ++i) total += static_cast<acc_t<scalar_t>>(in[i]);
  return total;
}

// sums[i] += in[i] (acc_t accumulators, one per element)
template <typename scalar_t>
inline void accumulate_run(acc_t<scalar_t>* sums, const scalar_t* in, int64_t n) {
  using IO = VecIO<scalar_t>;
  using AccVec = typename IO::AccVec;
  int64_t i = 0;
  for (; i + IO::kStep <= n; i += IO::kStep) {
    AccVec v[IO::kParts];
    IO::load(in + i, v);
    for (int part = 0; part < IO::kParts; ++part) {
      acc_t<scalar_t>* s = sums + i + part * AccVec::size();
      (AccVec::loadu(s) + v[part]).store(s);
    }
  }
  for (; i < n; ++i) sums[i] += static_cast<acc_t<scalar_t>>(in[i]);
}

// The height_gate backward over one run in which the attention is one scalar `scale`
// (an NCHW row): writes grad_x[i] = grad_y[i] * scale when kWriteGradX and returns
// sum_i grad_y[i] * x[i].
template <typename scalar_t, bool kWriteGradX>
inline acc_t<scalar_t> gate_backward_run(scalar_t* grad_x, const scalar_t* grad_y, const scalar_t* x,
                                         acc_t<scalar_t> scale, int64_t n) {
  using IO = VecIO<scalar_t>;
  using AccVec = typename IO::AccVec;
  const AccVec scale_vec(scale);
  AccVec partial[IO::kParts];
  for (int part = 0; part < IO::kParts; ++part) partial[part] = AccVec(0);
  int64_t i = 0;
  for (; i + IO::kStep <= n; i += IO::kStep) {
    AccVec g[IO::kParts], v[IO::kParts];
    IO::load(grad_y + i, g);
    IO::load(x + i, v);
    for (int part = 0; part < IO::kParts; ++part) partial[part] = partial[part] + g[part] * v[part];
    if constexpr (kWriteGradX) {
      for (int part = 0; part < IO::kParts; ++part) g[part] = g[part] * scale_vec;
      IO::store(grad_x + i, g);
    }
  }
  acc_t<scalar_t> total = sum_lanes<scalar_t>(partial);
  for (; i < n; ++i) {
    const acc_t<scalar_t> g = static_cast<acc_t<scalar_t>>(grad_y[i]);
    total += g * static_cast<acc_t<scalar_t>>(x[i]);
    if constexpr (kWriteGradX) grad_x[i] = static_cast<scalar_t>(g * scale);
  }
  return total;
}

// The height_gate backward over one run in which the attention varies per element
// (an NHWC pixel's channels): grad_x[i] = grad_y[i] * scales[i] when kWriteGradX, and
// sums[i] += grad_y[i] * x[i].
template <typename scalar_t, bool kWriteGradX>
inline void gate_backward_run_per_element(scalar_t* grad_x, const scalar_t* grad_y, const scalar_t* x,
                                          const acc_t<scalar_t>* scales, acc_t<scalar_t>* sums, int64_t n) {
  using IO = VecIO<scalar_t>;
  using AccVec = typename IO::AccVec;
  int64_t i = 0;
  for (; i + IO::kStep <= n; i += IO::kStep) {
    AccVec g[IO::kParts], v[IO::kParts];
    IO::load(grad_y + i, g);
    IO::load(x + i, v);
    for (int part = 0; part < IO::kParts; ++part) {
      acc_t<scalar_t>* s = sums + i + part * AccVec::size();
      (AccVec::loadu(s) + g[part] * v[part]).store(s);
    }
    if constexpr (kWriteGradX) {
      AccVec a[IO::kParts];
      load_acc<scalar_t>(scales + i, a);
      for (int part = 0; part < IO::kParts; ++part) g[part] = g[part] * a[part];
      IO::store(grad_x + i, g);
    }
  }
  for (; i < n; ++i) {
    const acc_t<scalar_t> g = static_cast<acc_t<scalar_t>>(grad_y[i]);
    sums[i] += g * static_cast<acc_t<scalar_t>>(x[i]);
    if constexpr (kWriteGradX) grad_x[i] = static_cast<scalar_t>(g * scales[i]);
  }
}

}  // namespace cpu
}  // namespace hanet_fast
