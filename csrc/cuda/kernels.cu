// CUDA kernels of the fused SCOPS ops. The per-pixel math (softmax, SPEC coordinates,
// spline positions, bilinear weights) comes from ../common.h, the same inline
// functions the CPU kernels run, so the CPU tests exercise it.
//
// Determinism: sums over pixels are block trees in shared memory plus fixed-order
// sums over blocks; scatters (adjoints of bilinear sampling) accumulate in int64
// fixed point, whose atomic additions commute exactly.
#include "common.h"
#include "launch.h"

namespace scops_fast {
namespace cuda {
namespace {

// Fixed-shape tree sum over the block; every thread gets the total.
__device__ double block_sum(double v, double* shared) {
  shared[threadIdx.x] = v;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) shared[threadIdx.x] += shared[threadIdx.x + s];
    __syncthreads();
  }
  const double total = shared[0];
  __syncthreads();
  return total;
}

__device__ void fixed_add(long long* acc, double v, double scale) {
  // Two's complement: unsigned wrap-around addition is signed addition.
  atomicAdd(reinterpret_cast<unsigned long long*>(acc),
            static_cast<unsigned long long>(__double2ll_rn(v * scale)));
}

template <typename T>
__device__ void load_probs(const T* z, int64_t plane, int channels, bool from_logits, T* p) {
  if (from_logits) {
    softmax_into(z, plane, channels, p);
  } else {
    for (int c = 0; c < channels; ++c) p[c] = z[c * plane];
  }
}

template <typename T>
__global__ void moments_forward_kernel(const T* z, int64_t channels, int64_t H, int64_t W,
                                       bool from_logits, double* partial) {
  __shared__ double shared[kThreads];
  const int64_t b = blockIdx.y, tile = blockIdx.x, tiles = gridDim.x, plane = H * W;
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

template <typename T>
__global__ void moments_backward_kernel(const T* z, const double* grad_moments, int64_t B,
                                        int64_t channels, int64_t H, int64_t W, bool from_logits,
                                        T* grad) {
  const int64_t plane = H * W;
  const int64_t index = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (index >= B * plane) return;
  const int64_t b = index / plane, pixel = index % plane;
  const int parts = from_logits ? int(channels) - 1 : int(channels);
  const T x = T(loss_coord(pixel % W, W)), y = T(loss_coord(pixel / W, H));
  const double* g = grad_moments + b * parts * 4;
  const T* zb = z + b * channels * plane + pixel;
  T* out = grad + b * channels * plane + pixel;
  T G[kMaxChannels];
  for (int k = 0; k < parts; ++k)
    G[k] = T(g[k * 4]) + T(g[k * 4 + 1]) * x + T(g[k * 4 + 2]) * y + T(g[k * 4 + 3]) * (x * x + y * y);
  if (!from_logits) {
    for (int k = 0; k < parts; ++k) out[k * plane] = G[k];
    return;
  }
  T p[kMaxChannels];
  softmax_into(zb, plane, int(channels), p);
  T dot = 0;
  for (int k = 0; k < parts; ++k) dot += p[k + 1] * G[k];
  out[0] = -p[0] * dot;
  for (int k = 0; k < parts; ++k) out[(k + 1) * plane] = p[k + 1] * (G[k] - dot);
}

__device__ Bilinear pixel_sample(const double* m, int64_t pixel, int64_t H, int64_t W,
                                 bool border) {
  double gx, gy;
  tps_position_direct(corner_coord(pixel % W, W), corner_coord(pixel / W, H), m, &gx, &gy);
  return bilinear_at(gx, gy, H, W, border);
}

template <typename T>
__global__ void warp_forward_kernel(const T* x, const double* mapping, int64_t B, int64_t C,
                                    int64_t H, int64_t W, bool border, T* out) {
  const int64_t plane = H * W;
  const int64_t index = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (index >= B * plane) return;
  const int64_t b = index / plane, pixel = index % plane;
  const Bilinear s = pixel_sample(mapping + b * kMapping * 2, pixel, H, W, border);
  for (int64_t c = 0; c < C; ++c)
    out[(b * C + c) * plane + pixel] = bilinear_read(x + (b * C + c) * plane, s);
}

template <typename T>
__global__ void warp_backward_kernel(const T* grad_out, const double* mapping, int64_t B,
                                     int64_t C, int64_t H, int64_t W, bool border, double scale,
                                     long long* acc) {
  const int64_t plane = H * W;
  const int64_t index = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (index >= B * plane) return;
  const int64_t b = index / plane, pixel = index % plane;
  const Bilinear s = pixel_sample(mapping + b * kMapping * 2, pixel, H, W, border);
  for (int64_t c = 0; c < C; ++c) {
    const double g = double(grad_out[(b * C + c) * plane + pixel]);
    for (int q = 0; q < 4; ++q)
      if (s.valid[q]) fixed_add(acc + (b * C + c) * plane + s.offset[q], s.weight[q] * g, scale);
  }
}

template <typename T>
__global__ void fixed_to_float_kernel(const long long* acc, int64_t n, double scale, T* out) {
  const int64_t index = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (index < n) out[index] = T(double(acc[index]) / scale);
}

template <typename T>
__global__ void equivariance_forward_kernel(const T* pred, const T* pred_tps,
                                            const double* mapping, int64_t K1, int64_t H,
                                            int64_t W, bool border, double* partial, T* warped) {
  __shared__ double shared[kThreads];
  const int64_t b = blockIdx.y, tile = blockIdx.x, tiles = gridDim.x, plane = H * W;
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

template <typename T>
__global__ void semantic_lowres_kernel(const T* pred, const T* lowres, const T* gram_basis,
                                       const T* gram, const T* saliency, int64_t K1, int64_t H,
                                       int64_t W, int64_t h, int64_t w, bool grads, double scale,
                                       double* loss_partial, T* grad_pred, long long* acc_lowres,
                                       double* gram_partial) {
  __shared__ double shared[kThreads];
  const int64_t b = blockIdx.y, tile = blockIdx.x, tiles = gridDim.x, plane = H * W;
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

int64_t blocks_for(int64_t n) { return (n + kThreads - 1) / kThreads; }

}  // namespace

template <typename T>
void moments_forward(const T* z, int64_t B, int64_t channels, int64_t H, int64_t W,
                     bool from_logits, double* partial, cudaStream_t stream) {
  const dim3 grid(unsigned(tiles_of(H * W)), unsigned(B));
  moments_forward_kernel<T><<<grid, kThreads, 0, stream>>>(z, channels, H, W, from_logits,
                                                           partial);
}

template <typename T>
void moments_backward(const T* z, const double* grad_moments, int64_t B, int64_t channels,
                      int64_t H, int64_t W, bool from_logits, T* grad, cudaStream_t stream) {
  moments_backward_kernel<T><<<unsigned(blocks_for(B * H * W)), kThreads, 0, stream>>>(
      z, grad_moments, B, channels, H, W, from_logits, grad);
}

template <typename T>
void warp_forward(const T* x, const double* mapping, int64_t B, int64_t C, int64_t H, int64_t W,
                  bool border, T* out, cudaStream_t stream) {
  warp_forward_kernel<T><<<unsigned(blocks_for(B * H * W)), kThreads, 0, stream>>>(
      x, mapping, B, C, H, W, border, out);
}

template <typename T>
void warp_backward(const T* grad_out, const double* mapping, int64_t B, int64_t C, int64_t H,
                   int64_t W, bool border, double scale, long long* acc, cudaStream_t stream) {
  warp_backward_kernel<T><<<unsigned(blocks_for(B * H * W)), kThreads, 0, stream>>>(
      grad_out, mapping, B, C, H, W, border, scale, acc);
}

template <typename T>
void fixed_to_float(const long long* acc, int64_t n, double scale, T* out, cudaStream_t stream) {
  fixed_to_float_kernel<T><<<unsigned(blocks_for(n)), kThreads, 0, stream>>>(acc, n, scale, out);
}

template <typename T>
void equivariance_forward(const T* pred, const T* pred_tps, const double* mapping, int64_t B,
                          int64_t K1, int64_t H, int64_t W, bool border, double* partial,
                          T* warped, cudaStream_t stream) {
  const dim3 grid(unsigned(tiles_of(H * W)), unsigned(B));
  equivariance_forward_kernel<T><<<grid, kThreads, 0, stream>>>(pred, pred_tps, mapping, K1, H,
                                                                W, border, partial, warped);
}

template <typename T>
void equivariance_backward(const T* warped, const T* pred_tps, const double* mapping, int64_t B,
                           int64_t K1, int64_t H, int64_t W, bool border, const double* g_kl,
                           const double* g_tps, const double* g_warp, double scale,
                           long long* acc_pred, T* grad_pred_tps, cudaStream_t stream) {
  equivariance_backward_kernel<T><<<unsigned(blocks_for(B * H * W)), kThreads, 0, stream>>>(
      warped, pred_tps, mapping, B, K1, H, W, border, g_kl, g_tps, g_warp, scale, acc_pred,
      grad_pred_tps);
}

template <typename T>
void semantic_lowres(const T* pred, const T* lowres, const T* gram_basis, const T* gram,
                     const T* saliency, int64_t B, int64_t K1, int64_t H, int64_t W, int64_t h,
                     int64_t w, bool grads, double scale, double* loss_partial, T* grad_pred,
                     long long* acc_lowres, double* gram_partial, cudaStream_t stream) {
  const dim3 grid(unsigned(tiles_of(H * W)), unsigned(B));
  semantic_lowres_kernel<T><<<grid, kThreads, 0, stream>>>(
      pred, lowres, gram_basis, gram, saliency, K1, H, W, h, w, grads, scale, loss_partial,
      grad_pred, acc_lowres, gram_partial);
}

#define SF_INSTANTIATE(T)                                                                     \
  template void moments_forward<T>(const T*, int64_t, int64_t, int64_t, int64_t, bool, double*, \
                                   cudaStream_t);                                             \
  template void moments_backward<T>(const T*, const double*, int64_t, int64_t, int64_t,       \
                                    int64_t, bool, T*, cudaStream_t);                         \
  template void warp_forward<T>(const T*, const double*, int64_t, int64_t, int64_t, int64_t,  \
                                bool, T*, cudaStream_t);                                      \
  template void warp_backward<T>(const T*, const double*, int64_t, int64_t, int64_t, int64_t, \
                                 bool, double, long long*, cudaStream_t);                     \
  template void fixed_to_float<T>(const long long*, int64_t, double, T*, cudaStream_t);       \
  template void equivariance_forward<T>(const T*, const T*, const double*, int64_t, int64_t,  \
                                        int64_t, int64_t, bool, double*, T*, cudaStream_t);   \
  template void equivariance_backward<T>(const T*, const T*, const double*, int64_t, int64_t, \
                                         int64_t, int64_t, bool, const double*,               \
                                         const double*, const double*, double, long long*,    \
                                         T*, cudaStream_t);                                   \
  template void semantic_lowres<T>(const T*, const T*, const T*, const T*, const T*, int64_t, \
                                   int64_t, int64_t, int64_t, int64_t, int64_t, bool, double, \
                                   double*, T*, long long*, double*, cudaStream_t);

SF_INSTANTIATE(float)
SF_INSTANTIATE(double)

}  // namespace cuda
}  // namespace scops_fast
