// One pass over the logits: per-pixel channel softmax, then the four moments per
// (b, k) from which SPEC section 3 follows by
//   sum pdf |p - c|^2 = sum pdf (x^2 + y^2) - |c|^2.
// Rows are grouped into fixed tiles; each tile writes its own partial sums, added in
// tile order, so the result is the same for any number of threads.
// The concentration loss's own op (concentration_fused) also stores each image's softmax
// in that pass and, once the image's moments are known, turns it into the loss's gradient
// in a second pass over the image, while it is still in cache.
#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "row_softmax.h"
#include "torch_glue.h"

namespace scops_fast {
namespace {

constexpr int64_t kTilePixels = 4096;
// Gradients from this size on (about this machine's L3) are written around the cache.
constexpr int64_t kStreamBytes = int64_t(32) << 20;

int64_t rows_per_tile(int64_t W) { return std::max<int64_t>(1, kTilePixels / std::max<int64_t>(W, 1)); }
int64_t tiles_per_image(int64_t H, int64_t W) { return (H + rows_per_tile(W) - 1) / rows_per_tile(W); }

// Softmax numerators of one row (kernels.h) and inv[j] = 1 / partition: callers fold the
// normalisation into their next pass instead of storing probabilities.
template <typename T>
void row_exp(const T* z, int64_t plane, int64_t channels, int64_t W, T* e, T* mx, T* inv) {
  row_softmax_numerators(z, plane, channels, W, e, mx, inv);
#pragma omp simd
  for (int64_t j = 0; j < W; ++j) inv[j] = T(1) / inv[j];
}

// Sums over one row of p, p x and p x^2 for p = pk * wk, which is also stored to out.
// The moments come from this one loop whether or not the caller keeps the softmax (out is
// then a scratch row), so they are bitwise the same either way.
template <typename T>
inline void row_sums(const T* pk, const T* wk, const T* xs, int64_t W, T* out, T& s0, T& s1,
                     T& s2) {
  T a0 = 0, a1 = 0, a2 = 0;
#pragma omp simd reduction(+ : a0, a1, a2)
  for (int64_t j = 0; j < W; ++j) {
    const T p = pk[j] * wk[j];
    out[j] = p;
    a0 += p;
    a1 += p * xs[j];
    a2 += p * xs[j] * xs[j];
  }
  s0 = a0;
  s1 = a1;
  s2 = a2;
}

// Partial moments of one tile of rows of image b, added into acc (parts x 4). With
// `probs`, the tile's channel softmax (every channel, background included) is also
// stored there, laid out like one image of z: the fused concentration loss reads it back
// while it is still in cache instead of computing the exponentials again.
template <typename T>
struct TileMoments {
  std::vector<T> e, mx, weight, xs, sink;
  TileMoments(int64_t channels, int64_t W)
      : e(channels * W), mx(W), weight(W, T(1)), xs(W), sink(W) {
    for (int64_t j = 0; j < W; ++j) xs[j] = T(loss_coord(j, W));
  }
  void run(const T* z, int64_t b, int64_t tile, int64_t channels, int64_t H, int64_t W,
           bool from_logits, T* probs, double* acc) {
    const int64_t parts = from_logits ? channels - 1 : channels;
    const int64_t plane = H * W, rpt = rows_per_tile(W);
    for (int64_t i = tile * rpt; i < std::min(H, (tile + 1) * rpt); ++i) {
      const int64_t row = b * channels * plane + i * W;
      const T* zrow = z + row;
      // Part k's row: softmax numerators times `weight` (1 / partition), or the given
      // probabilities times 1.
      if (from_logits) row_exp(zrow, plane, channels, W, e.data(), mx.data(), weight.data());
      const double y = loss_coord(i, H);
      if (probs != nullptr) {
        const T* wk = weight.data();
        T* p0 = probs + i * W;
#pragma omp simd
        for (int64_t j = 0; j < W; ++j) p0[j] = e[j] * wk[j];
      }
      for (int64_t k = 0; k < parts; ++k) {
        const T* pk = from_logits ? e.data() + (k + 1) * W : zrow + k * plane;
        T s0 = 0, s1 = 0, s2 = 0;
        T* out = probs != nullptr ? probs + (k + 1) * plane + i * W : sink.data();
        row_sums(pk, weight.data(), xs.data(), W, out, s0, s1, s2);
        acc[k * 4 + 0] += s0;
        acc[k * 4 + 1] += s1;
        acc[k * 4 + 2] += y * s0;
        acc[k * 4 + 3] += s2 + y * y * s0;
      }
    }
  }
};

// Moments of images [b0, b1) from their tiles' partial sums (indexed from image b0), added
// in tile order so that the result does not depend on the number of threads. The eps mass
// is the same for every part: it is added in closed form.
void sum_tiles(const double* partial, int64_t b0, int64_t b1, int64_t parts, int64_t H,
               int64_t W, double* out) {
  const int64_t tiles = tiles_per_image(H, W);
  double eps_terms[4];
  eps_moment_terms(H, W, eps_terms);
  for (int64_t b = b0; b < b1; ++b)
    for (int64_t k = 0; k < parts; ++k)
      for (int m = 0; m < 4; ++m) {
        double total = 0;
        for (int64_t tile = 0; tile < tiles; ++tile)
          total += partial[(((b - b0) * tiles + tile) * parts + k) * 4 + m];
        out[(b * parts + k) * 4 + m] = total + eps_terms[m];
      }
}

// Part k's moment gradients g = d/d(1, x, y, x^2 + y^2) on the row at height y, as the
// polynomial G(x) = g0 + g1 x + g3 x^2, in the precision S it is evaluated in.
template <typename S>
struct RowGradient {
  S g0 = 0, g1 = 0, g3 = 0;
  RowGradient() = default;
  RowGradient(const double* g, S y)
      : g0(S(g[0]) + S(g[2]) * y + S(g[3]) * y * y), g1(S(g[1])), g3(S(g[3])) {}
  S at(S x) const { return g0 + g1 * x + g3 * x * x; }
};

// dz_c = p_c (G_c - sum_k p_k G_k), G_0 = 0 for the background, on pixels [j0, j0 + n) of
// one row, from the softmax p (channel c at p + c * p_stride) to out (at out + c *
// out_stride, which may be p itself: each pixel is read whole before it is written).
// G[k] holds part k's polynomial on this row. n <= kGradientBlock: the dot product stays in
// registers while the parts are added into it, and the block's softmax in L1 for the
// second loop.
constexpr int64_t kGradientBlock = 64;

// n values from vals to dst. With `stream`, a whole 64-byte-aligned block of floats goes
// around the cache: a gradient larger than the cache is not read again soon, and a
// streaming store does not first read the line it overwrites. (Callers end their stores
// with finish_streaming.)
template <typename T>
[[gnu::always_inline]] inline void put_block(T* dst, const T* vals, int64_t n, bool stream) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>) {
    if (stream && n == kGradientBlock && (reinterpret_cast<uintptr_t>(dst) & 63) == 0) {
      for (int64_t j = 0; j < kGradientBlock; j += 16)
        _mm512_stream_ps(dst + j, _mm512_loadu_ps(vals + j));
      return;
    }
  }
#endif
  std::copy(vals, vals + n, dst);
}

inline void finish_streaming() {
#if defined(__AVX512F__)
  _mm_sfence();  // streaming stores are weakly ordered: publish them before the join
#endif
}

template <typename T>
[[gnu::always_inline]] inline void softmax_moment_gradient_block(
    const T* p, int64_t p_stride, int64_t parts, const RowGradient<T>* G, const T* xs,
    int64_t j0, int64_t n, T* out, int64_t out_stride, bool stream) {
  T dot[kGradientBlock] = {};
  alignas(64) T vals[kGradientBlock];
  for (int64_t k = 0; k < parts; ++k) {
    const RowGradient<T> Gk = G[k];
    const T* pk = p + (k + 1) * p_stride + j0;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) dot[j] += pk[j] * Gk.at(xs[j0 + j]);
  }
  const T* p0 = p + j0;
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) vals[j] = -p0[j] * dot[j];
  put_block(out + j0, vals, n, stream);
  for (int64_t k = 0; k < parts; ++k) {
    const RowGradient<T> Gk = G[k];
    const T* pk = p + (k + 1) * p_stride + j0;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) vals[j] = pk[j] * (Gk.at(xs[j0 + j]) - dot[j]);
    put_block(out + (k + 1) * out_stride + j0, vals, n, stream);
  }
}

// One row of the gradient above, part k's polynomial from g[4 k ...]; G: scratch of parts.
template <typename T>
void softmax_moment_gradient_row(const T* p, int64_t p_stride, int64_t parts, const double* g,
                                 T y, const T* xs, int64_t W, RowGradient<T>* G, T* out,
                                 int64_t out_stride, bool stream) {
  for (int64_t k = 0; k < parts; ++k) G[k] = RowGradient<T>(g + k * 4, y);
  int64_t j0 = 0;
  for (; j0 + kGradientBlock <= W; j0 += kGradientBlock)
    softmax_moment_gradient_block(p, p_stride, parts, G, xs, j0, kGradientBlock, out, out_stride,
                                  stream);
  if (j0 < W)
    softmax_moment_gradient_block(p, p_stride, parts, G, xs, j0, W - j0, out, out_stride, stream);
}

}  // namespace

template <typename T>
void moments_forward(const T* z, int64_t B, int64_t channels, int64_t H, int64_t W,
                     bool from_logits, double* out, ParallelFor pf) {
  const int64_t parts = from_logits ? channels - 1 : channels;
  const int64_t tiles = tiles_per_image(H, W);
  std::vector<double> partial(B * tiles * parts * 4, 0.0);
  pf(B * tiles, [&](int64_t begin, int64_t end) {
    TileMoments<T> tile(channels, W);
    for (int64_t task = begin; task < end; ++task)
      tile.run(z, task / tiles, task % tiles, channels, H, W, from_logits, nullptr,
               partial.data() + task * parts * 4);
  });
  sum_tiles(partial.data(), 0, B, parts, H, W, out);
}

template <typename T>
void moments_backward(const T* z, const double* grad_moments, int64_t B, int64_t channels,
                      int64_t H, int64_t W, bool from_logits, T* grad, ParallelFor pf) {
  const int64_t parts = from_logits ? channels - 1 : channels;
  const int64_t plane = H * W;
  const bool stream = B * channels * plane * int64_t(sizeof(T)) >= kStreamBytes;
  pf(B * H, [&](int64_t begin, int64_t end) {
    std::vector<T> e(channels * W), mx(W), inv(W), xs(W);
    std::vector<RowGradient<T>> G(parts);
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
      row_softmax(z + row, plane, channels, W, e.data(), static_cast<T*>(nullptr), mx.data(),
                  inv.data());
      softmax_moment_gradient_row(e.data(), W, parts, g, y, xs.data(), W, G.data(), grad + row,
                                  plane, stream);
    }
    finish_streaming();
  });
}

namespace {

void serial_for(int64_t n, const RangeFn& body) {
  if (n > 0) body(0, n);
}

// The fused loss's work on image b: its moments, then (with grad) the gradient
// coefficients and the gradient rows, each stage spread over pf. The image's softmax goes
// to `scratch` when given, and the gradient is then streamed out; otherwise the softmax is
// stored in the gradient's place and overwritten by it.
template <typename T>
void concentration_image(const T* z, int64_t b, int64_t B, int64_t channels, int64_t H,
                         int64_t W, double* moments, T* grad, T* scratch, ParallelFor pf) {
  const int64_t parts = channels - 1, tiles = tiles_per_image(H, W), plane = H * W;
  T* out = grad == nullptr ? nullptr : grad + b * channels * plane;
  T* probs = scratch != nullptr ? scratch : out;
  std::vector<double> partial(tiles * parts * 4, 0.0);
  pf(tiles, [&](int64_t begin, int64_t end) {
    TileMoments<T> tile(channels, W);
    for (int64_t t = begin; t < end; ++t)
      tile.run(z, b, t, channels, H, W, true, probs, partial.data() + t * parts * 4);
  });
  sum_tiles(partial.data(), b, b + 1, parts, H, W, moments);
  if (grad == nullptr) return;
  // d/d(moments) of scale * (m3 / m0 - c_x^2 - c_y^2), c = (m1, m2) / m0.
  const double scale = 1.0 / (double(B) * double(B));
  std::vector<double> g(parts * 4);
  for (int64_t k = 0; k < parts; ++k) {
    const double* m = moments + (b * parts + k) * 4;
    const double cx = m[1] / m[0], cy = m[2] / m[0];
    g[k * 4 + 0] = scale * (2.0 * (cx * cx + cy * cy) - m[3] / m[0]) / m[0];
    g[k * 4 + 1] = scale * -2.0 * cx / m[0];
    g[k * 4 + 2] = scale * -2.0 * cy / m[0];
    g[k * 4 + 3] = scale / m[0];
  }
  pf(H, [&](int64_t begin, int64_t end) {
    std::vector<T> xs(W);
    std::vector<RowGradient<T>> G(parts);
    for (int64_t j = 0; j < W; ++j) xs[j] = T(loss_coord(j, W));
    for (int64_t i = begin; i < end; ++i)
      softmax_moment_gradient_row(probs + i * W, plane, parts, g.data(), T(loss_coord(i, H)),
                                  xs.data(), W, G.data(), out + i * W, plane, scratch != nullptr);
    finish_streaming();
  });
}

// How concentration_fused splits its work. One image is the unit: its softmax, stored
// by the first pass, is read back from cache by the second pass, which writes the
// gradient. A gradient larger than the cache goes around it (streaming stores: no read of
// the lines it overwrites), with each image's softmax in a scratch image instead; a
// smaller one overwrites the softmax in place. When the images share out evenly, each
// worker takes whole images, so one thread's memory-bound pass overlaps another's
// arithmetic; otherwise the threads share each image in turn. Either way every sum is
// formed in the same order, so the results do not depend on the plan.
struct FusedPlan {
  bool whole_images, stream;
  int64_t workers, image, slots;
  FusedPlan(int64_t B, int64_t channels, int64_t H, int64_t W, int64_t itemsize,
            int64_t workers_, bool with_grad)
      : workers(std::max<int64_t>(workers_, 1)), image(channels * H * W) {
    whole_images = B % workers == 0 || B >= 4 * workers;
    stream = with_grad && B * image * itemsize >= kStreamBytes;
    slots = !stream ? 0 : whole_images ? std::min(B, workers) : 1;
  }
};

}  // namespace

int64_t concentration_scratch_elems(int64_t B, int64_t channels, int64_t H, int64_t W,
                                    int64_t itemsize, int64_t workers, bool with_grad) {
  const FusedPlan plan(B, channels, H, W, itemsize, workers, with_grad);
  return plan.slots * plan.image;
}

template <typename T>
double concentration_fused(const T* z, int64_t B, int64_t channels, int64_t H, int64_t W,
                           double* moments, T* grad, T* scratch, ParallelFor pf,
                           int64_t workers) {
  const FusedPlan plan(B, channels, H, W, sizeof(T), workers, grad != nullptr);
  if (plan.whole_images) {
    const int64_t used = std::min(B, plan.workers);
    pf(used, [&](int64_t begin, int64_t end) {
      for (int64_t w = begin; w < end; ++w)
        for (int64_t b = B * w / used; b < B * (w + 1) / used; ++b)
          concentration_image(z, b, B, channels, H, W, moments, grad,
                              plan.slots > 0 ? scratch + w * plan.image : nullptr, serial_for);
    });
  } else {
    for (int64_t b = 0; b < B; ++b)
      concentration_image(z, b, B, channels, H, W, moments, grad,
                          plan.slots > 0 ? scratch : nullptr, pf);
  }
  const int64_t parts = channels - 1;
  double loss = 0;
  for (int64_t bk = 0; bk < B * parts; ++bk) {
    const double* m = moments + bk * 4;
    const double cx = m[1] / m[0], cy = m[2] / m[0];
    loss += m[3] / m[0] - (cx * cx + cy * cy);
  }
  return loss / (double(B) * double(B));
}

template void moments_forward<float>(const float*, int64_t, int64_t, int64_t, int64_t, bool,
                                     double*, ParallelFor);
template void moments_forward<double>(const double*, int64_t, int64_t, int64_t, int64_t, bool,
                                      double*, ParallelFor);
template void moments_backward<float>(const float*, const double*, int64_t, int64_t, int64_t,
                                      int64_t, bool, float*, ParallelFor);
template void moments_backward<double>(const double*, const double*, int64_t, int64_t, int64_t,
                                       int64_t, bool, double*, ParallelFor);
template double concentration_fused<float>(const float*, int64_t, int64_t, int64_t, int64_t,
                                           double*, float*, float*, ParallelFor, int64_t);
template double concentration_fused<double>(const double*, int64_t, int64_t, int64_t, int64_t,
                                            double*, double*, double*, ParallelFor, int64_t);

namespace {

at::Tensor softmax_moments_op(const at::Tensor& x_, bool from_logits) {
  const auto x = x_.contiguous();
  const int64_t B = x.size(0), channels = x.size(1), H = x.size(2), W = x.size(3);
  auto out = at::empty({B, from_logits ? channels - 1 : channels, 4}, x.options().dtype(at::kDouble));
  SF_DISPATCH(x.scalar_type(), [&] {
    moments_forward<scalar_t>(x.data_ptr<scalar_t>(), B, channels, H, W, from_logits,
                              out.data_ptr<double>(), aten_parallel);
  });
  return out;
}

at::Tensor softmax_moments_backward_op(const at::Tensor& x_, const at::Tensor& grad_moments,
                                    bool from_logits) {
  const auto x = x_.contiguous();
  const auto g = f64(grad_moments);
  auto grad = empty_output_like(x);
  SF_DISPATCH(x.scalar_type(), [&] {
    moments_backward<scalar_t>(x.data_ptr<scalar_t>(), g.data_ptr<double>(), x.size(0),
                               x.size(1), x.size(2), x.size(3), from_logits,
                               grad.data_ptr<scalar_t>(), aten_parallel);
  });
  return grad;
}

// The concentration loss in one op: (loss, moments, gradient for a unit upstream
// gradient, or an empty tensor without with_grad). The gradient is produced here, not in a
// backward op, because the forward has the softmax in cache; autograd only scales it.
std::tuple<at::Tensor, at::Tensor, at::Tensor> concentration_op(const at::Tensor& x_,
                                                                bool with_grad) {
  const auto x = x_.contiguous();
  const int64_t B = x.size(0), channels = x.size(1), H = x.size(2), W = x.size(3);
  auto moments = at::empty({B, channels - 1, 4}, x.options().dtype(at::kDouble));
  auto grad = with_grad ? empty_output_like(x) : at::empty({0}, x.options());
  const int64_t workers = at::get_num_threads();
  const auto scratch = scratch_buffer(
      concentration_scratch_elems(B, channels, H, W, x.element_size(), workers, with_grad),
      x.options());
  double loss = 0;
  SF_DISPATCH(x.scalar_type(), [&] {
    loss = concentration_fused<scalar_t>(
        x.data_ptr<scalar_t>(), B, channels, H, W, moments.data_ptr<double>(),
        with_grad ? grad.data_ptr<scalar_t>() : nullptr,
        scratch.defined() ? scratch.data_ptr<scalar_t>() : nullptr, aten_parallel, workers);
  });
  return {at::scalar_tensor(loss, x.options().dtype(at::kDouble)), moments, grad};
}

}  // namespace

// The family's ops: schemas (scops_fast.ops.<family> registers their fake and autograd
// rules; the CUDA library adds CUDA kernels for the same schemas) and CPU kernels.
TORCH_LIBRARY_FRAGMENT(scops_fast, m) {
  m.def("softmax_moments(Tensor x, bool from_logits) -> Tensor");
  m.def("softmax_moments_backward(Tensor x, Tensor grad_moments, bool from_logits) -> Tensor");
  m.def("concentration(Tensor x, bool with_grad) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(scops_fast, CPU, m) {
  m.impl("softmax_moments", &softmax_moments_op);
  m.impl("softmax_moments_backward", &softmax_moments_backward_op);
  m.impl("concentration", &concentration_op);
}

}  // namespace scops_fast
