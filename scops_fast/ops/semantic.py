"""Registration of `scops_fast::semantic_dense` and `scops_fast::semantic_lowres`
(SPEC section 4) with the rules of `semantic_rules`: the dense op reads the
(B, C, H, W) features exactly once for forward and backward together."""

import torch

from scops_fast.ops import semantic_rules as rules

torch.library.register_fake("scops_fast::semantic_dense", rules.dense_fake)
torch.library.register_autograd(
    "scops_fast::semantic_dense", rules.dense_backward, setup_context=rules.dense_setup
)
torch.library.register_fake("scops_fast::semantic_lowres", rules.lowres_fake)
torch.library.register_autograd(
    "scops_fast::semantic_lowres", rules.lowres_backward, setup_context=rules.lowres_setup
)
