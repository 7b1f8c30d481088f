"""Random transforms of the equivariance branch: TPS warps and colour jitter.

Both are drawn for the whole global batch from generators that every rank seeds
alike, and each rank uses its slice: ranks get different warps (their own stream of
the global one), and the run does not depend on how many processes share it.
"""

from __future__ import annotations

import torch
import torchvision.transforms.v2.functional as TF

from scops_fast.models.common import CAFFE_MEAN_RGB
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
    generator. Images in and out are in [0, 1].

    `cfg.implementation`: "tensor" jitters torchvision tensors, the input and output
    rounded to 8-bit levels. "pil" is the original's path: each image goes to an 8-bit
    PIL image by truncation (`ToPILImage` of a float tensor), through PIL's adjustments
    and back, with the original's float32 arithmetic, so the same draws give the
    original's images bit for bit. `cfg.bgr_quirk` feeds the jitter the original's
    colour-shifted image (`scops_fast.models.vgg.BGR_QUIRK_SHIFT`) and removes the
    shift after it, as the original's mean mix-up does.
    """

    def __init__(self, cfg: JitterConfig, global_batch: int, generator: torch.Generator):
        self.cfg, self.global_batch, self.generator = cfg, global_batch, generator

    def draw(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(factors (B, 4): brightness, contrast, saturation, hue shift; orders (B, 4):
        each image's order of the four) for the global batch."""
        b, g, c = self.global_batch, self.generator, self.cfg
        u = torch.rand(b, 4, generator=g, dtype=torch.float64)
        amount = torch.tensor([c.brightness, c.contrast, c.saturation, c.hue], dtype=torch.float64)
        factors = 1.0 + (2.0 * u - 1.0) * amount
        factors[:, 3] -= 1.0  # hue is a shift, not a factor
        orders = torch.stack([torch.randperm(4, generator=g) for _ in range(b)])
        return factors, orders

    def __call__(self, images: torch.Tensor, local: slice) -> torch.Tensor:
        factors, orders = self.draw()
        return self.apply(images, factors[local], orders[local])

    def apply(self, images: torch.Tensor, factors, orders) -> torch.Tensor:
        """Jitters images (B, 3, H, W) with given factors and orders (see `draw`)."""
        factors, orders = torch.as_tensor(factors).tolist(), torch.as_tensor(orders).tolist()
        if self.cfg.implementation == "pil":
            return torch.stack(
                [self._pil(img, f, o) for img, f, o in zip(images, factors, orders, strict=True)]
            ).to(images.device)
        shift = _quirk_shift(images) if self.cfg.bgr_quirk else 0.0
        out = [
            self._adjust(img, f, o)
            for img, f, o in zip(_to_8bit(images + shift), factors, orders, strict=True)
        ]
        return _to_8bit(torch.stack(out)) - shift

    def _adjust(self, img, f, order):
        """The four adjustments of `order` with factors f, on a tensor or a PIL image."""
        for op in order:
            if op == 0 and self.cfg.brightness:
                img = TF.adjust_brightness(img, f[0])
            elif op == 1 and self.cfg.contrast:
                img = TF.adjust_contrast(img, f[1])
            elif op == 2 and self.cfg.saturation:
                img = TF.adjust_saturation(img, f[2])
            elif op == 3 and self.cfg.hue:
                img = TF.adjust_hue(img, f[3])
        return img

    def _pil(self, img: torch.Tensor, f, order) -> torch.Tensor:
        # The original's arithmetic, all float32: its loader's image is u - mean_rgb; it adds
        # its (BGR-ordered) mean back, divides by 255, clips, and ToPILImage truncates x*255.
        # The mean it adds back and subtracts again: BGR-ordered with the quirk.
        mean = _MEAN_BGR if self.cfg.bgr_quirk else _MEAN_RGB
        levels = torch.round(img.detach().cpu().float().clamp(0, 1) * 255.0)
        caffe = levels - _MEAN_RGB
        x = ((caffe + mean) / 255.0).clamp(0.0, 1.0)
        pil = TF.to_pil_image((x * 255.0).to(torch.uint8))
        out = TF.pil_to_tensor(self._adjust(pil, f, order)).float() / 255.0
        caffe_out = out * 255.0 - mean
        return (caffe_out + _MEAN_RGB) / 255.0


#: The caffe means of the original, (3, 1, 1) float32: RGB order, and the BGR-ordered
#: vector it adds to RGB images (its mix-up).
_MEAN_RGB = torch.tensor(CAFFE_MEAN_RGB, dtype=torch.float32).view(3, 1, 1)
_MEAN_BGR = _MEAN_RGB.flip(0)


def _quirk_shift(images: torch.Tensor) -> torch.Tensor:
    shift = (_MEAN_BGR - _MEAN_RGB) / 255.0
    return shift.to(device=images.device, dtype=images.dtype)


def _to_8bit(images: torch.Tensor) -> torch.Tensor:
    return torch.round(images.clamp(0.0, 1.0) * 255.0) / 255.0
