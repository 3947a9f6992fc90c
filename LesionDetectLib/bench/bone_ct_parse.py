"""bone-ct-patch: dense volume parsing against the paper's per-patch method (seconds per slice, |dp|).

On generated 512 x 512 pelvis-level CT slices (0.8 mm, about 8 % bone: sacrum, iliac wings,
acetabula and femoral heads, pubic bones; cortex 800 HU around 250 HU marrow, soft tissue,
fat, noise), in one run:

- dense: `DenseParser.parse_slice` over the whole bone mask, median seconds per slice;
- per-patch (the paper's method, one 15 mm patch per bone voxel): a random sample of bone
  voxels is classified patch by patch (with the model's context, if it has one), and the
  time is extrapolated to every bone voxel of the slice; `paper_patch_s_per_slice` times
  the same for a context-free 64 px patch, the paper's own per-patch cost;
- max |dp| at the output grid (`max_abs_dp`): a random sample of the dense grid's nodes is
  classified patch by patch and compared with the dense network's node outputs; at bone
  voxels (`max_abs_dp_voxels`) the dense map, interpolated between nodes, is compared with
  the patch probabilities of the sampled voxels;
- peak RSS of the process; FLOP efficiency = FLOPs the dense network executed / time /
  this machine's measured peak (median of 2048^2 float32 matmuls).

The network is the paper's (VGG-16 width 1, 64 px, 3-channel), randomly initialised unless
`model_path` names a trained model: a random network's probabilities vary little, so a
trained model gives the meaningful |dp| (Testing/benchmarks/bone_ct_patch_parse.py does).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ..methods.bone_ct_patch.network import PatchNet, dense_flops
from ..methods.bone_ct_patch.parsing import DenseParser, ParseSettings, per_patch_probabilities
from .measure import peak_rss_mb

NAME = "bone-ct-parse"

PAPER_MODEL = {"patch_pixels": 64, "patch_mm": 15.0, "encoding": "3c", "grey_window": [-500.0, 1500.0],
               "windows_3c": {"low": [-1000.0, 100.0], "high": [400.0, 2000.0], "soft": [100.0, 400.0]},
               "width": 1.0, "fc_hidden": [256, 256], "dropout": 0.5,
               "context_pixels": 0, "parse_stride": 16, "parse_tile": 8}


def pelvis_slice(size: int = 512, spacing: float = 0.8, seed: int = 0, bone_fraction: float = 0.08
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(HU (size, size) float32, bone mask uint8) of a pelvis-level axial slice."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) * spacing
    c = size * spacing / 2

    def ellipse(cy, cx, ry, rx, angle=0.0):
        ca, sa = np.cos(angle), np.sin(angle)
        dy, dx = yy - cy, xx - cx
        u, v = ca * dx + sa * dy, -sa * dx + ca * dy
        return np.sqrt((u / rx) ** 2 + (v / ry) ** 2)  # < 1 inside

    body = ellipse(c, c, 0.36 * size * spacing, 0.46 * size * spacing)
    hu = np.full((size, size), -1000.0, np.float32)
    hu[body < 1] = -100.0  # fat
    hu[body < 0.9] = 40.0  # muscle / organs
    # bones: (cy, cx, ry, rx, angle) in mm relative to the centre, scaled to hit the bone fraction
    bones = [(60, 0, 22, 32, 0.0),  # sacrum
             (25, -95, 16, 62, 0.5), (25, 95, 16, 62, -0.5),  # iliac wings
             (-10, -120, 28, 28, 0.0), (-10, 120, 28, 28, 0.0),  # femoral heads / acetabula
             (-70, -35, 11, 30, -0.3), (-70, 35, 11, 30, 0.3)]  # pubic bones
    scale = 1.0
    for _ in range(30):  # grow or shrink every bone until the mask holds the asked fraction
        dist = np.min([ellipse(c + cy, c + cx, ry * scale, rx * scale, a) for cy, cx, ry, rx, a in bones], axis=0)
        frac = float((dist < 1).mean())
        if abs(frac - bone_fraction) < 0.002:
            break
        scale *= (bone_fraction / frac) ** 0.5
    bone = dist < 1
    hu[bone] = 250.0
    hu[bone & (dist > 1 - 2.5 / (12 * scale))] = 800.0  # about 2.5 mm cortex
    hu += rng.normal(0, 20, hu.shape).astype(np.float32)
    return hu, bone.astype(np.uint8)


def machine_gflops(n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2.0 * n ** 3 / float(np.median(times)) / 1e9


def bone_ct_parse(slices: int = 3, size: int = 512, spacing: float = 0.8, patch_sample: int = 128,
                  model: PatchNet | None = None, config: dict | None = None, seed: int = 0) -> dict:
    """Measure dense vs per-patch parsing (see the module docstring); returns the results dict."""
    config = {**PAPER_MODEL, **(config or {})}
    torch.manual_seed(seed)
    if model is None:
        model = PatchNet(config)
    model = model.eval()
    device = torch.device("cpu")
    settings = ParseSettings.of(config)
    parser = DenseParser(model, settings, device)
    spacing_xyz = (spacing, spacing, 2.0)
    gflops = machine_gflops()
    rng = np.random.default_rng(seed)
    # the paper's context-free 64 px patches, timed only (same width, untrained)
    paper_net = PatchNet({**config, "context_pixels": 0}).eval() if settings.context else None
    paper_patches = ParseSettings.of(config, context=0)
    dense_times, patch_times, paper_times, dps, dps_vox, refs, bone_voxels, flops = [], [], [], [], [], [], [], []
    for k in range(slices):
        hu, bone = pelvis_slice(size, spacing, seed + k)
        flops_before = parser.flops
        t = time.perf_counter()
        prob, nodes, (gx, gy) = parser.parse_slice_with_nodes(hu, bone, spacing_xyz)
        dense_times.append(time.perf_counter() - t)
        flops.append(parser.flops - flops_before)
        # the paper's way: one patch per bone voxel (timed on a sample, extrapolated)
        ys, xs = np.nonzero(bone)
        pick = rng.choice(len(ys), size=min(patch_sample, len(ys)), replace=False)
        centres = np.stack([np.zeros(len(pick)), ys[pick], xs[pick]], axis=1).astype(float)
        t = time.perf_counter()
        ref = per_patch_probabilities(model, hu[None], spacing_xyz, centres, settings, device)
        patch_times.append((time.perf_counter() - t) / len(pick) * len(ys))
        if paper_net is not None:
            t = time.perf_counter()
            per_patch_probabilities(paper_net, hu[None], spacing_xyz, centres, paper_patches, device)
            paper_times.append((time.perf_counter() - t) / len(pick) * len(ys))
        dps_vox.append(np.abs(prob[ys[pick], xs[pick]] - ref))
        refs.append(ref)
        bone_voxels.append(len(ys))
        # the same output grid: dense node outputs against patches centred on those nodes
        a, b = np.nonzero(~np.isnan(nodes))
        take = rng.choice(len(a), size=min(patch_sample, len(a)), replace=False)
        node_centres = np.stack([np.zeros(len(take)), a[take] * gy, b[take] * gx], axis=1)
        node_ref = per_patch_probabilities(model, hu[None], spacing_xyz, node_centres, settings, device)
        dps.append(np.abs(nodes[a[take], b[take]] - node_ref))
    dense = float(np.median(dense_times))
    per_patch = float(np.median(patch_times))
    paper_patch = float(np.median(paper_times)) if paper_times else per_patch
    dp, dp_vox = np.concatenate(dps), np.concatenate(dps_vox)
    patch_flops = dense_flops(DenseParser(model, ParseSettings.of(config, stride=32), device).net,
                              settings.window, settings.window)
    return {
        "dense_s_per_slice": round(dense, 3),
        "per_patch_s_per_slice": round(per_patch, 1),
        "ratio": round(per_patch / dense, 1),
        "paper_patch_s_per_slice": round(paper_patch, 1),
        "ratio_vs_paper_patches": round(paper_patch / dense, 1),
        "max_abs_dp": float(dp.max()),
        "mean_abs_dp": float(dp.mean()),
        "max_abs_dp_voxels": float(dp_vox.max()),
        "mean_abs_dp_voxels": float(dp_vox.mean()),
        "peak_rss_mb": peak_rss_mb(),
        "flop_efficiency": round(float(np.median(flops)) / dense / (gflops * 1e9), 3),
        "machine_gflops": round(gflops, 1),
        "dense_gflop_per_slice": round(float(np.median(flops)) / 1e9, 1),
        "per_patch_gflop_per_slice": round(patch_flops * float(np.median(bone_voxels)) / 1e9, 1),
        "volume_512x512x100_dense_s": round(dense * 100, 1),
        "bone_fraction": round(float(np.median(bone_voxels)) / size ** 2, 4),
        "slices": slices,
        "patch_sample_per_slice": int(min(patch_sample, min(bone_voxels))),
        "per_patch_probability_sd": float(np.std(np.concatenate(refs))),
        "parse_stride": settings.stride, "parse_tile": settings.tile, "context_pixels": settings.context,
        "parse_precision": settings.precision,
        "patch_pixels": settings.patch_pixels, "threads": torch.get_num_threads(),
    }


def run(quick: bool = False) -> dict:
    if quick:  # one small slice, a narrow network: the same code in seconds
        return bone_ct_parse(slices=1, size=128, spacing=3.2, patch_sample=8, config={"width": 0.0625})
    return bone_ct_parse()
