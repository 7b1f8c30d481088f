// Grid-free TPS warp: each output pixel's sampling position is evaluated from the
// 28 spline coefficients of its batch element and the pixel's 25 radial terms, then
// sampled bilinearly; no (B, H, W, 2) grid is ever stored.
#include <vector>

#include "kernels.h"

namespace scops_fast {

template <typename T>
void RowSamples<T>::compute(const double* m, const T* radial, int64_t i, int64_t H, int64_t W,
                            bool border) {
  const double y = corner_coord(i, H);
  const double step = W > 1 ? 2.0 / double(W - 1) : 0.0;
  const double cx = m[2 * kControl] + m[2 * (kControl + 2)] * y;
  const double cy = m[2 * kControl + 1] + m[2 * (kControl + 2) + 1] * y;
  const double ax = m[2 * (kControl + 1)], ay = m[2 * (kControl + 1) + 1];
  double* px = gx.data();
  double* py = gy.data();
#pragma omp simd
  for (int64_t j = 0; j < W; ++j) {
    const double x = double(j) * step - 1.0;
    px[j] = cx + ax * x;
    py[j] = cy + ay * x;
  }
  // Radial part, control point by control point so the row loop vectorises.
  for (int a = 0; a < kControl; ++a) {
    const T* u = radial + (a * H + i) * W;
    const double mx = m[2 * a], my = m[2 * a + 1];
#pragma omp simd
    for (int64_t j = 0; j < W; ++j) {
      px[j] += double(u[j]) * mx;
      py[j] += double(u[j]) * my;
    }
  }
  for (int64_t j = 0; j < W; ++j) {
    const Bilinear s = bilinear_at(px[j], py[j], H, W, border);
    for (int c = 0; c < 4; ++c) {
      offset[c][j] = s.valid[c] ? s.offset[c] : -1;
      weight[c][j] = s.valid[c] ? T(s.weight[c]) : T(0);
    }
  }
}

template struct RowSamples<float>;
template struct RowSamples<double>;

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

}  // namespace scops_fast
