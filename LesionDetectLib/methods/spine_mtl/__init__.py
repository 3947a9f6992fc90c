"""Method 002 `spine-mtl`: bone quality and posterolateral involvement of spinal metastases in
axial CT, per slice and per vertebra (multi-task DenseNet, self-paced learning).

    method.py      the plug-in: labelled slices, the multi-task loss, the vertebra vote's
                   thresholds, prediction (slice table, vertebra points), evaluation
    network.py     the DenseNet with single / soft / hard sharing, binary heads, MLP, PI head
    data.py        the spine's centre per slice, the physical crop, bone-area extraction
    vertebrae.py   vertebra identity (labels, a user's segmentation, the built-in z split), the vote
    evaluation.py  sensitivity / specificity per class, slice and vertebra level, the paper's tables
"""

from ..registry import register
from .method import SpineMTL
from .network import build

register(SpineMTL)

__all__ = ["SpineMTL", "build"]
