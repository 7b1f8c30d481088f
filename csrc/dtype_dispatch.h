// SF_DISPATCH(dtype, lambda): runs the lambda with scalar_t = float or double, the two
// dtypes every kernel (CPU and CUDA) is instantiated for; the Python face converts half
// precision to float32 before any op runs.
#pragma once

#include <ATen/ATen.h>

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
