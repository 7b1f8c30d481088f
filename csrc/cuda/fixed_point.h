// Scatters (adjoints of bilinear sampling) accumulate in int64 fixed point: exact,
// order-free additions make them deterministic whatever order the atomics land in. The
// scale is 2^42 / (a bound on every contribution), leaving 2^20 of headroom for many
// pixels landing on one input pixel and keeping a resolution of about 2^-42 relative to
// the largest contribution.
#pragma once

#include <cmath>

#include "launch.h"

namespace scops_fast {
namespace cuda {

__device__ inline void fixed_add(long long* acc, double v, double scale) {
  // Two's complement: unsigned wrap-around addition is signed addition.
  atomicAdd(reinterpret_cast<unsigned long long*>(acc),
            static_cast<unsigned long long>(__double2ll_rn(v * scale)));
}

// Scale for fixed-point accumulation of contributions bounded by `bound`.
inline double fixed_scale(double bound) {
  if (!(bound > 0) || !std::isfinite(bound)) return 1.0;
  return std::ldexp(1.0, 42 - std::ilogb(bound));
}

inline long long* fixed_ptr(at::Tensor& acc) {
  return reinterpret_cast<long long*>(acc.data_ptr<int64_t>());
}

template <typename T>
__global__ void fixed_to_float_kernel(const long long* acc, int64_t n, double scale, T* out) {
  const int64_t index = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (index < n) out[index] = T(double(acc[index]) / scale);
}

inline at::Tensor from_fixed(const at::Tensor& acc, double scale, at::ScalarType dtype) {
  auto out = at::empty(acc.sizes(), acc.options().dtype(dtype));
  const auto* src = reinterpret_cast<const long long*>(acc.data_ptr<int64_t>());
  SF_DISPATCH(dtype, [&] {
    SF_LAUNCH(fixed_to_float_kernel<scalar_t>, blocks_for(acc.numel()), kThreads, src,
              acc.numel(), scale, out.data_ptr<scalar_t>());
  });
  return out;
}

}  // namespace cuda
}  // namespace scops_fast
