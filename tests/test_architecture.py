"""The import rules of the package layout, checked by walking every module's imports (README, Architecture).

- `model` never imports `eclipse_napari`, napari or Qt.
- `model.network` imports nothing else from `model`: no training, evaluation, file or data code.
- `model.io` and `model.data` import no training, evaluation or application code; `model.training` and
  `model.evaluation` do not import each other or the applications (`model.benchmark`, `model.interactive`).
- `eclipse_napari.plugin` does not import the command lines, and the command lines do not import the plugin.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GUI = ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "superqt", "magicgui", "vispy")
APPS = ("model.benchmark", "model.interactive")

# module prefix -> prefixes it must not import
RULES = {
    "model": ("eclipse_napari",) + GUI,
    "model.network": ("model.training", "model.evaluation", "model.io", "model.data") + APPS,
    "model.io": ("model.training", "model.evaluation", "model.data") + APPS,
    "model.data": ("model.training", "model.evaluation") + APPS,
    "model.training": ("model.evaluation",) + APPS,
    "model.evaluation": ("model.training",) + APPS,
    "eclipse_napari.plugin": ("eclipse_napari.cli",),
    "eclipse_napari.cli": ("eclipse_napari.plugin",) + GUI,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Absolute names of everything a module imports (relative imports resolved), at any depth."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module
            out.add(name)
            out.update(f"{name}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return out


def _modules():
    for top in ("model", "eclipse_napari"):
        for path in sorted((ROOT / top).rglob("*.py")):
            yield _module_name(path), path


def _violations():
    found = []
    for name, path in _modules():
        imported = _imports(path)
        for prefix, banned in RULES.items():
            if name != prefix and not name.startswith(prefix + "."):
                continue
            for target in sorted(imported):
                if any(target == b or target.startswith(b + ".") for b in banned):
                    found.append(f"{name} imports {target} (rule for {prefix})")
    return found


def test_the_layers_import_only_downwards():
    assert _violations() == []


def test_the_checker_sees_relative_and_nested_imports(tmp_path, monkeypatch):
    # The walk must catch what a violation would look like, or the test above could never fail.
    names = {n for n, _ in _modules()}
    assert {"model.network.eclipse", "model.training.engine", "eclipse_napari.plugin.widget"} <= names
    assert "model.io.tensor_files" in _imports(ROOT / "model" / "io" / "model_files.py")
    assert "qtpy.QtWidgets" in _imports(ROOT / "eclipse_napari" / "plugin" / "widget.py")
    fake = ROOT / "model" / "network" / "_probe_violation.py"
    try:
        fake.write_text("def f():\n    from ..training import engine\n")
        assert any("_probe_violation imports model.training" in v for v in _violations())
    finally:
        fake.unlink()
