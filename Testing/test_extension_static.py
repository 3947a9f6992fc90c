"""Static checks of the Slicer extension, for what cannot run without Slicer here: the .ui,
the widget's use of it, the parameter node bindings, the CMake file lists against the files
on disk, the module's template form, its import rules and the one list of dependency versions."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "LesionDetect"
MODULE_PY = MODULE_DIR / "LesionDetect.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "LesionDetect.ui"
LIBRARY_DIR = ROOT / "LesionDetectLib"
ADAPTER_DIR = MODULE_DIR / "LesionDetectMRML"
GUI_DIR = MODULE_DIR / "LesionDetectGUI"  # the widget's parts LesionDetectWidget mixes in


def _ui_tree() -> ET.ElementTree:
    return ET.parse(UI_FILE)


def _module_ast() -> ast.Module:
    return ast.parse(MODULE_PY.read_text(encoding="utf-8"))


def _widget_files() -> list[Path]:
    """LesionDetect.py and the widget parts it mixes in (LesionDetectGUI)."""
    return [MODULE_PY, *sorted(GUI_DIR.glob("*.py"))]


def _widget_source() -> str:
    return "\n".join(path.read_text(encoding="utf-8") for path in _widget_files())


def _class(tree: ast.Module, name: str) -> ast.ClassDef:
    found = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name]
    assert found, f"LesionDetect.py has no class {name}"
    return found[0]


def _cmake_list(path: Path, variable: str) -> list[str]:
    """The entries of `set(<variable> ...)` in a CMakeLists.txt, with ${MODULE_NAME} expanded."""
    text = path.read_text(encoding="utf-8")
    module_name = re.search(r"set\(MODULE_NAME\s+(\S+)\)", text)
    match = re.search(rf"set\(\s*{re.escape(variable)}\b(.*?)\)", text, re.S)
    assert match, f"{path}: no set({variable} ...)"
    entries = [ln.split("#", 1)[0].strip() for ln in match.group(1).splitlines()]
    entries = [e for e in entries if e]
    if module_name:
        entries = [e.replace("${MODULE_NAME}", module_name.group(1)) for e in entries]
    return entries


def _python_files(folder: Path, base: Path) -> set[str]:
    return {p.relative_to(base).as_posix() for p in folder.rglob("*.py") if "__pycache__" not in p.parts}


# --- the .ui and the widget ---------------------------------------------------------------

def test_ui_parses_and_is_a_module_panel():
    root = _ui_tree().getroot()
    top = root.find("widget")
    assert (top.get("class"), top.get("name")) == ("qMRMLWidget", "LesionDetect")
    names = [w.get("name") for w in root.iter("widget")]
    assert len(names) == len(set(names)), "widget names in the .ui must be unique"


def test_every_ui_name_the_widget_uses_exists():
    names = {w.get("name") for w in _ui_tree().getroot().iter("widget")}
    used = {node.attr for path in _widget_files() for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
            and node.value.attr == "ui" and isinstance(node.value.value, ast.Name) and node.value.value.id == "self"}
    assert used, "the widget uses no self.ui.<name>: the check found nothing to check"
    assert used <= names, f"used by the widget but missing from the .ui: {sorted(used - names)}"


def test_review_controls_are_in_the_ui_by_the_findings_table():
    """Accept / Reject / Previous / Next, "N of M reviewed" and the reviewer setting (issue #18):
    in the Findings section (the reviewer in Export), wired in the widget, and the reviewer is a
    module setting (QSettings through the logic), not a scene parameter."""
    root = _ui_tree().getroot()
    classes = {w.get("name"): w.get("class") for w in root.iter("widget")}
    findings = next(w for w in root.iter("widget") if w.get("name") == "findingsCollapsibleButton")
    in_findings = {w.get("name") for w in findings.iter("widget")}
    review = {"acceptButton": "QPushButton", "rejectButton": "QPushButton", "previousButton": "QPushButton",
              "nextButton": "QPushButton", "reviewProgressLabel": "QLabel"}
    assert {n: classes.get(n) for n in review} == review
    assert set(review) <= in_findings and "findingsTable" in in_findings
    assert classes.get("reviewerLineEdit") == "QLineEdit"
    assert "reviewerLineEdit" not in _parameter_bindings()
    source = _widget_source()
    for name in (*review, "reviewerLineEdit"):
        assert f"self.ui.{name}" in source, f"{name} is not used by the widget"
    headers = [c.find("property/string").text for c in
               next(w for w in root.iter("widget") if w.get("name") == "findingsTable").findall("column")]
    assert headers == ["Kind", "Name", "Score", "Size", "State"]


def test_learn_controls_are_in_the_ui_and_wired():
    """Learn from corrections (issue #18): the model version selector by the method selector (the
    library's state, not a scene parameter), and a "Learn from corrections" section with
    Fine-tune, Next case, the offer of the fine-tuned version, its progress bar and status; every
    one used by the widget, and the section's logic in the Qt-free adapter (learn.py)."""
    root = _ui_tree().getroot()
    classes = {w.get("name"): w.get("class") for w in root.iter("widget")}
    inputs = next(w for w in root.iter("widget") if w.get("name") == "inputsCollapsibleButton")
    assert {"methodComboBox", "modelVersionComboBox", "modelSummaryLabel"} <= {w.get("name") for w in inputs.iter("widget")}
    assert classes.get("modelVersionComboBox") == "QComboBox"
    assert "modelVersionComboBox" not in _parameter_bindings()  # the active version lives in the model library
    section = next((w for w in root.iter("widget") if w.get("name") == "learnCollapsibleButton"), None)
    assert section is not None and section.get("class") == "ctkCollapsibleButton"
    assert section.find("property/string").text == "Learn from corrections"
    in_section = {w.get("name") for w in section.iter("widget")}
    learn_widgets = {"fineTuneButton": "QPushButton", "nextCaseButton": "QPushButton",
                     "useFineTunedButton": "QPushButton", "learnProgressBar": "QProgressBar",
                     "learnStatusLabel": "QLabel", "learnDatasetPathLabel": "QLabel"}
    assert {n: classes.get(n) for n in learn_widgets} == learn_widgets
    assert set(learn_widgets) <= in_section
    assert not set(learn_widgets) & set(_parameter_bindings())
    for name in ("fineTuneButton", "nextCaseButton", "useFineTunedButton"):  # off until the module enables them
        widget = next(w for w in section.iter("widget") if w.get("name") == name)
        enabled = [p.find("bool").text for p in widget.findall("property") if p.get("name") == "enabled"]
        assert enabled == ["false"], name
    source = _widget_source()
    for name in (*learn_widgets, "modelVersionComboBox"):
        assert f"self.ui.{name}" in source, f"{name} is not used by the widget"
    for signal in ('modelVersionComboBox.connect("activated(int)"', 'fineTuneButton.connect("clicked(bool)"',
                   'nextCaseButton.connect("clicked(bool)"', 'useFineTunedButton.connect("clicked(bool)"'):
        assert signal in source, f"not connected: {signal}"
    for call in ("startFineTune", "startNextCase", "useModelVersion", "acceptFineTunedVersion", "modelVersions",
                 "cancelLearning"):
        assert f"self.logic.{call}(" in source, f"the widget does not call the logic's {call}"
    assert (ADAPTER_DIR / "learn.py").is_file()


def _parameter_fields() -> dict[str, ast.AnnAssign]:
    cls = _class(_module_ast(), "LesionDetectParameterNode")
    assert any(getattr(d, "id", None) == "parameterNodeWrapper" for d in cls.decorator_list)
    return {s.target.id: s for s in cls.body if isinstance(s, ast.AnnAssign)}


def _parameter_bindings() -> dict[str, str]:
    """widget name -> SlicerParameterName, from the .ui."""
    bindings = {}
    for widget in _ui_tree().getroot().iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bindings[widget.get("name")] = prop.find("string").text
    return bindings


def test_every_slicer_parameter_name_is_a_parameter_node_field_and_back():
    fields = set(_parameter_fields())
    bound = list(_parameter_bindings().values())
    assert len(bound) == len(set(bound)), "a parameter is bound to two widgets"
    assert set(bound) <= fields, f"SlicerParameterName without a field: {sorted(set(bound) - fields)}"
    assert fields <= set(bound), f"parameter node fields no widget shows: {sorted(fields - set(bound))}"


def test_bindings_use_widgets_that_parameter_node_wrapper_can_connect():
    """The widget class fits the field's type (guiConnectors.py of parameterNodeWrapper)."""
    classes = {w.get("name"): w.get("class") for w in _ui_tree().getroot().iter("widget")}
    fields = _parameter_fields()
    fits = {"vtkMRMLScalarVolumeNode": {"qMRMLNodeComboBox"}, "str": {"QComboBox", "QLineEdit"},
            "Path": {"ctkPathLineEdit"}, "float": {"ctkSliderWidget", "QDoubleSpinBox"}}
    for widget, field in _parameter_bindings().items():
        annotation = ast.unparse(fields[field].annotation)
        base = re.sub(r"^Annotated\[(\w+),.*\]$", r"\1", annotation)
        assert classes[widget] in fits[base], f"{widget} ({classes[widget]}) cannot show {field}: {annotation}"


def test_device_choices_match_the_combobox():
    combo = next(w for w in _ui_tree().getroot().iter("widget") if w.get("name") == "deviceComboBox")
    items = [i.find("property/string").text for i in combo.findall("item")]
    devices = next(ast.literal_eval(n.value) for n in _module_ast().body
                   if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", None) == "DEVICES")
    assert items == devices == ["auto", "cpu", "cuda"]  # the values `lesiondetect infer --device` takes


def test_method_list_is_read_from_the_library_without_importing_it():
    sys.path.insert(0, str(MODULE_DIR))
    from LesionDetectMRML.process import available_methods

    from LesionDetectLib.methods import method_names

    assert available_methods(LIBRARY_DIR) == method_names()
    combo = next(w for w in _ui_tree().getroot().iter("widget") if w.get("name") == "methodComboBox")
    assert not combo.findall("item"), "methods are filled at run time from the library, not listed in the .ui"


# --- module form and rules ----------------------------------------------------------------

def test_module_has_the_template_classes_and_texts():
    tree = _module_ast()
    for name in ("LesionDetect", "LesionDetectWidget", "LesionDetectLogic", "LesionDetectTest"):
        _class(tree, name)
    init = next(f for f in _class(tree, "LesionDetect").body if isinstance(f, ast.FunctionDef) and f.name == "__init__")
    assigned = {t.attr for n in ast.walk(init) if isinstance(n, ast.Assign) for t in n.targets
                if isinstance(t, ast.Attribute)}
    assert {"title", "categories", "contributors", "helpText", "acknowledgementText"} <= assigned


def test_self_tests_run_every_test_method_from_run_test():
    cls = _class(_module_ast(), "LesionDetectTest")
    tests = {f.name for f in cls.body if isinstance(f, ast.FunctionDef) and f.name.startswith("test_")}
    run_test = next(f for f in cls.body if isinstance(f, ast.FunctionDef) and f.name == "runTest")
    called = {n.attr for n in ast.walk(run_test) if isinstance(n, ast.Attribute) and n.attr.startswith("test_")}
    assert tests and tests == called


def _top_level_imports(tree: ast.Module) -> set[str]:
    """Absolute modules imported at module level; a relative import counts as '.<name>'."""
    found = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                found |= ({f".{node.module}"} if node.module else {f".{a.name}" for a in node.names})
            else:
                found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return found


def test_module_imports_nothing_that_needs_installing_and_installs_nothing_at_import():
    tree = _module_ast()
    imported = _top_level_imports(tree)
    top_level_modules = {name.split(".")[0] for name in imported}
    allowed = {"__future__", "shutil", "sys", "tempfile", "time", "pathlib", "typing", "os", "qt", "slicer", "vtk",
               "LesionDetectMRML", "LesionDetectGUI"}
    assert top_level_modules <= allowed, f"imported at load time: {sorted(top_level_modules - allowed)}"
    # the adapter modules it loads import only the standard library (and each other) at load time
    pending = [n.split(".", 1)[1] for n in imported if n.startswith("LesionDetectMRML.")]
    pending = [n for n in pending if (ADAPTER_DIR / f"{n}.py").is_file()]
    assert "logic" in pending, "LesionDetectLogic is built on LesionDetectMRML.logic"
    seen = set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        for module in _top_level_imports(ast.parse((ADAPTER_DIR / f"{name}.py").read_text(encoding="utf-8"))):
            if module.startswith("."):
                pending.append(module[1:])
            else:
                assert module.split(".")[0] in sys.stdlib_module_names, \
                    f"LesionDetectMRML/{name}.py imports {module} at load time, before dependencies are installed"
    for node in tree.body:  # no install calls outside functions
        if not isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            assert "pip_" not in ast.unparse(node)


def test_logic_is_the_qt_free_logic_first():
    """ScriptedLoadableModuleLogic.__init__ calls super().__init__() with no arguments: with
    DetectionLogic after it in the bases, that call would reach DetectionLogic.__init__."""
    bases = [ast.unparse(b) for b in _class(_module_ast(), "LesionDetectLogic").bases]
    assert bases == ["DetectionLogic", "ScriptedLoadableModuleLogic"]


def test_widget_setup_needs_no_main_window():
    cls = _class(_module_ast(), "LesionDetectWidget")
    setup = next(f for f in cls.body if isinstance(f, ast.FunctionDef) and f.name == "setup")
    assert "mainWindow" not in ast.unparse(setup) and "layoutManager" not in ast.unparse(setup)


def test_adapter_and_library_keep_their_boundaries():
    for path in ADAPTER_DIR.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "slicer":
                assert node.attr not in ("app", "modules", "mrmlScene", "util"), f"{path} uses slicer.{node.attr}"
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not any(n.split(".")[0] in ("qt", "ctk") for n in names), f"{path} imports Qt"
    for path in LIBRARY_DIR.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            for name in names:
                assert name.split(".")[0] not in ("slicer", "vtk", "qt", "ctk"), f"{path} imports {name}"


# --- one statement of the dependency versions --------------------------------------------

REQUIREMENTS_TXT = MODULE_DIR / "Resources" / "requirements.txt"


def _requirement_lines() -> list[str]:
    lines = [ln.strip() for ln in REQUIREMENTS_TXT.read_text(encoding="utf-8").splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def test_pyproject_takes_its_dependencies_from_the_requirements_file():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "dependencies" not in pyproject["project"], "versions are stated in requirements.txt only"
    assert "dependencies" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["dependencies"] == {
        "file": [REQUIREMENTS_TXT.relative_to(ROOT).as_posix()]}
    for line in _requirement_lines():  # setuptools reads each line whole: no trailing comments
        assert "#" not in line and not line.startswith("-"), line


def test_installed_metadata_matches_the_requirements_file():
    import importlib.metadata

    from packaging.requirements import Requirement

    try:
        requires = importlib.metadata.requires("LesionDetectLib") or []
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("LesionDetectLib is not pip-installed here")
    installed = [str(Requirement(r)) for r in requires if "extra ==" not in r]
    assert installed == [str(Requirement(line)) for line in _requirement_lines()], \
        "the environment was installed from another requirements list: reinstall (pip install -e .)"


def test_torch_is_pinned_once_and_the_module_checks_the_same_pins():
    from packaging.requirements import Requirement

    sys.path.insert(0, str(MODULE_DIR))
    from LesionDetectMRML import dependencies

    requirements = [Requirement(line) for line in _requirement_lines()]
    torchy = {str(r) for r in requirements if "torch" in r.name.lower()}
    assert torchy == {"torch==2.14.1", "torchvision==0.29.1"}
    assert dependencies.read_requirements() == requirements  # the file the module reads in Slicer
    assert dependencies.torch_pins(requirements) == {"torch": "==2.14.1", "torchvision": "==0.29.1"}
    # no second statement of a torch version in the module or its adapter package
    for path in [*_widget_files(), *ADAPTER_DIR.rglob("*.py")]:
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"torch\w*\s*[<>=!~]=", text), f"{path} states a torch version"
        assert not re.search(r"""["'][<>=~]=\s*\d""", text), f"{path} states a version requirement"


def test_the_slicer_install_groups_name_listed_requirements():
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    sys.path.insert(0, str(MODULE_DIR))
    from LesionDetectMRML import dependencies

    names = {canonicalize_name(Requirement(line).name) for line in _requirement_lines()}
    assert set(dependencies.FROM_PYTORCH_EXTENSION) <= names
    assert set(dependencies.BUNDLED_WITH_SLICER) <= names, "a package listed as bundled is no longer needed"


# --- CMake --------------------------------------------------------------------------------

def test_module_cmake_lists_every_python_file_and_resource():
    cmake = MODULE_DIR / "CMakeLists.txt"
    scripts = _cmake_list(cmake, "MODULE_PYTHON_SCRIPTS")
    on_disk = {"LesionDetect.py"} | _python_files(ADAPTER_DIR, MODULE_DIR) | _python_files(GUI_DIR, MODULE_DIR)
    assert sorted(scripts) == sorted(on_disk), (f"missing from CMake: {sorted(on_disk - set(scripts))}; "
                                                f"listed but not on disk: {sorted(set(scripts) - on_disk)}")
    resources = _cmake_list(cmake, "MODULE_PYTHON_RESOURCES")
    on_disk = {p.relative_to(MODULE_DIR).as_posix() for p in (MODULE_DIR / "Resources").rglob("*") if p.is_file()}
    assert sorted(resources) == sorted(on_disk)
    text = cmake.read_text(encoding="utf-8")
    assert "WITH_GENERIC_TESTS" in text and "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text


def test_module_testing_cmake_registers_existing_scripts():
    for cmake in (MODULE_DIR / "Testing").rglob("CMakeLists.txt"):
        for script in re.findall(r"slicer_add_python_unittest\(SCRIPT\s+(\S+)\)", cmake.read_text()):
            assert (cmake.parent / script).is_file(), f"{cmake}: {script} does not exist"


def test_library_cmake_lists_every_file_of_the_package():
    cmake = LIBRARY_DIR / "CMakeLists.txt"
    scripts = _cmake_list(cmake, "LesionDetectLib_PYTHON_SCRIPTS")
    on_disk = _python_files(LIBRARY_DIR, LIBRARY_DIR)
    assert sorted(scripts) == sorted(on_disk), (f"missing from LesionDetectLib/CMakeLists.txt: "
                                                f"{sorted(on_disk - set(scripts))}; listed but not on disk: "
                                                f"{sorted(set(scripts) - on_disk)}")
    resources = _cmake_list(cmake, "LesionDetectLib_PYTHON_RESOURCES")
    data = {p.relative_to(LIBRARY_DIR).as_posix() for p in LIBRARY_DIR.rglob("*")
            if p.is_file() and p.suffix not in (".py", ".pyc") and p.name != "CMakeLists.txt"
            and "__pycache__" not in p.parts}
    assert sorted(resources) == sorted(data), f"data files not listed as RESOURCES: {sorted(data - set(resources))}"
    text = cmake.read_text(encoding="utf-8")
    assert re.search(r"NAME LesionDetectLib\b", text) and "WITH_SUBDIR" in text


def test_extension_cmake_follows_the_template():
    text = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    for needed in ("project(LesionDetect)", "find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})",
                   "add_subdirectory(LesionDetectLib)", "add_subdirectory(LesionDetect)",
                   "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})"):
        assert needed in text, needed
    assert text.index("add_subdirectory(LesionDetectLib)") < text.index("add_subdirectory(LesionDetect)")
    for key in ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS", "DEPENDS"):
        assert re.search(rf'set\(EXTENSION_{key} "[^"]+"\)', text), key
    # the icon and screenshots the catalogue shows are files of this repository
    urls = re.search(r'set\(EXTENSION_ICONURL "([^"]+)"\)', text).group(1).split()
    urls += re.search(r'set\(EXTENSION_SCREENSHOTURLS "([^"]+)"\)', text).group(1).split()
    for url in urls:
        assert (ROOT / url.split("/main/", 1)[1]).is_file(), url


@pytest.mark.parametrize("icon", ["Resources/LesionDetect.png", "LesionDetect/Resources/Icons/LesionDetect.png"])
def test_icons_are_128_pixel_pngs(icon):
    from PIL import Image

    with Image.open(ROOT / icon) as image:
        assert image.format == "PNG" and image.size == (128, 128)
