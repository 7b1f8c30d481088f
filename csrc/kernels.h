// Declarations of the CPU kernels, one family per .cpp file; bindings.cpp wraps them.
#pragma once

#include "common.h"

#include <algorithm>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace scops_fast {

#if defined(__AVX512F__)
// vexp (common.h) of 16 softmax arguments d = z - max, which are <= 0 or NaN: the same
// steps and constants, so the same bits, but 2^k is applied by vscalefps and d needs no
// upper clamp, which leaves about half the instructions GCC makes of vexp. (Where the
// argument is below -87.3, masked to exactly 0 as vexp does; NaN propagates.)
inline __m512 softmax_exp16(__m512 d) {
  const __m512 shifter = _mm512_set1_ps(kExpShifter);
  const __m512 k =
      _mm512_sub_ps(_mm512_fmadd_ps(d, _mm512_set1_ps(kExpLog2e), shifter), shifter);
  __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(kExpLn2Hi), d);
  r = _mm512_fnmadd_ps(k, _mm512_set1_ps(kExpLn2Lo), r);
  __m512 p = _mm512_set1_ps(1.0f / 720.0f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  const __mmask16 keep = _mm512_cmp_ps_mask(d, _mm512_set1_ps(kExpLowest), _CMP_NLT_UQ);
  return _mm512_maskz_scalef_ps(keep, p, k);
}
#endif

// The exponentials and partition of row_softmax_numerators, once mx holds the maximum.
template <typename T>
inline void row_exp_sum(const T* z, int64_t stride, int64_t channels, int64_t W, T* e,
                        const T* mx, T* sum) {
  std::fill(sum, sum + W, T(0));
  for (int64_t c = 0; c < channels; ++c) {
    const T* zc = z + c * stride;
    T* ec = e + c * W;
#pragma omp simd
    for (int64_t j = 0; j < W; ++j) {
      ec[j] = vexp(zc[j] - mx[j]);
      sum[j] += ec[j];
    }
  }
}

#if defined(__AVX512F__)
template <>
inline void row_exp_sum<float>(const float* z, int64_t stride, int64_t channels, int64_t W,
                               float* e, const float* mx, float* sum) {
  for (int64_t j = 0; j < W; j += 16) {
    const __mmask16 lanes = W - j >= 16 ? __mmask16(0xffff) : __mmask16((1u << (W - j)) - 1);
    const __m512 m = _mm512_maskz_loadu_ps(lanes, mx + j);
    __m512 total = _mm512_setzero_ps();
    for (int64_t c = 0; c < channels; ++c) {
      const __m512 d = _mm512_sub_ps(_mm512_maskz_loadu_ps(lanes, z + c * stride + j), m);
      const __m512 ex = softmax_exp16(d);
      _mm512_mask_storeu_ps(e + c * W + j, lanes, ex);
      total = _mm512_add_ps(total, ex);
    }
    _mm512_mask_storeu_ps(sum + j, lanes, total);
  }
}
#endif

// Unnormalised channel softmax of one image row, vectorised along the row: from
// z[c * stride + j], e[c * W + j] = exp(z_c - max), with the maximum in mx[j] and the
// partition sum_c e in sum[j].
template <typename T>
inline void row_softmax_numerators(const T* z, int64_t stride, int64_t channels, int64_t W,
                                   T* e, T* mx, T* sum) {
  std::copy(z, z + W, mx);
  for (int64_t c = 1; c < channels; ++c) {
    const T* zc = z + c * stride;
#pragma omp simd
    for (int64_t j = 0; j < W; ++j) mx[j] = zc[j] > mx[j] ? zc[j] : mx[j];
  }
  row_exp_sum(z, stride, channels, W, e, mx, sum);
}

// Channel softmax of one image row, vectorised along the row: input z[c * stride + j],
// output probs[c * W + j]; logz[j] (if not null) receives the log-partition so that
// log p_c = z_c - logz. mx and sum are scratch rows of W.
template <typename T>
inline void row_softmax(const T* z, int64_t stride, int64_t channels, int64_t W, T* probs,
                        T* logz, T* mx, T* sum) {
  row_softmax_numerators(z, stride, channels, W, probs, mx, sum);
  if (logz != nullptr) {
#pragma omp simd
    for (int64_t j = 0; j < W; ++j) logz[j] = mx[j] + vlog(sum[j]);
  }
#pragma omp simd
  for (int64_t j = 0; j < W; ++j) sum[j] = T(1) / sum[j];
  for (int64_t c = 0; c < channels; ++c) {
    T* pc = probs + c * W;
#pragma omp simd
    for (int64_t j = 0; j < W; ++j) pc[j] *= sum[j];
  }
}

// ---- moments.cpp: concentration loss and part centres (SPEC sections 2, 3) ----
// For each (b, k): sum over pixels of m * (1, x, y, x^2 + y^2), m = P + 1e-3, where P is
// the softmax part map of logits (from_logits, channels K+1, parts 1..K) or given
// probabilities (channels K). out: (B, K, 4) double.
template <typename T>
void moments_forward(const T* z, int64_t B, int64_t channels, int64_t H, int64_t W,
                     bool from_logits, double* out, ParallelFor pf);
// Gradient of <grad_moments, moments> w.r.t. z. grad: (B, channels, H, W).
template <typename T>
void moments_backward(const T* z, const double* grad_moments, int64_t B, int64_t channels,
                      int64_t H, int64_t W, bool from_logits, T* grad, ParallelFor pf);
// The concentration loss (SPEC section 3) of logits z, returned, with the moments it comes
// from in `moments` (B, K, 4) and, unless grad is null, its gradient w.r.t. z: the softmax
// is computed once for both, an image at a time so that the second pass over it hits the
// cache. `workers`: the number of threads pf runs on. scratch: concentration_scratch_elems
// elements (may be null when that is 0).
template <typename T>
double concentration_fused(const T* z, int64_t B, int64_t channels, int64_t H, int64_t W,
                           double* moments, T* grad, T* scratch, ParallelFor pf,
                           int64_t workers);
int64_t concentration_scratch_elems(int64_t B, int64_t channels, int64_t H, int64_t W,
                                    int64_t itemsize, int64_t workers, bool with_grad);

// Bilinear corners of every pixel of one output row, structure-of-arrays so the
// per-channel sampling loops vectorise: offset -1 marks a corner outside the image
// (zeros padding), which is never read. A pixel whose sampling position is not finite
// has every corner outside and weight[0] = NaN: it reads NaN and scatters nothing.
template <typename T>
struct RowSamples {
  std::vector<int64_t> offset[4];
  std::vector<T> weight[4];
  std::vector<double> gx, gy;  // scratch: sampling positions
  explicit RowSamples(int64_t W) : gx(W), gy(W) {
    for (int c = 0; c < 4; ++c) {
      offset[c].resize(W);
      weight[c].resize(W);
    }
  }
  // Sampling corners of output row i under spline coefficients m (28 x 2).
  void compute(const double* m, const T* radial, int64_t i, int64_t H, int64_t W, bool border);

  // out[c * out_stride + j] = sample of plane c (planes `plane` apart), for c < C.
  void read_row(const T* src, int64_t plane, int64_t C, T* out, int64_t out_stride) const {
    const int64_t W = int64_t(gx.size());
    for (int64_t j = 0; j < W; ++j) {
      const int64_t o0 = offset[0][j], o1 = offset[1][j], o2 = offset[2][j], o3 = offset[3][j];
      const T w0 = weight[0][j], w1 = weight[1][j], w2 = weight[2][j], w3 = weight[3][j];
      if ((o0 | o1 | o2 | o3) >= 0) {  // all four corners inside: the common case
        for (int64_t c = 0; c < C; ++c) {
          const T* p = src + c * plane;
          out[c * out_stride + j] = w0 * p[o0] + w1 * p[o1] + w2 * p[o2] + w3 * p[o3];
        }
      } else {
        for (int64_t c = 0; c < C; ++c) {
          const T* p = src + c * plane;
          // T(0) * w0 is 0, or NaN for a non-finite position (see above).
          out[c * out_stride + j] = (o0 >= 0 ? w0 * p[o0] : T(0) * w0) +
                                    (o1 >= 0 ? w1 * p[o1] : T(0)) +
                                    (o2 >= 0 ? w2 * p[o2] : T(0)) + (o3 >= 0 ? w3 * p[o3] : T(0));
        }
      }
    }
  }
  // Adjoint of read_row: dst plane c += spread of g[c * g_stride + j]. Plane by plane,
  // so the read-modify-writes of consecutive pixels stay within one cached region.
  void scatter_row(T* dst, int64_t plane, int64_t C, const T* g, int64_t g_stride) const {
    const int64_t W = int64_t(gx.size());
    for (int64_t c = 0; c < C; ++c) {
      T* p = dst + c * plane;
      const T* gc = g + c * g_stride;
      for (int64_t j = 0; j < W; ++j) {
        const int64_t o0 = offset[0][j], o1 = offset[1][j], o2 = offset[2][j], o3 = offset[3][j];
        const T v = gc[j];
        if ((o0 | o1 | o2 | o3) >= 0) {
          p[o0] += weight[0][j] * v;
          p[o1] += weight[1][j] * v;
          p[o2] += weight[2][j] * v;
          p[o3] += weight[3][j] * v;
        } else {
          if (o0 >= 0) p[o0] += weight[0][j] * v;
          if (o1 >= 0) p[o1] += weight[1][j] * v;
          if (o2 >= 0) p[o2] += weight[2][j] * v;
          if (o3 >= 0) p[o3] += weight[3][j] * v;
        }
      }
    }
  }
};

// ---- tps_warp.cpp: grid-free thin-plate-spline warp (SPEC section 6) ----
// mapping: (B, 28, 2) double spline coefficients; radial: (25, H, W) U terms of every
// output pixel (batch-independent, cached by the caller). out/x: (B, C, H, W).
template <typename T>
void tps_warp_forward(const T* x, const double* mapping, const T* radial, int64_t B, int64_t C,
                      int64_t H, int64_t W, bool border, T* out, ParallelFor pf);
// Adjoint w.r.t. x: each batch element is owned by one task, which scatters its
// pixels in a fixed order (race-free, deterministic).
template <typename T>
void tps_warp_backward(const T* grad_out, const double* mapping, const T* radial, int64_t B,
                       int64_t C, int64_t H, int64_t W, bool border, T* grad_x, ParallelFor pf);

// ---- equivariance.cpp: fused SPEC section 7 ----
// kl: (B) sums of q (log q - log p_tps) over channels and pixels; mom_tps, mom_warp:
// (B, K, 3) sums of (P + 1e-3) * (1, x, y) of the parts of softmax(pred_tps) and of
// softmax(warp(pred)); warped_out: warp(pred), kept for the backward.
template <typename T>
void equivariance_forward(const T* pred, const T* pred_tps, const double* mapping,
                          const T* radial, int64_t B, int64_t K1, int64_t H, int64_t W,
                          bool border, double* kl, double* mom_tps, double* mom_warp,
                          T* warped_out, ParallelFor pf);
// Gradients of <g_kl, kl> + <g_tps, mom_tps> + <g_warp, mom_warp>: w.r.t. pred_tps, and
// w.r.t. pred through the warp of the landmark term (the KL target is detached).
template <typename T>
void equivariance_backward(const T* pred, const T* warped, const T* pred_tps,
                           const double* mapping, const T* radial, int64_t B, int64_t K1, int64_t H, int64_t W,
                           bool border, const double* g_kl, const double* g_tps,
                           const double* g_warp, T* grad_pred, T* grad_pred_tps,
                           ParallelFor pf);

// ---- semantic.cpp: SPEC section 4 ----
// Dense: loss = sum over b, c, pixels of (sum_k P_k W_kc - V_c)^2, and when grads is true
// its gradients w.r.t. the logits and W, computed in the same single pass over V.
template <typename T>
double semantic_dense(const T* features, const T* pred, const T* basis, int64_t B, int64_t C,
                      int64_t K1, int64_t H, int64_t W, bool grads, T* grad_pred,
                      double* grad_basis, ParallelFor pf);
// Low resolution, exact: per pixel P^T G P - 2 S P.U(A) + S^2 |U V|^2 with G = W W^T,
// A = W V at (h, w) and |U V|^2 from the neighbour Gram maps gram (B, 5, h, w):
// <V(y,x),V(y,x)>, <V(y,x),V(y,x+1)>, <V(y,x),V(y+1,x)>, <V(y,x),V(y+1,x+1)>,
// <V(y,x+1),V(y+1,x)>, neighbours clamped at the edge. saliency may be null.
template <typename T>
double semantic_lowres(const T* pred, const T* lowres, const T* gram_basis, const T* gram,
                       const T* saliency, int64_t B, int64_t K1, int64_t H, int64_t W,
                       int64_t h, int64_t w, bool grads, T* grad_pred, double* grad_lowres,
                       double* grad_gram_basis, ParallelFor pf);

}  // namespace scops_fast
