"""The one training loop every method uses, so that seeding, devices, optimisers, schedules,
checkpoints (resume after an interruption) and the model card are written once, not per method.

A run's configuration is TRAINER_DEFAULTS, then the method's `defaults`, then a JSON config
file (Resources/configs/<method>/), then command-line overrides; a key that is in neither
defaults is an error, so a misspelt setting cannot be silently ignored.
"""

from __future__ import annotations

import copy
import difflib
import json
import math
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .dataset import check_dataset
from .errors import LesionDetectError, input_error
from .files import atomic_path, check_free_space, check_out_dir, fault_point, read_json
from .lineage import describe_finetune, metric_numbers
from .models import ModelCard, card_problems, save_model, weights_bytes
from .progress import progress, report

CHECKPOINT = "checkpoint.pt"


# The config keys of the shared trainer itself, with their defaults.  A method's `defaults`
# hold its own keys and may override these (e.g. its own lr, epochs, batch_size).
TRAINER_DEFAULTS: dict[str, Any] = {
    "optimizer": "sgd",  # "sgd" | "adam" | "adamw"
    "lr": 0.01,
    "momentum": 0.9,  # sgd only
    "weight_decay": 0.0,
    "lr_schedule": None,  # None (constant) | "cosine" | "warmup_cosine"
    "warmup_epochs": 0,  # warmup_cosine: linear warm-up over this many epochs
    "epochs": 1,
    "batch_size": 32,
    "seed": 0,
    # transfer learning: start from ImageNet/COCO weights (a local file; `weights` names one
    # explicitly, which implies pretrained)
    "pretrained": False,
    "weights": None,
    # > 0: after the first epoch, cut `epochs` to what fits in this many minutes of training
    # (the lr schedule ends with the cut run); the cut is recorded in the card's history
    "time_limit_minutes": 0,
    # > 0: after `epochs`, add the method's hard_examples (mined with the model so far) to the
    # training set and train this many epochs more (the lr schedule spans all epochs)
    "hard_example_epochs": 0,
    # True: keep the weights of the epoch with the lowest validation loss, not the last epoch's (a small
    # training set overfits within a few epochs); the card names the epoch.  Ignored without validation.
    "keep_best": False,
    # cross-entropy label smoothing (Szegedy et al. 2016): methods whose losses are
    # cross-entropies pass it to them (0 = one-hot targets)
    "label_smoothing": 0.0,
    # self-paced learning (Kumar et al. 2010): a sample enters an epoch's loss only when its
    # loss is below lambda.  > 0 turns it on: lambda starts at the quantile `self_paced_start`
    # of the previous epoch's per-sample losses (the first epoch uses every sample) and grows
    # linearly to take every sample after `self_paced_epochs` epochs.  Needs a method whose
    # batch_loss returns one loss per sample.
    "self_paced_start": 0.0,
    "self_paced_epochs": 10,
}


# Fine-tuning (`train --init MODEL`): the parent's configuration, then this short schedule,
# then what the user sets (--config/--set/--epochs).  The parent's learning rate times
# FINETUNE_LR_FACTOR, a one-epoch warm-up and no extra phases (hard examples, self-paced
# learning), so a few epochs adapt the model without undoing what it learnt.
FINETUNE_DEFAULTS: dict[str, Any] = {
    "epochs": 3,
    "lr_schedule": "warmup_cosine",
    "warmup_epochs": 1,
    "hard_example_epochs": 0,
    "self_paced_start": 0.0,
    "time_limit_minutes": 0,
    "pretrained": False,  # the parent's weights replace any ImageNet/COCO start
    "weights": None,
}
FINETUNE_LR_FACTOR = 0.1


def finetune_config(parent_config: dict) -> dict:
    """The fine-tuning schedule on top of a parent model's config (FINETUNE_DEFAULTS)."""
    lr = float(parent_config.get("lr", TRAINER_DEFAULTS["lr"])) * FINETUNE_LR_FACTOR
    return merge_config(parent_config, FINETUNE_DEFAULTS, {"lr": lr})


def _setting(config: dict, key: str):
    """config[key], or the trainer's default for a config that does not hold it."""
    return config.get(key, TRAINER_DEFAULTS[key])


def select_device(name: str = "auto") -> torch.device:
    """'auto' takes CUDA when present, else the CPU; 'cuda' without a GPU is an error."""
    name = (name or "auto").lower()
    if name in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise LesionDetectError("--device cuda was asked for, but no CUDA GPU is available; use --device cpu")
        return torch.device("cuda")
    if name == "cpu":
        return torch.device("cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    raise LesionDetectError(f"unknown device '{name}'; use auto, cpu or cuda")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def merge_config(defaults: dict, *updates: dict | None) -> dict:
    """Deep-merge dicts left to right (nested dicts merge, other values replace)."""
    out = copy.deepcopy(defaults)
    for upd in updates:
        for key, value in (upd or {}).items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merge_config(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
    return out


def read_config(path: str | os.PathLike | None) -> dict:
    if path is None:
        return {}
    path = Path(path)
    doc = read_json(path, missing="config file not found")
    if not isinstance(doc, dict):
        raise input_error(path, "a config file must hold a JSON object")
    doc.pop("description", None)  # human notes in experiment configs
    return doc


def config_defaults(method) -> dict:
    """Every key a training config of `method` may set, with its default value."""
    return merge_config(TRAINER_DEFAULTS, method.defaults)


def check_config(update: dict | None, defaults: dict, source: str, owner: str = "", _prefix: str = "") -> None:
    """Refuse a key of `update` that `defaults` lacks (nested dicts one level down and
    deeper), naming the key, its `source` (a config file, "--set"), whose config it is
    (`owner`, e.g. the method) and the nearest keys."""
    for key, value in (update or {}).items():
        name = _prefix + str(key)
        if key not in defaults:
            near = difflib.get_close_matches(str(key), [str(k) for k in defaults], n=3)
            if near:
                hint = "did you mean " + " or ".join(f"'{_prefix}{k}'" for k in near) + "?"
            elif _prefix or len(defaults) <= 12:
                hint = "valid keys: " + ", ".join(f"'{_prefix}{k}'" for k in sorted(map(str, defaults)))
            else:
                hint = "not a key of the shared trainer (TRAINER_DEFAULTS) nor of the method's defaults"
            raise input_error(source, f"unknown {owner + ' ' if owner else ''}config key '{name}'; {hint}")
        if isinstance(value, dict) and isinstance(defaults[key], dict):
            check_config(value, defaults[key], source, owner, f"{name}.")


def training_config(method, config_path: str | os.PathLike | None = None, overrides: dict | None = None,
                    overrides_source: str = "--set", base: dict | None = None) -> dict:
    """The configuration a training run of `method` uses: the trainer's and the method's
    defaults (or `base`, e.g. a parent model's fine-tuning config), updated by the config
    file and the overrides, each checked for unknown keys."""
    defaults = config_defaults(method)
    from_file = read_config(config_path)
    check_config(from_file, defaults, str(config_path), method.name)
    check_config(overrides, defaults, overrides_source, method.name)
    return merge_config(defaults, base, from_file, overrides)


def make_optimizer(params, config: dict) -> torch.optim.Optimizer:
    name = _setting(config, "optimizer").lower()
    lr, wd = float(_setting(config, "lr")), float(_setting(config, "weight_decay"))
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=float(_setting(config, "momentum")), weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    raise LesionDetectError(f"unknown optimizer '{name}' in config; use sgd, adam or adamw")


def lr_factor(config: dict, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """Multiplier of the base learning rate at `step` for the configured schedule."""
    schedule = _setting(config, "lr_schedule")
    if not schedule:
        return 1.0
    warmup = int(_setting(config, "warmup_epochs")) * steps_per_epoch if schedule == "warmup_cosine" else 0
    if step < warmup:
        return (step + 1) / warmup
    progress_ = (step - warmup) / max(1, total_steps - warmup)
    if schedule in ("cosine", "warmup_cosine"):
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress_)))
    raise LesionDetectError(f"unknown lr_schedule '{schedule}'; use cosine or warmup_cosine")


def self_paced_lambda(config: dict, epoch: int, previous_losses: list[float]) -> float:
    """The self-paced threshold lambda for `epoch` (0-based): infinity (every sample) when
    self-paced learning is off, in the first epoch and once the pace reaches all samples; else
    the quantile start + (1 - start) * epoch / self_paced_epochs of the previous epoch's
    per-sample losses, so easy samples come first and harder ones enter as lambda grows."""
    start = float(_setting(config, "self_paced_start"))
    if start <= 0 or epoch == 0 or not previous_losses:
        return math.inf
    fraction = start + (1.0 - start) * epoch / max(1, int(_setting(config, "self_paced_epochs")))
    return math.inf if fraction >= 1.0 else float(np.quantile(previous_losses, fraction))


def reduce_loss(loss: torch.Tensor, lam: float, self_paced: bool) -> tuple[torch.Tensor, list[float]]:
    """(the loss to minimise, the per-sample losses seen when `self_paced`) of what `batch_loss`
    returned: a scalar as it is; one loss per sample as the mean over the samples under `lam`
    (SPL's v_i = [L_i < lambda]); an all-hard batch contributes zero."""
    if loss.dim() == 0:
        if self_paced:
            raise LesionDetectError("self-paced learning needs one loss per sample, and this method's batch_loss "
                                    "returns one per batch; set self_paced_start 0")
        return loss, []
    # the losses are copied off the device only when the next epoch's lambda needs them
    per_sample = loss.detach().float().cpu().tolist() if self_paced else []
    if math.isinf(lam):
        return loss.mean(), per_sample
    keep = (loss.detach() < lam).to(loss.dtype)
    return (loss * keep).sum() / keep.sum().clamp(min=1.0), per_sample


def train(method_name: str | None, data: str | os.PathLike, out: str | os.PathLike, config_path=None,
          overrides: dict | None = None, device: str = "auto", resume: bool = False,
          init: str | os.PathLike | None = None, recalibrate: bool = False) -> Path:
    """Train a method on a dataset folder and write the model to `out`; returns `out`.

    With `init` (a trained model folder) the run fine-tunes that model: its method (a
    different `method_name` is an error), weights and config, the FINETUNE_DEFAULTS schedule
    on top, and a card whose training.lineage names the parent (`describe_finetune`).  It keeps
    the parent's decision thresholds (and the config values its calibration chose) unless
    `recalibrate`: a case or two of fine-tuning data would overfit them (see
    Testing/benchmarks/flair_finetune_one_case.py)."""
    from .methods import get_method

    parent = _load_parent(init, method_name, data) if init is not None else None
    if parent is None and not method_name:
        raise LesionDetectError("train needs --method NAME, or --init MODEL to fine-tune a trained model")
    method = get_method(parent["card"].method if parent else method_name)
    out = Path(out)
    if (out / "model.json").exists():
        raise input_error(out, "already holds a trained model; choose another --out")
    check_out_dir(out)
    folders = sorted(e.name for e in out.iterdir() if e.is_dir()) if out.is_dir() else []
    if folders:  # the model is swapped in as a whole folder (files.atomic_dir), which refuses these
        raise input_error(out, f"holds folders ({', '.join(folders[:3])}); write the model into a new or empty folder")
    if out.resolve() in (Path(data).resolve(), Path(data).resolve().parent if Path(data).is_file() else None):
        raise input_error(out, "is the dataset folder itself; write the model into a folder of its own")
    base = finetune_config(parent["card"].config) if parent else None  # fine-tuning: the parent's config
    config = training_config(method, config_path, overrides, base=base)
    problems = card_problems(ModelCard(method.name, method.modality, config), config_defaults(method))
    if problems:
        raise LesionDetectError(f"invalid {method.name} training config: " + "; ".join(problems))
    dataset = check_dataset(data, method)  # every problem listed before any work
    seed = int(config["seed"])
    seed_everything(seed)
    dev = select_device(device)
    model = method.build_model(config, pretrained=bool(config["pretrained"] or config["weights"])).to(dev)
    if parent:
        _start_from_parent(model, parent, config_path, overrides)
    # room for the model and a checkpoint (weights + optimizer state) before any training
    check_free_space(out, 3 * weights_bytes(model.state_dict()) + 2**20, "the model and its checkpoints")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, config)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    start_epoch, history, best = 0, [], None  # best: (val_loss, epoch, weights) with keep_best
    if resume and (out / CHECKPOINT).exists():  # a damaged checkpoint is refused before any work
        start_epoch, history, best = _resume(out / CHECKPOINT, model, optimizer, dev)
    train_set, val_set = method.training_data(dataset, config, seed)
    if len(train_set) == 0:
        raise input_error(data, "yields no training samples for this method (no annotated lesions?)")
    if parent:  # the parent on this run's validation part, before any step
        parent["before"] = validation_metrics(method, parent["model"].to(dev), parent["card"], config, dataset,
                                              val_set, dev)
        parent["model"] = None  # its weights are in `model` now; free the copy
    generator = torch.Generator().manual_seed(seed)

    def make_loader(samples):
        return torch.utils.data.DataLoader(samples, batch_size=int(config["batch_size"]), shuffle=True,
                                           collate_fn=method.collate, generator=generator, drop_last=False)

    loader = make_loader(train_set)
    epochs = int(config["epochs"])
    hard_epochs = int(config["hard_example_epochs"])
    out.mkdir(parents=True, exist_ok=True)
    steps_per_epoch = max(1, len(loader))
    total_steps = (epochs + hard_epochs) * steps_per_epoch
    time_limit_s = 60.0 * float(config["time_limit_minutes"])
    self_paced = float(config["self_paced_start"]) > 0
    t0 = time.perf_counter()
    epoch, mined = start_epoch, False
    step = start_epoch * steps_per_epoch  # batches so far: the lr schedule's clock
    while epoch < epochs + hard_epochs:
        if epoch >= epochs and not mined:
            mined = True
            hard = method.hard_examples(model, dataset, config, seed, dev)
            if hard is None or len(hard) == 0:
                break
            train_set = torch.utils.data.ConcatDataset([train_set, hard])
            loader = make_loader(train_set)
            # the remaining epochs have more batches; the schedule still ends with the last one
            total_steps = step + (epochs + hard_epochs - epoch) * max(1, len(loader))
            # the examples are not in the checkpoint: a resumed run mines again, recorded once
            history = [h for h in history if "hard_examples" not in h]
            history.append({"epoch": epoch, "hard_examples": len(hard)})
        model.train()
        losses, sample_losses = [], []
        lam = self_paced_lambda(config, epoch, history[-1].get("sample_losses", []) if history else [])
        for batch in progress(loader, desc=f"epoch {epoch + 1}/{epochs + hard_epochs}", unit="batch"):
            for group, base in zip(optimizer.param_groups, base_lrs):
                group["lr"] = base * lr_factor(config, step, total_steps, steps_per_epoch)
            loss, seen = reduce_loss(method.batch_loss(model, batch, dev), lam, self_paced)
            sample_losses += seen
            if not torch.isfinite(loss):
                raise LesionDetectError(f"training diverged at epoch {epoch + 1} (loss {loss.item()}); "
                                        "lower the learning rate in the config")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            losses.append(float(loss.detach()))
        entry = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "lr": optimizer.param_groups[0]["lr"]}
        if self_paced:
            entry["self_paced_lambda"] = None if math.isinf(lam) else round(lam, 6)
            entry["self_paced_used"] = round(float(np.mean(np.asarray(sample_losses) < lam)), 4) \
                if sample_losses else None
            # the next epoch's lambda comes from these (kept in the checkpoint, so a resumed run
            # goes on at the same pace; dropped from the card's history below)
            entry["sample_losses"] = [round(v, 5) for v in sample_losses]
        if val_set is not None and len(val_set):
            entry["val_loss"] = validation_loss(method, model, val_set, config, dev)
        for earlier in history:  # only the last epoch's per-sample losses are needed
            earlier.pop("sample_losses", None)
        history.append(entry)
        if config.get("keep_best") and "val_loss" in entry and (best is None or entry["val_loss"] < best[0]):
            best = (entry["val_loss"], epoch + 1, {k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
        report((epoch + 1) / (epochs + hard_epochs), f"epoch {epoch + 1}/{epochs + hard_epochs} "
                                                     f"loss {entry['train_loss']:.4f}")
        try:
            with atomic_path(out / CHECKPOINT, overwrite=True) as tmp:  # a kill never leaves half a checkpoint
                torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1,
                            "history": json.dumps(history),
                            **({"best_model": best[2], "best": [best[0], best[1]]} if best else {})}, tmp)
        except (OSError, RuntimeError) as exc:  # e.g. a full disk: the previous checkpoint stays
            raise input_error(out / CHECKPOINT, f"cannot be written ({str(exc).strip()[:200]}); the previous "
                                                "checkpoint is unchanged") from None
        fault_point("checkpoint")
        if time_limit_s and epoch == start_epoch:
            # cut the run to the epochs that fit the time limit; the lr schedule ends with it
            fit = start_epoch + max(1, int(time_limit_s / (time.perf_counter() - t0)))
            if fit < epochs:
                epochs, total_steps = fit, (fit + hard_epochs) * steps_per_epoch
                history[-1]["epochs_cut_to"] = fit
        epoch += 1
    if best is not None:
        model.load_state_dict(best[2])
    model.eval()
    history = [{k: v for k, v in h.items() if k != "sample_losses"} for h in history]
    if parent and not recalibrate:
        thresholds = dict(parent["card"].thresholds)
    else:
        thresholds = method.calibrate(model, dataset, config, dev)
    card = ModelCard(
        method=method.name, modality=method.modality, config=config, thresholds=thresholds,
        training={"dataset": dataset.name, "dataset_path": str(dataset.root), "cases": len(dataset.cases),
                  "patients": len({c.patient for c in dataset.cases}), "train_samples": len(train_set),
                  "val_samples": len(val_set) if val_set is not None else 0, "history": history,
                  "seconds": round(time.perf_counter() - t0, 1), "device": str(dev),
                  **({"kept_epoch": best[1], "kept_val_loss": round(best[0], 6)} if best else {})},
    )
    if parent:
        after = validation_metrics(method, model, card, config, dataset, val_set, dev)
        describe_finetune(card, parent["card"], parent["path"], parent["before"], dataset, after, recalibrate)
    save_model(out, model.state_dict(), card, drop=[CHECKPOINT])  # weights, card and no checkpoint: one swap
    return out


# --- fine-tuning -----------------------------------------------------------------------------

def _load_parent(init, method_name: str | None, data) -> dict:
    """The parent of a fine-tuning run: {"path", "card", "model"} (its config completed with
    the method's defaults, its weights checked against the card's sha256), refused when
    `method_name` or the dataset's modality differ from the model's."""
    from .dataset import load_dataset
    from .models import read_card

    model_dir, card = read_card(init)
    name = f"model {model_dir} ({card.model_id or card.method})"
    if method_name and method_name != card.method:
        raise input_error(model_dir, f"is a {card.method} model; --init fine-tunes it with its own method, so "
                                     f"leave out --method {method_name}")
    try:
        modality = load_dataset(data).modality
    except LesionDetectError:
        modality = None  # check_dataset lists what is wrong
    if modality is not None and modality != card.modality:
        raise input_error(data, f"is a {modality} dataset; {name} is a {card.method} model for {card.modality} "
                                "images")
    _, model, card, _ = load_trained(model_dir, card.method, device="cpu")
    return {"path": model_dir, "card": card, "model": model}


def _start_from_parent(model, parent: dict, config_path, overrides) -> None:
    """Load the parent's weights into this run's network; a config that changes the network
    is refused (fine-tuning keeps the parent's architecture)."""
    try:
        model.load_state_dict(parent["model"].state_dict())
    except Exception as exc:  # noqa: BLE001 - torch names the first tensor that does not fit
        reason = " ".join(line.strip() for line in str(exc).strip().splitlines()[:2])[:300] or type(exc).__name__
        source = " and ".join(([f"--config {config_path}"] if config_path else []) + (["--set"] if overrides else []))
        raise LesionDetectError(f"{parent['path']}: {source or 'the config'} changes the network of model "
                                f"{parent['card'].model_id} ({reason}); fine-tuning keeps the parent's "
                                "architecture") from None


def validation_metrics(method, model, card: ModelCard, config: dict, dataset, val_set, device) -> dict:
    """What fine-tuning compares before and after, kept cheap: the method's validation loss on
    the run's validation samples and, where the method's `evaluate` works on the dataset's
    validation cases, its numbers (lists such as curves and per-case rows left out).  Both
    are None (with the reason) when the run has no validation samples."""
    if val_set is None or not len(val_set):
        return {"val_loss": None, "evaluate": None, "note": "the dataset gives this method no validation samples"}
    result = {"val_loss": round(validation_loss(method, model, val_set, config, device), 6)}
    scored = ModelCard(method.name, method.modality, copy.deepcopy(config), thresholds=dict(card.thresholds))
    try:
        result["evaluate"] = metric_numbers(method.evaluate(model.eval(), scored, dataset, device, split="val"))
    except Exception as exc:  # noqa: BLE001 - "where it works": the reason is recorded instead
        result["evaluate"] = {"error": (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]}
    return result


def _resume(path: Path, model, optimizer, device) -> tuple[int, list, tuple | None]:
    """(epoch, history, best epoch's (val_loss, epoch, weights) or None) of a checkpoint, its state
    loaded; a damaged or foreign one is one error."""
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        best = (float(ckpt["best"][0]), int(ckpt["best"][1]), ckpt["best_model"]) if "best" in ckpt else None
        return int(ckpt["epoch"]), json.loads(ckpt["history"]), best
    except Exception as exc:  # noqa: BLE001 - torch raises many types for damaged or foreign files
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise input_error(path, f"cannot be resumed from: it is damaged, not a LesionDetect checkpoint of this "
                                f"method and config, or holds more than plain tensors ({reason}). Delete it to "
                                "train from the start.") from None


@torch.no_grad()
def validation_loss(method, model, samples, config, device) -> float:
    loader = torch.utils.data.DataLoader(samples, batch_size=int(_setting(config, "batch_size")),
                                         collate_fn=method.collate)
    was_training = model.training
    model.train()  # some models (detection) only return losses in train mode; no_grad keeps it cheap
    for m in model.modules():  # ...but dropout and batch-norm statistics must not move
        if isinstance(m, (torch.nn.Dropout, torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.eval()
    losses = [float(method.batch_loss(model, batch, device).mean()) for batch in loader]
    model.train(was_training)
    return float(np.mean(losses)) if losses else float("nan")


def load_trained(model_path, method_name: str | None = None, device: str = "auto"):
    """(method, model on the device in eval mode, model card, torch device) for a trained model
    directory; `method_name` (default: the card's) must match the card's method."""
    from .methods import get_method
    from .models import load_model, read_card

    from .methods import method_names
    from .models import card_problems

    card_dir, card = read_card(model_path)
    if (method_name or card.method) not in method_names():
        raise input_error(card_dir, f"is a model card of method {card.method!r}, which this LesionDetect does not "
                                    f"have (it has {', '.join(method_names())})")
    method = get_method(method_name or card.method)
    state, card, _ = load_model(model_path, method=method.name, modality=method.modality)
    problems = card_problems(card, config_defaults(method))
    if problems:
        raise input_error(card_dir / "model.json", f"is not a valid {method.name} model card: " + "; ".join(problems))
    card.config = merge_config(config_defaults(method), card.config)  # keys older cards lack: the defaults
    dev = select_device(device)
    try:
        model = method.build_model(card.config, pretrained=False)
        model.load_state_dict(state)
    except Exception as exc:  # noqa: BLE001 - any failure here means card and weights do not fit
        reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise input_error(card_dir, f"its weights do not fit the network its card describes ({reason}); the card "
                                    "or the weights were edited or come from another model") from None
    return method, model.to(dev).eval(), card, dev
