// Checks of the emulation itself (emulate.h), built into the emulated library only:
// - `scops_fast_cuda_emu::emu_selftest(blocks)` launches `blocks` blocks of kThreads
//   threads. Each thread writes its slot of __shared__ memory, waits at __syncthreads() and
//   reads its neighbour's slot (a wrong value means the barrier did not hold the team
//   together); the first thread then takes a ticket from a global atomic counter, which
//   records the order the blocks ran in. Returns (blocks + 1,) int64: the ticket of every
//   block, then the number of wrong reads.
// - `emu_launch(x, y, z, threads)` launches a grid (x, y, z) of blocks of `threads` threads
//   that only count themselves, and returns the number of threads that ran: a launch CUDA
//   refuses throws instead.
// - `emu_set_grid_yz_limit(limit)`, for tests only: sets the emulation's gridDim.y/z limit
//   (CUDA's 65535 at load) and returns the previous one. Lowered, a batch of a few images
//   reaches the launchers' batch chunking (launch.h's over_batch); restore it afterwards.
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

__global__ void count_kernel(unsigned long long* counter) { atomicAdd(counter, 1ull); }

int64_t emu_launch(int64_t x, int64_t y, int64_t z, int64_t threads) {
  const auto fits = [](int64_t v) { return v >= 0 && v <= int64_t(UINT32_MAX); };
  TORCH_CHECK(fits(x) && fits(y) && fits(z) && fits(threads),
              "emu_launch: dimensions must fit CUDA's unsigned int");
  unsigned long long counter = 0;
  SF_LAUNCH(count_kernel, dim3(unsigned(x), unsigned(y), unsigned(z)), unsigned(threads),
            &counter);
  return int64_t(counter);
}

int64_t emu_set_grid_yz_limit(int64_t limit) {
  TORCH_CHECK(limit >= 1 && limit <= 65535,
              "emu_set_grid_yz_limit: a limit from 1 to CUDA's 65535, got ", limit);
  return int64_t(emu::grid_yz_limit().exchange(unsigned(limit)));
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

TORCH_LIBRARY_FRAGMENT(scops_fast_cuda_emu, m) {
  m.def("emu_selftest(int blocks) -> Tensor");
  m.def("emu_launch(int x, int y, int z, int threads) -> int");
  m.def("emu_set_grid_yz_limit(int limit) -> int");
}

// No tensor argument to dispatch on: one kernel for every key.
TORCH_LIBRARY_IMPL(scops_fast_cuda_emu, CompositeExplicitAutograd, m) {
  m.impl("emu_selftest", &emu_selftest);
  m.impl("emu_launch", &emu_launch);
  m.impl("emu_set_grid_yz_limit", &emu_set_grid_yz_limit);
}

}  // namespace cuda
}  // namespace scops_fast
#endif
