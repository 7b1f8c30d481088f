// Equivariance family on the GPU (SPEC section 7): one pass samples warp(pred), takes both
// channel softmaxes, the KL term and the part moments of both maps; the backward scatters
// the landmark term's gradient back through the warp in int64 fixed point.
#include <limits>

#include "fixed_point.h"
#include "spline_sample.h"

namespace scops_fast {
namespace cuda {
namespace {

template <typename T>
__global__ void equivariance_forward_kernel(const T* pred, const T* pred_tps,
                                            const double* mapping, int64_t K1, int64_t H,
                                            int64_t W, bool border, int64_t first_image,
                                            double* partial, T* warped) {
  __shared__ double shared[kThreads];
  const int64_t b = first_image + blockIdx.y, tile = blockIdx.x, tiles = gridDim.x;
  const int64_t plane = H * W;
  const int64_t pixel = tile * kThreads + threadIdx.x;
  const bool valid = pixel < plane;
  const int K = int(K1) - 1;
  const int64_t stride = 1 + 6 * int64_t(K);
  T w[kMaxChannels], q[kMaxChannels], p[kMaxChannels];
  double kl = 0, x = 0, y = 0;
  if (valid) {
    const Bilinear s = pixel_sample(mapping + b * kMapping * 2, pixel, H, W, border);
    for (int c = 0; c < K1; ++c) {
      w[c] = bilinear_read(pred + (b * K1 + c) * plane, s);
      warped[(b * K1 + c) * plane + pixel] = w[c];
    }
    const T logzq = softmax_into(w, 1, int(K1), q);
    const T* z = pred_tps + b * K1 * plane + pixel;
    const T logzp = softmax_into(z, plane, int(K1), p);
    for (int c = 0; c < K1; ++c)
      if (q[c] > T(0)) kl += double(q[c] * ((w[c] - logzq) - (z[c * plane] - logzp)));
    x = loss_coord(pixel % W, W);
    y = loss_coord(pixel / W, H);
  }
  double* out = partial + (b * tiles + tile) * stride;
  const double total = block_sum(kl, shared);
  if (threadIdx.x == 0) out[0] = total;
  for (int k = 0; k < K; ++k) {
    const double pk = valid ? double(p[k + 1]) : 0.0, qk = valid ? double(q[k + 1]) : 0.0;
    const double f[6] = {pk, pk * x, pk * y, qk, qk * x, qk * y};
    for (int m = 0; m < 6; ++m) {
      const double sum = block_sum(f[m], shared);
      if (threadIdx.x == 0) out[1 + (m < 3 ? 3 * k + m : 3 * K + 3 * k + m - 3)] = sum;
    }
  }
}

template <typename T>
__global__ void equivariance_backward_kernel(const T* warped, const T* pred_tps,
                                             const double* mapping, int64_t B, int64_t K1,
                                             int64_t H, int64_t W, bool border,
                                             const double* g_kl, const double* g_tps,
                                             const double* g_warp, double scale,
                                             long long* acc_pred, T* grad_pred_tps) {
  const int64_t plane = H * W;
  const int64_t index = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (index >= B * plane) return;
  const int64_t b = index / plane, pixel = index % plane;
  const int K = int(K1) - 1;
  T q[kMaxChannels], p[kMaxChannels];
  softmax_into(warped + b * K1 * plane + pixel, plane, int(K1), q);
  softmax_into(pred_tps + b * K1 * plane + pixel, plane, int(K1), p);
  const T x = T(loss_coord(pixel % W, W)), y = T(loss_coord(pixel / W, H));
  T gp[kMaxChannels], gq[kMaxChannels];
  gp[0] = gq[0] = T(0);
  T sq = 0, dotp = 0, dotq = 0;
  for (int c = 0; c < K1; ++c) sq += q[c] > T(0) ? q[c] : T(0);
  for (int k = 0; k < K; ++k) {
    const double* t = g_tps + (b * K + k) * 3;
    const double* u = g_warp + (b * K + k) * 3;
    gp[k + 1] = T(t[0]) + T(t[1]) * x + T(t[2]) * y;
    gq[k + 1] = T(u[0]) + T(u[1]) * x + T(u[2]) * y;
    dotp += p[k + 1] * gp[k + 1];
    dotq += q[k + 1] * gq[k + 1];
  }
  const T gkl = T(g_kl[b]);
  const Bilinear s = pixel_sample(mapping + b * kMapping * 2, pixel, H, W, border);
  for (int c = 0; c < K1; ++c) {
    const T qpos = q[c] > T(0) ? q[c] : T(0);
    grad_pred_tps[(b * K1 + c) * plane + pixel] =
        gkl * (p[c] * sq - qpos) + p[c] * (gp[c] - dotp);
    const double dw = double(q[c] * (gq[c] - dotq));
    for (int corner = 0; corner < 4; ++corner)
      if (s.valid[corner])
        fixed_add(acc_pred + (b * K1 + c) * plane + s.offset[corner], s.weight[corner] * dw,
                  scale);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> equivariance_cuda(
    const at::Tensor& pred_, const at::Tensor& pred_tps_, const at::Tensor& mapping,
    bool border) {
  const DeviceGuard guard(pred_.device());
  const auto pred = pred_.contiguous();
  const auto pred_tps = pred_tps_.to(pred.scalar_type()).contiguous();
  const auto m = mapping.to(at::kDouble).contiguous();
  const int64_t B = pred.size(0), K1 = pred.size(1), H = pred.size(2), W = pred.size(3);
  const int64_t K = K1 - 1;
  check_channels(K1);
  const auto f64 = pred.options().dtype(at::kDouble);
  auto warped = at::empty_like(pred);
  // Sums over no pixels (the eps terms included), and a GPU refuses a grid with no blocks.
  if (B == 0 || H * W == 0)
    return {at::zeros({B}, f64), at::zeros({B, K, 3}, f64), at::zeros({B, K, 3}, f64), warped};
  const int64_t tiles = tiles_of(H * W);
  auto partial = at::empty({B, tiles, 1 + 6 * K}, f64);
  SF_DISPATCH(pred.scalar_type(), [&] {
    over_batch(B, [&](int64_t first, int64_t count) {
      const dim3 grid(grid_x(tiles), unsigned(count));
      SF_LAUNCH(equivariance_forward_kernel<scalar_t>, grid, kThreads,
                pred.data_ptr<scalar_t>(), pred_tps.data_ptr<scalar_t>(), m.data_ptr<double>(),
                K1, H, W, border, first, partial.data_ptr<double>(),
                warped.data_ptr<scalar_t>());
    });
  });
  const auto sums = partial.sum(1);
  const auto eps = eps_terms(H, W, 3, partial.options());
  auto kl = sums.select(1, 0).contiguous();
  auto mom_tps = sums.narrow(1, 1, 3 * K).reshape({B, K, 3}) + eps;
  auto mom_warp = sums.narrow(1, 1 + 3 * K, 3 * K).reshape({B, K, 3}) + eps;
  return {kl, mom_tps, mom_warp, warped};
}

std::tuple<at::Tensor, at::Tensor> equivariance_backward_cuda(
    const at::Tensor& pred_, const at::Tensor& warped_, const at::Tensor& pred_tps_,
    const at::Tensor& mapping, bool border, const at::Tensor& g_kl, const at::Tensor& g_tps,
    const at::Tensor& g_warp) {
  const DeviceGuard guard(pred_.device());
  const auto pred = pred_.contiguous();
  const auto dtype = pred.scalar_type();
  const auto warped = warped_.to(dtype).contiguous();
  const auto pred_tps = pred_tps_.to(dtype).contiguous();
  const auto m = mapping.to(at::kDouble).contiguous();
  const auto gk = g_kl.to(at::kDouble).contiguous();
  const auto gt = g_tps.to(at::kDouble).contiguous();
  const auto gw = g_warp.to(at::kDouble).contiguous();
  // No pixel to differentiate, and a GPU refuses a grid with no blocks.
  if (pred.numel() == 0) return {at::zeros_like(pred), at::zeros_like(pred)};
  // |d/dw_c| = |q_c (G_c - sum q G)| <= 2 max |G|, and |G| <= |g0| + |g1| + |g2| on [-1, 1]^2.
  const double bound = gw.numel() ? 2.0 * gw.abs().sum(-1).max().item<double>() : 0.0;
  const double scale = fixed_scale(bound);
  auto acc = at::zeros(pred.sizes(), pred.options().dtype(at::kLong));
  auto grad_pred_tps = at::empty_like(pred);
  SF_DISPATCH(dtype, [&] {
    SF_LAUNCH(equivariance_backward_kernel<scalar_t>,
              blocks_for(pred.size(0) * pred.size(2) * pred.size(3)), kThreads,
              warped.data_ptr<scalar_t>(), pred_tps.data_ptr<scalar_t>(), m.data_ptr<double>(),
              pred.size(0), pred.size(1), pred.size(2), pred.size(3), border,
              gk.data_ptr<double>(), gt.data_ptr<double>(), gw.data_ptr<double>(), scale,
              fixed_ptr(acc), grad_pred_tps.data_ptr<scalar_t>());
  });
  auto grad_pred = std::isfinite(bound) ? from_fixed(acc, scale, dtype)
                                        : at::full_like(pred, std::numeric_limits<double>::quiet_NaN());
  return {grad_pred, grad_pred_tps};
}

}  // namespace

SF_CUDA_LIBRARY_IMPL(m) {
  m.impl("equivariance", &equivariance_cuda);
  m.impl("equivariance_backward", &equivariance_backward_cuda);
}

}  // namespace cuda
}  // namespace scops_fast
