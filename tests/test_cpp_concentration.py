"""The fused concentration op of backend "cpp" (`scops_fast::concentration`): its
gradient is formed in the forward and only scaled by the backward, and its threads
take whole images or share each image depending on the batch. The reference
comparisons over shapes, layouts and dtypes are in test_backends.py."""

import pytest
import torch
from backend_checks import TOL, poisoned_allocations
from conftest import assert_rel

from scops_fast import losses
from scops_fast.backends import cpp

_unavailable = cpp.probe()
if _unavailable is not None and "ATEN_CPU_CAPABILITY=" in _unavailable:
    # torch's portable kernels asked for (`make test-rounding`, run A): no cpp build runs
    pytest.skip(_unavailable, allow_module_level=True)
assert _unavailable is None, f"backend cpp: {_unavailable}"
concentration = torch.ops.scops_fast.concentration


def assert_same_bits(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(a, b)


@pytest.fixture(autouse=True)
def poison_empty_tensors():
    with poisoned_allocations():
        yield


def logits(gen, b=3, k=4, h=11, w=13, dtype=torch.float64):
    return (3 * torch.randn(b, k + 1, h, w, generator=gen, dtype=torch.float64)).to(dtype)


def reference_grad(x, weight=1.0):
    x = x.detach().clone().requires_grad_(True)
    return torch.autograd.grad(losses.concentration_loss(x, backend="reference") * weight, x)[0]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_moments_and_loss_are_those_of_the_two_pass_path(dtype, gen):
    x = logits(gen, dtype=dtype)
    loss, moments, grad = concentration(x, True)
    assert_same_bits(moments, torch.ops.scops_fast.softmax_moments(x, True))
    no_grad_loss, no_grad_moments, empty = concentration(x, False)
    assert empty.numel() == 0
    assert_same_bits(no_grad_loss, loss)
    assert_same_bits(no_grad_moments, moments)
    assert loss.dtype == torch.float64 and loss.dim() == 0
    assert_rel(grad, reference_grad(x), TOL[dtype], "gradient for a unit upstream")


@pytest.mark.parametrize("batch", [1, 2, 3, 5, 8, 9])
def test_whole_images_or_shared_images_give_the_same_bits(batch, gen):
    # With 2 or 3 threads some of these batches are split into whole images per
    # thread and others have the threads share each image; 1 thread runs whole images.
    x = logits(gen, b=batch, h=37, w=21, dtype=torch.float32)
    threads = torch.get_num_threads()
    results = {}
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results[n] = concentration(x, True)
    finally:
        torch.set_num_threads(threads)
    for n in (2, 3):
        for a, b in zip(results[n], results[1], strict=True):
            assert_same_bits(a, b)


@pytest.mark.parametrize("weight", [1.0, 2.5, 0.0, -1.0])
def test_backward_scales_by_the_upstream_gradient(weight, gen):
    x = logits(gen).requires_grad_(True)
    got = torch.autograd.grad(losses.concentration_loss(x, backend="cpp") * weight, x)[0]
    assert_rel(got, reference_grad(x, weight), TOL[torch.float64])


def test_a_retained_graph_gives_the_same_gradient_twice(gen):
    x = logits(gen).requires_grad_(True)
    loss = losses.concentration_loss(x, backend="cpp")
    for weight in (3.0, 1.0, 3.0):
        got = torch.autograd.grad(loss * weight, x, retain_graph=True)[0]
        assert_rel(got, reference_grad(x, weight), TOL[torch.float64], f"weight {weight}")


def test_gradcheck_under_a_weight(gen):
    x = logits(gen, b=2, k=2, h=5, w=4).requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda p: 0.5 * losses.concentration_loss(p, backend="cpp"), (x,)
    )


def test_cpu_losses_use_the_fused_op(gen):
    x = logits(gen).requires_grad_(True)
    assert "scops_fast_concentration" in losses.concentration_loss(x, backend="cpp").grad_fn.name()
    with torch.no_grad():  # no gradient wanted: the op skips it
        value = losses.concentration_loss(x, backend="cpp")
    assert_rel(value, losses.concentration_loss(x.detach(), backend="reference"), 1e-12)


def test_backward_after_a_forward_without_gradient_forms_it(gen):
    x = logits(gen).requires_grad_(True)
    loss = concentration(x, False)[0]
    assert_rel(torch.autograd.grad(loss * 2, x)[0], reference_grad(x, 2.0), TOL[torch.float64])


def test_a_returned_gradient_is_the_callers_alone(gen):
    # The first backward hands over the kernel's buffer; changing it in place must not
    # change what a retained graph's next backward returns.
    x = logits(gen).requires_grad_(True)
    loss = losses.concentration_loss(x, backend="cpp")
    first = torch.autograd.grad(loss, x, retain_graph=True)[0]
    first.mul_(7.0)
    again = torch.autograd.grad(loss, x, retain_graph=True)[0]
    assert_rel(again, reference_grad(x), TOL[torch.float64])
    assert again.data_ptr() != first.data_ptr()


@pytest.mark.parametrize(
    "shape, dtype",
    [
        # Odd rows: most start off a 64-byte boundary, where streaming stores fall back.
        ((3, 8, 560, 557), torch.float32),
        ((2, 8, 490, 480), torch.float64),
    ],
)
def test_gradients_beyond_the_cache_are_streamed_correctly(shape, dtype, gen):
    # From 32 MiB the softmax goes to a scratch image and the gradient around the cache;
    # with 2 threads a batch of 3 has the threads share each image, with 1 whole images.
    b, k, h, w = shape
    x = logits(gen, b, k, h, w, dtype)
    assert x.nbytes >= 32 << 20
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        shared = concentration(x, True)
        torch.set_num_threads(1)
        whole = concentration(x, True)
    finally:
        torch.set_num_threads(threads)
    for a, e in zip(shared, whole, strict=True):
        assert_same_bits(a, e)
    assert_rel(shared[2], reference_grad(x), TOL[dtype], "streamed gradient")


def test_huge_page_outputs_match_reference_and_behave_as_tensors(gen):
    # Outputs of 32 MiB and more come from the huge-page block cache in
    # csrc/bindings.cpp, not ATen's allocator: the same values, fully overwritten (the
    # poisoning fixture NaN-fills them too, fresh or reused), and ordinary tensors after.
    b, k, h, w = 16, 8, 256, 256
    pred = (3 * torch.randn(b, k + 1, h, w, generator=gen)).requires_grad_(True)
    assert pred.nbytes >= 32 << 20
    x = pred.detach().clone().requires_grad_(True)
    expected = torch.autograd.grad(losses.concentration_loss(x, backend="reference"), x)[0]
    for _ in range(3):  # the later calls reuse the blocks the earlier ones freed
        got = torch.autograd.grad(losses.concentration_loss(x, backend="cpp"), x)[0]
        assert_rel(got, expected, TOL[torch.float32])
    losses.concentration_loss(x, backend="cpp").backward()
    first = x.grad.clone()
    losses.concentration_loss(x, backend="cpp").backward()  # accumulates into x.grad
    assert_rel(x.grad, 2 * first, 1e-6)
    x.grad.resize_(0)
    x.grad = None
