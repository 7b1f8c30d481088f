// Channel softmax of one image row, vectorised along the row, and its AVX-512 exponential:
// the inner loop every CPU family (concentration, equivariance, semantic) runs per pixel.
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

}  // namespace scops_fast
