"""Every benchmark is registered, listed and runs end to end in its quick mode."""

from __future__ import annotations

import json

import pytest

from LesionDetectLib import bench

EXPECTED = {"bone-ct-parse", "bone-scan-cls", "input-gate", "liver-frcnn", "ms-flair", "spine-mtl"}

# keys the README and Resources/benchmarks/ quote for each benchmark
KEYS = {
    "bone-ct-parse": {"ratio", "max_abs_dp", "dense_s_per_slice", "per_patch_s_per_slice", "peak_rss_mb"},
    "bone-scan-cls": {"crop_ms", "crop_batched_ms", "whole_body_s", "train_images_per_s", "peak_rss_mb"},
    "liver-frcnn": {"slice_s", "volume_s", "train_step_s", "peak_rss_mb"},
    "ms-flair": {"slice_s", "volume_s", "train_tiles_per_s", "paper_volume_s", "peak_rss_mb"},
    "input-gate": {"ct_nifti_gate_s", "ct_dicom_gate_s", "flair_nifti_gate_s", "planar_dicom_gate_s", "max_gate_s",
                   "peak_rss_mb"},
    "spine-mtl": {"ct_s", "per_slice_s", "network_slice_ms", "paper_network_slice_ms", "paper_over_default",
                  "train_slices_per_s", "peak_rss_mb"},
}


def test_bench_list_names_every_benchmark(run_cli):
    code, out, err = run_cli("bench", "--list")
    assert code == 0, err
    listed = {line.split()[0] for line in out.strip().splitlines()}
    assert listed == set(bench.names()) and EXPECTED <= listed


def test_unknown_or_missing_benchmark_is_a_clear_error(run_cli):
    code, _, err = run_cli("bench", "no-such-bench")
    assert code == 2 and "unknown benchmark 'no-such-bench'" in err and "bone-ct-parse" in err
    code, _, err = run_cli("bench")
    assert code == 2 and "--list" in err


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_benchmark_runs_in_quick_mode(name, run_cli, tmp_path):
    out_file = tmp_path / f"{name}.json"
    code, out, err = run_cli("bench", name, "--quick", "--json", out_file)
    assert code == 0, err
    results = json.loads(out_file.read_text())
    assert KEYS[name] <= set(results)
    for key in KEYS[name] - {"peak_rss_mb"}:
        assert results[key] > 0, (key, results[key])
