"""`lesiondetect evaluate --model M [M ...] --data DATASET [--json F] [--plot P]`."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="measure a trained model on a dataset",
                       description="Runs the model's method-specific evaluation (the paper's metrics and more) "
                                   "on the dataset's test split, or on every case with --split all.")
    p.add_argument("--model", required=True, nargs="+",
                   help="model directory (with model.json); several models of one method (e.g. the same "
                        "experiment trained with different seeds) are combined by the method (mean ± SD)")
    p.add_argument("--data", required=True, help="dataset folder (with dataset.json)")
    p.add_argument("--split", default="test", help="which cases: a split name, or 'all' (default: test, "
                                                   "falling back to all cases when the dataset has no splits)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", help="also write the metrics as JSON to this file")
    p.add_argument("--plot", help="also save the FROC curve as an image (methods that measure FROC)")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from ..dataset import check_dataset
    from ..errors import input_error
    from ..files import check_out_dir, write_json
    from ..training import load_trained

    for option, path in (("--json", args.json), ("--plot", args.plot)):  # outputs checked before any work
        if path:
            if Path(path).is_dir():
                raise input_error(path, f"is a folder; {option} needs a file name")
            check_out_dir(Path(path).absolute().parent, what=f"the folder of {option}")

    loaded, method = [], None
    for path in args.model:  # every model card checked before any work
        method_, model, card, device = load_trained(path, method_name=method.name if method else None,
                                                    device=args.device)
        method = method or method_
        loaded.append((model, card, device))
    dataset = check_dataset(args.data, method)  # the checks of `validate`, and the method's input check
    runs = [method.evaluate(model, card, dataset, device, split=args.split) for model, card, device in loaded]
    metrics = runs[0] if len(runs) == 1 else method.combine(runs)
    print(method.report(metrics))
    if args.json:
        write_json(args.json, metrics, overwrite=True)
    if args.plot:
        from ..errors import LesionDetectError
        from ..metrics.froc import plot_froc

        if "curve" not in metrics:
            raise LesionDetectError(f"method '{method.name}' with this model reports no FROC curve to plot")
        plot_froc(metrics, args.plot, title=f"{method.name} FROC ({args.split})")
    return 0
