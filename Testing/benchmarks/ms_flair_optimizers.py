"""The paper's network under the paper's SGD (lr 1e-5, momentum 0.9) and under Adam (lr 1e-3):
training MSE over the same steps, same initialisation, same tiles (one command):

    .venv/bin/python Testing/benchmarks/ms_flair_optimizers.py [--steps 30] [--batch 32]

Tiles come from the CC-BY cases (open_ms_data patients 07 and 19) with the paper's recipe
(Resources/configs/ms-flair-fcn/paper.json).  Writes Resources/benchmarks/ms_flair_optimizers.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from LesionDetectLib.dataset import Dataset, Case  # noqa: E402
from LesionDetectLib.files import write_json  # noqa: E402
from LesionDetectLib.methods import get_method  # noqa: E402
from LesionDetectLib.training import make_optimizer, seed_everything, training_config  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared/data/ms_flair"))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "Resources/benchmarks/ms_flair_optimizers.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    method = get_method("ms-flair-fcn")
    data = Path(args.data)
    cases = [Case(id=c, patient=c, image=data / c / "flair.nii.gz", mask=data / c / "lesions.nii.gz")
             for c in ("open_ms_data_patient07", "open_ms_data_patient19")]
    dataset = Dataset(root=data, name="ms_flair cc-by", modality="MR", labels={}, cases=cases)
    results = {"command": "python Testing/benchmarks/ms_flair_optimizers.py", "steps": args.steps,
               "batch": args.batch, "threads": args.threads, "runs": {}}
    for name in ("paper-sgd", "paper"):
        config = training_config(method, ROOT / f"Resources/configs/ms-flair-fcn/{name}.json")
        seed_everything(0)
        tiles, _ = method.training_data(dataset, config, 0)
        model = method.build_model(config).train()
        optimizer = make_optimizer(model.parameters(), config)
        order = np.random.default_rng(0).permutation(len(tiles))
        losses, t0 = [], time.perf_counter()
        for step in range(args.steps):
            idx = order[(step * args.batch) % len(tiles):][:args.batch]
            batch = torch.utils.data.default_collate([tiles[int(i)] for i in idx])
            loss = method.batch_loss(model, batch, torch.device("cpu"))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(round(float(loss.detach()), 5))
        results["runs"][name] = {"optimizer": config["optimizer"], "lr": config["lr"], "first_loss": losses[0],
                                 "last5_mean_loss": round(float(np.mean(losses[-5:])), 5), "losses": losses,
                                 "seconds": round(time.perf_counter() - t0, 1)}
        print(name, results["runs"][name]["first_loss"], "->", results["runs"][name]["last5_mean_loss"], flush=True)
    write_json(args.out, results, overwrite=True)
    print(json.dumps({k: {kk: v[kk] for kk in ("first_loss", "last5_mean_loss")} for k, v in results["runs"].items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
