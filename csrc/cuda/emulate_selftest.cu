// A check of the emulation itself (emulate.h), built into the emulated library only:
// `scops_fast_cuda_emu::emu_selftest(blocks)` launches `blocks` blocks of kThreads threads.
// Each thread writes its slot of __shared__ memory, waits at __syncthreads() and reads its
// neighbour's slot (a wrong value means the barrier did not hold the team together); the
// first thread then takes a ticket from a global atomic counter, which records the order
// the blocks ran in. Returns (blocks + 1,) int64: the ticket of every block, then the
// number of wrong reads.
#if defined(SCOPS_FAST_CUDA_EMU)
#include "launch.h"

namespace scops_fast {
namespace cuda {
namespace {

__global__ void selftest_kernel(int64_t* tickets, unsigned long long* counter,
                                unsigned long long* wrong) {
  __shared__ int64_t shared[kThreads];
  const unsigned t = threadIdx.x, n = blockDim.x;
  const int64_t base = int64_t(blockIdx.x) * n;
  shared[t] = base + t;
  __syncthreads();
  if (shared[(t + 1) % n] != base + (t + 1) % n) atomicAdd(wrong, 1ull);
  __syncthreads();
  if (t == 0) tickets[blockIdx.x] = int64_t(atomicAdd(counter, 1ull));
}

at::Tensor emu_selftest(int64_t blocks) {
  auto out = at::zeros({blocks + 1}, at::kLong);
  auto counter = at::zeros({2}, at::kLong);
  auto* words = reinterpret_cast<unsigned long long*>(counter.data_ptr<int64_t>());
  SF_LAUNCH(selftest_kernel, unsigned(blocks), kThreads, out.data_ptr<int64_t>(), words,
            words + 1);
  out[blocks] = counter[1];
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(scops_fast_cuda_emu, m) { m.def("emu_selftest(int blocks) -> Tensor"); }

// No tensor argument to dispatch on: one kernel for every key.
TORCH_LIBRARY_IMPL(scops_fast_cuda_emu, CompositeExplicitAutograd, m) {
  m.impl("emu_selftest", &emu_selftest);
}

}  // namespace cuda
}  // namespace scops_fast
#endif
