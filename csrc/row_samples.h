// Bilinear sampling of one output row under the thin-plate spline, shared by the warp and
// the equivariance kernels. RowSamples::compute is in row_samples.cpp.
#pragma once

#include <cstdint>
#include <vector>

#include "common.h"

namespace scops_fast {

// Bilinear corners of every pixel of one output row, structure-of-arrays so the
// per-channel sampling loops vectorise: offset -1 marks a corner outside the image
// (zeros padding), which is never read. A pixel whose sampling position is not finite
// has every corner outside and weight[0] = NaN: it reads NaN and scatters nothing.
template <typename T>
struct RowSamples {
  std::vector<int64_t> offset[4];
  std::vector<T> weight[4];
  std::vector<double> gx, gy;  // scratch: sampling positions
  explicit RowSamples(int64_t W) : gx(W), gy(W) {
    for (int c = 0; c < 4; ++c) {
      offset[c].resize(W);
      weight[c].resize(W);
    }
  }
  // Sampling corners of output row i under spline coefficients m (28 x 2).
  void compute(const double* m, const T* radial, int64_t i, int64_t H, int64_t W, bool border);

  // out[c * out_stride + j] = sample of plane c (planes `plane` apart), for c < C.
  void read_row(const T* src, int64_t plane, int64_t C, T* out, int64_t out_stride) const {
    const int64_t W = int64_t(gx.size());
    for (int64_t j = 0; j < W; ++j) {
      const int64_t o0 = offset[0][j], o1 = offset[1][j], o2 = offset[2][j], o3 = offset[3][j];
      const T w0 = weight[0][j], w1 = weight[1][j], w2 = weight[2][j], w3 = weight[3][j];
      if ((o0 | o1 | o2 | o3) >= 0) {  // all four corners inside: the common case
        for (int64_t c = 0; c < C; ++c) {
          const T* p = src + c * plane;
          out[c * out_stride + j] = w0 * p[o0] + w1 * p[o1] + w2 * p[o2] + w3 * p[o3];
        }
      } else {
        for (int64_t c = 0; c < C; ++c) {
          const T* p = src + c * plane;
          // T(0) * w0 is 0, or NaN for a non-finite position (see above).
          out[c * out_stride + j] = (o0 >= 0 ? w0 * p[o0] : T(0) * w0) +
                                    (o1 >= 0 ? w1 * p[o1] : T(0)) +
                                    (o2 >= 0 ? w2 * p[o2] : T(0)) + (o3 >= 0 ? w3 * p[o3] : T(0));
        }
      }
    }
  }
  // Adjoint of read_row: dst plane c += spread of g[c * g_stride + j]. Plane by plane,
  // so the read-modify-writes of consecutive pixels stay within one cached region.
  void scatter_row(T* dst, int64_t plane, int64_t C, const T* g, int64_t g_stride) const {
    const int64_t W = int64_t(gx.size());
    for (int64_t c = 0; c < C; ++c) {
      T* p = dst + c * plane;
      const T* gc = g + c * g_stride;
      for (int64_t j = 0; j < W; ++j) {
        const int64_t o0 = offset[0][j], o1 = offset[1][j], o2 = offset[2][j], o3 = offset[3][j];
        const T v = gc[j];
        if ((o0 | o1 | o2 | o3) >= 0) {
          p[o0] += weight[0][j] * v;
          p[o1] += weight[1][j] * v;
          p[o2] += weight[2][j] * v;
          p[o3] += weight[3][j] * v;
        } else {
          if (o0 >= 0) p[o0] += weight[0][j] * v;
          if (o1 >= 0) p[o1] += weight[1][j] * v;
          if (o2 >= 0) p[o2] += weight[2][j] * v;
          if (o3 >= 0) p[o3] += weight[3][j] * v;
        }
      }
    }
  }
};

}  // namespace scops_fast
