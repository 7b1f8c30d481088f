"""Semantic consistency (SPEC section 4), dense and low-resolution.

Both ops return the loss *sum* and, when gradients are needed, its gradients from the
same pass (the dense one reads the (B, C, H, W) features exactly once); the autograd
backward only scales them. The losses are composed in `scops_fast.ops.compose`.
"""

import torch

from scops_fast.ops import semantic_rules as rules
from scops_fast.triton_kernels import semantic as kernels
from scops_fast.triton_ops import on_device


@torch.library.custom_op("scops_fast_triton::semantic_dense", mutates_args=())
def semantic_dense(
    features: torch.Tensor, pred: torch.Tensor, basis: torch.Tensor, grads: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dtype = pred.dtype
    with on_device(pred):
        return kernels.semantic_dense(
            features.to(dtype).contiguous(), pred.contiguous(), basis.to(dtype).contiguous(), grads
        )


semantic_dense.register_fake(rules.dense_fake)
semantic_dense.register_autograd(rules.dense_backward, setup_context=rules.dense_setup)


@torch.library.custom_op("scops_fast_triton::semantic_lowres", mutates_args=())
def semantic_lowres(
    pred: torch.Tensor,
    lowres: torch.Tensor,
    gram_basis: torch.Tensor,
    gram: torch.Tensor,
    saliency: torch.Tensor | None,
    grads: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    dtype = pred.dtype

    def prepared(t):
        return None if t is None else t.to(dtype).contiguous()

    with on_device(pred):
        return kernels.semantic_lowres(
            pred.contiguous(),
            prepared(lowres),
            prepared(gram_basis),
            prepared(gram),
            prepared(saliency),
            grads,
        )


semantic_lowres.register_fake(rules.lowres_fake)
semantic_lowres.register_autograd(rules.lowres_backward, setup_context=rules.lowres_setup)
