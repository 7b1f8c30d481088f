// CUDA implementations of the `scops_fast::` ops (schemas are defined by the CPU
// library, csrc/bindings.cpp, which must be loaded first).
//
// The adjoints of bilinear sampling scatter into int64 fixed point: exact, order-free
// additions make them deterministic. The scale is 2^42 / (a bound on every
// contribution), leaving 2^20 of headroom for many pixels landing on one input pixel
// and keeping a resolution of about 2^-42 relative to the largest contribution.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <tuple>

#include "common.h"
#include "launch.h"

namespace scops_fast {
namespace cuda {
namespace {

#define SF_CUDA_DISPATCH(dtype, ...)                                                       \
  [&] {                                                                                    \
    if ((dtype) == at::kDouble) {                                                          \
      using scalar_t = double;                                                             \
      return __VA_ARGS__();                                                                \
    }                                                                                      \
    TORCH_CHECK((dtype) == at::kFloat, "scops_fast: expected float32 or float64, got ", \
                (dtype));                                                                  \
    using scalar_t = float;                                                                \
    return __VA_ARGS__();                                                                  \
  }()

cudaStream_t stream() { return at::cuda::getCurrentCUDAStream(); }

void check_channels(int64_t channels) {
  TORCH_CHECK(channels <= kMaxChannels, "scops_fast cuda: at most ", kMaxChannels - 1,
              " parts are supported, got ", channels - 1);
}

// The first n of the closed-form eps terms (common.h), on the tensors' device.
at::Tensor eps_terms(int64_t H, int64_t W, int64_t n, const at::TensorOptions& opts) {
  double all[4];
  eps_moment_terms(H, W, all);
  return at::tensor(std::vector<double>(all, all + n), at::kDouble).to(opts.device());
}

// Scale for fixed-point accumulation of contributions bounded by `bound`.
double fixed_scale(double bound) {
  if (!(bound > 0) || !std::isfinite(bound)) return 1.0;
  return std::ldexp(1.0, 42 - std::ilogb(bound));
}

at::Tensor from_fixed(const at::Tensor& acc, double scale, at::ScalarType dtype) {
  auto out = at::empty(acc.sizes(), acc.options().dtype(dtype));
  SF_CUDA_DISPATCH(dtype, [&] {
    fixed_to_float<scalar_t>(reinterpret_cast<const long long*>(acc.data_ptr<int64_t>()),
                             acc.numel(), scale, out.data_ptr<scalar_t>(), stream());
  });
  return out;
}

long long* fixed_ptr(at::Tensor& acc) { return reinterpret_cast<long long*>(acc.data_ptr<int64_t>()); }

at::Tensor softmax_moments_cuda(const at::Tensor& x_, bool from_logits) {
  const c10::cuda::CUDAGuard guard(x_.device());
  const auto x = x_.contiguous();
  const int64_t B = x.size(0), channels = x.size(1), H = x.size(2), W = x.size(3);
  check_channels(channels);
  const int64_t parts = from_logits ? channels - 1 : channels;
  auto partial = at::empty({B, tiles_of(H * W), parts, 4}, x.options().dtype(at::kDouble));
  SF_CUDA_DISPATCH(x.scalar_type(), [&] {
    moments_forward<scalar_t>(x.data_ptr<scalar_t>(), B, channels, H, W, from_logits,
                              partial.data_ptr<double>(), stream());
  });
  return partial.sum(1) + eps_terms(H, W, 4, partial.options());
}

at::Tensor softmax_moments_backward_cuda(const at::Tensor& x_, const at::Tensor& g_,
                                         bool from_logits) {
  const c10::cuda::CUDAGuard guard(x_.device());
  const auto x = x_.contiguous();
  const auto g = g_.to(at::kDouble).contiguous();
  check_channels(x.size(1));
  auto grad = at::empty_like(x);
  SF_CUDA_DISPATCH(x.scalar_type(), [&] {
    moments_backward<scalar_t>(x.data_ptr<scalar_t>(), g.data_ptr<double>(), x.size(0),
                               x.size(1), x.size(2), x.size(3), from_logits,
                               grad.data_ptr<scalar_t>(), stream());
  });
  return grad;
}

at::Tensor tps_warp_cuda(const at::Tensor& x_, const at::Tensor& mapping, bool border) {
  const c10::cuda::CUDAGuard guard(x_.device());
  const auto x = x_.contiguous();
  const auto m = mapping.to(at::kDouble).contiguous();
  auto out = at::empty_like(x);
  SF_CUDA_DISPATCH(x.scalar_type(), [&] {
    warp_forward<scalar_t>(x.data_ptr<scalar_t>(), m.data_ptr<double>(), x.size(0), x.size(1),
                           x.size(2), x.size(3), border, out.data_ptr<scalar_t>(), stream());
  });
  return out;
}

at::Tensor tps_warp_backward_cuda(const at::Tensor& g_, const at::Tensor& mapping,
                                  bool border) {
  const c10::cuda::CUDAGuard guard(g_.device());
  const auto g = g_.contiguous();
  const auto m = mapping.to(at::kDouble).contiguous();
  const double bound = g.numel() ? g.abs().max().item<double>() : 0.0;
  if (std::isnan(bound) || std::isinf(bound))  // not representable in fixed point
    return at::full_like(g, std::numeric_limits<double>::quiet_NaN());
  const double scale = fixed_scale(bound);
  auto acc = at::zeros(g.sizes(), g.options().dtype(at::kLong));
  SF_CUDA_DISPATCH(g.scalar_type(), [&] {
    warp_backward<scalar_t>(g.data_ptr<scalar_t>(), m.data_ptr<double>(), g.size(0), g.size(1),
                            g.size(2), g.size(3), border, scale, fixed_ptr(acc), stream());
  });
  return from_fixed(acc, scale, g.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> equivariance_cuda(
    const at::Tensor& pred_, const at::Tensor& pred_tps_, const at::Tensor& mapping,
    bool border) {
  const c10::cuda::CUDAGuard guard(pred_.device());
  const auto pred = pred_.contiguous();
  const auto pred_tps = pred_tps_.to(pred.scalar_type()).contiguous();
  const auto m = mapping.to(at::kDouble).contiguous();
  const int64_t B = pred.size(0), K1 = pred.size(1), H = pred.size(2), W = pred.size(3);
  const int64_t K = K1 - 1;
  check_channels(K1);
  auto partial = at::empty({B, tiles_of(H * W), 1 + 6 * K}, pred.options().dtype(at::kDouble));
  auto warped = at::empty_like(pred);
  SF_CUDA_DISPATCH(pred.scalar_type(), [&] {
    equivariance_forward<scalar_t>(pred.data_ptr<scalar_t>(), pred_tps.data_ptr<scalar_t>(),
                                   m.data_ptr<double>(), B, K1, H, W, border,
                                   partial.data_ptr<double>(), warped.data_ptr<scalar_t>(),
                                   stream());
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
  const c10::cuda::CUDAGuard guard(pred_.device());
  const auto pred = pred_.contiguous();
  const auto dtype = pred.scalar_type();
  const auto warped = warped_.to(dtype).contiguous();
  const auto pred_tps = pred_tps_.to(dtype).contiguous();
  const auto m = mapping.to(at::kDouble).contiguous();
  const auto gk = g_kl.to(at::kDouble).contiguous();
  const auto gt = g_tps.to(at::kDouble).contiguous();
  const auto gw = g_warp.to(at::kDouble).contiguous();
  // |d/dw_c| = |q_c (G_c - sum q G)| <= 2 max |G|, and |G| <= |g0| + |g1| + |g2| on [-1, 1]^2.
  const double bound = gw.numel() ? 2.0 * gw.abs().sum(-1).max().item<double>() : 0.0;
  const double scale = fixed_scale(bound);
  auto acc = at::zeros(pred.sizes(), pred.options().dtype(at::kLong));
  auto grad_pred_tps = at::empty_like(pred);
  SF_CUDA_DISPATCH(dtype, [&] {
    equivariance_backward<scalar_t>(
        warped.data_ptr<scalar_t>(), pred_tps.data_ptr<scalar_t>(), m.data_ptr<double>(),
        pred.size(0), pred.size(1), pred.size(2), pred.size(3), border, gk.data_ptr<double>(),
        gt.data_ptr<double>(), gw.data_ptr<double>(), scale, fixed_ptr(acc),
        grad_pred_tps.data_ptr<scalar_t>(), stream());
  });
  auto grad_pred = std::isfinite(bound) ? from_fixed(acc, scale, dtype)
                                        : at::full_like(pred, std::numeric_limits<double>::quiet_NaN());
  return {grad_pred, grad_pred_tps};
}

// Dense semantic loss on the GPU as chunked GEMMs (cuBLAS is deterministic for fixed
// shapes): the residual exists one chunk of pixels at a time, never for the image.
std::tuple<at::Tensor, at::Tensor, at::Tensor> semantic_dense_cuda(const at::Tensor& features_,
                                                                   const at::Tensor& pred_,
                                                                   const at::Tensor& basis_,
                                                                   bool grads) {
  const c10::cuda::CUDAGuard guard(pred_.device());
  const auto pred = pred_.contiguous();
  const auto dtype = pred.scalar_type();
  const auto features = features_.to(dtype).contiguous();
  const auto basis = basis_.to(dtype).contiguous();
  const int64_t B = pred.size(0), K1 = pred.size(1), H = pred.size(2), W = pred.size(3);
  const int64_t C = features.size(1), HW = H * W, chunk = 8192;
  const auto probs = at::softmax(pred, 1);
  const auto parts = probs.narrow(1, 1, K1 - 1).reshape({B, K1 - 1, HW});
  auto loss = at::zeros({}, pred.options().dtype(at::kDouble));
  auto dparts = grads ? at::empty({B, K1 - 1, HW}, pred.options()) : at::Tensor();
  auto grad_basis = at::zeros({grads ? K1 - 1 : 0, C}, pred.options().dtype(at::kDouble));
  const auto v = features.reshape({B, C, HW});
  for (int64_t b = 0; b < B; ++b)
    for (int64_t s = 0; s < HW; s += chunk) {
      const int64_t n = std::min(chunk, HW - s);
      const auto pc = parts[b].narrow(1, s, n);
      const auto r = at::matmul(basis.t(), pc) - v[b].narrow(1, s, n);
      loss += r.to(at::kDouble).square().sum();
      if (!grads) continue;
      dparts[b].narrow(1, s, n).copy_(at::matmul(basis, r) * 2);
      grad_basis += at::matmul(pc, r.t()).to(at::kDouble) * 2;
    }
  if (!grads) return {loss, at::empty({0}, pred.options()), grad_basis.to(dtype)};
  // Softmax backward with the background's upstream gradient 0.
  const auto g = at::cat({at::zeros({B, 1, HW}, pred.options()), dparts}, 1).reshape(pred.sizes());
  const auto grad_pred = probs * (g - (probs * g).sum(1, true));
  return {loss, grad_pred, grad_basis.to(dtype)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> semantic_lowres_cuda(
    const at::Tensor& pred_, const at::Tensor& lowres_, const at::Tensor& gram_basis_,
    const at::Tensor& gram_, const std::optional<at::Tensor>& saliency_, bool grads) {
  const c10::cuda::CUDAGuard guard(pred_.device());
  const auto pred = pred_.contiguous();
  const auto dtype = pred.scalar_type();
  const auto lowres = lowres_.to(dtype).contiguous();
  const auto gram_basis = gram_basis_.to(dtype).contiguous();
  const auto gram = gram_.to(dtype).contiguous();
  at::Tensor saliency;
  if (saliency_.has_value()) saliency = saliency_->to(dtype).contiguous();
  const int64_t B = pred.size(0), K1 = pred.size(1), H = pred.size(2), W = pred.size(3);
  const int64_t K = K1 - 1, h = lowres.size(2), w = lowres.size(3), tiles = tiles_of(H * W);
  check_channels(K1);
  const auto f64 = pred.options().dtype(at::kDouble);
  // |d/dA| per contribution: 2 s P w <= 2 max s.
  const double bound =
      2.0 * (saliency.defined() ? std::max(saliency.abs().max().item<double>(), 0.0) : 1.0);
  const double scale = fixed_scale(bound);
  auto loss_partial = at::empty({B, tiles}, f64);
  auto grad_pred = grads ? at::empty_like(pred) : at::empty({0}, pred.options());
  auto acc = at::zeros(grads ? at::IntArrayRef{B, K, h, w} : at::IntArrayRef{0},
                       pred.options().dtype(at::kLong));
  auto gram_partial = at::empty(grads ? at::IntArrayRef{B, tiles, K, K} : at::IntArrayRef{0}, f64);
  SF_CUDA_DISPATCH(dtype, [&] {
    semantic_lowres<scalar_t>(
        pred.data_ptr<scalar_t>(), lowres.data_ptr<scalar_t>(), gram_basis.data_ptr<scalar_t>(),
        gram.data_ptr<scalar_t>(), saliency.defined() ? saliency.data_ptr<scalar_t>() : nullptr,
        B, K1, H, W, h, w, grads, scale, loss_partial.data_ptr<double>(),
        grads ? grad_pred.data_ptr<scalar_t>() : nullptr, grads ? fixed_ptr(acc) : nullptr,
        grads ? gram_partial.data_ptr<double>() : nullptr, stream());
  });
  const auto loss = loss_partial.sum();
  if (!grads) {
    const auto empty = at::empty({0}, pred.options());
    return {loss, grad_pred, empty, empty};
  }
  return {loss, grad_pred, from_fixed(acc, scale, dtype), gram_partial.sum({0, 1}).to(dtype)};
}

}  // namespace

TORCH_LIBRARY_IMPL(scops_fast, CUDA, m) {
  m.impl("softmax_moments", &softmax_moments_cuda);
  m.impl("softmax_moments_backward", &softmax_moments_backward_cuda);
  m.impl("tps_warp", &tps_warp_cuda);
  m.impl("tps_warp_backward", &tps_warp_backward_cuda);
  m.impl("equivariance", &equivariance_cuda);
  m.impl("equivariance_backward", &equivariance_backward_cuda);
  m.impl("semantic_dense", &semantic_dense_cuda);
  m.impl("semantic_lowres", &semantic_lowres_cuda);
}

}  // namespace cuda
}  // namespace scops_fast
