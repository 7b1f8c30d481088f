// What every CUDA family shares: launch geometry, the one launch macro,
// the device guard and the registration macro. The same sources build twice:
// with nvcc for GPUs (namespace scops_fast, CUDA dispatch key), and as plain C++ with
// SCOPS_FAST_CUDA_EMU for the CPU emulation (emulate.h; namespace scops_fast_cuda_emu, CPU
// key), which the test suite runs as backend "cuda_emu".
#pragma once

#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#if defined(SCOPS_FAST_CUDA_EMU)
#include "emulate.h"
#else
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime.h>
#endif

#include "common.h"
#include "dtype_dispatch.h"

namespace scops_fast {
namespace cuda {

// Pixels per block; every reduction over pixels is a fixed-shape tree within a block
// followed by a fixed-order sum over blocks, so results never depend on scheduling.
constexpr int kThreads = 256;
// Logit channels (K + 1) a thread keeps in registers (scops_fast/backends/cuda.py's
// MAX_CHANNELS: "auto" sends larger inputs elsewhere).
constexpr int kMaxChannels = 33;

inline int64_t tiles_of(int64_t pixels) { return (pixels + kThreads - 1) / kThreads; }

// gridDim.x may reach 2^31 - 1; a larger count cast to unsigned would launch a fraction
// of the blocks without a word.
inline unsigned grid_x(int64_t blocks) {
  TORCH_CHECK(blocks <= 2147483647, "scops_fast cuda: ", blocks,
              " blocks exceed CUDA's gridDim.x limit of 2^31 - 1");
  return unsigned(blocks);
}
inline unsigned blocks_for(int64_t n) { return grid_x((n + kThreads - 1) / kThreads); }

// CUDA caps gridDim.y (and z) at 65535 (the emulation's tests lower it, emulate.h).
inline int64_t max_grid_yz() {
#if defined(SCOPS_FAST_CUDA_EMU)
  return int64_t(emu::grid_yz_limit().load());
#else
  return 65535;
#endif
}

// Grids that put the batch on y: launch(first, count) for consecutive runs of at most
// max_grid_yz() images, so that any batch launches; one run below the limit.
template <typename Launch>
void over_batch(int64_t batch, Launch&& launch) {
  const int64_t step = max_grid_yz();
  for (int64_t first = 0; first < batch; first += step)
    launch(first, std::min(step, batch - first));
}

#if defined(SCOPS_FAST_CUDA_EMU)
// Every launch runs through here, so the emulation sees each one (emulate.h).
#define SF_LAUNCH(kernel, grid, block, ...) \
  ::scops_fast::emu::launch((grid), (block), kernel, __VA_ARGS__)
#define SF_CUDA_LIBRARY_IMPL(m) TORCH_LIBRARY_IMPL(scops_fast_cuda_emu, CPU, m)
using DeviceGuard = emu::DeviceGuard;
#else
#define SF_LAUNCH(kernel, grid, block, ...)                                               \
  do {                                                                                    \
    kernel<<<(grid), (block), 0, ::at::cuda::getCurrentCUDAStream()>>>(__VA_ARGS__);     \
    C10_CUDA_KERNEL_LAUNCH_CHECK();                                                       \
  } while (0)
#define SF_CUDA_LIBRARY_IMPL(m) TORCH_LIBRARY_IMPL(scops_fast, CUDA, m)
using DeviceGuard = c10::cuda::CUDAGuard;
#endif

inline void check_channels(int64_t channels) {
  TORCH_CHECK(channels <= kMaxChannels, "scops_fast cuda: at most ", kMaxChannels - 1,
              " parts are supported, got ", channels - 1);
}

// The first n of the closed-form eps terms (common.h), on the tensors' device.
inline at::Tensor eps_terms(int64_t H, int64_t W, int64_t n, const at::TensorOptions& opts) {
  double all[4];
  eps_moment_terms(H, W, all);
  return at::tensor(std::vector<double>(all, all + n), at::kDouble).to(opts.device());
}

// Fixed-shape tree sum over the block; every thread gets the total.
__device__ inline double block_sum(double v, double* shared) {
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

// Channel softmax of one pixel into registers, or the probabilities as given.
template <typename T>
__device__ inline void load_probs(const T* z, int64_t plane, int channels, bool from_logits,
                                  T* p) {
  if (from_logits) {
    softmax_into(z, plane, channels, p);
  } else {
    for (int c = 0; c < channels; ++c) p[c] = z[c * plane];
  }
}

}  // namespace cuda
}  // namespace scops_fast
