"""The multi-task DenseNet of spine-mtl and every variant of the paper's ablation.

The backbone is torchvision's DenseNet (the paper's DenseNet121: blocks 6, 12, 24, 16, growth
32, 64 initial features; smaller block counts and growth make the CPU-sized network), split
into its four dense-block stages.  `sharing` chooses how the tasks share it:

- "single":  one backbone and one 4-way bone-quality head (the paper's single-task baseline);
- "soft":    one backbone per binary task (is blastic, is lytic), an L2 penalty pulls their
             feature maps after every dense block together (the paper's eq. 4);
- "hard":    the first `shared_blocks` stages shared by all tasks, the rest one copy per task
             (3 = the paper's Hard-sharing-1, 4 = Hard-sharing-2 and the final model).

Binary heads "is blastic" and "is lytic" (2-way each); `mlp` concatenates their logits into two
linear layers (10 hidden units, tanh) giving the 4-way bone quality (normal, blastic, mixed,
lytic); without it the four classes are the products of the two binary probabilities (what
thresholding both at 0.5 and combining does).  `posterolateral` adds the 3-way head.
ImageNet weights (torchvision's densenet121 file, local only) initialise every backbone copy
when the configuration is the paper's DenseNet121.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import LesionDetectError
from ...models import load_pretrained_weights, torchvision_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PAPER_DENSENET = {"blocks": [6, 12, 24, 16], "growth_rate": 32, "init_features": 64}


def densenet_stages(config: dict[str, Any]) -> tuple[list[nn.Module], int]:
    """The DenseNet's four dense-block stages (stem + block 1, transition + block 2, ...,
    transition + block 4 + final norm and ReLU) and its output channels."""
    from torchvision.models import DenseNet

    net = DenseNet(growth_rate=int(config["growth_rate"]), block_config=tuple(int(b) for b in config["blocks"]),
                   num_init_features=int(config["init_features"]))
    f = net.features
    stages = [nn.Sequential(f.conv0, f.norm0, f.relu0, f.pool0, f.denseblock1),
              nn.Sequential(f.transition1, f.denseblock2),
              nn.Sequential(f.transition2, f.denseblock3),
              nn.Sequential(f.transition3, f.denseblock4, f.norm5, nn.ReLU())]
    return stages, net.classifier.in_features


def _imagenet_stages(stages: list[nn.Module], path) -> None:
    """Load torchvision's ImageNet densenet121 file into the four stages."""
    from torchvision.models import DenseNet121_Weights

    state = load_pretrained_weights(torchvision_file(DenseNet121_Weights.IMAGENET1K_V1), path)
    # torchvision's file keeps DenseNet's old key names ("norm.1" for "norm1")
    pattern = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|"
                         r"running_var|num_batches_tracked))$")
    state = {pattern.sub(r"\1\2", k)[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    names = [["conv0", "norm0", "relu0", "pool0", "denseblock1"], ["transition1", "denseblock2"],
             ["transition2", "denseblock3"], ["transition3", "denseblock4", "norm5"]]
    for stage, parts in zip(stages, names):
        own = {}
        for n, part in enumerate(parts):
            own.update({f"{n}.{k[len(part) + 1:]}": v for k, v in state.items() if k.startswith(part + ".")})
        missing, unexpected = stage.load_state_dict(own, strict=False)
        if unexpected or [k for k in missing if not k.endswith("num_batches_tracked")]:
            raise LesionDetectError(f"{path or 'the densenet121 weight file'}: not torchvision's ImageNet DenseNet121")


class SpineMTL(nn.Module):
    """x (b, 1, S, S) in [0, 1] -> {"blastic": (b, 2), "lytic": (b, 2), "bone_quality": (b, 4)
    log-probabilities or logits, "posterolateral": (b, 3)} (keys the variant has)."""

    def __init__(self, config: dict[str, Any], pretrained: bool = False):
        super().__init__()
        sharing, shared = config["sharing"], int(config["shared_blocks"])
        if sharing not in ("single", "soft", "hard"):
            raise LesionDetectError(f"unknown sharing {sharing!r}; use single, soft or hard")
        if sharing == "hard" and not 1 <= shared <= 4:
            raise LesionDetectError(f"shared_blocks must be 1 to 4 (got {shared})")
        if sharing == "single" and (config["mlp"] or config["posterolateral"]):
            raise LesionDetectError("the single-task network has only the 4-way bone-quality head; set mlp and "
                                    "posterolateral false, or use sharing hard")
        if sharing == "soft" and config["mlp"]:
            raise LesionDetectError("soft sharing has two separate networks and no MLP in the paper; set mlp false")
        self.sharing, self.use_mlp, self.use_pi = sharing, bool(config["mlp"]), bool(config["posterolateral"])
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        stages, channels = densenet_stages(config)
        if pretrained:
            if {k: config[k] for k in PAPER_DENSENET} != PAPER_DENSENET:
                raise LesionDetectError("ImageNet weights exist only for the paper's DenseNet121 (blocks 6 12 24 16, "
                                        "growth 32, 64 initial features); set pretrained false for this network")
            _imagenet_stages(stages, config.get("weights"))
        tasks = ["bone_quality"] if sharing == "single" else ["blastic", "lytic"] + (["posterolateral"] if self.use_pi
                                                                                     else [])
        first = 0 if sharing == "soft" else (4 if sharing == "single" else shared)
        self.shared = nn.Sequential(*stages[:first])
        # one copy of the unshared stages per task (soft: whole networks); PI rides on blastic's in soft
        branch_tasks = tasks if sharing != "soft" else ["blastic", "lytic"]
        self.branches = nn.ModuleDict({t: copy.deepcopy(nn.ModuleList(stages[first:])) for t in branch_tasks})
        classes = {"bone_quality": 4, "blastic": 2, "lytic": 2, "posterolateral": 3}
        self.heads = nn.ModuleDict({t: nn.Linear(channels, classes[t]) for t in tasks})
        if self.use_mlp:
            self.mlp = nn.Sequential(nn.Linear(4, int(config["mlp_hidden"])), nn.Tanh(),
                                     nn.Linear(int(config["mlp_hidden"]), 4))

    def forward(self, x: torch.Tensor, with_features: bool = False):
        x = (x.expand(-1, 3, -1, -1) - self.mean) / self.std
        shared = self.shared(x)
        pooled, features = {}, {}
        for task, stages in self.branches.items():
            h, maps = shared, []
            for stage in stages:
                h = stage(h)
                maps.append(h)
            features[task] = maps
            pooled[task] = F.adaptive_avg_pool2d(h, 1).flatten(1)
        out = {}
        for task, head in self.heads.items():
            out[task] = head(pooled[task if task in pooled else "blastic"])
        if self.sharing != "single":
            if self.use_mlp:
                out["bone_quality"] = self.mlp(torch.cat([out["blastic"], out["lytic"]], dim=1))
            else:  # threshold-and-combine without thresholding: products of the binary probabilities
                b, l = F.log_softmax(out["blastic"], 1), F.log_softmax(out["lytic"], 1)
                out["bone_quality"] = torch.stack([b[:, 0] + l[:, 0], b[:, 1] + l[:, 0], b[:, 1] + l[:, 1],
                                                   b[:, 0] + l[:, 1]], dim=1)
        if with_features:
            out["features"] = features
        return out


def soft_sharing_penalty(features: dict[str, list[torch.Tensor]], weights) -> torch.Tensor:
    """Per-sample sum over dense blocks of weight_i * mean squared difference between the
    blastic and lytic networks' feature maps (the paper's squared Frobenius norm, divided by
    the map's size so the weights do not depend on the network's width)."""
    pairs = zip(features["blastic"], features["lytic"], weights)
    return sum(float(w) * (a - b).pow(2).flatten(1).mean(1) for a, b, w in pairs)


def build(config: dict[str, Any], pretrained: bool = False) -> SpineMTL:
    return SpineMTL(config, pretrained)
