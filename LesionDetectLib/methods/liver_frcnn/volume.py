"""From per-slice 2-D detections to 3-D lesion boxes.

Boxes on consecutive slices that overlap (IoU >= `link_iou`, torchvision.ops.box_iou) are
chained into one lesion, strongest detections first; a chain's 3-D box spans its slices and
the union of its 2-D boxes, its score is the best ("max") or the mean 2-D score over its slices
("mean": a lesion seen with confidence on every slice it spans outranks one bright slice).  Overlapping 3-D boxes are then
suppressed (`nms_3d`, greedy by score, IoU of the boxes' volumes).

Pixel convention (torchvision's): a 2-D box [x0, y0, x1, y1] has pixel i covering [i, i+1),
so voxel i's centre is at i + 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torchvision.ops import box_iou

from ...geometry import Geometry
from ...prediction import LesionBox


CHAIN_SCORES = ("max", "mean")


@dataclass
class Chain:
    """One lesion followed through consecutive slices."""

    slices: list[int] = field(default_factory=list)
    boxes: list[list[float]] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)

    def scored(self, rule: str) -> float:
        if rule not in CHAIN_SCORES:
            raise ValueError(f"unknown chain score '{rule}'; use one of {', '.join(CHAIN_SCORES)}")
        return max(self.scores) if rule == "max" else float(np.mean(self.scores))

    def box3d(self) -> np.ndarray:
        """[x0, y0, z0, x1, y1, z1] in pixel/slice edges (z1 exclusive like x1, y1)."""
        b = np.asarray(self.boxes)
        return np.array([b[:, 0].min(), b[:, 1].min(), min(self.slices),
                         b[:, 2].max(), b[:, 3].max(), max(self.slices) + 1], dtype=float)


class SliceLinker:
    """Feed it the detections of slices in increasing order; it keeps only the chains that can
    still grow (those that reached the previous slice), so memory stays bounded."""

    def __init__(self, link_iou: float):
        self.link_iou = float(link_iou)
        self.open: list[Chain] = []
        self.closed: list[Chain] = []

    def add(self, k: int, boxes: np.ndarray, scores: np.ndarray) -> None:
        growing = [c for c in self.open if c.slices[-1] == k - 1]
        self.closed += [c for c in self.open if c.slices[-1] != k - 1]
        order = np.argsort(-np.asarray(scores), kind="stable")
        taken: set[int] = set()
        new_open = []
        if growing and len(boxes):
            iou = box_iou(torch.as_tensor(np.asarray(boxes, dtype=np.float32)),
                          torch.as_tensor(np.asarray([c.boxes[-1] for c in growing], dtype=np.float32))).numpy()
        for i in order:
            chain = None
            if growing:
                candidates = [(iou[i, j], j) for j in range(len(growing)) if j not in taken and iou[i, j] >= self.link_iou]
                if candidates:
                    _, j = max(candidates)
                    taken.add(j)
                    chain = growing[j]
            if chain is None:
                chain = Chain()
            chain.slices.append(int(k))
            chain.boxes.append([float(v) for v in boxes[i]])
            chain.scores.append(float(scores[i]))
            new_open.append(chain)
        self.closed += [c for j, c in enumerate(growing) if j not in taken]
        self.open = new_open

    def finish(self) -> list[Chain]:
        chains, self.open = self.closed + self.open, []
        self.closed = []
        return chains


def iou_3d(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes [x0, y0, z0, x1, y1, z1] (edges), (N, 6) x (M, 6) -> (N, M)."""
    a, b = np.atleast_2d(a).astype(float), np.atleast_2d(b).astype(float)
    lo = np.maximum(a[:, None, :3], b[None, :, :3])
    hi = np.minimum(a[:, None, 3:], b[None, :, 3:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=2)
    vol_a = np.prod(a[:, 3:] - a[:, :3], axis=1)
    vol_b = np.prod(b[:, 3:] - b[:, :3], axis=1)
    return inter / np.maximum(vol_a[:, None] + vol_b[None, :] - inter, 1e-12)


def nms_3d(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[int]:
    """Indices kept by greedy non-maximum suppression of 3-D boxes, best score first
    (torchvision.ops.nms is 2-D only; this is the same rule on volumes)."""
    order = list(np.argsort(-np.asarray(scores), kind="stable"))
    keep: list[int] = []
    while order:
        best = order.pop(0)
        keep.append(int(best))
        if order:
            overlap = iou_3d(boxes[best], boxes[order])[0]
            order = [i for i, o in zip(order, overlap) if o <= iou_threshold]
    return keep


def chains_to_boxes(chains: list[Chain], geometry: Geometry, nms_iou: float, min_score: float,
                    max_boxes: int, score_rule: str = "max") -> list[LesionBox]:
    """LesionBoxes in physical space for the chains that survive 3-D NMS and the score floor
    (chain scores by `score_rule`); each carries its per-slice 2-D boxes in `extra`."""
    scored = [(c, c.scored(score_rule)) for c in chains]
    chains, scores = [c for c, s in scored if s >= min_score], [s for c, s in scored if s >= min_score]
    if not chains:
        return []
    boxes = np.stack([c.box3d() for c in chains])
    keep = nms_3d(boxes, np.array(scores), nms_iou)[:max_boxes]
    out = []
    for i in keep:
        c, score, (x0, y0, z0, x1, y1, z1) = chains[i], scores[i], boxes[i]
        # pixel edges -> inclusive continuous voxel indices (centre of voxel i is at edge i + 0.5)
        lo, hi = [x0, y0, z0], [x1 - 1, y1 - 1, z1 - 1]
        key = c.slices[int(np.argmax(c.scores))]
        out.append(LesionBox.from_index_range(
            geometry, lo, hi, score=score, label="lesion",
            extra={"key_slice": key,
                   "slices": [{"slice": k, "box": [round(v, 2) for v in b], "score": round(s, 4)}
                              for k, b, s in zip(c.slices, c.boxes, c.scores)]}))
    return out
