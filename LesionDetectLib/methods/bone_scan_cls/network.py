"""The image classifiers of bone-scan-cls and their class-activation map.

Every network is a `Classifier`: a convolutional `body` giving a feature map and a `head`
turning it into one metastasis logit, so Grad-CAM (Selvaraju et al. 2017) reads the body's
output the same way for all of them.  The paper's three ImageNet networks (torchvision
ResNet50, VGG19, DenseNet121 with a new one-logit head) see the grey scintigram repeated in
three channels with ImageNet's normalisation; the compact default is a small CNN that trains
on 2 CPU cores in minutes.  ImageNet weights come from a local torchvision file only.
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import LesionDetectError
from ...models import load_pretrained_weights, torchvision_file

ARCHITECTURES = ("compact", "resnet50", "vgg19", "densenet121")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Classifier(nn.Module):
    """`head(body(prepare(x)))`: x (b, 1, H, W) in [0, 1] -> one logit per image (b,)."""

    def __init__(self, body: nn.Module, head: nn.Module, rgb: bool):
        super().__init__()
        self.body, self.head, self.rgb = body, head, rgb
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return (x.expand(-1, 3, -1, -1) - self.mean) / self.std if self.rgb else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.prepare(x)))[:, 0]

    def forward_with_cam(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (b,), Grad-CAM (b, h, w) on the feature grid, >= 0, unnormalised)."""
        with torch.inference_mode(False), torch.enable_grad():
            features = self.body(self.prepare(x.clone()))  # a clone: inference tensors cannot enter autograd
            if not features.requires_grad:  # inference mode: track gradients from here on
                features = features.detach().requires_grad_(True)
            logits = self.head(features)[:, 0]
            (grads,) = torch.autograd.grad(logits.sum(), features)
        weights = grads.mean(dim=(2, 3), keepdim=True)  # one weight per channel
        cam = F.relu((weights * features).sum(dim=1))
        return logits.detach(), cam.detach()


class GlobalPoolHead(nn.Sequential):
    def __init__(self, channels: int, dropout: float):
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels, 1))


def compact_body(widths: list[int]) -> nn.Sequential:
    """Conv blocks (two 3x3 conv + batch norm + ReLU, then 2x2 max-pool), one per width."""
    layers, cin = [], 1
    for n, width in enumerate(widths):
        for _ in range(2):
            layers += [nn.Conv2d(cin, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            cin = width
        if n < len(widths) - 1:  # the last block keeps its resolution for the activation map
            layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


def _imagenet_state(architecture: str, path) -> dict:
    from torchvision import models as tvm

    enums = {"resnet50": tvm.ResNet50_Weights.IMAGENET1K_V1, "vgg19": tvm.VGG19_Weights.IMAGENET1K_V1,
             "densenet121": tvm.DenseNet121_Weights.IMAGENET1K_V1}
    state = load_pretrained_weights(torchvision_file(enums[architecture]), path)
    if architecture == "densenet121":  # torchvision's files keep DenseNet's old key names
        pattern = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
                             r"((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")
        state = {pattern.sub(r"\1\2", k): v for k, v in state.items()}
    return state


def _load_imagenet(net: nn.Module, architecture: str, path, head_prefix: str) -> None:
    state = {k: v for k, v in _imagenet_state(architecture, path).items() if not k.startswith(head_prefix)}
    missing, unexpected = net.load_state_dict(state, strict=False)
    # torchvision's older files have no batch-norm step counters; those may be missing
    wrong = [k for k in missing if not k.startswith(head_prefix) and not k.endswith("num_batches_tracked")]
    wrong += list(unexpected)
    if wrong:
        raise LesionDetectError(f"{path or architecture}: not torchvision's ImageNet {architecture} weights "
                                f"(keys {', '.join(wrong[:3])} ...)")


def build(config: dict[str, Any], pretrained: bool = False) -> Classifier:
    """The configured classifier; `pretrained` loads torchvision's ImageNet weights (local file)."""
    from torchvision import models as tvm

    arch, dropout = config["architecture"], float(config["dropout"])
    if arch == "compact":
        if pretrained:
            raise LesionDetectError("the compact network has no ImageNet weights; set pretrained false or choose "
                                    "resnet50, vgg19 or densenet121")
        widths = [int(w) for w in config["compact_widths"]]
        return Classifier(compact_body(widths), GlobalPoolHead(widths[-1], dropout), rgb=False)
    weights = config.get("weights")
    if arch == "resnet50":
        net = tvm.resnet50(weights=None)
        if pretrained:
            _load_imagenet(net, arch, weights, "fc.")
        body = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4)
        return Classifier(body, GlobalPoolHead(2048, dropout), rgb=True)
    if arch == "densenet121":
        net = tvm.densenet121(weights=None)
        if pretrained:
            _load_imagenet(net, arch, weights, "classifier.")
        return Classifier(nn.Sequential(net.features, nn.ReLU()), GlobalPoolHead(1024, dropout), rgb=True)
    if arch == "vgg19":
        net = tvm.vgg19(weights=None)
        if pretrained:
            _load_imagenet(net, arch, weights, "classifier.6.")
        net.classifier[6] = nn.Linear(4096, 1)
        head = nn.Sequential(net.avgpool, nn.Flatten(), net.classifier)
        return Classifier(net.features[:-1], nn.Sequential(nn.MaxPool2d(2), head), rgb=True)
    raise LesionDetectError(f"unknown architecture {arch!r}; use one of {', '.join(ARCHITECTURES)}")
