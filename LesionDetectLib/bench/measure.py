"""Timing and memory helpers shared by the benchmarks."""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any, Callable


def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of `repeats` calls of fn (warm up before calling this)."""
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process in MB; None where the OS does not report it
    (`resource` is Unix-only, and Slicer users are often on Windows)."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def train_samples_per_second(method, model, batch, optimizer, samples: int, steps: int = 3) -> float:
    """Training throughput on the CPU: `samples` (the size of `batch`) divided by the median time
    of `steps` training steps (the method's batch_loss, its mean's backward pass, the optimizer
    step) after one warm-up step.  Leaves the model in eval mode."""
    import torch

    cpu = torch.device("cpu")
    model.train()

    def step():
        loss = method.batch_loss(model, batch, cpu).mean()  # a method may give one loss per sample
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()
    seconds = median_seconds(step, steps)
    model.eval()
    return samples / seconds
