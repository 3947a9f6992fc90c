"""The design's boundaries, read from the source with `ast` (nothing is imported):

1. no import cycle between LesionDetectLib modules;
2. method plug-ins use neither the CLI commands nor the trainer (the trainer calls them);
3. LesionDetectLib never imports Slicer, VTK or Qt (it runs outside Slicer);
4. no Python file of either package is over 500 lines.

Every import statement counts, also those inside functions (a lazy import still ties two
modules together).  A package's `__init__.py` is the package itself; `from . import x`
is an import of the module `x` when there is one, of the package otherwise.  Plug-in
discovery, `importlib.import_module(f"{__name__}.{name}")` (or `f"{pkg.__name__}.{name}"`),
imports every module directly inside that package.  So a plug-in that imports its
registry from the package `__init__` that discovers it is a cycle: keep the registry (and
any helpers plug-ins share) in a module of its own.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIB = "LesionDetectLib"
MAX_LINES = 500
GUI_ROOTS = {"slicer", "vtk", "vtkmodules", "qt", "ctk", "PythonQt", "mrml"}


@dataclass(frozen=True)
class Import:
    source: str  # importing module, e.g. LesionDetectLib.prediction
    target: str  # imported module (LesionDetectLib ones resolved to a module of the package)
    line: int

    def __str__(self) -> str:
        return f"{self.source}:{self.line} -> {self.target}"


def module_files(package_dir: Path = ROOT / LIB) -> dict[str, Path]:
    """{"LesionDetectLib.methods.base": path, "LesionDetectLib.methods": .../__init__.py, ...}."""
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _resolve(name: str, modules: dict[str, Path]) -> str:
    """The longest prefix of a dotted name that is a module of the package (or the name)."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in modules:
            return candidate
    return name


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    bound: dict[str, str] = {"__name__": module}  # names the file binds to modules
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append(Import(module, _resolve(alias.name, modules), node.lineno))
                bound[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else \
                    alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[:len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module
            for alias in node.names:
                # `from pkg import x` imports the module pkg.x when there is one, else a name of pkg
                full = f"{base}.{alias.name}"
                target = full if full in modules else _resolve(base, modules)
                found.append(Import(module, target, node.lineno))
                if full in modules:
                    bound[alias.asname or alias.name] = full
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _is_import_module(node.func) and node.args:
            found += [Import(module, t, node.lineno) for t in _dynamic_targets(node.args[0], bound, modules)]
    return found


def _is_import_module(func: ast.expr) -> bool:
    return (isinstance(func, ast.Name) and func.id == "import_module") or \
        (isinstance(func, ast.Attribute) and func.attr == "import_module")


def _dynamic_targets(arg: ast.expr, bound: dict[str, str], modules: dict[str, Path]) -> list[str]:
    """What `importlib.import_module(arg)` may import: a literal name, or for the plug-in
    pattern f"{__name__}.{name}", f"{pkg.__name__}.{name}" or f"LesionDetectLib.pkg.{name}"
    every module directly in the package."""
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return [_resolve(arg.value, modules)]
    if not isinstance(arg, ast.JoinedStr):
        return []
    prefix = ""
    for part in arg.values:
        if isinstance(part, ast.Constant):
            prefix += str(part.value)
            continue
        value = part.value
        if isinstance(value, ast.Name) and value.id == "__name__":
            prefix += bound["__name__"]
        elif isinstance(value, ast.Attribute) and value.attr == "__name__" and isinstance(value.value, ast.Name) \
                and value.value.id in bound:
            prefix += bound[value.value.id]
        else:  # the dynamic part: any module directly in the package named so far
            package = prefix[:-1] if prefix.endswith(".") else None
            return [m for m in modules if package and m.rpartition(".")[0] == package]
    return [_resolve(prefix, modules)]


def import_graph() -> tuple[dict[str, Path], list[Import]]:
    modules = module_files()
    edges = [imp for name, path in modules.items() for imp in imports_of(name, path, modules)]
    return modules, edges


def import_cycles(edges: list[Import], limit: int = 200) -> list[list[Import]]:
    """The elementary cycles among LesionDetectLib modules, each as its chain of imports."""
    graph: dict[str, dict[str, Import]] = {}
    for imp in edges:
        if imp.target.split(".")[0] == LIB and imp.target != imp.source:
            graph.setdefault(imp.source, {}).setdefault(imp.target, imp)  # first line per pair
    cycles: list[list[Import]] = []
    # each cycle found once: from its smallest module, through larger ones only
    for start in sorted(graph):
        stack = [(start, [])]
        while stack and len(cycles) < limit:
            node, chain = stack.pop()
            for target, imp in sorted(graph.get(node, {}).items()):
                if target == start:
                    cycles.append(chain + [imp])
                elif target > start and all(target != step.source for step in chain) and target != node:
                    stack.append((target, chain + [imp]))
    return cycles


def describe(cycle: list[Import]) -> str:
    return " -> ".join([f"{imp.source}:{imp.line}" for imp in cycle] + [cycle[0].source])


def test_the_graph_sees_relative_lazy_and_package_imports():
    """The parser itself: relative levels, `from . import module`, imports inside functions."""
    modules, edges = import_graph()
    pairs = {(e.source, e.target) for e in edges}
    assert f"{LIB}.methods.base" in modules and f"{LIB}.methods" in modules
    assert (f"{LIB}.methods.base", f"{LIB}.prediction") in pairs  # from ..prediction import Prediction
    assert (f"{LIB}.cli", f"{LIB}.commands") in pairs  # from . import commands (a package)
    assert (f"{LIB}.cli", LIB) in pairs  # from . import __version__ (a name of the package)
    assert (f"{LIB}.prediction", f"{LIB}.segnrrd") in pairs  # lazy, inside write_prediction
    assert (f"{LIB}.training", f"{LIB}.methods") in pairs  # lazy, inside train
    # plug-ins found with importlib.import_module(f"{package.__name__}.{name}")
    assert (f"{LIB}.cli", f"{LIB}.commands.train") in pairs
    assert (f"{LIB}.methods", f"{LIB}.methods.base") in pairs
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.source, set()).add(e.target)
    reached, todo = set(), [f"{LIB}.methods"]
    while todo:
        node = todo.pop()
        if node not in reached:
            reached.add(node)
            todo += sorted(graph.get(node, ()))
    plugins = {m for m in modules if m.startswith(f"{LIB}.methods.") and m.count(".") == 2
               and modules[m].name == "__init__.py"}
    assert plugins and plugins <= reached  # the method registry finds every plug-in package


def test_plugin_discovery_counts_as_importing_the_package_modules(tmp_path):
    (tmp_path / "__init__.py").write_text(
        "import importlib\nfrom . import plugins\n\n\ndef load(n):\n"
        "    importlib.import_module(f'{__name__}.{n}')\n"
        "    importlib.import_module(f'{plugins.__name__}.{n}')\n"
        "    importlib.import_module(f'LesionDetectLib.pkg.plugins.{n}')\n"
        "    importlib.import_module('LesionDetectLib.pkg.a')\n")
    modules = {f"{LIB}.pkg": tmp_path / "__init__.py", f"{LIB}.pkg.a": tmp_path / "a.py",
               f"{LIB}.pkg.plugins": tmp_path / "plugins.py", f"{LIB}.pkg.plugins.x": tmp_path / "x.py"}
    found = [(e.line, e.target) for e in imports_of(f"{LIB}.pkg", tmp_path / "__init__.py", modules)
             if e.target != "importlib"]
    assert sorted(found) == [(2, f"{LIB}.pkg.plugins"), (6, f"{LIB}.pkg.a"), (6, f"{LIB}.pkg.plugins"),
                             (7, f"{LIB}.pkg.plugins.x"), (8, f"{LIB}.pkg.plugins.x"), (9, f"{LIB}.pkg.a")]


def test_cycle_finder_reports_chains():
    def imp(a, b):
        return Import(f"{LIB}.{a}", f"{LIB}.{b}", 1)

    cycles = import_cycles([imp("a", "b"), imp("b", "c"), imp("c", "a"), imp("c", "d"), imp("d", "c"),
                            imp("x", "y")])
    assert sorted(describe(c) for c in cycles) == [
        f"{LIB}.a:1 -> {LIB}.b:1 -> {LIB}.c:1 -> {LIB}.a", f"{LIB}.c:1 -> {LIB}.d:1 -> {LIB}.c"]


def test_no_import_cycles():
    _, edges = import_graph()
    cycles = import_cycles(edges)
    assert not cycles, "import cycles (module:line of each import):\n  " + "\n  ".join(map(describe, cycles))


def test_methods_use_neither_commands_nor_trainer():
    _, edges = import_graph()
    forbidden = (f"{LIB}.commands", f"{LIB}.training", f"{LIB}.cli")
    bad = [e for e in edges if (e.source == f"{LIB}.methods" or e.source.startswith(f"{LIB}.methods."))
           and any(e.target == f or e.target.startswith(f + ".") for f in forbidden)]
    assert not bad, "method plug-ins importing the CLI or the trainer:\n  " + "\n  ".join(map(str, bad))


def test_library_never_imports_slicer_vtk_or_qt():
    _, edges = import_graph()
    bad = [e for e in edges if e.target.split(".")[0] in GUI_ROOTS]
    assert not bad, "GUI imports in the headless library:\n  " + "\n  ".join(map(str, bad))


def test_no_python_file_over_500_lines():
    long = []
    for folder in (ROOT / LIB, ROOT / "LesionDetect"):
        for path in sorted(folder.rglob("*.py")):
            n = len(path.read_text(encoding="utf-8").splitlines())
            if n > MAX_LINES:
                long.append(f"{path.relative_to(ROOT)}: {n} lines")
    assert not long, f"files over {MAX_LINES} lines:\n  " + "\n  ".join(long)
