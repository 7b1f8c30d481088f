// The low-resolution semantic op's inputs as its CPU and CUDA kernels read them: contiguous,
// in pred's dtype whatever the caller of the op passed, and the saliency undefined when there
// is none. One definition for both backends, so they cannot drift apart.
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace scops_fast {

struct SemanticLowresInputs {
  at::Tensor pred, lowres, gram_basis, gram, saliency;
};

inline SemanticLowresInputs semantic_lowres_inputs(const at::Tensor& pred,
                                                   const at::Tensor& lowres,
                                                   const at::Tensor& gram_basis,
                                                   const at::Tensor& gram,
                                                   const std::optional<at::Tensor>& saliency) {
  const auto dtype = pred.scalar_type();
  const auto as_pred = [dtype](const at::Tensor& t) { return t.to(dtype).contiguous(); };
  return {pred.contiguous(), as_pred(lowres), as_pred(gram_basis), as_pred(gram),
          saliency.has_value() ? as_pred(*saliency) : at::Tensor()};
}

}  // namespace scops_fast
