"""A tiny stand-in for scops_fast.data: items with the keys the trainer reads, drawn
deterministically from the index, so tests do not depend on the real data sets."""

from __future__ import annotations

import torch

# Python floats, made a tensor per item: a tensor made at import would take the default dtype of
# whichever test imported this module first, and a float64 run in a fresh process (a DDP rank)
# would then draw other colours than one in a process where a float32 test came first.
PART_COLOURS = [[0.9, 0.2, 0.2], [0.2, 0.8, 0.3], [0.2, 0.3, 0.9], [0.9, 0.8, 0.2]]


class TinyParts(torch.utils.data.Dataset):
    """A disc of four coloured quadrants on a grey background, at a position, radius
    and rotation drawn from (seed, index)."""

    def __init__(self, n: int = 16, size: int = 32, seed: int = 0):
        self.n, self.size, self.seed = n, size, seed

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        g = torch.Generator().manual_seed(self.seed * 100_003 + i)
        s = self.size
        cx, cy = (0.35 + 0.3 * torch.rand(2, generator=g)).tolist()
        radius = 0.2 + 0.1 * float(torch.rand(1, generator=g))
        angle = float(torch.rand(1, generator=g)) * 6.2832
        ys, xs = torch.meshgrid(torch.arange(s) / s, torch.arange(s) / s, indexing="ij")
        dx, dy = xs - cx, ys - cy
        fg = dx**2 + dy**2 < radius**2
        quadrant = ((torch.atan2(dy, dx) + angle) % 6.2832 / 1.5708).long().clamp(0, 3)
        img = torch.full((3, s, s), 0.5) + 0.05 * torch.rand(3, s, s, generator=g)
        img = torch.where(fg, torch.tensor(PART_COLOURS)[quadrant].permute(2, 0, 1), img)
        parts = torch.where(fg, quadrant + 1, 0)
        landmarks = torch.tensor([[cx * s, cy * s], [(cx + radius) * s, cy * s]])
        return {
            "img": img.clamp(0, 1),
            "parts": parts,
            "fg": fg,
            "saliency": fg.float(),
            "landmarks": landmarks,
        }
