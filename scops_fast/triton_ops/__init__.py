"""Backend "triton": the kernels of `scops_fast.triton_kernels` as torch custom ops
`scops_fast_triton::*` with fake (meta) implementations and autograd rules, so that
torch.compile(fullgraph=True) sees one opaque op per kernel family; and the SPEC losses
composed from them. The composition mirrors `scops_fast.ops` (the cpp backend): the
kernels return small per-(b, k) tensors, which torch combines."""
