"""Random transforms of the equivariance branch: TPS warps and colour jitter.

Both are drawn for the whole global batch from generators that every rank seeds
alike, and each rank uses its slice: ranks get different warps (their own stream of
the global one), and the run does not depend on how many processes share it.
"""

from __future__ import annotations

import torch
import torchvision.transforms.v2.functional as TF

from scops_fast.tps import RandTPS
from scops_fast.train.config import JitterConfig, WarpConfig


class GlobalBatchWarps:
    """Source control points (B_local, 25, 2) of fresh random TPS warps per step."""

    def __init__(self, cfg: WarpConfig, size: int, global_batch: int, generator: torch.Generator):
        self.generator = generator
        self.rand_tps = RandTPS(
            size,
            size,
            batch_size=global_batch,
            sigma=cfg.sigma,
            random_mirror=cfg.random_mirror,
            random_scale=None if cfg.random_scale is None else tuple(cfg.random_scale),
            mode=cfg.mode,
            generator=generator,
        )

    def draw(self, local: slice) -> torch.Tensor:
        self.rand_tps.reset_control_points()
        return self.rand_tps.source_control_points[local].clone()


class GlobalBatchColorJitter:
    """torchvision ColorJitter semantics (factors uniform in [1-a, 1+a], hue shift in
    [-h, h], the four adjustments in a random order per image), drawn from a private
    generator; inputs and outputs are 8-bit levels in [0, 1], as the original jittered
    8-bit PIL images."""

    def __init__(self, cfg: JitterConfig, global_batch: int, generator: torch.Generator):
        self.cfg, self.global_batch, self.generator = cfg, global_batch, generator

    def _draw(self):
        b, g, c = self.global_batch, self.generator, self.cfg
        u = torch.rand(b, 4, generator=g, dtype=torch.float64)
        amount = torch.tensor([c.brightness, c.contrast, c.saturation, c.hue], dtype=torch.float64)
        factors = 1.0 + (2.0 * u - 1.0) * amount
        factors[:, 3] -= 1.0  # hue is a shift, not a factor
        orders = torch.stack([torch.randperm(4, generator=g) for _ in range(b)])
        return factors, orders

    def __call__(self, images: torch.Tensor, local: slice) -> torch.Tensor:
        factors, orders = self._draw()
        factors, orders = factors[local].tolist(), orders[local].tolist()
        images = _to_8bit(images)
        out = []
        for img, f, order in zip(images, factors, orders, strict=True):
            for op in order:
                if op == 0 and self.cfg.brightness:
                    img = TF.adjust_brightness(img, f[0])
                elif op == 1 and self.cfg.contrast:
                    img = TF.adjust_contrast(img, f[1])
                elif op == 2 and self.cfg.saturation:
                    img = TF.adjust_saturation(img, f[2])
                elif op == 3 and self.cfg.hue:
                    img = TF.adjust_hue(img, f[3])
            out.append(img)
        return _to_8bit(torch.stack(out))


def _to_8bit(images: torch.Tensor) -> torch.Tensor:
    return torch.round(images.clamp(0.0, 1.0) * 255.0) / 255.0
