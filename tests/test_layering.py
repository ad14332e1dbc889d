"""The layering rule, read from the source: graph_passes/ and calibration/ import only the base
layer of optimizer/, and no module imports a private name from another package."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("optimizer", "graph_passes", "calibration")
# The base layer: errors, model I/O, ORT sessions, random feeds, the shape language, the gate grammar.
BASE = {"optimizer.errors", "optimizer.model", "optimizer.runners", "optimizer.feeds", "optimizer.shapes", "optimizer.conditions"}


def _imports(path: Path):
    """(imported module, imported names) for every import in the file, lazy ones included."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, [a.name for a in node.names]


def _modules(package: str):
    for path in sorted((ROOT / package).rglob("*.py")):
        yield path, ".".join(path.relative_to(ROOT).with_suffix("").parts)


def test_graph_passes_and_calibration_import_only_the_base_layer():
    bad = []
    for package in ("graph_passes", "calibration"):
        for path, _ in _modules(package):
            for module, _names in _imports(path):
                if module.startswith("optimizer") and module not in BASE:
                    bad.append(f"{path.relative_to(ROOT)} imports {module}")
    assert not bad, "\n".join(bad)


def test_no_module_imports_a_private_name_from_another_package():
    bad = []
    for package in PACKAGES:
        for path, dotted in _modules(package):
            for module, names in _imports(path):
                top = module.split(".")[0]
                if top not in PACKAGES or top == package:
                    continue
                private = [n for n in names if n.startswith("_")]
                private_module = any(part.startswith("_") and part != "__init__" for part in module.split("."))
                if private or private_module:
                    bad.append(f"{path.relative_to(ROOT)} imports {module}: {', '.join(private) or module}")
    assert not bad, "\n".join(bad)


def test_the_rule_itself_can_fail(tmp_path):
    """The checker sees a lazy import inside a function, the way most layering slips happen."""
    source = tmp_path / "x.py"
    source.write_text("def f():\n    from optimizer.pipeline import optimize\n    from calibration.stats import _private\n")
    found = list(_imports(source))
    assert ("optimizer.pipeline", ["optimize"]) in found and ("calibration.stats", ["_private"]) in found
