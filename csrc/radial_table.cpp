// The TPS radial terms per image size, computed once (torch_glue.h).
#include <map>
#include <mutex>
#include <tuple>

#include "torch_glue.h"

namespace scops_fast {

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

}  // namespace scops_fast
