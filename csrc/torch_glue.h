// What the op wrappers of every CPU family share: dtype dispatch, ATen's thread pool as the
// kernels' ParallelFor, and output allocation (output_cache.cpp). Shapes and dtypes are
// checked by the Python face before any op runs; the wrappers only make inputs
// contiguous, allocate outputs and dispatch on float / double.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "common.h"
#include "dtype_dispatch.h"

namespace scops_fast {

inline void aten_parallel(int64_t n, const RangeFn& body) {
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) { body(begin, end); });
}

inline at::Tensor f64(const at::Tensor& t) { return t.to(at::kDouble).contiguous(); }

// An output the kernel overwrites entirely (output_cache.cpp: large ones come from a
// huge-page block cache).
at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& opts);
inline at::Tensor empty_output_like(const at::Tensor& x) {
  return empty_output(x.sizes(), x.options());
}
// Kernel scratch of `elems` elements used within one call (undefined when elems is 0).
at::Tensor scratch_buffer(int64_t elems, const at::TensorOptions& opts);

// The 25 radial terms of every output pixel, (25, H, W), cached per size (radial_table.cpp).
at::Tensor radial_table(int64_t H, int64_t W, at::ScalarType dtype);

}  // namespace scops_fast
