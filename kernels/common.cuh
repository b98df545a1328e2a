// Pieces shared by the hanet_fast CUDA kernels (kernels/height_pool.cuh, kernels/height_gate.cuh):
// vector packs, reductions over the lanes of a group, PyTorch's max rule, how work is tiled,
// and the kernel launch helper.
//
// Plain CUDA C++ on raw pointers and sizes, no torch types: the launchers in csrc/cuda/*.cu
// instantiate the templates with c10::Half / c10::BFloat16 / float / double as `scalar_t`
// and at::opmath_type<scalar_t> as `acc_t` (float, or double for double).
//
// Two tilings cover every kernel that touches a whole [B, C, H, W] tensor:
//  - NCHW (RowTiling): a row of W contiguous elements is split into `segments` segments of
//    `seg_len` elements; each (row, segment) item is handled by a group of `group` lanes
//    (a power of two <= 32) of one warp, the lanes striding over the segment's vectors, so
//    a warp reads 32 / group neighbouring segments at once. Reductions over an item are
//    warp shuffles in a fixed butterfly order.
//  - NHWC (PixelTiling): one thread per (b * H + h, segment, vector of V channels) walks the
//    segment's columns w; neighbouring threads read neighbouring channels (coalesced).
//    Reductions are per thread, sequential in w.
// Results of a split row go to a small workspace (one value per row and segment), combined
// afterwards in a fixed order by one thread per output, so every result is deterministic:
// no atomics anywhere.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <mutex>
#include <unordered_map>

#include "index_math.h"

#ifndef HANET_CUDA_EMULATION
#include <cuda_runtime.h>
#endif

namespace hanet_fast {
namespace cuda {

constexpr int kThreads = 256;  // threads per block of every kernel
constexpr int kMaxBlocksPerSm = 2048 / kThreads;  // resident blocks of an SM at best (2048 threads)
constexpr int kWarpSize = 32;
constexpr unsigned kFullMask = 0xffffffffu;

// Elements per 16-byte vector of T.
template <typename T>
constexpr int vec_width() {
  return sizeof(T) >= 16 ? 1 : static_cast<int>(16 / sizeof(T));
}

inline bool is_aligned(const void* ptr, int bytes) {
  return reinterpret_cast<std::uintptr_t>(ptr) % static_cast<std::uintptr_t>(bytes) == 0;
}

HANET_HOST_DEVICE int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
HANET_HOST_DEVICE int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
HANET_HOST_DEVICE int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

// ------------------------------------------------------------------------------ vector packs
// N consecutive elements loaded or stored as one (16-byte when N = vec_width<T>()) access;
// the address must be aligned to sizeof(Pack).
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

// The plain integer (vector) type of a pack's size. Packs move through it: a pack of class
// types (c10::Half, c10::BFloat16) or one the compiler has split into registers is otherwise
// stored element by element (four 32-bit STG for a float4, eight 16-bit for bf16).
template <int Bytes>
struct RawBits;
template <>
struct RawBits<16> {
  using type = uint4;
};
template <>
struct RawBits<8> {
  using type = uint2;
};
template <>
struct RawBits<4> {
  using type = unsigned int;
};
template <>
struct RawBits<2> {
  using type = unsigned short;
};

template <int N, typename T>
__device__ __forceinline__ Pack<T, N> load_pack(const T* ptr) {
  using Raw = typename RawBits<sizeof(Pack<T, N>)>::type;
  const Raw raw = *reinterpret_cast<const Raw*>(ptr);
  Pack<T, N> pack;
  memcpy(&pack, &raw, sizeof(pack));
  return pack;
}

template <int N, typename T>
__device__ __forceinline__ void store_pack(T* ptr, const Pack<T, N>& pack) {
  using Raw = typename RawBits<sizeof(Pack<T, N>)>::type;
  Raw raw;
  memcpy(&raw, &pack, sizeof(raw));
  *reinterpret_cast<Raw*>(ptr) = raw;
}

// ------------------------------------------------------------------------------ max rule
// PyTorch's adaptive max pooling scans a bin in row-major order and takes a value when it is
// larger than the current maximum or NaN. The result is the last NaN if there is one, else
// the first position of the largest value. `beats` is that as an order on (value, index)
// pairs, so partial results over disjoint parts can be combined in any grouping and give
// exactly the scan's answer (a tree over lanes, then segments and rows in order).
constexpr int64_t kNoIndex = INT64_MAX;  // index of the identity (-inf, kNoIndex), beaten by everything

// The identity's index in an index type: the NCHW / NHWC reductions track the column in
// index_t (int32 unless the tensor needs 64-bit offsets; cheaper compares and shuffles) and
// widen it when they write the workspace.
template <typename idx_t>
HANET_HOST_DEVICE idx_t no_index() {
  return sizeof(idx_t) == 4 ? static_cast<idx_t>(INT32_MAX) : static_cast<idx_t>(INT64_MAX);
}

template <typename acc_t>
__device__ __forceinline__ acc_t negative_infinity() {
  return -static_cast<acc_t>(INFINITY);
}

template <typename acc_t, typename idx_t>
__device__ __forceinline__ bool beats(acc_t value, idx_t index, acc_t best, idx_t best_index) {
  const bool value_nan = value != value;
  const bool best_nan = best != best;
  if (value_nan || best_nan) return value_nan && (!best_nan || index > best_index);
  return value > best || (value == best && index < best_index);
}

template <typename acc_t, typename idx_t>
__device__ __forceinline__ void take_max(acc_t& best, idx_t& best_index, acc_t value, idx_t index) {
  if (beats(value, index, best, best_index)) {
    best = value;
    best_index = index;
  }
}

// ------------------------------------------------------------------------------ groups of lanes
// Every lane of the warp must call these (mask is the full warp), with the same `group`.
// Butterfly over the `group` lanes of an item: each step adds the partner's value, so all
// lanes of the group end with the same total (x + y == y + x bitwise), in a fixed order.
template <typename T>
__device__ __forceinline__ T group_sum(T value, int group) {
  for (int offset = group / 2; offset > 0; offset /= 2) {
    value += __shfl_xor_sync(kFullMask, value, offset);
  }
  return value;
}

template <typename acc_t, typename idx_t>
__device__ __forceinline__ void group_max(acc_t& best, idx_t& best_index, int group) {
  for (int offset = group / 2; offset > 0; offset /= 2) {
    const acc_t other = __shfl_xor_sync(kFullMask, best, offset);
    const idx_t other_index = __shfl_xor_sync(kFullMask, best_index, offset);
    take_max(best, best_index, other, other_index);
  }
}

// ------------------------------------------------------------------------------ tilings
struct RowTiling {     // NCHW, see the top of this file
  int64_t rows;        // B * C * H
  int64_t width;       // W
  int64_t segments;    // per row, >= 1; no segment is empty
  int64_t seg_len;     // elements per segment (a multiple of the vector width)
  int group;           // lanes per (row, segment) item: 1, 2, 4, ..., 32
};

struct PixelTiling {   // NHWC, see the top of this file
  int64_t pixel_rows;  // B * H
  int64_t width;       // W
  int64_t channels;    // C
  int64_t segments;    // per pixel row, >= 1; no segment is empty
  int64_t seg_len;     // columns per segment
};

// The part of the rows that work item `item` of a RowTiling covers: elements [begin, end) of `row`.
template <typename index_t>
struct RowPiece {
  index_t row;
  int64_t begin, end;
};
template <typename index_t>
HANET_HOST_DEVICE RowPiece<index_t> row_piece(const RowTiling& t, int64_t item) {
  const index_t id = static_cast<index_t>(item);
  const index_t row = id / static_cast<index_t>(t.segments);
  const int64_t begin = static_cast<int64_t>(id - row * static_cast<index_t>(t.segments)) * t.seg_len;
  return {row, begin, min64(t.width, begin + t.seg_len)};
}

// Work items of a PixelTiling with vectors of `vec` channels, and the part item `i` covers:
// channels [c, c + vec) of columns [w0, w1) (segment `seg`) of `pixel_row`. Channels are the
// fastest index, so neighbouring threads read neighbouring memory.
HANET_HOST_DEVICE int64_t pixel_items(const PixelTiling& t, int vec) {
  return t.pixel_rows * t.segments * (t.channels / vec);
}
template <typename index_t>
struct PixelPiece {
  index_t pixel_row, seg, c;
  int64_t w0, w1;
};
template <typename index_t, int V>
HANET_HOST_DEVICE PixelPiece<index_t> pixel_piece(const PixelTiling& t, int64_t i) {
  const index_t channel_vecs = static_cast<index_t>(t.channels / V);
  const index_t segments = static_cast<index_t>(t.segments);
  const index_t id = static_cast<index_t>(i);
  const index_t rest = id / channel_vecs;
  const index_t seg = rest % segments;
  const int64_t w0 = static_cast<int64_t>(seg) * t.seg_len;
  return {rest / segments, seg, (id % channel_vecs) * V, w0, min64(t.width, w0 + t.seg_len)};
}

// Where a small per-row workspace keeps the value of (b, c, h, segment).
struct RowLayout {
  int64_t b_stride, c_stride, h_stride, s_stride, segments;
  bool channels_fastest;  // c_stride == 1: threads over (b, c, k) take neighbouring c (coalesced)
  // [B, C, H, S]: what the NCHW kernels write (row * S + segment).
  static RowLayout nchw(int64_t C, int64_t H, int64_t S) { return {C * H * S, H * S, S, 1, S, false}; }
  // [B, H, S, C]: what the NHWC kernels write ((b * H + h) * S + segment) * C + c.
  static RowLayout nhwc(int64_t C, int64_t H, int64_t S) { return {H * S * C, 1, S * C, C, S, true}; }
};

// (b, c, k) of a flat index i over B x C x K with k fastest, or c fastest.
struct BCK {
  int64_t b, c, k;
};
HANET_HOST_DEVICE BCK split_bck(int64_t i, int64_t C, int64_t K, bool channels_fastest) {
  if (channels_fastest) {
    const int64_t rest = i / C;
    return {rest / K, i % C, rest % K};
  }
  const int64_t plane = i / K;
  return {plane / C, plane % C, i % K};
}

// Lanes of a group load about this many vectors each, so short rows keep whole warps busy
// with several rows instead of idling lanes.
constexpr int64_t kVecsPerLane = 4;
// A segment is at most 16 vectors per lane of a warp long; rows are split further (to fill
// the GPU when there are few rows) down to segments of 2 vectors per lane of a warp.
constexpr int64_t kMaxSegmentVecs = kWarpSize * 16;
constexpr int64_t kMinSegmentVecs = kWarpSize * 2;
// NHWC pixel rows are split (when there are too few threads) into segments of at least this
// many columns: the workspace then has 1/16 of the tensor's pixels or less.
constexpr int64_t kMinSegmentColumns = 16;

inline int group_for(int64_t vecs) {
  int group = 1;
  while (group < kWarpSize && group * kVecsPerLane < vecs) group *= 2;
  return group;
}

// `vec` divides `width` (or is 1); `target_lanes` is about how many threads fill the GPU.
inline RowTiling plan_rows(int64_t rows, int64_t width, int vec, int64_t target_lanes) {
  const int64_t vecs = ceil_div(width, vec);
  int64_t segments = ceil_div(vecs, kMaxSegmentVecs);
  const int64_t wanted = ceil_div(ceil_div(target_lanes, max64(rows, 1)), kWarpSize);  // warps per row to fill it
  segments = max64(segments, min64(wanted, ceil_div(vecs, kMinSegmentVecs)));
  const int64_t seg_vecs = ceil_div(vecs, segments);
  RowTiling t;
  t.rows = rows;
  t.width = width;
  t.seg_len = seg_vecs * vec;
  t.segments = ceil_div(width, t.seg_len);  // drops empty segments
  t.group = group_for(seg_vecs);
  return t;
}

// `vec` divides `channels` (or is 1).
inline PixelTiling plan_pixels(int64_t pixel_rows, int64_t width, int64_t channels, int vec, int64_t target_threads) {
  const int64_t columns = max64(pixel_rows * (channels / vec), 1);  // threads of one segment per pixel row
  const int64_t segments = max64(1, min64(ceil_div(target_threads, columns), ceil_div(width, kMinSegmentColumns)));
  PixelTiling t;
  t.pixel_rows = pixel_rows;
  t.width = width;
  t.channels = channels;
  t.seg_len = ceil_div(width, segments);
  t.segments = ceil_div(width, t.seg_len);  // drops empty segments
  return t;
}

// The lane's place in the NCHW tiling. Items are handed out per warp, so every lane of a warp
// runs the same number of loop iterations (the shuffles need the whole warp); a group whose
// item is past the end takes part with no data.
struct GroupLane {
  int lane;           // within the group
  int group_in_warp;  // which of the warp's 32 / group items
  int64_t first;      // the warp's first item
  int64_t step;       // items per grid-wide iteration
};

__device__ __forceinline__ GroupLane group_lane(int group) {
  const int64_t thread = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t warp = thread / kWarpSize;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * blockDim.x / kWarpSize;
  const int lane_in_warp = static_cast<int>(threadIdx.x % kWarpSize);
  const int items_per_warp = kWarpSize / group;
  return {lane_in_warp % group, lane_in_warp / group, warp * items_per_warp, warps * items_per_warp};
}

__device__ __forceinline__ int64_t global_thread() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}

__device__ __forceinline__ int64_t grid_threads() { return static_cast<int64_t>(gridDim.x) * blockDim.x; }

// ------------------------------------------------------------------------------ launches
// What a launch sequence needs to know about the device.
struct Device {
  int sm_count;
  cudaStream_t stream;
  // Threads that keep every SM's memory pipeline busy: a full wave for the NCHW tiling, half of
  // one for the NHWC tiling, whose threads each keep several 16-byte loads in flight.
  int64_t target_threads() const { return static_cast<int64_t>(sm_count) * 2048; }
  int64_t target_pixel_threads() const { return static_cast<int64_t>(sm_count) * 1024; }
  int64_t blocks_for(int64_t threads) const {  // grid-stride loops cover the rest; launch() may cut further
    return max64(1, min64(ceil_div(threads, kThreads), static_cast<int64_t>(sm_count) * kMaxBlocksPerSm));
  }
};

// Blocks for the NCHW tiling: one warp per 32 / group items.
inline int64_t blocks_for_rows(const Device& device, const RowTiling& t) {
  const int64_t warps = ceil_div(t.rows * t.segments, kWarpSize / t.group);
  return device.blocks_for(warps * kWarpSize);
}

// Calls f(int32_t{}) when every offset into the tensors and workspaces of a launch (all
// below `max_elements`) fits in 32 bits, with room for the last step of a loop past the end
// (a group's stride, at most kIndexHeadroom), else f(int64_t{}): the index type of the kernels.
constexpr int64_t kIndexHeadroom = 4096;
template <typename F>
void with_index_type(int64_t max_elements, F&& f) {
  if (max_elements <= static_cast<int64_t>(INT32_MAX) - kIndexHeadroom) {
    f(int32_t{});
  } else {
    f(int64_t{});
  }
}

// Blocks of `kernel` that one SM holds at once, asked of `occupancy` (the CUDA occupancy
// calculator in launch(); a stand-in in scripts/kernel_plans.cpp) the first time the kernel
// launches and kept per kernel, keyed by its address: the instantiations sharing a parameter
// list differ in registers, so in occupancy, and none may take another's value whichever
// launches first.
inline int resident_blocks_per_sm(const void* kernel, int (*occupancy)(const void* kernel)) {
  static std::mutex mutex;
  static std::unordered_map<const void*, int> per_kernel;
  const std::lock_guard<std::mutex> lock(mutex);
  const auto known = per_kernel.find(kernel);
  if (known != per_kernel.end()) return known->second;
  return per_kernel.emplace(kernel, occupancy(kernel)).first->second;
}

// The grid of a launch of `kernel` planned at `blocks` blocks: every kernel loops grid-stride,
// so the grid is cut to the blocks the GPU holds at once: one wave, no tail of a partial wave.
inline int64_t resident_grid(const void* kernel, int64_t blocks, int sm_count,
                             int (*occupancy)(const void* kernel)) {
  return min64(blocks, static_cast<int64_t>(sm_count) * resident_blocks_per_sm(kernel, occupancy));
}

// HANET_CUDA_EMULATION: defined by a CPU emulation of these kernels (lanes as threads,
// shuffles as barrier exchanges; not part of the build) and by scripts/kernel_plans.cpp, which
// bring their own launch().
#ifndef HANET_CUDA_EMULATION
// The occupancy of a kThreads-thread block of `kernel` by its registers and shared memory.
inline int cuda_occupancy(const void* kernel) {
  int n = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, kThreads, 0) != cudaSuccess || n < 1) {
    (void)cudaGetLastError();  // not fatal: the grid stays as planned
    n = kMaxBlocksPerSm;
  }
  return n;
}

// Launches `kernel` on resident_grid() blocks of kThreads threads on device.stream; the caller
// checks the launch (a callback from csrc/cuda runs C10_CUDA_KERNEL_LAUNCH_CHECK after every launch).
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), int64_t blocks, const Device& device, Args... args) {
  blocks = resident_grid(reinterpret_cast<const void*>(kernel), blocks, device.sm_count, cuda_occupancy);
  kernel<<<static_cast<unsigned int>(blocks), kThreads, 0, device.stream>>>(static_cast<Params>(args)...);
}
#endif

}  // namespace cuda
}  // namespace hanet_fast
