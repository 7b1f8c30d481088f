// Fused equivariance losses (SPEC section 7): the warp of pred, both channel
// softmaxes, the KL term and the part moments of both maps in one pass; the
// backward recomputes them and scatters the landmark gradient back through the warp.
#include <vector>

#include "row_samples.h"
#include "row_softmax.h"
#include "torch_glue.h"

namespace scops_fast {
namespace {

// Everything one output row of one batch element needs, in row buffers of W.
template <typename T>
struct RowState {
  RowSamples<T> samples;
  std::vector<T> warped, q, logzq, p, logzp, mx, sum;
  RowState(int64_t K1, int64_t W)
      : samples(W), warped(K1 * W), q(K1 * W), logzq(W), p(K1 * W), logzp(W), mx(W), sum(W) {}

  // with_logs: also the log-partitions (the KL needs them, its gradient does not).
  // saved: the warped logits kept by the forward, which spares the backward the gather.
  void compute(const T* pred, const T* saved, const T* pred_tps, const double* m,
               const T* radial, int64_t b, int64_t i, int64_t K1, int64_t H, int64_t W,
               bool border, bool with_logs) {
    const int64_t plane = H * W;
    samples.compute(m + b * kMapping * 2, radial, i, H, W, border);
    if (saved == nullptr) {
      samples.read_row(pred + b * K1 * plane, plane, K1, warped.data(), W);
    } else {
      for (int64_t c = 0; c < K1; ++c) {
        const T* src = saved + (b * K1 + c) * plane + i * W;
        std::copy(src, src + W, warped.data() + c * W);
      }
    }
    row_softmax(warped.data(), W, K1, W, q.data(), with_logs ? logzq.data() : nullptr, mx.data(),
                sum.data());
    row_softmax(pred_tps + b * K1 * plane + i * W, plane, K1, W, p.data(),
                with_logs ? logzp.data() : nullptr, mx.data(), sum.data());
  }
};

}  // namespace

template <typename T>
void equivariance_forward(const T* pred, const T* pred_tps, const double* mapping,
                          const T* radial, int64_t B, int64_t K1, int64_t H, int64_t W,
                          bool border, double* kl, double* mom_tps, double* mom_warp,
                          T* warped_out, ParallelFor pf) {
  const int64_t K = K1 - 1, plane = H * W;
  // Per (row, batch) partials: kl, then K x 3 for each map; added in row order.
  const int64_t stride = 1 + 6 * K;
  std::vector<double> partial(H * B * stride, 0.0);
  pf(H, [&](int64_t begin, int64_t end) {
    RowState<T> row(K1, W);
    std::vector<T> xs(W);
    for (int64_t j = 0; j < W; ++j) xs[j] = T(loss_coord(j, W));
    for (int64_t i = begin; i < end; ++i) {
      const double y = loss_coord(i, H);
      for (int64_t b = 0; b < B; ++b) {
        row.compute(pred, nullptr, pred_tps, mapping, radial, b, i, K1, H, W, border, true);
        for (int64_t c = 0; c < K1; ++c)
          std::copy(row.warped.data() + c * W, row.warped.data() + (c + 1) * W,
                    warped_out + (b * K1 + c) * plane + i * W);
        const T* tps_row = pred_tps + b * K1 * plane + i * W;
        double* acc = partial.data() + (i * B + b) * stride;
        T klsum = 0;
        for (int64_t c = 0; c < K1; ++c) {
          const T* qc = row.q.data() + c * W;
          const T* wc = row.warped.data() + c * W;
          const T* zc = tps_row + c * plane;
#pragma omp simd reduction(+ : klsum)
          for (int64_t j = 0; j < W; ++j) {
            // KLDivLoss semantics: an underflowed target adds exactly 0.
            const T term = qc[j] * ((wc[j] - row.logzq[j]) - (zc[j] - row.logzp[j]));
            klsum += qc[j] > T(0) ? term : T(0);
          }
        }
        acc[0] += klsum;
        for (int64_t k = 0; k < K; ++k) {
          const T* pk = row.p.data() + (k + 1) * W;
          const T* qk = row.q.data() + (k + 1) * W;
          T p0 = 0, p1 = 0, q0 = 0, q1 = 0;
#pragma omp simd reduction(+ : p0, p1, q0, q1)
          for (int64_t j = 0; j < W; ++j) {
            p0 += pk[j];
            p1 += pk[j] * xs[j];
            q0 += qk[j];
            q1 += qk[j] * xs[j];
          }
          double* t = acc + 1 + 3 * k;
          double* w = acc + 1 + 3 * K + 3 * k;
          t[0] += p0, t[1] += p1, t[2] += y * p0;
          w[0] += q0, w[1] += q1, w[2] += y * q0;
        }
      }
    }
  });
  double eps[4];
  eps_moment_terms(H, W, eps);
  for (int64_t b = 0; b < B; ++b) {
    double total = 0;
    for (int64_t i = 0; i < H; ++i) total += partial[(i * B + b) * stride];
    kl[b] = total;
    for (int64_t k = 0; k < K; ++k)
      for (int m = 0; m < 3; ++m) {
        double t = 0, w = 0;
        for (int64_t i = 0; i < H; ++i) {
          t += partial[(i * B + b) * stride + 1 + 3 * k + m];
          w += partial[(i * B + b) * stride + 1 + 3 * K + 3 * k + m];
        }
        mom_tps[(b * K + k) * 3 + m] = t + eps[m];
        mom_warp[(b * K + k) * 3 + m] = w + eps[m];
      }
  }
}

template <typename T>
void equivariance_backward(const T* pred, const T* warped, const T* pred_tps,
                           const double* mapping, const T* radial, int64_t B, int64_t K1, int64_t H, int64_t W,
                           bool border, const double* g_kl, const double* g_tps,
                           const double* g_warp, T* grad_pred, T* grad_pred_tps,
                           ParallelFor pf) {
  const int64_t K = K1 - 1, plane = H * W;
  // One task per batch element: it owns grad_pred[b], into which the warp scatters.
  pf(B, [&](int64_t begin, int64_t end) {
    RowState<T> row(K1, W);
    std::vector<T> xs(W), sq(W), dotp(W), dotq(W), gp(K * W), gq(K * W), dwarp(K1 * W),
        zeros(W, T(0));
    for (int64_t j = 0; j < W; ++j) xs[j] = T(loss_coord(j, W));
    for (int64_t b = begin; b < end; ++b) {
      std::fill(grad_pred + b * K1 * plane, grad_pred + (b + 1) * K1 * plane, T(0));
      const T gkl = T(g_kl[b]);
      for (int64_t i = 0; i < H; ++i) {
        row.compute(pred, warped, pred_tps, mapping, radial, b, i, K1, H, W, border, false);
        const T y = T(loss_coord(i, H));
        std::fill(sq.begin(), sq.end(), T(0));
        std::fill(dotp.begin(), dotp.end(), T(0));
        std::fill(dotq.begin(), dotq.end(), T(0));
        for (int64_t c = 0; c < K1; ++c) {
          const T* qc = row.q.data() + c * W;
#pragma omp simd
          for (int64_t j = 0; j < W; ++j) sq[j] += qc[j] > T(0) ? qc[j] : T(0);
        }
        // Upstream gradient of each part's moments as a function of x: G = g0 + g1 x + g2 y.
        for (int64_t k = 0; k < K; ++k) {
          const double* t = g_tps + (b * K + k) * 3;
          const double* w = g_warp + (b * K + k) * 3;
          const T t0 = T(t[0]) + T(t[2]) * y, t1 = T(t[1]);
          const T w0 = T(w[0]) + T(w[2]) * y, w1 = T(w[1]);
          const T* pk = row.p.data() + (k + 1) * W;
          const T* qk = row.q.data() + (k + 1) * W;
#pragma omp simd
          for (int64_t j = 0; j < W; ++j) {
            gp[k * W + j] = t0 + t1 * xs[j];
            gq[k * W + j] = w0 + w1 * xs[j];
            dotp[j] += pk[j] * gp[k * W + j];
            dotq[j] += qk[j] * gq[k * W + j];
          }
        }
        for (int64_t c = 0; c < K1; ++c) {
          const T* pc = row.p.data() + c * W;
          const T* qc = row.q.data() + c * W;
          T* out = grad_pred_tps + (b * K1 + c) * plane + i * W;
          T* dw = dwarp.data() + c * W;
          // The background has no moment term: its upstream row is zeros.
          const T* gpc = c == 0 ? zeros.data() : gp.data() + (c - 1) * W;
          const T* gqc = c == 0 ? zeros.data() : gq.data() + (c - 1) * W;
#pragma omp simd
          for (int64_t j = 0; j < W; ++j) {
            const T qpos = qc[j] > T(0) ? qc[j] : T(0);
            out[j] = gkl * (pc[j] * sq[j] - qpos) + pc[j] * (gpc[j] - dotp[j]);
            dw[j] = qc[j] * (gqc[j] - dotq[j]);  // gradient w.r.t. the warped logit
          }
        }
        row.samples.scatter_row(grad_pred + b * K1 * plane, plane, K1, dwarp.data(), W);
      }
    }
  });
}

template void equivariance_forward<float>(const float*, const float*, const double*,
                                          const float*, int64_t, int64_t, int64_t, int64_t, bool,
                                          double*, double*, double*, float*, ParallelFor);
template void equivariance_forward<double>(const double*, const double*, const double*,
                                           const double*, int64_t, int64_t, int64_t, int64_t,
                                           bool, double*, double*, double*, double*,
                                           ParallelFor);
template void equivariance_backward<float>(const float*, const float*, const float*,
                                           const double*,
                                           const float*, int64_t, int64_t, int64_t, int64_t, bool,
                                           const double*, const double*, const double*, float*,
                                           float*, ParallelFor);
template void equivariance_backward<double>(const double*, const double*, const double*,
                                            const double*,
                                            const double*, int64_t, int64_t, int64_t, int64_t,
                                            bool, const double*, const double*, const double*,
                                            double*, double*, ParallelFor);

namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> equivariance_op(const at::Tensor& pred_,
                                                            const at::Tensor& pred_tps_,
                                                               const at::Tensor& mapping,
                                                               bool border) {
  const auto pred = pred_.contiguous();
  const auto pred_tps = pred_tps_.to(pred.scalar_type()).contiguous();
  const auto m = f64(mapping);
  const auto u = radial_table(pred.size(2), pred.size(3), pred.scalar_type());
  const int64_t B = pred.size(0), K1 = pred.size(1), H = pred.size(2), W = pred.size(3);
  const auto opts = pred.options().dtype(at::kDouble);
  auto kl = at::empty({B}, opts);
  auto mom_tps = at::empty({B, K1 - 1, 3}, opts);
  auto mom_warp = at::empty({B, K1 - 1, 3}, opts);
  auto warped = empty_output_like(pred);
  SF_DISPATCH(pred.scalar_type(), [&] {
    equivariance_forward<scalar_t>(pred.data_ptr<scalar_t>(), pred_tps.data_ptr<scalar_t>(),
                                   m.data_ptr<double>(), u.data_ptr<scalar_t>(), B, K1, H, W,
                                   border, kl.data_ptr<double>(), mom_tps.data_ptr<double>(),
                                   mom_warp.data_ptr<double>(), warped.data_ptr<scalar_t>(),
                                   aten_parallel);
  });
  return {kl, mom_tps, mom_warp, warped};
}

std::tuple<at::Tensor, at::Tensor> equivariance_backward_op(
    const at::Tensor& pred_, const at::Tensor& warped_, const at::Tensor& pred_tps_,
    const at::Tensor& mapping, bool border, const at::Tensor& g_kl, const at::Tensor& g_tps,
    const at::Tensor& g_warp) {
  const auto pred = pred_.contiguous();
  const auto warped = warped_.to(pred.scalar_type()).contiguous();
  const auto pred_tps = pred_tps_.to(pred.scalar_type()).contiguous();
  const auto m = f64(mapping);
  const auto u = radial_table(pred.size(2), pred.size(3), pred.scalar_type());
  const auto gk = f64(g_kl), gt = f64(g_tps), gw = f64(g_warp);
  auto grad_pred = empty_output_like(pred);
  auto grad_pred_tps = empty_output_like(pred_tps);
  SF_DISPATCH(pred.scalar_type(), [&] {
    equivariance_backward<scalar_t>(
        pred.data_ptr<scalar_t>(), warped.data_ptr<scalar_t>(), pred_tps.data_ptr<scalar_t>(),
        m.data_ptr<double>(), u.data_ptr<scalar_t>(), pred.size(0), pred.size(1), pred.size(2), pred.size(3), border,
        gk.data_ptr<double>(), gt.data_ptr<double>(), gw.data_ptr<double>(),
        grad_pred.data_ptr<scalar_t>(), grad_pred_tps.data_ptr<scalar_t>(), aten_parallel);
  });
  return {grad_pred, grad_pred_tps};
}

}  // namespace

// The family's ops: schemas (scops_fast.ops.<family> registers their fake and autograd
// rules; the CUDA library adds CUDA kernels for the same schemas) and CPU kernels.
TORCH_LIBRARY_FRAGMENT(scops_fast, m) {
  m.def(
      "equivariance(Tensor pred, Tensor pred_tps, Tensor mapping, bool border)"
      " -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "equivariance_backward(Tensor pred, Tensor warped, Tensor pred_tps, Tensor mapping, "
      "bool border, Tensor g_kl, Tensor g_tps, Tensor g_warp) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(scops_fast, CPU, m) {
  m.impl("equivariance", &equivariance_op);
  m.impl("equivariance_backward", &equivariance_backward_op);
}

}  // namespace scops_fast
