// One pass over the logits: per-pixel channel softmax, then the four moments per
// (b, k) from which SPEC section 3 follows by
//   sum pdf |p - c|^2 = sum pdf (x^2 + y^2) - |c|^2.
// Rows are grouped into fixed tiles; each tile writes its own partial sums, added in
// tile order, so the result is the same for any number of threads.
#include <algorithm>
#include <vector>

#include "kernels.h"

namespace scops_fast {
namespace {

constexpr int64_t kTilePixels = 4096;

int64_t rows_per_tile(int64_t W) { return std::max<int64_t>(1, kTilePixels / std::max<int64_t>(W, 1)); }

// Softmax numerators of one row (kernels.h) and inv[j] = 1 / partition: callers fold the
// normalisation into their next pass instead of storing probabilities.
template <typename T>
void row_exp(const T* z, int64_t plane, int64_t channels, int64_t W, T* e, T* mx, T* inv) {
  row_softmax_numerators(z, plane, channels, W, e, mx, inv);
#pragma omp simd
  for (int64_t j = 0; j < W; ++j) inv[j] = T(1) / inv[j];
}

// Part k's moment gradients g = d/d(1, x, y, x^2 + y^2) on the row at height y, as the
// polynomial G(x) = g0 + g1 x + g3 x^2, in the precision S it is evaluated in.
template <typename S>
struct RowGradient {
  S g0, g1, g3;
  RowGradient(const double* g, S y)
      : g0(S(g[0]) + S(g[2]) * y + S(g[3]) * y * y), g1(S(g[1])), g3(S(g[3])) {}
  S at(S x) const { return g0 + g1 * x + g3 * x * x; }
};

}  // namespace

template <typename T>
void moments_forward(const T* z, int64_t B, int64_t channels, int64_t H, int64_t W,
                     bool from_logits, double* out, ParallelFor pf) {
  const int64_t parts = from_logits ? channels - 1 : channels;
  const int64_t rpt = rows_per_tile(W);
  const int64_t tiles = (H + rpt - 1) / rpt;
  const int64_t plane = H * W;
  std::vector<double> partial(B * tiles * parts * 4, 0.0);
  pf(B * tiles, [&](int64_t begin, int64_t end) {
    std::vector<T> e(channels * W), mx(W), weight(W, T(1)), xs(W);
    for (int64_t j = 0; j < W; ++j) xs[j] = T(loss_coord(j, W));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / tiles, tile = task % tiles;
      double* acc = partial.data() + task * parts * 4;
      for (int64_t i = tile * rpt; i < std::min(H, (tile + 1) * rpt); ++i) {
        const T* zrow = z + b * channels * plane + i * W;
        // Part k's row: softmax numerators times `weight` (1 / partition), or the given
        // probabilities times 1.
        if (from_logits) row_exp(zrow, plane, channels, W, e.data(), mx.data(), weight.data());
        const double y = loss_coord(i, H);
        for (int64_t k = 0; k < parts; ++k) {
          const T* pk = from_logits ? e.data() + (k + 1) * W : zrow + k * plane;
          const T* wk = weight.data();
          T s0 = 0, s1 = 0, s2 = 0;
#pragma omp simd reduction(+ : s0, s1, s2)
          for (int64_t j = 0; j < W; ++j) {
            const T p = pk[j] * wk[j];
            s0 += p;
            s1 += p * xs[j];
            s2 += p * xs[j] * xs[j];
          }
          acc[k * 4 + 0] += s0;
          acc[k * 4 + 1] += s1;
          acc[k * 4 + 2] += y * s0;
          acc[k * 4 + 3] += s2 + y * y * s0;
        }
      }
    }
  });
  // The eps mass is the same for every part: add it in closed form.
  double eps_terms[4];
  eps_moment_terms(H, W, eps_terms);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t k = 0; k < parts; ++k)
      for (int m = 0; m < 4; ++m) {
        double total = 0;
        for (int64_t tile = 0; tile < tiles; ++tile)
          total += partial[((b * tiles + tile) * parts + k) * 4 + m];
        out[(b * parts + k) * 4 + m] = total + eps_terms[m];
      }
}

template <typename T>
void moments_backward(const T* z, const double* grad_moments, int64_t B, int64_t channels,
                      int64_t H, int64_t W, bool from_logits, T* grad, ParallelFor pf) {
  const int64_t parts = from_logits ? channels - 1 : channels;
  const int64_t plane = H * W;
  pf(B * H, [&](int64_t begin, int64_t end) {
    std::vector<T> e(channels * W), mx(W), inv(W), xs(W), dot(W);
    std::vector<double> xd(W);
    for (int64_t j = 0; j < W; ++j) xd[j] = loss_coord(j, W);
    for (int64_t j = 0; j < W; ++j) xs[j] = T(xd[j]);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / H, i = task % H;
      const int64_t row = b * channels * plane + i * W;
      const T y = T(loss_coord(i, H));
      const double* g = grad_moments + b * parts * 4;
      if (!from_logits) {
        // In double: for a centre, G = (x - c) / mass is a difference of two terms of size
        // x / mass, which in float left ~1e-4 of rounding where the exact gradient is 0.
        for (int64_t k = 0; k < parts; ++k) {
          const RowGradient<double> G(g + k * 4, loss_coord(i, H));
          T* out = grad + row + k * plane;
#pragma omp simd
          for (int64_t j = 0; j < W; ++j) out[j] = T(G.at(xd[j]));
        }
        continue;
      }
      // dz_c = p_c (G_c - sum_k p_k G_k) with G_0 = 0 for the background; p_c = e_c inv.
      row_exp(z + row, plane, channels, W, e.data(), mx.data(), inv.data());
      std::fill(dot.begin(), dot.end(), T(0));
      for (int64_t k = 0; k < parts; ++k) {
        const RowGradient<T> G(g + k * 4, y);
        const T* ek = e.data() + (k + 1) * W;
#pragma omp simd
        for (int64_t j = 0; j < W; ++j) dot[j] += ek[j] * G.at(xs[j]);
      }
      const T* e0 = e.data();
#pragma omp simd
      for (int64_t j = 0; j < W; ++j) dot[j] *= inv[j];
      T* out0 = grad + row;
#pragma omp simd
      for (int64_t j = 0; j < W; ++j) out0[j] = -e0[j] * inv[j] * dot[j];
      for (int64_t k = 0; k < parts; ++k) {
        const RowGradient<T> G(g + k * 4, y);
        const T* ek = e.data() + (k + 1) * W;
        T* out = grad + row + (k + 1) * plane;
#pragma omp simd
        for (int64_t j = 0; j < W; ++j) out[j] = ek[j] * inv[j] * (G.at(xs[j]) - dot[j]);
      }
    }
  });
}

template void moments_forward<float>(const float*, int64_t, int64_t, int64_t, int64_t, bool,
                                     double*, ParallelFor);
template void moments_forward<double>(const double*, int64_t, int64_t, int64_t, int64_t, bool,
                                      double*, ParallelFor);
template void moments_backward<float>(const float*, const double*, int64_t, int64_t, int64_t,
                                      int64_t, bool, float*, ParallelFor);
template void moments_backward<double>(const double*, const double*, int64_t, int64_t, int64_t,
                                       int64_t, bool, double*, ParallelFor);

}  // namespace scops_fast
