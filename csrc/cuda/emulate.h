// CUDA on the CPU, for checking the kernels of csrc/cuda/ without a GPU (backend
// "cuda_emu"). Included by launch.h when SCOPS_FAST_CUDA_EMU is defined, so the same .cu
// sources compile as plain C++:
// - a grid runs its blocks one after another, in an order shuffled at every launch;
// - a block runs as a team of blockDim fibers (ucontext) on the launching thread: each runs
//   until its next __syncthreads() or its end, in an order shuffled again at every
//   barrier, so a result that depends on which thread writes first differs between runs;
// - __syncthreads() is a barrier of the team; a thread that has returned counts as
//   arrived, as on current GPUs;
// - __shared__ storage exists once (blocks never overlap, launches are serialised);
// - atomics are the compiler's atomics;
// - threadIdx, blockIdx, blockDim and gridDim are what CUDA gives.
// Fibers, not OS threads: a team of 256 OS threads meeting at a barrier cost a futex wake
// and a reschedule per thread per barrier, and under a second busy process a launch
// slowed from 9 s to 60 s, with most of the time in the kernel.
// Anything else fails to compile (no warp intrinsics, no dynamic shared memory, no
// streams) or throws at launch: a launch a GPU refuses (a grid or block dimension of 0,
// gridDim.x above 2^31 - 1, gridDim.y or .z above 65535, a block above 1024 threads or
// blockDim above (1024, 1024, 64)) throws here before any block runs, so the CPU tests
// catch it. Tests may lower the y/z limit (`grid_yz_limit`) to reach the launchers'
// batch chunking with a few images instead of 65536.
// It proves arithmetic, indexing, reductions, determinism under reordering and that the
// launch geometry stays within CUDA's limits, not performance, the GPU memory model or
// resource limits (registers, shared memory per block).
#pragma once

#include <ucontext.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
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

// Set by the scheduler before it resumes a fiber: fibers share the launching OS thread.
inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

namespace scops_fast {
namespace emu {

struct DeviceGuard {
  template <typename Device>
  explicit DeviceGuard(const Device&) {}
};

// Launches are serialised: __shared__ storage is one per kernel.
inline std::mutex& launch_mutex() {
  static std::mutex mutex;
  return mutex;
}

inline std::mt19937_64& rng() {
  static std::mt19937_64 engine{std::random_device{}()};
  return engine;
}

// The order blocks run in: a fresh shuffle at every launch, so a result that depends on
// block order shows up as a difference between runs.
inline std::vector<uint3> block_order(const dim3& grid) {
  std::vector<uint3> order;
  order.reserve(size_t(grid.x) * grid.y * grid.z);
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) order.push_back({x, y, z});
  std::shuffle(order.begin(), order.end(), rng());
  return order;
}

struct Fiber {
  ucontext_t context;
  uint3 index;
  bool done = false;
};

// One block's threads. The scheduler resumes every live fiber once per barrier phase.
struct Team {
  ucontext_t scheduler;
  std::vector<Fiber> fibers;
  Fiber* current = nullptr;
  const std::function<void()>* body = nullptr;
  std::exception_ptr error;
};

inline thread_local Team* active_team = nullptr;

// Kernels keep a few dozen values in "registers": 256 KiB leaves room for the
// sanitizers' redzones (scripts/sanitize.py). Kept across launches; pages are touched
// only as deep as a kernel goes.
constexpr size_t kStackBytes = 256 * 1024;
inline std::vector<std::unique_ptr<char[]>>& stacks(size_t count) {
  static std::vector<std::unique_ptr<char[]>> pool;
  while (pool.size() < count) pool.emplace_back(new char[kStackBytes]);
  return pool;
}

inline void fiber_entry() {
  Team* team = active_team;
  try {
    (*team->body)();
  } catch (...) {
    if (!team->error) team->error = std::current_exception();
  }
  team->current->done = true;
  // Returning resumes the scheduler (uc_link).
}

// CUDA's limit on gridDim.y and gridDim.z (every compute capability since 3.0). Only
// tests lower it, through the emulated library's `emu_set_grid_yz_limit` op, so that a
// batch of a few images crosses it; launch.h's max_grid_yz() reads it.
inline std::atomic<unsigned>& grid_yz_limit() {
  static std::atomic<unsigned> limit{65535};
  return limit;
}

inline std::string dims(const dim3& d) {
  return "(" + std::to_string(d.x) + ", " + std::to_string(d.y) + ", " + std::to_string(d.z) +
         ")";
}

// What cudaLaunchKernel refuses with cudaErrorInvalidConfiguration: the launch must throw
// here too, or a launcher that reaches it would pass every CPU test and fail on a GPU.
inline void check_launch(const dim3& grid, const dim3& block) {
  const size_t threads = size_t(block.x) * block.y * block.z;
  if (threads == 0 || threads > 1024 || block.x > 1024 || block.y > 1024 || block.z > 64)
    throw std::invalid_argument("cuda_emu: block " + dims(block) +
                                " is not a valid CUDA block (1 to 1024 threads, at most "
                                "(1024, 1024, 64))");
  const unsigned yz = grid_yz_limit().load();
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 2147483647u || grid.y > yz ||
      grid.z > yz)
    throw std::invalid_argument("cuda_emu: grid " + dims(grid) +
                                " is not a valid CUDA grid (every dimension at least 1, x at "
                                "most 2147483647, y and z at most " +
                                std::to_string(yz) + ")");
}

template <typename Kernel, typename... Args>
void launch(dim3 grid, dim3 block, Kernel kernel, Args... args) {
  check_launch(grid, block);
  const size_t threads = size_t(block.x) * block.y * block.z;
  std::lock_guard<std::mutex> lock(launch_mutex());
  const auto order = block_order(grid);
  auto& stack = stacks(threads);
  const std::function<void()> body = [&] { kernel(args...); };
  Team team;
  team.body = &body;
  team.fibers.resize(threads);
  for (size_t t = 0; t < threads; ++t)
    team.fibers[t].index = {unsigned(t % block.x), unsigned(t / block.x % block.y),
                            unsigned(t / (size_t(block.x) * block.y))};
  blockDim = block;
  gridDim = grid;
  active_team = &team;
  std::vector<size_t> live(threads);
  for (const uint3& b : order) {
    blockIdx = b;
    for (size_t t = 0; t < threads; ++t) {
      Fiber& f = team.fibers[t];
      f.done = false;
      getcontext(&f.context);
      f.context.uc_stack.ss_sp = stack[t].get();
      f.context.uc_stack.ss_size = kStackBytes;
      f.context.uc_link = &team.scheduler;
      makecontext(&f.context, fiber_entry, 0);
    }
    live.resize(threads);
    std::iota(live.begin(), live.end(), size_t(0));
    // One barrier phase per round: every live thread runs to its next barrier or its end.
    while (!live.empty()) {
      std::shuffle(live.begin(), live.end(), rng());
      for (size_t t : live) {
        team.current = &team.fibers[t];
        threadIdx = team.current->index;
        swapcontext(&team.scheduler, &team.current->context);
      }
      std::erase_if(live, [&](size_t t) { return team.fibers[t].done; });
    }
  }
  team.current = nullptr;
  active_team = nullptr;
  if (team.error) std::rethrow_exception(team.error);
}

}  // namespace emu
}  // namespace scops_fast

inline void __syncthreads() {
  scops_fast::emu::Team* team = scops_fast::emu::active_team;
  if (team == nullptr || team->current == nullptr)
    throw std::logic_error("cuda_emu: __syncthreads() outside a kernel");
  // Back to the scheduler, which resumes this thread once the whole team has arrived.
  swapcontext(&team->current->context, &team->scheduler);
}

inline unsigned long long atomicAdd(unsigned long long* address, unsigned long long value) {
  return __atomic_fetch_add(address, value, __ATOMIC_RELAXED);
}

inline long long __double2ll_rn(double v) { return std::llrint(v); }

using std::max;
using std::min;
