// Per-pixel math shared by the CPU kernels (and, through SF_HD, by CUDA kernels):
// softmax helpers, SPEC coordinates, thin-plate-spline radial terms and bilinear
// sampling weights with their adjoints. Nothing here includes ATen; parallelism is
// injected by the op wrappers (torch_glue.h).
#pragma once

#include <cmath>
#include <cstdint>
#include <bit>
#include <functional>

#if defined(__CUDACC__)
#define SF_HD __host__ __device__ __forceinline__
#else
#define SF_HD inline
#endif

namespace scops_fast {

// SPEC section 2: mass added to every pixel of a part map before normalising.
constexpr double kCenterEps = 1e-3;
// SPEC section 6: 25 control points, 28 spline coefficients per output coordinate.
constexpr int kControl = 25;
constexpr int kMapping = 28;

// Runs body(begin, end) over [0, n) in parallel; the op wrappers pass at::parallel_for so
// the kernels follow torch.set_num_threads. Kernels only ever split work into
// fixed tiles whose results are combined in tile order, so their output does not
// depend on how tiles are spread over threads.
using RangeFn = std::function<void(int64_t, int64_t)>;
using ParallelFor = void (*)(int64_t n, const RangeFn& body);

SF_HD float bits_to_float(int32_t b) {
#if defined(__CUDA_ARCH__)
  return __int_as_float(b);
#else
  return std::bit_cast<float>(b);
#endif
}
SF_HD int32_t float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_int(f);
#else
  return std::bit_cast<int32_t>(f);
#endif
}

// exp that the compiler can vectorise (libm's exp is an opaque call that blocks
// SIMD). Cody-Waite reduction to |r| <= ln2/2 plus a degree-6 Taylor polynomial:
// about 1 ulp in float32. NaN propagates; below -87.3 (where float32 goes subnormal) it
// returns exactly 0, as exp(-inf) must: a softmax entry of a -inf logit is then 0, so
// the KL term's "q > 0" mask drops it instead of multiplying -inf by a tiny q.
// Its constants are shared with the AVX-512 softmax exponential (kernels.h), which gives
// the same bits.
constexpr float kExpLowest = -87.3f;
constexpr float kExpHighest = 88.0f;
// Round to nearest by adding and subtracting 1.5 * 2^23: floorf would block vectorisation.
constexpr float kExpShifter = 12582912.0f;
constexpr float kExpLog2e = 1.44269504088896341f;
constexpr float kExpLn2Hi = 0.693145751953125f;  // ln 2 = hi + lo, hi exact in few bits
constexpr float kExpLn2Lo = 1.428606765330187e-06f;

SF_HD float vexp(float x) {
  const float lo = kExpLowest, hi = kExpHighest;
  float c = x < lo ? lo : x;
  c = c > hi ? hi : c;
  float k = (c * kExpLog2e + kExpShifter) - kExpShifter;
  float r = c - k * kExpLn2Hi;
  r = r - k * kExpLn2Lo;
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const float scale = bits_to_float((static_cast<int32_t>(k) + 127) << 23);
  float out = p * scale;
  out = x < lo ? 0.0f : out;
  return x != x ? x : out;
}
SF_HD double vexp(double x) { return std::exp(x); }

// log that the compiler can vectorise, for positive normal floats (a softmax
// partition sum is >= 1): x = m 2^e with m in [sqrt(1/2), sqrt(2)), then
// log m = 2 atanh((m - 1) / (m + 1)) by its odd series; about 1 ulp. NaN and +inf pass.
SF_HD float vlog(float x) {
  const int32_t bits = float_to_bits(x);
  // Exponent relative to sqrt(1/2): subtracting its bits moves m into the range above.
  const int32_t shifted = bits - 0x3f3504f3;
  const int32_t e = shifted >> 23;
  const float m = bits_to_float(bits - (e << 23));
  const float s = (m - 1.0f) / (m + 1.0f);
  const float s2 = s * s;
  float p = 1.0f / 9.0f;
  p = p * s2 + 1.0f / 7.0f;
  p = p * s2 + 1.0f / 5.0f;
  p = p * s2 + 1.0f / 3.0f;
  p = p * s2 + 1.0f;
  const float out = float(e) * 0.693147180559945309f + 2.0f * s * p;
  return (x != x || x > 3.4e38f) ? x : out;
}
SF_HD double vlog(double x) { return std::log(x); }

// SPEC section 1: loss coordinates, 2j/W - 1 (not pixel centres).
SF_HD double loss_coord(int64_t idx, int64_t n) { return 2.0 * double(idx) / double(n) - 1.0; }

// SPEC section 2: the closed-form sum over all pixels of 1e-3 * (1, x, y, x^2 + y^2),
// the mass every part map gets before it is normalised.
SF_HD void eps_moment_terms(int64_t H, int64_t W, double out[4]) {
  double sx = 0, sxx = 0, sy = 0, syy = 0;
  for (int64_t j = 0; j < W; ++j) {
    sx += loss_coord(j, W);
    sxx += loss_coord(j, W) * loss_coord(j, W);
  }
  for (int64_t i = 0; i < H; ++i) {
    sy += loss_coord(i, H);
    syy += loss_coord(i, H) * loss_coord(i, H);
  }
  out[0] = kCenterEps * double(H * W);
  out[1] = kCenterEps * double(H) * sx;
  out[2] = kCenterEps * double(W) * sy;
  out[3] = kCenterEps * (double(H) * sxx + double(W) * syy);
}

// SPEC section 6: align_corners pixel position 2j/(W-1) - 1; a single pixel sits at -1.
SF_HD double corner_coord(int64_t idx, int64_t n) {
  return n > 1 ? 2.0 * double(idx) / double(n - 1) - 1.0 : -1.0;
}

// SPEC section 6: target control point a of the 5x5 grid over [-1, 1]^2 in
// itertools.product order, x the slow index.
SF_HD double target_x(int a) { return -1.0 + 0.5 * double(a / 5); }
SF_HD double target_y(int a) { return -1.0 + 0.5 * double(a % 5); }

// SPEC section 6: U(d2) = 0.5 d2 log d2, 0 at 0.
SF_HD double tps_radial(double d2) { return d2 > 0.0 ? 0.5 * d2 * std::log(d2) : 0.0; }

// Bilinear sampling at a normalised position (align_corners=True), as grid_sample:
// four corners with their weights; a corner outside the image has valid = false
// (zeros padding) and is never read. Border padding clamps the position first. A
// non-finite position (NaN or inf source points) samples NaN in either padding mode
// and receives no gradient, as the reference and the CPU kernels do.
struct Bilinear {
  int64_t offset[4];  // y * W + x of each corner
  double weight[4];
  bool valid[4];
  bool nan;
};

SF_HD Bilinear bilinear_at(double gx, double gy, int64_t height, int64_t width, bool border) {
  Bilinear s;
  s.nan = !((gx - gx) == 0.0 && (gy - gy) == 0.0);
  double ix = (gx + 1.0) * 0.5 * double(width - 1);
  double iy = (gy + 1.0) * 0.5 * double(height - 1);
  if (border) {
    ix = ix < 0.0 ? 0.0 : (ix > double(width - 1) ? double(width - 1) : ix);
    iy = iy < 0.0 ? 0.0 : (iy > double(height - 1) ? double(height - 1) : iy);
  }
  // Far outside (or NaN) nothing is read; the bound also keeps the casts defined.
  const double limit = 1e9;
  if (!(ix > -limit && ix < limit && iy > -limit && iy < limit)) {
    for (int c = 0; c < 4; ++c) {
      s.offset[c] = 0;
      s.weight[c] = 0.0;
      s.valid[c] = false;
    }
    return s;
  }
  const double fx0 = std::floor(ix), fy0 = std::floor(iy);
  const int64_t x0 = int64_t(fx0), y0 = int64_t(fy0);
  const double tx = ix - fx0, ty = iy - fy0;
  const int64_t xs[4] = {x0, x0 + 1, x0, x0 + 1};
  const int64_t ys[4] = {y0, y0, y0 + 1, y0 + 1};
  const double ws[4] = {(1 - tx) * (1 - ty), tx * (1 - ty), (1 - tx) * ty, tx * ty};
  for (int c = 0; c < 4; ++c) {
    s.valid[c] = xs[c] >= 0 && xs[c] < width && ys[c] >= 0 && ys[c] < height;
    s.offset[c] = s.valid[c] ? ys[c] * width + xs[c] : 0;
    s.weight[c] = s.valid[c] ? ws[c] : 0.0;
  }
  return s;
}

template <typename T>
SF_HD T bilinear_read(const T* plane, const Bilinear& s) {
  if (s.nan) return T(NAN);
  T acc = T(0);
  for (int c = 0; c < 4; ++c)
    if (s.valid[c]) acc += T(s.weight[c]) * plane[s.offset[c]];
  return acc;
}

// Adjoint of bilinear_read: spreads g over the corners it was read from.
template <typename T>
SF_HD void bilinear_scatter(T* plane, const Bilinear& s, T g) {
  for (int c = 0; c < 4; ++c)
    if (s.valid[c]) plane[s.offset[c]] += T(s.weight[c]) * g;
}

// Spline position of one pixel from its radial terms u[a * stride] (a < 25) and its
// align_corners coordinates, for coefficients m (28 x 2, row-major).
template <typename T>
SF_HD void tps_position(const T* u, int64_t stride, double x, double y, const double* m,
                        double* gx, double* gy) {
  double sx = m[2 * kControl] + m[2 * (kControl + 1)] * x + m[2 * (kControl + 2)] * y;
  double sy = m[2 * kControl + 1] + m[2 * (kControl + 1) + 1] * x + m[2 * (kControl + 2) + 1] * y;
  for (int a = 0; a < kControl; ++a) {
    const double ua = double(u[a * stride]);
    sx += ua * m[2 * a];
    sy += ua * m[2 * a + 1];
  }
  *gx = sx;
  *gy = sy;
}

// Spline position of one pixel with its radial terms computed on the spot (the GPU
// path: a log is cheaper there than reading a 25-entry table).
SF_HD void tps_position_direct(double x, double y, const double* m, double* gx, double* gy) {
  double sx = m[2 * kControl] + m[2 * (kControl + 1)] * x + m[2 * (kControl + 2)] * y;
  double sy = m[2 * kControl + 1] + m[2 * (kControl + 1) + 1] * x + m[2 * (kControl + 2) + 1] * y;
  for (int a = 0; a < kControl; ++a) {
    const double dx = x - target_x(a), dy = y - target_y(a);
    const double ua = tps_radial(dx * dx + dy * dy);
    sx += ua * m[2 * a];
    sy += ua * m[2 * a + 1];
  }
  *gx = sx;
  *gy = sy;
}

// Softmax over `channels` values spaced `stride` apart, into p[0..channels).
// Returns log(sum exp(z - max)) + max, the log-partition, for log-softmax users.
template <typename T>
SF_HD T softmax_into(const T* z, int64_t stride, int channels, T* p) {
  T mx = z[0];
  for (int c = 1; c < channels; ++c) mx = z[c * stride] > mx ? z[c * stride] : mx;
  T sum = T(0);
  for (int c = 0; c < channels; ++c) {
    p[c] = vexp(z[c * stride] - mx);
    sum += p[c];
  }
  const T inv = T(1) / sum;
  for (int c = 0; c < channels; ++c) p[c] *= inv;
  return mx + std::log(sum);
}

}  // namespace scops_fast
