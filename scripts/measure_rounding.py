"""The noise model of the tests marked `rounding`, measured by perturbation: for each
comparison with a recorded number (tests/fixtures/original/), its error here against the
record, and how far moving the inputs (and the network's weights) by one float32 ulp moves
our result (the largest over SEEDS random up/down patterns). The tests' tolerances must
exceed both with margin; run it under other threads and ISAs too (ATEN_CPU_CAPABILITY,
ONEDNN_MAX_CPU_ISA, OMP_NUM_THREADS), as `make test-rounding` runs the tests.

    .venv/bin/python scripts/measure_rounding.py
"""

from __future__ import annotations

import math
import pathlib
import sys

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
from conftest import rel_error  # noqa: E402
from original_fixtures import load  # noqa: E402
from rounding import nudge, nudge_module  # noqa: E402

SEEDS = range(1, 5)


def ulps(a: torch.Tensor, b: torch.Tensor) -> int:
    """The largest distance in float32 steps between two float32 tensors of one sign pattern."""
    ia, ib = a.float().view(torch.int32).long(), b.float().view(torch.int32).long()
    return int((ia - ib).abs().max())


def row(name, tolerance, recorded, spread):
    """margin: how many times the one-ulp spread fits in what the tolerance leaves."""
    margin = (tolerance - recorded) / spread if spread else math.inf
    print(
        f"{name:44s} tol {tolerance:8.1e}  vs record {recorded:8.1e}  nudged {spread:8.1e}"
        f"  margin {margin:8.1f}"
    )


def spread(fn, *inputs):
    """How far one-ulp moves of every input move fn's result, relative to its largest entry."""
    base = fn(*inputs)
    return max(
        rel_error(fn(*(nudge(x, s + 7 * i) for i, x in enumerate(inputs))), base) for s in SEEDS
    )


def losses_section():
    import scops_fast
    from scops_fast import losses

    f = load("losses")
    x = f["softmax.input"]
    out = losses.softmax(x)
    moved = max(ulps(losses.softmax(nudge(x, s)), out) for s in SEEDS)
    print(
        f"{'softmax (float32 steps)':44s} vs record {ulps(out, f['softmax.output'])} ulp,"
        f" nudged input {moved} ulp"
    )
    part, (xc, yc) = f["variance_float32.part_map"], f["variance_float32.center"].tolist()

    def variance(p):
        return torch.stack(losses.get_variance(p, xc, yc)).double()

    row(
        "get_variance float32",
        1e-6,
        rel_error(variance(part), f["variance_float32.v"]),
        spread(variance, part),
    )
    x = f["concentration.input"]
    for backend in [b for b in ("reference", "cpp") if b in scops_fast.available_backends()]:

        def conc(t, backend=backend):
            return losses.concentration_loss(t, backend=backend)

        row(
            f"concentration {backend}",
            1e-6,
            rel_error(conc(x), f["concentration.loss"]),
            spread(conc, x),
        )


def tps_section():
    from scops_fast.tps import tps_grid, tps_warp

    f = load("tps")
    for case in f.cases():
        pts, x = f[f"{case}.source_points"], f[f"{case}.input"]
        h, w = x.shape[-2:]

        def grid(p, h=h, w=w):
            return tps_grid(p, h, w)

        err = float((grid(pts).double() - f[f"{case}.grid"].double()).abs().max())
        moved = max(
            float((grid(nudge(pts, s)).double() - grid(pts).double()).abs().max()) for s in SEEDS
        )
        row(f"tps {case} grid (absolute)", 2e-5, err, moved)
        for padding in ("zeros", "border"):

            def warp(t, p, padding=padding):
                return tps_warp(t, p, padding_mode=padding, backend="reference")

            row(
                f"tps {case} warp {padding}",
                1e-4,
                rel_error(warp(x, pts), f[f"{case}.warped_{padding}"]),
                spread(warp, x, pts),
            )


def model_section():
    from test_original_model import original_state

    from scops_fast.models import load_original

    f = load("model")
    for case in ("resnet50", "resnet101"):
        x = f[f"{case}.input"]
        for mode in ("eval", "train"):

            def run(t, seed=None, mode=mode, case=case):
                net = load_original(original_state(case))
                if seed is not None:
                    nudge_module(net, seed)
                net.train(mode == "train")
                with torch.no_grad():
                    return net(t), net.backbone.layer1[0].downsample[1].running_mean.clone()

            out, running = run(x)
            moved = [run(nudge(x, s), s) for s in SEEDS]
            if mode == "eval":
                row(
                    f"{case} logits eval",
                    1e-5,
                    rel_error(out, f[f"{case}.logits_eval"]),
                    max(rel_error(o, out) for o, _ in moved),
                )
                continue
            with torch.no_grad():
                exact = load_original(original_state(case)).double().train()(x.double())
            record = f[f"{case}.logits_train"]
            print(
                f"{case} train logits, f32 vs f64: record {rel_error(record, exact):.1e},"
                f" ours {rel_error(out, exact):.1e}, nudged up to"
                f" {max(rel_error(o, exact) for o, _ in moved):.1e} (tolerance 1e-3);"
                f" nudged vs ours {max(rel_error(o, out) for o, _ in moved):.1e}"
            )
            row(
                f"{case} running mean",
                1e-5,
                rel_error(running, f[f"{case}.running_mean_after_train"]),
                max(rel_error(r, running) for _, r in moved),
            )


def evaluation_section():
    from scops_fast.eval import landmark_regression_error, part_centers_pixels

    f = load("evaluation")

    def centres(logits):
        return part_centers_pixels(torch.softmax(logits, 1)[:, 1:]).double()

    for split in ("train", "test"):
        lg = f[f"{split}.logits"]
        err = float((centres(lg) - f[f"{split}.centers"]).abs().max())
        moved = max(float((centres(nudge(lg, s)) - centres(lg)).abs().max()) for s in SEEDS)
        row(f"centres {split} (absolute, pixels)", 2e-4, err, moved)

    def errors(tr, te):
        return torch.tensor(
            landmark_regression_error(
                centres(tr).numpy(),
                f.arrays["train.landmarks"],
                centres(te).numpy(),
                f.arrays["test.landmarks"],
            )
        )

    tr, te = f["train.logits"], f["test.logits"]
    record = torch.tensor([float(f.arrays["error_train"]), float(f.arrays["error_test"])])
    row("regression errors", 3e-6, rel_error(errors(tr, te), record), spread(errors, tr, te))
    a = f.arrays
    base = np.array(
        landmark_regression_error(
            a["train.centers"], a["train.landmarks"], a["test.centers"], a["test.landmarks"]
        )
    )
    moved = max(
        rel_error(
            np.array(
                landmark_regression_error(
                    nudge(torch.from_numpy(a["train.centers"]), s).numpy(),
                    a["train.landmarks"],
                    nudge(torch.from_numpy(a["test.centers"]), s + 1).numpy(),
                    a["test.landmarks"],
                )
            ),
            base,
        )
        for s in SEEDS
    )  # float64 ulps: what another LAPACK's rounding does
    row(
        "regression on the record's centres (f64)",
        1e-9,
        rel_error(base, np.array([a["error_train"], a["error_test"]])),
        moved,
    )


if __name__ == "__main__":
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads,"
        f" capability {torch.backends.cpu.get_cpu_capability()}"
    )
    for section in (losses_section, tps_section, model_section, evaluation_section):
        section()
