"""The pure-PyTorch oracle as a backend: runs wherever torch runs, on any inputs."""

from scops_fast import reference as _ref
from scops_fast.backends import table


def devices():
    return ("cpu", "cuda", "mps", "xpu", "meta")


OPS = table(
    {
        "batch_get_centers": _ref.batch_get_centers,
        "concentration_loss": _ref.concentration_loss,
        "semantic_consistency_loss": _ref.semantic_consistency_loss,
        "semantic_consistency_loss_lowres": _ref.semantic_consistency_loss_lowres,
        "tps_warp": _ref.tps_warp,
        "equivariance_losses": _ref.equivariance_losses,
    }
)


def probe():
    return None
