// Grid-free TPS warp: each output pixel's sampling position is evaluated from the
// 28 spline coefficients of its batch element and the pixel's 25 radial terms, then
// sampled bilinearly; no (B, H, W, 2) grid is ever stored.
#include <vector>

#include "kernels.h"

namespace scops_fast {

// Bilinear corners of every pixel of row i for batch element b.
template <typename T>
void row_samples(const double* m, const T* radial, int64_t i, int64_t H, int64_t W, bool border,
                 Bilinear* out) {
  const double y = corner_coord(i, H);
  const T* u = radial + i * W;
  for (int64_t j = 0; j < W; ++j) {
    double gx, gy;
    tps_position(u + j, H * W, corner_coord(j, W), y, m, &gx, &gy);
    out[j] = bilinear_at(gx, gy, H, W, border);
  }
}

template <typename T>
void tps_warp_forward(const T* x, const double* mapping, const T* radial, int64_t B, int64_t C,
                      int64_t H, int64_t W, bool border, T* out, ParallelFor pf) {
  const int64_t plane = H * W;
  // Rows outer, batch inner: a row's radial terms stay in cache across the batch.
  pf(H, [&](int64_t begin, int64_t end) {
    std::vector<Bilinear> samples(W);
    for (int64_t i = begin; i < end; ++i)
      for (int64_t b = 0; b < B; ++b) {
        row_samples(mapping + b * kMapping * 2, radial, i, H, W, border, samples.data());
        for (int64_t c = 0; c < C; ++c) {
          const T* src = x + (b * C + c) * plane;
          T* dst = out + (b * C + c) * plane + i * W;
          for (int64_t j = 0; j < W; ++j) dst[j] = bilinear_read(src, samples[j]);
        }
      }
  });
}

template <typename T>
void tps_warp_backward(const T* grad_out, const double* mapping, const T* radial, int64_t B,
                       int64_t C, int64_t H, int64_t W, bool border, T* grad_x, ParallelFor pf) {
  const int64_t plane = H * W;
  pf(B, [&](int64_t begin, int64_t end) {
    std::vector<Bilinear> samples(W);
    for (int64_t b = begin; b < end; ++b) {
      std::fill(grad_x + b * C * plane, grad_x + (b + 1) * C * plane, T(0));
      for (int64_t i = 0; i < H; ++i) {
        row_samples(mapping + b * kMapping * 2, radial, i, H, W, border, samples.data());
        for (int64_t c = 0; c < C; ++c) {
          T* dst = grad_x + (b * C + c) * plane;
          const T* g = grad_out + (b * C + c) * plane + i * W;
          for (int64_t j = 0; j < W; ++j) bilinear_scatter(dst, samples[j], g[j]);
        }
      }
    }
  });
}

template void row_samples<float>(const double*, const float*, int64_t, int64_t, int64_t, bool,
                                 Bilinear*);
template void row_samples<double>(const double*, const double*, int64_t, int64_t, int64_t, bool,
                                  Bilinear*);
template void tps_warp_forward<float>(const float*, const double*, const float*, int64_t, int64_t,
                                      int64_t, int64_t, bool, float*, ParallelFor);
template void tps_warp_forward<double>(const double*, const double*, const double*, int64_t,
                                       int64_t, int64_t, int64_t, bool, double*, ParallelFor);
template void tps_warp_backward<float>(const float*, const double*, const float*, int64_t,
                                       int64_t, int64_t, int64_t, bool, float*, ParallelFor);
template void tps_warp_backward<double>(const double*, const double*, const double*, int64_t,
                                        int64_t, int64_t, int64_t, bool, double*, ParallelFor);

}  // namespace scops_fast
