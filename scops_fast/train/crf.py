"""Dense-CRF refinement of part probabilities: `scops-predict --crf`, the paper's SCOPS+CRF.

A fully connected CRF (Kraehenbuehl and Koltun, NIPS 2011) over the pixels of one image, with
the network's probabilities as unary (-log p, p clipped at 1e-5), a Gaussian (smoothness) kernel
on pixel positions and an appearance (bilateral) kernel on positions and RGB colours, both with
Potts compatibility, solved by mean-field inference. The inference is pydensecrf's (the C++ code
of the paper's authors: exact fully connected kernels, filtered on the permutohedral lattice),
as the original SCOPS authors used; `pydensecrf2` is its maintained release on PyPI and builds
from source (Cython 0.29 and a C++ compiler; built here on Python 3.11 and 3.12, its Cython fails
on 3.13): `pip install 'scops_fast[crf]'`.

The default parameters are pydensecrf's example values (the original code names none), in
pixels of the image the probabilities are refined at and 8-bit colour levels: Gaussian sxy 3,
weight 3; bilateral sxy 80, srgb 13, weight 10; 5 iterations.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

__all__ = ["CRFParams", "dense_crf", "crf_available"]

INSTALL_HINT = (
    "dense-CRF refinement needs pydensecrf2: pip install 'scops_fast[crf]' "
    "(it builds from source with Cython and a C++ compiler, on Python 3.12 at most)"
)


@dataclass(frozen=True)
class CRFParams:
    iterations: int = 5
    gaussian_sxy: float = 3.0
    gaussian_weight: float = 3.0
    bilateral_sxy: float = 80.0
    bilateral_srgb: float = 13.0
    bilateral_weight: float = 10.0
    clip: float = 1e-5

    def to_dict(self) -> dict:
        return asdict(self)


def _densecrf():
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    return dcrf


def crf_available() -> bool:
    try:
        _densecrf()
    except ImportError:
        return False
    return True


def _refine_one(dcrf, probs: torch.Tensor, image: torch.Tensor, p: CRFParams) -> torch.Tensor:
    labels, h, w = probs.shape
    prob = probs.detach().double().cpu().clamp_min(p.clip)
    unary = np.ascontiguousarray((-prob.log()).reshape(labels, h * w).float().numpy())
    rgb = (image.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    rgb = np.ascontiguousarray(rgb.permute(1, 2, 0).numpy())
    crf = dcrf.DenseCRF2D(w, h, labels)
    crf.setUnaryEnergy(unary)
    if p.gaussian_weight:
        crf.addPairwiseGaussian(sxy=p.gaussian_sxy, compat=p.gaussian_weight)
    if p.bilateral_weight:
        crf.addPairwiseBilateral(
            sxy=p.bilateral_sxy, srgb=p.bilateral_srgb, rgbim=rgb, compat=p.bilateral_weight
        )
    q = np.asarray(crf.inference(p.iterations), dtype=np.float32).reshape(labels, h, w)
    return torch.from_numpy(q)


def dense_crf(
    probs: torch.Tensor, images: torch.Tensor, params: CRFParams | None = None
) -> torch.Tensor:
    """Refined probabilities, the shape, dtype and device of `probs`.

    probs: (K+1, H, W) or (B, K+1, H, W) probabilities (channels sum to 1); images: (3, H, W)
    or (B, 3, H, W) RGB in [0, 1] at the same resolution. Runs on the CPU, image by image.
    """
    p = params or CRFParams()
    dcrf = _densecrf()
    single = probs.dim() == 3
    batch_p = probs[None] if single else probs
    batch_i = images[None] if images.dim() == 3 else images
    if batch_p.dim() != 4 or batch_i.dim() != 4 or batch_i.shape[1] != 3:
        raise ValueError(
            f"probs must be (B, K+1, H, W) and images (B, 3, H, W), got "
            f"{tuple(probs.shape)} and {tuple(images.shape)}"
        )
    if batch_p.shape[0] != batch_i.shape[0] or batch_p.shape[-2:] != batch_i.shape[-2:]:
        raise ValueError(
            f"probs {tuple(probs.shape)} and images {tuple(images.shape)} differ in batch or size"
        )
    if p.iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {p.iterations}")
    out = torch.stack([_refine_one(dcrf, q, im, p) for q, im in zip(batch_p, batch_i, strict=True)])
    out = out.to(device=probs.device, dtype=probs.dtype)
    return out[0] if single else out
