"""What a matrix runs: variants from MODEL arguments and recipes, or from a plan file, checked up front.

A recipe used by ``trtforge matrix`` may list engine targets; each target is a variant of
its own, with the target's overrides merged into the recipe::

    targets:                       # a compute capability: build.compute_capabilities: [SM86]
      - SM86
      - SM89
      - name: ampere-plus          # or a name plus any recipe sections to override
        build: {compute_capabilities: [SM86, SM89, SM120]}

A plan file names models with their own data folders and recipes (paths relative to it)::

    recipes: [int8.yaml, fp16.yaml]          # for every model without its own list
    gates: ["min_cosine>=0.99"]              # added to every variant's gates
    models:
      - path: models/det.onnx
        calib: data/det/calib
        val: data/det/val
      - path: models/rec.onnx
        name: rec-v4                         # folder name under OUT (default: the file's stem)
        val: data/rec/val
        recipes: [int8.yaml]
        gates: ["cer_increase<=0.5"]
        shapes: ["x:1x3x48x32,1x3x48x320,1x3x48x1600"]   # like --shapes (repeat for profiles); also dims: [batch=1]
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml

from optimizer.errors import ConfigError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_PLAN_KEYS = ("models", "recipes", "gates")
_MODEL_KEYS = ("path", "name", "calib", "val", "recipes", "gates", "shapes", "dims")


@dataclass(frozen=True)
class Variant:
    """One task: a model, a recipe (with its target's overrides merged in) and the run's data."""

    model: str  # folder name under OUT
    model_path: str
    recipe: str  # folder name under the model
    target: str | None  # folder name under the recipe, when the recipe lists targets
    recipe_data: dict  # the recipe document, targets resolved (what recipe_from_dict reads)
    recipe_dir: str  # relative paths in the recipe are relative to this folder
    calib: str | None = None
    val: str | None = None
    gates: tuple[str, ...] = ()
    shapes: tuple[str, ...] = ()  # --shapes options (one per profile), optimizer.shapes language
    dims: tuple[str, ...] = ()  # --dim options

    @property
    def key(self) -> str:
        return "/".join(p for p in (self.model, self.recipe, self.target) if p)

    @property
    def variant(self) -> str:
        """The column name in the index: recipe[/target]."""
        return "/".join(p for p in (self.recipe, self.target) if p)


@dataclass
class _ModelEntry:
    path: Path
    name: str
    calib: Path | None
    val: Path | None
    recipes: list[Path | None]
    gates: list[str]
    shapes: list[str]
    dims: list[str]


def plan_variants(
    models: Sequence[str | Path],
    recipes: Sequence[str | Path],
    *,
    plan: str | Path | None = None,
    calib: str | Path | None = None,
    val: str | Path | None = None,
    gates: Sequence[str] = (),
    shapes: Sequence[str] = (),
    dims: Sequence[str] = (),
    synthetic: bool = False,
) -> list[Variant]:
    """Every variant, in declaration order (model, recipe, target), each checked before any runs."""
    if synthetic and calib is not None:
        raise ConfigError("give --calib DIR or --synthetic, not both")
    if plan is not None:
        if models or recipes or calib is not None or val is not None:
            raise ConfigError("--plan names the models, recipes and data folders itself: drop MODEL, --recipe, --calib and --val")
        entries = _read_plan(Path(plan), list(gates), list(shapes), list(dims))
    elif not models:
        raise ConfigError("give at least one MODEL, e.g. trtforge matrix a.onnx b.onnx -o out/ --recipe int8.yaml (or --plan plan.yaml)")
    else:
        entries = [
            _ModelEntry(Path(m), Path(m).stem, _path(calib), _path(val), [Path(r) for r in recipes] or [None], list(gates),
                        list(shapes), list(dims))
            for m in models
        ]
    _unique([e.name for e in entries], "model", "give the models distinct file names, or a 'name:' in a --plan")
    docs: dict[Path | None, tuple[str, Path, dict, list[tuple[str | None, dict]]]] = {}
    variants = []
    for entry in entries:
        _check_name(entry.name, f"model {entry.path}")
        _unique([_recipe_doc(r, docs)[0] for r in entry.recipes], "recipe", "give each recipe a distinct file name or 'name:'")
        for recipe_path in entry.recipes:
            name, base, doc, targets = _recipe_doc(recipe_path, docs)
            for target, overrides in targets:
                data = _merge(doc, overrides)
                if synthetic:
                    data = _merge(data, {"precision": {"synthetic": True}})
                # Absolute paths: a task may run in another process or on another node (same shared paths).
                variants.append(
                    Variant(entry.name, str(entry.path.absolute()), name, target, data, str(base),
                            calib=_text(entry.calib), val=_text(entry.val), gates=tuple(entry.gates),
                            shapes=tuple(entry.shapes), dims=tuple(entry.dims))
                )
    from optimizer.matrix_check import check_variants

    check_variants(variants)
    return variants


def _path(value: str | Path | None) -> Path | None:
    return Path(value) if value is not None else None


def _text(value: Path | None) -> str | None:
    return str(value.absolute()) if value is not None else None


def _check_name(name: str, what: str) -> None:
    if not _NAME.match(name):
        raise ConfigError(f"{what}: name {name!r} is not a folder name (letters, digits, '.', '_', '-'); rename it or set 'name:'")


def _unique(names: list[str], what: str, fix: str) -> None:
    seen = set()
    for name in names:
        if name in seen:
            raise ConfigError(f"two {what}s are both named {name!r} (their output folders would collide): {fix}")
        seen.add(name)


def _read_yaml(path: Path, what: str) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the {what} ({exc})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where} ({getattr(exc, 'problem', exc)})") from None


def _recipe_doc(path: Path | None, docs: dict) -> tuple[str, Path, dict, list[tuple[str | None, dict]]]:
    """(name, base folder, document without 'targets', [(target name, overrides)]) of one recipe, read once."""
    if path in docs:
        return docs[path]
    if path is None:
        docs[path] = ("default", Path.cwd(), {}, [(None, {})])
        return docs[path]
    doc = _read_yaml(path, "recipe")
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping, found {type(doc).__name__}")
    doc = dict(doc)
    targets = _targets(path, doc.pop("targets", None))
    name = str(doc.get("name") or path.stem)
    _check_name(name, f"recipe {path}")
    docs[path] = (name, path.resolve().parent, doc, targets)
    return docs[path]


def _targets(path: Path, raw: Any) -> list[tuple[str | None, dict]]:
    if raw is None:
        return [(None, {})]
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{path}: 'targets' must be a non-empty list, e.g. targets: [SM86, SM89]")
    targets = []
    for item in raw:
        if isinstance(item, str):
            targets.append((item.lower(), {"build": {"compute_capabilities": [item]}}))
        elif isinstance(item, dict) and isinstance(item.get("name"), str):
            overrides = {k: v for k, v in item.items() if k != "name"}
            targets.append((item["name"], overrides))
        else:
            raise ConfigError(
                f"{path}: each entry of 'targets' is a compute capability (SM86) or a mapping with a 'name' "
                f"and recipe sections to override; found {item!r}"
            )
        _check_name(targets[-1][0], f"{path}: target")
    _unique([t for t, _ in targets], "target", f"rename one in {path}")
    return targets


def _merge(base: dict, overrides: dict) -> dict:
    """``overrides`` deep-merged into a copy of ``base`` (mappings merge, anything else replaces)."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_plan(path: Path, extra_gates: list[str], shapes: list[str], dims: list[str]) -> list[_ModelEntry]:
    doc = _read_yaml(path, "plan")
    if not isinstance(doc, dict) or not isinstance(doc.get("models"), list) or not doc["models"]:
        raise ConfigError(f"{path}: a plan is a mapping with a non-empty 'models:' list (see trtforge matrix --help)")
    _known(doc, _PLAN_KEYS, path, "")
    base = path.resolve().parent
    default_recipes = _paths(doc.get("recipes"), base, path, "recipes") or [None]
    plan_gates = _strings(doc.get("gates"), path, "gates") + extra_gates
    entries = []
    for i, item in enumerate(doc["models"]):
        where = f"models[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("path"), str):
            raise ConfigError(f"{path}: '{where}' must be a mapping with a 'path:' to the model")
        _known(item, _MODEL_KEYS, path, where + ".")
        model = base / item["path"]
        entries.append(
            _ModelEntry(
                path=model,
                name=str(item.get("name") or model.stem),
                calib=base / item["calib"] if item.get("calib") else None,
                val=base / item["val"] if item.get("val") else None,
                recipes=_paths(item.get("recipes"), base, path, where + ".recipes") or default_recipes,
                gates=plan_gates + _strings(item.get("gates"), path, where + ".gates"),
                # A model's own shapes/dims replace the command line's (input names differ per model).
                shapes=_strings(item.get("shapes"), path, where + ".shapes") or shapes,
                dims=_strings(item.get("dims"), path, where + ".dims") or dims,
            )
        )
    return entries


def _known(doc: dict, keys: tuple[str, ...], path: Path, prefix: str) -> None:
    for key in doc:
        if key not in keys:
            raise ConfigError(f"{path}: unknown key '{prefix}{key}'; valid keys here: {', '.join(keys)}")


def _strings(value: Any, path: Path, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{path}: '{where}' must be a list of strings")
    return list(value)


def _paths(value: Any, base: Path, path: Path, where: str) -> list[Path]:
    return [base / p for p in _strings(value, path, where)]
