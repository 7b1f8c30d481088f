// Warp family on the GPU (SPEC section 6): the grid-free TPS warp, one thread per output
// pixel evaluating the spline from the 28 coefficients, and its adjoint scattered in
// int64 fixed point (fixed_point.h).
#include <limits>

#include "fixed_point.h"
#include "spline_sample.h"

namespace scops_fast {
namespace cuda {
namespace {

template <typename T>
__global__ void warp_forward_kernel(const T* x, const double* mapping, int64_t B, int64_t C,
                                    int64_t H, int64_t W, bool border, T* out) {
  const int64_t plane = H * W;
  const int64_t index = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (index >= B * plane) return;
  const int64_t b = index / plane, pixel = index % plane;
  const Bilinear s = pixel_sample(mapping + b * kMapping * 2, pixel, H, W, border);
  for (int64_t c = 0; c < C; ++c)
    out[(b * C + c) * plane + pixel] = bilinear_read(x + (b * C + c) * plane, s);
}

template <typename T>
__global__ void warp_backward_kernel(const T* grad_out, const double* mapping, int64_t B,
                                     int64_t C, int64_t H, int64_t W, bool border, double scale,
                                     long long* acc) {
  const int64_t plane = H * W;
  const int64_t index = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (index >= B * plane) return;
  const int64_t b = index / plane, pixel = index % plane;
  const Bilinear s = pixel_sample(mapping + b * kMapping * 2, pixel, H, W, border);
  for (int64_t c = 0; c < C; ++c) {
    const double g = double(grad_out[(b * C + c) * plane + pixel]);
    for (int q = 0; q < 4; ++q)
      if (s.valid[q]) fixed_add(acc + (b * C + c) * plane + s.offset[q], s.weight[q] * g, scale);
  }
}

at::Tensor tps_warp_cuda(const at::Tensor& x_, const at::Tensor& mapping, bool border) {
  const DeviceGuard guard(x_.device());
  const auto x = x_.contiguous();
  const auto m = mapping.to(at::kDouble).contiguous();
  auto out = at::empty_like(x);
  // Nothing to write, and a GPU refuses a grid with no blocks.
  if (out.numel() == 0) return out;
  SF_DISPATCH(x.scalar_type(), [&] {
    SF_LAUNCH(warp_forward_kernel<scalar_t>, blocks_for(x.size(0) * x.size(2) * x.size(3)),
              kThreads, x.data_ptr<scalar_t>(), m.data_ptr<double>(), x.size(0), x.size(1),
              x.size(2), x.size(3), border, out.data_ptr<scalar_t>());
  });
  return out;
}

at::Tensor tps_warp_backward_cuda(const at::Tensor& g_, const at::Tensor& mapping,
                                  bool border) {
  const DeviceGuard guard(g_.device());
  const auto g = g_.contiguous();
  const auto m = mapping.to(at::kDouble).contiguous();
  // Nothing to scatter, and a GPU refuses a grid with no blocks.
  if (g.numel() == 0) return at::zeros_like(g);
  const double bound = g.abs().max().item<double>();
  if (std::isnan(bound) || std::isinf(bound))  // not representable in fixed point
    return at::full_like(g, std::numeric_limits<double>::quiet_NaN());
  const double scale = fixed_scale(bound);
  auto acc = at::zeros(g.sizes(), g.options().dtype(at::kLong));
  SF_DISPATCH(g.scalar_type(), [&] {
    SF_LAUNCH(warp_backward_kernel<scalar_t>, blocks_for(g.size(0) * g.size(2) * g.size(3)),
              kThreads, g.data_ptr<scalar_t>(), m.data_ptr<double>(), g.size(0), g.size(1),
              g.size(2), g.size(3), border, scale, fixed_ptr(acc));
  });
  return from_fixed(acc, scale, g.scalar_type());
}

}  // namespace

SF_CUDA_LIBRARY_IMPL(m) {
  m.impl("tps_warp", &tps_warp_cuda);
  m.impl("tps_warp_backward", &tps_warp_backward_cuda);
}

}  // namespace cuda
}  // namespace scops_fast
