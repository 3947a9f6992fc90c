"""`lesiondetect infer (--model M | --method NAME) --input IMAGE|FOLDER|LIST.txt --out DIR [...]`.

One input (an image file or a DICOM series folder) writes its result into DIR itself.
A batch (a folder of image files, or a .txt file listing them) loads the model once and
writes one result folder per input (per view, for files that hold several views) plus
DIR/summary.csv; a bad input is a row with its error and the batch goes on.
"""

from __future__ import annotations

import csv
import io as _io
import os
import re
import sys
from pathlib import Path

from ..errors import LesionDetectError, input_error

SUMMARY = "summary.csv"
SUMMARY_COLUMNS = ("input", "view", "result", "probability", "decision", "threshold", "model_id", "findings", "error")
# image files a batch folder contributes (DICOM files without these extensions count too,
# when GDCM recognises them and they are not the slices of one series)
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".png", ".jpg", ".jpeg", ".tif", ".tiff",
                  ".dcm")


def add_parser(sub) -> None:
    from ..methods import method_names

    p = sub.add_parser("infer", help="run a trained model on an image (or many) and write Slicer-ready results",
                       description="Writes probability.nrrd, mask.seg.nrrd, boxes/points .mrk.json, classes and "
                                   "prediction.json into --out (whichever the method produces).  With a folder of "
                                   "images or a .txt list of image paths as --input it loads the model once, writes "
                                   "one result folder per image into --out and --out/summary.csv (exit 1 when some "
                                   "images failed: their rows say why).")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="model directory (with model.json)")
    src.add_argument("--method", choices=method_names(),
                     help="use the active version of this method's model (the shipped one unless `lesiondetect "
                          "models use` chose another)")
    p.add_argument("--input", required=True,
                   help="image file or DICOM series folder; or, for a batch, a folder of image files or a .txt "
                        "file with one image path per line (relative to the list; '#' starts a comment line)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--threshold", type=float, help="decision threshold (default: the model card's)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a method's inference option (JSON value), e.g. --set slices=10:40 for liver-frcnn")
    p.add_argument("--mrb", help="also write a Slicer scene bundle (.mrb) with everything styled (one input only)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier prediction (and summary.csv) in --out")
    p.add_argument("--force", action="store_true",
                   help="run although the input does not look like the method's modality (e.g. a CT without its HU "
                        "rescale); the prediction's provenance records what was overridden. Damaged, non-finite or "
                        "wrongly shaped images are refused all the same")
    from ..gate import NAN_FILL_MAX_FRACTION, nan_fill_value
    p.add_argument("--nan-fill", type=nan_fill_value, metavar="VALUE",
                   help=f"replace NaN voxels (at most {NAN_FILL_MAX_FRACTION * 100:g} %% of the image) by VALUE (a "
                        "number, e.g. -1000 for air in a CT, or 'min': the image's smallest other value) instead of "
                        "refusing the image; the prediction's provenance records it. Infinite values are refused "
                        "all the same")
    p.set_defaults(func=run)


def resolve_model(args) -> Path:
    if args.model:
        return Path(args.model)
    from ..library import active_model_dir

    path = active_model_dir(args.method)  # the version `lesiondetect models use` made active (1: the shipped one)
    if path is None:
        raise LesionDetectError(f"no model is shipped for method '{args.method}'; train one and pass --model")
    return path


def run(args) -> int:
    from ..gate import allow_nan_fill

    with allow_nan_fill(args.nan_fill):  # images read meanwhile get their NaN replaced (gate.fill_nan)
        return _run(args)


def _run(args) -> int:
    from ..files import check_out_dir

    check_out_dir(args.out, inputs=[args.input])  # before any work
    inputs = batch_inputs(args.input)
    if inputs is not None:
        return run_batch(args, inputs)
    from ..prediction import write_prediction

    method, model, card, device, options = _load(args)
    views = method.read_inputs(args.input)
    if len(views) > 1 and args.mrb:
        raise LesionDetectError(f"{args.input} holds {len(views)} views ({', '.join(v for v, _ in views)}); --mrb "
                                "writes the scene of one image: leave it out")
    names = _Names(reserved=())
    checked = [(view, image, method.check_input(image, args.input, force=args.force)) for view, image in views]
    for view, image, forced in checked:
        pred = _predict(method, model, card, image, device, options, args.input, view, forced)
        out = Path(args.out)
        if len(views) > 1:  # one result folder per view
            out = out / names.take(_safe_name(view))
        written = write_prediction(pred, out, overwrite=args.overwrite)
        for key, path in written.items():
            print(f"{key:13s} {path}")
    if args.mrb:
        from ..scene_bundle import write_scene_bundle

        print(f"{'scene bundle':13s} {write_scene_bundle(args.input, args.out, args.mrb)}")
    return 0


def _predict(method, model, card, image, device, options, path, view, forced):
    """`method.predict` on a checked image, its provenance completed."""
    pred = method.predict(model, card, image, device, **options)
    pred.provenance.input = str(path)
    if view:
        pred.provenance.parameters["view"] = view
    if forced:
        pred.provenance.parameters["forced"] = forced  # what --force overrode, for whoever reads the result
    from ..gate import nan_fill_record
    if nan_fill_record(image):
        pred.provenance.parameters["nan_fill"] = nan_fill_record(image)  # what --nan-fill replaced
    return pred


def _load(args):
    """(method, model, card, device, inference options): the model loaded once."""
    from ..training import load_trained
    from .train import parse_key_values

    method, model, card, device = load_trained(resolve_model(args), device=args.device)
    print_synthetic_notice(card)
    options = parse_key_values(args.set)  # inference options: the method checks them, not the trainer
    method.check_inference_options(options)
    if args.threshold is not None:
        if not 0.0 <= args.threshold <= 1.0:  # also refuses NaN
            raise LesionDetectError(f"--threshold {args.threshold}: a decision threshold is a probability between 0 "
                                    "and 1")
        options["threshold"] = args.threshold
    return method, model, card, device, options


def print_synthetic_notice(card) -> None:
    """One line on stderr when the model was trained on synthetic data only (the rule:
    models.trained_on_synthetic_only); stdout keeps the written paths only."""
    from ..models import synthetic_notice

    notice = synthetic_notice(card)
    if notice:
        print(f"lesiondetect: {notice}", file=sys.stderr)


# --- what a batch is ---------------------------------------------------------------------------

def batch_inputs(path: str | os.PathLike) -> list[Path] | None:
    """The inputs of a batch, in order, or None when `path` is one input (an image file, a
    folder holding a DICOM series, or something that does not exist: reading it says why).

    A batch is a `.txt` file listing image paths (one per line, relative to the list file;
    blank lines and lines starting with '#' are skipped) or a folder of image files (sorted
    by name, not recursive) that is not one DICOM series.
    """
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".txt":
        return _list_file(path)
    if path.is_dir():
        return _folder_inputs(path)
    return None


def _list_file(path: Path) -> list[Path]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise input_error(path, "is not a text file of image paths (it is not UTF-8 text)") from None
    except OSError as exc:
        raise input_error(path, f"cannot be read ({exc.strerror or exc})") from None
    entries = [line.strip() for line in text.splitlines()]
    inputs = [path.parent / entry for entry in entries if entry and not entry.startswith("#")]
    if not inputs:
        raise input_error(path, "lists no images: put one image path per line (relative to this file)")
    return inputs


def _folder_inputs(folder: Path) -> list[Path] | None:
    """The image files of a batch folder, or None when the folder is one DICOM series (or
    holds no image file at all: then reading it as a series explains what it holds)."""
    import SimpleITK as sitk

    from ..io import _itk_warnings_off

    with _itk_warnings_off():
        ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
        series = [sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid) for sid in ids]
    dicom = {Path(f).name for files in series for f in files}
    files = sorted(e for e in folder.iterdir() if e.is_file() and not e.name.startswith("."))
    images = [f for f in files if f.name.lower().endswith(IMAGE_SUFFIXES) or f.name in dicom]
    if any(len(files_) > 1 for files_ in series):
        return None  # the slices of a series: one volume, as always
    if len(series) == 1 and all(f.name in dicom for f in images):
        return None  # a single DICOM file and nothing else: one image
    return images or None


def input_stem(path: Path) -> str:
    """The file name without its image extension ('c0.nii.gz' -> 'c0'); a folder's or an
    extension-less file's whole name."""
    name = path.name or path.resolve().name
    low = name.lower()
    for suffix in IMAGE_SUFFIXES:
        if low.endswith(suffix) and len(name) > len(suffix) and not path.is_dir():
            return name[:-len(suffix)]
    return name


def _safe_name(text: str) -> str:
    """`text` as one folder name: path separators and odd characters become '_'."""
    return re.sub(r"[^\w.+-]+", "_", text).strip("._") or "image"


class _Names:
    """Unique result folder names, decided by the list of inputs alone (so a rerun on the
    same list maps each input to the same folder): the first input with a name keeps it,
    a repeat gets -2, -3, ... (skipping names other inputs have by themselves)."""

    def __init__(self, reserved=(SUMMARY,)):
        self.used = {n.casefold() for n in reserved}

    def assign(self, names: list[str]) -> list[str]:
        natural = {n.casefold() for n in names}
        first = [n.casefold() not in self.used for n in names]
        self.used |= natural
        seen: set[str] = set()
        result = []
        for name, free in zip(names, first):
            if free and name.casefold() not in seen:
                seen.add(name.casefold())
                result.append(name)
            else:
                result.append(self.take(name))
        return result

    def take(self, name: str) -> str:
        candidate, n = name, 1
        while candidate.casefold() in self.used:
            n += 1
            candidate = f"{name}-{n}"
        self.used.add(candidate.casefold())
        return candidate


# --- running a batch ---------------------------------------------------------------------------

def run_batch(args, inputs: list[Path]) -> int:
    from ..prediction import summary_probability, write_prediction
    from ..progress import progress

    out = Path(args.out)
    summary = out / SUMMARY
    if args.mrb:
        raise LesionDetectError(f"--mrb writes the scene of one image; {args.input} is a batch of {len(inputs)} "
                                "inputs: leave --mrb out (or run infer on one image to get its scene)")
    if out.exists() and not out.is_dir():
        raise input_error(out, "is a file; --out must be a folder for a batch")
    if summary.exists() and not args.overwrite:
        raise input_error(summary, "already exists (an earlier batch wrote it); refusing to overwrite anything: "
                                   "choose another --out, or pass --overwrite to replace the earlier results")
    method, model, card, device, options = _load(args)

    names = _Names()
    bases = names.assign([_safe_name(input_stem(p)) for p in inputs])
    rows: list[dict[str, str]] = []

    def error_row(path: Path, view: str, exc: LesionDetectError) -> dict[str, str]:
        message = " ".join(str(exc).split())  # one line
        return {"input": str(path), "view": view, "model_id": card.model_id, "error": message}

    for path, base in progress(list(zip(inputs, bases)), desc="infer", unit="image"):
        try:
            views = method.read_inputs(path)
            if not views:
                raise input_error(path, "holds no image")
        except LesionDetectError as exc:
            rows.append(error_row(path, "", exc))
            continue
        for view, image in views:
            name = base if len(views) == 1 and not view else names.take(f"{base}_{_safe_name(view)}")
            dest = out / name
            try:
                if dest.exists() and not args.overwrite:
                    raise input_error(dest, "already exists; left untouched (pass --overwrite to replace it)")
                forced = method.check_input(image, path, force=args.force)
                pred = _predict(method, model, card, image, device, options, path, view, forced)
                write_prediction(pred, dest, overwrite=args.overwrite)
            except LesionDetectError as exc:
                rows.append(error_row(path, view, exc))
                continue
            probability = summary_probability(pred)
            threshold = decision_threshold(pred, card, args.threshold)
            decision = ("" if probability is None or threshold is None
                        else "positive" if probability >= threshold else "negative")
            rows.append({"input": str(path), "view": view, "result": name, "probability": _number(probability),
                         "decision": decision, "threshold": _number(threshold),
                         "model_id": pred.provenance.model_id or card.model_id,
                         "findings": str(len(pred.points) + len(pred.boxes))})

    write_summary(summary, rows, overwrite=args.overwrite)
    failed = [r for r in rows if r.get("error")]
    print(f"{'summary':13s} {summary}")
    print(f"{'results':13s} {len(rows) - len(failed)} of {len(rows)} written into {out}")
    if failed:
        print(f"lesiondetect: {len(failed)} of {len(rows)} images failed; their rows in {summary} say why:",
              file=sys.stderr)
        for row in failed:
            print(f"  {row['error']}", file=sys.stderr)
        return 1
    return 0


def decision_threshold(pred, card, override: float | None = None) -> float | None:
    """The threshold a prediction's decision uses: its own, else --threshold, else the model
    card's (its 'image' or 'decision' threshold, or its only one)."""
    if pred.threshold is not None:
        return float(pred.threshold)
    if override is not None:
        return float(override)
    thresholds = card.thresholds or {}
    for key in ("image", "decision"):
        if key in thresholds:
            return float(thresholds[key])
    if len(thresholds) == 1:
        return float(next(iter(thresholds.values())))
    return None


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def write_summary(path: Path, rows: list[dict[str, str]], overwrite: bool = False) -> Path:
    """summary.csv, written atomically (never over an earlier one unless overwrite)."""
    from ..files import write_text

    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SUMMARY_COLUMNS, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return write_text(path, buf.getvalue(), overwrite=overwrite)
