"""Run as `python compile_cold_child.py BACKEND FIRST [VARIANT]`: the first thing this process
does is torch.compile(fullgraph=True) (Inductor) over every public loss and tps_warp, forward
and backward, with `backend=BACKEND` ("None" for the default), starting with op FIRST; prints
one line per op, `op ok <max error against eager, relative to each tensor's largest entry>`.

VARIANT (default "plain") changes how a user might call it: "dynamic" (dynamic=True, then a
second shape through the same compiled function), "border" (border padding), "channels_last"
(channels_last inputs), "float64", any of those three joined by "-" (all of them at once:
each graph compiled cold costs seconds), "no_grad" (forward only, under torch.no_grad), "step"
(one compiled training step: a network, the TPS warp and every loss, against eager),
"extras" (the rest of the public surface, `extra_cases`) and "deploy" (how a model leaves
Python or serves: `deploy_cases`)."""

import sys

import torch
from conftest import rel_error  # this script's folder is tests/

from scops_fast import losses, tps


def inputs(variant="plain", shape=(2, 4, 12, 10)):
    g = torch.Generator().manual_seed(0)
    dtype = torch.float64 if "float64" in variant.split("-") else torch.float32
    b, c, h, w = shape
    t = {
        "pred": torch.randn(b, c, h, w, generator=g, dtype=dtype),
        "pred_tps": torch.randn(b, c, h, w, generator=g, dtype=dtype),
        "feats": torch.randn(b, 6, h, w, generator=g, dtype=dtype),
        "low": torch.randn(b, 6, 4, 3, generator=g, dtype=dtype),
        "basis": torch.rand(c - 1, 6, generator=g, dtype=dtype),
        "points": tps.TARGET_POINTS.to(dtype).expand(b, -1, -1)
        + 0.05 * torch.randn(b, 25, 2, generator=g, dtype=dtype),
        "sal": torch.rand(b, h, w, generator=g, dtype=dtype),
    }
    if "channels_last" in variant.split("-"):
        for k in ("pred", "pred_tps", "feats", "low"):
            t[k] = t[k].contiguous(memory_format=torch.channels_last)
    return t


def cases(backend, variant="plain"):
    """{op: (names of the inputs it differentiates, of the others, fn(*those inputs))}."""
    kw = {"backend": backend}
    pad = {"padding_mode": "border" if "border" in variant.split("-") else "zeros"}
    return {
        "concentration_loss": (("pred",), (), lambda p: losses.concentration_loss(p, **kw)),
        "batch_get_centers": (
            ("pred",),
            (),
            lambda p: losses.batch_get_centers(p.softmax(1)[:, 1:], **kw).sum(),
        ),
        "semantic_consistency_loss": (
            ("pred", "basis"),
            ("feats",),
            lambda p, w, f: losses.semantic_consistency_loss(f, p, w, **kw),
        ),
        "semantic_consistency_loss_lowres": (
            ("pred", "basis"),
            ("low", "sal"),
            lambda p, w, f, s: losses.semantic_consistency_loss_lowres(f, p, w, s, **kw),
        ),
        "orthonormal_loss": (("basis",), (), lambda w: losses.orthonormal_loss(w)),
        "equivariance_losses": (
            ("pred", "pred_tps"),
            ("points",),
            lambda p, q, s: sum(losses.equivariance_losses(p, q, s, **pad, **kw)),
        ),
        "tps_warp": (
            ("pred",),
            ("points",),
            lambda p, s: tps.tps_warp(p, s, **pad, **kw).square().sum(),
        ),
    }


def extra_cases(backend):
    """The rest of the public surface, for VARIANT "extras": the original module's helpers,
    the spline grid, the RandTPS module, and source points that need a gradient (which
    "auto" and None send to the reference)."""
    kw = {"backend": backend}
    warp = tps.RandTPS(10, 12, batch_size=2, sigma=0.05, mode="projective", border_padding=True)
    return {
        "get_variance": (
            ("pred",),
            (),
            lambda p: sum(losses.get_variance(losses.softmax(p)[0, 1], 0.1, -0.2)),
        ),
        "orthonomal_loss": (("basis",), (), lambda w: losses.orthonomal_loss(w)),
        "tps_grid": (("points",), (), lambda s: tps.tps_grid(s, 12, 10).square().sum()),
        "RandTPS": (("pred",), (), lambda p: warp(p).square().sum()),
        "tps_warp_points_grad": (
            ("pred", "points"),
            (),
            lambda p, s: tps.tps_warp(p, s, **kw).square().sum(),
        ),
        "equivariance_losses_points_grad": (
            ("pred", "pred_tps", "points"),
            (),
            lambda p, q, s: losses.equivariance_losses(p, q, s, **kw)[1],
        ),
    }


def all_losses(backend):
    """Every loss and the warp in one function, as a model's forward would call them."""
    kw = {"backend": backend}

    def total(p, q, s, f, w):
        out = losses.concentration_loss(p, **kw) + losses.orthonormal_loss(w)
        out = out + losses.semantic_consistency_loss(f, p, w, **kw)
        out = out + tps.tps_warp(p, s, **kw).square().mean()
        return out + sum(losses.equivariance_losses(p, q, s, **kw))

    return total


def deploy_cases(backend):
    """For VARIANT "deploy", each `name: fn() -> max error`: shapes that change between calls
    of one compiled function with no `dynamic=` (torch recompiles, then generalises),
    inference mode, Inductor's C++ wrapper, torch.export + AOTInductor's package, and
    torch.export with symbolic batch and image sizes."""
    total = all_losses(backend)
    names = ("pred", "pred_tps", "points", "feats", "basis")

    def differentiated(p, q, w, s, f):  # compare() wants the differentiated inputs first
        return total(p, q, s, f, w)

    def run(compiled, shapes):
        """The same compiled function for every shape, forward and backward."""
        errors = []
        for shape in shapes:
            t = inputs("plain", shape)
            leaves = [t["pred"], t["pred_tps"], t["basis"]]
            errors.append(compare(differentiated, compiled, leaves, [t["points"], t["feats"]]))
        return max(errors)

    class Model(torch.nn.Module):  # what torch.export takes
        def forward(self, pred, pred_tps, points, feats, basis):
            return total(pred, pred_tps, points, feats, basis)

    def exported():
        import tempfile

        t = inputs("plain")
        args = tuple(t[n] for n in names)
        program = torch.export.export(Model(), args)
        with tempfile.TemporaryDirectory() as folder:
            package = torch._inductor.aoti_compile_and_package(
                program, package_path=f"{folder}/model.pt2"
            )
            loaded = torch._inductor.aoti_load_package(package)
            return max_relative_error([(loaded(*args), total(*args))])

    def exported_dynamic():
        """torch.export with symbolic batch and image sizes, run at another shape."""
        batch, height, width = (torch.export.Dim(n, min=2, max=512) for n in "bhw")
        image = {0: batch, 2: height, 3: width}
        t = inputs("plain")
        program = torch.export.export(
            Model(),
            tuple(t[n] for n in names),
            dynamic_shapes=(image, image, {0: batch}, image, None),
        )
        t = inputs("plain", (3, 4, 9, 13))
        args = tuple(t[n] for n in names)
        return max_relative_error([(program.module()(*args), total(*args))])

    def inference():
        t = inputs("plain")
        args = [t[n] for n in names]
        compiled = torch.compile(total, fullgraph=True)
        with torch.inference_mode():
            return max_relative_error([(compiled(*args), total(*args))])

    return {
        "recompiles": lambda: run(
            torch.compile(differentiated, fullgraph=True),
            [(2, 4, 12, 10), (3, 4, 9, 13), (1, 6, 17, 11)],
        ),
        "inference_mode": inference,
        "cpp_wrapper": lambda: run(
            torch.compile(differentiated, fullgraph=True, options={"cpp_wrapper": True}),
            [(2, 4, 12, 10)],
        ),
        "aot_inductor": exported,
        "export_dynamic": exported_dynamic,
    }


def max_relative_error(pairs):
    """Relative to each tensor's largest entry: Inductor fuses and reorders the sums."""
    return max(rel_error(a, b) for a, b in pairs)


def compare(fn, compiled, leaves, others, no_grad=False):
    if no_grad:
        with torch.no_grad():
            return max_relative_error([(compiled(*leaves, *others), fn(*leaves, *others))])
    runs = []
    for f in (compiled, fn):
        xs = [x.clone().requires_grad_(True) for x in leaves]
        out = f(*xs, *others)
        out.backward()
        runs.append([out.detach(), *(x.grad for x in xs)])
    return max_relative_error(zip(*runs, strict=True))


def training_step(backend):
    """One SCOPS step as a user would compile it: network, warp, every loss, backward."""
    from scops_fast.models.small import small_net

    torch.manual_seed(0)
    net = small_net(num_parts=3, width=8)
    basis = torch.nn.Parameter(torch.rand(3, 3))
    images = torch.randn(2, 3, 24, 20)
    points = tps.TARGET_POINTS.expand(2, -1, -1) + 0.05 * torch.randn(2, 25, 2)
    kw = {"backend": backend}

    def step(images, points):
        pred = net(images)
        pred_tps = net(tps.tps_warp(images, points, **kw))
        feats = torch.nn.functional.interpolate(
            images, size=pred.shape[-2:], mode="bilinear", align_corners=True
        )
        total = losses.concentration_loss(pred, **kw)
        total = total + losses.semantic_consistency_loss(feats, pred, basis, **kw)
        total = total + losses.orthonormal_loss(basis)
        return total + sum(losses.equivariance_losses(pred, pred_tps, points, **kw))

    params = [*net.parameters(), basis]
    runs = []
    for fn in (torch.compile(step, fullgraph=True), step):
        for p in params:
            p.grad = None
        out = fn(images, points)
        out.backward()
        runs.append([out.detach(), *(p.grad for p in params)])
    return max_relative_error(zip(*runs, strict=True))


def main():
    backend = None if sys.argv[1] == "None" else sys.argv[1]
    first = sys.argv[2]
    variant = sys.argv[3] if len(sys.argv) > 3 else "plain"
    if variant == "step":
        print(f"step ok {training_step(backend):.3g}", flush=True)
        return
    if variant == "deploy":
        table = deploy_cases(backend)
        for name in [first, *[n for n in table if n != first]]:
            print(f"{name} ok {table[name]():.3g}", flush=True)
        return
    table = extra_cases(backend) if variant == "extras" else cases(backend, variant)
    shapes = [(2, 4, 12, 10), (3, 4, 9, 13)] if variant == "dynamic" else [(2, 4, 12, 10)]
    options = {"dynamic": True} if variant == "dynamic" else {}
    for name in [first, *[n for n in table if n != first]]:
        grad_names, other_names, fn = table[name]
        compiled = torch.compile(fn, fullgraph=True, **options)
        err = 0.0
        for shape in shapes:  # the same compiled function for every shape
            t = inputs(variant, shape)
            leaves = [t[k] for k in grad_names]
            others = [t[k] for k in other_names]
            err = max(err, compare(fn, compiled, leaves, others, no_grad=variant == "no_grad"))
        print(f"{name} ok {err:.3g}", flush=True)


if __name__ == "__main__":
    main()
