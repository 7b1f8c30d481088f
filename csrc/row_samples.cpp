// Sampling corners and weights of one output row under the spline (row_samples.h).
#include "row_samples.h"

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
  // bilinear_at (common.h) per pixel, restated branch-free so the row vectorises.
  const double half_w = 0.5 * double(W - 1), half_h = 0.5 * double(H - 1);
  // Border padding clamps positions into the image; zeros padding leaves them be.
  const double inf = INFINITY;
  const double x_lo = border ? 0.0 : -inf, x_hi = border ? double(W - 1) : inf;
  const double y_lo = border ? 0.0 : -inf, y_hi = border ? double(H - 1) : inf;
  int64_t* o00 = offset[0].data();
  int64_t* o01 = offset[1].data();
  int64_t* o10 = offset[2].data();
  int64_t* o11 = offset[3].data();
  T* w00 = weight[0].data();
  T* w01 = weight[1].data();
  T* w10 = weight[2].data();
  T* w11 = weight[3].data();
#pragma omp simd
  for (int64_t j = 0; j < W; ++j) {
    double ix = (px[j] + 1.0) * half_w, iy = (py[j] + 1.0) * half_h;
    ix = ix < x_lo ? x_lo : (ix > x_hi ? x_hi : ix);
    iy = iy < y_lo ? y_lo : (iy > y_hi ? y_hi : iy);
    // A non-finite spline position (NaN or inf source points) samples NaN, in either
    // padding mode, and receives no gradient: w00 = NaN with every corner outside.
    const bool finite = (px[j] - px[j]) == 0.0 && (py[j] - py[j]) == 0.0;
    // Beyond one pixel outside (or not finite) no corner is inside: park it there.
    const bool near =
        finite && ix > -2.0 && ix < double(W + 1) && iy > -2.0 && iy < double(H + 1);
    ix = near ? ix : -4.0;
    iy = near ? iy : -4.0;
    const double fx = std::floor(ix), fy = std::floor(iy);
    const double tx = ix - fx, ty = iy - fy;
    const int64_t x0 = int64_t(fx), y0 = int64_t(fy);
    // Unsigned compares test 0 <= v < n in one step and keep the masks simple.
    const uint64_t uw = uint64_t(W), uh = uint64_t(H);
    const int64_t in_x0 = uint64_t(x0) < uw, in_x1 = uint64_t(x0 + 1) < uw;
    const int64_t in_y0 = uint64_t(y0) < uh, in_y1 = uint64_t(y0 + 1) < uh;
    const int64_t base = y0 * W + x0;
    o00[j] = (in_y0 & in_x0) ? base : -1;
    o01[j] = (in_y0 & in_x1) ? base + 1 : -1;
    o10[j] = (in_y1 & in_x0) ? base + W : -1;
    o11[j] = (in_y1 & in_x1) ? base + W + 1 : -1;
    w00[j] = finite ? T((1.0 - tx) * (1.0 - ty)) : T(NAN);
    w01[j] = T(tx * (1.0 - ty));
    w10[j] = T((1.0 - tx) * ty);
    w11[j] = T(tx * ty);
  }
}

template struct RowSamples<float>;
template struct RowSamples<double>;

}  // namespace scops_fast
