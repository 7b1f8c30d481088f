// Semantic family on the GPU (SPEC section 4): the low-resolution loss as one pass over the
// pixels holding K-vectors only (its adjoint to the low-resolution maps in int64 fixed
// point), and the dense loss as chunked cuBLAS GEMMs.
#include <algorithm>
#include <optional>

#include "fixed_point.h"
#include "semantic_lowres_inputs.h"

namespace scops_fast {
namespace cuda {
namespace {

template <typename T>
__global__ void semantic_lowres_kernel(const T* pred, const T* lowres, const T* gram_basis,
                                       const T* gram, const T* saliency, int64_t K1, int64_t H,
                                       int64_t W, int64_t h, int64_t w, bool grads, double scale,
                                       int64_t first_image, double* loss_partial, T* grad_pred,
                                       long long* acc_lowres, double* gram_partial) {
  __shared__ double shared[kThreads];
  const int64_t b = first_image + blockIdx.y, tile = blockIdx.x, tiles = gridDim.x;
  const int64_t plane = H * W;
  const int64_t low = h * w;
  const int64_t pixel = tile * kThreads + threadIdx.x;
  const bool valid = pixel < plane;
  const int K = int(K1) - 1;
  T p[kMaxChannels];
  double loss = 0;
  if (valid) {
    softmax_into(pred + b * K1 * plane + pixel, plane, int(K1), p);
    const int64_t i = pixel / W, j = pixel % W;
    // Bilinear upsampling source (align_corners=True), as F.interpolate.
    const double sy = H > 1 ? double(i) * double(h - 1) / double(H - 1) : 0.0;
    const double sx = W > 1 ? double(j) * double(w - 1) / double(W - 1) : 0.0;
    const int64_t y0 = min(int64_t(sy), h - 1), x0 = min(int64_t(sx), w - 1);
    const int64_t y1 = min(y0 + 1, h - 1), x1 = min(x0 + 1, w - 1);
    const double fy = sy - double(y0), fx = sx - double(x0);
    const double w00 = (1 - fy) * (1 - fx), w01 = (1 - fy) * fx, w10 = fy * (1 - fx),
                 w11 = fy * fx;
    const int64_t o00 = y0 * w + x0, o01 = y0 * w + x1, o10 = y1 * w + x0, o11 = y1 * w + x1;
    const double s = saliency ? double(saliency[b * plane + pixel]) : 1.0;
    const T* a = lowres + b * K * low;
    const T* d = gram + b * 5 * low;
    double quad = 0, cross = 0;
    double ua[kMaxChannels], gpk[kMaxChannels];
    for (int k = 0; k < K; ++k) {
      const T* ak = a + k * low;
      ua[k] = w00 * ak[o00] + w01 * ak[o01] + w10 * ak[o10] + w11 * ak[o11];
      double gk = 0, gt = 0;
      for (int l = 0; l < K; ++l) {
        gk += double(gram_basis[k * K + l]) * double(p[l + 1]);
        gt += double(gram_basis[l * K + k]) * double(p[l + 1]);
      }
      quad += double(p[k + 1]) * gk;
      cross += double(p[k + 1]) * ua[k];
      gpk[k] = gk + gt - 2.0 * s * ua[k];
    }
    const double vv = w00 * w00 * d[o00] + w01 * w01 * d[o01] + w10 * w10 * d[o10] +
                      w11 * w11 * d[o11] +
                      2.0 * (w00 * w01 * d[low + o00] + w10 * w11 * d[low + o10] +
                             w00 * w10 * d[2 * low + o00] + w01 * w11 * d[2 * low + o01] +
                             w00 * w11 * d[3 * low + o00] + w01 * w10 * d[4 * low + o00]);
    loss = quad - 2.0 * s * cross + s * s * vv;
    if (grads) {
      double dot = 0;
      for (int k = 0; k < K; ++k) dot += double(p[k + 1]) * gpk[k];
      T* out = grad_pred + b * K1 * plane + pixel;
      out[0] = T(-double(p[0]) * dot);
      for (int k = 0; k < K; ++k) {
        out[(k + 1) * plane] = T(double(p[k + 1]) * (gpk[k] - dot));
        const double m = -2.0 * s * double(p[k + 1]);
        long long* ak = acc_lowres + (b * K + k) * low;
        fixed_add(ak + o00, m * w00, scale);
        fixed_add(ak + o01, m * w01, scale);
        fixed_add(ak + o10, m * w10, scale);
        fixed_add(ak + o11, m * w11, scale);
      }
    }
  }
  const double total = block_sum(loss, shared);
  if (threadIdx.x == 0) loss_partial[b * tiles + tile] = total;
  if (!grads) return;
  for (int k = 0; k < K; ++k)
    for (int l = 0; l < K; ++l) {
      const double v = valid ? double(p[k + 1]) * double(p[l + 1]) : 0.0;
      const double sum = block_sum(v, shared);
      if (threadIdx.x == 0) gram_partial[((b * tiles + tile) * K + k) * K + l] = sum;
    }
}

// Dense semantic loss on the GPU as chunked GEMMs (cuBLAS is deterministic for fixed
// shapes): the residual exists one chunk of pixels at a time, never for the image.
std::tuple<at::Tensor, at::Tensor, at::Tensor> semantic_dense_cuda(const at::Tensor& features_,
                                                                   const at::Tensor& pred_,
                                                                   const at::Tensor& basis_,
                                                                   bool grads) {
  const DeviceGuard guard(pred_.device());
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
  const DeviceGuard guard(pred_.device());
  const auto [pred, lowres, gram_basis, gram, saliency] =
      semantic_lowres_inputs(pred_, lowres_, gram_basis_, gram_, saliency_);
  const auto dtype = pred.scalar_type();
  const int64_t B = pred.size(0), K1 = pred.size(1), H = pred.size(2), W = pred.size(3);
  const int64_t K = K1 - 1, h = lowres.size(2), w = lowres.size(3), tiles = tiles_of(H * W);
  check_channels(K1);
  const auto f64 = pred.options().dtype(at::kDouble);
  // Sums over no pixels: no loss, no gradient reaches the maps or the basis; and a GPU
  // refuses a grid with no blocks.
  if (B == 0 || H * W == 0) {
    const auto none = [&] { return at::empty({0}, pred.options()); };
    if (!grads) return {at::zeros({}, f64), none(), none(), none()};
    return {at::zeros({}, f64), at::empty_like(pred), at::zeros({B, K, h, w}, pred.options()),
            at::zeros({K, K}, pred.options())};
  }
  // Every pixel reads four low-resolution neighbours: a map without pixels has none.
  TORCH_CHECK(h > 0 && w > 0, "scops_fast cuda: semantic_lowres needs low-resolution maps of "
              "at least one pixel, got ", h, " x ", w);
  // |d/dA| per contribution: 2 s P w <= 2 max s.
  const double bound =
      2.0 * (saliency.defined() ? std::max(saliency.abs().max().item<double>(), 0.0) : 1.0);
  const double scale = fixed_scale(bound);
  auto loss_partial = at::empty({B, tiles}, f64);
  auto grad_pred = grads ? at::empty_like(pred) : at::empty({0}, pred.options());
  auto acc = at::zeros(grads ? at::IntArrayRef{B, K, h, w} : at::IntArrayRef{0},
                       pred.options().dtype(at::kLong));
  auto gram_partial = at::empty(grads ? at::IntArrayRef{B, tiles, K, K} : at::IntArrayRef{0}, f64);
  SF_DISPATCH(dtype, [&] {
    over_batch(B, [&](int64_t first, int64_t count) {
      const dim3 grid{grid_x(tiles), unsigned(count)};
      SF_LAUNCH(semantic_lowres_kernel<scalar_t>, grid, kThreads, pred.data_ptr<scalar_t>(),
                lowres.data_ptr<scalar_t>(), gram_basis.data_ptr<scalar_t>(),
                gram.data_ptr<scalar_t>(),
                saliency.defined() ? saliency.data_ptr<scalar_t>() : nullptr, K1, H, W, h, w,
                grads, scale, first, loss_partial.data_ptr<double>(),
                grads ? grad_pred.data_ptr<scalar_t>() : nullptr,
                grads ? fixed_ptr(acc) : nullptr,
                grads ? gram_partial.data_ptr<double>() : nullptr);
    });
  });
  const auto loss = loss_partial.sum();
  if (!grads) {
    const auto empty = at::empty({0}, pred.options());
    return {loss, grad_pred, empty, empty};
  }
  // IntArrayRef spelled out: torch 2.11's headers also offer sum(DimnameList) for a braced
  // list, which nvcc finds ambiguous.
  const auto gram_grad = gram_partial.sum(at::IntArrayRef{0, 1}).to(dtype);
  return {loss, grad_pred, from_fixed(acc, scale, dtype), gram_grad};
}

}  // namespace

SF_CUDA_LIBRARY_IMPL(m) {
  m.impl("semantic_dense", &semantic_dense_cuda);
  m.impl("semantic_lowres", &semantic_lowres_cuda);
}

}  // namespace cuda
}  // namespace scops_fast
