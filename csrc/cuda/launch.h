// Host launchers of the CUDA kernels (kernels.cu). Raw pointers only: the ATen side
// (bindings_cuda.cpp) allocates, checks and picks the stream.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace scops_fast {
namespace cuda {

// Pixels per block; every reduction over pixels is a fixed-shape tree within a block
// followed by a fixed-order sum over blocks, so results never depend on scheduling.
constexpr int kThreads = 256;
// Logit channels (K + 1) a thread keeps in registers.
constexpr int kMaxChannels = 33;

inline int64_t tiles_of(int64_t pixels) { return (pixels + kThreads - 1) / kThreads; }

// partial: (B, tiles, parts, 4) double.
template <typename T>
void moments_forward(const T* z, int64_t B, int64_t channels, int64_t H, int64_t W,
                     bool from_logits, double* partial, cudaStream_t stream);
template <typename T>
void moments_backward(const T* z, const double* grad_moments, int64_t B, int64_t channels,
                      int64_t H, int64_t W, bool from_logits, T* grad, cudaStream_t stream);

template <typename T>
void warp_forward(const T* x, const double* mapping, int64_t B, int64_t C, int64_t H, int64_t W,
                  bool border, T* out, cudaStream_t stream);
// acc: (B, C, H, W) int64 fixed-point accumulator (zeroed), value = acc / scale.
template <typename T>
void warp_backward(const T* grad_out, const double* mapping, int64_t B, int64_t C, int64_t H,
                   int64_t W, bool border, double scale, long long* acc, cudaStream_t stream);
template <typename T>
void fixed_to_float(const long long* acc, int64_t n, double scale, T* out, cudaStream_t stream);

// partial: (B, tiles, 1 + 6K) double: KL, then (1, x, y) moments of the parts of
// softmax(pred_tps) and of softmax(warp(pred)). warped: (B, K1, H, W).
template <typename T>
void equivariance_forward(const T* pred, const T* pred_tps, const double* mapping, int64_t B,
                          int64_t K1, int64_t H, int64_t W, bool border, double* partial,
                          T* warped, cudaStream_t stream);
template <typename T>
void equivariance_backward(const T* warped, const T* pred_tps, const double* mapping, int64_t B,
                           int64_t K1, int64_t H, int64_t W, bool border, const double* g_kl,
                           const double* g_tps, const double* g_warp, double scale,
                           long long* acc_pred, T* grad_pred_tps, cudaStream_t stream);

// loss_partial: (B, tiles); gram_partial: (B, tiles, K, K); acc_lowres: (B, K, h, w) int64.
template <typename T>
void semantic_lowres(const T* pred, const T* lowres, const T* gram_basis, const T* gram,
                     const T* saliency, int64_t B, int64_t K1, int64_t H, int64_t W, int64_t h,
                     int64_t w, bool grads, double scale, double* loss_partial, T* grad_pred,
                     long long* acc_lowres, double* gram_partial, cudaStream_t stream);

}  // namespace cuda
}  // namespace scops_fast
