// Grid-free TPS warp: each output pixel's sampling position is evaluated from the
// 28 spline coefficients of its batch element and the pixel's 25 radial terms, then
// sampled bilinearly; no (B, H, W, 2) grid is ever stored.
#include <vector>

#include "row_samples.h"
#include "torch_glue.h"

namespace scops_fast {


template <typename T>
void tps_warp_forward(const T* x, const double* mapping, const T* radial, int64_t B, int64_t C,
                      int64_t H, int64_t W, bool border, T* out, ParallelFor pf) {
  const int64_t plane = H * W;
  // Rows outer, batch inner: a row's radial terms stay in cache across the batch.
  pf(H, [&](int64_t begin, int64_t end) {
    RowSamples<T> samples(W);
    for (int64_t i = begin; i < end; ++i)
      for (int64_t b = 0; b < B; ++b) {
        samples.compute(mapping + b * kMapping * 2, radial, i, H, W, border);
        samples.read_row(x + b * C * plane, plane, C, out + b * C * plane + i * W, plane);
      }
  });
}

template <typename T>
void tps_warp_backward(const T* grad_out, const double* mapping, const T* radial, int64_t B,
                       int64_t C, int64_t H, int64_t W, bool border, T* grad_x, ParallelFor pf) {
  const int64_t plane = H * W;
  pf(B, [&](int64_t begin, int64_t end) {
    RowSamples<T> samples(W);
    for (int64_t b = begin; b < end; ++b) {
      std::fill(grad_x + b * C * plane, grad_x + (b + 1) * C * plane, T(0));
      for (int64_t i = 0; i < H; ++i) {
        samples.compute(mapping + b * kMapping * 2, radial, i, H, W, border);
        samples.scatter_row(grad_x + b * C * plane, plane, C, grad_out + b * C * plane + i * W,
                            plane);
      }
    }
  });
}

template void tps_warp_forward<float>(const float*, const double*, const float*, int64_t, int64_t,
                                      int64_t, int64_t, bool, float*, ParallelFor);
template void tps_warp_forward<double>(const double*, const double*, const double*, int64_t,
                                       int64_t, int64_t, int64_t, bool, double*, ParallelFor);
template void tps_warp_backward<float>(const float*, const double*, const float*, int64_t,
                                       int64_t, int64_t, int64_t, bool, float*, ParallelFor);
template void tps_warp_backward<double>(const double*, const double*, const double*, int64_t,
                                        int64_t, int64_t, int64_t, bool, double*, ParallelFor);

namespace {

at::Tensor tps_warp_op(const at::Tensor& x_, const at::Tensor& mapping, bool border) {
  const auto x = x_.contiguous();
  const auto m = f64(mapping);
  const auto u = radial_table(x.size(2), x.size(3), x.scalar_type());
  auto out = empty_output_like(x);
  SF_DISPATCH(x.scalar_type(), [&] {
    tps_warp_forward<scalar_t>(x.data_ptr<scalar_t>(), m.data_ptr<double>(),
                               u.data_ptr<scalar_t>(), x.size(0), x.size(1), x.size(2),
                               x.size(3), border, out.data_ptr<scalar_t>(), aten_parallel);
  });
  return out;
}

at::Tensor tps_warp_backward_op(const at::Tensor& grad_out_, const at::Tensor& mapping,
                                bool border) {
  const auto g = grad_out_.contiguous();
  const auto m = f64(mapping);
  const auto u = radial_table(g.size(2), g.size(3), g.scalar_type());
  auto grad = empty_output_like(g);
  SF_DISPATCH(g.scalar_type(), [&] {
    tps_warp_backward<scalar_t>(g.data_ptr<scalar_t>(), m.data_ptr<double>(),
                                u.data_ptr<scalar_t>(), g.size(0), g.size(1), g.size(2),
                                g.size(3), border, grad.data_ptr<scalar_t>(), aten_parallel);
  });
  return grad;
}

}  // namespace

// The family's ops: schemas (scops_fast.ops.<family> registers their fake and autograd
// rules; the CUDA library adds CUDA kernels for the same schemas) and CPU kernels.
TORCH_LIBRARY_FRAGMENT(scops_fast, m) {
  m.def("tps_warp(Tensor x, Tensor mapping, bool border) -> Tensor");
  m.def("tps_warp_backward(Tensor grad_out, Tensor mapping, bool border) -> Tensor");
}

TORCH_LIBRARY_IMPL(scops_fast, CPU, m) {
  m.impl("tps_warp", &tps_warp_op);
  m.impl("tps_warp_backward", &tps_warp_backward_op);
}

}  // namespace scops_fast
