"""The paper's three networks: Faster R-CNN (ResNet-50 FPN, or VGG-16 / small backbones) and the
two baseline box regressors (plain CNN, and CNN on the input concatenated with VGG-16 features).

Pretrained weights are never downloaded: `pretrained=True` loads torchvision's ImageNet (or,
for ResNet-50, COCO detector) file from $TORCH_HOME/hub/checkpoints or the config's `weights`
path via models.load_pretrained_weights, which says where to put a missing file.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ...errors import LesionDetectError
from ...models import load_pretrained_weights, torchvision_file

FRCNN_BACKBONES = ("resnet50", "resnet18", "vgg16", "mobilenet_v3_large")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _imagenet_file(backbone: str) -> str:
    from torchvision import models as tvm

    enums = {"resnet50": tvm.ResNet50_Weights.IMAGENET1K_V1, "resnet18": tvm.ResNet18_Weights.IMAGENET1K_V1,
             "vgg16": tvm.VGG16_Weights.IMAGENET1K_V1,
             "mobilenet_v3_large": tvm.MobileNet_V3_Large_Weights.IMAGENET1K_V1}
    return torchvision_file(enums[backbone])


def uses_transfer(config: dict[str, Any]) -> bool:
    """Whether the network is built for pretrained weights (frozen batch-norm statistics, as
    torchvision does); decided by the config alone so a saved model rebuilds identically."""
    return bool(config.get("pretrained") or config.get("weights"))


# --- Faster R-CNN ---------------------------------------------------------------------------

def build_faster_rcnn(config: dict[str, Any], pretrained: bool) -> nn.Module:
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import mobilenet_backbone, resnet_fpn_backbone
    from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign

    name = config["backbone"]
    if name not in FRCNN_BACKBONES:
        raise LesionDetectError(f"unknown backbone '{name}' for Faster R-CNN; use one of {', '.join(FRCNN_BACKBONES)}")
    transfer = uses_transfer(config)
    # torchvision's rule: frozen BN and 3 trainable stages on pretrained weights; from random
    # initialisation every stage trains and batch-norm learns its statistics.
    norm = FrozenBatchNorm2d if transfer else nn.BatchNorm2d
    sizes = tuple(int(s) for s in config["anchor_sizes"])
    ratios = tuple(float(r) for r in config["aspect_ratios"])
    roi_pool = None
    stages = int(config.get("backbone_stages", 4))
    fpn_channels = int(config.get("fpn_channels", 256))
    if name in ("resnet50", "resnet18"):
        if not 1 <= stages <= 4:
            raise LesionDetectError(f"backbone_stages must be 1 to 4 (ResNet stages kept), not {stages}")
        layers = int(config["trainable_layers"]) if transfer else 5
        # backbone_stages < 4: the ResNet cut after that stage (the later, widest stages are
        # never built), FPN on the stages kept; fpn_channels narrows the FPN (a small model)
        backbone = resnet_fpn_backbone(backbone_name=name, weights=None, norm_layer=norm, trainable_layers=layers,
                                       returned_layers=list(range(1, stages + 1)))
        if fpn_channels != backbone.out_channels:
            backbone = _narrow_fpn(backbone, name, stages, fpn_channels)
        n_maps = stages + 1  # FPN levels P2.. plus the max-pooled top: 5 maps for the paper's five sizes
        if stages < 4:
            roi_pool = MultiScaleRoIAlign(featmap_names=[str(i) for i in range(stages)], output_size=7,
                                          sampling_ratio=2)
    elif name == "mobilenet_v3_large":
        layers = int(config["trainable_layers"]) if transfer else 6
        backbone = mobilenet_backbone(backbone_name=name, weights=None, fpn=True, norm_layer=norm,
                                      trainable_layers=layers)
        n_maps = 3
    else:  # vgg16: the conv layers up to conv5_3 (stride 16), one feature map, all anchors on it
        from torchvision.models import vgg16

        backbone = vgg16().features[:-1]
        backbone.out_channels = 512
        n_maps = 1
        roi_pool = MultiScaleRoIAlign(featmap_names=["0"], output_size=7, sampling_ratio=2)
    if n_maps == len(sizes):
        anchor_sizes = tuple((s,) for s in sizes)
    elif len(sizes) % n_maps == 0:  # e.g. six sizes on three maps: the smallest two on the finest map
        per = len(sizes) // n_maps
        anchor_sizes = tuple(sizes[i * per:(i + 1) * per] for i in range(n_maps))
    else:  # every size on every map (same anchor count per location)
        anchor_sizes = (sizes,) * n_maps
    anchors = AnchorGenerator(sizes=anchor_sizes, aspect_ratios=(ratios,) * n_maps)
    size = int(config["image_size"])
    box_head = box_predictor = None
    head_size = int(config.get("box_head_size", 1024))
    if head_size != 1024:  # torchvision's TwoMLPHead is 1024 wide: most of a small detector's weights
        from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead

        box_head = TwoMLPHead(backbone.out_channels * 7 * 7, head_size)
        box_predictor = FastRCNNPredictor(head_size, 2)
    model = FasterRCNN(
        backbone, num_classes=None if box_predictor is not None else 2, rpn_anchor_generator=anchors,
        box_roi_pool=roi_pool, box_head=box_head, box_predictor=box_predictor,
        min_size=size, max_size=size, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD,
        rpn_pre_nms_top_n_test=int(config["rpn_proposals_test"]),
        rpn_post_nms_top_n_test=int(config["rpn_proposals_test"]),
        box_score_thresh=float(config["min_score"]), box_nms_thresh=float(config["slice_nms_iou"]),
        box_detections_per_img=int(config["detections_per_slice"]),
        box_batch_size_per_image=int(config["roi_samples_per_image"]))
    if int(config.get("train_crop", 0)) > 0:
        # training crops arrive already at the network's scale (KeySliceSamples); resizing them
        # would magnify them.  torchvision's own switch for this, honoured in training mode only.
        model.transform._skip_resize = True
    if pretrained:
        _load_frcnn_pretrained(model, config)
    return model


def _narrow_fpn(backbone: nn.Module, name: str, stages: int, channels: int) -> nn.Module:
    """The same ResNet body with an FPN of `channels` channels instead of 256."""
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    widest = 512 if name == "resnet18" else 2048
    in_channels = [widest // 2 ** (4 - i) for i in range(1, stages + 1)]
    return_layers = {f"layer{i}": str(i - 1) for i in range(1, stages + 1)}
    narrow = BackboneWithFPN(backbone.body, return_layers, in_channels, channels, extra_blocks=LastLevelMaxPool())
    narrow.body = backbone.body  # the body already cut (IntermediateLayerGetter), frozen as configured
    return narrow


def _load_frcnn_pretrained(model: nn.Module, config: dict[str, Any]) -> None:
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

    name, source = config["backbone"], config.get("pretrained_source", "imagenet")
    if source == "coco":
        if name != "resnet50":
            raise LesionDetectError(f"COCO detector weights exist for the resnet50 backbone only, not '{name}'")
        state = load_pretrained_weights(torchvision_file(FasterRCNN_ResNet50_FPN_Weights.COCO_V1), config.get("weights"))
        # the class head has COCO's 91 classes: keep ours (lesion vs background)
        state = {k: v for k, v in state.items() if not k.startswith("roi_heads.box_predictor.")}
        _load_part(model, state, "COCO Faster R-CNN")
        return
    if source != "imagenet":
        raise LesionDetectError(f"unknown pretrained_source '{source}'; use imagenet or coco")
    state = load_pretrained_weights(_imagenet_file(name), config.get("weights"))
    if name == "vgg16":
        body = model.backbone
        state = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    elif name == "mobilenet_v3_large":
        body = model.backbone.body
        state = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    else:
        body = model.backbone.body
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    _load_part(body, state, f"ImageNet {name}")


def _load_part(module: nn.Module, state: dict, what: str) -> None:
    own = module.state_dict()
    # frozen batch-norm keeps no step counter
    state = {k: v for k, v in state.items() if k in own or not k.endswith("num_batches_tracked")}
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable or len(usable) < 0.9 * len(state):
        raise LesionDetectError(f"the {what} weight file does not fit this network "
                                f"({len(usable)} of {len(state)} tensors match); is it the right file?")
    module.load_state_dict(usable, strict=False)


# --- baselines ------------------------------------------------------------------------------

class BoxRegressor(nn.Module):
    """The paper's baseline (its Fig. 2): conv-conv-pool-conv-conv-pool-dense -> 4 box
    coordinates (x0, y0, x1, y1 as fractions of the image), trained with MSE."""

    def __init__(self, in_channels: int, image_size: int, width: int = 16, dropout: float = 0.0):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2))
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(2 * width * (image_size // 4) ** 2, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(torch.flatten(self.features(x), 1)))


class VGGConcatRegressor(nn.Module):
    """Baseline + VGG-16 (the paper's second model): VGG-16 conv features with the block-4 and
    block-5 pools removed (stride 8, 512 channels), upsampled to the input size and
    concatenated with the input, feed the baseline regressor.  VGG-16 stays frozen."""

    def __init__(self, image_size: int, width: int = 16, dropout: float = 0.05):
        super().__init__()
        from torchvision.models import vgg16

        features = vgg16().features
        pools_kept = [m for i, m in enumerate(features) if i not in (23, 30)]  # indices of pool4, pool5
        self.vgg = nn.Sequential(*pools_kept)
        for p in self.vgg.parameters():
            p.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.regressor = BoxRegressor(3 + 512, image_size, width, dropout)

    def train(self, mode: bool = True):
        super().train(mode)
        self.vgg.eval()  # frozen feature extractor
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            feats = self.vgg((x - self.mean) / self.std)
            feats = F.interpolate(feats, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.regressor(torch.cat([x, feats], dim=1))

    def load_imagenet(self, config: dict[str, Any]) -> None:
        state = load_pretrained_weights(_imagenet_file("vgg16"), config.get("weights"))
        kept = [i for i in range(31) if i not in (23, 30)]
        renamed = {}
        for key, value in state.items():
            parts = key.split(".")
            if parts[0] == "features" and int(parts[1]) in kept:
                renamed[f"{kept.index(int(parts[1]))}.{parts[2]}"] = value
        _load_part(self.vgg, renamed, "ImageNet vgg16")


def build_regressor(config: dict[str, Any], pretrained: bool) -> nn.Module:
    size, width = int(config["image_size"]), int(config["regressor_width"])
    if config["model"] == "cnn_regressor":
        return BoxRegressor(3, size, width, float(config["dropout"]))
    model = VGGConcatRegressor(size, width, float(config["dropout"]))
    if pretrained:
        model.load_imagenet(config)
    return model


# --- running the detector ------------------------------------------------------------------

@torch.no_grad()
def detect(model: torch.nn.Module, stack_batch: np.ndarray, device: torch.device
           ) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(boxes (n, 4) in the slice's pixels, scores (n,))] for uint8 stacks (b, 3, y, x)."""
    # oneDNN and cuDNN convolutions run fastest on NHWC: 0.86 -> 0.59 s per 512 px slice on 2
    # CPU cores (ResNet-50 FPN); a no-op once the backbone is converted
    if isinstance(getattr(model, "backbone", None), torch.nn.Module):
        model.backbone.to(memory_format=torch.channels_last)
    images = [torch.from_numpy(s).to(device).float().div_(255.0) for s in stack_batch]
    return [(o["boxes"].cpu().numpy(), o["scores"].cpu().numpy()) for o in model(images)]

