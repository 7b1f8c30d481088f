"""Public names, backend selection and argument errors."""

import functools

import pytest
import torch
from backend_checks import loss_calls

import scops_fast
from scops_fast import _dispatch, _ext, losses, reference, tps


def test_public_names():
    for name in [
        "concentration_loss",
        "batch_get_centers",
        "semantic_consistency_loss",
        "semantic_consistency_loss_lowres",
        "orthonormal_loss",
        "orthonomal_loss",
        "equivariance_losses",
    ]:
        assert callable(getattr(losses, name))
    for name in ["tps_grid", "tps_warp", "RandTPS"]:
        assert callable(getattr(tps, name))
    assert tps.TARGET_POINTS.shape == (25, 2)
    warp = tps.RandTPS(16, 12)
    assert warp.source_control_points.shape == (16, 25, 2)
    assert warp.grid.shape == (16, 12, 16, 2)


def test_available_backends_reports_reasons():
    report = scops_fast.available_backends()
    assert "reference" in report
    for name in _dispatch.BACKENDS:
        assert (name in report) != (name in report.unavailable)
        if name in report.unavailable:
            assert report.unavailable[name]
            assert name in str(report)


@pytest.fixture
def restore_default():
    yield
    scops_fast.set_backend(None)


def test_backend_precedence(monkeypatch, restore_default):
    monkeypatch.delenv(_dispatch.ENV_VAR, raising=False)
    assert scops_fast.get_backend() == "auto"
    monkeypatch.setenv(_dispatch.ENV_VAR, "reference")
    assert scops_fast.get_backend() == "reference"
    scops_fast.set_backend("auto")
    assert scops_fast.get_backend() == "auto"
    scops_fast.set_backend(None)
    assert scops_fast.get_backend() == "reference"
    monkeypatch.setenv(_dispatch.ENV_VAR, "fastest")
    with pytest.raises(ValueError, match=_dispatch.ENV_VAR):
        scops_fast.get_backend()


def test_unknown_backend_name_is_a_value_error(restore_default):
    pred = torch.randn(1, 3, 4, 4)
    with pytest.raises(ValueError, match="backend"):
        losses.concentration_loss(pred, backend="fortran")
    with pytest.raises(ValueError, match="backend"):
        scops_fast.set_backend("fortran")


def test_unavailable_backend_names_itself_and_the_reason():
    report = scops_fast.available_backends()
    pred = torch.randn(1, 3, 4, 4)
    for name, reason in report.unavailable.items():
        with pytest.raises(scops_fast.BackendUnavailableError) as info:
            losses.concentration_loss(pred, backend=name)
        assert repr(name) in str(info.value) and reason in str(info.value)
    # A GPU backend is never usable for CPU tensors, even where it is built.
    with pytest.raises(scops_fast.BackendUnavailableError, match="cuda"):
        losses.concentration_loss(pred, backend="cuda")


def test_auto_falls_back_to_a_cpu_backend(monkeypatch):
    pred = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    expected = reference.concentration_loss(pred)
    for backend in (None, "auto", "reference"):
        assert torch.allclose(
            losses.concentration_loss(pred, backend=backend), expected, rtol=1e-10
        )
    picked = _dispatch.select("concentration_loss", "auto", "cpu")
    owner = next(
        n
        for n in _dispatch.AUTO_ORDER["cpu"]
        if _dispatch.unavailable_reason(n, "concentration_loss", "cpu") is None
    )
    assert owner in ("cpp", "reference")
    assert picked is _dispatch._load(owner).module.OPS["concentration_loss"].run


def test_a_registered_backend_is_picked_up_without_touching_the_face(monkeypatch):
    from scops_fast.backends import table

    calls = []

    class Fake:
        OPS = table({"concentration_loss": lambda pred: calls.append(pred.shape) or pred.sum()})

        @staticmethod
        def devices():
            return ("cpu",)

        @staticmethod
        def probe():
            return None

    monkeypatch.setattr(_dispatch._loaded, "cpp", _dispatch._Loaded(Fake, None), raising=False)
    pred = torch.randn(1, 3, 4, 4)
    losses.concentration_loss(pred, backend="cpp")
    assert calls == [pred.shape]


def _declared(name):
    """Backend `name`'s module, as if it had probed usable here."""
    import importlib

    return _dispatch._Loaded(importlib.import_module(_dispatch.BACKEND_MODULES[name]), None)


@pytest.fixture
def gpu_backends_usable(monkeypatch):
    """The cuda and triton backends' own tables, as on a machine with a GPU: their
    predicates judge the inputs; nothing is run."""
    import scops_fast.backends.triton as triton_backend

    for name in ("cuda", "triton"):
        monkeypatch.setattr(_dispatch._loaded, name, _declared(name), raising=False)
    monkeypatch.setattr(triton_backend, "devices", lambda: ("cuda",))


def test_auto_passes_over_cuda_for_more_parts_than_its_kernels_hold(gpu_backends_usable):
    # 40 parts: 41 channels, beyond the CUDA kernels' 33.
    pred = torch.empty(2, 41, 8, 8, device="meta")
    for op, args in [
        ("concentration_loss", (pred,)),
        ("batch_get_centers", (pred[:, 1:],)),
        ("equivariance_losses", (pred, pred, torch.empty(2, 25, 2), "zeros")),
        ("semantic_consistency_loss_lowres", ([pred], pred, torch.empty(40, 41), None)),
    ]:
        choice = _dispatch.explain(op, "cuda", args)
        assert choice["backend"] == "triton", (op, choice)
        assert "at most 33 channels" in choice["passed_over"]["cuda"], choice
        with pytest.raises(scops_fast.BackendUnavailableError, match="at most 33 channels"):
            _dispatch.choose(op, "cuda", "cuda", args)
    # Within the limit, or for ops without one, the CUDA kernels are first.
    assert _dispatch.explain("concentration_loss", "cuda", (pred[:, :33],)) == {
        "backend": "cuda",
        "passed_over": {},
    }
    x = torch.empty(2, 64, 8, 8, device="meta")
    assert _dispatch.explain("tps_warp", "cuda", (x, None, "zeros"))["backend"] == "cuda"


def test_auto_records_every_backend_it_passed_over(gpu_backends_usable, monkeypatch):
    import scops_fast.backends.triton as triton_backend

    monkeypatch.setattr(triton_backend, "devices", lambda: ("cpu",))
    pred = torch.empty(1, 41, 4, 4, device="meta")
    choice = _dispatch.explain("concentration_loss", "cuda", (pred,))
    assert choice["backend"] == "reference"
    assert set(choice["passed_over"]) == {"cuda", "triton"}
    assert "runs on cpu tensors, not cuda" in choice["passed_over"]["triton"]


FUSED = ("cpp", "triton", "cuda", "cuda_emu")


def test_fused_backends_refuse_source_points_that_need_a_gradient():
    import importlib

    x = torch.randn(2, 3, 6, 5)
    pts = (tps.TARGET_POINTS + 0.05 * torch.randn(2, 25, 2)).requires_grad_(True)
    calls = {"tps_warp": (x, pts, "zeros"), "equivariance_losses": (x, x, pts, "zeros")}
    for name in FUSED:
        module = importlib.import_module(_dispatch.BACKEND_MODULES[name])
        for op, args in calls.items():
            assert "source_points requires grad" in module.OPS[op].supports(*args), (name, op)
            with torch.no_grad():
                assert module.OPS[op].supports(*args) is None, (name, op)
            detached = tuple(a.detach() if a is pts else a for a in args)
            assert module.OPS[op].supports(*detached) is None, (name, op)


def test_source_points_that_need_a_gradient_get_it_from_the_reference():
    x = torch.randn(2, 3, 6, 5, requires_grad=True)
    pts = (tps.TARGET_POINTS + 0.05 * torch.randn(2, 25, 2)).requires_grad_(True)
    with pytest.raises(scops_fast.BackendUnavailableError, match="source_points requires grad"):
        tps.tps_warp(x, pts, backend="cpp")
    with pytest.raises(scops_fast.BackendUnavailableError, match="source_points requires grad"):
        losses.equivariance_losses(x, x, pts, backend="cpp")
    choice = _dispatch.explain("tps_warp", "cpu", (x, pts, "zeros"))
    assert choice["backend"] == "reference", choice
    assert "source_points requires grad" in choice["passed_over"]["cpp"], choice
    for fn in (
        lambda b: tps.tps_warp(x, pts, backend=b).square().sum(),
        lambda b: losses.equivariance_losses(x, x.flip(-1), pts, backend=b)[1],
    ):
        got = torch.autograd.grad(fn("auto"), (x, pts))
        want = torch.autograd.grad(fn("reference"), (x, pts))
        assert got[1].abs().sum() > 0
        for g, w in zip(got, want, strict=True):
            assert torch.equal(g, w)
    # Constant points, as SCOPS passes them, still go to the fused kernels.
    assert _dispatch.explain("tps_warp", "cpu", (x, pts.detach(), "zeros"))["backend"] == "cpp"


def test_features_that_need_a_gradient_get_it_from_the_reference():
    """As the original's loss: it differentiates the features (its trainer computes them
    without a graph). The fused kernels take them as constants, so they refuse such
    features by name and "auto" runs the reference; frozen features still go to them."""
    import importlib

    pred = torch.randn(2, 4, 6, 5, requires_grad=True)
    basis = torch.rand(3, 7, requires_grad=True)
    feats = torch.randn(2, 7, 6, 5, requires_grad=True)
    low = [torch.randn(2, 4, 3, 3, requires_grad=True), torch.randn(2, 3, 2, 2)]
    sal = torch.rand(2, 6, 5, requires_grad=True)
    for name in FUSED:
        module = importlib.import_module(_dispatch.BACKEND_MODULES[name])
        for op, args in (
            ("semantic_consistency_loss", (feats, pred, basis)),
            ("semantic_consistency_loss_lowres", (low, pred, basis, None)),
            ("semantic_consistency_loss_lowres", ([f.detach() for f in low], pred, basis, sal)),
        ):
            assert "features (or saliency) require grad" in module.OPS[op].supports(*args)
            with torch.no_grad():
                assert module.OPS[op].supports(*args) is None, (name, op)
    with pytest.raises(scops_fast.BackendUnavailableError, match="require grad"):
        losses.semantic_consistency_loss(feats, pred, basis, backend="cpp")
    dense = _dispatch.explain("semantic_consistency_loss", "cpu", (feats, pred, basis))
    assert dense["backend"] == "reference", dense

    def plain(v):  # the loss written out with torch's autograd: what the original computes
        recon = torch.einsum("bkhw,kc->bchw", torch.softmax(pred, 1)[:, 1:], basis)
        return torch.nn.functional.mse_loss(recon, v)

    got = torch.autograd.grad(losses.semantic_consistency_loss(feats, pred, basis), feats)[0]
    want = torch.autograd.grad(plain(feats), feats)[0]
    assert got.abs().sum() > 0 and torch.allclose(got, want, rtol=1e-5, atol=1e-9)
    up = reference.upsample_features(low, 6, 5, sal)
    loss = losses.semantic_consistency_loss_lowres(low, pred, basis, sal)
    for got, want in zip(
        torch.autograd.grad(loss, [low[0], sal]),
        torch.autograd.grad(plain(up), [low[0], sal]),
        strict=True,
    ):
        assert got.abs().sum() > 0 and torch.allclose(got, want, rtol=1e-5, atol=1e-9)
    frozen = (feats.detach(), pred, basis)
    assert _dispatch.explain("semantic_consistency_loss", "cpu", frozen)["backend"] == "cpp"


TRANSFORMS = {
    "grad": lambda f, x, t: torch.func.grad(f)(x),
    "jacrev": lambda f, x, t: torch.func.jacrev(f)(x),
    "grad of vmap": lambda f, x, t: torch.func.grad(
        lambda p: torch.func.vmap(lambda q: f(q.unsqueeze(0).expand(2, -1, -1, -1)))(p).sum()
    )(x),
    "jvp": lambda f, x, t: torch.func.jvp(f, (x,), (t,))[1],
}


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_torch_func_transforms_run_the_reference_through_auto(transform):
    """Fused ops' derivatives are torch.library autograd rules, reverse mode only: under
    torch.func.grad torch raises from its internals, and forward mode would give them a zero
    tangent, silently. So they refuse such calls, by name, and "auto" runs the reference
    (torch has no forward derivative of grid_sample: the warp has none in either)."""
    x = torch.randn(2, 4, 6, 5)
    t = torch.randn_like(x)
    for op, fn in loss_calls(x.shape, torch.Generator().manual_seed(3)).items():
        if transform == "jvp" and op in ("tps_warp", "equivariance"):
            continue
        run = TRANSFORMS[transform]
        got = run(functools.partial(fn, be="auto"), x, t)
        want = run(functools.partial(fn, be="reference"), x, t)
        assert torch.equal(got, want), (op, transform)
        assert got.abs().sum() > 0, (op, transform)
        with pytest.raises(scops_fast.BackendUnavailableError, match="cpp.*torch.func"):
            run(functools.partial(fn, be="cpp"), x, t)
    # Outside the transforms, reverse mode still runs the kernels.
    chosen = _dispatch.explain("concentration_loss", "cpu", (x.requires_grad_(True),))
    assert chosen["backend"] == "cpp", chosen


def test_fused_backends_refuse_dual_tensors():
    import importlib

    import torch.autograd.forward_ad as fwAD

    x, t = torch.randn(2, 4, 6, 5), torch.randn(2, 4, 6, 5)
    fn = loss_calls(x.shape, torch.Generator().manual_seed(3))["concentration"]
    with fwAD.dual_level():
        dual = fwAD.make_dual(x, t)
        want = fwAD.unpack_dual(fn(dual, "reference")).tangent
        got = fwAD.unpack_dual(fn(dual, "auto")).tangent
        assert want is not None and torch.equal(got, want)
        with pytest.raises(scops_fast.BackendUnavailableError, match="forward-mode AD"):
            fn(dual, "cpp")
        for name in FUSED:
            module = importlib.import_module(_dispatch.BACKEND_MODULES[name])
            assert "forward-mode AD" in module.OPS["concentration_loss"].supports(dual), name
            assert module.OPS["concentration_loss"].supports(x) is None, name


BAD_INPUTS = [
    (lambda: losses.concentration_loss(torch.randn(3, 4, 4)), ValueError, "pred.*4-D"),
    (lambda: losses.concentration_loss(torch.randn(2, 1, 4, 4)), ValueError, "pred.*2 channels"),
    (lambda: losses.concentration_loss(torch.zeros(0, 3, 4, 4)), ValueError, "pred.*non-empty"),
    (
        lambda: losses.concentration_loss(torch.ones(2, 3, 4, 4, dtype=torch.long)),
        TypeError,
        "pred.*floating",
    ),
    (lambda: losses.concentration_loss([[1.0]]), TypeError, "pred.*Tensor"),
    (lambda: losses.batch_get_centers(torch.rand(2, 4, 4)), ValueError, "part_probs"),
    (
        lambda: losses.semantic_consistency_loss(
            torch.randn(2, 5, 4, 4), torch.randn(2, 3, 4, 4), torch.rand(2, 6)
        ),
        ValueError,
        "basis.*C =",
    ),
    (
        lambda: losses.semantic_consistency_loss(
            torch.randn(2, 5, 4, 3), torch.randn(2, 3, 4, 4), torch.rand(2, 5)
        ),
        ValueError,
        "features.*spatial",
    ),
    (
        lambda: losses.semantic_consistency_loss(
            torch.randn(1, 5, 4, 4), torch.randn(2, 3, 4, 4), torch.rand(2, 5)
        ),
        ValueError,
        "features.*batch",
    ),
    (
        lambda: losses.semantic_consistency_loss(
            torch.randn(2, 5, 4, 4), torch.randn(2, 3, 4, 4), torch.rand(3, 5)
        ),
        ValueError,
        "basis.*K =",
    ),
    (
        lambda: losses.semantic_consistency_loss_lowres(
            [], torch.randn(2, 3, 4, 4), torch.rand(2, 5)
        ),
        ValueError,
        "features",
    ),
    (
        lambda: losses.semantic_consistency_loss_lowres(
            torch.randn(2, 5, 2, 2), torch.randn(2, 3, 4, 4), torch.rand(2, 5), torch.rand(2, 4, 5)
        ),
        ValueError,
        "saliency",
    ),
    (lambda: losses.orthonormal_loss(torch.rand(5)), ValueError, "w.*2-D"),
    (
        lambda: tps.tps_warp(torch.randn(2, 3, 4, 4), torch.rand(2, 16, 2)),
        ValueError,
        "source_points.*25",
    ),
    (
        lambda: tps.tps_warp(torch.randn(2, 3, 4, 4), torch.rand(3, 25, 2)),
        ValueError,
        "source_points.*batch",
    ),
    (
        lambda: tps.tps_warp(torch.randn(2, 3, 4, 4), torch.rand(2, 25, 2), padding_mode="reflect"),
        ValueError,
        "padding_mode",
    ),
    (
        lambda: losses.equivariance_losses(
            torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 5), torch.rand(2, 25, 2)
        ),
        ValueError,
        "pred_tps",
    ),
    (
        lambda: losses.equivariance_losses(
            torch.randn(2, 3, 4, 4),
            torch.randn(2, 3, 4, 4),
            torch.rand(2, 25, 2, dtype=torch.complex64),
        ),
        TypeError,
        "source_points",
    ),
    (lambda: tps.tps_grid(torch.rand(2, 25, 2), 0, 4), ValueError, "height"),
]


@pytest.mark.parametrize("call, error, pattern", BAD_INPUTS)
def test_bad_inputs_raise_clear_errors(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


def test_meta_tensors_trace_shapes():
    # The reference has no hard-coded device: it runs on the meta device too.
    pred = torch.randn(2, 5, 8, 6, device="meta")
    assert losses.concentration_loss(pred, backend="reference").shape == ()
    assert losses.batch_get_centers(pred[:, 1:], backend="reference").shape == (2, 4, 2)


def test_missing_build_is_reported_not_raised(tmp_path, monkeypatch):
    assert "not built" in _ext.load.__wrapped__("_no_such_library")
    monkeypatch.setattr(_ext, "BUILD_ERRORS", tmp_path)
    (tmp_path / "_no_such_library.txt").write_text("CompileError: g++ said no\n")
    assert "g++ said no" in _ext.load.__wrapped__("_no_such_library")


def test_triton_probe_reasons(monkeypatch):
    import sys

    from scops_fast import triton_kernels
    from scops_fast.backends import triton as backend

    monkeypatch.setattr(triton_kernels, "kernel_mode", lambda: "mixed")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert "set it before `import triton`" in backend.probe()
    monkeypatch.setattr(triton_kernels, "kernel_mode", lambda: "compiled")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "imported without TRITON_INTERPRET=1" in backend.probe()
    monkeypatch.delenv("TRITON_INTERPRET")
    assert "no CUDA device" in backend.probe()
    monkeypatch.setitem(sys.modules, "triton", None)
    assert "triton is not importable" in backend.probe()


def test_probes_and_device_lists_have_no_side_effects():
    import importlib

    for name, path in _dispatch.BACKEND_MODULES.items():
        module = importlib.import_module(path)
        before = dict(module.OPS)
        module.probe(), module.probe()
        if module.probe() is None:
            assert module.devices() == module.devices()
        assert module.OPS == before, name
