"""The two networks of ms-flair-fcn and their losses.

"paper": the paper's six-convolution filter (PReLU between, sigmoid out, MSE loss).
"unet": a small 2-D U-Net reading the slice and its neighbours (BCE + soft Dice), the default
because the paper's network stays at the all-zero output here (README, method 004).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...errors import LesionDetectError

PAPER_LAYERS = ((20, 5), (20, 7), (40, 9), (60, 7), (20, 5), (1, 5))  # (channels, kernel) per convolution


class PaperFCN(nn.Module):
    """The paper's filter network: six same-padded convolutions, PReLU between, sigmoid out."""

    def __init__(self, in_channels: int = 1):
        super().__init__()
        layers, channels = [], in_channels
        for n, (out, k) in enumerate(PAPER_LAYERS):
            layers.append(nn.Conv2d(channels, out, k, padding=k // 2))
            if n < len(PAPER_LAYERS) - 1:
                layers.append(nn.PReLU(out))
            channels = out
        self.body = nn.Sequential(*layers)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.contiguous(memory_format=torch.channels_last))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(x))


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":  # per-image statistics: no train (tiles) / test (whole slices) mismatch
        return nn.GroupNorm(min(8, channels), channels)
    raise LesionDetectError(f"unknown unet_norm {kind!r}; use batch or group")


def _double_conv(cin: int, cout: int, norm: str = "batch") -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), _norm(norm, cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), _norm(norm, cout), nn.ReLU(inplace=True))


class UNet2D(nn.Module):
    """A small 2-D U-Net; inputs of any size (padded to a multiple of 2**depth inside)."""

    def __init__(self, in_channels: int = 3, base: int = 16, depth: int = 3, norm: str = "batch"):
        super().__init__()
        widths = [base * 2 ** d for d in range(depth + 1)]
        self.down = nn.ModuleList([_double_conv(in_channels, widths[0], norm)] +
                                  [_double_conv(widths[d - 1], widths[d], norm) for d in range(1, depth + 1)])
        self.up = nn.ModuleList([nn.ConvTranspose2d(widths[d + 1], widths[d], 2, stride=2) for d in range(depth)])
        self.merge = nn.ModuleList([_double_conv(2 * widths[d], widths[d], norm) for d in range(depth)])
        self.head = nn.Conv2d(widths[0], 1, 1)
        self.multiple = 2 ** depth

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.multiple, (-w) % self.multiple
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        x = x.contiguous(memory_format=torch.channels_last)
        skips = []
        for d, block in enumerate(self.down):
            x = block(x if d == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for d in reversed(range(len(self.up))):
            x = self.merge[d](torch.cat([self.up[d](x), skips[d]], dim=1))
        return self.head(x)[..., :h, :w]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(x))


def build_network(config: dict[str, Any]) -> nn.Module:
    """The configured network; it carries its training loss name (`loss`) for batch_loss."""
    channels = 1 + 2 * int(config["context_slices"])
    if config["architecture"] == "paper":
        net = PaperFCN(channels)
    elif config["architecture"] == "unet":
        net = UNet2D(channels, int(config["unet_base"]), int(config["unet_depth"]), config["unet_norm"])
    else:
        raise LesionDetectError(f"unknown architecture {config['architecture']!r}; use paper or unet")
    if config["loss"] not in ("mse", "bce_dice"):
        raise LesionDetectError(f"unknown loss {config['loss']!r}; use mse or bce_dice")
    net.loss = config["loss"]
    net.small_lesion_loss = float(config.get("small_lesion_loss", 0.0))  # weight of lesion_balanced_bce
    # channels-last runs these convolutions 2-4x faster on CPU (measured: 8 -> 34 tiles/s for
    # the paper's network); weights are saved contiguous, so files do not depend on it
    return net.to(memory_format=torch.channels_last)


def soft_dice_loss(prob: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    inter = (prob * target).sum()
    return 1 - (2 * inter + 1) / (prob.sum() + target.sum() + 1)


# 4-connected in-plane, never across tiles: the structure of scipy.ndimage.label on (batch, 1, y, x)
_TILE_CROSS = np.zeros((3, 3, 3, 3), bool)
_TILE_CROSS[1, 1] = [[0, 1, 0], [1, 1, 1], [0, 1, 0]]


def lesion_weights(labels: np.ndarray) -> np.ndarray:
    """Per-pixel weights of lesion_balanced_bce for a batch of tile masks (batch, 1, y, x):
    each 2-D lesion (connected component of a tile's mask) gets weight 1 / (its area x the
    number of lesions in the batch), so every lesion's pixels sum to the same share and all
    of them sum to 1; background 0."""
    from scipy import ndimage

    components, n = ndimage.label(np.asarray(labels) > 0, structure=_TILE_CROSS)
    if n == 0:
        return np.zeros(components.shape, np.float32)
    area = np.bincount(components.ravel(), minlength=n + 1).astype(np.float64)
    per_pixel = np.zeros(n + 1)
    per_pixel[1:] = 1.0 / (area[1:] * n)
    return per_pixel[components].astype(np.float32)


def lesion_balanced_bce(logits: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean over the batch's true lesions of each lesion's mean BCE towards "plaque" (weights
    from lesion_weights; 0 when the batch holds no lesion).  BCE + Dice are pixel sums, which
    a few large plaques dominate, so small plaques can be missed at little cost; here a
    missed 4-pixel plaque costs as much as a missed 400-pixel one (the idea of "blob loss",
    Kofler et al. 2023, reduced to its recall term; false positives stay with BCE + Dice)."""
    return (weights * F.softplus(-logits)).sum()  # softplus(-x) = BCE of logit x against target 1
