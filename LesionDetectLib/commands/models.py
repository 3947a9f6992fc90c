"""`lesiondetect models list|show|use|verify|add|remove`: the per-user model library
(LesionDetectLib/library.py): numbered versions of each method's model, version 1 the shipped
one, and the active version that inference runs without --model."""

from __future__ import annotations

import json

from ..errors import LesionDetectError


def add_parser(sub) -> None:
    p = sub.add_parser("models", help="list, add, choose, check and remove versions of the methods' models",
                       description="The model library ($LESIONDETECT_MODELS, else ~/.lesiondetect/models). Version 1 "
                                   "of each method is the shipped model (read-only); fine-tuned or trained models "
                                   "added with `add` (or `train --register`) are versions 2, 3, ... Inference "
                                   "without --model runs the active version; `use` of an older one rolls back.")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    ref = "version number (e.g. 2) or model id; default: the active version"

    a = actions.add_parser("list", help="every version of every method: lineage, key metric, which is active")
    a.add_argument("method", nargs="?", help="only this method")
    a.add_argument("--json", action="store_true", help="print JSON")
    a = actions.add_parser("show", help="one version's card summary and lineage")
    a.add_argument("method")
    a.add_argument("ref", nargs="?", help=ref)
    a.add_argument("--json", action="store_true", help="print the whole model card as JSON")
    a = actions.add_parser("use", help="make a version the one inference runs (rollback: use an older one)")
    a.add_argument("method")
    a.add_argument("ref", help="version number or model id")
    a = actions.add_parser("verify", help="recompute each version's weights sha256 against its card (exit 1 on a "
                                          "mismatch)")
    a.add_argument("method", nargs="?", help="only this method")
    a.add_argument("ref", nargs="?", help="only this version (number or model id)")
    a = actions.add_parser("add", help="copy a trained model folder into the library as the next version")
    a.add_argument("path", help="model folder (with model.json and its weights)")
    a = actions.add_parser("remove", help="delete a library version (never version 1)")
    a.add_argument("method")
    a.add_argument("ref", help="version number or model id")
    a.add_argument("--force", action="store_true",
                   help="also remove the active version (version 1 becomes active) or a version other models "
                        "name as their parent")
    p.set_defaults(func=run)


def run(args) -> int:
    actions = {"list": _list, "show": _show, "use": _use, "verify": _verify, "add": _add, "remove": _remove}
    return actions[args.action](args)


def _check_method(name: str) -> None:
    from ..library import methods_in_library

    if name not in methods_in_library():
        raise LesionDetectError(f"unknown method '{name}'; use one of {', '.join(methods_in_library())}")


def _metric_text(card) -> str:
    from ..models import key_metric

    metric = key_metric(card) if card else None
    return "-" if metric is None else f"{metric[0]} {metric[2]:.3f}" + (f" ({metric[1]})" if metric[1] else "")


def _row(entry, active: str) -> dict:
    return {"version": entry.version, "model_id": entry.model_id, "active": entry.version == active,
            "shipped": entry.shipped, "path": str(entry.path), "parent": entry.lineage.get("parent_model_id"),
            "key_metric": _metric_text(entry.card), "problem": entry.problem}


def _list(args) -> int:
    from ..library import active_version, library_dir, methods_in_library, versions

    names = [args.method] if args.method else methods_in_library()
    if args.method:
        _check_method(args.method)
    listing = {name: [_row(e, active_version(name)) for e in versions(name)] for name in names}
    if args.json:
        print(json.dumps({"library": str(library_dir()), "methods": listing}, indent=2))
        return 0
    print(f"model library: {library_dir()}   (* = active: what inference runs without --model)")
    for name, rows in listing.items():
        print(f"\n{name}")
        if not rows:
            print("  no model shipped or added (train one and `lesiondetect models add` it)")
        for r in rows:
            origin = "shipped" if r["shipped"] else (f"from {r['parent']}" if r["parent"] else "trained")
            detail = f"DAMAGED: {r['problem']}" if r["problem"] else \
                f"{r['model_id']:32s} {origin:38s} {r['key_metric']}"
            print(f"{'*' if r['active'] else ' '} {r['version']:>3s}  {detail}")
    return 0


def _show(args) -> int:
    from dataclasses import asdict

    from ..library import active_version, find, lineage_chain
    from .info import card_lines

    _check_method(args.method)
    entry = find(args.method, args.ref)
    if entry.card is None:
        raise LesionDetectError(f"{entry.path}: {entry.problem}")
    if args.json:
        print(json.dumps(asdict(entry.card), indent=2))
        return 0
    print(f"{'model':16s}{entry.path}")
    print(f"{'version':16s}{entry.version}" + (" (shipped, read-only)" if entry.shipped else "")
          + (", active" if entry.version == active_version(args.method) else ""))
    for line in card_lines(entry.card):
        print(line)
    chain = lineage_chain(entry)
    print(f"{'lineage':16s}{chain[0]}")
    for line in chain[1:]:
        print(f"{'':16s}<- {line}")
    lineage = entry.lineage
    if lineage:
        cases = lineage.get("dataset_cases") or {}
        print(f"{'parent weights':16s}sha256 {lineage.get('parent_weights_sha256')}")
        print(f"{'fine-tuned on':16s}{len(cases)} case(s): {', '.join(list(cases)[:8])}"
              + (" ..." if len(cases) > 8 else ""))
        changes = lineage.get("config_changes") or {}
        print(f"{'config changes':16s}" + (", ".join(f"{k} {v['parent']!r} -> {v['new']!r}" for k, v in changes.items())
                                           or "none"))
        validation = lineage.get("validation") or {}
        for when in ("before", "after"):
            loss = (validation.get(when) or {}).get("val_loss")
            print(f"{'val loss ' + when:16s}{'-' if loss is None else f'{loss:.4f}'}")
    return 0


def _use(args) -> int:
    from ..library import use

    _check_method(args.method)
    entry = use(args.method, args.ref)
    print(f"{args.method}: version {entry.version} ({entry.model_id}) is now active; inference without --model runs "
          f"it ({entry.path})")
    return 0


def _verify(args) -> int:
    from ..library import find, methods_in_library, verify, versions

    if args.method:
        _check_method(args.method)
    entries = [find(args.method, args.ref)] if args.ref else \
        [e for name in ([args.method] if args.method else methods_in_library()) for e in versions(name)]
    bad = 0
    for entry in entries:
        problem = verify(entry)
        bad += problem is not None
        print(f"{'ok' if problem is None else 'FAILED':7s}{entry.method} version {entry.version} "
              f"({entry.model_id or entry.path})" + (f": {problem}" if problem else ""))
    return 1 if bad else 0


def _add(args) -> int:
    from ..library import register

    entry = register(args.path)
    print(f"added as {entry.method} version {entry.version} ({entry.model_id}) in {entry.path}; "
          f"`lesiondetect models use {entry.method} {entry.version}` makes it the default")
    return 0


def _remove(args) -> int:
    from ..library import active_version, remove

    _check_method(args.method)
    entry = remove(args.method, args.ref, force=args.force)
    print(f"removed {args.method} version {entry.version} ({entry.model_id}); active: version "
          f"{active_version(args.method)}")
    return 0
