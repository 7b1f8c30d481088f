// CUDA on the CPU, for checking the kernels of csrc/cuda/ without a GPU (backend
// "cuda_emu"). Included by launch.h when SCOPS_FAST_CUDA_EMU is defined, so the same .cu
// sources compile as plain C++:
// - a grid runs its blocks one after another, in an order shuffled at every launch;
// - a block runs as a team of blockDim OS threads, which the OS interleaves as it likes;
// - __syncthreads() is a barrier of the team; a thread that has returned counts as
//   arrived, as on current GPUs;
// - __shared__ storage exists once (blocks never overlap, launches are serialised);
// - atomics are the compiler's atomics;
// - threadIdx, blockIdx, blockDim and gridDim are what CUDA gives.
// Anything else fails to compile (no warp intrinsics, no dynamic shared memory, no
// streams) or throws at launch (a block of more than 1024 threads, an empty grid).
// It proves arithmetic, indexing, reductions and determinism under reordering, not
// performance, the GPU memory model or a device's launch limits.
#pragma once

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <memory>
#include <mutex>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
// One instance per kernel: blocks run one at a time and launches are serialised.
#define __shared__ static

struct uint3 {
  unsigned x = 0, y = 0, z = 0;
};
struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

namespace scops_fast {
namespace emu {

inline thread_local std::barrier<>* block_barrier = nullptr;

struct DeviceGuard {
  template <typename Device>
  explicit DeviceGuard(const Device&) {}
};

// Launches are serialised: __shared__ storage is one per kernel.
inline std::mutex& launch_mutex() {
  static std::mutex mutex;
  return mutex;
}

// The order blocks run in: a fresh shuffle at every launch, so a result that depends on
// block order shows up as a difference between runs.
inline std::vector<uint3> block_order(const dim3& grid) {
  std::vector<uint3> order;
  order.reserve(size_t(grid.x) * grid.y * grid.z);
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) order.push_back({x, y, z});
  static std::mt19937_64 rng{std::random_device{}()};
  std::shuffle(order.begin(), order.end(), rng);
  return order;
}

template <typename Kernel, typename... Args>
void launch(dim3 grid, dim3 block, Kernel kernel, Args... args) {
  const size_t threads = size_t(block.x) * block.y * block.z;
  const size_t blocks = size_t(grid.x) * grid.y * grid.z;
  if (threads == 0 || threads > 1024)
    throw std::invalid_argument("cuda_emu: a block needs 1 to 1024 threads, got " +
                                std::to_string(threads));
  if (blocks == 0) return;  // CUDA refuses an empty grid; the kernels never launch one
  std::lock_guard<std::mutex> lock(launch_mutex());
  const auto order = block_order(grid);
  std::vector<std::unique_ptr<std::barrier<>>> syncs;
  syncs.reserve(order.size());
  for (size_t i = 0; i < order.size(); ++i)
    syncs.push_back(std::make_unique<std::barrier<>>(std::ptrdiff_t(threads)));
  std::barrier<> block_done{std::ptrdiff_t(threads)};
  auto team_member = [&](size_t t) {
    threadIdx = {unsigned(t % block.x), unsigned(t / block.x % block.y),
                 unsigned(t / (size_t(block.x) * block.y))};
    blockDim = block;
    gridDim = grid;
    for (size_t i = 0; i < order.size(); ++i) {
      blockIdx = order[i];
      block_barrier = syncs[i].get();
      kernel(args...);
      // Returned: no longer waited for by this block's __syncthreads().
      syncs[i]->arrive_and_drop();
      // The next block starts when every thread of this one is done with __shared__.
      block_done.arrive_and_wait();
    }
    block_barrier = nullptr;
  };
  std::vector<std::thread> team;
  team.reserve(threads);
  for (size_t t = 0; t < threads; ++t) team.emplace_back(team_member, t);
  for (auto& member : team) member.join();
}

}  // namespace emu
}  // namespace scops_fast

inline void __syncthreads() {
  if (scops_fast::emu::block_barrier == nullptr)
    throw std::logic_error("cuda_emu: __syncthreads() outside a kernel");
  scops_fast::emu::block_barrier->arrive_and_wait();
}

inline unsigned long long atomicAdd(unsigned long long* address, unsigned long long value) {
  return __atomic_fetch_add(address, value, __ATOMIC_RELAXED);
}

inline long long __double2ll_rn(double v) { return std::llrint(v); }

using std::max;
using std::min;
