"""The patch classifier (VGG-16 + three new fully connected layers) and its dense form.

PatchNet:  HUEncoder -> torchvision VGG-16 `features` (five conv blocks, unchanged) ->
           Linear(512*f*f, 256) -> ReLU -> Dropout -> Linear(256, 256) -> ReLU -> Dropout ->
           Linear(256, 1)  (logit; sigmoid gives the lesion probability)
           f = patch_pixels / 32 (2 for the paper's 64 x 64 input).

Context (`context_pixels` C, 0 = the paper): the input is the P x P patch plus C patch
pixels of real image on every side; the conv blocks run on all of it and the FC layers read
only the f x f feature cells over the patch.  The classifier still decides about the 15 mm
patch, but its features never see VGG's zero padding where the dense form sees image:
with C >= 90 (the receptive field of those cells reaches 90 px beyond the patch) a patch's
probability is exactly the dense map's value (tested), whatever the weights.

`width` < 1 scales every VGG channel count (tests and quick experiments only; ImageNet
weights need width 1).

DenseNet (FCN conversion, Long et al. 2015, with "a trous" pools, Li et al. 2014): the same
weights evaluated on a whole slice region at once.  The FC layers become convolutions
(Linear(512*f*f, 256) -> Conv f x f; the others 1 x 1).  Output (a, b) is the network applied
to the P x P window starting at (a*S, b*S) input pixels, S = 32 / 2**k where the last k
max-pools get stride 1 and everything after them is dilated.  On an isolated (P + 2C)
input, output (C/S, C/S) reproduces PatchNet exactly.  Inside a larger region, whatever a
window's features reach beyond its C pixels of context is real image instead of zero
padding: nothing for C >= 90, the whole difference for the paper's C = 0 (bench measures it).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.vgg import cfgs, make_layers

from ...errors import LesionDetectError

VGG16_FILE = "vgg16-397923af.pth"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class HUEncoder(nn.Module):
    """HU (N, 1, H, W) -> the three network channels, then ImageNet normalisation.

    grey: one window (default the bone window -500..1500 HU) scaled to 0..1, repeated in the
          three channels (the paper's single-channel patches);
    3c:   channel 1 low attenuation (< 100 HU: -1000..100), channel 2 high attenuation
          (> 400 HU: 400..2000), channel 3 soft-tissue window (100..400), each clipped to
          its range and scaled to 0..1 (the paper's 3-channel patches).
    """

    def __init__(self, encoding: str, grey_window, windows_3c: dict):
        super().__init__()
        if encoding == "grey":
            windows = [tuple(grey_window)] * 3
        elif encoding == "3c":
            windows = [tuple(windows_3c[k]) for k in ("low", "high", "soft")]
        else:
            raise LesionDetectError(f"unknown encoding '{encoding}' in config; use grey or 3c")
        lo = torch.tensor([w[0] for w in windows], dtype=torch.float32).view(1, 3, 1, 1)
        hi = torch.tensor([w[1] for w in windows], dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("lo", lo, persistent=False)
        self.register_buffer("width", hi - lo, persistent=False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, hu: torch.Tensor) -> torch.Tensor:
        x = ((hu - self.lo) / self.width).clamp(0.0, 1.0)
        return (x - self.mean) / self.std


def vgg_layer_config(width: float) -> list:
    return [v if v == "M" else max(1, int(round(v * width))) for v in cfgs["D"]]


class PatchNet(nn.Module):
    def __init__(self, config: dict):
        super().__init__()
        pixels, context = int(config["patch_pixels"]), int(config.get("context_pixels", 0))
        for key, value in (("patch_pixels", pixels), ("context_pixels", context)):
            if value % 32 or value < 0:  # the FC layers read whole stride-32 feature cells
                raise LesionDetectError(f"{key} must be a multiple of 32 (VGG-16 pools five times), not {value}")
        self.context_cells, self.cells = context // 32, pixels // 32
        self.encoder = HUEncoder(config["encoding"], config["grey_window"], config["windows_3c"])
        # batch_norm (not in the paper; VGG-16-BN): trains a narrow VGG from scratch in a few
        # hundred steps; the dense form folds each BatchNorm into its convolution
        self.features = make_layers(vgg_layer_config(float(config.get("width", 1.0))),
                                    batch_norm=bool(config.get("batch_norm", False)))
        for conv in self.features:
            if isinstance(conv, nn.Conv2d):  # torchvision VGG's initialisation (He, fan-out): without
                nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")  # it, 13 layers
                nn.init.zeros_(conv.bias)  # shrink the signal and training from scratch stalls
        channels = [m for m in self.features if isinstance(m, nn.Conv2d)][-1].out_channels
        hidden = [int(h) for h in config["fc_hidden"]]
        f = pixels // 32
        layers, n_in = [], channels * f * f
        for h in hidden:
            layers += [nn.Linear(n_in, h), nn.ReLU(inplace=True), nn.Dropout(float(config["dropout"]))]
            n_in = h
        layers.append(nn.Linear(n_in, 1))
        self.head = nn.Sequential(*layers)

    def forward(self, hu: torch.Tensor) -> torch.Tensor:
        """HU patches with context (N, 1, P + 2C, P + 2C) -> logits (N,)."""
        x = self.features(self.encoder(hu))
        k, f = self.context_cells, self.cells
        return self.head(torch.flatten(x[:, :, k:k + f, k:k + f], 1))[:, 0]


def build(config: dict, pretrained: bool) -> PatchNet:
    model = PatchNet(config)
    if pretrained:
        load_imagenet_features(model, config.get("weights"))
    freeze_first_convs(model, int(config.get("frozen_layers", 0)) if pretrained else 0)
    return model


def load_imagenet_features(model: PatchNet, path=None) -> None:
    """Copy torchvision's ImageNet VGG-16 conv weights (local file only) into `model`."""
    from ...models import load_pretrained_weights

    state = load_pretrained_weights(VGG16_FILE, path)
    feats = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    own = model.features.state_dict()
    if set(feats) != set(own) or any(feats[k].shape != own[k].shape for k in own):
        where = path or VGG16_FILE
        raise LesionDetectError(f"{where}: not torchvision VGG-16 weights matching this network "
                                "(transfer learning needs width 1 and the file vgg16-397923af.pth)")
    model.features.load_state_dict(feats)


def freeze_first_convs(model: PatchNet, n: int) -> None:
    """Freeze the first `n` convolution layers (the paper freezes "the first six layers")."""
    for conv in [m for m in model.features if isinstance(m, nn.Conv2d)][:n]:  # (their BN layers still adapt)
        for p in conv.parameters():
            p.requires_grad_(False)


# --- dense (fully convolutional) form ----------------------------------------------------------

class DenseNet(nn.Module):
    """PatchNet's weights as a fully convolutional net with output stride `stride` (input px)."""

    def __init__(self, model: PatchNet, stride: int, patch_pixels: int):
        super().__init__()
        k = int(round(math.log2(32 / stride)))
        if stride not in (1, 2, 4, 8, 16, 32):
            raise LesionDetectError(f"parse stride must be 1, 2, 4, 8, 16 or 32 input pixels, not {stride}")
        self.stride, self.patch_pixels = stride, patch_pixels
        self.encoder = model.encoder
        pools = [i for i, m in enumerate(model.features) if isinstance(m, nn.MaxPool2d)]
        dense_pools = set(pools[len(pools) - k:]) if k else set()
        self.steps: list[tuple[str, object, int]] = []
        self.convs = nn.ModuleList()
        d = 1
        for i, m in enumerate(model.features):
            if isinstance(m, nn.Conv2d):
                self.convs.append(m)
                self.steps.append(("conv", len(self.convs) - 1, d))
            elif isinstance(m, nn.BatchNorm2d):  # VGG-16-BN: folded into the convolution before it
                self.convs[-1] = fold_batch_norm(self.convs[-1], m)
            elif isinstance(m, nn.MaxPool2d):
                if i in dense_pools:
                    self.steps.append(("pool1", None, d))
                    d *= 2
                else:
                    self.steps.append(("pool2", None, d))
            else:
                self.steps.append(("relu", None, d))
        self.dilation = d
        f = patch_pixels // 32
        linears = [m for m in model.head if isinstance(m, nn.Linear)]
        first = linears[0]
        channels = self.convs[-1].out_channels
        self.fc_weights = [first.weight.view(first.out_features, channels, f, f)] + \
                          [lin.weight[:, :, None, None] for lin in linears[1:]]
        self.fc_biases = [lin.bias for lin in linears]

    def forward(self, hu: torch.Tensor) -> torch.Tensor:
        """HU regions (N, 1, H, W) -> logits (N, (H-P)//S + 1, (W-P)//S + 1)."""
        x = self.encoder(hu)
        for kind, idx, d in self.steps:
            if kind == "conv":
                conv = self.convs[idx]
                x = F.conv2d(x, conv.weight, conv.bias, padding=d, dilation=d)
            elif kind == "relu":
                x = F.relu(x, inplace=True)
            elif kind == "pool2":
                x = F.max_pool2d(x, 2, 2)
            else:
                x = F.max_pool2d(x, 2, 1, dilation=d)
        for n, (w, b) in enumerate(zip(self.fc_weights, self.fc_biases)):
            x = F.conv2d(x, w, b, dilation=self.dilation if n == 0 else 1)
            if n < len(self.fc_weights) - 1:
                x = F.relu(x, inplace=True)
        return x[:, 0]


def fold_batch_norm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A convolution computing conv followed by bn in eval mode (its running statistics)."""
    folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                       conv.dilation, conv.groups, bias=True).to(conv.weight.device, conv.weight.dtype)
    with torch.no_grad():
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        folded.weight.copy_(conv.weight * scale[:, None, None, None])
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        folded.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
    return folded.requires_grad_(False)


def dense_flops(net: DenseNet, height: int, width: int) -> float:
    """FLOPs of one DenseNet forward on an (height x width) region, from the layer shapes."""
    total, h, w = 0.0, height, width
    for kind, idx, d in net.steps:
        if kind == "conv":
            conv = net.convs[idx]
            total += 2.0 * h * w * conv.in_channels * conv.out_channels * 9
        elif kind == "pool2":
            h, w = h // 2, w // 2
        elif kind == "pool1":
            h, w = h - d, w - d
    for n, wt in enumerate(net.fc_weights):
        kh = wt.shape[2]
        if n == 0:
            h, w = h - (kh - 1) * net.dilation, w - (kh - 1) * net.dilation
        total += 2.0 * h * w * wt.shape[0] * wt.shape[1] * kh * kh
    return total
