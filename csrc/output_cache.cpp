// Allocation of the CPU kernels' outputs and scratch.
#include <cstdlib>
#include <limits>
#include <map>
#include <mutex>
#include <string>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "torch_glue.h"

namespace scops_fast {
namespace {

// Large outputs (gradient maps) are written once, right after allocation. Below 32 MiB
// glibc serves them from memory the process already has (its mmap threshold adapts up to
// that size), so they cost nothing extra; above it every allocation is a fresh mmap whose
// first-touch page faults and kernel zeroing (4 KiB at a time, ~9000 faults for a B=16,
// K=8, 256x256 map) cost more than the kernel itself, and worse when its threads fault
// side by side. Those outputs get 2 MiB-aligned blocks advised for transparent huge pages
// (a no-op where THP is off), faulted in one huge page at a time before the threads write,
// and a freed block is kept for the next output of the same size (at most kCacheBytes in
// all), as a caching allocator would: a training loop asks for the same sizes every step.
// SCOPS_FAST_HUGE_PAGES=0 turns all of this off. torch's deterministic NaN fill of fresh
// memory is mirrored, so tests that check outputs are fully overwritten still see poisoned
// buffers.
constexpr size_t kHugePage = size_t(2) << 20;
constexpr size_t kFreshMmapBytes = size_t(32) << 20;
constexpr size_t kCacheBytes = size_t(256) << 20;

class BlockCache {
 public:
  void* take(size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto found = blocks_.find(bytes);
    if (found == blocks_.end()) return nullptr;
    void* block = found->second;
    blocks_.erase(found);
    cached_ -= bytes;
    return block;
  }
  void give(void* block, size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (cached_ + bytes <= kCacheBytes) {
        blocks_.emplace(bytes, block);
        cached_ += bytes;
        return;
      }
    }
    std::free(block);
  }

 private:
  std::mutex mutex_;
  std::multimap<size_t, void*> blocks_;
  size_t cached_ = 0;
};

// Never destroyed: tensors may be freed during interpreter shutdown, after statics.
BlockCache& block_cache() {
  static auto* cache = new BlockCache();
  return *cache;
}

void* new_block(size_t bytes) {
  if (void* block = block_cache().take(bytes)) return block;
  void* block = std::aligned_alloc(kHugePage, bytes);
  if (block == nullptr) return nullptr;
#if defined(__linux__)
  madvise(block, bytes, MADV_HUGEPAGE);
#endif
  for (size_t offset = 0; offset < bytes; offset += kHugePage)
    static_cast<volatile char*>(block)[offset] = 0;
  return block;
}

bool huge_pages_enabled() {
  static const bool enabled = [] {
    const char* env = std::getenv("SCOPS_FAST_HUGE_PAGES");
    return env == nullptr || std::string(env) != "0";
  }();
  return enabled;
}

// A tensor on a block from the cache, or undefined if none can be had.
at::Tensor cached_block(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  const size_t nbytes = c10::multiply_integers(sizes) * c10::elementSize(
      c10::typeMetaToScalarType(opts.dtype()));
  const size_t bytes = (nbytes + kHugePage - 1) / kHugePage * kHugePage;
  void* block = new_block(bytes);
  if (block == nullptr) return at::Tensor();
  return at::from_blob(
      block, sizes, [bytes](void* p) { block_cache().give(p, bytes); }, opts);
}

}  // namespace

// Kernel scratch, used within one call and freed at its end: from the block cache at any
// size, since a fresh allocation would fault its pages in on every call.
at::Tensor scratch_buffer(int64_t elems, const at::TensorOptions& opts) {
  if (elems == 0) return at::Tensor();
  if (huge_pages_enabled()) {
    auto block = cached_block({elems}, opts);
    if (block.defined()) return block;
  }
  return at::empty({elems}, opts);
}

at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  const size_t nbytes = c10::multiply_integers(sizes) * c10::elementSize(
      c10::typeMetaToScalarType(opts.dtype()));
  if (!huge_pages_enabled() || !opts.device().is_cpu() || nbytes < kFreshMmapBytes)
    return at::empty(sizes, opts);
  auto out = cached_block(sizes, opts);
  if (!out.defined()) return at::empty(sizes, opts);
  if (at::globalContext().deterministicAlgorithms() &&
      at::globalContext().deterministicFillUninitializedMemory())
    out.fill_(std::numeric_limits<double>::quiet_NaN());
  return out;
}

}  // namespace scops_fast
