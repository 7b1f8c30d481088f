// Concentration family on the GPU (SPEC sections 2-3): the per-(b, k) moments of the
// softmax, sum over pixels of (P + 1e-3) * (1, x, y, x^2 + y^2), and their backward. The
// loss itself is composed from them in Python (scops_fast/ops/compose.py).
#include "launch.h"

namespace scops_fast {
namespace cuda {
namespace {

// One block per (tile of kThreads pixels, image first_image + blockIdx.y): each writes
// its partial sums.
template <typename T>
__global__ void moments_forward_kernel(const T* z, int64_t channels, int64_t H, int64_t W,
                                       bool from_logits, int64_t first_image, double* partial) {
  __shared__ double shared[kThreads];
  const int64_t b = first_image + blockIdx.y, tile = blockIdx.x, tiles = gridDim.x;
  const int64_t plane = H * W;
  const int64_t pixel = tile * kThreads + threadIdx.x;
  const bool valid = pixel < plane;
  const int parts = from_logits ? int(channels) - 1 : int(channels);
  const int first = from_logits ? 1 : 0;
  T p[kMaxChannels];
  double x = 0, y = 0;
  if (valid) {
    load_probs(z + b * channels * plane + pixel, plane, int(channels), from_logits, p);
    x = loss_coord(pixel % W, W);
    y = loss_coord(pixel / W, H);
  }
  for (int k = 0; k < parts; ++k) {
    const double v = valid ? double(p[first + k]) : 0.0;
    const double f[4] = {v, v * x, v * y, v * (x * x + y * y)};
    for (int m = 0; m < 4; ++m) {
      const double total = block_sum(f[m], shared);
      if (threadIdx.x == 0) partial[((b * tiles + tile) * parts + k) * 4 + m] = total;
    }
  }
}

// One thread per pixel of the batch.
template <typename T>
__global__ void moments_backward_kernel(const T* z, const double* grad_moments, int64_t B,
                                        int64_t channels, int64_t H, int64_t W, bool from_logits,
                                        T* grad) {
  const int64_t plane = H * W;
  const int64_t index = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (index >= B * plane) return;
  const int64_t b = index / plane, pixel = index % plane;
  const int parts = from_logits ? int(channels) - 1 : int(channels);
  const double xd = loss_coord(pixel % W, W), yd = loss_coord(pixel / W, H);
  const double* g = grad_moments + b * parts * 4;
  const T* zb = z + b * channels * plane + pixel;
  T* out = grad + b * channels * plane + pixel;
  if (!from_logits) {
    // In double, as the CPU kernel: for a centre, G = (x - c) / mass is a difference of two
    // terms of size x / mass, which in float left rounding where the exact gradient is 0.
    for (int k = 0; k < parts; ++k)
      out[k * plane] = T(g[k * 4] + g[k * 4 + 1] * xd + g[k * 4 + 2] * yd +
                         g[k * 4 + 3] * (xd * xd + yd * yd));
    return;
  }
  const T x = T(xd), y = T(yd);
  T G[kMaxChannels];
  for (int k = 0; k < parts; ++k)
    G[k] = T(g[k * 4]) + T(g[k * 4 + 1]) * x + T(g[k * 4 + 2]) * y + T(g[k * 4 + 3]) * (x * x + y * y);
  T p[kMaxChannels];
  softmax_into(zb, plane, int(channels), p);
  T dot = 0;
  for (int k = 0; k < parts; ++k) dot += p[k + 1] * G[k];
  out[0] = -p[0] * dot;
  for (int k = 0; k < parts; ++k) out[(k + 1) * plane] = p[k + 1] * (G[k] - dot);
}

at::Tensor softmax_moments_cuda(const at::Tensor& x_, bool from_logits) {
  const DeviceGuard guard(x_.device());
  const auto x = x_.contiguous();
  const int64_t B = x.size(0), channels = x.size(1), H = x.size(2), W = x.size(3);
  check_channels(channels);
  const int64_t parts = from_logits ? channels - 1 : channels;
  const auto f64 = x.options().dtype(at::kDouble);
  // Sums over no pixels, and a GPU refuses a grid with no blocks. The eps terms are sums
  // over the pixels too: zero.
  if (B == 0 || H * W == 0) return at::zeros({B, parts, 4}, f64);
  const int64_t tiles = tiles_of(H * W);
  auto partial = at::empty({B, tiles, parts, 4}, f64);
  SF_DISPATCH(x.scalar_type(), [&] {
    over_batch(B, [&](int64_t first, int64_t count) {
      const dim3 grid(grid_x(tiles), unsigned(count));
      SF_LAUNCH(moments_forward_kernel<scalar_t>, grid, kThreads, x.data_ptr<scalar_t>(),
                channels, H, W, from_logits, first, partial.data_ptr<double>());
    });
  });
  return partial.sum(1) + eps_terms(H, W, 4, partial.options());
}

at::Tensor softmax_moments_backward_cuda(const at::Tensor& x_, const at::Tensor& g_,
                                         bool from_logits) {
  const DeviceGuard guard(x_.device());
  const auto x = x_.contiguous();
  const auto g = g_.to(at::kDouble).contiguous();
  check_channels(x.size(1));
  auto grad = at::empty_like(x);
  // Nothing to write (no images, pixels or channels), and no empty grid for the GPU.
  if (grad.numel() == 0) return grad;
  SF_DISPATCH(x.scalar_type(), [&] {
    const int64_t pixels = x.size(0) * x.size(2) * x.size(3);
    SF_LAUNCH(moments_backward_kernel<scalar_t>, blocks_for(pixels), kThreads,
              x.data_ptr<scalar_t>(), g.data_ptr<double>(), x.size(0), x.size(1), x.size(2),
              x.size(3), from_logits, grad.data_ptr<scalar_t>());
  });
  return grad;
}

}  // namespace

SF_CUDA_LIBRARY_IMPL(m) {
  m.impl("softmax_moments", &softmax_moments_cuda);
  m.impl("softmax_moments_backward", &softmax_moments_backward_cuda);
}

}  // namespace cuda
}  // namespace scops_fast
