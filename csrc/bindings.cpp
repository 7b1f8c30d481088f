// Registers every CPU kernel as a torch custom op in the `scops_fast` namespace.
// Shapes and dtypes are checked by the Python face before any op runs; here we only
// make inputs contiguous, allocate outputs and dispatch on float / double.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdlib>
#include <limits>
#include <map>
#include <string>
#include <mutex>
#include <tuple>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "kernels.h"

namespace scops_fast {
namespace {

void aten_parallel(int64_t n, const RangeFn& body) {
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) { body(begin, end); });
}

#define SF_DISPATCH(dtype, ...)                                                 \
  [&] {                                                                         \
    if ((dtype) == at::kDouble) {                                               \
      using scalar_t = double;                                                  \
      return __VA_ARGS__();                                                     \
    }                                                                           \
    TORCH_CHECK((dtype) == at::kFloat, "scops_fast: expected float32 or float64, got ", \
                (dtype));                                                       \
    using scalar_t = float;                                                     \
    return __VA_ARGS__();                                                       \
  }()

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

at::Tensor empty_output_like(const at::Tensor& x) { return empty_output(x.sizes(), x.options()); }

at::Tensor f64(const at::Tensor& t) { return t.to(at::kDouble).contiguous(); }

// The 25 radial terms of every output pixel, (25, H, W): they depend only on the image
// size, so they are computed once per (H, W, dtype) and kept, unlike a per-batch grid.
at::Tensor radial_table(int64_t H, int64_t W, at::ScalarType dtype) {
  static std::mutex mutex;
  static std::map<std::tuple<int64_t, int64_t, int>, at::Tensor> cache;
  const auto key = std::make_tuple(H, W, static_cast<int>(dtype));
  std::lock_guard<std::mutex> lock(mutex);
  auto found = cache.find(key);
  if (found != cache.end()) return found->second;
  auto table = at::empty({kControl, H, W}, at::TensorOptions().dtype(at::kDouble));
  double* u = table.data_ptr<double>();
  at::parallel_for(0, H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i)
      for (int a = 0; a < kControl; ++a)
        for (int64_t j = 0; j < W; ++j) {
          const double dx = corner_coord(j, W) - target_x(a);
          const double dy = corner_coord(i, H) - target_y(a);
          u[(a * H + i) * W + j] = tps_radial(dx * dx + dy * dy);
        }
  });
  if (cache.size() >= 16) cache.clear();  // bounded: a run uses a handful of sizes
  return cache[key] = table.to(dtype);
}

at::Tensor softmax_moments_op(const at::Tensor& x_, bool from_logits) {
  const auto x = x_.contiguous();
  const int64_t B = x.size(0), channels = x.size(1), H = x.size(2), W = x.size(3);
  auto out = at::empty({B, from_logits ? channels - 1 : channels, 4}, x.options().dtype(at::kDouble));
  SF_DISPATCH(x.scalar_type(), [&] {
    moments_forward<scalar_t>(x.data_ptr<scalar_t>(), B, channels, H, W, from_logits,
                              out.data_ptr<double>(), aten_parallel);
  });
  return out;
}

at::Tensor softmax_moments_backward_op(const at::Tensor& x_, const at::Tensor& grad_moments,
                                    bool from_logits) {
  const auto x = x_.contiguous();
  const auto g = f64(grad_moments);
  auto grad = empty_output_like(x);
  SF_DISPATCH(x.scalar_type(), [&] {
    moments_backward<scalar_t>(x.data_ptr<scalar_t>(), g.data_ptr<double>(), x.size(0),
                               x.size(1), x.size(2), x.size(3), from_logits,
                               grad.data_ptr<scalar_t>(), aten_parallel);
  });
  return grad;
}

// The concentration loss in one op: (loss, moments, gradient for a unit upstream
// gradient, or an empty tensor without with_grad). The gradient is produced here, not in a
// backward op, because the forward has the softmax in cache; autograd only scales it.
std::tuple<at::Tensor, at::Tensor, at::Tensor> concentration_op(const at::Tensor& x_,
                                                                bool with_grad) {
  const auto x = x_.contiguous();
  const int64_t B = x.size(0), channels = x.size(1), H = x.size(2), W = x.size(3);
  auto moments = at::empty({B, channels - 1, 4}, x.options().dtype(at::kDouble));
  auto grad = with_grad ? empty_output_like(x) : at::empty({0}, x.options());
  const int64_t workers = at::get_num_threads();
  const auto scratch = scratch_buffer(
      concentration_scratch_elems(B, channels, H, W, x.element_size(), workers, with_grad),
      x.options());
  double loss = 0;
  SF_DISPATCH(x.scalar_type(), [&] {
    loss = concentration_fused<scalar_t>(
        x.data_ptr<scalar_t>(), B, channels, H, W, moments.data_ptr<double>(),
        with_grad ? grad.data_ptr<scalar_t>() : nullptr,
        scratch.defined() ? scratch.data_ptr<scalar_t>() : nullptr, aten_parallel, workers);
  });
  return {at::scalar_tensor(loss, x.options().dtype(at::kDouble)), moments, grad};
}

at::Tensor tps_warp_op(const at::Tensor& x_, const at::Tensor& mapping, bool border) {
  const auto x = x_.contiguous();
  const auto m = f64(mapping);
  const auto u = radial_table(x.size(2), x.size(3), x.scalar_type());
  auto out = empty_output_like(x);
  SF_DISPATCH(x.scalar_type(), [&] {
    tps_warp_forward<scalar_t>(x.data_ptr<scalar_t>(), m.data_ptr<double>(),
                               u.data_ptr<scalar_t>(), x.size(0), x.size(1), x.size(2),
                               x.size(3), border, out.data_ptr<scalar_t>(), aten_parallel);
  });
  return out;
}

at::Tensor tps_warp_backward_op(const at::Tensor& grad_out_, const at::Tensor& mapping,
                                bool border) {
  const auto g = grad_out_.contiguous();
  const auto m = f64(mapping);
  const auto u = radial_table(g.size(2), g.size(3), g.scalar_type());
  auto grad = empty_output_like(g);
  SF_DISPATCH(g.scalar_type(), [&] {
    tps_warp_backward<scalar_t>(g.data_ptr<scalar_t>(), m.data_ptr<double>(),
                                u.data_ptr<scalar_t>(), g.size(0), g.size(1), g.size(2),
                                g.size(3), border, grad.data_ptr<scalar_t>(), aten_parallel);
  });
  return grad;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> equivariance_op(const at::Tensor& pred_,
                                                            const at::Tensor& pred_tps_,
                                                               const at::Tensor& mapping,
                                                               bool border) {
  const auto pred = pred_.contiguous();
  const auto pred_tps = pred_tps_.to(pred.scalar_type()).contiguous();
  const auto m = f64(mapping);
  const auto u = radial_table(pred.size(2), pred.size(3), pred.scalar_type());
  const int64_t B = pred.size(0), K1 = pred.size(1), H = pred.size(2), W = pred.size(3);
  const auto opts = pred.options().dtype(at::kDouble);
  auto kl = at::empty({B}, opts);
  auto mom_tps = at::empty({B, K1 - 1, 3}, opts);
  auto mom_warp = at::empty({B, K1 - 1, 3}, opts);
  auto warped = empty_output_like(pred);
  SF_DISPATCH(pred.scalar_type(), [&] {
    equivariance_forward<scalar_t>(pred.data_ptr<scalar_t>(), pred_tps.data_ptr<scalar_t>(),
                                   m.data_ptr<double>(), u.data_ptr<scalar_t>(), B, K1, H, W,
                                   border, kl.data_ptr<double>(), mom_tps.data_ptr<double>(),
                                   mom_warp.data_ptr<double>(), warped.data_ptr<scalar_t>(),
                                   aten_parallel);
  });
  return {kl, mom_tps, mom_warp, warped};
}

std::tuple<at::Tensor, at::Tensor> equivariance_backward_op(
    const at::Tensor& pred_, const at::Tensor& warped_, const at::Tensor& pred_tps_,
    const at::Tensor& mapping, bool border, const at::Tensor& g_kl, const at::Tensor& g_tps,
    const at::Tensor& g_warp) {
  const auto pred = pred_.contiguous();
  const auto warped = warped_.to(pred.scalar_type()).contiguous();
  const auto pred_tps = pred_tps_.to(pred.scalar_type()).contiguous();
  const auto m = f64(mapping);
  const auto u = radial_table(pred.size(2), pred.size(3), pred.scalar_type());
  const auto gk = f64(g_kl), gt = f64(g_tps), gw = f64(g_warp);
  auto grad_pred = empty_output_like(pred);
  auto grad_pred_tps = empty_output_like(pred_tps);
  SF_DISPATCH(pred.scalar_type(), [&] {
    equivariance_backward<scalar_t>(
        pred.data_ptr<scalar_t>(), warped.data_ptr<scalar_t>(), pred_tps.data_ptr<scalar_t>(),
        m.data_ptr<double>(), u.data_ptr<scalar_t>(), pred.size(0), pred.size(1), pred.size(2), pred.size(3), border,
        gk.data_ptr<double>(), gt.data_ptr<double>(), gw.data_ptr<double>(),
        grad_pred.data_ptr<scalar_t>(), grad_pred_tps.data_ptr<scalar_t>(), aten_parallel);
  });
  return {grad_pred, grad_pred_tps};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> semantic_dense_op(const at::Tensor& features_,
                                                                 const at::Tensor& pred_,
                                                                 const at::Tensor& basis_,
                                                                 bool grads) {
  const auto pred = pred_.contiguous();
  const auto features = features_.to(pred.scalar_type()).contiguous();
  const auto basis = basis_.to(pred.scalar_type()).contiguous();
  const int64_t B = pred.size(0), K1 = pred.size(1), H = pred.size(2), W = pred.size(3);
  const int64_t C = features.size(1);
  auto grad_pred = grads ? empty_output_like(pred) : at::empty({0}, pred.options());
  auto grad_basis = at::zeros({grads ? K1 - 1 : 0, C}, pred.options().dtype(at::kDouble));
  double loss = 0;
  SF_DISPATCH(pred.scalar_type(), [&] {
    loss = semantic_dense<scalar_t>(features.data_ptr<scalar_t>(), pred.data_ptr<scalar_t>(),
                                    basis.data_ptr<scalar_t>(), B, C, K1, H, W, grads,
                                    grads ? grad_pred.data_ptr<scalar_t>() : nullptr,
                                    grads ? grad_basis.data_ptr<double>() : nullptr,
                                    aten_parallel);
  });
  return {at::scalar_tensor(loss, pred.options().dtype(at::kDouble)), grad_pred,
          grad_basis.to(pred.scalar_type())};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> semantic_lowres_op(
    const at::Tensor& pred_, const at::Tensor& lowres_, const at::Tensor& gram_basis_,
    const at::Tensor& gram_, const std::optional<at::Tensor>& saliency_, bool grads) {
  const auto pred = pred_.contiguous();
  const auto dtype = pred.scalar_type();
  const auto lowres = lowres_.to(dtype).contiguous();
  const auto gram_basis = gram_basis_.to(dtype).contiguous();
  const auto gram = gram_.to(dtype).contiguous();
  at::Tensor saliency;
  if (saliency_.has_value()) saliency = saliency_->to(dtype).contiguous();
  const int64_t B = pred.size(0), K1 = pred.size(1), H = pred.size(2), W = pred.size(3);
  const int64_t h = lowres.size(2), w = lowres.size(3);
  const auto f64opts = pred.options().dtype(at::kDouble);
  auto grad_pred = grads ? empty_output_like(pred) : at::empty({0}, pred.options());
  auto grad_lowres = at::zeros(grads ? at::IntArrayRef{B, K1 - 1, h, w} : at::IntArrayRef{0},
                               f64opts);
  auto grad_gram = at::zeros(grads ? at::IntArrayRef{K1 - 1, K1 - 1} : at::IntArrayRef{0},
                             f64opts);
  double loss = 0;
  SF_DISPATCH(dtype, [&] {
    loss = semantic_lowres<scalar_t>(
        pred.data_ptr<scalar_t>(), lowres.data_ptr<scalar_t>(), gram_basis.data_ptr<scalar_t>(),
        gram.data_ptr<scalar_t>(), saliency.defined() ? saliency.data_ptr<scalar_t>() : nullptr,
        B, K1, H, W, h, w, grads, grads ? grad_pred.data_ptr<scalar_t>() : nullptr,
        grads ? grad_lowres.data_ptr<double>() : nullptr,
        grads ? grad_gram.data_ptr<double>() : nullptr, aten_parallel);
  });
  return {at::scalar_tensor(loss, f64opts), grad_pred, grad_lowres.to(dtype),
          grad_gram.to(dtype)};
}

}  // namespace

TORCH_LIBRARY(scops_fast, m) {
  m.def("softmax_moments(Tensor x, bool from_logits) -> Tensor");
  m.def("softmax_moments_backward(Tensor x, Tensor grad_moments, bool from_logits) -> Tensor");
  m.def("concentration(Tensor x, bool with_grad) -> (Tensor, Tensor, Tensor)");
  m.def("tps_warp(Tensor x, Tensor mapping, bool border) -> Tensor");
  m.def("tps_warp_backward(Tensor grad_out, Tensor mapping, bool border) -> Tensor");
  m.def(
      "equivariance(Tensor pred, Tensor pred_tps, Tensor mapping, bool border)"
      " -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "equivariance_backward(Tensor pred, Tensor warped, Tensor pred_tps, Tensor mapping, "
      "bool border, Tensor g_kl, Tensor g_tps, Tensor g_warp) -> (Tensor, Tensor)");
  m.def(
      "semantic_dense(Tensor features, Tensor pred, Tensor basis, bool grads)"
      " -> (Tensor, Tensor, Tensor)");
  m.def(
      "semantic_lowres(Tensor pred, Tensor lowres, Tensor gram_basis, Tensor gram, "
      "Tensor? saliency, bool grads) -> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(scops_fast, CPU, m) {
  m.impl("softmax_moments", &softmax_moments_op);
  m.impl("softmax_moments_backward", &softmax_moments_backward_op);
  m.impl("concentration", &concentration_op);
  m.impl("tps_warp", &tps_warp_op);
  m.impl("tps_warp_backward", &tps_warp_backward_op);
  m.impl("equivariance", &equivariance_op);
  m.impl("equivariance_backward", &equivariance_backward_op);
  m.impl("semantic_dense", &semantic_dense_op);
  m.impl("semantic_lowres", &semantic_lowres_op);
}

}  // namespace scops_fast
