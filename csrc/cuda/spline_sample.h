// Where output pixel `pixel` samples its input under the spline coefficients m (28 x 2):
// shared by the warp and the equivariance kernels.
#pragma once

#include "launch.h"

namespace scops_fast {
namespace cuda {

__device__ inline Bilinear pixel_sample(const double* m, int64_t pixel, int64_t H, int64_t W,
                                        bool border) {
  double gx, gy;
  tps_position_direct(corner_coord(pixel % W, W), corner_coord(pixel / W, H), m, &gx, &gy);
  return bilinear_at(gx, gy, H, W, border);
}

}  // namespace cuda
}  // namespace scops_fast
