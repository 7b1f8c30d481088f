// Semantic consistency (SPEC section 4) without the (B, C, H, W) residual.
//
// Dense: pixels are processed in tiles; for each channel the residual of the tile is
// formed in registers, squared into the loss and, in the same pass, folded into the
// gradients of P and W, so V is read exactly once for forward and backward together.
//
// Low resolution: with U the bilinear upsampling and S the saliency,
//   sum_c (P W - S U V)_c^2 = P^T G P - 2 S P . U(A) + S^2 |U V|^2,
// G = W W^T, A = W V at low resolution, and |U V|^2 a quadratic form of the four
// low-resolution neighbours whose Gram entries arrive precomputed. The full-resolution
// pass then touches K-vectors only.
//
// Both split work into a fixed number of chunks whose partial sums are added in order,
// so results do not depend on the thread count.
#include <algorithm>
#include <vector>

#include "row_softmax.h"
#include "semantic_lowres_inputs.h"
#include "torch_glue.h"

namespace scops_fast {
namespace {

constexpr int64_t kDenseTile = 256;
constexpr int64_t kMaxChunks = 64;

// Upsampling source row/column of each output index (align_corners=True).
struct Axis {
  std::vector<int64_t> lo, hi;
  std::vector<double> frac;
  Axis(int64_t out, int64_t in) : lo(out), hi(out), frac(out) {
    for (int64_t o = 0; o < out; ++o) {
      const double src = out > 1 ? double(o) * double(in - 1) / double(out - 1) : 0.0;
      lo[o] = std::min<int64_t>(int64_t(src), in - 1);
      hi[o] = std::min<int64_t>(lo[o] + 1, in - 1);
      frac[o] = src - double(lo[o]);
    }
  }
};

// dz_c = p_c (g_c - sum_k p_k g_k) with g_0 = 0 (background), one tile of n pixels;
// probs (K1 x n), gparts (K x n), out strided by `stride` per channel.
template <typename T>
void softmax_backward_parts(const T* probs, const T* gparts, int64_t K1, int64_t n,
                            int64_t stride, T* out) {
  for (int64_t t = 0; t < n; ++t) {
    T dot = 0;
    for (int64_t k = 1; k < K1; ++k) dot += probs[k * n + t] * gparts[(k - 1) * n + t];
    out[t] = -probs[t] * dot;
    for (int64_t k = 1; k < K1; ++k)
      out[k * stride + t] = probs[k * n + t] * (gparts[(k - 1) * n + t] - dot);
  }
}

}  // namespace

template <typename T>
double semantic_dense(const T* features, const T* pred, const T* basis, int64_t B, int64_t C,
                      int64_t K1, int64_t H, int64_t W, bool grads, T* grad_pred,
                      double* grad_basis, ParallelFor pf) {
  const int64_t K = K1 - 1, plane = H * W;
  const int64_t tiles_per_image = (plane + kDenseTile - 1) / kDenseTile;
  const int64_t tiles = B * tiles_per_image;
  const int64_t chunks = std::min(kMaxChunks, tiles);
  std::vector<double> loss(chunks, 0.0);
  std::vector<double> gbasis(grads ? chunks * K * C : 0, 0.0);
  pf(chunks, [&](int64_t begin, int64_t end) {
    std::vector<T> probs(K1 * kDenseTile), gparts(K * kDenseTile), r(kDenseTile),
        mx(kDenseTile), sum(kDenseTile);
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      double* gb = grads ? gbasis.data() + chunk * K * C : nullptr;
      for (int64_t tile = chunk * tiles / chunks; tile < (chunk + 1) * tiles / chunks; ++tile) {
        const int64_t b = tile / tiles_per_image;
        const int64_t p0 = (tile % tiles_per_image) * kDenseTile;
        const int64_t n = std::min(kDenseTile, plane - p0);
        row_softmax(pred + b * K1 * plane + p0, plane, K1, n, probs.data(),
                    static_cast<T*>(nullptr), mx.data(), sum.data());
        std::fill(gparts.begin(), gparts.end(), T(0));
        double tile_loss = 0;
        for (int64_t c = 0; c < C; ++c) {
          const T* v = features + (b * C + c) * plane + p0;
#pragma omp simd
          for (int64_t t = 0; t < n; ++t) r[t] = -v[t];
          for (int64_t k = 0; k < K; ++k) {
            const T wkc = basis[k * C + c];
            const T* pk = probs.data() + (k + 1) * n;
#pragma omp simd
            for (int64_t t = 0; t < n; ++t) r[t] += wkc * pk[t];
          }
          T sq = 0;
#pragma omp simd reduction(+ : sq)
          for (int64_t t = 0; t < n; ++t) sq += r[t] * r[t];
          tile_loss += sq;
          if (!grads) continue;
          for (int64_t k = 0; k < K; ++k) {
            const T wkc2 = T(2) * basis[k * C + c];
            const T* pk = probs.data() + (k + 1) * n;
            T* gk = gparts.data() + k * n;
            T dot = 0;
#pragma omp simd reduction(+ : dot)
            for (int64_t t = 0; t < n; ++t) {
              gk[t] += wkc2 * r[t];
              dot += pk[t] * r[t];
            }
            gb[k * C + c] += 2.0 * double(dot);
          }
        }
        loss[chunk] += tile_loss;
        if (grads)
          softmax_backward_parts(probs.data(), gparts.data(), K1, n, plane,
                                 grad_pred + b * K1 * plane + p0);
      }
    }
  });
  double total = 0;
  for (int64_t chunk = 0; chunk < chunks; ++chunk) total += loss[chunk];
  if (grads)
    for (int64_t e = 0; e < K * C; ++e) {
      double s = 0;
      for (int64_t chunk = 0; chunk < chunks; ++chunk) s += gbasis[chunk * K * C + e];
      grad_basis[e] = s;
    }
  return total;
}

template <typename T>
double semantic_lowres(const T* pred, const T* lowres, const T* gram_basis, const T* gram,
                       const T* saliency, int64_t B, int64_t K1, int64_t H, int64_t W,
                       int64_t h, int64_t w, bool grads, T* grad_pred, double* grad_lowres,
                       double* grad_gram_basis, ParallelFor pf) {
  const int64_t K = K1 - 1, plane = H * W, low = h * w;
  const int64_t bands = std::min<int64_t>(H, 16);  // row bands per image: fixed, not per thread
  const int64_t tasks = B * bands;
  const Axis rows(H, h), cols(W, w);
  std::vector<double> loss(tasks, 0.0);
  std::vector<double> g_low(grads ? tasks * K * low : 0, 0.0);
  std::vector<double> g_gram(grads ? tasks * K * K : 0, 0.0);
  // Whole rows at a time, structure of arrays, so every per-pixel loop runs along j.
  pf(tasks, [&](int64_t begin, int64_t end) {
    std::vector<T> probs(K1 * W), mx(W), sum(W), gparts(K * W), ones(W, T(1));
    std::vector<double> ua(K * W), gp(K * W), quad(W), cross(W), vv(W), m0(w), m1(w);
    std::vector<double> fx(W);
    for (int64_t j = 0; j < W; ++j) fx[j] = cols.frac[j];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / bands, band = task % bands;
      const T* a = lowres + b * K * low;
      const T* d = gram + b * 5 * low;
      double* ga = grads ? g_low.data() + task * K * low : nullptr;
      double* gg = grads ? g_gram.data() + task * K * K : nullptr;
      double acc = 0;
      for (int64_t i = band * H / bands; i < (band + 1) * H / bands; ++i) {
        row_softmax(pred + b * K1 * plane + i * W, plane, K1, W, probs.data(),
                    static_cast<T*>(nullptr), mx.data(), sum.data());
        const T* p = probs.data() + W;  // parts only: p[k * W + j]
        const T* s = saliency ? saliency + b * plane + i * W : ones.data();
        const int64_t y0 = rows.lo[i], y1 = rows.hi[i];
        const double fy = rows.frac[i];
        const int64_t* x0 = cols.lo.data();
        const int64_t* x1 = cols.hi.data();
        // U(A)_k and |U V|^2 along the row.
        for (int64_t k = 0; k < K; ++k) {
          const T* r0 = a + k * low + y0 * w;
          const T* r1 = a + k * low + y1 * w;
          double* u = ua.data() + k * W;
#pragma omp simd
          for (int64_t j = 0; j < W; ++j)
            u[j] = (1 - fy) * ((1 - fx[j]) * r0[x0[j]] + fx[j] * r0[x1[j]]) +
                   fy * ((1 - fx[j]) * r1[x0[j]] + fx[j] * r1[x1[j]]);
        }
        {
          const T* d0 = d;
          const T *d1 = d + low, *d2 = d + 2 * low, *d3 = d + 3 * low, *d4 = d + 4 * low;
          const int64_t t0 = y0 * w, t1 = y1 * w;
#pragma omp simd
          for (int64_t j = 0; j < W; ++j) {
            const double w00 = (1 - fy) * (1 - fx[j]), w01 = (1 - fy) * fx[j];
            const double w10 = fy * (1 - fx[j]), w11 = fy * fx[j];
            const int64_t o00 = t0 + x0[j], o01 = t0 + x1[j], o10 = t1 + x0[j],
                          o11 = t1 + x1[j];
            vv[j] = w00 * w00 * d0[o00] + w01 * w01 * d0[o01] + w10 * w10 * d0[o10] +
                    w11 * w11 * d0[o11] +
                    2.0 * (w00 * w01 * d1[o00] + w10 * w11 * d1[o10] + w00 * w10 * d2[o00] +
                           w01 * w11 * d2[o01] + w00 * w11 * d3[o00] + w01 * w10 * d4[o00]);
          }
        }
        // (G P)_k along the row, then the quadratic and cross terms.
        std::fill(quad.begin(), quad.end(), 0.0);
        std::fill(cross.begin(), cross.end(), 0.0);
        for (int64_t k = 0; k < K; ++k) {
          double* g = gp.data() + k * W;
          std::fill(g, g + W, 0.0);
          for (int64_t l = 0; l < K; ++l) {
            const double gkl = double(gram_basis[k * K + l]);
            const T* pl = p + l * W;
#pragma omp simd
            for (int64_t j = 0; j < W; ++j) g[j] += gkl * pl[j];
          }
          const T* pk = p + k * W;
          const double* u = ua.data() + k * W;
#pragma omp simd
          for (int64_t j = 0; j < W; ++j) {
            quad[j] += pk[j] * g[j];
            cross[j] += pk[j] * u[j];
          }
        }
        double row_loss = 0;
#pragma omp simd reduction(+ : row_loss)
        for (int64_t j = 0; j < W; ++j)
          row_loss += quad[j] - 2.0 * s[j] * cross[j] + double(s[j]) * s[j] * vv[j];
        acc += row_loss;
        if (!grads) continue;
        for (int64_t k = 0; k < K; ++k) {
          // d/dP_k = ((G + G^T) P)_k - 2 S U(A)_k.
          T* out = gparts.data() + k * W;
          const double* g = gp.data() + k * W;
          const double* u = ua.data() + k * W;
#pragma omp simd
          for (int64_t j = 0; j < W; ++j) out[j] = T(g[j] - 2.0 * s[j] * u[j]);
          for (int64_t l = 0; l < K; ++l) {
            const double glk = double(gram_basis[l * K + k]);
            const T* pl = p + l * W;
#pragma omp simd
            for (int64_t j = 0; j < W; ++j) out[j] += T(glk * pl[j]);
            // d/dG_kl = sum over pixels of P_k P_l.
            const T* pk = p + k * W;
            double dot = 0;
#pragma omp simd reduction(+ : dot)
            for (int64_t j = 0; j < W; ++j) dot += double(pk[j]) * pl[j];
            gg[k * K + l] += dot;
          }
          // d/dA_k: the adjoint of the upsampling of -2 S P_k, first along the row into
          // the two low-resolution rows it reads, then into the map.
          std::fill(m0.begin(), m0.end(), 0.0);
          const T* pk = p + k * W;
          for (int64_t j = 0; j < W; ++j) {
            const double m = -2.0 * s[j] * pk[j];
            m0[x0[j]] += m * (1 - fx[j]);
            m0[x1[j]] += m * fx[j];
          }
          double* g0 = ga + k * low + y0 * w;
          double* g1 = ga + k * low + y1 * w;
          for (int64_t x = 0; x < w; ++x) {
            g0[x] += (1 - fy) * m0[x];
            g1[x] += fy * m0[x];
          }
        }
        softmax_backward_parts(probs.data(), gparts.data(), K1, W, plane,
                               grad_pred + b * K1 * plane + i * W);
      }
      loss[task] = acc;
    }
  });
  double total = 0;
  for (int64_t task = 0; task < tasks; ++task) total += loss[task];
  if (grads) {
    for (int64_t b = 0; b < B; ++b)
      for (int64_t e = 0; e < K * low; ++e) {
        double s = 0;
        for (int64_t band = 0; band < bands; ++band) s += g_low[(b * bands + band) * K * low + e];
        grad_lowres[b * K * low + e] = s;
      }
    for (int64_t e = 0; e < K * K; ++e) {
      double s = 0;
      for (int64_t task = 0; task < tasks; ++task) s += g_gram[task * K * K + e];
      grad_gram_basis[e] = s;
    }
  }
  return total;
}

template double semantic_dense<float>(const float*, const float*, const float*, int64_t, int64_t,
                                      int64_t, int64_t, int64_t, bool, float*, double*,
                                      ParallelFor);
template double semantic_dense<double>(const double*, const double*, const double*, int64_t,
                                       int64_t, int64_t, int64_t, int64_t, bool, double*,
                                       double*, ParallelFor);
template double semantic_lowres<float>(const float*, const float*, const float*, const float*,
                                       const float*, int64_t, int64_t, int64_t, int64_t, int64_t,
                                       int64_t, bool, float*, double*, double*, ParallelFor);
template double semantic_lowres<double>(const double*, const double*, const double*,
                                        const double*, const double*, int64_t, int64_t, int64_t,
                                        int64_t, int64_t, int64_t, bool, double*, double*,
                                        double*, ParallelFor);

namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> semantic_dense_op(const at::Tensor& features_,
                                                                 const at::Tensor& pred_,
                                                                 const at::Tensor& basis_,
                                                                 bool grads) {
  const auto pred = pred_.contiguous();
  const auto features = features_.to(pred.scalar_type()).contiguous();
  const auto basis = basis_.to(pred.scalar_type()).contiguous();
  const int64_t B = pred.size(0), K1 = pred.size(1), H = pred.size(2), W = pred.size(3);
  const int64_t C = features.size(1);
  auto grad_pred = grads ? empty_output_like(pred) : at::empty({0}, pred.options());
  auto grad_basis = at::zeros({grads ? K1 - 1 : 0, C}, pred.options().dtype(at::kDouble));
  double loss = 0;
  SF_DISPATCH(pred.scalar_type(), [&] {
    loss = semantic_dense<scalar_t>(features.data_ptr<scalar_t>(), pred.data_ptr<scalar_t>(),
                                    basis.data_ptr<scalar_t>(), B, C, K1, H, W, grads,
                                    grads ? grad_pred.data_ptr<scalar_t>() : nullptr,
                                    grads ? grad_basis.data_ptr<double>() : nullptr,
                                    aten_parallel);
  });
  return {at::scalar_tensor(loss, pred.options().dtype(at::kDouble)), grad_pred,
          grad_basis.to(pred.scalar_type())};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> semantic_lowres_op(
    const at::Tensor& pred_, const at::Tensor& lowres_, const at::Tensor& gram_basis_,
    const at::Tensor& gram_, const std::optional<at::Tensor>& saliency_, bool grads) {
  const auto [pred, lowres, gram_basis, gram, saliency] =
      semantic_lowres_inputs(pred_, lowres_, gram_basis_, gram_, saliency_);
  const auto dtype = pred.scalar_type();
  const int64_t B = pred.size(0), K1 = pred.size(1), H = pred.size(2), W = pred.size(3);
  const int64_t h = lowres.size(2), w = lowres.size(3);
  const auto f64opts = pred.options().dtype(at::kDouble);
  auto grad_pred = grads ? empty_output_like(pred) : at::empty({0}, pred.options());
  auto grad_lowres = at::zeros(grads ? at::IntArrayRef{B, K1 - 1, h, w} : at::IntArrayRef{0},
                               f64opts);
  auto grad_gram = at::zeros(grads ? at::IntArrayRef{K1 - 1, K1 - 1} : at::IntArrayRef{0},
                             f64opts);
  double loss = 0;
  SF_DISPATCH(dtype, [&] {
    loss = semantic_lowres<scalar_t>(
        pred.data_ptr<scalar_t>(), lowres.data_ptr<scalar_t>(), gram_basis.data_ptr<scalar_t>(),
        gram.data_ptr<scalar_t>(), saliency.defined() ? saliency.data_ptr<scalar_t>() : nullptr,
        B, K1, H, W, h, w, grads, grads ? grad_pred.data_ptr<scalar_t>() : nullptr,
        grads ? grad_lowres.data_ptr<double>() : nullptr,
        grads ? grad_gram.data_ptr<double>() : nullptr, aten_parallel);
  });
  return {at::scalar_tensor(loss, f64opts), grad_pred, grad_lowres.to(dtype),
          grad_gram.to(dtype)};
}

}  // namespace

// The family's ops: schemas (scops_fast.ops.<family> registers their fake and autograd
// rules; the CUDA library adds CUDA kernels for the same schemas) and CPU kernels.
TORCH_LIBRARY_FRAGMENT(scops_fast, m) {
  m.def(
      "semantic_dense(Tensor features, Tensor pred, Tensor basis, bool grads)"
      " -> (Tensor, Tensor, Tensor)");
  m.def(
      "semantic_lowres(Tensor pred, Tensor lowres, Tensor gram_basis, Tensor gram, "
      "Tensor? saliency, bool grads) -> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(scops_fast, CPU, m) {
  m.impl("semantic_dense", &semantic_dense_op);
  m.impl("semantic_lowres", &semantic_lowres_op);
}

}  // namespace scops_fast
